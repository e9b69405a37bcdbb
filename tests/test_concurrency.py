"""One Heap used by many threads at once (8 or more in every test).

Per-thread caches, frees on other threads, threads that end while others still
hold their objects, racing frees of one object, close() while other threads are
idle, and a mixed churn with concurrent stats/scavenge readers.  Every object
holds a pattern derived from its address and a sequence number and is verified
before it is freed; every thread is joined with a timeout (a stuck thread fails the
test instead of hanging it); at the end every object was freed exactly once, the
counters balance, every span went back to the page heap and heap.check() passes.
"""

from __future__ import annotations

import ctypes
import gc
import queue
import random
import sys
import threading
from collections.abc import Callable

import pytest

import realalloc
from realalloc.core.sizeclasses import MAX_SMALL_SIZE, TINY_SIZE

NTHREADS = 8
JOIN_TIMEOUT = 60.0
M64 = (1 << 64) - 1


def pattern(addr: int, seq: int, n: int) -> bytes:
    """n bytes that depend on the address and the sequence number."""
    word = ((addr ^ (seq << 20)) * 0x9E3779B97F4A7C15 + seq) & M64
    unit = word.to_bytes(8, "little") + (word ^ M64).to_bytes(8, "little")[:7]
    return (unit * (n // 15 + 1))[:n]


def fill(addr: int, seq: int, n: int) -> None:
    ctypes.memmove(addr, pattern(addr, seq, n), n)


def intact(addr: int, seq: int, n: int) -> bool:
    return ctypes.string_at(addr, n) == pattern(addr, seq, n)


def run_threads(
    targets: list[Callable[[], object]], timeout: float = JOIN_TIMEOUT
) -> list[BaseException]:
    """Run each target on its own thread; fail if one is still running after the
    timeout (a deadlock); return the exceptions they raised."""
    errors: list[BaseException] = []

    def guard(target: Callable[[], object]) -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=guard, args=(t,), name=f"t{i}", daemon=True)
        for i, t in enumerate(targets)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        pytest.fail(f"threads {stuck} still running after {timeout} s: deadlock?")
    return errors


def settle() -> None:
    """Let the caches of finished threads flush (they die with their thread-locals)."""
    for _ in range(3):
        gc.collect()


def assert_all_returned(heap: realalloc.Heap) -> None:
    """Nothing live, counters balanced, every span back in the page heap."""
    settle()
    heap.check()
    st = heap.stats()
    assert st.heap_objects == 0, st
    assert st.mallocs == st.frees
    assert st.heap_alloc == 0
    assert st.tiny_pieces == st.tiny_frees
    assert all(c.mallocs == c.frees for c in st.by_size)
    assert st.large_allocs == st.large_frees
    # what is left are empty spans kept for reuse; reclaim gives them back
    assert all(s.allocated == 0 for s in heap.spans())
    heap.reclaim()
    spans = list(heap.spans())
    assert spans == [], spans[:5]
    assert heap.stats().heap_inuse == 0
    heap.check()


@pytest.fixture
def heap():
    h = realalloc.Heap()
    try:
        yield h
    finally:
        h.close()


SIZES = (1, 3, 7, 8, 15, 16, 24, 48, 100, 256, 1000, 4000, 20000, MAX_SMALL_SIZE, 40000, 200000)


# --- per-thread caches -----------------------------------------------------------------


def test_each_thread_allocates_from_spans_of_its_own(heap):
    """While every object is live, a span holding objects of one thread never holds
    objects of another: each thread has its own cached span per class."""
    sizes = (8, 48, 512, 4000)
    per_thread = 30
    spans_of: list[dict[int, set[int]]] = [{} for _ in range(NTHREADS)]
    objects: list[list[tuple[int, int, int]]] = [[] for _ in range(NTHREADS)]
    all_allocated = threading.Barrier(NTHREADS + 1, timeout=JOIN_TIMEOUT)
    checked = threading.Barrier(NTHREADS + 1, timeout=JOIN_TIMEOUT)
    caches_before = heap.stats().mcache_inuse

    def work(i: int) -> None:
        for k in range(per_thread):
            for size in sizes:
                seq = i << 32 | k << 8 | size & 0xFF
                addr = heap.malloc(size, scan=True)
                fill(addr, seq, size)
                objects[i].append((addr, seq, size))
                spans_of[i].setdefault(size, set()).add(heap.span_of(addr).base)
        all_allocated.wait()
        checked.wait()  # the main thread looks at the caches meanwhile
        for addr, seq, size in objects[i]:
            assert intact(addr, seq, size), f"thread {i}: object {addr:#x} changed"
            heap.free(addr)

    def main_thread() -> None:
        all_allocated.wait()
        st = heap.stats()
        assert st.mcache_inuse > caches_before == 0
        assert st.mcache_inuse % NTHREADS == 0  # one cache per thread
        assert st.heap_objects == NTHREADS * per_thread * len(sizes)
        heap.check()
        checked.wait()

    # the barrier makes the 9th party run on a thread too, so all joins time out
    errors = run_threads([lambda i=i: work(i) for i in range(NTHREADS)] + [main_thread])
    assert not errors, errors
    for size in sizes:
        for i in range(NTHREADS):
            for j in range(i):
                shared = spans_of[i][size] & spans_of[j][size]
                assert not shared, f"threads {i} and {j} share spans {shared} of {size} B objects"
    assert_all_returned(heap)


def test_every_thread_gets_a_cache_and_it_goes_when_the_thread_ends(heap):
    grown = threading.Barrier(NTHREADS + 1, timeout=JOIN_TIMEOUT)
    leave = threading.Event()
    seen: list[int] = []

    def work() -> None:
        heap.free(heap.malloc(64))
        grown.wait()
        leave.wait(JOIN_TIMEOUT)

    def watcher() -> None:
        grown.wait()
        seen.append(heap.stats().mcache_inuse)
        leave.set()

    errors = run_threads([work] * NTHREADS + [watcher])
    assert not errors, errors
    assert seen[0] > 0
    assert seen[0] % NTHREADS == 0  # NTHREADS caches of one size
    settle()
    assert heap.stats().mcache_inuse == 0
    assert_all_returned(heap)


# --- frees on other threads --------------------------------------------------------------


def test_frees_on_the_next_thread_in_a_ring(heap):
    rounds, batch = 30, 25
    inboxes: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in range(NTHREADS)]
    done = (0, 0, 0, -1)  # the sender has sent everything
    counts = [[0, 0] for _ in range(NTHREADS)]  # mallocs, frees

    def work(i: int) -> None:
        rng = random.Random(i)
        outbox = inboxes[(i + 1) % NTHREADS]
        seq = i << 40
        sender_done = False

        def take(item: tuple[int, int, int, int]) -> None:
            nonlocal sender_done
            addr, s, size, owner = item
            if owner < 0:
                sender_done = True
                return
            assert owner == (i - 1) % NTHREADS
            assert intact(addr, s, size), f"{addr:#x} from thread {owner} changed"
            heap.free(addr)
            counts[i][1] += 1

        for _ in range(rounds):
            for _ in range(batch):
                size = rng.choice(SIZES)
                seq += 1
                addr = heap.malloc(size, scan=rng.random() < 0.3)
                fill(addr, seq, size)
                counts[i][0] += 1
                outbox.put((addr, seq, size, i))
            # free whatever the previous thread sent so far
            while not inboxes[i].empty():
                take(inboxes[i].get())
        outbox.put(done)
        while not sender_done:
            take(inboxes[i].get(timeout=JOIN_TIMEOUT))

    errors = run_threads([lambda i=i: work(i) for i in range(NTHREADS)])
    assert not errors, errors
    assert all(m == rounds * batch for m, _ in counts)
    assert sum(f for _, f in counts) == NTHREADS * rounds * batch
    st = heap.stats()
    assert st.mallocs == NTHREADS * rounds * batch  # one per malloc call, tiny pieces too
    assert_all_returned(heap)


def test_objects_outlive_the_threads_that_allocated_them(heap):
    """Threads allocate (filling tiny blocks and small spans only partly) and end;
    their caches flush while the objects live on; other threads and the main thread
    then verify and free them."""
    held: list[tuple[int, int, int]] = []
    lock = threading.Lock()

    def allocate(i: int) -> None:
        mine = []
        for k, size in enumerate(SIZES * 3):
            seq = i << 16 | k
            addr = heap.malloc(size)
            fill(addr, seq, size)
            mine.append((addr, seq, size))
        with lock:
            held.extend(mine)

    errors = run_threads([lambda i=i: allocate(i) for i in range(NTHREADS)])
    assert not errors, errors
    settle()
    st = heap.stats()
    assert st.mcache_inuse == 0  # every allocating thread is gone
    assert st.heap_objects > 0
    assert st.tiny_pieces - st.tiny_frees == NTHREADS * 3 * sum(s < TINY_SIZE for s in SIZES)
    heap.check()
    assert len({a for a, _, _ in held}) == len(held)
    for addr, seq, size in held:
        assert intact(addr, seq, size), f"{addr:#x} changed after its thread ended"
    random.Random(5).shuffle(held)
    mine, theirs = held[: len(held) // 4], held[len(held) // 4 :]
    parts = [theirs[i::NTHREADS] for i in range(NTHREADS)]

    def free_part(part: list[tuple[int, int, int]]) -> None:
        for addr, seq, size in part:
            assert intact(addr, seq, size)
            heap.free(addr)

    errors = run_threads([lambda p=p: free_part(p) for p in parts])
    assert not errors, errors
    free_part(mine)  # the main thread never allocated here
    assert_all_returned(heap)


def test_racing_frees_of_one_object_succeed_exactly_once(heap):
    """Eight threads free the same objects at once: each object is freed exactly
    once; every other attempt is refused as an invalid pointer naming it."""
    addrs: list[int] = []

    def allocate() -> None:  # on a thread that ends: its cache (and tiny block) go
        for size, n in ((5, 600), (64, 600), (3000, 150), (100000, 30)):
            addrs.extend(heap.malloc(size) for _ in range(n))

    assert not run_threads([allocate])
    wins = [0] * NTHREADS
    refused: list[list[tuple[int, BaseException]]] = [[] for _ in range(NTHREADS)]
    start = threading.Barrier(NTHREADS, timeout=JOIN_TIMEOUT)

    def racer(i: int) -> None:
        order = addrs if i % 2 else addrs[::-1]
        start.wait()
        for a in order:
            try:
                heap.free(a)
                wins[i] += 1
            except realalloc.InvalidPointerError as exc:
                refused[i].append((a, exc))

    errors = run_threads([lambda i=i: racer(i) for i in range(NTHREADS)])
    assert not errors, errors
    assert sum(wins) == len(addrs)
    assert sum(len(r) for r in refused) == len(addrs) * (NTHREADS - 1)
    for r in refused:
        for a, exc in r:
            assert f"{a:#x}" in str(exc)
    assert_all_returned(heap)


@pytest.mark.slow
def test_large_objects_churned_on_many_threads_keep_exact_byte_counts(heap):
    """Every thread allocates and frees large objects of different sizes at once; a
    tiny switch interval makes the threads interleave inside the slow paths.  At
    the end nothing is live, so heap_alloc must be exactly zero."""
    sizes = (40_000, 100_000, 300_000, 1 << 20)

    def work(i: int) -> None:
        rng = random.Random(i)
        for k in range(300):
            size = rng.choice(sizes)
            addr = heap.malloc(size, zero=False)
            ctypes.memmove(addr, pattern(addr, k, 64), 64)
            assert intact(addr, k, 64)
            heap.free(addr)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        errors = run_threads([lambda i=i: work(i) for i in range(NTHREADS)])
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    st = heap.stats()
    assert st.large_allocs == st.large_frees == NTHREADS * 300
    assert st.heap_alloc == 0
    assert_all_returned(heap)


# --- close while other threads are idle ----------------------------------------------------


def test_close_while_other_threads_are_idle():
    heap = realalloc.Heap()
    ready = threading.Barrier(NTHREADS + 1, timeout=JOIN_TIMEOUT)
    closed = threading.Event()
    outcomes: dict[int, dict[str, str]] = {}

    def work(i: int) -> None:
        small, tiny, large = heap.malloc(64), heap.malloc(5), heap.malloc(100000)
        buf = heap.alloc(100)
        fill(small, i, 64)
        ready.wait()
        assert closed.wait(JOIN_TIMEOUT)
        calls: dict[str, Callable[[], object]] = {
            "malloc": lambda: heap.malloc(64),
            "malloc tiny": lambda: heap.malloc(5),
            "malloc scan": lambda: heap.malloc(64, scan=True),
            "malloc large": lambda: heap.malloc(100000),
            "free": lambda: heap.free(small),
            "free tiny": lambda: heap.free(tiny),
            "free large": lambda: heap.free(large),
            "realloc": lambda: heap.realloc(small, 1000),
            "usable_size": lambda: heap.usable_size(small),
            "alloc": lambda: heap.alloc(10),
            "stats": heap.stats,
            "scavenge": heap.scavenge,
        }
        result = {}
        for name, call in calls.items():
            try:
                call()
                result[name] = "returned"
            except realalloc.HeapClosedError:
                result[name] = "HeapClosedError"
        try:
            bytes(buf)
            result["buffer"] = "returned"
        except realalloc.BufferFreedError:
            result["buffer"] = "BufferFreedError"
        outcomes[i] = result

    def closer() -> None:
        ready.wait()
        heap.close()
        closed.set()

    errors = run_threads([lambda i=i: work(i) for i in range(NTHREADS)] + [closer])
    assert not errors, errors
    assert len(outcomes) == NTHREADS
    for i, result in outcomes.items():
        wrong = {
            k: v for k, v in result.items() if v not in ("HeapClosedError", "BufferFreedError")
        }
        assert not wrong, f"thread {i} after close: {wrong}"
    heap.close()  # idempotent
    # a new heap works on the same threads' slots
    with realalloc.Heap() as fresh:

        def again() -> None:
            a = fresh.malloc(64)
            fill(a, 1, 64)
            assert intact(a, 1, 64)
            fresh.free(a)

        assert not run_threads([again] * NTHREADS)
        assert_all_returned(fresh)


# --- everything at once ------------------------------------------------------------------


@pytest.mark.slow
def test_churn_with_handoffs_readers_and_scavenges(heap):
    """Random malloc / realloc / free on 8 threads with hand-offs between them, while
    a reader thread takes stats and an explicit scavenger releases free pages.  A
    shared registry proves that no address is handed out twice while live and that
    each object is freed exactly once."""
    ops = 2500
    registry: dict[int, tuple[int, int]] = {}  # live addr -> (seq, size)
    reg_lock = threading.Lock()
    handoff: queue.SimpleQueue = queue.SimpleQueue()
    totals = {"mallocs": 0, "frees": 0, "reallocs": 0, "handed": 0}
    stop = threading.Event()
    stats_seen: list[int] = []

    def born(addr: int, seq: int, size: int) -> None:
        with reg_lock:
            assert addr not in registry, f"{addr:#x} handed out while live"
            registry[addr] = (seq, size)

    def died(addr: int) -> tuple[int, int]:
        with reg_lock:
            return registry.pop(addr)

    def work(i: int) -> None:
        rng = random.Random(100 + i)
        live: list[tuple[int, int, int]] = []
        seq = i << 40
        counts = dict.fromkeys(totals, 0)

        def release(addr: int, s: int, size: int) -> None:
            assert intact(addr, s, size), f"{addr:#x} changed"
            assert died(addr) == (s, size)
            heap.free(addr)
            counts["frees"] += 1

        for _ in range(ops):
            r = rng.random()
            try:
                item = handoff.get_nowait() if r < 0.2 else None
            except queue.Empty:
                item = None
            if item is not None:
                release(*item)
            elif live and (len(live) > 60 or r < 0.45):
                victim = live.pop(rng.randrange(len(live)))
                if rng.random() < 0.3:
                    handoff.put(victim)
                    counts["handed"] += 1
                else:
                    release(*victim)
            elif live and r < 0.55:
                addr, s, size = live.pop(rng.randrange(len(live)))
                new_size = rng.choice(SIZES)
                assert intact(addr, s, size)
                died(addr)
                new = heap.realloc(addr, new_size)
                keep = min(size, new_size)
                assert ctypes.string_at(new, keep) == pattern(addr, s, size)[:keep]
                seq += 1
                fill(new, seq, new_size)
                born(new, seq, new_size)
                live.append((new, seq, new_size))
                counts["reallocs"] += 1
            else:
                size = rng.choice(SIZES)
                seq += 1
                addr = heap.malloc(size, scan=rng.random() < 0.3, zero=rng.random() < 0.5)
                fill(addr, seq, size)
                born(addr, seq, size)
                live.append((addr, seq, size))
                counts["mallocs"] += 1
        for item in live:
            release(*item)
        with reg_lock:
            for k, v in counts.items():
                totals[k] += v

    def reader() -> None:
        while not stop.is_set():
            st = heap.stats()
            assert st.heap_objects >= 0
            stats_seen.append(st.mallocs)
            heap.memory_report()
            stop.wait(0.01)

    def scavenger() -> None:
        while not stop.is_set():
            heap.scavenge(1 << 20)
            stop.wait(0.02)

    remaining = [NTHREADS]

    def worker(i: int) -> None:
        try:
            work(i)
        finally:
            with reg_lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    stop.set()

    errors = run_threads([lambda i=i: worker(i) for i in range(NTHREADS)] + [reader, scavenger])
    assert not errors, errors
    # whatever was handed off after every worker stopped
    while True:
        try:
            addr, s, size = handoff.get_nowait()
        except queue.Empty:
            break
        assert intact(addr, s, size)
        assert died(addr) == (s, size)
        heap.free(addr)
        totals["frees"] += 1
    assert registry == {}
    assert totals["mallocs"] == totals["frees"]
    assert totals["reallocs"] > 0 and totals["handed"] > 0
    assert stats_seen == sorted(stats_seen)  # mallocs only grows
    st = heap.stats()
    assert st.mallocs >= totals["mallocs"]
    assert_all_returned(heap)


def test_many_heaps_on_many_threads():
    """Each thread uses its own heap and one shared heap; closing a private heap
    leaves the shared one and the other threads alone."""
    shared = realalloc.Heap(background_scavenger=False)
    try:
        closed_own = threading.Barrier(NTHREADS, timeout=JOIN_TIMEOUT)

        def work(i: int) -> None:
            own = realalloc.Heap(background_scavenger=False)
            objs = []
            for k, size in enumerate(SIZES):
                a, b = own.malloc(size), shared.malloc(size)
                fill(a, k, size)
                fill(b, k + 1000, size)
                objs.append((a, b, k, size))
            for a, b, k, size in objs:
                assert intact(a, k, size) and intact(b, k + 1000, size)
                with pytest.raises(realalloc.ForeignPointerError):
                    shared.free(a)
            own.check()
            own.close()
            closed_own.wait()
            for _, b, k, size in objs:
                assert intact(b, k + 1000, size)
                shared.free(b)

        errors = run_threads([lambda i=i: work(i) for i in range(NTHREADS)])
        assert not errors, errors
        assert_all_returned(shared)
    finally:
        shared.close()
