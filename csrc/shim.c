/* realalloc OS shim. The contract for every function is in shim.h. */
#define _GNU_SOURCE
#include "shim.h"
#include "spanbits.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef RA_PACKAGE_VERSION
#error "build_shim.py passes RA_PACKAGE_VERSION"
#endif

#define RA_OS_PAGE ((uintptr_t)4096)

const char *ra_shim_version(void) { return RA_PACKAGE_VERSION; }

ra_heap_arena **ra_arena_l1[64];

/* Fault-injection state.  Atomics: tests may arm it while threads allocate. */
static int64_t fault_nfail[RA_OP_COUNT];
static int64_t fault_every[RA_OP_COUNT];
static int64_t fault_calls[RA_OP_COUNT];
static int64_t fault_hits[RA_OP_COUNT];

static int fault_fires(int op) {
    if (__atomic_load_n(&fault_nfail[op], __ATOMIC_RELAXED) > 0 &&
        __atomic_sub_fetch(&fault_nfail[op], 1, __ATOMIC_RELAXED) >= 0) {
        __atomic_add_fetch(&fault_hits[op], 1, __ATOMIC_RELAXED);
        return 1;
    }
    int64_t every = __atomic_load_n(&fault_every[op], __ATOMIC_RELAXED);
    if (every > 0 && __atomic_add_fetch(&fault_calls[op], 1, __ATOMIC_RELAXED) % every == 0) {
        __atomic_add_fetch(&fault_hits[op], 1, __ATOMIC_RELAXED);
        return 1;
    }
    return 0;
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

int ra_reserve(size_t size, size_t align, uintptr_t *out) {
    if (bad_range(0, size) || align < RA_OS_PAGE || (align & (align - 1)) ||
        size + align < size)
        return EINVAL;
    if (fault_fires(RA_OP_RESERVE)) return ENOMEM;
    /* Over-reserve by `align` and trim both ends to get an aligned base. */
    size_t span = size + align;
    void *p = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return errno;
    uintptr_t raw = (uintptr_t)p;
    uintptr_t base = (raw + align - 1) & ~(uintptr_t)(align - 1);
    if (base > raw) munmap(p, base - raw);
    uintptr_t tail = raw + span - (base + size);
    if (tail > 0) munmap((void *)(base + size), tail);
    *out = base;
    return 0;
}

int ra_map(size_t size, uintptr_t *out) {
    if (bad_range(0, size)) return EINVAL;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return errno;
    *out = (uintptr_t)p;
    return 0;
}

int ra_commit(uintptr_t addr, size_t size) {
    if (bad_range(addr, size)) return EINVAL;
    if (fault_fires(RA_OP_COMMIT)) return ENOMEM;
    return mprotect((void *)addr, size, PROT_READ | PROT_WRITE) ? errno : 0;
}

int ra_release(uintptr_t addr, size_t size) {
    if (bad_range(addr, size)) return EINVAL;
    if (fault_fires(RA_OP_RELEASE)) return ENOMEM;
    return madvise((void *)addr, size, MADV_DONTNEED) ? errno : 0;
}

int ra_unmap(uintptr_t addr, size_t size) {
    if (bad_range(addr, size)) return EINVAL;
    return munmap((void *)addr, size) ? errno : 0;
}

int ra_resident(uintptr_t addr, size_t size, size_t *out) {
    if (bad_range(addr, size)) return EINVAL;
    size_t n = size / RA_OS_PAGE;
    unsigned char *vec = malloc(n);
    if (!vec) return ENOMEM;
    int rc = mincore((void *)addr, size, vec) ? errno : 0;
    size_t count = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) count += vec[i] & 1;
    free(vec);
    if (rc == 0) *out = count;
    return rc;
}

void ra_memzero(uintptr_t addr, size_t size) { memset((void *)addr, 0, size); }

uint32_t ra_span_sweep(ra_span *s) {
    ra_sweep(s);
    return s->nelems - s->alloc_count;
}

int ra_span_free_slot(ra_heap *h, ra_span *s, uint32_t idx, ra_mcache *c) {
    return ra_free_slot(h, s, idx, c);
}

uintptr_t ra_cache_malloc(ra_heap *h, ra_mcache *c, size_t size, int noscan, int zero) {
    return ra_malloc_small(h, c, size, noscan, zero);
}

uint32_t ra_heap_span_class_for(ra_heap *h, size_t size, int noscan) {
    return ra_span_class_for(h, size, noscan);
}

int ra_cache_free(ra_heap *h, uintptr_t addr, ra_mcache *c, ra_span **span_out) {
    return ra_free_object(h, (ra_heap_arena **const *)ra_arena_l1, addr, c, span_out);
}

ra_span *ra_cache_tiny_retire(ra_mcache *c, uint32_t *idx_out) { return ra_tiny_retire(c, idx_out); }

uint32_t ra_span_uncache(ra_span *s) {
    if (ra_uncache(s)) ra_sweep(s);
    return s->nelems - s->alloc_count;
}

ra_span *ra_heap_take_dirty(ra_heap *h, uint32_t spc) { return ra_take_dirty(h, spc); }

uint32_t ra_span_sweep_dirty(ra_span *s, uint32_t spc) {
    ra_clear_dirty(s);
    if (s->cached || s->state != RA_SPAN_IN_USE || s->spanclass != spc) return RA_NOT_SWEPT;
    ra_sweep(s);
    return s->nelems - s->alloc_count;
}
