# Stub for the CPython extension built from csrc/fastpath.c: the one typed
# declaration of the interface between the C fast path and Python.
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

VERSION: str
TRACEMALLOC_DOMAIN: int
STOPPED: int
CLOSED: int

class HeapBase:
    # Fast paths (C).
    def malloc(self, size: int, *, scan: bool = False, zero: bool = True) -> int: ...
    def free(self, addr: int) -> None: ...
    def alloc(self, size: int, *, scan: bool = False, zero: bool = True) -> Buffer: ...
    # The slow paths C calls, resolved once by _attach on the subclass
    # (realalloc.core.heap.Heap must define them with these signatures).
    def _malloc_slow(self, *args: object, **kwargs: object) -> int: ...
    def _grow_central(self, spc: int) -> None: ...
    def _free_slow(self, addr: object) -> None: ...
    # Life cycle (C).
    def _attach(self, heap_address: int, zero: bool) -> None: ...
    # fn(*args) inside the heap (its world stopped for _alone); unlike a
    # `with`, nothing in Python can run between the entry and the exit.
    def _inside(self, fn: Callable[..., T], /, *args: Any) -> T: ...
    def _alone(self, fn: Callable[..., T], /, *args: Any) -> T: ...
    def _stop_world(self) -> None: ...
    def _start_world(self) -> None: ...
    def _close_buffers(self) -> None: ...
    def _set_cache(self, cache_address: int) -> None: ...

class Buffer:
    @property
    def address(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def freed(self) -> bool: ...
    @property
    def exports(self) -> int: ...
    def free(self) -> None: ...
    def __enter__(self) -> Buffer: ...
    def __exit__(self, *exc: object) -> None: ...
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int) -> memoryview: ...

def locked(lock: Any, fn: Callable[..., T], /, *args: Any) -> T:
    """fn(*args) holding lock (its acquire and release), released however fn ends."""

def set_tracing(flag: bool) -> None: ...

# Garbage collection kernels (csrc/gc.c; policy in realalloc/core/mgc.py).
def gc_heap_live(heap: HeapBase, /) -> tuple[int, int]:
    """(heap_alloc, heap_objects) as MemStats counts them."""

def gc_cycle(
    heap: HeapBase,
    lo: int,
    hi: int,
    objects: list[int],
    ranges: list[tuple[int, int]],
    finalizers: dict[int, Callable[[int], object]],
    due: list[tuple[int, Callable[[int], object]]],
    /,
) -> tuple[int, int, int, int, int, int, int, int]:
    """One cycle, the world stopped by the caller: (marked bytes, marked
    objects, objects freed, spans swept, spans live, ns flush, ns mark, ns sweep)."""

def gc_buffer_died(heap_address: int, pending: list[int], addr: int, ref: object, /) -> None:
    """Weakref callback of a collected heap's Buffer: list ``addr`` in
    ``pending`` if the world is stopped (its free then waits)."""

def gc_safepoint(heap: HeapBase, fn: Callable[..., T], /, *args: Any) -> T:
    """fn(*args) with the world stopped, from a thread that may be inside the
    heap at a safe point (it parks while it waits)."""

def set_errors(
    closed: type[BaseException],
    reentrant: type[BaseException],
    freed: type[BaseException],
    argtype: type[BaseException],
) -> None: ...
