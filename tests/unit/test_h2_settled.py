"""proxy/http/h2_to_h2.py's `settled`: a future's result within a time, as `asyncio.timeout` gave it."""

from __future__ import annotations

import asyncio

import pytest

from proxy.http.h2_to_h2 import settled


def test_result_error_timeout_and_cancel() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        done.set_result(1)
        assert await settled(done, 0.01) == 1
        later: asyncio.Future[int] = loop.create_future()
        loop.call_later(0.01, later.set_result, 2)
        assert await settled(later, 5) == 2
        failed: asyncio.Future[int] = loop.create_future()
        loop.call_later(0.01, failed.set_exception, ConnectionResetError("gone"))
        with pytest.raises(ConnectionResetError):
            await settled(failed, 5)
        silent: asyncio.Future[int] = loop.create_future()
        with pytest.raises(TimeoutError):
            await settled(silent, 0.01)
        assert not silent.done() and not silent._callbacks  # nothing left on it
        task = loop.create_task(settled(silent, 5))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not silent.done() and not silent._callbacks

    asyncio.run(run())
