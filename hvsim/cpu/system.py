"""Handlers for system and sensitive instructions (jitted).

These are the instructions the lessons are about. Each handler states the SDM rule
it applies; the privilege checks themselves (descriptor rules, gates, IRET, I/O
permission) live in hvsim/rings. Handlers have the shared signature
``(mem, st, tlb, pg, dc, row)``; EIP already points past the instruction.

``st[VIRTUALIZABLE]`` turns on a hypothetical *virtualizable x86*: the sensitive but
unprivileged instructions (Robin & Irvine, USENIX Security 2000) raise #GP(0) above
ring 0 instead of quietly reading or ignoring privileged state, as Popek and
Goldberg's theorem 1 requires.
"""
import numpy as np

from hvsim._jit import njit
from hvsim.cpu import alu
from hvsim.arch.cr import (CR0_PE, CR0_PG, CR0_WP, CR0_TS, CR0_ET, CR0_MP, CR0_EM, CR4_PAE,
                          CR4_PSE, CR4_PGE, CR4_SUPPORTED, CR4_TSD, CR0_CD, CR0_NW, CR0_NE,
                          CR0_AM, CR4_PVI, CR4_DE)
from hvsim.arch.dr import DR6_BD, DR6_FIXED1, DR6_WRITABLE, DR7_GD, DR7_FIXED1, DR7_WRITABLE
from hvsim.cpu.decode import F_OPC, F_REG, F_RM, F_SIZE, F_IMM, F_IMM2, F_SEG, F_DISP
from hvsim.cpu.devices import port_in, port_out
from hvsim.arch.exits import EXIT_IO
from hvsim.arch.flags import (IF, IOPL_MASK, IOPL_SHIFT, POPF_WRITABLE, RF, VM, FIXED1, VIF, VIP,
                              OF as FLAG_OF)
from hvsim.arch.layout import (
    MASK32, EAX, ECX, EDX, EBX, ESP, EIP, EFLAGS, CR0, CR2, CR3, CR4, CPL, TSC, FAULT_PENDING,
    SEG_SEL, SEG_BASE, SREG_SS, SREG_CS, GDTR_BASE, GDTR_LIMIT, IDTR_BASE, IDTR_LIMIT, LDTR_SEL, TR_SEL,
    HALTED, INT_SHADOW, BLOCKING_BY_STI, BLOCKING_BY_MOV_SS, ATTN, VIRTUALIZABLE, COUNTERS,
    INSN_EIP, INSN_LEN, DR0, DR6, DR7,
    EXIT_KIND, EXIT_PORT, EXIT_SIZE, EXIT_DIR, EXIT_VALUE, EXIT_EIP, EXIT_LEN, EXIT_CPL,
    MSR_SYSENTER_CS_SLOT, MSR_SYSENTER_ESP_SLOT, MSR_SYSENTER_EIP_SLOT, MSR_EFER_SLOT,
    MSR_FEATURE_CONTROL_SLOT, FETCH_LIN_PAGE, TIMER_NEXT, ROUTE, ROUTE_HOST, EXIT_SOURCE,
)
from hvsim.arch.counters import C_IO_IN, C_IO_OUT, C_IO_EXIT, C_HLT, C_CR3_WRITE, C_SWINT
from hvsim.arch.fault import raise_fault
from hvsim.cpu.operands import (get_reg, set_reg, ea, rm_read, rm_write, mem_read, mem_write,
                                push, pop, to_lin, push_word)
from hvsim.cpu.execute import jump
from hvsim.mmu.paging import tlb_flush, tlb_invlpg
from hvsim.rings.segments import load_sreg, update_flat
from hvsim.rings.interrupts import deliver, leaves_guest, EV_SOFTWARE
from hvsim.rings.transfers import far_jmp, far_call, far_ret, iret
from hvsim.rings.sysinsn import lar, lsl, verr, verw, ltr, lldt, io_permitted
from hvsim.arch.vectors import GP, UD, BP, DB, OF as VEC_OF
from hvsim.arch import vmx as VMX
from hvsim.arch.layout import VMX_ON, VMX_NONROOT
from hvsim.arch.vmcs import CAPABILITY_MSRS
from hvsim.cpu.vmxinsn import vmx_group7, instruction_info as vmx_instruction_memory_info
from hvsim.vtx import nonroot as NR

# ---- model-specific registers (SDM Vol. 4, Table 2-2) ---------------------------------
MSR_TSC = 0x10
MSR_FEATURE_CONTROL = 0x3A
MSR_SYSENTER_CS = 0x174
MSR_SYSENTER_ESP = 0x175
MSR_SYSENTER_EIP = 0x176
MSR_EFER = 0xC0000080

# ---- CPUID (SDM Vol. 2A, CPUID, Table 3-8) ---------------------------------------------
# leaf 0: highest leaf and the vendor string "hvsim IA-32 " in EBX, EDX, ECX order
CPUID_MAX_LEAF = 1
CPUID_VENDOR = b"hvsim IA-32 "
CPUID_VENDOR_EBX = int.from_bytes(CPUID_VENDOR[0:4], "little")
CPUID_VENDOR_EDX = int.from_bytes(CPUID_VENDOR[4:8], "little")
CPUID_VENDOR_ECX = int.from_bytes(CPUID_VENDOR[8:12], "little")
# leaf 1 EAX: family 6, model 0x0F, stepping 0 (an IA-32 P6-class part)
CPUID_SIGNATURE = (6 << 8) | (0xF << 4)
# leaf 1 EDX feature flags that this model implements (SDM Table 3-11)
CPUID_EDX_DE = 1 << 2
CPUID_EDX_PSE = 1 << 3
CPUID_EDX_TSC = 1 << 4
CPUID_EDX_MSR = 1 << 5
CPUID_EDX_PGE = 1 << 13
CPUID_EDX_CMOV = 1 << 15
CPUID_FEATURES_EDX = CPUID_EDX_DE | CPUID_EDX_PSE | CPUID_EDX_TSC | CPUID_EDX_MSR | CPUID_EDX_PGE | CPUID_EDX_CMOV
# EDX bit 1 (VME) stays 0 although CR4.PVI works: that flag also promises the virtual-8086
# mode enhancements (CR4.VME), which hvsim refuses (hvsim/arch/cr.py)
CPUID_FEATURES_ECX = VMX.CPUID_ECX_VMX    # VT-x (hvsim/vtx)

_INFO_OPSIZE_32 = 1 << 11     # VM-exit instruction information bit 11: 32-bit operand size

# the VMX capability MSRs 480H-490H (SDM Vol. 3C, Appendix A), read-only; 64-bit values
# (bit 63 may be set) kept as int64 bit patterns
_VMX_MSRS = np.array([CAPABILITY_MSRS[m] for m in range(VMX.MSR_VMX_FIRST, VMX.MSR_VMX_LAST + 1)],
                     np.uint64).view(np.int64)

# CR0 bits software may set (the rest are reserved: #GP(0)); ET is hard-wired to 1.
CR0_WRITABLE = CR0_PE | CR0_MP | CR0_EM | CR0_TS | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_NW | CR0_CD | CR0_PG


@njit
def _priv(st):
    """True (and #GP(0) raised) if the current CPL is not 0: the privileged-instruction rule."""
    if st[CPL] != 0:
        raise_fault(st, GP, 0)
        return True
    return False


@njit
def _sensitive(st):
    """The virtualizable-x86 switch: sensitive instructions trap above ring 0."""
    if st[VIRTUALIZABLE] != 0 and st[CPL] != 0:
        raise_fault(st, GP, 0)
        return True
    return False


@njit
def op_pushf(mem, st, tlb, pg, dc, row):        # 9C PUSHFD: the image has VM and RF cleared
    if _sensitive(st):
        return
    push(mem, st, tlb, pg, st[EFLAGS] & ~(VM | RF) & MASK32)


@njit
def op_popf(mem, st, tlb, pg, dc, row):         # 9D POPFD
    """POPF in protected mode (SDM Vol. 2B, POPF/POPFD, "Operation").

    CPL 0 may change IOPL and IF. CPL > 0 may not change IOPL. CPL > IOPL may not
    change IF either -- and none of this faults: the bits are silently kept. That
    silence is what makes x86 fail Popek and Goldberg's theorem 1.
    """
    if _sensitive(st):
        return
    v = pop(mem, st, tlb, pg)
    if st[FAULT_PENDING] != 0:
        return
    st[ESP] = (st[ESP] + 4) & MASK32
    old = st[EFLAGS]
    cpl = st[CPL]
    writable = POPF_WRITABLE
    if cpl > 0:
        writable &= ~IOPL_MASK
    if cpl > ((old & IOPL_MASK) >> IOPL_SHIFT):
        writable &= ~IF
    st[EFLAGS] = ((old & ~writable) | (v & writable) | FIXED1) & ~RF & MASK32
    update_flat(st)                              # AC may have changed (alignment checking)
    st[ATTN] = 1                                 # IF may have changed


@njit
def _above_iopl(st):
    """CPL > IOPL: CLI, STI and IN/OUT (without a bitmap grant) are then #GP(0)."""
    return st[CPL] > ((st[EFLAGS] & IOPL_MASK) >> IOPL_SHIFT)


@njit
def _pvi(st):
    """Protected-mode virtual interrupts apply: CR4.PVI = 1 and CPL = 3 (SDM Vol. 3A, 20.4).
    Then CLI and STI above IOPL clear and set EFLAGS.VIF instead of raising #GP(0), so
    a deprivileged kernel's interrupt flag can live in VIF, with VIP telling it that an
    interrupt waits (set by a monitor: no instruction sets VIP)."""
    return (st[CR4] & CR4_PVI) != 0 and st[CPL] == 3


@njit
def op_cli(mem, st, tlb, pg, dc, row):          # FA: CLI needs CPL <= IOPL (else #GP(0))
    if _above_iopl(st):
        if _pvi(st):                             # SDM Vol. 2A CLI "Operation": VIF := 0
            st[EFLAGS] &= ~VIF
            return
        raise_fault(st, GP, 0)
        return
    st[EFLAGS] &= ~IF


@njit
def op_sti(mem, st, tlb, pg, dc, row):          # FB: STI; interrupts wait one instruction
    if _above_iopl(st):
        if _pvi(st) and (st[EFLAGS] & VIP) == 0:  # SDM Vol. 2B STI "Operation": VIF := 1;
            st[EFLAGS] |= VIF                    # with VIP = 1, #GP(0) lets the monitor deliver
            return
        raise_fault(st, GP, 0)
        return
    if (st[EFLAGS] & IF) == 0:
        st[INT_SHADOW] = BLOCKING_BY_STI         # SDM 6.8.3: blocked until after the next instruction
    st[EFLAGS] |= IF
    st[ATTN] = 1


@njit
def op_hlt(mem, st, tlb, pg, dc, row):          # F4: privileged
    if _priv(st):
        return
    if st[VMX_NONROOT] != 0 and NR.primary(st, VMX.CPU_HLT_EXITING):
        NR.exit_for_instruction(st, NR.HLT, 0, -1, 0)
        return
    st[HALTED] = 1
    st[COUNTERS + C_HLT] += 1
    st[ATTN] = 1


@njit
def _io_exit(st, port, size, direction, value):
    st[EXIT_KIND] = EXIT_IO
    st[ATTN] = 1
    st[EXIT_PORT] = port
    st[EXIT_SIZE] = size
    st[EXIT_DIR] = direction
    st[EXIT_VALUE] = value
    st[EXIT_EIP] = st[INSN_EIP]
    st[EXIT_LEN] = st[INSN_LEN]
    st[EXIT_CPL] = st[CPL]
    st[COUNTERS + C_IO_EXIT] += 1
    st[ATTN] = 1


@njit
def _io_denied(mem, st, tlb, pg, port, size):
    """IN/OUT protection (SDM Vol. 1, 19.5): allowed at CPL <= IOPL, else only where the TSS
    I/O permission bitmap clears every bit of the port range; otherwise #GP(0) is raised."""
    if not _above_iopl(st):
        return False
    if io_permitted(mem, st, tlb, pg, port, size) == 0:
        if st[FAULT_PENDING] == 0:
            raise_fault(st, GP, 0)
        return True
    return False


@njit
def op_in(mem, st, tlb, pg, dc, row):           # E4 E5 (port imm8), EC ED (port DX); 66: AX
    size = dc[F_SIZE, row]
    port = dc[F_IMM, row] if dc[F_OPC, row] <= 0xE5 else st[EDX] & 0xFFFF
    if _io_denied(mem, st, tlb, pg, port, size):
        return
    if st[VMX_NONROOT] != 0 and NR.io_exits(mem, st, port, size):
        NR.exit_for_instruction(st, NR.IO_INSTRUCTION,
                                NR.io_qualification(port, size, 1, 1 if dc[F_OPC, row] <= 0xE5 else 0),
                                -1, 0)
        return
    st[COUNTERS + C_IO_IN] += 1
    value = port_in(st, port, size)
    if value < 0:
        # no device: the bus floats high (all ones) unless the host handler answers
        set_reg(st, EAX, size, MASK32)
        _io_exit(st, port, size, 1, 0)
    else:
        set_reg(st, EAX, size, value)


@njit
def op_out(mem, st, tlb, pg, dc, row):          # E6 E7 (port imm8), EE EF (port DX); 66: AX
    size = dc[F_SIZE, row]
    port = dc[F_IMM, row] if dc[F_OPC, row] <= 0xE7 else st[EDX] & 0xFFFF
    if _io_denied(mem, st, tlb, pg, port, size):
        return
    if st[VMX_NONROOT] != 0 and NR.io_exits(mem, st, port, size):
        NR.exit_for_instruction(st, NR.IO_INSTRUCTION,
                                NR.io_qualification(port, size, 0, 1 if dc[F_OPC, row] <= 0xE7 else 0),
                                -1, 0)
        return
    st[COUNTERS + C_IO_OUT] += 1
    value = get_reg(st, EAX, size)
    if port_out(st, port, size, value) == 0:
        _io_exit(st, port, size, 0, value)


@njit
def _soft_int(mem, st, tlb, pg, vector, exception):
    """INT n / INT3 / INTO: through the guest IDT, or -- if the vector is routed to the
    host -- an 'exception' exit of source 'software' with EIP left on the instruction.
    In VMX non-root operation INT n never exits; INT3 and INTO (``exception``: software
    exceptions) exit when their vector's bit is set in the exception bitmap, with
    interruption type 6 and the instruction's length (SDM Vol. 3C, 25.6.3, 28.2.2)."""
    st[COUNTERS + C_SWINT] += 1
    if st[VMX_NONROOT] != 0:
        if exception != 0 and leaves_guest(st, vector, -1):
            NR.exit_for_event(st, NR.EXCEPTION_NMI, VMX.INTR_INFO_VALID | vector | (
                VMX.INTR_TYPE_SOFTWARE_EXCEPTION << VMX.INTR_INFO_TYPE_SHIFT), -1)
            return
    elif st[ROUTE + vector] == ROUTE_HOST:
        st[EXIT_SOURCE] = 2
        raise_fault(st, vector, -1)
        return
    deliver(mem, st, tlb, pg, vector, -1, EV_SOFTWARE)
    st[ATTN] = 1


@njit
def op_int(mem, st, tlb, pg, dc, row):          # CD ib: INT n (trap: pushes the next EIP)
    _soft_int(mem, st, tlb, pg, dc[F_IMM, row], 0)


@njit
def op_int3(mem, st, tlb, pg, dc, row):         # CC: INT3, vector 3 with the INT n DPL check
    _soft_int(mem, st, tlb, pg, BP, 1)


@njit
def op_into(mem, st, tlb, pg, dc, row):         # CE: INTO, #OF (vector 4) as a trap if OF = 1
    # SDM Vol. 2A INT n/INTO/INT3/INT1: with OF = 0 nothing happens; with OF = 1 it is a
    # software interrupt 4, with INT n's gate-DPL check, pushing the next EIP
    if (st[EFLAGS] & FLAG_OF) != 0:
        _soft_int(mem, st, tlb, pg, VEC_OF, 1)


@njit
def op_iret(mem, st, tlb, pg, dc, row):         # CF: IRETD
    # IRET loads EFLAGS by POPF's rule (IF kept when CPL > IOPL, IOPL kept when CPL > 0,
    # SDM Vol. 2A IRET "Operation"), so the virtualizable switch makes it trap as POPF does
    if _sensitive(st):
        return
    iret(mem, st, tlb, pg)
    st[ATTN] = 1


@njit
def op_callf(mem, st, tlb, pg, dc, row):        # 9A ptr16:32
    far_call(mem, st, tlb, pg, dc[F_IMM2, row], dc[F_IMM, row])
    st[ATTN] = 1


@njit
def op_jmpf(mem, st, tlb, pg, dc, row):         # EA ptr16:32
    far_jmp(mem, st, tlb, pg, dc[F_IMM2, row], dc[F_IMM, row])
    st[ATTN] = 1


@njit
def op_retf(mem, st, tlb, pg, dc, row):         # CB, CA iw
    far_ret(mem, st, tlb, pg, dc[F_IMM, row])
    st[ATTN] = 1


@njit
def op_grp5(mem, st, tlb, pg, dc, row):         # FF: INC DEC CALL CALLF JMP JMPF PUSH
    d = dc[F_REG, row]
    if d == 7 or ((d == 3 or d == 5) and dc[F_RM, row] >= 0):
        raise_fault(st, UD, -1)                  # /7 undefined; far forms need m16:32
        return
    if d == 3 or d == 5:
        off = ea(st, dc, row)
        seg = dc[F_SEG, row]
        target = mem_read(mem, st, tlb, pg, seg, off, 4)
        if st[FAULT_PENDING] != 0:
            return
        sel = mem_read(mem, st, tlb, pg, seg, (off + 4) & MASK32, 2)
        if st[FAULT_PENDING] != 0:
            return
        if d == 3:
            far_call(mem, st, tlb, pg, sel, target)
        else:
            far_jmp(mem, st, tlb, pg, sel, target)
        st[ATTN] = 1
        return
    size = dc[F_SIZE, row]                       # 2 after 66h: only /0 /1 /6 decode so
    v = rm_read(mem, st, tlb, pg, dc, row, size)
    if st[FAULT_PENDING] != 0:
        return
    if d == 0 or d == 1:
        saved = st[EFLAGS]
        r = alu.inc(st, v, size) if d == 0 else alu.dec(st, v, size)
        rm_write(mem, st, tlb, pg, dc, row, size, r)
        if st[FAULT_PENDING] != 0:
            st[EFLAGS] = saved
    elif d == 2:
        ret = st[EIP]
        jump(st, v)
        if st[FAULT_PENDING] != 0:
            return
        push(mem, st, tlb, pg, ret)
        if st[FAULT_PENDING] != 0:
            st[EIP] = ret
    elif d == 4:
        jump(st, v)
    elif size == 4:
        push(mem, st, tlb, pg, v)
    else:
        push_word(mem, st, tlb, pg, v)


@njit
def op_mov_from_sreg(mem, st, tlb, pg, dc, row):  # 8C: MOV r/m16, Sreg (r32: zero-extended)
    s = dc[F_REG, row]
    if s > 5:
        raise_fault(st, UD, -1)
        return
    if _sensitive(st):
        return
    sel = st[SEG_SEL + s]
    if dc[F_RM, row] >= 0:
        st[dc[F_RM, row]] = sel                  # P6 and later zero the upper 16 bits
    else:
        rm_write(mem, st, tlb, pg, dc, row, 2, sel)


@njit
def op_mov_to_sreg(mem, st, tlb, pg, dc, row):    # 8E: MOV Sreg, r/m16 (not CS)
    s = dc[F_REG, row]
    if s > 5 or s == SREG_CS:
        raise_fault(st, UD, -1)
        return
    sel = rm_read(mem, st, tlb, pg, dc, row, 2)
    if st[FAULT_PENDING] != 0:
        return
    load_sreg(mem, st, tlb, pg, s, sel)
    if st[FAULT_PENDING] == 0 and s == SREG_SS:
        st[INT_SHADOW] = BLOCKING_BY_MOV_SS      # SDM 6.8.3: interrupts and #DB wait one insn
    st[ATTN] = 1


@njit
def _sreg_of(opc):
    """Segment register of PUSH/POP Sreg opcodes: 06/07 ES, 0E CS, 16/17 SS, 1E/1F DS, 0F A0/A1 FS, 0F A8/A9 GS."""
    if opc == 0x06 or opc == 0x07:
        return 0
    if opc == 0x0E:
        return 1
    if opc == 0x16 or opc == 0x17:
        return 2
    if opc == 0x1E or opc == 0x1F:
        return 3
    if opc == 0x1A0 or opc == 0x1A1:
        return 4
    return 5


@njit
def op_push_sreg(mem, st, tlb, pg, dc, row):    # pushes the selector zero-extended to 32 bits
    if _sensitive(st):
        return
    push(mem, st, tlb, pg, st[SEG_SEL + _sreg_of(dc[F_OPC, row])])


@njit
def op_pop_sreg(mem, st, tlb, pg, dc, row):
    s = _sreg_of(dc[F_OPC, row])
    v = pop(mem, st, tlb, pg)
    if st[FAULT_PENDING] != 0:
        return
    load_sreg(mem, st, tlb, pg, s, v & 0xFFFF)
    if st[FAULT_PENDING] != 0:
        return
    st[ESP] = (st[ESP] + 4) & MASK32
    if s == SREG_SS:
        st[INT_SHADOW] = BLOCKING_BY_MOV_SS
    st[ATTN] = 1


@njit
def _ldtr_tr_exit(st, dc, row):
    """Descriptor-table exiting for SLDT/STR/LLDT/LTR (SDM Vol. 3C, 26.1.3): exit 47,
    the qualification the memory operand's displacement, the instruction information
    with bits 29:28 = 0 SLDT, 1 STR, 2 LLDT, 3 LTR (ModRM.reg). True if it exited."""
    if st[VMX_NONROOT] == 0 or not NR.secondary(st, VMX.SEC_DESCRIPTOR_TABLE_EXITING):
        return False
    NR.exit_for_instruction(st, NR.LDTR_TR_ACCESS,
                            dc[F_DISP, row] if dc[F_RM, row] < 0 else 0, -1,
                            vmx_instruction_memory_info(dc, row))
    return True


@njit
def op_grp6(mem, st, tlb, pg, dc, row):         # 0F 00: SLDT STR LLDT LTR VERR VERW
    d = dc[F_REG, row]
    if d == 0 or d == 1:                          # SLDT, STR: unprivileged, sensitive
        if _sensitive(st) or _ldtr_tr_exit(st, dc, row):
            return
        sel = st[LDTR_SEL] if d == 0 else st[TR_SEL]
        if dc[F_RM, row] >= 0:
            st[dc[F_RM, row]] = sel
        else:
            rm_write(mem, st, tlb, pg, dc, row, 2, sel)
        return
    if d > 5:
        raise_fault(st, UD, -1)
        return
    if (d == 2 or d == 3) and st[CPL] == 0 and _ldtr_tr_exit(st, dc, row):
        return                                    # (at CPL > 0, #GP(0) comes first)
    sel = rm_read(mem, st, tlb, pg, dc, row, 2)
    if st[FAULT_PENDING] != 0:
        return
    if d == 2 or d == 3:                          # LLDT, LTR: privileged
        if _priv(st):
            return
        if d == 2:
            lldt(mem, st, tlb, pg, sel)
        else:
            ltr(mem, st, tlb, pg, sel)
        return
    if _sensitive(st):
        return
    if d == 4:
        verr(mem, st, tlb, pg, sel)
    else:
        verw(mem, st, tlb, pg, sel)


@njit
def _write_cr0(mem, st, tlb, value):
    """MOV to CR0 / LMSW (SDM Vol. 3A, 2.5 and MOV CRn): reserved bits and PG without PE are #GP(0)."""
    if (value & ~CR0_WRITABLE & MASK32) != 0 or ((value & CR0_PG) != 0 and (value & CR0_PE) == 0):
        raise_fault(st, GP, 0)
        return
    if (value & CR0_NW) != 0 and (value & CR0_CD) == 0:
        raise_fault(st, GP, 0)
        return
    if st[VMX_ON] != 0 and (value & VMX.CR0_FIXED0) != VMX.CR0_FIXED0:
        raise_fault(st, GP, 0)                   # SDM Vol. 3C, 24.8: fixed in VMX operation
        return
    value |= CR0_ET
    old = st[CR0]
    st[CR0] = value
    if ((old ^ value) & (CR0_PG | CR0_WP | CR0_PE)) != 0:
        tlb_flush(st, tlb, 0)
    update_flat(st)                              # AM may have changed (alignment checking)
    st[FETCH_LIN_PAGE] = -1
    st[ATTN] = 1


@njit
def _lmsw(mem, st, tlb, src, linear):
    """LMSW (SDM Vol. 2A LMSW): loads PE MP EM TS, cannot clear PE. In non-root
    operation it exits when a host-owned bit among PE MP EM TS would differ from the
    read shadow (with PE: only a 0 -> 1 change), and leaves host-owned bits alone
    otherwise (SDM Vol. 3C, 26.1.3 and 26.3). ``linear``: the memory operand's linear
    address (the exit's guest-linear address), -1 for the register form."""
    cr0 = st[CR0]
    if st[VMX_NONROOT] != 0:
        mask, shadow = NR.cr_mask_shadow(st, 0)
        owned = mask & 0xF
        if ((src ^ shadow) & owned & 0xE) != 0 or \
                ((owned & CR0_PE) != 0 and (shadow & CR0_PE) == 0 and (src & CR0_PE) != 0):
            # Table 28-3: bits 11:8 (the GPR) are 0 for LMSW; the source in 31:16
            qual = NR.cr_qualification(0, VMX.CR_ACCESS_LMSW, 0) | \
                ((src & 0xFFFF) << VMX.CR_QUAL_LMSW_SOURCE_SHIFT)
            if linear >= 0:
                qual |= VMX.CR_QUAL_LMSW_MEMORY
            NR.exit_for_instruction(st, NR.CR_ACCESS, qual, linear, 0)
            return
        src = (src & ~owned) | (cr0 & owned)
    _write_cr0(mem, st, tlb, (cr0 & ~0xE) | (src & 0xF) | (cr0 & CR0_PE))


@njit
def op_grp7(mem, st, tlb, pg, dc, row):         # 0F 01: SGDT SIDT LGDT LIDT SMSW LMSW INVLPG (+VMX)
    d = dc[F_REG, row]
    rm = dc[F_RM, row]
    if rm >= 0:
        # register forms: 0F 01 C1 VMCALL, C2 VMLAUNCH, C3 VMRESUME, C4 VMXOFF (d=0); SMSW r; LMSW r
        if d == 4:
            if _sensitive(st):
                return
            v = st[CR0]                          # SMSW r32: P6 and later store all of CR0
            if st[VMX_NONROOT] != 0:
                v = NR.cr_read(st, 0, v)         # host-owned bits from the read shadow
            st[rm] = v
            return
        if d == 6:
            if _priv(st):
                return
            _lmsw(mem, st, tlb, st[rm] & 0xFFFF, -1)
            return
        if d == 0:                               # C1-C4: VMCALL VMLAUNCH VMRESUME VMXOFF
            vmx_group7(mem, st, tlb, pg, dc, row, rm)
            return
        raise_fault(st, UD, -1)
        return
    off = ea(st, dc, row)
    seg = dc[F_SEG, row]
    if d <= 3 and st[VMX_NONROOT] != 0 and NR.secondary(st, VMX.SEC_DESCRIPTOR_TABLE_EXITING) \
            and (d <= 1 or st[CPL] == 0):         # LGDT/LIDT at CPL > 0: #GP(0) first
        # instruction information (28.2.5): bit 11 operand size (1: 32-bit), bits 29:28 =
        # 0 SGDT, 1 SIDT, 2 LGDT, 3 LIDT (ModRM.reg, which instruction_info puts there)
        NR.exit_for_instruction(st, NR.GDTR_IDTR_ACCESS, dc[F_DISP, row], -1,
                                vmx_instruction_memory_info(dc, row) | _INFO_OPSIZE_32)
        return
    if d == 0 or d == 1:                          # SGDT / SIDT: store limit16, base32
        if _sensitive(st):
            return
        lim = st[GDTR_LIMIT] if d == 0 else st[IDTR_LIMIT]
        base = st[GDTR_BASE] if d == 0 else st[IDTR_BASE]
        mem_write(mem, st, tlb, pg, seg, off, 2, lim)
        if st[FAULT_PENDING] != 0:
            return
        mem_write(mem, st, tlb, pg, seg, (off + 2) & MASK32, 4, base)
    elif d == 2 or d == 3:                        # LGDT / LIDT: privileged
        if _priv(st):
            return
        lim = mem_read(mem, st, tlb, pg, seg, off, 2)
        if st[FAULT_PENDING] != 0:
            return
        base = mem_read(mem, st, tlb, pg, seg, (off + 2) & MASK32, 4)
        if st[FAULT_PENDING] != 0:
            return
        if d == 2:
            st[GDTR_LIMIT] = lim
            st[GDTR_BASE] = base
        else:
            st[IDTR_LIMIT] = lim
            st[IDTR_BASE] = base
    elif d == 4:                                  # SMSW m16
        if _sensitive(st):
            return
        v = st[CR0]
        if st[VMX_NONROOT] != 0:
            v = NR.cr_read(st, 0, v)
        mem_write(mem, st, tlb, pg, seg, off, 2, v & 0xFFFF)
    elif d == 6:                                  # LMSW m16
        if _priv(st):
            return
        v = mem_read(mem, st, tlb, pg, seg, off, 2)
        if st[FAULT_PENDING] != 0:
            return
        _lmsw(mem, st, tlb, v, (st[SEG_BASE + seg] + off) & MASK32)
    elif d == 7:                                  # INVLPG m
        if _priv(st):
            return
        lin = to_lin(st, seg, off, 1, 0)
        if st[FAULT_PENDING] != 0:
            return
        if st[VMX_NONROOT] != 0 and NR.primary(st, VMX.CPU_INVLPG_EXITING):
            NR.exit_for_instruction(st, NR.INVLPG, lin, lin, 0)
            return
        tlb_invlpg(st, tlb, lin)
    else:
        raise_fault(st, UD, -1)


@njit
def op_lar_lsl(mem, st, tlb, pg, dc, row):      # 0F 02 LAR r32, r/m16 ; 0F 03 LSL r32, r/m16
    if _sensitive(st):
        return
    sel = rm_read(mem, st, tlb, pg, dc, row, 2)
    if st[FAULT_PENDING] != 0:
        return
    if dc[F_OPC, row] == 0x102:
        v = lar(mem, st, tlb, pg, sel)
    else:
        v = lsl(mem, st, tlb, pg, sel)
    if st[FAULT_PENDING] == 0 and v >= 0:      # v < 0: ZF cleared, destination unchanged
        st[dc[F_REG, row]] = v


@njit
def op_clts(mem, st, tlb, pg, dc, row):         # 0F 06: privileged
    if _priv(st):
        return
    if st[VMX_NONROOT] != 0:
        # SDM Vol. 3C 26.1.3: exits if TS is set in both the CR0 mask and read shadow;
        # with TS owned and the shadow's TS clear, CR0.TS is left alone (26.3)
        mask, shadow = NR.cr_mask_shadow(st, 0)
        if (mask & CR0_TS) != 0:
            if (shadow & CR0_TS) != 0:
                NR.exit_for_instruction(st, NR.CR_ACCESS,
                                        NR.cr_qualification(0, VMX.CR_ACCESS_CLTS, 0), -1, 0)
            return
    st[CR0] &= ~CR0_TS


@njit
def op_mov_cr(mem, st, tlb, pg, dc, row):       # 0F 20 (MOV r32, CRn), 0F 22 (MOV CRn, r32)
    if _priv(st):
        return
    n = dc[F_REG, row]
    r = dc[F_RM, row]
    if n == 1 or n > 4:
        raise_fault(st, UD, -1)
        return
    if dc[F_OPC, row] == 0x120:
        v = st[CR0] if n == 0 else st[CR0 + n - 1]     # CR2, CR3, CR4 follow CR0
        if st[VMX_NONROOT] != 0:
            if n == 3 and NR.primary(st, VMX.CPU_CR3_STORE_EXITING):
                NR.exit_for_instruction(st, NR.CR_ACCESS, NR.cr_qualification(
                    3, VMX.CR_ACCESS_MOV_FROM_CR, r), -1, 0)
                return
            if n == 0 or n == 4:
                v = NR.cr_read(st, n, v)
        st[r] = v
        return
    v = st[r]
    if st[VMX_NONROOT] != 0:
        if NR.cr_write_exits(st, n, v):
            NR.exit_for_instruction(st, NR.CR_ACCESS, NR.cr_qualification(
                n, VMX.CR_ACCESS_MOV_TO_CR, r), -1, 0)
            return
        if n == 0 or n == 4:
            # no exit: the bits the host owns keep their real values (SDM Vol. 3C, 26.3)
            v = NR.cr_write_value(st, n, v, st[CR0] if n == 0 else st[CR4])
    if n == 0:
        _write_cr0(mem, st, tlb, v)
    elif n == 2:
        st[CR2] = v
    elif n == 3:
        st[CR3] = v
        st[COUNTERS + C_CR3_WRITE] += 1
        # SDM Vol. 3A, 4.10.4.1: MOV to CR3 flushes all non-global entries
        tlb_flush(st, tlb, 1 if (st[CR4] & CR4_PGE) != 0 else 0)
    else:
        if (v & ~CR4_SUPPORTED & MASK32) != 0 or (v & CR4_PAE) != 0:
            raise_fault(st, GP, 0)
            return
        if st[VMX_ON] != 0 and (v & VMX.CR4_FIXED0) != VMX.CR4_FIXED0:
            raise_fault(st, GP, 0)          # CR4.VMXE cannot be cleared in VMX operation
            return
        old = st[CR4]
        st[CR4] = v
        if ((old ^ v) & (CR4_PSE | CR4_PGE)) != 0:
            tlb_flush(st, tlb, 0)
    st[FETCH_LIN_PAGE] = -1


@njit
def op_mov_dr(mem, st, tlb, pg, dc, row):       # 0F 21 (MOV r32, DRn), 0F 23 (MOV DRn, r32)
    """MOV to/from a debug register (SDM Vol. 2B, MOV--Move to/from Debug Registers).

    #GP(0) at CPL > 0; #DB (a fault, DR6.BD set) when DR7.GD is set -- the processor
    clears GD as it enters the #DB handler (Vol. 3A, 17.2.4), cleared here as the fault
    is raised; DR4/DR5 are #UD with CR4.DE = 1 and alias DR6/DR7 otherwise (17.2.2).
    Checked in Bochs' order: privilege, general detect, DR4/DR5. The mod bits are
    ignored (treated as 11b). DR6/DR7 keep their reserved bits fixed (hvsim/arch/dr.py).
    Breakpoints are not modelled: DR0-DR3 and DR7's enables are only stored and read
    back, and no instruction, data or I/O breakpoint ever fires.
    """
    if _priv(st):
        return
    if st[VMX_NONROOT] != 0 and NR.primary(st, VMX.CPU_MOV_DR_EXITING):
        # Table 28-4: 2:0 DR number, bit 4 = MOV from DR, 11:8 the general register
        qual = dc[F_REG, row] | (dc[F_RM, row] << VMX.DR_QUAL_GPR_SHIFT)
        if dc[F_OPC, row] == 0x121:
            qual |= VMX.DR_QUAL_FROM_DR
        NR.exit_for_instruction(st, NR.DR_ACCESS, qual, -1, 0)
        return
    if (st[DR7] & DR7_GD) != 0:
        st[DR6] |= DR6_BD
        st[DR7] &= ~DR7_GD
        raise_fault(st, DB, -1)
        return
    n = dc[F_REG, row]
    if n == 4 or n == 5:
        if (st[CR4] & CR4_DE) != 0:
            raise_fault(st, UD, -1)
            return
        n += 2
    r = dc[F_RM, row]
    if dc[F_OPC, row] == 0x121:
        st[r] = st[DR0 + n]
        return
    v = st[r]
    if n == 6:
        v = (v & DR6_WRITABLE) | DR6_FIXED1
    elif n == 7:
        v = (v & DR7_WRITABLE) | DR7_FIXED1
    st[DR0 + n] = v


@njit
def op_invd_wbinvd(mem, st, tlb, pg, dc, row):  # 0F 08 INVD, 0F 09 WBINVD: privileged
    # SDM Vol. 2A INVD, Vol. 2C WBINVD: #GP(0) at CPL > 0. hvsim models no caches (every
    # access reaches the one memory array), so at CPL 0 there is nothing to invalidate or
    # write back: both retire as no-ops. Under VT-x INVD always exits, WBINVD when
    # "WBINVD exiting" is set (SDM Vol. 3C, 26.1.2 and 26.1.3).
    if _priv(st):
        return
    if st[VMX_NONROOT] != 0:
        if dc[F_OPC, row] == 0x108:
            NR.exit_for_instruction(st, NR.INVD, 0, -1, 0)
        elif NR.secondary(st, VMX.SEC_WBINVD_EXITING):
            NR.exit_for_instruction(st, NR.WBINVD, 0, -1, 0)


@njit
def _msr_slot(ecx):
    if ecx == MSR_SYSENTER_CS:
        return MSR_SYSENTER_CS_SLOT
    if ecx == MSR_SYSENTER_ESP:
        return MSR_SYSENTER_ESP_SLOT
    if ecx == MSR_SYSENTER_EIP:
        return MSR_SYSENTER_EIP_SLOT
    if ecx == MSR_EFER:
        return MSR_EFER_SLOT
    if ecx == MSR_FEATURE_CONTROL:
        return MSR_FEATURE_CONTROL_SLOT
    if ecx == MSR_TSC:
        return TSC
    return -1


@njit
def op_rdmsr(mem, st, tlb, pg, dc, row):        # 0F 32: privileged; unknown MSR -> #GP(0)
    if _priv(st):
        return
    if st[VMX_NONROOT] != 0 and NR.msr_exits(mem, st, st[ECX], 0):
        NR.exit_for_instruction(st, NR.RDMSR, 0, -1, 0)
        return
    msr = st[ECX]
    if VMX.MSR_VMX_FIRST <= msr <= VMX.MSR_VMX_LAST:
        v = _VMX_MSRS[msr - VMX.MSR_VMX_FIRST]
        st[EAX] = v & MASK32
        st[EDX] = (v >> 32) & MASK32
        return
    s = _msr_slot(st[ECX])
    if s < 0:
        raise_fault(st, GP, 0)
        return
    v = st[s]
    st[EAX] = v & MASK32
    st[EDX] = (v >> 32) & MASK32


@njit
def op_wrmsr(mem, st, tlb, pg, dc, row):        # 0F 30
    if _priv(st):
        return
    if st[VMX_NONROOT] != 0 and NR.msr_exits(mem, st, st[ECX], 1):
        NR.exit_for_instruction(st, NR.WRMSR, 0, -1, 0)
        return
    s = _msr_slot(st[ECX])
    if s < 0:
        raise_fault(st, GP, 0)
        return
    v = st[EAX] | (st[EDX] << 32)
    if s == TSC:
        # writing the TSC moves the timer deadline with it, so timer periods stay intact
        st[TIMER_NEXT] += v - st[TSC]
        st[TSC] = v
    elif s == MSR_SYSENTER_CS_SLOT or s == MSR_SYSENTER_ESP_SLOT or s == MSR_SYSENTER_EIP_SLOT:
        st[s] = v & MASK32
    elif s == MSR_FEATURE_CONTROL_SLOT:
        # SDM Vol. 3C, 24.7: once the lock bit is set, WRMSR to it is #GP(0) until reset
        if (st[s] & VMX.FEATURE_CONTROL_LOCK) != 0:
            raise_fault(st, GP, 0)
            return
        st[s] = v & (VMX.FEATURE_CONTROL_LOCK | VMX.FEATURE_CONTROL_VMX_INSIDE_SMX
                     | VMX.FEATURE_CONTROL_VMX_OUTSIDE_SMX)
    else:
        st[s] = v


@njit
def op_rdtsc(mem, st, tlb, pg, dc, row):        # 0F 31: #GP(0) if CR4.TSD and CPL > 0
    if (st[CR4] & CR4_TSD) != 0 and st[CPL] != 0:
        raise_fault(st, GP, 0)
        return
    if st[VMX_NONROOT] != 0 and NR.primary(st, VMX.CPU_RDTSC_EXITING):
        NR.exit_for_instruction(st, NR.RDTSC, 0, -1, 0)
        return
    st[EAX] = st[TSC] & MASK32
    st[EDX] = (st[TSC] >> 32) & MASK32


@njit
def op_cpuid(mem, st, tlb, pg, dc, row):        # 0F A2
    if st[VMX_NONROOT] != 0:                     # CPUID always exits (SDM Vol. 3C, 26.1.2)
        NR.exit_for_instruction(st, NR.CPUID, 0, -1, 0)
        return
    leaf = st[EAX]
    if leaf == 0:
        st[EAX] = CPUID_MAX_LEAF
        st[EBX] = CPUID_VENDOR_EBX
        st[EDX] = CPUID_VENDOR_EDX
        st[ECX] = CPUID_VENDOR_ECX
    else:
        # leaf 1; SDM: a leaf above the maximum returns the data of the highest basic leaf
        st[EAX] = CPUID_SIGNATURE
        st[EBX] = 0
        st[ECX] = CPUID_FEATURES_ECX
        st[EDX] = CPUID_FEATURES_EDX


@njit
def op_ud(mem, st, tlb, pg, dc, row):           # anything outside the subset, UD2
    raise_fault(st, UD, -1)
