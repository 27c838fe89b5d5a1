"""The binary translator: guest kernel code -> translation units (Python, not jitted).

VMware's translator (Adams & Agesen, ASPLOS 2006, sec. 3.2) is "binary, dynamic, on
demand, system level, subsetting, adaptive": it decodes the guest's bytes from the
guest EIP the CPU is about to run, accumulates a **translation unit** (TU) that stops "at
12 instructions or a terminating instruction (usually control flow)", and emits a
compiled code fragment into the translation cache (TC). This module does the part that
needs no machine: it reads guest bytes through a function it is given, decodes them
with hvsim's own disassembler (:func:`hvsim.asm.disassembler.disassemble_one`, driven by
the same opcode table as the CPU's decoder) and returns the code of one TU --
position-independent bytes -- with a row per TC instruction saying which guest
instruction it stands for. The monitor (hvsim/bt/monitor.py) places it in the TC, links
it and runs it.

What each guest instruction becomes (``kind`` of a row):

* ``IDENT`` -- neither control flow nor sensitive: copied byte for byte (IA-32 has no
  EIP-relative data addressing, so a copy computes the same addresses);
* ``INLINE`` -- CLI, STI, PUSHFD, POPFD: an in-TC sequence on the virtual IF/IOPL
  (hvsim/bt/replacements.py); an STI that would be the TU's last instruction is a
  callout instead (its interrupt shadow covers the next instruction, which the monitor
  must see run);
* ``CALLOUT`` -- the other sensitive instructions, far transfers, INT n, RET and
  indirect branches (a lookup), and an instruction adaptive translation found guilty:
  ``int CALLOUT_VECTOR``, the monitor does the rest;
* ``CHAIN`` -- the rewritten direct control flow: a Jcc/JMP rel32 to the TU's exits (at
  first its continuations, later the target's TC code), CALL's push of the guest return
  address;
* ``CONT`` -- a continuation: the translator-invoking callout an exit jumps to until
  the monitor chains it.

A TU never crosses a page, except that its last instruction may straddle into the next
one (both frames are then its source). Rewritten branches: Jcc rel8/rel32 -> Jcc rel32 +
JMP rel32 (taken, fall-through); JMP -> JMP rel32; CALL rel -> PUSH imm32 (guest return
EIP: the guest sees guest addresses on its stack) + JMP rel32; LOOP/JECXZ -> the short
branch over a 2-byte JMP to two JMP rel32 (taken, fall-through).

>>> from hvsim import assemble
>>> code = assemble("cli\\nout 0xe9, al", origin=0x1000).code
>>> tr = translate(0x1000, lambda lin, n: bytes(code[lin - 0x1000:][:n]).ljust(n, b"\\0"))
>>> [(r.kind, r.key, r.callout) for r in tr.rows]
[('INLINE', 'cli', None), ('CALLOUT', 'out', 'simulate')]
>>> tr.n_guest, tr.guest_end
(2, 4099)
"""
from __future__ import annotations

import dataclasses
import struct
from typing import Callable, Optional

from hvsim.asm.disassembler import disassemble_one, runs_out
from hvsim.bt import replacements as R

__all__ = ["translate", "Translation", "Row", "ExitSite", "MAX_TU_INSNS", "IDENT", "INLINE",
           "CALLOUT", "CHAIN", "CONT", "TranslationFault"]

#: Adams & Agesen 2006, sec. 3.2: a TU stops "at 12 instructions or a terminating
#: instruction"
MAX_TU_INSNS = 12
PAGE = 4096
MAX_INSN_LEN = 15                 # SDM Vol. 2A, 2.3.11
IDENT, INLINE, CALLOUT, CHAIN, CONT = "IDENT", "INLINE", "CALLOUT", "CHAIN", "CONT"
MASK32 = 0xFFFFFFFF

# condition codes of Jcc (the low nibble of 7x / 0F 8x, SDM Vol. 2A, Jcc)
_JCC_SHORT = range(0x70, 0x80)


class TranslationFault(Exception):
    """Reading the guest's code faulted: ``address`` is the linear address the fetch
    would fault on (CR2), ``error`` the guest's page-fault error code."""

    def __init__(self, address: int, error: int, message: str):
        super().__init__(message)
        self.address, self.error = address, error


@dataclasses.dataclass(slots=True)
class Row:
    """One TC instruction of a TU: at ``offset`` (bytes from the TU's start), ``length``
    bytes, standing for the guest instruction at ``guest_eip`` (``guest_len`` bytes);
    ``boundary``: the first TC instruction of that guest instruction's translation;
    ``kind``: IDENT, INLINE, CALLOUT, CHAIN or CONT; ``callout``: what an INT
    CALLOUT_VECTOR here means ('indirect', 'simulate', 'sti', 'popf', 'refused',
    'continuation') or None; ``key``: the guest instruction's name (its mnemonic)."""
    offset: int
    length: int
    guest_eip: int
    guest_len: int
    boundary: bool
    kind: str
    callout: Optional[str]
    key: str


@dataclasses.dataclass(slots=True)
class ExitSite:
    """A JMP/Jcc rel32 of the TU (``at``: its offset, ``field``: the offset of its rel32)
    that leaves for guest ``target``, at first through the continuation at ``stub``."""
    at: int
    field: int
    stub: int
    target: int


@dataclasses.dataclass
class Translation:
    """One TU, before it is placed: ``code`` (position-independent bytes), ``rows`` (one
    per TC instruction, in order), ``exits``, the guest instructions it translates
    (``guest``: (eip, length, text) each) and the guest linear pages it read."""
    guest_eip: int
    code: bytes
    rows: list
    exits: list
    guest: list
    pages: list
    guest_end: int

    @property
    def n_guest(self) -> int:
        return len(self.guest)


def _rel(raw: bytes, n: int) -> int:
    v = int.from_bytes(raw[-n:], "little")
    return v - (1 << (8 * n)) if v >> (8 * n - 1) else v


class _Emitter:
    def __init__(self):
        self.code = bytearray()
        self.rows: list = []
        self.exits: list = []
        self.pending_exits: list = []       # (row index, field offset, target)

    def put(self, raw: bytes, eip: int, glen: int, boundary: bool, kind: str,
            callout: Optional[str], key: str) -> int:
        at = len(self.code)
        self.rows.append(Row(at, len(raw), eip, glen, boundary, kind, callout, key))
        self.code += raw
        return at

    def sequence(self, seq: list, eip: int, glen: int, kind: str, key: str) -> None:
        for i, (raw, co) in enumerate(seq):
            self.put(raw, eip, glen, i == 0, CALLOUT if co else kind, co, key)

    def truncate(self, n_rows: int) -> None:
        """Drop the rows from ``n_rows`` on, and their code (no exits among them)."""
        del self.code[self.rows[n_rows].offset:]
        del self.rows[n_rows:]

    def exit_jump(self, raw: bytes, eip: int, glen: int, boundary: bool, target: int,
                  key: str) -> None:
        at = self.put(raw, eip, glen, boundary, CHAIN, None, key)
        self.pending_exits.append((at, at + len(raw) - 4, target & MASK32))

    def finish(self) -> None:
        """Place one continuation (a callout) per exit after the body and point each
        exit's rel32 at it."""
        for at, field, target in self.pending_exits:
            stub = self.put(R.callout(), target, 0, False, CONT, "continuation", "continuation")
            self.code[field:field + 4] = struct.pack("<i", stub - (field + 4))
            self.exits.append(ExitSite(at, field, stub, target))


def translate(eip: int, read: Callable[[int, int], bytes], *, adapted=frozenset(),
              max_insns: int = MAX_TU_INSNS) -> Translation:
    """Translate the TU that starts at guest linear ``eip``.

    ``read(lin, n)`` returns ``n`` guest bytes at linear ``lin`` (within one page) or
    raises :class:`TranslationFault`; ``adapted``: guest EIPs that adaptive translation
    made callouts. Raises TranslationFault when the first instruction cannot be fetched
    (a fetch at ``eip`` would fault: the caller reflects that #PF)."""
    if not 1 <= max_insns <= MAX_TU_INSNS:
        raise ValueError(f"max_insns must be 1..{MAX_TU_INSNS}, got {max_insns!r}")
    eip &= MASK32
    page_end = (eip | (PAGE - 1)) + 1
    # at most 12 instructions of at most 15 bytes: no need to read the rest of the page
    buf = bytearray(read(eip, min(page_end - eip, max_insns * MAX_INSN_LEN)))
    whole_page = eip + len(buf) == page_end
    pages = [eip & ~(PAGE - 1)]
    extended = False
    em = _Emitter()
    guest: list = []
    pc = eip
    done = False
    while not done and len(guest) < max_insns and pc < page_end:
        off = pc - eip
        insn = disassemble_one(buf, off, pc)
        if (insn.bad and whole_page and off + MAX_INSN_LEN > len(buf) and not extended
                and page_end <= MASK32 and runs_out(buf, off)):
            # the instruction runs into the next page: its bytes come from there (bytes
            # that are no instruction whatever follows are #UD, as the CPU finds them
            # without fetching further)
            try:
                more = read(page_end, MAX_INSN_LEN)
            except TranslationFault:
                if insn.bad or off + insn.size > len(buf):
                    if not guest:
                        raise
                    break                       # it will fault as its own TU's first
                more = b""
            if more:
                buf += more
                extended = True
                insn = disassemble_one(buf, off, pc)
        if pc + insn.size > page_end:
            pages.append(page_end)
        raw = bytes(insn.bytes)
        glen = insn.size
        key = insn.mnemonic.replace("rep ", "")
        guest.append((pc, glen, str(insn)))
        first = len(em.rows)
        done = _emit(em, insn, raw, key, pc, glen, adapted)
        pc = (pc + glen) & MASK32
    if not done and em.rows[first].kind == INLINE and em.rows[first].key == "sti":
        # an in-TC STI whose next instruction is not in this TU: its interrupt shadow
        # would end at the TU's exit, where the monitor cannot see it -- a callout
        # instead (the monitor emulates STI, shadow included)
        em.truncate(first)
        em.put(R.callout(), guest[-1][0], guest[-1][1], True, CALLOUT, "simulate", "sti")
        done = True
    if not done:
        em.exit_jump(R.jmp_rel32(0), pc, 0, True, pc, "fall-through")
    em.finish()
    return Translation(eip, bytes(em.code), em.rows, em.exits, guest, sorted(set(pages)), pc)


def _emit(em: _Emitter, insn, raw: bytes, key: str, pc: int, glen: int, adapted) -> bool:
    """Emit the translation of one guest instruction; True if it ends the TU."""
    nxt = (pc + glen) & MASK32
    skey, how = R.treatment("(bad)" if insn.bad else key, raw, insn)
    if how == R.REFUSED:                  # before adaptation: a refusal protects the hole
        em.put(R.callout(), pc, glen, True, CALLOUT, "refused", skey)
        return True
    if pc in adapted:
        em.put(R.callout(), pc, glen, True, CALLOUT, "adapted", key)
        return True
    if how == R.INLINE:
        em.sequence(R.inline_sequence(skey), pc, glen, INLINE, skey)
        return False
    if how == R.CALLOUT:
        em.put(R.callout(), pc, glen, True, CALLOUT, "simulate", skey)
        return True
    pre, body = R.split_prefixes(raw)
    op = body[0]
    if key == "jmp" and op in (0xEB, 0xE9):
        em.exit_jump(R.jmp_rel32(0), pc, glen, True, nxt + _rel(body, 1 if op == 0xEB else 4), key)
        return True
    if op in _JCC_SHORT or (op == 0x0F and len(body) > 1 and 0x80 <= body[1] <= 0x8F):
        short = op in _JCC_SHORT
        cc = (op if short else body[1]) & 0xF
        target = nxt + _rel(body, 1 if short else 4)
        em.exit_jump(R.jcc_rel32(cc, 0), pc, glen, True, target, key)
        em.exit_jump(R.jmp_rel32(0), pc, glen, False, nxt, key)
        return True
    if key in ("loop", "jecxz"):
        target = nxt + _rel(body, 1)
        em.put(bytes([op, 2]), pc, glen, True, CHAIN, None, key)      # to the taken JMP
        em.put(b"\xeb\x05", pc, glen, False, CHAIN, None, key)         # over it
        em.exit_jump(R.jmp_rel32(0), pc, glen, False, target, key)
        em.exit_jump(R.jmp_rel32(0), pc, glen, False, nxt, key)
        return True
    if key == "call" and op == 0xE8:
        em.put(R.push_imm32(nxt), pc, glen, True, CHAIN, None, key)
        em.exit_jump(R.jmp_rel32(0), pc, glen, False, nxt + _rel(body, 4), key)
        return True
    if key == "ret":
        # a segment prefix (the only prefix the subset allows on RET) does not change
        # it -- the pop is through SS (SDM Vol. 2B, RET) --: the same lookup, never a
        # copy that would return into guest code at ring 1
        imm = int.from_bytes(body[1:3], "little") if op == 0xC2 else None
        em.sequence(R.ret_sequence(imm), pc, glen, CHAIN, key)
        return True
    if op == 0xFF and key in ("jmp", "call") and len(body) > 1:
        if 0x66 in pre:                   # a 16-bit near branch: emulate it
            em.put(R.callout(), pc, glen, True, CALLOUT, "simulate", key)
            return True
        seg = bytes(b for b in pre if b != 0x66)
        ret = nxt if key == "call" else None
        em.sequence(R.indirect_sequence(seg, body[1:], ret), pc, glen, CHAIN, key)
        return True
    em.put(raw, pc, glen, True, IDENT, None, key)
    return False
