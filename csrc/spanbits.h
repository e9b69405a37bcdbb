/*
 * Per-object kernels over span metadata: the allocation fast path, free,
 * and sweep.  See realalloc/__init__.py for the overview and csrc/shim.h for
 * the structs and which thread may write which field.
 *
 * FAST PATH: no locks, no policy.  Every function here either finishes the
 * job on metadata alone or reports a miss; refilling, sweeping policy, large
 * objects and every error message belong to Python.
 *
 * Included (all functions static inline) by shim.c, which exports them to
 * Python through cffi, and by fastpath.c, the CPython entry points, so both
 * run exactly the same code.
 *
 * Slot states of a span (Go: allocBits + freeindex + gcmarkBits):
 *   allocated   slot < free_index, or alloc_bits[slot] == 1
 *   pending     allocated and free_bits[slot] == 1 (freed, not yet swept)
 *   free        otherwise
 * A sweep (span not cached, central lock held) turns pending slots free.
 */
#ifndef REALALLOC_SPANBITS_H
#define REALALLOC_SPANBITS_H

#include <string.h>

#include "shim.h"

#define RA_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define RA_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* Next free slot of a span, or -1 when it is full (Go: nextFreeFast +
 * nextFreeIndex).  Caller owns the span.  alloc_cache bit k <=> slot
 * free_index + k is free; padding bits of alloc_bits are set, so the scan
 * never yields a slot >= nelems. */
static inline int64_t ra_next_free(ra_span *s) {
    uint32_t idx = s->free_index;
    if (idx >= s->nelems) return -1; /* full, or the empty placeholder span */
    for (;;) {
        uint64_t cache = s->alloc_cache;
        if (cache) {
            uint32_t slot = idx + (uint32_t)__builtin_ctzll(cache);
            uint32_t next = slot + 1;
            RA_STORE(&s->free_index, next);
            s->alloc_cache = (next & 63) ? cache >> (slot - idx + 1)
                           : next < s->nelems ? ~s->alloc_bits[next >> 6] : 0;
            s->alloc_count++;
            return slot;
        }
        idx = (idx + 64) & ~63u;
        if (idx >= s->nelems) {
            RA_STORE(&s->free_index, s->nelems);
            return -1;
        }
        RA_STORE(&s->free_index, idx);
        s->alloc_cache = ~s->alloc_bits[idx >> 6];
    }
}

/* Apply pending frees (Go: sweep).  Caller holds the span class's central
 * lock and the span is not cached.  Returns the slots freed. */
static inline uint32_t ra_sweep(ra_span *s) {
    uint32_t nwords = (s->nelems + 63) >> 6, freed = 0, taken = 0;
    /* Fold handed-out slots into alloc_bits before free_index drops, so a
     * concurrent free always sees its object as allocated. */
    uint32_t top = s->free_index;
    for (uint32_t w = 0; w < (top >> 6); w++) RA_STORE(&s->alloc_bits[w], ~(uint64_t)0);
    if (top & 63) RA_STORE(&s->alloc_bits[top >> 6], s->alloc_bits[top >> 6] | ((1ull << (top & 63)) - 1));
    RA_STORE(&s->free_index, 0);
    for (uint32_t w = 0; w < nwords; w++) {
        uint64_t pending = __atomic_exchange_n(&s->free_bits[w], 0, __ATOMIC_ACQ_REL);
        taken += (uint32_t)__builtin_popcountll(pending);
        pending &= s->alloc_bits[w];
        RA_STORE(&s->alloc_bits[w], s->alloc_bits[w] & ~pending);
        freed += (uint32_t)__builtin_popcountll(pending);
    }
    __atomic_sub_fetch(&s->nfreed, taken, __ATOMIC_ACQ_REL);
    s->alloc_count -= freed;
    s->alloc_cache = ~s->alloc_bits[0];
    if (freed) s->needzero = 1;
    return freed;
}

/* Mark slot `idx` of `s` pending-free.  Returns RA_FREE_*. */
static inline int ra_free_slot(ra_heap *h, ra_span *s, uint32_t idx, ra_mcache *c) {
    uint64_t bit = 1ull << (idx & 63);
    if (__atomic_fetch_or(&s->free_bits[idx >> 6], bit, __ATOMIC_ACQ_REL) & bit)
        return RA_FREE_SLOW; /* already pending: a double free */
    if (c) c->nfree[s->spanclass >> 1]++;
    else __atomic_add_fetch(&h->orphan_nfree[s->spanclass >> 1], 1, __ATOMIC_RELAXED);
    uint32_t pending = __atomic_add_fetch(&s->nfreed, 1, __ATOMIC_SEQ_CST);
    /* Pairs with the seq_cst store of cached = 0 in ra_uncache: either this
     * free sees the span uncached, or the uncacher sees nfreed > 0. */
    if (__atomic_load_n(&s->cached, __ATOMIC_SEQ_CST)) return RA_FREE_OK;
    /* Worth a sweep only once enough frees piled up (Python's threshold), or
     * when the span holds no live object any more. */
    if (pending < RA_LOAD(&s->sweep_at) && pending != RA_LOAD(&s->alloc_count)) return RA_FREE_OK;
    uint8_t no = 0;
    if (__atomic_compare_exchange_n(&s->in_dirty, &no, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        ra_span **head = &h->dirty[s->spanclass];
        ra_span *old = __atomic_load_n(head, __ATOMIC_ACQUIRE);
        do s->next_dirty = old;
        while (!__atomic_compare_exchange_n(head, &old, s, 1, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
    }
    return RA_FREE_OK;
}

/* The span holding `addr` if it is an IN_USE small-object span of heap `h`,
 * else NULL (Go: spanOf + the checks of findObject). */
static inline ra_span *ra_small_span_of(ra_heap *h, ra_heap_arena **const *l1, uintptr_t addr) {
    if (addr >> 48) return NULL;
    uintptr_t n = addr >> RA_ARENA_SHIFT;
    ra_heap_arena **l2 = RA_LOAD((ra_heap_arena ***)&l1[n >> RA_ARENA_L2_BITS]);
    if (!l2) return NULL;
    ra_heap_arena *a = RA_LOAD(&l2[n & ((1u << RA_ARENA_L2_BITS) - 1)]);
    if (!a || a->heap_id != h->id) return NULL;
    ra_span *s = RA_LOAD(&a->spans[(addr - a->base) >> RA_PAGE_SHIFT]);
    if (!s || s->state != RA_SPAN_IN_USE || s->spanclass < 2 || !s->alloc_bits) return NULL;
    return s;
}

/* End bit of the tiny piece starting at byte `off` in state word `st`. */
static inline uint32_t ra_tiny_end_bit(uint32_t st, uint32_t off) {
    uint32_t ends = ((st >> 16) & 0x7fff) >> off;
    return ends ? 1u << (16 + off + (uint32_t)__builtin_ctz(ends)) : 0;
}

/* Free the small object or tiny piece at `addr`.  `c` is the calling
 * thread's cache for `h` or NULL (it only receives the statistics). */
static inline int ra_free_object(ra_heap *h, ra_heap_arena **const *l1, uintptr_t addr,
                                 ra_mcache *c, ra_span **span_out) {
    ra_span *s = ra_small_span_of(h, l1, addr);
    if (!s) return RA_FREE_SLOW;
    uintptr_t off = addr - s->base;
    uint32_t idx = (uint32_t)((off * s->div_magic) >> 32);
    uint32_t inner = (uint32_t)(off - (uintptr_t)idx * s->elemsize);
    if (idx >= s->nelems) return RA_FREE_SLOW;
    if (!(idx < RA_LOAD(&s->free_index) || (RA_LOAD(&s->alloc_bits[idx >> 6]) >> (idx & 63) & 1)))
        return RA_FREE_SLOW; /* not allocated */
    *span_out = s;
    uint32_t st = s->tiny_state ? RA_LOAD(&s->tiny_state[idx]) : 0;
    if (st) {
        uint32_t start = 1u << inner;
        if (!(st & start)) return RA_FREE_SLOW;
        uint32_t clear = start | ra_tiny_end_bit(st, inner);
        uint32_t old = __atomic_fetch_and(&s->tiny_state[idx], ~clear, __ATOMIC_ACQ_REL);
        if (!(old & start)) return RA_FREE_SLOW; /* lost a race with another free of it */
        if (c) c->tiny_frees++;
        else __atomic_add_fetch(&h->orphan_tiny_frees, 1, __ATOMIC_RELAXED);
        if (old & ~clear) return RA_FREE_OK; /* the block still has pieces or is held */
    } else if (inner) {
        return RA_FREE_SLOW; /* interior pointer */
    }
    return ra_free_slot(h, s, idx, c);
}

/* Uncache a span (caller holds its central lock) and return its pending
 * frees as seen after the store: with the seq_cst pair in ra_free_slot, a
 * racing free either sees cached == 0 and pushes the span on the dirty stack,
 * or is counted here. */
static inline uint32_t ra_uncache(ra_span *s) {
    __atomic_store_n(&s->cached, 0, __ATOMIC_SEQ_CST);
    return __atomic_load_n(&s->nfreed, __ATOMIC_SEQ_CST);
}

/* Take the whole dirty stack of span class `spc` (single consumer: the
 * caller holds that central lock).  Walk it through next_dirty, reading each
 * link before ra_clear_dirty lets the span be pushed again. */
static inline ra_span *ra_take_dirty(ra_heap *h, uint32_t spc) {
    return __atomic_exchange_n(&h->dirty[spc], NULL, __ATOMIC_ACQ_REL);
}

static inline void ra_clear_dirty(ra_span *s) { __atomic_store_n(&s->in_dirty, 0, __ATOMIC_SEQ_CST); }

/* The span class a small request of `size` bytes needs from the cache. */
static inline uint32_t ra_span_class_for(const ra_heap *h, size_t size, int noscan) {
    if (noscan && size < RA_TINY_SIZE) return RA_TINY_SPAN_CLASS;
    uint32_t sc = size <= 1024 ? h->size_to_class8[(size + 7) >> 3]
                               : h->size_to_class128[(size - 1024 + 127) >> 7];
    return (sc ? sc : 1) << 1 | (noscan ? 1u : 0u); /* size 0 takes the smallest class */
}

/* A zeroed-if-asked slot of span class `spc` from the cache, or 0 on a miss. */
static inline uintptr_t ra_cache_slot(ra_mcache *c, uint32_t spc, int zero) {
    ra_span *s = c->alloc[spc];
    int64_t slot = ra_next_free(s);
    if (slot < 0) return 0;
    uintptr_t addr = s->base + (uintptr_t)slot * s->elemsize;
    if (zero && s->needzero) memset((void *)addr, 0, s->elemsize);
    c->nmalloc[spc >> 1]++;
    return addr;
}

/* Give up the cache's tiny block (Go has no such step: it never frees).
 * Returns the block's span when the block has no pieces left and must be
 * freed as a slot, else NULL. */
static inline ra_span *ra_tiny_retire(ra_mcache *c, uint32_t *idx_out) {
    ra_span *s = c->tiny_span;
    if (!c->tiny) return NULL;
    uint32_t idx = (uint32_t)(((c->tiny - s->base) * s->div_magic) >> 32);
    c->tiny = 0;
    c->tiny_span = NULL;
    uint32_t left = __atomic_and_fetch(&s->tiny_state[idx], ~(uint32_t)RA_TINY_HELD, __ATOMIC_ACQ_REL);
    *idx_out = idx;
    return left ? NULL : s;
}

/* Allocate `size` bytes (size <= RA_MAX_SMALL_SIZE) from the cache: tiny
 * pieces for noscan sizes below 16 (Go's alignment rules), else one slot.
 * Returns 0 on a miss: the span the request needs is full.  Python refills
 * it and calls again. */
static inline uintptr_t ra_malloc_small(ra_heap *h, ra_mcache *c, size_t size, int noscan, int zero) {
    if (noscan && size < RA_TINY_SIZE) {
        uintptr_t off = c->tiny_offset;
        off = (size & 7) == 0 ? (off + 7) & ~7u : (size & 3) == 0 ? (off + 3) & ~3u
            : (size & 1) == 0 ? (off + 1) & ~1u : off;
        if (size == 0) size = 1; /* 8-aligned like Go's rule says; one byte keeps it unique */
        uint32_t end = (uint32_t)size - 1;
        if (c->tiny && off + size <= RA_TINY_SIZE) {
            ra_span *s = c->tiny_span;
            uint32_t idx = (uint32_t)(((c->tiny - s->base) * s->div_magic) >> 32);
            end += (uint32_t)off;
            uint32_t bits = (1u << off) | (end < 15 ? 1u << (16 + end) : 0);
            __atomic_or_fetch(&s->tiny_state[idx], bits, __ATOMIC_ACQ_REL);
            c->tiny_offset = off + size;
            c->tiny_allocs++;
            c->tiny_pieces++;
            return c->tiny + off;
        }
        /* A new block, zeroed always so every piece of it reads as zero. */
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
            RA_STORE(&s->tiny_state[slot], RA_TINY_HELD | bits);
            c->tiny = block;
            c->tiny_span = s;
            c->tiny_offset = size;
            if (dead) ra_free_slot(h, dead, freed_idx, c);
        } else {
            RA_STORE(&s->tiny_state[slot], bits);
        }
        return block;
    }
    return ra_cache_slot(c, ra_span_class_for(h, size, noscan), zero);
}

#endif /* REALALLOC_SPANBITS_H */
