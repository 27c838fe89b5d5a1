"""The one table of instruction forms behind hvsim's assembler and disassembler.

Pure Python, not jitted.  Every IA-32 form that hvsim's CPU subset knows is one
``Form`` row below; ``assembler.py`` walks the rows to *encode* a parsed source
line and ``disassembler.py`` indexes the same rows by opcode to *decode* bytes
(the way PyBoy's ``opcodes.py`` drives both its CPU and its disassembler).
Nothing about an encoding is written down twice.

Operand kinds use the SDM's operand notation (Intel SDM Vol. 2, Appendix A.2),
with the operand size written out ("v" as d, or as w in the rows of the 16-bit
operand size, which carry the 66h prefix and the flag 'o16'; SDM Vol. 2A, 3.1.1.1):

    E*  ModRM r/m operand      Eb r/m8, Ed r/m32, Ew r/m16 (register printed as r16),
                               Ewx r/m16 whose register form also accepts r32 in source,
                               Ewd "r32/m16" (register printed as r32: SLDT, STR, SMSW,
                               MOV r/m,Sreg, LAR/LSL source)
    M*  ModRM memory only      M (no size: LEA, LGDT...), Mb, Mq (m64), Mp (m16:32),
                               Mdq (m128, the SDM's "dq": INVEPT/INVVPID's descriptor;
                               capstone prints "xmmword ptr", NASM writes "oword")
    Rd  ModRM r/m register     mod bits ignored (MOV to/from CRn, SDM Vol. 2B "MOV")
    G*  ModRM reg field        Gb r8, Gw r16, Gd r32
    Cd  ModRM reg = CRn        Sw  ModRM reg = segment register
    Dd  ModRM reg = DRn (MOV to/from debug registers; mod bits ignored as for CRn)
    Z*  register in opcode     low 3 bits (B0+r, B8+r, 50+r, ...): Zb, Zw, Zd
    I*  immediate              Ib, Iw, Id unsigned; Ibs imm8 sign-extended to 32 bits,
                               Ibw imm8 sign-extended to 16 bits
    J*  relative target        Jb rel8, Jd rel32
    O*  moffs                  Ob, Ow, Od (disp32 straight after the opcode: the address
                               size stays 32 whatever the operand size)
    Ap  ptr16:32               direct far pointer (EA, 9A)
    X*/Y*  string operands     X = [esi] (segment overridable), Y = es:[edi]
    fixed                      al ax eax cl dx 1 es cs ss ds fs gs

Opcodes are one byte, 0F and a second byte, or -- for INVEPT and INVVPID only --
0F 38 and a third byte (the three-byte map, SDM Vol. 2D, A.3).

ModRM byte (SDM Vol. 2A, Table 2-2) and SIB byte (Table 2-3):

     7   6 5    3 2    0          7    6 5     3 2    0
    +-----+------+------+        +-------+-------+------+
    | mod | reg  |  rm  |        | scale | index | base |
    +-----+------+------+        +-------+-------+------+
    reg = register operand or opcode extension (/digit)
"""
from __future__ import annotations

from dataclasses import dataclass, field

# ---------------------------------------------------------------------------
# Register names by encoding number (SDM Vol. 2A, Table 2-1).
REG8 = ("al", "cl", "dl", "bl", "ah", "ch", "dh", "bh")
REG16 = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di")
REG32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
SREG = ("es", "cs", "ss", "ds", "fs", "gs")           # Sreg field 6, 7 are reserved
CREG = {0: "cr0", 2: "cr2", 3: "cr3", 4: "cr4"}       # the control registers in the subset
DREG = tuple(f"dr{n}" for n in range(8))              # DR4/DR5: aliases of DR6/DR7, or #UD

# Prefix bytes (SDM Vol. 2A, 2.1.1).
SEG_PREFIX = {0x26: "es", 0x2E: "cs", 0x36: "ss", 0x3E: "ds", 0x64: "fs", 0x65: "gs"}
SEG_PREFIX_BYTE = {name: byte for byte, name in SEG_PREFIX.items()}
PREFIX_REP = 0xF3        # REP/REPE; also the mandatory prefix of VMXON
PREFIX_OPSIZE = 0x66     # operand-size override: the 'o16' rows, and the mandatory prefix of
#                          VMCLEAR, INVEPT and INVVPID
MAX_INSN_LEN = 15        # SDM Vol. 2A, 2.3.11

# Condition codes in encoding order (SDM Vol. 2A, Appendix B.1.4.7, Table B-10).
# The first name is the one capstone prints; the rest are assembler aliases.
CONDITIONS = (
    ("o",), ("no",), ("b", "c", "nae"), ("ae", "nb", "nc"), ("e", "z"), ("ne", "nz"),
    ("be", "na"), ("a", "nbe"), ("s",), ("ns",), ("p", "pe"), ("np", "po"),
    ("l", "nge"), ("ge", "nl"), ("le", "ng"), ("g", "nle"),
)

# Memory-operand size keywords as capstone prints them, by operand kind.
MEM_SIZE_TEXT = {
    "Eb": "byte ptr ", "Ed": "dword ptr ", "Ew": "word ptr ", "Ewx": "word ptr ",
    "Ewd": "word ptr ", "M": "", "Mb": "byte ptr ", "Mq": "qword ptr ", "Mp": "ptr ",
    "Ob": "byte ptr ", "Od": "dword ptr ", "Xb": "byte ptr ", "Xd": "dword ptr ",
    "Yb": "byte ptr ", "Yd": "dword ptr ", "Ow": "word ptr ", "Xw": "word ptr ",
    "Yw": "word ptr ", "Mdq": "xmmword ptr ",
}
# Size in bits a memory operand of this kind has (None: no size, e.g. LEA; 48: m16:32).
MEM_BITS = {
    "Eb": 8, "Ed": 32, "Ew": 16, "Ewx": 16, "Ewd": 16, "M": None, "Mb": 8, "Mq": 64,
    "Mp": 48, "Ob": 8, "Od": 32, "Xb": 8, "Xd": 32, "Yb": 8, "Yd": 32, "Ow": 16, "Xw": 16,
    "Yw": 16, "Mdq": 128,
}
MODRM_KINDS = frozenset(("Eb", "Ed", "Ew", "Ewx", "Ewd", "M", "Mb", "Mq", "Mdq", "Mp", "Rd",
                         "Gb", "Gw", "Gd", "Cd", "Dd", "Sw"))
RM_KINDS = frozenset(("Eb", "Ed", "Ew", "Ewx", "Ewd", "M", "Mb", "Mq", "Mdq", "Mp", "Rd"))
MEM_ONLY_KINDS = frozenset(("M", "Mb", "Mq", "Mdq", "Mp"))
IMM_KINDS = frozenset(("Ib", "Ibs", "Ibw", "Iw", "Id"))
IMM_BYTES = {"Ib": 1, "Ibs": 1, "Ibw": 1, "Iw": 2, "Id": 4, "Jb": 1, "Jd": 4, "Ob": 4, "Ow": 4,
             "Od": 4, "Ap": 6}


@dataclass(frozen=True)
class Form:
    """One encoding of one instruction.

    names    mnemonic as capstone prints it, then assembler-only aliases
    opcode   opcode bytes (for Z* operands: the +r base): 1, 2 (0F xx) or 3 (0F 38 xx)
    ext      ModRM.reg opcode extension (/digit), or None
    ops      operand kinds in Intel (destination first) order
    prefix   prefix byte that is part of the encoding (0xF3 VMXON, 0x66 VMCLEAR, INVEPT,
             INVVPID and every 16-bit operand-size row) or 0
    modrm    whole ModRM byte fixed by the opcode (0F 01 C1 VMCALL ...) or None
    flags    'rep'      F3 allowed, printed as "rep "
             'notrack'  a last segment prefix 3E makes this branch capstone's
                        "notrack" (CET) form, outside the subset
             'asm'      assembler only (a commuted spelling); never decoded
             'sregdst'  MOV Sreg,r/m: the assembler refuses CS as destination
             'comma'    far pointer printed "sel, off" (capstone's lcall)
             'uimm'     Ibs printed as an unsigned dword (capstone's OR/AND/XOR)
             'no1mem'   memory form printed without ", 1" (capstone's RCL by 1)
             'o16'      a 16-bit operand-size form: 66h selects it (SDM Vol. 2A, 2.1.1)
             'wordop'   PUSH imm16: an immediate says nothing of the operand size, so
                        the source writes ``push word 5`` (capstone prints no size)
    """
    names: tuple
    opcode: bytes
    ext: int | None
    ops: tuple
    prefix: int = 0
    modrm: int | None = None
    flags: frozenset = field(default_factory=frozenset)

    @property
    def mnemonic(self) -> str:
        return self.names[0]

    @property
    def has_modrm(self) -> bool:
        return self.ext is not None or self.modrm is not None or any(
            k in MODRM_KINDS for k in self.ops)

    @property
    def plus_r(self) -> bool:
        return any(k in ("Zb", "Zw", "Zd") for k in self.ops)

    def __str__(self) -> str:
        text = " ".join(f"{b:02X}" for b in self.opcode)
        if self.prefix:
            text = f"{self.prefix:02X} " + text
        if self.plus_r:
            text += "+r"
        if self.modrm is not None:
            text += f" {self.modrm:02X}"
        elif self.ext is not None:
            text += f" /{self.ext}"
        elif self.has_modrm:
            text += " /r"
        return f"{text:14s} {self.names[0]} {', '.join(self.ops)}".rstrip()


def _f(names, opcode, ext, ops, prefix=0, modrm=None, flags=()):
    if isinstance(names, str):
        names = (names,)
    return Form(tuple(names), bytes(opcode), ext, tuple(ops), prefix, modrm, frozenset(flags))


def _build() -> list:
    t = []
    add = t.append

    def add16(names, opcode, ext, ops, flags=()):
        """The 16-bit operand-size row of a form: 66h before the opcode."""
        add(_f(names, opcode, ext, ops, prefix=PREFIX_OPSIZE, flags=("o16",) + tuple(flags)))
    # --- data movement (SDM Vol. 2B "MOV", "MOVZX", "MOVSX", "LEA", "XCHG") ---
    add(_f("mov", [0x88], None, ("Eb", "Gb")))
    add(_f("mov", [0x89], None, ("Ed", "Gd")))
    add(_f("mov", [0x8A], None, ("Gb", "Eb")))
    add(_f("mov", [0x8B], None, ("Gd", "Ed")))
    add(_f("mov", [0x8C], None, ("Ewd", "Sw")))
    add(_f("mov", [0x8E], None, ("Sw", "Ewd"), flags=("sregdst",)))
    add(_f("mov", [0xA0], None, ("al", "Ob")))
    add(_f("mov", [0xA1], None, ("eax", "Od")))
    add(_f("mov", [0xA2], None, ("Ob", "al")))
    add(_f("mov", [0xA3], None, ("Od", "eax")))
    add(_f("mov", [0xB0], None, ("Zb", "Ib")))
    add(_f("mov", [0xB8], None, ("Zd", "Id")))
    add(_f("mov", [0xC6], 0, ("Eb", "Ib")))
    add(_f("mov", [0xC7], 0, ("Ed", "Id")))
    add16("mov", [0x89], None, ("Ew", "Gw"))
    add16("mov", [0x8B], None, ("Gw", "Ew"))
    add16("mov", [0xA1], None, ("ax", "Ow"))
    add16("mov", [0xA3], None, ("Ow", "ax"))
    add16("mov", [0xB8], None, ("Zw", "Iw"))
    add16("mov", [0xC7], 0, ("Ew", "Iw"))
    add(_f("mov", [0x0F, 0x20], None, ("Rd", "Cd")))
    add(_f("mov", [0x0F, 0x22], None, ("Cd", "Rd")))
    add(_f("mov", [0x0F, 0x21], None, ("Rd", "Dd")))
    add(_f("mov", [0x0F, 0x23], None, ("Dd", "Rd")))
    add(_f("movzx", [0x0F, 0xB6], None, ("Gd", "Eb")))
    add(_f("movzx", [0x0F, 0xB7], None, ("Gd", "Ew")))
    add(_f("movsx", [0x0F, 0xBE], None, ("Gd", "Eb")))
    add(_f("movsx", [0x0F, 0xBF], None, ("Gd", "Ew")))
    add16("movzx", [0x0F, 0xB6], None, ("Gw", "Eb"))
    add16("movzx", [0x0F, 0xB7], None, ("Gw", "Ew"))
    add16("movsx", [0x0F, 0xBE], None, ("Gw", "Eb"))
    add16("movsx", [0x0F, 0xBF], None, ("Gw", "Ew"))
    add(_f("lea", [0x8D], None, ("Gd", "M")))
    add16("lea", [0x8D], None, ("Gw", "M"))
    add(_f("nop", [0x90], None, ()))              # before XCHG: 90 is NOP, not xchg eax,eax
    add(_f("xchg", [0x90], None, ("eax", "Zd"), flags=("asm",)))
    add(_f("xchg", [0x90], None, ("Zd", "eax")))
    add(_f("xchg", [0x86], None, ("Gb", "Eb"), flags=("asm",)))   # NASM: reg field = 1st
    add(_f("xchg", [0x86], None, ("Eb", "Gb")))
    add(_f("xchg", [0x87], None, ("Gd", "Ed"), flags=("asm",)))
    add(_f("xchg", [0x87], None, ("Ed", "Gd")))
    add16("nop", [0x90], None, ())                # 66 90 (xchg ax, ax) is capstone's nop
    add16("xchg", [0x90], None, ("ax", "Zw"), flags=("asm",))
    add16("xchg", [0x90], None, ("Zw", "ax"))
    add16("xchg", [0x87], None, ("Gw", "Ew"), flags=("asm",))
    add16("xchg", [0x87], None, ("Ew", "Gw"))
    # --- stack (SDM Vol. 2B "PUSH", "POP") ---
    add(_f("push", [0x50], None, ("Zd",)))
    add(_f("push", [0x6A], None, ("Ibs",)))
    add(_f("push", [0x68], None, ("Id",)))
    add(_f("push", [0xFF], 6, ("Ed",)))
    add(_f("pop", [0x58], None, ("Zd",)))
    add(_f("pop", [0x8F], 0, ("Ed",)))
    add16("push", [0x50], None, ("Zw",))
    add16("push", [0x6A], None, ("Ibw",), flags=("wordop",))
    add16("push", [0x68], None, ("Iw",), flags=("wordop",))
    add16("push", [0xFF], 6, ("Ew",))
    add16("pop", [0x58], None, ("Zw",))
    add16("pop", [0x8F], 0, ("Ew",))
    for opc, sreg in ((0x06, "es"), (0x0E, "cs"), (0x16, "ss"), (0x1E, "ds")):
        add(_f("push", [opc], None, (sreg,)))
        if sreg != "cs":                          # 0F is the two-byte escape, not POP CS
            add(_f("pop", [opc + 1], None, (sreg,)))
    add(_f("push", [0x0F, 0xA0], None, ("fs",)))
    add(_f("pop", [0x0F, 0xA1], None, ("fs",)))
    add(_f("push", [0x0F, 0xA8], None, ("gs",)))
    add(_f("pop", [0x0F, 0xA9], None, ("gs",)))
    add(_f(("pushfd", "pushf"), [0x9C], None, ()))
    add(_f(("popfd", "popf"), [0x9D], None, ()))
    # --- the eight classic ALU operations (SDM Vol. 2A, Table B-13 group 1) ---
    for n, name in enumerate(("add", "or", "adc", "sbb", "and", "sub", "xor", "cmp")):
        base = n * 8
        add(_f(name, [base + 0], None, ("Eb", "Gb")))
        add(_f(name, [base + 1], None, ("Ed", "Gd")))
        add(_f(name, [base + 2], None, ("Gb", "Eb")))
        add(_f(name, [base + 3], None, ("Gd", "Ed")))
        add(_f(name, [base + 4], None, ("al", "Ib")))
        add(_f(name, [base + 5], None, ("eax", "Id")))
        add(_f(name, [0x80], n, ("Eb", "Ib")))
        add(_f(name, [0x81], n, ("Ed", "Id")))
        # capstone 5 prints the sign-extended imm8 of OR/AND/XOR as an unsigned dword
        add(_f(name, [0x83], n, ("Ed", "Ibs"), flags=("uimm",) if name in ("or", "and", "xor")
               else ()))
        add16(name, [base + 1], None, ("Ew", "Gw"))
        add16(name, [base + 3], None, ("Gw", "Ew"))
        # 83 before 05: with a 16-bit operand both are 4 bytes for a small immediate, and
        # NASM takes the sign-extended imm8 (capstone prints it unsigned like the dword)
        add16(name, [0x83], n, ("Ew", "Ibw"), flags=("uimm",) if name in ("or", "and", "xor")
              else ())
        add16(name, [base + 5], None, ("ax", "Iw"))
        add16(name, [0x81], n, ("Ew", "Iw"))
    add(_f("test", [0x84], None, ("Eb", "Gb")))
    add(_f("test", [0x85], None, ("Ed", "Gd")))
    add(_f("test", [0x84], None, ("Gb", "Eb"), flags=("asm",)))   # test r, r/m commutes
    add(_f("test", [0x85], None, ("Gd", "Ed"), flags=("asm",)))
    add(_f("test", [0xA8], None, ("al", "Ib")))
    add(_f("test", [0xA9], None, ("eax", "Id")))
    add(_f("test", [0xF6], 0, ("Eb", "Ib")))
    add(_f("test", [0xF7], 0, ("Ed", "Id")))
    add16("test", [0x85], None, ("Ew", "Gw"))
    add16("test", [0x85], None, ("Gw", "Ew"), flags=("asm",))
    add16("test", [0xA9], None, ("ax", "Iw"))
    add16("test", [0xF7], 0, ("Ew", "Iw"))
    # --- unary group 3, INC/DEC group 4/5 ---
    add(_f("inc", [0x40], None, ("Zd",)))
    add(_f("dec", [0x48], None, ("Zd",)))
    add(_f("inc", [0xFE], 0, ("Eb",)))
    add(_f("dec", [0xFE], 1, ("Eb",)))
    add(_f("inc", [0xFF], 0, ("Ed",)))
    add(_f("dec", [0xFF], 1, ("Ed",)))
    add16("inc", [0x40], None, ("Zw",))
    add16("dec", [0x48], None, ("Zw",))
    add16("inc", [0xFF], 0, ("Ew",))
    add16("dec", [0xFF], 1, ("Ew",))
    for ext, name in ((2, "not"), (3, "neg"), (4, "mul"), (5, "imul"), (6, "div"), (7, "idiv")):
        add(_f(name, [0xF6], ext, ("Eb",)))
        add(_f(name, [0xF7], ext, ("Ed",)))
        add16(name, [0xF7], ext, ("Ew",))
    add(_f("imul", [0x0F, 0xAF], None, ("Gd", "Ed")))
    add(_f("imul", [0x6B], None, ("Gd", "Ed", "Ibs")))
    add(_f("imul", [0x69], None, ("Gd", "Ed", "Id")))
    add16("imul", [0x0F, 0xAF], None, ("Gw", "Ew"))
    add16("imul", [0x6B], None, ("Gw", "Ew", "Ibw"))
    add16("imul", [0x69], None, ("Gw", "Ew", "Iw"))
    add(_f("cdq", [0x99], None, ()))
    add16("cwd", [0x99], None, ())
    # --- shifts and rotates, group 2 (/6 is the undocumented SAL alias: not in the subset) ---
    for ext, names in ((0, "rol"), (1, "ror"), (2, "rcl"), (3, "rcr"), (4, ("shl", "sal")),
                       (5, "shr"), (7, "sar")):
        # D0/D1 before C0/C1: NASM picks the by-1 form for a constant 1.  capstone 5 prints
        # RCL's memory by-1 form without its ", 1" ('no1mem'); the assembler takes that
        # one-operand spelling too (the 'asm' rows).
        quirk = ("no1mem",) if ext == 2 else ()
        add(_f(names, [0xD0], ext, ("Eb", "1"), flags=quirk))
        add(_f(names, [0xD1], ext, ("Ed", "1"), flags=quirk))
        if ext == 2:
            add(_f(names, [0xD0], ext, ("Eb",), flags=("asm",)))
            add(_f(names, [0xD1], ext, ("Ed",), flags=("asm",)))
        add(_f(names, [0xC0], ext, ("Eb", "Ib")))
        add(_f(names, [0xC1], ext, ("Ed", "Ib")))
        add(_f(names, [0xD2], ext, ("Eb", "cl")))
        add(_f(names, [0xD3], ext, ("Ed", "cl")))
        add16(names, [0xD1], ext, ("Ew", "1"), flags=quirk)
        if ext == 2:
            add16(names, [0xD1], ext, ("Ew",), flags=("asm",))
        add16(names, [0xC1], ext, ("Ew", "Ib"))
        add16(names, [0xD3], ext, ("Ew", "cl"))
    # --- condition codes ---
    for cc, cnames in enumerate(CONDITIONS):
        add(_f(tuple("j" + c for c in cnames), [0x70 + cc], None, ("Jb",)))
        add(_f(tuple("j" + c for c in cnames), [0x0F, 0x80 + cc], None, ("Jd",)))
        add(_f(tuple("set" + c for c in cnames), [0x0F, 0x90 + cc], None, ("Eb",)))
        add(_f(tuple("cmov" + c for c in cnames), [0x0F, 0x40 + cc], None, ("Gd", "Ed")))
        add16(tuple("cmov" + c for c in cnames), [0x0F, 0x40 + cc], None, ("Gw", "Ew"))
    # --- control transfer ---
    add(_f("jmp", [0xEB], None, ("Jb",), flags=("notrack",)))
    add(_f("jmp", [0xE9], None, ("Jd",), flags=("notrack",)))
    add(_f("jmp", [0xFF], 4, ("Ed",), flags=("notrack",)))
    add(_f("call", [0xE8], None, ("Jd",), flags=("notrack",)))
    add(_f("call", [0xFF], 2, ("Ed",), flags=("notrack",)))
    add(_f(("ret", "retn"), [0xC3], None, ()))
    add(_f(("ret", "retn"), [0xC2], None, ("Iw",)))
    add(_f("loop", [0xE2], None, ("Jb",)))
    add(_f("jecxz", [0xE3], None, ("Jb",)))
    add(_f(("ljmp", "jmp"), [0xEA], None, ("Ap",)))
    add(_f(("jmp", "ljmp"), [0xFF], 5, ("Mp",), flags=("notrack",)))
    add(_f(("lcall", "call"), [0x9A], None, ("Ap",), flags=("comma",)))
    add(_f(("call", "lcall"), [0xFF], 3, ("Mp",), flags=("notrack",)))
    add(_f("retf", [0xCB], None, ()))
    add(_f("retf", [0xCA], None, ("Iw",)))
    add(_f("int3", [0xCC], None, ()))
    add(_f("int", [0xCD], None, ("Ib",)))
    add(_f("into", [0xCE], None, ()))
    add(_f(("iretd", "iret"), [0xCF], None, ()))
    # --- string operations (F3 = REP) ---
    add(_f("movsb", [0xA4], None, ("Yb", "Xb"), flags=("rep",)))
    add(_f("movsd", [0xA5], None, ("Yd", "Xd"), flags=("rep",)))
    add(_f("stosb", [0xAA], None, ("Yb", "al"), flags=("rep",)))
    add(_f("stosd", [0xAB], None, ("Yd", "eax"), flags=("rep",)))
    add16("movsw", [0xA5], None, ("Yw", "Xw"), flags=("rep",))
    add16("stosw", [0xAB], None, ("Yw", "ax"), flags=("rep",))
    # --- flags and processor control ---
    for opc, name in ((0xF8, "clc"), (0xF9, "stc"), (0xF5, "cmc"), (0xFC, "cld"), (0xFD, "std"),
                      (0xFA, "cli"), (0xFB, "sti"), (0xF4, "hlt")):
        add(_f(name, [opc], None, ()))
    # --- port I/O ---
    add(_f("in", [0xE4], None, ("al", "Ib")))
    add(_f("in", [0xE5], None, ("eax", "Ib")))
    add(_f("in", [0xEC], None, ("al", "dx")))
    add(_f("in", [0xED], None, ("eax", "dx")))
    add(_f("out", [0xE6], None, ("Ib", "al")))
    add(_f("out", [0xE7], None, ("Ib", "eax")))
    add(_f("out", [0xEE], None, ("dx", "al")))
    add(_f("out", [0xEF], None, ("dx", "eax")))
    add16("in", [0xE5], None, ("ax", "Ib"))       # a 2-byte port access
    add16("in", [0xED], None, ("ax", "dx"))
    add16("out", [0xE7], None, ("Ib", "ax"))
    add16("out", [0xEF], None, ("dx", "ax"))
    # --- system instructions (SDM Vol. 2, group 6 = 0F 00, group 7 = 0F 01) ---
    for opc, name in (((0x0F, 0x0B), "ud2"), ((0x0F, 0xA2), "cpuid"), ((0x0F, 0x31), "rdtsc"),
                      ((0x0F, 0x32), "rdmsr"), ((0x0F, 0x30), "wrmsr"), ((0x0F, 0x06), "clts"),
                      ((0x0F, 0x08), "invd"), ((0x0F, 0x09), "wbinvd")):
        add(_f(name, opc, None, ()))
    add(_f("sgdt", [0x0F, 0x01], 0, ("M",)))
    add(_f("sidt", [0x0F, 0x01], 1, ("M",)))
    add(_f("lgdt", [0x0F, 0x01], 2, ("M",)))
    add(_f("lidt", [0x0F, 0x01], 3, ("M",)))
    add(_f("smsw", [0x0F, 0x01], 4, ("Ewd",)))
    add(_f("lmsw", [0x0F, 0x01], 6, ("Ewx",)))
    add(_f("invlpg", [0x0F, 0x01], 7, ("Mb",)))
    add(_f("sldt", [0x0F, 0x00], 0, ("Ewd",)))
    add(_f("str", [0x0F, 0x00], 1, ("Ewd",)))
    add(_f("lldt", [0x0F, 0x00], 2, ("Ewx",)))
    add(_f("ltr", [0x0F, 0x00], 3, ("Ewx",)))
    add(_f("verr", [0x0F, 0x00], 4, ("Ewx",)))
    add(_f("verw", [0x0F, 0x00], 5, ("Ewx",)))
    add(_f("lar", [0x0F, 0x02], None, ("Gd", "Ewd")))
    add(_f("lsl", [0x0F, 0x03], None, ("Gd", "Ewd")))
    # --- VMX (SDM Vol. 3C, chapter 31 / Vol. 2C "VMX instruction reference") ---
    add(_f("vmxon", [0x0F, 0xC7], 6, ("Mq",), prefix=PREFIX_REP))
    add(_f("vmclear", [0x0F, 0xC7], 6, ("Mq",), prefix=PREFIX_OPSIZE))
    add(_f("vmptrld", [0x0F, 0xC7], 6, ("Mq",)))
    add(_f("vmptrst", [0x0F, 0xC7], 7, ("Mq",)))           # mod = 11: RDSEED/RDPID, outside
    # INVEPT/INVVPID r32, m128: ModRM.reg is the type, r/m the 128-bit descriptor (SDM Vol.
    # 2C "INVEPT", "INVVPID"); 66h is mandatory.
    add(_f("invept", [0x0F, 0x38, 0x80], None, ("Gd", "Mdq"), prefix=PREFIX_OPSIZE))
    add(_f("invvpid", [0x0F, 0x38, 0x81], None, ("Gd", "Mdq"), prefix=PREFIX_OPSIZE))
    add(_f("vmxoff", [0x0F, 0x01], None, (), modrm=0xC4))
    add(_f("vmcall", [0x0F, 0x01], None, (), modrm=0xC1))
    add(_f("vmlaunch", [0x0F, 0x01], None, (), modrm=0xC2))
    add(_f("vmresume", [0x0F, 0x01], None, (), modrm=0xC3))
    add(_f("vmread", [0x0F, 0x78], None, ("Ed", "Gd")))
    add(_f("vmwrite", [0x0F, 0x79], None, ("Gd", "Ed")))
    return t


FORMS: tuple = tuple(_build())


def _decode_index() -> dict:
    """(opcode bytes) -> forms that decode from it, in table order."""
    index: dict = {}
    for form in FORMS:
        if "asm" in form.flags:
            continue
        if form.plus_r:
            keys = [form.opcode[:-1] + bytes([form.opcode[-1] + r]) for r in range(8)]
        else:
            keys = [form.opcode]
        for key in keys:
            index.setdefault(key, []).append(form)
    return index


def _asm_index() -> dict:
    """mnemonic (any accepted spelling) -> forms, in table order."""
    index: dict = {}
    for form in FORMS:
        for name in form.names:
            index.setdefault(name, []).append(form)
    return index


DECODE_INDEX: dict = _decode_index()
ASM_INDEX: dict = _asm_index()
MNEMONICS: frozenset = frozenset(f.mnemonic for f in FORMS)


def format_table() -> str:
    """The table as text, one form a line (for notebooks and the docs)."""
    return "\n".join(str(f) for f in FORMS if "asm" not in f.flags)
