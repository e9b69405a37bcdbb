"""Tests of realalloc.pagealloc; cases ported from Go's runtime/mpagealloc_test.go and
runtime/mgcscavenge_test.go (TestPageAllocScavenge), plus a model-based stateful test."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from realalloc.core.pagealloc import MAX_SEARCH_ADDR, AddrRange, PageAlloc
from realalloc.core.pallocbits import ADDR_LIMIT
from realalloc.core.sizeclasses import CHUNK_BYTES, PAGE_SHIFT, PAGE_SIZE, PAGES_PER_CHUNK
from realalloc.errors import ArgumentTypeError, HeapCorruption, InvalidArgumentError

P = PAGES_PER_CHUNK
B = 0xC000
"""Go's BaseChunkIdx on 64-bit; with no arenaBaseOffset its base is 0x30_0000_0000."""
BIG_JUMP = 0x100000
"""Go's chunkIdxBigJump: 4 TiB of address space."""
EVERYTHING = 1 << 64
"""A scavenge request larger than any heap (Go: ^uintptr(0))."""

Ranges = list[tuple[int, int]]
Desc = dict[int, Ranges]


def page_base(ci: int, i: int = 0) -> int:
    """Address of page i of chunk ci (Go: PageBase)."""
    return ci * CHUNK_BYTES + i * PAGE_SIZE


def make_page_alloc(
    alloc: Desc, scav: Desc | None = None, sys_unused: Callable[[int, int], None] | None = None
) -> PageAlloc:
    """A PageAlloc with one chunk per key of alloc (Go: NewPageAlloc).

    grow leaves pages scavenged, so each chunk is allocated and freed whole
    first; then the scav ranges are scavenged and the alloc ranges allocated,
    which clears the scavenged bits of allocated pages as in Go.
    """
    p = PageAlloc(sys_unused)
    for ci in sorted(alloc):
        p.grow(page_base(ci), CHUNK_BYTES)
        p.alloc_range(page_base(ci), P)
        p.free(page_base(ci), P)
        for i, n in (scav or {}).get(ci, []):
            if n:
                p.scavenge_range(page_base(ci, i), n)
        for i, n in alloc[ci]:
            if n:
                p.alloc_range(page_base(ci, i), n)
    p.check()
    return p


def bitmaps(p: PageAlloc, chunks: list[int]) -> dict[int, tuple[int, int]]:
    """(allocated, scavenged) bitmaps of each chunk, read back page by page."""
    out = {}
    for ci in chunks:
        a = s = 0
        for i in range(P):
            a |= p.is_allocated(page_base(ci, i)) << i
            s |= p.is_scavenged(page_base(ci, i)) << i
        out[ci] = (a, s)
    return out


def chunks_of(p: PageAlloc) -> list[int]:
    return [c for r in p.in_use for c in range(r.base // CHUNK_BYTES, r.limit // CHUNK_BYTES)]


def snapshot(p: PageAlloc) -> tuple[Any, ...]:
    counters = (p.npages_total, p.npages_free, p.npages_scavenged)
    return counters, p.in_use, p.search_addr, bitmaps(p, chunks_of(p))


def assert_same_pages(got: PageAlloc, want: PageAlloc) -> None:
    """Go: checkPageAlloc, plus the counters and every invariant."""
    got.check()
    assert got.in_use == want.in_use
    assert bitmaps(got, chunks_of(got)) == bitmaps(want, chunks_of(want))
    assert (got.npages_total, got.npages_free, got.npages_scavenged) == (
        want.npages_total,
        want.npages_free,
        want.npages_scavenged,
    )


# ---- grow ---------------------------------------------------------------------

GROW_CASES: dict[str, tuple[list[int], list[tuple[int, int]]]] = {
    "One": ([0], [(0, 1)]),
    "Contiguous2": ([0, 1], [(0, 2)]),
    "Contiguous5": ([0, 1, 2, 3, 4], [(0, 5)]),
    "Discontiguous": ([0, 2, 4], [(0, 1), (2, 3), (4, 5)]),
    "Mixed": ([0, 1, 2, 4], [(0, 3), (4, 5)]),
    "WildlyDiscontiguous": ([0, 1, 0x10, 0x21], [(0, 2), (0x10, 0x11), (0x21, 0x22)]),
    "ManyDiscontiguous": (list(range(0, 65, 2)), [(c, c + 1) for c in range(0, 65, 2)]),
    "ExtremelyDiscontiguous": ([0, BIG_JUMP], [(0, 1), (BIG_JUMP, BIG_JUMP + 1)]),
}


@pytest.mark.parametrize("name", GROW_CASES)
def test_grow(name: str) -> None:
    chunks, in_use = GROW_CASES[name]
    p = make_page_alloc({B + c: [] for c in chunks})
    assert p.in_use == tuple(AddrRange(page_base(B + lo), page_base(B + hi)) for lo, hi in in_use)
    assert p.npages_total == p.npages_free == len(chunks) * P


def test_grow_in_any_order_coalesces() -> None:
    p = PageAlloc()
    for c in (4, 0, 2, 1, 3):
        p.grow(page_base(B + c), CHUNK_BYTES)
        p.check()
    assert p.in_use == (AddrRange(page_base(B), page_base(B + 5)),)
    assert p.npages_scavenged == 5 * P
    assert p.search_addr == page_base(B)


def test_grow_below_search_addr_moves_it_down() -> None:
    p = make_page_alloc({B + 4: [(0, P)]})
    assert p.search_addr == page_base(B + 4)
    assert p.alloc(1) == (0, 0)
    assert p.search_addr == MAX_SEARCH_ADDR
    p.grow(page_base(B), CHUNK_BYTES)
    assert p.search_addr == page_base(B)
    assert p.alloc(1) == (page_base(B), PAGE_SIZE)
    p.check()


def test_grow_64_gib_in_one_call() -> None:
    p = PageAlloc()
    p.grow(0xC000000000, 64 << 30)
    p.check()
    assert p.npages_free == (64 << 30) // PAGE_SIZE
    assert p.alloc(8 * P + 1) == (0xC000000000, (8 * P + 1) * PAGE_SIZE)
    assert p.alloc((64 << 30) // PAGE_SIZE) == (0, 0)


# ---- alloc --------------------------------------------------------------------

Hit = tuple[int, int, int]  # npages, expected base (0 = failure), expected scavenged bytes
ALLOC_CASES: dict[str, tuple[Desc, Desc, list[Hit], Desc]] = {
    "AllFree1": (
        {B: []},
        {B: [(0, 1), (2, 2)]},
        [(1, page_base(B, 0), PAGE_SIZE), (1, page_base(B, 1), 0),
         (1, page_base(B, 2), PAGE_SIZE), (1, page_base(B, 3), PAGE_SIZE),
         (1, page_base(B, 4), 0)],
        {B: [(0, 5)]},
    ),
    "ManyArena1": (
        {B: [(0, P)], B + 1: [(0, P)], B + 2: [(0, P - 1)]},
        {B: [(0, P)], B + 1: [(0, P)], B + 2: [(0, P)]},
        [(1, page_base(B + 2, P - 1), PAGE_SIZE)],
        {B: [(0, P)], B + 1: [(0, P)], B + 2: [(0, P)]},
    ),
    "NotContiguous1": (
        {B: [(0, P)], B + 0xFF: [(0, 0)]},
        {B: [(0, P)], B + 0xFF: [(0, P)]},
        [(1, page_base(B + 0xFF, 0), PAGE_SIZE)],
        {B: [(0, P)], B + 0xFF: [(0, 1)]},
    ),
    "AllFree2": (
        {B: []},
        {B: [(0, 3), (7, 1)]},
        [(2, page_base(B, 0), 2 * PAGE_SIZE), (2, page_base(B, 2), PAGE_SIZE),
         (2, page_base(B, 4), 0), (2, page_base(B, 6), PAGE_SIZE), (2, page_base(B, 8), 0)],
        {B: [(0, 10)]},
    ),
    "Straddle2": (
        {B: [(0, P - 1)], B + 1: [(1, P - 1)]},
        {B: [(P - 1, 1)], B + 1: []},
        [(2, page_base(B, P - 1), PAGE_SIZE)],
        {B: [(0, P)], B + 1: [(0, P)]},
    ),
    "AllFree5": (
        {B: []},
        {B: [(0, 8), (9, 1), (17, 5)]},
        [(5, page_base(B, 0), 5 * PAGE_SIZE), (5, page_base(B, 5), 4 * PAGE_SIZE),
         (5, page_base(B, 10), 0), (5, page_base(B, 15), 3 * PAGE_SIZE),
         (5, page_base(B, 20), 2 * PAGE_SIZE)],
        {B: [(0, 25)]},
    ),
    "AllFree64": (
        {B: []},
        {B: [(21, 1), (63, 65)]},
        [(64, page_base(B, 0), 2 * PAGE_SIZE), (64, page_base(B, 64), 64 * PAGE_SIZE),
         (64, page_base(B, 128), 0)],
        {B: [(0, 192)]},
    ),
    "AllFree65": (
        {B: []},
        {B: [(129, 1)]},
        [(65, page_base(B, 0), 0), (65, page_base(B, 65), PAGE_SIZE),
         (65, page_base(B, 130), 0)],
        {B: [(0, 195)]},
    ),
    "ExhaustPallocChunkPages-3": (
        {B: []},
        {B: [(10, 1)]},
        [(P - 3, page_base(B, 0), PAGE_SIZE), (P - 3, 0, 0), (1, page_base(B, P - 3), 0),
         (2, page_base(B, P - 2), 0), (1, 0, 0), (P - 3, 0, 0)],
        {B: [(0, P)]},
    ),
    "AllFreePallocChunkPages": (
        {B: []},
        {B: [(0, 1), (P - 1, 1)]},
        [(P, page_base(B, 0), 2 * PAGE_SIZE), (P, 0, 0), (1, 0, 0)],
        {B: [(0, P)]},
    ),
    "StraddlePallocChunkPages": (
        {B: [(0, P // 2)], B + 1: [(P // 2, P // 2)]},
        {B: [], B + 1: [(3, 100)]},
        [(P, page_base(B, P // 2), 100 * PAGE_SIZE), (P, 0, 0), (1, 0, 0)],
        {B: [(0, P)], B + 1: [(0, P)]},
    ),
    "StraddlePallocChunkPages+1": (
        {B: [(0, P // 2)], B + 1: []},
        {B: [(0, P)], B + 1: [(0, P)]},
        [(P + 1, page_base(B, P // 2), (P + 1) * PAGE_SIZE), (P, 0, 0),
         (1, page_base(B + 1, P // 2 + 1), PAGE_SIZE)],
        {B: [(0, P)], B + 1: [(0, P // 2 + 2)]},
    ),
    "AllFreePallocChunkPages*2": (
        {B: [], B + 1: []},
        {B: [], B + 1: []},
        [(P * 2, page_base(B, 0), 0), (P * 2, 0, 0), (1, 0, 0)],
        {B: [(0, P)], B + 1: [(0, P)]},
    ),
    "NotContiguousPallocChunkPages*2": (
        {B: [], B + 0x40: [], B + 0x41: []},
        {B: [(0, P)], B + 0x40: [], B + 0x41: []},
        [(P * 2, page_base(B + 0x40, 0), 0), (21, page_base(B, 0), 21 * PAGE_SIZE),
         (1, page_base(B, 21), PAGE_SIZE)],
        {B: [(0, 22)], B + 0x40: [(0, P)], B + 0x41: [(0, P)]},
    ),
    "StraddlePallocChunkPages*2": (
        {B: [(0, P // 2)], B + 1: [], B + 2: [(P // 2, P // 2)]},
        {B: [(0, 7)], B + 1: [(3, 5), (121, 10)], B + 2: [(P // 2 + 12, 2)]},
        [(P * 2, page_base(B, P // 2), 15 * PAGE_SIZE), (P * 2, 0, 0), (1, 0, 0)],
        {B: [(0, P)], B + 1: [(0, P)], B + 2: [(0, P)]},
    ),
    "StraddlePallocChunkPages*5/4": (
        {B: [(0, P)], B + 1: [(0, P * 3 // 4)], B + 2: [(0, P * 3 // 4)], B + 3: [(0, 0)]},
        {B: [(0, P)], B + 1: [(P // 2, P // 4 + 1)], B + 2: [(P // 3, 1)],
         B + 3: [(P * 2 // 3, 1)]},
        [(P * 5 // 4, page_base(B + 2, P * 3 // 4), PAGE_SIZE), (P * 5 // 4, 0, 0),
         (1, page_base(B + 1, P * 3 // 4), PAGE_SIZE)],
        {B: [(0, P)], B + 1: [(0, P * 3 // 4 + 1)], B + 2: [(0, P)], B + 3: [(0, P)]},
    ),
    "AllFreePallocChunkPages*7+5": (
        {B + k: [] for k in range(8)},
        {B: [(50, 1)], B + 1: [(31, 1)], B + 2: [(7, 1)], B + 3: [(200, 1)],
         B + 4: [(3, 1)], B + 5: [(51, 1)], B + 6: [(20, 1)], B + 7: [(1, 1)]},
        [(P * 7 + 5, page_base(B, 0), 8 * PAGE_SIZE), (P * 7 + 5, 0, 0),
         (1, page_base(B + 7, 5), 0)],
        {**{B + k: [(0, P)] for k in range(7)}, B + 7: [(0, 6)]},
    ),
    # Go: a chunk whose summary ends a physical page of the summary array, then a far one.
    "DiscontiguousMappedSumBoundary": (
        {B + 511: [], B + BIG_JUMP: []},
        {B + 511: [], B + BIG_JUMP: []},
        [(P - 1, page_base(B + 511, 0), 0), (1, page_base(B + 511, P - 1), 0),
         (1, page_base(B + BIG_JUMP, 0), 0), (P - 1, page_base(B + BIG_JUMP, 1), 0),
         (1, 0, 0)],
        {B + 511: [(0, P)], B + BIG_JUMP: [(0, P)]},
    ),
    # Go issue 40191: the search address find estimates may not be in the heap.
    "DiscontiguousBadSearchAddr": (
        {B: [(0, P - 1)], B + BIG_JUMP + 0x503: [(0, P - 10), (P - 1, 1)],
         B + 2 * BIG_JUMP: []},
        {B: [], B + BIG_JUMP + 0x503: [], B + 2 * BIG_JUMP: []},
        [(1, page_base(B, P - 1), 0), (100, page_base(B + 2 * BIG_JUMP, 0), 0),
         (9, page_base(B + BIG_JUMP + 0x503, P - 10), 0)],
        {B: [(0, P)], B + BIG_JUMP + 0x503: [(0, P)], B + 2 * BIG_JUMP: [(0, 100)]},
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", ALLOC_CASES)
def test_alloc(name: str) -> None:
    before, scav, hits, after = ALLOC_CASES[name]
    p = make_page_alloc(before, scav)
    for npages, base, scav_bytes in hits:
        assert p.alloc(npages) == (base, scav_bytes), npages
        p.check()
    assert_same_pages(p, make_page_alloc(after, scav))


@pytest.mark.parametrize("npages", [1, 2, 3, 4, 5, 8, 16, 64, 1024, 1025, 2048, 2049])
def test_alloc_exhaust(npages: int) -> None:
    p = make_page_alloc({B + k: [] for k in range(4)})
    n_alloc = (P * 4) // npages
    for i in range(n_alloc):
        assert p.alloc(npages) == (page_base(B, i * npages), 0)
    assert p.alloc(npages) == (0, 0)
    left = n_alloc * npages
    want: Desc = {}
    for k in range(4):
        want[B + k] = [(0, min(left, P))] if left else []
        left -= min(left, P)
    assert_same_pages(p, make_page_alloc(want))


FREE_CASES: dict[str, tuple[int, Desc, list[int], Desc]] = {
    "Free1": (1, {B: [(0, P)]}, [page_base(B, i) for i in range(5)], {B: [(5, P - 5)]}),
    "ManyArena1": (
        1,
        {B: [(0, P)], B + 1: [(0, P)], B + 2: [(0, P)]},
        [page_base(B, P // 2), page_base(B + 1, 0), page_base(B + 2, P - 1)],
        {B: [(0, P // 2), (P // 2 + 1, P // 2 - 1)], B + 1: [(1, P - 1)], B + 2: [(0, P - 1)]},
    ),
    "Free2": (2, {B: [(0, P)]}, [page_base(B, i) for i in (0, 2, 4, 6, 8)], {B: [(10, P - 10)]}),
    "Straddle2": (2, {B: [(P - 1, 1)], B + 1: [(0, 1)]}, [page_base(B, P - 1)], {B: [], B + 1: []}),
    "Free5": (5, {B: [(0, P)]}, [page_base(B, i) for i in range(0, 25, 5)], {B: [(25, P - 25)]}),
    "Free64": (64, {B: [(0, P)]}, [page_base(B, i) for i in (0, 64, 128)], {B: [(192, P - 192)]}),
    "Free65": (65, {B: [(0, P)]}, [page_base(B, i) for i in (0, 65, 130)], {B: [(195, P - 195)]}),
    "FreePallocChunkPages": (P, {B: [(0, P)]}, [page_base(B, 0)], {B: []}),
    "StraddlePallocChunkPages": (
        P, {B: [(P // 2, P // 2)], B + 1: [(0, P // 2)]}, [page_base(B, P // 2)],
        {B: [], B + 1: []},
    ),
    "StraddlePallocChunkPages+1": (
        P + 1, {B: [(0, P)], B + 1: [(0, P)]}, [page_base(B, P // 2)],
        {B: [(0, P // 2)], B + 1: [(P // 2 + 1, P // 2 - 1)]},
    ),
    "FreePallocChunkPages*2": (
        P * 2, {B: [(0, P)], B + 1: [(0, P)]}, [page_base(B, 0)], {B: [], B + 1: []},
    ),
    "StraddlePallocChunkPages*2": (
        P * 2, {B: [(0, P)], B + 1: [(0, P)], B + 2: [(0, P)]}, [page_base(B, P // 2)],
        {B: [(0, P // 2)], B + 1: [], B + 2: [(P // 2, P // 2)]},
    ),
    "AllFreePallocChunkPages*7+5": (
        P * 7 + 5, {B + k: [(0, P)] for k in range(8)}, [page_base(B, 0)],
        {**{B + k: [] for k in range(7)}, B + 7: [(5, P - 5)]},
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", FREE_CASES)
def test_free(name: str) -> None:
    npages, before, frees, after = FREE_CASES[name]
    p = make_page_alloc(before)
    for addr in frees:
        p.free(addr, npages)
        p.check()
    assert_same_pages(p, make_page_alloc(after))


def test_alloc_and_free_chunks8() -> None:
    p = make_page_alloc({B + k: [] for k in range(8)})
    base = page_base(B)
    for _ in range(3):
        assert p.alloc(P * 8)[0] == base
        p.free(base, P * 8)
    assert p.alloc(1)[0] == base
    p.free(base, 1)
    assert p.alloc(P * 8)[0] == base
    p.check()


def test_free_lowers_search_addr_and_first_fit_reuses() -> None:
    p = make_page_alloc({B: [], B + 1: []})
    addrs = [p.alloc(3)[0] for _ in range(300)]
    assert p.search_addr > page_base(B + 1)
    p.free(addrs[10], 3)
    assert p.search_addr == addrs[10]
    assert p.alloc(2)[0] == addrs[10]
    assert p.alloc(2)[0] == page_base(B, 900)
    p.check()


def test_alloc_range_returns_scavenged_bytes() -> None:
    p = make_page_alloc({B: [], B + 1: []}, {B: [(500, 12)], B + 1: [(0, 3)]})
    assert p.alloc_range(page_base(B, 505), 20) == 10 * PAGE_SIZE
    assert p.is_allocated(page_base(B + 1, 12))
    assert not p.is_scavenged(page_base(B + 1, 0))
    assert p.is_scavenged(page_base(B, 504))
    p.check()


# ---- scavenge -----------------------------------------------------------------

ScavCase = tuple[Desc, Desc, list[tuple[int, int]], Desc]
SCAVENGE_CASES: dict[str, ScavCase] = {
    "AllFreeUnscavExhaust": (
        {B: [], B + 1: [], B + 2: []},
        {B: [], B + 1: [], B + 2: []},
        [(EVERYTHING, 3 * P * PAGE_SIZE)],
        {B: [(0, P)], B + 1: [(0, P)], B + 2: [(0, P)]},
    ),
    "NoneFreeUnscavExhaust": (
        {B: [(0, P)], B + 1: [], B + 2: [(0, P)]},
        {B: [], B + 1: [(0, P)], B + 2: []},
        [(EVERYTHING, 0)],
        {B: [], B + 1: [(0, P)], B + 2: []},
    ),
    "ScavHighestPageFirst": (
        {B: []}, {B: [(1, P - 2)]}, [(1, PAGE_SIZE)], {B: [(1, P - 1)]},
    ),
    "ScavMultiple": (
        {B: []}, {B: [(1, P - 2)]}, [(PAGE_SIZE, PAGE_SIZE), (PAGE_SIZE, PAGE_SIZE)],
        {B: [(0, P)]},
    ),
    "ScavMultiple2": (
        {B: [], B + 1: []},
        {B: [(1, P - 2)], B + 1: [(0, P - 2)]},
        [(2 * PAGE_SIZE, 2 * PAGE_SIZE), (PAGE_SIZE, PAGE_SIZE), (PAGE_SIZE, PAGE_SIZE)],
        {B: [(0, P)], B + 1: [(0, P)]},
    ),
    "ScavDiscontiguous": (
        {B: [], B + 0xE: []},
        {B: [(1, P - 2)], B + 0xE: [(2, P - 2)]},
        [(2 * PAGE_SIZE, 2 * PAGE_SIZE), (EVERYTHING, 2 * PAGE_SIZE), (EVERYTHING, 0)],
        {B: [(0, P)], B + 0xE: [(0, P)]},
    ),
    "ScavAllVeryDiscontiguous": (
        {B: [], B + 0x1000: []},
        {B: [], B + 0x1000: []},
        [(EVERYTHING, 2 * P * PAGE_SIZE), (EVERYTHING, 0)],
        {B: [(0, P)], B + 0x1000: [(0, P)]},
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", SCAVENGE_CASES)
def test_scavenge(name: str) -> None:
    before, scav, requests, after_scav = SCAVENGE_CASES[name]
    p = make_page_alloc(before, scav)
    for request, released in requests:
        assert p.scavenge(request) == released
        p.check()
    assert_same_pages(p, make_page_alloc(before, after_scav))


def test_scavenge_calls_sys_unused_per_contiguous_run_highest_first() -> None:
    calls: list[tuple[int, int]] = []
    p = make_page_alloc(
        {B: [(100, 10)], B + 1: [], B + 2: [(0, 1)], B + 5: []},
        {B + 1: [(500, 12)], B + 5: [(0, P)]},
        lambda b, n: calls.append((b, n)),
    )
    calls.clear()
    assert p.scavenge(EVERYTHING) == (P - 10 + P - 12 + P - 1) * PAGE_SIZE
    assert calls == [
        (page_base(B + 2, 1), (P - 1) * PAGE_SIZE),
        (page_base(B, 110), (P - 110 + 500) * PAGE_SIZE),  # crosses into chunk B + 1
        (page_base(B, 0), 100 * PAGE_SIZE),
    ]
    assert p.npages_scavenged == p.npages_free
    p.check()


def test_scavenge_runs_merge_across_chunks_and_stop_at_request() -> None:
    calls: list[tuple[int, int]] = []
    p = make_page_alloc({B: [], B + 1: [], B + 2: []}, None, lambda b, n: calls.append((b, n)))
    assert p.scavenge(P * PAGE_SIZE + 1) == (P + 1) * PAGE_SIZE
    assert calls == [(page_base(B + 1, P - 1), (P + 1) * PAGE_SIZE)]
    calls.clear()
    assert p.scavenge(EVERYTHING) == (2 * P - 1) * PAGE_SIZE
    assert calls == [(page_base(B), (2 * P - 1) * PAGE_SIZE)]
    assert p.scavenge(EVERYTHING) == 0
    p.check()


def test_scavenge_failure_keeps_bitmaps_true() -> None:
    def refuse(base: int, nbytes: int) -> None:
        raise OSError(12, "refused")

    p = make_page_alloc({B: [(0, 4)]}, None, refuse)
    with pytest.raises(OSError):
        p.scavenge(EVERYTHING)
    assert p.npages_scavenged == 0
    assert not p.is_scavenged(page_base(B, P - 1))
    p.check()


def test_freed_pages_are_unscavenged_and_reused_without_cost() -> None:
    p = make_page_alloc({B: []})
    assert p.npages_scavenged == 0
    p.scavenge(EVERYTHING)
    addr, scav = p.alloc(10)
    assert (addr, scav) == (page_base(B), 10 * PAGE_SIZE)
    p.free(addr, 10)
    assert p.npages_scavenged == P - 10
    assert p.alloc(10) == (addr, 0)
    p.check()


# ---- bad input ----------------------------------------------------------------


def _heap() -> PageAlloc:
    return make_page_alloc({B: [(0, 8)], B + 1: [(0, P)], B + 3: []}, {B: [(100, 50)]})


BAD_CALLS: list[tuple[str, Callable[[PageAlloc], object], type[Exception], str]] = [
    ("alloc float", lambda p: p.alloc(1.0), ArgumentTypeError, "1.0"),  # type: ignore[arg-type]
    ("alloc str", lambda p: p.alloc("1"), ArgumentTypeError, "'1'"),  # type: ignore[arg-type]
    ("alloc bool", lambda p: p.alloc(True), ArgumentTypeError, "True"),
    ("alloc None", lambda p: p.alloc(None), ArgumentTypeError, "None"),  # type: ignore[arg-type]
    ("alloc zero", lambda p: p.alloc(0), InvalidArgumentError, "0"),
    ("alloc negative", lambda p: p.alloc(-3), InvalidArgumentError, "-3"),
    ("alloc huge", lambda p: p.alloc(1 << 40), InvalidArgumentError, hex(1 << 40)),
    ("free unaligned", lambda p: p.free(page_base(B) + 8, 1), InvalidArgumentError,
     hex(page_base(B) + 8)),
    ("free not allocated", lambda p: p.free(page_base(B, 7), 2), InvalidArgumentError,
     hex(page_base(B, 7))),
    ("free zero pages", lambda p: p.free(page_base(B), 0), InvalidArgumentError, "0"),
    ("free negative pages", lambda p: p.free(page_base(B), -1), InvalidArgumentError, "-1"),
    ("free outside heap", lambda p: p.free(page_base(B + 2), 1), InvalidArgumentError,
     hex(page_base(B + 2))),
    ("free across hole", lambda p: p.free(page_base(B + 1), P + 1), InvalidArgumentError,
     hex(page_base(B + 1))),
    ("free beyond 48 bits", lambda p: p.free(ADDR_LIMIT, 1), InvalidArgumentError,
     hex(ADDR_LIMIT)),
    ("free float base", lambda p: p.free(float(page_base(B)), 1),  # type: ignore[arg-type]
     ArgumentTypeError, "float"),
    ("grow unaligned", lambda p: p.grow(page_base(B + 8, 1), CHUNK_BYTES), InvalidArgumentError,
     hex(page_base(B + 8, 1))),
    ("grow odd size", lambda p: p.grow(page_base(B + 8), CHUNK_BYTES + PAGE_SIZE),
     InvalidArgumentError, hex(page_base(B + 8) + CHUNK_BYTES + PAGE_SIZE)),
    ("grow overlap", lambda p: p.grow(page_base(B + 2), 2 * CHUNK_BYTES), InvalidArgumentError,
     hex(page_base(B + 2))),
    ("grow at zero", lambda p: p.grow(0, CHUNK_BYTES), InvalidArgumentError, "0"),
    ("grow beyond 48 bits", lambda p: p.grow(ADDR_LIMIT, CHUNK_BYTES), InvalidArgumentError,
     hex(ADDR_LIMIT)),
    ("grow past 48 bits", lambda p: p.grow(ADDR_LIMIT - CHUNK_BYTES, 2 * CHUNK_BYTES),
     InvalidArgumentError, hex(2 * CHUNK_BYTES)),
    ("alloc_range not free", lambda p: p.alloc_range(page_base(B, 4), 8), InvalidArgumentError,
     hex(page_base(B, 4))),
    ("scavenge_range not free", lambda p: p.scavenge_range(page_base(B + 1, 9), 1),
     InvalidArgumentError, hex(page_base(B + 1, 9))),
    ("scavenge negative", lambda p: p.scavenge(-1), InvalidArgumentError, "-1"),
    ("scavenge float", lambda p: p.scavenge(1.5), ArgumentTypeError, "1.5"),  # type: ignore[arg-type]
    ("is_allocated outside", lambda p: p.is_allocated(page_base(B + 2)), InvalidArgumentError,
     hex(page_base(B + 2))),
    ("is_scavenged negative", lambda p: p.is_scavenged(-8), InvalidArgumentError, "-8"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "error", "shown"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
def test_bad_input_raises_and_changes_nothing(
    call: Callable[[PageAlloc], object], error: type[Exception], shown: str
) -> None:
    p = _heap()
    before = snapshot(p)
    with pytest.raises(error) as info:
        call(p)
    assert shown in str(info.value)
    p.check()
    assert snapshot(p) == before


def test_check_reports_corruption_with_invariant_id() -> None:
    # Damage the C bitmaps and counters behind the allocator's back.
    p = _heap()
    p._chunks[B].scav[0] |= 1  # page 0 is allocated
    with pytest.raises(HeapCorruption, match=r"^PAGE-2: "):
        p.check()
    p = _heap()
    p._chunks[B].alloc[300 // 64] |= 1 << (300 % 64)
    with pytest.raises(HeapCorruption, match=r"^PAGE-3: |^PAGE-1: "):
        p.check()
    p = _heap()
    p.c.free += 1
    with pytest.raises(HeapCorruption, match=r"^PAGE-3: "):
        p.check()
    p = _heap()
    p.c.search_addr = page_base(B, 20)
    with pytest.raises(HeapCorruption, match=r"^PAGE-4: "):
        p.check()
    p = _heap()
    p._blocks[0][B >> 12][(B >> 9) & 7] = (1, 1, 1)
    with pytest.raises(HeapCorruption, match=r"^PAGE-1: "):
        p.check()


# ---- model-based --------------------------------------------------------------

MODEL_CHUNKS = (0, 1, 3)
LATE_CHUNKS = (2, 6)


class PageAllocMachine(RuleBasedStateMachine):
    """PageAlloc against sets of page numbers: first fit, scavenging order, counters."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int]] = []
        self.p = PageAlloc(lambda b, n: self.calls.append((b, n)))
        self.heap: list[int] = []
        self.allocated: set[int] = set()
        self.scavenged: set[int] = set()
        self.live: list[tuple[int, int]] = []
        for c in MODEL_CHUNKS:
            self._grow(c)

    def _grow(self, c: int) -> None:
        self.p.grow(page_base(B + c), CHUNK_BYTES)
        first = page_base(B + c) >> PAGE_SHIFT
        self.heap = sorted({*self.heap, *range(first, first + P)})
        self.scavenged.update(range(first, first + P))

    def _first_fit(self, n: int) -> int:
        run = start = 0
        prev = -2
        for pn in self.heap:
            if pn in self.allocated or pn != prev + 1:
                run = 0
            prev = pn
            if pn in self.allocated:
                continue
            if not run:
                start = pn
            run += 1
            if run == n:
                return start
        return -1

    def _take(self, first: int, n: int) -> int:
        pages = set(range(first, first + n))
        scav = len(pages & self.scavenged)
        self.allocated |= pages
        self.scavenged -= pages
        return scav

    @rule(n=st.one_of(st.integers(1, 16), st.integers(1, 1600)))
    def alloc(self, n: int) -> None:
        first = self._first_fit(n)
        if first < 0:
            assert self.p.alloc(n) == (0, 0)
            return
        scav = self._take(first, n)
        assert self.p.alloc(n) == (first << PAGE_SHIFT, scav << PAGE_SHIFT)
        self.live.append((first, n))

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.live) - 1))
        first, n = self.live.pop(i)
        k = data.draw(st.integers(1, n))
        if k < n:
            self.live.append((first + k, n - k))
        self.p.free(first << PAGE_SHIFT, k)
        self.allocated -= set(range(first, first + k))

    @rule(pages=st.integers(0, 1200), extra=st.integers(0, PAGE_SIZE - 1))
    def scavenge(self, pages: int, extra: int) -> None:
        nbytes = max(0, pages * PAGE_SIZE - extra)
        want = -(-nbytes // PAGE_SIZE)
        candidates = sorted(set(self.heap) - self.allocated - self.scavenged, reverse=True)
        taken = candidates[:want]
        runs: list[tuple[int, int]] = []
        for pn in taken:
            if runs and runs[-1][0] == pn + 1:
                runs[-1] = (pn, runs[-1][1] + 1)
            else:
                runs.append((pn, 1))
        self.calls.clear()
        assert self.p.scavenge(nbytes) == len(taken) * PAGE_SIZE
        assert self.calls == [(pn << PAGE_SHIFT, k << PAGE_SHIFT) for pn, k in runs]
        self.scavenged.update(taken)

    @rule(data=st.data())
    def scavenge_range(self, data: st.DataObject) -> None:
        free = sorted(set(self.heap) - self.allocated)
        if not free:
            return
        first = data.draw(st.sampled_from(free))
        n = 1
        while n < 40 and first + n in free and first + n not in self.allocated:
            n += 1
        new = set(range(first, first + n)) - self.scavenged
        assert self.p.scavenge_range(first << PAGE_SHIFT, n) == len(new) * PAGE_SIZE
        self.scavenged |= new

    @precondition(lambda self: any(B + c not in self._chunks() for c in LATE_CHUNKS))
    @rule(data=st.data())
    def grow(self, data: st.DataObject) -> None:
        c = data.draw(st.sampled_from([c for c in LATE_CHUNKS if B + c not in self._chunks()]))
        self._grow(c)

    def _chunks(self) -> set[int]:
        return {pn >> 9 for pn in self.heap}

    @invariant()
    def agrees_with_model(self) -> None:
        self.p.check()
        assert self.p.npages_total == len(self.heap)
        assert self.p.npages_free == len(self.heap) - len(self.allocated)
        assert self.p.npages_scavenged == len(self.scavenged)

    def teardown(self) -> None:
        for pn in self.heap:
            addr = pn << PAGE_SHIFT
            assert self.p.is_allocated(addr) == (pn in self.allocated)
            assert self.p.is_scavenged(addr) == (pn in self.scavenged)


PageAllocMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_page_alloc_model = pytest.mark.slow(PageAllocMachine.TestCase)
