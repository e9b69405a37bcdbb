/*
 * realalloc as numpy's data allocator (NEP 49): included by fastpath.c, so it
 * runs the same fast path as Heap.malloc.  See realalloc/integrations/numpy.py.
 * (Being written: the handler's four functions and the capsule come next.)
 */

/* ---- the heap for a C client, GIL held ----------------------------------- */

/* `size` bytes of noscan memory (zeroed if `zero`) that a C client holds until
 * ra_c_free: at least 16, so no tiny piece, 16-aligned from 32 bytes on; not
 * traced (the client traces).  Address, or 0 with an exception set. */
static __attribute__((unused)) uintptr_t ra_c_malloc(HeapBase *self, size_t size, int zero) {
    ra_heap *h = self->h;
    ra_tls_slot *t = h && !h->stopped && size <= RA_MAX_SMALL_SIZE ? my_slot(h) : NULL;
    uintptr_t addr;
    size = size < RA_TINY_SIZE ? RA_TINY_SIZE : size;
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

/* Free what ra_c_malloc gave: 0, or -1 with an exception set. */
static __attribute__((unused)) int ra_c_free(HeapBase *self, uintptr_t addr) {
    int rc = free_addr(self, NULL, addr);
    self->held -= rc == 0;
    return rc;
}

