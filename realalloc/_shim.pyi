# Stub for the compiled cffi module built from csrc/shim.h by csrc/build_shim.py.
from typing import Any

ffi: Any
lib: Any
