"""Garbage collection: the pause of a full collection against Go 1.19's, and
allocation throughput of a collected heap against explicit free.

* ``pause``: 128 complete binary trees of depth 16 (8,388,480 nodes of 32
  bytes, 256 MiB, every node a scan object with two child pointers), built
  the same way on both sides; then full collections: ``heap.collect()`` in
  realalloc, ``runtime.GC()`` in a Go 1.19 program built and run by this
  script (same shape, the source is below), with GOMAXPROCS=1 and with
  GOMAXPROCS unset (Go's collector marks in parallel on every core; realalloc's
  on one thread).  Reported: the median of ``--collections`` collections after
  one warm-up, in ms, and realalloc / Go.  Go's runtime.GC() includes its
  concurrent mark, mark termination and the complete sweep; realalloc's pause
  is the whole stop-the-world cycle (mark and sweep).
* ``throughput``: a mixed workload of small objects (each size class
  weighted by 1/size, as bench_malloc.py's mixed-small: mean ~160 B; half of
  them scan) with a live set of ``--live`` objects kept in a root range (a
  ctypes array).  Each operation allocates an object into a random slot of
  the array.  ``gc=False``: the slot's old object is freed explicitly;
  ``gc=True``: it is just overwritten, and cycles (GOGC=100) free it.
  Reported: operations per second of each (the median over ``--rounds``
  interleaved rounds), collections included, and their ratio.

Run from the repository root: ``python bench/bench_gc.py [--quick] [--json FILE]``.
REALALLOC_DEBUG is forced to 0.  The Go half needs Go 1.19..1.21 (``go`` on
PATH or /usr/lib/go-1.19/bin/go); without it the pause comparison is skipped.
"""

from __future__ import annotations

import os

os.environ["REALALLOC_DEBUG"] = "0"  # before realalloc is imported

import argparse
import ctypes
import json
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's realalloc, not an installed one

import realalloc  # noqa: E402
from realalloc.core.sizeclasses import CLASS_TO_SIZE  # noqa: E402

TREES, DEPTH = 128, 16  # 128 * (2**16 - 1) nodes of 32 bytes = 256 MiB

GO_SOURCE = """
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"
)

type node struct {
	left, right *node
	a, b        int64
}

var roots []*node

func tree(d int) *node {
	n := &node{}
	if d > 0 {
		n.left = tree(d - 1)
		n.right = tree(d - 1)
	}
	return n
}

func main() {
	trees, _ := strconv.Atoi(os.Args[1])
	depth, _ := strconv.Atoi(os.Args[2])
	collections, _ := strconv.Atoi(os.Args[3])
	for i := 0; i < trees; i++ {
		roots = append(roots, tree(depth-1))
	}
	runtime.GC() // warm-up: what building left behind
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fmt.Println("heap_alloc", ms.HeapAlloc)
	for i := 0; i < collections; i++ {
		t := time.Now()
		runtime.GC()
		fmt.Println("ns", time.Since(t).Nanoseconds())
	}
	runtime.KeepAlive(roots)
}
"""


def find_go() -> str | None:
    for go in ("/usr/lib/go-1.19/bin/go", shutil.which("go")):
        if go and os.access(go, os.X_OK):
            out = subprocess.run(
                [go, "env", "GOVERSION"], capture_output=True, text=True, check=False
            ).stdout.strip()
            m = re.fullmatch(r"go1\.(\d+)(?:\.\d+)?\S*", out)
            if m and 19 <= int(m.group(1)) <= 21:
                return go
    return None


def go_pauses(trees: int, depth: int, collections: int) -> dict[str, Any] | None:
    go = find_go()
    if go is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)
        (src / "go.mod").write_text("module gcpause\n\ngo 1.19\n")
        (src / "main.go").write_text(GO_SOURCE)
        env = dict(os.environ, GOFLAGS="-mod=mod", GOPROXY="off", CGO_ENABLED="0")
        env.update(GOTOOLCHAIN="local", GOCACHE=str(src / "cache"), GOPATH=str(src / "path"))
        subprocess.run([go, "build", "-o", "gcpause", "."], cwd=src, env=env, check=True)
        version = subprocess.run(
            [go, "env", "GOVERSION"], capture_output=True, text=True, check=True
        ).stdout.strip()
        result: dict[str, Any] = {"version": version}
        for procs in ("1", ""):
            run_env = {k: v for k, v in os.environ.items() if k not in ("GOGC", "GODEBUG")}
            if procs:
                run_env["GOMAXPROCS"] = procs
            else:
                run_env.pop("GOMAXPROCS", None)
            out = subprocess.run(
                [str(src / "gcpause"), str(trees), str(depth), str(collections)],
                env=run_env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split("\n")
            ns = [int(line.split()[1]) for line in out if line.startswith("ns ")]
            heap = next(int(line.split()[1]) for line in out if line.startswith("heap_alloc "))
            key = f"GOMAXPROCS={procs or os.cpu_count()}"
            result[key] = {"ms": statistics.median(ns) / 1e6, "all_ms": [n / 1e6 for n in ns]}
            result["heap_alloc"] = heap
    return result


def realalloc_pauses(trees: int, depth: int, collections: int) -> dict[str, Any]:
    heap = realalloc.Heap(gc=True, background_scavenger=False)
    heap.set_gc_percent(-1)  # building allocates without links to roots: no cycle meanwhile
    roots = (ctypes.c_uint64 * trees)()
    heap.add_root(ctypes.addressof(roots), 8 * trees)
    malloc, word = heap.malloc, ctypes.c_uint64.from_address

    def tree(d: int) -> int:
        n = malloc(32, scan=True)
        if d:
            word(n).value = tree(d - 1)
            word(n + 8).value = tree(d - 1)
        return n

    started = time.perf_counter()
    for i in range(trees):
        roots[i] = tree(depth - 1)
    built = time.perf_counter() - started
    heap.collect()  # warm-up, as Go's
    ms, phases = [], []
    for _ in range(collections):
        t = time.perf_counter()
        heap.collect()
        ms.append((time.perf_counter() - t) * 1e3)
        last = heap._gc.last
        assert last is not None
        phases.append([n / 1e6 for n in last.ns])
    st = heap.stats()
    heap.close()
    return {
        "ms": statistics.median(ms),
        "all_ms": ms,
        "phases_ms (flush, mark, sweep)": phases,
        "heap_alloc": st.heap_alloc,
        "objects": st.heap_objects,
        "build_s": built,
    }


def workload(n: int, live: int, seed: int) -> tuple[list[int], list[bool], list[int]]:
    rng = random.Random(seed)
    classes = CLASS_TO_SIZE[1:]
    weights = [1 / s for s in classes]
    sizes = rng.choices(classes, weights, k=n)
    scans = [rng.random() < 0.5 for _ in range(n)]
    slots = [rng.randrange(live) for _ in range(n)]
    return sizes, scans, slots


def throughput_round(gc: bool, ops: tuple[list[int], list[bool], list[int]], live: int) -> float:
    sizes, scans, slots = ops
    heap = realalloc.Heap(gc=gc, background_scavenger=False)
    arr = (ctypes.c_uint64 * live)()
    if gc:
        heap.add_root(ctypes.addressof(arr), 8 * live)
    malloc, free = heap.malloc, heap.free
    for i in range(live):
        arr[i] = malloc(64, scan=True)
    started = time.perf_counter()
    if gc:
        for size, scan, k in zip(sizes, scans, slots, strict=True):
            arr[k] = malloc(size, scan=scan)
    else:
        for size, scan, k in zip(sizes, scans, slots, strict=True):
            old = arr[k]
            arr[k] = malloc(size, scan=scan)
            free(old)
    elapsed = time.perf_counter() - started
    heap.check()
    heap.close()
    return len(sizes) / elapsed


def throughput(n: int, live: int, rounds: int) -> dict[str, Any]:
    ops = workload(n, live, seed=1)
    plain, collected = [], []
    for _ in range(rounds):
        plain.append(throughput_round(False, ops, live))
        collected.append(throughput_round(True, ops, live))
    heap = realalloc.Heap(gc=True, background_scavenger=False)  # once more for the counts
    arr = (ctypes.c_uint64 * live)()
    heap.add_root(ctypes.addressof(arr), 8 * live)
    for size, scan, k in zip(*ops, strict=True):
        arr[k] = heap.malloc(size, scan=scan)
    st = heap.stats()
    heap.close()
    p, c = statistics.median(plain), statistics.median(collected)
    return {
        "ops": n,
        "live": live,
        "gc_false_ops_per_s": p,
        "gc_true_ops_per_s": c,
        "ratio": c / p,
        "all_gc_false": plain,
        "all_gc_true": collected,
        "cycles": st.num_gc,
        "pause_total_ms": st.pause_total_ns / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller heap and fewer rounds")
    ap.add_argument("--collections", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--live", type=int, default=10_000)
    ap.add_argument("--ops", type=int, default=400_000)
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args(argv)
    trees = 16 if args.quick else TREES
    rounds = 2 if args.quick else args.rounds
    ops = args.ops // 4 if args.quick else args.ops
    results: dict[str, Any] = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"pause: {trees} trees of depth {DEPTH}, 32-byte scan nodes", flush=True)
    ra = realalloc_pauses(trees, DEPTH, args.collections)
    results["pause_realalloc"] = ra
    print(
        f"  realalloc   {ra['ms']:8.1f} ms  ({ra['heap_alloc'] >> 20} MiB, {ra['objects']} objects)"
    )
    go = go_pauses(trees, DEPTH, args.collections)
    results["pause_go"] = go
    if go is None:
        print("  Go          skipped: no Go 1.19..1.21 toolchain")
    else:
        for key, value in go.items():
            if key.startswith("GOMAXPROCS"):
                ratio = ra["ms"] / value["ms"]
                print(f"  {go['version']} {key}: {value['ms']:8.1f} ms   realalloc/Go {ratio:.2f}")
    for live in (args.live, args.live * 10):
        print(f"throughput: {ops} ops, live set {live} objects", flush=True)
        t = throughput(ops, live, rounds)
        results[f"throughput_live_{live}"] = t
        print(
            f"  gc=False {t['gc_false_ops_per_s']:10.0f} ops/s   gc=True "
            f"{t['gc_true_ops_per_s']:10.0f} ops/s   ratio {t['ratio']:.2f}   "
            f"({t['cycles']} cycles, {t['pause_total_ms']:.0f} ms of pauses)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
