"""Operand access for the CPU core: registers, ModRM memory operands, the stack (jitted).

Every memory operand goes segment -> linear (limit and type checks, hvsim/rings) ->
physical (paging, hvsim/mmu). When all of CS/SS/DS/ES are flat, DS/ES/SS hold writable
data segments and alignment checking is off (``st[FLAT]``, hvsim/rings/segments.py
update_flat), the segment step for DS/ES/SS is the identity and is skipped; FS/GS and
CS overrides always take the checked path.

8-bit register numbers follow the ModRM encoding: 0-3 are AL CL DL BL (low byte of
EAX..EBX), 4-7 are AH CH DH BH (byte 1 of EAX..EBX) (SDM Vol. 2A, Table 2-2).
"""
from hvsim._jit import njit, inline_in
from hvsim.arch.layout import (MASK32, ESP, CPL, FLAT, FAULT_PENDING, SREG_DS, SREG_SS,
                              SREG_ES)
from hvsim.cpu.decode import F_BASE, F_INDEX, F_SCALE, F_DISP, F_SEG, F_RM
from hvsim.mmu.paging import read_lin, write_lin
from hvsim.arch.pte import ACC_USER, ACC_WRITE
from hvsim.rings.segments import seg_lin


@njit(inline="always")
def get_reg(st, r, size):
    if size == 4:
        return st[r]
    if size == 1:
        if r < 4:
            return st[r] & 0xFF
        return (st[r - 4] >> 8) & 0xFF
    return st[r] & 0xFFFF


@njit(inline="always")
def set_reg(st, r, size, v):
    if size == 4:
        st[r] = v & MASK32
    elif size == 1:
        if r < 4:
            st[r] = (st[r] & 0xFFFFFF00) | (v & 0xFF)
        else:
            st[r - 4] = (st[r - 4] & 0xFFFF00FF) | ((v & 0xFF) << 8)
    else:
        st[r] = (st[r] & 0xFFFF0000) | (v & 0xFFFF)


@njit(inline="always")
def user_acc(st):
    """ACC_USER for an ordinary access at CPL 3 (SDM Vol. 3A, 4.6: user-mode access)."""
    if st[CPL] == 3:
        return ACC_USER
    return 0


@njit(inline="always")
def ea(st, dc, row):
    """Effective address (offset in the segment) of the decoded memory operand."""
    return (st[dc[F_BASE, row]] + (st[dc[F_INDEX, row]] << dc[F_SCALE, row]) + dc[F_DISP, row]) & MASK32


@njit(inline="always")
def to_lin(st, seg, off, size, write):
    if st[FLAT] != 0 and (seg == SREG_DS or seg == SREG_SS or seg == SREG_ES):
        return off
    return seg_lin(st, seg, off, size, write)


# The operand accesses that reach memory (segment check, TLB probe, physical read or
# write, all inlined into them) are inlined into the ordinary instructions' handlers
# and into each other; the system instructions' handlers (hvsim/cpu/system.py), rare
# and heavy anyway, call them: a system handler's first compile then takes a fraction
# of the time (hvsim/cpu/table.py compiles a handler when a guest first needs it).
_INTO_HOT = inline_in("hvsim.cpu.execute", "hvsim.cpu.operands")


@njit(inline=_INTO_HOT)
def mem_read(mem, st, tlb, pg, seg, off, size):
    lin = to_lin(st, seg, off, size, 0)
    if st[FAULT_PENDING] != 0:
        return 0
    return read_lin(mem, st, tlb, pg, lin, size, user_acc(st))


@njit(inline=_INTO_HOT)
def mem_write(mem, st, tlb, pg, seg, off, size, value):
    lin = to_lin(st, seg, off, size, 1)
    if st[FAULT_PENDING] != 0:
        return
    write_lin(mem, st, tlb, pg, lin, size, value, user_acc(st) | ACC_WRITE)


@njit(inline=_INTO_HOT)
def rm_read(mem, st, tlb, pg, dc, row, size):
    rm = dc[F_RM, row]
    if rm >= 0:
        return get_reg(st, rm, size)
    return mem_read(mem, st, tlb, pg, dc[F_SEG, row], ea(st, dc, row), size)


@njit(inline=_INTO_HOT)
def rm_write(mem, st, tlb, pg, dc, row, size, value):
    rm = dc[F_RM, row]
    if rm >= 0:
        set_reg(st, rm, size, value)
    else:
        mem_write(mem, st, tlb, pg, dc[F_SEG, row], ea(st, dc, row), size, value)


@njit(inline=_INTO_HOT)
def push(mem, st, tlb, pg, value):
    """PUSH a dword on SS:ESP; ESP changes only if the write succeeded."""
    esp = (st[ESP] - 4) & MASK32
    mem_write(mem, st, tlb, pg, SREG_SS, esp, 4, value)
    if st[FAULT_PENDING] == 0:
        st[ESP] = esp


@njit(inline=_INTO_HOT)
def pop(mem, st, tlb, pg):
    """Read the dword at SS:ESP. The caller adds 4 to ESP once its own work succeeded."""
    return mem_read(mem, st, tlb, pg, SREG_SS, st[ESP], 4)


# The 16-bit operand size (66h) pushes and pops a word: ESP moves by 2 (SDM Vol. 2B, PUSH
# and POP; the stack's address size stays 32, SS being a 32-bit segment). Not inlined:
# rare, and the hot 32-bit handlers stay the size they were.
@njit
def push_word(mem, st, tlb, pg, value):
    """PUSH the low word of ``value`` on SS:ESP; ESP changes only if the write succeeded."""
    esp = (st[ESP] - 2) & MASK32
    mem_write(mem, st, tlb, pg, SREG_SS, esp, 2, value & 0xFFFF)
    if st[FAULT_PENDING] == 0:
        st[ESP] = esp


@njit
def pop_word(mem, st, tlb, pg):
    """Read the word at SS:ESP. The caller adds 2 to ESP once its own work succeeded."""
    return mem_read(mem, st, tlb, pg, SREG_SS, st[ESP], 2)
