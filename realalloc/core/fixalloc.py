"""Fixed-size records in C memory, allocated from slabs (Go: runtime/mfixalloc.go).

See realalloc/__init__.py for an overview of the allocator.

Span records and their bitmaps live in C memory so that C code can follow
pointers to them.  Allocating each with its own ``ffi.new`` would cost a
Python object per record; a ``FixAlloc`` instead carves records of one type
and length out of one reserved region and names them by index::

    region (mapped once, MAP_NORESERVE: a page costs memory when first touched)
    | slab 0: rec 0 .. rec n-1 | pad | slab 1: rec n .. | pad | slab 2 ... (untouched)
      ^ 64 KiB each, handed out in order

Records are handed out from the lowest slab that has a free one, so free
records gather in the high slabs; ``trim`` gives slabs with no live record
back to the OS (MADV_DONTNEED: they read as zero, i.e. as fresh records, when
reused).  Unlike Go's fixalloc, metadata memory thus shrinks with the heap.
Index <-> pointer is arithmetic on the region, so no table is kept per record.

Invariants:
  FIX-1: every index below capacity is live or on exactly one slab's free
         list; live == sum(live_in[slab]).
  FIX-2: a slab is released only while no record in it is live.

Locking: caller must hold the lock of the structure that owns the FixAlloc
(``MHeap.lock`` for spans and bitmaps); FixAlloc has no lock of its own.
"""

from __future__ import annotations

import heapq
from array import array
from typing import Any, Final

from ..errors import OutOfMemoryError
from .osmem import OS_PAGE_SIZE, OSMem, ffi

__all__ = ["SLAB_BYTES", "FixAlloc"]

SLAB_BYTES: Final = 64 << 10
"""Bytes per slab, the unit ``trim`` gives back (at least one record)."""


class FixAlloc:
    """Records of ``count`` C ``ctype`` elements each, at most ``max_records``."""

    __slots__ = (
        "_base",
        "_free",
        "_live_in",
        "_open",
        "_os",
        "_released",
        "_slab_ptrs",
        "count",
        "ctype",
        "live",
        "max_slabs",
        "per_slab",
        "record_bytes",
        "stride",
    )

    def __init__(self, os: OSMem, ctype: str, count: int = 1, max_records: int = 1 << 24) -> None:
        self._os = os
        self.ctype = ctype
        self.count = count
        self.record_bytes: int = ffi.sizeof(ctype) * count
        self.per_slab: int = max(1, SLAB_BYTES // self.record_bytes)
        self.stride: int = -(-self.per_slab * self.record_bytes // OS_PAGE_SIZE) * OS_PAGE_SIZE
        self.max_slabs: int = -(-max_records // self.per_slab)
        self._base = 0  # reserved on first use
        self._slab_ptrs: list[Any] = []  # ``ctype *`` to each committed slab
        self._free: list[array[int]] = []  # per slab: free record numbers in it
        self._live_in = array("I")  # per slab: live records
        self._released = bytearray()  # per slab: 1 while given back to the OS
        self._open: list[int] = []  # min-heap of slabs that may have free records
        self.live = 0

    def alloc(self) -> int:
        """A record's index.  Its memory is zero when fresh or after ``trim``,
        else holds the last user's data: the caller initialises every field."""
        open_ = self._open
        while open_ and not self._free[open_[0]]:
            heapq.heappop(open_)
        if not open_:
            self._grow()
        slab = open_[0]
        i = self._free[slab].pop()
        self._live_in[slab] += 1
        self._released[slab] = 0
        self.live += 1
        return slab * self.per_slab + i

    def free(self, index: int) -> None:
        slab, i = divmod(index, self.per_slab)
        free = self._free[slab]
        if not free:
            heapq.heappush(self._open, slab)
        free.append(i)
        self._live_in[slab] -= 1
        self.live -= 1

    def ptr(self, index: int) -> Any:
        """Pointer to record ``index`` (a ``ctype *``)."""
        slab, i = divmod(index, self.per_slab)
        return self._slab_ptrs[slab] + i * self.count

    def index_of(self, ptr: Any) -> int:
        """Inverse of ``ptr``."""
        slab, offset = divmod(int(ffi.cast("uintptr_t", ptr)) - self._base, self.stride)
        return slab * self.per_slab + offset // self.record_bytes

    def trim(self) -> int:
        """Give every slab with no live record back to the OS; returns bytes."""
        released = 0
        for slab, live in enumerate(self._live_in):
            if not live and not self._released[slab]:
                self._os.release(self._base + slab * self.stride, self.stride)
                self._released[slab] = 1
                released += self.stride
        return released

    def _grow(self) -> None:
        slab = len(self._slab_ptrs)
        if slab == self.max_slabs:
            raise OutOfMemoryError(
                f"more than {self.max_slabs * self.per_slab} {self.ctype} records"
            )
        if not self._base:
            self._base = self._os.map(self.max_slabs * self.stride)
        self._slab_ptrs.append(ffi.cast(f"{self.ctype} *", self._base + slab * self.stride))
        self._free.append(array("I", range(self.per_slab - 1, -1, -1)))
        self._live_in.append(0)
        self._released.append(0)
        heapq.heappush(self._open, slab)

    @property
    def capacity(self) -> int:
        """Records in committed slabs (live or free)."""
        return len(self._slab_ptrs) * self.per_slab

    @property
    def nbytes(self) -> int:
        """Bytes of committed slabs not given back to the OS."""
        return (len(self._slab_ptrs) - sum(self._released)) * self.stride
