"""Heap maps: every 8 KiB page of a heap's arenas, by state, as data and as a PNG.

See realalloc/__init__.py for an overview of the allocator.  This module is
not part of the allocator; it reads a live ``Heap`` and draws what it finds
(``python -m realalloc map``).  It owns the page map (``page_map``), its
picture (``draw_map``, ``map_layout``, the colour table ``COLOURS``), the
demonstration heap of the ``map`` subcommand, and that subcommand's options.

What a page is (``PageKind``), decided from the arena's C metadata (the
``ra_heap_arena`` of realalloc/core/arena.py) read in bulk::

    spans[p] == NULL, scav bit clear     FREE       free, still backed by memory
    spans[p] == NULL, scav bit set       RELEASED   free, given back (MADV_DONTNEED)
    span IN_USE, span class 5            TINY       Go's tiny blocks (and 16 B noscan)
    span IN_USE, class size <= 128 B     SMALL_128  small-object spans by class size
    ...                    <= 1 KiB      SMALL_1K
    ...                    <= 8 KiB      SMALL_8K
    ...                    <= 32 KiB     SMALL_32K
    span IN_USE, list RA_LIST_EMPTY      EMPTY_SPAN no object: idle on its central list
                                                    (a freed large object's span too)
    span IN_USE, span class 0 or 1       LARGE      one large object
    span MANUAL                          MANUAL     whole pages for MHeap.alloc_manual

Residency is the OS's word, not the allocator's: ``mincore`` over the whole
arena at once; an 8 KiB page is resident if either 4 KiB half is.  Metadata
(span records, bitmaps, arena maps, thread caches: ``Heap.metadata_bytes``)
lives outside the arenas, so the picture gives it as a line of text.

The picture (``draw_map``): a header (title, totals, metadata, legend), then
one panel per arena in a grid of ``columns`` panels, lowest address first.
A panel is a 128 x 64 grid of cells, one per page, each ``cell`` pixels
square: 128 pages (1 MiB) per row, addresses rising left to right and top to
bottom, a 1-pixel frame round the grid and the arena's base address above
it.  Each kind has a fixed colour (``COLOURS``, tab20's pairs): the
saturated one when the page is resident, the light one when it is not, so a
test can read a page's state back from its pixel (``MapLayout.page_pixel``).
matplotlib draws only the text; the cells are written into its pixels one
for one, with no resampling.

Sizes (``map_layout``; width x height in pixels, at 100 dpi)::

    arenas   cell   panels    image
    1        6 px   1 x 1      960 x  578
    2-4      5 px   2 x 1-2   1332 x  514 / 868
    5-16     4 px   3-4 x ..  1606 x 1030 (9), 2136 x 1320 (16)
    17-64    3 px   ..-8 x 8  3232 x 1968 (64)
    65-      2 px

A 64-arena map of the demonstration heap is a PNG of about 130 KB (cells of
one state compress well); drawing it needs about 40 MB.  The image is never
narrower than 960 pixels, so the legend fits.

matplotlib is optional (the extra ``realalloc[plot]``): ``page_map`` does
without it; ``draw_map`` raises ImportError naming the extra when it is
missing (``require_matplotlib``).  An ImportError, not InvalidArgumentError:
nothing the caller passed is wrong, a package is missing.  The ``map``
subcommand turns it into a usage error (exit 2) before building a heap, as
it does a ``--png`` path that cannot be written (``MAP_EXIT_CODES``).

Locking: ``page_map`` runs inside the heap (``heap._inside``), so a
concurrent ``close`` waits for it and the arenas stay mapped.  It does not
stop the world: pages that other threads change meanwhile may show the state
before or after the change (each page's span and bits are read once).
"""

from __future__ import annotations

import argparse
import ctypes
import enum
import math
import mmap
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from .. import Heap
from ..core.osmem import ffi, lib
from ..core.sizeclasses import (
    ARENA_BYTES,
    CLASS_TO_SIZE,
    PAGE_SIZE,
    PAGES_PER_ARENA,
    PAGES_PER_CHUNK,
    TINY_SPAN_CLASS,
)
from ..errors import OutOfMemoryError
from .stress import EXIT_NOT_RUN, EXIT_OK, writable_path_for

__all__ = [
    "BACKGROUND",
    "COLOURS",
    "DEMO_ARENAS_MAX",
    "FRAME",
    "GRID_COLUMNS",
    "GRID_ROWS",
    "MAP_EXIT_CODES",
    "ArenaMap",
    "MapLayout",
    "PageKind",
    "PageMap",
    "add_arguments",
    "build_demo_heap",
    "colour_of",
    "draw_map",
    "format_summary",
    "map_layout",
    "map_main",
    "map_png",
    "page_map",
    "require_matplotlib",
]

GRID_COLUMNS: Final = 128
"""Pages per row of an arena's grid: 1 MiB."""
GRID_ROWS: Final = PAGES_PER_ARENA // GRID_COLUMNS
"""Rows of an arena's grid (64)."""
DEMO_ARENAS_MAX: Final = 128
"""The most arenas ``realalloc map --arenas`` builds (8 GiB of address space)."""
_MIB: Final = 1 << 20
_DPI: Final = 100  # pixel sizes below are exact at this dpi: 1 inch = 100 pixels
_CHUNKS_PER_ARENA: Final = PAGES_PER_ARENA // PAGES_PER_CHUNK


class PageKind(enum.IntEnum):
    """What one 8 KiB page of an arena holds (see the module docstring)."""

    FREE = 0
    RELEASED = 1
    TINY = 2
    SMALL_128 = 3
    SMALL_1K = 4
    SMALL_8K = 5
    SMALL_32K = 6
    EMPTY_SPAN = 7
    LARGE = 8
    MANUAL = 9


_LABELS: Final[dict[PageKind, str]] = {
    PageKind.FREE: "free, not released",
    PageKind.RELEASED: "free, released to the OS",
    PageKind.TINY: "tiny blocks (span class 5)",
    PageKind.SMALL_128: "small objects <= 128 B",
    PageKind.SMALL_1K: "small objects <= 1 KiB",
    PageKind.SMALL_8K: "small objects <= 8 KiB",
    PageKind.SMALL_32K: "small objects <= 32 KiB",
    PageKind.EMPTY_SPAN: "empty span, kept by its central",
    PageKind.LARGE: "large object (> 32 KiB)",
    PageKind.MANUAL: "manual span (alloc_manual)",
}

COLOURS: Final[dict[PageKind, tuple[str, str]]] = {
    # kind:               (resident,  not resident)   tab20's dark and light pairs
    PageKind.FREE: ("#7f7f7f", "#c7c7c7"),  # grey
    PageKind.RELEASED: ("#c49c94", "#f4f4f4"),  # resident: a released page touched since
    PageKind.TINY: ("#e377c2", "#f7b6d2"),  # pink
    PageKind.SMALL_128: ("#1f77b4", "#aec7e8"),  # blue
    PageKind.SMALL_1K: ("#17becf", "#9edae5"),  # cyan
    PageKind.SMALL_8K: ("#2ca02c", "#98df8a"),  # green
    PageKind.SMALL_32K: ("#bcbd22", "#dbdb8d"),  # olive
    PageKind.EMPTY_SPAN: ("#9467bd", "#c5b0d5"),  # purple
    PageKind.LARGE: ("#d62728", "#ff9896"),  # red
    PageKind.MANUAL: ("#ff7f0e", "#ffbb78"),  # orange
}
"""The fixed colour of each kind of page, as (resident, not resident) hex RGB."""
FRAME: Final = "#404040"
"""The 1-pixel frame round each arena's grid."""
BACKGROUND: Final = "#ffffff"


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    v = int(hex_colour.lstrip("#"), 16)
    return (v >> 16, (v >> 8) & 0xFF, v & 0xFF)


def colour_of(kind: PageKind, resident: bool) -> tuple[int, int, int]:
    """The (r, g, b) bytes of a page of ``kind`` in the picture."""
    return _rgb(COLOURS[kind][0 if resident else 1])


def require_matplotlib() -> None:
    """Raise ImportError, naming the extra to install, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "drawing needs matplotlib: pip install 'realalloc[plot]'", name="matplotlib"
        ) from exc


# --- the data -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ArenaMap:
    """The pages of one 64 MiB arena."""

    base: int
    """The arena's first byte."""
    kinds: bytes
    """A PageKind per page (PAGES_PER_ARENA bytes), lowest address first."""
    size_classes: bytes
    """Per page: the size class (span class >> 1) of its small-object span, empty
    spans included; 0 for every other page."""
    resident: bytes
    """Per page: 1 when either half is resident in RAM (mincore), else 0."""
    _tally: Counter[tuple[int, int]] = field(init=False, repr=False, compare=False)
    """Pages by (kind, resident), counted once: legends and summaries ask often."""

    def __post_init__(self) -> None:
        tally = Counter(zip(self.kinds, self.resident, strict=True))
        object.__setattr__(self, "_tally", tally)  # frozen: set once, here

    def kind(self, page: int) -> PageKind:
        return PageKind(self.kinds[page])

    def count(self, kind: PageKind, *, resident: bool | None = None) -> int:
        """Pages of ``kind``; only the resident (or not resident) ones if given."""
        if resident is None:
            return self._tally[kind, 0] + self._tally[kind, 1]
        return self._tally[kind, int(resident)]


@dataclass(frozen=True, slots=True)
class PageMap:
    """Every page of a heap's arenas, and its metadata outside them."""

    arenas: tuple[ArenaMap, ...]
    """Lowest base address first."""
    metadata_bytes: int
    """``Heap.metadata_bytes()`` when the map was read."""

    def locate(self, addr: int) -> tuple[int, int]:
        """(arena index, page) of the page holding ``addr``; ValueError outside the arenas."""
        for i, arena in enumerate(self.arenas):
            if arena.base <= addr < arena.base + ARENA_BYTES:
                return i, (addr - arena.base) // PAGE_SIZE
        raise ValueError(f"{addr:#x} is in none of the heap's arenas")

    def pages(self, kind: PageKind, *, resident: bool | None = None) -> int:
        """Pages of ``kind`` over every arena (see ArenaMap.count)."""
        return sum(a.count(kind, resident=resident) for a in self.arenas)

    def resident_pages(self) -> int:
        return sum(a.resident.count(1) for a in self.arenas)


_libc = ctypes.CDLL(None, use_errno=True)
_mincore = _libc.mincore
_mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
_mincore.restype = ctypes.c_int


def _residency(base: int) -> bytes:
    """Per 8 KiB page of the arena at ``base``: 1 if resident.  One mincore call."""
    os_page = mmap.PAGESIZE
    vec = (ctypes.c_ubyte * (ARENA_BYTES // os_page))()
    if _mincore(base, ARENA_BYTES, vec) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mincore of the arena at {base:#x}: {os.strerror(err)}")
    v = bytes(vec)  # bit 0 of each byte: that OS page is resident
    if os_page == PAGE_SIZE // 2:  # x86-64: two OS pages per page
        return bytes((a | b) & 1 for a, b in zip(v[0::2], v[1::2], strict=True))
    if os_page < PAGE_SIZE:
        per = PAGE_SIZE // os_page
        return bytes(
            int(any(b & 1 for b in v[p * per : (p + 1) * per])) for p in range(PAGES_PER_ARENA)
        )
    share = os_page // PAGE_SIZE  # one OS page holds several pages
    return bytes(v[p // share] & 1 for p in range(PAGES_PER_ARENA))


def _span_kind(ptr: int) -> tuple[PageKind, int]:
    """(kind, size class) of the pages of the span record at ``ptr``."""
    s = ffi.cast("ra_span *", ptr)
    state, spc = int(s.state), int(s.spanclass)
    if state == lib.RA_SPAN_MANUAL:
        return PageKind.MANUAL, 0
    if state != lib.RA_SPAN_IN_USE:  # the record was freed after spans[] was read
        return PageKind.FREE, 0
    size_class = spc >> 1
    if s.list == lib.RA_LIST_EMPTY:
        return PageKind.EMPTY_SPAN, size_class
    if spc < 2:
        return PageKind.LARGE, 0
    if spc == TINY_SPAN_CLASS:
        return PageKind.TINY, size_class
    size = CLASS_TO_SIZE[size_class]
    if size <= 128:
        return PageKind.SMALL_128, size_class
    if size <= 1024:
        return PageKind.SMALL_1K, size_class
    if size <= 8192:
        return PageKind.SMALL_8K, size_class
    return PageKind.SMALL_32K, size_class


def _arena_map(base: int, meta: Any) -> ArenaMap:
    kinds = bytearray(PAGES_PER_ARENA)  # FREE
    # Released: free (alloc bit clear) and scavenged, from the chunk bitmaps.
    for c in range(_CHUNKS_PER_ARENA):
        chunk = meta.chunks[c]
        alloc, scav = ffi.unpack(chunk.alloc, 8), ffi.unpack(chunk.scav, 8)
        for w in range(8):
            word = scav[w] & ~alloc[w]
            first = c * PAGES_PER_CHUNK + w * 64
            while word:
                low = word & -word
                kinds[first + low.bit_length() - 1] = PageKind.RELEASED
                word ^= low
    classes = bytearray(PAGES_PER_ARENA)
    if meta.live_pages:  # else the page map is all NULL (and maybe released)
        ptrs = ffi.unpack(ffi.cast("uintptr_t *", meta.spans), PAGES_PER_ARENA)
        seen: dict[int, tuple[PageKind, int]] = {}
        for p, ptr in enumerate(ptrs):
            if ptr:
                got = seen.get(ptr)
                if got is None:  # one read of each span record, not one per page
                    got = seen[ptr] = _span_kind(ptr)
                kinds[p], classes[p] = got
    return ArenaMap(base, bytes(kinds), bytes(classes), _residency(base))


def page_map(heap: Heap) -> PageMap:
    """The state of every page of ``heap``'s arenas, read now.

    HeapClosedError when the heap is closed.  See the module docstring for the
    kinds and for what other threads' changes meanwhile do to the picture."""
    # Inside the heap: a concurrent close waits, so the arenas stay mapped.
    return heap._inside(_page_map_inside, heap)


def _page_map_inside(heap: Heap) -> PageMap:
    arenas = sorted(heap.mheap.arenas, key=lambda a: a.base)
    maps = tuple(_arena_map(a.base, a.meta) for a in arenas)
    return PageMap(maps, heap.metadata_bytes())


# --- the picture ----------------------------------------------------------------------

_MARGIN: Final = 16
_GAP: Final = 16
"""Pixels between panels, across and down."""
_TITLE: Final = 16
"""Pixels above each panel for its base address."""
_HEADER: Final = 160
"""Pixels of the header: title, three lines of text, the legend."""
_MIN_WIDTH: Final = 960


@dataclass(frozen=True, slots=True)
class MapLayout:
    """Where everything goes in a map of ``narenas`` arenas, in pixels of the PNG,
    origin top left: x to the right, y down (``image[y, x]`` once decoded)."""

    narenas: int
    cell: int
    """Pixels per side of one page's cell."""
    columns: int
    """Arena panels per row of panels."""
    rows: int
    """Rows of panels."""
    width: int
    height: int
    left: int
    """x of the first column of panels (their frames)."""

    @property
    def panel_width(self) -> int:
        """A framed grid: the cells and a 1-pixel frame on each side."""
        return GRID_COLUMNS * self.cell + 2

    @property
    def panel_height(self) -> int:
        return GRID_ROWS * self.cell + 2

    def panel_origin(self, arena: int) -> tuple[int, int]:
        """(x, y) of the top-left pixel of arena ``arena``'s frame."""
        if not 0 <= arena < self.narenas:
            raise IndexError(f"arena {arena} of {self.narenas}")
        row, col = divmod(arena, self.columns)
        x = self.left + col * (self.panel_width + _GAP)
        y = _HEADER + _TITLE + row * (_TITLE + self.panel_height + _GAP)
        return x, y

    def page_box(self, arena: int, page: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the cell of page ``page`` of arena ``arena``;
        x1 and y1 exclusive."""
        if not 0 <= page < PAGES_PER_ARENA:
            raise IndexError(f"page {page} of {PAGES_PER_ARENA}")
        x, y = self.panel_origin(arena)
        row, col = divmod(page, GRID_COLUMNS)
        x0, y0 = x + 1 + col * self.cell, y + 1 + row * self.cell
        return x0, y0, x0 + self.cell, y0 + self.cell

    def page_pixel(self, arena: int, page: int) -> tuple[int, int]:
        """(x, y) of the centre pixel of that page's cell."""
        x0, y0, _, _ = self.page_box(arena, page)
        return x0 + self.cell // 2, y0 + self.cell // 2


def map_layout(narenas: int) -> MapLayout:
    """The layout of a map of ``narenas`` arenas (0: the header alone)."""
    if narenas < 0:
        raise ValueError(f"narenas must be >= 0, got {narenas}")
    # Cells shrink as arenas multiply, so that 64 arenas stay near 3300 pixels
    # wide (3 pixels a page is still a visible square) and the PNG small.
    cell = next((c for most, c in ((1, 6), (4, 5), (16, 4), (64, 3)) if narenas <= most), 2)
    columns = max(1, math.ceil(math.sqrt(narenas)))
    rows = -(-narenas // columns)
    panel_w, panel_h = GRID_COLUMNS * cell + 2, GRID_ROWS * cell + 2
    grid_w = columns * panel_w + (columns - 1) * _GAP
    width = max(_MIN_WIDTH, grid_w + 2 * _MARGIN)
    height = _HEADER + rows * (_TITLE + panel_h) + max(0, rows - 1) * _GAP + _MARGIN
    return MapLayout(narenas, cell, columns, rows, width, height, (width - grid_w) // 2)


def _mib(pages: int) -> float:
    return pages * PAGE_SIZE / _MIB


def _legend_label(pmap: PageMap, kind: PageKind) -> str:
    n, res = pmap.pages(kind), pmap.pages(kind, resident=True)
    return f"{_LABELS[kind]}: {_mib(n):.1f} MiB ({_mib(res):.1f} res.)"


def draw_map(pmap: PageMap, path: str | os.PathLike[str], *, title: str | None = None) -> MapLayout:
    """Write the picture of ``pmap`` to ``path`` as a PNG of exactly
    ``map_layout(len(pmap.arenas))``'s size, and return that layout.

    ImportError (naming ``realalloc[plot]``) without matplotlib; OSError when
    the file cannot be written."""
    require_matplotlib()
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.image import imsave
    from matplotlib.legend_handler import HandlerTuple
    from matplotlib.patches import Patch

    lay = map_layout(len(pmap.arenas))
    # matplotlib draws the text alone; the cells are then written into its
    # pixels one for one, so every page has its exact colour in the file and
    # no image is resampled (figimage's float copies of a 64-arena map took
    # 700 MB).
    fig = Figure(figsize=(lay.width / _DPI, lay.height / _DPI), dpi=_DPI, facecolor=BACKGROUND)
    agg: Any = FigureCanvasAgg(fig)  # untyped methods: draw, buffer_rgba

    def text(x: float, y: float, s: str, **kw: Any) -> None:
        fig.text(x / lay.width, 1 - y / lay.height, s, **kw)  # from pixels, top left

    n = len(pmap.arenas)
    total = n * PAGES_PER_ARENA
    lines = (
        f"{n} arena{'s' * (n != 1)} of 64 MiB, lowest address first; a cell per 8 KiB page, "
        "128 pages (1 MiB) a row, addresses rising left to right, top to bottom",
        f"resident in RAM (mincore): {_mib(pmap.resident_pages()):.1f} MiB of the "
        f"{_mib(total):.0f} MiB of arenas; each swatch below: resident | not resident",
        f"metadata, outside the arenas (span records, bitmaps, arena maps, thread caches): "
        f"{pmap.metadata_bytes / _MIB:.2f} MiB",
    )
    text(_MARGIN, 8, title or "realalloc heap map", fontsize=12, weight="bold", va="top")
    for k, line in enumerate(lines):
        text(_MARGIN, 30 + 14 * k, line, fontsize=8, va="top")
    handles: list[Any] = [  # (resident, not resident) pairs, drawn side by side
        (Patch(facecolor=dark, edgecolor=FRAME), Patch(facecolor=light, edgecolor=FRAME))
        for dark, light in (COLOURS[k] for k in PageKind)
    ]
    fig.legend(
        handles,
        [_legend_label(pmap, k) for k in PageKind],
        handler_map={tuple: HandlerTuple(ndivide=None, pad=0.0)},
        loc="upper left",
        bbox_to_anchor=(_MARGIN / lay.width, 1 - 78 / lay.height),
        borderaxespad=0.0,
        borderpad=0.0,
        ncol=3 if lay.width < 1400 else 5,
        fontsize=8,
        frameon=False,
        handlelength=2.4,
        columnspacing=1.5,
    )
    if not n:
        text(_MARGIN, _HEADER, "(no arenas: the heap has not grown yet)", fontsize=9, va="top")
    for i, arena in enumerate(pmap.arenas):
        x, y = lay.panel_origin(i)
        res = _mib(arena.resident.count(1))
        label = f"{arena.base:#x}" + (f"   {res:.1f} MiB resident" if lay.cell >= 3 else "")
        text(x, y - 2, label, fontsize=8, family="monospace", va="bottom")
    agg.draw()
    drawn = np.asarray(agg.buffer_rgba())
    image = np.empty((lay.height, lay.width, 4), np.uint8)
    image[:] = (*_rgb(BACKGROUND), 255)
    # The same size but for a float rounding of the figure's inches.
    h, w = min(lay.height, drawn.shape[0]), min(lay.width, drawn.shape[1])
    image[:h, :w] = drawn[:h, :w]
    # palette[2 * kind + resident]
    palette = np.array([colour_of(k, r) for k in PageKind for r in (False, True)], np.uint8)
    for i, arena in enumerate(pmap.arenas):
        x, y = lay.panel_origin(i)
        image[y : y + lay.panel_height, x : x + lay.panel_width, :3] = _rgb(FRAME)
        index = np.frombuffer(arena.kinds, np.uint8).astype(np.intp) * 2
        index += np.frombuffer(arena.resident, np.uint8)
        cells = palette[index].reshape(GRID_ROWS, GRID_COLUMNS, 3)
        cells = cells.repeat(lay.cell, axis=0).repeat(lay.cell, axis=1)
        image[y + 1 : y + lay.panel_height - 1, x + 1 : x + lay.panel_width - 1, :3] = cells
    imsave(os.fspath(path), image, format="png", dpi=_DPI)
    return lay


def map_png(heap: Heap, path: str | os.PathLike[str]) -> None:
    """Draw ``heap``'s page map into the PNG ``path`` (the future ``Heap.map_png``).

    ImportError without matplotlib (checked before the heap is read),
    HeapClosedError for a closed heap, OSError when the file cannot be written."""
    require_matplotlib()
    draw_map(page_map(heap), path)


# --- the demonstration heap and the ``map`` subcommand --------------------------------


def _touch(addr: int, nbytes: int) -> None:
    ctypes.memset(addr, 0xA5, nbytes)  # written: resident from now on


def build_demo_heap(arenas: int = 1) -> Heap:
    """A heap showing every kind of page, spanning at least ``arenas`` arenas.

    In allocation order (first fit, so at rising addresses of the first arena),
    everything written unless said otherwise:

    1. tiny: 8000 objects of 8 B (noscan: pieces of 16-byte tiny blocks);
    2. small: 4000 x 64 B, 2000 x 512 B, 600 x 4 KiB, 150 x 24 KiB;
    3. large: 6 x 256 KiB, 3 x 1 MiB;
    4. freed and scavenged: 12 x 512 KiB, every other one freed, then
       ``heap.scavenge()``: released holes between resident large objects;
    5. after the scavenge, freed and left resident: two of the 256 KiB objects,
       their spans given back to the page heap at once (``heap.reclaim()``;
       free pages not released), then the 2000 objects of 512 B and one more
       allocated (its refill sweeps the frees, and the emptied spans idle on
       their central list);
    6. a manual span of 48 pages (``heap.mheap.alloc_manual``), the first half written;
    7. a large object of 8 MiB, only its first 2 MiB written (the rest is not
       resident);
    8. while the heap has fewer than ``arenas`` arenas: a large object of
       16-52 MiB (varying), its first 128 KiB to 1 MiB written, then 256 KiB of
       64 B, 4 KiB or 24 KiB objects (in turn); every third large object is
       freed again (its span kept for reuse: idle, resident where written).

    No background scavenger, so the picture shows what these steps did.  The
    caller closes the heap."""
    if not 1 <= arenas <= DEMO_ARENAS_MAX:
        raise ValueError(f"arenas must be in 1..{DEMO_ARENAS_MAX}, got {arenas}")
    heap = Heap(background_scavenger=False)
    try:
        _fill_demo(heap, arenas)
    except BaseException:
        heap.close()
        raise
    return heap


def _fill_demo(heap: Heap, arenas: int) -> None:
    malloc, free = heap.malloc, heap.free
    for _ in range(8000):
        _touch(malloc(8), 8)
    smalls: dict[int, list[int]] = {}
    for size, count in ((64, 4000), (512, 2000), (4096, 600), (24576, 150)):
        smalls[size] = [malloc(size) for _ in range(count)]
        for addr in smalls[size]:
            _touch(addr, size)
    large = [malloc(256 << 10) for _ in range(6)] + [malloc(1 << 20) for _ in range(3)]
    holes = [malloc(512 << 10) for _ in range(12)]
    for addr in large + holes:
        _touch(addr, heap.usable_size(addr))
    for addr in holes[::2]:
        free(addr)
    heap.scavenge()
    free(large[1])
    free(large[3])
    heap.reclaim()  # their spans, kept for reuse, go back to the page heap
    for addr in smalls[512]:
        free(addr)
    malloc(512)  # its refill sweeps those frees: the emptied spans idle on the central
    manual = heap.mheap.alloc_manual(48)
    _touch(manual.base, 24 * PAGE_SIZE)
    _touch(malloc(8 << 20), 2 << 20)
    # Growing: each step a large object, then 256 KiB of small objects of one of
    # three sizes (first fit puts them in the lowest arena with room); every
    # third large object is freed again (its span kept for reuse, written pages resident).
    step = 0
    while len(heap.mheap.arenas) < arenas:
        step += 1
        # zero=False: reused pages would be zeroed, and so made resident, whole
        big = malloc((16 + (step * 12) % 40) << 20, zero=False)
        _touch(big, (step % 8 + 1) * (128 << 10))
        size = (64, 4096, 24576)[step % 3]
        for _ in range((256 << 10) // size):
            _touch(malloc(size), size)
        if step % 3 == 0:
            free(big)


def _png_path(path: str) -> str:
    """An argparse type for ``--png``: matplotlib is there and the path can be written."""
    try:
        require_matplotlib()
    except ImportError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return writable_path_for("the map")(path)


def _arena_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 1 <= n <= DEMO_ARENAS_MAX:
        raise argparse.ArgumentTypeError(f"must be in 1..{DEMO_ARENAS_MAX}, got {n}")
    return n


MAP_EXIT_CODES: Final = """\
exit codes:
  0  the map was drawn
  2  bad usage: a --png path that cannot be written, no matplotlib,
     --arenas out of range; no heap was built
  3  could not run: the heap could not be built, or the PNG could not
     be written after all"""
"""The exit-code table of ``realalloc map --help``."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``map`` subcommand, each checked as it is parsed (exit 2),
    and the exit codes in its help."""
    parser.epilog = MAP_EXIT_CODES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--png",
        metavar="FILE",
        required=True,
        type=_png_path,
        help="write the map here (needs realalloc[plot]; checked before the heap is built)",
    )
    parser.add_argument(
        "--arenas",
        type=_arena_count,
        default=1,
        metavar="N",
        help=f"grow the demonstration heap to at least N arenas, 1 to {DEMO_ARENAS_MAX} "
        "(default 1)",
    )


def format_summary(pmap: PageMap) -> str:
    """A table of the map: pages, MiB and resident MiB of each kind."""
    lines = [f"  {'page kind':<34} {'pages':>8} {'MiB':>8} {'resident':>9}"]
    for kind in PageKind:
        n, res = pmap.pages(kind), pmap.pages(kind, resident=True)
        lines.append(f"  {_LABELS[kind]:<34} {n:>8,} {_mib(n):>8.1f} {_mib(res):>9.1f}")
    lines.append(f"  metadata outside the arenas {pmap.metadata_bytes / _MIB:.2f} MiB")
    return "\n".join(lines)


def map_main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """The ``map`` subcommand once its options are checked: build the
    demonstration heap, draw it, print a summary.  0, or 3 when the heap
    could not be built or the PNG not written."""
    out = sys.stdout if out is None else out
    try:
        heap = build_demo_heap(args.arenas)
    except OutOfMemoryError as exc:
        print(f"realalloc map: could not build the heap: {exc}", file=sys.stderr)
        return EXIT_NOT_RUN
    try:
        pmap = page_map(heap)
    finally:
        heap.close()
    try:
        lay = draw_map(pmap, args.png, title="realalloc map: the demonstration heap")
    except OSError as exc:  # checked writable before; something changed since
        print(f"realalloc map: cannot write {args.png}: {exc}", file=sys.stderr)
        return EXIT_NOT_RUN
    n = len(pmap.arenas)
    print(
        f"realalloc map: wrote {args.png} ({lay.width} x {lay.height} pixels, "
        f"{n} arena{'s' * (n != 1)})",
        file=out,
    )
    print(format_summary(pmap), file=out)
    return EXIT_OK
