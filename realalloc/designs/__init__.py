"""The seed's other allocator designs, over the same real memory as realalloc's Go allocator.

See realalloc/__init__.py for an overview of the Go allocator itself.

The seed document walks from a single free list (§2) through segregated free
lists (§2) and tcmalloc (§3) to Go's allocator (§4-6).  realalloc builds the
last one; this package builds the first three, so that the claims the seed
makes for each step can be measured rather than believed (``realalloc
compare`` runs the same workloads on all of them; realalloc/tools/compare.py).

Every design gets its pages from a private instance of realalloc's page heap
(``realalloc.core.mheap.MHeap``, through ``pages.PageSource``), hands out real,
writable memory, and decides everything in Python; there is no C of its own.

Modules::

    base.py        DesignHeap (the common surface and its rules), DesignStats
    pages.py       PageSource: the designs' only door to MHeap
    freelist.py    seed §2: one address-ordered list, first fit, boundary tags
    segregated.py  seed §2: a free list per power-of-two size class
    tcmalloc.py    seed §3: thread caches -> central caches -> page heap

The surface (the same for every design, and close to realalloc.Heap's)::

    heap = make("tcmalloc")           # or DESIGNS["tcmalloc"]()
    addr = heap.malloc(100)           # an int address of real memory
    heap.usable_size(addr)            # >= 100
    addr = heap.realloc(addr, 5000)
    heap.free(addr)
    heap.stats()                      # DesignStats: in use, held, metadata, counts
    heap.check()                      # HeapCorruption("TCM-3: ...") if broken
    heap.close()                      # or: with make("freelist") as heap: ...

``stats().bytes_held`` is what the design holds from the page heap,
``bytes_in_use`` what its live objects asked for, ``bytes_allocated`` their
usable bytes, ``metadata_bytes`` what a C implementation of the design would
keep beside the objects (each module lists the items).

Locking: freelist and segregated take one lock per call; tcmalloc's thread
caches take none, its central caches and page heap one each.  Locks are
plain ``threading.Lock`` objects,
taken before PageSource.lock and MHeap.lock.  Like realalloc.Heap, ``close``
needs the other threads to be idle in the heap.  Unlike it, a design's
Python code is not protected against an asynchronous exception (a signal
handler's KeyboardInterrupt) between two steps of one update, nor against a
signal handler that allocates from the heap its own thread is inside.
"""

from __future__ import annotations

from typing import Final

from ..errors import ArgumentTypeError, InvalidArgumentError
from .base import DesignHeap, DesignStats
from .freelist import FreeListHeap
from .segregated import SegregatedHeap
from .tcmalloc import TCMallocHeap

__all__ = [
    "DESIGNS",
    "DesignHeap",
    "DesignStats",
    "FreeListHeap",
    "SegregatedHeap",
    "TCMallocHeap",
    "make",
]

DESIGNS: Final[dict[str, type[DesignHeap]]] = {
    "freelist": FreeListHeap,
    "segregated": SegregatedHeap,
    "tcmalloc": TCMallocHeap,
}
"""Design name -> its heap class, in the seed's order."""


def make(name: str) -> DesignHeap:
    """A new, empty heap of the design ``name`` (a key of DESIGNS)."""
    if not isinstance(name, str):
        raise ArgumentTypeError(f"design name must be a str, not {type(name).__name__}")
    cls = DESIGNS.get(name)
    if cls is None:
        raise InvalidArgumentError(f"unknown design {name!r}; one of {', '.join(DESIGNS)}")
    return cls()
