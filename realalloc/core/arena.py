"""Heap arenas and the address -> arena index (Go: runtime/mheap.go, heapArena, spanOf).

See realalloc/__init__.py for an overview of the allocator.

A heap arena is a 64 MiB, 64 MiB-aligned region of address space (8192
pages of 8 KiB).  Its metadata, a ``ra_heap_arena`` struct, lives in C memory
so the C kernels can read it::

    ra_heap_arena
    +------------------------------+
    | spans[8192]   page -> span   |  NULL for free pages; every page of an
    |                              |  in-use or manual span points at it
    | page_in_use[128]  bitmap     |  bit set on the first page of each
    |                              |  in-use span (Go: pageInUse)
    | chunks[16]    page bits      |  allocated / scavenged, 512 pages each
    | base, heap_id, live_pages    |
    +------------------------------+

Arenas of every heap in the process are found from an address through one
two-level index (Go: mheap_.arenas), never by a search::

    arena number = addr >> 26                      (22 bits for 48-bit addresses)
    ra_arena_l1[number >> 16][number & 0xffff] -> ra_heap_arena *

C reads the C array ``ra_arena_l1``; ``ArenaIndex`` writes it and keeps a
dict from arena number to the ``HeapArena`` that owns the C memory.

Invariants:
  ARENA-1: ARENAS.lookup(a) is None  <=>  no live heap owns the arena holding a.
  ARENA-2: for an arena in the index, ra_arena_l1[n >> 16][n & 0xffff] is its
           ``meta`` pointer and its ``meta.base == n << 26``.
  ARENA-3: meta.spans[p] is NULL or a span whose pages include p.

Locking: ``ArenaIndex.lock`` guards adding and removing arenas (a leaf lock).
Lookups take no lock: an entry is written before the arena's memory is handed
out and cleared only when the owning heap closes, with the world stopped.
``HeapArena`` fields are C fields under the heap's page lock.
"""

from __future__ import annotations

import threading
from typing import Any, Final

from .. import _fast
from ..errors import InvalidArgumentError
from .osmem import ffi, lib
from .sizeclasses import (
    ARENA_L1_BITS,
    ARENA_L2_BITS,
    ARENA_SHIFT,
    CHUNK_SHIFT,
    HEAP_ADDR_BITS,
    PAGE_SHIFT,
    PAGES_PER_ARENA,
)

__all__ = ["ARENAS", "ARENA_META_BYTES", "ArenaIndex", "HeapArena"]

ARENA_META_BYTES: Final[int] = -(-ffi.sizeof("ra_heap_arena") // 4096) * 4096
"""Metadata mapped per arena (whole OS pages): page map, page_in_use bits, chunk bitmaps."""

_L2_MASK: Final = (1 << ARENA_L2_BITS) - 1
_CHUNKS_MASK: Final = (1 << (ARENA_SHIFT - CHUNK_SHIFT)) - 1


class HeapArena:
    """One 64 MiB arena and its C metadata (Go: heapArena).

    ``base`` (first byte), ``heap_id`` (owner), ``meta`` (the
    ``ra_heap_arena *``, in memory its heap mapped for it).
    """

    __slots__ = ("base", "heap_id", "meta")

    def __init__(self, base: int, heap_id: int, meta: Any) -> None:
        """``meta``: zeroed C memory for the metadata."""
        if base & ((1 << ARENA_SHIFT) - 1):
            raise InvalidArgumentError(f"arena base {base:#x} is not 64 MiB aligned")
        self.base = base
        self.heap_id = heap_id
        self.meta: Any = meta
        meta.base = base
        meta.heap_id = heap_id

    def page_index(self, addr: int) -> int:
        return (addr - self.base) >> PAGE_SHIFT

    def chunk(self, addr: int) -> Any:
        """The ``ra_chunk *`` holding the page bits of ``addr``."""
        return self.meta.chunks + ((addr >> CHUNK_SHIFT) & _CHUNKS_MASK)

    @property
    def live_pages(self) -> int:
        """Pages mapped to spans."""
        return int(self.meta.live_pages)

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

    __slots__ = ("_arenas", "_l2_memory", "lock")

    def __init__(self) -> None:
        self.lock = threading.RLock()  # re-entrant: see realalloc/_debug.py (finalizers)
        self._arenas: dict[int, HeapArena] = {}
        self._l2_memory: list[Any] = [None] * (1 << ARENA_L1_BITS)  # keeps the C arrays alive

    def add(self, arena: HeapArena) -> None:
        """Make ``arena`` findable from its addresses (ARENA-2)."""
        _fast.locked(self.lock, self._add_locked, arena)

    def _add_locked(self, arena: HeapArena) -> None:
        n = arena.base >> ARENA_SHIFT
        hi, lo = n >> ARENA_L2_BITS, n & _L2_MASK
        if n in self._arenas:
            raise InvalidArgumentError(f"arena {arena.base:#x} is already in the index")
        if self._l2_memory[hi] is None:
            l2 = ffi.new("ra_heap_arena *[]", 1 << ARENA_L2_BITS)
            lib.ra_arena_l1[hi] = l2  # C first: the array is kept alive once Python has it
            self._l2_memory[hi] = l2
        # C first: a Python entry always has its C twin.
        self._l2_memory[hi][lo] = arena.meta
        self._arenas[n] = arena

    def remove(self, arena: HeapArena) -> None:
        """Forget ``arena``; a no-op if it is not (or no longer) in the index."""
        _fast.locked(self.lock, self._remove_locked, arena)

    def _remove_locked(self, arena: HeapArena) -> None:
        n = arena.base >> ARENA_SHIFT
        if self._arenas.get(n) is arena:
            del self._arenas[n]
        l2 = self._l2_memory[n >> ARENA_L2_BITS]
        if l2 is not None and l2[n & _L2_MASK] == arena.meta:
            l2[n & _L2_MASK] = ffi.NULL

    def lookup(self, addr: int) -> HeapArena | None:
        """The arena holding ``addr``, or None; O(1) (Go: spanOf's first half)."""
        if not 0 <= addr < 1 << HEAP_ADDR_BITS:
            return None
        return self._arenas.get(addr >> ARENA_SHIFT)

    def c_lookup(self, addr: int) -> Any:
        """What C code sees for ``addr``: the ``ra_heap_arena *`` or NULL."""
        n = addr >> ARENA_SHIFT
        l2 = lib.ra_arena_l1[n >> ARENA_L2_BITS]
        return ffi.NULL if l2 == ffi.NULL else l2[n & _L2_MASK]

    def address(self) -> int:
        """Address of the C index, for ``ra_heap.arena_index``."""
        return int(ffi.cast("uintptr_t", ffi.addressof(lib, "ra_arena_l1")))


ARENAS: Final = ArenaIndex()
"""The one index of every live heap's arenas in this process."""
