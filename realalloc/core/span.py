"""Spans: runs of pages, the unit the page heap hands out (Go: runtime/mheap.go, type mspan).

See realalloc/__init__.py for an overview of the allocator.

A span's record is a ``ra_span`` struct in C memory (fields in csrc/shim.h)
with its bitmaps right after it, taken from one of the heap's record pools
(realalloc/core/fixalloc.py) and named by ``id`` (pool << 24 | record).
No Python object lives per span: ``MSpan`` is a short-lived handle around a
``ra_span *`` for Python code; central lists (in C) link spans through the
struct's own ``next``/``prev`` fields.  Field names follow Go's mspan in
snake_case: ``base`` (startAddr), ``npages``, ``state``, ``spanclass``,
``elemsize``, ``nelems``, ``free_index``, ``alloc_cache``, ``alloc_count``.

States (Go: mSpanState); each change is one C call (csrc/pages.h)::

    FREE --ra_span_install--> MANUAL   whole pages for the caller
    FREE --ra_span_install--> IN_USE   objects of one span class, or one large object
    MANUAL / IN_USE --ra_span_uninstall--> FREE (the record goes back to its pool)

Object slots of an IN_USE span (see csrc/spanbits.h for the kernels)::

    slot:        0   1   2   3   4   5   6   7 ...  nelems-1 | padding to 64
    alloc bits:  1   1   0   1   0   0   0   0 ...           | 1 1 1
    free_index:  0, the first slot of the word the next-free scan is in
    alloc_cache: free slots of that word not taken since it was loaded
                 (a subset of ~alloc bits); taking one clears its lowest bit
    free bits:   slots freed by threads whose cache does not hold the span,
                 cleared from the alloc bits by the next sweep

Invariants (checked by ``check_span``):
  SPAN-1: base is page aligned; npages >= 1; state != FREE for a live record.
  SPAN-2: elemsize * nelems <= npages * PAGE_SIZE; the class's divmagic divides
          exactly.
  SPAN-3: free_index is a multiple of 64 below max(nelems, 1); padding bits
          of the alloc bits are set; alloc_cache claims no allocated slot free.
  SPAN-4: nfreed == popcount(free bits); free bits only on allocated slots.
  SPAN-5: alloc_count == popcount(alloc bits over the slots).
  SPAN-6: tiny state words are nonzero only on allocated slots of the tiny
          span class.

Locking: a span's fields are written by the thread whose cache holds it
(``cached == 1``) or, when uncached, under its central's lock (both in C);
state, base and npages under the heap's page lock.  Free bits, ``nfreed``,
``cached``, ``in_dirty`` and tiny state words are atomics.  Python reads
them; it writes none.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ..errors import HeapCorruption
from .osmem import ffi, lib
from .sizeclasses import CLASS_TO_DIVMAGIC, PAGE_SIZE, TINY_SPAN_CLASS

__all__ = ["MSpan", "SpanInfo", "SpanState", "check_span", "span_bits", "tiny_states"]


class SpanState(IntEnum):
    """Go: mSpanState."""

    FREE = lib.RA_SPAN_FREE
    IN_USE = lib.RA_SPAN_IN_USE
    MANUAL = lib.RA_SPAN_MANUAL


@dataclass(frozen=True, slots=True)
class SpanInfo:
    """A snapshot of one span, as ``Heap.span_of`` reports it."""

    base: int
    """Address of the span's first page."""
    npages: int
    """Pages in the span (8 KiB each)."""
    spanclass: int
    """size class << 1 | noscan; 0 or 1 for a large object."""
    sizeclass: int
    """Size class of its objects; 0 for a large object or manual span."""
    elemsize: int
    """Bytes per object slot."""
    nelems: int
    """Object slots in the span."""
    allocated: int
    """Slots allocated now (pending frees from other threads count until swept)."""
    noscan: bool
    """True when the objects hold no pointers (Go's noscan)."""
    state: SpanState
    """IN_USE for object spans, MANUAL for whole-page spans."""
    idle: bool
    """An empty span a central list keeps for reuse: its pages count in
    MemStats.heap_idle, not heap_inuse (Go would have freed it)."""


class MSpan:
    """A handle on one ``ra_span`` record (Go: *mspan).  Compares by record.

    The record lives in its heap's metadata region: a handle must not be used
    after the heap is closed (its memory is unmapped then)."""

    __slots__ = ("c",)

    def __init__(self, c: Any) -> None:
        self.c = c

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MSpan) and self.c == other.c

    def __hash__(self) -> int:
        return hash(self.address)

    @property
    def address(self) -> int:
        """Address of the C record."""
        return int(ffi.cast("uintptr_t", self.c))

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
        return int(self.c.npages) * PAGE_SIZE

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

    def info(self) -> SpanInfo:
        c = self.c
        spc = int(c.spanclass)
        return SpanInfo(
            base=int(c.base),
            npages=int(c.npages),
            spanclass=spc,
            sizeclass=spc >> 1,
            elemsize=int(c.elemsize) or int(c.npages) * PAGE_SIZE,
            nelems=int(c.nelems),
            allocated=int(c.alloc_count) - int(c.nfreed),
            noscan=bool(spc & 1),
            state=SpanState(c.state),
            idle=c.list == lib.RA_LIST_EMPTY,
        )

    def __repr__(self) -> str:
        return (
            f"<MSpan #{self.id} {self.state.name} base={self.base:#x} npages={self.npages}"
            f" spanclass={int(self.c.spanclass)}>"
        )


def span_bits(c: Any) -> tuple[int, int, int]:
    """(nwords, alloc bits, free bits) of a span record, the bitmaps as ints."""
    nwords = (int(c.nelems) + 63) >> 6
    raw = ffi.buffer(c.bits, 16 * nwords)
    return (
        nwords,
        int.from_bytes(raw[: 8 * nwords], "little"),
        int.from_bytes(raw[8 * nwords :], "little"),
    )


def tiny_states(c: Any) -> Any:
    """The tiny state words of a span of the tiny class (a ``uint32_t *``)."""
    nwords = (int(c.nelems) + 63) >> 6
    return ffi.cast("uint32_t *", c.bits + 2 * nwords)


def check_span(c: Any) -> None:
    """Verify SPAN-1..6 for a live span record; raise HeapCorruption."""
    sid = int(c.id)
    nelems, elemsize = int(c.nelems), int(c.elemsize)
    if int(c.base) % PAGE_SIZE or c.npages < 1 or c.state == SpanState.FREE:
        raise HeapCorruption(f"SPAN-1: span {sid}: base {int(c.base):#x}, state {int(c.state)}")
    if elemsize * nelems > int(c.npages) * PAGE_SIZE:
        raise HeapCorruption(f"SPAN-2: span {sid}: {nelems} x {elemsize} B overflow its pages")
    if c.state != SpanState.IN_USE or int(c.spanclass) < 2:
        return
    magic = CLASS_TO_DIVMAGIC[int(c.spanclass) >> 1]
    for i in (0, nelems - 1):
        if (i * elemsize * magic) >> 32 != i:
            raise HeapCorruption(f"SPAN-2: span {sid}: divmagic is wrong for slot {i}")
    nwords, alloc, freed = span_bits(c)
    pad = ((1 << (nwords * 64)) - 1) ^ ((1 << nelems) - 1)
    fi = int(c.free_index)
    if fi % 64 or fi >= max(nelems, 1) or alloc & pad != pad:
        raise HeapCorruption(f"SPAN-3: span {sid}: free_index {fi}, padding bits unset")
    if int(c.alloc_cache) & (alloc >> fi):
        raise HeapCorruption(f"SPAN-3: span {sid}: alloc_cache offers an allocated slot")
    if freed & ~alloc or int(c.nfreed) != freed.bit_count():
        raise HeapCorruption(f"SPAN-4: span {sid}: free bits {freed:#x}, nfreed {int(c.nfreed)}")
    count = (alloc & ~pad).bit_count()
    if int(c.alloc_count) != count:
        raise HeapCorruption(f"SPAN-5: span {sid}: alloc_count {int(c.alloc_count)} != {count}")
    if int(c.spanclass) == TINY_SPAN_CLASS:
        states = tiny_states(c)
        for i in range(nelems):
            if states[i] and not alloc >> i & 1:
                raise HeapCorruption(f"SPAN-6: span {sid}: tiny state on free slot {i}")
