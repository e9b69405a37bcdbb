"""The background scavenger (Go: runtime/mgcscavenge.go, bgscavenge).

See realalloc/__init__.py for an overview of the allocator.

Free pages stay resident after their objects are freed, so a heap that
shrinks keeps its RSS.  One daemon thread per heap gives them back to the OS
(MADV_DONTNEED) while the resident free pages exceed ``RETAIN_EXTRA_PERCENT``
of the in-use pages (Go's retainExtraPercent), in steps of at most
``STEP_BYTES`` and within a CPU budget: after a step that took *t* seconds
it sleeps *t / BUDGET - t*, so releasing uses at most ``BUDGET`` of one core
(Go aims at 1%).  Each step first sweeps (``Heap.reclaim``) so that emptied
spans' pages count as free; that is deferred allocator work, like Go's
background sweeper, and is not charged to the budget.  With nothing to do it
checks every ``IDLE_SECONDS``.

``Heap.scavenge`` is the explicit, synchronous form.

Life cycle: the thread starts when the heap first maps memory, so an unused
heap (the default one) costs no thread.  It holds only a weak reference to
its heap between steps, so an unreferenced heap can still be collected.
``stop`` ends it and waits for the step in progress, except on its own
thread and during interpreter finalization, where waiting could hang
(realalloc/core/lifecycle.py).  In a forked child the thread does not
exist: ``forget`` drops it and the next ``start`` makes a new one.

Locking: a step runs inside the heap (``heap._inside``: close waits for it)
and takes ``MHeap.lock`` through ``MHeap.scavenge_excess``.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Final

from ..errors import HeapClosedError, ReentrancyError, ShimError

if TYPE_CHECKING:
    from .heap import Heap

__all__ = ["BUDGET", "RETAIN_EXTRA_PERCENT", "BackgroundScavenger"]

RETAIN_EXTRA_PERCENT: Final = 10
STEP_BYTES: Final = 4 << 20
BUDGET: Final = 0.01
IDLE_SECONDS: Final = 0.1


class BackgroundScavenger:
    """A daemon thread releasing one heap's excess free pages."""

    __slots__ = ("_heap", "_stop", "_thread", "failures", "released")

    def __init__(self, heap: Heap) -> None:
        self._heap = weakref.ref(heap)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.released = 0  # bytes released so far
        self.failures = 0  # steps the OS refused

    def start(self) -> None:
        """Start the thread unless it runs or was stopped."""
        if self._stop.is_set() or (self._thread is not None and self._thread.is_alive()):
            return
        thread = threading.Thread(target=self._run, name="realalloc-scavenger", daemon=True)
        self._thread = thread
        thread.start()

    def forget(self) -> None:
        """Drop the thread object of a parent process (in a forked child)."""
        self._thread = None

    def _run(self) -> None:
        pause = IDLE_SECONDS
        while not self._stop.wait(pause):
            heap = self._heap()
            if heap is None or heap.closed:
                return
            released, spent = 0, 0.0
            try:
                released, spent = heap._inside(_step, heap)
            except (ShimError, ReentrancyError):
                # The OS refused: the pages stay resident and counted as such;
                # try again after a pause.
                self.failures += 1
            except HeapClosedError:
                return
            del heap
            self.released += released
            pause = max(spent / BUDGET - spent, 0.001) if released else IDLE_SECONDS

    def stop(self) -> None:
        """End the thread; wait for a step in progress where that is safe."""
        self._stop.set()
        thread = self._thread
        if (
            thread is not None
            and thread.is_alive()
            and thread is not threading.current_thread()
            and not sys.is_finalizing()
        ):
            thread.join(timeout=10)


def _step(heap: Heap) -> tuple[int, float]:
    """One step, inside the heap: bytes released and seconds spent."""
    # Sweeping is the heap's own deferred work (Go's background sweeper), not
    # scavenging: it does not count against the budget.
    heap.central.reclaim()  # emptied spans back to MHeap: their pages are free
    start = time.perf_counter()
    released = heap.mheap.scavenge_excess(RETAIN_EXTRA_PERCENT, STEP_BYTES)
    return released, time.perf_counter() - start
