"""deploy/compose.yaml: the proxy as a container next to Prometheus, its instances on the compose network.

The file is checked without a daemon (its proxy config parses and names the compose network, the socket and
Prometheus' files are where the config says); with docker-compose (Debian's package, .ci/tools.sh) it is
validated and the proxy service is run for real from the proxy's own image (`backends.image --app proxy`): a
request to its published port starts an instance on the network, with no host port. Prometheus' image is not
run here (nothing is pulled in CI).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from backends.base import LABEL_PROXY_ID
from backends.image.build import DEFAULT_TAG, ensure_image
from backends.image.rootfs import PROXY
from proxy.config.schema import Config, parse_config
from tests.support import engines
from tests.conftest import ci

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def proxy_config() -> Config:
    """The config the proxy service's command names, read from the file mounted there."""
    proxy = compose()["services"]["proxy"]
    inside = proxy["command"][proxy["command"].index("--config") + 1]
    [source] = [v.split(":")[0] for v in proxy["volumes"] if v.split(":")[1] == inside]
    return parse_config(yaml.safe_load((COMPOSE.parent / source).read_text()))


def test_the_proxy_service_puts_its_instances_on_the_compose_network_through_the_mounted_socket():
    doc, config = compose(), proxy_config()
    proxy = doc["services"]["proxy"]
    assert config.backend.type == "docker"
    assert config.backend.options["network"] == doc["networks"]["lazy-proxy"]["name"]
    assert "lazy-proxy" in proxy["networks"]
    socket_path = config.backend.options["socket"].removeprefix("unix://")
    assert any(volume.split(":")[1] == socket_path for volume in proxy["volumes"])
    assert proxy["image"] == PROXY.tag  # the images backends.image builds
    assert all(cls.spec.image == DEFAULT_TAG for cls in config.containers.values())


def test_prometheus_scrapes_the_proxy_in_its_network_namespace_with_the_shipped_files():
    doc, config = compose(), proxy_config()
    prometheus = doc["services"]["prometheus"]
    assert prometheus["network_mode"] == "service:proxy"
    for volume in prometheus["volumes"]:
        assert (COMPOSE.parent / volume.split(":")[0]).is_file(), volume
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["scrape_configs"][0]
    command = doc["services"]["proxy"]["command"]
    port = command[command.index("--port") + 1]  # what the proxy listens on (overrides server.port)
    assert scrape["static_configs"][0]["targets"] == [f"127.0.0.1:{port}"]
    assert any(published.endswith(f":{port}") for published in doc["services"]["proxy"]["ports"])
    assert "metrics" in config.admin.on_proxy_port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True, timeout=60).stdout


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        message = "docker-compose is missing (apt-get install docker-compose; .ci/tools.sh installs it)"
        if ci():
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.mark.docker
@pytest.mark.slow
async def test_the_proxy_runs_as_a_container_and_serves_an_instance_on_the_compose_network():
    binary = docker_compose()
    await engines.ensure_image("docker")  # the instances'
    await ensure_image("docker", socket=engines.socket_for("docker"), app=PROXY)
    port = free_port()
    env = {**os.environ, "LAZY_PROXY_PORT": str(port), "PROMETHEUS_PORT": str(free_port())}
    project = f"lpt{uuid.uuid4().hex[:8]}"
    label = f"{LABEL_PROXY_ID}={proxy_config().backend.proxy_id}"

    def run(*args: str) -> str:
        done = subprocess.run([binary, "-f", str(COMPOSE), "-p", project, *args], env=env, capture_output=True,
                              text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    run("config", "--quiet")
    try:
        run("up", "-d", "proxy")
        async with aiohttp.ClientSession() as session:
            resp = None
            for _ in range(100):  # the proxy container needs a moment to listen
                try:
                    resp = await session.get(f"http://127.0.0.1:{port}/api/v2/health/ready",
                                             timeout=aiohttp.ClientTimeout(total=60))
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)
            assert resp is not None and resp.status == 200, resp and await resp.text()
            assert resp.headers.get("X-Proxy-Cold-Start") == "1"
        listed = docker("ps", "-q", "--filter", f"label={label}").split()
        assert len(listed) == 1
        info = json.loads(docker("inspect", listed[0]))[0]
        assert list(info["NetworkSettings"]["Networks"]) == ["lazy-proxy"]
        assert not any(info["NetworkSettings"]["Ports"].values())  # nothing published on the host
    finally:
        run("down", "--timeout", "40")
    # The proxy's shutdown stopped and (reuse_stopped: false) removed its instance, so the network went too.
    assert docker("ps", "-aq", "--filter", f"label={label}").split() == []
    assert "lazy-proxy" not in docker("network", "ls", "--format", "{{.Name}}").split()
