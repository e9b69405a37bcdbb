"""Helpers shared by the tests: byte patterns over real memory, a population
of live objects that must come through every misuse unharmed, and threads
whose failures fail the test."""

from __future__ import annotations

import ctypes
import struct
import threading
from collections.abc import Callable
from itertools import pairwise

import realalloc

M64 = (1 << 64) - 1


def pattern(addr: int, seq: int, n: int) -> bytes:
    """n bytes derived from an address and a sequence number (17-byte period)."""
    words = [(addr * 0x9E3779B97F4A7C15 + (seq + k) * 0xBF58476D1CE4E5B9) & M64 for k in (1, 2)]
    unit = struct.pack("<2Q", *words) + bytes([seq & 0xFF | 1])
    return (unit * (n // 17 + 1))[:n]


def addr_re(addr: int) -> str:
    """A regex matching ``addr`` in hex as Python's %#x and C's %p print it (lower
    case; zero padding allowed).  No flags, so it can sit inside a larger regex."""
    return rf"0x0*{addr:x}\b"


class Population:
    """Live objects of every kind, each holding a pattern over its usable extent."""

    KINDS: tuple[tuple[int, bool], ...] = (
        (1, False), (3, False), (8, False), (13, False), (16, False), (24, True),
        (100, True), (100, False), (4000, True), (32768, False), (40000, True),
        (300000, False),
    )  # fmt: skip

    def __init__(
        self, heap: realalloc.Heap, kinds: tuple[tuple[int, bool], ...] = KINDS, copies: int = 3
    ) -> None:
        self.heap = heap
        self.objs: dict[int, bytes] = {}
        self.seq = 0
        for size, scan in kinds * copies:
            self.add(size, scan)

    def add(self, size: int, scan: bool = False, seq: int | None = None) -> int:
        """Allocate, fill with a pattern, remember; returns the address."""
        self.seq += 1
        addr = self.heap.malloc(size, scan=scan)
        data = pattern(addr, self.seq if seq is None else seq, self.heap.usable_size(addr))
        ctypes.memmove(addr, data, len(data))
        self.objs[addr] = data
        return addr

    def intact(self) -> None:
        """Every live object keeps its pattern, none overlap, and check() passes."""
        for addr, data in self.objs.items():
            assert ctypes.string_at(addr, len(data)) == data, f"object {addr:#x} changed"
        ends = sorted((a, a + max(len(d), 1)) for a, d in self.objs.items())
        for (a0, e0), (a1, _) in pairwise(ends):
            assert e0 <= a1, f"{a0:#x} and {a1:#x} overlap"
        self.heap.check()

    def free_all(self) -> None:
        for addr in self.objs:
            self.heap.free(addr)
        self.objs.clear()
        self.heap.check()


def run_threads(n: int, target: Callable[[int], object]) -> None:
    """target(0) .. target(n - 1), each on a thread of its own, all started
    before any is joined; the first exception any of them raised is raised
    (one that is not a BrokenBarrierError, if any: a failing thread breaks
    the barrier the others wait at, and its own error says why)."""
    errors: list[BaseException] = []

    def wrap(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    causes = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if errors:
        raise (causes or errors)[0]
