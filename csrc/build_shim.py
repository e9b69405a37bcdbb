"""cffi build script for realalloc's C shim (API mode, out of line).

setup.py names this file in cffi_modules, so `pip install .` compiles the shim
into realalloc/_shim*.so.  `python csrc/build_shim.py` builds it in place for
quick iteration.  The cdef is read from csrc/shim.h between the CDEF markers,
so the header is the one interface and cannot drift from the cdef.
"""

from __future__ import annotations

import pathlib
import re

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def _package_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    if match is None:
        raise RuntimeError("no version in pyproject.toml")
    return match.group(1)


def _cdef() -> str:
    header = (HERE / "shim.h").read_text()
    body = header.split("/* CDEF BEGIN")[1].split("/* CDEF END */")[0]
    return body.split("*/", 1)[1]


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "realalloc._shim",
    '#include "shim.h"',
    sources=[str((HERE / "shim.c").relative_to(ROOT))],
    include_dirs=[str(HERE.relative_to(ROOT))],
    define_macros=[("RA_PACKAGE_VERSION", f'"{_package_version()}"')],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    import os

    os.chdir(ROOT)
    ffibuilder.compile(verbose=True)
