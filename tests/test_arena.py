"""The arena index: O(1) address -> arena through two levels, mirrored in C."""

import pytest

import realalloc
from realalloc.core.arena import ARENAS, HeapArena
from realalloc.core.osmem import ffi
from realalloc.core.sizeclasses import ARENA_SHIFT, PAGE_SIZE
from realalloc.errors import InvalidArgumentError


def fake(base: int, heap_id: int) -> HeapArena:
    return HeapArena(base, heap_id, ffi.new("ra_heap_arena *"))


def test_add_lookup_remove_fake_arenas_across_l1_entries():
    # Address space only: the index never touches the arena's memory.
    bases = [(1 << 40) + (i << ARENA_SHIFT) for i in range(3)] + [(1 << 46) + (5 << ARENA_SHIFT)]
    arenas = [fake(b, 999) for b in bases]
    try:
        for a in arenas:
            ARENAS.add(a)
        for a in arenas:
            for off in (0, 1, (1 << ARENA_SHIFT) - 1):
                assert ARENAS.lookup(a.base + off) is a
                assert ARENAS.c_lookup(a.base + off) == a.meta
        assert ARENAS.lookup(bases[2] + (1 << ARENA_SHIFT)) is None
        assert ARENAS.lookup(-1) is None and ARENAS.lookup(1 << 48) is None
        with pytest.raises(InvalidArgumentError, match="already in the index"):
            ARENAS.add(fake(bases[0], 1))
    finally:
        for a in arenas:
            ARENAS.remove(a)
    for a in arenas:
        assert ARENAS.lookup(a.base) is None
        assert ARENAS.c_lookup(a.base) == ffi.NULL
    ARENAS.remove(arenas[0])  # removing twice is a no-op (close may be resumed)


def test_arena_base_must_be_aligned():
    with pytest.raises(InvalidArgumentError, match="0x4001000"):
        fake((1 << ARENA_SHIFT) + 4096, 1)


def test_page_in_use_bits_mark_the_first_page_of_each_object_span():
    with realalloc.Heap(background_scavenger=False) as heap:
        a = heap.malloc(40000)  # 5 pages
        b = heap.malloc(100000)  # 13 pages
        manual = heap.mheap.alloc_manual(3)
        arena = ARENAS.lookup(a)
        assert arena is not None
        pages = arena.in_use_pages()
        assert arena.page_index(a) in pages and arena.page_index(b) in pages
        assert arena.page_index(a) + 1 not in pages
        assert arena.page_index(manual.base) not in pages  # MANUAL spans hold no objects
        heap.free(a)
        heap.reclaim()  # its span, kept for reuse, goes back to the page heap
        assert arena.page_index(a) not in arena.in_use_pages()
        assert arena.live_pages == 13 + 3 + sum(s.npages for s in heap.spans() if s.sizeclass)
        heap.mheap.free_manual(manual)
        heap.free(b)
        assert b % PAGE_SIZE == 0
