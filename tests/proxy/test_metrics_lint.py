"""/metrics passes Prometheus' own linter after real traffic (base units, naming, no duplicate series)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import ci


@pytest.fixture
def backend_kind() -> str:
    return "stub"


async def test_promtool_check_metrics_passes_on_a_live_proxy(make_proxy):
    promtool = shutil.which("promtool")
    if promtool is None:
        if ci():
            pytest.fail("promtool is missing under CI=true (.ci/run installs Debian's prometheus)")
        pytest.skip("promtool not installed")
    h = await make_proxy()
    for path in ("/api/health", "/api/health", "/k/a/api/health", "/lb/api/health", "/warm/x", "/nope"):
        await h.client.get(path)  # cold, fast, per-key, lb, warm-only 404, unmatched
    text = await (await h.client.get("/metrics")).text()
    assert "proxy_fast_path_requests_total" in text and "_created" not in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
