"""The house's layering: every module imports alone, no import circle, arrows between wings run one way.

The import graph is read from the source (every `import` and `from ... import`, including those under
`TYPE_CHECKING` and inside functions: a type-only or lazy import is still an arrow a reader follows), so
a circle that breaks nothing at import time still fails here. Wings are the subpackages of proxy/
(proxy/<wing>/...); the few top-level modules are the composition root (`app`), the entry points and
the leaves every wing may use. `KNOWN` lists today's exceptions: each entry must still occur (a fixed
one is removed from the list), and no new one may appear.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("proxy", "backends", "bench")

# Top-level modules of proxy/ and the wing each belongs to; everything else is proxy/<wing>/....
TOP = {
    "proxy": "leaf", "proxy.errors": "leaf", "proxy.keys": "leaf", "proxy.request_id": "leaf",
    "proxy.app": "app", "proxy.reload": "app",  # reload: the composition root applying a new config
    "proxy.__main__": "entry", "proxy.banner": "entry", "proxy.check": "entry", "proxy.config_doc": "entry",
    "proxy.compile": "entry",  # python -m proxy.compile: the optional mypyc build (imports no proxy module)
}
_BASE = {"leaf", "backends"}
# Which wings a wing may import (besides itself). backends/ sits below everything and imports no proxy/.
ALLOWED: dict[str, set[str]] = {
    "leaf": _BASE,
    "backends": {"backends"},
    "wire": _BASE,  # connections, pools, request targets, matching: knows no manager, no config
    "config": _BASE | {"wire"},  # route matchers are parsed by the config (config/routes.py)
    "lifecycle": _BASE | {"config"},  # the Manager speaks upward only through its events
    "observe": _BASE | {"lifecycle", "config"},
    "scale": _BASE | {"lifecycle", "config"},
    "cluster": _BASE | {"lifecycle", "observe", "wire", "config"},  # the peer hop counts the access line's bytes
    # pages for people (waiting page, /ui): read the lifecycle's events and state, render; serve no traffic
    "face": _BASE | {"lifecycle", "observe", "config", "wire"},
    "http": _BASE | {"face", "cluster", "scale", "observe", "lifecycle", "wire", "config"},  # the waiting page
    "app": _BASE | {"face", "http", "cluster", "scale", "observe", "lifecycle", "wire", "config"},
    "admin": _BASE | {"face", "app", "observe", "lifecycle", "config"},  # /ui on the admin listener
    "entry": _BASE | {"admin", "app", "http", "observe", "config"},
    "bench": _BASE | {"bench", "face", "app", "http", "cluster", "scale", "observe", "lifecycle", "wire", "config",
                      "entry"},
}

# Today's exceptions, to be cut: arrows against the table, and import circles (as sorted module tuples).
KNOWN_ARROWS: set[tuple[str, str]] = set()
KNOWN_CIRCLES: set[tuple[str, ...]] = set()


def modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports anywhere in its source (a `from pkg import mod` counts as mod)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def wing(name: str) -> str:
    top = name.split(".")[0]
    if top in ("backends", "bench"):
        return top
    if name in TOP:
        return TOP[name]
    parts = name.split(".")
    assert len(parts) >= 3, f"{name}: a new top-level module of proxy/; put it in a wing (or TOP)"
    assert parts[1] in ALLOWED, f"{name}: {parts[1]}/ is not a wing of the table"
    return parts[1]


def circles(g: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: set[tuple[str, ...]] = set()
    for root in g:
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(g[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.add(tuple(sorted(component)))
    return found


def test_no_new_import_circle() -> None:
    found = circles(graph())
    known = {tuple(sorted(circle)) for circle in KNOWN_CIRCLES}
    assert found - known == set(), "new import circle"
    assert known - found == set(), "cut: remove it from KNOWN_CIRCLES"


def test_arrows_between_wings_follow_the_table() -> None:
    g = graph()
    wrong = {(a, b) for a, targets in g.items() for b in targets
             if wing(b) != wing(a) and wing(b) not in ALLOWED[wing(a)]}
    assert wrong - KNOWN_ARROWS == set(), "arrow against the table (tests/test_layers.py ALLOWED)"
    assert KNOWN_ARROWS - wrong == set(), "fixed: remove it from KNOWN_ARROWS"


def test_backends_know_no_proxy() -> None:
    g = graph()
    assert {(a, b) for a, t in g.items() if a.startswith("backends") for b in t if b.startswith("proxy")} == set()


# Imported once by the parent before it forks a child per module, so each child pays only for the project's
# own modules; none of these is ours, so "alone" still holds for every project module.
_THIRD_PARTY = ("aiohttp", "aiohttp.web", "aiodocker", "pydantic", "structlog", "prometheus_client", "yaml",
                "httptools", "multidict", "yarl", "croniter")
_ALONE = """
import importlib, os, sys, traceback
for lib in LIBS:
    try:
        importlib.import_module(lib)
    except ImportError:
        pass
assert not [m for m in sys.modules if m.split(".")[0] in ("proxy", "backends", "bench")]
failed, running = 0, 0
for name in NAMES:
    if running == WIDTH:  # a few children at a time: each is one module's imports, one core's work
        failed += os.waitstatus_to_exitcode(os.wait()[1]) != 0
        running -= 1
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            print(name + ": " + traceback.format_exc().strip().splitlines()[-1], flush=True)
            os._exit(1)
        os._exit(0)
    running += 1
for _ in range(running):
    failed += os.waitstatus_to_exitcode(os.wait()[1]) != 0
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_alone() -> None:
    """Each module in a clean interpreter: an import that only works after another module loaded fails here."""
    names = sorted(modules())
    code = f"LIBS = {_THIRD_PARTY!r}\nNAMES = {names!r}\nWIDTH = {max(2, os.cpu_count() or 1)}\n{_ALONE}"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]


# Small modules, one concern each: none much over 400 lines. Today's exceptions, to be split.
MAX_LINES = 450
KNOWN_LONG: set[str] = set()


def test_no_module_much_over_400_lines() -> None:
    long = {name for name, path in modules().items() if len(path.read_text().splitlines()) > MAX_LINES}
    assert long - KNOWN_LONG == set(), f"over {MAX_LINES} lines: split by concern"
    assert KNOWN_LONG - long == set(), "split: remove it from KNOWN_LONG"


def test_tests_import_no_private_bench_module() -> None:
    """The tests share the benchmarks' helpers through bench/lib/ (public), never a `_private` bench module."""
    private = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:  # `from bench import _x` names the module too
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_"))]
            else:
                continue
            private += [f"{path.relative_to(ROOT)}: {n}" for n in names
                        if n.split(".")[0] == "bench" and any(p.startswith("_") for p in n.split(".")[1:])]
    assert private == []
