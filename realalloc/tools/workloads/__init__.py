"""Allocator workloads in the spirit of mimalloc-bench, re-expressed in Python.

See realalloc/__init__.py for an overview of the allocator.

Every workload is a driver written against one tiny interface,
:class:`common.Allocator` (``malloc(size) -> int`` and ``free(addr)``) and a
memory object that stamps and checks objects (``common.Memory``), so the same
code runs on realalloc, on the seed's designs (realalloc/designs) and on the
C allocators.  Each module has ``prepare(scale, seed) -> plan`` (untimed: it
draws every random choice) and ``execute(allocator, memory, plan) -> counts``
(timed; counts has ``mallocs``, ``frees`` and ``checked``).  Runners:
``realalloc compare`` (realalloc/tools/compare.py) and bench/workloads/run.py,
bench/bench_fragmentation.py.

Modules:

* ``common``: the interface, ``Memory``, threads, ``verify``;
* ``larson``, ``mstress``, ``xmalloc_test``, ``alloc_test``, ``large``: after
  mimalloc-bench's;
* ``fragmentation``: bench/bench_fragmentation.py's four phases.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Final

from ...errors import InvalidArgumentError

__all__ = ["WORKLOADS", "load"]

WORKLOADS: Final = (
    "larson",
    "mstress",
    "xmalloc-test",
    "alloc-test",
    "large",
    "fragmentation",
)
"""Workload names, in table order (a module each: ``-`` becomes ``_``)."""


def load(name: str) -> ModuleType:
    """The module of workload ``name`` (one of WORKLOADS)."""
    if name not in WORKLOADS:
        raise InvalidArgumentError(f"unknown workload {name!r}; one of {', '.join(WORKLOADS)}")
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
