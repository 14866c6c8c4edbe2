"""`readiness: grpc`: one call of the standard gRPC health service, `grpc.health.v1.Health/Check`.

The call is made by hand over the `h2` library (HTTP/2 with prior knowledge, as plaintext gRPC is): one
connection, one stream, a request message of one optional string field, a response of one enum field. That
keeps grpcio (its own threads and C core) out of the proxy for a probe a few hundred bytes long. Ready means
grpc-status 0 and `SERVING`; a server without the health service (UNIMPLEMENTED), or one that answers in
another protocol (an HTTP/1 app), will never be ready, so the wait ends at once with the reason.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import h2.exceptions

__all__ = ["HEALTH_PATH", "Health", "check_health"]

HEALTH_PATH = "/grpc.health.v1.Health/Check"
SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
GRPC_CODES = {1: "CANCELLED", 2: "UNKNOWN", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND", 7: "PERMISSION_DENIED",
              12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE", 16: "UNAUTHENTICATED"}
UNIMPLEMENTED = 12
MAX_ANSWER = 64 * 1024  # a health answer is a few bytes: more is not a health service


@dataclass(frozen=True)
class Health:
    """One Check's outcome in a few words; `final`: asking again cannot help."""

    ok: bool
    what: str
    final: bool = False


def _request(service: str) -> bytes:
    """The length-prefixed HealthCheckRequest: field 1 (`service`), a string, left out when empty."""
    name = service.encode()
    message = b"" if not name else b"\x0a" + _varint(len(name)) + name
    return b"\x00" + len(message).to_bytes(4, "big") + message


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _status(body: bytes) -> int:
    """HealthCheckResponse.status (field 1, varint) of a length-prefixed message; 0 when absent."""
    if len(body) < 5 or body[0] != 0:
        raise ValueError("not an uncompressed gRPC message")
    message, status, i = body[5:5 + int.from_bytes(body[1:5], "big")], 0, 0
    while i < len(message):
        tag = message[i]
        i += 1
        value, shift = 0, 0
        while True:  # every field of this message is a varint (a foreign wire type is malformed)
            if tag & 7 != 0 or i >= len(message):
                raise ValueError("malformed HealthCheckResponse")
            byte = message[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if tag >> 3 == 1:
            status = value
    return status


async def check_health(host: str, port: int, service: str, timeout: float) -> Health:
    """One Check of `service` ("" is the whole server) at host:port. Connection errors are raised (OSError)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        return await _call(reader, writer, f"{host}:{port}", service, timeout)
    except h2.exceptions.ProtocolError as exc:
        return Health(False, f"readiness grpc: the app does not speak HTTP/2 on its port ({type(exc).__name__}): "
                             "a gRPC server does; use readiness tcp or a path", final=True)
    finally:
        writer.close()


async def _call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: str, service: str,
                timeout: float) -> Health:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, [(":method", "POST"), (":scheme", "http"), (":path", HEALTH_PATH),
                               (":authority", authority), ("content-type", "application/grpc"), ("te", "trailers"),
                               ("grpc-timeout", f"{max(1, int(timeout * 1000))}m")])
    conn.send_data(stream, _request(service), end_stream=True)
    writer.write(conn.data_to_send())
    headers: dict[str, str] = {}
    body = b""
    received, framed = False, False  # any bytes; any whole HTTP/2 frame
    while True:
        data = await reader.read(65536)
        if not data:
            if received and not framed:  # an HTTP/1 server's refusal of the preface (h2 took it for a frame's start)
                raise h2.exceptions.ProtocolError("bytes that are no HTTP/2 frame, then a hang-up")
            return Health(False, "grpc health: connection closed without an answer")
        events = conn.receive_data(data)
        received, framed = True, framed or bool(events)
        for event in events:
            if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                headers.update((str(k), str(v)) for k, v in event.headers)
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if len(body) > MAX_ANSWER:
                    return Health(False, "grpc health: the answer is too large for a health check")
            elif isinstance(event, h2.events.StreamReset):
                return Health(False, f"grpc health: the stream was reset (error code {event.error_code})")
            elif isinstance(event, h2.events.ConnectionTerminated):
                return Health(False, "grpc health: the server closed the connection (GOAWAY)")
            elif isinstance(event, h2.events.StreamEnded):
                return _outcome(headers, body, service)
        writer.write(conn.data_to_send())


def _outcome(headers: dict[str, str], body: bytes, service: str) -> Health:
    if headers.get(":status") != "200":
        return Health(False, f"grpc health: HTTP status {headers.get(':status')}")
    code = int(headers.get("grpc-status", "2")) if headers.get("grpc-status", "2").isdigit() else 2
    if code != 0:
        name = GRPC_CODES.get(code, str(code))
        message = headers.get("grpc-message", "")
        if code == UNIMPLEMENTED:
            return Health(False, "readiness grpc: the app serves no grpc.health.v1.Health (UNIMPLEMENTED): add "
                                 "the standard health service, or use readiness tcp", final=True)
        what = f"grpc health{f' of {service!r}' if service else ''}: {name}" + (f" ({message})" if message else "")
        return Health(False, what)
    try:
        status = _status(body)
    except ValueError as exc:
        return Health(False, f"grpc health: {exc}")
    word = SERVING_STATUS.get(status, str(status))
    return Health(status == 1, f"grpc health{f' of {service!r}' if service else ''}: {word}")
