"""Page allocator (Go: runtime/mpagealloc.go, type pageAlloc).

See realalloc/__init__.py for an overview of the allocator.

``PageAlloc`` knows which 8 KiB pages of the heap's address ranges are free,
which free pages were given back to the OS (scavenged), and finds runs of
free pages address-ordered first fit.  It owns, over the 48-bit address space:

* one ``PallocData`` per 4 MiB chunk added by ``grow`` (allocation bitmap and
  scavenged bitmap, 512 bits each);
* a radix tree of summaries (start, max, end: free pages at the start, the
  longest free run, free pages at the end) with Go's shape: 5 levels, the
  root has 2**14 entries of 16 GiB, every other level splits an entry in 8,
  the leaves are chunks.  Levels 1-4 are stored as blocks of 8 summaries in a
  dict keyed by the parent's index, the root as a dict plus its sorted keys,
  so only the part of the tree over the heap exists.  A search reads at most
  8 summaries per level (plus the root entries from the search address up),
  so its cost does not grow with the heap;
* ``search_addr``: every page below it is allocated, so searches start there;
* the in-use address ranges, the counters, and the scavenge index (the chunks
  that may hold free pages not yet scavenged).

It touches no memory: ``sys_unused(base, nbytes)``, if given, is called for
each range that ``scavenge`` releases.  Address 0 is never in the heap; it is
the failure value of ``alloc``.

Invariants (checked by ``check``; c ranges over chunks, i over tree indices):
  PAGE-1: leaf[c] == summarize(bits[c]); a leaf slot without a chunk == (0, 0, 0);
          sum[l][i] == merge(sum[l+1][8i .. 8i+7]) for l < 4;
          root keys == {c >> 12 : c a chunk}
  PAGE-2: scav[c] & bits[c] == 0   (scavenged pages are free; see pallocbits)
  PAGE-3: npages_total == 512 * #chunks == sum(limit - base for in_use) / PAGE_SIZE;
          npages_free == sum(popcount(~bits[c]));
          npages_scavenged == sum(popcount(scav[c]))
  PAGE-4: search_addr == MAX_SEARCH_ADDR or some in_use range holds search_addr;
          every heap page below search_addr is allocated
  PAGE-5: in_use is sorted, disjoint, never adjacent, chunk-aligned, and covers
          exactly the chunks; end == 1 + the highest chunk index (0 if none)
  PAGE-6: popcount(~(bits[c] | scav[c])) > 0  =>  c in scavenge index;
          scavenge order == sorted(scavenge index)

Caller must hold the heap lock; PageAlloc has no lock of its own.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import Final

from ..errors import HeapCorruption, InvalidArgumentError, require_int
from .pagecache import PAGE_CACHE_BYTES, PAGE_CACHE_MASK, PAGE_CACHE_PAGES, PageCache
from .pallocbits import (
    ADDR_LIMIT,
    ALLOCATED_SUM,
    CHUNK_BYTES,
    CHUNK_MASK,
    CHUNK_SHIFT,
    LOG_PAGES_PER_CHUNK,
    PAGE_SHIFT,
    PAGE_SIZE,
    PAGES_PER_CHUNK,
    PallocData,
    PallocSum,
    find,
    highest_run,
    range_mask,
    summarize,
    summarize_change,
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
MAX_PAGES: Final = ADDR_LIMIT >> PAGE_SHIFT
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
    """Free-page bitmaps and summaries of a heap (Go: pageAlloc)."""

    __slots__ = (
        "_blocks",
        "_chunks",
        "_end",
        "_in_use",
        "_npages_free",
        "_npages_scavenged",
        "_npages_total",
        "_root",
        "_root_keys",
        "_scav_marked",
        "_scav_order",
        "_search_addr",
        "_sys_unused",
    )

    def __init__(self, sys_unused: Callable[[int, int], None] | None = None) -> None:
        self._sys_unused = sys_unused
        self._chunks: dict[int, PallocData] = {}
        self._root: dict[int, PallocSum] = {}
        self._root_keys: list[int] = []
        # _blocks[l - 1][p] holds the 8 level-l summaries under level-(l-1) index p.
        self._blocks: tuple[dict[int, list[PallocSum]], ...] = tuple({} for _ in range(_LEAF))
        self._in_use: list[AddrRange] = []
        self._search_addr = MAX_SEARCH_ADDR
        self._end = 0
        self._scav_marked: set[int] = set()
        self._scav_order: list[int] = []
        self._npages_total = 0
        self._npages_free = 0
        self._npages_scavenged = 0

    @property
    def npages_total(self) -> int:
        """Pages in the heap (Go: heap in-use address space / pageSize)."""
        return self._npages_total

    @property
    def npages_free(self) -> int:
        """Free pages, scavenged or not.  Pages held by a PageCache are not free here."""
        return self._npages_free

    @property
    def npages_scavenged(self) -> int:
        """Free pages whose memory was released to the OS (Go: heap_released / pageSize)."""
        return self._npages_scavenged

    @property
    def in_use(self) -> tuple[AddrRange, ...]:
        """Address ranges added by grow, coalesced, in address order (Go: inUse)."""
        return tuple(self._in_use)

    @property
    def search_addr(self) -> int:
        """Every heap page below this address is allocated."""
        return self._search_addr

    # ---- growth -------------------------------------------------------------

    def grow(self, base: int, nbytes: int) -> None:
        """Add [base, base+nbytes), chunk-aligned and new, as free and scavenged pages."""
        b = require_int("base", base, CHUNK_BYTES, ADDR_LIMIT - CHUNK_BYTES)
        n = require_int("nbytes", nbytes, CHUNK_BYTES, ADDR_LIMIT - b)
        if b % CHUNK_BYTES or n % CHUNK_BYTES:
            raise InvalidArgumentError(
                f"grow range [{b:#x}, {b + n:#x}) is not aligned to {CHUNK_BYTES:#x}"
            )
        ranges = self._in_use
        i = bisect_right(ranges, b, key=_LIMIT)
        if i < len(ranges) and ranges[i].base < b + n:
            raise InvalidArgumentError(
                f"grow range [{b:#x}, {b + n:#x}) overlaps the heap range "
                f"[{ranges[i].base:#x}, {ranges[i].limit:#x})"
            )
        sc, ec = b >> CHUNK_SHIFT, ((b + n) >> CHUNK_SHIFT) - 1
        for c in range(sc, ec + 1):
            self._chunks[c] = PallocData(0, CHUNK_MASK)
        for level in range(1, SUMMARY_LEVELS):
            blocks = self._blocks[level - 1]
            drop = SUMMARY_LEVEL_BITS * (SUMMARY_LEVELS - level)
            for p in range(sc >> drop, (ec >> drop) + 1):
                if p not in blocks:
                    blocks[p] = [ALLOCATED_SUM] * _BLOCK
        for k in range(sc >> _ROOT_DROP, (ec >> _ROOT_DROP) + 1):
            if k not in self._root:
                self._root[k] = ALLOCATED_SUM
                insort(self._root_keys, k)
        self._add_in_use(i, b, b + n)
        self._end = max(self._end, ec + 1)
        pages = n >> PAGE_SHIFT
        self._npages_total += pages
        self._npages_free += pages
        self._npages_scavenged += pages
        # Like a free: new pages below search_addr move it down.
        self._search_addr = min(self._search_addr, b)
        self._resummarize(sc, ec)

    def _add_in_use(self, i: int, base: int, limit: int) -> None:
        """Insert [base, limit) at index i of in_use, merging with touching neighbours."""
        ranges = self._in_use
        if i > 0 and ranges[i - 1].limit == base:
            i -= 1
            base = ranges.pop(i).base
        if i < len(ranges) and ranges[i].base == limit:
            limit = ranges.pop(i).limit
        ranges.insert(i, AddrRange(base, limit))

    # ---- allocation ---------------------------------------------------------

    def alloc(self, npages: int) -> tuple[int, int]:
        """First fit of npages free pages: (base, bytes of them that were scavenged), or (0, 0)."""
        n = require_int("npages", npages, 1, MAX_PAGES)
        search = self._search_addr
        ci = search >> CHUNK_SHIFT
        if ci >= self._end:
            return 0, 0
        idx = (search >> PAGE_SHIFT) & _PAGE_IDX
        # Fast path: the chunk under search_addr has room (Go: alloc before find).
        if (
            n <= PAGES_PER_CHUNK - idx
            and self._blocks[-1][ci >> SUMMARY_LEVEL_BITS][ci & 7][1] >= n
        ):
            j, first = find(self._chunks[ci].bits, n, idx)
            if j < 0:
                raise HeapCorruption(
                    f"PAGE-1: leaf summary of chunk {ci:#x} promises {n} free pages above "
                    f"page {idx} but its bitmap has none"
                )
            base = ci << CHUNK_SHIFT
            addr, new_search = base + (j << PAGE_SHIFT), base + (first << PAGE_SHIFT)
        else:
            addr, new_search = self._find(n)
            if addr < 0:
                # No single page left means the heap is full; a larger request may just not fit.
                if n == 1:
                    self._search_addr = MAX_SEARCH_ADDR
                return 0, 0
        scav = self._alloc_pieces(self._pieces(addr, n), n)
        self._search_addr = max(self._search_addr, new_search)
        return addr, scav

    def _find(self, npages: int) -> tuple[int, int]:
        """Walk the radix tree for the first fit (Go: find).

        Returns (address or -1, candidate search_addr).  ``first`` narrows, level by
        level, the range that surely holds the first free page of the heap: the
        first entry with free pages found inside it becomes the new range.
        """
        search = self._search_addr
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
        j, first = find(self._chunks[idx].bits, npages, 0)
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
        return self._alloc_pieces(pieces, n)

    def _alloc_pieces(self, pieces: list[tuple[int, int, int]], npages: int) -> int:
        chunks = self._chunks
        scav = 0
        for ci, i, n in pieces:
            scav += chunks[ci].alloc_range(i, n)
        self._npages_free -= npages
        self._npages_scavenged -= scav
        self._update_pieces(pieces)
        return scav << PAGE_SHIFT

    def alloc_to_cache(self) -> PageCache:
        """Take every free page of the 64-page block holding the first free page (Go: allocToCache).

        Returns an empty PageCache when no page is free.
        """
        search = self._search_addr
        ci = search >> CHUNK_SHIFT
        if ci >= self._end:
            return PageCache()
        if self._blocks[-1][ci >> SUMMARY_LEVEL_BITS][ci & 7][1]:
            j, _ = find(self._chunks[ci].bits, 1, (search >> PAGE_SHIFT) & _PAGE_IDX)
            if j < 0:
                raise HeapCorruption(
                    f"PAGE-1: leaf summary of chunk {ci:#x} shows free pages above "
                    f"{search:#x} but its bitmap has none"
                )
            addr = (ci << CHUNK_SHIFT) + (j << PAGE_SHIFT)
        else:
            addr, _ = self._find(1)
            if addr < 0:
                self._search_addr = MAX_SEARCH_ADDR
                return PageCache()
            ci = addr >> CHUNK_SHIFT
        chunk = self._chunks[ci]
        base = addr & -PAGE_CACHE_BYTES
        shift = (base >> PAGE_SHIFT) & _PAGE_IDX
        cache = ~(chunk.bits >> shift) & PAGE_CACHE_MASK
        scav = (chunk.scav >> shift) & cache
        self._npages_scavenged -= chunk.alloc_bits(cache << shift)
        self._npages_free -= cache.bit_count()
        self._resummarize(ci, ci)
        # The whole block went to the cache; its last page is still a heap address.
        self._search_addr = base + ((PAGE_CACHE_PAGES - 1) << PAGE_SHIFT)
        return PageCache(base, cache, scav)

    # ---- freeing ------------------------------------------------------------

    def free(self, base: int, npages: int) -> None:
        """Free the allocated pages [base, base+npages*8K); they count as not scavenged."""
        b, n = self._check_pages(base, npages)
        pieces = self._pieces(b, n)
        if not self._all_pages(pieces, allocated=True):
            raise InvalidArgumentError(f"free: pages {self._fmt(b, n)} are not all allocated")
        chunks = self._chunks
        for ci, i, k in pieces:
            chunks[ci].free_range(i, k)
            self._mark_scavengable(ci)
        self._npages_free += n
        self._search_addr = min(self._search_addr, b)
        self._update_pieces(pieces)

    def free_pages64(self, base: int, free_bits: int, scav_bits: int) -> None:
        """Free page base+i*8K for each bit i of free_bits; mark those in scav_bits scavenged.

        base is 64-page aligned; this is how a PageCache gives its pages back
        (Go: pageCache.flush).
        """
        b = require_int("base", base, 0, ADDR_LIMIT - PAGE_CACHE_BYTES)
        f = require_int("free_bits", free_bits, 0, PAGE_CACHE_MASK)
        s = require_int("scav_bits", scav_bits, 0, PAGE_CACHE_MASK)
        if b % PAGE_CACHE_BYTES:
            raise InvalidArgumentError(f"base {b:#x} is not aligned to {PAGE_CACHE_BYTES:#x}")
        if s & ~f:
            raise InvalidArgumentError(f"scav_bits {s:#x} marks pages not in free_bits {f:#x}")
        if not f:
            return
        ci = b >> CHUNK_SHIFT
        chunk = self._chunks.get(ci)
        if chunk is None:
            raise InvalidArgumentError(f"base {b:#x} is not in the page heap")
        shift = (b >> PAGE_SHIFT) & _PAGE_IDX
        mask = f << shift
        if ~chunk.bits & mask:
            raise InvalidArgumentError(
                f"free_pages64: pages {f:#x} at {b:#x} are not all allocated"
            )
        chunk.free_bits(mask)
        chunk.scav |= s << shift
        if f & ~s:
            self._mark_scavengable(ci)
        self._npages_free += f.bit_count()
        self._npages_scavenged += s.bit_count()
        self._search_addr = min(self._search_addr, b)
        self._resummarize(ci, ci)

    # ---- scavenging ---------------------------------------------------------

    def scavenge(self, nbytes: int) -> int:
        """Release nbytes (rounded up to whole pages) of free, unscavenged pages, highest first.

        Calls sys_unused once per contiguous run; returns the bytes released,
        less than asked when there is not that much to release.
        """
        want = -(-require_int("nbytes", nbytes) // PAGE_SIZE)
        chunks = self._chunks
        order = self._scav_order
        released = self._release(
            ((ci, chunks[ci].unscavenged_free()) for ci in reversed(order)), want
        )
        # Scavenging drains chunks from the top, so the drained ones are a suffix.
        while order and not chunks[order[-1]].unscavenged_free():
            self._scav_marked.discard(order.pop())
        return released << PAGE_SHIFT

    def scavenge_range(self, base: int, npages: int) -> int:
        """Release the free pages [base, base+npages*8K) not yet scavenged; return the bytes."""
        b, n = self._check_pages(base, npages)
        pieces = self._pieces(b, n)
        if not self._all_pages(pieces, allocated=False):
            raise InvalidArgumentError(f"scavenge_range: pages {self._fmt(b, n)} are not all free")
        chunks = self._chunks
        candidates = (
            (ci, chunks[ci].unscavenged_free() & range_mask(i, k)) for ci, i, k in reversed(pieces)
        )
        return self._release(candidates, n) << PAGE_SHIFT

    def _release(self, candidates: Iterable[tuple[int, int]], want: int) -> int:
        """Release up to want pages from (chunk, bitmap of candidates), highest first.

        Runs that touch across a chunk boundary are released in one sys_unused
        call.  A run is marked scavenged only after its sys_unused returned, so
        an OS error leaves every bitmap true.  Returns the pages released.
        """
        released = 0
        run_lo = run_hi = 0
        pending: list[tuple[PallocData, int]] = []
        for ci, free in candidates:
            if released >= want:
                break
            chunk = self._chunks[ci]
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
                pending.append((chunk, range_mask(start, end - start)))
                released += end - start
        self._mark_released(run_lo, run_hi, pending)
        return released

    def _mark_released(self, lo: int, hi: int, pending: list[tuple[PallocData, int]]) -> None:
        if lo == hi:
            return
        if self._sys_unused is not None:
            self._sys_unused(lo, hi - lo)
        for chunk, mask in pending:
            chunk.scav |= mask
        self._npages_scavenged += (hi - lo) >> PAGE_SHIFT

    def _mark_scavengable(self, ci: int) -> None:
        if ci not in self._scav_marked:
            self._scav_marked.add(ci)
            insort(self._scav_order, ci)

    # ---- queries ------------------------------------------------------------

    def is_allocated(self, addr: int) -> bool:
        """Whether the page holding addr is allocated (pages held by a PageCache are)."""
        chunk, i = self._page(addr)
        return bool(chunk.bits >> i & 1)

    def is_scavenged(self, addr: int) -> bool:
        """Whether the page holding addr is free and released to the OS."""
        chunk, i = self._page(addr)
        return bool(chunk.scav >> i & 1)

    def _page(self, addr: int) -> tuple[PallocData, int]:
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
        chunks = self._chunks
        for ci, i, n in pieces:
            mask = range_mask(i, n)
            if chunks[ci].bits & mask != (mask if allocated else 0):
                return False
        return True

    def _update_pieces(self, pieces: list[tuple[int, int, int]]) -> None:
        """Refresh the summaries after each piece was wholly allocated or wholly freed."""
        chunks = self._chunks
        leaves = self._blocks[-1]
        changed = False
        for ci, i, n in pieces:
            block = leaves[ci >> SUMMARY_LEVEL_BITS]
            old = block[ci & 7]
            new = summarize_change(chunks[ci].bits, old, i, n)
            if new != old:
                block[ci & 7] = new
                changed = True
        if changed:
            self._propagate(pieces[0][0], pieces[-1][0])

    def _resummarize(self, sc: int, ec: int) -> None:
        """Recompute the summaries over chunks [sc, ec] from their bitmaps (Go: update)."""
        chunks = self._chunks
        leaves = self._blocks[-1]
        for c in range(sc, ec + 1):
            leaves[c >> SUMMARY_LEVEL_BITS][c & 7] = summarize(chunks[c].bits)
        self._propagate(sc, ec)

    def _propagate(self, sc: int, ec: int) -> None:
        """Merge changed leaf summaries over chunks [sc, ec] up to the root, while they change."""
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
            if not changed:
                return

    # ---- invariants ---------------------------------------------------------

    def check(self) -> None:
        """Verify PAGE-1 ... PAGE-6; raise HeapCorruption naming the first that fails."""
        self._check_ranges()
        self._check_bitmaps()
        self._check_summaries()
        self._check_search_addr()

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

    def _check_bitmaps(self) -> None:
        free = scav = 0
        for ci, chunk in self._chunks.items():
            if not (0 <= chunk.bits <= CHUNK_MASK and 0 <= chunk.scav <= CHUNK_MASK):
                raise HeapCorruption(f"PAGE-2: chunk {ci:#x} has a bitmap wider than 512 bits")
            if chunk.scav & chunk.bits:
                raise HeapCorruption(
                    f"PAGE-2: chunk {ci:#x} has allocated pages marked scavenged: "
                    f"{chunk.scav & chunk.bits:#x}"
                )
            if chunk.unscavenged_free() and ci not in self._scav_marked:
                raise HeapCorruption(
                    f"PAGE-6: chunk {ci:#x} has free unscavenged pages but is not indexed"
                )
            free += PAGES_PER_CHUNK - chunk.bits.bit_count()
            scav += chunk.scav.bit_count()
        if self._scav_order != sorted(self._scav_marked):
            raise HeapCorruption("PAGE-6: scavenge order disagrees with the scavenge index")
        total = len(self._chunks) * PAGES_PER_CHUNK
        counters = (self._npages_total, self._npages_free, self._npages_scavenged)
        if counters != (total, free, scav):
            raise HeapCorruption(
                f"PAGE-3: counters (total, free, scavenged) = {counters}, "
                f"bitmaps say {(total, free, scav)}"
            )

    def _check_summaries(self) -> None:
        leaves = self._blocks[-1]
        if leaves.keys() != {c >> SUMMARY_LEVEL_BITS for c in self._chunks}:
            raise HeapCorruption("PAGE-1: leaf blocks do not match the chunks")
        for p, block in leaves.items():
            for j, got in enumerate(block):
                chunk = self._chunks.get((p << SUMMARY_LEVEL_BITS) + j)
                want = ALLOCATED_SUM if chunk is None else summarize(chunk.bits)
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

    def _check_search_addr(self) -> None:
        search = self._search_addr
        if search != MAX_SEARCH_ADDR and self._mapped_at_or_above(search) != search:
            raise HeapCorruption(f"PAGE-4: search_addr {search:#x} is not in the heap")
        for ci, chunk in self._chunks.items():
            below = (search >> PAGE_SHIFT) - (ci << LOG_PAGES_PER_CHUNK)
            if below <= 0:
                continue
            mask = CHUNK_MASK if below >= PAGES_PER_CHUNK else (1 << below) - 1
            if ~chunk.bits & mask:
                raise HeapCorruption(
                    f"PAGE-4: chunk {ci:#x} has free pages below search_addr {search:#x}"
                )
