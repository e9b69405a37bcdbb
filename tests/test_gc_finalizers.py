"""Finalizers (Go: runtime.SetFinalizer): run once, on the finalizer thread,
after a cycle found the object unreachable; the object and what it reaches
live through that cycle (and while the finalizer is queued or running);
resurrection; Go's ordering for chains of finalizable objects; bad input."""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Iterator

import pytest
from gc_support import Nodes, Roots, live, load, store
from support import addr_re, pattern

import realalloc


@pytest.fixture
def heap() -> Iterator[realalloc.Heap]:
    h = realalloc.Heap(gc=True, background_scavenger=False)
    h.set_gc_percent(-1)
    yield h
    h.close()


def drain(heap: realalloc.Heap) -> None:
    """Wait until every queued finalizer has run."""
    deadline = time.monotonic() + 30
    while heap._gc.due:
        assert time.monotonic() < deadline, "finalizers did not run"
        time.sleep(0.001)


class Log:
    """A finalizer that records (addr, thread, bytes of the object when it ran)."""

    def __init__(self, nbytes: int = 0) -> None:
        self.calls: list[tuple[int, int, bytes]] = []
        self.nbytes = nbytes

    def __call__(self, addr: int) -> None:
        self.calls.append((addr, threading.get_ident(), ctypes.string_at(addr, self.nbytes)))


def test_runs_once_on_another_thread_after_the_object_became_unreachable(
    heap: realalloc.Heap,
) -> None:
    roots = Roots(heap, 1)
    nodes = Nodes(heap)
    obj = nodes.new_into(roots.address)
    reached = nodes.chain(nodes.link(obj, 0), 5)  # what it reaches
    log = Log(64)
    heap.set_finalizer(obj, log)
    heap.collect()
    drain(heap)
    assert log.calls == []  # reachable: nothing runs
    roots[0] = 0
    heap.collect()  # queued; the object and what it reaches survive this cycle
    heap.check()
    assert live(heap, obj) and all(live(heap, n) for n in reached)
    drain(heap)
    assert [c[0] for c in log.calls] == [obj]
    assert log.calls[0][1] != threading.get_ident()
    assert log.calls[0][2][16:] == nodes.data[obj]  # it ran on the intact object
    nodes.intact(reached)
    heap.collect()  # after the finalizer ran: an ordinary unreachable object
    heap.check()
    assert not live(heap, obj) and not any(live(heap, n) for n in reached)
    heap.collect()
    drain(heap)
    assert len(log.calls) == 1  # once
    assert heap.stats().heap_objects == 0


def test_queued_finalizers_keep_their_object_until_they_ran(heap: realalloc.Heap) -> None:
    gate = threading.Event()
    seen: list[bytes] = []
    obj = heap.malloc(48, scan=True)
    ctypes.memmove(obj, pattern(obj, 3, 48), 48)

    def slow(addr: int) -> None:
        gate.wait(30)
        seen.append(ctypes.string_at(addr, 48))

    heap.set_finalizer(obj, slow)
    heap.collect()  # queued; the thread waits at the gate
    with pytest.raises(realalloc.GCError, match="its finalizer is queued"):
        heap.free(obj)
    for _ in range(3):
        heap.collect()  # the queue is a root: the object stays
        heap.check()
        assert live(heap, obj)
    gate.set()
    drain(heap)
    assert seen == [pattern(obj, 3, 48)]
    heap.collect()
    assert not live(heap, obj)


def test_resurrection(heap: realalloc.Heap) -> None:
    roots = Roots(heap, 1)
    obj = heap.malloc(32, scan=True)
    ctypes.memmove(obj, pattern(obj, 9, 32), 32)
    runs: list[int] = []

    def resurrect(addr: int) -> None:
        runs.append(addr)
        roots[0] = addr  # reachable again

    heap.set_finalizer(obj, resurrect)
    heap.collect()
    drain(heap)
    for _ in range(3):
        heap.collect()
        heap.check()
    assert runs == [obj] and live(heap, obj)
    assert ctypes.string_at(obj, 32) == pattern(obj, 9, 32)
    heap.set_finalizer(obj, resurrect)  # a finalizer may be set again
    roots[0] = 0
    heap.collect()
    drain(heap)
    assert runs == [obj, obj] and live(heap, obj)
    roots[0] = 0
    heap.collect()
    assert not live(heap, obj)


def test_chains_of_finalizable_objects_finalize_in_go_order(heap: realalloc.Heap) -> None:
    """A points at B, both have finalizers, both unreachable: only A's runs;
    B is finalized in a later cycle, once A is gone (Go's documented order)."""
    order: list[str] = []
    a = heap.malloc(32, scan=True)
    heap.set_finalizer(a, lambda _addr: order.append("A"))
    b = heap.malloc(32, scan=True)
    store(a, b)
    heap.set_finalizer(b, lambda _addr: order.append("B"))
    heap.collect()
    drain(heap)
    assert order == ["A"] and live(heap, a) and live(heap, b)
    heap.collect()  # A is freed; B was reached by A until now
    drain(heap)
    assert order == ["A", "B"] and not live(heap, a)
    heap.collect()
    assert not live(heap, b)
    heap.check()


def test_finalizer_errors_are_reported_and_the_thread_goes_on(
    heap: realalloc.Heap, capfd: pytest.CaptureFixture[str]
) -> None:
    ran: list[int] = []

    def bad(addr: int) -> None:
        raise ValueError("boom")

    x, y = heap.malloc(16, scan=True), heap.malloc(16, scan=True)
    heap.set_finalizer(x, bad)
    heap.set_finalizer(y, ran.append)
    heap.collect()
    drain(heap)
    assert ran == [y]
    err = capfd.readouterr().err
    assert "Exception in realalloc finalizer of" in err and "ValueError: boom" in err


def test_set_finalizer_bad_input_names_the_value_and_changes_nothing(
    heap: realalloc.Heap,
) -> None:
    a = heap.malloc(64, scan=True)
    heap.set_finalizer(a, print)
    freed = heap.malloc(64)
    heap.free(freed)
    cases = [
        (lambda: heap.set_finalizer(a, print), realalloc.InvalidArgumentError, "already"),
        (lambda: heap.set_finalizer(a + 8, print), realalloc.InteriorPointerError, addr_re(a + 8)),
        (lambda: heap.set_finalizer(freed, print), realalloc.DoubleFreeError, addr_re(freed)),
        (lambda: heap.set_finalizer(0x10, print), realalloc.ForeignPointerError, "0x10"),
        (lambda: heap.set_finalizer(a, 42), realalloc.ArgumentTypeError, "not int"),
        (lambda: heap.set_finalizer(None, print), realalloc.ArgumentTypeError, "NoneType"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    assert heap._gc.finalizers == {a: print}
    heap.set_finalizer(a, None)  # removes it
    heap.set_finalizer(a, None)  # and again: nothing to remove is fine (Go: SetFinalizer(x, nil))
    heap.collect()
    drain(heap)
    assert not live(heap, a)


def test_free_drops_the_finalizer(heap: realalloc.Heap) -> None:
    ran: list[int] = []
    a = heap.malloc(64, scan=True)
    heap.set_finalizer(a, ran.append)
    heap.free(a)
    assert heap._gc.finalizers == {}
    b = heap.malloc(64, scan=True)  # may reuse a's slot: no finalizer on it
    heap.collect()
    drain(heap)
    assert ran == [] and not live(heap, b)
    heap.check()


def test_finalizers_on_a_large_structure(heap: realalloc.Heap) -> None:
    """Many finalizable nodes in one unreachable list: the head's runs first,
    the rest one per cycle down the list, each on an intact node."""
    roots = Roots(heap, 1)
    nodes = Nodes(heap)
    chain = nodes.chain(roots.address, 6)
    order: list[int] = []
    for n in chain:
        heap.set_finalizer(n, order.append)
    roots[0] = 0
    for k in range(1, 7):
        heap.collect()
        drain(heap)
        assert order == chain[:k]
        nodes.intact(chain[k - 1 :])
    heap.collect()
    heap.collect()
    assert heap.stats().heap_objects == 0
    assert load(roots.address) == 0
