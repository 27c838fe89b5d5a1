"""VMX architecture: exit reasons, VM-instruction errors, control bits, the capability
MSRs hvsim reports, and the formats of the exit fields. Constants only (ground floor).

Sources: Intel SDM Vol. 3C (the 082US edition numbers the VMX chapters 25-31 and the
appendices A-C; older editions number the same chapters 23-30), cross-checked with
Linux ``arch/x86/include/asm/vmx.h`` / ``uapi/asm/vmx.h`` and Bochs ``cpu/vmx.h``.

**The processor hvsim models.** A Nehalem-class IA-32 VT-x: VMX root and non-root
operation, the TRUE capability MSRs (IA32_VMX_BASIC bit 55 = 1, so CR3-load/-store
exiting and INVLPG exiting may be 0, as on every CPU with EPT), secondary controls with
EPT, VPID and descriptor-table exiting, no unrestricted guest, no IA-32e mode (hvsim is
a 32-bit processor: natural-width VMCS fields are 32 bits, and IA32_VMX_BASIC bit 48 says
physical addresses are limited to 32 bits), no NMIs, no APIC virtualization, no
preemption timer, no MSR-load/-store areas (IA32_VMX_MISC reports a maximum of 512 MSRs
per list, the architectural minimum, but every count must be 0 here: see entry checks).
"""
import enum

from hvsim.arch.cr import (CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE, CR0_WP, CR0_AM,
                           CR0_NW, CR0_CD, CR0_PG, CR4_SUPPORTED, CR4_VMXE)

# ---- IA32_FEATURE_CONTROL (MSR 0x3A; SDM Vol. 3C, 24.7) --------------------------------
FEATURE_CONTROL_LOCK = 1 << 0
FEATURE_CONTROL_VMX_INSIDE_SMX = 1 << 1
FEATURE_CONTROL_VMX_OUTSIDE_SMX = 1 << 2

# ---- CPUID.1:ECX (SDM Vol. 2A, CPUID, Table 3-10) --------------------------------------
CPUID_ECX_VMX = 1 << 5

# ---- MSR numbers (SDM Vol. 4, Table 2-2; Vol. 3C, Appendix A) ---------------------------
MSR_IA32_VMX_BASIC = 0x480
MSR_IA32_VMX_PINBASED_CTLS = 0x481
MSR_IA32_VMX_PROCBASED_CTLS = 0x482
MSR_IA32_VMX_EXIT_CTLS = 0x483
MSR_IA32_VMX_ENTRY_CTLS = 0x484
MSR_IA32_VMX_MISC = 0x485
MSR_IA32_VMX_CR0_FIXED0 = 0x486
MSR_IA32_VMX_CR0_FIXED1 = 0x487
MSR_IA32_VMX_CR4_FIXED0 = 0x488
MSR_IA32_VMX_CR4_FIXED1 = 0x489
MSR_IA32_VMX_VMCS_ENUM = 0x48A
MSR_IA32_VMX_PROCBASED_CTLS2 = 0x48B
MSR_IA32_VMX_EPT_VPID_CAP = 0x48C
MSR_IA32_VMX_TRUE_PINBASED_CTLS = 0x48D
MSR_IA32_VMX_TRUE_PROCBASED_CTLS = 0x48E
MSR_IA32_VMX_TRUE_EXIT_CTLS = 0x48F
MSR_IA32_VMX_TRUE_ENTRY_CTLS = 0x490
MSR_VMX_FIRST, MSR_VMX_LAST = MSR_IA32_VMX_BASIC, MSR_IA32_VMX_TRUE_ENTRY_CTLS

# ---- the VMCS revision and region (SDM Vol. 3C, 25.2 and A.1) ---------------------------
VMCS_REVISION_ID = 0x1D     # hvsim's own identifier (bits 30:0); any value is a choice
VMCS_REGION_SIZE = 4096     # bytes software allocates for a VMCS region (IA32_VMX_BASIC 44:32)
VMCS_SHADOW_INDICATOR = 1 << 31   # bit 31 of a region's first dword (no shadow VMCS here)
MEMTYPE_UC = 0
MEMTYPE_WB = 6

# ---- pin-based VM-execution controls (0x4000; SDM Vol. 3C, 25.6.1, Table 25-5) ----------
PIN_EXTERNAL_INTERRUPT_EXITING = 1 << 0
PIN_NMI_EXITING = 1 << 3
PIN_VIRTUAL_NMIS = 1 << 5
PIN_PREEMPTION_TIMER = 1 << 6
PIN_POSTED_INTERRUPTS = 1 << 7

# ---- primary processor-based controls (0x4002; Table 25-6) -----------------------------
CPU_INTERRUPT_WINDOW_EXITING = 1 << 2
CPU_USE_TSC_OFFSETTING = 1 << 3
CPU_HLT_EXITING = 1 << 7
CPU_INVLPG_EXITING = 1 << 9
CPU_MWAIT_EXITING = 1 << 10
CPU_RDPMC_EXITING = 1 << 11
CPU_RDTSC_EXITING = 1 << 12
CPU_CR3_LOAD_EXITING = 1 << 15
CPU_CR3_STORE_EXITING = 1 << 16
CPU_CR8_LOAD_EXITING = 1 << 19
CPU_CR8_STORE_EXITING = 1 << 20
CPU_USE_TPR_SHADOW = 1 << 21
CPU_NMI_WINDOW_EXITING = 1 << 22
CPU_MOV_DR_EXITING = 1 << 23
CPU_UNCONDITIONAL_IO_EXITING = 1 << 24
CPU_USE_IO_BITMAPS = 1 << 25
CPU_MONITOR_TRAP_FLAG = 1 << 27
CPU_USE_MSR_BITMAPS = 1 << 28
CPU_MONITOR_EXITING = 1 << 29
CPU_PAUSE_EXITING = 1 << 30
CPU_ACTIVATE_SECONDARY_CONTROLS = 1 << 31

# ---- secondary processor-based controls (0x401E; Table 25-7) ---------------------------
SEC_VIRTUALIZE_APIC_ACCESSES = 1 << 0
SEC_ENABLE_EPT = 1 << 1
SEC_DESCRIPTOR_TABLE_EXITING = 1 << 2
SEC_ENABLE_RDTSCP = 1 << 3
SEC_ENABLE_VPID = 1 << 5
SEC_WBINVD_EXITING = 1 << 6
SEC_UNRESTRICTED_GUEST = 1 << 7
SEC_ENABLE_PML = 1 << 17

# ---- VM-exit controls (0x400C; Table 25-13) --------------------------------------------
EXIT_SAVE_DEBUG_CONTROLS = 1 << 2
EXIT_HOST_ADDRESS_SPACE_SIZE = 1 << 9
EXIT_LOAD_PERF_GLOBAL_CTRL = 1 << 12
EXIT_ACK_INTERRUPT_ON_EXIT = 1 << 15
EXIT_SAVE_PAT = 1 << 18
EXIT_LOAD_PAT = 1 << 19
EXIT_SAVE_EFER = 1 << 20
EXIT_LOAD_EFER = 1 << 21
EXIT_SAVE_PREEMPTION_TIMER = 1 << 22

# ---- VM-entry controls (0x4012; Table 25-15) -------------------------------------------
ENTRY_LOAD_DEBUG_CONTROLS = 1 << 2
ENTRY_IA32E_MODE_GUEST = 1 << 9
ENTRY_ENTRY_TO_SMM = 1 << 10
ENTRY_DEACTIVATE_DUAL_MONITOR = 1 << 11
ENTRY_LOAD_PERF_GLOBAL_CTRL = 1 << 13
ENTRY_LOAD_PAT = 1 << 14
ENTRY_LOAD_EFER = 1 << 15

# ---- the "default1" classes (SDM Vol. 3C, A.2-A.5): reserved bits that must be 1 unless
# a TRUE capability MSR reports them as allowed to be 0
PIN_DEFAULT1 = (1 << 1) | (1 << 2) | (1 << 4)
CPU_DEFAULT1 = (1 << 1) | (0x7 << 4) | (1 << 8) | (0xF << 13) | (1 << 26)
EXIT_DEFAULT1 = 0x1FF | (1 << 10) | (1 << 11) | (1 << 13) | (1 << 14) | (1 << 16) | (1 << 17)
ENTRY_DEFAULT1 = 0x1FF | (1 << 12)

# ---- what hvsim's VT-x supports: allowed-0 (must be 1) and allowed-1 (may be 1) ---------
PIN_ALLOWED1 = PIN_DEFAULT1 | PIN_EXTERNAL_INTERRUPT_EXITING
CPU_ALLOWED1 = (CPU_DEFAULT1 | CPU_INTERRUPT_WINDOW_EXITING | CPU_USE_TSC_OFFSETTING
                | CPU_HLT_EXITING | CPU_INVLPG_EXITING | CPU_RDTSC_EXITING
                | CPU_CR3_LOAD_EXITING | CPU_CR3_STORE_EXITING | CPU_MOV_DR_EXITING
                | CPU_UNCONDITIONAL_IO_EXITING | CPU_USE_IO_BITMAPS | CPU_USE_MSR_BITMAPS
                | CPU_ACTIVATE_SECONDARY_CONTROLS)
SEC_ALLOWED1 = SEC_ENABLE_EPT | SEC_DESCRIPTOR_TABLE_EXITING | SEC_ENABLE_VPID | SEC_WBINVD_EXITING
EXIT_ALLOWED1 = EXIT_DEFAULT1 | EXIT_ACK_INTERRUPT_ON_EXIT
ENTRY_ALLOWED1 = ENTRY_DEFAULT1
# TRUE MSRs (bit 55 of IA32_VMX_BASIC): the default1 bits hvsim lets be 0
PIN_TRUE_ALLOWED0 = PIN_DEFAULT1
CPU_TRUE_ALLOWED0 = CPU_DEFAULT1 & ~(CPU_CR3_LOAD_EXITING | CPU_CR3_STORE_EXITING)
EXIT_TRUE_ALLOWED0 = EXIT_DEFAULT1 & ~EXIT_SAVE_DEBUG_CONTROLS
ENTRY_TRUE_ALLOWED0 = ENTRY_DEFAULT1 & ~ENTRY_LOAD_DEBUG_CONTROLS

# ---- IA32_VMX_BASIC (A.1) -------------------------------------------------------------
BASIC_PHYS_ADDR_32BIT = 1 << 48      # VMXON/VMCS/bitmap addresses limited to 32 bits
BASIC_INS_OUTS_INFO = 1 << 54
BASIC_TRUE_CTLS = 1 << 55
VMX_BASIC = (VMCS_REVISION_ID | (VMCS_REGION_SIZE << 32) | BASIC_PHYS_ADDR_32BIT
             | (MEMTYPE_WB << 50) | BASIC_TRUE_CTLS)

# ---- IA32_VMX_MISC (A.6) ---------------------------------------------------------------
MISC_ACTIVITY_HLT = 1 << 6
MISC_CR3_TARGETS_SHIFT = 16
CR3_TARGET_MAX = 4                   # CR3-target values the processor supports (A.6, 24:16)
VMX_MISC = MISC_ACTIVITY_HLT | (CR3_TARGET_MAX << MISC_CR3_TARGETS_SHIFT)

# ---- IA32_VMX_EPT_VPID_CAP (A.10) ------------------------------------------------------
EPT_CAP_EXECUTE_ONLY = 1 << 0
EPT_CAP_WALK_LENGTH_4 = 1 << 6
EPT_CAP_MEMTYPE_UC = 1 << 8
EPT_CAP_MEMTYPE_WB = 1 << 14
EPT_CAP_2MB_PAGES = 1 << 16
EPT_CAP_INVEPT = 1 << 20
EPT_CAP_AD_FLAGS = 1 << 21
EPT_CAP_INVEPT_SINGLE_CONTEXT = 1 << 25
EPT_CAP_INVEPT_ALL_CONTEXT = 1 << 26
# bits 63:32 are the VPID capabilities (Linux reads them as vmx_capability.vpid)
VPID_CAP_INVVPID = 1 << 32
VPID_CAP_INVVPID_INDIVIDUAL_ADDRESS = 1 << 40
VPID_CAP_INVVPID_SINGLE_CONTEXT = 1 << 41
VPID_CAP_INVVPID_ALL_CONTEXT = 1 << 42
VPID_CAP_INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS = 1 << 43
VMX_EPT_VPID_CAP = (EPT_CAP_EXECUTE_ONLY | EPT_CAP_WALK_LENGTH_4 | EPT_CAP_MEMTYPE_UC
                    | EPT_CAP_MEMTYPE_WB | EPT_CAP_2MB_PAGES | EPT_CAP_INVEPT
                    | EPT_CAP_AD_FLAGS | EPT_CAP_INVEPT_SINGLE_CONTEXT
                    | EPT_CAP_INVEPT_ALL_CONTEXT | VPID_CAP_INVVPID
                    | VPID_CAP_INVVPID_INDIVIDUAL_ADDRESS | VPID_CAP_INVVPID_SINGLE_CONTEXT
                    | VPID_CAP_INVVPID_ALL_CONTEXT
                    | VPID_CAP_INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS)
INVEPT_SINGLE_CONTEXT = 1
INVEPT_ALL_CONTEXT = 2
# INVVPID types (SDM Vol. 3C, 31.3 "INVVPID"; 29.4.3.1)
INVVPID_INDIVIDUAL_ADDRESS = 0
INVVPID_SINGLE_CONTEXT = 1
INVVPID_ALL_CONTEXT = 2
INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS = 3
VPID_MASK = 0xFFFF                   # the VPID is a 16-bit VMCS field (0x0000)

# ---- VM-instruction error numbers (SDM Vol. 3C, 31.4, Table 31-1) -----------------------
class VmInstructionError(enum.IntEnum):
    VMCALL_IN_VMX_ROOT = 1
    VMCLEAR_INVALID_ADDRESS = 2
    VMCLEAR_VMXON_POINTER = 3
    VMLAUNCH_NONCLEAR_VMCS = 4
    VMRESUME_NONLAUNCHED_VMCS = 5
    VMRESUME_AFTER_VMXOFF = 6
    ENTRY_INVALID_CONTROL_FIELD = 7
    ENTRY_INVALID_HOST_STATE_FIELD = 8
    VMPTRLD_INVALID_ADDRESS = 9
    VMPTRLD_VMXON_POINTER = 10
    VMPTRLD_INCORRECT_REVISION = 11
    UNSUPPORTED_VMCS_COMPONENT = 12
    VMWRITE_READ_ONLY_COMPONENT = 13
    VMXON_IN_VMX_ROOT = 15
    ENTRY_EVENTS_BLOCKED_BY_MOV_SS = 26
    INVALID_INVEPT_INVVPID_OPERAND = 28


# ---- basic exit reasons (SDM Vol. 3C, Appendix C) ---------------------------------------
class ExitReason(enum.IntEnum):
    EXCEPTION_NMI = 0
    EXTERNAL_INTERRUPT = 1
    TRIPLE_FAULT = 2
    INIT = 3
    SIPI = 4
    INTERRUPT_WINDOW = 7
    NMI_WINDOW = 8
    TASK_SWITCH = 9
    CPUID = 10
    HLT = 12
    INVD = 13
    INVLPG = 14
    RDPMC = 15
    RDTSC = 16
    VMCALL = 18
    VMCLEAR = 19
    VMLAUNCH = 20
    VMPTRLD = 21
    VMPTRST = 22
    VMREAD = 23
    VMRESUME = 24
    VMWRITE = 25
    VMXOFF = 26
    VMXON = 27
    CR_ACCESS = 28
    DR_ACCESS = 29
    IO_INSTRUCTION = 30
    RDMSR = 31
    WRMSR = 32
    INVALID_GUEST_STATE = 33
    MSR_LOADING = 34
    MWAIT = 36
    MONITOR_TRAP_FLAG = 37
    MONITOR = 39
    PAUSE = 40
    MACHINE_CHECK = 41
    TPR_BELOW_THRESHOLD = 43
    APIC_ACCESS = 44
    GDTR_IDTR_ACCESS = 46
    LDTR_TR_ACCESS = 47
    EPT_VIOLATION = 48
    EPT_MISCONFIG = 49
    INVEPT = 50
    RDTSCP = 51
    PREEMPTION_TIMER = 52
    INVVPID = 53
    WBINVD = 54
    XSETBV = 55


EXIT_REASON_ENTRY_FAILURE = 1 << 31     # bit 31 of the exit reason: the VM entry failed
N_EXIT_REASONS = 64                     # counters: one per basic reason below this

# exit qualification of a failed VM entry (SDM Vol. 3C, 27.8; Linux vm_entry_failure_code)
ENTRY_FAIL_DEFAULT = 0
ENTRY_FAIL_PDPTE = 2
ENTRY_FAIL_NMI = 3
ENTRY_FAIL_VMCS_LINK_POINTER = 4

# ---- interruption-information format (VM-exit 0x4404, IDT-vectoring 0x4408, VM-entry
# 0x4016; SDM Vol. 3C, Table 25-17 and 25-18) -----------------------------------------
INTR_INFO_VECTOR_MASK = 0xFF
INTR_INFO_TYPE_SHIFT = 8
INTR_INFO_TYPE_MASK = 0x7 << 8
INTR_INFO_DELIVER_ERROR_CODE = 1 << 11
INTR_INFO_NMI_UNBLOCKING = 1 << 12
INTR_INFO_RESERVED = 0x7FFFF000        # bits 30:12 must be 0 in the VM-entry field
INTR_INFO_VALID = 1 << 31
INTR_TYPE_EXTERNAL = 0
INTR_TYPE_RESERVED = 1
INTR_TYPE_NMI = 2
INTR_TYPE_HARDWARE_EXCEPTION = 3
INTR_TYPE_SOFTWARE_INTERRUPT = 4
INTR_TYPE_PRIVILEGED_SOFTWARE_EXCEPTION = 5
INTR_TYPE_SOFTWARE_EXCEPTION = 6
INTR_TYPE_OTHER = 7

# ---- guest non-register state (SDM Vol. 3C, 25.4.2) ------------------------------------
ACTIVITY_ACTIVE = 0
ACTIVITY_HLT = 1
ACTIVITY_SHUTDOWN = 2
ACTIVITY_WAIT_SIPI = 3
INTERRUPTIBILITY_STI = 1 << 0          # = hvsim's BLOCKING_BY_STI (hvsim/arch/layout.py)
INTERRUPTIBILITY_MOV_SS = 1 << 1       # = BLOCKING_BY_MOV_SS
INTERRUPTIBILITY_SMI = 1 << 2
INTERRUPTIBILITY_NMI = 1 << 3
INTERRUPTIBILITY_RESERVED = ~0xF & 0xFFFFFFFF
VMCS_LINK_POINTER_NONE = 0xFFFFFFFFFFFFFFFF

# ---- exit qualifications (SDM Vol. 3C, 28.2.1) -----------------------------------------
# control-register accesses (Table 28-3)
CR_QUAL_TYPE_SHIFT = 4
CR_ACCESS_MOV_TO_CR = 0
CR_ACCESS_MOV_FROM_CR = 1
CR_ACCESS_CLTS = 2
CR_ACCESS_LMSW = 3
CR_QUAL_LMSW_MEMORY = 1 << 6
CR_QUAL_GPR_SHIFT = 8
CR_QUAL_LMSW_SOURCE_SHIFT = 16
# MOV DR (Table 28-4): 2:0 DR number, 4 direction (1 = MOV from DR), 11:8 GPR
DR_QUAL_FROM_DR = 1 << 4
DR_QUAL_GPR_SHIFT = 8
# I/O instructions (Table 28-5)
IO_QUAL_IN = 1 << 3
IO_QUAL_STRING = 1 << 4
IO_QUAL_REP = 1 << 5
IO_QUAL_IMMEDIATE = 1 << 6
IO_QUAL_PORT_SHIFT = 16
# EPT violations (Table 28-7)
EPT_QUAL_READ = 1 << 0
EPT_QUAL_WRITE = 1 << 1
EPT_QUAL_FETCH = 1 << 2
EPT_QUAL_READABLE = 1 << 3
EPT_QUAL_WRITABLE = 1 << 4
EPT_QUAL_EXECUTABLE = 1 << 5
EPT_QUAL_LINEAR_VALID = 1 << 7
EPT_QUAL_FINAL_TRANSLATION = 1 << 8     # 1: the access to the datum; 0: a paging-structure walk

# ---- the capability MSRs, as RDMSR returns them (64-bit values) -------------------------
def _ctls(allowed0, allowed1):
    return (allowed1 << 32) | allowed0


# CR0/CR4 in VMX operation (A.7, A.8): FIXED0 bits must be 1, FIXED1 bits clear must be 0.
# VMXON and VM entry need CR0.PE, NE and PG set, CR4.VMXE set; FIXED1 is every bit the
# model's CR0/CR4 can hold (hvsim/arch/cr.py).
CR0_FIXED0 = CR0_PE | CR0_NE | CR0_PG
CR0_FIXED1 = (CR0_PE | CR0_MP | CR0_EM | CR0_TS | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_NW
              | CR0_CD | CR0_PG)
CR4_FIXED0 = CR4_VMXE
CR4_FIXED1 = CR4_SUPPORTED

#: RDMSR value of each VMX capability MSR but IA32_VMX_VMCS_ENUM, which names the highest
#: field index hvsim/arch/vmcs.py defines (vmcs.CAPABILITY_MSRS holds all of them)
CAPABILITY_MSRS_PARTIAL = {
    MSR_IA32_VMX_BASIC: VMX_BASIC,
    MSR_IA32_VMX_PINBASED_CTLS: _ctls(PIN_DEFAULT1, PIN_ALLOWED1),
    MSR_IA32_VMX_PROCBASED_CTLS: _ctls(CPU_DEFAULT1, CPU_ALLOWED1),
    MSR_IA32_VMX_EXIT_CTLS: _ctls(EXIT_DEFAULT1, EXIT_ALLOWED1),
    MSR_IA32_VMX_ENTRY_CTLS: _ctls(ENTRY_DEFAULT1, ENTRY_ALLOWED1),
    MSR_IA32_VMX_MISC: VMX_MISC,
    MSR_IA32_VMX_CR0_FIXED0: CR0_FIXED0,
    MSR_IA32_VMX_CR0_FIXED1: CR0_FIXED1,
    MSR_IA32_VMX_CR4_FIXED0: CR4_FIXED0,
    MSR_IA32_VMX_CR4_FIXED1: CR4_FIXED1,
    MSR_IA32_VMX_PROCBASED_CTLS2: _ctls(0, SEC_ALLOWED1),
    MSR_IA32_VMX_EPT_VPID_CAP: VMX_EPT_VPID_CAP,
    MSR_IA32_VMX_TRUE_PINBASED_CTLS: _ctls(PIN_TRUE_ALLOWED0, PIN_ALLOWED1),
    MSR_IA32_VMX_TRUE_PROCBASED_CTLS: _ctls(CPU_TRUE_ALLOWED0, CPU_ALLOWED1),
    MSR_IA32_VMX_TRUE_EXIT_CTLS: _ctls(EXIT_TRUE_ALLOWED0, EXIT_ALLOWED1),
    MSR_IA32_VMX_TRUE_ENTRY_CTLS: _ctls(ENTRY_TRUE_ALLOWED0, ENTRY_ALLOWED1),
}
