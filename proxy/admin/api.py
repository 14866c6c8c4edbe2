"""The admin listener: the proxy's own endpoints and a control API per key, apart from proxied traffic.

Every operation goes through the key's `Manager`, the same object requests use, so an operator's start
shares the one single-flight start and a stop waits for the requests in flight: there is no second path.
The operations are declared once in `OPERATIONS` (method, path, handler, whether it mutates); the router
and the OpenAPI description (proxy/admin/openapi.py) are both made from that table.

Mutations need `Authorization: Bearer <admin token>` (compared in constant time); reads need it too
unless the admin listener is on a loopback address. Each mutation and exec is logged as one JSON line
(who: the token's id, never the token; what; which key; outcome) and emitted as an `admin` hook event.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable

import structlog
from aiohttp import web
from pydantic import BaseModel

from backends.control import Executable
from proxy.admin.bodies import bodies_for, validate
from proxy.admin.deploy import routes as deploy_routes
from proxy.admin.openapi import openapi
from proxy.app import PROXY, Proxy, add_seed_routes
from proxy.config.admin import SEED_ROUTES
from proxy.face.dashboard import Dashboard
from proxy.errors import (Conflict, Forbidden, InvalidInput, InvalidKey, NotFound, NotSupported, Refusal, Unauthorized,
                          json_errors)
from proxy.lifecycle.events import State, StopReason
from proxy.keys import validate_key
from proxy.lifecycle.manager import Manager
from proxy.lifecycle.pause import LIVE
from proxy.observe.listing import encode, parse_query

log = structlog.get_logger("proxy.admin")
ANONYMOUS = "anonymous"
MAX_BODY = 64 * 1024  # an admin request body is a small JSON object


@dataclass(frozen=True)
class Call:
    """One admin request, authorized: who made it, on which key (created for mutations), with what body."""

    request: web.Request
    proxy: Proxy
    who: str
    manager: Manager
    body: dict[str, Any]
    args: BaseModel | None = None  # the body, validated by its operation's model (proxy/admin/bodies.py)

    def arg(self, name: str) -> Any:
        return getattr(self.args, name)


Handler = Callable[[Call], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Operation:
    method: str
    op: str  # the last path segment (or "" for the key itself)
    handler: Handler
    summary: str
    mutates: bool = True
    body: str | None = None  # the OpenAPI schema name of its request body
    creates: bool = False  # may make a key never used (start; a sleep_after set ahead): the others answer 404

    @property
    def path(self) -> str:
        return "/admin/keys/{class}/{key}" + (f"/{self.op}" if self.op else "")


# ---------------------------------------------------------------- who may

def token_id(token: str) -> str:
    """How logs and hooks name a token: a short hash, enough to tell tokens apart, useless to replay."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:8]


def authorize(request: web.Request, mutates: bool) -> str:
    """Who is calling (the token's id, or `anonymous` for an open read); Unauthorized if they may not.

    The token is compared as bytes: a header that is not UTF-8 (aiohttp keeps its bytes as surrogates) is
    just a wrong token."""
    admin = request.app[PROXY].config.admin
    secret = admin.secret
    given = request.headers.get("Authorization", "")
    scheme, _, presented = given.partition(" ")
    if secret is not None and scheme.lower() == "bearer" \
            and hmac.compare_digest(presented.strip().encode("utf-8", "surrogateescape"), secret.encode()):
        return token_id(secret)
    if not mutates and admin.loopback:
        return ANONYMOUS
    if secret is None:
        raise Unauthorized("no admin token is configured (admin.token or admin.token_env): "
                           + ("mutations are refused" if mutates else "reads off loopback are refused"))
    raise Unauthorized("a valid 'Authorization: Bearer <admin token>' header is required" if given
                       else "missing 'Authorization: Bearer <admin token>' header")


def audit(call: Call, action: str, outcome: str, **detail: Any) -> None:
    """One JSON line and one `admin` hook event per mutation or exec."""
    manager = call.manager
    log.info("admin", who=call.who, action=action, container=manager.klass.name, key=manager.key,
             outcome=outcome, **detail)
    call.proxy.hooks.emit({"event": "admin", "who": call.who, "action": action, "container": manager.klass.name,
                           "key": manager.key, "outcome": outcome, "timestamp": time.time(), **detail})


# ---------------------------------------------------------------- operations

def answer(call: Call) -> web.Response:
    return web.json_response(call.proxy.key_status(call.manager))


async def op_state(call: Call) -> web.StreamResponse:
    return answer(call)


def start_env(call: Call) -> dict[str, str] | None:
    """`{"env": {"NAME": "value"}}`: environment added to this one start (as Cloudflare's
    `startAndWaitForPorts({envVars})`); None without it."""
    env: dict[str, str] | None = call.arg("env")
    return env


async def op_start(call: Call) -> web.StreamResponse:
    manager, env = call.manager, start_env(call)
    if env is None:
        await manager.ensure_running(reason="admin")
    else:  # a start with its own env: only from stopped, so the env surely reaches the instance
        if manager.state not in (State.STOPPED, State.FAILED):
            raise Conflict(f"{manager.key} is {manager.state.value}: env applies to a new start only (stop it "
                           f"first)", key=manager.key)
        await manager.ensure_running(reason="admin", spec=manager.klass.spec.with_overrides(env=env))
    manager.touch()
    return answer(call)


def drain_of(call: Call) -> float:
    return float(call.arg("drain"))


async def op_stop(call: Call) -> web.StreamResponse:
    await call.manager.stop(StopReason.ADMIN, drain_of(call))
    return answer(call)


async def op_destroy(call: Call) -> web.StreamResponse:
    await call.manager.stop(StopReason.ADMIN, drain_of(call), remove=True)
    return answer(call)


async def op_pause(call: Call) -> web.StreamResponse:
    await call.manager.pauser.pause(drain_of(call))
    return answer(call)


async def op_resume(call: Call) -> web.StreamResponse:
    await call.manager.pauser.resume()
    return answer(call)


async def op_renew(call: Call) -> web.StreamResponse:
    call.manager.touch()
    return answer(call)


async def op_sleep_after(call: Call) -> web.StreamResponse:
    call.manager.set_sleep_after(call.arg("seconds"))
    return answer(call)


async def op_exec(call: Call) -> web.StreamResponse:
    """Run a command in the instance, its output streamed back as NDJSON lines, the exit code last."""
    admin, manager = call.proxy.config.admin, call.manager
    if not admin.exec:
        raise Forbidden("exec is disabled (admin.exec: false)", key=manager.key)
    command: list[str] = call.arg("command")
    timeout = float(call.arg("timeout"))
    backend = call.proxy.backend
    if not isinstance(backend, Executable):
        raise NotSupported(f"not supported by backend {backend.name}", key=manager.key)
    if manager.state not in LIVE:
        raise Conflict(f"{manager.key} is {manager.state.value}, not running", key=manager.key)
    return await _run_exec(call, backend, command, timeout)


async def _run_exec(call: Call, backend: Executable, command: list[str], timeout: float) -> web.StreamResponse:
    request = call.request
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    began = time.monotonic()
    result: dict[str, Any] = {"exit_code": None, "timed_out": False}
    async with call.manager.lease() as lease:  # held like a request: no idle stop or admin stop mid-exec
        await response.prepare(request)

        async def output(stream: str, data: bytes) -> None:
            line = {"stream": stream, "data": data.decode("utf-8", "replace")}
            await response.write(json.dumps(line).encode() + b"\n")

        try:
            async with asyncio.timeout(timeout):
                result["exit_code"] = await backend.exec(lease.instance, command, output)
        except TimeoutError:
            result["timed_out"] = True
        except Exception as exc:  # noqa: BLE001 - the stream has begun: the error is its last line
            result["error"] = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
    result["seconds"] = round(time.monotonic() - began, 3)
    audit(call, "exec", "ok" if "error" not in result else "error", command=command, **result)
    await response.write(json.dumps(result).encode() + b"\n")
    await response.write_eof()
    return response


OPERATIONS = (
    Operation("GET", "", op_state, "The key's state (the manager's status)", mutates=False),
    Operation("POST", "state", op_state, "The key's state (as GET on the key)", mutates=False),
    Operation("POST", "start", op_start, "Start the instance and wait until it is ready (single-flight with "
                                         "requests); `env` is added to this start's environment (409 unless the "
                                         "key is stopped)", body="Start", creates=True),
    Operation("POST", "stop", op_stop, "Stop the instance once the requests in flight end (`drain` seconds at "
                                       "most)", body="Drain"),
    Operation("POST", "pause", op_pause, "Freeze the instance (docker/podman); the next request resumes it",
              body="Drain"),
    Operation("POST", "resume", op_resume, "Thaw a paused instance"),
    Operation("POST", "destroy", op_destroy, "Stop and remove the container (no warm restart reuses it); "
                                             "forget the key's sleep_after", body="Drain"),
    Operation("POST", "renew", op_renew, "Record activity now: the idle timer starts again"),
    Operation("PUT", "sleep_after", op_sleep_after, "Override sleep_after for this key (null: the class's)",
              body="SleepAfter", creates=True),
    Operation("POST", "exec", op_exec, "Run a command in the running instance; NDJSON output, exit code last",
              body="Exec"),
)

def _handler(operation: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        proxy = request.app[PROXY]
        class_name, key = request.match_info["class"], request.match_info["key"]
        try:
            who = authorize(request, operation.mutates)
        except Unauthorized as refusal:  # attempts are worth a line too (no hook: nothing happened)
            log.warning("admin_refused", action=operation.op or "state", container=class_name, key=key,
                        peer=request.remote, reason=refusal.reason)
            raise
        if class_name not in proxy.config.containers:
            raise NotFound(f"unknown container class {class_name!r}")
        if (reason := validate_key(key)) is not None and proxy.registry.peek(key, class_name) is None:
            raise InvalidKey(reason)  # a key no URL can name (an lb member `lb#0`) is fine once it exists
        if operation.mutates and proxy.node is not None:
            ownership = proxy.node.ownership
            if (owner := await ownership.locate(*ownership.unit_of(class_name, key))) is not None:
                raise Conflict(f"{key} is owned by replica {owner.id}: ask its admin API", owner=owner.url)
        manager = proxy.registry.peek(key, class_name)
        if manager is None:
            if not operation.creates:  # a stop or destroy of a key never used would only add it to the listing
                raise NotFound(f"no such key {key!r} of class {class_name!r}: never used (start creates it)",
                               state="stopped")
            manager = proxy.registry.get(key, class_name)
        call = Call(request, proxy, who, manager, await _body(request))
        if not operation.mutates:
            return await operation.handler(call)
        try:
            if operation.body is not None:
                call = replace(call, args=validate(bodies_for(proxy.config.admin), operation.body, call.body))
            response = await operation.handler(call)
        except Refusal as refusal:
            audit(call, operation.op, refusal.error, reason=refusal.reason)
            raise
        if operation.op != "exec":  # an exec that ran audits itself, with its exit code
            audit(call, operation.op, "ok", **_detail(call))
        return response

    return handle


def _detail(call: Call) -> dict[str, Any]:
    env = call.body.get("env")
    names = {"env": sorted(env)} if isinstance(env, dict) else {}  # the names only: values may be secrets
    return {"state": call.manager.state.value, **{k: v for k, v in call.body.items() if k in ("drain", "seconds")},
            **names}


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise InvalidInput(f"body larger than {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise InvalidInput("body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object")
    return body


async def list_keys(request: web.Request) -> web.Response:
    """A page of keys (`limit`, `cursor`, `class`, `state`: proxy/observe/listing.py); `next`: the next one's cursor."""
    authorize(request, mutates=False)
    proxy = request.app[PROXY]
    _, entries, after = await proxy.status(parse_query(request.query, proxy.config.containers))
    body = await encode({"backend": proxy.backend.name, "classes": list(proxy.config.containers), "next": after},
                        entries)
    return web.Response(body=body, content_type="application/json")


async def openapi_json(request: web.Request) -> web.Response:
    config = request.app[PROXY].config
    return web.json_response(openapi(OPERATIONS, bodies_for(config.admin), tuple(config.containers)))


@web.middleware
async def reads_guard(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """The seed endpoints are reads: on a non-loopback admin listener they need the token too. The dashboard's
    page is an empty shell (its data are reads like these), so a browser can open it and give the token there."""
    if not request.path.startswith("/admin/") and request.path != "/ui":
        authorize(request, mutates=False)
    return await handler(request)


def create_admin_app(proxy: Proxy) -> web.Application:
    """The admin listener's application, on the same `Proxy` as the proxied port's (its lifecycle is there)."""
    app = web.Application(middlewares=[json_errors, reads_guard], client_max_size=MAX_BODY)
    app[PROXY] = proxy
    add_seed_routes(app, SEED_ROUTES)
    app.router.add_get("/admin/openapi.json", openapi_json)
    app.router.add_get("/admin/keys", list_keys)
    for operation in OPERATIONS:
        app.router.add_route(operation.method, operation.path, _handler(operation))
    dashboard = Dashboard(proxy.config, proxy.registry, proxy.bus, proxy.key_status)  # /ui (proxy/face/)
    dashboard.add_routes(app)

    async def end_streams(app: web.Application) -> None:
        dashboard.close()

    app.on_shutdown.append(end_streams)
    deploy_routes(app, authorize)  # config reload and rollouts (proxy/admin/deploy.py)
    return app


__all__ = ["OPERATIONS", "Operation", "authorize", "create_admin_app", "token_id"]
