"""Heap maps (realalloc/tools/heapmap.py): the state and residency of every page of
a real heap, checked against what the test put there and against the heap's own
public accounting (spans, MemStats); the PNG decoded and read back pixel by pixel
at the pages the layout says; the ``map`` subcommand, its exit codes and its
checks before any work.

Nothing here is mocked: every heap is a real ``realalloc.Heap`` over real memory.
Residency is the kernel's (mincore): the tests assert "not resident" only for
pages released with MADV_DONTNEED or that nothing ever touched, at least 2 MiB
away from anything touched (a transparent huge page covers 2 MiB).
"""

from __future__ import annotations

import argparse
import ctypes
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import realalloc
from realalloc.tools import heapmap
from realalloc.tools.cli import main
from realalloc.tools.heapmap import (
    COLOURS,
    GRID_COLUMNS,
    GRID_ROWS,
    PageKind,
    PageMap,
    colour_of,
    draw_map,
    map_layout,
    map_png,
    page_map,
)

mpimg = pytest.importorskip("matplotlib.image")
np = pytest.importorskip("numpy")  # a dependency of matplotlib

PAGE = 8192
MIB = 1 << 20
PAGES_PER_ARENA = GRID_COLUMNS * GRID_ROWS


def touch(addr: int, nbytes: int) -> None:
    ctypes.memset(addr, 0x5A, nbytes)


class Png:
    """A decoded PNG: its size and its pixels as (r, g, b) bytes, as a viewer shows them."""

    def __init__(self, path: Path) -> None:
        image = mpimg.imread(str(path))
        assert image.dtype.kind == "f" and image.shape[2] in (3, 4)  # PNGs decode to floats
        self.rgb = np.rint(image[:, :, :3] * 255).astype(np.uint8)
        self.height, self.width = self.rgb.shape[:2]

    def __getitem__(self, xy: tuple[int, int]) -> tuple[int, int, int]:
        x, y = xy
        r, g, b = (int(c) for c in self.rgb[y, x])
        return r, g, b

    def colours(self) -> set[tuple[int, int, int]]:
        flat = self.rgb.reshape(-1, 3)
        return {(int(r), int(g), int(b)) for r, g, b in np.unique(flat, axis=0)}


def expected_kind(span: realalloc.SpanInfo) -> PageKind:
    """The rule of the module docstring, from the public SpanInfo."""
    if span.state == realalloc.SpanState.MANUAL:
        return PageKind.MANUAL
    if span.idle:  # an emptied small-object span, or a freed large object's, kept
        return PageKind.EMPTY_SPAN
    if span.spanclass < 2:
        return PageKind.LARGE
    if span.spanclass == 5:
        return PageKind.TINY
    for kind, most in (
        (PageKind.SMALL_128, 128),
        (PageKind.SMALL_1K, 1024),
        (PageKind.SMALL_8K, 8192),
    ):
        if span.elemsize <= most:
            return kind
    return PageKind.SMALL_32K


def check_against_heap(heap: realalloc.Heap, pm: PageMap) -> None:
    """Every page agrees with the heap's spans, and the page counts with MemStats."""
    in_spans: set[tuple[int, int]] = set()
    for span in heap.spans():
        kind = expected_kind(span)
        for k in range(span.npages):
            i, p = pm.locate(span.base + k * PAGE)
            in_spans.add((i, p))
            assert pm.arenas[i].kind(p) == kind, (span, k)
            small = span.spanclass >= 2
            assert pm.arenas[i].size_classes[p] == (span.sizeclass if small else 0)
    for i, arena in enumerate(pm.arenas):
        for p in range(PAGES_PER_ARENA):
            if (i, p) not in in_spans:
                assert arena.kind(p) in (PageKind.FREE, PageKind.RELEASED), (i, p)
                assert arena.size_classes[p] == 0
    st = heap.stats()
    idle = (PageKind.FREE, PageKind.RELEASED, PageKind.EMPTY_SPAN)
    assert sum(pm.pages(k) for k in idle) * PAGE == st.heap_idle
    assert pm.pages(PageKind.RELEASED) * PAGE == st.heap_released
    assert pm.pages(PageKind.MANUAL) * PAGE == st.manual_inuse
    busy = set(PageKind) - set(idle) - {PageKind.MANUAL}
    assert sum(pm.pages(k) for k in busy) * PAGE == st.heap_inuse


class Known:
    """A heap with one object of every kind at a known address."""

    def __init__(self) -> None:
        self.heap = heap = realalloc.Heap(background_scavenger=False)
        self.tiny = heap.malloc(8)
        self.small = {size: heap.malloc(size) for size in (100, 512, 4096, 20000)}
        touch(self.tiny, 8)
        for size, addr in self.small.items():
            touch(addr, size)
        doomed = [heap.malloc(256) for _ in range(32 * 8)]
        self.released = heap.malloc(1 * MIB)  # written, freed, released
        self.freed = heap.malloc(256 << 10)  # written, freed after the release: resident
        for addr, n in ((self.released, MIB), (self.freed, 256 << 10)):
            touch(addr, n)
        self.large = heap.malloc(8 * MIB, zero=False)  # its first page alone written
        touch(self.large, PAGE)
        self.manual = heap.mheap.alloc_manual(4)
        touch(self.manual.base, 4 * PAGE)
        # Nothing is allocated after the release, so no first fit lands in the hole.
        heap.free(self.released)
        heap.scavenge()  # gives back this thread's cached spans too
        heap.free(self.freed)
        heap.reclaim()  # the freed large object's span, kept for reuse, goes back now
        # Emptied spans of the 256-byte class that its central keeps: every
        # object freed, then one more allocated, whose refill sweeps the frees.
        for addr in doomed:
            heap.free(addr)
        self.survivor = heap.malloc(256)

    def close(self) -> None:
        self.heap.close()


@pytest.fixture
def known():
    k = Known()
    yield k
    k.close()


# --- the data -------------------------------------------------------------------------


def test_page_map_of_a_known_heap_agrees_with_every_span_and_memstats(known):
    pm = page_map(known.heap)
    check_against_heap(known.heap, pm)
    assert len(pm.arenas) == len(known.heap.mheap.arenas) == 1
    assert pm.arenas[0].base % (64 * MIB) == 0
    assert pm.metadata_bytes > 0

    def kind(addr: int) -> PageKind:
        i, p = pm.locate(addr)
        return pm.arenas[i].kind(p)

    assert kind(known.tiny) == PageKind.TINY
    assert [kind(a) for a in known.small.values()] == [
        PageKind.SMALL_128,
        PageKind.SMALL_1K,
        PageKind.SMALL_8K,
        PageKind.SMALL_32K,
    ]
    i, p = pm.locate(known.small[100])
    assert pm.arenas[i].size_classes[p] == realalloc.size_to_class(100)
    assert pm.pages(PageKind.EMPTY_SPAN) > 0
    assert all(kind(known.large + k * PAGE) == PageKind.LARGE for k in range(1024))
    assert all(kind(known.manual.base + k * PAGE) == PageKind.MANUAL for k in range(4))
    assert all(kind(known.released + k * PAGE) == PageKind.RELEASED for k in range(128))
    assert all(kind(known.freed + k * PAGE) == PageKind.FREE for k in range(32))
    assert pm.pages(PageKind.MANUAL) == 4
    assert sum(pm.pages(k) for k in PageKind) == PAGES_PER_ARENA


def test_residency_is_the_kernels(known):
    pm = page_map(known.heap)

    def resident(addr: int) -> bool:
        i, p = pm.locate(addr)
        return bool(pm.arenas[i].resident[p])

    assert resident(known.large)  # written
    assert resident(known.tiny) and all(resident(a) for a in known.small.values())
    assert not resident(known.large + 4 * MIB)  # never touched, 2 MiB from anything touched
    assert all(resident(known.manual.base + k * PAGE) for k in range(4))
    assert all(resident(known.freed + k * PAGE) for k in range(32))  # free, not released
    assert not any(resident(known.released + k * PAGE) for k in range(128))
    assert pm.pages(PageKind.RELEASED, resident=False) >= 128
    assert pm.pages(PageKind.LARGE, resident=True) + pm.pages(
        PageKind.LARGE, resident=False
    ) == pm.pages(PageKind.LARGE)
    assert pm.resident_pages() == sum(a.resident.count(1) for a in pm.arenas)


def test_page_map_while_other_threads_allocate_and_free():
    """Other threads keep changing pages: every map still classifies every page,
    and the heap stays sound."""
    with realalloc.Heap(background_scavenger=False) as heap:
        stop = threading.Event()
        errors: list[BaseException] = []

        def churn(size: int) -> None:
            try:
                live: list[int] = []
                while not stop.is_set():
                    live.append(heap.malloc(size))
                    if len(live) > 200:
                        for addr in live[:150]:
                            heap.free(addr)
                        del live[:150]
                for addr in live:
                    heap.free(addr)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=churn, args=(s,)) for s in (48, 3000, 70000)]
        for t in threads:
            t.start()
        try:
            for _ in range(5):
                pm = page_map(heap)
                assert all(len(a.kinds) == PAGES_PER_ARENA for a in pm.arenas)
                assert sum(pm.pages(k) for k in PageKind) == PAGES_PER_ARENA * len(pm.arenas)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert errors == []
        heap.check()
        check_against_heap(heap, page_map(heap))  # quiet now: exact again


def test_a_closed_heap_has_no_map(tmp_path):
    heap = realalloc.Heap()
    heap.malloc(100)
    heap.close()
    with pytest.raises(realalloc.HeapClosedError):
        page_map(heap)
    with pytest.raises(realalloc.HeapClosedError):
        map_png(heap, tmp_path / "closed.png")
    assert not (tmp_path / "closed.png").exists()


def test_maps_racing_a_close_on_another_thread_are_whole_or_heap_closed():
    """A close waits for a map in progress (it reads the arenas inside the heap):
    each map comes back whole, or raises HeapClosedError, never a crash."""
    heap = realalloc.Heap(background_scavenger=False)
    for _ in range(3):
        heap.malloc(40 * MIB, zero=False)  # three arenas: a map takes a while
    closer = threading.Timer(0.05, heap.close)
    closer.start()
    maps = 0
    try:
        while True:
            pm = page_map(heap)
            assert len(pm.arenas) >= 2
            maps += 1
    except realalloc.HeapClosedError:
        pass
    finally:
        closer.join()
    assert heap.closed and maps >= 1


# --- the picture ----------------------------------------------------------------------


def test_colours_are_fixed_distinct_and_none_is_the_frame_or_background():
    shades = [colour_of(k, r) for k in PageKind for r in (True, False)]
    assert len(set(shades)) == 2 * len(PageKind)
    assert set(COLOURS) == set(PageKind)
    assert colour_of(PageKind.LARGE, True) == (0xD6, 0x27, 0x28)  # as documented
    others = {heapmap._rgb(heapmap.FRAME), heapmap._rgb(heapmap.BACKGROUND)}
    assert not others & set(shades)


@pytest.mark.parametrize("narenas", [0, 1, 2, 4, 9, 16, 64, 65, 128])
def test_layout_panels_fit_the_image_and_never_overlap(narenas):
    lay = map_layout(narenas)
    boxes = []
    for i in range(narenas):
        x, y = lay.panel_origin(i)
        box = (x, y, x + lay.panel_width, y + lay.panel_height)
        assert box[0] >= 0 and box[2] <= lay.width
        assert box[1] >= heapmap._HEADER and box[3] <= lay.height  # below the legend
        first, last = lay.page_box(i, 0), lay.page_box(i, PAGES_PER_ARENA - 1)
        assert (first[0], first[1]) == (x + 1, y + 1)  # inside the frame
        assert (last[2], last[3]) == (box[2] - 1, box[3] - 1)
        boxes.append(box)
    for a in range(len(boxes)):
        for b in range(a):
            ax0, ay0, ax1, ay1 = boxes[a]
            bx0, by0, bx1, by1 = boxes[b]
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0
    # a cell is a square of `cell` pixels, each page its own
    x0, y0, x1, y1 = lay.page_box(0, GRID_COLUMNS + 1) if narenas else (0, 0, lay.cell, lay.cell)
    assert (x1 - x0, y1 - y0) == (lay.cell, lay.cell)


def test_layout_sizes_are_the_documented_ones():
    doc = heapmap.__doc__ or ""
    for narenas, cell, (width, height) in ((1, 6, (960, 578)), (64, 3, (3232, 1968))):
        lay = map_layout(narenas)
        assert (lay.cell, lay.width, lay.height) == (cell, width, height)
        assert re.search(rf"\b{width} x +{height}\b", doc), narenas


def test_the_png_shows_each_known_page_in_its_documented_colour(known, tmp_path):
    pm = page_map(known.heap)
    path = tmp_path / "known.png"
    lay = draw_map(pm, path)
    assert lay == map_layout(1)
    image = Png(path)
    assert (image.width, image.height) == (lay.width, lay.height) == (960, 578)

    def at(addr: int) -> tuple[int, int, int]:
        return image[lay.page_pixel(*pm.locate(addr))]

    assert at(known.large) == colour_of(PageKind.LARGE, True)
    assert at(known.large + 4 * MIB) == colour_of(PageKind.LARGE, False)
    for k in range(4):
        assert at(known.manual.base + k * PAGE) == colour_of(PageKind.MANUAL, True)
    for k in range(0, 128, 7):
        assert at(known.released + k * PAGE) == colour_of(PageKind.RELEASED, False)
    assert at(known.freed) == colour_of(PageKind.FREE, True)
    assert at(known.tiny) == colour_of(PageKind.TINY, True)
    assert at(known.small[100]) == colour_of(PageKind.SMALL_128, True)
    assert at(known.small[20000]) == colour_of(PageKind.SMALL_32K, True)
    # every pixel of a cell has its colour, and the frame is round the grid
    i, p = pm.locate(known.large)
    x0, y0, x1, y1 = lay.page_box(i, p)
    assert {image[x, y] for y in range(y0, y1) for x in range(x0, x1)} == {
        colour_of(PageKind.LARGE, True)
    }
    fx, fy = lay.panel_origin(0)
    frame = heapmap._rgb(heapmap.FRAME)
    assert image[fx, fy] == image[fx + lay.panel_width - 1, fy + lay.panel_height - 1] == frame
    # and every cell of the picture is its page's, all 8192 of them
    arena = pm.arenas[0]
    for page in range(PAGES_PER_ARENA):
        want = colour_of(arena.kind(page), bool(arena.resident[page]))
        assert image[lay.page_pixel(0, page)] == want, page


def test_a_map_of_several_arenas_puts_each_in_its_panel(tmp_path):
    with realalloc.Heap(background_scavenger=False) as heap:
        objs = [heap.malloc(40 * MIB, zero=False) for _ in range(3)]
        for addr in objs:
            touch(addr, PAGE)
        pm = page_map(heap)
        check_against_heap(heap, pm)
        path = tmp_path / "three.png"
        map_png(heap, path)
    assert len(pm.arenas) >= 2
    assert [a.base for a in pm.arenas] == sorted(a.base for a in pm.arenas)
    lay = map_layout(len(pm.arenas))
    image = Png(path)
    assert (image.width, image.height) == (lay.width, lay.height)
    for addr in objs:
        assert image[lay.page_pixel(*pm.locate(addr))] == colour_of(PageKind.LARGE, True)
        far = lay.page_pixel(*pm.locate(addr + 20 * MIB))
        assert image[far] == colour_of(PageKind.LARGE, False)


def test_drawing_without_matplotlib_names_the_extra(known, tmp_path, monkeypatch):
    pm = page_map(known.heap)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    with pytest.raises(ImportError, match=re.escape("pip install 'realalloc[plot]'")):
        draw_map(pm, tmp_path / "x.png")
    with pytest.raises(ImportError, match=re.escape("realalloc[plot]")):
        map_png(known.heap, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# --- realalloc map --------------------------------------------------------------------


def test_map_command_draws_the_demonstration_heap(tmp_path, capsys):
    path = tmp_path / "demo.png"
    assert main(["map", "--png", str(path)]) == 0
    out = capsys.readouterr().out
    lay = map_layout(1)
    assert f"wrote {path} ({lay.width} x {lay.height} pixels, 1 arena)" in out
    image = Png(path)
    assert (image.width, image.height) == (lay.width, lay.height)
    # the summary lists every kind, and the demo has pages of each
    counts = {}
    for kind, label in heapmap._LABELS.items():
        m = re.search(rf"^  {re.escape(label)} +([\d,]+) ", out, re.MULTILINE)
        assert m, label
        counts[kind] = int(m[1].replace(",", ""))
    assert all(counts.values()), counts
    assert sum(counts.values()) == PAGES_PER_ARENA
    colours = image.colours()
    for kind in PageKind:  # every kind's colour is somewhere in the picture
        assert colour_of(kind, True) in colours or colour_of(kind, False) in colours, kind


def test_map_command_grows_to_the_arenas_asked_for(tmp_path, capsys):
    path = tmp_path / "two.png"
    assert main(["map", "--png", str(path), "--arenas", "2"]) == 0
    m = re.search(r"\((\d+) x (\d+) pixels, (\d+) arenas\)", capsys.readouterr().out)
    assert m
    narenas = int(m[3])
    assert narenas >= 2
    lay = map_layout(narenas)
    image = Png(path)
    assert (int(m[1]), int(m[2])) == (image.width, image.height) == (lay.width, lay.height)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--png", "{tmp}/no/such/dir/m.png"], "cannot write the map to .*No such file"),
        (["--png", "{tmp}"], "cannot write the map to .*Is a directory"),
        (["--png", "{tmp}/m.png", "--arenas", "0"], "--arenas: must be in 1..128, got 0"),
        (["--png", "{tmp}/m.png", "--arenas", "x"], "--arenas: invalid int value: 'x'"),
        ([], "the following arguments are required: --png"),
    ],
)
def test_map_usage_errors_exit_2_before_any_heap_is_built(
    tmp_path, capsys, monkeypatch, argv, message
):
    def tripwire(arenas: int) -> realalloc.Heap:
        raise AssertionError("a heap was built before the options were checked")

    monkeypatch.setattr(heapmap, "build_demo_heap", tripwire)
    with pytest.raises(SystemExit) as exc:
        main(["map", *(a.replace("{tmp}", str(tmp_path)) for a in argv)])
    assert exc.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "m.png").exists()


def test_map_without_matplotlib_is_a_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as exc:
        main(["map", "--png", str(tmp_path / "m.png")])
    assert exc.value.code == 2
    assert "pip install 'realalloc[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()


def test_map_unwritable_png_from_a_real_process_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "realalloc", "map", "--png", str(tmp_path / "no" / "m.png")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "cannot write the map to" in proc.stderr


def test_map_png_that_cannot_be_written_after_all_exits_3(tmp_path, capsys):
    """The path was writable when checked and is a directory by the time the map is
    drawn: exit 3, said on stderr, nothing on stdout."""
    args = argparse.Namespace(png=str(tmp_path), arenas=1)
    assert heapmap.map_main(args) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"realalloc map: cannot write {tmp_path}: " in captured.err


def test_map_help_gives_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["map", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert heapmap.MAP_EXIT_CODES in out
    assert re.findall(r"^  (\d)  ", heapmap.MAP_EXIT_CODES, re.MULTILINE) == ["0", "2", "3"]
