"""The page heap (Go: runtime/mheap.go, type mheap).

See realalloc/__init__.py for an overview of the allocator.

``MHeap`` owns a heap's arenas, its C record (``ra_heap``: page bits, span
record pools, central lists, counters) and hands out spans: runs of whole
8 KiB pages.  Python decides where and when: it asks the page allocator
(``PageAlloc``) for the first fit, grows by whole 64 MiB arenas when none
fits, and enforces the memory limit (realalloc/core/limit.py).  C does the
rest in one call: ``ra_span_install`` takes the pages, a record and maps the
pages to it; ``ra_central_grow`` does that for a batch of spans of one class
and files them on its central list.  Spans go away in C too
(``ra_span_uninstall``, or on their own when a large object is freed or a
central has more empty spans than it keeps): freed pages show up in the page
allocator's bitmaps and it refreshes its summaries before the next search.

Growth, in Go's terms: reserve an arena-aligned range (None -> Reserved),
commit it (Reserved -> Ready), map arena metadata and add it to the
process-wide arena index, then ``PageAlloc.grow`` marks its pages free and
scavenged: never touched, so they read as zero.  A failure before the last
step undoes the steps before it; the last step is resumable.

Invariants:
  HEAP-1: every page of a live span maps to that span in its arena, and the
          span's first page has its page_in_use bit set iff IN_USE.
  HEAP-2: pages allocated in ``pages`` == pages of live spans; the counters
          of IN_USE and MANUAL pages agree with the live spans.
  HEAP-3: a page that maps to a span lies inside that live span.

Locking: every method named ``*_locked`` needs ``MHeap.lock`` held by the
caller; the others take it themselves (``self.lock.run``, which refuses
re-entry from the same thread with ReentrancyError): see realalloc/_debug.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import psutil

from .. import _debug
from .._debug import HeapLock, assert_lock_held
from ..errors import (
    HeapClosedError,
    HeapCorruption,
    InvalidArgumentError,
    OutOfMemoryError,
    require_int,
)
from .arena import ARENA_META_BYTES, ARENAS, HeapArena
from .fixalloc import SpanPools
from .lifecycle import register_mheap
from .limit import admit_locked
from .osmem import OSMem, ffi, lib
from .pagealloc import MAX_PAGES, PageAlloc
from .sizeclasses import ARENA_BYTES, CLASS_TO_NPAGES, PAGE_SHIFT, PAGE_SIZE, PAGES_PER_ARENA
from .span import MSpan, SpanState, check_span

__all__ = ["MAX_PAGES", "HeapMetadata", "MHeap"]

_PAGE_MAP_BYTES: Final[int] = ffi.sizeof("ra_span *") * PAGES_PER_ARENA
"""The spans[] map at the start of ra_heap_arena: 16 OS pages, released when idle."""
_CHUNKS_PER_ARENA: Final[int] = lib.RA_CHUNKS_PER_ARENA
_GROW_LIMIT: Final = psutil.virtual_memory().total
"""One growth step may not exceed physical memory: such a request could never be
backed, and its arenas' metadata alone would cost 0.1% of it."""
_OK: Final = lib.RA_OK
_heap_ids = itertools.count(1)


def _growth_bytes(npages: int) -> int:
    """Bytes of whole arenas that hold ``npages`` pages; OutOfMemoryError when
    that is more than the machine's physical memory."""
    nbytes = -(-npages // PAGES_PER_ARENA) * ARENA_BYTES
    if nbytes > _GROW_LIMIT:
        raise OutOfMemoryError(
            f"cannot grow the heap by {npages} pages ({nbytes:#x} bytes): more than the "
            f"machine's {_GROW_LIMIT:#x} bytes of physical memory"
        )
    return nbytes


@dataclass(frozen=True, slots=True)
class HeapMetadata:
    """C memory MHeap holds for metadata, in bytes."""

    mspan_inuse: int
    """Span records (with their bitmaps) in use."""
    mspan_sys: int
    """Record slabs, record headers' share (Go: MSpanSys)."""
    bitmaps: int
    """Record slabs, the bitmaps' share (Go: GCSys)."""
    arenas: int
    """Arena metadata (page -> span maps, page-in-use bits, chunk bitmaps)."""

    @property
    def total(self) -> int:
        return self.mspan_sys + self.bitmaps + self.arenas


class MHeap:
    """A page heap over real memory.  ``close()`` unmaps everything."""

    def __init__(self) -> None:
        self.id = next(_heap_ids)
        self.lock = HeapLock("MHeap.lock")
        self.h: Any = ffi.new("ra_heap *")  # lives as long as this object
        self.h.id = self.id
        self.h.arena_index = ffi.cast("ra_heap_arena ***", ARENAS.address())
        self.empty_span: Any = ffi.new("ra_span *")  # no slots: every fast path misses
        self.h.empty_span = self.empty_span
        self.os = OSMem()
        self.meta_os = OSMem()  # metadata mappings, kept apart from the arenas' accounting
        self.pages = PageAlloc(sys_unused=self.os.release, c=ffi.addressof(self.h[0], "pages"))
        self.pools = SpanPools(self.h, self.meta_os)
        self.arenas: list[HeapArena] = []
        self.closed = False
        self._torn_down = False
        self.memory_limit: int | None = None
        # Metadata held elsewhere (the Heap's thread caches), for the limit.
        self.extra_metadata: Callable[[], int] = lambda: 0
        self.on_grow: Callable[[], None] = lambda: None  # called after each growth
        # Records of thread caches whose thread ended while the heap was
        # closing, kept until _close_locked has detached them (cache.py).
        self.retired_caches: list[Any] = []
        register_mheap(self)

    # -- spans --------------------------------------------------------------

    def alloc_manual(self, npages: int, *, zero: bool = True) -> MSpan:
        """Allocate ``npages`` whole pages as a MANUAL span (Go: allocManual)."""
        npages = require_int("npages", npages, 1, MAX_PAGES)
        return self.alloc_span(npages, SpanState.MANUAL, zero=zero)

    def free_manual(self, span: MSpan) -> None:
        """Return a MANUAL span's pages (Go: freeManual)."""
        self.free_span(span, SpanState.MANUAL)

    def alloc_span(
        self,
        npages: int,
        state: SpanState,
        spanclass: int = 0,
        *,
        zero: bool = True,
        what: str = "",
    ) -> MSpan:
        """A span of ``npages`` pages for a large object (IN_USE, class 0/1) or
        the caller (MANUAL), zeroed if ``zero`` and its pages may hold old
        data.  ``what`` names the request in a memory-limit error."""
        _growth_bytes(npages)  # a span the machine could never back fails first
        out = ffi.new("ra_span **")  # C fills it in the step that installs the span
        try:
            self.lock.run(self._install_locked, npages, state, spanclass, what, out)
            c = out[0]
            if zero and c.needzero:
                lib.ra_memzero(c.base, npages * PAGE_SIZE)
            return MSpan(c)
        except BaseException:
            c = out[0]
            if c != ffi.NULL:  # interrupted after the span appeared: nothing is lost
                lib.ra_span_uninstall(self.h, c, c.state, c.base)
            raise

    def _install_locked(self, npages: int, state: int, spanclass: int, what: str, out: Any) -> None:
        assert_lock_held(self.lock)
        self._check_open()
        pool = self.pools.pool_of(spanclass)
        admit_locked(self, npages, pool, 1, what or f"a span of {npages} pages")
        self.pools.reserve(pool, 1)
        base, new_search, frees = self._find_locked(npages)
        rc = lib.ra_span_install(self.h, base, npages, spanclass, state, out)
        if rc != _OK:
            raise HeapCorruption(f"HEAP-2: installing {npages} pages at {base:#x} failed ({rc})")
        self.pages.raise_search(new_search, frees)
        if _debug.DEBUG >= 3:  # (L3, O(heap)) the page allocator after every change
            self.pages.check()

    def grow_central(self, spc: int, nspans: int, what: str) -> None:
        """Bring ``nspans`` fresh spans of span class ``spc`` to its central
        list: one lock, one search, one C call (ra_central_grow).  Under a
        memory limit that has room for one span but not the batch, one."""
        self.lock.run(self._grow_central_locked, spc, nspans, what)

    def _grow_central_locked(self, spc: int, nspans: int, what: str) -> None:
        assert_lock_held(self.lock)
        self._check_open()
        span_pages = CLASS_TO_NPAGES[spc >> 1]
        pool = self.pools.pool_of(spc)
        try:
            admit_locked(self, span_pages * nspans, pool, nspans, what)
        except OutOfMemoryError:
            if nspans == 1:
                raise
            nspans = 1
            admit_locked(self, span_pages, pool, 1, what)
        npages = span_pages * nspans
        self.pools.reserve(pool, nspans)
        base, new_search, frees = self._find_locked(npages)
        if lib.ra_central_grow(self.h, spc, base, nspans) != nspans:
            raise HeapCorruption(f"HEAP-2: a batch of {nspans} spans at {base:#x} failed")
        self.pages.raise_search(new_search, frees)
        if _debug.DEBUG >= 3:  # (L3, O(heap))
            self.pages.check()

    def _find_locked(self, npages: int) -> tuple[int, int, int]:
        """First fit of ``npages`` pages, growing the heap when none fits."""
        found = self.pages.find(npages)
        if not found[0]:
            self.grow_locked(npages)
            found = self.pages.find(npages)
            if not found[0]:
                raise HeapCorruption(f"HEAP-4: grew the heap but {npages} pages do not fit")
        return found

    def free_span(self, span: MSpan, state: SpanState = SpanState.IN_USE) -> int:
        """Return a live span's pages; returns how many.  It must be in
        ``state``, uncached and on no central list (checked in C, under the
        page lock)."""
        return self.lock.run(self._free_span_locked, span, state)

    def _free_span_locked(self, span: MSpan, state: SpanState) -> int:
        self._check_open()
        c = span.c
        npages = int(c.npages)
        if lib.ra_span_uninstall(self.h, c, state, c.base) != _OK:
            raise InvalidArgumentError(f"{span!r} is not a live {state.name} span")
        return npages

    def span_of(self, addr: int) -> MSpan | None:
        """The live span holding ``addr``, or None; O(1) (Go: spanOf)."""
        self._check_open()
        arena = ARENAS.lookup(addr)
        if arena is None or arena.heap_id != self.id:
            return None
        c = arena.meta.spans[arena.page_index(addr)]
        return None if c == ffi.NULL else MSpan(c)

    def live_spans(self) -> list[MSpan]:
        """Every span in use (a snapshot; records in pool order)."""
        self._check_open()
        return [MSpan(r) for r in self.pools.records() if r.state != SpanState.FREE]

    # -- memory ---------------------------------------------------------------

    def scavenge(self, nbytes: int | None = None) -> int:
        """Release up to ``nbytes`` (all when None) of free pages to the OS,
        highest addresses first; with None also unused metadata.  Returns the
        bytes of pages released."""
        return self.lock.run(self._scavenge_locked, nbytes)

    def _scavenge_locked(self, nbytes: int | None) -> int:
        self._check_open()
        limit = self.pages.npages_total * PAGE_SIZE if nbytes is None else nbytes
        released = self.pages.scavenge(require_int("nbytes", limit))
        if nbytes is None:
            self._trim_metadata_locked()
        return released

    def _trim_metadata_locked(self) -> int:
        """Give unused metadata back to the OS: empty record slabs, and the page
        maps of arenas that hold no span (zero pages read as all NULL)."""
        released = self.pools.trim()
        for arena in self.arenas:
            # Only this lock's holder installs spans; C frees only lower live_pages.
            meta = arena.meta
            if not meta.live_pages and not meta.maps_released:
                self.meta_os.release(int(ffi.cast("uintptr_t", meta)), _PAGE_MAP_BYTES)
                meta.maps_released = 1
                released += _PAGE_MAP_BYTES
        return released

    def scavenge_excess(self, retain_percent: int, max_bytes: int) -> int:
        """Release up to ``max_bytes`` of the free resident pages beyond
        ``retain_percent`` % of the in-use pages (Go: retainExtraPercent)."""
        return self.lock.run(self._scavenge_excess_locked, retain_percent, max_bytes)

    def _scavenge_excess_locked(self, retain_percent: int, max_bytes: int) -> int:
        if self.closed:
            return 0
        pages = self.pages
        pages.sync()
        resident_free = (pages.npages_free - pages.npages_scavenged) * PAGE_SIZE
        inuse = int(self.h.counts.inuse_pages) * PAGE_SIZE
        excess = resident_free - inuse * retain_percent // 100
        return pages.scavenge(min(excess, max_bytes)) if excess > 0 else 0

    def metadata(self) -> HeapMetadata:
        """C memory held for metadata, by kind.  Bitmaps live inside span
        records; their share of the record slabs counts as ``bitmaps``."""
        pools = self.pools
        record = ffi.sizeof("ra_span")
        slabs = [pools.nbytes_of(i) for i in range(len(pools.shapes))]
        bitmaps = sum(
            n * (shape.stride - record) // shape.stride
            for n, shape in zip(slabs, pools.shapes, strict=True)
        )
        released_maps = sum(_PAGE_MAP_BYTES for a in self.arenas if a.meta.maps_released)
        return HeapMetadata(
            mspan_inuse=pools.live_bytes,
            mspan_sys=sum(slabs) - bitmaps,
            bitmaps=bitmaps,
            arenas=len(self.arenas) * ARENA_META_BYTES - released_maps,
        )

    def retained_locked(self) -> int:
        """Bytes that may be resident: heap pages not released, plus metadata.
        A page map released by scavenge counts as resident: a span installed
        in its arena brings it back (C writes it) without asking the limit."""
        assert_lock_held(self.lock)
        pages = self.pages
        resident = (pages.npages_total - pages.npages_scavenged) * PAGE_SIZE
        maps = sum(_PAGE_MAP_BYTES for a in self.arenas if a.meta.maps_released)
        return resident + self.metadata().total + maps + self.extra_metadata()

    # -- growth ---------------------------------------------------------------

    def grow_locked(self, npages: int) -> None:
        """Add enough whole arenas for ``npages`` pages (Go: mheap.grow)."""
        assert_lock_held(self.lock)
        nbytes = _growth_bytes(npages)
        base = self.os.reserve(nbytes, ARENA_BYTES)
        added: list[HeapArena] = []
        metas: list[int] = []
        try:
            self.os.commit(base)
            for i in range(nbytes // ARENA_BYTES):
                metas.append(self.meta_os.map(ARENA_META_BYTES))
                arena = HeapArena(
                    base + i * ARENA_BYTES, self.id, ffi.cast("ra_heap_arena *", metas[-1])
                )
                added.append(arena)
                ARENAS.add(arena)
            self.arenas.extend(added)
        except BaseException:
            # Nothing of the new range was handed out: undo every step.
            for arena in added:
                ARENAS.remove(arena)
                if arena in self.arenas:
                    self.arenas.remove(arena)
            for meta in metas:
                self.meta_os.abandon(meta)
            self.os.abandon(base)
            raise
        # From here on growth is resumable (PageAlloc.grow), never undone.
        chunks = [a.meta.chunks + k for a in added for k in range(_CHUNKS_PER_ARENA)]
        self.pages.grow(base, nbytes, chunks)
        self.on_grow()

    # -- life cycle -------------------------------------------------------------

    def close(self) -> None:
        """Unmap every arena.  Idempotent and resumable; later calls of other
        methods raise HeapClosedError."""
        self.lock.run(self._close_locked)

    def _close_locked(self) -> None:
        self.closed = True
        if self._torn_down:
            return
        # Thread caches die with their threads later: they must not touch
        # the span records unmapped here.  No cache leaves the list
        # meanwhile: a thread's end releases its cache inside the heap,
        # which refuses once closed (Heap.close); the record of a cache
        # refused so waits in retired_caches, never freed while listed.
        c = self.h.caches
        while c:
            c.released = 1
            c = c.next
        self.h.caches = ffi.NULL
        self.retired_caches.clear()  # detached: their memory may go now
        for arena in self.arenas:
            ARENAS.remove(arena)
        self.arenas = []
        self.os.unmap_all()
        self.meta_os.unmap_all()  # span records too: MSpan handles die with the heap
        self._torn_down = True

    def _check_open(self) -> None:
        if self.closed:
            raise HeapClosedError(f"heap {self.id} is closed")

    # -- invariants ---------------------------------------------------------------

    def check(self) -> None:
        """Verify HEAP-1..3, FIX-*, OS-1 and every PageAlloc invariant; raise
        HeapCorruption naming the broken one."""
        self.lock.run(self._check_locked)

    def _check_locked(self) -> None:
        self._check_open()
        self.pages.check()
        live = self.live_spans()
        for span in live:
            self._check_span_locked(span)
        self.pools.check(len(live))
        mapped = 0
        for arena in self.arenas:
            spans = arena.meta.spans
            for page in range(PAGES_PER_ARENA):
                c = spans[page]
                if c == ffi.NULL:
                    continue
                mapped += 1
                addr = arena.base + (page << PAGE_SHIFT)
                if c.state == SpanState.FREE or not c.base <= addr < c.base + (
                    c.npages << PAGE_SHIFT
                ):
                    raise HeapCorruption(f"HEAP-3: page {addr:#x} maps to a dead span")
        inuse = sum(s.npages for s in live if s.state == SpanState.IN_USE)
        manual = sum(s.npages for s in live if s.state == SpanState.MANUAL)
        allocated = self.pages.npages_total - self.pages.npages_free
        counts = self.h.counts
        if mapped != inuse + manual or allocated != mapped:
            raise HeapCorruption(
                f"HEAP-2: {allocated} pages allocated, {inuse + manual} in spans ({mapped} mapped)"
            )
        if (int(counts.inuse_pages), int(counts.manual_pages)) != (inuse, manual):
            raise HeapCorruption(
                f"HEAP-2: counters say {int(counts.inuse_pages)} in-use and "
                f"{int(counts.manual_pages)} manual pages; spans {inuse} and {manual}"
            )
        os_stats = self.os.stats()
        if (
            not 0
            <= self.pages.npages_scavenged * PAGE_SIZE
            <= os_stats.ready
            <= (os_stats.reserved)
        ):
            raise HeapCorruption(
                f"OS-1: released {self.pages.npages_scavenged * PAGE_SIZE}, "
                f"ready {os_stats.ready}, reserved {os_stats.reserved}"
            )

    def _check_span_locked(self, span: MSpan) -> None:
        assert_lock_held(self.lock)
        c = span.c
        check_span(c)
        for page in range(span.npages):
            addr = span.base + (page << PAGE_SHIFT)
            arena = ARENAS.lookup(addr)
            if arena is None or arena.meta.spans[arena.page_index(addr)] != c:
                raise HeapCorruption(f"HEAP-1: page {addr:#x} of {span!r} does not map to it")
            if not self.pages.is_allocated(addr):
                raise HeapCorruption(f"HEAP-1: page {addr:#x} of {span!r} is free in PageAlloc")
        arena = ARENAS.lookup(span.base)
        assert arena is not None
        first = arena.page_index(span.base)
        in_use = bool(arena.meta.page_in_use[first // 64] >> (first % 64) & 1)
        if in_use != (span.state == SpanState.IN_USE):
            raise HeapCorruption(f"HEAP-1: page_in_use bit of {span!r} is {in_use}")
