"""malloc/free pairs from Python: realalloc.Heap against glibc, mimalloc and tcmalloc.

Every allocator runs the *same* Python loop; only the two callables differ,
passed in as arguments, so the loop calls locals: ``m`` (malloc: size -> int
address) and ``f`` (free: address -> None).

* realalloc: the C methods ``Heap.malloc`` / ``Heap.free`` of two heaps, one
  ``Heap(zero=False)`` (malloc hands out memory uncleared, as C's malloc:
  compared with the peers' ``malloc``) and one ``Heap()`` (``zero=True``,
  memory cleared as calloc does: compared with the peers' ``calloc(1, n)``).
* Each peer (glibc, mimalloc, tcmalloc) in two flavours built by
  bench/peers.py with the same compiler flags as realalloc's C code:
  ``capi``, a CPython extension with realalloc's calling convention and
  argument conversions (METH_FASTCALL ``malloc`` / ``calloc``, METH_O
  ``free``; the like-for-like comparison, which the targets use), and
  ``cffi`` (API mode, ``uintptr_t`` in and out; the GIL is released around
  every call), reported beside it.  Each flavour has a malloc row and a
  calloc row.
* Context: no-op C functions in both flavours (the cost of the calls alone).

Workloads (sequences pre-generated from one seed, identical for every allocator):

* ``fixed64``: ``p = m(64); f(p)``: the cached-span fast path.
* ``mixed-uniform``: a live set of 10,000 objects; each pair allocates an
  object of a random small size class and frees a random live object
  (``p = m(size[i]); f(live[k[i]]); live[k[i]] = p``), so spans of every class
  are filled, emptied, swept and refilled.  Sizes are the 67 size classes'
  object sizes (8 B .. 32 KiB), each class equally likely (mean 5.6 KiB).
* ``mixed-small``: the same, each class weighted by 1/size, so small objects
  dominate as in real programs (30 % are 8 B, 72 % are <= 64 B, mean 161 B).

Every allocator runs in one process: peers call their library's prefixed
entry points from modules loaded RTLD_LOCAL, so the interpreter stays on
glibc (checked at start).  Rounds are interleaved (A, B, C, ..., A, B, C,
...); round 0 warms up and is not timed.  Rounds are timed in CPU time of
the process (``time.process_time_ns``, every thread) and in wall time; on a
shared machine wall time also counts other processes' turns on the CPU, so
the ratios use CPU time (wall-time ratios are printed beside the targets).
A ratio A / B is the median over rounds of A's time over B's in the same
round, pooled over all sessions (subprocesses; each draws the same
sequences).  Reported too: the share of realalloc's mallocs that ran Python
code (``Heap.python_mallocs``) in the timed rounds.  A last subprocess
measures allocator metadata for 1,000,000 live 64-byte objects in a
``Heap()``: ``Heap.metadata_bytes()`` / 64,000,000 bytes in use.

Run from the repository root: ``python bench/bench_malloc.py [--quick] [--json FILE]``
(after ``pip install -e .``; pin it with ``taskset -c 1`` on a shared machine).
REALALLOC_DEBUG is forced to 0.  See bench/README.md.
"""

from __future__ import annotations

import os

os.environ["REALALLOC_DEBUG"] = "0"  # before realalloc is imported; inherited by workers

import argparse
import gc
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers

WORKLOADS = ("fixed64", "mixed-uniform", "mixed-small")
RA = "realalloc"
"""``Heap(zero=False)``: malloc does not clear memory, as C's malloc."""
RA_ZERO = "realalloc zero"
"""``Heap()`` (zero=True): malloc clears memory, as calloc."""
REF = "glibc capi"
"""The reference of the ratio column of the table."""


def row(peer: str, flavour: str, zeroing: bool = False) -> str:
    """Name of the row of ``peer``'s malloc (calloc if ``zeroing``) through ``flavour``."""
    return f"{peer} {flavour}" + (" calloc" if zeroing else "")


TARGETS: dict[tuple[str, str, str], float] = {
    ("fixed64", RA, row("glibc", "capi")): 1.1,
    ("fixed64", RA, row("mimalloc", "capi")): 1.2,
    ("fixed64", RA, row("tcmalloc", "capi")): 1.2,
    ("mixed-uniform", RA, row("glibc", "capi")): 1.5,
    ("mixed-small", RA, row("glibc", "capi")): 1.2,
}
"""(workload, numerator, denominator) -> the issue's bound on the ratio."""
PYTHON_SHARE_TARGET_PCT = 1.0
"""Bound on the share of realalloc's mallocs that run Python, in the mixed runs."""
PYTHON_SHARE_TARGETED = ("mixed-uniform", "mixed-small")
METADATA_TARGET_PCT = 1.6
LIVE = 10_000
OBJ = 64

# The timed loops, as source: exec'd once per allocator and workload so every
# allocator gets byte-identical code with its own specialisation caches
# (CPython 3.11+ specialises each CALL site for the type of callable it sees).
LOOP_SOURCE = """
def fixed(m, f, size, start, stop):
    for i in range(start, stop):
        p = m(size)
        f(p)


def mixed(m, f, size, k, live, start, stop):
    for i in range(start, stop):
        p = m(size[i])
        f(live[k[i]])
        live[k[i]] = p
"""


def fresh_loops() -> dict[str, Any]:
    ns: dict[str, Any] = {}
    exec(compile(LOOP_SOURCE, "<bench_malloc loops>", "exec"), ns)
    return ns


@dataclass
class Alloc:
    name: str
    m: Callable[..., Any]
    f: Callable[[Any], Any]
    heap: Any = None
    """The realalloc heap behind ``m`` and ``f`` (for ``python_mallocs``), or None."""


def comparisons(peer_names: list[str]) -> list[tuple[str, str]]:
    """(numerator, denominator) rows of the ratio table, like for like first."""
    names = ["glibc", *peer_names]
    return [
        *((RA, row(p, "capi")) for p in names),
        *((RA_ZERO, row(p, "capi", True)) for p in names),
        *((RA, row(p, "cffi")) for p in names),
        *((RA_ZERO, row(p, "cffi", True)) for p in names),
    ]


# ---------------------------------------------------------------- worker side


def worker_allocators(peer_names: list[str]) -> tuple[list[Alloc], Callable[[], None]]:
    """Every allocator measured, in round order: two fresh heaps, then the peers.

    The returned callable closes the heaps.
    """
    import realalloc

    plain, zeroing = realalloc.Heap(zero=False), realalloc.Heap()
    allocs = [
        Alloc(RA, plain.malloc, plain.free, plain),
        Alloc(RA_ZERO, zeroing.malloc, zeroing.free, zeroing),
    ]
    for name in ["glibc", *peer_names]:
        mod, lib = peers.load(name, "capi"), peers.load(name)
        allocs += [
            Alloc(row(name, "capi"), mod.malloc, mod.free),
            Alloc(row(name, "capi", True), mod.calloc, mod.free),
            Alloc(row(name, "cffi"), lib.g_malloc, lib.g_free),
            Alloc(row(name, "cffi", True), lib.g_calloc, lib.g_free),
        ]
    mod, lib = peers.load("glibc", "capi"), peers.load("glibc")
    allocs += [
        Alloc("no-op capi", mod.nop_malloc, mod.nop_free),
        Alloc("no-op cffi", lib.g_nop_malloc, lib.g_nop_free),
    ]

    def close() -> None:
        plain.close()
        zeroing.close()

    return allocs, close


def check_isolation(peer_names: list[str]) -> str:
    """Each peer owns what its malloc returns and nothing else; the interpreter runs on glibc."""
    import ctypes

    glibc = peers.load("glibc", "capi")
    buf = bytearray(100_000)  # PyMem_Malloc -> the process malloc
    pybuf = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    problems = []
    for name in peer_names:
        mod = peers.load(name, "capi")
        mine, theirs = mod.malloc(64), glibc.malloc(64)
        if not mod.owns(mine):
            problems.append(f"{name} does not own its own allocation")
        if mod.owns(theirs):
            problems.append(f"{name} owns glibc's allocation")
        if mod.owns(pybuf):
            problems.append(f"{name} serves the interpreter's malloc")
        mod.free(mine)
        glibc.free(theirs)
    return "; ".join(problems) or "ok"


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    from realalloc import _debug

    peer_names = [p for p in args.peers.split(",") if p]
    sizes = [int(s) for s in args.class_sizes.split(",")]
    out: dict[str, Any] = {"rounds": {}, "wall": {}, "python_mallocs": {}, "pairs": {}}
    out["all_mallocs"] = {}
    out["isolation"] = check_isolation(peer_names)
    out["realalloc_debug"] = _debug.DEBUG
    rng = random.Random(args.seed)
    for workload in WORKLOADS:
        n = args.fixed_pairs if workload == "fixed64" else args.mixed_pairs
        total = n * (args.rounds + 1)
        out["pairs"][workload] = n
        allocs, close = worker_allocators(peer_names)
        loops = {a.name: fresh_loops() for a in allocs}
        lives: dict[str, list[Any]] = {}
        size_seq: list[int] = []
        k_seq: list[int] = []
        if workload != "fixed64":
            weights = None if workload == "mixed-uniform" else [1 / s for s in sizes]
            size_seq = rng.choices(sizes, weights, k=total)
            k_seq = rng.choices(range(args.live), k=total)
            init = rng.choices(sizes, weights, k=args.live)
            for a in allocs:
                lives[a.name] = [a.m(s) for s in init]
        times: dict[str, list[float]] = {a.name: [] for a in allocs}
        walls: dict[str, list[float]] = {a.name: [] for a in allocs}
        python: dict[str, int] = {a.name: 0 for a in allocs if a.heap is not None}
        clock, wall = time.process_time_ns, time.perf_counter_ns
        gc.collect()
        gc.disable()
        try:
            for r in range(args.rounds + 1):  # round 0 warms up, untimed
                start, stop = r * n, (r + 1) * n
                for a in allocs:
                    before = a.heap.python_mallocs if a.heap is not None else 0
                    if workload == "fixed64":
                        loop = loops[a.name]["fixed"]
                        w0, t0 = wall(), clock()
                        loop(a.m, a.f, OBJ, start, stop)
                        t1, w1 = clock(), wall()
                    else:
                        loop = loops[a.name]["mixed"]
                        live = lives[a.name]
                        w0, t0 = wall(), clock()
                        loop(a.m, a.f, size_seq, k_seq, live, start, stop)
                        t1, w1 = clock(), wall()
                    if r:
                        times[a.name].append((t1 - t0) / n)
                        walls[a.name].append((w1 - w0) / n)
                        if a.heap is not None:
                            python[a.name] += a.heap.python_mallocs - before
        finally:
            gc.enable()
        for a in allocs:
            for p in lives.get(a.name, ()):
                a.f(p)
        # python_mallocs over every malloc the heap served (live set, warm-up included)
        out["all_mallocs"][workload] = {
            a.name: [a.heap.python_mallocs, a.heap.stats().mallocs]
            for a in allocs
            if a.heap is not None
        }
        close()
        out["rounds"][workload] = times
        out["wall"][workload] = walls
        out["python_mallocs"][workload] = python
    return out


def run_metadata(args: argparse.Namespace) -> dict[str, Any]:
    import realalloc
    from realalloc import _debug

    heap = realalloc.Heap()
    out: dict[str, Any] = {"objects": args.metadata_objects, "object_size": OBJ, "heap": "Heap()"}
    out["realalloc_debug"] = _debug.DEBUG
    out["metadata_before"] = heap.metadata_bytes()
    m = heap.malloc
    addrs = [m(OBJ) for _ in range(args.metadata_objects)]
    out["distinct"] = len(set(addrs))
    md = heap.metadata_bytes()
    out["metadata_bytes"] = md
    out["percent"] = 100.0 * md / (args.metadata_objects * OBJ)
    f = heap.free
    for a in addrs:
        f(a)
    heap.close()
    return out


# ---------------------------------------------------------- orchestrator side


def spawn(args: argparse.Namespace, worker: str, class_sizes: str) -> dict[str, Any]:
    """Run one worker subprocess; its result, or {"error": ...}."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        path = tmp.name
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--worker-out", path]
    for flag in ("rounds", "fixed_pairs", "mixed_pairs", "live", "seed", "metadata_objects"):
        cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    cmd += ["--peers", args.peers, "--class-sizes", class_sizes]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
            return {"error": f"exit status {proc.returncode}: " + " | ".join(tail)}
        with open(path) as fh:
            result: dict[str, Any] = json.load(fh)
            return result
    finally:
        os.unlink(path)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def paired(
    sessions: list[dict[str, Any]], workload: str, a: str, b: str, clock: str = "rounds"
) -> list[float]:
    """a / b of every round, of every session (both ran in the same round of one process).

    ``clock``: "rounds" for CPU time, "wall" for wall time."""
    return [
        x / y
        for s in sessions
        for x, y in zip(s[clock][workload][a], s[clock][workload][b], strict=True)
    ]


def realalloc_status() -> str | None:
    """Why realalloc.Heap cannot be benchmarked, or None."""
    code = "import realalloc; h = realalloc.Heap(); a = h.malloc(64); h.free(a); h.close()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        return lines[-1]
    return None


def summarize(sessions: list[dict[str, Any]], peer_names: list[str]) -> dict[str, Any]:
    """Medians, ratios, python shares and verdicts of the sessions."""
    names = list(sessions[0]["rounds"][WORKLOADS[0]])
    ns = {
        a: {
            w: round(median([t for s in sessions for t in s["rounds"][w][a]]), 1) for w in WORKLOADS
        }
        for a in names
    }
    ratios: dict[str, dict[str, Any]] = {}
    for num, den in [(a, REF) for a in names] + comparisons(peer_names):
        cells = ratios.setdefault(f"{num} / {den}", {})
        for w in WORKLOADS:
            per_session = [median(paired([s], w, num, den)) for s in sessions]
            cells[w] = {
                "ratio": round(median(paired(sessions, w, num, den)), 3),
                "sessions": [round(x, 3) for x in per_session],
                "wall_ratio": round(median(paired(sessions, w, num, den, "wall")), 3),
            }
    python: dict[str, dict[str, Any]] = {}
    for a in (RA, RA_ZERO):
        for w in WORKLOADS:
            timed = sum(s["python_mallocs"][w][a] for s in sessions)
            calls = sum(s["pairs"][w] * len(s["rounds"][w][a]) for s in sessions)
            ran, served = (sum(s["all_mallocs"][w][a][i] for s in sessions) for i in (0, 1))
            python.setdefault(a, {})[w] = {
                "timed_pct": round(100 * timed / calls, 4),
                "timed_python_mallocs": timed,
                "timed_mallocs": calls,
                "all_pct": round(100 * ran / served, 4),
            }
    verdicts = []
    for (w, num, den), target in TARGETS.items():
        cell = ratios.get(f"{num} / {den}", {}).get(w)
        what = f"{w}: {num} / {den}"
        if cell is None:  # the peer was skipped
            verdicts.append({"what": what, "value": None, "target": target, "met": None})
            continue
        verdicts.append(
            {"what": what, "value": cell["ratio"], "wall": cell["wall_ratio"], "target": target}
        )
    for w in PYTHON_SHARE_TARGETED:
        pct = python[RA][w]["timed_pct"]
        verdicts.append(
            {
                "what": f"{w}: {RA} mallocs running Python, %",
                "value": pct,
                "target": PYTHON_SHARE_TARGET_PCT,
            }
        )
    for v in verdicts:
        if v["value"] is not None:
            v["met"] = v["value"] <= v["target"]
    return {"ns": ns, "ratios": ratios, "python": python, "verdicts": verdicts}


def report(
    summary: dict[str, Any], args: argparse.Namespace, revision: str, peer_names: list[str]
) -> None:
    nrounds = args.sessions * args.rounds
    print()
    print(
        f"malloc/free pairs from Python: median of {nrounds} rounds ({args.sessions} processes; "
        f"{args.fixed_pairs} pairs/round fixed64, {args.mixed_pairs} mixed, live set {args.live})"
    )
    print(f"realalloc at {revision}, Python {platform.python_version()}, {peers.cpu_model()}")
    print(f"CPU ns per pair, and / {REF} (median of the per-round ratios of CPU time)")
    head1 = f"{'allocator':<24}"
    for w in WORKLOADS:
        head1 += f" {w:>14} {'/' + REF:>11}"
    print(head1)
    for a, by_w in summary["ns"].items():
        line = f"{a:<24}"
        for w in WORKLOADS:
            ratio = summary["ratios"][f"{a} / {REF}"][w]["ratio"]
            line += f" {by_w[w]:>14.1f} {ratio:>11.3f}"
        print(line)

    def spread(xs: list[float]) -> str:
        return f"{min(xs):.2f}-{max(xs):.2f}" if len(xs) > 1 else ""

    print()
    print("ratios of CPU time (in brackets the range of the per-process medians)")
    print(f"{'':<44}" + "".join(f" {w:>24}" for w in WORKLOADS))
    for num, den in comparisons(peer_names):
        line = f"{num + ' / ' + den:<44}"
        for w in WORKLOADS:
            c = summary["ratios"][f"{num} / {den}"][w]
            target = TARGETS.get((w, num, den))
            mark = f" <={target}" if target else ""
            line += f" {c['ratio']:>7.3f} [{spread(c['sessions']):>9}]{mark:>6}"
        print(line)
    for a in (RA, RA_ZERO):
        line = f"{a + ': mallocs running Python %':<44}"
        for w in WORKLOADS:
            p = summary["python"][a][w]
            line += f" {p['timed_pct']:>7.3f} (all {p['all_pct']:>7.3f}) "
        print(line)
    print()
    for v in summary["verdicts"]:
        if v["value"] is None:
            print(f"{v['what']}: not measured (target <= {v['target']})")
            continue
        verdict = "met" if v["met"] else "NOT met"
        wall = f"; wall time {v['wall']:.3f}" if "wall" in v else ""
        print(f"{v['what']}: {v['value']:.3f} (target <= {v['target']}: {verdict}{wall})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 session of 5 short rounds")
    ap.add_argument("--sessions", type=int, default=10, help="worker processes, one after another")
    ap.add_argument("--rounds", type=int, default=20, help="timed rounds per allocator per session")
    ap.add_argument("--fixed-pairs", type=int, default=50_000, help="pairs per fixed64 round")
    ap.add_argument("--mixed-pairs", type=int, default=20_000, help="pairs per mixed round")
    ap.add_argument("--live", type=int, default=LIVE, help="live objects in the mixed workloads")
    ap.add_argument("--metadata-objects", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=2019)
    ap.add_argument("--peers", default="mimalloc,tcmalloc", help="comma-separated peers")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--class-sizes", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        result = run_metadata(args) if args.worker == "metadata" else run_worker(args)
        with open(args.worker_out, "w") as fh:
            json.dump(result, fh)
        return 0

    if args.quick:
        args.sessions, args.rounds = 1, 5
        args.fixed_pairs, args.mixed_pairs = 20_000, 10_000

    revision = peers.git_revision()  # before the run: the checkout may change meanwhile
    why = realalloc_status()
    if why:
        print(f"realalloc cannot run: {why}")
        return 1
    from realalloc.core.sizeclasses import CLASS_TO_SIZE

    class_sizes = ",".join(str(s) for s in CLASS_TO_SIZE[1:])
    peer_names: list[str] = []
    for name in [p for p in args.peers.split(",") if p]:
        why = (
            peers.missing(name)
            if name in peers.PEERS
            else f"unknown peer (known: {', '.join(peers.PEERS)})"
        )
        if why or name == "glibc":
            print(f"skip {name}: {why or 'glibc is always measured'}")
            continue
        peer_names.append(name)
    args.peers = ",".join(peer_names)
    for name in ["glibc", *peer_names]:  # once, before the workers race to import them
        for flavour in peers.FLAVOURS:
            peers.build(name, flavour)

    sessions: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    for session in range(args.sessions):
        print(f"session {session + 1}/{args.sessions} ...", flush=True)
        res = spawn(args, "bench", class_sizes)
        if "error" in res:
            errors[f"session {session + 1}"] = res["error"]
            print(f"  worker failed: {res['error']}")
            continue
        if res["isolation"] != "ok":
            errors[f"session {session + 1}"] = f"isolation: {res['isolation']}"
            print(f"  isolation failed: {res['isolation']}")
            continue
        if res["realalloc_debug"] != 0:
            print(f"  warning: realalloc ran at REALALLOC_DEBUG={res['realalloc_debug']}")
        sessions.append(res)

    print(f"metadata: {args.metadata_objects} live {OBJ}-byte objects ...", flush=True)
    metadata = spawn(args, "metadata", class_sizes)
    if "error" in metadata:
        errors["metadata"] = metadata["error"]
    elif metadata["distinct"] != metadata["objects"]:
        errors["metadata"] = (
            f"{metadata['distinct']} distinct addresses for {metadata['objects']} objects"
        )

    summary: dict[str, Any] = {"verdicts": []}
    if sessions:
        summary = summarize(sessions, peer_names)
        report(summary, args, revision, peer_names)
    if "metadata" not in errors:
        pct = metadata["percent"]
        ok = pct <= METADATA_TARGET_PCT
        summary["verdicts"].append(
            {"what": "metadata %", "value": round(pct, 4), "target": METADATA_TARGET_PCT, "met": ok}
        )
        print(
            f"metadata for {metadata['objects']} live {OBJ}-byte objects in a Heap(): "
            f"{metadata['metadata_bytes']} bytes = {pct:.3f} % of "
            f"{metadata['objects'] * OBJ} bytes in use "
            f"(target <= {METADATA_TARGET_PCT} %: {'met' if ok else 'NOT met'}); "
            f"empty heap {metadata['metadata_before']} bytes"
        )
    for w, e in errors.items():
        print(f"error: {w}: {e}")

    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "benchmark": "malloc",
                    "python": platform.python_version(),
                    "revision": revision,
                    "cpu": peers.cpu_model(),
                    "cpus": os.cpu_count(),
                    "affinity": sorted(os.sched_getaffinity(0)),
                    "sessions": args.sessions,
                    "rounds_per_session": args.rounds,
                    "fixed_pairs": args.fixed_pairs,
                    "mixed_pairs": args.mixed_pairs,
                    "live": args.live,
                    "seed": args.seed,
                    "peers": peer_names,
                    "errors": errors,
                    **summary,
                    "metadata": metadata,
                    "raw_cpu_ns_per_pair": [s["rounds"] for s in sessions],
                    "raw_wall_ns_per_pair": [s["wall"] for s in sessions],
                },
                fh,
                indent=2,
            )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
