"""Giving memory back to the OS: Heap.scavenge, the background scavenger and
the memory limit, measured against the real OS (process RSS through
realalloc.rss() and page residency through mincore).

Every page a test counts on is touched by writing to it.  Heaps here have no
background scavenger unless the test is about it, so RSS and heap_released
move only when the test asks.
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time
from collections.abc import Iterator

import pytest

import realalloc
from realalloc.core import osmem
from realalloc.core.sizeclasses import PAGE_SIZE

MIB = 1 << 20
resident = osmem.resident_bytes


@pytest.fixture
def heap() -> Iterator[realalloc.Heap]:
    with realalloc.Heap(background_scavenger=False) as h:
        yield h


def touch(addr: int, n: int, byte: int) -> None:
    ctypes.memset(addr, byte & 0xFF, n)


def holds(addr: int, n: int, byte: int) -> bool:
    """Whether [addr, addr+n) holds ``byte`` at its start, middle and end."""
    want = bytes([byte & 0xFF]) * 64
    return all(ctypes.string_at(addr + off, 64) == want for off in (0, (n // 2) & ~63, n - 64))


def is_zero(addr: int, n: int) -> bool:
    return ctypes.string_at(addr, n) == bytes(n)


def retained(st: realalloc.MemStats) -> int:
    """What the memory limit caps: mapped and not released, plus metadata."""
    return st.mapped - st.heap_released + st.metadata


def scavenger_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "realalloc-scavenger"}


def settled_rss() -> int:
    gc.collect()
    return realalloc.rss()


# --- Heap.scavenge and RSS ---------------------------------------------------------


def test_512_mib_rss_rises_and_falls_back_after_scavenge(heap):
    size, count = 4 * MIB, 128  # 512 MiB of large objects
    total = size * count
    baseline = settled_rss()
    addrs = []
    for i in range(count):
        addr = heap.malloc(size)
        touch(addr, size, i + 1)  # every page written
        addrs.append(addr)
    grown = realalloc.rss() - baseline
    assert 0.9 * total <= grown <= 1.1 * total, f"RSS grew by {grown / MIB:.1f} MiB"
    st = heap.stats()
    assert st.heap_inuse == st.heap_alloc == total
    assert st.heap_idle == st.heap_released  # the rest of the arenas was never touched
    assert all(holds(a, size, i + 1) for i, a in enumerate(addrs))

    for a in addrs:
        heap.free(a)
    freed = heap.stats()
    freed.check()
    assert freed.heap_inuse == 0
    assert freed.heap_idle - freed.heap_released == total  # free but still resident
    assert realalloc.rss() - baseline >= 0.9 * total  # free alone gives nothing back

    released = heap.scavenge()
    after = heap.stats()
    after.check()
    assert released == total
    assert after.heap_released - freed.heap_released == released
    assert after.released_total - freed.released_total == released
    assert after.heap_released == after.heap_idle == after.heap_sys
    rss_now = realalloc.rss()
    assert rss_now - baseline <= 32 * MIB, f"RSS still {(rss_now - baseline) / MIB:.1f} MiB up"
    assert all(resident(a, size) == 0 for a in addrs)
    assert heap.scavenge() == 0  # nothing left to release
    heap.check()


def test_many_small_objects_rss_falls_back_after_scavenge(heap):
    size, total = 1024, 32 * MIB
    count = total // size
    baseline = settled_rss()
    addrs = [heap.malloc(size) for _ in range(count)]
    for a in addrs:
        touch(a, size, 0x5C)
    assert realalloc.rss() - baseline >= 0.9 * total
    for a in addrs:
        heap.free(a)
    freed = heap.stats()
    released = heap.scavenge()
    after = heap.stats()
    after.check()
    # Only the span this thread's cache still holds stays in use.
    assert after.heap_inuse <= 8 * PAGE_SIZE
    assert released >= total - after.heap_inuse
    assert after.heap_released - freed.heap_released == released
    assert after.heap_idle == after.heap_released
    assert realalloc.rss() - baseline <= 16 * MIB
    heap.check()


def test_scavenge_releases_highest_addresses_first(heap):
    size = 8 * MIB
    a, b = heap.malloc(size), heap.malloc(size)
    keep = heap.malloc(MIB)  # lives through it all
    low, high = sorted((a, b))
    for addr in (low, high):
        touch(addr, size, 0x77)
    touch(keep, MIB, 0x42)
    heap.free(a)
    heap.free(b)
    assert resident(low, size) == resident(high, size) == size
    before = heap.stats()

    assert heap.scavenge(size) == size
    assert resident(high, size) == 0
    assert resident(low, size) == size
    mid = heap.stats()
    assert mid.heap_released - before.heap_released == size

    half = size // 2
    assert heap.scavenge(half) == half  # the top half of the lower region
    assert resident(low + half, half) == 0
    assert resident(low, half) == half

    assert resident(keep, MIB) == MIB and holds(keep, MIB, 0x42)  # in use: untouched
    assert heap.scavenge() == half
    assert resident(low, size) == 0
    assert heap.stats().heap_released - before.heap_released == 2 * size
    heap.check()


def test_scavenge_rounds_up_to_whole_pages(heap):
    assert heap.scavenge(0) == 0
    addr = heap.malloc(MIB)
    touch(addr, MIB, 1)
    assert heap.scavenge(1) == 0  # nothing free and resident
    heap.free(addr)
    assert heap.scavenge(1) == PAGE_SIZE
    assert heap.scavenge(PAGE_SIZE + 1) == 2 * PAGE_SIZE
    assert heap.scavenge(10 * MIB) == MIB - 3 * PAGE_SIZE  # all that was left
    assert heap.stats().heap_idle == heap.stats().heap_released
    heap.check()


def test_released_pages_are_reused_and_read_as_zero(heap):
    size = 16 * MIB
    addr = heap.malloc(size)
    touch(addr, size, 0xAB)
    heap.free(addr)
    assert heap.scavenge() >= size
    before = heap.stats()

    again = heap.malloc(size, zero=False)
    assert again == addr  # the same pages, handed out again
    assert resident(again, size) == 0  # released pages need no clearing: not touched
    assert heap.stats().heap_released == before.heap_released - size
    assert is_zero(again, size)
    touch(again, size, 0x3C)
    assert holds(again, size, 0x3C) and resident(again, size) == size
    heap.free(again)
    heap.check()


def test_released_pages_read_as_zero_for_small_objects(heap):
    def fill_and_free() -> None:  # a thread whose cache goes away with it
        addrs = [heap.malloc(256, zero=False) for _ in range(4096)]  # 1 MiB
        for a in addrs:
            touch(a, 256, 0xEE)
        for a in addrs:
            heap.free(a)

    t = threading.Thread(target=fill_and_free)
    t.start()
    t.join()
    gc.collect()
    heap.reclaim()  # emptied spans go back to the page heap at the next sweep
    st = heap.stats()
    assert st.heap_inuse == 0 and st.heap_idle - st.heap_released >= MIB
    heap.scavenge()
    addrs = [heap.malloc(256, zero=False) for _ in range(4096)]
    assert all(is_zero(a, 256) for a in addrs)  # no 0xEE anywhere
    heap.check()


# --- the background scavenger ------------------------------------------------------


@pytest.mark.slow
def test_background_scavenger_returns_free_pages_and_stops_with_the_heap():
    before = scavenger_threads()
    baseline = settled_rss()
    heap = realalloc.Heap(background_scavenger=True)
    try:
        assert scavenger_threads() == before  # no thread until the heap maps memory
        size = 4 * MIB
        keep = heap.malloc(16 * MIB)
        mine = scavenger_threads() - before
        assert len(mine) == 1
        (thread,) = mine
        assert thread.daemon

        touch(keep, 16 * MIB, 0x11)
        addrs = [heap.malloc(size) for _ in range(64)]  # 256 MiB
        for a in addrs:
            touch(a, size, 0x22)
        for a in addrs:
            heap.free(a)

        deadline = time.monotonic() + 10
        while True:
            st = heap.stats()
            if st.heap_idle - st.heap_released <= 0.1 * st.heap_inuse + MIB:
                break
            assert time.monotonic() < deadline, (
                f"{(st.heap_idle - st.heap_released) / MIB:.1f} MiB of free pages still "
                f"resident beside {st.heap_inuse / MIB:.1f} MiB in use after 10 s"
            )
            time.sleep(0.05)
        st.check()
        assert st.heap_inuse == 16 * MIB
        assert st.released_total >= 256 * MIB - 0.1 * st.heap_inuse - MIB
        assert realalloc.rss() - baseline <= 16 * MIB + 32 * MIB
        assert holds(keep, 16 * MIB, 0x11) and resident(keep, 16 * MIB) == 16 * MIB
        heap.check()
    finally:
        start = time.monotonic()
        heap.close()
        took = time.monotonic() - start
    assert took < 2, f"close took {took:.2f} s"
    assert not thread.is_alive()
    assert scavenger_threads() - before == set()


@pytest.mark.slow
def test_background_scavenger_retains_ten_percent_of_in_use():
    heap = realalloc.Heap(background_scavenger=True)
    with heap:
        keep = heap.malloc(40 * MIB)
        touch(keep, 40 * MIB, 0x01)
        spare = heap.malloc(3 * MIB)  # 7.5% of in-use: within what may stay resident
        touch(spare, 3 * MIB, 0x02)
        heap.free(spare)
        time.sleep(0.5)  # several idle periods of the scavenger
        st = heap.stats()
        assert st.heap_idle - st.heap_released == 3 * MIB
        assert resident(spare, 3 * MIB) == 3 * MIB
        heap.check()


def test_no_scavenger_thread_when_disabled():
    before = scavenger_threads()
    with realalloc.Heap(background_scavenger=False) as h:
        h.malloc(MIB)
        assert scavenger_threads() - before == set()


def test_scavenger_thread_ends_when_the_heap_is_dropped():
    before = scavenger_threads()
    h = realalloc.Heap(background_scavenger=True)
    h.malloc(100)  # the first mapping starts the thread
    (thread,) = scavenger_threads() - before
    del h
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


# --- the memory limit ----------------------------------------------------------------


def test_memory_limit_is_never_exceeded_and_oom_leaves_objects_intact(heap):
    limit = 48 * MIB
    heap.set_memory_limit(limit)
    objs: list[int] = []
    with pytest.raises(realalloc.OutOfMemoryError) as info:
        for i in range(200):
            addr = heap.malloc(MIB)
            touch(addr, MIB, i)
            objs.append(addr)
            assert retained(heap.stats()) <= limit
    assert isinstance(info.value, MemoryError)
    assert "limit" in str(info.value)
    assert 44 <= len(objs) < 48  # nearly all of the limit was usable
    st = heap.stats()
    assert retained(st) <= limit
    assert st.large_allocs == len(objs) == st.heap_objects
    assert all(holds(a, MIB, i) for i, a in enumerate(objs))
    heap.check()

    tags = {a: i for i, a in enumerate(objs)}
    for a in objs[:8]:  # room again
        heap.free(a)
        del tags[a]
    for i in range(6):
        addr = heap.malloc(MIB)
        touch(addr, MIB, 0xF0 + i)
        tags[addr] = 0xF0 + i
        assert retained(heap.stats()) <= limit
    assert all(holds(a, MIB, t) for a, t in tags.items())
    heap.check()


def test_memory_limit_scavenges_free_pages_instead_of_failing(heap):
    limit = 48 * MIB
    heap.set_memory_limit(limit)
    objs = []
    for i in range(40):  # 40 MiB, all touched
        addr = heap.malloc(MIB)
        touch(addr, MIB, i)
        objs.append(addr)
    for a in objs[::2]:  # 20 isolated free 1 MiB holes, still resident
        heap.free(a)
    before = heap.stats()
    assert before.heap_idle - before.heap_released == 20 * MIB

    # 2 MiB objects fit in no hole: 16 MiB of fresh pages would pass the limit
    # unless the holes are released first.
    big = []
    most = 0
    for j in range(8):
        addr = heap.malloc(2 * MIB)
        touch(addr, 2 * MIB, 0xB0 + j)
        big.append(addr)
        most = max(most, retained(heap.stats()))
    after = heap.stats()
    assert after.released_total > before.released_total
    assert after.heap_released > before.heap_released - 16 * MIB  # holes were released
    assert all(holds(a, MIB, i) for i, a in enumerate(objs) if i % 2)
    assert all(holds(a, 2 * MIB, 0xB0 + j) for j, a in enumerate(big))
    heap.check()
    assert most <= limit, f"retained reached {most}, {most - limit} bytes over the limit"


def test_failed_allocation_changes_no_object_counts(heap):
    heap.malloc(MIB)
    heap.set_memory_limit(4 * MIB)
    before = heap.stats()
    with pytest.raises(realalloc.OutOfMemoryError):
        heap.malloc(8 * MIB)
    with pytest.raises(MemoryError):
        heap.malloc(5 * MIB, scan=True)
    after = heap.stats()
    for name in ("mallocs", "frees", "heap_objects", "heap_alloc", "heap_inuse", "large_allocs"):
        assert getattr(after, name) == getattr(before, name), name
    heap.check()


def test_memory_limit_none_removes_it(heap):
    heap.set_memory_limit(8 * MIB)
    with pytest.raises(realalloc.OutOfMemoryError):
        heap.malloc(16 * MIB)
    heap.set_memory_limit(None)
    addr = heap.malloc(16 * MIB)
    touch(addr, 16 * MIB, 9)
    assert holds(addr, 16 * MIB, 9)
    assert retained(heap.stats()) > 16 * MIB
    heap.check()


def test_lowering_the_limit_below_the_heap_releases_free_pages_first(heap):
    addrs = [heap.malloc(MIB) for _ in range(24)]
    for a in addrs:
        touch(a, MIB, 5)
    for a in addrs[:16]:
        heap.free(a)
    heap.set_memory_limit(12 * MIB)  # 16 MiB free + 8 MiB live are resident now
    addr = heap.malloc(2 * MIB)  # fits once the free pages are released
    touch(addr, 2 * MIB, 6)
    assert retained(heap.stats()) <= 12 * MIB
    assert all(holds(a, MIB, 5) for a in addrs[16:])
    heap.check()


@pytest.mark.parametrize("size", [512, 40_000, MIB])
def test_memory_limit_holds_when_an_allocation_adds_metadata(heap, size):
    """The limit covers metadata, so an allocation whose new span or arena
    needs more metadata must count it too: with the limit just above one
    object, either the object fits with its metadata or malloc refuses."""
    limit = MIB + 16 * 1024
    heap.set_memory_limit(limit)
    n = 0
    with pytest.raises(realalloc.OutOfMemoryError):
        for n in range(1, 100_000):
            heap.malloc(size)
            st = heap.stats()
            assert retained(st) <= limit, (
                f"object {n}: retained {retained(st)} > limit {limit} (metadata {st.metadata})"
            )
    heap.check()


@pytest.mark.parametrize("bad", [-1, -(1 << 70)])
def test_negative_nbytes_are_invalid(heap, bad):
    with pytest.raises(realalloc.InvalidArgumentError):
        heap.set_memory_limit(bad)
    with pytest.raises(ValueError):
        heap.scavenge(bad)


@pytest.mark.parametrize("bad", [1.5, 1e9, "100", True, b"1"])
def test_non_int_nbytes_are_type_errors(heap, bad):
    with pytest.raises(realalloc.ArgumentTypeError):
        heap.set_memory_limit(bad)
    with pytest.raises(TypeError):
        heap.scavenge(bad)


def test_a_rejected_limit_leaves_the_old_one(heap):
    heap.set_memory_limit(4 * MIB)
    with pytest.raises(realalloc.InvalidArgumentError):
        heap.set_memory_limit(-5)
    with pytest.raises(realalloc.ArgumentTypeError):
        heap.set_memory_limit(100.0)
    with pytest.raises(realalloc.OutOfMemoryError):
        heap.malloc(8 * MIB)
    heap.check()


def test_closed_heap_refuses_scavenge_and_limit():
    h = realalloc.Heap(background_scavenger=False)
    h.close()
    with pytest.raises(realalloc.HeapClosedError):
        h.scavenge()
    with pytest.raises(realalloc.HeapClosedError):
        h.set_memory_limit(MIB)
