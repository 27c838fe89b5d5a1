"""The instruction that caused an exit, as the core decoded it (Python face, not jitted).

When an instruction leaves ``run()`` for software -- a #GP from a privileged
instruction, INT n, an I/O port no device claims, HLT -- the exit carries that
instruction *already decoded*: the run loop copies its decode-cache row into the
exit-info block (``hvsim/arch/layout.py``, EXIT_INSN..EXIT_LINEAR) together with the
effective and linear address of its memory operand. That is what VMX gives a
hypervisor in the exit qualification and the VM-exit instruction-information field
(SDM Vol. 3C, 28.2.1 and 28.2.5, Table 28-9 for LIDT/LGDT/SIDT/SGDT): scaling, address
size, segment, index and base register, so the VMM never decodes the instruction
itself. A monitor in hvsim reads :class:`Instruction` the same way and never
disassembles text.

VM-exit instruction-information, as hvsim lays its fields out (compare SDM Table 28-9)::

    mnemonic  capstone's name for the form (hvsim/asm/table.py)   'lidt', 'out', 'cli'
    opcode    0xNN, 0x100 | second byte for 0F NN,               0x101
              or 0x200 | third byte for 0F 38 NN                 0x280 (INVEPT)
    size      operand size in bytes                              1, 2, 4
    reg       ModRM.reg: register number or /digit               3 (LIDT is 0F 01 /3)
    rm        ModRM.rm register when mod = 11b, else None
    mem       MemoryOperand(segment, base, index, scale, disp, ea, linear) or None
    imm, imm2 immediates (imm2: the selector of a far pointer)
    length    bytes, so a monitor resumes at eip + length

>>> from hvsim import Machine, assemble
>>> m = Machine(memory=1 << 20)
>>> m.load(assemble("mov ebx, 0x1000\\nlidt [ebx + 8]\\nhlt"))
>>> m.cpu.cpl = 3                       # LIDT is privileged: #GP(0) at CPL 3
>>> ev = m.run()
>>> ev.insn.mnemonic, ev.insn.mem.linear, ev.insn.length
('lidt', 4104, 4)
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

from hvsim.arch import layout as L
from hvsim.asm.disassembler import address_text, fmt_num, select_form
from hvsim.asm.table import (CREG, DECODE_INDEX, DREG, MEM_SIZE_TEXT, REG8, REG16,
                             REG32, RM_KINDS, SREG)
from hvsim.cpu.decode import OPC_MODRM

__all__ = ["Instruction", "MemoryOperand", "from_exit_info"]

# Offsets of the instruction-information fields in the exit-info block.
_B = L.EXIT_INFO
_INSN, _OP, _OPC, _REG, _RM, _SIZE = (L.EXIT_INSN - _B, L.EXIT_OP - _B, L.EXIT_OPC - _B,
                                      L.EXIT_REG - _B, L.EXIT_RM - _B, L.EXIT_OPSIZE - _B)
_BASE, _INDEX, _SCALE, _DISP = L.EXIT_BASE - _B, L.EXIT_INDEX - _B, L.EXIT_SCALE - _B, L.EXIT_DISP - _B
_IMM, _IMM2, _SEG, _PFX = L.EXIT_IMM - _B, L.EXIT_IMM2 - _B, L.EXIT_SEG - _B, L.EXIT_PFX - _B
_EA, _LIN, _LEN, _EIP = L.EXIT_EA - _B, L.EXIT_LINEAR - _B, L.EXIT_LEN - _B, L.EXIT_EIP - _B

# prefix bits of the decoded row (hvsim/cpu/decode.py PFX_*)
PFX_REP, PFX_REPNE, PFX_OPSIZE, PFX_SEG = 1, 2, 4, 8
# opcodes without a ModRM byte whose memory operand is the moffs32 after the opcode
# (A0-A3, SDM Vol. 2B "MOV -- Move", moffs)
_MOFFS = (0xA0, 0xA1, 0xA2, 0xA3)


class MemoryOperand(NamedTuple):
    """A memory operand: ``segment:[base + index*scale + disp]``.

    ``ea`` is the effective address (the offset in the segment) and ``linear`` the
    linear address (segment base + ea), both worked out by the core from the registers
    as they were when the instruction exited. Register names are None when absent;
    ``scale`` is the SIB shift (0..3, the factor is ``1 << scale``).
    """
    segment: str
    base: Optional[str]
    index: Optional[str]
    scale: int
    disp: int
    ea: int
    linear: int


class Instruction(NamedTuple):
    """One decoded instruction (see the module docstring for the fields).

    ``str(insn)`` is the instruction as hvsim's disassembler writes it (``'lidt [ebx +
    0x8]'``), rendered from these fields, not from the bytes.
    """
    mnemonic: str
    opcode: int
    size: int
    reg: int
    rm: Optional[int]
    mem: Optional[MemoryOperand]
    imm: int
    imm2: int
    length: int
    address: int = 0
    prefixes: int = 0
    family: int = 0

    @property
    def reg_name(self) -> str:
        """ModRM.reg as a general register of the operand size ('eax', 'ax', 'al')."""
        return _reg_name(self.reg, self.size)

    @property
    def rm_name(self) -> Optional[str]:
        """ModRM.rm as a general register of the operand size, or None (memory form)."""
        return None if self.rm is None else _reg_name(self.rm, self.size)

    @property
    def rep(self) -> bool:
        return bool(self.prefixes & PFX_REP)

    def __str__(self):
        form = _form(self.opcode, self.reg, self.rm, self.prefixes)
        if form is None:
            return self.mnemonic
        ops = [t for t in (_operand_text(self, form, k) for k in form.ops) if t is not None]
        name = ("rep " if self.rep and "rep" in form.flags else "") + self.mnemonic
        return f"{name} {', '.join(ops)}" if ops else name


def _reg_name(n: int, size: int) -> str:
    return (REG8, REG16, None, REG32)[size - 1 if size in (1, 2) else 3][n]


@functools.lru_cache(maxsize=4096)
def _form(opc: int, reg: int, rm: Optional[int], prefixes: int):
    """The form of hvsim/asm/table.py that the decoded fields name, or None: the
    disassembler's own choice (:func:`hvsim.asm.disassembler.select_form`), given the
    ModRM byte the fields stand for (any mod other than 11b for a memory operand)."""
    key = (bytes([opc]) if opc < 0x100 else bytes([0x0F, opc & 0xFF]) if opc < 0x200
           else bytes([0x0F, 0x38, opc & 0xFF]))
    forms = DECODE_INDEX.get(key, ())
    modrm = (reg << 3) | (0xC0 | rm if rm is not None else 0)
    opsize = bool(prefixes & PFX_OPSIZE)
    form = select_form(forms, modrm, bool(prefixes & PFX_REP), opsize)
    if form is None and prefixes & PFX_REP:      # a REP the instruction ignores
        form = select_form(forms, modrm, False, opsize)
    return form


def _signed32(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


def _operand_text(insn: "Instruction", form, kind: str) -> Optional[str]:
    """One operand of ``insn`` as hvsim's disassembler (and capstone) writes it, from the
    decoded fields; None for an operand the text leaves out."""
    seg = f"{insn.mem.segment}:" if insn.mem is not None and insn.prefixes & PFX_SEG else ""
    if kind in RM_KINDS:
        if insn.rm is not None:
            names = REG8 if kind == "Eb" else REG16 if kind in ("Ew", "Ewx") else REG32
            return names[insn.rm]
        m = insn.mem
        disp = _signed32(m.disp) if (m.base or m.index) else m.disp
        return MEM_SIZE_TEXT[kind] + seg + address_text(m.base, m.index, 1 << m.scale, disp)
    if kind in ("Gb", "Zb"):
        return REG8[insn.reg]
    if kind in ("Gw", "Zw"):
        return REG16[insn.reg]
    if kind in ("Gd", "Zd"):
        return REG32[insn.reg]
    if kind == "Cd":
        return CREG.get(insn.reg, f"cr{insn.reg}")
    if kind == "Dd":
        return DREG[insn.reg]
    if kind == "Sw":
        return SREG[insn.reg] if insn.reg < len(SREG) else f"sreg{insn.reg}"
    if kind in ("Ib", "Iw", "Id"):
        return fmt_num(insn.imm)
    if kind == "Ibs":
        return fmt_num(insn.imm if "uimm" in form.flags else _signed32(insn.imm))
    if kind == "Ibw":                            # imm8 sign-extended to the 16-bit size
        v = insn.imm & 0xFFFF
        return fmt_num(v if "uimm" in form.flags else v - 0x10000 if v & 0x8000 else v)
    if kind in ("Jb", "Jd"):
        return fmt_num((insn.address + insn.length + insn.imm) & L.MASK32)
    if kind in ("Ob", "Ow", "Od"):
        return MEM_SIZE_TEXT[kind] + seg + f"[{fmt_num(insn.imm)}]"
    if kind == "Ap":
        return f"{fmt_num(insn.imm2)}{', ' if 'comma' in form.flags else ':'}{fmt_num(insn.imm)}"
    if kind in ("Xb", "Xw", "Xd"):
        return MEM_SIZE_TEXT[kind] + seg + "[esi]"
    if kind in ("Yb", "Yw", "Yd"):
        return MEM_SIZE_TEXT[kind] + "es:[edi]"
    if kind == "1" and "no1mem" in form.flags and insn.rm is None:
        return None
    return kind                                  # a fixed register or the constant 1


_SEEN: dict = {}          # exit-info fields -> Instruction (immutable: shared freely)
_SEEN_CAP = 4096


def from_exit_info(x: list) -> Optional[Instruction]:
    """The Instruction of an exit-info block read as a list (``st[EXIT_INFO:...]``), or
    None when the exit had no instruction of its own (budget, interrupt, a fault while
    fetching)."""
    if not x[_INSN]:
        return None
    # a monitor meets the same few trapping instructions over and over: the same fields
    # (with the same registers behind the address) give the same Instruction
    key = (*x[_OP:_LIN + 1], x[_LEN], x[_EIP])
    insn = _SEEN.get(key)
    if insn is None:
        if len(_SEEN) >= _SEEN_CAP:
            _SEEN.clear()
        insn = _SEEN[key] = _decoded(x)
    return insn


def _decoded(x: list) -> Instruction:
    opc, reg, rm = x[_OPC], x[_REG], x[_RM]
    rm = None if rm < 0 else rm
    mem = None
    has_modrm_memory = rm is None and OPC_MODRM[opc] != 0
    if has_modrm_memory or opc in _MOFFS:
        base, index = x[_BASE], x[_INDEX]
        mem = MemoryOperand(SREG[x[_SEG]], REG32[base] if base >= 0 else None,
                            REG32[index] if index >= 0 else None, x[_SCALE], x[_DISP],
                            x[_EA], x[_LIN])
        if opc in _MOFFS:          # the core keeps moffs32 as the immediate
            ea = x[_IMM]
            mem = mem._replace(base=None, index=None, scale=0, disp=ea, ea=ea,
                               linear=(mem.linear - x[_EA] + ea) & L.MASK32)
    form = _form(opc, reg, rm, x[_PFX])
    return Instruction(form.mnemonic if form is not None else "(bad)", opc, x[_SIZE], reg, rm,
                       mem, x[_IMM], x[_IMM2], x[_LEN], x[_EIP], x[_PFX], x[_OP])

