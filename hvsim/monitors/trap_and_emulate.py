"""A minimal trap-and-emulate virtual machine monitor, in Python (not jitted).

This is the classic VMM of Popek & Goldberg ("Formal Requirements for Virtualizable
Third Generation Architectures", CACM 17(7), 1974), on IA-32:

* the **guest kernel runs deprivileged, in ring 1**, with IOPL = 0 and the real IF = 1
  at all times; its user programs run in ring 3, as usual;
* the **monitor owns the real ring 0**: every vector (exceptions 0-31, software
  interrupts, the real timer) is routed out of ``Machine.run()`` to this Python code
  (``Machine.route(..., "host")``), so the real IDT is never used;
* it keeps a **virtual CPU** (hvsim/monitors/vcpu.py): the IF, IOPL, IDTR,
  CR0/CR2/CR3/CR4 the guest kernel believes it has, a pending virtual interrupt, and
  virtual devices (hvsim/monitors/devices.py): a console on port 0xE9 and an interval
  timer on ports 0x40/0x41, as the machine's own devices, and a small disk on ports
  1F0h-1F7h, the same model the native and VT-x hosts give a guest;
* a privileged instruction of the guest kernel raises #GP(0) at CPL 1 and leaves
  ``run()`` with the instruction already decoded (``event.insn``: mnemonic, registers,
  the memory operand's linear address, the length -- the analogue of VMX's exit
  qualification). One plain function per instruction (:data:`HANDLERS`) **emulates** it
  on the virtual CPU and resumes the guest after it; innocuous instructions run at full
  speed in the jitted core;
* the guest's own exceptions and system calls are **reflected** into the guest's
  *virtual* IDT (hvsim/monitors/reflect.py): the frame is built on the guest's ring-1
  stack exactly as the CPU would build it (SDM Vol. 3A, 6.12.1);
* real timer interrupts become **virtual ticks**, injected when the virtual IF allows
  and otherwise held pending (one latch, like the interrupt line).

The x86 hole, which this monitor cannot close: ``POPF`` (and ``IRET``) at CPL 1 do not
trap -- they silently keep IF (SDM Vol. 2B, POPF/POPFD "Operation"). A guest kernel's
``pushf; cli; ...; popf`` leaves the *virtual* IF at 0 for ever, and the monitor never
learns. With ``virtualizable=True`` (the machine's hypothetical switch that makes the
sensitive instructions trap above ring 0), POPF, PUSHF and IRET trap too and this same
monitor emulates them: theorem 1 holds, the VMM works.

Simplifications, each deliberate: the guest is *ring-aware* in one respect (its IDT
gates name the ring-1 code segment of the monitor's GDT, as a Xen PV guest's do); the
monitor provides the GDT and TSS (hvsim.rings.setup) and does not virtualize LGDT/LTR;
while the guest's paging is off, the real paging is off too and the guest could write
the monitor's tables in its low memory.

Guest paging (CR0.PG) runs on **shadow page tables** (hvsim/mmu/shadow.py): the machine's
top :data:`MONITOR_PAGES` pages are the monitor's own memory, never mapped into the
guest -- the guest's RAM is everything below them. When the guest turns paging on, the
real CR3 points at shadow tables built there; the guest's MOV CR3, MOV CR0/CR4 and
INVLPG (privileged: they trap) switch, reset or trim them, and every #PF reaches the
monitor, which sorts it into hidden (filled), true (reflected with the guest's error
code and CR2) and trace (a write to a guest page table: emulated). The monitor's GDT
and TSS move into its memory, mapped read-only in the top 4 MiB of every shadow
address space (:data:`~hvsim.mmu.shadow.HOLE_BASE`, where VMware's monitor lived): the
CPU reads descriptors through linear addresses, so that one page must be mapped. A
guest write there, or any use of the rest of those 4 MiB, stops the guest; a guest
*read* of that page sees the monitor's GDT and TSS -- VMware kept its guests out of the
region with segment limits, which hvsim does not use (they would cost the flat-segment
fast paths of its interpreter and block translator). Nothing else of the monitor's is
mapped.

Every handler is a plain function ``handler(mon, ev) -> str | None``: it emulates the
instruction ``ev.insn`` on ``mon``'s virtual CPU and returns what it did, or None when the
instruction faults on the virtual CPU too (the monitor then reflects #GP(0) to the
guest). Tests feed them made-up events.

>>> from hvsim.guests import teaching_kernel
>>> mon = TrapAndEmulate(program=teaching_kernel())
>>> mon.run(20_000).kind
'budget'
>>> mon.console
'kernel up\\nhello from ring 3\\n'
>>> mon.log[0].trap, mon.log[0].instruction, mon.log[0].action
('#GP (general protection)', 'lidt [0x1125]', 'emulated LIDT: virtual IDTR = base 0x30000 limit 0x7ff')
"""
from __future__ import annotations

import collections
import dataclasses
import struct

import numpy as np
from typing import Callable, Optional

from hvsim.arch import layout as L
from hvsim.arch.cr import CR0_PG, CR0_WP
from hvsim.arch.pte import PTE_P
from hvsim.arch.flags import IF, IOPL_MASK, IOPL_SHIFT, FIXED1, POPF_WRITABLE, RF, VM
from hvsim.arch.layout import AR_DPL_SHIFT
from hvsim.arch.vectors import vector_name, GP, PF, HAS_ERROR_CODE
from hvsim.asm.table import REG32, SREG
from hvsim.arch.exits import EXIT_BUDGET, EXIT_EXCEPTION
from hvsim.instruction import Instruction, from_exit_info
from hvsim.machine import Event, Machine, Snapshot
from hvsim.monitors.base import Kill, LogEntry, Monitor, MonitorEvent, shadow_stats
from hvsim.monitors.devices import (VirtualDevices, CONSOLE_PORT, TIMER_PERIOD_PORT,  # noqa: F401
                                    TIMER_VECTOR_PORT)
from hvsim.mmu.shadow import (HIDDEN, HIDDEN_DONE, HOLE_BASE, MMIO, TRUE, ShadowError,
                              ShadowMMU)
from hvsim.monitors.reflect import GATE_SIZE, gate, read, reflect, stack_linear, write
from hvsim.monitors.stores import sized_reg, store_of
from hvsim.monitors.vcpu import VirtualCPU
from hvsim.rings.descriptors import ERR_IDT
from hvsim.rings.setup import STACK_SPACING, install

__all__ = ["TrapAndEmulate", "HANDLERS", "GUEST_RING", "MonitorSnapshot", "MONITOR_PAGES"]

GUEST_RING = 1                 # where the guest kernel really runs (virtual ring 0)
HOST_TIMER_VECTOR = 0x20       # the vector of the *real* timer, routed to the monitor
MASK32 = 0xFFFFFFFF
IRET_WRITABLE = POPF_WRITABLE | RF     # IRET also loads RF (SDM Vol. 2A, IRET "Operation")
PUSHF_HIDDEN = RF | VM         # PUSHFD's image has VM and RF cleared (SDM Vol. 2B, PUSHF)

# opcodes (hvsim/cpu/decode.py numbering: 0x100 | second byte for 0F xx)
OPC_MOV_FROM_CR, OPC_MOV_TO_CR = 0x120, 0x122        # 0F 20 /r, 0F 22 /r (SDM Vol. 2B MOV)
OPC_MOV_FROM_DR, OPC_MOV_TO_DR = 0x121, 0x123        # 0F 21 /r, 0F 23 /r (SDM Vol. 2B MOV DRn)
OPC_MOV_FROM_SREG = 0x8C                              # 8C /r
OPC_PUSH_SREG = (0x06, 0x0E, 0x16, 0x1E, 0x1A0, 0x1A8)  # PUSH ES/CS/SS/DS, 0F A0/A8 FS/GS
OPC_IO_IMM = (0xE4, 0xE5, 0xE6, 0xE7)                 # IN/OUT with an imm8 port
CR_NAMES = {0: "cr0", 2: "cr2", 3: "cr3", 4: "cr4"}

_PF_NAME = vector_name(PF)
# the exit-info block, read as a list (hvsim/arch/layout.py)
_X_VECTOR, _X_ERROR, _X_EIP, _X_ADDR, _X_CPL = (i - L.EXIT_INFO for i in (
    L.EXIT_VECTOR, L.EXIT_ERROR, L.EXIT_EIP, L.EXIT_ADDR, L.EXIT_CPL))
_I_STEPS, _I_TSC = L.EXIT_STEPS, L.TSC
PAGE = 4096
GUEST_RAM = 1 << 20            # the guest's RAM on a machine the monitor makes
# the monitor's own memory at the top of the machine: page 0 its GDT and TSS while the
# guest pages, page 1 the page table of its linear hole, the rest the shadow tables
MONITOR_PAGES = 64
_TABLES_PAGE, _HOLE_TABLE_PAGE, _POOL_FIRST = 0, 1, 2

# the instructions Robin & Irvine (USENIX Security 2000) list as sensitive but not
# privileged, as the decoder names them: they trap only under `virtualizable`
SENSITIVE_UNPRIVILEGED = {"pushfd", "popfd", "iretd", "sgdt", "sidt", "sldt", "str", "smsw",
                          "lar", "lsl", "verr", "verw"}


@dataclasses.dataclass(frozen=True)
class MonitorSnapshot:
    """The machine's snapshot plus the monitor's own state."""
    machine: Snapshot
    vcpu: VirtualCPU
    log: tuple
    traps: dict
    emulated: dict
    reflected: dict
    scalars: dict
    shadow: object = None
    disk: tuple = ()


def sensitive_unprivileged(insn: Instruction) -> bool:
    """Does ``insn`` trap only because of the virtualizable switch?"""
    return (insn.mnemonic in SENSITIVE_UNPRIVILEGED or insn.opcode == OPC_MOV_FROM_SREG
            or insn.opcode in OPC_PUSH_SREG)


def virtual_cpl(ring: int) -> int:
    """Ring compression: real ring 1 is the guest's ring 0; ring 3 stays ring 3."""
    if ring == GUEST_RING:
        return 0
    if ring == 3:
        return 3
    raise Kill(f"the guest is in ring {ring}, which the monitor never gives it")


def _resume_after(mon: "TrapAndEmulate", ev: Event) -> None:
    mon.machine.cpu.eip = (ev.eip + ev.insn.length) & MASK32


# ---- the handlers: one plain function per trapping instruction ----------------------------
def emulate_cli(mon: "TrapAndEmulate", ev: Event) -> Optional[str]:
    v = mon.vcpu
    if virtual_cpl(ev.cpl) > v.iopl:        # SDM Vol. 2A, CLI: #GP(0) if CPL > IOPL
        return None
    old, v.IF = v.IF, 0
    _resume_after(mon, ev)
    return f"emulated CLI: virtual IF {old}→0"


def emulate_sti(mon: "TrapAndEmulate", ev: Event) -> Optional[str]:
    v = mon.vcpu
    if virtual_cpl(ev.cpl) > v.iopl:        # SDM Vol. 2B, STI: #GP(0) if CPL > IOPL
        return None
    old, v.IF = v.IF, 1
    if not old:
        mon._shadow = True                  # interrupts wait one instruction (SDM Vol. 3A, 6.8.3)
    _resume_after(mon, ev)
    return f"emulated STI: virtual IF {old}→1"


def emulate_hlt(mon: "TrapAndEmulate", ev: Event) -> Optional[str]:
    if virtual_cpl(ev.cpl) != 0:            # privileged (SDM Vol. 3A, 5.9)
        return None
    _resume_after(mon, ev)
    v = mon.vcpu
    if v.IF and v.pending is not None:
        return "emulated HLT: a virtual tick is pending, no wait"
    if v.IF and mon._idle_until_tick():
        return f"emulated HLT: idle until the next timer tick (TSC → {mon.machine.cpu.tsc})"
    why = "virtual IF=0" if not v.IF else "no timer running"
    mon._state = "halted"
    mon._final = MonitorEvent("halt", ev.eip, mon.machine.cpu.cpl, 0,
                              reason=f"guest HLT with {why}: nothing can wake it")
    return f"emulated HLT with {why}: the guest is halted for good"


def emulate_lidt(mon: "TrapAndEmulate", ev: Event) -> Optional[str]:
    if virtual_cpl(ev.cpl) != 0:
        return None
    lin = ev.insn.mem.linear
    limit, base = struct.unpack("<HI", read(mon.machine, lin, 6))    # 16-bit limit, 32-bit base
    mon.vcpu.idtr_limit, mon.vcpu.idtr_base = limit, base
    _resume_after(mon, ev)
    return f"emulated LIDT: virtual IDTR = base {base:#x} limit {limit:#x}"


def emulate_lgdt(mon: "TrapAndEmulate", ev: Event) -> Optional[str]:
    """LGDT at virtual CPL 0: the virtual GDTR takes the guest's table. The real GDTR stays
    the monitor's: hvsim's monitor runs its guests on the GDT it built (install()), whose
    layout they are written for, and does not shadow the guest's descriptors as a
    production VMM does (VMware copies them with their DPLs compressed)."""
    if virtual_cpl(ev.cpl) != 0:
        return None
    limit, base = struct.unpack("<HI", read(mon.machine, ev.insn.mem.linear, 6))
    mon.vcpu.gdtr_limit, mon.vcpu.gdtr_base = limit, base
    _resume_after(mon, ev)
    return f"emulated LGDT: virtual GDTR = base {base:#x} limit {limit:#x}"


def emulate_sgdt(mon: "TrapAndEmulate", ev: Event) -> Optional[str]:
    # traps only under `virtualizable`; at every CPL it stores the *virtual* GDTR
    v = mon.vcpu
    write(mon.machine, ev.insn.mem.linear, struct.pack("<HI", v.gdtr_limit, v.gdtr_base))
    _resume_after(mon, ev)
    return f"emulated SGDT: stored the virtual GDTR (base {v.gdtr_base:#x})"


def emulate_sidt(mon: "TrapAndEmulate", ev: Event) -> Optional[str]:
    # traps only under `virtualizable`; at every CPL it stores the *virtual* IDTR
    v = mon.vcpu
    write(mon.machine, ev.insn.mem.linear, struct.pack("<HI", v.idtr_limit, v.idtr_base))
    _resume_after(mon, ev)
    return f"emulated SIDT: stored the virtual IDTR (base {v.idtr_base:#x})"


def emulate_mov_cr(mon: "TrapAndEmulate", ev: Event) -> Optional[str]:
    """MOV CRn, r32 (0F 22 /r) and MOV r32, CRn (0F 20 /r): ModRM.reg names CRn and
    ModRM.rm the general register (SDM Vol. 2B, MOV -- Move to/from Control Registers)."""
    if virtual_cpl(ev.cpl) != 0:
        return None
    insn = ev.insn
    cr = CR_NAMES.get(insn.reg)
    if cr is None:
        raise Kill(f"'{insn}' at {ev.eip:#010x} names CR{insn.reg}, which does not exist (#UD)")
    cpu, v = mon.machine.cpu, mon.vcpu
    gpr = insn.rm_name
    if insn.opcode == OPC_MOV_TO_CR:
        value = getattr(cpu, gpr)
        old = getattr(v, cr)
        setattr(v, cr, value)
        _resume_after(mon, ev)
        text = f"emulated MOV {cr.upper()}: virtual {cr.upper()} {old:#x}→{value:#x}"
        return text + mon._paging_changed(cr)
    value = getattr(v, cr)
    setattr(cpu, gpr, value)
    _resume_after(mon, ev)
    return f"emulated MOV from {cr.upper()}: {gpr} = virtual {cr.upper()} = {value:#x}"


def emulate_mov_dr(mon: "TrapAndEmulate", ev: Event) -> Optional[str]:
    """MOV DRn, r32 (0F 23 /r) and MOV r32, DRn (0F 21 /r) on the virtual debug registers.
    The guest kernel believes CR4.DE is clear, so DR4/DR5 are DR6/DR7 (SDM Vol. 3A, 17.2.2);
    the real DR7 is the monitor's, so the guest's breakpoints are kept, not armed."""
    if virtual_cpl(ev.cpl) != 0:
        return None
    insn = ev.insn
    n = {4: 6, 5: 7}.get(insn.reg, insn.reg)
    cpu, v = mon.machine.cpu, mon.vcpu
    gpr = insn.rm_name
    if insn.opcode == OPC_MOV_TO_DR:
        old, v.dr[n] = v.dr[n], getattr(cpu, gpr)
        _resume_after(mon, ev)
        return f"emulated MOV DR{n}: virtual DR{n} {old:#x}→{v.dr[n]:#x}"
    setattr(cpu, gpr, v.dr[n])
    _resume_after(mon, ev)
    return f"emulated MOV from DR{n}: {gpr} = virtual DR{n} = {v.dr[n]:#x}"


def emulate_invlpg(mon: "TrapAndEmulate", ev: Event) -> Optional[str]:
    """INVLPG m (0F 01 /7), privileged (SDM Vol. 2A, INVLPG): the shadow entry of the
    page goes (resynced first if its table is unsync), and the TLB's."""
    if virtual_cpl(ev.cpl) != 0:
        return None
    lin = ev.insn.mem.linear
    _resume_after(mon, ev)
    if mon.shadow is None:
        return f"emulated INVLPG {lin:#x}: no shadow tables yet, nothing cached"
    mon.shadow.invlpg(lin)
    return f"emulated INVLPG {lin:#x}: its shadow entry dropped"


def emulate_cache_flush(mon: "TrapAndEmulate", ev: Event) -> Optional[str]:
    """INVD and WBINVD: privileged (SDM Vol. 2A INVD, Vol. 2C WBINVD); the machine models
    no caches, so at virtual CPL 0 there is nothing to do but go on."""
    if virtual_cpl(ev.cpl) != 0:
        return None
    _resume_after(mon, ev)
    return f"emulated {ev.insn.mnemonic.upper()}: no caches to flush"


def _port(mon: "TrapAndEmulate", insn: Instruction) -> int:
    """The port of IN/OUT: the imm8 (E4-E7) or DX (EC-EF) (SDM Vol. 2A, IN; Vol. 2B, OUT)."""
    return insn.imm if insn.opcode in OPC_IO_IMM else mon.machine.cpu.edx & 0xFFFF


def emulate_out(mon: "TrapAndEmulate", ev: Event) -> Optional[str]:
    if virtual_cpl(ev.cpl) > mon.vcpu.iopl:     # no virtual I/O bitmap: CPL > IOPL is #GP(0)
        return None
    insn = ev.insn
    value = mon.machine.cpu.eax & ((1 << (8 * insn.size)) - 1)
    port = _port(mon, insn)
    _resume_after(mon, ev)
    return "emulated OUT: " + mon.devices.out(port, insn.size, value)


def emulate_in(mon: "TrapAndEmulate", ev: Event) -> Optional[str]:
    if virtual_cpl(ev.cpl) > mon.vcpu.iopl:
        return None
    insn = ev.insn
    cpu = mon.machine.cpu
    port = _port(mon, insn)
    value, what = mon.devices.in_(port)
    mask = (1 << (8 * insn.size)) - 1
    cpu.eax = (cpu.eax & ~mask & MASK32) | (value & mask)
    _resume_after(mon, ev)
    return f"emulated IN: port {port:#x} ({what}) → {value & mask:#x}"


def _set_eflags(mon: "TrapAndEmulate", image: int, writable: int, vcpl: int) -> str:
    """Load ``image`` into EFLAGS as POPF/IRET at virtual CPL ``vcpl`` would: the virtual
    IF only if vcpl <= virtual IOPL, the virtual IOPL only at vcpl 0 (SDM Vol. 2B, POPF).
    The real IF stays 1 and the real IOPL 0."""
    v = mon.vcpu
    old_if, old_iopl = v.IF, v.iopl
    if vcpl <= v.iopl:
        v.IF = 1 if image & IF else 0
    if vcpl == 0:
        v.iopl = (image & IOPL_MASK) >> IOPL_SHIFT
    keep = writable & ~(IF | IOPL_MASK)
    cpu = mon.machine.cpu
    cpu.eflags = (cpu.eflags & ~keep) | (image & keep) | IF
    out = f"virtual IF {old_if}→{v.IF}"
    if v.iopl != old_iopl:
        out += f", virtual IOPL {old_iopl}→{v.iopl}"
    return out


def emulate_pushfd(mon: "TrapAndEmulate", ev: Event) -> Optional[str]:
    m = mon.machine
    image = mon.vcpu.eflags_image(m.cpu.eflags) & ~PUSHF_HIDDEN
    esp = (m.cpu.esp - 4) & MASK32
    write(m, stack_linear(m, esp), struct.pack("<I", image & MASK32))
    m.cpu.esp = esp
    _resume_after(mon, ev)
    return f"emulated PUSHF: pushed {image:#x} (virtual IF={mon.vcpu.IF})"


def emulate_popfd(mon: "TrapAndEmulate", ev: Event) -> Optional[str]:
    m = mon.machine
    image = struct.unpack("<I", read(m, stack_linear(m, m.cpu.esp), 4))[0]
    m.cpu.esp = (m.cpu.esp + 4) & MASK32
    _resume_after(mon, ev)
    return f"emulated POPF: {_set_eflags(mon, image, POPF_WRITABLE, virtual_cpl(ev.cpl))}"


def emulate_iretd(mon: "TrapAndEmulate", ev: Event) -> Optional[str]:
    """IRET of the guest kernel (SDM Vol. 2A, IRET, protected mode, no NT): pop EIP, CS,
    EFLAGS and, returning to an outer ring, ESP and SS."""
    vcpl = virtual_cpl(ev.cpl)
    if vcpl != 0:
        raise Kill(f"IRET at virtual CPL {vcpl} (eip={ev.eip:#010x}) is not emulated")
    m = mon.machine
    cpu = m.cpu
    esp = cpu.esp
    eip, cs, image = struct.unpack("<III", read(m, stack_linear(m, esp), 12))
    cs &= 0xFFFF
    rpl = cs & 3
    if rpl < GUEST_RING:
        raise Kill(f"the guest IRETs to ring {rpl} (CS={cs:#x}) at {ev.eip:#010x}: "
                   "the monitor owns ring 0")
    text = _set_eflags(mon, image, IRET_WRITABLE, vcpl)
    try:
        if rpl > cpu.cpl:                                   # to an outer ring
            new_esp, ss = struct.unpack("<II", read(m, stack_linear(m, esp + 12), 8))
            cpu.cs = cs
            cpu.ss = ss & 0xFFFF
            cpu.esp = new_esp
            for s in ("ds", "es", "fs", "gs"):              # null data segments DPL < CPL
                seg = cpu.segment(s)
                dpl = (seg["access_rights"] >> AR_DPL_SHIFT) & 3
                if seg["selector"] & ~3 and dpl < rpl:
                    setattr(cpu, s, 0)
        else:
            cpu.cs = cs
            cpu.esp = (esp + 12) & MASK32
    except ValueError as e:
        raise Kill(f"IRET at {ev.eip:#010x} to a bad segment: {e}") from None
    cpu.eip = eip
    return f"emulated IRET to ring {rpl} eip={eip:#x}: {text}"


# ---- the sensitive unprivileged instructions, when the virtualizable switch makes them trap
# (Robin & Irvine, USENIX Security 2000: on plain x86 they run in ring 1 and show the guest
# the real machine -- lesson 02 measures each)
def _store_operand(mon: "TrapAndEmulate", insn: Instruction, value: int, size: int) -> str:
    """Write ``value`` where ``insn`` stores: its ModRM register (all 32 bits, as P6 and
    later processors write them) or its ``size``-byte memory operand."""
    if insn.rm is not None:
        name = REG32[insn.rm]
        setattr(mon.machine.cpu, name, value & MASK32)
        return name
    write(mon.machine, insn.mem.linear, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
    return f"[{insn.mem.linear:#x}]"


def virtual_selector(selector: int) -> int:
    """A selector as the guest kernel expects to read it: ring compression moved its ring 0
    to ring 1, so RPL 1 reads as 0; any other selector (ring 3's, a null one) as it is."""
    return selector & ~3 if selector & 3 == GUEST_RING else selector


def emulate_smsw(mon: "TrapAndEmulate", ev: Event) -> Optional[str]:
    """SMSW (0F 01 /4): the *virtual* CR0, as MOV from CR0 gives it (SDM Vol. 2B, SMSW:
    a register gets CR0, P6 and later all of it; memory its low 16 bits)."""
    value = mon.vcpu.cr0
    where = _store_operand(mon, ev.insn, value if ev.insn.rm is not None else value & 0xFFFF, 2)
    _resume_after(mon, ev)
    return f"emulated SMSW: {where} = virtual CR0 {value:#x}"


def emulate_push_sreg(mon: "TrapAndEmulate", ev: Event) -> Optional[str]:
    """PUSH Sreg: the selector the guest expects (RPL 0 for its 'ring 0' segments), pushed
    zero-extended to 32 bits as hvsim's CPU pushes it."""
    m = mon.machine
    name = SREG[OPC_PUSH_SREG.index(ev.insn.opcode)]     # (the same order)
    real = int(getattr(m.cpu, name))
    value = virtual_selector(real)
    esp = (m.cpu.esp - 4) & MASK32
    write(m, stack_linear(m, esp), struct.pack("<I", value))
    m.cpu.esp = esp
    _resume_after(mon, ev)
    return f"emulated PUSH {name.upper()}: pushed {value:#x} (really {real:#x})"


def emulate_mov_from_sreg(mon: "TrapAndEmulate", ev: Event) -> Optional[str]:
    """MOV r/m16, Sreg (8C /r): the selector the guest expects, into a register (zero-
    extended) or 16 bits of memory."""
    insn = ev.insn
    if insn.reg > 5:
        raise Kill(f"'{insn}' at {ev.eip:#010x} names no segment register (#UD)")
    name = SREG[insn.reg]
    real = int(getattr(mon.machine.cpu, name))
    value = virtual_selector(real)
    where = _store_operand(mon, insn, value, 2)
    _resume_after(mon, ev)
    return f"emulated MOV from {name.upper()}: {where} = {value:#x} (really {real:#x})"


#: mnemonic (as the decoder names it, hvsim/asm/table.py) -> handler
HANDLERS: dict[str, Callable[["TrapAndEmulate", Event], Optional[str]]] = {
    "cli": emulate_cli, "sti": emulate_sti, "hlt": emulate_hlt, "lidt": emulate_lidt,
    "sidt": emulate_sidt, "mov cr": emulate_mov_cr, "out": emulate_out, "in": emulate_in,
    "pushfd": emulate_pushfd, "popfd": emulate_popfd, "iretd": emulate_iretd,
    "mov dr": emulate_mov_dr, "invd": emulate_cache_flush, "wbinvd": emulate_cache_flush,
    "smsw": emulate_smsw, "push sreg": emulate_push_sreg, "mov from sreg": emulate_mov_from_sreg,
    "lgdt": emulate_lgdt, "sgdt": emulate_sgdt, "invlpg": emulate_invlpg,
}


def handler_key(insn: Instruction) -> str:
    """The :data:`HANDLERS` key of ``insn``: its mnemonic; 'mov cr' and 'mov dr' for MOV
    to/from a control or debug register; 'push sreg' and 'mov from sreg' for the two
    instructions that store a segment selector (sensitive, never privileged)."""
    if insn.opcode in (OPC_MOV_FROM_CR, OPC_MOV_TO_CR):
        return "mov cr"
    if insn.opcode in (OPC_MOV_FROM_DR, OPC_MOV_TO_DR):
        return "mov dr"
    if insn.opcode in OPC_PUSH_SREG:
        return "push sreg"
    if insn.opcode == OPC_MOV_FROM_SREG:
        return "mov from sreg"
    return insn.mnemonic


class TrapAndEmulate(Monitor):
    """Run a guest kernel in ring 1 under a trap-and-emulate monitor.

    Parameters
    ----------
    machine : a :class:`~hvsim.Machine` (a fresh 1 MiB one if None). The monitor installs
              its GDT/IDT/TSS (:func:`hvsim.rings.setup.install`) and routes every vector
              to itself.
    program : the guest kernel (an assembled Program; entry = label ``start``), loaded
              and entered in ring 1 on the ring-1 stack (TSS.SS1:ESP1). None: load and
              enter it yourself with :meth:`boot`.
    virtualizable : set ``machine.virtualizable``: POPF/PUSHF/IRET (and the other
              sensitive instructions) then trap at CPL > 0 too.
    unsync : shadow paging leaves written guest page tables writable until the next
              INVLPG / CR3 load (KVM's unsync pages) instead of emulating each write.

    The machine's top MONITOR_PAGES pages are the monitor's (shadow tables); the guest's
    RAM is the rest (a machine made here: 1 MiB of guest RAM). The rings' stacks are at
    the top of the guest's RAM.
    """
    name = "trap-and-emulate"

    def __init__(self, machine: Optional[Machine] = None, program=None, *,
                 virtualizable: bool = False, unsync: bool = False):
        if machine is None:
            machine = Machine(memory=GUEST_RAM + self._reserved_pages() * PAGE)
        if not isinstance(machine, Machine):
            raise TypeError(f"machine must be an hvsim Machine, got {type(machine).__name__}")
        if not isinstance(virtualizable, bool):
            raise TypeError(f"virtualizable must be True or False, got {virtualizable!r}")
        if not isinstance(unsync, bool):
            raise TypeError(f"unsync must be True or False, got {unsync!r}")
        reserved = self._reserved_pages()
        ram = len(machine.memory) - reserved * PAGE
        if ram < 1 << 16:
            raise ValueError(f"a {len(machine.memory):#x}-byte machine leaves the guest "
                             f"{max(ram, 0):#x} bytes of RAM beside the monitor's "
                             f"{reserved} pages: give it at least 64 KiB more")
        self.machine = machine
        self.ram = ram
        self.unsync = unsync
        self.shadow: Optional[ShadowMMU] = None      # made when the guest turns paging on
        self.tables = dataclasses.replace(
            install(machine, ring0_stack=ram, ring1_stack=ram - STACK_SPACING,
                    ring2_stack=ram - 2 * STACK_SPACING), memory_size=ram)
        # the monitor owns every vector: exceptions, INT n and the real timer leave run()
        machine.route(range(256), "host")
        machine.virtualizable = virtualizable
        self._vcpu = VirtualCPU(gdtr_base=int(machine.cpu.gdtr_base),
                                gdtr_limit=int(machine.cpu.gdtr_limit))
        self.devices = VirtualDevices(self._vcpu, on_timer=self._program_timer)
        self._log: list = []                     # LogEntry, or a hidden #PF's raw tuple
        self._clean = 0                          # _log[:_clean] are all LogEntry
        self.traps = collections.Counter()       # by Event.name
        self.emulated = collections.Counter()    # by mnemonic
        self.reflected = collections.Counter()   # by vector name
        self.ticks_delivered = 0                 # virtual ticks injected into the guest
        self.ticks_coalesced = 0                 # real ticks that found one already pending
        self.idle_instructions = 0               # time skipped while the guest slept in HLT
        self._state = "running"                  # 'running', 'halted', 'killed'
        self._final: Optional[MonitorEvent] = None
        self._shadow = False                     # STI's one-instruction interrupt shadow
        self._timer_epoch = 0                    # TSC when the real timer was (re)started
        if program is not None:
            self.boot(program)

    def _reserved_pages(self) -> int:
        """The pages at the top of the machine the monitor keeps for itself (a subclass
        that keeps more -- binary translation's translation cache -- says so here)."""
        return MONITOR_PAGES

    # ---- the protocol ---------------------------------------------------------------------
    @property
    def log(self) -> list:
        """Every exit handled, oldest first (:class:`~hvsim.monitors.base.LogEntry`). The
        hidden faults run() handles are kept as plain tuples until the log is read: a
        hidden fault is the hot path of shadow paging."""
        log = self._log
        for i in range(self._clean, len(log)):
            e = log[i]
            if type(e) is tuple:
                raw, tsc = e
                x = np.frombuffer(raw, np.int64).tolist()
                log[i] = LogEntry("hidden", _PF_NAME, PF, x[_X_ERROR], x[_X_EIP], x[_X_CPL],
                                  from_exit_info(x),
                                  f"hidden #PF at {x[_X_ADDR]:#x}: shadow entry filled", tsc)
        self._clean = len(log)
        return log

    @log.setter
    def log(self, entries: list) -> None:
        self._log = entries
        self._clean = 0

    @property
    def vcpu(self) -> VirtualCPU:
        return self._vcpu

    @vcpu.setter
    def vcpu(self, v: VirtualCPU) -> None:
        self._vcpu = v
        self.devices.vcpu = v

    @property
    def console(self) -> str:
        return self.devices.console

    @property
    def shadow_mmu(self) -> Optional[ShadowMMU]:
        return self.shadow

    @property
    def state(self) -> str:
        """'running', 'halted' (nothing can wake the guest) or 'killed'."""
        return self._state

    @property
    def stats(self) -> dict:
        return shadow_stats({"traps": sum(self.traps.values()),
                             "emulated": sum(self.emulated.values()),
                             "reflected": sum(self.reflected.values()),
                             "injected": self.ticks_delivered, "vm_exits": 0, "hypercalls": 0},
                            self.shadow)

    @property
    def counters(self) -> dict:
        """Everything counted, flat: traps by name, emulated instructions, reflections."""
        d = {f"trap {k}": v for k, v in sorted(self.traps.items())}
        d.update({f"emulated {k.upper()}": v for k, v in sorted(self.emulated.items())})
        d.update({f"reflected {k}": v for k, v in sorted(self.reflected.items())})
        d.update(ticks_delivered=self.ticks_delivered, ticks_coalesced=self.ticks_coalesced,
                 idle_instructions=self.idle_instructions, traps=sum(self.traps.values()))
        if self.shadow is not None:
            d.update(self.shadow.stats)
        return d

    @property
    def virtualizable(self) -> bool:
        """The machine's switch: sensitive instructions trap above ring 0."""
        return self.machine.virtualizable

    @virtualizable.setter
    def virtualizable(self, on: bool) -> None:
        if not isinstance(on, bool):
            raise TypeError(f"virtualizable must be True or False, got {on!r}")
        self.machine.virtualizable = on

    def boot(self, program, esp: Optional[int] = None) -> None:
        """Load ``program`` and enter it in ring 1 (real IF = 1, IOPL = 0; virtual IF = 0)."""
        m = self.machine
        m.load(program)
        entry = m.cpu.eip
        self.tables.enter(m, GUEST_RING, entry, self.tables.stack_top(GUEST_RING) if esp is None else esp)
        m.cpu.eflags = FIXED1 | IF

    def run(self, max_steps: int = 1_000_000) -> Event:
        """Run the guest until an event the monitor does not handle, at most ``max_steps``
        steps. A step is an instruction the machine ran or tried (a trapping instruction
        counts once) or a trap the monitor handled, so the budget always ends the run."""
        max_steps = self._check_budget(max_steps)
        m = self.machine
        item = m._st.item                  # Python ints: cheaper than st[i]
        run = m._run                       # Machine.run without building an Event
        exit_info = m._exit_info
        log = self._log
        used = hidden = 0
        try:
            while used < max_steps:
                if self._state != "running":
                    return self._final
                if self._vcpu.pending is not None and self._inject():
                    used += 1
                    continue
                shadow = self._shadow
                kind = run(1 if shadow else max_steps - used)
                steps = item(_I_STEPS)
                if kind == EXIT_BUDGET:
                    used += steps
                    self._shadow = False
                    continue
                used += steps if steps > 1 else 1
                if shadow and steps > 0:
                    self._shadow = False
                outcome = None
                if kind == EXIT_EXCEPTION and self.shadow is not None:
                    x = exit_info.tolist()
                    if x[_X_VECTOR] == PF:
                        # shadow paging's hot path: a hidden fault is handled without an
                        # Event, and logged as its exit-info block until the log is read
                        try:
                            outcome = self.shadow.page_fault(x[_X_ADDR], x[_X_ERROR])
                        except ShadowError as e:
                            outcome = e
                        if outcome is HIDDEN_DONE:
                            hidden += 1
                            if log is not self._log:
                                log = self._log
                            # bytes, not the list: no object for the collector to scan
                            log.append((exit_info.tobytes(), item(_I_TSC)))
                            continue
                final = self._handled(m._event(kind), outcome)
                if final is not None:
                    return final
            return MonitorEvent("budget", m.cpu.eip, m.cpu.cpl, used,
                                reason=f"{max_steps} steps done")
        finally:
            if hidden:
                self.traps[_PF_NAME] += hidden

    def step(self) -> Optional[Event]:
        """One guest instruction (native or emulated), or one interrupt injected; the
        event the monitor could not handle, or None."""
        if self._state != "running":
            return self._final
        if self._inject():
            return None
        shadow = self._shadow
        ev = self.machine.step()
        if shadow and (ev is None or ev.steps > 0):
            self._shadow = False
        if ev is None:
            return None
        return self._handled(ev)

    def snapshot(self) -> MonitorSnapshot:
        """The machine's state and the monitor's (virtual CPU, log, counters)."""
        return MonitorSnapshot(
            self.machine.snapshot(), dataclasses.replace(self.vcpu), tuple(self.log),
            dict(self.traps), dict(self.emulated), dict(self.reflected),
            dict(console=self.devices.console, ticks_delivered=self.ticks_delivered,
                 ticks_coalesced=self.ticks_coalesced, idle_instructions=self.idle_instructions,
                 _state=self._state, _final=self._final, _shadow=self._shadow,
                 _timer_epoch=self._timer_epoch, virtualizable=self.virtualizable),
            None if self.shadow is None else self.shadow.snapshot(), self.devices.disk.snapshot())

    def restore(self, snap: MonitorSnapshot) -> None:
        """Put the machine and the monitor back as they were at :meth:`snapshot`."""
        if not isinstance(snap, MonitorSnapshot):
            raise TypeError(f"restore() takes a MonitorSnapshot, got {type(snap).__name__}")
        self.machine.restore(snap.machine)
        self.vcpu = dataclasses.replace(snap.vcpu)
        self.log = list(snap.log)
        self.traps = collections.Counter(snap.traps)
        self.emulated = collections.Counter(snap.emulated)
        self.reflected = collections.Counter(snap.reflected)
        if snap.disk:
            self.devices.disk.restore(snap.disk)
        for k, v in snap.scalars.items():
            if k == "console":
                self.devices.console = v
            elif k != "virtualizable":
                setattr(self, k, v)
        if snap.shadow is None:
            self.shadow = None
            self.machine.guest_mmu = None
        else:
            if self.shadow is None:
                self._make_shadow()
            self.shadow.restore(snap.shadow)

    def __repr__(self):
        v = self.vcpu
        return (f"<TrapAndEmulate {self._state}, ring {self.machine.cpu.cpl}, "
                f"eip={self.machine.cpu.eip:#x}, virtual IF={v.IF}, "
                f"{len(self.log)} traps, {self.ticks_delivered} ticks delivered"
                f"{', virtualizable' if self.virtualizable else ''}>")

    # ---- dispatch -----------------------------------------------------------------------
    def handle(self, ev: Event, outcome=None) -> Optional[MonitorEvent]:
        """Handle one exit of the machine; the event that ends the run, or None.
        (``outcome``: a #PF the shadow MMU already sorted, from run()'s hot path.)"""
        try:
            if ev.kind == "interrupt":
                self.traps[ev.name] += 1
                self._timer_interrupt(ev)
                return None
            if ev.kind == "exception":
                self.traps[ev.name] += 1
                self._exception(ev, outcome)
                return None
            if ev.kind == "breakpoint":
                return MonitorEvent("breakpoint", ev.eip, ev.cpl, ev.steps,
                                    reason="host breakpoint")
            raise Kill(f"the machine stopped: {ev}")
        except Kill as k:
            return self._kill(str(k), ev)

    def _exception(self, ev: Event, outcome=None) -> None:
        """An exception that left run(): a privileged instruction's #GP(0), a #PF under
        shadow paging, or the guest's own (a subclass sorts its own kinds here)."""
        if ev.vector == GP and ev.error_code == 0 and ev.source == "fault":
            self._general_protection(ev)
        elif ev.vector == PF and self.shadow is not None:
            self._page_fault(ev, outcome)
        else:
            self._guest_exception(ev)

    def _handled(self, ev: Event, outcome=None) -> Optional[MonitorEvent]:
        final = self.handle(ev, outcome)
        if final is None and self._state != "running":
            return self._final          # the guest halted for good in this trap
        return final

    def _kill(self, reason: str, ev: Event) -> MonitorEvent:
        self._record(ev, "killed", f"killed the guest: {reason}")
        self._state = "killed"
        self._final = MonitorEvent("killed", ev.eip, ev.cpl, 0, vector=ev.vector,
                                   error_code=ev.error_code, insn=ev.insn, reason=reason)
        return self._final

    def _record(self, ev: Event, what: str, action: str, insn=None) -> None:
        name = _PF_NAME if ev.vector == PF and ev.kind == "exception" else ev.name
        self._log.append(LogEntry(what, name, ev.vector, ev.error_code, ev.eip, ev.cpl, insn,
                                  action, self.machine.cpu.tsc))

    # ---- #GP(0): a privileged or sensitive instruction ----------------------------------
    def _general_protection(self, ev: Event) -> None:
        insn = ev.insn
        if insn is None:
            raise Kill(f"{ev.name} at eip={ev.eip:#010x} before any instruction was decoded")
        handler = HANDLERS.get(handler_key(insn))
        if handler is not None:
            action = handler(self, ev)
            if action is None:          # the virtual CPU faults too: reflect the #GP
                target = self._reflect(GP, 0, ev.eip)
                self.reflected[ev.name] += 1
                self._record(ev, "reflected",
                             f"{insn.mnemonic.upper()} at virtual CPL {virtual_cpl(ev.cpl)} > "
                             f"virtual IOPL {self.vcpu.iopl}: reflected #GP(0) to guest "
                             f"handler {target:#x}", insn)
                return
            self.emulated[insn.mnemonic] += 1
            self._record(ev, "emulated", action, insn)
            return
        if ev.cpl == GUEST_RING or (self.virtualizable and sensitive_unprivileged(insn)):
            raise Kill(f"unsupported instruction '{insn}' trapped ({ev.name}) at eip="
                       f"{ev.eip:#010x} in ring {ev.cpl}: the monitor does not emulate it")
        self._guest_exception(ev)      # the user program's own #GP: the guest kernel's business

    # ---- shadow paging ------------------------------------------------------------------
    def _make_shadow(self) -> None:
        """The shadow MMU, on the monitor's pages at the top of the machine."""
        base = self.ram
        self.shadow = ShadowMMU(self.machine, self.ram,
                                [base + i * PAGE for i in range(_POOL_FIRST, MONITOR_PAGES)],
                                unsync=self.unsync, hole_table=base + _HOLE_TABLE_PAGE * PAGE)
        self.machine.guest_mmu = self.shadow     # the monitor's own reads: the guest's tables

    def _move_tables(self) -> None:
        """Paging starts: the GDT and TSS the CPU reads move into the monitor's memory,
        mapped read-only at HOLE_BASE (the guest's own mappings can no longer reach
        low memory the monitor relies on); GDTR, TR and the TSS descriptor follow."""
        m, t = self.machine, self.tables
        page = self.ram + _TABLES_PAGE * PAGE
        limit = int(m.cpu.gdtr_limit)
        gdt = bytearray(m.memory[t.gdt:t.gdt + limit + 1].tobytes())
        tss_at = 0x800                                    # within the tables page
        index = t.tss_selector & ~7
        base = HOLE_BASE + tss_at                         # the TSS descriptor's new base
        gdt[index + 2:index + 5] = (base & 0xFFFFFF).to_bytes(3, "little")
        gdt[index + 7] = base >> 24
        mem = m._raw_mem
        mem[page:page + len(gdt)] = list(gdt)
        mem[page + tss_at:page + tss_at + 104] = m.memory[t.tss:t.tss + 104]
        hole = self.ram + _HOLE_TABLE_PAGE * PAGE
        mem[hole:hole + 4] = list((page | PTE_P).to_bytes(4, "little"))   # read-only
        st = m._st
        st[L.GDTR_BASE] = HOLE_BASE
        st[L.TR_BASE] = base

    def _paging_changed(self, cr: str) -> str:
        """After the guest wrote a virtual CR: the shadow tables follow (the text is
        appended to the handler's)."""
        v, m = self.vcpu, self.machine
        if cr == "cr3":
            if self.shadow is None or not self.shadow.paging:
                return ""
            root = self.shadow.load_cr3(v.cr3)
            m.cpu.cr3 = root
            return f"; shadow root {root:#x}"
        if cr not in ("cr0", "cr4") or (self.shadow is None and not v.cr0 & CR0_PG):
            return ""
        text = ""
        if self.shadow is None:
            self._make_shadow()
            self._move_tables()
            text = "; shadow paging starts"
        try:
            root = self.shadow.set_mode(v.cr0, v.cr3, v.cr4)
        except ShadowError as e:
            raise Kill(str(e)) from None
        m.cpu.cr3 = root
        m.cpu.cr0 = int(m.cpu.cr0) | CR0_PG | CR0_WP
        return text + f"; shadow root {root:#x}"

    def _page_fault(self, ev: Event, outcome=None) -> None:
        """#PF under shadow paging: hidden (filled), true (reflected) or trace (the
        guest's store into its own page table, emulated). ``outcome``: what the shadow
        MMU already made of it (run()'s hot path), else it is asked here."""
        sh, lin = self.shadow, ev.address
        if outcome is None:
            try:
                outcome = sh.page_fault(lin, ev.error_code)
            except ShadowError as e:
                outcome = e
        if isinstance(outcome, ShadowError):
            raise Kill(str(outcome))
        kind, info = outcome
        if kind == MMIO:
            raise Kill(f"the guest reached physical {info:#010x} (linear {lin:#010x}), beyond "
                       f"its {self.ram:#x} bytes of RAM: this monitor has no device there")
        if kind == HIDDEN:
            self._record(ev, "hidden", f"hidden #PF at {lin:#x}: shadow entry filled", ev.insn)
            return
        if kind == TRUE:
            self.vcpu.cr2 = lin
            target = self._reflect(PF, info, ev.eip)
            self.reflected[ev.name] += 1
            self._record(ev, "reflected", f"true #PF({info:#x}) at {lin:#x}: reflected to "
                                          f"guest handler {target:#x}", ev.insn)
            return
        gpa, insn = info, ev.insn
        table = gpa & ~0xFFF
        if sh.make_unsync(gpa >> 12):
            self._record(ev, "trace", f"write to guest page table {table:#x}: left writable "
                                      "(unsync) until the next INVLPG or CR3 load", insn)
            return
        store = store_of(insn, self._reg)
        if store is not None and insn.mem.linear == lin and (gpa & 0xFFF) + store[0] <= PAGE:
            size, value = store
            sh.write_guest(gpa, value.to_bytes(size, "little"))
            sh.counters["pt_writes_emulated"] += 1
            _resume_after(self, ev)
            self._record(ev, "trace", f"write to guest page table {table:#x}: emulated "
                                      f"[{gpa:#x}] = {value:#x}, shadow entries dropped", insn)
            return
        if sh.unprotect(gpa >> 12):
            self._record(ev, "trace", f"write to guest page table {table:#x} by '{insn}': "
                                      "not a MOV, unshadowed and retried", insn)
            return
        raise Kill(f"'{insn}' at {ev.eip:#010x} writes the guest's current page directory "
                   f"({table:#x}) in a form this monitor does not emulate (MOV stores only)")

    def _reg(self, n: int, size: int) -> int:
        """General register ``n`` (ModRM numbering) at operand size ``size``."""
        cpu = self.machine.cpu
        return sized_reg(lambda i: int(getattr(cpu, REG32[i])), n, size)

    # ---- reflection into the guest's virtual IDT ---------------------------------------
    def _reflect(self, vector: int, error: Optional[int], ret_eip: int) -> int:
        return reflect(self.machine, self.vcpu, vector, error, ret_eip, guest_ring=GUEST_RING,
                       tss=int(self.machine._st[L.TR_BASE]))

    def _guest_exception(self, ev: Event) -> None:
        """The guest's own exception or software interrupt: reflect it."""
        software = ev.source == "software"
        vcpl = virtual_cpl(ev.cpl)
        dpl = gate(self.machine, self.vcpu, ev.vector).dpl if software else 0
        if software and dpl < vcpl:
            # INT n through a gate of DPL < CPL: #GP(n*8+2), EIP on the INT (SDM Vol. 3A,
            # 6.12.1.1) -- how a kernel keeps user programs off its other vectors
            error = ev.vector * GATE_SIZE + ERR_IDT
            target = self._reflect(GP, error, ev.eip)
            self.reflected[vector_name(GP)] += 1
            self._record(ev, "reflected", f"{ev.name} from virtual CPL {vcpl} through a DPL-{dpl} "
                                          f"gate: reflected #GP({error:#x}) to guest handler "
                                          f"{target:#x}", ev.insn)
            return
        if software:
            ret = (ev.eip + ev.length) & MASK32         # INT n is a trap: after the INT
        elif ev.source == "trap":
            ret = self.machine.cpu.eip
        else:
            ret = ev.eip                                # a fault: restart the instruction
        if ev.vector == PF:
            self.vcpu.cr2 = ev.address
        error = ev.error_code if ev.vector in HAS_ERROR_CODE else None
        target = self._reflect(ev.vector, error, ret)
        self.reflected[ev.name] += 1
        self._record(ev, "reflected", f"reflected {ev.name} to guest handler {target:#x}", ev.insn)

    # ---- the timer ----------------------------------------------------------------------
    def _program_timer(self, period: int) -> None:
        """The virtual timer's period drives the real timer, whose ticks the monitor gets."""
        self.machine.set_timer((period, HOST_TIMER_VECTOR) if period else None)
        self._timer_epoch = self.machine.cpu.tsc

    def _timer_interrupt(self, ev: Event) -> None:
        if ev.vector != HOST_TIMER_VECTOR:
            raise Kill(f"unexpected external interrupt {ev.name}")
        v = self.vcpu
        if v.pending is not None:
            self.ticks_coalesced += 1
            self._record(ev, "tick", f"timer tick: one already pending (virtual IF={v.IF}), "
                                     "coalesced")
        else:
            v.pending = v.timer_vector
            self._record(ev, "tick", f"timer tick: virtual INT {v.timer_vector:#04x} pending "
                                     f"(virtual IF={v.IF})")

    def _inject(self) -> bool:
        """Deliver the pending virtual interrupt if the virtual IF allows; True if done."""
        v = self.vcpu
        if v.pending is None or not v.IF or self._shadow:
            return False
        vector, v.pending = v.pending, None
        m = self.machine
        ev = Event("interrupt", m.cpu.eip, m.cpu.cpl, 0, vector=vector, source="external")
        try:
            handler = self._reflect(vector, None, m.cpu.eip)
        except Kill as k:
            self._kill(str(k), ev)
            return True
        self.ticks_delivered += 1
        self._record(ev, "injected", f"injected virtual timer tick {vector_name(vector)} into "
                                     f"guest handler {handler:#x}")
        return True

    def _idle_until_tick(self) -> bool:
        """HLT with virtual IF=1: let time pass to the real timer's next deadline.
        False if no timer is running (nothing will ever wake the guest)."""
        period = self.vcpu.timer_period
        if not period:
            return False
        m = self.machine
        tsc = m.cpu.tsc
        deadline = self._timer_epoch + period * ((tsc - self._timer_epoch) // period + 1)
        self.idle_instructions += deadline - tsc
        m.cpu.tsc = deadline
        return True
