"""Go's allocator over real memory: the layers from the OS shim up to ``Heap``.

See realalloc/__init__.py for an overview of the allocator.  Each module here
owns one concept and is named after Go's file for it (mheap.go -> mheap.py).
"""
