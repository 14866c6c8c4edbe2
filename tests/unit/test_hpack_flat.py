"""proxy/wire/hpack_flat.py: header blocks any HPACK decoder reads back exactly, with no dynamic-table entry."""

from __future__ import annotations

import h2.config
import h2.connection
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple

from proxy.wire.hpack_flat import FlatEncoder, field, install

HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"x-long", b"v" * 300),
           (b"date", b"Mon, 07 Dec 2026 07:00:00 GMT"), (b"x-" + b"n" * 200, b""), (b":status", b"200")]


def test_round_trip_leaves_the_decoder_table_empty() -> None:
    encoder, decoder = FlatEncoder(Encoder()), Decoder()
    for _ in range(3):  # the second and third blocks come from the cache: the same bytes
        block = encoder.encode(HEADERS)
        assert decoder.decode(block, raw=True) == HEADERS
        assert len(decoder.header_table.dynamic_entries) == 0
    assert field(b":status", b"200") == b"\x88"  # static table entry 8
    assert field(b"content-type", b"text/x") == b"\x0f\x10\x06text/x"  # name index 31, literal not indexed


def test_never_indexed_fields_keep_their_mark() -> None:
    block = FlatEncoder(Encoder()).encode([(b":status", b"200"), NeverIndexedHeaderTuple(b"authorization", b"x")])
    decoded = Decoder().decode(block, raw=True)
    assert decoded == [(b":status", b"200"), (b"authorization", b"x")]
    assert isinstance(decoded[1], NeverIndexedHeaderTuple)


def test_a_smaller_peer_table_is_signalled_first() -> None:
    inner, decoder = Encoder(), Decoder()
    encoder = FlatEncoder(inner)
    inner.header_table_size = 256  # the peer's SETTINGS_HEADER_TABLE_SIZE, as the library applies it
    decoder.max_allowed_table_size = 256
    block = encoder.encode(HEADERS)
    assert block[0] & 0xE0 == 0x20  # a dynamic table size update opens the block (RFC 7541 4.2)
    assert decoder.decode(block, raw=True) == HEADERS
    assert decoder.header_table.maxsize == 256
    assert encoder.encode(HEADERS)[0] & 0xE0 != 0x20  # once


def test_installed_on_a_connection() -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    install(client.encoder)
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    request = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/x?y=1"),
               (b"user-agent", b"t")]
    client.send_headers(1, request, end_stream=True)
    events = server.receive_data(client.data_to_send())
    assert [list(e.headers) for e in events if hasattr(e, "headers")] == [request]
