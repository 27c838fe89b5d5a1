"""What a sensitive guest instruction becomes in translated code (Python, not jitted).

One place for the replacement sequences a software VMM emits for the guest kernel's
sensitive instructions, so that the VMware-style translator (hvsim/bt/translator.py)
and a raw-mode patch manager (VirtualBox's PATM, which puts the same kind of code in
its patch memory) share them. Every sequence is real IA-32 that hvsim's machine runs at
ring 1; it reaches the monitor's per-VCPU data page through ``%gs`` (the segment the
monitor reserves for itself, Adams & Agesen, ASPLOS 2006, sec. 3.2: "Selectively, the
translator inserts %gs prefixes").

The VCPU page (:data:`VCPU_SLOTS`), dword slots at these offsets::

    +00 VIF      the virtual EFLAGS.IF: 0 or 200H (the bit itself, so PUSHF can OR it in)
    +04 VIOPL    the virtual EFLAGS.IOPL, in place (0, 1000H, 2000H, 3000H)
    +08 PENDING  non-zero while a virtual interrupt waits (the monitor keeps it current)
    +0C TARGET   an indirect branch's guest target, for the lookup callout
    +10 S0, +14 S1   scratch: a register saved around a sequence, an EFLAGS image

Rules every sequence keeps (hvsim's model of VMware's in-TC emulation):

* the real IF stays 1 and the real IOPL 0; the arithmetic flags the guest sees survive:
  only MOV, LEA, JECXZ, PUSH/POP and POPFD of an image that holds them are used where
  they must be kept (AND/OR appear only before a POPFD that reloads every flag);
* only the first instruction that touches guest state may fault (an instruction before
  it touches nothing but GS scratch), so a fault is the original's, at its guest EIP;
* when STI or POPF sets the virtual IF while an interrupt is pending, the sequence leaves
  through a callout so that the monitor injects it at once (STI keeps its one-
  instruction shadow: the monitor emulates that STI, as trap-and-emulate does; a tick
  that arrives right after the in-TC STI is held until the next instruction is done,
  by the monitor, which knows STI's sequence by its last instruction).

:data:`SENSITIVE` is the list, as data, of the instructions that never run as they are
in the guest kernel's translated code, each with why (Intel SDM; Robin & Irvine, "Analysis
of the Intel Pentium's Ability to Support a Secure Virtual Machine Monitor", USENIX
Security 2000, sec. 4.3, for the sensitive-but-unprivileged ones).
"""
from __future__ import annotations

import struct

from hvsim.arch.flags import IF, IOPL_MASK

__all__ = ["SENSITIVE", "VCPU_SLOTS", "VIF", "VIOPL", "PENDING", "TARGET", "S0", "S1",
           "CALLOUT_VECTOR", "INLINE", "CALLOUT", "REFUSED", "treatment", "inline_sequence",
           "callout", "jmp_rel32", "jcc_rel32", "push_imm32", "ret_sequence",
           "indirect_sequence", "GS_PREFIX", "CS_PREFIX", "reads_through_cs"]

MASK32 = 0xFFFFFFFF
GS_PREFIX = 0x65                  # segment override GS (SDM Vol. 2A, 2.1.1, Group 2)
#: the vector of the software interrupt that is a callout: every vector leaves run() to
#: the monitor, which tells a callout from a guest's own INT by its address in the TC
CALLOUT_VECTOR = 0xF1
VIF, VIOPL, PENDING, TARGET, S0, S1 = 0x00, 0x04, 0x08, 0x0C, 0x10, 0x14
VCPU_SLOTS = {"VIF": VIF, "VIOPL": VIOPL, "PENDING": PENDING, "TARGET": TARGET,
              "S0": S0, "S1": S1}

# treatments
INLINE, CALLOUT, REFUSED = "inline", "callout", "refused"

_RI = "Robin & Irvine 2000, sec. 4.3"
#: key (hvsim's mnemonic; 'mov cr', 'mov dr', 'mov from sreg', 'push sreg', 'jmp far',
#: 'call far' for the forms that share one) -> (treatment, why it cannot run as it is)
SENSITIVE: dict = {
    "cli": (INLINE, "CPL > IOPL: #GP(0) (SDM Vol. 2A, CLI); in-TC: virtual IF := 0"),
    "sti": (INLINE, "CPL > IOPL: #GP(0) (SDM Vol. 2B, STI); in-TC: virtual IF := 1"),
    "pushfd": (INLINE, "shows the real IF and IOPL at any CPL (SDM Vol. 2B, PUSHF; " + _RI + ")"),
    "popfd": (INLINE, "at CPL > 0 silently keeps IOPL, and IF when CPL > IOPL "
                      "(SDM Vol. 2B, POPF 'Operation'; " + _RI + ")"),
    "hlt": (CALLOUT, "privileged (SDM Vol. 3A, 5.9)"),
    "in": (CALLOUT, "CPL > IOPL and no I/O bitmap: #GP(0) (SDM Vol. 1, 19.5.1)"),
    "out": (CALLOUT, "CPL > IOPL and no I/O bitmap: #GP(0) (SDM Vol. 1, 19.5.1)"),
    "lidt": (CALLOUT, "privileged (SDM Vol. 3A, 5.9)"),
    "lgdt": (CALLOUT, "privileged (SDM Vol. 3A, 5.9)"),
    "lldt": (CALLOUT, "privileged (SDM Vol. 3A, 5.9)"),
    "ltr": (CALLOUT, "privileged (SDM Vol. 3A, 5.9)"),
    "lmsw": (CALLOUT, "privileged (SDM Vol. 3A, 5.9)"),
    "clts": (CALLOUT, "privileged (SDM Vol. 3A, 5.9)"),
    "mov cr": (CALLOUT, "privileged (SDM Vol. 3A, 5.9)"),
    "mov dr": (CALLOUT, "privileged (SDM Vol. 3A, 5.9)"),
    "invlpg": (CALLOUT, "privileged (SDM Vol. 3A, 5.9)"),
    "invd": (CALLOUT, "privileged (SDM Vol. 3A, 5.9)"),
    "wbinvd": (CALLOUT, "privileged (SDM Vol. 3A, 5.9)"),
    "rdmsr": (CALLOUT, "privileged (SDM Vol. 3A, 5.9)"),
    "wrmsr": (CALLOUT, "privileged (SDM Vol. 3A, 5.9)"),
    "sgdt": (CALLOUT, "unprivileged, stores the real GDTR (" + _RI + ")"),
    "sidt": (CALLOUT, "unprivileged, stores the real IDTR (" + _RI + ")"),
    "sldt": (CALLOUT, "unprivileged, stores the real LDTR (" + _RI + ")"),
    "str": (CALLOUT, "unprivileged, stores the real TR (" + _RI + ")"),
    "smsw": (CALLOUT, "unprivileged, stores the real CR0's low bits (" + _RI + ")"),
    "lar": (CALLOUT, "unprivileged, reads descriptor rights the VMM changed (" + _RI + ")"),
    "lsl": (CALLOUT, "unprivileged, reads limits the VMM truncated (" + _RI + ")"),
    "verr": (CALLOUT, "unprivileged, checks against the compressed ring (" + _RI + ")"),
    "verw": (CALLOUT, "unprivileged, checks against the compressed ring (" + _RI + ")"),
    "mov from sreg": (CALLOUT, "stores a selector whose RPL shows ring 1 (" + _RI + ")"),
    "push sreg": (CALLOUT, "pushes a selector whose RPL shows ring 1 (" + _RI + ")"),
    "iretd": (CALLOUT, "at CPL > 0 silently keeps IF/IOPL; a far transfer out of the TC "
                       "(SDM Vol. 2A, IRET; " + _RI + ")"),
    "retf": (CALLOUT, "far transfer: would leave the TC, checks RPL against the real CPL "
                      "(SDM Vol. 2B, RET; " + _RI + ")"),
    "ljmp": (CALLOUT, "far transfer: would leave the TC (SDM Vol. 2A, JMP)"),
    "lcall": (CALLOUT, "far transfer: would leave the TC (SDM Vol. 2A, CALL; " + _RI + ")"),
    "jmp far": (CALLOUT, "far transfer: would leave the TC (SDM Vol. 2A, JMP)"),
    "call far": (CALLOUT, "far transfer: would leave the TC (SDM Vol. 2A, CALL)"),
    "int": (CALLOUT, "goes through the guest's virtual IDT (SDM Vol. 2A, INT n)"),
    "int3": (CALLOUT, "goes through the guest's virtual IDT (SDM Vol. 2A, INT3)"),
    "into": (CALLOUT, "goes through the guest's virtual IDT (SDM Vol. 2A, INTO)"),
    "ud2": (CALLOUT, "#UD, reflected at the guest EIP"),
    "vmcall": (CALLOUT, "VMX instruction: #UD outside VMX operation (SDM Vol. 3C, 31)"),
    "vmlaunch": (CALLOUT, "VMX instruction (SDM Vol. 3C, 31)"),
    "vmresume": (CALLOUT, "VMX instruction (SDM Vol. 3C, 31)"),
    "vmxoff": (CALLOUT, "VMX instruction (SDM Vol. 3C, 31)"),
    "vmxon": (CALLOUT, "VMX instruction (SDM Vol. 3C, 31)"),
    "vmclear": (CALLOUT, "VMX instruction (SDM Vol. 3C, 31)"),
    "vmptrld": (CALLOUT, "VMX instruction (SDM Vol. 3C, 31)"),
    "vmptrst": (CALLOUT, "VMX instruction (SDM Vol. 3C, 31)"),
    "vmread": (CALLOUT, "VMX instruction (SDM Vol. 3C, 31)"),
    "vmwrite": (CALLOUT, "VMX instruction (SDM Vol. 3C, 31)"),
    "invept": (CALLOUT, "VMX instruction (SDM Vol. 3C, 31)"),
    "invvpid": (CALLOUT, "VMX instruction (SDM Vol. 3C, 31)"),
    "(bad)": (CALLOUT, "not an instruction of the subset: run as it is, it raises #UD"),
    "gs": (REFUSED, "uses %gs, which the monitor reserves for itself (Adams & Agesen 2006, "
                    "sec. 3.2)"),
    "cs data": (REFUSED, "reads memory through CS: hvsim's ring-1 code segment spans the "
                         "monitor's hole so that the TC can run there (only the data "
                         "segments are truncated), so a data access through CS could reach "
                         "the monitor"),
}

_PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0xF0, 0xF2, 0xF3})
# segment override prefixes (SDM Vol. 2A, 2.1.1, Group 2); hvsim's decoder, as the
# processor, uses the last one
_SEGMENT_PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65})
CS_PREFIX = 0x2E
# operand kinds of hvsim/asm/table.py that access memory whatever ModRM says: moffs
# (A0-A3) and the DS:ESI source of MOVS, the one a segment prefix overrides (ES:EDI
# cannot be overridden, SDM Vol. 2B, MOVS)
_MEMORY_KINDS = frozenset({"Ob", "Ow", "Od", "Xb", "Xw", "Xd"})
_MODRM_MEMORY_KINDS = frozenset({"Eb", "Ed", "Ew", "Ewx", "Ewd", "M", "Mb", "Mq", "Mdq", "Mp"})
# a memory operand that is only an address, never accessed
_ADDRESS_ONLY = frozenset({"lea", "invlpg"})


def split_prefixes(raw: bytes) -> tuple:
    """(prefix bytes, opcode bytes and the rest) of an instruction's bytes."""
    i = 0
    while i < len(raw) and raw[i] in _PREFIXES:
        i += 1
    return raw[:i], raw[i:]


def key_of(mnemonic: str, raw: bytes) -> str:
    """The :data:`SENSITIVE` key of an instruction (its mnemonic, or the shared name of
    its form), or its mnemonic when it is not sensitive."""
    pre, body = split_prefixes(raw)
    if GS_PREFIX in pre:
        return "gs"
    op = body[:1]
    if op == b"\x0f" and len(body) > 1:
        b2 = body[1]
        if b2 in (0x20, 0x22):
            return "mov cr"
        if b2 in (0x21, 0x23):
            return "mov dr"
        if b2 in (0xA8, 0xA9):          # PUSH GS, POP GS
            return "gs"
        if b2 == 0xA0:
            return "push sreg"
        return mnemonic
    if op in (b"\x8c", b"\x8e") and len(body) > 1 and (body[1] >> 3) & 7 == 5:
        return "gs"                     # MOV from / to GS
    if op == b"\x8c":
        return "mov from sreg"
    if op in (b"\x06", b"\x0e", b"\x16", b"\x1e"):
        return "push sreg"
    if op == b"\xff" and len(body) > 1:
        ext = (body[1] >> 3) & 7
        if ext == 3:
            return "call far"
        if ext == 5:
            return "jmp far"
    return mnemonic


def reads_through_cs(insn) -> bool:
    """True if decoded ``insn`` (hvsim.asm.disassembler.Instruction) accesses memory
    through CS: its last segment prefix is 2E and it has a memory operand that the
    prefix applies to (a ModRM memory operand, a moffs, MOVS's source). A 2E prefix on a
    Jcc (a branch hint) or on an instruction without one is ignored by the processor."""
    form = insn.form
    if form is None or form.mnemonic in _ADDRESS_ONLY:
        return False
    pre, body = split_prefixes(bytes(insn.bytes))
    segs = [b for b in pre if b in _SEGMENT_PREFIXES]
    if not segs or segs[-1] != CS_PREFIX:
        return False
    at = len(form.opcode)
    for kind in form.ops:
        if kind in _MEMORY_KINDS:
            return True
        if kind in _MODRM_MEMORY_KINDS and at < len(body) and body[at] >> 6 != 3:
            return True
    return False


def treatment(mnemonic: str, raw: bytes, insn=None) -> tuple:
    """(key, treatment) of a guest kernel instruction: the treatment is INLINE, CALLOUT or
    REFUSED for the sensitive ones (:data:`SENSITIVE`), None for the rest (copied or
    rewritten as control flow by the translator). A 16-bit PUSHF/POPF is a callout.
    With the decoded ``insn``, a data access through CS is refused ('cs data')."""
    key = key_of(mnemonic, raw)
    if key != "gs" and insn is not None and reads_through_cs(insn):
        key = "cs data"
    entry = SENSITIVE.get(key)
    if entry is None:
        return key, None
    if entry[0] == INLINE and split_prefixes(raw)[0]:
        return key, CALLOUT             # 66 9C / 66 9D (and other prefixes): emulate
    return key, entry[0]


# ---- encodings (SDM Vol. 2, the instructions' opcode tables) ------------------------------
def _d(x: int) -> bytes:
    return struct.pack("<I", x & MASK32)


def _gs_mov_to_slot_eax(slot):      # mov [gs:slot], eax      65 A3 moffs32
    return bytes([GS_PREFIX, 0xA3]) + _d(slot)


def _gs_mov_eax_slot(slot):         # mov eax, [gs:slot]      65 A1 moffs32
    return bytes([GS_PREFIX, 0xA1]) + _d(slot)


def _gs_mov_to_slot_ecx(slot):      # mov [gs:slot], ecx      65 89 /r (ModRM 0D: [disp32])
    return bytes([GS_PREFIX, 0x89, 0x0D]) + _d(slot)


def _gs_mov_ecx_slot(slot):         # mov ecx, [gs:slot]      65 8B /r
    return bytes([GS_PREFIX, 0x8B, 0x0D]) + _d(slot)


def _gs_mov_slot_imm(slot, imm):    # mov dword [gs:slot], imm32   65 C7 /0
    return bytes([GS_PREFIX, 0xC7, 0x05]) + _d(slot) + _d(imm)


def _gs_or_eax_slot(slot):          # or eax, [gs:slot]       65 0B /r
    return bytes([GS_PREFIX, 0x0B, 0x05]) + _d(slot)


def _gs_push_slot(slot):            # push dword [gs:slot]    65 FF /6
    return bytes([GS_PREFIX, 0xFF, 0x35]) + _d(slot)


def _gs_pop_slot(slot):             # pop dword [gs:slot]     65 8F /0
    return bytes([GS_PREFIX, 0x8F, 0x05]) + _d(slot)


_MOV_EAX_ESP = bytes([0x8B, 0x04, 0x24])       # mov eax, [esp]   8B /r, SIB base ESP
_PUSHFD, _POPFD = b"\x9c", b"\x9d"


def _and_eax(imm):                  # and eax, imm32          25 id
    return b"\x25" + _d(imm)


def callout() -> bytes:
    """``int CALLOUT_VECTOR`` (CD ib): the way out of the TC to the monitor."""
    return bytes([0xCD, CALLOUT_VECTOR])


def _jecxz(rel):                    # E3 cb
    return bytes([0xE3, rel & 0xFF])


def jmp_rel32(rel: int) -> bytes:
    return b"\xe9" + _d(rel)


def jcc_rel32(cc: int, rel: int) -> bytes:
    """Jcc rel32 (0F 80+cc cd) for condition code ``cc`` (0..15, SDM Vol. 2A, Jcc)."""
    return bytes([0x0F, 0x80 | cc]) + _d(rel)


def push_imm32(value: int) -> bytes:
    return b"\x68" + _d(value)


# ---- the sequences -------------------------------------------------------------------------
# Each is a list of (bytes, callout): one real instruction each; ``callout`` names the
# callout an INT CALLOUT_VECTOR of the sequence stands for (None for the others).
def _pending_exit(check_vif: bool, name: str) -> list:
    """Leave through callout ``name`` when a virtual interrupt is pending (and, with
    ``check_vif``, the virtual IF is set): JECXZ is the flag-free test. ECX is saved
    in S0 and restored on both paths (before the INT: the monitor resumes the guest at
    the next guest instruction)."""
    restore = _gs_mov_ecx_slot(S0)
    tail = [(restore, None), (callout(), name)]
    skip = sum(len(b) for b, _ in tail)
    seq = [(_gs_mov_to_slot_ecx(S0), None), (_gs_mov_ecx_slot(PENDING), None)]
    if check_vif:
        seq.append((_jecxz(len(_gs_mov_ecx_slot(VIF)) + 2 + skip), None))
        seq.append((_gs_mov_ecx_slot(VIF), None))
    seq.append((_jecxz(skip), None))
    return seq + tail + [(restore, None)]


def inline_sequence(key: str) -> list:
    """The in-TC replacement of CLI, STI, PUSHFD or POPFD (32-bit operand size)."""
    if key == "cli":
        return [(_gs_mov_slot_imm(VIF, 0), None)]
    if key == "sti":
        # pending: the monitor emulates this STI (shadow included); else VIF := IF
        seq = _pending_exit(False, "sti")
        return seq + [(_gs_mov_slot_imm(VIF, IF), None)]
    if key == "pushfd":
        # the real image (IF=1, IOPL=0), its IF replaced by the virtual IF and IOPL;
        # the real flags come back from the same image before the virtual one is pushed
        return [(_PUSHFD, None), (_gs_mov_to_slot_eax(S0), None), (_MOV_EAX_ESP, None),
                (_and_eax(~IF), None), (_gs_or_eax_slot(VIF), None),
                (_gs_or_eax_slot(VIOPL), None), (_gs_mov_to_slot_eax(S1), None),
                (_gs_mov_eax_slot(S0), None), (_POPFD, None), (_gs_push_slot(S1), None)]
    if key == "popfd":
        # at virtual CPL 0 POPF loads IF and IOPL: both into the VCPU page, then the
        # real POPFD loads every other flag from the same image (and ESP += 4)
        seq = [(_gs_mov_to_slot_eax(S0), None), (_MOV_EAX_ESP, None), (_and_eax(IF), None),
               (_gs_mov_to_slot_eax(VIF), None), (_MOV_EAX_ESP, None),
               (_and_eax(IOPL_MASK), None), (_gs_mov_to_slot_eax(VIOPL), None),
               (_gs_mov_eax_slot(S0), None), (_POPFD, None)]
        return seq + _pending_exit(True, "popf")
    raise ValueError(f"no in-TC sequence for {key!r}")


def ret_sequence(imm16: int | None) -> list:
    """RET [imm16]: the guest return address popped into TARGET (the pop is the only
    instruction that may fault), the extra bytes released with a flag-free LEA, then the
    lookup callout."""
    seq = [(_gs_pop_slot(TARGET), None)]
    if imm16:
        seq.append((bytes([0x8D, 0xA4, 0x24]) + _d(imm16), None))   # lea esp, [esp+imm32]
    return seq + [(callout(), "indirect")]


def indirect_sequence(prefixes: bytes, modrm_rest: bytes, return_eip: int | None) -> list:
    """JMP r/m32 (FF /4) or, with ``return_eip``, CALL r/m32 (FF /2): the target read by a
    MOV of the original operand (8B, ModRM.reg := EAX, the same addressing bytes and
    segment prefix) through EAX saved in S0, stored in TARGET; CALL then pushes the guest
    return address (the push may fault: nothing guest-visible was changed before it)."""
    mod_rm = bytes([modrm_rest[0] & 0xC7]) + modrm_rest[1:]
    seq = [(_gs_mov_to_slot_eax(S0), None), (prefixes + b"\x8b" + mod_rm, None),
           (_gs_mov_to_slot_eax(TARGET), None), (_gs_mov_eax_slot(S0), None)]
    if return_eip is not None:
        seq.append((push_imm32(return_eip), None))
    return seq + [(callout(), "indirect")]
