"""The per-frame page words (the ``pg`` array): a write that may change decoded code (jitted).

``pg[frame]`` holds bit 0 = a decoded instruction was cached from this 4 KiB physical
frame, bit 1 = an instruction was fetched from it while the instruction trace was on,
and a generation counter in bits 63:2 (hvsim/arch/layout.py, PG_*). Every kernel that
stores into physical memory calls :func:`code_written` for the bytes it wrote when one
of their frames has either bit set (the test is the caller's, inlined), so that the
decode cache sees its entries there are stale (self-modifying code) and, while tracing,
the trace gets a code-written record. Kept apart from paging.py so that the EPT walker
(ept.py), which paging.py calls, can set its accessed and dirty flags without importing
paging.

Code-written records (hvsim/arch/layout.py, ITRACE_*) are coalesced: a store that
continues the range of the newest record, in the same frame, with no instruction
retired in between, widens that record instead of adding one -- a REP STOS over a
code page is one record, not 4096.
"""
import numpy as np

from hvsim._jit import njit
from hvsim.arch.layout import (COUNTERS, PG_CODE, PG_TRACED, PG_GEN_ONE, ITRACE_BASE,
                               ITRACE_CAP, ITRACE_COUNT, ITRACE_LOST, ITRACE_RECORD_BYTES,
                               ITRACE_KIND_SHIFT, ITRACE_KIND_CODE_WRITTEN, MASK32)
from hvsim.arch.counters import C_SMC

_CODE_WRITTEN_MODE = ITRACE_KIND_CODE_WRITTEN << ITRACE_KIND_SHIFT


@njit(_nrt=False, inline="always")
def put32(mem, a, v):
    """Little-endian u32 ``v`` at ``a`` (a record word: the face checked the buffer)."""
    mem[a] = v & 0xFF
    mem[a + 1] = (v >> 8) & 0xFF
    mem[a + 2] = (v >> 16) & 0xFF
    mem[a + 3] = (v >> 24) & 0xFF


@njit(_nrt=False, inline="always")
def get32(mem, a):
    return (np.int64(mem[a]) | (np.int64(mem[a + 1]) << 8) | (np.int64(mem[a + 2]) << 16)
            | (np.int64(mem[a + 3]) << 24))


@njit(_nrt=False)
def record_slot(st):
    """Address of the next free record, or -1 (counted in ITRACE_LOST) when none is left."""
    n = st[ITRACE_COUNT]
    if n >= st[ITRACE_CAP]:
        st[ITRACE_LOST] += 1
        return -1
    st[ITRACE_COUNT] = n + 1
    return st[ITRACE_BASE] + n * ITRACE_RECORD_BYTES


@njit(_nrt=False)
def _record_write(mem, st, pa, size):
    n = st[ITRACE_COUNT]
    if n > 0:
        a = st[ITRACE_BASE] + (n - 1) * ITRACE_RECORD_BYTES
        if get32(mem, a + 8) == _CODE_WRITTEN_MODE:
            lo = get32(mem, a + 4)
            hi = lo + get32(mem, a + 12)
            if (lo >> 12) == (pa >> 12) and pa <= hi and pa + size >= lo:
                nlo = min(lo, pa)
                put32(mem, a + 4, nlo)
                put32(mem, a + 12, max(hi, pa + size) - nlo)
                return
    a = record_slot(st)
    if a < 0:
        return
    put32(mem, a, 0)
    put32(mem, a + 4, pa & MASK32)
    put32(mem, a + 8, _CODE_WRITTEN_MODE)
    put32(mem, a + 12, size)
    for k in range(16, ITRACE_RECORD_BYTES):
        mem[a + k] = 0


@njit(_nrt=False)
def code_written(mem, st, pg, pa, size):
    """``size`` bytes were stored at physical ``pa`` and one of their frames has PG_CODE
    or PG_TRACED: bump the generation of a frame with decoded code (the decode cache
    sees its entries are stale) and, while tracing, record the write per frame."""
    end = pa + size
    while pa < end:
        f = pa >> 12
        n = min(end, (f + 1) << 12) - pa
        if f < pg.shape[0]:
            w = pg[f]
            if (w & PG_CODE) != 0:
                pg[f] = (w & ~PG_CODE) + PG_GEN_ONE
                st[COUNTERS + C_SMC] += 1
            if (w & PG_TRACED) != 0 and st[ITRACE_CAP] != 0:
                _record_write(mem, st, pa, n)
        pa += n
