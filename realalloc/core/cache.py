"""Per-thread caches (Go: runtime/mcache.go, type mcache).

See realalloc/__init__.py for an overview of the allocator.

Each thread that allocates from a heap gets an ``MCache``: a ``ra_mcache``
struct in C memory holding one span per span class and the current tiny
block.  The C fast path (csrc/spanbits.h, csrc/fastpath.c) allocates from it
with no lock; this module is the slow path behind it:

* ``refill(spc)`` when the span of a class is full: sweep it if frees have
  arrived since, else hand it back to its MCentral and take one with room
  (Go: mcache.refill);
* ``release_all()`` when the thread ends (then its counters are absorbed
  into the heap's) or when it scavenges: retire the tiny block and hand every
  span back (Go: mcache.releaseAll).

Empty entries point at the heap's *empty span*, a record with no slots, so
the fast path never tests for NULL (Go: emptymspan).

Invariants:
  CACHE-1: alloc[spc] is the empty span or a span of class spc with cached == 1.
  CACHE-2: tiny != 0  =>  tiny_span is a tiny-class span whose state word for
           the block has RA_TINY_HELD set.

Locking: only the owning thread touches its MCache, except ``release_all``
from the finalizer after the thread has ended.  ``refill`` and ``release_all`` take
MCentral locks; they must not be called with any lock held.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .osmem import ffi, lib
from .sizeclasses import NUM_SPAN_CLASSES

if TYPE_CHECKING:
    from .heap import Heap

__all__ = ["MCache"]


class MCache:
    """One thread's cache for one heap."""

    __slots__ = ("__weakref__", "c", "heap")

    def __init__(self, heap: Heap) -> None:
        self.heap = heap
        self.c: Any = ffi.new("ra_mcache *")
        empty = heap.empty_span
        for spc in range(NUM_SPAN_CLASSES):
            self.c.alloc[spc] = empty

    @property
    def address(self) -> int:
        return int(ffi.cast("uintptr_t", self.c))

    def refill(self, spc: int) -> None:
        """Swap the full span of class ``spc`` for one with a free slot."""
        c, empty = self.c, self.heap.empty_span
        old = c.alloc[spc]
        central = self.heap.central[spc]
        # Frees arrived while we held it?  The owner may sweep its own span
        # (other threads only set free bits); with enough room it stays.
        if old.nfreed and lib.ra_span_sweep(old) >= central.min_room:
            return
        if old != empty:
            c.alloc[spc] = empty  # never keep a span this cache no longer owns
            central.uncache_span(old)
        c.alloc[spc] = central.cache_span()

    def release_all(self) -> None:
        """Retire the tiny block and give every span back to its MCentral
        (Go: mcache.releaseAll).  The cache stays usable: it refills."""
        c, heap = self.c, self.heap
        idx = ffi.new("uint32_t *")
        dead = lib.ra_cache_tiny_retire(c, idx)
        if dead != ffi.NULL:
            lib.ra_span_free_slot(heap.c, dead, idx[0], c)
        empty = heap.empty_span
        for spc in range(NUM_SPAN_CLASSES):
            s = c.alloc[spc]
            if s != empty:
                c.alloc[spc] = empty
                heap.central[spc].uncache_span(s)

    def cached_ids(self) -> list[int]:
        empty = self.heap.empty_span
        return [int(s.id) for s in self.c.alloc if s != empty]

    def __del__(self) -> None:
        # Runs when the owning thread ends (its threading.local entry dies).
        heap = self.heap
        if not heap.closed:
            with heap.lifecycle_lock:
                if not heap.closed:
                    self.release_all()
                    heap.absorb_counts(self)
