"""Spans: runs of pages, the unit the page heap hands out (Go: runtime/mheap.go, type mspan).

See realalloc/__init__.py for an overview of the allocator.

An ``MSpan`` is a Python record around a ``ra_span`` struct in C memory (its
fields are declared in csrc/shim.h) so that C code reaching the span through
the arena's page -> span map sees the same data as Python.  Field names follow
Go's mspan in snake_case: ``base`` (startAddr), ``npages``, ``state``,
``spanclass``, ``elemsize``, ``nelems``, ``free_index``, ``alloc_cache``,
``alloc_bits``, ``alloc_count``.

States (Go: mSpanState)::

    FREE --alloc_span_locked--> MANUAL   (pages handed out whole)
    FREE --alloc_span_locked--> IN_USE   (objects of one span class)
    MANUAL / IN_USE --free_span_locked--> FREE (the record is recycled)

Invariants:
  SPAN-1: base is page aligned and npages >= 1.
  SPAN-2: state is FREE exactly when the record is not in its heap's span table.

Locking: fields are written under ``MHeap.lock`` while the span is not
cached by a thread; a state change needs ``MHeap.lock``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from .osmem import ffi, lib

__all__ = ["MSpan", "SpanState"]


class SpanState(IntEnum):
    """Go: mSpanState."""

    FREE = lib.RA_SPAN_FREE
    IN_USE = lib.RA_SPAN_IN_USE
    MANUAL = lib.RA_SPAN_MANUAL


class MSpan:
    """One span.  ``c`` is its ``ra_span *``; ``id`` its index in the heap's table."""

    __slots__ = ("c",)

    def __init__(self) -> None:
        self.c: Any = ffi.new("ra_span *")

    def init(self, span_id: int, base: int, npages: int, state: SpanState) -> None:
        """(Re)initialise the record for ``npages`` pages at ``base``."""
        ffi.memmove(self.c, bytes(ffi.sizeof("ra_span")), ffi.sizeof("ra_span"))
        c = self.c
        c.id = span_id
        c.base = base
        c.npages = npages
        c.state = state
        c.elemsize = npages << lib.RA_PAGE_SHIFT
        c.nelems = 1
        c.limit = base + c.elemsize

    @property
    def id(self) -> int:
        return int(self.c.id)

    @property
    def base(self) -> int:
        return int(self.c.base)

    @property
    def npages(self) -> int:
        return int(self.c.npages)

    @property
    def nbytes(self) -> int:
        return int(self.c.npages) << lib.RA_PAGE_SHIFT

    @property
    def limit(self) -> int:
        """End of the span's pages."""
        return self.base + self.nbytes

    @property
    def state(self) -> SpanState:
        return SpanState(self.c.state)

    def view(self) -> memoryview:
        """A writable memoryview of the span's pages (valid while the span lives)."""
        return memoryview(ffi.buffer(ffi.cast("char *", self.base), self.nbytes))

    def __repr__(self) -> str:
        return (
            f"<MSpan #{self.id} {self.state.name} base={self.base:#x} npages={self.npages}>"
        )
