"""larson: a server-like workload in which objects outlive the thread that allocated them.

After Larson and Krishnan's server benchmark (mimalloc-bench ``larson``).
A server hands each request to a worker thread; the worker replaces some of
the objects it was given and hands its state on to the next worker.  Here:

* ``lineages`` chains of threads, each chain owning an array of ``slots``
  objects.  The main thread allocates every initial object (sizes uniform in
  10-1000 B), so the first workers free memory another thread allocated.
* A worker does ``ops`` replacements: pick a random slot, free its object,
  allocate a new one of a random size (10-1000 B), stamp its first and last
  byte, put it in the slot.
* Then it checks the stamps of its whole array, starts the next worker of
  its chain (a new thread) with the same array, and exits: every object
  it allocated and did not free will be freed by a later thread.  A chain
  has ``generations`` workers.
* When every chain is done the main thread checks and frees what is left.

Chains run concurrently (Python threads, so one at a time under the GIL; the
interpreter switches between them every few milliseconds).  All random
choices are drawn by :func:`prepare` before timing.
"""

from __future__ import annotations

import random
from array import array
from dataclasses import dataclass
from typing import Any

from .common import Allocator, Worker, verify

__all__ = ["Plan", "execute", "prepare"]

MIN_SIZE = 10
MAX_SIZE = 1000


@dataclass
class Plan:
    lineages: int
    slots: int
    generations: int
    ops: int
    initial: list[array[int]]
    """per chain: the sizes of its initial objects"""
    steps: list[list[tuple[array[int], array[int]]]]
    """per chain, per generation: (slot indices, sizes) of each replacement"""


def prepare(scale: float, seed: int) -> Plan:
    lineages, slots, generations = 4, 1000, 10
    ops = max(100, int(10_000 * scale))
    r = random.Random(seed)
    rnd, span = r.random, MAX_SIZE - MIN_SIZE + 1

    def sizes(n: int) -> array[int]:
        return array("I", [MIN_SIZE + int(rnd() * span) for _ in range(n)])

    initial = [sizes(slots) for _ in range(lineages)]
    steps = [
        [
            (array("I", [int(rnd() * slots) for _ in range(ops)]), sizes(ops))
            for _ in range(generations)
        ]
        for _ in range(lineages)
    ]
    return Plan(lineages, slots, generations, ops, initial, steps)


def _worker(
    a: Allocator,
    mem: Any,
    plan: Plan,
    chain: int,
    gen: int,
    objs: list[int],
    sizes: array[int],
    box: list[Worker],
) -> int:
    """One worker of chain ``chain``: its replacements, then the hand-off."""
    m, f, stamp = a.malloc, a.free, mem.stamp
    ks, ns = plan.steps[chain][gen]
    for k, n in zip(ks, ns, strict=True):
        f(objs[k])
        p = m(n)
        stamp(p, n)
        objs[k] = p
        sizes[k] = n
    verify(mem, objs, sizes, f"larson chain {chain} generation {gen}")
    if gen + 1 < plan.generations:
        nxt = Worker(_worker, a, mem, plan, chain, gen + 1, objs, sizes, box)
        box.append(nxt)
        nxt.start()
    return len(ks)


def execute(a: Allocator, mem: Any, plan: Plan) -> dict[str, int]:
    m, f, stamp = a.malloc, a.free, mem.stamp
    arrays: list[tuple[list[int], array[int]]] = []
    for chain_sizes in plan.initial:
        objs = []
        for n in chain_sizes:
            p = m(n)
            stamp(p, n)
            objs.append(p)
        arrays.append((objs, array("I", chain_sizes)))
    mallocs = plan.lineages * plan.slots

    chains: list[list[Worker]] = []
    for chain, (objs, sizes) in enumerate(arrays):
        box: list[Worker] = []
        first = Worker(_worker, a, mem, plan, chain, 0, objs, sizes, box)
        box.append(first)
        chains.append(box)
        first.start()
    # A worker appends its successor to its chain's list before it exits, so
    # joining the workers in list order reaches the end of every chain.
    replaced = 0
    for box in chains:
        i = 0
        while i < len(box):
            replaced += box[i].result()
            i += 1
    mallocs += replaced

    everything = [p for objs, _ in arrays for p in objs]
    checked = verify(mem, everything, [n for _, ns in arrays for n in ns], "larson at the end")
    for p in everything:
        f(p)
    return {"mallocs": mallocs, "frees": replaced + len(everything), "checked": checked}
