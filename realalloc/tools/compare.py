"""``realalloc compare``: the same workloads on every design, realalloc's Go heap and glibc.

See realalloc/designs/__init__.py for the designs and
realalloc/tools/workloads/__init__.py for the workloads.

Allocators (``--designs``, a comma-separated subset, in this order):

  freelist, segregated, tcmalloc   the seed's designs (realalloc.designs), over MHeap
  go                               realalloc.Heap(zero=False), Go's allocator, over
                                   MHeap (memory not cleared, as glibc's malloc and
                                   the designs hand it out)
  glibc                            the C library's malloc and free, called through
                                   ctypes (keeping the GIL), nothing in LD_PRELOAD

Workloads (``--workloads``): larson, mstress, xmalloc-test, alloc-test, large
(after mimalloc-bench) and fragmentation (bench/bench_fragmentation.py's),
scaled by ``--scale`` (1 = the benchmarks' full size; the default, 0.1, runs
the whole table in about 45 s on a 2-CPU machine).

Every (workload, allocator) pair runs in a subprocess of its own
(``python -m realalloc.tools.compare --child ALLOCATOR WORKLOAD``), so each
RSS figure is that allocator's: REALALLOC_DEBUG=0, LD_PRELOAD removed, pinned
to one CPU (``--cpu``; Python threads run one at a time anyway, and handing
the GIL over on one CPU is steadier on a shared machine).  The child draws
the workload's random choices (the same seed for every allocator), creates
the allocator, mallocs and frees once, switches the cyclic GC off, reads its
RSS (the baseline) and resets its peak RSS (``/proc/self/clear_refs``), then
times ``execute``.

The child wraps ``malloc`` and ``free`` in a tracker that keeps every live
object's requested size (the same Python for every allocator, so the times
include it, as they include the workload's stamps; they compare allocators,
they are not allocator-only times).  The tracker samples the allocator's own
view every 512 mallocs and whenever live bytes pass their peak by 1/64.

Columns, per workload and allocator:

  time       seconds in ``execute``: the workload, driver included
  alloc      seconds inside malloc and free, summed over the threads (a call
             that waits for a lock, or for the GIL while another thread holds
             the lock, counts its wait)
  +peak      peak RSS minus the baseline, MiB
  +final     RSS after the workload freed everything, minus the baseline, MiB
             (no release call: the designs' MHeap keeps freed pages resident;
             realalloc.Heap's background scavenger and glibc's trimming may act)
  live       peak of the bytes the live objects asked for, MiB
  held       peak of the bytes the allocator held for objects, MiB: a design's
             page runs from MHeap (``stats().bytes_held``); Go's in-use spans
             (``stats().heap_inuse``); glibc's arenas and mmapped chunks
             (mallinfo2 ``arena + hblkhd``, less the baseline and the tracker's
             own table, which the interpreter also mallocs)
  usable     usable bytes of the live objects / bytes they asked for, when live
             bytes peak: rounding up to classes and blocks, glibc's chunk
             headers (Go's heap_alloc for realalloc.Heap; mallinfo2 ``uordblks
             + hblkhd`` for glibc)
  frag       held / live: memory needed per byte of the peak live set
             (Johnstone and Wilson's fourth measure; both maxima)
  meta       peak metadata, KiB: a design's ``stats().metadata_bytes``; Go's
             ``Heap.metadata_bytes()`` (span records, bitmaps, arena maps,
             caches); glibc's is not measured (headers inside its chunks: '-')

Options: ``--json FILE`` writes every number; ``--png FILE`` draws the table
(needs matplotlib: ``pip install 'realalloc[plot]'``).  A bad name, a path
that cannot be written or a missing matplotlib is a usage error (exit 2)
found before any run.  Exit 1 when a run failed.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any, Final, TextIO

from .workloads import WORKLOADS
from .workloads import load as load_workload
from .workloads.common import Allocator, Memory

__all__ = ["ALLOCATORS", "add_arguments", "compare_main"]

ALLOCATORS: Final = ("freelist", "segregated", "tcmalloc", "go", "glibc")
"""Allocator names, in table order."""
DEFAULT_SCALE: Final = 0.1
SEED: Final = 20240601
MARK: Final = "RESULT "
_MIB: Final = 1 << 20
_SAMPLE_EVERY: Final = 512


# -- the child: one workload on one allocator -------------------------------------------


@dataclass(frozen=True)
class Sample:
    """The allocator's own view of its memory at one moment, bytes."""

    held: int
    """held for objects: page runs, in-use spans, arenas"""
    usable: int
    """usable bytes of the live objects: their blocks, slots or chunks"""
    metadata: int | None
    """None where not measured"""


@dataclass
class _Target:
    """An allocator in the child: its calls, and its own view of its memory."""

    malloc: Callable[[int], int]
    free: Callable[[int], None]
    sample: Callable[[], Sample]
    close: Callable[[], None]
    version: str
    detail: Callable[[], dict[str, int]] = dict  # a design's own counters, at the end


class _MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (glibc >= 2.33)."""

    _fields_ = [
        (field, ctypes.c_size_t)
        for field in (
            "arena",  # bytes of the heap arenas (sbrk and mmapped), free chunks included
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",  # bytes of chunks mmapped on their own
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _open(name: str) -> _Target:
    """Create allocator ``name`` in this process."""
    if name == "glibc":
        if os.environ.get("LD_PRELOAD"):
            raise RuntimeError("glibc: LD_PRELOAD is set, malloc would not be glibc's")
        # PyDLL: calls keep the GIL, as realalloc's C methods do (a call that let
        # it go would hand it to another workload thread, a cost no other
        # allocator pays).  Addresses travel as size_t: ints, as everywhere else.
        libc = ctypes.PyDLL(None)
        malloc, free = libc.malloc, libc.free
        malloc.restype, malloc.argtypes = ctypes.c_size_t, [ctypes.c_size_t]
        free.restype, free.argtypes = None, [ctypes.c_size_t]
        mallinfo2 = libc.mallinfo2
        mallinfo2.restype, mallinfo2.argtypes = _MallInfo2, []
        libc.gnu_get_libc_version.restype = ctypes.c_char_p

        def glibc_sample() -> Sample:
            info = mallinfo2()
            return Sample(int(info.arena + info.hblkhd), int(info.uordblks + info.hblkhd), None)

        version = libc.gnu_get_libc_version().decode()
        return _Target(malloc, free, glibc_sample, lambda: None, version)
    if name == "go":
        import realalloc

        heap = realalloc.Heap(zero=False)  # like for like: no allocator here clears

        def go_sample() -> Sample:
            st = heap.stats()
            return Sample(st.heap_inuse, st.heap_alloc, heap.metadata_bytes())

        return _Target(heap.malloc, heap.free, go_sample, heap.close, realalloc.__version__)
    from ..designs import make

    design = make(name)

    def design_sample() -> Sample:
        st = design.stats()
        return Sample(st.bytes_held, st.bytes_allocated, st.metadata_bytes)

    def design_detail() -> dict[str, int]:
        return design.stats().detail

    return _Target(design.malloc, design.free, design_sample, design.close, "", design_detail)


class _Tracker:
    """malloc and free around a target, with live bytes and sampled peaks."""

    def __init__(self, target: _Target, baseline: Sample, in_view: bool) -> None:
        self._malloc, self._free, self._sample = target.malloc, target.free, target.sample
        # Subtracted from every sample: what the allocator held before the run,
        # and (``in_view``: the interpreter mallocs from the same allocator) the
        # tracker's own table.
        self._baseline, self._in_view = baseline, in_view
        self.sizes: dict[int, int] = {}  # live address -> requested size
        self.live = self.peak_live = self.peak_held = 0
        self.peak_meta: int | None = None
        self.usable_at_peak = self.live_at_peak = 0  # at the last sample on a new peak
        self._next = 0  # sample when live bytes reach this
        self._count = 0
        self.alloc_ns = 0  # inside malloc and free, summed over threads
        self._lock = threading.Lock()

    def malloc(self, size: int) -> int:
        t0 = perf_counter_ns()
        addr = self._malloc(size)
        t1 = perf_counter_ns()
        with self._lock:
            self.alloc_ns += t1 - t0
            self.sizes[addr] = size
            live = self.live = self.live + size
            self._count += 1
            if live > self.peak_live:
                self.peak_live = live
                if live >= self._next:
                    self._next = live + live // 64 + 1
                    usable = self.sample_locked()
                    self.usable_at_peak, self.live_at_peak = usable, live
            if self._count % _SAMPLE_EVERY == 0:
                self.sample_locked()
        return addr

    def free(self, addr: int) -> None:
        with self._lock:  # before the free: once freed, the address may come back
            self.live -= self.sizes.pop(addr)
        t0 = perf_counter_ns()
        self._free(addr)
        t1 = perf_counter_ns()
        with self._lock:
            self.alloc_ns += t1 - t0

    def sample(self) -> None:
        """Read the allocator's view now (after the run: its final state)."""
        with self._lock:
            self.sample_locked()

    def sample_locked(self) -> int:
        """Fold a sample into the peaks; returns its usable bytes."""
        now, base = self._sample(), self._baseline
        own = sys.getsizeof(self.sizes) if self._in_view else 0
        self.peak_held = max(self.peak_held, now.held - base.held - own)
        if now.metadata is not None:
            self.peak_meta = max(self.peak_meta or 0, now.metadata)
        return now.usable - base.usable - own


def _proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, bytes."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def run_child(allocator: str, workload: str, scale: float, seed: int) -> dict[str, Any]:
    """Run ``workload`` on ``allocator`` in this process; the measurements."""
    mod = load_workload(workload)
    plan = mod.prepare(scale, seed)
    target = _open(allocator)
    target.free(target.malloc(64))  # initialised before the baseline
    # glibc's arenas hold the interpreter's mallocs too: count from what they held
    # now, and leave out the tracker's own table.  The others serve only the workload.
    in_view = allocator == "glibc"
    tracker = _Tracker(target, target.sample() if in_view else Sample(0, 0, None), in_view)
    alloc = Allocator(allocator, tracker.malloc, tracker.free, target.version, target.close)
    gc.collect()
    gc.disable()
    base = _proc_status()["VmRSS"]
    reset = _reset_peak()
    t0 = time.perf_counter()
    counts = mod.execute(alloc, Memory(), plan)
    seconds = time.perf_counter() - t0
    end = _proc_status()
    tracker.sample()
    gc.enable()
    peak = end["VmHWM"] if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    leaked = len(tracker.sizes)
    detail = target.detail()
    target.close()
    return {
        "workload": workload,
        "allocator": allocator,
        "version": target.version,
        "scale": scale,
        "seconds": seconds,
        "alloc_seconds": tracker.alloc_ns / 1e9,
        "rss_baseline": base,
        "peak_rss": peak - base,
        "final_rss": end["VmRSS"] - base,
        "peak_live": tracker.peak_live,
        "peak_held": tracker.peak_held,
        "fragmentation": tracker.peak_held / tracker.peak_live if tracker.peak_live else None,
        "usable_ratio": (
            tracker.usable_at_peak / tracker.live_at_peak if tracker.live_at_peak else None
        ),
        "metadata": tracker.peak_meta,
        "detail": detail,
        "peak_reset": reset,
        "left_live": leaked,
        **counts,
    }


def _child_main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m realalloc.tools.compare")
    ap.add_argument("--child", nargs=2, metavar=("ALLOCATOR", "WORKLOAD"), required=True)
    ap.add_argument("--scale", type=float, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--cpu", type=int, default=-1)
    args = ap.parse_args(argv)
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    result = run_child(args.child[0], args.child[1], args.scale, args.seed)
    print(MARK + json.dumps(result), flush=True)
    return 0


# -- the parent: validate, spawn, tabulate -----------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``compare`` subcommand."""
    parser.add_argument(
        "--designs",
        default=",".join(ALLOCATORS),
        help=f"allocators, comma-separated (default: {','.join(ALLOCATORS)})",
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"workloads, comma-separated (default: {','.join(WORKLOADS)})",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=DEFAULT_SCALE,
        help=f"work per run, 1 = the benchmarks' size (default {DEFAULT_SCALE})",
    )
    parser.add_argument("--seed", type=int, default=SEED, help="random seed of the workloads")
    parser.add_argument(
        "--cpu",
        type=int,
        default=max(os.sched_getaffinity(0)),
        help="pin every run to this CPU; -1: do not pin (default: the last CPU)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--json", metavar="FILE", help="also write every number as JSON")
    parser.add_argument(
        "--png", metavar="FILE", help="also draw the table (needs the extra realalloc[plot])"
    )
    # compare_main prints this on a usage error, as argparse would.
    parser.set_defaults(compare_usage=parser.format_usage())


def _names(text: str, known: Sequence[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"no {what} given; choose from {', '.join(known)}")
    for n in names:
        if n not in known:
            raise ValueError(f"unknown {what[:-1]} {n!r}; choose from {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a {what[:-1]} is listed twice in {text!r}")
    return names


def _check_writable(path: str, option: str) -> None:
    """Raise ValueError unless ``path`` can be written; leaves no file behind."""
    p = pathlib.Path(path)
    if p.is_dir():
        raise ValueError(f"{option} {path}: is a directory")
    existed = p.exists()
    try:
        with open(p, "ab"):
            pass
    except OSError as e:
        raise ValueError(f"{option} {path}: cannot be written ({e.strerror})") from None
    if not existed:
        p.unlink()


def _validate(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(allocators, workloads) from the arguments; ValueError for a usage error."""
    allocators = _names(args.designs, ALLOCATORS, "designs")
    workloads = _names(args.workloads, WORKLOADS, "workloads")
    if not 0 < args.scale <= 10:
        raise ValueError(f"--scale must be in (0, 10], got {args.scale}")
    if not args.timeout > 0:
        raise ValueError(f"--timeout must be positive, got {args.timeout}")
    if args.cpu >= 0 and args.cpu not in os.sched_getaffinity(0):
        raise ValueError(f"--cpu {args.cpu}: not a CPU this process may use")
    if args.png:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--png needs matplotlib: pip install 'realalloc[plot]'") from None
    for option in ("json", "png"):
        path = getattr(args, option)
        if path:
            _check_writable(path, f"--{option}")
    return allocators, workloads


def spawn(
    allocator: str, workload: str, scale: float, seed: int, cpu: int, timeout: float
) -> dict[str, Any]:
    """Run one pair in a subprocess; its result or {"error": ...}."""
    env = dict(os.environ)
    env["REALALLOC_DEBUG"] = "0"
    env.pop("LD_PRELOAD", None)
    cmd = [sys.executable, "-m", "realalloc.tools.compare", "--child", allocator, workload]
    cmd += ["--scale", repr(scale), "--seed", str(seed), "--cpu", str(cpu)]
    failed = {"workload": workload, "allocator": allocator}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**failed, "error": f"timeout ({timeout:g} s)"}
    if proc.returncode == 0:
        for line in proc.stdout.splitlines():
            if line.startswith(MARK):
                result: dict[str, Any] = json.loads(line[len(MARK) :])
                if result["left_live"] or result["mallocs"] != result["frees"]:
                    result["error"] = (
                        f"{result['mallocs']} mallocs, {result['frees']} frees, "
                        f"{result['left_live']} objects left live"
                    )
                return result
    tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
    return {**failed, "error": f"exit status {proc.returncode}: {tail}"}


def _mib(x: float) -> str:
    return f"{x / _MIB:.2f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The one table: a row per (workload, allocator)."""
    head = (
        f"{'workload':<13} {'allocator':<10} {'time s':>7} {'alloc s':>7} {'+peak':>7} "
        f"{'+final':>7} {'live':>7} {'held':>7} {'usable':>6} {'frag':>6} {'meta KiB':>9}"
    )
    lines = [head, "-" * len(head)]
    last = None
    for r in rows:
        w = r["workload"] if r["workload"] != last else ""
        last = r["workload"]
        if "error" in r:
            lines.append(f"{w:<13} {r['allocator']:<10} FAILED: {r['error'][:120]}")
            continue
        frag = f"{r['fragmentation']:.2f}" if r["fragmentation"] is not None else "-"
        usable = f"{r['usable_ratio']:.2f}" if r["usable_ratio"] is not None else "-"
        meta = f"{r['metadata'] / 1024:.1f}" if r["metadata"] is not None else "-"
        lines.append(
            f"{w:<13} {r['allocator']:<10} {r['seconds']:>7.3f} {r['alloc_seconds']:>7.3f} "
            f"{_mib(r['peak_rss']):>7} {_mib(r['final_rss']):>7} {_mib(r['peak_live']):>7} "
            f"{_mib(r['peak_held']):>7} {usable:>6} {frag:>6} {meta:>9}"
        )
    lines.append(
        "alloc: seconds inside malloc/free; +peak, +final: RSS above the run's baseline, MiB;\n"
        "live, held: peaks of the bytes asked for and held, MiB; usable: usable / asked for "
        "at the peak;\nfrag = held / live; meta: peak metadata, KiB ('-': not measured)"
    )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """Four panels (time, peak RSS, fragmentation, metadata): a group of bars per
    workload, a bar per allocator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [r for r in rows if "error" not in r]
    workloads = list(dict.fromkeys(r["workload"] for r in good))
    allocators = list(dict.fromkeys(r["allocator"] for r in good))
    panels: list[tuple[str, Callable[[dict[str, Any]], float | None]]] = [
        ("seconds inside malloc and free", lambda r: r["alloc_seconds"]),
        ("peak RSS above baseline, MiB", lambda r: r["peak_rss"] / _MIB),
        ("fragmentation (held / live)", lambda r: r["fragmentation"]),
        ("metadata, KiB", lambda r: None if r["metadata"] is None else r["metadata"] / 1024),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    width = 0.8 / max(1, len(allocators))
    by = {(r["workload"], r["allocator"]): r for r in good}
    for ax, (title, get) in zip(axes.flat, panels, strict=True):
        for k, a in enumerate(allocators):
            xs, ys = [], []
            for i, w in enumerate(workloads):
                r = by.get((w, a))
                v = get(r) if r is not None else None
                if v is not None:
                    xs.append(i + (k - (len(allocators) - 1) / 2) * width)
                    ys.append(v)
            ax.bar(xs, ys, width, label=a)
        ax.set_title(title)
        ax.set_xticks(range(len(workloads)), workloads, rotation=20)
    axes.flat[0].legend()
    fig.suptitle("realalloc compare: the seed's designs, Go's allocator and glibc")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare_main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """The ``compare`` subcommand: validate, run every pair, print the table.
    Returns 0, 1 when a run failed, 2 for a usage error (before any run)."""
    stream = sys.stdout if out is None else out
    try:
        allocators, workloads = _validate(args)
    except ValueError as e:
        usage = getattr(args, "compare_usage", "usage: realalloc compare [options]\n")
        print(f"{usage}realalloc compare: error: {e}", file=sys.stderr)
        return 2
    print(
        f"{len(workloads)} workloads x {len(allocators)} allocators, scale {args.scale:g}, "
        f"seed {args.seed}; Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        + (f"runs pinned to CPU {args.cpu}" if args.cpu >= 0 else "runs not pinned"),
        file=stream,
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for w in workloads:
        for a in allocators:
            r = spawn(a, w, args.scale, args.seed, args.cpu, args.timeout)
            rows.append(r)
            done = r["error"] if "error" in r else f"{r['seconds']:.3f} s"
            print(f"  {w:<13} {a:<10} {done}", file=sys.stderr, flush=True)
    print(file=stream)
    print(format_table(rows), file=stream)
    print(f"total {time.monotonic() - t0:.0f} s", file=stream)
    if args.json:
        meta = {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "scale": args.scale,
            "seed": args.seed,
            "cpu": args.cpu,
        }
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=1)
    if args.png:
        plot(rows, args.png)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(_child_main())
