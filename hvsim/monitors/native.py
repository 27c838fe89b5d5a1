"""No monitor at all: the guest owns the real machine (Python, not jitted).

The baseline every technique is compared with. The guest kernel runs in ring 0 with
the real IDT; exceptions and interrupts are delivered by the (jitted) hardware; only
what the machine itself sends to the host (an I/O port no device claims, HLT with
nothing to wake it, a triple fault...) comes back from ``run()``, and ``Native``
handles none of it: it is the protocol of :class:`~hvsim.monitors.Monitor` around a
bare :class:`~hvsim.Machine`, so that the stepper, the CLI and the cost model treat
"native" as one more technique.

>>> from hvsim import assemble
>>> nat = Native(program=assemble("mov ecx, 10\\nagain: add eax, ecx\\nloop again\\nhlt"))
>>> nat.run().kind, nat.vcpu.eax, nat.stats["traps"]
('halt', 55, 0)
"""
from __future__ import annotations

from typing import Optional

from hvsim.machine import Event, Machine
from hvsim.monitors.base import Monitor, STATS

__all__ = ["Native"]


class Native(Monitor):
    """The guest on the bare machine (exceptions delivered through its own IDT).

    machine : a Machine (default: a fresh one with ``exceptions="guest"``).
    program : loaded and entered at its start label, in ring 0.
    """
    name = "native"

    def __init__(self, machine: Optional[Machine] = None, program=None):
        if machine is None:
            machine = Machine(exceptions="guest")
        if not isinstance(machine, Machine):
            raise TypeError(f"machine must be an hvsim Machine, got {type(machine).__name__}")
        self.machine = machine
        self.log: list = []
        self._state = "running"
        if program is not None:
            machine.load(program)

    def run(self, max_steps: int = 1_000_000) -> Event:
        return self._seen(self.machine.run(self._check_budget(max_steps)))

    def step(self) -> Optional[Event]:
        return self._seen(self.machine.step())

    def _seen(self, ev: Optional[Event]) -> Optional[Event]:
        if ev is not None:
            # HLT with nothing to wake the CPU, or a triple fault: the guest is done
            self._state = {"halt": "halted", "shutdown": "killed"}.get(ev.kind, "running")
        return ev

    @property
    def state(self) -> str:
        """'running', 'halted' (HLT with nothing to wake it) or 'killed' (triple fault)."""
        return self._state

    def snapshot(self):
        return self.machine.snapshot(), self._state

    def restore(self, snap) -> None:
        self.machine.restore(snap[0])
        self._state = snap[1]

    @property
    def stats(self) -> dict:
        return dict.fromkeys(STATS, 0)

    @property
    def vcpu(self):
        return self.machine.cpu

    @property
    def console(self) -> str:
        return self.machine.console

    def __repr__(self):
        return f"<Native {self.machine!r}>"
