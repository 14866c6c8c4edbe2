"""The one interface every runtime implements, and the value types it speaks.

The manager only ever sees these names: a `Backend` turns a `(key, ContainerSpec)` into a running
`Instance` with an HTTP address, and can stop, inspect and list what it started. Readiness probing,
timeouts and idle policy live in the proxy, not here, so each backend stays a thin adapter.
"""

from __future__ import annotations

import enum
import time
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Callable, Literal, Mapping, Protocol, Sequence, runtime_checkable

# Labels that mark a container as ours. A backend never stops, removes or adopts anything without them.
LABEL_MANAGED = "proxy.managed"
LABEL_KEY = "proxy.key"
LABEL_CONTAINER = "proxy.container"
LABEL_PROXY_ID = "proxy.instance"
LABEL_SPEC = "proxy.spec"
LABEL_PORT = "proxy.port"  # the container's port, for adoption when none is published (backends/_address.py)
LABEL_OWNER = "proxy.owner"  # `<hostname>:<pid>` of the proxy process that created it (backends/_api.py)


@dataclass(frozen=True)
class Resources:
    """Memory and CPU limits of an instance (the seed's instance types)."""

    memory_bytes: int
    cpus: float

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / 2**30


MiB = 2**20
GiB = 2**30

# Cloudflare's instance types today, then the seed's names for three of them (dev = lite, standard = standard-1).
INSTANCE_TYPES: dict[str, Resources] = {
    "lite": Resources(memory_bytes=256 * MiB, cpus=1 / 16),
    "basic": Resources(memory_bytes=1 * GiB, cpus=1 / 4),
    "standard-1": Resources(memory_bytes=4 * GiB, cpus=1 / 2),
    "standard-2": Resources(memory_bytes=6 * GiB, cpus=1.0),
    "standard-3": Resources(memory_bytes=8 * GiB, cpus=2.0),
    "standard-4": Resources(memory_bytes=12 * GiB, cpus=4.0),
}
INSTANCE_ALIASES = {"dev": "lite", "standard": "standard-1"}  # the same type under its old name
INSTANCE_TYPES.update({alias: INSTANCE_TYPES[name] for alias, name in INSTANCE_ALIASES.items()})

# Disk per instance type in GB, used only by the usage meter (the seed bills disk too).
INSTANCE_DISK_GB: dict[str, float] = {"lite": 2.0, "basic": 4.0, "standard-1": 8.0, "standard-2": 12.0,
                                      "standard-3": 16.0, "standard-4": 20.0}
INSTANCE_DISK_GB.update({alias: INSTANCE_DISK_GB[name] for alias, name in INSTANCE_ALIASES.items()})

# Seconds a stop waits after SIGTERM before SIGKILL (a class's `stop_timeout`; the config's default is this).
DEFAULT_STOP_TIMEOUT = 5.0

# When an engine pulls a class's image (backends/_pull.py): when the daemon lacks it, before every create, never.
PullPolicy = Literal["missing", "always", "never"]
DEFAULT_PULL: PullPolicy = "missing"


@dataclass(frozen=True)
class Volume:
    """One compose short-syntax volume: a named volume (`data:/var/lib/x`, created by the runtime when missing) or
    a bind mount of an absolute host path (`/srv/site:/usr/share/html:ro`)."""

    source: str  # a volume name, or an absolute host path (a bind mount)
    target: str  # an absolute path in the container
    read_only: bool = False

    @property
    def bind(self) -> bool:
        return self.source.startswith("/")

    def __str__(self) -> str:
        """As the engines' `Binds` take it: `source:target[:ro]`."""
        return f"{self.source}:{self.target}" + (":ro" if self.read_only else "")


@dataclass(frozen=True)
class ContainerSpec:
    """What to run for one container class; everything a backend needs and nothing it does not."""

    name: str
    image: str
    port: int = 8080
    env: Mapping[str, str] = field(default_factory=dict)
    entrypoint: Sequence[str] | None = None
    command: Sequence[str] | None = None
    resources: Resources = INSTANCE_TYPES["dev"]
    stop_timeout: float = DEFAULT_STOP_TIMEOUT  # SIGTERM, then SIGKILL after this many seconds
    startup_cpus: float = 0.0  # CPU limit until ready when above the type's (inf: none); see backends/control.py
    volumes: tuple[Volume, ...] = ()
    ports: tuple[str, ...] = ()  # more container ports beyond `port`, as `N/tcp` or `N/udp` (exposed, published)
    user: str | None = None  # `uid[:gid]` or `name[:group]`; None: the image's
    labels: Mapping[str, str] = field(default_factory=dict)  # the user's labels (never `proxy.*`)
    pull: PullPolicy = DEFAULT_PULL  # not in the spec hash: how the image gets here, not what runs
    # Which rollout of its class this spec is (proxy/scale/rollout.py): 0 as configured at start-up, +1 each reload
    # that changed what the spec hash covers. Not in the hash; it names the container (`-r<N>`), so a key's new
    # instance can run beside its old one while the old one drains.
    generation: int = 0

    def with_overrides(
        self,
        env: Mapping[str, str] | None = None,
        entrypoint: Sequence[str] | None = None,
        command: Sequence[str] | None = None,
    ) -> "ContainerSpec":
        """A copy for one special start (a cron job's entrypoint/env), leaving the class spec alone."""
        return replace(
            self,
            env={**self.env, **(env or {})},
            entrypoint=entrypoint if entrypoint is not None else self.entrypoint,
            command=command if command is not None else self.command,
        )


@dataclass(frozen=True)
class Instance:
    """A started container (or in-process server): where to send HTTP, and how to find it again."""

    key: str
    class_name: str
    host: str
    port: int
    id: str
    # The hash of the spec it was started with (its `proxy.spec` label: docker, podman, swarm); "" where unknown.
    # Adoption leaves an instance of another spec than the configured one alone (proxy/lifecycle/registry.py).
    spec: str = field(default="", compare=False)
    # How long each step of the start that made it took, in order (`create`, `start`, `port`, ...), as the
    # backend measured it; empty for an adopted instance. Not part of its identity.
    phases: tuple[tuple[str, float], ...] = field(default=(), compare=False, repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


# Who hears a start's phases live (ended, its seconds, the phase that begins now or ""): the manager sets it in its
# start task, so a start in progress can be shown (the waiting page); backends only call `Phases.mark`/`begin`.
PHASE_WATCH: ContextVar[Callable[[str, float, str], None] | None] = ContextVar("phase_watch", default=None)
# The perf_counter moment the start was asked for (set by the Manager in its start task): a start's first phase
# counts from there, so the phases add up to the whole start, the event loop's delay before the first step included.
PHASE_SINCE: ContextVar[float | None] = ContextVar("phase_since", default=None)


class Phases:
    """Consecutive phase timings of one start: each `mark(name)` closes the phase begun at the previous mark,
    so the phases add up to the whole start with nothing left between them."""

    __slots__ = ("_last", "done")

    def __init__(self) -> None:
        since = PHASE_SINCE.get()
        self._last = time.perf_counter() if since is None else since
        self.done: list[tuple[str, float]] = []

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.done.append((phase, now - self._last))
        self._last = now
        if (watch := PHASE_WATCH.get()) is not None:
            watch(phase, self.done[-1][1], "")

    def begin(self, phase: str) -> None:
        """Say that `phase` runs now (one worth showing while it lasts: an image pull); `mark` still times it."""
        if (watch := PHASE_WATCH.get()) is not None:
            watch("", 0.0, phase)

    def on(self, instance: Instance) -> Instance:
        """`instance` carrying these phases."""
        return replace(instance, phases=tuple(self.done))


class InstanceState(enum.Enum):
    RUNNING = "running"
    EXITED = "exited"
    MISSING = "missing"


class BackendError(Exception):
    """A start/stop the runtime refused or could not do; `reason` is shown to clients (503)."""

    def __init__(self, reason: str, *, retry_after: float = 1.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class BackendUnavailable(BackendError):
    """The runtime itself cannot be reached (daemon socket down)."""


@runtime_checkable
class Owned(Protocol):
    """A backend that can tell which of its instances another live proxy process seems to own as well."""

    async def claimed_elsewhere(self) -> list[str]:
        """Names of this proxy id's running instances created by another live proxy process on this host."""
        ...


@runtime_checkable
class Backend(Protocol):
    """A container runtime, as the manager sees it."""

    name: str

    async def start(self, key: str, spec: ContainerSpec) -> Instance:
        """Create (or reuse) and start the instance for `key`; return once its port is published.

        Raises BackendError with a human reason when the runtime refuses.
        """
        ...

    async def stop(self, instance: Instance) -> None:
        """Stop the instance. Stopping something already gone is not an error."""
        ...

    async def inspect(self, instance: Instance) -> InstanceState:
        """Whether the instance is still alive (used after an upstream error)."""
        ...

    async def exit_reason(self, instance: Instance) -> str | None:
        """Why a stopped instance stopped, when the runtime says (e.g. "out of memory (limit 24 MiB)")."""
        ...

    async def list_instances(self) -> list[Instance]:
        """Running instances this proxy owns (labelled), for adoption after a restart and reconciling."""
        ...

    async def cleanup_stopped(self) -> list[str]:
        """Remove stopped instances this proxy owns (orphans of an earlier run); their names."""
        ...

    async def close(self) -> None:
        """Release runtime connections (not the instances)."""
        ...
