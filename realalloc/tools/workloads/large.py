"""large: large objects (64 KiB-8 MiB) coming and going over a live set.

mimalloc-bench has no single large-object benchmark of this shape; this one
asks what its big-object cases ask: does the allocator reuse freed large
blocks, or does every allocation map (and page-fault) fresh memory, and how
much memory does it hold on to?  Here:

* One thread keeps ``slots`` slots.  Each step frees the object in a random
  slot (after checking its stamps) and allocates a new one there; sizes are
  log-uniform in 64 KiB-8 MiB (mean about 1.7 MiB, so about 27 MiB live on
  average, at most ``slots`` x 8 MiB).
* Every new object is written in *every* 4 KiB page (one byte a page, then
  the first/last-byte stamp), as a program filling a buffer would: all its
  memory becomes resident, so peak RSS shows what the allocator keeps, and
  the time includes the page faults of memory it took from the kernel.
* The live set is checked every 100 steps and at the end, then freed.

Random choices are drawn by :func:`prepare` before timing.
"""

from __future__ import annotations

import math
import random
from array import array
from dataclasses import dataclass
from typing import Any

from .common import Allocator, verify

__all__ = ["Plan", "execute", "prepare"]

MIN_SIZE = 64 << 10
MAX_SIZE = 8 << 20


@dataclass
class Plan:
    slots: int
    steps: int
    ks: array[int]
    ns: array[int]


def prepare(scale: float, seed: int) -> Plan:
    slots = 16
    steps = max(100, int(3000 * scale))
    r = random.Random(seed)
    rnd = r.random
    lo, hi = math.log(MIN_SIZE), math.log(MAX_SIZE)
    ks = array("I", [int(rnd() * slots) for _ in range(steps)])
    ns = array("I", [int(math.exp(lo + rnd() * (hi - lo))) for _ in range(steps)])
    return Plan(slots, steps, ks, ns)


def execute(a: Allocator, mem: Any, plan: Plan) -> dict[str, int]:
    m, f, stamp_pages, check = a.malloc, a.free, mem.stamp_pages, mem.check
    objs = [0] * plan.slots
    sizes = [0] * plan.slots
    frees = checked = 0
    for i, (k, n) in enumerate(zip(plan.ks, plan.ns, strict=True)):
        old = objs[k]
        if old:
            if not check(old, sizes[k]):
                raise AssertionError(f"large: object {old:#x} ({sizes[k]} B) overwritten")
            f(old)
            frees += 1
        p = m(n)
        stamp_pages(p, n)
        objs[k] = p
        sizes[k] = n
        if i % 100 == 99:
            held = [(p, n) for p, n in zip(objs, sizes, strict=True) if p]
            checked += verify(mem, [p for p, _ in held], [n for _, n in held], f"large step {i}")
    held = [(p, n) for p, n in zip(objs, sizes, strict=True) if p]
    checked += verify(mem, [p for p, _ in held], [n for _, n in held], "large at the end")
    for p, _ in held:
        f(p)
    return {"mallocs": len(plan.ns), "frees": frees + len(held), "checked": checked}
