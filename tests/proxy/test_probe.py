"""Readiness kinds, the probe schedule and what a failed probe says (proxy/lifecycle/readiness.py), on tiny local
servers.

Real sockets on loopback, no daemon: a TCP listener, one that hangs up at once (as docker-proxy does while
nothing listens behind a published port), an HTTP server answering 404 then 200, and a backend that reports
a HEALTHCHECK. The failure reasons of whole starts (504 with what the probe saw) are tested through the proxy.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, AsyncIterator

import pytest
from aiohttp import web

from backends.base import BackendError, Instance, InstanceState
from backends.control import Health
from proxy.config.schema import Readiness, parse_config
from proxy.lifecycle.readiness import (BACKOFF, HANGUP_BOUNDS, HANGUP_GRACE, HUNG_UP, Forwarding, LastSeen,
                                       ReadinessProber, next_wait)
from proxy.config.units import ConfigError


def readiness(value: Any = None) -> Readiness:
    """A class's readiness as config.yaml would give it (on docker, where every kind is allowed)."""
    raw: dict[str, Any] = {"backend": {"type": "docker"},
                           "containers": {"w": {} if value is None else {"readiness": value}}}
    return parse_config(raw).containers["w"].readiness


def instance(port: int) -> Instance:
    return Instance(key="k", class_name="w", host="127.0.0.1", port=port, id="test-instance")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Alive:
    """The Backend calls a readiness wait makes: the instance stays running."""

    name = "fake"

    async def inspect(self, instance: Instance) -> InstanceState:
        return InstanceState.RUNNING

    async def exit_reason(self, instance: Instance) -> str | None:
        return None


class Checked(Alive):
    """A backend that reports the image's HEALTHCHECK: these answers in turn (the last one repeats)."""

    def __init__(self, *health: Health) -> None:
        self.answers = list(health)
        self.asked = 0

    async def health(self, instance: Instance) -> Health:
        self.asked += 1
        return self.answers[min(self.asked, len(self.answers)) - 1]


@pytest.fixture
async def prober() -> AsyncIterator[ReadinessProber]:
    p = ReadinessProber(Alive())  # type: ignore[arg-type]  # only inspect/exit_reason are called
    yield p
    await p.close()


# ------------------------------------------------------------------ config


def test_kinds_and_shorthands() -> None:
    assert readiness().kind == "tcp" and readiness({"interval": "1ms"}).kind == "tcp"
    assert (readiness({"path": "/healthz"}).kind, readiness({"path": "/healthz"}).path) == ("http", "/healthz")
    assert readiness("/healthz") == readiness({"path": "/healthz"}) == readiness({"kind": "http", "path": "/healthz"})
    assert readiness("healthcheck").kind == "healthcheck" and readiness("tcp") == readiness()
    assert [readiness(v).describe() for v in (None, "/hz", "healthcheck")] == ["TCP connect", "GET /hz", "healthcheck"]


@pytest.mark.parametrize(("value", "backend", "field", "words"), [
    ({"kind": "http"}, "stub", "containers.w.readiness.path", "required for kind http"),
    ({"kind": "tcp", "path": "/x"}, "stub", "containers.w.readiness.path", "only for kind http"),
    ("nonsense", "stub", "containers.w.readiness.kind", "'healthcheck'"),
    ({"interval": "50ms", "max_interval": "10ms"}, "stub", "containers.w.readiness.max_interval", "at least interval"),
    ("healthcheck", "stub", "containers.w.readiness", "needs backend docker or podman, not stub"),
    ("healthcheck", "process", "containers.w.readiness", "needs backend docker or podman, not process"),
    ("healthcheck", "swarm", "containers.w.readiness", "needs backend docker or podman, not swarm"),
])
def test_config_errors_name_the_field(value: Any, backend: str, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"backend": {"type": backend}, "containers": {"w": {"readiness": value}}})
    assert err.value.field == field and words in str(err.value)


def test_healthcheck_is_accepted_on_docker_and_podman() -> None:
    for backend in ("docker", "podman"):
        config = parse_config({"backend": {"type": backend}, "containers": {"w": {"readiness": "healthcheck"}}})
        assert config.containers["w"].readiness.kind == "healthcheck"


# ------------------------------------------------------------------ schedule


def test_waits_start_at_interval_grow_with_the_time_waited_and_stop_at_max_interval() -> None:
    r = readiness()  # 5 ms first, 100 ms at most
    waited, waits = 0.0, []
    while waited < 30:
        waits.append(next_wait(r, waited))
        assert waits[-1] <= max(r.interval, waited * BACKOFF) and BACKOFF <= 1 / 40  # polling adds <= 2.5%
        waited += waits[-1]
    assert waits[0] == r.interval and max(waits) == r.max_interval
    assert waits == sorted(waits)  # never shorter than the one before
    assert len(waits) < 30 / r.interval / 10  # a never-ready app over 30 s: far fewer probes than a flat poll
    slow = readiness({"interval": "300ms"})  # longer than the default max_interval: flat at interval
    assert next_wait(slow, 0) == next_wait(slow, 100) == 0.3


# ------------------------------------------------------------------ tcp


async def test_tcp_ready_when_the_port_accepts(prober: ReadinessProber) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        check = await prober.check(instance(port), readiness())
        assert check.ok, check


async def test_tcp_not_ready_when_refused_or_hung_up_at_once(prober: ReadinessProber) -> None:
    learnt = Forwarding()
    refused = await prober.check(instance(closed_port()), readiness(), forwarding=learnt)
    assert not refused.ok and refused.what == "connection refused"
    assert learnt.refused and learnt.grace() == 0  # nothing accepts in the app's place: a connect is ready

    def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()  # what docker-proxy does while nothing listens behind the published port

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    async with server:
        learnt = Forwarding()
        hung = await prober.check(instance(server.sockets[0].getsockname()[1]), readiness(), forwarding=learnt)
    assert not hung.ok and hung.what == HUNG_UP
    assert learnt.slowest_hangup is not None and HANGUP_BOUNDS[0] <= learnt.grace() <= HANGUP_BOUNDS[1]


def test_hangup_grace_follows_what_the_wait_learnt() -> None:
    assert Forwarding().grace() == HANGUP_GRACE  # nothing known yet
    assert Forwarding(refused=True).grace() == 0
    assert Forwarding(slowest_hangup=0.0001).grace() == HANGUP_BOUNDS[0]
    assert Forwarding(slowest_hangup=0.004).grace() == pytest.approx(0.02)
    assert Forwarding(refused=True, slowest_hangup=1.0).grace() == HANGUP_BOUNDS[1]  # a hang-up outweighs


# ------------------------------------------------------------------ http


async def test_http_waits_through_404_and_remembers_it(prober: ReadinessProber) -> None:
    state = {"status": 404}
    app = web.Application()

    async def ready(request: web.Request) -> web.Response:
        return web.Response(status=state["status"])

    app.router.add_get("/ready", ready)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        seen = LastSeen()
        waiting = asyncio.create_task(prober.wait_ready(instance(port), readiness("/ready"), seen))
        while not seen.what:
            await asyncio.sleep(0.01)
        assert seen.what == "GET /ready answered 404" and not waiting.done()
        state["status"] = 200
        await asyncio.wait_for(waiting, 30)
        check = await prober.check(instance(port), readiness("/ready"))
        assert check.ok and check.status == 200
    finally:
        await runner.cleanup()


async def test_http_connection_refused(prober: ReadinessProber) -> None:
    check = await prober.check(instance(closed_port()), readiness("/ready"))
    assert not check.ok and check.what == "connection refused" and check.status is None


# ------------------------------------------------------------------ healthcheck


async def test_healthcheck_waits_for_healthy_and_says_unhealthy() -> None:
    backend = Checked(Health("starting"), Health("unhealthy", "curl: (7) refused"), Health("healthy"))
    prober = ReadinessProber(backend)  # type: ignore[arg-type]
    seen = LastSeen()
    await asyncio.wait_for(prober.wait_ready(instance(1), readiness("healthcheck"), seen), 30)
    assert backend.asked == 3 and seen.what == "healthcheck: unhealthy (last output: curl: (7) refused)"
    assert (await prober.check(instance(1), readiness("healthcheck"))).what == "healthcheck: healthy"
    first = await ReadinessProber(Checked(Health("starting"))).check(instance(1), readiness("healthcheck"))  # type: ignore[arg-type]
    assert not first.ok and first.what == "healthcheck: starting (no check has run yet)"


async def test_healthcheck_without_one_in_the_image_fails_at_once() -> None:
    backend = Checked(Health(None))
    with pytest.raises(BackendError, match="the image has no HEALTHCHECK"):
        await asyncio.wait_for(ReadinessProber(backend).wait_ready(instance(1), readiness("healthcheck")), 30)  # type: ignore[arg-type]
    assert backend.asked == 1


async def test_healthcheck_on_a_backend_that_cannot_report_one(prober: ReadinessProber) -> None:
    check = await prober.check(instance(1), readiness("healthcheck"))
    assert not check.ok and check.final and "cannot report one" in check.what


class Forwarded(Alive):
    """A backend whose instance's address is a forwarder's (docker-proxy) and knows the app's own address."""

    def __init__(self, direct: tuple[str, int] | None) -> None:
        self.direct = direct
        self.lookups = 0

    async def direct_address(self, instance: Instance) -> tuple[str, int] | None:
        self.lookups += 1
        return self.direct


async def hang_up_server(accepted: list[int] | None = None) -> asyncio.Server:
    """docker-proxy with nothing behind it: accepts, and closes at once (counting into `accepted`)."""
    def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if accepted is not None:
            accepted.append(1)
        writer.close()

    return await asyncio.start_server(hang_up, "127.0.0.1", 0)


async def test_tcp_behind_a_forwarder_probes_the_direct_address() -> None:
    app = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    async with await hang_up_server() as forwarder, app:
        backend = Forwarded(("127.0.0.1", app.sockets[0].getsockname()[1]))
        seen = LastSeen()
        await asyncio.wait_for(ReadinessProber(backend).wait_ready(  # type: ignore[arg-type]
            instance(forwarder.sockets[0].getsockname()[1]), readiness(), seen), 30)
    assert backend.lookups == 1 and seen.what == HUNG_UP  # once the forwarder showed itself, never again


async def test_tcp_behind_a_forwarder_goes_back_when_the_direct_address_is_unreachable() -> None:
    accepted: list[int] = []
    async with await hang_up_server(accepted) as forwarder:
        backend = Forwarded(("no-such-host.invalid", 80))
        waiting = asyncio.create_task(ReadinessProber(backend).wait_ready(  # type: ignore[arg-type]
            instance(forwarder.sockets[0].getsockname()[1]), readiness()))
        while len(accepted) < 3:  # the first probe, then (after the direct one failed) back at the forwarder
            await asyncio.sleep(0.01)
        waiting.cancel()
    assert backend.lookups == 1
