"""A Xen-shaped paravirtualizing hypervisor, in Python (the monitor layer; not jitted).

Paravirtualization (Barham et al., "Xen and the Art of Virtualization", SOSP 2003) gives
up running an unmodified guest: the guest kernel is *ported* to the hypervisor. Where a
kernel would execute a sensitive instruction, it asks the hypervisor instead -- a
**hypercall** -- so the x86 holes that defeat trap-and-emulate never come up, and work
that trap-and-emulate pays one trap per instruction for can be batched. This monitor
models 32-bit Xen PV (TECHNIQUES.md section 6; Xen's public headers for every number):

* **Rings.** The hypervisor owns ring 0 and the real IDT: every vector leaves
  ``Machine.run()`` to this Python code. The guest kernel runs in **ring 1**, its
  programs in ring 3 (hvsim's GDT: ring-1 flat code 19H / data 21H, ring 3 3BH / 43H;
  they play the roles of Xen's FLAT_RING1_CS/DS and FLAT_RING3_CS/DS).
* **Hypercalls.** ``int 0x82`` from ring 1, EAX = the number (Xen's), arguments in EBX,
  ECX, EDX, ESI, EDI, the result in EAX (0 or a negative errno). The builder fills the
  guest's hypercall page with Xen's 32-byte stubs. :data:`HYPERCALLS` maps each number
  to a plain function; any other number returns -ENOSYS.
* **Virtual IF in memory.** The guest's interrupt flag is ``evtchn_upcall_mask`` in the
  shared_info page, which it maps and writes itself: its CLI/STI are plain stores, never a
  trap. Re-enabling, it checks ``evtchn_upcall_pending`` and makes any hypercall if an
  event waits (Linux's ``xen_irq_enable``); returning from a hypercall or trap with events
  unmasked and pending, the hypervisor **upcalls** the guest's event callback.
* **Event channels** (2-level ABI): ports with pending and mask bits; the timer
  (``set_timer_op`` + VIRQ_TIMER) and the block device's backend signal through them.
* **Direct paging.** The CPU walks the guest's own page tables; their frames are typed
  and counted (:mod:`hvsim.paravirt.frames`) so that the guest holds no writable mapping
  of a page table and maps no frame of the hypervisor's. It changes a table in use only
  with ``mmu_update`` / ``update_va_mapping`` / ``mmuext_op``, each request validated; a
  refused request returns Xen's error code and changes nothing (earlier requests of the
  same batch stay done: ``*done`` says how many, as in Xen). ``multicall`` batches any
  hypercalls into one trap.
* **System calls** do not involve the hypervisor: a trap-table entry for vector 80H
  with DPL 3 becomes a real IDT gate into the guest's ring 1 (Xen-32's direct trap for
  ``int 0x80``). Other exceptions reach the hypervisor and are *bounced* to the guest's
  handler from ``set_trap_table`` on its ring-1 stack (``stack_switch``); a #PF's CR2
  goes into ``vcpu_info.arch.cr2``, since ring 1 cannot read CR2.
* **Split-driver I/O.** A block device's backend and a console's live in the hypervisor
  (:mod:`hvsim.paravirt.blkback`), each over a shared ring (Xen's io/ring.h,
  :mod:`hvsim.paravirt.ring`) and an event channel. (``console_io`` writes to the same
  console with one hypercall per string: Xen's early-boot console.) The backend runs when the guest gives
  up the processor (``sched_op`` block or yield) -- as a driver domain gets the CPU when
  the guest idles -- so the guest's requests pile up in the ring and one notification
  covers many.

Memory. The machine's memory is the guest's RAM (1 MiB by default: pseudo-physical =
machine address, one domain) followed by :data:`HV_PAGES` pages of the hypervisor's: its
GDT, TSS and IDT, the page table of its directory slot, the shared_info page, a ring-0
stack. Like Xen, the hypervisor has a slot in every address space -- directory entry
:data:`~hvsim.paravirt.abi.FIRST_HYPERVISOR_PDE`, linear
:data:`~hvsim.paravirt.abi.HYPERVISOR_VIRT_START` (FC000000H) and up -- which it fills in
each directory it validates and a guest may not write. Only one page is mapped there,
read-only: the GDT, TSS and IDT, which the CPU reads through linear addresses. How the
hypervisor's memory is kept from the guest: **paging** -- no guest entry may map a
hypervisor frame (but the shared_info page, which is the guest's to share). 32-bit Xen
used segment limits as well, because a ring-1 kernel can read any supervisor page; here
the one page in reach is read-only and holds nothing secret, and hvsim keeps its flat
segments (its interpreter and block translator have fast paths for them).

The domain builder (:meth:`Hypervisor.boot`), as Xen's does: loads the kernel, fills its
``hypercall_page`` (a page-aligned label in the image), builds bootstrap page tables in
the pages after the image -- all the guest's RAM identity-mapped, supervisor, writable,
except the tables' own frames, read-only; the directory entries allow user access, the
page-table entries decide, as Linux's do -- pins and loads them, writes a start_info
page and the block device's and the console's shared rings (their ports bound), and enters ``start`` in ring 1 with ESI = the
start_info's address and events masked.

>>> from hvsim.asm import assemble
>>> k = assemble('''
... start:  mov ebx, 0              ; console_io(CONSOLEIO_write, 3, msg)
...         mov ecx, 3
...         mov edx, msg
...         call hypercall_page + 18 * 32
...         mov [rc], eax
...         mov ebx, 2              ; sched_op(SCHEDOP_shutdown, &reason)
...         mov ecx, reason
...         call hypercall_page + 29 * 32
... msg:    db "hi", 10
... rc:     dd -1
... reason: dd 0                    ; SHUTDOWN_poweroff
... align 4096
... hypercall_page: times 4096 db 0
... ''')
>>> hv = Hypervisor(program=k)
>>> ev = hv.run()
>>> ev.kind, hv.console, hv.stats["hypercalls"], hv.shutdown_reason
('halt', 'hi\\n', 2, 'poweroff')
"""
from __future__ import annotations

import collections
import dataclasses
import struct
from typing import Callable, Optional

import numpy as np

from hvsim.arch import layout as L
from hvsim.arch.exits import EXIT_BUDGET, EXIT_EXCEPTION
from hvsim.arch.flags import FIXED1, IF, IOPL_MASK, NT, POPF_WRITABLE, RF, TF
from hvsim.arch.pte import PTE_A, PTE_D, PTE_FRAME, PTE_P, PTE_RW, PTE_US
from hvsim.arch.vectors import BP, GP, HAS_ERROR_CODE, OF, PF, vector_name
from hvsim.machine import Event, GuestMemoryError, Machine, Snapshot
from hvsim.mmu.tlb import tlb_flush_vpid, tlb_invlpg_vpid
from hvsim.monitors.base import Kill, LogEntry, Monitor, MonitorEvent, STATS
from hvsim.paravirt import abi as A
from hvsim.paravirt.frames import ENTRIES, L1, L2, FrameError, FrameTable
from hvsim.rings import make_gate
from hvsim.rings.descriptors import TSS_ESP0
from hvsim.rings.setup import install

__all__ = ["Hypervisor", "HYPERCALLS", "HV_PAGES", "GUEST_RING", "HypervisorSnapshot",
           "Hypercall"]

GUEST_RING = 1
GUEST_RAM = 1 << 20
PAGE = 4096
MASK32 = 0xFFFFFFFF
HOST_TIMER_VECTOR = 0x20           # the real timer, routed to the hypervisor
SYSCALL_VECTOR = 0x80              # a DPL-3 trap-table entry here becomes a direct trap
FLAT_RING1_CS, FLAT_RING1_DS = 0x19, 0x21      # hvsim/rings/setup.py's ring-1 segments
FLAT_RING3_CS, FLAT_RING3_DS = 0x3B, 0x43
LOG_CAP = 4096                     # the log keeps the newest entries
# the hypervisor's pages, after the guest's RAM
HV_PAGES = 4
_TABLES, _HV_L1, _SHARED_INFO, _STACK0 = range(HV_PAGES)
_GDT_AT, _TSS_AT, _IDT_AT = 0x000, 0x080, 0x800      # within the tables page
_IRET_SET = (POPF_WRITABLE | RF) & ~(IF | IOPL_MASK)  # what HYPERVISOR_iret loads of EFLAGS
_X_VECTOR, _X_EIP, _X_CPL, _X_SOURCE = (L.EXIT_VECTOR, L.EXIT_EIP, L.EXIT_CPL,
                                        L.EXIT_SOURCE)
_SOFTWARE = 2                      # EXIT_SOURCE of INT n (hvsim/arch/layout.py)
DELIVER_CLEAR = TF | NT | RF       # cleared by every delivery (SDM Vol. 3A, 6.12.1.3)
DISK_SECTORS = 64


class Hypercall(Exception):
    """Raised in a hypercall handler: the call fails with ``rc`` (a negative errno)."""

    def __init__(self, rc: int, why: str = ""):
        super().__init__(why)
        self.rc = rc


@dataclasses.dataclass(frozen=True)
class HypervisorSnapshot:
    machine: Snapshot
    frames: tuple
    scalars: dict
    counts: dict
    log: tuple
    disk: bytes


# ---- the hypercalls: one plain function each, (hv, ebx, ecx, edx, esi, edi) -> rc ---------
def hc_set_trap_table(hv: "Hypervisor", table, *_) -> int:
    """set_trap_table(trap_info[]): the guest's exception handlers, an array of {u8 vector,
    u8 flags, u16 cs, u32 address} ended by address 0 (public/arch-x86/xen.h); 0 clears
    them. A DPL-3 entry for vector 80H is installed in the real IDT (a direct trap)."""
    entries = {}
    if table:
        for i in range(257):
            vec, flags, cs, addr = struct.unpack("<BBHI", hv.read(table + 8 * i, 8))
            if addr == 0:
                break
            if i == 256:
                raise Hypercall(-A.EINVAL, "a trap table of more than 256 entries")
            cs = _fixup_selector(cs)
            if cs != FLAT_RING1_CS:
                raise Hypercall(-A.EPERM, f"trap_info[{i}] names code selector {cs:#x}, not "
                                          f"the guest kernel's ({FLAT_RING1_CS:#x})")
            entries[vec] = (flags, cs, addr)
    hv.trap_table = entries
    hv._install_direct_trap()
    return 0


def _batch(hv: "Hypervisor", name: str, array: int, count: int, size: int, fmt: str,
           pdone: int, foreigndom: int, do: Callable) -> int:
    """The shape mmu_update and mmuext_op share: ``count`` entries of ``size`` bytes
    (struct ``fmt``) at ``array``, each given to ``do``, which raises FrameError to refuse
    it; the batch stops at the first refusal, whose errno is the result, and ``*pdone``
    gets how many were done (public/xen.h)."""
    if foreigndom not in (0, A.DOMID_SELF):
        raise Hypercall(-A.ESRCH, f"foreigndom {foreigndom:#x}: there is one domain")
    data = hv.read(array, size * count) if count else b""
    done, rc = 0, 0
    for i in range(count):
        entry = struct.unpack_from(fmt, data, size * i)
        try:
            do(*entry)
        except FrameError as e:
            rc = -abs(e.rc)
            hv._note_refusal(f"{name}[{i}] {' '.join(f'{x:#x}' for x in entry)}: {e}")
            break
        done += 1
    if pdone:
        hv.write(pdone, struct.pack("<I", done))
    return rc


def hc_mmu_update(hv, reqs, count, pdone, foreigndom, *_) -> int:
    """mmu_update(mmu_update_t[], count, *done, foreigndom): each {u64 ptr, u64 val},
    ptr's low two bits the command (public/xen.h). Stops at the first refused request."""
    fr = hv.frames

    def one(ptr, val):
        cmd, ptr = ptr & 3, ptr & ~3
        if ptr >> 32 or val >> 32:
            raise FrameError(-A.EINVAL, "an address above 4 GiB")
        if cmd in (A.MMU_NORMAL_PT_UPDATE, A.MMU_PT_UPDATE_PRESERVE_AD):
            fr.update(ptr, val, preserve_ad=cmd == A.MMU_PT_UPDATE_PRESERVE_AD)
            hv.pt_updates += 1
        elif cmd == A.MMU_MACHPHYS_UPDATE:
            if not fr.owned(ptr >> 12) or val != ptr >> 12:
                raise FrameError(-A.EINVAL, "machine-to-physical entries are the identity "
                                            "here (one domain, mfn == pfn)")
        else:
            raise FrameError(-A.ENOSYS, f"mmu_update command {cmd}")
    return _batch(hv, "mmu_update", reqs, count, A.MMU_UPDATE_SIZE, "<QQ", pdone, foreigndom,
                  one)


def hc_stack_switch(hv, ss, esp, *_) -> int:
    """stack_switch(ss, esp): the ring-1 stack for entries from ring 3 (TSS.SS1:ESP1)."""
    ss = _fixup_selector(ss)
    if ss != FLAT_RING1_DS:
        raise Hypercall(-A.EINVAL, f"stack selector {ss:#x} is not the guest kernel's data "
                                   f"segment ({FLAT_RING1_DS:#x})")
    hv._tss_stack(ss, esp)
    return 0


def hc_set_callbacks(hv, event_cs, event_eip, failsafe_cs, failsafe_eip, *_) -> int:
    """set_callbacks(event_selector, event_address, failsafe_selector, failsafe_address)."""
    for cs in (event_cs, failsafe_cs):
        if _fixup_selector(cs) != FLAT_RING1_CS:
            raise Hypercall(-A.EPERM, f"callback selector {cs:#x} is not the guest kernel's "
                                      "code segment")
    hv.event_callback = (FLAT_RING1_CS, event_eip)
    hv.failsafe_callback = (FLAT_RING1_CS, failsafe_eip)
    return 0


def hc_multicall(hv, calls, count, *_) -> int:
    """multicall(multicall_entry_t[], count): each {op, result, args[6]} (u32s on x86_32);
    every call runs and its result is stored; the batch costs one trap."""
    if count > 1 << 12:
        raise Hypercall(-A.EINVAL, f"a multicall of {count} entries")
    size = A.MULTICALL_ENTRY_SIZE
    table = hv.read(calls, size * count) if count else b""
    results = []
    for i in range(count):
        op, _result, a1, a2, a3, a4, a5, _a6 = struct.unpack_from("<8I", table, size * i)
        fn = HYPERCALLS.get(op)
        if fn is None or op in (A.HYPERVISOR_multicall, A.HYPERVISOR_iret):
            rc = -A.ENOSYS if fn is None else -A.EINVAL
        else:
            hv.batched[op] += 1
            try:
                rc = fn(hv, a1, a2, a3, a4, a5)
            except Hypercall as h:
                rc = h.rc
        results.append(rc & MASK32)
        if hv._state != "running":
            break
    hv.multicall_entries += len(results)
    if results:
        # the result fields, into the array as it is now (a call may have written it)
        now = bytearray(hv.read(calls, size * len(results)))
        for i, rc in enumerate(results):
            struct.pack_into("<I", now, size * i + 4, rc)
        hv.write(calls, bytes(now))
    return 0


def hc_update_va_mapping(hv, va, val, flags, *_) -> int:
    """update_va_mapping(va, val, flags): the L1 entry that maps ``va`` in the current
    address space becomes ``val`` (checked like mmu_update), then UVMF_INVLPG or
    UVMF_TLB_FLUSH (public/xen.h)."""
    pde = hv.frames.entry(hv.base >> 12, va >> 22)
    if va >> 22 >= A.FIRST_HYPERVISOR_PDE or not pde & PTE_P:
        hv._note_refusal(f"update_va_mapping({va:#x}): no page table maps it")
        return -A.EINVAL
    ptr = (pde & PTE_FRAME) + ((va >> 12) & (ENTRIES - 1)) * 4
    try:
        hv.frames.update(ptr, val)
    except FrameError as e:
        hv._note_refusal(f"update_va_mapping({va:#x}, {val:#x}): {e}")
        return -abs(e.rc)
    hv.pt_updates += 1
    kind = flags & A.UVMF_FLUSHTYPE_MASK
    if kind == A.UVMF_INVLPG:
        hv.invlpg(va)
    elif kind == A.UVMF_TLB_FLUSH:
        hv.flush_tlb()
    return 0


def hc_set_timer_op(hv, lo, hi, *_) -> int:
    """set_timer_op(timeout): VIRQ_TIMER at system time ``timeout`` (ns; 0 cancels). The
    guest's system time is its TSC here: one retired instruction is one nanosecond."""
    hv.set_deadline((hi << 32) | lo)
    return 0


def hc_xen_version(hv, cmd, *_) -> int:
    if cmd != A.XENVER_version:
        raise Hypercall(-A.ENOSYS, f"xen_version command {cmd}")
    major, minor = A.XEN_VERSION
    return (major << 16) | minor


def hc_console_io(hv, cmd, count, buf, *_) -> int:
    """console_io(CONSOLEIO_write, count, buffer): text for the hypervisor's console."""
    if cmd == A.CONSOLEIO_write:
        if count > 1 << 16:
            raise Hypercall(-A.EINVAL, f"a {count}-byte console write")
        hv.console_out(hv.read(buf, count).decode("latin-1"))
        return 0
    if cmd == A.CONSOLEIO_read:
        return 0
    raise Hypercall(-A.ENOSYS, f"console_io command {cmd}")


def hc_mmuext_op(hv, ops, count, pdone, foreigndom, *_) -> int:
    """mmuext_op(mmuext_op_t[], count, *done, foreigndom): {u32 cmd, arg1, arg2} each --
    pin and unpin tables, a new base pointer (CR3), TLB flushes, INVLPG."""
    fr = hv.frames

    def one(cmd, arg1, _arg2):
        if cmd == A.MMUEXT_PIN_L1_TABLE:
            fr.pin(arg1, L1)
        elif cmd == A.MMUEXT_PIN_L2_TABLE:
            fr.pin(arg1, L2)
        elif cmd in (A.MMUEXT_PIN_L3_TABLE, A.MMUEXT_PIN_L4_TABLE):
            raise FrameError(-A.EINVAL, "2-level paging has no L3 or L4 tables")
        elif cmd == A.MMUEXT_UNPIN_TABLE:
            fr.unpin(arg1)
        elif cmd == A.MMUEXT_NEW_BASEPTR:
            hv.new_baseptr(arg1 << 12)
        elif cmd in (A.MMUEXT_TLB_FLUSH_LOCAL, A.MMUEXT_TLB_FLUSH_MULTI, A.MMUEXT_TLB_FLUSH_ALL):
            hv.flush_tlb()
        elif cmd in (A.MMUEXT_INVLPG_LOCAL, A.MMUEXT_INVLPG_MULTI, A.MMUEXT_INVLPG_ALL):
            hv.invlpg(arg1)
        else:
            raise FrameError(-A.ENOSYS, f"mmuext command {cmd}")
    return _batch(hv, "mmuext_op", ops, count, A.MMUEXT_OP_SIZE, "<III", pdone, foreigndom, one)


def hc_sched_op(hv, cmd, arg, *_) -> int:
    """sched_op(cmd, arg): yield, block (with an implicit event enable), shutdown."""
    if cmd == A.SCHEDOP_yield:
        hv.run_backends()
        return 0
    if cmd == A.SCHEDOP_block:
        hv.block()
        return 0
    if cmd == A.SCHEDOP_shutdown:
        reason = struct.unpack("<I", hv.read(arg, 4))[0]
        hv.shutdown(A.SHUTDOWN_NAMES.get(reason, f"reason {reason}"))
        return 0
    raise Hypercall(-A.ENOSYS, f"sched_op command {cmd}")


def hc_event_channel_op(hv, cmd, arg, *_) -> int:
    """event_channel_op(cmd, *op): bind_virq {virq, vcpu, port OUT}, send {port},
    unmask {port}, close {port} (public/event_channel.h)."""
    if cmd == A.EVTCHNOP_bind_virq:
        virq, vcpu = struct.unpack("<II", hv.read(arg, 8))
        if virq >= A.NR_VIRQS:
            raise Hypercall(-A.EINVAL, f"VIRQ {virq}")
        if vcpu != 0:
            raise Hypercall(-A.ENOENT, f"vCPU {vcpu}: the domain has one")
        if virq in hv.virq_port:
            raise Hypercall(-A.EEXIST, f"VIRQ {virq} is bound to port {hv.virq_port[virq]}")
        port = hv.alloc_port(("virq", virq))
        hv.virq_port[virq] = port
        hv.write(arg + 8, struct.pack("<I", port))
        return 0
    if cmd in (A.EVTCHNOP_send, A.EVTCHNOP_unmask, A.EVTCHNOP_close):
        port = struct.unpack("<I", hv.read(arg, 4))[0]
        if not 0 < port < A.NR_EVENT_CHANNELS or port not in hv.ports:
            raise Hypercall(-A.EINVAL, f"port {port} is not bound")
        if cmd == A.EVTCHNOP_send:
            if hv.ports[port][0] != "backend":
                # Xen's evtchn_send signals interdomain and IPI channels only; a VIRQ
                # port is the hypervisor's to signal (-EINVAL, event_channel.c)
                raise Hypercall(-A.EINVAL, f"port {port} is bound to {hv.ports[port]}: "
                                           "the guest cannot send on it")
            hv.notify_backend(port)
        elif cmd == A.EVTCHNOP_unmask:
            hv.unmask(port)
        else:
            hv.close_port(port)
        return 0
    raise Hypercall(-A.ENOSYS, f"event_channel_op command {cmd}")


def hc_iret(hv, *_) -> None:
    """iret: pop the iret_context {eax, eip, cs, eflags[, esp, ss]} the stub built and
    return there; EFLAGS.IF becomes the event mask (public/arch-x86/xen-x86_32.h)."""
    hv.iret()


#: hypercall number -> handler(hv, ebx, ecx, edx, esi, edi) returning EAX, or None when
#: the handler set up the guest's registers itself (iret)
HYPERCALLS: dict[int, Callable] = {
    A.HYPERVISOR_set_trap_table: hc_set_trap_table,
    A.HYPERVISOR_mmu_update: hc_mmu_update,
    A.HYPERVISOR_stack_switch: hc_stack_switch,
    A.HYPERVISOR_set_callbacks: hc_set_callbacks,
    A.HYPERVISOR_multicall: hc_multicall,
    A.HYPERVISOR_update_va_mapping: hc_update_va_mapping,
    A.HYPERVISOR_set_timer_op: hc_set_timer_op,
    A.HYPERVISOR_xen_version: hc_xen_version,
    A.HYPERVISOR_console_io: hc_console_io,
    A.HYPERVISOR_iret: hc_iret,
    A.HYPERVISOR_mmuext_op: hc_mmuext_op,
    A.HYPERVISOR_sched_op: hc_sched_op,
    A.HYPERVISOR_event_channel_op: hc_event_channel_op,
}


def _fixup_selector(sel: int) -> int:
    """Xen's __fixup_guest_selector: a guest selector's RPL is raised to 1 at least."""
    sel &= 0xFFFF
    return sel | GUEST_RING if sel & 3 < GUEST_RING else sel


class Hypervisor(Monitor):
    """A Xen-style hypervisor running one paravirtualized guest (see the module docstring).

    Parameters
    ----------
    machine : a fresh :class:`~hvsim.Machine` to run on: its top :data:`HV_PAGES` pages
              are the hypervisor's, the rest the guest's RAM. None: a machine with
              ``memory`` bytes of guest RAM is made.
    program : the PV guest kernel (an assembled Program, entry ``start``, with a
              page-aligned ``hypercall_page`` label); booted by :meth:`boot`. None: call
              :meth:`boot` yourself.
    memory : the guest's RAM in bytes when no machine is given (a multiple of 4 KiB,
              64 KiB to 4 MiB).
    disk_sectors : the size of the block device the backend serves.
    """
    name = "pv"

    def __init__(self, machine: Optional[Machine] = None, program=None, *,
                 memory: int = GUEST_RAM, disk_sectors: int = DISK_SECTORS):
        if machine is not None:
            if not isinstance(machine, Machine):
                raise TypeError(f"machine must be an hvsim Machine, got "
                                f"{type(machine).__name__}")
            memory = len(machine.memory) - HV_PAGES * PAGE
        if isinstance(memory, bool) or not isinstance(memory, int) or memory % PAGE \
                or not 1 << 16 <= memory <= 1 << 22:
            raise ValueError(f"the guest's RAM must be a multiple of 4 KiB from 64 KiB to "
                             f"4 MiB (beside the hypervisor's {HV_PAGES} pages), got {memory!r}")
        if isinstance(disk_sectors, bool) or not isinstance(disk_sectors, int) \
                or not 1 <= disk_sectors <= 1 << 16:
            raise ValueError(f"disk_sectors must be 1..65536, got {disk_sectors!r}")
        self.ram = memory
        self.machine = m = machine if machine is not None else Machine(
            memory=memory + HV_PAGES * PAGE)
        self._st = m._st
        # the hot path's view of the state array (the same memory): indexing it gives and
        # takes Python ints, cheaper than ndarray.item and ndarray's stores
        self._stv = memoryview(m._st)
        self._mem = m._raw_mem
        self._bytes = memoryview(m._raw_mem)      # cheaper than numpy for one byte
        hv = memory
        self.tables_page = hv + _TABLES * PAGE
        self.shared_info = hv + _SHARED_INFO * PAGE
        hv_l1 = hv + _HV_L1 * PAGE
        self.hypervisor_pde = hv_l1 | PTE_RW | PTE_P
        self.tables = install(m, gdt=self.tables_page + _GDT_AT, tss=self.tables_page + _TSS_AT,
                              idt=self.tables_page + _IDT_AT,
                              ring0_stack=hv + (_STACK0 + 1) * PAGE)
        m.route(range(256), "host")
        self.frames = FrameTable(self._mem, memory // PAGE, (self.shared_info >> 12,),
                                 self.hypervisor_pde, self.flush_tlb)
        self.disk = bytearray(disk_sectors * 512)
        self.base = 0                       # the directory in CR3 (its address)
        self.trap_table: dict = {}          # vector -> (flags, cs, address)
        self.event_callback: Optional[tuple] = None
        self.failsafe_callback: Optional[tuple] = None
        self.ports: dict = {}               # port -> what it is bound to
        self.virq_port: dict = {}
        self.deadline = 0                   # VIRQ_TIMER's system time (0: none)
        self.hypercalls: dict = {}                   # traps into the hypervisor, by number
        self.batched = collections.Counter()         # calls made inside multicalls, by number
        self._interrupts = 0                         # real timer interrupts handled
        self.errors = collections.Counter()          # failed hypercalls, by name
        self.bounced = collections.Counter()         # exceptions bounced, by vector name
        self.upcalls = 0
        self.events_sent = collections.Counter()     # by port
        self.pt_updates = 0
        self.multicall_entries = 0
        self.idle_instructions = 0
        self.refusals: collections.deque = collections.deque(maxlen=64)
        self._log: collections.deque = collections.deque(maxlen=LOG_CAP)
        self._console: list = []
        self._state = "running"
        self._final: Optional[MonitorEvent] = None
        self.shutdown_reason: Optional[str] = None
        self.backend = None                 # the block backend, made at boot
        self.console_backend = None         # the console's
        self.backends: dict = {}            # port -> backend
        self.start_info = 0
        if program is not None:
            self.boot(program)

    # ---- the protocol ---------------------------------------------------------------------
    @property
    def log(self) -> list:
        """The newest :data:`LOG_CAP` exits handled, oldest first (hypercalls are kept as
        tuples until read: they are the hot path)."""
        out = []
        for e in self._log:
            if type(e) is tuple:
                nr, regs, rc, eip, tsc = e
                args = (regs[3], regs[1], regs[2], regs[6], regs[7])    # EBX ECX EDX ESI EDI
                text = (f"hypercall {A.hypercall_name(nr)}"
                        f"({', '.join(f'{a:#x}' for a in args)}) -> "
                        f"{'-' if rc is None else A.errno_name(rc)}")
                e = LogEntry("hypercall", f"INT {A.HYPERCALL_VECTOR:#x}",
                             A.HYPERCALL_VECTOR, None, eip, GUEST_RING, None, text, tsc)
            out.append(e)
        return out

    @property
    def vcpu(self):
        """The guest's CPU: the real one (a PV guest knows it runs in ring 1)."""
        return self.machine.cpu

    @property
    def console(self) -> str:
        if len(self._console) > 1:
            self._console = ["".join(self._console)]
        return self._console[0] if self._console else ""

    def console_out(self, text: str) -> None:
        self._console.append(text)

    @property
    def state(self) -> str:
        return self._state

    @property
    def stats(self) -> dict:
        d = dict.fromkeys(STATS, 0)
        # a hypercall is charged as one (hvsim.cost), not also as a trap: the traps are
        # the guest's exceptions bounced and the real timer's interrupts
        bounced = sum(self.bounced.values())
        d.update(traps=bounced + self._interrupts, reflected=bounced, injected=self.upcalls,
                 hypercalls=sum(self.hypercalls.values()), pt_updates=self.pt_updates,
                 tables_validated=self.frames.validated,
                 io_requests=sum(b.requests for b in self.backends.values()))
        return d

    @property
    def counters(self) -> dict:
        d = self.machine.counters.to_dict()
        d.update({f"monitor {k}": v for k, v in self.stats.items()})
        d.update({f"hypercall {A.hypercall_name(n)}": v for n, v in sorted(self.hypercalls.items())})
        d.update({f"batched {A.hypercall_name(n)}": v for n, v in sorted(self.batched.items())})
        d.update({f"hypercall error {k}": v for k, v in sorted(self.errors.items())})
        d.update({f"bounced {k}": v for k, v in sorted(self.bounced.items())})
        d.update({f"event sent port {p}": v for p, v in sorted(self.events_sent.items())})
        d.update(upcalls=self.upcalls, pt_updates=self.pt_updates,
                 multicall_entries=self.multicall_entries,
                 type_flushes=self.frames.type_flushes,
                 idle_instructions=self.idle_instructions)
        for backend in self.backends.values():
            d.update(backend.counters())
        return d

    # ---- guest memory, as the hypervisor's copy_from_guest / copy_to_guest -----------------
    def read(self, va: int, n: int) -> bytes:
        """``n`` bytes at guest-virtual ``va`` (the guest kernel's rights): -EFAULT if not
        mapped, or if any of it is in the hypervisor's slot (Xen's access_ok)."""
        self._guest_range(va, n)
        try:
            return self.machine.read_linear(va & MASK32, n)
        except (GuestMemoryError, ValueError) as e:
            raise Hypercall(-A.EFAULT, f"guest memory at {va:#x}: {e}") from None

    def write(self, va: int, data: bytes) -> None:
        self._guest_range(va, len(data))
        try:
            self.machine.write_linear(va & MASK32, data)
        except (GuestMemoryError, ValueError) as e:
            raise Hypercall(-A.EFAULT, f"guest memory at {va:#x}: {e}") from None

    @staticmethod
    def _guest_range(va: int, n: int) -> None:
        if va < 0 or va + n > A.HYPERVISOR_VIRT_START:
            raise Hypercall(-A.EFAULT, f"guest memory at {va:#x} (+{n}): at or above "
                                       f"{A.HYPERVISOR_VIRT_START:#x}, the hypervisor's")

    # ---- the builder ------------------------------------------------------------------------
    def boot(self, program) -> None:
        """Xen's domain builder for ``program`` (see the module docstring)."""
        m, mem = self.machine, self._mem
        labels = getattr(program, "labels", None)
        if labels is None:
            raise TypeError(f"boot() wants an assembled Program, got {type(program).__name__}")
        end = program.origin + len(program.code)
        if program.origin < PAGE or end > self.ram:
            raise ValueError(f"the kernel [{program.origin:#x}, {end:#x}) must lie in the "
                             f"guest's RAM above its first page (RAM: {self.ram:#x} bytes)")
        m.load(program)
        hcp = labels.get("hypercall_page")
        if hcp is None or hcp % PAGE or not program.origin <= hcp <= end - PAGE:
            raise ValueError("a PV kernel declares a page-aligned 'hypercall_page' (4096 bytes) "
                             "in its image: the builder fills it with the hypercall stubs")
        m.write_physical(hcp, A.hypercall_page())
        # the bootstrap tables, start_info, the block ring and a boot stack, after the image
        first = (end + PAGE - 1) // PAGE
        n_l1 = (self.ram + (4 << 20) - 1) >> 22
        l2 = first * PAGE
        l1s = [(first + 1 + i) * PAGE for i in range(n_l1)]
        self.start_info = si = (first + 1 + n_l1) * PAGE
        ring = si + PAGE
        cons_ring = ring + PAGE
        stack = cons_ring + PAGE
        if stack + PAGE > self.ram:
            raise ValueError(f"the kernel leaves no room for the builder's pages after it "
                             f"(needs {stack + PAGE - end:#x} bytes)")
        mem[l2:stack + PAGE] = 0
        pt_frames = {l2 >> 12} | {a >> 12 for a in l1s}
        for f in range(self.ram >> 12):
            flags = PTE_P | PTE_A | (0 if f in pt_frames else PTE_RW | PTE_D)
            at = l1s[f >> 10] + 4 * (f & 1023)
            mem[at:at + 4] = np.frombuffer(struct.pack("<I", (f << 12) | flags), np.uint8)
        for i, a in enumerate(l1s):
            mem[l2 + 4 * i:l2 + 4 * i + 4] = np.frombuffer(
                struct.pack("<I", a | PTE_A | PTE_US | PTE_RW | PTE_P), np.uint8)
        # the hypervisor's slot: its page table maps the tables page read-only
        hv_l1 = self.hypervisor_pde & PTE_FRAME
        mem[hv_l1:hv_l1 + PAGE] = 0
        mem[hv_l1:hv_l1 + 4] = np.frombuffer(struct.pack("<I", self.tables_page | PTE_A | PTE_P),
                                            np.uint8)
        mem[self.shared_info:self.shared_info + PAGE] = 0
        self._time_info()
        self._vcpu_byte(A.VI_UPCALL_MASK, 1)
        self.frames.pin(l2 >> 12, L2)
        self.frames.get_type(l2 >> 12, L2)          # the base pointer's reference
        self.base = l2
        st = self._st
        m.cpu.cr3 = l2
        m.cpu.cr0 = int(m.cpu.cr0) | (1 << 31) | (1 << 16)      # CR0.PG, CR0.WP
        self.frames.flushed()
        # the CPU now reads the GDT, IDT and TSS at their linear addresses in the slot
        lin = A.HYPERVISOR_VIRT_START
        tss = lin + _TSS_AT
        gdt = self.tables_page + _GDT_AT
        sel = self.tables.tss_selector
        d = bytearray(mem[gdt + sel:gdt + sel + 8].tobytes())
        d[2:5] = (tss & 0xFFFFFF).to_bytes(3, "little")
        d[7] = tss >> 24
        mem[gdt + sel:gdt + sel + 8] = np.frombuffer(bytes(d), np.uint8)
        st[L.GDTR_BASE] = lin + _GDT_AT
        st[L.IDTR_BASE] = lin + _IDT_AT
        st[L.TR_BASE] = tss
        # start_info
        info = bytearray(PAGE)
        info[:len(A.START_INFO_MAGIC)] = A.START_INFO_MAGIC
        struct.pack_into("<II", info, A.SIF_NR_PAGES, self.ram >> 12, self.shared_info)
        struct.pack_into("<II", info, A.SIF_PT_BASE, l2, 1 + n_l1)
        blk_port = self.alloc_port(("backend", "blk"))
        cons_port = self.alloc_port(("backend", "cons"))
        struct.pack_into("<III", info, A.SIF_BLK_RING, ring, blk_port, len(self.disk) // 512)
        struct.pack_into("<II", info, A.SIF_CONSOLE_MFN, cons_ring >> 12, cons_port)
        mem[si:si + PAGE] = np.frombuffer(bytes(info), np.uint8)
        from hvsim.paravirt.blkback import BlockBackend, ConsoleBackend
        self.backend = BlockBackend(self, ring, blk_port)
        self.console_backend = ConsoleBackend(self, cons_ring, cons_port)
        self.backends = {blk_port: self.backend, cons_port: self.console_backend}
        self._tss_stack(FLAT_RING1_DS, stack + PAGE)
        self.tables.enter(m, GUEST_RING, program.entry, stack + PAGE)
        m.cpu.esi = si
        m.cpu.eflags = FIXED1 | IF

    def _time_info(self) -> None:
        """vcpu_time_info: system time = TSC (tsc_to_system_mul 2^31, shift 1 = x1.0)."""
        at = self.shared_info + A.VI_TIME
        self._mem[at:at + 32] = np.frombuffer(struct.pack("<IIQQIbBxx", 2, 0, 0, 0, 1 << 31, 1,
                                                          0), np.uint8)

    def _tss_stack(self, ss: int, esp: int) -> None:
        at = self.tables_page + _TSS_AT + TSS_ESP0 + 8 * GUEST_RING
        self._mem[at:at + 8] = np.frombuffer(struct.pack("<II", esp & MASK32, ss), np.uint8)

    def _install_direct_trap(self) -> None:
        """Xen-32's fast system call path: a trap-table entry for INT 80H that ring 3 may
        use becomes a real trap gate into ring 1; the hypervisor is not involved."""
        t = self.trap_table.get(SYSCALL_VECTOR)
        at = self.tables_page + _IDT_AT + 8 * SYSCALL_VECTOR
        m = self.machine
        if t is not None and t[0] & A.TI_DPL_MASK == 3:
            gate = make_gate("interrupt" if t[0] & A.TI_CLEAR_EVENTS else "trap", t[1], t[2], 3)
            self._mem[at:at + 8] = np.frombuffer(struct.pack("<Q", gate), np.uint8)
            m.route(SYSCALL_VECTOR, "guest")
        else:
            self._mem[at:at + 8] = 0
            m.route(SYSCALL_VECTOR, "host")

    # ---- paging ---------------------------------------------------------------------------
    def flush_tlb(self) -> None:
        tlb_flush_vpid(self._st, self.machine._tlb, 0, 0)
        self._st[L.FETCH_LIN_PAGE] = -1
        self.frames.flushed()

    def invlpg(self, va: int) -> None:
        tlb_invlpg_vpid(self._st, self.machine._tlb, 0, va & MASK32)

    def new_baseptr(self, l2: int) -> None:
        """MMUEXT_NEW_BASEPTR: CR3 = ``l2`` (validated as a directory; it holds a reference)."""
        fr = self.frames
        fr.get_type(l2 >> 12, L2)
        old, self.base = self.base, l2
        fr.put_type(old >> 12)
        self.machine.cpu.cr3 = l2            # MOV CR3 flushes the TLB
        fr.flushed()

    # ---- events ---------------------------------------------------------------------------
    def _vcpu_byte(self, off: int, value: int) -> None:
        self._mem[self.shared_info + off] = value

    def alloc_port(self, what) -> int:
        for p in range(1, A.NR_EVENT_CHANNELS):
            if p not in self.ports:
                self.ports[p] = what
                return p
        raise Hypercall(-A.ENOSPC, "no free event channel")

    def close_port(self, port: int) -> None:
        what = self.ports.pop(port)
        if what[0] == "virq":
            del self.virq_port[what[1]]
        self._bit(A.SI_EVTCHN_PENDING, port, 0)

    def _bit(self, table: int, port: int, value: Optional[int] = None) -> int:
        at = self.shared_info + table + 4 * (port >> 5)
        word = int.from_bytes(self._mem[at:at + 4].tobytes(), "little")
        bit = 1 << (port & 31)
        if value is not None:
            word = word | bit if value else word & ~bit
            self._mem[at:at + 4] = np.frombuffer(struct.pack("<I", word), np.uint8)
        return 1 if word & bit else 0

    def send_event(self, port: int) -> None:
        """Make ``port`` pending (2-level ABI: pending bit, then if unmasked the selector bit
        and upcall_pending); the upcall follows when the guest has events unmasked."""
        self.events_sent[port] += 1
        if self._bit(A.SI_EVTCHN_PENDING, port):
            return                                  # already pending: the edge is lost
        self._bit(A.SI_EVTCHN_PENDING, port, 1)
        if not self._bit(A.SI_EVTCHN_MASK, port):
            self._mark_selector(port)

    def _mark_selector(self, port: int) -> None:
        at = self.shared_info + A.VI_PENDING_SEL
        sel = int.from_bytes(self._mem[at:at + 4].tobytes(), "little") | 1 << (port >> 5)
        self._mem[at:at + 4] = np.frombuffer(struct.pack("<I", sel), np.uint8)
        self._vcpu_byte(A.VI_UPCALL_PENDING, 1)

    def unmask(self, port: int) -> None:
        self._bit(A.SI_EVTCHN_MASK, port, 0)
        if self._bit(A.SI_EVTCHN_PENDING, port):
            self._mark_selector(port)

    def notify_backend(self, port: int) -> None:
        """EVTCHNOP_send from the guest: the backend on ``port`` has work."""
        backend = self.backends.get(port)
        if backend is not None:
            backend.kick()

    def run_backends(self) -> None:
        """The driver domain's turn: each backend serves what it was told of."""
        for backend in self.backends.values():
            backend.service()

    def set_deadline(self, deadline: int) -> None:
        self.deadline = deadline
        m = self.machine
        if not deadline:
            m.set_timer(None)
            return
        now = int(m.cpu.tsc)
        if deadline <= now:
            self._timer_fires()
        else:
            m.set_timer((min(deadline - now, MASK32), HOST_TIMER_VECTOR))

    def _timer_fires(self) -> None:
        self.deadline = 0
        self.machine.set_timer(None)
        port = self.virq_port.get(A.VIRQ_TIMER)
        if port is not None:
            self.send_event(port)

    def block(self) -> None:
        """SCHEDOP_block: events enabled; the vCPU sleeps until one is pending."""
        mem, si = self._mem, self.shared_info
        mem[si + A.VI_UPCALL_MASK] = 0
        if mem[si + A.VI_UPCALL_PENDING]:
            return
        self.run_backends()
        if mem[si + A.VI_UPCALL_PENDING]:
            return
        if self.deadline:
            m = self.machine
            now = int(m.cpu.tsc)
            if self.deadline > now:
                self.idle_instructions += self.deadline - now
                m.cpu.tsc = self.deadline
            self._timer_fires()
            return
        self._stop("halt", "the guest blocked with no event that can wake it (no timer, "
                           "no I/O in flight)")

    def shutdown(self, reason: str) -> None:
        self.shutdown_reason = reason
        self._stop("killed" if reason == "crash" else "halt", f"SCHEDOP_shutdown({reason})")

    def _stop(self, kind: str, reason: str) -> None:
        cpu = self.machine.cpu
        self._state = "halted" if kind == "halt" else "killed"
        self._final = MonitorEvent(kind, cpu.eip, cpu.cpl, 0, reason=reason)

    def _upcall(self) -> None:
        """Enter the guest's event callback, as an interrupt gate would, with events masked."""
        if self.event_callback is None:
            raise Kill("an event is pending but the guest registered no event callback "
                       "(set_callbacks)")
        self.upcalls += 1
        cs, eip = self.event_callback
        self._bounce(cs, eip, None, int(self.machine.cpu.eip), clear_events=True)

    def _bounce(self, cs: int, handler: int, error: Optional[int], ret_eip: int,
                clear_events: bool) -> None:
        """Xen's create_bounce_frame: the frame an interrupt gate builds, on the guest's
        ring-1 stack (TSS.SS1:ESP1 from ring 3), with EFLAGS.IF = !upcall_mask and the
        saved mask in bits 16-23 of the CS slot."""
        m, mem = self.machine, self._mem
        cpu = m.cpu
        mask = int(mem[self.shared_info + A.VI_UPCALL_MASK])
        image = (int(cpu.eflags) & ~IF) | (0 if mask else IF)
        old_cs = int(cpu.cs) | (mask << 16)
        if cpu.cpl > GUEST_RING:
            at = self.tables_page + _TSS_AT + TSS_ESP0 + 8 * GUEST_RING
            esp, ss = struct.unpack("<II", mem[at:at + 8].tobytes())
            frame = [int(cpu.ss), int(cpu.esp), image, old_cs, ret_eip]
        else:
            esp, ss = int(cpu.esp), int(cpu.ss)
            frame = [image, old_cs, ret_eip]
        if error is not None:
            frame.append(error)
        new_esp = (esp - 4 * len(frame)) & MASK32
        try:
            m.write_linear(new_esp, struct.pack(f"<{len(frame)}I", *reversed(frame)))
        except (GuestMemoryError, ValueError) as e:
            raise Kill(f"the guest's kernel stack at {new_esp:#x} cannot take a bounce frame "
                       f"({e}): Xen would crash the domain") from None
        if cpu.cpl > GUEST_RING:
            cpu.ss = ss & 0xFFFF
        cpu.esp = new_esp
        cpu.cs = cs
        cpu.eip = handler
        cpu.eflags = int(cpu.eflags) & ~DELIVER_CLEAR
        if clear_events:
            mem[self.shared_info + A.VI_UPCALL_MASK] = 1

    def iret(self) -> None:
        """HYPERVISOR_iret: the guest's stack holds eax, eip, cs, eflags[, esp, ss].

        The whole frame is read and checked before anything changes. A frame the
        hypervisor cannot read, or selectors that are not the guest's own, stop the
        guest: Xen crashes the domain when it cannot read the frame, and its own IRET
        to bad selectors would fault (into the failsafe callback, which hvsim does not
        model)."""
        cpu = self.machine.cpu
        esp = int(cpu.esp)
        try:
            eax, eip, cs, eflags = struct.unpack("<IIII", self.read(esp, 16))
            cs = _fixup_selector(cs)
            if cs & 3 == 3:
                new_esp, ss = struct.unpack("<II", self.read(esp + 16, 8))
                ss = _fixup_selector(ss)
        except Hypercall as h:
            raise Kill(f"HYPERVISOR_iret: the frame at {esp:#x} cannot be read ({h}): Xen "
                       "would crash the domain") from None
        if cs not in (FLAT_RING1_CS, FLAT_RING3_CS):
            raise Kill(f"HYPERVISOR_iret to code selector {cs:#x} at {eip:#x}: not a guest "
                       "code segment")
        if cs == FLAT_RING3_CS and ss != FLAT_RING3_DS:
            raise Kill(f"HYPERVISOR_iret to ring 3 with stack selector {ss:#x}: not the "
                       f"guest's ring-3 data segment ({FLAT_RING3_DS:#x})")
        cpu.eax = eax
        cpu.eflags = (int(cpu.eflags) & ~_IRET_SET) | (eflags & _IRET_SET) | IF
        self._mem[self.shared_info + A.VI_UPCALL_MASK] = 0 if eflags & IF else 1
        if cs == FLAT_RING3_CS:
            cpu.cs = cs
            cpu.ss = ss
            cpu.esp = new_esp
            for s in ("ds", "es", "fs", "gs"):          # as IRET to ring 3 nulls them
                if int(getattr(cpu, s)) & 3 < 3:
                    setattr(cpu, s, 0)
        else:
            cpu.cs = cs
            cpu.esp = (esp + 16) & MASK32
        cpu.eip = eip

    # ---- running ------------------------------------------------------------------------
    def run(self, max_steps: int = 1_000_000) -> Event:
        """Run the guest until it stops (shutdown, killed) or ``max_steps`` steps are done;
        a step is an instruction, a hypercall or a trap the hypervisor handled."""
        max_steps = self._check_budget(max_steps)
        m = self.machine
        st = self._stv
        run = m._run
        used = 0
        while used < max_steps:
            if self._state != "running":
                return self._final
            kind = run(max_steps - used)
            steps = st[L.EXIT_STEPS]
            if kind == EXIT_BUDGET:
                used += steps
                continue
            used += steps if steps > 1 else 1
            if (kind == EXIT_EXCEPTION and st[_X_VECTOR] == A.HYPERCALL_VECTOR
                    and st[_X_SOURCE] == _SOFTWARE and st[_X_CPL] == GUEST_RING):
                final = self._hypercall(st[_X_EIP])
            else:
                final = self.handle(m._event(kind))
            if final is not None:
                return final
        cpu = m.cpu
        return MonitorEvent("budget", cpu.eip, cpu.cpl, used, reason=f"{max_steps} steps done")

    def step(self) -> Optional[Event]:
        """One guest instruction, or one hypercall or trap handled; the event that stopped
        the guest, or None."""
        if self._state != "running":
            return self._final
        m = self.machine
        kind = m._run(1)
        if kind == EXIT_BUDGET:
            return None
        st = self._stv
        if (kind == EXIT_EXCEPTION and st[_X_VECTOR] == A.HYPERCALL_VECTOR
                and st[_X_SOURCE] == _SOFTWARE and st[_X_CPL] == GUEST_RING):
            return self._hypercall(st[_X_EIP])
        return self.handle(m._event(kind))

    def _hypercall(self, eip: int) -> Optional[MonitorEvent]:
        """The hot path: EAX selects the handler, EBX..EDI are its arguments."""
        st = self._stv
        r = st[:8].tolist()                       # EAX ECX EDX EBX ESP EBP ESI EDI
        nr = r[0]
        st[L.EIP] = (eip + 2) & MASK32            # after int 0x82 (the stub's ret follows)
        st[L.ATTN] = 1
        counts = self.hypercalls
        counts[nr] = counts.get(nr, 0) + 1
        fn = HYPERCALLS.get(nr)
        try:
            if fn is None:
                raise Hypercall(-A.ENOSYS, f"hypercall {A.hypercall_name(nr)} is not "
                                           "implemented")
            rc = fn(self, r[3], r[1], r[2], r[6], r[7])
        except Hypercall as h:
            rc = h.rc
            if str(h):
                self._note_refusal(f"{A.hypercall_name(nr)}: {h}")
        except Kill as k:
            return self._kill(str(k), eip)
        if rc is not None:
            if rc < 0:
                self.errors[A.hypercall_name(nr)] += 1
            st[L.EAX] = rc & MASK32
        self._log.append((nr, r, rc, eip, st[L.TSC]))
        return self._after()

    def _after(self) -> Optional[MonitorEvent]:
        """Back to the guest: deliver a pending event if it has them unmasked."""
        if self._state != "running":
            return self._final
        mv, si = self._bytes, self.shared_info
        if mv[si + A.VI_UPCALL_PENDING] and not mv[si + A.VI_UPCALL_MASK]:
            try:
                self._upcall()
            except Kill as k:
                return self._kill(str(k), int(self.machine.cpu.eip))
        return None

    def handle(self, ev: Event) -> Optional[MonitorEvent]:
        """Every exit but the hypercall hot path: the timer, the guest's exceptions and
        software interrupts (bounced), anything else stops the guest."""
        try:
            if ev.kind == "interrupt" and ev.vector == HOST_TIMER_VECTOR:
                self._interrupts += 1
                self._record(ev, "tick", "timer deadline: VIRQ_TIMER")
                self._timer_fires()
                self.run_backends()              # the scheduler gives the driver domain a turn
            elif ev.kind == "exception":
                self._exception(ev)
            elif ev.kind == "breakpoint":
                return MonitorEvent("breakpoint", ev.eip, ev.cpl, ev.steps, reason="host breakpoint")
            else:
                raise Kill(f"the machine stopped: {ev}")
        except Kill as k:
            return self._kill(str(k), ev.eip)
        return self._after()

    def _exception(self, ev: Event) -> None:
        """Bounce an exception or software interrupt to the guest's trap table."""
        vector = ev.vector
        software = ev.source == "software"
        if software and vector == A.HYPERCALL_VECTOR:
            # the real gate of int 0x82 has DPL 1: from ring 3 it is #GP(vector*8 + 2)
            vector, error, ret = GP, A.HYPERCALL_VECTOR * 8 + 2, ev.eip
        elif software:
            # Xen's real IDT gates INT n at DPL 0 (but INT3 and INTO's, at DPL 3): the CPU
            # raises #GP(n*8 + 2) and do_general_protection lets it through only if the
            # guest's trap-table entry allows the ring (permit_softint); a vector with no
            # entry has DPL 0, so from ring 1 or 3 it is a #GP the guest handles, not a
            # crash
            t = self.trap_table.get(vector)
            dpl = 0 if t is None else t[0] & A.TI_DPL_MASK
            if vector not in (BP, OF) and dpl < ev.cpl:
                vector, error, ret = GP, vector * 8 + 2, ev.eip
            else:
                error, ret = None, (ev.eip + ev.length) & MASK32
        else:
            error = ev.error_code if vector in HAS_ERROR_CODE else None
            ret = ev.eip if ev.source == "fault" else int(self.machine.cpu.eip)
        t = self.trap_table.get(vector)
        if t is None:
            what = f"'{ev.insn}' " if ev.insn is not None and vector == GP else ""
            raise Kill(f"{vector_name(vector)} {what}at {ev.eip:#010x} in ring {ev.cpl} and the "
                       "guest has no handler for it in its trap table (set_trap_table): Xen "
                       "would crash the domain")
        if vector == PF:
            at = self.shared_info + A.VI_CR2
            self._mem[at:at + 4] = np.frombuffer(struct.pack("<I", ev.address), np.uint8)
        flags, cs, handler = t
        self._bounce(cs, handler, error, ret, clear_events=bool(flags & A.TI_CLEAR_EVENTS))
        self.bounced[vector_name(vector)] += 1
        insn = f" ('{ev.insn}')" if ev.insn is not None and vector == GP else ""
        self._record(ev, "reflected", f"bounced {vector_name(vector)}{insn} to the guest's "
                                      f"handler {handler:#x}")

    def _record(self, ev: Event, what: str, action: str) -> None:
        self._log.append(LogEntry(what, ev.name, ev.vector, ev.error_code, ev.eip, ev.cpl,
                                  ev.insn, action, int(self.machine.cpu.tsc)))

    def _note_refusal(self, text: str) -> None:
        self.refusals.append(text)

    def _kill(self, reason: str, eip: int) -> MonitorEvent:
        cpu = self.machine.cpu
        self._log.append(LogEntry("killed", "hypervisor", None, None, eip, cpu.cpl, None,
                                  f"killed the guest: {reason}", int(cpu.tsc)))
        self._state = "killed"
        self._final = MonitorEvent("killed", eip, cpu.cpl, 0, reason=reason)
        return self._final

    # ---- snapshots ----------------------------------------------------------------------
    _SCALARS = ("base", "trap_table", "event_callback", "failsafe_callback", "ports",
                "virq_port", "deadline", "upcalls", "pt_updates", "multicall_entries",
                "idle_instructions", "_state", "_final", "shutdown_reason", "_interrupts")
    _COUNTS = ("hypercalls", "batched", "errors", "bounced", "events_sent")

    def snapshot(self) -> HypervisorSnapshot:
        scalars = {k: getattr(self, k) for k in self._SCALARS}
        for k in ("trap_table", "ports", "virq_port"):
            scalars[k] = dict(scalars[k])
        scalars["console"] = self.console
        scalars["backends"] = {p: b.snapshot() for p, b in self.backends.items()}
        return HypervisorSnapshot(self.machine.snapshot(), self.frames.snapshot(), scalars,
                                  {k: dict(getattr(self, k)) for k in self._COUNTS},
                                  tuple(self._log), bytes(self.disk))

    def restore(self, snap: HypervisorSnapshot) -> None:
        if not isinstance(snap, HypervisorSnapshot):
            raise TypeError(f"restore() takes a HypervisorSnapshot, got {type(snap).__name__}")
        self.machine.restore(snap.machine)
        self.frames.restore(snap.frames)
        for k, v in snap.scalars.items():
            if k == "console":
                self._console = [v] if v else []
            elif k == "backends":
                for p, b in v.items():
                    self.backends[p].restore(b)
            else:
                setattr(self, k, dict(v) if isinstance(v, dict) else v)
        for k, v in snap.counts.items():
            # (hypercalls is a plain dict: the hot path's own counting)
            setattr(self, k, dict(v) if k == "hypercalls" else collections.Counter(v))
        self._log = collections.deque(snap.log, maxlen=LOG_CAP)
        self.disk[:] = snap.disk

    def __repr__(self):
        cpu = self.machine.cpu
        return (f"<Hypervisor {self._state}, ring {cpu.cpl}, eip={cpu.eip:#x}, "
                f"{sum(self.hypercalls.values())} hypercalls, {self.upcalls} upcalls>")
