"""The compose class options on real daemons (docker, podman): a class with a named volume, a read-only bind mount,
`user`, `labels`, `env_file` and an extra port, loaded from a config file as `python -m proxy` loads it, started,
then looked at through the daemon's API (Mounts, User, Labels, Env, ports) and from inside (exec).

Also: a changed option recreates a stopped container (the spec hash), and `proxy.owner` lets a proxy see that
another live proxy process on this host created containers of its proxy id.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import pytest
import yaml

from backends.base import LABEL_OWNER, ContainerSpec, Instance
from backends._names import service_name
from proxy.config.schema import load_config
from tests.support import engines

ROOT = Path(__file__).resolve().parents[2]
ENGINES = pytest.mark.parametrize("kind", ["docker", "podman"])


async def run(backend: Any, instance: Instance, *argv: str) -> tuple[int | None, str]:
    chunks: list[bytes] = []

    async def output(_stream: str, data: bytes) -> None:
        chunks.append(data)

    code = await backend.exec(instance, list(argv), output)
    return code, b"".join(chunks).decode()


def write_config(tmp_path: Path, image: str, volume: str, **extra: Any) -> Path:
    (tmp_path / "site").mkdir(exist_ok=True)
    (tmp_path / "site" / "index.html").write_text("hello from the host\n")
    (tmp_path / "app.env").write_text("# app settings\nexport FROM_FILE=file-value\nSHARED='from file'\n")
    config = {"backend": {"type": "docker"}, "containers": {"app": {
        "image": image, "port": 8080, "instance_type": {"memory": "256MiB", "cpus": 1.0},
        "volumes": [f"{volume}:/data", "./site:/srv/site:ro"], "user": "1000:1000", "ports": [9090],
        "labels": {"com.example.team": "web"}, "env_file": "app.env", "env": {"SHARED": "from env"},
        **extra}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
async def setup(kind: str, tmp_path: Path) -> Any:
    image = await engines.ensure_image(kind)
    volume = f"lpcfg-{uuid.uuid4().hex[:8]}"
    backend = engines.make_backend(kind, proxy_id=f"tcfg{uuid.uuid4().hex[:8]}")
    docker = aiodocker.Docker(url=engines.socket_for(kind))
    try:
        yield backend, docker, image, volume
    finally:
        await engines.remove_all(backend)
        await backend.close()
        for _ in range(40):  # a swarm task's container may still hold it a moment after its service is gone
            try:
                await docker._query_json(f"volumes/{volume}", "DELETE")
                break
            except aiodocker.DockerError as e:
                if e.status == 404:
                    break
                await asyncio.sleep(0.25)
        await docker.close()


@ENGINES
async def test_volumes_user_labels_env_file_ports_reach_the_container(setup: Any, tmp_path: Path) -> None:
    backend, docker, image, volume = setup
    spec = load_config(write_config(tmp_path, image, volume)).containers["app"].spec
    instance = await backend.start("k1", spec.with_overrides(env={"PER_START": "yes"}))
    info = await docker.containers.container(instance.id).show()
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/data"]["Type"] == "volume" and mounts["/data"]["Name"] == volume and mounts["/data"]["RW"]
    assert mounts["/srv/site"]["Type"] == "bind" and mounts["/srv/site"]["Source"] == str(tmp_path / "site")
    assert mounts["/srv/site"]["RW"] is False
    assert info["Config"]["User"] == "1000:1000"
    labels = info["Config"]["Labels"]
    assert labels["com.example.team"] == "web" and labels[LABEL_OWNER].endswith(f":{os.getpid()}")
    env = set(info["Config"]["Env"])
    assert {"FROM_FILE=file-value", "SHARED=from env", "PER_START=yes"} <= env
    assert "9090/tcp" in info["Config"]["ExposedPorts"]
    published = info["NetworkSettings"]["Ports"]["9090/tcp"]
    assert published and published[0]["HostIp"] == "127.0.0.1" and int(published[0]["HostPort"]) > 0
    code, out = await run(backend, instance, "python3", "-c",
                          "import os; print(os.getuid(), os.getgid(), open('/srv/site/index.html').read().strip())")
    assert code == 0 and out.strip() == "1000 1000 hello from the host"
    code, out = await run(backend, instance, "python3", "-c", "open('/srv/site/x', 'w')")
    assert code != 0 and "Read-only file system" in out


@ENGINES
async def test_a_changed_option_recreates_the_stopped_container(setup: Any, tmp_path: Path) -> None:
    backend, docker, image, volume = setup
    spec = load_config(write_config(tmp_path, image, volume)).containers["app"].spec
    first = await backend.start("k1", spec)
    await backend.stop(first)
    again = await backend.start("k1", spec)
    assert again.id == first.id  # the same spec: restarted
    await backend.stop(again)
    changed = load_config(write_config(tmp_path, image, volume, labels={"com.example.team": "api"}))
    third = await backend.start("k1", changed.containers["app"].spec)
    assert third.id != first.id
    info = await docker.containers.container(third.id).show()
    assert info["Config"]["Labels"]["com.example.team"] == "api"


CREATE = """
import asyncio, sys
from backends.base import ContainerSpec
from tests.support import engines
async def main():
    backend = engines.make_backend(sys.argv[1], proxy_id=sys.argv[2])
    await backend.start("k1", ContainerSpec(name="app", image=sys.argv[3]))
    await backend.close()
    print("started", flush=True)
    sys.stdin.read()  # alive until the test closes stdin
asyncio.run(main())
"""


@ENGINES
async def test_containers_another_live_proxy_created_are_named(setup: Any, kind: str) -> None:
    backend, docker, image, _volume = setup
    assert await backend.claimed_elsewhere() == []
    other = subprocess.Popen([sys.executable, "-c", CREATE, kind, backend.proxy_id, image], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = await asyncio.to_thread(other.stdout.readline)  # type: ignore[union-attr]
        assert line.strip() == "started"
        assert await backend.claimed_elsewhere() == [backend.name_for("k1", ContainerSpec(name="app", image=image))]
    finally:
        other.communicate(input="", timeout=60)
    assert await backend.claimed_elsewhere() == []  # that process is gone: nobody else holds them
    listed = await backend.list_instances()
    assert [i.key for i in listed] == ["k1"]
    info = json.dumps(await docker.containers.container(listed[0].id).show())
    assert LABEL_OWNER in info


@pytest.mark.swarm
@pytest.mark.parametrize("kind", ["swarm"])
async def test_swarm_service_gets_mounts_user_labels_and_the_extra_port(setup: Any, tmp_path: Path) -> None:
    backend, docker, image, volume = setup
    spec = load_config(write_config(tmp_path, image, volume)).containers["app"].spec
    instance = await backend.start("k1", spec.with_overrides(env={"PER_START": "yes"}))
    service = dict(await docker.services.inspect(service_name(backend.proxy_id, "app", "k1")))
    container = service["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert container["User"] == "1000:1000" and container["Labels"]["com.example.team"] == "web"
    assert service["Spec"]["Labels"][LABEL_OWNER].endswith(f":{os.getpid()}")
    assert {"FROM_FILE=file-value", "SHARED=from env", "PER_START=yes"} <= set(container["Env"])
    mounts = {m["Target"]: m for m in container["Mounts"]}
    assert mounts["/data"]["Type"] == "volume" and mounts["/data"]["Source"] == volume
    assert mounts["/srv/site"]["Type"] == "bind" and mounts["/srv/site"]["ReadOnly"] is True
    ports = {(p["TargetPort"], p["Protocol"]) for p in service["Spec"]["EndpointSpec"]["Ports"]}
    assert ports == {(8080, "tcp"), (9090, "tcp")}
    task = await docker._query_json(f"tasks/{instance.id}")
    info = await docker.containers.container(task["Status"]["ContainerStatus"]["ContainerID"]).show()
    assert info["Config"]["User"] == "1000:1000"
    assert {m["Destination"]: m["RW"] for m in info["Mounts"]} == {"/data": True, "/srv/site": False}
