"""The rootfs of the project's images: what to pack and the deterministic tar.

The host's Debian CPython (/usr/bin/python3.11 and its stdlib), the shared libraries `ldd` reports
for the interpreter and every extension module packed, the runtime subset of the current venv's
site-packages (decided by actually importing the app with the Debian interpreter) and the app's own
packages. Two apps (`App`): the model service, and the proxy itself (for deploy/compose.yaml). No daemon
is needed here; `backends.image.build` imports the tar.
"""

from __future__ import annotations

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, cast

REPO_ROOT = Path(__file__).resolve().parents[2]
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
    "grpcio", "grpcio-health-checking", "protobuf",  # MODEL_SERVICE_PROTOCOL=grpc (model_service/grpc_server.py)
]
# Never packed even if some metadata pulls them in.
EXCLUDED_DISTS = {"scikit-learn", "scipy", "skl2onnx", "onnx", "pytest", "pip", "setuptools", "joblib"}

STDLIB_SKIP_DIRS = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "__pycache__",
                    "config-3.11-x86_64-linux-gnu", "pydoc_data", "unittest/test", "distutils/tests"}
SITE_SKIP_DIRS = {"__pycache__", "tests"}



@dataclass(frozen=True)
class App:
    """One image: this repo's packages under /app, the seeds of its dependency closure, the imports that
    decide which of those are packed, and how it runs."""

    tag: str
    packages: tuple[str, ...]
    roots: tuple[str, ...]
    probe: str  # Python run against the staged site-packages; whatever it imports is packed
    cmd: tuple[str, ...]
    port: int
    stop_signal: str


MODEL_SERVICE = App(
    tag=DEFAULT_TAG,
    packages=("model_service",),
    roots=tuple(RUNTIME_ROOTS),
    probe=(
        "import sys, json\n"
        "import model_service.__main__, model_service.app, model_service.model, model_service.grpc_server\n"
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
    ),
    cmd=("/usr/bin/python3.11", "-m", "model_service", "--host", "0.0.0.0", "--port", "8080"),
    port=8080,
    stop_signal="SIGINT",
)
# The proxy with the engine backends (not the stub's in-process model service). It needs the engine's socket
# (run it as a user that may open it: deploy/compose.yaml runs it as root) and a config (`--config`).
PROXY = App(
    tag="lazy-proxy/proxy:latest",
    packages=("proxy", "backends"),
    roots=("aiohttp", "aiodocker", "structlog", "prometheus_client", "PyYAML", "pydantic", "croniter",
           "httptools", "uvloop", "jinja2", "h2"),  # jinja2: proxy/face/; h2: readiness: grpc
    probe=(
        "import sys, json\n"
        "import proxy.__main__, proxy.app, proxy.http.server, proxy.cluster, backends.docker, backends.podman\n"
        "import uvloop, httptools\n"
    ),
    cmd=("/usr/bin/python3.11", "-m", "proxy", "--host", "0.0.0.0", "--port", "8787"),
    port=8787,
    stop_signal="SIGTERM",
)
APPS = {"model-service": MODEL_SERVICE, "proxy": PROXY}
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
        from packaging.requirements import (
            Requirement,  # present in the venv (onnxruntime dep)
        )
    except ImportError:  # pragma: no cover
        Requirement = None  # type: ignore[assignment,misc]
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
                todo.append(re.split(r"[ ;<>=!~\[(]", req_s, maxsplit=1)[0])
    return seen


def _dist_files(dist: metadata.Distribution) -> list[Path]:
    """Absolute paths of a distribution's installed files, inside site-packages, minus caches/tests."""
    site = Path(str(dist.locate_file(""))).resolve()
    out = []
    for f in dist.files or []:
        p = Path(str(dist.locate_file(f))).resolve()
        try:
            rel = p.relative_to(site)
        except ValueError:
            continue  # scripts in bin/ etc.
        if any(part in SITE_SKIP_DIRS for part in rel.parts[:-1]) or rel.suffix == ".pyc":
            continue
        if p.is_file():
            out.append(p)
    return out


def _probe_imported_files(site_files: dict[str, list[Path]], site: Path, app: App) -> set[str]:
    """Import the app with the Debian python against a staged site-packages; return the dists used."""
    with tempfile.TemporaryDirectory(prefix="lp-probe-") as tmp:
        stage = Path(tmp) / "site-packages"
        for files in site_files.values():
            for f in files:
                dst = stage / f.relative_to(site)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(f, dst)
        code = app.probe + "print(json.dumps(sorted(m for m in sys.modules)))\n"
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


def make_plan(verbose: bool = False, app: App = MODEL_SERVICE) -> Plan:
    plan = Plan()
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    closure = _dist_closure(app.roots)
    site_files = {k: _dist_files(d) for k, d in closure.items()}
    used = _probe_imported_files(site_files, site, app)
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
    for package in app.packages:
        app_src = REPO_ROOT / package
        for p in sorted(app_src.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
                plan.add_file(f"app/{package}/{p.relative_to(app_src)}", p)

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
        def __init__(self, f: BinaryIO) -> None:
            self.f = f

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            h.update(b)
            return self.f.write(b)

    with open(out, "wb") as raw, tarfile.open(fileobj=cast(BinaryIO, _Hashing(raw)), mode="w|",
                                                   format=tarfile.GNU_FORMAT) as tar:
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


def inputs_fingerprint(plan: Plan, app: App = MODEL_SERVICE) -> str:
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
    h.update(json.dumps(image_changes("", app=app)).encode())
    h.update(Path(__file__).read_bytes())  # the packing code itself
    return h.hexdigest()[:32]


def image_changes(content_hash: str, inputs: str = "", app: App = MODEL_SERVICE) -> list[str]:
    env = [f"ENV {k}={v}" for k, v in IMAGE_ENV.items()]
    return [
        f"CMD {json.dumps(list(app.cmd))}",
        "WORKDIR /app",
        *env,
        f"EXPOSE {app.port}/tcp",
        f"STOPSIGNAL {app.stop_signal}",
        f"USER {APP_UID}:{APP_UID}",
        f"LABEL {CONTENT_LABEL}={content_hash}",
        *([f"LABEL {INPUTS_LABEL}={inputs}"] if inputs else []),
    ]
