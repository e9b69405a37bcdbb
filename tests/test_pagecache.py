"""Tests of realalloc.pagecache; cases ported from Go's runtime/mpagecache_test.go."""

from __future__ import annotations

import random

import pytest
from test_pagealloc import BIG_JUMP, Desc, assert_same_pages, make_page_alloc, page_base

from realalloc.core.pagecache import PAGE_CACHE_BYTES, PageCache
from realalloc.core.pallocbits import PAGE_SIZE, PAGES_PER_CHUNK
from realalloc.errors import ArgumentTypeError, InvalidArgumentError

P = PAGES_PER_CHUNK
B = 0xC000
ONES = (1 << 64) - 1
BASE = page_base(B)

Hit = tuple[int, int, int]  # npages, expected base (0 = failure), expected scavenged bytes
CACHE_ALLOC_CASES: dict[str, tuple[PageCache, list[Hit]]] = {
    "Empty": (
        PageCache(BASE, 0, 0),
        [(n, 0, 0) for n in (1, 2, 3, 4, 5, 11, 12, 16, 27, 32, 43, 57, 64)],
    ),
    "Lo1": (PageCache(BASE, 0x1, 0x1), [(1, BASE, PAGE_SIZE), (1, 0, 0), (10, 0, 0)]),
    "Hi1": (PageCache(BASE, 1 << 63, 0x1), [(1, BASE + 63 * PAGE_SIZE, 0), (1, 0, 0), (10, 0, 0)]),
    "Swiss1": (
        PageCache(BASE, 0x20005555, 0x5505),
        [(2, 0, 0), (1, BASE, PAGE_SIZE), (1, BASE + 2 * PAGE_SIZE, PAGE_SIZE),
         (1, BASE + 4 * PAGE_SIZE, 0), (1, BASE + 6 * PAGE_SIZE, 0),
         (1, BASE + 8 * PAGE_SIZE, PAGE_SIZE), (1, BASE + 10 * PAGE_SIZE, PAGE_SIZE),
         (1, BASE + 12 * PAGE_SIZE, PAGE_SIZE), (1, BASE + 14 * PAGE_SIZE, PAGE_SIZE),
         (1, BASE + 29 * PAGE_SIZE, 0), (1, 0, 0), (10, 0, 0)],
    ),
    "Lo2": (PageCache(BASE, 0x3, 0x2 << 62), [(2, BASE, 0), (2, 0, 0), (1, 0, 0)]),
    "Hi2": (
        PageCache(BASE, 0x3 << 62, 0x3 << 62),
        [(2, BASE + 62 * PAGE_SIZE, 2 * PAGE_SIZE), (2, 0, 0), (1, 0, 0)],
    ),
    "Swiss2": (
        PageCache(BASE, 0x3333 << 31, 0x3030 << 31),
        [(2, BASE + 31 * PAGE_SIZE, 0), (2, BASE + 35 * PAGE_SIZE, 2 * PAGE_SIZE),
         (2, BASE + 39 * PAGE_SIZE, 0), (2, BASE + 43 * PAGE_SIZE, 2 * PAGE_SIZE), (2, 0, 0)],
    ),
    "Hi53": (
        PageCache(BASE, ((1 << 53) - 1) << 10, ((1 << 16) - 1) << 10),
        [(53, BASE + 10 * PAGE_SIZE, 16 * PAGE_SIZE), (53, 0, 0), (1, 0, 0)],
    ),
    "Full53": (
        PageCache(BASE, ONES, ((1 << 16) - 1) << 10),
        [(53, BASE, 16 * PAGE_SIZE), (53, 0, 0), (1, BASE + 53 * PAGE_SIZE, 0)],
    ),
    "Full64": (PageCache(BASE, ONES, ONES), [(64, BASE, 64 * PAGE_SIZE), (64, 0, 0), (1, 0, 0)]),
    "FullMixed": (
        PageCache(BASE, ONES, ONES),
        [(5, BASE, 5 * PAGE_SIZE), (7, BASE + 5 * PAGE_SIZE, 7 * PAGE_SIZE),
         (1, BASE + 12 * PAGE_SIZE, PAGE_SIZE), (23, BASE + 13 * PAGE_SIZE, 23 * PAGE_SIZE),
         (63, 0, 0), (3, BASE + 36 * PAGE_SIZE, 3 * PAGE_SIZE),
         (3, BASE + 39 * PAGE_SIZE, 3 * PAGE_SIZE), (3, BASE + 42 * PAGE_SIZE, 3 * PAGE_SIZE),
         (12, BASE + 45 * PAGE_SIZE, 12 * PAGE_SIZE), (11, 0, 0),
         (4, BASE + 57 * PAGE_SIZE, 4 * PAGE_SIZE), (4, 0, 0), (6, 0, 0), (36, 0, 0),
         (2, BASE + 61 * PAGE_SIZE, 2 * PAGE_SIZE), (3, 0, 0),
         (1, BASE + 63 * PAGE_SIZE, PAGE_SIZE), (4, 0, 0), (2, 0, 0), (62, 0, 0), (1, 0, 0)],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", CACHE_ALLOC_CASES)
def test_page_cache_alloc(name: str) -> None:
    cache, hits = CACHE_ALLOC_CASES[name]
    for npages, base, scav in hits:
        assert cache.alloc(npages) == (base, scav), npages
        assert cache.scav & ~cache.cache == 0


def bits_to_ranges(bits: int, base: int) -> list[tuple[int, int]]:
    """Runs of set bits as (index + base, length) (Go: bits64ToBitRanges)."""
    ranges: list[tuple[int, int]] = []
    for i in range(64):
        if bits >> i & 1:
            if ranges and ranges[-1][0] + ranges[-1][1] == base + i:
                ranges[-1] = (ranges[-1][0], ranges[-1][1] + 1)
            else:
                ranges.append((base + i, 1))
    return ranges


def _flush_case(base: int, cache: int, scav: int) -> None:
    p = make_page_alloc({B: [(base, 64)]}, {B: []})
    c = PageCache(page_base(B, base), cache, scav)
    c.flush(p)
    assert c.empty()
    p.check()
    want = make_page_alloc(
        {B: bits_to_ranges(~cache & ONES, base)}, {B: bits_to_ranges(scav, base)}
    )
    assert_same_pages(p, want)


def test_page_cache_flush() -> None:
    _flush_case(0, 0, 0)
    _flush_case(0, ONES, ONES)
    rng = random.Random(7)
    for _ in range(30):
        cache = rng.getrandbits(64)
        _flush_case(rng.randrange(P // 64) * 64, cache, rng.getrandbits(64) & cache)


ToCacheCase = tuple[Desc, Desc, list[tuple[int, int, int]], Desc, Desc]
TO_CACHE_CASES: dict[str, ToCacheCase] = {
    "AllFree": (
        {B: []},
        {B: [(1, 1), (64, 64)]},
        [(page_base(B, 0), ONES, 0x2), (page_base(B, 64), ONES, ONES),
         (page_base(B, 128), ONES, 0), (page_base(B, 192), ONES, 0)],
        {B: [(0, 256)]},
        {},
    ),
    "ManyArena": (
        {B: [(0, P)], B + 1: [(0, P)], B + 2: [(0, P - 64)]},
        {B: [(0, P)], B + 1: [(0, P)], B + 2: []},
        [(page_base(B + 2, P - 64), ONES, 0)],
        {B: [(0, P)], B + 1: [(0, P)], B + 2: [(0, P)]},
        {},
    ),
    "NotContiguous": (
        {B: [(0, P)], B + 0xFF: [(0, 0)]},
        {B: [(0, P)], B + 0xFF: [(31, 67)]},
        [(page_base(B + 0xFF, 0), ONES, ((1 << 33) - 1) << 31)],
        {B: [(0, P)], B + 0xFF: [(0, 64)]},
        {B: [(0, P)], B + 0xFF: [(64, 34)]},
    ),
    "First": (
        {B: [(0, 32), (33, 31), (96, 32)]},
        {B: [(1, 4), (31, 5), (66, 2)]},
        [(page_base(B, 0), 1 << 32, 1 << 32), (page_base(B, 64), (1 << 32) - 1, 0x3 << 2)],
        {B: [(0, 128)]},
        {},
    ),
    "Fail": ({B: [(0, P)]}, {}, [(0, 0, 0)] * 3, {B: [(0, P)]}, {}),
    "RetainScavBits": (
        {B: [(0, 1), (10, 2)]},
        {B: [(0, 4), (11, 1)]},
        [(page_base(B, 0), ONES & ~(0x1 | (0x3 << 10)), 0x7 << 1)],
        {B: [(0, 64)]},
        {B: [(0, 1), (11, 1)]},
    ),
    "DiscontiguousMappedSumBoundary": (
        {B + 511: [(0, P - 1)], B + BIG_JUMP: [(1, P - 1)]},
        {B + 511: [], B + BIG_JUMP: []},
        [(page_base(B + 511, P - 64), 1 << 63, 0), (page_base(B + BIG_JUMP, 0), 1, 0),
         (0, 0, 0)],
        {B + 511: [(0, P)], B + BIG_JUMP: [(0, P)]},
        {},
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", TO_CACHE_CASES)
def test_alloc_to_cache(name: str) -> None:
    before, before_scav, hits, after, after_scav = TO_CACHE_CASES[name]
    p = make_page_alloc(before, before_scav)
    for base, cache, scav in hits:
        c = p.alloc_to_cache()
        assert (c.base, c.cache, c.scav) == (base, cache, scav)
        p.check()
    assert_same_pages(p, make_page_alloc(after, after_scav))


def test_cache_round_trip_restores_the_heap() -> None:
    p = make_page_alloc({B: [(0, 3), (70, 2)], B + 1: []}, {B: [(5, 100)]})
    want = make_page_alloc({B: [(0, 3), (70, 2)], B + 1: []}, {B: [(5, 100)]})
    c = p.alloc_to_cache()
    assert p.npages_free == want.npages_free - 61
    assert c.alloc(4) == (page_base(B, 3), 2 * PAGE_SIZE)
    c.flush(p)
    p.free(page_base(B, 3), 4)
    p.check()
    # The pages handed out lose their scavenged bits; every other page is as before.
    assert p.npages_free == want.npages_free
    assert p.npages_scavenged == want.npages_scavenged - 2
    assert not c.alloc(1)[0]


@pytest.mark.parametrize(
    ("args", "error", "shown"),
    [
        ((BASE + PAGE_SIZE, 1, 0), InvalidArgumentError, hex(BASE + PAGE_SIZE)),
        ((BASE, 1 << 64, 0), InvalidArgumentError, hex(1 << 64)),
        ((BASE, -1, 0), InvalidArgumentError, "-1"),
        ((BASE, 1, 2.0), ArgumentTypeError, "2.0"),
        ((-PAGE_CACHE_BYTES, 1, 0), InvalidArgumentError, str(-PAGE_CACHE_BYTES)),
    ],
)
def test_bad_cache(args: tuple[int, int, int], error: type[Exception], shown: str) -> None:
    with pytest.raises(error, match=shown):
        PageCache(*args)


@pytest.mark.parametrize(
    ("npages", "error", "shown"),
    [(0, InvalidArgumentError, "got 0"), (65, InvalidArgumentError, "got 0x41"),
     ("2", ArgumentTypeError, "'2'")],
)  # fmt: skip
def test_bad_cache_alloc_changes_nothing(
    npages: object, error: type[Exception], shown: str
) -> None:
    c = PageCache(BASE, 0xF0, 0x30)
    with pytest.raises(error, match=shown):
        c.alloc(npages)  # type: ignore[arg-type]
    assert (c.base, c.cache, c.scav) == (BASE, 0xF0, 0x30)


def test_flush_of_pages_not_held_is_refused() -> None:
    p = make_page_alloc({B: [(0, 8)]})
    c = PageCache(BASE, 0x1FF, 0)
    with pytest.raises(InvalidArgumentError, match="0x1ff"):
        c.flush(p)
    assert c.cache == 0x1FF
    p.check()
