"""backends/_pull.py's logic without a daemon: image references, registry credentials (a temp DOCKER_CONFIG),
progress accounting, and one pull per image however many starts wait for it (on a fake progress stream).
The pulls themselves are tested on the real daemons in tests/engines/test_pull.py."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

import aiodocker
import pytest

from backends._pull import (Credentials, Progress, Puller, hub_qualified, read_docker_config, reference,
                            registry_of)
from backends.base import BackendError


@pytest.mark.parametrize(("image", "registry"), [
    ("nginx:alpine", "docker.io"), ("library/nginx", "docker.io"), ("user/app:1", "docker.io"),
    ("registry.example/app:1", "registry.example"), ("127.0.0.1:5000/a/b:t", "127.0.0.1:5000"),
    ("localhost/app", "localhost"), ("host:5000/app@sha256:abc", "host:5000"),
])
def test_registry_of_follows_dockers_rule(image: str, registry: str) -> None:
    assert registry_of(image) == registry


@pytest.mark.parametrize(("image", "ref"), [
    ("nginx", "nginx:latest"), ("nginx:alpine", "nginx:alpine"), ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
    ("127.0.0.1:5000/app:t", "127.0.0.1:5000/app:t"), ("app@sha256:abc", "app@sha256:abc"),
])
def test_a_reference_always_names_a_tag_or_digest(image: str, ref: str) -> None:
    assert reference(image) == ref  # a bare name would pull every tag of the repository


@pytest.mark.parametrize(("ref", "qualified"), [
    ("nginx:alpine", "docker.io/library/nginx:alpine"), ("me/app:1", "docker.io/me/app:1"),
    ("docker.io/library/nginx:1", "docker.io/library/nginx:1"), ("index.docker.io/me/a:1", "index.docker.io/me/a:1"),
    ("127.0.0.1:5000/app:t", "127.0.0.1:5000/app:t"), ("localhost/app:t", "localhost/app:t"),
    ("app@sha256:abc", "docker.io/library/app@sha256:abc"),
])
def test_a_short_name_means_docker_hub_as_dockerd_reads_it(ref: str, qualified: str) -> None:
    assert hub_qualified(ref) == qualified  # what podman's own pull is given


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": _b64("hubuser:hub:pass")},  # a password may hold a colon
        "registry.example:5000": {"username": "u", "password": "p"},
        "https://ghcr.example/v2/": {"identitytoken": "tok"},
        "broken.example": {"auth": "not base64!"},
        "helper.example": {},  # a credential helper's entry: nothing here
    }, "credsStore": "desktop"}))
    return path


def test_the_docker_config_files_auths_are_read_by_registry(docker_config: Path) -> None:
    assert read_docker_config() == {
        "docker.io": {"username": "hubuser", "password": "hub:pass"},
        "registry.example:5000": {"username": "u", "password": "p"},
        "ghcr.example": {"identitytoken": "tok"},
    }


def test_an_unreadable_or_absent_docker_config_means_anonymous(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert read_docker_config() == {}
    (tmp_path / "config.json").write_text("{not json")
    assert read_docker_config() == {} and Credentials().header("registry.example:5000/app:1") == {}


def _decoded(header: Mapping[str, str]) -> dict[str, str]:
    return dict(json.loads(base64.urlsafe_b64decode(header["X-Registry-Auth"])))


def test_the_header_carries_the_images_registry_login_and_config_wins(docker_config: Path) -> None:
    creds = Credentials({"registry.example:5000": {"username": "cfg", "password": "secret"}})
    assert _decoded(creds.header("registry.example:5000/app:1")) == {
        "username": "cfg", "password": "secret", "serveraddress": "registry.example:5000"}
    assert _decoded(creds.header("nginx:alpine")) == {
        "username": "hubuser", "password": "hub:pass", "serveraddress": "https://index.docker.io/v1/"}
    assert creds.header("127.0.0.1:5000/app:t") == {}  # no login for it: anonymous
    assert "secret" not in repr(creds) and "secret" not in str(vars(creds).keys())


def test_progress_counts_layers_and_bytes_of_dockerd_and_podman_streams() -> None:
    p = Progress()
    for msg in [{"status": "Pulling from app", "id": "t"},
                {"status": "Already exists", "id": "a"},
                {"status": "Downloading", "id": "b", "progressDetail": {"current": 512 * 1024, "total": 2**21}},
                {"status": "Downloading", "id": "c", "progressDetail": {"current": 0, "total": 2**20}}]:
        p.feed(msg)
    assert p.summary() == "1/3 layers, 0.5 of 3.0 MiB"
    p.feed({"status": "Download complete", "id": "b"})
    p.feed({"status": "Pull complete", "id": "b"})
    assert p.summary() == "2/3 layers, 2.0 of 3.0 MiB"
    podman = Progress()
    for line in ("Trying to pull x...\n", "Copying blob sha256:aa\n", "Copying blob sha256:bb\n"):
        podman.feed({"stream": line})
    assert podman.summary() == "2 layers"


class FakeDaemon:
    """A progress stream the test releases: how many pulls it was asked for, and an error to end them with."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, Mapping[str, str]]] = []
        self.release = asyncio.Event()
        self.error: str | None = None

    async def stream(self, ref: str, headers: Mapping[str, str]) -> AsyncIterator[Mapping[str, Any]]:
        self.asked.append((ref, headers))
        yield {"status": "Pulling from x", "id": "t"}
        await self.release.wait()
        if self.error:
            raise aiodocker.DockerError(404, self.error)
        yield {"status": "Pull complete", "id": "a"}


async def test_concurrent_pulls_of_one_image_are_one_pull_that_outlives_a_cancelled_waiter() -> None:
    daemon = FakeDaemon()
    puller = Puller(daemon.stream, Credentials(), "fake daemon")
    waiters = [asyncio.ensure_future(puller.pull("127.0.0.1:5000/app")) for _ in range(5)]
    other = asyncio.ensure_future(puller.pull("127.0.0.1:5000/other:1"))
    await asyncio.sleep(0)
    waiters[0].cancel()  # one start gives up (start_timeout): the others still get the image
    await asyncio.sleep(0)
    daemon.release.set()
    await asyncio.gather(*waiters[1:], other)
    assert sorted(ref for ref, _ in daemon.asked) == ["127.0.0.1:5000/app:latest", "127.0.0.1:5000/other:1"]
    assert puller.pulls == 2
    await puller.pull("127.0.0.1:5000/app")  # done: a later need is a new pull
    assert puller.pulls == 3


async def test_a_failed_pull_is_a_backend_error_for_every_waiter() -> None:
    daemon = FakeDaemon()
    daemon.error = "manifest for 127.0.0.1:5000/app:1 not found: manifest unknown"
    daemon.release.set()
    puller = Puller(daemon.stream, Credentials(), "fake daemon")
    results = await asyncio.gather(*(puller.pull("127.0.0.1:5000/app:1") for _ in range(3)), return_exceptions=True)
    assert len(daemon.asked) == 1
    for result in results:
        assert isinstance(result, BackendError)
        assert result.reason == f"pull of 127.0.0.1:5000/app:1 failed: {daemon.error}" and result.retry_after >= 5


def test_the_config_gives_each_class_its_policy_and_the_engines_their_logins() -> None:
    from proxy.config.schema import ConfigError, parse_config

    def config(**backend: Any) -> dict[str, Any]:
        return {"backend": backend, "containers": {"w": {"image": "x"}, "n": {"image": "y", "pull": "never"}},
                "routes": [{"path": "/", "container": "w", "key": "k"}]}

    raw = config(type="docker", registries={"127.0.0.1:5000": {"username": "u", "password": "s3cret"}})
    parsed = parse_config(raw)
    assert (parsed.containers["w"].spec.pull, parsed.containers["n"].spec.pull) == ("missing", "never")
    assert parsed.backend.options["registries"] == {"127.0.0.1:5000": {"username": "u", "password": "s3cret"}}
    assert "s3cret" not in repr(parsed.backend)
    assert "registries" not in parse_config(config(type="swarm")).backend.options  # none: the constructor's default
    raw["containers"]["w"]["pull"] = "sometimes"
    with pytest.raises(ConfigError, match=r"containers\.w\.pull"):
        parse_config(raw)
    with pytest.raises(ConfigError, match=r"backend\.registries\.h\.password"):
        parse_config(config(type="docker", registries={"h": {"username": "u"}}))
