"""Fixed-size records in C memory, allocated from slabs (Go: runtime/mfixalloc.go).

See realalloc/__init__.py for an overview of the allocator.

Span records and their bitmaps live in C memory so that C code can follow
pointers to them.  Allocating each with its own ``ffi.new`` would cost a
Python object per record; a ``FixAlloc`` instead carves records of one type
and length out of slabs and hands out small integer indices::

    slab 0: [rec 0][rec 1] ... [rec N-1]     slab 1: [rec N] ...
             ^ ptr(0)

Invariants:
  FIX-1: 0 <= index < capacity for every index handed out, and each index is
         either live or on the free list, never both.
  FIX-2: a record's memory never moves or is freed while the FixAlloc lives.

Locking: caller must hold the lock of the structure that owns the FixAlloc
(``MHeap.lock`` for spans and bitmaps); FixAlloc has no lock of its own.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from typing import Any

from .osmem import ffi

__all__ = ["FixAlloc"]


class FixAlloc:
    """Records of ``count`` C ``ctype`` elements each, ``per_slab`` to a slab."""

    __slots__ = ("_bases", "_free", "_slabs", "count", "ctype", "live", "per_slab", "record_bytes")

    def __init__(self, ctype: str, count: int = 1, per_slab: int = 128) -> None:
        self.ctype = ctype
        self.count = count
        self.per_slab = per_slab
        self.record_bytes: int = ffi.sizeof(ctype) * count
        self._slabs: list[Any] = []
        self._bases: list[tuple[int, int]] = []  # (slab address, slab number), sorted
        self._free: list[int] = []
        self.live = 0

    def alloc(self) -> int:
        """A record's index.  Its memory is zeroed when first handed out only:
        the caller initialises every field it uses."""
        if not self._free:
            slab = ffi.new(f"{self.ctype}[]", self.count * self.per_slab)
            start = len(self._slabs) * self.per_slab
            self._slabs.append(slab)
            insort(self._bases, (int(ffi.cast("uintptr_t", slab)), len(self._slabs) - 1))
            self._free.extend(range(start + self.per_slab - 1, start - 1, -1))
        self.live += 1
        return self._free.pop()

    def free(self, index: int) -> None:
        self.live -= 1
        self._free.append(index)

    def ptr(self, index: int) -> Any:
        """Pointer to record ``index`` (a ``ctype *``)."""
        slab, i = divmod(index, self.per_slab)
        return self._slabs[slab] + i * self.count

    def index_of(self, ptr: Any) -> int:
        """Inverse of ``ptr``."""
        addr = int(ffi.cast("uintptr_t", ptr))
        base, slab = self._bases[bisect_right(self._bases, (addr, len(self._slabs))) - 1]
        return slab * self.per_slab + (addr - base) // self.record_bytes

    @property
    def slab_bytes(self) -> int:
        return self.record_bytes * self.per_slab

    @property
    def capacity(self) -> int:
        return len(self._slabs) * self.per_slab

    @property
    def nbytes(self) -> int:
        """C memory held by the slabs."""
        return len(self._slabs) * self.slab_bytes
