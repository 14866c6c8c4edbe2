"""The access line's batching (proxy/observe/request_log.py): fields kept per request, lines made at flush."""

from __future__ import annotations

import io
import json
import json.encoder
import math
import random
import struct
import time

from proxy.observe import request_log
from proxy.observe.request_log import FLUSH_LINES, RequestLog
from proxy.request_id import new_id


def _line(prefix: str, method: str, path: str, status: int, seconds: float, client: str, rid: str, sent: int,
          received: int, now: float) -> str:
    """The line as the log wrote it before batching (formatted at the request): the bytes must not change."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(now)))
    return (f'{prefix}"method": {json.dumps(method)}, "path": {json.dumps(path)}, "status": {status}, '
            f'"ms": {seconds * 1000:.2f}, "bytes": {sent}, "request_bytes": {received}, "client": "{client}", '
            f'"request_id": {json.dumps(rid)}, "event": "request", "level": "info", '
            f'"timestamp": "{stamp}.{int((now % 1) * 1e6):06d}Z"}}\n')


async def test_lines_made_at_flush_are_byte_for_byte_those_of_each_request_time(monkeypatch) -> None:
    """Each line keeps its own request's wall-clock time, across a second's boundary, in order."""
    stamps = [1_700_000_000.999_999, 1_700_000_001.000_001, 1_700_000_001.5, 1_700_000_001.6, 1_700_000_001.7,
              1_700_000_002.0]
    clock = iter(stamps)
    monkeypatch.setattr(request_log.time, "time", lambda: next(clock))
    out = io.StringIO()
    log = RequestLog(out)
    prefix = log.prefix("/api/{tail:.*}", "k")
    calls = [("GET", "/a", 200, 0.0012345, "127.0.0.1", "r1", 15, 0),
             ("PATCH", '/b"\n', 499, 1.5, "::1", "r\u00e9", 0, 7),
             ("BREW", "/c", 502, 0.0, "10.0.0.7", "r3", 3, 1),
             ("GET", "/a", 200, 0.000004999, "127.0.0.1", 'x"y\\z', 15, 0),  # (an id with what JSON escapes)
             ("GET", "/a", 200, 12.345, "127.0.0.1", "", 15, 0),
             ("GET", "/a", 200, 0.0, "127.0.0.1", "\u0661\u0662", 15, 0)]  # (digits, not ASCII ones)
    for call in calls:
        log.request(prefix, *call)
    assert out.getvalue() == ""  # nothing written before the flush
    log.flush()
    assert out.getvalue() == "".join(_line(prefix, *call, now) for call, now in zip(calls, stamps, strict=True))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["method"] for line in lines] == ["GET", "PATCH", "BREW", "GET", "GET", "GET"]
    assert [line["request_id"] for line in lines] == [call[5] for call in calls]


async def test_a_full_batch_is_written_at_once_without_waiting_for_the_timer() -> None:
    out = io.StringIO()
    log = RequestLog(out)
    prefix = log.prefix("r", "k")
    for i in range(FLUSH_LINES - 1):
        log.request(prefix, "GET", f"/{i}", 200, 0.001)
    assert out.getvalue() == ""
    log.request(prefix, "GET", "/last", 200, 0.001)
    lines = out.getvalue().splitlines()
    assert len(lines) == FLUSH_LINES and json.loads(lines[-1])["path"] == "/last"
    log.flush()  # nothing left: nothing more written
    assert len(out.getvalue().splitlines()) == FLUSH_LINES


async def test_line_starts_are_remembered_boundedly_and_never_mix_two_requests(monkeypatch) -> None:
    """The memo of line starts (route, key, method, path, status) gives each row its own start, stays bounded,
    and a line made from a remembered start is the line made fresh."""
    monkeypatch.setattr(request_log, "MAX_HEADS", 8)
    clock = iter(1_700_000_000.25 + i * 0.37 for i in range(100))
    monkeypatch.setattr(request_log.time, "time", lambda: next(clock))
    out = io.StringIO()
    log = RequestLog(out)
    prefixes = [log.prefix("r", "a"), log.prefix("r", "b\"")]
    calls = [(prefixes[i % 2], ("GET", "POST", "BREW")[i % 3], f"/p{i % 5}", (200, 404)[i % 4 // 3], 0.001 * i,
              "127.0.0.1", f"id{i}", i, 2 * i) for i in range(40)]
    for call in calls:
        log.request(*call)
    log.flush()
    assert len(log._heads) <= 8
    stamps = [1_700_000_000.25 + i * 0.37 for i in range(40)]
    assert out.getvalue() == "".join(_line(*call, now) for call, now in zip(calls, stamps, strict=True))


def _floats(seed: int, count: int) -> list[float]:
    """Every kind of float a duration may be, and more: uniform in ranges a request takes, any bit pattern (all
    exponents, both signs), the specials."""
    rng = random.Random(seed)
    values = [0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, 1.7976931348623157e308, 2.0 ** 52 / 1e5,
              2.0 ** 53 / 1e5, 4.5e10, 1e300]
    for high in (1e-6, 1e-4, 0.01, 1.0, 100.0, 1e6, 1e11):
        values += [rng.uniform(0, high) for _ in range(count)]
    values += [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(count)]
    return values


def _next(value: float, toward: float, count: int) -> list[float]:
    """The `count` floats after `value` toward `toward` (Python 3.11's nextafter has no `steps`)."""
    out = []
    for _ in range(count):
        value = math.nextafter(value, toward)
        out.append(value)
    return out


def test_the_ms_field_has_the_digits_of_the_percent_format_for_every_float() -> None:
    """`ms_text` is `"%.2f" % (seconds * 1000)`: random floats of every size, and ties (hundredths of a ms at
    exactly a half, where only the format itself decides: to even) with their neighbours a few ulps away."""
    halves = 0
    for k in range(20_000):
        near = (k + 0.5) / 100_000
        for seconds in (near, *_next(near, math.inf, 3), *_next(near, -math.inf, 3)):
            hundredths = seconds * 1000 * 100
            halves += hundredths - int(hundredths) == 0.5
            assert request_log.ms_text(seconds) == "%.2f" % (seconds * 1000), seconds
    assert halves > 1000  # the ties' branch ran
    for seconds in _floats(27, 30_000):
        assert request_log.ms_text(seconds) == "%.2f" % (seconds * 1000), seconds


def test_the_timestamps_microseconds_are_what_the_old_expression_gave() -> None:
    for micro in (*range(-2_000, 1_002_000), 10**7, -(10**7)):
        assert request_log.micro_text(micro) == str(1000000 + micro)[1:], micro


def test_the_request_id_is_quoted_as_encode_basestring_ascii_quotes_it() -> None:
    """Made ids (ASCII letters and digits) skip the call; anything else, non-ASCII letters and digits too, takes it."""
    ids = [new_id() for _ in range(300)] + ["", "a", "Z9", "r\u00e9", "\u0661\u0662", 'x"y', "a\\b", "a b", "a-b",
                                             "a\x7f", "a\x00", "\u00aa", "A" * 200, "id\n", "\U0001f600", "\u00b2"]
    for rid in ids:
        assert request_log.json_text(rid) == json.encoder.encode_basestring_ascii(rid), rid
