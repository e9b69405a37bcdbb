"""Stress runs: many threads churning real allocations, every byte verified.

See realalloc/__init__.py for an overview of the allocator.  This module is
not part of the allocator; it drives one ``Heap`` the way a hostile user
would and reports what happened (``python -m realalloc stress``).

Each worker thread keeps a live set of objects.  Every object is filled with
a pattern derived from its address and a sequence number when it is
allocated, checked at random while it lives and again before it is freed.
Part of the frees happen on other threads: a worker hands an object to a
shared queue and whichever worker takes it verifies and frees it.  A
monitor thread samples ops/s, live bytes, heap_inuse and RSS for the
progress line and the peak RSS.  At the end the workers free everything,
the heap scavenges, ``heap.check()`` runs, and the report says whether any
byte was wrong and where.

Locking: workers share only the hand-off queue (thread-safe) and the
counters in ``_Totals`` (under its lock, merged once per worker).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Final, TextIO

from ..core.heap import Heap
from ..core.osmem import fault_hits, inject_faults
from ..core.rss import rss
from ..core.sizeclasses import CLASS_TO_SIZE, MAX_SMALL_SIZE
from ..errors import InvalidArgumentError, OutOfMemoryError, require_int

__all__ = ["DISTRIBUTIONS", "StressConfig", "StressReport", "load_replay", "run_stress"]

DISTRIBUTIONS: Final = ("uniform", "lognormal", "large", "replay")
_MIX: Final = 0x9E3779B97F4A7C15
_FAULT_OPS: Final = ("reserve", "commit", "release")


@dataclass(frozen=True, slots=True)
class StressConfig:
    """What to run.  Validated by ``check``."""

    threads: int = os.cpu_count() or 2
    """Worker threads."""
    ops: int | None = None
    """Operations (malloc or free) per worker; None: run for ``duration``."""
    duration: float = 10.0
    """Seconds to run when ``ops`` is None."""
    distribution: str = "uniform"
    """uniform (over Go's size classes), lognormal, large (large-object heavy) or replay."""
    sizes: tuple[tuple[int, bool], ...] = ()
    """For replay: (size, scan) pairs, cycled."""
    live: int = 2000
    """Objects each worker keeps alive."""
    scan_ratio: float = 0.3
    """Fraction of objects allocated with scan=True."""
    cross_free: float = 0.3
    """Fraction of frees handed to another thread."""
    verify_rate: float = 0.05
    """Chance per operation of checking a random live object."""
    seed: int = 1
    fault_every: int = 0
    """Fail every N-th reserve, commit and release in the shim (0: never)."""
    progress: bool = True
    """Print a progress line to stderr while running."""

    def check(self) -> None:
        """Raise InvalidArgumentError (or ArgumentTypeError) for a bad option."""
        require_int("threads", self.threads, 1, 1024)
        if self.ops is not None:
            require_int("ops", self.ops, 1)
        if not (isinstance(self.duration, (int, float)) and 0 < self.duration <= 86400):
            raise InvalidArgumentError(
                f"duration must be in (0, 86400] seconds, got {self.duration!r}"
            )
        if self.distribution not in DISTRIBUTIONS:
            raise InvalidArgumentError(
                f"distribution must be one of {', '.join(DISTRIBUTIONS)}, got {self.distribution!r}"
            )
        if self.distribution == "replay" and not self.sizes:
            raise InvalidArgumentError("the replay distribution needs a file of sizes")
        require_int("live", self.live, 1, 10_000_000)
        for name in ("scan_ratio", "cross_free", "verify_rate"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise InvalidArgumentError(f"{name} must be between 0 and 1, got {value!r}")
        require_int("seed", self.seed, 0)
        require_int("fault_every", self.fault_every, 0)


@dataclass(slots=True)
class Corruption:
    """One object whose bytes were not what was written."""

    address: int
    size: int
    seq: int
    offset: int
    """First byte that differs."""
    when: str
    """verify, free, or final."""
    thread: str


@dataclass(slots=True)
class StressReport:
    """What a stress run did and found."""

    config: dict[str, Any]
    seconds: float = 0.0
    mallocs: int = 0
    frees: int = 0
    cross_thread_frees: int = 0
    verifies: int = 0
    bytes_allocated: int = 0
    failed_mallocs: int = 0
    """MemoryErrors raised (injected faults, memory limit)."""
    faults_injected: dict[str, int] = field(default_factory=dict)
    peak_rss: int = 0
    final_rss: int = 0
    baseline_rss: int = 0
    scavenged: int = 0
    """Bytes released to the OS during the run and by the final scavenge."""
    by_class: list[dict[str, int]] = field(default_factory=list)
    check: str = "not run"
    corruptions: list[Corruption] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Unexpected exceptions in workers."""

    @property
    def ok(self) -> bool:
        return not self.corruptions and not self.errors and self.check == "ok"

    @property
    def ops_per_second(self) -> float:
        return (self.mallocs + self.frees) / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        out["ops_per_second"] = self.ops_per_second
        return out

    def format(self) -> str:
        mib = 1 << 20
        lines = [
            f"realalloc stress: {'OK' if self.ok else 'FAILED'}",
            f"  threads {self.config['threads']}, distribution {self.config['distribution']}, "
            f"seed {self.config['seed']}",
            f"  operations   {self.mallocs + self.frees:>12,} in {self.seconds:.1f} s "
            f"({self.ops_per_second:,.0f} ops/s)",
            f"  mallocs      {self.mallocs:>12,}   frees {self.frees:,} "
            f"(cross-thread {self.cross_thread_frees:,})",
            f"  verified     {self.verifies:>12,} objects",
            f"  allocated    {self.bytes_allocated / mib:>12,.1f} MiB",
            f"  failed       {self.failed_mallocs:>12,} mallocs (MemoryError)",
            f"  faults       {self.faults_injected}",
            f"  RSS          baseline {self.baseline_rss / mib:.1f} MiB, peak "
            f"{self.peak_rss / mib:.1f} MiB, final {self.final_rss / mib:.1f} MiB",
            f"  scavenged    {self.scavenged / mib:>12,.1f} MiB",
            f"  heap.check() {self.check}",
            f"  corruptions  {len(self.corruptions)}",
        ]
        for c in self.corruptions[:10]:
            lines.append(
                f"    {c.when}: object at {c.address:#x} ({c.size} B, seq {c.seq}, "
                f"thread {c.thread}) differs at byte {c.offset}"
            )
        for e in self.errors[:10]:
            lines.append(f"  error: {e}")
        lines.append(f"  {'class':>5} {'size':>6} {'mallocs':>12} {'frees':>12}")
        for row in self.by_class:
            lines.append(
                f"  {row['class']:>5} {row['size']:>6} {row['mallocs']:>12,} {row['frees']:>12,}"
            )
        return "\n".join(lines)


def load_replay(path: str) -> tuple[tuple[int, bool], ...]:
    """Read a replay file: one object per line, ``SIZE`` or ``SIZE scan``;
    blank lines and lines starting with # are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"cannot read replay file {path}: {exc}") from None
    sizes = []
    for number, line in enumerate(lines, 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) > 2 or (len(words) == 2 and words[1] not in ("scan", "noscan")):
            raise InvalidArgumentError(f"{path}:{number}: expected 'SIZE [scan|noscan]'")
        try:
            size = int(words[0])
        except ValueError:
            raise InvalidArgumentError(
                f"{path}:{number}: size {words[0]!r} is not an integer"
            ) from None
        if not 0 <= size <= 1 << 32:
            raise InvalidArgumentError(f"{path}:{number}: size {size} out of range")
        sizes.append((size, len(words) == 2 and words[1] == "scan"))
    if not sizes:
        raise InvalidArgumentError(f"{path}: no sizes")
    return tuple(sizes)


def _size_source(cfg: StressConfig, rng: random.Random) -> Callable[[], int]:
    if cfg.distribution == "uniform":
        bounds = CLASS_TO_SIZE

        def uniform() -> int:
            c = rng.randrange(1, len(bounds))
            return rng.randint(bounds[c - 1] + 1, bounds[c])

        return uniform
    if cfg.distribution == "lognormal":
        return lambda: max(1, min(1 << 20, int(rng.lognormvariate(math.log(64), 1.5))))
    if cfg.distribution == "large":

        def large() -> int:
            if rng.random() < 0.5:
                return rng.randint(MAX_SMALL_SIZE + 1, 4 << 20)
            return rng.randint(1, MAX_SMALL_SIZE)

        return large
    raise AssertionError(cfg.distribution)


def _pattern(addr: int, seq: int, size: int) -> bytes:
    word = ((addr * _MIX) ^ (seq << 17) ^ seq) & 0xFFFF_FFFF_FFFF_FFFF
    return (word.to_bytes(8, "little") * (size // 8 + 1))[:size]


class _Totals:
    """Counters the workers merge into once each."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops = 0  # read by the monitor without the lock: approximate
        self.live_bytes = 0
        self.report_counts = [0] * 6  # mallocs frees cross verifies bytes failed


def _inspect(addr: int, size: int, seq: int, when: str, thread: str) -> Corruption | None:
    """The corruption found in the object at ``addr``, or None if it holds its pattern."""
    got, want = ctypes.string_at(addr, size), _pattern(addr, seq, size)
    if got == want:
        return None
    offset = next(i for i, (x, y) in enumerate(zip(got, want, strict=True)) if x != y)
    return Corruption(addr, size, seq, offset, when, thread)


def _worker(
    heap: Heap,
    cfg: StressConfig,
    index: int,
    handoff: queue.SimpleQueue[tuple[int, int, int, str]],
    totals: _Totals,
    report: StressReport,
    deadline: float,
) -> None:
    name = f"w{index}"
    rng = random.Random(cfg.seed * 1000 + index)
    next_size = _size_source(cfg, rng) if cfg.distribution != "replay" else None
    replay = cfg.sizes
    live: list[tuple[int, int, int]] = []  # (addr, size, seq)
    counts = [0] * 6
    malloc, free = heap.malloc, heap.free
    seq = index << 40
    ops = 0
    corruptions: list[Corruption] = []

    def verify(addr: int, size: int, s: int, when: str, thread: str = name) -> None:
        counts[3] += 1
        if (bad := _inspect(addr, size, s, when, thread)) is not None:
            corruptions.append(bad)

    def release(item: tuple[int, int, int], when: str) -> None:
        addr, size, s = item
        verify(addr, size, s, when)
        free(addr)
        counts[1] += 1

    while True:
        if cfg.ops is not None:
            if ops >= cfg.ops:
                break
        elif ops & 63 == 0 and time.monotonic() >= deadline:
            break
        ops += 1
        if ops & 255 == 0:
            totals.ops += 256
        try:
            taken = handoff.get_nowait()
        except queue.Empty:
            taken = None
        if taken is not None:
            addr, size, s, owner = taken
            verify(addr, size, s, "free", owner)
            free(addr)
            counts[1] += 1
            counts[2] += 1
            continue
        if live and (len(live) >= cfg.live or rng.random() < 0.45):
            item = live.pop(rng.randrange(len(live)))
            if rng.random() < cfg.cross_free:
                handoff.put((*item, name))
            else:
                release(item, "free")
            continue
        if replay:
            size, scan = replay[(seq + index) % len(replay)]
        else:
            assert next_size is not None
            size, scan = next_size(), rng.random() < cfg.scan_ratio
        seq += 1
        try:
            addr = malloc(size, scan=scan, zero=False)
        except OutOfMemoryError:
            counts[5] += 1
            continue
        ctypes.memmove(addr, _pattern(addr, seq, size), size)
        live.append((addr, size, seq))
        counts[0] += 1
        counts[4] += size
        if live and rng.random() < cfg.verify_rate:
            addr, size, s = live[rng.randrange(len(live))]
            verify(addr, size, s, "verify")
    for item in live:
        release(item, "final")
    with totals.lock:
        totals.report_counts = [a + b for a, b in zip(totals.report_counts, counts, strict=True)]
        report.corruptions.extend(corruptions)


def _monitor(
    heap: Heap,
    totals: _Totals,
    report: StressReport,
    stop: threading.Event,
    progress: TextIO | None,
    started: float,
    cfg: StressConfig,
) -> None:
    last_ops, last_t = 0, started
    while not stop.wait(0.5):
        now_rss = rss()
        report.peak_rss = max(report.peak_rss, now_rss)
        if progress is None:
            continue
        now = time.monotonic()
        ops = totals.ops
        rate = (ops - last_ops) / max(now - last_t, 1e-9)
        last_ops, last_t = ops, now
        try:
            st = heap.stats()
        except Exception:  # the heap may be closing
            continue
        if cfg.ops is None:
            done = min(1.0, (now - started) / cfg.duration)
        else:
            done = min(1.0, ops / (cfg.ops * cfg.threads))
        bar = "#" * int(done * 20)
        progress.write(
            f"\r[{bar:<20}] {done:4.0%} {rate:>10,.0f} ops/s  live {st.heap_alloc >> 20:>6} MiB"
            f"  inuse {st.heap_inuse >> 20:>6} MiB  RSS {now_rss >> 20:>6} MiB "
        )
        progress.flush()
    if progress is not None:
        progress.write("\n")


def run_stress(cfg: StressConfig, *, progress: TextIO | None = None) -> StressReport:
    """Run one stress test; never raises for what it finds (see the report)."""
    cfg.check()
    report = StressReport(config={k: v for k, v in asdict(cfg).items() if k != "sizes"})
    report.baseline_rss = report.peak_rss = rss()
    hits_before = {op: fault_hits(op) for op in _FAULT_OPS}
    heap = Heap()
    totals = _Totals()
    handoff: queue.SimpleQueue[tuple[int, int, int, str]] = queue.SimpleQueue()
    stop = threading.Event()
    started = time.monotonic()
    deadline = started + cfg.duration
    if cfg.fault_every:
        for op in _FAULT_OPS:
            inject_faults(op, 0, cfg.fault_every)
    errors: list[str] = []

    def guarded(i: int) -> None:
        try:
            _worker(heap, cfg, i, handoff, totals, report, deadline)
        except Exception as exc:  # reported, not raised: the run goes on
            errors.append(f"worker {i}: {type(exc).__name__}: {exc}")

    monitor = threading.Thread(
        target=_monitor,
        args=(heap, totals, report, stop, progress if cfg.progress else None, started, cfg),
        daemon=True,
    )
    monitor.start()
    workers = [threading.Thread(target=guarded, args=(i,)) for i in range(cfg.threads)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        if cfg.fault_every:
            for op in _FAULT_OPS:
                inject_faults(op, 0, 0)
    # Objects handed off after their receivers stopped.
    while True:
        try:
            addr, size, s, owner = handoff.get_nowait()
        except queue.Empty:
            break
        if (bad := _inspect(addr, size, s, "final", owner)) is not None:
            report.corruptions.append(bad)
        heap.free(addr)
        totals.report_counts[1] += 1
        totals.report_counts[2] += 1
    report.seconds = time.monotonic() - started
    stop.set()
    monitor.join()
    (
        report.mallocs,
        report.frees,
        report.cross_thread_frees,
        report.verifies,
        report.bytes_allocated,
        report.failed_mallocs,
    ) = totals.report_counts
    report.errors = errors
    report.faults_injected = {op: fault_hits(op) - hits_before[op] for op in _FAULT_OPS}
    try:
        heap.scavenge()
    except OutOfMemoryError as exc:  # an injected release fault, after the run
        report.errors.append(f"final scavenge: {exc}")
    st = heap.stats()
    report.scavenged = st.released_total
    report.by_class = [
        {"class": i, "size": c.size, "mallocs": c.mallocs, "frees": c.frees}
        for i, c in enumerate(st.by_size)
        if c.mallocs
    ]
    try:
        heap.check()
        report.check = "ok"
    except Exception as exc:
        report.check = f"{type(exc).__name__}: {exc}"
    report.final_rss = rss()
    heap.close()
    return report


def write_json(report: StressReport, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report.to_dict(), f, indent=2)
        f.write("\n")


def stress_main(args: Any, out: TextIO | None = None) -> int:
    """The ``stress`` subcommand: build the config from parsed arguments, run, report."""
    sizes: tuple[tuple[int, bool], ...] = ()
    if args.replay:
        sizes = load_replay(args.replay)
    cfg = StressConfig(
        threads=args.threads,
        ops=args.ops,
        duration=args.duration,
        distribution="replay" if args.replay else args.distribution,
        sizes=sizes,
        live=args.live,
        scan_ratio=args.scan_ratio,
        cross_free=args.cross_free,
        verify_rate=args.verify_rate,
        seed=args.seed,
        fault_every=args.fault_every,
        progress=not args.quiet,
    )
    report = run_stress(cfg, progress=sys.stderr)
    print(report.format(), file=sys.stdout if out is None else out)
    if args.json:
        write_json(report, args.json)
    return 0 if report.ok else 1


def add_arguments(parser: Any) -> None:
    """Options of the ``stress`` subcommand."""
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 2,
        help="worker threads (default: the number of cores)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--duration", type=float, default=10.0, help="seconds to run (default 10)")
    group.add_argument("--ops", type=int, default=None, help="operations per worker instead")
    parser.add_argument(
        "--distribution",
        choices=DISTRIBUTIONS[:-1],
        default="uniform",
        help="object sizes: uniform over Go's size classes, lognormal, or large "
        "(large-object heavy)",
    )
    parser.add_argument(
        "--replay", metavar="FILE", help="sizes from a file, one per line: SIZE [scan|noscan]"
    )
    parser.add_argument("--live", type=int, default=2000, help="live objects per worker")
    parser.add_argument("--scan-ratio", type=float, default=0.3, help="fraction with scan=True")
    parser.add_argument(
        "--cross-free", type=float, default=0.3, help="fraction of frees done by another thread"
    )
    parser.add_argument(
        "--verify-rate",
        type=float,
        default=0.05,
        help="chance per operation of verifying a random live object",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--fault-every",
        type=int,
        default=0,
        metavar="N",
        help="fail every N-th reserve, commit and release in the shim",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
