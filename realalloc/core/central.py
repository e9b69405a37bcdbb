"""Central span lists: the numbers that steer them, and their checks (Go: runtime/mcentral.go).

See realalloc/__init__.py for an overview of the allocator, and
csrc/central.h for the mechanics: per span class, the spans no thread cache
owns sit on C lists (partial / full / empty) and a refill, a free or a
cache flush moves them in C without Python.  Python owns the policy:

* **batch size** (Go has none; tcmalloc's transfer cache adapts the same
  way): when a class has no span with room, C asks ``Heap._grow_central``,
  which brings ``batch_for(spc)`` fresh spans in one search and one C call.
  A class starts with enough spans for 64 KiB (at least one); its batch
  doubles each time it runs dry again without having given spans back since
  the last batch (demand outruns supply), up to 1 MiB of spans, and halves
  when spans had to be given back (supply outruns demand).
* **empty-span budget** (``empty_max``): empty spans a class keeps for reuse
  before C gives the rest back to the page heap: one batch.  So a class
  whose spans hold one object does not ping-pong pages with the page heap.

* **kept large spans** (``LARGE_KEPT``, ``LARGE_KEPT_BYTES``): the two
  large-object classes (0 and 1) use their empty list for freed large
  objects' spans, up to this many spans and this much memory each (C's
  ``empty_max`` and ``empty_max_pages``), the newest given back first but
  the one just freed kept if it fits: a malloc of the same page count takes
  one in C, without Python (tcmalloc and glibc reuse freed large blocks the
  same way; Go gives the pages back and searches again).  The count serves
  programs that cycle through many sizes of a few pages (mimalloc-bench's
  mstress: 64 spans of 5-16 pages are ~5 MiB); the memory bound keeps big
  objects from piling up (the background scavenger gives every kept span
  back within 0.1 s anyway).  Small classes have no page bound.

``reclaim`` sweeps every dirty stack and gives back every empty span and
every kept large span (``Heap.scavenge``, the background scavenger,
``Heap.reclaim`` and the memory limit's admission call it).

Invariants (checked by ``check``):
  CENTRAL-1: every live small-object span is cached by exactly one thread
             cache or is on exactly one central list of its class.
  CENTRAL-2: a listed span is on the list its room says (as of its last
             sweep: pending frees may give it more room).
  CENTRAL-3: list counts match the lists; a span on a dirty stack has in_dirty.

Locking: C takes a central's lock inside each call.  ``batch_for`` is called
under MHeap.lock (through MHeap.grow_central), the only writer of the numbers.
"""

from __future__ import annotations

from typing import Any, Final

from ..errors import HeapCorruption
from .osmem import ffi, lib
from .sizeclasses import CLASS_TO_NPAGES, NUM_SPAN_CLASSES, PAGE_SIZE

__all__ = ["LARGE_KEPT", "LARGE_KEPT_BYTES", "CentralPolicy", "reclaim"]

FIRST_BATCH_BYTES: Final = 64 << 10
MAX_BATCH_BYTES: Final = 1 << 20
LARGE_KEPT: Final = 64
LARGE_KEPT_BYTES: Final = 8 << 20
NO_PAGE_BOUND: Final = (1 << 32) - 1  # empty_max_pages of a small class

_LISTS: Final = (
    ("partial", lib.RA_LIST_PARTIAL),
    ("full", lib.RA_LIST_FULL),
    ("empty", lib.RA_LIST_EMPTY),
)


class CentralPolicy:
    """Per span class: the batch size and empty-span budget C follows."""

    __slots__ = ("_h", "_released_seen", "batch")

    def __init__(self, h: Any) -> None:
        self._h = h
        self.batch = [0] * NUM_SPAN_CLASSES
        self._released_seen = [0] * NUM_SPAN_CLASSES
        for spc in range(2, NUM_SPAN_CLASSES):
            self.batch[spc] = max(1, FIRST_BATCH_BYTES // self._span_bytes(spc))
            h.central[spc].empty_max = self.batch[spc]
            h.central[spc].empty_max_pages = NO_PAGE_BOUND
        for spc in (0, 1):
            h.central[spc].empty_max = LARGE_KEPT
            h.central[spc].empty_max_pages = LARGE_KEPT_BYTES // PAGE_SIZE

    @staticmethod
    def _span_bytes(spc: int) -> int:
        return CLASS_TO_NPAGES[spc >> 1] * PAGE_SIZE

    def batch_for(self, spc: int) -> int:
        """Spans to bring now that class ``spc`` ran dry; adapts the batch
        and the class's empty-span budget (see the module docstring)."""
        ce = self._h.central[spc]
        released = int(ce.nreleased)
        most = max(1, MAX_BATCH_BYTES // self._span_bytes(spc))
        now = self.batch[spc]
        ce.empty_max = max(int(ce.empty_max), now)
        # The next batch: double while the class keeps running dry without
        # giving spans back, halve once it had to give some back.
        if released != self._released_seen[spc]:
            self.batch[spc] = max(1, now // 2)
        else:
            self.batch[spc] = min(most, now * 2)
        self._released_seen[spc] = released
        return now

    def reclaim(self) -> None:
        reclaim(self._h)

    def has_room(self, spc: int) -> bool:
        """Whether class ``spc`` has a span with room on its lists (read
        without the lock: a hint)."""
        ce = self._h.central[spc]
        return bool(ce.count[lib.RA_LIST_PARTIAL] or ce.count[lib.RA_LIST_EMPTY])

    def check(self, cached: set[int]) -> int:
        """Verify CENTRAL-2/3 and the listed half of CENTRAL-1; return how many
        small-object spans are listed.  ``cached``: ids of the spans thread
        caches own.  Run with the world stopped."""
        listed = 0
        for spc in range(NUM_SPAN_CLASSES):
            ce = self._h.central[spc]
            for name, tag in _LISTS:
                n = 0
                s = ce.list[tag]
                last = ffi.NULL
                while s:
                    n += 1
                    last = s
                    sid = int(s.id)
                    if s.cached or sid in cached or s.spanclass != spc or s.list != tag:
                        raise HeapCorruption(
                            f"CENTRAL-1: span {sid} on {name}[{spc}] is cached, of another "
                            "class or tagged for another list"
                        )
                    room = int(s.nelems) - int(s.alloc_count)
                    want = (
                        lib.RA_LIST_EMPTY
                        if room == s.nelems
                        else lib.RA_LIST_PARTIAL
                        if room
                        else lib.RA_LIST_FULL
                    )
                    if want != tag:
                        raise HeapCorruption(
                            f"CENTRAL-2: span {sid} on {name}[{spc}] has "
                            f"{int(s.alloc_count)}/{int(s.nelems)} slots allocated"
                        )
                    s = s.next
                if n != ce.count[tag] or ce.tail[tag] != last:
                    raise HeapCorruption(
                        f"CENTRAL-3: {name}[{spc}] holds {n} spans, its count says "
                        f"{int(ce.count[tag])}, or its tail is not its last span"
                    )
                listed += n if spc >= 2 else 0
            s = ce.dirty
            while s:
                if not s.in_dirty:
                    raise HeapCorruption(f"CENTRAL-3: span {int(s.id)} is stacked but not dirty")
                s = s.next_dirty
        return listed


def reclaim(h: Any) -> None:
    """Sweep every class's pending frees; give back every empty span and every
    kept large span (C, class by class; no lock of Python's needed)."""
    for spc in range(NUM_SPAN_CLASSES):
        lib.ra_central_reclaim(h, spc)
