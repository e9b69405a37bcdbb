"""realalloc among other tools: tracemalloc, numpy, cffi.

See realalloc/__init__.py for an overview of the allocator.  Modules here use
the allocator's public surface and the C entry points declared in
realalloc/_fast.pyi; nothing in realalloc/core imports from here.
"""
