"""Faults injected from outside the proxy, under concurrent traffic, on real dockerd and podman.

A container stopped or removed behind the proxy's back costs only the requests in flight on it, and those
arriving while it stops are held for the restart; an idle one leaves `running` at once (the runtime's event
stream); a paused (frozen) one is thawed before every stop (podman refuses to stop it paused); a daemon
outage gives quick 503s with Retry-After, never 502s for requests that were not in flight, and leaves
nothing `running` at a dead address; an instance that runs out of memory says so.

The tests named `daemon_outage` or `during_an_outage` stop a shared daemon (.ci/daemons.sh): run them alone,
never while other tests use dockerd/podman. The rest are bounded to well under a minute each:

    pytest -m faults tests/engines/test_faults.py -k "not daemon_outage and not during_an_outage"
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from proxy.lifecycle.events import Happening, State, Transition
from tests.conftest import ENGINE_PARAMS

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.faults
CLIENTS = 8


@pytest.fixture(params=ENGINE_PARAMS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def traffic(h, path: str, seconds: float, fault,
                  refusals: list[tuple[float, int, str | None]] | None = None,
                  ) -> tuple[list[tuple[float, float, int]], float, float]:
    """CLIENTS loops of GET `path` (a list: round robin) for `seconds`; `fault()` runs after a third of it.
    Returns (sent at, done at, status) per request and the loop times at which the fault began and had been
    applied. `refusals` gets (sent at, status, Retry-After) of each answer other than 200."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    results: list[tuple[float, int]] = []
    paths = [path] if isinstance(path, str) else path

    async def client(n: int) -> None:
        while loop.time() < end:
            sent = loop.time()
            resp = await h.client.get(paths[n % len(paths)])
            await resp.read()
            results.append((sent, loop.time(), resp.status))
            if refusals is not None and resp.status != 200:
                refusals.append((sent, resp.status, resp.headers.get("Retry-After")))

    clients = [asyncio.create_task(client(n)) for n in range(CLIENTS)]
    await asyncio.sleep(seconds / 3)
    began = loop.time()
    await fault()
    applied = loop.time()
    await asyncio.gather(*clients)
    return results, began, applied


@pytest.mark.parametrize("how", ["stop", "remove"])
async def test_a_container_stopped_or_removed_from_outside_costs_only_requests_in_flight(make_proxy, raw, how):
    h = await make_proxy()
    assert (await h.client.get("/k/victim/api/health")).status == 200
    m = h.manager("victim")
    victim = m.instance.id

    async def fault() -> None:
        container = raw.containers.container(victim)
        await (container.stop(t=1) if how == "stop" else container.delete(force=True))

    results, began, applied = await traffic(h, "/k/victim/api/health", 6.0, fault)
    before = [status for sent, done, status in results if done < began]
    after = [status for sent, done, status in results if sent > applied]
    failed = [(sent, status) for sent, done, status in results if status != 200]
    assert before and all(status == 200 for status in before)
    assert after and all(status == 200 for status in after), sorted(set(after))  # after it was gone: all served
    # Only requests that met the instance while it was going (in flight, or sent during the stop) may fail.
    assert all(done >= began and sent <= applied for sent, done, status in results if status != 200), failed
    assert m.start_count == 2 and m.state is State.RUNNING and m.instance.id != victim or how == "stop"
    await h.wait_for(lambda: m.in_flight == 0)


async def test_requests_during_a_stop_from_outside_are_held_for_the_restart(make_proxy, raw):
    """`docker stop` / `podman stop` from the CLI (with a grace period): requests arriving while it stops are
    held and served by the restarted instance, like any request that finds the key stopped; never a 503. (The
    instance's port proxy accepts and resets while it goes; podman says "no such container" while it cleans up.)"""
    h = await make_proxy()
    assert (await h.client.get("/k/stopping/api/health")).status == 200
    m = h.manager("stopping")
    victim = m.instance.id
    refusals: list[tuple[float, int, str | None]] = []

    async def fault() -> None:
        await raw.containers.container(victim).stop(t=5)

    results, began, applied = await traffic(h, "/k/stopping/api/health", 6.0, fault, refusals)
    assert [status for _, status, _ in refusals if status == 503] == [], refusals
    after = [status for sent, done, status in results if sent > applied]
    assert after and all(status == 200 for status in after), sorted(set(after))
    # Only a request on the instance when it went may fail (cut mid-answer), never one that came after.
    assert all(sent <= applied for sent, status, _ in refusals), refusals
    assert m.state is State.RUNNING and m.start_count == 2
    await h.wait_for(lambda: m.in_flight == 0)


async def test_an_instance_lost_while_the_runtime_cannot_be_asked_gives_503s_not_502s(make_proxy, raw):
    """The proxy loses its runtime's API (its socket points nowhere, as when the daemon is down) and the
    instance dies with it (killed from outside): requests not in flight get the outage's 503 with Retry-After,
    never a 502; once the runtime answers again, the key is served again. (The real outage, dockerd stopped:
    test_daemon_outage_under_traffic_gives_503s_not_502s, which must run alone.)"""
    h = await make_proxy()
    paths = ["/k/lost/api/health", "/k/kept/api/health"]
    for path in paths:
        assert (await h.client.get(path)).status == 200
    m = h.manager("lost")
    victim, socket = m.instance.id, h.backend.socket
    refusals: list[tuple[float, int, str | None]] = []

    async def fault() -> None:
        h.backend.socket = "unix:///nonexistent/f23-runtime-gone.sock"
        await h.backend._reset_client()
        await raw.containers.container(victim).kill()

    try:
        results, began, applied = await traffic(h, paths, 6.0, fault, refusals)
    finally:
        h.backend.socket = socket
        await h.backend._reset_client()
    # Every refusal is the outage's (podman's kill takes a while: the instance may be gone before it returns).
    # A request cut mid-answer could be a 502, but a health answer is one small write: none was, in many runs.
    assert refusals and {status for _, status, _ in refusals} == {503}, sorted({s for _, s, _ in refusals})
    assert all(retry_after is not None and int(retry_after) >= 1 for _, _, retry_after in refusals), refusals
    assert all(sent >= began - 0.5 for sent, _, _ in refusals), (began, refusals)  # none before the fault
    assert any(sent > applied for sent, _, _ in refusals), (applied, refusals)  # and still while it lasted
    await h.proxy.reconciler.reconcile_once()
    await h.wait_for(lambda: m.state is not State.RUNNING or m.instance.id != victim, timeout=10)
    resp = await h.client.get(paths[0])
    assert resp.status == 200, await resp.text()
    await h.wait_for(lambda: m.in_flight == 0)


async def test_an_idle_instance_stopped_from_outside_leaves_running_at_once(make_proxy, raw):
    h = await make_proxy()
    assert (await h.client.get("/k/quiet/api/health")).status == 200
    m = h.manager("quiet")
    await raw.containers.container(m.instance.id).stop(t=1)
    await h.wait_for(lambda: m.state is State.STOPPED, timeout=5)  # no request needed: the event stream
    assert m.last_error.startswith("instance exited")


async def test_a_kill_from_outside_is_not_called_out_of_memory(make_proxy, raw, backend_kind):
    """`docker kill` leaves exit 137 as the OOM killer does: only the runtime's OOMKilled may say memory."""
    h = await make_proxy(svc={"instance_type": {"memory": "256MiB", "cpus": 1.0}})
    assert (await h.client.get("/k/shot/api/health")).status == 200
    m = h.manager("shot")
    await raw.containers.container(m.instance.id).kill()
    await h.wait_for(lambda: m.state is State.STOPPED, timeout=5)
    assert "killed (exit 137, SIGKILL)" in m.last_error, m.last_error
    if backend_kind == "docker":  # podman's OOMKilled cannot be trusted: it names both causes there
        assert "memory" not in m.last_error, m.last_error


async def test_out_of_memory_is_named_in_the_refusal(make_proxy, raw):
    hog = ["/usr/bin/python3.11", "-c", "x = bytearray(256 * 2**20); import time; time.sleep(60)"]
    h = await make_proxy(svc={"command": hog, "instance_type": {"memory": "32MiB", "cpus": 1.0},
                              "start_timeout": "30s"}, config={"errors": {"detail": "full"}})  # the detail in the body
    resp = await h.client.get("/k/hog/api/health")
    body = await resp.json()
    assert resp.status == 503 and "memory" in body["reason"] and "32 MiB" in body["reason"], body


async def running(h, raw) -> list[dict]:
    """Inspect JSON of this proxy's running containers, as the runtime lists them."""
    from backends.base import LABEL_PROXY_ID

    filters = json.dumps({"label": [f"{LABEL_PROXY_ID}={h.backend.proxy_id}"], "status": ["running"]})
    return [await c.show() for c in await raw.containers.list(filters=filters)]


async def believed_stopped_but_running(h, raw) -> list[str]:
    """Containers of this proxy that run while their manager does not think so (orphans in the making)."""
    from backends.base import LABEL_CONTAINER, LABEL_KEY

    orphans = []
    for info in await running(h, raw):
        labels = info["Config"]["Labels"]
        m = h.manager(labels[LABEL_KEY], labels[LABEL_CONTAINER])
        if m.state is not State.RUNNING or m.instance is None or m.instance.id != info["Id"]:
            orphans.append(f"{labels[LABEL_KEY]}: {m.state.value}")
    return orphans


async def test_daemon_outage_gives_quick_503s_and_nothing_stays_running_at_a_dead_address(
        make_proxy, raw, backend_kind):
    h = await make_proxy()
    assert (await h.client.get("/k/warm/api/health")).status == 200
    m = h.manager("warm")
    subprocess.run(["bash", str(ROOT / ".ci/daemons.sh"), "down", backend_kind], check=True, timeout=60)
    try:
        loop = asyncio.get_running_loop()
        for path in ["/k/warm/api/health"] * 5 + ["/k/cold/api/health"] * 3:
            began = loop.time()
            resp = await h.client.get(path)
            if backend_kind == "podman" and path.startswith("/k/warm"):
                # podman has no daemon holding the containers: a running one outlives its API service
                assert resp.status == 200, await resp.text()
            else:  # dockerd takes its containers with it; and nobody can start one now
                assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1, await resp.text()
            assert loop.time() - began < 1.0
    finally:
        subprocess.run(["bash", str(ROOT / ".ci/daemons.sh"), "up"], check=True, timeout=300)
    await h.proxy.reconciler.reconcile_once()  # what the periodic reconcile does within 10 s
    assert await believed_stopped_but_running(h, raw) == []
    assert m.state is not State.RUNNING or (await h.client.get("/k/warm/api/health")).status == 200
    resp = await h.client.get("/k/warm/api/health")
    assert resp.status == 200, await resp.text()
    assert m.state is State.RUNNING


async def test_daemon_outage_under_traffic_gives_503s_not_502s(make_proxy, raw, backend_kind):
    """The runtime's daemon (dockerd; podman's API service) stopped under traffic over a few keys. dockerd takes
    its containers with it: a request sent once it is down gets the outage's 503 with Retry-After, never a 502
    (the instance refused, was silent or dropped the connection, and the runtime cannot be asked why); podman's
    containers outlive the service and keep serving. Afterwards every key is served again.

    Stops a shared daemon: run it alone (`-k daemon_outage`), never beside other tests. (The crash-loop breaker
    is off: the starts that fail during the outage would open it, a policy of its own.)"""
    h = await make_proxy(svc={"crash_loop": {"failures": 0}})
    paths = [f"/k/outage{i}/api/health" for i in range(4)]
    for path in paths:
        assert (await h.client.get(path)).status == 200
    refusals: list[tuple[float, int, str | None]] = []
    daemons = ["bash", str(ROOT / ".ci/daemons.sh")]

    async def fault() -> None:
        await asyncio.to_thread(subprocess.run, [*daemons, "down", backend_kind], check=True, timeout=60)

    try:
        results, began, applied = await traffic(h, paths, 20.0, fault, refusals)
    finally:
        await asyncio.to_thread(subprocess.run, [*daemons, "up"], check=True, timeout=300)
    late = [(status, retry_after) for sent, status, retry_after in refusals if sent > applied]
    if backend_kind == "podman":
        assert late == [], late
    else:
        assert late and {status for status, _ in late} == {503}, sorted(set(late))
        assert all(retry_after is not None and int(retry_after) >= 1 for _, retry_after in late), late
    await h.proxy.reconciler.reconcile_once()
    for path in paths:
        resp = await h.client.get(path)
        assert resp.status == 200, await resp.text()
    assert await believed_stopped_but_running(h, raw) == []


DOCKER = [p for p in ENGINE_PARAMS if p.id == "docker"]


@pytest.mark.parametrize("backend_kind", DOCKER)  # podman frees the name even when it cannot remove the files
async def test_a_name_stuck_in_removal_moves_the_key_to_a_fresh_name(make_proxy, raw, backend_kind):
    """dockerd can leave a container `dead` holding its name (Removal In Progress). Injected from outside:
    a file the daemon cannot unlink in the container's directory, then `docker rm -f`."""
    h = await make_proxy()
    assert (await h.client.get("/k/stuck/api/health")).status == 200
    m = h.manager("stuck")
    old = m.instance.id
    pin = Path(f"/var/lib/docker/containers/{old}/pin")
    pin.touch()
    subprocess.run(["chattr", "+i", str(pin)], check=True)
    try:
        with pytest.raises(Exception, match="unable to remove filesystem"):
            await raw.containers.container(old).delete(force=True)
        assert (await raw.containers.container(old).show())["State"]["Status"] == "dead"
        await h.wait_for(lambda: m.state is State.STOPPED, timeout=5)
        resp = await h.client.get("/k/stuck/api/health")
        assert resp.status == 200, await resp.text()
        fresh = await raw.containers.container(m.instance.id).show()
        assert fresh["Name"].endswith("-g1") and m.instance.id != old
        assert h.backend.names.stuck == {old: fresh["Name"].lstrip("/")[:-len("-g1")]}
        assert await h.backend.cleanup_stuck() == []  # still pinned: stays remembered
    finally:
        subprocess.run(["chattr", "-i", str(pin)], check=True)
    await h.proxy.reconciler.reconcile_once()  # the periodic reconcile removes it once it can
    assert h.backend.names.stuck == {}
    with pytest.raises(Exception, match="No such container"):
        await raw.containers.container(old).show()
    assert (await h.client.get("/k/stuck/api/health")).status == 200


async def test_a_frozen_instance_is_replaced_after_the_configured_timeouts(make_proxy, raw):
    """`docker pause` / `podman pause` from outside: the instance stops answering without dying."""
    h = await make_proxy(svc={"replace_after_timeouts": 2}, config={"server": {"upstream_timeout": "1s"}})
    assert (await h.client.get("/k/frozen/api/health")).status == 200
    m = h.manager("frozen")
    frozen = m.instance.id
    started_at = (await raw.containers.container(frozen).show())["State"]["StartedAt"]
    events: list[object] = []
    h.proxy.bus.subscribe(events.append)
    await raw.containers.container(frozen).pause()
    statuses = [(await h.client.get("/k/frozen/api/health")).status for _ in range(2)]
    assert statuses == [504, 504]  # the threshold: two upstream timeouts in a row
    resp = await h.client.get("/k/frozen/api/health")  # the next one waits for a fresh start
    assert resp.status == 200, await resp.text()
    assert m.start_count == 2
    # The frozen one was thawed and stopped (podman refuses to stop a paused container) at the first try, then
    # started afresh (its stopped container restarted: a new StartedAt), not merely unpaused once a stop gave up.
    assert not m.last_error.startswith("stop failed"), m.last_error
    if m.instance.id == frozen:
        assert (await raw.containers.container(frozen).show())["State"]["StartedAt"] != started_at
    assert [e.reason for e in events if isinstance(e, Transition) and e.new is State.STOPPING] == ["unhealthy"]
    info = await raw.containers.container(m.instance.id).show()
    assert info["State"]["Running"] and not info["State"]["Paused"]
    assert all(s == 200 for s in [(await h.client.get("/k/frozen/api/health")).status for _ in range(5)])


@pytest.mark.parametrize("reason", ["idle", "admin", "shutdown"])
async def test_an_instance_paused_from_outside_stops_at_the_first_try(make_proxy, raw, reason):
    """Every stop path thaws a container someone paused behind the proxy's back (podman refuses to stop one)."""
    from proxy.lifecycle.events import StopReason

    h = await make_proxy(svc={"sleep_after": "1s"} if reason == "idle" else {})
    assert (await h.client.get(f"/k/paused-{reason}/api/health")).status == 200
    m = h.manager(f"paused-{reason}")
    cid = m.instance.id
    await raw.containers.container(cid).pause()
    if reason == "idle":
        await h.wait_for(lambda: m.state is State.STOPPED, timeout=10)
    else:
        await asyncio.wait_for(m.stop(StopReason(reason)), 30)
    assert m.state is State.STOPPED and not m.last_error.startswith("stop failed"), m.last_error
    state = (await raw.containers.container(cid).show())["State"]
    assert not state["Running"] and not state["Paused"], state


async def test_a_stop_that_fails_during_an_outage_is_retried_and_leaves_no_orphan(make_proxy, raw, backend_kind):
    """The key goes idle while the runtime's API is away: the stop fails (a warning per attempt), the
    reconcile after the outage finds the container still running (podman: it outlives its API service)
    and the idle stop runs again; nothing is left running that the proxy believes stopped."""
    h = await make_proxy(svc={"sleep_after": "1s"})
    assert (await h.client.get("/k/idle/api/health")).status == 200
    m = h.manager("idle")
    assert [info["Id"] for info in await running(h, raw)] == [m.instance.id]
    events: list[object] = []
    h.proxy.bus.subscribe(events.append)
    subprocess.run(["bash", str(ROOT / ".ci/daemons.sh"), "down", backend_kind], check=True, timeout=60)
    try:
        await h.wait_for(lambda: m.last_error.startswith("stop failed"), timeout=10)
        await h.wait_for(lambda: m.state is State.STOPPED, timeout=15)  # retries spent: gave up for now
    finally:
        subprocess.run(["bash", str(ROOT / ".ci/daemons.sh"), "up"], check=True, timeout=300)
    await h.proxy.reconciler.reconcile_once()
    await h.wait_for(lambda: m.state is State.STOPPED, timeout=10)  # adopted again, then stopped when idle
    assert await believed_stopped_but_running(h, raw) == []
    adopted = [e for e in events if isinstance(e, Transition) and e.happening is Happening.ADOPTED]
    assert len(adopted) == (1 if backend_kind == "podman" else 0)  # dockerd took its containers with it
    assert (await h.client.get("/k/idle/api/health")).status == 200  # and the key still works
