"""setuptools' entry (the metadata is in pyproject.toml): a wheel build compiles proxy/compile.py's HOT modules
with mypyc, the .py files shipped beside them as the fallback. Only a wheel build does (the in-tree backend,
build_backend/lazy_proxy_build.py, says so): an editable install stays pure Python, so no extension module can
shadow a developer's edit. LAZY_PROXY_PURE=1, a missing C compiler or a mypyc failure: pure Python, one warning.
"""

import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # proxy.compile: HOT, read from one place
from proxy.compile import wheel_extensions  # noqa: E402

WHEEL = os.environ.get("_LAZY_PROXY_WHEEL") == "1"  # set by the backend around build_wheel only

setup(ext_modules=wheel_extensions() if WHEEL else [])
