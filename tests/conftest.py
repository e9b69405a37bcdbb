"""Test-suite settings: the debug level the suite runs at, and saying which.

realalloc._debug reads ``REALALLOC_DEBUG`` once, when realalloc is first
imported, so it is settled here, before any test module imports realalloc:
the environment's value when it sets one, else 3 (every internal check, the
most expensive).  CI (.ci/run) runs the suite at 3 and again at 0, the
shipped setting; ``REALALLOC_DEBUG=0 python -m pytest`` does the latter by
hand.  Processes the tests start inherit the same value.

The level realalloc really runs at is printed in the pytest header, and under
``-q`` (which hides the header) in one line before the first test, so a log
says which setting ran.
"""

from __future__ import annotations

import os

import pytest

_FROM_ENVIRONMENT = "REALALLOC_DEBUG" in os.environ
os.environ.setdefault("REALALLOC_DEBUG", "3")


def _debug_line() -> str:
    source = "set by the environment" if _FROM_ENVIRONMENT else "the suite's default"
    try:
        import realalloc
        from realalloc import _debug
    except Exception as exc:  # the tests will report it; the header must not hide it
        return f"realalloc: not importable ({type(exc).__name__}: {exc})"
    line = (
        f"realalloc {realalloc.__version__} from {os.path.dirname(realalloc.__file__ or '?')}: "
        f"REALALLOC_DEBUG={_debug.DEBUG} ({source})"
    )
    if str(_debug.DEBUG) != os.environ["REALALLOC_DEBUG"]:
        line += (
            f", NOT the {os.environ['REALALLOC_DEBUG']!r} now in the environment: "
            "realalloc was imported before tests/conftest.py"
        )
    return line


def pytest_report_header(config: pytest.Config) -> str:
    return _debug_line()


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.verbosity < 0:  # -q: no header
        reporter.write_line(_debug_line())
