"""Devices that answer port I/O inside the jitted core (jitted).

A port is claimed by writing a device id into ``st[PORTMAP + port]``; an unclaimed
port leaves ``run()`` as an ``io`` event for a Python handler (KVM_EXIT_IO in spirit).

Devices:
* console  -- OUT writes the low byte into the console buffer (the guest's printf);
              IN reads 0. Default port 0xE9, the debug console of Bochs and QEMU.
* timer    -- a programmable interval timer measured in retired instructions:
              OUT dword to port+0 sets the period (0 stops it), OUT to port+1 the vector
              (32-255; a write of an exception vector is dropped);
              IN from port+0 reads the period. Default ports 0x40/0x41.
"""
from hvsim._jit import njit
from hvsim.arch.layout import (PORTMAP, CONSOLE_LEN, CONSOLE_BUF, CONSOLE_CAP, TIMER_PERIOD,
                              TIMER_NEXT, TIMER_VECTOR, TSC, ATTN, MASK32)

DEV_NONE = 0
DEV_CONSOLE = 1
DEV_TIMER_PERIOD = 2
DEV_TIMER_VECTOR = 3

CONSOLE_PORT = 0xE9
TIMER_PORT = 0x40
FIRST_INTERRUPT_VECTOR = 32   # below: exception vectors (SDM Vol. 3A, 6.2, Table 6-1)


@njit
def console_put(st, byte):
    n = st[CONSOLE_LEN]
    if n < CONSOLE_CAP:
        st[CONSOLE_BUF + n] = byte & 0xFF
    st[CONSOLE_LEN] = n + 1


@njit
def port_out(st, port, size, value):
    """Serve an OUT in the core. Returns 1 if a device took it, 0 if the port is unclaimed."""
    dev = st[PORTMAP + port]
    if dev == DEV_CONSOLE:
        console_put(st, value)
        return 1
    if dev == DEV_TIMER_PERIOD:
        st[TIMER_PERIOD] = value & MASK32
        st[TIMER_NEXT] = st[TSC] + (value & MASK32)
        st[ATTN] = 1
        return 1
    if dev == DEV_TIMER_VECTOR:
        # vectors 0-31 are the processor's exceptions (SDM Vol. 3A, 6.2): the timer, like
        # Machine.set_timer, raises only 32-255, and a write of another vector is dropped
        if value & 0xFF >= FIRST_INTERRUPT_VECTOR:
            st[TIMER_VECTOR] = value & 0xFF
        return 1
    return 0


@njit
def port_in(st, port, size):
    """Serve an IN in the core. Returns the value, or -1 if the port is unclaimed."""
    dev = st[PORTMAP + port]
    if dev == DEV_CONSOLE:
        return 0
    if dev == DEV_TIMER_PERIOD:
        return st[TIMER_PERIOD] & ((1 << (size << 3)) - 1)     # AL, AX or EAX
    if dev == DEV_TIMER_VECTOR:
        return st[TIMER_VECTOR]
    return -1
