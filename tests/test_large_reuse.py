"""Freed large objects' spans kept for reuse (realalloc/core/central.py,
LARGE_KEPT): a malloc of the same page count takes one in C; the rest of the
heap sees them as idle; reclaim, scavenge and the memory limit give them back."""

from __future__ import annotations

import ctypes

import pytest

import realalloc
from realalloc.core.central import LARGE_KEPT, LARGE_KEPT_BYTES
from realalloc.core.sizeclasses import PAGE_SIZE


def kept(heap: realalloc.Heap) -> list[realalloc.SpanInfo]:
    return [s for s in heap.spans() if s.spanclass < 2 and s.allocated == 0]


@pytest.mark.parametrize("zero", [True, False])
def test_same_page_count_reuses_the_span_in_c_and_zeroes_it_if_asked(zero: bool) -> None:
    with realalloc.Heap(background_scavenger=False) as heap:
        a = heap.malloc(100_000)
        ctypes.memset(a, 0xAB, 100_000)
        heap.free(a)
        assert [s.base for s in kept(heap)] == [a]
        before = heap.python_mallocs
        b = heap.malloc(13 * PAGE_SIZE - 5, zero=zero)  # 13 pages again
        assert b == a and heap.python_mallocs == before
        data = ctypes.string_at(b, 13 * PAGE_SIZE)
        assert data == (bytes(len(data)) if zero else b"\xab" * 100_000 + data[100_000:])
        assert heap.usable_size(b) == 13 * PAGE_SIZE and not kept(heap)
        st = heap.stats()
        assert st.large_allocs == 2 and st.large_frees == 1
        heap.free(b)
        heap.check()


def test_scan_and_noscan_spans_are_kept_apart() -> None:
    with realalloc.Heap(background_scavenger=False) as heap:
        a = heap.malloc(50_000, scan=True)
        heap.free(a)
        b = heap.malloc(50_000)  # noscan: not the scan span
        assert b != a
        c = heap.malloc(50_000, scan=True)
        assert c == a
        heap.free(b)
        heap.free(c)
        heap.check()


def test_each_class_keeps_at_most_its_budget_and_stats_count_them_idle() -> None:
    with realalloc.Heap(background_scavenger=False) as heap:
        # 5-12 pages each: LARGE_KEPT of them fit the memory bound, so the count binds.
        objs = [heap.malloc((5 + i % 8) * PAGE_SIZE) for i in range(3 * LARGE_KEPT)]
        assert LARGE_KEPT * 12 * PAGE_SIZE <= LARGE_KEPT_BYTES
        inuse = heap.stats().heap_inuse
        for addr in objs:
            heap.free(addr)
        spans = kept(heap)
        assert len(spans) == LARGE_KEPT and all(s.idle for s in spans)
        # The last one freed always stays (room is made before it is filed).
        assert objs[-1] in {s.base for s in spans}
        st = heap.stats()
        assert st.heap_alloc < PAGE_SIZE and st.heap_inuse < inuse - 100 * PAGE_SIZE
        heap.check()
        heap.reclaim()
        assert not kept(heap)
        heap.check()


def test_the_memory_bound_keeps_few_big_spans_and_never_one_beyond_it() -> None:
    bound = LARGE_KEPT_BYTES // PAGE_SIZE
    with realalloc.Heap(background_scavenger=False) as heap:
        big = bound // 3 - 1  # three fit, a fourth does not
        objs = [heap.malloc(big * PAGE_SIZE) for _ in range(10)]
        for addr in objs:
            heap.free(addr)
        spans = kept(heap)
        assert len(spans) == 3 and sum(s.npages for s in spans) <= bound
        assert objs[-1] in {s.base for s in spans}  # room made by the older ones
        # One larger than the bound is not kept, and the kept ones stay.
        huge = heap.malloc((bound + 1) * PAGE_SIZE)
        heap.free(huge)
        assert {s.base for s in kept(heap)} == {s.base for s in spans}
        assert heap.span_of(huge) is None
        # A kept one serves its page count again, in C.
        before = heap.python_mallocs
        assert heap.malloc(big * PAGE_SIZE) == objs[-1] and heap.python_mallocs == before
        heap.check()


def test_a_kept_span_is_a_freed_object_to_every_check() -> None:
    with realalloc.Heap(background_scavenger=False) as heap:
        a = heap.malloc(40_000)
        heap.free(a)
        with pytest.raises(realalloc.DoubleFreeError, match="already freed"):
            heap.free(a)
        with pytest.raises(realalloc.DoubleFreeError):
            heap.usable_size(a)
        with pytest.raises(realalloc.DoubleFreeError):
            heap.realloc(a, 50_000)
        with pytest.raises(realalloc.ForeignPointerError, match="inside a freed large object"):
            heap.free(a + PAGE_SIZE)
        assert kept(heap) and heap.span_of(a).allocated == 0
        heap.check()


def test_the_memory_limit_gives_kept_spans_back_before_it_refuses() -> None:
    with realalloc.Heap(background_scavenger=False) as heap:
        big = [heap.malloc((1 << 20) + i * PAGE_SIZE) for i in range(4)]
        for addr in big:
            heap.free(addr)
        assert len(kept(heap)) == 4
        st = heap.stats()
        # Room for one more MiB only if the kept spans' pages are given back
        # and released.
        heap.set_memory_limit(st.heap_inuse + st.metadata + (1 << 20) + 2 * PAGE_SIZE)
        c = heap.malloc(100 * PAGE_SIZE)  # a page count no kept span has
        assert not kept(heap)
        heap.free(c)
        heap.set_memory_limit(None)
        heap.check()


def test_scavenge_gives_kept_spans_back_and_releases_their_pages() -> None:
    with realalloc.Heap(background_scavenger=False) as heap:
        a = heap.malloc(4 << 20)
        ctypes.memset(a, 1, 4 << 20)
        heap.free(a)
        assert kept(heap)
        released = heap.scavenge()
        assert not kept(heap) and released >= 4 << 20
        heap.check()
