/*
 * realalloc OS shim: the only C in realalloc that talks to the kernel.
 *
 * See realalloc/__init__.py for an overview of the allocator and
 * realalloc/osmem.py for the Python side of this contract (osmem.py is the
 * only module that imports the compiled shim).
 *
 * The shim keeps no policy and no accounting and never aborts: every call
 * either does exactly what it says or returns an errno value and leaves the
 * region as it was.  Python decides what to map, when and why.
 *
 * Region states (as in Go's runtime/mem.go):
 *
 *     None --ra_reserve--> Reserved --ra_commit--> Ready
 *                              ^                     |
 *                              +----ra_decommit------+
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
 * calls of `op` fail with ENOMEM without touching the kernel, and after that
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

/* Span states (Go: mSpanState). */
#define RA_SPAN_FREE 0
#define RA_SPAN_IN_USE 1
#define RA_SPAN_MANUAL 2

/* One span: a run of pages (Go: mspan).  Owned by Python (realalloc/span.py);
 * lives in C memory so that C code can find it from an address. */
typedef struct ra_span {
    uintptr_t base;        /* first byte of the first page */
    uintptr_t limit;       /* end of the last object (base + nelems*elemsize) */
    uint64_t alloc_cache;  /* ~alloc_bits from free_index on: 1 bit = free slot */
    uint64_t *alloc_bits;  /* nelems bits, 1 = allocated as of the last sweep */
    uint64_t *free_bits;   /* nelems bits set by free(), applied by the next sweep */
    uint32_t free_index;   /* slots below it are allocated or were handed out */
    uint32_t nelems;       /* objects in the span (1 for large and manual spans) */
    uint32_t elemsize;     /* bytes per object (npages * 8 KiB for large/manual) */
    uint32_t div_magic;    /* (offset * div_magic) >> 32 == offset / elemsize */
    uint32_t alloc_count;  /* objects allocated, including handed-out slots */
    uint32_t npages;       /* pages in the span */
    uint32_t nfreed;       /* frees recorded in free_bits, not yet swept */
    uint32_t id;           /* index of the span's Python record in its heap */
    uint8_t spanclass;     /* size class << 1 | noscan; 0 or 1 for large */
    uint8_t state;         /* RA_SPAN_* */
    uint8_t needzero;      /* 1 when free slots may hold old data */
    uint8_t cached;        /* 1 while an mcache owns the span */
} ra_span;

/* Metadata of one 64 MiB heap arena (Go: heapArena).  Python allocates it
 * with ffi.new and keeps it alive while the arena is in the index. */
typedef struct ra_heap_arena {
    ra_span *spans[RA_PAGES_PER_ARENA];       /* page -> span, NULL for free pages */
    uint64_t page_in_use[RA_PAGES_PER_ARENA / 64]; /* bit set on the first page of each in-use span */
    uintptr_t base;                            /* first byte of the arena */
    uint32_t heap_id;                          /* id of the heap that owns the arena */
} ra_heap_arena;

/* The process-wide arena index (Go: mheap_.arenas): arena number
 * (address >> RA_ARENA_SHIFT) split into L1 and L2 parts.  Each L1 entry is
 * NULL or an array of 2^RA_ARENA_L2_BITS arena pointers.  Python fills it in
 * (realalloc/arena.py) under the arena-index lock; C only reads it. */
extern ra_heap_arena **ra_arena_l1[64];

/* Version of the package this shim was compiled for ("0.1.0"). */
const char *ra_shim_version(void);

/* None -> Reserved.  Reserve `size` bytes aligned to `align` (a power of two
 * >= 4096).  On success *out is the base.  Returns 0 or an errno value. */
int ra_reserve(size_t size, size_t align, uintptr_t *out);

/* Reserved -> Ready for [addr, addr+size). Returns 0 or an errno value. */
int ra_commit(uintptr_t addr, size_t size);

/* Ready -> Reserved (PROT_NONE, contents dropped). Returns 0 or errno. */
int ra_decommit(uintptr_t addr, size_t size);

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

/* CDEF END */

#endif /* REALALLOC_SHIM_H */
