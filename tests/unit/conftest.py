"""The unit layer: a real `Manager` on fakes the test drives, on a virtual clock.

- `FakeBackend`: every `start`/`stop`/`inspect` call is recorded with a future. By default they
  answer at once (start: a fresh `Instance`, stop: done, inspect: RUNNING); `backend.start.hold()`
  makes each call wait until the test settles it (`call.resolve(value)` / `call.fail(exc)`), so the
  test decides exactly when a start finishes or fails.
- `FakeProber.wait_ready`, the same kind of recorded call; `FakePools.forget` records its instances.
- The real `Capacity` and `EventBus`; a `Recorder` on the bus keeps every event with its loop time.
- The virtual clock is looptime's (https://pypi.org/project/looptime/): every test in this folder gets
  `@pytest.mark.looptime`, so the loop's time only moves when nothing else can run, and then jumps
  straight to the next timer. `clock.advance(s)` waits `s` seconds of *loop* time (no real sleeping:
  it refuses to run on a loop without looptime), then lets everything that became ready run.
  `clock.settle()` runs what is ready without moving time; `clock.until(predicate)` does so until
  the predicate holds.

Container classes come from `proxy.config.parse_config`, as in production.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable

import pytest

from backends.base import ContainerSpec, Instance, InstanceState
from proxy.lifecycle.capacity import Capacity
from proxy.config.schema import Config, ContainerClass, Readiness, parse_config
from proxy.lifecycle.events import ColdWait, Event, EventBus, Happening, State, StopReason, Transition
from proxy.lifecycle.manager import Manager, Services
from proxy.lifecycle.registry import Registry

HERE = Path(__file__).parent

# A deadlocked test (everything waiting on a future nobody will settle, no timer left) fails after
# this many real seconds instead of hanging.
IDLE_TIMEOUT = 2.0
# The loop's time at the start of each test. Not 0: a real loop's monotonic time never is, and the
# manager reads 0.0 as "never" (`_since`, `last_activity`).
START = 1000.0


# A test of the same subject through the real proxy (real sockets, real time), kept in the subject's file.
REAL_CLOCK = pytest.mark.looptime(False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test in tests/unit runs on looptime's virtual clock, starting at loop time START (but those
    marked REAL_CLOCK)."""
    for item in items:
        if HERE in item.path.parents and item.get_closest_marker("looptime") is None:
            item.add_marker(pytest.mark.looptime(start=START, idle_timeout=IDLE_TIMEOUT))


# ------------------------------------------------------------------ recorded calls


class FakeCall:
    """One call to a fake method: its arguments, and the future the test (or the auto answer) settles."""

    def __init__(self, args: tuple[Any, ...], future: asyncio.Future[Any]) -> None:
        self.args = args
        self.future = future

    @property
    def pending(self) -> bool:
        return not self.future.done()

    @property
    def cancelled(self) -> bool:
        return self.future.cancelled()

    def resolve(self, value: Any = None) -> Any:
        assert self.pending, f"call {self.args} already settled"
        self.future.set_result(value)
        return value

    def fail(self, exc: BaseException) -> None:
        assert self.pending, f"call {self.args} already settled"
        self.future.set_exception(exc)

    def __repr__(self) -> str:
        return f"FakeCall{self.args!r}({'pending' if self.pending else 'done'})"


Answer = Callable[..., Any]


class FakeMethod:
    """An async method that records its calls; it answers with `auto(*args)` or waits for the test."""

    def __init__(self, name: str, auto: Answer | None = None) -> None:
        self.name = name
        self.calls: list[FakeCall] = []
        self._default = auto
        self._auto = auto

    # How the next calls are answered.
    def hold(self) -> None:
        """Each call waits until the test resolves or fails it."""
        self._auto = None

    def answer(self, fn: Answer) -> None:
        """Each call is answered at once with fn(*args) (or fails with what fn raises)."""
        self._auto = fn

    def returns(self, *values: Any) -> None:
        """Answer with these values in turn (the last one repeats)."""
        it = itertools.chain(values, itertools.repeat(values[-1]))
        self._auto = lambda *args: next(it)

    def raises(self, exc: BaseException) -> None:
        def fail(*args: Any) -> Any:
            raise exc
        self._auto = fail

    def reset_answer(self) -> None:
        self._auto = self._default

    # What happened.
    @property
    def count(self) -> int:
        return len(self.calls)

    @property
    def pending(self) -> list[FakeCall]:
        return [c for c in self.calls if c.pending]

    @property
    def last(self) -> FakeCall:
        assert self.calls, f"{self.name} was never called"
        return self.calls[-1]

    def args(self) -> list[tuple[Any, ...]]:
        return [c.args for c in self.calls]

    async def __call__(self, *args: Any) -> Any:
        call = FakeCall(args, asyncio.get_running_loop().create_future())
        self.calls.append(call)
        if self._auto is not None:
            try:
                call.resolve(self._auto(*args))
            except Exception as exc:  # noqa: BLE001 - the auto answer is a failure
                call.fail(exc)
        return await call.future


# ------------------------------------------------------------------ the fakes


class FakeBackend:
    """The Backend protocol, answered by the test."""

    name = "fake"

    def __init__(self) -> None:
        self._serial = itertools.count(1)
        self.start = FakeMethod("start", auto=lambda key, spec: self.new_instance(key, spec.name))
        self.stop = FakeMethod("stop", auto=lambda instance: None)
        self.inspect = FakeMethod("inspect", auto=lambda instance: InstanceState.RUNNING)
        self.listed: list[Instance] = []  # what list_instances reports
        self.exit_reasons: dict[str, str] = {}  # what exit_reason reports, by instance id
        self.cleanups = 0
        self.closed = False

    def new_instance(self, key: str, container: str = "svc") -> Instance:
        n = next(self._serial)
        return Instance(key=key, class_name=container, host="127.0.0.1", port=40000 + n, id=f"fake-{n}")

    def started(self, call: FakeCall | None = None) -> Instance:
        """Let a held start succeed with a fresh instance (the oldest pending start by default)."""
        call = call or self.start.pending[0]
        key, spec = call.args
        return call.resolve(self.new_instance(key, spec.name))

    async def exit_reason(self, instance: Instance) -> str | None:
        return self.exit_reasons.get(instance.id)

    async def list_instances(self) -> list[Instance]:
        return list(self.listed)

    async def cleanup_stopped(self) -> list[str]:
        self.cleanups += 1
        return []

    async def close(self) -> None:
        self.closed = True

    def methods(self) -> list[FakeMethod]:
        return [self.start, self.stop, self.inspect]


class FakeProber:
    def __init__(self) -> None:
        self.wait_ready = FakeMethod("wait_ready", auto=lambda instance, readiness, seen: None)


class FakePools:
    def __init__(self) -> None:
        self.forgotten: list[Instance] = []

    def forget(self, instance: Instance) -> None:
        self.forgotten.append(instance)


@dataclass(frozen=True)
class Seen:
    at: float  # the loop time it was emitted at
    event: Event


class Recorder:
    """Subscribed to the bus: every event, with the loop time it was emitted at."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []

    def __call__(self, event: Event) -> None:
        self.seen.append(Seen(asyncio.get_running_loop().time(), event))

    def transitions(self, key: str | None = None) -> list[Transition]:
        return [s.event for s in self.seen
                if isinstance(s.event, Transition) and key in (None, s.event.key)]

    def path(self, key: str | None = None) -> list[State]:
        """The states a key went through, in order (the new state of each transition)."""
        return [t.new for t in self.transitions(key)]

    def happenings(self, key: str | None = None) -> list[tuple[Happening, StopReason | None]]:
        return [(t.happening, t.stop_reason) for t in self.transitions(key) if t.happening is not None]

    def at(self, happening: Happening, key: str | None = None) -> list[float]:
        """Loop times at which `happening` was emitted."""
        return [s.at for s in self.seen if isinstance(s.event, Transition) and s.event.happening is happening
                and key in (None, s.event.key)]

    def cold_waits(self) -> list[float]:
        return [s.event.seconds for s in self.seen if isinstance(s.event, ColdWait)]


# ------------------------------------------------------------------ the world


DEFAULT_CLASS: dict[str, Any] = {
    "image": "fake/image:1",
    "sleep_after": "60s",
    "start_timeout": "10s",
    "max_instances": 5,
    "readiness": {"path": "/ready", "interval": "100ms", "timeout": "1s"},
}


def make_config(classes: dict[str, dict[str, Any]], **top: Any) -> Config:
    """A config with these container classes (each over DEFAULT_CLASS) and one route per class."""
    containers = {name: {**DEFAULT_CLASS, **opts} for name, opts in classes.items()}
    routes = [{"path": f"/{name}/{{tail:.*}}", "container": name} for name in containers]
    return parse_config({"containers": containers, "routes": routes, **top})


@dataclass
class World:
    config: Config
    backend: FakeBackend = field(default_factory=FakeBackend)
    bus: EventBus = field(default_factory=EventBus)
    events: Recorder = field(default_factory=Recorder)
    prober: FakeProber = field(default_factory=FakeProber)
    pools: FakePools = field(default_factory=FakePools)
    capacity: Capacity = field(init=False)
    services: Services = field(init=False)

    def __post_init__(self) -> None:
        self.capacity = Capacity({name: c.max_instances for name, c in self.config.containers.items()})
        self.bus.subscribe(self.events)
        self.services = Services(self.backend, self.bus, self.capacity, self.prober, self.pools)

    def klass(self, name: str = "svc") -> ContainerClass:
        return self.config.containers[name]

    def manager(self, key: str = "k", container: str = "svc") -> Manager:
        return Manager(key, self.klass(container), self.services)

    def registry(self) -> Registry:
        return Registry(self.config, self.services)

    @property
    def readiness(self) -> Readiness:
        return self.klass().readiness

    def spec(self, container: str = "svc") -> ContainerSpec:
        return self.klass(container).spec


@pytest.fixture
async def make_world() -> AsyncIterator[Callable[..., World]]:
    """`make_world(svc={...}, other={...}, backend={...})`: classes over DEFAULT_CLASS (default: one `svc`)."""
    worlds: list[World] = []

    def make(classes: dict[str, dict[str, Any]] | None = None, /, **kw: Any) -> World:
        top = {k: kw.pop(k) for k in ("backend",) if k in kw}
        world = World(make_config(classes or kw or {"svc": {}}, **top))
        worlds.append(world)
        return world

    yield make
    # Teardown: settle whatever a test left held, so no task lingers in manager code.
    for world in worlds:
        for method in [*world.backend.methods(), world.prober.wait_ready]:
            method.reset_answer()
            for call in method.pending:
                call.future.cancel()
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    """One class `svc`: sleep_after 60 s, start_timeout 10 s, max_instances 5."""
    return make_world()


class Clock:
    """The running loop's virtual time (looptime), moved explicitly by the test."""

    @staticmethod
    def _loop() -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if not getattr(loop, "looptime_on", False):
            raise RuntimeError("tests/unit needs looptime's virtual clock (pip install looptime; "
                               "do not pass --no-looptime)")
        return loop

    @property
    def now(self) -> float:
        return self._loop().time()

    async def advance(self, seconds: float) -> None:
        """Let `seconds` of loop time pass (timers due meanwhile fire in order), then settle."""
        assert seconds >= 0
        await self.advance_to(self.now + seconds)

    async def advance_to(self, when: float) -> None:
        loop = self._loop()
        assert when >= loop.time(), f"cannot go back from {loop.time()} to {when}"
        reached = loop.create_future()
        loop.call_at(when, reached.set_result, None)
        await reached  # looptime jumps from timer to timer: no real waiting
        await self.settle()
        assert loop.time() == pytest.approx(when, abs=1e-6)

    async def settle(self, rounds: int = 50) -> None:
        """Run everything that is ready (and what that makes ready), without moving the clock."""
        before = self.now
        for _ in range(rounds):
            await asyncio.sleep(0)
        assert self.now == before, "the clock moved while settling"

    async def until(self, predicate: Callable[[], bool], rounds: int = 1000) -> None:
        """Run ready work until `predicate()` holds, without moving the clock."""
        before = self.now
        for _ in range(rounds):
            if predicate():
                assert self.now == before, "the clock moved while waiting for a condition"
                return
            await asyncio.sleep(0)
        raise AssertionError(f"condition not reached after {rounds} loop rounds")


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def gather_outcomes(tasks: Iterable[asyncio.Task[Any]]) -> list[Any]:
    """Results or exceptions of tasks that must all be done already (no waiting)."""
    out = []
    for task in tasks:
        assert task.done(), f"{task.get_name()} is still waiting"
        out.append(task.exception() or task.result())
    return out
