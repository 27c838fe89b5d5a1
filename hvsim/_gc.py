"""hvsim's start-up and Python's cyclic garbage collector (ground floor; not jitted).

``import hvsim`` brings in numba, llvmlite and numpy: about 110,000 objects that live
as long as the process. CPython's collector counts allocations, so while they are being
made it runs full and partial collections over them again and again (about 0.15 s of a
warm start, measured with ``gc.callbacks``), and every later full collection -- the
one at interpreter exit included -- walks all of them once more (about 0.3 s on exit).

Two things keep that work out, both with CPython's public API (the ``gc`` module):

* :func:`paused` turns the collector off while hvsim imports its dependencies and
  while numba loads a kernel from its disk cache, and restores the state it found;
* :func:`freeze_startup` (called once, at the end of ``import hvsim``) moves every
  object then alive into the collector's permanent generation (``gc.freeze``, Python
  3.7+), which no collection scans.

The cost of freezing: an object that existed at the end of ``import hvsim`` and later
becomes part of an unreachable reference cycle is not reclaimed (objects freed by
reference counting, which is almost all of them, still are). The import itself leaves
about 400 such objects behind once (measured with ``gc.collect()`` after it); a
collection to free them first would cost about 0.07 s of every start, so it is not
made. ``HVSIM_GC_FREEZE=0`` in the environment turns the freeze off.
"""
from __future__ import annotations

import contextlib
import gc
import os

_frozen = False


@contextlib.contextmanager
def paused():
    """The cyclic collector off for the ``with`` body; the state found is restored."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def freeze_enabled() -> bool:
    """Whether :func:`freeze_startup` freezes (``HVSIM_GC_FREEZE`` is not ``0``)."""
    return os.environ.get("HVSIM_GC_FREEZE", "1").strip() != "0"


def freeze_startup() -> bool:
    """Freeze every object now alive (once per process); True if it froze."""
    global _frozen
    if _frozen or not freeze_enabled():
        return False
    gc.freeze()
    _frozen = True
    return True
