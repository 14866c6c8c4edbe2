"""proxy/http/salvage.py: the whole requests before bytes that do not parse, with aiohttp's own parser."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser
from aiohttp.streams import EMPTY_PAYLOAD

from proxy.http.salvage import MAX_SALVAGE, whole_requests


class _Protocol:
    """What a parser's payloads ask of their connection."""

    _reading_paused = False

    def pause_reading(self) -> None: ...

    def resume_reading(self, resume_parser: bool = True) -> None: ...


@pytest.fixture
def fresh() -> Any:
    loop = asyncio.new_event_loop()
    yield lambda: HttpRequestParser(_Protocol(), loop, 2**16)  # type: ignore[arg-type]
    loop.close()


GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"


def paths(messages: list[Any]) -> list[str]:
    return [message.path for message, _ in messages]


def test_the_requests_before_the_bad_bytes_are_kept_bodies_whole(fresh):
    data = GET + POST + b"\x01\x02 not http\r\n\r\n"
    with pytest.raises(HttpProcessingError):
        fresh().feed_data(data)  # what the connection's parser does: all or nothing
    found = whole_requests(fresh, data)
    assert paths(found) == ["/a", "/b"]
    assert found[0][1] is EMPTY_PAYLOAD and found[1][1].read_nowait() == b"hello"


def test_a_request_whose_body_holds_the_bad_bytes_is_not_kept(fresh):
    data = GET + b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
    assert paths(whole_requests(fresh, data)) == ["/a"]


def test_nothing_is_kept_when_the_first_bytes_are_bad_or_the_packet_parses(fresh):
    assert whole_requests(fresh, b"\x01 nonsense\r\n\r\n" + GET) == []
    assert whole_requests(fresh, GET + GET) == []  # parses alone: the error came from what went before


def test_a_packet_over_the_limit_is_not_parsed_again(fresh):
    data = GET + b"X" * MAX_SALVAGE + b"\x01\r\n\r\n"
    assert whole_requests(fresh, data) == []
