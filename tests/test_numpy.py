"""realalloc as numpy's data allocator (realalloc.numpy, csrc/numpy.c), with real arrays.

Every test checks the heap afterwards (``heap.check()``).  The handler's C
functions are also called directly through ctypes, as a C client of numpy's
API would: that is how the paths numpy itself rarely takes (a foreign
pointer, realloc without the GIL, an overflowing calloc, a double free) are
driven on purpose.
"""

from __future__ import annotations

import ctypes
import gc
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import threading
import tracemalloc
import weakref

import pytest

np = pytest.importorskip("numpy", reason="numpy is not installed: pip install realalloc[numpy]")

from support import addr_re  # noqa: E402

import realalloc  # noqa: E402
import realalloc.numpy as rnp  # noqa: E402
from realalloc.integrations import numpy as integration  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
NUMPY_TRACE_DOMAIN = 389047
SIZES = (1, 8, 15, 16, 17, 24, 31, 32, 100, 1000, 4096, 32768, 32769, 100_000, 1 << 20, 3 << 20)
LIBC = ctypes.CDLL(None)
LIBC.malloc.restype = ctypes.c_void_p
LIBC.malloc.argtypes = [ctypes.c_size_t]
LIBC.free.argtypes = [ctypes.c_void_p]


@pytest.fixture
def heap():
    h = realalloc.Heap()
    yield h
    gc.collect()
    if not h.closed:
        h.check()
        h.close()


@pytest.fixture(autouse=True)
def _no_handler_left():
    """Each test starts and ends with numpy's default handler and nothing installed."""
    assert rnp.handler_name() == "default_allocator"
    yield
    rnp.uninstall()
    assert rnp.handler_name() == "default_allocator"


def fill(arr, seed: int) -> bytes:
    """Write a pattern over the whole array (as bytes); return it."""
    view = arr.view(np.uint8).reshape(-1)
    data = (np.arange(view.size, dtype=np.uint64) * 2654435761 + seed).astype(np.uint8)
    view[:] = data
    return data.tobytes()


def in_heap(heap, arr) -> bool:
    info = heap.span_of(arr.ctypes.data)
    return info is not None and info.base <= arr.ctypes.data < info.base + info.npages * 8192


# -- the handler's C functions, as numpy calls them ---------------------------

_CTX = ctypes.c_void_p
MALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, _CTX, ctypes.c_size_t)  # CFUNCTYPE: GIL released
CALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, _CTX, ctypes.c_size_t, ctypes.c_size_t)
REALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, _CTX, ctypes.c_void_p, ctypes.c_size_t)
FREE = ctypes.CFUNCTYPE(None, _CTX, ctypes.c_void_p, ctypes.c_size_t)


class _Allocator(ctypes.Structure):  # numpy: PyDataMemAllocator
    _fields_ = (
        ("ctx", _CTX),
        ("malloc", MALLOC),
        ("calloc", CALLOC),
        ("realloc", REALLOC),
        ("free", FREE),
    )


class _Handler(ctypes.Structure):  # numpy: PyDataMem_Handler
    _fields_ = (
        ("name", ctypes.c_char * 127),
        ("version", ctypes.c_uint8),
        ("allocator", _Allocator),
    )


def c_handler(handler: rnp.NumpyHandler) -> _Allocator:
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    struct = _Handler.from_address(get(handler.capsule, b"mem_handler"))
    assert struct.name == b"realalloc" and struct.version == 1
    return struct.allocator


@pytest.fixture
def unraisable(monkeypatch):
    """(type, message, object) of each exception reported as unraisable (not the
    exception: its traceback would keep the test's frames, and arrays, alive)."""
    seen: list[tuple[type[BaseException], str, str]] = []

    def hook(args):
        seen.append((args.exc_type, str(args.exc_value), str(args.object)))

    monkeypatch.setattr(sys, "unraisablehook", hook)
    return seen


# -- installing ----------------------------------------------------------------


def test_install_names_realalloc_and_uninstall_restores(heap):
    handler = rnp.install(heap)
    assert rnp.handler_name() == "realalloc"
    assert rnp.current() == handler == rnp.installed()
    assert handler.heap is heap
    a = np.arange(1000)
    assert integration._multiarray.get_handler_name(a) == "realalloc"
    assert in_heap(heap, a)
    assert rnp.uninstall() is True
    assert rnp.current() is None and rnp.installed() is None
    assert rnp.uninstall() is False
    b = np.arange(1000)
    assert not in_heap(heap, b)
    assert integration._multiarray.get_handler_name(b) == "default_allocator"
    del a
    heap.check()


def test_default_heap_when_none():
    handler = rnp.install()
    assert handler.heap is realalloc.default_heap()
    a = np.ones(300)
    assert in_heap(realalloc.default_heap(), a)


def test_install_twice_then_uninstall_goes_back_to_numpy_default(heap):
    rnp.install(heap)
    other = realalloc.Heap()
    try:
        rnp.install(other)
        assert rnp.current().heap is other
        assert rnp.uninstall()
        assert rnp.handler_name() == "default_allocator"
    finally:
        other.close()


# -- real arrays ---------------------------------------------------------------


def test_arrays_of_every_size_live_in_the_heap_aligned_and_intact(heap):
    with rnp.using(heap):
        arrays = [(np.empty(n, np.uint8), n) for n in SIZES for _ in range(3)]
        arrays += [(np.zeros(n // 8 + 1, np.float64), n) for n in SIZES]
    patterns = [fill(a, i) for i, (a, _) in enumerate(arrays)]
    addrs = [a.ctypes.data for a, _ in arrays]
    assert len(set(addrs)) == len(addrs)
    for (a, _), data in zip(arrays, patterns, strict=True):
        assert in_heap(heap, a)
        assert a.ctypes.data % 16 == 0, f"{a.nbytes} bytes at {a.ctypes.data:#x}"
        assert heap.usable_size(a.ctypes.data) >= a.nbytes
        assert a.view(np.uint8).tobytes() == data
    heap.check()
    del arrays, a
    heap.check()


def test_stats_and_memory_report_count_numpy_arrays(heap):
    before, report = heap.stats(), heap.memory_report()
    with rnp.using(heap) as handler:
        small = [np.empty(64, np.float64) for _ in range(100)]  # 512 B each
        large = np.empty(1 << 20, np.uint8)
    after = heap.stats()
    assert after.mallocs - before.mallocs >= 101
    assert after.heap_alloc - before.heap_alloc >= 100 * 512 + (1 << 20)
    assert heap.memory_report().in_use - report.in_use >= 100 * 512 + (1 << 20)
    assert handler.stats().mallocs == 101
    del small, large
    handler.release_cache()
    done = heap.stats()
    assert done.frees - after.frees >= 101
    assert done.heap_alloc <= before.heap_alloc
    assert handler.stats().frees == 101
    heap.check()


def test_freed_blocks_are_kept_reused_within_bounds_and_released(heap):
    with rnp.using(heap) as handler:
        for n in (100, 1 << 20):  # a small class; a large object's page count
            a = np.empty(n, np.uint8)
            addr, before = a.ctypes.data, handler.stats()
            del a
            assert handler.stats().cached_blocks == before.cached_blocks + 1
            b = np.empty(n, np.uint8)
            assert b.ctypes.data == addr
            assert handler.stats().cache_hits == before.cache_hits + 1
            del b
        assert heap.stats().heap_alloc >= (1 << 20) + 112  # kept blocks count as in use
        many = [np.empty(n, np.uint8) for n in (100,) * 20 + (1 << 20,) * 12]
        del many
        st = handler.stats()
        assert st.cached_blocks == rnp.SMALL_CACHE_SLOTS + rnp.LARGE_CACHE_SLOTS
        assert st.cached_bytes == rnp.SMALL_CACHE_SLOTS * 112 + rnp.LARGE_CACHE_SLOTS * (1 << 20)
        assert handler.release_cache() == st.cached_blocks
        assert handler.stats()[-2:] == (0, 0)
        assert heap.stats().heap_alloc == 0
    heap.check()


def test_resize_in_place_while_the_size_class_fits_and_moves_otherwise(heap):
    with rnp.using(heap) as handler:
        a = np.arange(100, dtype=np.uint8)  # 100 B: class 112
        addr = a.ctypes.data
        a.resize(110, refcheck=False)
        assert a.ctypes.data == addr and handler.stats().reallocs_in_place == 1
        a.resize(5000, refcheck=False)
        assert a.ctypes.data != addr and in_heap(heap, a)
        assert list(a[:100]) == list(range(100))
        for n in (40_000, 3 << 20, 64, 1):
            old = bytes(a[: min(n, a.size)])
            a.resize(n, refcheck=False)
            assert in_heap(heap, a) and bytes(a[: len(old)]) == old
        assert handler.stats().reallocs == 6
    heap.check()


def test_fromstring_with_sep_reallocs_without_the_gil(heap):
    text = " ".join(str(i) for i in range(20_000))
    with rnp.using(heap) as handler:
        a = np.fromstring(text, dtype=np.int64, sep=" ")
        b = np.fromstring(text, dtype=np.float64, sep=" ")
    assert a.tolist() == list(range(20_000)) and b[-1] == 19_999.0
    assert in_heap(heap, a) and in_heap(heap, b)
    assert handler.stats().reallocs >= 2
    heap.check()


def test_zeros_are_zero_after_dirty_memory_was_freed(heap):
    with rnp.using(heap):
        reused = 0
        for n in (64, 512, 5000, 30_000, 200_000, 1 << 20):
            dirty = [np.full(n, 0xFF, np.uint8) for _ in range(4)]
            addrs = {d.ctypes.data for d in dirty}
            del dirty
            zeros = [np.zeros(n, np.uint8) for _ in range(4)]
            reused += len(addrs & {z.ctypes.data for z in zeros})
            assert all(not z.any() for z in zeros), n
            del zeros
        assert reused > 0  # the dirty memory did come back
    heap.check()


def test_zeros_from_fresh_pages_are_not_cleared_again(heap):
    """calloc of pages the OS never handed out (they read as zero) leaves them
    untouched: no memset, so no resident memory until numpy writes."""
    with rnp.using(heap):
        before = realalloc.rss()
        z = np.zeros(64 << 20, np.uint8)
        grown = realalloc.rss() - before
        assert grown < 16 << 20, f"RSS grew by {grown >> 20} MiB: the pages were cleared"
        assert not z[:: 1 << 16].any()
        z[:: 1 << 12] = 1  # now touched: resident
        assert realalloc.rss() - before >= 48 << 20
    del z
    heap.check()


# -- threads -------------------------------------------------------------------


def run_threads(target, n=4):
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_threads_started_after_install_allocate_from_the_heap(heap):
    rnp.install(heap, threads=True)
    seen: dict[int, tuple[str, bool]] = {}

    def work(i):
        arrays = [np.full(n, i, np.uint8) for n in SIZES]
        seen[i] = (rnp.handler_name(), all(in_heap(heap, a) for a in arrays))

    run_threads(work)
    assert seen == {i: ("realalloc", True) for i in range(4)}
    rnp.uninstall()
    run_threads(work, 1)
    assert seen[0] == ("default_allocator", False)
    heap.check()


def test_install_without_threads_leaves_new_threads_alone(heap):
    rnp.install(heap, threads=False)
    names = []
    run_threads(lambda i: names.append(rnp.handler_name()), 2)
    assert names == ["default_allocator"] * 2


def test_arrays_freed_by_other_threads(heap):
    with rnp.using(heap) as handler:
        arrays = [np.full(n, 7, np.uint8) for n in SIZES for _ in range(8)]
    chunks = [arrays[i::4] for i in range(4)]
    del arrays

    def work(i):
        while chunks[i]:
            chunks[i].pop()

    run_threads(work)
    st = handler.stats()
    assert st.frees == st.mallocs >= len(SIZES) * 8
    assert handler.release_cache() >= 0
    heap.check()
    assert heap.stats().heap_alloc == 0


def test_using_nests_and_each_thread_has_its_own(heap):
    inner = realalloc.Heap()
    try:
        with rnp.using(heap):
            a = np.ones(100)
            with rnp.using(inner):
                b = np.ones(100)
            c = np.ones(100)
        assert in_heap(heap, a) and in_heap(inner, b) and in_heap(heap, c)
        assert rnp.handler_name() == "default_allocator"
        heaps = [realalloc.Heap() for _ in range(3)]
        found = {}

        def work(i):
            with rnp.using(heaps[i]):
                barrier.wait()
                found[i] = [in_heap(heaps[i], np.ones(n, np.uint8)) for n in SIZES]

        barrier = threading.Barrier(3)
        run_threads(work, 3)
        assert found == {i: [True] * len(SIZES) for i in range(3)}
        for h in heaps:
            h.check()
            h.close()
        del b
        inner.check()
    finally:
        inner.close()


# -- the handler's C paths, driven directly --------------------------------------


def test_c_functions_foreign_pointers_go_to_libc(heap):
    handler = rnp.install(heap, threads=False)
    c = c_handler(handler)
    p = LIBC.malloc(100)
    ctypes.memset(p, 0x5A, 100)
    q = c.realloc(c.ctx, p, 100_000)  # libc's realloc: not the heap's memory
    assert heap.span_of(q) is None
    assert ctypes.string_at(q, 100) == b"\x5a" * 100
    c.free(c.ctx, q, 100_000)
    c.free(c.ctx, None, 0)  # free(NULL): nothing
    st = handler.stats()
    assert (st.foreign, st.reallocs, st.frees, st.failures) == (2, 1, 1, 0)
    heap.check()


def test_c_functions_without_the_gil(heap):
    handler = rnp.install(heap, threads=False)
    c = c_handler(handler)  # ctypes releases the GIL around every call
    p = c.malloc(c.ctx, 1000)
    ctypes.memset(p, 1, 1000)
    p = c.realloc(c.ctx, p, 50_000)
    assert heap.span_of(p) is not None and ctypes.string_at(p, 1000) == b"\x01" * 1000
    z = c.calloc(c.ctx, 1000, 8)
    assert ctypes.string_at(z, 8000) == bytes(8000)
    q = c.realloc(c.ctx, None, 10)  # realloc(NULL): malloc
    for addr in (p, z, q):
        c.free(c.ctx, addr, 0)
    assert handler.stats().failures == 0
    handler.release_cache()
    assert heap.stats().heap_alloc == 0
    heap.check()


def test_calloc_overflow_returns_null_and_raises_nothing(heap):
    handler = rnp.install(heap, threads=False)
    c = c_handler(handler)
    assert c.calloc(c.ctx, 1 << 62, 8) is None
    assert handler.stats().failures == 1
    heap.check()


def test_double_free_is_reported_not_raised(heap, unraisable):
    handler = rnp.install(heap, threads=False)
    c = c_handler(handler)
    addrs = []
    for size in (100, 1 << 20):  # a small object; a large one (both kept)
        addrs.append(p := c.malloc(c.ctx, size))
        c.free(c.ctx, p, size)
        c.free(c.ctx, p, size)
    assert [e[0] for e in unraisable] == [realalloc.DoubleFreeError] * 2
    for (_, message, where), addr in zip(unraisable, addrs, strict=True):
        assert re.search(rf"free\({addr_re(addr)}\): the object is already free", message)
        assert re.fullmatch(rf"realalloc's numpy allocator: free\({addr_re(addr)}\)", where)
    assert handler.stats().failures == 2
    handler.release_cache()
    heap.check()


def test_an_allocation_that_fails_returns_null_and_numpy_raises(heap):
    with rnp.using(heap) as handler:
        heap.set_memory_limit(64 << 20)
        with pytest.raises(MemoryError):
            np.empty(100 << 20, np.uint8)
        a = np.empty(1 << 20, np.uint8)  # still works
        assert in_heap(heap, a)
    assert handler.stats().failures == 1
    heap.set_memory_limit(None)
    heap.check()


def test_closed_heap_under_the_handler_fails_allocations(heap, unraisable):
    with rnp.using(heap) as handler:
        heap.close()
        with pytest.raises(MemoryError):
            np.empty(1000)
    assert [e[:2] for e in unraisable] == [(realalloc.HeapClosedError, "the heap is closed")]
    assert unraisable[0][2].startswith("realalloc's numpy allocator: malloc(0x")
    assert handler.stats().failures == 1


# -- re-entrancy -----------------------------------------------------------------


def test_finalizer_that_allocates_inside_a_slow_path_never_hangs(heap, unraisable):
    """A gc that runs inside the Python slow path (MHeap.lock held) runs a
    __del__ that makes arrays: small ones come from the C fast path, a large
    one needs the page heap, which refuses re-entry: NULL, reported."""
    outcome: list[object] = []

    class Finalized:
        def __del__(self):
            for n in (100, 5 << 20):
                try:
                    outcome.append(in_heap(heap, np.ones(n, np.uint8)))
                except MemoryError:
                    outcome.append(MemoryError)

    def inside_slow_path(phase, info):
        if phase == "start" and heap.mheap.lock.held() and not outcome:
            Finalized()  # collected at once: its __del__ runs here

    with rnp.using(heap) as handler:
        np.ones(100, np.uint8)  # this thread's cache exists
        gc.callbacks.append(inside_slow_path)
        old = gc.get_threshold()
        gc.set_threshold(1)
        try:
            for _ in range(20):
                if outcome:
                    break
                big = np.ones(3 << 20, np.uint8)  # a large object: Python's slow path
        finally:
            gc.set_threshold(*old)
            gc.callbacks.remove(inside_slow_path)
    assert outcome[0] is True
    assert outcome[1] is MemoryError
    assert realalloc.ReentrancyError in [e[0] for e in unraisable]
    assert in_heap(heap, big) and big.all()
    assert handler.stats().failures == 1
    heap.check()


# -- lifetime ------------------------------------------------------------------


def test_close_refuses_while_arrays_live_then_succeeds(heap):
    with rnp.using(heap) as handler:
        a = np.ones(100)  # 800 B: a small block the handler keeps when freed
        b = np.ones(1 << 20)
    with pytest.raises(BufferError, match="2 numpy array"):
        heap.close()
    assert not heap.closed and a.sum() == 100
    del a, b
    assert handler.stats().cached_blocks == 2  # kept, yet close() does not wait for them
    heap.close()
    assert heap.closed
    assert handler.release_cache() == 0  # dropped with the heap's memory, never reused
    assert handler.stats()[-2:] == (0, 0)


def test_uninstall_with_live_arrays_keeps_freeing_through_realalloc(heap):
    handler = rnp.install(heap)
    arrays = [np.ones(n, np.uint8) for n in SIZES]
    rnp.uninstall()
    assert integration._multiarray.get_handler_name(arrays[0]) == "realalloc"
    frees = handler.stats().frees
    del arrays
    assert handler.stats().frees == frees + len(SIZES)
    handler.release_cache()
    assert heap.stats().heap_alloc == 0
    heap.check()


def test_an_array_keeps_its_heap_alive():
    # No background scavenger: during a pass its thread holds the heap too.
    heap = realalloc.Heap(background_scavenger=False)
    alive = weakref.ref(heap)
    with rnp.using(heap):
        a = np.ones(1000)
    del heap
    gc.collect()
    assert alive() is not None and a.sum() == 1000
    del a
    gc.collect()
    assert alive() is None


def test_interpreter_exit_with_live_arrays_is_clean(tmp_path):
    """Arrays die at every stage of exit: before realalloc's modules are torn
    down (__main__), after them (a module imported first), in a daemon thread,
    and blocks the handlers kept; with glibc unmapping what it frees at once."""
    (tmp_path / "early.py").write_text("keep = []\n")
    (tmp_path / "main.py").write_text(
        textwrap.dedent("""
        import early  # imported before realalloc: its globals are cleared after realalloc's
        import threading, numpy as np, realalloc, realalloc.numpy as rnp
        rnp.install(threads=True)
        keep = [np.ones(n) for n in (1, 100, 5000, 100_000, 1 << 20)]
        early.keep += [np.ones(n) for n in (1, 100, 5000, 100_000, 1 << 20)]
        other = rnp.install(realalloc.Heap())
        keep.append(np.zeros(1 << 18))
        dropped = [np.ones(n) for n in (100, 1 << 20)]
        del dropped  # kept by the handler
        def hold():
            global held
            held = [np.ones(n) for n in (10, 1 << 20)]
            threading.Event().wait()
        threading.Thread(target=hold, daemon=True).start()
        print("ok")
        """)
    )
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-X", "faulthandler", "main.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok\n" and r.stderr == ""


# -- tracemalloc -----------------------------------------------------------------


def test_arrays_are_traced_once_in_numpys_domain(heap):
    tracemalloc.start()
    try:
        with rnp.using(heap):
            a = np.ones(12345, np.uint8)  # an odd size, to find its trace
            b = np.ones(100_003, np.uint8)
            snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    sizes = {(t.domain, t.size) for t in snapshot.traces}
    assert (NUMPY_TRACE_DOMAIN, 12345) in sizes and (NUMPY_TRACE_DOMAIN, 100_003) in sizes
    assert (realalloc.TRACEMALLOC_DOMAIN, 12345) not in sizes
    assert not [t for t in snapshot.traces if t.domain == realalloc.TRACEMALLOC_DOMAIN]
    del a, b


# -- numpy versions and its C API ---------------------------------------------------


def test_core_module_by_numpy_version():
    assert integration.numpy_core_module("1.22.0") == "numpy.core"
    assert integration.numpy_core_module("1.26.4") == "numpy.core"
    assert integration.numpy_core_module("2.0.0rc1") == "numpy._core"
    assert integration.numpy_core_module("2.3.5") == "numpy._core"
    assert integration._multiarray.__name__ == (
        integration.numpy_core_module(np.__version__) + ".multiarray"
    )


def test_c_api_slots_match_the_installed_numpy_header():
    header = pathlib.Path(np.get_include()) / "numpy" / "__multiarray_api.h"
    if not header.exists():
        pytest.skip(f"numpy {np.__version__} ships no {header.name}")
    text = header.read_text()
    ours = dict(re.findall(r"#define (NP_API_\w+) (\d+)", (ROOT / "csrc" / "numpy.c").read_text()))
    names = {
        "NP_API_ABI": "PyArray_GetNDArrayCVersion",
        "NP_API_FEATURE": "PyArray_GetNDArrayCFeatureVersion",
        "NP_API_SET_HANDLER": "PyDataMem_SetHandler",
        "NP_API_GET_HANDLER": "PyDataMem_GetHandler",
    }
    for macro, name in names.items():
        # #define PyDataMem_SetHandler \\ (*(PyObject * (*)(PyObject *)) \\ PyArray_API[304])
        cast = r"\(\*\([^)]*\)\s*\([^)]*\)\)"
        slot = re.search(rf"#define {name} \\\s*{cast}\s*\\\s*PyArray_API\[(\d+)\]", text)
        assert slot is not None, name
        assert slot.group(1) == ours[macro], name


def test_import_without_numpy_names_the_extra():
    code = "import sys; sys.modules['numpy'] = None; import realalloc.numpy"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "ImportError: realalloc.numpy needs numpy" in r.stderr
    assert "pip install realalloc[numpy]" in r.stderr


# -- bad input ---------------------------------------------------------------------


def _closed_heap():
    h = realalloc.Heap()
    h.close()
    return h


BAD = [
    ("install", (42,), {}, realalloc.ArgumentTypeError, "heap must be a realalloc.Heap, not int"),
    ("install", (), {"threads": 1}, realalloc.ArgumentTypeError, "threads must be a bool"),
    ("install", ("closed",), {}, realalloc.HeapClosedError, "the heap is closed"),
    ("using", ("closed",), {}, realalloc.HeapClosedError, "the heap is closed"),
    ("using", (realalloc.MemStats,), {}, realalloc.ArgumentTypeError, "not type"),
    ("install", ("nogil",), {}, realalloc.UnsupportedError, "free-threaded"),
    ("using", ("nogil",), {}, realalloc.UnsupportedError, "free-threaded"),
]


@pytest.mark.parametrize(("func", "args", "kwargs", "error", "message"), BAD)
def test_bad_input_raises_and_installs_nothing(monkeypatch, func, args, kwargs, error, message):
    if args == ("closed",):
        args = (_closed_heap(),)
    elif args == ("nogil",):
        monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
        args = ()
    before = rnp.installed()
    with pytest.raises(error, match=message):
        if func == "install":
            rnp.install(*args, **kwargs)
        else:
            with rnp.using(*args, **kwargs):
                pass
    assert rnp.handler_name() == "default_allocator" and rnp.installed() is before


# -- the pytest plugin -------------------------------------------------------------

PLUGIN_TESTS = {
    "test_uses_numpy.py": """
        import threading, numpy as np, realalloc.numpy as rnp
        def test_arrays():
            assert np.arange(1000).sum() == 499500
        def test_thread():
            out = []
            t = threading.Thread(target=lambda: out.append(rnp.handler_name()))
            t.start(); t.join()
            assert out == ["realalloc"]
    """,
    "test_mem_policy.py": """
        def test_thread_locality():  # numpy's test of that name is deselected, with its reason
            raise AssertionError("deselected tests do not run")
    """,
    "test_replaces.py": """
        from realalloc.integrations import numpy as integration
        def test_replaces_the_handler():
            integration._c.numpy_swap_handler(None)
    """,
    "test_nothing.py": """
        def test_nothing():
            pass
    """,
}


def run_plugin(tmp_path, *files):
    for name in files:
        (tmp_path / name).write_text(textwrap.dedent(PLUGIN_TESTS[name]))
    cmd = [sys.executable, "-m", "pytest", "-p", "realalloc.numpy_plugin", "-p", "no:cacheprovider"]
    return subprocess.run([*cmd, *files], cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_plugin_serves_the_session_and_deselects_with_reason(tmp_path):
    r = run_plugin(tmp_path, "test_uses_numpy.py", "test_mem_policy.py")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed, 1 deselected" in r.stdout
    served = re.search(r"realalloc served (\d+) allocations for numpy", r.stdout)
    assert served is not None and int(served.group(1)) > 0
    assert "test_mem_policy.py::test_thread_locality" in integration.PYTEST_DESELECT


def test_plugin_fails_a_session_whose_handler_was_replaced(tmp_path):
    r = run_plugin(tmp_path, "test_uses_numpy.py", "test_replaces.py")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "3 passed" in r.stdout
    assert "FAILED: numpy's allocator was replaced and not restored by 1 test(s), first" in r.stdout
    assert "test_replaces.py::test_replaces_the_handler" in r.stdout


def test_plugin_fails_a_session_it_served_nothing(tmp_path):
    r = run_plugin(tmp_path, "test_nothing.py")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED: realalloc served no allocation" in r.stdout
