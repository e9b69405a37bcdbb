"""Eight threads churn linked structures in one collected heap while cycles run
(the pacer's, the memory limit's and explicit ones, from any thread): no
object reachable when a cycle starts is freed by it, every pattern holds."""

from __future__ import annotations

import ctypes
import random
import threading

from gc_support import WORD, Roots, live, load, store
from support import pattern, run_threads

import realalloc

NTHREADS = 8
SIZES = (24, 48, 64, 200, 1024, 5000, 40_000)  # small classes and a large size


class Tree:
    """One thread's binary tree of scan nodes: [left, right, pattern...].
    Nodes are made with Pinner.malloc, linked, then unpinned."""

    def __init__(self, heap: realalloc.Heap, root_word: int, rng: random.Random) -> None:
        self.heap = heap
        self.root_word = root_word
        self.rng = rng
        self.data: dict[int, bytes] = {}
        self.seq = 0

    def build(self, pinner: realalloc.Pinner, depth: int) -> int:
        size = self.rng.choice(SIZES)
        node = pinner.malloc(size, scan=True)
        self.seq += 1
        body = pattern(node, self.seq, size - 2 * WORD)
        ctypes.memmove(node + 2 * WORD, body, len(body))
        self.data[node] = body
        if depth:
            store(node, self.build(pinner, depth - 1))
            store(node + WORD, self.build(pinner, depth - 1))
        return node

    def walk(self) -> list[int]:
        out, todo = [], [load(self.root_word)]
        while todo:
            node = todo.pop()
            if node:
                out.append(node)
                todo += [load(node), load(node + WORD)]
        return out

    def verify(self) -> list[int]:
        nodes = self.walk()
        for node in nodes:
            body = self.data[node]
            got = ctypes.string_at(node + 2 * WORD, len(body))
            assert got == body, f"node {node:#x} changed"
        return nodes

    def replace_subtree(self) -> None:
        """Swap a random subtree for a fresh one (the old one is garbage)."""
        parent = self.rng.choice(self.walk())
        side = self.rng.randrange(2)
        with self.heap.pinner() as p:
            store(parent + side * WORD, self.build(p, self.rng.randrange(4)))
        reachable = set(self.walk())
        self.data = {a: d for a, d in self.data.items() if a in reachable}


def test_eight_threads_churn_trees_while_cycles_run() -> None:
    with realalloc.Heap(gc=True, background_scavenger=False) as heap:
        heap.set_gc_percent(25)
        roots = Roots(heap, NTHREADS)
        trees: list[Tree] = []
        start = threading.Barrier(NTHREADS)

        def worker(t: int) -> None:
            try:
                rng = random.Random(t)
                tree = Tree(heap, roots.address + t * WORD, rng)
                trees.append(tree)
                with heap.pinner() as p:
                    roots[t] = tree.build(p, 5)
                start.wait()
                for step in range(150):
                    tree.replace_subtree()
                    if step % 25 == 0:
                        tree.verify()
                    if step % 50 == 49 and t % 4 == 0:
                        heap.collect()
                    if step % 10 == 0:
                        buf = heap.alloc(64, scan=True)  # a Buffer is a root from birth
                        with heap.pinner() as p:
                            store(buf.address, tree.build(p, 1))
                        assert live(heap, load(buf.address))
                        del buf
                tree.verify()
            except BaseException:
                start.abort()  # the others stop waiting for this thread
                raise

        run_threads(NTHREADS, worker)
        st = heap.stats()
        assert st.num_gc - st.num_forced_gc >= 5, (st.num_gc, st.num_forced_gc)
        heap.collect()
        heap.check()
        reachable = [n for tree in trees for n in tree.verify()]
        st = heap.stats()
        assert st.heap_objects == len(reachable)  # exactly what the trees reach survives
        assert st.heap_alloc == sum(heap.usable_size(n) for n in reachable)


def test_memory_limit_and_pacer_with_threads() -> None:
    """Threads allocating garbage under a memory limit: the limit collects
    before it refuses, whichever thread hits it, and nobody deadlocks at
    safe points reached together."""
    with realalloc.Heap(gc=True, background_scavenger=False) as heap:
        heap.set_gc_percent(400)
        st = heap.stats()
        heap.set_memory_limit(st.heap_sys - st.heap_released + st.metadata + (24 << 20))
        roots = Roots(heap, NTHREADS)

        def worker(t: int) -> None:
            with heap.pinner() as p:
                keep = p.malloc(4096, scan=True)
                roots[t] = keep
                ctypes.memmove(keep + 8, pattern(keep, t, 4088), 4088)
            for i in range(3000):
                heap.malloc(SIZES[i % len(SIZES)], scan=bool(i & 1))
            assert ctypes.string_at(keep + 8, 4088) == pattern(keep, t, 4088)

        run_threads(NTHREADS, worker)
        heap.collect()
        heap.check()
        assert heap.stats().heap_objects == NTHREADS


def test_buffer_dying_while_the_world_is_stopped_keeps_its_object() -> None:
    """A Buffer that dies while another thread has the world stopped frees its
    object only after the stop: a cycle in between must keep that object (it
    is listed as pending), and the free then completes normally."""
    with realalloc.Heap(gc=True, background_scavenger=False) as heap:
        heap.set_gc_percent(-1)
        box: list[realalloc.Buffer] = [heap.alloc(48, scan=True)]
        addr = box[0].address
        target = heap.malloc(48, scan=True)
        store(addr, target)  # reached through the Buffer only
        dropped = threading.Event()

        def drop() -> None:
            dropped.set()
            box.clear()  # the Buffer dies; its free waits for the stop

        def stopped() -> None:
            threading.Thread(target=drop).start()
            dropped.wait(10)
            deadline = 0
            while addr not in heap._gc.pending and deadline < 10_000:
                deadline += 1
                threading.Event().wait(0.001)
            assert addr in heap._gc.pending
            heap._gc.cycle(heap, True)  # the world is ours: collect now
            assert live(heap, addr) and live(heap, target)

        heap._alone(stopped)
        deadline = 0
        while heap._gc.pending and deadline < 10_000:  # the waiting free runs now
            deadline += 1
            threading.Event().wait(0.001)
        assert not heap._gc.pending and not live(heap, addr)
        heap.collect()
        heap.check()
        assert not live(heap, target)
