"""The data path's hot modules compiled by mypyc (C extensions), the .py files the fallback: the wheel's build.

    python -m proxy.compile            # build in place: proxy/**/<module>.cpython-3XX-<platform>.so next to the .py
    python -m proxy.compile --out DIR  # build into a copy of proxy/ and backends/ in DIR (PYTHONPATH=DIR to use it)
    python -m proxy.compile --clean    # remove the in-place build: pure Python again
    python -m proxy.compile --list     # the modules it compiles

Needs mypy (which ships mypyc) and a C compiler: `pip install lazy-proxy[fast]`, Debian `gcc` + `python3-dev`.
Python imports an extension module before the .py of the same name in the same directory, so once built in place
`python -m proxy` runs the compiled modules; the file name carries the interpreter's ABI tag, so another Python
version ignores it and imports the .py. An in-place build does not follow later edits of the .py files: rebuild
(or --clean) after changing them. A checkout (pip install -e) stays pure Python unless built here.
The modules are the ones a warm keep-alive request runs through (`python -m bench.fastpath_cpu --profile`);
proxy/http/server.py stays interpreted (its FastProtocol subclasses aiohttp's RequestHandler, not compiled).

`pip install .` / `pip wheel .` compile the same modules into the wheel by default (setup.py calls
wheel_extensions()); editable installs and LAZY_PROXY_PURE=1 stay pure. `running()` says which build runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HOT = (
    "proxy/http/exchange.py", "proxy/http/fastpath.py", "proxy/http/reconnect.py", "proxy/http/watch.py",
    "proxy/http/routes.py", "proxy/wire/upstream.py", "proxy/wire/closing.py", "proxy/wire/paths.py",
    "proxy/request_id.py", "proxy/observe/request_log.py", "proxy/observe/request_metrics.py",
    "proxy/observe/usage.py", "proxy/observe/metrics.py", "proxy/observe/tally.py", "proxy/lifecycle/idle.py",
    "proxy/lifecycle/pause.py", "proxy/lifecycle/registry.py", "proxy/wire/pools.py", "proxy/http/usual.py",
    "proxy/lifecycle/inflight.py",
)  # not proxy/lifecycle/manager.py: mypyc does not compile its async generator (Manager.lease); its
# per-request part is the compiled base class proxy/lifecycle/inflight.py
GROUP = "proxy._compiled"  # mypyc's shared runtime library: proxy/_compiled__mypyc.*.so, inside the package
PACKAGES = ("proxy", "backends")  # what the type analysis reads (backends: the types the proxy imports)
OPT_LEVEL = "3"
PURE_ENV = "LAZY_PROXY_PURE"  # =1: `pip install .` builds a pure-Python wheel (no mypyc, no C compiler)
SETUP = """\
from setuptools import setup
from mypyc.build import mypycify
setup(name="lazy-proxy-compiled", packages=[],
      ext_modules=mypycify({paths!r}, opt_level={opt!r}, group_name={group!r}))
"""


def _names() -> list[str]:
    return [path.removesuffix(".py").replace("/", ".") for path in HOT]


def running() -> str:
    """Which build this process runs, for the start-up line and --version: "compiled, N modules" when every HOT
    module loads from an extension module, "pure Python" when none does, else "partly compiled, K of N modules"
    (e.g. an in-place build older than HOT). Asks the import system where each module is (or would be) loaded
    from: its spec's origin, the .so or the .py."""
    found = [importlib.util.find_spec(name) for name in _names()]
    compiled = sum(1 for spec in found if spec is not None and (spec.origin or "").endswith((".so", ".pyd")))
    if compiled == 0:
        return "pure Python"
    if compiled == len(HOT):
        return f"compiled, {len(HOT)} modules"
    return f"partly compiled, {compiled} of {len(HOT)} modules"


def warn_pure(why: str) -> None:
    """The one line a build that falls back to pure Python prints (setup.py's too)."""
    print(f"warning: lazy-proxy builds pure Python (not compiled by mypyc): {why}", file=sys.stderr, flush=True)


def _compiler_works() -> str | None:
    """None when a C compiler builds a file including Python.h; else why not (one line)."""
    from setuptools._distutils.ccompiler import new_compiler  # setuptools' copy of distutils (3.12 has none)
    from setuptools._distutils.sysconfig import customize_compiler, get_python_inc

    cc = new_compiler()
    customize_compiler(cc)
    with tempfile.TemporaryDirectory(prefix="lazy-proxy-cc-") as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text("#include <Python.h>\nint lazy_proxy_probe(void) { return 0; }\n")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                cc.compile([str(src)], output_dir=tmp, include_dirs=[get_python_inc()])
        except Exception as exc:  # CompileError, DistutilsExecError (no compiler): the message says which
            return f"no working C compiler with Python headers ({str(exc).strip().splitlines()[-1][:160]})"
    return None


def pure_requested() -> bool:
    """LAZY_PROXY_PURE set (and not 0): the wheel is pure Python (setup.py; the build backend's requirements)."""
    return os.environ.get(PURE_ENV, "") not in ("", "0")


def wheel_extensions() -> list[Any]:
    """The extension modules of a wheel build (setup.py): mypyc's build of HOT, or [] (pure Python) when
    LAZY_PROXY_PURE=1, mypyc is missing, no C compiler works, or mypyc fails; each with one warning line."""
    if pure_requested():
        print(f"lazy-proxy: {PURE_ENV}={os.environ[PURE_ENV]}: pure-Python build", file=sys.stderr, flush=True)
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        warn_pure("mypyc is not installed (pip install mypy)")
        return []
    if (why := _compiler_works()) is not None:
        warn_pure(why)
        return []
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):  # paths relative to the checkout: setup.py's cwd
            return list(mypycify(list(HOT), opt_level=OPT_LEVEL, group_name=GROUP))
    except (Exception, SystemExit) as exc:  # mypyc prints the type errors, then exits
        first = next((line for line in said.getvalue().splitlines() if "error" in line), str(exc))
        warn_pure(f"mypyc failed: {first[:200]}")
        return []


def root() -> Path:
    """The directory holding the proxy package (a checkout's top, or site-packages)."""
    return Path(__file__).resolve().parent.parent


def built(where: Path) -> list[Path]:
    """The extension modules under where/proxy (this build's; the package holds no other)."""
    return sorted((where / "proxy").rglob("*.so"))


def clean(where: Path) -> list[Path]:
    gone = built(where)
    for path in gone:
        path.unlink()
    return gone


def _copy(src: Path, dest: Path) -> None:
    for name in PACKAGES:
        shutil.copytree(src / name, dest / name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))


def build(dest: Path, *, quiet: bool = True) -> list[Path]:
    """Compile HOT in a scratch copy of the source, then put the extension modules into dest/proxy/..."""
    src = root()
    with tempfile.TemporaryDirectory(prefix="lazy-proxy-mypyc-") as tmp:
        work = Path(tmp)
        _copy(src, work)
        (work / "setup.py").write_text(SETUP.format(paths=list(HOT), opt=OPT_LEVEL, group=GROUP))
        run = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=work,
                             capture_output=quiet, text=True)
        if run.returncode != 0:
            tail = (run.stdout + run.stderr).strip().splitlines()[-20:] if quiet else []
            raise SystemExit("\n".join([*tail, f"mypyc build failed (exit {run.returncode})"]))
        if dest != src:
            _copy(src, dest)
        clean(dest)
        out = []
        for so in built(work):
            target = dest / so.relative_to(work)
            shutil.copy2(so, target)
            out.append(target)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m proxy.compile", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="build into a copy of the source in this directory (not in place)")
    ap.add_argument("--clean", action="store_true", help="remove the compiled modules (in place, or in --out)")
    ap.add_argument("--list", action="store_true", help="print the modules compiled and exit")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the compiler's output")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(HOT))
        return 0
    dest = args.out.resolve() if args.out else root()
    if args.clean:
        print(f"removed {len(clean(dest))} extension files from {dest / 'proxy'}")
        return 0
    try:
        import mypyc  # noqa: F401
    except ImportError:
        print("mypyc is not installed: pip install 'lazy-proxy[fast]' (mypy ships mypyc)", file=sys.stderr)
        return 2
    dest.mkdir(parents=True, exist_ok=True)
    out = build(dest, quiet=not args.verbose)
    print(f"compiled {len(HOT)} modules into {dest / 'proxy'} ({len(out)} extension files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
