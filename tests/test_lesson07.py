"""Lesson 07, software virtual machines: every figure the notebook shows, against counts
known by construction or identities between independent counters."""
import re

import pytest

from hvsim import cost
from hvsim.bt.monitor import ADAPT_AFTER, TC_BASE
from hvsim.lessons import l02_hole as l02
from hvsim.lessons import l07_software_virtual_machines as l07


@pytest.fixture(scope="module")
def runs():
    return l07.seven_hosts()


@pytest.fixture(scope="module")
def bt():
    return l07.bt_kernel(30_000)


def test_the_kernel_freezes_only_under_trap_and_emulate_and_the_emulators_are_the_machine(runs):
    rows = {r["host"]: r for r in l07.host_rows(runs)}
    assert list(rows) == list(l07.HOSTS)
    assert {r["console"] for r in rows.values()} == {"kernel up\nhello from ring 3\n"}
    assert [h for h, r in rows.items() if r["froze"]] == ["shadow"]
    assert rows["shadow"]["ticks"] == 4                   # frozen at the first POPF (lesson 02)
    nat = rows["native"]
    # the emulators run the guest on the same machine at ring 0: the guest's figures are
    # exactly the bare machine's, and each instruction retired was interpreted (Bochs)
    for h in ("emulate", "dbt"):
        assert (rows[h]["ticks"], rows[h]["calls"]) == (nat["ticks"], nat["calls"])
        assert rows[h]["traps"] == rows[h]["exits"] == rows[h]["callouts"] == 0
    emu, dbt = runs["emulate"][0], runs["dbt"][0]
    assert rows["emulate"]["interpreted"] == emu.counters["instructions"]
    assert rows["dbt"]["translated"] == dbt.model_counters["tb_insns_translated"]
    # only VT-x exits, only BT calls out; raw mode's traps include every INT3 it emulated
    assert [h for h, r in rows.items() if r["exits"]] == ["vtx"]
    assert [h for h, r in rows.items() if r["callouts"]] == ["bt"]
    assert rows["bt"]["callouts"] == sum(runs["bt"][0].callouts.values())
    raw = runs["rawmode"][0].counters
    assert rows["rawmode"]["traps"] == raw["traps"] >= raw["int3_emulated"] > 0
    html = l07.host_table(list(rows.values()))
    assert html.count("FROZE") == 1 and html.count("<tr>") == 1 + len(l07.HOSTS)


def test_both_models_see_every_instruction_and_the_tb_table_is_what_survived(runs):
    dbt = runs["dbt"][0]
    c = dbt.model_counters
    assert c["bx_interpreted"] == c["tb_insns_run"] == dbt.counters["instructions"]
    # no flush: the TBs still valid are those translated and not invalidated
    assert c["tb_flushes"] == 0
    assert len(dbt.tb_table()) == c["tb_translated"] - c["tb_invalidated"]
    # every lookup that missed translated a TB; the rest hit the jump cache or the hash
    assert c["tb_misses"] == c["tb_translated"]
    assert c["tb_lookups"] == c["tb_jc_hits"] + c["tb_hash_hits"] + c["tb_misses"]
    # the kernel's stores into its code page go to its variables (`ticks` to `de_count`),
    # data after its last instruction: no TB holds their bytes, QEMU invalidates none;
    # they share a 128-byte region with the code's end, so Bochs reacts to some of them
    from hvsim.guests import teaching_kernel
    lab = teaching_kernel().labels
    data = (lab["ticks"], lab["de_count"] + 4)
    assert all(t["phys"] + t["size"] <= data[0] or t["phys"] >= data[1]
               for t in dbt.tb_table())
    assert c["tb_invalidated"] == 0
    assert lab["ticks"] >> 7 == (lab["idtr"] - 1) >> 7   # with puts' last byte (RET)
    assert c["code_writes"] > c["bx_smc"] > 0 and c["bx_traces_invalidated"] > 0
    rows = l07.model_rows(dbt)
    assert [k for k, _, _ in rows] == list(l07.MODEL_COUNTERS)
    assert all(v == c[k] for k, _, v in rows)


def test_the_same_code_at_cpl_0_and_3_is_two_tbs():
    demo = l07.cpl_demo()
    got = [(r["where"], r["cpl"]) for r in l07.tb_rows(demo, demo.labels)]
    # start's call, work, the IRET's block at CPL 0; user's call, work, INT 80H at CPL 3;
    # the handler's HLT at CPL 0
    assert got == [("start", 0), ("work", 0), ("start+0x5", 0), ("user", 3), ("work", 3),
                   ("user+0x5", 3), ("done", 0)]
    work = [r for r in demo.tb_table() if r["pc"] == demo.labels["work"]]
    assert len(work) == 2 and work[0]["phys"] == work[1]["phys"]
    # each call site is chained to the work TB of its own CPL
    tbs = l07.tb_rows(demo, demo.labels)
    assert tbs[0]["to"][0] == tbs[3]["to"][0] == "work"


@pytest.mark.parametrize("k", [5, 10])
def test_self_modifying_code_per_byte_range_and_per_region(k):
    rows = {r["program"]: r for r in l07.smc_rows(l07.smc_runs(k))}
    # 'immediate': each store invalidates the block that made it and the one it patched
    # (the first store only its own): 2k - 1 under both models, 2k + 1 blocks made
    imm = rows["immediate"]
    assert (imm["code_writes"], imm["bx_smc"], imm["bx_invalidated"], imm["tb_invalidated"],
            imm["tb_translated"]) == (k, k, 2 * k - 1, 2 * k - 1, 2 * k + 1)
    # 'beside': the counter is 1 KiB from the code: Bochs's regions hold no code there,
    # and no TB holds its bytes. Nothing is invalidated; 3 traces and 3 TBs, made once:
    # [mov ecx; store; dec; jnz] at start, [store; dec; jnz] at top, [hlt]
    bes = rows["beside"]
    assert (bes["code_writes"], bes["bx_smc"], bes["bx_invalidated"],
            bes["bx_misses"]) == (k, 0, 0, 3)
    assert (bes["tb_invalidated"], bes["tb_translated"]) == (0, 3)
    assert "<table" in l07.smc_table(list(rows.values()))
    with pytest.raises(ValueError, match="k must be"):
        l07.smc_runs(0)


def test_sys_ticks_translation_inline_and_callouts_highlighted(bt):
    lab = bt.labels
    rows = bt.listing(lab["sys_ticks"])
    firsts = {r[1]: r[4] for r in rows if r[0] is not None}
    assert firsts["pushfd"] == firsts["cli"] == firsts["popfd"] == "INLINE"
    assert firsts["iretd"] == "CALLOUT"
    # the two stores to the kernel's variables on the code page: adapted into callouts
    assert firsts[f"mov dword ptr [{lab['seen_ticks']:#x}], eax"] == "CALLOUT"
    assert firsts[f"inc dword ptr [{lab['calls']:#x}]"] == "CALLOUT"
    html = l07.bt_listing_table(bt)
    assert html.count("<tr>") == 1 + len(rows)
    n_callout = sum(r[4] == "CALLOUT" for r in rows)
    assert html.count('color:#b3261e;font-weight:bold;">CALLOUT') == n_callout
    n_inline = sum(r[4] == "INLINE" for r in rows)
    assert html.count('color:#1f5fbf;font-weight:bold;">INLINE') == n_inline


def test_adaptive_translation_traps_adapt_after_times_then_calls_out(bt):
    a = l07.adaptive_facts(bt)
    lab = bt.labels
    assert a["site"] == lab["timer"] and a["guest"] == f"inc dword ptr [{lab['ticks']:#x}]"
    assert (a["kind"], a["tc"]) == ("CALLOUT", "int 0xf1")
    assert a["trapped"] == a["adapt_after"] == ADAPT_AFTER
    # three sites adapted: the timer's inc, sys_ticks' two stores; each traps ADAPT_AFTER
    # times and calls out every later time it runs (the timer once a tick, sys_ticks' once
    # a call)
    ticks, calls = l02.guest_dword(bt, "ticks"), l02.guest_dword(bt, "calls")
    seen = lab["sys_ticks"] + 7                      # pushf (1) cli (1) mov eax, [ticks] (5)
    assert a["adapted_sites"] == [lab["timer"], seen, seen + 5]
    assert a["adapted_callouts"] == (ticks - ADAPT_AFTER) + 2 * (calls - ADAPT_AFTER)


def test_a_callout_stepped_is_the_kernels_lidt_from_the_tc():
    c = l07.step_to_callout()
    assert c["step"] == 0 and c["ring"] == 1 and c["eip"] == TC_BASE
    assert c["entry"].what == "callout" and "lidt" in c["action"]
    assert c["after"] == TC_BASE + 2                  # past the 2-byte INT 0xf1
    assert (c["ring_after"], c["entry"].what) == (1, "callout")
    # the kernel's first IRETD: the monitor emulates it from the TC (ring 1) to the user
    # program, which runs natively at ring 3 at its own address
    bt = c["monitor"]
    i = l07.step_to_callout(bt, contains="iretd")
    assert i["step"] > 0 and i["ring"] == 1 and i["eip"] >= TC_BASE
    from hvsim.guests import teaching_kernel
    assert i["ring_after"] == 3 and i["after"] == teaching_kernel().labels["user"]
    with pytest.raises(RuntimeError, match="no callout"):
        l07.step_to_callout(contains="no such callout", max_steps=50)


def _raw_mode_plan():
    """{site: 'jump' or 'int3'} for the teaching kernel, from its own listing: the kernel's
    code (start up to the data at idtr) swept linearly; its sensitive instructions that
    do not trap at ring 1 -- PUSHFD, POPFD, IRETD, and CLI/STI (the virtual IF), the only
    ones of hvsim.bt.rawmode's patched kinds it has -- are the sites. A site gets a 5-byte
    JMP (SIZEOF_NEARJUMP32) when the whole instructions it covers stay in the page, are
    neither control flow nor sensitive (nor privileged: rawmode.TRAPPING, which stay in
    place and trap), and hold no branch target (a label, or the return site of a CALL)
    after the site's first byte; else an INT3. Every IRETD is an INT3: nothing falls
    through it, so the byte after it is another routine's entry."""
    from hvsim.asm.disassembler import disassemble_one
    from hvsim.bt.rawmode import SIZEOF_NEARJUMP32, TRAPPING
    from hvsim.guests import teaching_kernel
    prog = teaching_kernel()
    lo, hi = prog.labels["start"], prog.labels["idtr"]
    insns = {}
    a = lo
    while a < hi:
        i = disassemble_one(prog.code, a - prog.origin, a)
        insns[a] = i
        a += i.size
    assert a == hi                          # the sweep ends exactly at the data
    # none of raw mode's other patched kinds: no segment register named, no indirect or
    # far CALL/JMP (their operand is an address)
    texts = [str(i) for i in insns.values()]
    assert not any(re.search(r"\b[cdefgs]s\b", t) for t in texts)
    assert all(re.fullmatch(r"(call|jmp) 0x[0-9a-f]+", t) for t in texts
               if t.split()[0] in ("call", "jmp"))
    sensitive = {"pushfd", "popfd", "iretd", "cli", "sti"}
    flow = {"call", "ret", "iretd", "hlt", "int", "loop"}      # and every j*
    targets = {v for v in prog.labels.values() if lo <= v < hi}
    targets |= {a + i.size for a, i in insns.items() if i.mnemonic == "call"}
    plan = {}
    for site, i in insns.items():
        if i.mnemonic not in sensitive:
            continue
        end, how = site + i.size, "jump"
        while end - site < SIZEOF_NEARJUMP32 and how == "jump":
            d = insns.get(end)
            if d is None or d.mnemonic in sensitive | TRAPPING or d.mnemonic in flow \
                    or d.mnemonic.startswith("j"):
                how = "int3"                 # not code, sensitive (trapping too), flow
            else:
                end += d.size
        if (site & 0xFFF) + (end - site) > 4096 or any(site < t < end for t in targets):
            how = "int3"
        plan[site] = how
    return plan, insns


def test_raw_mode_patches_are_jumps_into_patch_code_or_int3():
    rm = l07.raw_kernel(30_000)
    ps = rm.patches()
    c = rm.counters
    plan, insns = _raw_mode_plan()
    assert {p["site"]: p["how"] for p in ps} == plan
    assert all(plan[a] == "int3" for a, i in insns.items() if i.mnemonic == "iretd")
    jumps = sum(h == "jump" for h in plan.values())
    assert sum(p["how"] == "jump" for p in ps) == c["jump_patches"] == jumps
    assert sum(p["how"] == "int3" for p in ps) == c["int3_replacements"] == len(plan) - jumps
    for p in ps:
        if p["how"] == "int3":
            assert p["written"] == b"\xcc" and len(p["original_bytes"]) == 1
            assert p["patch_code"] == [] and p["reason"]
        else:
            w = p["written"]
            rel = int.from_bytes(w[1:5], "little", signed=True)
            assert w[0] == 0xE9 and (p["site"] + 5 + rel) & 0xFFFFFFFF == p["patch_code"][0][0]
            assert w[5:] == p["original_bytes"][5:]          # the rest of the covered bytes
            assert p["patch_code"][-1][1].startswith("jmp")  # ... and back
    html = l07.patch_table(rm)
    assert html.count("<tr>") == 1 + len(ps) and html.count(">int3<") == len(plan) - jumps


def test_cycles_are_the_counts_times_the_profiles_costs(runs):
    cr = l07.cycle_runs(runs, workload="compute")
    assert set(cr) == {(g, h) for g in ("teaching kernel", "compute") for h in l07.CYCLE_HOSTS}
    rows = {(r["guest"], r["host"]): r for r in l07.cycle_rows(cr)}
    N = cost.NEHALEM
    emu = runs["emulate"][0].stats
    assert rows["teaching kernel", "emulate"]["traps/exits"] == 0
    # paging is off in the teaching kernel: no soft-TLB fill (a page walk) to price
    assert emu["soft_tlb_fills"] == 0
    assert rows["teaching kernel", "emulate"]["monitor work"] == \
        emu["insns_interpreted"] * N["interpreted"].cycles
    d = runs["dbt"][0].stats
    assert rows["teaching kernel", "dbt"]["monitor work"] == (
        d["insns_translated"] * N["translated"].cycles
        + d["insns_run_translated"] * N["run_translated"].cycles
        + d["tb_slow_lookups"] * N["tb_lookup"].cycles)
    # section 6's prose: on the kernel each block is translated once (no store meets a
    # TB's bytes), so QEMU's bill stays below Bochs's
    c = runs["dbt"][0].counters
    assert c["tb_invalidated"] == c["tb_flushes"] == 0
    assert c["tb_misses"] == c["tb_translated"]          # no block translated twice
    assert rows["teaching kernel", "dbt"]["monitor work"] < \
        rows["teaching kernel", "emulate"]["monitor work"]
    # the guest's own instructions cost the same on the bare machine and the emulators
    assert rows["teaching kernel", "native"]["guest instructions"] == \
        rows["teaching kernel", "emulate"]["guest instructions"]


@pytest.mark.parametrize("n, gap, expected", [
    (10, 100, [16, 1]), (37, 3000, [70, 1]),          # one page: 2(n - 2) chained, 1 lookup
    (10, 5000, [0, 17]), (37, 4200, [0, 71]),         # two pages: nothing chained, 2n - 3 hits
])
def test_split_loop_chains_only_within_a_page(n, gap, expected):
    assert l07.count_lookups(n, gap) == expected


@pytest.mark.parametrize("seed", range(12))
def test_exercise_answers_follow_the_page_rule_and_the_snippet_gives_them(seed):
    ex = l07.chain_exercise(seed)
    p = ex.params
    n, same = p["n"], p["second"] >> 12 == 1
    assert ex.expected == ([2 * (n - 2), 1] if same else [0, 2 * n - 3])
    assert f"**{ex.expected}**" in ex.solution_text()
    assert (f"{2 * (n - 2)} chain hits, 1 jump-cache hit" if same
            else f"{2 * n - 3} hits, no chain") in ex.solution_text()
    for spelling in (list(ex.expected), str(ex.expected), tuple(ex.expected)):
        assert ex.check(spelling).ok
    (snippet,) = re.findall(r"`(from hvsim[^`]*)`", ex.solution_text())
    head, _, expr = snippet.rpartition(";")
    ns = {}
    exec(head, ns)
    assert eval(expr.strip(), ns) == ex.expected


def _jc_slot(pc):
    """QEMU's tb_jmp_cache_hash_func (softmmu, TB_JMP_CACHE_BITS 12, TB_JMP_PAGE_BITS 6),
    written out again here: 6 bits of the page, 6 of the offset."""
    tmp = pc ^ (pc >> 6)
    return ((tmp >> 6) & 0xFC0) | (tmp & 0x3F)


def _gaps_checked():
    """Every 40th gap of each range, its ends, and the gaps beside every one left out."""
    out = set()
    for lo, hi in ((64, 3800), (4200, 7800)):
        out |= set(range(lo, hi, 40)) | {lo, hi - 1}
        out |= {g + d for g in range(lo, hi) if _jc_slot(0x1005 + g) == _jc_slot(0x1005)
                for d in (-1, 1) if lo <= g + d < hi}
    return sorted(out)


def test_the_exercise_leaves_out_exactly_the_gaps_whose_halves_share_a_jump_cache_slot():
    top = l07.EXERCISE_TOP
    for (lo, hi), key in (((64, 3800), "one page"), ((4200, 7800), "two pages")):
        kept = [g for g in range(lo, hi) if _jc_slot(top + g) != _jc_slot(top)]
        assert list(l07.EXERCISE_GAPS[key]) == kept
    assert 130 not in l07.EXERCISE_GAPS["one page"]               # 1005H and 1087H share
    # where they share it, the model's counts are not the rule's: so they are left out
    assert _jc_slot(top + 130) == _jc_slot(top)
    assert l07.count_lookups(8, 130) != l07.exercise_rule(8, 130)
    # every seed draws its gap from the kept ones
    for seed in range(300):
        p = l07.chain_exercise(seed).params
        assert p["gap"] in l07.EXERCISE_GAPS["one page"] + l07.EXERCISE_GAPS["two pages"]


def test_the_solution_rule_is_the_models_count_for_the_exercises_gaps():
    gaps = [g for g in _gaps_checked() if _jc_slot(0x1005 + g) != _jc_slot(0x1005)]
    wrong = [g for g in gaps if l07.count_lookups(8, g) != l07.exercise_rule(8, g)]
    assert len(gaps) > 200 and wrong == []


@pytest.mark.slow
def test_the_solution_rule_is_the_models_count_for_every_gap_of_the_exercise():
    for gap in l07.EXERCISE_GAPS["one page"] + l07.EXERCISE_GAPS["two pages"]:
        assert l07.count_lookups(8, gap) == l07.exercise_rule(8, gap), gap


def test_exercise_bad_answers_get_a_verdict():
    ex = l07.chain_exercise(7)
    for bad in (None, "", "x", [1], 5, [True, 1], "1, 2, 3"):
        v = ex.check(bad)
        assert not v.ok and ex.name in v.message
    with pytest.raises(ValueError, match="gap"):
        l07.split_loop(10, 3)
    with pytest.raises(ValueError, match="steps"):
        l07.run_host("native", 0)
    with pytest.raises(ValueError, match="no host"):
        l07.run_host("qemu")
    from hvsim.bt import BinaryTranslator
    from hvsim.guests import teaching_kernel
    fresh = BinaryTranslator(program=teaching_kernel())      # no labels given: the kernel's
    with pytest.raises(ValueError, match="no label 'nowhere'"):
        l07.bt_listing_table(fresh, "nowhere")
    with pytest.raises(KeyError, match="no translation"):
        l07.bt_listing_table(fresh, "sys_ticks")             # not run: nothing translated
