"""Pins and Pinners (Go: runtime.Pinner): pinned objects and what they reach
survive every cycle until unpinned; Pinner.malloc allocates pinned in one
step, which makes allocation safe on several threads; bad input is refused
with the value named and nothing changed."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator

import pytest
from gc_support import WORD, Nodes, Roots, live, load, store
from support import addr_re, pattern, run_threads

import realalloc


@pytest.fixture
def heap() -> Iterator[realalloc.Heap]:
    h = realalloc.Heap(gc=True, background_scavenger=False)
    h.set_gc_percent(-1)
    yield h
    h.close()


def collect(heap: realalloc.Heap) -> None:
    heap.collect()
    heap.check()


def test_pinned_object_and_what_it_reaches_survive(heap: realalloc.Heap) -> None:
    a = heap.malloc(64, scan=True)
    heap.pin(a)
    nodes = Nodes(heap)
    chain = nodes.chain(a + 8, 10)
    noscan = heap.malloc(64)
    heap.pin(noscan)
    hidden = heap.malloc(64, scan=True)
    store(noscan, hidden)  # a pinned noscan object is kept, not scanned
    collect(heap)
    assert live(heap, a) and all(live(heap, n) for n in chain) and live(heap, noscan)
    assert not live(heap, hidden)
    nodes.intact(chain)
    heap.unpin(a)
    heap.unpin(noscan)
    collect(heap)
    assert not live(heap, a) and not any(live(heap, n) for n in chain) and not live(heap, noscan)
    assert heap.stats().heap_objects == 0


def test_pins_count(heap: realalloc.Heap) -> None:
    a = heap.malloc(32, scan=True)
    heap.pin(a)
    heap.pin(a)
    heap.unpin(a)
    collect(heap)
    assert live(heap, a)
    heap.unpin(a)
    collect(heap)
    assert not live(heap, a)


def test_tiny_pieces_and_large_objects_pin(heap: realalloc.Heap) -> None:
    piece = heap.malloc(3)
    other = heap.malloc(5)  # the same 16-byte block
    big = heap.malloc(100_000, scan=True)
    heap.pin(piece)
    heap.pin(big)
    target = heap.malloc(48, scan=True)
    store(big + 90_000, target)
    collect(heap)
    assert live(heap, piece) and live(heap, other) and live(heap, big) and live(heap, target)
    heap.unpin(big)
    collect(heap)
    assert not live(heap, big) and not live(heap, target) and live(heap, piece)


def test_pin_errors_name_the_value_and_change_nothing(heap: realalloc.Heap) -> None:
    a = heap.malloc(64, scan=True)
    heap.pin(a)
    freed = heap.malloc(64, scan=True)
    heap.free(freed)
    foreign = ctypes.addressof(ctypes.create_string_buffer(64))
    cases = [
        (lambda: heap.pin(a + 8), realalloc.InteriorPointerError, rf"pin\({addr_re(a + 8)}\)"),
        (lambda: heap.pin(foreign), realalloc.ForeignPointerError, addr_re(foreign)),
        (lambda: heap.pin(freed), realalloc.DoubleFreeError, rf"pin\({addr_re(freed)}\)"),
        (lambda: heap.pin(1 << 70), realalloc.ForeignPointerError, "pin"),
        (lambda: heap.pin("x"), realalloc.ArgumentTypeError, "pin: address must be an int"),
        (lambda: heap.unpin(freed), realalloc.InvalidArgumentError, r"is not pinned"),
        (lambda: heap.unpin(a + 8), realalloc.InvalidArgumentError, addr_re(a + 8)),
        (lambda: heap.free(a), realalloc.GCError, rf"free\({addr_re(a)}\): the object is pinned"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    assert heap._gc.pins == {a: 1}
    collect(heap)
    assert live(heap, a)
    heap.unpin(a)
    heap.free(a)  # unpinned: free works
    heap.check()


def test_pinner_unpins_on_exit_and_is_reusable(heap: realalloc.Heap) -> None:
    roots = Roots(heap, 1)
    with heap.pinner() as p:
        objs = [p.malloc(48, scan=True) for _ in range(20)]
        old = heap.malloc(48, scan=True)
        roots[0] = old
        assert p.pin(old) == old
        assert p.pinned == (*objs, old)
        for o in objs:
            ctypes.memmove(o + 8, pattern(o, 1, 40), 40)
        collect(heap)
        assert all(live(heap, o) for o in objs)
        assert all(ctypes.string_at(o + 8, 40) == pattern(o, 1, 40) for o in objs)
        # link half of them: they outlive the Pinner
        for prev, o in zip(objs[0:10:2], objs[2:12:2], strict=True):
            store(prev, o)
        store(old, objs[0])
        assert "21 object" in repr(p)
    assert p.pinned == () and heap._gc.pins == {}
    collect(heap)
    survivors = [o for o in objs if live(heap, o)]
    assert survivors == objs[0:12:2]
    p.unpin()  # nothing pinned: a no-op
    a = p.malloc(16, scan=True, zero=False)
    assert heap._gc.pins == {a: 1}
    p.unpin()
    collect(heap)
    assert not live(heap, a)


def test_pinner_survives_a_manual_unpin(heap: realalloc.Heap) -> None:
    p = heap.pinner()
    a = p.malloc(64, scan=True)
    heap.unpin(a)  # undone behind the Pinner's back
    p.unpin()  # skips it
    assert heap._gc.pins == {}
    collect(heap)
    assert not live(heap, a)


def test_pinner_malloc_on_eight_threads(heap: realalloc.Heap) -> None:
    """Eight threads allocate pinned nodes, link them into their own chains
    under a shared root array, drop old chains; other threads collect all
    along (explicitly and through the pacer).  No reached node is freed."""
    heap.set_gc_percent(10)  # cycles often
    nthreads, rounds = 8, 30
    roots = Roots(heap, nthreads)
    done = threading.Barrier(nthreads)

    def worker(t: int) -> None:
        try:
            mine: dict[int, bytes] = {}
            for r in range(rounds):
                with heap.pinner() as p:
                    head = p.malloc(64, scan=True)
                    data = pattern(head, r, 56)
                    ctypes.memmove(head + WORD, data, 56)
                    chain = {head: data}
                    node = head
                    for k in range(20):
                        nxt = p.malloc(64 if k % 3 else 2000, scan=True)
                        size = 56 if k % 3 else 1992
                        d = pattern(nxt, r * 100 + k, size)
                        ctypes.memmove(nxt + WORD, d, size)
                        store(node, nxt)
                        chain[nxt] = d
                        node = nxt
                    roots[t] = head  # the new chain replaces the old one
                # Garbage at once (never linked): ~0.8 MiB per thread between forced
                # cycles, more than the room they leave, so refills need fresh spans
                # and the pacer (which looks there) runs cycles too.
                for _ in range(24):
                    heap.malloc(4096, scan=True)
                mine = chain
                if r % 15 == 14:
                    heap.collect()
                for addr, d in mine.items():
                    assert ctypes.string_at(addr + WORD, len(d)) == d, f"{addr:#x} changed"
            done.wait()
        except BaseException:
            done.abort()  # the others stop waiting for this thread
            raise

    run_threads(nthreads, worker)
    heap.collect()
    heap.check()
    st = heap.stats()
    assert st.num_gc > 8 and st.num_gc > st.num_forced_gc  # the pacer ran cycles too
    assert st.heap_objects == nthreads * 21
    for t in range(nthreads):
        node, n = roots[t], 0
        while node:
            n += 1
            node = load(node)
        assert n == 21
