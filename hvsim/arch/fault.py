"""Raising a guest fault from inside a kernel (jitted).

Kernels do not use Python exceptions. A kernel that detects an architectural
exception records it here and returns; every caller tests ``st[FAULT_PENDING]``
after a call that can fault and returns too, so the instruction has no further
effect. The run loop then delivers the fault (guest IDT or host exit).
Only the first fault of an instruction is kept.
"""
from hvsim._jit import njit
from hvsim.arch.layout import (FAULT_PENDING, FAULT_VECTOR, FAULT_ERROR, FAULT_ADDR,
                              FAULT_EXCEPTION, FAULT_BUS, FAULT_SHUTDOWN, FAULT_INTERNAL,
                              FAULT_VMEXIT, ATTN)

NO_ERROR_CODE = -1


@njit
def raise_fault(st, vector, error):
    """Record exception ``vector`` with ``error`` (-1: the vector pushes no error code)."""
    if st[FAULT_PENDING] == 0:
        st[FAULT_PENDING] = FAULT_EXCEPTION
        st[FAULT_VECTOR] = vector
        st[FAULT_ERROR] = error
        st[ATTN] = 1                  # the run loop looks only at ATTN after each instruction


@njit
def raise_page_fault(st, lin, error):
    """Record #PF (vector 14) for linear address ``lin``; CR2 is written at delivery."""
    if st[FAULT_PENDING] == 0:
        st[FAULT_PENDING] = FAULT_EXCEPTION
        st[FAULT_VECTOR] = 14
        st[FAULT_ERROR] = error
        st[FAULT_ADDR] = lin
        st[ATTN] = 1


@njit
def raise_bus_error(st, pa):
    """Record an access to physical address ``pa`` outside guest memory (a host event)."""
    if st[FAULT_PENDING] == 0:
        st[FAULT_PENDING] = FAULT_BUS
        st[FAULT_VECTOR] = -1
        st[FAULT_ERROR] = -1
        st[FAULT_ADDR] = pa
        st[ATTN] = 1


@njit
def raise_shutdown(st):
    """Record a triple fault: the processor shuts down."""
    st[FAULT_PENDING] = FAULT_SHUTDOWN
    st[ATTN] = 1


@njit
def raise_internal(st, entry):
    """A kernel reached through the kernel table (hvsim/cpu/table.py, entry ``entry``) did
    not return its success status: the machine's state can no longer be trusted, so this
    replaces any pending fault and ends the run with an 'internal_error' exit."""
    st[FAULT_PENDING] = FAULT_INTERNAL
    st[FAULT_VECTOR] = entry
    st[FAULT_ERROR] = -1
    st[ATTN] = 1


@njit
def raise_vmexit(st, reason, qualification):
    """Record a VM exit (VMX non-root operation; hvsim/vtx): basic exit ``reason``
    (hvsim/arch/vmx.py ExitReason) and its exit qualification. Exits are fault-like
    (SDM Vol. 3C, 26.1): the instruction has no effect, and the run loop restarts it
    from the host's point of view -- the guest's EIP saved in the VMCS is the
    instruction's. Fields beyond these two (guest-linear and guest-physical address,
    interruption information) are written into the VMCS cache by the caller first."""
    if st[FAULT_PENDING] == 0:
        st[FAULT_PENDING] = FAULT_VMEXIT
        st[FAULT_VECTOR] = reason
        st[FAULT_ERROR] = qualification
        st[ATTN] = 1
