"""Instances on a user network (`backend.<kind>.network`), on real dockerd and podman.

The mode a proxy running in a container needs: no host port, the instance dialled at its IP on the shared
network. The in-process proxy of these tests stands in for it: a Linux host routes to its bridge networks.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any, AsyncIterator

import pytest

from backends import create_backend
from backends._engine import spec_hash
from backends.base import BackendError
from proxy.config.schema import parse_config
from proxy.lifecycle.events import State, StopReason
from tests.support import engines
from tests.conftest import ENGINE_PARAMS, base_config


@pytest.fixture(params=ENGINE_PARAMS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def network(raw: Any) -> AsyncIterator[str]:
    """A fresh bridge network, removed afterwards with anything a failed test left on it."""
    name = f"lpnet-{uuid.uuid4().hex[:8]}"
    net = await raw.networks.create({"Name": name, "Driver": "bridge"})
    yield name
    for cid in (await net.show()).get("Containers") or {}:
        await raw.containers.container(cid).delete(force=True)
    await net.delete()


def backend_section(kind: str, proxy_id: str, network: str | None) -> dict[str, Any]:
    return {"type": kind, "proxy_id": proxy_id, kind: {"socket": engines.socket_for(kind), "network": network}}


def backend_from_config(kind: str, proxy_id: str, network: str | None) -> Any:
    """The backend as `python -m proxy` builds it: from the config's `backend.<kind>` section."""
    raw = base_config(kind, engines.DEFAULT_TAG) | {"backend": backend_section(kind, proxy_id, network)}
    config = parse_config(raw)
    return create_backend(config.backend.type, proxy_id=config.backend.proxy_id, **config.backend.options)


async def test_an_instance_on_a_user_network_is_served_at_its_ip_there_restarted_and_adopted(
        network, make_proxy, raw, backend_kind):
    proxy_id = f"t{uuid.uuid4().hex[:10]}"
    section = {"backend": backend_section(backend_kind, proxy_id, network)}
    h = await make_proxy(config=section, backend=backend_from_config(backend_kind, proxy_id, network))
    assert h.backend.address.network == network
    resp = await h.client.get("/k/net/api/health")
    assert resp.status == 200, await resp.text()
    m = h.manager("net")
    first = m.instance
    info = await raw.containers.container(first.id).show()
    subnet = ipaddress.ip_network((await (await raw.networks.get(network)).show())["IPAM"]["Config"][0]["Subnet"])
    ip = info["NetworkSettings"]["Networks"][network]["IPAddress"]
    assert (first.host, first.port) == (ip, 8080) and ipaddress.ip_address(ip) in subnet
    assert not any(info["NetworkSettings"]["Ports"].values()), info["NetworkSettings"]["Ports"]  # nothing published
    assert not any((info["HostConfig"].get("PortBindings") or {}).values())  # podman lists the port, unbound

    # A stopped container of the same spec is restarted (not recreated), and found on the network again.
    await m.stop(StopReason.ADMIN)
    assert m.state is State.STOPPED
    resp = await h.client.get("/k/net/api/health")
    assert resp.status == 200, await resp.text()
    again = m.instance
    assert again.id == first.id and m.start_count == 2
    info = await raw.containers.container(again.id).show()
    assert (again.host, again.port) == (info["NetworkSettings"]["Networks"][network]["IPAddress"], 8080)

    # A second proxy with the same id adopts the running instance at its network address: no start.
    h2 = await make_proxy(config=section, backend=backend_from_config(backend_kind, proxy_id, network))
    adopted = h2.manager("net")
    assert adopted.state is State.RUNNING and adopted.start_count == 0
    assert (adopted.instance.id, adopted.instance.host, adopted.instance.port) == (again.id, again.host, 8080)
    resp = await h2.client.get("/k/net/api/health")
    assert resp.status == 200 and "X-Proxy-Cold-Start" not in resp.headers


async def test_switching_a_key_to_network_mode_recreates_its_stopped_container(network, raw, backend_kind):
    """The spec hash covers the mode: a container stopped while published is not restarted unreachable."""
    proxy_id = f"t{uuid.uuid4().hex[:10]}"
    spec = parse_config(base_config(backend_kind, engines.DEFAULT_TAG)).containers["svc"].spec
    published = backend_from_config(backend_kind, proxy_id, None)
    on_net = backend_from_config(backend_kind, proxy_id, network)
    try:
        assert published.spec_hash(spec) == spec_hash(spec) != on_net.spec_hash(spec)  # old containers keep theirs
        before = await published.start("switch", spec)
        assert before.host == "127.0.0.1"
        await published.stop(before)
        after = await on_net.start("switch", spec)
        info = await raw.containers.container(after.id).show()
        assert after.id != before.id and after.host == info["NetworkSettings"]["Networks"][network]["IPAddress"]
        assert await raw.containers.list(all=True, filters={"label": [f"proxy.instance={proxy_id}"]}) != []
    finally:
        await engines.remove_all(published)
        await published.close()
        await on_net.close()


async def test_a_missing_network_is_named_in_the_error(raw, backend_kind):
    proxy_id = f"t{uuid.uuid4().hex[:10]}"
    spec = parse_config(base_config(backend_kind, engines.DEFAULT_TAG)).containers["svc"].spec
    backend = backend_from_config(backend_kind, proxy_id, "lpnet-nowhere")
    try:
        with pytest.raises(BackendError, match="network 'lpnet-nowhere' does not exist"):
            await backend.start("lost", spec)
        assert await raw.containers.list(all=True, filters={"label": [f"proxy.instance={proxy_id}"]}) == []
    finally:
        await backend.close()
