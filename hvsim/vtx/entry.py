"""VM entry: VMLAUNCH and VMRESUME in VMX root operation (jitted).

:func:`vm_entry` is what the instruction does once its handler has made the checks that
come first (#UD, a VM exit in non-root operation, #GP(0) at CPL > 0; SDM Vol. 3C 31.3)
-- and what the Python VMM's ``vcpu.run()`` asks the run loop to do (hvsim/monitors/kvm.py):

1. basic checks (27.1): no current VMCS -> VMfailInvalid; blocking by MOV SS ->
   VMfailValid(26); VMLAUNCH of a launched VMCS -> 4, VMRESUME of a clear one -> 5;
2. the controls and the host-state area (27.2), in hvsim/vtx/checks.py's order:
   VMfailValid(7) or (8), and the instruction falls through to the next one;
3. the guest-state area (27.3.1): a failure is a *VM exit* -- host state loaded, exit
   reason 33 with bit 31 set (0x80000021), qualification 0, or 4 for the link pointer;
4. the guest state loaded (27.3.2, hvsim/vtx/state.py), launch state "launched" after
   VMLAUNCH, VMX non-root operation;
5. event injection (27.6): the VM-entry interruption-information field's event is
   delivered through the guest's IDT, as if it had occurred right after the entry
   (a software interrupt or exception pushes RIP + VM-entry instruction length).

Every failed check leaves its number and the value it found in ``st[VMX_ENTRY_CHECK]``
and ``st[VMX_ENTRY_VALUE]`` (hvsim.vtx.checks.explain turns them into words).
"""
from hvsim._jit import njit
from hvsim.arch import vmcs as V
from hvsim.arch import vmx as X
from hvsim.arch.counters import C_VMENTRY, C_VMENTRY_FAIL, C_VMX_INSN, C_IRQ
from hvsim.arch.flags import IF, VM as FLAG_VM
from hvsim.arch.layout import (
    VMCS_PTR, VMCS_PTR_NONE, VMCS_LAUNCH_STATE, VMX_NONROOT, VMX_EPT,
    VMX_ENTRY_CHECK, VMX_ENTRY_VALUE, INT_SHADOW, BLOCKING_BY_MOV_SS,
    EIP, CPL, COUNTERS, CFG_MEM_SIZE, AR_UNUSABLE, AR_S, AR_P, AR_G, AR_DPL_SHIFT,
    VMX_VECTORING_INFO, SREG_CS, SREG_SS, MASK32, INSN_EIP, INSN_LEN, VMX_ENTRY_REQUEST, CR2, FAULT_ADDR,
)
from hvsim.rings.interrupts import (deliver, trace_record, EV_FAULT, EV_SOFTWARE, EV_EXTERNAL,
                                   TRACE_KIND_VMENTRY, TRACE_ROOT)
from hvsim.vtx import checks as K
from hvsim.vtx.instructions import vm_fail_invalid, vm_fail_valid, vm_succeed
from hvsim.vtx.state import load_guest, load_host, G_CR0, G_CR4, G_RFLAGS, G_SEL0, \
    G_AR0, G_LIMIT0, G_TR_SEL, G_TR_AR, G_TR_LIMIT, G_LDTR_SEL, G_LDTR_AR, G_LDTR_LIMIT, \
    G_GDTR_LIMIT, G_IDTR_LIMIT, G_ACTIVITY, G_INTERRUPTIBILITY, G_PENDING_DBG, H_CR0, H_CR4, \
    H_SEL0, H_TR_SEL


_f = V.state_index


PIN, CPU, SEC = (_f("PIN_BASED_VM_EXEC_CONTROL"), _f("CPU_BASED_VM_EXEC_CONTROL"),
                 _f("SECONDARY_VM_EXEC_CONTROL"))
EXIT_CTLS, ENTRY_CTLS = _f("VM_EXIT_CONTROLS"), _f("VM_ENTRY_CONTROLS")
CR3_TARGET_COUNT = _f("CR3_TARGET_COUNT")
IO_BITMAP_A, IO_BITMAP_B, MSR_BITMAP = _f("IO_BITMAP_A"), _f("IO_BITMAP_B"), _f("MSR_BITMAP")
EPT_POINTER = _f("EPT_POINTER")
VIRTUAL_PROCESSOR_ID = _f("VIRTUAL_PROCESSOR_ID")
EXIT_MSR_STORE, EXIT_MSR_LOAD, ENTRY_MSR_LOAD = (
    _f("VM_EXIT_MSR_STORE_COUNT"), _f("VM_EXIT_MSR_LOAD_COUNT"), _f("VM_ENTRY_MSR_LOAD_COUNT"))
ENTRY_INTR_INFO, ENTRY_ERROR_CODE, ENTRY_INSN_LEN = (
    _f("VM_ENTRY_INTR_INFO_FIELD"), _f("VM_ENTRY_EXCEPTION_ERROR_CODE"),
    _f("VM_ENTRY_INSTRUCTION_LEN"))
LINK_POINTER = _f("VMCS_LINK_POINTER")
EXIT_REASON, EXIT_QUAL = _f("VM_EXIT_REASON"), _f("EXIT_QUALIFICATION")
EXIT_INTR_INFO, IDT_VECTORING_INFO = _f("VM_EXIT_INTR_INFO"), _f("IDT_VECTORING_INFO_FIELD")

# entry outcomes (what vm_entry returns)
ENTERED = 0            # the guest runs (VMX non-root operation)
FELL_THROUGH = 1       # VMfailInvalid / VMfailValid: the instruction completes, root
FAILED_AS_EXIT = 2     # a guest-state failure: host state loaded, reason 0x80000021

_ERROR_CODE_VECTORS = (1 << 8) | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 13) | (1 << 14) \
    | (1 << 17)                      # #DF #TS #NP #SS #GP #PF #AC: with an error code
_RFLAGS_RESERVED0 = 0xFFC08028       # bits 31:22, 15, 5, 3 must be 0
_RFLAGS_RESERVED1 = 0x2              # bit 1 must be 1
_AR_RESERVED = 0xFFFE0F00            # bits 31:17 and 11:8 of access rights
_PENDING_DBG_RESERVED = 0xFFFFAFF0   # bits 31:15, 13, 11:4
_ENTRY_FAILURE_REASON = X.EXIT_REASON_ENTRY_FAILURE | int(X.ExitReason.INVALID_GUEST_STATE)
# VM-instruction error numbers as plain ints (Table 31-1)
_E_ENTRY_EVENTS_BLOCKED_BY_MOV_SS = int(X.VmInstructionError.ENTRY_EVENTS_BLOCKED_BY_MOV_SS)
_E_VMLAUNCH_NONCLEAR_VMCS = int(X.VmInstructionError.VMLAUNCH_NONCLEAR_VMCS)
_E_VMRESUME_NONLAUNCHED_VMCS = int(X.VmInstructionError.VMRESUME_NONLAUNCHED_VMCS)
_E_ENTRY_INVALID_CONTROL_FIELD = int(X.VmInstructionError.ENTRY_INVALID_CONTROL_FIELD)
_E_ENTRY_INVALID_HOST_STATE_FIELD = int(X.VmInstructionError.ENTRY_INVALID_HOST_STATE_FIELD)


@njit
def _fail(st, check, value):
    st[VMX_ENTRY_CHECK] = check
    st[VMX_ENTRY_VALUE] = value & 0xFFFFFFFFFFFF
    return check


@njit
def _ctl_bad(value, allowed0, allowed1):
    return (value & allowed0) != allowed0 or (value & ~allowed1 & MASK32) != 0


@njit
def _page_bad(st, pa):
    return (pa & 0xFFF) != 0 or pa < 0 or pa + 4096 > st[CFG_MEM_SIZE]


@njit
def check_controls(st):
    """27.2.1: 0 when the controls are valid, else the number of the failed check."""
    pin, cpu = st[PIN], st[CPU]
    if _ctl_bad(pin, X.PIN_TRUE_ALLOWED0, X.PIN_ALLOWED1):
        return _fail(st, K.PIN_RESERVED, pin)
    if _ctl_bad(cpu, X.CPU_TRUE_ALLOWED0, X.CPU_ALLOWED1):
        return _fail(st, K.CPU_RESERVED, cpu)
    sec = st[SEC] if (cpu & X.CPU_ACTIVATE_SECONDARY_CONTROLS) != 0 else 0
    if _ctl_bad(sec, 0, X.SEC_ALLOWED1):
        return _fail(st, K.SEC_RESERVED, sec)
    if (sec & X.SEC_ENABLE_VPID) != 0 and (st[VIRTUAL_PROCESSOR_ID] & X.VPID_MASK) == 0:
        return _fail(st, K.VPID_ZERO, 0)
    if st[CR3_TARGET_COUNT] > X.CR3_TARGET_MAX:
        return _fail(st, K.CR3_TARGETS, st[CR3_TARGET_COUNT])
    if (cpu & X.CPU_USE_IO_BITMAPS) != 0:
        if _page_bad(st, st[IO_BITMAP_A]):
            return _fail(st, K.IO_BITMAP_A, st[IO_BITMAP_A])
        if _page_bad(st, st[IO_BITMAP_B]):
            return _fail(st, K.IO_BITMAP_B, st[IO_BITMAP_B])
    if (cpu & X.CPU_USE_MSR_BITMAPS) != 0 and _page_bad(st, st[MSR_BITMAP]):
        return _fail(st, K.MSR_BITMAP, st[MSR_BITMAP])
    if (sec & X.SEC_ENABLE_EPT) != 0:
        eptp = st[EPT_POINTER]
        memtype = eptp & 7
        if memtype != X.MEMTYPE_UC and memtype != X.MEMTYPE_WB:
            return _fail(st, K.EPTP_MEMTYPE, eptp)
        if ((eptp >> 3) & 7) != 3:
            return _fail(st, K.EPTP_WALK, eptp)
        if (eptp & 0xF80) != 0 or _page_bad(st, eptp & ~0xFFF):
            return _fail(st, K.EPTP_RESERVED, eptp)
    ex = st[EXIT_CTLS]
    if _ctl_bad(ex, X.EXIT_TRUE_ALLOWED0, X.EXIT_ALLOWED1):
        return _fail(st, K.EXIT_RESERVED, ex)
    if st[EXIT_MSR_STORE] != 0:
        return _fail(st, K.EXIT_MSR_STORE, st[EXIT_MSR_STORE])
    if st[EXIT_MSR_LOAD] != 0:
        return _fail(st, K.EXIT_MSR_LOAD, st[EXIT_MSR_LOAD])
    en = st[ENTRY_CTLS]
    if _ctl_bad(en, X.ENTRY_TRUE_ALLOWED0, X.ENTRY_ALLOWED1):
        return _fail(st, K.ENTRY_RESERVED, en)
    if st[ENTRY_MSR_LOAD] != 0:
        return _fail(st, K.ENTRY_MSR_LOAD, st[ENTRY_MSR_LOAD])
    info = st[ENTRY_INTR_INFO]
    if (info & X.INTR_INFO_VALID) != 0:
        if (info & X.INTR_INFO_RESERVED) != 0:
            return _fail(st, K.INJECT_RESERVED, info)
        t = (info >> 8) & 7
        if t == X.INTR_TYPE_RESERVED or t == X.INTR_TYPE_NMI or t == X.INTR_TYPE_OTHER:
            return _fail(st, K.INJECT_TYPE, info)
        v = info & 0xFF
        if t == X.INTR_TYPE_HARDWARE_EXCEPTION and v > 31:
            return _fail(st, K.INJECT_VECTOR, info)
        wants = t == X.INTR_TYPE_HARDWARE_EXCEPTION and v < 32 and \
            ((_ERROR_CODE_VECTORS >> v) & 1) != 0
        has = (info & X.INTR_INFO_DELIVER_ERROR_CODE) != 0
        if wants != has:
            return _fail(st, K.INJECT_ERROR_BIT, info)
        if has and (st[ENTRY_ERROR_CODE] & 0xFFFF0000) != 0:
            return _fail(st, K.INJECT_ERROR_CODE, st[ENTRY_ERROR_CODE])
        if t == X.INTR_TYPE_SOFTWARE_INTERRUPT or t == X.INTR_TYPE_SOFTWARE_EXCEPTION or \
                t == X.INTR_TYPE_PRIVILEGED_SOFTWARE_EXCEPTION:
            n = st[ENTRY_INSN_LEN]
            if n < 1 or n > 15:
                return _fail(st, K.INJECT_LENGTH, n)
    return 0


@njit
def _fixed_bad(value, fixed0, fixed1):
    return (value & fixed0) != fixed0 or (value & ~fixed1 & MASK32) != 0


@njit
def check_host(st):
    """27.2.2 and 27.2.3: 0 when the host-state area is valid, else the check's number."""
    if _fixed_bad(st[H_CR0], X.CR0_FIXED0, X.CR0_FIXED1):
        return _fail(st, K.HOST_CR0, st[H_CR0])
    if _fixed_bad(st[H_CR4], X.CR4_FIXED0, X.CR4_FIXED1):
        return _fail(st, K.HOST_CR4, st[H_CR4])
    for i in range(6):
        if (st[H_SEL0 + i] & 7) != 0:
            return _fail(st, K.HOST_SEL_RPL_TI + i, st[H_SEL0 + i])
    if (st[H_TR_SEL] & 7) != 0:
        return _fail(st, K.HOST_SEL_RPL_TI + 6, st[H_TR_SEL])
    if st[H_SEL0 + SREG_CS] == 0:
        return _fail(st, K.HOST_CS_NULL, 0)
    if st[H_TR_SEL] == 0:
        return _fail(st, K.HOST_TR_NULL, 0)
    if st[H_SEL0 + SREG_SS] == 0:
        return _fail(st, K.HOST_SS_NULL, 0)
    return 0


@njit
def _granularity_bad(ar, limit):
    """SDM 27.3.1.2: G must be 0 if any of limit bits 11:0 is 0, 1 if any of 31:20 is 1."""
    if (limit & 0xFFF) != 0xFFF and (ar & AR_G) != 0:
        return True
    if (limit & 0xFFF00000) != 0 and (ar & AR_G) == 0:
        return True
    return False


@njit
def _data_ar_bad(ar, sel, limit):
    """DS, ES, FS, GS when usable (27.3.1.2)."""
    t = ar & 0xF
    if (t & 1) == 0:                          # accessed
        return True
    if (t & 8) != 0 and (t & 2) == 0:         # code segment: readable
        return True
    if (ar & AR_S) == 0 or (ar & AR_P) == 0:
        return True
    if t <= 11 and ((ar >> AR_DPL_SHIFT) & 3) < (sel & 3):   # not conforming code: DPL >= RPL
        return True
    if (ar & _AR_RESERVED) != 0 or _granularity_bad(ar, limit):
        return True
    return False


@njit
def check_guest(st):
    """27.3.1: 0 when the guest-state area is valid, else the check's number."""
    cr0, cr4, fl = st[G_CR0], st[G_CR4], st[G_RFLAGS]
    if _fixed_bad(cr0, X.CR0_FIXED0, X.CR0_FIXED1):
        return _fail(st, K.GUEST_CR0, cr0)
    if _fixed_bad(cr4, X.CR4_FIXED0, X.CR4_FIXED1):
        return _fail(st, K.GUEST_CR4, cr4)
    if (fl & _RFLAGS_RESERVED0) != 0 or (fl & _RFLAGS_RESERVED1) == 0:
        return _fail(st, K.GUEST_RFLAGS_RESERVED, fl)
    if (fl & FLAG_VM) != 0:
        return _fail(st, K.GUEST_RFLAGS_VM, fl)
    info = st[ENTRY_INTR_INFO]
    inject_ext = (info & X.INTR_INFO_VALID) != 0 and ((info >> 8) & 7) == X.INTR_TYPE_EXTERNAL
    if inject_ext and (fl & IF) == 0:
        return _fail(st, K.GUEST_RFLAGS_IF, fl)
    # segment registers (ES 0, CS 1, SS 2, DS 3, FS 4, GS 5)
    if (st[G_TR_SEL] & 4) != 0:
        return _fail(st, K.GUEST_TR_TI, st[G_TR_SEL])
    if (st[G_LDTR_AR] & AR_UNUSABLE) == 0 and (st[G_LDTR_SEL] & 4) != 0:
        return _fail(st, K.GUEST_LDTR_TI, st[G_LDTR_SEL])
    cs_sel, ss_sel = st[G_SEL0 + SREG_CS], st[G_SEL0 + SREG_SS]
    if (ss_sel & 3) != (cs_sel & 3):
        return _fail(st, K.GUEST_SS_RPL, ss_sel)
    cs_ar, ss_ar = st[G_AR0 + SREG_CS], st[G_AR0 + SREG_SS]
    ct = cs_ar & 0xF
    if ct != 9 and ct != 11 and ct != 13 and ct != 15:
        return _fail(st, K.GUEST_CS_TYPE, cs_ar)
    if (cs_ar & AR_S) == 0 or (cs_ar & AR_P) == 0:
        return _fail(st, K.GUEST_CS_S_P, cs_ar)
    cs_dpl, ss_dpl = (cs_ar >> AR_DPL_SHIFT) & 3, (ss_ar >> AR_DPL_SHIFT) & 3
    if (ct <= 11 and cs_dpl != ss_dpl) or (ct >= 13 and cs_dpl > ss_dpl):
        return _fail(st, K.GUEST_CS_DPL, cs_ar)
    if (cs_ar & _AR_RESERVED) != 0 or (cs_ar & AR_UNUSABLE) != 0 or \
            _granularity_bad(cs_ar, st[G_LIMIT0 + SREG_CS]):
        return _fail(st, K.GUEST_CS_RESERVED, cs_ar)
    ss_usable = (ss_ar & AR_UNUSABLE) == 0
    if ss_usable:
        st_ = ss_ar & 0xF
        if (st_ != 3 and st_ != 7) or (ss_ar & AR_S) == 0 or (ss_ar & AR_P) == 0:
            return _fail(st, K.GUEST_SS_TYPE, ss_ar)
    if ss_dpl != (ss_sel & 3):
        return _fail(st, K.GUEST_SS_DPL, ss_ar)
    if ss_usable and ((ss_ar & _AR_RESERVED) != 0 or
                      _granularity_bad(ss_ar, st[G_LIMIT0 + SREG_SS])):
        return _fail(st, K.GUEST_SS_RESERVED, ss_ar)
    for sreg, check in ((3, K.GUEST_DS_AR), (0, K.GUEST_ES_AR), (4, K.GUEST_FS_AR),
                        (5, K.GUEST_GS_AR)):
        ar = st[G_AR0 + sreg]
        if (ar & AR_UNUSABLE) == 0 and _data_ar_bad(ar, st[G_SEL0 + sreg], st[G_LIMIT0 + sreg]):
            return _fail(st, check, ar)
    tr_ar = st[G_TR_AR]
    if (tr_ar & 0xF) != 3 and (tr_ar & 0xF) != 11:
        return _fail(st, K.GUEST_TR_TYPE, tr_ar)
    if (tr_ar & AR_S) != 0 or (tr_ar & AR_P) == 0 or (tr_ar & AR_UNUSABLE) != 0 or \
            (tr_ar & _AR_RESERVED) != 0 or _granularity_bad(tr_ar, st[G_TR_LIMIT]):
        return _fail(st, K.GUEST_TR_AR, tr_ar)
    ld_ar = st[G_LDTR_AR]
    if (ld_ar & AR_UNUSABLE) == 0:
        if (ld_ar & 0xF) != 2 or (ld_ar & AR_S) != 0 or (ld_ar & AR_P) == 0 or \
                (ld_ar & _AR_RESERVED) != 0 or _granularity_bad(ld_ar, st[G_LDTR_LIMIT]):
            return _fail(st, K.GUEST_LDTR_AR, ld_ar)
    if (st[G_GDTR_LIMIT] & 0xFFFF0000) != 0:
        return _fail(st, K.GUEST_GDTR_LIMIT, st[G_GDTR_LIMIT])
    if (st[G_IDTR_LIMIT] & 0xFFFF0000) != 0:
        return _fail(st, K.GUEST_IDTR_LIMIT, st[G_IDTR_LIMIT])
    act = st[G_ACTIVITY]
    if act != X.ACTIVITY_ACTIVE and act != X.ACTIVITY_HLT:
        return _fail(st, K.GUEST_ACTIVITY, act)
    if act == X.ACTIVITY_HLT and ss_dpl != 0:
        return _fail(st, K.GUEST_ACTIVITY_HLT_DPL, ss_ar)
    intr = st[G_INTERRUPTIBILITY]
    blocking = intr & (X.INTERRUPTIBILITY_STI | X.INTERRUPTIBILITY_MOV_SS)
    if (intr & (X.INTERRUPTIBILITY_RESERVED | X.INTERRUPTIBILITY_SMI)) != 0 or \
            blocking == (X.INTERRUPTIBILITY_STI | X.INTERRUPTIBILITY_MOV_SS):
        return _fail(st, K.GUEST_INTERRUPTIBILITY, intr)
    if (intr & X.INTERRUPTIBILITY_STI) != 0 and (fl & IF) == 0:
        return _fail(st, K.GUEST_STI_IF, intr)
    if inject_ext and blocking != 0:
        return _fail(st, K.GUEST_INJECT_BLOCKED, intr)
    if act == X.ACTIVITY_HLT and blocking != 0:
        return _fail(st, K.GUEST_HLT_BLOCKING, intr)
    if act == X.ACTIVITY_HLT and (info & X.INTR_INFO_VALID) != 0:
        t, v = (info >> 8) & 7, info & 0xFF
        if not (t == X.INTR_TYPE_EXTERNAL or t == X.INTR_TYPE_NMI or
                (t == X.INTR_TYPE_HARDWARE_EXCEPTION and (v == 1 or v == 18)) or
                t == X.INTR_TYPE_OTHER):
            return _fail(st, K.GUEST_HLT_INJECTION, info)
    if (st[G_PENDING_DBG] & _PENDING_DBG_RESERVED) != 0:
        return _fail(st, K.GUEST_PENDING_DBG, st[G_PENDING_DBG])
    if st[LINK_POINTER] != -1:       # FFFFFFFF_FFFFFFFFH in a signed slot
        return _fail(st, K.GUEST_LINK_POINTER, st[LINK_POINTER])
    return 0


@njit
def _inject(mem, st, tlb, pg):
    """27.6: deliver the VM-entry interruption-information field's event through the
    guest IDT, as if it occurred right after the entry. The kinds map to hvsim's
    delivery kinds: external interrupt -> EV_EXTERNAL; hardware exception -> EV_FAULT
    (EIP = guest RIP); software interrupt / software exception -> EV_SOFTWARE (the gate
    DPL is checked; EIP pushed = RIP + VM-entry instruction length); privileged software
    exception (INT1) -> EV_FAULT with that EIP (no DPL check)."""
    info = st[ENTRY_INTR_INFO]
    if (info & X.INTR_INFO_VALID) == 0:
        return
    st[INT_SHADOW] = 0                # no blocking by STI or MOV SS after a vectoring entry
    v = info & 0xFF                   # (27.6.1)
    t = (info >> 8) & 7
    err = st[ENTRY_ERROR_CODE] & 0xFFFF if (info & X.INTR_INFO_DELIVER_ERROR_CODE) != 0 else -1
    if t == X.INTR_TYPE_EXTERNAL:
        st[COUNTERS + C_IRQ] += 1     # an external interrupt delivered through the guest IDT
        deliver(mem, st, tlb, pg, v, -1, EV_EXTERNAL)
    elif t == X.INTR_TYPE_HARDWARE_EXCEPTION:
        # an injected #PF leaves CR2 as the VMM set it: injection loads no CR2 (KVM
        # writes the guest's CR2 itself before every entry, vmx_vcpu_run); delivery
        # loads CR2 from FAULT_ADDR, so that is where the VMM's value goes
        st[FAULT_ADDR] = st[CR2]
        deliver(mem, st, tlb, pg, v, err, EV_FAULT)
    else:
        st[EIP] = (st[EIP] + st[ENTRY_INSN_LEN]) & MASK32
        if t == X.INTR_TYPE_PRIVILEGED_SOFTWARE_EXCEPTION:
            deliver(mem, st, tlb, pg, v, -1, EV_FAULT)
        else:
            deliver(mem, st, tlb, pg, v, -1, EV_SOFTWARE)


@njit
def fail_as_exit(st, tlb, qualification):
    """A VM entry that failed on guest state (27.8): the host state is loaded and the exit
    reason says 33 with bit 31 set; the processor stays in VMX root operation."""
    st[EXIT_REASON] = _ENTRY_FAILURE_REASON
    st[EXIT_QUAL] = qualification
    st[EXIT_INTR_INFO] = 0
    st[ENTRY_INTR_INFO] &= ~X.INTR_INFO_VALID
    st[COUNTERS + C_VMENTRY_FAIL] += 1
    load_host(st, tlb)


@njit
def vm_entry(mem, st, tlb, pg, launch):
    """VMLAUNCH (``launch`` = 1) or VMRESUME (0) in VMX root operation at CPL 0, st[EIP]
    past the instruction. Returns ENTERED, FELL_THROUGH or FAILED_AS_EXIT."""
    st[COUNTERS + C_VMX_INSN] += 1
    st[VMX_ENTRY_CHECK] = 0
    st[VMX_ENTRY_VALUE] = 0
    if st[VMCS_PTR] == VMCS_PTR_NONE:
        vm_fail_invalid(st)
        return FELL_THROUGH
    if (st[INT_SHADOW] & BLOCKING_BY_MOV_SS) != 0:
        vm_fail_valid(st, _E_ENTRY_EVENTS_BLOCKED_BY_MOV_SS)
        st[COUNTERS + C_VMENTRY_FAIL] += 1
        return FELL_THROUGH
    if launch != 0 and st[VMCS_LAUNCH_STATE] != V.LAUNCH_CLEAR:
        vm_fail_valid(st, _E_VMLAUNCH_NONCLEAR_VMCS)
        st[COUNTERS + C_VMENTRY_FAIL] += 1
        return FELL_THROUGH
    if launch == 0 and st[VMCS_LAUNCH_STATE] != V.LAUNCH_LAUNCHED:
        vm_fail_valid(st, _E_VMRESUME_NONLAUNCHED_VMCS)
        st[COUNTERS + C_VMENTRY_FAIL] += 1
        return FELL_THROUGH
    if check_controls(st) != 0:
        vm_fail_valid(st, _E_ENTRY_INVALID_CONTROL_FIELD)
        st[COUNTERS + C_VMENTRY_FAIL] += 1
        return FELL_THROUGH
    if check_host(st) != 0:
        vm_fail_valid(st, _E_ENTRY_INVALID_HOST_STATE_FIELD)
        st[COUNTERS + C_VMENTRY_FAIL] += 1
        return FELL_THROUGH
    failed = check_guest(st)
    if failed != 0:
        qual = X.ENTRY_FAIL_VMCS_LINK_POINTER if failed == K.GUEST_LINK_POINTER \
            else X.ENTRY_FAIL_DEFAULT
        fail_as_exit(st, tlb, qual)
        return FAILED_AS_EXIT
    vm_succeed(st)                  # RFLAGS is then replaced by the guest's
    load_guest(st, tlb)
    st[INSN_EIP] = st[EIP]          # a fault while injecting restarts at the guest's RIP
    st[INSN_LEN] = 0
    if launch != 0:
        st[VMCS_LAUNCH_STATE] = V.LAUNCH_LAUNCHED
    sec = st[SEC] if (st[CPU] & X.CPU_ACTIVATE_SECONDARY_CONTROLS) != 0 else 0
    st[VMX_NONROOT] = 1
    st[VMX_EPT] = 1 if (sec & X.SEC_ENABLE_EPT) != 0 else 0
    st[VMX_VECTORING_INFO] = 0
    st[COUNTERS + C_VMENTRY] += 1
    trace_record(st, TRACE_KIND_VMENTRY, launch, -1, st[EIP], TRACE_ROOT, st[CPL], 0)
    _inject(mem, st, tlb, pg)
    return ENTERED


@njit
def entry_request(mem, st, tlb, pg, dc, row):
    """The VM entry a VMM written in Python asks for (``st[VMX_ENTRY_REQUEST]``: 1
    VMLAUNCH, 2 VMRESUME), made by the run loop as the instruction would make it in VMX
    root operation at CPL 0. Table-entry signature (hvsim/cpu/table.py K_VMENTRY)."""
    launch = 1 if st[VMX_ENTRY_REQUEST] == 1 else 0
    st[VMX_ENTRY_REQUEST] = 0
    vm_entry(mem, st, tlb, pg, launch)
