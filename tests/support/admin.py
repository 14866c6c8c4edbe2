"""Shared by the admin API tests (the `make_admin` fixture is in conftest): a proxy with its admin listener,
and `python -m proxy ctl` as a real subprocess."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp.test_utils import TestClient

if TYPE_CHECKING:
    from tests.conftest import Harness

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Admin:
    h: Harness  # the proxy (its client is on the proxied port)
    client: TestClient  # on the admin listener
    url: str

    async def ctl(self, *args: str, token: str | None = TOKEN, timeout: float = 90) -> tuple[int, str, str]:
        """Run `python -m proxy ctl --admin URL ARGS...`; (exit code, stdout, stderr)."""
        env = {k: v for k, v in os.environ.items() if k != "LAZY_PROXY_ADMIN_TOKEN"}
        if token is not None:
            env["LAZY_PROXY_ADMIN_TOKEN"] = token
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "ctl", "--admin", self.url, *args, cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()
