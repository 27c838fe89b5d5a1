"""The stores a monitor emulates from a decoded instruction (Python, not jitted).

Two monitors finish a guest's store themselves instead of letting the hardware do it:
the VT-x host when the store goes to MMIO (KVM_EXIT_MMIO, hvsim/monitors/kvm.py), and a
shadow-paging monitor when it goes to a guest page table it write-protects (a trace
fault, hvsim/mmu/shadow.py). Both emulate the forms operating systems and drivers use
for such stores -- MOV r/m, r (88, 89), MOV r/m, imm (C6 /0, C7 /0) and MOV moffs, AL/EAX
(A2, A3) (SDM Vol. 2B, MOV) -- from the instruction the exit carries already decoded; for
anything else the monitor falls back to what the real ones do (KVM: an emulation
failure; a shadow MMU: unprotect the page and let the guest retry).
"""
from __future__ import annotations

from typing import Callable, Optional

from hvsim.cpu import decode as D
from hvsim.instruction import Instruction

__all__ = ["store_of", "sized_reg", "MOV_LOADS", "MOV_STORES", "MOFFS_LOADS", "MOFFS_STORES"]

MOV_LOADS = frozenset({D.OP_MOV_GE, D.OP_MOVZX, D.OP_MOVSX})   # 8A 8B; 0F B6 B7; 0F BE BF
MOV_STORES = frozenset({D.OP_MOV_EG, D.OP_MOV_EI})             # 88 89; C6 C7 /0
MOFFS_LOADS, MOFFS_STORES = (0xA0, 0xA1), (0xA2, 0xA3)


def sized_reg(read32: Callable[[int], int], n: int, size: int) -> int:
    """General register ``n`` (ModRM numbering) at operand size ``size``: for size 1,
    AL, CL, DL, BL, AH, CH, DH, BH; ``read32(i)`` gives the whole 32-bit register i."""
    if size == 1:
        return (read32(n & 3) >> (8 if n >= 4 else 0)) & 0xFF
    return read32(n) & ((1 << (8 * size)) - 1)


def store_of(insn: Optional[Instruction], reg: Callable[[int, int], int]) -> Optional[tuple]:
    """``(size, value)`` that ``insn`` stores to memory if it is one of the MOV forms
    above, else None. ``reg(n, size)`` reads general register ``n`` (ModRM numbering;
    size 1 names AL..BH) as the guest has it."""
    if insn is None or insn.mem is None:
        return None
    size = insn.size
    if insn.family == D.OP_MOV_EI:
        value = insn.imm
    elif insn.family == D.OP_MOV_EG:
        value = reg(insn.reg, size)
    elif insn.opcode in MOFFS_STORES:
        value = reg(0, size)
    else:
        return None
    return size, value & ((1 << (8 * size)) - 1)
