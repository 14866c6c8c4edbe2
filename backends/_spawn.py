"""Child processes for the process backend, cheap enough to start a thousand (issue 28).

`asyncio.create_subprocess_exec` costs the event loop ~0.4 ms per child here (fork_exec waits on the loop's
thread until the child has exec'd, and the default child watcher starts one thread per child to wait for it),
which capped 1000 cold starts at ~70-90 a second. Here the child is made with `posix_spawnp` (a vfork-style
clone: no copy of the proxy's page tables) on a thread of its own, so the loop's thread never waits for the
exec, and its exit is watched with a pidfd on the loop's selector: no thread per child. Where the platform
has no pidfd (not Linux >= 5.3), asyncio's subprocess is used as before.
"""

from __future__ import annotations

import asyncio
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Protocol

_spawner: ThreadPoolExecutor | None = None  # one thread: see `spawn`


class Child(Protocol):
    """What the process backend needs of a child: its pid, its exit status once known, a wait for it."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    async def wait(self) -> int: ...


class Spawned:
    """A child made by `posix_spawnp`, reaped when its pidfd becomes readable (it exited)."""

    def __init__(self, pid: int, loop: asyncio.AbstractEventLoop) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._loop = loop
        self._exited: asyncio.Future[int] = loop.create_future()
        self._pidfd = os.pidfd_open(pid)
        loop.add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: its status is lost
            pid, status = self.pid, 255 << 8
        if pid == 0 or self.returncode is not None:
            return  # not exited yet (a spurious wake-up)
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self.returncode = os.waitstatus_to_exitcode(status)
        self._exited.set_result(self.returncode)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)


def _spawn(argv: list[str], env: dict[str, str], pick: Callable[[], int]) -> tuple[int, int]:
    port = pick()
    pid = os.posix_spawnp(argv[0], argv, {**env, "PORT": str(port)}, setsid=True, setsigmask=(),
                          setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # as subprocess's restore_signals
                          file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)])
    return port, pid


async def spawn(argv: list[str], env: dict[str, str], pick: Callable[[], int]) -> tuple[int, Child]:
    """Start `argv` in its own session with `PORT` set to `pick()`, stdin from /dev/null, stdout/stderr the
    proxy's; the port and the child, or OSError if it cannot run.

    The port is picked (a test bind) on the same single thread that spawns: a test socket open while another
    thread's child is between its clone and its exec is that child's too until the exec, and then still holds
    the port when the child it was picked for binds it (`bind: Address already in use`, a few in 300 starts)."""
    if not hasattr(os, "pidfd_open") or not hasattr(os, "posix_spawnp"):
        port = pick()
        return port, await asyncio.create_subprocess_exec(*argv, env={**env, "PORT": str(port)},
                                                          stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
    global _spawner
    if _spawner is None:
        _spawner = ThreadPoolExecutor(1, thread_name_prefix="spawn")
    loop = asyncio.get_running_loop()
    port, pid = await loop.run_in_executor(_spawner, _spawn, argv, env, pick)
    return port, Spawned(pid, loop)
