"""The wheel as `pip install .` builds it, from a clean copy of the checkout (tests/proxy/test_compiled.py).

Also a command, so CI can build the compiled wheel (~100 s of mypyc and gcc) in the background while it installs
packages, and hand it to the test through WHEEL_ENV:

    python -m tests.support.wheel DIR   # copies the checkout to DIR/src, builds into DIR, prints the wheel's path
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ("proxy", "backends", "model_service", "build_backend", "setup.py", "pyproject.toml", "MANIFEST.in")
WHEEL_ENV = "LAZY_PROXY_TEST_WHEEL"  # a compiled wheel of this checkout, built already (.ci/run)


def checkout_copy(dest: Path) -> Path:
    """What a wheel is built from: the checkout's packages and build files, no caches, no in-place build."""
    for name in SOURCE:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, dest / name)
    return dest


def build(src: Path, out: Path, env: dict[str, str] | None = None) -> tuple[Path, str]:
    """Build the wheel of src into out; (the wheel, pip's verbose output: the build's own lines)."""
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-v",
                          "-w", str(out)], cwd=src, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **(env or {})})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    [wheel] = out.glob("lazy_proxy-*.whl")
    return wheel, run.stdout + run.stderr


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.support.wheel DIR", file=sys.stderr)
        return 2
    out = Path(argv[0]).resolve()
    (out / "src").mkdir(parents=True)
    wheel, _ = build(checkout_copy(out / "src"), out)
    print(wheel)  # the last line: .ci/run reads it
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
