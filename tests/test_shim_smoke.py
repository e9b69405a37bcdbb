"""The compiled shim on its own: reserve, commit, write, release, unmap one arena."""

import errno

import pytest

from realalloc.core import osmem
from realalloc.core.osmem import OSMem, ffi, lib, resident_bytes
from realalloc.core.sizeclasses import ARENA_BYTES
from realalloc.errors import InvalidArgumentError, ShimError

STATS = ffi.new("ra_os_stats *")  # byte counts of the raw shim calls below


def test_shim_version_matches_package():
    import realalloc

    assert ffi.string(lib.ra_shim_version()).decode() == realalloc.__version__


def test_reserve_is_aligned_and_commit_makes_memory_usable():
    mem = OSMem()
    base = mem.reserve(ARENA_BYTES, ARENA_BYTES)
    try:
        assert base % ARENA_BYTES == 0
        assert mem.stats() == osmem.OSMemStats(ARENA_BYTES, 0, 0)
        mem.commit(base)
        assert mem.stats() == osmem.OSMemStats(ARENA_BYTES, ARENA_BYTES, 0)
        assert resident_bytes(base, ARENA_BYTES) == 0  # committed, never touched
        view = ffi.buffer(ffi.cast("char *", base), 1 << 20)
        view[:] = b"\xab" * (1 << 20)
        assert view[12345] == b"\xab"
        assert resident_bytes(base, ARENA_BYTES) >= 1 << 20
        mem.release(base, 1 << 20)
        assert resident_bytes(base, 1 << 20) == 0
        assert view[:] == bytes(1 << 20)  # released pages read as zero
        assert mem.stats() == osmem.OSMemStats(ARENA_BYTES, ARENA_BYTES, 1 << 20)
    finally:
        mem.unmap_all()
    assert mem.stats() == osmem.OSMemStats(0, 0, 1 << 20)  # released_total is cumulative


@pytest.mark.parametrize(
    ("call", "args"),
    [
        (lib.ra_commit, (4096 + 1, 4096, STATS)),
        (lib.ra_release, (4096, 0, STATS)),
        (lib.ra_unmap, (4096, 100, 1, STATS)),
    ],
)
def test_shim_rejects_unaligned_ranges(call, args):
    assert call(*args) == errno.EINVAL


def test_errno_becomes_shim_error_with_the_operation():
    with pytest.raises(ShimError) as info:
        OSMem().reserve(1 << 62, 1 << 62)
    assert isinstance(info.value, MemoryError) and isinstance(info.value, OSError)
    assert info.value.errno != 0 and "reserve failed" in str(info.value)


def _attempt(op: str, base: int) -> int:
    """One raw shim call of ``op`` on 1 MiB; returns its errno (0: success)."""
    if op == "reserve":
        out = ffi.new("uintptr_t *")
        rc = lib.ra_reserve(1 << 20, 4096, out, STATS)
        if rc == 0:
            lib.ra_unmap(out[0], 1 << 20, 0, STATS)
        return rc
    if op == "commit":
        return lib.ra_commit(base, 1 << 20, STATS)
    return lib.ra_release(base, 1 << 20, STATS)


@pytest.mark.parametrize("op", ["reserve", "commit", "release"])
def test_fault_injection_fails_the_next_n_calls_then_every_nth(op):
    mem = OSMem()
    base = mem.reserve(1 << 20, 4096)
    mem.commit(base)
    before = osmem.fault_hits(op)
    try:
        osmem.inject_faults(op, 2)
        assert [_attempt(op, base) for _ in range(3)] == [errno.ENOMEM, errno.ENOMEM, 0]
        osmem.inject_faults(op, 0, 3)
        assert [_attempt(op, base) != 0 for _ in range(6)] == [False, False, True] * 2
        assert osmem.fault_hits(op) == before + 4
    finally:
        osmem.inject_faults(op, 0)
        mem.unmap_all()


def test_fault_op_names_are_checked():
    with pytest.raises(InvalidArgumentError, match="'mmap'"):
        osmem.inject_faults("mmap", 1)
