"""A minimal trap-and-emulate virtual machine monitor, in Python (not jitted).

This is the classic VMM of Popek & Goldberg ("Formal Requirements for Virtualizable
Third Generation Architectures", CACM 17(7), 1974), on IA-32:

* the **guest kernel runs deprivileged, in ring 1**, with IOPL = 0 and the real IF = 1
  at all times; its user programs run in ring 3, as usual;
* the **monitor owns the real ring 0**: every vector (exceptions 0-31, software
  interrupts, the real timer) is routed out of ``Machine.run()`` to this Python code
  (``Machine.route(..., "host")``), so the real IDT is never used;
* it keeps a **virtual CPU**: the IF, IOPL, IDTR, CR0/CR2/CR3/CR4 the guest kernel
  believes it has, a pending virtual interrupt, and two virtual devices (a console on
  port 0xE9, an interval timer on ports 0x40/0x41, as the machine's own devices);
* a privileged instruction of the guest kernel raises #GP(0) at CPL 1. The monitor
  decodes it (only trapping instructions are decoded here, with hvsim's disassembler;
  innocuous instructions run at full speed in the jitted core), **emulates** it on the
  virtual CPU and resumes the guest after it;
* the guest's own exceptions and system calls are **reflected** into the guest's
  *virtual* IDT: the monitor builds the interrupt frame on the guest's ring-1 stack
  exactly as the CPU would (SDM Vol. 3A, 6.12.1) and jumps to the guest's handler;
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
guest paging (CR0.PG) is refused (shadow page tables are another lesson); the guest can
write the monitor's tables in memory (a real VMM protects them with segment limits or
paging).

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
import re
import struct
from typing import Optional

from hvsim.asm import disassemble_one
from hvsim.arch.cr import CR0_PG
from hvsim.arch.flags import IF, IOPL_MASK, IOPL_SHIFT, TF, NT, RF, VM, FIXED1, POPF_WRITABLE
from hvsim.arch.layout import AR_DPL_SHIFT
from hvsim.machine import Machine, Event, Snapshot
from hvsim.rings import decode_descriptor
from hvsim.rings.descriptors import (TSS_ESP0, ERR_IDT, SYS_INT_GATE32,
                                     SYS_TRAP_GATE32)
from hvsim.rings.setup import install
from hvsim.arch.vectors import vector_name, GP, PF, HAS_ERROR_CODE

__all__ = ["TrapAndEmulate", "VirtualCPU", "LogEntry", "MonitorEvent", "MonitorSnapshot",
           "GUEST_RING"]

GUEST_RING = 1                 # where the guest kernel really runs (virtual ring 0)
MASK32 = 0xFFFFFFFF

# -- the virtual devices (same ports as the machine's in-core ones, hvsim/cpu/devices.py)
CONSOLE_PORT = 0xE9            # Bochs/QEMU debug console: OUT writes one character
TIMER_PERIOD_PORT = 0x40       # OUT dword: period in retired instructions (0 stops)
TIMER_VECTOR_PORT = 0x41       # OUT byte: the vector the virtual timer raises
DEFAULT_TIMER_VECTOR = 0x20
HOST_TIMER_VECTOR = 0x20       # the vector of the *real* timer, routed to the monitor
FLOATING_BUS = 0xFFFFFFFF      # an IN from a port without a device reads all ones

# -- architectural layouts the monitor reads and writes --
TSS_ESP1 = TSS_ESP0 + 8         # TSS32: ESPn at 4 + 8n, SSn at 8 + 8n (SDM Vol. 3A, Fig. 7-2)
GATE_SIZE = 8                  # an IDT entry (SDM Vol. 3A, 6.11, Figure 6-2)
DELIVER_CLEAR = TF | NT | RF | VM      # cleared in EFLAGS on every delivery (6.12.1.3)
IRET_WRITABLE = POPF_WRITABLE | RF     # IRET also loads RF (SDM Vol. 2A, IRET "Operation")
PUSHF_HIDDEN = RF | VM         # PUSHFD's image has VM and RF cleared (SDM Vol. 2B, PUSHF)

# the instructions Robin & Irvine (USENIX Security 2000) list as sensitive but not
# privileged, as hvsim's disassembler names them: they trap only under `virtualizable`
SENSITIVE_UNPRIVILEGED = {"pushfd", "popfd", "iretd", "sgdt", "sidt", "sldt", "str", "smsw",
                          "lar", "lsl", "verr", "verw"}

_SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs")
_REG32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
_REG_SIZE = {"al": 1, "ax": 2, "eax": 4}
_MEMORY_OPERAND = re.compile(r"^(?:\w+ ptr )?(?:(?P<seg>[cdefgs]s):)?\[(?P<expr>[^\]]+)\]$")


@dataclasses.dataclass
class VirtualCPU:
    """The state the guest kernel believes the CPU has (the real CPU holds other values).

    ``IF``/``iopl``: the virtual EFLAGS.IF and IOPL; ``idtr_base``/``idtr_limit``: what
    the guest loaded with LIDT; ``cr0``..``cr4``: its control registers (CR2 is set when
    a #PF is reflected); ``pending``: a virtual interrupt vector waiting for IF=1 (or
    None); ``timer_period``/``timer_vector``: the virtual timer's programming.
    """
    IF: int = 0
    iopl: int = 0
    idtr_base: int = 0
    idtr_limit: int = 0
    cr0: int = 0x11            # PE | ET, as the machine's own reset value
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    pending: Optional[int] = None
    timer_period: int = 0
    timer_vector: int = DEFAULT_TIMER_VECTOR


@dataclasses.dataclass(frozen=True)
class LogEntry:
    """One trap the monitor handled: what came out of ``run()`` and what it did about it.

    ``trap``: Event.name ('#GP (general protection)', 'INT 0x80', 'INT 0x20'...);
    ``ring``: the real ring the guest was in (1 = guest kernel, 3 = guest user);
    ``instruction``: the decoded instruction (trapping instructions only);
    ``tsc``: the machine's time stamp (retired instructions) when it happened.
    """
    trap: str
    vector: Optional[int]
    error_code: Optional[int]
    eip: int
    ring: int
    instruction: Optional[str]
    action: str
    tsc: int

    def __str__(self):
        err = "" if self.error_code is None else f"({self.error_code:#x})"
        insn = f" {self.instruction!r}" if self.instruction else ""
        return (f"[{self.tsc:>8}] ring {self.ring} eip={self.eip:#010x} {self.trap}{err}{insn}: "
                f"{self.action}")


@dataclasses.dataclass
class MonitorEvent(Event):
    """Why the monitor's ``run()``/``step()`` stopped. Besides the machine's kinds:
    'killed' (the monitor stopped the guest: ``reason`` says what and where) and 'halt'
    (the guest halted with nothing that can wake it)."""
    reason: str = ""

    def __str__(self):
        s = f"{self.kind} at eip={self.eip:#010x} (ring {self.cpl})"
        return f"{s}: {self.reason}" if self.reason else s


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


def _sensitive_unprivileged(insn) -> bool:
    """Does ``insn`` trap only because of the virtualizable switch?"""
    ops = [o.strip() for o in insn.op_str.split(",")]
    return (insn.mnemonic in SENSITIVE_UNPRIVILEGED
            or (insn.mnemonic == "mov" and len(ops) == 2 and ops[1] in _SEGMENTS)
            or (insn.mnemonic == "push" and ops[0] in _SEGMENTS))


class _Kill(Exception):
    """Raised inside a handler: the guest cannot go on (the message says why)."""


class TrapAndEmulate:
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

    The driving interface is the stepper's: ``.machine``, ``step()``, ``run(max_steps)``,
    ``snapshot()``/``restore()``, ``.log``.
    """

    def __init__(self, machine: Optional[Machine] = None, program=None, *,
                 virtualizable: bool = False):
        if machine is None:
            machine = Machine(memory=1 << 20)
        if not isinstance(machine, Machine):
            raise TypeError(f"machine must be an hvsim Machine, got {type(machine).__name__}")
        if not isinstance(virtualizable, bool):
            raise TypeError(f"virtualizable must be True or False, got {virtualizable!r}")
        self.machine = machine
        self.tables = install(machine)
        # the monitor owns every vector: exceptions, INT n and the real timer leave run()
        machine.route(range(256), "host")
        machine.virtualizable = virtualizable
        self.vcpu = VirtualCPU()
        self.log: list[LogEntry] = []
        self.traps = collections.Counter()       # by Event.name
        self.emulated = collections.Counter()    # by mnemonic
        self.reflected = collections.Counter()   # by vector name
        self.console = ""
        self.ticks_delivered = 0                 # virtual ticks injected into the guest
        self.ticks_coalesced = 0                 # real ticks that found one already pending
        self.idle_instructions = 0               # time skipped while the guest slept in HLT
        self._state = "running"                  # 'running', 'halted', 'killed'
        self._final: Optional[MonitorEvent] = None
        self._shadow = False                     # STI's one-instruction interrupt shadow
        self._timer_epoch = 0                    # TSC when the real timer was (re)started
        if program is not None:
            self.boot(program)

    # ---- configuration -------------------------------------------------------------------
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

    @property
    def state(self) -> str:
        """'running', 'halted' (nothing can wake the guest) or 'killed'."""
        return self._state

    @property
    def counters(self) -> dict:
        """Everything counted, flat: traps by name, emulated instructions, reflections."""
        d = {f"trap {k}": v for k, v in sorted(self.traps.items())}
        d.update({f"emulated {k.upper()}": v for k, v in sorted(self.emulated.items())})
        d.update({f"reflected {k}": v for k, v in sorted(self.reflected.items())})
        d.update(ticks_delivered=self.ticks_delivered, ticks_coalesced=self.ticks_coalesced,
                 idle_instructions=self.idle_instructions, traps=sum(self.traps.values()))
        return d

    # ---- driving ------------------------------------------------------------------------
    def run(self, max_steps: int = 1_000_000) -> Event:
        """Run the guest until an event the monitor does not handle, at most ``max_steps``
        steps. A step is an instruction the machine ran or tried (a trapping instruction
        counts once) or a trap the monitor handled, so the budget always ends the run."""
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
        m = self.machine
        used = 0
        while used < max_steps:
            if self._state != "running":
                return self._final
            if self._inject():
                used += 1
                continue
            shadow = self._shadow
            ev = m.run(1 if shadow else max_steps - used)
            if ev.kind == "budget":
                used += ev.steps
                self._shadow = False
                continue
            used += max(ev.steps, 1)
            if shadow and ev.steps > 0:
                self._shadow = False
            final = self._handled(ev)
            if final is not None:
                return final
        return MonitorEvent("budget", m.cpu.eip, m.cpu.cpl, used,
                            reason=f"{max_steps} steps done")

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
            dict(console=self.console, ticks_delivered=self.ticks_delivered,
                 ticks_coalesced=self.ticks_coalesced, idle_instructions=self.idle_instructions,
                 _state=self._state, _final=self._final, _shadow=self._shadow,
                 _timer_epoch=self._timer_epoch, virtualizable=self.virtualizable))

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
        for k, v in snap.scalars.items():
            if k != "virtualizable":
                setattr(self, k, v)

    def __repr__(self):
        v = self.vcpu
        return (f"<TrapAndEmulate {self._state}, ring {self.machine.cpu.cpl}, "
                f"eip={self.machine.cpu.eip:#x}, virtual IF={v.IF}, "
                f"{len(self.log)} traps, {self.ticks_delivered} ticks delivered"
                f"{', virtualizable' if self.virtualizable else ''}>")

    # ---- dispatch -----------------------------------------------------------------------
    def _handle(self, ev: Event) -> Optional[MonitorEvent]:
        """Handle one exit of the machine; return the event that ends the run, or None."""
        try:
            if ev.kind == "interrupt":
                self.traps[ev.name] += 1
                self._timer_interrupt(ev)
                return None
            if ev.kind == "exception":
                self.traps[ev.name] += 1
                if ev.vector == GP and ev.error_code == 0 and ev.source == "fault":
                    self._general_protection(ev)
                else:
                    self._guest_exception(ev)
                return None
            if ev.kind == "breakpoint":
                return MonitorEvent("breakpoint", ev.eip, ev.cpl, ev.steps,
                                    reason="host breakpoint")
            raise _Kill(f"the machine stopped: {ev}")
        except _Kill as k:
            return self._kill(str(k), ev)

    def _handled(self, ev: Event) -> Optional[MonitorEvent]:
        final = self._handle(ev)
        if final is None and self._state != "running":
            return self._final          # the guest halted for good in this trap
        return final

    def _kill(self, reason: str, ev: Event) -> MonitorEvent:
        self._record(ev, None, f"killed the guest: {reason}")
        self._state = "killed"
        self._final = MonitorEvent("killed", ev.eip, ev.cpl, 0, vector=ev.vector,
                                   error_code=ev.error_code, reason=reason)
        return self._final

    def _record(self, ev: Event, insn: Optional[str], action: str) -> None:
        self.log.append(LogEntry(ev.name, ev.vector, ev.error_code, ev.eip, ev.cpl, insn, action,
                                 self.machine.cpu.tsc))

    # ---- the timer ----------------------------------------------------------------------
    def _timer_interrupt(self, ev: Event) -> None:
        if ev.vector != HOST_TIMER_VECTOR:
            raise _Kill(f"unexpected external interrupt {ev.name}")
        v = self.vcpu
        if v.pending is not None:
            self.ticks_coalesced += 1
            self._record(ev, None, f"timer tick: one already pending (virtual IF={v.IF}), "
                                   "coalesced")
        else:
            v.pending = v.timer_vector
            self._record(ev, None, f"timer tick: virtual INT {v.timer_vector:#04x} pending "
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
        except _Kill as k:
            self._kill(str(k), ev)
            return True
        self.ticks_delivered += 1
        self._record(ev, None, f"injected virtual timer tick {vector_name(vector)} into guest "
                               f"handler {handler:#x}")
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

    # ---- #GP(0): a privileged or sensitive instruction ----------------------------------
    def _general_protection(self, ev: Event) -> None:
        insn = self._decode(ev)
        mnemonic = insn.mnemonic
        vcpl = self._virtual_cpl(ev.cpl)
        handler = getattr(self, f"_emulate_{mnemonic}", None)
        if handler is not None and not (mnemonic == "mov" and "cr" not in insn.op_str):
            action = handler(insn, vcpl)
            if action is None:          # the virtual CPU faults too: reflect the #GP
                target = self._reflect(GP, 0, ev.eip)
                self.reflected[ev.name] += 1
                self._record(ev, str(insn), f"{mnemonic.upper()} at virtual CPL {vcpl} > "
                                            f"virtual IOPL {self.vcpu.iopl}: reflected #GP(0) to "
                                            f"guest handler {target:#x}")
                return
            self.emulated[mnemonic] += 1
            self._record(ev, str(insn), action)
            return
        if ev.cpl == GUEST_RING or (self.virtualizable and _sensitive_unprivileged(insn)):
            raise _Kill(f"unsupported instruction '{insn}' trapped ({ev.name}) at eip="
                        f"{ev.eip:#010x} in ring {ev.cpl}: the monitor does not emulate it")
        self._guest_exception(ev)      # the user program's own #GP: the guest kernel's business

    def _decode(self, ev: Event):
        m = self.machine
        n = ev.length if ev.length > 0 else 15
        lin = m.cpu.segment("cs")["base"] + ev.eip
        n = max(1, min(n, len(m.memory) - lin))
        try:
            code = m.read_linear(lin, n)
        except ValueError as e:
            raise _Kill(f"cannot read the trapping instruction at {ev.eip:#010x}: {e}") from None
        return disassemble_one(code, 0, ev.eip)

    @staticmethod
    def _virtual_cpl(ring: int) -> int:
        """Ring compression: real ring 1 is the guest's ring 0; ring 3 stays ring 3."""
        if ring == GUEST_RING:
            return 0
        if ring == 3:
            return 3
        raise _Kill(f"the guest is in ring {ring}, which the monitor never gives it")

    def _resume_after(self, insn) -> None:
        self.machine.cpu.eip = (insn.address + insn.size) & MASK32

    # one emulation per instruction family: each returns the log text, or None when the
    # instruction faults on the virtual CPU too (the caller then reflects #GP(0))
    def _emulate_cli(self, insn, vcpl):
        v = self.vcpu
        if vcpl > v.iopl:                  # SDM Vol. 2A, CLI: #GP(0) if CPL > IOPL
            return None
        old, v.IF = v.IF, 0
        self._resume_after(insn)
        return f"emulated CLI: virtual IF {old}→0"

    def _emulate_sti(self, insn, vcpl):
        v = self.vcpu
        if vcpl > v.iopl:                  # SDM Vol. 2B, STI: #GP(0) if CPL > IOPL
            return None
        old, v.IF = v.IF, 1
        if not old:
            self._shadow = True            # interrupts wait one instruction (SDM Vol. 3A, 6.8.3)
        self._resume_after(insn)
        return f"emulated STI: virtual IF {old}→1"

    def _emulate_hlt(self, insn, vcpl):
        if vcpl != 0:                      # privileged (SDM Vol. 3A, 5.9)
            return None
        self._resume_after(insn)
        v = self.vcpu
        if v.IF and v.pending is not None:
            return "emulated HLT: a virtual tick is pending, no wait"
        if v.IF and self._idle_until_tick():
            return f"emulated HLT: idle until the next timer tick (TSC → {self.machine.cpu.tsc})"
        why = "virtual IF=0" if not v.IF else "no timer running"
        self._state = "halted"
        m = self.machine
        self._final = MonitorEvent("halt", insn.address, m.cpu.cpl, 0,
                                   reason=f"guest HLT with {why}: nothing can wake it")
        return f"emulated HLT with {why}: the guest is halted for good"

    def _emulate_lidt(self, insn, vcpl):
        if vcpl != 0:
            return None
        lin = self._effective_address(insn.op_str)
        limit, base = struct.unpack("<HI", self._read(lin, 6))    # 16-bit limit, 32-bit base
        self.vcpu.idtr_limit, self.vcpu.idtr_base = limit, base
        self._resume_after(insn)
        return f"emulated LIDT: virtual IDTR = base {base:#x} limit {limit:#x}"

    def _emulate_sidt(self, insn, vcpl):
        # traps only under `virtualizable`; at every CPL it stores the *virtual* IDTR
        lin = self._effective_address(insn.op_str)
        self._write(lin, struct.pack("<HI", self.vcpu.idtr_limit, self.vcpu.idtr_base))
        self._resume_after(insn)
        return f"emulated SIDT: stored the virtual IDTR (base {self.vcpu.idtr_base:#x})"

    def _emulate_mov(self, insn, vcpl):    # MOV r32, CRn / MOV CRn, r32
        if vcpl != 0:
            return None
        dst, src = (s.strip() for s in insn.op_str.split(","))
        cpu, v = self.machine.cpu, self.vcpu
        if dst.startswith("cr"):
            value = getattr(cpu, src)
            if dst == "cr0" and value & CR0_PG:
                raise _Kill(f"the guest turns paging on ('{insn}' at {insn.address:#010x}): "
                            "this monitor has no shadow page tables")
            old = getattr(v, dst)
            setattr(v, dst, value)
            self._resume_after(insn)
            return f"emulated MOV {dst.upper()}: virtual {dst.upper()} {old:#x}→{value:#x}"
        value = getattr(v, src)
        setattr(cpu, dst, value)
        self._resume_after(insn)
        return f"emulated MOV from {src.upper()}: {dst} = virtual {src.upper()} = {value:#x}"

    def _emulate_out(self, insn, vcpl):
        if vcpl > self.vcpu.iopl:          # no virtual I/O bitmap: CPL > IOPL is #GP(0)
            return None
        port_op, reg = (s.strip() for s in insn.op_str.split(","))
        size = _REG_SIZE[reg]
        port = self.machine.cpu.edx & 0xFFFF if port_op == "dx" else int(port_op, 0)
        value = self.machine.cpu.eax & ((1 << (8 * size)) - 1)
        self._resume_after(insn)
        return "emulated OUT: " + self._port_out(port, size, value)

    def _emulate_in(self, insn, vcpl):
        if vcpl > self.vcpu.iopl:
            return None
        reg, port_op = (s.strip() for s in insn.op_str.split(","))
        size = _REG_SIZE[reg]
        cpu = self.machine.cpu
        port = cpu.edx & 0xFFFF if port_op == "dx" else int(port_op, 0)
        value, what = self._port_in(port)
        mask = (1 << (8 * size)) - 1
        cpu.eax = (cpu.eax & ~mask & MASK32) | (value & mask)
        self._resume_after(insn)
        return f"emulated IN: port {port:#x} ({what}) → {value & mask:#x}"

    def _port_out(self, port, size, value) -> str:
        v = self.vcpu
        if port == CONSOLE_PORT:
            ch = chr(value & 0xFF)
            self.console += ch
            return f"virtual console {ch!r}"
        if port == TIMER_PERIOD_PORT:
            v.timer_period = value
            self.machine.set_timer((value, HOST_TIMER_VECTOR) if value else None)
            self._timer_epoch = self.machine.cpu.tsc
            return f"virtual timer period {value}" if value else "virtual timer stopped"
        if port == TIMER_VECTOR_PORT:
            if not 32 <= value & 0xFF <= 255:
                raise _Kill(f"the guest programs its timer with vector {value & 0xFF}, "
                            "an exception vector")
            v.timer_vector = value & 0xFF
            return f"virtual timer vector {v.timer_vector:#x}"
        return f"port {port:#x} has no device, {value:#x} dropped"

    def _port_in(self, port):
        v = self.vcpu
        if port == CONSOLE_PORT:
            return 0, "virtual console"
        if port == TIMER_PERIOD_PORT:
            return v.timer_period, "virtual timer period"
        if port == TIMER_VECTOR_PORT:
            return v.timer_vector, "virtual timer vector"
        return FLOATING_BUS, "no device"

    def _eflags_image(self) -> int:
        """The EFLAGS the guest should see: the real one with the virtual IF and IOPL."""
        real = self.machine.cpu.eflags
        v = self.vcpu
        return (real & ~(IF | IOPL_MASK)) | (IF if v.IF else 0) | (v.iopl << IOPL_SHIFT)

    def _set_eflags(self, image: int, writable: int, vcpl: int) -> str:
        """Load ``image`` into EFLAGS as POPF/IRET at virtual CPL ``vcpl`` would: the
        virtual IF only if vcpl <= virtual IOPL, the virtual IOPL only at vcpl 0
        (SDM Vol. 2B, POPF). The real IF stays 1 and the real IOPL 0."""
        v = self.vcpu
        old_if, old_iopl = v.IF, v.iopl
        if vcpl <= v.iopl:
            v.IF = 1 if image & IF else 0
        if vcpl == 0:
            v.iopl = (image & IOPL_MASK) >> IOPL_SHIFT
        keep = writable & ~(IF | IOPL_MASK)
        cpu = self.machine.cpu
        cpu.eflags = (cpu.eflags & ~keep) | (image & keep) | IF
        out = f"virtual IF {old_if}→{v.IF}"
        if v.iopl != old_iopl:
            out += f", virtual IOPL {old_iopl}→{v.iopl}"
        return out

    def _emulate_pushfd(self, insn, vcpl):
        image = self._eflags_image() & ~PUSHF_HIDDEN
        self._push(image)
        self._resume_after(insn)
        return f"emulated PUSHF: pushed {image:#x} (virtual IF={self.vcpu.IF})"

    def _emulate_popfd(self, insn, vcpl):
        cpu = self.machine.cpu
        image = struct.unpack("<I", self._read(self._stack_linear(cpu.esp), 4))[0]
        cpu.esp = (cpu.esp + 4) & MASK32
        self._resume_after(insn)
        return f"emulated POPF: {self._set_eflags(image, POPF_WRITABLE, vcpl)}"

    def _emulate_iretd(self, insn, vcpl):
        """IRET of the guest kernel (SDM Vol. 2A, IRET, protected mode, no NT): pop EIP,
        CS, EFLAGS and, returning to an outer ring, ESP and SS."""
        if vcpl != 0:
            raise _Kill(f"IRET at virtual CPL {vcpl} (eip={insn.address:#010x}) is not emulated")
        m = self.machine
        cpu = m.cpu
        esp = cpu.esp
        eip, cs, image = struct.unpack("<III", self._read(self._stack_linear(esp), 12))
        cs &= 0xFFFF
        rpl = cs & 3
        if rpl < GUEST_RING:
            raise _Kill(f"the guest IRETs to ring {rpl} (CS={cs:#x}) at {insn.address:#010x}: "
                        "the monitor owns ring 0")
        text = self._set_eflags(image, IRET_WRITABLE, vcpl)
        try:
            if rpl > cpu.cpl:                                   # to an outer ring
                new_esp, ss = struct.unpack("<II", self._read(self._stack_linear(esp + 12), 8))
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
            raise _Kill(f"IRET at {insn.address:#010x} to a bad segment: {e}") from None
        cpu.eip = eip
        return f"emulated IRET to ring {rpl} eip={eip:#x}: {text}"

    # ---- reflection into the guest's virtual IDT ---------------------------------------
    def _guest_exception(self, ev: Event) -> None:
        """The guest's own exception or software interrupt: reflect it."""
        software = ev.source == "software"
        if software and self._gate(ev.vector).dpl < self._virtual_cpl(ev.cpl):
            # INT n through a gate of DPL < CPL: #GP(n*8+2), EIP on the INT (SDM Vol. 3A,
            # 6.12.1.1) -- how a kernel keeps user programs off its other vectors
            error = ev.vector * GATE_SIZE + ERR_IDT   # INT n refused: #GP(n*8+2), SDM 6.13
            target = self._reflect(GP, error, ev.eip)
            self.reflected[vector_name(GP)] += 1
            self._record(ev, None, f"{ev.name} from virtual CPL {self._virtual_cpl(ev.cpl)} through "
                                   f"a DPL-{self._gate(ev.vector).dpl} gate: reflected "
                                   f"#GP({error:#x}) to guest handler {target:#x}")
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
        self._record(ev, None, f"reflected {ev.name} to guest handler {target:#x}")

    def _gate(self, vector: int):
        """The guest's virtual IDT entry for ``vector``, decoded; a present 32-bit
        interrupt or trap gate, or the guest is killed."""
        v = self.vcpu
        if vector * GATE_SIZE + GATE_SIZE - 1 > v.idtr_limit:
            raise _Kill(f"{vector_name(vector)} is outside the guest's virtual IDT "
                        f"(limit {v.idtr_limit:#x}): on real hardware, a double fault")
        raw = int.from_bytes(self._read(v.idtr_base + vector * GATE_SIZE, GATE_SIZE), "little")
        gate = decode_descriptor(raw)
        if gate.s or gate.type not in (SYS_INT_GATE32, SYS_TRAP_GATE32) or not gate.p:
            raise _Kill(f"the guest has no present 32-bit interrupt or trap gate for "
                        f"{vector_name(vector)} (IDT entry: {gate})")
        return gate

    def _reflect(self, vector: int, error: Optional[int], ret_eip: int) -> int:
        """Deliver ``vector`` through the guest's virtual IDT, as the CPU would through a
        real one (SDM Vol. 3A, 6.12.1): returns the handler's address."""
        m, v = self.machine, self.vcpu
        cpu = m.cpu
        gate = self._gate(vector)
        code = self._gdt_descriptor(gate.selector)
        if code.kind != "code" or not code.p or code.dpl != GUEST_RING:
            raise _Kill(f"the gate for {vector_name(vector)} names selector {gate.selector:#x}, "
                        f"not a present ring-{GUEST_RING} code segment ({code})")
        image = self._eflags_image()
        old_cs, old_ss, old_esp = cpu.cs, cpu.ss, cpu.esp
        if cpu.cpl > GUEST_RING:
            # entering the guest kernel from its user ring: the stack of TSS.SS1:ESP1,
            # with the old SS:ESP pushed first
            esp, ss = struct.unpack("<II", self._read(self.tables.tss + TSS_ESP1, 8))
            ss &= 0xFFFF
            frame = [old_ss, old_esp, image, old_cs, ret_eip]
        else:
            esp, ss = old_esp, old_ss
            frame = [image, old_cs, ret_eip]
        if error is not None:
            frame.append(error)
        try:
            cpu.ss = ss
        except ValueError as e:
            raise _Kill(f"TSS.SS1 = {ss:#x} is not a usable stack segment: {e}") from None
        new_esp = (esp - 4 * len(frame)) & MASK32
        # pushed in ``frame`` order, so the last push (EIP or the error code) is at new_esp
        self._write(self._stack_linear(new_esp), struct.pack(f"<{len(frame)}I", *reversed(frame)))
        cpu.esp = new_esp
        cpu.cs = (gate.selector & ~3) | GUEST_RING
        cpu.eip = gate.offset
        cpu.eflags = cpu.eflags & ~DELIVER_CLEAR
        if gate.type == SYS_INT_GATE32:
            v.IF = 0                    # an interrupt gate clears IF; a trap gate does not
        return gate.offset

    # ---- guest memory ---------------------------------------------------------------------
    def _gdt_descriptor(self, sel: int):
        cpu = self.machine.cpu
        index = sel & ~7
        if sel & 4 or index == 0 or index + 7 > cpu.gdtr_limit:
            raise _Kill(f"selector {sel:#x} is not a GDT entry")
        return decode_descriptor(int.from_bytes(self._read(cpu.gdtr_base + index, 8), "little"))

    def _stack_linear(self, esp: int) -> int:
        return (self.machine.cpu.segment("ss")["base"] + esp) & MASK32

    def _effective_address(self, op_str: str) -> int:
        """Linear address of a decoded memory operand such as 'fs:[ebx + esi*4 + 8]'."""
        match = _MEMORY_OPERAND.match(op_str.strip())
        if not match:
            raise _Kill(f"cannot read memory operand {op_str!r}")
        cpu = self.machine.cpu
        offset, seg = 0, match["seg"]
        for sign, term in re.findall(r"([+-]?)\s*([^+-]+)", match["expr"]):
            term = term.strip()
            if "*" in term:
                reg, scale = term.split("*")
                value = getattr(cpu, reg.strip()) * int(scale)
            elif term in _REG32:
                value = getattr(cpu, term)
                if seg is None and term in ("esp", "ebp"):
                    seg = "ss"
            else:
                value = int(term, 0)
            offset += -value if sign == "-" else value
        base = cpu.segment(seg or "ds")["base"]
        return (base + offset) & MASK32

    def _read(self, lin: int, n: int) -> bytes:
        try:
            return self.machine.read_linear(lin, n)
        except ValueError as e:
            raise _Kill(f"guest memory at {lin:#010x}: {e}") from None

    def _write(self, lin: int, data: bytes) -> None:
        m = self.machine
        if m.cpu.cr0 & CR0_PG:
            raise _Kill("the real CPU has paging on: this monitor does not translate")
        if lin + len(data) > len(m.memory):
            raise _Kill(f"guest write of {len(data)} bytes at {lin:#010x} is outside memory")
        m.memory[lin:lin + len(data)] = list(data)

    def _push(self, value: int) -> None:
        cpu = self.machine.cpu
        esp = (cpu.esp - 4) & MASK32
        self._write(self._stack_linear(esp), struct.pack("<I", value & MASK32))
        cpu.esp = esp
