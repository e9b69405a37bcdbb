"""The object allocator's public face (Go: runtime/malloc.go, mallocgc).

See realalloc/__init__.py for an overview of the allocator.

``Heap`` ties the layers together.  ``malloc``, ``free`` and ``alloc`` are C
methods inherited from ``realalloc._fast.HeapBase`` (csrc/fastpath.c): a call
that finds room in this thread's cache, or in its span class's central
lists, runs no Python.  Everything else lands in the slow paths declared in
realalloc/_fast.pyi and defined here:

* ``_malloc_slow``: argument errors, large objects (> 32 KiB, their own span
  of class 0/1 from MHeap) that no kept span of their page count serves, the
  first allocation of a thread (it creates the thread's MCache), and any
  call that found the heap stopped;
* ``_grow_central``: a span class has no span with room: bring a batch;
* ``_free_slow``: every address C could not free, diagnosed into the
  specific error (realalloc/core/locate.py).

Objects by size (Go's three kinds)::

    noscan and size < 16   tiny: a piece of this thread's 16-byte block
    size <= 32 KiB         small: a slot of the cached span of its class
    size > 32 KiB          large: whole pages, page aligned

Tiny blocks with explicit free: a block goes back as a 16-byte slot once
every piece in it is freed and the thread has moved on to a new block.
``usable_size`` of a tiny piece is its own extent, not Go's roundupsize.

Life cycle: ``close`` stops the world (other threads finish their calls
into the heap, later ones raise HeapClosedError), refuses while a Buffer is
exported, then unmaps everything.  ``check`` also runs with the world
stopped, so it is exact while other threads use the heap.  fork and exit:
realalloc/core/lifecycle.py.

Invariants: those of every layer, checked by ``check`` (HEAP-*, SPAN-*,
FIX-*, CENTRAL-*, CACHE-*, PAGE-*, STATS-*, OS-*).

Locking: the fast path and the central hand-off take only C locks, each
inside one C call.  Python methods that touch heap memory run inside the
heap (``self._inside(fn, ...)``); the page heap takes ``MHeap.lock``.

Interruption and re-entry (realalloc/__init__.py): ``_inside`` and
``_alone`` are C around a Python call, so no exception can skip the exit;
tests/test_interruption.py injects exceptions and re-entrant calls at
random lines.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

from .. import _fast
from .._debug import HeapLock
from .._version import __version__
from ..errors import (
    ArgumentTypeError,
    BufferFreedError,
    DoubleFreeError,
    ForeignPointerError,
    GCError,
    HeapClosedError,
    HeapCorruption,
    OutOfMemoryError,
    ReentrancyError,
    require_int,
)
from .cache import MCache
from .central import CentralPolicy
from .lifecycle import register_heap, unregister_heap
from .locate import locate
from .mgc import Collector, Pinner
from .mheap import MAX_PAGES, MHeap
from .osmem import ffi, lib
from .rss import rss, uss
from .scavenger import BackgroundScavenger
from .sizeclasses import (
    CLASS_TO_NPAGES,
    CLASS_TO_SIZE,
    MAX_SMALL_SIZE,
    PAGE_SIZE,
    TINY_SIZE,
    TINY_SPAN_CLASS,
    tiny_align,
)
from .span import SpanInfo, SpanState, tiny_states
from .stats import HEAP_BYTES, MCACHE_BYTES, MemoryReport, MemStats, collect

__all__ = ["MAX_HEAPS", "Buffer", "Heap"]

Buffer = _fast.Buffer
T = TypeVar("T")
_fast.set_errors(HeapClosedError, ReentrancyError, BufferFreedError, ArgumentTypeError)
if __version__ != _fast.VERSION:  # pragma: no cover - depends on the build
    raise ImportError(
        f"realalloc._fast was built for realalloc {_fast.VERSION}, not {__version__}; "
        "rebuild with `pip install .`"
    )

MAX_HEAPS: Final[int] = lib.RA_MAX_HEAPS
"""Heaps open at once in one process (each has a slot in every thread's table)."""
_OK: Final = lib.RA_OK
_ADDR_MAX: Final = (1 << 64) - 1
_gens = itertools.count(1)
_slots_lock = threading.RLock()  # re-entrant: see realalloc/_debug.py (finalizers)


def _new_slots_lock() -> None:
    """In a forked child: the thread that held the slot lock at the fork (in
    Heap() or close()) is not there, so the lock would stay held for good.
    At worst that thread's slot is lost to the child."""
    global _slots_lock
    _slots_lock = threading.RLock()


os.register_at_fork(after_in_child=_new_slots_lock)
_free_slots = list(range(MAX_HEAPS - 1, -1, -1))


def _take_slot() -> int:
    if not _free_slots:
        raise OutOfMemoryError(
            f"{MAX_HEAPS} heaps are open already (the most a process can have at once); "
            "close one first"
        )
    return _free_slots.pop()


def _return_slot(heap: Heap) -> None:
    """Give the heap's slot back, once.  Taken from the heap in one statement,
    so an interruption can only lose the slot, never hand it out twice."""
    slot, heap._slot = heap.__dict__.get("_slot"), None
    if slot is not None:
        _free_slots.append(slot)


def _address(addr: object, op: str) -> int:
    """An object's address: an int (subclasses too); any int out of the 64-bit
    range is simply not an address of this heap."""
    if isinstance(addr, bool) or not isinstance(addr, int):
        raise ArgumentTypeError(f"{op}: address must be an int, not {type(addr).__name__}")
    if not 0 <= addr <= _ADDR_MAX:
        raise ForeignPointerError(f"{op}({int(addr):#x}): not an address of this heap")
    return int(addr)


def _malloc_arguments(
    args: tuple[object, ...], kwargs: dict[str, object], zero: bool
) -> tuple[int, bool, bool]:
    """(size, scan, zero) of a malloc call (``zero``: the heap's default), or
    the error that says what is wrong."""
    if len(args) != 1 or not set(kwargs) <= {"scan", "zero"}:
        raise ArgumentTypeError(
            "malloc() takes the size (positional) and the keywords scan= and zero=, "
            f"got {len(args)} positional and {sorted(kwargs)}"
        )
    size = require_int("size", args[0])
    flags = []
    for name, default in (("scan", False), ("zero", zero)):
        flag = kwargs.get(name, default)
        if not isinstance(flag, bool):
            raise ArgumentTypeError(f"{name} must be a bool, not {type(flag).__name__}")
        flags.append(flag)
    return size, flags[0], flags[1]


class Heap(_fast.HeapBase):
    """A Go-style heap over real memory.

    ``malloc(size, *, scan=False, zero=True) -> int``, ``free(addr)`` and
    ``alloc(size, ...) -> Buffer`` are the fast path (C).  ``with Heap() as
    heap:`` closes it on exit; ``close()`` unmaps everything.

    ``zero`` is the default of malloc's ``zero=``: ``Heap(zero=False)``
    hands out memory as C's malloc does (not cleared), ``Heap()`` as calloc.
    ``background_scavenger`` runs the thread that gives free pages back to
    the OS (realalloc/core/scavenger.py).

    ``python_mallocs`` counts the malloc calls (and allocs) that ran Python
    code, a slow path; the rest ran in C alone.  Counted without a lock:
    exact on one thread, close on many.

    ``gc=True`` makes a collected heap (Go's garbage collector; an instance
    of a subclass whose ``free``, ``alloc`` and ``realloc`` know the
    collector's tables): objects nothing reaches are freed by ``collect()``
    and by automatic cycles.  **A fresh object is reached by nothing**: link
    it, or allocate it with ``pinner().malloc``, before the next allocation.
    The contract, the cycle and the pacer: realalloc/core/mgc.py.  The
    collector's methods (``collect``, ``set_gc_percent``, ``add_root``,
    ``remove_root``, ``pin``, ``unpin``, ``pinner``, ``set_finalizer``)
    raise GCError on a heap made without one.
    """

    python_mallocs: int

    def __new__(cls, *args: object, gc: object = False, **kwargs: object) -> Heap:
        # gc=True: the subclass whose free/alloc/realloc know the collector.
        return super().__new__(_CollectedHeap if gc is True and cls is Heap else cls)

    def __init__(
        self, *, zero: bool = True, background_scavenger: bool = True, gc: bool = False
    ) -> None:
        for name, flag in (
            ("zero", zero),
            ("background_scavenger", background_scavenger),
            ("gc", gc),
        ):
            if not isinstance(flag, bool):
                raise ArgumentTypeError(f"{name} must be a bool, not {type(flag).__name__}")
        if gc and not isinstance(self, _CollectedHeap):
            raise ArgumentTypeError(f"{type(self).__name__} cannot be made with gc=True")
        self._zero = zero
        self.python_mallocs = 0
        # Held by the thread that runs check(), with the world stopped: a call
        # from a finalizer or signal handler in the middle of it must not
        # change what the check is reading (see _refuse_during_check).  First,
        # so that the close of a Heap() cut short finds it.
        self._checking = HeapLock("Heap.check")
        self._frees_after_check: list[int] = []
        self._slot: int | None = _fast.locked(_slots_lock, _take_slot)
        try:
            self.mheap = MHeap()
        except BaseException:
            self._give_slot()
            raise
        self.c: Any = self.mheap.h
        self.c.gen = next(_gens)
        self.c.slot = self._slot
        self.central = CentralPolicy(self.c)
        self._gc = Collector(self.mheap, os.environ.get("REALALLOC_GCTRACE") == "1") if gc else None
        self._local = threading.local()
        self._caches: weakref.WeakSet[MCache] = weakref.WeakSet()
        self._baseline_rss = rss()
        self.mheap.extra_metadata = self._cache_metadata
        self._scavenger = BackgroundScavenger(self) if background_scavenger else None
        if self._scavenger is not None:
            self.mheap.on_grow = self._scavenger.start
        self._attach(int(ffi.cast("uintptr_t", self.c)), zero)
        register_heap(self)

    @property
    def closed(self) -> bool:
        """True once ``close`` has begun; every method then raises HeapClosedError."""
        return bool(self.c.stopped & _fast.CLOSED)

    def __enter__(self) -> Heap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if sys.is_finalizing():
            return  # see realalloc/core/lifecycle.py: exit
        if "c" not in self.__dict__:
            self._give_slot()  # __init__ was cut short
            return
        self.close()

    # -- slow paths called by the C fast path (declared in realalloc/_fast.pyi) --

    def _malloc_slow(self, *args: object, **kwargs: object) -> int:
        """malloc when the fast path could not: see the module docstring."""
        self._refuse_during_check("malloc")
        size, scan, zero = _malloc_arguments(args, kwargs, self._zero)
        if size > MAX_SMALL_SIZE:
            self.python_mallocs += 1
            npages = -(-size // PAGE_SIZE)
            if npages > MAX_PAGES:
                raise OutOfMemoryError(f"malloc({size:#x}): larger than the address space")
            if self._gc is not None:
                self._gc.poll(self)  # a safe point: no lock held, nothing half made
            span = self._limited(
                self.mheap.alloc_span,
                npages,
                SpanState.IN_USE,
                int(not scan),
                zero=zero,
                what=f"malloc({size})",
            )
            return span.base
        # A small object: with this thread's cache in place the fast path can
        # serve it; inside the heap now, it does even while a stop waits.
        self._my_cache()
        counted = self.python_mallocs
        addr = self.malloc(size, scan=scan, zero=zero)
        if self.python_mallocs == counted:  # _grow_central did not count this call
            self.python_mallocs += 1
        return addr

    def _grow_central(self, spc: int) -> None:
        """Span class ``spc`` has no span with room: bring a batch (called by
        the fast path's refill)."""
        self.python_mallocs += 1
        if self._scavenger is not None:
            self._scavenger.start()  # a no-op unless a fork or a first growth needs it
        # A safe point: a cycle that left the class room needs no batch.
        if self._gc is not None and self._gc.poll(self) and self.central.has_room(spc):
            return
        what = f"malloc of a {CLASS_TO_SIZE[spc >> 1]}-byte object"
        nspans = self.central.batch_for(spc)
        if self._gc is not None:  # no further than the goal: the pacer looks again there
            nspans = self._gc.clip(self, nspans, CLASS_TO_NPAGES[spc >> 1] * PAGE_SIZE)
        self._limited(self.mheap.grow_central, spc, nspans, what)

    def _limited(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs); in a collected heap whose memory limit refused
        it, collect (MHeap.lock is released by then) and try once more."""
        try:
            return fn(*args, **kwargs)
        except OutOfMemoryError:
            if self._gc is None or self.mheap.memory_limit is None:
                raise
            if not self._gc.collect_for_limit(self):
                raise
        return fn(*args, **kwargs)

    def _free_slow(self, addr: object) -> None:
        """free of an address the fast path refused: free it if it can be
        freed now (the heap was stopped), else raise the specific error."""
        where = _address(addr, "free")
        if self._checking.held():
            return self._free_after_check(where)
        cache = getattr(self._local, "cache", None)
        if lib.ra_heap_free(self.c, where, cache.c if cache is not None else ffi.NULL) == _OK:
            return
        locate(self.mheap, where, "free")  # raises what is wrong with it
        raise DoubleFreeError(f"free({where:#x}): another thread freed the object meanwhile")

    # -- the rest of the public API ----------------------------------------

    def realloc(self, addr: int, size: int) -> int:
        """Resize the object at ``addr``; keeps its contents up to the smaller
        size.  Stays in place while the size class (or page count) still fits."""
        where = _address(addr, "realloc")
        size = require_int("size", size)
        obj = self._inside(locate, self.mheap, where, "realloc")
        c = obj.span.c
        noscan = bool(c.spanclass & 1)
        spc = lib.ra_span_class_for(size, noscan)  # the fast path's own rule
        if obj.piece >= 0:  # the piece must also be aligned as Go aligns that size
            fits = spc == c.spanclass and size <= obj.extent and where % tiny_align(size) == 0
        else:
            fits = spc == c.spanclass and (spc >= 2 or -(-size // PAGE_SIZE) == c.npages)
        if fits:
            return where
        new = self.malloc(size, scan=not noscan)
        try:
            ffi.memmove(ffi.cast("char *", new), ffi.cast("char *", where), min(size, obj.extent))
        except BaseException:
            self.free(new)  # interrupted: the old object stays
            raise
        # One line, so no line of ours runs between the free and the return
        # (interrupted there, the caller would own neither object).  free
        # returns None.
        return self.free(where) or new  # type: ignore[func-returns-value]

    def usable_size(self, addr: int) -> int:
        """Bytes usable at ``addr``: Go's roundupsize of the request for small
        and large objects; a tiny piece's own extent."""
        where = _address(addr, "usable_size")
        return self._inside(locate, self.mheap, where, "usable_size").extent

    def span_of(self, addr: int) -> SpanInfo | None:
        """The span holding ``addr``, or None when it is not in a live span."""
        where = require_int("addr", addr, 0, _ADDR_MAX)
        span = self._inside(self.mheap.span_of, where)
        return None if span is None else span.info()

    def stats(self) -> MemStats:
        """Go's runtime.MemStats for this heap, from counters (no heap walk).
        Read under MHeap.lock, so the page numbers are of one moment: a growth
        on another thread maps an arena before its pages count as released,
        and in between heap_idle - heap_released would be 64 MiB too high."""
        st: MemStats = self._inside(self.mheap.lock.run, collect, self.mheap, self._gc)
        return st

    # -- garbage collection (realalloc/core/mgc.py) --------------------------

    @property
    def gc(self) -> bool:
        """True for a collected heap (``Heap(gc=True)``)."""
        return self._gc is not None

    def _collector(self, op: str) -> Collector:
        if self.closed:  # as every method of a closed heap, collected or not
            raise HeapClosedError(f"{op}: the heap is closed")
        gc = self._gc
        if gc is None:
            raise GCError(f"{op}: this heap has no garbage collector (make it with Heap(gc=True))")
        return gc

    def collect(self) -> None:
        """Run a full collection now (Go: runtime.GC), with the world stopped:
        other threads finish their calls into the heap and wait.  From inside
        a heap call (a signal handler): ReentrancyError."""
        gc = self._collector("collect")
        self._alone(gc.cycle, self, True)

    def set_gc_percent(self, percent: int) -> int:
        """Set GOGC (Go: debug.SetGCPercent); return the old value.  The next
        cycle starts when heap_alloc reaches marked * (1 + percent/100) (at
        least 4 MiB * percent/100); a negative percent turns automatic cycles
        off (stored as -1)."""
        return self._collector("set_gc_percent").set_percent(percent)

    def add_root(self, addr: int, nbytes: int) -> None:
        """Scan [addr, addr + nbytes) in every cycle (Go: a global variable):
        every aligned word pointing into an object keeps it.  The memory must
        stay readable until ``remove_root``; one range per start address."""
        self._collector("add_root").add_root(self, addr, nbytes)

    def remove_root(self, addr: int) -> None:
        """Stop scanning the root range that starts at ``addr``."""
        self._collector("remove_root").remove_root(self, addr)

    def pin(self, addr: int) -> None:
        """Keep the object starting at ``addr`` (and, if scan, what it reaches)
        alive until as many ``unpin`` calls (Go: runtime.Pinner.Pin)."""
        self._collector("pin").pin(self, addr)

    def unpin(self, addr: int) -> None:
        """Undo one ``pin`` of the object starting at ``addr``."""
        self._collector("unpin").unpin(self, addr)

    def pinner(self) -> Pinner:
        """A Pinner (Go: runtime.Pinner): pins objects, allocates pinned
        objects (``Pinner.malloc``), unpins them all at once or on ``with`` exit."""
        self._collector("pinner")
        return Pinner(self)

    def set_finalizer(self, addr: int, fn: Callable[[int], object] | None) -> None:
        """Run ``fn(addr)`` once, on the heap's finalizer thread, after a cycle
        found the object starting at ``addr`` unreachable (Go:
        runtime.SetFinalizer); it and what it reaches live through that cycle.
        None removes the finalizer.  ``free`` of the object drops it."""
        self._collector("set_finalizer").set_finalizer(self, addr, fn)

    def spans(self) -> Iterator[SpanInfo]:
        """Every live span, walked now (a full picture; stats() is the cheap one)."""
        return iter(self._inside(lambda: [span.info() for span in self.mheap.live_spans()]))

    def memory_report(self) -> MemoryReport:
        """The allocator's view of its memory beside the OS's (RSS, USS)."""
        st = self.stats()
        return MemoryReport(
            in_use=st.heap_alloc + st.manual_inuse,
            free_in_spans=st.heap_inuse - st.heap_alloc,
            free_resident=st.heap_idle - st.heap_released,
            released=st.heap_released,
            metadata=st.metadata,
            mapped=st.mapped,
            rss=rss(),
            uss=uss(),
            baseline_rss=self._baseline_rss,
        )

    def scavenge(self, nbytes: int | None = None) -> int:
        """Give free pages back to the OS (MADV_DONTNEED), highest addresses
        first: up to ``nbytes``, or all when None (Go: debug.FreeOSMemory),
        then also this thread's cached spans and unused metadata.  Returns the
        bytes of pages released; they count in ``heap_released``."""
        if nbytes is not None:
            require_int("nbytes", nbytes)
        return self._inside(self._scavenge_inside, nbytes)

    def _scavenge_inside(self, nbytes: int | None) -> int:
        self._refuse_during_check("scavenge")
        if nbytes is None:
            cache: MCache | None = getattr(self._local, "cache", None)
            if cache is not None:
                cache.release()
        self.central.reclaim()
        return self.mheap.scavenge(nbytes)

    def reclaim(self) -> None:
        """Sweep every class's pending frees and return empty spans to MHeap."""
        self._refuse_during_check("reclaim")
        self._inside(self.central.reclaim)

    def set_memory_limit(self, nbytes: int | None) -> None:
        """Cap the memory this heap keeps resident (Go: GOMEMLIMIT, but hard):
        heap pages not released to the OS, plus metadata.  An allocation that
        would pass it first releases free pages; if that is not enough it
        raises OutOfMemoryError and no object changes (free pages it released
        stay released).  None removes the limit.  See realalloc/core/limit.py."""
        if nbytes is not None:
            require_int("nbytes", nbytes)
        self._inside(setattr, self.mheap, "memory_limit", nbytes)

    def cffi_allocator(self, ffi: Any, *, zero: bool = True) -> Any:
        """``ffi.new_allocator`` over this heap: objects that ``ffi.new`` makes
        through it live in realalloc memory (zeroed unless ``zero=False``) and
        go back to the heap when cffi frees them."""
        if not isinstance(zero, bool):
            raise ArgumentTypeError(f"zero must be a bool, not {type(zero).__name__}")
        if self.closed:  # as every method of a closed heap (its allocations would refuse)
            raise HeapClosedError("the heap is closed")
        new_allocator = getattr(ffi, "new_allocator", None)
        if new_allocator is None:
            raise ArgumentTypeError(f"ffi must be a cffi FFI, not {type(ffi).__name__}")
        malloc, free, gc = self.malloc, self.free, self._gc

        def alloc(size: int) -> Any:
            if gc is not None:  # cffi holds the object: pinned until it frees it
                return ffi.cast("void *", self._inside(pinned, size))
            return ffi.cast("void *", malloc(size, zero=zero))

        def pinned(size: int) -> int:
            assert gc is not None
            return gc.pin_fresh(malloc(size, zero=zero))

        def release(ptr: Any) -> None:
            addr = int(ffi.cast("uintptr_t", ptr))
            if gc is not None:
                self._inside(unpin_and_free, addr)
            else:
                free(addr)

        def unpin_and_free(addr: int) -> None:
            assert gc is not None
            gc._unpin_inside(addr, True)
            gc.free_special(self, addr)

        # should_clear_after_alloc=False: realalloc zeroes (or not) itself.
        return new_allocator(alloc, release, should_clear_after_alloc=False)

    def map_png(self, path: str | os.PathLike[str]) -> None:
        """Draw every page of this heap, coloured by state, OS residency marked,
        into the PNG ``path`` (needs matplotlib: ``realalloc[plot]``).  See
        realalloc/tools/heapmap.py."""
        # The picture is a tool on top of the allocator: imported when drawn,
        # so the allocator never depends on it (or on matplotlib).
        from ..tools.heapmap import map_png

        map_png(self, path)

    def metadata_bytes(self) -> int:
        """C memory held for allocator metadata (arenas, spans, bitmaps, caches)."""
        return self._inside(lambda: self.mheap.metadata().total + self._cache_metadata())

    def check(self) -> None:
        """Verify every invariant of every layer; raise HeapCorruption naming
        the broken one.  Stops the world while it runs, so it is exact while
        other threads use the heap (they wait).

        A finalizer or signal handler that calls in while it runs on this
        thread cannot change the heap under it: malloc, scavenge, reclaim,
        close and check raise ReentrancyError; a free is diagnosed at once
        and done when the check is (frees always work: a collected Buffer
        frees its object)."""
        self._refuse_during_check("check")
        self._alone(self._checking.run, self._check_stopped)
        while self._frees_after_check:
            self.free(self._frees_after_check.pop())

    def close(self) -> None:
        """Unmap all memory.  Idempotent.  BufferError while a Buffer is
        exported; other threads' calls in progress finish first, later ones
        raise HeapClosedError."""
        self._refuse_during_check("close")
        if not self.closed:
            with contextlib.suppress(HeapClosedError):  # another thread closed it meanwhile
                self._alone(self._close_alone)
        self._teardown()

    # -- helpers ----------------------------------------------------------

    def _refuse_during_check(self, op: str) -> None:
        """ReentrancyError when check() runs on this thread: the call came
        from a finalizer or signal handler in the middle of it (the world is
        stopped, so no other thread gets this far)."""
        if self._checking.held():
            raise ReentrancyError(
                f"{op}: called while check() runs on this thread (from a finalizer or "
                "signal handler); it would change the heap under the check"
            )

    def _free_after_check(self, where: int) -> None:
        """free while check() runs on this thread: the error now if ``where``
        is not a live object, else the free itself when the check is done."""
        locate(self.mheap, where, "free")
        if where in self._frees_after_check:
            raise DoubleFreeError(f"free({where:#x}): already freed (done after check())")
        self._frees_after_check.append(where)

    def _close_alone(self) -> None:
        if not self.closed:
            self._close_buffers()  # BufferError, else the heap is closed now

    def _teardown(self) -> None:
        """After close: each step may run again, so an interrupted close finishes later."""
        self._stop_scavenger()
        if self._gc is not None:
            self._gc.close()
        self.mheap.close()
        self._give_slot()
        unregister_heap(self)

    def _give_slot(self) -> None:
        _fast.locked(_slots_lock, _return_slot, self)

    def _stop_scavenger(self) -> None:
        if self._scavenger is not None:
            self._scavenger.stop()

    def _after_fork_child(self) -> None:
        """In a forked child, with the world stopped: the other threads are
        gone; give their cached spans and counters back."""
        mine = getattr(self._local, "cache", None)
        c = self.c.caches
        while c:
            after = c.next
            if mine is None or c != mine.c:
                lib.ra_cache_release(self.c, c, 1)
            c = after
        if self._scavenger is not None:
            self._scavenger.forget()

    def _my_cache(self) -> MCache:
        cache: MCache | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = MCache(self)
            self._local.cache = cache
            self._caches.add(cache)
        # Every time: an interruption before this line leaves the C side unset.
        self._set_cache(cache.address)
        return cache

    def _cache_metadata(self) -> int:
        """Metadata MHeap does not hold: thread caches and the heap record."""
        return len(self._caches) * MCACHE_BYTES + HEAP_BYTES

    def _check_stopped(self) -> None:
        """check() with the world stopped."""
        self.mheap.check()
        cached: set[int] = set()
        for cache in list(self._caches):
            c = cache.c
            if c.released:
                continue
            for spc in range(len(c.alloc)):
                s = c.alloc[spc]
                if s == self.mheap.empty_span:
                    continue
                if s.spanclass != spc or not s.cached or int(s.id) in cached:
                    raise HeapCorruption(
                        f"CACHE-1: cached span {int(s.id)} is not of class {spc}, not marked "
                        "cached, or cached twice"
                    )
                cached.add(int(s.id))
            if c.tiny:
                s = c.tiny_span
                slot = (int(c.tiny) - int(s.base)) // TINY_SIZE
                if s.spanclass != TINY_SPAN_CLASS or not tiny_states(s)[slot] & lib.RA_TINY_HELD:
                    raise HeapCorruption(f"CACHE-2: tiny block {int(c.tiny):#x} is not held")
        listed = self.central.check(cached)
        small = [s for s in self.mheap.live_spans() if s.c.spanclass >= 2]
        if len(small) != listed + len(cached):
            raise HeapCorruption(
                f"CENTRAL-1: {len(small)} object spans, {listed} on central lists, "
                f"{len(cached)} cached"
            )
        if self._gc is not None:
            self._gc.check(self)
        # collect, not stats(): entering the heap again would let a signal
        # handler's malloc take the fast path (a thread inside the heap does
        # even while it is stopped) and change the counters under the check.
        st = collect(self.mheap, self._gc)
        st.check()
        live = sum(int(s.c.alloc_count) - int(s.c.nfreed) for s in small)
        counted = sum(c.mallocs - c.frees for c in st.by_size)
        if live != counted:
            raise HeapCorruption(f"STATS-3: {live} live small objects, counters say {counted}")


_BASE_FREE: Final = _fast.HeapBase.free
_BASE_ALLOC: Final = _fast.HeapBase.alloc


class _CollectedHeap(Heap):
    """``Heap(gc=True)``: ``free``, ``alloc`` and ``realloc`` also keep the
    collector's tables right (realalloc/core/mgc.py)."""

    _gc: Collector

    def free(self, addr: int) -> None:
        """free(addr): as Heap.free; GCError for a pinned object (or one whose
        finalizer is queued); a finalizer set on the object is dropped."""
        gc = self._gc
        if type(addr) is int and (addr in gc.pins or addr in gc.finalizers or gc.due):
            self._inside(gc.free_special, self, addr)
        else:
            _BASE_FREE(self, addr)

    def alloc(self, *args: Any, **kwargs: Any) -> Buffer:
        """alloc(size, *, scan=False, zero=True) -> Buffer; a root while it lives."""
        return self._inside(self._alloc_rooted, args, kwargs)

    def _alloc_rooted(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Buffer:
        buf: Buffer = _BASE_ALLOC(self, *args, **kwargs)
        self._gc.register_buffer(self, buf)
        return buf

    def _free_slow(self, addr: object) -> None:
        """As Heap._free_slow; then a Buffer's free that waited for a stop is done."""
        super()._free_slow(addr)
        if type(addr) is int:
            self._gc.freed(addr)

    def realloc(self, addr: int, size: int) -> int:
        """As Heap.realloc, inside the heap from start to end, so no cycle
        frees the new object before the contents are copied.  The object at
        ``addr`` must be reachable (its own malloc may collect); the new one
        is as fresh as malloc's: link it before the next allocation."""
        return self._inside(super().realloc, addr, size)
