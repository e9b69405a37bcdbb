"""Garbage collection over real memory: what survives a cycle and what does not.

Every scenario builds structures of scan objects linked through real words,
collects, then checks which objects are live (``usable_size``), that every
survivor kept its bytes, the statistics, and ``check()`` (GC-1..3 among the
rest).  Automatic cycles are off (``set_gc_percent(-1)``) unless a test is
about them, so a cycle happens exactly where a test calls ``collect``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

import pytest
from gc_support import WORD, Nodes, Roots, live, load, store
from support import addr_re, pattern

import realalloc
from realalloc.core.sizeclasses import PAGE_SIZE


@pytest.fixture
def heap() -> Iterator[realalloc.Heap]:
    h = realalloc.Heap(gc=True, background_scavenger=False)
    h.set_gc_percent(-1)
    yield h
    h.close()


def collect(heap: realalloc.Heap) -> realalloc.MemStats:
    heap.collect()
    heap.check()
    return heap.stats()


# -- the collected heap ------------------------------------------------------------


def test_gc_is_a_choice_of_the_heap() -> None:
    with realalloc.Heap(background_scavenger=False) as plain:
        assert not plain.gc and type(plain) is realalloc.Heap
        calls = {
            "collect": plain.collect,
            "set_gc_percent": lambda: plain.set_gc_percent(50),
            "add_root": lambda: plain.add_root(0x1000, 8),
            "remove_root": lambda: plain.remove_root(0x1000),
            "pin": lambda: plain.pin(0x1000),
            "unpin": lambda: plain.unpin(0x1000),
            "pinner": plain.pinner,
            "set_finalizer": lambda: plain.set_finalizer(0x1000, print),
        }
        for name, call in calls.items():
            with pytest.raises(realalloc.GCError, match=rf"^{name}: this heap has no garbage"):
                call()
        st = plain.stats()
        assert (st.num_gc, st.next_gc, st.pause_total_ns, st.gc_cpu_fraction) == (0, 0, 0, 0.0)
    with pytest.raises(realalloc.ArgumentTypeError, match="gc must be a bool, not int"):
        realalloc.Heap(gc=1)  # type: ignore[arg-type]
    with realalloc.Heap(gc=True, background_scavenger=False) as collected:
        assert collected.gc and isinstance(collected, realalloc.Heap)
        assert collected.stats().next_gc == 4 << 20  # heapMinimum at GOGC=100


def test_unreached_objects_are_freed_reached_ones_kept(heap: realalloc.Heap) -> None:
    roots = Roots(heap, 4)
    nodes = Nodes(heap)
    kept = nodes.chain(roots.address, 50)
    lost = [heap.malloc(48, scan=True) for _ in range(30)]  # never linked
    before = heap.stats()
    st = collect(heap)
    assert all(live(heap, a) for a in kept)
    assert not any(live(heap, a) for a in lost)
    nodes.intact(kept)
    assert st.heap_objects == before.heap_objects - 30 == 50
    assert st.heap_alloc == 50 * 64
    assert st.frees == before.frees + 30
    assert (st.num_gc, st.num_forced_gc) == (1, 1)
    with pytest.raises(realalloc.DoubleFreeError, match=addr_re(lost[0])):
        heap.free(lost[0])  # the collector freed it: a second free is a double free
    heap.check()


def test_cutting_a_chain_frees_its_tail(heap: realalloc.Heap) -> None:
    roots = Roots(heap, 1)
    nodes = Nodes(heap)
    chain = nodes.chain(roots.address, 100)
    store(nodes.link(chain[39], 0), 0)
    collect(heap)
    assert all(live(heap, a) for a in chain[:40])
    assert not any(live(heap, a) for a in chain[40:])
    nodes.intact(chain[:40])
    roots[0] = 0
    st = collect(heap)
    assert st.heap_objects == 0 and st.heap_alloc == 0
    assert not any(live(heap, a) for a in chain)


def test_cycles_go_when_unreached_and_stay_when_reached(heap: realalloc.Heap) -> None:
    roots = Roots(heap, 2)
    nodes = Nodes(heap)
    for slot in range(2):
        ring = nodes.chain(roots.address + slot * WORD, 20)
        store(nodes.link(ring[-1], 0), ring[0])  # close the ring
        store(nodes.link(ring[0], 1), ring[10])  # and a chord
    rings = list(nodes.data)
    roots[1] = 0  # the second ring is reached by nothing now
    collect(heap)
    assert [live(heap, a) for a in rings] == [True] * 20 + [False] * 20
    nodes.intact(rings[:20])


def test_interior_pointers_keep_their_object(heap: realalloc.Heap) -> None:
    roots = Roots(heap, 4)
    sizes = (1000, 48, 4096, 100_000)
    objs = []
    for i, size in enumerate(sizes):
        objs.append(heap.malloc(size, scan=True))
        roots[i] = objs[-1] + (500, 47, 4095, 99_999)[i]  # the middle, then last bytes
    lost = heap.malloc(48, scan=True)
    collect(heap)
    assert all(live(heap, a) for a in objs)
    assert not live(heap, lost)
    # One past the end points at the next slot (free now): it keeps nothing.
    roots[1] = objs[1] + 48
    collect(heap)
    assert not live(heap, objs[1])


def test_pointers_held_only_by_noscan_objects_do_not_retain(heap: realalloc.Heap) -> None:
    roots = Roots(heap, 2)
    holder = heap.malloc(64, scan=False)
    roots[0] = holder
    target = heap.malloc(64, scan=True)
    store(holder, target)
    scan_holder = heap.malloc(64, scan=True)
    roots[1] = scan_holder
    target2 = heap.malloc(64, scan=True)
    store(scan_holder + 8, target2)
    collect(heap)
    assert live(heap, holder) and not live(heap, target)
    assert live(heap, scan_holder) and live(heap, target2)


def test_pointers_into_freed_memory_are_ignored(heap: realalloc.Heap) -> None:
    roots = Roots(heap, 3)
    a = heap.malloc(64, scan=True)
    roots[0] = a
    heap.free(a)  # freed explicitly: the root word now points at a free slot
    big = heap.malloc(200_000, scan=True)
    roots[1] = big + 5000
    heap.free(big)  # a freed large object: its span may wait for reuse
    roots[2] = 0xDEAD_BEEF_0000  # and one that is not memory at all
    st = collect(heap)
    assert st.heap_objects == 0 and st.heap_alloc == 0
    assert not live(heap, a) and not live(heap, big)


def test_explicit_free_keeps_working(heap: realalloc.Heap) -> None:
    roots = Roots(heap, 1)
    nodes = Nodes(heap)
    chain = nodes.chain(roots.address, 10)
    heap.free(chain[-1])
    store(nodes.link(chain[-2], 0), 0)
    st = collect(heap)
    assert st.heap_objects == 9
    with pytest.raises(realalloc.DoubleFreeError):
        heap.free(chain[-1])
    heap.free(chain[0])  # reached from a root, freed anyway: explicit free wins
    roots[0] = 0
    st = collect(heap)
    assert st.heap_objects == 0


def test_tiny_block_is_freed_only_when_no_piece_is_reached(heap: realalloc.Heap) -> None:
    roots = Roots(heap, 2)
    pieces = [heap.malloc(n, scan=False) for n in (4, 4, 8)]  # one 16-byte block
    assert len({p // 16 for p in pieces}) == 1
    for p, n in zip(pieces, (4, 4, 8), strict=True):
        ctypes.memmove(p, pattern(p, 1, n), n)
    roots[0] = pieces[1]  # the middle piece only
    before = heap.stats()
    st = collect(heap)
    assert all(live(heap, p) for p in pieces)  # the block lives whole
    assert st.tiny_frees == before.tiny_frees
    for p, n in zip(pieces, (4, 4, 8), strict=True):
        assert ctypes.string_at(p, n) == pattern(p, 1, n)
    heap.free(pieces[0])  # explicit frees of pieces still work
    roots[0] = 0
    st = collect(heap)
    assert not any(live(heap, p) for p in pieces)
    assert st.tiny_frees == before.tiny_frees + 3  # one explicit, two by the collector
    assert st.tiny_pieces - st.tiny_frees == 0 and st.heap_objects == 0


def test_large_scan_objects_are_scanned_to_their_end(heap: realalloc.Heap) -> None:
    roots = Roots(heap, 1)
    big = heap.malloc(3 << 20, scan=True)  # 24 oblets of 128 KiB
    roots[0] = big
    targets = []
    for off in (0, 128 << 10, (3 << 20) - 8, (2 << 20) + 24):
        targets.append(heap.malloc(96, scan=True))
        store(big + off, targets[-1])
    noscan_big = heap.malloc(1 << 20, scan=False)
    store(targets[0], noscan_big)
    hidden = heap.malloc(96, scan=True)
    store(noscan_big + 4096, hidden)  # inside a noscan large object: not scanned
    garbage = heap.malloc(5 << 20, scan=True)
    before = heap.stats()
    st = collect(heap)
    assert all(live(heap, t) for t in (big, noscan_big, *targets))
    assert not live(heap, hidden) and not live(heap, garbage)
    assert st.large_frees == before.large_frees + 1
    assert st.heap_alloc == (3 << 20) + (1 << 20) + 4 * 96


def test_roots_come_and_go(heap: realalloc.Heap) -> None:
    nodes = Nodes(heap)
    roots = Roots(heap, 8)
    chain = nodes.chain(roots.address + 3 * WORD, 5)
    collect(heap)
    assert all(live(heap, a) for a in chain)
    roots.remove()
    collect(heap)
    assert not any(live(heap, a) for a in chain)
    # A root range inside a heap object: a noscan object used as a root is scanned.
    block = heap.malloc(256, scan=False)
    heap.add_root(block, 256)
    kept = heap.malloc(32, scan=True)
    store(block + 128, kept)
    collect(heap)
    assert live(heap, kept) and live(heap, block) is False  # the root range keeps no object
    heap.remove_root(block)


def test_root_errors_name_the_value_and_change_nothing(heap: realalloc.Heap) -> None:
    roots = Roots(heap, 2)
    with pytest.raises(
        realalloc.InvalidArgumentError, match=rf"add_root\({addr_re(roots.address)}"
    ):
        heap.add_root(roots.address, 8)
    with pytest.raises(realalloc.InvalidArgumentError, match=r"remove_root.*no root range"):
        heap.remove_root(roots.address + 8)
    with pytest.raises(realalloc.InvalidArgumentError, match="nbytes must be >= 1, got 0"):
        heap.add_root(0x1000, 0)
    with pytest.raises(realalloc.ArgumentTypeError, match="address must be an int, not float"):
        heap.add_root(1.5, 8)  # type: ignore[arg-type]
    with pytest.raises(realalloc.ArgumentTypeError, match="nbytes must be an int, not str"):
        heap.add_root(0x1000, "8")  # type: ignore[arg-type]
    with pytest.raises(realalloc.ForeignPointerError, match="remove_root"):
        heap.remove_root(-1)
    nodes = Nodes(heap)
    chain = nodes.chain(roots.address, 3)
    collect(heap)
    assert all(live(heap, a) for a in chain)  # the range is still registered, once


def test_buffers_are_roots_while_they_live(heap: realalloc.Heap) -> None:
    buf = heap.alloc(64, scan=True)
    target = heap.malloc(64, scan=True)
    store(buf.address, target)
    nb = heap.alloc(64)  # noscan: kept, but not scanned
    lost = heap.malloc(64, scan=True)
    store(nb.address, lost)
    collect(heap)
    assert live(heap, target) and live(heap, buf.address) and not live(heap, lost)
    with pytest.raises(realalloc.InvalidArgumentError, match="memory of a live Buffer"):
        heap.pin(buf.address)
    with pytest.raises(realalloc.InvalidArgumentError, match="memory of a live Buffer"):
        heap.set_finalizer(buf.address, print)
    addr = buf.address
    del buf  # the Buffer frees its object; what it reached is garbage now
    collect(heap)
    assert not live(heap, addr) and not live(heap, target)
    freed = heap.alloc(32, scan=True)
    freed.free()
    st = collect(heap)
    assert st.heap_objects == 1  # nb


def test_heap_stats_reflect_collections(heap: realalloc.Heap) -> None:
    roots = Roots(heap, 1)
    nodes = Nodes(heap)
    nodes.chain(roots.address, 10)
    for _ in range(100):
        heap.malloc(128, scan=True)
    before = heap.stats()
    assert before.num_gc == 0 and before.last_gc == 0
    for _ in range(3):
        heap.collect()
    st = heap.stats()
    assert (st.num_gc, st.num_forced_gc) == (3, 3)
    assert st.heap_objects == 10 and st.heap_alloc == 640
    assert st.next_gc == (1 << 64) - 1  # automatic cycles are off
    assert st.pause_total_ns == sum(st.pause_ns) > 0
    assert st.pause_ns[3:] == (0,) * 253 and all(st.pause_ns[:3])
    assert 0 < st.gc_cpu_fraction < 1
    assert st.last_gc > 0
    st.check()
    heap.check()


def test_pause_history_is_circular_as_go(heap: realalloc.Heap) -> None:
    for _ in range(260):
        heap.collect()
    st = heap.stats()
    assert st.num_gc == 260
    latest = heap._gc.last
    assert latest is not None and st.pause_ns[(st.num_gc + 255) % 256] == latest.pause
    assert all(st.pause_ns)


def test_next_gc_follows_the_pacer(heap: realalloc.Heap) -> None:
    roots = Roots(heap, 1)
    assert heap.set_gc_percent(100) == -1
    big = heap.malloc(6 << 20, scan=True)
    roots[0] = big
    collect(heap)
    live_bytes = heap.stats().heap_alloc
    assert live_bytes == 6 << 20
    assert heap.stats().next_gc == live_bytes + (live_bytes + 8) * 100 // 100
    assert heap.set_gc_percent(50) == 100
    assert heap.stats().next_gc == live_bytes + (live_bytes + 8) * 50 // 100
    assert heap.set_gc_percent(-7) == 50
    assert heap.set_gc_percent(-1) == -1  # negative values are stored as -1, as Go
    assert heap.stats().next_gc == (1 << 64) - 1
    with pytest.raises(realalloc.ArgumentTypeError, match=r"percent must be an int, not float"):
        heap.set_gc_percent(1.5)  # type: ignore[arg-type]
    with pytest.raises(realalloc.ArgumentTypeError, match=r"not bool"):
        heap.set_gc_percent(True)
    assert heap.set_gc_percent(10) == -1  # nothing changed by the refusals


def test_collect_inside_the_heap_is_refused(heap: realalloc.Heap) -> None:
    with pytest.raises(realalloc.ReentrancyError):
        heap._inside(heap.collect)
    heap.check()


def test_closed_heap_refuses_collection() -> None:
    heap = realalloc.Heap(gc=True, background_scavenger=False)
    heap.close()
    with pytest.raises(realalloc.HeapClosedError):
        heap.collect()
    with pytest.raises(realalloc.HeapClosedError):
        heap.pin(0x1000)


def test_many_spans_and_classes_swept(heap: realalloc.Heap) -> None:
    """Every small class and large sizes, half of them reached: the books
    balance (GC-2) and every span was swept (GC-1)."""
    roots = Roots(heap, 4000)
    sizes = [8, 16, 24, 100, 500, 1024, 3000, 8192, 20000, 32768, 40000, 300_000]
    kept, lost = [], []
    for i in range(2000):
        size = sizes[i % len(sizes)]
        addr = heap.malloc(size, scan=bool(i & 2))
        if i & 1:
            roots[i] = addr
            kept.append(addr)
        else:
            lost.append(addr)
    st = collect(heap)
    assert all(live(heap, a) for a in kept) and not any(live(heap, a) for a in lost)
    assert st.heap_objects == len(kept)
    rec = heap._gc.last
    assert rec is not None and rec.spans_swept == rec.spans_live > 0
    # Spans emptied by the sweep went back or wait empty: the heap shrank in use.
    assert st.heap_inuse < heap._gc.last.heap0 + 64 * PAGE_SIZE + st.heap_alloc * 2


def test_check_names_broken_gc_invariants(heap: realalloc.Heap) -> None:
    import dataclasses

    roots = Roots(heap, 1)
    Nodes(heap).chain(roots.address, 3)
    heap.collect()
    gc = heap._gc
    good = gc.last
    assert good is not None
    gc.last = dataclasses.replace(good, spans_swept=good.spans_live + 1)
    with pytest.raises(realalloc.HeapCorruption, match=r"^GC-1"):
        heap.check()
    gc.last = dataclasses.replace(good, freed=good.freed + 1)
    with pytest.raises(realalloc.HeapCorruption, match=r"^GC-2"):
        heap.check()
    gc.last = good
    gc.sweepgen += 2
    with pytest.raises(realalloc.HeapCorruption, match=r"^GC-1"):
        heap.check()
    gc.sweepgen -= 2
    gc.pins[roots.address] = 1  # not an object of the heap
    with pytest.raises(realalloc.HeapCorruption, match=r"^GC-3"):
        heap.check()
    del gc.pins[roots.address]
    heap.check()


def test_loads_and_stores_are_real(heap: realalloc.Heap) -> None:
    """The helpers write the words the collector reads (sanity of the tests)."""
    a = heap.malloc(16, scan=True)
    store(a, 0x1234)
    assert load(a) == 0x1234


def test_slots_freed_in_a_cached_span_are_zeroed_after_a_cycle(heap: realalloc.Heap) -> None:
    """A thread frees into its cached span with plain stores; the cycle takes
    the span back: its free slots must be zeroed when reused, or old words
    (here pointers to garbage) would come back in 'zeroed' memory."""
    roots = Roots(heap, 16)
    objs = [heap.malloc(64, scan=True) for _ in range(10)]
    for i, o in enumerate(objs):
        roots[i] = o
        ctypes.memset(o, 0xAB, 64)
    for i in range(2, 8):
        roots[i] = 0
        heap.free(objs[i])  # local frees: this thread's cache holds the span
    collect(heap)
    fresh = [heap.malloc(64, scan=True) for _ in range(6)]
    assert all(ctypes.string_at(f, 64) == bytes(64) for f in fresh)
