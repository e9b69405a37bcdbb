"""Span records in pools of fixed-size slots (Go: runtime/mfixalloc.go, mheap.spanalloc).

See realalloc/__init__.py for an overview of the allocator.

A span record (``ra_span``, csrc/shim.h) carries its bitmaps right after it,
so records of span classes with the same bitmap size share a *pool*: one per
record shape (bitmap words, tiny state words or not).  Each pool owns a
reserved region of the heap's metadata memory, cut into slabs of whole OS
pages; C takes records from the lowest slab with a free one and puts them
back (csrc/pages.h, under the page lock), so emptied slabs gather at the top
and can be given back to the OS.  Python decides when a pool gets another
slab (``reserve``) and when empty slabs are released (``trim``)::

    pool region:  | slab 0 | slab 1 | slab 2 | ... |  (mapped NORESERVE, 1 GiB at most)
    slab states:    ACTIVE   ACTIVE   RELEASED  UNUSED
                    records  records  zero pages, re-added first

Invariants (checked by ``check``):
  FIX-1: per pool, nfree == per_slab * #ACTIVE - sum(slab_live over ACTIVE)
  FIX-2: a record on a slab's free list has state FREE; records live ==
         the pool's live span records

Locking: the caller holds MHeap.lock; C takes the page lock inside each call.
A slab is dropped (taken off the free lists) and released in two steps; a
DROPPED slab left by an interruption is released by the next ``trim``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from ..errors import HeapCorruption, OutOfMemoryError
from .osmem import OS_PAGE_SIZE, OSMem, ffi, lib
from .sizeclasses import (
    CLASS_TO_NPAGES,
    CLASS_TO_SIZE,
    NUM_SPAN_CLASSES,
    PAGE_SIZE,
    TINY_SPAN_CLASS,
)

__all__ = ["PoolShape", "SpanPools"]

SLAB_BYTES: Final = 64 << 10
"""Target slab size: the unit in which record memory is given back to the OS."""
POOL_REGION: Final = 1 << 30
"""Address space reserved per pool (mapped lazily, NORESERVE)."""
_RECORD: Final[int] = ffi.sizeof("ra_span")
_ACTIVE: Final = lib.RA_SLAB_ACTIVE
_DROPPED: Final = lib.RA_SLAB_DROPPED
_RELEASED: Final = lib.RA_SLAB_RELEASED


@dataclass(frozen=True, slots=True)
class PoolShape:
    """The bitmap layout shared by a pool's records."""

    nwords: int
    """64-bit words per bitmap (alloc bits, free bits)."""
    tiny_slots: int
    """Tiny state words after the bitmaps (the tiny class only), else 0."""

    @property
    def stride(self) -> int:
        """Bytes per record, bitmaps included, 16-byte aligned."""
        return -(-(_RECORD + 16 * self.nwords + 4 * self.tiny_slots) // 16) * 16


def _shape(spc: int) -> PoolShape:
    sizeclass = spc >> 1
    nelems = CLASS_TO_NPAGES[sizeclass] * PAGE_SIZE // CLASS_TO_SIZE[sizeclass] if sizeclass else 1
    return PoolShape((nelems + 63) // 64, nelems if spc == TINY_SPAN_CLASS else 0)


class SpanPools:
    """The span record pools of one heap."""

    __slots__ = ("_arrays", "_h", "_next", "_os", "shapes")

    def __init__(self, h: Any, os: OSMem) -> None:
        """Configure ``h.pools`` and ``h.pool_of``; no memory is mapped yet."""
        self._h = h
        self._os = os
        self.shapes: list[PoolShape] = []
        for spc in range(NUM_SPAN_CLASSES):
            shape = _shape(spc)
            if shape not in self.shapes:
                self.shapes.append(shape)
            h.pool_of[spc] = self.shapes.index(shape)
        if len(self.shapes) > lib.RA_MAX_POOLS:
            raise HeapCorruption(f"FIX-0: {len(self.shapes)} record shapes, room for fewer")
        self._arrays: list[tuple[Any, Any, Any]] = []  # keep the C slab arrays alive
        self._next = [0] * len(self.shapes)  # per pool: slabs handed to C so far
        for index, shape in enumerate(self.shapes):
            p = h.pools[index]
            per_slab = max(1, SLAB_BYTES // shape.stride)
            slab_bytes = -(-per_slab * shape.stride // OS_PAGE_SIZE) * OS_PAGE_SIZE
            p.stride = shape.stride
            p.per_slab = per_slab
            p.slab_bytes = slab_bytes
            p.max_slabs = max(1, POOL_REGION // slab_bytes)
            p.nwords = shape.nwords
            p.tiny = int(shape.tiny_slots > 0)
            p.index = index
            arrays = (
                ffi.new("ra_span *[]", p.max_slabs),
                ffi.new("uint32_t[]", p.max_slabs),
                ffi.new("uint8_t[]", p.max_slabs),
            )
            p.slab_free, p.slab_live, p.slab_state = arrays
            self._arrays.append(arrays)
        h.npools = len(self.shapes)

    def pool_of(self, spc: int) -> int:
        return int(self._h.pool_of[spc])

    def reserve(self, index: int, n: int) -> None:
        """Make sure pool ``index`` has ``n`` free records: hand C more slabs,
        released ones first (they read as zero), then new ones."""
        p = self._h.pools + index
        while p.nfree < n:
            slab = next((s for s in range(self._next[index]) if p.slab_state[s] == _RELEASED), -1)
            if slab < 0:
                slab = self._next[index]
                if slab == p.max_slabs:
                    raise OutOfMemoryError(
                        f"span record pool {index} is full: {p.max_slabs * p.per_slab} records"
                    )
                if not p.base:
                    p.base = self._os.map(p.max_slabs * p.slab_bytes)
                self._next[index] = slab + 1
            lib.ra_pool_add_slab(self._h, p, slab)

    def trim(self) -> int:
        """Give every slab with no live record back to the OS; returns bytes."""
        released = 0
        for index in range(len(self.shapes)):
            p = self._h.pools + index
            for slab in range(self._next[index]):
                if p.slab_state[slab] == _ACTIVE:
                    lib.ra_pool_drop_slab(self._h, p, slab)  # only if it has no live record
                if p.slab_state[slab] == _DROPPED:
                    self._os.release(int(p.base) + slab * p.slab_bytes, p.slab_bytes)
                    p.slab_state[slab] = _RELEASED
                    released += p.slab_bytes
        return released

    def records(self) -> Iterator[Any]:
        """Every record of every ACTIVE slab (``ra_span *``), free ones included."""
        for index in range(len(self.shapes)):
            p = self._h.pools + index
            for slab in range(self._next[index]):
                if p.slab_state[slab] != _ACTIVE:
                    continue
                first = int(p.base) + slab * p.slab_bytes
                for i in range(p.per_slab):
                    yield ffi.cast("ra_span *", first + i * p.stride)

    def nbytes_of(self, index: int) -> int:
        """Bytes of pool ``index``'s slabs not given back to the OS."""
        p = self._h.pools + index
        held = sum(1 for s in range(self._next[index]) if p.slab_state[s] in (_ACTIVE, _DROPPED))
        return held * int(p.slab_bytes)

    @property
    def nbytes(self) -> int:
        """Bytes of slabs not given back to the OS (Go: MSpanSys + GCSys)."""
        return sum(self.nbytes_of(i) for i in range(len(self.shapes)))

    @property
    def live_bytes(self) -> int:
        """Bytes of records in use (Go: MSpanInuse)."""
        total = 0
        for index in range(len(self.shapes)):
            p = self._h.pools + index
            live = sum(int(p.slab_live[s]) for s in range(self._next[index]))
            total += live * int(p.stride)
        return total

    def check(self, live_records: int) -> None:
        """Verify FIX-1 and FIX-2 (``live_records``: live span records found)."""
        live = 0
        for index in range(len(self.shapes)):
            p = self._h.pools + index
            active = [s for s in range(self._next[index]) if p.slab_state[s] == _ACTIVE]
            in_use = sum(int(p.slab_live[s]) for s in active)
            live += in_use
            if int(p.nfree) != len(active) * int(p.per_slab) - in_use:
                raise HeapCorruption(
                    f"FIX-1: pool {index}: nfree {int(p.nfree)}, {len(active)} active slabs of "
                    f"{int(p.per_slab)} with {in_use} live"
                )
            for s in active:
                r = p.slab_free[s]
                while r:
                    if r.state != lib.RA_SPAN_FREE:
                        raise HeapCorruption(f"FIX-2: record {int(r.id)} is free-listed but live")
                    r = r.next
        if live != live_records:
            raise HeapCorruption(f"FIX-2: pools count {live} live records, spans {live_records}")
