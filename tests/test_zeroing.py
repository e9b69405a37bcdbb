"""malloc(zero=True) returns zeros however the slot's span travelled: a slot
freed locally (plain stores, by the thread whose cache holds the span) and
handed on when that cache lets the span go (thread exit, scavenge(), a
collection) must be cleared by whichever cache reuses it (needzero, set by
the local free in csrc/spanbits.h)."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

import realalloc

T = TypeVar("T")
SIZES = [8, 24, 64, 512, 4096]  # a tiny piece, and small classes of each kind


def dirty_then_leave(heap: realalloc.Heap, size: int, n: int) -> set[int]:
    """n objects of `size` filled with 0xAB; every other one freed locally (for
    tiny pieces, both of a block's two).  Returns the freed addresses."""
    addrs = [heap.malloc(size, zero=False) for _ in range(n)]
    for a in addrs:
        ctypes.memset(a, 0xAB, size)
    every = 2 if size < 16 else 1
    freed = {a for i, a in enumerate(addrs) if i // every % 2 == 0}
    for a in freed:
        heap.free(a)
    return freed  # the others stay live, so the span stays in use


def take_zeroed(heap: realalloc.Heap, size: int, freed: set[int], n: int) -> int:
    """Allocate zeroed objects until every freed slot came back (or n tries);
    each must read as zeros.  Returns how many freed slots were reused."""
    reused = 0
    for _ in range(n):
        a = heap.malloc(size, zero=True)
        assert ctypes.string_at(a, size) == bytes(size), f"stale bytes at {a:#x} ({size} B)"
        reused += a in freed
    return reused


def in_thread(fn: Callable[[], T]) -> T:
    """fn() on a new thread (with a cache of its own); its result or its exception."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


@pytest.mark.parametrize("size", SIZES)
def test_span_left_by_an_exiting_thread(size: int) -> None:
    with realalloc.Heap(background_scavenger=False) as heap:
        freed = in_thread(lambda: dirty_then_leave(heap, size, 64))  # the thread has exited
        assert take_zeroed(heap, size, freed, 2000) > 0  # the test reached the slots
        heap.check()


@pytest.mark.parametrize("size", SIZES)
def test_span_left_by_scavenge(size: int) -> None:
    with realalloc.Heap(background_scavenger=False) as heap:
        freed = dirty_then_leave(heap, size, 64)
        heap.scavenge()  # hands this thread's cached spans back to the centrals
        assert in_thread(lambda: take_zeroed(heap, size, freed, 2000)) > 0
        heap.check()
