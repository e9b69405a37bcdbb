"""C and Python agree on every rule both use (issue 9: one source of truth).

The size-class tables reach C and Python from one generator
(tools/mksizeclasses.py writes csrc/sizeclasses.h and
realalloc/core/_sizetables.py; test_sizeclasses checks that both are
current).  Here the rules built on them are compared for every size from 0
to 33,000 and both kinds of object: the fast path's choice of span class
(``ra_span_class_for``), and what real allocations get: their span's class,
the usable size C reports (``ra_usable_size``, which Heap.usable_size
answers from Python's side), the alignment, and the slot size."""

from __future__ import annotations

import pytest

import realalloc
from realalloc.core.osmem import lib
from realalloc.core.sizeclasses import (
    CLASS_TO_SIZE,
    MAX_SMALL_SIZE,
    NUM_SPAN_CLASSES,
    PAGE_SIZE,
    TINY_SIZE,
    TINY_SPAN_CLASS,
    make_span_class,
    roundupsize,
    size_to_class,
    span_class_noscan,
    span_class_size_class,
    tiny_align,
)

SIZES = range(33_001)


def python_span_class(size: int, noscan: bool) -> int:
    """Go's choice (mallocgc): tiny for small noscan sizes, class 0 for large."""
    if noscan and size < TINY_SIZE:
        return TINY_SPAN_CLASS
    return make_span_class(0 if size > MAX_SMALL_SIZE else size_to_class(size), noscan)


@pytest.mark.parametrize("noscan", [True, False])
def test_span_class_for_every_size(noscan: bool) -> None:
    differ = [
        (size, int(lib.ra_span_class_for(size, noscan)), python_span_class(size, noscan))
        for size in SIZES
        if lib.ra_span_class_for(size, noscan) != python_span_class(size, noscan)
    ]
    assert not differ, f"(size, C, Python) disagree: {differ[:10]}"


def test_every_span_class_decodes_alike() -> None:
    for spc in range(NUM_SPAN_CLASSES):
        sizeclass, noscan = span_class_size_class(spc), span_class_noscan(spc)
        assert make_span_class(sizeclass, noscan) == spc
        if sizeclass:  # the size every slot of the class has, from either side
            assert lib.ra_span_class_for(CLASS_TO_SIZE[sizeclass], noscan) in (spc, TINY_SPAN_CLASS)


@pytest.mark.parametrize("noscan", [True, False])
def test_real_objects_of_every_size(noscan: bool) -> None:
    """Allocate every size for real: the span it lands in, its usable size
    (C's and the rule's), its alignment, and its slot all agree."""
    with realalloc.Heap(zero=False) as heap:
        for size in SIZES:
            addr = heap.malloc(size, scan=not noscan)
            span = heap.span_of(addr)
            assert span is not None
            spc = python_span_class(size, noscan)
            assert span.spanclass == spc, (size, span.spanclass, spc)
            usable = heap.usable_size(addr)
            assert usable == lib.ra_usable_size(heap.c, addr), size
            if spc == TINY_SPAN_CLASS:
                # A piece of a 16-byte block, aligned as Go aligns its size.
                assert addr % tiny_align(size) == 0, (size, addr)
                assert max(size, 1) <= usable <= TINY_SIZE - addr % TINY_SIZE, size
            elif size > MAX_SMALL_SIZE:
                assert addr % PAGE_SIZE == 0 and usable == roundupsize(size), size
            else:
                slot = CLASS_TO_SIZE[size_to_class(size)]
                assert usable == slot == roundupsize(size), size
                assert (addr - span.base) % slot == 0, size
                assert addr % (8 if slot % 16 else 16) == 0, size
            heap.free(addr)
        heap.check()
