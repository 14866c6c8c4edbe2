"""config.yaml -> typed, validated settings, declared once as a pydantic v2 schema.

Why pydantic v2 rather than msgspec: errors come with the full location (`routes[0].key`) for every
problem at once, custom scalar types (durations, sizes, cron schedules) are plain `Annotated`
validators, `Field(description=...)` feeds the generated README table (proxy/config_doc.py), and
per-field strictness is built in. msgspec is faster, but config is parsed once at start-up.

Each field is declared once, with its default, constraint and description. Models are strict
(`backend.reuse_stopped: "false"` is an error, not True) and forbid unknown fields. A YAML key left
empty (`server:`) means its default. The schema models that match the runtime shape (Readiness, Route,
Webhook, ...) are used as is; `Config` and `ContainerClass` stay frozen dataclasses (so
`dataclasses.replace(config, host=...)` works) built from the validated schema. Every error becomes a
`ConfigError` naming the field, which `python -m proxy` prints before exiting 2.

Layout: scalar types in proxy/config/units.py, the strict base model and error paths in proxy/config/base.py,
`containers.<class>` in proxy/config/containers.py, the README table in proxy/config_doc.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, model_validator

from proxy.config.admin import Admin
from proxy.config.cluster import Cluster
from proxy.config.backend import Backend, BackendConfig
from proxy.config.base import Section, config_error, field_error, shown
from proxy.config.containers import (
    HEALTHCHECK_BACKENDS,
    ContainerClass,
    ContainerSection,
    CronJob,
    Keepalive,
    Readiness,
)
from proxy.config.routes import Route, check_distinct
from proxy.config.tls import TlsConfig
from proxy.keys import member_key
from proxy.config.interpolate import interpolate, typed
from proxy.config.units import (
    ConfigError,
    Duration,
    HttpUrl,
    Key,
    Name,
    NonEmptyStr,
    PositiveDuration,
    Schedule,
    Size,
    TupleOf,
)

__all__ = ["Admin", "Backend", "BackendConfig", "Cluster", "Config", "ConfigError", "ConfigSchema", "ContainerClass",
           "CronJob", "Errors", "Keepalive", "Pricing", "Readiness", "Route", "Schedule", "TlsConfig", "Webhook",
           "derived_proxy_id", "fixed_keys", "load_config", "parse_config"]

# admin: an operator's action (proxy/admin/api.py); rollout_halted: a rollout's new instance failed (scale/rollout.py)
HookEvent = Literal["start", "stop", "error", "admin", "rollout_halted"]
HOOK_EVENTS: tuple[HookEvent, ...] = ("start", "stop", "error")
CONTAINER_ONLY = ("volumes", "ports", "user", "labels")  # class options a process cannot honour
log = logging.getLogger(__name__)
MAX_CONCURRENT_STREAMS = 100  # HTTP/2: a client's streams open at once per connection (nginx's default 128)


# ---------------------------------------------------------------- server, metrics, logging, errors


class Server(Section):
    host: NonEmptyStr = Field(default="127.0.0.1", description="listen address (`--host` overrides)")
    port: int = Field(default=8787, ge=0, le=65535, description="listen port (`--port` overrides)")
    max_body_size: Size = Field(default=10 * 2**20, description="larger request bodies get 413")
    upstream_timeout: PositiveDuration = Field(
        default=60.0, description="no byte from the instance for this long → 504")
    connect_timeout: PositiveDuration = Field(default=5.0, description="connecting to an instance")
    drain_timeout: Duration = Field(
        default=30.0, description="on SIGTERM, time in-flight requests get to finish")
    tls: TlsConfig | None = Field(
        default=None, description="terminate TLS on the proxied port: `{cert, key, min_version, client_ca}` "
                                  "(`server.tls.*` below; ALPN offers h2 and http/1.1)",
        json_schema_extra=shown("none: plain HTTP"))
    max_concurrent_streams: int = Field(
        default=MAX_CONCURRENT_STREAMS, ge=1, le=10_000,
        description="HTTP/2 clients: streams open at once per connection (more are refused)")




class Metrics(Section):
    """Which keys get their own `key` label: those config names (a client cannot add any), plus an allowlist."""

    key_labels: TupleOf[Key] = Field(
        default=(),
        description="more keys with their own `key` label, in every class (config already names routes' fixed keys, "
                    "lb members, keepalive and cron keys); every other key is counted as `key=\"_other\"`")
    key_label_limit: int = Field(
        default=100, ge=0, le=100_000,
        description="at most this many `key_labels` (a config error beyond it: a guard against a generated list)")

    @model_validator(mode="after")
    def _limit(self) -> Metrics:
        if len(set(self.key_labels)) > self.key_label_limit:
            raise field_error(("key_labels",), f"{len(set(self.key_labels))} keys exceed "
                                               f"key_label_limit={self.key_label_limit}")
        return self


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class Errors(Section):
    detail: Literal["public", "full"] = Field(
        default="public", description="error bodies: `public` says what happened in plain words (the detail goes "
        "to the log, with the request id); `full` adds the internal detail (socket paths, exception texts)")


class Logging(Section):
    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = Field(
        default="info", description="`debug`, `info`, `warning`, `error`")
    requests: bool = Field(
        default=True,
        description="one JSON line per proxied request (turn off for the last ~15% of throughput)")
    format: Literal["console", "json"] | None = Field(
        default=None, description="`console` (a line for people) or `json` (one object a line, for shippers)",
        json_schema_extra=shown("console on a terminal, json otherwise"))


# ---------------------------------------------------------------- hooks, pricing

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP field name (RFC 9110)
SIGNED_HEADERS = ("x-lazy-proxy-timestamp", "x-lazy-proxy-signature", "content-type")


def _header_name(name: str) -> str:
    if not _TOKEN.match(name):
        raise ValueError(f"invalid header name {name!r}")
    if name.lower() in SIGNED_HEADERS:
        raise ValueError(f"{name} is set by the proxy")
    return name


def _header_value(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError("a header value must not contain CR, LF or NUL")
    return value


class Webhook(Section):
    url: HttpUrl = Field(description="receiver of one JSON POST per event")
    events: TupleOf[HookEvent] = Field(default=HOOK_EVENTS, description="events to send")
    timeout: PositiveDuration = Field(default=2.0, description="one attempt's timeout")
    retries: int = Field(default=2, ge=0, le=10, description="retries after a failed attempt (no answer or a 5xx)")
    secret: str | None = Field(
        default=None, min_length=16, repr=False, json_schema_extra=shown("none: unsigned"),
        description="HMAC-SHA256 key: each POST carries `X-Lazy-Proxy-Timestamp` and `X-Lazy-Proxy-Signature: "
                    "v1=<hex of HMAC(secret, \"<timestamp>.<body>\")>` (at least 16 characters)")
    secret_env: NonEmptyStr | None = Field(
        default=None, description="environment variable holding the secret instead (must be set)",
        json_schema_extra=shown("none"))
    headers: dict[Annotated[str, AfterValidator(_header_name)], Annotated[str, AfterValidator(_header_value)]] = \
        Field(default_factory=dict, description="extra request headers (`Authorization: Bearer ${HOOK_TOKEN}`)")

    @model_validator(mode="after")
    def _secret_source(self) -> Webhook:
        if self.secret is not None and self.secret_env is not None:
            raise field_error(("secret_env",), "set either secret or secret_env, not both")
        if self.secret_env is not None and len(value := os.environ.get(self.secret_env, "")) < 16:
            problem = "shorter than 16 characters" if value else "not set"
            raise field_error(("secret_env",), f"environment variable {self.secret_env} is {problem}")
        return self

    @property
    def signing_key(self) -> bytes | None:
        """The secret (from config or the environment) as bytes; None: deliveries are not signed."""
        secret = os.environ.get(self.secret_env) if self.secret_env is not None else self.secret
        return secret.encode() if secret else None


class Hooks(Section):
    webhooks: TupleOf[Webhook] = Field(
        default=(), description="`start`/`stop`/`error` events (and `admin` actions, when listed) as HTTP POSTs, "
                                "sent in the background")


class Pricing(Section):
    memory_gib_second: float = Field(default=0.0000025, ge=0, description="USD per GiB-second")
    vcpu_second: float = Field(default=0.000020, ge=0, description="USD per vCPU-second")
    disk_gb_second: float = Field(default=0.00000007, ge=0, description="USD per GB-second")
    egress_per_gb: float = Field(default=0.025, ge=0, description="USD per GB of response bytes (the seed's "
                                                                   "regions: 0.025, 0.050, 0.040)")


class ConfigSchema(Section):
    """The whole config.yaml; the order here is the order of the README table."""

    server: Server = Server()
    admin: Admin = Admin()
    backend: Backend = Backend()
    metrics: Metrics = Metrics()
    logging: Logging = Logging()
    containers: dict[Name, ContainerSection] = Field(default_factory=dict)
    routes: TupleOf[Route] = ()
    hooks: Hooks = Hooks()
    pricing: Pricing = Pricing()
    cluster: Cluster = Cluster()
    errors: Errors = Errors()

    @model_validator(mode="after")
    def _references(self) -> ConfigSchema:
        if not self.containers:
            raise field_error(("containers",), "at least one container class is required")
        for i, route in enumerate(self.routes):
            if route.container not in self.containers:
                raise field_error(("routes", i, "container"), f"unknown container class {route.container!r}")
        return self

    @model_validator(mode="after")
    def _isolation(self) -> ConfigSchema:
        """The stub and process backends run plain processes: options only a container has are refused, not
        silently dropped."""
        if self.backend.type in ("stub", "process"):
            for name, section in self.containers.items():
                for option in CONTAINER_ONLY:
                    if getattr(section, option):
                        raise field_error(("containers", name, option),
                                          f"the {self.backend.type} backend runs plain processes and cannot apply "
                                          f"{option} (docker, podman and swarm can)")
        return self

    @model_validator(mode="after")
    def _distinct_routes(self) -> ConfigSchema:
        check_distinct(self.routes)
        return self

    @model_validator(mode="after")
    def _readiness_backend(self) -> ConfigSchema:
        """`readiness: healthcheck` needs a runtime that runs the image's HEALTHCHECK."""
        if self.backend.type not in HEALTHCHECK_BACKENDS:
            for name, section in self.containers.items():
                if section.readiness.kind == "healthcheck":
                    raise field_error(("containers", name, "readiness"),
                                      f"healthcheck readiness needs backend docker or podman, not {self.backend.type}")
        return self

# ---------------------------------------------------------------- the runtime view


@dataclass(frozen=True)
class Config:
    """What the proxy reads at run time: the server fields flattened, the rest as validated."""

    host: str
    port: int
    max_body_size: int
    upstream_timeout: float
    connect_timeout: float
    drain_timeout: float
    backend: Backend
    key_label_limit: int
    log_level: str
    log_requests: bool
    containers: Mapping[str, ContainerClass]
    routes: tuple[Route, ...]
    webhooks: tuple[Webhook, ...]
    pricing: Pricing
    key_labels: tuple[str, ...] = ()  # metrics.key_labels: the allowlist of per-key metric labels
    admin: Admin = Admin()
    cluster: Cluster = Cluster()
    log_format: str | None = None  # logging.format; None: console on a terminal, JSON otherwise (proxy/observe/logs.py)
    errors: Errors = Errors()
    tls: TlsConfig | None = None  # server.tls; None: the proxied port speaks plain HTTP (proxy/wire/tls.py)
    max_concurrent_streams: int = MAX_CONCURRENT_STREAMS  # server.max_concurrent_streams (HTTP/2 clients)

    @classmethod
    def from_schema(cls, schema: ConfigSchema) -> Config:
        server = schema.server
        return cls(host=server.host, port=server.port, max_body_size=server.max_body_size,
                   upstream_timeout=server.upstream_timeout, connect_timeout=server.connect_timeout,
                   drain_timeout=server.drain_timeout, backend=schema.backend,
                   key_label_limit=schema.metrics.key_label_limit, log_level=schema.logging.level,
                   log_requests=schema.logging.requests,
                   containers={name: ContainerClass.from_section(name, section)
                               for name, section in schema.containers.items()},
                   routes=schema.routes, webhooks=schema.hooks.webhooks, pricing=schema.pricing,
                   key_labels=tuple(dict.fromkeys(schema.metrics.key_labels)), admin=schema.admin,
                   cluster=schema.cluster, log_format=schema.logging.format, errors=schema.errors,
                   tls=server.tls, max_concurrent_streams=server.max_concurrent_streams)


def fixed_keys(config: Config, class_name: str) -> tuple[str, ...]:
    """Keys named literally by routes (not templates): what a keepalive warms by default."""
    keys: list[str] = []
    for route in config.routes:
        if route.container != class_name or "{" in route.key:
            continue
        names = [member_key(route.key, i) for i in range(route.pool_size)] if route.mode == "lb" else [route.key]
        keys += [k for k in names if k not in keys]
    return tuple(keys)


def parse_config(raw: Any) -> Config:
    """Validate a config.yaml document (as loaded by PyYAML); raises ConfigError naming the field."""
    return Config.from_schema(_validate(raw))


def _validate(raw: Any, base: Path | None = None, interpolated: frozenset[tuple[str | int, ...]] = frozenset()
              ) -> ConfigSchema:
    """The schema of `raw`; relative paths resolve against `base` (the config file's directory).

    A value `${...}` made (a path in `interpolated`) that its field rejects as a string is tried once more as
    the number or boolean it spells, as compose casts interpolated values by its schema."""
    context = {"base": base or Path.cwd()}
    try:
        return ConfigSchema.model_validate(raw, context=context)
    except ValidationError as exc:
        retyped = _retyped(raw, exc, interpolated)
        if retyped is None:
            raise config_error(exc) from None
    try:
        return ConfigSchema.model_validate(retyped, context=context)
    except ValidationError as exc:
        raise config_error(exc) from None


def _retyped(raw: Any, exc: ValidationError, interpolated: frozenset[tuple[str | int, ...]]) -> Any | None:
    """`raw` with each interpolated value an error names replaced by its typed form; None if there is none."""
    changed = False
    for error in exc.errors(include_url=False):
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and (p.startswith("<") or p == "[key]")))
        path = next((p for p in interpolated if loc[:len(p)] == p), None)
        if path is None:
            continue
        *parents, last = path
        node = raw
        for part in parents:
            node = node[part]
        if isinstance(node[last], str) and (value := typed(node[last])) != node[last]:
            node[last], changed = value, True
    return raw if changed else None


def derived_proxy_id(config_path: Path, cluster: Cluster) -> str:
    """`backend.proxy_id` when the config leaves it out: what two deployments on one daemon do not share.

    One proxy: `<host>-<8 hex of the config file's absolute path>` (another config file, or another host, is
    another id; a restart keeps it). Clustered: `cluster-<8 hex of the etcd endpoints and prefix>`, the same on
    every replica, which adopt each other's instances."""
    if cluster.store != "none":
        seed = json.dumps([cluster.prefix, sorted(cluster.endpoints)])
        return f"cluster-{hashlib.sha256(seed.encode()).hexdigest()[:8]}"
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname().split(".")[0]).lstrip("_.-")[:54] or "proxy"
    return f"{host}-{hashlib.sha256(str(config_path.resolve()).encode()).hexdigest()[:8]}"


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate (`${VAR}` from `environ`, default the process's environment) and validate a config
    file; relative paths in it are relative to its directory."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "config"
        raise ConfigError(where, f"invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    result = interpolate(raw, os.environ if environ is None else environ)
    if result.unset:
        log.warning("config %s: variables not set, taken as blank: %s", path, ", ".join(result.unset))
    schema = _validate(result.data, path.resolve().parent, frozenset(result.paths))
    if "proxy_id" not in schema.backend.model_fields_set:
        backend = schema.backend.model_copy(update={"proxy_id": derived_proxy_id(path, schema.cluster)})
        schema = schema.model_copy(update={"backend": backend})
    return Config.from_schema(schema)
