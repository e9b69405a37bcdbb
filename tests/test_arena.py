"""The arena index: O(1) address -> arena through two levels, mirrored in C."""

import pytest

from realalloc.core.arena import ARENA_SHIFT, ARENAS, HeapArena
from realalloc.core.osmem import ffi
from realalloc.errors import InvalidArgumentError


def test_add_lookup_remove_fake_arenas_across_l1_entries():
    # Address space only: the index never touches the arena's memory.
    bases = [(1 << 40) + (i << ARENA_SHIFT) for i in range(3)] + [(1 << 46) + (5 << ARENA_SHIFT)]
    arenas = [HeapArena(b, heap_id=999) for b in bases]
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
            ARENAS.add(HeapArena(bases[0], heap_id=1))
    finally:
        for a in arenas:
            ARENAS.remove(a)
    for a in arenas:
        assert ARENAS.lookup(a.base) is None
        assert ARENAS.c_lookup(a.base) == ffi.NULL


def test_arena_base_must_be_aligned():
    with pytest.raises(InvalidArgumentError, match="0x4001000"):
        HeapArena((1 << ARENA_SHIFT) + 4096, heap_id=1)


def test_page_in_use_bits():
    a = HeapArena(1 << 41, heap_id=1)
    for p in (0, 63, 64, 8191):
        a.set_in_use(p, True)
    a.set_in_use(63, False)
    assert a.in_use_pages() == [0, 64, 8191]
