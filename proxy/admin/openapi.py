"""The admin API's OpenAPI 3.1 description, made from the same table the router is (proxy/admin/api.py).

Served at `GET /admin/openapi.json` on the admin listener. Only the response shapes are written here;
which paths exist, their methods and whether they need the token come from `OPERATIONS`, the request
bodies from the models that validate them (proxy/admin/bodies.py, with this config's bounds), the
`{key}` rule from proxy/keys.py and `{class}` from the configured classes, so the description cannot
drift from what the code enforces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Protocol

from proxy.keys import KEY_SCHEMA
from proxy.observe.listing import LIMIT, MAX_LIMIT, STATES

if TYPE_CHECKING:
    from proxy.admin.bodies import Bodies



class Operation(Protocol):
    """What the document reads of an admin operation (proxy/admin/api.py's table), declared here so the
    document knows nothing of the handlers behind it."""

    @property
    def method(self) -> str: ...
    @property
    def op(self) -> str: ...
    @property
    def summary(self) -> str: ...
    @property
    def mutates(self) -> bool: ...
    @property
    def body(self) -> str | None: ...
    @property
    def path(self) -> str: ...


SECONDS = {"type": "number", "minimum": 0}
REF = "#/components/schemas/"

SCHEMAS: dict[str, Any] = {
    "Status": {
        "type": "object",
        "properties": {
            "key": {"type": "string"}, "container": {"type": "string"},
            "state": {"type": "string", "enum": list(STATES)},
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
        "keys": {"type": "array", "items": {"$ref": REF + "Status"}},
        "next": {"type": ["string", "null"], "description": "the `cursor` of the next page; null on the last"}},
        "required": ["backend", "classes", "keys", "next"]},
    "Reloaded": {"type": "object", "description": "what a reload applied (or why not)", "properties": {
        "applied": {"type": "boolean"}, "error": {"type": "string"},
        **{name: {"type": "array", "items": {"type": "string"}}
           for name in ("added", "removed", "changed", "rollouts", "restart_needed")},
        "routes": {"type": "integer"}}, "required": ["applied"]},
    "Rollout": {"type": "object", "properties": {
        "container_class": {"type": "string"}, "state": {"type": "string"}, "strategy": {"type": "string"},
        "generation": {"type": "integer"}, "from_generation": {"type": "integer"},
        "keys_total": {"type": "integer"}, "keys_done": {"type": "integer"},
        "keys_failed": {"type": "object", "additionalProperties": {"type": "string"}},
        "seconds": {"type": "number"}}, "required": ["container_class", "state"]},
    "Rollouts": {"type": "object", "properties": {"rollouts": {"type": "array", "items": {"$ref": REF + "Rollout"}}}},
    "Error": {"type": "object", "properties": {
        "error": {"type": "string"}, "reason": {"type": "string"}, "status": {"type": "integer"}},
        "required": ["error", "reason", "status"]},
    "ExecLine": {"description": "one NDJSON line: output as it comes, then the result", "oneOf": [
        {"type": "object", "properties": {"stream": {"enum": ["stdout", "stderr"]}, "data": {"type": "string"}}},
        {"type": "object", "properties": {"exit_code": {"type": ["integer", "null"]}, "timed_out": {"type": "boolean"},
                                          "seconds": {"type": "number"}, "error": {"type": "string"}}}]},
}

ERRORS = {
    "400": "invalid key or body", "401": "no or wrong bearer token", "403": "exec is disabled (admin.exec: false)",
    "404": "unknown class, or a key never used (all but start and sleep_after)",
    "409": "not in a state that allows it, or not supported by the backend", "502": "the runtime refused",
    "503": "the start failed or capacity is exhausted",
    "504": "not ready within start_timeout",
}


# Stateful fuzzing follows these: a key started is then read, renewed, given a sleep_after, stopped.
LINKS = {"post_start": ("get_key", "post_renew", "put_sleep_after", "post_stop"),
         "post_stop": ("get_key", "post_start")}


def _links(operation_id: str) -> dict[str, Any]:
    same_key = {"class": "$request.path.class", "key": "$request.path.key"}
    return {target: {"operationId": target, "parameters": same_key} for target in LINKS.get(operation_id, ())}


def _json(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF + schema}}}


def _errors() -> dict[str, Any]:
    return {code: {"description": text, "content": _json("Error")} for code, text in ERRORS.items()}


def _operation(op: Operation) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "the key's status afterwards", "content": _json("Status")}
    if op.op == "exec":
        ok = {"description": "output, then the exit code",
              "content": {"application/x-ndjson": {"schema": {"$ref": REF + "ExecLine"}}}}
    operation_id = f"{op.method.lower()}_{op.op or 'key'}"
    if links := _links(operation_id):
        ok["links"] = links
    spec: dict[str, Any] = {"summary": op.summary, "operationId": operation_id,
                            "responses": {"200": ok, **_errors()}}
    if op.mutates:
        spec["security"] = [{"bearer": []}]
    if op.body is not None:
        spec["requestBody"] = {"required": op.body in ("SleepAfter", "Exec"), "content": _json(op.body)}
    return spec


def _body_schemas(bodies: Bodies) -> dict[str, Any]:
    return {name: model.model_json_schema(ref_template=REF + "{model}") for name, model in bodies.models.items()}


def _listing(classes: tuple[str, ...]) -> dict[str, Any]:
    """`GET /admin/keys`: a page of keys (proxy/observe/listing.py), its query parameters from the same numbers."""
    query = [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                                                    "default": LIMIT}, "description": "keys per page"},
        {"name": "cursor", "in": "query", "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
         "description": "the `next` of the previous page (none: from the first key)"},
        {"name": "class", "in": "query", "schema": {"type": "string", "enum": list(classes)},
         "description": "only keys of this container class"},
        {"name": "state", "in": "query", "schema": {"type": "string", "enum": list(STATES)},
         "description": "only keys in this state"},
    ]
    return {"summary": f"A page of the keys the proxy has a manager for, in the order they were first used (at "
                       f"most `limit`, {LIMIT} unless given); `next` resumes after it", "operationId": "list_keys",
            "parameters": query,
            "responses": {"200": {"description": "keys", "content": _json("Keys")},
                          "400": {"description": "a bad limit, cursor, class or state", "content": _json("Error")},
                          "401": {"description": ERRORS["401"], "content": _json("Error")}}}


def _deploy_paths(classes: tuple[str, ...]) -> dict[str, Any]:
    """proxy/admin/deploy.py's endpoints: the config reload and the rollouts."""
    denied = {"401": {"description": "no or wrong bearer token", "content": _json("Error")}}
    reload = {"post": {"summary": "Read the config file again; apply it, or keep the running one and say why",
                       "operationId": "post_config_reload", "security": [{"bearer": []}],
                       "responses": {"200": {"description": "applied", "content": _json("Reloaded")},
                                     "422": {"description": "the file is invalid: nothing changed",
                                             "content": _json("Error")}, **denied}}}
    paths: dict[str, Any] = {"/admin/config/reload": reload, "/admin/rollouts": {"get": {
        "summary": "Every class's last rollout", "operationId": "list_rollouts",
        "responses": {"200": {"description": "rollouts", "content": _json("Rollouts")}, **denied}}}}
    param = [{"name": "class", "in": "path", "required": True, "schema": {"type": "string", "enum": list(classes)},
              "description": "a configured container class"}]
    for action in ("pause", "resume", "undo"):
        paths[f"/admin/rollouts/{{class}}/{action}"] = {"parameters": param, "post": {
            "summary": f"{action.capitalize()} the class's rollout", "operationId": f"post_rollout_{action}",
            "security": [{"bearer": []}],
            "responses": {"200": {"description": "the rollout afterwards", "content": _json("Rollout")},
                          "404": {"description": "no rollout of this class", "content": _json("Error")},
                          **denied}}}
    return paths


def openapi(operations: Iterable[Operation], bodies: Bodies, classes: tuple[str, ...]) -> dict[str, Any]:
    params = [{"name": "class", "in": "path", "required": True, "schema": {"type": "string", "enum": list(classes)},
               "description": "a configured container class"},
              {"name": "key", "in": "path", "required": True, "schema": KEY_SCHEMA}]
    paths: dict[str, Any] = {
        "/admin/keys": {"get": _listing(classes)},
    }
    for op in operations:
        paths.setdefault(op.path, {"parameters": params})[op.method.lower()] = _operation(op)
    paths.update(_deploy_paths(classes))
    return {
        "openapi": "3.1.0",
        "info": {"title": "lazy-proxy admin API", "version": "1",
                 "description": "Operate keys by hand. Mutations need `Authorization: Bearer <admin token>`; "
                                "reads need it too unless the admin listener is on a loopback address."},
        "paths": paths,
        "components": {"schemas": {**SCHEMAS, **_body_schemas(bodies)},
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
