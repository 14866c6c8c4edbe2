"""JSON error bodies: every refusal says what went wrong and why, in the same shape."""

from __future__ import annotations

from typing import Any, Mapping

import structlog
from aiohttp import web


def error_body(status: int, error: str, reason: str, **extra: Any) -> dict[str, Any]:
    """The one shape of every refusal, on both data paths."""
    return {"error": error, "reason": reason, "status": status, **extra}


def json_error(status: int, error: str, reason: str, *, headers: Mapping[str, str] | None = None,
               **extra: Any) -> web.Response:
    return web.json_response(error_body(status, error, reason, **extra), status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    """aiohttp's own 404/405/413 pages become JSON too; an unexpected bug is a 500, not a crash."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        return json_error(exc.status, exc.reason.lower(), exc.text or exc.reason, headers={
            k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")})
    except ConnectionError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug answers 500 JSON and the proxy stays up
        structlog.get_logger("proxy").exception("unhandled", path=request.path)
        return json_error(500, "internal error", f"{type(exc).__name__}")
