"""Tests for realalloc.sizeclasses and the generated realalloc/core/_sizetables.py."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import random
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from realalloc.core import _sizetables, sizeclasses
from realalloc.core.sizeclasses import (
    CLASS_TO_DIVMAGIC,
    CLASS_TO_NPAGES,
    CLASS_TO_SIZE,
    MAX_SMALL_SIZE,
    NUM_SIZE_CLASSES,
    NUM_SPAN_CLASSES,
    PAGE_SIZE,
    SIZE_TO_CLASS8,
    SIZE_TO_CLASS128,
    TINY_SIZE,
)
from realalloc.errors import ArgumentTypeError, InvalidArgumentError

ROOT = Path(__file__).resolve().parent.parent
GO_SIZECLASSES = Path("/usr/share/go-1.19/src/runtime/sizeclasses.go")


def load_generator() -> ModuleType:
    path = ROOT / "tools" / "mksizeclasses.py"
    spec = importlib.util.spec_from_file_location("mksizeclasses", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mksizeclasses"] = module  # dataclasses look the module up here
    spec.loader.exec_module(module)
    return module


def brute_class(n: int) -> int:
    """Smallest class holding n bytes, by linear search; 0 when none (large)."""
    for c, size in enumerate(CLASS_TO_SIZE):
        if size >= n:
            return c
    return 0


# --- the table itself --------------------------------------------------------


def test_table_shape() -> None:
    assert NUM_SIZE_CLASSES == 68
    assert NUM_SPAN_CLASSES == 136
    for table in (CLASS_TO_SIZE, CLASS_TO_NPAGES, CLASS_TO_DIVMAGIC):
        assert isinstance(table, tuple)
        assert len(table) == 68
    assert len(SIZE_TO_CLASS8) == 1024 // 8 + 1
    assert len(SIZE_TO_CLASS128) == (32768 - 1024) // 128 + 1
    assert CLASS_TO_SIZE[0] == 0 and CLASS_TO_NPAGES[0] == 0 and CLASS_TO_DIVMAGIC[0] == 0
    assert CLASS_TO_SIZE[-1] == MAX_SMALL_SIZE == 32768
    assert all(a < b for a, b in itertools.pairwise(CLASS_TO_SIZE))  # SC-1
    assert (sizeclasses.PAGE_SHIFT, PAGE_SIZE) == (13, 8192)
    assert (sizeclasses.SMALL_SIZE_DIV, sizeclasses.SMALL_SIZE_MAX) == (8, 1024)
    assert sizeclasses.LARGE_SIZE_DIV == 128


def test_alignment_and_tail_waste_bounds() -> None:  # SC-3, SC-4
    for c in range(1, NUM_SIZE_CLASSES):
        size = CLASS_TO_SIZE[c]
        span = CLASS_TO_NPAGES[c] * PAGE_SIZE
        assert size % 8 == 0
        if size >= 32:
            assert size % 16 == 0
        if size > 1024:
            assert size % 128 == 0
        assert span >= size
        assert span % size <= span // 8


def _go_array(text: str, name: str) -> list[str]:
    m = re.search(rf"var {name} = \[[^\]]*\]\w+\s*\{{([^}}]*)\}}", text)
    assert m is not None, f"{name} not found in {GO_SIZECLASSES}"
    return [item.strip() for item in m.group(1).split(",") if item.strip()]


def _go_divmagic(expr: str) -> int:
    if expr == "0":
        return 0
    m = re.fullmatch(r"\^uint32\(0\)\s*/\s*(\d+)\s*\+\s*1", expr)
    assert m is not None, expr
    return ((1 << 32) - 1) // int(m.group(1)) + 1


def _go_comment_rows(text: str) -> list[str]:
    return [
        line[3:].rstrip()
        for line in text.splitlines()
        if re.match(r"//\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+\s+[\d.]+%\s+\d+$", line)
    ]


@pytest.mark.skipif(
    not GO_SIZECLASSES.exists(),
    reason=f"Go 1.19 source not installed ({GO_SIZECLASSES} missing)",
)
def test_matches_go_1_19() -> None:
    text = GO_SIZECLASSES.read_text()
    assert list(CLASS_TO_SIZE) == [int(v) for v in _go_array(text, "class_to_size")]
    assert list(CLASS_TO_NPAGES) == [int(v) for v in _go_array(text, "class_to_allocnpages")]
    go_magic = [_go_divmagic(v) for v in _go_array(text, "class_to_divmagic")]
    assert list(CLASS_TO_DIVMAGIC) == go_magic
    assert list(SIZE_TO_CLASS8) == [int(v) for v in _go_array(text, "size_to_class8")]
    assert list(SIZE_TO_CLASS128) == [int(v) for v in _go_array(text, "size_to_class128")]
    for go_name, value in [
        ("_MaxSmallSize", MAX_SMALL_SIZE),
        ("smallSizeDiv", sizeclasses.SMALL_SIZE_DIV),
        ("smallSizeMax", sizeclasses.SMALL_SIZE_MAX),
        ("largeSizeDiv", sizeclasses.LARGE_SIZE_DIV),
        ("_NumSizeClasses", NUM_SIZE_CLASSES),
        ("_PageShift", sizeclasses.PAGE_SHIFT),
    ]:
        m = re.search(rf"\b{go_name}\s*=\s*(\d+)", text)
        assert m is not None and int(m.group(1)) == value, go_name
    # The printed figures (waste, alignment) agree too.
    ours = sizeclasses.format_class_table().splitlines()[1:]
    assert ours == _go_comment_rows(text)


# --- size -> class -------------------------------------------------------------


def test_size_to_class_brute_force() -> None:  # SC-2
    c = 0
    for n in range(MAX_SMALL_SIZE + 1):
        while CLASS_TO_SIZE[c] < max(n, 1):
            c += 1
        assert sizeclasses.size_to_class(n) == c, n
    assert sizeclasses.size_to_class(0) == 1  # a unique smallest object, as C gives
    assert sizeclasses.size_to_class(1) == 1
    for n in (MAX_SMALL_SIZE + 1, 40000, 1 << 40, 1 << 80):
        assert sizeclasses.size_to_class(n) == 0


def test_lookup_tables_direct() -> None:
    for n in range(0, 1025):
        assert SIZE_TO_CLASS8[(n + 7) >> 3] == brute_class(n), n
    for n in range(1025, MAX_SMALL_SIZE + 1, 37):
        assert SIZE_TO_CLASS128[(n - 1024 + 127) >> 7] == brute_class(n), n


def test_class_accessors() -> None:
    for c in range(NUM_SIZE_CLASSES):
        assert sizeclasses.class_to_size(c) == CLASS_TO_SIZE[c]
        assert sizeclasses.class_to_npages(c) == CLASS_TO_NPAGES[c]


# --- derived columns -------------------------------------------------------------


def test_derived_columns_brute_force() -> None:
    infos = sizeclasses.size_classes()
    assert [i.size_class for i in infos] == list(range(1, 68))
    prev = 0
    for info in infos:
        c = info.size_class
        size = CLASS_TO_SIZE[c]
        span = CLASS_TO_NPAGES[c] * PAGE_SIZE
        # Count objects by laying them out one by one.
        objects, end = 0, size
        while end <= span:
            objects += 1
            end += size
        tail = span - objects * size
        # Worst request for this class: the one leaving the most of the span unused.
        worst = max(span - objects * n for n in range(prev + 1, size + 1))
        align = 1
        while size % (align * 2) == 0 and align * 2 <= PAGE_SIZE:
            align *= 2
        assert info.bytes_per_obj == size
        assert info.bytes_per_span == span
        assert info.objects == objects >= 1
        assert info.tail_waste == tail
        assert info.max_waste == pytest.approx(100.0 * worst / span)
        assert info.min_align == align
        prev = size


def test_size_class_info_is_frozen_and_slotted() -> None:
    info = sizeclasses.size_classes()[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.objects = 3  # type: ignore[misc]
    assert not hasattr(info, "__dict__")
    # size_classes returns a fresh list each time.
    first = sizeclasses.size_classes()
    first.clear()
    assert len(sizeclasses.size_classes()) == 67


def test_format_class_table() -> None:
    lines = sizeclasses.format_class_table().splitlines()
    assert len(lines) == 68
    assert lines[0].split("  ") == [
        "class",
        "bytes/obj",
        "bytes/span",
        "objects",
        "tail waste",
        "max waste",
        "min align",
    ]
    assert lines[1].split() == ["1", "8", "8192", "1024", "0", "87.50%", "8"]
    assert lines[-1].split() == ["67", "32768", "32768", "1", "0", "12.50%", "8192"]
    # Same rows as the comment at the top of the generated file.
    source = (ROOT / "realalloc" / "core" / "_sizetables.py").read_text().splitlines()
    start = source.index("# " + lines[0])
    assert [s[2:] for s in source[start : start + 68]] == lines


# --- divmagic ----------------------------------------------------------------------


def test_divmagic_exact_at_object_offsets() -> None:  # SC-5
    rng = random.Random(1234)
    for c in range(1, NUM_SIZE_CLASSES):
        size = CLASS_TO_SIZE[c]
        span = CLASS_TO_NPAGES[c] * PAGE_SIZE
        magic = CLASS_TO_DIVMAGIC[c]
        assert magic == ((1 << 32) - 1) // size + 1
        offsets = set(range(0, span + 1, size))  # every object start
        offsets.update(range(size - 1, span + 1, size))  # every object's last byte
        offsets.update(rng.randrange(span + 1) for _ in range(200))
        offsets.update({span, span - 1})
        for off in offsets:
            assert (off * magic) >> 32 == off // size, (c, off)
            assert sizeclasses.divide_by_elemsize(off, c) == off // size


def test_divmagic_every_offset_small_classes() -> None:
    for c in (1, 3, 5, 35, 52, 65):
        size, magic = CLASS_TO_SIZE[c], CLASS_TO_DIVMAGIC[c]
        span = CLASS_TO_NPAGES[c] * PAGE_SIZE
        assert all((n * magic) >> 32 == n // size for n in range(span + 1)), c


# --- span classes ---------------------------------------------------------------------


def test_span_class_round_trip() -> None:  # SC-6
    seen = set()
    for sc in range(NUM_SIZE_CLASSES):
        for noscan in (False, True):
            spc = sizeclasses.make_span_class(sc, noscan)
            assert spc == sc << 1 | noscan
            assert sizeclasses.span_class_size_class(spc) == sc
            assert sizeclasses.span_class_noscan(spc) is noscan
            seen.add(spc)
    assert seen == set(range(NUM_SPAN_CLASSES))


# --- roundupsize / tiny -------------------------------------------------------------


def test_roundupsize_small() -> None:  # SC-7
    for n in range(1, MAX_SMALL_SIZE):
        assert sizeclasses.roundupsize(n) == CLASS_TO_SIZE[brute_class(n)], n
    assert sizeclasses.roundupsize(0) == 8  # size 0 gets the smallest class


def test_roundupsize_large() -> None:
    assert sizeclasses.roundupsize(MAX_SMALL_SIZE) == MAX_SMALL_SIZE
    assert sizeclasses.roundupsize(MAX_SMALL_SIZE + 1) == 40960
    assert sizeclasses.roundupsize(40960) == 40960
    assert sizeclasses.roundupsize(40961) == 49152
    assert sizeclasses.roundupsize(1 << 30) == 1 << 30
    assert sizeclasses.roundupsize((1 << 30) + 1) == (1 << 30) + PAGE_SIZE
    for n in (MAX_SMALL_SIZE, 33000, 123457, 10**9 + 7):
        r = sizeclasses.roundupsize(n)
        assert r >= n and r % PAGE_SIZE == 0 and r - n < PAGE_SIZE
    # Like Go: a size whose round-up would overflow 64 bits is returned as is.
    top = (1 << 64) - 1
    assert sizeclasses.roundupsize(top) == top
    assert sizeclasses.roundupsize(top - PAGE_SIZE + 1) == top - PAGE_SIZE + 1
    assert sizeclasses.roundupsize(top - PAGE_SIZE) == top - PAGE_SIZE + 1
    with pytest.raises(InvalidArgumentError):
        sizeclasses.roundupsize(1 << 64)


def test_tiny_align() -> None:
    assert TINY_SIZE == 16
    expected = {1: 1, 2: 2, 3: 1, 4: 4, 5: 1, 6: 2, 7: 1, 8: 8}
    expected.update({9: 1, 10: 2, 11: 1, 12: 4, 13: 1, 14: 2, 15: 1, 16: 8, 24: 8})
    for size, align in expected.items():
        assert sizeclasses.tiny_align(size) == align, size


# --- bad input ------------------------------------------------------------------------

CALLS: list[tuple[str, Any]] = [
    ("size_to_class", lambda v: sizeclasses.size_to_class(v)),
    ("class_to_size", lambda v: sizeclasses.class_to_size(v)),
    ("class_to_npages", lambda v: sizeclasses.class_to_npages(v)),
    ("roundupsize", lambda v: sizeclasses.roundupsize(v)),
    ("divide_by_elemsize offset", lambda v: sizeclasses.divide_by_elemsize(v, 1)),
    ("divide_by_elemsize class", lambda v: sizeclasses.divide_by_elemsize(0, v)),
    ("make_span_class", lambda v: sizeclasses.make_span_class(v, False)),
    ("span_class_size_class", lambda v: sizeclasses.span_class_size_class(v)),
    ("span_class_noscan", lambda v: sizeclasses.span_class_noscan(v)),
    ("tiny_align", lambda v: sizeclasses.tiny_align(v)),
]


@pytest.mark.parametrize(("name", "call"), CALLS, ids=[n for n, _ in CALLS])
@pytest.mark.parametrize("bad", [8.0, 1.5, True, False, "8", None])
def test_wrong_type(name: str, call: Any, bad: object) -> None:
    with pytest.raises(ArgumentTypeError) as info:
        call(bad)
    assert repr(bad) in str(info.value)
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize(("name", "call"), CALLS, ids=[n for n, _ in CALLS])
def test_negative(name: str, call: Any) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        call(-1)
    assert "-1" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "call",
    [
        lambda: sizeclasses.class_to_size(68),
        lambda: sizeclasses.class_to_npages(68),
        lambda: sizeclasses.divide_by_elemsize(0, 0),
        lambda: sizeclasses.divide_by_elemsize(0, 68),
        lambda: sizeclasses.divide_by_elemsize(PAGE_SIZE + 1, 1),
        lambda: sizeclasses.make_span_class(68, True),
        lambda: sizeclasses.span_class_size_class(136),
        lambda: sizeclasses.span_class_noscan(136),
    ],
)
def test_out_of_range(call: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        call()


def test_out_of_range_message_names_value() -> None:
    with pytest.raises(InvalidArgumentError, match="sizeclass") as info:
        sizeclasses.class_to_size(68)
    assert "0x44" in str(info.value) or "68" in str(info.value)


@pytest.mark.parametrize("bad", [1, 0, None, "yes", 1.0])
def test_make_span_class_noscan_must_be_bool(bad: object) -> None:
    with pytest.raises(ArgumentTypeError) as info:
        sizeclasses.make_span_class(1, bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)


# --- self check and generator -------------------------------------------------------------


def test_check_tables_passes() -> None:
    sizeclasses.check_tables()


def test_generator_output_matches_file() -> None:  # SC-8
    gen = load_generator()
    text = gen.generate()
    on_disk = (ROOT / "realalloc" / "core" / "_sizetables.py").read_text()
    assert text == on_disk, "run: python tools/mksizeclasses.py"
    first = text.splitlines()[0]
    assert first == "# Code generated by tools/mksizeclasses.py; DO NOT EDIT."
    assert all(len(line) <= 100 for line in text.splitlines())
    assert gen.main(["--check", "--no-brute-force"]) == 0


def test_generated_module_values() -> None:
    assert _sizetables.CLASS_TO_SIZE is CLASS_TO_SIZE
    assert len(_sizetables.CLASS_TO_SIZE) == _sizetables.NUM_SIZE_CLASSES


def test_generator_check_detects_stale_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gen = load_generator()
    target = tmp_path / "_sizetables.py"
    monkeypatch.setattr(gen, "OUTPUT", target)
    assert gen.main(["--check", "--no-brute-force"]) == 1  # missing
    target.write_text(gen.generate().replace("32768", "32767", 1))
    assert gen.main(["--check", "--no-brute-force"]) == 1  # edited
    assert "out of date" in capsys.readouterr().err
    assert gen.main(["--no-brute-force"]) == 0  # rewrite
    assert gen.main(["--check", "--no-brute-force"]) == 0
    assert target.read_text() == gen.generate()
