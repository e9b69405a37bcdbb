"""alloc-test: random allocations and frees of varied sizes over a live set, per thread.

After Ignatchenko's alloc-test (mimalloc-bench ``alloc-test1`` and
``alloc-testN``): each thread keeps a large array of slots, and each step
frees the object in a random slot (if there is one) and puts a new object
of a random size there, so the array holds a live set of objects of mixed
sizes and random ages while objects come and go.  Here:

* ``threads`` threads (2, one per core of the reference machine; with the
  GIL this is alloc-testN run as alloc-test1 interleaved), each with its
  own ``slots`` slots, all empty at the start: the live set grows until the
  slots fill, then stays.  No object crosses threads.
* Sizes: 90 % log-uniform in 8 B-1 KiB, 10 % log-uniform in 1-32 KiB
  (density ~ 1/size within each range: small objects dominate, as in real
  programs, but every small size class is used).
* Every new object is stamped.  Each thread checks its whole array halfway
  and at the end, then frees everything.

Random choices are drawn by :func:`prepare` before timing.
"""

from __future__ import annotations

import math
import random
from array import array
from dataclasses import dataclass
from typing import Any

from .common import Allocator, Worker, run_all, verify

__all__ = ["Plan", "execute", "prepare"]


@dataclass
class Plan:
    threads: int
    slots: int
    steps: int
    script: list[tuple[array[int], array[int]]]
    """per thread: (slot, size) of each step"""


def _log_uniform(rnd: Any, lo: int, hi: int) -> int:
    return int(math.exp(math.log(lo) + rnd() * (math.log(hi) - math.log(lo))))


def prepare(scale: float, seed: int) -> Plan:
    threads, slots = 2, 8192
    steps = max(1000, int(150_000 * scale))
    r = random.Random(seed)
    rnd = r.random

    def size() -> int:
        return _log_uniform(rnd, 8, 1024) if rnd() < 0.9 else _log_uniform(rnd, 1024, 32768)

    script = [
        (
            array("I", [int(rnd() * slots) for _ in range(steps)]),
            array("I", [size() for _ in range(steps)]),
        )
        for _ in range(threads)
    ]
    return Plan(threads, slots, steps, script)


def _thread(a: Allocator, mem: Any, plan: Plan, idx: int) -> tuple[int, int, int]:
    """-> (mallocs, frees, objects checked)"""
    m, f, stamp = a.malloc, a.free, mem.stamp
    objs = [0] * plan.slots
    sizes = [0] * plan.slots
    ks, ns = plan.script[idx]
    half = len(ks) // 2
    frees = checked = 0
    for part in (slice(0, half), slice(half, None)):
        for k, n in zip(ks[part], ns[part], strict=True):
            old = objs[k]
            if old:
                f(old)
                frees += 1
            p = m(n)
            stamp(p, n)
            objs[k] = p
            sizes[k] = n
        held = [(p, n) for p, n in zip(objs, sizes, strict=True) if p]
        checked += verify(mem, [p for p, _ in held], [n for _, n in held], f"alloc-test {idx}")
    for p in objs:
        if p:
            f(p)
            frees += 1
    return len(ks), frees, checked


def execute(a: Allocator, mem: Any, plan: Plan) -> dict[str, int]:
    results = run_all([Worker(_thread, a, mem, plan, i) for i in range(plan.threads)])
    return {
        "mallocs": sum(r[0] for r in results),
        "frees": sum(r[1] for r in results),
        "checked": sum(r[2] for r in results),
    }
