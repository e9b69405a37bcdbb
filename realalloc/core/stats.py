"""Statistics: Go's runtime.MemStats for one heap, and the memory report (Go: runtime/mstats.go).

See realalloc/__init__.py for an overview of the allocator.

Counters live where they change, so reading them is cheap and never walks
the heap:

* per size class, objects allocated and freed: each thread's ``ra_mcache``
  (written by that thread's C fast path), the heap's atomic ``orphan_*``
  counters (frees by threads that never allocated here), and the totals of
  caches already flushed (``Heap._retired``), merged when a cache flushes;
* large objects: counted by the slow path under ``Heap.stats_lock``;
* pages: ``MHeap`` counts pages of IN_USE and MANUAL spans; ``OSMem`` counts
  mapped and released bytes.

``MemStats`` keeps Go's field meanings, in snake_case.  The 16-byte blocks
that hold tiny pieces are the heap objects (class 2).  As in Go, a piece put
into an existing block counts in ``tiny_allocs`` and in both ``mallocs`` and
``frees``; a piece that starts a block counts as that block's malloc.
``tiny_pieces``/``tiny_frees`` (no Go counterpart) count every piece handed
out and freed, so ``tiny_pieces - tiny_frees`` pieces are live.

Invariants (checked by ``MemStats.check`` and ``Heap.check``):
  STATS-1: heap_idle == heap_sys - heap_inuse; heap_released <= heap_idle
  STATS-2: heap_objects == mallocs - frees; heap_alloc <= heap_inuse
  STATS-3: sum(by_size[i].mallocs - by_size[i].frees) == live small objects
  STATS-4: total_alloc >= heap_alloc

Locking: readers take no lock; figures from threads that allocate meanwhile
may be a few operations old.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import HeapCorruption

__all__ = ["MemStats", "MemoryReport", "SizeClassStats"]

_MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class SizeClassStats:
    """Objects of one size class (Go: MemStats.BySize[i])."""

    size: int
    """Bytes per object of the class."""
    mallocs: int
    """Objects of the class allocated, cumulative."""
    frees: int
    """Objects of the class freed, cumulative."""


@dataclass(frozen=True, slots=True)
class MemStats:
    """One heap's statistics (Go: runtime.MemStats).  All sizes in bytes."""

    heap_alloc: int
    """Bytes of live objects (small objects at their class size, large at their pages)."""
    total_alloc: int
    """Bytes allocated, cumulative."""
    heap_sys: int
    """Bytes of arena memory for objects: heap_inuse + heap_idle."""
    heap_idle: int
    """Bytes of free pages, resident or released."""
    heap_inuse: int
    """Bytes of pages of in-use (object) spans."""
    heap_released: int
    """Bytes of free pages given back to the OS (never touched, or scavenged)."""
    heap_objects: int
    """Live objects: mallocs - frees."""
    released_total: int
    """Bytes given back to the OS with MADV_DONTNEED, cumulative (scavenge, the
    background scavenger, the memory limit)."""
    mallocs: int
    """Objects allocated, cumulative (tiny pieces included, as in Go)."""
    frees: int
    """Objects freed, cumulative (tiny pieces included, as in Go)."""
    tiny_allocs: int
    """Tiny pieces put into an existing tiny block, cumulative (Go: TinyAllocs)."""
    tiny_pieces: int
    """Tiny pieces (noscan, < 16 B) handed out, cumulative."""
    tiny_frees: int
    """Tiny pieces freed, cumulative."""
    large_allocs: int
    """Large objects (> 32 KiB) allocated, cumulative."""
    large_frees: int
    """Large objects freed, cumulative."""
    manual_inuse: int
    """Bytes of whole-page spans handed out by MHeap.alloc_manual (Go: StackInuse)."""
    mspan_inuse: int
    """Bytes of span records in use (Go: MSpanInuse)."""
    mspan_sys: int
    """Bytes of span record slabs (Go: MSpanSys)."""
    mcache_inuse: int
    """Bytes of thread caches (Go: MCacheInuse)."""
    gc_sys: int
    """Bytes of span bitmaps: alloc bits, free bits, tiny state words (Go: GCSys)."""
    other_sys: int
    """Bytes of arena metadata (page -> span maps) and the heap record (Go: OtherSys)."""
    metadata: int
    """All allocator metadata: mspan_sys + mcache_inuse + gc_sys + other_sys."""
    mapped: int
    """Bytes mapped readable and writable from the OS (all arenas)."""
    reserved: int
    """Bytes of address space reserved from the OS."""
    sys: int
    """Bytes obtained from the OS: mapped + metadata (Go: Sys)."""
    by_size: tuple[SizeClassStats, ...]
    """Per size class, index = class (0 is unused, as Go's BySize[0])."""

    def check(self) -> None:
        """Verify STATS-1, 2 and 4; raise HeapCorruption naming the broken one."""
        if self.heap_idle != self.heap_sys - self.heap_inuse or not (
            0 <= self.heap_released <= self.heap_idle
        ):
            raise HeapCorruption(
                f"STATS-1: heap_sys {self.heap_sys}, heap_inuse {self.heap_inuse}, "
                f"heap_idle {self.heap_idle}, heap_released {self.heap_released}"
            )
        if self.heap_objects != self.mallocs - self.frees or self.heap_alloc > self.heap_inuse:
            raise HeapCorruption(
                f"STATS-2: heap_objects {self.heap_objects}, mallocs {self.mallocs}, "
                f"frees {self.frees}, heap_alloc {self.heap_alloc}, heap_inuse {self.heap_inuse}"
            )
        if self.total_alloc < self.heap_alloc:
            raise HeapCorruption(f"STATS-4: total_alloc {self.total_alloc} < {self.heap_alloc}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class MemoryReport:
    """Where the memory is: the allocator's view beside the OS's."""

    in_use: int
    """Bytes of live objects and manual spans."""
    free_in_spans: int
    """Bytes of in-use spans not taken by live objects (free slots, tail waste)."""
    free_resident: int
    """Bytes of free pages still resident (candidates for the scavenger)."""
    released: int
    """Bytes of free pages given back to the OS."""
    metadata: int
    """Bytes of allocator metadata."""
    mapped: int
    """Bytes mapped from the OS for arenas."""
    rss: int
    """Resident set size of the whole process now."""
    uss: int | None
    """Unique set size of the process (None where psutil cannot tell)."""
    baseline_rss: int
    """Process RSS when the heap was created."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        rows = [
            ("allocator", "in use (objects, manual spans)", self.in_use),
            ("", "free slots in in-use spans", self.free_in_spans),
            ("", "free pages, resident", self.free_resident),
            ("", "free pages, released to the OS", self.released),
            ("", "metadata", self.metadata),
            ("", "mapped for arenas", self.mapped),
            ("OS", "process RSS", self.rss),
            ("", "process USS", self.uss),
            ("", "process RSS at heap creation", self.baseline_rss),
            ("", "RSS growth since then", self.rss - self.baseline_rss),
        ]
        lines = [f"{'view':<10} {'what':<34} {'MiB':>10} {'bytes':>14}"]
        for view, what, value in rows:
            if value is None:
                lines.append(f"{view:<10} {what:<34} {'n/a':>10} {'n/a':>14}")
            else:
                lines.append(f"{view:<10} {what:<34} {value / _MIB:>10.1f} {value:>14}")
        return "\n".join(lines)
