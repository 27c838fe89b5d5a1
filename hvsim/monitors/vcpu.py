"""The virtual CPU a software monitor keeps for its guest (Python, not jitted).

A deprivileged guest kernel cannot hold the real IF, IOPL, IDTR or control registers:
the monitor owns them. It keeps the values the guest *believes* it has here, and shows
them to the guest wherever the real CPU would (the EFLAGS image PUSHF pushes, the frame
an interrupt builds, the value MOV from CRn reads).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from hvsim.arch.dr import DR6_INIT, DR7_INIT
from hvsim.arch.flags import IF, IOPL_MASK, IOPL_SHIFT

__all__ = ["VirtualCPU"]


@dataclasses.dataclass
class VirtualCPU:
    """The state the guest kernel believes the CPU has (the real CPU holds other values).

    ``IF``/``iopl``: the virtual EFLAGS.IF and IOPL; ``idtr_base``/``idtr_limit``: what
    the guest loaded with LIDT, ``gdtr_base``/``gdtr_limit`` with LGDT (at first, the GDT
    the monitor gave it); ``cr0``..``cr4``: its control registers (CR2 is set when
    a #PF is reflected); ``pending``: a virtual interrupt vector waiting for IF=1 (or
    None); ``timer_period``/``timer_vector``: the virtual timer's programming.
    """
    IF: int = 0
    iopl: int = 0
    idtr_base: int = 0
    idtr_limit: int = 0
    gdtr_base: int = 0
    gdtr_limit: int = 0
    cr0: int = 0x11            # PE | ET, as the machine's own reset value
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    pending: Optional[int] = None
    timer_period: int = 0
    timer_vector: int = 0x20
    dr: list = dataclasses.field(default_factory=lambda: [0, 0, 0, 0, 0, 0, DR6_INIT, DR7_INIT])

    def eflags_image(self, real: int) -> int:
        """The EFLAGS the guest should see: the real one with the virtual IF and IOPL."""
        return (real & ~(IF | IOPL_MASK)) | (IF if self.IF else 0) | (self.iopl << IOPL_SHIFT)
