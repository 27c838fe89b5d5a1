"""Disassembler for hvsim's IA-32 subset, driven by ``table.FORMS``.

Pure Python, not jitted.  Output text is capstone 5's Intel syntax
(``Cs(CS_ARCH_X86, CS_MODE_32)``: ``i.mnemonic`` / ``i.op_str``) for every form
in the table; the tests hold it to that.

Bytes that do not start a subset instruction decode as a one-byte
``Instruction`` whose mnemonic is ``"(bad)"`` and whose op_str is empty, and
decoding goes on at the next byte; nothing here raises on guest bytes.  Outside
the subset are, among others: the 0x67 prefix, 0x66 where the table has no 16-bit
operand-size row ('o16': e.g. byte forms, branches, system forms) and is not the
mandatory 66 of VMCLEAR, INVEPT or INVVPID (the last two are bad without it), F2
and LOCK, F3 on anything but MOVS/STOS (and VMXON), CR1 and CR5-CR7,
segment-register fields 6 and 7, and a last segment prefix 3E on a near JMP/CALL
(CET's NOTRACK).  Segment prefixes on instructions without a memory operand are
accepted and ignored, as the processor and capstone do.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import table as T

MASK32 = 0xFFFFFFFF
HEX_THRESHOLD = 9          # capstone prints 0..9 in decimal, larger magnitudes in hex


@dataclass(frozen=True)
class Instruction:
    """One decoded instruction: ``str(insn)`` is ``"mnemonic op_str"``."""
    address: int
    size: int
    bytes: bytes
    mnemonic: str
    op_str: str
    form: T.Form | None = None

    def __str__(self) -> str:
        return f"{self.mnemonic} {self.op_str}" if self.op_str else self.mnemonic

    @property
    def bad(self) -> bool:
        return self.form is None


def fmt_num(value: int) -> str:
    """An immediate or displacement the way capstone writes it."""
    if value < 0:
        return "-" + fmt_num(-value)
    return f"{value:#x}" if value > HEX_THRESHOLD else str(value)


def _signed(value: int, nbytes: int) -> int:
    bit = 1 << (8 * nbytes - 1)
    return (value ^ bit) - bit


class _Truncated(Exception):
    """The bytes end inside an instruction."""


class _Bytes:
    """A read cursor over the code bytes (raises _Truncated past the end)."""

    def __init__(self, code, pos: int):
        self.code, self.pos, self.start = code, pos, pos

    def u(self, n: int) -> int:
        if self.pos + n > len(self.code) or self.pos + n - self.start > T.MAX_INSN_LEN:
            raise _Truncated
        value = int.from_bytes(bytes(self.code[self.pos:self.pos + n]), "little")
        self.pos += n
        return value


def _modrm_memory(cur: _Bytes, modrm: int) -> str:
    """Decode the memory operand of ModRM (mod != 3) and its SIB/displacement.

    32-bit addressing (SDM Vol. 2A, Table 2-2 and 2-3):
      rm=100 -> a SIB byte follows;  mod=00 rm=101 -> [disp32] with no base;
      SIB index=100 -> no index (scale ignored);  SIB base=101 with mod=00 ->
      no base, disp32.
    """
    mod, rm = modrm >> 6, modrm & 7
    base = index = None
    scale = 1
    if rm == 4:
        sib = cur.u(1)
        scale, idx, b = 1 << (sib >> 6), (sib >> 3) & 7, sib & 7
        if idx != 4:
            index = T.REG32[idx]
        if b == 5 and mod == 0:
            disp = _signed(cur.u(4), 4)
        else:
            base = T.REG32[b]
            disp = 0
    elif rm == 5 and mod == 0:
        disp = cur.u(4)
    else:
        base, disp = T.REG32[rm], 0
    if mod == 1:
        disp = _signed(cur.u(1), 1)
    elif mod == 2:
        disp = _signed(cur.u(4), 4)
    return address_text(base, index, scale, disp)


def address_text(base, index, scale, disp) -> str:
    parts = []
    if base:
        parts.append(base)
    if index:
        parts.append(index if scale == 1 else f"{index}*{scale}")
    if not parts:
        return f"[{fmt_num(disp & MASK32)}]"
    text = " + ".join(parts)
    if disp > 0:
        text += " + " + fmt_num(disp)
    elif disp < 0:
        text += " - " + fmt_num(-disp)
    return f"[{text}]"


def select_form(forms, modrm, rep: bool, opsize: bool):
    """The form among ``forms`` (one opcode's, table order) that a ModRM byte (None if the
    opcode has none) and the REP / operand-size prefixes select, or None."""
    for cand in forms:
        if cand.modrm is not None:
            if modrm != cand.modrm:
                continue
        elif cand.ext is not None and (modrm >> 3) & 7 != cand.ext:
            continue
        if modrm is not None and modrm >> 6 == 3 and cand.modrm is None and any(
                k in T.MEM_ONLY_KINDS for k in cand.ops):
            continue
        if cand.prefix == T.PREFIX_REP:
            if not rep or opsize:
                continue
        elif cand.prefix == T.PREFIX_OPSIZE:
            if not opsize or (rep and "rep" not in cand.flags):
                continue
        else:
            if opsize or (rep and "rep" not in cand.flags):
                continue
        return cand
    return None


def _bad(code, offset: int, address: int) -> Instruction:
    return Instruction(address, 1, bytes(code[offset:offset + 1]), "(bad)", "")


def disassemble_one(code, offset: int = 0, address: int = 0) -> Instruction:
    """Decode the instruction at ``code[offset]``, which sits at guest ``address``."""
    try:
        return _decode(code, offset, address) or _bad(code, offset, address)
    except _Truncated:
        return _bad(code, offset, address)


def runs_out(code, offset: int = 0) -> bool:
    """True when the bytes of ``code`` end inside the instruction at ``code[offset]``
    (more bytes could make it one), False when they hold a whole instruction or bytes
    that are no instruction whatever follows. :func:`disassemble_one` gives '(bad)' for
    both; a reader of guest code fetches the next page only in the first case."""
    try:
        _decode(code, offset, 0)
    except _Truncated:
        return True
    return False


def _decode(code, offset: int, address: int):
    cur = _Bytes(code, offset)
    seg = None
    rep = opsize = False
    while True:                                   # legacy prefixes (SDM Vol. 2A, 2.1.1)
        byte = cur.u(1)
        if byte in T.SEG_PREFIX:
            seg = T.SEG_PREFIX[byte]              # the last segment prefix wins
        elif byte == T.PREFIX_REP:
            rep = True
        elif byte == T.PREFIX_OPSIZE:
            opsize = True
        else:
            break
    opcode = bytes([byte]) if byte != 0x0F else bytes([byte, cur.u(1)])
    if opcode == b"\x0f\x38":                    # the three-byte map (INVEPT, INVVPID)
        opcode += bytes([cur.u(1)])
    forms = T.DECODE_INDEX.get(opcode)
    if not forms:
        return None
    modrm = cur.u(1) if forms[0].has_modrm else None
    form = select_form(forms, modrm, rep, opsize)
    if form is None:
        return None
    if seg == "ds" and "notrack" in form.flags:
        return None                               # 3E + near branch = NOTRACK (CET)

    reg = (modrm >> 3) & 7 if modrm is not None else opcode[-1] & 7
    texts = []
    jump_rel = None
    for kind in form.ops:
        if kind in T.RM_KINDS:
            if modrm >> 6 == 3 or kind == "Rd":   # MOV CRn/DRn ignore mod (SDM Vol. 2B "MOV")
                names = T.REG8 if kind == "Eb" else T.REG16 if kind in ("Ew", "Ewx") else T.REG32
                texts.append(names[modrm & 7])
            else:
                mem = _modrm_memory(cur, modrm)
                texts.append(T.MEM_SIZE_TEXT[kind] + (f"{seg}:" if seg else "") + mem)
        elif kind == "Gb":
            texts.append(T.REG8[reg])
        elif kind == "Gw":
            texts.append(T.REG16[reg])
        elif kind == "Gd":
            texts.append(T.REG32[reg])
        elif kind == "Zb":
            texts.append(T.REG8[opcode[-1] & 7])
        elif kind == "Zw":
            texts.append(T.REG16[opcode[-1] & 7])
        elif kind == "Zd":
            texts.append(T.REG32[opcode[-1] & 7])
        elif kind == "Cd":
            if reg not in T.CREG:
                return None
            texts.append(T.CREG[reg])
        elif kind == "Dd":
            texts.append(T.DREG[reg])
        elif kind == "Sw":
            if reg >= len(T.SREG):
                return None
            texts.append(T.SREG[reg])
        elif kind in ("Ib", "Iw", "Id"):
            texts.append(fmt_num(cur.u(T.IMM_BYTES[kind])))
        elif kind in ("Ibs", "Ibw"):
            value = _signed(cur.u(1), 1)
            width = MASK32 if kind == "Ibs" else 0xFFFF
            texts.append(fmt_num(value & width if "uimm" in form.flags else value))
        elif kind in ("Jb", "Jd"):
            n = T.IMM_BYTES[kind]
            jump_rel = _signed(cur.u(n), n)
            texts.append(None)                    # target needs the final length
        elif kind in ("Ob", "Ow", "Od"):
            texts.append(T.MEM_SIZE_TEXT[kind] + (f"{seg}:" if seg else "")
                         + f"[{fmt_num(cur.u(4))}]")
        elif kind == "Ap":
            off, sel = cur.u(4), cur.u(2)
            sep = ", " if "comma" in form.flags else ":"
            texts.append(f"{fmt_num(sel)}{sep}{fmt_num(off)}")
        elif kind in ("Xb", "Xw", "Xd"):
            texts.append(T.MEM_SIZE_TEXT[kind] + (f"{seg}:" if seg else "") + "[esi]")
        elif kind in ("Yb", "Yw", "Yd"):
            texts.append(T.MEM_SIZE_TEXT[kind] + "es:[edi]")
        elif kind == "1" and "no1mem" in form.flags and modrm >> 6 != 3:
            pass                                  # capstone 5 drops RCL m, 1's count
        else:                                     # fixed register or the constant 1
            texts.append(kind)
    size = cur.pos - offset
    if jump_rel is not None:
        target = (address + size + jump_rel) & MASK32
        texts = [fmt_num(target) if t is None else t for t in texts]
    mnemonic = ("rep " if rep and "rep" in form.flags else "") + form.mnemonic
    return Instruction(address, size, bytes(code[offset:cur.pos]), mnemonic,
                       ", ".join(texts), form)


def disassemble(code, origin: int = 0, count: int | None = None) -> list:
    """Decode ``code`` (bytes or a uint8 numpy array) loaded at ``origin``.

    Stops at the end of ``code`` or after ``count`` instructions.  Undecodable
    bytes come back one at a time as ``(bad)`` instructions.
    """
    if not isinstance(code, (bytes, bytearray)):
        code = bytes(memoryview(code).cast("B"))     # e.g. a uint8 numpy array
    out = []
    offset = 0
    while offset < len(code) and (count is None or len(out) < count):
        insn = disassemble_one(code, offset, (origin + offset) & MASK32)
        out.append(insn)
        offset += insn.size
    return out
