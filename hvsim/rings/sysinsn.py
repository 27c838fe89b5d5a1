"""System instructions that read or load descriptors, and the I/O permission check (jitted).

* LAR, LSL, VERR, VERW (SDM Vol. 2): they *answer* with ZF instead of faulting, and the
  answer depends on CPL and RPL. Robin & Irvine (2000) list them among the instructions
  that make pre-VT-x x86 non-virtualizable: a deprivileged guest kernel sees ring-3
  answers without any trap the VMM could catch.
* LTR, LLDT (SDM Vol. 2): load the task register / LDT register from the GDT. The CPL 0
  check is the caller's (the instruction handler raises #GP(0) first).
* ``io_permitted``: the protected-mode I/O check of IN/OUT/INS/OUTS (SDM Vol. 1, 19.5.1
  and 19.5.2): allowed when CPL <= IOPL, else only when every bit of the TSS I/O
  permission bitmap for the accessed ports is 0.

All ``@njit``. Descriptor and TSS reads are implicit supervisor accesses; a page fault
during one is left pending (callers test st[FAULT_PENDING] before using any result).
"""
from hvsim._jit import njit
from hvsim.arch.fault import raise_fault
from hvsim.arch.flags import ZF, IOPL_MASK, IOPL_SHIFT
from hvsim.arch.layout import (MASK32, EFLAGS, CPL, FAULT_PENDING, TR_SEL, TR_BASE, TR_LIMIT,
                              TR_AR, LDTR_SEL, LDTR_BASE, LDTR_LIMIT, LDTR_AR, AR_S,
                              AR_UNUSABLE)
from hvsim.mmu.paging import read_lin, write_lin
from hvsim.arch.pte import ACC_READ, ACC_WRITE
from hvsim.rings.descriptors import (
    SEL_TI, TSS_BUSY_BIT, TSS_IOMAP_BASE, TSS32_MIN_LIMIT,
    SYS_TSS16_AVAIL, SYS_LDT, SYS_TSS16_BUSY, SYS_CALL_GATE16, SYS_TASK_GATE,
    SYS_TSS32_AVAIL, SYS_TSS32_BUSY, SYS_CALL_GATE32, sel_rpl, sel_is_null, sel_error,
    desc_in_table, desc_lin, read_desc, desc_base, desc_limit, desc_ar, ar_dpl, ar_present,
    ar_system_type, ar_is_conforming, ar_is_code, ar_is_readable, ar_is_writable_data)

VEC_NP = 11
VEC_GP = 13

#: LAR loads the high dword masked by 00F0FF00H: type, S, DPL, P, AVL, L, D/B, G
#: (SDM Vol. 2A, LAR: "00FxFF00H", bits 19:16 undefined -- hvsim clears them, as QEMU does)
LAR_MASK = 0x00F0FF00

# which probe an instruction makes
PROBE_LAR = 0
PROBE_LSL = 1
PROBE_VERR = 2
PROBE_VERW = 3


@njit
def _lar_type_ok(t):
    """System types LAR reports (SDM Vol. 2A, LAR: the table of segment and gate types LAR accepts)."""
    return t == SYS_TSS16_AVAIL or t == SYS_LDT or t == SYS_TSS16_BUSY or \
        t == SYS_CALL_GATE16 or t == SYS_TASK_GATE or t == SYS_TSS32_AVAIL or \
        t == SYS_TSS32_BUSY or t == SYS_CALL_GATE32


@njit
def _lsl_type_ok(t):
    """System types LSL reports: those with a limit -- TSSs and LDTs, no gates."""
    return t == SYS_TSS16_AVAIL or t == SYS_LDT or t == SYS_TSS16_BUSY or \
        t == SYS_TSS32_AVAIL or t == SYS_TSS32_BUSY


@njit
def probe(mem, st, tlb, pg, sel, kind):
    """(valid, lo, hi): would ``kind`` accept the descriptor named by ``sel``?

    Invalid: null selector, outside its table, a type the instruction does not accept,
    or -- except for conforming code segments -- DPL < CPL or DPL < RPL."""
    sel = sel & 0xFFFF
    if sel_is_null(sel) or not desc_in_table(st, sel):
        return 0, 0, 0
    lo, hi = read_desc(mem, st, tlb, pg, sel)
    if st[FAULT_PENDING] != 0:
        return 0, 0, 0
    ar = desc_ar(hi)
    if ar & AR_S:
        if kind == PROBE_VERR and not ar_is_readable(ar):
            return 0, lo, hi
        if kind == PROBE_VERW and not ar_is_writable_data(ar):
            return 0, lo, hi
        if ar_is_code(ar) and ar_is_conforming(ar):
            return 1, lo, hi
    else:
        t = ar_system_type(ar)
        if kind == PROBE_VERR or kind == PROBE_VERW:
            return 0, lo, hi
        if kind == PROBE_LAR and not _lar_type_ok(t):
            return 0, lo, hi
        if kind == PROBE_LSL and not _lsl_type_ok(t):
            return 0, lo, hi
    dpl = ar_dpl(ar)
    if dpl < st[CPL] or dpl < sel_rpl(sel):
        return 0, lo, hi
    return 1, lo, hi


@njit
def _set_zf(st, ok):
    if ok:
        st[EFLAGS] |= ZF
    else:
        st[EFLAGS] &= ~ZF


@njit
def lar(mem, st, tlb, pg, sel):
    """LAR r32, r/m16: the access-rights dword and ZF=1, or -1 and ZF=0 (destination
    unchanged). On a page fault: -1 with the fault pending, ZF untouched."""
    ok, lo, hi = probe(mem, st, tlb, pg, sel, PROBE_LAR)
    if st[FAULT_PENDING] != 0:
        return -1
    _set_zf(st, ok)
    if ok:
        return hi & LAR_MASK
    return -1


@njit
def lsl(mem, st, tlb, pg, sel):
    """LSL r32, r/m16: the segment limit in bytes (scaled by G) and ZF=1, or -1, ZF=0."""
    ok, lo, hi = probe(mem, st, tlb, pg, sel, PROBE_LSL)
    if st[FAULT_PENDING] != 0:
        return -1
    _set_zf(st, ok)
    if ok:
        return desc_limit(lo, hi)
    return -1


@njit
def verr(mem, st, tlb, pg, sel):
    """VERR r/m16: ZF=1 when the segment is readable at this CPL/RPL. Returns ZF (1/0)."""
    ok, lo, hi = probe(mem, st, tlb, pg, sel, PROBE_VERR)
    if st[FAULT_PENDING] != 0:
        return 0
    _set_zf(st, ok)
    return ok


@njit
def verw(mem, st, tlb, pg, sel):
    """VERW r/m16: ZF=1 when the segment is a writable data segment at this CPL/RPL."""
    ok, lo, hi = probe(mem, st, tlb, pg, sel, PROBE_VERW)
    if st[FAULT_PENDING] != 0:
        return 0
    _set_zf(st, ok)
    return ok


@njit
def _gdt_system_desc(mem, st, tlb, pg, sel, want_type):
    """The descriptor LTR/LLDT load: in the GDT (TI=0, within the limit) and of system
    type ``want_type``, else #GP(sel); not present -> #NP(sel). Returns (lo, hi)."""
    if (sel & SEL_TI) or not desc_in_table(st, sel):
        raise_fault(st, VEC_GP, sel_error(sel, 0))
        return 0, 0
    lo, hi = read_desc(mem, st, tlb, pg, sel)
    if st[FAULT_PENDING] != 0:
        return 0, 0
    ar = desc_ar(hi)
    if ar_system_type(ar) != want_type:
        raise_fault(st, VEC_GP, sel_error(sel, 0))
        return 0, 0
    if not ar_present(ar):
        raise_fault(st, VEC_NP, sel_error(sel, 0))
        return 0, 0
    return lo, hi


@njit
def ltr(mem, st, tlb, pg, sel):
    """LTR r/m16 (SDM Vol. 2A, LTR): null -> #GP(0); LDT selector, outside the GDT or not
    an available 32-bit TSS (type 9) -> #GP(sel); not present -> #NP(sel). Marks the
    descriptor busy (type 0xB) in memory and loads TR. (16-bit TSSs are not modelled.)"""
    sel = sel & 0xFFFF
    if sel_is_null(sel):
        raise_fault(st, VEC_GP, 0)
        return
    lo, hi = _gdt_system_desc(mem, st, tlb, pg, sel, SYS_TSS32_AVAIL)
    if st[FAULT_PENDING] != 0:
        return
    hi = hi | (TSS_BUSY_BIT << 8)
    write_lin(mem, st, tlb, pg, (desc_lin(st, sel) + 5) & MASK32, 1, (hi >> 8) & 0xFF,
              ACC_WRITE)
    if st[FAULT_PENDING] != 0:
        return
    st[TR_SEL] = sel
    st[TR_BASE] = desc_base(lo, hi)
    st[TR_LIMIT] = desc_limit(lo, hi)
    st[TR_AR] = desc_ar(hi)


@njit
def lldt(mem, st, tlb, pg, sel):
    """LLDT r/m16 (SDM Vol. 2A, LLDT): null -> LDTR unusable (any later LDT reference
    faults); LDT selector, outside the GDT or not an LDT descriptor -> #GP(sel); not
    present -> #NP(sel)."""
    sel = sel & 0xFFFF
    if sel_is_null(sel):
        st[LDTR_SEL] = sel
        st[LDTR_BASE] = 0
        st[LDTR_LIMIT] = 0
        st[LDTR_AR] = AR_UNUSABLE
        return
    lo, hi = _gdt_system_desc(mem, st, tlb, pg, sel, SYS_LDT)
    if st[FAULT_PENDING] != 0:
        return
    ar = desc_ar(hi)
    st[LDTR_SEL] = sel
    st[LDTR_BASE] = desc_base(lo, hi)
    st[LDTR_LIMIT] = desc_limit(lo, hi)
    st[LDTR_AR] = ar


# --- I/O permission (SDM Vol. 1, 19.5) --------------------------------------------------------
#
#   TSS offset 102: 16-bit offset of the I/O permission bitmap, one bit per port
#   (bit n%8 of byte n/8; 1 = trap). The processor reads the *two* bytes holding the
#   bits of ports port .. port+size-1; both must lie within the TSS limit, or the access
#   is refused. A bitmap base at or past the limit means "no bitmap": all refused.
@njit
def io_permitted(mem, st, tlb, pg, port, size):
    """1 when IN/OUT of ``size`` bytes (1, 2, 4) at ``port`` is allowed at this CPL, else 0.
    A page fault on the TSS leaves the fault pending and returns 0."""
    if st[CPL] <= (st[EFLAGS] & IOPL_MASK) >> IOPL_SHIFT:
        return 1
    tr_ar = st[TR_AR]
    t = ar_system_type(tr_ar)
    if (tr_ar & AR_UNUSABLE) or (t != SYS_TSS32_AVAIL and t != SYS_TSS32_BUSY) or \
            st[TR_LIMIT] < TSS32_MIN_LIMIT:
        return 0
    base = read_lin(mem, st, tlb, pg, (st[TR_BASE] + TSS_IOMAP_BASE) & MASK32, 2, ACC_READ)
    if st[FAULT_PENDING] != 0:
        return 0
    off = base + ((port & 0xFFFF) >> 3)
    if off + 1 > st[TR_LIMIT]:
        return 0
    bits = read_lin(mem, st, tlb, pg, (st[TR_BASE] + off) & MASK32, 2, ACC_READ)
    if st[FAULT_PENDING] != 0:
        return 0
    mask = ((1 << size) - 1) << (port & 7)
    if bits & mask:
        return 0
    return 1
