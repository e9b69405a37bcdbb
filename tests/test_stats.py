"""Heap statistics: realalloc.MemStats from Heap.stats(), Heap.spans() and the
memory report, checked against a plain model of every call the test makes.

The model knows nothing of the allocator's insides: a small object counts in
``size_to_class(size)`` (class 1 for size 0), a large one as its whole pages,
and, as in Go, a tiny piece (noscan, < 16 B) counts in both ``mallocs`` and
``frees`` while the 16-byte block holding it is the heap object (size class
2).  Per-class exactness uses ``scan=True`` or sizes >= 16; tiny counting is
tested on its own, with sequences whose packing Go's rules fix.

Every scenario ends with ``MemStats.check()`` and ``heap.check()``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import random
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

import realalloc
from realalloc import HeapCorruption, MemoryReport, MemStats, SizeClassStats, SpanState
from realalloc.core.central import LARGE_KEPT
from realalloc.core.sizeclasses import (
    CLASS_TO_SIZE,
    MAX_SMALL_SIZE,
    NUM_SIZE_CLASSES,
    PAGE_SIZE,
    size_to_class,
)

TINY_CLASS = 2  # tiny blocks are 16-byte objects of size class 2
MIB = 1 << 20


@pytest.fixture
def heap() -> Iterator[realalloc.Heap]:
    # No background scavenger: heap_released must change only when a test asks.
    with realalloc.Heap(background_scavenger=False) as h:
        yield h


# --- the model ---------------------------------------------------------------


def npages_of(size: int) -> int:
    return -(-size // PAGE_SIZE)


def class_of(size: int) -> int:
    """Size class of a non-tiny small object (size 0 takes class 1)."""
    return size_to_class(size) or 1


class Model:
    """What MemStats must say after the calls recorded here (no tiny pieces)."""

    def __init__(self) -> None:
        self.mallocs: Counter[int] = Counter()  # by size class
        self.frees: Counter[int] = Counter()
        self.large_allocs = 0
        self.large_frees = 0
        self.large_bytes = 0  # cumulative
        self.large_freed_bytes = 0
        self.live: dict[int, tuple[int, bool]] = {}  # addr -> (size, scan)

    # Every call goes through the model so the counts follow it exactly.
    def malloc(self, heap: realalloc.Heap, size: int, scan: bool) -> int:
        assert scan or size >= 16, "tiny pieces are modelled separately"
        addr = heap.malloc(size, scan=scan)
        assert addr not in self.live
        self.note_malloc(addr, size, scan)
        return addr

    def note_malloc(self, addr: int, size: int, scan: bool) -> None:
        if size > MAX_SMALL_SIZE:
            self.large_allocs += 1
            self.large_bytes += npages_of(size) * PAGE_SIZE
        else:
            self.mallocs[class_of(size)] += 1
        self.live[addr] = (size, scan)

    def free(self, heap: realalloc.Heap, addr: int) -> None:
        heap.free(addr)
        self.note_free(addr)

    def note_free(self, addr: int) -> None:
        size, _ = self.live.pop(addr)
        if size > MAX_SMALL_SIZE:
            self.large_frees += 1
            self.large_freed_bytes += npages_of(size) * PAGE_SIZE
        else:
            self.frees[class_of(size)] += 1

    def realloc(self, heap: realalloc.Heap, addr: int, new_size: int) -> int:
        """Heap.realloc, with the model's prediction of whether it stays in place."""
        old_size, scan = self.live[addr]
        assert scan or new_size >= 16
        if old_size > MAX_SMALL_SIZE:
            in_place = new_size > MAX_SMALL_SIZE and npages_of(new_size) == npages_of(old_size)
        else:
            in_place = new_size <= MAX_SMALL_SIZE and size_to_class(new_size) == class_of(old_size)
        new = heap.realloc(addr, new_size)
        if in_place:
            assert new == addr, f"realloc {old_size} -> {new_size} moved"
            self.live[addr] = (new_size, scan)
        else:
            assert new != addr, f"realloc {old_size} -> {new_size} stayed in place"
            self.note_malloc(new, new_size, scan)
            self.note_free(addr)
        return new

    # What the statistics must be.
    def live_small_by_class(self) -> Counter[int]:
        return Counter(class_of(s) for s, _ in self.live.values() if s <= MAX_SMALL_SIZE)

    def heap_alloc(self) -> int:
        small = sum(CLASS_TO_SIZE[c] * n for c, n in self.live_small_by_class().items())
        return small + self.large_bytes - self.large_freed_bytes

    def total_alloc(self) -> int:
        return sum(CLASS_TO_SIZE[c] * n for c, n in self.mallocs.items()) + self.large_bytes

    def assert_matches(self, st: MemStats) -> None:
        st.check()
        for c in range(NUM_SIZE_CLASSES):
            got = st.by_size[c]
            assert (got.mallocs, got.frees) == (self.mallocs[c], self.frees[c]), f"class {c}"
        n_mallocs = sum(self.mallocs.values()) + self.large_allocs
        n_frees = sum(self.frees.values()) + self.large_frees
        assert st.mallocs == n_mallocs
        assert st.frees == n_frees
        assert st.heap_objects == len(self.live) == n_mallocs - n_frees
        assert st.large_allocs == self.large_allocs
        assert st.large_frees == self.large_frees
        assert st.tiny_allocs == st.tiny_pieces == st.tiny_frees == 0
        assert st.heap_alloc == self.heap_alloc()
        assert st.total_alloc == self.total_alloc()
        assert st.heap_alloc <= st.heap_inuse


def fill(addr: int, size: int, tag: int) -> None:
    if size:
        ctypes.memset(addr, tag & 0xFF, min(size, 64))


def holds(addr: int, size: int, tag: int) -> bool:
    n = min(size, 64)
    return ctypes.string_at(addr, n) == bytes([tag & 0xFF]) * n


def random_size(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.55:
        return rng.randint(16, 1024)
    if r < 0.9:
        return rng.randint(1025, MAX_SMALL_SIZE)
    if r < 0.97:
        return rng.randint(MAX_SMALL_SIZE + 1, 200_000)
    return rng.choice([MAX_SMALL_SIZE + 1, 1 * MIB, 3 * MIB + 5])


# --- a fresh heap and the MemStats record ------------------------------------


def test_fresh_heap_has_no_objects_and_only_metadata(heap):
    st = heap.stats()
    st.check()
    assert isinstance(st, MemStats)
    for name in (
        "heap_alloc", "total_alloc", "heap_inuse", "heap_objects", "mallocs", "frees",
        "tiny_allocs", "tiny_frees", "large_allocs", "large_frees", "manual_inuse",
    ):  # fmt: skip
        assert getattr(st, name) == 0, name
    assert st.heap_sys == st.heap_idle == st.heap_released == st.mapped == 0
    assert st.reserved == 0
    assert st.metadata > 0  # the heap record itself
    assert st.sys == st.metadata
    assert len(st.by_size) == NUM_SIZE_CLASSES
    for c, entry in enumerate(st.by_size):
        assert isinstance(entry, SizeClassStats)
        assert (entry.size, entry.mallocs, entry.frees) == (CLASS_TO_SIZE[c], 0, 0)
    heap.check()


def test_stats_are_a_stable_snapshot(heap):
    addrs = [heap.malloc(s, scan=True) for s in (8, 100, 5000, 40_000)]
    first = heap.stats()
    assert heap.stats() == first  # nothing happened: the very same figures
    heap.free(addrs[1])
    second = heap.stats()
    assert second != first
    assert first.frees == 0 and second.frees == 1  # the old snapshot did not move
    heap.check()


def test_to_dict_has_every_field(heap):
    heap.malloc(100, scan=True)
    st = heap.stats()
    d = st.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(MemStats)}
    for f in dataclasses.fields(MemStats):
        if f.name != "by_size":
            assert d[f.name] == getattr(st, f.name)
    assert len(d["by_size"]) == NUM_SIZE_CLASSES
    assert d["by_size"][size_to_class(100)] == {
        "size": CLASS_TO_SIZE[size_to_class(100)],
        "mallocs": 1,
        "frees": 0,
    }


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        (lambda st: {"heap_idle": st.heap_idle + 1}, "STATS-1"),
        (lambda st: {"heap_released": st.heap_idle + PAGE_SIZE}, "STATS-1"),
        (lambda st: {"heap_released": -1}, "STATS-1"),
        (lambda st: {"heap_objects": st.heap_objects + 1}, "STATS-2"),
        (lambda st: {"frees": st.frees - 1}, "STATS-2"),
        (lambda st: {"heap_alloc": st.heap_inuse + 1, "total_alloc": st.heap_inuse + 1}, "STATS-2"),
        (lambda st: {"total_alloc": st.heap_alloc - 1}, "STATS-4"),
    ],
)
def test_memstats_check_names_the_broken_identity(heap, change, rule):
    for size in (24, 24, 5000, 50_000):
        heap.malloc(size, scan=True)
    good = heap.stats()
    good.check()
    with pytest.raises(HeapCorruption, match=rule):
        dataclasses.replace(good, **change(good)).check()


# --- exact counts ------------------------------------------------------------


def test_small_objects_count_in_their_size_class(heap):
    model = Model()
    for size in (0, 1, 8, 9, 16, 17, 24, 100, 1024, 1025, 4096, 32767, MAX_SMALL_SIZE):
        model.malloc(heap, size, scan=True)
    for size in (16, 17, 512, 20_000, MAX_SMALL_SIZE):
        model.malloc(heap, size, scan=False)
    st = heap.stats()
    model.assert_matches(st)
    assert st.by_size[1].mallocs == 3  # sizes 0, 1 and 8
    assert st.by_size[size_to_class(MAX_SMALL_SIZE)].mallocs == 3
    heap.check()


def test_large_objects_count_whole_pages(heap):
    model = Model()
    a = model.malloc(heap, MAX_SMALL_SIZE + 1, scan=False)  # 5 pages
    b = model.malloc(heap, 10 * PAGE_SIZE, scan=True)  # exactly 10 pages
    c = model.malloc(heap, MIB + 1, scan=False)  # 129 pages
    st = heap.stats()
    model.assert_matches(st)
    assert st.heap_alloc == (5 + 10 + 129) * PAGE_SIZE
    assert st.heap_inuse == st.heap_alloc  # large spans are exactly their objects
    assert st.large_allocs == 3 and st.heap_objects == 3
    assert all(e.mallocs == 0 for e in st.by_size)  # large objects are in no class
    model.free(heap, b)
    model.free(heap, a)
    st = heap.stats()
    model.assert_matches(st)
    assert st.heap_alloc == st.heap_inuse == 129 * PAGE_SIZE
    assert st.total_alloc == (5 + 10 + 129) * PAGE_SIZE  # cumulative
    model.free(heap, c)
    st = heap.stats()
    model.assert_matches(st)
    assert st.heap_alloc == st.heap_inuse == st.heap_objects == 0
    assert st.heap_idle == st.heap_sys > 0
    heap.check()


def test_mixed_workload_with_realloc_is_exact(heap):
    rng = random.Random(20240611)
    model = Model()
    tags: dict[int, int] = {}

    def alloc(n: int) -> None:
        for _ in range(n):
            size = random_size(rng)
            addr = model.malloc(heap, size, scan=rng.random() < 0.5)
            tags[addr] = rng.randrange(256)
            fill(addr, size, tags[addr])

    def free_some(fraction: float) -> None:
        for addr in rng.sample(sorted(model.live), int(len(model.live) * fraction)):
            assert holds(addr, model.live[addr][0], tags.pop(addr))
            model.free(heap, addr)

    alloc(1500)
    model.assert_matches(heap.stats())
    free_some(0.5)
    model.assert_matches(heap.stats())

    # realloc: in place within a class / page count, moved otherwise, both directions.
    for addr in rng.sample(sorted(model.live), 300):
        size, _ = model.live[addr]
        if size <= MAX_SMALL_SIZE:
            choices = [size, max(16, size - 1), size + 1, size * 3, 50_000]
        else:
            choices = [size - 1, size + PAGE_SIZE, 1000, npages_of(size) * PAGE_SIZE]
        new_size = max(16, min(rng.choice(choices), 4 * MIB))
        new = model.realloc(heap, addr, new_size)
        tag = tags.pop(addr)
        assert holds(new, min(size, new_size), tag)  # contents survive the move
        fill(new, new_size, tag)
        tags[new] = tag
    model.assert_matches(heap.stats())

    alloc(700)
    free_some(0.3)
    st = heap.stats()
    model.assert_matches(st)
    assert st.mallocs > 2000 and st.frees > 900 and st.large_allocs > 50
    heap.check()

    for addr in list(model.live):
        model.free(heap, addr)
    st = heap.stats()
    model.assert_matches(st)
    assert st.heap_alloc == st.heap_objects == 0
    assert st.total_alloc == model.total_alloc() > 0
    heap.check()


def test_in_place_realloc_changes_no_counter(heap):
    a = heap.malloc(100, scan=True)
    b = heap.malloc(100_000)
    before = heap.stats()
    assert heap.realloc(a, 110) == a  # class 7 (112 B)
    assert heap.realloc(b, 99_000) == b  # still 13 pages
    assert heap.stats() == before
    heap.check()


# --- tiny pieces ---------------------------------------------------------------


def test_tiny_pieces_count_as_go_counts_them(heap):
    # 16 pieces of 8 bytes: two per 16-byte block, so 8 blocks.  The piece that
    # starts a block is the block's malloc; the other is a Go tiny_alloc.
    pieces = [heap.malloc(8) for _ in range(16)]
    st = heap.stats()
    st.check()
    assert st.tiny_pieces == 16 and st.tiny_allocs == 8 and st.tiny_frees == 0
    assert st.by_size[TINY_CLASS].mallocs == 8 and st.by_size[TINY_CLASS].frees == 0
    assert st.mallocs == 16  # one per malloc call
    assert st.frees == 8  # Go counts a piece put into a block as freed at once
    assert st.heap_objects == 8 == st.mallocs - st.frees  # the blocks are the objects
    assert st.heap_alloc == st.total_alloc == 8 * 16

    for p in pieces:
        heap.free(p)
    st = heap.stats()
    st.check()
    assert st.tiny_frees == 16 and st.tiny_pieces == 16
    # Every block went back as a slot except the one this thread still holds.
    assert st.by_size[TINY_CLASS].frees == 7
    assert st.heap_objects == 1 and st.heap_alloc == 16
    assert st.mallocs == 16 and st.frees == 7 + 8
    heap.check()

    # Moving on to a new block lets the held, empty one go.
    heap.malloc(8)  # block 9, held; block 8 (empty) is freed
    heap.malloc(12)  # 4-aligned at 12 does not fit: block 10; block 9 has more room
    st = heap.stats()
    st.check()
    assert st.tiny_pieces == 18 and st.tiny_allocs == 8
    assert st.by_size[TINY_CLASS].mallocs == 10
    assert st.by_size[TINY_CLASS].frees == 8
    assert st.mallocs == 18
    assert st.heap_objects == 2 == st.mallocs - st.frees
    heap.check()


def test_one_byte_pieces_share_one_block(heap):
    pieces = [heap.malloc(1) for _ in range(16)]
    assert len(set(pieces)) == 16
    st = heap.stats()
    assert st.tiny_pieces == 16 and st.tiny_allocs == 15
    assert st.by_size[TINY_CLASS].mallocs == 1
    assert st.mallocs == 16 and st.frees == 15
    assert st.heap_objects == 1 and st.heap_alloc == 16
    heap.malloc(0)  # size 0 noscan is a tiny piece too; the block is full: a new one
    st = heap.stats()
    assert st.tiny_pieces == 17 and st.tiny_allocs == 15
    assert st.by_size[TINY_CLASS].mallocs == 2
    assert st.mallocs == 17
    st.check()
    heap.check()


def test_tiny_blocks_and_16_byte_objects_share_class_2(heap):
    model = Model()
    for _ in range(5):
        model.malloc(heap, 16, scan=True)
        model.malloc(heap, 16, scan=False)  # exactly 16: not tiny
    for _ in range(6):
        heap.malloc(8)  # 3 blocks
    st = heap.stats()
    assert st.by_size[TINY_CLASS].mallocs == 10 + 3
    assert st.tiny_pieces == 6 and st.tiny_allocs == 3
    assert st.heap_objects == 13 and st.heap_alloc == 13 * 16
    st.check()
    heap.check()


def test_mallocs_equals_malloc_calls_with_tiny_pieces_mixed_in(heap):
    rng = random.Random(99)
    live: list[tuple[int, bool]] = []  # (addr, tiny)
    calls = frees = tiny = tiny_freed = 0
    for _ in range(3000):
        if live and rng.random() < 0.4:
            addr, was_tiny = live.pop(rng.randrange(len(live)))
            heap.free(addr)
            frees += 1
            tiny_freed += was_tiny
            continue
        r = rng.random()
        size = rng.randint(0, 15) if r < 0.4 else rng.randint(16, 2000) if r < 0.97 else 70_000
        scan = rng.random() < 0.3
        live.append((heap.malloc(size, scan=scan), not scan and size < 16))
        calls += 1
        tiny += not scan and size < 16
    st = heap.stats()
    st.check()
    assert st.mallocs == calls
    assert st.tiny_pieces == tiny and st.tiny_frees == tiny_freed
    assert st.tiny_allocs < tiny  # some pieces started blocks
    # Non-tiny objects are exact per object; tiny pieces live inside live blocks.
    live_tiny_blocks = st.heap_objects - sum(1 for _, t in live if not t)
    assert 0 < live_tiny_blocks <= sum(1 for _, t in live if t) + 1
    heap.check()


# --- threads -------------------------------------------------------------------


def test_eight_threads_counts_are_exact_while_alive_and_after_join(heap):
    nthreads, per_thread, tiny_per_thread = 8, 300, 41
    barrier = threading.Barrier(nthreads + 1)  # the workers and this thread
    models = [Model() for _ in range(nthreads)]
    handoff: list[list[int]] = [[] for _ in range(nthreads)]  # thread i frees handoff[i]
    tiny_kept: list[list[int]] = [[] for _ in range(nthreads)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            rng = random.Random(i)
            model = models[i]
            mine = []
            for _ in range(per_thread):
                size = random_size(rng) if rng.random() < 0.3 else rng.randint(16, 600)
                mine.append(model.malloc(heap, size, scan=rng.random() < 0.5))
            tiny = [heap.malloc(8) for _ in range(tiny_per_thread)]
            rng.shuffle(mine)
            third = len(mine) // 3
            for addr in mine[:third]:  # freed by their own thread
                model.free(heap, addr)
            handoff[(i + 1) % nthreads] = mine[third : 2 * third]  # freed by a neighbour
            # mine[2 * third:] outlive the thread.
            for p in tiny[::2]:
                heap.free(p)
            tiny_kept[i] = tiny[1::2]
            barrier.wait()
            for addr in handoff[i]:  # counted in the owner's model by the main thread
                heap.free(addr)
            barrier.wait()
            barrier.wait()  # stay alive while the main thread reads the counts
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(nthreads)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
        barrier.wait()
    except threading.BrokenBarrierError:  # pragma: no cover - a worker failed
        for t in threads:
            t.join()
        raise AssertionError(errors) from None
    # Cross-thread frees go into the allocating thread's model only now, so no
    # two threads ever wrote one model.
    for i in range(nthreads):
        for addr in handoff[(i + 1) % nthreads]:
            models[i].note_free(addr)
    model = merge(models)
    # 8-byte pieces, two per block: 21 blocks a thread.  The odd pieces keep
    # blocks 0..19 alive; block 20 holds only piece 40, which was freed, but
    # its thread still holds the block.
    blocks = nthreads * 21

    def assert_exact(held_blocks: int) -> MemStats:
        st = heap.stats()
        st.check()
        assert st.tiny_pieces == nthreads * tiny_per_thread
        assert st.tiny_allocs == nthreads * 20  # pieces put into an existing block
        assert st.tiny_frees == nthreads * 21
        for c in range(NUM_SIZE_CLASSES):
            extra_mallocs = blocks if c == TINY_CLASS else 0
            extra_frees = nthreads - held_blocks if c == TINY_CLASS else 0
            assert st.by_size[c].mallocs == model.mallocs[c] + extra_mallocs, f"class {c}"
            assert st.by_size[c].frees == model.frees[c] + extra_frees, f"class {c}"
        assert st.large_allocs == model.large_allocs and st.large_frees == model.large_frees
        live_blocks = nthreads * 20 + held_blocks
        assert st.heap_objects == len(model.live) + live_blocks == st.mallocs - st.frees
        assert st.heap_alloc == model.heap_alloc() + live_blocks * 16
        return st

    try:
        alive = assert_exact(held_blocks=nthreads)  # every worker alive, idle
        assert alive.mcache_inuse > 0
    finally:
        barrier.wait()
        for t in threads:
            t.join()
    assert not errors, errors
    gc.collect()
    # Each ending thread gave its empty held block back as a slot.
    st = assert_exact(held_blocks=0)
    assert st.mcache_inuse == 0  # every thread that had a cache has ended
    heap.check()

    # The main thread (no cache of its own here) frees everything left.
    for addr in list(model.live):
        model.free(heap, addr)
    for lst in tiny_kept:
        for p in lst:
            heap.free(p)
    st = heap.stats()
    st.check()
    assert st.heap_objects == 0 == st.heap_alloc
    assert st.tiny_frees == st.tiny_pieces
    for c in range(NUM_SIZE_CLASSES):
        extra = blocks if c == TINY_CLASS else 0
        assert st.by_size[c].mallocs == st.by_size[c].frees == model.mallocs[c] + extra
    assert st.heap_inuse > 0  # emptied spans wait for a sweep in their central ...
    heap.reclaim()
    assert heap.stats().heap_inuse == 0  # ... and then went back to the page heap
    heap.check()


def merge(models: list[Model]) -> Model:
    out = Model()
    for m in models:
        out.mallocs.update(m.mallocs)
        out.frees.update(m.frees)
        out.large_allocs += m.large_allocs
        out.large_frees += m.large_frees
        out.large_bytes += m.large_bytes
        out.large_freed_bytes += m.large_freed_bytes
        out.live.update(m.live)
    return out


def test_counts_of_short_lived_threads_are_kept(heap):
    model = Model()
    lock = threading.Lock()
    survivors: list[int] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        local = Model()
        addrs = [local.malloc(heap, rng.randint(16, 3000), scan=True) for _ in range(50)]
        for addr in addrs[:20]:
            local.free(heap, addr)
        with lock:
            model.mallocs.update(local.mallocs)
            model.frees.update(local.frees)
            model.live.update(local.live)
            survivors.extend(addrs[20:])

    for seed in range(12):  # one after another: each thread's cache is flushed in turn
        t = threading.Thread(target=work, args=(seed,))
        t.start()
        t.join()
        model.assert_matches(heap.stats())
    assert heap.stats().mcache_inuse == 0
    heap.check()
    for addr in survivors:  # freed by a thread that never allocated here
        model.free(heap, addr)
    model.assert_matches(heap.stats())
    heap.check()


# --- stats() is counters, spans() is the walk ----------------------------------


def test_stats_and_memory_report_do_not_walk_spans(heap, monkeypatch):
    model = Model()
    for size in (16, 100, 3000, 40_000, 2 * MIB):
        for _ in range(20):
            model.malloc(heap, size, scan=True)

    def no_walk(*args, **kwargs):
        raise AssertionError("stats must come from counters, not a walk of the spans")

    monkeypatch.setattr(heap.mheap, "live_spans", no_walk)
    monkeypatch.setattr(realalloc.MSpan, "info", no_walk)
    model.assert_matches(heap.stats())
    heap.memory_report()
    monkeypatch.undo()
    heap.check()


def test_spans_agree_with_stats(heap):
    rng = random.Random(7)
    model = Model()
    for _ in range(1200):
        model.malloc(heap, random_size(rng), scan=rng.random() < 0.5)
    for addr in rng.sample(sorted(model.live), 700):
        model.free(heap, addr)
    st = heap.stats()
    model.assert_matches(st)
    spans = list(heap.spans())
    assert spans and all(isinstance(s, realalloc.SpanInfo) for s in spans)
    assert all(s.state == SpanState.IN_USE for s in spans)
    assert sum(s.npages for s in spans if not s.idle) * PAGE_SIZE == st.heap_inuse
    idle = sum(s.npages for s in spans if s.idle) * PAGE_SIZE
    assert st.heap_idle == idle + (heap.mheap.pages.npages_free * PAGE_SIZE)

    small = [s for s in spans if s.spanclass >= 2]
    allocated: Counter[int] = Counter()
    for s in small:
        assert s.elemsize == CLASS_TO_SIZE[s.sizeclass]
        assert 0 <= s.allocated <= s.nelems
        assert s.nelems * s.elemsize <= s.npages * PAGE_SIZE
        allocated[s.sizeclass] += s.allocated
    live_by_class = model.live_small_by_class()
    assert +allocated == live_by_class
    assert sum(allocated.values()) == sum(e.mallocs - e.frees for e in st.by_size)

    large = {s.base: s for s in spans if s.spanclass < 2 and s.allocated}
    kept = [s for s in spans if s.spanclass < 2 and not s.allocated]  # freed, kept for reuse
    assert all(s.idle for s in kept) and len(kept) <= 2 * LARGE_KEPT
    live_large = {a: v for a, v in model.live.items() if v[0] > MAX_SMALL_SIZE}
    assert set(large) == set(live_large)
    for addr, (size, scan) in live_large.items():
        info = large[addr]
        assert info.npages == npages_of(size) and info.sizeclass == 0
        assert info.noscan == (not scan) and info.allocated == 1
    heap.check()


def test_manual_spans_are_outside_heap_sys(heap):
    heap.malloc(3000, scan=True)
    before = heap.stats()
    span = heap.mheap.alloc_manual(4)
    st = heap.stats()
    st.check()
    assert st.manual_inuse == 4 * PAGE_SIZE
    assert st.heap_sys + st.manual_inuse == st.mapped
    assert st.heap_inuse == before.heap_inuse and st.heap_objects == before.heap_objects
    manual = [s for s in heap.spans() if s.state == SpanState.MANUAL]
    assert [(s.base, s.npages) for s in manual] == [(span.base, 4)]
    report = heap.memory_report()
    assert report.in_use == st.heap_alloc + 4 * PAGE_SIZE
    heap.mheap.free_manual(span)
    st = heap.stats()
    assert st.manual_inuse == 0 and st.heap_sys == st.mapped
    heap.check()


def test_metadata_fields_are_positive_and_add_up(heap):
    for size in (8, 16, 100, 2000, 40_000):
        heap.malloc(size, scan=True)
    heap.malloc(5)  # a tiny piece: tiny state words
    st = heap.stats()
    for name in ("mspan_inuse", "mspan_sys", "mcache_inuse", "gc_sys", "other_sys"):
        assert getattr(st, name) > 0, name
    assert st.mspan_inuse <= st.mspan_sys
    assert st.metadata == st.mspan_sys + st.mcache_inuse + st.gc_sys + st.other_sys
    assert st.sys == st.mapped + st.metadata
    assert st.heap_sys + st.manual_inuse == st.mapped <= st.reserved
    assert st.metadata == heap.metadata_bytes()
    assert st.metadata < st.mapped // 10  # metadata is small beside the arenas
    heap.check()


def test_metadata_grows_with_threads_and_spans(heap):
    before = heap.stats()
    done = threading.Event()
    ready = threading.Event()

    def holder() -> None:
        heap.malloc(64, scan=True)
        ready.set()
        done.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    ready.wait(10)
    during = heap.stats()
    assert during.mcache_inuse > before.mcache_inuse
    done.set()
    t.join()
    gc.collect()
    assert heap.stats().mcache_inuse == before.mcache_inuse

    addrs = [heap.malloc(40_000) for _ in range(300)]  # 300 span records
    st = heap.stats()
    assert st.mspan_inuse > during.mspan_inuse
    for a in addrs:
        heap.free(a)
    assert heap.stats().mspan_inuse < st.mspan_inuse
    heap.check()


def test_heaps_count_independently():
    with (
        realalloc.Heap(background_scavenger=False) as a,
        realalloc.Heap(background_scavenger=False) as b,
    ):
        ma, mb = Model(), Model()
        xs = [ma.malloc(a, 200, scan=True) for _ in range(30)]
        ys = [mb.malloc(b, 50_000, scan=False) for _ in range(3)]
        ma.free(a, xs[0])
        ma.assert_matches(a.stats())
        mb.assert_matches(b.stats())
        assert a.stats().large_allocs == 0 and b.stats().by_size[size_to_class(200)].mallocs == 0
        del ys
        a.check()
        b.check()


def test_stats_of_a_closed_heap_raise():
    h = realalloc.Heap(background_scavenger=False)
    h.malloc(10)
    h.close()
    for call in (h.stats, h.memory_report, h.spans):
        with pytest.raises(realalloc.HeapClosedError):
            call()


# --- memory report ---------------------------------------------------------------


def test_memory_report_matches_stats(heap):
    model = Model()
    addrs = [model.malloc(heap, 1000, scan=True) for _ in range(500)]
    big = [model.malloc(heap, 2 * MIB, scan=False) for _ in range(4)]
    for a in big:
        ctypes.memset(a, 1, 2 * MIB)
    for a in addrs[::2] + big[:2]:
        model.free(heap, a)
    released = heap.scavenge(MIB)  # some free pages released, the rest resident
    assert released == MIB

    r = heap.memory_report()
    st = heap.stats()
    model.assert_matches(st)
    assert isinstance(r, MemoryReport)
    assert r.in_use == st.heap_alloc + st.manual_inuse == model.heap_alloc()
    assert r.free_in_spans == st.heap_inuse - st.heap_alloc > 0
    assert r.free_resident == st.heap_idle - st.heap_released >= 3 * MIB
    assert r.released == st.heap_released >= MIB
    assert r.metadata == st.metadata > 0
    assert r.mapped == st.mapped > 0
    assert r.in_use + r.free_in_spans + r.free_resident + r.released == st.heap_sys
    assert r.rss > 0 and r.baseline_rss > 0
    assert r.uss is None or r.uss > 0
    # The 4 MiB still live were touched: RSS grew at least by that much.
    assert r.rss - r.baseline_rss >= 4 * MIB - MIB
    heap.check()


def test_memory_report_table_and_dict(heap):
    heap.malloc(3 * MIB)
    r = heap.memory_report()
    d = r.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(MemoryReport)}
    assert d["rss"] == r.rss and d["in_use"] == r.in_use == 3 * MIB

    text = str(r)
    lines = text.splitlines()
    assert len(lines) == 11  # heading + 10 rows
    assert lines[0].split() == ["view", "what", "MiB", "bytes"]
    rows = {line[11:45].strip(): line[45:].split() for line in lines[1:]}
    assert rows["in use (objects, manual spans)"] == ["3.0", str(3 * MIB)]
    assert rows["process RSS"][1] == str(r.rss)
    assert rows["RSS growth since then"][1] == str(r.rss - r.baseline_rss)
    assert rows["mapped for arenas"][1] == str(r.mapped)
    assert "allocator" in lines[1] and "OS" in text

    no_uss = dataclasses.replace(r, uss=None)
    uss_line = next(line for line in str(no_uss).splitlines() if "USS" in line)
    assert uss_line.split()[-2:] == ["n/a", "n/a"]
    heap.check()


def test_python_mallocs_counts_exactly_the_calls_that_left_c():
    from realalloc.core.central import FIRST_BATCH_BYTES

    with realalloc.Heap(zero=False) as heap:
        assert heap.python_mallocs == 0
        first = heap.malloc(64)  # the thread's first call makes its cache: Python
        assert heap.python_mallocs == 1
        span = heap.span_of(first)
        assert span is not None
        # The first batch of spans is FIRST_BATCH_BYTES of pages: its slots all
        # come from C; the next slot needs a new batch, from Python.
        batch_slots = FIRST_BATCH_BYTES // (span.npages * 8192) * span.nelems
        live = [first] + [heap.malloc(64) for _ in range(batch_slots - 1)]
        assert heap.python_mallocs == 1
        live.append(heap.malloc(64))
        assert heap.python_mallocs == 2
        for n in range(1, 4):  # a large object of a new page count: a span, from Python
            heap.free(heap.malloc(40_000 + n * 8192))
            assert heap.python_mallocs == 2 + n
        for n in range(1, 4):  # the same page counts again: spans kept for reuse, in C
            heap.free(heap.malloc(40_000 + n * 8192))
            assert heap.python_mallocs == 5
        for addr in live:
            heap.free(addr)
