"""Per-thread caches (Go: runtime/mcache.go, type mcache).

See realalloc/__init__.py for an overview of the allocator.

Each thread that allocates from a heap gets an ``MCache``: a ``ra_mcache``
struct in C memory holding one span per span class and the current tiny
block.  The C fast path allocates from it with no lock, and refills it from
the central lists in C (csrc/central.h); Python only makes it, registers it
as the thread's (``Heap._set_cache``), and lets it go:

* ``release()`` (Heap.scavenge) hands every span back, the cache stays usable;
* when the thread ends its ``threading.local`` entry dies and ``__del__``
  releases it for good: spans back to their centrals, counters folded into
  the heap's, unlinked from the heap's list of caches.  One C call, which
  takes only C locks, so it is safe wherever CPython runs it (even while
  clearing a forked child's dead threads).

Empty entries point at the heap's *empty span*, a record with no slots, so
the fast path never tests for NULL (Go: emptymspan).

Invariants (checked by Heap.check):
  CACHE-1: alloc[spc] is the empty span or a span of class spc with cached == 1.
  CACHE-2: tiny != 0  =>  tiny_span is a tiny-class span whose state word for
           the block has RA_TINY_HELD set.

Locking: only the owning thread touches its MCache; ``__del__`` runs after it
ended.  A cache of a closed heap is marked released by MHeap.close, and then
never touches the heap again.  A thread that ends after close began but
before MHeap.close detached the caches is refused by the heap: its record is
still on the heap's list, which that detaching walk writes to, so its C
memory goes to ``MHeap.retired_caches`` instead of being freed.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from ..errors import HeapClosedError
from .osmem import ffi, lib

if TYPE_CHECKING:
    from .heap import Heap

__all__ = ["MCache"]


class MCache:
    """One thread's cache for one heap."""

    __slots__ = ("__weakref__", "_h", "_heap", "c")

    def __init__(self, heap: Heap) -> None:
        self._heap = weakref.ref(heap)
        self._h = heap.c  # the ra_heap, kept alive by this cache
        self.c: Any = ffi.new("ra_mcache *")
        lib.ra_cache_init(self._h, self.c)

    @property
    def address(self) -> int:
        return int(ffi.cast("uintptr_t", self.c))

    def release(self) -> None:
        """Retire the tiny block and hand every span back; the cache refills."""
        lib.ra_cache_release(self._h, self.c, 0)

    def __del__(self) -> None:
        # Inside the heap, so that a stopped world (check, close, fork) waits
        # for this thread's spans to move.  Once released, a no-op.
        heap = self._heap()
        if heap is None:
            lib.ra_cache_release(self._h, self.c, 1)
            return
        try:
            heap._inside(lib.ra_cache_release, self._h, self.c, 1)
        except HeapClosedError:
            # Closed, and maybe not yet detached (see Locking): the page heap
            # keeps the record, so the heap's list never links freed memory.
            heap.mheap.retired_caches.append(self.c)
