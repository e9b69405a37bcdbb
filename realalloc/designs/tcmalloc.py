"""tcmalloc as the seed describes it: thread caches, central caches, a page heap (seed §3).

See realalloc/designs/__init__.py for an overview of the designs.

The seed's §3 (内存分配算法 tcmalloc) names the parts and the paths; this
module has one class for each part:

* ``ThreadCache``: one per thread, "a cache per thread for allocating small
  objects without a lock": a free list per size class.  malloc pops from the
  class's list, free pushes on it (the *freeing* thread's list, whoever
  allocated the object).  Only its own thread touches it, so it has no lock.
* ``CentralCache``: one per size class, shared, "so it must be locked": the
  spans cut into objects of its class, each span with its own free objects.
  It hands a thread cache a batch when its list is empty, and takes a batch
  back when the list grows too long (over two batches) or the thread cache
  holds more than 2 MiB.  A span whose objects have all come back goes to
  the page heap.
* ``PageHeap``: "also lists, of spans", locked: free spans of 1..128 pages on
  a list per length, longer ones in a set ordered by (length, address) for
  best fit.  A request takes a span of its length or the shortest longer one
  and splits it; a freed span merges with free neighbours found through the
  page map.  It grows by at least 128 pages (1 MiB) from realalloc's page
  heap, and gives such a chunk back once it is entirely free again.

Object sizes, as the seed gives them: small (0-256 KiB) go thread cache ->
central cache -> page heap, by size class; medium (256 KiB - 1 MiB, up to 128
pages) are spans straight from the page heap's lists ("128 pages hold at
most 1 MiB"); large (> 1 MiB) are spans from the large set.

Size classes (generated below, not copied): 8 B, then steps of 16 B up to
256 B, then eight classes per doubling up to 256 KiB, so above 128 B a
request is rounded up by at most 12.5 %.  A class's spans have the fewest
pages that waste at most 1/8 of the span; a batch is 64 KiB of objects,
between 2 and 32 of them.  Objects of one class are packed back to back from
a page-aligned span: 8-byte objects are 8-aligned, every other class's are
16-aligned, medium and large objects page aligned.

``free`` learns a small object's class from the size it asked for (kept for
validation; tcmalloc's sized delete does the same), not from the page map.

What it gets right, as the seed says: the common malloc and free take no
lock at all (``stats().detail["central_lock_trips"]`` counts the lock
trips; at most one per batch); a thread's objects come from its own lists;
size classes bound the rounding waste.
What it gets wrong: objects sit idle in thread caches and central lists
(memory held, not in use: ``cached_bytes``, ``central_free_bytes``); a span
goes back only when every one of its objects has; spans cut into objects are
not merged by the page heap until then.

Metadata (a C implementation): a page-map word per page held, a 48-byte
record per span, a list head (16 B) per class in each thread cache and a
64-byte record per central cache.

Invariants:
  TCM-1: each chunk from the page source is tiled by its spans (free, cut
         into objects, or one medium/large object); no two free spans of a
         chunk are adjacent; no chunk is entirely free.
  TCM-2: free spans of n <= 128 pages are on list n, longer ones in the large
         set, which is sorted; free_pages is their total; the chunks add up
         to the bytes held.
  TCM-3: the page map holds, for every span cut into objects, each of its
         pages, and for every other span its first and last page; nothing
         else.
  TCM-4: in each central cache: a span's free objects are distinct object
         starts of that span; allocated + free == objects of the span, with
         allocated > 0 (a span with none out goes to the page heap); the
         span is on the non-empty list iff it has free objects.
  TCM-5: every object in a thread cache is an object start of a span of its
         list's class, not live, in no span's free list, in one cache once;
         a cache's free_bytes is what its lists hold.
  TCM-6: for each span cut into objects: allocated == its live objects plus
         its objects in thread caches.
  TCM-7: a live object of <= 256 KiB is an object start of a span of its
         size's class; a larger one is the base of its own span of
         ceil(size / 8 KiB) pages.
  and STATS-1 (realalloc/designs/base.py).

Locking: thread caches take no lock.  ``CentralCache.lock`` (one per class)
-> ``PageHeap.lock`` -> PageSource.lock, in that order; ``TCMallocHeap.registry_lock``
(the set of thread caches and the counters of finished threads) is taken
alone.  Methods named ``*_locked`` need their object's lock held.  A thread
that ends leaves its cache on an orphan list (its finaliser takes no lock);
the next slow path of any thread gives its objects back to the central
caches.
"""

from __future__ import annotations

import threading
import weakref
from bisect import bisect_left, insort
from enum import IntEnum
from typing import ClassVar, Final

from ..errors import HeapClosedError, HeapCorruption
from .base import DesignHeap, DesignStats, RecentlyFreed
from .pages import PAGE_SHIFT, PAGE_SIZE, PageSource, page_of

__all__ = [
    "CLASS_SIZES",
    "MAX_LISTED_PAGES",
    "MAX_SMALL",
    "CentralCache",
    "PageHeap",
    "Span",
    "TCMallocHeap",
    "ThreadCache",
    "size_class",
]

MAX_SMALL: Final = 256 << 10
"""Largest small object: served by size class through the caches."""
MAX_LISTED_PAGES: Final = 128
"""Free spans up to this many pages (1 MiB) have a list each; longer ones the large set."""
GROW_PAGES: Final = 128
"""The page heap takes at least this many pages at a time from the page source."""
MAX_CACHE_BYTES: Final = 2 << 20
"""Free bytes a thread cache may hold before it gives half of each list back."""
_SPAN_RECORD: Final = 48
_LIST_HEAD: Final = 16
_CENTRAL_RECORD: Final = 64


def _class_sizes() -> tuple[int, ...]:
    """8, 16, 32, ... 256 (steps of 16), then steps of 1/8 of the power of two
    below, up to MAX_SMALL: rounding up wastes at most 12.5 % above 128 B."""
    sizes = [8]
    size = 16
    while size <= MAX_SMALL:
        sizes.append(size)
        size += max(16, (1 << (size.bit_length() - 1)) // 8)
    return tuple(sizes)


CLASS_SIZES: Final = _class_sizes()
"""Object size of each class."""


def _span_pages(size: int) -> int:
    """Fewest pages that hold at least one ``size``-byte object and waste at
    most 1/8 of the span."""
    n = 1
    while n * PAGE_SIZE < size or (n * PAGE_SIZE) % size > n * PAGE_SIZE // 8:
        n += 1
    return n


CLASS_PAGES: Final = tuple(_span_pages(s) for s in CLASS_SIZES)
"""Pages per span of each class."""
CLASS_BATCH: Final = tuple(max(2, min(32, (64 << 10) // s)) for s in CLASS_SIZES)
"""Objects moved between a thread cache and a central cache at a time."""
_MAX_LIST: Final = tuple(2 * b for b in CLASS_BATCH)


def _lookup(step: int, limit: int) -> tuple[int, ...]:
    """Table: index (size + step - 1) // step -> the smallest class that holds it."""
    out = []
    c = 0
    for i in range(limit // step + 1):
        while CLASS_SIZES[c] < i * step:
            c += 1
        out.append(c)
    return tuple(out)


_CLASS8: Final = _lookup(8, 1024)
_CLASS128: Final = _lookup(128, MAX_SMALL)


def size_class(size: int) -> int:
    """The class of a small request (0 <= size <= MAX_SMALL)."""
    return _CLASS8[(size + 7) >> 3] if size <= 1024 else _CLASS128[(size + 127) >> 7]


class SpanState(IntEnum):
    FREE = 0
    """On a free list or in the large set of the page heap."""
    SMALL = 1
    """Cut into objects of one class; owned by that class's central cache."""
    PAGES = 2
    """One medium or large object."""


class Span:
    """A run of pages of one chunk (tcmalloc: Span)."""

    __slots__ = ("allocated", "base", "chunk", "cls", "free", "npages", "state")

    def __init__(self, base: int, npages: int, chunk: int) -> None:
        self.base = base
        self.npages = npages
        self.chunk = chunk  # base of the chunk it was cut from: spans merge only within one
        self.state = SpanState.FREE
        self.cls = 0  # size class, for a SMALL span
        self.free: list[int] = []  # SMALL: its objects that are free, highest first
        self.allocated = 0  # SMALL: objects handed to thread caches (and on to callers)

    @property
    def end(self) -> int:
        return self.base + self.npages * PAGE_SIZE

    def __repr__(self) -> str:
        return f"Span({self.base:#x}, {self.npages} pages, {self.state.name})"


class PageHeap:
    """Spans of pages from the page source: free lists by length and a large set."""

    def __init__(self, pages: PageSource) -> None:
        self.lock = threading.Lock()
        self.pages = pages
        self.free_lists: list[dict[int, Span]] = [{} for _ in range(MAX_LISTED_PAGES + 1)]
        self.large: list[tuple[int, int]] = []  # (npages, base) of free spans > 128 pages
        self.large_spans: dict[int, Span] = {}  # base -> the span, for the large set
        # page -> span.  Read without the lock by central caches, for pages of
        # their own spans, which only change under their lock.
        self.pagemap: dict[int, Span] = {}
        self.chunks: dict[int, int] = {}  # base -> pages, as taken from the page source
        self.free_pages = 0
        self.grows = 0
        self.chunks_returned = 0
        self.lock_trips = 0

    def new_span_locked(self, npages: int) -> Span:
        """A span of ``npages`` pages in state PAGES with its first and last
        pages mapped.  Caller must hold ``PageHeap.lock``."""
        span = None
        for n in range(npages, MAX_LISTED_PAGES + 1):
            if self.free_lists[n]:
                _, span = self.free_lists[n].popitem()
                break
        else:
            i = bisect_left(self.large, (npages, 0))
            if i < len(self.large):
                _, base = self.large.pop(i)
                span = self.large_spans.pop(base)
        if span is None:
            span = self._grow_locked(npages)  # OutOfMemoryError: nothing changed
        self.free_pages -= npages
        if span.npages > npages:  # split: the tail stays free
            rest = Span(span.base + npages * PAGE_SIZE, span.npages - npages, span.chunk)
            span.npages = npages
            self._file_locked(rest)
        span.state = SpanState.PAGES
        self._map_locked(span)
        return span

    def delete_span_locked(self, span: Span) -> None:
        """Free ``span``: merge it with free neighbours of its chunk; a chunk
        left entirely free goes back to the page source.  Caller must hold
        ``PageHeap.lock``."""
        self._unmap_locked(span)
        span.state = SpanState.FREE
        span.free = []
        span.allocated = 0
        self.free_pages += span.npages
        pagemap = self.pagemap
        left = pagemap.get(page_of(span.base) - 1)
        if left is not None and left.state == SpanState.FREE and left.chunk == span.chunk:
            self._unfile_locked(left)
            span.base = left.base
            span.npages += left.npages
        right = pagemap.get(page_of(span.end))
        if right is not None and right.state == SpanState.FREE and right.chunk == span.chunk:
            self._unfile_locked(right)
            span.npages += right.npages
        if span.base == span.chunk and span.npages == self.chunks[span.chunk]:
            del self.chunks[span.chunk]
            self.free_pages -= span.npages
            self.chunks_returned += 1
            self.pages.free(span.chunk)
            return
        self._file_locked(span)

    def _grow_locked(self, npages: int) -> Span:
        n = max(npages, GROW_PAGES)
        base = self.pages.alloc(n)
        self.chunks[base] = n
        self.free_pages += n
        self.grows += 1
        return Span(base, n, base)

    def _file_locked(self, span: Span) -> None:
        """Put a free span on its list or in the large set, ends mapped."""
        span.state = SpanState.FREE
        if span.npages <= MAX_LISTED_PAGES:
            self.free_lists[span.npages][span.base] = span
        else:
            insort(self.large, (span.npages, span.base))
            self.large_spans[span.base] = span
        self._map_locked(span)

    def _unfile_locked(self, span: Span) -> None:
        """Take a free span off its list or out of the large set, unmapped."""
        if span.npages <= MAX_LISTED_PAGES:
            del self.free_lists[span.npages][span.base]
        else:
            self.large.remove((span.npages, span.base))
            del self.large_spans[span.base]
        self._unmap_locked(span)

    def _map_locked(self, span: Span) -> None:
        first = page_of(span.base)
        pagemap = self.pagemap
        if span.state == SpanState.SMALL:
            for page in range(first, first + span.npages):
                pagemap[page] = span
        else:
            pagemap[first] = pagemap[first + span.npages - 1] = span

    def _unmap_locked(self, span: Span) -> None:
        first = page_of(span.base)
        pagemap = self.pagemap
        if span.state == SpanState.SMALL:
            for page in range(first, first + span.npages):
                del pagemap[page]
        else:
            pagemap.pop(first, None)
            pagemap.pop(first + span.npages - 1, None)

    def free_spans(self) -> list[Span]:
        """Every free span.  Caller must hold ``PageHeap.lock``."""
        spans = [s for lst in self.free_lists for s in lst.values()]
        return spans + list(self.large_spans.values())


class CentralCache:
    """The spans of one size class and their free objects (tcmalloc: CentralFreeList)."""

    def __init__(self, cls: int, page_heap: PageHeap) -> None:
        self.lock = threading.Lock()
        self.cls = cls
        self.size = CLASS_SIZES[cls]
        self.page_heap = page_heap
        self.spans: dict[int, Span] = {}  # base -> every span of this class
        self.nonempty: dict[int, Span] = {}  # base -> spans with free objects, oldest first
        self.lock_trips = 0

    def remove_range(self, n: int) -> list[int]:
        """Up to ``n`` (at least one) free objects, cutting a new span when
        none is left.  OutOfMemoryError only when nothing was taken."""
        with self.lock:
            self.lock_trips += 1
            out: list[int] = []
            while len(out) < n:
                if not self.nonempty:
                    if out:
                        break
                    self._populate_locked()
                span = next(iter(self.nonempty.values()))
                take = min(n - len(out), len(span.free))
                out += span.free[-take:]
                del span.free[-take:]
                span.allocated += take
                if not span.free:
                    del self.nonempty[span.base]
            return out

    def insert_range(self, objs: list[int]) -> None:
        """Take objects back; a span with none out any more goes to the page heap."""
        with self.lock:
            self.lock_trips += 1
            pagemap = self.page_heap.pagemap
            for addr in objs:
                span = pagemap[addr >> PAGE_SHIFT]
                span.free.append(addr)
                span.allocated -= 1
                if span.allocated == 0:
                    self.nonempty.pop(span.base, None)
                    del self.spans[span.base]
                    with self.page_heap.lock:
                        self.page_heap.lock_trips += 1
                        self.page_heap.delete_span_locked(span)
                elif len(span.free) == 1:
                    self.nonempty[span.base] = span

    def _populate_locked(self) -> None:
        """Cut a new span into objects.  Caller must hold ``CentralCache.lock``."""
        ph = self.page_heap
        with ph.lock:
            ph.lock_trips += 1
            span = ph.new_span_locked(CLASS_PAGES[self.cls])
            span.state = SpanState.SMALL
            span.cls = self.cls
            ph._map_locked(span)
        size = self.size
        count = span.npages * PAGE_SIZE // size
        span.free = list(range(span.base + (count - 1) * size, span.base - 1, -size))
        span.allocated = 0
        self.spans[span.base] = span
        self.nonempty[span.base] = span


class ThreadCache:
    """One thread's free lists, one per class, and its counters.  No lock:
    only its thread touches it (others only read the counters)."""

    __slots__ = ("allocated", "free_bytes", "frees", "in_use", "lists", "mallocs")

    def __init__(self) -> None:
        self.lists: list[list[int]] = [[] for _ in CLASS_SIZES]
        self.free_bytes = 0  # bytes of the objects on its lists
        self.mallocs = 0
        self.frees = 0
        self.in_use = 0  # requested bytes: + by its mallocs, - by its frees
        self.allocated = 0  # class bytes, likewise


class _CacheSlot:
    """Holds a thread's cache in its thread-local storage; when the thread
    ends, the slot dies and leaves the cache on its heap's orphan list."""

    __slots__ = ("cache", "heap")

    def __init__(self, heap: TCMallocHeap, cache: ThreadCache) -> None:
        self.heap = weakref.ref(heap)
        self.cache = cache

    def __del__(self) -> None:
        heap = self.heap()
        if heap is not None and not heap.closed:
            heap.orphans.append(self.cache)  # list.append: atomic, takes no lock


class TCMallocHeap(DesignHeap):
    """The seed's tcmalloc: lock-free thread caches over locked central
    caches over a locked page heap.  Addresses are 8-aligned (16 for every
    class but the 8-byte one; page aligned above 256 KiB)."""

    name: ClassVar[str] = "tcmalloc"
    alignment: ClassVar[int] = 8

    def __init__(self) -> None:
        super().__init__()
        self.page_heap = PageHeap(self.pages)
        self.central = [CentralCache(c, self.page_heap) for c in range(len(CLASS_SIZES))]
        self._local = threading.local()
        self.registry_lock = threading.Lock()
        self._caches: set[ThreadCache] = set()  # every thread's cache, orphans included
        self.orphans: list[ThreadCache] = []  # caches of threads that ended
        self._retired = [0, 0, 0, 0]  # mallocs, frees, in_use, allocated of flushed caches
        # Medium and large objects, under PageHeap.lock:
        self._page_objects: dict[int, Span] = {}  # base -> its span
        self._page_counts = [0, 0, 0, 0, 0]  # medium, large mallocs; frees; in_use; allocated
        self._freed_pages = RecentlyFreed()

    # -- the Heap calls ---------------------------------------------------------

    def malloc(self, size: int) -> int:
        """Small: pop from this thread's list of the class, no lock.  Medium
        and large: a span from the page heap."""
        if type(size) is not int or not 0 <= size <= MAX_SMALL:
            return self._malloc_slow(size)
        if self.closed:
            raise HeapClosedError(f"this {self.name} heap is closed")
        c = size_class(size)
        try:
            cache: ThreadCache = self._local.cache
        except AttributeError:
            cache = self._new_cache()
        objs = cache.lists[c]
        csize = CLASS_SIZES[c]
        if objs:
            addr = objs.pop()
            cache.free_bytes -= csize
        else:
            addr = self._refill(cache, c)
        self._live[addr] = size
        cache.mallocs += 1
        cache.in_use += size
        cache.allocated += csize
        return addr

    def free(self, addr: int) -> None:
        """Small: push on this thread's list of the class, no lock (a batch
        goes back to the central cache when the list is too long)."""
        if type(addr) is not int:
            addr = self._addr_arg(addr)
        if self.closed:
            raise HeapClosedError(f"this {self.name} heap is closed")
        size = self._pop_live(addr)
        if size > MAX_SMALL:
            self._free_pages(addr, size)
            return
        c = size_class(size)
        try:
            cache: ThreadCache = self._local.cache
        except AttributeError:
            cache = self._new_cache()
        objs = cache.lists[c]
        objs.append(addr)
        csize = CLASS_SIZES[c]
        cache.free_bytes += csize
        cache.frees += 1
        cache.in_use -= size
        cache.allocated -= csize
        if len(objs) > _MAX_LIST[c] or cache.free_bytes > MAX_CACHE_BYTES:
            self._shrink(cache, c)

    def usable_size(self, addr: int) -> int:
        """The class size of a small object; the pages of a medium or large one."""
        addr = self._addr_arg(addr)
        self._check_open()
        size = self._live.get(addr)
        if size is None:
            raise self._bad_pointer("usable_size", addr)
        return self._usable(addr, size)

    def stats(self) -> DesignStats:
        self._check_open()
        self._adopt_orphans()
        with self.registry_lock:
            caches = list(self._caches)
            mallocs, frees, in_use, allocated = self._retired
            for cache in caches:
                mallocs += cache.mallocs
                frees += cache.frees
                in_use += cache.in_use
                allocated += cache.allocated
        small_mallocs = mallocs
        cached = sum(cache.free_bytes for cache in caches)
        central_free = central_trips = spans = 0
        for central in self.central:
            with central.lock:
                central_free += central.size * sum(len(s.free) for s in central.spans.values())
                central_trips += central.lock_trips
                spans += len(central.spans)
        ph = self.page_heap
        with ph.lock:
            medium, large, page_frees, page_in_use, page_allocated = self._page_counts
            spans += len(self._page_objects) + len(ph.large_spans)
            spans += sum(len(lst) for lst in ph.free_lists)
            held = self.pages.held_bytes
            detail = {
                "thread_caches": len(caches),
                "cached_bytes": cached,
                "central_free_bytes": central_free,
                "pageheap_free_bytes": ph.free_pages * PAGE_SIZE,
                "central_lock_trips": central_trips,
                "pageheap_lock_trips": ph.lock_trips,
                "small_mallocs": small_mallocs,
                "medium_mallocs": medium,
                "large_mallocs": large,
                "spans": spans,
                "chunks": len(ph.chunks),
                "chunks_returned": ph.chunks_returned,
            }
        return DesignStats(
            design=self.name,
            bytes_in_use=in_use + page_in_use,
            bytes_allocated=allocated + page_allocated,
            bytes_held=held,
            metadata_bytes=8 * (held // PAGE_SIZE)
            + _SPAN_RECORD * spans
            + _LIST_HEAD * len(CLASS_SIZES) * len(caches)
            + _CENTRAL_RECORD * len(CLASS_SIZES),
            objects_live=len(self._live),
            mallocs=mallocs + medium + large,
            frees=frees + page_frees,
            detail=detail,
        )

    def close(self) -> None:
        if self.closed:
            return
        with self.page_heap.lock:
            super().close()
        with self.registry_lock:
            self._caches.clear()
            self.orphans.clear()

    # -- slow paths (no lock held on entry) -------------------------------------

    def _malloc_slow(self, size: object) -> int:
        n = self._size_arg(size)
        self._check_open()
        if n <= MAX_SMALL:
            return self.malloc(n)
        self._adopt_orphans()
        npages = -(-n // PAGE_SIZE)
        ph = self.page_heap
        with ph.lock:
            ph.lock_trips += 1
            span = ph.new_span_locked(npages)  # OutOfMemoryError: nothing changed
            self._page_objects[span.base] = span
            self._live[span.base] = n
            self._freed_pages.discard(span.base)
            counts = self._page_counts
            counts[0 if npages <= MAX_LISTED_PAGES else 1] += 1
            counts[3] += n
            counts[4] += npages * PAGE_SIZE
        return span.base

    def _free_pages(self, addr: int, size: int) -> None:
        ph = self.page_heap
        with ph.lock:
            ph.lock_trips += 1
            span = self._page_objects.pop(addr)
            counts = self._page_counts
            counts[2] += 1
            counts[3] -= size
            counts[4] -= span.npages * PAGE_SIZE
            self._freed_pages.add(addr)
            ph.delete_span_locked(span)

    def _new_cache(self) -> ThreadCache:
        cache = ThreadCache()
        with self.registry_lock:
            self._caches.add(cache)
        self._local.slot = _CacheSlot(self, cache)
        self._local.cache = cache
        return cache

    def _refill(self, cache: ThreadCache, c: int) -> int:
        """This thread's list of class ``c`` is empty: a batch from the central
        cache; returns one object, the rest go on the list."""
        self._adopt_orphans()
        objs = self.central[c].remove_range(CLASS_BATCH[c])
        addr = objs.pop()
        cache.lists[c] += objs
        cache.free_bytes += len(objs) * CLASS_SIZES[c]
        return addr

    def _shrink(self, cache: ThreadCache, c: int) -> None:
        """Give a batch of class ``c`` back (its oldest objects), and half of
        every list when the cache holds too much."""
        self._adopt_orphans()
        objs = cache.lists[c]
        if len(objs) > _MAX_LIST[c]:
            self._give_back(cache, c, CLASS_BATCH[c])
        if cache.free_bytes > MAX_CACHE_BYTES:
            for k, lst in enumerate(cache.lists):
                if lst:
                    self._give_back(cache, k, (len(lst) + 1) // 2)

    def _give_back(self, cache: ThreadCache, c: int, n: int) -> None:
        lst = cache.lists[c]
        objs = lst[:n]
        del lst[:n]
        cache.free_bytes -= len(objs) * CLASS_SIZES[c]
        self.central[c].insert_range(objs)

    def _adopt_orphans(self) -> None:
        """Give the objects of ended threads' caches back to the central caches."""
        while self.orphans:
            try:
                cache = self.orphans.pop()
            except IndexError:  # another thread took the last one
                return
            for c, objs in enumerate(cache.lists):
                if objs:
                    self._give_back(cache, c, len(objs))
            with self.registry_lock:
                retired = self._retired
                retired[0] += cache.mallocs
                retired[1] += cache.frees
                retired[2] += cache.in_use
                retired[3] += cache.allocated
                self._caches.discard(cache)

    def _usable(self, addr: int, size: int) -> int:
        if size <= MAX_SMALL:
            return CLASS_SIZES[size_class(size)]
        with self.page_heap.lock:
            return self._page_objects[addr].npages * PAGE_SIZE

    def _try_resize(self, addr: int, size: int) -> int | None:
        """In place while the new size has the same class (or page count)."""
        old = self._live.get(addr)
        if old is None:
            raise self._bad_pointer("realloc", addr)
        usable = self._usable(addr, old)
        if old <= MAX_SMALL:
            if size > MAX_SMALL or CLASS_SIZES[size_class(size)] != usable:
                return usable
            try:
                cache: ThreadCache = self._local.cache
            except AttributeError:
                cache = self._new_cache()
            self._live[addr] = size
            cache.in_use += size - old
            return None
        if size <= MAX_SMALL or -(-size // PAGE_SIZE) * PAGE_SIZE != usable:
            return usable
        with self.page_heap.lock:
            self._live[addr] = size
            self._page_counts[3] += size - old
        return None

    # -- addresses --------------------------------------------------------------

    def _object_at(self, addr: int) -> tuple[Span, int] | None:
        """(span, object start) for an address in a span cut into objects."""
        span = self.page_heap.pagemap.get(addr >> PAGE_SHIFT)
        if span is None or span.state != SpanState.SMALL:
            return None
        size = CLASS_SIZES[span.cls]
        index = (addr - span.base) // size
        if index >= span.npages * PAGE_SIZE // size:  # the span's unused tail
            return None
        return span, span.base + index * size

    def _object_containing(self, addr: int) -> int | None:
        found = self._object_at(addr)
        if found is not None:
            return found[1] if found[1] in self._live else None
        with self.page_heap.lock:
            for base, span in self._page_objects.items():
                if base <= addr < span.end:
                    return base
        return None

    def _was_freed(self, addr: int) -> bool:
        found = self._object_at(addr)
        if found is not None:
            return found[1] == addr
        with self.page_heap.lock:
            return addr in self._freed_pages

    # -- invariants -------------------------------------------------------------

    def check(self) -> None:
        self._check_open()
        self._adopt_orphans()
        with self.registry_lock:
            caches = list(self._caches)
        cached: dict[int, int] = {}  # object -> class, over every thread cache
        for cache in caches:
            held = 0
            for c, objs in enumerate(cache.lists):
                held += len(objs) * CLASS_SIZES[c]
                for addr in objs:
                    if addr in cached:
                        raise HeapCorruption(f"TCM-5: object {addr:#x} is cached twice")
                    cached[addr] = c
            if held != cache.free_bytes:
                raise HeapCorruption(
                    f"TCM-5: a thread cache holds {held} bytes, its free_bytes says "
                    f"{cache.free_bytes}"
                )
        small_spans: list[Span] = []
        for central in self.central:
            with central.lock:
                small_spans += self._check_central_locked(central)
        with self.page_heap.lock:
            self._check_page_heap_locked(small_spans)
        self._check_objects(small_spans, cached)
        self.stats().check(sum(self._live.values()), len(self._live), "TCM")
        self.pages.check()

    def _check_central_locked(self, central: CentralCache) -> list[Span]:
        """TCM-4 for one central cache; its spans."""
        size = central.size
        for base, span in central.spans.items():
            count = span.npages * PAGE_SIZE // size
            if span.base != base or span.state != SpanState.SMALL or span.cls != central.cls:
                raise HeapCorruption(f"TCM-4: {span!r} is listed under class {central.cls}")
            free = set(span.free)
            if len(free) != len(span.free) or any(
                (a - base) % size or not base <= a < base + count * size for a in free
            ):
                raise HeapCorruption(f"TCM-4: {span!r} has free objects that are not its own")
            if span.allocated == 0:
                raise HeapCorruption(f"TCM-4: {span!r} has no object out but was not given back")
            if span.allocated + len(free) != count:
                raise HeapCorruption(
                    f"TCM-4: {span!r}: {span.allocated} allocated + {len(free)} free != {count}"
                )
            if (base in central.nonempty) != bool(free):
                raise HeapCorruption(f"TCM-4: {span!r}: non-empty list disagrees with its objects")
        if not central.nonempty.keys() <= central.spans.keys():
            raise HeapCorruption(f"TCM-4: class {central.cls} lists a span it does not own")
        return list(central.spans.values())

    def _check_page_heap_locked(self, small_spans: list[Span]) -> None:
        """TCM-1, TCM-2, TCM-3.  Caller must hold ``PageHeap.lock``."""
        ph = self.page_heap
        free_spans = ph.free_spans()
        for n, lst in enumerate(ph.free_lists):
            for span in lst.values():
                if span.npages != n or span.state != SpanState.FREE:
                    raise HeapCorruption(f"TCM-2: {span!r} is on the list of {n}-page spans")
        if ph.large != sorted(ph.large) or ph.large != sorted(
            (s.npages, s.base) for s in ph.large_spans.values()
        ):
            raise HeapCorruption("TCM-2: the large set is not its spans in (length, base) order")
        if any(s.npages <= MAX_LISTED_PAGES for s in ph.large_spans.values()):
            raise HeapCorruption("TCM-2: a span of <= 128 pages is in the large set")
        if ph.free_pages != sum(s.npages for s in free_spans):
            raise HeapCorruption(
                f"TCM-2: free_pages is {ph.free_pages}, free spans have "
                f"{sum(s.npages for s in free_spans)}"
            )
        held = sum(ph.chunks.values()) * PAGE_SIZE
        if held != self.pages.held_bytes:
            raise HeapCorruption(
                f"TCM-2: chunks add up to {held} bytes, the page source holds "
                f"{self.pages.held_bytes}"
            )
        spans = free_spans + small_spans + list(self._page_objects.values())
        by_chunk: dict[int, list[Span]] = {base: [] for base in ph.chunks}
        expected: dict[int, Span] = {}
        for span in spans:
            if span.chunk not in by_chunk:
                raise HeapCorruption(f"TCM-1: {span!r} is in no chunk")
            by_chunk[span.chunk].append(span)
            first, last = page_of(span.base), page_of(span.end) - 1
            if span.state == SpanState.SMALL:
                expected.update(dict.fromkeys(range(first, last + 1), span))
            else:
                expected[first] = expected[last] = span
        for chunk, members in by_chunk.items():
            members.sort(key=lambda s: s.base)
            pos = chunk
            for prev, span in zip([None, *members], members, strict=False):
                if span.base != pos:
                    raise HeapCorruption(f"TCM-1: chunk {chunk:#x}: {span!r} found at {pos:#x}")
                if prev is not None and prev.state == span.state == SpanState.FREE:
                    raise HeapCorruption(f"TCM-1: free spans {prev!r} and {span!r} are adjacent")
                pos = span.end
            if pos != chunk + ph.chunks[chunk] * PAGE_SIZE:
                raise HeapCorruption(f"TCM-1: chunk {chunk:#x}: its spans end at {pos:#x}")
            if len(members) == 1 and members[0].state == SpanState.FREE:
                raise HeapCorruption(f"TCM-1: chunk {chunk:#x} is entirely free but kept")
        if expected.keys() != ph.pagemap.keys() or any(
            ph.pagemap[p] is not s for p, s in expected.items()
        ):
            pages = expected.keys() | ph.pagemap.keys()
            wrong = sorted(p for p in pages if expected.get(p) is not ph.pagemap.get(p))
            raise HeapCorruption(
                f"TCM-3: the page map is wrong at {len(wrong)} pages, "
                f"first {wrong[0] << PAGE_SHIFT:#x}"
            )

    def _check_objects(self, small_spans: list[Span], cached: dict[int, int]) -> None:
        """TCM-5 (against the spans), TCM-6, TCM-7."""
        out: dict[int, int] = {id(s): 0 for s in small_spans}  # span -> objects out of it
        for addr, c in cached.items():
            found = self._object_at(addr)
            if found is None or found[1] != addr or found[0].cls != c:
                raise HeapCorruption(f"TCM-5: cached object {addr:#x} is not a class-{c} object")
            if addr in self._live:
                raise HeapCorruption(f"TCM-5: cached object {addr:#x} is live")
            out[id(found[0])] += 1
        for addr, size in self._live.items():
            if size > MAX_SMALL:
                span = self._page_objects.get(addr)
                if span is None or span.npages != -(-size // PAGE_SIZE):
                    raise HeapCorruption(f"TCM-7: object {addr:#x} of {size} B has {span!r}")
                continue
            found = self._object_at(addr)
            if found is None or found[1] != addr or found[0].cls != size_class(size):
                raise HeapCorruption(f"TCM-7: object {addr:#x} of {size} B is not in its class")
            out[id(found[0])] += 1
        for span in small_spans:
            if span.allocated != out[id(span)]:
                raise HeapCorruption(
                    f"TCM-6: {span!r} has {span.allocated} objects out, {out[id(span)]} are "
                    f"live or cached"
                )
            if set(span.free) & cached.keys():
                raise HeapCorruption(f"TCM-5: an object of {span!r} is both cached and free")
