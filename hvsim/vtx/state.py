"""Guest and host state moving between the CPU and the current VMCS (jitted).

* :func:`save_guest` -- the guest-state area written on a VM exit (SDM Vol. 3C, 28.3);
* :func:`load_guest` -- the guest-state area loaded on a VM entry (27.3.2), after the
  checks of hvsim/vtx/entry.py;
* :func:`load_host` -- the host-state area loaded on a VM exit and on a failed VM entry
  (28.5): flat CS/SS/DS/ES, FS/GS/TR bases from the VMCS, LDTR unusable, RFLAGS = 2,
  DR7 = 400H, CPL 0.

hvsim keeps segment access rights in the VMCS's own format (hvsim/arch/layout.py
SEG_AR), so a segment register moves between the CPU and the VMCS without conversion.
The natural-width fields are 32 bits wide (an IA-32 processor).
"""
from hvsim._jit import njit
from hvsim.arch import vmcs as V
from hvsim.arch import vmx as X
from hvsim.arch.cr import CR0_ET
from hvsim.arch.dr import DR7_FIXED1
from hvsim.arch.flags import FIXED1
from hvsim.arch.layout import (
    ESP, EIP, EFLAGS, CR0, CR3, CR4, CPL, DR7, SEG_SEL, SEG_BASE, SEG_LIMIT, SEG_AR,
    N_SREGS, SREG_CS, SREG_SS, SREG_FS, SREG_GS, GDTR_BASE, GDTR_LIMIT, IDTR_BASE, IDTR_LIMIT, LDTR_SEL,
    LDTR_BASE, LDTR_LIMIT, LDTR_AR, TR_SEL, TR_BASE, TR_LIMIT, TR_AR, HALTED, INT_SHADOW,
    MSR_SYSENTER_CS_SLOT, MSR_SYSENTER_ESP_SLOT, MSR_SYSENTER_EIP_SLOT, FETCH_LIN_PAGE, ATTN, AR_S, AR_P, AR_DB, AR_G, AR_UNUSABLE, AR_DPL_SHIFT, MASK32,
    BLOCKING_BY_STI, BLOCKING_BY_MOV_SS, VPID, VPID_CONTEXT,
)
from hvsim.mmu.tlb import tlb_flush_vpid
from hvsim.rings.segments import update_flat


_f = V.state_index


# the six segment registers in hvsim's SREG order (ES CS SS DS FS GS) = the VMCS order
G_SEL0, G_LIMIT0, G_AR0, G_BASE0 = (_f("GUEST_ES_SELECTOR"), _f("GUEST_ES_LIMIT"),
                                    _f("GUEST_ES_AR_BYTES"), _f("GUEST_ES_BASE"))
G_LDTR_SEL, G_LDTR_LIMIT, G_LDTR_AR, G_LDTR_BASE = (
    _f("GUEST_LDTR_SELECTOR"), _f("GUEST_LDTR_LIMIT"), _f("GUEST_LDTR_AR_BYTES"),
    _f("GUEST_LDTR_BASE"))
G_TR_SEL, G_TR_LIMIT, G_TR_AR, G_TR_BASE = (_f("GUEST_TR_SELECTOR"), _f("GUEST_TR_LIMIT"),
                                            _f("GUEST_TR_AR_BYTES"), _f("GUEST_TR_BASE"))
G_GDTR_BASE, G_GDTR_LIMIT = _f("GUEST_GDTR_BASE"), _f("GUEST_GDTR_LIMIT")
G_IDTR_BASE, G_IDTR_LIMIT = _f("GUEST_IDTR_BASE"), _f("GUEST_IDTR_LIMIT")
G_CR0, G_CR3, G_CR4, G_DR7 = _f("GUEST_CR0"), _f("GUEST_CR3"), _f("GUEST_CR4"), _f("GUEST_DR7")
G_RSP, G_RIP, G_RFLAGS = _f("GUEST_RSP"), _f("GUEST_RIP"), _f("GUEST_RFLAGS")
G_SYSENTER_CS, G_SYSENTER_ESP, G_SYSENTER_EIP = (
    _f("GUEST_SYSENTER_CS"), _f("GUEST_SYSENTER_ESP"), _f("GUEST_SYSENTER_EIP"))
G_INTERRUPTIBILITY, G_ACTIVITY = _f("GUEST_INTERRUPTIBILITY_INFO"), _f("GUEST_ACTIVITY_STATE")
G_PENDING_DBG = _f("GUEST_PENDING_DBG_EXCEPTIONS")
EXIT_CTLS, ENTRY_CTLS = _f("VM_EXIT_CONTROLS"), _f("VM_ENTRY_CONTROLS")
CPU_CTLS, SEC_CTLS = _f("CPU_BASED_VM_EXEC_CONTROL"), _f("SECONDARY_VM_EXEC_CONTROL")
VIRTUAL_PROCESSOR_ID, EPT_POINTER = _f("VIRTUAL_PROCESSOR_ID"), _f("EPT_POINTER")

H_SEL0 = _f("HOST_ES_SELECTOR")            # ES CS SS DS FS GS, then TR
H_TR_SEL = _f("HOST_TR_SELECTOR")
H_CR0, H_CR3, H_CR4 = _f("HOST_CR0"), _f("HOST_CR3"), _f("HOST_CR4")
H_FS_BASE, H_GS_BASE, H_TR_BASE = _f("HOST_FS_BASE"), _f("HOST_GS_BASE"), _f("HOST_TR_BASE")
H_GDTR_BASE, H_IDTR_BASE = _f("HOST_GDTR_BASE"), _f("HOST_IDTR_BASE")
H_RSP, H_RIP = _f("HOST_RSP"), _f("HOST_RIP")
H_SYSENTER_CS, H_SYSENTER_ESP, H_SYSENTER_EIP = (
    _f("HOST_IA32_SYSENTER_CS"), _f("HOST_IA32_SYSENTER_ESP"), _f("HOST_IA32_SYSENTER_EIP"))

# the VMCS's 16-bit fields sit 2 encodings apart, the others likewise: consecutive
# segment registers have consecutive slots within each group
assert all(V.slot(f"GUEST_{s}_SELECTOR") == V.slot("GUEST_ES_SELECTOR") + i
           and V.slot(f"GUEST_{s}_LIMIT") == V.slot("GUEST_ES_LIMIT") + i
           and V.slot(f"GUEST_{s}_AR_BYTES") == V.slot("GUEST_ES_AR_BYTES") + i
           and V.slot(f"GUEST_{s}_BASE") == V.slot("GUEST_ES_BASE") + i
           and V.slot(f"HOST_{s}_SELECTOR") == V.slot("HOST_ES_SELECTOR") + i
           for i, s in enumerate(("ES", "CS", "SS", "DS", "FS", "GS")))

# host segments after a VM exit (SDM 28.5.2): CS an execute/read accessed code segment,
# the others read/write accessed data; all flat, 32-bit, 4 KiB granular
_HOST_CS_AR = 11 | AR_S | AR_P | AR_DB | AR_G
_HOST_DATA_AR = 3 | AR_S | AR_P | AR_DB | AR_G
_HOST_TR_AR = 11 | AR_P                   # busy 32-bit TSS
_FLAT_LIMIT = 0xFFFFFFFF
_TR_LIMIT = 0x67
_DT_LIMIT = 0xFFFF
_RFLAGS_AFTER_EXIT = FIXED1
_DR7_AFTER_EXIT = DR7_FIXED1              # 400H (28.5.1)


@njit
def save_guest(st):
    """The CPU's state into the VMCS guest-state area (28.3). EIP is the guest's, as the
    exit left it (the faulting instruction's for fault-like exits)."""
    for i in range(N_SREGS):
        st[G_SEL0 + i] = st[SEG_SEL + i]
        st[G_BASE0 + i] = st[SEG_BASE + i]
        st[G_LIMIT0 + i] = st[SEG_LIMIT + i]
        st[G_AR0 + i] = st[SEG_AR + i]
    st[G_LDTR_SEL] = st[LDTR_SEL]
    st[G_LDTR_BASE] = st[LDTR_BASE]
    st[G_LDTR_LIMIT] = st[LDTR_LIMIT]
    st[G_LDTR_AR] = st[LDTR_AR]
    st[G_TR_SEL] = st[TR_SEL]
    st[G_TR_BASE] = st[TR_BASE]
    st[G_TR_LIMIT] = st[TR_LIMIT]
    st[G_TR_AR] = st[TR_AR]
    st[G_GDTR_BASE] = st[GDTR_BASE]
    st[G_GDTR_LIMIT] = st[GDTR_LIMIT]
    st[G_IDTR_BASE] = st[IDTR_BASE]
    st[G_IDTR_LIMIT] = st[IDTR_LIMIT]
    st[G_CR0] = st[CR0]
    st[G_CR3] = st[CR3]
    st[G_CR4] = st[CR4]
    if (st[EXIT_CTLS] & X.EXIT_SAVE_DEBUG_CONTROLS) != 0:     # 28.3.1
        st[G_DR7] = st[DR7]
    st[G_RSP] = st[ESP]
    st[G_RIP] = st[EIP]
    st[G_RFLAGS] = st[EFLAGS]
    st[G_SYSENTER_CS] = st[MSR_SYSENTER_CS_SLOT]
    st[G_SYSENTER_ESP] = st[MSR_SYSENTER_ESP_SLOT]
    st[G_SYSENTER_EIP] = st[MSR_SYSENTER_EIP_SLOT]
    st[G_INTERRUPTIBILITY] = st[INT_SHADOW] & (BLOCKING_BY_STI | BLOCKING_BY_MOV_SS)
    st[G_ACTIVITY] = X.ACTIVITY_HLT if st[HALTED] != 0 else X.ACTIVITY_ACTIVE
    st[G_PENDING_DBG] = 0


@njit
def secondary_controls(st):
    """The secondary processor-based controls in force: 0 unless the primary ones
    activate them (SDM Vol. 3C, 25.6.2)."""
    if (st[CPU_CTLS] & X.CPU_ACTIVATE_SECONDARY_CONTROLS) == 0:
        return 0
    return st[SEC_CTLS]


@njit
def _after_mode_change(st):
    st[FETCH_LIN_PAGE] = -1          # the one-entry fetch cache is not tagged
    update_flat(st)
    st[ATTN] = 1


@njit
def _enter_vpid(st, tlb, vpid):
    """A VM entry runs the guest with VPID ``vpid``. With "enable VPID" 0 (``vpid`` 0) it
    invalidates the linear and combined mappings of VPID 0000H (SDM Vol. 3C, 27.3.2.5 in
    the 082US edition, 26.3.2.5 before); with it, nothing is invalidated -- mappings
    survive the transitions, which is what VPIDs are for (29.4.3.3) -- but a guest's
    cached mappings are kept only for the EPT they were made under (combined mappings
    are associated with the EPTP, 29.4.1, and linear mappings with no EPT): an entry
    under another one drops that VPID's entries first."""
    if vpid == 0:
        tlb_flush_vpid(st, tlb, 0, 0)
    else:
        context = vpid
        if (secondary_controls(st) & X.SEC_ENABLE_EPT) != 0:
            context |= ((st[EPT_POINTER] & MASK32) | 1) << 16
        if st[VPID_CONTEXT] != context:
            tlb_flush_vpid(st, tlb, vpid, 0)
            st[VPID_CONTEXT] = context
    st[VPID] = vpid


@njit
def _leave_vpid(st, tlb):
    """A VM exit (or a failed entry) goes back to VPID 0000H, invalidating its mappings
    when the guest ran with VPID 0000H too: "enable VPID" 0 (28.5.5 in the 082US
    edition, 27.5.5 before)."""
    if st[VPID] == 0:
        tlb_flush_vpid(st, tlb, 0, 0)
    st[VPID] = 0


@njit
def _vpid_of_guest(st):
    """The VPID a VM entry gives the guest: the VMCS's when "enable VPID" is 1 (the entry
    checks make it non-zero, 27.2.1.1), else 0000H."""
    if (secondary_controls(st) & X.SEC_ENABLE_VPID) == 0:
        return 0
    return st[VIRTUAL_PROCESSOR_ID] & X.VPID_MASK


@njit
def load_guest(st, tlb):
    """The VMCS guest-state area into the CPU (27.3.2); the checks have passed."""
    for i in range(N_SREGS):
        st[SEG_SEL + i] = st[G_SEL0 + i] & 0xFFFF
        st[SEG_BASE + i] = st[G_BASE0 + i] & MASK32
        st[SEG_LIMIT + i] = st[G_LIMIT0 + i] & MASK32
        st[SEG_AR + i] = st[G_AR0 + i] & 0x1F0FF
    st[LDTR_SEL] = st[G_LDTR_SEL] & 0xFFFF
    st[LDTR_BASE] = st[G_LDTR_BASE] & MASK32
    st[LDTR_LIMIT] = st[G_LDTR_LIMIT] & MASK32
    st[LDTR_AR] = st[G_LDTR_AR] & 0x1F0FF
    st[TR_SEL] = st[G_TR_SEL] & 0xFFFF
    st[TR_BASE] = st[G_TR_BASE] & MASK32
    st[TR_LIMIT] = st[G_TR_LIMIT] & MASK32
    st[TR_AR] = st[G_TR_AR] & 0x1F0FF
    st[GDTR_BASE] = st[G_GDTR_BASE] & MASK32
    st[GDTR_LIMIT] = st[G_GDTR_LIMIT] & 0xFFFF
    st[IDTR_BASE] = st[G_IDTR_BASE] & MASK32
    st[IDTR_LIMIT] = st[G_IDTR_LIMIT] & 0xFFFF
    st[CR0] = (st[G_CR0] & MASK32) | CR0_ET
    st[CR3] = st[G_CR3] & MASK32
    st[CR4] = st[G_CR4] & MASK32
    if (st[ENTRY_CTLS] & X.ENTRY_LOAD_DEBUG_CONTROLS) != 0:   # 27.3.2.1
        st[DR7] = st[G_DR7] & MASK32
    st[ESP] = st[G_RSP] & MASK32
    st[EIP] = st[G_RIP] & MASK32
    st[EFLAGS] = st[G_RFLAGS] & MASK32
    st[MSR_SYSENTER_CS_SLOT] = st[G_SYSENTER_CS] & MASK32
    st[MSR_SYSENTER_ESP_SLOT] = st[G_SYSENTER_ESP] & MASK32
    st[MSR_SYSENTER_EIP_SLOT] = st[G_SYSENTER_EIP] & MASK32
    st[INT_SHADOW] = st[G_INTERRUPTIBILITY] & (BLOCKING_BY_STI | BLOCKING_BY_MOV_SS)
    st[HALTED] = 1 if st[G_ACTIVITY] == X.ACTIVITY_HLT else 0
    st[CPL] = (st[SEG_AR + SREG_SS] >> AR_DPL_SHIFT) & 3     # CPL := SS.DPL (27.3.2.2)
    _enter_vpid(st, tlb, _vpid_of_guest(st))
    _after_mode_change(st)


@njit
def load_host(st, tlb):
    """The VMCS host-state area into the CPU (28.5), on a VM exit or a failed entry."""
    st[CR0] = (st[H_CR0] & MASK32) | CR0_ET
    st[CR3] = st[H_CR3] & MASK32
    st[CR4] = st[H_CR4] & MASK32
    st[DR7] = _DR7_AFTER_EXIT
    st[MSR_SYSENTER_CS_SLOT] = st[H_SYSENTER_CS] & MASK32
    st[MSR_SYSENTER_ESP_SLOT] = st[H_SYSENTER_ESP] & MASK32
    st[MSR_SYSENTER_EIP_SLOT] = st[H_SYSENTER_EIP] & MASK32
    for i in range(N_SREGS):
        sel = st[H_SEL0 + i] & 0xFFFF
        st[SEG_SEL + i] = sel
        st[SEG_BASE + i] = 0
        st[SEG_LIMIT + i] = _FLAT_LIMIT
        if i == SREG_CS:
            st[SEG_AR + i] = _HOST_CS_AR
        elif sel == 0 and i != SREG_SS:
            st[SEG_AR + i] = _HOST_DATA_AR | AR_UNUSABLE
        else:
            st[SEG_AR + i] = _HOST_DATA_AR
    st[SEG_BASE + SREG_FS] = st[H_FS_BASE] & MASK32
    st[SEG_BASE + SREG_GS] = st[H_GS_BASE] & MASK32
    st[TR_SEL] = st[H_TR_SEL] & 0xFFFF
    st[TR_BASE] = st[H_TR_BASE] & MASK32
    st[TR_LIMIT] = _TR_LIMIT
    st[TR_AR] = _HOST_TR_AR
    st[LDTR_SEL] = 0
    st[LDTR_BASE] = 0
    st[LDTR_LIMIT] = 0
    st[LDTR_AR] = AR_UNUSABLE
    st[GDTR_BASE] = st[H_GDTR_BASE] & MASK32
    st[GDTR_LIMIT] = _DT_LIMIT
    st[IDTR_BASE] = st[H_IDTR_BASE] & MASK32
    st[IDTR_LIMIT] = _DT_LIMIT
    st[ESP] = st[H_RSP] & MASK32
    st[EIP] = st[H_RIP] & MASK32
    st[EFLAGS] = _RFLAGS_AFTER_EXIT
    st[CPL] = 0
    st[INT_SHADOW] = 0
    st[HALTED] = 0
    _leave_vpid(st, tlb)
    _after_mode_change(st)
