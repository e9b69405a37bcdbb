"""Heap arenas and the address -> arena index (Go: runtime/mheap.go, heapArena, spanOf).

See realalloc/__init__.py for an overview of the allocator.

A heap arena is a 64 MiB, 64 MiB-aligned region of address space (8192
pages of 8 KiB).  Its metadata, a ``ra_heap_arena`` struct, lives in C memory
so the C fast path can read it::

    ra_heap_arena
    +------------------------------+
    | spans[8192]   page -> span   |  NULL for free pages; every page of an
    |                              |  in-use or manual span points at it
    | page_in_use[128]  bitmap     |  bit set on the first page of each
    |                              |  in-use span (Go: pageInUse)
    | base, heap_id                |
    +------------------------------+

Arenas of every heap in the process are found from an address through one
two-level index (Go: mheap_.arenas), never by a search::

    arena number = addr >> 26                      (22 bits for 48-bit addresses)
    ra_arena_l1[number >> 16][number & 0xffff] -> ra_heap_arena *

The C array ``ra_arena_l1`` is what C code reads; the Python lists in
``ArenaIndex`` mirror it with the ``HeapArena`` objects that own the C memory.

Invariants:
  ARENA-1: ARENAS.lookup(a) is None  <=>  no live heap owns the arena holding a.
  ARENA-2: for an arena in the index, ra_arena_l1[n >> 16][n & 0xffff] is its
           ``meta`` pointer and its ``meta.base == n << 26``.
  ARENA-3: meta.spans[p] is NULL or a span whose pages include p.

Locking: ``ArenaIndex.lock`` guards adding and removing arenas (a leaf lock).
Lookups take no lock: an entry is written before the arena's memory is handed
out and cleared only after the owning heap is closed.  ``HeapArena`` fields
other than the index entry are protected by the owning heap's lock.
"""

from __future__ import annotations

import threading
from typing import Any, Final

from ..errors import InvalidArgumentError
from .osmem import ffi, lib

__all__ = ["ARENAS", "ARENA_SHIFT", "HEAP_ADDR_BITS", "PAGES_PER_ARENA", "ArenaIndex", "HeapArena"]

ARENA_SHIFT: Final[int] = lib.RA_ARENA_SHIFT
PAGE_SHIFT: Final[int] = lib.RA_PAGE_SHIFT
PAGES_PER_ARENA: Final[int] = lib.RA_PAGES_PER_ARENA
HEAP_ADDR_BITS: Final = 48
_L2_BITS: Final = lib.RA_ARENA_L2_BITS
_L2_MASK: Final = (1 << _L2_BITS) - 1
_L1_ENTRIES: Final = 1 << lib.RA_ARENA_L1_BITS
assert HEAP_ADDR_BITS - ARENA_SHIFT == lib.RA_ARENA_L1_BITS + _L2_BITS


class HeapArena:
    """One 64 MiB arena and its C metadata (Go: heapArena).

    Fields: ``base`` (first byte), ``heap_id`` (owner), ``meta`` (the
    ``ra_heap_arena *``).  Caller must hold the owning heap's lock for every
    method.
    """

    __slots__ = ("base", "heap_id", "live_pages", "maps_released", "meta")

    def __init__(self, base: int, heap_id: int, meta: Any = None) -> None:
        """``meta``: zeroed C memory for the metadata (MHeap passes a record of
        its metadata region, whose page map it can give back to the OS); None
        allocates it with ffi.new."""
        if base & ((1 << ARENA_SHIFT) - 1):
            raise InvalidArgumentError(f"arena base {base:#x} is not 64 MiB aligned")
        self.base = base
        self.heap_id = heap_id
        self.meta: Any = ffi.new("ra_heap_arena *") if meta is None else meta
        self.meta.base = base
        self.meta.heap_id = heap_id
        self.live_pages = 0  # pages mapped to a span
        self.maps_released = False  # page map given back to the OS (reads as all NULL)

    def page_index(self, addr: int) -> int:
        return (addr - self.base) >> PAGE_SHIFT

    def set_spans(self, first_page: int, npages: int, span: Any) -> None:
        """Point pages ``first_page .. first_page+npages-1`` at ``span`` (or NULL)."""
        self.meta.spans[first_page : first_page + npages] = [span] * npages
        self.live_pages += npages if span else -npages
        self.maps_released = self.maps_released and not span

    def set_in_use(self, page: int, in_use: bool) -> None:
        word, bit = divmod(page, 64)
        if in_use:
            self.meta.page_in_use[word] |= 1 << bit
        else:
            self.meta.page_in_use[word] &= ~(1 << bit) & 0xFFFF_FFFF_FFFF_FFFF

    def in_use_pages(self) -> list[int]:
        """Pages whose page_in_use bit is set, in order."""
        pages = []
        for word in range(PAGES_PER_ARENA // 64):
            bits = int(self.meta.page_in_use[word])
            while bits:
                low = bits & -bits
                pages.append(word * 64 + low.bit_length() - 1)
                bits ^= low
        return pages


class ArenaIndex:
    """The process-wide two-level map from arena number to HeapArena."""

    __slots__ = ("_l1", "_l2_memory", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._l1: list[list[HeapArena | None] | None] = [None] * _L1_ENTRIES
        self._l2_memory: list[Any] = [None] * _L1_ENTRIES  # keeps the C L2 arrays alive

    def add(self, arena: HeapArena) -> None:
        """Make ``arena`` findable from its addresses (ARENA-2)."""
        n = arena.base >> ARENA_SHIFT
        hi, lo = n >> _L2_BITS, n & _L2_MASK
        with self.lock:
            l2 = self._l1[hi]
            if l2 is None:
                # C array first: the Python mirror must never show an entry C lacks.
                self._l2_memory[hi] = ffi.new("ra_heap_arena *[]", 1 << _L2_BITS)
                lib.ra_arena_l1[hi] = self._l2_memory[hi]
                l2 = self._l1[hi] = [None] * (1 << _L2_BITS)
            if l2[lo] is not None:
                raise InvalidArgumentError(f"arena {arena.base:#x} is already in the index")
            self._l2_memory[hi][lo] = arena.meta
            l2[lo] = arena

    def remove(self, arena: HeapArena) -> None:
        n = arena.base >> ARENA_SHIFT
        with self.lock:
            l2 = self._l1[n >> _L2_BITS]
            if l2 is None or l2[n & _L2_MASK] is not arena:
                raise InvalidArgumentError(f"arena {arena.base:#x} is not in the index")
            self._l2_memory[n >> _L2_BITS][n & _L2_MASK] = ffi.NULL
            l2[n & _L2_MASK] = None

    def lookup(self, addr: int) -> HeapArena | None:
        """The arena holding ``addr``, or None; O(1) (Go: spanOf's first half)."""
        if not 0 <= addr < 1 << HEAP_ADDR_BITS:
            return None
        n = addr >> ARENA_SHIFT
        l2 = self._l1[n >> _L2_BITS]
        return None if l2 is None else l2[n & _L2_MASK]

    def c_lookup(self, addr: int) -> Any:
        """What C code sees for ``addr``: the ``ra_heap_arena *`` or NULL."""
        n = addr >> ARENA_SHIFT
        l2 = lib.ra_arena_l1[n >> _L2_BITS]
        return ffi.NULL if l2 == ffi.NULL else l2[n & _L2_MASK]


ARENAS: Final = ArenaIndex()
"""The one index of every live heap's arenas in this process."""
