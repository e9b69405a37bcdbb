"""Interruption and re-entry, injected: an exception (as KeyboardInterrupt or a
signal handler's would) raised at random lines of realalloc's own Python
code, and malloc/free run re-entrantly at random lines (as a finalizer or a
signal handler would).  After each: check() passes, every live object keeps
its pattern, and the heap keeps working.

The events come from a trace function (sys.settrace) that counts line
events in realalloc's files, so an injection point is "the n-th line the
operation runs": each operation is first measured, then interrupted at a
line chosen uniformly from its own."""

from __future__ import annotations

import ctypes
import os
import random
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest
from support import Population, pattern

import realalloc

PACKAGE = os.path.dirname(realalloc.__file__)
# The allocator proper; the tools and the seed's designs are callers of it.
OWN = tuple(os.path.join(PACKAGE, d) for d in ("core", "_debug.py", "errors.py", "buffer.py"))


class Injected(BaseException):
    """Stands for KeyboardInterrupt: a BaseException, so `except Exception`
    in the allocator cannot swallow it."""


class Injector:
    """A trace function that counts realalloc's line events; at line ``raise_at``
    it raises Injected, at each line in ``reenter_at`` it calls ``reenter``."""

    def __init__(self) -> None:
        self.lines = 0
        self.raise_at = -1
        self.reenter_at: set[int] = set()
        self.reenter: Callable[[], None] = lambda: None
        self.files: set[str] = set()

    def global_trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        return self.local_trace if frame.f_code.co_filename.startswith(OWN) else None

    def local_trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.lines += 1
            self.files.add(frame.f_code.co_filename)
            if self.lines in self.reenter_at:
                self.reenter()
            if self.lines == self.raise_at:
                raise Injected(f"line {self.lines}: {frame.f_code.co_filename}:{frame.f_lineno}")
        return self.local_trace

    def run(
        self, op: Callable[[], object], raise_at: int = -1, reenter_at: tuple[int, ...] = ()
    ) -> int:
        """Run op under tracing; returns how many lines of realalloc it ran."""
        self.lines, self.raise_at, self.reenter_at = 0, raise_at, set(reenter_at)
        sys.settrace(self.global_trace)
        try:
            op()
        finally:
            sys.settrace(None)
        return self.lines


class Workload:
    """Operations that take realalloc's Python slow paths, on a population
    whose every object is checked after each interruption."""

    SIZES = (1, 7, 16, 48, 200, 1024, 4000, 9000, 28000, 33000, 100_000, 1 << 20, 5 << 20)

    def __init__(self, heap: realalloc.Heap, rng: random.Random) -> None:
        self.heap = heap
        self.rng = rng
        self.pop = Population(heap, copies=1)
        self.buffers: list[realalloc.Buffer] = []

    def op(self) -> tuple[str, Callable[[], object]]:
        """A random operation and its name; what it creates joins the population
        as it is made."""
        rng, heap, pop = self.rng, self.heap, self.pop
        kind = rng.randrange(10)
        if kind <= 2 or not pop.objs:
            # Many sizes at once, so a class's cache runs dry and spans move.
            sizes = [rng.choice(self.SIZES) for _ in range(rng.randint(1, 40))]
            scans = [rng.random() < 0.5 for _ in sizes]
            return "malloc", lambda: [pop.add(n, scan=s) for n, s in zip(sizes, scans, strict=True)]
        if kind == 3:
            victims = rng.sample(sorted(pop.objs), k=min(len(pop.objs), rng.randint(1, 30)))

            def free_some() -> None:
                for addr in victims:
                    heap.free(addr)
                    del pop.objs[addr]

            return "free", free_some
        if kind == 4:
            addr = rng.choice(sorted(pop.objs))
            size = rng.choice(self.SIZES)

            def realloc() -> None:
                new = heap.realloc(addr, size)
                # realloc moves the old contents; then the object is all ours.
                data = pop.objs.pop(addr)
                keep = min(len(data), size)
                assert ctypes.string_at(new, keep) == data[:keep]
                fresh = pattern(new, 0, heap.usable_size(new))
                ctypes.memmove(new, fresh, len(fresh))
                pop.objs[new] = fresh

            return "realloc", realloc
        if kind == 5:
            size = rng.choice(self.SIZES)

            def buffer() -> None:
                buf = heap.alloc(size)
                memoryview(buf)[:] = b"\xa5" * len(buf)
                self.buffers.append(buf)
                if len(self.buffers) > 4:
                    del self.buffers[0]  # a Buffer's death frees its object (C)

            return "alloc", buffer
        addr = rng.choice(sorted(pop.objs))
        nbytes = rng.randrange(1 << 22)
        return rng.choice(
            (
                ("reclaim", heap.reclaim),
                ("scavenge", heap.scavenge),
                ("scavenge(n)", lambda: heap.scavenge(nbytes)),
                ("stats", heap.stats),
                ("spans", heap.spans),
                ("memory_report", heap.memory_report),
                ("metadata_bytes", heap.metadata_bytes),
                ("usable_size", lambda: heap.usable_size(addr)),
                ("span_of", lambda: heap.span_of(addr)),
                ("check", heap.check),
                ("limit", lambda: self.under_limit(nbytes)),
            )
        )

    def under_limit(self, nbytes: int) -> None:
        """Allocate under a memory limit that may refuse (a refusal is an answer)."""
        st = self.heap.stats()
        self.heap.set_memory_limit(st.heap_inuse + st.metadata + nbytes)
        try:
            self.pop.add(self.rng.choice(self.SIZES))
        except realalloc.OutOfMemoryError:
            pass
        finally:
            self.heap.set_memory_limit(None)

    def intact(self) -> None:
        for buf in self.buffers:
            assert bytes(buf) == b"\xa5" * len(buf)
        self.pop.intact()


def reentrant(heap: realalloc.Heap, rng: random.Random, spare: list[int]) -> Callable[[], None]:
    """What a finalizer or signal handler might do inside a heap call: malloc
    or free (each object is private to the handler).  A malloc that needs the
    page heap the interrupted call is using is refused with ReentrancyError;
    nothing else may go wrong."""

    def handler() -> None:
        try:
            if spare and rng.random() < 0.5:
                addr = spare.pop(rng.randrange(len(spare)))
                assert ctypes.string_at(addr, 8) == addr.to_bytes(8, "little")
                heap.free(addr)
            else:
                addr = heap.malloc(rng.choice(Workload.SIZES[2:]))  # room for the mark
                ctypes.memmove(addr, addr.to_bytes(8, "little"), 8)
                spare.append(addr)
        except realalloc.ReentrancyError:
            pass

    return handler


def interrupt_many(heap: realalloc.Heap, seed: int, rounds: int) -> dict[str, int]:
    """``rounds`` random operations, each interrupted at a random line of its
    own (chosen up to the longest run of that operation seen so far: a point
    past its end lets it complete) and re-entered at three others."""
    rng = random.Random(seed)
    work = Workload(heap, rng)
    spare: list[int] = []
    tracer = Injector()
    tracer.reenter = reentrant(heap, rng, spare)
    longest: dict[str, int] = {}
    tally = {"interrupted": 0, "completed": 0, "reentries": 0}
    for _ in range(rounds):
        name, op = work.op()
        span = longest.get(name, 64)
        at = rng.randint(1, span)
        reenter = tuple(rng.randint(1, span) for _ in range(3))
        try:
            lines = tracer.run(op, raise_at=at, reenter_at=reenter)
        except Injected:
            tally["interrupted"] += 1
        else:
            tally["completed"] += 1
            longest[name] = max(span, lines)
        tally["reentries"] += sum(r <= tracer.lines for r in reenter)
        work.intact()
        for addr in spare:
            assert ctypes.string_at(addr, 8) == addr.to_bytes(8, "little")
    # ... and it keeps working: everything frees, check() passes, all of it again.
    for addr in spare:
        heap.free(addr)
    work.buffers.clear()
    work.pop.free_all()
    Population(heap).intact()
    return tally


@pytest.mark.parametrize("seed", range(4))
def test_interrupted_anywhere_and_reentered(seed: int) -> None:
    with realalloc.Heap(zero=bool(seed & 1)) as heap:
        tally = interrupt_many(heap, seed, rounds=800)
    # The injection reached the slow paths: most operations were cut short.
    assert tally["interrupted"] > 300, tally
    assert tally["reentries"] > 1000, tally


def test_interrupted_heap_life() -> None:
    """Heap(), first use and close() cut short at random lines: no heap slot
    is lost or given twice, a closed heap stays closed, a new heap works."""
    from realalloc.core import heap as heap_module

    rng = random.Random(7)
    tracer = Injector()
    free_slots = len(heap_module._free_slots)
    longest = 200
    made: list[realalloc.Heap] = []

    def life() -> None:
        made.append(realalloc.Heap(background_scavenger=rng.random() < 0.5))
        made[0].free(made[0].malloc(rng.choice(Workload.SIZES)))
        made[0].close()

    for _ in range(300):
        try:
            lines = tracer.run(life, raise_at=rng.randint(1, longest))
            longest = max(longest, lines)
        except Injected:
            pass
        if made:
            made[0].close()  # finishes an interrupted close, or closes
            assert made[0].closed
            with pytest.raises(realalloc.HeapClosedError):
                made[0].malloc(8)
        made.clear()  # an unfinished Heap() was dropped: its __del__ gives the slot back
        assert len(heap_module._free_slots) == free_slots
        assert len(set(heap_module._free_slots)) == free_slots
    Population(realalloc.Heap()).intact()
