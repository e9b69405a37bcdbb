"""Heaps across fork and interpreter exit (Go: none; the runtime owns its process).

See realalloc/__init__.py for an overview of the allocator.

**fork.**  A child has one thread, the one that called ``os.fork()``.  Any
lock another thread held at that moment would stay held in the child, and
any heap change it was making would stay half made.  So before the fork
(``os.register_at_fork``) every open ``Heap`` stops its world (other threads
finish their calls into it and wait), and every ``MHeap`` lock and the
process-wide leaf locks are taken, in lock order.  Both parent and child
then release them; the child also:

* releases the caches of the threads that do not exist in it (their spans
  go back to the central lists, their counters into the heap's);
* forgets the background scavenger's thread, which is not in the child, so
  that the next growth starts a new one.

The two locks it does not take, the heap-slot lock (Heap() and close) and
the default heap's, are made anew in the child instead (core/heap.py,
realalloc/__init__.py): a thread holding one at the fork is not there.

C locks need nothing: they are never held while Python runs, and the
forking thread is running Python.  ``fork`` from inside a heap call (a
signal handler that forks) cannot stop that heap's world; it is skipped,
and its state in the child is whatever the interrupted call left.

**exit.**  At interpreter exit (``atexit``, before finalization) every
background scavenger is stopped and joined.  During finalization itself a
heap's ``__del__`` does nothing: daemon threads may be frozen inside it
(Python 3.13 stops them), so waiting for them could hang, and the process
is about to give all of its memory back anyway.

Locking: the registries are WeakSets, changed under ``_registry_lock``
(re-entrant: changing a WeakSet allocates a weakref, which can run the
cyclic GC, whose finalizer of a heap closes it and unregisters it on the
same thread; see realalloc/_debug.py).
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from typing import TYPE_CHECKING

from .. import _fast
from ..errors import HeapClosedError, ReentrancyError
from .arena import ARENAS

if TYPE_CHECKING:
    from .heap import Heap
    from .mheap import MHeap

__all__ = ["register_heap", "register_mheap", "unregister_heap"]

_registry_lock = threading.RLock()  # re-entrant: see realalloc/_debug.py (finalizers)
_heaps: weakref.WeakSet[Heap] = weakref.WeakSet()
_mheaps: weakref.WeakSet[MHeap] = weakref.WeakSet()
_stopped: list[Heap] = []  # heaps whose world the fork stopped
_locked: list[MHeap] = []


def register_heap(heap: Heap) -> None:
    _fast.locked(_registry_lock, _heaps.add, heap)


def unregister_heap(heap: Heap) -> None:
    _fast.locked(_registry_lock, _heaps.discard, heap)


def register_mheap(mheap: MHeap) -> None:
    _fast.locked(_registry_lock, _mheaps.add, mheap)


def _before_fork() -> None:
    _registry_lock.acquire()
    for heap in list(_heaps):
        try:
            heap._stop_world()
        except (HeapClosedError, ReentrancyError):
            continue  # nothing to protect, or cannot: see the module docstring
        _stopped.append(heap)
    for mheap in list(_mheaps):
        if not mheap.lock.held():
            mheap.lock.acquire()
            _locked.append(mheap)
    ARENAS.lock.acquire()


def _after_fork(child: bool) -> None:
    ARENAS.lock.release()
    for mheap in _locked:
        mheap.lock.release()
    _locked.clear()
    for heap in _stopped:
        if child:
            heap._after_fork_child()
        heap._start_world()
    _stopped.clear()
    _registry_lock.release()


def _at_exit() -> None:
    heaps: list[Heap] = _fast.locked(_registry_lock, list, _heaps)
    for heap in heaps:
        heap._stop_scavenger()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=lambda: _after_fork(child=False),
    after_in_child=lambda: _after_fork(child=True),
)
atexit.register(_at_exit)
