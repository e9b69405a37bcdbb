"""The page heap (Go: runtime/mheap.go, type mheap).

See realalloc/__init__.py for an overview of the allocator.

``MHeap`` owns a heap's arenas and hands out spans: runs of whole 8 KiB
pages.  It asks the page allocator (``PageAlloc``) where ``npages`` free pages
are, grows by whole 64 MiB arenas when none fit, records each span in the
arena's page -> span map, and returns freed pages to the page allocator,
which coalesces them.  Free pages are given back to the OS by ``scavenge``.

Small page requests (fewer than 16 pages) are served from a per-thread
``PageCache`` of up to 64 pages taken from one chunk, so that a thread finds
pages without the heap lock (Go: p.pcache).

Growth, in Go's terms: reserve an arena-aligned range (None -> Reserved),
commit it (Reserved -> Ready), add it to the process-wide arena index, then
``PageAlloc.grow`` marks its pages free and scavenged: never touched, so they
read as zero.  A failure at any step undoes the steps before it.

Invariants:
  HEAP-1: every page of a span in ``spans`` maps to that span in its arena,
          and the span's first page has its page_in_use bit set iff IN_USE.
  HEAP-2: pages allocated in ``pages`` == pages of live spans + pages held in
          per-thread page caches.
  HEAP-3: a page of a free run maps to no span.

Locking: every method named ``*_locked`` needs ``MHeap.lock`` held by the
caller; others take it themselves.  Lock order: see realalloc/_debug.py.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import psutil

from .. import _debug
from .._debug import assert_lock_held, new_lock
from ..errors import (
    HeapClosedError,
    HeapCorruption,
    InvalidArgumentError,
    OutOfMemoryError,
    require_int,
)
from .arena import ARENAS, PAGES_PER_ARENA, HeapArena
from .fixalloc import SLAB_BYTES, FixAlloc
from .osmem import ARENA_BYTES, PAGE_SIZE, OSMem, ffi, lib
from .pagealloc import PageAlloc
from .pagecache import PageCache
from .sizeclasses import CLASS_TO_DIVMAGIC, CLASS_TO_SIZE
from .span import MSpan, SpanState, check_span

__all__ = ["MAX_PAGES", "HeapMetadata", "MHeap"]

PAGE_SHIFT: Final = 13
MAX_PAGES: Final = (1 << 46) >> PAGE_SHIFT
"""Largest request: half of the 47-bit user address space."""
_PAGE_CACHE_MAX: Final = 16
"""Requests below this many pages use the per-thread page cache (Go: pageCachePages/4)."""
TINY_SLOTS: Final = PAGE_SIZE // 16
"""Slots of a tiny-class span (one page of 16-byte blocks)."""
_WORD: Final = (1 << 64) - 1
_SLAB_SLACK: Final[int] = 4 * (SLAB_BYTES + 4 * TINY_SLOTS)
"""The most metadata one span allocation can add besides arena maps: a slab
each of span records, alloc bits, free bits and tiny states."""
_PAGE_MAP_BYTES: Final[int] = ffi.sizeof("ra_span *") * PAGES_PER_ARENA
"""The spans[] map at the start of ra_heap_arena: 16 OS pages, page aligned."""
_ZERO_ARENA: Final = bytes(ffi.sizeof("ra_heap_arena"))
_ZERO_SPAN: Final = bytes(ffi.sizeof("ra_span"))
_GROW_LIMIT: Final = psutil.virtual_memory().total
"""One growth step may not exceed physical memory: such a request could never be
backed, and its arenas' metadata alone would cost 0.1% of it."""
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
    """Span records in use."""
    mspan_sys: int
    """Slabs of span records."""
    bitmaps: int
    """Slabs of span bitmaps and tiny state words."""
    arenas: int
    """Arena metadata (page -> span maps, page-in-use bits)."""

    @property
    def total(self) -> int:
        return self.mspan_sys + self.bitmaps + self.arenas


class _ThreadPages:
    """One thread's page cache for one heap; flushed when the thread ends."""

    __slots__ = ("__weakref__", "cache", "heap")

    def __init__(self, heap: MHeap) -> None:
        self.heap = heap
        self.cache = PageCache(0, 0, 0)

    def __del__(self) -> None:
        heap = self.heap
        if not heap.closed and not self.cache.empty():
            with heap.lock:
                if not heap.closed:
                    self.cache.flush(heap.pages)


class MHeap:
    """A page heap over real memory.  ``close()`` unmaps everything."""

    def __init__(self) -> None:
        self.id = next(_heap_ids)
        self.lock = new_lock("MHeap.lock")
        self.os = OSMem()
        self.pages = PageAlloc(sys_unused=self.os.release)
        self.arenas: list[HeapArena] = []
        self.meta_os = OSMem()  # metadata mappings, kept apart from the arenas' accounting
        self.spans = FixAlloc(self.meta_os, "ra_span")  # span records, by id
        self._bitmaps: dict[int, FixAlloc] = {}  # by words per bitmap
        self._tiny_states = FixAlloc(self.meta_os, "uint32_t", TINY_SLOTS, 1 << 20)
        self._arena_meta = FixAlloc(self.meta_os, "ra_heap_arena", 1, 1 << 16)
        self._local = threading.local()
        # Weak: a thread's cache must die (and flush) with the thread.
        self._thread_pages: weakref.WeakSet[_ThreadPages] = weakref.WeakSet()
        self.closed = False
        self.inuse_pages = 0  # pages of IN_USE spans
        self.manual_pages = 0  # pages of MANUAL spans
        self.memory_limit: int | None = None
        # Metadata held elsewhere (the Heap's thread caches), for the limit.
        self.extra_metadata: Callable[[], int] = lambda: 0
        self.on_grow: Callable[[], None] = lambda: None  # called after each growth

    # -- public entry points (take the lock) ------------------------------

    def alloc_manual(self, npages: int, *, zero: bool = True) -> MSpan:
        """Allocate ``npages`` whole pages as a MANUAL span (Go: allocManual)."""
        npages = require_int("npages", npages, 1, MAX_PAGES)
        return self.alloc_span(npages, SpanState.MANUAL, zero=zero)

    def free_manual(self, span: MSpan) -> None:
        """Return a MANUAL span's pages (Go: freeManual)."""
        self.free_span(span, SpanState.MANUAL)

    def free_span(
        self, span: MSpan, state: SpanState = SpanState.IN_USE, base: int | None = None
    ) -> int:
        """Return a span's pages; returns how many.  It must be live, in
        ``state`` and, when ``base`` is given, still start there (checked under
        the lock, so two racing frees of one large object cannot both succeed;
        the record may be reused the moment the lock is dropped)."""
        with self.lock:
            self._check_open()
            c = span.c
            if c.state != state or (base is not None and c.base != base):
                raise InvalidArgumentError(f"{span!r} is not a live {state.name} span")
            npages = int(c.npages)
            self.free_span_locked(span)
            return npages

    def alloc_span(
        self, npages: int, state: SpanState, spanclass: int = 0, *, zero: bool = True
    ) -> MSpan:
        """Find ``npages`` pages, growing the heap if needed, and make a span.

        An IN_USE span of a small span class (>= 2) is cut into objects; its
        pages are never cleared here: ``needzero`` records whether they might
        hold old data.  Other spans are cleared when ``zero`` asks for it.
        """
        _growth_bytes(npages)  # a span the machine could never back fails first
        if self.memory_limit is not None:
            with self.lock:
                self._check_open()
                self._admit_locked(npages)
        base = scav = 0
        local = None
        if npages < _PAGE_CACHE_MAX:
            local = self._thread_local_pages()
            base, scav = local.cache.alloc(npages)  # this thread's cache: no lock
        with self.lock:
            self._check_open()
            # Metadata first, then pages: whichever fails, nothing is left half-built.
            try:
                c = self._new_record_locked(npages, spanclass)
            except BaseException:
                if base:  # pages from this thread's cache: back to the page allocator
                    self.os.reused(scav)
                    self.pages.free(base, npages)
                raise
            if base == 0:
                try:
                    base, scav = self._alloc_pages_locked(npages, local)
                except BaseException:
                    self._release_record_locked(c)
                    raise
            span = self._place_record_locked(c, base, state)
            self.os.reused(scav)
            if _debug.DEBUG >= 3:  # (L3, O(heap)) the page allocator after every change
                self.pages.check()
        dirty = scav < npages * PAGE_SIZE  # released pages read as zero
        if spanclass >= 2:
            span.c.needzero = dirty
        elif zero and dirty:
            lib.ra_memzero(base, npages * PAGE_SIZE)
        return span

    def span_of(self, addr: int) -> MSpan | None:
        """The live span holding ``addr``, or None; O(1) (Go: spanOf)."""
        with self.lock:
            return self.span_of_locked(addr)

    def span_of_locked(self, addr: int) -> MSpan | None:
        """span_of for a caller that holds ``MHeap.lock``."""
        arena = ARENAS.lookup(addr)
        if arena is None or arena.heap_id != self.id:
            return None
        c = arena.meta.spans[arena.page_index(addr)]
        return None if c == ffi.NULL else MSpan(c)

    def scavenge(self, nbytes: int | None = None) -> int:
        """Release up to ``nbytes`` (all when None) of free pages to the OS,
        highest addresses first.  Returns the bytes released."""
        with self.lock:
            self._check_open()
            limit = self.pages.npages_total * PAGE_SIZE if nbytes is None else nbytes
            released = self.pages.scavenge(require_int("nbytes", limit))
            if nbytes is None:
                self._trim_metadata_locked()
            return released

    def _trim_metadata_locked(self) -> int:
        """Give unused metadata back to the OS: free slabs, and the page maps
        of arenas that hold no span (zero pages read as all NULL); returns bytes."""
        pools = [self.spans, self._tiny_states, *self._bitmaps.values()]
        released = sum(pool.trim() for pool in pools)
        for arena in self.arenas:
            if not arena.live_pages and not arena.maps_released:
                self.meta_os.release(int(ffi.cast("uintptr_t", arena.meta)), _PAGE_MAP_BYTES)
                arena.maps_released = True
                released += _PAGE_MAP_BYTES
        return released

    def close(self) -> None:
        """Unmap every arena.  Idempotent; later calls raise HeapClosedError."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            for arena in self.arenas:
                ARENAS.remove(arena)
            self.arenas.clear()
            self._thread_pages.clear()
            self.os.unmap_all()
            self.meta_os.unmap_all()  # span records too: MSpan handles die with the heap

    def live_spans(self) -> list[MSpan]:
        """Every span in use, in id order (a snapshot)."""
        with self.lock:
            return self._live_spans_locked()

    def _live_spans_locked(self) -> list[MSpan]:
        records = self.spans
        return [
            MSpan(c)
            for c in (records.ptr(i) for i in range(records.capacity))
            if c.state != SpanState.FREE
        ]

    def metadata(self) -> HeapMetadata:
        """C memory held for metadata, by kind."""
        with self.lock:
            return self._metadata_locked()

    def _metadata_locked(self) -> HeapMetadata:
        return HeapMetadata(
            mspan_inuse=self.spans.live * self.spans.record_bytes,
            mspan_sys=self.spans.nbytes,
            bitmaps=self._tiny_states.nbytes + sum(b.nbytes for b in self._bitmaps.values()),
            arenas=self._arena_meta.nbytes
            - sum(_PAGE_MAP_BYTES for a in self.arenas if a.maps_released),
        )

    def retained_locked(self) -> int:
        """Bytes that may be resident: mapped and not released, plus metadata."""
        assert_lock_held(self.lock)
        os_stats = self.os.stats()
        metadata = self._metadata_locked().total + self.extra_metadata()
        return os_stats.ready - os_stats.released + metadata

    def _admit_locked(self, npages: int) -> None:
        """Enforce the memory limit before ``npages`` pages become resident:
        release free pages first; refuse if that is not enough."""
        assert_lock_held(self.lock)
        limit = self.memory_limit
        if limit is None:
            return
        # The pages, plus the metadata the request may add: arena maps if the
        # heap grows, a slab of span records, of bitmaps, of tiny states.
        narenas = -(-npages // PAGES_PER_ARENA)
        need = npages * PAGE_SIZE + narenas * self._arena_meta.stride + _SLAB_SLACK
        over = self.retained_locked() + need - limit
        if over > 0:
            self.pages.scavenge(over)
            over = self.retained_locked() + need - limit
            if over > 0:
                raise OutOfMemoryError(
                    f"allocating {need} bytes would exceed the memory limit of {limit} bytes "
                    f"by {over} bytes, with every free page already released"
                )

    def scavenge_excess(self, retain_percent: int, max_bytes: int) -> int:
        """Release up to ``max_bytes`` of the free resident pages beyond
        ``retain_percent`` % of the in-use pages (Go: retainExtraPercent)."""
        with self.lock:
            if self.closed:
                return 0
            pages = self.pages
            resident_free = (pages.npages_free - pages.npages_scavenged) * PAGE_SIZE
            excess = resident_free - self.inuse_pages * PAGE_SIZE * retain_percent // 100
            return pages.scavenge(min(excess, max_bytes)) if excess > 0 else 0

    def check(self) -> None:
        """Verify HEAP-1..3, OS-1 and every PageAlloc invariant; raise HeapCorruption."""
        with self.lock:
            self._check_open()
            self.pages.check()
            live = self._live_spans_locked()
            for span in live:
                self._check_span_locked(span)
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
            span_pages = sum(s.npages for s in live)
            caches = list(self._thread_pages)
            cached = sum(c.cache.cache.bit_count() for c in caches)
            cached_scav = sum(c.cache.scav.bit_count() for c in caches)
            allocated = self.pages.npages_total - self.pages.npages_free
            if mapped != span_pages or allocated != span_pages + cached:
                raise HeapCorruption(
                    f"HEAP-2: {allocated} pages allocated, {span_pages} in spans "
                    f"({mapped} mapped), {cached} in page caches"
                )
            os_stats = self.os.stats()
            released = (self.pages.npages_scavenged + cached_scav) * PAGE_SIZE
            if os_stats.released != released or not (
                0 <= os_stats.released <= os_stats.ready <= os_stats.reserved
            ):
                raise HeapCorruption(
                    f"OS-1: released {os_stats.released} (page allocator: {released}), "
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

    # -- slow paths (caller holds the lock) --------------------------------

    def _alloc_pages_locked(self, npages: int, local: _ThreadPages | None) -> tuple[int, int]:
        """Pages from this thread's refilled page cache, else the page allocator,
        growing the heap when nothing fits (Go: mheap.allocSpan)."""
        assert_lock_held(self.lock)
        if local is not None and local.cache.empty():
            local.cache = self.pages.alloc_to_cache()
            base, scav = local.cache.alloc(npages)
            if base:
                return base, scav
        base, scav = self.pages.alloc(npages)
        if base == 0:
            self.grow_locked(npages)
            base, scav = self.pages.alloc(npages)
            if base == 0:
                raise HeapCorruption(f"HEAP-4: grew the heap but {npages} pages do not fit")
        return base, scav

    def grow_locked(self, npages: int) -> None:
        """Add enough whole arenas for ``npages`` pages (Go: mheap.grow)."""
        assert_lock_held(self.lock)
        nbytes = _growth_bytes(npages)
        narenas = nbytes // ARENA_BYTES
        base = self.os.reserve(nbytes, ARENA_BYTES)
        added: list[HeapArena] = []
        try:
            self.os.commit(base)
            for i in range(narenas):
                meta = self._arena_meta.ptr(self._arena_meta.alloc())
                ffi.memmove(meta, _ZERO_ARENA, len(_ZERO_ARENA))  # a reused record is not zero
                arena = HeapArena(base + i * ARENA_BYTES, self.id, meta)
                ARENAS.add(arena)
                added.append(arena)
            self.pages.grow(base, nbytes)
        except BaseException:
            # Nothing of the new range was handed out: undo every step.
            for arena in added:
                ARENAS.remove(arena)
                self._arena_meta.free(self._arena_meta.index_of(arena.meta))
            self.os.abandon(base)
            raise
        self.arenas.extend(added)
        self.on_grow()

    def _new_record_locked(self, npages: int, spanclass: int) -> Any:
        """A zeroed span record for ``npages`` pages of ``spanclass`` with its
        bitmaps; raises (having allocated nothing) when metadata cannot grow."""
        assert_lock_held(self.lock)
        span_id = self.spans.alloc()
        c = self.spans.ptr(span_id)
        ffi.memmove(c, _ZERO_SPAN, len(_ZERO_SPAN))
        c.id = span_id
        c.npages = npages
        c.spanclass = spanclass
        sizeclass = spanclass >> 1
        if not sizeclass:  # one object, the whole span (elemsize 0: it may pass 4 GiB)
            c.nelems = c.alloc_count = 1
            return c
        c.elemsize = CLASS_TO_SIZE[sizeclass]
        c.nelems = nelems = npages * PAGE_SIZE // CLASS_TO_SIZE[sizeclass]
        c.div_magic = CLASS_TO_DIVMAGIC[sizeclass]
        try:
            nwords = (nelems + 63) // 64
            pool = self._bitmaps.get(nwords)
            if pool is None:
                pool = self._bitmaps[nwords] = FixAlloc(self.meta_os, "uint64_t", nwords)
            c.alloc_bits = pool.ptr(pool.alloc())
            c.free_bits = pool.ptr(pool.alloc())
            if spanclass == lib.RA_TINY_SPAN_CLASS:
                c.tiny_state = self._tiny_states.ptr(self._tiny_states.alloc())
                ffi.memmove(c.tiny_state, bytes(4 * TINY_SLOTS), 4 * TINY_SLOTS)
        except BaseException:
            self._release_record_locked(c)
            raise
        # Every slot free (Go: initSpan); padding bits set so they never are.
        ffi.memmove(c.alloc_bits, bytes(8 * nwords), 8 * nwords)
        ffi.memmove(c.free_bits, bytes(8 * nwords), 8 * nwords)
        if nelems % 64:
            c.alloc_bits[nwords - 1] = _WORD ^ ((1 << (nelems % 64)) - 1)
        c.alloc_cache = ~int(c.alloc_bits[0]) & _WORD
        return c

    def _place_record_locked(self, c: Any, base: int, state: SpanState) -> MSpan:
        """Make record ``c`` a live span at ``base``, mapped in its arenas."""
        c.base = base
        c.state = state
        if state == SpanState.IN_USE:
            self.inuse_pages += int(c.npages)
        else:
            self.manual_pages += int(c.npages)
        span = MSpan(c)
        self._map_span_locked(span, c)
        return span

    def _release_record_locked(self, c: Any) -> None:
        """Give back a record and whatever bitmaps it holds."""
        if c.alloc_bits:
            pool = self._bitmaps[(int(c.nelems) + 63) // 64]
            pool.free(pool.index_of(c.alloc_bits))
            if c.free_bits:
                pool.free(pool.index_of(c.free_bits))
        if c.tiny_state:
            self._tiny_states.free(self._tiny_states.index_of(c.tiny_state))
        # The bitmap pointers stay: a racing lock-free reader (a double free in
        # flight) then reads zeroed or reused bits, never a NULL pointer.
        c.state = SpanState.FREE
        self.spans.free(int(c.id))

    def _map_span_locked(self, span: MSpan, target: object) -> None:
        """Point the span's pages at ``target`` (the span or NULL), arena by arena."""
        addr, end = span.base, span.base + span.nbytes
        while addr < end:
            arena = ARENAS.lookup(addr)
            if arena is None or arena.heap_id != self.id:
                raise HeapCorruption(f"HEAP-1: span page {addr:#x} is in no arena of this heap")
            first = arena.page_index(addr)
            n = min(PAGES_PER_ARENA - first, (end - addr) >> PAGE_SHIFT)
            arena.set_spans(first, n, target)
            if addr == span.base:
                arena.set_in_use(first, target != ffi.NULL and span.state == SpanState.IN_USE)
            addr += n << PAGE_SHIFT

    def free_span_locked(self, span: MSpan) -> None:
        """Give a span's pages back to the page allocator (Go: freeSpanLocked)."""
        assert_lock_held(self.lock)
        c = span.c
        if c.state == SpanState.FREE:
            raise HeapCorruption(f"SPAN-1: span {span!r} is not live")
        self._map_span_locked(span, ffi.NULL)
        self.pages.free(span.base, span.npages)
        if c.state == SpanState.IN_USE:
            self.inuse_pages -= span.npages
        else:
            self.manual_pages -= span.npages
        self._release_record_locked(c)
        if _debug.DEBUG >= 3:  # (L3, O(heap))
            self.pages.check()

    def _thread_local_pages(self) -> _ThreadPages:
        local: _ThreadPages | None = getattr(self._local, "pages", None)
        if local is None:
            local = _ThreadPages(self)
            self._local.pages = local
            with self.lock:
                self._thread_pages.add(local)
        return local

    def _check_open(self) -> None:
        if self.closed:
            raise HeapClosedError(f"heap {self.id} is closed")
