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
    +-----------+   C, no lock (csrc/fastpath.c, spanbits.h): this   core/heap.py
    | fast path |   thread's cache (a thread-local slot per heap) ->  core/cache.py
    |  MCache   |   its span of the span class -> next free slot
    +-----------+   (count-trailing-zeros over alloc_cache); tiny
          |         pieces.  Free: plain stores when this thread's
          |         cache holds the span, else one atomic bit.
          | the cached span is full: refill, still C
          v
    +-----------+   C, one lock per span class (csrc/central.h):     core/central.py
    | central   |   partial (a queue) / full / empty lists and a      (the numbers)
    |  lists    |   lock-free dirty stack of spans that got frees;
    +-----------+   a refill sweeps, files and pops a span with room.
          | the class has no span with room: Heap._grow_central (Python)
          v
    +-----------+   Python decides, C installs: a batch of spans in   core/mheap.py
    |  MHeap    |   one lock, one search, one C call; large objects   core/limit.py
    +-----------+   (> 32 KiB) each get a span.  MHeap.lock.          core/fixalloc.py
          | npages                            ^ freed pages (C marks them)
          v                                   |
    +-----------+   page bits per 4 MiB chunk in C; Python keeps the  core/pagealloc.py
    | PageAlloc |   radix tree of (start, max, end) summaries, made   core/pallocbits.py
    +-----------+   fresh from C's dirty chunks before each search:
          |         first fit costs the same for 64 MB or 64 GB.
          | grow by whole arenas
          v
    +-----------+   64 MiB regions; page -> span map and page-in-use  core/arena.py
    | HeapArena |   bits in C memory; a two-level index finds the
    +-----------+   arena of any address in O(1).
          |
          v
    +-----------+   reserve / commit / release / unmap, fault         core/osmem.py
    |  OS shim  |   injection; errno -> ShimError in one place.       csrc/shim.c
    +-----------+

Memory layout of one arena and one small-object span::

    arena base (64 MiB aligned)                               base + 64 MiB
    |<-- chunk 0: 512 pages -->|<-- chunk 1 -->| ... |<-- chunk 15 -->|
    | span A (1 page)  | free | span B (40 pages, a large object) | free ...
      ^ spans[p] -> A for each of A's pages; page_in_use bit on A's first page

    span A, class 6 (64 B), 128 slots:
    | obj 0 | obj 1 | obj 2 | ... | obj 127 |
    record (C pool slab): base, npages, spanclass, counts, list links, then
    inline: alloc_bits 1 1 0 1 ...   free_bits (pending frees)   [tiny states]

The C/Python line
=================
C does mechanics, Python decides.  C holds no policy: every number it
follows (batch sizes, the empty spans a class keeps, the memory limit) is
set by Python.  Each C call does all of its job or none of it, never calls
Python or raises, and takes its locks (a central's, then the page lock)
inside the call only; a multi-step change (install a span: take its pages,
a record, map the pages to it; retire one) is one call.  Python owns the
page heap, PageAlloc's summaries, arenas, growth, scavenging, the memory
limit, every error and message, and ``check()``.  The fast path leaves C
for Python only when a class has no span with room (then Python brings a
batch, so that happens once per batch), for large objects, for a thread's
first call, and for every error (``Heap.python_mallocs`` counts the
mallocs that did).  csrc/shim.h declares the interface once: C includes it,
cffi reads it, and realalloc/_fast.pyi types the CPython half.

Interruption and re-entry
=========================
A KeyboardInterrupt, or any exception a signal handler or trace function
raises, can arrive at any line of this package's Python code; a finalizer
or signal handler can call back into the heap.  So: every Python-level lock,
entering the heap and stopping the world are pairs of C steps around a
Python call (``_fast.locked``, ``Heap._inside``, ``Heap._alone``), never a
``with`` whose exit an exception can skip; between them each change is one
C call, or Python state derived from C and rebuilt when stale, or a step
that can run again.  A call that re-enters the page heap on the thread that
is inside it raises ReentrancyError (frees never need Python, so a
finalizer's free always works).  fork and exit: core/lifecycle.py.

One allocation: malloc(size, scan=False)
========================================
1. C: size -> span class (two lookup tables; class << 1 | noscan).  Noscan
   sizes below 16 B are tiny pieces packed into this thread's 16-byte block
   (Go's alignment rules).
2. C: this thread's MCache -> its span of that class -> next free slot.
   Zeroed only if the span's pages may hold old data (Go's needzero).
3. C refill: the full span goes to its central list (or is swept first if
   frees arrived); the cache takes the oldest partial span, else sweeps
   dirty spans, else takes an empty one: a span with any room (Go's rule).
4. None: Python brings a batch of fresh spans (``MHeap.grow_central``):
   admission under the memory limit, PageAlloc's first fit (growing by whole
   arenas when nothing fits), then one C call installs them all.
5. Objects over 32 KiB skip 1-4: a span of their own, page aligned: a freed
   one of the same page count that its class keeps (C), else a new one from
   Python.

Free runs the other way, in C: address -> arena (two-level index) -> span
-> slot (multiply-shift divide).  The calling thread's own cached span
takes plain stores; any other span one atomic bit in ``free_bits`` and, on
its first pending free, a push on its class's dirty stack.  A span left
with no object goes to its class's empty list; beyond the class's budget C
returns it to the page heap, whose free pages coalesce and can be released
to the OS (RSS drops).  A freed large object's span waits on the empty
list of class 0 or 1 (up to 64 spans, 8 MiB, per class) for a malloc of
the same page count; beyond that, or at the next reclaim, its pages go back.

Around the allocator
====================
core/stats.py      MemStats (Go's runtime.MemStats fields) from per-thread
                   counters, and MemoryReport (beside RSS/USS, core/rss.py).
core/mgc.py        garbage collection for ``Heap(gc=True)``: roots (Buffers,
                   root ranges, pins), a stop-the-world mark and sweep in C
                   (csrc/gc.c), Go's pacer, finalizers.  An address held only
                   in a Python int is not a root: link a fresh object before
                   the next allocation, or allocate it with Pinner.malloc.
core/scavenger.py  the background scavenger: keeps free resident pages within
                   10% of in-use pages, releasing the rest (MADV_DONTNEED).
core/lifecycle.py  fork (at-fork handlers) and interpreter exit.
designs/           the seed's other designs (free list, segregated lists,
                   tcmalloc), run beside Go's for comparison.
tools/             the stress and compare commands, workloads, the heap map.
integrations/      tracemalloc (tracing.py) and numpy's data allocator.

Debugging: ``REALALLOC_DEBUG=0..3`` grades internal checks (realalloc/_debug.py).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from . import _fast
from ._version import __version__
from .core.heap import MAX_HEAPS, Buffer, Heap
from .core.mgc import Pinner
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
    GCError,
    HeapClosedError,
    HeapCorruption,
    InteriorPointerError,
    InvalidArgumentError,
    InvalidPointerError,
    OutOfMemoryError,
    RealAllocError,
    ReentrancyError,
    ShimError,
    UnsupportedError,
)
from .integrations.tracing import TRACEMALLOC_DOMAIN

_DEFAULT_METHODS = ("malloc", "free", "alloc", "realloc", "usable_size")
_default_lock = threading.RLock()  # re-entrant: see realalloc/_debug.py (finalizers)


def _new_default_lock() -> None:
    """In a forked child: the thread that was making the default heap at the
    fork is not there, and would hold its lock for good."""
    global _default_lock
    _default_lock = threading.RLock()


os.register_at_fork(after_in_child=_new_default_lock)
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
    "GCError",
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
    "Pinner",
    "RealAllocError",
    "ReentrancyError",
    "ShimError",
    "SizeClassStats",
    "SpanInfo",
    "SpanState",
    "UnsupportedError",
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
