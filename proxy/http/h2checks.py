"""A client's request and trailer header blocks checked as RFC 9113 8.2 and 8.3 require, in one pass.

Why not the `h2` library's own checks (`validate_inbound_headers`): they are a chain of seven generators run per
header block, profiled at 7-9% of the proxy's CPU per HTTP/2 request. `check` accepts in one loop the block that
is plainly well-formed (the usual case); any other block goes through the library's checks after all, so a
malformed request is refused with the library's own ProtocolError, as before (the caller then ends the
connection with GOAWAY PROTOCOL_ERROR as the library did: proxy/http/h2server.py).
"""

from __future__ import annotations

import re
from typing import Iterable

from h2.utilities import CONNECTION_HEADERS, HeaderValidationFlags, validate_headers

Header = tuple[bytes, bytes]
_NAME = re.compile(rb"[^\x00-\x20A-Z\x7f-\xff:]+")  # a regular field name: no control, space, uppercase or colon
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]\Z")  # NUL, CR, LF anywhere; whitespace at either end
_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))  # a request's (CONNECT: the library's)
_REQUEST = HeaderValidationFlags(is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False)
_TRAILERS = HeaderValidationFlags(is_client=False, is_trailer=True, is_response_header=False, is_push_promise=False)


def check(headers: Iterable[Header], trailers: bool = False) -> None:
    """Raises h2.exceptions.ProtocolError for a malformed request (or trailer) block, the library's error."""
    if not well_formed(headers, trailers):
        for _ in validate_headers(headers, _TRAILERS if trailers else _REQUEST):
            pass


def well_formed(headers: Iterable[Header], trailers: bool = False) -> bool:
    """True when the block passes every check of the library's (False: maybe not, the library decides)."""
    pseudo: dict[bytes, bytes] = {}
    regular = False
    host: bytes | None = None
    for name, value in headers:
        if name[:1] == b":":
            if trailers or regular or name in pseudo or name not in _PSEUDO:
                return False
            pseudo[name] = value
        else:
            regular = True
            if _NAME.fullmatch(name) is None or name in CONNECTION_HEADERS or (name == b"te" and value != b"trailers"):
                return False
            if name == b"host":
                if host is not None:
                    return False
                host = value
        if value and _BAD_VALUE.search(value) is not None:
            return False
    if trailers:
        return True
    authority = pseudo.get(b":authority")
    return (pseudo.get(b":method", b"CONNECT") != b"CONNECT" and b":scheme" in pseudo
            and bool(pseudo.get(b":path")) and (authority is not None or host is not None)
            and (authority is None or host is None or authority == host))
