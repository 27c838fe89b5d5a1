"""The VMX instructions in VMX root operation (jitted): what each does once the CPU-side
handler (hvsim/cpu/vmxinsn.py) has made the checks that come first -- #UD outside VMX
operation, a VM exit in non-root operation, #GP(0) at CPL > 0 -- and read the memory
operand. Each follows the "Operation" section of its SDM entry (Vol. 3C, 31.3).

The outcome conventions (SDM Vol. 3C, 31.2):

* VMsucceed: CF, PF, AF, ZF, SF, OF := 0;
* VMfailInvalid: CF := 1, the other five := 0 (there is no current VMCS to hold an error);
* VMfailValid(n): ZF := 1, the other five := 0, VM-instruction error field := n;
* VMfail(n): VMfailValid(n) when there is a current VMCS, else VMfailInvalid.
"""
from hvsim._jit import njit
from hvsim.arch import vmcs as V
from hvsim.arch import vmx as X
from hvsim.arch.counters import C_VMX_INSN
from hvsim.arch.flags import ARITH, CF, ZF
from hvsim.arch.layout import (EFLAGS, VMX_ON, VMXON_PTR, VMCS_PTR, VMCS_PTR_NONE,
                              VMCS_LAUNCH_STATE, COUNTERS)
from hvsim.vtx.vmcs import (field_slot, read_only, read_field, write_field, region_in_memory,
                            read32, load_region, store_region, set_launch_state)

_ERROR = V.state_index("VM_INSTRUCTION_ERROR")
_PAGE_MASK = 0xFFF
_PHYS_LIMIT = 1 << 32           # IA32_VMX_BASIC bit 48: physical addresses are 32 bits
# VM-instruction error numbers as plain ints (Table 31-1)
_E_VMXON_IN_VMX_ROOT = int(X.VmInstructionError.VMXON_IN_VMX_ROOT)
_E_VMCLEAR_INVALID_ADDRESS = int(X.VmInstructionError.VMCLEAR_INVALID_ADDRESS)
_E_VMCLEAR_VMXON_POINTER = int(X.VmInstructionError.VMCLEAR_VMXON_POINTER)
_E_VMPTRLD_INVALID_ADDRESS = int(X.VmInstructionError.VMPTRLD_INVALID_ADDRESS)
_E_VMPTRLD_VMXON_POINTER = int(X.VmInstructionError.VMPTRLD_VMXON_POINTER)
_E_VMPTRLD_INCORRECT_REVISION = int(X.VmInstructionError.VMPTRLD_INCORRECT_REVISION)
_E_UNSUPPORTED_VMCS_COMPONENT = int(X.VmInstructionError.UNSUPPORTED_VMCS_COMPONENT)
_E_VMWRITE_READ_ONLY_COMPONENT = int(X.VmInstructionError.VMWRITE_READ_ONLY_COMPONENT)
_E_VMCALL_IN_VMX_ROOT = int(X.VmInstructionError.VMCALL_IN_VMX_ROOT)


@njit
def vm_succeed(st):
    st[EFLAGS] &= ~ARITH


@njit
def vm_fail_invalid(st):
    st[EFLAGS] = (st[EFLAGS] & ~ARITH) | CF


@njit
def vm_fail_valid(st, error):
    st[EFLAGS] = (st[EFLAGS] & ~ARITH) | ZF
    st[_ERROR] = error


@njit
def vm_fail(st, error):
    if st[VMCS_PTR] == VMCS_PTR_NONE:
        vm_fail_invalid(st)
    else:
        vm_fail_valid(st, error)


@njit
def _bad_address(st, pa):
    """Not 4 KiB aligned, beyond the physical-address width, or (hvsim) not in memory."""
    return (pa & _PAGE_MASK) != 0 or pa < 0 or pa >= _PHYS_LIMIT or not region_in_memory(st, pa)


@njit
def _pointer_refused(st, pa, bad_address_error, vmxon_pointer_error):
    """VMCLEAR's and VMPTRLD's first two checks on their VMCS pointer (31.3): an invalid
    physical address, then the VMXON pointer. True (and VMfail(n)) if one fails."""
    if _bad_address(st, pa):
        vm_fail(st, bad_address_error)
        return True
    if pa == st[VMXON_PTR]:
        vm_fail(st, vmxon_pointer_error)
        return True
    return False


@njit
def _revision_ok(mem, pa):
    rev = read32(mem, pa)
    return (rev & 0x7FFFFFFF) == X.VMCS_REVISION_ID and (rev & X.VMCS_SHADOW_INDICATOR) == 0


@njit
def vmxon(mem, st, pa):
    """VMXON with the region at ``pa``, outside VMX operation (the CPU-side handler has
    checked CR0, CR4 and IA32_FEATURE_CONTROL and raised #GP(0) when they forbid it)."""
    st[COUNTERS + C_VMX_INSN] += 1
    if _bad_address(st, pa) or not _revision_ok(mem, pa):
        vm_fail_invalid(st)
        return
    st[VMCS_PTR] = VMCS_PTR_NONE
    st[VMXON_PTR] = pa
    st[VMX_ON] = 1
    vm_succeed(st)


@njit
def vmxon_in_root(st):
    """VMXON executed in VMX root operation (at CPL 0)."""
    st[COUNTERS + C_VMX_INSN] += 1
    vm_fail(st, _E_VMXON_IN_VMX_ROOT)


@njit
def vmxoff(mem, st, pg):
    """Leave VMX operation. The current VMCS stays cached, as a processor's may: hvsim
    writes it back so nothing a VMM wrote is lost (software should VMCLEAR first)."""
    st[COUNTERS + C_VMX_INSN] += 1
    if st[VMCS_PTR] != VMCS_PTR_NONE:
        store_region(mem, st, pg, st[VMCS_PTR])
    st[VMCS_PTR] = VMCS_PTR_NONE
    st[VMX_ON] = 0
    vm_succeed(st)


@njit
def vmclear(mem, st, pg, pa):
    st[COUNTERS + C_VMX_INSN] += 1
    if _pointer_refused(st, pa, _E_VMCLEAR_INVALID_ADDRESS, _E_VMCLEAR_VMXON_POINTER):
        return
    if pa == st[VMCS_PTR]:
        st[VMCS_LAUNCH_STATE] = V.LAUNCH_CLEAR
        store_region(mem, st, pg, pa)                # its data in memory, launch state clear
        st[VMCS_PTR] = VMCS_PTR_NONE
    else:
        set_launch_state(mem, st, pg, pa, V.LAUNCH_CLEAR)
    vm_succeed(st)


@njit
def vmptrld(mem, st, pg, pa):
    st[COUNTERS + C_VMX_INSN] += 1
    if _pointer_refused(st, pa, _E_VMPTRLD_INVALID_ADDRESS, _E_VMPTRLD_VMXON_POINTER):
        return
    if not _revision_ok(mem, pa):
        vm_fail(st, _E_VMPTRLD_INCORRECT_REVISION)
        return
    if pa != st[VMCS_PTR]:
        if st[VMCS_PTR] != VMCS_PTR_NONE:
            store_region(mem, st, pg, st[VMCS_PTR])  # the previous current VMCS stays active
        load_region(mem, st, pa)
        st[VMCS_PTR] = pa
    vm_succeed(st)


@njit
def vmptrst_value(st):
    """The value VMPTRST stores (64 bits): the current-VMCS pointer, all ones for none."""
    st[COUNTERS + C_VMX_INSN] += 1
    return st[VMCS_PTR]


@njit
def vmread(st, encoding):
    """VMREAD: (True, value) on success; (False, 0) after a VMfail."""
    st[COUNTERS + C_VMX_INSN] += 1
    if st[VMCS_PTR] == VMCS_PTR_NONE:
        vm_fail_invalid(st)
        return False, 0
    slot = field_slot(encoding)
    if slot < 0:
        vm_fail_valid(st, _E_UNSUPPORTED_VMCS_COMPONENT)
        return False, 0
    v = read_field(st, slot, encoding)
    vm_succeed(st)
    return True, v


@njit
def vmwrite(st, encoding, value):
    st[COUNTERS + C_VMX_INSN] += 1
    if st[VMCS_PTR] == VMCS_PTR_NONE:
        vm_fail_invalid(st)
        return
    slot = field_slot(encoding)
    if slot < 0:
        vm_fail_valid(st, _E_UNSUPPORTED_VMCS_COMPONENT)
        return
    if read_only(encoding):
        # IA32_VMX_MISC bit 29 is 0: exit-information fields cannot be written
        vm_fail_valid(st, _E_VMWRITE_READ_ONLY_COMPONENT)
        return
    write_field(st, slot, encoding, value)
    vm_succeed(st)


@njit
def vmcall_in_root(st):
    st[COUNTERS + C_VMX_INSN] += 1
    vm_fail(st, _E_VMCALL_IN_VMX_ROOT)
