"""How each allocator is loaded for the benchmarks, and the C helpers that touch memory.

The workload drivers and what they are written against (``Allocator``,
``verify``, ``Worker``, ``run_all``) live in the package,
realalloc/tools/workloads/; this module loads an allocator into that
interface (``malloc(size) -> int`` and ``free(addr)``):

* ``realalloc``: ``heap = realalloc.Heap(zero=False)``; ``heap.malloc`` /
  ``heap.free`` (C methods, GIL held).  ``malloc`` leaves memory as it finds
  it, as the peers' ``malloc`` does: the like-for-like row.  The interpreter
  itself keeps using glibc.
* ``realalloc-zero``: ``realalloc.Heap()``, whose ``malloc`` zeroes memory
  (realalloc's default, calloc's semantics): context, what zeroing costs.
* ``glibc``: the ``capi`` module that bench/peers.py builds for glibc,
  ``malloc(size) -> int`` / ``free(addr)`` around ``malloc`` / ``free``, with
  the calling convention and argument conversions of ``Heap.malloc`` /
  ``Heap.free``, so the difference is the allocator.
* ``jemalloc``, ``mimalloc``, ``tcmalloc``: *the same glibc capi module*, in a
  process started with ``LD_PRELOAD=<the library>``, so its ``malloc`` /
  ``free`` (and the interpreter's) resolve to the preloaded allocator, the
  way mimalloc-bench runs its peers.  :func:`load_allocator` checks that the
  ``malloc`` the process resolves lies in the preloaded library, and for
  mimalloc and tcmalloc that the library owns a block the module's
  ``malloc`` returned.
* ``NAME-cffi`` (``glibc-cffi`` runs by default, the peers' on request):
  the same through peers.py's cffi API-mode module, ``g_malloc(size) ->
  uintptr_t`` / ``g_free(uintptr_t)``, which releases the GIL around every
  call: how the peers were first called.

For realalloc, :func:`load_allocator` returns the heap too, whose
``python_mallocs`` counts the malloc calls that ran Python code.

Objects are *touched* through a small CPython extension built here
(:func:`memory`): ``METH_FASTCALL`` functions that keep the GIL, about half
the cost of a cffi call, so touching adds little to what is timed.
``stamp(p, n)`` writes the first and last byte of the object with a tag
derived from its address and size, ``check(p, n)`` tells whether both bytes
still hold it, and ``stamp_pages(p, n)`` also writes one byte in every 4 KiB
page (large objects).  Writing makes the memory resident,
so peak RSS is real; the checks that the workloads run on a sample of the
objects they free (and on the whole live set at the end) catch two live
objects that overlap, which would be an allocator bug.  A use-after-free by
the allocator's client would not be noticed: these are benchmarks, not tests.

Threads are Python threads: with the GIL, the workloads measure allocator
plus interpreter; all allocators run the same interpreter code.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib
import io
import os
import pathlib
import resource
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BENCH = pathlib.Path(__file__).resolve().parent.parent
ROOT = BENCH.parent
for _p in (str(BENCH), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import peers  # noqa: E402  (bench/peers.py, after the path is set)

from realalloc.tools.workloads.common import Allocator  # noqa: E402

ALLOCATORS = (
    "realalloc",
    "realalloc-zero",
    "glibc",
    "glibc-cffi",
    "jemalloc",
    "mimalloc",
    "tcmalloc",
)
"""The allocators the runner runs by default, in table order."""
EXTRA = ("jemalloc-cffi", "mimalloc-cffi", "tcmalloc-cffi")
"""Allocators run only when asked for."""
CFFI = "-cffi"
"""Suffix of an allocator called through peers.py's cffi module instead of its capi one."""

PRELOAD: dict[str, tuple[str, str]] = {
    "jemalloc": ("libjemalloc.so.2", "libjemalloc2"),
    "mimalloc": ("libmimalloc.so.2", "libmimalloc2.0"),
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc-minimal4"),
}
"""Peer run through LD_PRELOAD -> (soname, Debian package)."""

MIB = 1 << 20


def base_name(allocator: str) -> str:
    """The allocator behind a runner name: ``mimalloc-cffi`` -> ``mimalloc``."""
    return allocator.removesuffix(CFFI)


def preload_path(name: str) -> str | None:
    """Full path of the library to LD_PRELOAD for allocator ``name`` (None: none or absent)."""
    entry = PRELOAD.get(base_name(name))
    return peers.find_library(entry[0]) if entry else None


def unavailable(name: str) -> str | None:
    """Why allocator ``name`` cannot run here, or None if it can."""
    entry = PRELOAD.get(base_name(name))
    if entry and preload_path(name) is None:
        soname, package = entry
        return f"{soname} not found (apt-get install -y {package})"
    return None


def _mapping_of(addr: int) -> str:
    """Path of the file mapped at ``addr`` in this process ('' if anonymous)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi:
                return parts[5].strip() if len(parts) == 6 else ""
    return ""


def _peer_version(name: str, lib: Any) -> str:
    """Version of preloaded peer ``name`` (``lib``: ctypes handle of its library)."""
    if name == "mimalloc":
        lib.mi_version.restype = ctypes.c_int
        v = lib.mi_version()
        return f"{v // 100}.{v % 100 // 10}.{v % 10}"
    if name == "tcmalloc":
        lib.tc_version.restype = ctypes.c_char_p
        lib.tc_version.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        return (lib.tc_version(None, None, None) or b"?").decode().split()[-1]
    if name == "jemalloc":
        out = ctypes.c_char_p()
        size = ctypes.c_size_t(ctypes.sizeof(out))
        lib.mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.mallctl.argtypes += [ctypes.c_void_p, ctypes.c_size_t]
        if lib.mallctl(b"version", ctypes.byref(out), ctypes.byref(size), None, 0) == 0:
            return (out.value or b"?").decode().split("-")[0]
    return "?"


def _check_preloaded(name: str, malloc: Callable[[int], int], free: Callable[[int], None]) -> str:
    """Check that ``malloc`` in this process is peer ``name``'s; return its version."""
    path = preload_path(name)
    if path is None or path not in os.environ.get("LD_PRELOAD", ""):
        raise RuntimeError(f"{name}: run this process with LD_PRELOAD={path}")
    malloc_addr = ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p).value or 0
    where = _mapping_of(malloc_addr)
    if os.path.realpath(where) != os.path.realpath(path):
        raise RuntimeError(f"{name}: malloc resolves to {where or '?'}, not {path}")
    lib = ctypes.CDLL(path)  # the already loaded copy
    addr = malloc(64)
    try:
        if name == "mimalloc":
            lib.mi_is_in_heap_region.restype = ctypes.c_bool
            owned = bool(lib.mi_is_in_heap_region(ctypes.c_void_p(addr)))
        elif name == "tcmalloc":
            owned = lib.MallocExtension_GetOwnership(ctypes.c_void_p(addr)) == 1
        else:
            owned = True  # jemalloc has no ownership query; malloc's mapping was checked
    finally:
        free(addr)
    if not owned:
        raise RuntimeError(f"{name}: malloc returned memory the library does not own")
    return _peer_version(name, lib)


@dataclass
class Loaded:
    allocator: Allocator
    heap: Any = None
    """realalloc's heap (for ``python_mallocs``), None for the others."""


def load_allocator(name: str) -> Loaded:
    """The allocator ``name`` for this process (peers: LD_PRELOAD set by the runner)."""
    if name not in ALLOCATORS + EXTRA:
        known = ", ".join(ALLOCATORS + EXTRA)
        raise ValueError(f"unknown allocator {name!r}; one of {known}")
    if name in ("realalloc", "realalloc-zero"):
        import realalloc
        from realalloc import _debug

        if _debug.DEBUG != 0:
            raise RuntimeError(f"realalloc runs at REALALLOC_DEBUG={_debug.DEBUG}; set it to 0")
        heap = realalloc.Heap(zero=name == "realalloc-zero")
        alloc = Allocator(name, heap.malloc, heap.free, realalloc.__version__, heap.close)
        return Loaded(alloc, heap)
    base = base_name(name)
    if name.endswith(CFFI):
        lib = peers.load("glibc")
        malloc, free, version_of = lib.g_malloc, lib.g_free, lib.g_version
    else:
        mod = peers.load("glibc", "capi")
        malloc, free, version_of = mod.malloc, mod.free, mod.version
    if base == "glibc":
        if os.environ.get("LD_PRELOAD"):
            raise RuntimeError("glibc: LD_PRELOAD is set")
        v = version_of()
        version = f"{v // 100}.{v % 100}"
    else:
        version = _check_preloaded(base, malloc, free)
    return Loaded(Allocator(name, malloc, free, version))


# -- touching memory -------------------------------------------------------------------------

_MEM_SOURCE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

/* A tag that differs between neighbouring objects and sizes. */
static unsigned char tag_of(uintptr_t p, size_t n) {
    return (unsigned char)((p >> 3) ^ (p >> 11) ^ (p >> 19) ^ n ^ 0xA5u);
}

static int addr_size(PyObject *const *args, Py_ssize_t nargs, uintptr_t *p, size_t *n) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "expected (addr, size)");
        return -1;
    }
    unsigned long long a = PyLong_AsUnsignedLongLong(args[0]);
    if (a == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    unsigned long long s = PyLong_AsUnsignedLongLong(args[1]);
    if (s == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    if (a == 0 || s < 2) {
        PyErr_SetString(PyExc_ValueError, "need a non-NULL address and a size >= 2");
        return -1;
    }
    *p = (uintptr_t)a;
    *n = (size_t)s;
    return 0;
}

static void do_stamp(uintptr_t p, size_t n) {
    volatile unsigned char *b = (volatile unsigned char *)p;
    unsigned char t = tag_of(p, n);
    b[0] = t;
    b[n - 1] = (unsigned char)~t;
}

/* stamp(addr, size): write the first and the last byte of the object. */
static PyObject *stamp(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    uintptr_t p;
    size_t n;
    if (addr_size(args, nargs, &p, &n)) return NULL;
    do_stamp(p, n);
    Py_RETURN_NONE;
}

/* check(addr, size) -> bool: both bytes still hold what stamp wrote. */
static PyObject *check(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    uintptr_t p;
    size_t n;
    if (addr_size(args, nargs, &p, &n)) return NULL;
    volatile unsigned char *b = (volatile unsigned char *)p;
    unsigned char t = tag_of(p, n);
    return PyBool_FromLong(b[0] == t && b[n - 1] == (unsigned char)~t);
}

/* stamp_pages(addr, size): stamp, and write one byte in every 4 KiB page between. */
static PyObject *stamp_pages(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    uintptr_t p;
    size_t n;
    if (addr_size(args, nargs, &p, &n)) return NULL;
    volatile unsigned char *b = (volatile unsigned char *)p;
    for (size_t i = 4096; i < n - 1; i += 4096) b[i] = 1;
    do_stamp(p, n);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"stamp", (PyCFunction)(void (*)(void))stamp, METH_FASTCALL, NULL},
    {"check", (PyCFunction)(void (*)(void))check, METH_FASTCALL, NULL},
    {"stamp_pages", (PyCFunction)(void (*)(void))stamp_pages, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "MODNAME", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_MODNAME(void) { return PyModule_Create(&moddef); }
"""


def _mem_module_name() -> str:
    parts = [_MEM_SOURCE, " ".join(peers.CFLAGS), sys.version]
    parts.append(sysconfig.get_config_var("EXT_SUFFIX") or "")
    return "_ra_wl_mem_" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def build_memory() -> tuple[str, pathlib.Path]:
    """Compile the stamp/check extension into peers' cache directory unless it is there."""
    modname, out = _mem_module_name(), peers.cache_dir()
    target = out / (modname + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
    if target.exists():
        return modname, out
    from setuptools import Distribution, Extension  # type: ignore[import-untyped,unused-ignore]

    with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as tmp:
        src = pathlib.Path(tmp) / f"{modname}.c"
        src.write_text(_MEM_SOURCE.replace("MODNAME", modname))
        ext = Extension(modname, sources=[str(src)], extra_compile_args=peers.CFLAGS)
        dist = Distribution({"ext_modules": [ext], "script_name": "common.py"})
        cmd = dist.get_command_obj("build_ext")
        cmd.build_lib = cmd.build_temp = tmp
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            try:
                dist.run_command("build_ext")
            except Exception as e:
                raise RuntimeError(f"building {modname} failed: {e}\n{sink.getvalue()}") from e
        [built] = cmd.get_outputs()
        os.replace(built, target)  # atomic: a concurrent loader never sees half a file
    return modname, out


def build_helpers() -> None:
    """Build the glibc modules (peers.py) and the stamp/check extension, unless cached."""
    for flavour in peers.FLAVOURS:
        peers.build("glibc", flavour)
    build_memory()


def memory() -> Any:
    """The stamp/check module: ``stamp``, ``check``, ``stamp_pages`` (addr, size)."""
    modname, out = build_memory()
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    return importlib.import_module(modname)


# -- memory use ------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    """Peak resident set of this process so far (ru_maxrss, KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def minor_faults() -> int:
    """Minor page faults of this process so far (first touches of mapped memory)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def rss_mib() -> float:
    """Current resident set of this process, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB
