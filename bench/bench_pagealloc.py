"""Page allocator: cost of alloc/free on a fragmented 64 MiB page heap vs a 64 GiB one.

The radix tree of summaries (realalloc/core/pagealloc.py) should make a first-fit
search cost the same whatever the heap size; this measures it.  Standalone
mode: the PageAlloc manages address space only and touches no memory.

Both heaps start at 0xc000000000 and get the same fragmentation pattern, so
the 64 MiB heap is exactly the first 64 MiB of the 64 GiB one and every
operation lands at the same offset in both (checked).  Rounds alternate
between the heaps (A, B, A, B, ...) so drift in machine speed hits both;
they are timed in CPU time of the process (``time.process_time_ns``), and
a ratio is the median over rounds of B's round over A's round just before.
Target (the issue's): alloc+free on 64 GiB / on 64 MiB <= 1.1.

Run from the repository root: ``python bench/bench_pagealloc.py [--json FILE]``
(after ``pip install -e .``, or with ``PYTHONPATH=.``).  See bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass

from realalloc.core.pagealloc import PageAlloc
from realalloc.core.sizeclasses import PAGE_SHIFT, PAGE_SIZE

HEAP_BASE = 0xC000000000
"""Go's first arena hint on linux/amd64; aligned to a 16 GiB root entry."""
MIX = (1, 2, 4, 8, 16, 64, 96)
"""Page counts requested, in this order, MIX_REPEAT times per batch.  Runs of 96+ free
pages are rare enough that a batch walks the tree across about 8 chunks to find them."""
MIX_REPEAT = 4
LOG2_MAX_RUN = 7
"""Free runs and allocated gaps are log-uniform in [1, 2**7] pages."""
TARGET = 1.1
"""alloc+free on the 64 GiB heap / on the 64 MiB heap, from the issue."""


@dataclass
class HeapResult:
    name: str
    nbytes: int
    chunks: int
    setup_s: float
    alloc_ns: float
    free_ns: float
    pair_ns: float


def fragment(p: PageAlloc, npages: int, seed: int) -> None:
    """Allocate every page, then free runs so free and allocated stretches alternate.

    The result is the same as allocating everything one page at a time and
    freeing a pattern, in far fewer calls.  Run lengths are log-uniform so
    every request size of MIX finds holes throughout the heap, low addresses
    included, and the search address does not skip the work.
    """
    p.alloc_range(HEAP_BASE, npages)
    rng = random.Random(seed)
    page = 0
    while page < npages:
        page += int(2 ** rng.uniform(0, LOG2_MAX_RUN))  # allocated gap
        run = min(int(2 ** rng.uniform(0, LOG2_MAX_RUN)), npages - page)
        if run > 0:
            p.free(HEAP_BASE + (page << PAGE_SHIFT), run)
        page += run


def build(nbytes: int, seed: int) -> tuple[PageAlloc, float]:
    start = time.perf_counter()
    p = PageAlloc()
    p.grow(HEAP_BASE, nbytes)
    fragment(p, nbytes // PAGE_SIZE, seed)
    return p, time.perf_counter() - start


def one_round(p: PageAlloc, batches: int) -> tuple[int, int, list[int]]:
    """Allocate a batch of the mix, free it, ``batches`` times.

    Returns (alloc ns, free ns, offsets of the first batch).  Freeing restores
    the bitmaps exactly, so every round does the same work.
    """
    alloc_ns = free_ns = 0
    offsets: list[int] = []
    sizes = MIX * MIX_REPEAT
    clock = time.process_time_ns  # CPU time: other jobs' turns on a shared CPU do not count
    for _ in range(batches):
        t0 = clock()
        got = [p.alloc(n)[0] for n in sizes]
        t1 = clock()
        for addr, n in zip(got, sizes, strict=True):
            p.free(addr, n)
        t2 = clock()
        alloc_ns += t1 - t0
        free_ns += t2 - t1
        if not offsets:
            offsets = [a - HEAP_BASE if a else -1 for a in got]
    return alloc_ns, free_ns, offsets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small-mib", type=int, default=64, help="heap A size (MiB)")
    ap.add_argument("--large-gib", type=int, default=64, help="heap B size (GiB)")
    ap.add_argument("--rounds", type=int, default=100, help="rounds per heap")
    ap.add_argument("--batches", type=int, default=40, help="alloc+free batches per round")
    ap.add_argument("--seed", type=int, default=2019)
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)

    sizes = {"A": args.small_mib << 20, "B": args.large_gib << 30}
    names = {"A": f"{args.small_mib} MiB", "B": f"{args.large_gib} GiB"}
    heaps = {}
    setup = {}
    for key, nbytes in sizes.items():
        heaps[key], setup[key] = build(nbytes, args.seed)
    gc.collect()  # start both heaps' rounds from a clean collector

    ops = len(MIX) * MIX_REPEAT * args.batches
    per_op: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in heaps}
    first_offsets: dict[str, list[int]] = {}
    for _ in range(args.rounds):
        for key, p in heaps.items():
            a_ns, f_ns, offsets = one_round(p, args.batches)
            per_op[key][0].append(a_ns / ops)
            per_op[key][1].append(f_ns / ops)
            first_offsets.setdefault(key, offsets)
    if -1 in first_offsets["A"] or first_offsets["A"] != first_offsets["B"]:
        print("error: the heaps did not serve the same offsets", file=sys.stderr)
        return 1
    for p in heaps.values():
        p.check()

    results = {}
    for key in heaps:
        allocs, frees = per_op[key]
        pairs = [a + f for a, f in zip(allocs, frees, strict=True)]
        results[key] = HeapResult(
            names[key],
            sizes[key],
            heaps[key].npages_total // 512,
            round(setup[key], 3),
            round(statistics.median(allocs), 1),
            round(statistics.median(frees), 1),
            round(statistics.median(pairs), 1),
        )
    a, b = results["A"], results["B"]
    # Round i of heap B against round i of heap A (run back to back): the median
    # of these paired ratios is robust to drift in machine speed.
    ratio = {}
    for i, what in enumerate(("alloc", "free")):
        paired = [b_ / a_ for a_, b_ in zip(per_op["A"][i], per_op["B"][i], strict=True)]
        ratio[what] = round(statistics.median(paired), 3)
    pairs_a = [x + y for x, y in zip(*per_op["A"], strict=True)]
    pairs_b = [x + y for x, y in zip(*per_op["B"], strict=True)]
    ratio["pair"] = round(
        statistics.median(b_ / a_ for a_, b_ in zip(pairs_a, pairs_b, strict=True)), 3
    )
    print(f"page alloc/free, mix {MIX} x{MIX_REPEAT}, {args.rounds} rounds x {ops} ops per heap")
    print(f"{'heap':>8} {'chunks':>7} {'setup s':>8} {'alloc ns':>9} {'free ns':>8} {'pair ns':>8}")
    for r in (a, b):
        print(
            f"{r.name:>8} {r.chunks:>7} {r.setup_s:>8.2f} {r.alloc_ns:>9.0f} "
            f"{r.free_ns:>8.0f} {r.pair_ns:>8.0f}"
        )
    met = ratio["pair"] <= TARGET
    print(
        f"ratio {b.name} / {a.name}: alloc {ratio['alloc']:.3f}  free {ratio['free']:.3f}  "
        f"alloc+free {ratio['pair']:.3f}  (target <= {TARGET}: {'met' if met else 'NOT met'})"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "benchmark": "pagealloc",
                    "python": platform.python_version(),
                    "mix": MIX,
                    "mix_repeat": MIX_REPEAT,
                    "rounds": args.rounds,
                    "ops_per_round": ops,
                    "heaps": [asdict(a), asdict(b)],
                    "ratio": ratio,
                    "target": TARGET,
                    "met": met,
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
