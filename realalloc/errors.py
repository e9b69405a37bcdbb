"""Exceptions raised by realalloc, and the argument checks that raise them.

See realalloc/__init__.py for an overview of the allocator.

Every error realalloc raises derives from :class:`RealAllocError`, which is never
raised itself.  Each subclass also derives from the builtin exception a caller
would naturally catch, so ``except ValueError`` and ``except RealAllocError``
both work::

    RealAllocError
    ├── ArgumentTypeError        (TypeError)    an argument of the wrong type
    ├── InvalidArgumentError     (ValueError)   a size, count or address out of range
    ├── InvalidPointerError      (ValueError)   an address the heap cannot free
    │   ├── ForeignPointerError                 not inside memory this heap owns
    │   ├── InteriorPointerError                inside an object, not at its start
    │   └── DoubleFreeError                     the object is already free
    ├── HeapClosedError          (RuntimeError) the heap was closed
    ├── ReentrancyError          (RuntimeError) a call re-entered the heap where it cannot
    ├── BufferFreedError         (ValueError)   a Buffer was used after free()
    ├── GCError                  (RuntimeError) a collector call the heap cannot make: it has
    │                                           no collector, or the object's collector state
    │                                           forbids it (free of a pinned object)
    ├── HeapCorruption           (AssertionError) an invariant does not hold
    ├── UnsupportedError         (RuntimeError) not supported on this interpreter (numpy's
    │                                           handler on a free-threaded Python)
    └── OutOfMemoryError         (MemoryError)  the request cannot be satisfied
        └── ShimError            (OSError)      the OS refused a memory operation

Rule: a function validates all of its arguments before it changes any state, so
a raised error leaves every structure exactly as it was.
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = [
    "ArgumentTypeError",
    "BufferFreedError",
    "DoubleFreeError",
    "ForeignPointerError",
    "GCError",
    "HeapClosedError",
    "HeapCorruption",
    "InteriorPointerError",
    "InvalidArgumentError",
    "InvalidPointerError",
    "OutOfMemoryError",
    "RealAllocError",
    "ReentrancyError",
    "ShimError",
    "UnsupportedError",
    "require_int",
]


class RealAllocError(Exception):
    """Base of every realalloc error. Never raised directly."""


class ArgumentTypeError(RealAllocError, TypeError):
    """An argument has the wrong type (for example a float where an int is needed)."""


class InvalidArgumentError(RealAllocError, ValueError):
    """An argument has the right type but a value out of range."""


class InvalidPointerError(RealAllocError, ValueError):
    """An address passed to free or a lookup is not a live object of this heap."""


class ForeignPointerError(InvalidPointerError):
    """The address is not inside memory this heap has handed out."""


class InteriorPointerError(InvalidPointerError):
    """The address points inside an object rather than at its start."""


class DoubleFreeError(InvalidPointerError):
    """The object at this address has already been freed."""


class HeapClosedError(RealAllocError, RuntimeError):
    """The heap was closed; its memory is unmapped and it can do nothing more."""


class ReentrancyError(RealAllocError, RuntimeError):
    """A call re-entered the heap on a thread that is inside it (a signal
    handler, finalizer or trace function ran in the middle of a heap call) and
    needs what that thread holds.  Nothing changed; retry after the
    interrupted call returns."""


class BufferFreedError(RealAllocError, ValueError):
    """A Buffer was used after its memory was freed (or its heap closed)."""


class GCError(RealAllocError, RuntimeError):
    """A garbage-collection call the heap cannot make: a collector method on a
    heap made without one (``Heap(gc=False)``), or a call the object's
    collector state forbids (``free`` of a pinned object, or of one whose
    finalizer is queued).  Nothing changed."""


class UnsupportedError(RealAllocError, RuntimeError):
    """What was asked is not supported on this interpreter (realalloc's numpy
    handler on a free-threaded, GIL-disabled Python).  Nothing changed."""


class HeapCorruption(RealAllocError, AssertionError):
    """An allocator invariant does not hold. The message starts with its ID."""


class OutOfMemoryError(RealAllocError, MemoryError):
    """The allocation cannot be satisfied (too large, address space exhausted, ...)."""


class ShimError(OutOfMemoryError, OSError):
    """The OS refused an mmap/mprotect/madvise/munmap call.

    ``errno`` and ``strerror`` are set as on :class:`OSError`; ``operation``
    names the shim call that failed.
    """

    def __init__(self, err: int, operation: str) -> None:
        name = _errno.errorcode.get(err, str(err))
        message = f"{operation} failed: {os.strerror(err)} ({name})"
        super().__init__(err, message)
        self.errno = err
        self.strerror = message
        self.operation = operation

    def __str__(self) -> str:
        return f"[Errno {self.errno}] {self.strerror}"


for _cls in list(globals().values()):
    if isinstance(_cls, type) and issubclass(_cls, RealAllocError):
        _cls.__module__ = "realalloc"


def require_int(name: str, value: object, lo: int = 0, hi: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) with ``lo <= value <= hi``.

    Raises ArgumentTypeError for a non-int and InvalidArgumentError for a value
    out of range; the message names the argument and the value.
    """
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArgumentTypeError(
                f"{name} must be an int, not {type(value).__name__} ({value!r})"
            )
        value = int(value)
    v: int = value
    if v < lo:
        raise InvalidArgumentError(f"{name} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise InvalidArgumentError(f"{name} must be <= {hi:#x}, got {v:#x}")
    return v
