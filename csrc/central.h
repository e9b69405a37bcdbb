/*
 * The span hand-off between thread caches and central lists (Go:
 * mcache.refill, mcentral.cacheSpan / uncacheSpan).  Lists, the dirty stack
 * and the numbers Python sets: realalloc/core/central.py.  A central's lock
 * is taken and dropped inside one call; lock order: central, then page lock.
 */
#ifndef REALALLOC_CENTRAL_H
#define REALALLOC_CENTRAL_H

#include "pages.h"

static inline void ra_list_remove(ra_central *ce, ra_span *s) {
    if (s->prev) s->prev->next = s->next;
    else ce->list[s->list] = s->next;
    if (s->next) s->next->prev = s->prev;
    else ce->tail[s->list] = s->prev;
    ce->count[s->list]--;
    ce->empty_pages -= s->list == RA_LIST_EMPTY ? s->npages : 0;
    s->next = s->prev = NULL;
    s->list = RA_LIST_NONE;
}

/* File a swept, uncached, unlisted span by its room. */
static inline void ra_file(ra_central *ce, ra_span *s) {
    uint32_t tag = s->alloc_count == 0 ? RA_LIST_EMPTY
                 : s->alloc_count < s->nelems ? RA_LIST_PARTIAL : RA_LIST_FULL;
    /* Frees worth a sweep: a full span's first; on the other lists only the
     * last object matters (see ra_free_slot). */
    RA_STORE(&s->sweep_at, tag == RA_LIST_FULL ? 1 : RA_NEVER);
    /* At the tail: refills take the oldest partial span but the newest empty
     * one (its memory is warm), as trims do. */
    s->next = NULL;
    s->prev = ce->tail[tag];
    *(s->prev ? &s->prev->next : &ce->list[tag]) = s;
    ce->tail[tag] = s;
    s->list = (uint8_t)tag;
    ce->count[tag]++;
    ce->empty_pages += tag == RA_LIST_EMPTY ? s->npages : 0;
}

/* Sweep every span on the dirty stack and file it again. */
static inline void ra_drain(ra_central *ce, uint32_t spc) {
    ra_span *s = __atomic_exchange_n(&ce->dirty, NULL, __ATOMIC_ACQ_REL);
    while (s) {
        ra_span *after = s->next_dirty; /* read before the span can be pushed again */
        __atomic_store_n(&s->in_dirty, 0, __ATOMIC_SEQ_CST);
        if (s->list && !s->cached && s->state == RA_SPAN_IN_USE && s->spanclass == spc) {
            ra_sweep(s);
            ra_list_remove(ce, s);
            ra_file(ce, s);
        }
        s = after;
    }
}

/* Give empty spans back to the page heap, newest first, until <= keep spans of <= pages are left. */
static inline void ra_trim(ra_heap *h, ra_central *ce, uint32_t keep, uint64_t pages) {
    ra_span *s = ce->tail[RA_LIST_EMPTY];
    while (s && (ce->count[RA_LIST_EMPTY] > keep || ce->empty_pages > pages)) {
        ra_span *after = s->prev;
        if (!__atomic_load_n(&s->in_dirty, __ATOMIC_SEQ_CST)) {
            ra_list_remove(ce, s);
            ra_lock_take(&h->pages.lock);
            ra_uninstall_locked(h, s);
            ra_lock_drop(&h->pages.lock);
            ce->nreleased++;
        }
        s = after;
    }
}

/* Take a span back from a cache (Go: uncacheSpan); caller holds the central's
 * lock.  seq_cst pairs with ra_free_slot: a racing free is swept here or pushes. */
static inline void ra_uncache(ra_heap *h, ra_central *ce, ra_span *s) {
    __atomic_store_n(&s->cached, 0, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&s->nfreed, __ATOMIC_SEQ_CST)) ra_sweep(s);
    ra_file(ce, s);
    ra_trim(h, ce, ce->empty_max, ce->empty_max_pages);
}

/* Give the cache a span of class `spc` with a free slot, keeping its own if
 * frees made room (Go: mcache.refill).  RA_OK or RA_NEED_SPANS. */
static inline int ra_refill(ra_heap *h, ra_mcache *c, uint32_t spc) {
    ra_central *ce = &h->central[spc];
    ra_span *s = c->alloc[spc];
    if (s != h->empty_span) {
        if (RA_LOAD(&s->nfreed)) ra_sweep(s);
        else ra_rewind(s); /* local frees behind the scan point */
        if (s->alloc_count < s->nelems) return RA_OK; /* needzero: set by the frees */
        c->alloc[spc] = h->empty_span; /* never keep a span the cache no longer owns */
        ra_lock_take(&ce->lock);
        ra_uncache(h, ce, s);
        ra_lock_drop(&ce->lock);
    }
    ra_lock_take(&ce->lock);
    if (RA_LOAD(&ce->dirty)) ra_drain(ce, spc);
    s = ce->list[RA_LIST_PARTIAL] ? ce->list[RA_LIST_PARTIAL] : ce->tail[RA_LIST_EMPTY];
    if (!s) {
        ce->nmiss++;
        ra_lock_drop(&ce->lock);
        return RA_NEED_SPANS;
    }
    ra_list_remove(ce, s);
    __atomic_store_n(&s->cached, 1, __ATOMIC_SEQ_CST);
    if (RA_LOAD(&s->nfreed)) ra_sweep(s); /* frees that came after it was filed */
    else ra_rewind(s);
    ce->nrefill++;
    ra_lock_drop(&ce->lock);
    c->alloc[spc] = s;
    return RA_OK;
}

/* Add a cache's counters to `to` (atomics: frees by cacheless threads race). */
static inline void ra_add_counts(ra_counts *to, const ra_mcache *c) {
    for (int i = 0; i < RA_NUM_SIZE_CLASSES; i++) {
        __atomic_add_fetch(&to->nmalloc[i], c->nmalloc[i], __ATOMIC_RELAXED);
        __atomic_add_fetch(&to->nfree[i], c->nfree[i], __ATOMIC_RELAXED);
    }
    __atomic_add_fetch(&to->tiny_allocs, c->tiny_allocs, __ATOMIC_RELAXED);
    __atomic_add_fetch(&to->tiny_pieces, c->tiny_pieces, __ATOMIC_RELAXED);
    __atomic_add_fetch(&to->tiny_frees, c->tiny_frees, __ATOMIC_RELAXED);
}

/* Hand every span back, retire the tiny block (Go: mcache.releaseAll); for
 * good (the thread is gone): fold its counters into the heap's, unlink it. */
static inline void ra_release_cache(ra_heap *h, ra_mcache *c, int for_good) {
    if (c->released) return;
    uint32_t idx;
    ra_span *dead = ra_tiny_retire(c, &idx);
    if (dead) ra_free_slot(h, dead, idx, c);
    for (uint32_t spc = 0; spc < RA_NUM_SPAN_CLASSES; spc++) {
        ra_span *s = c->alloc[spc];
        if (s == h->empty_span) continue;
        c->alloc[spc] = h->empty_span;
        ra_central *ce = &h->central[spc];
        ra_lock_take(&ce->lock);
        ra_uncache(h, ce, s);
        ra_lock_drop(&ce->lock);
    }
    if (!for_good) return;
    ra_lock_take(&h->pages.lock); /* ra_counts_sum sees the counts here or there, not both */
    ra_add_counts(&h->counts, c);
    if (c->prev) c->prev->next = c->next;
    else h->caches = c->next;
    if (c->next) c->next->prev = c->prev;
    c->released = 1;
    ra_lock_drop(&h->pages.lock);
}

/* Free the large object at `addr` (Go: a large span back to the heap).  Its
 * central (class 0 or 1) keeps up to empty_max freed large spans, of up to
 * empty_max_pages pages, for a malloc of the same page count (ra_large_reuse). */
static inline int ra_free_large(ra_heap *h, uintptr_t addr) {
    ra_span *s = ra_span_at(h, addr);
    uint32_t spc = s ? s->spanclass : 2;
    if (spc >= 2) return RA_SLOW;
    ra_central *ce = &h->central[spc];
    ra_lock_take(&ce->lock);
    ra_lock_take(&h->pages.lock);
    int ok = s->state == RA_SPAN_IN_USE && s->base == addr && s->spanclass == spc && s->alloc_count;
    if (ok) ra_large_object(h, s, 0);
    ra_lock_drop(&h->pages.lock);
    if (ok) { /* room first (other kept spans go back), so this one stays if it may */
        uint64_t cap = ce->empty_max_pages, room = cap >= s->npages ? cap - s->npages : cap;
        ra_trim(h, ce, ce->empty_max - (ce->empty_max > 0), room);
        ra_file(ce, s);
        ra_trim(h, ce, ce->empty_max, cap);
    }
    ra_lock_drop(&ce->lock);
    return ok ? RA_OK : RA_SLOW;
}

/* A large object of `size` bytes in a span its class keeps (ra_free_large)
 * with the same page count, or 0: Python brings one. */
static RA_COLD __attribute__((unused)) uintptr_t ra_large_reuse(ra_heap *h, uint64_t size, int noscan, int zero) {
    uint64_t npages = (size + (1u << RA_PAGE_SHIFT) - 1) >> RA_PAGE_SHIFT;
    ra_central *ce = &h->central[noscan];
    if (!RA_LOAD(&ce->count[RA_LIST_EMPTY])) return 0;
    ra_lock_take(&ce->lock);
    ra_span *s = ce->tail[RA_LIST_EMPTY];
    while (s && s->npages != npages) s = s->prev;
    if (s) {
        ra_list_remove(ce, s);
        ra_lock_take(&h->pages.lock);
        ra_large_object(h, s, 1);
        ra_lock_drop(&h->pages.lock);
    }
    ra_lock_drop(&ce->lock);
    if (s && zero) memset((void *)s->base, 0, npages << RA_PAGE_SHIFT); /* it held an object */
    return s ? s->base : 0;
}

/* Free any object of `h` at `addr`: RA_OK, or RA_SLOW for Python to diagnose. */
static inline int ra_free(ra_heap *h, uintptr_t addr, ra_mcache *c) {
    int rc = ra_free_object(h, addr, c);
    return rc == RA_OK ? RA_OK : ra_free_large(h, addr);
}

#endif /* REALALLOC_CENTRAL_H */
