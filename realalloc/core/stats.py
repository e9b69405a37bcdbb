"""Statistics: Go's runtime.MemStats for one heap, and the memory report (Go: runtime/mstats.go).

See realalloc/__init__.py for an overview of the allocator.

Counters live where they change, in C, so reading them is cheap and never
walks the heap (``collect``):

* per size class, objects allocated and freed: each thread's ``ra_mcache``
  (written by that thread's C fast path) and the heap's ``ra_counts``:
  frees by threads with no cache, and the totals of caches already released,
  folded in when a thread ends.  ``ra_counts_sum`` adds them up under the
  page lock, so a releasing cache is counted in one place, not two;
* large objects and pages of IN_USE and MANUAL spans: counted by the C call
  that installs or uninstalls the span;
* page states: the page allocator's C counters; mapped bytes: the shim's.

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

Locking: ``collect`` takes no Python lock; figures from threads that
allocate meanwhile may be a few operations old.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final

from ..errors import HeapCorruption
from .osmem import ffi, lib
from .sizeclasses import (
    CLASS_TO_SIZE,
    NUM_SIZE_CLASSES,
    NUM_SPAN_CLASSES,
    PAGE_SIZE,
)

if TYPE_CHECKING:
    from .mgc import Collector
    from .mheap import MHeap

__all__ = ["HEAP_BYTES", "MCACHE_BYTES", "MemStats", "MemoryReport", "SizeClassStats", "collect"]

MCACHE_BYTES: Final[int] = ffi.sizeof("ra_mcache")
HEAP_BYTES: Final[int] = ffi.sizeof("ra_heap")

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
    """Bytes of free pages, resident or released, and of empty spans kept for reuse."""
    heap_inuse: int
    """Bytes of pages of spans with objects or owned by a thread cache (Go:
    HeapInuse).  Empty spans that central lists keep for reuse are idle."""
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
    """Bytes of span bitmaps: alloc bits, free bits, tiny state words (Go: GCSys);
    they sit inside span records, so this is their share of the record slabs."""
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
    num_gc: int
    """Completed garbage collections (Go: NumGC); 0 in a heap without a collector."""
    num_forced_gc: int
    """Collections started by ``collect()`` (Go: NumForcedGC)."""
    next_gc: int
    """The goal: the next automatic cycle starts when heap_alloc reaches it (Go:
    NextGC); 2**64 - 1 with automatic cycles off, 0 without a collector."""
    last_gc: int
    """When the last collection ended, in nanoseconds since the epoch (Go: LastGC)."""
    pause_total_ns: int
    """Nanoseconds of every collection's stop-the-world pause (Go: PauseTotalNs)."""
    pause_ns: tuple[int, ...]
    """The last 256 pauses, circular: the latest at [(num_gc + 255) % 256] (Go: PauseNs)."""
    gc_cpu_fraction: float
    """Pause time over wall time since the heap was made (Go: GCCPUFraction, over
    GOMAXPROCS x time; here the collector runs on one thread, the world stopped)."""
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


_NO_GC: Final[dict[str, Any]] = {
    "num_gc": 0,
    "num_forced_gc": 0,
    "next_gc": 0,
    "last_gc": 0,
    "pause_total_ns": 0,
    "pause_ns": (0,) * 256,
    "gc_cpu_fraction": 0.0,
}


def collect(mheap: MHeap, gc: Collector | None = None) -> MemStats:
    """MemStats of a heap, from its C counters (and its collector's, if any)."""
    counts = ffi.new("ra_counts *")
    ncaches = ffi.new("uint32_t *")
    lib.ra_counts_sum(mheap.h, counts, ncaches)
    n = NUM_SIZE_CLASSES
    nmalloc = [int(x) for x in ffi.unpack(counts.nmalloc, n)]
    nfree = [int(x) for x in ffi.unpack(counts.nfree, n)]
    tiny_allocs = int(counts.tiny_allocs)
    large_allocs, large_frees = int(counts.large_allocs), int(counts.large_frees)
    large_bytes, large_freed = int(counts.large_bytes), int(counts.large_freed_bytes)
    # Empty spans kept on central lists for reuse hold no object: Go frees
    # such a span to the page heap at once, so they count as idle, not in use.
    central = mheap.h.central
    # So do freed large objects' spans kept for reuse (classes 0 and 1).
    empty = sum(int(central[spc].empty_pages) for spc in range(NUM_SPAN_CLASSES))
    inuse = (int(counts.inuse_pages) - empty) * PAGE_SIZE
    manual = int(counts.manual_pages) * PAGE_SIZE
    os_stats = mheap.os.stats()
    meta = mheap.metadata()
    cache_bytes = int(ncaches[0]) * MCACHE_BYTES
    live_small = sum(
        (a - f) * size for a, f, size in zip(nmalloc, nfree, CLASS_TO_SIZE, strict=True)
    )
    heap_sys = os_stats.ready - manual
    metadata = meta.total + cache_bytes + HEAP_BYTES
    return MemStats(
        heap_alloc=live_small + large_bytes - large_freed,
        total_alloc=sum(a * CLASS_TO_SIZE[i] for i, a in enumerate(nmalloc)) + large_bytes,
        heap_sys=heap_sys,
        heap_idle=heap_sys - inuse,
        heap_inuse=inuse,
        heap_released=mheap.pages.npages_scavenged * PAGE_SIZE,
        heap_objects=sum(nmalloc) - sum(nfree) + large_allocs - large_frees,
        released_total=os_stats.released_total,
        mallocs=sum(nmalloc) + large_allocs + tiny_allocs,
        frees=sum(nfree) + large_frees + tiny_allocs,
        tiny_allocs=tiny_allocs,
        tiny_pieces=int(counts.tiny_pieces),
        tiny_frees=int(counts.tiny_frees),
        large_allocs=large_allocs,
        large_frees=large_frees,
        manual_inuse=manual,
        mspan_inuse=meta.mspan_inuse,
        mspan_sys=meta.mspan_sys,
        mcache_inuse=cache_bytes,
        gc_sys=meta.bitmaps,
        other_sys=meta.arenas + HEAP_BYTES,
        metadata=metadata,
        mapped=os_stats.ready,
        reserved=os_stats.reserved,
        sys=os_stats.ready + metadata,
        by_size=tuple(SizeClassStats(CLASS_TO_SIZE[i], nmalloc[i], nfree[i]) for i in range(n)),
        **(_NO_GC if gc is None else gc.memstats()),
    )


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
