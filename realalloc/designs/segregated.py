"""Segregated free lists: one list per power-of-two size class (seed §2, the second design).

See realalloc/designs/__init__.py for an overview of the designs.

The seed's §2 goes on: "to be faster, split memory blocks into several lists,
every block of one list the same size (different lists, different sizes);
an allocation first finds the right list, then takes a block from it, so
fewer blocks are walked".  This is that allocator in its simplest form
(simple segregated storage, Knuth's and Wilson's name):

* 12 classes of 16, 32, 64, ... 32 KiB bytes; a request is rounded up to
  the next power of two (at least 16);
* each class has its own free list, a stack of block addresses; when it is
  empty, a run of 64 KiB (or one block, if bigger) is taken from the page
  heap and cut into blocks of that class, all pushed on the list;
* ``free`` pushes the block back on its class's list: the class is found
  from the address through a page map (page -> run base | class), so no
  header is needed and blocks are packed back to back;
* requests over 32 KiB get whole pages of their own, returned on free.

Alignment: blocks are cut from page-aligned runs, so a block is aligned to
its size up to 8 KiB (16 KiB and 32 KiB blocks to 8 KiB); large objects are
page aligned.  Every address is at least 16-byte aligned.

What it gets right: malloc and free are O(1), a pop and a push; no header
per object; neighbouring blocks of one class never need merging.
What it gets wrong: every request is rounded up to a power of two, so up to
half of each block is waste, about a quarter on average for sizes spread
evenly (``bytes_allocated - bytes_in_use``); blocks are never merged or
given back, so memory freed in one class cannot serve another and stays
held after the objects are gone.

Metadata (a C implementation): one page-map word per page of runs, a
record of 16 bytes per large object, and a list head per class.

Invariants:
  SEG-1: each run's pages map to it with its class, and no other page does;
         runs and large objects add up to the bytes held from the page heap.
  SEG-2: every block on a free list is a block start in a run of its class,
         appears once, and is not live.
  SEG-3: per class, blocks cut == blocks free + live objects of the class.
  SEG-4: each live object of <= 32 KiB sits at a block start of the class
         its size rounds to; each larger one is the base of its own pages.
  and STATS-1 (realalloc/designs/base.py).

Locking: one lock, ``SegregatedHeap.lock``, around every call; it is taken
before PageSource.lock.  Methods named ``*_locked`` need it held.
"""

from __future__ import annotations

import threading
from typing import ClassVar, Final

from ..errors import HeapCorruption
from .base import MAX_SIZE, DesignHeap, DesignStats, RecentlyFreed
from .pages import PAGE_SHIFT, PAGE_SIZE, page_of

__all__ = ["CLASS_SIZES", "MAX_SMALL", "RUN_BYTES", "SegregatedHeap", "size_class"]

MIN_SHIFT: Final = 4
CLASS_SIZES: Final = tuple(1 << s for s in range(MIN_SHIFT, 16))
"""Block size of each class: 16 B ... 32 KiB."""
MAX_SMALL: Final = CLASS_SIZES[-1]
RUN_BYTES: Final = 64 << 10
"""Bytes cut into blocks when a class runs dry (at least one block)."""
_CLASS_MASK: Final = 0xF
"""The class in a page-map word (run bases are page aligned)."""
_LARGE_RECORD: Final = 16
_LIST_HEAD: Final = 8


def size_class(size: int) -> int:
    """The class of a request of ``size`` <= MAX_SMALL bytes: ceil(log2), at least 16."""
    return 0 if size <= 16 else (size - 1).bit_length() - MIN_SHIFT


class SegregatedHeap(DesignHeap):
    """Power-of-two size classes, one free list each, blocks cut from page runs."""

    name: ClassVar[str] = "segregated"
    alignment: ClassVar[int] = 16

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self._free: list[list[int]] = [[] for _ in CLASS_SIZES]  # per class, a stack
        self._page_map: dict[int, int] = {}  # page number -> run base | class
        self._runs: dict[int, int] = {}  # run base -> class
        self._large: dict[int, int] = {}  # base of a large object -> its pages
        self._freed_large = RecentlyFreed()
        self._cut = [0] * len(CLASS_SIZES)  # blocks cut, per class
        self._in_use = 0
        self._allocated = 0
        self._mallocs = 0
        self._frees = 0

    # -- the Heap calls ---------------------------------------------------------

    def malloc(self, size: int) -> int:
        """Pop a block of the size's class (cut a run first if the list is empty)."""
        if type(size) is not int or not 0 <= size <= MAX_SIZE:
            size = self._size_arg(size)
        if size > MAX_SMALL:
            return self._malloc_large(size)
        c = size_class(size)
        with self.lock:
            self._check_open()
            blocks = self._free[c]
            if not blocks:
                self._cut_run_locked(c)
            addr = blocks.pop()
            self._live[addr] = size
            self._in_use += size
            self._allocated += CLASS_SIZES[c]
            self._mallocs += 1
            return addr

    def free(self, addr: int) -> None:
        """Push the block back on its class's list (large objects: pages back)."""
        if type(addr) is not int:
            addr = self._addr_arg(addr)
        with self.lock:
            self._check_open()
            size = self._pop_live(addr)
            self._in_use -= size
            self._frees += 1
            if size <= MAX_SMALL:
                c = self._page_map[addr >> PAGE_SHIFT] & _CLASS_MASK
                self._free[c].append(addr)
                self._allocated -= CLASS_SIZES[c]
            else:
                self._allocated -= self._large.pop(addr) * PAGE_SIZE
                self._freed_large.add(addr)
                self.pages.free(addr)

    def usable_size(self, addr: int) -> int:
        """The block's class size; for a large object, its pages."""
        addr = self._addr_arg(addr)
        with self.lock:
            self._check_open()
            return self._usable_locked(addr, "usable_size")

    def stats(self) -> DesignStats:
        with self.lock:
            self._check_open()
            return self._stats_locked()

    def close(self) -> None:
        with self.lock:
            super().close()
            for blocks in self._free:
                blocks.clear()
            self._page_map.clear()
            self._runs.clear()
            self._large.clear()

    # -- the allocator ----------------------------------------------------------

    def _cut_run_locked(self, c: int) -> None:
        """Take a run from the page heap and push all its blocks on class ``c``'s list."""
        bsize = CLASS_SIZES[c]
        nbytes = max(RUN_BYTES, bsize)
        base = self.pages.alloc(nbytes // PAGE_SIZE)  # OutOfMemoryError: nothing changed
        self._runs[base] = c
        first = page_of(base)
        for page in range(first, first + nbytes // PAGE_SIZE):
            self._page_map[page] = base | c
        # Highest first, so the list pops blocks in ascending address order.
        self._free[c].extend(range(base + nbytes - bsize, base - 1, -bsize))
        self._cut[c] += nbytes // bsize

    def _malloc_large(self, size: int) -> int:
        npages = -(-size // PAGE_SIZE)
        with self.lock:
            self._check_open()
            base = self.pages.alloc(npages)  # OutOfMemoryError: nothing changed
            self._large[base] = npages
            self._freed_large.discard(base)
            self._live[base] = size
            self._in_use += size
            self._allocated += npages * PAGE_SIZE
            self._mallocs += 1
            return base

    def _usable_locked(self, addr: int, op: str) -> int:
        if addr not in self._live:
            raise self._bad_pointer(op, addr)
        npages = self._large.get(addr)
        if npages is not None:
            return npages * PAGE_SIZE
        return CLASS_SIZES[self._page_map[addr >> PAGE_SHIFT] & _CLASS_MASK]

    def _try_resize(self, addr: int, size: int) -> int | None:
        """In place while the new size rounds to the same class (or pages)."""
        with self.lock:
            self._check_open()
            usable = self._usable_locked(addr, "realloc")
            old = self._live[addr]
            if old > MAX_SMALL:
                fits = size > MAX_SMALL and -(-size // PAGE_SIZE) * PAGE_SIZE == usable
            else:
                fits = size <= MAX_SMALL and CLASS_SIZES[size_class(size)] == usable
            if not fits:
                return usable
            self._live[addr] = size
            self._in_use += size - old
            return None

    # -- addresses --------------------------------------------------------------

    def _block_at(self, addr: int) -> int | None:
        """The start of the block of a run that holds ``addr``, or None.
        Caller must hold ``SegregatedHeap.lock``."""
        word = self._page_map.get(addr >> PAGE_SHIFT)
        if word is None:
            return None
        bsize = CLASS_SIZES[word & _CLASS_MASK]
        run = word & ~_CLASS_MASK
        return run + (addr - run) // bsize * bsize

    def _object_containing(self, addr: int) -> int | None:
        block = self._block_at(addr)
        if block is not None:
            return block if block in self._live else None
        for base, npages in self._large.items():
            if base <= addr < base + npages * PAGE_SIZE:
                return base
        return None

    def _was_freed(self, addr: int) -> bool:
        return self._block_at(addr) == addr or addr in self._freed_large

    # -- stats and invariants ---------------------------------------------------

    def _stats_locked(self) -> DesignStats:
        free_bytes = sum(len(b) * size for b, size in zip(self._free, CLASS_SIZES, strict=True))
        return DesignStats(
            design=self.name,
            bytes_in_use=self._in_use,
            bytes_allocated=self._allocated,
            bytes_held=self.pages.held_bytes,
            metadata_bytes=8 * len(self._page_map)
            + _LARGE_RECORD * len(self._large)
            + _LIST_HEAD * len(CLASS_SIZES),
            objects_live=len(self._live),
            mallocs=self._mallocs,
            frees=self._frees,
            detail={
                "runs": len(self._runs),
                "large_objects": len(self._large),
                "free_blocks": sum(len(b) for b in self._free),
                "free_bytes_in_classes": free_bytes,
                "rounding_waste": self._allocated - self._in_use,
            },
        )

    def check(self) -> None:
        with self.lock:
            self._check_open()
            self._check_locked()
            self._stats_locked().check(sum(self._live.values()), len(self._live), "SEG")
        self.pages.check()

    def _check_locked(self) -> None:
        mapped = 0
        for base, c in self._runs.items():
            nbytes = max(RUN_BYTES, CLASS_SIZES[c])
            first = page_of(base)
            for page in range(first, first + nbytes // PAGE_SIZE):
                if self._page_map.get(page) != base | c:
                    raise HeapCorruption(
                        f"SEG-1: page {page << PAGE_SHIFT:#x} of the class-{c} run {base:#x} "
                        "does not map to it"
                    )
            mapped += nbytes // PAGE_SIZE
        if mapped != len(self._page_map):
            raise HeapCorruption(
                f"SEG-1: {len(self._page_map)} pages mapped, the runs have {mapped}"
            )
        held = mapped * PAGE_SIZE + sum(self._large.values()) * PAGE_SIZE
        if held != self.pages.held_bytes:
            raise HeapCorruption(
                f"SEG-1: runs and large objects add up to {held} bytes, the page source "
                f"holds {self.pages.held_bytes}"
            )
        live_by_class = [0] * len(CLASS_SIZES)
        for addr, size in self._live.items():
            if size > MAX_SMALL:
                if -(-size // PAGE_SIZE) != self._large.get(addr):
                    raise HeapCorruption(
                        f"SEG-4: large object {addr:#x} of {size} bytes has "
                        f"{self._large.get(addr)} pages"
                    )
                continue
            word = self._page_map.get(addr >> PAGE_SHIFT)
            c = size_class(size)
            if word is None or word & _CLASS_MASK != c or self._block_at(addr) != addr:
                raise HeapCorruption(
                    f"SEG-4: object {addr:#x} of {size} bytes is not a class-{c} block"
                )
            live_by_class[c] += 1
        for c, blocks in enumerate(self._free):
            if len(set(blocks)) != len(blocks):
                raise HeapCorruption(f"SEG-2: a class-{c} block is on the free list twice")
            for addr in blocks:
                word = self._page_map.get(addr >> PAGE_SHIFT)
                if word is None or word & _CLASS_MASK != c or self._block_at(addr) != addr:
                    raise HeapCorruption(f"SEG-2: free block {addr:#x} is not a class-{c} block")
                if addr in self._live:
                    raise HeapCorruption(f"SEG-2: free block {addr:#x} is live")
            if self._cut[c] != len(blocks) + live_by_class[c]:
                raise HeapCorruption(
                    f"SEG-3: class {c} ({CLASS_SIZES[c]} B): {self._cut[c]} blocks cut, "
                    f"{len(blocks)} free + {live_by_class[c]} live"
                )
