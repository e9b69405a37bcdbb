"""Misuse of a Heap: each mistake raises its own exception class with a message that
names the bad address (as hex) or size, and afterwards every other live object still
holds its pattern and heap.check() passes."""

from __future__ import annotations

import ctypes
import re
import struct
import threading

import pytest
from support import Population, addr_re

import realalloc
from realalloc.core.sizeclasses import PAGE_SIZE

MIB = 1 << 20


@pytest.fixture
def heap():
    with realalloc.Heap() as h:
        yield h


@pytest.fixture
def pop(heap):
    p = Population(heap)
    p.intact()
    yield p
    p.intact()
    for addr in p.objs:
        heap.free(addr)
    heap.check()


# --- invalid pointers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "scan"),
    [(1, False), (5, False), (8, True), (64, True), (64, False), (32768, True), (40000, False)],
    ids=["tiny1", "tiny5", "small8", "small64", "small64noscan", "small32k", "large"],
)
def test_double_free(heap, pop, size, scan):
    addr = heap.malloc(size, scan=scan)
    heap.free(addr)
    with pytest.raises(realalloc.DoubleFreeError, match=addr_re(addr)):
        heap.free(addr)
    pop.intact()
    # and once more: the first refusal changed nothing
    with pytest.raises(realalloc.DoubleFreeError, match=addr_re(addr)):
        heap.free(addr)
    pop.intact()


def test_double_free_of_a_tiny_piece_whose_block_has_live_pieces(heap, pop):
    pieces = [heap.malloc(2) for _ in range(8)]  # at most two 16-byte blocks
    for p in pieces:
        ctypes.memmove(p, struct.pack("<H", p & 0xFFFF), 2)
    block = max({p & ~15 for p in pieces}, key=lambda b: sum(p & ~15 == b for p in pieces))
    mates = [p for p in pieces if p & ~15 == block]
    assert len(mates) >= 4
    victim = mates[1]
    heap.free(victim)
    with pytest.raises(realalloc.DoubleFreeError, match=addr_re(victim)):
        heap.free(victim)
    for p in pieces:
        if p != victim:
            assert ctypes.string_at(p, 2) == struct.pack("<H", p & 0xFFFF)
    pop.intact()
    for p in pieces:
        if p != victim:
            heap.free(p)
    heap.check()


def test_double_free_of_a_tiny_piece_after_its_block_was_freed(heap, pop):
    pieces = [heap.malloc(4) for _ in range(4)]
    mover = heap.malloc(15)  # cannot fit behind the pieces: the cache takes a new block
    assert all(p & ~15 != mover & ~15 for p in pieces)
    for p in pieces:
        heap.free(p)
    # every piece's block is now empty and was freed as a slot
    for p in pieces:
        with pytest.raises(realalloc.DoubleFreeError, match=addr_re(p)):
            heap.free(p)
    heap.free(mover)
    pop.intact()


def test_double_free_among_many_frees_from_another_thread(heap, pop):
    addrs = [heap.malloc(48) for _ in range(400)]  # several spans
    keep = addrs[::50]  # one live object in each span keeps the span in use
    gone = [a for a in addrs if a not in keep]
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for a in gone:
                heap.free(a)
            # the frees are pending in the spans' free bits: still detected
            with pytest.raises(realalloc.DoubleFreeError, match=addr_re(gone[77])):
                heap.free(gone[77])
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert not errors, errors
    for victim in (gone[5], gone[200], gone[-1]):
        with pytest.raises(realalloc.DoubleFreeError, match=addr_re(victim)):
            heap.free(victim)
    pop.intact()
    for a in keep:
        heap.free(a)
    heap.check()


def test_double_free_after_the_span_went_back_to_the_page_heap(heap, pop):
    # Every object of these spans is freed, so their pages are free again.  The
    # heap cannot tell a second free from a wild pointer there any more; it must
    # still refuse it as an invalid pointer naming the address.
    addrs = [heap.malloc(48) for _ in range(600)]
    for a in addrs:
        heap.free(a)
    heap.malloc(1000)  # another class: the 48-byte span the cache holds stays put
    for victim in (addrs[3], addrs[300]):
        with pytest.raises(realalloc.InvalidPointerError, match=addr_re(victim)):
            heap.free(victim)
    pop.intact()


@pytest.mark.parametrize(
    ("size", "scan", "offset"),
    [(64, True, 8), (64, False, 1), (64, True, 63), (4000, False, 2048), (24, True, 16)],
)
def test_interior_pointer_small(heap, pop, size, scan, offset):
    addr = pop.add(size, scan, 99)
    bad = addr + offset
    with pytest.raises(realalloc.InteriorPointerError, match=addr_re(bad)):
        heap.free(bad)
    pop.intact()  # the object itself is still live and intact


@pytest.mark.parametrize("offset", [8, PAGE_SIZE, 3 * PAGE_SIZE + 16, 5 * PAGE_SIZE - 8])
def test_interior_pointer_large(heap, pop, offset):
    addr = pop.add(40000, False, 98)  # 5 pages
    bad = addr + offset
    with pytest.raises(realalloc.InteriorPointerError, match=addr_re(bad)):
        heap.free(bad)
    pop.intact()


def test_foreign_pointer_random_addresses(heap, pop):
    for bad in (0x1000, 0x12345678, 0x7000_0000_0000, (1 << 47) - 4096, 0xDEAD_BEE0):
        assert heap.span_of(bad) is None
        with pytest.raises(realalloc.ForeignPointerError, match=addr_re(bad)):
            heap.free(bad)
    pop.intact()


def test_foreign_pointer_python_memory(heap, pop):
    local = ctypes.create_string_buffer(256)
    blob = b"some bytes object" * 4
    addresses = [ctypes.addressof(local), id(blob), id(pop)]
    for bad in addresses:
        with pytest.raises(realalloc.ForeignPointerError, match=addr_re(bad)):
            heap.free(bad)
    assert blob == b"some bytes object" * 4
    pop.intact()


def test_foreign_pointer_from_another_heap(heap, pop):
    with realalloc.Heap() as other:
        theirs = [other.malloc(n) for n in (2, 64, 40000)]
        for t in theirs:
            ctypes.memmove(t, b"\x77" * 2, 2)
        for t in theirs:
            with pytest.raises(realalloc.ForeignPointerError, match=addr_re(t)):
                heap.free(t)
            assert ctypes.string_at(t, 2) == b"\x77\x77"
        other.check()
        # and the other way round
        mine = next(iter(pop.objs))
        with pytest.raises(realalloc.ForeignPointerError, match=addr_re(mine)):
            other.free(mine)
        for t in theirs:
            other.free(t)
        other.check()
    pop.intact()


def test_foreign_pointer_in_a_freed_large_object(heap, pop):
    addr = heap.malloc(5 * PAGE_SIZE)  # large: more than 32 KiB
    heap.free(addr)
    # Its span, kept for reuse, holds no object: freeing inside it is foreign.
    assert heap.span_of(addr + PAGE_SIZE).allocated == 0
    for bad in (addr + PAGE_SIZE, addr + 4 * PAGE_SIZE + 64):
        with pytest.raises(realalloc.ForeignPointerError, match=addr_re(bad)):
            heap.free(bad)
    heap.reclaim()  # now the pages are free
    assert heap.span_of(addr + PAGE_SIZE) is None
    for bad in (addr + PAGE_SIZE, addr + 4 * PAGE_SIZE + 64):
        with pytest.raises(realalloc.ForeignPointerError, match=addr_re(bad)):
            heap.free(bad)
    pop.intact()


def test_free_of_a_slot_that_was_never_allocated(heap, pop):
    addr = heap.malloc(512, scan=True)
    info = heap.span_of(addr)
    # the last slot of a fresh span has not been handed out yet
    last = info.base + (info.nelems - 1) * info.elemsize
    assert last != addr
    with pytest.raises(realalloc.InvalidPointerError, match=addr_re(last)):
        heap.free(last)
    heap.free(addr)
    pop.intact()


@pytest.mark.parametrize("bad", [None, 1.5, "0x1000", b"\x00"])
def test_free_of_a_non_int(heap, pop, bad):
    with pytest.raises(realalloc.ArgumentTypeError):
        heap.free(bad)
    pop.intact()


# --- bad sizes ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [-1, -16, -(1 << 40)])
def test_negative_size(heap, pop, size):
    for call in (
        lambda: heap.malloc(size),
        lambda: heap.malloc(size, scan=True),
        lambda: heap.alloc(size),
    ):
        with pytest.raises(realalloc.InvalidArgumentError, match=re.escape(str(size))) as e:
            call()
        assert isinstance(e.value, ValueError)
    victim = next(iter(pop.objs))
    with pytest.raises(realalloc.InvalidArgumentError, match=re.escape(str(size))):
        heap.realloc(victim, size)
    pop.intact()  # realloc refused: the object is still where it was, unchanged


@pytest.mark.parametrize("size", [1.0, 16.5, "16", None, [8]])
def test_non_int_size(heap, pop, size):
    name = type(size).__name__
    for call in (lambda: heap.malloc(size), lambda: heap.alloc(size)):
        with pytest.raises(realalloc.ArgumentTypeError, match=re.escape(name)) as e:
            call()
        assert isinstance(e.value, TypeError)
    victim = next(iter(pop.objs))
    with pytest.raises(realalloc.ArgumentTypeError, match=re.escape(name)):
        heap.realloc(victim, size)
    pop.intact()


@pytest.mark.parametrize("scan", ["yes", 1, 0, None])
def test_non_bool_scan(heap, pop, scan):
    for size in (8, 100, 40000):
        with pytest.raises(realalloc.ArgumentTypeError, match="scan") as e:
            heap.malloc(size, scan=scan)
        assert isinstance(e.value, TypeError)
        with pytest.raises(realalloc.ArgumentTypeError, match="scan"):
            heap.alloc(size, scan=scan)
    pop.intact()


@pytest.mark.parametrize("size", [1 << 60, 1 << 40, (1 << 64) - 1])
def test_absurd_size(heap, pop, size):
    size_re = rf"(?i)({size}|0x0*{size:x})"
    with pytest.raises(realalloc.OutOfMemoryError, match=size_re) as e:
        heap.malloc(size)
    assert isinstance(e.value, MemoryError)
    with pytest.raises(realalloc.OutOfMemoryError, match=size_re):
        heap.alloc(size)
    victim = next(iter(pop.objs))
    with pytest.raises(realalloc.OutOfMemoryError, match=size_re):
        heap.realloc(victim, size)
    pop.intact()
    # the heap still serves ordinary requests
    pop.add(50000, False, 7)
    pop.add(10, False, 8)
    pop.intact()


# --- realloc of bad pointers ---------------------------------------------------------


def test_realloc_of_a_freed_object(heap, pop):
    for size in (3, 64, 40000):
        addr = heap.malloc(size)
        heap.free(addr)
        with pytest.raises(realalloc.DoubleFreeError, match=addr_re(addr)):
            heap.realloc(addr, size * 2)
        pop.intact()


def test_realloc_that_moves_frees_the_old_object(heap, pop):
    # each of these must move: the new size is in another class (or large vs small)
    for old, new in ((100, 1000), (1000, 100), (40000, 200), (200, 40000), (5, 500)):
        sibling = heap.malloc(old)  # keeps the old object's span in use
        addr = heap.malloc(old)
        moved = heap.realloc(addr, new)
        assert moved != addr
        with pytest.raises(realalloc.DoubleFreeError, match=addr_re(addr)):
            heap.free(addr)
        heap.free(moved)
        heap.free(sibling)
        pop.intact()


def test_realloc_of_interior_and_foreign_pointers(heap, pop):
    addr = pop.add(256, True, 50)
    with pytest.raises(realalloc.InteriorPointerError, match=addr_re(addr + 16)):
        heap.realloc(addr + 16, 512)
    with pytest.raises(realalloc.ForeignPointerError, match=addr_re(0x5000)):
        heap.realloc(0x5000, 512)
    pop.intact()


# --- use after close -----------------------------------------------------------------


def test_every_call_after_close_raises():
    h = realalloc.Heap()
    small = h.malloc(64)
    large = h.malloc(100000)
    h.check()
    h.close()
    calls = {
        "malloc": lambda: h.malloc(16),
        "malloc large": lambda: h.malloc(100000),
        "free": lambda: h.free(small),
        "free large": lambda: h.free(large),
        "alloc": lambda: h.alloc(16),
        "realloc": lambda: h.realloc(small, 128),
        "usable_size": lambda: h.usable_size(small),
        "span_of": lambda: h.span_of(small),
        "check": h.check,
    }
    for name, call in calls.items():
        with pytest.raises(realalloc.HeapClosedError):
            call()
            pytest.fail(f"{name} after close did not raise")
    h.close()  # idempotent
    with pytest.raises(realalloc.HeapClosedError):
        h.malloc(1)


def test_other_heaps_work_after_one_closes(heap, pop):
    h = realalloc.Heap()
    a = h.malloc(64)
    h.close()
    with pytest.raises(realalloc.HeapClosedError):
        h.free(a)
    # the closed heap's memory is no longer anybody's
    with pytest.raises(realalloc.ForeignPointerError):
        heap.free(a)
    pop.add(64, False, 3)
    pop.intact()


# --- failed growth -------------------------------------------------------------------


@pytest.mark.parametrize("op", ["reserve", "commit"])
def test_failed_mmap_while_growing_for_a_large_object(heap, pop, op):
    try:
        realalloc.inject_faults(op, 1)
        with pytest.raises(realalloc.ShimError) as e:
            heap.malloc(100 * MIB)
        assert isinstance(e.value, MemoryError)
        assert realalloc.fault_hits(op) >= 1
    finally:
        realalloc.inject_faults(op, 0)
    pop.intact()  # nothing half-built
    addr = heap.malloc(100 * MIB)  # and the same request works now
    assert heap.usable_size(addr) == 100 * MIB
    ctypes.memset(addr, 0x3C, 100 * MIB)
    assert ctypes.string_at(addr + 100 * MIB - 16, 16) == b"\x3c" * 16
    heap.free(addr)
    pop.intact()


@pytest.mark.parametrize("op", ["reserve", "commit"])
def test_failed_mmap_on_a_fresh_heap_small_object(op):
    with realalloc.Heap() as h:
        try:
            realalloc.inject_faults(op, 1)
            with pytest.raises(realalloc.ShimError):
                h.malloc(64)
            h.check()
            realalloc.inject_faults(op, 1)
            with pytest.raises(realalloc.ShimError):
                h.alloc(5)
        finally:
            realalloc.inject_faults(op, 0)
        h.check()
        addrs = [h.malloc(n) for n in (64, 5, 5, 1000)]
        for a in addrs:
            ctypes.memset(a, 0x11, 5)
        assert len(set(addrs)) == 4
        for a in addrs:
            assert ctypes.string_at(a, 5) == b"\x11" * 5
            h.free(a)
        h.check()


def test_failed_mmap_when_the_first_arena_is_full(heap, pop):
    # Fill the first arena with large objects, then make the growth that the next
    # request needs fail; the objects already there must not notice.
    big = [pop.add(8 * MIB, False, 200 + i) for i in range(7)]
    try:
        realalloc.inject_faults("commit", 1)
        with pytest.raises(realalloc.ShimError):
            heap.malloc(30 * MIB)
    finally:
        realalloc.inject_faults("commit", 0)
    pop.intact()
    pop.add(30 * MIB, False, 300)
    pop.intact()
    assert big
