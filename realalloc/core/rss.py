"""Resident set size of this process, through psutil (Go: none; the OS view).

See realalloc/__init__.py for an overview of the allocator.  No locks; the
psutil handle is made again in a forked child (it would report the parent).
"""

from __future__ import annotations

import os

import psutil

__all__ = ["rss", "uss"]

_process: psutil.Process | None = None


def _me() -> psutil.Process:
    global _process
    if _process is None or _process.pid != os.getpid():
        _process = psutil.Process()
    return _process


def rss() -> int:
    """Bytes of this process resident in RAM now."""
    return int(_me().memory_info().rss)


def uss() -> int | None:
    """Bytes of memory unique to this process (psutil's USS), or None where
    the platform cannot tell."""
    try:
        return int(_me().memory_full_info().uss)
    except (psutil.AccessDenied, AttributeError):
        return None
