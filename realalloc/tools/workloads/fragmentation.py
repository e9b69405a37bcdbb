"""fragmentation: allocate mixed sizes, free a random 90 %, allocate again, free everything.

The workload of bench/bench_fragmentation.py (the issue's: ~1 GB there),
here at any size: its sizes, its phases and the reference it is judged by.

Sizes come in three bands, log-uniform within each: 16 B - 1 KiB (40 % of
the bytes), 1 KiB - 64 KiB (40 %), 64 KiB - 1 MiB (20 %); by count that is
98.4 %, 1.5 % and 0.03 % of the objects (~1.8 million objects per GB, mean
~590 B).  The phases (``run_workload``, identical for every allocator):

1. allocate until the requested bytes reach the total;
2. free a random 90 % of those objects, in random order;
3. allocate new objects (new sizes, same bands) until their bytes reach what
   phase 2 freed, so live bytes return to about the total;
4. free the rest: phase 1's survivors, then phase 3's objects.

After each allocation phase every page of every new object is touched, so
that resident memory is what the allocator laid out.  Between phases the
driver calls ``probe(point)`` (``alloc1``, ``free90``, ``free90_rel``,
``alloc2``, ``freeall``, ``freeall_rel``; ``_rel`` after the allocator's
``release`` call), where bench/bench_fragmentation.py reads RSS.

``prepare`` / ``execute`` run it like the other workloads: scale 1 is 1 GiB,
and ``execute`` checks the stamps of every live object after each
allocation phase (objects that overlap would have overwritten each other's).
"""

from __future__ import annotations

import itertools
import math
import random
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from .common import Allocator, BadObject

__all__ = [
    "BANDS",
    "FREE_FRACTION",
    "Plan",
    "draw",
    "draw_sizes",
    "execute",
    "packed_pages",
    "prepare",
    "run_workload",
]

FREE_FRACTION: Final = 0.9
BANDS: Final = ((16, 1024, 0.40), (1024, 64 << 10, 0.40), (64 << 10, 1 << 20, 0.20))
"""(low, high, share of the bytes): sizes log-uniform in [low, high)."""
OS_PAGE: Final = 4096
GIB: Final = 1 << 30


def log_uniform_mean(lo: int, hi: int) -> float:
    return (hi - lo) / math.log(hi / lo)


def draw_sizes(rng: random.Random, nbytes: int) -> array[int]:
    """Sizes from BANDS until their sum reaches ``nbytes``."""
    weights = [share / log_uniform_mean(lo, hi) for lo, hi, share in BANDS]
    cum = [sum(weights[: i + 1]) / sum(weights) for i in range(len(weights))]
    logs = [(lo, math.log(hi / lo)) for lo, hi, _ in BANDS]
    out = array("I")
    total = 0
    rand = rng.random
    while total < nbytes:
        u = rand()
        band = 0 if u < cum[0] else 1 if u < cum[1] else 2
        lo, span = logs[band]
        size = int(lo * math.exp(span * rand()))
        out.append(size)
        total += size
    return out


@dataclass
class Plan:
    sizes1: array[int]
    """phase 1's sizes"""
    sizes2: array[int]
    """phase 3's sizes"""
    order: list[int]
    """a permutation of phase 1's objects: the first ``nfree`` are freed in phase 2"""
    nfree: int
    freed: int
    """bytes phase 2 frees"""


def draw(total_bytes: int, seed: int) -> Plan:
    """Every random choice of a run that allocates ``total_bytes`` in phase 1."""
    rng = random.Random(seed)
    sizes1 = draw_sizes(rng, total_bytes)
    order = list(range(len(sizes1)))
    rng.shuffle(order)
    nfree = int(len(sizes1) * FREE_FRACTION)
    freed = sum(sizes1[i] for i in order[:nfree])
    sizes2 = draw_sizes(rng, freed)
    return Plan(sizes1, sizes2, order, nfree, freed)


def packed_pages(sizes: array[int], keep: list[int]) -> int:
    """Bytes of the 4 KiB pages that objects ``keep`` touch if all of ``sizes``
    were laid out back to back in allocation order (16-byte aligned, no headers):
    what a non-moving allocator with no overhead would keep resident."""
    offsets = [0, *itertools.accumulate((s + 15) & ~15 for s in sizes)]
    pages: set[int] = set()
    for i in keep:
        start, end = offsets[i], offsets[i] + sizes[i] - 1
        pages.update(range(start // OS_PAGE, end // OS_PAGE + 1))
    return len(pages) * OS_PAGE


def run_workload(
    m: Callable[[int], int],
    f: Callable[[int], Any],
    release: Callable[[], Any],
    touch: Callable[[int, int], None],
    sizes: memoryview,
    order: memoryview,
    addrs: memoryview,
    n1: int,
    n2: int,
    nfree: int,
    probe: Callable[[str], None],
) -> None:
    """The four phases; identical for every allocator.  ``sizes`` holds phase
    1's then phase 3's sizes, ``addrs`` receives their addresses, ``touch(start,
    stop)`` touches objects ``start`` to ``stop`` - 1."""
    for i in range(n1):
        addrs[i] = m(sizes[i])
    touch(0, n1)
    probe("alloc1")
    for j in order[:nfree]:
        f(addrs[j])
    probe("free90")
    release()
    probe("free90_rel")
    for i in range(n1, n1 + n2):
        addrs[i] = m(sizes[i])
    touch(n1, n1 + n2)
    probe("alloc2")
    for j in order[nfree:]:
        f(addrs[j])
    for i in range(n1, n1 + n2):
        f(addrs[i])
    probe("freeall")
    release()
    probe("freeall_rel")


def prepare(scale: float, seed: int) -> Plan:
    """A run of ``scale`` GiB in phase 1."""
    return draw(max(1 << 20, int(GIB * scale)), seed)


def execute(a: Allocator, mem: Any, plan: Plan) -> dict[str, int]:
    n1, n2 = len(plan.sizes1), len(plan.sizes2)
    sizes = memoryview(plan.sizes1 + plan.sizes2)
    order = memoryview(array("I", plan.order))
    addrs = memoryview(array("Q", bytes(8 * (n1 + n2))))
    stamp_pages = mem.stamp_pages
    checked = 0

    def touch(start: int, stop: int) -> None:
        for i in range(start, stop):
            stamp_pages(addrs[i], sizes[i])

    def probe(point: str) -> None:
        # Each live object's stamps, one at a time: a list of them all would
        # cost the driver more memory than some allocators' whole overhead.
        nonlocal checked
        if point == "alloc1":
            live: Iterable[int] = range(n1)
        elif point == "alloc2":
            live = itertools.chain(order[plan.nfree :], range(n1, n1 + n2))
        else:
            return
        check = mem.check
        for i in live:
            if not check(addrs[i], sizes[i]):
                raise BadObject(f"{point}: object {addrs[i]:#x} ({sizes[i]} B) was overwritten")
            checked += 1

    run_workload(
        a.malloc, a.free, lambda: None, touch, sizes, order, addrs, n1, n2, plan.nfree, probe
    )
    return {"mallocs": n1 + n2, "frees": n1 + n2, "checked": checked}
