"""Central span lists, one per span class (Go: runtime/mcentral.go, type mcentral).

See realalloc/__init__.py for an overview of the allocator.

An ``MCentral`` holds the spans of one span class that no thread cache owns,
on three intrusive lists (Go keeps swept/unswept span sets; with explicit
free what matters is how much room a span has)::

    partial: room >= min_room(nelems)   ready for a thread cache
    full:    0 < alloc_count and room < min_room: waits for more frees
    empty:   alloc_count == 0, at most ``stash`` spans (64 KiB, two at
             least): reused before asking MHeap, so a class whose spans hold
             one or two objects does not ping-pong pages with MHeap

Frees do not touch the lists.  A free into an uncached span sets a bit in
the span's ``free_bits``; once a ``full`` span has collected enough frees to
leave ``full`` (its ``sweep_at``), or any span has lost its last object, the
free pushes it on the heap's lock-free *dirty stack* for its class
(csrc/spanbits.h).  Whoever next holds
this central's lock drains that stack and sweeps each span: pending frees
become free slots and the span is filed again by its room.  So a span whose
last object is freed goes back to the page heap lazily: at the next refill of
its class, or at ``reclaim`` (``Heap.scavenge`` and the background scavenger
call it for every class).

Refill (``cache_span``): drain the dirty stack, take a partial span, else a
stashed empty one, else a fresh span from ``MHeap``.  Return
(``uncache_span``): mark the span uncached, sweep it if frees arrived while
it was cached, and file it.

Invariants (checked by ``check``):
  CENTRAL-1: every live span of this class is cached by exactly one thread
             cache or is on exactly one of partial/full/empty, never both.
  CENTRAL-2: a listed span is on the list its room says (as of its last sweep).
  CENTRAL-3: a span released to the page heap is on no list and not on the
             dirty stack.

Locking: ``MCentral.lock`` guards the lists, sweeping and the dirty stack's
consumer side.  Lock order: MCentral.lock -> MHeap.lock (realalloc/_debug.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from .. import _debug
from .._debug import assert_lock_held, new_lock
from ..errors import HeapCorruption
from .osmem import PAGE_SIZE, lib
from .sizeclasses import CLASS_TO_NPAGES, CLASS_TO_SIZE
from .span import MSpan, SpanList, SpanState, check_span

if TYPE_CHECKING:
    from .mheap import MHeap


def min_room(nelems: int) -> int:
    """Free slots a swept span needs to be handed to a thread cache again: an
    eighth of its slots, at least one.  A refill costs microseconds of Python,
    so a span that would yield one or two slots waits on ``full`` for more
    frees instead (Go refills in nanoseconds and takes any room)."""
    return max(1, nelems >> 3)


__all__ = ["MCentral", "min_room"]

_PARTIAL: Final = 1
_FULL: Final = 2
_EMPTY: Final = 3
_NEVER: Final = 0xFFFF_FFFF
_STASH_BYTES: Final = 64 << 10
"""Empty spans a central keeps for reuse: this many bytes of them, at least two
spans (the rest go back to MHeap)."""


class MCentral:
    """The uncached spans of one span class."""

    __slots__ = (
        "_h",
        "_lists",
        "empty",
        "full",
        "lock",
        "mheap",
        "min_room",
        "nelems",
        "npages",
        "partial",
        "spanclass",
        "stash",
    )

    def __init__(self, mheap: MHeap, h: Any, spanclass: int) -> None:
        self.mheap = mheap
        self._h = h  # the heap's ra_heap *, for its dirty stacks
        self.spanclass = spanclass
        self.lock = new_lock(f"MCentral[{spanclass}].lock")
        self.partial = SpanList(_PARTIAL)
        self.full = SpanList(_FULL)
        self.empty = SpanList(_EMPTY)
        self._lists = (self.partial, self.full, self.empty)  # by tag - 1
        sizeclass = spanclass >> 1
        self.npages = CLASS_TO_NPAGES[sizeclass] if sizeclass else 0
        self.nelems = self.npages * PAGE_SIZE // CLASS_TO_SIZE[sizeclass] if sizeclass else 1
        self.min_room = min_room(self.nelems)
        self.stash = max(2, _STASH_BYTES // max(1, self.npages * PAGE_SIZE))

    def cache_span(self) -> Any:
        """A span with room, marked cached, for a thread cache (Go: cacheSpan):
        a partial span, else a stashed empty one, else a fresh one from MHeap."""
        with self.lock:
            if self._h.dirty[self.spanclass]:
                self._drain_dirty_locked()
            s = self.partial.pop() or self.empty.pop()
            if s:
                s.cached = 1
                return s
        s = self.mheap.alloc_span(self.npages, SpanState.IN_USE, self.spanclass).c
        s.cached = 1
        return s

    def uncache_span(self, s: Any) -> None:
        """Take back a span from a thread cache (Go: uncacheSpan)."""
        with self.lock:
            self._place_locked(s, lib.ra_span_uncache(s))

    def reclaim(self) -> None:
        """Sweep the dirty stack and give every stashed empty span back to MHeap."""
        with self.lock:
            self._drain_dirty_locked()
            while s := self.empty.pop():
                self.mheap.free_span(MSpan(s))

    def _drain_dirty_locked(self) -> None:
        """Sweep every span on this class's dirty stack; move the ones whose
        room now calls for another list."""
        assert_lock_held(self.lock)
        lists = self._lists
        s = lib.ra_heap_take_dirty(self._h, self.spanclass)
        while s:
            after = s.next_dirty  # read before the span can be pushed again
            room = lib.ra_span_sweep_dirty(s, self.spanclass)
            if room != lib.RA_NOT_SWEPT:
                tag = s.list
                if tag != self._list_for(room):
                    if tag:
                        lists[tag - 1].remove(s)
                    self._place_locked(s, room)
            s = after

    def _list_for(self, room: int) -> int:
        if room == self.nelems:
            return _EMPTY
        return _PARTIAL if room >= self.min_room else _FULL

    def _place_locked(self, s: Any, room: int) -> None:
        """File a swept, uncached, unlisted span with ``room`` free slots:
        partial, full, the stash of empty spans, or back to the page heap."""
        assert_lock_held(self.lock)
        if _debug.DEBUG >= 2:  # (L2, O(nelems)) every span as it changes hands
            check_span(s)
        tag = self._list_for(room)
        # Frees a span needs before it is worth sweeping again: enough to
        # leave ``full``; on the other lists only its last object matters.
        s.sweep_at = self.min_room - room if tag == _FULL else _NEVER
        if tag != _EMPTY:
            self._lists[tag - 1].push(s)
        elif self.empty.count < self.stash:
            self.empty.push(s)
        elif s.in_dirty:
            # A racing free pushed it; the stack must not keep a released record.
            self._drain_dirty_locked()
        else:
            self.mheap.free_span(MSpan(s))

    def check(self, cached: set[int]) -> int:
        """Verify CENTRAL-1/2 for the listed spans; return how many there are.
        ``cached`` holds the ids of spans that thread caches own."""
        with self.lock:
            n = 0
            for lst, name in (
                (self.partial, "partial"),
                (self.full, "full"),
                (self.empty, "empty"),
            ):
                for s in lst:
                    n += 1
                    sid = int(s.id)
                    if s.cached or sid in cached or s.spanclass != self.spanclass:
                        raise HeapCorruption(
                            f"CENTRAL-1: span {sid} on {name}[{self.spanclass}] "
                            "is cached or of another class"
                        )
                    room = int(s.nelems - s.alloc_count)
                    want = (
                        self.empty
                        if room == s.nelems
                        else self.partial
                        if room >= self.min_room
                        else self.full
                    )
                    if lst is not want:
                        raise HeapCorruption(
                            f"CENTRAL-2: span {sid} on {name}[{self.spanclass}] has "
                            f"{int(s.alloc_count)}/{int(s.nelems)} slots allocated"
                        )
            if n != self.partial.count + self.full.count + self.empty.count:
                raise HeapCorruption(f"CENTRAL-1: list counts of class {self.spanclass} are wrong")
            return n
