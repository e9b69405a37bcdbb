"""Per-thread page cache (Go: runtime/mpagecache.go, type pageCache).

See realalloc/__init__.py for an overview of the allocator.

A ``PageCache`` owns up to 64 pages of one 64-page-aligned block of a chunk,
taken at once by ``PageAlloc.alloc_to_cache``.  Small page requests are then
served from its bitmap without touching the page allocator; ``flush`` gives
the pages it still holds back.  It owns two 64-bit maps over the block: bit i
of ``cache`` set means page base+i*8K is free in the cache, bit i of ``scav``
set means that page's memory was released to the OS.

Invariants:
  PCACHE-1: base % (64 * PAGE_SIZE) == 0, 0 <= cache < 2**64
  PCACHE-2: scav & ~cache == 0   (only cached pages can be scavenged)
  PCACHE-3: empty()  <=>  cache == 0

A PageCache belongs to one thread and has no lock; ``flush`` changes the
PageAlloc: Caller must hold the heap lock; PageAlloc has no lock of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ..errors import InvalidArgumentError, require_int
from .pallocbits import ADDR_LIMIT, PAGE_SHIFT, PAGE_SIZE, find_bit_range, range_mask

if TYPE_CHECKING:
    from .pagealloc import PageAlloc

__all__ = ["PAGE_CACHE_BYTES", "PAGE_CACHE_MASK", "PAGE_CACHE_PAGES", "PageCache"]

PAGE_CACHE_PAGES: Final = 64
PAGE_CACHE_BYTES: Final = PAGE_CACHE_PAGES * PAGE_SIZE
PAGE_CACHE_MASK: Final = (1 << PAGE_CACHE_PAGES) - 1


class PageCache:
    """Free pages of one 64-page block, owned by one thread (Go: pageCache)."""

    __slots__ = ("base", "cache", "scav")

    def __init__(self, base: int = 0, cache_bits: int = 0, scav_bits: int = 0) -> None:
        """Scavenged bits of pages not in cache_bits are dropped (PCACHE-2)."""
        b = require_int("base", base, 0, ADDR_LIMIT - PAGE_CACHE_BYTES)
        if b % PAGE_CACHE_BYTES:
            raise InvalidArgumentError(f"base {b:#x} is not aligned to {PAGE_CACHE_BYTES:#x}")
        self.base = b
        self.cache = require_int("cache_bits", cache_bits, 0, PAGE_CACHE_MASK)
        self.scav = require_int("scav_bits", scav_bits, 0, PAGE_CACHE_MASK) & self.cache

    def __repr__(self) -> str:
        return f"PageCache(base={self.base:#x}, cache={self.cache:#018x}, scav={self.scav:#018x})"

    def empty(self) -> bool:
        """Whether no free page is left in the cache."""
        return not self.cache

    def alloc(self, npages: int) -> tuple[int, int]:
        """First fit of npages (1..64) cached pages: (base, bytes of them that were scavenged).

        Returns (0, 0) when no run of npages is left.
        """
        n = require_int("npages", npages, 1, PAGE_CACHE_PAGES)
        i = find_bit_range(self.cache, n)
        if i < 0:
            return 0, 0
        mask = range_mask(i, n)
        scav = (self.scav & mask).bit_count()
        self.cache &= ~mask
        self.scav &= ~mask
        return self.base + (i << PAGE_SHIFT), scav << PAGE_SHIFT

    def flush(self, page_alloc: PageAlloc) -> None:
        """Give every page still cached back to page_alloc and empty the cache."""
        page_alloc.free_pages64(self.base, self.cache, self.scav)
        self.base = self.cache = self.scav = 0
