"""Run the allocator workloads on realalloc, glibc, jemalloc, mimalloc and tcmalloc.

Every (workload, allocator) run is a subprocess of its own, with the
runner's environment plus ``REALALLOC_DEBUG=0``; peers other than glibc run
with ``LD_PRELOAD`` set to their library (see workloads/common.py, which
also says how each allocator is called: realalloc as ``Heap(zero=False)``,
the peers' ``malloc`` through a C-API module with realalloc's calling
convention; ``realalloc-zero`` and ``glibc-cffi`` are context rows).  Runs
are interleaved: for each repetition, for each workload, every allocator
once (A, B, C, ..., then again), so drift in machine speed hits all of them.

The subprocess first pins itself to one CPU (``--cpu``, default the last
one; a preloaded allocator has already initialised, seeing every CPU).
Python threads run one at a time anyway; on one CPU, handing the GIL over
is a context switch there, not a wake-up on another CPU that may be busy,
which makes multi-threaded runs much less erratic on a shared machine.  Then
the workload draws its random choices (same seed for every allocator), the
allocator is loaded, the cyclic GC is switched off, and only ``execute`` is
timed, in CPU time of the process (``time.process_time``: every thread, user
and system) and in wall time (``time.perf_counter``).  Pinned to one CPU, the
two agree on an idle machine; on a shared one the wall time also counts the
time other processes held the CPU, so the ratios and targets use CPU time.
Peak RSS is the process's ``ru_maxrss`` after the run, interpreter and drawn
plan included, so the RSS at the start of ``execute`` is reported as well;
the JSON also has the minor page faults taken during ``execute``.

Reported per (workload, allocator): the median CPU and wall times over
repetitions, their ratios to glibc's medians (and, in the target lines, the
median and quartiles of the per-repetition ratios realalloc / glibc of CPU
time, runs of one repetition being close in time), the median peak RSS and
the median RSS at the start; for realalloc, the share of its mallocs that ran Python code
(``Heap.python_mallocs`` / the workload's malloc calls).  Then each target
(realalloc / glibc <= 1.5, Python share <= 1 %) as met or NOT met.  The
runner checks that every run freed what it allocated and made the same
number of malloc calls as glibc's run of the same workload.

Usage, from the repository root (after ``pip install -e .``)::

    python bench/workloads/run.py                    # 15 repetitions, 8-13 minutes here
    python bench/workloads/run.py --quick            # 1 repetition at 1/5 size
    python bench/workloads/run.py --json out.json --workloads larson,large
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from realalloc.tools import workloads as drivers  # noqa: E402  (the drivers: in the package)
from workloads import common  # noqa: E402  (after the path is set)

WORKLOADS = ("larson", "mstress", "xmalloc-test", "alloc-test", "large")
TARGET_RATIO = 1.5
"""realalloc (``Heap(zero=False)``) / glibc, every workload, from the issue."""
TARGET_PYTHON_PCT = 1.0
"""realalloc's mallocs that ran Python code, % of its mallocs, every workload."""
MARK = "RESULT "
SEED = 20240601


def child(workload: str, allocator: str, scale: float, seed: int, cpu: int) -> None:
    """Run one workload on one allocator in this process; print a RESULT line."""
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})
    mod = drivers.load(workload)
    plan = mod.prepare(scale, seed)
    loaded = common.load_allocator(allocator)
    alloc, heap = loaded.allocator, loaded.heap
    mem = common.memory()
    gc.collect()
    gc.disable()
    rss0, peak0 = common.rss_mib(), common.peak_rss_mib()
    faults0 = common.minor_faults()
    c0, t0 = time.process_time(), time.perf_counter()
    counts = mod.execute(alloc, mem, plan)
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0
    faults = common.minor_faults() - faults0
    peak = common.peak_rss_mib()
    gc.enable()
    out = {
        "workload": workload,
        "allocator": allocator,
        "version": alloc.version,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_rss_mib": peak,
        "rss_start_mib": rss0,
        "peak_rss_start_mib": peak0,
        "minor_faults": faults,
        **counts,
    }
    if heap is not None:
        out["python_mallocs"] = heap.python_mallocs
    alloc.close()
    print(MARK + json.dumps(out), flush=True)


def spawn(workload: str, allocator: str, scale: float, cpu: int, timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    env["REALALLOC_DEBUG"] = "0"
    env.pop("LD_PRELOAD", None)
    preload = common.preload_path(allocator)
    if preload:
        env["LD_PRELOAD"] = preload
    env["PYTHONPATH"] = os.pathsep.join(
        [str(common.ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", workload, allocator]
    cmd += ["--scale", repr(scale), "--seed", str(SEED), "--cpu", str(cpu)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"workload": workload, "allocator": allocator, "error": f"timeout ({timeout} s)"}
    for line in proc.stdout.splitlines():
        if line.startswith(MARK) and proc.returncode == 0:
            res: dict[str, Any] = json.loads(line[len(MARK) :])
            return res
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    return {
        "workload": workload,
        "allocator": allocator,
        "error": f"exit status {proc.returncode}",
        "stderr": tail,
    }


def last_cpu() -> int:
    """The highest-numbered CPU this process may run on."""
    return max(os.sched_getaffinity(0))


def fmt_mib(x: float) -> str:
    return f"{x:,.1f}"


def summarize(
    runs: list[dict[str, Any]], workloads: list[str], allocators: list[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of the table (medians) and the problems found."""
    rows, problems = [], []
    for w in workloads:
        by: dict[str, list[dict[str, Any]]] = {a: [] for a in allocators}
        for r in runs:
            if r["workload"] == w and r["allocator"] in by:
                by[r["allocator"]].append(r)
        ok = {a: [r for r in rs if "error" not in r] for a, rs in by.items()}
        ref_mallocs = {r["mallocs"] for r in ok.get("glibc", [])}
        ref = ok.get("glibc")
        base = statistics.median(r["seconds"] for r in ref) if ref else None
        base_cpu = statistics.median(r["cpu_seconds"] for r in ref) if ref else None
        ref_by_rep = {r["rep"]: r["cpu_seconds"] for r in ref or []}
        for a in allocators:
            found: dict[str, int] = {}  # problem -> number of runs with it
            for r in by[a]:
                if "error" in r:
                    why = f"{r['error']}\n{r.get('stderr', '')}".rstrip()
                elif r["mallocs"] != r["frees"]:
                    why = f"{r['mallocs']} mallocs but {r['frees']} frees"
                elif ref_mallocs and r["mallocs"] not in ref_mallocs:
                    why = f"{r['mallocs']} mallocs, glibc made {sorted(ref_mallocs)}"
                else:
                    continue
                found[why] = found.get(why, 0) + 1
            for why, n in found.items():
                problems.append(f"{w} on {a} ({n} of {len(by[a])} runs): {why}")
            good = ok[a]
            if not good:
                rows.append({"workload": w, "allocator": a, "runs": 0, "failed": len(by[a])})
                continue
            secs = statistics.median(r["seconds"] for r in good)
            cpu = statistics.median(r["cpu_seconds"] for r in good)
            rows.append(
                {
                    "workload": w,
                    "allocator": a,
                    "version": good[0]["version"],
                    "runs": len(good),
                    "failed": len(by[a]) - len(good),
                    "seconds": secs,
                    "seconds_min": min(r["seconds"] for r in good),
                    "seconds_max": max(r["seconds"] for r in good),
                    "ratio_glibc": secs / base if base else None,
                    "cpu_seconds": cpu,
                    "ratio_glibc_cpu": cpu / base_cpu if base_cpu else None,
                    "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in good),
                    "rss_start_mib": statistics.median(r["rss_start_mib"] for r in good),
                    "minor_faults": statistics.median(r["minor_faults"] for r in good),
                    "mallocs": good[0]["mallocs"],
                }
            )
            paired = [
                r["cpu_seconds"] / ref_by_rep[r["rep"]] for r in good if r["rep"] in ref_by_rep
            ]
            if len(paired) > 1:
                q1, q2, q3 = statistics.quantiles(paired, n=4)
                rows[-1]["paired_cpu_quartiles"] = [q1, q2, q3]
            if "python_mallocs" in good[0]:
                rows[-1]["python_pct"] = statistics.median(
                    100 * r["python_mallocs"] / r["mallocs"] for r in good
                )
    return rows, problems


def markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        "| workload | allocator | median CPU s | ratio to glibc (CPU) | median wall s "
        "| ratio to glibc (wall) | peak RSS MiB | RSS at start MiB | mallocs running Python |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if not r["runs"]:
            out.append(f"| {r['workload']} | {r['allocator']} | failed | | | | | | |")
            continue
        cpu, wall = (
            f"{r[key]:.2f}" if r[key] is not None else "n/a"
            for key in ("ratio_glibc_cpu", "ratio_glibc")
        )
        if r["allocator"] == "realalloc":
            cpu = f"**{cpu}**"
        python = f"{r['python_pct']:.3f} %" if "python_pct" in r else ""
        out.append(
            f"| {r['workload']} | {r['allocator']} | {r['cpu_seconds']:.3f} | {cpu} | "
            f"{r['seconds']:.3f} | {wall} | {fmt_mib(r['peak_rss_mib'])} | "
            f"{fmt_mib(r['rss_start_mib'])} | {python} |"
        )
    return "\n".join(out)


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets for the realalloc row of each workload: met or not."""
    out = []
    for r in rows:
        if r["allocator"] != "realalloc" or not r["runs"]:
            continue
        for what, value, target in (
            ("realalloc / glibc (CPU time)", r["ratio_glibc_cpu"], TARGET_RATIO),
            ("realalloc mallocs running Python, %", r.get("python_pct"), TARGET_PYTHON_PCT),
        ):
            if value is not None:
                out.append(
                    {
                        "workload": r["workload"],
                        "what": what,
                        "value": value,
                        "target": target,
                        "met": value <= target,
                    }
                )
                if what.endswith("(CPU time)") and "paired_cpu_quartiles" in r:
                    out[-1]["paired_quartiles"] = r["paired_cpu_quartiles"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 repetition at 1/5 size")
    ap.add_argument("--reps", type=int, help="repetitions (default 15; 1 with --quick)")
    ap.add_argument("--scale", type=float, help="work per run (default 1; 0.2 with --quick)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    ap.add_argument("--allocators", default=",".join(common.ALLOCATORS), help="comma-separated")
    ap.add_argument(
        "--cpu", type=int, default=last_cpu(), help="pin each run to this CPU; -1: do not pin"
    )
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    ap.add_argument("--json", metavar="FILE", help="also write every run and the table as JSON")
    ap.add_argument("--child", nargs=2, metavar=("WORKLOAD", "ALLOCATOR"), help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=SEED, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    scale = args.scale if args.scale is not None else (0.2 if args.quick else 1.0)
    if args.child:
        child(args.child[0], args.child[1], scale, args.seed, args.cpu)
        return 0

    reps = args.reps if args.reps is not None else (1 if args.quick else 15)
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}; one of {', '.join(WORKLOADS)}")
    allocators = []
    for a in (x for x in args.allocators.split(",") if x):
        if a not in common.ALLOCATORS + common.EXTRA:
            known = ", ".join(common.ALLOCATORS + common.EXTRA)
            ap.error(f"unknown allocator {a!r}; one of {known}")
        why = common.unavailable(a)
        if why:
            print(f"skip {a}: {why}", flush=True)
        else:
            allocators.append(a)
    if "glibc" not in allocators:
        print("note: glibc is not run, so there is no ratio column", flush=True)

    # Build the helper modules once, here, so no run compiles (or races to).
    common.build_helpers()
    revision = common.peers.git_revision()  # before the run: the checkout may change meanwhile

    print(
        f"{len(workloads)} workloads x {len(allocators)} allocators x {reps} repetitions, "
        f"scale {scale:g}; realalloc at {revision}, Python {platform.python_version()}, "
        f"{common.peers.cpu_model()}, {os.cpu_count()} CPUs, "
        + (f"runs pinned to CPU {args.cpu}" if args.cpu >= 0 else "runs not pinned"),
        flush=True,
    )
    runs: list[dict[str, Any]] = []
    t_start = time.monotonic()
    for rep in range(reps):
        for w in workloads:
            for a in allocators:
                res = spawn(w, a, scale, args.cpu, args.timeout)
                res["rep"] = rep
                runs.append(res)
                if "error" in res:
                    done = f"FAILED: {res['error']}"
                else:
                    done = f"{res['seconds']:.3f} s, peak {res['peak_rss_mib']:.1f} MiB"
                line = f"  rep {rep + 1}/{reps}  {w:<12} {a:<14} {done}"
                print(line, file=sys.stderr, flush=True)
    elapsed = time.monotonic() - t_start

    rows, problems = summarize(runs, workloads, allocators)
    versions = sorted({f"{r['allocator']} {r['version']}" for r in rows if r.get("version")})
    print()
    print(markdown(rows))
    print()
    print(f"Versions: {', '.join(versions)}.  Total {elapsed:.0f} s.")
    checks = verdicts(rows)
    for v in checks:
        verdict = "met" if v["met"] else "NOT met"
        spread = ""
        if "paired_quartiles" in v:
            q1, q2, q3 = v["paired_quartiles"]
            spread = f"; per repetition: median {q2:.2f}, quartiles {q1:.2f}-{q3:.2f}"
        print(
            f"{v['workload']}: {v['what']} {v['value']:.3f} "
            f"(target <= {v['target']}: {verdict}{spread})"
        )
    for p in problems:
        print(f"PROBLEM: {p}")
    if args.json:
        meta = {
            "revision": revision,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "reps": reps,
            "scale": scale,
            "seed": SEED,
            "cpu": args.cpu,
            "elapsed_s": elapsed,
        }
        doc = {"meta": meta, "table": rows, "verdicts": checks, "runs": runs, "problems": problems}
        pathlib.Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
