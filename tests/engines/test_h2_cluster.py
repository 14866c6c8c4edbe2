"""Clustered HTTP/2 (two replicas on a real etcd, marker `etcd`): a stream for a key the other replica owns goes
to the owner, as an HTTP/1.1 request does, with real clients (curl with prior knowledge, grpcio): the owner's
one instance answers whichever replica the client reached, the key starts once, and gRPC trailers cross the hop."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bench.lib.cluster import Etcd, Replicas, etcd_binary, running_keys, starts
from tests.conftest import base_config, ci

pytestmark = pytest.mark.etcd
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def etcd() -> Iterator[Etcd]:
    if etcd_binary() is None:
        message = "etcd not installed; run: bash .ci/tools.sh"
        if ci():
            pytest.fail(message)
        pytest.skip(message)
    with Etcd(1) as cluster:
        yield cluster


def _curl_h2(port: int, path: str, *extra: str) -> tuple[int, str, str]:
    """(status, body, HTTP version) of one `curl --http2-prior-knowledge` request."""
    curl = shutil.which("curl")
    if curl is None:
        if ci():
            pytest.fail("curl is not installed (CI=true)")
        pytest.skip("curl is not installed")
    res = subprocess.run([curl, "-sS", "--http2-prior-knowledge", "-o", "-", "-w", "\n%{http_code} %{http_version}",
                          *extra, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    body, _, tail = res.stdout.rpartition("\n")
    status, version = tail.split()
    return int(status), body, version


async def test_h2c_stream_reaches_the_keys_owner(etcd, tmp_path):
    replicas = Replicas(base_config("stub", "stub"), etcd.endpoints, 2, 2.0, str(tmp_path))
    try:
        for i in range(4):
            key, seen = f"h2k{i}", set()
            for port in replicas.ports * 2:  # each replica, cold then warm: one serves, the other forwards
                status, body, version = await asyncio.to_thread(_curl_h2, port, f"/k/{key}/api/container-info",
                                                                "-H", "X-Request-Id: rid-" + key)
                assert (status, version) == (200, "2"), (key, port, body)
                seen.add(json.loads(body)["instance_id"])
            assert len(seen) == 1 and seen.pop().startswith(f"stub-{key}-"), (key, seen)
            assert [key in running_keys(port) for port in replicas.ports].count(True) == 1
        assert starts(replicas.ports) == 4  # one start per key, though both replicas were asked
        other = replicas.ports[1 - replicas.owner_of("h2k0")]  # the replica that does not own h2k0
        data = os.urandom(700_000)  # past many flow-control windows, both hops
        (tmp_path / "body").write_bytes(data)
        status, body, _ = await asyncio.to_thread(_curl_h2, other, "/k/h2k0/debug/echo", "--data-binary",
                                                  f"@{tmp_path / 'body'}")
        assert (status, json.loads(body)) == (200, {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        status, body, _ = await asyncio.to_thread(_curl_h2, other, "/k/h2k0/debug/headers", "-H",
                                                  "X-Forwarded-For: 10.0.0.1")
        seen = {k.lower(): v for k, v in json.loads(body)["headers"].items()}
        assert seen["x-forwarded-for"] == "10.0.0.1, 127.0.0.1, 127.0.0.1"  # the client's peer, then the replica
        assert "x-lazy-proxy-forwarded" not in seen and seen["x-forwarded-host"] == f"127.0.0.1:{other}"
        forwarded = [line for port in replicas.ports for line in (tmp_path / f"r{port}.log").read_text().splitlines()
                     if "rid-h2k0" in line and "/k/h2k0/" in line]
        assert len(forwarded) >= 6, forwarded  # an access line on both replicas for the forwarded streams
    finally:
        replicas.stop()


def _grpc_call(port: int, tenant: str) -> tuple[grpc.StatusCode, bytes | None, dict[str, str]]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            answer, info = channel.unary_unary("/test.Echo/Echo").with_call(
                b"hi", metadata=[("x-tenant", tenant)], timeout=60)
        except grpc.RpcError as exc:
            return exc.code(), None, dict(exc.trailing_metadata() or ())
        return info.code(), answer, dict(info.trailing_metadata() or ())


async def test_grpc_trailers_cross_the_hop(etcd, tmp_path):
    base = base_config("process", "process")
    base["backend"] = {"type": "process"}
    base["containers"] = {"svc": {"command": [sys.executable, "-m", "bench.lib.grpc_upstream"], "protocol": "grpc",
                                  "readiness": "tcp", "env": {"PYTHONPATH": str(REPO)}, "start_timeout": "30s"}}
    base["routes"] = [{"path": "/test.Echo/{method}", "container": "svc", "key": "{header:x-tenant}"}]
    replicas = Replicas(base, etcd.endpoints, 2, 2.0, str(tmp_path))
    try:
        for port in replicas.ports * 2:
            code, answer, trailers = await asyncio.to_thread(_grpc_call, port, "g1")
            assert (code, answer) == (grpc.StatusCode.OK, b"echo:hi"), (port, code, trailers)
            assert trailers.get("x-seen-tenant") == "g1", trailers  # the instance's trailing metadata
        assert [("g1" in running_keys(port)) for port in replicas.ports].count(True) == 1
        assert starts(replicas.ports) == 1
    finally:
        replicas.stop()


async def test_h2c_stream_waits_out_a_killed_owner(etcd, tmp_path):
    """The owner dies (SIGKILL: no handover): a stream through the survivor waits for the lease to expire, then the
    survivor owns the key and answers, as an HTTP/1.1 request would."""
    replicas = Replicas(base_config("stub", "stub"), etcd.endpoints, 2, 2.0, str(tmp_path))
    try:
        key = next(f"dead{i}" for i in range(50) if _owner_after_use(replicas, f"dead{i}") == 0)
        survivor = replicas.ports[1]
        status, body, _ = await asyncio.to_thread(_curl_h2, survivor, f"/k/{key}/api/container-info")
        assert status == 200  # forwarded to replica 0 over the pooled h2c hop
        replicas.kill(0)
        status, body, _ = await asyncio.to_thread(_curl_h2, survivor, f"/k/{key}/api/container-info")
        assert status == 200, body
        assert key in running_keys(survivor)
    finally:
        replicas.stop()


def _owner_after_use(replicas: Replicas, key: str) -> int:
    """The index of the replica that owns `key` once a request (over h2, through replica 0) has started it."""
    status, _, _ = _curl_h2(replicas.ports[0], f"/k/{key}/api/container-info")
    assert status == 200
    return replicas.owner_of(key)
