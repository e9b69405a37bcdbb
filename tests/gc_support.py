"""Helpers for the garbage-collection tests: words in real memory, a root
array the collector scans, and nodes that carry a pattern beside their links."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

from support import pattern

import realalloc

WORD = 8


def load(addr: int) -> int:
    return ctypes.c_uint64.from_address(addr).value


def store(addr: int, value: int) -> None:
    ctypes.c_uint64.from_address(addr).value = value


def live(heap: realalloc.Heap, addr: int) -> bool:
    """True if a live object starts at ``addr``."""
    try:
        heap.usable_size(addr)
    except realalloc.InvalidPointerError:
        return False
    return True


class Roots:
    """A ctypes array of words registered as a root range: slot i holds a pointer."""

    def __init__(self, heap: realalloc.Heap, n: int) -> None:
        self.heap = heap
        self.words = (ctypes.c_uint64 * n)()
        self.address = ctypes.addressof(self.words)
        heap.add_root(self.address, n * WORD)

    def __setitem__(self, i: int, addr: int) -> None:
        self.words[i] = addr

    def __getitem__(self, i: int) -> int:
        return int(self.words[i])

    def __len__(self) -> int:
        return len(self.words)

    def remove(self) -> None:
        self.heap.remove_root(self.address)


class Nodes:
    """Scan objects of ``size`` bytes: ``links`` pointer words, then a pattern
    (written once; checked by ``intact``).  Every node is linked into a root
    or another node on the line that makes it, before the next allocation."""

    def __init__(self, heap: realalloc.Heap, size: int = 64, links: int = 2) -> None:
        self.heap = heap
        self.size = size
        self.links = links
        self.data: dict[int, bytes] = {}
        self.seq = 0

    def new_into(self, slot_addr: int) -> int:
        """A node whose address is stored at ``slot_addr`` (a root word or a
        link word of a reachable node) before anything else allocates."""
        addr = self.heap.malloc(self.size, scan=True)
        store(slot_addr, addr)
        self.seq += 1
        body = self.size - self.links * WORD
        data = pattern(addr, self.seq, body)
        ctypes.memmove(addr + self.links * WORD, data, body)
        self.data[addr] = data
        return addr

    def link(self, node: int, i: int) -> int:
        """Address of link word ``i`` of ``node``."""
        return node + i * WORD

    def chain(self, slot_addr: int, n: int) -> list[int]:
        """n nodes, each linked from the previous one's link 0."""
        out = [self.new_into(slot_addr)]
        for _ in range(n - 1):
            out.append(self.new_into(self.link(out[-1], 0)))
        return out

    def intact(self, addrs: Iterator[int] | list[int]) -> None:
        for addr in addrs:
            body = self.size - self.links * WORD
            got = ctypes.string_at(addr + self.links * WORD, body)
            assert got == self.data[addr], f"node {addr:#x} changed"
