"""Property: after a cycle exactly the objects reachable from the roots survive.

Hypothesis draws a graph: objects of every kind (tiny noscan pieces, small
scan and noscan objects, large scan objects), edges written as real words
into scan objects (at any aligned offset, pointing anywhere inside the
target), roots in a root range, pins and Buffers.  No other word looks like
a pointer (scan objects are zeroed; payloads sit in noscan objects), so the
conservative collector must keep exactly the reachable set, plus the other
pieces of a reachable piece's tiny block.  Then the roots change and it
collects again.  check() after each cycle; patterns in noscan objects hold.
"""

from __future__ import annotations

import ctypes

from gc_support import WORD, Roots, live, store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import pattern

import realalloc

KINDS = (  # (size, scan)
    (5, False), (12, False), (16, True), (48, True), (48, False), (256, True),
    (3000, True), (40_000, True), (200_000, False),
)  # fmt: skip


@st.composite
def graphs(
    draw: st.DrawFn,
) -> tuple[list[int], list[tuple[int, int, int, int]], list[int], list[int]]:
    n = draw(st.integers(1, 40))
    kinds = draw(st.lists(st.integers(0, len(KINDS) - 1), min_size=n, max_size=n))
    scan = [i for i in range(n) if KINDS[kinds[i]][1]]
    edges = []
    if scan:
        for _ in range(draw(st.integers(0, 3 * n))):
            src = draw(st.sampled_from(scan))
            dst = draw(st.integers(0, n - 1))
            word = draw(st.integers(0, KINDS[kinds[src]][0] // WORD - 1))
            inner = draw(st.integers(0, KINDS[kinds[dst]][0] - 1))
            edges.append((src, word, dst, inner))
    roots = draw(st.lists(st.integers(0, n - 1), max_size=6))
    later = draw(st.lists(st.integers(0, n - 1), max_size=3))
    return kinds, edges, roots, later


def reachable(n: int, edges: list[tuple[int, int, int, int]], roots: list[int]) -> set[int]:
    out: dict[int, set[int]] = {i: set() for i in range(n)}
    last: dict[tuple[int, int], int] = {}
    for src, word, dst, _ in edges:
        last[(src, word)] = dst  # a later edge overwrites the word
    for (src, _), dst in last.items():
        out[src].add(dst)
    seen, todo = set(), list(roots)
    while todo:
        i = todo.pop()
        if i not in seen:
            seen.add(i)
            todo += out[i]
    return seen


def expected(addrs: list[int], kinds: list[int], seen: set[int]) -> set[int]:
    """Reachable objects, plus every tiny piece sharing a block with one."""
    blocks = {addrs[i] // 16 for i in seen if tiny(kinds[i])}
    return seen | {i for i in range(len(addrs)) if tiny(kinds[i]) and addrs[i] // 16 in blocks}


def objects_of(addrs: list[int], kinds: list[int], ids: set[int]) -> set[tuple[str, int]]:
    """Heap objects holding the nodes ``ids``: a tiny piece counts as its block."""
    return {("block", addrs[i] // 16) if tiny(kinds[i]) else ("object", addrs[i]) for i in ids}


def tiny(kind: int) -> bool:
    size, scan = KINDS[kind]
    return size < 16 and not scan


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_exactly_the_reachable_objects_survive(
    graph: tuple[list[int], list[tuple[int, int, int, int]], list[int], list[int]],
) -> None:
    kinds, edges, root_ids, later = graph
    with realalloc.Heap(gc=True, background_scavenger=False) as heap:
        heap.set_gc_percent(-1)  # the only cycles are the ones below
        addrs = [heap.malloc(KINDS[k][0], scan=KINDS[k][1]) for k in kinds]
        for i, k in enumerate(kinds):
            size, scan = KINDS[k]
            if not scan:
                ctypes.memmove(addrs[i], pattern(addrs[i], i, size), size)
        for src, word, dst, inner in edges:
            store(addrs[src] + word * WORD, addrs[dst] + inner)
        roots = Roots(heap, 8)
        for slot, i in enumerate(root_ids):
            roots[slot] = addrs[i] + (i % 3)  # roots may be interior pointers too
        heap.collect()
        heap.check()
        want = expected(addrs, kinds, reachable(len(kinds), edges, root_ids))
        got = {i for i, a in enumerate(addrs) if live(heap, a)}
        assert got == want
        for i in want:
            size, scan = KINDS[kinds[i]]
            if not scan:
                assert ctypes.string_at(addrs[i], size) == pattern(addrs[i], i, size)
        assert heap.stats().heap_objects == len(objects_of(addrs, kinds, want))
        # New roots among the survivors; the rest goes.
        for slot in range(8):
            roots[slot] = 0
        now = [i for i in later if i in want]
        for slot, i in enumerate(now):
            roots[slot] = addrs[i]
        heap.collect()
        heap.check()
        want2 = expected(addrs, kinds, reachable(len(kinds), edges, now))
        assert {i for i in want if live(heap, addrs[i])} == want2
