"""The per-frame page words (the ``pg`` array): a write that may change decoded code (jitted).

``pg[frame]`` holds bit 0 = a decoded instruction was cached from this 4 KiB physical
frame, and a generation counter in bits 63:1 (hvsim/arch/layout.py, PG_*). Every
kernel that stores into physical memory calls :func:`smc_check` for the frames it
touched, so that the decode cache sees its entries there are stale (self-modifying
code). Kept apart from paging.py so that the EPT walker (ept.py), which paging.py
calls, can set its accessed and dirty flags without importing paging.
"""
from hvsim._jit import njit
from hvsim.arch.layout import COUNTERS, PG_CODE, PG_GEN_ONE
from hvsim.arch.counters import C_SMC


@njit(_nrt=False)
def smc_check(st, pg, f):
    """A decoded instruction was cached from frame ``f``: bump its generation so the
    decode cache sees its entries are stale (layout.py, PG_*)."""
    if f < pg.shape[0] and (pg[f] & PG_CODE) != 0:
        pg[f] = (pg[f] & ~PG_CODE) + PG_GEN_ONE
        st[COUNTERS + C_SMC] += 1
