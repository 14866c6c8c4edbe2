"""Clustered (two replicas on a real etcd, marker `etcd`): a key made from the Host, a header or a cookie is
computed before a request is forwarded to the key's owner, and the owner computes the same one from the
forwarded request (same Host, headers, cookies), so each key still starts once and one instance answers."""

from __future__ import annotations

import os
from collections.abc import Iterator

import aiohttp
import pytest

from bench.lib.cluster import Etcd, Replicas, etcd_binary, running_keys, starts
from tests.conftest import base_config

pytestmark = pytest.mark.etcd


@pytest.fixture
def etcd() -> Iterator[Etcd]:
    if etcd_binary() is None:
        message = "etcd not installed; run: bash .ci/tools.sh"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    with Etcd(1) as cluster:
        yield cluster


async def test_host_header_and_cookie_keys_reach_their_owner(etcd, tmp_path):
    base = base_config("stub", "stub")
    base["routes"] = [
        {"path": "/h/{tail:.*}", "host": "{id}.apps.example.com", "container": "svc", "key": "{id}",
         "upstream_path": "/{tail}"},
        {"path": "/t/{tail:.*}", "container": "svc", "key": "t-{header:X-Tenant}", "upstream_path": "/{tail}"},
        {"path": "/c/{tail:.*}", "container": "svc", "key": "{cookie:session}", "upstream_path": "/{tail}"},
    ]
    replicas = Replicas(base, etcd.endpoints, 2, 2.0, str(tmp_path))
    cases = [("/h/", {"Host": f"host{i}.apps.example.com"}, f"host{i}") for i in range(4)]
    cases += [("/t/", {"X-Tenant": f"ten{i}"}, f"t-ten{i}") for i in range(4)]
    cases += [("/c/", {"Cookie": f"theme=x; session=ses{i}"}, f"ses{i}") for i in range(4)]
    try:
        async with aiohttp.ClientSession() as session:
            for path, headers, key in cases:
                seen = set()
                for port in replicas.ports * 2:  # each replica, cold then warm: one serves, the other forwards
                    async with session.get(f"http://127.0.0.1:{port}{path}api/container-info",
                                           headers=headers) as resp:
                        assert resp.status == 200, (key, port, await resp.text())
                        seen.add((await resp.json())["instance_id"])
                assert len(seen) == 1 and seen.pop().startswith(f"stub-{key}-"), (key, seen)
                assert [key in running_keys(port) for port in replicas.ports].count(True) == 1
            assert starts(replicas.ports) == len(cases)
            async with session.get(f"http://127.0.0.1:{replicas.ports[0]}/t/api/container-info") as resp:
                assert resp.status == 400 and (await resp.json())["reason"] == "missing header X-Tenant for the key"
    finally:
        replicas.stop()
