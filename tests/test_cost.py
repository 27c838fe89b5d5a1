"""hvsim.cost (cycles = sum of counted events x cited costs) and viz.overhead_bars.

Oracles: hand arithmetic on made-up counts; the machine's own counters read directly
(``m.counters[...]``) for runs whose events are known by construction (a LOOP, two
INT 0x80 through the IDT, a #PF delivered by the hardware or routed to the host, the
paging lesson's hand-counted TLB loop); the bar patches read back from the Axes.
Nothing here compares one technique's cost with another's: profiles are inputs.
"""
import matplotlib

matplotlib.use("Agg")

import doctest
import html

import matplotlib.pyplot as plt
import pytest

import hvsim.cost
import hvsim.cost.usage
from hvsim import Machine, assemble
from hvsim.arch.pte import PTE_P, PTE_RW, PTE_US
from hvsim.cost import (CATEGORIES, EVENTS, PROFILES, ALL, REFERENCES, Cost, Usage, breakdown,
                        breakdowns, profile, usage_of)
from hvsim.lessons import l03_paging as l03
from hvsim.rings.setup import install
from hvsim.viz import overhead_bars
from test_viz import _syscall_machine      # the same ring 3 -> 0 system-call program

# the category of each event, written out here rather than read from hvsim.cost
BY_HAND = {
    "guest instructions": ("instruction", "system_call", "page_fault", "exception", "interrupt"),
    "traps/exits": ("trap", "vm_exit", "hypercall", "callout"),
    "monitor work": ("emulated", "reflected", "injected", "shadow_fill", "fault_walk", "pt_write",
                     "shadow_root", "resync", "pv_pt_update", "pv_validate", "translation",
                     "scan", "interpreted", "translated", "run_translated", "tb_lookup"),
    "page walks": ("walk_ref", "ept_walk_ref", "soft_tlb_fill"),
    "I/O": ("port_io", "io_request"),
}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_doctests():
    for mod in (hvsim.cost, hvsim.cost.usage):
        assert doctest.testmod(mod).failed == 0


# ------------------------------------------------------------------ the arithmetic
def test_made_up_usage_is_summed_exactly_on_every_profile():
    counts = {e: 3 + 7 * i for i, e in enumerate(EVENTS)}      # every event, distinct counts
    for p in ALL:
        bd = breakdown(counts, p)
        for cat, events in BY_HAND.items():
            assert bd.categories[cat] == sum(counts[e] * p[e].cycles for e in events)
        assert bd.total == sum(counts[e] * p.costs[e].cycles for e in counts)
        for ln in bd.lines:
            assert ln.cycles == counts[ln.event] * p[ln.event].cycles
            assert ln.source == p[ln.event].source and ln.how == "given"
        assert bd.estimated == {cat: sum(counts[e] * p[e].cycles for e in events
                                         if p[e].estimate) for cat, events in BY_HAND.items()}
    assert list(bd.categories) == list(CATEGORIES) == list(BY_HAND)


def test_hand_computed_breakdown_on_one_profile():
    p = PROFILES["prescott"]
    bd = breakdown({"instruction": 1000, "trap": 4, "emulated": 4, "walk_ref": 30}, "prescott",
                   label="by hand")
    assert bd.total == 1000 * 1 + 4 * 1814 + 4 * 216 + 30 * 100
    assert bd["traps/exits"] == 4 * 1814 and bd["monitor work"] == 4 * 216
    assert bd["trap"].count == 4 and bd["I/O"] == 0
    text = bd.table()
    assert "by hand on Pentium 4 (Prescott) (2005)" in text
    assert "1814*" in text and f"total {bd.total:,}" in text
    assert "port_io" not in text                   # zero lines are left out by default
    assert "port_io" in bd.table(zeros=True)
    page = bd._repr_html_()
    assert page.startswith("<table>") and html.escape(p["trap"].source) in page
    assert html.escape(p["trap"].basis, quote=True) in page          # the basis, on hover


def test_breakdowns_one_run_on_every_generation():
    bds = breakdowns({"vm_exit": 10, "instruction": 50})
    assert list(bds) == ["prescott", "merom", "nehalem", "sandy_bridge"]
    for name, bd in bds.items():
        assert bd.profile is PROFILES[name]
        assert bd.total == 10 * PROFILES[name]["vm_exit"].cycles + 50
    assert list(breakdowns({"trap": 1}, ["p4", "snb"])) == ["prescott", "sandy_bridge"]


def test_profile_replace_is_an_input_and_the_total_follows():
    p = PROFILES["nehalem"].replace(trap=Cost(900, "my lab", estimate=True, basis="my laptop"))
    assert p["trap"].cycles == 900 and PROFILES["nehalem"]["trap"].cycles != 900
    assert breakdown({"trap": 2}, p).total == 1800


# ------------------------------------------------------------------ real runs
LOOP = """
    mov ecx, 10
again:
    add eax, ecx
    loop again
    hlt
"""


def test_real_loop_run_costs_its_instructions_and_nothing_else():
    m = Machine()
    m.load(assemble(LOOP))
    assert m.run().kind == "halt" and m.cpu.eax == 55
    n = m.counters["instructions"]
    assert n == 1 + 2 * 10 + 1                      # mov, 10 x (add, loop), hlt
    for p in ALL:
        bd = breakdown(m, p)
        assert bd.total == n * p["instruction"].cycles
        assert bd["guest instructions"] == bd.total and bd["instruction"].count == n
        assert bd["instruction"].how == 'counters["instructions"]'


def test_system_calls_through_the_idt_are_charged_and_the_routed_gp_is_not():
    m = _syscall_machine()
    ev = m.run()
    assert (ev.kind, ev.vector) == ("exception", 13)
    c = m.counters
    assert c["delivered_0x80"] == 2 and c["exception_13"] == 1
    u = usage_of(m)
    assert u["system_call"] == 2 and u["exception"] == 0 and u["page_fault"] == 0
    assert u["instruction"] == c["instructions"] == 9
    for p in ALL:
        bd = breakdown(m, p)
        assert bd.total == 9 * p["instruction"].cycles + 2 * p["system_call"].cycles


def _pf_machine(route_pf: bool):
    """Paging on; ring 0 writes a not-present page; the #PF handler maps it and returns."""
    m = Machine(memory=l03.MEMORY, exceptions="guest")
    system = install(m)
    pt = l03.PageTables(m)
    pt.identity(0, 4 << 20)
    lin = 0x400000
    pt.map(lin, 0x200000)
    pt.map(lin + 0x1000, 0x201000)
    pte = pt.pte_addr(lin + 0x1000)
    pt.unmap(lin + 0x1000)
    pt.enable()
    prog = assemble(f"""
    mov esi, {lin:#x}
    mov dword [esi], 1
    mov dword [esi + 0x1000], 7      ; not present: #PF
    hlt
handler:
    mov dword [{pte:#x}], {0x201000 | PTE_P | PTE_RW | PTE_US:#x}
    add esp, 4                       ; the error code
    iret
""", origin=0x1000)
    m.load(prog)
    system.gate(m, 14, prog.labels["handler"])
    system.enter(m, 0, 0x1000)
    if route_pf:
        m.route(14, "host")
    return m


def test_page_fault_delivered_by_the_hardware_is_charged_once():
    m = _pf_machine(route_pf=False)
    assert m.run().kind == "halt"
    c = m.counters
    assert c["delivered_14"] == 1 and c["exception_14"] == 1 and c["exceptions_delivered"] == 1
    u = usage_of(m)
    assert (u["page_fault"], u["exception"], u["system_call"]) == (1, 0, 0)
    assert u["walk_ref"] == c["walk_refs"] > 0
    p = PROFILES["sandy_bridge"]
    bd = breakdown(m, p)
    assert bd.total == (c["instructions"] * p["instruction"].cycles + p["page_fault"].cycles
                        + c["walk_refs"] * p["walk_ref"].cycles)
    assert bd["page walks"] == c["walk_refs"] * p["walk_ref"].cycles


def test_page_fault_routed_to_the_host_is_not_charged_as_a_native_fault():
    m = _pf_machine(route_pf=True)
    ev = m.run()
    assert (ev.kind, ev.vector) == ("exception", 14)
    assert m.counters["exception_14"] == 1 and m.counters["delivered_14"] == 0
    assert usage_of(m)["page_fault"] == 0          # a monitor charges trap + reflection


def test_tlb_loop_walk_references_are_the_hand_counted_ones():
    m = l03.tlb_loop(8, rounds=10)
    # paging lesson's hand count: 8 data pages + the code page miss once, 2 refs per walk
    assert m.counters["walk_refs"] == 2 * (8 + 1)
    for p in ALL:
        assert breakdown(m, p)["page walks"] == 18 * p["walk_ref"].cycles


# ------------------------------------------------------------------ monitors (duck-typed)
class StubMonitor:
    """What usage_of needs of a monitor: .machine and .stats."""

    def __init__(self, machine, stats):
        self.machine = machine
        self.stats = stats


def test_usage_of_a_monitor_adds_its_stats_to_the_machine_counts():
    m = _syscall_machine()
    m.run()
    mon = StubMonitor(m, {"traps": 3, "emulated": 2, "reflected": 1, "injected": 4,
                          "something_else": 99})          # vm_exits, hypercalls missing = 0
    u = usage_of(mon)
    assert (u["trap"], u["emulated"], u["reflected"], u["injected"]) == (3, 2, 1, 4)
    assert u["vm_exit"] == 0 and u["hypercall"] == 0
    assert u["instruction"] == 9 and u["system_call"] == 2
    assert u.how["trap"] == 'monitor.stats["traps"]'
    p = PROFILES["merom"]
    assert breakdown(mon, p).total == (9 * p["instruction"].cycles + 2 * p["system_call"].cycles
                                       + 3 * p["trap"].cycles + 2 * p["emulated"].cycles
                                       + 1 * p["reflected"].cycles + 4 * p["injected"].cycles)
    assert usage_of(StubMonitor(m, {"vm_exits": 5, "hypercalls": 6}))["vm_exit"] == 5


def test_usage_of_the_trap_and_emulate_monitor_charges_each_event_once():
    monitors = pytest.importorskip("hvsim.monitors")
    from hvsim.guests import teaching_kernel
    mon = monitors.TrapAndEmulate(program=teaching_kernel())
    mon.run(20_000)
    c, s = mon.machine.counters, mon.stats
    assert s["traps"] > 0 and s["reflected"] > 0 and s["emulated"] > 0
    # every vector is routed to the monitor: the hardware delivered nothing through the
    # IDT, so the guest's system calls and faults are charged as traps + reflections only
    assert c.delivered == {} and c["software_interrupts"] > 0
    u = usage_of(mon)
    assert (u["system_call"], u["page_fault"], u["exception"], u["interrupt"]) == (0, 0, 0, 0)
    assert (u["trap"], u["emulated"], u["reflected"], u["injected"]) == (
        s["traps"], s["emulated"], s["reflected"], s["injected"])
    assert u["instruction"] == c["instructions"] and u["port_io"] == c["io_in"] + c["io_out"]
    p = PROFILES["nehalem"]
    assert breakdown(mon, p).total == sum(u[e] * p[e].cycles for e in EVENTS)


# the shadow-paging keys of monitor.stats and the event each one is charged as, written out
SHADOW_STATS = {"hidden_faults": "shadow_fill", "true_faults": "fault_walk",
                "trace_faults": "pt_write", "shadow_roots_built": "shadow_root",
                "shadow_resyncs": "resync"}


def test_usage_of_a_shadow_paging_monitor_charges_the_shadow_mmus_work():
    m = _syscall_machine()
    m.run()                                     # 9 instructions, 2 system calls, no paging
    stats = {"vm_exits": 40, "emulated": 6, "injected": 3, "hidden_faults": 11,
             "true_faults": 3, "trace_faults": 5, "shadow_roots_built": 2,
             "shadow_resyncs": 4, "shadow_drops": 17}
    u = usage_of(StubMonitor(m, stats))
    assert (u["shadow_fill"], u["fault_walk"], u["pt_write"], u["shadow_root"],
            u["resync"]) == (11, 3, 5, 2, 4)
    for key, event in SHADOW_STATS.items():
        assert u.how[event] == f'monitor.stats["{key}"]'
    # the faults' round trips stay vm_exits, counted once; the drops are not charged
    assert (u["vm_exit"], u["trap"], u["emulated"], u["injected"]) == (40, 0, 6, 3)
    assert sum(u.values()) == 9 + 2 + 40 + 6 + 3 + 11 + 3 + 5 + 2 + 4
    p4 = PROFILES["prescott"]
    bd = breakdown(StubMonitor(m, stats), p4)
    # Prescott's shadow costs by hand: 500 (pgfault - divzero overheads), 391 (ptemod),
    # 1500 (shadow root), 4000 (resync)
    assert bd["monitor work"] == (6 * 216 + 3 * 400 + 11 * 500 + 3 * 500 + 5 * 391
                                  + 2 * 1500 + 4 * 4000)
    assert bd["traps/exits"] == 40 * 2400
    assert bd.total == 9 * 1 + 2 * 600 + 40 * 2400 + bd["monitor work"]
    assert bd.total == sum(bd.categories.values())
    for p in ALL:
        bd = breakdown(StubMonitor(m, stats), p)
        assert bd["pt_write"].cycles == 5 * p["pt_write"].cycles
        assert bd.total == sum(bd.categories.values()) == sum(u[e] * p[e].cycles for e in EVENTS)


def test_a_monitor_without_shadow_keys_is_charged_nothing_for_shadow_paging():
    m = _syscall_machine()
    m.run()
    old = StubMonitor(m, {"traps": 3, "emulated": 2})
    u = usage_of(old)
    assert all(u[e] == 0 for e in SHADOW_STATS.values()) and u["ept_walk_ref"] == 0
    assert u["trap"] == 3 and u["instruction"] == 9
    for p in ALL:
        bd = breakdown(old, p)
        assert bd.total == 9 * p["instruction"].cycles + 2 * p["system_call"].cycles \
            + 3 * p["trap"].cycles + 2 * p["emulated"].cycles
        assert all(bd[e].cycles == 0 for e in SHADOW_STATS.values())
    with pytest.raises(ValueError, match="hidden_faults.*>= 0"):
        usage_of(StubMonitor(m, {"hidden_faults": -1}))


def test_shadow_costs_rest_on_adams_and_agesens_nanobenchmarks():
    p4 = PROFILES["prescott"]
    # sec. 5: software VMM pgfault 3927 (native 1093) less divzero 3223 (native 889)
    assert p4["shadow_fill"].cycles == p4["fault_walk"].cycles == (3927 - 1093) - (3223 - 889)
    assert p4["pt_write"].cycles == 391                      # ptemod, software VMM
    for e in ("shadow_fill", "fault_walk", "pt_write"):
        assert "3927" in p4[e].source or "391" in p4[e].source
        for p in ALL:                                        # nothing tells generations apart
            assert p[e].cycles == p4[e].cycles and p[e].estimate
            if p is not p4:
                assert "carried over" in p[e].basis
    assert p4["ept_walk_ref"].cycles == p4["walk_ref"].cycles == 100
    assert p4["resync"].source.startswith("none") and p4["resync"].estimate


def test_nested_paging_pays_for_its_ept_references():
    """A 2-level guest on 4-level EPT: one cold 4 KiB load is 2 guest references + 3 EPT
    walks of 4 = 14 (Bhargava et al. 2008; REFERENCES.md), and the EPT ones are charged
    apart from walk_ref. Oracle: test_ept's VMM run with and without that one load."""
    from test_ept import DATA, ept_run, exited
    from hvsim.arch import vmx as X
    base, _, _, _ = ept_run("cpuid\n")
    one, _, _, _ = ept_run(f"mov eax, [{DATA:#x}]\ncpuid\n")
    for m in (base, one):
        exited(m, X.ExitReason.CPUID)
    ub, uo = usage_of(base), usage_of(one)
    assert (uo["walk_ref"] - ub["walk_ref"], uo["ept_walk_ref"] - ub["ept_walk_ref"]) == (2, 12)
    assert uo["ept_walk_ref"] == one.counters["ept_walk_refs"] > 12    # the VMM's guest walks
    assert uo.how["ept_walk_ref"] == 'counters["ept_walk_refs"]'
    for p in ALL:
        bb, bo = breakdown(base, p), breakdown(one, p)
        assert bo["page walks"] - bb["page walks"] == 14 * 100
        assert bo["ept_walk_ref"].cycles == one.counters["ept_walk_refs"] * 100
        assert bo["page walks"] == (one.counters["walk_refs"] + one.counters["ept_walk_refs"]) * 100
        assert bo.total == sum(bo.categories.values())


def test_usage_of_rejects_a_bad_monitor():
    m = Machine()
    with pytest.raises(ValueError, match="must be >= 0"):
        usage_of(StubMonitor(m, {"traps": -1}))
    with pytest.raises(TypeError, match="must be an int"):
        usage_of(StubMonitor(m, {"traps": 1.5}))
    with pytest.raises(TypeError, match="stats must be a dict"):
        usage_of(StubMonitor(m, [("traps", 1)]))
    with pytest.raises(TypeError, match="machine must be a hvsim Machine"):
        usage_of(StubMonitor("not a machine", {}))


def test_usage_of_takes_counters_a_usage_and_a_dict():
    m = Machine()
    m.load(assemble(LOOP))
    m.run()
    assert usage_of(m.counters) == usage_of(m) == {"instruction": 22}
    u = Usage({"trap": 2})
    assert usage_of(u) is u and usage_of({"trap": 2}) == u and u["vm_exit"] == 0


# ------------------------------------------------------------------ the profiles' data
def test_four_generations_every_cost_cited_and_estimates_marked():
    assert [(p.name, p.year) for p in ALL] == [("prescott", 2005), ("merom", 2006),
                                               ("nehalem", 2009), ("sandy_bridge", 2011)]
    for p in ALL:
        assert set(p.costs) == set(EVENTS)
        text = p.table()
        for e, c in p.costs.items():
            assert c.source.strip() and c.cycles >= 0
            if c.estimate:
                assert c.basis.strip() and c.mark == "*" and f"{c.cycles:g}*" in text
            else:
                assert c.mark == ""
            if c.source.startswith("none"):
                assert c.estimate                  # no source: it can only be an estimate
            else:                                  # a cited work, listed in full
                assert any(ref in c.source for ref in REFERENCES), c.source


def test_the_one_measurement_and_the_split_of_the_published_p4_figure():
    measured = [(p.name, e) for p in ALL for e, c in p.costs.items() if not c.estimate]
    assert measured == [("nehalem", "vm_exit")]
    assert "SplitX" in PROFILES["nehalem"]["vm_exit"].source
    p4 = PROFILES["prescott"]
    # Adams & Agesen 2006 sec. 3.2: rdtsc trap-and-emulate 2030 cycles = trap + emulation
    assert p4["trap"].cycles + p4["emulated"].cycles == 2030
    assert all("2030" in p4[e].source or "216" in p4[e].source for e in ("trap", "emulated"))


def test_profile_lookup_and_bad_input():
    assert profile("P4") is profile("prescott") is PROFILES["prescott"]
    assert profile("Sandy Bridge") is PROFILES["sandy_bridge"]
    with pytest.raises(ValueError, match="no profile named 'pentium 9'"):
        profile("pentium 9")
    with pytest.raises(ValueError, match="did you mean 'nehalem'"):
        breakdown({"trap": 1}, "nehalm")
    with pytest.raises(TypeError, match="a profile is a Profile or its name"):
        breakdown({"trap": 1}, 2009)
    with pytest.raises(TypeError, match="usage_of"):
        breakdown(3.5, "merom")
    with pytest.raises(ValueError, match="must be >= 0"):
        breakdown({"trap": -2}, "merom")
    with pytest.raises(TypeError, match="must be an int"):
        Usage({"trap": True})
    with pytest.raises(KeyError, match="did you mean 'trap'"):
        Usage({"traps": 1})
    with pytest.raises(ValueError, match="needs a source"):
        Cost(10, "  ")
    with pytest.raises(ValueError, match="needs a basis"):
        Cost(10, "somewhere", estimate=True)
    with pytest.raises(ValueError, match=">= 0"):
        Cost(-1, "somewhere")
    with pytest.raises(KeyError, match="neither a category"):
        breakdown({"trap": 1}, "merom")["cycles"]


# ------------------------------------------------------------------ overhead_bars
def _heights(ax) -> dict:
    """{(run, profile, category): (measured, estimated)} read back from the bar patches."""
    out = {}
    for patch in ax.patches:
        gid = patch.get_gid()
        if not gid:
            continue
        run, prof, cat, part = gid.split("|")
        m, e = out.get((run, prof, cat), (0.0, 0.0))
        out[(run, prof, cat)] = (m + patch.get_height(), e) if part == "measured" else \
            (m, e + patch.get_height())
    return out


def test_overhead_bars_heights_are_the_breakdowns_categories():
    a = breakdown({"instruction": 5000, "walk_ref": 40, "port_io": 2}, "nehalem", label="a")
    b = breakdown({"instruction": 3000, "vm_exit": 7, "emulated": 3}, "nehalem", label="b")
    ax = overhead_bars({"a": a, "b": b})
    h = _heights(ax)
    for name, bd in (("a", a), ("b", b)):
        for cat in CATEGORIES:
            m, e = h.get((name, "nehalem", cat), (0.0, 0.0))
            assert m + e == pytest.approx(bd.categories[cat])
            assert e == pytest.approx(bd.estimated[cat])
    # the measured Nehalem VM exit is drawn solid, the rest of b's bar hatched
    assert h[("b", "nehalem", "traps/exits")] == (pytest.approx(7 * 2000), 0.0)
    xs = {p.get_gid().split("|")[0]: p.get_x() for p in ax.patches if p.get_gid()}
    assert xs["a"] != xs["b"]                                     # side by side
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    assert "cycles" in ax.get_ylabel()
    assert [t.get_text() for t in ax.texts] == [f"{a.total:,.0f}", f"{b.total:,.0f}"]


def test_overhead_bars_per_generation_and_from_machines():
    m = Machine()
    m.load(assemble(LOOP))
    m.run()
    mon = StubMonitor(m, {"traps": 2, "emulated": 2})
    ax = overhead_bars({"bare": breakdowns(m), "stub": breakdowns(mon)})
    h = _heights(ax)
    for p in ALL:
        assert sum(h[("bare", p.name, c)][0] + h[("bare", p.name, c)][1]
                   for c in CATEGORIES if ("bare", p.name, c) in h) == pytest.approx(
            breakdown(m, p).total)
        assert sum(sum(h[("stub", p.name, c)]) for c in CATEGORIES
                   if ("stub", p.name, c) in h) == pytest.approx(breakdown(mon, p).total)
    assert len(ax.get_xticks()) == 2 * len(ALL)
    assert ax.get_xticklabels()[0].get_text() == "bare\nprescott"
    ax2 = overhead_bars({"bare": m}, profiles=["merom", "nehalem"])
    assert sorted({k[1] for k in _heights(ax2)}) == ["merom", "nehalem"]


def test_overhead_bars_bad_arguments():
    with pytest.raises(TypeError, match="overhead_bars"):
        overhead_bars("native")
    with pytest.raises(TypeError, match="overhead_bars"):
        overhead_bars({})
    with pytest.raises(ValueError, match="on which CPU profile"):
        overhead_bars({"bare": {"instruction": 3}})
    with pytest.raises(ValueError, match="already a Breakdown"):
        overhead_bars({"a": breakdown({"trap": 1}, "p4")}, profiles="merom")
    with pytest.raises(TypeError, match="matplotlib Axes"):
        overhead_bars(breakdown({"trap": 1}, "p4"), ax="left")
