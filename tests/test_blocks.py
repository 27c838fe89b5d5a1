"""Translated blocks (hvsim/cpu/translate.py) against the interpreter.

A block must be invisible: the same program run with blocks and without them must
give the same events and the same machine state -- registers, EFLAGS, every counter,
the TLB with its LRU stamps, the page words (generations), memory and the decoded
instructions. The random programs here are made of the instructions blocks translate,
mixed with ones they leave to the interpreter, and are run in budget slices of random
size so that blocks stop everywhere; paging with a two-entry TLB makes them leave at
TLB misses, stores next to the code make them leave at self-modifying writes.
"""
import random

import numpy as np
import pytest

from hvsim import Machine, assemble
from hvsim.arch import layout as L
from hvsim.cpu import translate as T
from hvsim.cpu.blocks import F_BLK, F_HOT
from hvsim.warmup import enable_paging, identity_map_4k

FREE = ["eax", "edx", "esi", "edi", "ebp"]          # ebx: data base, ecx: loop count, esp: stack
ALU = ["add", "or", "adc", "sbb", "and", "sub", "xor", "cmp"]
CC = ["o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g"]
INTERPRETED = ["shl {r}, 3", "cmc", "stc", "setc al", "imul {r}, {s}", "mov byte [ebx+9], al",
               "xchg {r}, {s}", "neg {r}", "movzx {r}, byte [ebx+5]", "add [ebx+12], {r}",
               "cdq", "mov al, 0x34", "not {r}"]
DATA = 0x80000
SLOTS = [0, 4, 8, 13, 16, 200, 4092, 4094]         # 4094: a dword across the page end


def _imm(rng):
    return rng.choice([rng.randrange(0, 0x80), rng.randrange(0xFFFFFF80, 1 << 32),
                       rng.randrange(1 << 32), 0, 0x7FFFFFFF, 0x80000000])


def _insn(rng, labels, in_leaf):
    r, s = rng.choice(FREE), rng.choice(FREE)
    k = rng.randrange(22)
    if k < 4:
        return [f"{rng.choice(ALU)} {r}, {s}"]
    if k < 6:
        return [f"{rng.choice(ALU)} {r}, {_imm(rng):#x}"]
    if k == 6:
        return [f"{rng.choice(ALU)} eax, {rng.randrange(0x100, 1 << 32):#x}"]
    if k == 7:
        return [f"test {r}, {s}", f"{rng.choice(['inc', 'dec'])} {s}"]
    if k == 8:
        return [f"mov {r}, {s}" if rng.random() < 0.5 else f"mov {r}, {_imm(rng):#x}"]
    if k == 9:
        return [f"lea {r}, [{s}+{rng.choice(FREE)}*{rng.choice([1, 2, 4, 8])}+{_imm(rng) & 0xFFF}]"]
    if k == 10:
        return [f"mov {r}, [ebx+{rng.choice(SLOTS)}]"]
    if k == 11:
        return [f"mov [ebx+{rng.choice(SLOTS)}], {r}"]
    if k == 12:
        return [f"{rng.choice(ALU)} {r}, [ebx+{rng.choice(SLOTS)}]"]
    if k == 13:
        return [f"push {r}", f"{rng.choice(ALU)} {s}, {r}", f"pop {s}"]
    if k == 14 and not in_leaf:
        return ["call leaf"]
    if k == 15:
        return [rng.choice(INTERPRETED).format(r=r, s=s)]
    if k == 16:
        n = len(labels)
        labels.append(n)
        skipped = [f"inc {r}", f"xor {s}, {r}"][:rng.randrange(1, 3)]
        jump = f"j{rng.choice(CC)}" if rng.random() < 0.8 else "jmp"
        return [f"{jump} fwd{n}"] + skipped + [f"fwd{n}:"]
    if k == 17:
        return ["nop"]
    if k == 18 and rng.random() < 0.3:
        return ["mov [near_code], eax"]                # a store into the code frame
    if k == 19:
        return ["push esp", "pop eax"]
    if k == 20:
        return [f"inc {r}"]
    return [f"dec {r}"]


def random_program(rng):
    labels = []
    body = [line for _ in range(rng.randrange(3, 14)) for line in _insn(rng, labels, False)]
    leaf = [line for _ in range(rng.randrange(0, 4)) for line in _insn(rng, labels, True)]
    tail = ["dec ecx", "jnz top"] if rng.random() < 0.6 else ["loop top"]
    init = [f"mov {r}, {_imm(rng):#x}" for r in FREE]
    return "\n".join(
        ["org 0x1000", "start:", "mov esp, 0x90000", f"mov ebx, {DATA:#x}",
         f"mov ecx, {rng.randrange(5, 40)}"] + init + ["top:"] + body + tail
        + ([f"mov eax, [{rng.choice([0x900000, 0x7FFFF0])}]"] if rng.random() < 0.3 else [])
        + ["hlt", "leaf:"] + leaf + ["ret", "near_code: dd 0"])


def make(prog, blocks, paging=False, tlb=(16, 4), cpl=0):
    m = Machine(memory=16 << 20, tlb=tlb, blocks=blocks)
    m.load(prog)
    m.memory[DATA:DATA + 8192] = np.arange(8192, dtype=np.int64).astype(np.uint8)
    if paging:
        enable_paging(m, identity_map_4k(m.memory, 0x800000, 8 << 20))
    if cpl:
        m.cpu.cpl = cpl
    return m


def state(m):
    st = m._st.copy()
    st[L.CFG_BLOCK_HOT] = 0
    st[L.INSN_ROW] = 0          # the interpreter's scratch: a block leaves it as it was
    return st, m._tlb.copy(), m._pg.copy(), np.asarray(m._raw_mem).copy(), m._dc[:F_BLK].copy()


def assert_same(a, b, what):
    for name, x, y in zip(("st", "tlb", "pg", "mem", "dc"), state(a), state(b)):
        diff = np.flatnonzero(x != y)
        assert diff.size == 0, f"{what}: {name} differs at {diff[:8].tolist()}: {x.ravel()[diff[:8]].tolist()} vs {y.ravel()[diff[:8]].tolist()}"


def run_both(prog, rng, **kw):
    """Run with blocks (translated from the 2nd visit) and without, in equal random slices."""
    a, b = make(prog, False, **kw), make(prog, 2, **kw)
    for _ in range(400):
        n = rng.choice([1, 2, 3, 7, 20, 64, 1000])
        ea, eb = a.run(n), b.run(n)
        assert ea == eb, f"events differ: {ea} vs {eb}"
        sa, sb = state(a)[0], state(b)[0]
        assert np.array_equal(sa, sb), f"st differs at {np.flatnonzero(sa != sb).tolist()} after {ea}"
        if ea.kind != "budget":
            break
    assert_same(a, b, "after the run")
    return a, b, ea


CONFIGS = {
    "flat": dict(),
    "paging, two-entry TLB": dict(paging=True, tlb=(1, 2)),
    "paging, 64-entry TLB": dict(paging=True),
    "paging at ring 3": dict(paging=True, tlb=(2, 2), cpl=3),
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_random_programs_give_the_same_state_with_and_without_blocks(config):
    rng = random.Random(f"blocks-{config}")
    before = T.stats["translated"] + T.stats["reused"]
    ends = set()
    for _ in range(40):
        prog = assemble(random_program(rng))
        _, b, ev = run_both(prog, rng, **CONFIGS[config])
        ends.add((ev.kind, ev.vector))
    # the programs ran blocks, and every one came to its end: HLT, or at ring 3 the #GP
    # that HLT raises there; #PF / bus error for the programs reading outside the map
    assert T.stats["translated"] + T.stats["reused"] > before + 40
    final = ("exception", 13) if CONFIGS[config].get("cpl") else ("halt", None)
    assert final in ends and ends <= {final, ("exception", 14), ("bus_error", None)}


def test_a_loop_runs_as_one_block_and_counts_what_the_interpreter_counts():
    src = "mov ecx, 1000\ntop: add eax, ecx\nxor edx, eax\ndec ecx\njnz top\nhlt"
    a, b = make(assemble(src), False), make(assemble(src), 3)
    ea, eb = a.run(), b.run()
    assert ea == eb and ea.kind == "halt" and ea.steps == 4002
    assert_same(a, b, "ALU loop")
    assert b.cpu.eax == sum(range(1, 1001)) and b.counters["decode_hits"] == a.counters["decode_hits"]
    top = 0x1000 + 5                                   # after mov ecx, imm32
    assert b._dc[F_BLK, top] > 0 and a._dc[F_BLK, top] == 0
    # the block's pass retires 4 instructions; from the 3rd visit on the block ran them
    assert b._dc[F_HOT, top] == 3


def test_a_write_from_python_replaces_the_block():
    src = "top: add eax, 1\ndec ecx\njnz top\nhlt"
    m = make(assemble(src, origin=0x1000), 2)
    m.cpu.ecx = 100
    assert m.run().kind == "halt" and m.cpu.eax == 100
    assert m._dc[F_BLK, 0x1000] > 0
    m.memory[0x1002] = 5                               # add eax, 5
    m.cpu.eip, m.cpu.ecx, m.cpu.eax = 0x1000, 100, 0
    assert m.run().kind == "halt" and m.cpu.eax == 500


def switching_loop(head, switched, access, tail=""):
    """100 passes of ``head`` then ``access``, which uses ESI = 0x80000 -- except in the
    50th pass (ECX = 51), where ESI = ``switched``: a block that is hot by then meets it."""
    return f"""
    org 0x1000
    start: mov ecx, 100
        mov edx, 3
    top: {head}
        mov esi, 0x80000
        cmp ecx, 51
        jne go
        mov esi, {switched}
    go: {access}
        dec ecx
        jnz top
        hlt
    {tail}
    """


def test_a_store_from_a_block_into_a_code_frame_leaves_it_to_the_interpreter():
    # from the 50th pass the translated store writes the ADD's immediate: the block stops
    # before it, the interpreter writes and drops the frame's decoded code, and the next
    # pass adds 3 instead of 0x100
    src = switching_loop("add eax, 0x100", "top+1", "mov [esi], edx")
    a, b = make(assemble(src), False), make(assemble(src), 2)
    assert a.run() == b.run()
    assert b.cpu.eax == 50 * 0x100 + 50 * 3 and b.counters["smc_invalidations"] == 1
    assert_same(a, b, "store into code")


def test_a_block_write_through_a_clean_tlb_entry_walks_to_set_the_dirty_bit():
    # page 0x81000 is read on every pass (its TLB entry caches D = 0); from the 50th pass
    # the block's store goes there: that store must walk (SDM Vol. 3A, 4.8: D is set in
    # the PTE), which the interpreter does
    src = switching_loop("mov eax, [0x81000]", "0x81004", "mov [esi], ecx")
    a, b = make(assemble(src), False, paging=True), make(assemble(src), 2, paging=True)
    assert a.run() == b.run()
    pte = 0x801000 + 4 * 0x81                          # the PTE of page 0x81000
    assert int.from_bytes(bytes(b.memory[pte:pte + 4]), "little") & 0x40   # PTE.D
    assert_same(a, b, "write through a clean entry")


def test_a_user_access_through_a_supervisor_tlb_entry_faults_as_in_the_interpreter():
    # the TLB holds page 0x81000 as supervisor-only (filled at ring 0); at ring 3 the
    # block's read of it must not hit: the interpreter walks and raises #PF (U/S = 1)
    src = switching_loop("nop", "0x81000", "mov eax, [esi]", "fill: mov eax, [0x81000]\nhlt")
    prog = assemble(src)
    machines = []
    for blocks in (False, 2):
        m = make(prog, blocks, paging=True)
        pte = 0x801000 + 4 * 0x81
        m.memory[pte] = int(m.memory[pte]) & 0xFB    # PTE.U/S = 0: supervisor only
        m.cpu.eip = prog.labels["fill"]
        assert m.run().kind == "halt"                  # ring 0 fills the TLB entry
        m.cpu.cpl = 3
        m.cpu.eip = prog.labels["start"]
        machines.append(m)
    a, b = machines
    ea, eb = a.run(), b.run()
    assert ea == eb and (ea.kind, ea.vector, ea.address, ea.error_code) == ("exception", 14, 0x81000, 5)
    assert ea.eip == prog.labels["go"]
    assert_same(a, b, "user access to a supervisor page")


def test_a_guest_write_into_its_own_block_is_seen_by_the_next_instruction():
    # the loop rewrites its own ADD immediate (SMC) on the 50th pass: the block must stop
    # before the store (a code frame), and the rewritten ADD runs from then on
    src = """
    org 0x1000
    start: mov ecx, 100
    top:
        add eax, 1
        cmp ecx, 51
        jne skip
        mov byte [top+2], 3
    skip:
        dec ecx
        jnz top
        hlt
    """
    a, b = make(assemble(src), False), make(assemble(src), 2)
    assert a.run() == b.run()
    assert b.cpu.eax == 50 + 3 * 50 and b.counters["smc_invalidations"] == 1
    assert_same(a, b, "self-modifying loop")


@pytest.mark.parametrize("paging", [False, True])
def test_faults_inside_a_block_reach_the_host_at_the_faulting_instruction(paging):
    # the 30th pass pops from an address outside memory (bus error) or an unmapped page (#PF)
    bad = 0x1000002 if not paging else 0x900000        # memory ends at 16 MiB, the map at 8
    src = f"""
    org 0x1000
    start: mov ecx, 40
        mov esp, 0x90000
    top:
        add eax, ecx
        cmp ecx, 11
        jne ok
        mov esp, {bad:#x}
    ok: push eax
        pop edx
        dec ecx
        jnz top
        hlt
    """
    a, b = make(assemble(src), False, paging=paging), make(assemble(src), 2, paging=paging)
    ea, eb = a.run(), b.run()
    assert ea == eb
    assert ea.kind == ("exception" if paging else "bus_error")
    assert ea.eip == assemble(src).labels["ok"]
    assert_same(a, b, "fault in a block")


def test_restore_drops_block_addresses_and_the_machine_translates_again():
    src = "top: add eax, 1\ndec ecx\njnz top\nhlt"
    m = make(assemble(src, origin=0x1000), 2)
    m.cpu.ecx = 50
    snap = m.snapshot()
    m.run()
    assert m._dc[F_BLK, 0x1000] > 0
    done = m.snapshot()
    m.restore(snap)
    m.restore(done)
    assert m._dc[F_BLK, 0x1000] == 0                   # a snapshot may come from elsewhere
    m.restore(snap)
    assert m.run().kind == "halt" and m.cpu.eax == 50


def test_blocks_argument_is_checked():
    assert Machine(blocks=False)._st[L.CFG_BLOCK_HOT] == 0
    assert Machine(blocks=7)._st[L.CFG_BLOCK_HOT] == 7
    assert Machine(decode_cache=False)._st[L.CFG_BLOCK_HOT] == 0
    with pytest.raises(ValueError, match="blocks"):
        Machine(blocks=0)
    with pytest.raises(TypeError, match="blocks"):
        Machine(blocks="yes")


# 16-bit operand-size forms (66h): blocks never translate them (translate._classify
# refuses every prefix but a segment override), so a block ends before each one and the
# interpreter runs it; the states must still agree with the interpreter-only machine.
W16 = ["add {w}, {v}", "sub {w}, 0x1234", "inc {w}", "dec word [ebx+{slot}]",
       "adc word [ebx+{slot}], {w}", "mov {w}, [ebx+{slot}]", "mov [ebx+{slot}], {w}",
       "push {w}\npush {v}\npop {r}", "shl {w}, 3", "movzx {r}, {w}", "cmovs {w}, {v}",
       "imul {w}, {v}, 0x1234", "mov {w}, 0x3f8", "xchg {w}, {v}", "neg {w}", "cwd",
       "test {w}, 0x8000", "lea {w}, [{r}+{s}*2+6]"]
R16 = {"eax": "ax", "edx": "dx", "esi": "si", "edi": "di", "ebp": "bp"}


def random_program_16(rng):
    labels = []
    body = []
    for _ in range(rng.randrange(4, 16)):
        if rng.random() < 0.4:
            r, s = rng.choice(FREE), rng.choice(FREE)
            line = rng.choice(W16).format(r=r, s=s, w=R16[r], v=R16[s], slot=rng.choice(SLOTS))
            body += line.split("\n")
        else:
            body += _insn(rng, labels, True)
    init = [f"mov {r}, {_imm(rng):#x}" for r in FREE]
    return "\n".join(["org 0x1000", "start:", "mov esp, 0x90000", f"mov ebx, {DATA:#x}",
                      f"mov ecx, {rng.randrange(5, 40)}"] + init + ["top:"] + body
                     + ["dec ecx", "jnz top", "hlt", "near_code: dd 0"])


@pytest.mark.parametrize("config", list(CONFIGS))
def test_16_bit_instructions_give_the_same_state_with_and_without_blocks(config):
    rng = random.Random(f"blocks16-{config}")
    before = T.stats["translated"] + T.stats["reused"]
    for _ in range(15):
        run_both(assemble(random_program_16(rng)), rng, **CONFIGS[config])
    assert T.stats["translated"] + T.stats["reused"] > before + 15


def test_a_block_ends_before_a_16_bit_instruction():
    """66 05 iw (ADD AX, imm16; SDM Vol. 2A, ADD) in a hot loop: the block entered at
    the loop head holds the 32-bit instructions before it and stops there; the
    interpreter runs it and the twin machines agree (EAX's upper half kept)."""
    src = """
        mov ecx, 500
        mov eax, 0x12340000
    top:
        add ebx, ecx
        xor edx, ebx
    w16:
        add ax, 0x0101
        sub edx, 3
        dec ecx
        jnz top
        hlt
    """
    prog = assemble(src)
    a, b = make(prog, False), make(prog, 3)
    ea, eb = a.run(), b.run()
    assert ea == eb and ea.kind == "halt"
    assert_same(a, b, "16-bit loop")
    assert b.cpu.eax == 0x12340000 | (500 * 0x0101) & 0xFFFF
    top, w16 = prog.labels["top"], prog.labels["w16"]
    assert b._dc[F_BLK, top] > 0                      # the loop head was translated...
    kinds = [i.opc for i in T.collect(b._dc, top)]
    assert kinds == [0x01, 0x31]                      # ...up to the 66h instruction
    assert T.collect(b._dc, w16) == []                # which no block starts with
