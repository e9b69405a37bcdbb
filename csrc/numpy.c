/*
 * realalloc as numpy's data allocator (NEP 49).  Included by fastpath.c, so it
 * runs the same fast path as Heap.malloc.  The Python side (installing, threads,
 * using(), the numbers below that Python sets): realalloc/integrations/numpy.py.
 *
 * numpy's headers are not needed: np_handler copies the layout of numpy's
 * PyDataMem_Handler (version 1), and numpy's C-API table is read from its
 * `_ARRAY_API` capsule at the NP_API_* slots, which are the same in numpy
 * 1.22-1.26 and 2.x (tests/test_numpy.py reads them from the installed numpy's
 * __multiarray_api.h).
 *
 * The four handler functions:
 * - GIL: numpy calls them with the GIL held, except realloc in fromstring and
 *   fromfile with `sep`; each takes it when it is not held (NP_GIL_TAKE).  The
 *   GIL guards the heap's `held` count and the handler's counters and cache.
 * - Never raise into numpy: a pending exception is saved and restored around
 *   every step that may run Python; an allocation that fails returns NULL
 *   (numpy raises its own MemoryError); anything else (ReentrancyError from a
 *   finalizer that ran inside a slow path, HeapClosedError, a bad pointer) is
 *   reported with PyErr_WriteUnraisable.  Re-entry never waits: the heap's
 *   lock refuses it, and C locks are never held while Python runs.
 * - Ownership by address: a pointer in one of the heap's arenas is the
 *   heap's; any other pointer came from numpy's default handler, so libc's
 *   free/realloc take it.
 * - Large objects (> 32 KiB, a span each, which Python makes) that numpy frees
 *   are kept for the next request of the same page count, up to the bounds
 *   Python set.  They count as in use in heap.stats() until reused or released
 *   (numpy_release_cache), but not in `held`: close() does not wait for them,
 *   and the cache of a closed heap is dropped, never reused.
 */

#define NP_API_ABI 0           /* PyArray_GetNDArrayCVersion */
#define NP_API_FEATURE 211     /* PyArray_GetNDArrayCFeatureVersion */
#define NP_API_SET_HANDLER 304 /* PyDataMem_SetHandler */
#define NP_API_GET_HANDLER 305 /* PyDataMem_GetHandler */
#define NP_CAPSULE "mem_handler"
#define NP_CACHE_MAX 16
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

/* ra_c_free's fast path alone (no Python runs): 1 if freed, else 0. */
static inline int ra_c_try_free(HeapBase *self, uintptr_t addr) {
    ra_heap *h = self->h;
    ra_tls_slot *t = !h->stopped ? my_slot(h) : NULL;
    if (!t || ra_free(h, addr, t->cache) != RA_OK) return 0;
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
       NP_CACHE_HITS, NP_NCOUNTS };

typedef struct {
    np_handler np;                   /* first: numpy finds it through the capsule */
    HeapBase *heap;                  /* = the capsule's context, a strong reference */
    uint64_t n[NP_NCOUNTS];          /* calls by NP_* */
    uint32_t slots, ncached;         /* large-object cache: Python's bound, blocks now */
    size_t max_bytes, cached_bytes;  /* ... in bytes */
    uintptr_t cache[NP_CACHE_MAX];   /* oldest first */
    size_t cache_bytes[NP_CACHE_MAX]; /* bytes of each block's span */
} np_state;

static void **np_api; /* numpy's C-API table: numpy_api(capsule, True) */

#define NP_GIL_TAKE                       \
    int np_gil_ = !PyGILState_Check();    \
    PyGILState_STATE np_gs_ = np_gil_ ? PyGILState_Ensure() : PyGILState_LOCKED
#define NP_GIL_DROP \
    if (np_gil_) PyGILState_Release(np_gs_)

/* After a failed step (exception set): a MemoryError is numpy's to raise (it
 * gets NULL); anything else is reported as unraisable, naming the call. */
static RA_COLD void np_report(np_state *st, const char *call, uintptr_t arg, int is_size) {
    st->n[NP_FAILED]++;
    if (PyErr_ExceptionMatches(PyExc_MemoryError)) {
        PyErr_Clear();
        return;
    }
    PyObject *where = is_size ? PyUnicode_FromFormat("realalloc's numpy allocator: %s(%zu)", call, (size_t)arg)
                              : PyUnicode_FromFormat("realalloc's numpy allocator: %s(%p)", call, (void *)arg);
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

/* ---- the cache of large objects ----------------------------------------- */

/* Give a cached block back to the heap: 0, or -1 with an exception set. */
static int np_give(np_state *st, uintptr_t addr) {
    st->heap->held++; /* ra_c_free counts it out again */
    if (ra_c_try_free(st->heap, addr) || ra_c_free(st->heap, addr) == 0) return 0;
    st->heap->held--;
    return -1;
}

static void np_cache_remove(np_state *st, uint32_t i) {
    st->cached_bytes -= st->cache_bytes[i];
    st->ncached--;
    memmove(&st->cache[i], &st->cache[i + 1], (st->ncached - i) * sizeof st->cache[0]);
    memmove(&st->cache_bytes[i], &st->cache_bytes[i + 1], (st->ncached - i) * sizeof(size_t));
}

/* A cached block for a large request of `size` bytes (same page count), or 0. */
static uintptr_t np_cache_take(np_state *st, size_t size) {
    size_t bytes = (size + NP_PAGE_MASK) & ~NP_PAGE_MASK;
    for (uint32_t i = st->ncached; i-- > 0;) { /* newest first */
        if (st->cache_bytes[i] != bytes) continue;
        uintptr_t addr = st->cache[i];
        np_cache_remove(st, i);
        st->heap->held++;
        st->n[NP_CACHE_HITS]++;
        return addr;
    }
    return 0;
}

/* Keep the large object at `addr` (its span: `bytes`), giving the oldest
 * blocks back beyond Python's bounds.  0, or -1 with an exception set. */
static int np_cache_put(np_state *st, uintptr_t addr, size_t bytes) {
    for (uint32_t i = 0; i < st->ncached; i++) {
        if (st->cache[i] != addr) continue;
        PyObject *errors = PyImport_ImportModule("realalloc.errors");
        PyObject *cls = errors ? PyObject_GetAttrString(errors, "DoubleFreeError") : NULL;
        if (cls) PyErr_Format(cls, "free(%#zx): the object is already free", (size_t)addr);
        Py_XDECREF(errors), Py_XDECREF(cls);
        return -1;
    }
    while (st->ncached && (st->ncached == st->slots || st->cached_bytes + bytes > st->max_bytes)) {
        uintptr_t old = st->cache[0];
        np_cache_remove(st, 0);
        if (np_give(st, old) < 0) return -1;
    }
    st->cache[st->ncached] = addr;
    st->cache_bytes[st->ncached++] = bytes;
    st->cached_bytes += bytes;
    st->heap->held--;
    return 0;
}

/* Give every cached block back (drop them if the heap is closed: its memory
 * is gone).  How many went back, or -1 with an exception set. */
static int np_flush(np_state *st) {
    int n = 0;
    while (st->ncached) {
        uintptr_t addr = st->cache[st->ncached - 1];
        np_cache_remove(st, st->ncached - 1);
        if (st->heap->h->stopped & RA_CLOSED) continue;
        if (np_give(st, addr) < 0) return -1;
        n++;
    }
    return n;
}

/* ---- allocation steps: 0 / -1 with an exception set, never reported ------ */

/* `size` bytes for numpy, zeroed if `zero`: the address, or 0. */
static uintptr_t np_get(np_state *st, size_t size, int zero) {
    HeapBase *heap = st->heap;
    uintptr_t addr = ra_c_try_malloc(heap, size, zero);
    if (addr) return addr;
    if (size > RA_MAX_SMALL_SIZE && st->ncached && !heap->h->stopped &&
        (addr = np_cache_take(st, size))) {
        if (zero) memset((void *)addr, 0, size);
        return addr;
    }
    addr = ra_c_malloc(heap, size, zero);
    if (!addr && st->ncached && PyErr_ExceptionMatches(PyExc_MemoryError)) {
        PyErr_Clear(); /* a memory limit: the cache may hold what it needs */
        if (np_flush(st) >= 0) addr = ra_c_malloc(heap, size, zero);
    }
    return addr;
}

/* Free the heap's object at `addr`: into the cache if large, else back. */
static int np_drop(np_state *st, uintptr_t addr) {
    ra_heap *h = st->heap->h;
    ra_span *s = ra_span_at(h, addr);
    size_t bytes = s && s->spanclass < 2 && !h->stopped && st->slots ? ra_usable(h, addr) : 0;
    if (bytes && bytes <= st->max_bytes) return np_cache_put(st, addr, bytes);
    return ra_c_free(st->heap, addr);
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
        if (np_drop(st, addr) < 0) np_report(st, "realloc", addr, 0); /* the data moved anyway */
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
    if (!addr) np_report(st, zero ? "calloc" : "malloc", size, 1);
    PyErr_Restore(et, ev, tb);
    return addr;
}

static void *np_malloc(void *ctx, size_t size) {
    np_state *st = ctx;
    NP_GIL_TAKE;
    st->n[NP_MALLOC]++;
    uintptr_t addr = ra_c_try_malloc(st->heap, size, 0);
    if (!addr) addr = np_slow_get(st, size, 0);
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
    else if (!(addr = ra_c_try_malloc(st->heap, size, 1))) addr = np_slow_get(st, size, 1);
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
        if (!r) np_report(st, "realloc", addr, 0);
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
    ra_span *s = ra_span_at(st->heap->h, addr);
    if (s && s->spanclass >= 2 && ra_c_try_free(st->heap, addr)) {
        /* a small object, freed in C */
    } else if (!s && !np_owner(st->heap->h, addr)) {
        st->n[NP_FOREIGN]++;
        free(ptr);
    } else {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        if (np_drop(st, addr) < 0) np_report(st, "free", addr, 0);
        PyErr_Restore(et, ev, tb);
    }
    NP_GIL_DROP;
}

/* ---- the capsule and numpy's C API (module functions) ------------------- */

static void np_capsule_free(PyObject *capsule) {
    np_state *st = PyCapsule_GetPointer(capsule, NP_CAPSULE);
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    if (np_flush(st) < 0) np_report(st, "release_cache", 0, 0);
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

/* numpy_handler(heap, cache_slots, cache_bytes) -> a "mem_handler" capsule:
 * the handler "realalloc" over `heap`, which the capsule's context keeps alive. */
static PyObject *numpy_handler(PyObject *mod, PyObject *args) {
    HeapBase *heap;
    unsigned int slots;
    Py_ssize_t max_bytes;
    if (!PyArg_ParseTuple(args, "O!In", &HeapBaseType, &heap, &slots, &max_bytes)) return NULL;
    if (!heap->h || slots > NP_CACHE_MAX || max_bytes < 0)
        return PyErr_Format(err_type, "numpy_handler: an attached heap, at most %d cache slots "
                            "and cache bytes >= 0", NP_CACHE_MAX);
    np_state *st = PyMem_RawCalloc(1, sizeof *st);
    if (!st) return PyErr_NoMemory();
    strcpy(st->np.name, "realalloc");
    st->np.version = 1;
    st->np.allocator = (np_allocator){st, np_malloc, np_calloc, np_realloc, np_free};
    st->heap = heap;
    st->slots = slots;
    st->max_bytes = (size_t)max_bytes;
    PyObject *capsule = PyCapsule_New(&st->np, NP_CAPSULE, np_capsule_free);
    if (!capsule) {
        PyMem_RawFree(st);
        return NULL;
    }
    PyCapsule_SetContext(capsule, Py_NewRef(heap)); /* the destructor drops it */
    return capsule;
}

/* numpy_handler_info(obj) -> None if obj is not a realalloc handler, else
 * (heap, counters by NP_*..., cached blocks, cached bytes). */
static PyObject *numpy_handler_info(PyObject *mod, PyObject *obj) {
    np_state *st = np_state_of(obj);
    if (!st) Py_RETURN_NONE;
    PyObject *r = PyTuple_New(1 + NP_NCOUNTS + 2);
    if (!r) return NULL;
    PyTuple_SET_ITEM(r, 0, Py_NewRef(st->heap));
    for (int i = 0; i <= NP_NCOUNTS + 1; i++) {
        uint64_t v = i < NP_NCOUNTS ? st->n[i] : i == NP_NCOUNTS ? st->ncached : st->cached_bytes;
        PyObject *item = PyLong_FromUnsignedLongLong(v);
        if (!item) return Py_DECREF(r), NULL;
        PyTuple_SET_ITEM(r, 1 + i, item);
    }
    return r;
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
