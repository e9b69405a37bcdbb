"""Central span lists, one per span class (Go: runtime/mcentral.go, type mcentral).

See realalloc/__init__.py for an overview of the allocator.

An ``MCentral`` holds the spans of one span class that no thread cache owns,
on two intrusive lists (Go keeps swept/unswept span sets; with explicit free
the split that matters is whether a span has room)::

    partial: uncached spans with a free slot as of their last sweep
    full:    uncached spans with no free slot as of their last sweep

Frees do not touch the lists.  A free into an uncached span sets a bit in
the span's ``free_bits`` and, the first time, pushes the span on the heap's
lock-free *dirty stack* for its class (csrc/spanbits.h).  Whoever next holds
this central's lock drains that stack and sweeps each span: pending frees
become free slots, a span with room moves to ``partial``, and a span with no
object left goes back to the page heap.

Refill (``cache_span``): drain the dirty stack, take a partial span, else a
fresh span from ``MHeap``.  Return (``uncache_span``): mark the span
uncached, sweep it if frees arrived while it was cached, and file it.

Invariants (checked by ``check``):
  CENTRAL-1: every live span of this class is cached by exactly one thread
             cache or is on exactly one of partial/full, never both.
  CENTRAL-2: on partial, alloc_count < nelems; on full, alloc_count == nelems.
  CENTRAL-3: a span released to the page heap is on no list and not on the
             dirty stack.

Locking: ``MCentral.lock`` guards both lists, sweeping and the dirty stack's
consumer side.  Lock order: MCentral.lock -> MHeap.lock (realalloc/_debug.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from . import _debug
from ._debug import OwnedLock, assert_lock_held
from .errors import HeapCorruption
from .osmem import ffi, lib
from .sizeclasses import CLASS_TO_NPAGES
from .span import MSpan, SpanList, SpanState, check_span

if TYPE_CHECKING:
    from .mheap import MHeap

__all__ = ["MCentral"]

_PARTIAL: Final = 1
_FULL: Final = 2


class MCentral:
    """The uncached spans of one span class."""

    __slots__ = ("_h", "full", "lock", "mheap", "partial", "spanclass")

    def __init__(self, mheap: MHeap, h: Any, spanclass: int) -> None:
        self.mheap = mheap
        self._h = h  # the heap's ra_heap *, for its dirty stacks
        self.spanclass = spanclass
        self.lock = OwnedLock(f"MCentral[{spanclass}].lock")
        self.partial = SpanList(_PARTIAL)
        self.full = SpanList(_FULL)

    def cache_span(self) -> Any:
        """A span with a free slot, marked cached, for a thread cache (Go: cacheSpan)."""
        with self.lock:
            self._drain_dirty_locked()
            s = self.partial.pop()
            if s != ffi.NULL:
                s.cached = 1
                return s
        npages = CLASS_TO_NPAGES[self.spanclass >> 1]
        s = self.mheap.alloc_span(npages, SpanState.IN_USE, self.spanclass).c
        s.cached = 1
        return s

    def uncache_span(self, s: Any) -> None:
        """Take back a span from a thread cache (Go: uncacheSpan)."""
        with self.lock:
            if lib.ra_span_uncache(s):
                lib.ra_span_sweep(s)
            self._place_locked(s)

    def span_emptied(self) -> None:
        """A free left an uncached span without objects: sweep and release now."""
        with self.lock:
            self._drain_dirty_locked()

    def _drain_dirty_locked(self) -> None:
        """Sweep every span on this class's dirty stack and file it again."""
        assert_lock_held(self.lock)
        s = lib.ra_heap_take_dirty(self._h, self.spanclass)
        while s != ffi.NULL:
            after = s.next_dirty  # read before the span can be pushed again
            lib.ra_span_clear_dirty(s)
            if not s.cached and s.state == SpanState.IN_USE and s.spanclass == self.spanclass:
                self._unlist_locked(s)
                lib.ra_span_sweep(s)
                self._place_locked(s)
            s = after

    def _unlist_locked(self, s: Any) -> None:
        if s.list == _PARTIAL:
            self.partial.remove(s)
        elif s.list == _FULL:
            self.full.remove(s)

    def _place_locked(self, s: Any) -> None:
        """File a swept, uncached span: partial, full, or back to the page heap."""
        assert_lock_held(self.lock)
        if _debug.DEBUG >= 2:  # (L2, O(nelems)) every span as it changes hands
            check_span(s)
        if s.alloc_count == 0:
            if s.in_dirty:
                # A racing free pushed it; the stack must not keep a released record.
                self._drain_dirty_locked()
                return
            self.mheap.free_span(MSpan(s))
        elif s.alloc_count < s.nelems:
            self.partial.push(s)
        else:
            self.full.push(s)

    def check(self, cached: set[int]) -> int:
        """Verify CENTRAL-1/2 for the listed spans; return how many there are.
        ``cached`` holds the ids of spans that thread caches own."""
        with self.lock:
            n = 0
            for lst, name in ((self.partial, "partial"), (self.full, "full")):
                for s in lst:
                    n += 1
                    sid = int(s.id)
                    if s.cached or sid in cached or s.spanclass != self.spanclass:
                        raise HeapCorruption(
                            f"CENTRAL-1: span {sid} on {name}[{self.spanclass}] "
                            "is cached or of another class"
                        )
                    room = s.alloc_count < s.nelems
                    if room != (lst is self.partial):
                        raise HeapCorruption(
                            f"CENTRAL-2: span {sid} on {name}[{self.spanclass}] has "
                            f"{int(s.alloc_count)}/{int(s.nelems)} slots allocated"
                        )
            if n != self.partial.count + self.full.count:
                raise HeapCorruption(f"CENTRAL-1: list counts of class {self.spanclass} are wrong")
            return n
