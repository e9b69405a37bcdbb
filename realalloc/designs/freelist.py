"""One address-ordered free list, first fit, boundary tags (seed §2, the first design).

See realalloc/designs/__init__.py for an overview of the designs.

The seed's §2 (内存按块管理) starts from a single free list: "when the program
asks for memory, the allocator walks the free blocks in turn until it finds
one big enough ... because it walks the list, allocation is O(n)".  This is
that allocator, in Knuth's form (TAOCP 2.5, boundary-tag method):

* memory comes from the page heap in regions of at least 1 MiB; a request
  that does not fit one gets a region of its own;
* every block, free or allocated, carries a *header* and a *footer* word in
  the real memory: ``size | USED`` (size in bytes, a multiple of 16, tags
  included; USED = 1 for an allocated block)::

      region:  | prologue | hdr  payload ... ftr | hdr  payload ... ftr | ... | epilogue |
               |  USED    |<------ block ------>|<------ block ------>|     |   USED   |
      offset:  0          8                                                    size - 8

  The payload starts 8 bytes after the header: regions are page aligned
  and blocks are multiples of 16, so every payload is 16-byte aligned.
  The prologue and epilogue are allocated tags of size 0 that stop
  coalescing at the region's ends.
* malloc: walk the free list in address order and take the *first* block
  that fits; split off the rest when it can hold a block (>= 32 bytes);
* free: read the left neighbour's footer and the right neighbour's header;
  merge with whichever is free, so no two free blocks are ever adjacent;
  a region that becomes one free block goes back to the page heap (unless
  it is the only one);
* realloc grows into a free right neighbour, and shrinks by splitting.

The free list itself is kept in Python (two parallel lists, addresses in
ascending order, and sizes) rather than threaded through the free blocks: it
mirrors the tags in memory, which are the truth ``free`` coalesces by and
``check`` walks.

What it gets right: no size classes, so no rounding beyond 16 bytes; 16 bytes
of tags per block; neighbours merge at once, so a run of frees gives back
one large block that the next big request can use in place.
What it gets wrong, as the seed says: every allocation walks the list from
the lowest address (``stats().detail["search_steps"]`` counts the blocks
visited); first fit leaves small splinters at the front of the list, which
every later search walks past (external fragmentation); and a single list
needs a single lock.

Metadata (a C implementation): 16 bytes of tags per block, free or not, and
16 per region (prologue and epilogue).

Invariants:
  FREELIST-1: each region is tiled by its blocks: the prologue, blocks whose
              sizes add up to the region less 16 bytes, the epilogue.
  FREELIST-2: every block's header equals its footer; its size is a
              multiple of 16 and at least 32.
  FREELIST-3: the free list holds exactly the blocks whose tag is free, in
              ascending address order, with their sizes.
  FREELIST-4: no two free blocks are adjacent (coalescing is complete), and
              no region other than a sole one is entirely free.
  FREELIST-5: the allocated blocks are exactly the live objects (payload =
              block + 8), each asking for at most its block's payload.
  FREELIST-6: the regions add up to the bytes held from the page heap.
  and STATS-1 (realalloc/designs/base.py).

Locking: one lock, ``FreeListHeap.lock``, around every call; it is taken
before PageSource.lock.  Methods named ``*_locked`` need it held.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from typing import ClassVar, Final

from ..errors import HeapCorruption
from .base import MAX_SIZE, DesignHeap, DesignStats, RecentlyFreed
from .pages import PAGE_SIZE

__all__ = ["MIN_BLOCK", "REGION_BYTES", "FreeListHeap"]

USED: Final = 1
"""Tag bit of an allocated block (sizes are multiples of 16)."""
TAGS: Final = 16
"""Header plus footer, bytes."""
MIN_BLOCK: Final = 32
"""Smallest block: tags and a 16-byte payload."""
REGION_BYTES: Final = 1 << 20
"""Smallest region taken from the page heap."""


def block_bytes(size: int) -> int:
    """The block that holds a ``size``-byte payload: tags added, 16-byte multiple."""
    return max(MIN_BLOCK, (size + TAGS + 15) & ~15)


class _Region:
    """A run of pages from the page heap and its words, for reading tags."""

    __slots__ = ("base", "end", "words")

    def __init__(self, base: int, end: int, words: memoryview) -> None:
        self.base = base
        self.end = end
        self.words = words  # the region as 64-bit words: tags are read and written here


class FreeListHeap(DesignHeap):
    """First fit over one address-ordered free list with boundary tags.
    Every address is 16-byte aligned."""

    name: ClassVar[str] = "freelist"
    alignment: ClassVar[int] = 16

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self._bases: list[int] = []  # region bases, ascending
        self._regions: dict[int, _Region] = {}  # base -> region
        self._free_addrs: list[int] = []  # free blocks (their headers), ascending
        self._free_sizes: list[int] = []  # their sizes, same order
        self._freed = RecentlyFreed()
        self._in_use = 0  # requested bytes of live objects
        self._allocated = 0  # payload bytes of allocated blocks
        self._mallocs = 0
        self._frees = 0
        self._search_steps = 0  # free blocks visited by first fit, in all
        self._grows = 0
        self._in_place = 0  # reallocs done in place

    # -- the Heap calls ---------------------------------------------------------

    def malloc(self, size: int) -> int:
        """First fit: the lowest free block with room; split when the rest can
        be a block of its own."""
        if type(size) is not int or not 0 <= size <= MAX_SIZE:
            size = self._size_arg(size)
        need = block_bytes(size)
        with self.lock:
            self._check_open()
            i = self._first_fit_locked(need)
            if i < 0:
                i = self._grow_locked(need)
            block, bsize = self._take_locked(i, need)
            addr = block + 8
            self._live[addr] = size
            self._freed.discard(addr)
            self._in_use += size
            self._allocated += bsize - TAGS
            self._mallocs += 1
            return addr

    def free(self, addr: int) -> None:
        """Free the object at ``addr``, merging it with free neighbours."""
        if type(addr) is not int:
            addr = self._addr_arg(addr)
        with self.lock:
            self._check_open()
            size = self._pop_live(addr)
            block = addr - 8
            region = self._region_of(block)
            assert region is not None  # a live object lies in a region
            bsize = region.words[(block - region.base) >> 3] & ~USED
            self._in_use -= size
            self._allocated -= bsize - TAGS
            self._frees += 1
            self._freed.add(addr)
            self._release_locked(region, block, bsize)

    def usable_size(self, addr: int) -> int:
        """The block's payload: the request rounded up to 16 bytes, or more
        when the rest of a block was too small to split off."""
        addr = self._addr_arg(addr)
        with self.lock:
            self._check_open()
            if addr not in self._live:
                raise self._bad_pointer("usable_size", addr)
            region = self._region_of(addr)
            assert region is not None
            return (region.words[(addr - 8 - region.base) >> 3] & ~USED) - TAGS

    def stats(self) -> DesignStats:
        with self.lock:
            self._check_open()
            return self._stats_locked()

    def _stats_locked(self) -> DesignStats:
        sizes = self._free_sizes
        return DesignStats(
            design=self.name,
            bytes_in_use=self._in_use,
            bytes_allocated=self._allocated,
            bytes_held=self.pages.held_bytes,
            metadata_bytes=TAGS * (len(self._live) + len(sizes) + len(self._regions)),
            objects_live=len(self._live),
            mallocs=self._mallocs,
            frees=self._frees,
            detail={
                "regions": len(self._regions),
                "free_blocks": len(sizes),
                "free_bytes": sum(sizes),
                "largest_free_block": max(sizes, default=0),
                "search_steps": self._search_steps,
                "grows": self._grows,
                "reallocs_in_place": self._in_place,
            },
        )

    def close(self) -> None:
        with self.lock:
            super().close()
            self._regions.clear()
            self._bases.clear()
            self._free_addrs.clear()
            self._free_sizes.clear()

    # -- the allocator ----------------------------------------------------------

    def _first_fit_locked(self, need: int) -> int:
        """Index in the free list of the lowest block of at least ``need``
        bytes, or -1.  O(free blocks): the walk the seed describes."""
        for i, size in enumerate(self._free_sizes):
            if size >= need:
                self._search_steps += i + 1
                return i
        self._search_steps += len(self._free_sizes)
        return -1

    def _grow_locked(self, need: int) -> int:
        """Take a new region that holds a ``need``-byte block; it becomes one
        free block.  Returns that block's index in the free list."""
        nbytes = -(-max(REGION_BYTES, need + TAGS) // PAGE_SIZE) * PAGE_SIZE
        base = self.pages.alloc(nbytes // PAGE_SIZE)  # OutOfMemoryError: nothing changed
        region = _Region(base, base + nbytes, self.pages.view(base).cast("Q"))
        region.words[0] = USED  # prologue
        region.words[-1] = USED  # epilogue
        self._set_tags(region, base + 8, nbytes - TAGS, 0)
        self._regions[base] = region
        self._bases.insert(bisect_left(self._bases, base), base)
        i = bisect_left(self._free_addrs, base + 8)
        self._free_addrs.insert(i, base + 8)
        self._free_sizes.insert(i, nbytes - TAGS)
        self._grows += 1
        return i

    def _take_locked(self, i: int, need: int) -> tuple[int, int]:
        """Allocate ``need`` bytes from the front of free block ``i``; returns
        (block, its size), the size larger than ``need`` when the rest was too
        small to be a block."""
        addrs, sizes = self._free_addrs, self._free_sizes
        block, bsize = addrs[i], sizes[i]
        region = self._region_of(block)
        assert region is not None
        rest = bsize - need
        if rest >= MIN_BLOCK:
            # The rest stays at index i: it is still above block i-1 and below i+1.
            addrs[i] = block + need
            sizes[i] = rest
            self._set_tags(region, block + need, rest, 0)
            bsize = need
        else:
            del addrs[i]
            del sizes[i]
        self._set_tags(region, block, bsize, USED)
        return block, bsize

    def _release_locked(self, region: _Region, block: int, bsize: int) -> None:
        """Make ``block`` free, merged with the free blocks on either side
        (read from their tags); a region left entirely free is given back."""
        words, base = region.words, region.base
        addrs, sizes = self._free_addrs, self._free_sizes
        start, end = block, block + bsize
        left = words[(block - 8 - base) >> 3]  # the left neighbour's footer (or the prologue)
        right = words[(end - base) >> 3]  # the right neighbour's header (or the epilogue)
        i = -1
        if not left & USED:
            start = block - left
            i = bisect_left(addrs, start)
        if not right & USED:
            j = i + 1 if i >= 0 else bisect_left(addrs, end)
            end += right
            if i >= 0:  # both sides: the right block's entry goes
                del addrs[j]
                del sizes[j]
            else:
                addrs[j] = start
                i = j
        if i < 0:
            i = bisect_left(addrs, start)
            addrs.insert(i, start)
            sizes.insert(i, end - start)
        else:
            sizes[i] = end - start
        self._set_tags(region, start, end - start, 0)
        if start == base + 8 and end == region.end - 8 and len(self._regions) > 1:
            del addrs[i]
            del sizes[i]
            del self._regions[base]
            self._bases.remove(base)
            self.pages.free(base)

    def _try_resize(self, addr: int, size: int) -> int | None:
        need = block_bytes(size)
        with self.lock:
            self._check_open()
            old = self._live.get(addr)
            if old is None:
                raise self._bad_pointer("realloc", addr)
            block = addr - 8
            region = self._region_of(block)
            assert region is not None
            words, base = region.words, region.base
            bsize = words[(block - base) >> 3] & ~USED
            if need <= bsize:
                new = bsize
                if bsize - need >= MIN_BLOCK:  # shrink: the tail becomes free
                    new = need
                    self._set_tags(region, block, need, USED)
                    self._release_locked(region, block + need, bsize - need)
            else:  # grow into a free right neighbour, if it is big enough
                end = block + bsize
                right = words[(end - base) >> 3]
                if right & USED or bsize + right < need:
                    return bsize - TAGS
                j = bisect_left(self._free_addrs, end)
                new = bsize + right
                if new - need >= MIN_BLOCK:
                    self._free_addrs[j] = block + need
                    self._free_sizes[j] = new - need
                    self._set_tags(region, block + need, new - need, 0)
                    new = need
                else:
                    del self._free_addrs[j]
                    del self._free_sizes[j]
                self._set_tags(region, block, new, USED)
            self._live[addr] = size
            self._in_use += size - old
            self._allocated += new - bsize
            self._in_place += 1
            return None

    # -- addresses and tags -----------------------------------------------------

    def _region_of(self, addr: int) -> _Region | None:
        """The region holding ``addr``, or None.  Caller must hold ``FreeListHeap.lock``."""
        i = bisect_right(self._bases, addr) - 1
        if i < 0:
            return None
        region = self._regions[self._bases[i]]
        return region if addr < region.end else None

    @staticmethod
    def _set_tags(region: _Region, block: int, size: int, used: int) -> None:
        """Write ``block``'s header and footer."""
        words, base = region.words, region.base
        words[(block - base) >> 3] = words[(block + size - 8 - base) >> 3] = size | used

    def _blocks(self, region: _Region) -> list[tuple[int, int]]:
        """(block, tag) of every block of ``region`` by walking the headers;
        stops at a tag that cannot be walked past.  Caller holds the lock."""
        words, base = region.words, region.base
        out = []
        pos, stop = base + 8, region.end - 8
        while pos < stop:
            tag = words[(pos - base) >> 3]
            size = tag & ~USED
            out.append((pos, tag))
            if size < MIN_BLOCK or pos + size > stop:
                break
            pos += size
        return out

    def _object_containing(self, addr: int) -> int | None:
        region = self._region_of(addr)
        if region is None:
            return None
        for block, tag in self._blocks(region):
            if block + 8 <= addr < block + (tag & ~USED) - 8:
                return block + 8 if tag & USED and block + 8 in self._live else None
        return None

    def _was_freed(self, addr: int) -> bool:
        return addr in self._freed

    # -- invariants -------------------------------------------------------------

    def check(self) -> None:
        with self.lock:
            self._check_open()
            self._check_locked()
            self._stats_locked().check(sum(self._live.values()), len(self._live), "FREELIST")
        self.pages.check()

    def _check_locked(self) -> None:
        free: list[tuple[int, int]] = []
        used: dict[int, int] = {}
        entirely_free = 0
        for base in self._bases:
            region = self._regions[base]
            words, nbytes = region.words, region.end - base
            if words[0] != USED or words[-1] != USED:
                raise HeapCorruption(
                    f"FREELIST-1: region {base:#x}: prologue {words[0]:#x}, "
                    f"epilogue {words[-1]:#x}, both must be {USED}"
                )
            prev_free = False
            pos = base + 8
            for block, tag in self._blocks(region):
                size = tag & ~USED
                if size < MIN_BLOCK or size % 16:
                    raise HeapCorruption(f"FREELIST-2: block {block:#x} has tag {tag:#x}")
                if block + size > region.end - 8:
                    raise HeapCorruption(
                        f"FREELIST-1: block {block:#x} of {size} bytes runs past its region"
                    )
                footer = words[(block + size - 8 - base) >> 3]
                if footer != tag:
                    raise HeapCorruption(
                        f"FREELIST-2: block {block:#x}: header {tag:#x}, footer {footer:#x}"
                    )
                if tag & USED:
                    used[block + 8] = size - TAGS
                    prev_free = False
                else:
                    if prev_free:
                        raise HeapCorruption(
                            f"FREELIST-4: free block {block:#x} follows another free block"
                        )
                    free.append((block, size))
                    prev_free = True
                    entirely_free += size == nbytes - TAGS
                pos = block + size
            if pos != region.end - 8:
                raise HeapCorruption(
                    f"FREELIST-1: region {base:#x}: blocks end at {pos:#x}, not {region.end - 8:#x}"
                )
        listed = list(zip(self._free_addrs, self._free_sizes, strict=True))
        if listed != free:
            wrong = next(
                (f"{a:#x}/{b:#x}" for a, b in zip(listed, free, strict=False) if a != b),
                "one list is longer",
            )
            raise HeapCorruption(
                f"FREELIST-3: the free list ({len(listed)} blocks) is not the free blocks "
                f"in memory ({len(free)}): first difference (block/size) {wrong}"
            )
        if entirely_free and len(self._regions) > 1:
            raise HeapCorruption(f"FREELIST-4: {entirely_free} regions are entirely free")
        if used.keys() != self._live.keys():
            extra = sorted(used.keys() ^ self._live.keys())[:3]
            raise HeapCorruption(
                "FREELIST-5: allocated blocks and live objects differ at "
                + ", ".join(f"{a:#x}" for a in extra)
            )
        for addr, size in self._live.items():
            if size > used[addr]:
                raise HeapCorruption(
                    f"FREELIST-5: object {addr:#x} asked for {size} bytes, "
                    f"its block holds {used[addr]}"
                )
        held = sum(r.end - r.base for r in self._regions.values())
        if held != self.pages.held_bytes:
            raise HeapCorruption(
                f"FREELIST-6: regions add up to {held} bytes, the page source holds "
                f"{self.pages.held_bytes}"
            )
        if self._allocated != sum(used.values()):
            raise HeapCorruption(
                f"FREELIST-STATS-1: payloads add up to {sum(used.values())}, "
                f"counted {self._allocated}"
            )
