"""pytest plugin: run a test suite (numpy's own) with realalloc as numpy's allocator.

See realalloc/__init__.py for an overview of the allocator, and
``PytestSession`` in realalloc/integrations/numpy.py for what the plugin
checks.  Usage::

    python -m pytest -p realalloc.numpy_plugin --pyargs numpy._core.tests -m "not slow"

(numpy 1.x: ``numpy.core.tests``).  realalloc serves numpy from the start of
the session, in every thread; the session fails if the handler was replaced
or served no allocation, and the summary says how many allocations it served.
"""

from __future__ import annotations

from typing import Any

from .integrations.numpy import PYTEST_DESELECT, PYTEST_DESELECT_NUMPY1, PytestSession

__all__ = ["PYTEST_DESELECT", "PYTEST_DESELECT_NUMPY1", "PytestSession", "pytest_configure"]


def pytest_configure(config: Any) -> None:
    config.pluginmanager.register(PytestSession(config), "realalloc-numpy-session")
