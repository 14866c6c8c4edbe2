"""proxy/http/h2checks.py against the `h2` library's own header checks: never laxer, and the same error."""

from __future__ import annotations

import random

import pytest
from h2.exceptions import ProtocolError
from h2.utilities import HeaderValidationFlags, validate_headers

from proxy.http.h2_to_h2 import answer_fields
from proxy.http.h2checks import check, well_formed

Header = tuple[bytes, bytes]
GOOD: list[Header] = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"localhost:8080"),
                      (b":path", b"/api/x?y=1"), (b"user-agent", b"h2load nghttp2/1.52.0"),
                      (b"accept", b"*/*"), (b"te", b"trailers"), (b"content-type", b"application/grpc")]
PIECES = [b"A", b" ", b"\t", b":", b"\r", b"\n", b"\x00", b"\x7f", b"\xff", b"", b"x", b"CONNECT", b"trailers"]


def library(headers: list[Header], trailers: bool) -> str | None:
    """The library's verdict: None (accepted) or its error message."""
    flags = HeaderValidationFlags(is_client=False, is_trailer=trailers, is_response_header=False,
                                  is_push_promise=False)
    try:
        list(validate_headers(headers, flags))
    except ProtocolError as exc:
        return str(exc)
    return None


def ours(headers: list[Header], trailers: bool) -> str | None:
    try:
        check(headers, trailers)
    except ProtocolError as exc:
        return str(exc)
    return None


def mutations(seed: int) -> list[list[Header]]:
    rng = random.Random(seed)
    out = []
    for _ in range(3000):
        block = list(GOOD)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(block))
            name, value = block[i]
            what = rng.randrange(7)
            if what == 0:
                name = name[:rng.randint(0, len(name))] + rng.choice(PIECES) + name[rng.randint(0, len(name)):]
            elif what == 1:
                value = rng.choice([rng.choice(PIECES) + value, value + rng.choice(PIECES), rng.choice(PIECES)])
            elif what == 2:
                block.pop(i)
                continue
            elif what == 3:
                block.insert(rng.randrange(len(block) + 1), block[i])
            elif what == 4:
                block.insert(rng.randrange(len(block) + 1),
                             rng.choice([(b"host", b"localhost:8080"), (b"host", b"other"), (b":status", b"200"),
                                         (b"connection", b"close"), (b"te", b"gzip"), (b":protocol", b"ws"),
                                         (b"cookie", b"a=1"), (b":path", b"")]))
            elif what == 5:
                j = rng.randrange(len(block))
                block[i], block[j] = block[j], block[i]
                continue
            else:
                name, value = rng.choice([(b":method", b"CONNECT"), (b":path", b""), (b"te", b"Trailers")])
            block[i] = (name, value)
        out.append(block)
    return out


@pytest.mark.parametrize("trailers", [False, True])
def test_never_laxer_and_the_same_error(trailers: bool) -> None:
    blocks = mutations(7) if not trailers else [[(n, v) for n, v in b if n[:1] != b":"] for b in mutations(8)]
    blocks += [GOOD, [(n, v) for n, v in GOOD if n[:1] != b":"]]
    accepted_fast = 0
    for block in blocks:
        assert ours(block, trailers) == library(block, trailers), block
        if well_formed(block, trailers):
            accepted_fast += 1
            assert library(block, trailers) is None, block
    assert accepted_fast > 50  # the one-pass check does take the well-formed blocks


def test_the_usual_request_takes_the_one_pass_check() -> None:
    assert well_formed(GOOD)
    assert well_formed(GOOD + [(b"host", b"localhost:8080")])
    assert not well_formed(GOOD + [(b"host", b"elsewhere")])  # (the library refuses it)
    assert library(GOOD + [(b"host", b"elsewhere")], False) is not None


def test_answer_fields_are_sent_normalized() -> None:
    fields = [(b"Grpc-Status", b" 0 "), (b":status", b"200"), (b"Connection", b"close"), (b"x-a", b"1")]
    assert answer_fields(fields) == [(b"grpc-status", b"0"), (b"x-a", b"1")]
