"""realalloc's allocations in tracemalloc, in a domain of their own.

See realalloc/__init__.py for an overview of the allocator.

While tracemalloc traces, every ``malloc`` / ``alloc`` / ``realloc`` / ``free``
of every realalloc heap is reported to it (``PyTraceMalloc_Track`` /
``Untrack``) in the domain ``TRACEMALLOC_DOMAIN``, with the Python line that
made the call, so a snapshot filtered with
``tracemalloc.DomainFilter(True, realalloc.TRACEMALLOC_DOMAIN)`` shows
realalloc memory by line.  ``realloc`` makes its new object from inside
realalloc's own Python code, so that trace's innermost frame is realalloc's:
trace with more than one frame (``tracemalloc.start(8)``) to see the caller.
Arrays numpy allocates through realalloc's data allocator are traced by
numpy in its own domain and not again here.

Cost when tracemalloc is off: the C fast path tests one flag instead of
calling into tracemalloc twice per malloc/free pair.  The flag must follow
tracemalloc exactly, so this module keeps it in step: it reads
``tracemalloc.is_tracing()`` when realalloc is imported (``python -X
tracemalloc``, ``PYTHONTRACEMALLOC``) and wraps ``tracemalloc.start`` and
``tracemalloc.stop`` so that starting or stopping tracing switches the flag at
once.  Tracing started some other way (the private ``_tracemalloc`` module,
or a ``start`` bound before realalloc was imported) is noticed at the next
refill or slow path of any heap.

No locks: the flag is one C int written under the GIL.
"""

from __future__ import annotations

import functools
import tracemalloc
from collections.abc import Callable
from typing import Any, Final

from .. import _fast

__all__ = ["TRACEMALLOC_DOMAIN"]

TRACEMALLOC_DOMAIN: Final[int] = _fast.TRACEMALLOC_DOMAIN
"""The tracemalloc domain of realalloc's allocations (numpy uses 389047)."""


def _switching(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        finally:
            _fast.set_tracing(tracemalloc.is_tracing())

    call.__realalloc_wrapped__ = original  # type: ignore[attr-defined]
    return call


if not hasattr(tracemalloc.start, "__realalloc_wrapped__"):  # imported once per process
    tracemalloc.start = _switching(tracemalloc.start)
    tracemalloc.stop = _switching(tracemalloc.stop)
_fast.set_tracing(tracemalloc.is_tracing())
