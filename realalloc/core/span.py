"""Spans: runs of pages, the unit the page heap hands out (Go: runtime/mheap.go, type mspan).

See realalloc/__init__.py for an overview of the allocator.

A span's record is a ``ra_span`` struct in C memory (fields in csrc/shim.h),
allocated from the heap's ``FixAlloc`` and named by its index there, ``id``.
No Python object lives per span: ``MSpan`` is a short-lived handle around a
``ra_span *`` for Python code, and central lists link spans through the
struct's own ``next``/``prev`` fields.  Field names follow Go's mspan in
snake_case: ``base`` (startAddr), ``npages``, ``state``, ``spanclass``,
``elemsize``, ``nelems``, ``free_index``, ``alloc_cache``, ``alloc_bits``,
``alloc_count``.

States (Go: mSpanState)::

    FREE --MHeap.alloc_span--> MANUAL   whole pages for the caller
    FREE --MHeap.alloc_span--> IN_USE   objects of one span class, or one large object
    MANUAL / IN_USE --MHeap.free_span_locked--> FREE (the record is recycled)

Object slots of an IN_USE span (see csrc/spanbits.h for the kernels)::

    slot:        0   1   2   3   4   5   6   7 ...  nelems-1 | padding to 64
    alloc_bits:  1   1   0   1   0   0   0   0 ...           | 1 1 1
                         ^ free_index = 2: every slot below is allocated
    alloc_cache: ~alloc_bits shifted so bit 0 is slot free_index
    free_bits:   slots freed by any thread, applied by the next sweep

Invariants (checked by ``check_span``):
  SPAN-1: base is page aligned; npages >= 1; state != FREE for a live record.
  SPAN-2: elemsize * nelems <= npages * PAGE_SIZE; div_magic divides exactly.
  SPAN-3: free_index <= nelems; alloc_cache == (~alloc_bits >> free_index) over
          the rest of free_index's word; padding bits of alloc_bits are set.
  SPAN-4: nfreed == popcount(free_bits); free_bits only on allocated slots.
  SPAN-5: uncached: alloc_count == popcount(alloc_bits over slots) + handed-out
          slots below free_index that alloc_bits does not have.
  SPAN-6: tiny state words are nonzero only on allocated slots of the tiny
          span class.

Locking: a span's fields are written by the thread whose cache holds it
(``cached == 1``) or, when uncached, under its span class's central lock; a
state change needs ``MHeap.lock``.  ``free_bits``, ``nfreed``, ``cached``,
``in_dirty`` and ``tiny_state`` are atomic and written by any thread in C.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from ..errors import HeapCorruption
from .osmem import PAGE_SIZE, ffi, lib

__all__ = ["MSpan", "SpanInfo", "SpanList", "SpanState", "check_span"]


_NULL: Final = ffi.NULL


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
        )

    def __repr__(self) -> str:
        return (
            f"<MSpan #{self.id} {self.state.name} base={self.base:#x} npages={self.npages}"
            f" spanclass={int(self.c.spanclass)}>"
        )


class SpanList:
    """An intrusive doubly linked list of spans through ``ra_span.next/prev``
    (Go: mSpanList).  ``tag`` is stored in each member's ``list`` field so a
    span knows which list holds it.  Caller must hold the owner's lock."""

    __slots__ = ("count", "first", "tag")

    def __init__(self, tag: int) -> None:
        self.tag = tag
        self.first: Any = _NULL
        self.count = 0

    # cdata pointers are tested by truth (a NULL pointer is false): much
    # cheaper than comparing with ffi.NULL on this slow-but-hot path.

    def push(self, s: Any) -> None:
        if s.list:
            raise HeapCorruption(f"LIST-1: span {int(s.id)} is already on list {int(s.list)}")
        first = self.first
        s.prev = _NULL
        s.next = first
        if first:
            first.prev = s
        self.first = s
        s.list = self.tag
        self.count += 1

    def remove(self, s: Any) -> None:
        if s.list != self.tag:
            raise HeapCorruption(f"LIST-1: span {int(s.id)} is not on list {self.tag}")
        prev, after = s.prev, s.next
        if prev:
            prev.next = after
        else:
            self.first = after
        if after:
            after.prev = prev
        s.next = s.prev = _NULL
        s.list = 0
        self.count -= 1

    def pop(self) -> Any:
        """Remove and return the first span, or NULL."""
        s = self.first
        if s:
            self.remove(s)
        return s

    def __iter__(self) -> Iterator[Any]:
        s = self.first
        while s:
            yield s
            s = s.next


def _bits(words: Any, nwords: int) -> int:
    return sum(int(words[w]) << (64 * w) for w in range(nwords))


def check_span(c: Any) -> None:
    """Verify SPAN-1..6 for an IN_USE small-object span; raise HeapCorruption."""
    sid = int(c.id)
    nelems, elemsize = int(c.nelems), int(c.elemsize)
    if int(c.base) % PAGE_SIZE or c.npages < 1 or c.state == SpanState.FREE:
        raise HeapCorruption(f"SPAN-1: span {sid}: base {int(c.base):#x}, state {int(c.state)}")
    if elemsize * nelems > int(c.npages) * PAGE_SIZE:
        raise HeapCorruption(f"SPAN-2: span {sid}: {nelems} x {elemsize} B overflow its pages")
    if c.state != SpanState.IN_USE or int(c.spanclass) < 2:
        return
    for i in (0, nelems - 1):
        if (i * elemsize * int(c.div_magic)) >> 32 != i:
            raise HeapCorruption(f"SPAN-2: span {sid}: div_magic is wrong for slot {i}")
    nwords = (nelems + 63) // 64
    alloc = _bits(c.alloc_bits, nwords)
    freed = _bits(c.free_bits, nwords)
    pad = ((1 << (nwords * 64)) - 1) ^ ((1 << nelems) - 1)
    fi = int(c.free_index)
    if fi > nelems or alloc & pad != pad:
        raise HeapCorruption(f"SPAN-3: span {sid}: free_index {fi}, padding bits unset")
    if fi < nelems:
        rest = 64 - fi % 64
        want = (~alloc >> fi) & ((1 << rest) - 1)
        if int(c.alloc_cache) != want:
            raise HeapCorruption(f"SPAN-3: span {sid}: alloc_cache disagrees with alloc_bits")
    allocated = alloc | ((1 << fi) - 1)
    if freed & ~allocated or int(c.nfreed) != freed.bit_count():
        raise HeapCorruption(f"SPAN-4: span {sid}: free_bits {freed:#x}, nfreed {int(c.nfreed)}")
    count = (allocated & ~pad).bit_count()
    if int(c.alloc_count) != count:
        raise HeapCorruption(f"SPAN-5: span {sid}: alloc_count {int(c.alloc_count)} != {count}")
    if c.tiny_state != ffi.NULL:
        for i in range(nelems):
            if c.tiny_state[i] and not allocated >> i & 1:
                raise HeapCorruption(f"SPAN-6: span {sid}: tiny state on free slot {i}")
    elif c.spanclass == lib.RA_TINY_SPAN_CLASS:
        raise HeapCorruption(f"SPAN-6: tiny-class span {sid} has no tiny state")
