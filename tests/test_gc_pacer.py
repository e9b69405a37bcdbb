"""When cycles run: Go's pacer (GOGC), set_gc_percent(-1), the memory limit,
and the gctrace line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest
from gc_support import Roots

import realalloc
from realalloc.core.mgc import HEAP_MINIMUM, _ms

MIB = 1 << 20


def steady(
    heap: realalloc.Heap, live: int, garbage: int, size: int = 1024
) -> list[tuple[int, int]]:
    """Keep ``live`` bytes of ``size``-byte scan objects reachable from a root
    array and allocate ``garbage`` bytes more that nothing keeps; return
    (heap_alloc at the start, goal) of each automatic cycle."""
    roots = Roots(heap, live // size)
    for i in range(len(roots)):
        roots[i] = heap.malloc(size, scan=True)
    heap.collect()  # the live set is marked: the goal is set from it
    seen: list[tuple[int, int]] = []
    n = heap.stats().num_gc
    for _ in range(garbage // size):
        heap.malloc(size, scan=True)
        last = heap._gc.last
        if heap._gc.num_gc != n and last is not None:
            n = heap._gc.num_gc
            seen.append((last.heap0, last.goal))
    heap.check()
    return seen


def test_cycles_start_at_the_goal() -> None:
    live = 8 * MIB
    with realalloc.Heap(gc=True, background_scavenger=False) as heap:
        seen = steady(heap, live, 64 * MIB)
        st = heap.stats()
    # GOGC=100: the goal is twice the live heap (plus the root array, Go's globals).
    goal = live + (live + live // 1024 * 8)
    assert all(g == goal for _, g in seen)
    starts = [h0 / goal for h0, _ in seen]
    assert all(1.0 <= s <= 1.01 for s in starts), starts  # within a span or two
    # 64 MiB of garbage, a runway of 8 MiB per cycle: 8 cycles (the last may be pending).
    assert 7 <= len(seen) <= 8
    assert st.num_forced_gc == 1  # the one that marked the live set


@pytest.mark.parametrize("percent", [50, 200])
def test_gogc_scales_the_runway(percent: int) -> None:
    live = 8 * MIB
    with realalloc.Heap(gc=True, background_scavenger=False) as heap:
        assert heap.set_gc_percent(percent) == 100
        seen = steady(heap, live, 48 * MIB)
    goal = live + (live + live // 1024 * 8) * percent // 100
    assert seen and all(g == goal and 1.0 <= h0 / goal <= 1.01 for h0, g in seen), seen
    assert abs(len(seen) - 48 * MIB / (goal - live)) <= 1


def test_small_heaps_collect_at_the_heap_minimum() -> None:
    with realalloc.Heap(gc=True, background_scavenger=False) as heap:
        for _ in range(20_000):
            heap.malloc(1024, scan=True)  # garbage only
        st = heap.stats()
        last = heap._gc.last
        assert last is not None and last.goal == HEAP_MINIMUM
        assert HEAP_MINIMUM <= last.heap0 <= HEAP_MINIMUM * 1.1
        assert st.num_gc == 20_000 * 1024 // HEAP_MINIMUM  # 4 cycles for 20 MB
        assert st.num_forced_gc == 0
        heap.check()


def test_large_objects_trigger_too() -> None:
    with realalloc.Heap(gc=True, background_scavenger=False) as heap:
        for _ in range(40):
            heap.malloc(MIB, scan=True)
        st = heap.stats()
        assert st.num_gc >= 8 and st.heap_alloc <= HEAP_MINIMUM + MIB
        heap.check()


def test_gc_percent_minus_one_turns_automatic_cycles_off() -> None:
    with realalloc.Heap(gc=True, background_scavenger=False) as heap:
        assert heap.set_gc_percent(-1) == 100
        for _ in range(12_000):
            heap.malloc(1024, scan=True)
        st = heap.stats()
        assert st.num_gc == 0 and st.heap_alloc == 12_000 * 1024
        heap.collect()  # still collects when asked
        assert heap.stats().heap_alloc == 0
        assert heap.set_gc_percent(100) == -1
        for _ in range(12_000):
            heap.malloc(1024, scan=True)
        assert heap.stats().num_gc == 3


def test_memory_limit_collects_before_refusing() -> None:
    with realalloc.Heap(gc=True, background_scavenger=False) as heap:
        heap.set_gc_percent(-1)  # only the limit may collect
        roots = Roots(heap, 1000)
        for i in range(1000):
            roots[i] = heap.malloc(1024, scan=True)
        st = heap.stats()
        heap.set_memory_limit(st.heap_sys - st.heap_released + st.metadata + 4 * MIB)
        for _ in range(40 * 1024):  # 40 MiB of garbage under a limit 4 MiB above now
            heap.malloc(1024, scan=True)
        for _ in range(10):
            heap.malloc(2 * MIB)  # large ones too
        st = heap.stats()
        assert st.num_gc >= 8 and st.num_forced_gc == 0
        heap.check()
        assert all(heap.usable_size(roots[i]) == 1024 for i in range(1000))
        # What is reachable cannot be collected: then the limit refuses.
        with pytest.raises(realalloc.OutOfMemoryError, match="memory limit"):
            while True:
                heap.pin(heap.malloc(1024, scan=True))
        heap.check()


def test_memory_limit_without_a_collector_refuses() -> None:
    with realalloc.Heap(background_scavenger=False) as heap:
        st = heap.stats()
        heap.set_memory_limit(st.heap_sys - st.heap_released + st.metadata + 4 * MIB)
        with pytest.raises(realalloc.OutOfMemoryError, match="memory limit"):
            for _ in range(40 * 1024):
                heap.malloc(1024, scan=True)


def test_ms_formats_as_go() -> None:
    # Go's fmtNSAsMS: two significant digits, at most three decimals; whole ms from 10 ms.
    cases = {0: "0", 999: "0", 1000: "0.001", 12_345: "0.012", 123_456: "0.12",
             1_234_567: "1.2", 9_999_999: "9.9", 10_000_000: "10", 123_456_789: "123"}  # fmt: skip
    assert {ns: _ms(ns) for ns in cases} == cases


def test_gctrace_prints_go_lines() -> None:
    script = textwrap.dedent(
        """
        import realalloc
        heap = realalloc.Heap(gc=True, background_scavenger=False)
        for _ in range(10_000):
            heap.malloc(1024, scan=True)
        heap.collect()
        heap.close()
        """
    )
    env = dict(os.environ, REALALLOC_GCTRACE="1")
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    ms = r"\d+(?:\.\d+)?"
    go = re.compile(
        rf"gc (\d+) @\d+\.\d{{3}}s \d+%: {ms}\+{ms}\+{ms} ms clock, {ms}\+0/{ms}/0\+{ms} ms cpu, "
        rf"(\d+)->(\d+)->(\d+) MB, (\d+) MB goal, 0 MB stacks, 0 MB globals, 1 P( \(forced\))?"
    )
    matches = [go.fullmatch(line) for line in lines]
    assert lines and all(matches), lines
    assert [int(m[1]) for m in matches if m] == list(range(1, len(lines) + 1))
    first = matches[0]
    assert first is not None and first[5] == "4" and not first[6]  # at the 4 MB goal
    last = matches[-1]
    assert last is not None and last[6] and last[4] == "0"  # forced, nothing live
