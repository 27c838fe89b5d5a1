"""The CPU's decoder (hvsim/cpu/decode.py) on VMPTRST, INVEPT and INVVPID.

VMPTRST is NP 0F C7 /7 m64; INVEPT is 66 0F 38 80 /r and INVVPID 66 0F 38 81 /r, r32 (the
type) in ModRM.reg and an m128 descriptor in r/m (SDM Vol. 2C, "VMPTRST", "INVEPT",
"INVVPID"). The decoder keys the three-byte opcode 0F 38 xx as 0x200 | xx and hands the
valid forms to the VMX handler family (OP_VMX). The forms these instructions do not have
-- a register operand where memory is required, 0F 38 80/81 without the mandatory 66h or
with F2/F3 as well, every other 0F 38 opcode -- are OP_UD, decided by the decoder so the
VMX handler never sees them.

Oracles: capstone for the length (and the text of the exit's instruction) of every valid
form; the SDM's encodings, taken apart by hand, for the ModRM fields. A bare machine is
outside VMX operation (CR4.VMXE = 0), where every VMX instruction is #UD too (SDM Vol. 2C,
each VMX instruction's "Operation"), so both kinds of form end run() in the same #UD at
ORG: what tells them apart is the decode-cache row.
"""
import numpy as np
import pytest

from hvsim import Machine
from hvsim.arch.layout import DC_ENTRIES, ESP, EBX, ZERO, SREG_DS, SREG_SS, SREG_FS
from hvsim.cpu import decode as D

capstone = pytest.importorskip("capstone")
_CS = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)

ORG = 0x1000
ROW = ORG & (DC_ENTRIES - 1)


def decoded(code: bytes):
    """Run ``code`` (then HLT) at ORG on a bare machine; returns (event, dc row fields)."""
    m = Machine()
    code = bytes(code) + b"\xf4"
    m.memory[ORG:ORG + len(code)] = np.frombuffer(code, np.uint8)
    m.cpu.eip = ORG
    ev = m.run(max_steps=10)
    assert m._dc[D.F_TAG, ROW] == ORG
    names = ("op", "len", "opc", "reg", "rm", "size", "base", "seg", "pfx")
    fields = (D.F_OP, D.F_LEN, D.F_OPC, D.F_REG, D.F_RM, D.F_SIZE, D.F_BASE, D.F_SEG, D.F_PFX)
    return ev, {n: int(m._dc[f, ROW]) for n, f in zip(names, fields)}


# (bytes, opcode key, ModRM.reg); every one a valid VMX instruction with a memory operand
VALID = [
    ("0fc738", 0x1C7, 7),                     # vmptrst qword ptr [eax]
    ("0fc77c2404", 0x1C7, 7),                 # vmptrst qword ptr [esp + 4]
    ("0fc73d00100000", 0x1C7, 7),             # vmptrst qword ptr [0x1000]
    ("640fc738", 0x1C7, 7),                   # vmptrst qword ptr fs:[eax]
    ("660f388003", 0x280, 0),                 # invept eax, xmmword ptr [ebx]
    ("660f38804c2410", 0x280, 1),             # invept ecx, xmmword ptr [esp + 0x10]
    ("660f38801500200000", 0x280, 2),         # invept edx, xmmword ptr [0x2000]
    ("64660f388003", 0x280, 0),               # invept eax, xmmword ptr fs:[ebx]
    ("66660f388003", 0x280, 0),               # a repeated 66h is still the one prefix
    ("660f388103", 0x281, 0),                 # invvpid eax, xmmword ptr [ebx]
    ("660f38817df8", 0x281, 7),               # invvpid edi, xmmword ptr [ebp - 8]
    # the VMX forms of 0F C7 /6 already in the subset stay as they were
    ("f30fc730", 0x1C7, 6), ("660fc730", 0x1C7, 6), ("0fc730", 0x1C7, 6),
]


@pytest.mark.parametrize("hexcode,opc,reg", VALID)
def test_valid_forms_decode_to_the_vmx_family_with_capstones_length(hexcode, opc, reg):
    code = bytes.fromhex(hexcode)
    ev, f = decoded(code)
    (ref,) = list(_CS.disasm(code + b"\xf4", ORG, count=1))
    assert (f["op"], f["opc"], f["reg"], f["rm"], f["size"]) == (D.OP_VMX, opc, reg, -1, 4)
    assert f["len"] == ref.size == len(code)
    # CR4.VMXE = 0: #UD at the instruction, which the exit carries decoded as capstone reads it
    assert (ev.kind, ev.vector, ev.eip) == ("exception", 6, ORG)
    assert ev.insn.length == ref.size and ev.insn.opcode == opc
    assert str(ev.insn) == f"{ref.mnemonic} {ref.op_str}"


def test_invept_fields_name_the_type_register_and_the_descriptor_address():
    """66 0F 38 80 4C 24 10: ModRM 01 001 100 = reg ECX (the type), SIB 24 = [ESP], disp8
    0x10; an ESP base defaults to SS (SDM Vol. 1, 3.7.5)."""
    _, f = decoded(bytes.fromhex("660f38804c2410"))
    assert (f["reg"], f["base"], f["seg"]) == (1, ESP, SREG_SS)
    assert f["pfx"] == D.PFX_OPSIZE
    _, f = decoded(bytes.fromhex("64660f388003"))
    assert (f["reg"], f["base"], f["seg"]) == (0, EBX, SREG_FS)
    _, f = decoded(bytes.fromhex("660f38801500200000"))
    assert (f["base"], f["seg"]) == (ZERO, SREG_DS)


@pytest.mark.parametrize("hexcode,opc,why", [
    ("0f388003", 0x280, "0F 38 80 without its mandatory 66h"),
    ("0f388103", 0x281, "0F 38 81 without its mandatory 66h"),
    ("f3660f388003", 0x280, "F3 as well as 66h"),
    ("66f30f388003", 0x280, "66h as well as F3"),
    ("f2660f388003", 0x280, "F2 as well as 66h"),
    ("660f3880c3", 0x280, "INVEPT with a register descriptor (mod = 11)"),
    ("660f3881c3", 0x281, "INVVPID with a register descriptor (mod = 11)"),
    ("0fc7f8", 0x1C7, "0F C7 /7 mod = 11: RDSEED, not VMPTRST"),
    ("f30fc7f8", 0x1C7, "F3 0F C7 /7 mod = 11: RDPID"),
    ("0fc7f0", 0x1C7, "0F C7 /6 mod = 11: RDRAND, not VMPTRLD"),
    ("660fc738", 0x1C7, "66h on 0F C7 /7 (66h is VMCLEAR's, /6)"),
    ("0fc708", 0x1C7, "0F C7 /1: CMPXCHG8B, not VMX"),
    ("660f388203", 0x282, "66 0F 38 82 INVPCID: another 0F 38 opcode"),
    ("0f3800c1", 0x200, "0F 38 00 PSHUFB"),
    ("660f38f003", 0x2F0, "66 0F 38 F0 MOVBE"),
])
def test_forms_outside_the_instructions_decode_to_ud(hexcode, opc, why):
    ev, f = decoded(bytes.fromhex(hexcode))
    assert (f["op"], f["opc"]) == (D.OP_UD, opc), why
    assert (ev.kind, ev.vector, ev.eip) == ("exception", 6, ORG), why


def test_every_other_0f38_opcode_is_ud_in_the_table():
    """Only 0F 38 80 and 81 have a row; the rest of the three-byte map is OP_UD."""
    known = {o for o in range(0x200, 0x300) if D.OPC_OP[o] != D.OP_UD}
    assert known == {0x280, 0x281}
    assert all(D.OPC_OSZ[o] == D.OSZ_REQUIRED for o in known)
    assert D.OPC_OP[0x138] == D.OP_UD           # 0F 38 itself is never the opcode
