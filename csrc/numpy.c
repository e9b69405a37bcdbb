/*
 * realalloc as numpy's data allocator (NEP 49), included by fastpath.c to run
 * the fast path of Heap.malloc.  The Python side, and the handler's rules
 * (GIL, exceptions, foreign pointers, kept blocks, lifetime) in full:
 * realalloc/integrations/numpy.py.  No numpy header is needed: np_handler
 * copies numpy's PyDataMem_Handler (version 1); numpy's C-API table comes from
 * its `_ARRAY_API` capsule, at slots NP_API_* (the same in numpy 1.22-1.26 and
 * 2.x; tests/test_numpy.py checks them against numpy's __multiarray_api.h).
 */

#define NP_API_ABI 0           /* PyArray_GetNDArrayCVersion */
#define NP_API_FEATURE 211     /* PyArray_GetNDArrayCFeatureVersion */
#define NP_API_SET_HANDLER 304 /* PyDataMem_SetHandler */
#define NP_API_GET_HANDLER 305 /* PyDataMem_GetHandler */
#define NP_CAPSULE "mem_handler"
#define NP_SMALL_CLASSES 33 /* the size classes up to RA_SMALL_SIZE_MAX (1 KiB) */
#define NP_KEPT_MAX 16      /* most blocks kept per small class, and large ones */
#define NP_PAGE_MASK (((size_t)1 << RA_PAGE_SHIFT) - 1)

/* ---- the heap for a C client, GIL held ----------------------------------- */

/* Bytes a C client's request takes: at least glibc's 32, so every object is 16-aligned
 * (the 24-byte class is 8-aligned) and none is in a tiny span (no piece states). */
static inline size_t ra_c_size(size_t size) { return size < 32 ? 32 : size; }

/* `size` bytes of noscan memory (zeroed if `zero`) for a C client, until
 * ra_c_free; not traced (the client traces).  The fast path alone (no Python
 * runs): the address, or 0. */
static inline uintptr_t ra_c_try_malloc(HeapBase *self, size_t size, int zero) {
    ra_heap *h = self->h;
    ra_tls_slot *t = !h->stopped && size <= RA_MAX_SMALL_SIZE ? my_slot(h) : NULL;
    uintptr_t addr = t && t->cache ? ra_malloc_small(h, t->cache, ra_c_size(size), 1, zero) : 0;
    self->held += addr != 0;
    return addr;
}

/* ... its slow path: a refill of the thread's span (whether or not it had
 * room), or Python (a thread's first allocation, a large object, a stopped
 * heap).  Address, or 0 with an exception set. */
static uintptr_t ra_c_malloc(HeapBase *self, size_t size, int zero) {
    ra_heap *h = self->h;
    ra_tls_slot *t = !h->stopped && size <= RA_MAX_SMALL_SIZE ? my_slot(h) : NULL;
    uintptr_t addr;
    if (t && t->cache) {
        addr = refill_and_malloc(self, t->cache, ra_c_size(size), 1, zero);
    } else {
        PyObject *args[2] = {PyLong_FromSize_t(ra_c_size(size)), zero ? Py_True : Py_False};
        PyObject *r = args[0] ? call_slow(self, self->slow[SLOW_MALLOC], args, 1, kw_zero) : NULL;
        addr = r ? PyLong_AsUnsignedLong(r) : 0; /* untraced: _malloc_slow's own malloc traced it */
        if (addr && tracing) PyTraceMalloc_Untrack(RA_TRACEMALLOC_DOMAIN, addr);
        Py_XDECREF(args[0]), Py_XDECREF(r);
    }
    self->held += addr != 0;
    return addr;
}

/* Free what ra_c_malloc gave: 0, or -1 with an exception set. */
static int ra_c_free(HeapBase *self, uintptr_t addr) {
    int rc = free_addr(self, NULL, addr);
    self->held -= rc == 0;
    return rc;
}

/* ra_c_free's fast path for a small object (no Python runs): 1 if freed,
 * else 0.  (Nothing to untrack: a C client's objects are not traced.) */
static inline int ra_c_try_free(HeapBase *self, uintptr_t addr) {
    ra_heap *h = self->h;
    ra_tls_slot *t = !h->stopped ? my_slot(h) : NULL;
    if (!t || ra_free_object(h, addr, t->cache) != RA_OK) return 0;
    self->held--;
    return 1;
}

/* ---- numpy's structs (numpy/ndarraytypes.h) and the handler's state ------ */

typedef struct { /* numpy: PyDataMemAllocator */
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr, size_t size);
} np_allocator;

typedef struct { char name[127]; uint8_t version; np_allocator allocator; } np_handler;

/* Counters, in the order numpy_handler_info returns them (HandlerStats). */
enum { NP_MALLOC, NP_CALLOC, NP_REALLOC, NP_IN_PLACE, NP_FREE, NP_FOREIGN, NP_FAILED,
       NP_KEPT_HITS, NP_NCOUNTS };

typedef struct { uintptr_t addr; size_t bytes; } np_block;

typedef struct {
    np_handler np;                  /* first: numpy finds it through the capsule */
    HeapBase *heap;                 /* = the capsule's context, a strong reference */
    uint64_t n[NP_NCOUNTS];         /* calls by NP_* */
    uint32_t small_max, large_max;  /* Python's bounds: blocks kept per small class, large */
    size_t max_bytes;               /* ... and bytes kept in all (enforced on large ones) */
    uint32_t nkept, nlarge;         /* blocks kept now: all, large */
    size_t kept_bytes;
    uint8_t nsmall[NP_SMALL_CLASSES];
    uintptr_t small[NP_SMALL_CLASSES][NP_KEPT_MAX]; /* stacks by size class */
    np_block large[NP_KEPT_MAX + 1]; /* oldest first */
} np_state;

static void **np_api; /* numpy's C-API table: numpy_api(capsule, True) */

/* PyGILState_Check at half the cost: the GIL holder's thread state (3.10-3.11), or this
 * thread's while attached (3.12+), is this thread's. */
static inline int np_gil_held(void) {
    PyThreadState *ts = _PyThreadState_UncheckedGet();
    return ts && ts->thread_id == PyThread_get_thread_ident();
}

/* Interpreter exit has begun: the arena index and thread caches may be gone, so frees
 * are dropped and allocations come from libc (the process gives it all back). */
#if PY_VERSION_HEX >= 0x030D0000
#define np_exiting Py_IsFinalizing
#else
#define np_exiting _Py_IsFinalizing
#endif

#define NP_GIL_TAKE               \
    int np_gil_ = !np_gil_held(); \
    PyGILState_STATE np_gs_ = np_gil_ ? PyGILState_Ensure() : PyGILState_LOCKED
#define NP_GIL_DROP if (np_gil_) PyGILState_Release(np_gs_)
#define NP_SAVE_ERR PyObject *np_et, *np_ev, *np_tb; PyErr_Fetch(&np_et, &np_ev, &np_tb)
#define NP_RESTORE_ERR PyErr_Restore(np_et, np_ev, np_tb)

/* After a failed step (exception set): a MemoryError is numpy's to raise (it
 * gets NULL); anything else is reported as unraisable, naming the call. */
static RA_COLD void np_report(np_state *st, const char *call, uintptr_t arg) {
    st->n[NP_FAILED]++;
    PyObject *where = PyErr_ExceptionMatches(PyExc_MemoryError) ? NULL :
        PyUnicode_FromFormat("realalloc's numpy allocator: %s(%p)", call, (void *)arg);
    where ? PyErr_WriteUnraisable(where) : PyErr_Clear();
    Py_XDECREF(where);
}

/* 1: `addr` is in one of h's arenas; -1: in another realalloc heap's; 0: not
 * realalloc memory at all (libc's). */
static int np_owner(ra_heap *h, uintptr_t addr) {
    if (addr >> RA_HEAP_ADDR_BITS) return 0;
    uintptr_t n = addr >> RA_ARENA_SHIFT;
    ra_heap_arena **l2 = RA_LOAD(&h->arena_index[n >> RA_ARENA_L2_BITS]);
    ra_heap_arena *a = l2 ? RA_LOAD(&l2[n & ((1u << RA_ARENA_L2_BITS) - 1)]) : NULL;
    return !a ? 0 : a->heap_id == h->id ? 1 : -1;
}

/* ---- kept blocks ----------------------------------------------------------- */

static inline void np_count(np_state *st, int64_t blocks, int64_t bytes) {
    st->nkept += (uint32_t)blocks;
    st->kept_bytes += (size_t)bytes;
    st->heap->held -= blocks; /* kept blocks are not in `held` */
}

/* Take a kept block out: the newest of small class sc, or large[i]. */
static inline uintptr_t np_small_out(np_state *st, uint32_t sc) {
    np_count(st, -1, -(int64_t)ra_class_to_size[sc]);
    return st->small[sc][--st->nsmall[sc]];
}

static uintptr_t np_large_out(np_state *st, uint32_t i) {
    uintptr_t addr = st->large[i].addr;
    np_count(st, -1, -(int64_t)st->large[i].bytes);
    memmove(&st->large[i], &st->large[i + 1], (--st->nlarge - i) * sizeof st->large[0]);
    return addr;
}

/* A kept block for `size` bytes, zeroed if `zero`; 0 if none. */
static inline uintptr_t np_take(np_state *st, size_t size, int zero) {
    uintptr_t addr = 0;
    if (st->heap->h->stopped) return 0;
    uint32_t sc = size <= RA_SMALL_SIZE_MAX ? ra_size_to_class8[(ra_c_size(size) + 7) >> 3] : 0;
    if (sc && st->nsmall[sc]) addr = np_small_out(st, sc);
    for (uint32_t i = st->nlarge; size > RA_MAX_SMALL_SIZE && !addr && i-- > 0;) /* newest first */
        if (st->large[i].bytes == ((size + NP_PAGE_MASK) & ~NP_PAGE_MASK)) addr = np_large_out(st, i);
    if (!addr) return 0;
    st->n[NP_KEPT_HITS]++;
    if (zero) memset((void *)addr, 0, size);
    return addr;
}

/* Keep a small block numpy freed: 1 if kept; 0 if it is not a live small
 * object of the heap or its class is full; -1 if it is kept already. */
static inline int np_keep_small(np_state *st, uintptr_t addr) {
    ra_heap *h = st->heap->h;
    size_t usable = h->stopped ? 0 : ra_usable(h, addr);
    if (!usable || usable > RA_SMALL_SIZE_MAX) return 0;
    uint32_t sc = ra_size_to_class8[(usable + 7) >> 3], n = st->nsmall[sc];
    for (uint32_t i = 0; i < n; i++) if (st->small[sc][i] == addr) return -1;
    if (n >= st->small_max) return 0;
    st->small[sc][st->nsmall[sc]++] = addr;
    np_count(st, 1, (int64_t)usable);
    return 1;
}

/* Give a block taken out of the kept ones back to the heap: 0, or -1 with an
 * exception set (the block is lost). */
static int np_give(np_state *st, uintptr_t addr) {
    if (ra_c_free(st->heap, addr) == 0) return 0;
    st->heap->held--;
    return -1;
}

/* Give every kept block back (or drop it if the heap is closed: its memory is
 * gone).  How many went back, or -1 with an exception set. */
static int np_flush(np_state *st) {
    int n = 0, closed = (st->heap->h->stopped & RA_CLOSED) != 0;
    for (uint32_t sc = 0; sc <= NP_SMALL_CLASSES; sc++) /* the last round: large blocks */
        while (sc < NP_SMALL_CLASSES ? st->nsmall[sc] : st->nlarge) {
            uintptr_t addr = sc < NP_SMALL_CLASSES ? np_small_out(st, sc)
                                                   : np_large_out(st, st->nlarge - 1);
            if (closed) st->heap->held--; /* np_*_out counted it back in */
            else if (np_give(st, addr) < 0) return -1;
            n += !closed;
        }
    return n;
}

/* ---- steps that may run Python: 0 / -1 with an exception set, never reported */

/* `size` bytes for numpy, zeroed if `zero`: the address, or 0. */
static uintptr_t np_get(np_state *st, size_t size, int zero) {
    uintptr_t addr = np_take(st, size, zero);
    if (!addr) addr = ra_c_malloc(st->heap, size, zero);
    if (!addr && st->nkept && PyErr_ExceptionMatches(PyExc_MemoryError)) {
        PyErr_Clear(); /* a memory limit: the kept blocks may hold what it needs */
        if (np_flush(st) >= 0) addr = ra_c_malloc(st->heap, size, zero);
    }
    return addr;
}

/* Free the heap's object at `addr` that np_keep_small did not keep: a large
 * one is kept (giving the oldest back beyond Python's bounds), any other goes
 * back; a second free of a kept block is a DoubleFreeError. */
static int np_drop(np_state *st, uintptr_t addr) {
    ra_heap *h = st->heap->h;
    ra_span *s = ra_span_at(h, addr);
    uint32_t sc = s ? s->spanclass >> 1 : 0, kept = 0;
    for (uint32_t i = 0; sc && sc < NP_SMALL_CLASSES && i < st->nsmall[sc]; i++)
        kept |= st->small[sc][i] == addr;
    for (uint32_t i = 0; s && !sc && i < st->nlarge; i++) kept |= st->large[i].addr == addr;
    if (kept) {
        PyObject *errors = PyImport_ImportModule("realalloc.errors");
        PyObject *cls = errors ? PyObject_GetAttrString(errors, "DoubleFreeError") : NULL;
        if (cls) PyErr_Format(cls, "free(%p): the object is already free", (void *)addr);
        return Py_XDECREF(errors), Py_XDECREF(cls), -1;
    }
    size_t bytes = s && !sc && !h->stopped && st->large_max ? ra_usable(h, addr) : 0;
    if (!bytes || bytes > st->max_bytes) return ra_c_free(st->heap, addr);
    st->large[st->nlarge++] = (np_block){addr, bytes};
    np_count(st, 1, (int64_t)bytes);
    while (st->nlarge && (st->nlarge > st->large_max || st->kept_bytes > st->max_bytes))
        if (np_give(st, np_large_out(st, 0)) < 0) return -1;
    return 0;
}

/* Resize the heap's object at `addr` to `size` bytes: in place while its size
 * class (or page count) fits, else moved.  The address, or 0 (the object is
 * untouched). */
static RA_COLD uintptr_t np_resize(np_state *st, uintptr_t addr, size_t size) {
    HeapBase *heap = st->heap;
    ra_heap *h = heap->h;
    if (heap_enter(heap) < 0) return 0; /* waits while another thread stopped the world */
    ra_span *s = ra_span_at(h, addr);
    size_t have = ra_usable(h, addr), want = ra_c_size(size);
    uintptr_t r = 0;
    if (!have) { /* not a live object: Python says why */
        PyObject *res = PyObject_CallMethod((PyObject *)heap, "usable_size", "k", addr);
        if (res) PyErr_Format(PyExc_ValueError, "realloc(%p): not a live object", (void *)addr);
        Py_XDECREF(res);
    } else if (s->spanclass < 2 ? want > RA_MAX_SMALL_SIZE &&
                                      (want + NP_PAGE_MASK) >> RA_PAGE_SHIFT == s->npages
                                : want <= RA_MAX_SMALL_SIZE && ra_class_for(want, 1) == s->spanclass) {
        r = addr;
        st->n[NP_IN_PLACE]++;
    } else if ((r = np_get(st, size, 0))) {
        memcpy((void *)r, (void *)addr, size < have ? size : have);
        if (np_drop(st, addr) < 0) np_report(st, "realloc", addr); /* the data moved anyway */
    }
    heap_leave(heap);
    return r;
}

/* ---- the handler: numpy calls these ------------------------------------- */

/* np_get around a saved exception; a failure is reported. */
static RA_COLD uintptr_t np_slow_get(np_state *st, size_t size, int zero) {
    NP_SAVE_ERR;
    uintptr_t addr = np_get(st, size, zero);
    if (!addr) np_report(st, zero ? "calloc" : "malloc", size);
    NP_RESTORE_ERR;
    return addr;
}

static void *np_malloc(void *ctx, size_t size) {
    np_state *st = ctx;
    if (np_exiting()) return malloc(size);
    NP_GIL_TAKE;
    st->n[NP_MALLOC]++;
    uintptr_t addr = np_take(st, size, 0);
    if (!addr && !(addr = ra_c_try_malloc(st->heap, size, 0))) addr = np_slow_get(st, size, 0);
    NP_GIL_DROP;
    return (void *)addr;
}

static void *np_calloc(void *ctx, size_t nelem, size_t elsize) {
    np_state *st = ctx;
    size_t size;
    uintptr_t addr = 0;
    if (np_exiting()) return calloc(nelem, elsize);
    NP_GIL_TAKE;
    st->n[NP_CALLOC]++;
    if (__builtin_mul_overflow(nelem, elsize, &size)) st->n[NP_FAILED]++;
    else if (!(addr = np_take(st, size, 1)) && !(addr = ra_c_try_malloc(st->heap, size, 1)))
        addr = np_slow_get(st, size, 1);
    NP_GIL_DROP;
    return (void *)addr;
}

static void *np_realloc(void *ctx, void *ptr, size_t size) {
    np_state *st = ctx;
    uintptr_t addr = (uintptr_t)ptr, r;
    if (np_exiting()) return NULL; /* whose pointer it is cannot be told any more */
    NP_GIL_TAKE;
    st->n[NP_REALLOC]++;
    if (ptr && !np_owner(st->heap->h, addr)) { /* numpy's default handler's: libc's */
        r = (st->n[NP_FOREIGN]++, (uintptr_t)realloc(ptr, size));
    } else {
        NP_SAVE_ERR;
        if (!(r = ptr ? np_resize(st, addr, size) : np_get(st, size, 0))) np_report(st, "realloc", addr);
        NP_RESTORE_ERR;
    }
    NP_GIL_DROP;
    return (void *)r;
}

/* numpy passes the size it asked for; the heap knows better, so it is unused. */
static void np_free(void *ctx, void *ptr, size_t size) {
    np_state *st = ctx;
    uintptr_t addr = (uintptr_t)ptr;
    if (!ptr || np_exiting()) return;
    NP_GIL_TAKE;
    st->n[NP_FREE]++;
    int kept = np_keep_small(st, addr);
    if (kept > 0 || (!kept && ra_c_try_free(st->heap, addr))) { /* done in C */
    } else if (!kept && !np_owner(st->heap->h, addr)) { /* numpy's default handler's */
        st->n[NP_FOREIGN]++, free(ptr);
    } else {
        NP_SAVE_ERR;
        if (np_drop(st, addr) < 0) np_report(st, "free", addr);
        NP_RESTORE_ERR;
    }
    NP_GIL_DROP;
}

/* ---- the capsule and numpy's C API (module functions) ------------------- */

static void np_capsule_free(PyObject *capsule) {
    np_state *st = PyCapsule_GetPointer(capsule, NP_CAPSULE);
    NP_SAVE_ERR;
    if (!np_exiting() && np_flush(st) < 0) np_report(st, "release_cache", 0);
    Py_DECREF(st->heap);
    NP_RESTORE_ERR;
    PyMem_RawFree(st);
}

/* The state behind a realalloc handler capsule, or NULL for any other object. */
static np_state *np_state_of(PyObject *capsule) {
    if (!PyCapsule_IsValid(capsule, NP_CAPSULE) || PyCapsule_GetDestructor(capsule) != np_capsule_free)
        return NULL;
    return PyCapsule_GetPointer(capsule, NP_CAPSULE);
}

/* numpy_handler(heap, small_max, large_max, max_bytes) -> a "mem_handler"
 * capsule: the handler "realalloc" over `heap` (the capsule's context keeps
 * it alive), keeping freed blocks within those bounds. */
static PyObject *numpy_handler(PyObject *mod, PyObject *args) {
    HeapBase *heap;
    unsigned int small_max, large_max;
    Py_ssize_t max_bytes;
    if (!PyArg_ParseTuple(args, "O!IIn", &HeapBaseType, &heap, &small_max, &large_max, &max_bytes))
        return NULL;
    if (!heap->h || small_max > NP_KEPT_MAX || large_max > NP_KEPT_MAX || max_bytes < 0)
        return PyErr_Format(err_type, "numpy_handler: bounds out of range, or heap not attached");
    np_state *st = PyMem_RawMalloc(sizeof *st);
    if (!st) return PyErr_NoMemory();
    *st = (np_state){.np = {"realalloc", 1, {st, np_malloc, np_calloc, np_realloc, np_free}},
                     .heap = heap, .small_max = small_max, .large_max = large_max,
                     .max_bytes = (size_t)max_bytes};
    PyObject *capsule = PyCapsule_New(&st->np, NP_CAPSULE, np_capsule_free);
    if (!capsule) return PyMem_RawFree(st), NULL;
    PyCapsule_SetContext(capsule, Py_NewRef(heap)); /* the destructor drops it */
    return capsule;
}

/* numpy_handler_info(obj) -> None if obj is not a realalloc handler, else
 * (heap, counters by NP_*..., kept blocks, kept bytes). */
static PyObject *numpy_handler_info(PyObject *mod, PyObject *obj) {
    np_state *st = np_state_of(obj);
    if (!st) Py_RETURN_NONE;
    uint64_t *n = st->n;
    _Static_assert(NP_NCOUNTS == 8, "one K per counter below");
    return Py_BuildValue("(OKKKKKKKKIn)", st->heap, n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7],
                         st->nkept, (Py_ssize_t)st->kept_bytes);
}

/* numpy_release_cache(handler) -> kept blocks given back to the heap. */
static PyObject *numpy_release_cache(PyObject *mod, PyObject *obj) {
    np_state *st = np_state_of(obj);
    if (!st) return PyErr_Format(err_type, "not a realalloc numpy handler");
    int n = np_flush(st);
    return n < 0 ? NULL : PyLong_FromLong(n);
}

/* numpy_api(capsule, bind=False) -> (ABI version, C feature version) of the
 * numpy whose `_ARRAY_API` capsule this is (numpy's import_array asks the
 * same two slots); bind: use its table from now on. */
static PyObject *numpy_api(PyObject *mod, PyObject *args) {
    PyObject *capsule;
    int bind = 0;
    void **api;
    if (!PyArg_ParseTuple(args, "O|p", &capsule, &bind) || !(api = PyCapsule_GetPointer(capsule, NULL)))
        return NULL;
    np_api = bind ? api : np_api;
    return Py_BuildValue("(II)", ((unsigned int (*)(void))api[NP_API_ABI])(),
                         ((unsigned int (*)(void))api[NP_API_FEATURE])());
}

/* numpy_swap_handler([handler]) -> this context's handler; with an argument,
 * it becomes the handler (None: numpy's default) and the previous one returns. */
static PyObject *numpy_swap_handler(PyObject *mod, PyObject *args) {
    PyObject *handler = NULL;
    if (!PyArg_ParseTuple(args, "|O", &handler)) return NULL;
    if (!np_api) return PyErr_Format(PyExc_RuntimeError, "numpy's C API is not bound");
    if (!handler) return ((PyObject * (*)(void)) np_api[NP_API_GET_HANDLER])();
    return ((PyObject * (*)(PyObject *)) np_api[NP_API_SET_HANDLER])(handler == Py_None ? NULL : handler);
}

/* The module functions above, one line in fastpath.c's method table. */
#define RA_NUMPY_METHODS                                                                          \
    {"numpy_api", numpy_api, METH_VARARGS, NULL}, {"numpy_handler", numpy_handler, METH_VARARGS, NULL}, \
    {"numpy_swap_handler", numpy_swap_handler, METH_VARARGS, NULL},                               \
    {"numpy_handler_info", numpy_handler_info, METH_O, NULL},                                     \
    {"numpy_release_cache", numpy_release_cache, METH_O, NULL},
