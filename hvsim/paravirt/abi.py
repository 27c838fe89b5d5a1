"""Xen's 32-bit paravirtual ABI, as hvsim's hypervisor implements it (constants only).

The numbers a paravirtualized guest kernel and the hypervisor agree on: hypercall numbers,
error codes, the commands of each multiplexed hypercall, and the byte layout of the
structures they share in memory. Each comes from Xen's public headers (the interface a
guest is compiled against, ``xen/include/public/``), named here as there; where hvsim adds
a field of its own, the comment says so. Not jitted.

The calling convention (``public/arch-x86/xen-x86_32.h``): the hypercall number in EAX,
arguments 1-5 in EBX, ECX, EDX, ESI, EDI, the result in EAX (0 or more on success, a
negative errno on failure). A guest calls ``hypercall_page + 32 * number``: the hypervisor
fills that page with one 32-byte stub per hypercall (:func:`hypercall_page`), each
``mov eax, n; int 0x82; ret`` (Xen's ``pv_ring1_init_hypercall_page``); the real IDT lets
``int 0x82`` through from ring 1 only.

>>> stub = hypercall_page()[32 * HYPERVISOR_sched_op:][:8]
>>> stub.hex(), len(hypercall_page())
('b81d000000cd82c3', 4096)
"""
from __future__ import annotations

import struct

# ---- the trap into the hypervisor (public/arch-x86/xen-x86_32.h; asm/irq-vectors.h) ----
HYPERCALL_VECTOR = 0x82        # int 0x82, from ring 1 only
HYPERCALL_STUB_SIZE = 32       # bytes per stub in the hypercall page
HYPERCALL_PAGE_STUBS = 128
PAGE_SIZE = 4096

# ---- hypercall numbers (public/xen.h, __HYPERVISOR_*) ----------------------------------
HYPERVISOR_set_trap_table = 0
HYPERVISOR_mmu_update = 1
HYPERVISOR_set_gdt = 2
HYPERVISOR_stack_switch = 3
HYPERVISOR_set_callbacks = 4
HYPERVISOR_fpu_taskswitch = 5
HYPERVISOR_sched_op_compat = 6
HYPERVISOR_set_timer_op = 15
HYPERVISOR_xen_version = 17
HYPERVISOR_console_io = 18
HYPERVISOR_multicall = 13
HYPERVISOR_update_va_mapping = 14
HYPERVISOR_iret = 23
HYPERVISOR_mmuext_op = 26
HYPERVISOR_sched_op = 29
HYPERVISOR_event_channel_op = 32

#: every hypercall number public/xen.h names, for messages ("set_gdt is not implemented")
HYPERCALL_NAMES = {
    0: "set_trap_table", 1: "mmu_update", 2: "set_gdt", 3: "stack_switch",
    4: "set_callbacks", 5: "fpu_taskswitch", 6: "sched_op_compat", 7: "platform_op",
    8: "set_debugreg", 9: "get_debugreg", 10: "update_descriptor", 12: "memory_op",
    13: "multicall", 14: "update_va_mapping", 15: "set_timer_op",
    16: "event_channel_op_compat", 17: "xen_version", 18: "console_io",
    19: "physdev_op_compat", 20: "grant_table_op", 21: "vm_assist",
    22: "update_va_mapping_otherdomain", 23: "iret", 24: "vcpu_op", 25: "set_segment_base",
    26: "mmuext_op", 27: "xsm_op", 28: "nmi_op", 29: "sched_op", 30: "callback_op",
    31: "xenoprof_op", 32: "event_channel_op", 33: "physdev_op", 34: "hvm_op",
    35: "sysctl", 36: "domctl", 37: "kexec_op", 38: "tmem_op", 39: "argo_op",
    40: "xenpmu_op", 41: "dm_op", 42: "hypfs_op",
}

# ---- error codes (public/errno.h: Xen's numbers are Linux's on x86) ------------------
EPERM = 1
ENOENT = 2
ESRCH = 3
EFAULT = 14
EBUSY = 16
EEXIST = 17
EINVAL = 22
ENOSPC = 28
ENOSYS = 38
ERRNO_NAMES = {EPERM: "EPERM", ENOENT: "ENOENT", ESRCH: "ESRCH", EFAULT: "EFAULT",
               EBUSY: "EBUSY", EEXIST: "EEXIST", EINVAL: "EINVAL", ENOSPC: "ENOSPC",
               ENOSYS: "ENOSYS"}

# ---- mmu_update (public/xen.h) ------------------------------------------------------
# struct mmu_update { uint64_t ptr; uint64_t val; }: ptr's low 2 bits are the command
MMU_UPDATE_SIZE = 16
MMU_NORMAL_PT_UPDATE = 0        # checked '*ptr = val'
MMU_MACHPHYS_UPDATE = 1         # machine-to-physical table entry of frame ptr >> 12 = val
MMU_PT_UPDATE_PRESERVE_AD = 2   # as NORMAL, keeping the entry's A and D bits
MMU_PT_UPDATE_NO_TRANSLATE = 3
DOMID_SELF = 0x7FF0             # foreigndom: "this domain" (public/xen.h)

# ---- mmuext_op (public/xen.h): struct mmuext_op { uint32 cmd; arg1; arg2; } -----------
MMUEXT_OP_SIZE = 12
MMUEXT_PIN_L1_TABLE = 0
MMUEXT_PIN_L2_TABLE = 1
MMUEXT_PIN_L3_TABLE = 2
MMUEXT_PIN_L4_TABLE = 3
MMUEXT_UNPIN_TABLE = 4
MMUEXT_NEW_BASEPTR = 5
MMUEXT_TLB_FLUSH_LOCAL = 6
MMUEXT_INVLPG_LOCAL = 7
MMUEXT_TLB_FLUSH_MULTI = 8
MMUEXT_INVLPG_MULTI = 9
MMUEXT_TLB_FLUSH_ALL = 10
MMUEXT_INVLPG_ALL = 11

# ---- update_va_mapping flags (public/xen.h) -----------------------------------------
UVMF_NONE = 0
UVMF_TLB_FLUSH = 1
UVMF_INVLPG = 2
UVMF_FLUSHTYPE_MASK = 3
UVMF_LOCAL = 0
UVMF_ALL = 4

# ---- page-table entry flags a guest may not set (xen/include/asm-x86/x86_32/page.h:
# BASE_DISALLOW_MASK 0xFFFFF180 of the flags: PAT/PSE (bit 7) and GLOBAL (bit 8)) -------
DISALLOWED_FLAGS = 0x180

# ---- where the hypervisor lives (public/arch-x86/xen-x86_32.h, non-PAE) --------------
HYPERVISOR_VIRT_START = 0xFC000000     # the top 64 MiB of every address space
FIRST_HYPERVISOR_PDE = HYPERVISOR_VIRT_START >> 22      # 1008: directory slots 1008-1023

# ---- sched_op (public/sched.h) --------------------------------------------------------
SCHEDOP_yield = 0
SCHEDOP_block = 1
SCHEDOP_shutdown = 2
SCHEDOP_poll = 3
SHUTDOWN_poweroff = 0
SHUTDOWN_reboot = 1
SHUTDOWN_suspend = 2
SHUTDOWN_crash = 3
SHUTDOWN_NAMES = {0: "poweroff", 1: "reboot", 2: "suspend", 3: "crash"}

# ---- console_io (public/xen.h) --------------------------------------------------------
CONSOLEIO_write = 0
CONSOLEIO_read = 1

# ---- xen_version (public/version.h) -----------------------------------------------------
XENVER_version = 0
XEN_VERSION = (3, 0)            # the Xen of the 2007 white paper; (major << 16) | minor

# ---- event channels (public/event_channel.h) ------------------------------------------
EVTCHNOP_bind_interdomain = 0
EVTCHNOP_bind_virq = 1
EVTCHNOP_close = 3
EVTCHNOP_send = 4
EVTCHNOP_status = 5
EVTCHNOP_alloc_unbound = 6
EVTCHNOP_unmask = 9
VIRQ_TIMER = 0
VIRQ_DEBUG = 1
VIRQ_CONSOLE = 2
NR_VIRQS = 24
NR_EVENT_CHANNELS = 1024        # 32 words of 32 bits: the 2-level ABI on x86_32

# ---- trap_info (public/arch-x86/xen.h): { u8 vector; u8 flags; u16 cs; u32 address } --
TRAP_INFO_SIZE = 8
TI_DPL_MASK = 3                 # flags bits 0-1: the DPL that may INT n the vector
TI_CLEAR_EVENTS = 4             # flags bit 2: mask events on entry (an interrupt gate)

# ---- multicall (public/xen.h): { xen_ulong_t op, result; xen_ulong_t args[6]; } -------
MULTICALL_ENTRY_SIZE = 32
MULTICALL_ARGS = 6

# ---- shared_info and vcpu_info (public/xen.h; arch-x86/xen-x86_32.h) ----------------------
#   vcpu_info (64 bytes):
#     +0  u8  evtchn_upcall_pending    +1 u8 evtchn_upcall_mask   +2 (pad)
#     +4  u32 evtchn_pending_sel
#     +8  arch_vcpu_info: u32 cr2, u32 pad[5]
#     +32 vcpu_time_info: u32 version, u32 pad0, u64 tsc_timestamp, u64 system_time,
#                         u32 tsc_to_system_mul, i8 tsc_shift, u8 flags, u8 pad1[2]
#   shared_info: vcpu_info[32] (2048 bytes), then u32 evtchn_pending[32],
#                u32 evtchn_mask[32], u32 wc_version, wc_sec, wc_nsec
VCPU_INFO_SIZE = 64
XEN_LEGACY_MAX_VCPUS = 32
VI_UPCALL_PENDING = 0
VI_UPCALL_MASK = 1
VI_PENDING_SEL = 4
VI_CR2 = 8
VI_TIME = 32
TIME_VERSION = VI_TIME + 0
TIME_TSC_TIMESTAMP = VI_TIME + 8
TIME_SYSTEM_TIME = VI_TIME + 16
TIME_TSC_TO_SYSTEM_MUL = VI_TIME + 24
TIME_TSC_SHIFT = VI_TIME + 28
SI_EVTCHN_PENDING = VCPU_INFO_SIZE * XEN_LEGACY_MAX_VCPUS          # 0x800
SI_EVTCHN_MASK = SI_EVTCHN_PENDING + 4 * 32                          # 0x880
SI_WC_VERSION = SI_EVTCHN_MASK + 4 * 32                              # 0x900

# ---- start_info (public/xen.h), the page the domain builder hands the kernel in ESI ----
#   +0  char magic[32]           "xen-3.0-x86_32"
#   +32 u32 nr_pages             +36 u32 shared_info (its machine address)
#   +40 u32 flags                +44 u32 store_mfn    +48 u32 store_evtchn
#   +52 u32 console.domU.mfn     +56 u32 console.domU.evtchn  (hvsim: its io/ring.h ring)
#   +60 u32 pt_base (virtual address of the initial page directory)
#   +64 u32 nr_pt_frames         +68 u32 mfn_list     +72 u32 mod_start  +76 u32 mod_len
#   +80 char cmd_line[1024]
#   hvsim's own, after cmd_line (Xen finds devices through XenStore instead):
#   +1104 u32 blk_ring (the block device's shared ring page, machine address)
#   +1108 u32 blk_evtchn (its event channel)  +1112 u32 blk_sectors (the disk's size)
START_INFO_MAGIC = b"xen-3.0-x86_32"
SIF_NR_PAGES = 32
SIF_SHARED_INFO = 36
SIF_FLAGS = 40
SIF_CONSOLE_MFN = 52
SIF_CONSOLE_EVTCHN = 56
SIF_PT_BASE = 60
SIF_NR_PT_FRAMES = 64
SIF_CMD_LINE = 80
SIF_BLK_RING = 1104
SIF_BLK_EVTCHN = 1108
SIF_BLK_SECTORS = 1112

# ---- HYPERVISOR_iret's frame (public/arch-x86/xen-x86_32.h, struct iret_context) ------
#   top of stack at the hypercall: eax, eip, cs, eflags, [esp, ss to an outer ring]
IRET_CONTEXT = ("eax", "eip", "cs", "eflags", "esp", "ss")


def hypercall_page() -> bytes:
    """The 4096 bytes of a hypercall page: 128 stubs of 32 bytes, stub ``n`` at 32n.

    Stub n: ``B8 n32`` (mov eax, n) ``CD 82`` (int 0x82) ``C3`` (ret); stub 23 (iret)
    is ``50`` (push eax) ``B8 17 00 00 00 CD 82``: the guest's EAX goes on the stack, in
    the iret frame, and the hypercall never returns (Xen's
    ``pv_ring1_init_hypercall_page``). The rest of each stub is INT3 (CC) padding.
    """
    page = bytearray(b"\xCC" * PAGE_SIZE)
    for n in range(HYPERCALL_PAGE_STUBS):
        if n == HYPERVISOR_iret:
            stub = b"\x50\xB8" + struct.pack("<I", n) + b"\xCD" + bytes([HYPERCALL_VECTOR])
        else:
            stub = b"\xB8" + struct.pack("<I", n) + b"\xCD" + bytes([HYPERCALL_VECTOR]) + b"\xC3"
        page[n * HYPERCALL_STUB_SIZE:n * HYPERCALL_STUB_SIZE + len(stub)] = stub
    return bytes(page)


def hypercall_name(number: int) -> str:
    """public/xen.h's name of hypercall ``number`` ('#99' if it has none)."""
    return HYPERCALL_NAMES.get(number, f"#{number}")


def errno_name(rc: int) -> str:
    """'-EINVAL' for -22; '0' for success."""
    if rc >= 0:
        return str(rc)
    return "-" + ERRNO_NAMES.get(-rc, f"E{-rc}")
