/*
 * Per-object kernels over one span's bitmaps: next free slot, sweep, free,
 * tiny pieces (FAST PATH: no locks, no policy).  Slot states (Go: allocBits,
 * freeindex) are drawn in realalloc/core/span.py: alloc bit set = allocated;
 * a thread whose cache holds the span frees with plain stores (mimalloc's
 * local free), others set a free bit atomically for the next sweep.  Static
 * inline: shim.c (cffi) and fastpath.c (CPython) run the same code.
 */
#ifndef REALALLOC_SPANBITS_H
#define REALALLOC_SPANBITS_H

#include <string.h>

#include "shim.h"

#define RA_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define RA_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
/* An owner's store to a word other threads only read: a plain store on x86. */
#define RA_SET(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define RA_NEVER 0xffffffffu

static inline uint32_t ra_nwords(const ra_span *s) { return (s->nelems + 63) >> 6; }
static inline uint64_t *ra_alloc_bits(ra_span *s) { return s->bits; }
static inline uint64_t *ra_free_bits(ra_span *s) { return s->bits + ra_nwords(s); }
static inline uint32_t *ra_tiny_state(ra_span *s) { return (uint32_t *)(s->bits + 2 * ra_nwords(s)); }

/* Slot index of byte offset `off` in a small-object span. */
static inline uint32_t ra_slot_of(const ra_span *s, uintptr_t off) {
    return (uint32_t)((off * ra_class_to_divmagic[s->spanclass >> 1]) >> 32);
}

/* Restart the next-free scan at slot 0, after frees made room behind it. */
static inline void ra_rewind(ra_span *s) {
    s->free_index = 0;
    s->alloc_cache = ~ra_alloc_bits(s)[0];
}

#define RA_COLD __attribute__((noinline)) /* off the common path: keep the fast path small */

/* The free slots of the next word with any, moving free_index there; 0: none. */
static RA_COLD uint64_t ra_next_word(ra_span *s) {
    for (uint32_t next = s->free_index + 64; next < s->nelems; next += 64) {
        s->free_index = next;
        uint64_t cache = ~ra_alloc_bits(s)[next >> 6];
        if (cache) return cache;
    }
    return 0;
}

/* Next free slot, marked allocated, or -1 (Go: nextFreeFast + nextFreeIndex).
 * alloc_cache holds the free slots of the word at free_index (a multiple of
 * 64) not yet taken; padding bits are set, so no slot >= nelems is free. */
static inline int64_t ra_next_free(ra_span *s) {
    uint64_t cache = s->alloc_cache;
    if (!cache && !(cache = ra_next_word(s))) return -1; /* full, or the empty span */
    uint32_t slot = s->free_index + (uint32_t)__builtin_ctzll(cache);
    s->alloc_cache = cache & (cache - 1);
    uint64_t *word = &ra_alloc_bits(s)[slot >> 6]; /* only the owner writes it */
    RA_SET(word, *word | 1ull << (slot & 63));
    s->alloc_count++;
    return slot;
}

/* Apply pending frees (Go: sweep).  Caller owns the span (its cache, or the
 * central lock while uncached).  Returns the slots freed. */
static inline uint32_t ra_sweep(ra_span *s) {
    uint32_t nwords = ra_nwords(s), freed = 0, taken = 0;
    uint64_t *ab = ra_alloc_bits(s), *fb = ra_free_bits(s);
    for (uint32_t w = 0; w < nwords; w++) {
        if (!RA_LOAD(&fb[w])) continue;
        uint64_t pending = __atomic_exchange_n(&fb[w], 0, __ATOMIC_ACQ_REL);
        taken += (uint32_t)__builtin_popcountll(pending);
        pending &= ab[w]; /* a lost double-free race may mark a free slot */
        RA_SET(&ab[w], ab[w] & ~pending);
        freed += (uint32_t)__builtin_popcountll(pending);
    }
    if (taken) __atomic_sub_fetch(&s->nfreed, taken, __ATOMIC_ACQ_REL);
    s->alloc_count -= freed;
    if (freed) s->needzero = 1;
    ra_rewind(s);
    return freed;
}

/* Free slot `idx` of `s` from a thread whose cache does not hold the span:
 * set its free bit for the next sweep.  RA_OK, or RA_SLOW (not allocated, or
 * already pending: a double free). */
static RA_COLD int ra_free_remote(ra_heap *h, ra_span *s, uint32_t idx, ra_mcache *c) {
    uint64_t bit = 1ull << (idx & 63);
    if (!(RA_LOAD(&ra_alloc_bits(s)[idx >> 6]) & bit) ||
        (__atomic_fetch_or(&ra_free_bits(s)[idx >> 6], bit, __ATOMIC_ACQ_REL) & bit))
        return RA_SLOW;
    if (c) c->nfree[s->spanclass >> 1]++;
    else __atomic_add_fetch(&h->counts.nfree[s->spanclass >> 1], 1, __ATOMIC_RELAXED);
    uint32_t pending = __atomic_add_fetch(&s->nfreed, 1, __ATOMIC_SEQ_CST);
    /* Pairs with the seq_cst store of cached = 0 in ra_uncache: either this
     * free sees the span uncached, or the uncacher sees nfreed > 0. */
    if (__atomic_load_n(&s->cached, __ATOMIC_SEQ_CST)) return RA_OK;
    /* Worth a sweep once the span may go to another list: it had no room
     * (sweep_at 1), or it has no live object left. */
    if (pending < RA_LOAD(&s->sweep_at) && pending != RA_LOAD(&s->alloc_count)) return RA_OK;
    uint8_t no = 0;
    if (__atomic_compare_exchange_n(&s->in_dirty, &no, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        ra_span **head = &h->central[s->spanclass].dirty;
        ra_span *old = __atomic_load_n(head, __ATOMIC_ACQUIRE);
        do s->next_dirty = old;
        while (!__atomic_compare_exchange_n(head, &old, s, 1, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
    }
    return RA_OK;
}

/* Free slot `idx` of `s`; `c` is the calling thread's cache or NULL.  When
 * that cache holds the span, plain stores and needzero (whichever cache reuses
 * the slot, after a rewind, must clear it).  RA_OK or RA_SLOW (Python says why). */
static inline int ra_free_slot(ra_heap *h, ra_span *s, uint32_t idx, ra_mcache *c) {
    if (!c || c->alloc[s->spanclass] != s) return ra_free_remote(h, s, idx, c);
    uint64_t bit = 1ull << (idx & 63), *ab = &ra_alloc_bits(s)[idx >> 6];
    if (!(*ab & bit) || (RA_LOAD(&ra_free_bits(s)[idx >> 6]) & bit)) return RA_SLOW;
    RA_SET(ab, *ab & ~bit);
    s->alloc_count--;
    s->needzero = 1;
    c->nfree[s->spanclass >> 1]++;
    return RA_OK;
}

/* The live span holding `addr` in heap `h`, or NULL (Go: spanOf). */
static inline ra_span *ra_span_at(ra_heap *h, uintptr_t addr) {
    if (addr >> RA_HEAP_ADDR_BITS) return NULL;
    uintptr_t n = addr >> RA_ARENA_SHIFT;
    ra_heap_arena **l2 = RA_LOAD(&h->arena_index[n >> RA_ARENA_L2_BITS]);
    if (!l2) return NULL;
    ra_heap_arena *a = RA_LOAD(&l2[n & ((1u << RA_ARENA_L2_BITS) - 1)]);
    if (!a || a->heap_id != h->id) return NULL;
    return RA_LOAD(&a->spans[(addr - a->base) >> RA_PAGE_SHIFT]);
}

/* End bit of the tiny piece starting at byte `off` in state word `st`. */
static inline uint32_t ra_tiny_end_bit(uint32_t st, uint32_t off) {
    uint32_t ends = ((st >> 16) & 0x7fff) >> off;
    return ends ? 1u << (16 + off + (uint32_t)__builtin_ctz(ends)) : 0;
}

/* Free the tiny piece at byte `inner` of block `idx` (its state word `st`):
 * the block's slot goes when no piece is left and no cache holds it. */
static RA_COLD int ra_free_piece(ra_heap *h, ra_span *s, uint32_t idx, uint32_t inner,
                                 uint32_t st, ra_mcache *c) {
    uint32_t start = 1u << inner, *word = &ra_tiny_state(s)[idx];
    if (!(st & start)) return RA_SLOW;
    uint32_t clear = start | ra_tiny_end_bit(st, inner);
    uint32_t old = __atomic_fetch_and(word, ~clear, __ATOMIC_ACQ_REL);
    if (!(old & start)) return RA_SLOW; /* lost a race with another free of it */
    if (c) c->tiny_frees++;
    else __atomic_add_fetch(&h->counts.tiny_frees, 1, __ATOMIC_RELAXED);
    return old & ~clear ? RA_OK : ra_free_slot(h, s, idx, c); /* pieces left, or held */
}

/* Free the small object or tiny piece at `addr`; RA_SLOW for anything that
 * is not a live small object of `h` (Python diagnoses it). */
static inline int ra_free_object(ra_heap *h, uintptr_t addr, ra_mcache *c) {
    ra_span *s = ra_span_at(h, addr);
    if (!s || s->spanclass < 2) return RA_SLOW; /* class >= 2: a live small-object span */
    uintptr_t off = addr - s->base;
    uint32_t idx = ra_slot_of(s, off);
    uint32_t inner = (uint32_t)(off - (uintptr_t)idx * s->elemsize);
    if (idx >= s->nelems || !(RA_LOAD(&ra_alloc_bits(s)[idx >> 6]) >> (idx & 63) & 1))
        return RA_SLOW;
    uint32_t st = s->spanclass == RA_TINY_SPAN_CLASS ? RA_LOAD(&ra_tiny_state(s)[idx]) : 0;
    if (st) return ra_free_piece(h, s, idx, inner, st, c);
    return inner ? RA_SLOW : ra_free_slot(h, s, idx, c);
}

/* Bytes usable at `addr` if a live object of `h` starts there, else 0: a tiny
 * piece's own extent, a slot (Go's roundupsize), or a large object's pages. */
static inline size_t ra_usable(ra_heap *h, uintptr_t addr) {
    ra_span *s = ra_span_at(h, addr);
    if (!s || s->state != RA_SPAN_IN_USE) return 0;
    if (s->spanclass < 2) /* alloc_count 0: freed, its span kept for reuse */
        return addr == s->base && s->alloc_count ? (size_t)s->npages << RA_PAGE_SHIFT : 0;
    uintptr_t off = addr - s->base;
    uint32_t idx = ra_slot_of(s, off), inner = (uint32_t)(off - (uintptr_t)idx * s->elemsize);
    uint64_t bit = 1ull << (idx & 63);
    if (idx >= s->nelems || !(RA_LOAD(&ra_alloc_bits(s)[idx >> 6]) & bit) ||
        (RA_LOAD(&ra_free_bits(s)[idx >> 6]) & bit))
        return 0;
    uint32_t st = s->spanclass == RA_TINY_SPAN_CLASS ? RA_LOAD(&ra_tiny_state(s)[idx]) : 0;
    if (!st) return inner ? 0 : s->elemsize;
    uint32_t end = ra_tiny_end_bit(st, inner);
    return !(st >> inner & 1) ? 0 : end ? (uint32_t)__builtin_ctz(end) - 15 - inner : 16 - inner;
}

/* The span class of a request of `size` bytes: noscan sizes below 16 are
 * tiny pieces; size 0 takes the smallest class; large ones class 0. */
static inline uint32_t ra_class_for(size_t size, int noscan) {
    if (noscan && size < RA_TINY_SIZE) return RA_TINY_SPAN_CLASS;
    if (size > RA_MAX_SMALL_SIZE) return noscan ? 1u : 0u; /* folds away after a size test */
    uint32_t sc = size <= RA_SMALL_SIZE_MAX ? ra_size_to_class8[(size + 7) >> 3]
                                            : ra_size_to_class128[(size - RA_SMALL_SIZE_MAX + 127) >> 7];
    return (sc ? sc : 1) << 1 | (noscan ? 1u : 0u);
}

/* Give up the cache's tiny block.  Returns the block's span when the block
 * holds no piece any more and its slot must be freed, else NULL. */
static inline ra_span *ra_tiny_retire(ra_mcache *c, uint32_t *idx_out) {
    ra_span *s = c->tiny_span;
    if (!c->tiny) return NULL;
    uint32_t idx = ra_slot_of(s, c->tiny - s->base);
    c->tiny = 0;
    c->tiny_span = NULL;
    uint32_t left = __atomic_and_fetch(&ra_tiny_state(s)[idx], ~(uint32_t)RA_TINY_HELD,
                                       __ATOMIC_ACQ_REL);
    *idx_out = idx;
    return left ? NULL : s;
}

/* A tiny piece (noscan, size < 16) from the cache's 16-byte block, with
 * Go's alignment rules; a new block when it does not fit; 0 on a miss. */
static RA_COLD uintptr_t ra_malloc_tiny(ra_heap *h, ra_mcache *c, size_t size) {
    uintptr_t off = c->tiny_offset;
    off = (size & 7) == 0 ? (off + 7) & ~7u : (size & 3) == 0 ? (off + 3) & ~3u
        : (size & 1) == 0 ? (off + 1) & ~1u : off;
    if (size == 0) size = 1; /* 8-aligned by Go's rule; one byte keeps it unique */
    uint32_t end = (uint32_t)size - 1;
    if (c->tiny && off + size <= RA_TINY_SIZE) {
        ra_span *s = c->tiny_span;
        end += (uint32_t)off;
        uint32_t bits = (1u << off) | (end < 15 ? 1u << (16 + end) : 0);
        __atomic_or_fetch(&ra_tiny_state(s)[ra_slot_of(s, c->tiny - s->base)], bits,
                          __ATOMIC_ACQ_REL);
        c->tiny_offset = off + size;
        c->tiny_allocs++;
        c->tiny_pieces++;
        return c->tiny + off;
    }
    /* A new block, always zeroed so that every piece of it reads as zero. */
    ra_span *s = c->alloc[RA_TINY_SPAN_CLASS];
    int64_t slot = ra_next_free(s);
    if (slot < 0) return 0;
    uintptr_t block = s->base + (uintptr_t)slot * RA_TINY_SIZE;
    if (s->needzero) memset((void *)block, 0, RA_TINY_SIZE);
    c->nmalloc[RA_TINY_SPAN_CLASS >> 1]++; /* Go counts this piece as the block's malloc */
    c->tiny_pieces++;
    uint32_t bits = 1u | (end < 15 ? 1u << (16 + end) : 0);
    /* Go's rule: keep whichever block has more room left. */
    if (!c->tiny || size < c->tiny_offset) {
        uint32_t freed_idx;
        ra_span *dead = ra_tiny_retire(c, &freed_idx);
        RA_STORE(&ra_tiny_state(s)[slot], RA_TINY_HELD | bits);
        c->tiny = block;
        c->tiny_span = s;
        c->tiny_offset = size;
        if (dead) ra_free_slot(h, dead, freed_idx, c);
    } else {
        RA_STORE(&ra_tiny_state(s)[slot], bits);
    }
    return block;
}

/* `size` (<= RA_MAX_SMALL_SIZE) bytes from the cache: a tiny piece for noscan
 * sizes below 16 (Go's alignment rules), else one slot; 0 on a miss. */
static inline uintptr_t ra_malloc_small(ra_heap *h, ra_mcache *c, size_t size, int noscan,
                                        int zero) {
    if (noscan && size < RA_TINY_SIZE) return ra_malloc_tiny(h, c, size);
    uint32_t spc = ra_class_for(size, noscan);
    ra_span *s = c->alloc[spc];
    int64_t slot = ra_next_free(s);
    if (slot < 0) return 0;
    uintptr_t addr = s->base + (uintptr_t)slot * s->elemsize;
    if (zero && s->needzero) memset((void *)addr, 0, s->elemsize);
    c->nmalloc[spc >> 1]++;
    return addr;
}

#endif /* REALALLOC_SPANBITS_H */
