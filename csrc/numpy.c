/*
 * realalloc as numpy's data allocator (NEP 49), included by fastpath.c to run
 * the same fast path as Heap.malloc.  The Python side (installing, threads, the
 * numbers C reads): realalloc/integrations/numpy.py.  numpy's headers are not
 * needed: np_handler copies numpy's PyDataMem_Handler (version 1), and its
 * C-API table comes from the `_ARRAY_API` capsule, read at the NP_API_* slots
 * (the same in numpy 1.22-1.26 and 2.x; tests/test_numpy.py checks them
 * against the installed numpy's __multiarray_api.h).
 *
 * The handler's four functions:
 * - GIL: numpy calls them with it, except realloc in fromstring/fromfile with
 *   `sep`; each takes it when not held.  It guards the heap's `held` count and
 *   the handler's counters and cache.
 * - Never raise into numpy: a pending exception is saved and restored around
 *   any step that may run Python; a failed allocation returns NULL (numpy
 *   raises MemoryError); anything else (ReentrancyError from a finalizer run
 *   inside a slow path, HeapClosedError, a bad pointer) goes to
 *   PyErr_WriteUnraisable.  Re-entry never waits: the heap's lock refuses it,
 *   and C locks are never held while Python runs.
 * - A pointer in one of the heap's arenas is the heap's; any other came from
 *   numpy's default handler, so libc's free/realloc take it.
 * - Kept blocks: what numpy frees is kept for the next request of the same
 *   size class (objects up to 1 KiB, as numpy's own handler keeps them) or page
 *   count (large objects, a span each, made by Python), within Python's
 *   bounds.  They count as in use in heap.stats() until reused or released,
 *   but not in `held`: close() does not wait for them, and a closed heap's are
 *   dropped.  A block is validated (a live object of the heap) before it is
 *   kept, and a second free of a kept block is a DoubleFreeError.
 */

#define NP_API_ABI 0           /* PyArray_GetNDArrayCVersion */
#define NP_API_FEATURE 211     /* PyArray_GetNDArrayCFeatureVersion */
#define NP_API_SET_HANDLER 304 /* PyDataMem_SetHandler */
#define NP_API_GET_HANDLER 305 /* PyDataMem_GetHandler */
#define NP_CAPSULE "mem_handler"
#define NP_SMALL_CLASSES 33 /* size classes up to RA_SMALL_SIZE_MAX (1 KiB) */
#define NP_SMALL_MAX 16     /* most blocks kept per small class */
#define NP_LARGE_MAX 16     /* most large blocks kept */
#define NP_PAGE_MASK (((size_t)1 << RA_PAGE_SHIFT) - 1)

/* ---- the heap for a C client, GIL held ----------------------------------- */

/* Bytes a C client's request takes: at least 16 (no tiny piece) and never
 * 17..31 (the 24-byte class is only 8-aligned), so every object is 16-aligned
 * as glibc's malloc, numpy's default, promises. */
static inline size_t ra_c_size(size_t size) {
    return size <= RA_TINY_SIZE ? RA_TINY_SIZE : size < 32 ? 32 : size;
}

/* `size` bytes of noscan memory (zeroed if `zero`) that a C client holds until
 * ra_c_free; not traced (the client traces).  Address, or 0 with an exception
 * set. */
static uintptr_t ra_c_malloc(HeapBase *self, size_t size, int zero) {
    ra_heap *h = self->h;
    ra_tls_slot *t = h && !h->stopped && size <= RA_MAX_SMALL_SIZE ? my_slot(h) : NULL;
    uintptr_t addr;
    size = ra_c_size(size);
    if (t && t->cache) {
        if (!(addr = ra_malloc_small(h, t->cache, size, 1, zero)))
            addr = refill_and_malloc(self, t->cache, size, 1, zero);
    } else {
        PyObject *args[2] = {PyLong_FromSize_t(size), zero ? Py_True : Py_False};
        PyObject *r = args[0] ? call_slow(self, self->slow[SLOW_MALLOC], args, 1, kw_zero) : NULL;
        addr = r ? PyLong_AsUnsignedLong(r) : 0;
        Py_XDECREF(args[0]), Py_XDECREF(r);
    }
    self->held += addr != 0;
    return addr;
}

/* ra_c_malloc's fast path alone (no Python runs): the address, or 0. */
static inline uintptr_t ra_c_try_malloc(HeapBase *self, size_t size, int zero) {
    ra_heap *h = self->h;
    ra_tls_slot *t = !h->stopped && size <= RA_MAX_SMALL_SIZE ? my_slot(h) : NULL;
    uintptr_t addr = t && t->cache ? ra_malloc_small(h, t->cache, ra_c_size(size), 1, zero) : 0;
    self->held += addr != 0;
    return addr;
}

/* Free what ra_c_malloc gave: 0, or -1 with an exception set. */
static int ra_c_free(HeapBase *self, uintptr_t addr) {
    int rc = free_addr(self, NULL, addr);
    self->held -= rc == 0;
    return rc;
}

/* ra_c_free's fast path alone (no Python runs): 1 if freed, else 0.  With
 * `small`, only a small object (a large one, or any address that is not a
 * live object of the heap, gives 0 untouched). */
static inline int ra_c_try_free(HeapBase *self, uintptr_t addr, int small) {
    ra_heap *h = self->h;
    ra_tls_slot *t = !h->stopped ? my_slot(h) : NULL;
    if (!t || (small ? ra_free_object(h, addr, t->cache) : ra_free(h, addr, t->cache)) != RA_OK)
        return 0;
    if (tracing) PyTraceMalloc_Untrack(RA_TRACEMALLOC_DOMAIN, addr);
    self->held--;
    return 1;
}

/* ---- numpy's structs (numpy/ndarraytypes.h) and the handler's state ------ */

typedef struct {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr, size_t size);
} np_allocator; /* numpy: PyDataMemAllocator */

typedef struct {
    char name[127];
    uint8_t version; /* 1 */
    np_allocator allocator;
} np_handler; /* numpy: PyDataMem_Handler */

/* Counters, in the order numpy_handler_info returns them (HandlerStats). */
enum { NP_MALLOC, NP_CALLOC, NP_REALLOC, NP_IN_PLACE, NP_FREE, NP_FOREIGN, NP_FAILED,
       NP_KEPT_HITS, NP_NCOUNTS };

typedef struct {
    np_handler np;                  /* first: numpy finds it through the capsule */
    HeapBase *heap;                 /* = the capsule's context, a strong reference */
    uint64_t n[NP_NCOUNTS];         /* calls by NP_* */
    uint32_t small_max, large_max;  /* Python's bounds: blocks kept per small class, large */
    size_t max_bytes;               /* ... and bytes kept in all (enforced on large ones) */
    uint32_t nkept, nlarge;         /* blocks kept now: all, large */
    size_t kept_bytes;
    uint8_t nsmall[NP_SMALL_CLASSES];
    uintptr_t small[NP_SMALL_CLASSES][NP_SMALL_MAX]; /* stacks by size class */
    struct { uintptr_t addr; size_t bytes; } large[NP_LARGE_MAX + 1]; /* oldest first */
} np_state;

static void **np_api; /* numpy's C-API table: numpy_api(capsule, True) */

/* This thread holds the GIL (PyGILState_Check, at half the cost: the GIL
 * holder's thread state, 3.10-3.11, or this thread's while attached, 3.12+). */
static inline int np_gil_held(void) {
    PyThreadState *ts = _PyThreadState_UncheckedGet();
    return ts && ts->thread_id == PyThread_get_thread_ident();
}

#define NP_GIL_TAKE                  \
    int np_gil_ = !np_gil_held();    \
    PyGILState_STATE np_gs_ = np_gil_ ? PyGILState_Ensure() : PyGILState_LOCKED
#define NP_GIL_DROP \
    if (np_gil_) PyGILState_Release(np_gs_)

/* After a failed step (exception set): a MemoryError is numpy's to raise (it
 * gets NULL); anything else is reported as unraisable, naming the call. */
static RA_COLD void np_report(np_state *st, const char *call, uintptr_t arg) {
    st->n[NP_FAILED]++;
    if (PyErr_ExceptionMatches(PyExc_MemoryError)) {
        PyErr_Clear();
        return;
    }
    PyObject *where = PyUnicode_FromFormat("realalloc's numpy allocator: %s(%#zx)", call, (size_t)arg);
    PyErr_WriteUnraisable(where);
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

/* A kept block for `size` bytes, zeroed if `zero`; 0 if none. */
static inline uintptr_t np_take(np_state *st, size_t size, int zero) {
    uintptr_t addr = 0;
    size_t bytes = (size + NP_PAGE_MASK) & ~NP_PAGE_MASK;
    if (st->heap->h->stopped || (size > RA_SMALL_SIZE_MAX && size <= RA_MAX_SMALL_SIZE)) return 0;
    if (size <= RA_SMALL_SIZE_MAX) {
        uint32_t sc = ra_size_to_class8[(ra_c_size(size) + 7) >> 3];
        if (!st->nsmall[sc]) return 0;
        addr = st->small[sc][--st->nsmall[sc]];
        bytes = ra_class_to_size[sc];
    }
    for (uint32_t i = st->nlarge; !addr && i-- > 0;) { /* newest first */
        if (st->large[i].bytes != bytes) continue;
        addr = st->large[i].addr;
        memmove(&st->large[i], &st->large[i + 1], (--st->nlarge - i) * sizeof st->large[0]);
    }
    if (!addr) return 0;
    np_count(st, -1, -(int64_t)bytes);
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
    for (uint32_t i = 0; i < n; i++)
        if (st->small[sc][i] == addr) return -1;
    if (n >= st->small_max) return 0;
    st->small[sc][st->nsmall[sc]++] = addr;
    np_count(st, 1, (int64_t)usable);
    return 1;
}

/* Give a block np_count counted out of the kept ones back to the heap: 0, or
 * -1 with an exception set (the block is lost). */
static int np_give(np_state *st, uintptr_t addr) {
    if (ra_c_try_free(st->heap, addr, 0) || ra_c_free(st->heap, addr) == 0) return 0;
    st->heap->held--;
    return -1;
}

/* Give every kept block back (drop them if the heap is closed: its memory is
 * gone).  How many went back, or -1 with an exception set. */
static int np_flush(np_state *st) {
    int n = 0, closed = (st->heap->h->stopped & RA_CLOSED) != 0;
    for (uint32_t sc = 0; sc < NP_SMALL_CLASSES; sc++) {
        while (st->nsmall[sc]) {
            uintptr_t addr = st->small[sc][--st->nsmall[sc]];
            np_count(st, -1, -(int64_t)ra_class_to_size[sc]);
            if (!closed && np_give(st, addr) < 0) return -1;
            n += !closed;
        }
    }
    while (st->nlarge) {
        st->nlarge--;
        np_count(st, -1, -(int64_t)st->large[st->nlarge].bytes);
        if (!closed && np_give(st, st->large[st->nlarge].addr) < 0) return -1;
        n += !closed;
    }
    return n;
}

/* ---- steps that may run Python: 0 / -1 with an exception set, never reported */

/* `size` bytes for numpy, zeroed if `zero`: the address, or 0. */
static uintptr_t np_get(np_state *st, size_t size, int zero) {
    uintptr_t addr = np_take(st, size, zero);
    if (!addr) addr = ra_c_try_malloc(st->heap, size, zero);
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
        if (cls) PyErr_Format(cls, "free(%#zx): the object is already free", (size_t)addr);
        return Py_XDECREF(errors), Py_XDECREF(cls), -1;
    }
    size_t bytes = s && !sc && !h->stopped && st->large_max ? ra_usable(h, addr) : 0;
    if (!bytes || bytes > st->max_bytes) return ra_c_free(st->heap, addr);
    st->large[st->nlarge].addr = addr;
    st->large[st->nlarge++].bytes = bytes;
    np_count(st, 1, (int64_t)bytes);
    while (st->nlarge && (st->nlarge > st->large_max || st->kept_bytes > st->max_bytes)) {
        uintptr_t old = st->large[0].addr;
        np_count(st, -1, -(int64_t)st->large[0].bytes);
        memmove(&st->large[0], &st->large[1], --st->nlarge * sizeof st->large[0]);
        if (np_give(st, old) < 0) return -1;
    }
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
        PyObject *res = PyObject_CallMethod((PyObject *)heap, "usable_size", "K",
                                            (unsigned long long)addr);
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
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    uintptr_t addr = np_get(st, size, zero);
    if (!addr) np_report(st, zero ? "calloc" : "malloc", size);
    PyErr_Restore(et, ev, tb);
    return addr;
}

static void *np_malloc(void *ctx, size_t size) {
    np_state *st = ctx;
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
    NP_GIL_TAKE;
    st->n[NP_REALLOC]++;
    if (ptr && !np_owner(st->heap->h, addr)) {
        st->n[NP_FOREIGN]++;
        r = (uintptr_t)realloc(ptr, size);
    } else {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        r = ptr ? np_resize(st, addr, size) : np_get(st, size, 0);
        if (!r) np_report(st, "realloc", addr);
        PyErr_Restore(et, ev, tb);
    }
    NP_GIL_DROP;
    return (void *)r;
}

/* numpy passes the size it asked for; the heap knows better, so it is unused. */
static void np_free(void *ctx, void *ptr, size_t size) {
    np_state *st = ctx;
    uintptr_t addr = (uintptr_t)ptr;
    if (!ptr) return;
    NP_GIL_TAKE;
    st->n[NP_FREE]++;
    int kept = np_keep_small(st, addr);
    if (kept > 0 || (!kept && ra_c_try_free(st->heap, addr, 1))) { /* done in C */
    } else if (!kept && !ra_span_at(st->heap->h, addr) && !np_owner(st->heap->h, addr)) {
        st->n[NP_FOREIGN]++;
        free(ptr);
    } else {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        if (np_drop(st, addr) < 0) np_report(st, "free", addr);
        PyErr_Restore(et, ev, tb);
    }
    NP_GIL_DROP;
}

/* ---- the capsule and numpy's C API (module functions) ------------------- */

static void np_capsule_free(PyObject *capsule) {
    np_state *st = PyCapsule_GetPointer(capsule, NP_CAPSULE);
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    if (np_flush(st) < 0) np_report(st, "release_cache", 0);
    Py_DECREF(st->heap);
    PyErr_Restore(et, ev, tb);
    PyMem_RawFree(st);
}

/* The state behind a realalloc handler capsule, or NULL for any other object. */
static np_state *np_state_of(PyObject *capsule) {
    if (!PyCapsule_IsValid(capsule, NP_CAPSULE) ||
        PyCapsule_GetDestructor(capsule) != np_capsule_free)
        return NULL;
    return PyCapsule_GetPointer(capsule, NP_CAPSULE);
}

/* numpy_handler(heap, small_max, large_max, max_bytes) -> a "mem_handler"
 * capsule: the handler "realalloc" over `heap`, which the capsule's context
 * keeps alive, keeping freed blocks within those bounds. */
static PyObject *numpy_handler(PyObject *mod, PyObject *args) {
    HeapBase *heap;
    unsigned int small_max, large_max;
    Py_ssize_t max_bytes;
    if (!PyArg_ParseTuple(args, "O!IIn", &HeapBaseType, &heap, &small_max, &large_max, &max_bytes))
        return NULL;
    if (!heap->h || small_max > NP_SMALL_MAX || large_max > NP_LARGE_MAX || max_bytes < 0)
        return PyErr_Format(err_type, "numpy_handler: an attached heap, at most %d and %d kept "
                            "blocks, bytes >= 0", NP_SMALL_MAX, NP_LARGE_MAX);
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
 * (heap, counters by NP_*..., cached blocks, cached bytes). */
static PyObject *numpy_handler_info(PyObject *mod, PyObject *obj) {
    np_state *st = np_state_of(obj);
    if (!st) Py_RETURN_NONE;
    uint64_t *n = st->n;
    _Static_assert(NP_NCOUNTS == 8, "one K per counter below");
    return Py_BuildValue("(OKKKKKKKKIn)", st->heap, n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7],
                         st->nkept, (Py_ssize_t)st->kept_bytes);
}

/* numpy_release_cache(handler) -> blocks given back to the heap. */
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
    if (!PyArg_ParseTuple(args, "O|p", &capsule, &bind)) return NULL;
    void **api = PyCapsule_GetPointer(capsule, NULL);
    if (!api) return NULL;
    unsigned int abi = ((unsigned int (*)(void))api[NP_API_ABI])();
    unsigned int feature = ((unsigned int (*)(void))api[NP_API_FEATURE])();
    if (bind) np_api = api;
    return Py_BuildValue("(II)", abi, feature);
}

/* numpy_set_handler(handler or None) -> the previous one, in this context
 * (None: numpy's default). */
static PyObject *numpy_set_handler(PyObject *mod, PyObject *handler) {
    if (!np_api) return PyErr_Format(PyExc_RuntimeError, "numpy's C API is not bound");
    return ((PyObject * (*)(PyObject *)) np_api[NP_API_SET_HANDLER])(handler == Py_None ? NULL
                                                                                          : handler);
}

/* numpy_get_handler() -> the handler of this context. */
static PyObject *numpy_get_handler(PyObject *mod, PyObject *unused) {
    if (!np_api) return PyErr_Format(PyExc_RuntimeError, "numpy's C API is not bound");
    return ((PyObject * (*)(void)) np_api[NP_API_GET_HANDLER])();
}

/* The module functions above, one line in fastpath.c's method table. */
#define RA_NUMPY_METHODS                                                      \
    {"numpy_api", numpy_api, METH_VARARGS, NULL},                             \
    {"numpy_set_handler", numpy_set_handler, METH_O, NULL},                   \
    {"numpy_get_handler", numpy_get_handler, METH_NOARGS, NULL},              \
    {"numpy_handler", numpy_handler, METH_VARARGS, NULL},                     \
    {"numpy_handler_info", numpy_handler_info, METH_O, NULL},                 \
    {"numpy_release_cache", numpy_release_cache, METH_O, NULL},
