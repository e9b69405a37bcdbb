"""xmalloc-test: producer threads allocate, consumer threads free.

After Lever and Boreham's xmalloc-test (mimalloc-bench ``xmalloc-test``),
the pattern of a pipeline in which one stage builds messages and another
disposes of them: no object is freed by the thread that allocated it.  Here:

* ``producers`` threads each allocate ``batches`` batches of ``batch``
  objects (sizes uniform in 8-512 B), stamp every object and put the batch
  on one shared queue.  The queue holds at most ``depth`` batches; a
  producer that finds it full waits, which bounds the live set.
* ``consumers`` threads take batches off the queue (whichever producer made
  them), check the stamps of the first and the last object of the batch,
  and free every object in it.
* The main thread waits for the producers, then tells each consumer to stop
  (one ``None`` each) and waits for them.

The queue is ``queue.Queue`` (a lock and two condition variables): per batch
it costs the same for every allocator.  Random sizes are drawn by
:func:`prepare` before timing.
"""

from __future__ import annotations

import queue
import random
from array import array
from dataclasses import dataclass
from typing import Any

from .common import Allocator, Worker, run_all

__all__ = ["Plan", "execute", "prepare"]

MIN_SIZE = 8
MAX_SIZE = 512


@dataclass
class Plan:
    producers: int
    consumers: int
    batches: int
    batch: int
    depth: int
    sizes: list[list[array[int]]]
    """per producer, per batch: the sizes of its objects"""


def prepare(scale: float, seed: int) -> Plan:
    producers, consumers, batch, depth = 2, 2, 500, 16
    batches = max(4, int(500 * scale))
    r = random.Random(seed)
    rnd, span = r.random, MAX_SIZE - MIN_SIZE + 1
    sizes = [
        [array("I", [MIN_SIZE + int(rnd() * span) for _ in range(batch)]) for _ in range(batches)]
        for _ in range(producers)
    ]
    return Plan(producers, consumers, batches, batch, depth, sizes)


def _produce(a: Allocator, mem: Any, plan: Plan, idx: int, q: queue.Queue[Any]) -> int:
    m, stamp, put = a.malloc, mem.stamp, q.put
    made = 0
    for ns in plan.sizes[idx]:
        objs = []
        for n in ns:
            p = m(n)
            stamp(p, n)
            objs.append(p)
        put((objs, ns))
        made += len(objs)
    return made


def _consume(a: Allocator, mem: Any, q: queue.Queue[Any]) -> int:
    f, check, get = a.free, mem.check, q.get
    freed = 0
    error: BaseException | None = None
    while True:
        item = get()
        if item is None:
            if error is not None:
                raise error
            return freed
        if error is not None:
            continue  # keep draining, so that no producer waits forever on a full queue
        objs, ns = item
        try:
            if not (check(objs[0], ns[0]) and check(objs[-1], ns[-1])):
                raise AssertionError(f"xmalloc-test: batch at {objs[0]:#x} overwritten in flight")
            for p in objs:
                f(p)
            freed += len(objs)
        except BaseException as e:  # raised when the stop sign comes
            error = e


def execute(a: Allocator, mem: Any, plan: Plan) -> dict[str, int]:
    q: queue.Queue[Any] = queue.Queue(maxsize=plan.depth)
    consumers = [Worker(_consume, a, mem, q) for _ in range(plan.consumers)]
    for c in consumers:
        c.start()
    made = sum(run_all([Worker(_produce, a, mem, plan, i, q) for i in range(plan.producers)]))
    for _ in consumers:
        q.put(None)
    freed = sum(c.result() for c in consumers)
    checked = 2 * plan.producers * plan.batches
    return {"mallocs": made, "frees": freed, "checked": checked}
