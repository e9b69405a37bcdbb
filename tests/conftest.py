"""Test-suite settings: every test runs with the most expensive internal checks."""

import os

# Read by realalloc._debug at import, so it must be set before realalloc loads.
os.environ.setdefault("REALALLOC_DEBUG", "3")
