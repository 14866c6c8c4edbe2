"""The parsed request head as the exchange and the fast path read it.

aiohttp declares `RawRequestMessage` a NamedTuple, but its C parser (the one in use) hands out its own class,
which is not a tuple. Interpreted, nothing checks; compiled by mypyc (`python -m proxy.compile`), a NamedTuple
parameter is checked to be a tuple and every request would fail. So the compiled modules take this protocol,
which both classes satisfy (attributes read through it are looked up by name), as does the usual packet's
head the proxy parses itself (proxy/http/usual.py's `UsualHead`, its headers built only when read).
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import HttpVersion
from aiohttp.typedefs import RawHeaders
from multidict import CIMultiDictProxy


class Message(Protocol):
    """What the data path reads of a request head (aiohttp's RawRequestMessage, either parser's, or a UsualHead)."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def version(self) -> HttpVersion: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def raw_headers(self) -> RawHeaders: ...

    @property
    def should_close(self) -> bool: ...

    @property
    def upgrade(self) -> bool: ...

    @property
    def chunked(self) -> bool: ...
