"""Garbage collection: roots, the cycle, the pacer, finalizers, pins (Go: runtime/mgc.go,
mgcmark.go, mgcsweep.go, mgcpacer.go, mfinal.go, pinner.go).

See realalloc/__init__.py for an overview of the allocator.

``Heap(gc=True)`` makes a collected heap: objects nothing reaches are
freed by the collector.  Explicit ``free`` keeps working in it.  The
mechanics (mark, sweep, the safe-point stop) are C kernels in csrc/gc.c;
this module decides when a cycle runs, what its roots are, and keeps the
statistics, the finalizer queue and the thread that runs it.

What keeps an object alive (the contract)
=========================================
An object survives a cycle while at least one of these holds when the
cycle starts:

* a live ``Buffer`` covers it (``heap.alloc``: a Buffer is a root while it
  lives, and frees its object when it goes, as in every heap, so what only
  the Buffer's object reached is garbage then; a Buffer's memory cannot be
  pinned or given a finalizer: the Buffer decides its end);
* it is pinned (``heap.pin``, or a ``Pinner``), or its finalizer is queued
  and has not run yet;
* an aligned 8-byte word of a root range (``heap.add_root``) or of a live
  *scan* object (``malloc(..., scan=True)``) points anywhere inside it:
  interior pointers count, as in Go.  Noscan objects are never scanned, so
  a pointer held only in one does not retain.

**An address held only in a Python int is not a root.**  ``heap.malloc``
in a collected heap returns an object that nothing reaches yet: the next
cycle frees it unless it is linked (stored into a root range or a reachable
scan object) or pinned first.  The next cycle can come from the very next
allocation on this thread (its slow path may collect), or at any moment
from another thread's.  So link every fresh object before the next
allocation, and on several threads allocate with ``Pinner.malloc``, which
allocates and pins in one step inside the heap (no cycle can fall between)
and unpins when the Pinner does::

    with heap.pinner() as p:
        node = p.malloc(32, scan=True)      # pinned: safe from every cycle
        ...link node into the structure...
    # unpinned here: alive while the structure reaches it

Scanning is conservative (every aligned word is a candidate pointer, so
an integer that happens to point into an object keeps it): what survives is
a superset of what is reachable.  Words pointing at free slots, free pages,
freed large objects or memory that is not this heap's are ignored.

The cycle
=========
A full stop-the-world cycle, in one C call (``_fast.gc_cycle``):

1. *sweep termination*: every thread cache hands its spans and tiny block
   back (the other threads are outside the heap, or parked at a safe
   point), so every small-object span is on its class's central lists;
2. *mark*: mark bits in a side table made for the cycle (Go's gcmarkBits,
   one bitmap per span record); the roots above are marked, then a mark
   stack in C memory (growing by doubling) is drained: a marked scan
   object is scanned word by word, a large one 128 KiB at a time (Go's
   oblets) so one object adds one stack entry however large it is;
3. *finalizers* (Go's order): everything an object with a finalizer
   reaches is marked, the object itself not; each such object then left
   unmarked has its finalizer queued (and removed) and is marked, so it and
   what it reaches live through this cycle; the queue is a root until each
   finalizer has run on the finalizer thread;
4. *sweep*, in the pause: per span alloc bits &= mark bits, the counters of
   objects freed (per class, tiny pieces, large objects) updated, needzero
   set on spans that lost objects, each span filed again by its room; empty
   spans beyond a class's budget and unmarked large objects go back to the
   page heap as ``free`` would send them.  A tiny block is freed whole, when
   none of its pieces is reachable.

**Sweeping happens in the pause, not lazily as in Go.**  Go sweeps a span
before it is reused (``sweepgen``) and in a background sweeper, so the
pause stays short; here a span's refill path is core C with no room for a
sweep-before-use hook, and a sweep is a bitmap AND per span, cheap next to
the mark.  ``sweepgen`` still numbers the cycles (2 per cycle, as Go's)
and ``check`` verifies that the last cycle swept every span it found.

When (the pacer, Go's mgcpacer.go)
==================================
``goal = marked + (marked + root bytes) * GOGC / 100``, at least
``4 MiB * GOGC / 100`` (Go's heapMinimum), where ``marked`` is the bytes
the last cycle marked and root bytes play Go's globals.  ``heap_alloc`` is
checked against it in the slow paths (``Heap._grow_central``, when a class
needs fresh spans, and the large-object path), which run inside the heap;
Go checks its trigger at every span refill, and starts a concurrent cycle
between 0.7 and 0.95 of the way to the goal so that it ends at the goal.
Here the cycle is stop-the-world, so it starts at the goal itself, and
refills from the central lists run in core C without Python: after a cycle
that shrank the live set, allocation fills the freed room of the kept spans
before the pacer looks again (and a batch of fresh spans is cut so that it
does not reach past the goal).  A collected heap keeps no freed large span
for reuse (a plain heap keeps a few, reused in C): every large malloc goes
through the pacer, as in Go.  ``set_gc_percent(-1)`` turns automatic
cycles off (``collect`` still works).  With a memory limit, an allocation
the limit would refuse first collects and retries once.

A slow path starts a cycle through ``_fast.gc_safepoint``: the thread is
inside the heap but holds no lock, so it parks (its calls stop counting as
active), stops the world, collects and starts the world again.  Two threads
at safe points at once do not deadlock: the one that waits is parked, so
the other proceeds; afterwards the waiter checks the pacer again.

Statistics (``Heap.stats``): num_gc, num_forced_gc, next_gc, last_gc,
pause_total_ns, pause_ns (the last 256, circular as Go's), gc_cpu_fraction
(pause time over wall time since the heap was made: the world is stopped
while the collector runs on one thread).  ``REALALLOC_GCTRACE=1`` prints
Go's gctrace line per cycle on stderr (see ``trace_line``).

Invariants (checked by ``check``):
  GC-1: sweepgen == 2 * num_gc, and the last cycle swept every small-object
        span that was live when it ran (spans swept from the central lists
        == live span records).
  GC-2: the last cycle's books balance: objects before == objects marked +
        objects freed, and right after its sweep heap_alloc and heap_objects
        equal the bytes and objects it marked.
  GC-3: every pin, registered finalizer, queued finalizer and pending
        Buffer free names the start of a live object.

Locking: the tables (roots, pins, finalizers, Buffers) are changed inside
the heap (``heap._inside``), one statement per change, so no cycle runs
while they change; a cycle reads them with the world stopped.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .. import _fast
from ..errors import (
    ArgumentTypeError,
    ForeignPointerError,
    GCError,
    HeapCorruption,
    InvalidArgumentError,
    require_int,
)
from .locate import locate
from .osmem import ffi, lib
from .sizeclasses import ARENA_BYTES

if TYPE_CHECKING:
    from .heap import Buffer, Heap
    from .mheap import MHeap

__all__ = ["HEAP_MINIMUM", "PAUSE_HISTORY", "Collector", "CycleRecord", "Pinner", "trace_line"]

HEAP_MINIMUM: Final = 4 << 20
"""The smallest goal at GOGC=100 (Go: defaultHeapMinimum); it scales with GOGC."""
PAUSE_HISTORY: Final = 256
"""Pauses kept (Go: len(MemStats.PauseNs))."""
_ADDR_MAX: Final = (1 << 64) - 1
_NO_GOAL: Final = _ADDR_MAX
"""next_gc with automatic cycles off (Go reports ^uint64(0))."""

Finalizer = Callable[[int], object]


def _address(addr: object, op: str) -> int:
    if isinstance(addr, bool) or not isinstance(addr, int):
        raise ArgumentTypeError(f"{op}: address must be an int, not {type(addr).__name__}")
    if not 0 <= addr <= _ADDR_MAX:
        raise ForeignPointerError(f"{op}({int(addr):#x}): not an address of this heap")
    return int(addr)


@dataclass(frozen=True, slots=True)
class CycleRecord:
    """What one cycle did (the last one is kept for ``check`` and gctrace)."""

    sweepgen: int
    """The heap's sweepgen after the cycle (2 per cycle)."""
    forced: bool
    """Started by ``collect`` (Go: runtime.GC), not by the pacer or the limit."""
    heap0: int
    """heap_alloc when the cycle started."""
    objects0: int
    """heap_objects when the cycle started."""
    marked: int
    """Bytes of objects marked (live after the cycle)."""
    nmarked: int
    """Objects marked."""
    freed: int
    """Objects freed by the sweep (large ones included)."""
    spans_swept: int
    """Small-object spans the sweep went through (on the central lists)."""
    spans_live: int
    """Small-object span records live when it swept."""
    heap1: int
    """heap_alloc right after the sweep."""
    objects1: int
    """heap_objects right after the sweep."""
    goal: int
    """The goal in force when the cycle started."""
    roots: int
    """Bytes of root ranges scanned (Go's globals)."""
    ns: tuple[int, int, int]
    """Nanoseconds of the three phases: flush caches, mark, sweep."""
    pause: int
    """Nanoseconds of the whole pause, Python's bookkeeping included."""
    start: int
    """time.monotonic_ns() when it started."""


def _run_finalizers(
    due: list[tuple[int, Finalizer]], wake: threading.Event, done: list[bool]
) -> None:
    """The finalizer thread (Go: runfinq): runs each queued finalizer once,
    oldest first; an entry leaves the queue (and stops being a root) only
    after its function returned.  Holds no reference to the heap."""
    while not done[0]:
        wake.wait()
        wake.clear()
        while due and not done[0]:
            addr, fn = due[0]
            try:
                fn(addr)
            except BaseException:  # as Python reports an exception in a __del__
                print(f"Exception in realalloc finalizer of {addr:#x}:", file=sys.stderr)
                traceback.print_exc()
            due.pop(0)


class Collector:
    """The collector of one heap: its tables, pacer, statistics and finalizer thread."""

    def __init__(self, mheap: MHeap, trace: bool) -> None:
        self.mheap = mheap
        self._h = int(ffi.cast("uintptr_t", mheap.h))
        self.trace = trace
        self.percent = 100
        self.marked = 0
        """Bytes marked by the last cycle (Go: heapMarked)."""
        self.goal = HEAP_MINIMUM
        self.roots: dict[int, int] = {}
        """Root ranges: start -> bytes."""
        self.pins: dict[int, int] = {}
        """Pinned objects: start -> pin count."""
        self.finalizers: dict[int, Finalizer] = {}
        self.due: list[tuple[int, Finalizer]] = []
        """Finalizers queued by a cycle and not yet run (their objects are roots)."""
        self.buffers: dict[int, weakref.ref[Buffer]] = {}
        """Buffers by address (dead ones pruned at each cycle): roots while they live."""
        self.pending: list[int] = []
        """Objects of Buffers that died while the world was stopped and whose
        free still waits: roots until ``freed`` (see ``register_buffer``)."""
        self._pin_lock = threading.Lock()
        self.sweepgen = 0
        self.num_gc = 0
        self.num_forced_gc = 0
        self.pause_total_ns = 0
        self.pause_ns = [0] * PAUSE_HISTORY
        self.last_gc = 0
        self.last: CycleRecord | None = None
        self.started = time.monotonic_ns()
        # Freed large objects' spans go straight back to the page heap, as in
        # Go: a span kept for reuse would serve large mallocs in C, where the
        # pacer never looks (realalloc/core/central.py: LARGE_KEPT).
        mheap.h.central[0].empty_max = mheap.h.central[1].empty_max = 0
        self._wake = threading.Event()
        self._done = [False]
        self._thread: threading.Thread | None = None

    # -- the cycle -------------------------------------------------------------

    def cycle(self, heap: Heap, forced: bool) -> None:
        """One full cycle.  The world must be stopped by this thread
        (``heap._alone`` or ``_fast.gc_safepoint``)."""
        start = time.monotonic_ns()
        heap0, objects0 = _fast.gc_heap_live(heap)
        objects = [
            *self.pins,
            *self._live_buffers(),
            *self.pending,
            *(a for a, _ in list(self.due)),
        ]
        roots = list(self.roots.items())
        lo, hi = self._bounds()
        r = _fast.gc_cycle(heap, lo, hi, objects, roots, self.finalizers, self.due)
        marked, nmarked, freed, swept, spans, *ns = r
        heap1, objects1 = _fast.gc_heap_live(heap)
        pause = time.monotonic_ns() - start
        record = CycleRecord(
            sweepgen=self.sweepgen + 2,
            forced=forced,
            heap0=heap0,
            objects0=objects0,
            marked=marked,
            nmarked=nmarked,
            freed=freed,
            spans_swept=swept,
            spans_live=spans,
            heap1=heap1,
            objects1=objects1,
            goal=self.goal,
            roots=sum(n for _, n in roots),
            ns=(ns[0], ns[1], ns[2]),
            pause=pause,
            start=start,
        )
        # One statement: GC-1 relates these, so an interruption leaves all or none.
        self.last, self.sweepgen, self.num_gc = record, record.sweepgen, self.num_gc + 1
        self.num_forced_gc += forced
        self.marked, self.goal = marked, self._goal(marked, self.percent, record.roots)
        self.pause_ns[(self.num_gc - 1) % PAUSE_HISTORY] = pause
        self.pause_total_ns += pause
        self.last_gc = time.time_ns()
        if self.due:
            self._wake_finalizers()
        if self.trace:
            print(trace_line(self), file=sys.stderr, flush=True)

    def poll(self, heap: Heap) -> bool:
        """At a safe point of a slow path (inside the heap, no lock held):
        run a cycle if heap_alloc reached the goal.  True if one ran."""
        if self.percent < 0 or self.mheap.lock.held():
            return False
        if _fast.gc_heap_live(heap)[0] < self.goal:
            return False
        n = self.num_gc
        _fast.gc_safepoint(heap, self._paced, heap)
        return self.num_gc != n

    def clip(self, heap: Heap, nspans: int, span_bytes: int) -> int:
        """A batch of ``nspans`` spans of ``span_bytes``, cut to what fills the
        heap up to the goal (at least one span), so that the next slow path,
        where the pacer looks again, comes at the goal and not a batch later."""
        if self.percent < 0:
            return nspans
        runway = self.goal - _fast.gc_heap_live(heap)[0]
        return max(1, min(nspans, -(-runway // span_bytes)))

    def _paced(self, heap: Heap) -> None:
        # Another thread may have collected while this one waited, parked.
        if self.percent >= 0 and _fast.gc_heap_live(heap)[0] >= self.goal:
            self.cycle(heap, False)

    def collect_for_limit(self, heap: Heap) -> bool:
        """The memory limit refused an allocation: collect at this safe point
        (the caller released MHeap.lock).  False if it cannot here."""
        if self.mheap.lock.held():
            return False
        _fast.gc_safepoint(heap, self.cycle, heap, False)
        return True

    @staticmethod
    def _goal(marked: int, percent: int, roots: int) -> int:
        if percent < 0:
            return _NO_GOAL
        return max(marked + (marked + roots) * percent // 100, HEAP_MINIMUM * percent // 100)

    def set_percent(self, percent: object) -> int:
        """debug.SetGCPercent: returns the old value; negative turns automatic
        cycles off (stored as -1, as Go does)."""
        if type(percent) is not int:
            if isinstance(percent, bool) or not isinstance(percent, int):
                raise ArgumentTypeError(
                    f"set_gc_percent: percent must be an int, not {type(percent).__name__} "
                    f"({percent!r})"
                )
            percent = int(percent)
        new = max(percent, -1)
        roots = self.last.roots if self.last is not None else 0
        old, self.percent, self.goal = self.percent, new, self._goal(self.marked, new, roots)
        return old

    # -- Buffers -------------------------------------------------------------------

    def register_buffer(self, heap: Heap, buf: Buffer) -> None:
        """A Buffer of this heap, a root while it lives (inside the heap).

        A Buffer frees its object when it dies, after its weak references are
        cleared.  A Python callback there could let another thread start a
        cycle that no longer sees the Buffer, which would free the object
        before the Buffer does.  So the callback is C (``_fast.gc_buffer_died``,
        bound by a partial): while the world runs, the Buffer's death and its
        free are one step; while it is stopped, the free waits, and the
        callback lists the object in ``pending`` (a root) until ``freed``."""
        addr = buf.address
        died = functools.partial(_fast.gc_buffer_died, self._h, self.pending, addr)
        self.buffers[addr] = weakref.ref(buf, died)

    def freed(self, addr: int) -> None:
        """The slow path freed ``addr``: a Buffer's free that waited is done."""
        if addr in self.pending:
            self.pending.remove(addr)

    def _live_buffers(self) -> list[int]:
        """Addresses of the live Buffers; dead entries go (their frees are done or pending)."""
        live, dead = [], []
        for addr, ref in list(self.buffers.items()):
            buf = ref()
            if buf is None:
                dead.append((addr, ref))
            elif not buf.freed:
                live.append(addr)
        for addr, ref in dead:
            if self.buffers.get(addr) is ref:
                del self.buffers[addr]
        return live

    def _bounds(self) -> tuple[int, int]:
        bases = [a.base for a in self.mheap.arenas]
        return (min(bases), max(bases) + ARENA_BYTES) if bases else (0, 0)

    # -- finalizers --------------------------------------------------------------

    def _wake_finalizers(self) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive():  # first use, or a forked child
            thread = threading.Thread(
                target=_run_finalizers,
                args=(self.due, self._wake, self._done),
                name=f"realalloc-finalizers-{self.mheap.id}",
                daemon=True,
            )
            thread.start()
            self._thread = thread
        self._wake.set()

    def set_finalizer(self, heap: Heap, addr: object, fn: object) -> None:
        where = _address(addr, "set_finalizer")
        if fn is not None and not callable(fn):
            raise ArgumentTypeError(
                f"set_finalizer({where:#x}, fn): fn must be callable or None, not "
                f"{type(fn).__name__}"
            )
        heap._inside(self._set_finalizer_inside, where, fn)

    def _set_finalizer_inside(self, where: int, fn: Finalizer | None) -> None:
        self._refuse_buffer(where, "set_finalizer")
        locate(self.mheap, where, "set_finalizer")
        if fn is None:
            self.finalizers.pop(where, None)
        elif where in self.finalizers:
            raise InvalidArgumentError(
                f"set_finalizer({where:#x}): the object has a finalizer already "
                "(set_finalizer(addr, None) removes it)"
            )
        else:
            self.finalizers[where] = fn

    def finalizers_pending(self) -> int:
        """Finalizers queued and not yet finished."""
        return len(self.due)

    # -- roots and pins ------------------------------------------------------------

    def add_root(self, heap: Heap, addr: object, nbytes: object) -> None:
        where = _address(addr, "add_root")
        n = require_int("nbytes", nbytes, 1, _ADDR_MAX + 1 - where)
        heap._inside(self._add_root_inside, where, n)

    def _add_root_inside(self, where: int, n: int) -> None:
        if where in self.roots:
            raise InvalidArgumentError(
                f"add_root({where:#x}, {n}): a root range of {self.roots[where]} bytes starts "
                "there already"
            )
        self.roots[where] = n

    def remove_root(self, heap: Heap, addr: object) -> None:
        where = _address(addr, "remove_root")
        heap._inside(self._remove_root_inside, where)

    def _remove_root_inside(self, where: int) -> None:
        if self.roots.pop(where, None) is None:
            raise InvalidArgumentError(f"remove_root({where:#x}): no root range starts there")

    def pin(self, heap: Heap, addr: object) -> int:
        """Pin the object starting at ``addr``; returns ``addr``."""
        where = _address(addr, "pin")
        return heap._inside(self._pin_inside, where)

    def _pin_inside(self, where: int) -> int:
        self._refuse_buffer(where, "pin")
        locate(self.mheap, where, "pin")
        return self.pin_fresh(where)

    # Pins change in one line each, and their callers record them on the line
    # of the call: an exception raised at a line (realalloc/__init__.py:
    # interruption) leaves a pin made and recorded, or neither.

    def pin_fresh(self, addr: int) -> int:
        """Pin an object just allocated on this thread, inside the heap; returns ``addr``."""
        return _fast.locked(self._pin_lock, self._pin_delta, addr, 1) or addr

    def _pin_delta(self, addr: int, delta: int) -> None:
        """Add ``delta`` to the pins of ``addr`` (under _pin_lock: threads pin
        at once); the last line is the one change."""
        count = self.pins.get(addr, 0) + delta
        self.pins.update({addr: count}) if count > 0 else self.pins.pop(addr, None)

    def unpin(self, heap: Heap, addr: object) -> None:
        where = _address(addr, "unpin")
        heap._inside(self._unpin_inside, where, False)

    def _unpin_inside(self, where: int, quiet: bool) -> None:
        if not self.pins.get(where) and not quiet:
            raise InvalidArgumentError(f"unpin({where:#x}): the object is not pinned")
        if self.pins.get(where):
            _fast.locked(self._pin_lock, self._pin_delta, where, -1)

    def _refuse_buffer(self, where: int, op: str) -> None:
        ref = self.buffers.get(where)
        buf = ref() if ref is not None else None
        if buf is not None and not buf.freed:
            raise InvalidArgumentError(
                f"{op}({where:#x}): the memory of a live Buffer, which keeps its object alive "
                "and frees it when it goes"
            )

    def free_special(self, heap: Heap, addr: int) -> None:
        """free of an object the collector's tables name (inside the heap):
        refused while pinned or queued for finalization; a finalizer set on
        it is dropped (it never runs)."""
        if addr in self.pins:
            raise GCError(
                f"free({addr:#x}): the object is pinned ({self.pins[addr]} pin(s)); unpin it first"
            )
        if any(a == addr for a, _ in list(self.due)):
            raise GCError(
                f"free({addr:#x}): its finalizer is queued to run; the collector frees the "
                "object after that"
            )
        self.finalizers.pop(addr, None)
        _fast.HeapBase.free(heap, addr)

    # -- checks and life cycle ---------------------------------------------------------

    def check(self, heap: Heap) -> None:
        """GC-1..3 (the world is stopped)."""
        last = self.last
        stale = last is not None and last.sweepgen != self.sweepgen
        if self.sweepgen != 2 * self.num_gc or stale:
            raise HeapCorruption(f"GC-1: sweepgen {self.sweepgen} after {self.num_gc} cycles")
        if last is not None and last.spans_swept != last.spans_live:
            raise HeapCorruption(
                f"GC-1: cycle {self.num_gc} swept {last.spans_swept} small-object spans of "
                f"{last.spans_live} live ones"
            )
        if last is not None and (
            last.objects0 != last.nmarked + last.freed
            or (last.heap1, last.objects1) != (last.marked, last.nmarked)
        ):
            raise HeapCorruption(
                f"GC-2: cycle {self.num_gc}: {last.objects0} objects before, {last.nmarked} "
                f"marked ({last.marked} bytes), {last.freed} freed; after it heap_alloc "
                f"{last.heap1}, heap_objects {last.objects1}"
            )
        named = [*self.pins, *self.finalizers, *self.pending, *(a for a, _ in list(self.due))]
        h = self.mheap.h
        for addr in named:
            if not lib.ra_usable_size(h, addr):
                raise HeapCorruption(
                    f"GC-3: pin, finalizer or pending Buffer at {addr:#x}: no live object there"
                )

    def close(self) -> None:
        """The heap closes: the finalizer thread ends; queued finalizers never run."""
        self._done[0] = True
        self._wake.set()
        self.due.clear()
        self.finalizers.clear()
        self.pins.clear()
        self.roots.clear()
        self.buffers.clear()
        self.pending.clear()

    def memstats(self) -> dict[str, Any]:
        """The MemStats fields of the collector."""
        elapsed = max(1, time.monotonic_ns() - self.started)
        return {
            "num_gc": self.num_gc,
            "num_forced_gc": self.num_forced_gc,
            "next_gc": self.goal,
            "last_gc": self.last_gc,
            "pause_total_ns": self.pause_total_ns,
            "pause_ns": tuple(self.pause_ns),
            "gc_cpu_fraction": self.pause_total_ns / elapsed,
        }


# -- gctrace ---------------------------------------------------------------------------


def _itoa_div(val: int, dec: int) -> str:
    """``val`` with ``dec`` decimals (Go: itoaDiv)."""
    if dec == 0:
        return str(val)
    digits = str(val).rjust(dec + 1, "0")
    return f"{digits[:-dec]}.{digits[-dec:]}"


def _ms(ns: int) -> str:
    """Nanoseconds as milliseconds, two significant digits (Go: fmtNSAsMS)."""
    if ns >= 10_000_000:
        return str(ns // 1_000_000)
    x, dec = ns // 1000, 3
    if x == 0:
        return "0"
    while x >= 100:
        x, dec = x // 10, dec - 1
    return _itoa_div(x, dec)


def trace_line(gc: Collector) -> str:
    """Go's gctrace line for the last cycle::

        gc N @Ts P%: a+b+c ms clock, a+0/b/0+c ms cpu, H0->H1->H2 MB, G MB goal,
        0 MB stacks, R MB globals, 1 P [(forced)]

    T: seconds since the heap was made (Go: since the program started).
    P: gc_cpu_fraction in percent.  a, b, c: the pause's phases, flushing
    the thread caches (Go: sweep termination), marking (Go: the concurrent
    mark) and sweeping (Go: mark termination; Go sweeps later).  cpu: the
    same times (one thread works, the world is stopped): no assist, no idle
    marking, all of the mark "background".  H0 = H1: heap_alloc at the start
    (nothing is allocated during a stop-the-world mark); H2: bytes marked.
    G: the goal in force.  No stacks; root ranges stand for Go's globals.
    """
    last = gc.last
    assert last is not None
    a, b, c = (_ms(ns) for ns in last.ns)
    since = (last.start - gc.started) // 1_000_000
    util = int(gc.pause_total_ns * 100 / max(1, last.start + last.pause - gc.started))
    mb = 1 << 20
    line = (
        f"gc {gc.num_gc} @{_itoa_div(since, 3)}s {util}%: {a}+{b}+{c} ms clock, "
        f"{a}+0/{b}/0+{c} ms cpu, {last.heap0 // mb}->{last.heap0 // mb}->{last.marked // mb} MB, "
        f"{last.goal // mb if last.goal != _NO_GOAL else 0} MB goal, 0 MB stacks, "
        f"{last.roots // mb} MB globals, 1 P"
    )
    return line + (" (forced)" if last.forced else "")


# -- Pinner ----------------------------------------------------------------------------


class Pinner:
    """Pins objects of one collected heap until ``unpin`` (Go: runtime.Pinner).

    ``pin(addr)`` pins the object starting at ``addr``; ``malloc(size,
    scan=..., zero=...)`` allocates and pins in one step inside the heap, so
    no cycle can fall between (the safe way to allocate on several threads);
    ``unpin()`` unpins everything this Pinner pinned.  As a context manager
    it unpins on exit.  Not for use by several threads at once.
    """

    __slots__ = ("__weakref__", "_heap", "_pinned")

    def __init__(self, heap: Heap) -> None:
        self._heap = heap
        self._pinned: list[int] = []

    @property
    def pinned(self) -> tuple[int, ...]:
        """Addresses this Pinner holds pinned, oldest first."""
        return tuple(self._pinned)

    def pin(self, addr: int) -> int:
        """Pin the object starting at ``addr``; returns ``addr``."""
        gc = self._heap._collector("Pinner.pin")
        self._pinned.append(gc.pin(self._heap, addr))
        return addr

    def malloc(self, size: int, *, scan: bool = False, zero: bool | None = None) -> int:
        """``heap.malloc(size, scan=scan, zero=zero)`` pinned (``zero``: the
        heap's default when None)."""
        heap = self._heap
        heap._collector("Pinner.malloc")
        kwargs: dict[str, bool] = {"scan": scan} if zero is None else {"scan": scan, "zero": zero}
        return heap._inside(self._malloc_inside, size, kwargs)

    def _malloc_inside(self, size: int, kwargs: dict[str, bool]) -> int:
        gc = self._heap._collector("Pinner.malloc")
        # One line: pinned and recorded together, before any cycle can run.
        self._pinned.append(gc.pin_fresh(self._heap.malloc(size, **kwargs)))
        return self._pinned[-1]

    def unpin(self) -> None:
        """Unpin every object this Pinner pinned (a pin undone meanwhile by
        ``heap.unpin`` is skipped)."""
        if self._pinned:
            gc = self._heap._collector("Pinner.unpin")
            self._heap._inside(self._unpin_inside, gc)

    def _unpin_inside(self, gc: Collector) -> None:
        while self._pinned:  # unpinned, then forgotten, on one line
            gc._unpin_inside(self._pinned[-1], True) or self._pinned.pop()  # type: ignore[func-returns-value]

    def __enter__(self) -> Pinner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unpin()

    def __repr__(self) -> str:
        return f"<realalloc.Pinner of {len(self._pinned)} object(s)>"
