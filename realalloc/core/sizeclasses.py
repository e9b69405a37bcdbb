"""Size classes and span classes (Go: runtime/sizeclasses.go, msize.go). See realalloc/__init__.py for an overview.

This module owns the mapping from a requested object size to a *size class*:
the fixed object size an allocation is rounded up to, and how many 8 KiB pages
a span of that class spans.  Class 0 is not a real class; it stands for size 0
and for large objects (more than MAX_SMALL_SIZE bytes), which get whole pages.
The tables themselves live in the generated module realalloc/core/_sizetables.py
(written by tools/mksizeclasses.py); this module re-exports them and adds the
lookups, the span-class encoding, the tiny-allocator alignment rule and a
printable table (``python -m realalloc classes``).

A *span class* packs a size class with a noscan bit: ``sizeclass << 1 | noscan``.
Noscan spans hold objects without pointers; the two kinds never share a span.

Invariants (tests/test_sizeclasses.py checks them; :func:`check_tables` checks
them at run time and raises HeapCorruption whose message starts with the ID):

* SC-1: CLASS_TO_SIZE is strictly increasing, from CLASS_TO_SIZE[0] == 0 to
  CLASS_TO_SIZE[-1] == MAX_SMALL_SIZE, with NUM_SIZE_CLASSES entries.
* SC-2: size_to_class(n) is the smallest class whose size >= max(n, 1), for
  0 <= n <= MAX_SMALL_SIZE; it is 0 (large) for n > MAX_SMALL_SIZE.  (Size 0
  takes the smallest class, a unique object, where Go returns one shared
  zero-size address.)
* SC-3: every class size is a multiple of 8, of 16 from 32 bytes on, and of
  LARGE_SIZE_DIV above SMALL_SIZE_MAX (so both lookup tables are exact).
* SC-4: a span of class c holds at least one object and its tail waste
  (bytes left after the last whole object) is at most 1/8 of the span.
* SC-5: (off * CLASS_TO_DIVMAGIC[c]) >> 32 == off // CLASS_TO_SIZE[c] for every
  0 <= off <= CLASS_TO_NPAGES[c] * PAGE_SIZE.
* SC-6: make_span_class and span_class_size_class / span_class_noscan are
  inverse; span classes are 0 <= spc < NUM_SPAN_CLASSES.
* SC-7: roundupsize(n) >= n; for small n it is class_to_size(size_to_class(n)),
  for large n the next multiple of PAGE_SIZE.
* SC-8: realalloc/core/_sizetables.py and csrc/sizeclasses.h are exactly what
  tools/mksizeclasses.py writes; the C fast path was compiled from the same
  numbers (tests/test_sizeclasses.py asks it for every size).

Concurrency: no locks.  Everything here is an immutable table or a pure
function, safe to use from any thread.
"""  # noqa: E501

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Final

from realalloc.core._sizetables import (
    ARENA_L1_BITS,
    ARENA_L2_BITS,
    ARENA_SHIFT,
    CLASS_TO_DIVMAGIC,
    CLASS_TO_NPAGES,
    CLASS_TO_SIZE,
    HEAP_ADDR_BITS,
    LARGE_SIZE_DIV,
    LOG_PAGES_PER_CHUNK,
    MAX_SMALL_SIZE,
    NUM_SIZE_CLASSES,
    PAGE_SHIFT,
    PAGE_SIZE,
    SIZE_TO_CLASS8,
    SIZE_TO_CLASS128,
    SMALL_SIZE_DIV,
    SMALL_SIZE_MAX,
    TINY_SIZE,
    TINY_SIZE_CLASS,
)
from realalloc.errors import ArgumentTypeError, HeapCorruption, require_int

__all__ = [
    "ARENA_BYTES",
    "ARENA_L1_BITS",
    "ARENA_L2_BITS",
    "ARENA_SHIFT",
    "CHUNK_BYTES",
    "CHUNK_SHIFT",
    "CLASS_TO_DIVMAGIC",
    "CLASS_TO_NPAGES",
    "CLASS_TO_SIZE",
    "HEAP_ADDR_BITS",
    "LARGE_SIZE_DIV",
    "LOG_PAGES_PER_CHUNK",
    "MAX_SMALL_SIZE",
    "NUM_SIZE_CLASSES",
    "NUM_SPAN_CLASSES",
    "PAGES_PER_ARENA",
    "PAGES_PER_CHUNK",
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "SIZE_TO_CLASS8",
    "SIZE_TO_CLASS128",
    "SMALL_SIZE_DIV",
    "SMALL_SIZE_MAX",
    "TINY_SIZE",
    "TINY_SIZE_CLASS",
    "TINY_SPAN_CLASS",
    "SizeClassInfo",
    "check_tables",
    "class_to_npages",
    "class_to_size",
    "divide_by_elemsize",
    "format_class_table",
    "make_span_class",
    "roundupsize",
    "size_classes",
    "size_to_class",
    "span_class_noscan",
    "span_class_size_class",
    "tiny_align",
]

NUM_SPAN_CLASSES: Final = NUM_SIZE_CLASSES << 1
"""Number of span classes: every size class, with and without the noscan bit."""

TINY_SPAN_CLASS: Final = TINY_SIZE_CLASS << 1 | 1
"""The span class of tiny blocks: 16-byte noscan objects."""

# Heap geometry, derived from the generated constants (Go, linux/amd64).
ARENA_BYTES: Final = 1 << ARENA_SHIFT
"""A heap arena: 64 MiB of address space, aligned to its size."""
PAGES_PER_ARENA: Final = ARENA_BYTES >> PAGE_SHIFT
PAGES_PER_CHUNK: Final = 1 << LOG_PAGES_PER_CHUNK
"""A chunk: the page allocator's bitmap unit (Go: pallocChunkPages)."""
CHUNK_SHIFT: Final = PAGE_SHIFT + LOG_PAGES_PER_CHUNK
CHUNK_BYTES: Final = 1 << CHUNK_SHIFT

_UINTPTR_MAX: Final = (1 << 64) - 1
_LAST_CLASS: Final = NUM_SIZE_CLASSES - 1
_LAST_SPAN_CLASS: Final = NUM_SPAN_CLASSES - 1


# --- size -> class ---------------------------------------------------------


def _lookup(size: int) -> int:
    """Class of a validated size; two table reads, no loop (SC-2)."""
    if size == 0:
        return 1  # a unique smallest object, as the C fast path gives
    if size <= SMALL_SIZE_MAX - SMALL_SIZE_DIV:
        return SIZE_TO_CLASS8[(size + SMALL_SIZE_DIV - 1) // SMALL_SIZE_DIV]
    if size <= MAX_SMALL_SIZE:
        return SIZE_TO_CLASS128[(size - SMALL_SIZE_MAX + LARGE_SIZE_DIV - 1) // LARGE_SIZE_DIV]
    return 0


def size_to_class(size: int) -> int:
    """Return the size class for an object of ``size`` bytes, 0 if it is large.

    Small sizes (``<= MAX_SMALL_SIZE``) get the smallest class that holds them;
    size 0 gets class 1 (Go maps it to class 0 and hands out one shared
    zero-size address; realalloc gives a unique object).  Raises ArgumentTypeError for a non-int and
    InvalidArgumentError for a negative size.
    """
    return _lookup(require_int("size", size))


def class_to_size(sizeclass: int) -> int:
    """Return the object size of ``sizeclass`` (0 for class 0)."""
    return CLASS_TO_SIZE[require_int("sizeclass", sizeclass, 0, _LAST_CLASS)]


def class_to_npages(sizeclass: int) -> int:
    """Return how many pages a span of ``sizeclass`` takes (0 for class 0)."""
    return CLASS_TO_NPAGES[require_int("sizeclass", sizeclass, 0, _LAST_CLASS)]


def roundupsize(size: int) -> int:
    """Return the size of the block an allocation of ``size`` bytes really gets.

    As Go's roundupsize: below MAX_SMALL_SIZE the size of its class; from
    MAX_SMALL_SIZE on, ``size`` rounded up to a multiple of PAGE_SIZE, unless
    that would overflow a 64-bit address, in which case ``size`` itself.
    ``size`` must be in ``0 .. 2**64 - 1``.
    """
    size = require_int("size", size, 0, _UINTPTR_MAX)
    if size < MAX_SMALL_SIZE:
        return CLASS_TO_SIZE[_lookup(size)]
    if size + PAGE_SIZE > _UINTPTR_MAX:
        return size
    return (size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def divide_by_elemsize(offset: int, sizeclass: int) -> int:
    """Return ``offset // class_to_size(sizeclass)`` computed with the 32-bit magic.

    ``offset`` is a byte offset from the start of a span of that class, so
    ``0 <= offset <= class_to_npages(sizeclass) * PAGE_SIZE`` (SC-5); the
    result is the index of the object containing that byte.
    """
    sizeclass = require_int("sizeclass", sizeclass, 1, _LAST_CLASS)
    offset = require_int("offset", offset, 0, CLASS_TO_NPAGES[sizeclass] * PAGE_SIZE)
    return (offset * CLASS_TO_DIVMAGIC[sizeclass]) >> 32


# --- span classes ----------------------------------------------------------


def make_span_class(sizeclass: int, noscan: bool) -> int:
    """Return the span class ``sizeclass << 1 | noscan``."""
    sizeclass = require_int("sizeclass", sizeclass, 0, _LAST_CLASS)
    if not isinstance(noscan, bool):
        raise ArgumentTypeError(f"noscan must be a bool, not {type(noscan).__name__} ({noscan!r})")
    return sizeclass << 1 | int(noscan)


def span_class_size_class(spc: int) -> int:
    """Return the size class encoded in span class ``spc``."""
    return require_int("spc", spc, 0, _LAST_SPAN_CLASS) >> 1


def span_class_noscan(spc: int) -> bool:
    """Return True if span class ``spc`` holds objects without pointers."""
    return bool(require_int("spc", spc, 0, _LAST_SPAN_CLASS) & 1)


# --- tiny allocator ----------------------------------------------------------


def tiny_align(size: int) -> int:
    """Return the alignment of a ``size``-byte object placed in a tiny block.

    Go's rule: the largest of 8, 4, 2 that divides ``size``, else 1.
    """
    size = require_int("size", size)
    if size % 8 == 0:
        return 8
    if size % 4 == 0:
        return 4
    if size % 2 == 0:
        return 2
    return 1


# --- descriptive table -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SizeClassInfo:
    """One size class with the figures Go prints at the top of sizeclasses.go."""

    size_class: int
    """Class number, 1 .. NUM_SIZE_CLASSES - 1."""
    bytes_per_obj: int
    """Object size of the class."""
    bytes_per_span: int
    """Bytes in one span of the class (pages * PAGE_SIZE)."""
    objects: int
    """Objects that fit in one span."""
    tail_waste: int
    """Bytes left at the end of a span after the last whole object."""
    max_waste: float
    """Worst-case waste in percent: every object one byte over the previous class."""
    min_align: int
    """Guaranteed object alignment: largest power of two dividing the size, at most PAGE_SIZE."""


def _build_infos() -> tuple[SizeClassInfo, ...]:
    infos = []
    prev = 0
    for c in range(1, NUM_SIZE_CLASSES):
        size = CLASS_TO_SIZE[c]
        span = CLASS_TO_NPAGES[c] * PAGE_SIZE
        objects = span // size
        tail = span - objects * size
        max_waste = 100.0 * ((size - prev - 1) * objects + tail) / span
        min_align = min(size & -size, PAGE_SIZE)
        infos.append(SizeClassInfo(c, size, span, objects, tail, max_waste, min_align))
        prev = size
    return tuple(infos)


_INFOS: Final = _build_infos()

_HEADINGS: Final = (
    "class",
    "bytes/obj",
    "bytes/span",
    "objects",
    "tail waste",
    "max waste",
    "min align",
)


def size_classes() -> list[SizeClassInfo]:
    """Return a description of classes 1 .. NUM_SIZE_CLASSES - 1, in order."""
    return list(_INFOS)


def format_class_table() -> str:
    """Return the size-class table as text: a header line, then one row per class.

    Columns: class, bytes/obj, bytes/span, objects, tail waste, max waste,
    min align; the same layout as the comment in realalloc/core/_sizetables.py.
    No trailing newline.
    """
    widths = [len(h) for h in _HEADINGS]
    lines = ["  ".join(h.rjust(w) for h, w in zip(_HEADINGS, widths, strict=True))]
    for info in _INFOS:
        cells = (
            str(info.size_class),
            str(info.bytes_per_obj),
            str(info.bytes_per_span),
            str(info.objects),
            str(info.tail_waste),
            f"{info.max_waste:.2f}%",
            str(info.min_align),
        )
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    return "\n".join(lines)


# --- self check --------------------------------------------------------------


def _fail(ident: str, detail: str) -> HeapCorruption:
    return HeapCorruption(f"{ident}: {detail}")


def check_tables() -> None:
    """Verify SC-1 .. SC-6 on the loaded tables; raise HeapCorruption if one fails.

    Takes a few tens of milliseconds.  SC-2 is checked for every small size.
    SC-5 is checked at the first and last byte of every object and at the span
    end; the multiply's error grows with the offset and with ``offset % size``,
    so those offsets are the worst cases and passing them proves every offset.
    """
    sizes = CLASS_TO_SIZE
    if not (
        len(sizes) == len(CLASS_TO_NPAGES) == len(CLASS_TO_DIVMAGIC) == NUM_SIZE_CLASSES
        and sizes[0] == 0
        and sizes[-1] == MAX_SMALL_SIZE
        and all(a < b for a, b in pairwise(sizes))
    ):
        raise _fail("SC-1", "CLASS_TO_SIZE is not a strictly increasing 0 .. MAX_SMALL_SIZE")

    c = 0
    for n in range(MAX_SMALL_SIZE + 1):
        while sizes[c] < max(n, 1):
            c += 1
        got = _lookup(n)
        if got != c:
            raise _fail("SC-2", f"size {n} maps to class {got}, expected {c}")
    if _lookup(MAX_SMALL_SIZE + 1) != 0:
        raise _fail("SC-2", "a size above MAX_SMALL_SIZE maps to a small class")

    for c in range(1, NUM_SIZE_CLASSES):
        size = sizes[c]
        step = LARGE_SIZE_DIV if size > SMALL_SIZE_MAX else 16 if size >= 32 else 8
        if size % step:
            raise _fail("SC-3", f"class {c} size {size} is not a multiple of {step}")

        span = CLASS_TO_NPAGES[c] * PAGE_SIZE
        if span // size < 1 or span % size > span // 8:
            raise _fail("SC-4", f"class {c}: {span}-byte span wastes {span % size} bytes")

        magic = CLASS_TO_DIVMAGIC[c]
        for off in (*range(0, span + 1, size), *range(size - 1, span + 1, size), span):
            if (off * magic) >> 32 != off // size:
                raise _fail("SC-5", f"class {c}: divmagic wrong at offset {off}")

    for spc in range(NUM_SPAN_CLASSES):
        if make_span_class(spc >> 1, bool(spc & 1)) != spc:
            raise _fail("SC-6", f"span class {spc} does not round trip")
