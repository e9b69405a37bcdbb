"""mstress: threads churning objects of mixed lifetimes and passing them to each other.

After the multi-threaded stress test of mimalloc-bench (``mstress``): many
short-lived objects, some that live for a while, a few big ones, and a
steady flow of objects from one thread to another.  Here:

* ``rounds`` rounds; each starts ``threads`` new threads and waits for them.
* Every step of a thread allocates one object and stamps it.  Sizes: 80 %
  in 8-256 B, 18 % in 256 B-8 KiB, 2 % in 8-128 KiB (each range
  log-uniform, so small sizes dominate within it).  Then the object is one of:

  - *short-lived* (30 %): freed at once;
  - *retained* (45 %): put in a random slot of the thread's array of
    ``keep`` objects, freeing the object that was there;
  - *transferred* (25 %): appended to the inbox (a deque) of the next
    thread (index + 1, modulo ``threads``); then, if its own inbox holds
    more than ``transfer`` objects, the thread takes the oldest out, checks
    it and frees it: always an object another thread (maybe of an earlier
    round) allocated.  Inboxes outlive rounds.

* At the end of its round a thread checks its array, frees every other
  slot and leaves the rest to the thread with its index in the next round,
  so some objects live across threads and rounds.
* After the last round the main thread checks and frees whatever is left.

Thread scheduling decides when a transferred object is freed, but not by
which thread, nor how many objects are allocated and freed in all.  Random
choices are drawn by :func:`prepare` before timing.
"""

from __future__ import annotations

import math
import random
from array import array
from collections import deque
from dataclasses import dataclass
from typing import Any

from .common import Allocator, Worker, run_all, verify

__all__ = ["Plan", "execute", "prepare"]

SHORT, KEEP, TRANSFER = 0, 1, 2


@dataclass
class Plan:
    threads: int
    rounds: int
    steps: int
    keep: int
    transfer: int
    script: list[list[tuple[array[int], array[int], array[int]]]]
    """per round, per thread: (action, size, slot) of each step"""


def _log_uniform(rnd: Any, lo: int, hi: int) -> int:
    return int(math.exp(math.log(lo) + rnd() * (math.log(hi) - math.log(lo))))


def prepare(scale: float, seed: int) -> Plan:
    threads, rounds, keep, transfer = 4, 10, 500, 500
    steps = max(100, int(8000 * scale))
    r = random.Random(seed)
    rnd = r.random

    def size() -> int:
        u = rnd()
        if u < 0.80:
            return _log_uniform(rnd, 8, 256)
        if u < 0.98:
            return _log_uniform(rnd, 256, 8192)
        return _log_uniform(rnd, 8192, 131072)

    def action() -> int:
        u = rnd()
        return SHORT if u < 0.30 else KEEP if u < 0.75 else TRANSFER

    script = [
        [
            (
                array("B", [action() for _ in range(steps)]),
                array("I", [size() for _ in range(steps)]),
                array("I", [int(rnd() * keep) for _ in range(steps)]),
            )
            for _ in range(threads)
        ]
        for _ in range(rounds)
    ]
    return Plan(threads, rounds, steps, keep, transfer, script)


def _thread(
    a: Allocator,
    mem: Any,
    plan: Plan,
    rnd: int,
    idx: int,
    objs: list[int],
    sizes: list[int],
    inboxes: list[deque[tuple[int, int]]],
) -> tuple[int, int]:
    """One thread of round ``rnd``: its steps, then free half its array.  -> (mallocs, frees)"""
    m, f, stamp, check = a.malloc, a.free, mem.stamp, mem.check
    inbox, limit = inboxes[idx], plan.transfer
    push, pop = inboxes[(idx + 1) % len(inboxes)].append, inbox.popleft
    frees = 0
    actions, ns, ks = plan.script[rnd][idx]
    for act, n, k in zip(actions, ns, ks, strict=True):
        p = m(n)
        stamp(p, n)
        if act == KEEP:
            old = objs[k]
            if old:
                f(old)
                frees += 1
            objs[k] = p
            sizes[k] = n
        elif act == SHORT:
            f(p)
            frees += 1
        else:
            push((p, n))
            if len(inbox) > limit:
                q, qn = pop()  # only this thread takes from its inbox
                if not check(q, qn):
                    raise AssertionError(f"mstress: transferred object {q:#x} overwritten")
                f(q)
                frees += 1
    held = [(p, n) for p, n in zip(objs, sizes, strict=True) if p]
    verify(mem, [p for p, _ in held], [n for _, n in held], f"mstress round {rnd} thread {idx}")
    for k in range(0, len(objs), 2):
        if objs[k]:
            f(objs[k])
            frees += 1
            objs[k] = 0
    return len(ns), frees


def execute(a: Allocator, mem: Any, plan: Plan) -> dict[str, int]:
    inboxes: list[deque[tuple[int, int]]] = [deque() for _ in range(plan.threads)]
    arrays = [([0] * plan.keep, [0] * plan.keep) for _ in range(plan.threads)]
    mallocs = frees = 0
    for rnd in range(plan.rounds):
        workers = [
            Worker(_thread, a, mem, plan, rnd, i, objs, sizes, inboxes)
            for i, (objs, sizes) in enumerate(arrays)
        ]
        for nm, nf in run_all(workers):
            mallocs += nm
            frees += nf
    left = [(p, n) for objs, sizes in arrays for p, n in zip(objs, sizes, strict=True) if p]
    for inbox in inboxes:
        left += inbox
    checked = verify(mem, [p for p, _ in left], [n for _, n in left], "mstress at the end")
    f = a.free
    for p, _ in left:
        f(p)
    return {"mallocs": mallocs, "frees": frees + len(left), "checked": checked}
