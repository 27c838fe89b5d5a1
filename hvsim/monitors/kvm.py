"""A KVM-shaped VMM written in Python, on hvsim's VT-x (the monitor layer; not jitted).

KVM's split (OLS 2007; Linux ``arch/x86/kvm/vmx/vmx.c``; ``include/uapi/linux/kvm.h``),
on one hvsim machine:

* the *hardware*: the machine's VMX root and non-root operation, the VMCS, VM entry and
  exit (hvsim/vtx kernels) -- exactly what a guest-written hypervisor gets too;
* the *kernel* part, :class:`VCPU`: ``run()`` enters the guest (VMLAUNCH, then VMRESUME)
  and handles the exits KVM handles without leaving the kernel -- CPUID, control-register
  accesses, external interrupts (the host timer), the interrupt window, HLT while a timer
  runs (the vCPU blocks until the next tick) -- each counted by exit reason;
* the *user-space* part (QEMU's place): what ``run()`` returns, shaped like
  ``struct kvm_run`` -- port I/O (``io``: direction, size, port, data), HLT with no
  timer, a triple fault (``shutdown``), a failed entry (``fail_entry`` with the hardware
  reason), VMCALL (``hypercall``); :class:`Devices` models the console and the timer
  there, as QEMU's device models would.

Memory. The machine's memory is the guest's RAM (guest-physical address = the machine's
physical address: without EPT, VT-x gives no other) followed by a host area the VMM
keeps for itself: the VMXON and VMCS regions, the I/O and MSR bitmaps, the host's GDT,
TSS and page directory, and the identity page table that lets a guest run "with paging
off" although VMX non-root operation requires CR0.PG = 1 (no unrestricted guest): the
real CR0.PG is 1, the CR0 guest/host mask owns PG, and the read shadow tells the guest
it is 0 -- KVM's ``ept_identity_map`` trick, needed on every VT-x before Westmere.
Without EPT a guest can reach the host area with physical addresses: that is the
isolation shadow paging or EPT provides, and the lessons say so. With ``VM(ept=True)``
the EPT maps the guest's RAM only, and a guest access anywhere else is an EPT violation
that KVM hands to user space as MMIO: ``KVM_EXIT_MMIO`` with the address, the length and,
for a write, the data. As KVM's instruction emulator does, the VMM finishes the
instruction itself: a store is complete when user space sees it; a load takes the data
user space puts in ``mmio_data`` of the KvmRun it got, on the next ``run()``. hvsim
emulates the MOV forms device drivers use (MOV to and from memory, MOV with an
immediate, the moffs forms, MOVZX/MOVSX), from the decoded instruction the exit carries;
anything else ends in ``KVM_EXIT_INTERNAL_ERROR`` with suberror 1 (emulation), as KVM's
emulator reports an instruction it cannot do.

TLB. Like KVM since 2008, the vCPU runs with a VPID of its own (VPID 1; ``VM(vpid=False)``
turns it off): the TLB tags the guest's translations with it, so VM exits and entries
do not flush them (SDM Vol. 3C, 29.1, 29.4).

Registers. VT-x saves no general registers: after an exit EAX..EDI are still the
guest's, in the CPU (the VMM's assembly would save them; this one runs no code), while
the guest's ESP, EIP and EFLAGS are in the VMCS. :attr:`VCPU.regs` reads them where
they are.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Optional

from hvsim.arch import layout as L
from hvsim.arch.exits import EXIT_BUDGET, EXIT_VMEXIT
from hvsim.arch import vmcs as V
from hvsim.arch import vmx as X
from hvsim.arch.cr import CR0_PE, CR0_NE, CR0_PG, CR0_ET, CR0_WP, CR4_PGE, CR4_PSE, CR4_VMXE
from hvsim.arch.vectors import PF
from hvsim.arch.flags import FIXED1, IF
from hvsim.arch.pte import PTE_P, PTE_RW, PTE_US
from hvsim.asm.table import REG32
from hvsim.cpu import decode as D
from hvsim.instruction import PFX_OPSIZE, from_exit_info
from hvsim.machine import Event, Machine
from hvsim.mmu.shadow import HIDDEN, MMIO, TRUE, ShadowError, ShadowMMU
from hvsim.mmu.tlb import tlb_flush_vpid
from hvsim.monitors.base import LogEntry, Monitor, MonitorEvent, STATS, shadow_stats
from hvsim.monitors.devices import BlockDevice
from hvsim.monitors.stores import MOFFS_LOADS, MOV_LOADS, sized_reg, store_of
from hvsim.rings.setup import install
from hvsim.vtx import checks as K

__all__ = ["VM", "VCPU", "Vmcs", "KvmRun", "Devices", "KVM_EXIT"]

KVM_INTERNAL_ERROR_EMULATION = 1     # kvm_run.internal.suberror (include/uapi/linux/kvm.h)
# struct kvm_run's exit reasons (include/uapi/linux/kvm.h)
KVM_EXIT = {"unknown": 0, "exception": 1, "io": 2, "hypercall": 3, "debug": 4, "hlt": 5,
            "mmio": 6, "irq_window_open": 7, "shutdown": 8, "fail_entry": 9, "intr": 10,
            "internal_error": 17}
KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT = 0, 1
_ER = X.ExitReason

PAGE = 4096
SHADOW_POOL_FIRST, SHADOW_POOL_PAGES = 24, 64   # the shadow tables' frames (without EPT)
HOST_AREA_PAGES = SHADOW_POOL_FIRST + SHADOW_POOL_PAGES   # see VM for the layout
HOST_TIMER_VECTOR = 0x20        # the host's own timer, taken as external-interrupt exits
CONSOLE_PORT = 0xE9
TIMER_PERIOD_PORT = 0x40
TIMER_VECTOR_PORT = 0x41
FLOATING_BUS = 0xFFFFFFFF


# field name -> (state-array index, mask of its width): the one lookup a read makes
_READ = {name: (L.VMCS_CACHE + V.slot_of(enc), (1 << V.WIDTH_BITS[V.width_of(enc)]) - 1)
         for name, enc in V.FIELDS.items()}


_idx = V.state_index


# the fields the exit path reads on every exit, as state-array indices
_I_REASON, _I_QUAL, _I_INSN_LEN = _idx("VM_EXIT_REASON"), _idx("EXIT_QUALIFICATION"), \
    _idx("VM_EXIT_INSTRUCTION_LEN")
_I_RIP, _I_RSP, _I_RFLAGS = _idx("GUEST_RIP"), _idx("GUEST_RSP"), _idx("GUEST_RFLAGS")
_I_SS_AR, _I_INTR_INFO = _idx("GUEST_SS_AR_BYTES"), _idx("VM_EXIT_INTR_INFO")
_I_IDT_VECTORING = _idx("IDT_VECTORING_INFO_FIELD")
_INTR_INFO_VALID = X.INTR_INFO_VALID


class _Tally(collections.Counter):
    """A Counter that the exit path can bump at a plain dict's cost.

    Counter defines ``__delitem__`` in Python, and CPython serves item stores and deletes
    through one type slot: so every ``counter[key] += 1`` store calls back into Python.
    With dict's own ``__delitem__`` (deleting a missing key raises KeyError, as a dict's
    does) stores stay in C. Everything else is Counter's; without that slot sharing
    it is just slower, never different."""
    __delitem__ = dict.__delitem__


class Vmcs:
    """The current VMCS of a machine, field by SDM name: ``vmcs["GUEST_RIP"]``.

    Reading and writing go to the processor's copy (as VMREAD and VMWRITE do), with
    VMWRITE's rules: an unknown name is a KeyError naming the nearest ones, a read-only
    (VM-exit information) field refuses a write, and a value must fit the field's width
    (natural width is 32 bits on IA-32). ``vmcs.get_high(name)`` and the 64-bit fields'
    full values are available as ints."""

    def __init__(self, machine: Machine):
        self._st = machine._st

    def __getitem__(self, name: str) -> int:
        try:
            index, mask = _READ[name]
        except KeyError:
            self._encoding(name)                 # raises the KeyError that names neighbours
            raise
        return int(self._st[index]) & mask

    @staticmethod
    def _encoding(name: str) -> int:
        try:
            return V.FIELDS[name]
        except KeyError:
            import difflib
            close = difflib.get_close_matches(str(name), V.FIELDS, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"no VMCS field named {name!r}{hint}") from None

    def __setitem__(self, name: str, value: int) -> None:
        enc = self._encoding(name)
        if V.type_of(enc) == V.T_EXIT_INFO:
            raise ValueError(f"{name} is a VM-exit information field: read-only (VMWRITE "
                             f"would fail with VM-instruction error 13)")
        bits = V.WIDTH_BITS[V.width_of(enc)]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
            raise ValueError(f"{name} is a {bits}-bit field; {value!r} does not fit")
        if bits == 64 and value >= 1 << 63:
            value -= 1 << 64                     # the int64 slot holds the bit pattern
        self._st[L.VMCS_CACHE + V.slot_of(enc)] = value

    def __contains__(self, name) -> bool:
        return name in V.FIELDS

    def items(self):
        return ((name, self[name]) for name in V.FIELDS)


@dataclasses.dataclass
class IoExit:
    direction: int          # KVM_EXIT_IO_IN (0) or KVM_EXIT_IO_OUT (1)
    size: int               # bytes
    port: int
    count: int
    data: int               # OUT: the value written; IN: the answer, set by the caller


@dataclasses.dataclass
class KvmRun:
    """What ``VCPU.run()`` returns: ``struct kvm_run``'s exit part, with hvsim's extras
    (the VMX exit that caused it, and words for a failed entry)."""
    exit_reason: int
    hardware_exit_reason: int = 0        # the VMX basic exit reason (or full, for fail_entry)
    io: Optional[IoExit] = None
    hypercall_nr: Optional[int] = None
    hypercall_args: tuple = ()
    fail_entry_reason: Optional[int] = None
    fail_entry_explanation: str = ""
    internal_suberror: Optional[int] = None
    mmio_phys_addr: Optional[int] = None
    mmio_is_write: bool = False
    mmio_len: int = 0                    # bytes of the access; 0: an access hvsim cannot emulate
    mmio_data: Optional[bytes] = None    # a write's data; for a read, user space sets it
    ready_for_interrupt_injection: bool = False
    if_flag: bool = False

    @property
    def name(self) -> str:
        return next(k for k, v in KVM_EXIT.items() if v == self.exit_reason)

    def __str__(self):
        s = f"KVM_EXIT_{self.name.upper()}"
        if self.io is not None:
            d = "OUT" if self.io.direction == KVM_EXIT_IO_OUT else "IN"
            s += f" {d} port {self.io.port:#x} size {self.io.size}"
        if self.mmio_phys_addr is not None:
            s += f" {'write' if self.mmio_is_write else 'read'} at {self.mmio_phys_addr:#x}"
            if self.mmio_len:
                s += f" len {self.mmio_len}"
                if self.mmio_is_write:
                    s += f" data {self.mmio_data.hex()}"
        if self.fail_entry_reason is not None:
            s += f" hardware_entry_failure_reason={self.fail_entry_reason:#x}"
            if self.fail_entry_explanation:
                s += f": {self.fail_entry_explanation}"
        return s


class Devices:
    """User-space device models (QEMU's side): the console (port E9h), the timer (ports
    40h period, 41h vector), as the other monitors' virtual devices, and a small disk
    (:class:`BlockDevice`, ports 1F0h-1F7h)."""

    def __init__(self):
        self.console = ""
        self.timer_period = 0
        self.timer_vector = HOST_TIMER_VECTOR
        self.disk = BlockDevice()

    def out(self, port: int, size: int, value: int) -> str:
        if port in self.disk.ports():
            return self.disk.out(port, value)
        if port == CONSOLE_PORT:
            self.console += chr(value & 0xFF)
            return f"console {chr(value & 0xFF)!r}"
        if port == TIMER_PERIOD_PORT:
            self.timer_period = value
            return f"timer period {value}" if value else "timer stopped"
        if port == TIMER_VECTOR_PORT:
            if value & 0xFF < 32:
                raise ValueError(f"the guest programs its timer with vector {value & 0xFF}, "
                                 "an exception vector")
            self.timer_vector = value & 0xFF
            return f"timer vector {self.timer_vector:#x}"
        return f"port {port:#x} has no device, {value:#x} dropped"

    def in_(self, port: int) -> int:
        if port in self.disk.ports():
            return self.disk.in_(port)
        if port == TIMER_PERIOD_PORT:
            return self.timer_period
        if port == TIMER_VECTOR_PORT:
            return self.timer_vector
        return 0 if port == CONSOLE_PORT else FLOATING_BUS


# the host's bootstrap: enter VMX root operation and make the VMCS current (the rest of
# the VMCS is written from Python, as VMWRITEs would)
_BOOTSTRAP = """
    mov ecx, 0x3a           ; IA32_FEATURE_CONTROL: lock | enable VMX outside SMX
    mov eax, 5
    xor edx, edx
    wrmsr
    vmxon [{ptrs}]
    vmclear [{ptrs} + 8]
    vmptrld [{ptrs} + 8]
    hlt
"""


class VM:
    """A virtual machine: guest RAM and one vCPU on an hvsim machine (KVM_CREATE_VM,
    KVM_SET_USER_MEMORY_REGION and KVM_CREATE_VCPU in one).

    Host area, right after the guest's RAM (page offsets): 0 VMXON region, 1 VMCS region,
    2-3 I/O bitmaps A and B, 4 MSR bitmap, 5 the host page directory (4 MiB pages),
    6 the guest's identity page directory, 7-14 its page tables (up to 32 MiB of RAM),
    15 host GDT, TSS and bootstrap code, 16 the host IDT, 17-21 the EPT (with
    ``ept=True``), 22-23 the host stack, 24-87 the shadow page tables (without EPT)."""

    def __init__(self, memory: Optional[int] = None, *, machine: Optional[Machine] = None,
                 ept: bool = False, vpid: bool = True, unsync: bool = False):
        """``memory``: the guest's RAM in bytes (a machine is made with the host area
        after it); or ``machine``: a fresh machine whose top HOST_AREA_PAGES pages become
        the host area and the rest the guest's RAM. ``ept``: give the guest an EPT;
        ``vpid``: tag its TLB entries with a VPID of its own (as KVM does by default),
        else every VM exit and entry flushes the TLB. Without EPT the guest runs on
        shadow page tables (hvsim/mmu/shadow.py); ``unsync``: their written leaf tables
        stay writable until the guest's next INVLPG or CR3 load (KVM's unsync pages)."""
        host_bytes = HOST_AREA_PAGES * PAGE
        if machine is not None:
            if memory is not None:
                raise ValueError("give the guest's memory size or a machine, not both")
            if not isinstance(machine, Machine):
                raise TypeError(f"machine must be an hvsim Machine, got {type(machine).__name__}")
            memory = len(machine.memory) - host_bytes
        elif memory is None:
            memory = 1 << 20
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 64 * 1024 \
                or memory % PAGE or memory > 32 << 20:
            raise ValueError(f"guest memory must be a multiple of 4 KiB between 64 KiB and "
                             f"32 MiB (the machine holds it and a {host_bytes // 1024} KiB "
                             f"host area), got {memory!r}")
        self.memory_size = memory
        self.host_base = memory
        self.machine = machine if machine is not None else Machine(memory=memory + host_bytes)
        for name, value in (("ept", ept), ("vpid", vpid), ("unsync", unsync)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        self.ept = ept
        self.vpid = vpid
        self.unsync = unsync
        self.vcpu: Optional[VCPU] = None

    def ept_tables(self) -> int:
        """Write the EPT (SDM Vol. 3C, 29.3) that maps the guest-physical space: the
        guest's RAM at the same host-physical addresses (2 MiB leaves where a whole 2 MiB
        region is RAM, 4 KiB ones around its end) and the identity page table the VMM
        keeps for the guest's "paging off" (host pages 6-14); nothing else -- the VMXON
        and VMCS regions, the bitmaps and the host's own tables are out of the guest's
        reach, an access there is an EPT violation. Returns the EPTP (write-back, 4-level
        walk). Tables in host pages 17 (PML4), 18 (PDPT), 19 (PD), 20-21 (PTs)."""
        from hvsim.arch import ept as E
        m = self.machine
        pml4, pdpt, pd, pts = self.page(17), self.page(18), self.page(19), self.page(20)
        leaf = E.EPT_RWX | (X.MEMTYPE_WB << E.EPT_MEMTYPE_SHIFT)
        m.write_physical(pml4, (pdpt | E.EPT_RWX).to_bytes(8, "little"))
        m.write_physical(pdpt, (pd | E.EPT_RWX).to_bytes(8, "little"))
        mapped = set(range(self.memory_size // PAGE)) | {(self.page(n)) // PAGE
                                                        for n in range(6, 15)}
        last = max(mapped)
        n_pt = 0
        for region in range(last // 512 + 1):             # 2 MiB regions (512 pages)
            frames = [f for f in range(region * 512, region * 512 + 512) if f in mapped]
            if not frames:
                continue
            if len(frames) == 512:
                pde = (region << 21) | leaf | E.EPT_LARGE
            else:
                if n_pt == 2:
                    raise ValueError("the guest's RAM ends where the EPT needs a third page "
                                     "table: choose a memory size away from a 2 MiB boundary")
                pt = pts + n_pt * PAGE
                n_pt += 1
                m.write_physical(pt, b"".join(
                    ((f << 12) | leaf if f in mapped else 0).to_bytes(8, "little")
                    for f in range(region * 512, region * 512 + 512)))
                pde = pt | E.EPT_RWX
            m.write_physical(pd + 8 * region, pde.to_bytes(8, "little"))
        return pml4 | E.EPTP_WALK_LENGTH_4 | X.MEMTYPE_WB

    def page(self, n: int) -> int:
        """Host-physical address of host-area page ``n``."""
        return self.host_base + n * PAGE

    def create_vcpu(self) -> "VCPU":
        if self.vcpu is not None:
            raise RuntimeError("this VM has its vCPU already (hvsim models one per VM)")
        self.vcpu = VCPU(self)
        return self.vcpu


class VCPU:
    """The vCPU: its VMCS, its registers, and ``run()`` (KVM_RUN)."""

    def __init__(self, vm: VM):
        self.vm = vm
        self.machine = m = vm.machine
        self.vmcs = Vmcs(m)
        # the exit path's view of the state array (the same memory): indexing it gives and
        # takes Python ints, cheaper than ndarray.item and ndarray's stores
        self._stv = memoryview(m._st)
        self.devices = Devices()
        self.exits = _Tally()                     # every VM exit, by reason name
        self.in_kernel = _Tally()                 # exits handled here, by reason name
        self.to_user = _Tally()                   # exits returned to the caller, by KVM name
        self._raw_log: list = []                  # per exit handled: the facts, as a tuple
        self._log: list = []                      # ... made into LogEntry when read
        self.injected = 0
        self.reinjected = 0                       # events an exit interrupted, delivered again
        self.launched = False
        self._exit_rip = 0
        self._tick_pending = False
        self._mmio_read = None     # (KvmRun, insn): a load from MMIO waiting for its data
        self._guest_cr3 = 0
        self._guest_cr0_view = CR0_PE | CR0_ET
        self._guest_cr4_view = 0
        # without EPT, the guest's memory is virtualized by shadow page tables in the
        # host area: the direct map of its RAM while its paging is off, then its own
        self.shadow: Optional[ShadowMMU] = None
        if not vm.ept:
            self.shadow = ShadowMMU(m, vm.memory_size,
                                    [vm.page(SHADOW_POOL_FIRST + i) for i in range(SHADOW_POOL_PAGES)],
                                    unsync=vm.unsync, vpid=1 if vm.vpid else 0)
        self._enter_root()

    # ---- setting up ---------------------------------------------------------------------
    def _enter_root(self):
        """Build the host area and run the bootstrap: the machine ends in VMX root
        operation at CPL 0 with the VMCS current."""
        vm, m = self.vm, self.machine
        # the guest's tables first (into its RAM): a flat ring-0 start, as a bare machine,
        # with the stacks at the top of the guest's RAM (not of the machine's)
        from hvsim.rings.setup import STACK_SPACING
        top = vm.memory_size
        self.guest_tables = dataclasses.replace(
            install(m, ring0_stack=top, ring1_stack=top - STACK_SPACING,
                    ring2_stack=top - 2 * STACK_SPACING), memory_size=top)
        self._guest_start = self._cpu_state()
        # the host's own GDT/TSS/IDT in the host area, paging on with 4 MiB identity pages
        host = install(m, gdt=vm.page(15), tss=vm.page(15) + 0x100, idt=vm.page(16))
        pd = vm.page(5)
        pde = bytearray()
        for i in range(PAGE // 4):
            pde += ((i << 22) | 0x83).to_bytes(4, "little")     # P, RW, PS: 4 MiB
        m.write_physical(pd, bytes(pde))
        for region in (vm.page(0), vm.page(1)):
            m.write_physical(region, X.VMCS_REVISION_ID.to_bytes(4, "little"))
        ptrs = vm.page(15) + 0x200
        m.write_physical(ptrs, vm.page(0).to_bytes(8, "little") + vm.page(1).to_bytes(8, "little"))
        from hvsim.asm import assemble
        boot = assemble(_BOOTSTRAP.format(ptrs=ptrs), origin=vm.page(15) + 0x300)
        m.write_physical(boot.origin, boot.code)
        m.cpu.cr3 = pd
        m.cpu.cr4 = int(m.cpu.cr4) | CR4_VMXE | (1 << 4)                 # VMXE, PSE
        m.cpu.cr0 = int(m.cpu.cr0) | CR0_PE | CR0_NE | CR0_PG
        host.enter(m, 0, boot.origin, vm.page(24))
        ev = m.run(max_steps=100)
        if ev.kind != "halt" or m._st[L.VMCS_PTR] != vm.page(1):
            raise RuntimeError(f"the VMM's bootstrap did not reach VMX root operation: {ev}")
        self._host_fields(host)
        self._guest_fields()
        self._controls()
        m._st[L.VMX_PYTHON_HOST] = 1

    def _cpu_state(self) -> dict:
        st = self.machine._st
        return {k: int(st[getattr(L, k)]) for k in (
            "GDTR_BASE", "GDTR_LIMIT", "IDTR_BASE", "IDTR_LIMIT", "TR_SEL", "TR_BASE",
            "TR_LIMIT", "TR_AR")}

    def _host_fields(self, host):
        m, v = self.machine, self.vmcs
        v["HOST_CR0"] = int(m.cpu.cr0)
        v["HOST_CR3"] = int(m.cpu.cr3)
        v["HOST_CR4"] = int(m.cpu.cr4)
        for s in ("ES", "SS", "DS", "FS", "GS"):
            v[f"HOST_{s}_SELECTOR"] = host.data(0)
        v["HOST_CS_SELECTOR"] = host.code(0)
        v["HOST_TR_SELECTOR"] = host.tss_selector
        v["HOST_TR_BASE"] = int(m._st[L.TR_BASE])
        v["HOST_GDTR_BASE"] = int(m._st[L.GDTR_BASE])
        v["HOST_IDTR_BASE"] = int(m._st[L.IDTR_BASE])
        v["HOST_RSP"] = self.vm.page(24)
        v["HOST_RIP"] = self.vm.page(15) + 0x300        # never run: exits leave run()

    def _guest_fields(self):
        """A flat ring-0 guest on its own GDT/IDT/TSS, "paging off" as the guest sees it."""
        v, g, t = self.vmcs, self._guest_start, self.guest_tables
        flat = L.AR_S | L.AR_P | L.AR_DB | L.AR_G
        for i, s in enumerate(("ES", "CS", "SS", "DS", "FS", "GS")):
            v[f"GUEST_{s}_SELECTOR"] = t.code(0) if s == "CS" else t.data(0)
            v[f"GUEST_{s}_BASE"] = 0
            v[f"GUEST_{s}_LIMIT"] = 0xFFFFFFFF
            v[f"GUEST_{s}_AR_BYTES"] = (0xB if s == "CS" else 0x3) | flat
        v["GUEST_TR_SELECTOR"] = g["TR_SEL"]
        v["GUEST_TR_BASE"] = g["TR_BASE"]
        v["GUEST_TR_LIMIT"] = g["TR_LIMIT"]
        v["GUEST_TR_AR_BYTES"] = 11 | L.AR_P                    # busy 32-bit TSS
        v["GUEST_LDTR_AR_BYTES"] = L.AR_UNUSABLE
        v["GUEST_GDTR_BASE"], v["GUEST_GDTR_LIMIT"] = g["GDTR_BASE"], g["GDTR_LIMIT"]
        v["GUEST_IDTR_BASE"], v["GUEST_IDTR_LIMIT"] = g["IDTR_BASE"], g["IDTR_LIMIT"]
        v["GUEST_DR7"] = 0x400
        v["GUEST_RFLAGS"] = FIXED1
        v["VMCS_LINK_POINTER"] = (1 << 64) - 1
        # the identity page table of the guest's "paging off": PDEs -> page tables
        m, vm = self.machine, self.vm
        pd, pts = vm.page(6), vm.page(7)
        n_pt = (vm.memory_size + (4 << 20) - 1) >> 22
        m.write_physical(pd, b"".join(((pts + i * PAGE) | PTE_P | PTE_RW | PTE_US).to_bytes(4, "little")
                                      for i in range(n_pt)))
        # every address below the tables' 4 MiB boundary, RAM or not, maps to itself:
        # "paging off" means linear = physical; what is behind a physical address is
        # the EPT's business (with EPT) or anybody's (without: the host area included)
        frames = n_pt * 1024
        m.write_physical(pts, b"".join(((f << 12) | PTE_P | PTE_RW | PTE_US).to_bytes(4, "little")
                                       for f in range(frames)))
        v["GUEST_CR0"] = CR0_PE | CR0_NE | CR0_PG | CR0_ET
        v["GUEST_CR3"] = pd
        v["GUEST_CR4"] = CR4_VMXE
        # the guest sees CR0.PG = 0 and CR4.VMXE = 0; NE and PG are the host's
        v["CR0_GUEST_HOST_MASK"] = CR0_PG | CR0_NE
        v["CR0_READ_SHADOW"] = self._guest_cr0_view
        v["CR4_GUEST_HOST_MASK"] = CR4_VMXE
        v["CR4_READ_SHADOW"] = 0
        if self.shadow is not None:
            # shadow paging: the real CR3 is always the host's shadow root (the direct map
            # of the guest's RAM for now), the real CR0.WP always 1, and the guest's WP,
            # PSE and PGE are the host's to follow (SDM Vol. 3C, 25.6.6)
            m.guest_mmu = self.shadow
            v["GUEST_CR3"] = self.shadow.set_mode(self._guest_cr0_view, 0, 0)
            v["GUEST_CR0"] = CR0_PE | CR0_NE | CR0_PG | CR0_ET | CR0_WP
            v["CR0_GUEST_HOST_MASK"] = CR0_PG | CR0_NE | CR0_WP
            v["CR4_GUEST_HOST_MASK"] = CR4_VMXE | CR4_PSE | CR4_PGE

    def _controls(self):
        v = self.vmcs
        sec = 0
        if self.vm.ept:
            v["EPT_POINTER"] = self.vm.ept_tables()
            sec |= X.SEC_ENABLE_EPT
        if self.vm.vpid:
            # KVM's enable_vpid (on by default since 2008): the vCPU's own VPID, so the
            # TLB keeps its translations across exits (one VM, one vCPU: VPID 1)
            v["VIRTUAL_PROCESSOR_ID"] = 1
            sec |= X.SEC_ENABLE_VPID
        v["SECONDARY_VM_EXEC_CONTROL"] = sec
        v["PIN_BASED_VM_EXEC_CONTROL"] = X.PIN_DEFAULT1 | X.PIN_EXTERNAL_INTERRUPT_EXITING
        shadow = X.CPU_INVLPG_EXITING if self.shadow is not None else 0
        if self.shadow is not None:                  # every #PF, hidden or not, comes here
            v["EXCEPTION_BITMAP"] = 1 << PF
        # while the guest's paging is off, its CR3 is the host's business (KVM does the same)
        v["CPU_BASED_VM_EXEC_CONTROL"] = (X.CPU_TRUE_ALLOWED0 | X.CPU_HLT_EXITING
                                          | X.CPU_UNCONDITIONAL_IO_EXITING
                                          | X.CPU_CR3_LOAD_EXITING | X.CPU_CR3_STORE_EXITING
                                          | shadow
                                          | (X.CPU_ACTIVATE_SECONDARY_CONTROLS if sec else 0))
        v["VM_EXIT_CONTROLS"] = X.EXIT_TRUE_ALLOWED0 | X.EXIT_ACK_INTERRUPT_ON_EXIT
        v["VM_ENTRY_CONTROLS"] = X.ENTRY_TRUE_ALLOWED0

    # ---- the guest's registers (KVM_GET_REGS / KVM_SET_REGS) ------------------------------
    @property
    def regs(self) -> dict:
        cpu = self.machine.cpu
        r = {n: int(getattr(cpu, n)) for n in ("eax", "ecx", "edx", "ebx", "ebp", "esi", "edi")}
        r.update(esp=self.vmcs["GUEST_RSP"], eip=self.vmcs["GUEST_RIP"],
                 eflags=self.vmcs["GUEST_RFLAGS"])
        return r

    def set_regs(self, **regs) -> None:
        for name, value in regs.items():
            if name in ("esp", "eip", "eflags"):
                field = {"esp": "GUEST_RSP", "eip": "GUEST_RIP", "eflags": "GUEST_RFLAGS"}[name]
                self.vmcs[field] = value
            elif name in ("eax", "ecx", "edx", "ebx", "ebp", "esi", "edi"):
                setattr(self.machine.cpu, name, value)
            else:
                raise KeyError(f"no guest register {name!r}")

    def load(self, program, esp: int = 0x80000) -> None:
        """Put ``program`` in guest RAM and start the guest at its entry point."""
        end = program.origin + len(program.code)
        if program.origin < 0 or end > self.vm.memory_size:
            raise ValueError(f"the program [{program.origin:#x}, {end:#x}) does not fit the "
                             f"guest's {self.vm.memory_size:#x} bytes of RAM")
        self.machine.write_physical(program.origin, program.code)
        self.set_regs(eip=program.entry, esp=esp)

    @property
    def console(self) -> str:
        return self.devices.console

    # ---- KVM_RUN ------------------------------------------------------------------------
    def run(self, max_steps: int = 1_000_000) -> KvmRun:
        """Enter the guest and run it until an exit that user space must see, or until
        ``max_steps`` machine steps have passed (then KVM_EXIT_INTR, as a signal would)."""
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
        m = self.machine
        st = self._stv
        run = m._run                               # Machine.run without building an Event
        handle = self._exit
        nonroot, request, exit_steps = L.VMX_NONROOT, L.VMX_ENTRY_REQUEST, L.EXIT_STEPS
        if self._mmio_read is not None:
            _complete_mmio_read(self)
        used = 0
        while used < max_steps:
            if not st[nonroot]:        # (a budget may have ended the last run in the guest)
                st[request] = 2 if self.launched else 1
            kind = run(max_steps - used)
            steps = st[exit_steps]
            used += steps if steps > 0 else 1
            if kind != EXIT_VMEXIT:
                if kind == EXIT_BUDGET:
                    st[request] = 0
                    return KvmRun(KVM_EXIT["intr"])
                self.to_user["internal_error"] += 1
                return KvmRun(KVM_EXIT["internal_error"], internal_suberror=1,
                              hardware_exit_reason=int(kind))
            out = handle()
            if out is not None:
                return out
        return KvmRun(KVM_EXIT["intr"])

    def _exit(self) -> Optional[KvmRun]:
        """Handle one VM exit: None to go back into the guest, else what user space gets."""
        m = self.machine
        st = self._stv
        if st[L.EXIT_VECTOR] < 0:
            # the entry itself failed: VMfailInvalid/VMfailValid(n) (the instruction fell
            # through), or a guest-state failure (an exit with bit 31 set)
            v = self.vmcs
            full = v["VM_EXIT_REASON"]
            n = int(m._st[L.VMX_ENTRY_CHECK])
            if n and K.outcome_of(n) == K.GUEST:
                return self._fail_entry(full)
            return self._fail_entry(v["VM_INSTRUCTION_ERROR"])
        if not self.launched:
            self.launched = True
        self._exit_rip = st[_I_RIP]              # the exiting instruction's (handlers skip it)
        full = st[_I_REASON] & 0xFFFFFFFF
        reason = full & 0xFFFF
        name, handler = _DISPATCH.get(reason) or (str(reason), None)
        self.exits[name] += 1
        if handler is None:
            self.to_user["unknown"] += 1
            return KvmRun(KVM_EXIT["unknown"], hardware_exit_reason=full)
        result = handler(self)
        if result is None:
            self.in_kernel[name] += 1
        else:
            self.to_user[result.name] += 1
        # the two checks inline: each is almost always false, a call costs more than it
        if st[_I_IDT_VECTORING] & _INTR_INFO_VALID:
            self._complete_interrupted_event()
        if self._tick_pending:
            self._prepare_injection()
        return result

    def _complete_interrupted_event(self) -> None:
        """An exit that interrupted the delivery of an event (IDT-vectoring information
        valid, SDM Vol. 3C 28.2.4) must not lose it: inject it again on the next entry,
        unless a handler already queued an event (KVM's vmx_complete_interrupts)."""
        if not self._stv[_I_IDT_VECTORING] & X.INTR_INFO_VALID:
            return                               # (the common case: one read)
        v = self.vmcs
        info = v["IDT_VECTORING_INFO_FIELD"]
        if v["VM_ENTRY_INTR_INFO_FIELD"] & X.INTR_INFO_VALID:
            return
        v["VM_ENTRY_INTR_INFO_FIELD"] = info & ~X.INTR_INFO_NMI_UNBLOCKING
        if info & X.INTR_INFO_DELIVER_ERROR_CODE:
            v["VM_ENTRY_EXCEPTION_ERROR_CODE"] = v["IDT_VECTORING_ERROR_CODE"]
        if (info >> 8) & 7 in (X.INTR_TYPE_SOFTWARE_INTERRUPT, X.INTR_TYPE_SOFTWARE_EXCEPTION,
                               X.INTR_TYPE_PRIVILEGED_SOFTWARE_EXCEPTION):
            v["VM_ENTRY_INSTRUCTION_LEN"] = v["VM_EXIT_INSTRUCTION_LEN"]
        self.reinjected += 1

    def _fail_entry(self, hardware_reason: int) -> KvmRun:
        n = int(self.machine._st[L.VMX_ENTRY_CHECK])
        text = K.explain(n, int(self.machine._st[L.VMX_ENTRY_VALUE])) if n else ""
        self.to_user["fail_entry"] += 1
        return KvmRun(KVM_EXIT["fail_entry"], hardware_exit_reason=hardware_reason,
                      fail_entry_reason=hardware_reason, fail_entry_explanation=text)

    def _skip(self) -> None:
        """GUEST_RIP += VM-exit instruction length (the instruction was emulated)."""
        st = self._stv
        st[_I_RIP] = (st[_I_RIP] + st[_I_INSN_LEN]) & 0xFFFFFFFF

    def _skip_by(self, length: int) -> None:
        """GUEST_RIP += ``length``: for an exit whose VM-exit instruction length is not
        defined (an EPT violation, SDM Vol. 3C 28.2.5), the decoded instruction's."""
        st = self._stv
        st[_I_RIP] = (st[_I_RIP] + length) & 0xFFFFFFFF

    def _note(self, reason: str, what: str, *args) -> None:
        """One exit handled: its facts now (a tuple: an exit costs microseconds), the
        monitors' LogEntry (hvsim.monitors.base) only when :attr:`log` is read; ``what``
        is a format string for ``args``."""
        st = self._stv
        self._raw_log.append((reason, st[_I_INTR_INFO], self._exit_rip, st[_I_SS_AR],
                              st[_I_QUAL], st[L.TSC], what, args))

    @property
    def log(self) -> list:
        """Every exit handled here, oldest first, as hvsim.monitors.base.LogEntry."""
        raw, log = self._raw_log, self._log
        del log[len(raw):]
        for reason, info, rip, ss_ar, qual, tsc, what, args in raw[len(log):]:
            r = _ER[reason]
            vector = info & 0xFF if r in (_ER.EXCEPTION_NMI, _ER.EXTERNAL_INTERRUPT) and \
                info & X.INTR_INFO_VALID else None
            log.append(LogEntry("vm_exit", _TRAPS[r], vector, None, rip, (ss_ar >> 5) & 3, None,
                                f"qualification {qual & 0xFFFFFFFF:#x}: "
                                + (what.format(*args) if args else what), tsc))
        return log

    # ---- interrupts: the host timer becomes the guest's tick -----------------------------
    def _prepare_injection(self) -> None:
        """Before re-entry: inject the pending tick when the guest can take it, else ask
        for an exit when it can (interrupt-window exiting), as KVM's inject_pending_event."""
        if not self._tick_pending:
            return
        v = self.vmcs
        open_ = (v["GUEST_RFLAGS"] & IF) and not (v["GUEST_INTERRUPTIBILITY_INFO"] & 3)
        cpu = v["CPU_BASED_VM_EXEC_CONTROL"]
        if v["VM_ENTRY_INTR_INFO_FIELD"] & X.INTR_INFO_VALID:
            open_ = False                # one event per entry: a re-injected one goes first
        if open_:
            v["VM_ENTRY_INTR_INFO_FIELD"] = X.INTR_INFO_VALID | self.devices.timer_vector
            v["GUEST_ACTIVITY_STATE"] = X.ACTIVITY_ACTIVE        # the tick wakes HLT
            v["CPU_BASED_VM_EXEC_CONTROL"] = cpu & ~X.CPU_INTERRUPT_WINDOW_EXITING
            self._tick_pending = False
            self.injected += 1
        else:
            v["CPU_BASED_VM_EXEC_CONTROL"] = cpu | X.CPU_INTERRUPT_WINDOW_EXITING

    def _start_timer(self, period: int) -> None:
        self.machine.set_timer((period, HOST_TIMER_VECTOR) if period else None)


# ---- the exits handled in the "kernel" (KVM's kvm_vmx_exit_handlers) --------------------
def _cpuid(vc: VCPU) -> None:
    """CPUID, answered as the machine would, without the VMX feature (KVM hides it from
    guests unless nested virtualization is on). The guest's registers are the CPU's."""
    st = vc._stv
    leaf = st[L.EAX]
    eax, ecx, edx, ebx = _CPUID_LEAF0 if leaf == 0 else _CPUID_LEAF1
    st[L.EAX] = eax                       # four scalar stores: cheaper than a slice's
    st[L.ECX] = ecx
    st[L.EDX] = edx
    st[L.EBX] = ebx
    vc._skip()
    vc._note("CPUID", "leaf {:#x} answered in the kernel", leaf)


def _gpr(vc: VCPU, n: int) -> int:
    if n == 4:
        return vc.vmcs["GUEST_RSP"]
    return int(getattr(vc.machine.cpu, REG32[n]))


def _set_gpr(vc: VCPU, n: int, value: int) -> None:
    if n == 4:
        vc.vmcs["GUEST_RSP"] = value
    else:
        setattr(vc.machine.cpu, REG32[n], value)


def _cr_access(vc: VCPU) -> Optional[KvmRun]:
    """MOV to/from CR0 and CR3 while the host owns them (Table 28-3 qualification)."""
    v = vc.vmcs
    q = v["EXIT_QUALIFICATION"]
    n, access, gpr = q & 0xF, (q >> 4) & 3, (q >> 8) & 0xF
    if n == 3 and access == X.CR_ACCESS_MOV_FROM_CR:
        _set_gpr(vc, gpr, vc._guest_cr3)
        what = "MOV from CR3: the guest's own value"
    elif n == 3 and access == X.CR_ACCESS_MOV_TO_CR:
        vc._guest_cr3 = _gpr(vc, gpr)
        what = f"MOV to CR3 {vc._guest_cr3:#x} recorded"
        if vc.shadow is not None:
            if vc._guest_cr0_view & CR0_PG:
                root = _shadow_call(vc, vc.shadow.load_cr3, vc._guest_cr3)
                if isinstance(root, KvmRun):
                    return root
                v["GUEST_CR3"] = root
                what = f"MOV to CR3 {vc._guest_cr3:#x}: shadow root {root:#x}"
        elif vc._guest_cr0_view & CR0_PG:
            v["GUEST_CR3"] = vc._guest_cr3
    elif n == 0 and access == X.CR_ACCESS_MOV_TO_CR:
        value = _gpr(vc, gpr)
        if value & CR0_PG and not value & CR0_PE:
            return KvmRun(KVM_EXIT["internal_error"], internal_suberror=1)
        old = vc._guest_cr0_view
        vc._guest_cr0_view = value | CR0_ET
        v["CR0_READ_SHADOW"] = vc._guest_cr0_view & v["CR0_GUEST_HOST_MASK"]
        v["GUEST_CR0"] = (value | CR0_PE | CR0_NE | CR0_PG | CR0_ET) & 0xFFFFFFFF
        cpu = v["CPU_BASED_VM_EXEC_CONTROL"]
        what = f"MOV to CR0 {value:#x}: paging {'on' if value & CR0_PG else 'off'} for the guest"
        if vc.shadow is not None:                # the shadow follows; CR3 keeps exiting
            v["GUEST_CR0"] |= CR0_WP
            root = _shadow_call(vc, vc.shadow.set_mode, vc._guest_cr0_view, vc._guest_cr3,
                                vc._guest_cr4_view)
            if isinstance(root, KvmRun):
                return root
            v["GUEST_CR3"] = root
            what += f", shadow root {root:#x}"
        elif value & CR0_PG:     # the guest's own tables from now on; its CR3 is its own
            v["GUEST_CR3"] = vc._guest_cr3
            cpu &= ~(X.CPU_CR3_LOAD_EXITING | X.CPU_CR3_STORE_EXITING)
        else:
            v["GUEST_CR3"] = vc.vm.page(6)
            cpu |= X.CPU_CR3_LOAD_EXITING | X.CPU_CR3_STORE_EXITING
        if vc.shadow is None and (old ^ value) & CR0_PG:
            # every translation of the guest changes, and with a VPID the VM entry flushes
            # none (SDM Vol. 3C, 29.4.3.3): drop the vCPU's, as KVM's kvm_mmu_reset_context
            # asks for a TLB flush (the shadow MMU's set_mode does the same)
            tlb_flush_vpid(vc.machine._st, vc.machine._tlb, 1 if vc.vm.vpid else 0, 0)
        v["CPU_BASED_VM_EXEC_CONTROL"] = cpu
    elif n == 4 and access == X.CR_ACCESS_MOV_TO_CR and vc.shadow is not None:
        value = _gpr(vc, gpr)
        vc._guest_cr4_view = value
        mask = v["CR4_GUEST_HOST_MASK"]
        v["CR4_READ_SHADOW"] = value & mask
        v["GUEST_CR4"] = (value & ~(CR4_PSE | CR4_PGE)) | CR4_VMXE
        root = _shadow_call(vc, vc.shadow.set_mode, vc._guest_cr0_view, vc._guest_cr3, value)
        if isinstance(root, KvmRun):
            return root
        v["GUEST_CR3"] = root
        what = f"MOV to CR4 {value:#x}: the shadow follows (root {root:#x})"
    else:
        return KvmRun(KVM_EXIT["internal_error"], internal_suberror=1,
                      hardware_exit_reason=_ER.CR_ACCESS)
    vc._skip()
    vc._note("CR_ACCESS", what)
    return None


def _shadow_call(vc: VCPU, fn, *args):
    """A shadow-MMU operation; what it cannot do (a guest table or frame outside the
    guest's RAM) ends the run as KVM_EXIT_INTERNAL_ERROR, explained in the log."""
    try:
        return fn(*args)
    except ShadowError as e:
        vc._note("EXCEPTION_NMI", "shadow paging stopped: {}", str(e))
        return KvmRun(KVM_EXIT["internal_error"], internal_suberror=KVM_INTERNAL_ERROR_EMULATION)


def _invlpg(vc: VCPU) -> None:
    """INVLPG (exit 14; the qualification is the linear address, SDM Vol. 3C Table 28-1
    note): the shadow entry of the page and the TLB's go."""
    lin = vc.vmcs["EXIT_QUALIFICATION"]
    vc.shadow.invlpg(lin)
    vc._skip()
    vc._note("INVLPG", "INVLPG {:#x}: its shadow entry dropped", lin)


def _shadow_page_fault(vc: VCPU) -> Optional[KvmRun]:
    """#PF under shadow paging (the exception bitmap sends every one here; the exit
    qualification is the linear address, the error code in VM_EXIT_INTR_ERROR_CODE,
    CR2 untouched -- SDM Vol. 3C 28.1, 28.2.1): hidden (filled, the guest resumes),
    true (injected with the guest's own error code, CR2 loaded as the CPU would), or
    trace (a store into a guest page table: emulated if a MOV, else the table is
    unshadowed and the guest retries)."""
    v = vc.vmcs
    st = vc.machine._st
    lin = st.item(_I_QUAL)
    sh = vc.shadow
    out = _shadow_call(vc, sh.page_fault, lin, v["VM_EXIT_INTR_ERROR_CODE"])
    if isinstance(out, KvmRun):
        return out
    kind, info = out
    if kind == HIDDEN:
        vc._note("EXCEPTION_NMI", "hidden #PF at {:#x}: shadow entry filled", lin)
        return None
    if kind == MMIO:                 # beyond the guest's RAM: a device, as with EPT
        insn = from_exit_info(vc.machine._exit_info.tolist())
        own = insn is not None and insn.mem is not None and insn.mem.linear == lin
        return _mmio(vc, "EXCEPTION_NMI", info, bool(v["VM_EXIT_INTR_ERROR_CODE"] & 2),
                     insn if own else None)
    if kind == TRUE:
        st[L.CR2] = lin
        v["VM_ENTRY_INTR_INFO_FIELD"] = (X.INTR_INFO_VALID | X.INTR_INFO_DELIVER_ERROR_CODE
                                         | (X.INTR_TYPE_HARDWARE_EXCEPTION << 8) | PF)
        v["VM_ENTRY_EXCEPTION_ERROR_CODE"] = info
        vc._note("EXCEPTION_NMI", "true #PF({:#x}) at {:#x}: injected", info, lin)
        return None
    gpa = info
    if sh.make_unsync(gpa >> 12):
        vc._note("EXCEPTION_NMI", "write to guest page table {:#x}: left writable (unsync)",
                 gpa & ~0xFFF)
        return None
    insn = from_exit_info(vc.machine._exit_info.tolist())
    store = store_of(insn, lambda n, size: _reg(vc, n, size))
    if store is not None and insn.mem.linear == lin and (gpa & 0xFFF) + store[0] <= PAGE:
        size, value = store
        sh.write_guest(gpa, value.to_bytes(size, "little"))
        sh.counters["pt_writes_emulated"] += 1
        vc._skip_by(insn.length)
        vc._note("EXCEPTION_NMI", "write to guest page table: emulated [{:#x}] = {:#x}",
                 gpa, value)
        return None
    if sh.unprotect(gpa >> 12):
        vc._note("EXCEPTION_NMI", "write to guest page table {:#x} by {}: unshadowed, retried",
                 gpa & ~0xFFF, insn)
        return None
    vc._note("EXCEPTION_NMI", "write to the guest's page directory {:#x} by {}: not emulated",
             gpa & ~0xFFF, insn)
    return KvmRun(KVM_EXIT["internal_error"], internal_suberror=KVM_INTERNAL_ERROR_EMULATION)


def _io(vc: VCPU) -> Optional[KvmRun]:
    """Port I/O: the console and the timer are user-space devices (returned as
    KVM_EXIT_IO after the device model ran, so the caller sees every access)."""
    v = vc.vmcs
    q = v["EXIT_QUALIFICATION"]
    size, is_in, port = (q & 7) + 1, bool(q & X.IO_QUAL_IN), q >> X.IO_QUAL_PORT_SHIFT
    cpu = vc.machine.cpu
    mask = (1 << (8 * size)) - 1
    if is_in:
        data = vc.devices.in_(port) & mask
        cpu.eax = (int(cpu.eax) & ~mask & 0xFFFFFFFF) | data
        what = f"IN port {port:#x}: {data:#x}"
    else:
        data = int(cpu.eax) & mask
        what = vc.devices.out(port, size, data)
        if port == TIMER_PERIOD_PORT:
            vc._start_timer(data)
    vc._skip()
    vc._note("IO_INSTRUCTION", what)
    return KvmRun(KVM_EXIT["io"], hardware_exit_reason=_ER.IO_INSTRUCTION,
                  io=IoExit(KVM_EXIT_IO_IN if is_in else KVM_EXIT_IO_OUT, size, port, 1, data))


def _external_interrupt(vc: VCPU) -> None:
    vector = vc.vmcs["VM_EXIT_INTR_INFO"] & 0xFF
    if vector == HOST_TIMER_VECTOR and vc.devices.timer_period:
        vc._tick_pending = True
        vc._note("EXTERNAL_INTERRUPT", "host timer: a tick for the guest")
    else:
        vc._note("EXTERNAL_INTERRUPT", "vector {:#x} dropped", vector)


def _interrupt_window(vc: VCPU) -> None:
    vc._note("INTERRUPT_WINDOW", "the guest can take its tick now")


def _hlt(vc: VCPU) -> Optional[KvmRun]:
    """HLT: with a timer running the vCPU blocks until the next tick (time passes), as
    with KVM's in-kernel LAPIC; with none, user space is told (KVM_EXIT_HLT)."""
    vc._skip()
    if not vc.devices.timer_period:
        vc._note("HLT", "no timer: to user space")
        return KvmRun(KVM_EXIT["hlt"], hardware_exit_reason=_ER.HLT)
    m = vc.machine
    nxt = int(m._st[L.TIMER_NEXT])
    if m.cpu.tsc < nxt:
        m.cpu.tsc = nxt
    vc._tick_pending = True
    m._st[L.TIMER_NEXT] = nxt + vc.devices.timer_period
    vc._note("HLT", "blocked until the next tick")
    return None


def _vmcall(vc: VCPU) -> KvmRun:
    cpu = vc.machine.cpu
    vc._skip()
    return KvmRun(KVM_EXIT["hypercall"], hardware_exit_reason=_ER.VMCALL,
                  hypercall_nr=int(cpu.eax),
                  hypercall_args=tuple(int(getattr(cpu, r)) for r in ("ebx", "ecx", "edx", "esi")))


# The MOV forms emulated for an MMIO access (see the module docstring), by handler
# family (hvsim/cpu/decode.py) and, for the moffs forms, opcode (SDM Vol. 2B, MOV)


def _ept_violation(vc: VCPU) -> KvmRun:
    """A guest-physical address the EPT does not map: memory the guest does not have,
    which KVM hands to user space as MMIO (KVM_EXIT_MMIO). A MOV of the guest's own
    (the final translation of a data access, not during an event's delivery) is
    emulated: a store is done here and its data returned; a load waits for its data
    (``mmio_data``) until the next ``run()``. Anything else: KVM_EXIT_INTERNAL_ERROR,
    suberror 1 (emulation failure), the guest stopped at the instruction."""
    v = vc.vmcs
    q = v["EXIT_QUALIFICATION"]
    insn = from_exit_info(vc.machine._exit_info.tolist())
    own = q & X.EPT_QUAL_FINAL_TRANSLATION and not q & X.EPT_QUAL_FETCH
    return _mmio(vc, "EPT_VIOLATION", v["GUEST_PHYSICAL_ADDRESS"], bool(q & X.EPT_QUAL_WRITE),
                 insn if own else None)


def _mmio(vc: VCPU, reason: str, gpa: int, write: bool, insn) -> KvmRun:
    """An access to guest-physical ``gpa``, where the guest has no RAM (an EPT violation,
    or a #PF under shadow paging): KVM_EXIT_MMIO for a MOV of the instruction's own
    (``insn``; None for a fetch or a walk), not during an event's delivery; else
    KVM_EXIT_INTERNAL_ERROR (emulation failure)."""
    v = vc.vmcs
    if v["IDT_VECTORING_INFO_FIELD"] & X.INTR_INFO_VALID:
        insn = None
    hw = int(_ER[reason])
    store = store_of(insn, lambda n, size: _reg(vc, n, size)) if write else None
    if store is not None:
        size, value = store
        data = value.to_bytes(size, "little")
        vc._skip_by(insn.length)
        vc._note(reason, "MMIO write of {} bytes at {:#x}: {}", size, gpa, data.hex())
        return KvmRun(KVM_EXIT["mmio"], hardware_exit_reason=hw,
                      mmio_phys_addr=gpa, mmio_is_write=True, mmio_len=size, mmio_data=data)
    if insn is not None and not write and (insn.family in MOV_LOADS
                                           or insn.opcode in MOFFS_LOADS):
        run = KvmRun(KVM_EXIT["mmio"], hardware_exit_reason=hw,
                     mmio_phys_addr=gpa, mmio_is_write=False, mmio_len=insn.size)
        vc._mmio_read = (run, insn)
        vc._note(reason, "MMIO read of {} bytes at {:#x}: to user space", insn.size, gpa)
        return run
    what = f"{'write' if write else 'read'} at {gpa:#x}" + (f" by {insn}" if insn else "")
    vc._note(reason, "{}: not an access hvsim emulates", what)
    return KvmRun(KVM_EXIT["internal_error"], hardware_exit_reason=hw,
                  internal_suberror=KVM_INTERNAL_ERROR_EMULATION, mmio_phys_addr=gpa,
                  mmio_is_write=write)


def _complete_mmio_read(vc: VCPU) -> None:
    """The second half of an MMIO load (KVM's complete_emulated_mmio): the data user
    space left in the KvmRun it got goes into the destination register, zero- or
    sign-extended for MOVZX/MOVSX, and the guest goes on after the instruction. No
    data given reads as a floating bus (all ones)."""
    run, insn = vc._mmio_read
    vc._mmio_read = None
    size = insn.size
    data = run.mmio_data
    if data is None:
        value = FLOATING_BUS & ((1 << (8 * size)) - 1)
    else:
        if not isinstance(data, (bytes, bytearray)) or len(data) != size:
            vc._mmio_read = (run, insn)
            raise ValueError(f"mmio_data must be {size} bytes for this {size}-byte read, got "
                             f"{data!r}")
        value = int.from_bytes(data, "little")
    if insn.family in (D.OP_MOVZX, D.OP_MOVSX):
        if insn.opcode >= 0x1BE and value >> (8 * size - 1):      # MOVSX: sign-extend
            value -= 1 << (8 * size)
        dest = 2 if insn.prefixes & PFX_OPSIZE else 4
        _set_reg(vc, insn.reg, dest, value & ((1 << (8 * dest)) - 1))
    else:
        _set_reg(vc, 0 if insn.opcode in MOFFS_LOADS else insn.reg, size, value)
    vc._skip_by(insn.length)


def _reg(vc: VCPU, n: int, size: int) -> int:
    """General register ``n`` at operand size ``size`` (1: AL..BH by ModRM numbering)."""
    return sized_reg(lambda i: _gpr(vc, i), n, size)


def _set_reg(vc: VCPU, n: int, size: int, value: int) -> None:
    """Write general register ``n`` at operand size ``size``; the rest of it is kept."""
    if size == 1:
        shift = 8 if n >= 4 else 0
        n &= 3
        old = _gpr(vc, n)
        _set_gpr(vc, n, (old & ~(0xFF << shift) & 0xFFFFFFFF) | ((value & 0xFF) << shift))
    elif size == 2:
        _set_gpr(vc, n, (_gpr(vc, n) & 0xFFFF0000) | (value & 0xFFFF))
    else:
        _set_gpr(vc, n, value & 0xFFFFFFFF)


def _triple_fault(vc: VCPU) -> KvmRun:
    return KvmRun(KVM_EXIT["shutdown"], hardware_exit_reason=_ER.TRIPLE_FAULT)


def _exception(vc: VCPU) -> Optional[KvmRun]:
    """An exception the exception bitmap sent here: a #PF under shadow paging is the
    shadow MMU's; any other is counted, then given back to the guest by event injection
    (SDM 27.6) -- vector, type, error code, and for a software exception (INT3/INTO) the
    instruction length -- as KVM re-injects what it intercepts only to watch. The exit
    left RIP on the instruction for a fault, after it for a trap."""
    v = vc.vmcs
    info = v["VM_EXIT_INTR_INFO"]
    if info & 0xFF == PF and vc.shadow is not None:
        return _shadow_page_fault(vc)
    v["VM_ENTRY_INTR_INFO_FIELD"] = info & ~X.INTR_INFO_NMI_UNBLOCKING
    if info & X.INTR_INFO_DELIVER_ERROR_CODE:
        v["VM_ENTRY_EXCEPTION_ERROR_CODE"] = v["VM_EXIT_INTR_ERROR_CODE"]
    if (info >> 8) & 7 == X.INTR_TYPE_SOFTWARE_EXCEPTION:
        v["VM_ENTRY_INSTRUCTION_LEN"] = v["VM_EXIT_INSTRUCTION_LEN"]
    vc._note("EXCEPTION_NMI", "vector {} re-injected into the guest", info & 0xFF)


def _cpuid_answers():
    from hvsim.cpu import system as S
    assert (L.EAX, L.ECX, L.EDX, L.EBX) == (0, 1, 2, 3)
    return ((S.CPUID_MAX_LEAF, S.CPUID_VENDOR_ECX, S.CPUID_VENDOR_EDX, S.CPUID_VENDOR_EBX),
            (S.CPUID_SIGNATURE, S.CPUID_FEATURES_ECX & ~X.CPUID_ECX_VMX, S.CPUID_FEATURES_EDX, 0))


# (EAX, ECX, EDX, EBX) of leaf 0 and of leaf 1 -- the state array's order -- (every other
# leaf answers as leaf 1, the highest: SDM Vol. 2A, CPUID), as tuples of Python ints:
# unpacking a numpy array makes a numpy scalar of each
_CPUID_LEAF0, _CPUID_LEAF1 = _cpuid_answers()
_TRAPS = {r: f"VM exit {int(r)} {r.name}" for r in _ER}

_HANDLERS = {
    int(_ER.CPUID): _cpuid, int(_ER.CR_ACCESS): _cr_access, int(_ER.IO_INSTRUCTION): _io,
    int(_ER.EXTERNAL_INTERRUPT): _external_interrupt,
    int(_ER.INTERRUPT_WINDOW): _interrupt_window, int(_ER.HLT): _hlt,
    int(_ER.VMCALL): _vmcall, int(_ER.TRIPLE_FAULT): _triple_fault,
    int(_ER.EXCEPTION_NMI): _exception, int(_ER.EPT_VIOLATION): _ept_violation,
    int(_ER.INVLPG): _invlpg,
}
# basic exit reason -> (its name, the counters' key; its handler, None: to user space as
# KVM_EXIT_UNKNOWN): one lookup per exit
_DISPATCH = {int(r): (r.name, _HANDLERS.get(int(r))) for r in _ER}


class GuestRegisters:
    """The guest's registers where VT-x leaves them (the monitors' ``vcpu`` view)."""

    def __init__(self, vcpu: VCPU):
        self._vc = vcpu

    def __getattr__(self, name):
        regs = self._vc.regs
        if name in regs:
            return regs[name]
        if name == "IF":
            return int(bool(regs["eflags"] & IF))
        if name == "cpl":
            return (self._vc.vmcs["GUEST_SS_AR_BYTES"] >> 5) & 3
        raise AttributeError(f"the guest has no register {name!r}")


class Vtx(Monitor):
    """The VT-x technique on the monitor protocol: a guest kernel run in VMX non-root
    ring 0 by the KVM-shaped VMM above, its console and timer in the VMM's device models.

    machine : a fresh Machine; its top pages become the VMM's host area (default: 1 MiB
              of guest RAM).
    program : booted with :meth:`boot`.
    ept     : give the guest an EPT (nested paging: its RAM and nothing of the VMM's).
    vpid    : tag the guest's TLB entries with VPID 1 (KVM's default), so VM exits and
              entries do not flush the TLB.
    """
    name = "vtx"

    def __init__(self, machine: Optional[Machine] = None, program=None, *, ept: bool = False,
                 vpid: bool = True, unsync: bool = False):
        self.vm = VM(machine=machine, ept=ept, vpid=vpid, unsync=unsync) \
            if machine is not None else VM(ept=ept, vpid=vpid, unsync=unsync)
        self.machine = self.vm.machine
        self.kvm = self.vm.create_vcpu()
        self._state = "running"
        self._final: Optional[MonitorEvent] = None
        if program is not None:
            self.boot(program)

    @property
    def log(self) -> list:
        return self.kvm.log

    def boot(self, program, esp: Optional[int] = None) -> None:
        """Load ``program`` into guest RAM and enter it in ring 0 (IF = 0), its stack at
        the ring-0 stack of the guest's TSS (hvsim/rings/setup.py layout)."""
        t = self.kvm.guest_tables
        self.kvm.load(program, esp=t.stack_top(0) if esp is None else esp)
        self.kvm.set_regs(eflags=FIXED1)

    def run(self, max_steps: int = 1_000_000) -> Event:
        max_steps = self._check_budget(max_steps)
        m = self.machine
        start = int(m.counters["instructions"])
        while self._state == "running":
            left = max_steps - (int(m.counters["instructions"]) - start)
            if left < 1:
                break
            out = self.kvm.run(left)
            if out.name == "io":              # the device model has run: back into the guest
                continue
            if out.name == "intr":            # the budget
                break
            return self._stopped(out)
        if self._state != "running":
            return self._final
        return MonitorEvent("budget", self.kvm.regs["eip"], self.vcpu.cpl,
                            int(m.counters["instructions"]) - start,
                            reason=f"{max_steps} steps done")

    def _stopped(self, out: KvmRun) -> MonitorEvent:
        regs = self.kvm.regs
        kind, state = {"hlt": ("halt", "halted"),
                       "shutdown": ("shutdown", "killed")}.get(out.name, ("killed", "killed"))
        reason = str(out)
        self._state = state
        self._final = MonitorEvent(kind, regs["eip"], self.vcpu.cpl, 0, reason=reason)
        return self._final

    def step(self) -> Optional[Event]:
        """One machine step (a guest instruction, or a VM exit the VMM handled); the event
        that stopped the guest, or None."""
        if self._state != "running":
            return self._final
        ev = self.run(1)
        return None if ev.kind == "budget" else ev

    def snapshot(self):
        k, d = self.kvm, self.kvm.devices
        return (self.machine.snapshot(), self._state, self._final, k.launched, k._tick_pending,
                k._guest_cr3, k._guest_cr0_view, (d.console, d.timer_period, d.timer_vector),
                len(k._raw_log), k.injected, _Tally(k.exits), _Tally(k.in_kernel),
                _Tally(k.to_user), k._mmio_read,
                k._guest_cr4_view, None if k.shadow is None else k.shadow.snapshot(),
                d.disk.snapshot())

    def restore(self, snap) -> None:
        k = self.kvm
        (machine, self._state, self._final, k.launched, k._tick_pending, k._guest_cr3,
         k._guest_cr0_view, devices, n_log, k.injected, exits, in_kernel, to_user,
         k._mmio_read, k._guest_cr4_view, shadow, disk) = snap
        # copies: the vCPU goes on counting, the snapshot may be restored again
        k.exits, k.in_kernel, k.to_user = _Tally(exits), _Tally(in_kernel), _Tally(to_user)
        k.devices.disk.restore(disk)
        if shadow is not None:
            k.shadow.restore(shadow)
        self.machine.restore(machine)
        k.devices.console, k.devices.timer_period, k.devices.timer_vector = devices
        del k._raw_log[n_log:]
        del k._log[n_log:]

    @property
    def state(self) -> str:
        return self._state

    @property
    def stats(self) -> dict:
        k = self.kvm
        d = dict.fromkeys(STATS, 0)
        exits = sum(k.exits.values())
        # a VT-x host counts its exits as vm_exits only (hvsim.cost.usage charges them)
        d.update(vm_exits=exits, injected=k.injected,
                 emulated=sum(n for r, n in k.exits.items()
                              if r in ("CPUID", "CR_ACCESS", "IO_INSTRUCTION", "INVLPG")))
        return shadow_stats(d, k.shadow)

    @property
    def vcpu(self) -> GuestRegisters:
        return GuestRegisters(self.kvm)

    @property
    def shadow_mmu(self) -> Optional[ShadowMMU]:
        return self.kvm.shadow

    @property
    def console(self) -> str:
        return self.kvm.console

    def __repr__(self):
        return f"<Vtx {self.state}, {sum(self.kvm.exits.values())} VM exits>"
