"""malloc/free pairs from Python: realalloc.Heap against glibc, mimalloc and tcmalloc.

Every allocator runs the *same* Python loop; only the two callables differ:
``m`` (malloc: size -> int address) and ``f`` (free: address -> None).
realalloc's are the C methods ``Heap.malloc`` / ``Heap.free``.  Each peer comes
in two flavours built by bench/peers.py with the same compiler flags as
realalloc's C code, both returning the address as an int:

* ``cffi``: cffi API-mode functions ``uintptr_t g_malloc(size_t)`` /
  ``void g_free(uintptr_t)``: the issue's reference.  cffi releases the GIL
  and saves errno around every call, which costs more than the allocator.
* ``capi``: a CPython extension with ``malloc`` (METH_FASTCALL|METH_KEYWORDS)
  and ``free`` (METH_O) converting arguments as csrc/fastpath.c does: the
  calling convention of ``Heap.malloc`` / ``Heap.free``, so the difference is
  the allocator.

Context rows in the realalloc process: glibc through cffi with ``void *``
results (cdata), glibc ``calloc`` (zeroed, as realalloc's ``malloc`` returns by
default), and no-op C functions in both flavours (the cost of the calls alone).

Workloads (sequences pre-generated from one seed, identical for every allocator):

* ``fixed64``: ``p = m(64); f(p)``: the cached-span fast path.
* ``mixed-uniform``: a live set of 10,000 objects; each pair allocates an
  object of a random small size class and frees a random live object
  (``p = m(size[i]); f(live[k[i]]); live[k[i]] = p``), so spans of every class
  are filled, emptied, swept and refilled.  Sizes are the 67 size classes'
  object sizes (8 B .. 32 KiB), each class equally likely (mean 5.6 KiB).
* ``mixed-small``: the same, each class weighted by 1/size, so small objects
  dominate as in real programs (30 % are 8 B, 72 % are <= 64 B, mean 161 B).

Processes: realalloc and glibc run interleaved (rounds A, B, A, B, ...) in one
subprocess; mimalloc and tcmalloc each run in a subprocess of their own beside
glibc, again interleaved, so every ratio to glibc is measured within one process.
Subprocess runs alternate (realalloc, mimalloc, tcmalloc, realalloc, ...).
Reported: the median over rounds of ns per pair, and allocator / glibc (both
flavours).
A last subprocess measures allocator metadata for 1,000,000 live 64-byte
objects: ``Heap.metadata_bytes()`` / 64,000,000 bytes in use.

Run from the repository root: ``python bench/bench_malloc.py [--quick] [--json FILE]``
(after ``pip install -e .``).  REALALLOC_DEBUG is forced to 0.  See bench/README.md.
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
TARGETS = {"fixed64": 1.2, "mixed-uniform": 2.0}
"""realalloc / glibc, from the issue.  mixed-small is reported, not targeted."""
METADATA_TARGET_PCT = 2.0
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


REF_CFFI = "glibc cffi"
"""The issue's reference: glibc malloc/free through cffi API mode, uintptr_t."""
REF_CAPI = "glibc capi"
"""glibc through a CPython-API module: the calling convention of Heap.malloc/free."""


# ---------------------------------------------------------------- worker side


def worker_allocators(kind: str) -> tuple[list[Alloc], Callable[[], None]]:
    """The allocators measured in a worker of ``kind``, in round order.

    A realalloc worker gets a fresh Heap each call; the returned callable closes it.
    """
    g = peers.load("glibc")
    gc_ = peers.load("glibc", "capi")
    refs = [Alloc(REF_CFFI, g.g_malloc, g.g_free), Alloc(REF_CAPI, gc_.malloc, gc_.free)]
    if kind == "realalloc":
        import realalloc

        heap = realalloc.Heap()
        extras = [
            Alloc("glibc cffi void*", g.malloc, g.free),
            Alloc("glibc cffi calloc", g.g_calloc, g.g_free),
            Alloc("no-op cffi", g.g_nop_malloc, g.g_nop_free),
            Alloc("no-op capi", gc_.nop_malloc, gc_.nop_free),
        ]
        return [Alloc("realalloc", heap.malloc, heap.free), *refs, *extras], heap.close
    lib = peers.load(kind)
    mod = peers.load(kind, "capi")
    if lib is None or mod is None:
        raise FileNotFoundError(peers.missing(kind))
    mine = [
        Alloc(f"{kind} cffi", lib.g_malloc, lib.g_free),
        Alloc(f"{kind} capi", mod.malloc, mod.free),
    ]
    return [mine[0], refs[0], mine[1], refs[1]], lambda: None


def check_isolation(kind: str) -> str:
    """Peers own what g_malloc returns, and the interpreter still runs on glibc."""
    if kind == "realalloc":
        return "ok"
    import ctypes

    lib = peers.load(kind)
    glibc = peers.load("glibc")
    mine = lib.g_malloc(64)
    theirs = glibc.g_malloc(64)
    buf = bytearray(100_000)  # PyMem_Malloc -> the process malloc
    pybuf = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    problems = []
    if not lib.g_owns(mine):
        problems.append(f"{kind} does not own its own allocation")
    if lib.g_owns(theirs):
        problems.append(f"{kind} owns glibc's allocation")
    if lib.g_owns(pybuf):
        problems.append(f"{kind} serves the interpreter's malloc")
    lib.g_free(mine)
    glibc.g_free(theirs)
    return "; ".join(problems) or "ok"


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(s) for s in args.class_sizes.split(",")]
    out: dict[str, Any] = {"worker": args.worker, "rounds": {}, "pairs": {}}
    out["isolation"] = check_isolation(args.worker)
    if args.worker == "realalloc":
        from realalloc import _debug

        out["realalloc_debug"] = _debug.DEBUG
    rng = random.Random(args.seed)
    total = {
        "fixed64": args.fixed_pairs * (args.rounds + 1),
        "mixed-uniform": args.mixed_pairs * (args.rounds + 1),
        "mixed-small": args.mixed_pairs * (args.rounds + 1),
    }
    for workload in WORKLOADS:
        n = args.fixed_pairs if workload == "fixed64" else args.mixed_pairs
        out["pairs"][workload] = n
        allocs, close = worker_allocators(args.worker)
        loops = {a.name: fresh_loops() for a in allocs}
        lives: dict[str, list[Any]] = {}
        if workload == "fixed64":
            data: tuple[Any, ...] = ()
        else:
            weights = None if workload == "mixed-uniform" else [1 / s for s in sizes]
            size_seq = rng.choices(sizes, weights, k=total[workload])
            idx = list(range(args.live))
            k_seq = rng.choices(idx, k=total[workload])
            init = rng.choices(sizes, weights, k=args.live)
            for a in allocs:
                lives[a.name] = [a.m(s) for s in init]
            data = (size_seq, k_seq)
        times: dict[str, list[float]] = {a.name: [] for a in allocs}
        gc.collect()
        gc.disable()
        try:
            for r in range(args.rounds + 1):  # round 0 warms up, untimed
                start, stop = r * n, (r + 1) * n
                for a in allocs:
                    clock = time.perf_counter_ns
                    if workload == "fixed64":
                        loop = loops[a.name]["fixed"]
                        t0 = clock()
                        loop(a.m, a.f, OBJ, start, stop)
                        t1 = clock()
                    else:
                        loop = loops[a.name]["mixed"]
                        t0 = clock()
                        loop(a.m, a.f, data[0], data[1], lives[a.name], start, stop)
                        t1 = clock()
                    if r:
                        times[a.name].append((t1 - t0) / n)
        finally:
            gc.enable()
        for a in allocs:
            for p in lives.get(a.name, ()):
                a.f(p)
        close()
        out["rounds"][workload] = times
    return out


def run_metadata(args: argparse.Namespace) -> dict[str, Any]:
    import realalloc
    from realalloc import _debug

    heap = realalloc.Heap()
    out: dict[str, Any] = {"objects": args.metadata_objects, "object_size": OBJ}
    out["realalloc_debug"] = _debug.DEBUG
    has = hasattr(heap, "metadata_bytes")
    out["metadata_before"] = heap.metadata_bytes() if has else None
    m = heap.malloc
    addrs = [m(OBJ) for _ in range(args.metadata_objects)]
    out["distinct"] = len(set(addrs))
    if has:
        md = heap.metadata_bytes()
        out["metadata_bytes"] = md
        out["percent"] = 100.0 * md / (args.metadata_objects * OBJ)
    else:
        out["metadata_bytes"] = None
        out["percent"] = None
        out["error"] = "realalloc.Heap has no metadata_bytes()"
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
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        worker,
        "--worker-out",
        path,
        "--rounds",
        str(args.rounds),
        "--fixed-pairs",
        str(args.fixed_pairs),
        "--mixed-pairs",
        str(args.mixed_pairs),
        "--live",
        str(args.live),
        "--seed",
        str(args.seed),
        "--metadata-objects",
        str(args.metadata_objects),
        "--class-sizes",
        class_sizes,
    ]
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


def realalloc_status() -> str | None:
    """Why realalloc.Heap cannot be benchmarked, or None."""
    code = "import realalloc; h = realalloc.Heap(); a = h.malloc(64); h.free(a); h.close()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        return lines[-1]
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 session of 5 short rounds (about 10 s)")
    ap.add_argument("--sessions", type=int, default=5, help="subprocess runs per allocator")
    ap.add_argument("--rounds", type=int, default=30, help="rounds per allocator per session")
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
    from realalloc.core.sizeclasses import CLASS_TO_SIZE

    class_sizes = ",".join(str(s) for s in CLASS_TO_SIZE[1:])

    workers: list[str] = []
    skipped: dict[str, str] = {}
    why = realalloc_status()
    if why:
        skipped["realalloc"] = why
    else:
        workers.append("realalloc")
    for name in [p for p in args.peers.split(",") if p]:
        why = (
            peers.missing(name)
            if name in peers.PEERS
            else f"unknown peer (known: {', '.join(peers.PEERS)})"
        )
        if why:
            skipped[name] = why
            continue
        for flavour in peers.FLAVOURS:  # once, before the workers race to import it
            peers.build(name, flavour)
        workers.append(name)
    for flavour in peers.FLAVOURS:
        peers.build("glibc", flavour)
    for name, why in skipped.items():
        print(f"skip {name}: {why}")
    if not workers:
        return 1

    # results[worker][allocator][workload] = ns/pair of every round, all sessions
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    per_session: dict[str, list[dict[str, Any]]] = {w: [] for w in workers}
    errors: dict[str, str] = {}
    for session in range(args.sessions):
        for w in workers:
            if w in errors:
                continue
            print(f"session {session + 1}/{args.sessions}: {w} + glibc ...", flush=True)
            res = spawn(args, w, class_sizes)
            if "error" in res:
                errors[w] = res["error"]
                print(f"  {w} worker failed: {res['error']}")
                continue
            if res["isolation"] != "ok":
                print(f"  warning: {w}: {res['isolation']}")
            if res.get("realalloc_debug", 0) != 0:
                print(f"  warning: realalloc ran at REALALLOC_DEBUG={res['realalloc_debug']}")
            per_session[w].append(res)
            for workload, by_alloc in res["rounds"].items():
                for alloc, ts in by_alloc.items():
                    slot = results.setdefault(w, {}).setdefault(alloc, {})
                    slot.setdefault(workload, []).extend(ts)

    metadata: dict[str, Any] | None = None
    if "realalloc" in workers and "realalloc" not in errors:
        print(f"metadata: {args.metadata_objects} live {OBJ}-byte objects ...", flush=True)
        metadata = spawn(args, "metadata", class_sizes)

    # --------------------------------------------------------------- report
    # summary[worker][allocator][workload]: median ns/pair over all its rounds and
    # its ratios to both glibc flavours of the same processes, pooled and per session.
    summary: dict[str, Any] = {}
    for w, by_alloc in results.items():
        for alloc, by_workload in by_alloc.items():
            cells = {}
            for workload in WORKLOADS:
                ts = by_workload[workload]
                cell: dict[str, Any] = {"ns": round(median(ts), 1), "rounds": len(ts)}
                for key, ref in (("cffi", REF_CFFI), ("capi", REF_CAPI)):
                    cell[f"ratio_{key}"] = round(median(ts) / median(by_alloc[ref][workload]), 3)
                    sess = [
                        median(res["rounds"][workload][alloc])
                        / median(res["rounds"][workload][ref])
                        for res in per_session[w]
                    ]
                    cell[f"sessions_{key}"] = [round(x, 3) for x in sess]
                cells[workload] = cell
            summary.setdefault(w, {})[alloc] = cells

    nrounds = args.sessions * args.rounds
    print()
    print(
        f"malloc/free pairs from Python: ns per pair, median of {nrounds} rounds "
        f"({args.fixed_pairs} pairs/round fixed64, {args.mixed_pairs} mixed, live set {args.live})"
    )
    print(f"realalloc at {revision}, Python {platform.python_version()}, {peers.cpu_model()}")
    print(
        "/cffi, /capi = allocator / glibc through cffi (the issue's reference) or through "
        "the C API (Heap.malloc's calling convention), measured in the same processes"
    )
    head1 = f"{'':<18} {'':<10}"
    head2 = f"{'allocator':<18} {'process':<10}"
    for workload in WORKLOADS:
        head1 += f" {workload:^21}"
        head2 += f" {'ns':>7} {'/cffi':>6} {'/capi':>6}"
    print(head1)
    print(head2)
    for w, by_alloc in summary.items():
        for alloc, cells in by_alloc.items():
            line = f"{alloc:<18} {w:<10}"
            for workload in WORKLOADS:
                c = cells[workload]
                line += f" {c['ns']:>7.1f} {c['ratio_cffi']:>6.3f} {c['ratio_capi']:>6.3f}"
            print(line)

    def spread(xs: list[float]) -> str:
        return f"[sessions {min(xs):.2f}-{max(xs):.2f}]" if len(xs) > 1 else ""

    verdicts: dict[str, Any] = {}
    if "realalloc" in summary:
        ra = summary["realalloc"]["realalloc"]
        print()
        for workload in WORKLOADS:
            c = ra[workload]
            target = TARGETS.get(workload)
            tail = ""
            if target is not None:
                ok = c["ratio_cffi"] <= target
                verdicts[workload] = {"ratio": c["ratio_cffi"], "target": target, "met": ok}
                tail = f" (target <= {target}: {'met' if ok else 'NOT met'})"
            print(
                f"realalloc / glibc cffi {workload:<14} {c['ratio_cffi']:.3f}{tail} "
                f"{spread(c['sessions_cffi'])}"
            )
        for workload in WORKLOADS:
            c = ra[workload]
            cross = []
            for p in summary:
                if p != "realalloc":
                    pr = summary[p][f"{p} capi"][workload]["ratio_capi"]
                    cross.append(f"{c['ratio_capi'] / pr:.2f}x {p}")
            extra = f"; vs peers (via glibc): {', '.join(cross)}" if cross else ""
            print(
                f"realalloc / glibc capi {workload:<14} {c['ratio_capi']:.3f} "
                f"{spread(c['sessions_capi'])}{extra}"
            )
    if metadata is not None and metadata.get("distinct", 0) != metadata.get("objects"):
        errors["metadata"] = (
            f"{metadata.get('distinct')} distinct addresses for {metadata.get('objects')} objects"
        )
    if metadata is not None:
        if "error" in metadata and metadata.get("percent") is None:
            print(f"metadata: {metadata['error']}")
        else:
            pct = metadata["percent"]
            ok = pct <= METADATA_TARGET_PCT
            verdicts["metadata"] = {"percent": pct, "target": METADATA_TARGET_PCT, "met": ok}
            print(
                f"metadata for {metadata['objects']} live {OBJ}-byte objects: "
                f"{metadata['metadata_bytes']} bytes = {pct:.3f} % of "
                f"{metadata['objects'] * OBJ} bytes in use "
                f"(target <= {METADATA_TARGET_PCT} %: {'met' if ok else 'NOT met'}); "
                f"empty heap {metadata['metadata_before']} bytes"
            )
    for w, e in errors.items():
        print(f"error: {w} worker: {e}")

    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "benchmark": "malloc",
                    "python": platform.python_version(),
                    "revision": revision,
                    "cpu": peers.cpu_model(),
                    "cpus": os.cpu_count(),
                    "sessions": args.sessions,
                    "rounds_per_session": args.rounds,
                    "fixed_pairs": args.fixed_pairs,
                    "mixed_pairs": args.mixed_pairs,
                    "live": args.live,
                    "seed": args.seed,
                    "skipped": skipped,
                    "errors": errors,
                    "results": summary,
                    "verdicts": verdicts,
                    "metadata": metadata,
                    "raw_ns_per_pair": results,
                },
                fh,
                indent=2,
            )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
