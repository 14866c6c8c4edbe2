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

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, ValidationError, model_validator

from proxy.config_admin import Admin
from proxy.config_cluster import Cluster
from proxy.config_base import Section, config_error, field_error, none_means_default, shown
from proxy.config_containers import (
    HEALTHCHECK_BACKENDS,
    ContainerClass,
    ContainerSection,
    CronJob,
    Keepalive,
    Readiness,
)
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
           "CronJob", "Keepalive", "Pricing", "Readiness", "Route", "Schedule", "Webhook", "load_config",
           "parse_config"]

HookEvent = Literal["start", "stop", "error", "admin"]  # admin: an operator's action (proxy/admin.py)
HOOK_EVENTS: tuple[HookEvent, ...] = ("start", "stop", "error")


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
        description="label value marking containers as this proxy's (keep it stable across restarts)")
    docker: DockerOptions = DockerOptions()
    podman: PodmanOptions = PodmanOptions()
    swarm: SwarmOptions = SwarmOptions()
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
        return {**section.model_dump(), **{k: v for k, v in flat.items() if v is not None}}

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


class Logging(Section):
    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = Field(
        default="info", description="`debug`, `info`, `warning`, `error`")
    requests: bool = Field(
        default=True,
        description="one JSON line per proxied request (turn off for the last ~15% of throughput)")


# ---------------------------------------------------------------- routes, hooks, pricing

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_PATH_VARIABLE = re.compile(r"\{(\w+)(?::[^}]*)?\}")


class Route(Section):
    path: UrlPath = Field(description="aiohttp path pattern, e.g. `/container/{id}/api/{tail:.*}`")
    container: NonEmptyStr = Field(description="container class")
    key: str = Field(default="", description='fixed key or a template of path variables (`"{id}"`)',
                     json_schema_extra=shown("the class name"))
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
        path_vars = set(_PATH_VARIABLE.findall(self.path))
        placeholders = _PLACEHOLDER.findall(self.key)
        for field, template in (("key", self.key), ("upstream_path", self.upstream_path or "")):
            for var in _PLACEHOLDER.findall(template):
                if var not in path_vars:
                    raise field_error((field,), f"placeholder {{{var}}} is not a variable of the path")
        if not placeholders:
            try:
                check_key(self.key)
            except ValueError as exc:
                raise field_error(("key",), str(exc)) from None
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


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("expected an http(s) URL")
    return value


class Webhook(Section):
    url: Annotated[str, AfterValidator(_http_url)] = Field(description="receiver of one JSON POST per event")
    events: TupleOf[HookEvent] = Field(default=HOOK_EVENTS, description="events to send")
    timeout: PositiveDuration = Field(default=2.0, description="one attempt's timeout")
    retries: int = Field(default=2, ge=0, le=10, description="retries after a failed attempt (no answer or a 5xx)")


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

    @model_validator(mode="after")
    def _references(self) -> ConfigSchema:
        if not self.containers:
            raise field_error(("containers",), "at least one container class is required")
        for i, route in enumerate(self.routes):
            if route.container not in self.containers:
                raise field_error(("routes", i, "container"), f"unknown container class {route.container!r}")
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
                   cluster=schema.cluster)


def parse_config(raw: Any) -> Config:
    """Validate a config.yaml document (as loaded by PyYAML); raises ConfigError naming the field."""
    try:
        schema = ConfigSchema.model_validate(raw)
    except ValidationError as exc:
        raise config_error(exc) from None
    return Config.from_schema(schema)


def load_config(path: str | Path) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "config"
        raise ConfigError(where, f"invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    return parse_config(raw)
