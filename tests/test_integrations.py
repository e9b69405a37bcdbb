"""tracemalloc and cffi: realalloc memory seen by tracemalloc in its own domain,
and ffi.new() objects living in a realalloc heap."""

from __future__ import annotations

import ctypes
import gc
import tracemalloc

import cffi
import pytest

import realalloc
from realalloc import _fast

DOMAIN = realalloc.TRACEMALLOC_DOMAIN


def realalloc_traces(snapshot: tracemalloc.Snapshot) -> dict[int, int]:
    """Line of this file -> bytes traced in realalloc's domain by calls from it
    (the innermost frame of this file: realloc's own malloc runs inside
    realalloc, one frame further in)."""
    by_line: dict[int, int] = {}
    ours = snapshot.filter_traces([tracemalloc.DomainFilter(True, DOMAIN)])
    for trace in ours.traces:
        line = next((f.lineno for f in reversed(trace.traceback) if f.filename == __file__), 0)
        by_line[line] = by_line.get(line, 0) + trace.size
    return by_line


@pytest.fixture
def tracing():
    tracemalloc.start(8)
    try:
        yield
    finally:
        tracemalloc.stop()


def line_of(marker: str) -> int:
    with open(__file__) as fh:
        return next(i for i, text in enumerate(fh, 1) if marker in text and "line_of" not in text)


def test_domain_is_documented_and_distinct_from_numpys():
    assert DOMAIN == 0x7261 and DOMAIN != 389047


def test_every_kind_of_allocation_is_traced_by_line_and_untraced_when_freed(tracing):
    with realalloc.Heap() as heap:
        tiny = [heap.malloc(5) for _ in range(10)]  # TRACE-TINY
        small = [heap.malloc(100, scan=True) for _ in range(10)]  # TRACE-SMALL
        large = heap.malloc(100_000)  # TRACE-LARGE
        buf = heap.alloc(3000)  # TRACE-BUFFER
        grown = heap.realloc(heap.malloc(64), 5000)  # TRACE-REALLOC
        traces = realalloc_traces(tracemalloc.take_snapshot())
        assert traces[line_of("# TRACE-TINY")] == 50
        assert traces[line_of("# TRACE-SMALL")] == 1000
        assert traces[line_of("# TRACE-LARGE")] == 100_000
        assert traces[line_of("# TRACE-BUFFER")] == 3000
        # realloc moved the object: the new one is traced where realloc was
        # called, the old one is gone.
        assert traces[line_of("# TRACE-REALLOC")] == 5000
        for addr in [*tiny, *small, large, grown]:
            heap.free(addr)
        buf.free()
        assert realalloc_traces(tracemalloc.take_snapshot()) == {}


def test_a_kept_large_span_reused_in_c_is_traced_too(tracing):
    with realalloc.Heap() as heap:
        heap.free(heap.malloc(200_000))
        before = heap.python_mallocs
        addr = heap.malloc(200_000)  # TRACE-KEPT
        assert heap.python_mallocs == before  # served in C
        assert realalloc_traces(tracemalloc.take_snapshot()) == {line_of("# TRACE-KEPT"): 200_000}
        heap.free(addr)


def test_the_fast_path_flag_follows_start_and_stop():
    with realalloc.Heap() as heap:
        for _ in range(3):
            tracemalloc.start(8)
            addr = heap.malloc(48)
            assert realalloc_traces(tracemalloc.take_snapshot()), "not traced after start()"
            heap.free(addr)
            tracemalloc.stop()
            addr = heap.malloc(48)  # not traced: tracemalloc is off (nothing to snapshot)
            tracemalloc.start(8)
            assert realalloc_traces(tracemalloc.take_snapshot()) == {}
            heap.free(addr)  # an untraced object's free is harmless
            tracemalloc.stop()


def test_tracing_started_behind_realallocs_back_is_noticed_at_the_next_refill():
    import _tracemalloc

    with realalloc.Heap() as heap:
        _tracemalloc.start(1)  # bypasses the wrapped tracemalloc.start
        try:
            _fast.set_tracing(False)  # as if realalloc had not seen it
            addrs = [heap.malloc(2048) for _ in range(200)]  # refills on the way
            snap = tracemalloc.take_snapshot()
            traced = snap.filter_traces([tracemalloc.DomainFilter(True, DOMAIN)])
            assert traced.traces, "tracing started elsewhere was never noticed"
            for addr in addrs:
                heap.free(addr)
        finally:
            tracemalloc.stop()


# --- cffi ---------------------------------------------------------------------


def test_cffi_objects_live_in_the_heap_zeroed_and_go_back_when_collected():
    ffi = cffi.FFI()
    with realalloc.Heap(background_scavenger=False) as heap:
        new = heap.cffi_allocator(ffi)
        # 16 bytes and up: a tiny piece's free is not a free in Go's counts
        objs = [new("int64_t[]", n) for n in (2, 10, 1000, 10_000)]
        for arr in objs:
            addr = int(ffi.cast("uintptr_t", arr))
            n = len(arr)
            assert heap.usable_size(addr) >= 8 * n
            assert list(arr) == [0] * n
            for i in range(n):
                arr[i] = addr + i
        for arr in objs:
            addr = int(ffi.cast("uintptr_t", arr))
            assert list(arr) == [addr + i for i in range(len(arr))]
        frees = heap.stats().frees
        addrs = [int(ffi.cast("uintptr_t", arr)) for arr in objs]
        del objs, arr
        gc.collect()
        assert heap.stats().frees == frees + 4
        for addr in addrs:
            with pytest.raises(realalloc.DoubleFreeError):
                heap.free(addr)
        heap.check()


def test_cffi_allocator_without_zeroing_hands_out_the_old_bytes():
    ffi = cffi.FFI()
    n = 100_000
    with realalloc.Heap(zero=True) as heap:
        for zero, expected in ((False, b"\x5a" * n), (True, bytes(n))):
            addr = heap.malloc(n)
            ctypes.memset(addr, 0x5A, n)
            heap.free(addr)  # its span waits for a malloc of the same page count
            p = heap.cffi_allocator(ffi, zero=zero)(f"char[{n}]")
            assert int(ffi.cast("uintptr_t", p)) == addr
            assert ffi.buffer(p)[:] == expected
            del p
            gc.collect()


def test_cffi_allocator_bad_input_and_closed_heap():
    ffi = cffi.FFI()
    heap = realalloc.Heap()
    with pytest.raises(realalloc.ArgumentTypeError, match="cffi FFI"):
        heap.cffi_allocator(object())
    with pytest.raises(realalloc.ArgumentTypeError, match="zero must be a bool"):
        heap.cffi_allocator(ffi, zero=1)
    new = heap.cffi_allocator(ffi)
    heap.close()
    with pytest.raises(realalloc.HeapClosedError):
        new("int[4]")
