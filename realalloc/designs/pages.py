"""The designs' one door to realalloc's page heap (Go: runtime/mheap.go, allocManual).

See realalloc/designs/__init__.py for an overview of the designs.

Every design gets its memory as runs of whole 8 KiB pages from a private
``realalloc.core.mheap.MHeap``, the same page heap under realalloc's Go
allocator, and touches nothing else of the core: ``alloc_manual``,
``free_manual``, ``check`` and ``close``.  A run handed out here is real,
writable memory; a design writes its own structures into it (the free-list
design's boundary tags) or cuts it into objects.

Pages a design gives back go to MHeap's free pages: they stay resident until
MHeap releases them, which nothing here asks for (the designs are given no
scavenge call), so a design's RSS after it frees everything is what it
once held.

Invariants:
  PAGES-1: held_bytes == sum of the bytes of the runs handed out and not
           given back; peak_held_bytes >= held_bytes.
  PAGES-2: every run is a live MANUAL span of MHeap (MHeap.check).

Locking: ``PageSource.lock`` guards the run table and the counters.  It is
taken inside any lock of a design and before ``MHeap.lock`` (which MHeap
takes itself), never the other way round.
"""

from __future__ import annotations

import threading
from typing import Final

from ..core.mheap import MHeap
from ..core.sizeclasses import PAGE_SIZE
from ..core.span import MSpan
from ..errors import HeapClosedError, HeapCorruption

__all__ = ["PAGE_SHIFT", "PAGE_SIZE", "PageSource", "page_of"]

PAGE_SHIFT: Final = PAGE_SIZE.bit_length() - 1
"""log2 of PAGE_SIZE: ``addr >> PAGE_SHIFT`` is the page number."""


class PageSource:
    """Runs of whole pages from a private MHeap, and what they add up to."""

    __slots__ = ("_runs", "closed", "held_bytes", "lock", "mheap", "peak_held_bytes")

    def __init__(self) -> None:
        self.mheap = MHeap()
        self.lock = threading.Lock()
        # base -> the MHeap span.  The span's fields are read once, at
        # allocation: only the handle is kept, to give it back.
        self._runs: dict[int, tuple[MSpan, int]] = {}
        self.held_bytes = 0
        self.peak_held_bytes = 0
        self.closed = False

    def alloc(self, npages: int) -> int:
        """A run of ``npages`` zeroed pages; returns its base address.

        OutOfMemoryError (from MHeap) when it cannot be had; nothing here
        changes before MHeap has said yes.
        """
        span = self.mheap.alloc_manual(npages)
        base, nbytes = span.base, span.nbytes
        with self.lock:
            self._runs[base] = (span, nbytes)
            self.held_bytes += nbytes
            self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)
        return base

    def free(self, base: int) -> None:
        """Give the run at ``base`` back to MHeap."""
        with self.lock:
            span, nbytes = self._runs.pop(base)
            self.held_bytes -= nbytes
        self.mheap.free_manual(span)

    def view(self, base: int) -> memoryview:
        """The bytes of the run at ``base``, writable (valid until it is freed)."""
        with self.lock:
            span, _ = self._runs[base]
        return span.view()

    def check(self) -> None:
        """PAGES-1 and PAGES-2 (MHeap's own invariants too); HeapCorruption."""
        if self.closed:
            raise HeapClosedError("the page source is closed")
        with self.lock:
            total = sum(nbytes for _, nbytes in self._runs.values())
            if total != self.held_bytes or self.peak_held_bytes < self.held_bytes:
                raise HeapCorruption(
                    f"PAGES-1: runs add up to {total} bytes, held_bytes says {self.held_bytes}"
                    f" (peak {self.peak_held_bytes})"
                )
            for base, (_, nbytes) in self._runs.items():
                if base % PAGE_SIZE or nbytes % PAGE_SIZE or nbytes <= 0:
                    raise HeapCorruption(f"PAGES-1: run {base:#x} of {nbytes} bytes is not pages")
        self.mheap.check()

    def close(self) -> None:
        """Give every run back, then close MHeap (its memory is unmapped).  Idempotent."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            runs = list(self._runs.values())
            self._runs.clear()
            self.held_bytes = 0
        for span, _ in runs:
            self.mheap.free_manual(span)
        self.mheap.close()


def page_of(addr: int) -> int:
    """The number of the 8 KiB page holding ``addr``."""
    return addr >> PAGE_SHIFT
