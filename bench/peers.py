"""Peer allocators for the benchmarks: small extension modules built at benchmark time.

Each peer (glibc, mimalloc, tcmalloc) is built in two flavours, both compiled by
setuptools with the same extra flags as realalloc's C code (csrc/build_shim.py
``CFLAGS``), both taking and returning addresses as Python ``int`` as realalloc
does:

* ``capi`` (the like-for-like comparison): a plain CPython extension whose
  ``malloc(size)`` and ``calloc(size)`` (``calloc(1, size)``) are
  METH_FASTCALL|METH_KEYWORDS functions and ``free(addr)`` a METH_O one,
  converting arguments exactly as realalloc's csrc/fastpath.c does
  (``PyLong_AsLongLongAndOverflow`` for the size, ``PyLong_FromUnsignedLong``
  for the address, ``PyLong_AsUnsignedLong`` in ``free``), keeping the GIL.
  Same calling convention as ``Heap.malloc`` / ``Heap.free``, so the
  difference is the allocator.
* ``cffi`` (how the issue first called the peers): a cffi module in API mode,
  out of line (``ffibuilder.set_source(...)`` then ``compile``), exporting::

      uintptr_t g_malloc(size_t size);   /* the peer's malloc, address as an int */
      uintptr_t g_calloc(size_t size);   /* calloc(1, size) */
      void      g_free(uintptr_t addr);  /* the peer's free */

  Every cffi API-mode call releases and re-takes the GIL and saves and
  restores errno around the C call: on CPython 3.11 that costs more than
  glibc's malloc+free pair itself.

The glibc modules also have a no-op pair (capi ``nop_malloc`` / ``nop_free``,
cffi ``g_nop_malloc`` / ``g_nop_free``) that measures the two Python calls
alone.

mimalloc (``mi_malloc``/``mi_calloc``/``mi_free``, Debian libmimalloc2.0) and
tcmalloc (``tc_malloc``/``tc_calloc``/``tc_free``, Debian libtcmalloc-minimal4)
modules link the library's shared object by full path (Debian ships no ``-dev``
package with the unversioned symlink here) and call its *prefixed* entry
points.  CPython loads extension modules with RTLD_LOCAL, so the library's own
``malloc`` / ``free`` never replace glibc's for the interpreter, and several
peers can share a process; ``owns(addr)`` / ``g_owns(addr)`` asks the library
whether it owns an address: the sanity check that ``malloc`` reached it.
(bench/workloads instead runs peers by LD_PRELOAD, through the glibc modules.)

Modules are built into a cache directory under the system temp dir
(``$REALALLOC_BENCH_BUILD`` overrides it), named by a hash of the sources,
flags, library and Python version; never in the repository.  Usage::

    from peers import load
    mod = load("mimalloc", "capi")    # None if libmimalloc.so.2 is absent
    a = mod.malloc(64); mod.free(a)
    lib = load("mimalloc")            # the cffi flavour: lib.g_malloc(64), lib.g_free(a)

``python bench/peers.py [NAME]`` builds every available peer (or NAME) and checks
it, each in a subprocess of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import os
import pathlib
import platform
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from typing import Any

CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra"]
"""Same as CFLAGS in csrc/build_shim.py, which compiles realalloc's C code."""

LIBDIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
FLAVOURS = ("cffi", "capi")


@dataclass(frozen=True)
class Peer:
    name: str
    debian_package: str
    library: str | None
    """soname to link against; None for the C library itself"""
    decls: str
    """C declarations and helpers shared by both flavours"""
    alloc: str
    """C expression: allocate ``n`` bytes, a ``void *``"""
    calloc: str
    """C expression: allocate ``n`` zeroed bytes (``calloc(1, n)``), a ``void *``"""
    free: str
    """C statement: free ``p``"""
    owns: str
    """C expression: does the library own ``p``"""
    version: str
    """C expression: version as major * 100 + minor"""


PEERS: dict[str, Peer] = {
    "glibc": Peer(
        "glibc",
        "libc6",
        None,
        r"""
#include <gnu/libc-version.h>
static int libc_version(void) {
    const char *v = gnu_get_libc_version(); /* "2.36" */
    int major = 0, minor = 0;
    while (*v >= '0' && *v <= '9') major = major * 10 + (*v++ - '0');
    if (*v == '.') v++;
    while (*v >= '0' && *v <= '9') minor = minor * 10 + (*v++ - '0');
    return major * 100 + minor;
}
""",
        "malloc(n)",
        "calloc(1, n)",
        "free(p)",
        "p != NULL",
        "libc_version()",
    ),
    "mimalloc": Peer(
        "mimalloc",
        "libmimalloc2.0",
        "libmimalloc.so.2",
        r"""
/* mimalloc.h is in libmimalloc-dev; declare the few entry points used. */
void *mi_malloc(size_t size);
void *mi_calloc(size_t count, size_t size);
void mi_free(void *p);
bool mi_is_in_heap_region(const void *p);
int mi_version(void);
""",
        "mi_malloc(n)",
        "mi_calloc(1, n)",
        "mi_free(p)",
        "mi_is_in_heap_region(p)",
        "mi_version()",
    ),
    "tcmalloc": Peer(
        "tcmalloc",
        "libtcmalloc-minimal4",
        "libtcmalloc_minimal.so.4",
        r"""
/* gperftools headers are in libgoogle-perftools-dev; declare what is used. */
void *tc_malloc(size_t size);
void *tc_calloc(size_t count, size_t size);
void tc_free(void *p);
const char *tc_version(int *major, int *minor, const char **patch);
int MallocExtension_GetOwnership(const void *p); /* 1 = owned, 2 = not owned */
static int tcmalloc_version(void) {
    int major = 0, minor = 0;
    tc_version(&major, &minor, NULL);
    return major * 100 + minor;
}
""",
        "tc_malloc(n)",
        "tc_calloc(1, n)",
        "tc_free(p)",
        "MallocExtension_GetOwnership(p) == 1",
        "tcmalloc_version()",
    ),
}

_PRELUDE = """
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
"""

_CFFI_CDEF = """
uintptr_t g_malloc(size_t size);
uintptr_t g_calloc(size_t size);
void g_free(uintptr_t addr);
int g_owns(uintptr_t addr);
int g_version(void);
"""

_CFFI_GLIBC_CDEF = """
uintptr_t g_nop_malloc(size_t size);
void g_nop_free(uintptr_t addr);
"""

_CFFI_GLIBC_SOURCE = r"""
/* An address-sized result, like the others (large ints are not cached). */
uintptr_t g_nop_malloc(size_t n) { return (uintptr_t)0x7f0000000000ull + n; }
void g_nop_free(uintptr_t addr) { (void)addr; }
"""


def cffi_source(peer: Peer) -> tuple[str, str]:
    """(cdef, C source) of the cffi flavour."""
    src = (
        _PRELUDE
        + peer.decls
        + f"""
uintptr_t g_malloc(size_t n) {{ return (uintptr_t){peer.alloc}; }}
uintptr_t g_calloc(size_t n) {{ return (uintptr_t){peer.calloc}; }}
void g_free(uintptr_t addr) {{ void *p = (void *)addr; {peer.free}; }}
int g_owns(uintptr_t addr) {{ const void *p = (const void *)addr; return {peer.owns}; }}
int g_version(void) {{ return {peer.version}; }}
"""
    )
    cdef = _CFFI_CDEF
    if peer.name == "glibc":
        src += _CFFI_GLIBC_SOURCE
        cdef += _CFFI_GLIBC_CDEF
    return cdef, src


def capi_source(peer: Peer, modname: str) -> str:
    """C source of the CPython-API flavour: same conventions as csrc/fastpath.c."""
    nop = peer.name == "glibc"
    return (
        "#define PY_SSIZE_T_CLEAN\n#include <Python.h>\n"
        + _PRELUDE
        + peer.decls
        + r"""
/* The argument handling of HeapBase.malloc and .free, shared by the real and
 * the no-op entry points.  Return 0 and the value, or -1 with an exception. */
static int size_arg(const char *name, PyObject *const *args, Py_ssize_t nargsf,
                    PyObject *kwnames, size_t *out) {
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames || !PyLong_CheckExact(args[0])) {
        PyErr_Format(PyExc_TypeError, "%s() takes one int", name);
        return -1;
    }
    int overflow;
    long long size = PyLong_AsLongLongAndOverflow(args[0], &overflow);
    if (overflow || size < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bad size");
        return -1;
    }
    *out = (size_t)size;
    return 0;
}

static int addr_arg(const char *name, PyObject *arg, uintptr_t *out) {
    if (!PyLong_CheckExact(arg)) {
        PyErr_Format(PyExc_TypeError, "%s() takes one int", name);
        return -1;
    }
    *out = (uintptr_t)PyLong_AsUnsignedLong(arg);
    return *out == (uintptr_t)-1 && PyErr_Occurred() ? -1 : 0;
}

/* malloc(size) -> int: METH_FASTCALL | METH_KEYWORDS, as HeapBase.malloc. */
static PyObject *py_malloc(PyObject *self, PyObject *const *args, Py_ssize_t nargsf,
                           PyObject *kwnames) {
    (void)self;
    size_t n;
    if (size_arg("malloc", args, nargsf, kwnames, &n) < 0) return NULL;
    void *p = ALLOC;
    if (!p) return PyErr_NoMemory();
    return PyLong_FromUnsignedLong((uintptr_t)p);
}

/* calloc(size) -> int: calloc(1, size), zeroed as Heap(zero=True).malloc. */
static PyObject *py_calloc(PyObject *self, PyObject *const *args, Py_ssize_t nargsf,
                           PyObject *kwnames) {
    (void)self;
    size_t n;
    if (size_arg("calloc", args, nargsf, kwnames, &n) < 0) return NULL;
    void *p = CALLOC;
    if (!p) return PyErr_NoMemory();
    return PyLong_FromUnsignedLong((uintptr_t)p);
}

/* free(addr): METH_O, as HeapBase.free. */
static PyObject *py_free(PyObject *self, PyObject *arg) {
    (void)self;
    uintptr_t addr;
    if (addr_arg("free", arg, &addr) < 0) return NULL;
    void *p = (void *)addr;
    FREE;
    Py_RETURN_NONE;
}

static PyObject *py_nop_malloc(PyObject *self, PyObject *const *args, Py_ssize_t nargsf,
                               PyObject *kwnames) {
    (void)self;
    size_t n;
    if (size_arg("nop_malloc", args, nargsf, kwnames, &n) < 0) return NULL;
    return PyLong_FromUnsignedLongLong(0x7f0000000000ull + (uintptr_t)n);
}

static PyObject *py_nop_free(PyObject *self, PyObject *arg) {
    (void)self;
    uintptr_t addr;
    if (addr_arg("nop_free", arg, &addr) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_owns(PyObject *self, PyObject *arg) {
    (void)self;
    uintptr_t addr = (uintptr_t)PyLong_AsUnsignedLong(arg);
    if (addr == (uintptr_t)-1 && PyErr_Occurred()) return NULL;
    const void *p = (const void *)addr;
    return PyBool_FromLong(OWNS);
}

static PyObject *py_version(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyLong_FromLong(VERSION);
}

static PyMethodDef methods[] = {
    {"version", (PyCFunction)py_version, METH_NOARGS, NULL},
    {"malloc", (PyCFunction)(void (*)(void))py_malloc, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"calloc", (PyCFunction)(void (*)(void))py_calloc, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"free", (PyCFunction)py_free, METH_O, NULL},
    {"owns", (PyCFunction)py_owns, METH_O, NULL},
    NOP_METHODS
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "MODNAME", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_MODNAME(void) {
    (void)py_nop_malloc;
    (void)py_nop_free;
    return PyModule_Create(&moddef);
}
""".replace("CALLOC", peer.calloc)
        .replace("ALLOC", peer.alloc)
        .replace("FREE;", peer.free + ";")
        .replace("OWNS", peer.owns)
        .replace("VERSION", peer.version)
        .replace("MODNAME", modname)
        .replace(
            "NOP_METHODS",
            '{"nop_malloc", (PyCFunction)(void (*)(void))py_nop_malloc, '
            'METH_FASTCALL | METH_KEYWORDS, NULL},\n    {"nop_free", (PyCFunction)py_nop_free, '
            "METH_O, NULL},"
            if nop
            else "",
        )
    )


def find_library(soname: str) -> str | None:
    """Full path of a shared library by soname, or None."""
    for d in LIBDIRS:
        path = pathlib.Path(d) / soname
        if path.exists():
            return str(path.resolve())
    return None


def missing(name: str) -> str | None:
    """Why peer ``name`` cannot be built here, or None if it can."""
    peer = PEERS[name]
    if peer.library is None:
        return None
    if find_library(peer.library) is None:
        return (
            f"{peer.library} not found in {', '.join(LIBDIRS)} "
            f"(apt-get install -y {peer.debian_package})"
        )
    return None


def cache_dir() -> pathlib.Path:
    root = os.environ.get("REALALLOC_BENCH_BUILD") or os.path.join(
        tempfile.gettempdir(), "realalloc-bench-peers"
    )
    path = pathlib.Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _libpath(peer: Peer) -> str | None:
    return find_library(peer.library) if peer.library else None


def _module_name(peer: Peer, flavour: str) -> str:
    libpath = _libpath(peer)
    parts = [
        flavour,
        *(cffi_source(peer) if flavour == "cffi" else (capi_source(peer, "M"),)),
        " ".join(CFLAGS),
        libpath or "",
        str(os.stat(libpath).st_mtime_ns) if libpath else "",
        sys.version,
        sysconfig.get_config_var("EXT_SUFFIX") or "",
    ]
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]
    return f"_ra_peer_{peer.name}_{flavour}_{digest}"


def _compile_capi(peer: Peer, modname: str, tmp: str, verbose: bool) -> str:
    from setuptools import Distribution, Extension  # type: ignore[import-untyped,unused-ignore]

    src = pathlib.Path(tmp) / f"{modname}.c"
    src.write_text(capi_source(peer, modname))
    libpath = _libpath(peer)
    ext = Extension(
        modname,
        sources=[str(src)],
        extra_compile_args=CFLAGS,
        extra_link_args=[libpath] if libpath else [],
    )
    dist = Distribution({"ext_modules": [ext], "script_name": "peers.py"})
    cmd = dist.get_command_obj("build_ext")
    cmd.build_lib = tmp
    cmd.build_temp = tmp
    cmd.force = True
    dist.run_command("build_ext")
    [out] = cmd.get_outputs()
    return str(out)


def _compile_cffi(peer: Peer, modname: str, tmp: str, verbose: bool) -> str:
    from cffi import FFI  # type: ignore[import-untyped,unused-ignore]

    cdef, src = cffi_source(peer)
    libpath = _libpath(peer)
    ffi = FFI()
    ffi.cdef(cdef)
    ffi.set_source(
        modname,
        src,
        extra_compile_args=CFLAGS,
        extra_link_args=[libpath] if libpath else [],
    )
    return str(ffi.compile(tmpdir=tmp, verbose=verbose))


def build(name: str, flavour: str = "cffi", verbose: bool = False) -> tuple[str, pathlib.Path]:
    """Compile peer ``name`` in ``flavour`` unless cached; return (module name, directory)."""
    peer = PEERS[name]
    why = missing(name)
    if why:
        raise FileNotFoundError(why)
    modname = _module_name(peer, flavour)
    out = cache_dir()
    target = out / (modname + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
    if target.exists():
        return modname, out
    compile_ = _compile_cffi if flavour == "cffi" else _compile_capi
    # Build in a private directory, then move the module in: concurrent builds
    # of the same peer never see a half-written file.
    with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as tmp:
        sink = sys.stdout if verbose else io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            try:
                built = compile_(peer, modname, tmp, verbose)
            except Exception as e:
                raise RuntimeError(f"building {name} ({flavour}) failed: {e}\n{sink}") from e
        os.replace(built, target)
    return modname, out


def load(name: str, flavour: str = "cffi") -> Any:
    """Peer ``name`` (built if needed), or None if its library is absent.

    The cffi flavour returns the module's ``lib``; the capi flavour the module.
    """
    if missing(name):
        return None
    modname, out = build(name, flavour)
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    module = importlib.import_module(modname)
    return module.lib if flavour == "cffi" else module


def check(name: str) -> str:
    """Allocate through both flavours of peer ``name`` (malloc and calloc), free; one line."""
    lib = load(name)
    if lib is None:
        return f"{name}: skipped: {missing(name)}"
    mod = load(name, "capi")
    sizes = (8, 64, 1024, 32768)
    for flavour, m, c, f, owns in (
        ("cffi", lib.g_malloc, lib.g_calloc, lib.g_free, lib.g_owns),
        ("capi", mod.malloc, mod.calloc, mod.free, mod.owns),
    ):
        addrs = [m(n) for n in sizes] + [c(n) for n in sizes]
        if 0 in addrs or len(set(addrs)) != len(addrs):
            raise MemoryError(f"{name} ({flavour}): bad addresses {addrs}")
        if not all(owns(a) for a in addrs):
            raise RuntimeError(f"{name} ({flavour}): returned memory the library does not own")
        for a in addrs:
            f(a)
    where = _libpath(PEERS[name]) or "libc.so.6"
    if mod.version() != lib.g_version():
        raise RuntimeError(f"{name}: the cffi and capi modules see different versions")
    return f"{name}: ok (cffi, capi), version {lib.g_version()}, {where}"


def cpu_model() -> str:
    """The CPU's model name, for the benchmark headers."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> str:
    """``git describe --always --dirty`` of the checkout, or "unknown"."""
    try:
        proc = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )
    except OSError:
        return "unknown"
    return proc.stdout.strip() or "unknown"


if __name__ == "__main__":
    # One subprocess per peer, so a failure names its peer.
    if len(sys.argv) > 1:
        print(check(sys.argv[1]))
    else:
        for peer_name in PEERS:
            subprocess.run([sys.executable, __file__, peer_name], check=True)
