"""UpstreamConnection's shortcut for the common answer (whole in one read, Content-Length, nothing
hop-by-hop): relayed as it came without the parser; everything else goes through httptools, and the
parser is still at a message boundary for the next answer on the same connection."""

from __future__ import annotations

import pytest

from proxy.wire.upstream import UpstreamConnection, UpstreamPool


class Recorder:
    """A Relay that records what the connection reported."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_head(self, status, reason, headers, raw_head):
        self.calls.append(("head", status))
        return True

    def on_body(self, data):
        self.calls.append(("body", data))

    def on_flush(self):
        pass

    def on_end(self, reusable):
        self.calls.append(("end", reusable))

    def on_whole(self, status, data, head_end):
        self.calls.append(("whole", status, data[:head_end], data[head_end:]))

    def on_upstream_data(self):
        pass

    def on_upstream_lost(self, error, got_response):
        self.calls.append(("lost", error))


def feed(conn: UpstreamConnection, *chunks: bytes) -> Recorder:
    relay = Recorder()
    conn.relay, conn._got_response, conn._complete, conn._bodyless = relay, False, False, False
    conn._raw_head, conn._head_buf = None, b""
    for chunk in chunks:
        conn.data_received(chunk)
    return relay


@pytest.fixture
def conn() -> UpstreamConnection:
    return UpstreamConnection(UpstreamPool("127.0.0.1", 9, 1.0))


WHOLE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length:  5 \r\n\r\nhello"


def test_a_whole_answer_is_relayed_as_it_came(conn):
    calls = feed(conn, WHOLE).calls
    assert calls == [("whole", 200, WHOLE[:WHOLE.index(b"\r\n\r\n") + 2], b"\r\nhello")]
    assert conn.relay is None


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",  # chunked
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",  # hop-by-hop
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",  # two lengths
    b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",  # not plain digits: the parser decides
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",  # no body by status
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",  # interim first
    b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",  # not HTTP/1.1
    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello",  # the rest is still to come
], ids=["chunked", "connection", "keep-alive", "two-lengths", "plus-sign", "204", "interim", "http10", "short"])
def test_anything_else_goes_through_the_parser(conn, response):
    calls = feed(conn, response).calls
    assert calls and all(call[0] != "whole" for call in calls), calls


def test_a_split_answer_goes_through_the_parser(conn):
    calls = feed(conn, WHOLE[:20], WHOLE[20:]).calls
    assert calls == [("head", 200), ("body", b"hello"), ("end", True)]


def test_the_parser_is_at_a_boundary_after_a_whole_answer(conn):
    assert feed(conn, WHOLE).calls[0][0] == "whole"
    chunked = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert feed(conn, chunked).calls == [("head", 201), ("body", b"abc"), ("end", True)]
    assert feed(conn, WHOLE).calls[0][0] == "whole"
