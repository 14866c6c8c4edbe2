"""HPACK encoding without the dynamic table, as nginx encodes its responses: the `h2` library's encoder, swapped in.

Why: the library's encoder searches its dynamic table linearly for every header and inserts every new value
(request ids, dates, lengths: a new entry per answer, an eviction per answer); profiled, that was a tenth of the
proxy's CPU per gRPC call. Here each field is a static-table index, or a literal *without indexing* (with the
static table's name index when there is one), so the peer's decoder table stays empty and nothing is searched.
Fields the library marks never-indexed (`NeverIndexedHeaderTuple`: short cookies, authorization) keep that mark.
Values are sent without Huffman coding (a few bytes more per header block, none of the pure-Python bit work).
The one piece of table state an encoder owes its peer, the size updates after a SETTINGS_HEADER_TABLE_SIZE
change (RFC 7541 4.2), is still the library's.
"""

from __future__ import annotations

from typing import Iterable

from hpack import Encoder, HeaderTuple
from hpack.hpack import encode_integer
from hpack.table import HeaderTable

CACHED = 2048  # encoded fields kept (most repeat: content-type, te, status); the cache starts over beyond it
_PAIRS: dict[tuple[bytes, bytes], int] = {}
_NAMES: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _PAIRS.setdefault((_name, _value), _index)
    _NAMES.setdefault(_name, _index)


def _integer(value: int, prefix_bits: int, mask: int) -> bytes:
    out = encode_integer(value, prefix_bits)
    out[0] |= mask
    return bytes(out)


def _string(data: bytes) -> bytes:
    return (bytes((len(data),)) if len(data) < 127 else _integer(len(data), 7, 0)) + data


def field(name: bytes, value: bytes, never_indexed: bool = False) -> bytes:
    """One header field's representation: indexed (static table), else a literal that is not indexed."""
    if not never_indexed and (index := _PAIRS.get((name, value))) is not None:
        return _integer(index, 7, 0x80)
    mask = 0x10 if never_indexed else 0x00
    index = _NAMES.get(name, 0)
    return (_integer(index, 4, mask) if index else bytes((mask,)) + _string(name)) + _string(value)


class FlatEncoder:
    """`encode` in place of `Encoder.encode` (same call, `huffman` ignored); `encoder` keeps the size updates."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.cache: dict[tuple[bytes, bytes], bytes] = {}

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        block = []
        table = self.encoder.header_table
        if table.resized:
            block.append(self.encoder._encode_table_size_change())
            table.resized = False
        cache = self.cache
        for header in headers:
            name, value = header[0], header[1]
            if type(name) is not bytes or type(value) is not bytes:  # the library hands bytes; str to be safe
                name, value = _bytes(name), _bytes(value)
            if isinstance(header, HeaderTuple) and not header.indexable:
                block.append(field(name, value, never_indexed=True))
                continue
            encoded = cache.get((name, value))
            if encoded is None:
                if len(cache) >= CACHED:
                    cache.clear()
                encoded = cache[name, value] = field(name, value)
            block.append(encoded)
        return b"".join(block)


def _bytes(text: bytes | str) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8")


def install(encoder: Encoder) -> None:
    """Encode with a `FlatEncoder` from now on (the library calls `encoder.encode` for every header block)."""
    encoder.encode = FlatEncoder(encoder).encode  # type: ignore[method-assign, assignment]
