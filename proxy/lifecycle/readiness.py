"""Readiness probing: may a started instance take requests yet (and is it still alive)?

Four kinds (`Readiness` in proxy/config/containers.py): a TCP connect to the instance's port (the default,
as Cloudflare and Knative wait for the port), a GET of a path answering 2xx, the image's own HEALTHCHECK
as the runtime reports it, or the standard gRPC health service answering SERVING (proxy/lifecycle/grpc_probe.py).
Probes begin `interval` apart and the waits grow with the time already waited
(`next_wait`) up to `max_interval`, so a slow or broken app is not probed hundreds of times a second while a
fast one is still found ready within a few ms. The start's `LastSeen` keeps what the last probe saw, so a
start that times out can say why (`GET /v2/health/ready answered 404`, `connection refused`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

import aiohttp

from backends.base import Backend, BackendError, Instance, InstanceState
from backends.control import DirectlyReachable, HealthReporting
from proxy.config.schema import Readiness
from proxy.lifecycle.grpc_probe import check_health

INSPECT_EVERY = 0.5  # while waiting: how often to ask the runtime whether the instance died
# Each wait between probes is this fraction of the time waited so far (at least `interval`, at most
# `max_interval`): polling then adds at most 1/40 (on average 1/80) to a start's readiness wait.
BACKOFF = 1 / 40
# A TCP probe that connects still waits a moment for the peer to hang up: a published port on docker is
# docker-proxy's, which accepts every connection and closes it at once (p99 0.8 ms here) while nothing listens
# behind it. How long: HANGUP_GRACE while nothing is known of the address; nothing once a refusal showed there
# is no such forwarder (podman, process, swarm); HANGUP_FACTOR times the slowest hang-up seen, within
# HANGUP_BOUNDS, once hang-ups showed there is one (so a loaded host, slower to hang up, waits longer). On a
# loaded host docker-proxy can still be slower than that (its dial waits for the new container's network), so
# once it showed itself, a backend that knows the container's own address (DirectlyReachable) is probed
# there instead, where a connection is the app's.
HANGUP_GRACE = 0.01
HANGUP_FACTOR = 5.0
HANGUP_BOUNDS = (0.003, 0.03)
HUNG_UP = "connection closed at once (nothing listening behind the published port yet)"


def next_wait(readiness: Readiness, waited: float) -> float:
    """The wait before the next probe, `waited` seconds into a readiness wait."""
    return min(readiness.longest_wait, max(readiness.interval, waited * BACKOFF))


@dataclass
class LastSeen:
    """What one start's readiness wait last saw (empty until a probe failed); the manager owns one per start."""

    what: str = ""


@dataclass
class Forwarding:
    """What one readiness wait learnt about its TCP address: is something in front that accepts for the app?"""

    refused: bool = False  # a connection was refused: nothing accepts in the app's place
    slowest_hangup: float | None = None  # seconds from connect to the peer's close, when it hung up at once

    def grace(self) -> float:
        if self.slowest_hangup is not None:
            low, high = HANGUP_BOUNDS
            return min(high, max(low, HANGUP_FACTOR * self.slowest_hangup))
        return 0.0 if self.refused else HANGUP_GRACE


@dataclass(frozen=True)
class Check:
    """One probe's outcome: ready or not, what it saw, the HTTP status (http kind); `final`: waiting is futile."""

    ok: bool
    what: str
    status: int | None = None
    final: bool = False


REFUSED = "connection refused"
REFUSED_HINT = ("nothing accepts on the app's port: is `port` right, and in a container, does the app listen on "
                "0.0.0.0, not 127.0.0.1?")


def timed_out(seen: str) -> str:
    """What a start that timed out last saw; a refusal with what to check (a wrong `port`, or an app on
    127.0.0.1 in its container, which no published port reaches: the two usual first-hour mistakes)."""
    return f"{seen} ({REFUSED_HINT})" if seen == REFUSED else seen


def _failure(exc: BaseException, readiness: Readiness, timeout: float) -> str:
    """A failed probe in a few words."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        exc = exc.os_error
    if isinstance(exc, ConnectionRefusedError):
        return REFUSED
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return f"{readiness.describe()} timed out after {timeout:g}s"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"{readiness.describe()}: connection closed without an answer"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class ReadinessProber:
    """TCP, HTTP and healthcheck probes: what `Services.prober` is (its Protocol: proxy/lifecycle/services.py)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._session: aiohttp.ClientSession | None = None

    async def probe(self, instance: Instance, path: str, timeout: float) -> int:
        """One GET of `path` on the instance, on its own short-lived connection; the status code."""
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        async with self._session.get(instance.url + path, timeout=aiohttp.ClientTimeout(total=timeout),
                                     allow_redirects=False) as resp:
            return resp.status

    async def check(self, instance: Instance, readiness: Readiness, timeout: float | None = None,
                    forwarding: Forwarding | None = None) -> Check:
        """One probe of `readiness`'s kind (bounded by `timeout`, else the readiness's own); `forwarding`:
        what earlier TCP probes of the same wait learnt, and this one adds to."""
        timeout = readiness.timeout if timeout is None else timeout
        forwarding = Forwarding() if forwarding is None else forwarding
        try:
            if readiness.kind == "http":
                assert readiness.path is not None  # the config requires it for kind http
                status = await self.probe(instance, readiness.path, timeout)
                return Check(200 <= status < 300, f"GET {readiness.path} answered {status}", status)
            if readiness.kind == "tcp":
                return await asyncio.wait_for(self._tcp(instance, forwarding), timeout)
            if readiness.kind == "grpc":
                health = await asyncio.wait_for(
                    check_health(instance.host, instance.port, readiness.service or "", timeout), timeout)
                return Check(health.ok, health.what, final=health.final)
            return await asyncio.wait_for(self._health(instance), timeout)
        except BackendError as exc:
            return Check(False, exc.reason)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            if isinstance(exc, ConnectionRefusedError):
                forwarding.refused = True
            return Check(False, _failure(exc, readiness, timeout))

    @staticmethod
    async def _tcp(instance: Instance, forwarding: Forwarding) -> Check:
        reader, writer = await asyncio.open_connection(instance.host, instance.port)
        try:
            if (grace := forwarding.grace()) <= 0:
                return Check(True, "connected")
            loop = asyncio.get_running_loop()
            connected = loop.time()
            try:
                data = await asyncio.wait_for(reader.read(1), grace)
            except asyncio.TimeoutError:  # held open: something listens
                return Check(True, "connected")
            if data:  # the app spoke first
                return Check(True, "connected")
            hangup = loop.time() - connected
            forwarding.slowest_hangup = max(hangup, forwarding.slowest_hangup or 0.0)
            return Check(False, HUNG_UP)
        finally:
            writer.close()

    async def _health(self, instance: Instance) -> Check:
        if not isinstance(self.backend, HealthReporting):
            return Check(False, f"readiness healthcheck: backend {self.backend.name} cannot report one", final=True)
        health = await self.backend.health(instance)
        if health.status is None:
            return Check(False, "readiness healthcheck: the image has no HEALTHCHECK (add one, or use readiness "
                                "tcp or a path)", final=True)
        output = f" (last output: {health.output})" if health.output else ""
        if health.status == "starting" and not health.output:  # docker's first check runs an `interval` in;
            output = " (no check has run yet)"  # podman runs them only with systemd
        return Check(health.status == "healthy", f"healthcheck: {health.status}{output}")

    async def wait_ready(self, instance: Instance, readiness: Readiness, seen: LastSeen | None = None) -> None:
        """Probe until ready; fail fast if the instance died meanwhile or waiting is futile.

        The caller bounds the whole wait with start_timeout; `seen` keeps the last failed probe's words.
        """
        loop = asyncio.get_running_loop()
        began = loop.time()
        next_inspect = began + INSPECT_EVERY
        forwarding, target, direct, looked = Forwarding(), instance, None, False
        while True:
            result = await self.check(target, readiness, forwarding=forwarding)
            if result.ok:
                return
            if seen is not None:
                seen.what = result.what
            if result.final:
                raise BackendError(result.what)
            if result.what == HUNG_UP and not looked:  # a forwarder answers: probe behind it if we can
                direct, looked = await self._direct(instance), True
                if direct is not None:
                    target, forwarding = direct, Forwarding(refused=True)  # nothing in between there
            elif target is direct and result.what != REFUSED:  # not reachable from here after all
                target, forwarding = instance, Forwarding(slowest_hangup=HANGUP_BOUNDS[1])
            if loop.time() >= next_inspect:
                next_inspect = loop.time() + INSPECT_EVERY
                if await self.backend.inspect(instance) is not InstanceState.RUNNING:
                    why = await self.backend.exit_reason(instance)
                    raise BackendError(f"instance exited before it was ready ({instance.id[:12]}"
                                       + (f": {why})" if why else ")"))
            await asyncio.sleep(next_wait(readiness, loop.time() - began))

    async def _direct(self, instance: Instance) -> Instance | None:
        """`instance` at the container's own address, when the backend knows it (else None)."""
        if not isinstance(self.backend, DirectlyReachable):
            return None
        try:
            address = await self.backend.direct_address(instance)
        except BackendError:
            return None
        return None if address is None else replace(instance, host=address[0], port=address[1])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
