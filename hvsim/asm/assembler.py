"""A small NASM-flavoured assembler for hvsim's IA-32 subset.

Pure Python, not jitted.  ``assemble(source, origin=0x1000) -> Program``.

The encoder has no opcode knowledge of its own: every instruction line is
matched against the rows of ``table.FORMS`` (the same rows the disassembler
decodes with), each matching row is encoded, and the shortest encoding wins,
ties going to the earlier row.  That reproduces NASM's default (-Ox) choices
for this subset:

* ``83 /n ib``, ``6B ib`` and ``6A ib`` when the immediate fits a sign-extended
  byte (``add eax, 0xFFFFFFFF`` is ``83 C0 FF``), else the ``imm32`` form; the
  accumulator short forms (``05 id``, ``A1 moffs``) when they are shorter;
* ``D1 /n`` for a shift by the constant 1; ``90+r`` for XCHG with EAX;
* for reg,reg the ``r/m, reg`` opcode (``mov eax, ecx`` = ``89 C8``), except
  XCHG, whose first operand goes in ModRM.reg (``87 CA`` = ``xchg ecx, edx``);
* the shortest displacement (none, disp8, disp32); ``[reg*2]`` with no base is
  split to ``[reg+reg]`` as NASM does; ``[ebp+esp]`` is swapped so ESP is the
  base;
* ``EB``/``70+cc`` rel8 jumps whenever the target is within reach.

16-bit operands (``mov ax, 5``, ``add word [ebx], cx``, ``in ax, dx``) select the
table's 66h rows, as NASM does in ``bits 32``; ``push word 5`` pushes a word
(a bare ``push 5`` a dword).  An operand size that no form of the mnemonic
takes is named in the error ("16-bit operand 'ax' is not supported by 'jmp'").

Differences from NASM, on purpose: no 66h prefix is ever emitted for the
16-bit-looking system forms (``mov ax, ds``, ``sldt ax`` assemble like
``mov eax, ds``, ``sldt eax``: the 32-bit forms, which write all of EAX; the
CPU leaves 66h on them outside its subset);
``push``/``pop``/``jmp``/``call`` accept an unsized memory operand as a dword
(NASM asks for ``dword``); a scale of 3, 5
or 9 is an error rather than split.  ``org`` before any code sets the origin;
a later ``org`` pads forward with zeros.  capstone's own spellings are
accepted too, so its output re-assembles: ``dword ptr fs:[eax]``,
``movsb byte ptr es:[edi], byte ptr [esi]``, ``ljmp 8:0x1000``,
``lcall 8, 0x1000``, ``jmp ptr [eax]`` (m16:32), ``je 0x1002``.

Preprocessor (``hvsim.asm.preprocess``, NASM's spelling, a subset): ``%define NAME
[value]``, ``%undef NAME``, ``%ifdef``/``%ifndef NAME`` ... ``%else`` ... ``%endif``, and
``%macro NAME N`` ... ``%endmacro`` whose body uses ``%1``..``%N``, ``%0`` (the count)
and ``%%label`` (one label per expansion).  ``assemble(source, defines=...)`` adds
``%define`` lines before the source, so one kernel source builds two ways, with its
sensitive operations behind macros as Linux's pv_ops keeps them:

>>> src = '''
... %macro IRQ_DISABLE 0
... %ifdef XEN
...     mov byte [EVTCHN_MASK], 1       ; ask the hypervisor to hold events
... %else
...     cli
... %endif
... %endmacro
... %define EVTCHN_MASK 0x2000
...     IRQ_DISABLE
...     hlt'''
>>> assemble(src).code.hex()                       # cli; hlt
'faf4'
>>> assemble(src, defines=["XEN"]).code.hex()      # mov byte [0x2000], 1; hlt
'c6050020000001f4'

A macro's lines are listed at the caller's line number; an error in one names the
macro, its body line and the caller's line.  Sources without ``%`` lines assemble
as before, byte for byte.

Passes: the source is parsed once, then encoded repeatedly.  Unknown forward
references count as fitting any short form; an instruction's encoding may
grow between passes but never shrink, so the passes reach a fixed point.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import table as T
from .errors import AsmError
from .preprocess import ID_CHARS, ID_START, SourceLine, preprocess

MASK32 = 0xFFFFFFFF
MAX_PASSES = 40

# Register names -> (class, number).  Class is the register file and width.
REGISTERS = {}
for _n, _r in enumerate(T.REG8):
    REGISTERS[_r] = ("r8", _n)
for _n, _r in enumerate(T.REG16):
    REGISTERS[_r] = ("r16", _n)
for _n, _r in enumerate(T.REG32):
    REGISTERS[_r] = ("r32", _n)
for _n, _r in enumerate(T.SREG):
    REGISTERS[_r] = ("sreg", _n)
for _n in range(8):
    REGISTERS[f"cr{_n}"] = ("cr", _n)
    REGISTERS[f"dr{_n}"] = ("dr", _n)

SIZE_WORDS = {"byte": 8, "word": 16, "dword": 32, "qword": 64, "fword": 48, "far": 48,
              "oword": 128, "xmmword": 128}     # NASM's and capstone's word for m128
DIST_WORDS = ("short", "near")
DATA_UNITS = {"db": 1, "dw": 2, "dd": 4}
UNSUPPORTED_PREFIXES = {"lock": "LOCK", "repne": "REPNE (F2)", "repnz": "REPNE (F2)",
                        "o16": "a written o16 prefix (16-bit operands such as ax or word [..] "
                               "add the 66h prefix themselves)",
                        "a16": "the 67h address-size prefix"}
REP_WORDS = ("rep", "repe", "repz")

# What each operand kind wants, in words, for error messages.
KIND_TEXT = {
    "Eb": "an 8-bit register or byte memory operand", "Ed": "a 32-bit register or memory operand",
    "Ew": "a 16-bit register or word memory operand", "Ewx": "a register or word memory operand",
    "Ewd": "a register or word memory operand", "M": "a memory operand",
    "Mb": "a memory operand", "Mq": "a qword memory operand",
    "Mdq": "a 128-bit (oword) memory operand",
    "Mp": "a far memory operand (far [..])", "Rd": "a 32-bit register",
    "Gb": "an 8-bit register", "Gd": "a 32-bit register", "Zb": "an 8-bit register",
    "Zd": "a 32-bit register", "Gw": "a 16-bit register", "Zw": "a 16-bit register",
    "Ibw": "an immediate", "Ow": "a memory operand", "Xw": "[esi]", "Yw": "es:[edi]",
    "Cd": "a control register (cr0, cr2, cr3, cr4)", "Dd": "a debug register (dr0-dr7)",
    "Sw": "a segment register", "Ib": "an immediate", "Ibs": "an immediate",
    "Iw": "an immediate", "Id": "an immediate", "Jb": "a jump target", "Jd": "a jump target",
    "Ob": "a memory operand", "Od": "a memory operand", "Ap": "a far pointer sel:offset",
    "Xb": "[esi]", "Xd": "[esi]", "Yb": "es:[edi]", "Yd": "es:[edi]", "1": "the constant 1",
}


@dataclass
class Program:
    """Assembled code: ``code`` loads at ``origin``; ``entry`` is label ``start``
    if defined, else ``origin``.  ``labels`` holds labels and ``equ`` constants
    (local labels under their full name ``global.local``).  ``listing`` has one
    ``(address, bytes, line_no, text)`` per source statement; ``data`` the
    ``(address, size)`` of each statement that is data, not code (db/dw/dd, org
    padding), so a disassembler need not decode it."""
    code: bytes
    origin: int
    labels: dict
    entry: int
    listing: list = field(default_factory=list)
    data: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.code)


# ---------------------------------------------------------------------------
# Tokens and expressions

@dataclass
class Tok:
    kind: str          # 'id', 'num', 'str', 'op', 'end'
    value: object
    col: int           # 1-based column of the first character
    text: str = ""


# One line as parsed (``lineno``, ``text``) and ``error(message, col)`` to complain
# about it in terms of the source; the preprocessor makes them.
_Line = SourceLine


def _parse_number(text: str, line: _Line, col: int) -> int:
    s = text.lower().replace("_", "")
    try:
        if s.endswith("h"):
            return int(s[:-1], 16)
        if s.startswith("0x"):
            return int(s[2:], 16)
        if s.startswith(("0b", "0y")):
            return int(s[2:], 2)
        if s.startswith(("0o", "0q")):
            return int(s[2:], 8)
        if s.endswith(("b", "y")):
            return int(s[:-1], 2)
        if s.endswith(("o", "q")):
            return int(s[:-1], 8)
        if s.endswith(("d", "t")):
            return int(s[:-1], 10)
        return int(s, 10)
    except ValueError:
        raise line.error(f"bad number '{text}'", col) from None


_ID_START, _ID_CHARS = ID_START, ID_CHARS        # one rule for names, the preprocessor's too
_OPERATORS = ("<<", ">>", "//", "%%", "+", "-", "*", "/", "%", "&", "|", "^", "~", "!",
              "(", ")", "[", "]", ",", ":")


def _tokenize(line: _Line) -> list:
    text, toks, i = line.text, [], 0
    while i < len(text):
        c = text[i]
        if c == ";":
            break
        if c.isspace():
            i += 1
            continue
        col = i + 1
        if c in "'\"":
            j = text.find(c, i + 1)
            if j < 0:
                raise line.error(f"unterminated string: expected a closing {c}", col)
            toks.append(Tok("str", text[i + 1:j], col, text[i:j + 1]))
            i = j + 1
        elif c.isdigit():
            j = i
            while j < len(text) and (text[j].isalnum() or text[j] == "_"):
                j += 1
            toks.append(Tok("num", _parse_number(text[i:j], line, col), col, text[i:j]))
            i = j
        elif c == "$":
            if text.startswith("$$", i):
                toks.append(Tok("op", "$$", col, "$$"))
                i += 2
            else:
                toks.append(Tok("op", "$", col, "$"))
                i += 1
        elif c in _ID_START:
            j = i
            while j < len(text) and text[j] in _ID_CHARS:
                j += 1
            toks.append(Tok("id", text[i:j], col, text[i:j]))
            i = j
        else:
            for op in _OPERATORS:
                if text.startswith(op, i):
                    toks.append(Tok("op", op, col, op))
                    i += len(op)
                    break
            else:
                raise line.error(f"unexpected character '{c}'", col)
    toks.append(Tok("end", None, len(text.rstrip()) + 1, "end of line"))
    return toks


class _Parser:
    """Recursive descent over one line's tokens."""

    def __init__(self, line: _Line, toks: list, scope: str):
        self.line, self.toks, self.pos, self.scope = line, toks, 0, scope

    @property
    def tok(self) -> Tok:
        return self.toks[self.pos]

    def peek(self, k: int = 1) -> Tok:
        return self.toks[min(self.pos + k, len(self.toks) - 1)]

    def next(self) -> Tok:
        tok = self.toks[self.pos]
        self.pos += 1
        return tok

    def at_op(self, *ops) -> bool:
        return self.tok.kind == "op" and self.tok.value in ops

    def at_word(self, *words) -> bool:
        return self.tok.kind == "id" and self.tok.value.lower() in words

    def expect_op(self, op: str, what: str) -> Tok:
        if not self.at_op(op):
            raise self.error(f"expected '{op}' {what}")
        return self.next()

    def error(self, message: str, tok: Tok | None = None) -> AsmError:
        tok = tok or self.tok
        got = "end of line" if tok.kind == "end" else f"'{tok.text}'"
        return self.line.error(f"{message} — got {got}", tok.col)

    def symbol(self, name: str) -> str:
        """Local labels (.name) live under the last global label."""
        return self.scope + name if name.startswith(".") and not name.startswith("..") else name

    # expression grammar, loosest binding first (NASM's precedence)
    _LEVELS = (("|",), ("^",), ("&",), ("<<", ">>"), ("+", "-"), ("*", "/", "//", "%", "%%"))

    def expr(self, regs: bool = False, level: int = 0):
        if level == len(self._LEVELS):
            return self.unary(regs)
        node = self.expr(regs, level + 1)
        while self.at_op(*self._LEVELS[level]):
            op = self.next()
            node = ("bin", op.value, node, self.expr(regs, level + 1), op.col)
        return node

    def unary(self, regs: bool):
        if self.at_op("-", "+", "~", "!"):
            op = self.next()
            return ("un", op.value, self.unary(regs), op.col)
        return self.primary(regs)

    def primary(self, regs: bool):
        tok = self.tok
        if tok.kind == "num":
            self.next()
            return ("num", tok.value)
        if tok.kind == "str":
            self.next()
            return ("num", int.from_bytes(tok.value.encode("latin-1"), "little"))
        if tok.kind == "op" and tok.value in ("$", "$$"):
            self.next()
            return ("here",) if tok.value == "$" else ("start",)
        if tok.kind == "op" and tok.value == "(":
            self.next()
            node = self.expr(regs)
            self.expect_op(")", "to close '('")
            return node
        if tok.kind == "id":
            low = tok.value.lower()
            if low in REGISTERS:
                if not regs:
                    raise self.error("expected a number or label (registers only go inside [..])")
                self.next()
                return ("reg", low, tok.col)
            self.next()
            return ("sym", self.symbol(tok.value), tok.col)
        raise self.error("expected a number, label or '('")


# ---------------------------------------------------------------------------
# Operands

@dataclass
class Reg:
    name: str
    cls: str
    num: int
    col: int


@dataclass
class Mem:
    size: int | None
    seg: str | None
    base: str | None
    index: str | None
    scale: int
    disp: tuple | None       # expression tree or None
    col: int
    text: str = ""


@dataclass
class Imm:
    expr: tuple
    size: int | None
    dist: str | None         # 'short' / 'near' / None
    col: int
    text: str = ""


@dataclass
class Far:
    sel: tuple
    off: tuple
    col: int
    text: str = ""


def _has_reg(node) -> bool:
    if node[0] == "reg":
        return True
    return any(isinstance(x, tuple) and _has_reg(x) for x in node[1:])


def _const(node, p: _Parser, col: int) -> int:
    """A number needed while parsing (a scale): literals only."""
    if node[0] == "num":
        return node[1]
    raise p.line.error("expected a literal scale factor (1, 2, 4 or 8)", col)


def _linearize(node, p: _Parser, col: int):
    """Split an address expression into [(register, coefficient)] and constant parts."""
    if not _has_reg(node):
        return [], [node]
    kind = node[0]
    if kind == "reg":
        return [(node[1], 1)], []
    if kind == "bin" and node[1] in ("+", "-"):
        ra, ca = _linearize(node[2], p, col)
        if node[1] == "-":
            if _has_reg(node[3]):
                raise p.line.error("bad addressing: a register cannot be subtracted", node[4])
            return ra, ca + [("un", "-", node[3], node[4])]
        rb, cb = _linearize(node[3], p, col)
        return ra + rb, ca + cb
    if kind == "bin" and node[1] == "*":
        a, b = node[2], node[3]
        if _has_reg(b):
            a, b = b, a
        if _has_reg(b) or a[0] != "reg":
            raise p.line.error("bad addressing: expected register*scale", node[4])
        return [(a[1], _const(b, p, node[4]))], []
    raise p.line.error("bad addressing: expected [base + index*scale + displacement]", col)


def _parse_memory(p: _Parser, size, seg, col: int) -> Mem:
    open_tok = p.expect_op("[", "to start a memory operand")
    if p.tok.kind == "id" and p.tok.value.lower() in T.SREG and p.peek().kind == "op" \
            and p.peek().value == ":":
        seg = p.next().value.lower()
        p.next()
    if p.at_op("]"):
        raise p.error("expected an address inside [..]")
    node = p.expr(regs=True)
    close = p.expect_op("]", "to close the memory operand")
    regs, consts = _linearize(node, p, open_tok.col + 1)
    for r, _ in regs:
        cls = REGISTERS[r][0]
        if cls == "r16":
            raise p.line.error(f"16-bit address register '{r}' needs the 67h prefix, "
                               "which hvsim's subset leaves out: expected a 32-bit register",
                               open_tok.col)
        if cls != "r32":
            raise p.line.error(f"bad addressing: '{r}' cannot address memory; "
                               "expected a 32-bit register", open_tok.col)
    base = index = None
    scale = 1
    items = regs
    if len(items) > 2:                            # [eax+ebx+eax] -> [ebx + eax*2]
        merged: dict = {}
        for r, c in items:
            merged[r] = merged.get(r, 0) + c
        items = list(merged.items())
    for r, c in items:
        if c < 0 or c not in (1, 2, 4, 8):
            raise p.line.error(f"bad addressing: scale must be 1, 2, 4 or 8 — got {c}",
                               open_tok.col)
    if len(items) > 2:
        raise p.line.error("bad addressing: at most two registers (base + index*scale)",
                           open_tok.col)
    if len(items) == 1:
        r, c = items[0]
        if c == 1:
            base = r
        elif c == 2 and r != "esp":           # NASM: [r*2] -> [r + r*1], no disp32
            base, index = r, r
        else:
            index, scale = r, c
    elif len(items) == 2:
        (r1, c1), (r2, c2) = items
        if c1 != 1 and c2 != 1:
            raise p.line.error("bad addressing: only one register can be scaled", open_tok.col)
        if c1 == 1 and c2 == 1:
            base, index = r1, r2
            if index == "esp":                    # NASM swaps so ESP is the base
                base, index = index, base
        elif c1 == 1:
            base, index, scale = r1, r2, c2
        else:
            base, index, scale = r2, r1, c1
    if index == "esp":
        raise p.line.error("bad addressing: esp cannot be an index register", open_tok.col)
    disp = None
    for cnode in consts:
        disp = cnode if disp is None else ("bin", "+", disp, cnode, open_tok.col)
    text = p.line.text[col - 1:close.col]
    return Mem(size, seg, base, index, scale, disp, col, text)


def _parse_operand(p: _Parser):
    start = p.tok
    if start.kind == "end" or p.at_op(","):
        raise p.error("expected an operand")
    size = dist = None
    far = False
    while p.tok.kind == "id":
        low = p.tok.value.lower()
        if low in SIZE_WORDS:
            size = SIZE_WORDS[low]
            far = far or low == "far"
            p.next()
        elif low in DIST_WORDS:
            dist = low
            p.next()
        elif low == "ptr":
            p.next()
            if size is None:
                size, far = 48, True              # capstone's "ptr [m]" is m16:32
        else:
            break
    seg = None
    if p.tok.kind == "id" and p.tok.value.lower() in T.SREG and p.peek().kind == "op" \
            and p.peek().value == ":" and p.peek(2).kind == "op" and p.peek(2).value == "[":
        seg = p.next().value.lower()              # capstone style fs:[eax]
        p.next()
    if p.at_op("["):
        return _parse_memory(p, size, seg, start.col)
    after = p.peek()
    if p.tok.kind == "id" and p.tok.value.lower() in REGISTERS and not (
            after.kind == "op" and after.value not in (",", ")", "]")):
        tok = p.next()
        if size is not None and not far:
            raise p.line.error(f"a size keyword cannot qualify register '{tok.value}'", start.col)
        cls, num = REGISTERS[tok.value.lower()]
        return Reg(tok.value.lower(), cls, num, tok.col)
    node = p.expr()
    if p.at_op(":"):
        p.next()
        off = p.expr()
        return Far(node, off, start.col, p.line.text[start.col - 1:p.tok.col - 1].strip())
    text = p.line.text[start.col - 1:p.tok.col - 1].strip()
    return Imm(node, None if size == 48 else size, dist, start.col, text)


# ---------------------------------------------------------------------------
# Statements

@dataclass
class Stmt:
    line: _Line
    kind: str                  # 'insn', 'data', 'org', 'align', 'equ', 'label'
    label: str | None = None
    times: tuple | None = None
    times_col: int = 0
    mnemonic: str = ""
    mn_col: int = 0
    prefixes: list = field(default_factory=list)   # [(byte, name, col)]
    operands: list = field(default_factory=list)
    data: list = field(default_factory=list)       # db/dw/dd items: ('str', bytes) | expr
    unit: int = 1
    expr: tuple | None = None
    expr_col: int = 0
    min_len: int = 0           # an encoding never shrinks between passes


def _parse_line(line: _Line, scope: list, labels_seen: dict) -> list:
    toks = _tokenize(line)
    p = _Parser(line, toks, scope[0])
    out = []
    if p.tok.kind == "end":
        return out
    # name equ expr   |   name: equ expr
    def is_equ(tok: Tok) -> bool:
        return tok.kind == "id" and tok.value.lower() == "equ"

    def is_colon(tok: Tok) -> bool:
        return tok.kind == "op" and tok.value == ":"

    if p.tok.kind == "id" and (is_equ(p.peek()) or is_colon(p.peek()) and is_equ(p.peek(2))):
        name_tok = p.next()
        if p.at_op(":"):
            p.next()
        p.next()
        name = p.symbol(name_tok.value)
        _define(line, name, name_tok.col, labels_seen)
        st = Stmt(line, "equ", label=name, expr_col=p.tok.col)
        st.expr = p.expr()
        _expect_end(p)
        return [st]
    # label:
    if p.tok.kind == "id" and p.peek().kind == "op" and p.peek().value == ":":
        name_tok = p.next()
        p.next()
        if not name_tok.value.startswith("."):
            scope[0] = name_tok.value
            p.scope = name_tok.value
        name = p.symbol(name_tok.value)
        _define(line, name, name_tok.col, labels_seen)
        out.append(Stmt(line, "label", label=name))
        if p.tok.kind == "end":
            return out
    if p.tok.kind != "id":
        raise p.error("expected a mnemonic, directive or label")
    word = p.tok.value.lower()
    if word == "bits":
        p.next()
        tok = p.tok
        if tok.kind != "num" or tok.value != 32:
            raise p.error("hvsim assembles 32-bit code only: expected 'bits 32'")
        p.next()
        _expect_end(p)
        return out
    if word in ("org", "align"):
        p.next()
        st = Stmt(line, word, expr_col=p.tok.col)
        st.expr = p.expr()
        _expect_end(p)
        return out + [st]
    st = Stmt(line, "insn")
    if word == "times":
        p.next()
        st.times_col = p.tok.col
        st.times = p.expr()
        if p.tok.kind != "id":
            raise p.error("expected an instruction or db/dw/dd after the 'times' count")
        word = p.tok.value.lower()
    if word in DATA_UNITS:
        p.next()
        st.kind, st.unit = "data", DATA_UNITS[word]
        while True:
            if p.tok.kind == "end":
                raise p.error(f"expected a value after '{word}'")
            if p.tok.kind == "str" and (p.peek().kind == "end" or
                                        p.peek().kind == "op" and p.peek().value == ","):
                st.data.append(("str", p.next().value.encode("latin-1"), 0))
            else:
                col = p.tok.col
                st.data.append(("expr", p.expr(), col))
            if p.tok.kind == "end":
                break
            p.expect_op(",", "between values")
        return out + [st]
    # prefixes written before the mnemonic
    while p.tok.kind == "id":
        low = p.tok.value.lower()
        if low in REP_WORDS:
            st.prefixes.append((T.PREFIX_REP, low, p.tok.col))
        elif low in T.SEG_PREFIX_BYTE and p.peek().kind == "id":
            st.prefixes.append((T.SEG_PREFIX_BYTE[low], low, p.tok.col))
        elif low in UNSUPPORTED_PREFIXES:
            raise p.line.error(f"{UNSUPPORTED_PREFIXES[low]} is not in hvsim's subset: "
                               "expected rep or a segment prefix", p.tok.col)
        else:
            break
        p.next()
    if p.tok.kind != "id":
        raise p.error("expected a mnemonic after the prefix")
    mn = p.next()
    st.mnemonic, st.mn_col = mn.value.lower(), mn.col
    if st.mnemonic not in T.ASM_INDEX and st.mnemonic not in ("ljmp", "lcall"):
        raise line.error(f"unknown mnemonic '{mn.value}': expected an instruction of "
                         "hvsim's subset or a directive (db dw dd times org equ align)",
                         mn.col)
    if p.tok.kind != "end":
        while True:
            st.operands.append(_parse_operand(p))
            if p.tok.kind == "end":
                break
            if not p.at_op(","):
                raise p.error("expected ',' or end of line after an operand")
            p.next()
            if p.tok.kind == "end":
                raise p.error("expected an operand after ','")
    return out + [st]


def _expect_end(p: _Parser):
    if p.tok.kind != "end":
        raise p.error("expected end of line")


def _define(line: _Line, name: str, col: int, seen: dict):
    if name.lower() in REGISTERS:
        raise line.error(f"'{name}' is a register name: expected a label name", col)
    if name in seen:
        raise line.error(f"duplicate label '{name}' (first defined on line {seen[name]})", col)
    seen[name] = line.lineno


# ---------------------------------------------------------------------------
# Evaluation

class _Ctx:
    """Per-pass symbol state. ``known`` is cleared by a forward reference whose
    value is not yet known; such values read as 0 and fit any short form."""

    def __init__(self, origin: int, prev: dict, final: bool):
        self.origin, self.prev, self.final = origin, prev, final
        self.syms: dict = {}
        self.here = origin
        self.unknown = False       # any unknown reference in this pass

    def eval(self, node, line: _Line):
        """-> (value, known)."""
        self._known = True
        value = self._ev(node, line)
        return value, self._known

    def _ev(self, node, line):
        kind = node[0]
        if kind == "num":
            return node[1]
        if kind == "here":
            return self.here
        if kind == "start":
            return self.origin
        if kind == "sym":
            name = node[1]
            if name in self.syms:
                return self.syms[name]
            if name in self.prev:
                return self.prev[name]
            if self.final:
                raise line.error(f"undefined label '{name}'", node[2])
            self._known = False
            self.unknown = True
            return 0
        if kind == "un":
            v = self._ev(node[2], line)
            op = node[1]
            return -v if op == "-" else v if op == "+" else ~v if op == "~" else int(not v)
        if kind == "bin":
            a, b = self._ev(node[2], line), self._ev(node[3], line)
            op = node[1]
            if op in ("/", "//", "%", "%%") and b == 0:
                if not self._known:
                    return 0
                raise line.error("division by zero", node[4])
            if op in ("<<", ">>") and not 0 <= b < 256 and self._known:
                raise line.error(f"shift count {b} out of range: expected 0..255", node[4])
            if op in ("/", "//"):
                q = abs(a) // abs(b)
                return q if (a >= 0) == (b >= 0) else -q
            if op in ("%", "%%"):
                return a - b * (lambda q: q if (a >= 0) == (b >= 0) else -q)(abs(a) // abs(b))
            if op == "+":
                return a + b
            if op == "-":
                return a - b
            if op == "*":
                return a * b
            if op == "&":
                return a & b
            if op == "|":
                return a | b
            if op == "^":
                return a ^ b
            return a << b if op == "<<" else a >> b
        raise line.error("bad expression", 1)


# ---------------------------------------------------------------------------
# Matching operands against table forms

def _match(kind: str, op) -> bool:
    """Does the parsed operand have the shape and size the kind asks for?"""
    if isinstance(op, Reg):
        if kind in ("Eb", "Gb", "Zb"):
            return op.cls == "r8"
        if kind in ("Gw", "Zw"):
            return op.cls == "r16"
        if kind in ("Ed", "Gd", "Zd", "Rd"):
            return op.cls == "r32"
        if kind == "Ew":
            return op.cls == "r16"
        if kind in ("Ewx", "Ewd"):
            return op.cls in ("r16", "r32")
        if kind == "Cd":
            return op.cls == "cr"
        if kind == "Dd":
            return op.cls == "dr"
        if kind == "Sw":
            return op.cls == "sreg"
        return kind == op.name
    if isinstance(op, Mem):
        if kind in ("Eb", "Ed", "Ew", "Ewx", "Ewd", "Mb", "Mq", "Mdq"):
            return op.size in (None, T.MEM_BITS[kind])
        if kind == "M":
            return op.size != 48
        if kind == "Mp":
            return op.size == 48
        if kind in ("Ob", "Ow", "Od"):
            return op.base is None and op.index is None and op.size in (None, T.MEM_BITS[kind])
        if kind in ("Xb", "Xw", "Xd"):
            return (op.base == "esi" and op.index is None and op.disp is None
                    and op.size in (None, T.MEM_BITS[kind]))
        if kind in ("Yb", "Yw", "Yd"):
            return (op.base == "edi" and op.index is None and op.disp is None
                    and op.seg in (None, "es") and op.size in (None, T.MEM_BITS[kind]))
        return False
    if isinstance(op, Imm):
        if kind in ("Ib", "Ibs", "Ibw"):
            return op.size in (None, 8) and op.dist is None
        if kind == "Iw":
            return op.size in (None, 16) and op.dist is None
        if kind == "Id":
            return op.size in (None, 32) and op.dist is None
        if kind == "Jb":
            return op.size is None and op.dist in (None, "short")
        if kind == "Jd":
            return op.size is None and op.dist in (None, "near")
        if kind == "1":
            return op.size is None and op.dist is None
        return False
    if isinstance(op, Far):
        return kind == "Ap"
    return False


def _implicit_ok(form: T.Form) -> bool:
    """String instructions may be written bare: ``movsb``, ``stosw``, ``stosd``."""
    return bool(form.ops) and all(k in ("Xb", "Xw", "Xd", "Yb", "Yw", "Yd", "al", "ax", "eax")
                                  for k in form.ops)


class _RangeError(Exception):
    def __init__(self, message: str, col: int):
        super().__init__(message)
        self.message, self.col = message, col


def _signed32(v: int) -> int:
    v &= MASK32
    return v - (1 << 32) if v & 0x80000000 else v


def _imm(kind: str, op: Imm, ctx: _Ctx, line: _Line) -> bytes:
    value, known = ctx.eval(op.expr, line)
    if kind == "Ibs":
        if not -(1 << 31) <= value <= MASK32:
            raise _RangeError(f"immediate {value} out of range for 32 bits", op.col)
        s = _signed32(value)
        if known and not -128 <= s <= 127:
            raise _RangeError(f"immediate {value} does not fit a sign-extended byte "
                              "(-128..127)", op.col)
        return bytes([s & 0xFF])
    if kind == "Ibw":                    # imm8 sign-extended to a 16-bit operand
        if not -(1 << 15) <= value <= 0xFFFF:
            raise _RangeError(f"immediate {value} out of range for a word (-32768..65535)",
                              op.col)
        s = ((value & 0xFFFF) ^ 0x8000) - 0x8000
        if known and not -128 <= s <= 127:
            raise _RangeError(f"immediate {value} does not fit a sign-extended byte "
                              "(-128..127)", op.col)
        return bytes([s & 0xFF])
    lo, hi, n = {"Ib": (-128, 255, 1), "Iw": (-32768, 65535, 2),
                 "Id": (-(1 << 31), MASK32, 4)}[kind]
    if known and not lo <= value <= hi:
        what = {1: "a byte", 2: "a word", 4: "a dword"}[n]
        raise _RangeError(f"immediate {value} out of range for {what} ({lo}..{hi})", op.col)
    return (value & ((1 << (8 * n)) - 1)).to_bytes(n, "little")


def _modrm_variants(reg_field: int, op, ctx: _Ctx, line: _Line) -> list:
    """All encodings of a register or memory r/m operand: [(bytes, seg_or_None)].

    ModRM.mod: 00 no disp (rm=101 means [disp32]), 01 disp8, 10 disp32, 11 register.
    rm=100 escapes to a SIB byte; SIB base=101 with mod=00 means no base, disp32.
    """
    if isinstance(op, Reg):
        return [(bytes([0xC0 | reg_field << 3 | op.num]), None)]
    disp, known = (0, True) if op.disp is None else ctx.eval(op.disp, line)
    if not -(1 << 31) <= disp <= MASK32:
        raise _RangeError(f"displacement {disp} out of range for 32 bits", op.col)
    sdisp = _signed32(disp)
    d32 = (sdisp & MASK32).to_bytes(4, "little")
    base = REGISTERS[op.base][1] if op.base else None
    index = REGISTERS[op.index][1] if op.index else None
    out = []
    if base is None and index is None:                     # [disp32]
        out.append(bytes([reg_field << 3 | 5]) + d32)
        return [(b, op.seg) for b in out]
    if index is None and base != 4:
        head = lambda mod: bytes([mod << 6 | reg_field << 3 | base])
    else:
        sib_scale = {1: 0, 2: 1, 4: 2, 8: 3}[op.scale]
        sib_index = 4 if index is None else index
        if base is None:                                   # [index*scale + disp32]
            sib = bytes([sib_scale << 6 | sib_index << 3 | 5])
            out.append(bytes([reg_field << 3 | 4]) + sib + d32)
            return [(b, op.seg) for b in out]
        sib = bytes([sib_scale << 6 | sib_index << 3 | base])
        head = lambda mod: bytes([mod << 6 | reg_field << 3 | 4]) + sib
    if sdisp == 0 and base != 5:                           # [ebp] always needs a disp
        out.append(head(0))
    if -128 <= sdisp <= 127 or not known:
        out.append(head(1) + bytes([sdisp & 0xFF]))
    out.append(head(2) + d32)
    return [(b, op.seg) for b in out]


def _encode(form: T.Form, ops: list, st: Stmt, ctx: _Ctx, addr: int) -> list:
    """Every encoding of ``ops`` under ``form``: list of bytes (raises _RangeError)."""
    line = st.line
    implicit = not ops
    pre = bytearray(b for b, _, _ in st.prefixes)
    if any(b == T.PREFIX_REP for b, _, _ in st.prefixes) and "rep" not in form.flags:
        col = next(c for b, _, c in st.prefixes if b == T.PREFIX_REP)
        raise _RangeError("rep is only allowed on movsb/movsd/stosb/stosd", col)
    opcode = bytearray(form.opcode)
    reg_field = form.ext if form.ext is not None else 0
    rm_op = None
    tail = []                       # immediates in encoding order: (kind, operand)
    seg = None
    for kind, op in zip(form.ops, ops if not implicit else [None] * len(form.ops)):
        if kind in T.RM_KINDS:
            rm_op = op
        elif kind in ("Gb", "Gw", "Gd", "Cd", "Dd", "Sw"):
            reg_field = op.num
            if kind == "Cd" and op.num not in T.CREG:
                raise _RangeError(f"'{op.name}' is not in hvsim's subset: expected cr0, cr2, "
                                  "cr3 or cr4", op.col)
            if kind == "Sw" and "sregdst" in form.flags and op.name == "cs":
                raise _RangeError("mov cannot load cs (that is #UD): expected es, ss, ds, fs "
                                  "or gs; change cs with a far jmp", op.col)
        elif kind in ("Zb", "Zw", "Zd"):
            opcode[-1] += op.num
        elif kind in ("Ib", "Ibs", "Ibw", "Iw", "Id", "Jb", "Jd", "Ob", "Ow", "Od", "Ap"):
            tail.append((kind, op))
        elif kind == "1":
            if ctx.eval(op.expr, line) != (1, True):
                return []
        elif kind in ("Xb", "Xw", "Xd") and op is not None:
            seg = op.seg
    if tail and tail[0][0] in ("Ob", "Ow", "Od"):
        seg = tail[0][1].seg
    variants = [b""]
    if form.modrm is not None:
        variants = [bytes([form.modrm])]
    elif form.has_modrm:
        if rm_op is None:
            raise _RangeError("internal: no r/m operand", st.mn_col)
        mv = _modrm_variants(reg_field, rm_op, ctx, line)
        seg = mv[0][1]
        variants = [b for b, _ in mv]
    if seg is not None:
        pre.append(T.SEG_PREFIX_BYTE[seg])
    segs = [b for b in pre if b in T.SEG_PREFIX]
    if segs and segs[-1] == T.SEG_PREFIX_BYTE["ds"] and "notrack" in form.flags:
        raise _RangeError("a ds: override on jmp/call is CET's notrack prefix, outside "
                          "hvsim's subset: expected no override or another segment", st.mn_col)
    if form.prefix:
        pre.append(form.prefix)
    fixed_tail = bytearray()
    rel = None
    for kind, op in tail:
        if kind in ("Ob", "Ow", "Od"):
            disp, _ = (0, True) if op.disp is None else ctx.eval(op.disp, line)
            if not -(1 << 31) <= disp <= MASK32:
                raise _RangeError(f"address {disp} out of range for 32 bits", op.col)
            fixed_tail += (disp & MASK32).to_bytes(4, "little")
        elif kind == "Ap":
            sel, sk = ctx.eval(op.sel, line)
            off, ok = ctx.eval(op.off, line)
            if sk and not 0 <= sel <= 0xFFFF:
                raise _RangeError(f"selector {sel} out of range (0..0xffff)", op.col)
            if ok and not -(1 << 31) <= off <= MASK32:
                raise _RangeError(f"offset {off} out of range for 32 bits", op.col)
            fixed_tail += (off & MASK32).to_bytes(4, "little") + (sel & 0xFFFF).to_bytes(2, "little")
        elif kind in ("Jb", "Jd"):
            rel = (kind, op)
        else:
            fixed_tail += _imm(kind, op, ctx, line)
    out = []
    for v in variants:
        body = bytes(pre) + bytes(opcode) + v + bytes(fixed_tail)
        if rel is not None:
            kind, op = rel
            n = T.IMM_BYTES[kind]
            target, known = ctx.eval(op.expr, line)
            if known and not -(1 << 31) <= target <= MASK32:
                raise _RangeError(f"jump target {target} out of range for 32 bits", op.col)
            disp = target - (addr + len(body) + n)
            if n == 1:
                if known and not -128 <= _signed32(disp) <= 127:
                    raise _RangeError(f"jump target out of range for a short (rel8) jump: "
                                      f"offset {_signed32(disp)} is not in -128..127", op.col)
            body += (disp & ((1 << (8 * n)) - 1)).to_bytes(n, "little")
        out.append(body)
    return out


def _fits(form: T.Form, i: int, op) -> bool:
    """Operand ``op`` can be operand ``i`` of ``form`` (``push word 5`` for PUSH imm16)."""
    if "wordop" in form.flags and isinstance(op, Imm):
        return op.size == 16 and op.dist is None
    return _match(form.ops[i], op)


def _operand_bits(op):
    """Operand size in bits of a register or sized memory operand (else None)."""
    if isinstance(op, Reg):
        return {"r8": 8, "r16": 16, "r32": 32}.get(op.cls)
    if isinstance(op, Mem):
        return op.size
    return None


def _size_hint(forms: list, i: int) -> str:
    """': expected ...' from what the forms take as operand ``i`` (for a size error)."""
    wants = []
    for f in forms:
        text = KIND_TEXT.get(f.ops[i], f"'{f.ops[i]}'")
        if text not in wants:
            wants.append(text)
    wants = [w for w in wants if not any(o != w and o.startswith(w + " or ") for o in wants)]
    return f": expected {_or_list(wants)}" if wants else ""


def _describe(op) -> str:
    if isinstance(op, Reg):
        return f"'{op.name}'"
    return f"'{getattr(op, 'text', '') or '?'}'"


def _assemble_insn(st: Stmt, ctx: _Ctx, addr: int) -> bytes:
    line = st.line
    mn, ops = st.mnemonic, list(st.operands)
    if mn in ("ljmp", "lcall") and len(ops) == 2 and all(isinstance(o, Imm) for o in ops):
        ops = [Far(ops[0].expr, ops[1].expr, ops[0].col, ops[0].text)]   # capstone's "8, 0x1000"
    if mn == "imul" and len(ops) == 2 and isinstance(ops[1], Imm) and isinstance(ops[0], Reg):
        ops = [ops[0], ops[0], ops[1]]            # NASM: imul r, imm = imul r, r, imm
    forms = T.ASM_INDEX.get(mn, [])
    by_count = [f for f in forms if len(f.ops) == len(ops) or (not ops and _implicit_ok(f))]
    if not by_count:
        counts = sorted({len(f.ops) for f in forms})
        want = " or ".join(str(c) for c in counts)
        col = ops[len(ops) - 1].col if ops and max(counts) < len(ops) else st.mn_col
        if ops and max(counts) < len(ops):
            col = ops[max(counts)].col
        raise line.error(f"'{mn}' takes {want} operand{'s' if counts != [1] else ''} — "
                         f"got {len(ops)}", col)
    # narrow position by position so the error names the first operand that fits nothing
    cands = by_count
    if ops:
        for i, op in enumerate(ops):
            fit = [f for f in cands if _fits(f, i, op)]
            if not fit:
                bits = _operand_bits(op)
                if bits in (8, 16) and not any(_fits(f, i, op) for f in by_count):
                    raise line.error(f"{bits}-bit operand {_describe(op)} is not supported by "
                                     f"'{mn}'{_size_hint(by_count, i)}", op.col)
                wants = []
                for f in cands:
                    text = KIND_TEXT.get(f.ops[i], f"'{f.ops[i]}'")
                    if text not in wants:
                        wants.append(text)
                wants = [w for w in wants if not any(
                    o != w and o.startswith(w + " or ") for o in wants)]
                where = "after ','" if i else f"after '{mn}'"
                what = ""
                if isinstance(op, Reg) and op.cls in ("r8", "r16", "r32") and any(
                        k in ("Eb", "Ed", "Ew", "Gb", "Gd", "Zb", "Zd", "Rd", "al", "eax")
                        for k in (f.ops[i] for f in cands)):
                    what = "wrong operand size: "
                raise line.error(f"{what}expected {_or_list(wants)} {where} — got "
                                 f"{_describe(op)}", op.col)
            cands = fit
        # an unsized memory operand must get one size from the forms left; where the
        # only choice is dword or word (push, pop), it is the dword, as before 16-bit rows
        for i, op in enumerate(ops):
            if isinstance(op, Mem) and op.size is None:
                sizes = {T.MEM_BITS.get(f.ops[i]) for f in cands}
                if sizes == {16, 32}:
                    cands = [f for f in cands if "o16" not in f.flags]
                    sizes = {32}
                if len(sizes) > 1:
                    raise line.error("operation size not specified: expected byte, word or "
                                     "dword before '['", op.col)
    encodings = []
    range_error = None
    for order, form in enumerate(cands):
        try:
            for body in _encode(form, ops, st, ctx, addr):
                encodings.append((len(body), order, body))
        except _RangeError as e:
            range_error = range_error or e
    if not encodings:
        if range_error:
            raise line.error(range_error.message, range_error.col)
        raise line.error(f"no encoding of '{mn}' takes these operands", st.mn_col)
    encodings.sort(key=lambda e: (e[0], e[1]))
    for length, _, body in encodings:
        if length >= st.min_len:
            break
    else:
        body = encodings[-1][2]
    st.min_len = len(body)
    return body


def _or_list(items: list) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " or " + items[-1]


# ---------------------------------------------------------------------------
# Passes

def _data(st: Stmt, ctx: _Ctx) -> bytes:
    out = bytearray()
    n = st.unit
    lo, hi = -(1 << (8 * n - 1)), (1 << (8 * n)) - 1
    for kind, item, col in st.data:
        if kind == "str":
            chunk = bytes(item)
            if len(chunk) % n:
                chunk += b"\0" * (n - len(chunk) % n)
            out += chunk
            continue
        value, known = ctx.eval(item, st.line)
        if known and not lo <= value <= hi:
            name = {1: "db", 2: "dw", 4: "dd"}[n]
            raise st.line.error(f"value {value} out of range for {name} ({lo}..{hi})", col)
        out += (value & hi).to_bytes(n, "little")
    return bytes(out)


def _run_pass(stmts: list, origin: int, prev: dict, final: bool):
    ctx = _Ctx(origin, prev, final)
    addr = origin
    code = bytearray()
    listing = []
    data = []
    started = False
    for st in stmts:
        ctx.here = addr
        line = st.line
        if st.kind == "label":
            ctx.syms[st.label] = addr
            listing.append((addr, b"", line.lineno, line.text))
            continue
        if st.kind == "equ":
            ctx.syms[st.label] = ctx.eval(st.expr, line)[0]
            continue
        if st.kind == "org":
            value, known = ctx.eval(st.expr, line)
            if not started:
                if known and not 0 <= value <= MASK32:
                    raise line.error(f"org {value} out of range for a 32-bit address",
                                     st.expr_col)
                origin = ctx.origin = addr = value & MASK32
                ctx.here = addr
                continue
            if known and value < addr:
                raise line.error(f"org {value:#x} is below the current address {addr:#x}: "
                                 "expected an address at or after it", st.expr_col)
            pad = max(0, value - addr)
            code += bytes(pad)
            listing.append((addr, bytes(pad), line.lineno, line.text))
            if pad:
                data.append((addr, pad))
            addr += pad
            continue
        started = True
        if st.kind == "align":
            value, known = ctx.eval(st.expr, line)
            if known and (value <= 0 or value & (value - 1)):
                raise line.error(f"align {value}: expected a power of two", st.expr_col)
            pad = (-addr) % value if known and value > 0 else 0
            code += b"\x90" * pad
            listing.append((addr, b"\x90" * pad, line.lineno, line.text))
            addr += pad
            continue
        count = 1
        if st.times is not None:
            count, known = ctx.eval(st.times, line)
            if known and count < 0:
                raise line.error(f"times count {count} is negative: expected 0 or more",
                                 st.times_col)
            count = max(count, 0) if known else 0
        chunk = bytearray()
        for _ in range(count):
            if st.kind == "data":
                chunk += _data(st, ctx)
            else:
                chunk += _assemble_insn(st, ctx, addr + len(chunk))
        code += chunk
        listing.append((addr, bytes(chunk), line.lineno, line.text))
        if st.kind == "data" and chunk:
            data.append((addr, len(chunk)))
        addr += len(chunk)
    return bytes(code), origin, dict(ctx.syms), listing, data, ctx.unknown


# Words a line can start with that the assembler reads as a statement: a macro of
# one of these names, called with a count no body of it takes, is that statement.
_STATEMENT_WORDS = frozenset(T.ASM_INDEX) | {"ljmp", "lcall", "times", "org", "align",
                                             "bits"} | set(DATA_UNITS) | set(REP_WORDS)


def assemble(source: str, origin: int = 0x1000, defines=None) -> Program:
    """Assemble NASM-style Intel-syntax ``source`` into a Program loaded at ``origin``.

    ``defines`` (a dict name -> int, or None for "defined, no value"; or an
    iterable of names) acts as ``%define NAME value`` lines before the source.

    >>> assemble("start: mov eax, 1\\n jmp start").code.hex()
    'b801000000ebf9'
    >>> assemble("mov eax, SLOTS * 4", defines={"SLOTS": 3}).code.hex()
    'b80c000000'
    """
    if not isinstance(source, str):
        raise TypeError("assemble() wants the source text as a str")
    stmts, scope, seen = [], [""], {}
    for line in preprocess(source, defines, _STATEMENT_WORDS):
        stmts.extend(_parse_line(line, scope, seen))
    prev = None
    for _ in range(MAX_PASSES):
        code, org, syms, listing, data, unknown = _run_pass(stmts, origin, prev or {}, False)
        if syms == prev:
            if unknown:
                _run_pass(stmts, origin, prev, True)      # raises "undefined label"
            return Program(code, org, syms, syms.get("start", org), listing, data)
        prev = syms
    raise AsmError(f"labels did not settle after {MAX_PASSES} passes "
                   "(a times count or org that depends on later code?)")
