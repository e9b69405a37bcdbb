"""A catalogue of misuse, one table row per kind.

Each row provokes one mistake against a heap that holds a population of live
objects (tiny, small, large; scan and noscan), names the exception class it must
raise (a ``realalloc.RealAllocError`` subclass, or ``BufferError`` where the API
says so) and a regex its message must match; the regex names the bad value or
address.  After every row the heap passes ``check()`` and every live object still
holds its pattern: a refused call changed nothing.

Rows marked xfail are known bugs (see their reason); the last tests run, in a
child process, misuse that once crashed the interpreter.
"""

from __future__ import annotations

import ctypes
import re
import resource
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import Population, addr_re

import realalloc
from realalloc.core.sizeclasses import PAGE_SIZE, roundupsize, size_to_class
from realalloc.tools.stress import StressConfig, load_replay

MIB = 1 << 20
M64 = (1 << 64) - 1


class Catalogue(Population):
    """The live objects every row must leave intact."""

    KINDS = ((2, False), (7, False), (13, False), (8, True), (48, True), (64, False))
    KINDS += ((512, True), (4000, False), (32768, True), (40000, False), (300000, True))

    def __init__(self, heap: realalloc.Heap) -> None:
        super().__init__(heap, self.KINDS, copies=2)


class Ctx:
    """What a row needs: the heap, its population, a scratch directory, and a place
    to note the bad address or value that the message must name."""

    def __init__(self, heap: realalloc.Heap, pop: Population, tmp: Path) -> None:
        self.heap = heap
        self.pop = pop
        self.tmp = tmp
        self.bad: Any = None
        self.cleanups: list[Callable[[], object]] = []

    def note(self, value: Any) -> Any:
        self.bad = value
        return value

    def live(self, size: int, scan: bool = False) -> int:
        """A new live object (part of the population, so it is checked afterwards)."""
        return self.pop.add(size, scan)

    def freed(self, size: int, scan: bool = False) -> int:
        """The address of an object that was allocated and freed."""
        addr = self.heap.malloc(size, scan=scan)
        self.heap.free(addr)
        return self.note(addr)

    def other_heap(self) -> realalloc.Heap:
        h = realalloc.Heap(background_scavenger=False)
        self.cleanups.append(h.close)
        return h

    def closed_heap(self) -> realalloc.Heap:
        h = realalloc.Heap(background_scavenger=False)
        self.note(h.malloc(64))
        h.close()
        return h

    def file(self, name: str, text: str) -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def manual_span(self) -> Any:
        span = self.heap.mheap.alloc_manual(2)
        self.cleanups.append(lambda: self.heap.mheap.free_manual(span))
        return span

    def ctypes_memory(self, n: int) -> int:
        """The address of memory Python owns (kept alive until the cleanups run)."""
        buf = ctypes.create_string_buffer(n)
        self.cleanups.append(lambda: buf)
        return self.note(ctypes.addressof(buf))

    def buffer(self, size: int = 100) -> Any:
        buf = self.heap.alloc(size)
        self.note(buf.address)
        return buf


# -- rows whose provocation takes more than an expression --------------------------------


def buffer_read_after_free(c: Ctx) -> None:
    buf = c.buffer()
    buf.free()
    bytes(buf)


def buffer_view_after_free(c: Ctx) -> None:
    buf = c.buffer(64)
    buf.free()
    memoryview(buf)


def buffer_freed_twice(c: Ctx) -> None:
    buf = c.buffer(5)
    buf.free()
    buf.free()


def buffer_freed_while_viewed(c: Ctx) -> None:
    buf = c.buffer(64)
    view = memoryview(buf)
    c.cleanups.append(buf.free)
    c.cleanups.append(view.release)  # run in reverse: release, then free
    buf.free()


def heap_closed_while_a_view_is_exported(c: Ctx) -> None:
    h = c.other_heap()
    buf = h.alloc(32)
    c.note(buf.address)
    view = memoryview(buf)
    c.cleanups.append(view.release)
    h.close()


def buffer_used_after_its_heap_closed(c: Ctx) -> None:
    h = c.other_heap()
    buf = h.alloc(32)
    c.note(buf.address)
    h.close()
    len(buf)


def free_of_a_manual_span(c: Ctx) -> None:
    c.heap.free(c.note(c.manual_span().base))


def free_manual_twice(c: Ctx) -> None:
    span = c.heap.mheap.alloc_manual(3)
    c.heap.mheap.free_manual(span)
    c.note(span.base)
    c.heap.mheap.free_manual(span)


def free_of_a_slot_never_handed_out(c: Ctx) -> None:
    addr = c.live(512, True)
    info = c.heap.span_of(addr)
    c.heap.free(c.note(info.base + (info.nelems - 1) * info.elemsize))


def malloc_over_the_memory_limit(c: Ctx) -> None:
    c.heap.set_memory_limit(c.note(4 * MIB))
    c.cleanups.append(lambda: c.heap.set_memory_limit(None))
    c.heap.malloc(64 * MIB)


def realloc_of_a_freed_large_object(c: Ctx) -> None:
    c.heap.realloc(c.freed(40000), 50000)


def free_of_a_page_inside_a_freed_large_object(c: Ctx) -> None:
    base = c.heap.malloc(5 * PAGE_SIZE)
    c.heap.free(base)
    c.heap.free(c.note(base + 2 * PAGE_SIZE))


def free_on_another_heap(c: Ctx) -> None:
    other = c.other_heap()
    theirs = other.malloc(64)
    c.cleanups.append(lambda: other.free(theirs))
    c.heap.free(c.note(theirs))


def free_in_another_heap_of_a_live_object_of_ours(c: Ctx) -> None:
    mine = c.note(c.live(40000))
    c.other_heap().free(mine)


def buffer_made_by_hand(c: Ctx) -> None:
    """A Buffer exists only through Heap.alloc: a second Buffer over a live
    object would free it again when collected."""
    addr = c.heap.malloc(8)
    c.cleanups.append(lambda: c.heap.free(addr))
    realalloc.Buffer(c.heap, addr, 8)  # type: ignore[call-arg]


# -- the table ---------------------------------------------------------------------------

ADDR = "{addr}"  # in a regex: the noted address, in hex


@dataclass(frozen=True)
class Misuse:
    id: str
    provoke: Callable[[Ctx], object]
    exc: type[BaseException]
    match: str
    bug: str = ""  # a known bug: the row is expected to fail


E = realalloc
ROWS = [
    # wrong types
    Misuse("malloc-size-str", lambda c: c.heap.malloc("16"), E.ArgumentTypeError,
           r"size must be an int, not str \('16'\)"),
    Misuse("malloc-size-float", lambda c: c.heap.malloc(16.0), E.ArgumentTypeError,
           r"size must be an int, not float \(16\.0\)"),
    Misuse("malloc-size-bool", lambda c: c.heap.malloc(True), E.ArgumentTypeError,
           r"size must be an int, not bool \(True\)"),
    Misuse("malloc-scan-int", lambda c: c.heap.malloc(64, scan=1), E.ArgumentTypeError,
           r"scan must be a bool, not int"),
    Misuse("alloc-zero-none", lambda c: c.heap.alloc(64, zero=None), E.ArgumentTypeError,
           r"zero must be a bool, not NoneType"),
    Misuse("free-none", lambda c: c.heap.free(None), E.ArgumentTypeError,
           r"free: address must be an int, not NoneType"),
    Misuse("free-float-address", lambda c: c.heap.free(float(c.live(64))), E.ArgumentTypeError,
           r"address must be an int, not float"),
    Misuse("realloc-size-list", lambda c: c.heap.realloc(c.live(64), [128]),
           E.ArgumentTypeError, r"size must be an int, not list \(\[128\]\)"),
    Misuse("span-of-str", lambda c: c.heap.span_of("0x1000"), E.ArgumentTypeError,
           r"addr must be an int, not str \('0x1000'\)"),
    Misuse("alloc-manual-float", lambda c: c.heap.mheap.alloc_manual(2.0), E.ArgumentTypeError,
           r"npages must be an int, not float \(2\.0\)"),
    # negative, zero where invalid, absurd
    Misuse("malloc-negative", lambda c: c.heap.malloc(-5), E.InvalidArgumentError,
           r"size must be >= 0, got -5"),
    Misuse("alloc-negative", lambda c: c.heap.alloc(-1, scan=True), E.InvalidArgumentError,
           r"size must be >= 0, got -1"),
    Misuse("realloc-negative", lambda c: c.heap.realloc(c.live(100), -7), E.InvalidArgumentError,
           r"size must be >= 0, got -7"),
    Misuse("malloc-absurd", lambda c: c.heap.malloc(1 << 60), E.OutOfMemoryError,
           r"(?i)malloc\(0x0*1000000000000000\)"),
    Misuse("malloc-2**64-1", lambda c: c.heap.malloc(M64), E.OutOfMemoryError,
           r"(?i)0xf{16}"),
    Misuse("alloc-beyond-physical-memory", lambda c: c.heap.alloc(1 << 45), E.OutOfMemoryError,
           r"(?i)cannot grow the heap by 4294967296 pages \(0x200000000000 bytes\)"),
    Misuse("realloc-absurd", lambda c: c.heap.realloc(c.live(3000), 1 << 50), E.OutOfMemoryError,
           r"(?i)0x0*4000000000000"),
    Misuse("alloc-manual-zero", lambda c: c.heap.mheap.alloc_manual(0), E.InvalidArgumentError,
           r"npages must be >= 1, got 0"),
    Misuse("alloc-manual-negative", lambda c: c.heap.mheap.alloc_manual(-3),
           E.InvalidArgumentError, r"npages must be >= 1, got -3"),
    Misuse("alloc-manual-absurd", lambda c: c.heap.mheap.alloc_manual(1 << 40),
           E.InvalidArgumentError, r"npages must be <= 0x200000000, got 0x10000000000"),
    Misuse("scavenge-negative", lambda c: c.heap.scavenge(-1), E.InvalidArgumentError,
           r"nbytes must be >= 0, got -1"),
    Misuse("scavenge-str", lambda c: c.heap.scavenge("all"), E.ArgumentTypeError,
           r"nbytes must be an int, not str \('all'\)"),
    Misuse("memory-limit-negative", lambda c: c.heap.set_memory_limit(-4096),
           E.InvalidArgumentError, r"nbytes must be >= 0, got -4096"),
    Misuse("memory-limit-float", lambda c: c.heap.set_memory_limit(1.5e9), E.ArgumentTypeError,
           r"nbytes must be an int, not float \(1500000000\.0\)"),
    Misuse("malloc-over-memory-limit", malloc_over_the_memory_limit, E.OutOfMemoryError,
           r"exceed the memory limit of 4194304 bytes"),
    Misuse("span-of-negative", lambda c: c.heap.span_of(-1), E.InvalidArgumentError,
           r"addr must be >= 0, got -1"),
    Misuse("span-of-beyond-64-bits", lambda c: c.heap.span_of(1 << 64), E.InvalidArgumentError,
           r"addr must be <= 0xffffffffffffffff, got 0x10000000000000000"),
    Misuse("size-to-class-negative", lambda c: size_to_class(-8), E.InvalidArgumentError,
           r"size must be >= 0, got -8"),
    Misuse("roundupsize-str", lambda c: roundupsize("8"), E.ArgumentTypeError,
           r"size must be an int, not str"),
    # bad pointers
    Misuse("double-free-tiny", lambda c: c.heap.free(c.freed(5)), E.DoubleFreeError,
           rf"free\({ADDR}\)"),
    Misuse("double-free-small", lambda c: c.heap.free(c.freed(64, True)), E.DoubleFreeError,
           rf"free\({ADDR}\)"),
    Misuse("double-free-32k", lambda c: c.heap.free(c.freed(32768)), E.InvalidPointerError,
           rf"free\({ADDR}\)"),
    Misuse("double-free-large", lambda c: c.heap.free(c.freed(300000, True)), E.DoubleFreeError,
           rf"free\({ADDR}\): the large object was already freed"),
    Misuse("interior-small", lambda c: c.heap.free(c.note(c.live(64, True) + 8)),
           E.InteriorPointerError, rf"free\({ADDR}\): points 8 bytes into the 64-byte object"),
    Misuse("interior-tiny", lambda c: c.heap.free(c.note(c.live(12) + 3)),
           E.InteriorPointerError, rf"free\({ADDR}\): points 3 bytes into the tiny object"),
    Misuse("interior-large", lambda c: c.heap.free(c.note(c.live(40000) + PAGE_SIZE + 16)),
           E.InteriorPointerError, rf"free\({ADDR}\): points {PAGE_SIZE + 16} bytes into"),
    Misuse("foreign-ctypes-memory", lambda c: c.heap.free(c.ctypes_memory(64)),
           E.ForeignPointerError, rf"free\({ADDR}\): not an address of this heap"),
    Misuse("foreign-null", lambda c: c.heap.free(c.note(0)), E.ForeignPointerError,
           r"free\(0x0\)"),
    Misuse("foreign-negative", lambda c: c.heap.free(-16), E.ForeignPointerError,
           r"free\(-0x10\)"),
    Misuse("foreign-beyond-64-bits", lambda c: c.heap.free(1 << 64), E.ForeignPointerError,
           r"(?i)free\(0x10000000000000000\)"),
    Misuse("pointer-from-another-heap", free_on_another_heap, E.ForeignPointerError,
           rf"free\({ADDR}\): the address belongs to another heap"),
    Misuse("our-pointer-freed-on-another-heap", free_in_another_heap_of_a_live_object_of_ours,
           E.ForeignPointerError, rf"free\({ADDR}\): the address belongs to another heap"),
    Misuse("free-page-of-a-freed-large-object", free_of_a_page_inside_a_freed_large_object,
           E.ForeignPointerError, rf"free\({ADDR}\): inside a freed large object at 0x[0-9a-f]+"),
    Misuse("free-of-a-manual-span", free_of_a_manual_span, E.ForeignPointerError,
           rf"free\({ADDR}\): inside pages handed out whole"),
    Misuse("free-of-a-never-allocated-slot", free_of_a_slot_never_handed_out,
           E.InvalidPointerError, rf"free\({ADDR}\)"),
    Misuse("free-manual-twice", free_manual_twice, E.InvalidArgumentError,
           rf"MSpan #\d+ FREE base={ADDR} npages=3 .*is not a live MANUAL span"),
    Misuse("realloc-of-freed", lambda c: c.heap.realloc(c.freed(100), 1000), E.DoubleFreeError,
           rf"realloc\({ADDR}\)"),
    Misuse("realloc-of-freed-large", realloc_of_a_freed_large_object, E.DoubleFreeError,
           rf"realloc\({ADDR}\)"),
    Misuse("realloc-interior", lambda c: c.heap.realloc(c.note(c.live(256) + 16), 512),
           E.InteriorPointerError, rf"realloc\({ADDR}\)"),
    Misuse("usable-size-of-freed", lambda c: c.heap.usable_size(c.freed(24, True)),
           E.DoubleFreeError, rf"usable_size\({ADDR}\)"),
    # use after close
    Misuse("malloc-after-close", lambda c: c.closed_heap().malloc(64), E.HeapClosedError,
           r"the heap is closed"),
    Misuse("free-after-close", lambda c: c.closed_heap().free(c.bad), E.HeapClosedError,
           r"the heap is closed"),
    Misuse("scavenge-after-close", lambda c: c.closed_heap().scavenge(), E.HeapClosedError,
           r"the heap is closed"),
    Misuse("alloc-manual-after-close", lambda c: c.closed_heap().mheap.alloc_manual(1),
           E.HeapClosedError, r"heap \d+ is closed"),
    # Buffers
    Misuse("buffer-read-after-free", buffer_read_after_free, E.BufferFreedError,
           rf"Buffer of 100 bytes at {ADDR} was freed"),
    Misuse("buffer-view-after-free", buffer_view_after_free, E.BufferFreedError,
           rf"Buffer of 64 bytes at {ADDR} was freed"),
    Misuse("buffer-freed-twice", buffer_freed_twice, E.BufferFreedError,
           rf"Buffer of 5 bytes at {ADDR} was freed"),
    Misuse("buffer-freed-while-viewed", buffer_freed_while_viewed, BufferError,
           rf"cannot free Buffer at {ADDR}: 1 exported view"),
    Misuse("heap-closed-while-a-view-is-exported", heap_closed_while_a_view_is_exported,
           BufferError, r"cannot close the heap: 1 exported view\(s\) of its Buffers"),
    Misuse("buffer-after-its-heap-closed", buffer_used_after_its_heap_closed,
           E.BufferFreedError, rf"Buffer of 32 bytes at {ADDR} was freed"),
    Misuse("buffer-made-by-hand", buffer_made_by_hand,
           E.ArgumentTypeError, r"Buffer objects are made by Heap\.alloc\(size\)"),
    # stress options, replay files, fault switch
    Misuse("stress-threads-0", lambda c: StressConfig(threads=0).check(), E.InvalidArgumentError,
           r"threads must be >= 1, got 0"),
    Misuse("stress-threads-float", lambda c: StressConfig(threads=2.5).check(),
           E.ArgumentTypeError, r"threads must be an int, not float \(2\.5\)"),
    Misuse("stress-ops-negative", lambda c: StressConfig(ops=-1).check(), E.InvalidArgumentError,
           r"ops must be >= 1, got -1"),
    Misuse("stress-duration-0", lambda c: StressConfig(duration=0).check(),
           E.InvalidArgumentError, r"duration must be in \(0, 86400\] seconds, got 0"),
    Misuse("stress-scan-ratio", lambda c: StressConfig(scan_ratio=1.5).check(),
           E.InvalidArgumentError, r"scan_ratio must be between 0 and 1, got 1\.5"),
    Misuse("stress-cross-free-nan", lambda c: StressConfig(cross_free=float("nan")).check(),
           E.InvalidArgumentError, r"cross_free must be between 0 and 1, got nan"),
    Misuse("stress-distribution", lambda c: StressConfig(distribution="zipf").check(),
           E.InvalidArgumentError, r"distribution must be one of .*got 'zipf'"),
    Misuse("stress-replay-without-sizes", lambda c: StressConfig(distribution="replay").check(),
           E.InvalidArgumentError, r"the replay distribution needs a file of sizes"),
    Misuse("stress-live-0", lambda c: StressConfig(live=0).check(), E.InvalidArgumentError,
           r"live must be >= 1, got 0"),
    Misuse("stress-fault-every-negative", lambda c: StressConfig(fault_every=-1).check(),
           E.InvalidArgumentError, r"fault_every must be >= 0, got -1"),
    Misuse("replay-malformed", lambda c: load_replay(c.file("r.txt", "# x\n64\n12k scan\n")),
           E.InvalidArgumentError, r"r\.txt:3: size '12k' is not an integer"),
    Misuse("replay-bad-flag", lambda c: load_replay(c.file("f.txt", "\n\n64 maybe\n")),
           E.InvalidArgumentError, r"f\.txt:3: expected 'SIZE \[scan\|noscan\]'"),
    Misuse("replay-out-of-range", lambda c: load_replay(c.file("o.txt", f"{(1 << 32) + 1}\n")),
           E.InvalidArgumentError, r"o\.txt:1: size 4294967297 out of range"),
    Misuse("replay-empty", lambda c: load_replay(c.file("e.txt", "# nothing\n\n")),
           E.InvalidArgumentError, r"e\.txt: no sizes"),
    Misuse("replay-missing", lambda c: load_replay(str(c.tmp / "gone.txt")),
           E.InvalidArgumentError, r"cannot read replay file .*gone\.txt"),
    Misuse("fault-op-unknown", lambda c: realalloc.inject_faults("mmap", 1),
           E.InvalidArgumentError, r"fault op must be one of .*got 'mmap'"),
    Misuse("fault-hits-op-unknown", lambda c: realalloc.fault_hits("RELEASE"),
           E.InvalidArgumentError, r"got 'RELEASE'"),
    Misuse("fault-count-negative", lambda c: realalloc.inject_faults("reserve", -2),
           E.InvalidArgumentError, r"nfail must be >= 0, got -2"),
]  # fmt: skip


@pytest.fixture
def heap():
    h = realalloc.Heap(background_scavenger=False)
    try:
        yield h
    finally:
        for op in ("reserve", "commit", "release"):
            realalloc.inject_faults(op, 0)
        h.close()


@pytest.mark.parametrize(
    "row",
    [
        pytest.param(r, id=r.id, marks=[pytest.mark.xfail(strict=True, reason=r.bug)] * bool(r.bug))
        for r in ROWS
    ],
)
def test_misuse(heap, tmp_path, row):
    pop = Catalogue(heap)
    pop.intact()
    c = Ctx(heap, pop, tmp_path)
    faults = {op: realalloc.fault_hits(op) for op in ("reserve", "commit", "release")}
    try:
        with pytest.raises(row.exc) as info:
            row.provoke(c)
    finally:
        for cleanup in reversed(c.cleanups):
            cleanup()
    err = info.value
    if row.exc is not BufferError:
        assert isinstance(err, realalloc.RealAllocError), type(err).__mro__
    expected = row.match
    if ADDR in expected:
        assert isinstance(c.bad, int), "the row did not note its bad address"
        expected = expected.replace(ADDR, addr_re(c.bad))
    assert re.search(expected, str(err)), f"{type(err).__name__}: {err}  !~  {expected}"
    # nothing changed: every live object intact, every invariant holds, no fault armed
    pop.intact()
    heap.check()
    assert {op: realalloc.fault_hits(op) for op in faults} == faults
    for addr in pop.objs:
        heap.free(addr)
    heap.check()
    st = heap.stats()
    assert st.large_allocs == st.large_frees
    assert st.tiny_pieces == st.tiny_frees


def test_the_catalogue_covers_enough_kinds():
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids))
    assert len(ROWS) >= 20
    exceptions = {r.exc for r in ROWS}
    for cls in (
        realalloc.ArgumentTypeError,
        realalloc.InvalidArgumentError,
        realalloc.OutOfMemoryError,
        realalloc.DoubleFreeError,
        realalloc.InteriorPointerError,
        realalloc.ForeignPointerError,
        realalloc.InvalidPointerError,
        realalloc.HeapClosedError,
        realalloc.BufferFreedError,
        BufferError,
    ):
        assert cls in exceptions, cls


# -- misuse that crashes the interpreter today (run in a child process) -------------------

CRASHERS = {  # name -> (code, how many failed frees it reports as unraisable)
    "buffer-freed-by-address-then-dropped": (
        """
        b = h.alloc(64)
        h.free(b.address)   # the Buffer's memory freed behind its back
        del b               # its finaliser frees it again
        """,
        1,
    ),
    "buffer-over-foreign-memory-refused": (
        """
        try:
            realalloc.Buffer(h, 0x1000, 16)   # only Heap.alloc makes Buffers
        except realalloc.ArgumentTypeError:
            pass
        """,
        0,
    ),
}


def small_stack() -> None:
    """In the child: a 1 MiB stack, so that endless recursion crashes in a second or
    two rather than after filling the default 8 MiB."""
    resource.setrlimit(resource.RLIMIT_STACK, (MIB, resource.getrlimit(resource.RLIMIT_STACK)[1]))


@pytest.mark.parametrize("name", list(CRASHERS))
def test_dropping_a_buffer_whose_free_fails_does_not_crash(name):
    code = "import realalloc\nh = realalloc.Heap(background_scavenger=False)\n"
    body, unraisable = CRASHERS[name]
    code += textwrap.dedent(body) + "h.check()\nprint('survived')\n"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=small_stack,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-600:]}"
    assert proc.stdout.strip() == "survived"
    # a failed free is reported once, as an unraisable error naming the problem
    assert proc.stderr.count("Exception ignored") == unraisable, proc.stderr[-600:]
