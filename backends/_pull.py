"""Image pulls for the Docker-API engines: which registry an image is in, the credentials for it, and one
pull per image reference at a time however many keys start, with its progress in the log.

A class's `pull` policy (ContainerSpec.pull) decides when an engine pulls (backends/_engine.py):
`missing` pulls when create answers "no such image" and creates again once (what `docker run` does, so
the common start of a present image costs no extra API call); `always` pulls before every create (a warm
restart of a stopped container of the same spec reuses its image); `never` fails the start with a clear
reason. The swarm backend does not pull itself (its nodes do), it only sends the credentials.

Credentials: `backend.registries` in the config first, then the Docker config file (`$DOCKER_CONFIG/config.json`
or `~/.docker/config.json`, its `auths`; credential helpers are not run), sent as `X-Registry-Auth`. They are
never logged: the log says only whether a pull was authenticated.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping

import aiodocker
import aiohttp
from aiodocker.jsonstream import json_stream_stream

from backends._api import ApiClient
from backends.base import BackendError, ContainerSpec, Phases
from backends.options import EngineOptions

log = logging.getLogger(__name__)

PULL_RETRY_AFTER = 10.0  # seconds a client is told to wait after a failed pull (a registry rarely heals faster)
PROGRESS_EVERY = 5.0  # seconds between two progress lines of one pull
PULL_STALL = 600.0  # seconds without a byte from the daemon after which a pull is given up
DOCKER_HUB = "docker.io"
_HUB_ALIASES = {"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com", DOCKER_HUB}
LOOPBACK = ("127.", "localhost", "[::1]", "::1")


def registry_of(image: str) -> str:
    """The registry host[:port] of an image reference, by Docker's rule: the first path component when it
    has a `.` or `:` or is `localhost`, else Docker Hub."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return DOCKER_HUB


def reference(image: str) -> str:
    """`image` with `:latest` when it names neither tag nor digest (the API would pull every tag)."""
    if "@" in image or ":" in image.rsplit("/", 1)[-1]:
        return image
    return f"{image}:latest"


def hub_qualified(ref: str) -> str:
    """`ref` with Docker Hub named, as dockerd (and podman's compat API) reads a short name: `nginx:alpine` is
    `docker.io/library/nginx:alpine`, `me/app:1` is `docker.io/me/app:1`. podman's own pull otherwise asks
    registries.conf for search registries, and without any refuses the name."""
    if registry_of(ref) != DOCKER_HUB or ref.partition("/")[0] in _HUB_ALIASES:
        return ref
    return f"{DOCKER_HUB}/{ref}" if "/" in ref else f"{DOCKER_HUB}/library/{ref}"


def is_loopback(registry: str) -> bool:
    """A registry on this host: Docker talks plain HTTP to it already; podman is told to (tlsVerify=false)."""
    return registry.startswith(LOOPBACK)


def _host(server: str) -> str:
    """A Docker config `auths` key (`https://index.docker.io/v1/`, `registry.example:5000`) as a registry name."""
    for scheme in ("https://", "http://"):
        server = server.removeprefix(scheme)
    server = server.split("/", 1)[0]
    return DOCKER_HUB if server in _HUB_ALIASES else server


def docker_config_path() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"


def _login(entry: Mapping[str, Any]) -> dict[str, str] | None:
    """One `auths` entry as an auth config: `auth` (base64 user:pass), or `username`/`password`, or a token."""
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        try:
            user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        return {"username": user, "password": password} if sep else None
    if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
        return {"identitytoken": entry["identitytoken"]}
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return {"username": entry["username"], "password": entry["password"]}
    return None


def read_docker_config(path: Path | None = None) -> dict[str, dict[str, str]]:
    """Registry -> auth config from a Docker config file's `auths`; {} when there is none or it is unreadable
    (a warning names the file, never its contents)."""
    path = path or docker_config_path()
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("cannot read registry credentials from %s: %s", path, type(e).__name__)
        return {}
    auths = doc.get("auths") if isinstance(doc, dict) else None
    out: dict[str, dict[str, str]] = {}
    for server, entry in (auths if isinstance(auths, dict) else {}).items():
        login = _login(entry) if isinstance(entry, dict) else None
        if login is not None:
            out[_host(str(server))] = login
    return out


class Credentials:
    """Who to be at each registry: `configured` (`backend.registries`: host[:port] -> {username, password})
    wins over the Docker config file, which is read at each pull (a `docker login` needs no restart)."""

    def __init__(self, configured: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self._configured = {_host(k): {"username": v["username"], "password": v["password"]}
                            for k, v in (configured or {}).items()}

    def __repr__(self) -> str:  # never the secrets
        return f"Credentials(configured={sorted(self._configured)})"

    def login(self, registry: str) -> dict[str, str] | None:
        return self._configured.get(registry) or read_docker_config().get(registry)

    def header(self, image: str) -> dict[str, str]:
        """`{"X-Registry-Auth": ...}` for the image's registry, or {} (anonymous)."""
        registry = registry_of(image)
        login = self.login(registry)
        if login is None:
            return {}
        server = "https://index.docker.io/v1/" if registry == DOCKER_HUB else registry
        doc = json.dumps({**login, "serveraddress": server}).encode()
        return {"X-Registry-Auth": base64.urlsafe_b64encode(doc).decode()}


@dataclass
class Progress:
    """What a pull's progress stream has said so far (dockerd's per-layer lines; podman's `Copying blob`)."""

    layers: dict[str, tuple[int, int]] = field(default_factory=dict)  # layer -> (bytes downloaded, total)
    done: set[str] = field(default_factory=set)

    def feed(self, msg: Mapping[str, Any]) -> None:
        status, layer = str(msg.get("status") or ""), str(msg.get("id") or "")
        stream = str(msg.get("stream") or "")
        if stream.startswith("Copying blob "):  # podman: one line per blob as it begins
            self.layers.setdefault(stream.split()[2], (0, 0))
            return
        if not layer or not status or status.startswith(("Pulling from", "Digest", "Status")):
            return
        current, total = self.layers.get(layer, (0, 0))
        detail = msg.get("progressDetail") or {}
        if status == "Downloading" and detail.get("total"):
            current, total = int(detail.get("current") or 0), int(detail["total"])
        elif status in ("Download complete", "Verifying Checksum"):
            current = total
        elif status in ("Pull complete", "Already exists"):
            self.done.add(layer)
        self.layers[layer] = (current, total)

    def summary(self) -> str:
        got = sum(c for c, _ in self.layers.values())
        total = sum(t for _, t in self.layers.values())
        size = f", {got / 2**20:.1f} of {total / 2**20:.1f} MiB" if total else ""
        done = f"{len(self.done)}/" if self.done else ""
        return f"{done}{len(self.layers)} layers{size}"


Stream = Callable[[str, Mapping[str, str]], AsyncIterator[Mapping[str, Any]]]


class Puller:
    """One pull per image reference at a time: every start that needs it waits on the same pull (which goes on
    when one of them is cancelled). `pulls` counts the pulls begun, for tests and the log."""

    def __init__(self, stream: Stream, credentials: Credentials, label: str) -> None:
        self._stream = stream
        self.credentials = credentials
        self._label = label
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self.pulls = 0

    async def pull(self, image: str) -> None:
        ref = reference(image)
        task = self._inflight.get(ref)
        if task is None:
            task = self._inflight[ref] = asyncio.ensure_future(self._run(ref))
            task.add_done_callback(lambda t: (self._inflight.pop(ref, None), t.cancelled() or t.exception()))
        await asyncio.shield(task)

    async def _run(self, ref: str) -> None:
        self.pulls += 1
        headers = self.credentials.header(ref)
        progress, t0 = Progress(), time.monotonic()
        next_line = t0 + PROGRESS_EVERY
        log.info("pulling image %s on %s (%s)", ref, self._label, "authenticated" if headers else "anonymous")
        try:
            async for msg in self._stream(ref, headers):
                progress.feed(msg)
                if time.monotonic() >= next_line:
                    next_line = time.monotonic() + PROGRESS_EVERY
                    log.info("pulling image %s: %s after %.0fs", ref, progress.summary(), time.monotonic() - t0)
        except (aiodocker.DockerError, asyncio.TimeoutError) as e:
            reason = (str(e.message).strip() if isinstance(e, aiodocker.DockerError)
                      else f"the daemon said nothing for {PULL_STALL:g}s")
            log.warning("pull of %s failed after %.1fs: %s", ref, time.monotonic() - t0, reason)
            raise BackendError(f"pull of {ref} failed: {reason}", retry_after=PULL_RETRY_AFTER) from None
        log.info("pulled image %s in %.1fs (%s)", ref, time.monotonic() - t0, progress.summary())


def pull_timeout(connect: float | None) -> aiohttp.ClientTimeout:
    """A pull may take long; it is given up only when the daemon says nothing for PULL_STALL seconds."""
    return aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=PULL_STALL)


async def compat_stream(docker: aiodocker.Docker, ref: str, headers: Mapping[str, str],
                        connect: float | None) -> AsyncIterator[Mapping[str, Any]]:
    """dockerd's `POST /images/create?fromImage=` progress stream (errors arrive in it as DockerStreamError)."""
    async with docker._query("images/create", "POST", params={"fromImage": ref}, headers=headers,
                             timeout=pull_timeout(connect)) as resp:
        async for msg in json_stream_stream(resp):
            yield msg


async def libpod_stream(docker: aiodocker.Docker, ref: str, headers: Mapping[str, str],
                        connect: float | None) -> AsyncIterator[Mapping[str, Any]]:
    """podman's own pull (`libpod/images/pull`): unlike its compat endpoint it takes tlsVerify, which a registry
    on loopback needs (plain HTTP, as dockerd assumes for 127.0.0.0/8); a short name is Docker Hub's, as there."""
    params = {"reference": hub_qualified(ref), **({"tlsVerify": "false"} if is_loopback(registry_of(ref)) else {})}
    async with docker._query("v4.0.0/libpod/images/pull", "POST", params=params, headers=headers,
                             timeout=pull_timeout(connect), versioned_api=False) as resp:
        async for msg in json_stream_stream(resp):
            yield msg


def no_such_image(e: aiodocker.DockerError) -> bool:
    """Whether a create failed only because the image is not here (dockerd: "No such image", podman: "no such
    image ... image not known")."""
    return e.status == 404 and "no such image" in str(e.message).lower()


def never_pulled(image: str) -> BackendError:
    return BackendError(f"image {image} is not present and pull is never", retry_after=PULL_RETRY_AFTER)


async def missing_locally(inspect: Callable[[str], Awaitable[Any]], image: str) -> bool:
    """Whether the daemon lacks `image` (an image inspect answering 404)."""
    try:
        await inspect(image)
    except aiodocker.DockerError as e:
        if e.status == 404:
            return True
        raise
    return False




class EnginePulls(ApiClient):
    """The pull policy on a Docker-API engine: `create` pulls as the spec's policy says, one puller per backend.
    `libpod_pull`: pull through podman's own API (backends/podman.py)."""

    libpod_pull = False

    def __init__(self, options: EngineOptions | None = None, **fields: Any) -> None:
        super().__init__(options, **fields)
        self.puller = Puller(self._pull_stream, Credentials(self.options.registries), self.daemon_label)

    async def _pull_stream(self, ref: str, headers: Mapping[str, str]) -> AsyncIterator[Mapping[str, Any]]:
        stream = libpod_stream if self.libpod_pull else compat_stream
        async for msg in stream(await self._client(), ref, headers, self._timeout.sock_connect):
            yield msg

    async def create(self, config: dict[str, Any], name: str, spec: ContainerSpec,
                     phases: Phases) -> aiodocker.containers.DockerContainer:
        """Create the container, pulling its image first (`always`) or when the daemon lacks it (`missing`);
        a `pull` phase only when a pull happened."""
        docker = await self._client()
        if spec.pull == "always":
            phases.begin("pull")
            await self.puller.pull(spec.image)
            phases.mark("pull")
        try:
            return await docker.containers.create(config, name=name)
        except aiodocker.DockerError as e:
            if not no_such_image(e):
                raise
            if spec.pull == "never":
                raise never_pulled(spec.image) from None
        phases.begin("pull")
        await self.puller.pull(spec.image)
        phases.mark("pull")
        return await docker.containers.create(config, name=name)

    async def missing_images(self, specs: Iterable[ContainerSpec]) -> list[tuple[str, str]]:
        """(class, image) of each `pull: never` class whose image this daemon lacks, for a warning at start-up;
        [] when the daemon does not answer (the start-up line says so elsewhere)."""
        out = []
        try:
            docker = await self._client()
            for spec in specs:
                if spec.pull == "never" and await missing_locally(docker.images.inspect, spec.image):
                    out.append((spec.name, spec.image))
        except Exception as e:  # noqa: BLE001 - a check at start-up, never a reason not to start
            log.debug("image check skipped: %s", type(e).__name__)
        return out
