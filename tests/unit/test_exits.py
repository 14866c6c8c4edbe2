"""The words for why a container stopped (backends/_exits.py): memory is blamed only on the runtime's word."""

from backends._exits import stopped_because

MiB = 2**20


def test_out_of_memory_only_when_the_runtime_says_so() -> None:
    assert stopped_because(137, True, 32 * MiB) == "out of memory (limit 32 MiB)"
    assert stopped_because(137, False, 256 * MiB) == "killed (exit 137, SIGKILL)"


def test_a_runtime_that_cannot_tell_gets_both_causes_named() -> None:
    words = stopped_because(137, None, 32 * MiB)
    assert words is not None and words.startswith("killed (exit 137, SIGKILL): a kill or the memory limit")
    assert "32 MiB" in words
    assert stopped_because(137, None, 0) == "killed (exit 137, SIGKILL)"  # no limit: memory cannot be it


def test_other_exits_are_left_to_the_caller() -> None:
    assert stopped_because(1, False, 32 * MiB) is None and stopped_because(0, None, 0) is None
