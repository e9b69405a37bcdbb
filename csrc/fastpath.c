/*
 * realalloc._fast: the CPython entry points (typed in realalloc/_fast.pyi).
 * A CPython extension beside the cffi module because a cffi function takes no
 * keywords, packs tuples, releases the GIL and cannot raise.  The fast path
 * runs C only; Python runs in the three slow paths Heap declares, resolved
 * once by _attach.  Life cycle (active calls, stopping the world, Buffers):
 * see realalloc/core/heap.py.  A thread already inside the heap never waits
 * for a stop (it would wait for itself).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <structmember.h>
#include <time.h>

#include "central.h"

#define RA_STOPPED 1u /* h->stopped bits */
#define RA_CLOSED 2u
#define RA_TRACEMALLOC_DOMAIN 0x7261 /* "ra": realalloc's tracemalloc domain */

/* This thread's slot for each heap, tagged with the heap's generation so a
 * slot reused by a newer heap starts afresh.  Only the owning thread touches
 * it.  initial-exec: one pointer of static TLS, no __tls_get_addr call. */
typedef struct {
    uint64_t gen;
    ra_mcache *cache;
    uint64_t depth; /* this thread's calls inside the heap */
} ra_tls_slot;

static __thread ra_tls_slot *tls_slots __attribute__((tls_model("initial-exec")));
static pthread_key_t tls_key;

static PyObject *err_closed, *err_reentrant, *err_freed, *err_type; /* set_errors() */
static int tracing; /* tracemalloc traces: set by realalloc/integrations/tracing.py, and
                       checked again at every refill (PyTraceMalloc_* cost calls otherwise) */
static PyObject *str_scan, *str_zero, *kw_zero;

static inline ra_tls_slot *my_slot(const ra_heap *h) {
    if (!tls_slots) {
        tls_slots = calloc(RA_MAX_HEAPS, sizeof *tls_slots);
        if (!tls_slots) return NULL;
        pthread_setspecific(tls_key, tls_slots); /* freed when the thread ends */
    }
    ra_tls_slot *t = &tls_slots[h->slot];
    if (t->gen != h->gen) *t = (ra_tls_slot){h->gen, NULL, 0};
    return t;
}

typedef struct Buffer Buffer;
enum { SLOW_MALLOC, SLOW_FREE, SLOW_GROW }; /* Heap._malloc_slow, _free_slow, _grow_central */

typedef struct {
    PyObject_HEAD
    ra_heap *h;               /* NULL until _attach */
    PyObject *slow[3];        /* the declared slow paths, by SLOW_* */
    int64_t active;           /* calls inside the heap, all threads */
    int zero;                 /* malloc's default for zero= (Heap(zero=...)) */
    unsigned long stw_owner;  /* thread that stopped the world */
    Py_ssize_t exports;       /* views of its Buffers exported now */
    Py_ssize_t held;          /* allocations held by C clients (numpy arrays) */
    PyObject *weakrefs;
} HeapBase;

struct Buffer {
    PyObject_HEAD
    HeapBase *heap;           /* kept alive while the buffer lives */
    uintptr_t addr;
    Py_ssize_t size;
    Py_ssize_t exports;       /* live views of the memory */
    char freed;               /* its heap's close frees it too: see buffer_usable */
    PyObject *weakrefs;
};

/* ---- entering, waiting, stopping ---------------------------------------- */

static int stopped_by_other(HeapBase *self) {
    return (self->h->stopped & RA_STOPPED) && self->stw_owner != PyThread_get_thread_ident();
}

static int others_active(HeapBase *self) {
    ra_tls_slot *t = my_slot(self->h);
    return t && self->active > (int64_t)t->depth;
}

/* Wait, GIL released, while busy(self); signal handlers run meanwhile. */
static int wait_while(HeapBase *self, int (*busy)(HeapBase *)) {
    long ns = 20000;
    while (busy(self)) {
        Py_BEGIN_ALLOW_THREADS
        nanosleep(&(struct timespec){0, ns}, NULL);
        Py_END_ALLOW_THREADS
        if (ns < 1000000) ns *= 2;
        if (PyErr_CheckSignals() < 0) return -1;
    }
    return 0;
}

static int heap_enter(HeapBase *self) {
    ra_tls_slot *t = self->h ? my_slot(self->h) : NULL;
    if (!t) return PyErr_NoMemory(), -1;
    if (!t->depth && wait_while(self, stopped_by_other) < 0) return -1;
    if (self->h->stopped & RA_CLOSED) return PyErr_SetString(err_closed, "the heap is closed"), -1;
    self->active++;
    t->depth++;
    return 0;
}

static void heap_leave(HeapBase *self) {
    self->active--;
    my_slot(self->h)->depth--;
}

/* fn(*args) inside the heap.  A Python `with` could be cut short between its
 * body and __exit__ (KeyboardInterrupt, a trace function) and leave the heap
 * entered for good; here nothing in Python comes between the two steps. */
static PyObject *call_inside(HeapBase *self, PyObject *fn, PyObject *const *args, size_t nargs,
                             PyObject *kwnames) {
    if (heap_enter(self) < 0) return NULL;
    PyObject *r = PyObject_Vectorcall(fn, args, nargs, kwnames);
    heap_leave(self);
    return r;
}

/* func(self, *args, **kwnames) inside the heap. */
static RA_COLD PyObject *call_slow(HeapBase *self, PyObject *func, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames) {
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *stack[8];
    if (!func || 1 + nargs + nkw > 8) return PyErr_Format(err_type, "not an attached heap call");
    tracing = PyTraceMalloc_Untrack(RA_TRACEMALLOC_DOMAIN, 0) != -2; /* -2: not tracing */
    stack[0] = (PyObject *)self;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++) stack[1 + i] = args[i];
    return call_inside(self, func, stack, 1 + nargs, kwnames);
}

/* ---- malloc and free ----------------------------------------------------- */

/* Refill the cache's span for this request (C), asking Python for spans
 * when the class has none with room; then allocate.  0 with an exception
 * set on failure. */
static RA_COLD uintptr_t refill_and_malloc(HeapBase *self, ra_mcache *c, size_t size, int noscan, int zero) {
    ra_heap *h = self->h;
    uint32_t spc = ra_class_for(size, noscan);
    tracing = PyTraceMalloc_Untrack(RA_TRACEMALLOC_DOMAIN, 0) != -2; /* -2: not tracing */
    for (int tries = 0; tries < 16; tries++) { /* threads may take a batch, or a GC its room, first */
        if (ra_refill(h, c, spc) == RA_NEED_SPANS) {
            PyObject *arg = PyLong_FromUnsignedLong(spc);
            PyObject *r = arg ? call_slow(self, self->slow[SLOW_GROW], &arg, 1, NULL) : NULL;
            Py_XDECREF(arg);
            if (!r) return 0;
            Py_DECREF(r);
            continue; /* the batch is on the central list now */
        }
        uintptr_t addr = ra_malloc_small(h, c, size, noscan, zero);
        if (addr) return addr;
    }
    PyErr_Format(PyExc_AssertionError, "CACHE-1: span class %u has no free slot after refills", spc);
    return 0;
}

/* The fast path of malloc: the address, or 0 with *slow = 1 when Python must
 * do it (or *slow = 0 and an exception set). */
static uintptr_t fast_malloc(HeapBase *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames, int *slow) {
    int noscan = 1, zero = self->zero, overflow;
    ra_heap *h = self->h;
    *slow = 1;
    if (nargs != 1 || !PyLong_CheckExact(args[0]) || !h) return 0;
    for (Py_ssize_t i = 0; kwnames && i < PyTuple_GET_SIZE(kwnames); i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i), *value = args[nargs + i];
        if (value != Py_True && value != Py_False) return 0;
        if (key == str_scan) noscan = value == Py_False;
        else if (key == str_zero) zero = value == Py_True;
        else return 0;
    }
    long long size = PyLong_AsLongLongAndOverflow(args[0], &overflow);
    ra_tls_slot *t = my_slot(h);
    uintptr_t addr;
    /* Stopped: Python waits, unless this thread is inside the heap already
     * (a slow path's own malloc): the stopper waits for it instead. */
    if (overflow || size < 0 || !t || (h->stopped && !t->depth)) return 0;
    if (size > RA_MAX_SMALL_SIZE) {
        if (!(addr = ra_large_reuse(h, (uint64_t)size, noscan, zero))) return 0;
    } else {
        if (!t->cache) return 0;
        *slow = 0;
        addr = ra_malloc_small(h, t->cache, (size_t)size, noscan, zero);
        if (!addr && !(addr = refill_and_malloc(self, t->cache, (size_t)size, noscan, zero))) return 0;
    }
    *slow = 0;
    if (tracing) PyTraceMalloc_Track(RA_TRACEMALLOC_DOMAIN, addr, (size_t)size);
    return addr;
}

/* HeapBase.malloc(size, *, scan=False, zero=True) -> int */
static PyObject *heap_malloc(HeapBase *self, PyObject *const *args, Py_ssize_t nargsf,
                             PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    int slow;
    uintptr_t addr = fast_malloc(self, args, nargs, kwnames, &slow);
    if (addr) return PyLong_FromUnsignedLong(addr);
    if (!slow) return NULL;
    PyObject *r = call_slow(self, self->slow[SLOW_MALLOC], args, nargs, kwnames);
    if (r && tracing) /* the slow path accepted exactly one int size */
        PyTraceMalloc_Track(RA_TRACEMALLOC_DOMAIN, PyLong_AsUnsignedLong(r),
                            (size_t)PyLong_AsSsize_t(args[0]));
    return r;
}

/* Free the object at `addr` (`arg`: the Python object it came as, or NULL;
 * `addr` 0 if it is not a plain address): 0, or -1 with an exception set. */
static int free_addr(HeapBase *self, PyObject *arg, uintptr_t addr) {
    ra_heap *h = self->h;
    ra_tls_slot *t = h && addr && !h->stopped ? my_slot(h) : NULL;
    if (!t || ra_free(h, addr, t->cache) != RA_OK) {
        PyObject *own = arg ? NULL : PyLong_FromUnsignedLong(addr);
        PyObject *r = arg || own ? call_slow(self, self->slow[SLOW_FREE], arg ? &arg : &own, 1, NULL)
                                 : NULL;
        Py_XDECREF(own);
        if (!r) return -1;
        Py_DECREF(r);
    }
    if (tracing) PyTraceMalloc_Untrack(RA_TRACEMALLOC_DOMAIN, addr);
    return 0;
}

/* HeapBase.free(addr) -> None */
static PyObject *heap_free(HeapBase *self, PyObject *arg) {
    uintptr_t addr = PyLong_CheckExact(arg) ? (uintptr_t)PyLong_AsUnsignedLong(arg) : 0;
    if (addr == (uintptr_t)-1 && PyErr_Occurred()) PyErr_Clear(), addr = 0; /* Python says why */
    return free_addr(self, arg, addr) < 0 ? NULL : Py_NewRef(Py_None);
}

/* ---- Buffer ---------------------------------------------------------------- */

static PyTypeObject BufferType;

/* HeapBase.alloc(size, *, scan=False, zero=True) -> Buffer */
static PyObject *heap_alloc(HeapBase *self, PyObject *const *args, Py_ssize_t nargsf,
                            PyObject *kwnames) {
    PyObject *addr_obj = heap_malloc(self, args, nargsf, kwnames);
    if (!addr_obj) return NULL;
    uintptr_t addr = (uintptr_t)PyLong_AsUnsignedLong(addr_obj);
    Py_DECREF(addr_obj);
    Buffer *b = PyObject_New(Buffer, &BufferType);
    if (!b) return free_addr(self, NULL, addr), NULL;
    b->addr = addr;
    b->size = PyLong_AsSsize_t(args[0]); /* malloc accepted it: an int in range */
    b->heap = (HeapBase *)Py_NewRef(self);
    b->exports = 0, b->freed = 0, b->weakrefs = NULL;
    return (PyObject *)b;
}

static int buffer_live(Buffer *self) {
    return !self->freed && !(self->heap->h->stopped & RA_CLOSED);
}

static int buffer_usable(Buffer *self) {
    if (buffer_live(self)) return 1;
    PyErr_Format(err_freed, "Buffer of %zd bytes at %p was freed", self->size, (void *)self->addr);
    return 0;
}

static PyObject *buffer_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    return PyErr_Format(err_type, "Buffer objects are made by Heap.alloc(size)");
}

static int buffer_getbuffer(Buffer *self, Py_buffer *view, int flags) {
    if (!buffer_usable(self)) {
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, (void *)self->addr, self->size, 0, flags) < 0)
        return -1;
    self->exports++;
    self->heap->exports++;
    return 0;
}

static void buffer_releasebuffer(Buffer *self, Py_buffer *view) {
    self->exports--;
    self->heap->exports--;
}

static PyBufferProcs buffer_as_buffer = {(getbufferproc)buffer_getbuffer,
                                         (releasebufferproc)buffer_releasebuffer};

static PyObject *buffer_free(Buffer *self, PyObject *unused) {
    if (!buffer_usable(self)) return NULL;
    if (self->exports > 0)
        return PyErr_Format(PyExc_BufferError,
                            "cannot free Buffer at %p: %zd exported view(s) still use its memory",
                            (void *)self->addr, self->exports);
    if (free_addr(self->heap, NULL, self->addr) < 0) return NULL;
    self->freed = 1;
    Py_RETURN_NONE;
}

static PyObject *buffer_enter(Buffer *self, PyObject *unused) {
    return buffer_usable(self) ? Py_NewRef(self) : NULL;
}

static PyObject *buffer_exit(Buffer *self, PyObject *args) {
    return self->freed ? Py_NewRef(Py_None) : buffer_free(self, NULL);
}

static PyObject *buffer_address(Buffer *self, void *closure) {
    return buffer_usable(self) ? PyLong_FromUnsignedLongLong(self->addr) : NULL;
}

static Py_ssize_t buffer_len(Buffer *self) { return buffer_usable(self) ? self->size : -1; }

static PyObject *buffer_repr(Buffer *self) {
    return PyUnicode_FromFormat("<realalloc.Buffer %zd bytes at %p%s>", self->size,
                                (void *)self->addr, self->freed ? " (freed)" : "");
}

static void buffer_dealloc(Buffer *self) {
    if (self->weakrefs) PyObject_ClearWeakRefs((PyObject *)self);
    if (buffer_live(self)) { /* collected while allocated: give the memory back (a close
                                meanwhile took it already: HeapClosedError is no news) */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb); /* an exception may be in flight around us */
        if (free_addr(self->heap, NULL, self->addr) < 0 && !PyErr_ExceptionMatches(err_closed))
            PyErr_WriteUnraisable((PyObject *)self->heap); /* not self: refcount 0 */
        PyErr_Restore(et, ev, tb);
    }
    Py_DECREF(self->heap);
    PyObject_Free(self);
}

static PyMethodDef buffer_methods[] = {
    {"free", (PyCFunction)buffer_free, METH_NOARGS, "Free the memory; BufferError while views exist."},
    {"__enter__", (PyCFunction)buffer_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)buffer_exit, METH_VARARGS, NULL},
    {NULL},
};

static PyGetSetDef buffer_getset[] = {
    {"address", (getter)buffer_address, NULL, "Address of the first byte.", NULL},
    {NULL},
};

static PyMemberDef buffer_members[] = {
    {"size", T_PYSSIZET, offsetof(Buffer, size), READONLY, "Bytes requested."},
    {"freed", T_BOOL, offsetof(Buffer, freed), READONLY, "True once the memory was freed."},
    {"exports", T_PYSSIZET, offsetof(Buffer, exports), READONLY, "Views currently exported."},
    {NULL},
};

static PySequenceMethods buffer_as_sequence = {.sq_length = (lenfunc)buffer_len};

static PyTypeObject BufferType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "realalloc.Buffer",
    .tp_basicsize = sizeof(Buffer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One allocation as a writable buffer (memoryview, numpy, ctypes), made by\n"
              "Heap.alloc.  Freed when collected; free() while views exist: BufferError.",
    .tp_new = buffer_new,
    .tp_dealloc = (destructor)buffer_dealloc,
    .tp_as_buffer = &buffer_as_buffer,
    .tp_as_sequence = &buffer_as_sequence,
    .tp_methods = buffer_methods,
    .tp_getset = buffer_getset,
    .tp_members = buffer_members,
    .tp_repr = (reprfunc)buffer_repr,
    .tp_weaklistoffset = offsetof(Buffer, weakrefs),
};

/* ---- HeapBase ------------------------------------------------------------ */

/* _attach(heap_address, zero): bind the C heap; resolve the slow paths once. */
static PyObject *heap_attach(HeapBase *self, PyObject *args) {
    PyObject *addr;
    if (self->h) return PyErr_Format(PyExc_RuntimeError, "heap is already attached");
    if (!PyArg_ParseTuple(args, "Op", &addr, &self->zero)) return NULL;
    ra_heap *h = (ra_heap *)PyLong_AsVoidPtr(addr);
    if (!h) return NULL;
    static const char *names[3] = {"_malloc_slow", "_free_slow", "_grow_central"}; /* SLOW_* */
    for (int i = 0; i < 3; i++)
        if (!(self->slow[i] = PyObject_GetAttrString((PyObject *)Py_TYPE(self), names[i]))) return NULL;
    self->h = h;
    Py_RETURN_NONE;
}

/* _stop_world(): run alone in this heap until _start_world(). */
static PyObject *heap_stop_world(HeapBase *self, PyObject *unused) {
    ra_heap *h = self->h;
    ra_tls_slot *t = my_slot(h);
    if (!t) return PyErr_NoMemory();
    if (t->depth || ((h->stopped & RA_STOPPED) && self->stw_owner == PyThread_get_thread_ident()))
        return PyErr_Format(err_reentrant, "a call inside the heap on this thread (a finalizer or "
                                           "signal handler?) cannot stop the heap's other threads");
    if (wait_while(self, stopped_by_other) < 0) return NULL;
    if (h->stopped & RA_CLOSED) return PyErr_Format(err_closed, "the heap is closed");
    h->stopped |= RA_STOPPED;
    self->stw_owner = PyThread_get_thread_ident();
    if (wait_while(self, others_active) == 0) Py_RETURN_NONE;
    h->stopped &= ~RA_STOPPED; /* interrupted while others finished: nothing stopped */
    self->stw_owner = 0;
    return NULL;
}

static PyObject *heap_start_world(HeapBase *self, PyObject *unused) {
    if (self->stw_owner != PyThread_get_thread_ident()) Py_RETURN_NONE;
    self->h->stopped &= ~RA_STOPPED;
    self->stw_owner = 0;
    Py_RETURN_NONE;
}

/* _close_buffers(): BufferError while a Buffer is exported, else mark the heap
 * closed (its Buffers then count as freed). */
static PyObject *heap_close_buffers(HeapBase *self, PyObject *unused) {
    if (self->exports || self->held)
        return PyErr_Format(PyExc_BufferError, "cannot close the heap: %zd exported view(s) of its"
                            " Buffers and %zd numpy array(s) still use its memory", self->exports, self->held);
    self->h->stopped |= RA_CLOSED;
    Py_RETURN_NONE;
}

/* _set_cache(cache_address): this thread's cache for this heap. */
static PyObject *heap_set_cache(HeapBase *self, PyObject *arg) {
    ra_tls_slot *t = self->h ? my_slot(self->h) : NULL;
    if (!t) return PyErr_NoMemory();
    t->cache = (ra_mcache *)PyLong_AsVoidPtr(arg);
    return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
}

/* _inside(fn, *args): fn(*args) inside the heap (see call_inside). */
static PyObject *heap_inside(HeapBase *self, PyObject *const *args, Py_ssize_t n) {
    if (n < 1 || !self->h) return PyErr_Format(err_type, "_inside(fn, *args) of an attached heap");
    return call_inside(self, args[0], args + 1, n - 1, NULL);
}

/* _alone(fn, *args): fn(*args) with the world stopped, started again however fn ends. */
static PyObject *heap_alone(HeapBase *self, PyObject *const *args, Py_ssize_t n) {
    if (n < 1 || !self->h) return PyErr_Format(err_type, "_alone(fn, *args) of an attached heap");
    PyObject *stopped = heap_stop_world(self, NULL);
    if (!stopped) return NULL;
    Py_DECREF(stopped);
    PyObject *r = PyObject_Vectorcall(args[0], args + 1, n - 1, NULL);
    heap_start_world(self, NULL); /* cannot fail: leaves any exception as it is */
    return r;
}

static PyMethodDef heap_methods[] = {
    {"malloc", (PyCFunction)(void (*)(void))heap_malloc, METH_FASTCALL | METH_KEYWORDS,
     "malloc(size, *, scan=False, zero=True) -> int\n\nAllocate size bytes; return the address."},
    {"free", (PyCFunction)heap_free, METH_O, "free(addr)\n\nFree the object at addr."},
    {"alloc", (PyCFunction)(void (*)(void))heap_alloc, METH_FASTCALL | METH_KEYWORDS,
     "alloc(size, *, scan=False, zero=True) -> Buffer\n\nAllocate size bytes as a Buffer."},
    {"_attach", (PyCFunction)heap_attach, METH_VARARGS, NULL},
    {"_stop_world", (PyCFunction)heap_stop_world, METH_NOARGS, NULL},
    {"_start_world", (PyCFunction)heap_start_world, METH_NOARGS, NULL},
    {"_close_buffers", (PyCFunction)heap_close_buffers, METH_NOARGS, NULL},
    {"_set_cache", (PyCFunction)heap_set_cache, METH_O, NULL},
    {"_inside", (PyCFunction)(void (*)(void))heap_inside, METH_FASTCALL, NULL},
    {"_alone", (PyCFunction)(void (*)(void))heap_alone, METH_FASTCALL, NULL},
    {NULL},
};

static int heap_traverse(HeapBase *self, visitproc visit, void *arg) {
    for (int i = 0; i < 3; i++) Py_VISIT(self->slow[i]);
    return 0;
}

static int heap_clear(HeapBase *self) {
    for (int i = 0; i < 3; i++) Py_CLEAR(self->slow[i]);
    return 0;
}

static void heap_dealloc(HeapBase *self) {
    PyObject_GC_UnTrack(self);
    if (self->weakrefs) PyObject_ClearWeakRefs((PyObject *)self);
    heap_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject HeapBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "realalloc._fast.HeapBase",
    .tp_basicsize = sizeof(HeapBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "C half of realalloc.Heap: the malloc/free fast path.",
    .tp_methods = heap_methods,
    .tp_new = PyType_GenericNew,
    .tp_traverse = (traverseproc)heap_traverse,
    .tp_clear = (inquiry)heap_clear,
    .tp_weaklistoffset = offsetof(HeapBase, weakrefs),
    .tp_dealloc = (destructor)heap_dealloc,
};

#include "numpy.c" /* numpy's data allocator: its own file, with the statics above */
#include "gc.c"    /* garbage collection kernels (gc_methods): likewise */

/* ---- module ------------------------------------------------------------- */

/* set_tracing(flag): whether tracemalloc traces (realalloc/integrations/tracing.py). */
static PyObject *set_tracing(PyObject *mod, PyObject *flag) {
    tracing = PyObject_IsTrue(flag) > 0;
    Py_RETURN_NONE;
}

/* set_errors(closed, reentrant, freed, argtype): realalloc's exception classes. */
static PyObject *set_errors(PyObject *mod, PyObject *args) {
    PyObject *e[4], **to[4] = {&err_closed, &err_reentrant, &err_freed, &err_type};
    if (!PyArg_ParseTuple(args, "OOOO", &e[0], &e[1], &e[2], &e[3])) return NULL;
    for (int i = 0; i < 4; i++) Py_XSETREF(*to[i], Py_NewRef(e[i]));
    Py_RETURN_NONE;
}

/* locked(lock, fn, *args): fn(*args) holding lock (acquire/release), released
 * however fn ends; as with call_inside, no Python line comes between. */
static PyObject *locked(PyObject *mod, PyObject *const *args, Py_ssize_t n) {
    if (n < 2) return PyErr_Format(err_type, "locked(lock, fn, *args)");
    PyObject *ok = PyObject_CallMethod(args[0], "acquire", NULL);
    if (!ok) return NULL;
    Py_DECREF(ok);
    PyObject *r = PyObject_Vectorcall(args[1], args + 2, n - 2, NULL), *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    ok = PyObject_CallMethod(args[0], "release", NULL);
    if (ok) PyErr_Restore(et, ev, tb), Py_DECREF(ok);
    else Py_XDECREF(et), Py_XDECREF(ev), Py_XDECREF(tb), Py_XDECREF(r), r = NULL; /* its error wins */
    return r;
}

static PyMethodDef module_methods[] = {
    {"locked", (PyCFunction)(void (*)(void))locked, METH_FASTCALL, NULL},
    {"set_errors", set_errors, METH_VARARGS, NULL},
    {"set_tracing", set_tracing, METH_O, NULL},
    RA_NUMPY_METHODS /* csrc/numpy.c */
    {NULL},
};

static struct PyModuleDef fastmodule = {
    PyModuleDef_HEAD_INIT,
    .m_name = "realalloc._fast",
    .m_doc = "realalloc's CPython fast path.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__fast(void) {
    if (pthread_key_create(&tls_key, free)) return PyErr_NoMemory();
    err_closed = Py_NewRef(PyExc_RuntimeError);
    err_reentrant = Py_NewRef(PyExc_RuntimeError);
    err_freed = Py_NewRef(PyExc_ValueError);
    err_type = Py_NewRef(PyExc_TypeError);
    str_scan = PyUnicode_InternFromString("scan");
    str_zero = PyUnicode_InternFromString("zero");
    if (!str_scan || !str_zero || !(kw_zero = PyTuple_Pack(1, str_zero))) return NULL;
    if (PyType_Ready(&HeapBaseType) < 0 || PyType_Ready(&BufferType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fastmodule);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "HeapBase", (PyObject *)&HeapBaseType) < 0 ||
        PyModule_AddObjectRef(m, "Buffer", (PyObject *)&BufferType) < 0 ||
        PyModule_AddStringConstant(m, "VERSION", RA_PACKAGE_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "TRACEMALLOC_DOMAIN", RA_TRACEMALLOC_DOMAIN) < 0 ||
        PyModule_AddIntConstant(m, "STOPPED", RA_STOPPED) < 0 ||
        PyModule_AddIntConstant(m, "CLOSED", RA_CLOSED) < 0 || PyModule_AddFunctions(m, gc_methods) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
