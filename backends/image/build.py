"""Build the model-service image without any registry: a rootfs tar imported through the API socket.

    python -m backends.image build --runtime docker|podman [--app model-service|proxy] [--tag T] [--socket S] [--force]
    python -m backends.image plan [--app proxy]   # show what would be packed (no daemon needed)
    python -m backends.image push --registry 127.0.0.1:5000 [--app ...]  # build (docker), then push there

Progress goes to stdout as it happens (packing, importing, done). A daemon that cannot be reached (no such
socket, permission denied, refused) or an import it refuses is one line on stderr and exit code 1.

A swarm resolves the image in a registry on every start, so `push` puts the docker build into one (a local
`docker-registry` on 127.0.0.1 in .ci) and prints the name a swarm class uses (`<registry>/<tag>`).

The rootfs is the host's Debian CPython (/usr/bin/python3.11 and its stdlib), the shared libraries
`ldd` reports for the interpreter and for every extension module packed, the runtime subset of the
current venv's site-packages (under /app/site-packages) and `model_service/` (under /app). Which
distributions are runtime deps is decided by actually importing `model_service` with the Debian
interpreter against the staged site-packages: a distribution none of whose modules got imported is
left out (sympy, ml_dtypes, scipy, sklearn, pytest ... never make it in).

The tar is deterministic (sorted, mtime 0, uid/gid 0, .pyc compiled as unchecked-hash so they need
no source mtimes), and its sha256 plus the image config is the content hash stored as the label
`lazy-proxy.content`; a build is skipped when the tag already carries that label (`--force` rebuilds).
The import is `POST /images/create?fromSrc=-` with the tar as the body and Dockerfile-style
`changes`, which both dockerd and podman's compat API understand. Nothing is ever pulled.
"""

from __future__ import annotations

from typing import Any, cast

import argparse
import asyncio
import hashlib
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from backends.image.rootfs import (
    APPS,
    CONTENT_LABEL,
    DEFAULT_TAG,
    INPUTS_LABEL,
    MODEL_SERVICE,
    App,
    image_changes,
    inputs_fingerprint,
    make_plan,
    write_tar,
)


async def _inspect_image(docker: Any, tag: str) -> dict[str, Any] | None:
    """The image's inspect document, or None when there is no such image."""
    import aiodocker

    try:
        return cast("dict[str, Any]", await docker.images.inspect(tag))
    except aiodocker.DockerError as e:
        if e.status == 404:
            return None
        raise


async def _cached(runtime: str, socket: str, tag: str, inputs: str) -> "BuildResult | None":
    import aiodocker

    docker = aiodocker.Docker(url=socket)
    try:
        info = await _inspect_image(docker, tag)
    finally:
        await docker.close()
    if info is None:
        return None
    labels = (info.get("Config") or {}).get("Labels") or {}
    if labels.get(INPUTS_LABEL) != inputs:
        return None
    return BuildResult(tag=tag, image_id=info["Id"], size=int(info.get("Size") or 0),
                       content_hash=labels.get(CONTENT_LABEL, ""), built=False, seconds=0.0)


async def reachable(runtime: str, socket: str) -> None:
    """BackendUnavailable naming the socket and why (no such socket, permission denied, refused) unless the
    runtime's API answers `GET /_ping`."""
    from backends._api import ApiClient

    client = ApiClient(socket=socket, proxy_id="image-build", request_timeout=10.0)
    client.daemon_label = f"{runtime} API"
    try:
        await client.ping()
    finally:
        await client.close()


def default_socket(runtime: str) -> str:
    if runtime == "podman":
        from backends.podman import DEFAULT_SOCKET as sock
    else:
        from backends.docker import default_docker_socket

        sock = default_docker_socket()
    return sock


async def _existing_label(docker: Any, tag: str) -> str | None:
    info = await _inspect_image(docker, tag)
    if info is None:
        return None
    labels = (info.get("Config") or {}).get("Labels") or {}
    label = labels.get(CONTENT_LABEL)
    return None if label is None else str(label)


async def import_tar(docker: Any, tar_path: Path, tag: str, changes: list[str]) -> None:
    """POST /images/create?fromSrc=- with the tar body (what `docker import` does)."""
    import aiohttp

    repo, _, t = tag.rpartition(":")
    if not repo or "/" in t:
        repo, t = tag, "latest"
    # The tag goes inside `repo`: podman's compat API ignores the `tag` parameter (it imported every tag as
    # `:latest`), and dockerd reads a tag in `repo` the same way.
    params: list[tuple[str, str]] = [("fromSrc", "-"), ("repo", f"{repo}:{t}"), ("message", "lazy-proxy rootfs")]
    params += [("changes", c) for c in changes]
    # aiodocker's query helpers flatten params into a dict; `changes` must repeat, so go one level down.
    await docker._check_version()
    url = docker._canonicalize_url("images/create")
    with open(tar_path, "rb") as f:
        async with docker.session.post(
            url, params=params, data=f, headers={"Content-Type": "application/x-tar"},
            timeout=aiohttp.ClientTimeout(total=900, sock_connect=10),
        ) as resp:
            body = await resp.read()
            if resp.status >= 400:
                raise RuntimeError(f"image import failed: HTTP {resp.status}: {body.decode(errors='replace')[:500]}")
    # progress JSON lines; errors arrive as {"error": ...} with a 200
    for line in body.decode(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("error"):
            raise RuntimeError(f"image import failed: {msg['error']}")


@dataclass
class BuildResult:
    tag: str
    image_id: str
    size: int
    content_hash: str
    built: bool
    seconds: float


async def build_image(runtime: str = "docker", tag: str | None = None, socket: str | None = None,
                      force: bool = False, verbose: bool = True, app: App = MODEL_SERVICE) -> BuildResult:
    import aiodocker

    t0 = time.monotonic()
    tag = tag or app.tag
    socket = socket or default_socket(runtime)
    await reachable(runtime, socket)  # before minutes of packing: no daemon is one line, at once
    if verbose:
        print(f"packing {app.tag} ...", flush=True)
    plan = make_plan(verbose=verbose, app=app)
    with tempfile.TemporaryDirectory(prefix="lp-image-") as tmp:
        tar_path = Path(tmp) / "rootfs.tar"
        inputs = inputs_fingerprint(plan, app)
        if not force:
            hit = await _cached(runtime, socket, tag, inputs)
            if hit is not None:
                hit.seconds = time.monotonic() - t0
                if verbose:
                    print(f"{runtime}: {tag} up to date (inputs {inputs}): id {hit.image_id} "
                          f"size {hit.size / 2**20:.1f} MiB in {hit.seconds:.1f}s")
                return hit
        tar_hash = write_tar(plan, tar_path)
        cfg_hash = hashlib.sha256(json.dumps(image_changes("", app=app), sort_keys=True).encode()).hexdigest()
        content_hash = hashlib.sha256(f"{tar_hash}:{cfg_hash}".encode()).hexdigest()[:32]
        if verbose:
            print(f"rootfs tar {tar_path.stat().st_size / 2**20:.1f} MiB, content {content_hash} "
                  f"({time.monotonic() - t0:.1f}s)")
        docker = aiodocker.Docker(url=socket)
        try:
            built = False
            if force or await _existing_label(docker, tag) != content_hash:
                if verbose:
                    print(f"importing into {runtime} as {tag} ...", flush=True)
                changes = image_changes(content_hash, inputs, app)
                while True:
                    try:
                        await import_tar(docker, tar_path, tag, changes)
                        break
                    except RuntimeError as e:
                        # dockerd 20.10 rejects STOPSIGNAL in import changes ("stopsignal is not a valid
                        # change command"); drop just that instruction (aiohttp also exits cleanly on SIGTERM).
                        m = re.search(r"(\w+) is not a valid change command", str(e))
                        rest = [c for c in changes if not m or c.split()[0].lower() != m.group(1).lower()]
                        if not m or rest == changes:
                            raise
                        print(f"note: {runtime} does not accept {m.group(1).upper()} on import; skipped",
                              file=sys.stderr)
                        changes = rest
                built = True
            info = await docker.images.inspect(tag)
        finally:
            await docker.close()
    res = BuildResult(tag=tag, image_id=info["Id"], size=int(info.get("Size") or 0),
                      content_hash=content_hash, built=built, seconds=time.monotonic() - t0)
    if verbose:
        what = "built" if built else "up to date (cached)"
        print(f"{runtime}: {tag} {what}: id {res.image_id} size {res.size / 2**20:.1f} MiB "
              f"in {res.seconds:.1f}s")
    return res


async def ensure_image(runtime: str, tag: str | None = None, socket: str | None = None,
                       app: App = MODEL_SERVICE) -> BuildResult:
    """Build if needed, quietly (test fixtures, CI)."""
    return await build_image(runtime, tag=tag, socket=socket, verbose=False, app=app)


async def push_image(registry: str, socket: str | None = None, app: App = MODEL_SERVICE,
                     verbose: bool = True) -> str:
    """Build the app's image on dockerd if needed, tag it `<registry>/<tag>` and push it; that name."""
    import aiodocker

    built = await build_image("docker", socket=socket, verbose=verbose, app=app)
    remote = f"{registry.rstrip('/')}/{built.tag}"
    repo, _, tag = remote.rpartition(":")
    docker = aiodocker.Docker(url=socket or default_socket("docker"))
    try:
        await docker.images.tag(built.tag, repo, tag=tag)
        await docker.images.push(repo, tag=tag)  # a refused push raises (DockerStreamError)
    finally:
        await docker.close()
    if verbose:
        print(f"pushed {remote}")
    return remote


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m backends.image", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build and import an image (the model service, or the proxy)")
    b.add_argument("--runtime", choices=["docker", "podman"], default="docker")
    b.add_argument("--app", choices=sorted(APPS), default="model-service", help="which image")
    b.add_argument("--tag", default=None, help=f"default: the app's ({DEFAULT_TAG}, {APPS['proxy'].tag})")
    b.add_argument("--socket", default=None, help="API socket URL (default: the runtime's)")
    b.add_argument("--force", action="store_true", help="import even if the same content is tagged")
    u = sub.add_parser("push", help="build on dockerd and push to a registry (what a swarm starts from)")
    u.add_argument("--registry", required=True, help="host:port of the registry, e.g. 127.0.0.1:5000")
    u.add_argument("--app", choices=sorted(APPS), default="model-service")
    u.add_argument("--socket", default=None, help="dockerd's API socket URL (default: $DOCKER_HOST or the standard)")
    p = sub.add_parser("plan", help="print the packed distributions and sizes, do not build")
    p.add_argument("--app", choices=sorted(APPS), default="model-service")
    args = ap.parse_args(argv)
    if args.cmd == "plan":
        plan = make_plan(verbose=True, app=APPS[args.app])
        total = sum(p.stat().st_size for p in plan.files.values())
        print(f"{len(plan.files)} files, {total / 2**20:.1f} MiB uncompressed (before .pyc)")
        return 0
    try:
        if args.cmd == "push":
            asyncio.run(push_image(args.registry, socket=args.socket, app=APPS[args.app]))
        else:
            asyncio.run(build_image(args.runtime, tag=args.tag, socket=args.socket, force=args.force,
                                    app=APPS[args.app]))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for a person, never a traceback (see FAILED)
        print(f"python -m backends.image {args.cmd}: {_one_line(exc)}", file=sys.stderr)
        return FAILED
    return 0


FAILED = 1  # the daemon is unreachable or refused the import/push (a usage mistake is argparse's 2)


def _one_line(exc: BaseException) -> str:
    from backends.base import BackendError

    if isinstance(exc, BackendError):
        return exc.reason
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'failed'}"


