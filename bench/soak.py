"""Soak: a long run of verified malloc/free on many threads, then RSS back to the start.

The question: after 10^8 operations (malloc + free) on 8 threads, with every
object verified, is any byte wrong, do the heap's invariants hold, and does the
process give its memory back, i.e. is RSS at the end, with everything freed
and the heap scavenged, within 32 MiB of RSS before the run?

It is the stress runner (realalloc/tools/stress.py, ``run_stress``) on a heap
this script creates, so every object is checked the same way as there: a
pattern derived from its address and a sequence number is written at malloc
and compared before free (on the thread that allocated it or, for a share of
the frees, another one), and random live objects are compared between
operations.  See bench/README.md ("Soak") for the method.

Run from the repository root after ``pip install -e .``::

    python bench/soak.py                                  # 10^6 operations, a quick try
    python bench/soak.py --ops 100000000 --threads 8 --json soak.json

Exit status 0 when every target is met, 1 when one is not, 2 for bad usage.
REALALLOC_DEBUG is forced to 0 (the allocator's internal checks off, as in
the other benchmarks); ``heap.check()`` at the end still checks everything.
"""

from __future__ import annotations

import os

os.environ["REALALLOC_DEBUG"] = "0"  # before realalloc is imported

import argparse
import gc
import json
import math
import platform
import resource
import sys
from dataclasses import asdict
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers

import realalloc
from realalloc.tools.stress import DISTRIBUTIONS, StressConfig, run_stress, writable_path

MIB = 1 << 20
RSS_SLACK_MIB = 32
"""Target: RSS at the end at most this much above RSS at the start."""


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, StressConfig]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--ops",
        type=int,
        default=1_000_000,
        help="operations (mallocs + frees) in all, shared by the threads (default 10^6; "
        "the target run is 10^8)",
    )
    ap.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    ap.add_argument(
        "--distribution",
        choices=DISTRIBUTIONS[:-1],
        default="uniform",
        help="object sizes (default uniform over Go's size classes)",
    )
    ap.add_argument("--live", type=int, default=2000, help="live objects per thread")
    ap.add_argument(
        "--verify-rate",
        type=float,
        default=0.05,
        help="chance per malloc of also checking a random live object (default 0.05)",
    )
    ap.add_argument("--cross-free", type=float, default=0.3, help="share of cross-thread frees")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--rss-slack-mib",
        type=float,
        default=RSS_SLACK_MIB,
        help=f"the RSS target: end - start <= this (default {RSS_SLACK_MIB})",
    )
    ap.add_argument(
        "--progress-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="off a terminal, a progress line every SECONDS (default 30)",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    ap.add_argument("--json", metavar="FILE", type=writable_path, help="also write the numbers")
    args = ap.parse_args(argv)
    if args.ops < 1:
        ap.error(f"argument --ops: must be >= 1, got {args.ops}")
    if not args.rss_slack_mib >= 0:
        ap.error(f"argument --rss-slack-mib: must be >= 0, got {args.rss_slack_mib}")
    cfg = StressConfig(
        threads=args.threads,
        # run_stress counts per worker; a worker's mallocs and frees add up to
        # exactly this, so the threads together do at least --ops
        ops=math.ceil(args.ops / max(args.threads, 1)),
        distribution=args.distribution,
        live=args.live,
        verify_rate=args.verify_rate,
        cross_free=args.cross_free,
        seed=args.seed,
        progress=not args.quiet,
        progress_every=args.progress_every,
    )
    try:
        cfg.check()
    except realalloc.RealAllocError as exc:
        ap.error(str(exc))
    return args, cfg


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    gc.collect()
    with realalloc.Heap() as heap:  # default arguments: the background scavenger runs
        # run_stress reads the start RSS with this heap created and before any
        # worker starts, and the end RSS after every object is freed, the heap
        # scavenged (heap.scavenge(): all free pages released) and checked.
        report = run_stress(cfg, progress=sys.stderr, heap=heap)
        st = heap.stats()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    operations = report.mallocs + report.frees
    grown = report.final_rss - report.baseline_rss
    slack = int(args.rss_slack_mib * MIB)
    targets = {
        "operations done": operations >= args.ops,
        "no corruption": not report.corruptions,
        "no worker error": not report.errors,
        "heap.check() ok": report.check == "ok",
        "no object left": st.heap_objects == 0,
        f"end RSS within {args.rss_slack_mib:g} MiB of start": grown <= slack,
    }
    result: dict[str, Any] = {
        "revision": peers.git_revision(),
        "python": platform.python_version(),
        "cpu": peers.cpu_model(),
        "ncpu": os.cpu_count(),
        "ops_requested": args.ops,
        "threads": cfg.threads,
        "distribution": cfg.distribution,
        "live_per_thread": cfg.live,
        "verify_rate": cfg.verify_rate,
        "operations": operations,
        "mallocs": report.mallocs,
        "frees": report.frees,
        "cross_thread_frees": report.cross_thread_frees,
        "failed_mallocs": report.failed_mallocs,
        "verifies": report.verifies,
        "bytes_allocated": report.bytes_allocated,
        "seconds": report.seconds,
        "ops_per_second": report.ops_per_second,
        "corruptions": len(report.corruptions),
        "first_corruptions": [asdict(c) for c in report.corruptions[:100]],
        "errors": report.errors[:100],
        "check": report.check,
        "rss_start": report.baseline_rss,
        "rss_peak": peak,
        "rss_peak_sampled": report.peak_rss,
        "rss_end": report.final_rss,
        "rss_end_minus_start": grown,
        "rss_slack": slack,
        "heap_end": {
            "heap_objects": st.heap_objects,
            "heap_inuse": st.heap_inuse,
            "heap_idle": st.heap_idle,
            "heap_released": st.heap_released,
            "metadata": st.metadata,
            "mapped": st.mapped,
        },
        "targets": targets,
        "pass": all(targets.values()),
    }
    print(format_result(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0 if result["pass"] else 1


def format_result(r: dict[str, Any]) -> str:
    def mib(n: int) -> str:
        return f"{n / MIB:,.1f} MiB" if n >= MIB or n == 0 else f"{n / 1024:,.1f} KiB"

    lines = [
        f"soak: realalloc {r['revision']}, Python {r['python']}, {r['cpu']} ({r['ncpu']} CPUs)",
        f"  threads {r['threads']}, distribution {r['distribution']}, "
        f"{r['live_per_thread']} live objects per thread, verify rate {r['verify_rate']}",
        f"  operations     {r['operations']:,} ({r['mallocs']:,} mallocs, {r['frees']:,} frees, "
        f"{r['cross_thread_frees']:,} cross-thread; {r['failed_mallocs']:,} mallocs failed)",
        f"  seconds        {r['seconds']:,.1f}",
        f"  ops/s          {r['ops_per_second']:,.0f}",
        f"  verified       {r['verifies']:,} objects, {mib(r['bytes_allocated'])} allocated",
        f"  corruptions    {r['corruptions']}",
        f"  heap.check()   {r['check']}",
        f"  RSS start      {mib(r['rss_start'])}",
        f"  RSS peak       {mib(r['rss_peak'])} (sampled every 0.5 s: "
        f"{mib(r['rss_peak_sampled'])})",
        f"  RSS end        {mib(r['rss_end'])} ({r['rss_end_minus_start'] / MIB:+,.1f} MiB "
        f"over the start; heap: {mib(r['heap_end']['heap_inuse'])} in use, "
        f"{mib(r['heap_end']['heap_idle'] - r['heap_end']['heap_released'])} idle resident, "
        f"{mib(r['heap_end']['metadata'])} metadata)",
    ]
    for name, met in r["targets"].items():
        lines.append(f"  {'met    ' if met else 'NOT MET'}  {name}")
    lines.append(f"soak: {'PASS' if r['pass'] else 'FAIL'}")
    for c in r["first_corruptions"][:10]:
        lines.append(
            f"  {c['when']}: object at {c['address']:#x} ({c['size']} B, seq {c['seq']}, "
            f"thread {c['thread']}) differs at byte {c['offset']}"
        )
    for e in r["errors"][:10]:
        lines.append(f"  error: {e}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
