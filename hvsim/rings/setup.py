"""Build the system tables a protected-mode kernel needs, from Python (not jitted).

The self-checking guests in tests/guests build their GDT, IDT and TSS in assembly, as
a real kernel does. Lessons, monitors and the stepper usually want the opposite: a
machine that is already in a known protected-mode configuration, so that the first
instruction a student steps through is the interesting one. :func:`install` writes

* a GDT with a flat 4 GiB code and data segment for each ring 0..3, so that a program
  can run in any ring (a deprivileged guest kernel runs in ring 1), and one 32-bit TSS;
* a 256-entry IDT (every gate not present until you add one with :meth:`SystemTables.gate`);
* the TSS, holding the inner-ring stacks (SS0:ESP0, SS1:ESP1, SS2:ESP2) that the CPU
  switches to when an interrupt or a call gate enters a more privileged ring
  (SDM Vol. 3A, 6.12.1 and Figure 7-2);

and loads GDTR, IDTR and TR, as LGDT, LIDT and LTR would. The GDT layout, by index
(SDM Vol. 3A, 3.4.2: selector = index << 3 | TI << 2 | RPL):

    0 null | 1 code DPL0 | 2 data DPL0 | 3 code DPL1 | 4 data DPL1
           | 5 code DPL2 | 6 data DPL2 | 7 code DPL3 | 8 data DPL3 | 9 TSS

>>> from hvsim import Machine
>>> m = Machine(memory=1 << 20)
>>> t = install(m)
>>> hex(t.code(3)), hex(t.data(3)), hex(t.tss_selector)
('0x3b', '0x43', '0x48')
>>> t.enter(m, ring=3, eip=0x1000, esp=t.stack_top(3))
>>> m.cpu.cpl, hex(m.cpu.cs), hex(m.cpu.ss)
(3, '0x3b', '0x43')
"""
from __future__ import annotations

import dataclasses
import struct

from hvsim.rings import make_descriptor, make_gate, make_tss, put_descriptors, TSS32_SIZE
from hvsim.rings.descriptors import SYS_TSS32_AVAIL, TSS_ESP0   # Table 3-2, Figure 7-2

__all__ = ["install", "SystemTables"]

# GDT indices of the layout above
_CODE_INDEX = (1, 3, 5, 7)
_DATA_INDEX = (2, 4, 6, 8)
_TSS_INDEX = 9
_GDT_ENTRIES = 10
IDT_VECTORS = 256

# where the tables go by default: below the default program origin (0x1000), above the
# real-mode interrupt vector table's traditional first KiB
DEFAULT_GDT = 0x400
DEFAULT_TSS = 0x480
DEFAULT_IDT = 0x1_0000
STACK_SPACING = 0x4000       # bytes between the top of one ring's stack and the next


def _flat(type_, dpl):
    # base 0, limit 0xFFFFF in 4 KiB units (4 GiB), S=1, present, 32-bit, G=1
    return make_descriptor(0, 0xFFFFF, type_, 1, dpl, 1, 1, 1)


_CODE_TYPE = 0xB   # execute/read, accessed (SDM Vol. 3A, Table 3-1)
_DATA_TYPE = 0x3   # read/write, accessed


@dataclasses.dataclass
class SystemTables:
    """Where :func:`install` put the tables, and the selectors of its GDT layout."""
    gdt: int
    idt: int
    tss: int
    memory_size: int

    @staticmethod
    def code(ring: int) -> int:
        """The flat code selector of ``ring`` (RPL = DPL = ring)."""
        return (_CODE_INDEX[_ring(ring)] << 3) | ring

    @staticmethod
    def data(ring: int) -> int:
        """The flat data selector of ``ring`` (RPL = DPL = ring)."""
        return (_DATA_INDEX[_ring(ring)] << 3) | ring

    @property
    def tss_selector(self) -> int:
        return _TSS_INDEX << 3

    def stack_top(self, ring: int) -> int:
        """The default stack top for ``ring``: ring 0 at the top of memory, each outer
        ring STACK_SPACING bytes lower."""
        return self.memory_size - STACK_SPACING * _ring(ring)

    def gate(self, m, vector: int, handler: int, *, kind: str = "interrupt", dpl: int = 0,
             ring: int = 0) -> None:
        """IDT[vector] = a ``kind`` ('interrupt' or 'trap') gate to ``handler`` in the
        code segment of ``ring``. ``dpl`` is the lowest privilege that may use the gate
        with ``INT n`` (3 for a system call; hardware events ignore it)."""
        if not 0 <= vector < IDT_VECTORS:
            raise ValueError(f"vector {vector} is outside 0..255")
        put_descriptors(m.memory, self.idt + 8 * vector,
                        [make_gate(kind, self.code(ring), handler, dpl)])

    def set_stack(self, m, ring: int, esp: int) -> None:
        """TSS.SSn:ESPn = data(ring):esp, the stack the CPU switches to entering ``ring``."""
        if not 0 <= _ring(ring) <= 2:
            raise ValueError("the TSS holds stacks for rings 0, 1 and 2 only")
        if not isinstance(esp, int) or not 0 <= esp <= 0xFFFFFFFF:
            raise ValueError(f"esp={esp!r} is not a 32-bit address")
        at = self.tss + TSS_ESP0 + 8 * ring   # ESPn at 4 + 8n, SSn at 8 + 8n (Figure 7-2)
        m.memory[at:at + 8] = list(struct.pack("<II", esp, self.data(ring)))

    def enter(self, m, ring: int, eip: int, esp: int | None = None) -> None:
        """Put the CPU in ``ring`` at ``eip``: CS, SS, DS, ES, FS, GS from this GDT."""
        m.cpu.cs = self.code(ring)
        for s in ("ss", "ds", "es", "fs", "gs"):
            setattr(m.cpu, s, self.data(ring))
        m.cpu.esp = self.stack_top(ring) if esp is None else esp
        m.cpu.eip = eip


def _ring(ring) -> int:
    if not isinstance(ring, int) or not 0 <= ring <= 3:
        raise ValueError(f"ring must be 0, 1, 2 or 3, got {ring!r}")
    return ring


def install(m, *, gdt: int = DEFAULT_GDT, idt: int = DEFAULT_IDT, tss: int = DEFAULT_TSS,
            ring0_stack: int | None = None, ring1_stack: int | None = None,
            ring2_stack: int | None = None) -> SystemTables:
    """Write the GDT, an empty IDT and a TSS into ``m`` and load GDTR, IDTR and TR.

    The CPU stays where it is (ring 0, flat); move it with :meth:`SystemTables.enter`.
    The TSS's inner stacks default to :meth:`SystemTables.stack_top` of each ring.
    """
    size = len(m.memory)
    for name, at, n in (("gdt", gdt, 8 * _GDT_ENTRIES), ("idt", idt, 8 * IDT_VECTORS),
                        ("tss", tss, TSS32_SIZE)):
        if not isinstance(at, int) or at < 0 or at + n > size:
            raise ValueError(f"{name}={at!r}: {n} bytes there do not fit in {size:#x} bytes of memory")
    t = SystemTables(gdt, idt, tss, size)
    stacks = [t.stack_top(r) if s is None else s
              for r, s in enumerate((ring0_stack, ring1_stack, ring2_stack))]
    descriptors = [0]
    for ring in range(4):
        descriptors += [_flat(_CODE_TYPE, ring), _flat(_DATA_TYPE, ring)]
    descriptors.append(make_descriptor(tss, TSS32_SIZE - 1, SYS_TSS32_AVAIL, 0, 0, 1, 0, 0))
    gdt_limit = put_descriptors(m.memory, gdt, descriptors)
    m.memory[tss:tss + TSS32_SIZE] = list(make_tss(
        esp0=stacks[0], ss0=t.data(0), esp1=stacks[1], ss1=t.data(1),
        esp2=stacks[2], ss2=t.data(2)))
    m.memory[idt:idt + 8 * IDT_VECTORS] = 0
    m.cpu.gdtr_base, m.cpu.gdtr_limit = gdt, gdt_limit
    m.cpu.idtr_base, m.cpu.idtr_limit = idt, 8 * IDT_VECTORS - 1
    m.cpu.tr = t.tss_selector
    # reload the segment registers from the new GDT (same flat ring-0 segments)
    t.enter(m, 0, m.cpu.eip, m.cpu.esp)
    return t
