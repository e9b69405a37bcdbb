"""Fragmentation and RSS: realalloc.Heap against glibc, jemalloc, mimalloc and tcmalloc.

Workload (the issue's): allocate ~1 GB in mixed sizes, free a random 90 %,
allocate again (back to ~1 GB live), free everything.  RSS is read at the end
of every phase, and after the phases that free memory also once more after
the allocator's explicit release call.

Sizes, drawn once from a seeded generator and written to a file that every
allocator's process maps read-only, so all get exactly the same requests in the
same order:

* three bands, log-uniform within each: 16 B - 1 KiB (40 % of the bytes),
  1 KiB - 64 KiB (40 %), 64 KiB - 1 MiB (20 %).  By count that is 98.4 %,
  1.5 % and 0.03 % of the objects (~1.8 million objects per GB, mean ~590 B).
* phase 1 allocates until the requested bytes reach ``--total-mb``;
* phase 2 frees a random 90 % of those objects, in random order;
* phase 3 allocates new objects (new sizes, same distribution) until their
  bytes reach what phase 2 freed, so live bytes return to ~``--total-mb``;
* phase 4 frees the rest: the phase-1 survivors, then phase 3's objects.

After each allocation phase one C call writes one byte in every 4 KiB page of
every new object (and its last byte), so every page an object spans is
resident.  The addresses live in an anonymous mapping and the sizes in the
mapped file, both touched before the baseline, so the driver allocates
nothing from any ``malloc`` while the workload runs.

Processes: one subprocess per allocator, each running the same Python driver
(``run_workload``); only ``m`` (size -> int address), ``f`` (free an address)
and ``release`` differ:

* realalloc: ``h = realalloc.Heap()`` (background scavenger on),
  ``h.malloc`` / ``h.free``; release = ``h.scavenge()`` (sweeps every class
  with ``reclaim()``, then releases every free page: Go's debug.FreeOSMemory).
  The interpreter itself runs on glibc.  Every child imports realalloc (which
  creates its idle default heap), so all baselines include the same code.
* glibc: ``g_malloc`` / ``g_free`` of bench/peers.py's cffi module (API mode,
  ``malloc`` / ``free`` of the process); release = ``malloc_trim(0)``.
* jemalloc, mimalloc, tcmalloc: the same glibc module, with the library in
  ``LD_PRELOAD``, so the process's ``malloc`` / ``free`` (the module's, and the
  interpreter's) are the peer's.  jemalloc has to be preloaded: Debian's build
  uses static TLS and cannot be dlopen'ed.  The child checks that the library
  is mapped and owns what ``g_malloc`` returns.  Release: jemalloc
  ``mallctl("thread.tcache.flush")`` + ``mallctl("arena.4096.purge")``
  (MALLCTL_ARENAS_ALL); mimalloc ``mi_collect(true)``; tcmalloc
  ``MallocExtension_MarkThreadIdle()`` (thread cache back to the central
  lists) + ``MallocExtension_ReleaseFreeMemory()``.  These are reached through
  ``ffi.dlopen(None)`` (ABI mode), so the preloaded library's symbols resolve.

Measured from /proc/self: RSS (VmRSS), peak RSS (VmHWM, reset through
/proc/self/clear_refs right after the baseline), and LazyFree from
smaps_rollup (pages given back with MADV_FREE: still counted in RSS until the
kernel needs them).  Baseline = RSS after setup (allocator loaded, one
malloc/free done, workload mapped and touched), before phase 1.

Targets (the issue's, interpreted; see bench/README.md):
(a) realalloc's RSS after free-all + release <= glibc's after free-all +
    malloc_trim(0);
(b) realalloc's RSS after free-90 % + release <= 1.25 x live bytes (requested
    bytes of the survivors) + realalloc's baseline.
Also printed: (b') the same bound after "allocate again" (~1 GB live), and,
as a reference for (b), the 4 KiB pages the survivors would touch if phase 1
had been laid out back to back in allocation order with no headers and no
size classes: what a non-moving allocator without overhead keeps resident.

Run from the repository root: ``python bench/bench_fragmentation.py [--quick]
[--total-mb N] [--settle S] [--json FILE]`` (after ``pip install -e .``).
REALALLOC_DEBUG is forced to 0.  The verdicts are printed, never asserted.
"""

from __future__ import annotations

import os

os.environ["REALALLOC_DEBUG"] = "0"  # before realalloc is imported; inherited by children

import argparse
import array
import gc
import hashlib
import importlib
import json
import mmap
import platform
import subprocess
import sys
import sysconfig
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers

from realalloc.tools.workloads import fragmentation
from realalloc.tools.workloads.fragmentation import BANDS, FREE_FRACTION, run_workload

MIB = 1 << 20
OS_PAGE = 4096
TARGET_FACTOR = 1.25

ALLOCATORS = ("realalloc", "glibc", "jemalloc", "mimalloc", "tcmalloc")
PRELOAD = {
    "jemalloc": ("libjemalloc.so.2", "libjemalloc2"),
    "mimalloc": ("libmimalloc.so.2", "libmimalloc2.0"),
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc-minimal4"),
}
"""Peers run under LD_PRELOAD: soname and Debian package."""

PROBES = ("alloc1", "free90", "free90_rel", "alloc2", "freeall", "freeall_rel")
"""RSS probe points, in order (``_rel``: after the allocator's release call)."""

# ------------------------------------------------------------------ workload


def make_workload(total_bytes: int, seed: int, directory: str) -> dict[str, Any]:
    """Write the workload file (fragmentation.draw's sizes and order); its
    description (counts, bytes, path)."""
    plan = fragmentation.draw(total_bytes, seed)
    sizes1, sizes2, order, nfree = plan.sizes1, plan.sizes2, plan.order, plan.nfree
    path = os.path.join(directory, f"workload-{seed}-{total_bytes}.bin")
    with open(path, "wb") as fh:
        sizes1.tofile(fh)
        sizes2.tofile(fh)
        array.array("I", order).tofile(fh)
    bytes1 = sum(sizes1)
    bytes2 = sum(sizes2)
    keep = order[nfree:]
    return {
        "path": path,
        "seed": seed,
        "n1": len(sizes1),
        "n2": len(sizes2),
        "nfree": nfree,
        "live": {
            "alloc1": bytes1,
            "free90": bytes1 - plan.freed,
            "alloc2": bytes1 - plan.freed + bytes2,
            "freeall": 0,
        },
        "objects_by_band": [sum(1 for s in sizes1 if lo <= s < hi) for lo, hi, _ in BANDS],
        "packed_free90": fragmentation.packed_pages(sizes1, keep),
    }


# ----------------------------------------------------------- touching pages

TOUCH_CDEF = (
    "void ra_touch(const uint64_t *addrs, const uint32_t *sizes, size_t start, size_t stop);"
)
TOUCH_SOURCE = r"""
#include <stddef.h>
#include <stdint.h>
/* One byte in every 4 KiB page an object spans: at its start, every 4 KiB
   after that, and its last byte. */
void ra_touch(const uint64_t *addrs, const uint32_t *sizes, size_t start, size_t stop) {
    for (size_t i = start; i < stop; i++) {
        volatile unsigned char *p = (volatile unsigned char *)(uintptr_t)addrs[i];
        size_t n = sizes[i];
        for (size_t off = 0; off < n; off += 4096) p[off] = 0xA5;
        p[n - 1] = 0xA5;
    }
}
"""


def touch_module_name() -> str:
    parts = [TOUCH_CDEF, TOUCH_SOURCE, " ".join(peers.CFLAGS), sys.version]
    return "_ra_frag_touch_" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def build_touch() -> str:
    """Compile the page-touching helper into peers' cache directory unless there."""
    from cffi import FFI  # type: ignore[import-untyped,unused-ignore]

    name = touch_module_name()
    out = peers.cache_dir()
    target = out / (name + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
    if not target.exists():
        ffi = FFI()
        ffi.cdef(TOUCH_CDEF)
        ffi.set_source(name, TOUCH_SOURCE, extra_compile_args=peers.CFLAGS)
        with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as tmp:
            built = ffi.compile(tmpdir=tmp, verbose=False)
            os.replace(built, target)
    return name


def load_touch() -> Any:
    out = str(peers.cache_dir())
    if out not in sys.path:
        sys.path.insert(0, out)
    return importlib.import_module(touch_module_name())


# ------------------------------------------------------------- /proc probes


def memory() -> dict[str, int]:
    """rss, hwm (peak), anon, file and lazyfree bytes of this process."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0]) * 1024
    lazy = 0
    try:
        with open("/proc/self/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("LazyFree:"):
                    lazy = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "rss": out["VmRSS"],
        "hwm": out["VmHWM"],
        "anon": out.get("RssAnon", 0),
        "file": out.get("RssFile", 0),
        "lazyfree": lazy,
    }


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- the driver


class PreloadedPeer:
    """A peer allocator preloaded into this process: checks, release, version."""

    def __init__(self, name: str) -> None:
        from cffi import FFI

        self.name = name
        self.ffi = ffi = FFI()
        ffi.cdef(
            """
            int malloc_trim(size_t pad);
            const char *gnu_get_libc_version(void);
            int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp,
                        size_t newlen);
            void mi_collect(bool force);
            bool mi_is_in_heap_region(const void *p);
            int mi_version(void);
            void MallocExtension_MarkThreadIdle(void);
            void MallocExtension_ReleaseFreeMemory(void);
            int MallocExtension_GetOwnership(const void *p);
            const char *tc_version(int *major, int *minor, const char **patch);
            """
        )
        self.lib = ffi.dlopen(None)

    def has(self, symbol: str) -> bool:
        try:
            getattr(self.lib, symbol)
        except AttributeError:
            return False
        return True

    def mallctl(self, name: str) -> int:
        return int(self.lib.mallctl(name.encode(), self.ffi.NULL, self.ffi.NULL, self.ffi.NULL, 0))

    def owns(self, addr: int) -> bool:
        ffi, lib = self.ffi, self.lib
        p = ffi.cast("void *", addr)
        if self.name == "jemalloc":
            arena = ffi.new("unsigned *")
            size = ffi.new("size_t *", ffi.sizeof("unsigned"))
            ptr = ffi.new("void **", p)
            return lib.mallctl(b"arenas.lookup", arena, size, ptr, ffi.sizeof("void *")) == 0
        if self.name == "mimalloc":
            return bool(lib.mi_is_in_heap_region(p))
        if self.name == "tcmalloc":
            return int(lib.MallocExtension_GetOwnership(p)) == 1
        # glibc: no peer's entry points anywhere in the process
        return not any(self.has(s) for s in ("mallctl", "mi_version", "tc_version"))

    def version(self) -> str:
        ffi, lib = self.ffi, self.lib
        if self.name == "jemalloc":
            v = ffi.new("char **")
            size = ffi.new("size_t *", ffi.sizeof("char *"))
            lib.mallctl(b"version", v, size, ffi.NULL, 0)
            return str(ffi.string(v[0]).decode()).split("-")[0]  # "5.3.0-0-g54eaed1d..."
        if self.name == "mimalloc":
            v = int(lib.mi_version())  # 209
            return f"{v // 100}.{v // 10 % 10}.{v % 10}"
        if self.name == "tcmalloc":
            major, minor = ffi.new("int *"), ffi.new("int *")
            lib.tc_version(major, minor, ffi.NULL)
            return f"{major[0]}.{minor[0]}"
        return str(ffi.string(lib.gnu_get_libc_version()).decode())

    def release(self) -> None:
        lib = self.lib
        if self.name == "glibc":
            lib.malloc_trim(0)
        elif self.name == "jemalloc":
            for ctl in ("thread.tcache.flush", "arena.4096.purge"):  # 4096: MALLCTL_ARENAS_ALL
                if self.mallctl(ctl):
                    raise RuntimeError(f"mallctl({ctl!r}) failed")
        elif self.name == "mimalloc":
            lib.mi_collect(True)
        elif self.name == "tcmalloc":
            lib.MallocExtension_MarkThreadIdle()
            lib.MallocExtension_ReleaseFreeMemory()


def run_child(name: str, meta_path: str, settle: float) -> dict[str, Any]:
    with open(meta_path) as fh:
        meta = json.load(fh)
    n1, n2, nfree = meta["n1"], meta["n2"], meta["nfree"]
    out: dict[str, Any] = {"allocator": name, "probes": {}, "seconds": {}}
    heap: Any = None
    # Every child imports realalloc (its modules, its cffi shim, its default
    # heap and that heap's idle scavenger thread), so the baselines differ only
    # by what the allocator under test does.
    import realalloc
    from realalloc import _debug

    out["realalloc_debug"] = _debug.DEBUG
    if name == "realalloc":
        heap = realalloc.Heap()
        m, f, release = heap.malloc, heap.free, heap.scavenge
        out["version"] = "realalloc"
    else:
        glibc = peers.load("glibc")
        m, f = glibc.g_malloc, glibc.g_free
        peer = PreloadedPeer(name)
        if name in PRELOAD:
            path = peers.find_library(PRELOAD[name][0])
            with open("/proc/self/maps") as fh:
                if path is None or path not in fh.read():
                    raise RuntimeError(f"{name}: {path} is not mapped (LD_PRELOAD ignored?)")
        a = m(64)
        if not peer.owns(a):
            raise RuntimeError(f"{name}: g_malloc did not reach {name}'s malloc")
        f(a)
        release = peer.release
        out["version"] = peer.version()
    touch_mod = load_touch()

    # The workload: sizes (n1 + n2) then the free order (n1), mapped read-only.
    with open(meta["path"], "rb") as fh:
        wmap = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    words = memoryview(wmap).cast("I")
    sizes, order = words[: n1 + n2], words[n1 + n2 :]
    amap = mmap.mmap(-1, 8 * (n1 + n2))
    addrs = memoryview(amap).cast("Q")
    for off in range(0, len(wmap), OS_PAGE):  # make both resident before the baseline
        wmap[off]
    for off in range(0, len(amap), OS_PAGE):
        amap[off] = 0
    c_addrs = touch_mod.ffi.from_buffer("uint64_t[]", amap)
    c_sizes = touch_mod.ffi.from_buffer("uint32_t[]", wmap)
    c_touch = touch_mod.lib.ra_touch

    def touch(start: int, stop: int) -> None:
        c_touch(c_addrs, c_sizes, start, stop)

    a = m(64)  # the allocator is initialised before the baseline
    f(a)
    gc.collect()
    gc.disable()
    out["baseline"] = memory()
    out["peak_reset"] = reset_peak()
    t_last = time.perf_counter()
    seen_peak = out["baseline"]["rss"]

    def probe(point: str) -> None:
        nonlocal t_last, seen_peak
        out["seconds"][point] = time.perf_counter() - t_last
        if settle and point in ("free90", "freeall"):
            time.sleep(settle)  # background scavengers / decay may act meanwhile
        mem = memory()
        seen_peak = max(seen_peak, mem["rss"])
        out["probes"][point] = mem
        if heap is not None:  # realalloc's own accounting, read after the RSS
            view = heap.memory_report().to_dict()
            view["stats"] = {k: v for k, v in heap.stats().to_dict().items() if k != "by_size"}
            out.setdefault("realalloc", {})[point] = view
        t_last = time.perf_counter()

    run_workload(m, f, release, touch, sizes, order, addrs, n1, n2, nfree, probe)
    gc.enable()
    end = memory()
    out["peak"] = end["hwm"] if out["peak_reset"] else max(seen_peak, end["hwm"])
    out["peak_probes"] = seen_peak
    return out


# ---------------------------------------------------------- orchestrator side


def spawn(name: str, meta_path: str, settle: float) -> dict[str, Any]:
    """Run one allocator's subprocess; its result, or {"error": ...}."""
    env = os.environ.copy()
    env["REALALLOC_DEBUG"] = "0"
    env.pop("LD_PRELOAD", None)
    if name in PRELOAD:
        path = peers.find_library(PRELOAD[name][0])
        assert path is not None
        env["LD_PRELOAD"] = path
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out_path = tmp.name
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--meta", meta_path]
    cmd += ["--child-out", out_path, "--settle", str(settle)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
            return {"error": f"exit status {proc.returncode}: " + " | ".join(tail)}
        with open(out_path) as fh:
            result: dict[str, Any] = json.load(fh)
        result["wall_seconds"] = time.perf_counter() - t0
        return result
    finally:
        os.unlink(out_path)


def mib(x: float) -> str:
    return f"{x / MIB:,.1f}"


def print_table(results: dict[str, dict[str, Any]], live: dict[str, int]) -> None:
    cols = [
        ("baseline", lambda r: r["baseline"]["rss"]),
        ("peak", lambda r: r["peak"]),
        ("alloc 1", lambda r: r["probes"]["alloc1"]["rss"]),
        ("free 90%", lambda r: r["probes"]["free90"]["rss"]),
        ("+release", lambda r: r["probes"]["free90_rel"]["rss"]),
        ("alloc 2", lambda r: r["probes"]["alloc2"]["rss"]),
        ("free all", lambda r: r["probes"]["freeall"]["rss"]),
        ("+release", lambda r: r["probes"]["freeall_rel"]["rss"]),
    ]
    head = f"{'allocator':<10} {'version':<9}" + "".join(f" {c:>9}" for c, _ in cols)
    head += f" {'frag90':>7} {'time s':>7}"
    print("RSS in MiB")
    print(head)
    print("-" * len(head))
    live_keys = ("alloc1", "free90", "free90", "alloc2", "freeall", "freeall")
    print(
        f"{'live':<10} {'':<9} {'':>9} {'':>9}" + "".join(f" {mib(live[k]):>9}" for k in live_keys)
    )
    lazy = []
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<10} error: {r['error']}")
            continue
        frag = (r["probes"]["free90_rel"]["rss"] - r["baseline"]["rss"]) / max(live["free90"], 1)
        secs = sum(r["seconds"].values())
        print(
            f"{name:<10} {r['version'][:9]:<9}"
            + "".join(f" {mib(get(r)):>9}" for _, get in cols)
            + f" {frag:>7.2f} {secs:>7.1f}"
        )
        lazy += [
            f"{name} {point} {mib(r['probes'][point]['lazyfree'])}"
            for point in PROBES
            if r["probes"][point]["lazyfree"]
        ]
    print(
        "frag90 = (RSS after free 90% + release - baseline) / live bytes after free 90%; "
        "time = workload seconds"
    )
    print("LazyFree (MADV_FREE pages, counted in RSS), MiB: " + ("; ".join(lazy) or "none"))


def verdicts(
    results: dict[str, dict[str, Any]], live: dict[str, int], packed: int
) -> dict[str, Any]:
    ra, gl = results.get("realalloc", {}), results.get("glibc", {})
    out: dict[str, Any] = {}
    if "probes" in ra and "probes" in gl:
        mine = ra["probes"]["freeall_rel"]["rss"]
        theirs = gl["probes"]["freeall_rel"]["rss"]
        mine_up = mine - ra["baseline"]["rss"]
        theirs_up = theirs - gl["baseline"]["rss"]
        out["a"] = {
            "realalloc": mine,
            "glibc": theirs,
            "realalloc_above_baseline": mine_up,
            "glibc_above_baseline": theirs_up,
            "met": mine <= theirs,
        }
        print(
            f"(a) final RSS (free all + release): realalloc {mib(mine)} MiB vs glibc "
            f"(malloc_trim) {mib(theirs)} MiB: {'met' if mine <= theirs else 'NOT MET'} "
            f"({mine / theirs:.3f}x); above each one's baseline: {mib(mine_up)} vs "
            f"{mib(theirs_up)} MiB"
        )
    if "probes" in ra:
        base = ra["baseline"]["rss"]
        for key, tag, point, label in (
            ("b", "(b)", "free90_rel", "after free 90% + scavenge"),
            ("b_alloc2", "(b')", "alloc2", "after allocate again (supplementary)"),
        ):
            rss = ra["probes"][point]["rss"]
            nbytes = live[point.removesuffix("_rel")]
            bound = TARGET_FACTOR * nbytes + base
            met = rss <= bound
            out[key] = {
                "rss": rss,
                "live": nbytes,
                "baseline": base,
                "bound": bound,
                "met": met,
            }
            print(
                f"{tag} RSS {label}: realalloc {mib(rss)} MiB vs "
                f"{TARGET_FACTOR} x {mib(nbytes)} MiB live + {mib(base)} MiB baseline = "
                f"{mib(bound)} MiB: {'met' if met else 'NOT MET'} "
                f"(RSS above baseline = {(rss - base) / nbytes:.2f} x live)"
            )
        out["packed_free90"] = packed
        print(
            f"    reference for (b): the 4 KiB pages holding the survivors if phase 1 were "
            f"packed back to back in allocation order (no headers, no size classes): "
            f"{mib(packed)} MiB = {packed / live['free90']:.2f} x live"
        )
    return out


def print_realalloc_detail(r: dict[str, Any]) -> None:
    detail = r.get("realalloc")
    if not detail:
        return
    keys = ("in_use", "free_in_spans", "free_resident", "released", "mapped", "metadata")
    print("realalloc's own view (memory_report), MiB:")
    print(f"  {'after':<12}" + "".join(f" {k:>14}" for k in keys) + f" {'RSS-baseline':>14}")
    base = r["baseline"]["rss"]
    for point in PROBES:
        row = detail[point]
        print(
            f"  {point:<12}"
            + "".join(f" {mib(row[k]):>14}" for k in keys)
            + f" {mib(r['probes'][point]['rss'] - base):>14}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--total-mb", type=int, default=1024, help="bytes allocated in phase 1 (MiB)")
    ap.add_argument("--quick", action="store_true", help="--total-mb 256")
    ap.add_argument("--seed", type=int, default=2019)
    ap.add_argument(
        "--allocators", default=",".join(ALLOCATORS), help="comma-separated, in run order"
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds to wait before each RSS probe that follows frees (default 0)",
    )
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--meta", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        result = run_child(args.child, args.meta, args.settle)
        with open(args.child_out, "w") as fh:
            json.dump(result, fh)
        return 0

    total_mb = 256 if args.quick else args.total_mb
    names = [n.strip() for n in args.allocators.split(",") if n.strip()]
    for n in names:
        if n not in ALLOCATORS:
            ap.error(f"unknown allocator {n!r} (known: {', '.join(ALLOCATORS)})")
    runnable = []
    for n in names:
        if n in PRELOAD and peers.find_library(PRELOAD[n][0]) is None:
            soname, package = PRELOAD[n]
            print(f"skip {n}: {soname} not found (apt-get install -y {package})")
            continue
        runnable.append(n)

    peers.build("glibc")  # built here, not under a child's LD_PRELOAD
    build_touch()
    print(
        f"fragmentation: {total_mb} MiB in mixed sizes, free {FREE_FRACTION:.0%}, allocate "
        f"again, free all; seed {args.seed}; Python {platform.python_version()}, "
        f"{peers.cpu_model()}, {os.cpu_count()} CPUs; realalloc {peers.git_revision()}"
    )
    with tempfile.TemporaryDirectory(prefix="ra-frag-") as tmp:
        t0 = time.perf_counter()
        meta = make_workload(total_mb * MIB, args.seed, tmp)
        meta_path = os.path.join(tmp, "meta.json")
        with open(meta_path, "w") as fh:
            json.dump(meta, fh)
        live = meta["live"]
        print(
            f"workload: phase 1 {meta['n1']:,} objects ({mib(live['alloc1'])} MiB; by band "
            f"{', '.join(f'{c:,}' for c in meta['objects_by_band'])}), free {meta['nfree']:,}, "
            f"phase 3 {meta['n2']:,} objects; generated in {time.perf_counter() - t0:.1f} s"
        )
        results: dict[str, dict[str, Any]] = {}
        for n in runnable:
            results[n] = r = spawn(n, meta_path, args.settle)
            status = r.get("error") or f"done in {r['wall_seconds']:.1f} s"
            print(f"  {n}: {status}", flush=True)
            if r.get("realalloc_debug") and n == "realalloc":
                print(f"  warning: realalloc ran at REALALLOC_DEBUG={r['realalloc_debug']}")
    print()
    print_table(results, live)
    print()
    checks = verdicts(results, live, meta["packed_free90"])
    if "realalloc" in results:
        print()
        print_realalloc_detail(results["realalloc"])
    if args.json:
        doc = {
            "total_mb": total_mb,
            "seed": args.seed,
            "bands": BANDS,
            "free_fraction": FREE_FRACTION,
            "workload": {k: v for k, v in meta.items() if k != "path"},
            "python": platform.python_version(),
            "cpu": peers.cpu_model(),
            "realalloc_revision": peers.git_revision(),
            "results": results,
            "targets": checks,
        }
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
