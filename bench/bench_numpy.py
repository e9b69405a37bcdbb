"""numpy's data allocator: realalloc's handler against numpy's default, same process.

For each operation and array size, the same loop runs under numpy's default
handler (``default_allocator``: malloc/calloc plus numpy's small-block cache)
and under realalloc's (``realalloc.numpy``), in interleaved rounds:

* ``empty``: ``np.empty(n, np.uint8)``, dropped at once (malloc + free);
* ``zeros``: ``np.zeros(n, np.uint8)``, dropped at once (calloc + free);
* ``add``: ``a + b`` for two uint8 arrays of n elements, the result dropped
  (malloc + the ufunc loop + free; each handler adds its own inputs).

Sizes from 8 B to 4 MiB.  A round times every (operation, size) under both
handlers, the order of the two alternating from round to round; each timing is
``iters`` calls, chosen so that one timing takes about 2 ms, measured in the
thread's CPU time (``time.thread_time_ns``: other processes on a shared
machine disturb it less than wall time).  Round 0 is an untimed warm-up; the
cyclic GC is off while timing.  One handler over one
fresh ``Heap()`` serves every realalloc timing: it is set and reset with
numpy's ``PyDataMem_SetHandler`` (through realalloc's binding), so its cache of
freed blocks it keeps live across timings as they would in a program.

Reported: the median over rounds of ns per call under each handler, and
realalloc / default (target from the issue: <= 1.1 for every size), with the
range of the per-round ratios.

Run from the repository root: ``python bench/bench_numpy.py [--rounds N]
[--quick] [--json FILE]`` (after ``pip install -e '.[numpy]'``).  REALALLOC_DEBUG
is forced to 0.  See bench/README.md.
"""

from __future__ import annotations

import os

os.environ["REALALLOC_DEBUG"] = "0"  # before realalloc is imported

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import realalloc
import realalloc.numpy as rnp
from realalloc._debug import DEBUG
from realalloc.integrations import numpy as integration

SIZES = (8, 64, 512, 4096, 32768, 65536, 262144, 1 << 20, 4 << 20)
OPS = ("empty", "zeros", "add")
TARGET = 1.1
TIMING_NS = 2_000_000


def label(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} B"


def loop(op: str, n: int, inputs: tuple[Any, Any]) -> Callable[[int], int]:
    """A timed loop of `iters` calls of one operation; returns ns elapsed."""
    empty, zeros, u8, now = np.empty, np.zeros, np.uint8, time.thread_time_ns
    a, b = inputs

    def run_empty(iters: int) -> int:
        t = now()
        for _ in range(iters):
            empty(n, u8)
        return now() - t

    def run_zeros(iters: int) -> int:
        t = now()
        for _ in range(iters):
            zeros(n, u8)
        return now() - t

    def run_add(iters: int) -> int:
        t = now()
        for _ in range(iters):
            a + b
        return now() - t

    return {"empty": run_empty, "zeros": run_zeros, "add": run_add}[op]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument("--quick", action="store_true", help="3 rounds, for a smoke test")
    parser.add_argument("--json", help="also write every timing to this file")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    if DEBUG != 0:
        raise SystemExit(f"REALALLOC_DEBUG must be 0 for a benchmark, is {DEBUG}")

    heap = realalloc.Heap()
    with rnp.using(heap) as handler:
        pass  # made once; set and reset below without releasing its cache
    set_handler = integration._c.numpy_swap_handler
    default = set_handler(None)  # numpy's default handler capsule (and leave it set)
    capsules = {"default": default, "realalloc": handler.capsule}

    def under(name: str, make: Callable[[], Any]) -> Any:
        previous = set_handler(capsules[name])
        try:
            return make()
        finally:
            set_handler(previous)

    inputs = {
        name: {
            n: under(name, lambda n=n: (np.ones(n, np.uint8), np.ones(n, np.uint8))) for n in SIZES
        }
        for name in capsules
    }
    assert heap.span_of(inputs["realalloc"][8][0].ctypes.data) is not None
    assert heap.span_of(inputs["default"][8][0].ctypes.data) is None
    cases = [(op, n) for op in OPS for n in SIZES]
    loops = {(name, op, n): loop(op, n, inputs[name][n]) for name in capsules for op, n in cases}
    iters: dict[tuple[str, int], int] = {}
    for op, n in cases:  # calibrate on the default handler: ~TIMING_NS per timing
        run, k = loops["default", op, n], 1
        while (elapsed := under("default", lambda run=run, k=k: run(k))) < TIMING_NS // 4:
            k *= 2
        iters[op, n] = max(1, k * TIMING_NS // max(elapsed, 1))

    times: dict[tuple[str, str, int], list[float]] = {
        (h, op, n): [] for h in capsules for op, n in cases
    }
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds + 1):
            order = ("default", "realalloc") if r % 2 else ("realalloc", "default")
            for op, n in cases:
                for name in order:
                    k = iters[op, n]
                    run = loops[name, op, n]
                    ns = under(name, lambda run=run, k=k: run(k))
                    if r:
                        times[name, op, n].append(ns / k)
    finally:
        gc.enable()

    st = handler.stats()
    print(
        f"numpy {np.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"{rounds} rounds; realalloc served {st.served} allocations "
        f"({st.cache_hits} from blocks it kept), {st.failures} failed"
    )
    print(f"{'op':6} {'size':>7} {'default ns':>11} {'realalloc ns':>13} {'ratio':>6}  range")
    worst = 0.0
    rows = []
    for op, n in cases:
        d = statistics.median(times["default", op, n])
        m = statistics.median(times["realalloc", op, n])
        per_round = [
            x / y for x, y in zip(times["realalloc", op, n], times["default", op, n], strict=True)
        ]
        ratio = m / d
        worst = max(worst, ratio)
        rows.append({"op": op, "size": n, "default_ns": d, "realalloc_ns": m, "ratio": ratio,
                     "iters": iters[op, n], "per_round": per_round})  # fmt: skip
        print(
            f"{op:6} {label(n):>7} {d:11,.0f} {m:13,.0f} {ratio:6.2f}  "
            f"{min(per_round):.2f}-{max(per_round):.2f}"
        )
    verdict = "meets" if worst <= TARGET else "misses"
    print(f"worst ratio {worst:.2f}: {verdict} the target <= {TARGET}")
    if args.json:
        st_json = st._asdict()
        doc = {"rows": rows, "rounds": rounds, "numpy": np.__version__, "handler": st_json}
        doc["python"] = platform.python_version()
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    del inputs, loops
    gc.collect()
    handler.release_cache()
    heap.check()
    return 0


if __name__ == "__main__":
    sys.exit(main())
