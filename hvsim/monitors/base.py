"""The one protocol every technique's monitor implements (Python, not jitted).

A *monitor* is the software of a virtualization technique: the trap-and-emulate VMM,
and later binary translation, emulation, the VT-x host, the Xen-style hypervisor, the
container kernel. Each plugs into the machine the same way -- ``Machine.run()`` is
KVM_RUN, every exit comes back as an :class:`hvsim.machine.Event` whose instruction is
already decoded -- and each shows itself the same way, so the stepper, the pictures,
the command line and the cost model take any of them:

=====================  ==================================================================
``machine``            the :class:`~hvsim.Machine` it runs the guest on
``run(budget)``        run until an event the monitor does not handle itself, at most
                       ``budget`` steps; returns the :class:`~hvsim.machine.Event`
``step()``             one guest instruction (native or emulated) or one event the
                       monitor handled; the event that stopped it, or None
``snapshot()``         the machine's state and the monitor's; ``restore(snap)`` goes back
``log``                a typed list of :class:`LogEntry`: every exit it handled and what
                       it did about it
``stats``              its own counts: ``traps`` (exits handled: a trap to the monitor and
                       back), ``emulated`` (instructions emulated in software),
                       ``reflected`` (guest exceptions it delivered through the guest's
                       virtual IDT), ``injected`` (virtual interrupts injected),
                       ``vm_exits``, ``hypercalls``; a monitor that shadows the guest's
                       page tables (hvsim/mmu/shadow.py) its ``hidden_faults``,
                       ``true_faults``, ``trace_faults``, ``shadow_roots_built`` and
                       ``shadow_resyncs`` (0 for the others); a paravirtualizing
                       hypervisor (hvsim/paravirt) its ``pt_updates``,
                       ``tables_validated`` and ``io_requests``; a binary translator
                       (hvsim/bt) its ``callouts`` and ``translated``, a raw-mode monitor its
                       ``scanned``, an emulator
                       (hvsim/emulation) the :data:`EMU_STATS`
``counters``           the machine's counters and ``stats`` in one flat dict
``vcpu``               the virtual CPU the guest believes it has (the real one for native)
``console``            what the guest printed on its (virtual) console
``state``              'running', 'halted' (nothing can wake the guest) or 'killed'
=====================  ==================================================================

An exit handler is a plain function of (monitor, event) that a test can feed a made-up
event (rust-vmm's VMM crates test their exit handlers the same way).
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Optional

from hvsim.instruction import Instruction
from hvsim.machine import Event, Machine

__all__ = ["Monitor", "MonitorEvent", "LogEntry", "Kill", "STATS", "SHADOW_STATS", "PV_STATS",
           "BT_STATS", "RAW_STATS", "EMU_STATS", "shadow_stats"]

#: The keys of ``Monitor.stats`` (hvsim.cost charges each of them).
STATS = ("traps", "emulated", "reflected", "injected", "vm_exits", "hypercalls",
         "hidden_faults", "true_faults", "trace_faults", "shadow_roots_built", "shadow_resyncs",
         "pt_updates", "tables_validated", "io_requests")
#: the shadow MMU's counters that are also ``stats`` (the rest: ``counters``)
SHADOW_STATS = STATS[6:11]
#: a paravirtualizing hypervisor's work (hvsim/paravirt): page-table entries it checked
#: and wrote for the guest, tables it validated, split-driver requests its backend served
PV_STATS = STATS[11:]

# ---- binary translation (hvsim/bt) ----------------------------------------------------
#: a binary translator's work: ``callouts`` (exits from translated code to the monitor
#: that the translator put there -- not traps), ``translated`` (guest instructions
#: translated into the translation cache); 0 for every other monitor
BT_STATS = ("callouts", "translated")
STATS = STATS + BT_STATS

# ---- VirtualBox raw mode (hvsim/bt/rawmode.py) -------------------------------------------
#: a raw-mode monitor's scanner work: ``scanned`` (guest instructions its code scanner
#: decoded, CSAM's part); 0 for every other monitor
RAW_STATS = ("scanned",)
STATS = STATS + RAW_STATS
# ---- emulation (hvsim/emulation, issue 16): the emulator's own work, from the model of
# Bochs's and QEMU's structures (hvsim/emulation/model.py); 0 for every other monitor
#: guest instructions interpreted (Bochs mode), translated and run translated (QEMU TCG
#: mode), TB lookups that missed the jump cache, and soft-TLB fills (the TLB misses of a
#: software MMU: a page walk in software)
EMU_STATS = ("insns_interpreted", "insns_translated", "insns_run_translated",
             "tb_slow_lookups", "soft_tlb_fills")
STATS = STATS + EMU_STATS


def shadow_stats(d: dict, shadow) -> dict:
    """``d`` (a monitor's stats) with the SHADOW_STATS of ``shadow`` (0 if None) and the
    PV_STATS at 0 (a monitor that shadows does not paravirtualize)."""
    for k in SHADOW_STATS:
        d[k] = 0 if shadow is None else shadow.counters[k]
    for k in PV_STATS:
        d[k] = 0
    for k in BT_STATS + RAW_STATS:
        d.setdefault(k, 0)
    for k in EMU_STATS:
        d[k] = 0
    return d


class Kill(Exception):
    """Raised inside a handler: the guest cannot go on (the message says why and where)."""


@dataclasses.dataclass(slots=True)
class MonitorEvent(Event):
    """Why a monitor's ``run()``/``step()`` stopped. Besides the machine's kinds: 'killed'
    (the monitor stopped the guest: ``reason`` says what and where) and 'halt' (the guest
    halted with nothing that can wake it)."""
    reason: str = ""

    def __str__(self):
        s = f"{self.kind} at eip={self.eip:#010x} (ring {self.cpl})"
        return f"{s}: {self.reason}" if self.reason else s


@dataclasses.dataclass(frozen=True)
class LogEntry:
    """One exit a monitor handled: what came out of ``run()`` and what it did about it.

    ``what``: the kind of handling -- 'emulated' (the instruction was carried out in
    software), 'reflected' (the event was delivered through the guest's virtual IDT),
    'injected' (a virtual interrupt was delivered), 'tick' (a real timer interrupt became
    a virtual one), 'killed' (the guest was stopped); ``trap``: Event.name ('#GP (general
    protection)', 'INT 0x80'...); ``ring``: the real ring the guest was in; ``insn``: the
    instruction that trapped, as the core decoded it (None for interrupts); ``tsc``: the
    machine's time stamp when it happened.
    """
    what: str
    trap: str
    vector: Optional[int]
    error_code: Optional[int]
    eip: int
    ring: int
    insn: Optional[Instruction]
    action: str
    tsc: int

    @property
    def instruction(self) -> Optional[str]:
        """The trapping instruction as text (rendered from its decoded fields), or None."""
        return None if self.insn is None else str(self.insn)

    def __str__(self):
        err = "" if self.error_code is None else f"({self.error_code:#x})"
        insn = f" {self.instruction!r}" if self.insn is not None else ""
        return (f"[{self.tsc:>8}] ring {self.ring} eip={self.eip:#010x} {self.trap}{err}{insn}: "
                f"{self.action}")


class Monitor(abc.ABC):
    """Base class of every technique's monitor (see the module docstring)."""

    #: the name ``hvsim run --monitor NAME`` knows it by
    name: str = ""

    machine: Machine
    log: list

    @abc.abstractmethod
    def run(self, max_steps: int = 1_000_000) -> Event:
        """Run the guest until an event the monitor does not handle; at most ``max_steps``."""

    @abc.abstractmethod
    def step(self) -> Optional[Event]:
        """One guest instruction or one handled event; the unhandled event, or None."""

    @abc.abstractmethod
    def snapshot(self):
        """The machine's state and the monitor's."""

    @abc.abstractmethod
    def restore(self, snap) -> None:
        """Back to the state of ``snap``."""

    @property
    @abc.abstractmethod
    def stats(self) -> dict:
        """The monitor's own counts, keyed by the names in :data:`STATS`."""

    @property
    @abc.abstractmethod
    def vcpu(self):
        """The virtual CPU the guest believes it has."""

    @property
    @abc.abstractmethod
    def console(self) -> str:
        """What the guest printed on its console."""

    @property
    def state(self) -> str:
        return "running"

    @property
    def shadow_mmu(self):
        """The shadow page tables it keeps for the guest (hvsim/mmu/shadow.py), or None."""
        return None

    @property
    def counters(self) -> dict:
        """The machine's counters (non-zero ones), the monitor's ``stats`` and, under
        shadow paging, every counter of its shadow MMU, flat."""
        d = self.machine.counters.to_dict()
        d.update({f"monitor {k}": v for k, v in self.stats.items()})
        if self.shadow_mmu is not None:
            d.update({f"shadow {k}": v for k, v in self.shadow_mmu.counters.items()})
        return d

    @staticmethod
    def _check_budget(max_steps) -> int:
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
        return max_steps
