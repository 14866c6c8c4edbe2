"""HTTP/2 from clients (h2c with prior knowledge, TLS with ALPN h2) and h2c/gRPC to instances, with real clients:
curl, grpcio, h2load. Each stream has the HTTP/1.1 request's lifecycle (cold start held until ready, refusals)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.conftest import ci

REPO = Path(__file__).resolve().parent.parent
GRPC_SERVER = [sys.executable, "-m", "tests.grpc_test_server"]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if ci():
            pytest.fail(f"{name} is not installed (CI=true)")
        pytest.skip(f"{name} is not installed")
    return path


async def _run(*argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, list(argv), capture_output=True, text=True, timeout=timeout)


async def _curl(port: int, path: str, *extra: str) -> tuple[int, dict[str, str], str, str]:
    """(status, headers, body, http version) of one curl request with HTTP/2 prior knowledge."""
    res = await _run(_tool("curl"), "-sS", "--http2-prior-knowledge", "-D", "-",
                     "-w", "%{stderr}%{http_version}", *extra, f"http://127.0.0.1:{port}{path}")
    assert res.returncode == 0, res.stderr
    head, _, body = res.stdout.partition("\n\n")  # (text mode: CRLF read as LF)
    version = res.stderr
    lines = head.split("\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body, version


@pytest.mark.parametrize("backend_kind", ["stub"], indirect=True)
async def test_h2c_prior_knowledge_cold_then_warm(make_proxy: Any) -> None:
    h = await make_proxy()
    port = h.client.server.port
    status, headers, body, version = await _curl(port, "/k/h2cold/v2/health/ready")
    assert (status, version) == (200, "2")
    assert headers.get("x-proxy-cold-start") == "1"  # held until ready, then relayed
    assert h.manager("h2cold").in_flight == 0
    status, headers, body, version = await _curl(port, "/k/h2cold/v2/health/ready")
    assert (status, version) == (200, "2") and "x-proxy-cold-start" not in headers
    # HTTP/1.1 on the same listener is unchanged
    res = await h.client.get("/k/h2cold/v2/health/ready")
    assert res.status == 200


@pytest.mark.parametrize("backend_kind", ["stub"], indirect=True)
async def test_h2c_refusals_are_json(make_proxy: Any, tmp_path: Path) -> None:
    h = await make_proxy()
    port = h.client.server.port
    status, _, body, version = await _curl(port, "/k/a%2Fb/x")
    assert status == 400 and json.loads(body)["error"] in ("invalid key", "invalid path")
    status, _, body, _ = await _curl(port, "/nowhere")
    assert status == 404 and json.loads(body)["status"] == 404
    big = tmp_path / "big"
    big.write_bytes(b"x" * 2 * 2**20)
    status, _, body, _ = await _curl(port, "/k/big/v2/health/ready", "--data-binary", f"@{big}")
    assert status == 413 and json.loads(body)["error"] == "request body too large"
