/*
 * Page-level mechanics: chunk page bits, span records, and a span appearing
 * in or leaving the heap in one step (pages taken, record live, pages mapped
 * to it, under the page lock).  Python's side: realalloc/core/pagealloc.py
 * (summaries, refreshed from the dirty stack), fixalloc.py, mheap.py.
 */
#ifndef REALALLOC_PAGES_H
#define REALALLOC_PAGES_H

#include "spanbits.h"

#define RA_CHUNK_PAGES (1u << RA_LOG_PAGES_PER_CHUNK)
#define RA_CHUNK_SHIFT (RA_PAGE_SHIFT + RA_LOG_PAGES_PER_CHUNK)

static inline void ra_lock_take(ra_lock *l) {
    while (__atomic_exchange_n(&l->held, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&l->held, __ATOMIC_RELAXED)) __builtin_ia32_pause();
}

static inline void ra_lock_drop(ra_lock *l) { __atomic_store_n(&l->held, 0, __ATOMIC_RELEASE); }

/* ---- page bits of one chunk (caller holds the page lock) ---------------- */

/* Bits of word w that fall in pages [lo, hi) of the chunk. */
static inline uint64_t ra_word_mask(uint32_t w, uint32_t lo, uint32_t hi) {
    uint32_t a = w * 64, b = a + 64;
    if (lo > a) a = lo;
    if (hi < b) b = hi;
    if (a >= b) return 0;
    uint64_t run = b - a == 64 ? ~0ull : (1ull << (b - a)) - 1;
    return run << (a - w * 64);
}

/* Whether pages [first, first+n) of `bits` are all set (want 1) or all clear. */
static inline int ra_bits_all(const uint64_t *bits, uint32_t first, uint32_t n, int want) {
    for (uint32_t w = first >> 6; w <= (first + n - 1) >> 6; w++) {
        uint64_t m = ra_word_mask(w, first, first + n);
        if ((bits[w] & m) != (want ? m : 0)) return 0;
    }
    return 1;
}

static inline void ra_mark_dirty(ra_pages *pa, ra_chunk *ch) {
    if (!ch->in_dirty) {
        ch->in_dirty = 1;
        ch->next_dirty = pa->dirty;
        pa->dirty = ch;
    }
}

/* Allocate free pages [first, first+n) of a chunk; returns how many of them
 * were scavenged (they read as zero). */
static inline uint32_t ra_chunk_take(ra_pages *pa, ra_chunk *ch, uint32_t first, uint32_t n) {
    uint32_t scav = 0;
    for (uint32_t w = first >> 6; w <= (first + n - 1) >> 6; w++) {
        uint64_t m = ra_word_mask(w, first, first + n);
        scav += (uint32_t)__builtin_popcountll(ch->scav[w] & m);
        ch->scav[w] &= ~m;
        ch->alloc[w] |= m;
    }
    pa->free -= n;
    pa->scavenged -= scav;
    ra_mark_dirty(pa, ch);
    return scav;
}

/* Free allocated pages [first, first+n) of a chunk. */
static inline void ra_chunk_give(ra_pages *pa, ra_chunk *ch, uint32_t first, uint32_t n) {
    for (uint32_t w = first >> 6; w <= (first + n - 1) >> 6; w++)
        ch->alloc[w] &= ~ra_word_mask(w, first, first + n);
    uintptr_t addr = ((uintptr_t)ch->index << RA_CHUNK_SHIFT) + ((uintptr_t)first << RA_PAGE_SHIFT);
    if (addr < pa->search_addr) pa->search_addr = addr;
    pa->free += n;
    pa->frees++;
    ra_mark_dirty(pa, ch);
}

/* ---- span records (caller holds the page lock) ------------------------- */

static inline ra_span *ra_pool_take(ra_pool *p) {
    if (!p->nfree) return NULL;
    while (!p->slab_free[p->lowest]) p->lowest++; /* a free record exists at or above it */
    ra_span *s = p->slab_free[p->lowest];
    p->slab_free[p->lowest] = s->next;
    p->slab_live[p->lowest]++;
    p->nfree--;
    return s;
}

static inline void ra_pool_put(ra_pool *p, ra_span *s) {
    uint32_t slab = (uint32_t)(((uintptr_t)s - p->base) / p->slab_bytes);
    s->state = RA_SPAN_FREE;
    s->next = p->slab_free[slab];
    p->slab_free[slab] = s;
    p->slab_live[slab]--;
    p->nfree++;
    if (slab < p->lowest) p->lowest = slab;
}

/* ---- spans in the heap (caller holds the page lock) -------------------- */

/* Walk the pages [base, base + npages) chunk by chunk, across arenas.
 * RA_RANGE_FREE: 1 if all are free in `h`'s arenas, else 0.  RA_RANGE_TAKE:
 * allocate them, map them to `s` (its first page's in-use bit), return how
 * many were scavenged.  RA_RANGE_GIVE: unmap and free them. */
#define RA_RANGE_FREE 0
#define RA_RANGE_TAKE 1
#define RA_RANGE_GIVE 2
static inline int64_t ra_range(ra_heap *h, uintptr_t base, uint32_t npages, int op, ra_span *s) {
    uintptr_t addr = base, end = base + ((uintptr_t)npages << RA_PAGE_SHIFT);
    int64_t result = op == RA_RANGE_FREE;
    while (addr < end) {
        ra_heap_arena *a = NULL;
        ra_heap_arena **l2 = h->arena_index[addr >> (RA_ARENA_SHIFT + RA_ARENA_L2_BITS)];
        if (l2) a = l2[(addr >> RA_ARENA_SHIFT) & ((1u << RA_ARENA_L2_BITS) - 1)];
        if (!a || a->heap_id != h->id) return op == RA_RANGE_FREE ? 0 : -1;
        ra_chunk *ch = &a->chunks[(addr >> RA_CHUNK_SHIFT) & (RA_CHUNKS_PER_ARENA - 1)];
        uint32_t first = (uint32_t)(addr >> RA_PAGE_SHIFT) & (RA_CHUNK_PAGES - 1);
        uint32_t page = (uint32_t)((addr - a->base) >> RA_PAGE_SHIFT), n = RA_CHUNK_PAGES - first;
        if (addr + ((uintptr_t)n << RA_PAGE_SHIFT) > end) n = (uint32_t)((end - addr) >> RA_PAGE_SHIFT);
        addr += (uintptr_t)n << RA_PAGE_SHIFT;
        if (op == RA_RANGE_FREE) {
            if (!ra_bits_all(ch->alloc, first, n, 0)) return 0;
            continue;
        }
        ra_span *target = op == RA_RANGE_TAKE ? s : NULL;
        for (uint32_t i = 0; i < n; i++) RA_STORE(&a->spans[page + i], target);
        a->live_pages = target ? a->live_pages + n : a->live_pages - n;
        if (target) a->maps_released = 0;
        if (page << RA_PAGE_SHIFT == s->base - a->base && s->state == RA_SPAN_IN_USE)
            a->page_in_use[page >> 6] ^= 1ull << (page & 63); /* set on take, cleared on give */
        if (target) result += ra_chunk_take(&h->pages, ch, first, n);
        else ra_chunk_give(&h->pages, ch, first, n);
    }
    return result;
}

/* The large object of span `s` comes (1) or goes (0): its bit and counters. */
static inline void ra_large_object(ra_heap *h, ra_span *s, int comes) {
    uint64_t bytes = (uint64_t)s->npages << RA_PAGE_SHIFT;
    s->bits[0] = (s->bits[0] & ~1ull) | (uint64_t)comes;
    s->alloc_count = (uint32_t)comes;
    if (comes) h->counts.large_allocs++, h->counts.large_bytes += bytes;
    else h->counts.large_frees++, h->counts.large_freed_bytes += bytes;
    if (!comes) h->freed_large[h->freed_large_next++ & 63] = s->base;
}

static inline int ra_install_locked(ra_heap *h, uintptr_t base, uint32_t npages, uint32_t spc,
                             uint32_t state, ra_span **out) {
    ra_pool *p = &h->pools[h->pool_of[spc]];
    if (!p->nfree) return RA_NO_RECORD;
    if (!ra_range(h, base, npages, RA_RANGE_FREE, NULL)) return RA_NOT_FREE;
    ra_span *s = ra_pool_take(p);
    uint32_t sc = spc >> 1, small = sc && state == RA_SPAN_IN_USE;
    s->base = base;
    s->npages = npages;
    s->spanclass = (uint8_t)spc;
    s->state = (uint8_t)state;
    s->elemsize = small ? ra_class_to_size[sc] : 0;
    s->nelems = small ? (npages << RA_PAGE_SHIFT) / s->elemsize : 1;
    s->next = s->prev = s->next_dirty = NULL;
    s->nfreed = 0;
    s->sweep_at = RA_NEVER;
    s->cached = s->in_dirty = s->list = 0;
    uint32_t nwords = ra_nwords(s);
    memset(s->bits, 0, 16 * nwords + (p->tiny ? 4 * s->nelems : 0));
    if (s->nelems & 63) s->bits[nwords - 1] = ~0ull << (s->nelems & 63); /* padding: never free */
    s->bits[0] |= small ? 0 : 1; /* a large or manual span is its one object */
    s->alloc_count = small ? 0 : 1;
    ra_rewind(s);
    s->needzero = ra_range(h, base, npages, RA_RANGE_TAKE, s) < npages; /* scavenged read as 0 */
    if (state == RA_SPAN_IN_USE) h->counts.inuse_pages += npages;
    else h->counts.manual_pages += npages;
    if (!sc && state == RA_SPAN_IN_USE) ra_large_object(h, s, 1);
    *out = s;
    return RA_OK;
}

static inline void ra_uninstall_locked(ra_heap *h, ra_span *s) {
    ra_range(h, s->base, s->npages, RA_RANGE_GIVE, s);
    if (s->state == RA_SPAN_IN_USE) h->counts.inuse_pages -= s->npages;
    else h->counts.manual_pages -= s->npages;
    /* A large span kept on its central's empty list counted its object out already. */
    if (s->spanclass < 2 && s->state == RA_SPAN_IN_USE && s->alloc_count) ra_large_object(h, s, 0);
    ra_pool_put(&h->pools[s->pool], s);
}

#endif /* REALALLOC_PAGES_H */
