"""OS memory: the states of mapped regions and their accounting (Go: runtime/mem.go).

See realalloc/__init__.py for an overview of the allocator.

This is the only module that imports the compiled cffi module
(``realalloc._shim``); everything else takes ``ffi`` and ``lib`` from here.
It turns every nonzero errno from the shim into :class:`ShimError` (a
``MemoryError`` and ``OSError``) in one place, ``_call``.  Byte counts are
kept where Go keeps them, at the interface boundary: each shim call updates
the region's ``ra_os_stats`` itself when it succeeds, so no exception can
land between the OS call and its accounting::

    None --reserve--> Reserved --commit--> Ready --release--> Ready (not resident)
      ^                                      |
      +----------------unmap-----------------+

Which free heap pages are released is the page allocator's knowledge
(scavenged bits, realalloc/core/pagealloc.py), not counted again here.

Invariants:
  OS-1: 0 <= ready <= reserved   (bytes)
  OS-2: a failed call changes neither the region nor the counters.

Locking: ``OSMem._regions`` is changed only by the heap that owns it, under
its heap lock; the counters are atomics in C.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Final

from .._version import __version__
from ..errors import InvalidArgumentError, ShimError, require_int

try:
    from .._shim import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "realalloc's C shim (realalloc._shim) is not built; install the package with "
        "`pip install .` or `pip install -e .` (needs a C compiler)"
    ) from exc

_shim_version = ffi.string(lib.ra_shim_version()).decode()
if _shim_version != __version__:  # pragma: no cover - depends on the build
    raise ImportError(
        f"realalloc._shim was built for realalloc {_shim_version}, but this is realalloc "
        f"{__version__}; rebuild it with `pip install .` (or `python csrc/build_shim.py`)"
    )

__all__ = [
    "OS_PAGE_SIZE",
    "FaultOp",
    "OSMem",
    "OSMemStats",
    "fault_hits",
    "ffi",
    "inject_faults",
    "lib",
    "resident_bytes",
]

OS_PAGE_SIZE: Final = 4096


class FaultOp:
    """Names of the OS calls that fault injection can fail."""

    RESERVE: Final = lib.RA_OP_RESERVE
    COMMIT: Final = lib.RA_OP_COMMIT
    RELEASE: Final = lib.RA_OP_RELEASE
    NAMES: Final[dict[str, int]] = {"reserve": RESERVE, "commit": COMMIT, "release": RELEASE}


def _call(rc: int, operation: str) -> None:
    """Raise ShimError for a nonzero errno returned by the shim."""
    if rc != 0:
        raise ShimError(rc, operation)


def _op(op: str) -> int:
    try:
        return FaultOp.NAMES[op]
    except (KeyError, TypeError):
        raise InvalidArgumentError(
            f"fault op must be one of {sorted(FaultOp.NAMES)}, got {op!r}"
        ) from None


def inject_faults(op: str, nfail: int = 1, every: int = 0) -> None:
    """Make the next ``nfail`` shim calls of ``op`` fail with ENOMEM, then every
    ``every``-th call (0: none).  ``inject_faults(op, 0)`` turns it off.

    ``op`` is "reserve", "commit" or "release".  Process-wide.
    """
    code = _op(op)
    nfail = require_int("nfail", nfail, 0, (1 << 63) - 1)
    every = require_int("every", every, 0, (1 << 63) - 1)
    _call(lib.ra_fault_set(code, nfail, every), "fault_set")


def fault_hits(op: str) -> int:
    """How many calls of ``op`` fault injection has failed so far."""
    return int(lib.ra_fault_hits(_op(op)))


def resident_bytes(addr: int, nbytes: int) -> int:
    """Bytes of ``[addr, addr+nbytes)`` resident in RAM now (mincore)."""
    out = ffi.new("size_t *")
    _call(lib.ra_resident(addr, nbytes, out), "resident")
    resident: int = out[0]
    return resident * OS_PAGE_SIZE


@dataclass(frozen=True, slots=True)
class OSMemStats:
    """Bytes in each region state, as counted at the shim boundary."""

    reserved: int
    """Address space reserved (Reserved or Ready)."""
    ready: int
    """Bytes readable and writable (Ready)."""
    released_total: int
    """Bytes given back with MADV_DONTNEED, cumulative."""


class OSMem:
    """One owner's regions (a heap's arenas, or its metadata): performs the
    transitions; the shim counts the bytes in ``c`` (a ``ra_os_stats``)."""

    __slots__ = ("_regions", "c")

    def __init__(self) -> None:
        self.c: Any = ffi.new("ra_os_stats *")
        self._regions: dict[int, tuple[int, bool]] = {}  # base -> (bytes, ready)

    def reserve(self, nbytes: int, align: int) -> int:
        """None -> Reserved: ``nbytes`` of address space aligned to ``align``."""
        out = ffi.new("uintptr_t *")
        _call(lib.ra_reserve(nbytes, align, out, self.c), "reserve")
        try:
            self._regions[int(out[0])] = (nbytes, False)
        except BaseException:  # interrupted: give it back rather than lose it
            lib.ra_unmap(out[0], nbytes, 0, self.c)
            raise
        return int(out[0])

    def commit(self, base: int) -> None:
        """Reserved -> Ready for the whole region at ``base``."""
        nbytes, _ = self._regions[base]
        _call(lib.ra_commit(base, nbytes, self.c), "commit")
        self._regions[base] = (nbytes, True)

    def map(self, nbytes: int) -> int:
        """None -> Ready: ``nbytes`` for metadata, outside fault injection."""
        out = ffi.new("uintptr_t *")
        _call(lib.ra_map(nbytes, out, self.c), "map")
        try:
            self._regions[int(out[0])] = (nbytes, True)
        except BaseException:
            lib.ra_unmap(out[0], nbytes, 1, self.c)
            raise
        return int(out[0])

    def release(self, addr: int, nbytes: int) -> None:
        """Ready -> Ready, not resident (madvise DONTNEED): RSS drops now."""
        _call(lib.ra_release(addr, nbytes, self.c), "release")

    def abandon(self, base: int) -> None:
        """Unmap the region at ``base``, from which nothing was handed out."""
        nbytes, ready = self._regions[base]
        _call(lib.ra_unmap(base, nbytes, int(ready), self.c), "unmap")
        del self._regions[base]

    def unmap_all(self) -> None:
        """Unmap every region (any -> None); the counters return to zero."""
        regions, self._regions = self._regions, {}
        for base, (nbytes, ready) in regions.items():
            _call(lib.ra_unmap(base, nbytes, int(ready), self.c), "unmap")

    def stats(self) -> OSMemStats:
        c = self.c
        return OSMemStats(int(c.reserved), int(c.ready), int(c.released_total))


def _faults_from_environment() -> None:
    """REALALLOC_FAULTS="reserve=N,commit=N:EVERY,..." arms fault injection at import."""
    spec = os.environ.get("REALALLOC_FAULTS", "").strip()
    for item in filter(None, (part.strip() for part in spec.split(","))):
        op, eq, counts = item.partition("=")
        nfail, _, every = counts.partition(":")
        try:
            if not eq or not nfail.strip():
                raise ValueError("no count after the operation")
            inject_faults(op.strip(), int(nfail), int(every or 0))
        except (ValueError, TypeError) as exc:
            raise InvalidArgumentError(
                f"bad REALALLOC_FAULTS entry {item!r} (want OP=N[:EVERY]): {exc}"
            ) from None


_faults_from_environment()
