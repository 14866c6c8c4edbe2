"""The admin API's OpenAPI 3.1 description, made from the same table the router is (proxy/admin.py).

Served at `GET /admin/openapi.json` on the admin listener. Only the shapes are written here; which
paths exist, their methods and whether they need the token come from `OPERATIONS`, so the description
cannot drift from the routes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from proxy.admin import Operation

STATES = ["stopped", "starting", "running", "stopping", "failed", "paused"]
SECONDS = {"type": "number", "minimum": 0}
REF = "#/components/schemas/"

SCHEMAS: dict[str, Any] = {
    "Status": {
        "type": "object",
        "properties": {
            "key": {"type": "string"}, "container": {"type": "string"},
            "state": {"type": "string", "enum": STATES},
            "in_flight": {"type": "integer"}, "start_count": {"type": "integer"},
            "last_activity": {"type": ["number", "null"], "description": "Unix time"},
            "address": {"type": ["string", "null"]}, "last_error": {"type": ["string", "null"]},
            "sleep_after": {**SECONDS, "description": "the key's override, else its class's"},
            "usage": {"type": ["object", "null"]},
        },
        "required": ["key", "container", "state", "in_flight"],
    },
    "Keys": {"type": "object", "properties": {
        "backend": {"type": "string"}, "classes": {"type": "array", "items": {"type": "string"}},
        "keys": {"type": "array", "items": {"$ref": REF + "Status"}}}},
    "Error": {"type": "object", "properties": {
        "error": {"type": "string"}, "reason": {"type": "string"}, "status": {"type": "integer"}},
        "required": ["error", "reason", "status"]},
    "Start": {"type": "object", "properties": {
        "env": {"type": "object", "additionalProperties": {"type": "string"},
                "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                "description": "environment added to this start (over the class's `env`); only when the key is "
                               "stopped (else 409): a running instance keeps its environment"}}},
    "Drain": {"type": "object", "properties": {
        "drain": {**SECONDS, "description": "seconds the requests in flight get to end (default admin.stop_drain)"}}},
    "SleepAfter": {"type": "object", "required": ["seconds"], "properties": {
        "seconds": {"type": ["number", "null"], "exclusiveMinimum": 0,
                    "description": "at most admin.max_sleep_after; null: the class's sleep_after"}}},
    "Exec": {"type": "object", "required": ["command"], "properties": {
        "command": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "timeout": {**SECONDS, "description": "default and upper bound: admin.exec_timeout"}}},
    "ExecLine": {"description": "one NDJSON line: output as it comes, then the result", "oneOf": [
        {"type": "object", "properties": {"stream": {"enum": ["stdout", "stderr"]}, "data": {"type": "string"}}},
        {"type": "object", "properties": {"exit_code": {"type": ["integer", "null"]}, "timed_out": {"type": "boolean"},
                                          "seconds": {"type": "number"}, "error": {"type": "string"}}}]},
}

ERRORS = {
    "400": "invalid key or body", "401": "no or wrong bearer token", "403": "exec is disabled (admin.exec: false)",
    "404": "unknown class, or a key never used (reads)", "409": "not in a state that allows it, or not supported "
    "by the backend", "502": "the runtime refused", "503": "the start failed or capacity is exhausted",
    "504": "not ready within start_timeout",
}


def _json(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF + schema}}}


def _errors() -> dict[str, Any]:
    return {code: {"description": text, "content": _json("Error")} for code, text in ERRORS.items()}


def _operation(op: Operation) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "the key's status afterwards", "content": _json("Status")}
    if op.op == "exec":
        ok = {"description": "output, then the exit code",
              "content": {"application/x-ndjson": {"schema": {"$ref": REF + "ExecLine"}}}}
    spec: dict[str, Any] = {"summary": op.summary, "operationId": f"{op.method.lower()}_{op.op or 'key'}",
                            "responses": {"200": ok, **_errors()}}
    if op.mutates:
        spec["security"] = [{"bearer": []}]
    if op.body is not None:
        spec["requestBody"] = {"required": op.body in ("SleepAfter", "Exec"), "content": _json(op.body)}
    return spec


def openapi(operations: Iterable[Operation]) -> dict[str, Any]:
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in ("class", "key")]
    paths: dict[str, Any] = {
        "/admin/keys": {"get": {"summary": "Every key the proxy has a manager for", "operationId": "list_keys",
                                "responses": {"200": {"description": "keys", "content": _json("Keys")}}}},
    }
    for op in operations:
        paths.setdefault(op.path, {"parameters": params})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "lazy-proxy admin API", "version": "1",
                 "description": "Operate keys by hand. Mutations need `Authorization: Bearer <admin token>`; "
                                "reads need it too unless the admin listener is on a loopback address."},
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
