/* realalloc's cffi module: the OS calls, and the kernels exported to
 * Python's slow paths.  The contract for every function is in shim.h. */
#define _GNU_SOURCE
#include "central.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef RA_PACKAGE_VERSION
#error "build_shim.py passes RA_PACKAGE_VERSION"
#endif

#define RA_OS_PAGE ((uintptr_t)4096)

const char *ra_shim_version(void) { return RA_PACKAGE_VERSION; }

ra_heap_arena **ra_arena_l1[1 << RA_ARENA_L1_BITS];

/* ---- OS ------------------------------------------------------------------ */

/* Fault-injection state.  Atomics: tests may arm it while threads allocate. */
static int64_t fault_nfail[RA_OP_COUNT], fault_every[RA_OP_COUNT];
static int64_t fault_calls[RA_OP_COUNT], fault_hits[RA_OP_COUNT];

static int fault_fires(int op) {
    int64_t every = __atomic_load_n(&fault_every[op], __ATOMIC_RELAXED);
    int fires = (__atomic_load_n(&fault_nfail[op], __ATOMIC_RELAXED) > 0 &&
                 __atomic_sub_fetch(&fault_nfail[op], 1, __ATOMIC_RELAXED) >= 0) ||
                (every > 0 && __atomic_add_fetch(&fault_calls[op], 1, __ATOMIC_RELAXED) % every == 0);
    if (fires) __atomic_add_fetch(&fault_hits[op], 1, __ATOMIC_RELAXED);
    return fires;
}

int ra_fault_set(int op, int64_t nfail, int64_t every) {
    if (op < 0 || op >= RA_OP_COUNT || nfail < 0 || every < 0) return EINVAL;
    __atomic_store_n(&fault_nfail[op], nfail, __ATOMIC_RELAXED);
    __atomic_store_n(&fault_every[op], every, __ATOMIC_RELAXED);
    __atomic_store_n(&fault_calls[op], 0, __ATOMIC_RELAXED);
    return 0;
}

int64_t ra_fault_hits(int op) {
    if (op < 0 || op >= RA_OP_COUNT) return -1;
    return __atomic_load_n(&fault_hits[op], __ATOMIC_RELAXED);
}

static int bad_range(uintptr_t addr, size_t size) {
    return size == 0 || (addr & (RA_OS_PAGE - 1)) || (size & (RA_OS_PAGE - 1)) ||
           addr + size < addr;
}

static void count(uint64_t *field, int64_t delta) {
    __atomic_add_fetch(field, (uint64_t)delta, __ATOMIC_RELAXED);
}

int ra_reserve(size_t size, size_t align, uintptr_t *out, ra_os_stats *st) {
    if (bad_range(0, size) || align < RA_OS_PAGE || (align & (align - 1)) || size + align < size)
        return EINVAL;
    if (fault_fires(RA_OP_RESERVE)) return ENOMEM;
    /* Over-reserve by `align` and trim both ends to get an aligned base. */
    size_t span = size + align;
    void *p = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return errno;
    uintptr_t raw = (uintptr_t)p, base = (raw + align - 1) & ~(uintptr_t)(align - 1);
    if (base > raw) munmap(p, base - raw);
    if (raw + span > base + size) munmap((void *)(base + size), raw + span - (base + size));
    *out = base;
    count(&st->reserved, (int64_t)size);
    return 0;
}

int ra_map(size_t size, uintptr_t *out, ra_os_stats *st) {
    if (bad_range(0, size)) return EINVAL;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return errno;
    *out = (uintptr_t)p;
    count(&st->reserved, (int64_t)size), count(&st->ready, (int64_t)size);
    return 0;
}

int ra_commit(uintptr_t addr, size_t size, ra_os_stats *st) {
    if (bad_range(addr, size)) return EINVAL;
    if (fault_fires(RA_OP_COMMIT)) return ENOMEM;
    if (mprotect((void *)addr, size, PROT_READ | PROT_WRITE)) return errno;
    count(&st->ready, (int64_t)size);
    return 0;
}

int ra_release(uintptr_t addr, size_t size, ra_os_stats *st) {
    if (bad_range(addr, size)) return EINVAL;
    if (fault_fires(RA_OP_RELEASE)) return ENOMEM;
    if (madvise((void *)addr, size, MADV_DONTNEED)) return errno;
    count(&st->released_total, (int64_t)size);
    return 0;
}

int ra_unmap(uintptr_t addr, size_t size, int ready, ra_os_stats *st) {
    if (bad_range(addr, size)) return EINVAL;
    if (munmap((void *)addr, size)) return errno;
    count(&st->reserved, -(int64_t)size), count(&st->ready, ready ? -(int64_t)size : 0);
    return 0;
}

int ra_resident(uintptr_t addr, size_t size, size_t *out) {
    if (bad_range(addr, size)) return EINVAL;
    size_t n = size / RA_OS_PAGE, resident = 0;
    unsigned char *vec = malloc(n);
    if (!vec) return ENOMEM;
    int rc = mincore((void *)addr, size, vec) ? errno : 0;
    for (size_t i = 0; rc == 0 && i < n; i++) resident += vec[i] & 1;
    free(vec);
    if (rc == 0) *out = resident;
    return rc;
}

void ra_memzero(uintptr_t addr, size_t size) { memset((void *)addr, 0, size); }

/* ---- size classes ------------------------------------------------------- */

uint32_t ra_span_class_for(size_t size, int noscan) { return ra_class_for(size, noscan); }


/* ---- page bits ---------------------------------------------------------- */

int ra_pages_change(ra_pages *pa, ra_chunk *ch, uint32_t first, uint32_t n, int op,
                    uint32_t *scav) {
    if (!n || first + n > RA_CHUNK_PAGES || op < 0 || op > 2) return EINVAL;
    ra_lock_take(&pa->lock);
    int ok = ra_bits_all(ch->alloc, first, n, op == RA_PAGES_GIVE);
    if (ok && op == RA_PAGES_TAKE) *scav = ra_chunk_take(pa, ch, first, n);
    if (ok && op == RA_PAGES_GIVE) ra_chunk_give(pa, ch, first, n);
    for (uint32_t w = first >> 6; ok && op == RA_PAGES_SCAVENGED && w <= (first + n - 1) >> 6; w++) {
        uint64_t m = ra_word_mask(w, first, first + n);
        pa->scavenged += (uint64_t)__builtin_popcountll(m & ~ch->scav[w]);
        ch->scav[w] |= m;
    }
    ra_lock_drop(&pa->lock);
    return ok ? RA_OK : RA_NOT_FREE;
}

void ra_pages_grow(ra_pages *pa, ra_chunk *ch, uint64_t index) {
    ra_lock_take(&pa->lock);
    memset(ch->alloc, 0, sizeof ch->alloc);
    memset(ch->scav, 0xff, sizeof ch->scav); /* fresh pages read as zero */
    ch->index = index;
    pa->total += RA_CHUNK_PAGES;
    pa->free += RA_CHUNK_PAGES;
    pa->scavenged += RA_CHUNK_PAGES;
    if ((uintptr_t)index << RA_CHUNK_SHIFT < pa->search_addr)
        pa->search_addr = (uintptr_t)index << RA_CHUNK_SHIFT;
    ra_mark_dirty(pa, ch);
    ra_lock_drop(&pa->lock);
}

ra_chunk *ra_pages_sync_step(ra_pages *pa, int done) {
    ra_lock_take(&pa->lock);
    if (done) pa->syncing = NULL;
    ra_chunk *ch = pa->syncing;
    if (!ch && (ch = pa->dirty)) {
        pa->dirty = ch->next_dirty;
        ch->in_dirty = 0; /* a change from now on pushes it again */
        pa->syncing = ch;
    }
    ra_lock_drop(&pa->lock);
    return ch;
}

void ra_pages_raise_search(ra_pages *pa, uintptr_t addr, uint64_t frees_seen) {
    ra_lock_take(&pa->lock);
    if (pa->frees == frees_seen && addr > pa->search_addr) pa->search_addr = addr;
    ra_lock_drop(&pa->lock);
}

void ra_pages_snapshot(ra_pages *pa, ra_chunk **chunks, uint32_t n, uint64_t *out) {
    ra_lock_take(&pa->lock);
    for (uint32_t i = 0; i < n; i++, out += 17) {
        memcpy(out, chunks[i]->alloc, 8 * sizeof(uint64_t));
        memcpy(out + 8, chunks[i]->scav, 8 * sizeof(uint64_t));
        out[16] = chunks[i]->in_dirty || chunks[i] == pa->syncing;
    }
    out[0] = pa->total, out[1] = pa->free, out[2] = pa->scavenged, out[3] = pa->search_addr;
    ra_lock_drop(&pa->lock);
}

/* ---- span records ------------------------------------------------------- */

void ra_pool_add_slab(ra_heap *h, ra_pool *p, uint32_t slab) {
    ra_lock_take(&h->pages.lock);
    uintptr_t first = p->base + (uintptr_t)slab * p->slab_bytes;
    ra_span *head = NULL;
    for (uint32_t i = p->per_slab; i-- > 0;) {
        ra_span *s = (ra_span *)(first + (uintptr_t)i * p->stride);
        s->id = p->index << 24 | (slab * p->per_slab + i);
        s->pool = (uint8_t)p->index;
        s->state = RA_SPAN_FREE;
        s->next = head;
        head = s;
    }
    p->slab_free[slab] = head;
    p->slab_live[slab] = 0;
    p->slab_state[slab] = RA_SLAB_ACTIVE;
    p->nfree += p->per_slab;
    if (slab < p->lowest) p->lowest = slab;
    ra_lock_drop(&h->pages.lock);
}

int ra_pool_drop_slab(ra_heap *h, ra_pool *p, uint32_t slab) {
    ra_lock_take(&h->pages.lock);
    int dropped = p->slab_state[slab] == RA_SLAB_ACTIVE && p->slab_live[slab] == 0;
    if (dropped) {
        p->slab_free[slab] = NULL;
        p->nfree -= p->per_slab;
        p->slab_state[slab] = RA_SLAB_DROPPED;
    }
    ra_lock_drop(&h->pages.lock);
    return dropped;
}

/* ---- spans in the heap -------------------------------------------------- */

int ra_span_install(ra_heap *h, uintptr_t base, uint32_t npages, uint32_t spanclass,
                    uint32_t state, ra_span **out) {
    ra_lock_take(&h->pages.lock);
    int rc = ra_install_locked(h, base, npages, spanclass, state, out);
    ra_lock_drop(&h->pages.lock);
    return rc;
}

int ra_span_uninstall(ra_heap *h, ra_span *s, uint32_t state, uintptr_t base) {
    ra_lock_take(&h->pages.lock);
    int ok = s->state == state && s->base == base && !s->cached && !s->list;
    if (ok) ra_uninstall_locked(h, s);
    ra_lock_drop(&h->pages.lock);
    return ok ? RA_OK : RA_SLOW;
}

int ra_central_grow(ra_heap *h, uint32_t spc, uintptr_t base, uint32_t nspans) {
    ra_central *ce = &h->central[spc];
    uint32_t npages = ra_class_to_npages[spc >> 1], n = 0;
    ra_lock_take(&ce->lock);
    ra_lock_take(&h->pages.lock);
    /* From the top down, so the lowest span ends up first on the list. */
    for (ra_span *s; n < nspans; n++) {
        uintptr_t at = base + ((uintptr_t)(nspans - 1 - n) * npages << RA_PAGE_SHIFT);
        if (ra_install_locked(h, at, npages, spc, RA_SPAN_IN_USE, &s) != RA_OK) break;
        ra_file(ce, s);
    }
    ra_lock_drop(&h->pages.lock);
    ra_lock_drop(&ce->lock);
    return (int)n;
}

void ra_counts_sum(ra_heap *h, ra_counts *out, uint32_t *ncaches) {
    uint32_t n = 0;
    ra_lock_take(&h->pages.lock);
    *out = h->counts;
    for (ra_mcache *c = h->caches; c; c = c->next, n++) ra_add_counts(out, c);
    ra_lock_drop(&h->pages.lock);
    *ncaches = n;
}

/* ---- objects ------------------------------------------------------------ */


int ra_heap_free(ra_heap *h, uintptr_t addr, ra_mcache *c) { return ra_free(h, addr, c); }

size_t ra_usable_size(ra_heap *h, uintptr_t addr) { return ra_usable(h, addr); }

void ra_cache_init(ra_heap *h, ra_mcache *c) {
    for (int spc = 0; spc < RA_NUM_SPAN_CLASSES; spc++) c->alloc[spc] = h->empty_span;
    ra_lock_take(&h->pages.lock);
    c->prev = NULL;
    c->next = h->caches;
    if (h->caches) h->caches->prev = c;
    h->caches = c;
    ra_lock_drop(&h->pages.lock);
}

void ra_cache_release(ra_heap *h, ra_mcache *c, int for_good) { ra_release_cache(h, c, for_good); }

void ra_central_reclaim(ra_heap *h, uint32_t spc) {
    ra_central *ce = &h->central[spc];
    ra_lock_take(&ce->lock);
    ra_drain(ce, spc);
    ra_trim(h, ce, 0, 0);
    ra_lock_drop(&ce->lock);
}

