"""Virtual devices a software monitor gives its guest (Python, not jitted).

The same two devices as the machine's in-core ones (hvsim/cpu/devices.py), on the same
ports, so a guest kernel runs unchanged natively and under a monitor:

* a console on port 0xE9 (the debug console of Bochs and QEMU): OUT writes a character;
* an interval timer on ports 0x40/0x41: OUT dword to 0x40 sets the period in retired
  instructions (0 stops it), OUT byte to 0x41 the vector it raises.

The monitor drives the *real* timer for the virtual one (``on_timer(period)``) and turns
its interrupts into virtual ticks; an IN from a port without a device reads all ones,
as a floating bus does.
"""
from __future__ import annotations

from typing import Callable, Optional

from hvsim.monitors.base import Kill
from hvsim.monitors.vcpu import VirtualCPU

__all__ = ["VirtualDevices", "CONSOLE_PORT", "TIMER_PERIOD_PORT", "TIMER_VECTOR_PORT",
           "FLOATING_BUS"]

CONSOLE_PORT = 0xE9            # Bochs/QEMU debug console: OUT writes one character
TIMER_PERIOD_PORT = 0x40       # OUT dword: period in retired instructions (0 stops)
TIMER_VECTOR_PORT = 0x41       # OUT byte: the vector the virtual timer raises
FLOATING_BUS = 0xFFFFFFFF      # an IN from a port without a device reads all ones
FIRST_INTERRUPT_VECTOR = 32    # vectors 0-31 are exceptions (SDM Vol. 3A, 6.3.1)


class VirtualDevices:
    """The console and the timer of one guest; ``console`` holds what it printed."""

    def __init__(self, vcpu: VirtualCPU, on_timer: Optional[Callable[[int], None]] = None):
        self.vcpu = vcpu
        self.console = ""
        self._on_timer = on_timer

    def out(self, port: int, size: int, value: int) -> str:
        """The guest's OUT; returns what happened, for the monitor's log."""
        v = self.vcpu
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
        if port == CONSOLE_PORT:
            return 0, "virtual console"
        if port == TIMER_PERIOD_PORT:
            return v.timer_period, "virtual timer period"
        if port == TIMER_VECTOR_PORT:
            return v.timer_vector, "virtual timer vector"
        return FLOATING_BUS, "no device"
