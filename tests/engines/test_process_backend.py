"""What the process backend does beyond the shared contract: SIGKILL after stop_timeout, exit reasons."""

from __future__ import annotations

import asyncio
import sys
import time

from backends.base import ContainerSpec, InstanceState
from backends.process import ProcessBackend

IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"


async def test_a_child_that_ignores_sigterm_is_killed_after_stop_timeout() -> None:
    backend = ProcessBackend()
    spec = ContainerSpec(name="svc", image="-", command=[sys.executable, "-c", IGNORE_TERM], stop_timeout=1.0)
    instance = await backend.start("k", spec)
    await asyncio.sleep(0.5)  # let it install its handler
    began = time.monotonic()
    await backend.stop(instance)
    took = time.monotonic() - began
    assert 0.9 <= took < 3.0, took
    assert await backend.inspect(instance) is InstanceState.MISSING
    await backend.close()


async def test_a_child_that_exits_by_itself_says_why_until_cleaned_up() -> None:
    backend = ProcessBackend()
    spec = ContainerSpec(name="svc", image="-", command=[sys.executable, "-c", "raise SystemExit(3)"])
    instance = await backend.start("k", spec)
    assert [p for p, _ in instance.phases] == ["start"]
    for _ in range(100):
        if await backend.inspect(instance) is InstanceState.EXITED:
            break
        await asyncio.sleep(0.05)
    assert await backend.exit_reason(instance) == "exited with code 3"
    assert await backend.cleanup_stopped() == [instance.id]
    assert await backend.inspect(instance) is InstanceState.MISSING
    await backend.close()
