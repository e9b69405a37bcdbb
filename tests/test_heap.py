"""The object allocator over real memory: realalloc.Heap's malloc / free / realloc /
usable_size / span_of, tiny packing, zeroing, reuse, large objects and threads.

Every scenario writes a pattern derived from each object's address and a sequence
number over the object's usable extent, reads it back, checks alignment, checks that
no two live objects overlap, and ends with heap.check().
"""

from __future__ import annotations

import ctypes
import gc
import random
import struct
import threading
from itertools import pairwise

import pytest
from support import run_threads

import realalloc
from realalloc.core.sizeclasses import (
    CLASS_TO_NPAGES,
    CLASS_TO_SIZE,
    MAX_SMALL_SIZE,
    PAGE_SIZE,
    roundupsize,
    size_to_class,
    tiny_align,
)

MIB = 1 << 20
ARENA_SHIFT = 26  # 64 MiB arenas, 64 MiB aligned
M64 = (1 << 64) - 1


# --- helpers -----------------------------------------------------------------


def _mix(x: int) -> int:
    """splitmix64 finaliser: a well-spread 64-bit word from any int."""
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def pattern(addr: int, seq: int, n: int) -> bytes:
    """n bytes that depend on the address and a sequence number (24-byte period)."""
    unit = struct.pack("<3Q", *(_mix(addr * 4 + k + (seq << 40)) for k in range(3)))
    return (unit * (n // 24 + 1))[:n]


def write(addr: int, data: bytes) -> None:
    ctypes.memmove(addr, data, len(data))


def read(addr: int, n: int) -> bytes:
    return ctypes.string_at(addr, n)


def is_tiny(size: int, scan: bool) -> bool:
    return not scan and size < 16


def extent(heap, addr: int) -> int:
    """Bytes an object occupies for the overlap checks: its usable size, at least 1
    (a size-0 object's address is unique, so no other live object may contain it)."""
    return max(heap.usable_size(addr), 1)


def assert_disjoint(heap, addrs) -> None:
    """No two live objects overlap: sorted by address, each extent ends before the next."""
    spans = sorted((a, a + extent(heap, a)) for a in addrs)
    for (a0, e0), (a1, _) in pairwise(spans):
        assert e0 <= a1, f"objects at {a0:#x} (ends {e0:#x}) and {a1:#x} overlap"


def assert_aligned(addr: int, size: int, scan: bool) -> None:
    if size == 0:
        return  # test_size_zero_gives_unique_freeable_addresses checks those
    if is_tiny(size, scan):
        assert addr % tiny_align(size) == 0, f"tiny {size} B at {addr:#x}"
        assert addr % 16 + size <= 16, f"tiny {size} B at {addr:#x} crosses its 16-byte block"
        return
    assert addr % 8 == 0, f"{size} B at {addr:#x} not 8-aligned"
    # 16 from 16 bytes on, except the 24-byte class: its slots are 24 bytes apart, so
    # they cannot all be 16-aligned (Go's "min align" for that class is 8).
    if size >= 16 and roundupsize(size) != 24:
        assert addr % 16 == 0, f"{size} B at {addr:#x} not 16-aligned"
    if 0 < size <= MAX_SMALL_SIZE:
        elemsize = roundupsize(size)
        align = min(elemsize & -elemsize, PAGE_SIZE)  # Go's min align column
        assert addr % align == 0, f"{size} B at {addr:#x} not {align}-aligned"
    if size > 0 and size & (size - 1) == 0:
        align = min(size, PAGE_SIZE)
        assert addr % align == 0, f"{size} B at {addr:#x} not {align}-aligned"
    if size > MAX_SMALL_SIZE:
        assert addr % PAGE_SIZE == 0, f"large {size} B at {addr:#x} not page aligned"


class Live:
    """Live objects of one heap with the pattern written over each usable extent."""

    def __init__(self, heap) -> None:
        self.heap = heap
        self.objs: dict[int, tuple[int, bool, bytes]] = {}
        self.seq = 0

    def malloc(self, size: int, scan: bool = False, zero: bool = True) -> int:
        heap = self.heap
        addr = heap.malloc(size, scan=scan, zero=zero)
        assert isinstance(addr, int) and addr > 0
        assert addr not in self.objs, f"{addr:#x} handed out twice"
        assert_aligned(addr, size, scan)
        usable = heap.usable_size(addr)
        if is_tiny(size, scan):
            assert size <= usable <= 16 - addr % 16, (size, usable, hex(addr))
        elif size > 0:
            assert usable == roundupsize(size), (size, usable)
        if zero:
            n = usable if not is_tiny(size, scan) else size
            assert read(addr, n) == bytes(n), f"{size} B at {addr:#x} not zeroed"
        self.seq += 1
        data = pattern(addr, self.seq, usable)
        write(addr, data)
        self.objs[addr] = (size, scan, data)
        return addr

    def free(self, addr: int) -> None:
        size, _, data = self.objs.pop(addr)
        assert read(addr, len(data)) == data, f"{size} B at {addr:#x} lost its pattern"
        self.heap.free(addr)

    def free_all(self) -> None:
        for addr in list(self.objs):
            self.free(addr)

    def verify(self) -> None:
        for addr, (size, _, data) in self.objs.items():
            assert read(addr, len(data)) == data, f"{size} B at {addr:#x} lost its pattern"
        assert_disjoint(self.heap, self.objs)


@pytest.fixture
def heap():
    with realalloc.Heap() as h:
        yield h
        h.check()


def in_between_sizes() -> list[int]:
    """Every class size, the size just above the previous class and one in the middle."""
    sizes = set()
    for prev, size in pairwise(CLASS_TO_SIZE):
        sizes.update((prev + 1, (prev + 1 + size) // 2, size))
    return sorted(sizes)


def span_state_is_in_use(state) -> bool:
    if isinstance(state, str):
        return state.upper().replace("-", "_").endswith("IN_USE")
    return int(state) == int(realalloc.SpanState.IN_USE)


# --- size classes ----------------------------------------------------------------


def test_size_class_table_is_the_one_under_test():
    # 67 real classes (class 0 stands for large) from 8 bytes to 32 KiB.
    assert len(CLASS_TO_SIZE) == 68
    assert CLASS_TO_SIZE[1] == 8 and CLASS_TO_SIZE[-1] == MAX_SMALL_SIZE == 32768
    assert len(in_between_sizes()) > 3 * 60


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "noscan"])
def test_every_size_class_and_sizes_in_between_hold_patterns(heap, scan):
    live = Live(heap)
    for size in in_between_sizes():
        for _ in range(3):
            addr = live.malloc(size, scan=scan)
            info = heap.span_of(addr)
            assert info is not None
            if is_tiny(size, scan):
                # A tiny piece lives in a 16-byte block of the noscan 16-byte class.
                assert info.sizeclass == size_to_class(16) and info.noscan
                assert info.spanclass == size_to_class(16) << 1 | 1
                continue
            sc = size_to_class(size)
            assert info.sizeclass == sc
            assert info.elemsize == CLASS_TO_SIZE[sc]
            assert info.npages == CLASS_TO_NPAGES[sc]
            assert info.spanclass == sc << 1 | (not scan)
            assert info.spanclass & 1 == (not scan)
            assert info.noscan == (not scan)
            assert info.nelems == info.npages * PAGE_SIZE // info.elemsize
            assert info.base <= addr < info.base + info.npages * PAGE_SIZE
            assert (addr - info.base) % info.elemsize == 0
            assert 1 <= info.allocated <= info.nelems
    live.verify()
    heap.check()
    live.free_all()
    heap.check()


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "noscan"])
def test_objects_of_one_class_fill_several_spans(heap, scan):
    live = Live(heap)
    for size in (16, 48, 256, 1152, 9472, 32768):
        sc = size_to_class(size)
        nelems = CLASS_TO_NPAGES[sc] * PAGE_SIZE // CLASS_TO_SIZE[sc]
        addrs = [live.malloc(size, scan=scan) for _ in range(2 * nelems + 3)]
        bases = {heap.span_of(a).base for a in addrs}
        assert len(bases) >= 3, f"{len(addrs)} objects of {size} B in {len(bases)} spans"
        for base in bases:
            info = heap.span_of(base)
            held = sum(1 for a in addrs if info.base <= a < info.base + info.npages * PAGE_SIZE)
            assert info.allocated >= held
            assert held <= info.nelems
    live.verify()
    heap.check()
    live.free_all()
    heap.check()


@pytest.mark.slow
def test_usable_size_is_roundupsize_for_every_small_size(heap):
    # scan=True: every size 1..32768; noscan: every size from 16 (below is tiny).
    for scan, first in ((True, 1), (False, 16)):
        for n in range(first, MAX_SMALL_SIZE + 1):
            addr = heap.malloc(n, scan=scan)
            got = heap.usable_size(addr)
            if got != roundupsize(n) or addr % 8:
                pytest.fail(f"malloc({n}, scan={scan}) -> {addr:#x}, usable_size {got}")
            # touch the first and last usable byte
            ctypes.memset(addr, 0xA5, 1)
            ctypes.memset(addr + got - 1, 0x5A, 1)
            heap.free(addr)
    heap.check()


# --- large objects -----------------------------------------------------------------


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "noscan"])
def test_large_objects(heap, scan):
    live = Live(heap)
    sizes = [MAX_SMALL_SIZE + 1, 40000, 65536, 100000, MIB, 3 * MIB + 5]
    for size in sizes:
        addr = live.malloc(size, scan=scan)
        usable = heap.usable_size(addr)
        assert usable == -(-size // PAGE_SIZE) * PAGE_SIZE
        info = heap.span_of(addr)
        assert info.base == addr and info.npages * PAGE_SIZE == usable
        assert info.sizeclass == 0 and info.nelems == 1 and info.allocated == 1
        assert info.elemsize == usable
        assert info.noscan == (not scan) and info.spanclass == int(not scan)
        assert span_state_is_in_use(info.state)
        # every page of the object belongs to its span
        for off in range(0, usable, PAGE_SIZE):
            assert heap.span_of(addr + off).base == addr
        assert heap.span_of(addr + usable - 1).base == addr
    live.verify()
    heap.check()
    freed = list(live.objs)
    for addr in freed:
        live.free(addr)
        # Its span, kept for reuse by a malloc of the same page count, holds no object.
        kept = heap.span_of(addr)
        assert kept is None or (kept.allocated == 0 and kept.idle), f"{addr:#x} still allocated"
        heap.check()
    heap.reclaim()
    assert all(heap.span_of(addr) is None for addr in freed), "kept spans not given back"


@pytest.mark.slow
def test_70_mib_object_crosses_an_arena_boundary(heap):
    live = Live(heap)
    small = [live.malloc(n) for n in (24, 5000, 200000)]
    size = 70 * MIB
    addr = live.malloc(size)
    end = addr + size - 1
    assert addr >> ARENA_SHIFT != end >> ARENA_SHIFT, "a 70 MiB object must span two arenas"
    assert heap.usable_size(addr) == size
    boundary = ((addr >> ARENA_SHIFT) + 1) << ARENA_SHIFT
    for probe in (addr, boundary - 1, boundary, end):
        info = heap.span_of(probe)
        assert info is not None and info.base == addr, hex(probe)
        assert info.npages == size // PAGE_SIZE
    after = live.malloc(100)
    assert not addr <= after < addr + size
    live.verify()
    heap.check()
    live.free(addr)
    # Beyond LARGE_KEPT_BYTES: not kept for reuse, straight back to the page heap.
    assert heap.span_of(boundary) is None
    heap.check()
    # the freed pages are reusable: the same large request fits again
    again = live.malloc(size)
    assert heap.usable_size(again) == size
    live.verify()
    for a in small:
        live.free(a)
    live.free_all()
    heap.check()


# --- no overlap ------------------------------------------------------------------------


def random_size(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.3:
        return rng.randrange(0, 16)
    if r < 0.6:
        return rng.randrange(16, 1025)
    if r < 0.97:
        return rng.randrange(1025, MAX_SMALL_SIZE + 1)
    return rng.randrange(MAX_SMALL_SIZE + 1, 300000)


@pytest.mark.slow
def test_big_random_mix_never_overlaps(heap):
    rng = random.Random(20240601)
    live = Live(heap)
    for i in range(6000):
        size = random_size(rng)
        live.malloc(size, scan=rng.random() < 0.5, zero=rng.random() < 0.8)
        if live.objs and rng.random() < 0.35:
            live.free(rng.choice(list(live.objs)))
        if i % 2000 == 1999:
            live.verify()
            heap.check()
    live.verify()
    heap.check()
    # free in random order, verifying the rest stays intact on the way
    order = list(live.objs)
    rng.shuffle(order)
    for i, addr in enumerate(order):
        live.free(addr)
        if i % 1500 == 0:
            live.verify()
    heap.check()


def test_size_zero_gives_unique_freeable_addresses(heap):
    live = Live(heap)
    odd = []
    for scan in (True, False):
        zeros = [live.malloc(0, scan=scan) for _ in range(40)]
        others = [live.malloc(n, scan=scan) for n in (1, 3, 8, 16)]
        assert len(set(zeros)) == len(zeros)
        odd += [f"{a:#x} (scan={scan})" for a in zeros if a % 8]
        live.verify()  # contents and no overlap with the other objects
        for a in zeros + others:
            live.free(a)
        heap.check()
    # 8-aligned like every object (Go's tiny rule: 0 % 8 == 0 gives 8 as well)
    assert not odd, f"malloc(0) returned unaligned addresses {odd[:4]}"


# --- alignment ---------------------------------------------------------------------


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "noscan"])
def test_alignment_rules(heap, scan):
    live = Live(heap)
    sizes = [*range(1, 40), 63, 64, 65, 100, 127, 128, 129, 255, 256, 257]
    sizes += [1 << k for k in range(9, 16)] + [(1 << k) + 8 for k in range(9, 15)]
    sizes += [MAX_SMALL_SIZE, MAX_SMALL_SIZE + 1, 40000, 131072]
    rng = random.Random(7)
    rng.shuffle(sizes)
    for size in sizes:
        for _ in range(4 if size < 4096 else 2):
            live.malloc(size, scan=scan)  # asserts the alignment rules
    live.verify()
    live.free_all()
    heap.check()


# --- zeroing and reuse -----------------------------------------------------------------


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "noscan"])
def test_reused_slots_read_as_zero(heap, scan):
    sizes = [1, 3, 7, 8, 12, 15, 16, 24, 100, 512, 1000, 4096, 9000, 32768, 50000, 200000]
    for size in sizes:
        count = 40 if size <= 4096 else 6
        first = []
        for _ in range(count):
            addr = heap.malloc(size, scan=scan)
            n = size if is_tiny(size, scan) else heap.usable_size(addr)
            ctypes.memset(addr, 0xFF, n)
            first.append(addr)
        for addr in first:
            heap.free(addr)
        second = []
        for _ in range(count):
            addr = heap.malloc(size, scan=scan)
            n = size if is_tiny(size, scan) else heap.usable_size(addr)
            assert read(addr, n) == bytes(n), f"reused {size} B at {addr:#x} holds garbage"
            ctypes.memset(addr, 0xEE, n)
            second.append(addr)
        for addr in second:
            heap.free(addr)
        heap.check()


def test_reuse_actually_hands_back_freed_slots(heap):
    # Garbage written into freed objects must not leak into later zeroed ones, and
    # the later ones must come (at least partly) from the freed memory.
    # Enough objects to fill more than one span, so that allocating twice as many
    # again must come back to the freed ones (a cache first uses up its own span).
    cases = ((64, True, 300), (64, False, 300), (2048, False, 40), (5, False, 2000))
    for size, scan, count in (*cases, (100000, True, 8)):
        old = set()
        for _ in range(count):
            addr = heap.malloc(size, scan=scan)
            ctypes.memset(addr, 0xC3, size)
            old.add(addr)
        for addr in old:
            heap.free(addr)
        # allocating more than before forces the freed memory to be used again
        new = [heap.malloc(size, scan=scan) for _ in range(2 * count)]
        reused = old.intersection(new)
        assert reused, f"none of {count} freed {size} B objects was reused"
        for addr in new:
            assert read(addr, size) == bytes(size), f"{size} B at {addr:#x} not zero"
        for addr in new:
            heap.free(addr)
        heap.check()


def test_zero_false_memory_is_usable_and_zero_true_after_it_is_zero(heap):
    live = Live(heap)
    rng = random.Random(3)
    for _ in range(3):
        addrs = []
        for _ in range(300):
            size = random_size(rng)
            scan = rng.random() < 0.5
            # zero=False: the content is unspecified, but the memory is ours
            addrs.append(live.malloc(size, scan=scan, zero=False))
        live.verify()
        for addr in addrs:
            live.free(addr)
        # after garbage, zeroed allocations of all kinds read as zero (Live.malloc checks)
        for _ in range(300):
            live.malloc(random_size(rng), scan=rng.random() < 0.5, zero=True)
        live.verify()
        live.free_all()
        heap.check()


@pytest.mark.slow
def test_twenty_rounds_of_alloc_free_stay_in_one_arena(heap):
    # 10k objects of 352 B are 3.5 MB; without reuse 20 rounds would need 70 MB,
    # more than one 64 MiB arena.
    size = 352
    assert 20 * 10000 * size > 1 << ARENA_SHIFT and roundupsize(size) == size
    rng = random.Random(11)
    arenas: set[int] = set()
    seen: set[int] = set()
    for round_ in range(20):
        addrs = [heap.malloc(size) for _ in range(10000)]
        for i, addr in enumerate(addrs):
            write(addr, struct.pack("<QQ", addr, round_ * 10000 + i))
        for i, addr in enumerate(addrs):
            assert read(addr, 16) == struct.pack("<QQ", addr, round_ * 10000 + i)
        arenas.update(a >> ARENA_SHIFT for a in addrs)
        seen.update(addrs)
        if round_ % 2:
            rng.shuffle(addrs)
        for addr in addrs:
            heap.free(addr)
    heap.check()
    assert len(arenas) == 1, f"20 rounds of 3.5 MB used {len(arenas)} arenas"
    assert len(seen) <= 3 * 10000, f"20 rounds of 10k objects used {len(seen)} addresses"


# --- tiny allocator ----------------------------------------------------------------


def test_one_byte_pieces_pack_into_one_block(heap):
    live = Live(heap)
    pieces = [live.malloc(1) for _ in range(16)]
    blocks = {a & ~15 for a in pieces}
    assert len(blocks) == 1, f"16 one-byte pieces in {len(blocks)} blocks"
    assert sorted(a % 16 for a in pieces) == list(range(16))
    nxt = live.malloc(1)
    assert nxt & ~15 not in blocks, "a 17th one-byte piece does not fit in a full block"
    live.verify()
    live.free_all()
    heap.check()


@pytest.mark.parametrize(
    ("first", "second", "offset"),
    [(1, 8, 8), (1, 4, 4), (1, 2, 2), (1, 1, 1), (3, 6, 4), (3, 5, 3), (2, 12, 4), (5, 8, 8)],
)
def test_tiny_alignment_follows_go(heap, first, second, offset):
    a = heap.malloc(first)
    b = heap.malloc(second)
    assert a % 16 == 0, "the first piece of a fresh heap starts a block"
    assert b - a == offset, f"malloc({first}) then malloc({second}): offset {b - a}"
    assert heap.usable_size(a) >= first and a + heap.usable_size(a) <= b
    assert_disjoint(heap, [a, b])
    heap.free(a)
    heap.free(b)
    heap.check()


def test_random_tiny_pieces_are_aligned_and_disjoint(heap):
    rng = random.Random(5)
    live = Live(heap)
    for _ in range(3000):
        live.malloc(rng.randrange(1, 16))  # checks Go's tiny alignment and the block bound
        if rng.random() < 0.3:
            live.free(rng.choice(list(live.objs)))
    live.verify()
    live.free_all()
    heap.check()


def test_tiny_block_is_reclaimed_when_all_pieces_are_freed(heap):
    live = Live(heap)
    pieces = [live.malloc(1) for _ in range(16)]
    block = pieces[0] & ~15
    assert all(p & ~15 == block for p in pieces)
    live.malloc(2)  # the cache moves on to a new block; the full one is no longer held
    info = heap.span_of(block)
    before = info.allocated
    assert before >= 1
    for p in pieces[:-1]:
        live.free(p)
        assert heap.span_of(block).allocated == before, "a block with live pieces was freed"
    live.free(pieces[-1])
    assert heap.span_of(block).allocated == before - 1, "the emptied tiny block stays allocated"
    heap.check()
    live.free_all()
    heap.check()


# --- realloc -----------------------------------------------------------------------


def test_realloc_within_a_class_stays_in_place(heap):
    rng = random.Random(9)
    for prev, size in pairwise(CLASS_TO_SIZE[1:]):  # classes from 16 bytes on
        for scan in (True, False):
            n = prev + 1 if scan else max(prev + 1, 16)  # noscan below 16 is tiny
            addr = heap.malloc(n, scan=scan)
            data = pattern(addr, 1, size)
            write(addr, data)
            for m in (size, rng.randrange(n, size + 1), n):
                got = heap.realloc(addr, m)
                assert got == addr, f"realloc {n} -> {m} moved within class of {size}"
                assert heap.usable_size(addr) == size
            assert read(addr, size) == data
            heap.free(addr)
    for n, m in ((40000, 40960), (40000, 33000), (100000, 98305), (MIB, MIB - 100)):
        addr = heap.malloc(n)
        usable = heap.usable_size(addr)
        data = pattern(addr, 2, usable)
        write(addr, data)
        assert heap.realloc(addr, m) == addr, f"large realloc {n} -> {m} moved"
        assert heap.usable_size(addr) == roundupsize(m)
        assert read(addr, min(usable, m)) == data[: min(usable, m)]
        heap.free(addr)
    heap.check()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (5, 100),  # tiny -> small
        (100, 5),  # small -> (noscan: tiny)
        (24, 25),
        (1000, 3000),
        (3000, 1000),
        (32768, 32769),  # small -> large
        (40000, 200),  # large -> small
        (50000, 300000),  # large -> larger
        (300000, 50000),  # large -> smaller
        (8, MIB),
    ],
)
@pytest.mark.parametrize("scan", [True, False], ids=["scan", "noscan"])
def test_realloc_keeps_contents_when_moving(heap, old, new, scan):
    live = Live(heap)
    neighbours = [live.malloc(n, scan=scan) for n in (old, new, 7, 64)]
    addr = heap.malloc(old, scan=scan)
    usable = heap.usable_size(addr)
    data = pattern(addr, 3, usable)
    write(addr, data)
    got = heap.realloc(addr, new)
    keep = min(usable, new)
    assert read(got, keep) == data[:keep]
    assert_aligned(got, new, scan)
    if not is_tiny(new, scan):
        assert heap.usable_size(got) == roundupsize(new)
    else:
        assert heap.usable_size(got) >= new
    if scan:
        assert not heap.span_of(got).noscan, "realloc moved a scan object to a noscan span"
    newdata = pattern(got, 4, heap.usable_size(got))
    write(got, newdata)
    assert_disjoint(heap, [*live.objs, got])
    live.verify()
    assert read(got, len(newdata)) == newdata
    heap.free(got)
    for a in neighbours:
        live.free(a)
    heap.check()


def test_realloc_chain_grows_and_shrinks(heap):
    live = Live(heap)
    for n in (3, 700, 9000):
        live.malloc(n)
    addr = heap.malloc(1, scan=True)
    write(addr, b"\x42")
    known = b"\x42"
    for size in (2, 17, 64, 65, 500, 4000, 33000, 70000, 1000, 40, 9, 1):
        addr = heap.realloc(addr, size)
        keep = min(len(known), size)
        assert read(addr, keep) == known[:keep], f"realloc to {size} lost contents"
        usable = heap.usable_size(addr)
        assert usable >= size
        known = pattern(addr, size, usable)
        write(addr, known)
        live.verify()
    heap.free(addr)
    live.free_all()
    heap.check()


# --- span_of -----------------------------------------------------------------------


def test_span_of_counts_objects_of_a_fresh_span(heap):
    size = 96
    first = heap.malloc(size)
    info = heap.span_of(first)
    assert info.allocated == 1
    assert span_state_is_in_use(info.state)
    more = [heap.malloc(size) for _ in range(9)]
    assert all(heap.span_of(a).base == info.base for a in more)
    assert heap.span_of(first).allocated == 10
    # an interior address and the last byte map to the same span
    assert heap.span_of(first + 50).base == info.base
    assert heap.span_of(info.base + info.npages * PAGE_SIZE - 1).base == info.base
    for i, a in enumerate(more):
        heap.free(a)
        assert heap.span_of(first).allocated == 9 - i
    heap.free(first)
    heap.check()


def test_span_of_addresses_the_heap_does_not_own(heap):
    other = realalloc.Heap()
    try:
        theirs = other.malloc(64)
        assert heap.span_of(theirs) is None
        assert other.span_of(theirs) is not None
        assert heap.span_of(0x1000) is None
        local = ctypes.create_string_buffer(64)
        assert heap.span_of(ctypes.addressof(local)) is None
        other.free(theirs)
        other.check()
    finally:
        other.close()


# --- threads -------------------------------------------------------------------------


@pytest.mark.slow
def test_cross_thread_free_with_8_threads(heap):
    nthreads = 8
    made: list[dict[int, bytes]] = [{} for _ in range(nthreads)]
    kept: list[dict[int, bytes]] = [{} for _ in range(nthreads)]
    barrier = threading.Barrier(nthreads)

    def alloc_into(rng: random.Random, out: dict[int, bytes], seq: int) -> None:
        size = random_size(rng)
        addr = heap.malloc(size, scan=rng.random() < 0.5)
        data = pattern(addr, seq, heap.usable_size(addr))
        write(addr, data)
        out[addr] = data

    def worker(i: int) -> None:
        rng = random.Random(100 + i)
        for k in range(800):
            alloc_into(rng, made[i], k)
        barrier.wait()
        # free another thread's objects while allocating new ones of our own
        victim = made[(i + 3) % nthreads]
        for k, (addr, data) in enumerate(victim.items()):
            assert read(addr, len(data)) == data, f"{addr:#x} corrupted before its free"
            heap.free(addr)
            if k % 2 == 0:
                alloc_into(rng, kept[i], 10000 + k)

    run_threads(nthreads, worker)
    heap.check()
    everything = {a: d for part in kept for a, d in part.items()}
    assert len(everything) == sum(len(p) for p in kept), "an address was handed out twice"
    for addr, data in everything.items():
        assert read(addr, len(data)) == data
    assert_disjoint(heap, everything)
    # the main thread frees the rest: a third thread for each object
    for addr in everything:
        heap.free(addr)
    heap.check()
    # the heap still works for everyone
    live = Live(heap)
    for n in (1, 16, 500, 40000):
        live.malloc(n)
    live.verify()
    live.free_all()


def test_objects_outlive_the_thread_that_made_them(heap):
    held: dict[int, bytes] = {}

    def worker(i: int) -> None:
        rng = random.Random(i)
        for k in range(400):
            size = random_size(rng)
            addr = heap.malloc(size, scan=rng.random() < 0.5)
            data = pattern(addr, k, heap.usable_size(addr))
            write(addr, data)
            held[addr] = data

    for i in range(6):
        run_threads(1, lambda _, i=i: worker(i))  # each thread ends before the next starts
    gc.collect()
    heap.check()
    for addr, data in held.items():
        assert read(addr, len(data)) == data
    # new allocations, in new threads and here, never land on the orphans' objects
    live = Live(heap)
    fresh: dict[int, bytes] = {}

    def newcomer(i: int) -> None:
        rng = random.Random(50 + i)
        for k in range(300):
            addr = heap.malloc(random_size(rng))
            data = pattern(addr, k, heap.usable_size(addr))
            write(addr, data)
            fresh[addr] = data

    run_threads(4, newcomer)
    for n in range(0, 200, 3):
        live.malloc(n)
    assert_disjoint(heap, [*held, *fresh, *live.objs])
    for addr, data in {**held, **fresh}.items():
        assert read(addr, len(data)) == data
    live.verify()
    for addr in [*held, *fresh]:
        heap.free(addr)
    live.free_all()
    gc.collect()
    heap.check()


def test_thread_end_flushes_its_cache(heap):
    out: dict[str, int] = {}
    full: list[int] = []

    def worker(_: int) -> None:
        full.extend(heap.malloc(1) for _ in range(16))  # one full tiny block
        out["full"] = full[0]
        out["tiny"] = heap.malloc(1)  # starts a second block, which the thread holds
        out["small"] = heap.malloc(208)  # leaves a partly used span cached
        assert out["tiny"] & ~15 != full[0] & ~15

    run_threads(1, worker)
    gc.collect()
    heap.check()
    tiny, small = out["tiny"], out["small"]
    assert heap.span_of(tiny).base == heap.span_of(out["full"]).base
    # The dead thread's tiny block is no longer held: freeing its only piece frees it
    # (the full block keeps the span alive).
    before = heap.span_of(tiny).allocated
    heap.free(tiny)
    assert heap.span_of(tiny).allocated == before - 1, "a dead thread still holds its tiny block"
    # The dead thread's partly used span went back to the central lists, so the next
    # thread that needs that class continues in it instead of taking a new span.
    mine = heap.malloc(208)
    assert heap.span_of(mine).base == heap.span_of(small).base
    heap.free(mine)
    heap.free(small)
    for piece in full:
        heap.free(piece)
    heap.check()


def test_many_short_lived_threads(heap):
    held: list[int] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        mine = []
        for k in range(60):
            addr = heap.malloc((i * 37 + k * 11) % 600, scan=k % 2 == 0)
            write(addr, pattern(addr, i, heap.usable_size(addr)))
            mine.append(addr)
        for addr in mine[::2]:
            heap.free(addr)
        with lock:
            held.extend(mine[1::2])

    for _ in range(5):
        run_threads(8, worker)
    gc.collect()
    heap.check()
    assert_disjoint(heap, held)
    for addr in held:
        heap.free(addr)
    heap.check()


# --- the Heap object and the default heap ----------------------------------------------


def test_heap_is_a_context_manager_and_close_is_idempotent():
    with realalloc.Heap() as h:
        addr = h.malloc(100)
        write(addr, b"x" * 100)
        assert read(addr, 100) == b"x" * 100
        h.check()
    with pytest.raises(realalloc.HeapClosedError):
        h.malloc(1)
    h.close()
    h.close()


def test_two_heaps_are_independent():
    with realalloc.Heap() as a, realalloc.Heap() as b:
        la, lb = Live(a), Live(b)
        for n in (1, 9, 16, 300, 5000, 40000):
            la.malloc(n)
            lb.malloc(n)
        assert not set(la.objs) & set(lb.objs)
        for addr in la.objs:
            assert b.span_of(addr) is None
        la.verify()
        lb.verify()
        la.free_all()
        a.check()
        lb.verify()
        lb.free_all()
        b.check()


def test_default_heap_functions():
    addrs = {}
    for n in (0, 1, 7, 16, 100, 4000, 50000):
        addr = realalloc.malloc(n)
        data = pattern(addr, n, n)
        write(addr, data)
        addrs[addr] = data
    for addr, data in addrs.items():
        assert read(addr, len(data)) == data
        realalloc.free(addr)
    with realalloc.alloc(64) as buf:
        assert isinstance(buf, realalloc.Buffer)
        memoryview(buf)[:] = pattern(buf.address, 1, 64)
        assert bytes(buf) == pattern(buf.address, 1, 64)
    # the default heap checks frees like any other (4000 B: no later object of its class)
    freed = next(a for a, d in addrs.items() if len(d) == 4000)
    with pytest.raises(realalloc.DoubleFreeError):
        realalloc.free(freed)


def _mapping_covering(lo: int, hi: int) -> bool:
    """True if one mapping of this process covers all of [lo, hi)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if start <= lo and hi <= end:
                return True
    return False


def test_close_unmaps_the_arenas():
    h = realalloc.Heap()
    addrs = [h.malloc(n) for n in (8, 5000, 100000)]
    for a in addrs:
        write(a, pattern(a, 1, 8))
    arena = addrs[0] >> ARENA_SHIFT << ARENA_SHIFT
    assert _mapping_covering(arena, arena + (1 << ARENA_SHIFT))
    h.check()
    h.close()
    assert not _mapping_covering(arena, arena + (1 << ARENA_SHIFT)), "close() left the arena"


def test_a_thread_cache_never_serves_a_later_heap():
    # A long-lived thread allocates from heap A, which then closes; a new heap B
    # (which may reuse A's slot) must hand that thread memory of B only.
    go_b = threading.Event()
    a_done = threading.Event()
    result: dict[str, object] = {}
    heaps: dict[str, object] = {"a": realalloc.Heap()}

    def worker() -> None:
        try:
            a = heaps["a"]
            result["a"] = [a.malloc(n) for n in (1, 3, 64, 700)]
            a_done.set()
            go_b.wait(10)
            b = heaps["b"]
            got = []
            for n in (1, 3, 64, 700, 1, 3, 64, 700):
                addr = b.malloc(n)
                assert b.span_of(addr) is not None, f"{addr:#x} is not heap B's"
                write(addr, pattern(addr, n, n))
                got.append((addr, n))
            for addr, n in got:
                assert read(addr, n) == pattern(addr, n, n)
                b.free(addr)
        except BaseException as exc:
            result["error"] = exc

    t = threading.Thread(target=worker)
    t.start()
    a_done.wait(10)
    heaps["a"].close()
    with realalloc.Heap() as b:
        heaps["b"] = b
        go_b.set()
        t.join()
        if "error" in result:
            raise result["error"]
        b.check()


def test_many_heaps_one_after_another():
    # more heaps over time than can be open at once: closed heaps give their slot back
    for i in range(100):
        with realalloc.Heap() as h:
            addrs = [h.malloc(n) for n in (2, 48, 40000)]
            for a in addrs:
                write(a, pattern(a, i, 2))
            for a in addrs:
                assert read(a, 2) == pattern(a, i, 2)
                h.free(a)
            if i % 25 == 0:
                h.check()
