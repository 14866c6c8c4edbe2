"""A raw HTTP/2 client for the conformance and defence tests: sends what a well-behaved client never would
(uppercase names, connection headers, bad pseudo-headers, a wrong Content-Length, resets) and reports what
came back, frame by frame as the `h2` library (client side, outbound validation off) saw it."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

Header = tuple[bytes, bytes]


@dataclass
class Outcome:
    status: int | None = None  # the response's :status, if a response came
    headers: list[Header] = field(default_factory=list)
    body: bytes = b""
    reset: int | None = None  # RST_STREAM error code, if the stream was reset
    goaway: int | None = None  # GOAWAY error code, if the connection was ended
    closed: bool = False  # the connection closed (or broke) before the stream ended
    settings: dict[int, int] = field(default_factory=dict)  # the server's SETTINGS

    @property
    def refused(self) -> bool:
        """No success: a 4xx/5xx answer, a reset or the connection ended."""
        return self.status is None or self.status >= 400


def connect(port: int, timeout: float = 5.0) -> tuple[socket.socket, h2.connection.H2Connection]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False,
        validate_inbound_headers=False, split_outbound_cookies=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def read_until(sock: socket.socket, conn: h2.connection.H2Connection, stream_id: int, outcome: Outcome,
               timeout: float = 5.0) -> Outcome:
    """Read frames until the stream ends or is reset, or the connection ends (or `timeout` of silence)."""
    sock.settimeout(timeout)
    while True:
        try:
            data = sock.recv(65536)
        except (TimeoutError, socket.timeout):
            return outcome
        except OSError:
            outcome.closed = True
            return outcome
        if not data:
            outcome.closed = True
            return outcome
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            outcome.closed = True
            return outcome
        done = False
        for event in events:
            if isinstance(event, h2.events.RemoteSettingsChanged):
                outcome.settings.update({int(k): v.new_value for k, v in event.changed_settings.items()})
            elif isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                outcome.headers = list(event.headers)  # type: ignore[arg-type]
                outcome.status = int(dict(outcome.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                outcome.body += event.data or b""
                conn.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                done = True
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                outcome.reset = int(event.error_code or 0)
                done = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                outcome.goaway = int(event.error_code or 0)
                done = True
        out = conn.data_to_send()
        if out:
            try:
                sock.sendall(out)
            except OSError:
                pass
        if done:
            return outcome


def request(port: int, headers: list[Header], body: bytes = b"", *, end: bool = True, reset: bool = False,
            timeout: float = 5.0) -> Outcome:
    """One request on a fresh connection; `end=False` leaves the body open, `reset` then cancels the stream."""
    sock, conn = connect(port, timeout)
    outcome = Outcome()
    try:
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, headers, end_stream=end and not body)
        if body:
            conn.send_data(stream_id, body, end_stream=end)
        if reset:
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        try:
            sock.sendall(conn.data_to_send())
        except OSError:  # the server hung up while we sent (it refused what it read so far)
            outcome.closed = True
            return outcome
        if reset:
            read_until(sock, conn, stream_id, outcome, 0.5)
            return outcome
        return read_until(sock, conn, stream_id, outcome, timeout)
    finally:
        sock.close()


def get(path: str, *extra: Header, method: bytes = b"GET", authority: bytes = b"localhost") -> list[Header]:
    return [(b":method", method), (b":scheme", b"http"), (b":authority", authority), (b":path", path.encode()),
            *extra]
