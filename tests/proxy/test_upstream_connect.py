"""UpstreamPool.connect: what Reconnect (proxy/http/reconnect.py) relies on when a fresh connection fails
(a silent instance times out as asyncio.TimeoutError, a refusal is an OSError), and a connection the instance
closes is dropped from the pool and freed without the cyclic GC."""

from __future__ import annotations

import asyncio
import gc
import socket

import pytest

from tests.support.upstreams import silent_port
from proxy.wire.upstream import UpstreamConnection, UpstreamPool


async def test_a_silent_instance_times_out_as_reconnect_expects():
    with silent_port() as port:  # a frozen instance: SYNs unanswered
        pool = UpstreamPool("127.0.0.1", port, connect_timeout=0.3)
        with pytest.raises(asyncio.TimeoutError):
            for _ in range(8):  # (one may still find room in the queue: then the next one waits)
                conn = await pool.connect()
                conn.abandon()


async def test_a_refused_connect_is_an_oserror():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(OSError):
        await UpstreamPool("127.0.0.1", port, connect_timeout=2).connect()


async def test_a_connection_the_instance_closes_leaves_the_pool_and_is_freed():
    async def answer_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer_and_close, "127.0.0.1", 0)
    pool = UpstreamPool("127.0.0.1", server.sockets[0].getsockname()[1], connect_timeout=2)
    conn = await pool.connect()
    pool.put(conn)
    assert len(pool) == 1
    ident = id(conn)
    for _ in range(100):
        if conn.transport is None:
            break
        await asyncio.sleep(0.02)
    assert conn.transport is None and len(pool) == 0 and pool.take() is None
    gc.disable()  # freed by reference counting alone: no cycle left through the parser or the transport
    try:
        del conn
        await asyncio.sleep(0)
        left = [o for o in gc.get_objects() if isinstance(o, UpstreamConnection) and id(o) == ident]
        assert not left, gc.get_referrers(*left)
    finally:
        gc.enable()
    server.close()
    await server.wait_closed()
