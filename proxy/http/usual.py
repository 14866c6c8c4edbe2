"""The usual request packet, parsed by the proxy itself: one whole GET-like HTTP/1.1 head and nothing more.

aiohttp's parse of a request (llhttp, its Cython callbacks, the CIMultiDict, the yarl URL, RawRequestMessage)
and the per-header work of building the instance's head cost ~6 µs a request in situ. Most packets a proxy
sees are one plain head: a method, a path, `Name: value` lines. `parse` takes exactly those and nothing else,
with two compiled regexes and a look at the few headers that matter (a header block seen before is not looked
at again: a keep-alive client sends the same one each time; a whole packet seen before is one look-up: a load
generator, a health check or a poll repeats its request byte for byte); whatever it does not take (any oddity, a body,
two requests, a Connection other than keep-alive ...) returns None and the packet goes to aiohttp's parser
untouched (proxy/http/server.py), which stays the judge of everything unusual.

The rule that makes this safe: `parse` accepts a strict subset of what aiohttp's C parser accepts, and for
what it accepts that parser gives the same method, target, version, header list, keep-alive and no body
(tests/proxy/test_usual_parse.py checks it differentially on thousands of generated heads). Header lines
must be canonical (`name: value`, one space, no trailing whitespace, printable ASCII), so the instance's head
is sliced from the packet: the kept lines are the client's bytes, exactly as `request_head` writes them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from aiohttp import HttpVersion11
from aiohttp.http_parser import SINGLETON_HEADERS
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.request_id import HEADER_LOWER, MAX_LENGTH
from proxy.wire.websocket import HOP_BY_HOP, PEER_MARK

if TYPE_CHECKING:
    from aiohttp.typedefs import RawHeaders

    from proxy.wire.upstream import UpstreamPool

MAX_HEAD = 8190  # bytes: the whole head within aiohttp's max_line_size and max_field_size (their defaults)
MAX_LINES = 100  # header lines (aiohttp's max_headers: 128)
MEMO = 512  # header blocks remembered (a client sends the same block on each request of a keep-alive connection)
MEMO_BLOCK = 2048  # bytes: longer blocks (and packets) are parsed each time (the memos stay within ~2.5 MB)
# The request line and the header lines, canonical only: a token, ": ", printable ASCII words separated by spaces
# (so no leading or trailing whitespace, no tab, no CTL, no obs-fold, no bare CR or LF), up to the blank line.
_REQUEST = re.compile(rb"(GET|POST|PUT|PATCH|DELETE|OPTIONS) (/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*+) HTTP/1\.1\r\n")
_BLOCK = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]++: [!-~]++(?: ++[!-~]++)*+\r\n)++\r\n")
_LINE = re.compile(rb"([^:]+): ([^\r]*)\r\n")

_CUT = frozenset(h.encode() for h in HOP_BY_HOP) | {b"host", b"x-forwarded-for", b"x-forwarded-proto",
                                                   b"x-forwarded-host", PEER_MARK.encode()}  # as request_head
_REFUSE = frozenset({b"transfer-encoding", b"upgrade", b"expect", b"proxy-connection", b"sec-websocket-key1"})
_ONCE = frozenset(h.lower().encode() for h in SINGLETON_HEADERS) | {HEADER_LOWER} | _CUT  # (so: seen once)
_SPECIAL = re.compile(b"\n(" + b"|".join(re.escape(n) for n in sorted(_ONCE | _REFUSE)) + b"): ")  # (lowered)
_KEEP = _ONCE - _CUT - {HEADER_LOWER, b"content-length"}  # only seen once: nothing else to do with them
_NEEDLE = {name: b"\n%s: " % name for name in _ONCE}
# What a header block gives the instance's head (the parts around the peer's address and scheme): the kept lines
# then "X-Forwarded-For: " and the earlier values; "\r\nX-Forwarded-Host: <Host>\r\n"; the client's id.
_Block = tuple[bytes, bytes, "str | None"]
_memo: dict[bytes, _Block | None] = {}
_heads: dict[bytes, UsualHead] = {}  # whole packets taken (at most MEMO, each at most MEMO_BLOCK bytes)
_LINE_FORMAT = b"%s %s HTTP/1.1\r\n"


class UsualHead:
    """A request head `parse` took: what the exchange and the fast path read (proxy/http/message.py's `Message`),
    plus the instance's head pre-cut. `headers` and `raw_headers` are built only when something asks (a route
    keyed by a header, a host pick): the warm path never does."""

    __slots__ = ("method", "path", "version", "should_close", "upgrade", "chunked", "data", "line", "lead", "tail",
                 "rid", "_headers")

    def __init__(self, method: str, path: str, data: bytes, line: int, lead: bytes, tail: bytes,
                 rid: str | None) -> None:  # (the last three: what the header block gave, see _Block)
        self.method = method
        self.path = path
        self.version = HttpVersion11
        self.should_close = self.upgrade = self.chunked = False
        self.data = data  # the packet: the head, all of it
        self.line = line  # where the request line ends (after its CRLF): the instance's, when the target is the same
        self.lead = lead  # the header lines the instance gets as sent (Host, hop-by-hop, X-Forwarded-* cut), then
        # "X-Forwarded-For: " and the earlier values, each followed by ", "
        self.tail = tail  # "\r\nX-Forwarded-Host: <the client's Host>\r\n"
        self.rid = rid  # the client's X-Request-Id when it passes on (it stays in `lead`); None: one is made here
        self._headers: CIMultiDictProxy[str] | None = None

    @property
    def raw_headers(self) -> RawHeaders:
        return tuple(_LINE.findall(self.data, self.data.index(b"\n") + 1, len(self.data) - 2))

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        if self._headers is None:
            self._headers = CIMultiDictProxy(CIMultiDict([(n.decode(), v.decode()) for n, v in self.raw_headers]))
        return self._headers


def parse(data: bytes) -> UsualHead | None:
    """The head if `data` is exactly one usual request head, else None (aiohttp's parser decides). A packet taken
    before (a keep-alive client repeating its request) is one look-up: its head is shared (nothing changes it)."""
    small = len(data) <= MEMO_BLOCK
    if small and (head := _heads.get(data)) is not None:
        return head
    if len(data) > MAX_HEAD or (line := _REQUEST.match(data)) is None:
        return None
    start = line.end()
    block = data[start - 2:]  # (from the request line's CRLF: each header line follows a LF)
    try:
        cut = _memo[block]
    except KeyError:
        cut = _block(block)
        if len(block) <= MEMO_BLOCK:
            if len(_memo) >= MEMO:
                _memo.clear()
            _memo[block] = cut
    if cut is None:
        return None
    head = UsualHead(line[1].decode(), line[2].decode(), data, start, cut[0], cut[1], cut[2])
    if small:
        if len(_heads) >= MEMO:
            _heads.clear()
        _heads[data] = head
    return head


def _block(block: bytes) -> _Block | None:
    """The header lines (after the request line's CRLF) cut for the instance, or None: not a usual block."""
    if _BLOCK.fullmatch(block, 2) is None or block.count(b"\n") > MAX_LINES:
        return None
    low = block.lower()
    names = _SPECIAL.findall(low)
    if len(set(names)) != len(names) or not _REFUSE.isdisjoint(names):
        return None  # a name twice (a singleton's rule, one X-Forwarded-For, one id ...), or not ours
    forwarded = host = b""
    rid: str | None = None
    cuts = []
    for name in names:
        if name in _KEEP:
            continue
        start = low.index(_NEEDLE[name]) + 1
        end = block.index(b"\r", start)
        value = block[start + len(name) + 2:end]
        if name in _CUT:
            if name == b"host":
                host = value
            elif name == b"connection":
                if value.lower() != b"keep-alive":
                    return None  # close, upgrade, names: aiohttp's (its parser must see a close)
            elif name == b"x-forwarded-for":
                forwarded = value + b", "
        elif name == HEADER_LOWER:
            if len(value) <= MAX_LENGTH:  # (printable ASCII, not empty: request_id.sane)
                rid = value.decode()
                continue
        elif value != b"0":
            return None  # a body (Content-Length): aiohttp's
        else:
            continue
        cuts.append((start, end + 2))
    kept, at = [], 2
    for start, end in sorted(cuts):
        kept.append(block[at:start])
        at = end
    if not host:
        return None
    kept += (block[at:-2], b"X-Forwarded-For: ", forwarded)
    return b"".join(kept), b"\r\nX-Forwarded-Host: %s\r\n" % host, rid


def via(peer: str, scheme: str) -> bytes:
    """What follows "X-Forwarded-For: " and the earlier values in the instance's head, up to the X-Forwarded-Host
    line: the same for every request of a connection (proxy/http/server.py makes it once per connection)."""
    return b"%s\r\nX-Forwarded-Proto: %s" % (peer.encode(), scheme.encode())


def request_head(head: UsualHead, target: str, pool: UpstreamPool, via: bytes, rid: str) -> bytes:
    """proxy/http/exchange.py's `request_head` for a head `parse` took: the same bytes, sliced, not rebuilt (the
    request line too when the target goes on as sent: `parse` took only ASCII, so it is the client's bytes)."""
    line = head.data[:head.line] if target == head.path else _LINE_FORMAT % (
        head.method.encode(), target.encode("utf-8", "surrogateescape"))
    if head.rid is not None:
        return b"".join((line, b"Host: ", pool.authority, b"\r\n", head.lead, via, head.tail, b"\r\n"))
    return b"".join((line, b"Host: ", pool.authority, b"\r\n", head.lead, via, head.tail, b"X-Request-Id: ",
                     rid.encode(), b"\r\n\r\n"))
