"""Debug level, lock ownership checks and the lock order.

See realalloc/__init__.py for an overview of the allocator.

``REALALLOC_DEBUG`` (read once at import) grades the checks by cost, as
mimalloc's MI_DEBUG does:

  0  no internal checks (the default; benchmarks).  Bad pointers, double
     frees and bad arguments are always diagnosed: that is the API, not a check.
  1  lock-ownership assertions (locks record their owner: slower)
  2  O(n) walks of a structure when it changes state
  3  a full ``check()`` after every slow-path operation (the test suite)

Lock order (acquire left to right, never the reverse):

  Heap.lifecycle_lock -> MCentral.lock -> MHeap.lock -> ArenaIndex.lock -> OSMem.lock

The C fast path takes no lock at all.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Final

from .errors import HeapCorruption, InvalidArgumentError

__all__ = ["DEBUG", "LOCK_ORDER", "OwnedLock", "assert_lock_held", "new_lock"]


def _level() -> int:
    raw = os.environ.get("REALALLOC_DEBUG", "0")
    if raw not in {"0", "1", "2", "3"}:
        raise InvalidArgumentError(f"REALALLOC_DEBUG must be 0, 1, 2 or 3, got {raw!r}")
    return int(raw)


DEBUG: Final = _level()
LOCK_ORDER: Final = (
    "Heap.lifecycle_lock",
    "MCentral.lock",
    "MHeap.lock",
    "ArenaIndex.lock",
    "OSMem.lock",
)


class OwnedLock:
    """A non-reentrant lock that knows which thread holds it.

    ``threading.Lock`` cannot say who holds it; ``assert_lock_held`` needs that.
    """

    __slots__ = ("_lock", "name", "owner")

    def __init__(self, name: str) -> None:
        self._lock = threading.Lock()
        self.name = name
        self.owner: int | None = None

    def __enter__(self) -> OwnedLock:
        self._lock.acquire()
        self.owner = threading.get_ident()
        return self

    def __exit__(self, *exc: object) -> None:
        self.owner = None
        self._lock.release()

    def held(self) -> bool:
        """True when the calling thread holds the lock."""
        return self.owner == threading.get_ident()


if TYPE_CHECKING:
    from typing import TypeAlias

    Lock: TypeAlias = OwnedLock | threading.Lock
    """What ``new_lock`` returns."""


def new_lock(name: str) -> Lock:
    """An OwnedLock at debug level 1 and above, else a plain (faster) Lock."""
    return OwnedLock(name) if DEBUG >= 1 else threading.Lock()


def assert_lock_held(lock: Lock) -> None:
    """(L1, O(1)) Raise HeapCorruption unless the calling thread holds ``lock``."""
    if DEBUG >= 1 and isinstance(lock, OwnedLock) and not lock.held():
        raise HeapCorruption(f"LOCK-1: {lock.name} must be held by the calling thread")
