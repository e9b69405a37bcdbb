"""The shim's fault switch for each OS call (reserve, commit, release), armed from
Python with ``realalloc.inject_faults(op, nfail, every)`` and from the environment
with ``REALALLOC_FAULTS`` (read at import, so those tests run a subprocess).

For each op: the call that needs the OS (an allocation that grows the heap, or a
scavenge for release) raises ``realalloc.ShimError`` (a MemoryError); the heap stays
consistent (check() passes, every live object keeps its pattern, the counters did
not move); and the same request works once the faults stop.  The background
scavenger keeps running through refused releases.  Faults are process-wide, so
every test turns them off in ``finally``.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from support import Population

import realalloc
from realalloc.core.sizeclasses import ARENA_BYTES, PAGE_SIZE

MIB = 1 << 20
OPS = ("reserve", "commit", "release")


class Live(Population):
    """Live objects of a heap, each with a pattern over its whole usable size."""

    SIZES = (1, 5, 8, 24, 100, 1000, 4000, 32768, 40000, 300000)

    def __init__(self, heap: realalloc.Heap) -> None:
        super().__init__(heap, tuple((s, i % 3 == 0) for i, s in enumerate(self.SIZES)), 2)


@pytest.fixture
def heap():
    h = realalloc.Heap(background_scavenger=False)
    try:
        yield h
    finally:
        for op in OPS:
            realalloc.inject_faults(op, 0)
        h.close()


@pytest.fixture
def live(heap):
    pop = Live(heap)
    pop.intact()
    yield pop
    pop.intact()
    pop.free_all()
    st = heap.stats()
    assert st.tiny_pieces == st.tiny_frees and st.large_allocs == st.large_frees
    assert all(c.mallocs == c.frees for c in st.by_size[3:])  # class 2: the held tiny block


def os_counters(heap: realalloc.Heap) -> tuple[int, ...]:
    st = heap.stats()
    return (st.reserved, st.mapped, st.heap_sys, st.heap_released, st.released_total)


def assert_refused(exc: BaseException, op: str) -> None:
    assert isinstance(exc, realalloc.ShimError)
    assert isinstance(exc, MemoryError)
    assert isinstance(exc, realalloc.OutOfMemoryError)
    assert isinstance(exc, OSError)
    assert exc.errno == errno.ENOMEM
    assert exc.operation == op
    assert f"{op} failed" in str(exc) and "ENOMEM" in str(exc)


# --- reserve and commit: allocations that grow the heap ------------------------------


@pytest.mark.parametrize("op", ["reserve", "commit"])
def test_growth_fault_fails_the_allocation_and_changes_nothing(heap, live, op):
    counters = os_counters(heap)
    stats = heap.stats()
    hits = realalloc.fault_hits(op)
    try:
        realalloc.inject_faults(op, 1)
        with pytest.raises(realalloc.ShimError) as e:
            heap.malloc(100 * MIB)  # more than is free: the heap must grow
        assert_refused(e.value, op)
    finally:
        realalloc.inject_faults(op, 0)
    assert realalloc.fault_hits(op) == hits + 1
    assert os_counters(heap) == counters  # the reserved range was given back
    after = heap.stats()
    assert (after.mallocs, after.heap_objects, after.large_allocs) == (
        stats.mallocs,
        stats.heap_objects,
        stats.large_allocs,
    )
    live.intact()
    # the same request works now, and its memory is real
    addr = heap.malloc(100 * MIB)
    ctypes.memset(addr + 100 * MIB - 4096, 0x7E, 4096)
    assert ctypes.string_at(addr + 100 * MIB - 16, 16) == b"\x7e" * 16
    assert heap.stats().reserved > counters[0]
    heap.free(addr)
    live.intact()


@pytest.mark.parametrize("op", ["reserve", "commit"])
def test_growth_fault_on_a_fresh_heap_for_every_kind_of_object(op):
    with realalloc.Heap(background_scavenger=False) as h:
        calls = {
            "tiny": lambda: h.malloc(5),
            "small noscan": lambda: h.malloc(64),
            "small scan": lambda: h.malloc(64, scan=True),
            "small 32K": lambda: h.malloc(32768),
            "large": lambda: h.malloc(40000),
            "buffer": lambda: h.alloc(100),
        }
        try:
            realalloc.inject_faults(op, 1_000_000)
            for name, call in calls.items():
                with pytest.raises(realalloc.ShimError) as e:
                    call()
                    pytest.fail(f"{name} did not fail")
                assert_refused(e.value, op)
                h.check()
        finally:
            realalloc.inject_faults(op, 0)
        st = h.stats()
        assert (st.reserved, st.mapped, st.heap_objects, st.mallocs) == (0, 0, 0, 0)
        addrs = [call() for name, call in calls.items() if name != "buffer"]
        buf = h.alloc(100)
        for i, a in enumerate(addrs):
            ctypes.memset(a, i + 1, 5)
        with memoryview(buf) as view:
            view[:] = b"\x42" * 100
        for i, a in enumerate(addrs):
            assert ctypes.string_at(a, 5) == bytes([i + 1]) * 5
            h.free(a)
        assert bytes(buf) == b"\x42" * 100
        buf.free()
        h.check()
        assert h.stats().heap_objects <= 1  # this thread's tiny block


@pytest.mark.slow
def test_nfail_then_every(heap, live):
    """inject_faults("reserve", 2, 3): the next two reserves fail, then every third.
    Each 40 MiB object needs a new 64 MiB arena, so each attempt is one reserve."""
    big = [heap.malloc(40 * MIB, zero=False)]  # the first arena cannot hold another
    results = []
    try:
        realalloc.inject_faults("reserve", 2, 3)
        for _ in range(8):
            try:
                big.append(heap.malloc(40 * MIB, zero=False))
                results.append("ok")
            except realalloc.ShimError as exc:
                assert_refused(exc, "reserve")
                results.append("fail")
            heap.check()
    finally:
        realalloc.inject_faults("reserve", 0)
    assert results == ["fail", "fail", "ok", "ok", "fail", "ok", "ok", "fail"]
    assert heap.stats().reserved == ARENA_BYTES * (1 + results.count("ok"))
    for i, a in enumerate(big):
        ctypes.memset(a, i, 64)
    for i, a in enumerate(big):
        assert ctypes.string_at(a, 64) == bytes([i]) * 64
        heap.free(a)
    live.intact()


def test_realloc_that_must_grow_keeps_the_old_object(heap, live):
    addr = live.add(1000, False, 77)
    data = live.objs[addr]
    try:
        realalloc.inject_faults("commit", 1)
        with pytest.raises(realalloc.ShimError) as e:
            heap.realloc(addr, 100 * MIB)
        assert_refused(e.value, "commit")
    finally:
        realalloc.inject_faults("commit", 0)
    assert heap.usable_size(addr) == len(data)
    live.intact()  # still live, still its bytes
    new = heap.realloc(addr, 100 * MIB)
    assert ctypes.string_at(new, len(data)) == data
    del live.objs[addr]
    heap.free(new)
    live.intact()


def test_growth_faults_on_many_threads(heap, live):
    """Threads that each grow the heap while every commit fails: all of them get
    ShimError and nothing is left half-built."""
    errors: list[BaseException] = []
    outcomes: list[str] = []
    lock = threading.Lock()

    def grow() -> None:
        try:
            heap.malloc(80 * MIB, zero=False)
            result = "allocated"
        except realalloc.ShimError as exc:
            result = exc.operation
        except BaseException as exc:
            errors.append(exc)
            return
        with lock:
            outcomes.append(result)

    counters = os_counters(heap)
    try:
        realalloc.inject_faults("commit", 1_000_000)
        threads = [threading.Thread(target=grow) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
    finally:
        realalloc.inject_faults("commit", 0)
    assert not errors, errors
    assert outcomes == ["commit"] * 8
    assert os_counters(heap) == counters
    live.intact()


def test_memory_limit_scavenge_refused_fails_the_allocation(heap, live):
    """Under a memory limit an allocation first releases free pages; when the OS
    refuses, the allocation fails with ShimError and nothing changes."""
    blocks = [heap.malloc(4 * MIB) for _ in range(6)]
    for b in blocks:
        ctypes.memset(b, 0x11, 4 * MIB)
    for b in blocks:
        heap.free(b)
    st = heap.stats()
    resident = st.mapped - st.heap_released + st.metadata
    heap.set_memory_limit(resident + 2 * MIB)  # 8 MiB more needs a release first
    try:
        counters = os_counters(heap)
        try:
            realalloc.inject_faults("release", 1_000_000)
            with pytest.raises(realalloc.ShimError) as e:
                heap.malloc(8 * MIB)
            assert_refused(e.value, "release")
        finally:
            realalloc.inject_faults("release", 0)
        assert os_counters(heap) == counters
        live.intact()
        addr = heap.malloc(8 * MIB)  # now the release succeeds, and so does this
        assert heap.stats().heap_released > counters[3] - 8 * MIB
        heap.free(addr)
    finally:
        heap.set_memory_limit(None)
    live.intact()


# --- release: scavenging ---------------------------------------------------------------


def make_free_runs(heap: realalloc.Heap, n: int = 8, size: int = 2 * MIB) -> list[int]:
    """n separate runs of free, resident pages (every other object of 2n freed)."""
    objs = [heap.malloc(size) for _ in range(2 * n)]
    for a in objs:
        ctypes.memset(a, 0x33, size)
    for a in objs[::2]:
        heap.free(a)
    heap.check()
    return objs[1::2]


def test_release_fault_fails_scavenge_and_changes_nothing(heap, live):
    keep = make_free_runs(heap)
    st = heap.stats()
    assert st.heap_idle > st.heap_released  # free resident pages to give back
    counters = os_counters(heap)
    hits = realalloc.fault_hits("release")
    try:
        realalloc.inject_faults("release", 1_000_000)
        for call in (heap.scavenge, lambda: heap.scavenge(PAGE_SIZE)):
            with pytest.raises(realalloc.ShimError) as e:
                call()
            assert_refused(e.value, "release")
            assert os_counters(heap) == counters
            live.intact()
        assert heap.scavenge(0) == 0  # nothing asked: no OS call
    finally:
        realalloc.inject_faults("release", 0)
    assert realalloc.fault_hits("release") >= hits + 2
    assert heap.stats().heap_released == st.heap_released
    released = heap.scavenge()
    assert released > 0
    after = heap.stats()
    assert after.heap_released == st.heap_released + released == after.heap_idle
    assert after.released_total == st.released_total + released
    for a in keep:
        heap.free(a)
    live.intact()


def test_release_fault_in_the_middle_of_a_scavenge(heap, live):
    """Every second release refused: a scavenge releases one run, then fails on the
    next; what it released is counted, the rest is released by a later scavenge."""
    keep = make_free_runs(heap)
    before = heap.stats()
    try:
        realalloc.inject_faults("release", 0, 2)
        with pytest.raises(realalloc.ShimError) as e:
            heap.scavenge()
        assert_refused(e.value, "release")
    finally:
        realalloc.inject_faults("release", 0)
    partial = heap.stats()
    assert partial.heap_released > before.heap_released  # the first run went back
    assert partial.heap_released < partial.heap_idle  # but not all of them
    assert partial.released_total - before.released_total == (
        partial.heap_released - before.heap_released
    )
    live.intact()
    rest = heap.scavenge()
    final = heap.stats()
    assert rest > 0
    assert final.heap_released == partial.heap_released + rest == final.heap_idle
    for a in keep:
        heap.free(a)
    live.intact()


def test_background_scavenger_survives_release_faults():
    heap = realalloc.Heap(background_scavenger=True)
    try:
        live = Live(heap)
        hits = realalloc.fault_hits("release")
        try:
            realalloc.inject_faults("release", 1_000_000)
            big = [heap.malloc(4 * MIB) for _ in range(10)]
            for a in big:
                ctypes.memset(a, 0x44, 4 * MIB)
            for a in big:
                heap.free(a)
            held = heap.stats().heap_released
            deadline = time.monotonic() + 20
            while realalloc.fault_hits("release") < hits + 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert realalloc.fault_hits("release") >= hits + 3, "the scavenger never tried"
            assert heap._scavenger.failures >= 3
            assert heap._scavenger._thread.is_alive()
            assert heap.stats().heap_released == held  # nothing was released
            live.intact()
        finally:
            realalloc.inject_faults("release", 0)
        deadline = time.monotonic() + 20
        while heap.stats().heap_released <= held and time.monotonic() < deadline:
            time.sleep(0.02)
        st = heap.stats()
        assert st.heap_released > held, "the scavenger did not release after the faults"
        assert heap._scavenger.released > 0
        assert heap._scavenger._thread.is_alive()
        live.intact()
        live.free_all()
    finally:
        heap.close()
    assert not heap._scavenger._thread.is_alive()


# --- arguments of inject_faults ---------------------------------------------------------


@pytest.mark.parametrize("op", ["mmap", "Reserve", "", "release "])
def test_unknown_fault_op(op):
    for call in (lambda: realalloc.inject_faults(op, 1), lambda: realalloc.fault_hits(op)):
        with pytest.raises(realalloc.InvalidArgumentError, match=rf"fault op .*got {op!r}"):
            call()


@pytest.mark.parametrize(
    ("args", "exc", "message"),
    [
        ((-1, 0), realalloc.InvalidArgumentError, r"nfail must be >= 0, got -1"),
        ((0, -3), realalloc.InvalidArgumentError, r"every must be >= 0, got -3"),
        ((1 << 70, 0), realalloc.InvalidArgumentError, r"nfail must be <= 0x7f+, got 0x40+"),
        ((1.5, 0), realalloc.ArgumentTypeError, r"nfail must be an int, not float \(1\.5\)"),
        ((1, "2"), realalloc.ArgumentTypeError, r"every must be an int, not str"),
        ((True, 0), realalloc.ArgumentTypeError, r"nfail must be an int, not bool"),
    ],
)
def test_bad_fault_counts(args, exc, message):
    hits = realalloc.fault_hits("commit")
    try:
        with pytest.raises(exc, match=message):
            realalloc.inject_faults("commit", *args)
        # refused before arming anything: a growth still works
        with realalloc.Heap(background_scavenger=False) as h:
            h.free(h.malloc(64))
    finally:
        realalloc.inject_faults("commit", 0)
    assert realalloc.fault_hits("commit") == hits


# --- REALALLOC_FAULTS --------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import ctypes, json, sys
    import realalloc

    MIB = 1 << 20
    h = realalloc.Heap(background_scavenger=False)
    out = {"import_hits": {op: realalloc.fault_hits(op) for op in ("reserve", "commit", "release")}}

    def attempt(call):
        try:
            call()
            return "ok"
        except realalloc.ShimError as exc:
            return exc.operation

    if sys.argv[1] == "grow":
        # every 40 MiB object needs a new arena: one reserve and one commit each
        out["results"] = [attempt(lambda: h.malloc(40 * MIB, zero=False)) for _ in range(5)]
    else:
        objs = [h.malloc(2 * MIB) for _ in range(8)]
        for a in objs:
            ctypes.memset(a, 1, 2 * MIB)
        for a in objs[::2]:
            h.free(a)
        out["results"] = [attempt(h.scavenge) for _ in range(3)]
    h.check()
    out["hits"] = {op: realalloc.fault_hits(op) for op in ("reserve", "commit", "release")}
    print(json.dumps(out))
    """
)


def run_child(faults: str, mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "REALALLOC_FAULTS": faults}
    return subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("faults", "mode", "results"),
    [
        ("commit=1", "grow", ["commit", "ok", "ok", "ok", "ok"]),
        ("reserve=1", "grow", ["reserve", "ok", "ok", "ok", "ok"]),
        ("release=1", "release", ["release", "ok", "ok"]),
        ("reserve=0:2", "grow", ["ok", "reserve", "ok", "reserve", "ok"]),
        (" reserve = 1 , commit=1:3 ", "grow", ["reserve", "commit", "ok", "ok", "commit"]),
        ("commit=2,release=0", "grow", ["commit", "commit", "ok", "ok", "ok"]),
        ("", "grow", ["ok"] * 5),
    ],
)
def test_faults_from_the_environment(faults, mode, results):
    proc = run_child(faults, mode)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # importing realalloc (which makes a default heap) makes no OS call
    assert out["import_hits"] == {"reserve": 0, "commit": 0, "release": 0}
    assert out["results"] == results
    hits = out["hits"]
    for op in ("reserve", "commit", "release"):
        assert hits[op] == results.count(op), (op, hits)


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        ("commit=abc", r"bad REALALLOC_FAULTS entry 'commit=abc'.*'abc'"),
        ("bogus=1", r"bad REALALLOC_FAULTS entry 'bogus=1'.*fault op must be one of .*'bogus'"),
        ("commit=-1", r"bad REALALLOC_FAULTS entry 'commit=-1'.*nfail must be >= 0, got -1"),
        ("release=1:-2", r"bad REALALLOC_FAULTS entry 'release=1:-2'.*every must be >= 0"),
        ("commit=1:x", r"bad REALALLOC_FAULTS entry 'commit=1:x'"),
        ("commit=1:2:3", r"bad REALALLOC_FAULTS entry 'commit=1:2:3'"),
        ("reserve=1,=2", r"bad REALALLOC_FAULTS entry '=2'"),
        ("commit=1.5", r"bad REALALLOC_FAULTS entry 'commit=1\.5'"),
        ("commit", r"bad REALALLOC_FAULTS entry 'commit'"),
    ],
)
def test_malformed_environment_is_a_clear_error(faults, message):

    proc = run_child(faults, "grow")
    assert proc.returncode == 1
    assert proc.stdout == ""
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("realalloc.InvalidArgumentError: "), proc.stderr
    assert re.search(message, last), last
