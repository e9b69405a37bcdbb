"""realalloc as numpy's data allocator (NEP 49: ``PyDataMem_SetHandler``).

See realalloc/__init__.py for an overview of the allocator.

Owns the Python side of the handler whose four C functions live in
csrc/numpy.c: finding numpy's C API, making handlers, installing them in a
context and in new threads, the bounds the C side reads (``*_CACHE_*``), and
the pytest plugin's session (``PytestSession``).  Public names are
re-exported by ``realalloc.numpy`` and ``realalloc.numpy_plugin``.

How numpy chooses an allocator
==============================
numpy keeps the data allocator of *new* arrays in a context variable
(``PyDataMem_SetHandler`` sets it, ``PyDataMem_GetHandler`` reads it); each
array keeps a reference to the handler it was allocated with and frees and
resizes through that one.  So:

* ``install`` / ``using`` change the calling thread's current context only
  (asyncio tasks each have their own copy);
* an array outlives any change of handler: arrays made before ``install``
  free through numpy's default handler, arrays made under realalloc free
  through realalloc after ``uninstall``;
* the handler is a capsule named ``mem_handler`` whose context holds a
  strong reference to the heap, so a live array keeps its heap alive, and
  ``Heap.close`` raises BufferError while such arrays exist (the heap's
  ``held`` count).

The C handler
=============
* Fast path: malloc and calloc take the next slot of the calling thread's
  cached span, as ``Heap.malloc`` does (pages fresh from the OS are not
  cleared again: the span's needzero says so); free clears its bit.  Every
  object is 16-aligned, as glibc's malloc (numpy's default) promises.
* Kept blocks: a block numpy frees is kept, once checked to be a live object
  of the heap, for the next request of its size class (up to 1 KiB, as
  numpy's default handler keeps blocks) or of its page count (objects over
  32 KiB, whose spans Python makes); freeing a kept block again is a
  DoubleFreeError.  Kept blocks count as in use in ``heap.stats()`` until
  reused or released (``NumpyHandler.release_cache``, ``uninstall``, the end
  of ``using``, the handler's last array), but not in ``held``: ``close``
  does not wait for them, and a closed heap's are dropped, never reused.
* realloc stays in place while the size class (or page count) still fits
  (``ra_usable`` says how many bytes the object has), else moves the data.
* GIL: numpy calls the handler with the GIL held, except realloc in
  fromstring/fromfile with ``sep``; each function takes the GIL when it is
  not held (PyGILState_Ensure).  Frees come from any thread.
* Errors never propagate into numpy: a pending exception is saved and
  restored around any step that may run Python; an allocation that fails
  returns NULL, and numpy raises its own MemoryError; anything else
  (ReentrancyError when a finalizer that runs inside a slow path allocates,
  HeapClosedError, a bad pointer) is reported with PyErr_WriteUnraisable.
  Re-entry never waits: the page heap's lock refuses it at once.
* A pointer outside the heap's arenas came from numpy's default handler
  (malloc/calloc/realloc): libc's free or realloc takes it.
* numpy traces its arrays in its own tracemalloc domain (389047); the
  handler does not trace them again in ``TRACEMALLOC_DOMAIN``.

Threads
=======
A thread starts with an empty context, so numpy's default handler.  With
``install(threads=True)`` every ``threading.Thread`` started afterwards sets
the installed handler first thing in its own context: ``Thread._bootstrap_inner``
(the method that runs in the new thread before ``run``, in CPython 3.10 to
3.13) is wrapped once, and the wrapper does nothing while no handler is
installed for threads.  Limits: threads already running keep their handler;
threads not made by ``threading.Thread`` (``_thread.start_new_thread``, C
threads) start with numpy's default; ``uninstall`` stops new threads from
getting the handler but does not reach into running ones.

A free-threaded interpreter (``sys._is_gil_enabled()`` false) is refused:
the C handler relies on the GIL for its counters, its kept blocks and the
heap's ``held`` count.

numpy versions
==============
1.22 to 1.26 (``numpy.core``) and 2.x (``numpy._core``): the C API table
(``_ARRAY_API``) has ``PyDataMem_SetHandler`` and ``PyDataMem_GetHandler``
at the same slots (304, 305) in both; ``_bind`` checks numpy's ABI and
feature version first, as numpy's own ``import_array`` does.

Invariants:
  NUMPY-1: an array allocated under a realalloc handler holds that handler,
           which holds its heap: the heap outlives the array.
  NUMPY-2: heap ``held`` == objects numpy holds from the heap (kept blocks
           not included); the GIL guards it.
  NUMPY-3: ``_installed`` is None, or the handler install() set together with
           the handler it replaced (non-realalloc, what uninstall restores).

Locking: ``_lock`` guards ``_installed`` and ``_for_threads``; the C handler
runs under the GIL.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Any, Final, NamedTuple, Protocol, cast

try:
    import numpy
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "realalloc.numpy needs numpy: install the extra with `pip install realalloc[numpy]`"
    ) from exc

from .. import _fast
from ..core.heap import Heap
from ..errors import ArgumentTypeError, HeapClosedError, HeapCorruption, UnsupportedError

__all__ = [
    "CACHE_BYTES",
    "LARGE_CACHE_SLOTS",
    "PYTEST_DESELECT",
    "PYTEST_DESELECT_NUMPY1",
    "SMALL_CACHE_SLOTS",
    "HandlerStats",
    "NumpyHandler",
    "PytestSession",
    "current",
    "handler_name",
    "install",
    "installed",
    "numpy_core_module",
    "uninstall",
    "using",
]

SMALL_CACHE_SLOTS: Final[int] = 8
"""Freed blocks of up to 1 KiB a handler keeps for reuse, per size class
(numpy's default handler keeps 7 per size up to 1 KiB the same way)."""
LARGE_CACHE_SLOTS: Final[int] = 8
"""Freed large blocks (> 32 KiB) a handler keeps for a request of the same
page count (glibc keeps freed memory too; realalloc's page heap is Python)."""
CACHE_BYTES: Final[int] = 32 << 20
"""The most bytes a handler keeps in all (large blocks go back beyond it)."""
MIN_FEATURE_VERSION: Final[int] = 0x0F
"""numpy's C feature version of 1.22, the first with PyDataMem_SetHandler."""
ABI_MAJORS: Final[frozenset[int]] = frozenset({1, 2})
"""numpy ABI majors whose C API table has the handler at csrc/numpy.c's slots."""


class _NumpyFast(Protocol):
    """The functions csrc/numpy.c adds to realalloc._fast."""

    def numpy_api(self, capsule: object, bind: bool = False) -> tuple[int, int]: ...
    def numpy_swap_handler(self, *handler: object) -> object: ...
    def numpy_handler(
        self, heap: Heap, small_slots: int, large_slots: int, cache_bytes: int
    ) -> object: ...
    def numpy_handler_info(self, handler: object) -> tuple[Any, ...] | None: ...
    def numpy_release_cache(self, handler: object) -> int: ...


_c = cast(_NumpyFast, _fast)


def numpy_core_module(version: str) -> str:
    """The package of numpy's core for a numpy version string: ``numpy._core``
    from 2.0 on, ``numpy.core`` before."""
    return "numpy._core" if int(version.split(".")[0]) >= 2 else "numpy.core"


def _bind() -> Any:
    """Bind numpy's C API for csrc/numpy.c; return numpy's ``multiarray``."""
    core = numpy_core_module(numpy.__version__)
    umath = importlib.import_module(f"{core}._multiarray_umath")
    abi, feature = _c.numpy_api(umath._ARRAY_API)
    if abi >> 24 not in ABI_MAJORS or feature < MIN_FEATURE_VERSION:
        raise ImportError(
            f"realalloc.numpy needs numpy 1.22 or later with ABI 1.x or 2.x; numpy "
            f"{numpy.__version__} has ABI {abi:#x} and C feature version {feature:#x}"
        )
    _c.numpy_api(umath._ARRAY_API, True)
    return importlib.import_module(f"{core}.multiarray")


_multiarray: Final = _bind()


class HandlerStats(NamedTuple):
    """Calls numpy made to one realalloc handler (all threads)."""

    mallocs: int
    """malloc calls (np.empty and most new arrays)."""
    callocs: int
    """calloc calls (np.zeros): zeroed memory."""
    reallocs: int
    """realloc calls (ndarray.resize, fromstring/fromfile)."""
    reallocs_in_place: int
    """... of them that kept the object where it was (its size class still fits)."""
    frees: int
    """free calls (free(NULL) not counted)."""
    foreign: int
    """frees and reallocs of memory that is not the heap's, passed to libc."""
    failures: int
    """calls that returned NULL or reported an error as unraisable."""
    cache_hits: int
    """allocations served from blocks freed before and kept."""
    cached_blocks: int
    """freed blocks kept now (they count as in use in heap.stats())."""
    cached_bytes: int
    """... their bytes."""

    @property
    def served(self) -> int:
        """Allocations realalloc served: mallocs + callocs + reallocs - failures."""
        return self.mallocs + self.callocs + self.reallocs - self.failures


class NumpyHandler:
    """One realalloc data allocator for numpy: the capsule numpy holds, over ``heap``."""

    __slots__ = ("capsule", "heap")

    def __init__(self, capsule: object, heap: Heap) -> None:
        self.capsule = capsule
        self.heap = heap

    @classmethod
    def of(cls, capsule: object) -> NumpyHandler | None:
        """The realalloc handler behind a numpy handler capsule, or None."""
        info = _c.numpy_handler_info(capsule)
        return None if info is None else cls(capsule, info[0])

    def stats(self) -> HandlerStats:
        info = _c.numpy_handler_info(self.capsule)
        assert info is not None  # made by numpy_handler
        return HandlerStats(*info[1:])

    def release_cache(self) -> int:
        """Give the freed blocks kept for reuse back to the heap; how many."""
        return _c.numpy_release_cache(self.capsule)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NumpyHandler) and other.capsule is self.capsule

    def __hash__(self) -> int:
        return id(self.capsule)

    def __repr__(self) -> str:
        return f"<realalloc.numpy.NumpyHandler over {self.heap!r}>"


class _Installed(NamedTuple):
    handler: NumpyHandler
    previous: object  # the handler install() replaced, what uninstall() restores


_lock = threading.Lock()
_installed: _Installed | None = None
_for_threads: object = None  # the capsule new threads set first, or None


def _new_handler(heap: Heap | None, op: str) -> NumpyHandler:
    """A handler over ``heap`` (None: the default heap), after every check."""
    if heap is None:
        from .. import default_heap

        heap = default_heap()
    if not isinstance(heap, Heap):
        raise ArgumentTypeError(f"{op}: heap must be a realalloc.Heap, not {type(heap).__name__}")
    if heap.closed:
        raise HeapClosedError(f"{op}: the heap is closed; numpy cannot allocate from it")
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    if is_gil_enabled is not None and not is_gil_enabled():
        raise UnsupportedError(
            f"{op}: the interpreter runs without the GIL (free-threaded); realalloc's numpy "
            "handler relies on the GIL and is not supported there yet"
        )
    capsule = _c.numpy_handler(heap, SMALL_CACHE_SLOTS, LARGE_CACHE_SLOTS, CACHE_BYTES)
    return NumpyHandler(capsule, heap)


def _hook_threads() -> None:
    """Wrap Thread._bootstrap_inner once (see the module docstring: Threads)."""
    original = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]
    if hasattr(original, "__realalloc_wrapped__"):
        return

    def _bootstrap_inner(self: threading.Thread) -> None:
        capsule = _for_threads
        if capsule is not None:
            try:
                _c.numpy_swap_handler(capsule)
            except BaseException:  # never keep the thread from starting: start() waits for it
                with contextlib.suppress(BaseException):
                    print(
                        "realalloc.numpy: a new thread keeps numpy's default allocator:",
                        file=sys.stderr,
                    )
                    traceback.print_exc()
        original(self)

    _bootstrap_inner.__realalloc_wrapped__ = original  # type: ignore[attr-defined]
    threading.Thread._bootstrap_inner = _bootstrap_inner  # type: ignore[attr-defined]


def install(heap: Heap | None = None, *, threads: bool = True) -> NumpyHandler:
    """Make realalloc numpy's data allocator in the current context (``heap``:
    the default heap when None), and with ``threads`` in every
    ``threading.Thread`` started from now on.  Installing again replaces the
    handler; ``uninstall`` still goes back to what the first install found."""
    global _installed, _for_threads
    if not isinstance(threads, bool):
        raise ArgumentTypeError(f"install: threads must be a bool, not {type(threads).__name__}")
    handler = _new_handler(heap, "install")
    with _lock:
        if threads:
            _hook_threads()
        previous = _c.numpy_swap_handler(handler.capsule)
        if _installed is not None and previous is _installed.handler.capsule:
            previous = _installed.previous
        _installed = _Installed(handler, previous)
        _for_threads = handler.capsule if threads else None
    return handler


def uninstall() -> bool:
    """Undo ``install``: new threads get numpy's default again, and the current
    context gets back the handler install() replaced, if install()'s handler is
    still the current one here.  Arrays made under realalloc keep freeing
    through it.  Returns False when nothing was installed."""
    global _installed, _for_threads
    with _lock:
        state, _installed, _for_threads = _installed, None, None
        if state is None:
            return False
        if _c.numpy_swap_handler() is state.handler.capsule:
            _c.numpy_swap_handler(state.previous)
    state.handler.release_cache()
    return True


@contextlib.contextmanager
def using(heap: Heap | None = None) -> Iterator[NumpyHandler]:
    """``with using(heap):`` realalloc is numpy's allocator in the current
    context only (not in threads), and the previous handler comes back on exit.
    Nests; each thread and task has its own."""
    handler = _new_handler(heap, "using")
    previous = _c.numpy_swap_handler(handler.capsule)
    try:
        yield handler
    finally:
        _c.numpy_swap_handler(previous)
        handler.release_cache()


def current() -> NumpyHandler | None:
    """The realalloc handler numpy uses for new arrays in this context, or None."""
    return NumpyHandler.of(_c.numpy_swap_handler())


def installed() -> NumpyHandler | None:
    """The handler ``install`` set (in whichever context), or None."""
    state = _installed
    return None if state is None else state.handler


def handler_name() -> str:
    """numpy's name for the current handler (``realalloc`` under realalloc)."""
    return str(_multiarray.get_handler_name())


# -- numpy's own test suite under realalloc (pytest -p realalloc.numpy_plugin) --

PYTEST_DESELECT: Final[dict[str, str]] = {
    "test_mem_policy.py::test_thread_locality": (
        "asserts in a new thread that numpy's handler there is the default one; the "
        "plugin installs realalloc in new threads on purpose (install(threads=True)), so "
        "the assertion fails in the thread (a warning, not a failure, which would hide it)"
    ),
}
"""Tests of numpy's suite left out under the plugin: ``file::test`` -> why."""

PYTEST_DESELECT_NUMPY1: Final[dict[str, str]] = {
    "test_function_base.py::TestLogspace::test_start_stop_array": (
        "compares np.logspace of a 6x2 array with exact equality to the same numbers "
        "computed column by column; numpy 1.x's power loop treats an output that starts "
        "right where its input ends as overlapping and takes its scalar path, which rounds "
        "differently (1 ulp: with numpy's default allocator too, once input and output "
        "lie back to back in one buffer).  realalloc packs objects of one size class back "
        "to back; glibc leaves a chunk header between them.  numpy 2.x passes"
    ),
}
"""... and with numpy 1.x only."""


class PytestSession:
    """The plugin ``realalloc.numpy_plugin`` registers: realalloc serves numpy
    for the whole session, in every thread (``install(threads=True)``, before
    collection), from a heap of its own without the background scavenger: its
    thread runs Python now and then, and numpy's tests that count references
    to small ints (``TestStructuredObjectRefcounting``, Python 3.11) raced
    with it under load.  After each test the main thread's
    handler must still be realalloc's (a test that replaced it without putting
    it back is named and the handler set again); the session fails if that
    ever happened or if realalloc served no allocation, and the counts
    are printed; ``heap.check()`` must pass at the end.  Hook methods are
    found by name, so pytest is not imported.

    numpy 2.3 ships its tests as namespace packages (no ``__init__.py``), which
    ``--pyargs`` finds only with pytest's ``consider_namespace_packages``; the
    plugin turns it on unless the command line or ini file set it.  (numpy 2.4
    wheels ship no tests at all.)"""

    def __init__(self, config: Any) -> None:
        inicache = getattr(config, "_inicache", None)  # pytest's parsed ini values
        try:
            unset = not config.getini("consider_namespace_packages")
        except ValueError:  # pytest before 8.1 has no such option
            unset = False
        if unset and isinstance(inicache, dict):
            inicache["consider_namespace_packages"] = True
        self.handler = install(Heap(background_scavenger=False), threads=True)
        self.replaced: list[str] = []
        self.failure = ""

    def _still_installed(self, where: str) -> None:
        capsule = self.handler.capsule
        if _c.numpy_swap_handler() is not capsule:
            self.replaced.append(where)
            _c.numpy_swap_handler(capsule)

    def pytest_collection_modifyitems(self, config: Any, items: list[Any]) -> None:
        deselect = dict(PYTEST_DESELECT)
        if numpy_core_module(numpy.__version__) == "numpy.core":
            deselect.update(PYTEST_DESELECT_NUMPY1)
        keep: list[Any] = []
        drop: list[Any] = []
        for item in items:
            key = f"{item.path.name}::{item.nodeid.partition('::')[2]}"
            (drop if key in deselect else keep).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep

    def pytest_runtest_logfinish(self, nodeid: str, location: object) -> None:
        self._still_installed(nodeid)

    def pytest_sessionfinish(self, session: Any, exitstatus: int) -> None:
        self._still_installed("the end of the session")
        if self.replaced:
            self.failure = (
                f"numpy's allocator was replaced and not restored by {len(self.replaced)} "
                f"test(s), first {self.replaced[0]}"
            )
        elif self.handler.stats().served == 0:
            self.failure = "realalloc served no allocation: the handler was not used"
        else:
            try:
                self.handler.heap.check()
            except HeapCorruption as exc:
                self.failure = f"the heap is corrupt after the session: {exc}"
        if self.failure and session.exitstatus == 0:
            session.exitstatus = 1

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        st = self.handler.stats()
        terminalreporter.write_sep("=", "realalloc numpy allocator")
        terminalreporter.write_line(
            f"realalloc served {st.served} allocations for numpy ({st.mallocs} malloc, "
            f"{st.callocs} calloc, {st.reallocs} realloc; {st.cache_hits} of them reused "
            f"blocks it kept); {st.frees} frees, {st.foreign} of memory that was not its "
            f"own; {st.failures} calls failed (NULL to numpy, or an error reported)"
        )
        if self.failure:
            terminalreporter.write_line(f"FAILED: {self.failure}", red=True, bold=True)
