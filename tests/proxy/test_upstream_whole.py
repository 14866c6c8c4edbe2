"""UpstreamConnection's shortcut for the common answer (whole in one read, Content-Length, nothing
hop-by-hop): relayed as it came without the parser; everything else goes through httptools, and the
parser is still at a message boundary for the next answer on the same connection."""

from __future__ import annotations

import pytest

from proxy.wire.upstream import UpstreamConnection, UpstreamPool


class Recorder:
    """A ResponseSink that records what the connection reported."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.heard = 0  # on_upstream_data calls

    def on_head(self, status, reason, headers, raw_head):
        self.calls.append(("head", status))
        return True

    def on_body(self, data):
        self.calls.append(("body", data))

    def on_flush(self):
        pass

    def on_end(self, reusable):
        self.calls.append(("end", reusable))

    def on_whole(self, status, data, head_end, reusable=True):
        self.calls.append(("whole", status, data[:head_end], data[head_end:]) + (() if reusable else ("closes",)))

    def on_upstream_data(self):
        self.heard += 1

    def on_upstream_lost(self, error, got_response):
        self.calls.append(("lost", error))


def feed(conn: UpstreamConnection, *chunks: bytes) -> Recorder:
    sink = Recorder()
    conn.sink, conn._got_response, conn._complete, conn._bodyless = sink, False, False, False
    conn._raw_head, conn._head_buf = None, b""
    for chunk in chunks:
        conn.data_received(chunk)
    return sink


@pytest.fixture
def conn() -> UpstreamConnection:
    return UpstreamConnection(UpstreamPool("127.0.0.1", 9, 1.0))


WHOLE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length:  5 \r\n\r\nhello"


def test_a_whole_answer_is_relayed_as_it_came(conn):
    calls = feed(conn, WHOLE).calls
    assert calls == [("whole", 200, WHOLE[:WHOLE.index(b"\r\n\r\n") + 2], b"\r\nhello")]
    assert conn.sink is None


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",  # chunked
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close, X-Hop\r\n\r\nhello",  # names a header
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\nConnection: close\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",  # two lengths
    b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",  # not plain digits: the parser decides
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",  # no body by status
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",  # interim first
    b"HTTP/1.0 200 OK\r\n\r\nhello",  # read to EOF
    b"HTTP/2.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
], ids=["chunked", "connection-names", "two-connections", "keep-alive", "two-lengths", "plus-sign", "204", "interim",
        "http10-eof", "http2"])
def test_anything_else_goes_through_the_parser(conn, response):
    calls = feed(conn, response).calls
    assert calls and all(call[0] != "whole" for call in calls), calls


@pytest.mark.parametrize(("response", "relayed", "reusable"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\nDate: x\r\n\r\nhello",
     b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: x\r\n\r\nhello", False),
    (b"HTTP/1.1 200 OK\r\nconnection:Close \r\nContent-Length: 5\r\n\r\nhello",
     b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", False),
    (b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6\r\nContent-Length: 5\r\n\r\nhello",
     b"HTTP/1.1 200 OK\r\nServer: SimpleHTTP/0.6\r\nContent-Length: 5\r\n\r\nhello", False),
    (b"HTTP/1.0 404 Not Found\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello",
     b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nhello", True),
    (b"HTTP/1.1 200 OK\r\nConnection-Id: 7\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
     b"HTTP/1.1 200 OK\r\nConnection-Id: 7\r\nContent-Length: 5\r\n\r\nhello", False),
], ids=["close", "close-first", "http10", "http10-keep-alive", "look-alike"])
def test_a_whole_answer_of_a_closing_instance_is_relayed_without_its_connection_line(conn, response, relayed,
                                                                                     reusable):
    calls = feed(conn, response).calls
    end = relayed.index(b"\r\n\r\n") + 2
    assert calls == [("whole", int(relayed[9:12]), relayed[:end], relayed[end:]) + (() if reusable else ("closes",))]


def test_a_split_answer_goes_through_the_parser(conn):
    calls = feed(conn, WHOLE[:20], WHOLE[20:]).calls
    assert calls == [("head", 200), ("body", b"hello"), ("end", True)]


def test_the_parser_is_at_a_boundary_after_a_whole_answer(conn):
    assert feed(conn, WHOLE).calls[0][0] == "whole"
    chunked = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert feed(conn, chunked).calls == [("head", 201), ("body", b"abc"), ("end", True)]
    assert feed(conn, WHOLE).calls[0][0] == "whole"


# busybox httpd writes the head, then sends the file: the answer often comes in two reads. A short body still to
# come is waited for (the answer then relayed whole), not parsed piecewise.
SPLIT_HEAD = b"HTTP/1.1 200 OK\r\nDate: x\r\nConnection: close\r\nContent-Length: 15\r\n\r\n"
SPLIT_BODY = b'{"status":"ok"}'


@pytest.mark.parametrize("cut", [len(SPLIT_HEAD), len(SPLIT_HEAD) + 4])
def test_a_short_body_that_comes_after_its_head_is_relayed_whole(conn, cut):
    answer = SPLIT_HEAD + SPLIT_BODY
    calls = feed(conn, answer[:cut], answer[cut:]).calls
    relayed = answer.replace(b"Connection: close\r\n", b"")
    end = relayed.index(b"\r\n\r\n") + 2
    assert calls == [("whole", 200, relayed[:end], relayed[end:], "closes")]
    assert conn.sink is None and conn._partial == b""


def test_a_kept_head_whose_instance_closes_is_relayed_as_before(conn):
    # The head goes out (parsed), then the loss is reported as after a response began: what the parser path did.
    sink = feed(conn, SPLIT_HEAD + b"{")
    assert sink.calls == []
    conn.connection_lost(None)
    assert sink.calls == [("head", 200), ("body", b"{"), ("lost", "connection closed by instance")]


def test_a_long_body_after_its_head_goes_through_the_parser(conn):
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
    sink = feed(conn, head, b"x" * 100_000)
    assert sink.calls[0] == ("head", 200) and sink.calls[-1] == ("end", True)
    assert b"".join(c[1] for c in sink.calls if c[0] == "body") == b"x" * 100_000


# What a head allows is remembered per pool (`UpstreamPool.shapes`): a head seen before must give exactly what it
# gave the first time, whatever came before it on the pool, and a body of another length is still checked.
SEEN = [WHOLE, SPLIT_HEAD + SPLIT_BODY,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\nDate: x\r\n\r\nhello",
        b"HTTP/1.0 404 Not Found\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello",
        b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"]


@pytest.mark.parametrize("first", range(len(SEEN)))
def test_a_remembered_head_is_relayed_as_a_fresh_one(first):
    fresh = [feed(UpstreamConnection(UpstreamPool("127.0.0.1", 9, 1.0)), answer).calls for answer in SEEN]
    pool = UpstreamPool("127.0.0.1", 9, 1.0)
    order = SEEN[first:] + SEEN[:first]
    for _ in range(2):  # the second round from the memo
        assert [feed(UpstreamConnection(pool), answer).calls for answer in order] == fresh[first:] + fresh[:first]
    # The same head with a body of another length: longer goes to the parser, shorter waits for the rest.
    assert feed(UpstreamConnection(pool), WHOLE + b"!").calls[:2] == [("head", 200), ("body", b"hello")]
    conn = UpstreamConnection(pool)
    assert feed(conn, WHOLE[:-1]).calls == [] and conn._partial == WHOLE[:-1]


def test_the_memo_of_heads_stays_small():
    pool = UpstreamPool("127.0.0.1", 9, 1.0)
    for second in range(100):  # one Date a second
        answer = b"HTTP/1.1 200 OK\r\nDate: %d\r\nContent-Length: 5\r\n\r\nhello" % second
        assert feed(UpstreamConnection(pool), answer).calls[0][0] == "whole"
        assert 0 < len(pool.shapes) <= 16
    long = b"HTTP/1.1 200 OK\r\nX-Long: %s\r\nContent-Length: 5\r\n\r\nhello" % (b"x" * 2000)
    pool.shapes.clear()
    assert feed(UpstreamConnection(pool), long).calls[0][0] == "whole" and not pool.shapes  # analysed, not kept


async def test_a_whole_answer_starts_the_instance_s_timeout_count_again() -> None:
    """No `on_upstream_data` precedes a whole answer (one clock read less), so the exchange's `on_whole` clears
    the instance's count of upstream timeouts in a row itself; an answer kept for its short body's rest counts
    as data at once (it may wait)."""
    import asyncio
    from types import SimpleNamespace

    from aiohttp import HttpVersion11
    from aiohttp.streams import EMPTY_PAYLOAD

    from proxy.http.exchange import Exchange
    from proxy.http.watch import ExchangeWatch

    loop = asyncio.get_running_loop()
    client = SimpleNamespace(loop=loop, peer_host="", scheme="http", write=lambda data: None,
                             keeps_alive=lambda message: True, exchange_done=lambda exchange, clean: None)
    handler = SimpleNamespace(egress=lambda *args: None)
    manager = SimpleNamespace(klass=SimpleNamespace(name="c"), key="k")
    message = SimpleNamespace(method="GET", version=HttpVersion11, path="/", chunked=False)
    watch = ExchangeWatch(1 << 20, 60.0)
    pool = UpstreamPool("127.0.0.1", 9, 1.0)
    watch.timeouts[pool] = 2
    exchange = Exchange(watch, client, handler, manager, pool, message, EMPTY_PAYLOAD, "k", b"", "r",  # type: ignore[arg-type]
                        fast=False)
    conn = UpstreamConnection(pool)
    conn.carry(exchange)
    conn.data_received(WHOLE)
    assert exchange.done and exchange.status == 200 and pool not in watch.timeouts
    assert feed(UpstreamConnection(pool), WHOLE).heard == 0
    partial = feed(UpstreamConnection(pool), WHOLE[:-2])
    assert partial.calls == [] and partial.heard == 1  # (kept for the rest of its body: heard from the instance)
