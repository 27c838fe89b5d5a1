"""hvsim: an educational simulator of x86 virtualization.

    >>> from hvsim import Machine, assemble
    >>> m = Machine()
    >>> m.load(assemble("mov eax, 6\\nimul eax, eax, 7\\nhlt"))
    >>> m.run().kind, m.cpu.eax
    ('halt', 42)

The machine (hvsim/cpu, rings, mmu) is jitted with numba; everything here is its
Python face. See DESIGN.md in the project for the architecture.
"""
from hvsim import _gc

with _gc.paused():          # numba's import makes ~110k objects: see hvsim/_gc.py
    from hvsim.asm import assemble, disassemble, Program, AsmError
    from hvsim.machine import Machine, Event, Snapshot, TraceEntry
_gc.freeze_startup()

__all__ = ["Machine", "Event", "Snapshot", "TraceEntry", "assemble", "disassemble", "Program",
           "AsmError"]
__version__ = "0.1.0"
