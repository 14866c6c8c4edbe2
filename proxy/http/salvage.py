"""The whole requests before a parse error: answered first, then the 400 (as nginx does).

aiohttp's parser raises on the first byte that does not parse and drops the requests it had already
parsed from the same packet, so `GET / ...\\r\\n\\r\\n<garbage>` would be answered with one 400 only. When
the connection was at a request boundary before the packet (so the packet can be parsed again on its
own), a fresh parser of the same kind finds the longest prefix that parses (a binary search: a prefix
of a bad stream stays good until the bad byte) and the requests it holds whole, bodies included, are
served before the 400. Only on the error path; the packet is at most one read.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

Message = tuple[Any, StreamReader]
Parser = Callable[[], Any]  # a fresh request parser, configured as the connection's

MAX_SALVAGE = 1 << 16  # bytes: a larger packet is not parsed again (its bodies could pause the connection)
_LIMITS = ("max_line_size", "max_headers", "max_field_size", "auto_decompress")
_DEFAULTS = {name: p.default for name, p in inspect.signature(RequestHandler.__init__).parameters.items()
             if name in _LIMITS}


def parser_factory(protocol: RequestHandler, kind: type, settings: dict[str, Any], limit: int) -> Parser:
    """Parsers like the one aiohttp made for `protocol` (same class, same limits, payloads to `protocol`)."""
    limits = {name: settings.get(name, default) for name, default in _DEFAULTS.items()}
    return lambda: kind(protocol, protocol._loop, limit, payload_exception=RequestPayloadError, **limits)


def _parses(fresh: Parser, data: bytes) -> list[Message] | None:
    """The messages a fresh parser makes of `data`; None if it raises (or the stream upgrades)."""
    try:
        messages, upgraded, _ = fresh().feed_data(data)
    except HttpProcessingError:
        return None
    return None if upgraded else list(messages)


def whole_requests(fresh: Parser, data: bytes) -> list[Message]:
    """The complete requests (head and body) in `data` before the byte that does not parse."""
    if len(data) > MAX_SALVAGE or _parses(fresh, data) is not None:
        return []  # too large to parse again, or parses alone: the error came from earlier bytes
    good, bad = 0, len(data)
    while bad - good > 1:
        middle = (good + bad) // 2
        if _parses(fresh, data[:middle]) is None:
            bad = middle
        else:
            good = middle
    whole: list[Message] = []
    for message, payload in _parses(fresh, data[:good]) or ():
        if payload is not EMPTY_PAYLOAD and not payload.is_eof():
            break  # its body ends in (or after) the bad bytes: it is part of the 400
        whole.append((message, payload))
    return whole
