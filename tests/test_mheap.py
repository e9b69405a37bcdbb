"""The page heap over real memory: spans of pages, growth, reuse, zeroing, RSS, faults."""

from __future__ import annotations

import itertools
import random
import threading

import pytest

from realalloc.core import osmem
from realalloc.core.arena import ARENAS
from realalloc.core.mheap import MAX_PAGES, MHeap
from realalloc.core.osmem import resident_bytes
from realalloc.core.sizeclasses import ARENA_BYTES, PAGE_SIZE
from realalloc.core.span import SpanState
from realalloc.errors import (
    ArgumentTypeError,
    HeapClosedError,
    InvalidArgumentError,
    OutOfMemoryError,
    ShimError,
)

MIB = 1 << 20


@pytest.fixture
def heap():
    h = MHeap()
    yield h
    if not h.closed:
        h.check()
    h.close()


def fill(span, seed: int) -> bytes:
    """Write a pattern derived from the span's address and a seed; return it."""
    pattern = (span.base ^ seed).to_bytes(8, "little") * (span.nbytes // 8)
    span.view()[:] = pattern
    return pattern


@pytest.mark.slow
def test_spans_are_page_aligned_disjoint_and_hold_their_patterns(heap):
    rng = random.Random(1)
    live = {}
    for i in range(300):
        npages = rng.choice([1, 1, 2, 3, 7, 15, 16, 40, 511, 600])
        span = heap.alloc_manual(npages)
        assert span.base % PAGE_SIZE == 0 and span.npages == npages
        assert span.state == SpanState.MANUAL
        live[span.base] = (span, fill(span, i))
        if rng.random() < 0.4:
            victim = rng.choice(list(live))
            heap.free_manual(live.pop(victim)[0])
    ranges = sorted((s.base, s.base + s.nbytes) for s, _ in live.values())
    assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(ranges))
    for span, pattern in live.values():
        assert span.view().tobytes() == pattern
    heap.check()


def test_span_of_finds_every_page_and_nothing_else(heap):
    a = heap.alloc_manual(3)
    b = heap.alloc_manual(20)
    for span in (a, b):
        for off in (0, 1, span.nbytes // 2, span.nbytes - 1):
            assert heap.span_of(span.base + off) == span
    heap.free_manual(a)
    assert heap.span_of(a.base) is None
    assert heap.span_of(12345) is None
    other = MHeap()
    try:
        c = other.alloc_manual(1)
        assert heap.span_of(c.base) is None  # another heap's memory
    finally:
        other.close()


def test_reused_pages_are_zeroed_and_fresh_pages_are_not_touched(heap):
    span = heap.alloc_manual(100)
    assert resident_bytes(span.base, span.nbytes) == 0  # known zero: not cleared again
    assert span.view().tobytes() == bytes(span.nbytes)
    fill(span, 7)
    base = span.base
    heap.free_manual(span)
    again = heap.alloc_manual(100)
    assert again.base == base  # first fit reuses the lowest pages
    assert again.view().tobytes() == bytes(again.nbytes)
    fill(again, 8)
    heap.free_manual(again)
    dirty = heap.alloc_manual(100, zero=False)
    assert dirty.view()[:8].tobytes() == (again.base ^ 8).to_bytes(8, "little")


def test_grow_by_whole_arenas_and_large_spans_cross_arenas(heap):
    small = heap.alloc_manual(1)
    assert len(heap.arenas) == 1
    big = heap.alloc_manual(10_000)  # 78 MiB: two contiguous arenas
    assert len(heap.arenas) == 3
    view = big.view()
    view[0:8] = b"firstpg!"
    view[-8:] = b"lastpag!"
    boundary = (big.base // ARENA_BYTES + 1) * ARENA_BYTES
    assert heap.span_of(boundary) == big and heap.span_of(boundary - 1) == big
    assert ARENAS.lookup(boundary) is not ARENAS.lookup(boundary - 1)
    assert bytes(view[0:8]) == b"firstpg!" and bytes(view[-8:]) == b"lastpag!"
    heap.free_manual(big)
    heap.free_manual(small)
    assert heap.pages.npages_free == heap.pages.npages_total


def test_scavenge_returns_memory_to_the_os_and_pages_come_back_zero(heap):
    spans = [heap.alloc_manual(1024) for _ in range(32)]  # 256 MiB
    for i, s in enumerate(spans):
        fill(s, i)
    touched = sum(resident_bytes(a.base, ARENA_BYTES) for a in heap.arenas)
    assert touched >= 256 * MIB
    for s in spans:
        heap.free_manual(s)
    released = heap.scavenge()
    assert released >= 256 * MIB
    assert sum(resident_bytes(a.base, ARENA_BYTES) for a in heap.arenas) == 0
    assert heap.pages.npages_scavenged * PAGE_SIZE == heap.os.stats().ready
    again = heap.alloc_manual(1024)
    assert again.view().tobytes() == bytes(again.nbytes)
    assert heap.scavenge() == 0 or heap.pages.npages_free > 0


def test_partial_scavenge_takes_highest_addresses_first(heap):
    low = heap.alloc_manual(64)
    high = heap.alloc_manual(64)
    fill(low, 1)
    fill(high, 2)
    heap.free_manual(low)
    heap.free_manual(high)
    heap.scavenge()  # everything free is released ...
    a = heap.alloc_manual(64)
    b = heap.alloc_manual(64)
    fill(a, 3)
    fill(b, 4)
    heap.free_manual(a)
    heap.free_manual(b)
    assert heap.scavenge(64 * PAGE_SIZE) == 64 * PAGE_SIZE
    assert resident_bytes(b.base, b.nbytes) == 0
    assert resident_bytes(a.base, a.nbytes) == a.nbytes


@pytest.mark.parametrize(
    ("value", "exc", "text"),
    [
        (0, InvalidArgumentError, "npages must be >= 1, got 0"),
        (-5, InvalidArgumentError, "got -5"),
        (1.5, ArgumentTypeError, "not float"),
        ("3", ArgumentTypeError, "not str"),
        (True, ArgumentTypeError, "not bool"),
        (MAX_PAGES + 1, InvalidArgumentError, hex(MAX_PAGES + 1)),
    ],
)
def test_bad_page_counts_raise_and_change_nothing(heap, value, exc, text):
    keep = heap.alloc_manual(2)
    fill(keep, 5)
    before = (heap.pages.npages_free, heap.pages.npages_total, heap.os.stats())
    with pytest.raises(exc, match=text.replace("(", r"\(")):
        heap.alloc_manual(value)
    assert (heap.pages.npages_free, heap.pages.npages_total, heap.os.stats()) == before
    heap.check()


def test_absurd_but_valid_size_is_out_of_memory_and_harmless(heap):
    keep = heap.alloc_manual(2)
    fill(keep, 6)
    with pytest.raises(OutOfMemoryError):
        heap.alloc_manual(MAX_PAGES)  # 64 TiB of address space
    heap.check()
    assert keep.view()[:8].tobytes() == (keep.base ^ 6).to_bytes(8, "little")


@pytest.mark.parametrize("op", ["reserve", "commit"])
def test_failed_growth_leaves_nothing_half_built(heap, op):
    keep = heap.alloc_manual(8000)  # nearly a whole arena
    pattern = fill(keep, 9)
    before = (len(heap.arenas), heap.pages.npages_total, heap.os.stats())
    osmem.inject_faults(op, 1)
    try:
        with pytest.raises(ShimError, match=f"{op} failed"):
            heap.alloc_manual(500)
    finally:
        osmem.inject_faults(op, 0)
    assert (len(heap.arenas), heap.pages.npages_total, heap.os.stats()) == before
    heap.check()
    heap.alloc_manual(500)  # works again once the faults stop
    assert keep.view().tobytes() == pattern


def test_failed_release_keeps_pages_counted_as_resident(heap):
    span = heap.alloc_manual(256)
    fill(span, 1)
    heap.free_manual(span)
    before = (heap.pages.npages_scavenged, heap.os.stats().released_total)
    osmem.inject_faults("release", 1)
    try:
        with pytest.raises(ShimError, match="release failed"):
            heap.scavenge()
    finally:
        osmem.inject_faults("release", 0)
    heap.check()
    assert (heap.pages.npages_scavenged, heap.os.stats().released_total) == before
    assert heap.scavenge() >= 256 * PAGE_SIZE


def test_closed_heap_raises_and_unmaps(heap):
    span = heap.alloc_manual(4)
    arena = heap.arenas[0]
    heap.close()
    heap.close()  # idempotent
    assert ARENAS.lookup(arena.base) is None
    assert heap.os.stats() == osmem.OSMemStats(0, 0, 0)
    with pytest.raises(HeapClosedError, match="closed"):
        heap.alloc_manual(1)
    with pytest.raises(HeapClosedError):
        heap.free_manual(span)
    with pytest.raises(HeapClosedError):
        heap.scavenge()


def test_threads_share_the_heap_and_their_page_caches_are_flushed(heap):
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        mine = []
        try:
            for i in range(200):
                s = heap.alloc_manual(rng.choice([1, 2, 3, 5, 8, 20]))
                mine.append((s, fill(s, seed * 1000 + i)))
                if len(mine) > 10:
                    s, pattern = mine.pop(rng.randrange(len(mine)))
                    assert s.view().tobytes() == pattern
                    heap.free_manual(s)
            for s, pattern in mine:
                assert s.view().tobytes() == pattern
                heap.free_manual(s)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    del threads
    heap.check()
    # Every thread is gone, so every page cache went back to the page allocator.
    assert heap.pages.npages_free == heap.pages.npages_total
