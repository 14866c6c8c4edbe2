"""Shared by the reload and rollout tests: a proxy started from a config *file* (what a reload reads again),
its admin listener, and steady traffic over keys that records every answer."""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import aiohttp
import yaml
from aiohttp.test_utils import TestClient, TestServer

from backends.base import Backend
from proxy.admin.api import create_admin_app
from proxy.app import PROXY, Proxy, create_app
from proxy.config.schema import load_config
from tests.support.admin import AUTH, TOKEN
from tests.conftest import SEED_ON_PROXY_PORT, proxy_server


def file_config(image: str, *, title: str | None = "one", rollout: dict[str, Any] | None = None,
                start_timeout: str = "40s", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One class `web` (the model service: its container-info says `title`) and a per-key route `/k/{id}/...`."""
    klass: dict[str, Any] = {
        "image": image, "port": 8080,
        "env": {"MODEL_SERVICE_DEBUG_ROUTES": "1", **({"API_TITLE": title} if title is not None else {})},
        "readiness": {"path": "/v2/health/ready", "interval": "20ms", "timeout": "1s"},
        "sleep_after": "5m", "start_timeout": start_timeout, "max_instances": 40, "stop_timeout": "2s",
        "rollout": rollout or {},
    }
    return {"server": {"upstream_timeout": "20s", "connect_timeout": "2s"},
            "admin": {**SEED_ON_PROXY_PORT, "token": TOKEN},
            "metrics": {"key_label_limit": 1000},
            "containers": {"web": {**klass, **(extra or {})}},
            "routes": [{"path": "/k/{id}/{tail:.*}", "container": "web", "key": "{id}", "upstream_path": "/{tail}"}]}


@dataclass
class Deployed:
    path: Path
    raw: dict[str, Any]
    proxy: Proxy
    client: TestClient  # the proxied port
    admin: TestClient

    def write(self, change: Callable[[dict[str, Any]], None] | None = None, text: str | None = None) -> None:
        """Change the file (each change over the ones before), or write `text` as it is."""
        raw = copy.deepcopy(self.raw)
        if change is not None:
            change(raw)
            self.raw = raw
        self.path.write_text(text if text is not None else yaml.safe_dump(raw))

    async def reload(self) -> tuple[int, dict[str, Any]]:
        response = await self.admin.post("/admin/config/reload", headers=AUTH)
        return response.status, await response.json()


async def deploy(aiohttp_client: Any, tmp_path: Path, raw: dict[str, Any], backend: Backend) -> Deployed:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    app = create_app(load_config(path), backend)
    app[PROXY].config_path = path
    client = await aiohttp_client(proxy_server(app), connector=aiohttp.TCPConnector(limit=0))
    admin = await aiohttp_client(TestServer(create_admin_app(app[PROXY])))
    return Deployed(path, raw, app[PROXY], client, admin)


@dataclass
class Traffic:
    """Workers asking each key's container-info in a loop: every answer's status and title, failures kept in full."""

    client: TestClient
    keys: list[str]
    seen: dict[str, list[str]] = field(default_factory=dict)  # key -> titles in order
    failures: list[str] = field(default_factory=list)
    count: int = 0
    _stop: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _worker(self, key: str) -> None:
        while not self._stop:
            try:
                async with self.client.get(f"/k/{key}/api/container-info") as response:
                    body = await response.read()
                    if response.status != 200:
                        self.failures.append(f"{key}: {response.status} {body[:200]!r}")
                    else:
                        self.seen.setdefault(key, []).append(json.loads(body)["api_title"])
            except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                self.failures.append(f"{key}: {type(exc).__name__}: {exc}")
            self.count += 1
            await asyncio.sleep(0.01)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(key)) for key in self.keys]

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)

    def latest(self) -> dict[str, str | None]:
        return {key: (self.seen.get(key) or [None])[-1] for key in self.keys}

