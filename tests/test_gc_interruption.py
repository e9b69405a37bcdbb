"""Interruption in a collected heap: an exception raised at random lines of
realalloc's own code (as a KeyboardInterrupt would) during collections,
automatic ones included, pins, Pinner.malloc, finalizers, roots and frees.
After each: check() passes (GC-1..3 among the rest), every object reachable
from the roots keeps its pattern, and the heap keeps collecting."""

from __future__ import annotations

import ctypes
import random
import time
from collections.abc import Callable

import pytest
from gc_support import WORD, Roots, live, load, store
from support import pattern
from test_interruption import Injected, Injector

import realalloc

NSLOTS = 64


class Graph:
    """Chains of scan nodes [next, pattern...] hanging from a root array."""

    def __init__(self, heap: realalloc.Heap, rng: random.Random) -> None:
        self.heap = heap
        self.rng = rng
        self.roots = Roots(heap, NSLOTS)
        self.data: dict[int, bytes] = {}

    def reachable(self) -> list[int]:
        out = []
        for i in range(NSLOTS):
            node = self.roots[i]
            while node:
                out.append(node)
                node = load(node)
        return out

    def intact(self) -> None:
        nodes = self.reachable()
        for node in nodes:
            data = self.data[node]
            assert ctypes.string_at(node + WORD, len(data)) == data, f"{node:#x} changed"
        self.heap.check()

    def op(self) -> tuple[str, Callable[[], object]]:
        rng, heap = self.rng, self.heap
        slot = rng.randrange(NSLOTS)
        kind = rng.randrange(8)
        if kind <= 2:

            def grow() -> None:  # a chain built with a Pinner, then hung on a root
                with heap.pinner() as p:
                    head = node = 0
                    for _ in range(rng.randint(1, 30)):
                        size = rng.choice((16, 48, 200, 3000, 40_000))
                        new = p.malloc(size, scan=True)
                        body = pattern(new, rng.randrange(1 << 20), size - WORD)
                        ctypes.memmove(new + WORD, body, len(body))
                        self.data[new] = body
                        if node:
                            store(node, new)
                        else:
                            head = new
                        node = new
                    store(node, self.roots[slot])
                    self.roots[slot] = head

            return "grow", grow
        if kind == 3:
            return "drop", lambda: store(self.roots.address + slot * WORD, 0)
        if kind == 4:
            return "collect", heap.collect
        if kind == 5:
            node = self.roots[slot]

            def finalize() -> None:
                if node and live(heap, node):
                    heap.set_finalizer(node, lambda _a: None)
                    heap.set_finalizer(node, None)

            return "finalizer", finalize
        if kind == 6:
            node = self.roots[slot]

            def pin_unpin() -> None:
                if node:
                    heap.pin(node)
                    heap.unpin(node)

            return "pin", pin_unpin
        return "garbage", lambda: [heap.malloc(rng.choice((24, 5000, 50_000))) for _ in range(50)]


@pytest.mark.parametrize("seed", range(2))
def test_collected_heap_interrupted_anywhere(seed: int) -> None:
    rng = random.Random(seed)
    with realalloc.Heap(gc=True, background_scavenger=False) as heap:
        heap.set_gc_percent(20)  # automatic cycles inside the operations too
        graph = Graph(heap, rng)
        for _ in range(20):  # a heap that has grown: first uses run many lines
            name, op = graph.op()
            op()
        tracer = Injector()
        longest: dict[str, int] = {}
        interrupted = 0
        for _ in range(300):
            name, op = graph.op()
            span = longest.get(name, 200)
            try:
                lines = tracer.run(op, raise_at=rng.randint(1, span))
            except Injected:
                interrupted += 1
            else:
                longest[name] = max(span, lines)
            graph.intact()
        heap.collect()
        graph.intact()
        for i in range(NSLOTS):
            graph.roots[i] = 0
        # An interrupted Pinner.unpin leaves its remaining pins (the Pinner
        # would unpin them if called again; these Pinners are gone): few.
        leaked = dict(heap._gc.pins)
        assert len(leaked) <= 10, leaked
        for addr, count in leaked.items():
            for _ in range(count):
                heap.unpin(addr)
        # An interrupted finalize() may have left a finalizer: it runs, then
        # its object goes.
        heap.collect()
        while heap._gc.due:
            time.sleep(0.001)
        heap.collect()
        heap.check()
        assert heap.stats().heap_objects == 0
        assert interrupted > 100
        assert heap.stats().num_gc > heap.stats().num_forced_gc
