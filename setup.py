"""Build hook: compiles the SHA-256d kernel from ext/ into agent._sha256d.

The extension is optional. Without Cython or a C compiler, with a source file missing, or with
GRIDMINER_NO_EXTENSIONS=1, the install still succeeds and agent.hashing uses the pure-Python
implementation (a warning says so).

No -march flag: the x86-64 kernels (SHA extensions, AVX2, AVX-512) carry per-function target
attributes and are chosen at run time from CPUID, so a wheel built on one x86-64 machine runs on
any other; ARM builds likewise carry their NEON and SHA-2 kernels in functions of their own,
chosen from the hardware capabilities (ext/README.md).
"""

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.sdist import sdist

NO_EXTENSIONS = os.environ.get("GRIDMINER_NO_EXTENSIONS", "") not in ("", "0")
HERE = Path(__file__).resolve().parent
EXT_SOURCES = ["ext/_sha256d.pyx", "ext/sha256d_kernels.c"]
EXT_DEPENDS = ["ext/sha256d_kernels.h", "ext/sha256d_lanes.h"]
EXT_EXTRA = ["ext/README.md"]
UNIX_FLAGS = ["-O3", "-fno-strict-aliasing", "-Wno-psabi"]


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
        if self.compiler.compiler_type in ("unix", "mingw32", "cygwin"):
            ext.extra_compile_args = [*ext.extra_compile_args, *UNIX_FLAGS]
        try:
            super().build_extension(ext)
        except Exception as exc:
            _warn(f"building {ext.name} failed ({exc})")


class SdistWithExt(sdist):
    """sdist that ships the kernel sources (cythonize replaces the .pyx with generated C)."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        wanted = EXT_SOURCES + EXT_DEPENDS + EXT_EXTRA
        extra = [name for name in wanted if name not in files and (HERE / name).is_file()]
        super().make_release_tree(base_dir, [*files, *extra])


def _extensions() -> list[Extension]:
    if NO_EXTENSIONS:
        _warn("GRIDMINER_NO_EXTENSIONS is set")
        return []
    missing = [name for name in EXT_SOURCES + EXT_DEPENDS if not (HERE / name).is_file()]
    if missing:
        _warn(f"missing source files: {', '.join(missing)}")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _warn("Cython is not installed")
        return []
    ext = Extension(
        "agent._sha256d",
        sources=EXT_SOURCES,
        depends=EXT_DEPENDS,
        include_dirs=["ext"],
    )
    try:
        return cythonize([ext], language_level=3, quiet=True, build_dir="build/cython")
    except Exception as exc:  # a broken .pyx must not fail the install either
        _warn(f"Cython could not translate {EXT_SOURCES[0]} ({exc})")
        return []


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt, "sdist": SdistWithExt})
