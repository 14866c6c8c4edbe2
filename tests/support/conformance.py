"""Support code for the wire-conformance suite (tests/proxy/test_conformance.py).

The suite sends the same raw bytes through two fronts, lazy-proxy and nginx, both started as real
subprocesses in front of one RecordingUpstream, and compares what the upstream received. Everything here
is synchronous (threads and blocking sockets) so module-scoped fixtures do not depend on an event loop,
and nothing normalises the wire: requests are written as bytes and the upstream records bytes.

    client (RawConnection / websockets.sync) -> Front (lazy-proxy | nginx) -> RecordingUpstream
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import unquote_to_bytes

import pytest
from websockets.frames import Frame, Opcode
from websockets.http11 import Request as WsRequest
from websockets.server import ServerProtocol

from bench.lib.nginx import nginx_binary, nginx_conf
from tests.conftest import ci

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = "bench.lib.launcher"
READY_PATH = "/__ready"  # the readiness probe lazy-proxy sends before the first forwarded request
IO_TIMEOUT = 5.0  # no single read or exchange in the suite should take longer

Headers = list[tuple[bytes, bytes]]

# Hop-by-hop header names (RFC 9110 7.6.1, plus the de-facto Proxy-Connection and Keep-Alive).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "proxy-authenticate", "proxy-authorization"})
FORWARDED = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})
# Every header a front sets on the way: X-Forwarded-*, and X-Request-Id (the client's passed through, else one
# made). lazy-proxy always sends the id; the reference nginx does it with the usual `map $http_x_request_id`
# recipe (below), so both fronts are held to the same rule rather than excused from it.
FRONT_SET = FORWARDED | {"x-request-id"}


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the OS picks it; racy but fine for a test run)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def header_values(headers: Headers, name: str) -> list[str]:
    """Every value of `name` (case-insensitive), in the order the lines arrived."""
    want = name.lower().encode()
    return [v.decode("latin-1") for k, v in headers if k.lower() == want]


def header_names(headers: Headers) -> list[str]:
    """Header names exactly as they appeared on the wire (order and case kept)."""
    return [k.decode("latin-1") for k, _ in headers]


# ---------------------------------------------------------------- what the upstream saw


@dataclass
class Recorded:
    """One request as it reached the upstream, byte for byte."""

    conn: int  # upstream connection number: shows reuse (keep-alive) without guessing
    request_line: bytes
    headers: Headers
    body: bytes
    chunked: bool
    trailers: Headers = field(default_factory=list)

    @property
    def method(self) -> bytes:
        return self.request_line.split(b" ", 1)[0]

    @property
    def target(self) -> bytes:
        """The request target exactly as sent (path and query, still percent-encoded)."""
        parts = self.request_line.split(b" ")
        return parts[1] if len(parts) == 3 else b""

    def values(self, name: str) -> list[str]:
        return header_values(self.headers, name)

    def names(self) -> list[str]:
        return header_names(self.headers)


@dataclass
class WsRecord:
    """One WebSocket session on the upstream: the handshake, the messages, how the peer closed it."""

    target: bytes
    headers: Headers
    messages: list[str] = field(default_factory=list)
    close_code: int | None = None  # from the Close frame the upstream received; None if none arrived
    close_reason: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


class UpstreamParseError(Exception):
    pass


class RecordingUpstream:
    """A raw asyncio HTTP/1.1 server that records requests exactly as they arrive.

    Not aiohttp's server on purpose: a real server would parse, case-fold and re-order headers and
    decode the request target, which are the very things under test. Answers:

    - anything: 200, small JSON, Content-Length, keep-alive (unless the client sent Connection: close);
    - a target containing `resp=custom`: 201 with chosen end-to-end and hop-by-hop headers (response side);
    - a target containing `resp=chunked`: a chunked 200 (response side);
    - answers that close the connection (busybox httpd, Python's http.server): `resp=close` (HTTP/1.1,
      `Connection: close`, Content-Length), `resp=http10` (HTTP/1.0, Content-Length), `resp=eof` (HTTP/1.0, the
      body in several writes, ended by the close), `resp=close-eof` (the same as HTTP/1.1 with `Connection: close`);
    - `GET /ws/...` with `Upgrade: websocket`: a WebSocket echo (websockets' sans-I/O protocol) that
      records the close code and reason it receives, and on text `close:<code>:<reason>` closes with them.

    Runs its own event loop in a daemon thread so that pytest's per-test loops never touch it.
    """

    CUSTOM_BODY: ClassVar[bytes] = b'{"custom": true, "bytes": "\\u00e9"}'
    CUSTOM_HEADERS: ClassVar[Headers] = [
        (b"X-Upstream-First", b"1"),
        (b"Set-Cookie", b"a=1; Path=/"),
        (b"cache-control", b"no-store"),
        (b"Set-Cookie", b"b=2; Path=/"),
        (b"X-MiXeD-Case", b"Value With  Spaces"),
        (b"Content-Type", b"application/json; charset=utf-8"),
    ]
    # Hop-by-hop headers the upstream adds to the custom answer; none may reach the client.
    CUSTOM_HOP: ClassVar[Headers] = [
        (b"Connection", b"keep-alive, X-Upstream-Hop"),
        (b"Keep-Alive", b"timeout=30"),
        (b"X-Upstream-Hop", b"secret"),
        (b"Proxy-Connection", b"keep-alive"),
    ]
    CHUNKS: ClassVar[list[bytes]] = [b"first chunk\n", b"x" * 10_000, b"\x00\xff binary \r\n tail", b"last"]

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.probes: list[Recorded] = []
        self.websockets: list[WsRecord] = []
        self.port = 0
        self._changed = threading.Condition()
        self._conns = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", 0, limit=2**20))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="recording-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("recording upstream did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._server is None:
            return
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    # ------------------------------------------------------------ what tests call

    def mark(self) -> int:
        """Remember where the record stands; `since(mark)` returns what came after."""
        with self._changed:
            return len(self.requests)

    def since(self, mark: int, count: int = 1, timeout: float = IO_TIMEOUT) -> list[Recorded]:
        """The requests recorded after `mark`, waiting (up to `timeout`) until there are `count` of them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.requests) - mark < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return list(self.requests[mark:])

    def settle(self, mark: int, quiet: float = 0.3) -> list[Recorded]:
        """The requests after `mark` once nothing new arrived for `quiet` seconds (to prove an absence)."""
        seen = -1
        while True:
            now = len(self.since(mark, 0, 0))
            if now == seen:
                return self.since(mark, 0, 0)
            seen = now
            time.sleep(quiet)

    def ws_mark(self) -> int:
        with self._changed:
            return len(self.websockets)

    def ws_since(self, mark: int, timeout: float = IO_TIMEOUT) -> WsRecord | None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.websockets) <= mark:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
            return self.websockets[mark]

    # ------------------------------------------------------------ the server

    def _record(self, item: Recorded) -> None:
        with self._changed:
            (self.probes if item.target == READY_PATH.encode() else self.requests).append(item)
            self._changed.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns += 1
        conn = self._conns
        try:
            while True:
                head = await self._read_head(reader)
                if head is None:
                    return
                request_line, headers, raw_head = head
                parts = request_line.split(b" ")
                target = parts[1] if len(parts) > 1 else b""
                if _is_ws_upgrade(headers) and target.startswith(b"/ws/"):
                    await self._serve_websocket(reader, writer, request_line, headers, raw_head)
                    return
                if any(v.lower() == "100-continue" for v in header_values(headers, "Expect")):
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body, chunked, trailers = await self._read_body(reader, headers)
                item = Recorded(conn, request_line, headers, body, chunked, trailers)
                self._record(item)
                if closing := self._closing_answer(item):
                    for part in closing:
                        writer.write(part)
                        await writer.drain()
                    return
                writer.write(self._answer(item))
                await writer.drain()
                if any("close" in v.lower() for v in header_values(headers, "Connection")):
                    return
        except (UpstreamParseError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            return  # a front that forwarded a broken request: nothing sensible to record
        finally:
            writer.close()

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, Headers, bytes] | None:
        line = await reader.readline()
        while line in (b"\r\n", b"\n"):  # tolerate a stray CRLF between requests (RFC 9112 2.2)
            line = await reader.readline()
        if not line:
            return None
        raw = [line]
        headers: Headers = []
        while True:
            h = await reader.readline()
            if not h:
                raise UpstreamParseError("EOF in headers")
            raw.append(h)
            if h in (b"\r\n", b"\n"):
                break
            name, sep, value = h.rstrip(b"\r\n").partition(b":")
            if not sep:
                raise UpstreamParseError(f"bad header line {h!r}")
            headers.append((name, value.strip(b" \t")))
        return line.rstrip(b"\r\n"), headers, b"".join(raw)

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, headers: Headers) -> tuple[bytes, bool, Headers]:
        if any("chunked" in v.lower() for v in header_values(headers, "Transfer-Encoding")):
            body = bytearray()
            while True:
                size_line = await reader.readline()
                size = int(size_line.split(b";")[0].strip() or b"x", 16)
                if size == 0:
                    break
                body += await reader.readexactly(size)
                await reader.readexactly(2)
            trailers: Headers = []
            while (t := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = t.rstrip(b"\r\n").partition(b":")
                trailers.append((name, value.strip()))
            return bytes(body), True, trailers
        lengths = header_values(headers, "Content-Length")
        if lengths:
            return await reader.readexactly(int(lengths[0])), False, []
        return b"", False, []

    def _closing_answer(self, item: Recorded) -> list[bytes]:
        """The writes of an answer that ends with the connection (`resp=close|http10|eof|close-eof`), or []."""
        kind = re.search(rb"resp=(close-eof|close|http10|eof)\b", item.target)
        if kind is None:
            return []
        body = b"" if item.method == b"HEAD" else b"".join(self.CHUNKS)
        version = b"HTTP/1.0" if kind[1] in (b"http10", b"eof") else b"HTTP/1.1"
        head = [version + b" 200 OK", b"Content-Type: application/octet-stream", b"X-Closing: " + kind[1]]
        if kind[1].startswith(b"close"):
            head.append(b"Connection: close")
        if not kind[1].endswith(b"eof"):
            head.append(b"Content-Length: %d" % len(b"".join(self.CHUNKS)))
            return [b"\r\n".join(head) + b"\r\n\r\n" + body]
        return [b"\r\n".join(head) + b"\r\n\r\n", *([] if not body else self.CHUNKS)]

    def _answer(self, item: Recorded) -> bytes:
        head_only = item.method == b"HEAD"
        if b"resp=custom" in item.target:
            lines = self.CUSTOM_HEADERS + self.CUSTOM_HOP + [(b"Content-Length", str(len(self.CUSTOM_BODY)).encode())]
            return _response(b"201 Created", lines, b"" if head_only else self.CUSTOM_BODY)
        if b"resp=chunked" in item.target:
            out = bytearray(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n")
            if not head_only:
                for chunk in self.CHUNKS:
                    out += b"%x\r\n%s\r\n" % (len(chunk), chunk)
                out += b"0\r\n\r\n"
            return bytes(out)
        body = json.dumps({"ok": True, "target": item.target.decode("latin-1"), "bytes": len(item.body)}).encode()
        return _response(b"200 OK", [(b"Content-Type", b"application/json"),
                                     (b"Content-Length", str(len(body)).encode())], b"" if head_only else body)

    async def _serve_websocket(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               request_line: bytes, headers: Headers, raw_head: bytes) -> None:
        """Echo WebSocket on the already-read handshake, driven by websockets' sans-I/O protocol."""
        record = WsRecord(request_line.split(b" ")[1], headers)
        with self._changed:
            self.websockets.append(record)
            self._changed.notify_all()
        protocol = ServerProtocol()
        protocol.receive_data(raw_head)
        try:
            request = next(e for e in protocol.events_received() if isinstance(e, WsRequest))
            protocol.send_response(protocol.accept(request))
            await _flush(protocol, writer)
            while True:
                data = await asyncio.wait_for(reader.read(65536), IO_TIMEOUT * 2)
                if not data:
                    protocol.receive_eof()
                else:
                    protocol.receive_data(data)
                for event in protocol.events_received():
                    if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                        text = bytes(event.data).decode()
                        record.messages.append(text)
                        if text.startswith("close:"):
                            _, code, reason = text.split(":", 2)
                            protocol.send_close(int(code), reason)
                        else:
                            protocol.send_text(event.data)
                if protocol.close_rcvd is not None and record.close_code is None:
                    record.close_code, record.close_reason = protocol.close_rcvd.code, protocol.close_rcvd.reason
                await _flush(protocol, writer)
                if not data or (protocol.close_expected() and protocol.state.name == "CLOSED"):
                    return
        except (TimeoutError, ConnectionError, StopIteration):
            return
        finally:
            with self._changed:
                record.done.set()
                self._changed.notify_all()


def _is_ws_upgrade(headers: Headers) -> bool:
    return any(v.lower() == "websocket" for v in header_values(headers, "Upgrade"))


async def _flush(protocol: ServerProtocol, writer: asyncio.StreamWriter) -> None:
    for data in protocol.data_to_send():
        if data:
            writer.write(data)
        elif writer.can_write_eof():
            writer.write_eof()
    await writer.drain()


def _response(status: bytes, headers: Headers, body: bytes) -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
    return head + b"\r\n" + body


# ---------------------------------------------------------------- the client side


@dataclass
class Response:
    """One HTTP response as the client read it; `interim` holds any 1xx status lines that came first."""

    status: int
    reason: bytes
    headers: Headers
    body: bytes
    interim: list[int] = field(default_factory=list)
    chunked: bool = False

    def values(self, name: str) -> list[str]:
        return header_values(self.headers, name)

    def names(self) -> list[str]:
        return header_names(self.headers)

    def json(self) -> Any:
        return json.loads(self.body)


class RawConnection:
    """A blocking HTTP/1.1 client socket that writes exactly the bytes given (no client normalising)."""

    def __init__(self, port: int, timeout: float = IO_TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = bytearray()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if chunk:
            self.buf += chunk
        return bool(chunk)

    def _line(self) -> bytes:
        while (i := self.buf.find(b"\n")) < 0:
            if not self._fill():
                raise ConnectionError("connection closed mid-line")
        line, self.buf = bytes(self.buf[:i + 1]), self.buf[i + 1:]
        return line.rstrip(b"\r\n")

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError(f"connection closed with {n - len(self.buf)} body bytes missing")
        out, self.buf = bytes(self.buf[:n]), self.buf[n:]
        return out

    def _to_eof(self) -> bytes:
        while self._fill():
            pass
        out, self.buf = bytes(self.buf), bytearray()
        return out

    def peek(self, wait: float) -> bytes:
        """Whatever arrives within `wait` seconds, left in the buffer (to see an unwanted 100 Continue)."""
        self.sock.settimeout(wait)
        try:
            self._fill()
        except TimeoutError:
            pass
        finally:
            self.sock.settimeout(IO_TIMEOUT)
        return bytes(self.buf)

    def read_response(self, method: str = "GET") -> Response:
        """Read one final response (collecting 1xx interim ones) framed by Content-Length, chunked or EOF."""
        interim: list[int] = []
        while True:
            status_line = self._line()
            version, status, reason = (status_line.split(b" ", 2) + [b""])[:3]
            if not version.startswith(b"HTTP/"):
                raise ConnectionError(f"not an HTTP response: {status_line[:80]!r}")
            headers: Headers = []
            while line := self._line():
                name, _, value = line.partition(b":")
                headers.append((name, value.strip(b" \t")))
            code = int(status)
            if 100 <= code < 200 and code != 101:
                interim.append(code)
                continue
            break
        chunked = any("chunked" in v.lower() for v in header_values(headers, "Transfer-Encoding"))
        if method == "HEAD" or code in (101, 204, 304):
            body = b""
        elif chunked:
            parts = bytearray()
            while size := int(self._line().split(b";")[0], 16):
                parts += self._exactly(size)
                self._exactly(2)
            while self._line():  # trailers
                pass
            body = bytes(parts)
        elif lengths := header_values(headers, "Content-Length"):
            body = self._exactly(int(lengths[0]))
        else:
            body = self._to_eof()
        return Response(code, reason, headers, body, interim, chunked)


def build_request(method: str, target: bytes | str, headers: Sequence[tuple[str, str]] = (),
                  body: bytes | None = None, *, chunks: Iterable[bytes] | None = None,
                  host: str | None = "conformance.test") -> bytes:
    """Serialise a request as given: Host first (unless None), then `headers` in order, then the body.

    `body` adds a Content-Length; `chunks` sends the body chunked instead.
    """
    raw_target = target.encode("latin-1") if isinstance(target, str) else target
    lines = [method.encode() + b" " + raw_target + b" HTTP/1.1"]
    if host is not None:
        lines.append(b"Host: " + host.encode())
    lines += [k.encode("latin-1") + b": " + v.encode("latin-1") for k, v in headers]
    payload = b""
    if chunks is not None:
        lines.append(b"Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
    elif body is not None:
        lines.append(b"Content-Length: " + str(len(body)).encode())
        payload = body
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def exchange(port: int, request: bytes, method: str = "GET") -> Response:
    """Send one request on a fresh connection and read its response."""
    with RawConnection(port) as conn:
        conn.send(request)
        return conn.read_response(method)


# ---------------------------------------------------------------- path safety


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4, the normalisation an upstream applies before it routes."""
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        elif seg == ".":
            if last:
                out.append("")
        else:
            out.append(seg)
    result = "/".join(out)
    return result if result.startswith("/") else "/" + result


def effective_path(target: bytes) -> str:
    """What an upstream that percent-decodes once and removes dot segments would route on."""
    path = target.split(b"?", 1)[0]
    return remove_dot_segments(unquote_to_bytes(path).decode("latin-1"))


# ---------------------------------------------------------------- the fronts


@dataclass
class Front:
    """A proxy under test, listening on 127.0.0.1:`port`, with its log file (lazy-proxy: its stderr)."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    workdir: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def settled_log_size(self, quiet: float = 0.2) -> int:
        """The log's size once it stopped growing for `quiet` seconds.

        lazy-proxy buffers its per-request lines (flushed every ~50 ms): without waiting, an earlier
        request's line would be blamed on the next one.
        """
        size = -1
        while (now := self.log_size()) != size:
            size = now
            time.sleep(quiet)
        return size

    def log_since(self, offset: int, quiet: float = 0.2) -> bytes:
        """Log bytes written after `offset`, once the log stopped growing for `quiet` seconds."""
        self.settled_log_size(quiet)
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # lazy-proxy drains (1 s here); nginx: fast shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


LAZY_CONFIG = """\
server: {{max_body_size: 1MiB, upstream_timeout: 10s, connect_timeout: 2s, drain_timeout: 1s}}
logging: {{level: info}}
admin: {{enabled: false, on_proxy_port: [health, info, container-status, metrics]}}
containers:
  svc:
    image: x
    port: 8080
    sleep_after: 0            # never stops: "warm" stays warm
    max_instances: 100000     # every "cold" case starts a key of its own
    readiness: {{path: {ready}, interval: 5ms}}
routes:
  - {{path: "/api/{{tail:.*}}", container: svc, key: shared}}
  - {{path: "/container/{{id}}/api/{{tail:.*}}", container: svc, key: "{{id}}", upstream_path: "/api/{{tail}}"}}
  - {{path: "/ws/{{tail:.*}}", container: svc, key: shared}}
"""


def start_lazy_proxy(upstream_port: int, workdir: Path) -> Front:
    """lazy-proxy as `python -m proxy` would run it, every key mapped to the recording upstream.

    Through bench/lib/launcher.py (--upstream), which the data-path rewrite keeps working.
    """
    config = workdir / "lazy.yaml"
    config.write_text(LAZY_CONFIG.format(ready=READY_PATH))
    log = workdir / "lazy.stderr"
    port = free_port()
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", LAUNCHER, "--config", str(config), "--port", str(port),
             "--upstream", f"http://127.0.0.1:{upstream_port}"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
    front = Front("lazy-proxy", port, proc, log, workdir)
    _wait_until_serving(front, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    return front


# nginx's reference set-up. proxy_set_header in a location replaces the inherited list, hence one block
# repeated per location.
_NGINX_FORWARD = """\
            proxy_http_version 1.1;
            proxy_set_header Host $proxy_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Request-Id $req_id;
"""

# The http lines and locations the conformance set-up adds to bench/lib/nginx.py's frame (raw strings: regexes).
NGINX_HTTP = r"""
    client_max_body_size 1m;
    proxy_request_buffering off;
    proxy_buffering off;

    # The client's X-Request-Id, else nginx's own 32-hex $request_id (lazy-proxy's rule, proxy/request_id.py).
    map $http_x_request_id $req_id {
        default $http_x_request_id;
        "" $request_id;
    }

    # The prefix rewrite must hand the upstream the tail *as the client sent it*: location captures
    # see the decoded, normalised $uri, so take the tail (and query) from $request_uri instead.
    map $request_uri $raw_api_tail {
        "~^/container/[^/?]+/api/(?<tail>.*)$" $tail;
        default "";
    }
    # Refuse what cannot be forwarded safely as sent: a raw URI whose shape differs from the normalised
    # one nginx routed on, or a tail with a dot segment (literal or percent-encoded; '/', '\' or their
    # escapes as separators). Without this, /container/x/api/a/../../../container/api/admin is routed
    # (normalised: /container/container/api/admin) and the upstream re-roots the raw tail outside /api/.
    map $request_uri $raw_api_bad {
        "~*^/container/[^/?]+/api/([^?]*(/|%2f|%5c|\x5c))?(\.|%2e){1,2}(/|%2f|%5c|\x5c|\?|$)" 1;
        "~^/container/[^/?]+/api/" 0;
        default 1;
    }"""

NGINX_LOCATIONS = r"""
        location /api/ {
            proxy_pass http://upstream_service;
FORWARD            proxy_set_header Connection "";
        }
        location ~ ^/container/[^/]+/api/ {
            if ($raw_api_bad) { return 400; }
            proxy_pass http://upstream_service/api/$raw_api_tail;
FORWARD            proxy_set_header Connection "";
        }
        location /ws/ {
            proxy_pass http://upstream_service;
FORWARD            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
        }""".replace("FORWARD", _NGINX_FORWARD)


def need_nginx() -> None:
    """Skip without nginx, and fail under CI=true instead: the reference side must run."""
    if nginx_binary() is None:
        if ci():
            pytest.fail("nginx is not installed (CI=true: the reference side must run)")
        pytest.skip("nginx is not installed")


def start_nginx(upstream_port: int, workdir: Path, *, http: str = NGINX_HTTP, locations: str = NGINX_LOCATIONS,
                listen: str = "") -> Front:
    """nginx in the foreground on bench/lib/nginx.py's frame, everything (temp dirs, logs, pid) under `workdir`.

    `listen="http2"`: the port speaks HTTP/2 only, so a plain HTTP/1.1 port beside it tells when nginx is up."""
    binary = nginx_binary() or "/usr/sbin/nginx"
    port = free_port()
    probe = free_port() if listen else port
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(workdir, port, upstream_port, http=http, locations=locations, listen=listen,
                               server=f"        listen 127.0.0.1:{probe};\n" if listen else "",
                               keepalive=16, connections=256, error_level="info"))
    stderr = workdir / "nginx.stderr"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [binary, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf),
             "-g", "daemon off;"],
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
    waiter = Front("nginx", probe, proc, workdir / "error.log", workdir)
    _wait_until_serving(waiter, b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n")
    return Front("nginx", port, proc, workdir / "error.log", workdir)


def _wait_until_serving(front: Front, probe: bytes, timeout: float = 20.0) -> None:
    """Poll until the front answers any HTTP response; fail with its log if it died or never did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not front.alive():
            break
        try:
            exchange(front.port, probe)
            return
        except OSError:
            time.sleep(0.05)
    front.stop()
    logs = "".join(p.read_text(errors="replace")[-3000:] for p in front.workdir.glob("*.std*") if p.is_file())
    logs += front.log.read_text(errors="replace")[-3000:] if front.log.exists() else ""
    raise RuntimeError(f"{front.name} did not start on port {front.port}:\n{logs}")
