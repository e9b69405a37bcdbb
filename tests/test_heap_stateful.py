"""A model-based test of realalloc.Heap: hypothesis drives malloc / free / realloc /
write against a plain dict model (address -> size, scan, bytes of the usable extent)
and after every step the real memory must equal the model, no two live objects may
overlap, and heap.check() must pass."""

from __future__ import annotations

import ctypes
import struct
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

import realalloc
from realalloc.core.sizeclasses import MAX_SMALL_SIZE, PAGE_SIZE, roundupsize, tiny_align

pytestmark = pytest.mark.slow

M64 = (1 << 64) - 1

sizes = st.one_of(
    st.integers(0, 15),  # tiny when noscan
    st.integers(16, 1024),
    st.integers(1025, MAX_SMALL_SIZE),
    st.sampled_from([16, 24, 32, 48, 512, 8192, 32768, 32767, 1025]),  # class edges
    st.integers(MAX_SMALL_SIZE + 1, 200000).filter(lambda n: n % 3 == 0),  # rarer: large
)


def pattern(addr: int, seq: int, n: int) -> bytes:
    words = [(addr * 0x9E3779B97F4A7C15 + (seq + k) * 0xC2B2AE3D27D4EB4F) & M64 for k in (1, 2)]
    unit = struct.pack("<2Q", *words) + bytes([seq & 0xFF | 1])
    return (unit * (n // 17 + 1))[:n]


class HeapMachine(RuleBasedStateMachine):
    objects = Bundle("objects")

    def __init__(self) -> None:
        super().__init__()
        self.heap = realalloc.Heap()
        # addr -> (requested size, scan, bytes of the usable extent as last written)
        self.model: dict[int, tuple[int, bool, bytes]] = {}
        self.seq = 0

    def _tiny(self, size: int, scan: bool) -> bool:
        return not scan and size < 16

    def _store(self, addr: int, size: int, scan: bool) -> None:
        usable = self.heap.usable_size(addr)
        if self._tiny(size, scan):
            assert size <= usable <= 16 - addr % 16
        elif size:
            assert usable == roundupsize(size), (size, usable)
        self.seq += 1
        data = pattern(addr, self.seq, usable)
        ctypes.memmove(addr, data, usable)
        self.model[addr] = (size, scan, data)

    def _check_alignment(self, addr: int, size: int, scan: bool) -> None:
        if size == 0:
            return
        if self._tiny(size, scan):
            assert addr % tiny_align(size) == 0 and addr % 16 + size <= 16, (hex(addr), size)
            return
        assert addr % 8 == 0, (hex(addr), size)
        if size > MAX_SMALL_SIZE:
            assert addr % PAGE_SIZE == 0, (hex(addr), size)

    @rule(target=objects, size=sizes, scan=st.booleans(), zero=st.booleans())
    def malloc(self, size: int, scan: bool, zero: bool) -> int:
        addr = self.heap.malloc(size, scan=scan, zero=zero)
        assert addr not in self.model, f"{addr:#x} is already live"
        self._check_alignment(addr, size, scan)
        if zero:
            n = size if self._tiny(size, scan) else self.heap.usable_size(addr)
            assert ctypes.string_at(addr, n) == bytes(n), f"{size} B at {addr:#x} not zeroed"
        self._store(addr, size, scan)
        return addr

    @rule(addr=consumes(objects))
    def free(self, addr: int) -> None:
        size, _, data = self.model.pop(addr)
        assert ctypes.string_at(addr, len(data)) == data, f"{size} B at {addr:#x} changed"
        self.heap.free(addr)

    @rule(target=objects, addr=consumes(objects), size=sizes)
    def realloc(self, addr: int, size: int) -> int:
        old_size, scan, data = self.model.pop(addr)
        new = self.heap.realloc(addr, size)
        keep = min(len(data), size)
        assert ctypes.string_at(new, keep) == data[:keep], f"realloc {old_size} -> {size} lost data"
        if not self._tiny(size, scan) and not self._tiny(old_size, scan):
            small = 0 < size <= MAX_SMALL_SIZE and 0 < old_size <= MAX_SMALL_SIZE
            if small and roundupsize(size) == roundupsize(old_size):
                assert new == addr, f"realloc {old_size} -> {size} moved within its class"
            big = size > MAX_SMALL_SIZE and old_size > MAX_SMALL_SIZE
            if big and roundupsize(size) == roundupsize(old_size):
                assert new == addr, f"realloc {old_size} -> {size} moved within its pages"
        assert new not in self.model, f"realloc returned live {new:#x}"
        self._check_alignment(new, size, scan)
        self._store(new, size, scan)
        return new

    @rule(addr=objects)
    def write(self, addr: int) -> None:
        size, scan, data = self.model[addr]
        self.seq += 1
        new = pattern(addr ^ 0x55, self.seq, len(data))
        ctypes.memmove(addr, new, len(new))
        self.model[addr] = (size, scan, new)

    @rule()
    def verify(self) -> None:
        for addr, (size, _, data) in self.model.items():
            assert ctypes.string_at(addr, len(data)) == data, f"{size} B at {addr:#x} changed"

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def span_info_matches(self, data: st.DataObject) -> None:
        addr = data.draw(st.sampled_from(sorted(self.model)))
        size, scan, _ = self.model[addr]
        info = self.heap.span_of(addr)
        assert info is not None and info.base <= addr < info.base + info.npages * PAGE_SIZE
        assert info.noscan == (not scan) or (size == 0 and not scan)
        if size > MAX_SMALL_SIZE:
            assert info.base == addr and info.sizeclass == 0

    @invariant()
    def no_overlap(self) -> None:
        spans = sorted((a, a + max(len(d), 1)) for a, (_, _, d) in self.model.items())
        for (a0, e0), (a1, _) in pairwise(spans):
            assert e0 <= a1, f"live objects at {a0:#x} and {a1:#x} overlap"

    @invariant()
    def heap_is_consistent(self) -> None:
        self.heap.check()

    def teardown(self) -> None:
        try:
            for addr, (size, _, data) in self.model.items():
                assert ctypes.string_at(addr, len(data)) == data, f"{size} B at {addr:#x}"
                self.heap.free(addr)
            self.model.clear()
            self.heap.check()
        finally:
            self.heap.close()


HeapMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestHeapMachine = HeapMachine.TestCase
