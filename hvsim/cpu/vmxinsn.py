"""The VMX instructions as the CPU decodes and checks them (jitted).

``op_vmx`` handles 0F 78 VMREAD, 0F 79 VMWRITE, 0F C7 /6 /7 (VMPTRLD, VMCLEAR with
66, VMXON with F3; VMPTRST) and 66 0F 38 80/81 (INVEPT, INVVPID); ``vmx_group7`` the
register forms of 0F 01: C1 VMCALL, C2 VMLAUNCH, C3 VMRESUME, C4 VMXOFF. Each makes the
checks its SDM "Operation" makes before anything else (SDM Vol. 3C, 31.3), in that order:

1. #UD outside VMX operation (VMXON: with CR4.VMXE = 0), with a register operand where
   the instruction takes memory, or in virtual-8086 mode (never, here);
2. in VMX non-root operation, a VM exit (reasons 18-27) -- all of them exit
   unconditionally (26.1.2), before the CPL check;
3. #GP(0) at CPL > 0 (and for VMXON outside VMX operation: CR0/CR4 not as FIXED0/FIXED1
   require, or IA32_FEATURE_CONTROL not locked with VMX enabled outside SMX);
4. the memory operand read (its #GP/#SS/#PF);

and then the instruction itself (hvsim/vtx/instructions.py, hvsim/vtx/entry.py).
"""
from hvsim._jit import njit
from hvsim.arch import vmx as X
from hvsim.arch.cr import CR4_VMXE
from hvsim.arch.fault import raise_fault
from hvsim.arch.layout import (CR0, CR4, CPL, EFLAGS, FAULT_PENDING, VMX_ON, VMX_NONROOT,
                              VMX_PYTHON_HOST, MSR_FEATURE_CONTROL_SLOT, EXIT_KIND, ATTN,
                              ZERO, MASK32, FETCH_LIN_PAGE)
from hvsim.arch.exits import EXIT_VMEXIT
from hvsim.arch.flags import VM as FLAG_VM
from hvsim.arch.vectors import GP, UD
from hvsim.cpu.decode import F_OPC, F_REG, F_RM, F_PFX, F_DISP, F_BASE, F_INDEX, F_SCALE, \
    F_SEG, PFX_REP, PFX_OPSIZE
from hvsim.cpu.operands import ea, mem_read, mem_write
from hvsim.mmu.tlb import tlb_flush_vpid, tlb_invlpg_vpid
from hvsim.vtx import instructions as I
from hvsim.vtx.entry import vm_entry, FAILED_AS_EXIT
from hvsim.vtx.nonroot import exit_for_instruction

_R = X.ExitReason
R_VMCALL, R_VMCLEAR, R_VMLAUNCH, R_VMPTRLD = (int(_R.VMCALL), int(_R.VMCLEAR),
                                              int(_R.VMLAUNCH), int(_R.VMPTRLD))
R_VMPTRST, R_VMREAD, R_VMRESUME, R_VMWRITE = (int(_R.VMPTRST), int(_R.VMREAD),
                                              int(_R.VMRESUME), int(_R.VMWRITE))
R_VMXOFF, R_VMXON, R_INVEPT = int(_R.VMXOFF), int(_R.VMXON), int(_R.INVEPT)
R_INVVPID = int(_R.INVVPID)
_E_INVALID_OPERAND = int(X.VmInstructionError.INVALID_INVEPT_INVVPID_OPERAND)
_FEATURE_CONTROL_NEEDED = X.FEATURE_CONTROL_LOCK | X.FEATURE_CONTROL_VMX_OUTSIDE_SMX
_ADDRESS_SIZE_32 = 1 << 7          # instruction information bits 9:7 = 1: 32-bit addressing
_INFO_REGISTER = 1 << 10           # bit 10: the r/m operand is a register


@njit
def instruction_info(dc, row):
    """VM-exit instruction-information field of a VMX instruction (SDM Vol. 3C, 28.2.5,
    Tables 28-12 and 28-13): scaling, address size, register or memory, segment, index
    and base registers (bits 22 and 27: invalid), the ModRM.reg register in 31:28."""
    info = _ADDRESS_SIZE_32 | (dc[F_REG, row] << 28)
    rm = dc[F_RM, row]
    if rm >= 0:
        return info | _INFO_REGISTER | (rm << 3)
    info |= dc[F_SCALE, row] | (dc[F_SEG, row] << 15)
    index, base = dc[F_INDEX, row], dc[F_BASE, row]
    info |= (1 << 22) if index == ZERO else (index << 18)
    info |= (1 << 27) if base == ZERO else (base << 23)
    return info


@njit
def _exit(st, dc, row, reason):
    """A VMX instruction in non-root operation: the exit qualification is the memory
    operand's displacement (28.2.1), the instruction information as above."""
    qual = dc[F_DISP, row] if dc[F_RM, row] < 0 else 0
    exit_for_instruction(st, reason, qual, -1, instruction_info(dc, row))


@njit
def _checks(st, dc, row, reason):
    """Steps 1-3 for an instruction that needs VMX operation; True = stop here."""
    if st[VMX_ON] == 0 or (st[EFLAGS] & FLAG_VM) != 0:
        raise_fault(st, UD, -1)
        return True
    if st[VMX_NONROOT] != 0:
        _exit(st, dc, row, reason)
        return True
    if st[CPL] != 0:
        raise_fault(st, GP, 0)
        return True
    return False


@njit
def _read_qword(mem, st, tlb, pg, seg, off):
    """The 64 bits at ``seg``:``off`` (two dword reads, low first); -1 with a fault
    pending."""
    lo = mem_read(mem, st, tlb, pg, seg, off, 4)
    if st[FAULT_PENDING] != 0:
        return -1
    hi = mem_read(mem, st, tlb, pg, seg, (off + 4) & MASK32, 4)
    if st[FAULT_PENDING] != 0:
        return -1
    return lo | (hi << 32)


@njit
def _read_m64(mem, st, tlb, pg, dc, row):
    """The 64-bit memory operand (a physical address); -1 with a fault pending."""
    return _read_qword(mem, st, tlb, pg, dc[F_SEG, row], ea(st, dc, row))


@njit
def _vmxon(mem, st, tlb, pg, dc, row):
    if (st[CR4] & CR4_VMXE) == 0 or (st[EFLAGS] & FLAG_VM) != 0:
        raise_fault(st, UD, -1)
        return
    if st[VMX_ON] != 0:
        if st[VMX_NONROOT] != 0:
            _exit(st, dc, row, R_VMXON)
        elif st[CPL] != 0:
            raise_fault(st, GP, 0)
        else:
            I.vmxon_in_root(st)
        return
    cr0, cr4 = st[CR0], st[CR4]
    if st[CPL] != 0 or (cr0 & X.CR0_FIXED0) != X.CR0_FIXED0 or \
            (cr0 & ~X.CR0_FIXED1 & MASK32) != 0 or (cr4 & X.CR4_FIXED0) != X.CR4_FIXED0 or \
            (cr4 & ~X.CR4_FIXED1 & MASK32) != 0 or \
            (st[MSR_FEATURE_CONTROL_SLOT] & _FEATURE_CONTROL_NEEDED) != _FEATURE_CONTROL_NEEDED:
        raise_fault(st, GP, 0)
        return
    pa = _read_m64(mem, st, tlb, pg, dc, row)
    if st[FAULT_PENDING] == 0:
        I.vmxon(mem, st, pa)


@njit
def _invept(mem, st, tlb, pg, dc, row):
    """INVEPT (SDM Vol. 3C, 31.3 "INVEPT"): the type in the register operand, a 128-bit
    descriptor in memory (bits 63:0 the EPTP). Types 1 (single-context) and 2 (all
    contexts) are supported (IA32_VMX_EPT_VPID_CAP bits 25 and 26); any other is
    VMfailValid(28). hvsim's TLB does not tag entries by EPTP, so both types drop every
    guest's entries (every VPID but 0000H, whose entries are flushed at each VM exit
    and entry anyway when a guest runs with it)."""
    if _checks(st, dc, row, R_INVEPT):
        return
    kind = st[dc[F_REG, row]]
    off = ea(st, dc, row)
    mem_read(mem, st, tlb, pg, dc[F_SEG, row], off, 4)           # the descriptor is read:
    if st[FAULT_PENDING] != 0:                                     # its faults come first
        return
    if kind != X.INVEPT_SINGLE_CONTEXT and kind != X.INVEPT_ALL_CONTEXT:
        I.vm_fail(st, _E_INVALID_OPERAND)
        return
    tlb_flush_vpid(st, tlb, -1, 0)
    st[FETCH_LIN_PAGE] = -1
    I.vm_succeed(st)


@njit
def _invvpid(mem, st, tlb, pg, dc, row):
    """INVVPID (SDM Vol. 3C, 31.3 "INVVPID"): the type in the register operand, a 128-bit
    descriptor in memory -- bits 15:0 the VPID, 63:16 reserved (must be 0), 127:64 a
    linear address. All four types are supported (IA32_VMX_EPT_VPID_CAP bits 40-43):
    0 individual address, 1 single context, 2 all contexts (every VPID but 0000H),
    3 single context retaining globals. As the SDM's Operation orders it: an unsupported
    type fails before the descriptor is read; then reserved bits set, or VPID 0000H for
    types 0, 1 and 3, are VMfailValid(28). An IA-32 processor's linear addresses are 32
    bits: a type-0 address with bits 63:32 set is not one (VMfailValid(28), as the SDM
    says for a non-canonical one)."""
    if _checks(st, dc, row, R_INVVPID):
        return
    kind = st[dc[F_REG, row]]
    if kind < X.INVVPID_INDIVIDUAL_ADDRESS or kind > X.INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS:
        I.vm_fail(st, _E_INVALID_OPERAND)
        return
    off = ea(st, dc, row)
    seg = dc[F_SEG, row]
    head = _read_qword(mem, st, tlb, pg, seg, off)                   # VPID, reserved
    if st[FAULT_PENDING] != 0:
        return
    lin = _read_qword(mem, st, tlb, pg, seg, (off + 8) & MASK32)     # linear address
    if st[FAULT_PENDING] != 0:
        return
    vpid = head & X.VPID_MASK
    if (head >> 16) != 0 or (kind != X.INVVPID_ALL_CONTEXT and vpid == 0) or \
            (kind == X.INVVPID_INDIVIDUAL_ADDRESS and (lin >> 32) != 0):
        I.vm_fail(st, _E_INVALID_OPERAND)
        return
    if kind == X.INVVPID_INDIVIDUAL_ADDRESS:
        tlb_invlpg_vpid(st, tlb, vpid, lin)
    elif kind == X.INVVPID_SINGLE_CONTEXT:
        tlb_flush_vpid(st, tlb, vpid, 0)
    elif kind == X.INVVPID_ALL_CONTEXT:
        tlb_flush_vpid(st, tlb, -1, 0)
    else:
        tlb_flush_vpid(st, tlb, vpid, 1)
    I.vm_succeed(st)


@njit
def op_vmx(mem, st, tlb, pg, dc, row):   # 0F 78, 0F 79, 0F C7 /6 /7, INVEPT, INVVPID
    opc = dc[F_OPC, row]
    rm = dc[F_RM, row]
    if opc == 0x178 or opc == 0x179:
        if _checks(st, dc, row, R_VMREAD if opc == 0x178 else R_VMWRITE):
            return
        encoding = st[dc[F_REG, row]]
        if opc == 0x178:                              # VMREAD r/m32, r32
            ok, value = I.vmread(st, encoding)
            if not ok:
                return
            if rm >= 0:
                st[rm] = value
            else:
                flags = st[EFLAGS]                    # a faulting store leaves no outcome
                mem_write(mem, st, tlb, pg, dc[F_SEG, row], ea(st, dc, row), 4, value)
                if st[FAULT_PENDING] != 0:
                    st[EFLAGS] = flags
            return
        if rm >= 0:                                   # VMWRITE r32, r/m32
            value = st[rm]
        else:
            value = mem_read(mem, st, tlb, pg, dc[F_SEG, row], ea(st, dc, row), 4)
            if st[FAULT_PENDING] != 0:
                return
        I.vmwrite(st, encoding, value)
        return
    if opc == 0x280:                                  # 66 0F 38 80: INVEPT r32, m128
        _invept(mem, st, tlb, pg, dc, row)
        return
    if opc == 0x281:                                  # 66 0F 38 81: INVVPID r32, m128
        _invvpid(mem, st, tlb, pg, dc, row)
        return
    # 0F C7: memory forms only (mod = 11 is another instruction, outside the subset)
    d = dc[F_REG, row]
    pfx = dc[F_PFX, row]
    if rm >= 0 or (d != 6 and d != 7) or (d == 7 and (pfx & (PFX_REP | PFX_OPSIZE)) != 0):
        raise_fault(st, UD, -1)
        return
    if d == 6 and (pfx & PFX_REP) != 0:
        _vmxon(mem, st, tlb, pg, dc, row)
        return
    if d == 7:                                        # VMPTRST m64
        if _checks(st, dc, row, R_VMPTRST):
            return
        value = I.vmptrst_value(st)
        off = ea(st, dc, row)
        seg = dc[F_SEG, row]
        mem_write(mem, st, tlb, pg, seg, off, 4, value & MASK32)
        if st[FAULT_PENDING] != 0:
            return
        mem_write(mem, st, tlb, pg, seg, (off + 4) & MASK32, 4, (value >> 32) & MASK32)
        if st[FAULT_PENDING] == 0:
            I.vm_succeed(st)
        return
    vmclear = (pfx & PFX_OPSIZE) != 0
    if _checks(st, dc, row, R_VMCLEAR if vmclear else R_VMPTRLD):
        return
    pa = _read_m64(mem, st, tlb, pg, dc, row)
    if st[FAULT_PENDING] != 0:
        return
    if vmclear:
        I.vmclear(mem, st, pg, pa)
    else:
        I.vmptrld(mem, st, pg, pa)


@njit
def vmx_group7(mem, st, tlb, pg, dc, row, rm):
    """0F 01 C1 VMCALL, C2 VMLAUNCH, C3 VMRESUME, C4 VMXOFF (``rm`` = 1..4)."""
    if rm == 1:
        if st[VMX_ON] == 0 or (st[EFLAGS] & FLAG_VM) != 0:
            raise_fault(st, UD, -1)
        elif st[VMX_NONROOT] != 0:
            exit_for_instruction(st, R_VMCALL, 0, -1, 0)
        elif st[CPL] != 0:
            raise_fault(st, GP, 0)
        else:
            I.vmcall_in_root(st)
        return
    if rm == 2 or rm == 3:
        if _checks(st, dc, row, R_VMLAUNCH if rm == 2 else R_VMRESUME):
            return
        if vm_entry(mem, st, tlb, pg, 1 if rm == 2 else 0) == FAILED_AS_EXIT and \
                st[VMX_PYTHON_HOST] != 0:
            st[EXIT_KIND] = EXIT_VMEXIT
        st[ATTN] = 1
        return
    if rm == 4:
        if _checks(st, dc, row, R_VMXOFF):
            return
        I.vmxoff(mem, st, pg)
        return
    raise_fault(st, UD, -1)
