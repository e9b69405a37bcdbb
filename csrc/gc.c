/*
 * Garbage collection kernels (Go: mgcmark.go, mgcsweep.go, gcmarkBits of
 * mbitmap.go, stopTheWorld of proc.go): included by fastpath.c, so they use
 * its statics (HeapBase, my_slot, wait_while, heap_alone, err_*) and the
 * inline kernels of central.h.  Module functions of realalloc._fast, typed
 * in realalloc/_fast.pyi; the policy (when, roots, finalizer thread, pacer,
 * statistics) is realalloc/core/mgc.py.
 *
 *   gc_heap_live(heap)        (heap_alloc, heap_objects), as MemStats counts them
 *   gc_cycle(heap, ...)       one whole cycle, the world stopped by the caller
 *   gc_safepoint(heap, fn, *args)
 *                             fn(*args) alone in the heap, from a thread that may be
 *                             inside it at a safe point (holding no lock)
 *
 * Mark bits (Go's gcmarkBits) live in a side table made for each cycle: per
 * record pool, one bitmap of the pool's width per span record, indexed by
 * the record number of the span id (pool << 24 | record).  The mark stack
 * holds (address, length) ranges to scan; a range longer than an oblet is
 * scanned an oblet at a time, its rest pushed back first, so a large object
 * adds one entry to the stack however large it is.
 */

#define GC_OBLET (128u << 10) /* Go: maxObletBytes */

typedef struct { uintptr_t base, len; } gc_range;

typedef struct {
    ra_heap *h;
    uintptr_t lo, hi;               /* the heap's arenas span [lo, hi): a quick filter */
    uint64_t *marks[RA_MAX_POOLS];  /* per pool: nwords words per record */
    uint32_t nrec[RA_MAX_POOLS];    /* records the table covers (up to the last active slab) */
    gc_range *stack;
    size_t n, cap;
    uint64_t bytes, objects;        /* marked so far */
    int nomem;                      /* the stack could not grow: the cycle is void */
} gc_work;

/* The heap of a Python argument: an attached HeapBase, else NULL with TypeError. */
static HeapBase *gc_heap(PyObject *o) {
    if (PyObject_TypeCheck(o, &HeapBaseType) && ((HeapBase *)o)->h) return (HeapBase *)o;
    PyErr_Format(err_type, "an attached realalloc heap is needed, not %.80s", Py_TYPE(o)->tp_name);
    return NULL;
}

static uint64_t gc_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- mark ------------------------------------------------------------------ */

/* A side table per pool, covering every record up to the last active slab. */
static int gc_tables(gc_work *g) {
    for (uint32_t i = 0; i < g->h->npools; i++) {
        ra_pool *p = &g->h->pools[i];
        uint32_t top = 0;
        for (uint32_t slab = 0; slab < p->max_slabs; slab++)
            if (p->slab_state[slab] == RA_SLAB_ACTIVE) top = slab + 1;
        g->nrec[i] = top * p->per_slab;
        if (top && !(g->marks[i] = calloc((size_t)g->nrec[i] * p->nwords, sizeof(uint64_t))))
            return -1;
    }
    return 0;
}

static void gc_free_tables(gc_work *g) {
    for (uint32_t i = 0; i < RA_MAX_POOLS; i++) free(g->marks[i]), g->marks[i] = NULL;
    free(g->stack);
    g->stack = NULL;
}

/* The mark bits of span `s` (its first word), or NULL if the table misses it. */
static inline uint64_t *gc_marks_of(gc_work *g, const ra_span *s) {
    uint32_t rec = s->id & 0xffffff;
    if (rec >= g->nrec[s->pool]) return NULL;
    return g->marks[s->pool] + (size_t)rec * g->h->pools[s->pool].nwords;
}

/* The live object holding address `p`: its span and slot; NULL if `p` points
 * at no live object of this heap (free slot or pages, a freed large object,
 * a pending free, foreign memory, whole pages handed out as MANUAL). */
static inline ra_span *gc_object(gc_work *g, uintptr_t p, uint32_t *slot) {
    if (p - g->lo >= g->hi - g->lo) return NULL;
    ra_span *s = ra_span_at(g->h, p);
    if (!s || s->state != RA_SPAN_IN_USE) return NULL;
    if (s->spanclass < 2) return *slot = 0, s->alloc_count ? s : NULL;
    uint32_t idx = ra_slot_of(s, p - s->base);
    uint64_t bit = 1ull << (idx & 63);
    if (idx >= s->nelems || !(ra_alloc_bits(s)[idx >> 6] & bit) || (ra_free_bits(s)[idx >> 6] & bit))
        return NULL;
    *slot = idx;
    return s;
}

static inline uintptr_t gc_size(const ra_span *s) {
    return s->spanclass < 2 ? (uintptr_t)s->npages << RA_PAGE_SHIFT : s->elemsize;
}

static void gc_push(gc_work *g, uintptr_t base, uintptr_t len) {
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 4096;
        gc_range *grown = realloc(g->stack, cap * sizeof *grown);
        if (!grown) {
            g->nomem = 1;
            return;
        }
        g->stack = grown, g->cap = cap;
    }
    g->stack[g->n++] = (gc_range){base, len};
}

/* Set the mark bit of the object holding `p` (Go: greyobject); a scan object
 * marked now goes on the stack.  Returns the object's span, or NULL. */
static inline ra_span *gc_mark(gc_work *g, uintptr_t p, int push) {
    uint32_t idx;
    ra_span *s = gc_object(g, p, &idx);
    uint64_t *mb = s ? gc_marks_of(g, s) : NULL, bit = 1ull << (idx & 63);
    if (!mb || (mb[idx >> 6] & bit)) return NULL;
    mb[idx >> 6] |= bit;
    g->bytes += gc_size(s);
    g->objects++;
    if (push && !(s->spanclass & 1)) gc_push(g, s->base + (uintptr_t)idx * s->elemsize, gc_size(s));
    return s;
}

/* Every aligned word of [base, base + len) that points into a live object marks it. */
static void gc_scan(gc_work *g, uintptr_t base, uintptr_t len) {
    const uintptr_t *w = (const uintptr_t *)((base + 7) & ~(uintptr_t)7);
    const uintptr_t *end = (const uintptr_t *)((base + len) & ~(uintptr_t)7);
    for (; w < end; w++) gc_mark(g, *w, 1);
}

/* Scan until the stack is empty (Go: gcDrain), an oblet at a time. */
static void gc_drain(gc_work *g) {
    while (g->n && !g->nomem) {
        gc_range r = g->stack[--g->n];
        if (r.len > GC_OBLET) {
            gc_push(g, r.base + GC_OBLET, r.len - GC_OBLET);
            r.len = GC_OBLET;
        }
        gc_scan(g, r.base, r.len);
    }
}

/* ---- sweep ----------------------------------------------------------------- */

/* Free the unmarked objects of one uncached small-object span (Go:
 * mspan.sweep): pending frees first (already counted), then alloc bits &=
 * mark bits; a tiny block goes whole, its pieces counted as tiny frees. */
static void gc_sweep_span(gc_work *g, ra_span *s, uint64_t *nfree, uint64_t *pieces) {
    ra_sweep(s);
    uint64_t *ab = ra_alloc_bits(s), *mb = gc_marks_of(g, s);
    uint32_t nw = ra_nwords(s), freed = 0;
    for (uint32_t w = 0; mb && w < nw; w++) {
        uint64_t valid = w == nw - 1 && (s->nelems & 63) ? (1ull << (s->nelems & 63)) - 1 : ~0ull;
        uint64_t dead = ab[w] & ~mb[w] & valid;
        if (!dead) continue;
        RA_SET(&ab[w], ab[w] & ~dead);
        freed += (uint32_t)__builtin_popcountll(dead);
        for (uint64_t d = dead; s->spanclass == RA_TINY_SPAN_CLASS && d; d &= d - 1) {
            uint32_t *st = &ra_tiny_state(s)[w * 64 + (uint32_t)__builtin_ctzll(d)];
            *pieces += (uint32_t)__builtin_popcount(*st & 0xffff);
            RA_STORE(st, 0);
        }
    }
    s->alloc_count -= freed;
    if (freed) s->needzero = 1;
    *nfree += freed;
    ra_rewind(s);
}

/* Sweep every span of a small-object class and file it again by its room;
 * empty spans beyond the class's budget go back to the page heap. */
static uint64_t gc_sweep_class(gc_work *g, uint32_t spc, uint64_t *swept) {
    ra_heap *h = g->h;
    ra_central *ce = &h->central[spc];
    uint64_t nfree = 0, pieces = 0;
    ra_lock_take(&ce->lock);
    ra_drain(ce, spc);
    ra_span *todo = NULL, **tail = &todo;
    for (uint32_t tag = RA_LIST_PARTIAL; tag <= RA_LIST_EMPTY; tag++)
        for (ra_span *s; (s = ce->list[tag]); tail = &s->next) {
            ra_list_remove(ce, s);
            *tail = s;
        }
    for (ra_span *s = todo, *after; s; s = after) {
        after = s->next;
        s->next = NULL;
        gc_sweep_span(g, s, &nfree, &pieces);
        ra_file(ce, s);
        (*swept)++;
    }
    ra_trim(h, ce, ce->empty_max, ce->empty_max_pages);
    ra_lock_drop(&ce->lock);
    __atomic_add_fetch(&h->counts.nfree[spc >> 1], nfree, __ATOMIC_RELAXED);
    __atomic_add_fetch(&h->counts.tiny_frees, pieces, __ATOMIC_RELAXED);
    return nfree;
}

/* Walk every live span record: count the small-object spans, free the
 * unmarked large objects (as ra_free_large does: their span may be kept). */
static uint64_t gc_sweep_large(gc_work *g, uint64_t *spans) {
    uint64_t freed = 0;
    for (uint32_t i = 0; i < g->h->npools; i++) {
        ra_pool *p = &g->h->pools[i];
        for (uint32_t rec = 0; rec < g->nrec[i]; rec++) {
            uint32_t slab = rec / p->per_slab;
            if (p->slab_state[slab] != RA_SLAB_ACTIVE) continue;
            ra_span *s = (ra_span *)(p->base + (uintptr_t)slab * p->slab_bytes +
                                     (uintptr_t)(rec % p->per_slab) * p->stride);
            if (s->state != RA_SPAN_IN_USE) continue;
            if (s->spanclass >= 2) {
                (*spans)++;
                continue;
            }
            uint64_t *mb = gc_marks_of(g, s);
            if (s->alloc_count && !s->list && mb && !(mb[0] & 1))
                freed += ra_free_large(g->h, s->base) == RA_OK;
        }
    }
    return freed;
}

/* ---- the cycle ------------------------------------------------------------- */

/* Roots of the cycle, from Python: objects (pinned, Buffers, finalizers
 * queued but not run) and ranges (root ranges), each scanned; returns -1
 * with an exception set on a malformed argument. */
static int gc_roots(gc_work *g, PyObject *objects, PyObject *ranges) {
    PyObject *fo = PySequence_Fast(objects, "objects must be a sequence of addresses");
    PyObject *fr = fo ? PySequence_Fast(ranges, "ranges must be a sequence of (addr, nbytes)") : NULL;
    int rc = fr ? 0 : -1;
    for (Py_ssize_t i = 0; !rc && i < PySequence_Fast_GET_SIZE(fo); i++) {
        uintptr_t p = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(fo, i));
        if (p == (uintptr_t)-1 && PyErr_Occurred()) rc = -1;
        else gc_mark(g, p, 1);
    }
    for (Py_ssize_t i = 0; !rc && i < PySequence_Fast_GET_SIZE(fr); i++) {
        unsigned long long base, len;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fr, i), "KK", &base, &len)) rc = -1;
        else gc_push(g, (uintptr_t)base, (uintptr_t)len);
    }
    Py_XDECREF(fo);
    Py_XDECREF(fr);
    return rc;
}

/* Finalizers (Go: markrootSpans, then the sweep's queueing): everything an
 * object with a finalizer reaches is marked, not the object itself; each
 * such object left unmarked is then marked (it and what it reaches live
 * through this cycle) and its (addr, fn) appended to `due`, its entry
 * deleted.  Entries for objects no longer live (freed) are deleted too. */
static int gc_finalizers(gc_work *g, PyObject *fins, PyObject *due) {
    PyObject *key, *fn, *gone = PyList_New(0), *ready = PyList_New(0);
    Py_ssize_t pos = 0;
    int rc = gone && ready ? 0 : -1;
    while (!rc && PyDict_Next(fins, &pos, &key, &fn)) {
        uint32_t idx;
        ra_span *s = gc_object(g, PyLong_AsUnsignedLong(key), &idx);
        if (PyErr_Occurred()) rc = -1;
        else if (!s) rc = PyList_Append(gone, key);
        else if (!(s->spanclass & 1)) gc_push(g, s->base + (uintptr_t)idx * s->elemsize, gc_size(s));
    }
    gc_drain(g);
    for (pos = 0; !rc && PyDict_Next(fins, &pos, &key, &fn);) {
        uint32_t idx;
        ra_span *s = gc_object(g, PyLong_AsUnsignedLong(key), &idx);
        uint64_t *mb = s ? gc_marks_of(g, s) : NULL;
        if (!mb || (mb[idx >> 6] >> (idx & 63) & 1)) continue;
        PyObject *item = PyTuple_Pack(2, key, fn);
        rc = item ? PyList_Append(ready, item) : -1;
        Py_XDECREF(item);
        if (!rc) gc_mark(g, PyLong_AsUnsignedLong(key), 0); /* its contents are marked already */
    }
    /* From here nothing fails but the one extend: the dict changes only after it. */
    if (!rc) rc = PyList_SetSlice(due, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, ready);
    for (Py_ssize_t i = 0; !rc && i < PyList_GET_SIZE(ready); i++)
        PyDict_DelItem(fins, PyTuple_GET_ITEM(PyList_GET_ITEM(ready, i), 0));
    for (Py_ssize_t i = 0; !rc && i < PyList_GET_SIZE(gone); i++)
        PyDict_DelItem(fins, PyList_GET_ITEM(gone, i));
    Py_XDECREF(gone);
    Py_XDECREF(ready);
    return rc;
}

/* gc_cycle(heap, lo, hi, objects, ranges, finalizers, due) -> (marked bytes,
 * marked objects, objects freed, small-object spans swept, small-object
 * spans live, ns flushing, ns marking, ns sweeping).  The caller stopped the
 * world; every thread is outside the heap or parked at a safe point.
 * [lo, hi) covers the heap's arenas.  If marking fails (no memory for the
 * stack or tables, a malformed argument) nothing is freed and the error is
 * raised; the cycle is void. */
static PyObject *gc_cycle(PyObject *mod, PyObject *args) {
    PyObject *heap, *objects, *ranges, *fins, *due;
    unsigned long long lo, hi;
    if (!PyArg_ParseTuple(args, "OKKOOO!O!", &heap, &lo, &hi, &objects, &ranges, &PyDict_Type,
                          &fins, &PyList_Type, &due))
        return NULL;
    HeapBase *self = gc_heap(heap);
    if (!self) return NULL;
    if (!(self->h->stopped & RA_STOPPED) || self->stw_owner != PyThread_get_thread_ident())
        return PyErr_Format(err_reentrant, "gc_cycle: the world must be stopped by this thread");
    gc_work g = {.h = self->h, .lo = (uintptr_t)lo, .hi = (uintptr_t)hi};
    uint64_t t0 = gc_now(), freed = 0, swept = 0, spans = 0;
    /* Sweep termination: every span back from the thread caches (and the
     * tiny blocks retired), so each one sits on its central's lists.  (A
     * local free marked its span needzero, so a zeroed malloc from another
     * cache never hands out stale words, pointers that would resurrect.) */
    for (ra_mcache *c = g.h->caches; c; c = c->next) ra_release_cache(g.h, c, 0);
    uint64_t t1 = gc_now();
    int rc = gc_tables(&g);
    if (rc) PyErr_NoMemory();
    else if (!(rc = gc_roots(&g, objects, ranges))) {
        gc_drain(&g);
        rc = g.nomem ? -1 : gc_finalizers(&g, fins, due);
        if (!rc && g.nomem) rc = -1, PyErr_NoMemory();
    }
    uint64_t t2 = gc_now();
    if (!rc) {
        freed += gc_sweep_large(&g, &spans); /* first: it counts the spans the classes sweep */
        for (uint32_t spc = 2; spc < RA_NUM_SPAN_CLASSES; spc++) freed += gc_sweep_class(&g, spc, &swept);
    }
    uint64_t t3 = gc_now();
    gc_free_tables(&g);
    if (rc) return NULL;
    return Py_BuildValue("KKKKKKKK", g.bytes, g.objects, freed, swept, spans, t1 - t0, t2 - t1,
                         t3 - t2);
}

/* gc_heap_live(heap) -> (bytes, objects) of live objects, MemStats'
 * heap_alloc and heap_objects, summed under the page lock as ra_counts_sum. */
static PyObject *gc_heap_live(PyObject *mod, PyObject *heap) {
    HeapBase *self = gc_heap(heap);
    if (!self) return NULL;
    ra_heap *h = self->h;
    int64_t live[RA_NUM_SIZE_CLASSES];
    ra_lock_take(&h->pages.lock);
    for (int i = 0; i < RA_NUM_SIZE_CLASSES; i++)
        live[i] = (int64_t)(RA_LOAD(&h->counts.nmalloc[i]) - RA_LOAD(&h->counts.nfree[i]));
    for (ra_mcache *c = h->caches; c; c = c->next)
        for (int i = 0; i < RA_NUM_SIZE_CLASSES; i++) live[i] += (int64_t)(c->nmalloc[i] - c->nfree[i]);
    int64_t bytes = (int64_t)(h->counts.large_bytes - h->counts.large_freed_bytes);
    int64_t objects = (int64_t)(h->counts.large_allocs - h->counts.large_frees);
    ra_lock_drop(&h->pages.lock);
    for (int i = 0; i < RA_NUM_SIZE_CLASSES; i++) bytes += live[i] * ra_class_to_size[i], objects += live[i];
    return Py_BuildValue("LL", (long long)bytes, (long long)objects);
}

/* ---- stopping the world at a safe point ------------------------------------ */

/* gc_safepoint(heap, fn, *args): fn(*args) with the world stopped.  The
 * calling thread may be inside the heap, at a point where it holds no lock
 * and has no change half made (Heap's slow paths, before they take
 * MHeap.lock).  It parks: its calls stop counting as active, so a thread
 * stopping the world meanwhile need not wait for it (two safe points at
 * once: one waits, parked, for the other's cycle, then runs its own fn,
 * which re-checks whether it is still needed).  Then it stops the world
 * itself, runs fn and starts the world; its calls count again only when no
 * other thread holds the world stopped. */
static PyObject *gc_safepoint(PyObject *mod, PyObject *const *args, Py_ssize_t n) {
    HeapBase *self = n >= 2 ? gc_heap(args[0]) : NULL;
    if (!self) return n >= 2 ? NULL : PyErr_Format(err_type, "gc_safepoint(heap, fn, *args)");
    ra_tls_slot *t = my_slot(self->h);
    if (!t) return PyErr_NoMemory();
    if ((self->h->stopped & RA_STOPPED) && self->stw_owner == PyThread_get_thread_ident())
        return PyObject_Vectorcall(args[1], args + 2, (size_t)(n - 2), NULL); /* alone already */
    uint64_t depth = t->depth;
    self->active -= (int64_t)depth, t->depth = 0;
    PyObject *r = heap_alone(self, args + 1, n - 1);
    /* Interrupted while another thread was alone: wait for it, signals or not. */
    while (stopped_by_other(self)) {
        Py_BEGIN_ALLOW_THREADS
        nanosleep(&(struct timespec){0, 50000}, NULL);
        Py_END_ALLOW_THREADS
    }
    self->active += (int64_t)depth, t->depth = depth;
    return r;
}

/* gc_buffer_died(heap_address, pending, addr, weakref): the weakref callback
 * of a collected heap's Buffer, a C call so that no Python line (where
 * another thread could start a cycle) comes between it and the Buffer's own
 * free.  A Buffer that dies while the world runs frees its object in that
 * same step; one that dies while the world is stopped waits to free it (the
 * slow path), so its address joins `pending`, a root until that free ran. */
static PyObject *gc_buffer_died(PyObject *mod, PyObject *const *args, Py_ssize_t n) {
    ra_heap *h = n == 4 ? (ra_heap *)PyLong_AsVoidPtr(args[0]) : NULL;
    if (!h || !PyList_Check(args[1]))
        return PyErr_Occurred() ? NULL : PyErr_Format(err_type, "gc_buffer_died(heap, list, addr, ref)");
    if (RA_LOAD(&h->stopped) && PyList_Append(args[1], args[2]) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef gc_methods[] = {
    {"gc_buffer_died", (PyCFunction)(void (*)(void))gc_buffer_died, METH_FASTCALL, NULL},
    {"gc_cycle", gc_cycle, METH_VARARGS, NULL},
    {"gc_heap_live", gc_heap_live, METH_O, NULL},
    {"gc_safepoint", (PyCFunction)(void (*)(void))gc_safepoint, METH_FASTCALL, NULL},
    {NULL},
};
