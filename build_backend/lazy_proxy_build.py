"""The build backend: setuptools.build_meta, with two differences for a (non-editable) wheel.

- Its build requirements add what mypyc's type analysis of proxy/ reads: the project's dependencies and the
  `fast` extra (mypy, which ships mypyc, and the stubs), both read from pyproject.toml. Editable installs and
  LAZY_PROXY_PURE=1 ask for setuptools only.
- build_wheel tells setup.py to compile (proxy/compile.py's HOT modules); build_editable never does.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (every other hook unchanged)

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
sys.path.insert(0, str(ROOT))  # proxy.compile (stdlib only): the opt-out read in one place, as setup.py does
from proxy.compile import pure_requested  # noqa: E402


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    extra = [] if pure_requested() else [*project["dependencies"], *project["optional-dependencies"]["fast"]]
    return [*_setuptools.get_requires_for_build_wheel(config_settings), *extra]


def build_wheel(wheel_directory: str, config_settings: dict[str, Any] | None = None,
                metadata_directory: str | None = None) -> str:
    os.environ["_LAZY_PROXY_WHEEL"] = "1"
    try:
        return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    finally:
        os.environ.pop("_LAZY_PROXY_WHEEL", None)
