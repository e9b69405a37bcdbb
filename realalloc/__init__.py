"""realalloc: Go's memory allocator, rebuilt in Python over real memory.

This docstring is the overview of the whole design; every other module starts
with "See realalloc/__init__.py for an overview" and then says which part it
owns, its invariants and its locking rules.

Words
=====
page      8 KiB, the allocator's unit (Go: _PageSize).  An *OS page* is 4 KiB.
chunk     512 pages = 4 MiB, the page allocator's bitmap unit (pallocChunkPages).
arena     64 MiB of address space, 64 MiB aligned, 8192 pages (heapArena).
span      a run of pages handed out by the page heap (mspan): either MANUAL
          (whole pages for the caller) or IN_USE (cut into objects of one
          span class).
size class one of 67 object sizes from 8 B to 32 KiB; class 0 means "large".
span class size class << 1 | noscan: 136 of them (noscan spans hold no pointers).
released  (scavenged) a free page given back to the OS with MADV_DONTNEED; it
          costs no RSS and reads as zero when next touched.

Layers
======
::

    Python caller: heap.malloc(size) / heap.free(addr) / heap.alloc(size) -> Buffer
          |
          v
    +-----------+   C, no lock (csrc/fastpath.c + spanbits.h): this    heap.py
    | fast path |   thread's cached span of the size's span class:     cache.py
    |  MCache   |   next free slot by count-trailing-zeros over
    +-----------+   alloc_cache; tiny pieces; free = one atomic bit.
          | miss: Heap._malloc_slow -> MCache.refill (Python)
          v
    +-----------+   one per span class: partial and full span lists,  central.py
    | MCentral  |   a lock-free dirty stack of spans that got frees;
    +-----------+   sweeps them, releases empty ones.  MCentral.lock.
          | needs a span (and large objects directly)
          v
    +-----------+   spans = runs of pages; records in C slabs;        mheap.py
    |  MHeap    |   per-thread 64-page PageCache for small requests.   span.py
    +-----------+   MHeap.lock.                                        fixalloc.py
          | npages                            ^ free pages
          v                                   |
    +-----------+   bitmaps per 4 MiB chunk + radix tree of           pagealloc.py
    | PageAlloc |   (start, max, end) summaries: first fit in the     pallocbits.py
    +-----------+   same time for 64 MB or 64 GB of heap; scavenged   pagecache.py
          | grow by whole arenas              bits.
          v
    +-----------+   64 MiB regions; page -> span map and page-in-use  arena.py
    | HeapArena |   bits in C memory; a two-level index finds the
    +-----------+   arena of any address in O(1).
          |
          v
    +-----------+   reserve / commit / release / unmap, fault         osmem.py
    |  OS shim  |   injection; errno -> ShimError in one place.       csrc/shim.c
    +-----------+

Memory layout of one arena and one small-object span::

    arena base (64 MiB aligned)                               base + 64 MiB
    |<-- chunk 0: 512 pages -->|<-- chunk 1 -->| ... |<-- chunk 15 -->|
    | span A (1 page)  | free | span B (40 pages, a large object) | free ...
      ^ spans[p] -> A for each of A's pages; page_in_use bit on A's first page

    span A, class 6 (64 B), 128 slots:
    | obj 0 | obj 1 | obj 2 | ... | obj 127 |
    alloc_bits 1 1 0 1 ...   free_bits (pending frees)   free_index, alloc_cache

One allocation: malloc(size, scan=False)
========================================
1. C: size -> size class (two lookup tables) -> span class (class << 1 |
   noscan).  Noscan sizes below 16 B are tiny pieces packed into this
   thread's 16-byte block (Go's alignment rules).
2. C: this thread's MCache (a thread-local slot tagged with the heap's
   generation) -> its span of that class -> next free slot.  Zeroed only if
   the span's pages may hold old data (Go's needzero).  Done: no Python ran.
3. Miss: ``Heap._malloc_slow`` -> ``MCache.refill``: sweep the span if frees
   arrived, else hand it to its MCentral and take a span with room: swept
   from the dirty stack, from ``partial``, or fresh from MHeap.
4. MHeap: below 16 pages from this thread's PageCache; else PageAlloc's
   first fit; nothing fits: grow by whole arenas (reserve + commit through
   the shim, add to the arena index and to PageAlloc as free and released).
5. Objects over 32 KiB skip 1-3: a span of their own, page aligned.

Free runs the other way: address -> arena (two-level index) -> span ->
slot (multiply-shift divide) -> one atomic bit in ``free_bits``.  The slot
is reusable after the next sweep; a span left with no object goes back to
MHeap, whose free pages coalesce and can be released to the OS (RSS drops).

Around the allocator
====================
stats.py       MemStats (Go's runtime.MemStats fields) from per-thread counters,
               and MemoryReport (the allocator's view beside RSS/USS, rss.py).
scavenger.py   the background scavenger: keeps free resident pages within 10%
               of in-use pages, releasing the rest with MADV_DONTNEED.
stress.py      ``python -m realalloc stress``: verified multi-threaded churn.

Debugging: ``REALALLOC_DEBUG=0..3`` grades internal checks (realalloc/_debug.py).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from . import _fast
from ._version import __version__
from .core.heap import MAX_HEAPS, Buffer, Heap
from .core.mheap import MHeap
from .core.osmem import fault_hits, inject_faults
from .core.pagealloc import PageAlloc
from .core.rss import rss
from .core.sizeclasses import roundupsize, size_to_class
from .core.span import MSpan, SpanInfo, SpanState
from .core.stats import MemoryReport, MemStats, SizeClassStats
from .errors import (
    ArgumentTypeError,
    BufferFreedError,
    DoubleFreeError,
    ForeignPointerError,
    HeapClosedError,
    HeapCorruption,
    InteriorPointerError,
    InvalidArgumentError,
    InvalidPointerError,
    OutOfMemoryError,
    RealAllocError,
    ReentrancyError,
    ShimError,
)
from .integrations.tracing import TRACEMALLOC_DOMAIN

_DEFAULT_METHODS = ("malloc", "free", "alloc", "realloc", "usable_size")
_default_lock = threading.Lock()
_default: Heap | None = None

if TYPE_CHECKING:
    malloc = Heap.malloc.__get__(Heap())
    free = Heap.free.__get__(Heap())
    alloc = Heap.alloc.__get__(Heap())
    realloc = Heap.realloc.__get__(Heap())
    usable_size = Heap.usable_size.__get__(Heap())


def default_heap() -> Heap:
    """The module's default heap, behind ``realalloc.malloc`` and friends:
    made on first use (so a process that never uses it spends no heap slot)."""
    return _default if _default is not None else _fast.locked(_default_lock, _make_default)


def _make_default() -> Heap:
    global _default
    if _default is None:
        heap = Heap()
        # Bound once: later lookups of realalloc.malloc cost a dict lookup.
        globals().update({name: getattr(heap, name) for name in _DEFAULT_METHODS})
        _default = heap
    return _default


def __getattr__(name: str) -> Any:
    if name in _DEFAULT_METHODS:
        return getattr(default_heap(), name)
    raise AttributeError(f"module 'realalloc' has no attribute {name!r}")


__all__ = [
    "MAX_HEAPS",
    "TRACEMALLOC_DOMAIN",
    "ArgumentTypeError",
    "Buffer",
    "BufferFreedError",
    "DoubleFreeError",
    "ForeignPointerError",
    "Heap",
    "HeapClosedError",
    "HeapCorruption",
    "InteriorPointerError",
    "InvalidArgumentError",
    "InvalidPointerError",
    "MHeap",
    "MSpan",
    "MemStats",
    "MemoryReport",
    "OutOfMemoryError",
    "PageAlloc",
    "RealAllocError",
    "ReentrancyError",
    "ShimError",
    "SizeClassStats",
    "SpanInfo",
    "SpanState",
    "__version__",
    "alloc",
    "default_heap",
    "fault_hits",
    "free",
    "inject_faults",
    "malloc",
    "realloc",
    "roundupsize",
    "rss",
    "size_to_class",
    "usable_size",
]
