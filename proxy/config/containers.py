"""`containers.<class>`: what to run and the lifecycle policy around it (part of proxy/config/schema.py's schema).

`ContainerSection` is the class as written in config.yaml; `ContainerClass` is what the manager reads,
with the image, port, env and resources folded into a `ContainerSpec` for the backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Discriminator, Field, PlainValidator, Tag, model_validator

from backends.base import (
    DEFAULT_PULL,
    DEFAULT_STOP_TIMEOUT,
    INSTANCE_DISK_GB,
    INSTANCE_TYPES,
    ContainerSpec,
    PullPolicy,
    Resources,
)
from proxy.config.base import Section, field_error, none_means_default, shown
from proxy.config.compose import EnvFile, Label, Port, User, Volumes
from proxy.config.units import (
    Argv,
    Duration,
    EnvMap,
    Key,
    NonEmptyStr,
    PositiveDuration,
    ScheduleValue,
    Size,
    TupleOf,
    UrlPath,
    env_value,
)

PREWARM_BUDGET = 7200.0  # adaptive pre-warm: running seconds per key per day its pre-warms may cost
UpstreamProtocol = Literal["http1", "h2c", "grpc"]  # a class's protocol to its instances

__all__ = ["HEALTHCHECK_BACKENDS", "ContainerClass", "ContainerSection", "CrashLoop", "CronJob", "CustomInstance",
           "Keepalive", "Readiness", "Rollout"]


def _cpu_boost(value: Any) -> float:
    """`true`/`unlimited` -> inf (no CPU limit while starting), `false`/`0` -> 0 (off), a number -> vCPUs."""
    if value is True or value == "unlimited":
        return math.inf
    if value is False or value is None:
        return 0.0
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1024:
        return float(value)
    raise ValueError("expected true, false, `unlimited` or a number of vCPUs (0-1024)")


CpuBoost = Annotated[float, BeforeValidator(_cpu_boost)]


# Backends whose runtime runs an image's HEALTHCHECK and reports it (backends/control.py's HealthReporting).
HEALTHCHECK_BACKENDS = ("docker", "podman")


class Readiness(Section):
    """When a started instance may take requests (proxy/lifecycle/readiness.py probes it). `kind` is `tcp`
    unless a `path` makes it `http`; a bare string is shorthand: `tcp`, `healthcheck`, `grpc`, or a path
    (`/healthz`)."""

    kind: Literal["tcp", "http", "healthcheck", "grpc"] = Field(
        default="tcp", description="`tcp`: the port accepts a connection; `http`: GET `path` answers 2xx; "
                                   "`healthcheck`: the image's own HEALTHCHECK reports healthy (docker, podman); "
                                   "`grpc`: the standard `grpc.health.v1.Health/Check` answers SERVING (plaintext "
                                   "HTTP/2 on the port)",
        json_schema_extra=shown("`http` with a path, else `tcp`"))
    service: str | None = Field(
        default=None, description="`grpc`: the service name asked about (`\"\"`: the whole server)",
        json_schema_extra=shown("\"\""))
    path: UrlPath | None = Field(
        default=None, description="`http`: the path that must answer 2xx before requests are forwarded",
        json_schema_extra=shown("none"))
    interval: PositiveDuration = Field(
        default=0.005, description="the first wait between probes; later waits grow with the time waited "
                                   "(1/40 of it: polling adds at most 2.5% to a start) up to `max_interval`")
    max_interval: PositiveDuration = Field(
        default=0.1, description="the longest wait between probes (when not set and `interval` is longer: `interval`)")
    timeout: PositiveDuration = Field(default=2.0, description="one probe's timeout")

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"path": data} if data.startswith("/") else {"kind": data}
        data = none_means_default(data)
        if isinstance(data, dict) and "kind" not in data and "path" in data:
            data = {**data, "kind": "http"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Readiness:
        if self.kind == "http" and self.path is None:
            raise field_error(("path",), "required for kind http")
        if self.kind != "http" and self.path is not None:
            raise field_error(("path",), f"only for kind http (kind is {self.kind})")
        if self.kind != "grpc" and self.service is not None:
            raise field_error(("service",), f"only for kind grpc (kind is {self.kind})")
        if "max_interval" in self.model_fields_set and self.max_interval < self.interval:
            raise field_error(("max_interval",), "must be at least interval")
        return self

    def describe(self) -> str:
        """The check in words, for status pages and reasons: `GET /healthz`, `TCP connect`, `healthcheck`,
        `gRPC health check`."""
        if self.kind == "grpc":
            return "gRPC health check" + (f" of {self.service!r}" if self.service else "")
        return f"GET {self.path}" if self.kind == "http" else "TCP connect" if self.kind == "tcp" else "healthcheck"

    @property
    def longest_wait(self) -> float:
        return max(self.interval, self.max_interval)


def _min_memory(value: int) -> int:
    if value < 6 * 2**20:
        raise ValueError("must be at least 6MiB")
    return value


class CustomInstance(Section):
    """`instance_type: {memory, cpus}`."""

    memory: Annotated[Size, AfterValidator(_min_memory)] = Field(description="memory limit")
    cpus: float = Field(gt=0, le=64, description="vCPUs, in (0, 64]")

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        data = none_means_default(data)
        if isinstance(data, dict) and not {"memory", "cpus"} <= set(data):
            raise ValueError("a custom instance type needs both memory and cpus")
        return data


def _instance_name(value: str) -> str:
    if value not in INSTANCE_TYPES:
        names = ", ".join(INSTANCE_TYPES)
        raise ValueError(f"unknown instance type {value!r} (one of {names} or {{memory, cpus}})")
    return value


# A name or {memory, cpus}; the tags keep pydantic from reporting both alternatives (and are dropped
# from error paths by proxy/config/base.py).
InstanceType = Annotated[
    Annotated[str, AfterValidator(_instance_name), Tag("<named>")] | Annotated[CustomInstance, Tag("<custom>")],
    Discriminator(lambda v: "<custom>" if isinstance(v, (dict, CustomInstance)) else "<named>"),
]


class Keepalive(Section):
    """Keep instances warm on a schedule; a bare schedule is shorthand for `{schedule: ...}`."""

    schedule: ScheduleValue = Field(
        description='a 5-field cron expression (`"*/2 * * * *"`) or an interval (`"30s"`)')
    keys: TupleOf[Key] = Field(
        default=(), description="keys to keep warm", json_schema_extra=shown("the keys routes name literally"))

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        return none_means_default(data if isinstance(data, dict) else {"schedule": data})


@dataclass(frozen=True)
class CrashLoopPolicy:
    """`crash_loop` as the breaker (proxy/lifecycle/breaker.py) reads it: plain numbers, validated here."""

    failures: int  # within `window` that open the breaker (0: never)
    window: float
    backoff: float  # the first open's; doubled on each failed trial
    max_backoff: float


class CrashLoop(Section):
    """The per-key crash-loop breaker (proxy/lifecycle/breaker.py)."""

    failures: int = Field(default=3, ge=0, le=1000,
                          description="failed starts or crashes within `window` that open the key's breaker (`0`: "
                                      "never): starts are then refused with 503 for the backoff")
    window: PositiveDuration = Field(default=60.0, description="the time in which `failures` count")
    backoff: PositiveDuration = Field(default=5.0, description="the first backoff; doubled each time the one start "
                                                               "let through after it fails")
    max_backoff: PositiveDuration = Field(default=300.0, description="the backoff at most")

    @model_validator(mode="after")
    def _order(self) -> CrashLoop:
        if self.max_backoff < self.backoff:
            raise field_error(("max_backoff",), "must be at least backoff")
        return self

    def policy(self) -> CrashLoopPolicy:
        return CrashLoopPolicy(self.failures, self.window, self.backoff, self.max_backoff)


class Rollout(Section):
    """How a reload that changes a class's spec (image, command, env, ...) reaches its running keys
    (proxy/scale/rollout.py plans the steps, proxy/lifecycle/rollout.py replaces one key)."""

    strategy: Literal["surge", "replace", "on_idle"] = Field(
        default="surge", description="`surge`: start the key's new instance, wait until it is ready, switch new "
                                     "requests to it, drain and stop the old one; `replace`: stop, then start (for "
                                     "apps that cannot run twice; requests wait as for a cold start); `on_idle`: "
                                     "the new spec at the key's next start")
    steps: TupleOf[Annotated[int, Field(ge=1, le=100)]] = Field(
        default=(10, 100), description="percentages of the running keys replaced by the end of each step; each "
                                       "step waits for its new instances to be ready (a failure halts the rollout)")
    active_grace_period: Duration = Field(
        default=0.0, description="how long an old instance's WebSockets may stay open after the switch before "
                                 "they are closed with 1012 (service restart)")
    max_surge: int = Field(default=1, ge=1, le=1000,
                           description="`surge`: extra instances of the class at most while keys are replaced")

    @model_validator(mode="after")
    def _ordered(self) -> Rollout:
        if not self.steps or list(self.steps) != sorted(set(self.steps)) or self.steps[-1] != 100:
            raise field_error(("steps",), "must be increasing percentages ending with 100")
        return self


ROLLOUT = Rollout()  # the default, declared once


class CronJob(Section):
    """A scheduled pre-warm (the seed's Worker cron), optionally with its own entrypoint/env."""

    schedule: ScheduleValue = Field(description="cron expression or interval, as for keepalive")
    key: Key = Field(default="cron", description="key to start")
    env: EnvMap = Field(default_factory=dict, description="environment added for this start")
    entrypoint: Argv = Field(
        default=None, description="entrypoint for this start", json_schema_extra=shown("the class's"))
    command: Argv = Field(default=None, description="command for this start", json_schema_extra=shown("the class's"))


class ContainerSection(Section):
    """`containers.<class>` as written in config.yaml; parse_config turns it into a ContainerClass."""

    image: NonEmptyStr = Field(
        default="lazy-proxy/model-service:latest",
        description="image (stub: `stub:module:factory` picks an in-process app; anything else serves the model)")
    port: int = Field(default=8080, ge=1, le=65535, description="the container's port")
    pull: PullPolicy = Field(
        default=DEFAULT_PULL, description="docker/podman/swarm: `missing` pulls the image when the daemon lacks it, "
                                          "`always` before each new container, `never` (a missing image fails the "
                                          "start, and is a warning at start-up)")
    env: EnvMap = Field(default_factory=dict, description="environment")
    env_file: EnvFile = Field(
        default=(), description="a file of `KEY=VALUE` lines (compose's format), or a list of them, relative to the "
                                "config file; read at start-up, `env` wins over it")
    entrypoint: Argv = Field(default=None, description="list of strings (or one string, split like a shell: "
                                                       "`sh -c 'echo hi'`)", json_schema_extra=shown("image's"))
    command: Argv = Field(default=None, description="list of strings (or one string, split like a shell: "
                                                    "`sh -c 'echo hi'`)", json_schema_extra=shown("image's"))
    volumes: Volumes = Field(
        default=(), description="compose's short syntax: `name:/path` (a named volume, created when missing), "
                                "`/host/path:/path` or `./rel:/path` (a bind mount, relative to the config file), "
                                "each optionally `:ro`; docker, podman, swarm")
    ports: TupleOf[Port] = Field(
        default=(), description="more container ports (`9090`, `9091/udp`) beyond `port`, not proxied: exposed, and "
                                "published like `port` (on 127.0.0.1, a port the engine picks; nothing is published "
                                "in network mode, where the instance's IP serves them)")
    user: User | None = Field(default=None, description="`uid[:gid]` or `name[:group]` the process runs as",
                              json_schema_extra=shown("image's"))
    labels: dict[Label, Annotated[str, PlainValidator(env_value)]] = Field(
        default_factory=dict, description="more labels on each instance (not `proxy.*`: those are the proxy's)")
    readiness: Readiness = Readiness()
    instance_type: InstanceType = Field(
        default="dev", description="`lite` (256 MiB, 1/16 vCPU, 2 GB disk), `basic` (1 GiB, 1/4, 4 GB), "
                                   "`standard-1` (4 GiB, 1/2, 8 GB), `standard-2` (6 GiB, 1, 12 GB), `standard-3` "
                                   "(8 GiB, 2, 16 GB), `standard-4` (12 GiB, 4, 20 GB); the seed's `dev` = `lite`, "
                                   "`standard` = `standard-1`; or `{memory, cpus}`")
    sleep_after: Duration = Field(default=300.0, description="idle time before the instance stops (`0`: never)")
    pause_after: Duration = Field(
        default=0.0, description="idle time before the instance is frozen: memory kept, no CPU, wakes in ~25 ms "
                                 "(`0`: never; shorter than sleep_after; docker/podman, the stub cannot pause)")
    startup_cpu_boost: CpuBoost = Field(
        default=math.inf, description="CPU limit while the instance starts, lowered to the instance type's once "
                                      "ready: `true`/`unlimited`, a number of vCPUs, or `false`",
        json_schema_extra=shown("unlimited"))
    start_timeout: PositiveDuration = Field(default=30.0, description="start → ready, else 504")
    stop_timeout: Duration = Field(
        default=DEFAULT_STOP_TIMEOUT, description="a stop sends SIGTERM, then SIGKILL after this long (docker/podman "
                                                  "round it up to whole seconds)")
    crash_loop: CrashLoop = CrashLoop()
    max_instances: int = Field(default=10, ge=1, le=100_000, description="running instances of the class at most")
    capacity_wait: Duration = Field(
        default=0.0, description="at `max_instances`, how long a start waits for a free slot (in arrival order) "
                                 "before 503 (`0`: answer 503 at once)")
    capacity_queue: int = Field(default=1000, ge=0, le=1_000_000,
                                description="starts waiting for a slot at most; more get 503 at once")
    replace_after_timeouts: int = Field(
        default=3, ge=0, le=1000, description="consecutive upstream timeouts after which an instance is taken out "
                                              "of service and replaced (`0`: never)")
    keepalive: Keepalive | None = Field(
        default=None, description='`"*/2 * * * *"`, `"30s"`, or `{schedule, keys}`', json_schema_extra=shown("none"))
    cron: TupleOf[CronJob] = Field(
        default=(), description="scheduled pre-warm starts; each may override `entrypoint`/`command`/`env`")
    prewarm: Literal["none", "adaptive"] = Field(
        default="none", description="`adaptive`: learn each key's busy times of day from its traffic and start its "
                                    "instance a start's duration before a likely one (proxy/scale/adaptive.py)")
    prewarm_budget: Duration = Field(
        default=PREWARM_BUDGET, description="adaptive pre-warm: running seconds per key per day its pre-warms may cost "
                                    "(each unused one is charged sleep_after)")
    protocol: UpstreamProtocol = Field(
        default="http1", description="how the proxy speaks to the instance: `http1`, `h2c` (HTTP/2 without TLS, "
                                     "one multiplexed connection per instance) or `grpc` (h2c, and the proxy's own "
                                     "refusals answered as gRPC statuses)")

    rollout: Rollout = Field(default=ROLLOUT, description="how a changed spec reaches running keys on a reload")

    @model_validator(mode="after")
    def _pause_before_sleep(self) -> ContainerSection:
        if self.pause_after > 0 and 0 < self.sleep_after <= self.pause_after:
            raise field_error(("pause_after",), "must be shorter than sleep_after (or sleep_after 0: never stop)")
        return self


@dataclass(frozen=True)
class ContainerClass:
    """A container class: what to run (spec) and the lifecycle policy around it."""

    spec: ContainerSpec
    instance_type: str  # a name from INSTANCE_TYPES, or "custom"
    disk_gb: float
    readiness: Readiness
    sleep_after: float
    start_timeout: float
    max_instances: int
    capacity_wait: float
    capacity_queue: int
    replace_after_timeouts: int
    pause_after: float
    keepalive: Keepalive | None
    cron: tuple[CronJob, ...]
    crash_loop: CrashLoopPolicy
    prewarm: str = "none"
    prewarm_budget: float = PREWARM_BUDGET
    protocol: UpstreamProtocol = "http1"
    rollout: Rollout = ROLLOUT

    @property
    def name(self) -> str:
        return self.spec.name

    @classmethod
    def from_section(cls, name: str, section: ContainerSection) -> ContainerClass:
        kind = section.instance_type
        if isinstance(kind, CustomInstance):
            type_name, resources = "custom", Resources(memory_bytes=kind.memory, cpus=float(kind.cpus))
        else:
            type_name, resources = kind, INSTANCE_TYPES[kind]
        from_files = {k: v for _path, pairs in section.env_file for k, v in pairs}
        # `PORT` tells the app where to listen, as Knative and Cloud Run do (the process backend sets its own).
        port_env = {"PORT": str(section.port)}
        spec = ContainerSpec(name=name, image=section.image, port=section.port,
                             env={**port_env, **from_files, **section.env},
                             entrypoint=section.entrypoint, command=section.command, resources=resources,
                             stop_timeout=section.stop_timeout,
                             startup_cpus=section.startup_cpu_boost, volumes=section.volumes,
                             ports=tuple(dict.fromkeys(p for p in section.ports if p != f"{section.port}/tcp")),
                             user=section.user, labels=dict(section.labels), pull=section.pull)
        return cls(spec=spec, instance_type=type_name, disk_gb=INSTANCE_DISK_GB.get(type_name, 2.0),
                   readiness=section.readiness, sleep_after=section.sleep_after,
                   start_timeout=section.start_timeout, max_instances=section.max_instances,
                   capacity_wait=section.capacity_wait, capacity_queue=section.capacity_queue,
                   replace_after_timeouts=section.replace_after_timeouts, pause_after=section.pause_after,
                   keepalive=section.keepalive, cron=section.cron, crash_loop=section.crash_loop.policy(),
                   prewarm=section.prewarm, prewarm_budget=section.prewarm_budget, protocol=section.protocol,
                   rollout=section.rollout)
