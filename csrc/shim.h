/*
 * realalloc's C interface, the one declaration of what C and Python share:
 * C includes it and build_shim.py feeds the CDEF part to cffi.  The rules
 * (C keeps no policy; each call does all of its job or nothing, never
 * raising or calling Python; multi-step changes are one call; locks are held
 * only inside one call) are in realalloc/__init__.py; OS region states and
 * fault injection in realalloc/core/osmem.py.
 */
#ifndef REALALLOC_SHIM_H
#define REALALLOC_SHIM_H

#include <stddef.h>
#include <stdint.h>

#include "sizeclasses.h"

/* CDEF BEGIN: everything up to CDEF END is also the cffi cdef. */

#define RA_OP_RESERVE 0
#define RA_OP_COMMIT 1
#define RA_OP_RELEASE 2
#define RA_OP_COUNT 3

#define RA_MAX_HEAPS 256  /* heaps open at once in one process (thread-local slots) */
#define RA_MAX_POOLS 24   /* span record pools of a heap (one per record shape) */

/* Span states (Go: mSpanState). */
#define RA_SPAN_FREE 0
#define RA_SPAN_IN_USE 1
#define RA_SPAN_MANUAL 2

/* Central list a span is on (ra_span.list). */
#define RA_LIST_NONE 0
#define RA_LIST_PARTIAL 1
#define RA_LIST_FULL 2
#define RA_LIST_EMPTY 3

/* Pool slab states (ra_pool.slab_state). */
#define RA_SLAB_UNUSED 0   /* never handed to C */
#define RA_SLAB_ACTIVE 1   /* its records are live or on the slab's free list */
#define RA_SLAB_DROPPED 2  /* empty and off the free lists: Python releases it */
#define RA_SLAB_RELEASED 3 /* given back to the OS (reads as zero) */

/* Return codes. */
#define RA_OK 0
#define RA_SLOW 2          /* not for the fast path: Python decides (and diagnoses) */
#define RA_NEED_SPANS 3    /* a central list has no span with room: Python brings a batch */
#define RA_NO_RECORD 4     /* the pool has no free span record: Python adds a slab */
#define RA_NOT_FREE 5      /* pages asked for are not all free */

/* Tiny block state word (one per 16-byte slot of a tiny span; 0 for a slot
 * holding an ordinary 16-byte object): bit i (0..15) = a piece starts at
 * byte i; bit 16+i (i < 15) = a piece ends at byte i (a piece with no end bit
 * at or after its start ends at byte 15); RA_TINY_HELD = a thread's cache is
 * still filling the block.  The block is freed when the word becomes 0. */
#define RA_TINY_HELD 0x80000000

/* A spin lock.  Held only inside one C call. */
typedef struct ra_lock { uint32_t held; } ra_lock;

/* One span: a run of pages (Go: mspan).  A record of the heap's pools,
 * followed by its bitmaps: alloc bits then free bits, nwords words each
 * (nwords = (nelems + 63) / 64), then for the tiny class one state word per
 * slot.  Fields marked [owner] are written by the thread whose cache holds
 * the span (cached == 1) or, uncached, under its central's lock; [atomic]
 * ones by any thread with atomics; [page] ones under the heap's page lock. */
typedef struct ra_span {
    uintptr_t base;         /* [page] first byte of the first page */
    uint64_t alloc_cache;   /* [owner] bit k set <=> slot free_index + k is free */
    struct ra_span *next;   /* central list, or the pool free list */
    struct ra_span *prev;
    struct ra_span *next_dirty; /* [atomic] link in the central's dirty stack */
    uint32_t free_index;    /* [owner] where the next-free scan resumes */
    uint32_t nelems;        /* object slots (1 for large and manual spans) */
    uint32_t elemsize;      /* bytes per slot; 0 for large and manual spans */
    uint32_t alloc_count;   /* [owner] slots whose alloc bit is set */
    uint32_t npages;        /* [page] pages in the span */
    uint32_t nfreed;        /* [atomic] frees in free bits not yet swept */
    uint32_t sweep_at;      /* uncached: push on the dirty stack at this many pending frees */
    uint32_t id;            /* pool << 24 | record number: Python's name for it */
    uint8_t spanclass;      /* size class << 1 | noscan; 0 or 1 for large */
    uint8_t state;          /* [page] RA_SPAN_* */
    uint8_t needzero;       /* [owner] 1 when free slots may hold old data */
    uint8_t cached;         /* [atomic] 1 while a thread cache owns it */
    uint8_t in_dirty;       /* [atomic] 1 while on its central's dirty stack */
    uint8_t list;           /* RA_LIST_*, under the central's lock */
    uint8_t pool;           /* the pool the record belongs to */
    uint8_t unused;
    uint64_t bits[];        /* alloc bits, free bits (+ tiny state words) */
} ra_span;

/* Span records of one shape (Go: fixalloc), [page] fields.  Python maps the
 * region and adds or drops slabs; C hands out the lowest slab's records first. */
typedef struct ra_pool {
    ra_span **slab_free;    /* per slab: its free records, linked through next */
    uint32_t *slab_live;    /* per slab: records handed out */
    uint8_t *slab_state;    /* per slab: RA_SLAB_* */
    uintptr_t base;         /* the pool's reserved region */
    uint32_t stride;        /* bytes per record, bitmaps included */
    uint32_t per_slab;      /* records per slab */
    uint32_t slab_bytes;    /* bytes per slab (whole OS pages) */
    uint32_t max_slabs;
    uint32_t nwords;        /* bitmap words per bitmap */
    uint32_t tiny;          /* 1: records carry tiny state words */
    uint32_t lowest;        /* no slab below it has a free record */
    uint32_t nfree;         /* free records on ACTIVE slabs */
    uint32_t index;         /* the pool's number in its heap */
} ra_pool;

/* Page bits of one 4 MiB chunk (Go: pallocData): allocated, scavenged (free
 * and given back to the OS).  Each change pushes the chunk on the dirty stack. */
typedef struct ra_chunk {
    uint64_t alloc[8];
    uint64_t scav[8];
    struct ra_chunk *next_dirty;
    uint64_t index;         /* chunk number: address >> 22 */
    uint32_t in_dirty;
    uint32_t unused;
} ra_chunk;

/* The C side of one page allocator (Go: pageAlloc): what C keeps true while
 * Python refreshes its summaries from the chunks on `dirty`. */
typedef struct ra_pages {
    ra_lock lock;           /* the page lock: chunk bits, pools, span maps */
    uint32_t unused;
    ra_chunk *dirty;        /* chunks whose bits changed since Python summarized them */
    ra_chunk *syncing;      /* the chunk Python is summarizing now (resumable) */
    uintptr_t search_addr;  /* every page below it is allocated */
    uint64_t frees;         /* page runs freed so far: a search's hint is stale if it moved */
    uint64_t total;         /* pages in the heap */
    uint64_t free;          /* free pages */
    uint64_t scavenged;     /* free pages released to the OS */
} ra_pages;

/* OS bytes by region state, counted by the shim call that changes them. */
typedef struct ra_os_stats {
    uint64_t reserved;
    uint64_t ready;
    uint64_t released_total; /* bytes given back with MADV_DONTNEED, cumulative */
} ra_os_stats;

/* Metadata of one 64 MiB heap arena (Go: heapArena).  The page map comes
 * first: its 16 OS pages are released (zero = NULL) when it holds no span. */
typedef struct ra_heap_arena {
    ra_span *spans[RA_PAGES_PER_ARENA];           /* [page] page -> span, NULL when free */
    uint64_t page_in_use[RA_PAGES_PER_ARENA / 64]; /* [page] first page of each IN_USE span */
    ra_chunk chunks[RA_CHUNKS_PER_ARENA];         /* the arena's page bits */
    uintptr_t base;
    uint32_t heap_id;
    uint32_t live_pages;    /* [page] pages mapped to spans */
    uint32_t maps_released; /* the page map was given back to the OS */
    uint32_t unused;
} ra_heap_arena;

/* Spans of one span class that no thread cache owns (Go: mcentral). */
typedef struct ra_central {
    ra_lock lock;
    uint32_t empty_max, empty_max_pages; /* Python: empty spans, and pages of them, kept */
    ra_span *list[4];       /* by RA_LIST_*, each a queue, oldest first (as Go's spanSet:
                               a span gathers frees while it waits): PARTIAL spans with a
                               free slot, FULL ones without, EMPTY ones with no object
                               (classes 0 and 1: freed large spans kept for reuse) */
    uint32_t count[4];      /* spans on each list */
    uint64_t empty_pages;   /* pages of the spans on the EMPTY list */
    ra_span *tail[4];       /* the last span of each list */
    ra_span *dirty;         /* [atomic] uncached spans that got frees worth a sweep */
    uint64_t nrefill;       /* spans handed to caches */
    uint64_t nmiss;         /* refills that found nothing: Python was asked */
    uint64_t nreleased;     /* empty spans given back to the page heap */
} ra_central;

/* One thread's cache for one heap (Go: mcache); only that thread touches it. */
typedef struct ra_mcache {
    ra_span *alloc[RA_NUM_SPAN_CLASSES]; /* never NULL: the heap's empty span when none */
    uintptr_t tiny;                      /* current tiny block, 0 when none */
    uintptr_t tiny_offset;               /* next free byte in it */
    ra_span *tiny_span;                  /* the span holding the tiny block */
    struct ra_mcache *next, *prev;       /* the heap's list of caches [page] */
    uint64_t nmalloc[RA_NUM_SIZE_CLASSES]; /* objects handed out, by size class */
    uint64_t nfree[RA_NUM_SIZE_CLASSES];   /* objects freed by this thread */
    uint64_t tiny_allocs;                /* pieces put in an existing block (Go's tinyAllocs) */
    uint64_t tiny_pieces;                /* tiny pieces handed out */
    uint64_t tiny_frees;                 /* tiny pieces freed by this thread */
    uint32_t released;                   /* flushed for good (thread gone) */
    uint32_t unused;
} ra_mcache;

/* [atomic] counters: of caches gone, frees by cacheless threads, large objects. */
typedef struct ra_counts {
    uint64_t nmalloc[RA_NUM_SIZE_CLASSES];
    uint64_t nfree[RA_NUM_SIZE_CLASSES];
    uint64_t tiny_allocs, tiny_pieces, tiny_frees;
    uint64_t large_allocs, large_frees, large_bytes, large_freed_bytes;
    uint64_t inuse_pages;   /* pages of IN_USE spans */
    uint64_t manual_pages;  /* pages of MANUAL spans */
} ra_counts;

/* The C part of one heap, alive as long as its Python heap object. */
typedef struct ra_heap {
    ra_heap_arena ***arena_index; /* = ra_arena_l1, which only the cffi module can name */
    uint64_t gen;           /* unique per heap: thread-local cache slots carry it */
    uint32_t id;            /* heap_id of its arenas */
    uint32_t slot;          /* thread-local slot, < RA_MAX_HEAPS */
    uint32_t stopped;       /* nonzero: fast paths go to Python (stopped or closed) */
    uint32_t npools;
    uint8_t pool_of[RA_NUM_SPAN_CLASSES]; /* Python: the pool of each span class */
    ra_pages pages;
    ra_pool pools[RA_MAX_POOLS];
    ra_central central[RA_NUM_SPAN_CLASSES];
    ra_counts counts;
    ra_mcache *caches;      /* [page] every cache not yet released */
    uintptr_t freed_large[64]; /* [page] bases of the last large objects freed */
    uint32_t freed_large_next;
    uint32_t unused;
    ra_span *empty_span;    /* no slots: every fast path misses on it (Go: emptymspan) */
} ra_heap;

/* The process-wide arena index (Go: mheap_.arenas), filled by arena.py. */
extern ra_heap_arena **ra_arena_l1[1 << RA_ARENA_L1_BITS];

/* Version of the package this shim was compiled for. */
const char *ra_shim_version(void);

/* ---- OS (shim.c).  Addresses OS-page aligned, sizes positive multiples of
 * the OS page (else EINVAL).  Each returns 0 or an errno value and, on
 * success, updates the owner's byte counts `st`. */
int ra_reserve(size_t size, size_t align, uintptr_t *out, ra_os_stats *st); /* None -> Reserved */
int ra_map(size_t size, uintptr_t *out, ra_os_stats *st);   /* None -> Ready, no faults injected */
int ra_commit(uintptr_t addr, size_t size, ra_os_stats *st); /* Reserved -> Ready */
int ra_release(uintptr_t addr, size_t size, ra_os_stats *st); /* DONTNEED: RSS drops now */
int ra_unmap(uintptr_t addr, size_t size, int ready, ra_os_stats *st); /* -> None */
int ra_resident(uintptr_t addr, size_t size, size_t *out); /* OS pages resident (mincore) */
void ra_memzero(uintptr_t addr, size_t size);
int ra_fault_set(int op, int64_t nfail, int64_t every);
int64_t ra_fault_hits(int op);

/* ---- Size classes (the fast path's own rule, for the agreement test). */
uint32_t ra_span_class_for(size_t size, int noscan);

/* ---- Page bits (pages.h).  Caller holds nothing; each call takes the page lock. */
#define RA_PAGES_TAKE 0      /* free pages -> allocated; *scav: how many were scavenged */
#define RA_PAGES_GIVE 1      /* allocated pages -> free */
#define RA_PAGES_SCAVENGED 2 /* free pages -> free and released (after the madvise) */
int ra_pages_change(ra_pages *pa, ra_chunk *ch, uint32_t first, uint32_t n, int op,
                    uint32_t *scav); /* RA_OK, or RA_NOT_FREE when pages are in the wrong state */
void ra_pages_grow(ra_pages *pa, ra_chunk *ch, uint64_t index);
/* The chunk to summarize next: the one being summarized (resumed after an
 * interruption) unless `done`, else the top of the dirty stack; NULL: none. */
ra_chunk *ra_pages_sync_step(ra_pages *pa, int done);
void ra_pages_raise_search(ra_pages *pa, uintptr_t addr, uint64_t frees_seen);
/* One consistent copy, for check(): per chunk its 16 bit words and a word
 * that is 1 if it waits for Python to summarize it; then total, free,
 * scavenged, search_addr. */
void ra_pages_snapshot(ra_pages *pa, ra_chunk **chunks, uint32_t n, uint64_t *out);

/* ---- Span records (pages.h). */
void ra_pool_add_slab(ra_heap *h, ra_pool *p, uint32_t slab);
int ra_pool_drop_slab(ra_heap *h, ra_pool *p, uint32_t slab); /* 1 if dropped */

/* ---- Spans in the heap (pages.h). */
int ra_span_install(ra_heap *h, uintptr_t base, uint32_t npages, uint32_t spanclass,
                    uint32_t state, ra_span **out);
int ra_span_uninstall(ra_heap *h, ra_span *s, uint32_t state, uintptr_t base);
int ra_central_grow(ra_heap *h, uint32_t spc, uintptr_t base, uint32_t nspans);
void ra_counts_sum(ra_heap *h, ra_counts *out, uint32_t *ncaches);

/* ---- Objects (spanbits.h, central.h). */
int ra_heap_free(ra_heap *h, uintptr_t addr, ra_mcache *c); /* small or large: RA_OK/RA_SLOW */
size_t ra_usable_size(ra_heap *h, uintptr_t addr); /* of a live object starting there, else 0 */
void ra_cache_init(ra_heap *h, ra_mcache *c);
void ra_cache_release(ra_heap *h, ra_mcache *c, int for_good);
void ra_central_reclaim(ra_heap *h, uint32_t spc);

/* CDEF END */

#endif /* REALALLOC_SHIM_H */
