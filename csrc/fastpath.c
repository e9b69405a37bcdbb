/*
 * realalloc._fast: the CPython entry points of the allocation fast path.
 * See realalloc/__init__.py for the overview and csrc/spanbits.h for the
 * kernels these call.
 *
 * Why a CPython extension beside the cffi shim: a cffi function takes no
 * keyword arguments, pays tuple packing for two or more arguments, and
 * cannot raise a Python exception.  HeapBase.malloc(size, *, scan, zero) and
 * HeapBase.free(addr) must each be one call with no Python code on the way
 * and must raise realalloc's own errors.  So they are vectorcall methods
 * here; on any miss, error or unusual argument they call the Python slow
 * path (Heap._refill, Heap._malloc_slow, Heap._free_slow), which owns
 * every decision and every message.
 *
 * Buffer is the object returned by Heap.alloc: a buffer-protocol view of
 * one allocation that counts its exports, so free() while a memoryview or
 * array still uses the memory raises BufferError, as mmap.close() does.
 *
 * Thread-local caches: tls_cache[slot] holds this thread's ra_mcache for the
 * heap in that slot, tagged with the heap's unique generation so a closed
 * heap's slot reused by a new heap never matches.  Only the owning thread
 * reads or writes its entries: no lock.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "spanbits.h"

static __thread struct {
    uint64_t gen;
    ra_mcache *cache;
} tls_cache[RA_MAX_HEAPS];

static PyObject *str_malloc_slow, *str_free_slow, *str_refill, *str_free, *str_scan,
    *str_zero;
static PyObject *freed_buffer_error; /* realalloc.errors.BufferFreedError, set by Python */

typedef struct {
    PyObject_HEAD
    ra_heap *h;               /* NULL until _bind */
    ra_heap_arena **const *l1; /* the shim's arena index */
    PyObject *weakrefs;
} HeapBase;

static inline ra_mcache *my_cache(ra_heap *h) {
    return tls_cache[h->slot].gen == h->gen ? tls_cache[h->slot].cache : NULL;
}

/* self.<name>(*args, **kwnames) with vectorcall arguments. */
static PyObject *call_slow(PyObject *self, PyObject *name, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames) {
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *stack[8];
    if (1 + nargs + nkw > 8) {
        PyErr_SetString(PyExc_TypeError, "malloc() takes one size and the keywords scan and zero");
        return NULL;
    }
    stack[0] = self;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++) stack[1 + i] = args[i];
    return PyObject_VectorcallMethod(name, stack, (1 + nargs) | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     kwnames);
}

/* self.<name>(value) */
static PyObject *call_with_int(PyObject *self, PyObject *name, unsigned long long value) {
    PyObject *arg = PyLong_FromUnsignedLongLong(value);
    if (!arg) return NULL;
    PyObject *r = PyObject_CallMethodOneArg(self, name, arg);
    Py_DECREF(arg);
    return r;
}

/* HeapBase.malloc(size, *, scan=False, zero=True) -> int */
static PyObject *heap_malloc(HeapBase *self, PyObject *const *args, Py_ssize_t nargsf,
                             PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    int noscan = 1, zero = 1;
    ra_heap *h = self->h;
    if (nargs != 1 || !PyLong_CheckExact(args[0]) || !h || h->closed) goto slow;
    if (kwnames) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, i), *value = args[nargs + i];
            if (value != Py_True && value != Py_False) goto slow;
            if (key == str_scan) noscan = value == Py_False;
            else if (key == str_zero) zero = value == Py_True;
            else goto slow;
        }
    }
    int overflow;
    long long size = PyLong_AsLongLongAndOverflow(args[0], &overflow);
    if (overflow || size < 0 || size > RA_MAX_SMALL_SIZE) goto slow;
    ra_mcache *c = my_cache(h);
    if (!c) goto slow;
    uintptr_t addr = ra_malloc_small(h, c, (size_t)size, noscan, zero);
    if (addr) return PyLong_FromUnsignedLongLong(addr);
    /* Miss: the span this request needs is full.  Python refills it (the
     * policy lives there), then the same kernel runs again. */
    uint32_t spc = ra_span_class_for(h, (size_t)size, noscan);
    PyObject *r = call_with_int((PyObject *)self, str_refill, spc);
    if (!r) return NULL;
    Py_DECREF(r);
    addr = ra_malloc_small(h, c, (size_t)size, noscan, zero);
    if (addr) return PyLong_FromUnsignedLongLong(addr);
slow:
    return call_slow((PyObject *)self, str_malloc_slow, args, nargs, kwnames);
}

/* HeapBase.free(addr) -> None */
static PyObject *heap_free(HeapBase *self, PyObject *arg) {
    ra_heap *h = self->h;
    if (!PyLong_CheckExact(arg) || !h || h->closed) goto slow;
    uintptr_t addr = (uintptr_t)PyLong_AsUnsignedLongLong(arg);
    if (addr == (uintptr_t)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        goto slow;
    }
    ra_span *span;
    if (ra_free_object(h, self->l1, addr, my_cache(h), &span) == RA_FREE_OK) Py_RETURN_NONE;
slow:
    return PyObject_CallMethodOneArg((PyObject *)self, str_free_slow, arg);
}

/* HeapBase._bind(heap_address, arena_index_address): attach the C heap. */
static PyObject *heap_bind(HeapBase *self, PyObject *args) {
    unsigned long long h, l1;
    if (!PyArg_ParseTuple(args, "KK", &h, &l1)) return NULL;
    self->h = (ra_heap *)(uintptr_t)h;
    self->l1 = (ra_heap_arena **const *)(uintptr_t)l1;
    Py_RETURN_NONE;
}

static PyMethodDef heap_methods[] = {
    {"malloc", (PyCFunction)(void (*)(void))heap_malloc, METH_FASTCALL | METH_KEYWORDS,
     "malloc(size, *, scan=False, zero=True) -> int\n\nAllocate size bytes; return the address."},
    {"free", (PyCFunction)heap_free, METH_O, "free(addr)\n\nFree the object at addr."},
    {"_bind", (PyCFunction)heap_bind, METH_VARARGS, NULL},
    {NULL},
};

static void heap_dealloc(HeapBase *self) {
    if (self->weakrefs) PyObject_ClearWeakRefs((PyObject *)self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject HeapBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "realalloc._fast.HeapBase",
    .tp_basicsize = sizeof(HeapBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "C half of realalloc.Heap: the malloc/free fast path.",
    .tp_methods = heap_methods,
    .tp_new = PyType_GenericNew,
    .tp_weaklistoffset = offsetof(HeapBase, weakrefs),
    .tp_dealloc = (destructor)heap_dealloc,
};

/* ---- Buffer ------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *heap; /* the Heap; kept alive while the buffer lives */
    uintptr_t addr;
    Py_ssize_t size;
    Py_ssize_t exports; /* live views of the memory */
    int freed;
    PyObject *weakrefs;
} Buffer;

static int buffer_usable(Buffer *self) {
    if (!self->freed) return 1;
    PyErr_Format(freed_buffer_error ? freed_buffer_error : PyExc_ValueError,
                 "Buffer of %zd bytes at %p was freed", self->size, (void *)self->addr);
    return 0;
}

static PyObject *buffer_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *heap;
    unsigned long long addr;
    Py_ssize_t size;
    static char *kwlist[] = {"heap", "address", "size", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OKn", kwlist, &heap, &addr, &size)) return NULL;
    /* The heap vouches for the memory: a live object with room for size bytes. */
    PyObject *usable = PyObject_CallMethod(heap, "_check_buffer", "Kn", addr, size);
    if (!usable) return NULL;
    Py_DECREF(usable);
    Buffer *self = (Buffer *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    Py_INCREF(heap);
    self->heap = heap;
    self->addr = (uintptr_t)addr;
    self->size = size;
    return (PyObject *)self;
}

static int buffer_getbuffer(Buffer *self, Py_buffer *view, int flags) {
    if (!buffer_usable(self)) {
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, (void *)self->addr, self->size, 0, flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void buffer_releasebuffer(Buffer *self, Py_buffer *view) {
    (void)view;
    self->exports--;
}

static PyBufferProcs buffer_as_buffer = {
    (getbufferproc)buffer_getbuffer,
    (releasebufferproc)buffer_releasebuffer,
};

static PyObject *buffer_free(Buffer *self, PyObject *unused) {
    (void)unused;
    if (!buffer_usable(self)) return NULL;
    if (self->exports > 0) {
        PyErr_Format(PyExc_BufferError,
                     "cannot free Buffer at %p: %zd exported view(s) still use its memory",
                     (void *)self->addr, self->exports);
        return NULL;
    }
    PyObject *r = call_with_int(self->heap, str_free, self->addr);
    if (!r) return NULL;
    self->freed = 1;
    return r;
}

/* Heap.close() calls this once the heap's memory is gone. */
static PyObject *buffer_invalidate(Buffer *self, PyObject *unused) {
    (void)unused;
    self->freed = 1;
    Py_RETURN_NONE;
}

static PyObject *buffer_enter(Buffer *self, PyObject *unused) {
    (void)unused;
    if (!buffer_usable(self)) return NULL;
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *buffer_exit(Buffer *self, PyObject *args) {
    (void)args;
    if (self->freed) Py_RETURN_NONE;
    return buffer_free(self, NULL);
}

static PyObject *buffer_address(Buffer *self, void *closure) {
    (void)closure;
    return buffer_usable(self) ? PyLong_FromUnsignedLongLong(self->addr) : NULL;
}

static PyObject *buffer_size(Buffer *self, void *closure) {
    (void)closure;
    return buffer_usable(self) ? PyLong_FromSsize_t(self->size) : NULL;
}

static PyObject *buffer_is_freed(Buffer *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(self->freed);
}

static PyObject *buffer_exports(Buffer *self, void *closure) {
    (void)closure;
    return PyLong_FromSsize_t(self->exports);
}

static Py_ssize_t buffer_len(Buffer *self) {
    return buffer_usable(self) ? self->size : -1;
}

static PyObject *buffer_repr(Buffer *self) {
    return PyUnicode_FromFormat("<realalloc.Buffer %zd bytes at %p%s>", self->size,
                                (void *)self->addr, self->freed ? " (freed)" : "");
}

static void buffer_dealloc(Buffer *self) {
    if (self->weakrefs) PyObject_ClearWeakRefs((PyObject *)self);
    if (!self->freed) {
        /* Garbage collected while allocated: give the memory back. */
        PyObject *r = call_with_int(self->heap, str_free, self->addr);
        if (r) Py_DECREF(r);
        else PyErr_WriteUnraisable(self->heap); /* not self: its refcount is 0 */
    }
    Py_XDECREF(self->heap);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef buffer_methods[] = {
    {"free", (PyCFunction)buffer_free, METH_NOARGS, "Free the memory; BufferError while views exist."},
    {"__enter__", (PyCFunction)buffer_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)buffer_exit, METH_VARARGS, NULL},
    {"_invalidate", (PyCFunction)buffer_invalidate, METH_NOARGS, NULL},
    {NULL},
};

static PyGetSetDef buffer_getset[] = {
    {"address", (getter)buffer_address, NULL, "Address of the first byte.", NULL},
    {"size", (getter)buffer_size, NULL, "Bytes requested.", NULL},
    {"freed", (getter)buffer_is_freed, NULL, "True once the memory was freed.", NULL},
    {"exports", (getter)buffer_exports, NULL, "Views currently exported.", NULL},
    {NULL},
};

static PySequenceMethods buffer_as_sequence = {.sq_length = (lenfunc)buffer_len};

static PyTypeObject BufferType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "realalloc.Buffer",
    .tp_basicsize = sizeof(Buffer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Buffer(heap, address, size): one allocation as a writable buffer.\n\n"
              "Made by Heap.alloc.  Supports memoryview, bytes(), numpy.frombuffer and\n"
              "ctypes from_buffer; views keep it alive.  Frees its memory when garbage\n"
              "collected; free() while views exist raises BufferError.",
    .tp_new = buffer_new,
    .tp_dealloc = (destructor)buffer_dealloc,
    .tp_as_buffer = &buffer_as_buffer,
    .tp_as_sequence = &buffer_as_sequence,
    .tp_methods = buffer_methods,
    .tp_getset = buffer_getset,
    .tp_repr = (reprfunc)buffer_repr,
    .tp_weaklistoffset = offsetof(Buffer, weakrefs),
};

/* ---- module ------------------------------------------------------------ */

/* set_thread_cache(slot, gen, cache_address): this thread's cache for a heap. */
static PyObject *set_thread_cache(PyObject *mod, PyObject *args) {
    (void)mod;
    unsigned int slot;
    unsigned long long gen, cache;
    if (!PyArg_ParseTuple(args, "IKK", &slot, &gen, &cache)) return NULL;
    if (slot >= RA_MAX_HEAPS) return PyErr_Format(PyExc_ValueError, "slot %u out of range", slot);
    tls_cache[slot].gen = gen;
    tls_cache[slot].cache = (ra_mcache *)(uintptr_t)cache;
    Py_RETURN_NONE;
}

static PyObject *set_freed_buffer_error(PyObject *mod, PyObject *cls) {
    (void)mod;
    Py_XINCREF(cls);
    Py_XSETREF(freed_buffer_error, cls);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"set_thread_cache", set_thread_cache, METH_VARARGS, NULL},
    {"set_freed_buffer_error", set_freed_buffer_error, METH_O, NULL},
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
    str_malloc_slow = PyUnicode_InternFromString("_malloc_slow");
    str_free_slow = PyUnicode_InternFromString("_free_slow");
    str_refill = PyUnicode_InternFromString("_refill");
    str_free = PyUnicode_InternFromString("free");
    str_scan = PyUnicode_InternFromString("scan");
    str_zero = PyUnicode_InternFromString("zero");
    if (!str_malloc_slow || !str_free_slow || !str_refill || !str_free || !str_scan ||
        !str_zero)
        return NULL;
    if (PyType_Ready(&HeapBaseType) < 0 || PyType_Ready(&BufferType) < 0) return NULL;
    PyObject *m = PyModule_Create(&fastmodule);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "HeapBase", (PyObject *)&HeapBaseType) < 0 ||
        PyModule_AddObjectRef(m, "Buffer", (PyObject *)&BufferType) < 0 ||
        PyModule_AddStringConstant(m, "VERSION", RA_PACKAGE_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
