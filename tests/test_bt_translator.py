"""The binary translator, one guest instruction at a time (hvsim/bt/translator.py).

Oracle: the real CPU. Each instruction of the subset below is the whole guest kernel
(followed by HLT); it runs natively at ring 0 on one machine, and under
:class:`~hvsim.bt.BinaryTranslator` -- translated, at ring 1, from the TC -- on another,
both from the same random state (general registers, arithmetic flags, a data area, the
stack). The results must be identical: registers, the arithmetic flags, the data area and
the stack. CLI/STI/PUSHF/POPF are checked against the virtual-IF semantics: the native
run's real IF and IOPL against the translator's virtual ones, and the EFLAGS image PUSHF
leaves on the stack byte for byte (it holds the virtual IF natively too).
"""
import random

import pytest

from hvsim import Machine, assemble
from hvsim.bt import BinaryTranslator
from hvsim.bt import replacements as R
from hvsim.bt.translator import (CALLOUT, CHAIN, CONT, IDENT, INLINE, MAX_TU_INSNS,
                                 TranslationFault, translate)
from hvsim.rings.setup import install

DATA, STACK = 0x20000, 0x80000
ARITH = 0x8D5 | 0x400              # CF PF AF ZF SF OF, DF
IF, IOPL = 0x200, 0x3000
REGS = ("eax", "ecx", "edx", "ebx", "esi", "edi", "ebp")

# the subset: ALU, MOV, string, stack forms; [ebx + ...] points into DATA
SUBSET = [
    "add eax, ecx", "adc edx, [ebx + 8]", "sub [ebx + 4], esi", "sbb al, 0x7f", "and ecx, 0x0f0f0f0f",
    "or byte [ebx + 3], 0x81", "xor esi, edi", "cmp eax, [ebx]", "test edx, 0x80000000",
    "inc dword [ebx + 12]", "dec ebp", "neg ecx", "not dword [ebx + 16]", "mul ecx",
    "imul edx, esi, 13", "imul eax, [ebx + 20]", "shl eax, cl", "shr dword [ebx + 8], 3",
    "sar edx, 1", "rol ecx, 7", "ror byte [ebx + 1], cl", "rcl eax, 1", "rcr esi, 5",
    "mov eax, [ebx + 24]", "mov [ebx + 28], ecx", "mov word [ebx + 30], 0x1234",
    "mov al, [0x20010]", "mov [0x20014], eax", "mov edi, 0xdeadbeef", "movzx eax, byte [ebx + 5]",
    "movsx edx, word [ebx + 6]", "lea esi, [ebx + ecx*4 + 8]", "xchg eax, [ebx + 32]",
    "xchg ecx, edx", "cmove eax, edx", "cmovl esi, [ebx + 36]", "setc al", "setg byte [ebx + 40]",
    "cdq", "clc", "stc", "cmc", "cld", "std", "push eax", "push 0x12345678", "push dword [ebx + 4]",
    "pop ecx", "pop dword [ebx + 44]", "movsd", "stosb", "rep movsb", "rep stosd", "nop",
    "add ax, 0x7fff", "mov cx, [ebx + 2]", "bswap_placeholder",
]
SUBSET = [s for s in SUBSET if s != "bswap_placeholder"]
SEEDS = range(10)


def _state(seed):
    rng = random.Random(seed)
    regs = {r: rng.getrandbits(32) for r in REGS}
    regs["ebx"] = DATA + rng.randrange(0, 16) * 4
    regs["ecx"] = rng.randrange(1, 9) if rng.random() < 0.5 else regs["ecx"]
    regs["esi"] = DATA + 0x100 + rng.randrange(0, 8)
    regs["edi"] = DATA + 0x180 + rng.randrange(0, 8)
    flags = rng.getrandbits(32) & ARITH & ~0x400       # DF clear: string forms go up
    data = bytes(rng.getrandbits(8) for _ in range(0x200))
    stack = bytes(rng.getrandbits(8) for _ in range(64))
    vif = rng.getrandbits(1)
    viopl = rng.randrange(4)
    return regs, flags, data, stack, vif, viopl


def _small_counts(insn, regs):
    if "rep" in insn:
        regs["ecx"] = regs["ecx"] & 7
    return regs


def _load(m, cpu, regs, flags, data, stack, real_if_iopl):
    for r, v in regs.items():
        setattr(cpu, r, v)
    cpu.esp = STACK - 32
    m.write_physical(DATA, data)
    m.write_physical(STACK - 48, stack)
    cpu.eflags = 0x2 | flags | real_if_iopl


def _native(prog, state):
    regs, flags, data, stack, vif, viopl = state
    m = Machine(memory=1 << 20)
    t = install(m)
    m.load(prog)
    t.enter(m, 0, m.cpu.eip, STACK - 32)
    _load(m, m.cpu, regs, flags, data, stack, (IF if vif else 0) | (viopl << 12))
    ev = m.run(1000)
    assert ev.kind == "halt", ev
    return m, m.cpu.eflags & (IF | IOPL)


def _bt(prog, state):
    regs, flags, data, stack, vif, viopl = state
    bt = BinaryTranslator(program=prog)
    m = bt.machine
    _load(m, m.cpu, regs, flags, data, stack, IF)
    bt.vcpu.IF, bt.vcpu.iopl = vif, viopl
    ev = bt.run(1000)
    assert ev.kind == "halt", (ev, bt.log[-3:])
    return bt, (IF if bt.vcpu.IF else 0) | (bt.vcpu.iopl << 12)


def _compare(insn, seed):
    state = _state(seed)
    state = (_small_counts(insn, dict(state[0])),) + state[1:]
    if insn == "popfd":          # the image POPF loads: flags, IF and IOPL only (no TF, NT, AC)
        stack = bytearray(state[3])
        image = (int.from_bytes(stack[16:20], "little") & (ARITH | IF | IOPL)) | 2
        stack[16:20] = image.to_bytes(4, "little")
        state = state[:3] + (bytes(stack),) + state[4:]
    prog = assemble(f"start:\n    {insn}\n    hlt\n", origin=0x1000)
    nat, nat_if = _native(prog, state)
    bt, bt_if = _bt(prog, state)
    a, b = nat.cpu, bt.machine.cpu
    where = f"'{insn}' seed {seed}"
    for r in REGS + ("esp",):
        assert getattr(a, r) == getattr(b, r), f"{where}: {r}"
    assert a.eflags & ARITH == b.eflags & ARITH, f"{where}: flags"
    assert bytes(nat.memory[DATA:DATA + 0x200]) == bytes(bt.machine.memory[DATA:DATA + 0x200]), where
    assert bytes(nat.memory[STACK - 64:STACK]) == bytes(bt.machine.memory[STACK - 64:STACK]), where
    assert nat_if == bt_if, f"{where}: IF/IOPL"
    return bt


@pytest.mark.parametrize("insn", SUBSET)
def test_ident_instruction_runs_as_the_original(insn):
    for seed in SEEDS:
        bt = _compare(insn, seed)
    rows = bt.listing(0x1000)
    assert rows[0][4] == IDENT and rows[0][1] == rows[0][3]   # copied: the same text


@pytest.mark.parametrize("insn", ["cli", "sti", "pushfd", "popfd"])
def test_inline_sequences_keep_the_virtual_if_semantics(insn):
    for seed in range(12):
        bt = _compare(insn, seed)
    kinds = [row[4] for row in bt.listing(0x1000)]
    assert kinds[0] == INLINE and bt.counters[f"in-TC {insn.upper()}"] == 1


def test_popf_image_sets_the_virtual_if_and_iopl_and_keeps_the_arithmetic_flags():
    # from virtual IF=0 IOPL=0, POPF of an image with IF, IOPL 2 and CF|ZF
    prog = assemble("start:\n    push 0x2241\n    popfd\n    hlt\n", origin=0x1000)
    bt = BinaryTranslator(program=prog)
    assert bt.run(1000).kind == "halt"
    assert (bt.vcpu.IF, bt.vcpu.iopl) == (1, 2)
    f = bt.machine.cpu.eflags
    assert f & 0x41 == 0x41 and f & IF and not f & IOPL          # real IF 1, real IOPL 0


def test_translate_is_pure_and_stops_at_twelve_instructions():
    code = assemble("\n".join(["inc eax"] * 20), origin=0x3000).code

    def read(lin, n):
        off = lin - 0x3000
        return bytes(code[off:off + n]) + bytes(max(0, n - len(code) + off))

    tr = translate(0x3000, read)
    assert tr.n_guest == MAX_TU_INSNS and tr.guest_end == 0x3000 + MAX_TU_INSNS
    assert [r.kind for r in tr.rows] == [IDENT] * 12 + [CHAIN, CONT]
    assert tr.exits[0].target == 0x300C


def test_translate_rewrites_branches_and_callouts():
    src = "start:\n jz start\n"
    code = assemble(src, origin=0x3000).code
    tr = translate(0x3000, lambda lin, n: bytes(code) + bytes(n - len(code)))
    assert [r.kind for r in tr.rows] == [CHAIN, CHAIN, CONT, CONT]
    assert [e.target for e in tr.exits] == [0x3000, 0x3002]
    code = assemble("out 0xe9, al", origin=0x3000).code
    tr = translate(0x3000, lambda lin, n: bytes(code) + bytes(n - len(code)))
    assert [(r.kind, r.callout) for r in tr.rows] == [(CALLOUT, "simulate")]
    assert tr.code == bytes([0xCD, R.CALLOUT_VECTOR])


def test_translate_first_fetch_fault_raises():
    def read(lin, n):
        raise TranslationFault(lin, 0, "not present")
    with pytest.raises(TranslationFault):
        translate(0x5000, read)
    with pytest.raises(ValueError):
        translate(0x5000, read, max_insns=13)


def test_sensitive_list_is_data_with_a_reason_each():
    assert all(how in (R.INLINE, R.CALLOUT, R.REFUSED) and why for how, why in R.SENSITIVE.values())
    assert R.treatment("popfd", b"\x66\x9d") == ("popfd", R.CALLOUT)      # 16-bit: emulated
    assert R.treatment("mov", b"\x8c\xe8") == ("gs", R.REFUSED)           # mov eax, gs
    assert R.treatment("mov", b"\x65\x8b\x00") == ("gs", R.REFUSED)       # gs: prefix
    assert R.treatment("mov", b"\x8b\x00") == ("mov", None)


def test_a_data_access_through_cs_is_refused_and_only_that():
    from hvsim.asm.disassembler import disassemble_one
    def cs(raw):
        return R.treatment("x", raw, disassemble_one(raw))
    assert cs(b"\x2e\x8b\x00") == ("cs data", R.REFUSED)            # mov eax, cs:[eax]
    assert cs(b"\x3e\x2e\xa1\0\0\0\0")[1] == R.REFUSED            # the last prefix: CS
    assert cs(b"\x2e\xa5")[1] == R.REFUSED                             # movsd from cs:[esi]
    assert cs(b"\x2e\x3e\x8b\x00") == ("x", None)                     # the last prefix: DS
    assert cs(b"\x2e\x74\x00") == ("x", None)                          # a branch hint
    assert cs(b"\x2e\x89\xc0") == ("x", None)                          # no memory operand
    assert cs(b"\x2e\x8d\x00") == ("x", None)                          # LEA: no access
    assert cs(b"\x2e\xab") == ("x", None)                              # stosd: ES:EDI only
    assert cs(b"\x65\x2e\x8b\x00") == ("gs", R.REFUSED)               # GS is refused first


def test_an_instruction_straddling_into_an_unmapped_page():
    code = {0x3FFD: 0x90, 0x3FFE: 0xB8, 0x3FFF: 0x78}       # nop; mov eax, 0x12345678 (split)

    def read(lin, n):
        if lin >= 0x4000:
            raise TranslationFault(lin, 0, "not present")
        return bytes(code.get(lin + i, 0) for i in range(n))
    with pytest.raises(TranslationFault) as e:
        translate(0x3FFE, read)                      # its first instruction: the fetch faults
    assert e.value.address == 0x4000
    tr = translate(0x3FFD, read)                     # else the TU ends before it
    assert tr.n_guest == 1 and tr.exits[0].target == 0x3FFE and tr.pages == [0x3000]


def test_no_instruction_on_a_pages_last_byte_needs_no_next_page():
    def read(lin, n):                                # D6: no instruction, whatever follows
        if lin >= 0x4000:
            raise TranslationFault(lin, 0, "not present")
        return bytes([0xD6] if lin == 0x3FFF else [0x90] * n)[:n]
    tr = translate(0x3FFF, read)                     # no fetch fault: a (bad) callout
    assert tr.n_guest == 1 and [(r.kind, r.key) for r in tr.rows] == [("CALLOUT", "(bad)")]
    assert tr.pages == [0x3000]


def test_an_instruction_straddling_two_mapped_pages_reads_both():
    code = assemble("nop\nmov eax, 0x12345678\nhlt", origin=0x3FFD).code

    def read(lin, n):
        off = lin - 0x3FFD
        return bytes(code[off:off + n]) + bytes(max(0, n - max(0, len(code) - off)))
    tr = translate(0x3FFD, read)
    assert tr.guest[:2] == [(0x3FFD, 1, "nop"), (0x3FFE, 5, "mov eax, 0x12345678")]
    assert tr.pages == [0x3000, 0x4000] and tr.guest_end == 0x4003   # stops past the page


def test_doctests():
    import doctest
    import hvsim.bt.monitor
    import hvsim.bt.translator
    for mod in (hvsim.bt.translator, hvsim.bt.monitor):
        result = doctest.testmod(mod)
        assert result.failed == 0 and result.attempted > 0
