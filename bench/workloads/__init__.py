"""Allocator workloads in the spirit of mimalloc-bench, re-expressed in Python.

Every workload is a Python driver written against one tiny interface,
:class:`workloads.common.Allocator` (``malloc(size) -> int`` and ``free(addr)``),
so the same code runs on realalloc and on the C allocators glibc, mimalloc,
tcmalloc and jemalloc.  ``run.py`` runs each (workload, allocator) pair in a
subprocess of its own and prints one table; see bench/README.md, section
"Allocator workloads".

Modules:

* ``common``: the allocator interface, how each allocator is loaded, and the
  small C helpers that write (stamp) and check the bytes of objects;
* ``larson``, ``mstress``, ``xmalloc_test``, ``alloc_test``, ``large``: one
  workload each, with ``prepare(scale, seed)`` (untimed: draws every random
  choice) and ``execute(alloc, plan)`` (timed);
* ``run``: the runner.
"""
