"""Queries on per-chunk page bitmaps (Go: runtime/mpallocbits.go, pallocBits).

See realalloc/__init__.py for an overview of the allocator.

A chunk is 512 pages of 8 KiB (4 MiB).  Its allocation bitmap and its
scavenged bitmap live in C memory (``ra_chunk``, csrc/pages.h), where C
changes them atomically under the heap's page lock; Python reads each as one
512-bit int (``read_chunk``): bit i is page i of the chunk.  In the
allocation bitmap 1 means allocated and 0 free (Go's convention); in the
scavenged bitmap 1 means the page's memory was given back to the OS.
Searches work on whole ints with shift-and tricks, so finding a run of n
free pages costs O(log n) big-int operations instead of a loop over pages.

This module owns the bitmap queries (summarize, find, runs) as pure
functions on ints.  No state, no locks.

Invariant of a chunk's bitmaps (checked by ``PageAlloc.check``):
  PAGE-2: scav & alloc == 0   (a scavenged page is free)
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

from .osmem import ffi
from .sizeclasses import HEAP_ADDR_BITS, PAGES_PER_CHUNK

__all__ = [
    "ADDR_LIMIT",
    "ALLOCATED_SUM",
    "CHUNK_MASK",
    "FREE_CHUNK_SUM",
    "PallocSum",
    "find",
    "find_bit_range",
    "highest_run",
    "longest_run",
    "lowest_bit",
    "range_mask",
    "read_chunk",
    "summarize",
]

ADDR_LIMIT: Final = 1 << HEAP_ADDR_BITS
"""Addresses are below this (Go: heapAddrBits on 64-bit)."""
CHUNK_MASK: Final = (1 << PAGES_PER_CHUNK) - 1
"""All 512 bits of a chunk bitmap set."""

PallocSum: TypeAlias = tuple[int, int, int]
"""(start, max, end): free pages at the start, longest free run, free pages at the end."""

ALLOCATED_SUM: Final[PallocSum] = (0, 0, 0)
FREE_CHUNK_SUM: Final[PallocSum] = (PAGES_PER_CHUNK, PAGES_PER_CHUNK, PAGES_PER_CHUNK)


def range_mask(i: int, n: int) -> int:
    """Bits [i, i+n) set."""
    return ((1 << n) - 1) << i


def lowest_bit(x: int) -> int:
    """Index of the lowest set bit of x > 0."""
    return (x & -x).bit_length() - 1


def longest_run(x: int) -> int:
    """Length of the longest run of 1 bits in x >= 0.

    ``shrunk[k]`` has bit i set iff x has 2**k ones starting at bit i.  Doubling
    finds the largest power of two that fits; the saved steps then add the
    remaining lengths from the largest down, a binary search over the run length.
    """
    if not x:
        return 0
    shrunk = [x]
    n = 1
    while nxt := shrunk[-1] & (shrunk[-1] >> n):
        shrunk.append(nxt)
        n <<= 1
    cur = shrunk.pop()
    length = n
    while shrunk:
        step = shrunk.pop()
        n >>= 1
        if cand := cur & (step >> length):
            cur = cand
            length += n
    return length


def find_bit_range(x: int, n: int) -> int:
    """Index of the first run of n >= 1 consecutive 1 bits in x, or -1 (Go: findBitRange64).

    Each step ANDs x with itself shifted, which trims the top of every run; once
    runs are trimmed by n-1 bits, the bits left mark where runs of n start.
    """
    have = 1
    while have < n and x:
        step = have if have + have <= n else n - have
        x &= x >> step
        have += step
    return lowest_bit(x) if x else -1


def highest_run(x: int) -> tuple[int, int]:
    """[start, end) of the highest run of 1 bits in x > 0."""
    end = x.bit_length()
    return (~x & ((1 << end) - 1)).bit_length(), end


def summarize(bits: int) -> PallocSum:
    """Summary (start, max, end) of the free pages of an allocation bitmap."""
    if not bits:
        return FREE_CHUNK_SUM
    if bits == CHUNK_MASK:
        return ALLOCATED_SUM
    return (
        lowest_bit(bits),
        longest_run(bits ^ CHUNK_MASK),
        PAGES_PER_CHUNK - bits.bit_length(),
    )


def find(bits: int, npages: int, search_idx: int) -> tuple[int, int]:
    """First fit of npages (1..512) free pages at or above page search_idx.

    Returns (index of the run or -1, index of the first free page at or above
    search_idx).  The second value is the new search index; it is meaningless
    when the first is -1.
    """
    free = ~bits & (CHUNK_MASK >> search_idx << search_idx)
    if not free:
        return -1, -1
    first = lowest_bit(free)
    if npages == 1:
        return first, first
    return find_bit_range(free, npages), first


def read_chunk(chunk: Any) -> tuple[int, int]:
    """(allocated, scavenged) bitmaps of a C ``ra_chunk *`` as 512-bit ints.

    C owns the bits (csrc/pages.h changes them under the page lock); a reader
    without that lock may see a change half made, which the caller's next
    refresh from the dirty stack corrects.
    """
    return (
        int.from_bytes(ffi.buffer(chunk.alloc), "little"),
        int.from_bytes(ffi.buffer(chunk.scav), "little"),
    )
