"""Debug level, the heap lock with its re-entry check, and the lock order.

See realalloc/__init__.py for an overview of the allocator.

``REALALLOC_DEBUG`` (read once at import) grades the checks by cost, as
mimalloc's MI_DEBUG does:

  0  no internal checks (the default; benchmarks).  Bad pointers, double
     frees and bad arguments are always diagnosed: that is the API, not a check.
  1  lock-ownership assertions
  2  O(n) walks of a structure when it changes state
  3  the page allocator's invariants after every span allocation (the test
     suite runs here, and at 0)

Lock order (acquire left to right, never the reverse):

  MHeap.lock (Python) -> [C] a central's lock -> [C] the page lock
  ArenaIndex.lock and Heap slot lock: leaves

C locks are held only inside one C call (csrc/shim.h), so a thread never
holds one while Python code runs.  MHeap.lock is the one lock held across
Python code; ``HeapLock.run`` refuses a thread that already holds it (a
signal handler or finalizer that re-enters the page heap) with
ReentrancyError instead of letting it run the page heap again half-way, or
wait for itself.  Every Python-level lock is held through ``_fast.locked``
(or ``HeapLock.run``): taken and released in C around a Python call, so no
exception can leave it held (realalloc/__init__.py: interruption).  The
process-wide leaf locks (the arena index, heap slots, the fork/exit
registry, the default heap) are RLocks: the cyclic GC can run a heap's
finalizer, which closes the heap and takes them, on a thread that holds one
of them, and each of their critical sections stays correct when another
runs inside it (they add or remove independent entries).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Final, TypeVar

from . import _fast
from .errors import HeapCorruption, InvalidArgumentError, ReentrancyError

__all__ = ["DEBUG", "LOCK_ORDER", "HeapLock", "assert_lock_held"]

T = TypeVar("T")


def _level() -> int:
    raw = os.environ.get("REALALLOC_DEBUG", "0")
    if raw not in {"0", "1", "2", "3"}:
        raise InvalidArgumentError(f"REALALLOC_DEBUG must be 0, 1, 2 or 3, got {raw!r}")
    return int(raw)


DEBUG: Final = _level()
LOCK_ORDER: Final = ("MHeap.lock", "MCentral (C)", "page lock (C)", "ArenaIndex.lock")


class HeapLock:
    """A lock that knows its owner and refuses re-entry.

    ``heap_lock.run(fn, *args)`` raises ReentrancyError when the calling
    thread holds the lock already, else runs ``fn(*args)`` holding it.
    """

    __slots__ = ("_rlock", "name")

    def __init__(self, name: str) -> None:
        self._rlock = threading.RLock()
        self.name = name

    def run(self, fn: Callable[..., T], /, *args: object) -> T:
        if self._rlock._is_owned():  # type: ignore[attr-defined]
            raise ReentrancyError(
                f"{self.name} is held by this thread: a call re-entered the page heap "
                "(from a signal handler, a finalizer or a trace function) while it was "
                "busy; it cannot run until the interrupted call returns"
            )
        return _fast.locked(self._rlock, fn, *args)

    def held(self) -> bool:
        """True when the calling thread holds the lock."""
        return bool(self._rlock._is_owned())  # type: ignore[attr-defined]

    def acquire(self) -> None:
        """Take the lock without the re-entry check (fork handlers)."""
        self._rlock.acquire()

    def release(self) -> None:
        self._rlock.release()


def assert_lock_held(lock: HeapLock) -> None:
    """(L1, O(1)) Raise HeapCorruption unless the calling thread holds ``lock``."""
    if DEBUG >= 1 and not lock.held():
        raise HeapCorruption(f"LOCK-1: {lock.name} must be held by the calling thread")
