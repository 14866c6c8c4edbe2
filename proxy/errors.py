"""Refusals and their answers: every error the proxy gives is a `Refusal`, mapped to JSON in one place.

A refusal knows its status, its error name and (for 503s) how long a client should wait; the
handler only raises, and `refusal_response` (aiohttp path) or `refusal_bytes` (fast path) renders
it, always in the same shape: `{"error": ..., "reason": ..., "status": ..., "request_id": ..., ...}`.

A refusal's `reason` may carry internal detail (socket paths, etcd URLs, exception texts, exit codes).
Those classes have a `public` sentence: with `errors.detail: public` (the default) the client reads that
and the detail goes to the log, one JSON line with the request id; `full` answers with the detail.
Refusals about the client's own input (400, 413, 417) and the operator's admin API keep their reason.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, Awaitable, Callable, Literal, Mapping

import structlog
from aiohttp import web

from proxy import request_id

ErrorDetail = Literal["public", "full"]
DETAIL = web.AppKey("error_detail", str)  # an app's `errors.detail`; an app without it (admin) answers in full
log = structlog.get_logger("proxy.errors")


class Refusal(Exception):
    """Base of every answer the proxy gives instead of the instance's."""

    status: int = 500
    error: str = "internal error"
    retry_after: float | None = None  # seconds, for the Retry-After header
    public: str | None = None  # what a client reads instead of `reason` (None: the reason is public)

    def __init__(self, reason: str, *, retry_after: float | None = None, public: str | None = None,
                 **extra: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.extra = extra
        if retry_after is not None:
            self.retry_after = retry_after  # per instance, over the class default
        if public is not None:
            self.public = public


class InvalidKey(Refusal):
    status, error = 400, "invalid key"


class InvalidPath(Refusal):
    status, error = 400, "invalid path"


class InvalidInput(Refusal):
    """An admin request body that does not say what the operation needs."""

    status, error = 400, "invalid input"


class BodyTooLarge(Refusal):
    status, error = 413, "request body too large"


class ExpectationFailed(Refusal):
    status, error = 417, "expectation failed"


class NotWarm(Refusal):
    """A warm-only route found the instance not running; it never starts one."""

    status, error, retry_after = 503, "not warm", 1.0


class Fenced(Refusal):
    """Clustered: this replica's lease is not certainly valid, so it may not act on the key (another replica
    may own it now); the request is asked again once the ownership is resolved."""

    status, error, retry_after = 503, "owner moving", 1.0
    public = "the replica serving this app is changing; try again shortly"


class StartFailed(Refusal):
    """The backend refused or the instance died while starting; the next request retries."""

    status, error, retry_after = 503, "start failed", 1.0
    public = "the app could not be started"


class CapacityExceeded(Refusal):
    """Starting would exceed the class's max_instances."""

    status, error, retry_after = 503, "capacity exceeded", 5.0
    public = "no capacity is free to start the app"


class BreakerOpen(Refusal):
    """The key's crash-loop breaker is open: its starts failed or crashed too often (proxy/lifecycle/breaker.py)."""

    status, error = 503, "crash loop"
    public = "the app keeps failing to start; starts are paused for a while"


class RuntimeUnreachable(Refusal):
    """The instance refused the connection and the container runtime cannot be asked why (daemon down)."""

    status, error, retry_after = 503, "runtime unreachable", 2.0
    public = "the container runtime is unavailable"


class StartTimeout(Refusal):
    """The instance was not ready within start_timeout."""

    status, error = 504, "start timeout"
    public = "the app did not become ready in time"

    def __init__(self, reason: str, *, seconds: float | None = None, **extra: Any) -> None:
        if seconds is not None:
            extra.setdefault("public", f"the app did not become ready within {seconds:g}s")
        super().__init__(reason, **extra)


class Unauthorized(Refusal):
    """An admin mutation without the right bearer token (or none is configured)."""

    status, error = 401, "unauthorized"


class Forbidden(Refusal):
    """An admin operation config turns off (`admin.exec: false`)."""

    status, error = 403, "forbidden"


class NotFound(Refusal):
    """An admin request for a container class or key the proxy does not know."""

    status, error = 404, "not found"


class Conflict(Refusal):
    """An admin operation the key's state does not allow (pause a stopped key, exec in a stopped one)."""

    status, error = 409, "conflict"


class NotSupported(Refusal):
    """The backend cannot do it (the stub cannot pause or exec)."""

    status, error = 409, "not supported"


class ActionFailed(Refusal):
    """The runtime refused an admin operation (pause, resume, exec); `reason` has its words."""

    status, error = 502, "action failed"


class UpstreamError(Refusal):
    """The instance failed us: refused, reset, garbled (502) or silent past upstream_timeout (504)."""

    error = "upstream error"

    def __init__(self, status: int, reason: str, **extra: Any) -> None:
        extra.setdefault("public", "the app did not answer in time" if status == 504
                         else "the app's connection failed")
        super().__init__(reason, **extra)
        self.status = status


def error_body(status: int, error: str, reason: str, **extra: Any) -> dict[str, Any]:
    """The one shape of every refusal, on both data paths."""
    return {"error": error, "reason": reason, "status": status, **extra}


def refusal_body(refusal: Refusal, rid: str = "", detail: str = "public") -> dict[str, Any]:
    """The refusal's JSON body: its public sentence or (`detail="full"`) its reason, plus the request id.

    The one place the public/full choice is made; a hidden detail is logged here, once, with the id."""
    reason = refusal.reason
    if refusal.public is not None and refusal.public != reason:
        log.warning("refused", status=refusal.status, error=refusal.error, reason=reason, request_id=rid or None,
                    **refusal.extra)
        if detail != "full":
            reason = refusal.public
    body = error_body(refusal.status, refusal.error, reason, **refusal.extra)
    if rid:
        body["request_id"] = rid
    return body


def refusal_headers(refusal: Refusal, rid: str = "") -> dict[str, str]:
    """Retry-After for a refusal that has one, and the request id (the proxy's own answers carry it)."""
    headers = {} if refusal.retry_after is None else {"Retry-After": str(max(1, round(refusal.retry_after)))}
    if rid:
        headers[request_id.HEADER] = rid
    return headers


def refusal_response(refusal: Refusal, rid: str = "", detail: str = "public") -> web.Response:
    """A refusal on the aiohttp path (the fast path writes the same as bytes: `refusal_bytes`)."""
    return web.json_response(refusal_body(refusal, rid, detail), status=refusal.status,
                             headers=refusal_headers(refusal, rid))


def refusal_bytes(refusal: Refusal, close: bool, rid: str = "", detail: str = "public") -> tuple[bytes, int]:
    """A refusal as raw bytes for the fast path (and its head's length): what `refusal_response` answers."""
    body = json.dumps(refusal_body(refusal, rid, detail)).encode()
    head = [f"HTTP/1.1 {refusal.status} {HTTPStatus(refusal.status).phrase}",
            "Content-Type: application/json; charset=utf-8", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in refusal_headers(refusal, rid).items()]
    if close:
        head.append("Connection: close")
    raw = ("\r\n".join(head) + "\r\n\r\n").encode()
    return raw + body, len(raw)


def json_error(status: int, error: str, reason: str, *, headers: Mapping[str, str] | None = None,
               **extra: Any) -> web.Response:
    return web.json_response(error_body(status, error, reason, **extra), status=status, headers=headers)


def _plain_reason(exc: web.HTTPException, request: web.Request) -> str:
    """One line for aiohttp's own answers, whose text is "405: Method Not Allowed" and the like: what was
    refused and why, with the path (the router's 404 and 405, any other page aiohttp words only by status)."""
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"method {exc.method} not allowed for {request.path}; allowed: {allowed}"
    if exc.text != f"{exc.status}: {exc.reason}":  # worded by whoever raised it
        return exc.text or exc.reason
    if exc.status == 404:  # the router's own: nothing matched the path
        return f"no route for {request.path}"
    return f"{exc.reason.lower()}: {request.method} {request.path}"


@web.middleware
async def json_errors(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Refusals and aiohttp's own 404/405/413 pages become JSON; an unexpected bug is a 500, not a crash."""
    try:
        return await handler(request)
    except Refusal as refusal:
        return refusal_response(refusal, request_id.of(request), request.app.get(DETAIL, "full"))
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        rid = request_id.of(request)
        reason = _plain_reason(exc, request)
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return json_error(exc.status, exc.reason.lower(), reason, headers={**headers, request_id.HEADER: rid},
                          request_id=rid)
    except ConnectionError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug answers 500 JSON and the proxy stays up
        rid = request_id.of(request)
        structlog.get_logger("proxy").exception("unhandled", path=request.path, request_id=rid)
        full = request.app.get(DETAIL, "full") == "full"
        return json_error(500, "internal error", type(exc).__name__ if full else "an unexpected error occurred",
                          headers={request_id.HEADER: rid}, request_id=rid)
