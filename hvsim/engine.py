"""The engine: how the face reaches the jitted run loop (Python, not jitted).

``Machine`` (hvsim/machine.py) is the KVM_RUN face; this module is the plumbing behind
it that a user of the face never sees:

* the compiled entry point of ``hvsim.cpu.run.run``, taken once so that a ``step()``
  does not pay numba's per-call type dispatch;
* the first compile on a new machine: the notice, and the helper process that
  compiles the handlers on the second core (hvsim/warmup.py);
* :func:`run`, which calls the run loop and serves its internal requests -- a hot block
  to translate (hvsim/cpu/translate.py), a kernel-table entry to compile
  (hvsim/cpu/table.py) -- until a guest event ends the call.
"""
from __future__ import annotations

import atexit
import os
import sys

import numpy as np

from hvsim.arch import layout as L
from hvsim.arch.exits import EXIT_TRANSLATE
from hvsim.cpu import table as _table
from hvsim.cpu.translate import translate as _translate

_ENTRY = None
_HELPER = None      # the cold-compile helper process this process started, if any
_KTAB = _table.KTAB                  # the kernel table (one array, filled in place)
_BLOCK_REQUEST = L.BLOCK_REQUEST

FIRST_COMPILE_NOTICE = (
    "hvsim: compiling the machine's kernels for their first use on this machine (about "
    "10 s, then a moment for each new kind of instruction, once: numba caches them on "
    "disk; `hvsim warmup` compiles them all ahead, in about a minute)")


def kernel_cache_present():
    """Whether numba's disk cache holds the compiled run loop: True, False, or None
    when that cannot be told (caching off, or a numba without the cache layout
    this reads). Nothing is compiled or loaded to find out."""
    from hvsim.cpu.run import run
    try:
        return os.path.exists(run._cache._cache_file._index_path)
    except AttributeError:
        return None


def _start_compile_helper():
    """Start the cold-compile helper (hvsim/warmup.py): while this process compiles the
    run loop, it compiles the handlers, and goes on through all of them in the
    background; it is stopped when this process exits, if it has not finished."""
    global _HELPER
    from hvsim.warmup import start_compile_helper, stop_compile_helper
    helper = start_compile_helper()
    if helper is not None:
        atexit.register(stop_compile_helper, helper)
        _HELPER = helper
    return helper


def _kernel_entry():
    """The compiled run loop, called without numba's per-call type dispatch.

    All machines pass arrays of the same types, so after the first call the
    compiled entry point is taken directly: this halves the cost of ``step()``.
    """
    global _ENTRY
    if _ENTRY is not None:
        return _ENTRY
    from hvsim.cpu.run import run
    if not hasattr(run, "overloads"):          # NUMBA_DISABLE_JIT=1: plain Python
        _ENTRY = run
        return run
    if not run.signatures:
        if kernel_cache_present() is False:
            from hvsim.warmup import compile_run_loop_parts, first_compile_notice
            if first_compile_notice():
                print(FIRST_COMPILE_NOTICE, file=sys.stderr, flush=True)
            compile_run_loop_parts(_start_compile_helper())
        st = np.zeros(L.ST_SIZE, np.int64)
        st[L.CFG_MEM_SIZE] = 4096
        run(np.zeros(4096, np.uint8), st, np.zeros(L.TLB_FIELDS, np.int64),
            np.zeros(L.DC_SHAPE, np.int64), np.zeros(1, np.int64), 0, _table.KTAB)
    _ENTRY = run.overloads[run.signatures[0]].entry_point
    return _ENTRY


def run(mem, st, tlb, dc, pg, budget: int, on_trace_full=None) -> int:
    """Run the guest for at most ``budget`` steps; the exit kind (hvsim/arch/exits.py).

    Internal requests of the run loop are served here and never returned: a row is hot
    (translate its block), a kernel is missing from the table (compile it), or the
    instruction trace's buffer is nearly full (``on_trace_full()`` drains it:
    hvsim/cpu/itrace.py), then the loop goes on with the rest of the budget.
    """
    entry = _ENTRY or _kernel_entry()
    ktab = _KTAB
    kind = entry(mem, st, tlb, dc, pg, budget, ktab)
    if kind != EXIT_TRANSLATE and st.item(_BLOCK_REQUEST) < 0:     # (item: a Python int)
        return kind
    steps = 0
    while True:
        row = int(st[L.BLOCK_REQUEST])
        if row >= 0:
            st[L.BLOCK_REQUEST] = -1
            _translate(dc, row)
        if st[L.ITRACE_FULL]:
            st[L.ITRACE_FULL] = 0
            _drain_trace(st, on_trace_full)
        slot = int(st[L.KERNEL_REQUEST])
        if slot >= 0:
            try:
                _table.await_helper(slot, _HELPER)
                _table.ensure(slot)
            except BaseException:
                # the instruction is fetched again by the next run(); a fault stays pending
                st[L.RESUME_ROW] = -1
                raise
            finally:
                st[L.KERNEL_REQUEST] = -1
        if kind != EXIT_TRANSLATE:
            st[L.EXIT_STEPS] += steps
            return int(kind)
        steps += int(st[L.EXIT_STEPS])
        kind = entry(mem, st, tlb, dc, pg, budget - steps, ktab)


def _drain_trace(st, on_trace_full) -> None:
    """The trace buffer has fewer than ITRACE_RESERVE free records: the host takes them."""
    if on_trace_full is None:
        raise RuntimeError("the instruction trace is full and no handler drains it "
                           "(Machine.set_instruction_trace(..., on_full=...))")
    on_trace_full()
    if st[L.ITRACE_CAP] != 0 and st[L.ITRACE_COUNT] > st[L.ITRACE_CAP] - L.ITRACE_RESERVE:
        raise RuntimeError(f"the instruction trace's handler left {int(st[L.ITRACE_COUNT])} "
                           f"of {int(st[L.ITRACE_CAP])} records in the buffer: it must take them "
                           "(Machine.take_instruction_trace())")
