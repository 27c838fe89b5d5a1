"""The VMCS: field encodings, where the processor keeps each field, and the region's
layout in memory. Constants and pure functions only (ground floor).

**Encodings** (SDM Vol. 3C, 25.11.2, Table 25-21): bit 0 access type (0 full, 1 high half
of a 64-bit field), bits 9:1 index, bits 11:10 type (0 control, 1 VM-exit information --
read-only, 2 guest state, 3 host state), bit 12 reserved (0), bits 14:13 width (0 16-bit,
1 64-bit, 2 32-bit, 3 natural width). Names and values are those of Appendix B (the same
in Linux ``enum vmcs_field`` and Bochs ``vmx.h``). hvsim is an IA-32 processor: natural-
width fields are 32 bits wide, and a 64-bit field is read and written 32 bits at a time
(full = low half, high = high half; SDM 31.3 "VMREAD", operand size 32).

**The cache** (``st[VMCS_CACHE + slot]``; hvsim/arch/layout.py): the current VMCS as the
processor holds it. ``slot = width * 128 + type * 32 + index``: 16 groups of 32 indices,
512 slots, every defined field in one place (the largest index in any group is 0x17).

**The region** (what VMCLEAR writes to memory and VMPTRLD reads; the SDM leaves its format
to the implementation, 25.2): bytes 0-3 revision identifier, 4-7 VMX-abort indicator,
8-11 launch state (0 clear, 1 launched), then 4 bytes per slot at ``16 + 4 * slot``, and
the high halves of the 64-bit fields at ``16 + 2048 + 4 * (slot - 128)``: 2576 bytes of
the 4096 IA32_VMX_BASIC reports.
"""
from hvsim.arch import vmx as X
from hvsim.arch.layout import VMCS_CACHE

# widths and types (bits 14:13 and 11:10)
W16, W64, W32, WNAT = 0, 1, 2, 3
T_CONTROL, T_EXIT_INFO, T_GUEST, T_HOST = 0, 1, 2, 3
WIDTH_BITS = (16, 64, 32, 32)          # natural width is 32 bits on an IA-32 processor

N_SLOTS = 512
REGION_REVISION = 0
REGION_ABORT = 4
REGION_LAUNCH_STATE = 8
REGION_FIELDS = 16
REGION_HIGH = REGION_FIELDS + 2048
LAUNCH_CLEAR = 0
LAUNCH_LAUNCHED = 1

#: every field hvsim's VT-x implements, by SDM name (Appendix B)
FIELDS = {
    # 16-bit control (B.1.1): the VPID, used with "enable VPID"
    "VIRTUAL_PROCESSOR_ID": 0x0000,
    # 16-bit guest state (B.1.2)
    "GUEST_ES_SELECTOR": 0x0800, "GUEST_CS_SELECTOR": 0x0802, "GUEST_SS_SELECTOR": 0x0804,
    "GUEST_DS_SELECTOR": 0x0806, "GUEST_FS_SELECTOR": 0x0808, "GUEST_GS_SELECTOR": 0x080A,
    "GUEST_LDTR_SELECTOR": 0x080C, "GUEST_TR_SELECTOR": 0x080E,
    # 16-bit host state (B.1.3)
    "HOST_ES_SELECTOR": 0x0C00, "HOST_CS_SELECTOR": 0x0C02, "HOST_SS_SELECTOR": 0x0C04,
    "HOST_DS_SELECTOR": 0x0C06, "HOST_FS_SELECTOR": 0x0C08, "HOST_GS_SELECTOR": 0x0C0A,
    "HOST_TR_SELECTOR": 0x0C0C,
    # 64-bit control (B.2.1)
    "IO_BITMAP_A": 0x2000, "IO_BITMAP_B": 0x2002, "MSR_BITMAP": 0x2004,
    "VM_EXIT_MSR_STORE_ADDR": 0x2006, "VM_EXIT_MSR_LOAD_ADDR": 0x2008,
    "VM_ENTRY_MSR_LOAD_ADDR": 0x200A, "EXECUTIVE_VMCS_POINTER": 0x200C,
    "TSC_OFFSET": 0x2010, "EPT_POINTER": 0x201A,
    # 64-bit read-only data (B.2.2)
    "GUEST_PHYSICAL_ADDRESS": 0x2400,
    # 64-bit guest state (B.2.3)
    "VMCS_LINK_POINTER": 0x2800, "GUEST_IA32_DEBUGCTL": 0x2802,
    # 32-bit control (B.3.1)
    "PIN_BASED_VM_EXEC_CONTROL": 0x4000, "CPU_BASED_VM_EXEC_CONTROL": 0x4002,
    "EXCEPTION_BITMAP": 0x4004, "PAGE_FAULT_ERROR_CODE_MASK": 0x4006,
    "PAGE_FAULT_ERROR_CODE_MATCH": 0x4008, "CR3_TARGET_COUNT": 0x400A,
    "VM_EXIT_CONTROLS": 0x400C, "VM_EXIT_MSR_STORE_COUNT": 0x400E,
    "VM_EXIT_MSR_LOAD_COUNT": 0x4010, "VM_ENTRY_CONTROLS": 0x4012,
    "VM_ENTRY_MSR_LOAD_COUNT": 0x4014, "VM_ENTRY_INTR_INFO_FIELD": 0x4016,
    "VM_ENTRY_EXCEPTION_ERROR_CODE": 0x4018, "VM_ENTRY_INSTRUCTION_LEN": 0x401A,
    "TPR_THRESHOLD": 0x401C, "SECONDARY_VM_EXEC_CONTROL": 0x401E,
    # 32-bit read-only data (B.3.2)
    "VM_INSTRUCTION_ERROR": 0x4400, "VM_EXIT_REASON": 0x4402, "VM_EXIT_INTR_INFO": 0x4404,
    "VM_EXIT_INTR_ERROR_CODE": 0x4406, "IDT_VECTORING_INFO_FIELD": 0x4408,
    "IDT_VECTORING_ERROR_CODE": 0x440A, "VM_EXIT_INSTRUCTION_LEN": 0x440C,
    "VMX_INSTRUCTION_INFO": 0x440E,
    # 32-bit guest state (B.3.3)
    "GUEST_ES_LIMIT": 0x4800, "GUEST_CS_LIMIT": 0x4802, "GUEST_SS_LIMIT": 0x4804,
    "GUEST_DS_LIMIT": 0x4806, "GUEST_FS_LIMIT": 0x4808, "GUEST_GS_LIMIT": 0x480A,
    "GUEST_LDTR_LIMIT": 0x480C, "GUEST_TR_LIMIT": 0x480E, "GUEST_GDTR_LIMIT": 0x4810,
    "GUEST_IDTR_LIMIT": 0x4812, "GUEST_ES_AR_BYTES": 0x4814, "GUEST_CS_AR_BYTES": 0x4816,
    "GUEST_SS_AR_BYTES": 0x4818, "GUEST_DS_AR_BYTES": 0x481A, "GUEST_FS_AR_BYTES": 0x481C,
    "GUEST_GS_AR_BYTES": 0x481E, "GUEST_LDTR_AR_BYTES": 0x4820, "GUEST_TR_AR_BYTES": 0x4822,
    "GUEST_INTERRUPTIBILITY_INFO": 0x4824, "GUEST_ACTIVITY_STATE": 0x4826,
    "GUEST_SMBASE": 0x4828, "GUEST_SYSENTER_CS": 0x482A,
    # 32-bit host state (B.3.4)
    "HOST_IA32_SYSENTER_CS": 0x4C00,
    # natural-width control (B.4.1)
    "CR0_GUEST_HOST_MASK": 0x6000, "CR4_GUEST_HOST_MASK": 0x6002,
    "CR0_READ_SHADOW": 0x6004, "CR4_READ_SHADOW": 0x6006,
    "CR3_TARGET_VALUE0": 0x6008, "CR3_TARGET_VALUE1": 0x600A,
    "CR3_TARGET_VALUE2": 0x600C, "CR3_TARGET_VALUE3": 0x600E,
    # natural-width read-only data (B.4.2)
    "EXIT_QUALIFICATION": 0x6400, "IO_RCX": 0x6402, "IO_RSI": 0x6404, "IO_RDI": 0x6406,
    "IO_RIP": 0x6408, "GUEST_LINEAR_ADDRESS": 0x640A,
    # natural-width guest state (B.4.3)
    "GUEST_CR0": 0x6800, "GUEST_CR3": 0x6802, "GUEST_CR4": 0x6804,
    "GUEST_ES_BASE": 0x6806, "GUEST_CS_BASE": 0x6808, "GUEST_SS_BASE": 0x680A,
    "GUEST_DS_BASE": 0x680C, "GUEST_FS_BASE": 0x680E, "GUEST_GS_BASE": 0x6810,
    "GUEST_LDTR_BASE": 0x6812, "GUEST_TR_BASE": 0x6814, "GUEST_GDTR_BASE": 0x6816,
    "GUEST_IDTR_BASE": 0x6818, "GUEST_DR7": 0x681A, "GUEST_RSP": 0x681C,
    "GUEST_RIP": 0x681E, "GUEST_RFLAGS": 0x6820, "GUEST_PENDING_DBG_EXCEPTIONS": 0x6822,
    "GUEST_SYSENTER_ESP": 0x6824, "GUEST_SYSENTER_EIP": 0x6826,
    # natural-width host state (B.4.4)
    "HOST_CR0": 0x6C00, "HOST_CR3": 0x6C02, "HOST_CR4": 0x6C04, "HOST_FS_BASE": 0x6C06,
    "HOST_GS_BASE": 0x6C08, "HOST_TR_BASE": 0x6C0A, "HOST_GDTR_BASE": 0x6C0C,
    "HOST_IDTR_BASE": 0x6C0E, "HOST_IA32_SYSENTER_ESP": 0x6C10,
    "HOST_IA32_SYSENTER_EIP": 0x6C12, "HOST_RSP": 0x6C14, "HOST_RIP": 0x6C16,
}
NAMES = {enc: name for name, enc in FIELDS.items()}


def width_of(encoding: int) -> int:
    return (encoding >> 13) & 3


def type_of(encoding: int) -> int:
    return (encoding >> 10) & 3


def slot_of(encoding: int) -> int:
    """The cache slot of a field's encoding (either access type of a 64-bit field)."""
    return ((encoding >> 13) & 3) * 128 + ((encoding >> 10) & 3) * 32 + ((encoding >> 1) & 0x1F)


def region_offset(slot: int) -> int:
    """Byte offset in a VMCS region of a slot's (low) 32 bits."""
    return REGION_FIELDS + 4 * slot


def region_high_offset(slot: int) -> int:
    """Byte offset in a VMCS region of a 64-bit field's high 32 bits."""
    return REGION_HIGH + 4 * (slot - 128)


def _supported_table():
    table = [0] * N_SLOTS
    for enc in FIELDS.values():
        assert enc & 1 == 0 and (enc >> 1) & 0x1FF < 32 and not enc & (1 << 12), hex(enc)
        assert table[slot_of(enc)] == 0, f"two fields share slot {slot_of(enc)}"
        table[slot_of(enc)] = enc | 0x8000   # bit 15: defined (the encoding itself may be 0)
    return tuple(table)


#: SLOT_ENCODING[slot]: 0x8000 | encoding of the field in that slot, 0 for none
SLOT_ENCODING = _supported_table()
#: IA32_VMX_VMCS_ENUM (SDM A.9): bits 9:1 = the highest index of any field
VMCS_ENUM = max((enc >> 1) & 0x1FF for enc in FIELDS.values()) << 1

#: the RDMSR value of every VMX capability MSR
CAPABILITY_MSRS = dict(X.CAPABILITY_MSRS_PARTIAL)
CAPABILITY_MSRS[X.MSR_IA32_VMX_VMCS_ENUM] = VMCS_ENUM


def slot(name: str) -> int:
    return slot_of(FIELDS[name])


def state_index(name: str) -> int:
    """Where the current VMCS's field ``name`` lives in the state array: st[state_index]."""
    return VMCS_CACHE + slot(name)


# slots of the fields the kernels use, by name (module-level ints: numba folds them)
S = {name: slot_of(enc) for name, enc in FIELDS.items()}
