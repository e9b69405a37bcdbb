"""The memory limit: admission of new pages (Go: GOMEMLIMIT, mgcpacer.go memoryLimit).

See realalloc/__init__.py for an overview of the allocator.

``Heap.set_memory_limit(n)`` caps what the heap keeps resident: heap pages
not released to the OS, plus metadata.  Unlike Go's soft limit it is hard:
before pages become the heap's (a span, a batch of spans, a new arena) the
request is admitted here, under ``MHeap.lock`` and in the same critical
section that then takes the pages, so concurrent requests cannot each pass
the check and together exceed the limit.  A request that does not fit first
gives back the spans kept for reuse (realalloc/core/central.py) and releases
free pages; if that is not enough it raises OutOfMemoryError and no object
changes (the pages it released stay released).

What a request may add is counted exactly: its pages, one slab of span
records if the pool has too few free ones, and the metadata of the arenas
the heap must grow by if no run of free pages can hold it (free pages in
pieces do not help: first fit grows the heap, so the test is a fit, not a
count).  An arena page map
that scavenge released counts as resident all along (MHeap.retained_locked):
a span installed in that arena brings it back without asking.

Locking: Caller must hold ``MHeap.lock``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._debug import assert_lock_held
from ..errors import OutOfMemoryError
from .arena import ARENA_META_BYTES
from .central import reclaim
from .sizeclasses import PAGE_SIZE, PAGES_PER_ARENA

if TYPE_CHECKING:
    from .mheap import MHeap

__all__ = ["admit_locked"]


def admit_locked(mheap: MHeap, npages: int, pool: int, nrecords: int, what: str) -> None:
    """Raise OutOfMemoryError unless ``npages`` more pages (for ``nrecords``
    span records of pool ``pool``) fit under ``mheap.memory_limit``.
    ``what`` names the request in the message."""
    limit = mheap.memory_limit
    if limit is None:
        return
    assert_lock_held(mheap.lock)
    p = mheap.h.pools[pool]
    records = int(p.slab_bytes) if p.nfree < nrecords else 0
    arenas = _growth_bytes(mheap, npages)
    need = npages * PAGE_SIZE + records + arenas
    over = mheap.retained_locked() + need - limit
    if over > 0:
        # Spans kept for reuse (empty ones, freed large ones) first: then
        # their pages are free and can be released with the rest (and may
        # make the run that spares a growth).
        reclaim(mheap.h)
        mheap.pages.scavenge(over)
        arenas = _growth_bytes(mheap, npages)
        need = npages * PAGE_SIZE + records + arenas
        over = mheap.retained_locked() + need - limit
    if over > 0:
        extra = [f"{records} bytes of span records"] if records else []
        extra += [f"{arenas} bytes of arena metadata"] if arenas else []
        detail = f" (plus {' and '.join(extra)})" if extra else ""
        raise OutOfMemoryError(
            f"{what}: {npages * PAGE_SIZE} bytes of pages{detail} would take the heap to "
            f"{mheap.retained_locked() + need} bytes and exceed the memory limit of {limit} "
            "bytes, with every free page already released"
        )


def _growth_bytes(mheap: MHeap, npages: int) -> int:
    """Arena metadata that taking ``npages`` pages would add: none if a run
    of that many free pages exists (MHeap then takes it), else that of
    enough new arenas to hold them all (an upper bound: growth may use the
    free tail of the last arena)."""
    if mheap.pages.find(npages)[0]:
        return 0
    return -(-npages // PAGES_PER_ARENA) * ARENA_META_BYTES
