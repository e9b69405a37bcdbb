"""Page allocator (Go: runtime/mpagealloc.go, type pageAlloc).

See realalloc/__init__.py for an overview of the allocator.

``PageAlloc`` knows which 8 KiB pages of the heap's address ranges are free,
which free pages were given back to the OS (scavenged), and finds runs of
free pages address-ordered first fit.  Over the 48-bit address space it has:

* per 4 MiB chunk, the allocation and scavenged bitmaps (512 bits each) in C
  memory (``ra_chunk``, csrc/pages.h).  C changes them, atomically under the
  heap's page lock, whenever a span appears or disappears: C frees large
  objects and empty spans on its own, with no Python running.  Each change
  pushes the chunk on the C dirty stack;
* a radix tree of summaries (start, max, end: free pages at the start, the
  longest free run, free pages at the end) with Go's shape: 5 levels, the
  root has 2**14 entries of 16 GiB, every other level splits an entry in 8,
  the leaves are chunks.  Levels 1-4 are blocks of 8 summaries in dicts
  keyed by the parent's index, the root a dict plus its sorted keys, so only
  the part of the tree over the heap exists.  A search reads at most 8
  summaries per level (plus the root entries from the search address up), so
  its cost does not grow with the heap.  The tree is *derived* from the
  bitmaps: ``sync`` recomputes the summaries of every chunk on the dirty
  stack before each search;
* ``search_addr`` (in C, so that C frees can lower it): every page below it
  is allocated, so searches start there;
* the in-use address ranges and the scavenge index (the chunks that may hold
  free pages not yet scavenged).

Interruptions: every change to the bitmaps is one C call.  ``sync`` and
``grow`` are resumable: the chunk being summarized (``ra_pages.syncing``) and
the range being added (``_growing``) are recorded before the work starts, and
the next call finishes it, so an exception at any point leaves at worst a
stale summary that is refreshed before it is used.

It touches no memory: ``sys_unused(base, nbytes)``, if given, is called for
each run that ``scavenge`` releases.  Address 0 is never in the heap; it is
the failure value of ``alloc``.

Invariants (checked by ``check``; c ranges over chunks, i over tree indices):
  PAGE-1: leaf[c] == summarize(bits[c]); a leaf slot without a chunk == (0, 0, 0);
          sum[l][i] == merge(sum[l+1][8i .. 8i+7]) for l < 4;
          root keys == {c >> 12 : c a chunk}
  PAGE-2: scav[c] & bits[c] == 0   (scavenged pages are free)
  PAGE-3: total == 512 * #chunks == sum(limit - base for in_use) / PAGE_SIZE;
          free == sum(popcount(~bits[c])); scavenged == sum(popcount(scav[c]))
  PAGE-4: search_addr == MAX_SEARCH_ADDR or some in_use range holds search_addr;
          every heap page below search_addr is allocated
  PAGE-5: in_use is sorted, disjoint, never adjacent, chunk-aligned, and covers
          exactly the chunks; end == 1 + the highest chunk index (0 if none)
  PAGE-6: popcount(~(bits[c] | scav[c])) > 0  =>  c in the scavenge index,
          which is sorted and has no duplicates

Locking: the caller holds the heap lock (MHeap.lock) for every method;
C changes bits under its own page lock at any time.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Final

from ..errors import HeapCorruption, InvalidArgumentError, require_int
from .osmem import ffi, lib
from .pallocbits import (
    ADDR_LIMIT,
    ALLOCATED_SUM,
    CHUNK_MASK,
    PallocSum,
    find,
    highest_run,
    range_mask,
    read_chunk,
    summarize,
)
from .sizeclasses import (
    CHUNK_BYTES,
    CHUNK_SHIFT,
    LOG_PAGES_PER_CHUNK,
    PAGE_SHIFT,
    PAGE_SIZE,
    PAGES_PER_CHUNK,
)

__all__ = [
    "MAX_PAGES",
    "MAX_SEARCH_ADDR",
    "AddrRange",
    "PageAlloc",
    "merge_summaries",
]

MAX_SEARCH_ADDR: Final = ADDR_LIMIT
"""search_addr when no page is free."""
MAX_PAGES: Final = (1 << 46) >> PAGE_SHIFT
"""Largest request: half of the 47-bit user address space."""
SUMMARY_LEVELS: Final = 5
SUMMARY_LEVEL_BITS: Final = 3
_LEAF: Final = SUMMARY_LEVELS - 1
_BLOCK: Final = 1 << SUMMARY_LEVEL_BITS
LEVEL_SHIFT: Final = tuple(
    CHUNK_SHIFT + SUMMARY_LEVEL_BITS * (_LEAF - level) for level in range(SUMMARY_LEVELS)
)
"""addr >> LEVEL_SHIFT[l] is the index of the level-l summary covering addr (34 ... 22)."""
_PAGE_IDX: Final = PAGES_PER_CHUNK - 1
_ROOT_DROP: Final = SUMMARY_LEVEL_BITS * _LEAF
"""chunk index >> _ROOT_DROP is the root index."""
_LIMIT: Final = attrgetter("limit")
_OK: Final = lib.RA_OK


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """One consistent copy of the C side, for ``check``."""

    chunks: dict[int, tuple[int, int, bool]]
    """chunk index -> (allocated bits, scavenged bits, waits on the dirty stack)."""
    counters: tuple[int, int, int]
    """(total, free, scavenged) pages."""
    search_addr: int


@dataclass(frozen=True, slots=True)
class AddrRange:
    """Addresses [base, limit) (Go: addrRange)."""

    base: int
    limit: int


def merge_summaries(sums: list[PallocSum], log_pages: int) -> PallocSum:
    """Summary of consecutive regions of 2**log_pages pages each (Go: mergeSummaries)."""
    full = 1 << log_pages
    start, most, end = sums[0]
    covered = full
    for s, m, e in sums[1:]:
        if start == covered:
            start += s
        if end + s > most:
            most = end + s
        if m > most:
            most = m
        end = end + full if e == full else e
        covered += full
    return start, most, end


class PageAlloc:
    """Free-page bitmaps (C) and their summaries (Python) of a heap (Go: pageAlloc)."""

    __slots__ = (
        "_blocks",
        "_chunks",
        "_end",
        "_growing",
        "_in_use",
        "_memory",
        "_root",
        "_root_keys",
        "_scav_order",
        "_sys_unused",
        "c",
    )

    def __init__(self, sys_unused: Callable[[int, int], None] | None = None, c: Any = None) -> None:
        """``c``: the ``ra_pages *`` to use (a heap passes its own); None
        allocates one, for a page allocator that stands alone."""
        self._sys_unused = sys_unused
        self.c: Any = ffi.new("ra_pages *") if c is None else c
        self.c.search_addr = MAX_SEARCH_ADDR
        self._chunks: dict[int, Any] = {}  # chunk index -> ra_chunk *
        self._memory: list[Any] = []  # chunk bitmaps this allocator made itself
        self._root: dict[int, PallocSum] = {}
        self._root_keys: list[int] = []
        # _blocks[l - 1][p] holds the 8 level-l summaries under level-(l-1) index p.
        self._blocks: tuple[dict[int, list[PallocSum]], ...] = tuple({} for _ in range(_LEAF))
        self._in_use: list[AddrRange] = []
        self._end = 0
        self._scav_order: list[int] = []
        self._growing: tuple[int, int, tuple[Any, ...]] | None = None

    @property
    def npages_total(self) -> int:
        """Pages in the heap (Go: heap in-use address space / pageSize)."""
        return int(self.c.total)

    @property
    def npages_free(self) -> int:
        """Free pages, scavenged or not."""
        return int(self.c.free)

    @property
    def npages_scavenged(self) -> int:
        """Free pages whose memory was released to the OS (Go: heap_released / pageSize)."""
        return int(self.c.scavenged)

    @property
    def in_use(self) -> tuple[AddrRange, ...]:
        """Address ranges added by grow, coalesced, in address order (Go: inUse)."""
        return tuple(self._in_use)

    @property
    def search_addr(self) -> int:
        """Every heap page below this address is allocated."""
        return int(self.c.search_addr)

    # ---- growth -------------------------------------------------------------

    def grow(self, base: int, nbytes: int, chunks: Iterable[Any] | None = None) -> None:
        """Add [base, base+nbytes), chunk-aligned and new, as free and scavenged
        pages.  ``chunks``: zeroed ``ra_chunk *`` for its chunks, in order
        (a heap passes its arenas'); None allocates them."""
        b = require_int("base", base, CHUNK_BYTES, ADDR_LIMIT - CHUNK_BYTES)
        n = require_int("nbytes", nbytes, CHUNK_BYTES, ADDR_LIMIT - b)
        if b % CHUNK_BYTES or n % CHUNK_BYTES:
            raise InvalidArgumentError(
                f"grow range [{b:#x}, {b + n:#x}) is not aligned to {CHUNK_BYTES:#x}"
            )
        self.sync()
        ranges = self._in_use
        i = bisect_right(ranges, b, key=_LIMIT)
        if i < len(ranges) and ranges[i].base < b + n:
            raise InvalidArgumentError(
                f"grow range [{b:#x}, {b + n:#x}) overlaps the heap range "
                f"[{ranges[i].base:#x}, {ranges[i].limit:#x})"
            )
        count = n >> CHUNK_SHIFT
        if chunks is None:
            memory = ffi.new("ra_chunk[]", count)
            self._memory.append(memory)
            chunks = [memory + k for k in range(count)]
        given = tuple(chunks)
        if len(given) != count:
            raise InvalidArgumentError(f"grow needs {count} chunk bitmaps, got {len(given)}")
        self._growing = (b, n, given)  # from here on the next call finishes it
        self._finish_grow()

    def _finish_grow(self) -> None:
        """Do what is left of the growth recorded in ``_growing``; every step
        can be repeated, so an interrupted growth is finished by the next call."""
        assert self._growing is not None
        b, n, chunks = self._growing
        sc, ec = b >> CHUNK_SHIFT, ((b + n) >> CHUNK_SHIFT) - 1
        for level in range(1, SUMMARY_LEVELS):
            blocks = self._blocks[level - 1]
            drop = SUMMARY_LEVEL_BITS * (SUMMARY_LEVELS - level)
            for p in range(sc >> drop, (ec >> drop) + 1):
                blocks.setdefault(p, [ALLOCATED_SUM] * _BLOCK)
        keys = self._root_keys
        for k in range(sc >> _ROOT_DROP, (ec >> _ROOT_DROP) + 1):
            self._root.setdefault(k, ALLOCATED_SUM)
            at = bisect_left(keys, k)
            if at == len(keys) or keys[at] != k:
                keys.insert(at, k)
        ranges = self._in_use
        i = bisect_right(ranges, b, key=_LIMIT)
        if i == len(ranges) or ranges[i].base > b:  # not added yet
            self._add_in_use(i, b, b + n)
        self._end = max(self._end, ec + 1)
        for ci, chunk in zip(range(sc, ec + 1), chunks, strict=True):
            self._chunks[ci] = chunk
            if int(chunk.index) != ci:  # not yet handed to C (index 0 is never a chunk)
                lib.ra_pages_grow(self.c, chunk, ci)
        self._growing = None

    def _add_in_use(self, i: int, base: int, limit: int) -> None:
        """Insert [base, limit) at index i of in_use, merging with touching
        neighbours.  One assignment replaces the list: never half merged."""
        new = list(self._in_use)
        if i > 0 and new[i - 1].limit == base:
            i -= 1
            base = new.pop(i).base
        if i < len(new) and new[i].base == limit:
            limit = new.pop(i).limit
        new.insert(i, AddrRange(base, limit))
        self._in_use = new

    # ---- summaries ----------------------------------------------------------

    def sync(self) -> None:
        """Finish an interrupted growth, then refresh the summaries of every
        chunk whose bits C changed since (Go keeps them current under its
        heap lock; here C changes bits without Python, so Python catches up
        before it reads them)."""
        if self._growing is not None:
            self._finish_grow()
        c = self.c
        resumed = bool(c.syncing)  # a refresh was interrupted: redo it in full
        chunk = lib.ra_pages_sync_step(c, 0)
        while chunk:
            self._refresh(int(chunk.index), chunk, resumed)
            chunk = lib.ra_pages_sync_step(c, 1)
            resumed = False

    def _refresh(self, ci: int, chunk: Any, force: bool) -> None:
        bits, scav = read_chunk(chunk)
        block = self._blocks[-1][ci >> SUMMARY_LEVEL_BITS]
        new = summarize(bits)
        changed = block[ci & 7] != new
        block[ci & 7] = new
        if changed or force:
            self._propagate(ci, ci, force)
        if ~(bits | scav) & CHUNK_MASK:
            order = self._scav_order
            at = bisect_left(order, ci)
            if at == len(order) or order[at] != ci:
                order.insert(at, ci)

    def _propagate(self, sc: int, ec: int, force: bool = False) -> None:
        """Merge the leaf summaries over chunks [sc, ec] up to the root, while
        they change (all the way with ``force``)."""
        for level in range(_LEAF - 1, -1, -1):
            children = self._blocks[level]
            log_pages = LEVEL_SHIFT[level + 1] - PAGE_SHIFT
            drop = SUMMARY_LEVEL_BITS * (_LEAF - level)
            parents = self._blocks[level - 1] if level else None
            changed = False
            for i in range(sc >> drop, (ec >> drop) + 1):
                new = merge_summaries(children[i], log_pages)
                if parents is None:
                    old = self._root[i]
                    self._root[i] = new
                else:
                    block = parents[i >> SUMMARY_LEVEL_BITS]
                    old = block[i & 7]
                    block[i & 7] = new
                changed = changed or old != new
            if not changed and not force:
                return

    # ---- allocation ---------------------------------------------------------

    def find(self, npages: int) -> tuple[int, int, int]:
        """First fit of npages free pages, without taking them: (base,
        search_addr to set once they are taken, frees seen), or (0, 0, frees).

        The caller takes the pages with one C call (a heap: ra_span_install),
        then hands the other two numbers to ``raise_search``.
        """
        n = require_int("npages", npages, 1, MAX_PAGES)
        # Frees counted before the refresh: one that lands later (another
        # thread, in C) may be missing from the summaries read below, and then
        # must stop raise_search from moving search_addr past its pages.
        frees = int(self.c.frees)
        self.sync()
        search = self.search_addr
        ci = search >> CHUNK_SHIFT
        if ci >= self._end:
            return 0, 0, frees
        idx = (search >> PAGE_SHIFT) & _PAGE_IDX
        # Fast path: the chunk under search_addr has room (Go: alloc before find).
        if (
            n <= PAGES_PER_CHUNK - idx
            and self._blocks[-1][ci >> SUMMARY_LEVEL_BITS][ci & 7][1] >= n
        ):
            j, first = find(read_chunk(self._chunks[ci])[0], n, idx)
            if j < 0:
                raise HeapCorruption(
                    f"PAGE-1: leaf summary of chunk {ci:#x} promises {n} free pages above "
                    f"page {idx} but its bitmap has none"
                )
            base = ci << CHUNK_SHIFT
            return base + (j << PAGE_SHIFT), base + (first << PAGE_SHIFT), frees
        addr, new_search = self._find(n)
        if addr < 0:
            # No single page left means the heap is full; a larger request may just not fit.
            if n == 1:
                lib.ra_pages_raise_search(self.c, MAX_SEARCH_ADDR, frees)
            return 0, 0, frees
        return addr, new_search, frees

    def raise_search(self, addr: int, frees_seen: int) -> None:
        """Move search_addr up to ``addr`` after ``find``'s pages were taken,
        unless pages were freed since (C compares ``frees_seen``)."""
        lib.ra_pages_raise_search(self.c, addr, frees_seen)

    def alloc(self, npages: int) -> tuple[int, int]:
        """First fit of npages free pages, taken: (base, bytes of them that were
        scavenged), or (0, 0).  For a page allocator that stands alone; a heap
        takes pages together with their span (MHeap.alloc_span)."""
        addr, new_search, frees = self.find(npages)
        if not addr:
            return 0, 0
        scav = self._take(self._pieces(addr, npages))
        self.raise_search(new_search, frees)
        return addr, scav << PAGE_SHIFT

    def _find(self, npages: int) -> tuple[int, int]:
        """Walk the radix tree for the first fit (Go: find).

        Returns (address or -1, candidate search_addr).  ``first`` narrows, level by
        level, the range that surely holds the first free page of the heap: the
        first entry with free pages found inside it becomes the new range.
        """
        search = self.search_addr
        first_lo, first_hi = 0, ADDR_LIMIT - 1
        keys = self._root_keys
        root = self._root
        entries: Iterable[tuple[int, PallocSum]] = [
            (k, root[k]) for k in keys[bisect_left(keys, search >> LEVEL_SHIFT[0]) :]
        ]
        idx = -1
        for level in range(SUMMARY_LEVELS):
            shift = LEVEL_SHIFT[level]
            if level:
                lo = idx << SUMMARY_LEVEL_BITS
                j0 = (search >> shift) - lo
                if not 0 <= j0 < _BLOCK:
                    j0 = 0
                entries = zip(
                    range(lo + j0, lo + _BLOCK), self._blocks[level - 1][idx][j0:], strict=True
                )
            log_pages = shift - PAGE_SHIFT
            full = 1 << log_pages
            size = run = 0
            prev = -2
            for i, (s, m, e) in entries:
                if i != prev + 1 or not m:
                    size = 0  # a missing or full entry breaks the run
                prev = i
                if not m:
                    continue
                lo_addr = i << shift
                hi_addr = lo_addr + (1 << shift) - 1
                if first_lo <= lo_addr and hi_addr <= first_hi:
                    first_lo, first_hi = lo_addr, hi_addr
                if size + s >= npages:
                    if not size:
                        run = i << log_pages
                    return run << PAGE_SHIFT, self._mapped_at_or_above(first_lo)
                if m >= npages:
                    idx = i
                    break
                if size and s == full:
                    size += full
                else:
                    size, run = e, ((i + 1) << log_pages) - e
            else:
                if level:
                    raise HeapCorruption(
                        f"PAGE-1: level-{level - 1} summary {idx:#x} promises {npages} free "
                        f"pages but none of its level-{level} entries has them"
                    )
                return -1, MAX_SEARCH_ADDR
        j, first = find(read_chunk(self._chunks[idx])[0], npages, 0)
        if j < 0:
            raise HeapCorruption(
                f"PAGE-1: leaf summary of chunk {idx:#x} promises {npages} free pages "
                "but its bitmap has none"
            )
        base = idx << CHUNK_SHIFT
        if first_lo <= base and base + CHUNK_BYTES - 1 <= first_hi:
            first_lo = base + (first << PAGE_SHIFT)
        return base + (j << PAGE_SHIFT), self._mapped_at_or_above(first_lo)

    def _mapped_at_or_above(self, addr: int) -> int:
        """Lowest heap address >= addr, or MAX_SEARCH_ADDR (Go: findMappedAddr)."""
        ranges = self._in_use
        i = bisect_right(ranges, addr, key=_LIMIT)
        return max(addr, ranges[i].base) if i < len(ranges) else MAX_SEARCH_ADDR

    def alloc_range(self, base: int, npages: int) -> int:
        """Allocate the free pages [base, base+npages*8K); return how many bytes were scavenged."""
        b, n = self._check_pages(base, npages)
        pieces = self._pieces(b, n)
        if not self._all_pages(pieces, allocated=False):
            raise InvalidArgumentError(f"alloc_range: pages {self._fmt(b, n)} are not all free")
        return self._take(pieces) << PAGE_SHIFT

    def _change(self, ci: int, first: int, n: int, op: int, scav: Any = ffi.NULL) -> int:
        """One C call changing pages [first, first+n) of chunk ci (RA_PAGES_*)."""
        return int(lib.ra_pages_change(self.c, self._chunks[ci], first, n, op, scav))

    def _take(self, pieces: list[tuple[int, int, int]]) -> int:
        out = ffi.new("uint32_t *")
        scav = 0
        for ci, i, n in pieces:
            if self._change(ci, i, n, lib.RA_PAGES_TAKE, out) != _OK:
                raise HeapCorruption(f"PAGE-1: pages {i}+{n} of chunk {ci:#x} were not free")
            scav += out[0]
        self.sync()
        return scav

    # ---- freeing ------------------------------------------------------------

    def free(self, base: int, npages: int) -> None:
        """Free the allocated pages [base, base+npages*8K); they count as not scavenged."""
        b, n = self._check_pages(base, npages)
        pieces = self._pieces(b, n)
        if not self._all_pages(pieces, allocated=True):
            raise InvalidArgumentError(f"free: pages {self._fmt(b, n)} are not all allocated")
        for ci, i, k in pieces:
            if self._change(ci, i, k, lib.RA_PAGES_GIVE) != _OK:
                raise HeapCorruption(f"PAGE-1: pages {i}+{k} of chunk {ci:#x} were not allocated")
        self.sync()

    # ---- scavenging ---------------------------------------------------------

    def scavenge(self, nbytes: int) -> int:
        """Release nbytes (rounded up to whole pages) of free, unscavenged pages, highest first.

        Calls sys_unused once per run; returns the bytes released, less than
        asked when there is not that much to release.  A run is marked
        scavenged only after sys_unused returned, so an OS error (or an
        interruption) leaves every bitmap true: at worst memory already
        released still counts as resident.
        """
        want = -(-require_int("nbytes", nbytes) // PAGE_SIZE)
        self.sync()
        order = self._scav_order
        candidates = (
            (ci, ~(bits | scav) & CHUNK_MASK)
            for ci in reversed(order)
            for bits, scav in (read_chunk(self._chunks[ci]),)
        )
        released = self._release(candidates, want)
        # Scavenging drains chunks from the top, so the drained ones are a suffix.
        while order:
            bits, scav = read_chunk(self._chunks[order[-1]])
            if ~(bits | scav) & CHUNK_MASK:
                break
            order.pop()
        return released << PAGE_SHIFT

    def scavenge_range(self, base: int, npages: int) -> int:
        """Release the free pages [base, base+npages*8K) not yet scavenged; return the bytes."""
        b, n = self._check_pages(base, npages)
        pieces = self._pieces(b, n)
        if not self._all_pages(pieces, allocated=False):
            raise InvalidArgumentError(f"scavenge_range: pages {self._fmt(b, n)} are not all free")
        candidates = (
            (ci, ~(bits | scav) & range_mask(i, k))
            for ci, i, k in reversed(pieces)
            for bits, scav in (read_chunk(self._chunks[ci]),)
        )
        return self._release(candidates, n) << PAGE_SHIFT

    def _release(self, candidates: Iterable[tuple[int, int]], want: int) -> int:
        """Release up to want pages from (chunk, bitmap of candidates), highest
        first.  Runs that touch across a chunk boundary are released in one
        sys_unused call; each is marked scavenged (in C) only after that call
        returned.  Returns the pages released."""
        released = 0
        run_lo = run_hi = 0
        pending: list[tuple[int, int, int]] = []  # (chunk, first page, pages) of the run
        for ci, free in candidates:
            if released >= want:
                break
            base = ci << CHUNK_SHIFT
            while free and released < want:
                start, end = highest_run(free)
                start = max(start, end - (want - released))
                free &= (1 << start) - 1
                hi = base + (end << PAGE_SHIFT)
                if hi != run_lo:
                    self._mark_released(run_lo, run_hi, pending)
                    pending = []
                    run_hi = hi
                run_lo = base + (start << PAGE_SHIFT)
                pending.append((ci, start, end - start))
                released += end - start
        self._mark_released(run_lo, run_hi, pending)
        return released

    def _mark_released(self, lo: int, hi: int, pending: list[tuple[int, int, int]]) -> None:
        if lo == hi:
            return
        if self._sys_unused is not None:
            self._sys_unused(lo, hi - lo)
        for ci, first, n in pending:
            if self._change(ci, first, n, lib.RA_PAGES_SCAVENGED) != _OK:
                raise HeapCorruption(f"PAGE-2: released pages of chunk {ci:#x} are not free")

    # ---- queries ------------------------------------------------------------

    def is_allocated(self, addr: int) -> bool:
        """Whether the page holding addr is allocated."""
        chunk, i = self._page(addr)
        return bool(read_chunk(chunk)[0] >> i & 1)

    def is_scavenged(self, addr: int) -> bool:
        """Whether the page holding addr is free and released to the OS."""
        chunk, i = self._page(addr)
        return bool(read_chunk(chunk)[1] >> i & 1)

    def chunks(self) -> list[tuple[int, int, int]]:
        """(chunk base address, allocated bits, scavenged bits) of every chunk, in order."""
        return [(ci << CHUNK_SHIFT, *read_chunk(self._chunks[ci])) for ci in sorted(self._chunks)]

    def _page(self, addr: int) -> tuple[Any, int]:
        a = require_int("addr", addr, 0, ADDR_LIMIT - 1)
        chunk = self._chunks.get(a >> CHUNK_SHIFT)
        if chunk is None:
            raise InvalidArgumentError(f"addr {a:#x} is not in the page heap")
        return chunk, (a >> PAGE_SHIFT) & _PAGE_IDX

    # ---- helpers ------------------------------------------------------------

    def _check_pages(self, base: int, npages: int) -> tuple[int, int]:
        """Validate that [base, base+npages*8K) is page-aligned and inside the heap."""
        b = require_int("base", base, 0, ADDR_LIMIT - PAGE_SIZE)
        n = require_int("npages", npages, 1, (ADDR_LIMIT - b) >> PAGE_SHIFT)
        if b % PAGE_SIZE:
            raise InvalidArgumentError(f"base {b:#x} is not aligned to {PAGE_SIZE:#x}")
        self.sync()
        ranges = self._in_use
        i = bisect_right(ranges, b, key=_LIMIT)
        if i == len(ranges) or ranges[i].base > b or ranges[i].limit < b + (n << PAGE_SHIFT):
            raise InvalidArgumentError(f"pages {self._fmt(b, n)} are not all in the page heap")
        return b, n

    @staticmethod
    def _fmt(base: int, npages: int) -> str:
        return f"[{base:#x}, {base + (npages << PAGE_SHIFT):#x})"

    @staticmethod
    def _pieces(base: int, npages: int) -> list[tuple[int, int, int]]:
        """(chunk index, first page, page count) per chunk the range touches, in address order."""
        first = base >> PAGE_SHIFT
        i = first & _PAGE_IDX
        if i + npages <= PAGES_PER_CHUNK:
            return [(first >> LOG_PAGES_PER_CHUNK, i, npages)]
        sc = first >> LOG_PAGES_PER_CHUNK
        ec, ei = divmod(first + npages, PAGES_PER_CHUNK)
        pieces = [(sc, i, PAGES_PER_CHUNK - i)]
        pieces.extend((c, 0, PAGES_PER_CHUNK) for c in range(sc + 1, ec))
        if ei:
            pieces.append((ec, 0, ei))
        return pieces

    def _all_pages(self, pieces: list[tuple[int, int, int]], *, allocated: bool) -> bool:
        """Whether every page of the pieces is allocated (allocated=True), or every one is free."""
        for ci, i, n in pieces:
            mask = range_mask(i, n)
            if read_chunk(self._chunks[ci])[0] & mask != (mask if allocated else 0):
                return False
        return True

    # ---- invariants ---------------------------------------------------------

    def check(self) -> None:
        """Verify PAGE-1 ... PAGE-6; raise HeapCorruption naming the first that fails.

        Works on one consistent copy of the C bitmaps and counters.  Other
        threads may free pages meanwhile; chunks they changed wait on the
        dirty stack and are not compared with their (legitimately stale)
        summaries.  With the world stopped (Heap.check) nothing is left out.
        """
        self.sync()
        self._check_ranges()
        snap = self._snapshot()
        self._check_bitmaps(snap)
        self._check_summaries(snap)
        self._check_search_addr(snap)

    def _snapshot(self) -> _Snapshot:
        order = sorted(self._chunks)
        n = len(order)
        out = ffi.new("uint64_t[]", 17 * n + 4)
        lib.ra_pages_snapshot(self.c, [self._chunks[ci] for ci in order], n, out)
        words = ffi.unpack(out, 17 * n + 4)
        chunks = {}
        for k, ci in enumerate(order):
            w = words[17 * k : 17 * k + 17]
            bits = sum(x << (64 * i) for i, x in enumerate(w[:8]))
            scav = sum(x << (64 * i) for i, x in enumerate(w[8:16]))
            chunks[ci] = (bits, scav, bool(w[16]))
        total, free, scavenged, search = words[17 * n : 17 * n + 4]
        return _Snapshot(chunks, (total, free, scavenged), search)

    def _check_ranges(self) -> None:
        prev_limit = -1
        covered: set[int] = set()
        for r in self._in_use:
            if r.base % CHUNK_BYTES or r.limit % CHUNK_BYTES or r.base >= r.limit:
                raise HeapCorruption(f"PAGE-5: in_use range [{r.base:#x}, {r.limit:#x}) is bad")
            if r.base <= prev_limit:
                raise HeapCorruption(
                    f"PAGE-5: in_use range at {r.base:#x} overlaps, touches or precedes "
                    f"the range ending at {prev_limit:#x}"
                )
            prev_limit = r.limit
            covered.update(range(r.base >> CHUNK_SHIFT, r.limit >> CHUNK_SHIFT))
        if covered != self._chunks.keys():
            raise HeapCorruption(
                f"PAGE-5: in_use covers {len(covered)} chunks, the bitmaps have {len(self._chunks)}"
            )
        end = max(covered) + 1 if covered else 0
        if self._end != end:
            raise HeapCorruption(f"PAGE-5: end is {self._end:#x}, chunks say {end:#x}")

    def _check_bitmaps(self, snap: _Snapshot) -> None:
        free = scav_total = 0
        for ci, (bits, scav, dirty) in snap.chunks.items():
            if scav & bits:
                raise HeapCorruption(
                    f"PAGE-2: chunk {ci:#x} has allocated pages marked scavenged: {scav & bits:#x}"
                )
            if ~(bits | scav) & CHUNK_MASK and not dirty and ci not in self._scav_order:
                raise HeapCorruption(
                    f"PAGE-6: chunk {ci:#x} has free unscavenged pages but is not indexed"
                )
            free += PAGES_PER_CHUNK - bits.bit_count()
            scav_total += scav.bit_count()
        order = self._scav_order
        if order != sorted(set(order)):
            raise HeapCorruption("PAGE-6: the scavenge index is not sorted without duplicates")
        total = len(snap.chunks) * PAGES_PER_CHUNK
        if snap.counters != (total, free, scav_total):
            raise HeapCorruption(
                f"PAGE-3: counters (total, free, scavenged) = {snap.counters}, "
                f"bitmaps say {(total, free, scav_total)}"
            )

    def _check_summaries(self, snap: _Snapshot) -> None:
        leaves = self._blocks[-1]
        if leaves.keys() != {c >> SUMMARY_LEVEL_BITS for c in self._chunks}:
            raise HeapCorruption("PAGE-1: leaf blocks do not match the chunks")
        for p, block in leaves.items():
            for j, got in enumerate(block):
                chunk = snap.chunks.get((p << SUMMARY_LEVEL_BITS) + j)
                if chunk is not None and chunk[2]:
                    continue  # changed since the last refresh: the next sync fixes it
                want = ALLOCATED_SUM if chunk is None else summarize(chunk[0])
                if got != want:
                    raise HeapCorruption(
                        f"PAGE-1: leaf summary {(p << SUMMARY_LEVEL_BITS) + j:#x} is {got}, "
                        f"its bitmap says {want}"
                    )
        for level in range(_LEAF - 1, -1, -1):
            children = self._blocks[level]
            log_pages = LEVEL_SHIFT[level + 1] - PAGE_SHIFT
            parents = self._blocks[level - 1] if level else None
            if parents is None:
                good = self._root.keys() == children.keys() and self._root_keys == sorted(children)
            else:
                good = parents.keys() == {i >> SUMMARY_LEVEL_BITS for i in children}
            if not good:
                raise HeapCorruption(f"PAGE-1: level-{level} entries do not match their children")
            for i, block in children.items():
                want = merge_summaries(block, log_pages)
                got = self._root[i] if parents is None else parents[i >> SUMMARY_LEVEL_BITS][i & 7]
                if got != want:
                    raise HeapCorruption(
                        f"PAGE-1: level-{level} summary {i:#x} is {got}, its children say {want}"
                    )

    def _check_search_addr(self, snap: _Snapshot) -> None:
        search = snap.search_addr
        if search != MAX_SEARCH_ADDR and self._mapped_at_or_above(search) != search:
            raise HeapCorruption(f"PAGE-4: search_addr {search:#x} is not in the heap")
        for ci, (bits, _, _) in snap.chunks.items():
            below = (search >> PAGE_SHIFT) - (ci << LOG_PAGES_PER_CHUNK)
            if below <= 0:
                continue
            mask = CHUNK_MASK if below >= PAGES_PER_CHUNK else (1 << below) - 1
            if ~bits & mask:
                raise HeapCorruption(
                    f"PAGE-4: chunk {ci:#x} has free pages below search_addr {search:#x}"
                )
