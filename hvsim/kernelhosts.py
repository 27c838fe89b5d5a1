"""The teaching kernel on every host that runs it: boot, run in two halves, read what the
guest saw (Python, not jitted).

Lesson 02's teaching kernel (hvsim/guests/kernel.s and user.s,
:func:`hvsim.guests.teaching_kernel`) never halts: after booting it loops for ever in
ring 3, doing WORK iterations of work between two SYS_TICKS system calls while its timer
ticks every PERIOD instructions. What the guest can tell about a run is its console, its
``calls`` counter (SYS_TICKS calls) and its ``ticks`` counter (timer ticks its handler
counted). :func:`run` runs it for ``steps`` steps in two halves and reads both counters
between them: a clock that counts no tick in the second half has *frozen* -- what
happens under trap-and-emulate on plain x86, where the POPF of SYS_TICKS' critical
section does not trap at ring 1 and the virtual IF stays 0 (lesson 02, "the x86 hole")
-- while the program, which does not count time, goes on calling.

Two hosts agree on a run (:class:`Outcome`, :func:`differences`) when the guest printed
the same console, its program kept making system calls (a SYS_TICKS call in the second
half) on both or on neither, and its clock kept ticking on both or on neither. Not the
exact counts: a step is an instruction the machine retires, and a binary translator's or
raw mode's own code (translated sequences, patch code) takes steps too, so in as many
steps the guest gets a little less done there -- fewer calls and ticks, not other ones.

The hosts (:data:`HOSTS`), each a booting function of this module:

* ``native``: no monitor; a bare machine whose exceptions and interrupts go through the
  kernel's own IDT, the kernel in ring 0 (:func:`native`);
* ``shadow``: trap-and-emulate, the kernel in ring 1 (:func:`trap_and_emulate`; the
  name is :mod:`hvsim.workloads`' for that monitor: with paging off, as here, its shadow
  page tables stay unused);
* ``vtx``: the KVM-shaped VMM, the kernel in ring 0 of VMX non-root (:func:`vtx`);
* ``emulate`` / ``dbt``: the Bochs- and QEMU-shaped emulators, the kernel at its own
  ring 0 on a software CPU (:func:`emulator`);
* ``bt``: VMware-style binary translation (:func:`binary_translator`);
* ``rawmode``: VirtualBox's raw mode (:func:`raw_mode`).

A host that runs the kernel at ring 0 gets it built with ring 0's code selector
(``KCODE``) of the host's GDT; nothing else of the kernel changes, so it does the same
work everywhere.

This is a library module of its own, beside :mod:`hvsim.workloads` and
:mod:`hvsim.pvworkloads` (the harnesses of hvsim's other guests), because lessons 02,
04 and 07 boot this kernel and :mod:`hvsim.compare` runs it on every host, and a library
module never imports :mod:`hvsim.lessons`.

>>> r = run("native", 20_000)
>>> r.console, r.ticking, r.calls == guest_dword(r.monitor, "calls")
('kernel up\\nhello from ring 3\\n', True, True)
>>> run("shadow", 20_000).ticking        # POPF's hole: no tick in the second half
False
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

from hvsim import guests
from hvsim.guests import teaching_kernel
from hvsim.machine import Event, Machine
from hvsim.monitors import Native, TrapAndEmulate, Vtx
from hvsim.rings.setup import SystemTables, install

__all__ = ["HOSTS", "STEPS", "PARAMS", "boot", "run", "KernelRun", "Outcome", "differences",
           "guest_dword", "check_steps", "check_params", "native", "trap_and_emulate", "vtx",
           "emulator", "binary_translator", "raw_mode"]

#: lesson 07's run: 60,000 steps
STEPS = 60_000
#: the fewest and the most steps :func:`run` takes (two halves of at least one step)
MIN_STEPS, MAX_STEPS = 2, 2_000_000
#: the kernel's ``equ`` constants a caller may set, and the largest value of each
#: (:data:`hvsim.guests.KERNEL_PARAMS`: PERIOD, WORK)
PARAMS = guests.KERNEL_PARAMS


# ---- the hosts ---------------------------------------------------------------------------
def native(**constants) -> Native:
    """The kernel booted with no monitor: in ring 0 of a 1 MiB machine whose exceptions
    and interrupts go through the kernel's own IDT, on the machine's own console and timer,
    with hvsim/rings/setup.py's GDT (the kernel's KCODE is its ring-0 code selector)."""
    m = Machine(memory=1 << 20, exceptions="guest")
    tables = install(m)
    nat = Native(m)
    m.load(teaching_kernel(**dict({"KCODE": tables.code(0)}, **constants)))
    tables.enter(m, 0, m.cpu.eip, tables.stack_top(0))
    return nat


def trap_and_emulate(virtualizable: bool = False, **constants) -> TrapAndEmulate:
    """The kernel booted under trap-and-emulate, in ring 1 (``virtualizable``: on lesson
    02's x86 whose POPF, PUSHF and IRET trap at CPL > 0)."""
    return TrapAndEmulate(program=teaching_kernel(**constants), virtualizable=virtualizable)


def vtx(vpid: bool = True, **constants) -> Vtx:
    """The kernel booted under the VT-x monitor (``vpid``: with VPID 1, as KVM runs its
    guests), in ring 0 of VMX non-root operation: its gates name ring 0's code selector of
    the guest's GDT (the VMM's hvsim.rings.setup layout)."""
    mon = Vtx(vpid=vpid)
    mon.boot(teaching_kernel(**dict({"KCODE": mon.kvm.guest_tables.code(0)}, **constants)))
    return mon


def emulator(mode: str = "interpret", **constants):
    """The kernel booted on an emulator (``mode`` 'interpret': Bochs's model, 'translate':
    QEMU TCG's), at its own ring 0 of the emulated machine."""
    from hvsim.emulation.monitor import Emulator
    emu = Emulator(mode=mode)
    emu.boot(teaching_kernel(**dict({"KCODE": SystemTables.code(0)}, **constants)))
    return emu


def binary_translator(**constants):
    """The kernel booted under VMware-style binary translation (hvsim/bt/monitor.py)."""
    from hvsim.bt import BinaryTranslator
    return BinaryTranslator(program=teaching_kernel(**constants))


def raw_mode(**constants):
    """The kernel booted under VirtualBox's raw mode (hvsim/bt/rawmode.py)."""
    from hvsim.bt.rawmode import RawMode
    return RawMode(program=teaching_kernel(**constants))


#: host name -> function(**constants) -> the monitor, the kernel booted (not run)
HOSTS: dict = {
    "native": native,
    "shadow": trap_and_emulate,
    "vtx": vtx,
    "emulate": lambda **constants: emulator("interpret", **constants),
    "dbt": lambda **constants: emulator("translate", **constants),
    "bt": binary_translator,
    "rawmode": raw_mode,
}


def boot(host: str, **constants):
    """The kernel booted (not run) on ``host`` (a name of :data:`HOSTS`); ``constants``
    override its ``equ`` values (``PERIOD=300``...)."""
    if host not in HOSTS:
        raise ValueError(f"no host named {host!r}; the hosts are {', '.join(HOSTS)}")
    return HOSTS[host](**constants)


# ---- checks ------------------------------------------------------------------------------
def check_steps(steps) -> int:
    """``steps`` if it is an int from :data:`MIN_STEPS` to :data:`MAX_STEPS`."""
    if isinstance(steps, bool) or not isinstance(steps, int) \
            or not MIN_STEPS <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an int from {MIN_STEPS:,} to {MAX_STEPS:,}, "
                         f"got {steps!r}")
    return steps


def check_params(params: dict) -> dict:
    """``params`` if each names one of :data:`PARAMS` with an int from 1 to its maximum."""
    return guests.check_params("the teaching kernel", params, PARAMS)


# ---- a run -------------------------------------------------------------------------------
def guest_dword(mon, label: str, **constants) -> int:
    """A dword of the teaching kernel's memory, by label ('ticks', 'calls', 'rounds'...),
    on any host (the kernel's code selector does not move a label)."""
    labels = teaching_kernel(**constants).labels
    if label not in labels:
        raise ValueError(f"the teaching kernel has no label {label!r}")
    return _dword(mon, labels[label])


def _dword(mon, gpa: int) -> int:
    return int.from_bytes(bytes(mon.machine.memory[gpa:gpa + 4]), "little")


class Outcome(NamedTuple):
    """What the guest can tell about a run: two runs are the same when every field is."""
    console: str
    calling: bool       # a SYS_TICKS call made in the second half of the run
    ticking: bool       # a tick counted in the second half of the run


@dataclasses.dataclass(eq=False)
class KernelRun:
    """The kernel run on one host: ``steps`` steps in two halves (the second not run when
    the first ended otherwise than on its budget: a halt is the kernel's panic, a kill
    the monitor's). ``event``: how the last half ended -- 'budget' when the kernel ran
    all its steps, as it should."""
    host: str
    steps: int
    constants: dict
    monitor: object
    event: Event
    ticks_at_half: int
    ticks: int
    calls_at_half: int
    calls: int
    console: str

    @property
    def ticking(self) -> bool:
        """Whether the clock kept ticking: a tick counted in the second half."""
        return self.ticks > self.ticks_at_half

    @property
    def calling(self) -> bool:
        """Whether the program kept making system calls: one in the second half."""
        return self.calls > self.calls_at_half

    @property
    def froze(self) -> bool:
        return not self.ticking

    @property
    def finished(self) -> bool:
        """Whether the kernel ran its ``steps``: the run ended on its budget."""
        return self.event.kind == "budget"

    def outcome(self) -> Outcome:
        return Outcome(self.console, self.calling, self.ticking)

    def __repr__(self):
        clock = "ticking" if self.ticking else "frozen"
        return (f"<KernelRun on {self.host}: {self.event.kind} after {self.steps:,} steps, "
                f"{self.ticks} ticks ({clock}), {self.calls} calls>")


def run(host: str, steps: int = STEPS, **constants) -> KernelRun:
    """The kernel booted on ``host`` (a name of :data:`HOSTS`) and run ``steps`` steps in
    two halves, its ``ticks`` and ``calls`` read in between. ``constants``:
    :data:`PARAMS` values."""
    steps = check_steps(steps)
    check_params(constants)
    lab = teaching_kernel(**constants).labels
    mon = boot(host, **constants)
    ev = mon.run(steps // 2)
    ticks, calls = _dword(mon, lab["ticks"]), _dword(mon, lab["calls"])
    if ev.kind == "budget":
        ev = mon.run(steps - steps // 2)
    return KernelRun(host, steps, dict(constants), mon, ev, ticks, _dword(mon, lab["ticks"]),
                     calls, _dword(mon, lab["calls"]), mon.console)


def differences(a: KernelRun, b: KernelRun) -> list:
    """Where ``a``'s :class:`Outcome` differs from ``b``'s, in words: an empty list when
    they agree. A clock that stopped is said first, as 'clock froze'."""
    out = []
    for what, going, at_half, end, stopped in (
            ("ticks", "ticking", "ticks_at_half", "ticks", "clock froze"),
            ("SYS_TICKS calls", "calling", "calls_at_half", "calls", "calls stopped")):
        if getattr(a, going) == getattr(b, going):
            continue
        stuck, moving = (a, b) if getattr(b, going) else (b, a)
        out.append(f"{stopped}: {getattr(stuck, end):,} {what} on {stuck.host} at half "
                   f"time and at the end, {getattr(moving, at_half):,} then "
                   f"{getattr(moving, end):,} on {moving.host}")
    if a.console != b.console:
        out.append(f"console: {a.console!r} on {a.host}, {b.console!r} on {b.host}")
    return out
