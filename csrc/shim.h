/*
 * realalloc OS shim: the only C in realalloc that talks to the kernel.
 *
 * See realalloc/__init__.py for an overview of the allocator and
 * realalloc/core/osmem.py for the Python side of this contract (osmem.py is the
 * only module that imports the compiled shim).
 *
 * The shim keeps no policy and no accounting and never aborts: every call
 * either does exactly what it says or returns an errno value and leaves the
 * region as it was.  Python decides what to map, when and why.
 *
 * Region states (as in Go's runtime/mem.go):
 *
 *     None --ra_reserve--> Reserved --ra_commit--> Ready
 *     Ready --ra_release--> Ready, not resident (reads as zero on next touch)
 *     any state --ra_unmap--> None
 *
 *   None      no mapping.
 *   Reserved  address space held with PROT_NONE; costs no memory; any access
 *             faults.
 *   Ready     readable and writable; pages become resident when touched.
 *
 * Preconditions common to all calls: addresses are OS-page (4 KiB) aligned and
 * sizes are positive multiples of the OS page.  Violations return EINVAL.
 *
 * Fault injection: ra_fault_set(op, nfail, every) makes the next `nfail`
 * calls of `op` (reserve, commit and release: the heap arenas' calls; ra_map
 * for metadata is not covered) fail with ENOMEM without touching the kernel, and after that
 * every `every`-th call (0 = never).  Tests use it to prove that a failed OS
 * call leaves nothing half-built.  ra_fault_hits(op) counts injected failures.
 */
#ifndef REALALLOC_SHIM_H
#define REALALLOC_SHIM_H

#include <stddef.h>
#include <stdint.h>

/* CDEF BEGIN: everything up to CDEF END is also read by build_shim.py as the cffi cdef. */

/* Fault-injection targets. */
#define RA_OP_RESERVE 0
#define RA_OP_COMMIT 1
#define RA_OP_RELEASE 2
#define RA_OP_COUNT 3

/* Heap geometry (Go, linux/amd64): 8 KiB pages, 64 MiB arenas, 48-bit addresses. */
#define RA_PAGE_SHIFT 13
#define RA_ARENA_SHIFT 26
#define RA_PAGES_PER_ARENA 8192
#define RA_ARENA_L1_BITS 6
#define RA_ARENA_L2_BITS 16

/* Object sizes (Go: sizeclasses.go, malloc.go). */
#define RA_NUM_SIZE_CLASSES 68
#define RA_NUM_SPAN_CLASSES 136
#define RA_MAX_SMALL_SIZE 32768
#define RA_TINY_SIZE 16
#define RA_TINY_SPAN_CLASS 5      /* size class 2 (16 B), noscan */
#define RA_MAX_HEAPS 64           /* heaps open at once in one process */

/* Span states (Go: mSpanState). */
#define RA_SPAN_FREE 0
#define RA_SPAN_IN_USE 1
#define RA_SPAN_MANUAL 2

/* Tiny block state word (one per 16-byte slot of a tiny span, 0 for a slot
 * that holds an ordinary 16-byte object): bit i (0..15) = a piece starts at
 * byte i; bit 16+i (i < 15) = a piece ends at byte i (a piece with no end bit
 * at or after its start ends at byte 15); RA_TINY_HELD = a thread's cache is
 * still filling the block.  The block is freed when the word becomes 0. */
#define RA_TINY_HELD 0x80000000

/* One span: a run of pages (Go: mspan).  Python (realalloc/core/span.py) owns and
 * initialises it; C code reaches it from an address through the arena map.
 * Fields marked [owner] are written only by the thread whose mcache holds
 * the span (cached == 1) or, when uncached, under the span class's central
 * lock; fields marked [atomic] are written by any thread with atomics. */
typedef struct ra_span {
    uintptr_t base;        /* first byte of the first page */
    uint64_t alloc_cache;  /* [owner] slot free_index+k is free <=> bit k set */
    uint64_t *alloc_bits;  /* [owner] nelems bits (padding bits set): 1 = allocated as of the last sweep */
    uint64_t *free_bits;   /* [atomic] nelems bits set by free(), taken by the next sweep */
    uint32_t *tiny_state;  /* [atomic] tiny span class only: one state word per slot */
    struct ra_span *next;  /* central list links (Python, under the central lock) */
    struct ra_span *prev;
    struct ra_span *next_dirty; /* [atomic] link in the heap's per-class dirty stack */
    uint32_t free_index;   /* [owner] every slot below it is allocated */
    uint32_t nelems;       /* objects in the span (1 for large and manual spans) */
    uint32_t elemsize;     /* bytes per object; 0 for large and manual spans (one object of npages) */
    uint32_t div_magic;    /* (offset * div_magic) >> 32 == offset / elemsize */
    uint32_t alloc_count;  /* [owner] objects allocated, counting pending frees */
    uint32_t npages;       /* pages in the span */
    uint32_t nfreed;       /* [atomic] frees in free_bits not yet swept */
    uint32_t sweep_at;     /* uncached: push on the dirty stack once nfreed reaches it
                              (set by Python when it files the span) */
    uint32_t id;           /* the span's index in its heap's span table */
    uint8_t spanclass;     /* size class << 1 | noscan; 0 or 1 for large */
    uint8_t state;         /* RA_SPAN_* */
    uint8_t needzero;      /* [owner] 1 when free slots may hold old data */
    uint8_t cached;        /* [atomic] 1 while an mcache owns the span */
    uint8_t in_dirty;      /* [atomic] 1 while on the dirty stack */
    uint8_t list;          /* which central list holds it (Python's business) */
} ra_span;

/* One thread's cache for one heap (Go: mcache).  Only that thread touches
 * it, except Python's flush when the thread has ended or the heap closes. */
typedef struct ra_mcache {
    ra_span *alloc[RA_NUM_SPAN_CLASSES]; /* never NULL: an empty span when none */
    uintptr_t tiny;                      /* current tiny block, 0 when none */
    uintptr_t tiny_offset;               /* next free byte in it */
    ra_span *tiny_span;                  /* the span holding the tiny block */
    uint64_t nmalloc[RA_NUM_SIZE_CLASSES]; /* objects handed out, by size class */
    uint64_t nfree[RA_NUM_SIZE_CLASSES];   /* objects freed by this thread */
    uint64_t tiny_allocs;                /* tiny pieces put in an existing block (Go's tinyAllocs) */
    uint64_t tiny_pieces;                /* tiny pieces handed out, all of them */
    uint64_t tiny_frees;                 /* tiny pieces freed by this thread */
} ra_mcache;

/* The C-visible part of one heap.  Python allocates it and keeps it alive as
 * long as the Heap object lives. */
typedef struct ra_heap {
    uint64_t gen;          /* unique per heap; thread-local cache slots carry it */
    uint32_t id;           /* heap_id of its arenas */
    uint32_t slot;         /* index in the per-thread cache table, < RA_MAX_HEAPS */
    uint32_t closed;       /* set once by close() */
    ra_span *dirty[RA_NUM_SPAN_CLASSES]; /* uncached spans that got frees (Treiber stacks) */
    uint64_t orphan_nfree[RA_NUM_SIZE_CLASSES]; /* [atomic] frees by threads with no cache */
    uint64_t orphan_tiny_frees;                  /* [atomic] */
    uint32_t class_to_size[RA_NUM_SIZE_CLASSES];
    uint8_t size_to_class8[129];    /* by (size + 7) >> 3, sizes 0..1024 */
    uint8_t size_to_class128[249];  /* by (size - 1024 + 127) >> 7, sizes 1025..32768 */
} ra_heap;

/* Metadata of one 64 MiB heap arena (Go: heapArena).  Python allocates it
 * with ffi.new and keeps it alive while the arena is in the index. */
typedef struct ra_heap_arena {
    ra_span *spans[RA_PAGES_PER_ARENA];       /* page -> span, NULL for free pages; first, so
                                                 its 16 OS pages can be released (zero = NULL) */
    uint64_t page_in_use[RA_PAGES_PER_ARENA / 64]; /* bit set on the first page of each in-use span */
    uintptr_t base;                            /* first byte of the arena */
    uint32_t heap_id;                          /* id of the heap that owns the arena */
} ra_heap_arena;

/* The process-wide arena index (Go: mheap_.arenas): arena number
 * (address >> RA_ARENA_SHIFT) split into L1 and L2 parts.  Each L1 entry is
 * NULL or an array of 2^RA_ARENA_L2_BITS arena pointers.  Python fills it in
 * (realalloc/core/arena.py) under the arena-index lock; C only reads it. */
extern ra_heap_arena **ra_arena_l1[64];

/* Version of the package this shim was compiled for ("0.1.0"). */
const char *ra_shim_version(void);

/* None -> Reserved.  Reserve `size` bytes aligned to `align` (a power of two
 * >= 4096).  On success *out is the base.  Returns 0 or an errno value. */
int ra_reserve(size_t size, size_t align, uintptr_t *out);

/* None -> Ready in one step: `size` bytes readable and writable, pages made
 * on first touch (MAP_NORESERVE).  For the allocator's own metadata; not
 * subject to fault injection.  Returns 0 or an errno value. */
int ra_map(size_t size, uintptr_t *out);

/* Reserved -> Ready for [addr, addr+size). Returns 0 or an errno value. */
int ra_commit(uintptr_t addr, size_t size);

/* Ready -> Ready but not resident: madvise(MADV_DONTNEED).  RSS drops at once;
 * the next touch maps a fresh zero page.  Returns 0 or an errno value. */
int ra_release(uintptr_t addr, size_t size);

/* any -> None.  Returns 0 or an errno value. */
int ra_unmap(uintptr_t addr, size_t size);

/* Number of OS pages of [addr, addr+size) resident in RAM (mincore), in
 * *out.  The range must be mapped.  Returns 0 or an errno value. */
int ra_resident(uintptr_t addr, size_t size, size_t *out);

/* memset(addr, 0, size) for memory in the Ready state: the heap clears
 * recycled pages with it when the caller asked for zeroed memory. */
void ra_memzero(uintptr_t addr, size_t size);

/* Fault injection (see header comment).  Returns 0, or EINVAL for a bad op. */
int ra_fault_set(int op, int64_t nfail, int64_t every);
int64_t ra_fault_hits(int op);

/* Span kernels (csrc/spanbits.h), exported for Python's slow paths so that
 * Python and the CPython fast path (csrc/fastpath.c) run the same code. */
#define RA_FREE_OK 0   /* freed */
#define RA_FREE_SLOW 2 /* not a small live object of this heap: Python decides */
uint32_t ra_span_sweep(ra_span *s); /* returns the free slots after the sweep */
int ra_span_free_slot(ra_heap *h, ra_span *s, uint32_t idx, ra_mcache *c);
uintptr_t ra_cache_malloc(ra_heap *h, ra_mcache *c, size_t size, int noscan, int zero);
uint32_t ra_heap_span_class_for(ra_heap *h, size_t size, int noscan);
int ra_cache_free(ra_heap *h, uintptr_t addr, ra_mcache *c, ra_span **span_out);
ra_span *ra_cache_tiny_retire(ra_mcache *c, uint32_t *idx_out);
uint32_t ra_span_uncache(ra_span *s); /* uncache, sweep if frees are pending; free slots */
ra_span *ra_heap_take_dirty(ra_heap *h, uint32_t spc);
/* Clear in_dirty, then sweep the span if it is an uncached IN_USE span of
 * class spc: returns its free slots, or RA_NOT_SWEPT. */
#define RA_NOT_SWEPT 0xffffffff
uint32_t ra_span_sweep_dirty(ra_span *s, uint32_t spc);

/* CDEF END */

#endif /* REALALLOC_SHIM_H */
