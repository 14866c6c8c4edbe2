"""Why a container stopped, in words: one rule for every engine backend (docker, podman, swarm).

"Out of memory" is said only when the runtime says so (`State.OOMKilled`). A SIGKILL (exit 137) is also what
`docker kill` and `docker rm -f` leave, so guessing OOM from the code alone blamed memory for every kill from
outside. Where the runtime cannot tell (podman's OOMKilled stays false when conmon misses the kill; a swarm
task carries no such field), the words say that both are possible, and name the limit.
"""

from __future__ import annotations

SIGKILL_EXIT = 128 + 9


def memory_words(limit: int) -> str:
    """The memory limit as the user set it: "limit 32 MiB" (bytes in, 0 for none)."""
    return f"limit {limit / 2**20:g} MiB" if limit else "no limit"


def stopped_because(code: object, oom: bool | None, limit: int) -> str | None:
    """The words for an out-of-memory or SIGKILL end, or None for any other exit (the caller words those).
    `oom` is the runtime's OOMKilled: True, False, or None where the runtime cannot tell."""
    if oom:
        return f"out of memory ({memory_words(limit)})"
    if code != SIGKILL_EXIT:
        return None
    if oom is None and limit:
        return (f"killed (exit 137, SIGKILL): a kill or the memory limit ({memory_words(limit)}); "
                "the runtime does not say which")
    return "killed (exit 137, SIGKILL)"
