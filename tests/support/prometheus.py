"""Helpers for tests that run Debian's real Prometheus and promtool against the proxy and deploy/.

- `binary(name)`: the path of `prometheus`/`promtool`; skips when missing, fails under CI=true.
- `Prometheus`: a server on 127.0.0.1 with a generated config (1 s scrapes), its TSDB in a temp dir,
  queried through the HTTP API without blocking the event loop (the proxy under test shares it).
- `dashboard_targets()`: every PromQL expression of deploy/grafana-dashboard.json, and `substitute()`
  to fill Grafana's variables the way a dashboard over a given window would.
- `create_app`: a stub image (`stub:tests.support.prometheus:create_app`) whose readiness answers
  after a delay taken in turn from `START_DELAYS` (or a fixed `READY_DELAY_MS`), so starts take a
  known spread of durations.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.conftest import ci

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"

# Start delays (ms), 41 log-spaced from 2 to 300: many fast starts, a long tail, as real start times look.
# An odd count puts the median inside one delay's cluster rather than in the gap between two.
START_DELAYS = tuple(round(2 * (300 / 2) ** (i / 40), 2) for i in range(41))
_starts = itertools.count()


def create_app(env: Mapping[str, str]) -> web.Application:
    """A tiny instance: readiness (`/ready`) answers once its start delay has passed; any other path, 200."""
    fixed = env.get("READY_DELAY_MS")
    delay = (float(fixed) if fixed is not None else START_DELAYS[next(_starts) % len(START_DELAYS)]) / 1000
    ready_at = time.monotonic() + delay

    async def ready(request: web.Request) -> web.Response:
        remaining = ready_at - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)
        return web.Response(text="ready")

    async def anything(request: web.Request) -> web.Response:
        return web.Response(text=env.get("INSTANCE_ID", ""))

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


def binary(name: str) -> str:
    """`prometheus` or `promtool` from PATH (Debian's `prometheus` package ships both)."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if path is None:
        if ci():
            pytest.fail(f"{name} is missing under CI=true (.ci/run installs Debian's prometheus)")
        pytest.skip(f"{name} not installed (apt-get install prometheus)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusError(AssertionError):
    pass


class Prometheus:
    """A real Prometheus scraping `target` every second; `await start()`, then query, then `stop()`."""

    def __init__(self, workdir: Path, target: str, *, rule_files: tuple[Path, ...] = (),
                 scrape_interval: str = "1s") -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": "lazy-proxy", "scrape_interval": scrape_interval,
                                "scrape_timeout": scrape_interval, "metrics_path": "/metrics",
                                "static_configs": [{"targets": [target]}]}],
        }))
        self.log = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.session: aiohttp.ClientSession | None = None

    async def start(self, timeout: float = 20.0) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [binary("prometheus"), f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                async with self.session.get(f"{self.url}/-/ready") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise PrometheusError(f"prometheus not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, 10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait, 10)

    async def api(self, path: str, **params: str) -> Any:
        assert self.session is not None
        async with self.session.get(f"{self.url}/api/v1/{path}", params=params) as resp:
            body = await resp.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    async def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query; a list of {"metric": labels, "value": float} (scalars as one unlabelled row)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = await self.api("query", **params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": float(data["result"][1])}]
        return [{"metric": row["metric"], "value": float(row["value"][1])} for row in data["result"]]

    async def value(self, expr: str, at: float | None = None, **labels: str) -> float:
        rows = [r for r in await self.query(expr, at) if all(r["metric"].get(k) == v for k, v in labels.items())]
        if len(rows) != 1:
            raise PrometheusError(f"{expr} {labels}: expected one series, got {rows}")
        return float(rows[0]["value"])

    async def last_scrape(self, metric: str) -> float:
        """The timestamp (s) of the newest sample of `metric`: evaluating there needs no extrapolation."""
        rows = await self.query(f"max(timestamp({metric}))")
        return rows[0]["value"] if rows else 0.0

    async def wait_for_scrape_after(self, metric: str, moment: float, timeout: float = 15.0) -> float:
        """Wait until `metric` has a sample scraped after wall-clock `moment`; that sample's timestamp."""
        deadline = time.monotonic() + timeout
        while True:
            last = await self.last_scrape(metric)
            if last > moment:
                return last
            if time.monotonic() > deadline:
                raise PrometheusError(f"no scrape of {metric} after {moment:.3f} (last {last:.3f}):\n"
                                      f"{self.log.read_text()[-3000:]}")
            await asyncio.sleep(0.2)


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) for every query of every panel, in the dashboard's order."""
    out = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target.get("refId", "A"), target["expr"]))
    return out


def substitute(expr: str, window_seconds: float, variables: Mapping[str, str] | None = None) -> str:
    """Grafana's variables for a dashboard whose time range is the whole test (`window_seconds`).

    `$__range` and `$__rate_interval` both become the window, so rates and quantiles cover every
    sample the test produced; template variables (`$container_class`) become `.*` (Grafana's "All")
    unless given.
    """
    window = f"{int(window_seconds) + 1}s"
    expr = expr.replace("$__rate_interval", window).replace("${__rate_interval}", window)
    expr = expr.replace("$__range", window).replace("${__range}", window).replace("$__interval", window)
    values = dict(variables or {})

    def fill(match: re.Match[str]) -> str:
        return values.get(match.group(1) or match.group(2), ".*")

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", fill, expr)
