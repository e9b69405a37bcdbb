"""Command line: ``python -m realalloc {stress,tour,classes,compare,map}``.

See realalloc/__init__.py for an overview of the allocator.  ``main`` parses
the command line and returns the exit code; bad usage is argparse's exit 2.
The ``stress`` subcommand, its options and its exit codes belong to
realalloc/tools/stress.py; ``map`` (a picture of a demonstration heap's
pages) to realalloc/tools/heapmap.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..core.mheap import MHeap
from ..core.rss import rss
from ..core.sizeclasses import PAGE_SIZE, format_class_table
from ..errors import RealAllocError
from .compare import add_arguments as add_compare_arguments
from .compare import compare_main
from .heapmap import add_arguments as add_map_arguments
from .heapmap import map_main
from .stress import add_arguments as add_stress_arguments
from .stress import config_from_args, stress_main

__all__ = ["main"]

_MIB = 1 << 20


def _mib(nbytes: int) -> str:
    return f"{nbytes / _MIB:8.1f} MiB"


def _heap_summary(heap: MHeap) -> str:
    pages = heap.pages
    os_stats = heap.os.stats()
    return (
        f"  arenas {len(heap.arenas)}   spans {sum(1 for _ in heap.live_spans())}\n"
        f"  heap pages   {_mib(pages.npages_total * PAGE_SIZE)}"
        f"   free {_mib(pages.npages_free * PAGE_SIZE)}"
        f"   free+released {_mib(pages.npages_scavenged * PAGE_SIZE)}\n"
        f"  OS           reserved {_mib(os_stats.reserved)}   ready {_mib(os_stats.ready)}"
        f"   released total {_mib(os_stats.released_total)}"
    )


def tour(out: object = None) -> int:
    """Map real memory, allocate and free page runs, and show heap and RSS."""

    def say(text: str = "") -> None:
        print(text, file=sys.stdout if out is None else out)  # type: ignore[arg-type]

    baseline = rss()
    say(f"process RSS at start: {_mib(baseline)}")
    sizes = [1, 2, 3, 8, 15, 64, 512, 1000, 4096]
    with_heap = MHeap()
    try:
        spans = []
        say("\nallocating runs of pages and writing a pattern into every byte:")
        say(f"  {'pages':>6} {'bytes':>10} {'base':>16}")
        for i, npages in enumerate(sizes):
            span = with_heap.alloc_manual(npages)
            span.view()[:] = bytes([i + 1]) * span.nbytes
            spans.append(span)
            say(f"  {npages:>6} {span.nbytes:>10} {span.base:#16x}")
        touched = sum(s.nbytes for s in spans)
        say(f"\nheap after allocating {_mib(touched).strip()}:")
        say(_heap_summary(with_heap))
        grown = rss()
        say(f"  RSS {_mib(grown)}  (+{_mib(grown - baseline).strip()} over the start)")

        say("\nfreeing every other run, then releasing all free pages to the OS:")
        for span in spans[1::2]:
            with_heap.free_manual(span)
        released = with_heap.scavenge()
        after = rss()
        say(_heap_summary(with_heap))
        say(
            f"  scavenged {_mib(released).strip()}; RSS {_mib(after)}"
            f"  ({_mib(grown - after).strip()} given back)"
        )

        bad = [s for i, s in enumerate(spans[::2]) if s.view().tobytes().strip(bytes([2 * i + 1]))]
        say(f"\nthe runs still allocated hold their patterns: {'no' if bad else 'yes'}")
        with_heap.check()
        say("heap.check(): every invariant holds")
        return 1 if bad else 0
    finally:
        with_heap.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="realalloc", description="Go's memory allocator over real memory, from Python."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("tour", help="map real memory, allocate pages, show the heap and RSS")
    sub.add_parser("classes", help="print Go's size-class table as realalloc generates it")
    stress = sub.add_parser(
        "stress",
        help="churn allocations on many threads, verify every byte, report",
        description="Churn real allocations on many threads, verify every byte, report.",
    )
    add_stress_arguments(stress)
    add_compare_arguments(
        sub.add_parser(
            "compare",
            help="run the same workloads on every allocator design and on glibc; one table",
            description="Run the seed's allocator designs, realalloc's Go heap and glibc "
            "on the same workloads; print one table (--json, --png).",
        )
    )
    add_map_arguments(
        sub.add_parser(
            "map",
            help="draw every page of a demonstration heap, by state and residency, as a PNG",
            description="Build a small demonstration heap (tiny, small, large, manual, "
            "freed and released pages) and draw each of its 8 KiB pages, coloured by "
            "state, darker when resident in RAM.",
        )
    )
    args = parser.parse_args(argv)  # checks every stress option: exit 2 before any work
    if args.command == "classes":
        print(format_class_table())
        return 0
    if args.command == "compare":
        return compare_main(args)
    if args.command == "map":
        return map_main(args)
    if args.command == "stress":
        try:
            cfg = config_from_args(args)
        except RealAllocError as exc:
            stress.error(str(exc))  # exits 2 with the stress usage
        # Only the checks above are usage errors: whatever happens in the run is
        # told by stress_main's exit code (or, for a bug, a traceback).
        return stress_main(cfg, json_path=args.json, plot_path=args.plot)
    return tour()
