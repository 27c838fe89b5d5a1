"""The instruction trace (hvsim/cpu/itrace.py, hvsim/mmu/frames.py) against a stepped run.

Oracle: a twin machine without the trace, stepped one instruction at a time; after each
step that retired an instruction the twin says which one it was (INSN_EIP, its decoded
row), the CPL and IOPL it ran with, where it was fetched from (the Python page walker,
Machine._translate_page) and where execution went next. The traced machine's records
must be exactly that list, and the two machines must end in the same state.
"""
import numpy as np
import pytest

from hvsim import Machine, assemble
from hvsim.arch import layout as L
from hvsim.arch.counters import C_EXITS, C_EXIT_KIND
from hvsim.arch.exits import EXIT_BUDGET
from hvsim.cpu import decode as D
from hvsim.rings.setup import install
from hvsim.warmup import enable_paging, identity_map_4k

BUF = 0x70000
PD = 0x60000
CODE_FRAME = 0x5000      # linear page 1000H (the program) is mapped here, not onto itself
TIMER = (97, 0x20)

PROGRAM = """
    mov ecx, 40
top:
    add eax, ecx
    test ecx, 1
    jz even
    inc ebx
even:
    dec ecx
    jnz top
    mov esi, src
    mov edi, dst
    mov ecx, 100
    cld
    rep movsb
    ud2                     ; #UD: the handler steps over it
    sti
    mov ecx, 300
spin:
    loop spin
    cli
    push 0x3002             ; IOPL 3
    popf
    nop
    call leaf
    mov byte [patch + 1], 7 ; a store into this code page
patch:
    mov al, 0
    hlt
leaf:
    ret
ud_handler:
    add dword [esp], 2
    iret
timer_handler:
    inc edx
    iret
src:
    times 100 db 0x5A
dst:
    times 100 db 0
"""


def _machine():
    prog = assemble(PROGRAM, origin=0x1000)
    m = Machine(exceptions="guest", timer=TIMER, memory=1 << 20)
    t = install(m)
    m.load(prog)
    t.gate(m, 6, prog.labels["ud_handler"])
    t.gate(m, TIMER[1], prog.labels["timer_handler"])
    cr3 = identity_map_4k(m._raw_mem, PD, 1 << 20)
    raw = m._raw_mem
    raw[CODE_FRAME:CODE_FRAME + 0x1000] = raw[0x1000:0x2000]
    pte1 = PD + 0x1000 + 4 * 1                      # the first page table, entry 1
    raw[pte1:pte1 + 4] = np.frombuffer((CODE_FRAME | 0x7).to_bytes(4, "little"), np.uint8)
    m._flush_decoded()
    enable_paging(m, cr3)
    return m, prog


def _phys(lin):
    return CODE_FRAME + (lin - 0x1000) if 0x1000 <= lin < 0x2000 else lin


def _expected(m, timer_entry):
    """Records of a stepped run of ``m`` (no trace): (pc, phys, mode, opword, next).

    A one-step run may deliver the timer's interrupt before its instruction (then the
    instruction is the handler's first) or after it (then EIP is on the handler's entry
    and the instruction's next EIP is the one the delivery pushed)."""
    st, dc = m._st, m._dc
    out = []
    for _ in range(100_000):
        n0, irq0 = m.counters["instructions"], m.counters["irqs"]
        cpl0, iopl0 = int(st[L.CPL]), int(st[L.EFLAGS]) & 0x3000
        pc0 = (int(st[L.SEG_BASE + L.SREG_CS]) + int(st[L.EIP])) & L.MASK32
        ev = m.step()
        if m.counters["instructions"] == n0 + 1:
            nxt = (int(st[L.SEG_BASE + L.SREG_CS]) + int(st[L.EIP])) & L.MASK32
            pc, cpl = pc0, cpl0
            if m.counters["irqs"] != irq0:
                if nxt == timer_entry:       # after the instruction: its next EIP was pushed
                    nxt = int.from_bytes(m.read_linear(int(st[L.ESP]), 4), "little")
                else:                        # before it: the handler's first instruction
                    pc = (int(st[L.SEG_BASE + L.SREG_CS]) + int(st[L.INSN_EIP])) & L.MASK32
                    cpl = 0
            pa = m._translate_page(pc, False, cpl == 3)
            row = pa & (L.DC_ENTRIES - 1)
            assert dc[D.F_TAG, row] == pa
            opw = (int(dc[D.F_OP, row]) | int(dc[D.F_LEN, row]) << 8
                   | (int(dc[D.F_REG, row]) & 7) << 12 | int(dc[D.F_OPC, row]) << 16)
            mode = (L.ITRACE_KIND_INSN << 28) | cpl | iopl0 | L.ITRACE_MODE_CS32
            out.append((pc, pa, mode, opw, nxt))
        if ev is not None and ev.kind == "halt":
            return out
    raise AssertionError("the program did not halt")


def _traced(m, capacity=4096):
    got = []
    m.set_instruction_trace(BUF, capacity, lambda: got.append(m.take_instruction_trace()))
    ev = m.run(1_000_000)
    got.append(m.take_instruction_trace())
    return ev, np.concatenate(got)


def test_records_match_a_stepped_run_exactly():
    want_m, prog = _machine()
    want = _expected(want_m, prog.labels["timer_handler"])
    m, _ = _machine()
    ev, recs = _traced(m)
    assert ev.kind == "halt"
    insn = recs[(recs[:, 2] >> 28) == L.ITRACE_KIND_INSN]
    got = [(int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[5])) for r in insn]
    assert got == want
    # the program's pieces are all there: a fault (no record for UD2), interrupts, IOPL 3
    assert m.counters.exceptions[6] == 1 and m.counters["irqs"] >= 3
    assert all(r[3] & 0xFF != D.OP_UD2 for r in got)        # it faulted: never retired
    assert any((r[2] >> 12) & 3 == 3 for r in got)
    assert all(r[1] == _phys(r[0]) for r in got) and got[0][1] == CODE_FRAME   # mapped
    assert sum(1 for r in got if r[3] & 0xFF == D.OP_STRING) == 1     # REP MOVSB: one record
    # the same machine state as the untraced stepped twin, but for the trace's own slots
    # and the buffer
    a, b = m._st.copy(), want_m._st.copy()
    for s in (a, b):
        s[L.ITRACE:L.ITRACE + L.ITRACE_SIZE] = 0
        s[L.EXIT_INFO:L.EXIT_INFO + L.EXIT_INFO_SIZE] = 0
        s[L.ATTN] = 0
        s[L.COUNTERS + C_EXITS] = s[L.COUNTERS + C_EXIT_KIND + EXIT_BUDGET] = 0   # the steps
    diff = np.nonzero(a != b)[0]
    assert list(diff) == [], [(int(i), int(a[i]), int(b[i])) for i in diff[:5]]
    mem_a, mem_b = m._raw_mem.copy(), want_m._raw_mem.copy()
    mem_a[BUF:BUF + 4096 * 32] = mem_b[BUF:BUF + 4096 * 32] = 0
    assert np.array_equal(mem_a, mem_b)


def test_code_written_record_before_the_store_that_made_it():
    m, prog = _machine()
    ev, recs = _traced(m)
    kinds = recs[:, 2] >> 28
    cw = np.nonzero(kinds == L.ITRACE_KIND_CODE_WRITTEN)[0]
    patch = prog.labels["patch"]
    # the REP MOVSB writes dst (on the code's page: traced) and the patch store: each one
    # record, the REP's 100 bytes coalesced into one
    assert [(int(recs[i, 1]), int(recs[i, 3])) for i in cw] == [
        (_phys(prog.labels["dst"]), 100), (_phys(patch + 1), 1)]
    # each is followed by the record of the instruction whose store it was
    for i in cw:
        assert recs[i + 1, 2] >> 28 == L.ITRACE_KIND_INSN
    assert recs[cw[1] + 1, 5] == patch and recs[cw[0] + 1, 3] & 0xFF == D.OP_STRING


def test_a_full_buffer_is_drained_and_nothing_is_lost():
    m, _ = _machine()
    calls = []

    def drain():
        calls.append(m.take_instruction_trace())

    m.set_instruction_trace(BUF, 2 * L.ITRACE_RESERVE, drain)
    ev = m.run(1_000_000)
    rest = m.take_instruction_trace()
    recs = np.concatenate(calls + [rest])
    n_insn = int(((recs[:, 2] >> 28) == L.ITRACE_KIND_INSN).sum())
    assert ev.kind == "halt" and n_insn == m.counters["instructions"]
    # each drain found more than capacity - reserve records, never more than capacity
    assert all(L.ITRACE_RESERVE < len(c) <= 2 * L.ITRACE_RESERVE for c in calls)
    assert len(calls) >= n_insn // (2 * L.ITRACE_RESERVE)
    # the drains do not show: no exit counted, the same as a run with a large buffer
    m2, _ = _machine()
    _, recs2 = _traced(m2)
    assert np.array_equal(recs, recs2)
    assert m.counters.to_dict() == m2.counters.to_dict()


def test_off_by_default_and_without_effect():
    m1, _ = _machine()
    assert m1.instruction_trace_capacity == 0 and m1._st[L.ITRACE_CAP] == 0
    m1.run(1_000_000)
    assert m1._st[L.ITRACE_COUNT] == 0 and not m1._raw_mem[BUF:BUF + 4096].any()
    m2, _ = _machine()
    m2.set_instruction_trace(BUF, 4096, lambda: None)
    m2.clear_instruction_trace()
    m2.run(1_000_000)
    assert np.array_equal(m1._st, m2._st) and np.array_equal(m1._raw_mem, m2._raw_mem)
    assert np.array_equal(m1._pg, m2._pg)


def test_traced_run_equals_untraced_with_blocks():
    """A traced run (blocks off while tracing) ends as the untraced one with blocks on."""
    m1, _ = _machine()
    m1.run(1_000_000)
    m2, _ = _machine()
    _traced(m2)
    for s in (m1._st, m2._st):
        s[L.ITRACE:L.ITRACE + L.ITRACE_SIZE] = 0
    assert m1.counters.to_dict() == m2.counters.to_dict()
    assert m1.cpu.eax == m2.cpu.eax and m1.cpu.edx == m2.cpu.edx


def test_bad_arguments():
    m, _ = _machine()
    with pytest.raises(ValueError, match="aligned"):
        m.set_instruction_trace(BUF + 4, 100, lambda: None)
    with pytest.raises(ValueError, match="outside"):
        m.set_instruction_trace(BUF, 0, lambda: None)
    with pytest.raises(ValueError, match="do not fit"):
        m.set_instruction_trace((1 << 20) - 64 * 32, 100, lambda: None)
    with pytest.raises(TypeError, match="callable"):
        m.set_instruction_trace(BUF, 100, None)
    m.set_instruction_trace(BUF, 64, lambda: None)       # takes nothing
    with pytest.raises(RuntimeError, match="must take them"):
        m.run(10_000)


# ---- invisible on random programs (tests/test_blocks.py's generator and configurations)
@pytest.mark.parametrize("config", ["flat", "paging, two-entry TLB", "paging at ring 3"])
def test_tracing_is_invisible_on_random_programs(config):
    """The same random programs (stores into their code frame, calls, faults at the end)
    with blocks on, untraced, and traced, in equal random slices: the same events, the same
    state -- registers, counters, TLB, page words but PG_TRACED, memory but the buffer --
    and one instruction record per instruction retired."""
    import random
    from test_blocks import CONFIGS, make, random_program
    from hvsim.cpu.blocks import F_BLK
    rng = random.Random(f"trace-{config}")
    buf, cap = 0xC00000, 2 * L.ITRACE_RESERVE
    for _ in range(15):
        prog = assemble(random_program(rng))
        a, b = make(prog, 2, **CONFIGS[config]), make(prog, 2, **CONFIGS[config])
        got = []
        b.set_instruction_trace(buf, cap, lambda: got.append(b.take_instruction_trace()))
        for _ in range(400):
            n = rng.choice([1, 2, 3, 7, 20, 64, 1000])
            ea, eb = a.run(n), b.run(n)
            assert ea == eb
            if ea.kind != "budget":
                break
        got.append(b.take_instruction_trace())
        sa, sb = a._st.copy(), b._st.copy()
        for s in (sa, sb):
            s[L.ITRACE:L.ITRACE + L.ITRACE_SIZE] = 0
            s[L.ATTN] = s[L.INSN_ROW] = s[L.CFG_BLOCK_HOT] = 0
        assert np.flatnonzero(sa != sb).tolist() == []
        assert np.array_equal(a._tlb, b._tlb)
        assert np.array_equal(a._pg, b._pg & ~L.PG_TRACED)
        ma, mb = a._raw_mem.copy(), b._raw_mem.copy()
        mb[buf:buf + cap * L.ITRACE_RECORD_BYTES] = 0
        assert np.array_equal(ma, mb)
        assert np.array_equal(a._dc[:F_BLK], b._dc[:F_BLK])
        recs = np.concatenate(got)
        assert int(((recs[:, 2] >> 28) == L.ITRACE_KIND_INSN).sum()) == b.counters["instructions"]


# An instruction across two linear pages whose second page maps to a frame that holds no
# other code: JMP rel32 at 1FFCH ends on linear page 2000H, mapped here to FAR_FRAME (not
# 2000H, the frame after the first page's). Its record names FAR_FRAME (w7), and the
# store into its last byte (linear 2000H) is a code-written record of FAR_FRAME.
FAR_FRAME = 0x9000
ACROSS = """
start:
    jmp cross
back:
    mov byte [0x2000], 0xFF     ; the rel32's top byte: the same value, still a code write
    hlt
    org 0x1FFC
cross:
    jmp back                    ; E9 rel32 (back is far below): 1FFCH-2000H
"""


def test_an_instruction_across_two_pages_traces_its_second_frame():
    prog = assemble(ACROSS, origin=0x1000)
    m = Machine(exceptions="guest", memory=1 << 20)
    install(m)
    m.load(prog)
    raw = m._raw_mem
    cr3 = identity_map_4k(raw, PD, 1 << 20)
    raw[FAR_FRAME:FAR_FRAME + 0x1000] = raw[0x2000:0x3000]
    raw[0x2000:0x3000] = 0
    pte2 = PD + 0x1000 + 4 * 2                      # the first page table, entry 2
    raw[pte2:pte2 + 4] = np.frombuffer((FAR_FRAME | 0x7).to_bytes(4, "little"), np.uint8)
    m._flush_decoded()
    enable_paging(m, cr3)
    ev, recs = _traced(m)
    assert ev.kind == "halt" and raw[FAR_FRAME] == 0xFF
    insn = recs[(recs[:, 2] >> 28) == L.ITRACE_KIND_INSN]
    cross = prog.labels["cross"]
    (jmp,) = [r for r in insn if r[0] == cross]
    assert (jmp[1], jmp[3] >> 8 & 0xF, jmp[7]) == (cross, 5, FAR_FRAME)
    assert all(r[7] == 0 for r in insn if r[0] != cross)     # the others stay in a page
    cw = recs[(recs[:, 2] >> 28) == L.ITRACE_KIND_CODE_WRITTEN]
    assert [(int(r[1]), int(r[3])) for r in cw] == [(FAR_FRAME, 1)]
