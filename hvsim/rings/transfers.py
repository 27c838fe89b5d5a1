"""Far control transfers between code segments and rings: JMP/CALL/RET far, IRET (jitted).

The "Operation" sections of SDM Vol. 2 (JMP, CALL, RET, IRET) for 32-bit protected
mode, and SDM Vol. 3A 5.8 (privilege level checks when transferring program control):

* to a code segment directly: a non-conforming one only at DPL = CPL (and RPL <= CPL),
  a conforming one at DPL <= CPL; CPL never changes;
* through a 32-bit call gate (type 0xC, Figure 5-8): gate DPL >= CPL and >= RPL;
  CALL to a more privileged non-conforming segment switches to the TSS stack of that
  ring and copies ``param count`` dwords from the caller's stack (5.8.5, Figure 5-13);
  JMP through a gate never changes the CPL;
* RET far and IRET back to the same or an outer ring (popping SS:ESP), after which
  ES/DS/FS/GS that the outer ring may not use are nulled.

Not modelled: task switches (a task gate or TSS as a far JMP/CALL target is #GP(sel);
IRET with NT = 1 is #GP(0)), 16-bit call gates (#GP(sel)), virtual-8086 mode (IRET
ignores the VM bit of the popped EFLAGS). The return address a far CALL pushes is
st[EIP], which the caller has already advanced past the instruction. Every kernel
leaves the state untouched when it faults (stack memory may have been written).
"""
from hvsim._jit import njit
from hvsim.arch.counters import C_IRET, C_PRIV_SWITCH
from hvsim.arch.fault import raise_fault
from hvsim.arch.flags import (ARITH, TF, IF, DF, NT, RF, AC, ID, VM, IOPL_MASK, IOPL_SHIFT,
                             FIXED1, VIF, VIP)
from hvsim.arch.layout import (ESP, EIP, EFLAGS, CPL, COUNTERS, FAULT_PENDING,
                              SEG_SEL, SEG_BASE, SEG_LIMIT, SEG_AR, SREG_CS, SREG_SS,
                              AR_UNUSABLE)
from hvsim.rings.descriptors import (
    SYS_CALL_GATE32, sel_rpl, sel_is_null, sel_error, desc_in_table, read_desc,
    set_accessed, desc_ar, desc_base, desc_limit, gate_selector, gate_offset, gate_params,
    ar_dpl, ar_present, ar_system_type, ar_is_code, ar_is_conforming, ar_is_writable_data)
from hvsim.rings.interrupts import tss_stack, check_inner_ss
from hvsim.rings.segments import (stack_room, stack_avail, stack_write, stack_read,
                                  stack_add, load_cache, null_outer_data, update_flat)

VEC_NP = 11
VEC_SS = 12
VEC_GP = 13

#: EFLAGS bits IRET always restores with a 32-bit operand size (SDM Vol. 2, IRET)
IRET_ALWAYS = ARITH | TF | DF | NT | RF | AC | ID


# --- shared checks --------------------------------------------------------------------
@njit
def read_target(mem, st, tlb, pg, sel):
    """Descriptor named by a far JMP/CALL operand: null -> #GP(0), outside -> #GP(sel)."""
    if sel_is_null(sel):
        raise_fault(st, VEC_GP, 0)
        return 0, 0
    if not desc_in_table(st, sel):
        raise_fault(st, VEC_GP, sel_error(sel, 0))
        return 0, 0
    return read_desc(mem, st, tlb, pg, sel)


@njit
def check_direct_code(st, sel, ar, cpl):
    """JMP/CALL straight to a code segment (SDM 5.8.2): conforming needs DPL <= CPL;
    non-conforming needs DPL = CPL and RPL <= CPL; then present."""
    dpl = ar_dpl(ar)
    if ar_is_conforming(ar):
        if dpl > cpl:
            raise_fault(st, VEC_GP, sel_error(sel, 0))
            return
    elif sel_rpl(sel) > cpl or dpl != cpl:
        raise_fault(st, VEC_GP, sel_error(sel, 0))
        return
    if not ar_present(ar):
        raise_fault(st, VEC_NP, sel_error(sel, 0))


@njit
def check_gate(mem, st, tlb, pg, sel, ar, lo, cpl):
    """A call gate's own checks, then its code segment's (CALL/JMP "CALL-GATE").
    Returns the code descriptor (lo, hi); the caller adds the JMP/CALL DPL rule."""
    gdpl = ar_dpl(ar)
    if gdpl < cpl or sel_rpl(sel) > gdpl:
        raise_fault(st, VEC_GP, sel_error(sel, 0))
        return 0, 0
    if not ar_present(ar):
        raise_fault(st, VEC_NP, sel_error(sel, 0))
        return 0, 0
    csel = gate_selector(lo)
    if sel_is_null(csel):
        raise_fault(st, VEC_GP, 0)
        return 0, 0
    if not desc_in_table(st, csel):
        raise_fault(st, VEC_GP, sel_error(csel, 0))
        return 0, 0
    clo, chi = read_desc(mem, st, tlb, pg, csel)
    if st[FAULT_PENDING] != 0:
        return 0, 0
    car = desc_ar(chi)
    if not ar_is_code(car) or ar_dpl(car) > cpl:
        raise_fault(st, VEC_GP, sel_error(csel, 0))
        return 0, 0
    return clo, chi


@njit
def check_return_cs(mem, st, tlb, pg, sel, cpl):
    """The code segment a far RET or IRET returns to (RET/IRET "Operation"): null ->
    #GP(0); outside, not code, RPL < CPL, conforming with DPL > RPL, non-conforming with
    DPL != RPL -> #GP(sel); not present -> #NP(sel)."""
    if sel_is_null(sel):
        raise_fault(st, VEC_GP, 0)
        return 0, 0
    if not desc_in_table(st, sel):
        raise_fault(st, VEC_GP, sel_error(sel, 0))
        return 0, 0
    lo, hi = read_desc(mem, st, tlb, pg, sel)
    if st[FAULT_PENDING] != 0:
        return 0, 0
    ar = desc_ar(hi)
    rpl = sel_rpl(sel)
    dpl = ar_dpl(ar)
    bad = not ar_is_code(ar) or rpl < cpl
    if not bad:
        if ar_is_conforming(ar):
            bad = dpl > rpl
        else:
            bad = dpl != rpl
    if bad:
        raise_fault(st, VEC_GP, sel_error(sel, 0))
        return 0, 0
    if not ar_present(ar):
        raise_fault(st, VEC_NP, sel_error(sel, 0))
        return 0, 0
    return lo, hi


@njit
def check_outer_ss(mem, st, tlb, pg, sel, rpl):
    """The stack segment popped by a return to ring ``rpl``: null -> #GP(0); outside,
    RPL != rpl, not writable data, DPL != rpl -> #GP(sel); not present -> #SS(sel)."""
    if sel_is_null(sel):
        raise_fault(st, VEC_GP, 0)
        return 0, 0
    if not desc_in_table(st, sel):
        raise_fault(st, VEC_GP, sel_error(sel, 0))
        return 0, 0
    lo, hi = read_desc(mem, st, tlb, pg, sel)
    if st[FAULT_PENDING] != 0:
        return 0, 0
    ar = desc_ar(hi)
    if sel_rpl(sel) != rpl or not ar_is_writable_data(ar) or ar_dpl(ar) != rpl:
        raise_fault(st, VEC_GP, sel_error(sel, 0))
        return 0, 0
    if not ar_present(ar):
        raise_fault(st, VEC_SS, sel_error(sel, 0))
        return 0, 0
    return lo, hi


@njit
def commit_cs(st, sel, lo, hi, cpl, eip):
    load_cache(st, SREG_CS, (sel & 0xFFFC) | cpl, lo, hi)
    if cpl != st[CPL]:
        st[COUNTERS + C_PRIV_SWITCH] += 1
    st[CPL] = cpl
    st[EIP] = eip


# --- JMP far (SDM Vol. 2A, JMP) ------------------------------------------------------------
@njit
def far_jmp(mem, st, tlb, pg, sel, off):
    """JMP ptr16:32 / JMP m16:32 to a code segment or through a call gate (same CPL)."""
    sel = sel & 0xFFFF
    cpl = st[CPL]
    lo, hi = read_target(mem, st, tlb, pg, sel)
    if st[FAULT_PENDING] != 0:
        return
    ar = desc_ar(hi)
    if ar_is_code(ar):
        check_direct_code(st, sel, ar, cpl)
        if st[FAULT_PENDING] != 0:
            return
        csel = sel
        clo = lo
        chi = hi
    elif ar_system_type(ar) == SYS_CALL_GATE32:
        clo, chi = check_gate(mem, st, tlb, pg, sel, ar, lo, cpl)
        if st[FAULT_PENDING] != 0:
            return
        csel = gate_selector(lo)
        car = desc_ar(chi)
        if not ar_is_conforming(car) and ar_dpl(car) != cpl:   # JMP never changes CPL
            raise_fault(st, VEC_GP, sel_error(csel, 0))
            return
        if not ar_present(car):
            raise_fault(st, VEC_NP, sel_error(csel, 0))
            return
        off = gate_offset(lo, hi)
    else:      # data, LDT, TSS, task gate (task switch not modelled), other gates
        raise_fault(st, VEC_GP, sel_error(sel, 0))
        return
    off = off & 0xFFFFFFFF
    if off > desc_limit(clo, chi):
        raise_fault(st, VEC_GP, 0)
        return
    chi = set_accessed(mem, st, tlb, pg, csel, chi)
    if st[FAULT_PENDING] != 0:
        return
    commit_cs(st, csel, clo, chi, cpl, off)
    update_flat(st)


# --- CALL far (SDM Vol. 2A, CALL) ----------------------------------------------------------
@njit
def far_call(mem, st, tlb, pg, sel, off):
    """CALL ptr16:32 / CALL m16:32; pushes CS and st[EIP] (the return address)."""
    sel = sel & 0xFFFF
    cpl = st[CPL]
    lo, hi = read_target(mem, st, tlb, pg, sel)
    if st[FAULT_PENDING] != 0:
        return
    ar = desc_ar(hi)
    ss_ar = st[SEG_AR + SREG_SS]
    ss_base = st[SEG_BASE + SREG_SS]
    ss_limit = st[SEG_LIMIT + SREG_SS]
    old_esp = st[ESP]
    if ar_is_code(ar):
        check_direct_code(st, sel, ar, cpl)
        if st[FAULT_PENDING] != 0:
            return
        csel = sel
        clo = lo
        chi = hi
        off = off & 0xFFFFFFFF
    elif ar_system_type(ar) == SYS_CALL_GATE32:
        clo, chi = check_gate(mem, st, tlb, pg, sel, ar, lo, cpl)
        if st[FAULT_PENDING] != 0:
            return
        csel = gate_selector(lo)
        car = desc_ar(chi)
        if not ar_present(car):
            raise_fault(st, VEC_NP, sel_error(csel, 0))
            return
        off = gate_offset(lo, hi)
        dpl = ar_dpl(car)
        if not ar_is_conforming(car) and dpl < cpl:
            _call_gate_inner(mem, st, tlb, pg, csel, clo, chi, off, dpl, gate_params(hi))
            return
    else:      # data, LDT, TSS, task gate (task switch not modelled), other gates
        raise_fault(st, VEC_GP, sel_error(sel, 0))
        return
    # same privilege: push CS, EIP on the current stack
    if (ss_ar & AR_UNUSABLE) or not stack_room(ss_limit, ss_ar, old_esp, 8):
        raise_fault(st, VEC_SS, 0)
        return
    if off > desc_limit(clo, chi):
        raise_fault(st, VEC_GP, 0)
        return
    chi = set_accessed(mem, st, tlb, pg, csel, chi)
    if st[FAULT_PENDING] != 0:
        return
    esp = stack_write(mem, st, tlb, pg, ss_base, ss_ar, old_esp, st[SEG_SEL + SREG_CS], cpl)
    if st[FAULT_PENDING] != 0:
        return
    esp = stack_write(mem, st, tlb, pg, ss_base, ss_ar, esp, st[EIP], cpl)
    if st[FAULT_PENDING] != 0:
        return
    st[ESP] = esp
    commit_cs(st, csel, clo, chi, cpl, off)
    update_flat(st)


@njit
def _call_gate_inner(mem, st, tlb, pg, csel, clo, chi, off, new_cpl, nparams):
    """CALL through a gate to a more privileged ring (CALL "MORE-PRIVILEGE"): new SS:ESP
    from the TSS, then push old SS, old ESP, the ``nparams`` dwords found at the old
    SS:ESP (in the same order), old CS, return EIP (SDM Vol. 3A, Figure 5-13)."""
    cpl = st[CPL]
    ss, esp = tss_stack(mem, st, tlb, pg, new_cpl, 0)
    if st[FAULT_PENDING] != 0:
        return
    slo, shi = check_inner_ss(mem, st, tlb, pg, ss, new_cpl, 0)
    if st[FAULT_PENDING] != 0:
        return
    sar = desc_ar(shi)
    sbase = desc_base(slo, shi)
    if not stack_room(desc_limit(slo, shi), sar, esp, 16 + 4 * nparams):
        raise_fault(st, VEC_SS, sel_error(ss, 0))
        return
    if off > desc_limit(clo, chi):
        raise_fault(st, VEC_GP, 0)
        return
    old_ar = st[SEG_AR + SREG_SS]
    old_base = st[SEG_BASE + SREG_SS]
    old_esp = st[ESP]
    if nparams > 0 and ((old_ar & AR_UNUSABLE) or
                        not stack_avail(st[SEG_LIMIT + SREG_SS], old_ar, old_esp, 4 * nparams)):
        raise_fault(st, VEC_SS, 0)
        return
    chi = set_accessed(mem, st, tlb, pg, csel, chi)
    if st[FAULT_PENDING] != 0:
        return
    shi = set_accessed(mem, st, tlb, pg, ss, shi)
    if st[FAULT_PENDING] != 0:
        return
    esp = stack_write(mem, st, tlb, pg, sbase, sar, esp, st[SEG_SEL + SREG_SS], new_cpl)
    if st[FAULT_PENDING] != 0:
        return
    esp = stack_write(mem, st, tlb, pg, sbase, sar, esp, old_esp, new_cpl)
    if st[FAULT_PENDING] != 0:
        return
    for i in range(nparams - 1, -1, -1):
        # the caller's stack is read with the caller's privilege
        v = stack_read(mem, st, tlb, pg, old_base, old_ar, old_esp, 4 * i, cpl)
        if st[FAULT_PENDING] != 0:
            return
        esp = stack_write(mem, st, tlb, pg, sbase, sar, esp, v, new_cpl)
        if st[FAULT_PENDING] != 0:
            return
    esp = stack_write(mem, st, tlb, pg, sbase, sar, esp, st[SEG_SEL + SREG_CS], new_cpl)
    if st[FAULT_PENDING] != 0:
        return
    esp = stack_write(mem, st, tlb, pg, sbase, sar, esp, st[EIP], new_cpl)
    if st[FAULT_PENDING] != 0:
        return
    load_cache(st, SREG_SS, ss, slo, shi)
    st[ESP] = esp
    commit_cs(st, csel, clo, chi, new_cpl, off)
    update_flat(st)


@njit
def _outer_return_stack(mem, st, tlb, pg, ss_base, ss_ar, esp, off, cpl, rpl, t_cs, clo, chi,
                        t_eip):
    """The part RET far and IRET share when they return to an outer ring: read the outer
    ESP and SS at ``off`` and ``off + 4`` on the current stack, check the outer SS against
    the new RPL and EIP against the code limit, then set both Accessed bits. Nothing is
    committed; returns (esp, ss, ss_lo, ss_hi, cs_hi)."""
    t_esp = stack_read(mem, st, tlb, pg, ss_base, ss_ar, esp, off, cpl)
    if st[FAULT_PENDING] != 0:
        return 0, 0, 0, 0, 0
    t_ss = stack_read(mem, st, tlb, pg, ss_base, ss_ar, esp, off + 4, cpl) & 0xFFFF
    if st[FAULT_PENDING] != 0:
        return 0, 0, 0, 0, 0
    slo, shi = check_outer_ss(mem, st, tlb, pg, t_ss, rpl)
    if st[FAULT_PENDING] != 0:
        return 0, 0, 0, 0, 0
    if t_eip > desc_limit(clo, chi):
        raise_fault(st, VEC_GP, 0)
        return 0, 0, 0, 0, 0
    chi = set_accessed(mem, st, tlb, pg, t_cs, chi)
    if st[FAULT_PENDING] != 0:
        return 0, 0, 0, 0, 0
    shi = set_accessed(mem, st, tlb, pg, t_ss, shi)
    if st[FAULT_PENDING] != 0:
        return 0, 0, 0, 0, 0
    return t_esp, t_ss, slo, shi, chi


# --- RET far (SDM Vol. 2B, RET) ------------------------------------------------------------
@njit
def far_ret(mem, st, tlb, pg, imm16):
    """RET far [imm16]: pop EIP, CS; to an outer ring also ESP, SS. ``imm16`` bytes of
    parameters are released on both stacks."""
    cpl = st[CPL]
    imm = imm16 & 0xFFFF
    ss_ar = st[SEG_AR + SREG_SS]
    ss_base = st[SEG_BASE + SREG_SS]
    ss_limit = st[SEG_LIMIT + SREG_SS]
    esp = st[ESP]
    if (ss_ar & AR_UNUSABLE) or not stack_avail(ss_limit, ss_ar, esp, 8):
        raise_fault(st, VEC_SS, 0)
        return
    t_eip = stack_read(mem, st, tlb, pg, ss_base, ss_ar, esp, 0, cpl)
    if st[FAULT_PENDING] != 0:
        return
    t_cs = stack_read(mem, st, tlb, pg, ss_base, ss_ar, esp, 4, cpl) & 0xFFFF
    if st[FAULT_PENDING] != 0:
        return
    clo, chi = check_return_cs(mem, st, tlb, pg, t_cs, cpl)
    if st[FAULT_PENDING] != 0:
        return
    rpl = sel_rpl(t_cs)
    if rpl > cpl:
        if not stack_avail(ss_limit, ss_ar, esp, 16 + imm):
            raise_fault(st, VEC_SS, 0)
            return
        t_esp, t_ss, slo, shi, chi = _outer_return_stack(mem, st, tlb, pg, ss_base, ss_ar, esp,
                                                         8 + imm, cpl, rpl, t_cs, clo, chi, t_eip)
        if st[FAULT_PENDING] != 0:
            return
        load_cache(st, SREG_SS, t_ss, slo, shi)
        st[ESP] = stack_add(desc_ar(shi), t_esp, imm)
        commit_cs(st, t_cs, clo, chi, rpl, t_eip)
        null_outer_data(st, rpl)
    else:
        if t_eip > desc_limit(clo, chi):
            raise_fault(st, VEC_GP, 0)
            return
        chi = set_accessed(mem, st, tlb, pg, t_cs, chi)
        if st[FAULT_PENDING] != 0:
            return
        st[ESP] = stack_add(ss_ar, esp, 8 + imm)
        commit_cs(st, t_cs, clo, chi, cpl, t_eip)
    update_flat(st)


# --- IRET (SDM Vol. 2A, IRET/IRETD) --------------------------------------------------------
@njit
def iret_eflags(cur, popped, cpl):
    """EFLAGS after IRET at privilege ``cpl`` (the CPL *before* the return).
    IF changes only when CPL <= IOPL; IOPL, VIF and VIP only at CPL 0 (SDM Vol. 2A,
    IRET "Operation", both RETURN-TO-SAME- and -OUTER-PRIVILEGE-LEVEL). VM is never
    loaded (virtual-8086 mode is not modelled)."""
    writable = IRET_ALWAYS
    if cpl <= (cur & IOPL_MASK) >> IOPL_SHIFT:
        writable |= IF
    if cpl == 0:
        writable |= IOPL_MASK | VIF | VIP
    return ((cur & ~writable) | (popped & writable) | FIXED1) & ~VM


@njit
def iret(mem, st, tlb, pg):
    """IRETD in protected mode: pop EIP, CS, EFLAGS; to an outer ring also ESP, SS."""
    cpl = st[CPL]
    fl = st[EFLAGS]
    if fl & NT:                 # return from a nested task: task switching not modelled
        raise_fault(st, VEC_GP, 0)
        return
    ss_ar = st[SEG_AR + SREG_SS]
    ss_base = st[SEG_BASE + SREG_SS]
    ss_limit = st[SEG_LIMIT + SREG_SS]
    esp = st[ESP]
    if (ss_ar & AR_UNUSABLE) or not stack_avail(ss_limit, ss_ar, esp, 12):
        raise_fault(st, VEC_SS, 0)
        return
    t_eip = stack_read(mem, st, tlb, pg, ss_base, ss_ar, esp, 0, cpl)
    if st[FAULT_PENDING] != 0:
        return
    t_cs = stack_read(mem, st, tlb, pg, ss_base, ss_ar, esp, 4, cpl) & 0xFFFF
    if st[FAULT_PENDING] != 0:
        return
    t_fl = stack_read(mem, st, tlb, pg, ss_base, ss_ar, esp, 8, cpl)
    if st[FAULT_PENDING] != 0:
        return
    clo, chi = check_return_cs(mem, st, tlb, pg, t_cs, cpl)
    if st[FAULT_PENDING] != 0:
        return
    rpl = sel_rpl(t_cs)
    if rpl > cpl:
        if not stack_avail(ss_limit, ss_ar, esp, 20):
            raise_fault(st, VEC_SS, 0)
            return
        t_esp, t_ss, slo, shi, chi = _outer_return_stack(mem, st, tlb, pg, ss_base, ss_ar, esp,
                                                         12, cpl, rpl, t_cs, clo, chi, t_eip)
        if st[FAULT_PENDING] != 0:
            return
        st[EFLAGS] = iret_eflags(fl, t_fl, cpl)
        load_cache(st, SREG_SS, t_ss, slo, shi)
        st[ESP] = t_esp & 0xFFFFFFFF
        commit_cs(st, t_cs, clo, chi, rpl, t_eip)
        null_outer_data(st, rpl)
    else:
        if t_eip > desc_limit(clo, chi):
            raise_fault(st, VEC_GP, 0)
            return
        chi = set_accessed(mem, st, tlb, pg, t_cs, chi)
        if st[FAULT_PENDING] != 0:
            return
        st[EFLAGS] = iret_eflags(fl, t_fl, cpl)
        st[ESP] = stack_add(ss_ar, esp, 12)
        commit_cs(st, t_cs, clo, chi, cpl, t_eip)
    st[COUNTERS + C_IRET] += 1
    update_flat(st)
