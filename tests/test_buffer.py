"""realalloc.Buffer: one allocation as a writable buffer (Heap.alloc / realalloc.alloc).

The memory behind every view is checked through its raw address with ctypes, so a
view that copied instead of sharing, or memory freed under a live view, shows up.
"""

from __future__ import annotations

import ctypes
import gc
import re
import struct
import threading
import weakref
from itertools import pairwise

import pytest
from support import M64, pattern

import realalloc
from realalloc.core.sizeclasses import PAGE_SIZE, roundupsize, tiny_align

LARGE = 100000  # a large object: its span disappears the moment it is freed


def addr_re(addr: int) -> str:
    return rf"(?i)0x0*{addr:x}\b"


def raw(addr: int, n: int) -> bytes:
    return ctypes.string_at(addr, n)


@pytest.fixture
def heap():
    with realalloc.Heap() as h:
        yield h
        gc.collect()
        h.check()


def alive(heap, addr: int) -> bool:
    """True while the large object at addr is allocated: it has its own span, which
    holds no object once it is freed (kept for reuse, or gone)."""
    info = heap.span_of(addr)
    return info is not None and info.base == addr and info.allocated == 1


def test_alloc_returns_a_buffer_over_heap_memory(heap):
    for size, scan in ((1, False), (13, False), (16, True), (100, False), (5000, True)):
        buf = heap.alloc(size, scan=scan)
        assert isinstance(buf, realalloc.Buffer)
        assert buf.size == size
        addr = buf.address
        assert isinstance(addr, int)
        assert addr % (tiny_align(size) if size < 16 and not scan else 16) == 0
        assert heap.usable_size(addr) >= size
        info = heap.span_of(addr)
        assert info is not None and info.noscan == (not scan)
        assert raw(addr, size) == bytes(size)  # zero=True by default
        buf.free()
    heap.check()


def test_memoryview_reads_and_writes_the_memory(heap):
    buf = heap.alloc(777)
    addr = buf.address
    mv = memoryview(buf)
    assert mv.nbytes == 777 and not mv.readonly and mv.format == "B"
    data = pattern(addr, 1, 777)
    mv[:] = data
    assert raw(addr, 777) == data  # the view shares the allocation
    other = pattern(addr, 2, 777)
    ctypes.memmove(addr, other, 777)
    assert mv.tobytes() == other and bytes(buf) == other
    mv[10:20] = b"0123456789"
    assert raw(addr + 10, 10) == b"0123456789"
    mv.release()
    buf.free()
    heap.check()


def test_bytes_of_a_buffer_is_a_copy(heap):
    buf = heap.alloc(64)
    data = pattern(buf.address, 3, 64)
    ctypes.memmove(buf.address, data, 64)
    copy = bytes(buf)
    assert copy == data
    ctypes.memset(buf.address, 0, 64)
    assert copy == data and bytes(buf) == bytes(64)
    buf.free()


def test_ctypes_from_buffer_is_writable(heap):
    buf = heap.alloc(256, scan=True)
    arr = (ctypes.c_char * 256).from_buffer(buf)
    assert ctypes.addressof(arr) == buf.address
    arr[0:4] = b"abcd"
    assert raw(buf.address, 4) == b"abcd"
    words = (ctypes.c_uint64 * 32).from_buffer(buf)
    for i in range(32):
        words[i] = (buf.address + i) * 3 & M64
    assert struct.unpack("<32Q", raw(buf.address, 256)) == tuple(
        (buf.address + i) * 3 & M64 for i in range(32)
    )
    with pytest.raises(BufferError):
        buf.free()  # arr and words still export the memory
    del arr, words
    gc.collect()
    buf.free()
    heap.check()


def test_numpy_frombuffer_is_writable_and_shares_memory(heap):
    np = pytest.importorskip("numpy")
    buf = heap.alloc(8 * 1000)
    arr = np.frombuffer(buf, dtype=np.uint64)
    assert arr.shape == (1000,) and arr.flags.writeable
    assert arr.ctypes.data == buf.address
    arr[:] = np.arange(1000, dtype=np.uint64) * 7 + buf.address
    assert struct.unpack("<3Q", raw(buf.address + 8 * 500, 24)) == tuple(
        500 * 7 + k * 7 + buf.address for k in range(3)
    )
    ctypes.memset(buf.address, 0xFF, 8)
    assert arr[0] == M64
    f32 = np.frombuffer(buf, dtype=np.float32, count=4, offset=16)
    f32[:] = [1.5, 2.5, 3.5, 4.5]
    assert struct.unpack("<4f", raw(buf.address + 16, 16)) == (1.5, 2.5, 3.5, 4.5)
    with pytest.raises(BufferError):
        buf.free()
    del arr, f32
    gc.collect()
    buf.free()
    heap.check()


def test_numpy_array_keeps_the_memory_alive(heap):
    np = pytest.importorskip("numpy")
    buf = heap.alloc(LARGE)
    addr = buf.address
    arr = np.frombuffer(buf, dtype=np.uint8)
    del buf
    gc.collect()
    assert alive(heap, addr)
    arr[:5] = [1, 2, 3, 4, 5]
    assert raw(addr, 5) == b"\x01\x02\x03\x04\x05"
    del arr
    gc.collect()
    assert not alive(heap, addr)
    heap.check()


def test_view_keeps_the_buffer_alive_after_del(heap):
    buf = heap.alloc(LARGE)
    addr = buf.address
    ref = weakref.ref(buf)
    mv = memoryview(buf)
    del buf
    gc.collect()
    assert ref() is not None and alive(heap, addr)
    data = pattern(addr, 4, LARGE)
    mv[:] = data
    assert raw(addr, LARGE) == data
    # another allocation does not land on the kept memory
    other = heap.malloc(LARGE)
    assert not addr <= other < addr + LARGE
    heap.free(other)
    assert mv.tobytes() == data
    mv.release()
    del mv
    gc.collect()
    assert ref() is None
    assert not alive(heap, addr), "the memory of a collected Buffer was not freed"
    heap.check()


def test_free_with_a_live_view_raises_and_memory_stays_valid(heap):
    for size in (5, 200, LARGE):
        buf = heap.alloc(size)
        addr = buf.address
        mv = memoryview(buf)
        sub = mv[1:]
        with pytest.raises(BufferError):
            buf.free()
        # still allocated, still ours, still writable through the view and the address
        assert heap.usable_size(addr) >= size
        data = pattern(addr, 5, size)
        mv[:] = data
        assert raw(addr, size) == data
        assert buf.address == addr and bytes(buf) == data
        mv.release()
        with pytest.raises(BufferError):
            buf.free()  # sub still exports
        sub.release()
        buf.free()  # no view left
        with pytest.raises(realalloc.BufferFreedError):
            memoryview(buf)
        heap.check()
    assert not alive(heap, addr)  # the large one was freed


def test_use_after_free_raises_buffer_freed_error(heap):
    buf = heap.alloc(48)
    addr = buf.address
    buf.free()
    for use in (lambda: buf.address, lambda: memoryview(buf), buf.free, lambda: bytes(buf)):
        with pytest.raises(realalloc.BufferFreedError) as e:
            use()
        assert isinstance(e.value, ValueError)
    # the memory went back to the heap exactly once: freeing the address now is a double free
    with pytest.raises(realalloc.DoubleFreeError):
        heap.free(addr)
    heap.check()


def test_context_manager_frees_on_exit(heap):
    with heap.alloc(LARGE) as buf:
        addr = buf.address
        assert alive(heap, addr)
        memoryview(buf)[:8] = b"ctxmgr!!"
        assert raw(addr, 8) == b"ctxmgr!!"
    assert not alive(heap, addr)
    with pytest.raises(realalloc.BufferFreedError):
        _ = buf.address
    # an exception inside the block still frees the memory
    with pytest.raises(KeyError), heap.alloc(LARGE) as buf2:
        addr2 = buf2.address
        raise KeyError("boom")
    assert not alive(heap, addr2)
    heap.check()


def test_garbage_collection_frees_small_buffers(heap):
    keep = heap.alloc(96)  # keeps the span in use, so allocated can be read after
    info = heap.span_of(keep.address)
    bufs = [heap.alloc(96) for _ in range(10)]
    assert all(heap.span_of(b.address).base == info.base for b in bufs)
    before = heap.span_of(keep.address).allocated
    del bufs
    gc.collect()
    assert heap.span_of(keep.address).allocated == before - 10
    keep.free()
    heap.check()


def test_garbage_collected_buffer_in_a_reference_cycle(heap):
    class Holder:
        pass

    h = Holder()
    h.buf = heap.alloc(LARGE)
    h.me = h
    addr = h.buf.address
    del h
    gc.collect()
    assert not alive(heap, addr)
    heap.check()


def test_close_with_an_exported_view_raises_and_the_heap_stays_usable():
    heap = realalloc.Heap()
    try:
        buf = heap.alloc(300)
        addr = buf.address
        mv = memoryview(buf)
        mv[:] = pattern(addr, 6, 300)
        keep = heap.malloc(64)
        ctypes.memset(keep, 0x5A, 64)
        with pytest.raises(BufferError):
            heap.close()
        # still open: memory valid, allocation works, invariants hold
        assert mv.tobytes() == pattern(addr, 6, 300)
        assert raw(keep, 64) == b"\x5a" * 64
        more = heap.malloc(1000)
        ctypes.memset(more, 1, 1000)
        heap.free(more)
        heap.check()
        mv.release()
        heap.close()
        with pytest.raises(realalloc.BufferFreedError):
            memoryview(buf)
        with pytest.raises(realalloc.BufferFreedError):
            buf.free()
        with pytest.raises(realalloc.HeapClosedError):
            heap.malloc(8)
    finally:
        heap.close() if not _closed(heap) else None


def _closed(heap) -> bool:
    try:
        heap.check()
    except realalloc.HeapClosedError:
        return True
    return False


def test_buffer_outliving_its_closed_heap_is_harmless():
    heap = realalloc.Heap()
    buf = heap.alloc(LARGE)
    heap.close()
    with pytest.raises(realalloc.BufferFreedError):
        _ = buf.address
    del buf
    gc.collect()  # collecting it must not free into the unmapped heap


def test_zero_false_and_reuse_through_buffers(heap):
    with heap.alloc(4096) as b:
        ctypes.memset(b.address, 0xAB, 4096)
    for _ in range(20):
        with heap.alloc(4096) as b:
            assert bytes(b) == bytes(4096)
            ctypes.memset(b.address, 0xAB, 4096)
    with heap.alloc(4096, zero=False) as b:
        memoryview(b)[:] = pattern(b.address, 7, 4096)
        assert raw(b.address, 4096) == pattern(b.address, 7, 4096)
    heap.check()


def test_buffers_do_not_overlap_each_other_or_malloc_objects(heap):
    bufs = [heap.alloc(n, scan=n % 2 == 0) for n in range(0, 3000, 37)]
    objs = [heap.malloc(n) for n in range(1, 3000, 41)]
    extents = [(b.address, max(b.size, 1)) for b in bufs]
    extents += [(a, max(heap.usable_size(a), 1)) for a in objs]
    for i, (a, n) in enumerate(extents):
        ctypes.memmove(a, pattern(a, i, n), n)
    ordered = sorted((a, a + n) for a, n in extents)
    for (a0, e0), (a1, _) in pairwise(ordered):
        assert e0 <= a1, f"{a0:#x} and {a1:#x} overlap"
    for i, (a, n) in enumerate(extents):
        assert raw(a, n) == pattern(a, i, n)
    for b in bufs:
        b.free()
    for a in objs:
        heap.free(a)
    heap.check()


def test_buffer_size_zero(heap):
    buf = heap.alloc(0)
    assert buf.size == 0
    assert memoryview(buf).nbytes == 0 and bytes(buf) == b""
    buf.free()
    heap.check()


def test_buffer_freed_by_another_thread(heap):
    bufs = [heap.alloc(n) for n in (10, 100, 1000, LARGE)]
    for b in bufs:
        ctypes.memset(b.address, 0x42, b.size)
    addrs = [b.address for b in bufs]
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for b in bufs:
                assert raw(b.address, b.size) == b"\x42" * b.size
                b.free()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert not errors, errors
    assert all(b.freed if hasattr(b, "freed") else True for b in bufs)
    assert not alive(heap, addrs[-1])
    heap.check()


def test_default_heap_alloc():
    buf = realalloc.alloc(2000)
    addr = buf.address
    mv = memoryview(buf)
    mv[:] = pattern(addr, 8, 2000)
    assert raw(addr, 2000) == pattern(addr, 8, 2000)
    with pytest.raises(BufferError):
        buf.free()
    mv.release()
    buf.free()
    with pytest.raises(realalloc.BufferFreedError):
        buf.free()


def test_buffer_errors_and_repr_name_the_address(heap):
    for size in (24, LARGE):
        buf = heap.alloc(size)
        addr = buf.address
        assert re.search(addr_re(addr), repr(buf)), repr(buf)
        mv = memoryview(buf)
        with pytest.raises(BufferError, match=addr_re(addr)):
            buf.free()
        mv.release()
        buf.free()
        assert re.search(addr_re(addr), repr(buf)), repr(buf)
        for use in (lambda b=buf: b.address, lambda b=buf: memoryview(b), buf.free):
            with pytest.raises(realalloc.BufferFreedError, match=addr_re(addr)):
                use()
    heap.check()


def test_large_buffer_is_page_aligned(heap):
    with heap.alloc(3 * PAGE_SIZE + 1, scan=True) as buf:
        assert buf.address % PAGE_SIZE == 0
        assert heap.usable_size(buf.address) == roundupsize(3 * PAGE_SIZE + 1)
        memoryview(buf)[-1:] = b"\x01"
        assert raw(buf.address + 3 * PAGE_SIZE, 1) == b"\x01"
