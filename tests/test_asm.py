"""Tests for hvsim.asm: the assembler and disassembler against capstone 5 (the oracle
for text), NASM-verified byte strings written out by hand (the oracle for encodings),
and NASM itself when it is installed."""
import random
import shutil
import subprocess

import numpy as np
import pytest
from capstone import CS_ARCH_X86, CS_MODE_32, Cs

from hvsim.asm import AsmError, Instruction, Program, assemble, disassemble
from hvsim.asm import table as T
from hvsim.asm.disassembler import disassemble_one

CS = Cs(CS_ARCH_X86, CS_MODE_32)
ORG = 0x1000

R32 = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"]
R16 = ["ax", "cx", "dx", "bx", "sp", "bp", "si", "di"]
R8 = ["al", "cl", "dl", "bl", "ah", "ch", "dh", "bh"]
# every ModRM/SIB shape: no base, base only (esp/ebp special), disp8/disp32, SIB, no-base SIB
MEMS = ["[eax]", "[ebp]", "[esp]", "[ebx+0x10]", "[esi-0x80]", "[edi+0x7f]", "[ecx+0x80]",
        "[edx-0x81]", "[eax+0x12345678]", "[0x2000]", "[0xfffffff0]", "[ecx*4+0x10]",
        "[ecx*8-0x10]", "[eax+ebx*8-4]", "[esp+ecx*2+0x7f]", "[ebp+edx]", "[edx*2]",
        "[esp+0x100]", "[ebp+esi*4+0x1000]", "[edi*1]", "[0x10+ebx+ecx*4]"]
IMM32 = ["0", "1", "9", "0xa", "0x7f", "0x80", "-128", "-129", "0xff", "0xffff", "0x12345678",
         "0x7fffffff", "0x80000000", "0xffffffff", "-1"]
IMM8 = ["0", "9", "0xa", "0x7f", "0x80", "0xff", "-1", "-128"]
IMM16 = ["0", "1", "9", "0x7f", "0x80", "-128", "-129", "0xff", "0x7fff", "0x8000", "0xff80",
         "0xffff", "-1", "-32768"]
ALU = ["add", "or", "adc", "sbb", "and", "sub", "xor", "cmp"]
SHIFTS = ["rol", "ror", "rcl", "rcr", "shl", "shr", "sar"]
CCS = [c[0] for c in T.CONDITIONS]


def _cases():
    c = []
    for r in R32:
        c += [f"mov {r}, {R32[(R32.index(r) + 3) % 8]}", f"mov {r}, 0x12345678", f"push {r}",
              f"pop {r}", f"inc {r}", f"dec {r}", f"xchg eax, {r}", f"not {r}", f"neg {r}",
              f"mul {r}", f"imul {r}", f"div {r}", f"idiv {r}", f"jmp {r}", f"call {r}"]
    for r in R8:
        c += [f"mov {r}, 0x7f", f"mov {r}, {R8[(R8.index(r) + 5) % 8]}", f"inc {r}",
              f"sete {r}", f"neg {r}"]
    for m in MEMS:
        c += [f"mov eax, {m}", f"mov {m}, ecx", f"mov ebx, {m}", f"mov {m}, esi",
              f"mov byte {m}, 0xff", f"mov dword {m}, 0x80000000", f"mov dl, {m}",
              f"mov {m}, bh", f"lea edx, {m}", f"push dword {m}", f"pop dword {m}"]
    for m in ("[0x1234]", "[fs:0x10]", "[es:0xfffffffc]"):
        c += [f"mov eax, {m}", f"mov al, {m}", f"mov {m}, eax", f"mov {m}, al"]
    for op in ALU:
        c += [f"{op} eax, ecx", f"{op} esi, [ebp+8]", f"{op} [esp+4], edi", f"{op} al, cl",
              f"{op} dh, [eax]", f"{op} byte [ebx], ah", f"{op} al, 0x80", f"{op} bl, 1",
              f"{op} byte [ecx+ecx*2], 0xfe", f"{op} dword [eax], 5",
              f"{op} dword [0x3000], 0x100"]
        c += [f"{op} eax, {v}" for v in IMM32] + [f"{op} ecx, {v}" for v in IMM32]
    c += ["test eax, ecx", "test [eax], ebx", "test ecx, [eax+4]", "test al, dl",
          "test byte [esi], cl", "test al, 0x80", "test eax, 0x10000", "test ecx, 1",
          "test bl, 0xff", "test dword [eax], 0xffffffff", "test byte [edi-1], 3"]
    c += ["inc byte [eax]", "dec byte [ebx+1]", "inc dword [esp]", "dec dword [0x4000]",
          "not byte [eax]", "neg dword [eax]", "mul byte [ecx]", "imul dword [ecx]",
          "div byte [edx]", "idiv dword [ebp-4]", "mul cl", "imul bl", "div dh", "idiv ah"]
    c += ["imul eax, ecx", "imul esi, [ebx+ecx*4]", "imul eax, ecx, 5", "imul edx, [eax], -1",
          "imul eax, ecx, 0x80", "imul edi, [0x100], 0x12345678", "imul ecx, 7"]
    c += ["cdq", "pushfd", "popfd", "clc", "stc", "cmc", "cld", "std", "cli", "sti", "nop",
          "hlt", "int3", "iretd", "ud2", "cpuid", "rdtsc", "rdmsr", "wrmsr", "clts", "ret",
          "retf", "ret 4", "ret 0xffff", "retf 8", "int 0x80", "int 3", "int 0xff",
          "vmxoff", "vmlaunch", "vmresume", "vmcall"]
    for s in SHIFTS:
        c += [f"{s} eax, 1", f"{s} al, 1", f"{s} ecx, 5", f"{s} dl, 7", f"{s} esi, cl",
              f"{s} bh, cl", f"{s} dword [eax], 1", f"{s} byte [ebx+4], 3", f"{s} dword [ecx], cl",
              f"{s} byte [0x10], cl", f"{s} edi, 0xff"]
    for cc in CCS:
        c += [f"j{cc} $+0x10", f"j{cc} $-0x7e", f"j{cc} $+0x1000", f"j{cc} 0x10", f"set{cc} bl",
              f"set{cc} [eax+1]", f"cmov{cc} eax, edx", f"cmov{cc} ecx, [esp+8]"]
    c += ["jmp $", "jmp $+0x81", "jmp $-0x1000", "jmp 0", "call $+5", "call 0x8000",
          "jmp [eax]", "jmp dword [0x5000]", "call [ebx+ecx*4]", "loop $", "loop $-0x7e",
          "jecxz $+0x10", "jmp far [eax]", "call far [ebx+4]", "jmp 0x08:0x1000",
          "call 0x10:0x12345678", "jmp 0xffff:0"]
    c += ["push 0", "push 0x7f", "push -128", "push 0x80", "push 0xffffffff", "push -129",
          "push es", "push cs", "push ss", "push ds", "push fs", "push gs", "pop es",
          "pop ss", "pop ds", "pop fs", "pop gs"]
    c += ["movsb", "movsd", "stosb", "stosd", "rep movsb", "rep movsd", "rep stosb",
          "rep stosd", "fs movsb", "rep gs movsd"]
    c += ["in al, 0x60", "in eax, 0xff", "in al, dx", "in eax, dx", "out 0x80, al",
          "out 0, eax", "out dx, al", "out dx, eax"]
    c += ["mov eax, cr0", "mov ecx, cr2", "mov edi, cr3", "mov ebx, cr4", "mov cr0, eax",
          "mov cr3, esi", "mov cr4, edx", "mov cr2, ebp"]
    c += ["mov eax, dr7", "mov dr7, eax", "mov ecx, dr0", "mov dr3, esi", "mov edx, dr6",
          "mov dr6, ebp", "mov ebx, dr4", "mov dr5, edi", "into", "invd", "wbinvd"]
    c += ["movzx eax, cl", "movzx edx, byte [esi]", "movzx ecx, ax", "movzx eax, word [ebx+2]",
          "movsx eax, bh", "movsx edi, byte [0x10]", "movsx eax, dx", "movsx ebx, word [eax]"]
    c += ["lgdt [eax]", "lidt [0x9000]", "sgdt [esp]", "sidt [ebp-6]", "smsw eax",
          "smsw [eax]", "lmsw ax", "lmsw [ecx]", "invlpg [eax]", "invlpg [0x400000]",
          "lldt ax", "lldt [eax]", "sldt eax", "sldt [edi]", "ltr cx", "ltr [0x10]",
          "str edx", "str [eax]", "verr ax", "verr [eax]", "verw si", "verw [ebx]",
          "lar eax, ecx", "lar edx, [eax]", "lsl eax, ebx", "lsl ecx, [esi+4]"]
    c += ["mov eax, ds", "mov [eax], es", "mov ecx, fs", "mov [0x100], gs", "mov esi, ss",
          "mov edx, cs", "mov ds, eax", "mov es, [eax]", "mov ss, ecx", "mov fs, [ebx+2]",
          "mov gs, edx"]
    c += ["vmxon [eax]", "vmclear [ebx+8]", "vmptrld [0x1000]", "vmread eax, ecx",
          "vmread [eax], edx", "vmwrite ecx, eax", "vmwrite esi, [ebp-8]"]
    c += ["vmptrst [eax]", "vmptrst qword [esp+4]", "vmptrst [0x2000]", "vmptrst [fs:ebx]",
          "invept eax, [ebx]", "invept ecx, oword [esp+0x10]", "invept edi, [0x3000]",
          "invept edx, [gs:eax+ecx*8-0x80]", "invvpid eax, [ebx]", "invvpid esi, [ebp-8]"]
    c += ["xchg ecx, edx", "xchg [eax], ecx", "xchg al, cl", "xchg [ebx], dh"]
    c += ["mov eax, [fs:eax]", "mov [gs:ebx+4], ecx", "add byte [ss:esp], 1",
          "mov eax, dword ptr es:[ecx]", "fs mov eax, [eax]", "mov ecx, [cs:0x1234]",
          "mov eax, [ds:ebx]", "jmp [fs:eax]", "lgdt [cs:eax]"]
    c += _cases16()
    return c


def _cases16():
    """The 16-bit operand-size rows (66h, SDM Vol. 2A, 2.1.1 and 3.1.1.1)."""
    c = []
    for r in R16:
        c += [f"mov {r}, {R16[(R16.index(r) + 3) % 8]}", f"mov {r}, 0x1234", f"push {r}",
              f"pop {r}", f"inc {r}", f"dec {r}", f"xchg ax, {r}", f"not {r}", f"neg {r}",
              f"mul {r}", f"imul {r}", f"div {r}", f"idiv {r}"]
    for m in MEMS[::3]:
        c += [f"mov ax, {m}", f"mov {m}, cx", f"mov word {m}, 0x8000", f"lea dx, {m}",
              f"push word {m}", f"pop word {m}", f"inc word {m}", f"dec word {m}"]
    for m in ("[0x1234]", "[fs:0x10]", "[es:0xfffffffc]"):
        c += [f"mov ax, {m}", f"mov {m}, ax"]
    for op in ALU:
        c += [f"{op} ax, cx", f"{op} si, [ebp+8]", f"{op} [esp+4], di", f"{op} word [eax], 5",
              f"{op} word [0x3000], 0x100"]
        c += [f"{op} ax, {v}" for v in IMM16] + [f"{op} cx, {v}" for v in IMM16]
    c += ["test ax, cx", "test [eax], bx", "test cx, [eax+4]", "test ax, 0x8000",
          "test cx, 1", "test word [eax], 0xffff"]
    c += ["not word [eax]", "neg word [ebx]", "mul word [ecx]", "imul word [ecx]",
          "div word [edx]", "idiv word [ebp-4]"]
    c += ["imul ax, cx", "imul si, [ebx+ecx*4]", "imul ax, cx, 5", "imul dx, [eax], -1",
          "imul ax, cx, 0x80", "imul di, [0x100], 0x1234", "imul cx, 7", "cwd"]
    for s in SHIFTS:
        c += [f"{s} ax, 1", f"{s} cx, 5", f"{s} si, cl", f"{s} word [eax], 1",
              f"{s} word [ecx], cl", f"{s} di, 0xff"]
    for cc in CCS:
        c += [f"cmov{cc} ax, dx", f"cmov{cc} cx, [esp+8]"]
    c += [f"push word {v}" for v in ("0", "0x7f", "-128", "0x80", "0xffff", "-129", "0x1234")]
    c += ["movsw", "stosw", "rep movsw", "rep stosw", "fs movsw", "in ax, 0x60", "in ax, dx",
          "out 0x80, ax", "out dx, ax", "movzx ax, cl", "movzx dx, byte [esi]", "movzx cx, ax",
          "movzx ax, word [ebx+2]", "movsx ax, bh", "movsx di, byte [0x10]", "movsx ax, dx",
          "movsx bx, word [eax]", "xchg cx, dx", "xchg [eax], cx", "xchg ax, ax"]
    return c


CASES = _cases()
# capstone text that re-assembles to other (equivalent) bytes: xchg reg,reg commutes and
# NASM/hvsim put the first operand in ModRM.reg, capstone prints ModRM.rm first.
CANON_DIFF = {"xchg ecx, edx", "xchg al, cl", "xchg cx, dx"}
# capstone text that names another instruction: 66 90 (xchg ax, ax) is printed "nop"; and
# PUSH imm16 is printed without a size, which re-assembles as the dword push unless the
# source says "word" (the 'wordop' rows).
OTHER_TEXT = {"xchg ax, ax"}


def _cs(code: bytes, addr: int = ORG):
    return next(CS.disasm(code, addr, 1), None)


@pytest.mark.parametrize("line", CASES)
def test_form_matches_capstone(line):
    code = assemble(line, origin=ORG).code
    mine = disassemble_one(code, 0, ORG)
    ref = _cs(code)
    assert ref is not None, code.hex()
    assert ref.size == len(code) == mine.size, (code.hex(), ref.size)
    assert (mine.mnemonic, mine.op_str) == (ref.mnemonic, ref.op_str), code.hex()
    if line in OTHER_TEXT:
        return
    if "wordop" in mine.form.flags:
        assert assemble(f"{ref.mnemonic} word {ref.op_str}", origin=ORG).code == code
        return
    again = assemble(f"{ref.mnemonic} {ref.op_str}", origin=ORG).code
    if line in CANON_DIFF:
        a, b = ref.op_str.split(", ")
        assert again != code and disassemble_one(again, 0, ORG).op_str == f"{b}, {a}"
    else:
        assert again == code, f"{ref.mnemonic} {ref.op_str}"


def test_every_table_form_is_exercised():
    seen = set()
    for line in CASES:
        insn = disassemble_one(assemble(line, origin=ORG).code, 0, ORG)
        seen.add(insn.form)
    missing = [str(f) for f in T.FORMS if "asm" not in f.flags and f not in seen]
    assert not missing, missing


# Bytes checked against NASM 2.16 (nasm -f bin, bits 32) by hand.
NASM_BYTES = {
    "mov eax, ecx": "89c8", "add eax, 0xffffffff": "83c0ff", "add eax, 128": "0580000000",
    "add eax, -128": "83c080", "add al, 1": "0401", "push 0x80": "6880000000",
    "push -128": "6a80", "imul eax, 5": "6bc005", "imul eax, ecx, 200": "69c1c8000000",
    "xchg eax, eax": "90", "xchg eax, ecx": "91", "xchg ecx, edx": "87ca",
    "test ecx, [eax]": "8508", "shl eax, 1": "d1e0", "mov [0x1234], eax": "a334120000",
    "mov eax, [ebp]": "8b4500", "mov eax, [esp]": "8b0424", "lea eax, [eax*2]": "8d0400",
    "lea eax, [ecx*4]": "8d048d00000000", "lea eax, [ebp+esp]": "8d042c",
    "mov eax, [ebp*2]": "8b442d00", "mov eax, [0x10+ecx*4+ebx]": "8b448b10",
    "mov eax, [fs:eax]": "648b00", "fs mov eax, [eax]": "648b00",
    "mov eax, [es:0x1234]": "26a134120000", "jmp far [eax]": "ff28",
    "jmp 0x08:0x1000": "ea001000000800", "call 0x08:0x1000": "9a001000000800",
    "retf 8": "ca0800", "rep movsd": "f3a5", "vmxon [eax]": "f30fc730",
    "vmclear [eax]": "660fc730", "vmptrld [eax]": "0fc730", "invlpg [eax]": "0f0138",
    "mov ds, ax": "8ed8", "mov eax, ds": "8cd8", "lar eax, cx": "0f02c1",
    "movzx eax, word [eax]": "0fb700", "sete [eax]": "0f9400", "int 3": "cd03",
    "jecxz $": "e3fe", "loop $": "e2fe", "mov byte [eax], 10": "c6000a",
    "mov eax, cr0": "0f20c0", "mov cr3, eax": "0f22d8", "vmread [eax], ecx": "0f7808",
    "mov eax, dr7": "0f21f8", "mov dr7, eax": "0f23f8", "into": "ce", "invd": "0f08",
    "wbinvd": "0f09",
    # hvsim's deliberate difference: no 66h prefix (NASM emits 66 8C D8 / 66 0F 00 C0)
    "mov ax, ds": "8cd8", "sldt ax": "0f00c0",
}


@pytest.mark.parametrize("line,hexbytes", sorted(NASM_BYTES.items()))
def test_nasm_encodings(line, hexbytes):
    assert assemble(line, origin=0).code.hex() == hexbytes


# The 16-bit operand size, written out from the SDM: 66h (Vol. 2A, 2.1.1 group 3) before
# the opcode of the "v"-sized form, its "z" immediate shrunk to 16 bits (Vol. 2A, 3.1.1.1;
# opcode map Vol. 2D, A.2.2), moffs and ModRM addressing unchanged (address size 32).
SDM_BYTES_16 = {
    "mov ax, 5": "66b80500",                      # 66 B8+rw iw
    "mov dx, 0x3f8": "66baf803",
    "in al, dx": "ec", "in ax, dx": "66ed",       # EC; 66 ED
    "out dx, al": "ee", "out dx, ax": "66ef",
    "in ax, 0x60": "66e560", "out 0x80, ax": "66e780",
    "add ax, 0x1234": "66053412",                 # 66 05 iw
    "add cx, 0x1234": "6681c13412",               # 66 81 /0 iw: 5 bytes, not 7
    "add cx, -1": "6683c1ff",                     # 66 83 /0 ib, sign-extended to 16 bits
    "and ax, 0xff80": "6683e080",
    "mov word [eax], 0xffff": "66c700ffff",       # 66 C7 /0 iw
    "mov [0x1000], ax": "66a300100000",           # 66 A3 moffs32
    "push ax": "6650", "pop si": "665e", "push word 0x1234": "66683412",
    "push word -1": "666aff", "push word [eax]": "66ff30", "pop word [ebx]": "668f03",
    "inc ax": "6640", "dec di": "664f", "inc word [eax]": "66ff00",
    "imul ax, cx, 0x1234": "6669c13412", "imul ax, cx": "660fafc1",
    "movzx ax, cl": "660fb6c1", "movsx dx, byte [eax]": "660fbe10",
    "cmove ax, cx": "660f44c1", "cwd": "6699", "xchg ax, cx": "6691",
    "lea ax, [ebx+4]": "668d4304", "test word [eax], 0x8000": "66f7000080",
    "shl ax, 1": "66d1e0", "sar word [eax], cl": "66d338", "rol bx, 3": "66c1c303",
    "stosw": "66ab", "rep movsw": "f366a5", "idiv word [ecx]": "66f739",
    "push dword [eax]": "ff30", "push [eax]": "ff30",   # unsized stays the dword push
}


@pytest.mark.parametrize("line,hexbytes", sorted(SDM_BYTES_16.items()))
def test_16_bit_operand_encodings(line, hexbytes):
    assert assemble(line, origin=0).code.hex() == hexbytes


# VMPTRST = NP 0F C7 /7 m64; INVEPT = 66 0F 38 80 /r and INVVPID = 66 0F 38 81 /r, r32 (the
# type) in ModRM.reg and the m128 descriptor in r/m (SDM Vol. 2C, "VMPTRST", "INVEPT",
# "INVVPID"), written out by hand: 66h, then the three-byte opcode, then ModRM/SIB/disp.
SDM_BYTES_VMX = {
    "vmptrst [eax]": "0fc738",                          # ModRM 00 111 000
    "vmptrst qword [ebx+8]": "0fc77b08",                # 01 111 011, disp8
    "vmptrst [0x1000]": "0fc73d00100000",               # 00 111 101, disp32
    "vmptrst [esp]": "0fc73c24",                        # SIB 00 100 100
    "invept eax, [ebx]": "660f388003",                  # 00 000 011
    "invept ecx, oword [esp+0x10]": "660f38804c2410",   # 01 001 100, SIB 24, disp8
    "invept edx, xmmword ptr [0x2000]": "660f38801500200000",
    "invept eax, [fs:ebx]": "64660f388003",             # segment prefix, then 66h
    "invvpid eax, [ebx]": "660f388103",
    "invvpid edi, [ebp-8]": "660f38817df8",             # 01 111 101, disp8 -8
}


@pytest.mark.parametrize("line,hexbytes", sorted(SDM_BYTES_VMX.items()))
def test_vmptrst_invept_invvpid_encodings(line, hexbytes):
    code = assemble(line, origin=0).code
    assert code.hex() == hexbytes
    mine = disassemble_one(code, 0, 0)
    ref = _cs(code, 0)
    assert (mine.size, mine.mnemonic, mine.op_str) == (ref.size, ref.mnemonic, ref.op_str)


@pytest.mark.parametrize("hexbytes,why", [
    ("0fc7f8", "0F C7 /7 mod=11: RDSEED, not VMPTRST"),
    ("f30fc7f8", "F3 0F C7 /7 mod=11: RDPID"),
    ("660fc738", "66 0F C7 /7: 66h is VMCLEAR's (/6) only"),
    ("0f388003", "0F 38 80 without its mandatory 66h"),
    ("0f388103", "0F 38 81 without its mandatory 66h"),
    ("660f3880c3", "INVEPT with a register descriptor"),
    ("660f3881c3", "INVVPID with a register descriptor"),
    ("660f388203", "66 0F 38 82 (INVPCID): another 0F 38 opcode, outside the subset"),
    ("0f3800c1", "0F 38 00 (PSHUFB): outside the subset"),
    ("f3660f388003", "F3 as well as 66h on INVEPT"),
])
def test_vmx_forms_outside_the_table_are_bad(hexbytes, why):
    insn = disassemble_one(bytes.fromhex(hexbytes), 0, 0)
    assert insn.bad and insn.size == 1, why


@pytest.mark.skipif(shutil.which("nasm") is None, reason="nasm not installed")
def test_same_bytes_as_nasm(tmp_path):
    lines = [ln for ln in CASES if "ptr" not in ln and ln not in ("mov edx, cs",)]
    src = tmp_path / "t.asm"
    src.write_text("bits 32\norg 0x1000\n" + "\n".join(lines) + "\n")
    out = tmp_path / "t.bin"
    subprocess.run(["nasm", "-f", "bin", str(src), "-o", str(out)], check=True,
                   capture_output=True)
    assert assemble("\n".join(lines), origin=ORG).code == out.read_bytes()


# --- random bytes: capstone and hvsim must agree on every subset instruction ----------

def _capstone_in_subset(insn) -> bool:
    """Is capstone's decode one of the table's forms (same opcode, /digit, prefixes)?"""
    mn = insn.mnemonic[4:] if insn.mnemonic.startswith("rep ") else insn.mnemonic
    if mn not in T.MNEMONICS:
        return False
    b, k, pf = bytes(insn.bytes), 0, set()
    while b[k] in (0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0xF3, 0x66, 0xF2, 0xF0, 0x67):
        pf.add(b[k])
        k += 1
    if pf & {0xF2, 0xF0, 0x67}:
        return False
    if 0xF3 in pf and mn not in ("movsb", "movsd", "movsw", "stosb", "stosd", "stosw", "vmxon"):
        return False
    if any(f"cr{n}" in insn.op_str for n in (1, 5, 6, 7)):
        return False
    opcode = b[k:k + 2] if b[k] == 0x0F else b[k:k + 1]
    if opcode == b"\x0f\x38":                 # three-byte map (INVEPT, INVVPID)
        opcode = b[k:k + 3]
    forms = T.DECODE_INDEX.get(opcode)
    if not forms:
        return False
    if 0x66 in pf:                  # only the 16-bit rows (and VMCLEAR, INVEPT, INVVPID) take 66h
        forms = [f for f in forms if f.prefix == 0x66]
    if forms and forms[0].has_modrm:
        reg = (b[k + len(opcode)] >> 3) & 7
        return any(f.ext is None or f.ext == reg for f in forms)
    return bool(forms)


def test_random_bytes_agree_with_capstone():
    rng = random.Random(20240611)
    keys = sorted(T.DECODE_INDEX)
    prefixes = [0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0xF3, 0x66, 0xF2, 0xF0, 0x67]
    compared = 0
    for _ in range(12000):
        code = bytearray()
        while rng.random() < 0.15:
            code.append(rng.choice(prefixes))
        code += rng.choice(keys) if rng.random() < 0.9 else bytes([rng.randrange(256)])
        code += bytes(rng.randrange(256) for _ in range(12))
        code = bytes(code)
        addr = rng.choice([0, ORG, 0xFFFFFFF0, rng.randrange(1 << 32)])
        mine = disassemble_one(code, 0, addr)
        ref = _cs(code, addr)
        if not mine.bad:
            compared += 1
            assert ref is not None, code.hex()
            assert (mine.size, mine.mnemonic, mine.op_str) == \
                (ref.size, ref.mnemonic, ref.op_str), code.hex()
            assert mine.bytes == code[:mine.size]
        else:
            assert mine.size == 1 and mine.mnemonic == "(bad)" and mine.op_str == ""
            if ref is not None:
                assert not _capstone_in_subset(ref), (code.hex(), ref.mnemonic, ref.op_str)
    assert compared > 9000


def test_bad_bytes_and_stream_decoding():
    code = bytes.fromhex("0fc7f0" "90" "66a4" "f390" "b801000000" "8b")
    insns = disassemble(np.frombuffer(code, dtype=np.uint8), origin=0x2000)
    text = [(i.address, str(i)) for i in insns]
    assert text == [(0x2000, "(bad)"), (0x2001, "(bad)"), (0x2002, "(bad)"), (0x2003, "nop"),
                    (0x2004, "(bad)"), (0x2005, "movsb byte ptr es:[edi], byte ptr [esi]"),
                    (0x2006, "(bad)"), (0x2007, "nop"), (0x2008, "mov eax, 1"),
                    (0x200d, "(bad)")]
    # 0F C7 F0 is RDRAND (outside): bad, then C7 F0 is not C7 /0: bad, then F0 (LOCK) ...
    assert insns[0].bytes == b"\x0f" and insns[-1].bytes == b"\x8b"
    assert len(disassemble(code, 0, count=3)) == 3
    assert disassemble(b"") == []
    only = disassemble_one(code, 8, 0x2008)
    assert isinstance(only, Instruction) and only.size == 5 and only.bytes == code[8:13]


# --- the assembler language ----------------------------------------------------------

def test_labels_locals_equ_times_org_hand_computed():
    prog = assemble("""
        org 0x7c00
    start:
        jmp short .skip      ; EB 02
        db 0x90, 0x90
    .skip:
        mov ecx, COUNT       ; B9 05000000
    .loop:
        dec ecx              ; 49
        jnz .loop            ; 75 FD
        call func            ; E8 01000000
        hlt                  ; F4
    func: ret                ; C3
    COUNT equ 5
    data: dd start, data - start
    msg: db 'Hi', 0
        times 4 - ($ - msg) db 0xAA
    """, origin=0)
    assert prog.code.hex() == ("eb029090b905000000" "4975fd" "e801000000" "f4" "c3"
                               "007c0000" "13000000" "486900" "aa")
    assert prog.origin == 0x7C00 and prog.entry == 0x7C00
    assert prog.labels["start.skip"] == 0x7C04 and prog.labels["start.loop"] == 0x7C09
    assert prog.labels["func"] == 0x7C12 and prog.labels["COUNT"] == 5
    assert isinstance(prog, Program)
    # listing: (address, bytes, line, text)
    by_line = {ln: (a, b) for a, b, ln, _ in prog.listing}
    assert by_line[11] == (0x7C0C, bytes.fromhex("e801000000"))


def test_short_and_near_jump_choice_at_the_rel8_edge():
    fwd = lambda n: assemble(f"jmp fwd\ntimes {n} nop\nfwd:", origin=0x1000).code
    assert fwd(127)[:2] == b"\xeb\x7f"
    assert fwd(128)[:5] == bytes.fromhex("e980000000")
    back = lambda n: assemble(f"back: times {n} nop\njmp back", origin=0x1000).code
    assert back(126)[-2:] == b"\xeb\x80"
    assert back(127)[-5:] == (-(127 + 5) & 0xFFFFFFFF).to_bytes(4, "little").rjust(5, b"\xe9")
    # a conditional jump's long form is 0F 8x rel32
    code = assemble("je far_\ntimes 200 nop\nfar_:").code
    assert code[:6] == bytes.fromhex("0f84c8000000")
    # forcing sizes
    assert assemble("jmp near x\nx:").code == bytes.fromhex("e900000000")
    assert assemble("x: jmp short x").code == b"\xeb\xfe"


def test_forward_reference_chain_settles():
    # each jump's size depends on the next one's: the passes must reach a fixed point
    src = "\n".join(f"j{i}: jmp j{i + 1}\ntimes 60 nop" for i in range(6)) + "\nj6: jmp j0"
    prog = assemble(src, origin=0)
    jumps = [i for i in disassemble(prog.code, 0) if i.mnemonic == "jmp"]
    assert [i.size for i in jumps] == [2] * 6 + [5]
    assert prog.labels["j6"] == 6 * 62
    assert prog.code[-5:] == b"\xe9" + (-(6 * 62 + 5) & 0xFFFFFFFF).to_bytes(4, "little")


def test_expressions_numbers_and_data():
    prog = assemble("""
    base equ 0x100
        mov eax, (1 << 4) | 0b101 + 1Fh % 7
        mov ebx, base * 2 - 1
        mov ecx, ~0
        mov edx, 'AB'
        mov esi, 17o + 101b + 10d
        mov edi, -(3 - 10) / 2
        mov eax, [ebx + base*4 - 4]
        dw 'abc', 0x1234
        dd $ - $$, -1
        db "x", 'y'+1
    """, origin=0x1000)
    v = lambda k: int.from_bytes(prog.code[5 * k + 1:5 * k + 5], "little")
    assert v(0) == (1 << 4) | (0b101 + 0x1F % 7)
    assert v(1) == 0x1FF and v(2) == 0xFFFFFFFF and v(3) == 0x4241
    assert v(4) == 15 + 5 + 10 and v(5) == 3
    assert prog.code[30:36] == bytes.fromhex("8b83fc030000")
    assert prog.code[36:42] == b"abc\x00\x34\x12"
    assert prog.code[42:50] == (42).to_bytes(4, "little") + b"\xff" * 4
    assert prog.code[50:] == b"xz"


def test_case_insensitive_capstone_spellings_and_prefixes():
    a = assemble("MOV EAX, DWORD PTR FS:[ECX+4]\nRep StosD\nLJMP 8:0x2000\nlcall 8, 0x2000\n"
                 "jmp ptr [eax]\nrcl dword ptr [eax]", origin=0).code
    assert a == bytes.fromhex("648b4104" "f3ab" "ea002000000800" "9a002000000800" "ff28" "d110")
    assert assemble("movsb byte ptr es:[edi], byte ptr gs:[esi]").code == b"\x65\xa4"
    assert assemble("stosd dword ptr es:[edi], eax").code == b"\xab"
    assert assemble("repe movsb\nrepz stosb").code == b"\xf3\xa4\xf3\xaa"


def test_entry_defaults_to_origin_and_org_pads_forward():
    p = assemble("nop\norg 0x1004\nhlt", origin=0x1000)
    assert p.entry == 0x1000 and p.code == b"\x90\x00\x00\x00\xf4"
    assert assemble("align 4\nnop\nalign 4\nhlt", origin=0x1001).code == b"\x90" * 7 + b"\xf4"


# --- errors ----------------------------------------------------------------------------

ERRORS = [
    # source, line, column, words the message must contain
    ("mov eax, foo", 1, 10, "undefined label 'foo'"),
    ("a:\nnop\na:", 3, 1, "duplicate label 'a'"),
    ("nop\n  mov al, 300", 2, 11, "out of range"),
    ("mov eax, cl", 1, 10, "wrong operand size: expected a 32-bit register"),
    ("mov al, ecx", 1, 9, "expected an 8-bit register"),
    ("  frob eax", 1, 3, "unknown mnemonic 'frob'"),
    ("mov eax, [esp*2]", 1, 10, "esp cannot be an index"),
    ("mov eax, [eax*3]", 1, 10, "scale must be 1, 2, 4 or 8"),
    ("mov eax, [ax]", 1, 10, "expected a 32-bit register"),
    ("mov eax, [eax-ebx]", 1, 14, "cannot be subtracted"),
    ("mov eax,", 1, 9, "expected an operand after ','"),
    ("mov eax, ebx ecx", 1, 14, "expected ',' or end of line"),
    ("inc [eax]", 1, 5, "operation size not specified"),
    ("mov [eax], 5", 1, 5, "operation size not specified"),
    ("loop x\ntimes 200 nop\nx:", 1, 6, "out of range for a short"),
    ("jmp short x\ntimes 200 nop\nx:", 1, 5, "out of range for a short"),
    ("push byte 200", 1, 6, "sign-extended byte"),
    ("ret 0x10000", 1, 5, "out of range for a word"),
    ("lock inc eax", 1, 1, "not in hvsim's subset"),
    ("mov cs, ax", 1, 5, "expected es, ss, ds, fs or gs"),
    ("mov eax, cr1", 1, 10, "expected cr0, cr2, cr3 or cr4"),
    ("rep add eax, ecx", 1, 1, "rep is only allowed"),
    ("db 256", 1, 4, "out of range for db"),
    ("times -1 nop", 1, 7, "negative"),
    ("bits 16", 1, 6, "32-bit code only"),
    ("nop eax", 1, 5, "takes 0 operands"),
    ("push", 1, 1, "takes 1 operand"),
    ("mov eax, 12z", 1, 10, "bad number"),
    ("db 'abc", 1, 4, "unterminated string"),
    ("mov eax, 1 +", 1, 13, "expected a number, label or '('"),
    ("lgdt eax", 1, 6, "expected a memory operand"),
    ("jmp dword [ds:eax]", 1, 1, "notrack"),
    ("x equ 1\nx: nop", 2, 1, "duplicate label 'x'"),
    ("mov eax, 1 / 0", 1, 12, "division by zero"),
    ("eax: nop", 1, 1, "register name"),
    # an operand size that no form of the instruction takes is named as such
    ("lgdt ax", 1, 6, "16-bit operand 'ax' is not supported by 'lgdt'"),
    ("nop\njmp cx", 2, 5, "16-bit operand 'cx' is not supported by 'jmp'"),
    ("call word [eax]", 1, 6, "16-bit operand 'word [eax]' is not supported by 'call'"),
    ("push al", 1, 6, "8-bit operand 'al' is not supported by 'push'"),
    ("sete ax", 1, 6, "16-bit operand 'ax' is not supported by 'sete'"),
    ("mov eax, ax", 1, 10, "wrong operand size"),
    ("add ax, 0x10000", 1, 9, "out of range for a word"),
    ("o16 mov eax, 1", 1, 1, "o16"),
]


@pytest.mark.parametrize("src,line,col,words", ERRORS)
def test_errors_are_located(src, line, col, words):
    with pytest.raises(AsmError) as info:
        assemble(src)
    e = info.value
    assert isinstance(e, ValueError)
    assert (e.line, e.column) == (line, col), str(e)
    assert words in e.message, e.message
    assert e.text == src.splitlines()[line - 1]
    rendered = str(e).splitlines()
    assert rendered[0] == f"line {line}, col {col}: {e.message}"
    assert rendered[2].index("^") - 4 == col - 1


def test_garbage_never_escapes_as_a_raw_exception():
    rng = random.Random(7)
    vocab = ["mov", "eax", ",", "[", "]", "+", "*", "4", "0x10", "byte", "ptr", "fs", ":",
             "label", ".loc", "times", "db", "'", "(", ")", "-", "jmp", "short", "far",
             "equ", "$", "$$", "esp", "cr3", "ds", "rep", "x:", ";", "dd", "org", "~", "<<"]
    for _ in range(3000):
        src = " ".join(rng.choice(vocab) for _ in range(rng.randrange(1, 8)))
        try:
            assemble(src)
        except AsmError:
            pass


def test_runs_out_tells_bytes_that_end_early_from_bytes_that_are_no_instruction():
    """disassemble_one gives '(bad)' for both; runs_out says which: B8 01 is a MOV EAX,
    imm32 missing three bytes, 0F the first byte of a two-byte opcode, D6 no instruction
    of the subset whatever follows, 90 a whole NOP."""
    from hvsim.asm.disassembler import runs_out
    for code in (b"\xb8\x01", b"\x0f", b"\x8b", b"\x2e"):
        assert disassemble_one(code).bad and runs_out(code), code
    assert disassemble_one(b"\xd6").bad and not runs_out(b"\xd6")
    assert not runs_out(b"\x90") and not runs_out(b"\xb8\x01\x00\x00\x00")
    assert runs_out(b"\x90\xb8", 1) and not runs_out(b"\xb8\x90", 1)
