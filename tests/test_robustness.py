"""Robustness: the events that kill or hang a process, injected.

Each scenario makes its event happen on purpose (a Barrier or Event decides
the moment, an interval timer delivers signals, a trace function stops a
thread at a chosen line) instead of hoping a race comes along, and each one
that could crash or hang the interpreter runs in a child interpreter
(``run_scenario``, ``run_code``): a segfault, an abort or a hang is then a
failed test that shows the return code and the child's stderr (faulthandler
dumps every thread's stack before the watchdog ends a hung child), not a
dead test run.

All of them use real memory: objects hold byte patterns that are read back,
live objects must not overlap, and ``heap.check()`` must pass afterwards.
Each scenario returns its counts as JSON and the test asserts on them: a
scenario that did not really happen (no close landed, too few signals, no
fork) fails rather than passes.

1. close() while 8 threads malloc/free and use Buffers.
2. fork while 4 threads allocate; fork while another thread holds a
   process-wide lock of realalloc (inside Heap() or the default heap's making).
3. A SIGALRM handler that allocates and frees, during slow-path churn.
4. SIGINT (KeyboardInterrupt) delivered over and over during that churn.
5. Buffers in reference cycles collected by the cyclic GC mid-heap-work.
6. The memory limit under 8 threads of 4-12 MiB objects.
7. Interpreter exit, on every Python 3.10-3.13 that can import realalloc.
8. check() while threads churn.

Regressions found by them, each with its injected reproducer: a thread
ending while close() tears down (use after free), the cyclic GC closing a
heap while the heap registry's lock is held (self-deadlock), fork while
another thread holds a realalloc lock (the child hangs), a signal handler
or finalizer allocating during check() (false HeapCorruption), stats()
during a growth (64 MiB phantom), and a released page map brought back past
the memory limit.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from support import Population, pattern

import realalloc
from realalloc import Heap

TESTS = Path(__file__).resolve().parent
# The realalloc that this test run imported (a source tree or an install):
# the children import the same one.
IMPORT_ROOT = Path(realalloc.__file__).resolve().parent.parent
PACKAGE = str(Path(realalloc.__file__).resolve().parent)

CHILD_TIMEOUT = 600.0
"""Seconds a child may take: generous, the machine may be slow and shared.
Its own watchdog (faulthandler) dumps its threads and exits 60 s before."""
JOIN = 120.0
"""Seconds to wait for a thread, a barrier or an event inside a child."""

SIZES = (8, 13, 16, 24, 48, 100, 256, 1000, 4000, 9000, 20000, 32768, 40000, 100_000)
"""8 B to 100 KiB: tiny, small of many classes, and large (> 32 KiB)."""


# -- running a scenario in a child interpreter ---------------------------------


def _prelude(watchdog: float | None) -> str:
    lines = [
        "import sys",
        f"sys.path[:0] = [{str(IMPORT_ROOT)!r}, {str(TESTS)!r}]",
    ]
    if watchdog is not None:
        lines += [
            "import faulthandler",
            "faulthandler.enable()",
            f"faulthandler.dump_traceback_later({watchdog}, exit=True)",
        ]
    return "\n".join(lines) + "\n"


def _describe(rc: int) -> str:
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-rc).name}"
    return f"exit code {rc}"


def run_code(
    code: str,
    *,
    python: str = sys.executable,
    timeout: float = CHILD_TIMEOUT,
    watchdog: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child interpreter that imports this run's realalloc;
    fail the test with its return code and stderr unless it exits 0 in time."""
    source = _prelude(timeout - 60 if watchdog else None) + code
    try:
        proc = subprocess.run(
            [python, "-c", source],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=os.environ | {"PYTHONFAULTHANDLER": "1"},
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        pytest.fail(f"child hung: still running after {timeout} s (killed)\nstderr:\n{err}")
    if proc.returncode != 0:
        pytest.fail(
            f"child failed: {_describe(proc.returncode)}\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"
        )
    return proc


def run_scenario(
    call: str, *, watchdog: bool = True, timeout: float = CHILD_TIMEOUT
) -> dict[str, Any]:
    """``call`` (an expression calling a function of this module) in a child;
    returns the dict it returned.  ``watchdog=False`` for a scenario that
    forks: a forked child inherits the armed faulthandler watchdog without its
    thread, and re-arming or cancelling it (at exit too) would wait forever."""
    proc = run_code(
        f"import json, test_robustness as t\nprint('RESULT', json.dumps(t.{call}), flush=True)\n",
        watchdog=watchdog,
        timeout=timeout,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"no result from the child\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    print(call, "->", result)
    return result


# -- helpers used inside the children ------------------------------------------


def start_threads(targets: list[Callable[[], None]]) -> tuple[list[threading.Thread], list[str]]:
    """Start each target on a daemon thread; the list collects their errors."""
    errors: list[str] = []

    def guard(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(f"{threading.current_thread().name}: {exc!r}")

    threads = [
        threading.Thread(target=guard, args=(t,), name=f"worker-{i}", daemon=True)
        for i, t in enumerate(targets)
    ]
    for t in threads:
        t.start()
    return threads, errors


def join_all(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(JOIN)
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"threads {stuck} still running after {JOIN} s: deadlock?"


def write(addr: int, data: bytes) -> None:
    ctypes.memmove(addr, data, len(data))


def holds(addr: int, data: bytes) -> bool:
    return ctypes.string_at(addr, len(data)) == data


def no_overlap(extents: Iterable[tuple[int, int]]) -> None:
    """Live objects, as (address, bytes), do not overlap."""
    last_end, last = 0, 0
    for addr, n in sorted(extents):
        assert addr >= last_end, f"{last:#x} and {addr:#x} overlap"
        last_end, last = addr + max(n, 1), addr


def public_methods() -> set[str]:
    return {n for n in dir(Heap) if not n.startswith("_") and callable(getattr(Heap, n))}


def every_method_refuses(heap: Heap, addr: int, buf: realalloc.Buffer, allocator: Any) -> None:
    """After close: a call of every public method of ``heap`` (``close`` aside:
    it may run again), on arguments that were valid before, raises
    HeapClosedError; so do the cffi allocator made before, and (as
    BufferFreedError) the heap's Buffer."""
    import cffi

    png = os.path.join(tempfile.gettempdir(), f"realalloc-robust-{os.getpid()}.png")
    calls: dict[str, Callable[[], object]] = {
        "malloc": lambda: heap.malloc(8),
        "alloc": lambda: heap.alloc(100_000),
        "free": lambda: heap.free(addr),
        "realloc": lambda: heap.realloc(addr, 50),
        "usable_size": lambda: heap.usable_size(addr),
        "span_of": lambda: heap.span_of(addr),
        "stats": heap.stats,
        "spans": lambda: list(heap.spans()),
        "memory_report": heap.memory_report,
        "scavenge": heap.scavenge,
        "reclaim": heap.reclaim,
        "set_memory_limit": lambda: heap.set_memory_limit(1 << 30),
        "metadata_bytes": heap.metadata_bytes,
        "check": heap.check,
        "cffi_allocator": lambda: heap.cffi_allocator(cffi.FFI()),
        "map_png": lambda: heap.map_png(png),
        # the collector's methods: HeapClosedError before "this heap has no collector"
        "collect": heap.collect,
        "set_gc_percent": lambda: heap.set_gc_percent(100),
        "add_root": lambda: heap.add_root(addr, 8),
        "remove_root": lambda: heap.remove_root(addr),
        "pin": lambda: heap.pin(addr),
        "unpin": lambda: heap.unpin(addr),
        "pinner": heap.pinner,
        "set_finalizer": lambda: heap.set_finalizer(addr, print),
    }
    assert set(calls) == public_methods() - {"close"}, "a public method is not covered here"
    calls["cffi allocator made before close"] = lambda: allocator("char[]", 64)
    calls["Buffer.free"] = buf.free
    wrong = []
    for name, call in calls.items():
        expected: type[BaseException] = realalloc.HeapClosedError
        if name == "Buffer.free":
            expected = realalloc.BufferFreedError
        if name == "map_png" and importlib.util.find_spec("matplotlib") is None:
            expected = ImportError  # checked first: matplotlib is an extra
        try:
            call()
            wrong.append(f"{name} returned")
        except expected:
            pass
        except BaseException as exc:
            wrong.append(f"{name} raised {exc!r}")
    assert not wrong, f"after close: {wrong}"
    assert not os.path.exists(png)


# -- 1. close() while 8 threads use the heap -------------------------------------


def close_round(seed: int, close_after: int, nthreads: int = 8) -> dict[str, Any]:
    """8 threads churn (malloc/free of SIZES, Buffers); the main thread closes
    the heap once they have done ``close_after`` operations between them.

    Raw memory is touched only while the thread exports a view of a Buffer of
    the heap (``guard``): close refuses with BufferError while a view exists
    (the documented rule), so a closing heap never unmaps memory a thread is
    writing.  The closer retries on BufferError; every thread runs until a
    call of its refuses because the heap closed."""
    import cffi

    heap = Heap()
    allocator = heap.cffi_allocator(cffi.FFI())
    kept, kept_buf = heap.malloc(100), heap.alloc(100)
    barrier = threading.Barrier(nthreads + 1, timeout=JOIN)
    go = threading.Event()
    done = [0] * nthreads
    ended: dict[int, str] = {}
    wrong: list[str] = []

    def worker(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        guard = heap.alloc(64)
        objs: dict[int, bytes] = {}
        bufs: list[tuple[realalloc.Buffer, bytes]] = []
        seq = 0
        step = "start"
        barrier.wait()
        try:
            while True:
                step = "malloc"
                new = [heap.malloc(rng.choice(SIZES)) for _ in range(rng.randint(1, 6))]
                step = "usable_size"
                sizes = [heap.usable_size(a) for a in new]
                step = "guard"
                with memoryview(guard):  # close waits (BufferError) until it is released
                    for a, n in zip(new, sizes, strict=True):
                        seq += 1
                        objs[a] = pattern(a, seq, n)
                        write(a, objs[a])
                    for a, data in objs.items():
                        assert holds(a, data), f"object {a:#x} changed"
                    no_overlap((a, len(d)) for a, d in objs.items())
                step = "free"
                for a in rng.sample(sorted(objs), k=max(0, len(objs) - 12)):
                    heap.free(a)
                    del objs[a]
                step = "alloc"
                size = rng.choice(SIZES)
                buf = heap.alloc(size)
                step = "Buffer"
                seq += 1
                data = pattern(buf.address, seq, size)
                memoryview(buf)[:] = data
                bufs.append((buf, data))
                for b, d in bufs:
                    assert bytes(b) == d, f"Buffer {b!r} changed"
                if len(bufs) > 4:
                    b, _ = bufs.pop(rng.randrange(len(bufs)))
                    if rng.random() < 0.5:
                        step = "Buffer.free"
                        b.free()
                    del b  # else its collection frees it
                done[i] += 1
                if sum(done) >= close_after:
                    go.set()
        except realalloc.HeapClosedError:
            ended[i] = f"HeapClosedError in {step}"
        except realalloc.BufferFreedError as exc:
            # A Buffer of a closed heap counts as freed: only after close began.
            if heap.closed:
                ended[i] = f"BufferFreedError in {step}"
            else:
                wrong.append(f"thread {i} in {step}: {exc!r} on an open heap")
        except BaseException as exc:
            wrong.append(f"thread {i} in {step}: {exc!r}")

    unraisable: list[str] = []
    sys.unraisablehook = lambda u: unraisable.append(f"{u.exc_type.__name__} in {u.object!r}")
    threads, errors = start_threads([lambda i=i: worker(i) for i in range(nthreads)])
    barrier.wait()
    if close_after == 0:
        go.set()
    assert go.wait(JOIN), "the threads never reached the moment to close"
    refused = 0
    while True:
        try:
            heap.close()
            break
        except BufferError:
            refused += 1  # a thread holds a view: the documented refusal; again
    ops_at_close = sum(done)
    join_all(threads)
    sys.unraisablehook = sys.__unraisablehook__
    assert not errors and not wrong, errors + wrong
    # A Buffer collected while close() waits for the world to stop frees into
    # a heap that is closed when it gets in: C reports that HeapClosedError as
    # unraisable (its memory went with the heap; see the report).  Nothing else.
    late_buffer_frees = [u for u in unraisable if u.startswith("HeapClosedError in <realalloc")]
    assert len(late_buffer_frees) == len(unraisable), unraisable
    assert sorted(ended) == list(range(nthreads)), f"threads that saw the close: {ended}"
    every_method_refuses(heap, kept, kept_buf, allocator)
    heap.close()  # idempotent
    return {
        "ops_at_close": ops_at_close,
        "close_refused": refused,
        "ended": ended,
        "late_buffer_frees": len(late_buffer_frees),
    }


def scenario_close(rounds: int = 6) -> dict[str, Any]:
    moments = [0, 3, 30, 150, 600, 1500]
    results = [close_round(seed, moments[seed % len(moments)]) for seed in range(rounds)]
    ended: dict[str, int] = {}
    for r in results:
        for how in r["ended"].values():
            ended[how] = ended.get(how, 0) + 1
    return {
        "rounds": rounds,
        "ops_at_close": [r["ops_at_close"] for r in results],
        "close_refused": sum(r["close_refused"] for r in results),
        "late_buffer_frees": sum(r["late_buffer_frees"] for r in results),
        "ended": ended,
    }


def test_close_while_eight_threads_use_the_heap() -> None:
    result = run_scenario("scenario_close()")
    # Every thread of every round was stopped by the close in the middle of its
    # churn (it loops until a call refuses), and most by a heap call refusing.
    assert sum(result["ended"].values()) == 8 * result["rounds"]
    in_heap_calls = sum(n for how, n in result["ended"].items() if how.startswith("HeapClosed"))
    assert in_heap_calls >= result["rounds"], result


def end_while_closing(nthreads: int = 8) -> list[str]:
    """close() marks the heap closed with the world stopped, then tears it
    down (MHeap.close detaches every thread cache).  A trace function on the
    closing thread holds it at the start of the teardown until ``nthreads``
    threads, refused by the closed heap, have ended: their caches die in
    between.  Returns what each thread's call after the close did."""
    heap = Heap(background_scavenger=False)
    ready = threading.Barrier(nthreads + 1, timeout=JOIN)
    closing = threading.Event()
    outcome: list[str] = []

    def worker() -> None:
        heap.free(heap.malloc(100))  # this thread's cache
        ready.wait()
        closing.wait(JOIN)
        try:
            heap.malloc(100)
            outcome.append("malloc returned")
        except realalloc.HeapClosedError:
            outcome.append("refused")

    threads, errors = start_threads([worker] * nthreads)
    ready.wait()

    def tracer(frame: Any, event: str, arg: Any) -> None:
        # This heap's teardown (a collected heap's close may run meanwhile).
        if frame.f_code is Heap._teardown.__code__ and frame.f_locals["self"] is heap:
            closing.set()
            join_all(threads)  # they end, and their caches die, here

    sys.settrace(tracer)
    heap.close()
    sys.settrace(None)
    assert closing.is_set(), "close() did not reach its teardown"
    assert not errors, errors
    return outcome


def scenario_threads_end_while_closing(rounds: int = 40) -> dict[str, Any]:
    outcomes = [how for _ in range(rounds) for how in end_while_closing()]
    assert set(outcomes) == {"refused"}, outcomes
    return {"rounds": rounds, "threads_refused_then_ended": len(outcomes)}


def test_threads_ending_while_close_tears_down() -> None:
    """Regression: the cache of a thread that ended between close's two steps
    was freed while still on the heap's list, and the teardown then wrote into
    freed memory (glibc: "corrupted size vs. prev_size", abort)."""
    result = run_scenario("scenario_threads_end_while_closing()", timeout=180)
    assert result["threads_refused_then_ended"] == 8 * result["rounds"]


# -- 2. fork while threads allocate ----------------------------------------------


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (it is about other threads' progress) until it holds."""
    deadline = time.monotonic() + JOIN
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.001)


def watchdog(seconds: float) -> None:
    """In a forked child (of a parent with no watchdog: see run_scenario):
    dump every thread's stack and exit if still running after ``seconds``."""
    import faulthandler

    faulthandler.dump_traceback_later(seconds, exit=True)


def reap(pid: int, what: str) -> int:
    """Wait for child ``pid``; kill it and fail if it has not ended in JOIN s."""
    deadline = time.monotonic() + JOIN
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"{what}: the forked child hung (killed after {JOIN} s)")
        time.sleep(0.005)


def forked_child_works(heap: Heap, pop: Population) -> None:
    """In a forked child: the parent's objects are intact, both heaps allocate
    and free across size classes, the heap grows by a new arena (a large
    object over 64 MiB), which starts a background scavenger of the child's
    own, and check() passes.  Then the child exits normally."""
    pop.intact()
    mine = Population(heap)
    big = heap.malloc(80 << 20)
    write(big, pattern(big, 1, 4096))
    write(big + (80 << 20) - 4096, pattern(big, 2, 4096))
    scavengers = [t for t in threading.enumerate() if t.name == "realalloc-scavenger"]
    assert scavengers, "growing the heap in the child started no scavenger"
    default = Population(realalloc.default_heap())
    default.intact()
    realalloc.free(realalloc.malloc(100))
    assert holds(big, pattern(big, 1, 4096))
    heap.free(big)
    mine.free_all()
    default.free_all()
    pop.intact()


def scenario_fork(forks: int = 4, nthreads: int = 4) -> dict[str, Any]:
    """``nthreads`` threads churn (half on ``heap``, half on the default heap)
    while the main thread forks ``forks`` times; each child must do
    ``forked_child_works`` and exit 0."""
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)  # 3.12: fork with threads
    heap = Heap()
    pop = Population(heap, copies=1)
    stop = threading.Event()
    done = [0] * nthreads

    def churn(i: int) -> None:
        h = heap if i % 2 == 0 else realalloc.default_heap()
        rng = random.Random(i)
        mine: dict[int, bytes] = {}
        seq = i << 32
        while not stop.is_set():
            n = rng.choice(SIZES)
            a = h.malloc(n)
            seq += 1
            mine[a] = pattern(a, seq, n)
            write(a, mine[a])
            if len(mine) > 40:
                a = rng.choice(list(mine))
                assert holds(a, mine.pop(a)), f"object {a:#x} changed"
                h.free(a)
            done[i] += 1
        for a, data in mine.items():
            assert holds(a, data), f"object {a:#x} changed"
            h.free(a)

    threads, errors = start_threads([lambda i=i: churn(i) for i in range(nthreads)])
    statuses = []
    ops_at_fork = []
    for k in range(forks):
        # Every thread is past its first calls and still churning.
        wait_for(lambda k=k: min(done) > 50 * (k + 1), "the threads to churn")
        ops_at_fork.append(sum(done))
        pid = os.fork()
        if pid == 0:
            watchdog(JOIN - 20)
            forked_child_works(heap, pop)
            sys.exit(0)  # normal exit: atexit stops the child's scavengers
        statuses.append(reap(pid, f"fork {k}"))
        pop.intact()  # the parent keeps working, its threads too
    stop.set()
    join_all(threads)
    assert not errors, errors
    assert statuses == [0] * forks, f"children's exit codes: {statuses}"
    pop.intact()
    pop.free_all()
    realalloc.default_heap().check()
    return {"forks": forks, "children_ok": statuses.count(0), "ops_at_fork": ops_at_fork}


def test_fork_while_threads_allocate() -> None:
    result = run_scenario("scenario_fork()", watchdog=False)
    assert result["children_ok"] == result["forks"] == 4


def scenario_fork_inside(function: str) -> dict[str, Any]:
    """Another thread is stopped (by a trace function) at the first line of
    ``function`` of realalloc, which holds a process-wide lock of realalloc:
    ``_take_slot`` (inside Heap()) or ``_make_default`` (making the default
    heap).  The main thread forks there; the child must make a heap and use
    the default heap, and exit 0."""
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)
    inside, forked = threading.Event(), threading.Event()

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_name == function and frame.f_code.co_filename.startswith(PACKAGE):
            inside.set()
            forked.wait(JOIN)
        return None

    def maker() -> None:
        sys.settrace(tracer)
        if function == "_make_default":
            realalloc.default_heap().free(realalloc.malloc(10))
        else:
            Heap().close()
        sys.settrace(None)

    threads, errors = start_threads([maker])
    assert inside.wait(JOIN), f"the thread never reached {function}"
    pid = os.fork()
    if pid == 0:
        watchdog(JOIN - 20)
        h = Heap()
        Population(h).free_all()
        h.close()
        realalloc.free(realalloc.malloc(10))
        Population(realalloc.default_heap()).free_all()
        sys.exit(0)
    forked.set()
    status = reap(pid, f"fork inside {function}")
    join_all(threads)
    assert not errors, errors
    assert status == 0, f"child exit code {status}"
    return {"child": status}


@pytest.mark.parametrize("function", ["_take_slot", "_make_default"])
def test_fork_while_another_thread_holds_a_realalloc_lock(function: str) -> None:
    """Regression: the child hung in its first Heap() (or realalloc.malloc):
    the lock that thread held at the fork stayed held in the child."""
    result = run_scenario(f"scenario_fork_inside({function!r})", watchdog=False, timeout=300)
    assert result == {"child": 0}


# -- 3, 4. signals during slow-path churn -------------------------------------------


class Churn:
    """Main-thread work that keeps realalloc's Python slow paths busy: many
    size classes at once, large objects, realloc, scavenge, reclaim, check.
    An object leaves the population before it is freed, so an interrupted
    step can leak one but never leaves a freed object in it."""

    SIZES = (1, 7, 16, 48, 200, 1024, 4000, 9000, 28000, 33000, 100_000, 1 << 20, 3 << 20)

    def __init__(self, heap: Heap, seed: int) -> None:
        self.heap = heap
        self.rng = random.Random(seed)
        self.pop = Population(heap, copies=1)

    def step(self) -> None:
        rng, heap, pop = self.rng, self.heap, self.pop
        kind = rng.randrange(8)
        if kind <= 2 or not pop.objs:
            for _ in range(rng.randint(1, 20)):
                pop.add(rng.choice(self.SIZES), scan=rng.random() < 0.5)
        elif kind == 3:
            for a in rng.sample(sorted(pop.objs), k=min(len(pop.objs), rng.randint(1, 20))):
                del pop.objs[a]
                heap.free(a)
        elif kind == 4:
            a = rng.choice(sorted(pop.objs))
            data = pop.objs.pop(a)
            size = rng.choice(self.SIZES)
            new = heap.realloc(a, size)
            assert holds(new, data[: min(len(data), size)]), "realloc lost the contents"
            pop.seq += 1
            fresh = pattern(new, pop.seq, heap.usable_size(new))
            write(new, fresh)
            pop.objs[new] = fresh
        else:
            op = rng.choice((heap.scavenge, heap.reclaim, heap.check, heap.stats, heap.spans))
            op()


def interrupted_in_realalloc(frame: Any) -> bool:
    return frame is not None and frame.f_code.co_filename.startswith(PACKAGE)


def scenario_signal_handler(min_calls: int = 400, max_steps: int = 5000) -> dict[str, Any]:
    """SIGALRM every 0.5 ms; the handler mallocs (8 B .. 200 KiB) or frees one
    of its own objects, checking its pattern; the main thread runs Churn
    until the handler ran ``min_calls`` times.  ReentrancyError is the
    handler's only allowed error (documented: it needs the page heap the
    interrupted call holds).  Handlers may nest (a signal during a handler)."""
    heap = Heap()
    churn = Churn(heap, 3)
    rng = random.Random(4)
    held: list[tuple[int, bytes]] = []
    tally = dict.fromkeys(("calls", "in_realalloc", "mallocs", "frees", "reentrancy"), 0)
    handler_sizes = (8, 24, 100, 1000, 5000, 30000, 40000, 200_000)

    def handler(signum: int, frame: Any) -> None:
        tally["calls"] += 1
        tally["in_realalloc"] += interrupted_in_realalloc(frame)
        try:
            if held and rng.random() < 0.5:
                try:
                    a, data = held.pop()
                except IndexError:
                    return  # a nested handler took the last one
                assert holds(a, data), f"handler's object {a:#x} changed"
                heap.free(a)
                tally["frees"] += 1
            else:
                n = rng.choice(handler_sizes)
                a = heap.malloc(n)
                data = pattern(a, n, min(n, 64))
                write(a, data)
                held.append((a, data))
                tally["mallocs"] += 1
        except realalloc.ReentrancyError:
            tally["reentrancy"] += 1

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
    steps = 0
    try:  # a failure shows as itself, not as a death by SIGALRM
        while tally["calls"] < min_calls and steps < max_steps:
            churn.step()
            steps += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
    churn.pop.intact()
    no_overlap([(a, len(d)) for a, d in churn.pop.objs.items()] + [(a, len(d)) for a, d in held])
    for a, data in held:
        assert holds(a, data), f"handler's object {a:#x} changed"
        heap.free(a)
    churn.pop.free_all()
    Population(heap).intact()
    return tally | {"steps": steps}


def test_signal_handler_allocates_during_slow_paths() -> None:
    result = run_scenario("scenario_signal_handler()")
    assert result["calls"] >= 400, result  # hundreds of handler calls
    assert result["in_realalloc"] >= 20, result  # some landed in realalloc's Python
    assert result["mallocs"] + result["frees"] + result["reentrancy"] > 0.9 * result["calls"]


def scenario_ctrl_c(min_interrupts: int = 60, max_steps: int = 5000) -> dict[str, Any]:
    """SIGINT, sent every 2 ms by an interval timer's SIGALRM handler, raises
    KeyboardInterrupt wherever the main thread is in Churn; the loop catches
    it, checks every object and the heap, and goes on.  One interrupt per
    step: the SIGINT handler disarms itself, so the loop's own bookkeeping
    and checks are never interrupted."""
    heap = Heap()
    churn = Churn(heap, 5)
    interrupts = in_realalloc = 0
    armed = [False]
    landed: list[Any] = [None]  # the frame the SIGINT interrupted

    def send_sigint(signum: int, frame: Any) -> None:
        if armed[0]:
            landed[0] = frame
            # kill() checks for signals before it returns, so the SIGINT
            # handler runs here: in the frame this handler interrupted.
            os.kill(os.getpid(), signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGALRM, send_sigint)
    signal.setitimer(signal.ITIMER_REAL, 0.002, 0.002)
    steps = 0
    try:  # a failure shows as itself, not as a death by SIGALRM
        while interrupts < min_interrupts and steps < max_steps:
            try:
                armed[0] = True
                churn.step()
                armed[0] = False
            except KeyboardInterrupt:
                interrupts += 1
                in_realalloc += interrupted_in_realalloc(landed[0])
            churn.pop.intact()
            steps += 1
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    churn.pop.free_all()
    Population(heap).intact()
    return {"interrupts": interrupts, "in_realalloc": in_realalloc, "steps": steps}


def test_ctrl_c_during_slow_paths() -> None:
    result = run_scenario("scenario_ctrl_c()")
    assert result["interrupts"] >= 60, result
    assert result["in_realalloc"] >= 5, result


# -- 5. Buffers in cycles, collected mid-heap-work ------------------------------------


class Node:
    """A tree node linked both ways to its parent, holding a 64 KiB Buffer (a
    large object); its finalizer allocates and frees, from inside the
    collection, which runs inside the heap work that triggered it."""

    tally: ClassVar[dict[str, int]] = {}

    def __init__(self, heap: Heap, parent: Node | None, seq: int) -> None:
        self.heap = heap
        self.parent = parent
        self.children: list[Node] = []
        self.buf = heap.alloc(64 << 10)
        self.data = pattern(self.buf.address, seq, 64 << 10)
        memoryview(self.buf)[:] = self.data
        if parent is not None:
            parent.children.append(self)

    def __del__(self) -> None:
        Node.tally["finalizers"] += 1
        try:
            for n in (48, 200_000):
                a = self.heap.malloc(n)
                write(a, b"\xee" * n)
                self.heap.free(a)
        except realalloc.ReentrancyError:
            Node.tally["reentrancy"] += 1


def scenario_gc_cycles(rounds: int = 12, nodes: int = 60) -> dict[str, Any]:
    """Each round builds a tree of ``nodes`` Nodes, checks every Buffer, drops
    it (a cycle: only the cyclic GC frees it) and goes on with heap work (large
    and small mallocs and frees, check, scavenge).  gc.set_threshold(10) makes
    collections run inside that work; a gc callback counts those that ran
    while realalloc's own code was on the stack."""
    heap = Heap()
    Node.tally = dict.fromkeys(("finalizers", "reentrancy", "collections", "inside"), 0)
    churn = Churn(heap, 6)

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase != "start":
            return
        Node.tally["collections"] += 1
        frame = sys._getframe().f_back  # None when no Python code runs below
        while frame is not None and not interrupted_in_realalloc(frame):
            frame = frame.f_back
        Node.tally["inside"] += frame is not None

    old = gc.get_threshold()
    gc.set_threshold(10)
    gc.callbacks.append(on_gc)
    rng = random.Random(7)
    for r in range(rounds):
        root = Node(heap, None, r << 20)
        tree = [root]
        for k in range(nodes - 1):
            tree.append(Node(heap, rng.choice(tree), (r << 20) + k + 1))
        for node in tree:
            assert bytes(node.buf) == node.data, "a Buffer changed"
        del tree, root, node
        for _ in range(6):
            churn.step()
    gc.callbacks.remove(on_gc)
    gc.set_threshold(*old)
    gc.collect()
    churn.pop.intact()
    churn.pop.free_all()
    heap.check()  # also does the frees that came in during a check
    heap.scavenge()  # this thread's cache gives back its tiny block
    st = heap.stats()
    assert (st.heap_alloc, st.heap_objects) == (0, 0), "objects left after all were freed"
    assert Node.tally["finalizers"] == rounds * nodes, Node.tally
    return Node.tally | {"buffers": rounds * nodes}


def test_buffer_cycles_collected_in_the_middle_of_heap_work() -> None:
    result = run_scenario("scenario_gc_cycles()")
    assert result["finalizers"] == result["buffers"]
    assert result["inside"] >= 10, result  # collections that ran inside realalloc


def scenario_gc_inside_registry(function: str) -> dict[str, Any]:
    """A Heap in a reference cycle is garbage (only the cyclic GC frees it).
    A trace function runs gc.collect() the moment ``function`` (register_heap,
    in Heap(); unregister_heap, in close()) holds the heap registry's lock and
    changes the registry; the garbage heap's finalizer closes it, which
    unregisters it on this very thread."""
    gc.disable()
    garbage = Heap(background_scavenger=False)
    garbage.free(garbage.malloc(100))
    garbage.cycle = garbage  # type: ignore[attr-defined]
    gone = weakref.ref(garbage)
    del garbage
    other = Heap(background_scavenger=False)
    collected: list[int] = []

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        caller = frame.f_back
        if event == "call" and caller is not None and caller.f_code.co_name == function:
            collected.append(gc.collect())
        return None

    sys.settrace(tracer)
    if function == "register_heap":
        made = Heap(background_scavenger=False)
    else:
        other.close()
        made = other
    sys.settrace(None)
    gc.enable()
    assert collected and collected[0] > 0, f"no collection ran inside {function}"
    assert gone() is None, "the garbage heap was not collected"
    if not made.closed:
        Population(made).free_all()
        made.close()
    return {"collections": len(collected)}


@pytest.mark.parametrize("function", ["register_heap", "unregister_heap"])
def test_gc_closes_a_heap_while_the_registry_is_held(function: str) -> None:
    """Regression: the thread deadlocked on its own registry lock (seen as a
    hang of tests/test_heap_stateful.py when a collection hit Heap())."""
    result = run_scenario(f"scenario_gc_inside_registry({function!r})", timeout=180)
    assert result == {"collections": 1}


# -- 6. the memory limit under concurrency ---------------------------------------------


def scenario_limit(
    nthreads: int = 8, limit: int = 64 << 20, per_thread: int = 12
) -> dict[str, Any]:
    """8 threads allocate 4-12 MiB objects (every page written) under a 64 MiB
    limit, each keeping up to 2 and freeing one when refused.  A monitor
    thread samples the process's RSS above its level before (the threads
    warmed up, the heap's free pages released), and from stats() what the
    limit caps: heap pages not released plus metadata (and heap_inuse plus
    metadata).  Each thread checks a byte of every page of its objects.
    OutOfMemoryError is the only error allowed."""
    heap = Heap()
    heap.set_memory_limit(limit)
    warm = threading.Barrier(nthreads + 2, timeout=JOIN)  # the workers, the monitor, main
    go = threading.Barrier(nthreads + 2, timeout=JOIN)
    running = threading.Event()
    running.set()
    tally = {"objects": 0, "refused": 0, "samples": 0}
    peaks = {"rss_growth": 0, "retained": 0, "inuse_plus_metadata": 0}

    def worker(i: int) -> None:
        rng = random.Random(i)
        mine: list[tuple[int, int, int]] = []
        # Warm-up: this thread's own interpreter memory exists before the baseline.
        a = heap.malloc(4 << 20)
        ctypes.memset(a, 1, 4 << 20)
        assert all(ctypes.string_at(a + off, 1) == b"\x01" for off in range(0, 4 << 20, 4096))
        heap.free(a)
        warm.wait()
        go.wait()
        for k in range(per_thread):
            n = rng.randint(4 << 20, 12 << 20)
            try:
                a = heap.malloc(n)
            except realalloc.OutOfMemoryError:
                tally["refused"] += 1
                if mine:
                    a, n, mark = mine.pop(0)
                    heap.free(a)
                continue
            mark = (i * 31 + k) % 251 + 1
            ctypes.memset(a, mark, n)  # every page
            mine.append((a, n, mark))
            tally["objects"] += 1
            for a, n, mark in mine:
                for off in range(0, n, 4096):  # a byte of every OS page
                    assert ctypes.string_at(a + off, 1)[0] == mark, f"{a + off:#x} changed"
            if len(mine) > 2:
                a, n, mark = mine.pop(0)
                heap.free(a)
        for a, _, _ in mine:
            heap.free(a)

    def monitor() -> None:
        warm.wait()
        go.wait()
        while running.is_set():
            st = heap.stats()
            retained = st.heap_inuse + st.heap_idle - st.heap_released + st.metadata
            peaks["retained"] = max(peaks["retained"], retained)
            peaks["inuse_plus_metadata"] = max(
                peaks["inuse_plus_metadata"], st.heap_inuse + st.metadata
            )
            peaks["rss_growth"] = max(peaks["rss_growth"], realalloc.rss() - base)
            tally["samples"] += 1

    threads, errors = start_threads([lambda i=i: worker(i) for i in range(nthreads)])
    watcher, watch_errors = start_threads([monitor])
    warm.wait()
    heap.scavenge()  # the warm-up's free pages go back to the OS
    base = realalloc.rss()
    go.wait()
    join_all(threads)
    running.clear()
    join_all(watcher)
    assert not errors and not watch_errors, errors + watch_errors
    heap.check()
    heap.close()
    return tally | peaks | {"limit": limit}


INTERPRETER_ALLOWANCE = 1 << 20


def test_memory_limit_under_eight_threads() -> None:
    result = run_scenario("scenario_limit()")
    assert result["objects"] > 0 and result["refused"] > 0, result  # the limit was reached
    assert result["samples"] >= 10, result
    assert result["retained"] <= result["limit"], result
    assert result["inuse_plus_metadata"] <= result["limit"], result
    # The process's RSS also holds the interpreter's own growth meanwhile
    # (pymalloc arenas of 1 MiB, thread stacks), outside the heap's limit.
    assert result["rss_growth"] <= result["limit"] + INTERPRETER_ALLOWANCE, result


def retained(heap: Heap) -> int:
    """What the memory limit caps, from stats(): heap pages not released to
    the OS, plus metadata."""
    st = heap.stats()
    return st.heap_inuse + st.heap_idle - st.heap_released + st.metadata


def test_a_released_page_map_counts_against_the_memory_limit() -> None:
    """Regression: Heap.scavenge() releases the page map (64 KiB) of an arena
    that holds no span; a span installed there later brings it back, and the
    limit did not count it: the heap went 64 KiB over its limit."""
    with Heap(background_scavenger=False) as heap:
        x = heap.malloc(100 << 20)  # two arenas
        keep = heap.malloc(40000)  # in the second one, after x
        heap.free(x)
        before = heap.stats().metadata
        heap.scavenge()  # the first arena holds no span: its page map goes
        assert before - heap.stats().metadata >= 64 << 10, "no page map was released"
        limit = retained(heap) + 5 * 8192  # room for the pages of one 40000-byte object
        heap.set_memory_limit(limit)
        with contextlib.suppress(realalloc.OutOfMemoryError):
            heap.free(heap.malloc(40000))  # first fit: the first arena
            assert retained(heap) <= limit
        assert retained(heap) <= limit, f"{retained(heap) - limit} bytes over the limit"
        heap.set_memory_limit(None)
        heap.free(keep)
        heap.check()


def scenario_stats_during_growth() -> dict[str, Any]:
    """A thread growing the heap is held (trace function) after the new
    arena is mapped and before its pages are counted free and released;
    another thread calls stats() then.  The page numbers must be of one
    moment: all of a fresh arena's free pages are released."""
    heap = Heap(background_scavenger=False)
    paused, resume = threading.Event(), threading.Event()

    def tracer(frame: Any, event: str, arg: Any) -> None:
        if frame.f_code.co_name == "grow" and frame.f_code.co_filename.endswith("pagealloc.py"):
            paused.set()
            resume.wait(JOIN)

    def grower() -> None:
        sys.settrace(tracer)
        heap.malloc(1 << 20)
        sys.settrace(None)

    stats: list[realalloc.MemStats] = []
    growing, errors = start_threads([grower])
    assert paused.wait(JOIN), "the growth never reached PageAlloc.grow"
    reading, read_errors = start_threads([lambda: stats.append(heap.stats())])

    def reader_waits_for_the_page_heap() -> bool:
        frame = sys._current_frames().get(reading[0].ident or 0)
        while frame is not None and not frame.f_code.co_filename.endswith("_debug.py"):
            frame = frame.f_back
        return frame is not None  # in HeapLock.run: waiting for MHeap.lock

    wait_for(
        lambda: not reading[0].is_alive() or reader_waits_for_the_page_heap(),
        "stats() to return or to wait",
    )
    resume.set()
    join_all(growing + reading)
    assert not errors and not read_errors, errors + read_errors
    st = stats[0]
    heap.close()
    return {"idle": st.heap_idle, "released": st.heap_released, "inuse": st.heap_inuse}


def test_stats_while_another_thread_grows_the_heap() -> None:
    """Regression: stats() read the mapped bytes and the released pages at
    different moments, so mid-growth heap_idle - heap_released was a whole
    arena (64 MiB) of free resident pages that did not exist."""
    result = run_scenario("scenario_stats_during_growth()", timeout=300)
    assert result["idle"] == result["released"], result


# -- 7. interpreter exit ----------------------------------------------------------------

EXIT_CASES = {
    "malloc": "import realalloc\nrealalloc.malloc(10)\n",
    "open heaps with scavengers": (
        "import ctypes, threading, realalloc\n"
        "heaps = [realalloc.Heap() for _ in range(4)]\n"
        "for h in heaps:\n"
        "    a = h.malloc(8 << 20)\n"
        "    ctypes.memset(a, 1, 8 << 20)\n"
        "    h.free(a)  # free resident pages: work for the scavenger\n"
        "    h.malloc(100)\n"
        "names = [t.name for t in threading.enumerate()]\n"
        "assert names.count('realalloc-scavenger') == 4, names\n"
    ),
    "daemon thread allocating": (
        "import ctypes, threading, realalloc\n"
        "h = realalloc.Heap()\n"
        "busy = threading.Event()\n"
        "def churn():\n"
        "    objs = []\n"
        "    while True:\n"
        "        for n in (16, 3000, 40000, 1 << 20):\n"
        "            objs.append(h.malloc(n))\n"
        "            objs.append(realalloc.malloc(n))\n"
        "        while len(objs) > 64:\n"
        "            a = objs.pop(0)\n"
        "            (h if h.span_of(a) else realalloc.default_heap()).free(a)\n"
        "        busy.set()\n"
        "threading.Thread(target=churn, daemon=True).start()\n"
        "assert busy.wait(60)\n"
    ),
    "daemon thread stopped inside the page heap": (
        # A trace function holds the thread inside MHeap (its lock held) for
        # good: exit must not wait for it, nor for the scavenger it blocks.
        "import sys, threading, realalloc\n"
        "h = realalloc.Heap()\n"
        "inside = threading.Event()\n"
        "def tracer(frame, event, arg):\n"
        "    if frame.f_code.co_name == '_install_locked':\n"
        "        inside.set()\n"
        "        threading.Event().wait()\n"
        "def stuck():\n"
        "    sys.settrace(tracer)\n"
        "    h.malloc(1 << 20)\n"
        "threading.Thread(target=stuck, daemon=True).start()\n"
        "assert inside.wait(60)\n"
    ),
    "a scavenger blocked behind a thread stopped inside the page heap": (
        # The scavenger's next step waits for that thread's MHeap.lock: exit
        # gives up joining it after its timeout (10 s) instead of hanging.
        "import sys, threading, time, realalloc\n"
        "h = realalloc.Heap()\n"
        "h.free(h.malloc(1 << 20))  # grown: its scavenger runs\n"
        "inside = threading.Event()\n"
        "def tracer(frame, event, arg):\n"
        "    if frame.f_code.co_name == '_install_locked':\n"
        "        inside.set()\n"
        "        threading.Event().wait()\n"
        "def stuck():\n"
        "    sys.settrace(tracer)\n"
        "    h.malloc(3 << 20)  # no freed span of its size to reuse: MHeap\n"
        "threading.Thread(target=stuck, daemon=True).start()\n"
        "assert inside.wait(60)\n"
        "time.sleep(0.3)  # the scavenger wakes every 0.1 s and blocks\n"
    ),
    "Buffer in a cycle": (
        "import realalloc\n"
        "h = realalloc.Heap()\n"
        "class Node: pass\n"
        "n = Node()\n"
        "n.me, n.buf, n.heap = n, h.alloc(100_000), h\n"
        "memoryview(n.buf)[:] = b'x' * 100_000\n"
        "m = Node()\n"
        "m.me, m.buf = m, realalloc.default_heap().alloc(64)\n"
        "m.view = memoryview(m.buf)  # exported at exit\n"
        "del n, m\n"
    ),
}


def interpreters() -> Iterator[tuple[str, str | None]]:
    """(version, interpreter or None) for 3.10-3.13: the running one for its
    own version, else pyenv's."""
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for minor in (10, 11, 12, 13):
        if sys.version_info[:2] == (3, minor):
            yield f"3.{minor}", sys.executable
            continue
        found = sorted(versions.glob(f"3.{minor}.*/bin/python3.{minor}"))
        yield f"3.{minor}", str(found[-1]) if found else None


@functools.cache
def cannot_import(python: str) -> str | None:
    """Why ``python`` cannot import this run's realalloc, its C parts included
    (None if it can).  An interpreter whose site-packages holds another
    realalloc (an editable install elsewhere) may mix the two: refused."""
    check = (
        "import os, realalloc, realalloc._fast as f\n"
        f"root = {str(IMPORT_ROOT)!r}\n"
        "for m in (realalloc, f):\n"
        "    assert m.__file__.startswith(root + os.sep), f'{m.__name__} from {m.__file__}'\n"
    )
    proc = subprocess.run(
        [python, "-c", _prelude(None) + check],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode == 0:
        return None
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {proc.returncode}"


PYTHONS = list(interpreters())


@pytest.mark.parametrize("case", list(EXIT_CASES))
@pytest.mark.parametrize(("version", "python"), PYTHONS, ids=[v for v, _ in PYTHONS])
def test_interpreter_exit_never_hangs(version: str, python: str | None, case: str) -> None:
    if python is None:
        pytest.skip(f"no Python {version} here")
    why = cannot_import(python)
    if why is not None:
        pytest.skip(f"realalloc does not import on Python {version} ({python}): {why}")
    proc = run_code(EXIT_CASES[case], python=python, timeout=120, watchdog=False)
    assert proc.stderr == "", proc.stderr  # no traceback, no "Exception ignored"


# -- 8. check() while threads churn ---------------------------------------------------


def scenario_check_under_churn(nthreads: int = 8, checks: int = 50) -> dict[str, Any]:
    """8 threads malloc/free SIZES with patterns; the main thread runs check()
    ``checks`` times meanwhile.  Each must pass; then every object is intact."""
    heap = Heap()
    running = threading.Event()
    running.set()
    done = [0] * nthreads
    finals: list[dict[int, bytes]] = []

    def churn(i: int) -> None:
        rng = random.Random(i)
        mine: dict[int, bytes] = {}
        seq = i << 32
        while running.is_set():
            a = heap.malloc(rng.choice(SIZES))
            seq += 1
            mine[a] = pattern(a, seq, heap.usable_size(a))
            write(a, mine[a])
            if len(mine) > 30:
                a = rng.choice(list(mine))
                assert holds(a, mine.pop(a)), f"object {a:#x} changed"
                heap.free(a)
            done[i] += 1
        finals.append(mine)

    threads, errors = start_threads([lambda i=i: churn(i) for i in range(nthreads)])
    wait_for(lambda: min(done) > 0, "every thread to start")
    ops = []
    for _ in range(checks):
        heap.check()
        ops.append(sum(done))
        # A stopped world's waiters back off (sleep); let them in before the
        # next check, so every check sees new work.
        wait_for(lambda: sum(done) > ops[-1] + nthreads, "the threads to go on")
    running.clear()
    join_all(threads)
    assert not errors, errors
    live = {a: d for mine in finals for a, d in mine.items()}
    no_overlap((a, len(d)) for a, d in live.items())
    for a, data in live.items():
        assert holds(a, data), f"object {a:#x} changed"
        heap.free(a)
    heap.check()
    heap.close()
    return {"checks": checks, "ops": sum(done), "ops_at_checks": ops[:3] + ops[-3:]}


def test_check_is_exact_while_threads_churn() -> None:
    result = run_scenario("scenario_check_under_churn()")
    assert result["checks"] == 50


# -- Buffers and heap slots ---------------------------------------------------------------


def test_only_heap_alloc_makes_buffers() -> None:
    with pytest.raises(realalloc.ArgumentTypeError):
        realalloc.Buffer()
    with pytest.raises(realalloc.ArgumentTypeError):
        realalloc.Buffer(0x1000, 16)
    with pytest.raises(realalloc.ArgumentTypeError):
        realalloc.Buffer.__new__(realalloc.Buffer)


def scenario_max_heaps() -> dict[str, Any]:
    """In a fresh process: MAX_HEAPS heaps open at once while the default heap
    is unused (it is made on first use and takes a slot only then)."""
    heaps = [Heap(background_scavenger=False) for _ in range(realalloc.MAX_HEAPS)]
    for h in heaps[:: max(1, len(heaps) // 16)]:
        Population(h, copies=1).intact()
    try:
        Heap()
        extra = "made"
    except realalloc.OutOfMemoryError:
        extra = "OutOfMemoryError"
    try:
        realalloc.malloc(10)
        default = "made"
    except realalloc.OutOfMemoryError:
        default = "OutOfMemoryError"
    heaps.pop().close()
    realalloc.free(realalloc.malloc(10))  # the slot given back serves the default heap
    for h in heaps:
        h.close()
    return {"open": realalloc.MAX_HEAPS, "one_more": extra, "default_heap_then": default}


def test_max_heaps_open_at_once() -> None:
    result = run_scenario("scenario_max_heaps()")
    assert result == {
        "open": realalloc.MAX_HEAPS,
        "one_more": "OutOfMemoryError",
        "default_heap_then": "OutOfMemoryError",
    }


def test_fragmented_free_pages_do_not_hide_a_growth_from_the_limit() -> None:
    """Regression: admission judged whether the heap must grow by the count
    of free pages; free pages in pieces cannot hold a larger request, so
    first fit grew the heap by an arena whose metadata the limit never saw
    (seen as a 64 KiB overshoot under 8 threads)."""
    from realalloc.core.arena import ARENA_META_BYTES

    with Heap(background_scavenger=False) as heap:
        objs = [heap.malloc(1 << 20) for _ in range(60)]
        for addr in objs[::2]:
            heap.free(addr)  # 30 MiB free, in 1 MiB pieces
        heap.reclaim()  # kept spans back to the page heap: the pieces are free pages
        request = 6 << 20  # more than any piece, and than the arena's free tail
        limit = retained(heap) + request + ARENA_META_BYTES // 2
        heap.set_memory_limit(limit)
        try:
            big = heap.malloc(request)
        except realalloc.OutOfMemoryError:
            big = 0
        assert retained(heap) <= limit, f"{retained(heap) - limit} bytes over the limit"
        assert len(heap.mheap.arenas) == 2 or not big  # the request did need a growth
        heap.set_memory_limit(None)
        for addr in [*objs[1::2], *([big] if big else [])]:
            heap.free(addr)
        heap.check()
