"""The seed's other designs (realalloc/designs): free list, segregated lists, tcmalloc.

Every test runs on real memory from realalloc's page heap: objects are written
with a pattern over their whole usable extent and read back; alignment, no
overlap, the misuse errors and each design's own invariants (check()) are
verified; hypothesis drives random malloc/free/realloc against a dict model.
"""

from __future__ import annotations

import ctypes
import queue
import threading
from collections.abc import Iterator
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import pattern

from realalloc.designs import DESIGNS, DesignHeap, make
from realalloc.designs import freelist as fl
from realalloc.designs import segregated as seg
from realalloc.designs import tcmalloc as tcm
from realalloc.designs.pages import PAGE_SIZE
from realalloc.errors import (
    ArgumentTypeError,
    DoubleFreeError,
    ForeignPointerError,
    HeapClosedError,
    HeapCorruption,
    InteriorPointerError,
    InvalidArgumentError,
    OutOfMemoryError,
)

NAMES = list(DESIGNS)
SIZES = [0, 1, 7, 8, 9, 15, 16, 17, 31, 100, 1000, 4095, 4096, 8191, 8192, 8193]
SIZES += [32767, 32768, 32769, 100_000, 262_144, 262_145, 1 << 20, (1 << 20) + 1, 3_000_000]


@pytest.fixture(params=NAMES)
def heap(request: pytest.FixtureRequest) -> Iterator[DesignHeap]:
    """A fresh heap of each design; it must pass check() when the test is done."""
    h = make(request.param)
    yield h
    if not h.closed:
        h.check()
        h.close()


class Live:
    """Live objects and the pattern each holds over its usable extent."""

    def __init__(self, heap: DesignHeap) -> None:
        self.heap = heap
        self.objs: dict[int, bytes] = {}
        self.seq = 0

    def add(self, size: int) -> int:
        addr = self.heap.malloc(size)
        self.fill(addr)
        return addr

    def fill(self, addr: int) -> None:
        self.seq += 1
        data = pattern(addr, self.seq, self.heap.usable_size(addr))
        ctypes.memmove(addr, data, len(data))
        self.objs[addr] = data

    def free(self, addr: int) -> None:
        self.verify(addr)
        del self.objs[addr]
        self.heap.free(addr)

    def verify(self, addr: int) -> None:
        data = self.objs[addr]
        assert ctypes.string_at(addr, len(data)) == data, f"object {addr:#x} changed"

    def intact(self) -> None:
        """Every object holds its pattern, no two overlap, and check() passes."""
        for addr in self.objs:
            self.verify(addr)
        spans = sorted((a, a + max(len(d), 1)) for a, d in self.objs.items())
        for (a0, e0), (a1, _) in pairwise(spans):
            assert e0 <= a1, f"{a0:#x} and {a1:#x} overlap"
        self.heap.check()


# -- real memory, alignment, no overlap ------------------------------------------------


def expected_alignment(name: str, size: int) -> int:
    """What each design documents for a request of ``size`` bytes."""
    if name == "freelist":
        return 16
    if name == "segregated":
        if size > seg.MAX_SMALL:
            return PAGE_SIZE
        return min(seg.CLASS_SIZES[seg.size_class(size)], PAGE_SIZE)
    if size > tcm.MAX_SMALL:
        return PAGE_SIZE
    return 8 if size <= 8 else 16


def test_memory_is_real_writable_aligned_and_disjoint(heap: DesignHeap) -> None:
    live = Live(heap)
    for _ in range(3):
        for size in SIZES:
            addr = live.add(size)
            assert heap.usable_size(addr) >= size
            align = expected_alignment(heap.name, size)
            assert addr % align == 0, f"{heap.name}: {size} B at {addr:#x}, not {align}-aligned"
            assert align % heap.alignment == 0 and addr % heap.alignment == 0
    live.intact()
    st = heap.stats()
    assert st.objects_live == len(live.objs) == st.mallocs
    assert st.bytes_in_use == 3 * sum(SIZES)
    assert st.bytes_in_use <= st.bytes_allocated <= st.bytes_held
    assert st.metadata_bytes > 0
    for addr in list(live.objs)[::2]:
        live.free(addr)
    live.intact()
    for addr in list(live.objs):
        live.free(addr)
    live.intact()
    st = heap.stats()
    assert (st.objects_live, st.bytes_in_use, st.bytes_allocated) == (0, 0, 0)
    assert st.mallocs == st.frees == 3 * len(SIZES)


def test_realloc_keeps_contents_growing_and_shrinking(heap: DesignHeap) -> None:
    live = Live(heap)
    neighbours = [live.add(64) for _ in range(4)]
    addr = live.add(10)
    for size in [20, 200, 5000, 40_000, 300_000, 1_500_000, 300_000, 5000, 24, 0, 3]:
        old = live.objs.pop(addr)
        new = heap.realloc(addr, size)
        keep = min(len(old), size)
        assert ctypes.string_at(new, keep) == old[:keep], f"{heap.name}: realloc to {size}"
        assert heap.usable_size(new) >= size
        live.fill(new)
        addr = new
        live.intact()
    for a in neighbours:
        live.verify(a)


def test_realloc_in_place_within_the_block(heap: DesignHeap) -> None:
    addr = heap.malloc(100)
    usable = heap.usable_size(addr)
    assert heap.realloc(addr, usable) == addr
    assert heap.realloc(addr, 97) == addr
    assert heap.stats().bytes_in_use == 97
    heap.free(addr)


# -- a model-based property test ---------------------------------------------------------

sizes = st.one_of(
    st.integers(0, 600),
    st.integers(601, 40_000),
    st.sampled_from([16, 17, 32, 33, 256, 257, 1024, 1025, 32768, 32769, 262_144, 262_145]),
    st.integers(262_145, 1_300_000),  # medium and large objects
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("malloc"), sizes),
        st.tuples(st.just("free"), st.integers(0, 1 << 16)),
        st.tuples(st.just("realloc"), st.integers(0, 1 << 16), sizes),
    ),
    max_size=60,
)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=ops)
def test_random_operations_match_a_model(name: str, script: list[tuple[object, ...]]) -> None:
    with make(name) as heap:
        model: dict[int, bytes] = {}  # address -> the pattern over its usable extent
        seq = 0
        for op in script:
            seq += 1
            if op[0] == "malloc":
                size = op[1]
                assert isinstance(size, int)
                addr = heap.malloc(size)
                assert addr not in model
            elif not model:
                continue
            else:
                pick = sorted(model)[int(op[1]) % len(model)]  # type: ignore[call-overload]
                data = model.pop(pick)
                assert ctypes.string_at(pick, len(data)) == data
                if op[0] == "free":
                    heap.free(pick)
                    continue
                size = op[2]
                assert isinstance(size, int)
                addr = heap.realloc(pick, size)
                keep = min(len(data), size)
                assert ctypes.string_at(addr, keep) == data[:keep]
            assert addr % heap.alignment == 0
            usable = heap.usable_size(addr)
            assert usable >= size
            data = pattern(addr, seq, usable)
            ctypes.memmove(addr, data, usable)
            model[addr] = data
        ends = sorted((a, a + max(len(d), 1)) for a, d in model.items())
        for (a0, e0), (a1, _) in pairwise(ends):
            assert e0 <= a1, f"{a0:#x} and {a1:#x} overlap"
        for addr, data in model.items():
            assert ctypes.string_at(addr, len(data)) == data
        st_ = heap.stats()
        assert st_.objects_live == len(model)
        heap.check()
        for addr in list(model):
            heap.free(addr)
        heap.check()
        assert heap.stats().bytes_in_use == 0


# -- the free list: boundary tags and coalescing ---------------------------------------


def tag(addr: int) -> int:
    return ctypes.c_uint64.from_address(addr).value


def test_freelist_coalesces_neighbours_and_reuses_the_merged_block_in_place() -> None:
    with fl.FreeListHeap() as heap:
        a, b, c, guard = (heap.malloc(n) for n in (100, 200, 300, 50))
        blocks = [fl.block_bytes(n) for n in (100, 200, 300)]
        assert (b, c, guard) == (a + blocks[0], b + blocks[1], c + blocks[2])  # back to back
        # Header and footer of an allocated block, in the real memory: size | USED.
        assert tag(a - 8) == tag(a - 16 + blocks[0]) == blocks[0] | fl.USED
        free_before = heap.stats().detail["free_blocks"]
        heap.free(a)
        heap.free(c)
        assert heap.stats().detail["free_blocks"] == free_before + 2
        heap.check()
        heap.free(b)  # both neighbours free: one block from a to c's end
        merged = sum(blocks)
        assert heap.stats().detail["free_blocks"] == free_before + 1
        assert tag(a - 8) == tag(a - 16 + merged) == merged  # free: no USED bit
        heap.check()
        big = heap.malloc(merged - fl.TAGS)  # exactly the merged payload: first fit, in place
        assert big == a
        assert heap.usable_size(big) == merged - fl.TAGS
        ctypes.memset(big, 0x5A, merged - fl.TAGS)
        assert tag(guard - 8) == fl.block_bytes(50) | fl.USED  # the guard's header is intact
        heap.check()
        heap.free(big)
        heap.free(guard)


def test_freelist_realloc_grows_into_a_free_neighbour_and_shrinks_by_splitting() -> None:
    with fl.FreeListHeap() as heap:
        a, b, guard = heap.malloc(100), heap.malloc(1000), heap.malloc(10)
        ctypes.memmove(a, b"x" * 100, 100)
        heap.free(b)
        assert heap.realloc(a, 900) == a  # grows into b's block
        assert ctypes.string_at(a, 100) == b"x" * 100
        assert heap.stats().detail["reallocs_in_place"] == 1
        heap.check()
        assert heap.realloc(a, 40) == a  # shrinks: the tail is free again, merged onwards
        assert heap.usable_size(a) == fl.block_bytes(40) - fl.TAGS
        heap.check()
        heap.free(a)
        heap.free(guard)
        heap.check()


def test_freelist_first_fit_walks_the_list_and_returns_empty_regions() -> None:
    with fl.FreeListHeap() as heap:
        small = [heap.malloc(48) for _ in range(200)]
        for addr in small[::2]:  # 100 free splinters of 64 bytes at the front
            heap.free(addr)
        steps = heap.stats().detail["search_steps"]
        big = heap.malloc(1000)  # walks past every splinter
        assert heap.stats().detail["search_steps"] - steps >= 100
        assert big > small[-1]
        held = heap.stats().bytes_held
        huge = heap.malloc(3 << 20)  # a region of its own
        assert heap.stats().detail["regions"] == 2
        heap.free(huge)  # that region is entirely free: back to the page heap
        assert heap.stats().bytes_held == held
        heap.check()
        for addr in [*small[1::2], big]:
            heap.free(addr)
        heap.check()


def test_freelist_check_finds_a_footer_overwritten_in_memory() -> None:
    with fl.FreeListHeap() as heap:
        a, b = heap.malloc(32), heap.malloc(32)
        footer = a + heap.usable_size(a)  # the first byte past the payload
        saved = tag(footer)
        ctypes.memset(footer, 0xFF, 8)  # an overrun by 8 bytes
        with pytest.raises(HeapCorruption, match="FREELIST-2: block"):
            heap.check()
        ctypes.c_uint64.from_address(footer).value = saved
        heap.check()
        heap.free(a)
        heap.free(b)


# -- segregated lists: waste inside the classes ----------------------------------------


def test_segregated_rounds_up_to_powers_of_two_and_counts_the_waste() -> None:
    requests = [17, 33, 65, 100, 129, 1000, 1025, 5000, 16385, 20000]
    with seg.SegregatedHeap() as heap:
        addrs = [heap.malloc(n) for n in requests]
        usable = [heap.usable_size(a) for a in addrs]
        assert usable == [32, 64, 128, 128, 256, 1024, 2048, 8192, 32768, 32768]
        st = heap.stats()
        assert st.bytes_allocated - st.bytes_in_use == sum(usable) - sum(requests)
        assert st.detail["rounding_waste"] == sum(usable) - sum(requests)
        # Just over a power of two wastes almost half the block:
        assert (heap.usable_size(addrs[6]) - 1025) / heap.usable_size(addrs[6]) > 0.49
        # A freed block serves only its own class: the next 1000-byte request gets
        # it back, a 500-byte one does not.
        heap.free(addrs[5])
        other = heap.malloc(500)
        assert other != addrs[5]
        assert heap.malloc(1000) == addrs[5]
        held = heap.stats().bytes_held
        for a in [*addrs, other]:
            heap.free(a)
        assert heap.stats().bytes_held == held  # blocks never go back to the page heap
        heap.check()


def test_segregated_check_finds_a_live_block_on_a_free_list() -> None:
    with seg.SegregatedHeap() as heap:
        addr = heap.malloc(100)
        lst = heap._free[seg.size_class(100)]
        lst.append(addr)
        with pytest.raises(HeapCorruption, match="SEG-2"):
            heap.check()
        lst.pop()
        heap.check()
        heap.free(addr)


# -- tcmalloc: classes, thread caches, central caches, page heap -----------------------


def test_tcmalloc_size_classes_bound_the_waste() -> None:
    classes = tcm.CLASS_SIZES
    assert classes[0] == 8 and classes[-1] == tcm.MAX_SMALL
    assert all(c % 16 == 0 for c in classes[1:])
    for size in range(tcm.MAX_SMALL + 1):
        c = tcm.size_class(size)
        assert classes[c] >= size and (c == 0 or classes[c - 1] < size), size
        if size > 128:
            assert classes[c] <= size * 1.125, size
    for size, npages in zip(classes, tcm.CLASS_PAGES, strict=True):
        span = npages * PAGE_SIZE
        assert span >= size and span % size <= span // 8


def test_tcmalloc_small_medium_and_large_take_their_paths() -> None:
    with tcm.TCMallocHeap() as heap:
        small = heap.malloc(1000)
        medium = heap.malloc(300_000)  # 37 pages: the page heap's lists
        large = heap.malloc(3 << 20)  # 384 pages: the large set
        d = heap.stats().detail
        assert (d["small_mallocs"], d["medium_mallocs"], d["large_mallocs"]) == (1, 1, 1)
        assert medium % PAGE_SIZE == 0 and large % PAGE_SIZE == 0
        assert heap.usable_size(medium) == 37 * PAGE_SIZE
        heap.check()
        before = heap.stats().detail["chunks_returned"]
        heap.free(large)  # its chunk is entirely free again: back to the page heap
        assert heap.stats().detail["chunks_returned"] == before + 1
        heap.free(medium)
        heap.free(small)
        heap.check()


def test_tcmalloc_a_freeing_thread_keeps_the_object_in_its_own_cache() -> None:
    with tcm.TCMallocHeap() as heap:
        made: queue.Queue[int] = queue.Queue()
        got: list[int] = []

        def producer() -> None:
            made.put(heap.malloc(200))

        def consumer() -> None:
            addr = made.get()
            heap.free(addr)  # into this thread's cache ...
            got.append(heap.malloc(200))  # ... and straight out again, no lock

        t1, t2 = threading.Thread(target=producer), threading.Thread(target=consumer)
        t1.start()
        t2.start()
        t1.join()
        t2.join()
        assert got and heap.usable_size(got[0]) == 208
        heap.check()  # the ended threads' caches were given back on the way
        assert heap.stats().detail["thread_caches"] == 0
        heap.free(got[0])
        heap.check()


def test_tcmalloc_an_ended_threads_cache_goes_back_to_the_page_heap() -> None:
    with tcm.TCMallocHeap() as heap:

        def churn() -> None:
            addrs = [heap.malloc(64) for _ in range(3000)]  # 24 spans of one page
            for a in addrs:
                heap.free(a)

        t = threading.Thread(target=churn)
        t.start()
        t.join()
        del t
        st = heap.stats()  # a slow path: the orphaned cache is given back first
        assert st.detail["thread_caches"] == 0
        assert st.detail["cached_bytes"] == st.detail["central_free_bytes"] == 0
        assert st.bytes_held == 0 and st.detail["chunks_returned"] >= 1
        heap.check()


def test_tcmalloc_thread_caches_keep_locks_off_the_hot_path() -> None:
    with tcm.TCMallocHeap() as heap:
        addrs = [heap.malloc(64) for _ in range(5000)]
        for a in addrs:
            heap.free(a)
        for _ in range(5000):
            heap.free(heap.malloc(64))
        d = heap.stats().detail
        # 15,000 calls; a batch of 32 objects per central lock trip at most.
        assert d["central_lock_trips"] <= 15_000 / 16
        heap.check()


def test_tcmalloc_check_finds_a_live_object_in_a_thread_cache() -> None:
    with tcm.TCMallocHeap() as heap:
        addr = heap.malloc(100)
        lst = heap._local.cache.lists[tcm.size_class(100)]
        lst.append(addr)
        with pytest.raises(HeapCorruption, match="TCM-5"):
            heap.check()
        lst.pop()
        heap.check()
        heap.free(addr)


# -- several threads, cross-thread frees -----------------------------------------------


def test_threads_allocate_and_free_each_others_objects(heap: DesignHeap) -> None:
    handoff: queue.Queue[tuple[int, bytes] | None] = queue.Queue()
    errors: list[BaseException] = []
    nthreads, rounds = 4, 300

    def work(k: int) -> None:
        try:
            mine: list[tuple[int, bytes]] = []
            for i in range(rounds):
                size = [24, 100, 700, 3000, 40_000][(i * 7 + k) % 5]
                addr = heap.malloc(size)
                data = bytes([k, i & 0xFF]) * (size // 2)
                ctypes.memmove(addr, data, len(data))
                if i % 3:
                    mine.append((addr, data))
                else:
                    handoff.put((addr, data))
                if i % 4 == 0:  # free one that another thread made, if any
                    try:
                        item = handoff.get_nowait()
                    except queue.Empty:
                        continue
                    assert item is not None
                    assert ctypes.string_at(item[0], len(item[1])) == item[1]
                    heap.free(item[0])
            for addr, data in mine:
                assert ctypes.string_at(addr, len(data)) == data
                heap.free(addr)
        except BaseException as e:  # re-raised by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    while not handoff.empty():
        item = handoff.get()
        assert item is not None
        assert ctypes.string_at(item[0], len(item[1])) == item[1]
        heap.free(item[0])
    st = heap.stats()
    assert st.objects_live == 0 and st.mallocs == st.frees == nthreads * rounds
    heap.check()


# -- misuse ----------------------------------------------------------------------------


WORK_COUNTERS = ("search_steps", "central_lock_trips", "pageheap_lock_trips")
"""Counters of work done (blocks visited, locks taken): a refused request did that work."""


def state(heap: DesignHeap) -> dict[str, object]:
    """A heap's stats without its work counters."""
    st = heap.stats().to_dict()
    st["detail"] = {k: v for k, v in st["detail"].items() if k not in WORK_COUNTERS}
    return st


def test_bad_arguments_raise_before_anything_changes(heap: DesignHeap) -> None:
    live = Live(heap)
    a = live.add(100)
    big = live.add(300_000)
    other = make("segregated" if heap.name != "segregated" else "freelist")
    foreign = other.malloc(100)
    before = state(heap)
    cases: list[tuple[type[BaseException], object]] = [
        (ArgumentTypeError, lambda: heap.malloc(1.5)),  # type: ignore[arg-type]
        (ArgumentTypeError, lambda: heap.malloc("8")),  # type: ignore[arg-type]
        (ArgumentTypeError, lambda: heap.malloc(True)),
        (InvalidArgumentError, lambda: heap.malloc(-1)),
        (OutOfMemoryError, lambda: heap.malloc(1 << 47)),
        (OutOfMemoryError, lambda: heap.malloc(1 << 45)),  # more than the machine has
        (ArgumentTypeError, lambda: heap.free(None)),  # type: ignore[arg-type]
        (InvalidArgumentError, lambda: heap.free(-8)),
        (ForeignPointerError, lambda: heap.free(0)),
        (ForeignPointerError, lambda: heap.free(foreign)),
        (InteriorPointerError, lambda: heap.free(a + 16)),
        (InteriorPointerError, lambda: heap.free(big + PAGE_SIZE)),
        (InteriorPointerError, lambda: heap.usable_size(a + 8)),
        (InteriorPointerError, lambda: heap.realloc(a + 8, 10)),
        (InvalidArgumentError, lambda: heap.realloc(a, -1)),
        (ArgumentTypeError, lambda: heap.realloc(a, None)),  # type: ignore[arg-type]
        (ForeignPointerError, lambda: heap.usable_size(foreign)),
    ]
    for exc, call in cases:
        with pytest.raises(exc):
            call()  # type: ignore[operator]
    assert state(heap) == before
    live.intact()
    live.free(a)
    for call in (heap.free, heap.usable_size, lambda x: heap.realloc(x, 8)):
        with pytest.raises(DoubleFreeError):
            call(a)
    live.free(big)
    with pytest.raises(DoubleFreeError):
        heap.free(big)
    live.intact()
    other.check()
    other.close()


def test_a_closed_heap_refuses_every_call(heap: DesignHeap) -> None:
    addr = heap.malloc(64)
    mheap = heap.pages.mheap
    heap.close()
    assert mheap.closed and heap.pages.held_bytes == 0
    heap.close()  # again: nothing to do
    for call in (
        lambda: heap.malloc(8),
        lambda: heap.malloc(500_000),
        lambda: heap.free(addr),
        lambda: heap.realloc(addr, 10),
        lambda: heap.usable_size(addr),
        heap.stats,
        heap.check,
    ):
        with pytest.raises(HeapClosedError):
            call()


def test_make_knows_the_designs() -> None:
    assert list(DESIGNS) == ["freelist", "segregated", "tcmalloc"]
    for name, cls in DESIGNS.items():
        with make(name) as h:
            assert type(h) is cls and h.name == name
            h.free(h.malloc(1))
    with pytest.raises(InvalidArgumentError, match="one of freelist, segregated, tcmalloc"):
        make("go")
    with pytest.raises(ArgumentTypeError):
        make(3)  # type: ignore[arg-type]
