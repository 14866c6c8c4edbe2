"""config.yaml -> typed, validated settings.

Every error names the offending field (`containers.worker.sleep_after: ...`) so a user can fix it
without reading code; `python -m proxy` turns a ConfigError into a message and a non-zero exit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml
from backends.base import INSTANCE_DISK_GB, INSTANCE_TYPES, ContainerSpec, Resources
from proxy.units import ConfigError, Schedule, parse_duration, parse_schedule, parse_size

__all__ = ["Config", "ConfigError", "ContainerClass", "Readiness", "Route", "Schedule", "load_config", "parse_config"]

DEFAULT_IMAGE = "lazy-proxy/model-service:latest"
BACKEND_TYPES = ("stub", "docker", "podman")
ROUTE_MODES = ("start", "warm", "lb")
HOOK_EVENTS = ("start", "stop", "error")


@dataclass(frozen=True)
class Readiness:
    path: str = "/v2/health/ready"
    interval: float = 0.005
    timeout: float = 2.0


@dataclass(frozen=True)
class Keepalive:
    schedule: Schedule
    keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class CronJob:
    """A scheduled pre-warm (the seed's Worker cron), optionally with its own entrypoint/env."""

    schedule: Schedule
    key: str
    env: Mapping[str, str] = field(default_factory=dict)
    entrypoint: tuple[str, ...] | None = None
    command: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ContainerClass:
    """A container class: what to run (spec) and the lifecycle policy around it."""

    spec: ContainerSpec
    instance_type: str = "dev"
    disk_gb: float = 2.0
    readiness: Readiness = Readiness()
    sleep_after: float = 300.0
    start_timeout: float = 30.0
    max_instances: int = 10
    keepalive: Keepalive | None = None
    cron: tuple[CronJob, ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class Route:
    path: str
    container: str
    key: str = ""
    mode: str = "start"
    upstream_path: str | None = None
    instances: int = 1
    name: str = ""


@dataclass(frozen=True)
class Webhook:
    url: str
    events: tuple[str, ...] = HOOK_EVENTS
    timeout: float = 2.0
    retries: int = 2


@dataclass(frozen=True)
class Pricing:
    memory_gib_second: float = 0.0000025
    vcpu_second: float = 0.000020
    disk_gb_second: float = 0.00000007


@dataclass(frozen=True)
class BackendConfig:
    type: str = "stub"
    socket: str | None = None
    proxy_id: str = "default"
    reuse_stopped: bool = True


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8787
    max_body_size: int = 10 * 2**20
    upstream_timeout: float = 60.0
    connect_timeout: float = 5.0
    drain_timeout: float = 30.0
    backend: BackendConfig = BackendConfig()
    key_label_limit: int = 100
    log_level: str = "info"
    log_requests: bool = True
    containers: Mapping[str, ContainerClass] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    webhooks: tuple[Webhook, ...] = ()
    pricing: Pricing = Pricing()


# ---------------------------------------------------------------- scalar parsers

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(where, f"expected a mapping, got {type(value).__name__}")
    return value


def _only(section: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}" if where else unknown[0], "unknown field")


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(where, f"expected an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(where, f"must be between {low} and {high}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(where, f"expected a non-empty string, got {value!r}")
    return value


def _argv(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(where, "expected a list of strings")


def _env(value: Any, where: str) -> dict[str, str]:
    env = _mapping(value, where)
    out: dict[str, str] = {}
    for name, val in env.items():
        if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise ConfigError(f"{where}.{name}", "invalid environment variable name")
        if isinstance(val, (Mapping, list)) or val is None:
            raise ConfigError(f"{where}.{name}", "expected a scalar value")
        out[name] = str(val).lower() if isinstance(val, bool) else str(val)
    return out


# ---------------------------------------------------------------- sections


def _resources(value: Any, where: str) -> tuple[str, Resources]:
    if isinstance(value, str):
        if value not in INSTANCE_TYPES:
            choices = ", ".join(INSTANCE_TYPES)
            raise ConfigError(where, f"unknown instance type {value!r} (one of {choices} or {{memory, cpus}})")
        return value, INSTANCE_TYPES[value]
    custom = _mapping(value, where)
    _only(custom, {"memory", "cpus"}, where)
    if "memory" not in custom or "cpus" not in custom:
        raise ConfigError(where, "a custom instance type needs both memory and cpus")
    cpus = custom["cpus"]
    if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not 0 < cpus <= 64:
        raise ConfigError(f"{where}.cpus", "expected a number of vCPUs in (0, 64]")
    memory = parse_size(custom["memory"], f"{where}.memory")
    if memory < 6 * 2**20:
        raise ConfigError(f"{where}.memory", "must be at least 6MiB")
    return "custom", Resources(memory_bytes=memory, cpus=float(cpus))


def _container(name: str, raw: Any, where: str) -> ContainerClass:
    if not _NAME.match(name):
        raise ConfigError(where, "container class names use letters, digits, '_', '.', '-'")
    section = _mapping(raw, where)
    _only(
        section,
        {"image", "port", "env", "entrypoint", "command", "readiness", "instance_type", "sleep_after",
         "keepalive", "start_timeout", "max_instances", "cron"},
        where,
    )
    type_name, resources = _resources(section.get("instance_type", "dev"), f"{where}.instance_type")
    spec = ContainerSpec(
        name=name,
        image=_str(section.get("image", DEFAULT_IMAGE), f"{where}.image"),
        port=_int(section.get("port", 8080), f"{where}.port", 1, 65535),
        env=_env(section.get("env"), f"{where}.env"),
        entrypoint=_argv(section.get("entrypoint"), f"{where}.entrypoint"),
        command=_argv(section.get("command"), f"{where}.command"),
        resources=resources,
    )
    ready = _mapping(section.get("readiness"), f"{where}.readiness")
    _only(ready, {"path", "interval", "timeout"}, f"{where}.readiness")
    path = _str(ready.get("path", Readiness.path), f"{where}.readiness.path")
    if not path.startswith("/"):
        raise ConfigError(f"{where}.readiness.path", "must start with '/'")
    readiness = Readiness(
        path=path,
        interval=parse_duration(ready.get("interval", Readiness.interval), f"{where}.readiness.interval"),
        timeout=parse_duration(ready.get("timeout", Readiness.timeout), f"{where}.readiness.timeout"),
    )
    keepalive = None
    if section.get("keepalive") is not None:
        raw_keep = section["keepalive"]
        keep = raw_keep if isinstance(raw_keep, Mapping) else {"schedule": raw_keep}
        _only(keep, {"schedule", "keys"}, f"{where}.keepalive")
        if "schedule" not in keep:
            raise ConfigError(f"{where}.keepalive.schedule", "required")
        keys = keep.get("keys") or []
        if not isinstance(keys, list):
            raise ConfigError(f"{where}.keepalive.keys", "expected a list of keys")
        keepalive = Keepalive(
            schedule=parse_schedule(keep["schedule"], f"{where}.keepalive.schedule"),
            keys=tuple(_key(k, f"{where}.keepalive.keys[{i}]") for i, k in enumerate(keys)),
        )
    cron_raw = section.get("cron") or []
    if not isinstance(cron_raw, list):
        raise ConfigError(f"{where}.cron", "expected a list of jobs")
    cron = tuple(_cron_job(job, f"{where}.cron[{i}]") for i, job in enumerate(cron_raw))
    return ContainerClass(
        spec=spec,
        instance_type=type_name,
        disk_gb=INSTANCE_DISK_GB.get(type_name, 2.0),
        readiness=readiness,
        sleep_after=parse_duration(section.get("sleep_after", 300), f"{where}.sleep_after"),
        start_timeout=parse_duration(section.get("start_timeout", 30), f"{where}.start_timeout"),
        max_instances=_int(section.get("max_instances", 10), f"{where}.max_instances", 1, 100_000),
        keepalive=keepalive,
        cron=cron,
    )


def _key(value: Any, where: str) -> str:
    from proxy.keys import validate_key  # one rule for keys, shared with the router

    if not isinstance(value, str) or validate_key(value) is not None:
        raise ConfigError(where, f"invalid key {value!r}")
    return value


def _cron_job(raw: Any, where: str) -> CronJob:
    job = _mapping(raw, where)
    _only(job, {"schedule", "key", "env", "entrypoint", "command"}, where)
    if "schedule" not in job:
        raise ConfigError(f"{where}.schedule", "required")
    return CronJob(
        schedule=parse_schedule(job["schedule"], f"{where}.schedule"),
        key=_key(job.get("key", "cron"), f"{where}.key"),
        env=_env(job.get("env"), f"{where}.env"),
        entrypoint=_argv(job.get("entrypoint"), f"{where}.entrypoint"),
        command=_argv(job.get("command"), f"{where}.command"),
    )


def _route(raw: Any, where: str, containers: Mapping[str, ContainerClass]) -> Route:
    section = _mapping(raw, where)
    _only(section, {"path", "container", "key", "mode", "upstream_path", "instances", "name"}, where)
    path = _str(section.get("path"), f"{where}.path")
    if not path.startswith("/"):
        raise ConfigError(f"{where}.path", "must start with '/'")
    container = _str(section.get("container"), f"{where}.container")
    if container not in containers:
        raise ConfigError(f"{where}.container", f"unknown container class {container!r}")
    mode = section.get("mode", "start")
    if mode not in ROUTE_MODES:
        raise ConfigError(f"{where}.mode", f"expected one of {', '.join(ROUTE_MODES)}")
    key = section.get("key", container)
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{where}.key", "expected a key or a template like '{id}'")
    placeholders = re.findall(r"\{(\w+)\}", key)
    path_vars = set(re.findall(r"\{(\w+)(?::[^}]*)?\}", path))
    for var in placeholders:
        if var not in path_vars:
            raise ConfigError(f"{where}.key", f"placeholder {{{var}}} is not a variable of the path")
    if not placeholders:
        _key(key, f"{where}.key")
    upstream = section.get("upstream_path")
    if upstream is not None:
        upstream = _str(upstream, f"{where}.upstream_path")
        for var in re.findall(r"\{(\w+)\}", upstream):
            if var not in path_vars:
                raise ConfigError(f"{where}.upstream_path", f"placeholder {{{var}}} is not a variable of the path")
    instances = _int(section.get("instances", 1), f"{where}.instances", 1, 1000)
    if mode == "lb" and placeholders:
        raise ConfigError(f"{where}.key", "an lb route balances over fixed keys; templates are not allowed")
    if instances > 1 and mode != "lb":
        raise ConfigError(f"{where}.instances", "only lb routes run several instances")
    return Route(path=path, container=container, key=key, mode=mode, upstream_path=upstream,
                 instances=instances, name=str(section.get("name") or path))


def _webhook(raw: Any, where: str) -> Webhook:
    hook = _mapping(raw, where)
    _only(hook, {"url", "events", "timeout", "retries"}, where)
    url = _str(hook.get("url"), f"{where}.url")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.url", "expected an http(s) URL")
    events = hook.get("events", list(HOOK_EVENTS))
    if not isinstance(events, list) or any(e not in HOOK_EVENTS for e in events):
        raise ConfigError(f"{where}.events", f"expected a list drawn from {', '.join(HOOK_EVENTS)}")
    return Webhook(url=url, events=tuple(events),
                   timeout=parse_duration(hook.get("timeout", 2), f"{where}.timeout"),
                   retries=_int(hook.get("retries", 2), f"{where}.retries", 0, 10))


def parse_config(raw: Any) -> Config:
    root = _mapping(raw, "config")
    _only(root, {"server", "backend", "metrics", "logging", "containers", "routes", "hooks", "pricing"}, "")
    server = _mapping(root.get("server"), "server")
    _only(server, {"host", "port", "max_body_size", "upstream_timeout", "connect_timeout", "drain_timeout"}, "server")
    backend = _mapping(root.get("backend"), "backend")
    _only(backend, {"type", "socket", "proxy_id", "reuse_stopped"}, "backend")
    btype = backend.get("type", "stub")
    if btype not in BACKEND_TYPES:
        raise ConfigError("backend.type", f"expected one of {', '.join(BACKEND_TYPES)}, got {btype!r}")
    socket = backend.get("socket")
    if socket is not None and not str(socket).startswith(("unix://", "tcp://", "http://", "npipe://")):
        raise ConfigError("backend.socket", "expected unix:///path or tcp://host:port")
    metrics = _mapping(root.get("metrics"), "metrics")
    _only(metrics, {"key_label_limit"}, "metrics")
    logging_ = _mapping(root.get("logging"), "logging")
    _only(logging_, {"level", "requests"}, "logging")
    if not isinstance(logging_.get("requests", True), bool):
        raise ConfigError("logging.requests", "expected true or false")
    level = str(logging_.get("level", "info")).lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError("logging.level", "expected debug, info, warning or error")

    containers_raw = _mapping(root.get("containers"), "containers")
    if not containers_raw:
        raise ConfigError("containers", "at least one container class is required")
    containers = {name: _container(str(name), spec, f"containers.{name}") for name, spec in containers_raw.items()}
    routes_raw = root.get("routes") or []
    if not isinstance(routes_raw, list):
        raise ConfigError("routes", "expected a list of routes")
    routes = tuple(_route(r, f"routes[{i}]", containers) for i, r in enumerate(routes_raw))
    hooks = _mapping(root.get("hooks"), "hooks")
    _only(hooks, {"webhooks"}, "hooks")
    hooks_raw = hooks.get("webhooks") or []
    if not isinstance(hooks_raw, list):
        raise ConfigError("hooks.webhooks", "expected a list")
    pricing = _mapping(root.get("pricing"), "pricing")
    _only(pricing, {"memory_gib_second", "vcpu_second", "disk_gb_second"}, "pricing")
    for name, price in pricing.items():
        if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0:
            raise ConfigError(f"pricing.{name}", "expected a non-negative number")
    proxy_id = str(backend.get("proxy_id", "default"))
    if not _NAME.match(proxy_id):
        raise ConfigError("backend.proxy_id", "letters, digits, '_', '.', '-' only")
    return Config(
        host=str(server.get("host", "127.0.0.1")),
        port=_int(server.get("port", 8787), "server.port", 0, 65535),
        max_body_size=parse_size(server.get("max_body_size", 10 * 2**20), "server.max_body_size"),
        upstream_timeout=parse_duration(server.get("upstream_timeout", 60), "server.upstream_timeout"),
        connect_timeout=parse_duration(server.get("connect_timeout", 5), "server.connect_timeout"),
        drain_timeout=parse_duration(server.get("drain_timeout", 30), "server.drain_timeout"),
        backend=BackendConfig(type=btype, socket=socket, proxy_id=proxy_id,
                              reuse_stopped=bool(backend.get("reuse_stopped", True))),
        key_label_limit=_int(metrics.get("key_label_limit", 100), "metrics.key_label_limit", 0, 100_000),
        log_level=level,
        log_requests=logging_.get("requests", True),
        containers=containers,
        routes=routes,
        webhooks=tuple(_webhook(h, f"hooks.webhooks[{i}]") for i, h in enumerate(hooks_raw)),
        pricing=Pricing(**{k: float(v) for k, v in pricing.items()}),
    )


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
