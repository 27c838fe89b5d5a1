"""The emulation monitor (hvsim/emulation): the models' counts on programs whose counts are
known by construction, the guest state against Native's, snapshots, bad arguments.

Each program's comment derives its counts; TB names: A the first TB, B the loop body...
"""
import numpy as np
import pytest

from hvsim import Machine, assemble
from hvsim.emulation import model as M
from hvsim.emulation.monitor import (Emulator, DynamicTranslator, MONITOR_PAGES, GUEST_RAM,
                                     TLB_GEOMETRY)
from hvsim.monitors import Native
from hvsim.monitors.base import STATS, EMU_STATS

N = 50
K = 7

# A = [mov ecx, N; jmp top] (a direct jump: slot 0), B = the body at top (ends at JNZ:
# slot 0 falls through, slot 1 is top), C = [hlt].
# Entries: A (lookup, miss); A->B (slot 0 unpatched: lookup, miss, patch); B->B the first
# time (slot 1 unpatched: lookup, jump-cache hit, patch); B->B N-2 more times (chained);
# B->C (slot 0: lookup, miss, patch).
LOOP = f"""
    mov ecx, {N}
    jmp top
top:
    add eax, ecx
    xor ebx, eax
    dec ecx
    jnz top
    hlt
"""

# The same loop with its body across a page end: B = [add, xor, add, dec] ends before the
# JNZ, which starts on the next page; B2 = [jnz]. Neither may chain to the other (the
# destination is not on the page where the jumping TB starts): every B->B2 and B2->B
# goes through the jump cache. Lookups: A, A->B, N x B->B2, N-1 x B2->B, B2->C = 2N + 2; misses A, B, B2,
# C; chained only A->B and B2->C (same page): 2 patches, no chain hit.
LOOP_ACROSS = f"""
    mov ecx, {N}
    jmp top
    org 0x1FF8
top:
    add eax, ecx
    xor ebx, eax
    add edx, 1
    dec ecx
    jnz top
    hlt
"""

# A = [mov ecx, N; call f], F = [add eax, 1; ret], R = [dec ecx; jnz top] (after the
# call), T = [call f] at top, C = [hlt]. Every RET goes through the jump cache: the first
# misses (R is new), the other N-1 hit; T->F the first time is a jump-cache hit too.
# Chained: A->F, R->T, T->F, R->C patched once each; R->T and T->F chain N-2 times each.
RET_LOOP = f"""
    mov ecx, {N}
top:
    call f
    dec ecx
    jnz top
    hlt
f:
    add eax, 1
    ret
"""

# f runs at IOPL 0, then at IOPL 3: two TBs for the same bytes (QEMU's flags hold IOPL),
# one Bochs trace (its fetch mode does not).
IOPL_TWICE = """
    call f
    push 0x3002
    popf
    call f
    hlt
f:
    add eax, 1
    ret
"""

# The loop calls fn (on the next page), then rewrites fn's immediate: each store
# invalidates the one TB on fn's page (K invalidations) and fn is translated again at the
# next call: K translations of fn, plus A, R, T, C. A store into bytes of fn's page that
# hold no code (STORE = 0x2400, also another 128-byte region) invalidates nothing: QEMU
# compares byte ranges, Bochs regions; fn is translated once (A, fn, R, T, C: 5 TBs).
SMC_LOOP = """
    mov ecx, {k}
top:
    call fn
    mov byte [{store}], cl
    dec ecx
    jnz top
    hlt
    org 0x2000
fn:
    mov al, 0
    add ebx, eax
    ret
"""


def _emu(src, mode="translate", **kw):
    emu = Emulator(program=assemble(src, origin=0x1000), mode=mode, **kw)
    ev = emu.run(1_000_000)
    assert ev.kind == "halt"
    return emu


def _pick(c, *names):
    return tuple(c[n] for n in names)


def test_loop_chains_to_itself():
    c = _emu(LOOP).counters
    assert _pick(c, "tb_translated", "tb_lookups", "tb_misses", "tb_jc_hits", "tb_hash_hits",
                 "tb_chain_hits", "tb_chains_patched") == (3, 4, 3, 1, 0, N - 2, 3)
    assert c["tb_insns_translated"] == 2 + 4 + 1
    assert c["tb_insns_run"] == 2 + 4 * N + 1 == c["instructions"]
    assert c["tb_invalidated"] == c["tb_flushes"] == 0


# B = [add; xor; add; jmp target] at 1FF8H: its JMP starts at 1FFFH and ends on page
# 2000H, so B spans two pages; its target T = [dec; jnz top] at 2010H is on B's second
# page, not on the page where B starts: not chained (QEMU's translator_use_goto_tb). The
# counts are LOOP_ACROSS's: lookups A, A->B, N x B->T, N-1 x T->B, T->C = 2N + 2; misses
# A, B, T, C; patched only A->B (page 1000H) and T->C (page 2000H).
JUMP_TO_SECOND_PAGE = f"""
    mov ecx, {N}
    jmp top
    org 0x1FF8
top:
    add eax, ecx
    xor ebx, eax
    add edx, 1
    jmp target
    org 0x2010
target:
    dec ecx
    jnz top
    hlt
"""


def test_a_jump_to_the_second_page_of_a_tb_is_not_chained():
    emu = _emu(JUMP_TO_SECOND_PAGE)
    b = {t["pc"]: t for t in emu.tb_table()}[0x1FF8]
    assert b["pages"] == [1, 2] and b["end"] == "jump" and b["chained"] == [None, None]
    assert _pick(emu.counters, "tb_translated", "tb_lookups", "tb_misses", "tb_jc_hits",
                 "tb_chain_hits", "tb_chains_patched") == (4, 2 * N + 2, 4, 2 * N - 2, 0, 2)


def test_loop_across_a_page_is_not_chained():
    c = _emu(LOOP_ACROSS).counters
    assert _pick(c, "tb_translated", "tb_lookups", "tb_misses", "tb_jc_hits",
                 "tb_chain_hits", "tb_chains_patched") == (4, 2 * N + 2, 4, 2 * N - 2, 0, 2)
    tbs = {t["pc"]: t for t in _emu(LOOP_ACROSS).tb_table()}
    assert tbs[0x1FF8]["icount"] == 4 and tbs[0x1FF8]["end"] == "fall-through"
    assert tbs[0x2000]["icount"] == 1 and tbs[0x2000]["chained"] == [0x2002, None]


def test_returns_go_through_the_jump_cache():
    c = _emu(RET_LOOP).counters
    assert _pick(c, "tb_translated", "tb_lookups", "tb_misses", "tb_jc_hits",
                 "tb_chain_hits", "tb_chains_patched") == (5, N + 5, 5, N, 2 * (N - 2), 4)


def test_iopl_selects_another_tb_but_not_another_trace():
    prog = assemble(IOPL_TWICE, origin=0x1000)
    emu = Emulator(program=prog, mode="translate")
    emu.run()
    f = prog.labels["f"]
    at_f = [(t["cpl"], t["iopl"], t["icount"]) for t in emu.tb_table() if t["pc"] == f]
    assert at_f == [(0, 0, 2), (0, 3, 2)]
    c = emu.counters
    # Bochs: one lookup per trace entered (traces end at CALL, RET and POPF): [call f]
    # (miss), F (miss), [push; popf] after the RET (miss), [call f] after the POPF (a new
    # pc: miss), F again (the same trace at IOPL 3: hit), [hlt] after the RET (miss)
    assert (c["bx_lookups"], c["bx_misses"], c["bx_hits"]) == (6, 5, 1)


def test_interpret_mode_traces_miss_once_then_hit():
    emu = _emu(LOOP, mode="interpret")
    c = emu.counters
    assert _pick(c, "bx_lookups", "bx_misses", "bx_hits", "bx_decoded", "bx_interpreted") == (
        N + 2, 3, N - 1, 2 + 4 + 1, 2 + 4 * N + 1)
    s = emu.stats
    assert s["insns_interpreted"] == 2 + 4 * N + 1 and s["insns_translated"] == 0
    c = _emu(LOOP_ACROSS, mode="interpret").counters
    assert _pick(c, "bx_lookups", "bx_misses", "bx_hits") == (2 * N + 2, 4, 2 * N - 2)


def test_self_modifying_code_invalidates_per_byte_range_and_per_region():
    src = SMC_LOOP.format(k=K, store="fn + 1")
    c = _emu(src).counters
    assert c["tb_invalidated"] == K and c["tb_translated"] == K + 4
    assert c["bx_smc"] == K and c["bx_traces_invalidated"] == K
    assert c["bx_misses"] == 4 + K          # fn decoded again after each invalidation
    # bytes of fn's page with no code, in another 128-byte region: neither model reacts
    c = _emu(SMC_LOOP.format(k=K, store="0x2400")).counters
    assert c["code_writes"] == K
    assert c["tb_invalidated"] == 0 and c["tb_translated"] == 5
    assert c["bx_smc"] == 0 and c["bx_traces_invalidated"] == 0 and c["bx_misses"] == 5


# Code in two 128-byte regions of one page: f1 at 2000H (region 0), f2 at 2100H (region
# 2). Each pass calls both, then rewrites f2's immediate (2101H, region 2). Bochs
# (traceMask & mask) and QEMU (byte ranges) drop only f2's trace or TB; f1's stays and
# hits on every pass after the first. Traces and TBs: A = [mov ecx; call f1], F1, R1 =
# [call f2], F2, R2 = [store; dec; jnz], T = [call f1] (from the second pass), C = [hlt]:
# F2 is made on each of the K passes, the other six once: K + 6, and K invalidations.
# Bochs looks a trace up at each of its five entries per pass (A or T, F1, R1, F2, R2)
# and at C: 5K + 1 lookups. Dropping every trace of the page would lose F1 too (2K + 5).
TWO_REGIONS = """
    mov ecx, {k}
top:
    call f1
    call f2
    mov byte [f2 + 1], cl
    dec ecx
    jnz top
    hlt
    org 0x2000
f1:
    add ebx, 1
    ret
    org 0x2100
f2:
    mov al, 0
    add ebx, eax
    ret
"""


@pytest.mark.parametrize("mode", ["interpret", "translate"])
def test_a_store_drops_only_the_code_it_meets(mode):
    c = _emu(TWO_REGIONS.format(k=K), mode=mode).counters
    assert c["code_writes"] == K
    if mode == "interpret":
        assert (c["bx_smc"], c["bx_traces_invalidated"]) == (K, K)
        assert (c["bx_lookups"], c["bx_misses"]) == (5 * K + 1, K + 6)
    else:
        assert (c["tb_invalidated"], c["tb_translated"], c["tb_misses"]) == (K, K + 6, K + 6)


# A TB across two pages: g at 2FFAH is [mov eax (2FFAH-2FFEH), mov ebx (2FFFH-3003H)]
# (the next instruction, RET at 3004H, starts on another page: TB H). STORE into the
# immediate of mov ebx (3002H, the TB's part on page 3000H) invalidates G on each of the
# K passes; into 3005H (page 3000H, after H's one byte) or 2FF0H (before G) nothing.
# TBs: A = [mov ecx; call g], G, H, R = [store; dec; jnz], T = [call g], C = [hlt].
ACROSS_SMC = """
    mov ecx, {k}
top:
    call g
    mov byte [{store}], cl
    dec ecx
    jnz top
    hlt
    org 0x2FFA
g:
    mov eax, 0x11223344
    mov ebx, 0x55667788
    ret
"""


@pytest.mark.parametrize("store, invalidated, translated", [
    (0x3002, K, K + 5),         # G made on each of the K passes, the other five TBs once
    (0x3005, 0, 6), (0x2FF0, 0, 6)])
def test_both_parts_of_a_tb_across_two_pages_are_checked(store, invalidated, translated):
    emu = _emu(ACROSS_SMC.format(k=K, store=hex(store)))
    c = emu.counters
    assert c["code_writes"] == K
    assert (c["tb_invalidated"], c["tb_translated"]) == (invalidated, translated)
    # G: 5 + 5 bytes on pages 2 and 3; invalidated by the last store when it is hit
    g = [(t["icount"], t["size"], t["pages"]) for t in emu.tb_table() if t["pc"] == 0x2FFA]
    assert g == ([] if invalidated else [(2, 10, [2, 3])])


def test_a_full_code_buffer_is_flushed():
    c = _emu(LOOP, max_tbs=2).counters
    # A, B fill it; C (the HLT) flushes it first
    assert c["tb_flushes"] == 1 and c["tb_translated"] == 3 and c["tb_misses"] == 3


def test_guest_state_and_counters_equal_native():
    prog = assemble(SMC_LOOP.format(k=K, store="fn + 1"), origin=0x1000)
    nat = Native(machine=Machine(memory=GUEST_RAM, exceptions="guest"), program=prog)
    ev_n = nat.run()
    for mode in ("interpret", "translate"):
        m = Machine(memory=GUEST_RAM + MONITOR_PAGES * 4096, exceptions="guest",
                    tlb=TLB_GEOMETRY[mode])
        emu = Emulator(machine=m, program=prog, mode=mode)
        ev = emu.run()
        assert (ev.kind, ev.eip) == (ev_n.kind, ev_n.eip)
        regs = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eip", "eflags")
        assert [getattr(emu.vcpu, r) for r in regs] == [getattr(nat.vcpu, r) for r in regs]
        assert bytes(m.memory[:GUEST_RAM]) == bytes(nat.machine.memory[:GUEST_RAM])
        assert emu.counters["instructions"] == nat.counters["instructions"]


def test_the_guest_cannot_reach_the_trace_buffer():
    emu = _emu_run("mov eax, [0x100010]\nhlt")
    assert emu.kind == "bus_error"


def _emu_run(src):
    return Emulator(program=assemble(src, origin=0x1000)).run()


def test_stats_and_names():
    assert set(EMU_STATS) <= set(STATS)
    assert Native().stats.keys() == Emulator().stats.keys()
    assert all(Native().stats[k] == 0 for k in EMU_STATS)
    assert Emulator.name == "emulate" and DynamicTranslator.name == "dbt"
    d = DynamicTranslator(program=assemble(LOOP, origin=0x1000))
    d.run()
    assert d.mode == "translate" and d.stats["insns_run_translated"] == 2 + 4 * N + 1
    assert d.stats["insns_translated"] == 7 and d.stats["tb_slow_lookups"] == 3
    assert d.describe()["counters"]["tb_translated"] == 3
    # counters = the machine's (its decode cache too) + "monitor <stat>" + device_io + the
    # model's, as the monitor's docstring lists them
    mc, c = d.model_counters, d.counters
    assert set(mc) == set(M.COUNTERS) | {"soft_tlb_hits", "soft_tlb_misses"}
    assert c["decode_hits"] + c["decode_misses"] > 0 and "decode_hits" not in mc
    assert set(c) == (set(d.machine.counters.to_dict()) | {f"monitor {k}" for k in d.stats}
                      | {"device_io"} | set(mc))
    # the soft TLB is the machine's, in QEMU's (256 x 1) or Bochs's (1024 x 1) geometry
    assert d.machine._tlb_geometry == (256, 1, 1)
    assert Emulator(mode="interpret").machine._tlb_geometry == (1024, 1, 1)
    r = __import__("hvsim.workloads", fromlist=["run"]).run("wss", "dbt")
    c = r.monitor.counters
    assert c["soft_tlb_misses"] == c["tlb_misses"] > 0
    assert r.monitor.stats["soft_tlb_fills"] == c["tlb_misses"]


def test_snapshot_restore_round_trip():
    emu = Emulator(program=assemble(SMC_LOOP.format(k=K, store="fn + 1"), origin=0x1000),
                   mode="translate")
    emu.run(40)
    snap = emu.snapshot()
    emu.run()
    first = (emu.counters, emu.tb_table())
    emu.restore(snap)
    assert emu.counters["tb_translated"] < first[0]["tb_translated"]
    emu.run()
    assert (emu.counters, emu.tb_table()) == first


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        Emulator(mode="jit")
    with pytest.raises(ValueError, match="max_tbs"):
        Emulator(max_tbs=0)
    with pytest.raises(TypeError, match="Machine"):
        Emulator(machine="m")
    with pytest.raises(ValueError, match="64 KiB"):
        Emulator(machine=Machine(memory=MONITOR_PAGES * 4096 + 4096))
    with pytest.raises(TypeError, match="snapshot"):
        Emulator().restore(("x",))
    with pytest.raises(TypeError, match="same"):
        Emulator(max_tbs=4).restore(Emulator().snapshot())


def test_model_constants():
    assert M.DEFAULT_MAX_TBS == (32 << 20) // 150
    assert M.TB_JMP_CACHE_SIZE == 4096 and M.BX_ICACHE_ENTRIES == 65536
    # QEMU's jump-cache hash keeps 6 bits of the page, 6 of the offset
    assert M._jc_hash.py_func(0x1234) == (((0x1234 ^ (0x1234 >> 6)) >> 6) & 0xFC0) | ((0x1234 ^ (0x1234 >> 6)) & 0x3F)
    assert np.all(M.END_OF_OP[:, 0][[0]] == 0)
    # the direct jumps end a TB with one slot, the conditional branches with two
    from hvsim.cpu import decode as D
    assert M.END_OF_OP[D.OP_JMP_REL, 0] == M.END_OF_OP[D.OP_CALL_REL, 0] == M.END_DIRECT
    assert {M.END_OF_OP[op, 0] for op in (D.OP_JCC, D.OP_LOOP, D.OP_JECXZ)} == {M.END_COND}


def _state_writes(fn, seen=None):
    """The names among _WATCHED that ``fn`` (a kernel of hvsim) or any hvsim function it
    calls, transitively, uses to index an assignment to ``st[...]``: read from the
    source with ast, so the handlers themselves say what they can change."""
    import ast
    import inspect
    import textwrap
    fn = getattr(fn, "py_func", fn)
    seen = {} if seen is None else seen
    if fn in seen:
        return seen[fn]
    seen[fn] = set()
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError):
        return set()
    g, out = getattr(fn, "__globals__", {}), set()
    for node in ast.walk(tree):
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AugAssign) else [])
        for t in targets:
            if isinstance(t, ast.Subscript) and getattr(t.value, "id", None) == "st":
                out |= {getattr(n, "id", getattr(n, "attr", None))
                        for n in ast.walk(t.slice)} & _WATCHED
        if isinstance(node, ast.Call):
            f = node.func
            callee = (g.get(f.id) if isinstance(f, ast.Name) else
                      getattr(g.get(f.value.id), f.attr, None)
                      if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                      else None)
            inner = getattr(callee, "py_func", callee)
            if callable(inner) and getattr(inner, "__module__", "").startswith("hvsim"):
                out |= _state_writes(callee, seen)
    seen[fn] = out
    return out


#: where a handler changes where or how code runs: EIP, CS (its selector, base...) and
#: CPL, and the static state QEMU's TB flags or the fetch depend on: CR0 (PE, MP/EM/TS),
#: CR3, CR4, and the descriptor tables' bases (LGDT, LIDT)
_WATCHED = {"EIP", "CPL", "SREG_CS", "CR0", "CR3", "CR4", "GDTR_BASE", "IDTR_BASE"}


def test_every_op_that_changes_where_or_how_code_runs_ends_a_tb():
    """END_OF_OP against the handlers' own code (hvsim/cpu/table.py HANDLERS): each op
    whose handler can write EIP, CS, CPL, a control register or a descriptor-table base
    ends a TB; each op the model takes for a branch (direct, conditional, indirect)
    writes EIP. The one exception: a REP string step that has not finished sets EIP back
    to its own address, and writes no trace record (hvsim/cpu/itrace.py)."""
    from hvsim.cpu import decode as D
    from hvsim.cpu.table import HANDLERS
    names = {v: k for k, v in vars(D).items() if k.startswith("OP_")}
    writers = {op: _state_writes(h) for op, h in HANDLERS.items()}
    assert writers[D.OP_JMP_REL] == {"EIP"} and "CPL" in writers[D.OP_IRET]   # the oracle sees
    assert "CR0" in writers[D.OP_MOV_CR] and "IDTR_BASE" in writers[D.OP_GRP7]
    missing = [names[op] for op, w in writers.items()
               if w and op != D.OP_STRING and not M.END_OF_OP[op].any()]
    assert missing == []
    branches = (M.END_DIRECT, M.END_COND, M.END_INDIRECT)
    assert all("EIP" in writers[op] for op in range(D.N_OPS) if op in writers
               and any(e in branches for e in M.END_OF_OP[op]))
    # FF /r: the CALL and JMP forms (near and far) are the ones that end a TB, in the
    # order the handler's own comment lists the forms
    import inspect
    grp5 = HANDLERS[D.OP_GRP5]
    (line,) = [x for x in inspect.getsource(getattr(grp5, "py_func", grp5)).splitlines()
               if x.startswith("def op_grp5")]
    forms = line.split("# FF:")[1].split()
    assert len(forms) == 7 and list(M.END_OF_OP[D.OP_GRP5, :7] != M.END_NONE) == [
        f.startswith(("CALL", "JMP")) for f in forms]


def test_cost_events_come_from_the_model():
    from hvsim.cost.usage import usage_of
    u = usage_of(_emu(LOOP, mode="translate"))
    assert (u["instruction"], u["translated"], u["run_translated"], u["tb_lookup"],
            u["interpreted"]) == (2 + 4 * N + 1, 7, 2 + 4 * N + 1, 3, 0)
    u = usage_of(_emu(LOOP, mode="interpret"))
    assert (u["interpreted"], u["translated"], u["soft_tlb_fill"]) == (2 + 4 * N + 1, 0, 0)


def test_doctests():
    import doctest
    from hvsim.emulation import monitor
    assert doctest.testmod(monitor).failed == 0


@pytest.mark.parametrize("mode", ["interpret", "translate"])
def test_the_teaching_kernel_as_natively(mode):
    """Lesson 02's kernel (timer, system calls from ring 3, its POPF critical sections):
    after the same steps the emulated machine's registers, RAM, console and instruction
    counts are the bare machine's."""
    from hvsim.guests import teaching_kernel
    from hvsim.lessons.l02_hole import run_native
    from hvsim.rings.setup import install, STACK_SPACING
    steps = 60_000
    nat = run_native(steps)
    emu = Emulator(mode=mode)
    m, ram = emu.machine, emu.ram
    tables = install(m, ring0_stack=ram, ring1_stack=ram - STACK_SPACING,
                     ring2_stack=ram - 2 * STACK_SPACING)
    m.load(teaching_kernel(KCODE=tables.code(0)))
    tables.enter(m, 0, m.cpu.eip, ram)
    emu.run(steps)
    regs = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eip", "eflags", "cpl")
    assert [getattr(m.cpu, r) for r in regs] == [getattr(nat.machine.cpu, r) for r in regs]
    assert bytes(m.memory[:ram]) == bytes(nat.machine.memory[:ram])
    assert emu.console == nat.console
    from hvsim.lessons.l02_hole import guest_dword
    assert guest_dword(emu, "calls") > 0 and guest_dword(emu, "ticks") > 0     # it did work
    c, n = emu.counters, nat.counters
    for k in ("instructions", "ring0", "ring3", "irqs", "software_interrupts"):
        assert c.get(k, 0) == n.get(k, 0), k
    # both models saw every instruction; the kernel runs at CPL 0 and 3: TBs of both
    assert c["bx_interpreted"] == c["tb_insns_run"] == c["instructions"]
    assert {t["cpl"] for t in emu.tb_table()} == {0, 3}


# The store and the code it patches share a page (and a 128-byte region): every store
# invalidates the TB or trace that made it, which ends after the store, and the patched
# one. A = [mov ecx; store] (killed by its own store), P = [mov al; dec; jnz] at patch,
# T = [store] at top, C = [hlt]: A once, P K times, T K-1 times, C once; each store
# invalidates what exists on the page then: A; then T and P, K-1 times.
SELF_SMC = """
    mov ecx, {k}
top:
    mov byte [patch + 1], cl
patch:
    mov al, 0
    dec ecx
    jnz top
    hlt
"""


def test_a_block_that_writes_its_own_page_ends_after_the_store():
    emu = _emu(SELF_SMC.format(k=K))
    c = emu.counters
    assert (c["tb_translated"], c["tb_invalidated"]) == (2 * K + 1, 2 * K - 1)
    assert (c["bx_misses"], c["bx_smc"], c["bx_traces_invalidated"]) == (2 * K + 1, K, 2 * K - 1)
    assert emu.vcpu.eax & 0xFF == 1          # the last patch (ecx = 1) ran


def test_an_exception_in_a_first_run_ends_the_tb_there():
    """The TB at top is learnt from its first run, which UD2's #UD cuts after INC: it
    holds one instruction, and falls through to UD2's address on every later run (where
    the #UD takes the guest to its handler again: a lookup, never a chain)."""
    from hvsim.rings.setup import install
    prog = assemble("""
        mov ecx, 3
        jmp top
    top:
        inc eax
        ud2
        dec ecx
        jnz top
        hlt
    ud_handler:
        add dword [esp], 2
        iret
    """, origin=0x1000)
    emu = Emulator(mode="translate")
    tables = install(emu.machine, ring0_stack=emu.ram)
    emu.machine.load(prog)
    tables.gate(emu.machine, 6, prog.labels["ud_handler"])
    assert emu.run().kind == "halt" and emu.vcpu.eax == 3
    tbs = {t["pc"]: t for t in emu.tb_table()}
    top = tbs[prog.labels["top"]]
    assert (top["icount"], top["end"], top["chained"]) == (1, "fall-through", [None, None])
    assert tbs[prog.labels["ud_handler"]]["end"] == "indirect"
    c = emu.counters
    # entries of the handler TB (3) and of the TB after UD2 (3, by IRET) are lookups
    assert c["tb_translated"] == 5 and c["exception_6"] == 3


# 32 one-RET stubs at 10000H, 11000H, ... are called (their frames now hold code), then a
# REP STOSB of RET bytes over all 32 pages: a code write per page, 4096 bytes per REP step,
# more than a 64-record buffer's free room: it is drained between two steps of the REP.
STUBS = 32
REP_OVER_CODE = """
    mov esi, 0x10000
stubs:
    call esi
    add esi, 0x1000
    cmp esi, 0x10000 + {n} * 0x1000
    jb stubs
    mov edi, 0x10000
    mov ecx, {n} * 0x1000
    mov al, 0xC3
    rep stosb
    mov esi, 0x10000
again:
    call esi
    add esi, 0x1000
    cmp esi, 0x10000 + {n} * 0x1000
    jb again
    hlt
""".format(n=STUBS) + "".join(f"    org {0x10000 + i * 0x1000:#x}\n    ret\n" for i in range(STUBS))


@pytest.mark.parametrize("mode", ["interpret", "translate"])
def test_the_model_does_not_depend_on_where_the_buffer_is_drained(mode):
    """A 64-record buffer, drained every few dozen records and in the middle of the REP,
    gives the counts of a 4096-record one."""
    prog = assemble(REP_OVER_CODE, origin=0x1000)
    runs = []
    for records in (64, 4096):
        emu = Emulator(program=prog, mode=mode, trace_records=records)
        assert emu.run(100_000).kind == "halt"
        runs.append(emu.model_counters)
    assert runs[0] == runs[1]
    c = runs[0]
    assert c["code_writes"] == STUBS
    # every stub's TB invalidated by the fill; Bochs's direct-mapped icache (pAddr & FFFFH)
    # kept only the last 16 stubs' traces (10000H and 20000H share an entry...), but every
    # page's write stamp still marks its RET: 32 SMC events, 16 traces to invalidate
    assert c["tb_invalidated"] == STUBS
    assert (c["bx_smc"], c["bx_traces_invalidated"]) == (STUBS, 16)
    with pytest.raises(ValueError, match="trace_records"):
        Emulator(trace_records=8)


def test_a_machine_made_elsewhere_is_taken_over():
    """As the command line builds it: 1 MiB, exceptions to the host: the monitor routes
    them to the guest's IDT and boots the program in ring 0 under its RAM."""
    prog = assemble("mov eax, [0]\nud2\nhlt\nud_handler: mov ebx, 7\nhlt", origin=0x1000)
    emu = Emulator(machine=Machine(memory=1 << 20), mode="translate")
    assert emu.ram == (1 << 20) - MONITOR_PAGES * 4096
    emu.boot(prog)
    assert (emu.vcpu.cpl, emu.vcpu.esp) == (0, emu.ram)
    emu.tables.gate(emu.machine, 6, prog.labels["ud_handler"])
    assert emu.run().kind == "halt" and emu.vcpu.ebx == 7      # #UD went to the guest


def test_the_cost_model_charges_the_emulators_work():
    from hvsim import cost
    from hvsim.cost.profiles import profile
    p = profile("prescott")
    emu = _emu(LOOP, mode="interpret")
    n = 2 + 4 * N + 1
    bd = cost.breakdown(emu, p)
    assert bd.categories["monitor work"] == n * p["interpreted"].cycles
    dbt = _emu(LOOP, mode="translate")
    bd = cost.breakdown(dbt, p)
    assert bd.categories["monitor work"] == (7 * p["translated"].cycles + n * p["run_translated"].cycles
                                             + 3 * p["tb_lookup"].cycles)
    assert bd.categories["guest instructions"] == n * p["instruction"].cycles


def test_a_tbs_second_page_is_the_frame_its_next_linear_page_maps_to():
    """ACROSS_SMC under paging, linear page 3000H mapped to frame 9000H: G's second page
    is frame 9 (not 3, the frame after 2FFAH's), and the store into the immediate of its
    MOV EBX (linear 3002H, physical 9002H) invalidates it on each of the K passes, as
    without paging: G made K times, A, H, R, T, C once."""
    from hvsim.warmup import enable_paging, identity_map_4k
    far, pd = 0x9000, 0x60000
    emu = Emulator(program=assemble(ACROSS_SMC.format(k=K, store="0x3002"), origin=0x1000),
                   mode="translate")
    raw = emu.machine._raw_mem
    cr3 = identity_map_4k(raw, pd, GUEST_RAM)
    raw[far:far + 0x1000] = raw[0x3000:0x4000]
    raw[0x3000:0x4000] = 0
    pte3 = pd + 0x1000 + 4 * 3
    raw[pte3:pte3 + 4] = np.frombuffer((far | 0x7).to_bytes(4, "little"), np.uint8)
    emu.machine._flush_decoded()
    enable_paging(emu.machine, cr3)
    assert emu.run().kind == "halt"
    c = emu.counters
    assert (c["code_writes"], c["tb_invalidated"], c["tb_translated"]) == (K, K, K + 5)
    # after the last store: H (RET at 3004H) is on frame 9 alone, G is gone
    pages = {t["pc"]: t["pages"] for t in emu.tb_table()}
    assert pages[0x3004] == [far >> 12] and 0x2FFA not in pages
