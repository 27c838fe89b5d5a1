"""Segment registers: limit/type checks, the stack, and MOV/POP Sreg (jitted).

Every function here is ``@njit``. Each segment register has a visible selector and a
hidden cache (base, limit in bytes, access rights in the VMCS layout) in ``st``
(hvsim/arch/layout.py SEG_*); the checks below read only the cache, as the processor
does after a load (SDM Vol. 3A, 3.4.3 and 5.3-5.6).

* ``seg_lin``   segment-relative offset -> linear address, with the limit and type
  checks of SDM Vol. 3A 5.3 and 5.4 (#SS(0) for SS, #GP(0) for the others).
* ``push32`` / ``pop32``  one dword through SS:ESP at the current CPL.
* ``load_sreg`` MOV Sreg / POP Sreg for ES, SS, DS, FS, GS (SDM Vol. 2, MOV, "Operation").
* ``update_flat`` recompute the ``st[FLAT]`` fast-path hint; ``ac_active`` whether
  alignment checking (#AC) is on.
* small helpers the gate/return code shares: ``stack_room``, ``stack_avail``,
  ``stack_write``, ``stack_read``, ``load_cache``, ``load_null``, ``null_outer_data``.
"""
from hvsim._jit import njit
from hvsim.arch.counters import C_SEG_LOAD
from hvsim.arch.fault import raise_fault
from hvsim.arch.cr import CR0_AM
from hvsim.arch.flags import AC as EFLAGS_AC
from hvsim.arch.vectors import AC as VEC_AC
from hvsim.arch.layout import (MASK32, ESP, CPL, CR0, EFLAGS, COUNTERS, FAULT_PENDING, FLAT,
                              SEG_SEL, SEG_BASE, SEG_LIMIT, SEG_AR, AR_UNUSABLE, AR_DB,
                              SREG_ES, SREG_CS, SREG_SS, SREG_DS, SREG_FS, SREG_GS)
from hvsim.mmu.paging import read_lin, write_lin
from hvsim.arch.pte import ACC_READ, ACC_WRITE, ACC_USER
from hvsim.rings.descriptors import (
    EXPAND_DOWN_TOP_BIG, EXPAND_DOWN_TOP_SMALL, sel_rpl, sel_is_null, sel_error,
    desc_in_table, read_desc, set_accessed, desc_base, desc_limit, desc_ar, ar_dpl,
    ar_present, ar_is_code, ar_is_data, ar_is_conforming, ar_is_readable,
    ar_is_writable_data, ar_is_expand_down)

VEC_UD = 6    # invalid opcode (SDM Vol. 3A, Table 6-1)
VEC_NP = 11   # segment not present
VEC_SS = 12   # stack-segment fault
VEC_GP = 13   # general protection

FLAT_LIMIT = 0xFFFFFFFF
STACK16_MASK = 0xFFFF


# --- limit and type checks (SDM Vol. 3A, 5.3 "Limit Checking", 5.4 "Type Checking") ---------
@njit
def offset_ok(limit, ar, off, size):
    """True when bytes off .. off+size-1 are inside the segment.

    Expand-up: the last byte must be <= limit. Expand-down data segments hold the
    offsets *above* the limit, up to 0xFFFFFFFF (B=1) or 0xFFFF (B=0)."""
    last = off + size - 1
    if ar_is_expand_down(ar):
        top = EXPAND_DOWN_TOP_BIG if ar & AR_DB else EXPAND_DOWN_TOP_SMALL
        return off > limit and last <= top
    return last <= limit


@njit
def ac_active(st):
    """Alignment checking is on: CR0.AM = 1, EFLAGS.AC = 1 and CPL = 3
    (SDM Vol. 3A, 6.15 "Interrupt 17 -- Alignment Check Exception (#AC)")."""
    return (st[CR0] & CR0_AM) != 0 and (st[EFLAGS] & EFLAGS_AC) != 0 and st[CPL] == 3


@njit
def seg_lin(st, sreg, off, size, write):
    """Linear address of ``sreg:off`` for a data access of ``size`` bytes.

    Faults (vector #SS for SS, #GP for the others, error code 0): unusable (null)
    segment; write to a code segment or to a read-only data segment; read of an
    execute-only code segment; any byte outside the limit. Then #AC(0) when alignment
    checking is on and the linear address is not a multiple of ``size`` (SDM Vol. 3A,
    6.15, Table 6-7: a word at an even address, a doubleword at a multiple of 4).
    Returns 0 on a fault."""
    ar = st[SEG_AR + sreg]
    vec = VEC_SS if sreg == SREG_SS else VEC_GP
    off = off & MASK32
    bad = False
    if ar & AR_UNUSABLE:
        bad = True
    elif ar_is_code(ar):
        bad = write != 0 or not ar_is_readable(ar)
    elif write != 0 and not ar_is_writable_data(ar):
        bad = True
    if bad or not offset_ok(st[SEG_LIMIT + sreg], ar, off, size):
        raise_fault(st, vec, 0)
        return 0
    lin = (st[SEG_BASE + sreg] + off) & MASK32
    if (lin & (size - 1)) != 0 and ac_active(st):
        raise_fault(st, VEC_AC, 0)
        return 0
    return lin


# --- the stack ------------------------------------------------------------------------------
@njit
def stack_mask(ar):
    """SS.B = 1: ESP is the stack pointer; B = 0: only SP (SDM Vol. 3A, 3.4.5)."""
    if ar & AR_DB:
        return MASK32
    return STACK16_MASK


@njit
def user_acc(cpl):
    return ACC_USER if cpl == 3 else 0


@njit
def stack_room(limit, ar, esp, nbytes):
    """True when ``nbytes`` can be pushed below ``esp`` without leaving the segment."""
    mask = stack_mask(ar)
    return offset_ok(limit, ar, (esp - nbytes) & mask, nbytes)


@njit
def stack_avail(limit, ar, esp, nbytes):
    """True when ``nbytes`` at ``esp`` and above lie inside the segment (to pop them)."""
    return offset_ok(limit, ar, esp & stack_mask(ar), nbytes)


@njit
def stack_write(mem, st, tlb, pg, base, ar, esp, value, cpl):
    """Push one dword on the stack (base, ar, esp) -- not necessarily the current one --
    and return the new ESP. Limits are the caller's (``stack_room`` for the whole frame);
    the write is a user access only when ``cpl`` is 3."""
    mask = stack_mask(ar)
    sp = (esp - 4) & mask
    write_lin(mem, st, tlb, pg, (base + sp) & MASK32, 4, value & MASK32,
              ACC_WRITE | user_acc(cpl))
    return (esp & ~mask & MASK32) | sp


@njit
def stack_read(mem, st, tlb, pg, base, ar, esp, byte_off, cpl):
    """The dword at ``esp + byte_off`` on the stack (base, ar); ESP is not moved."""
    sp = (esp + byte_off) & stack_mask(ar)
    return read_lin(mem, st, tlb, pg, (base + sp) & MASK32, 4, ACC_READ | user_acc(cpl))


@njit
def stack_add(ar, esp, nbytes):
    """ESP after popping ``nbytes`` (only SP moves on a 16-bit stack)."""
    mask = stack_mask(ar)
    return (esp & ~mask & MASK32) | ((esp + nbytes) & mask)


@njit
def push32(mem, st, tlb, pg, value):
    """PUSH of a dword through SS:ESP at the current CPL (#SS(0) past the limit)."""
    ar = st[SEG_AR + SREG_SS]
    mask = stack_mask(ar)
    esp = st[ESP]
    sp = (esp - 4) & mask
    lin = seg_lin(st, SREG_SS, sp, 4, 1)
    if st[FAULT_PENDING] != 0:
        return
    write_lin(mem, st, tlb, pg, lin, 4, value & MASK32, ACC_WRITE | user_acc(st[CPL]))
    if st[FAULT_PENDING] != 0:
        return
    st[ESP] = (esp & ~mask & MASK32) | sp


@njit
def pop32(mem, st, tlb, pg):
    """POP of a dword through SS:ESP at the current CPL. Returns it (0 on a fault)."""
    ar = st[SEG_AR + SREG_SS]
    esp = st[ESP]
    lin = seg_lin(st, SREG_SS, esp & stack_mask(ar), 4, 0)
    if st[FAULT_PENDING] != 0:
        return 0
    value = read_lin(mem, st, tlb, pg, lin, 4, ACC_READ | user_acc(st[CPL]))
    if st[FAULT_PENDING] != 0:
        return 0
    st[ESP] = stack_add(ar, esp, 4)
    return value


# --- segment caches ---------------------------------------------------------------------------
@njit
def load_cache(st, sreg, sel, lo, hi):
    """Fill the hidden part of ``sreg`` from a descriptor (no checks)."""
    st[SEG_SEL + sreg] = sel & 0xFFFF
    st[SEG_BASE + sreg] = desc_base(lo, hi)
    st[SEG_LIMIT + sreg] = desc_limit(lo, hi)
    st[SEG_AR + sreg] = desc_ar(hi)


@njit
def load_null(st, sreg, sel):
    """A null selector in DS/ES/FS/GS: the register is marked unusable (VMCS AR bit 16)."""
    st[SEG_SEL + sreg] = sel & 0xFFFF
    st[SEG_BASE + sreg] = 0
    st[SEG_LIMIT + sreg] = 0
    st[SEG_AR + sreg] = AR_UNUSABLE


@njit
def update_flat(st):
    """st[FLAT] = 1 iff an access through DS, ES or SS needs no check before paging.

    That holds when CS, SS, DS and ES are usable, base 0, limit 4 GiB, expand-up, and
    SS, DS and ES hold *writable data* segments: a flat read-only data segment or a
    flat code segment in DS/ES still refuses writes (and an execute-only one reads)
    with #GP(0) (SDM Vol. 3A, 5.5/5.6 type checking), so ``seg_lin`` must see those
    accesses. Alignment checking (``ac_active``) also needs ``seg_lin``.
    Every change of a segment cache, CR0.AM, EFLAGS.AC or the CPL calls this."""
    flat = 1
    for sreg in (SREG_CS, SREG_SS, SREG_DS, SREG_ES):
        ar = st[SEG_AR + sreg]
        if (ar & AR_UNUSABLE) or st[SEG_BASE + sreg] != 0 or \
                st[SEG_LIMIT + sreg] != FLAT_LIMIT or ar_is_expand_down(ar):
            flat = 0
        elif sreg != SREG_CS and not ar_is_writable_data(ar):
            flat = 0
    if ac_active(st):
        flat = 0
    st[FLAT] = flat


@njit
def null_outer_data(st, cpl):
    """After a return to an outer ring (IRET, far RET): ES, DS, FS, GS that hold a data
    or non-conforming code segment with DPL < the new CPL become null, so the outer
    ring cannot keep using inner-ring segments (SDM Vol. 2, IRET / RET "Operation")."""
    for sreg in (SREG_ES, SREG_DS, SREG_FS, SREG_GS):
        ar = st[SEG_AR + sreg]
        if ar & AR_UNUSABLE:
            continue
        if (ar_is_data(ar) or not ar_is_conforming(ar)) and ar_dpl(ar) < cpl:
            load_null(st, sreg, 0)


# --- MOV Sreg / POP Sreg (SDM Vol. 2B, MOV "Operation"; Vol. 3A, 5.6 and 5.7) -----------------
@njit
def load_sreg(mem, st, tlb, pg, sreg, sel):
    """Load ``sel`` into ES, SS, DS, FS or GS with the protected-mode checks.

    SS: null -> #GP(0); outside the table, RPL != CPL, not a writable data segment,
        or DPL != CPL -> #GP(sel); not present -> #SS(sel).
    DS/ES/FS/GS: null -> loaded, register unusable; outside the table, not data or
        readable code, or (data / non-conforming code with RPL > DPL or CPL > DPL)
        -> #GP(sel); not present -> #NP(sel).
    CS cannot be loaded this way (#UD). The caller of a MOV SS / POP SS sets the
    interrupt shadow (st[INT_SHADOW]); this kernel does not."""
    sel = sel & 0xFFFF
    cpl = st[CPL]
    rpl = sel_rpl(sel)
    if sreg == SREG_CS or sreg < 0 or sreg > SREG_GS:
        raise_fault(st, VEC_UD, -1)
        return
    if sel_is_null(sel):
        if sreg == SREG_SS:
            raise_fault(st, VEC_GP, 0)
            return
        load_null(st, sreg, sel)
        update_flat(st)
        return
    if not desc_in_table(st, sel):
        raise_fault(st, VEC_GP, sel_error(sel, 0))
        return
    lo, hi = read_desc(mem, st, tlb, pg, sel)
    if st[FAULT_PENDING] != 0:
        return
    ar = desc_ar(hi)
    dpl = ar_dpl(ar)
    if sreg == SREG_SS:
        if rpl != cpl or not ar_is_writable_data(ar) or dpl != cpl:
            raise_fault(st, VEC_GP, sel_error(sel, 0))
            return
        if not ar_present(ar):
            raise_fault(st, VEC_SS, sel_error(sel, 0))
            return
    else:
        if not ar_is_readable(ar):          # system segment or execute-only code
            raise_fault(st, VEC_GP, sel_error(sel, 0))
            return
        if not ar_is_conforming(ar) and (rpl > dpl or cpl > dpl):
            raise_fault(st, VEC_GP, sel_error(sel, 0))
            return
        if not ar_present(ar):
            raise_fault(st, VEC_NP, sel_error(sel, 0))
            return
    hi = set_accessed(mem, st, tlb, pg, sel, hi)
    if st[FAULT_PENDING] != 0:
        return
    load_cache(st, sreg, sel, lo, hi)
    st[COUNTERS + C_SEG_LOAD] += 1
    update_flat(st)
