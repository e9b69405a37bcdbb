"""realalloc as numpy's data allocator: ``install``, ``uninstall``, ``using``.

See realalloc/__init__.py for an overview of the allocator, and
realalloc/integrations/numpy.py for how the handler works: contexts,
threads, numpy 1.x and 2.x, and how arrays keep their heap alive.

Needs numpy (``pip install realalloc[numpy]``); importing this module
without it raises ImportError naming the extra.  Example::

    import numpy as np
    import realalloc.numpy

    with realalloc.numpy.using() as handler:   # the default heap
        a = np.zeros(1 << 20)                   # realalloc memory
    print(handler.stats().served)
"""

from __future__ import annotations

from .integrations.numpy import (
    CACHE_BYTES,
    LARGE_CACHE_SLOTS,
    SMALL_CACHE_SLOTS,
    HandlerStats,
    NumpyHandler,
    current,
    handler_name,
    install,
    installed,
    uninstall,
    using,
)

__all__ = [
    "CACHE_BYTES",
    "LARGE_CACHE_SLOTS",
    "SMALL_CACHE_SLOTS",
    "HandlerStats",
    "NumpyHandler",
    "current",
    "handler_name",
    "install",
    "installed",
    "uninstall",
    "using",
]
