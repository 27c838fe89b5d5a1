"""hvsim's assembler and disassembler (pure Python, not jitted).

    assemble(source, origin=0x1000, defines=None) -> Program
    disassemble(code, origin=0, count=None) -> list[Instruction]
    disassemble_one(code, offset=0, address=0) -> Instruction

Both are driven by the one instruction-form table in ``hvsim.asm.table``; the
assembler reads the source through ``hvsim.asm.preprocess`` (NASM's %define,
%ifdef/%ifndef/%else/%endif and %macro).
"""
from .errors import AsmError
from .table import FORMS, MNEMONICS, format_table
from .disassembler import Instruction, disassemble, disassemble_one
from .assembler import Program, assemble

__all__ = ["assemble", "disassemble", "disassemble_one", "Program", "AsmError",
           "Instruction", "FORMS", "MNEMONICS", "format_table"]
