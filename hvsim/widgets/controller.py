"""The stepper's logic, without any widget (pure Python, not jitted).

:class:`StepperController` drives a *target* -- a :class:`hvsim.Machine`, or any
:class:`hvsim.monitors.Monitor` (the protocol every technique implements: ``.machine``,
``.step()``, ``.run(max_steps)``, ``.snapshot()``, ``.restore(snap)``, ``.log``) -- one step at a time, and
keeps what a debugger needs: the trap log, the registers that the last action changed,
breakpoints, and a way back.

Time. The controller counts *steps*: one step is one call of ``target.step()`` (one
instruction retired, one fault taken, or one exit returned). ``position`` is the number
of steps since the controller was made (or last reset). Everything that moves the
machine -- Step, Step xN, Run, Run to next trap -- goes through ``target.step()``, so
the history is one sequence of identical calls, whatever button made them.

Going back (reverse execution). The machine is deterministic: the same state and the
same calls give the same result, bit for bit. So going back to step ``k`` is: restore
the nearest *checkpoint* (a full snapshot) at or before ``k``, then call ``step()``
again until position ``k``. The only input from outside is the answer to an ``IN``
from a port no device claims (an ``io`` event): the controller answers it (see
``io``) and writes the answer in a journal, and the replay gives the guest the same
answer at the same step -- going back and then forward again replays the same future.

The trade-off is memory against replay time. A snapshot copies all of guest memory
plus the state arrays (about 4 MiB for a 1 MiB machine, 19 MiB for the default
16 MiB), so the controller keeps checkpoints within ``checkpoint_bytes`` bytes. It
takes one every ``checkpoint_interval`` steps; when the budget is full it drops the
checkpoint whose loss costs least *relative to its age*, so recent history stays
dense (a Back click replays at most ``checkpoint_interval`` steps, a millisecond or
two) and old history thins out geometrically (going far back replays longer). The
snapshot taken at construction is never dropped: Reset restores it.

The history is only valid while the controller is the only thing that changes the
machine. Anything else that does -- another stepper on the same machine, a notebook
cell that runs it or writes its registers or memory -- bumps ``Machine.generation``;
the controller's next action sees it and rebases first (:meth:`StepperController.rebase`:
the present becomes position 0), and its status line says so. Two views of one machine
thus never show a history that did not happen.
"""
from __future__ import annotations

import asyncio
import dataclasses
from typing import Callable, Optional

import numpy as np

from hvsim.arch import layout as L
from hvsim.cpu.devices import CONSOLE_PORT
from hvsim.machine import Machine
from hvsim.monitors import LogEntry, Monitor, VirtualCPU
from hvsim.widgets import render as R

DEFAULT_CHECKPOINT_BYTES = 128 << 20
DEFAULT_CHECKPOINT_INTERVAL = 2048
DEFAULT_RUN_BUDGET = 2_000_000       # steps a Run (or Run to next trap) may take at most
DEFAULT_CHUNK = 4_000                # steps between two looks at the event loop (~5 ms)
MAX_STEP_N = 10_000_000
TRAP_LOG_CAP = 2000
KNOWN_STARTS_CAP = 4096
OPC_IO_IMM = (0xE4, 0xE5, 0xE6, 0xE7)   # IN/OUT with an imm8 port; EC-EF use DX
ENDS_FLOW = {"jmp", "ret", "retf", "iretd", "hlt", "ud2", "(bad)"}   # no fall-through after these

HOST = "host/monitor (ring 0)"
OUTSIDE_CHANGE = ("the machine was changed outside this stepper (by other code or another "
                  "stepper) since its last action: its history starts again from there")


def vmx_mode(machine):
    """None outside VMX operation, 'root' (ring -1: the hypervisor runs) or 'non-root'."""
    st = machine._st
    if not st[L.VMX_ON]:
        return None
    return "non-root" if st[L.VMX_NONROOT] else "root"


def _ring_line(machine) -> str:
    mode = vmx_mode(machine)
    if mode == "root":
        return "ring: -1 (VMX root operation: the hypervisor, CPL 0)"
    cpl = machine.cpu.cpl
    extra = ", VMX non-root: a guest of a hypervisor" if mode == "non-root" else ""
    return f"ring: CPL {cpl} ({R.RING_NAMES[cpl]}{extra})"


def console_out(rec) -> bool:
    """A trap-log record of an OUT to the console port (a filter for Run to next trap:
    a guest that prints traps once per character)."""
    return rec.mnemonic == "out" and rec.port == CONSOLE_PORT


def floating_bus(event) -> int:
    """The default answer to an unclaimed IN: all ones, as an empty ISA bus reads."""
    return (1 << (8 * event.size)) - 1


@dataclasses.dataclass
class RunResult:
    """How a Step xN, Run or Run to next trap ended.

    reason: 'done' (all N steps taken), 'event' (the target returned an event: halt,
    io, an exception or interrupt routed to the host...), 'trap' (an event delivered
    through the guest's IDT, for Run to next trap), 'breakpoint', 'budget' (the
    budget ran out) or 'stopped' (Stop was clicked).
    """
    reason: str
    steps: int
    event: object = None

    def __str__(self):
        what = {"done": "done", "event": "stopped at an event", "trap": "stopped at a trap",
                "breakpoint": "stopped at a breakpoint", "budget": "budget used up",
                "stopped": "stopped by the user"}[self.reason]
        ev = self.event
        ev = "" if ev is None else f": {ev.text() if hasattr(ev, 'text') else ev}"
        return f"{self.steps} step(s), {what}{ev}"


@dataclasses.dataclass
class _Checkpoint:
    position: int
    snap: object
    nbytes: int


@dataclasses.dataclass
class View:
    """Everything the widget layer shows, as strings and line lists."""
    position: int
    cpl: int
    disasm: list
    registers_html: str
    flags_html: str
    rings_html: str
    traplog_html: str
    console_html: str
    status: str
    vcpu_html: str = ""          # the monitor's virtual CPU; "" when the target has none


def _check_skip(skip) -> None:
    if skip is not None and not callable(skip):
        raise TypeError(f"skip must be a function record -> bool (e.g. console_out), got {skip!r}")


def _check_count(name: str, n, lo: int = 1, hi: int = MAX_STEP_N) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be a whole number of steps, got {type(n).__name__} {n!r}")
    n = int(n)
    if n < lo:
        raise ValueError(f"{name} must be at least {lo}, got {n}")
    if n > hi:
        raise ValueError(f"{name} must be at most {hi}, got {n}")
    return n


def snapshot_nbytes(snap, fallback: int = 0) -> int:
    """Bytes held by a snapshot: the sum of the numpy arrays it contains."""
    seen = set()

    def walk(x, depth):
        if id(x) in seen or depth > 4:
            return 0
        seen.add(id(x))
        if isinstance(x, np.ndarray):
            return x.nbytes
        if isinstance(x, (bytes, bytearray)):
            return len(x)
        if isinstance(x, dict):
            return sum(walk(v, depth + 1) for v in x.values())
        if isinstance(x, (list, tuple)):
            return sum(walk(v, depth + 1) for v in x)
        if dataclasses.is_dataclass(x):
            return sum(walk(getattr(x, f.name), depth + 1) for f in dataclasses.fields(x))
        if hasattr(x, "__dict__"):
            return sum(walk(v, depth + 1) for v in vars(x).values())
        return 0

    n = walk(snap, 0)
    return n if n else fallback


class StepperController:
    """Step, run, go back and reset a machine or monitor; render what it shows.

    Parameters
    ----------
    target : a Machine, or a monitor with .machine/.step()/.run()/.snapshot()/.restore().
    before, after : instructions shown before and after EIP in the disassembly.
    io : ``f(event) -> int`` answers an IN from an unclaimed port (default: all ones).
    checkpoint_bytes : memory the checkpoints of the history may use (see module doc).
    checkpoint_interval : steps between two checkpoints.
    run_budget : the most steps one Run or Run to next trap takes.
    program : the assembled Program (or a list of them) whose labels, instruction
        starts and data the disassembly trusts; by default those the machine loaded
        (``Machine.programs``).
    """

    def __init__(self, target, *, before: int = 4, after: int = 10,
                 io: Optional[Callable] = None,
                 checkpoint_bytes: int = DEFAULT_CHECKPOINT_BYTES,
                 checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL,
                 run_budget: int = DEFAULT_RUN_BUDGET, program=None):
        if isinstance(target, Machine):
            self.machine = target
        else:
            if not isinstance(target, Monitor):
                raise TypeError(f"the stepper drives a Machine or a monitor (hvsim.monitors.Monitor"
                                f"), not {type(target).__name__}")
            if not isinstance(target.machine, Machine):
                raise TypeError(f"target.machine must be a hvsim Machine, got "
                                f"{type(target.machine).__name__}")
            self.machine = target.machine
        self.target = target
        self._target_step = target.step
        if program is not None and not isinstance(program, (list, tuple)):
            program = [program]
        if program is not None and not all(hasattr(p, "listing") for p in program):
            raise TypeError("program must be an assembled Program or a list of them")
        self._programs = program
        self._cmap_key, self._cmap = None, R.NO_CODE_MAP
        self._has_log = getattr(target, "log", None) is not None
        self.before = _check_count("before", before, 0, 64)
        self.after = _check_count("after", after, 0, 64)
        if io is not None and not callable(io):
            raise TypeError("io must be a function event -> int")
        self.io = io or floating_bus
        self.checkpoint_interval = _check_count("checkpoint_interval", checkpoint_interval, 1, 1 << 40)
        self.run_budget = _check_count("run_budget", run_budget, 1, 1 << 40)
        self.checkpoint_bytes = _check_count("checkpoint_bytes", checkpoint_bytes, 1, 1 << 40)
        self._stop_requested = False
        self.running = False
        self._base = self._checkpoint(0)
        if 2 * self._base.nbytes > self.checkpoint_bytes:
            raise ValueError(
                f"checkpoint_bytes={self.checkpoint_bytes} cannot hold two snapshots of this "
                f"machine ({self._base.nbytes} bytes each); give at least {2 * self._base.nbytes}")
        self._start_fresh()

    # ---- state of the history -------------------------------------------------------------
    def _checkpoint(self, position: int) -> _Checkpoint:
        snap = self.target.snapshot()
        return _Checkpoint(position, snap, snapshot_nbytes(snap, len(self.machine.memory)))

    def _start_fresh(self):
        self.position = 0
        self._checkpoints = [self._base]
        self._io_journal = {}                  # step index -> the value an IN received
        self.trap_log = []
        self.last_result: Optional[RunResult] = None
        self.last_event = None
        self.message = ""
        self._known = {}                       # trusted instruction starts: visited EIPs, decoded rows
        self._sync_sources()
        self._regs = R.read_registers(self.machine)
        self._vregs = self._read_vcpu()
        self.vchanged = frozenset()
        self.changed = frozenset()
        self._note_eip()
        self._generation = self.machine.generation

    def _sync_sources(self):
        self._trace_head = self.machine.trace_head
        log = getattr(self.target, "log", None)
        self._log_len = len(log) if log is not None else 0

    @property
    def checkpoints(self) -> list:
        """Positions that have a checkpoint (0 always)."""
        return [c.position for c in self._checkpoints]

    @property
    def checkpoint_bytes_used(self) -> int:
        return sum(c.nbytes for c in self._checkpoints)

    # ---- one step ---------------------------------------------------------------------------
    def _tick(self, record: bool = True):
        """One target.step(); returns (event, traps handled by the guest or the monitor)."""
        i = self.position
        ev = self._target_step()
        if ev is not None and getattr(ev, "kind", None) == "io" and ev.direction == "in":
            if i in self._io_journal:
                value = self._io_journal[i]
            else:
                value = self.io(ev)
                self._io_journal[i] = value
            ev.reply(value)
        elif i in self._io_journal:
            raise RuntimeError(
                f"replay diverged at step {i}: the step answered an IN the first time but not now; "
                "was the machine changed outside the stepper? Call rebase() after such changes.")
        self.position = i + 1
        if not record:
            return ev, ()
        # fast path: a plain step records nothing in the trace
        head = self.machine.trace_head
        if ev is None and head == self._trace_head and not self._has_log:
            self._trace_head = head
            traps = ()
        else:
            traps = self._collect(ev, head)
        if i + 1 - self._checkpoints[-1].position >= self.checkpoint_interval:
            self._add_checkpoint()
        return ev, traps

    def _collect(self, ev, head) -> list:
        """Append this step's trap-log records; returns those of the traps handled in
        this step (deliveries through the guest IDT, entries in the monitor's log)."""
        traps = []
        if head != self._trace_head:
            for t in self.machine.trace_since(self._trace_head):
                if t.kind == "delivered":
                    traps.append(self._log(R.TrapRecord(
                        self.position, t.name, t.vector, t.error_code, t.eip, t.cpl_from,
                        t.cpl_to, f"guest ring {t.cpl_to} (IDT)", return_eip=t.return_eip)))
                elif t.kind == "vm_exit":           # to ring -1: the hypervisor's exit handler
                    traps.append(self._log(R.TrapRecord(
                        self.position, t.name, t.vector, t.error_code, t.eip, t.cpl_from, -1,
                        "hypervisor (ring -1, VMX root)")))
                elif t.kind == "vm_entry":          # from ring -1 into the guest
                    self._log(R.TrapRecord(self.position, t.name, None, None, t.eip, -1,
                                           t.cpl_to, f"guest ring {t.cpl_to} (VMX non-root)"))
            self._trace_head = head
        from_monitor = False
        if self._has_log:
            log = self.target.log
            n = len(log)
            if n < self._log_len:
                self._log_len = n
            new = log[self._log_len:n] if isinstance(log, (list, tuple)) else list(log)[self._log_len:n]
            for e in new:
                traps.append(self._log(self._monitor_record(e)))
                from_monitor = True
            self._log_len = n
        if ev is not None and not from_monitor and getattr(ev, "kind", None) != "breakpoint":
            self._log(self._event_record(ev))
        if ev is not None:
            self.last_event = ev
        return traps

    def _log(self, rec):
        self.trap_log.append(rec)
        if len(self.trap_log) > TRAP_LOG_CAP:
            del self.trap_log[:len(self.trap_log) - TRAP_LOG_CAP]
        return rec

    def _event_record(self, ev) -> R.TrapRecord:
        action = ""
        if ev.kind == "io":
            if ev.direction == "in":
                action = f"the stepper answered {self._io_journal.get(self.position - 1, 0):#x}"
            else:
                action = f"the guest wrote {ev.value:#x}"
        elif ev.kind == "exception":
            action = "exit to the host: the guest's IDT is not used"
        return R.TrapRecord(self.position, ev.name, ev.vector, ev.error_code, ev.eip, ev.cpl,
                            None, HOST, action,
                            mnemonic=ev.direction if ev.kind == "io" else "",
                            port=ev.port if ev.kind == "io" else None)

    def _monitor_record(self, e: LogEntry) -> R.TrapRecord:
        action, insn, port = e.action, e.insn, None
        if insn is not None:
            action = f"{e.instruction}: {action}" if action else e.instruction
            if insn.mnemonic in ("in", "out"):      # the port: imm8, or DX (which they keep)
                port = insn.imm if insn.opcode in OPC_IO_IMM else self.machine.cpu.edx & 0xFFFF
        return R.TrapRecord(self.position, e.trap, e.vector, e.error_code, e.eip, e.ring,
                            None, HOST, action, mnemonic=insn.mnemonic if insn else "", port=port)

    def _add_checkpoint(self):
        self._checkpoints.append(self._checkpoint(self.position))
        self._thin()

    def _thin(self):
        """Drop checkpoints until they fit the byte budget, keeping recent ones dense."""
        cps = self._checkpoints
        while sum(c.nbytes for c in cps) > self.checkpoint_bytes and len(cps) > 2:
            now = self.position
            best, best_cost = None, None
            for i in range(1, len(cps) - 1):
                gap = cps[i + 1].position - cps[i - 1].position
                cost = gap / (now - cps[i].position + 1)
                if best_cost is None or cost < best_cost:
                    best, best_cost = i, cost
            del cps[best]

    def _note_eip(self):
        self._trust(self._eip_linear())

    def _trust(self, address: int):
        self._known.pop(address, None)
        self._known[address] = None
        if len(self._known) > KNOWN_STARTS_CAP:
            del self._known[next(iter(self._known))]

    def _eip_linear(self) -> int:
        return (self.machine.cpu.segment("cs")["base"] + self.machine.cpu.eip) & 0xFFFFFFFF

    # ---- actions (what the buttons do) ---------------------------------------------------------
    def _begin(self):
        if self.running:
            raise RuntimeError("the machine is running: stop it first")
        changed = self.machine.generation != self._generation
        if changed:
            # other code -- another stepper, a cell that ran or edited the machine -- moved
            # it since this view's last action: its history no longer leads here
            self.rebase()
        self._regs_before = self._regs
        self.message = OUTSIDE_CHANGE if changed else ""

    def _end(self, result: Optional[RunResult]):
        self._generation = self.machine.generation
        self._regs = R.read_registers(self.machine)
        self.changed = frozenset(r for r, v in self._regs.items() if self._regs_before[r] != v)
        vregs, self._vregs = self._vregs, self._read_vcpu()
        self.vchanged = frozenset(f for f, v in self._vregs.items() if vregs.get(f, v) != v)
        self.last_result = result
        self._note_eip()
        return result

    def step(self):
        """Step: one ``target.step()``. Returns the event it caused, or None."""
        self._begin()
        ev, _ = self._tick()
        self._end(RunResult("event" if ev is not None else "done", 1, ev))
        return ev

    def step_n(self, n) -> RunResult:
        """Step xN: ``n`` steps, stopping early only at an event the target returns."""
        n = _check_count("N", n)
        self._begin()
        return self._end(self._steps(n, stop_at_trap=False, use_breakpoints=False, stop_at_event=True))

    def run_to_trap(self, budget: Optional[int] = None, skip: Optional[Callable] = None) -> RunResult:
        """Run to next trap: until an event, a trap handled by the guest IDT, the monitor
        or the hypervisor, a breakpoint or ``budget`` steps. ``skip(record) -> bool``
        passes over the traps it is true for (e.g. :func:`console_out`)."""
        budget = self.run_budget if budget is None else _check_count("budget", budget, 1, 1 << 40)
        _check_skip(skip)
        self._begin()
        return self._end(self._steps(budget, stop_at_trap=True, skip=skip))

    def run(self, budget: Optional[int] = None) -> RunResult:
        """Run (synchronously): until an event, a breakpoint or ``budget`` steps."""
        budget = self.run_budget if budget is None else _check_count("budget", budget, 1, 1 << 40)
        self._begin()
        return self._end(self._steps(budget, stop_at_trap=False))

    def _steps(self, n: int, stop_at_trap: bool, use_breakpoints: bool = True,
               stop_at_event: bool = True, skip: Optional[Callable] = None) -> RunResult:
        bps = self.machine.breakpoints if use_breakpoints else ()
        cpu = self.machine.cpu
        flat = self.machine.cpu.segment("cs")["base"] == 0
        for done in range(1, n + 1):
            ev, traps = self._tick()
            if ev is not None and stop_at_event:
                return RunResult("event", done, ev)
            if traps and stop_at_trap:
                stops = [r for r in traps if skip is None or not skip(r)]
                if stops:
                    return RunResult("trap", done, stops[-1])
            if bps:
                eip = cpu.eip if flat else self._eip_linear()
                if eip in bps:
                    return RunResult("breakpoint", done, None)
        return RunResult("done", n, None)

    async def run_async(self, *, stop_at_trap: bool = False, budget: Optional[int] = None,
                        chunk: int = DEFAULT_CHUNK, on_chunk: Optional[Callable] = None,
                        skip: Optional[Callable] = None) -> RunResult:
        """Run in chunks of ``chunk`` steps, yielding to the event loop between chunks so
        that :meth:`request_stop` (the Stop button) is seen mid-run. Ends at an event, a
        breakpoint, a trap (if ``stop_at_trap``; not one ``skip`` is true for), ``budget``
        steps, or Stop."""
        budget = self.run_budget if budget is None else _check_count("budget", budget, 1, 1 << 40)
        chunk = _check_count("chunk", chunk)
        _check_skip(skip)
        self._begin()
        self.running = True
        self._stop_requested = False
        total = 0
        result = None
        try:
            while result is None:
                if self._stop_requested:
                    result = RunResult("stopped", total, None)
                    break
                r = self._steps(min(chunk, budget - total), stop_at_trap, skip=skip)
                total += r.steps
                if r.reason != "done":
                    result = RunResult(r.reason, total, r.event)
                elif total >= budget:
                    result = RunResult("budget", total, None)
                else:
                    if on_chunk is not None:
                        on_chunk(total)
                    await asyncio.sleep(0)
        finally:
            self.running = False
            self._stop_requested = False
        return self._end(result)

    def request_stop(self) -> None:
        """Ask a running :meth:`run_async` to stop after its current chunk."""
        self._stop_requested = True

    def back(self, n=1) -> None:
        """Back: return to the state ``n`` steps ago (exactly; see the module docstring)."""
        n = _check_count("steps back", n)
        if n > self.position:
            raise ValueError(f"cannot go back {n} step(s): only {self.position} taken since the start")
        self.goto(self.position - n)

    def goto(self, position) -> None:
        """Put the machine in the state it had (or will have) at ``position`` steps."""
        position = _check_count("position", position, 0, 1 << 40)
        self._begin()
        if position >= self.position:
            self._steps(position - self.position, False, use_breakpoints=False, stop_at_event=False)
            self._end(None)
            return
        # drop the checkpoints and trap-log rows after the target; keep the io journal, so
        # that stepping forward again gives the guest the same answers (the same future)
        self._checkpoints = [c for c in self._checkpoints if c.position <= position]
        self.trap_log = [r for r in self.trap_log if r.step <= position]
        cp = self._checkpoints[-1]
        self.target.restore(cp.snap)
        self.position = cp.position
        while self.position < position:
            self._tick(record=False)
        self._sync_sources()
        self.last_event = None
        self._end(None)

    def reset(self) -> None:
        """Reset: back to the state the machine had when the controller was made."""
        self._begin()
        before = self._regs_before
        self.target.restore(self._base.snap)
        self._start_fresh()
        self._regs_before = before
        self._end(None)

    def rebase(self) -> None:
        """Forget the history and make the present position 0 (after outside changes)."""
        if self.running:
            raise RuntimeError("the machine is running: stop it first")
        self._base = self._checkpoint(0)
        self._start_fresh()

    # ---- breakpoints -------------------------------------------------------------------------------
    def toggle_breakpoint(self, address) -> bool:
        """Add or remove a breakpoint at a linear address; True if it is now set."""
        if isinstance(address, bool) or not isinstance(address, (int, np.integer)):
            raise TypeError(f"a breakpoint address is an integer, got {address!r}")
        address = int(address)
        if not 0 <= address <= 0xFFFFFFFF:
            raise ValueError(f"breakpoint address {address:#x} is not a 32-bit address")
        bps = self.machine.breakpoints
        if address in bps:
            bps.discard(address)
            return False
        if len(bps) >= L.BP_CAP:
            raise ValueError(f"at most {L.BP_CAP} breakpoints; remove one first")
        bps.add(address)
        return True

    # ---- rendering ---------------------------------------------------------------------------------
    def _code_map(self, eip: int) -> R.CodeMap:
        """The map of the programs (their load addresses taken as linear: not used when
        paging maps EIP elsewhere)."""
        progs = self._programs if self._programs is not None else getattr(self.machine, "programs", ())
        key = tuple(map(id, progs))
        if key != self._cmap_key:
            self._cmap_key, self._cmap = key, R.CodeMap(progs)
        if self.machine.cpu.cr0 & R.CR0_PG and R._translate(self.machine, eip) != eip:
            return R.NO_CODE_MAP
        return self._cmap

    def disassembly(self) -> list:
        eip = self._eip_linear()
        lines = R.disassembly_window(self.machine, eip, self.before, self.after,
                                     frozenset(self.machine.breakpoints), self._known,
                                     self._code_map(eip))
        # rows decoded from a trusted start become trusted starts too: those before EIP
        # (they land on it), and those after it up to where control may not fall through
        for line in lines:
            if line.kind == "data" and line.address > eip:
                break
            if line.kind == "code" and line.address not in self._known:
                self._trust(line.address)
            if line.kind == "code" and line.address >= eip and line.text.split(" ", 1)[0] in ENDS_FLOW:
                break
        return lines

    @property
    def vcpu(self) -> Optional[VirtualCPU]:
        """The target's virtual CPU (a software monitor's), or None."""
        v = getattr(self.target, "vcpu", None) if self.target is not self.machine else None
        return v if isinstance(v, VirtualCPU) else None

    def _read_vcpu(self) -> dict:
        v = self.vcpu
        return {} if v is None else R.read_vcpu(v)

    @property
    def console(self) -> str:
        """The guest's console: the monitor's (virtual) one if the target has it."""
        c = getattr(self.target, "console", None)
        return c if isinstance(c, str) else self.machine.console

    def status(self) -> str:
        m = self.machine
        s = f"step {self.position} | ring {m.cpu.cpl} | eip {m.cpu.eip:#010x}"
        if self.last_result is not None and self.last_result.reason != "done":
            s += f" | {self.last_result}"
        elif self.last_event is not None:
            s += f" | last event: {self.last_event}"
        if self.message:
            s += f" | {self.message}"
        return s

    def view(self) -> View:
        m = self.machine
        regs = R.read_registers(m)
        cpl = m.cpu.cpl
        vregs = self._read_vcpu()
        vcpu = R.vcpu_html(vregs, self.vchanged, regs["eflags"]) if vregs else ""
        return View(self.position, cpl, self.disassembly(), R.registers_html(regs, self.changed),
                    R.flags_html(regs["eflags"], cpl), R.rings_svg(cpl, vmx_mode(m)),
                    R.traplog_html(self.trap_log), R.console_html(self.console), self.status(),
                    vcpu)

    def render_text(self) -> str:
        """Everything the widget shows, as plain text (for scripts and tests)."""
        m = self.machine
        regs = R.read_registers(m)
        out = [self.status(), ""]
        out += [line.label() for line in self.disassembly() if line.kind]
        out += ["", R.registers_text(regs, self.changed), R.flags_text(regs["eflags"], m.cpu.cpl),
                _ring_line(m)]
        vregs = self._read_vcpu()
        if vregs:
            out += ["", R.vcpu_text(vregs, self.vchanged, regs["eflags"])]
        out += ["", "trap log:"]
        out += ["  " + r.text() for r in self.trap_log[-20:]] or ["  (none)"]
        out += ["", "console:", self.console]
        return "\n".join(out)
