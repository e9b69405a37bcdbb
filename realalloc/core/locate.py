"""Finding the object at an address, and saying why there is none (Go: findObject).

See realalloc/__init__.py for an overview of the allocator.

``locate(mheap, addr, op)`` returns where the live object starting at
``addr`` is (its span, slot, and byte in the block for a tiny piece), or
raises the error that says exactly what is wrong with ``addr``: not this
heap's (ForeignPointerError), inside an object (InteriorPointerError), or an
object already freed (DoubleFreeError).  ``free``, ``realloc`` and
``usable_size`` use it, and the C fast path sends every address it refuses
here for the message.

Objects by kind, and their extent::

    tiny piece    bytes start .. end of one piece of a 16-byte block
                  (the block's state word, csrc/shim.h RA_TINY_HELD)
    small object  a whole slot of its span (Go's roundupsize)
    large object  the span's pages

Locking: none.  It reads C records that other threads may change: an
answer about an address another thread frees at the same moment may be
stale (the caller raced itself).  The heap must be open (the caller is
inside it, so close waits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ..errors import DoubleFreeError, ForeignPointerError, InteriorPointerError
from .arena import ARENAS
from .osmem import lib
from .sizeclasses import TINY_SPAN_CLASS
from .span import MSpan, SpanState, span_bits, tiny_states

if TYPE_CHECKING:
    from .mheap import MHeap

__all__ = ["Located", "locate"]

_RECENT_LARGE: Final = 64


@dataclass(frozen=True, slots=True)
class Located:
    """Where a live object is: its span, slot, byte offset of a tiny piece,
    and the bytes usable at its address (C's rule: ``ra_usable_size``)."""

    span: MSpan
    slot: int
    piece: int
    """Offset of the tiny piece in its block; -1 for a whole slot."""
    extent: int
    """Bytes usable at the object's address."""


def locate(mheap: MHeap, addr: int, op: str) -> Located:
    """The live object at ``addr``, or the specific error for why not."""
    where = f"{op}({addr:#x})"
    usable = int(lib.ra_usable_size(mheap.h, addr))
    arena = ARENAS.lookup(addr)
    if arena is None:
        raise ForeignPointerError(f"{where}: not an address of this heap")
    if arena.heap_id != mheap.id:
        raise ForeignPointerError(f"{where}: the address belongs to another heap")
    span = mheap.span_of(addr)
    if span is None:
        recent = mheap.h.freed_large
        if any(int(recent[i]) == addr for i in range(_RECENT_LARGE)):
            raise DoubleFreeError(f"{where}: the large object was already freed")
        raise ForeignPointerError(f"{where}: no object there (free pages of this heap)")
    c = span.c
    base = int(c.base)
    if c.state != SpanState.IN_USE:
        raise ForeignPointerError(f"{where}: inside pages handed out whole, not an object")
    if c.spanclass < 2:
        if not c.alloc_count:  # freed; its span waits on its central for reuse
            if addr == base:
                raise DoubleFreeError(f"{where}: the large object was already freed")
            raise ForeignPointerError(f"{where}: inside a freed large object at {base:#x}")
        if addr != base:
            raise InteriorPointerError(
                f"{where}: points {addr - base} bytes into the large object at {base:#x}"
            )
        return Located(span, 0, -1, usable)
    elemsize = int(c.elemsize)
    slot, inner = divmod(addr - base, elemsize)
    if slot >= c.nelems:
        raise ForeignPointerError(f"{where}: in the unused tail of the span at {base:#x}")
    _, alloc, freed = span_bits(c)
    live = bool(alloc >> slot & 1) and not freed >> slot & 1
    state = int(tiny_states(c)[slot]) if c.spanclass == TINY_SPAN_CLASS else 0
    if state:
        if live and state >> inner & 1:
            return Located(span, slot, inner, usable)
        block = addr - inner
        for start in range(inner + 1):
            extent = int(lib.ra_usable_size(mheap.h, block + start))
            if state >> start & 1 and inner < start + extent:
                raise InteriorPointerError(
                    f"{where}: points {inner - start} bytes into the tiny object at "
                    f"{block + start:#x}"
                )
        raise DoubleFreeError(f"{where}: no live tiny object starts there (already freed?)")
    if not live:
        raise DoubleFreeError(f"{where}: no live object there (already freed?)")
    if inner:
        raise InteriorPointerError(
            f"{where}: points {inner} bytes into the {elemsize}-byte object at {addr - inner:#x}"
        )
    return Located(span, slot, -1, usable)
