"""setuptools' entry (the metadata is in pyproject.toml): a wheel build compiles proxy/compile.py's HOT modules
with mypyc, the .py files shipped beside them as the fallback. Only a wheel build does (the in-tree backend,
build_backend/lazy_proxy_build.py, says so): an editable install stays pure Python, so no extension module can
shadow a developer's edit. LAZY_PROXY_PURE=1, a missing C compiler or a mypyc failure: pure Python, one warning.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # proxy.compile: HOT, read from one place
from proxy.compile import warn_pure, wheel_extensions  # noqa: E402

WHEEL = os.environ.get("_LAZY_PROXY_WHEEL") == "1"  # set by the backend around build_wheel only


class LenientBuildExt(build_ext):
    """Should the C compile fail after all (proxy.compile probed the compiler first), the wheel goes on pure
    Python: every compiled module dropped (one without mypyc's group library would not import), one warning."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # CompileError, LinkError, DistutilsExecError
            for ext in self.extensions:
                if os.path.exists(path := self.get_ext_fullpath(ext.name)):
                    os.unlink(path)
            warn_pure(f"the C compile failed: {(str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]}")


setup(ext_modules=wheel_extensions() if WHEEL else [], cmdclass={"build_ext": LenientBuildExt})
