"""Build script for realalloc's two C extensions.

* ``realalloc._shim`` (cffi, API mode, out of line): the OS calls and the
  kernels exported to Python.  The cdef is read between the CDEF markers of
  csrc/sizeclasses.h (generated constants) and csrc/shim.h (the interface),
  so the headers are the one declaration and cannot drift.
* ``realalloc._fast`` (CPython API): the malloc/free entry points and the
  Buffer type; see the header comment of csrc/fastpath.c for why.

setup.py names ``ffibuilder`` in cffi_modules and ``fast_extension()`` in
ext_modules, so `pip install .` compiles both.  `python csrc/build_shim.py`
builds the cffi module in place for quick iteration.
"""

from __future__ import annotations

import pathlib
import re

from cffi import FFI
from setuptools import Extension

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
# -mpopcnt: sweeps count bits (every x86-64 CPU since 2008 has the instruction).
CFLAGS = ["-O3", "-mpopcnt", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"]


def package_version() -> str:
    text = (ROOT / "realalloc" / "_version.py").read_text()
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.MULTILINE)
    if match is None:
        raise RuntimeError("no __version__ in realalloc/_version.py")
    return match.group(1)


HEADERS = ("sizeclasses.h", "shim.h", "spanbits.h", "pages.h", "central.h", "numpy.c", "gc.c")


def _cdef() -> str:
    parts = []
    for name in ("sizeclasses.h", "shim.h"):
        header = (HERE / name).read_text()
        body = header.split("/* CDEF BEGIN")[1].split("/* CDEF END */")[0]
        parts.append(body.split("*/", 1)[1])
    return "\n".join(parts)


_VERSION_MACRO = [("RA_PACKAGE_VERSION", f'"{package_version()}"')]

ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "realalloc._shim",
    '#include "shim.h"',
    sources=[str((HERE / "shim.c").relative_to(ROOT))],
    include_dirs=[str(HERE.relative_to(ROOT))],
    depends=[str((HERE / name).relative_to(ROOT)) for name in HEADERS],
    define_macros=_VERSION_MACRO,
    extra_compile_args=CFLAGS,
)


def fast_extension() -> Extension:
    return Extension(
        "realalloc._fast",
        sources=[str((HERE / "fastpath.c").relative_to(ROOT))],
        include_dirs=[str(HERE.relative_to(ROOT))],
        depends=[str((HERE / name).relative_to(ROOT)) for name in HEADERS],
        define_macros=_VERSION_MACRO,
        extra_compile_args=CFLAGS,
    )


if __name__ == "__main__":
    import os

    os.chdir(ROOT)
    ffibuilder.compile(verbose=True)
