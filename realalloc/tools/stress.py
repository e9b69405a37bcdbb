"""Stress runs: many threads churning real allocations, every byte verified.

See realalloc/__init__.py for an overview of the allocator.  This module is
not part of the allocator; it drives one heap the way a hostile user would
and reports what happened (``python -m realalloc stress``).  It owns the
``stress`` subcommand: its options and their checks, the run, the progress
output, the samples and their plot, the report and the exit code.  It uses
only the public API of ``realalloc`` (``Heap``, ``inject_faults``,
``fault_hits``, ``rss``, ``roundupsize``) and of ``realalloc.designs``, so
it keeps working whatever the allocator's internals become.

The heap (``--design``): ``go``, realalloc's own ``Heap`` (the default), or
one of the seed's designs (realalloc/designs: ``tcmalloc``, ``segregated``,
``freelist``), with the same workers, patterns, hand-offs and final
``check()``.  A design has no scan flag, no zeroing choice, no memory limit,
no scavenger and no per-class counters, so for a design: objects are
allocated by size alone (``--scan-ratio`` is ignored), ``--memory-limit`` is
a usage error, the report's ``scavenged`` is None and ``by_class`` empty.
The sizes drawn are the same for every design (Go's size classes for the
uniform distribution).

Each worker thread keeps a live set of objects.  Every object is filled with
a pattern derived from its address and a sequence number when it is
allocated, checked at random while it lives and again before it is freed.
Part of the frees happen on other threads: a worker hands an object to a
shared queue and whichever worker takes it verifies and frees it.  A
monitor thread samples RSS for the peak and writes progress.  At the end
the workers free everything, the heap scavenges, ``heap.check()`` runs, and
the report says whether any byte was wrong and where.

Samples: the monitor also keeps a time series (``Sample``: seconds, ops/s,
live bytes, bytes in use, RSS), one every half second, one when the workers
start and one when they have finished; past 2000 samples it keeps every
other one and samples half as often, so however long the run, it keeps
between 1000 and 2000.
They go into the JSON report (``samples``) and, with ``--plot FILE``, into a
PNG of 1000 x 600 pixels (``PLOT_SIZE``): ops/s above, live bytes, bytes in
use and RSS in MiB below, over seconds since the start.

Garbage collection (``--gc``, the go design only): the heap is
``Heap(gc=True)`` and nothing is freed by dropping a Python int.  Each
worker links its live objects through scan objects: a chain of directory
blocks (4 KiB scan objects: word 0 links the next block, the other words
hold live objects), the chain's head in a root range.  An object is
allocated pinned (``Pinner.malloc``), filled with its pattern, linked into
a directory slot and unpinned.  "Freeing" it unlinks it: usually it is just
dropped for the collector; one time in five it is also freed explicitly;
for a hand-off it is pinned, unlinked and queued, and the taker verifies it
and either adopts it (links it into its own directory) or drops it, then
unpins it.  Cycles come from the pacer (and from the memory limit, if
set).  At the end the workers drop everything, the heap collects, and any
object left over is an error.  The report adds the collector's figures.

Checking before running: every option is checked while the command line is
parsed (numbers in range, the replay file read and parsed, the ``--json``
and ``--plot`` paths opened for writing, matplotlib importable for
``--plot``, the ``--design`` known, ``--distribution`` not given with
``--replay``, ``--memory-limit`` only with the go design), so a bad option
is an argparse usage error, exit 2, before any heap exists.

Progress goes to stderr.  On a terminal it is one line rewritten with a
carriage return twice a second; anywhere else (a pipe, a CI log) it is an
ordinary line every ``--progress-every`` seconds (default 5).  ``--quiet``:
none.

Exit codes: 0 ok, 1 failed (corruption, check() or a worker's exception),
2 bad usage (nothing was run), 3 could not run; the full table, with what
falls under each, is ``EXIT_CODES`` below, which ``--help`` prints.

Locking: workers share only the hand-off queue (thread-safe) and the
counters in ``_Totals`` (under its lock, merged once per worker).  The
samples are the monitor thread's alone until it has been joined.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import queue
import random
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Final, NamedTuple, TextIO

from .. import Heap, fault_hits, inject_faults, roundupsize, rss
from ..designs import DESIGNS, DesignHeap, make
from ..errors import InvalidArgumentError, OutOfMemoryError, RealAllocError, require_int

__all__ = [
    "DESIGN_NAMES",
    "DISTRIBUTIONS",
    "EXIT_CODES",
    "EXIT_FAILED",
    "EXIT_NOT_RUN",
    "EXIT_OK",
    "EXIT_USAGE",
    "PLOT_SIZE",
    "Sample",
    "StressConfig",
    "StressReport",
    "add_arguments",
    "config_from_args",
    "load_replay",
    "plot_report",
    "run_stress",
    "stress_main",
    "writable_path",
    "writable_path_for",
    "write_json",
]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_RUN: Final = 3
EXIT_CODES: Final = """\
exit codes:
  0  ok: at least one malloc succeeded, every object held its pattern,
     heap.check() passed
  1  failed: an object's bytes differed from its pattern, heap.check()
     raised, or a worker raised an unexpected exception
  2  bad usage: an option out of range or malformed, --distribution
     with --replay, an unreadable or malformed replay file, a --json
     or --plot path that cannot be written, --plot without matplotlib,
     an unknown --design, --memory-limit with a design other than go;
     nothing was run
  3  could not run: no malloc succeeded (e.g. --fault-every 1 or a
     tiny --memory-limit), the heap could not be created, or the JSON
     report or the plot could not be written after the run
  1 wins over 3.  Some but not all mallocs failing with MemoryError is
  not a failure: refusing memory cleanly is correct behaviour under
  injected faults or a memory limit; the failures are counted in the
  report and the run is judged on what did succeed."""
"""The exit-code table, printed by ``--help``."""

DISTRIBUTIONS: Final = ("uniform", "lognormal", "large", "replay")
DESIGN_NAMES: Final = ("go", *DESIGNS)
"""``--design``: go (realalloc.Heap), then the seed's designs (realalloc.designs.DESIGNS)."""
PLOT_SIZE: Final = (1000, 600)
"""Width and height in pixels of the ``--plot`` PNG."""
_SAMPLE_EVERY: Final = 0.5
"""Seconds between samples, until there are _MAX_SAMPLES of them."""
_MAX_SAMPLES: Final = 2000
_GO_MAX_SMALL: Final = 32 << 10  # Go's maxSmallSize: its largest size class
_MIX: Final = 0x9E3779B97F4A7C15
_FAULT_OPS: Final = ("reserve", "commit", "release")
_C_INT_MAX: Final = (1 << 63) - 1  # inject_faults and the memory limit take an int64
_DEFAULT_THREADS: Final = min(os.cpu_count() or 2, 1024)  # the cap of the threads option
_TTY_INTERVAL: Final = 0.5
"""Seconds between updates of the progress line on a terminal."""


def _require_range(name: str, value: object, lo: int, hi: int | None = None) -> int:
    """``require_int`` with the upper bound said in decimal (it says hex, for addresses)."""
    v = require_int(name, value, lo)
    if hi is not None and v > hi:
        raise InvalidArgumentError(f"{name} must be <= {hi}, got {v}")
    return v


def _require_fraction(name: str, value: object) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise InvalidArgumentError(f"{name} must be between 0 and 1, got {value!r}")


def _require_seconds(name: str, value: object, hi: float) -> None:
    # `not (0 < v <= hi)` also refuses nan, which compares false with everything
    if not (isinstance(value, (int, float)) and 0 < value <= hi):
        raise InvalidArgumentError(f"{name} must be in (0, {hi:g}] seconds, got {value!r}")


# One check per numeric field, shared by StressConfig.check and the command
# line's option types, so the two cannot disagree about a range.
_FIELD_CHECKS: Final[dict[str, Callable[[Any], object]]] = {
    "threads": lambda v: _require_range("threads", v, 1, 1024),
    "ops": lambda v: v is None or _require_range("ops", v, 1),
    "duration": lambda v: _require_seconds("duration", v, 86400),
    "live": lambda v: _require_range("live", v, 1, 10_000_000),
    "scan_ratio": lambda v: _require_fraction("scan_ratio", v),
    "cross_free": lambda v: _require_fraction("cross_free", v),
    "verify_rate": lambda v: _require_fraction("verify_rate", v),
    "seed": lambda v: _require_range("seed", v, 0),
    "fault_every": lambda v: _require_range("fault_every", v, 0, _C_INT_MAX),
    "memory_limit": lambda v: v is None or _require_range("memory_limit", v, 0, _C_INT_MAX),
    "progress_every": lambda v: _require_seconds("progress_every", v, 3600),
}


@dataclass(frozen=True, slots=True)
class StressConfig:
    """What to run.  Validated by ``check``."""

    threads: int = _DEFAULT_THREADS
    """Worker threads."""
    ops: int | None = None
    """Operations per worker: mallocs tried (failed ones count) and frees done;
    handing an object to another thread is not one.  None: run for ``duration``."""
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
    memory_limit: int | None = None
    """Bytes: ``heap.set_memory_limit`` for the run (None: no limit)."""
    progress: bool = True
    """Write progress to the stream given to ``run_stress``."""
    progress_every: float = 5.0
    """Seconds between plain progress lines when that stream is not a terminal."""
    design: str = "go"
    """The heap: go (realalloc.Heap) or one of realalloc.designs (see DESIGN_NAMES)."""
    gc: bool = False
    """A collected heap (``Heap(gc=True)``): objects are linked through scan
    objects and dropped for the collector (see the module docstring)."""

    def check(self) -> None:
        """Raise InvalidArgumentError (or ArgumentTypeError) for a bad option."""
        for name, check in _FIELD_CHECKS.items():
            check(getattr(self, name))
        if self.distribution not in DISTRIBUTIONS:
            raise InvalidArgumentError(
                f"distribution must be one of {', '.join(DISTRIBUTIONS)}, got {self.distribution!r}"
            )
        if self.distribution == "replay" and not self.sizes:
            raise InvalidArgumentError("the replay distribution needs a file of sizes")
        if self.design not in DESIGN_NAMES:
            raise InvalidArgumentError(
                f"design must be one of {', '.join(DESIGN_NAMES)}, got {self.design!r}"
            )
        if self.memory_limit is not None and self.design != "go":
            raise InvalidArgumentError(
                f"memory_limit (--memory-limit) needs the go design: {self.design} has none"
            )
        if self.gc and self.design != "go":
            raise InvalidArgumentError(
                f"gc (--gc) needs the go design: {self.design} has no garbage collector"
            )


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


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of the monitor thread."""

    seconds: float
    """Since the workers were started."""
    ops: int
    """Operations so far as the workers count them (mallocs tried and frees
    done, what ``--ops`` limits; not the frees of what is left live at the
    end): each worker adds 16 at a time while it runs and the rest when it
    stops: while they run the count lags by less than 16 per worker."""
    ops_per_second: float
    """Over the interval that ended with this sample (0 in the first)."""
    live: int
    """Bytes of the live objects: Go's heap_alloc (class sizes); a design's
    bytes_allocated (usable sizes)."""
    inuse: int
    """Bytes held for objects: Go's heap_inuse (in-use spans); a design's
    bytes_held (page runs it holds)."""
    rss: int
    """The process's resident set, bytes."""


@dataclass(slots=True)
class StressReport:
    """What a stress run did and found."""

    config: dict[str, Any]
    design: str = "go"
    """The heap that ran: go (realalloc.Heap) or a design of realalloc.designs."""
    seconds: float = 0.0
    mallocs: int = 0
    """Mallocs that succeeded."""
    frees: int = 0
    cross_thread_frees: int = 0
    verifies: int = 0
    bytes_allocated: int = 0
    failed_mallocs: int = 0
    """MemoryErrors raised (injected faults, memory limit)."""
    faults_injected: dict[str, int] = field(default_factory=dict)
    peak_rss: int = 0
    """Highest RSS sampled (twice a second) during the run."""
    final_rss: int = 0
    """RSS after every object was freed, the heap scavenged and checked."""
    baseline_rss: int = 0
    """RSS with the heap created, before the workers started."""
    scavenged: int | None = 0
    """Bytes released to the OS during the run and by the final scavenge;
    None for a design (it has no scavenger)."""
    by_class: list[dict[str, int]] = field(default_factory=list)
    """Go's per-class counters, classes with mallocs only; empty for a design."""
    check: str = "not run"
    corruptions: list[Corruption] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Unexpected exceptions in workers."""
    samples: list[Sample] = field(default_factory=list)
    """The monitor's time series (see the module docstring)."""
    gc: dict[str, int] | None = None
    """With --gc: num_gc, num_forced_gc, pause_total_ns, pause_max_ns; else None."""

    @property
    def failed(self) -> bool:
        """Something was wrong: a corrupted object, a failed check, a worker error."""
        return bool(self.corruptions or self.errors or self.check != "ok")

    @property
    def exit_code(self) -> int:
        """The command's exit code for this run (see EXIT_CODES)."""
        if self.failed:
            return EXIT_FAILED
        # Nothing allocated means nothing was verified: not a pass.
        return EXIT_OK if self.mallocs else EXIT_NOT_RUN

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK

    @property
    def status(self) -> str:
        return {EXIT_OK: "OK", EXIT_FAILED: "FAILED"}.get(
            self.exit_code, "NOT RUN (no malloc succeeded)"
        )

    @property
    def ops_per_second(self) -> float:
        return (self.mallocs + self.frees) / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        out["status"] = self.status
        out["exit_code"] = self.exit_code
        out["ops_per_second"] = self.ops_per_second
        return out

    def format(self) -> str:
        mib = 1 << 20
        lines = [
            f"realalloc stress: {self.status}",
            f"  design {self.design}, threads {self.config['threads']}, "
            f"distribution {self.config['distribution']}, seed {self.config['seed']}",
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
            (
                f"  scavenged    {self.scavenged / mib:>12,.1f} MiB"
                if self.scavenged is not None
                else f"  scavenged    {'-':>12} (the {self.design} design has no scavenger)"
            ),
            f"  heap.check() {self.check}",
            *(
                [
                    f"  collections  {self.gc['num_gc']:>12,} ({self.gc['num_forced_gc']} forced), "
                    f"pauses {self.gc['pause_total_ns'] / 1e6:,.1f} ms in all, longest "
                    f"{self.gc['pause_max_ns'] / 1e6:,.1f} ms"
                ]
                if self.gc is not None
                else []
            ),
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


def _size_source(
    cfg: StressConfig, rng: random.Random, class_sizes: tuple[int, ...]
) -> Callable[[], int]:
    """Draws object sizes.  ``class_sizes``: Go's size classes, class 0 (0) first."""
    if cfg.distribution == "uniform":

        def uniform() -> int:
            c = rng.randrange(1, len(class_sizes))
            return rng.randint(class_sizes[c - 1] + 1, class_sizes[c])

        return uniform
    if cfg.distribution == "lognormal":
        return lambda: max(1, min(1 << 20, int(rng.lognormvariate(math.log(64), 1.5))))
    if cfg.distribution == "large":
        max_small = class_sizes[-1]

        def large() -> int:
            if rng.random() < 0.5:
                return rng.randint(max_small + 1, 4 << 20)
            return rng.randint(1, max_small)

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
        self.report_counts = [0] * 6  # mallocs frees cross verifies bytes failed


def _design_of(heap: Heap | DesignHeap) -> str:
    return "go" if isinstance(heap, Heap) else heap.name


def _open_heap(design: str, gc: bool = False) -> Heap | DesignHeap:
    """A new heap of ``design`` (a name of DESIGN_NAMES), collected if ``gc``."""
    return Heap(gc=gc) if design == "go" else make(design)


def _memory(heap: Heap | DesignHeap) -> tuple[int, int] | None:
    """(live, inuse) bytes as Sample defines them; None if the heap was closed."""
    try:
        if isinstance(heap, Heap):
            st = heap.stats()
            return st.heap_alloc, st.heap_inuse
        ds = heap.stats()
        return ds.bytes_allocated, ds.bytes_held
    except RealAllocError:  # a caller's heap closed under us
        return None


class _Sampler:
    """The monitor's time series: a sample every ``every`` seconds, thinned
    (every other one kept, the first and the newest always, the interval
    doubled) when _MAX_SAMPLES is reached."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.every = _SAMPLE_EVERY
        self.due = started
        self.samples: list[Sample] = []

    def add(
        self, now: float, ops: int, memory: tuple[int, int], now_rss: int, *, final: bool = False
    ) -> None:
        """Record a sample; ``final``: the one after the run, which replaces a
        sample taken less than half an interval before it (a rate over a few
        milliseconds, which the count's last few steps land in, is noise)."""
        seconds = now - self.started
        if final and len(self.samples) > 1 and seconds - self.samples[-1].seconds < self.every / 2:
            self.samples.pop()
        rate = 0.0
        if self.samples:
            last = self.samples[-1]
            rate = (ops - last.ops) / max(seconds - last.seconds, 1e-9)
        self.samples.append(Sample(seconds, ops, rate, memory[0], memory[1], now_rss))
        if len(self.samples) >= _MAX_SAMPLES:
            # Every other one, the first and the newest kept.  Rates stay what
            # they were measured over; later ones span the longer interval.
            self.samples = [*self.samples[:-1:2], self.samples[-1]]
            self.every *= 2
        self.due = max(self.due + self.every, now)


@dataclass(slots=True)
class _Run:
    """What the workers of one run share."""

    heap: Heap | DesignHeap
    cfg: StressConfig
    report: StressReport
    class_sizes: tuple[int, ...]
    """Go's size classes, class 0 (size 0) first."""
    deadline: float
    handoff: queue.SimpleQueue[tuple[int, int, int, str]] = field(default_factory=queue.SimpleQueue)
    """(addr, size, seq, owner) of objects one worker passed for another to free."""
    totals: _Totals = field(default_factory=_Totals)
    abort: threading.Event = field(default_factory=threading.Event)
    """Set when the main thread is interrupted: the workers stop early."""
    sampler: _Sampler = field(default_factory=lambda: _Sampler(time.monotonic()))
    """The monitor's samples, timed from when the workers start."""

    def finished(self, steps: int, ops: int) -> bool:
        """Whether a worker stops before its next step: interrupted or out of
        time (the clock is read every 64 steps), or out of operations."""
        cfg = self.cfg
        if steps & 63 == 0 and (
            self.abort.is_set() or (cfg.ops is None and time.monotonic() >= self.deadline)
        ):
            return True
        return cfg.ops is not None and ops >= cfg.ops

    def take(self) -> tuple[int, int, int, str] | None:
        """An object another worker passed for this one to free, or None."""
        try:
            return self.handoff.get_nowait()
        except queue.Empty:
            return None


def _inspect(addr: int, size: int, seq: int, when: str, thread: str) -> Corruption | None:
    """The corruption found in the object at ``addr``, or None if it holds its pattern."""
    got, want = ctypes.string_at(addr, size), _pattern(addr, seq, size)
    if got == want:
        return None
    offset = next(i for i, (x, y) in enumerate(zip(got, want, strict=True)) if x != y)
    return Corruption(addr, size, seq, offset, when, thread)


def _worker(run: _Run, index: int) -> None:
    cfg, handoff, totals = run.cfg, run.handoff, run.totals
    name = f"w{index}"
    rng = random.Random(cfg.seed * 1000 + index)
    next_size = _size_source(cfg, rng, run.class_sizes) if cfg.distribution != "replay" else None
    replay = cfg.sizes
    live: list[tuple[int, int, int]] = []  # (addr, size, seq)
    counts = [0] * 6
    go = isinstance(run.heap, Heap)  # a design takes the size alone
    malloc: Callable[..., int] = run.heap.malloc
    free = run.heap.free
    seq = index << 40
    ops = 0  # mallocs tried and frees done, what cfg.ops limits
    steps = 0  # loop turns, hand-offs included: when to look at the clock
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

    while not run.finished(steps, ops):
        steps += 1
        taken = run.take()
        if taken is None and live and (len(live) >= cfg.live or rng.random() < 0.45):
            item = live.pop(rng.randrange(len(live)))
            if rng.random() < cfg.cross_free:
                handoff.put((*item, name))
                continue  # not an operation: the taker's free is
            release(item, "free")
        elif taken is not None:
            addr, size, s, owner = taken
            verify(addr, size, s, "free", owner)
            free(addr)
            counts[1] += 1
            counts[2] += 1
        else:
            if replay:
                size, scan = replay[(seq + index) % len(replay)]
            else:
                assert next_size is not None
                size, scan = next_size(), rng.random() < cfg.scan_ratio
            seq += 1
            try:
                addr = malloc(size, scan=scan, zero=False) if go else malloc(size)
            except OutOfMemoryError:
                counts[5] += 1
            else:
                ctypes.memmove(addr, _pattern(addr, seq, size), size)
                live.append((addr, size, seq))
                counts[0] += 1
                counts[4] += size
                if rng.random() < cfg.verify_rate:
                    addr, size, s = live[rng.randrange(len(live))]
                    verify(addr, size, s, "verify")
        ops += 1
        if ops & 15 == 0:  # often enough for the rate of a slow run's samples
            totals.ops += 16
    for item in live:
        release(item, "final")
    with totals.lock:
        totals.ops += ops & 15  # the rest of the running count
        totals.report_counts = [a + b for a, b in zip(totals.report_counts, counts, strict=True)]
        run.report.corruptions.extend(corruptions)


_DIR_SLOTS: Final = 511
"""Object slots per directory block of --gc (a 4 KiB scan object; word 0 links the next)."""


def _gc_worker(run: _Run, index: int, root_word: int) -> None:
    """_worker for a collected heap (see the module docstring: --gc)."""
    cfg, handoff, totals = run.cfg, run.handoff, run.totals
    heap = run.heap
    assert isinstance(heap, Heap)
    name = f"w{index}"
    rng = random.Random(cfg.seed * 1000 + index)
    next_size = _size_source(cfg, rng, run.class_sizes) if cfg.distribution != "replay" else None
    word = ctypes.c_uint64.from_address
    blocks: list[int] = []  # the directory chain, also linked in memory from root_word
    slots: list[tuple[int, int, int] | None] = []
    free_slots: list[int] = []
    live: list[int] = []  # occupied slots
    counts = [0] * 6
    seq = index << 40
    ops = steps = 0
    corruptions: list[Corruption] = []

    def where(i: int) -> int:
        return blocks[i // _DIR_SLOTS] + 8 * (1 + i % _DIR_SLOTS)

    def place(item: tuple[int, int, int]) -> None:
        """Link ``item`` into a directory slot (a new block, pinned until linked, if full)."""
        if not free_slots:
            with heap.pinner() as p:
                block = p.malloc(8 * (_DIR_SLOTS + 1), scan=True)
                word(blocks[-1] if blocks else root_word).value = block
            blocks.append(block)
            free_slots.extend(range(len(slots) + _DIR_SLOTS - 1, len(slots) - 1, -1))
            slots.extend([None] * _DIR_SLOTS)
        i = free_slots.pop()
        slots[i] = item
        word(where(i)).value = item[0]
        live.append(i)

    def unlink(i: int) -> tuple[int, int, int]:
        item = slots[i]
        assert item is not None
        word(where(i)).value = 0
        slots[i] = None
        free_slots.append(i)
        return item

    def verify(item: tuple[int, int, int], when: str, thread: str = name) -> None:
        counts[3] += 1
        if (bad := _inspect(*item, when, thread)) is not None:
            corruptions.append(bad)

    while not run.finished(steps, ops):
        steps += 1
        taken = run.take()
        if taken is None and live and (len(live) >= cfg.live or rng.random() < 0.45):
            i = live.pop(rng.randrange(len(live)))
            item = slots[i]
            assert item is not None
            verify(item, "free")
            r = rng.random()
            if r < cfg.cross_free:
                heap.pin(item[0])  # pinned while it is only in the queue
                unlink(i)
                handoff.put((*item, name))
                continue  # not an operation: the taker's drop is
            unlink(i)
            if r < cfg.cross_free + 0.2:
                heap.free(item[0])  # explicit free keeps working
            counts[1] += 1
        elif taken is not None:
            addr, size, s, owner = taken
            verify((addr, size, s), "free", owner)
            if rng.random() < 0.5 and len(live) < cfg.live:
                place((addr, size, s))  # adopted: linked here before it is unpinned
            heap.unpin(addr)
            counts[1] += 1
            counts[2] += 1
        else:
            if cfg.sizes:
                size, scan = cfg.sizes[(seq + index) % len(cfg.sizes)]
            else:
                assert next_size is not None
                size, scan = next_size(), rng.random() < cfg.scan_ratio
            seq += 1
            try:
                with heap.pinner() as p:
                    addr = p.malloc(size, scan=scan, zero=False)
                    ctypes.memmove(addr, _pattern(addr, seq, size), size)
                    place((addr, size, seq))
            except OutOfMemoryError:
                counts[5] += 1
            else:
                counts[0] += 1
                counts[4] += size
                if rng.random() < cfg.verify_rate:
                    item = slots[live[rng.randrange(len(live))]]
                    assert item is not None
                    verify(item, "verify")
        ops += 1
        if ops & 15 == 0:
            totals.ops += 16
    for i in live:
        verify(unlink(i), "final")
        counts[1] += 1
    word(root_word).value = 0  # the directories go too
    with totals.lock:
        totals.ops += ops & 15
        totals.report_counts = [a + b for a, b in zip(totals.report_counts, counts, strict=True)]
        run.report.corruptions.extend(corruptions)


def _final_collection(heap: Heap, roots: int, report: StressReport) -> None:
    """--gc: everything was dropped; one cycle must leave the heap empty."""
    try:
        heap.collect()
        heap.remove_root(roots)
    except RealAllocError as exc:
        report.errors.append(f"final collection: {type(exc).__name__}: {exc}")
        return
    st = heap.stats()
    if st.heap_objects:
        report.errors.append(
            f"final collection: {st.heap_objects} objects ({st.heap_alloc} bytes) left "
            "although nothing reaches them"
        )
    report.gc = {
        "num_gc": st.num_gc,
        "num_forced_gc": st.num_forced_gc,
        "pause_total_ns": st.pause_total_ns,
        "pause_max_ns": max(st.pause_ns),
    }


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class _Progress:
    """Progress output on one stream: on a terminal a line rewritten with '\\r'
    every half second; elsewhere an ordinary line every ``every`` seconds, so a
    log gets a readable line now and then instead of a flood of rewrites."""

    def __init__(self, stream: TextIO, every: float, cfg: StressConfig, started: float) -> None:
        self.stream = stream
        self.tty = _is_terminal(stream)
        self.every = _TTY_INTERVAL if self.tty else every
        self.cfg = cfg
        self.started = started
        self.due = started + self.every
        self.last_ops, self.last_t = 0, started
        self.wrote = False
        self.dead = False

    def is_due(self, now: float) -> bool:
        return not self.dead and now >= self.due

    def update(self, now: float, ops: int, memory: tuple[int, int], now_rss: int) -> None:
        """Show ``memory`` (live, inuse bytes) and the rest if it is time to."""
        if not self.is_due(now):
            return
        self.due += self.every
        if self.due <= now:  # far behind (a starved monitor): resume the rhythm, no burst
            self.due = now + self.every
        rate = (ops - self.last_ops) / max(now - self.last_t, 1e-9)
        self.last_ops, self.last_t = ops, now
        live, inuse = memory
        cfg = self.cfg
        if cfg.ops is None:
            done = min(1.0, (now - self.started) / cfg.duration)
        else:
            done = min(1.0, ops / (cfg.ops * cfg.threads))
        figures = (
            f"{rate:>10,.0f} ops/s  live {live >> 20:>6} MiB"
            f"  inuse {inuse >> 20:>6} MiB  RSS {now_rss >> 20:>6} MiB"
        )
        if self.tty:
            text = f"\r[{'#' * int(done * 20):<20}] {done:4.0%} {figures} "
        else:
            text = f"stress {now - self.started:7.1f} s {done:4.0%} {figures}\n"
        self._write(text)

    def finish(self) -> None:
        if self.tty and self.wrote:
            self._write("\n")  # end the rewritten line before the report

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
            self.wrote = True
        except (OSError, ValueError):  # stderr closed or a broken pipe: stop showing progress
            self.dead = True


def _monitor(run: _Run, stop: threading.Event, progress: _Progress | None) -> None:
    sampler = run.sampler
    tick = _TTY_INTERVAL if progress is None else min(_TTY_INTERVAL, progress.every)
    while not stop.wait(tick):
        now_rss = rss()
        run.report.peak_rss = max(run.report.peak_rss, now_rss)
        now = time.monotonic()
        show = progress is not None and progress.is_due(now)
        if not (show or now >= sampler.due):
            continue
        memory = _memory(run.heap)  # one reading for the sample and the line
        if memory is None:  # a caller's heap closed under us: nothing to show
            continue
        ops = run.totals.ops
        if now >= sampler.due:
            sampler.add(now, ops, memory, now_rss)
        if show:
            assert progress is not None
            progress.update(now, ops, memory, now_rss)
    if progress is not None:
        progress.finish()


def run_stress(
    cfg: StressConfig,
    *,
    progress: TextIO | None = None,
    heap: Heap | DesignHeap | None = None,
) -> StressReport:
    """Run one stress test; never raises for what it finds (see the report).

    ``progress``: where progress goes when ``cfg.progress`` (see _Progress).
    ``heap``: run on this heap, of ``cfg.design``, and leave it open (its
    memory limit is set if ``cfg.memory_limit`` is); by default a new heap of
    ``cfg.design``, closed at the end.
    """
    cfg.check()
    if heap is not None and _design_of(heap) != cfg.design:
        raise InvalidArgumentError(
            f"the heap is of the {_design_of(heap)} design, the configuration says {cfg.design}"
        )
    if heap is not None and cfg.gc and not (isinstance(heap, Heap) and heap.gc):
        raise InvalidArgumentError("the configuration says gc, the heap has no collector")
    own = heap is None
    if heap is None:
        heap = _open_heap(cfg.design, cfg.gc)
    try:
        return _run(cfg, heap, progress if cfg.progress else None)
    finally:
        if own:
            heap.close()


def _run(cfg: StressConfig, heap: Heap | DesignHeap, stream: TextIO | None) -> StressReport:
    report = StressReport(
        config={k: v for k, v in asdict(cfg).items() if k != "sizes"}, design=cfg.design
    )
    report.baseline_rss = report.peak_rss = rss()
    if isinstance(heap, Heap):
        if cfg.memory_limit is not None:
            heap.set_memory_limit(cfg.memory_limit)
        st = heap.stats()
        released_before = st.released_total
        class_sizes = tuple(c.size for c in st.by_size)
    else:  # the same sizes as for Go, from the public rounding
        class_sizes = (0, *sorted({roundupsize(n) for n in range(1, _GO_MAX_SMALL + 1)}))
    hits_before = {op: fault_hits(op) for op in _FAULT_OPS}
    started = time.monotonic()
    run = _Run(heap, cfg, report, class_sizes, started + cfg.duration, sampler=_Sampler(started))
    first = _memory(heap)
    if first is not None:
        run.sampler.add(started, 0, first, report.baseline_rss)
    errors: list[str] = []

    directories = None
    if cfg.gc:
        assert isinstance(heap, Heap)
        directories = (ctypes.c_uint64 * cfg.threads)()  # each worker's chain of directories
        heap.add_root(ctypes.addressof(directories), 8 * cfg.threads)

    def guarded(i: int) -> None:
        try:
            if directories is None:
                _worker(run, i)
            else:
                _gc_worker(run, i, ctypes.addressof(directories) + 8 * i)
        except Exception as exc:  # reported, not raised: the run goes on
            errors.append(f"worker {i}: {type(exc).__name__}: {exc}")

    stop = threading.Event()
    progress = None if stream is None else _Progress(stream, cfg.progress_every, cfg, started)
    monitor = threading.Thread(target=_monitor, args=(run, stop, progress), daemon=True)
    workers = [threading.Thread(target=guarded, args=(i,)) for i in range(cfg.threads)]
    monitor.start()
    if cfg.fault_every:
        for op in _FAULT_OPS:
            inject_faults(op, 0, cfg.fault_every)
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    except BaseException:
        # Interrupted (Ctrl-C): stop the workers before the heap can be
        # closed under them, then let the interruption through.
        run.abort.set()
        for w in workers:
            if w.ident is not None:
                w.join()
        raise
    finally:
        stop.set()
        monitor.join()
        if cfg.fault_every:
            for op in _FAULT_OPS:
                inject_faults(op, 0, 0)
    # Objects handed off after their receivers stopped.
    while True:
        try:
            addr, size, s, owner = run.handoff.get_nowait()
        except queue.Empty:
            break
        if (bad := _inspect(addr, size, s, "final", owner)) is not None:
            report.corruptions.append(bad)
        if directories is None:
            heap.free(addr)
        else:
            assert isinstance(heap, Heap)
            heap.unpin(addr)  # dropped: the collector frees it
        run.totals.report_counts[1] += 1
        run.totals.report_counts[2] += 1
    report.seconds = time.monotonic() - started
    (
        report.mallocs,
        report.frees,
        report.cross_thread_frees,
        report.verifies,
        report.bytes_allocated,
        report.failed_mallocs,
    ) = run.totals.report_counts
    report.errors = errors
    last = _memory(heap)
    if last is not None:  # every object freed: the memory after the run
        now_rss = rss()
        report.peak_rss = max(report.peak_rss, now_rss)
        run.sampler.add(time.monotonic(), run.totals.ops, last, now_rss, final=True)
    report.samples = run.sampler.samples
    report.faults_injected = {op: fault_hits(op) - hits_before[op] for op in _FAULT_OPS}
    if directories is not None:
        assert isinstance(heap, Heap)
        _final_collection(heap, ctypes.addressof(directories), report)
    if isinstance(heap, Heap):
        try:
            heap.scavenge()
        except OutOfMemoryError as exc:  # the OS refused a release after the run
            report.errors.append(f"final scavenge: {exc}")
        st = heap.stats()
        report.scavenged = st.released_total - released_before
        report.by_class = [
            {"class": i, "size": c.size, "mallocs": c.mallocs, "frees": c.frees}
            for i, c in enumerate(st.by_size)
            if c.mallocs
        ]
    else:
        report.scavenged = None
    try:
        heap.check()
        report.check = "ok"
    except Exception as exc:
        report.check = f"{type(exc).__name__}: {exc}"
    report.final_rss = rss()
    return report


def write_json(report: StressReport, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report.to_dict(), f, indent=2)
        f.write("\n")


def plot_report(report: StressReport, path: str) -> None:
    """Draw the report's samples into the PNG ``path``, PLOT_SIZE pixels: ops/s
    above; live bytes, bytes in use and RSS in MiB below; seconds across.
    ImportError (naming realalloc[plot]) without matplotlib; OSError when the
    file cannot be written."""
    from .heapmap import require_matplotlib

    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = PLOT_SIZE
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    FigureCanvasAgg(fig)
    rate_ax, mem_ax = fig.subplots(2, 1, sharex=True)
    samples = report.samples
    t = [x.seconds for x in samples]
    style: dict[str, Any] = {"marker": "o", "markersize": 3} if len(samples) <= 40 else {}
    # The first sample has no rate (nothing before it): leave it out of the line.
    rate_ax.plot(t[1:], [x.ops_per_second for x in samples[1:]], color="#1f77b4", **style)
    rate_ax.set_ylabel("ops/s")
    rate_ax.grid(alpha=0.3)
    rate_ax.set_ylim(bottom=0)
    live_label, inuse_label = (
        ("live objects (heap_alloc)", "in-use spans (heap_inuse)")
        if report.design == "go"
        else ("live objects (bytes_allocated)", "held page runs (bytes_held)")
    )
    for label, values, colour in (
        (live_label, [x.live for x in samples], "#2ca02c"),
        (inuse_label, [x.inuse for x in samples], "#ff7f0e"),
        ("RSS (process)", [x.rss for x in samples], "#d62728"),
    ):
        mem_ax.plot(t, [v / (1 << 20) for v in values], label=label, color=colour, **style)
    mem_ax.set_ylabel("MiB")
    mem_ax.set_xlabel("seconds since the workers started")
    mem_ax.set_ylim(bottom=0)
    mem_ax.grid(alpha=0.3)
    mem_ax.legend(loc="best", fontsize=8)
    cfg = report.config
    fig.suptitle(
        f"realalloc stress: {report.status}; design {report.design}, {cfg['threads']} threads, "
        f"{cfg['distribution']}, seed {cfg['seed']}; {report.ops_per_second:,.0f} ops/s overall",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")


def stress_main(
    cfg: StressConfig,
    *,
    json_path: str | None = None,
    plot_path: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The ``stress`` subcommand once its options are checked: run, report,
    return the exit code (EXIT_CODES).  Progress and problems go to ``err``."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        heap = _open_heap(cfg.design, cfg.gc)
    except OutOfMemoryError as exc:  # e.g. too many heaps open in this process
        print(f"realalloc stress: could not run: cannot create a heap: {exc}", file=err)
        return EXIT_NOT_RUN
    try:
        report = run_stress(cfg, progress=err, heap=heap)
    finally:
        heap.close()
    print(report.format(), file=out)
    code = report.exit_code
    if json_path is not None:
        try:
            write_json(report, json_path)
        except OSError as exc:  # checked writable before the run; something changed since
            print(f"realalloc stress: cannot write the JSON report: {exc}", file=err)
            if code == EXIT_OK:
                code = EXIT_NOT_RUN
    if plot_path is not None:
        try:
            plot_report(report, plot_path)
        except (OSError, ImportError) as exc:  # checked before the run; changed since
            print(f"realalloc stress: cannot write the plot: {exc}", file=err)
            if code == EXIT_OK:
                code = EXIT_NOT_RUN
    return code


# --- the command line ------------------------------------------------------------------


class ReplayFile(NamedTuple):
    """A ``--replay`` option: the path and the sizes read from it."""

    path: str
    sizes: tuple[tuple[int, bool], ...]


def _option(convert: Callable[[str], Any], field_name: str) -> Callable[[str], Any]:
    """An argparse type: ``convert`` the text, then the field's range check, so a
    bad value is a usage error naming the option (``argument --threads: ...``)."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:  # worded as argparse words its own conversion errors
            raise argparse.ArgumentTypeError(
                f"invalid {convert.__name__.strip('_')} value: {text!r}"
            ) from None
        try:
            _FIELD_CHECKS[field_name](value)
        except RealAllocError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return parse


_SIZE_RE: Final = re.compile(r"(\d+)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)


def _size(text: str) -> int:
    """Bytes from ``4096``, ``64K``, ``64MiB``, ``1G`` (powers of 1024)."""
    m = _SIZE_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(text)
    return int(m[1]) << {"": 0, "k": 10, "m": 20, "g": 30}[m[2].lower()]


def _replay_file(path: str) -> ReplayFile:
    try:
        return ReplayFile(path, load_replay(path))
    except RealAllocError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def writable_path_for(what: str) -> Callable[[str], str]:
    """An argparse type for the path of an output file: the path, once it is
    known that it can be written, else a usage error saying it cannot write
    ``what`` there.  Opening it is the only check that holds for every reason
    it could not be (no such directory, a directory, permissions, a read-only
    file system); a file this created is removed again, so a refused command
    line leaves nothing behind."""

    def check(path: str) -> str:
        existed = os.path.lexists(path)
        try:
            # O_NONBLOCK: a FIFO without a reader fails here instead of hanging
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o666)
        except OSError as exc:
            raise argparse.ArgumentTypeError(
                f"cannot write {what} to {path}: {exc.strerror}"
            ) from None
        os.close(fd)
        if not existed:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return path

    return check


def writable_path(path: str) -> str:
    """The argparse type of ``--json``: ``writable_path_for("the JSON report")``."""
    return writable_path_for("the JSON report")(path)


def _plot_path(path: str) -> str:
    """An argparse type for ``--plot``: matplotlib is there and the path can be written."""
    from .heapmap import require_matplotlib  # heapmap imports this module

    try:
        require_matplotlib()
    except ImportError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return writable_path_for("the plot")(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``stress`` subcommand, each checked as it is parsed, and
    the exit codes in its help."""
    parser.epilog = EXIT_CODES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--threads",
        type=_option(int, "threads"),
        default=_DEFAULT_THREADS,
        help="worker threads, 1 to 1024 (default: the number of cores)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--duration",
        type=_option(float, "duration"),
        default=10.0,
        help="seconds to run (default 10)",
    )
    group.add_argument(
        "--ops",
        type=_option(int, "ops"),
        default=None,
        help="instead, operations per worker: mallocs tried and frees done",
    )
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument(
        "--distribution",
        choices=DISTRIBUTIONS[:-1],
        default=None,  # not "uniform": giving it at all together with --replay is an error
        help="object sizes: uniform over Go's size classes (the default), lognormal, "
        "or large (large-object heavy)",
    )
    sizes.add_argument(
        "--replay",
        metavar="FILE",
        type=_replay_file,
        help="sizes from a file, one per line: SIZE [scan|noscan]",
    )
    parser.add_argument(
        "--live", type=_option(int, "live"), default=2000, help="live objects per worker"
    )
    parser.add_argument(
        "--scan-ratio",
        type=_option(float, "scan_ratio"),
        default=0.3,
        help="fraction with scan=True",
    )
    parser.add_argument(
        "--cross-free",
        type=_option(float, "cross_free"),
        default=0.3,
        help="fraction of frees done by another thread",
    )
    parser.add_argument(
        "--verify-rate",
        type=_option(float, "verify_rate"),
        default=0.05,
        help="chance per operation of verifying a random live object",
    )
    parser.add_argument("--seed", type=_option(int, "seed"), default=1)
    parser.add_argument(
        "--fault-every",
        type=_option(int, "fault_every"),
        default=0,
        metavar="N",
        help="fail every N-th reserve, commit and release in the shim",
    )
    parser.add_argument(
        "--memory-limit",
        type=_option(_size, "memory_limit"),
        default=None,
        metavar="SIZE",
        help="heap.set_memory_limit for the run: bytes, or with K, M, G (e.g. 256M)",
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        type=writable_path,
        help="also write the report as JSON (checked writable before the run)",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE",
        type=_plot_path,
        help=f"also draw ops/s, live bytes, bytes in use and RSS over the run as a PNG of "
        f"{PLOT_SIZE[0]} x {PLOT_SIZE[1]} pixels (needs realalloc[plot]; checked before the run)",
    )
    parser.add_argument(
        "--design",
        choices=DESIGN_NAMES,
        default="go",
        help="the heap: go (realalloc.Heap, the default) or one of the seed's designs; "
        "a design ignores --scan-ratio and takes no --memory-limit",
    )
    parser.add_argument(
        "--gc",
        action="store_true",
        help="a collected heap (Heap(gc=True), go design only): objects linked through scan "
        "objects and dropped for the collector instead of freed",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument(
        "--progress-every",
        type=_option(float, "progress_every"),
        default=5.0,
        metavar="SECONDS",
        help="when stderr is not a terminal, one progress line every SECONDS (default 5)",
    )


def config_from_args(args: argparse.Namespace) -> StressConfig:
    """The run's configuration from options ``add_arguments`` parsed (and so
    checked).  Raises InvalidArgumentError for what only the options together
    can tell (--memory-limit with a design other than go); the command line
    turns it into a usage error."""
    replay: ReplayFile | None = args.replay
    cfg = StressConfig(
        threads=args.threads,
        ops=args.ops,
        duration=args.duration,
        distribution="replay" if replay else (args.distribution or "uniform"),
        sizes=replay.sizes if replay else (),
        live=args.live,
        scan_ratio=args.scan_ratio,
        cross_free=args.cross_free,
        verify_rate=args.verify_rate,
        seed=args.seed,
        fault_every=args.fault_every,
        memory_limit=args.memory_limit,
        progress=not args.quiet,
        progress_every=args.progress_every,
        design=args.design,
        gc=args.gc,
    )
    cfg.check()
    return cfg
