"""The surface every design shares: the Heap calls, argument checks, bad-pointer diagnosis, stats.

See realalloc/designs/__init__.py for an overview of the designs.

A design subclasses :class:`DesignHeap` and supplies the allocator proper
(``malloc``, ``free``, ``usable_size``, ``stats``, ``check`` and three hooks);
this module gives every design the same rules, which are realalloc.Heap's:

* Arguments are checked before anything changes: ArgumentTypeError for a
  size or address that is not an int, InvalidArgumentError for a negative
  one, OutOfMemoryError for a size no page heap could back (> 2**46 bytes,
  MHeap's own bound) or that the page heap refuses.
* An address that is not a live object is diagnosed, never acted on:
  InteriorPointerError when it lies inside a live object, DoubleFreeError
  when an object was freed there and nothing has been allocated there
  since, ForeignPointerError for anything else (not this heap's memory, or
  free memory that held no object there).  Slot starts in pages cut into
  equal slots are told apart by position alone, so a free slot that was
  never handed out counts as freed; blocks of variable size and whole-page
  objects are remembered (``RecentlyFreed``, the last 4096 frees).
* Every public call on a closed heap raises HeapClosedError; ``close()``
  itself may be called again.  ``close()`` needs the other threads to be
  idle in this heap (as ``realalloc.Heap.close`` does).
* ``realloc`` keeps the object where it is when the design can resize it in
  place, else allocates, copies the smaller of the two usable sizes and
  frees the old object; a failed allocation leaves the old object as it was.

Live objects.  Every design keeps ``_live``, address -> requested size, so
that a bad address is diagnosed rather than trusted (an allocator written in
C would read its headers and believe them).  It is a validation aid of this
Python rendering and is not counted as metadata: ``metadata_bytes`` counts
what a C implementation of the design would keep beside the objects, and
each design lists those items.

Invariants (each design checks its own in ``check()``, named after it):
  STATS-1: objects_live == len(_live) == mallocs - frees;
           bytes_in_use == sum of the requested sizes in _live;
           bytes_in_use <= bytes_allocated <= bytes_held.

Locking: each design states its own; ``_live`` is a dict whose single
operations (get, set, pop) are atomic under the GIL, which the thread-cache
design relies on; the others touch it under their one lock.
"""

from __future__ import annotations

import abc
import ctypes
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Final

from ..errors import (
    DoubleFreeError,
    ForeignPointerError,
    HeapClosedError,
    HeapCorruption,
    InteriorPointerError,
    InvalidPointerError,
    OutOfMemoryError,
    require_int,
)
from .pages import PageSource

__all__ = ["MAX_SIZE", "DesignHeap", "DesignStats", "RecentlyFreed"]

MAX_SIZE: Final = 1 << 46
"""Largest request: MHeap's bound, half of the 47-bit user address space."""
_MAX_ADDR: Final = (1 << 64) - 1
_RECENT: Final = 4096
"""How many freed addresses a design remembers to tell a double free from a stray one."""


class RecentlyFreed:
    """The last few thousand addresses freed, oldest first, for diagnosis only.

    Not thread safe: the caller holds the lock that guards its frees.
    """

    __slots__ = ("_addrs",)

    def __init__(self) -> None:
        self._addrs: dict[int, None] = {}

    def add(self, addr: int) -> None:
        addrs = self._addrs
        addrs[addr] = None
        if len(addrs) > _RECENT:
            del addrs[next(iter(addrs))]

    def discard(self, addr: int) -> None:
        """``addr`` was handed out again: a free of it is no longer a double free."""
        self._addrs.pop(addr, None)

    def __contains__(self, addr: int) -> bool:
        return addr in self._addrs


@dataclass(frozen=True, slots=True)
class DesignStats:
    """A snapshot of one design heap's counters."""

    design: str
    """The design's name, as in ``realalloc.designs.DESIGNS``."""
    bytes_in_use: int
    """Bytes requested by the live objects."""
    bytes_allocated: int
    """Usable bytes of the live objects (their blocks, slots or pages)."""
    bytes_held: int
    """Bytes of the page runs the design holds from the page heap."""
    metadata_bytes: int
    """Bytes a C implementation of the design keeps beside the objects."""
    objects_live: int
    """Objects allocated and not freed."""
    mallocs: int
    """Objects allocated (a realloc that moves counts one malloc and one free)."""
    frees: int
    """Objects freed."""
    detail: dict[str, int] = field(default_factory=dict)
    """Counters of this design alone (free blocks, search steps, lock trips, ...)."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)

    def check(self, live_bytes: int, live_objects: int, prefix: str) -> None:
        """STATS-1 against the design's own count of its live objects."""
        ok = (
            self.objects_live == live_objects == self.mallocs - self.frees
            and self.bytes_in_use == live_bytes
            and 0 <= self.bytes_in_use <= self.bytes_allocated <= self.bytes_held
        )
        if not ok:
            raise HeapCorruption(
                f"{prefix}-STATS-1: {live_objects} live objects of {live_bytes} bytes, but "
                f"counters say objects_live={self.objects_live} mallocs={self.mallocs} "
                f"frees={self.frees} in_use={self.bytes_in_use} "
                f"allocated={self.bytes_allocated} held={self.bytes_held}"
            )


class DesignHeap(abc.ABC):
    """One allocator design over real pages from realalloc's page heap.

    ``malloc(size) -> int`` (an address of ``usable_size`` writable bytes,
    aligned to ``alignment``), ``free(addr)``, ``realloc(addr, size)``,
    ``usable_size(addr)``, ``stats()``, ``check()``, ``close()``; a context
    manager that closes on exit.
    """

    name: ClassVar[str]
    """Key of the design in ``realalloc.designs.DESIGNS``."""
    alignment: ClassVar[int]
    """Every address ``malloc`` returns is a multiple of this."""

    def __init__(self) -> None:
        self.pages = PageSource()
        self.closed = False
        self._live: dict[int, int] = {}  # address -> requested size (see the module doc)

    # -- the Heap calls a design supplies -------------------------------------

    @abc.abstractmethod
    def malloc(self, size: int) -> int:
        """Allocate ``size`` bytes; the address of the new object."""

    @abc.abstractmethod
    def free(self, addr: int) -> None:
        """Free the live object at ``addr``."""

    @abc.abstractmethod
    def usable_size(self, addr: int) -> int:
        """Bytes the caller may use at ``addr`` (at least the size asked for)."""

    @abc.abstractmethod
    def stats(self) -> DesignStats:
        """The design's counters now."""

    @abc.abstractmethod
    def check(self) -> None:
        """Verify the design's invariants; HeapCorruption naming the broken one.
        Other threads must not be using the heap meanwhile."""

    @abc.abstractmethod
    def _try_resize(self, addr: int, size: int) -> int | None:
        """Resize the live object at ``addr`` in place if the design can:
        None when done, else the object's usable size (for the copy).
        Raises the bad-pointer error for an address that is not live."""

    @abc.abstractmethod
    def _object_containing(self, addr: int) -> int | None:
        """The address of the live object whose memory holds ``addr``, or None."""

    @abc.abstractmethod
    def _was_freed(self, addr: int) -> bool:
        """True when an object was freed at ``addr`` and nothing was allocated there since."""

    # -- shared ----------------------------------------------------------------

    def realloc(self, addr: int, size: int) -> int:
        """Resize the object at ``addr`` to ``size`` bytes, in place when the
        design can; its contents are kept up to the smaller usable size."""
        size = self._size_arg(size)
        addr = self._addr_arg(addr)
        self._check_open()
        usable = self._try_resize(addr, size)
        if usable is None:
            return addr
        new = self.malloc(size)
        ctypes.memmove(new, addr, min(usable, size))
        self.free(addr)
        return new

    def close(self) -> None:
        """Give every page back to the page heap and close it (its memory is
        unmapped).  Idempotent; every other call raises HeapClosedError after."""
        if self.closed:
            return
        self.closed = True
        self._live.clear()
        self.pages.close()

    def __enter__(self) -> DesignHeap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise HeapClosedError(f"this {self.name} heap is closed")

    @staticmethod
    def _size_arg(size: object) -> int:
        """``size`` as an int request; the errors of the module doc."""
        n = require_int("size", size)
        if n > MAX_SIZE:
            raise OutOfMemoryError(f"malloc({n:#x}): more than {MAX_SIZE:#x} bytes")
        return n

    @staticmethod
    def _addr_arg(addr: object) -> int:
        return require_int("addr", addr, 0, _MAX_ADDR)

    def _pop_live(self, addr: int) -> int:
        """Forget the live object at ``addr`` and return its requested size; the
        bad-pointer error, with nothing changed, when there is none.  One dict
        step, so of two threads freeing one object only one succeeds."""
        size = self._live.pop(addr, None)
        if size is None:
            raise self._bad_pointer("free", addr)
        return size

    def _bad_pointer(self, op: str, addr: int) -> InvalidPointerError:
        """The error for ``op(addr)`` when ``addr`` is not a live object (the
        fast paths check only its type: a negative one raises here)."""
        self._addr_arg(addr)
        start = self._object_containing(addr)
        if start is not None:
            return InteriorPointerError(
                f"{op}({addr:#x}): {addr - start} bytes into the live object at {start:#x}"
            )
        if self._was_freed(addr):
            return DoubleFreeError(f"{op}({addr:#x}): the object there was already freed")
        return ForeignPointerError(f"{op}({addr:#x}): not an object of this {self.name} heap")
