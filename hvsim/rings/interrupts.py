"""Exception and interrupt delivery through the guest IDT (jitted).

Models SDM Vol. 3A chapter 6 for 32-bit protected mode, and the INT n / INT3
"Operation" of SDM Vol. 2A:

* the IDT gate (6.11): 32-bit interrupt gate (type 0xE, clears IF) and trap gate
  (0xF, leaves IF); a task gate (0x5) is *not modelled* -- task switching is outside
  hvsim -- and gives #GP(vector*8+2+EXT), as does any other type (16-bit gates too);
* the privilege rules (6.12.1): INT n needs gate DPL >= CPL; the target must be a
  code segment with DPL <= CPL; a non-conforming one with DPL < CPL switches to the
  stack held in the TSS (7.2.1, Figure 7-2); a conforming one keeps the CPL;
* the frame (Figure 6-4): [SS, ESP,] EFLAGS, CS, EIP [, error code], each a dword
  (selectors zero-extended); then TF, NT, RF and VM are cleared (6.12.1.3);
* nested faults (6.15, Table 6-5): a fault while delivering is delivered after it
  ("serially"), or becomes #DF, or -- during #DF -- a shutdown (triple fault).

Stack pushes are user-mode accesses only when the new CPL is 3; IDT, GDT/LDT and TSS
reads are implicit supervisor accesses. Everything here is ``@njit``.
"""
from hvsim._jit import njit
from hvsim.arch.counters import (C_PRIV_SWITCH, C_INT_VEC, C_DOUBLE_FAULT, C_TRIPLE_FAULT,
                                C_FAULT_DELIVERY, C_EXC)
from hvsim.arch.fault import raise_fault, raise_shutdown
from hvsim.arch.flags import IF, TF, NT, RF, VM
from hvsim.arch import vmcs as _V
from hvsim.arch.layout import (MASK32, ESP, EIP, EFLAGS, CPL, CR2, TSC, COUNTERS,
                              FAULT_PENDING, FAULT_VECTOR, FAULT_ERROR, FAULT_ADDR,
                              FAULT_EXCEPTION, DELIVERING, DOUBLE_FAULTING, HALTED, INSN_EIP, INSN_LEN,
                              IDTR_BASE, IDTR_LIMIT, TR_SEL, TR_BASE, TR_LIMIT, TR_AR,
                              SEG_SEL, SEG_BASE, SEG_LIMIT, SEG_AR, SREG_CS, SREG_SS,
                              AR_UNUSABLE, ROUTE, ROUTE_HOST, VMX_NONROOT,
                              VMX_VECTORING_INFO, VMX_VECTORING_ERROR,
                              TRACE_HEAD, TRACE_BUF, TRACE_FIELDS, TRACE_CAP)
from hvsim.mmu.paging import read_lin
from hvsim.arch.pte import ACC_READ
from hvsim.rings.descriptors import (
    SYS_INT_GATE32, SYS_TRAP_GATE32, SYS_TASK_GATE, SYS_TSS32_AVAIL, SYS_TSS32_BUSY,
    TSS_ESP0, ERR_EXT, sel_rpl, sel_is_null, sel_error, idt_error, desc_in_table, read_desc,
    set_accessed, desc_ar, desc_base, desc_limit, gate_selector, gate_offset, ar_dpl,
    ar_present, ar_system_type, ar_is_code, ar_is_conforming, ar_is_writable_data)
from hvsim.rings.segments import stack_room, stack_write, load_cache, update_flat

# kinds of event handed to deliver()
EV_FAULT = 0      # exception of fault (or abort) class; st[EIP] is what to push
EV_TRAP = 1       # exception of trap class; st[EIP] is what to push
EV_SOFTWARE = 2   # INT n / INT3 / INTO: gate DPL checked against CPL, never an error code
EV_EXTERNAL = 3   # an interrupt from a device (the timer): never an error code

TRACE_KIND_EVENT = 2   # trace entry kind: an event delivered through the guest IDT
TRACE_KIND_VMENTRY = 4 # a VM entry into non-root operation (hvsim/vtx/entry.py)
TRACE_KIND_VMEXIT = 5  # a VM exit (vector = basic exit reason; cpl_to = -1: VMX root)
TRACE_ROOT = -1        # the "ring" of VMX root operation in trace entries: ring -1

VEC_DF = 8
VEC_TS = 10
VEC_NP = 11
VEC_SS = 12
VEC_GP = 13
VEC_PF = 14

# classes of SDM Vol. 3A, 6.15, Table 6-4 "Interrupt and Exception Classes"
CLASS_BENIGN = 0
CLASS_CONTRIBUTORY = 1   # #DE, #TS, #NP, #SS, #GP
CLASS_PAGE_FAULT = 2
CLASS_DOUBLE_FAULT = 3   # a fault while delivering this one is a shutdown

DELIVER_CLEAR = TF | NT | RF | VM   # cleared on every delivery (6.12.1.3)
MAX_NESTED = 8                       # attempts per deliver() call (see the loop's end)


@njit
def trace_record(st, kind, vector, error, eip, cpl_from, cpl_to, extra):
    """Append one entry to the trace ring buffer (layout.py TRACE_*), stamped with TSC.
    For TRACE_KIND_EVENT, ``eip`` is the instruction that caused the event and ``extra``
    the EIP pushed; the other kinds leave ``extra`` 0."""
    i = TRACE_BUF + (st[TRACE_HEAD] % TRACE_CAP) * TRACE_FIELDS
    st[i] = kind
    st[i + 1] = vector
    st[i + 2] = error
    st[i + 3] = eip
    st[i + 4] = cpl_from
    st[i + 5] = cpl_to
    st[i + 6] = st[TSC]
    st[i + 7] = extra
    st[TRACE_HEAD] += 1


@njit
def event_class(vector, kind):
    """Table 6-4 class of an event. INT n and device interrupts are benign whatever
    their vector (INT 13 is not a #GP)."""
    if kind == EV_SOFTWARE or kind == EV_EXTERNAL:
        return CLASS_BENIGN
    if vector == VEC_DF:
        return CLASS_DOUBLE_FAULT
    if vector == VEC_PF:
        return CLASS_PAGE_FAULT
    if vector == 0 or vector == VEC_TS or vector == VEC_NP or vector == VEC_SS or \
            vector == VEC_GP:
        return CLASS_CONTRIBUTORY
    return CLASS_BENIGN


@njit
def tss_stack(mem, st, tlb, pg, new_cpl, ext):
    """(SS, ESP) for ring ``new_cpl`` from the current 32-bit TSS (Figure 7-2:
    ESPn at 4+8n, SSn at 8+8n). #TS(TR selector) when the TSS cannot hold them."""
    addr = (new_cpl << 3) + TSS_ESP0
    t = ar_system_type(st[TR_AR])
    if (st[TR_AR] & AR_UNUSABLE) or (t != SYS_TSS32_BUSY and t != SYS_TSS32_AVAIL) or \
            addr + 5 > st[TR_LIMIT]:
        raise_fault(st, VEC_TS, sel_error(st[TR_SEL], ext))
        return 0, 0
    esp = read_lin(mem, st, tlb, pg, (st[TR_BASE] + addr) & MASK32, 4, ACC_READ)
    if st[FAULT_PENDING] != 0:
        return 0, 0
    ss = read_lin(mem, st, tlb, pg, (st[TR_BASE] + addr + 4) & MASK32, 2, ACC_READ)
    return ss & 0xFFFF, esp


@njit
def check_inner_ss(mem, st, tlb, pg, ss, new_cpl, ext):
    """Checks on the SS read from the TSS (INT n / CALL-gate "Operation"): null ->
    #TS(EXT); outside its table, RPL != new CPL, DPL != new CPL or not a writable data
    segment -> #TS(ss); not present -> #SS(ss). Returns its descriptor (lo, hi)."""
    if sel_is_null(ss):
        raise_fault(st, VEC_TS, ext)
        return 0, 0
    if not desc_in_table(st, ss) or sel_rpl(ss) != new_cpl:
        raise_fault(st, VEC_TS, sel_error(ss, ext))
        return 0, 0
    lo, hi = read_desc(mem, st, tlb, pg, ss)
    if st[FAULT_PENDING] != 0:
        return 0, 0
    ar = desc_ar(hi)
    if ar_dpl(ar) != new_cpl or not ar_is_writable_data(ar):
        raise_fault(st, VEC_TS, sel_error(ss, ext))
        return 0, 0
    if not ar_present(ar):
        raise_fault(st, VEC_SS, sel_error(ss, ext))
        return 0, 0
    return lo, hi


@njit
def deliver_once(mem, st, tlb, pg, vector, error, kind, ext):
    """One attempt at delivering ``vector``; a fault on the way is left pending and the
    state is untouched (memory below the stack may have been written)."""
    cpl = st[CPL]
    gerr = idt_error(vector, ext)
    # -- the gate (SDM 6.10, 6.11) --
    if vector * 8 + 7 > st[IDTR_LIMIT]:
        raise_fault(st, VEC_GP, gerr)
        return
    lin = (st[IDTR_BASE] + vector * 8) & MASK32
    lo = read_lin(mem, st, tlb, pg, lin, 4, ACC_READ)
    if st[FAULT_PENDING] != 0:
        return
    hi = read_lin(mem, st, tlb, pg, (lin + 4) & MASK32, 4, ACC_READ)
    if st[FAULT_PENDING] != 0:
        return
    gar = desc_ar(hi)
    gtype = ar_system_type(gar)
    if gtype != SYS_INT_GATE32 and gtype != SYS_TRAP_GATE32 and gtype != SYS_TASK_GATE:
        raise_fault(st, VEC_GP, gerr)
        return
    if kind == EV_SOFTWARE and ar_dpl(gar) < cpl:
        raise_fault(st, VEC_GP, gerr)      # the lesson's trap: INT n from ring 3
        return
    if not ar_present(gar):
        raise_fault(st, VEC_NP, gerr)
        return
    if gtype == SYS_TASK_GATE:              # task switching: not modelled
        raise_fault(st, VEC_GP, gerr)
        return
    # -- the handler's code segment --
    csel = gate_selector(lo)
    off = gate_offset(lo, hi)
    if sel_is_null(csel):
        raise_fault(st, VEC_GP, ext)
        return
    if not desc_in_table(st, csel):
        raise_fault(st, VEC_GP, sel_error(csel, ext))
        return
    clo, chi = read_desc(mem, st, tlb, pg, csel)
    if st[FAULT_PENDING] != 0:
        return
    car = desc_ar(chi)
    if not ar_is_code(car) or ar_dpl(car) > cpl:
        raise_fault(st, VEC_GP, sel_error(csel, ext))
        return
    if not ar_present(car):
        raise_fault(st, VEC_NP, sel_error(csel, ext))
        return
    new_cpl = cpl
    if not ar_is_conforming(car) and ar_dpl(car) < cpl:
        new_cpl = ar_dpl(car)
    has_err = error >= 0
    old_ss = st[SEG_SEL + SREG_SS]
    old_esp = st[ESP]
    ss = 0
    slo = 0
    shi = 0
    if new_cpl < cpl:
        # -- inter-privilege: the stack of ring new_cpl comes from the TSS --
        ss, esp = tss_stack(mem, st, tlb, pg, new_cpl, ext)
        if st[FAULT_PENDING] != 0:
            return
        slo, shi = check_inner_ss(mem, st, tlb, pg, ss, new_cpl, ext)
        if st[FAULT_PENDING] != 0:
            return
        sar = desc_ar(shi)
        sbase = desc_base(slo, shi)
        if not stack_room(desc_limit(slo, shi), sar, esp, 24 if has_err else 20):
            raise_fault(st, VEC_SS, sel_error(ss, ext))
            return
        if off > desc_limit(clo, chi):
            raise_fault(st, VEC_GP, ext)
            return
        chi = set_accessed(mem, st, tlb, pg, csel, chi)
        if st[FAULT_PENDING] != 0:
            return
        shi = set_accessed(mem, st, tlb, pg, ss, shi)
        if st[FAULT_PENDING] != 0:
            return
        esp = stack_write(mem, st, tlb, pg, sbase, sar, esp, old_ss, new_cpl)
        if st[FAULT_PENDING] != 0:
            return
        esp = stack_write(mem, st, tlb, pg, sbase, sar, esp, old_esp, new_cpl)
        if st[FAULT_PENDING] != 0:
            return
    else:
        # -- same privilege: on the current stack --
        sar = st[SEG_AR + SREG_SS]
        sbase = st[SEG_BASE + SREG_SS]
        esp = old_esp
        if (sar & AR_UNUSABLE) or not stack_room(st[SEG_LIMIT + SREG_SS], sar, esp,
                                                 16 if has_err else 12):
            raise_fault(st, VEC_SS, ext)
            return
        if off > desc_limit(clo, chi):
            raise_fault(st, VEC_GP, ext)
            return
        chi = set_accessed(mem, st, tlb, pg, csel, chi)
        if st[FAULT_PENDING] != 0:
            return
    esp = stack_write(mem, st, tlb, pg, sbase, sar, esp, st[EFLAGS], new_cpl)
    if st[FAULT_PENDING] != 0:
        return
    esp = stack_write(mem, st, tlb, pg, sbase, sar, esp, st[SEG_SEL + SREG_CS], new_cpl)
    if st[FAULT_PENDING] != 0:
        return
    esp = stack_write(mem, st, tlb, pg, sbase, sar, esp, st[EIP], new_cpl)
    if st[FAULT_PENDING] != 0:
        return
    if has_err:
        esp = stack_write(mem, st, tlb, pg, sbase, sar, esp, error, new_cpl)
        if st[FAULT_PENDING] != 0:
            return
    # -- commit: nothing below can fault --
    if new_cpl < cpl:
        load_cache(st, SREG_SS, ss, slo, shi)
        st[COUNTERS + C_PRIV_SWITCH] += 1
    st[ESP] = esp
    load_cache(st, SREG_CS, (csel & 0xFFFC) | new_cpl, clo, chi)
    st[CPL] = new_cpl
    st[EIP] = off
    fl = st[EFLAGS] & ~DELIVER_CLEAR
    if gtype == SYS_INT_GATE32:
        fl &= ~IF
    st[EFLAGS] = fl
    update_flat(st)


_EXCEPTION_BITMAP = _V.state_index("EXCEPTION_BITMAP")
_PFEC_MASK = _V.state_index("PAGE_FAULT_ERROR_CODE_MASK")
_PFEC_MATCH = _V.state_index("PAGE_FAULT_ERROR_CODE_MATCH")


@njit(inline="always")
def leaves_guest(st, vector, error):
    """Whether exception ``vector`` (error code ``error``) leaves the guest instead of
    being delivered through its IDT. Outside VMX non-root operation: the host monitor's
    routing, ``st[ROUTE + vector]`` (Machine.route). In non-root operation: a VM exit
    when the vector's bit is set in the exception bitmap -- for #PF, when the bit equals
    ``(error & PFEC_MASK) == PFEC_MATCH`` (SDM Vol. 3C, 25.6.3) -- and the caller turns it
    into exit reason 0."""
    if st[VMX_NONROOT] != 0:
        if vector >= 32:
            return False
        hit = (st[_EXCEPTION_BITMAP] >> vector) & 1
        if vector == VEC_PF:
            match = 1 if (error & st[_PFEC_MASK]) == st[_PFEC_MATCH] else 0
            return hit == match
        return hit != 0
    return st[ROUTE + vector] == ROUTE_HOST


# IDT-vectoring information (SDM Vol. 3C, 25.9.3, Table 25-18): valid, type, vector
_INFO_VALID = 1 << 31
_INFO_ERROR_VALID = 1 << 11
_TYPE_EXTERNAL, _TYPE_HARDWARE_EXCEPTION, _TYPE_SOFTWARE_INTERRUPT = 0, 3, 4
_TYPE_SOFTWARE_EXCEPTION = 6


@njit
def _vectoring(st, vector, error, kind):
    """A VM exit is about to interrupt the delivery of (vector, error, kind): keep it
    for the exit's IDT-vectoring fields, so the VMM can inject it again."""
    if kind == EV_EXTERNAL:
        t = _TYPE_EXTERNAL
    elif kind == EV_SOFTWARE:
        # INT3 (CC) and INTO (CE) are one byte, INT n (CD ib) two: the first two are
        # software exceptions (type 6), INT n a software interrupt (type 4)
        t = _TYPE_SOFTWARE_EXCEPTION if (vector == 3 or vector == 4) and st[INSN_LEN] == 1 \
            else _TYPE_SOFTWARE_INTERRUPT
    else:
        t = _TYPE_HARDWARE_EXCEPTION
    info = _INFO_VALID | (t << 8) | vector
    if t == _TYPE_HARDWARE_EXCEPTION and error >= 0:
        info |= _INFO_ERROR_VALID
        st[VMX_VECTORING_ERROR] = error
    st[VMX_VECTORING_INFO] = info


@njit
def _end_delivery(st):
    st[DELIVERING] = -1
    st[DOUBLE_FAULTING] = 0


@njit
def deliver(mem, st, tlb, pg, vector, error, kind):
    """Deliver event ``vector`` (``error`` = error code, -1 none) through the guest IDT.

    ``kind`` is EV_FAULT / EV_TRAP / EV_SOFTWARE / EV_EXTERNAL; st[EIP] already holds
    the EIP to push. Any fault record pending on entry is consumed (cleared). If a fault
    occurs on the way, Table 6-5 decides: deliver it next, or #DF, or shutdown (during
    #DF). An exception so chosen whose vector is routed to the host (st[ROUTE+v]) is left
    pending in the FAULT_* slots and deliver returns; after a fault during INT n, st[EIP]
    is moved back to the INT instruction (st[INSN_EIP]), since INT n itself faulted.
    Counts C_INT_VEC+v, C_FAULT_DELIVERY (exceptions), C_PRIV_SWITCH, C_DOUBLE_FAULT,
    C_TRIPLE_FAULT, and C_EXC+v for the exceptions it raises itself and delivers."""
    st[FAULT_PENDING] = 0
    vec = vector
    err = error
    knd = kind
    if knd == EV_SOFTWARE or knd == EV_EXTERNAL:
        err = -1
    for _ in range(MAX_NESTED):
        cls = event_class(vec, knd)
        ext = 0 if knd == EV_SOFTWARE else ERR_EXT
        st[DELIVERING] = vec
        st[DOUBLE_FAULTING] = 1 if cls == CLASS_DOUBLE_FAULT else 0
        if cls == CLASS_PAGE_FAULT:
            st[CR2] = st[FAULT_ADDR]        # CR2 is loaded before the handler runs (4.7)
        cpl_from = st[CPL]
        eip = st[EIP]
        # the EIP pushed names the faulting instruction for a fault, the next one for a
        # trap or INT n (SDM Vol. 3A, 6.5, 6.6); the trace keeps the instruction as well
        insn_eip = st[INSN_EIP] if knd == EV_TRAP or knd == EV_SOFTWARE else eip
        deliver_once(mem, st, tlb, pg, vec, err, knd, ext)
        pending = st[FAULT_PENDING]
        if pending == 0:
            st[COUNTERS + C_INT_VEC + vec] += 1
            if knd == EV_FAULT or knd == EV_TRAP:
                st[COUNTERS + C_FAULT_DELIVERY] += 1
            st[HALTED] = 0
            trace_record(st, TRACE_KIND_EVENT, vec, err, insn_eip, cpl_from, st[CPL], eip)
            _end_delivery(st)
            return
        if pending != FAULT_EXCEPTION:      # bus error (or shutdown): the host's business
            _end_delivery(st)
            return
        if cls == CLASS_DOUBLE_FAULT:       # a fault while delivering #DF: triple fault
            st[COUNTERS + C_TRIPLE_FAULT] += 1
            raise_shutdown(st)
            _end_delivery(st)
            return
        v2 = st[FAULT_VECTOR]
        e2 = st[FAULT_ERROR]
        cls2 = event_class(v2, EV_FAULT)
        if st[VMX_NONROOT] != 0 and leaves_guest(st, v2, e2):
            # the fault itself exits (its bit in the exception bitmap): no #DF is formed
            # and, as for any event that causes a VM exit directly, CR2 is not loaded
            # (SDM Vol. 3C, 28.1); the event being delivered goes to IDT-vectoring
            if knd == EV_SOFTWARE:
                st[EIP] = st[INSN_EIP]
            _vectoring(st, vec, err, knd)
            _end_delivery(st)
            return
        if cls2 == CLASS_PAGE_FAULT:
            st[CR2] = st[FAULT_ADDR]        # CR2 names the latest page fault, even one
            #                                 that turns into #DF (as Bochs and QEMU do)
        if (cls == CLASS_CONTRIBUTORY and cls2 == CLASS_CONTRIBUTORY) or \
                (cls == CLASS_PAGE_FAULT and
                 (cls2 == CLASS_CONTRIBUTORY or cls2 == CLASS_PAGE_FAULT)):
            v2 = VEC_DF
            e2 = 0
            st[COUNTERS + C_DOUBLE_FAULT] += 1
            st[FAULT_PENDING] = 0
            raise_fault(st, VEC_DF, 0)
        if knd == EV_SOFTWARE:
            st[EIP] = st[INSN_EIP]
        if leaves_guest(st, v2, e2):
            if st[VMX_NONROOT] != 0:
                _vectoring(st, vec, err, knd)
            _end_delivery(st)
            return
        st[COUNTERS + C_EXC + v2] += 1
        st[FAULT_PENDING] = 0
        vec = v2
        err = e2
        knd = EV_FAULT
    # Table 6-5 ends every chain within 4 attempts (event, serial fault, #DF, shutdown);
    # this bound only guards the model itself: the process must never hang.
    st[COUNTERS + C_TRIPLE_FAULT] += 1
    raise_shutdown(st)
    _end_delivery(st)
