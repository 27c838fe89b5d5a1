"""VMX non-root operation: which instructions exit, and what the guest reads instead
(jitted). The CPU's handlers (hvsim/cpu/system.py, hvsim/cpu/vmxinsn.py) ask these
after their #UD and privilege checks -- "certain exceptions have priority over VM exits
... faults based on privilege level" (SDM Vol. 3C, 26.1.1): RDMSR at CPL 3 is #GP(0),
not an exit -- and before the instruction changes anything.

The rules are SDM Vol. 3C 26.1.2 and 26.1.3 and the controls of 25.6:

* CPUID, INVD, VMCALL and every VMX instruction exit unconditionally;
* HLT, INVLPG, RDTSC, MOV DR exit when their primary control is set; WBINVD and the
  descriptor-table instructions by their secondary control;
* IN/OUT: "unconditional I/O exiting", or the I/O bitmaps (A: ports 0000-7FFF, B:
  8000-FFFF; an access exits if the bit of any port it touches is set; wrapping past
  FFFF exits) -- with "use I/O bitmaps" set, the unconditional control is ignored;
* RDMSR/WRMSR: always, unless "use MSR bitmaps" and the MSR's bit is clear (MSRs
  00000000-00001FFF and C0000000-C0001FFF; others always exit);
* MOV to CR0/CR4 (and CLTS, LMSW): when a bit owned by the host (set in the guest/host
  mask) would get a value other than the read shadow's; reads of owned bits (MOV from
  CR0/CR4, SMSW) return the read shadow, without an exit (26.3);
* MOV to CR3: "CR3-load exiting" unless the value is one of the first CR3_TARGET_COUNT
  CR3-target values; MOV from CR3: "CR3-store exiting".
"""
import numpy as np

from hvsim._jit import njit
from hvsim.arch import vmcs as V
from hvsim.arch import vmx as X
from hvsim.arch.fault import raise_vmexit
from hvsim.arch.layout import CFG_MEM_SIZE, MASK32

_ER = X.ExitReason


_f = V.state_index


CPU, SEC = _f("CPU_BASED_VM_EXEC_CONTROL"), _f("SECONDARY_VM_EXEC_CONTROL")
IO_BITMAP_A, IO_BITMAP_B, MSR_BITMAP = _f("IO_BITMAP_A"), _f("IO_BITMAP_B"), _f("MSR_BITMAP")
CR0_MASK, CR4_MASK = _f("CR0_GUEST_HOST_MASK"), _f("CR4_GUEST_HOST_MASK")
CR0_SHADOW, CR4_SHADOW = _f("CR0_READ_SHADOW"), _f("CR4_READ_SHADOW")
CR3_TARGET_COUNT, CR3_TARGET0 = _f("CR3_TARGET_COUNT"), _f("CR3_TARGET_VALUE0")
GUEST_LINEAR_ADDRESS = _f("GUEST_LINEAR_ADDRESS")
VMX_INSTRUCTION_INFO = _f("VMX_INSTRUCTION_INFO")
EXIT_INTR_INFO, EXIT_INTR_ERROR = _f("VM_EXIT_INTR_INFO"), _f("VM_EXIT_INTR_ERROR_CODE")
GUEST_PHYSICAL_ADDRESS = _f("GUEST_PHYSICAL_ADDRESS")
assert all(V.slot(f"CR3_TARGET_VALUE{i}") == V.slot("CR3_TARGET_VALUE0") + i for i in range(4))


@njit
def primary(st, bit):
    return (st[CPU] & bit) != 0


@njit
def secondary(st, bit):
    return (st[CPU] & X.CPU_ACTIVATE_SECONDARY_CONTROLS) != 0 and (st[SEC] & bit) != 0


@njit
def _bit_set(mem, st, base, bit):
    pa = base + (bit >> 3)
    if pa < 0 or pa >= st[CFG_MEM_SIZE]:
        return True                  # (the entry checks keep bitmaps inside memory)
    return ((np.int64(mem[pa]) >> (bit & 7)) & 1) != 0


@njit
def io_exits(mem, st, port, size):
    """Whether IN/OUT of ``size`` bytes at ``port`` exits (26.1.3, 25.6.4)."""
    if primary(st, X.CPU_USE_IO_BITMAPS):
        for i in range(size):
            p = port + i
            if p > 0xFFFF:
                return True
            base = st[IO_BITMAP_A] if p < 0x8000 else st[IO_BITMAP_B]
            if _bit_set(mem, st, base, p & 0x7FFF):
                return True
        return False
    return primary(st, X.CPU_UNCONDITIONAL_IO_EXITING)


@njit
def io_qualification(port, size, is_in, immediate):
    """Exit qualification of an I/O exit (Table 28-5)."""
    q = (size - 1) | (port << X.IO_QUAL_PORT_SHIFT)
    if is_in != 0:
        q |= X.IO_QUAL_IN
    if immediate != 0:
        q |= X.IO_QUAL_IMMEDIATE
    return q


@njit
def msr_exits(mem, st, msr, write):
    """Whether RDMSR (``write`` 0) / WRMSR (1) of ``msr`` exits (25.6.9)."""
    if not primary(st, X.CPU_USE_MSR_BITMAPS):
        return True
    if 0 <= msr <= 0x1FFF:
        off = 0
        bit = msr
    elif 0xC0000000 <= msr <= 0xC0001FFF:
        off = 1024
        bit = msr - 0xC0000000
    else:
        return True
    if write != 0:
        off += 2048
    return _bit_set(mem, st, st[MSR_BITMAP] + off, bit)


@njit
def cr_mask_shadow(st, n):
    """(guest/host mask, read shadow) of CR0 (n = 0) or CR4 (n = 4)."""
    if n == 0:
        return st[CR0_MASK] & MASK32, st[CR0_SHADOW] & MASK32
    return st[CR4_MASK] & MASK32, st[CR4_SHADOW] & MASK32


@njit
def cr_write_exits(st, n, value):
    """Whether MOV to CR``n`` (0, 3 or 4) of ``value`` exits (26.1.3)."""
    if n == 3:
        if not primary(st, X.CPU_CR3_LOAD_EXITING):
            return False
        count = st[CR3_TARGET_COUNT]
        for i in range(min(count, X.CR3_TARGET_MAX)):
            if (st[CR3_TARGET0 + i] & MASK32) == value:
                return False
        return True
    if n == 0 or n == 4:
        mask, shadow = cr_mask_shadow(st, n)
        return ((value ^ shadow) & mask) != 0
    return False


@njit
def cr_read(st, n, real):
    """What MOV from CR0/CR4 (and SMSW) return in non-root operation: the real bits the
    guest owns, the read shadow's bits the host owns (26.3)."""
    mask, shadow = cr_mask_shadow(st, n)
    return (real & ~mask) | (shadow & mask)


@njit
def cr_write_value(st, n, value, real):
    """What a MOV to CR0/CR4 that does not exit writes: the guest's value for the bits it
    owns, the real register's for the bits the host owns (26.3)."""
    mask, shadow = cr_mask_shadow(st, n)
    return (value & ~mask) | (real & mask)


@njit
def cr_qualification(n, access, gpr):
    """Exit qualification of a control-register access (Table 28-3)."""
    return n | (access << X.CR_QUAL_TYPE_SHIFT) | (gpr << X.CR_QUAL_GPR_SHIFT)


@njit
def exit_for_instruction(st, reason, qualification, linear, info):
    """Raise a VM exit caused by the instruction being executed; ``linear`` (-1: none)
    goes to the guest-linear address field, ``info`` to the VM-exit instruction-
    information field (28.2.5)."""
    if linear >= 0:
        st[GUEST_LINEAR_ADDRESS] = linear & MASK32
    st[VMX_INSTRUCTION_INFO] = info & MASK32
    raise_vmexit(st, reason, qualification)


@njit
def exit_for_event(st, reason, intr_info, error):
    """Raise a VM exit for an exception or external interrupt: ``intr_info`` in the
    VM-exit interruption-information format (Table 25-17), ``error`` (-1: none)."""
    st[EXIT_INTR_INFO] = intr_info & MASK32
    if error >= 0:
        st[EXIT_INTR_ERROR] = error & MASK32
    raise_vmexit(st, reason, 0)


# basic reasons, re-exported for the CPU's handlers
# basic exit reasons as plain ints, for the CPU's handlers (numba folds module-level ints)
CPUID, HLT, INVD, INVLPG, RDTSC, VMCALL = (int(_ER.CPUID), int(_ER.HLT), int(_ER.INVD),
                                           int(_ER.INVLPG), int(_ER.RDTSC), int(_ER.VMCALL))
CR_ACCESS, DR_ACCESS, IO_INSTRUCTION = int(_ER.CR_ACCESS), int(_ER.DR_ACCESS), int(_ER.IO_INSTRUCTION)
RDMSR, WRMSR, WBINVD = int(_ER.RDMSR), int(_ER.WRMSR), int(_ER.WBINVD)
GDTR_IDTR_ACCESS, LDTR_TR_ACCESS = int(_ER.GDTR_IDTR_ACCESS), int(_ER.LDTR_TR_ACCESS)
EXCEPTION_NMI, EXTERNAL_INTERRUPT, TRIPLE_FAULT, INTERRUPT_WINDOW = (
    int(_ER.EXCEPTION_NMI), int(_ER.EXTERNAL_INTERRUPT), int(_ER.TRIPLE_FAULT),
    int(_ER.INTERRUPT_WINDOW))
