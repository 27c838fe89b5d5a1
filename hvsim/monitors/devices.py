"""Device models a monitor gives its guest (Python, not jitted).

The same two devices as the machine's in-core ones (hvsim/cpu/devices.py), on the same
ports, so a guest kernel runs unchanged natively and under a monitor:

* a console on port 0xE9 (the debug console of Bochs and QEMU): OUT writes a character;
* an interval timer on ports 0x40/0x41: OUT dword to 0x40 sets the period in retired
  instructions (0 stops it), OUT byte to 0x41 the vector it raises;

and one the machine does not have in its core, modelled in Python wherever it lives:

* a small disk, :class:`BlockDevice`, on ports 1F0h-1F7h: the same model serves a guest
  on the bare machine (:class:`~hvsim.monitors.Native` with ``devices=``), under
  trap-and-emulate (:class:`VirtualDevices` has one) and under VT-x (the KVM-shaped
  VMM's user-space :class:`~hvsim.monitors.kvm.Devices`), so one driver runs on all.

The monitor drives the *real* timer for the virtual one (``on_timer(period)``) and turns
its interrupts into virtual ticks; an IN from a port without a device reads all ones,
as a floating bus does.
"""
from __future__ import annotations

from typing import Callable, Optional

from hvsim.monitors.base import Kill
from hvsim.monitors.vcpu import VirtualCPU

__all__ = ["VirtualDevices", "BlockDevice", "CONSOLE_PORT", "TIMER_PERIOD_PORT",
           "TIMER_VECTOR_PORT", "FLOATING_BUS"]

CONSOLE_PORT = 0xE9            # Bochs/QEMU debug console: OUT writes one character
TIMER_PERIOD_PORT = 0x40       # OUT dword: period in retired instructions (0 stops)
TIMER_VECTOR_PORT = 0x41       # OUT byte: the vector the virtual timer raises
FLOATING_BUS = 0xFFFFFFFF      # an IN from a port without a device reads all ones
FIRST_INTERRUPT_VECTOR = 32    # vectors 0-31 are exceptions (SDM Vol. 3A, 6.3.1)


class BlockDevice:
    """A small disk behind port I/O, modelled in user space as QEMU models its disks
    (hvsim's own register set, not an ATA controller): OUT dword to 1F2h selects a
    sector; OUT byte 20h to 1F7h reads it into the 512-byte buffer, 30h writes the buffer
    to it; 1F0h moves the buffer a dword at a time (IN and OUT, the index advancing);
    IN byte from 1F7h is the status: 40h ready, 01h error (a sector out of range).

    So a driver moves one sector in 131 port accesses: the sector, 128 data dwords, the
    command and the status."""
    SECTOR = 512
    DATA, SECTOR_PORT, COMMAND = 0x1F0, 0x1F2, 0x1F7
    READ, WRITE = 0x20, 0x30
    READY, ERROR = 0x40, 0x01

    def __init__(self, sectors: int = 64):
        if isinstance(sectors, bool) or not isinstance(sectors, int) or not 1 <= sectors <= 1 << 16:
            raise ValueError(f"sectors must be 1..65536, got {sectors!r}")
        self.disk = bytearray(sectors * self.SECTOR)
        self.sector = 0
        self.buffer = bytearray(self.SECTOR)
        self.index = 0
        self.status = self.READY
        self.reads = self.writes = 0

    def ports(self):
        return (self.DATA, self.SECTOR_PORT, self.COMMAND)

    def out(self, port: int, value: int) -> str:
        if port == self.SECTOR_PORT:
            self.sector, self.index = value, 0
            return f"disk: sector {value}"
        if port == self.DATA:
            self.buffer[self.index:self.index + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
            self.index = (self.index + 4) % self.SECTOR
            return "disk: buffer dword written"
        if port == self.COMMAND:
            at = self.sector * self.SECTOR
            if at + self.SECTOR > len(self.disk):
                self.status = self.READY | self.ERROR
                return f"disk: sector {self.sector} is past the disk's end"
            if value == self.READ:
                self.buffer[:] = self.disk[at:at + self.SECTOR]
                self.reads += 1
            elif value == self.WRITE:
                self.disk[at:at + self.SECTOR] = self.buffer
                self.writes += 1
            else:
                self.status = self.READY | self.ERROR
                return f"disk: unknown command {value:#x}"
            self.index, self.status = 0, self.READY
            return f"disk: sector {self.sector} {'read' if value == self.READ else 'written'}"
        return ""

    def in_(self, port: int) -> int:
        if port == self.DATA:
            v = int.from_bytes(self.buffer[self.index:self.index + 4], "little")
            self.index = (self.index + 4) % self.SECTOR
            return v
        if port == self.COMMAND:
            return self.status
        return self.sector

    def snapshot(self) -> tuple:
        """The disk's whole state (its bytes, registers and counts), for a monitor's
        snapshot."""
        return (bytes(self.disk), self.sector, bytes(self.buffer), self.index, self.status,
                self.reads, self.writes)

    def restore(self, snap: tuple) -> None:
        disk, self.sector, buffer, self.index, self.status, self.reads, self.writes = snap
        self.disk, self.buffer = bytearray(disk), bytearray(buffer)


class VirtualDevices:
    """The console, the timer and the disk of one guest; ``console`` holds what it
    printed, ``disk`` is its :class:`BlockDevice`."""

    def __init__(self, vcpu: VirtualCPU, on_timer: Optional[Callable[[int], None]] = None):
        self.vcpu = vcpu
        self.console = ""
        self.disk = BlockDevice()
        self._on_timer = on_timer

    def out(self, port: int, size: int, value: int) -> str:
        """The guest's OUT; returns what happened, for the monitor's log."""
        v = self.vcpu
        if port in self.disk.ports():
            return self.disk.out(port, value)
        if port == CONSOLE_PORT:
            ch = chr(value & 0xFF)
            self.console += ch
            return f"virtual console {ch!r}"
        if port == TIMER_PERIOD_PORT:
            v.timer_period = value
            if self._on_timer is not None:
                self._on_timer(value)
            return f"virtual timer period {value}" if value else "virtual timer stopped"
        if port == TIMER_VECTOR_PORT:
            if value & 0xFF < FIRST_INTERRUPT_VECTOR:
                raise Kill(f"the guest programs its timer with vector {value & 0xFF}, "
                           "an exception vector")
            v.timer_vector = value & 0xFF
            return f"virtual timer vector {v.timer_vector:#x}"
        return f"port {port:#x} has no device, {value:#x} dropped"

    def in_(self, port: int):
        """The guest's IN: (value, what answered)."""
        v = self.vcpu
        if port in self.disk.ports():
            return self.disk.in_(port), "virtual disk"
        if port == CONSOLE_PORT:
            return 0, "virtual console"
        if port == TIMER_PERIOD_PORT:
            return v.timer_period, "virtual timer period"
        if port == TIMER_VECTOR_PORT:
            return v.timer_vector, "virtual timer vector"
        return FLOATING_BUS, "no device"
