"""Build hook: compiles the SHA-256d kernel from ext/ into agent._sha256d.

The extension is optional. Without Cython or a C compiler, or with
GRIDMINER_NO_EXTENSIONS=1, the install still succeeds and agent.hashing uses
the pure-Python implementation (a warning says so).
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NO_EXTENSIONS = os.environ.get("GRIDMINER_NO_EXTENSIONS", "") not in ("", "0")


def _warn(message: str) -> None:
    print(f"WARNING: gridminer: {message}; using the pure-Python SHA-256d kernel", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """build_ext that degrades to the pure-Python kernel instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # compiler missing, toolchain broken
            _warn(f"the C extension could not be built ({exc})")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            _warn(f"building {ext.name} failed ({exc})")


def _extensions() -> list[Extension]:
    if NO_EXTENSIONS:
        _warn("GRIDMINER_NO_EXTENSIONS is set")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _warn("Cython is not installed")
        return []
    ext = Extension(
        "agent._sha256d",
        sources=["ext/_sha256d.pyx", "ext/sha256d_kernels.c"],
        include_dirs=["ext"],
        extra_compile_args=["-O3", "-fno-strict-aliasing"],
    )
    return cythonize([ext], language_level=3, quiet=True)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
