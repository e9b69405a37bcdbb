"""Tests of realalloc.pallocbits and the C chunk kernels; cases ported from Go's
runtime/mpallocbits_test.go."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realalloc.core.osmem import ffi, lib
from realalloc.core.pallocbits import (
    ALLOCATED_SUM,
    CHUNK_MASK,
    FREE_CHUNK_SUM,
    find,
    find_bit_range,
    highest_run,
    longest_run,
    range_mask,
    read_chunk,
    summarize,
)
from realalloc.core.sizeclasses import PAGES_PER_CHUNK

P = PAGES_PER_CHUNK
ONES64 = (1 << 64) - 1
Ranges = list[tuple[int, int]]


def make_bits(ranges: Ranges) -> int:
    """Bitmap with the (index, count) ranges set (Go: makePallocBits)."""
    bits = 0
    for i, n in ranges:
        bits |= range_mask(i, n)
    return bits


class Chunk:
    """A C chunk (ra_chunk) with its own page-allocator counters, driven
    through the kernels the heap uses (csrc/pages.h)."""

    def __init__(self, alloc: int = 0, scav: int = 0) -> None:
        self.pa = ffi.new("ra_pages *")
        self.c = ffi.new("ra_chunk *")
        lib.ra_pages_grow(self.pa, self.c, 1)  # every page free and scavenged
        for k in range(8):
            self.c.scav[k] = (scav >> (64 * k)) & ((1 << 64) - 1)
        for i in range(P):
            if alloc >> i & 1:
                assert self.take(i, 1) >= 0

    def take(self, i: int, n: int) -> int:
        """Allocate pages [i, i+n): scavenged pages among them, or -1 if not all free."""
        out = ffi.new("uint32_t *")
        rc = lib.ra_pages_change(self.pa, self.c, i, n, lib.RA_PAGES_TAKE, out)
        return int(out[0]) if rc == lib.RA_OK else -1

    def give(self, i: int, n: int) -> bool:
        rc = lib.ra_pages_change(self.pa, self.c, i, n, lib.RA_PAGES_GIVE, ffi.NULL)
        return bool(rc == lib.RA_OK)

    @property
    def bits(self) -> int:
        return read_chunk(self.c)[0]

    @property
    def scav(self) -> int:
        return read_chunk(self.c)[1]


def words(ws: dict[int, int]) -> int:
    """Bitmap from Go's view of it as eight uint64 words."""
    return sum(w << (64 * k) for k, w in ws.items())


def summarize_slow(bits: int) -> tuple[int, int, int]:
    """Reference summary: walk the pages one by one (Go: SummarizeSlow)."""
    free = [not bits >> i & 1 for i in range(P)]
    start = next((i for i, f in enumerate(free) if not f), P)
    end = next((i for i, f in enumerate(reversed(free)) if not f), P)
    best = run = 0
    for f in free:
        run = run + 1 if f else 0
        best = max(best, run)
    return start, best, end


@pytest.mark.parametrize(
    ("i", "n", "want"),
    [
        (0, 1, words({0: 0x1})),
        (P - 1, 1, words({7: 1 << 63})),
        (129, 5, words({2: 0x3E})),
        (128, 128, words({2: ONES64, 3: ONES64})),
        (0, 321, words({0: ONES64, 1: ONES64, 2: ONES64, 3: ONES64, 4: ONES64, 5: 0x1})),
        (P - (64 * 3 + 1), 64 * 3 + 1, words({7: ONES64, 6: ONES64, 5: ONES64, 4: 1 << 63})),
        (0, P, CHUNK_MASK),
    ],
    ids=["OneLow", "OneHigh", "Inner", "Aligned", "Begin", "End", "All"],
)
def test_alloc_range(i: int, n: int, want: int) -> None:
    assert make_bits([(i, n)]) == want


SCATTERED = [
    (1, 3), (5, 1), (7, 1), (10, 2), (13, 1), (15, 4), (21, 1), (23, 1), (26, 2), (30, 5),
    (36, 2), (40, 3), (44, 6), (51, 1), (53, 2), (58, 3), (63, 1), (67, 2), (71, 10), (84, 1),
    (89, 7), (99, 2), (103, 1), (107, 2), (111, 1), (113, 1), (115, 1), (118, 1), (120, 2),
    (125, 5),
]  # fmt: skip


@pytest.mark.parametrize(
    ("init", "cases"),
    [
        ([], [(0, 1, 0), (5, 3, 0), (2, 11, 0), (P // 4 + 1, P // 2, 0), (0, P, 0)]),
        (
            [(0, P)],
            [(0, 1, 1), (5, 3, 3), (2, 11, 11), (P // 4 + 1, P // 2, P // 2), (0, P, P)],
        ),
        (
            [(P // 2, P // 2)],
            [
                (0, 1, 0), (5, 3, 0), (2, 11, 0), (P // 2 - 1, 1, 0), (P // 2, 1, 1),
                (P // 2 + 10, 1, 1), (P // 2 - 1, 2, 1), (P // 4, P // 4, 0),
                (P // 4, P // 4 + 1, 1), (P // 4 + 1, P // 2, P // 4 + 1), (0, P, P // 2),
            ],
        ),
        (
            [(0, 111)],
            [
                (0, 1, 1), (5, 3, 3), (2, 11, 11), (110, 2, 1), (99, 50, 12), (110, 1, 1),
                (111, 1, 0), (99, 1, 1), (120, 1, 0), (P // 2, P // 2, 0), (0, P, 111),
            ],
        ),
        (
            SCATTERED,
            [(0, 11, 6), (0, 64, 39), (13, 64, 40), (64, 64, 34), (0, 128, 73), (1, 128, 74),
             (0, P, 75)],
        ),
    ],
    ids=["None", "All", "Half", "OddBound", "Scattered"],
)  # fmt: skip
def test_popcount_range(init: Ranges, cases: list[tuple[int, int, int]]) -> None:
    bits = make_bits(init)
    for i, n, want in cases:
        assert (bits & range_mask(i, n)).bit_count() == want, (i, n)


def test_summarize_random() -> None:
    rng = random.Random(1)
    for _ in range(300):
        bits = rng.getrandbits(P)
        assert summarize(bits) == summarize_slow(bits)


@given(st.lists(st.tuples(st.integers(0, P - 1), st.integers(1, 80)), max_size=12))
def test_summarize_matches_slow(runs: Ranges) -> None:
    bits = CHUNK_MASK
    for i, n in runs:
        bits &= ~range_mask(i, min(n, P - i))
    assert summarize(bits) == summarize_slow(bits)


@pytest.mark.parametrize(
    ("free", "want"),
    [
        ([], ALLOCATED_SUM),
        ([(0, 10)], (10, 10, 0)),
        ([(P - 40, 40)], (0, 40, 40)),
        ([(0, 11), (P - 23, 23)], (11, 23, 23)),
        ([(0, 4), (50, 100), (P - 4, 4)], (4, 100, 4)),
        ([(1, 20), (35, 241), (P - 50, 30)], (0, 241, 0)),
        ([(35, 2), (40, 5), (100, 5)], (0, 5, 0)),
        ([(2, 1)], (0, 1, 0)),
        ([(0, P)], FREE_CHUNK_SUM),
    ],
    ids=[
        "NoneFree", "OnlyStart", "OnlyEnd", "StartAndEnd", "StartMaxEnd", "OnlyMax", "MultiMax",
        "One", "AllFree",
    ],
)  # fmt: skip
def test_summarize(free: Ranges, want: tuple[int, int, int]) -> None:
    # The ranges are the free pages, so invert (Go: invertPallocBits).
    assert summarize(make_bits(free) ^ CHUNK_MASK) == want


@pytest.mark.parametrize(
    ("before", "npages", "hits", "after"),
    [
        ([], 1, [0, 1, 2, 3, 4, 5], [(0, 6)]),
        ([], 2, [0, 2, 4, 6, 8, 10], [(0, 12)]),
        ([], 5, [0, 5, 10, 15, 20], [(0, 25)]),
        ([], 64, [0, 64, 128], [(0, 192)]),
        ([], 65, [0, 65, 130], [(0, 195)]),
        ([(0, 32), (64, 32), (100, P - 100)], 64, [-1], [(0, 32), (64, 32), (100, P - 100)]),
        ([(0, P)], 1, [-1, -1], [(0, P)]),
        ([(0, P)], 2, [-1, -1], [(0, P)]),
        ([(0, P)], 5, [-1, -1], [(0, P)]),
        ([(0, P)], 65, [-1, -1], [(0, P)]),
        ([(0, P // 2 - 3), (P // 2 - 2, P // 2 + 2)], 1, [P // 2 - 3, -1], [(0, P)]),
        ([(0, P // 2 - 3), (P // 2 - 1, P // 2 + 1)], 2, [P // 2 - 3, -1], [(0, P)]),
        ([(0, P // 2 - 3), (P // 2 + 2, P // 2 - 2)], 5, [P // 2 - 3, -1], [(0, P)]),
        ([(0, P // 2 - 31), (P // 2 + 34, P // 2 - 34)], 65, [P // 2 - 31, -1], [(0, P)]),
        ([(0, 185), (331, 1)], 161, [332], [(0, 185), (331, 162)]),
    ],
    ids=[
        "AllFree1", "AllFree2", "AllFree5", "AllFree64", "AllFree65", "SomeFree64", "NoneFree1",
        "NoneFree2", "NoneFree5", "NoneFree65", "ExactFit1", "ExactFit2", "ExactFit5",
        "ExactFit65", "SomeFree161",
    ],
)  # fmt: skip
def test_find_and_alloc(before: Ranges, npages: int, hits: list[int], after: Ranges) -> None:
    d = Chunk(make_bits(before))
    for want in hits:
        got, _ = find(d.bits, npages, 0)
        assert got == want
        if got >= 0:
            assert d.take(got, npages) >= 0
    assert d.bits == make_bits(after)


@pytest.mark.parametrize(
    ("before_inv", "npages", "frees", "after_inv"),
    [
        ([(0, 32), (64, 32), (100, 1)], 1, [32], [(0, 33), (64, 32), (100, 1)]),
        ([], 1, [0, 1, 2, 3, 4, 5], [(0, 6)]),
        ([], 2, [0, 2, 4, 6, 8, 10], [(0, 12)]),
        ([], 5, [0, 5, 10, 15, 20], [(0, 25)]),
        ([], 64, [0, 64, 128], [(0, 192)]),
        ([], 65, [0, 65, 130], [(0, 195)]),
    ],
    ids=["SomeFree", "NoneFree1", "NoneFree2", "NoneFree5", "NoneFree64", "NoneFree65"],
)
def test_free_range(before_inv: Ranges, npages: int, frees: list[int], after_inv: Ranges) -> None:
    d = Chunk(make_bits(before_inv) ^ CHUNK_MASK)
    for i in frees:
        assert d.give(i, npages)
    assert d.bits == make_bits(after_inv) ^ CHUNK_MASK


def test_find_bit_range_64() -> None:
    for n in range(1, 65):
        assert find_bit_range(ONES64, n) == 0
        assert find_bit_range(0, n) == -1
    cases = [
        (0x8000000000000000, 1, 63),
        (0xC000010001010000, 2, 62),
        (0xC000010001030000, 2, 16),
        (0xE000030001030000, 3, 61),
        (0xE000030001070000, 3, 16),
        (0xFFFF03FF01070000, 16, 48),
        (0xFFFF03FF0107FFFF, 16, 0),
        (0x0FFF03FF01079FFF, 16, -1),
    ]
    for x, n, want in cases:
        assert find_bit_range(x, n) == want, hex(x)


@given(st.integers(0, CHUNK_MASK), st.integers(1, P), st.integers(0, P - 1))
def test_find_is_first_fit_at_or_above_search_idx(bits: int, npages: int, search: int) -> None:
    free = [i >= search and not bits >> i & 1 for i in range(P)]
    want = next((i for i in range(P - npages + 1) if all(free[i : i + npages])), -1)
    first = next((i for i in range(P) if free[i]), -1)
    got, got_first = find(bits, npages, search)
    assert got == want
    if want >= 0:
        assert got_first == first


@given(st.integers(1, (1 << 600) - 1))
def test_longest_and_highest_run(x: int) -> None:
    runs = [len(r) for r in bin(x)[2:].split("0")]
    assert longest_run(x) == max(runs)
    start, end = highest_run(x)
    assert end - start == runs[0]
    assert end == x.bit_length()


def test_longest_run_of_zero() -> None:
    assert longest_run(0) == 0


@pytest.mark.parametrize(
    ("alloc", "scav", "want"),
    [
        ([(0, 40), (42, P - 42)], [(0, 41), (42, P - 42)], (41, 42)),
        ([(0, 63), (65, 20), (87, P - 87)], [(86, 1)], (85, 86)),
        ([], [], (0, P)),
        ([(1, P - 1)], [], (0, 1)),
        ([(0, P - 1)], [], (P - 1, P)),
        ([(0, 40), (41, P - 41)], [], (40, 41)),
    ],
    ids=["MixedMin1", "MultiMin1", "AllFreeMin1", "StartFreeMin1", "EndFreeMin1", "OneFree"],
)
def test_highest_scavenge_candidate(alloc: Ranges, scav: Ranges, want: tuple[int, int]) -> None:
    # Go: TestPallocDataFindScavengeCandidate with one-page granularity and no limit.
    bits, scav_bits = make_bits(alloc), make_bits(scav) & ~make_bits(alloc)
    assert highest_run(~(bits | scav_bits) & CHUNK_MASK) == want


@pytest.mark.parametrize(
    ("alloc", "scav"),
    [([], [(0, P)]), ([(0, P)], []), ([(0, 40), (41, P - 41)], [(40, 1)])],
    ids=["AllScavenged", "NoneFree", "OneScavenged"],
)
def test_no_scavenge_candidate(alloc: Ranges, scav: Ranges) -> None:
    assert ~(make_bits(alloc) | make_bits(scav)) & CHUNK_MASK == 0


def test_take_clears_and_counts_scavenged() -> None:
    d = Chunk(0, make_bits([(3, 5), (100, 10)]))
    assert d.take(0, 104) == 9
    assert d.bits == range_mask(0, 104)
    assert d.scav == range_mask(104, 6)


def test_take_and_give_refuse_pages_in_the_wrong_state_and_change_nothing() -> None:
    d = Chunk(make_bits([(10, 5)]))
    before = (d.bits, d.scav, int(d.pa.free))
    assert d.take(8, 4) == -1  # pages 10, 11 are allocated
    assert not d.give(14, 2)  # page 15 is free
    assert (d.bits, d.scav, int(d.pa.free)) == before
