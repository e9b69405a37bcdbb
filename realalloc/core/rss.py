"""Resident set size of this process, through psutil (Go: none; the OS view).

See realalloc/__init__.py for an overview of the allocator.  No state, no locks.
"""

from __future__ import annotations

import psutil

__all__ = ["rss", "uss"]

_process = psutil.Process()


def rss() -> int:
    """Bytes of this process resident in RAM now."""
    return int(_process.memory_info().rss)


def uss() -> int | None:
    """Bytes of memory unique to this process (psutil's USS), or None where
    the platform cannot tell."""
    try:
        return int(_process.memory_full_info().uss)
    except (psutil.AccessDenied, AttributeError):
        return None
