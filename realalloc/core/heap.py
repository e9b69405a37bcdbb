"""The object allocator's public face (Go: runtime/malloc.go, mallocgc).

See realalloc/__init__.py for an overview of the allocator.

``Heap`` ties the layers together.  ``malloc`` and ``free`` are C methods
inherited from ``realalloc._fast.HeapBase`` (csrc/fastpath.c): a call that
hits this thread's cached span never runs Python.  Everything else lands in
the slow paths here:

* ``_malloc_slow``: argument errors, large objects (> 32 KiB, their own span
  of class 0/1 straight from MHeap), the first allocation of a thread (it
  creates the thread's MCache), and refills;
* ``_free_slow``: large objects, and every bad pointer, diagnosed into the
  specific error;
* ``_refill``: the cached span of a class is full; the thread's MCache
  swaps it (the C method then retries the same kernel).

Objects by size (Go's three kinds)::

    noscan and size < 16   tiny: a piece of this thread's 16-byte block
    size <= 32 KiB         small: a slot of the cached span of its class
    size > 32 KiB          large: whole pages, page aligned

Tiny blocks with explicit free: a block goes back as a 16-byte slot once
every piece in it is freed and the thread has moved on to a new block.
``usable_size`` of a tiny piece is its own extent, not Go's roundupsize.

Invariants: those of every layer, checked by ``check`` (HEAP-*, SPAN-*,
CENTRAL-*, CACHE-*, PAGE-*, OS-*).

Locking: the fast path takes no lock.  Slow paths take, in this order,
Heap.lifecycle_lock (close and cache flush only) -> MCentral.lock ->
MHeap.lock -> ArenaIndex.lock -> OSMem.lock.  ``close`` needs the other
threads to be idle in this heap.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from .. import __version__, _fast
from ..errors import (
    ArgumentTypeError,
    BufferFreedError,
    DoubleFreeError,
    ForeignPointerError,
    HeapClosedError,
    HeapCorruption,
    InteriorPointerError,
    InvalidArgumentError,
    OutOfMemoryError,
    require_int,
)
from .arena import ARENAS
from .cache import MCache
from .central import MCentral
from .mheap import MAX_PAGES, MHeap
from .osmem import PAGE_SIZE, ffi, lib
from .rss import rss, uss
from .scavenger import BackgroundScavenger
from .sizeclasses import (
    CLASS_TO_SIZE,
    MAX_SMALL_SIZE,
    NUM_SIZE_CLASSES,
    NUM_SPAN_CLASSES,
    SIZE_TO_CLASS8,
    SIZE_TO_CLASS128,
    TINY_SIZE,
    size_to_class,
    tiny_align,
)
from .span import MSpan, SpanInfo, SpanState
from .stats import MemoryReport, MemStats, SizeClassStats

__all__ = ["Buffer", "Heap"]

Buffer = _fast.Buffer
_fast.set_freed_buffer_error(BufferFreedError)
if __version__ != _fast.VERSION:  # pragma: no cover - depends on the build
    raise ImportError(
        f"realalloc._fast was built for realalloc {_fast.VERSION}, not {__version__}; "
        "rebuild with `pip install .`"
    )

_TINY_SPAN_CLASS: Final[int] = lib.RA_TINY_SPAN_CLASS
_FREED_LARGE_MEMORY: Final = 4096
_MCACHE_BYTES: Final[int] = ffi.sizeof("ra_mcache")
_HEAP_BYTES: Final[int] = ffi.sizeof("ra_heap")
_gens = itertools.count(1)
_slots_lock = threading.Lock()
_free_slots = list(range(lib.RA_MAX_HEAPS - 1, -1, -1))


@dataclass(frozen=True, slots=True)
class _Object:
    """Where a live object is: its span, slot, and byte offset of a tiny piece."""

    span: MSpan
    slot: int
    piece: int  # offset of the tiny piece in its block; -1 for a whole slot


class Heap(_fast.HeapBase):
    """A Go-style heap over real memory.

    ``malloc(size, *, scan=False, zero=True) -> int`` and ``free(addr)`` are
    the fast path (C).  ``with Heap() as heap:`` closes it on exit;
    ``close()`` unmaps everything.
    """

    def __init__(self, *, background_scavenger: bool = True) -> None:
        if not isinstance(background_scavenger, bool):
            raise ArgumentTypeError(
                f"background_scavenger must be a bool, not {type(background_scavenger).__name__}"
            )
        with _slots_lock:
            if not _free_slots:
                raise OutOfMemoryError(f"more than {lib.RA_MAX_HEAPS} heaps are open at once")
            slot = _free_slots.pop()
        self.closed = False
        self.mheap = MHeap()
        self.c: Any = ffi.new("ra_heap *")
        c = self.c
        c.gen = next(_gens)
        c.id = self.mheap.id
        c.slot = slot
        c.class_to_size = list(CLASS_TO_SIZE)
        c.size_to_class8 = list(SIZE_TO_CLASS8)
        c.size_to_class128 = list(SIZE_TO_CLASS128)
        self.empty_span: Any = ffi.new("ra_span *")  # no slots: every fast path misses
        self.central = [MCentral(self.mheap, c, spc) for spc in range(NUM_SPAN_CLASSES)]
        self.lifecycle_lock = threading.Lock()
        self._local = threading.local()
        self._caches: weakref.WeakSet[MCache] = weakref.WeakSet()
        self._buffers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._retired = [0] * (2 * NUM_SIZE_CLASSES + 3)  # counts of flushed caches
        self.stats_lock = threading.Lock()
        self._large = [0, 0, 0, 0]  # allocs, bytes allocated, frees, bytes freed
        # Bases of recently freed large objects, oldest first: a second free of
        # one is a double free, any other address in free pages is foreign.
        self._freed_large: dict[int, None] = {}
        self._baseline_rss = rss()
        self._bind(
            int(ffi.cast("uintptr_t", c)),
            int(ffi.cast("uintptr_t", ffi.addressof(lib, "ra_arena_l1"))),
        )
        self.mheap.extra_metadata = self._cache_metadata
        self._scavenger = BackgroundScavenger(self) if background_scavenger else None
        if self._scavenger is not None:
            self.mheap.on_grow = self._scavenger.start

    def __enter__(self) -> Heap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            self.close()

    # -- slow paths called by the C fast path --------------------------------

    def _malloc_slow(self, size: int, *, scan: bool = False, zero: bool = True) -> int:
        """malloc when the fast path missed or the arguments need checking."""
        size = require_int("size", size)
        for name, flag in (("scan", scan), ("zero", zero)):
            if not isinstance(flag, bool):
                raise ArgumentTypeError(f"{name} must be a bool, not {type(flag).__name__}")
        self._check_open()
        noscan = not scan
        if size > MAX_SMALL_SIZE:
            npages = -(-size // PAGE_SIZE)
            if npages > MAX_PAGES:
                raise OutOfMemoryError(f"malloc({size:#x}): larger than the address space")
            span = self.mheap.alloc_span(npages, SpanState.IN_USE, int(noscan), zero=zero)
            with self.stats_lock:
                self._large[0] += 1
                self._large[1] += npages * PAGE_SIZE
                self._freed_large.pop(span.base, None)
            return span.base
        cache = self._my_cache()
        spc = lib.ra_heap_span_class_for(self.c, size, noscan)  # the fast path's own rule
        for _ in range(2):
            addr = int(lib.ra_cache_malloc(self.c, cache.c, size, noscan, zero))
            if addr:
                return addr
            cache.refill(spc)
        raise HeapCorruption(f"CACHE-1: span class {spc} has no free slot right after a refill")

    def _free_slow(self, addr: int) -> None:
        """free of a large object, or of an address the fast path rejected."""
        obj = self._locate(addr, "free")
        span = obj.span
        if span.c.spanclass < 2:
            try:
                npages = self.mheap.free_span(span, SpanState.IN_USE, base=addr)
                with self.stats_lock:
                    self._large[2] += 1
                    self._large[3] += npages * PAGE_SIZE
                    self._freed_large[addr] = None
                    if len(self._freed_large) > _FREED_LARGE_MEMORY:
                        del self._freed_large[next(iter(self._freed_large))]
            except InvalidArgumentError:
                raise DoubleFreeError(
                    f"free({addr:#x}): the large object was already freed"
                ) from None
            return
        out = ffi.new("ra_span **")
        cache = getattr(self._local, "cache", None)
        if lib.ra_cache_free(self.c, addr, cache.c if cache else ffi.NULL, out) != lib.RA_FREE_OK:
            raise DoubleFreeError(f"free({addr:#x}): the object was freed by another thread")

    def _refill(self, spc: int) -> None:
        """The fast path missed: the cached span of class ``spc`` is full."""
        self._local.cache.refill(spc)

    # -- the rest of the public API ----------------------------------------

    def realloc(self, addr: int, size: int) -> int:
        """Resize the object at ``addr``; keeps its contents up to the smaller
        size.  Stays in place while the size class (or page count) still fits."""
        size = require_int("size", size)
        obj = self._locate(addr, "realloc")
        c = obj.span.c
        noscan = bool(c.spanclass & 1)
        if c.spanclass < 2:
            fits = size > MAX_SMALL_SIZE and -(-size // PAGE_SIZE) == c.npages
        elif obj.piece >= 0:  # the piece must also be aligned as Go aligns that size
            fits = (
                noscan
                and size < TINY_SIZE
                and size <= self._extent(obj)
                and addr % tiny_align(size) == 0
            )
        else:
            tiny = noscan and size < TINY_SIZE
            fits = not tiny and size <= MAX_SMALL_SIZE and size_to_class(size) == c.spanclass >> 1
        if fits:
            return addr
        new = self.malloc(size, scan=not noscan)
        ffi.memmove(ffi.cast("char *", new), ffi.cast("char *", addr), min(size, self._extent(obj)))
        self.free(addr)
        return new

    def usable_size(self, addr: int) -> int:
        """Bytes usable at ``addr``: Go's roundupsize of the request for small
        and large objects; a tiny piece's own extent."""
        return self._extent(self._locate(addr, "usable_size"))

    def alloc(self, size: int, *, scan: bool = False, zero: bool = True) -> Any:
        """Allocate ``size`` bytes as a :class:`Buffer` (buffer protocol)."""
        buf = Buffer(self, self.malloc(size, scan=scan, zero=zero), size)
        self._buffers.add(buf)
        return buf

    def _check_buffer(self, addr: int, size: int) -> None:
        """Buffer(heap, address, size) asks this: is there a live object at
        ``addr`` with room for ``size`` bytes?"""
        usable = self.usable_size(addr)
        if not 0 <= size <= usable:
            raise InvalidArgumentError(
                f"Buffer of {size} bytes at {addr:#x}: the object there has {usable} usable bytes"
            )

    def span_of(self, addr: int) -> SpanInfo | None:
        """The span holding ``addr``, or None when it is not in a live span."""
        addr = require_int("addr", addr, 0, (1 << 64) - 1)
        self._check_open()
        span = self.mheap.span_of(addr)
        return None if span is None else span.info()

    def stats(self) -> MemStats:
        """Go's runtime.MemStats for this heap, from counters (no heap walk)."""
        self._check_open()
        n = NUM_SIZE_CLASSES
        with self.stats_lock:  # a flushing cache's counts are in one place or the other
            counts = list(self._retired)
            caches = list(self._caches)
            for cache in caches:
                c = cache.c
                mine = (
                    *ffi.unpack(c.nmalloc, n),
                    *ffi.unpack(c.nfree, n),
                    c.tiny_allocs,
                    c.tiny_pieces,
                    c.tiny_frees,
                )
                counts = [a + int(b) for a, b in zip(counts, mine, strict=True)]
        h = self.c
        orphan = ffi.unpack(h.orphan_nfree, n)
        nmalloc = counts[:n]
        nfree = [a + int(b) for a, b in zip(counts[n : 2 * n], orphan, strict=True)]
        tiny_allocs, tiny_pieces = counts[2 * n], counts[2 * n + 1]
        tiny_frees = counts[2 * n + 2] + int(h.orphan_tiny_frees)
        with self.stats_lock:
            large_allocs, large_bytes, large_frees, large_freed_bytes = self._large
        with self.mheap.lock:
            meta = self.mheap._metadata_locked()
            inuse = self.mheap.inuse_pages * PAGE_SIZE
            manual = self.mheap.manual_pages * PAGE_SIZE
        os_stats = self.mheap.os.stats()
        cache_bytes = len(caches) * _MCACHE_BYTES
        live_small = sum(
            (a - f) * size for a, f, size in zip(nmalloc, nfree, CLASS_TO_SIZE, strict=True)
        )
        heap_sys = os_stats.ready - manual
        metadata = meta.total + cache_bytes + _HEAP_BYTES
        return MemStats(
            heap_alloc=live_small + large_bytes - large_freed_bytes,
            total_alloc=sum(a * CLASS_TO_SIZE[i] for i, a in enumerate(nmalloc)) + large_bytes,
            heap_sys=heap_sys,
            heap_idle=heap_sys - inuse,
            heap_inuse=inuse,
            heap_released=os_stats.released,
            heap_objects=sum(nmalloc) - sum(nfree) + large_allocs - large_frees,
            released_total=self.mheap.os.released_total,
            mallocs=sum(nmalloc) + large_allocs + tiny_allocs,
            frees=sum(nfree) + large_frees + tiny_allocs,
            tiny_allocs=tiny_allocs,
            tiny_pieces=tiny_pieces,
            tiny_frees=tiny_frees,
            large_allocs=large_allocs,
            large_frees=large_frees,
            manual_inuse=manual,
            mspan_inuse=meta.mspan_inuse,
            mspan_sys=meta.mspan_sys,
            mcache_inuse=cache_bytes,
            gc_sys=meta.bitmaps,
            other_sys=meta.arenas + _HEAP_BYTES,
            metadata=metadata,
            mapped=os_stats.ready,
            reserved=os_stats.reserved,
            sys=os_stats.ready + metadata,
            by_size=tuple(SizeClassStats(CLASS_TO_SIZE[i], nmalloc[i], nfree[i]) for i in range(n)),
        )

    def spans(self) -> Iterator[SpanInfo]:
        """Every live span, walked now (a full picture; stats() is the cheap one)."""
        self._check_open()
        return iter([span.info() for span in self.mheap.live_spans()])

    def memory_report(self) -> MemoryReport:
        """The allocator's view of its memory beside the OS's (RSS, USS)."""
        st = self.stats()
        return MemoryReport(
            in_use=st.heap_alloc + st.manual_inuse,
            free_in_spans=st.heap_inuse - st.heap_alloc,
            free_resident=st.heap_idle - st.heap_released,
            released=st.heap_released,
            metadata=st.metadata,
            mapped=st.mapped,
            rss=rss(),
            uss=uss(),
            baseline_rss=self._baseline_rss,
        )

    def scavenge(self, nbytes: int | None = None) -> int:
        """Give free pages back to the OS (MADV_DONTNEED), highest addresses
        first: up to ``nbytes``, or all when None (Go: debug.FreeOSMemory).
        Returns the bytes released; they count in ``heap_released``."""
        if nbytes is not None:
            require_int("nbytes", nbytes)
        self._check_open()
        if nbytes is None:  # everything: this thread's cached spans too
            cache: MCache | None = getattr(self._local, "cache", None)
            if cache is not None:
                cache.release_all()
        self.reclaim()
        return self.mheap.scavenge(nbytes)

    def reclaim(self) -> None:
        """Sweep every class's pending frees and return empty spans to MHeap."""
        for central in self.central:
            central.reclaim()

    def set_memory_limit(self, nbytes: int | None) -> None:
        """Cap the memory this heap keeps resident (Go: GOMEMLIMIT): mapped and
        not released, plus metadata.  An allocation that would pass it first
        releases free pages; if that is not enough it raises OutOfMemoryError
        and no object changes (free pages it released stay released).  None
        removes the limit."""
        if nbytes is not None:
            require_int("nbytes", nbytes)
        self._check_open()
        self.mheap.memory_limit = nbytes

    def metadata_bytes(self) -> int:
        """C memory held for allocator metadata (arenas, spans, bitmaps, caches)."""
        return self.mheap.metadata().total + self._cache_metadata()

    def check(self) -> None:
        """Verify every invariant of every layer; raise HeapCorruption naming it.
        Other threads must not be using the heap meanwhile."""
        self._check_open()
        self.mheap.check()
        caches = list(self._caches)
        cached: set[int] = set()
        for cache in caches:
            ids = cache.cached_ids()
            if cached & set(ids) or len(set(ids)) != len(ids):
                raise HeapCorruption("CENTRAL-1: a span is cached by two thread caches")
            cached.update(ids)
            for spc, s in enumerate(cache.c.alloc):
                if s != self.empty_span and (s.spanclass != spc or not s.cached):
                    raise HeapCorruption(f"CACHE-1: cached span {int(s.id)} is not of class {spc}")
            self._check_tiny(cache)
        listed = sum(central.check(cached) for central in self.central)
        small = [s for s in self.mheap.live_spans() if s.c.spanclass >= 2]
        if len(small) != listed + len(cached):
            raise HeapCorruption(
                f"CENTRAL-1: {len(small)} object spans, {listed} on central lists, "
                f"{len(cached)} cached"
            )
        st = self.stats()
        st.check()
        live = sum(int(s.c.alloc_count) - int(s.c.nfreed) for s in small)
        counted = sum(c.mallocs - c.frees for c in st.by_size)
        if live != counted:
            raise HeapCorruption(f"STATS-3: {live} live small objects, counters say {counted}")

    def close(self) -> None:
        """Unmap all memory.  Idempotent.  BufferError while a Buffer is exported."""
        with self.lifecycle_lock:
            if self.closed:
                return
            exported = [b for b in self._buffers if b.exports]
            if exported:
                raise BufferError(
                    f"cannot close the heap: {len(exported)} Buffer(s) still have exported "
                    f"views, e.g. {exported[0]!r}"
                )
            self.c.closed = 1
            self.closed = True
            if self._scavenger is not None:
                self._scavenger.stop()
            for buf in list(self._buffers):
                buf._invalidate()
            self.mheap.close()
            with _slots_lock:
                _free_slots.append(int(self.c.slot))

    # -- helpers ----------------------------------------------------------

    def absorb_counts(self, cache: MCache) -> None:
        """Move a flushing cache's counters into the heap's totals; under
        ``stats_lock``, so ``stats()`` sees them in exactly one place."""
        c, n, retired = cache.c, NUM_SIZE_CLASSES, self._retired
        with self.stats_lock:
            self._caches.discard(cache)
            for i in range(n):
                retired[i] += int(c.nmalloc[i])
                retired[n + i] += int(c.nfree[i])
                c.nmalloc[i] = c.nfree[i] = 0
            retired[2 * n] += int(c.tiny_allocs)
            retired[2 * n + 1] += int(c.tiny_pieces)
            retired[2 * n + 2] += int(c.tiny_frees)
            c.tiny_allocs = c.tiny_pieces = c.tiny_frees = 0

    def _my_cache(self) -> MCache:
        cache: MCache | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = MCache(self)
            self._local.cache = cache
            self._caches.add(cache)
            _fast.set_thread_cache(int(self.c.slot), int(self.c.gen), cache.address)
        return cache

    def _cache_metadata(self) -> int:
        """Metadata MHeap does not hold: thread caches and the heap record."""
        return len(self._caches) * _MCACHE_BYTES + _HEAP_BYTES

    def _check_open(self) -> None:
        if self.closed:
            raise HeapClosedError("the heap is closed")

    def _locate(self, addr: object, op: str) -> _Object:
        """The live object at ``addr``, or the specific error for why not."""
        if type(addr) is not int:
            raise ArgumentTypeError(f"{op}: address must be an int, not {type(addr).__name__}")
        self._check_open()
        with self.mheap.lock:  # no span changes hands while we look at it
            return self._locate_locked(addr, op)

    def _locate_locked(self, addr: int, op: str) -> _Object:
        arena = ARENAS.lookup(addr)
        where = f"{op}({addr:#x})"
        if arena is None:
            raise ForeignPointerError(f"{where}: not an address of this heap")
        if arena.heap_id != self.mheap.id:
            raise ForeignPointerError(f"{where}: the address belongs to another heap")
        span = self.mheap.span_of_locked(addr)
        if span is None:
            if addr in self._freed_large:
                raise DoubleFreeError(f"{where}: the large object was already freed")
            raise ForeignPointerError(f"{where}: no object there (free pages of this heap)")
        c = span.c
        base = int(c.base)
        if c.state != SpanState.IN_USE:
            raise ForeignPointerError(f"{where}: inside pages handed out whole, not an object")
        if c.spanclass < 2:
            if addr != base:
                raise InteriorPointerError(
                    f"{where}: points {addr - base} bytes into the large object at {base:#x}"
                )
            return _Object(span, 0, -1)
        elemsize = int(c.elemsize)
        slot, inner = divmod(addr - base, elemsize)
        if slot >= c.nelems:
            raise ForeignPointerError(f"{where}: in the unused tail of the span at {base:#x}")
        allocated = slot < c.free_index or bool(c.alloc_bits[slot >> 6] >> (slot & 63) & 1)
        pending = bool(c.free_bits[slot >> 6] >> (slot & 63) & 1)
        state = int(c.tiny_state[slot]) if c.tiny_state != ffi.NULL else 0
        if state:
            if allocated and not pending and state >> inner & 1:
                return _Object(span, slot, inner)
            for start in range(inner + 1):
                if state >> start & 1 and inner <= start + _tiny_extent(state, start) - 1:
                    block = addr - inner
                    raise InteriorPointerError(
                        f"{where}: points {inner - start} bytes into the tiny object at "
                        f"{block + start:#x}"
                    )
            raise DoubleFreeError(f"{where}: no live tiny object starts there (already freed?)")
        if not allocated or pending:
            raise DoubleFreeError(f"{where}: no live object there (already freed?)")
        if inner:
            raise InteriorPointerError(
                f"{where}: points {inner} bytes into the {elemsize}-byte object at "
                f"{addr - inner:#x}"
            )
        return _Object(span, slot, -1)

    def _extent(self, obj: _Object) -> int:
        c = obj.span.c
        if obj.piece >= 0:
            return _tiny_extent(int(c.tiny_state[obj.slot]), obj.piece)
        return int(c.elemsize) or obj.span.nbytes  # 0: a large object, its pages

    def _check_tiny(self, cache: MCache) -> None:
        c = cache.c
        if c.tiny == 0:
            return
        s = c.tiny_span
        slot = (int(c.tiny) - int(s.base)) // TINY_SIZE
        if s.spanclass != _TINY_SPAN_CLASS or not s.tiny_state[slot] & lib.RA_TINY_HELD:
            raise HeapCorruption(f"CACHE-2: tiny block {int(c.tiny):#x} is not held")


def _tiny_extent(state: int, start: int) -> int:
    """Bytes of the tiny piece starting at byte ``start`` (see RA_TINY_HELD in shim.h)."""
    ends = (state >> 16 & 0x7FFF) >> start
    return (ends & -ends).bit_length() if ends else 16 - start
