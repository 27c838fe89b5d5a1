"""No monitor at all: the guest owns the real machine (Python, not jitted).

The baseline every technique is compared with. The guest kernel runs in ring 0 with
the real IDT; exceptions and interrupts are delivered by the (jitted) hardware; only
what the machine itself sends to the host (an I/O port no device claims, HLT with
nothing to wake it, a triple fault...) comes back from ``run()``, and ``Native``
handles none of it but port I/O to the device models it was given: it is the protocol
of :class:`~hvsim.monitors.Monitor` around a bare :class:`~hvsim.Machine`, so that the
stepper, the CLI and the cost model treat "native" as one more technique.

Devices. The machine's core has a console and a timer; a device it does not have (the
disk of :class:`~hvsim.monitors.devices.BlockDevice`) is a Python model on the ports it
claims: ``Native(devices=[BlockDevice()])``. An IN or OUT to one of those ports leaves
the jitted core as an ``io`` event, the model answers it, and the run goes on. On a real
PC that access is the device itself, not a trap to anyone: it is counted as
``device_io``, never as a trap.

>>> from hvsim import assemble
>>> nat = Native(program=assemble("mov ecx, 10\\nagain: add eax, ecx\\nloop again\\nhlt"))
>>> nat.run().kind, nat.vcpu.eax, nat.stats["traps"]
('halt', 55, 0)
"""
from __future__ import annotations

from typing import Optional

from hvsim.arch import layout as L
from hvsim.machine import Event, Machine
from hvsim.monitors.base import Monitor, STATS

__all__ = ["Native"]


class Native(Monitor):
    """The guest on the bare machine (exceptions delivered through its own IDT).

    machine : a Machine (default: a fresh one with ``exceptions="guest"``).
    program : loaded and entered at its start label, in ring 0.
    devices : device models served on their ports (each has ``ports()``,
              ``out(port, value)`` and ``in_(port)``, as
              :class:`~hvsim.monitors.devices.BlockDevice`), on ports the machine's core
              leaves to the host.
    """
    name = "native"

    def __init__(self, machine: Optional[Machine] = None, program=None, devices=()):
        if machine is None:
            machine = Machine(exceptions="guest")
        if not isinstance(machine, Machine):
            raise TypeError(f"machine must be an hvsim Machine, got {type(machine).__name__}")
        self.machine = machine
        self.log: list = []
        self._state = "running"
        self.devices = tuple(devices)
        self._port_device: dict = {}
        for dev in self.devices:
            for port in dev.ports():
                if port in self._port_device:
                    raise ValueError(f"two devices claim port {port:#x}")
                if machine._st[L.PORTMAP + port]:
                    raise ValueError(f"port {port:#x} belongs to a device of the machine's "
                                     "core: its I/O never reaches a device model")
                self._port_device[port] = dev
        self.device_io = 0         # port accesses served by the device models
        if program is not None:
            machine.load(program)

    def run(self, max_steps: int = 1_000_000) -> Event:
        max_steps = self._check_budget(max_steps)
        used = 0
        while True:
            ev = self.machine.run(max_steps - used)
            used += max(ev.steps, 1)
            if not self._device_io(ev):
                return self._seen(ev)
            if used >= max_steps:          # the budget ended on a device's port access
                cpu = self.machine.cpu
                return Event("budget", int(cpu.eip), int(cpu.cpl), used)

    def step(self) -> Optional[Event]:
        ev = self.machine.step()
        if ev is not None and self._device_io(ev):
            return None
        return self._seen(ev)

    def _device_io(self, ev: Event) -> bool:
        """Serve ``ev`` if it is port I/O to one of the device models; True if it was."""
        if ev.kind != "io":
            return False
        dev = self._port_device.get(ev.port)
        if dev is None:
            return False
        if ev.direction == "out":
            dev.out(ev.port, ev.value)
        else:
            ev.reply(dev.in_(ev.port) & ((1 << (8 * ev.size)) - 1))
        self.device_io += 1
        return True

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
        return (self.machine.snapshot(), self._state, self.device_io,
                tuple(dev.snapshot() for dev in self.devices))

    def restore(self, snap) -> None:
        machine, self._state, self.device_io, devices = snap
        self.machine.restore(machine)
        for dev, d in zip(self.devices, devices):
            dev.restore(d)

    @property
    def stats(self) -> dict:
        return dict.fromkeys(STATS, 0)

    @property
    def counters(self) -> dict:
        """The machine's counters, ``stats`` (all 0: no monitor) and ``device_io``."""
        d = super().counters
        d["device_io"] = self.device_io
        return d

    @property
    def vcpu(self):
        return self.machine.cpu

    @property
    def console(self) -> str:
        return self.machine.console

    def __repr__(self):
        return f"<Native {self.machine!r}>"
