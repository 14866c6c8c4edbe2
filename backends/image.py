"""Build the model-service image without any registry: a rootfs tar imported through the API socket.

    python -m backends.image build --runtime docker|podman [--tag T] [--socket S] [--force]
    python -m backends.image plan          # show what would be packed (no daemon needed)

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

import argparse
import asyncio
import hashlib
import importlib.metadata as metadata
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TAG = "lazy-proxy/model-service:latest"
CONTENT_LABEL = "lazy-proxy.content"
INPUTS_LABEL = "lazy-proxy.inputs"
HOST_PYTHON = "/usr/bin/python3.11"
PY_VER = "3.11"
STDLIB = Path(f"/usr/lib/python{PY_VER}")
APP_UID = 10001
APP_USER = "app"

# Seeds of the dependency closure; the import probe then drops whatever model_service never imports.
RUNTIME_ROOTS = [
    "aiohttp", "onnxruntime", "numpy", "structlog", "prometheus_client", "PyYAML",
]
# Never packed even if some metadata pulls them in.
EXCLUDED_DISTS = {"scikit-learn", "scipy", "skl2onnx", "onnx", "pytest", "pip", "setuptools", "joblib"}

STDLIB_SKIP_DIRS = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "__pycache__",
                    "config-3.11-x86_64-linux-gnu", "pydoc_data", "unittest/test", "distutils/tests"}
SITE_SKIP_DIRS = {"__pycache__", "tests"}

IMAGE_CMD = ["/usr/bin/python3.11", "-m", "model_service", "--host", "0.0.0.0", "--port", "8080"]
IMAGE_ENV = {
    "PYTHONPATH": "/app/site-packages:/app",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
}


def _norm_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --------------------------------------------------------------------------- site-packages selection


def _dist_closure(roots: Iterable[str]) -> dict[str, metadata.Distribution]:
    """Requirement closure of `roots` in the running interpreter's environment (extras ignored)."""
    try:
        from packaging.markers import Marker  # present in the venv (onnxruntime dep)
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover
        Requirement = Marker = None  # type: ignore[assignment]
    seen: dict[str, metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        key = _norm_name(name)
        if key in seen or key in EXCLUDED_DISTS:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[key] = dist
        for req_s in dist.requires or []:
            if Requirement is not None:
                req = Requirement(req_s)
                if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                    continue
                todo.append(req.name)
            else:
                if "extra ==" in req_s:
                    continue
                todo.append(re.split(r"[ ;<>=!~\[(]", req_s, 1)[0])
    return seen


def _dist_files(dist: metadata.Distribution) -> list[Path]:
    """Absolute paths of a distribution's installed files, inside site-packages, minus caches/tests."""
    site = Path(dist.locate_file("")).resolve()
    out = []
    for f in dist.files or []:
        p = Path(dist.locate_file(f)).resolve()
        try:
            rel = p.relative_to(site)
        except ValueError:
            continue  # scripts in bin/ etc.
        if any(part in SITE_SKIP_DIRS for part in rel.parts[:-1]) or rel.suffix == ".pyc":
            continue
        if p.is_file():
            out.append(p)
    return out


def _probe_imported_files(site_files: dict[str, list[Path]], site: Path) -> set[str]:
    """Import model_service with the Debian python against a staged site-packages; return the dists used."""
    with tempfile.TemporaryDirectory(prefix="lp-probe-") as tmp:
        stage = Path(tmp) / "site-packages"
        for files in site_files.values():
            for f in files:
                dst = stage / f.relative_to(site)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(f, dst)
        code = (
            "import sys, json\n"
            "import model_service.__main__, model_service.app, model_service.model\n"
            "try:\n"
            "    from model_service.model import get_model\n"
            "    get_model()\n"
            "except Exception as e:\n"
            "    print('probe: get_model failed:', repr(e), file=sys.stderr)\n"
            "try:\n"
            "    from model_service.app import create_app\n"
            "    create_app({})\n"
            "except Exception as e:\n"
            "    print('probe: create_app failed:', repr(e), file=sys.stderr)\n"
            "print(json.dumps(sorted(m for m in sys.modules)))\n"
        )
        env = {"PYTHONPATH": f"{stage}:{REPO_ROOT}", "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run([HOST_PYTHON, "-S", "-c", code], env=env, capture_output=True, text=True,
                              cwd=tmp, timeout=120)
        if proc.returncode != 0:
            raise SystemExit(f"import probe failed with {HOST_PYTHON}:\n{proc.stderr[-3000:]}")
        if proc.stderr.strip():
            print(proc.stderr.strip(), file=sys.stderr)
        modules = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    used = set()
    tops = {m.split(".")[0] for m in modules}
    for dist_key, files in site_files.items():
        dist_tops = {f.relative_to(site).parts[0].split(".")[0] for f in files}
        dist_tops = {t for t in dist_tops if not t.endswith("-info") and t != "__init__"}
        if dist_tops & tops:
            used.add(dist_key)
    return used


# --------------------------------------------------------------------------- rootfs plan


@dataclass
class Plan:
    files: dict[str, Path] = field(default_factory=dict)     # arcname -> host file
    links: dict[str, str] = field(default_factory=dict)      # arcname -> symlink target
    data: dict[str, bytes] = field(default_factory=dict)     # arcname -> literal content
    dirs: dict[str, int] = field(default_factory=dict)       # arcname -> mode
    dists: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def add_dir_chain(self, arc: str) -> None:
        parts = arc.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in self.dirs and d not in self.links:
                self.dirs[d] = 0o755

    def add_file(self, arc: str, src: Path) -> None:
        arc = arc.lstrip("/")
        self.add_dir_chain(arc)
        self.files[arc] = src

    def add_link(self, arc: str, target: str) -> None:
        arc = arc.lstrip("/")
        self.add_dir_chain(arc)
        self.links[arc] = target

    def add_data(self, arc: str, content: bytes) -> None:
        arc = arc.lstrip("/")
        self.add_dir_chain(arc)
        self.data[arc] = content


def _canonical(path: str) -> str:
    """Resolve directory symlinks (merged /usr: /lib -> usr/lib) but keep the file name itself."""
    p = Path(path)
    return str(Path(os.path.realpath(p.parent)) / p.name)


def _add_host_file(plan: Plan, path: str) -> None:
    """Add a host file at its canonical path, plus the symlink chain leading to it (libfoo.so.1 -> .so.1.2)."""
    canon = _canonical(path)
    seen = 0
    while os.path.islink(canon) and seen < 10:
        target = os.readlink(canon)
        plan.add_link(canon, target)
        canon = _canonical(os.path.join(os.path.dirname(canon), target))
        seen += 1
    plan.add_file(canon, Path(canon))


_LDD_RE = re.compile(r"=>\s*(/\S+)|^\s*(/\S+)\s+\(")


def _ldd(paths: list[Path]) -> set[str]:
    libs: set[str] = set()
    for i in range(0, len(paths), 200):
        chunk = [str(p) for p in paths[i:i + 200]]
        proc = subprocess.run(["ldd", *chunk], capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            m = _LDD_RE.search(line)
            if m:
                libs.add(m.group(1) or m.group(2))
    return libs


def make_plan(verbose: bool = False) -> Plan:
    plan = Plan()
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    closure = _dist_closure(RUNTIME_ROOTS)
    site_files = {k: _dist_files(d) for k, d in closure.items()}
    used = _probe_imported_files(site_files, site)
    plan.dists = sorted(f"{closure[k].metadata['Name']}=={closure[k].version}" for k in used)
    plan.dropped = sorted(closure[k].metadata["Name"] for k in closure if k not in used)

    # interpreter + stdlib
    _add_host_file(plan, HOST_PYTHON)
    plan.add_link("usr/bin/python3", "python3.11")
    for root, dirnames, filenames in os.walk(STDLIB):
        rel_root = Path(root).relative_to(STDLIB)
        dirnames[:] = sorted(d for d in dirnames
                             if d not in STDLIB_SKIP_DIRS and str(rel_root / d) not in STDLIB_SKIP_DIRS)
        for fn in sorted(filenames):
            p = Path(root) / fn
            if p.suffix == ".pyc":
                continue
            if p.is_symlink():
                real = p.resolve()
                if not real.is_file():
                    continue
                plan.add_file(str(p), real)  # e.g. Debian's sitecustomize.py -> /etc/python3.11/
            else:
                plan.add_file(str(p), p)

    # runtime site-packages + the app
    for k in sorted(used):
        for f in site_files[k]:
            plan.add_file(f"app/site-packages/{f.relative_to(site)}", f)
    app_src = REPO_ROOT / "model_service"
    for p in sorted(app_src.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
            plan.add_file(f"app/model_service/{p.relative_to(app_src)}", p)

    # shared libraries of the interpreter and of every extension module (wheel-bundled .libs stay put)
    exts = [src for arc, src in plan.files.items() if ".so" in Path(arc).name or arc == "usr/bin/python3.11"]
    for lib in sorted(_ldd(exts)):
        if lib.startswith(str(site)) or lib.startswith(str(REPO_ROOT)):
            continue
        _add_host_file(plan, lib)
    _add_host_file(plan, "/lib64/ld-linux-x86-64.so.2")

    # merged-/usr top-level links, like the host
    for name in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{name}"):
            plan.links[name] = os.readlink(f"/{name}")
            plan.dirs.pop(name, None)
    plan.dirs.update({"tmp": 0o1777, "proc": 0o755, "sys": 0o755, "dev": 0o755, "etc": 0o755,
                      "app": 0o755, "run": 0o755, "var": 0o755, "var/tmp": 0o1777})
    plan.add_data("etc/passwd", f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                                f"{APP_USER}:x:{APP_UID}:{APP_UID}:app:/tmp:/usr/sbin/nologin\n".encode())
    plan.add_data("etc/group", f"root:x:0:\n{APP_USER}:x:{APP_UID}:\n".encode())
    plan.add_data("etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n")
    plan.add_data("etc/hosts", b"127.0.0.1 localhost\n")
    plan.add_data("etc/resolv.conf", b"")
    # a dangling link the runtime can mount over is harmless; drop dir entries shadowed by links
    for arc in list(plan.dirs):
        if arc in plan.links:
            del plan.dirs[arc]
    if verbose:
        print(f"packing {len(plan.dists)} dists: {', '.join(plan.dists)}")
        print(f"left out (not imported): {', '.join(plan.dropped) or '-'}")
    return plan


# --------------------------------------------------------------------------- tar


def _compile_pyc(src: bytes, arc: str) -> bytes | None:
    """An unchecked-hash .pyc (no mtime dependence, so the tar stays deterministic)."""
    from importlib._bootstrap_external import _code_to_hash_pyc  # type: ignore[attr-defined]

    try:
        code = compile(src, "/" + arc, "exec", dont_inherit=True, optimize=0)
    except (SyntaxError, ValueError):
        return None
    return bytes(_code_to_hash_pyc(code, importlib.util.source_hash(src), checked=False))


def _tarinfo(name: str, kind: bytes, mode: int, size: int = 0, uid: int = 0) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.size = size
    ti.mtime = 0
    ti.uid = ti.gid = uid
    ti.uname = ti.gname = ""
    return ti


def write_tar(plan: Plan, out: Path, pyc: bool = True) -> str:
    """Write the rootfs tar deterministically; return its sha256."""
    h = hashlib.sha256()

    class _Hashing(io.RawIOBase):
        def __init__(self, f):
            self.f = f

        def writable(self):
            return True

        def write(self, b):
            h.update(b)
            return self.f.write(b)

    with open(out, "wb") as raw, tarfile.open(fileobj=_Hashing(raw), mode="w|", format=tarfile.GNU_FORMAT) as tar:
        entries: list[tuple[str, str]] = [(a, "d") for a in plan.dirs] + [(a, "l") for a in plan.links] \
            + [(a, "f") for a in plan.files] + [(a, "b") for a in plan.data]
        pyc_dirs_added: set[str] = set()
        for arc, kind in sorted(entries):
            if kind == "d":
                tar.addfile(_tarinfo(arc, tarfile.DIRTYPE, plan.dirs[arc]))
            elif kind == "l":
                ti = _tarinfo(arc, tarfile.SYMTYPE, 0o777)
                ti.linkname = plan.links[arc]
                tar.addfile(ti)
            elif kind == "b":
                content = plan.data[arc]
                tar.addfile(_tarinfo(arc, tarfile.REGTYPE, 0o644, len(content)), io.BytesIO(content))
            else:
                src = plan.files[arc]
                content = src.read_bytes()
                mode = 0o755 if os.access(src, os.X_OK) and not arc.endswith(".py") else 0o644
                tar.addfile(_tarinfo(arc, tarfile.REGTYPE, mode, len(content)), io.BytesIO(content))
                if pyc and arc.endswith(".py"):
                    code = _compile_pyc(content, arc)
                    if code is not None:
                        d = str(Path(arc).parent / "__pycache__")
                        if d not in pyc_dirs_added:
                            pyc_dirs_added.add(d)
                            tar.addfile(_tarinfo(d, tarfile.DIRTYPE, 0o755))
                        name = f"{d}/{Path(arc).stem}.{sys.implementation.cache_tag}.pyc"
                        tar.addfile(_tarinfo(name, tarfile.REGTYPE, 0o644, len(code)), io.BytesIO(code))
    return h.hexdigest()


# --------------------------------------------------------------------------- import through the API


def inputs_fingerprint(plan: Plan) -> str:
    """Cheap fingerprint of what goes into the tar (paths, sizes, mtimes, literal files, config), so an
    unchanged tree skips packing entirely; the content hash of the tar itself is the second line of defence."""
    h = hashlib.sha256()
    for arc in sorted(plan.files):
        st = plan.files[arc].stat()
        h.update(f"f {arc} {plan.files[arc]} {st.st_size} {st.st_mtime_ns}\n".encode())
    for arc in sorted(plan.links):
        h.update(f"l {arc} {plan.links[arc]}\n".encode())
    for arc in sorted(plan.data):
        h.update(b"b " + arc.encode() + b" " + hashlib.sha256(plan.data[arc]).digest() + b"\n")
    for arc in sorted(plan.dirs):
        h.update(f"d {arc} {plan.dirs[arc]:o}\n".encode())
    h.update(json.dumps(image_changes("")).encode())
    h.update(Path(__file__).read_bytes())  # the packing code itself
    return h.hexdigest()[:32]


async def _cached(runtime: str, socket: str, tag: str, inputs: str) -> "BuildResult | None":
    import aiodocker

    docker = aiodocker.Docker(url=socket)
    try:
        try:
            info = await docker.images.inspect(tag)
        except aiodocker.DockerError as e:
            if e.status == 404:
                return None
            raise
    finally:
        await docker.close()
    labels = (info.get("Config") or {}).get("Labels") or {}
    if labels.get(INPUTS_LABEL) != inputs:
        return None
    return BuildResult(tag=tag, image_id=info["Id"], size=int(info.get("Size") or 0),
                       content_hash=labels.get(CONTENT_LABEL, ""), built=False, seconds=0.0)


def image_changes(content_hash: str, inputs: str = "") -> list[str]:
    env = [f"ENV {k}={v}" for k, v in IMAGE_ENV.items()]
    return [
        f"CMD {json.dumps(IMAGE_CMD)}",
        "WORKDIR /app",
        *env,
        "EXPOSE 8080/tcp",
        "STOPSIGNAL SIGINT",
        f"USER {APP_UID}:{APP_UID}",
        f"LABEL {CONTENT_LABEL}={content_hash}",
        *([f"LABEL {INPUTS_LABEL}={inputs}"] if inputs else []),
    ]


def default_socket(runtime: str) -> str:
    if runtime == "podman":
        from backends.podman import DEFAULT_SOCKET as sock
    else:
        from backends.docker import default_docker_socket

        sock = default_docker_socket()
    return sock


async def _existing_label(docker, tag: str) -> str | None:
    import aiodocker

    try:
        info = await docker.images.inspect(tag)
    except aiodocker.DockerError as e:
        if e.status == 404:
            return None
        raise
    labels = (info.get("Config") or {}).get("Labels") or {}
    return labels.get(CONTENT_LABEL)


async def import_tar(docker, tar_path: Path, tag: str, changes: list[str]) -> None:
    """POST /images/create?fromSrc=- with the tar body (what `docker import` does)."""
    import aiohttp

    repo, _, t = tag.rpartition(":")
    if not repo or "/" in t:
        repo, t = tag, "latest"
    params: list[tuple[str, str]] = [("fromSrc", "-"), ("repo", repo), ("tag", t), ("message", "lazy-proxy rootfs")]
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


async def build_image(runtime: str = "docker", tag: str = DEFAULT_TAG, socket: str | None = None,
                      force: bool = False, verbose: bool = True) -> BuildResult:
    import aiodocker

    t0 = time.monotonic()
    socket = socket or default_socket(runtime)
    plan = make_plan(verbose=verbose)
    with tempfile.TemporaryDirectory(prefix="lp-image-") as tmp:
        tar_path = Path(tmp) / "rootfs.tar"
        inputs = inputs_fingerprint(plan)
        if not force:
            hit = await _cached(runtime, socket, tag, inputs)
            if hit is not None:
                hit.seconds = time.monotonic() - t0
                if verbose:
                    print(f"{runtime}: {tag} up to date (inputs {inputs}): id {hit.image_id} "
                          f"size {hit.size / 2**20:.1f} MiB in {hit.seconds:.1f}s")
                return hit
        tar_hash = write_tar(plan, tar_path)
        cfg_hash = hashlib.sha256(json.dumps(image_changes(""), sort_keys=True).encode()).hexdigest()
        content_hash = hashlib.sha256(f"{tar_hash}:{cfg_hash}".encode()).hexdigest()[:32]
        if verbose:
            print(f"rootfs tar {tar_path.stat().st_size / 2**20:.1f} MiB, content {content_hash} "
                  f"({time.monotonic() - t0:.1f}s)")
        docker = aiodocker.Docker(url=socket)
        try:
            built = False
            if force or await _existing_label(docker, tag) != content_hash:
                changes = image_changes(content_hash, inputs)
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


async def ensure_image(runtime: str, tag: str = DEFAULT_TAG, socket: str | None = None) -> BuildResult:
    """Build if needed, quietly (test fixtures, CI)."""
    return await build_image(runtime, tag=tag, socket=socket, verbose=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m backends.image", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build and import the model-service image")
    b.add_argument("--runtime", choices=["docker", "podman"], default="docker")
    b.add_argument("--tag", default=DEFAULT_TAG)
    b.add_argument("--socket", default=None, help="API socket URL (default: the runtime's)")
    b.add_argument("--force", action="store_true", help="import even if the same content is tagged")
    sub.add_parser("plan", help="print the packed distributions and sizes, do not build")
    args = ap.parse_args(argv)
    if args.cmd == "plan":
        plan = make_plan(verbose=True)
        total = sum(p.stat().st_size for p in plan.files.values())
        print(f"{len(plan.files)} files, {total / 2**20:.1f} MiB uncompressed (before .pyc)")
        return 0
    asyncio.run(build_image(args.runtime, tag=args.tag, socket=args.socket, force=args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
