"""VM exit: from VMX non-root operation back to the VMM (jitted).

:func:`vm_exit` runs when the run loop meets a pending VM exit (``raise_vmexit``,
hvsim/arch/fault.py): an instruction or event in non-root operation that the VMCS
controls say the VMM must see. It follows SDM Vol. 3C chapter 28:

1. the exit-information fields (28.2): exit reason, exit qualification, VM-exit
   instruction length (exits caused by an instruction), the IDT-vectoring information
   of an event whose delivery the exit interrupted; the VM-exit interruption information,
   guest-linear and guest-physical address and VM-exit instruction information were
   written by whoever raised the exit;
2. the guest state saved into the VMCS (28.3, hvsim/vtx/state.py), RIP the instruction's
   (exits are fault-like: it did not execute);
3. the valid bit of the VM-entry interruption-information field cleared (25.8.3);
4. the host state loaded (28.5): the CPU is in VMX root operation at HOST_RIP, ring 0.

A VMM written in guest code goes on at HOST_RIP; for one written in Python
(``st[VMX_PYTHON_HOST]``) the run loop leaves ``run()`` with EXIT_VMEXIT.
"""
from hvsim._jit import njit
from hvsim.arch import vmcs as V
from hvsim.arch import vmx as X
from hvsim.arch.counters import C_VMEXIT
from hvsim.arch.layout import (VMX_NONROOT, VMX_EPT,
                              VMX_VECTORING_INFO, VMX_VECTORING_ERROR, FAULT_PENDING,
                              FAULT_VECTOR, FAULT_ERROR, INSN_LEN, COUNTERS, MASK32, CPL)
from hvsim.rings.interrupts import trace_record, TRACE_KIND_VMEXIT, TRACE_ROOT
from hvsim.vtx.state import save_guest, load_host, G_RIP


_f = V.state_index


EXIT_REASON, EXIT_QUAL, EXIT_INSN_LEN = (_f("VM_EXIT_REASON"), _f("EXIT_QUALIFICATION"),
                                         _f("VM_EXIT_INSTRUCTION_LEN"))
EXIT_INTR_INFO, EXIT_INTR_ERROR = _f("VM_EXIT_INTR_INFO"), _f("VM_EXIT_INTR_ERROR_CODE")
IDT_VECTORING_INFO, IDT_VECTORING_ERROR = (_f("IDT_VECTORING_INFO_FIELD"),
                                           _f("IDT_VECTORING_ERROR_CODE"))
ENTRY_INTR_INFO = _f("VM_ENTRY_INTR_INFO_FIELD")

_N_REASONS = X.N_EXIT_REASONS
_EXCEPTION_NMI = int(X.ExitReason.EXCEPTION_NMI)
_EXTERNAL_INTERRUPT = int(X.ExitReason.EXTERNAL_INTERRUPT)


@njit
def vm_exit(mem, st, tlb, pg, dc, row):
    """Complete the pending VM exit (st[FAULT_VECTOR] = reason, st[FAULT_ERROR] =
    qualification). Table-entry signature (hvsim/cpu/table.py K_VMEXIT); ``dc`` and
    ``row`` are unused."""
    reason = st[FAULT_VECTOR]
    st[FAULT_PENDING] = 0
    st[EXIT_REASON] = reason & MASK32
    st[EXIT_QUAL] = st[FAULT_ERROR] & MASK32
    st[EXIT_INSN_LEN] = st[INSN_LEN]
    if reason != _EXCEPTION_NMI and reason != _EXTERNAL_INTERRUPT:
        st[EXIT_INTR_INFO] = 0
    st[IDT_VECTORING_INFO] = st[VMX_VECTORING_INFO]
    st[IDT_VECTORING_ERROR] = st[VMX_VECTORING_ERROR] if st[VMX_VECTORING_INFO] != 0 else 0
    st[VMX_VECTORING_INFO] = 0
    st[VMX_VECTORING_ERROR] = 0
    save_guest(st)
    st[ENTRY_INTR_INFO] &= ~X.INTR_INFO_VALID
    st[VMX_NONROOT] = 0
    st[VMX_EPT] = 0
    if 0 <= reason < _N_REASONS:
        st[COUNTERS + C_VMEXIT + reason] += 1
    trace_record(st, TRACE_KIND_VMEXIT, reason, st[EXIT_QUAL], st[G_RIP], st[CPL], TRACE_ROOT,
                 0)
    load_host(st, tlb)
