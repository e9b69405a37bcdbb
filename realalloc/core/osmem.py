"""OS memory: the states of mapped regions and their accounting (Go: runtime/mem.go).

See realalloc/__init__.py for an overview of the allocator.

This is the only module that imports the compiled shim (``realalloc._shim``).
It turns every nonzero errno from the shim into :class:`ShimError` (a
``MemoryError`` and ``OSError``) in one place, ``_call``, and keeps the byte
counts of each region state, the way Go's sysReserve/sysMap/sysUnused keep
their statistics at the interface boundary while the OS layer only acts::

    None --reserve--> Reserved --commit--> Ready --release--> Ready (not resident)
      ^                                      |
      +----------------unmap-----------------+

Invariants:
  OS-1: 0 <= released <= ready <= reserved   (bytes)
  OS-2: a failed call changes neither the region nor the counters.

Locking: ``OSMem`` counters are updated under ``OSMem.lock``, a leaf lock
(nothing else is acquired while it is held).  The shim calls themselves need
no lock.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Final

from .. import __version__
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
    "ARENA_BYTES",
    "OS_PAGE_SIZE",
    "PAGE_SIZE",
    "FaultOp",
    "OSMem",
    "OSMemStats",
    "fault_hits",
    "ffi",
    "inject_faults",
    "lib",
    "resident_bytes",
]

PAGE_SIZE: Final[int] = 1 << lib.RA_PAGE_SHIFT
"""Runtime page: 8 KiB.  (An *OS page* is 4 KiB.)"""
OS_PAGE_SIZE: Final = 4096
ARENA_BYTES: Final[int] = 1 << lib.RA_ARENA_SHIFT
"""A heap arena: 64 MiB, reserved at a 64 MiB-aligned address."""


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
    except KeyError:
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
    released: int
    """Ready bytes given back with MADV_DONTNEED and not reused since."""


class OSMem:
    """One heap's view of the OS: performs the transitions and counts bytes.

    Fresh committed pages count as released: they are not resident until
    touched and read as zero, exactly like pages given back with DONTNEED.
    """

    __slots__ = ("_regions", "lock", "ready", "released", "released_total", "reserved")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reserved = 0
        self.ready = 0
        self.released = 0
        self.released_total = 0  # cumulative bytes given back with release()
        self._regions: dict[int, tuple[int, bool]] = {}  # base -> (bytes, committed)

    def reserve(self, nbytes: int, align: int) -> int:
        """None -> Reserved: ``nbytes`` of address space aligned to ``align``."""
        out = ffi.new("uintptr_t *")
        _call(lib.ra_reserve(nbytes, align, out), "reserve")
        base = int(out[0])
        with self.lock:
            self.reserved += nbytes
            self._regions[base] = (nbytes, False)
        return base

    def commit(self, base: int) -> None:
        """Reserved -> Ready for the whole region at ``base``."""
        nbytes, _ = self._regions[base]
        _call(lib.ra_commit(base, nbytes), "commit")
        with self.lock:
            self.ready += nbytes
            self.released += nbytes
            self._regions[base] = (nbytes, True)

    def map(self, nbytes: int) -> int:
        """None -> Ready: ``nbytes`` for metadata, outside fault injection."""
        out = ffi.new("uintptr_t *")
        _call(lib.ra_map(nbytes, out), "map")
        base = int(out[0])
        with self.lock:
            self.reserved += nbytes
            self.ready += nbytes
            self.released += nbytes
            self._regions[base] = (nbytes, True)
        return base

    def release(self, addr: int, nbytes: int) -> None:
        """Ready -> Ready, not resident (madvise DONTNEED): RSS drops now."""
        _call(lib.ra_release(addr, nbytes), "release")
        with self.lock:
            self.released += nbytes
            self.released_total += nbytes

    def reused(self, nbytes: int) -> None:
        """Count released bytes that the heap has handed out again."""
        with self.lock:
            self.released -= nbytes

    def abandon(self, base: int) -> None:
        """Unmap the region at ``base``, from which nothing was handed out."""
        nbytes, committed = self._regions[base]
        _call(lib.ra_unmap(base, nbytes), "unmap")
        with self.lock:
            del self._regions[base]
            self.reserved -= nbytes
            if committed:
                self.ready -= nbytes
                self.released -= nbytes

    def unmap_all(self) -> None:
        """Unmap every region (any -> None); the counters return to zero."""
        with self.lock:
            regions, self._regions = self._regions, {}
            self.reserved = self.ready = self.released = 0
        for base, (nbytes, _) in regions.items():
            _call(lib.ra_unmap(base, nbytes), "unmap")

    def stats(self) -> OSMemStats:
        with self.lock:
            return OSMemStats(self.reserved, self.ready, self.released)


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
