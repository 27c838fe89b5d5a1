"""The VM-entry checks hvsim makes, in the order it makes them, each with the field it
reads and the rule it applies in words (constants only; the kernel is hvsim/vtx/entry.py).

The SDM fixes the outcome of each failed check but not their order: "these checks may be
performed in any order. Thus, an indication by error number of one cause does not imply
that there are not also other errors. Different processors may thus give different error
numbers for the same VMCS" (SDM Vol. 3C, 27.2). hvsim's order is this table's: the
VM-execution, VM-exit and VM-entry controls (27.2.1; failure: VMfailValid(7), the
instruction falls through), then the host-state area (27.2.2, 27.2.3; VMfailValid(8)),
then the guest-state area (27.3.1; the entry fails *as a VM exit*: host state is loaded
and the exit reason is 33 with bit 31 set, qualification 0 -- or 4 for the VMCS link
pointer). The first failing check is the one reported: its number goes to
``st[VMX_ENTRY_CHECK]`` and the value it found to ``st[VMX_ENTRY_VALUE]``, and
:func:`explain` turns them into a sentence naming the field, the rule and the value --
the answer to "explain error 7".

Where hvsim models less than the SDM describes, the check says so (MSR-load/-store
areas, virtual-8086 guests): such a VMCS fails, by hvsim's rule, instead of doing
something hvsim would not do right.
"""
# outcome of a failed check: VMfailValid(7), VMfailValid(8), or a VM-entry failure exit
CONTROLS, HOST, GUEST = 7, 8, 33

# (number, outcome, field, rule); the kernel names each by its constant below
TABLE = (
    # -- 27.2.1.1 VM-execution control fields
    (101, CONTROLS, "PIN_BASED_VM_EXEC_CONTROL",
     "reserved bits must be as IA32_VMX_TRUE_PINBASED_CTLS allows (allowed-0 bits 1, "
     "bits outside allowed-1 0)"),
    (102, CONTROLS, "CPU_BASED_VM_EXEC_CONTROL",
     "reserved bits must be as IA32_VMX_TRUE_PROCBASED_CTLS allows"),
    (103, CONTROLS, "SECONDARY_VM_EXEC_CONTROL",
     "with 'activate secondary controls' set, only bits IA32_VMX_PROCBASED_CTLS2 allows "
     "may be 1 (hvsim: enable EPT, descriptor-table exiting, enable VPID, WBINVD exiting)"),
    (122, CONTROLS, "VIRTUAL_PROCESSOR_ID", "with 'enable VPID', must not be 0000H"),
    (104, CONTROLS, "CR3_TARGET_COUNT", "must be at most 4"),
    (105, CONTROLS, "IO_BITMAP_A",
     "with 'use I/O bitmaps', must be 4 KiB aligned and inside physical memory"),
    (106, CONTROLS, "IO_BITMAP_B",
     "with 'use I/O bitmaps', must be 4 KiB aligned and inside physical memory"),
    (107, CONTROLS, "MSR_BITMAP",
     "with 'use MSR bitmaps', must be 4 KiB aligned and inside physical memory"),
    (108, CONTROLS, "EPT_POINTER",
     "with 'enable EPT', the memory type (bits 2:0) must be 0 (UC) or 6 (WB)"),
    (109, CONTROLS, "EPT_POINTER",
     "with 'enable EPT', bits 5:3 must be 3 (a 4-level walk)"),
    (110, CONTROLS, "EPT_POINTER",
     "with 'enable EPT', bits 11:7 must be 0 and the PML4 table inside physical memory"),
    # -- 27.2.1.2 VM-exit control fields
    (111, CONTROLS, "VM_EXIT_CONTROLS",
     "reserved bits must be as IA32_VMX_TRUE_EXIT_CTLS allows (hvsim has no IA-32e "
     "mode: 'host address-space size' must be 0)"),
    (112, CONTROLS, "VM_EXIT_MSR_STORE_COUNT",
     "must be 0: hvsim models no VM-exit MSR-store area"),
    (113, CONTROLS, "VM_EXIT_MSR_LOAD_COUNT",
     "must be 0: hvsim models no VM-exit MSR-load area"),
    # -- 27.2.1.3 VM-entry control fields
    (114, CONTROLS, "VM_ENTRY_CONTROLS",
     "reserved bits must be as IA32_VMX_TRUE_ENTRY_CTLS allows (no IA-32e guest, no "
     "entry to SMM)"),
    (115, CONTROLS, "VM_ENTRY_MSR_LOAD_COUNT",
     "must be 0: hvsim models no VM-entry MSR-load area"),
    (116, CONTROLS, "VM_ENTRY_INTR_INFO_FIELD",
     "with the valid bit set, bits 30:12 must be 0"),
    (117, CONTROLS, "VM_ENTRY_INTR_INFO_FIELD",
     "the interruption type must not be 1 (reserved), nor 2 (NMI) or 7 (other event), "
     "which this processor does not support"),
    (118, CONTROLS, "VM_ENTRY_INTR_INFO_FIELD",
     "a hardware exception's vector must be at most 31"),
    (119, CONTROLS, "VM_ENTRY_INTR_INFO_FIELD",
     "'deliver error code' (bit 11) must be 1 exactly for a hardware exception with "
     "vector 8, 10, 11, 12, 13, 14 or 17"),
    (120, CONTROLS, "VM_ENTRY_EXCEPTION_ERROR_CODE",
     "with 'deliver error code', bits 31:16 must be 0"),
    (121, CONTROLS, "VM_ENTRY_INSTRUCTION_LEN",
     "for a software interrupt or software exception, must be 1 to 15"),
    # -- 27.2.2 host control registers and MSRs, 27.2.3 host segment registers
    (201, HOST, "HOST_CR0",
     "bits IA32_VMX_CR0_FIXED0 sets must be 1 (PE, NE, PG) and bits IA32_VMX_CR0_FIXED1 "
     "clears must be 0"),
    (202, HOST, "HOST_CR4",
     "bits IA32_VMX_CR4_FIXED0 sets must be 1 (VMXE) and bits IA32_VMX_CR4_FIXED1 "
     "clears must be 0"),
    (203, HOST, "HOST_ES_SELECTOR", "RPL (bits 1:0) and TI (bit 2) must be 0"),
    (204, HOST, "HOST_CS_SELECTOR", "RPL (bits 1:0) and TI (bit 2) must be 0"),
    (205, HOST, "HOST_SS_SELECTOR", "RPL (bits 1:0) and TI (bit 2) must be 0"),
    (206, HOST, "HOST_DS_SELECTOR", "RPL (bits 1:0) and TI (bit 2) must be 0"),
    (207, HOST, "HOST_FS_SELECTOR", "RPL (bits 1:0) and TI (bit 2) must be 0"),
    (208, HOST, "HOST_GS_SELECTOR", "RPL (bits 1:0) and TI (bit 2) must be 0"),
    (209, HOST, "HOST_TR_SELECTOR", "RPL (bits 1:0) and TI (bit 2) must be 0"),
    (210, HOST, "HOST_CS_SELECTOR", "must not be 0000H"),
    (211, HOST, "HOST_TR_SELECTOR", "must not be 0000H (the host needs a TSS)"),
    (212, HOST, "HOST_SS_SELECTOR", "must not be 0000H ('host address-space size' is 0)"),
    # -- 27.3.1.1 guest control registers
    (301, GUEST, "GUEST_CR0",
     "bits IA32_VMX_CR0_FIXED0 sets must be 1 (PE, NE, PG: no unrestricted guest) and "
     "bits IA32_VMX_CR0_FIXED1 clears must be 0"),
    (302, GUEST, "GUEST_CR4",
     "bits IA32_VMX_CR4_FIXED0 sets must be 1 (VMXE) and bits IA32_VMX_CR4_FIXED1 "
     "clears must be 0"),
    # -- 27.3.1.4 guest RIP and RFLAGS
    (303, GUEST, "GUEST_RFLAGS",
     "reserved bits 31:22, 15, 5 and 3 must be 0 and bit 1 must be 1"),
    (304, GUEST, "GUEST_RFLAGS",
     "VM (bit 17) must be 0: hvsim does not model virtual-8086 mode"),
    (305, GUEST, "GUEST_RFLAGS",
     "IF (bit 9) must be 1 when an external interrupt is injected"),
    # -- 27.3.1.2 guest segment registers (protected mode, no virtual-8086, no
    #    unrestricted guest)
    (306, GUEST, "GUEST_TR_SELECTOR", "TI (bit 2) must be 0"),
    (307, GUEST, "GUEST_LDTR_SELECTOR", "TI (bit 2) must be 0 when LDTR is usable"),
    (308, GUEST, "GUEST_SS_SELECTOR", "RPL must equal the RPL of the CS selector"),
    (309, GUEST, "GUEST_CS_AR_BYTES",
     "type must be 9, 11, 13 or 15 (an accessed code segment)"),
    (310, GUEST, "GUEST_CS_AR_BYTES", "S (bit 4) must be 1 and P (bit 7) must be 1"),
    (311, GUEST, "GUEST_CS_AR_BYTES",
     "DPL must equal SS's DPL for a non-conforming code segment (type 9 or 11), and be "
     "at most SS's DPL for a conforming one (13 or 15)"),
    (312, GUEST, "GUEST_CS_AR_BYTES",
     "reserved bits 11:8 and 31:17 must be 0; G must be 1 if any of limit bits 31:20 is "
     "1, and 0 if any of limit bits 11:0 is 0; CS must be usable"),
    (313, GUEST, "GUEST_SS_AR_BYTES",
     "when SS is usable: type must be 3 or 7 (read/write accessed data), S = 1, P = 1"),
    (314, GUEST, "GUEST_SS_AR_BYTES", "DPL must equal the RPL of the SS selector"),
    (315, GUEST, "GUEST_SS_AR_BYTES",
     "reserved bits 11:8 and 31:17 must be 0, and G consistent with the limit"),
    (316, GUEST, "GUEST_DS_AR_BYTES",
     "when usable: accessed (type bit 0) = 1, a code segment must be readable, S = 1, "
     "P = 1, DPL >= RPL unless conforming code, reserved bits 0, G consistent with the "
     "limit"),
    (317, GUEST, "GUEST_ES_AR_BYTES", "when usable: as for DS"),
    (318, GUEST, "GUEST_FS_AR_BYTES", "when usable: as for DS"),
    (319, GUEST, "GUEST_GS_AR_BYTES", "when usable: as for DS"),
    (320, GUEST, "GUEST_TR_AR_BYTES", "TR type must be 3 or 11 (a busy TSS)"),
    (321, GUEST, "GUEST_TR_AR_BYTES",
     "S must be 0, P must be 1, TR must be usable, reserved bits 0, G consistent with "
     "the limit"),
    (322, GUEST, "GUEST_LDTR_AR_BYTES",
     "when usable: type must be 2 (LDT), S = 0, P = 1, reserved bits 0, G consistent "
     "with the limit"),
    # -- 27.3.1.3 guest descriptor-table registers
    (323, GUEST, "GUEST_GDTR_LIMIT", "bits 31:16 must be 0"),
    (324, GUEST, "GUEST_IDTR_LIMIT", "bits 31:16 must be 0"),
    # -- 27.3.1.5 guest non-register state
    (325, GUEST, "GUEST_ACTIVITY_STATE",
     "must be 0 (active) or 1 (HLT): IA32_VMX_MISC reports no other activity state"),
    (326, GUEST, "GUEST_ACTIVITY_STATE", "HLT requires the DPL of SS to be 0"),
    (327, GUEST, "GUEST_INTERRUPTIBILITY_INFO",
     "reserved bits 31:4 and SMI blocking (bit 2) must be 0, and blocking by STI and "
     "by MOV SS must not both be 1"),
    (328, GUEST, "GUEST_INTERRUPTIBILITY_INFO",
     "blocking by STI requires RFLAGS.IF = 1"),
    (329, GUEST, "GUEST_INTERRUPTIBILITY_INFO",
     "blocking by STI and by MOV SS must be 0 when an external interrupt is injected"),
    (332, GUEST, "GUEST_ACTIVITY_STATE",
     "must be 0 (active) when the interruptibility state has blocking by STI or by MOV SS"),
    (333, GUEST, "VM_ENTRY_INTR_INFO_FIELD",
     "into the HLT activity state only an external interrupt, an NMI, #DB (1), #MC (18) "
     "or an MTF event may be injected"),
    (330, GUEST, "GUEST_PENDING_DBG_EXCEPTIONS",
     "reserved bits (31:15, 13, 11:4) must be 0"),
    (331, GUEST, "VMCS_LINK_POINTER",
     "must be FFFFFFFF_FFFFFFFFH (no VMCS shadowing): qualification 4"),
)

BY_NUMBER = {n: (outcome, field, rule) for n, outcome, field, rule in TABLE}

# the numbers as names for the kernel (numba folds module-level ints)
PIN_RESERVED, CPU_RESERVED, SEC_RESERVED, CR3_TARGETS = 101, 102, 103, 104
IO_BITMAP_A, IO_BITMAP_B, MSR_BITMAP = 105, 106, 107
EPTP_MEMTYPE, EPTP_WALK, EPTP_RESERVED = 108, 109, 110
EXIT_RESERVED, EXIT_MSR_STORE, EXIT_MSR_LOAD = 111, 112, 113
ENTRY_RESERVED, ENTRY_MSR_LOAD = 114, 115
INJECT_RESERVED, INJECT_TYPE, INJECT_VECTOR, INJECT_ERROR_BIT = 116, 117, 118, 119
INJECT_ERROR_CODE, INJECT_LENGTH = 120, 121
VPID_ZERO = 122
HOST_CR0, HOST_CR4 = 201, 202
HOST_SEL_RPL_TI = 203           # + sreg index: ES 0, CS 1, SS 2, DS 3, FS 4, GS 5; TR 6
HOST_CS_NULL, HOST_TR_NULL, HOST_SS_NULL = 210, 211, 212
GUEST_CR0, GUEST_CR4 = 301, 302
GUEST_RFLAGS_RESERVED, GUEST_RFLAGS_VM, GUEST_RFLAGS_IF = 303, 304, 305
GUEST_TR_TI, GUEST_LDTR_TI, GUEST_SS_RPL = 306, 307, 308
GUEST_CS_TYPE, GUEST_CS_S_P, GUEST_CS_DPL, GUEST_CS_RESERVED = 309, 310, 311, 312
GUEST_SS_TYPE, GUEST_SS_DPL, GUEST_SS_RESERVED = 313, 314, 315
GUEST_DS_AR, GUEST_ES_AR, GUEST_FS_AR, GUEST_GS_AR = 316, 317, 318, 319
GUEST_TR_TYPE, GUEST_TR_AR = 320, 321
GUEST_LDTR_AR = 322
GUEST_GDTR_LIMIT, GUEST_IDTR_LIMIT = 323, 324
GUEST_ACTIVITY, GUEST_ACTIVITY_HLT_DPL = 325, 326
GUEST_INTERRUPTIBILITY, GUEST_STI_IF, GUEST_INJECT_BLOCKED = 327, 328, 329
GUEST_PENDING_DBG = 330
GUEST_HLT_BLOCKING, GUEST_HLT_INJECTION = 332, 333
GUEST_LINK_POINTER = 331


def explain(number: int, value: int) -> str:
    """``"GUEST_TR_AR_BYTES: TR type must be 3 or 11 (a busy TSS), got 0x89 (type 9)"``."""
    if number not in BY_NUMBER:
        raise ValueError(f"no VM-entry check number {number}")
    outcome, field, rule = BY_NUMBER[number]
    got = f"got {value:#x}"
    if field.endswith("_AR_BYTES"):
        got += f" (type {value & 0xF}, S {value >> 4 & 1}, DPL {value >> 5 & 3}, " \
               f"P {value >> 7 & 1}, unusable {value >> 16 & 1})"
    return f"{field}: {rule}, {got}"


def outcome_of(number: int) -> int:
    """7 or 8 (VMfailValid number) or 33 (VM-entry failure exit reason)."""
    return BY_NUMBER[number][0]
