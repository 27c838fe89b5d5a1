"""Directed tests of the 66h operand-size prefix, one rule each, with its SDM reference.

The random comparisons live elsewhere (tests/test_differential.py against Unicorn,
tests/test_alu.py against the naive reference, tests/test_blocks.py against the
interpreter); here each test pins one architectural fact to hand-derived values, and
one set pins the forms where hvsim keeps 66h out of its subset (#UD).
"""
import numpy as np
import pytest

from hvsim import Machine, assemble
from hvsim.arch.flags import CF, ZF, PF, AF, SF, OF, DF, FIXED1
from hvsim.arch.layout import DC_ENTRIES
from hvsim.cpu import decode as D
from hvsim.warmup import enable_paging, identity_map_4k

ORG = 0x1000


def machine_with(code: bytes, **regs):
    """A bare machine with ``code`` at ORG (then HLT) and the given registers."""
    m = Machine()
    code = bytes(code) + b"\xf4"
    m.memory[ORG:ORG + len(code)] = np.frombuffer(code, np.uint8)
    m.cpu.eip = ORG
    for name, value in regs.items():
        setattr(m.cpu, name, value)
    return m


def run_one(code: bytes, **regs):
    """Run ``code`` to its HLT; returns (machine, event)."""
    m = machine_with(code, **regs)
    return m, m.run(max_steps=100)


def test_add_ax_imm16_keeps_the_upper_half_of_eax():
    """66 05 iw is ADD AX, imm16 (SDM Vol. 2A, ADD): 4 bytes; the result replaces AX only
    (Vol. 1, 3.4.1.1) and CF/ZF/PF/AF come from the 16-bit sum."""
    m, ev = run_one(bytes.fromhex("66 05 01 00"), eax=0x1234FFFF, eflags=FIXED1)
    assert ev.kind == "halt" and ev.eip == ORG + 4
    assert m.cpu.eax == 0x12340000
    assert m.cpu.eflags & (CF | ZF | PF | AF | SF | OF) == CF | ZF | PF | AF


def test_group1_81_takes_an_imm16_and_83_a_sign_extended_imm8():
    """66 81 /0 iw: the "Iz" immediate is 16 bits with a 16-bit operand size (SDM Vol. 2A,
    3.1.1.1; Vol. 2D, A.2.2), so the instruction is 5 bytes, not 7; 66 83 /0 ib sign-
    extends its byte to 16 bits."""
    code = bytes.fromhex("66 81 c1 34 12" "66 83 c2 ff")
    m, ev = run_one(code, ecx=0xAAAA0001, edx=0xBBBB0002)
    assert ev.eip == ORG + 9
    assert (m.cpu.ecx, m.cpu.edx) == (0xAAAA1235, 0xBBBB0001)
    assert D.OPC_OSZ[0x81] == D.OSZ_IZ and D.OPC_OSZ[0x83] == D.OSZ_16


def test_push_and_pop_of_a_word_move_esp_by_two():
    """PUSH/POP with a 16-bit operand size move ESP by 2 (SDM Vol. 2B, PUSH: "the
    operand size ... determines the amount by which the stack pointer is decremented");
    66 6A ib pushes its byte sign-extended to a word; PUSH SP pushes SP as it was."""
    src = """
        mov esp, 0x9000
        mov dword [0x8ff8], 0x55555555
        mov eax, 0xABCD1234
        push ax
        push word -2
        push sp
        pop bx
        pop cx
        pop word [0x3000]
        hlt
    """
    m = Machine()
    m.load(assemble(src, origin=ORG))
    m.run(max_steps=20)
    assert m.cpu.esp == 0x9000
    assert m.cpu.ebx & 0xFFFF == 0x8FFC                 # SP before PUSH SP
    assert m.cpu.ecx & 0xFFFF == 0xFFFE
    assert bytes(m.memory[0x3000:0x3002]) == b"\x34\x12"
    # three words pushed below 0x9000; the dword below them untouched
    assert bytes(m.memory[0x8FFA:0x9000]) == bytes.fromhex("fc8f feff 3412")
    assert bytes(m.memory[0x8FF8:0x8FFA]) == b"\x55\x55"


def test_mul_and_div_of_words_use_dx_ax():
    """MUL r/m16 is DX:AX = AX * r/m16, DIV r/m16 divides DX:AX (SDM Vol. 2B, MUL, DIV);
    the upper halves of EAX and EDX are kept. CWD (66 99) copies AX's sign into DX."""
    m, _ = run_one(bytes.fromhex("66 f7 e3"), eax=0x1111FFFF, ebx=0xFFFF, edx=0x22220000)
    assert (m.cpu.eax, m.cpu.edx) == (0x11110001, 0x2222FFFE)
    assert m.cpu.eflags & (CF | OF) == CF | OF
    m, _ = run_one(bytes.fromhex("66 f7 f3"), eax=0x1111_0007, edx=0x2222_0001, ebx=0x10)
    assert (m.cpu.eax, m.cpu.edx) == (0x1111_1000, 0x2222_0007)   # 0x10007 / 0x10
    m, _ = run_one(bytes.fromhex("66 99"), eax=0x0000_8000, edx=0x3333_0000)
    assert m.cpu.edx == 0x3333_FFFF


def test_lea_and_movzx_with_a_16_bit_destination():
    """LEA r16 keeps the low word of the 32-bit effective address (SDM Vol. 2A, LEA,
    Table 3-54: operand size 16, address size 32); 66 0F B6 is MOVZX r16, r/m8."""
    m, _ = run_one(bytes.fromhex("66 8d 44 58 04" "66 0f b6 d1"), eax=0x0001_FFF0,
                   ebx=0x10, edx=0x7777_7777, ecx=0x80)
    assert m.cpu.eax == 0x0001_0014                    # 0x1FFF0 + 0x20 + 4 = 0x20014 -> AX
    assert m.cpu.edx == 0x7777_0080


def test_string_words_step_by_two():
    """MOVSW/STOSW move words and step ESI/EDI by 2, backwards when DF = 1 (SDM Vol. 2B,
    MOVS, STOS); REP repeats ECX times."""
    m, _ = run_one(bytes.fromhex("f3 66 ab"), eax=0xBEEF, edi=0x3000, ecx=3, eflags=FIXED1)
    assert bytes(m.memory[0x3000:0x3008]) == bytes.fromhex("efbeefbeefbe0000")
    assert (m.cpu.edi, m.cpu.ecx) == (0x3006, 0)
    m = machine_with(bytes.fromhex("66 a5"), esi=0x3002, edi=0x4002, eflags=FIXED1 | DF)
    m.memory[0x3002:0x3004] = [0x11, 0x22]
    m.run(max_steps=5)
    assert bytes(m.memory[0x4002:0x4004]) == b"\x11\x22"
    assert (m.cpu.esi, m.cpu.edi) == (0x3000, 0x4000)


def test_in_and_out_of_ax_are_two_byte_port_accesses():
    """66 ED is IN AX, DX and 66 EF is OUT DX, AX (SDM Vol. 2A, IN; Vol. 2B, OUT): the io
    exit says size 2; the floating bus reads 0xFFFF into AX only, and reply() answers
    AX only."""
    p = assemble("""
        mov eax, 0x12345678
        mov dx, 0x3f8
        out dx, ax
        in ax, dx
        mov ebx, eax
        in ax, dx
        hlt
    """, origin=ORG)
    m = Machine()
    m.load(p)
    ev = m.run()
    assert (ev.kind, ev.port, ev.size, ev.direction, ev.value) == ("io", 0x3F8, 2, "out", 0x5678)
    assert ev.length == 2
    ev = m.run()
    assert (ev.kind, ev.port, ev.size, ev.direction) == ("io", 0x3F8, 2, "in")
    assert m.cpu.eax == 0x1234FFFF
    with pytest.raises(ValueError, match="value"):
        ev.reply(0x10000)
    ev.reply(0xBEEF)
    ev = m.run()
    assert m.cpu.ebx == 0x1234BEEF and ev.kind == "io"
    assert m.run().kind == "halt" and m.cpu.eax == 0x1234FFFF


def test_a_word_write_across_a_page_end_faults_before_writing():
    """A 2-byte access that crosses into a not-present page raises #PF (SDM Vol. 3A, 4.7)
    and writes neither byte; CR2 is the first byte of the absent page (hvsim/mmu/
    paging.py, model choices). EIP stays on the instruction."""
    m = machine_with(bytes.fromhex("66 a3 ff 7f 00 00"), eax=0xA1B2)
    cr3 = identity_map_4k(m.memory, 0x800000, 8 << 20)
    pte = 0x800000 + 0x1000 + 8 * 4                    # page 0x8000's entry
    m.memory[pte:pte + 4] = 0
    enable_paging(m, cr3)
    before = bytes(m.memory[0x7FF0:0x8010])
    ev = m.run(max_steps=5)
    assert (ev.kind, ev.vector, ev.eip) == ("exception", 14, ORG)
    assert m.cpu.cr2 == 0x8000 and ev.error_code == 0b010   # not present, write, ring 0
    assert bytes(m.memory[0x7FF0:0x8010]) == before


@pytest.mark.parametrize("hexcode,what", [
    ("66 00 c8", "ADD r/m8, r8: no 16-bit form (66h reserved, SDM Vol. 2A, 2.1.1)"),
    ("66 b0 01", "MOV r8, imm8"),
    ("66 eb 00", "JMP rel8 with a 16-bit EIP"),
    ("66 e8 00 00", "CALL rel16"),
    ("66 c3", "RET with a 16-bit EIP"),
    ("66 ff e0", "JMP r/m16"),
    ("66 9c", "PUSHF (16-bit FLAGS image)"),
    ("66 cf", "IRET (16-bit frame)"),
    ("66 0f 01 10", "LGDT (24-bit base)"),
    ("66 8e d8", "MOV Sreg, r/m16 with 66h"),
    ("66 0f 94 c0", "SETcc (byte only)"),
])
def test_66h_outside_the_subset_is_ud(hexcode, what):
    """Forms where 66h is reserved or selects what hvsim leaves out are #UD, a defined
    event (hvsim/cpu/decode.py, OSZ_UD)."""
    m, ev = run_one(bytes.fromhex(hexcode))
    assert (ev.kind, ev.vector, ev.eip) == ("exception", 6, ORG), what


def test_decoded_fields_say_size_2_and_the_imm16():
    """What the core decodes (and an exit would carry): 66 C7 /0 iw is MOV r/m16, imm16,
    operand size 2, a 16-bit immediate, length 2 + ModRM + disp32 + 2."""
    m = machine_with(bytes.fromhex("66 c7 05 00 30 00 00 34 12"))
    m.step()
    assert bytes(m.memory[0x3000:0x3003]) == b"\x34\x12\x00"
    row = ORG & (DC_ENTRIES - 1)
    assert m._dc[D.F_TAG, row] == ORG
    fields = [int(m._dc[f, row]) for f in (D.F_OP, D.F_LEN, D.F_SIZE, D.F_IMM)]
    assert fields == [D.OP_MOV_EI, 9, 2, 0x1234]
    assert int(m._dc[D.F_PFX, row]) & D.PFX_OPSIZE


def test_the_assembler_table_and_the_decoder_agree_on_where_66h_selects_16_bits():
    """The 'o16' rows of hvsim/asm/table.py and OPC_OSZ of hvsim/cpu/decode.py describe
    the same opcodes: what the assembler can write, the CPU runs, and an imm16 row is
    exactly where the decoder shrinks the "Iz" immediate."""
    from hvsim.asm.table import FORMS
    from_table = {}
    for f in FORMS:
        if "o16" not in f.flags:
            continue
        last = range(8) if f.plus_r else (0,)
        for r in last:
            opc = f.opcode[-1] + r
            key = 0x100 | opc if len(f.opcode) == 2 else opc
            from_table.setdefault(key, set()).add("Iw" in f.ops)
    from_decoder = {o for o in range(len(D.OPC_OSZ)) if D.OPC_OSZ[o] in (D.OSZ_16, D.OSZ_IZ)}
    assert set(from_table) == from_decoder
    for key, imm16 in from_table.items():
        if D.OPC_IMM[key] == D.IMM_GRP3:
            continue                    # F7: only /0 (TEST) has one, sized by the decoder
        assert (D.OPC_OSZ[key] == D.OSZ_IZ) == (True in imm16), hex(key)
