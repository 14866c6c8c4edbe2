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

Layout: scalar types in proxy/units.py, the strict base model and error paths in proxy/config_base.py,
`containers.<class>` in proxy/config_containers.py, the README table in proxy/config_doc.py.
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
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, SecretStr, ValidationError, model_validator

from proxy.config_admin import Admin
from proxy.config_cluster import Cluster
from proxy.config_base import Section, config_error, field_error, none_means_default, shown
from proxy.config_containers import ContainerClass, ContainerSection, CronJob, Keepalive, Readiness
from proxy.interpolate import interpolate, typed
from proxy.route_match import HostPattern, KeyTemplate, check_path, path_signature, path_variables
from proxy.units import (
    ConfigError,
    Duration,
    Key,
    Name,
    NonEmptyStr,
    PositiveDuration,
    Schedule,
    Size,
    TupleOf,
    UrlPath,
    check_key,
)

__all__ = ["Admin", "Backend", "BackendConfig", "Cluster", "Config", "ConfigError", "ConfigSchema", "ContainerClass",
           "CronJob", "Errors", "Keepalive", "Pricing", "Readiness", "Route", "Schedule", "Webhook",
           "derived_proxy_id", "load_config", "parse_config"]

HookEvent = Literal["start", "stop", "error", "admin"]  # admin: an operator's action (proxy/admin.py)
HOOK_EVENTS: tuple[HookEvent, ...] = ("start", "stop", "error")
CONTAINER_ONLY = ("volumes", "ports", "user", "labels")  # class options a process cannot honour
log = logging.getLogger(__name__)


# ---------------------------------------------------------------- server, backend, metrics, logging


class Server(Section):
    host: NonEmptyStr = Field(default="127.0.0.1", description="listen address (`--host` overrides)")
    port: int = Field(default=8787, ge=0, le=65535, description="listen port (`--port` overrides)")
    max_body_size: Size = Field(default=10 * 2**20, description="larger request bodies get 413")
    upstream_timeout: PositiveDuration = Field(
        default=60.0, description="no byte from the instance for this long → 504")
    connect_timeout: PositiveDuration = Field(default=5.0, description="connecting to an instance")
    drain_timeout: Duration = Field(
        default=30.0, description="on SIGTERM, time in-flight requests get to finish")


def _socket(value: str) -> str:
    if not value.startswith(("unix://", "tcp://", "http://", "npipe://")):
        raise ValueError("expected unix:///path or tcp://host:port")
    return value


Socket = Annotated[str, AfterValidator(_socket)]


class DockerOptions(Section):
    """`backend.docker`: keyword arguments of DockerBackend."""

    socket: Socket | None = Field(
        default=None, description="API socket",
        json_schema_extra=shown("`$DOCKER_HOST` or `unix:///var/run/docker.sock`"))
    reuse_stopped: bool = Field(
        default=True, description="restart a stopped container of the same spec instead of recreating it")
    network: NonEmptyStr | None = Field(
        default=None,
        description="an existing user network: each instance joins it and is addressed by its IP there, with no "
                    "host port published (for a proxy that itself runs in a container on that network)",
        json_schema_extra=shown("none: a port published on 127.0.0.1"))


class PodmanOptions(DockerOptions):
    """`backend.podman`: keyword arguments of PodmanBackend."""

    socket: Socket | None = Field(
        default=None, description="API socket",
        json_schema_extra=shown("`$PODMAN_HOST` or `unix:///run/podman/podman.sock`"))


class SwarmOptions(Section):
    """`backend.swarm`: keyword arguments of SwarmBackend (one service per key on a swarm manager)."""

    socket: Socket | None = Field(
        default=None, description="a swarm manager's API socket",
        json_schema_extra=shown("`$DOCKER_HOST` or `unix:///var/run/docker.sock`"))
    reuse_stopped: bool = Field(
        default=True, description="keep a stopped key's service (scaled to 0) for its next start instead of "
                                  "removing it")
    network: NonEmptyStr | None = Field(
        default=None,
        description="an existing attachable overlay network: each instance joins it and is addressed by its IP "
                    "there, with no port published (for a proxy attached to that network)",
        json_schema_extra=shown("none: a port published in host mode on the task's node"))
    network_host: NonEmptyStr | None = Field(
        default=None, description="the host to dial a published port on",
        json_schema_extra=shown("the task's node address, as the swarm reports it"))


class RegistryLogin(Section):
    """`backend.registries.<host[:port]>`: who docker/podman/swarm are at that registry when pulling."""

    username: NonEmptyStr = Field(description="user name")
    password: SecretStr = Field(description="password or token (write `${VAR}`, not the secret itself)")


class Backend(Section):
    """`backend`: shared fields, then one section per backend type (a new backend adds a section).

    The flat form of older configs (`backend.socket`, `backend.reuse_stopped`) is still accepted and
    overrides the selected section's value.
    """

    type: Literal["stub", "process", "docker", "podman", "swarm"] = Field(
        default="stub", description="`stub`, `process` (each instance a child process running `command`), "
                                    "`docker`, `podman` or `swarm` (one service per key)")
    proxy_id: Name = Field(
        default="default",
        description="label value marking containers as this proxy's (keep it stable across restarts; set it to "
                    "`default` to keep containers of a version before the derived default)",
        json_schema_extra=shown("`<host>-<8 hex of the config file's path>`; clustered: `cluster-<8 hex of the "
                                "etcd endpoints and prefix>`"))
    docker: DockerOptions = DockerOptions()
    podman: PodmanOptions = PodmanOptions()
    swarm: SwarmOptions = SwarmOptions()
    registries: dict[str, RegistryLogin] = Field(
        default_factory=dict, description="registry credentials by `host[:port]` (`docker.io` for Docker Hub), "
                                          "before those of the Docker config file (`$DOCKER_CONFIG/config.json`)")
    flat_socket: Socket | None = Field(default=None, alias="socket", json_schema_extra={"doc_hidden": True})
    flat_reuse_stopped: bool | None = Field(
        default=None, alias="reuse_stopped", json_schema_extra={"doc_hidden": True})

    @property
    def options(self) -> dict[str, Any]:
        """Keyword arguments for the selected backend's constructor (empty for the stub)."""
        section: BaseModel | None = getattr(self, self.type, None)
        if section is None:
            return {}
        flat = {"socket": self.flat_socket, "reuse_stopped": self.flat_reuse_stopped}
        logins = {host: {"username": login.username, "password": login.password.get_secret_value()}
                  for host, login in self.registries.items()}
        return {**section.model_dump(), **({"registries": logins} if logins else {}),
                **{k: v for k, v in flat.items() if v is not None}}

    @property
    def socket(self) -> str | None:
        return self.options.get("socket", self.flat_socket)

    @property
    def reuse_stopped(self) -> bool:
        """Keep stopped containers for a warm restart (the stub has none: True unless set flat)."""
        reuse = self.options.get("reuse_stopped", self.flat_reuse_stopped)
        return True if reuse is None else bool(reuse)


BackendConfig = Backend  # the name earlier code imported


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


# ---------------------------------------------------------------- routes, hooks, pricing

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class Route(Section):
    path: UrlPath = Field(description="aiohttp path pattern, e.g. `/container/{id}/api/{tail:.*}`")
    container: NonEmptyStr = Field(description="container class")
    host: NonEmptyStr | None = Field(
        default=None, description='match the Host too: `"{id}.apps.example.com"` (a variable is one label, usable '
                                  'in `key` and `upstream_path`), `"*.example.com"` or a literal host; any case, '
                                  'port ignored. A Host no route of this path matches falls through to the one '
                                  'without `host`', json_schema_extra=shown("any host"))
    key: str = Field(default="", description='fixed key or a template of path/host variables (`"{id}"`), headers '
                                             '(`"{header:X-Tenant}"`) and cookies (`"{cookie:session}"`); a missing '
                                             'header or cookie is a 400', json_schema_extra=shown("the class name"))
    mode: Literal["start", "warm", "lb"] = Field(
        default="start",
        description="`start` (start if needed), `warm` (only if running, else 503), `lb` (balance over `instances`)")
    upstream_path: NonEmptyStr | None = Field(
        default=None, description="template, e.g. `/api/{tail}` (strips a prefix); the query string is kept",
        json_schema_extra=shown("the request path"))
    instances: int = Field(
        default=1, ge=1, le=1000, description="lb only: pool size (keys `<key>-0` … `<key>-N-1`)")
    target_concurrency: float = Field(
        default=0.0, ge=0, le=10_000, description="lb only: autoscale the pool to this many requests in flight per "
                                                  "ready instance (`0`: off, a fixed pool of `instances`)")
    min_instances: int = Field(default=0, ge=0, le=1000,
                               description="autoscaled lb: instances kept running with no load")
    max_instances: int = Field(default=0, ge=0, le=1000, description="autoscaled lb: pool size at most (also "
                                                                     "bounded by the class's max_instances)",
                               json_schema_extra=shown("`instances`"))
    scale_window: PositiveDuration = Field(
        default=60.0, description="autoscaled lb: the stable window the average in-flight is taken over (scale "
                                  "down after it); the panic window, for bursts, is a tenth of it")
    name: str = Field(default="", description="`route` label in metrics", json_schema_extra=shown("the path"))
    ignore_user_agents: TupleOf[str] = Field(
        default=(), description="regular expressions (searched in the User-Agent): a matching request never "
                                "starts an instance (served if running, else 503 `not warm`), so health checkers "
                                "and crawlers do not wake keys, e.g. `[\"kube-probe\", \"(?i)bot\"]`")

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        data = none_means_default(data)
        if isinstance(data, dict):
            if isinstance(data.get("container"), str):
                data.setdefault("key", data["container"])
            if isinstance(data.get("path"), str) and not data.get("name"):
                data["name"] = data["path"]
        return data

    @model_validator(mode="after")
    def _templates(self) -> Route:
        if (problem := check_path(self.path)) is not None:
            raise field_error(("path",), problem)
        path_vars = set(path_variables(self.path))
        host_vars: set[str] = set()
        if self.host is not None:
            try:
                host_vars = set(HostPattern(self.host).variables)
            except ValueError as exc:
                raise field_error(("host",), str(exc)) from None
            if clash := sorted(host_vars & path_vars):
                raise field_error(("host",), f"{{{clash[0]}}} is a path variable too")
        try:
            template = KeyTemplate(self.key)
        except ValueError as exc:
            raise field_error(("key",), str(exc)) from None
        for field, names in (("key", template.variables), ("upstream_path", _PLACEHOLDER.findall(
                self.upstream_path or ""))):
            for var in names:
                if var not in path_vars | host_vars:
                    raise field_error((field,), f"placeholder {{{var}}} is not a variable of the path or host")
        if re.search(r"\{(header|cookie):", self.upstream_path or ""):
            raise field_error(("upstream_path",), "only `key` may use {header:...} and {cookie:...}")
        placeholders = template.variables or template.from_request
        if not placeholders:
            try:
                check_key(self.key)
            except ValueError as exc:
                raise field_error(("key",), str(exc)) from None
        for i, pattern in enumerate(self.ignore_user_agents):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise field_error(("ignore_user_agents", i), f"invalid regular expression: {exc}") from None
        if self.mode == "lb" and placeholders:
            raise field_error(("key",), "an lb route balances over fixed keys; templates are not allowed")
        if self.instances > 1 and self.mode != "lb":
            raise field_error(("instances",), "only lb routes run several instances")
        if self.target_concurrency and self.mode != "lb":
            raise field_error(("target_concurrency",), "only lb routes autoscale")
        if self.min_instances > self.pool_size:
            raise field_error(("min_instances",), "must be at most max_instances")
        return self

    @property
    def pool_size(self) -> int:
        """Pool members: `max_instances` of an autoscaled route (default `instances`), else `instances`."""
        return (self.max_instances or self.instances) if self.target_concurrency else self.instances


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


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("expected an http(s) URL")
    return value


class Webhook(Section):
    url: Annotated[str, AfterValidator(_http_url)] = Field(description="receiver of one JSON POST per event")
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
        """Two routes of one path need different hosts (else the second is never served), spelled alike."""
        seen: dict[tuple[str, str], int] = {}
        spelled: dict[str, str] = {}
        for i, route in enumerate(self.routes):
            signature = path_signature(route.path)
            host = route.host.lower().rstrip(".") if route.host else ""
            if (first := seen.setdefault((signature, host), i)) != i:
                raise field_error(("routes", i, "path"), f"duplicate of routes[{first}]"
                                  + (f" (same host {route.host})" if route.host else ""))
            if spelled.setdefault(signature, route.path) != route.path:
                raise field_error(("routes", i, "path"), f"matches what {spelled[signature]!r} matches: routes of "
                                                         "one path (differing by host) must name its variables alike")
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
    log_format: str | None = None  # logging.format; None: console on a terminal, JSON otherwise (proxy/logs.py)
    errors: Errors = Errors()

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
                   cluster=schema.cluster, log_format=schema.logging.format, errors=schema.errors)


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
