"""What the workloads are written against: an allocator, a way to touch memory, threads.

See realalloc/tools/workloads/__init__.py for the workloads.

A workload sees an :class:`Allocator`, two callables ``malloc(size) -> int``
(an address) and ``free(addr)``, so one driver runs on every allocator, and
a *memory* object with three calls that write and read the objects:

* ``stamp(addr, size)``: write the first and the last byte with a tag
  derived from the address and the size;
* ``check(addr, size) -> bool``: both bytes still hold the tag;
* ``stamp_pages(addr, size)``: stamp, and write one byte in every 4 KiB page
  in between, so that all of a large object is resident.

Stamps on a sample of the objects catch two live objects that overlap (an
allocator bug); a use-after-free by the workload itself would go unnoticed:
these are benchmarks, not tests.  :class:`Memory` is the pure-Python
implementation (ctypes), about 0.3 µs a stamp; bench/workloads/common.py
builds a C one for the benchmarks, which time the allocator more finely.

Threads are Python threads (one at a time under the GIL): the workloads
measure allocator plus interpreter, the same interpreter code for every
allocator.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["Allocator", "BadObject", "Memory", "Worker", "run_all", "verify"]

OS_PAGE: Final = 4096


@dataclass
class Allocator:
    """What a workload calls: ``malloc(size) -> address`` and ``free(address)``."""

    name: str
    malloc: Callable[[int], int]
    free: Callable[[int], None]
    version: str = ""
    close: Callable[[], None] = field(default=lambda: None)


def _tag(p: int, n: int) -> int:
    """A byte that differs between neighbouring objects and sizes."""
    return ((p >> 3) ^ (p >> 11) ^ (p >> 19) ^ n ^ 0xA5) & 0xFF


class Memory:
    """``stamp``, ``check`` and ``stamp_pages`` in Python, over ctypes."""

    __slots__ = ()

    @staticmethod
    def stamp(p: int, n: int) -> None:
        """Write the first and the last byte of the ``n``-byte object at ``p``."""
        if not p or n < 2:
            raise ValueError("need a non-NULL address and a size >= 2")
        t = _tag(p, n)
        ctypes.c_ubyte.from_address(p).value = t
        ctypes.c_ubyte.from_address(p + n - 1).value = t ^ 0xFF

    @staticmethod
    def check(p: int, n: int) -> bool:
        """Both bytes still hold what ``stamp`` wrote."""
        t = _tag(p, n)
        return bool(
            ctypes.c_ubyte.from_address(p).value == t
            and ctypes.c_ubyte.from_address(p + n - 1).value == t ^ 0xFF
        )

    @classmethod
    def stamp_pages(cls, p: int, n: int) -> None:
        """Stamp, and write one byte in every 4 KiB page in between."""
        if n > OS_PAGE + 1:
            view = memoryview((ctypes.c_ubyte * n).from_address(p)).cast("B")
            count = len(range(OS_PAGE, n - 1, OS_PAGE))
            view[OS_PAGE : n - 1 : OS_PAGE] = b"\x01" * count
        cls.stamp(p, n)


class BadObject(AssertionError):
    """An object's stamped bytes changed while it was live: the allocator handed out overlap."""


def verify(mem: Any, addrs: Iterable[int], sizes: Iterable[int], what: str) -> int:
    """Check every (addr, size) of a live set; raise BadObject on the first bad one."""
    check = mem.check
    n = 0
    seen: set[int] = set()
    for a, s in zip(addrs, sizes, strict=True):
        if a in seen or not a:
            raise BadObject(f"{what}: address {a:#x} handed out twice (or NULL)")
        seen.add(a)
        if not check(a, s):
            raise BadObject(f"{what}: object {a:#x} ({s} B) was overwritten while live")
        n += 1
    return n


class Worker(threading.Thread):
    """A thread that keeps its target's exception (or result) for :meth:`result`."""

    def __init__(self, target: Callable[..., Any], *args: Any) -> None:
        super().__init__(daemon=True)
        self._fn, self._args = target, args
        self.error: BaseException | None = None
        self.value: Any = None

    def run(self) -> None:
        try:
            self.value = self._fn(*self._args)
        except BaseException as e:  # re-raised by result()
            self.error = e

    def result(self) -> Any:
        self.join()
        if self.error is not None:
            raise self.error
        return self.value


def run_all(workers: list[Worker]) -> list[Any]:
    """Start every worker, join them all, re-raise the first error."""
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return [w.result() for w in workers]
