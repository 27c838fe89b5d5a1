"""hvsim.viz (the lessons' pictures) and hvsim.lessons.l03_paging, checked by what they drew.

Oracles: hand-derived CPL sequences for a known ring 3 -> INT 0x80 -> IRET program;
page tables written byte by byte here (not with the lesson's helpers) and indices
computed from the SDM's split of a linear address (Figure 4-2); the counters a plain
``run()`` produces; hand-derived TLB miss counts.
"""
import matplotlib

matplotlib.use("Agg")

import doctest

import matplotlib.pyplot as plt
import pytest
from matplotlib.colors import to_rgba

import hvsim.viz
from hvsim import Machine, assemble
from hvsim.arch.cr import CR0_PG, CR4_PSE
from hvsim.mmu import walk
from hvsim.arch.pte import PTE_P, PTE_RW, PTE_US, PTE_PS
from hvsim.rings.setup import install
from hvsim.viz import ring_diagram, record, timeline, counter_bars, page_walk_graph, page_walk
from hvsim.viz._common import LIT, UNLIT, FAULT, DIM
from hvsim.lessons import l03_paging as l03


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_doctest():
    import hvsim.viz.walk2d
    assert doctest.testmod(hvsim.viz).failed == 0
    r = doctest.testmod(hvsim.viz.walk2d)
    assert r.attempted > 0 and r.failed == 0


# ------------------------------------------------------------------ ring diagram
def _ring_patches(ax):
    return {p.get_label(): p for p in ax.patches if p.get_label().startswith("ring ")}


@pytest.mark.parametrize("cpl", [0, 1, 2, 3])
def test_ring_diagram_lights_exactly_the_cpl(cpl):
    patches = _ring_patches(ring_diagram(cpl))
    assert sorted(patches) == ["ring -1", "ring 0", "ring 1", "ring 2", "ring 3"]
    for ring in range(4):
        p = patches[f"ring {ring}"]
        assert p.get_facecolor() == to_rgba(LIT if ring == cpl else UNLIT), ring
        assert p.get_gid() == ("lit" if ring == cpl else "unlit")
    # ring 0 innermost: the outer radius grows with the ring number
    radii = [patches[f"ring {r}"].r for r in range(4)]
    assert radii == sorted(radii) and patches["ring -1"].radius < radii[0]
    # ring -1 is a dashed grey placeholder unless asked for
    vmx = patches["ring -1"]
    assert vmx.get_gid() == "placeholder" and vmx.get_linestyle() == "--"
    assert vmx.get_facecolor() == to_rgba(DIM)


def test_ring_diagram_vmx_root_and_who_sits_where():
    ax = ring_diagram(-1, who={0: "monitor", 1: "guest kernel", 3: "guest apps"})
    patches = _ring_patches(ax)
    assert patches["ring -1"].get_gid() == "lit"
    assert patches["ring -1"].get_facecolor() == to_rgba(LIT)
    assert all(patches[f"ring {r}"].get_gid() == "unlit" for r in range(4))
    who = {t.get_gid(): t.get_text() for t in ax.texts if (t.get_gid() or "").startswith("who")}
    assert who == {"who ring 0": "monitor", "who ring 1": "guest kernel",
                   "who ring 3": "guest apps"}
    assert _ring_patches(ring_diagram(None, vmx=True))["ring -1"].get_gid() == "unlit"
    lit = [p.get_label() for p in ring_diagram(None).patches if p.get_gid() == "lit"]
    assert lit == []


def test_ring_diagram_takes_a_machine():
    m = Machine(memory=1 << 16)
    m.cpu.cpl = 2
    lit = [p.get_label() for p in ring_diagram(m).patches if p.get_gid() == "lit"]
    assert lit == ["ring 2"]


def test_ring_diagram_bad_arguments():
    with pytest.raises(ValueError, match="ring number -1..3"):
        ring_diagram(4)
    with pytest.raises(TypeError, match="cpl must be"):
        ring_diagram("0")
    with pytest.raises(ValueError, match="who="):
        ring_diagram(0, who={7: "nobody"})
    with pytest.raises(TypeError, match="matplotlib Axes"):
        ring_diagram(0, ax="left")


# ------------------------------------------------------------------ recording and timeline
SYSCALL_PROGRAM = """
user:
    mov eax, 1
    mov ebx, 2
    int 0x80            ; ring 3 -> ring 0 through the IDT
    add eax, ebx
    int 0x80
    hlt                 ; privileged in ring 3: #GP, routed to the host
handler:
    mov ecx, 5
    iret                ; ring 0 -> ring 3
"""


def _syscall_machine():
    m = Machine(memory=1 << 20, exceptions="guest")
    t = install(m)
    prog = assemble(SYSCALL_PROGRAM, origin=0x1000)
    m.load(prog)
    t.gate(m, 0x80, prog.labels["handler"], dpl=3)
    t.enter(m, 3, prog.labels["user"])
    m.route(13, "host")
    return m


def test_record_exact_cpl_sequence_and_markers():
    m = _syscall_machine()
    rec = record(m, 100)
    # mov mov int | mov iret | add int | mov iret | hlt (#GP: retires nothing)
    assert rec.retired.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9]
    assert rec.cpl.tolist() == [3, 3, 3, 0, 0, 3, 3, 0, 0, 3, 3]
    assert rec.marker_at.tolist() == [3, 7, 9]
    assert rec.marker_names == ("INT 0x80", "INT 0x80", "#GP (general protection)")
    assert rec.marker_kinds == ("delivered", "delivered", "exception")
    assert rec.marker_cpl_from.tolist() == [3, 3, 3] and rec.marker_cpl_to.tolist() == [0, 0, 3]
    assert rec.final.kind == "exception" and rec.final.vector == 13
    labels = assemble(SYSCALL_PROGRAM, origin=0x1000).labels
    assert rec.eip[3] == labels["handler"] and rec.eip[0] == labels["user"]
    assert rec.steps == 10 and "INT 0x80" in str(rec)


def test_record_changes_no_counter_but_exits():
    stepped, ran = _syscall_machine(), _syscall_machine()
    record(stepped, 100)
    ran.run()
    a, b = stepped.counters.to_dict(), ran.counters.to_dict()
    for key in set(a) | set(b):
        if key != "exits":          # every step is one 'budget' exit
            assert a.get(key, 0) == b.get(key, 0), key
    assert a["instructions"] == 9 and a["delivered_0x80"] == 2 and a["iret"] == 2


def test_record_stops_at_budget_and_continues_through_handled_events():
    m = _syscall_machine()
    rec = record(m, 4)
    assert rec.final is None and rec.cpl.tolist() == [3, 3, 3, 0, 0]
    m = Machine(memory=1 << 16)
    m.load(assemble("out 0x50, al\nmov eax, 7\nhlt"))
    seen = []
    rec = record(m, 50, on_event=lambda mach, ev: seen.append(ev.kind) or ev.kind == "io")
    assert seen == ["io", "halt"]
    assert rec.marker_names == ("OUT 0x50", "halt") and rec.final.kind == "halt"
    assert m.cpu.eax == 7


def test_timeline_draws_the_recording():
    rec = record(_syscall_machine(), 100)
    ax = timeline(rec)
    line, = [l for l in ax.lines if l.get_gid() == "cpl"]
    assert line.get_xdata().tolist() == rec.retired.tolist()
    assert line.get_ydata().tolist() == rec.cpl.tolist()
    assert line.get_drawstyle() == "steps-post"
    delivered, = [l for l in ax.lines if l.get_gid() == "delivered"]
    assert delivered.get_xdata().tolist() == [3, 7] and delivered.get_ydata().tolist() == [0, 0]
    host, = [l for l in ax.lines if l.get_gid() == "host"]
    assert host.get_xdata().tolist() == [9] and host.get_ydata().tolist() == [3]
    names = [t.get_text() for t in ax.texts if (t.get_gid() or "").startswith("event")]
    assert names == ["INT 0x80", "INT 0x80", "#GP (general protection)"]
    bottom, top = ax.get_ylim()
    assert bottom > 3 > 0 > top                       # ring 0 at the top


def test_record_and_timeline_bad_arguments():
    m = Machine(memory=1 << 16)
    with pytest.raises(ValueError, match="steps"):
        record(m, 0)
    with pytest.raises(ValueError, match="steps"):
        record(m, 2.5)
    with pytest.raises(TypeError, match="Machine"):
        record("machine")
    with pytest.raises(TypeError, match="on_event"):
        record(m, 5, on_event=3)
    with pytest.raises(TypeError, match="Recording"):
        timeline([0, 1, 2])


# ------------------------------------------------------------------ counter bars
def _heights(container):
    return [p.get_height() for p in container.patches]


def test_counter_bars_one_run_heights_are_the_counters():
    m = l03.tlb_loop(8, rounds=10)
    keys = ["instructions", "tlb_hits", "tlb_misses", "page_walks", "walk_refs"]
    ax = counter_bars(m.counters, keys)
    bars, = ax.containers
    assert _heights(bars) == [m.counters[k] for k in keys]
    # hand-derived: 8 data pages + the code page miss once each; 2 references per walk
    assert _heights(bars)[2:] == [9, 9, 18]
    assert [t.get_text() for t in ax.get_xticklabels()] == keys
    # default keys: the non-zero counters, in Counters order
    ax = counter_bars(m.counters)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(m.counters.to_dict())


def test_counter_bars_several_runs_side_by_side():
    runs = {"native": {"instructions": 100, "exception_13": 0},
            "trap-and-emulate": {"instructions": 130, "exception_13": 12}}
    ax = counter_bars(runs, ["instructions", "exception_13"])
    assert [c.get_label() for c in ax.containers] == ["native", "trap-and-emulate"]
    assert _heights(ax.containers[0]) == [100, 0]
    assert _heights(ax.containers[1]) == [130, 12]
    x0 = [p.get_x() for p in ax.containers[0].patches]
    x1 = [p.get_x() for p in ax.containers[1].patches]
    assert all(b > a for a, b in zip(x0, x1))          # side by side, second run to the right
    ax = counter_bars(runs)                            # union of the non-zero counters
    assert [t.get_text() for t in ax.get_xticklabels()] == ["instructions", "exception_13"]


def test_counter_bars_bad_arguments():
    with pytest.raises(ValueError, match="'tlb_hits'"):
        counter_bars({"tlb_hits": 3}, ["tlb_hit"])
    with pytest.raises(TypeError, match="counter_bars"):
        counter_bars([1, 2, 3])
    with pytest.raises(TypeError, match="counter_bars"):
        counter_bars({"a": {"instructions": 1}, "b": 7})


# ------------------------------------------------------------------ page walk
PD, TABLE = 0x10000, 0x12000
URW = PTE_P | PTE_RW | PTE_US


def _put32(m, addr, value):
    m.memory[addr:addr + 4] = list(int(value).to_bytes(4, "little"))


def _paged(tlb=(16, 4)):
    """Hand-built tables: linear 0x00634ABC -> PDE 1 -> PTE 0x234 -> frame 0x5000;
    code at 0x1000 identity-mapped through PDE 0; a 4 MiB page at linear 0x00800000."""
    m = Machine(memory=4 << 20, tlb=tlb)
    _put32(m, PD + 4 * 0, 0x11000 | URW)
    _put32(m, 0x11000 + 4 * 1, 0x1000 | URW)             # the code page
    _put32(m, PD + 4 * 1, TABLE | URW)
    _put32(m, TABLE + 4 * 0x233, 0x7000 | PTE_RW)         # present bit clear
    _put32(m, TABLE + 4 * 0x234, 0x5000 | PTE_P | PTE_RW)
    _put32(m, TABLE + 4 * 0x235, 0x6000 | URW)
    _put32(m, PD + 4 * 2, 0x00C00000 | PTE_PS | URW)      # 4 MiB page -> physical 12 MiB
    m.cpu.cr3 = PD
    m.cpu.cr4 = CR4_PSE
    m.cpu.cr0 = m.cpu.cr0 | CR0_PG
    return m


def test_page_walk_graph_4k_matches_the_tables_and_walk():
    m = _paged()
    lin = 0x00634ABC
    assert (lin >> 22, (lin >> 12) & 0x3FF) == (1, 0x234)
    g = page_walk_graph(m, lin, neighbours=1)
    assert g.graph["path"] == ["linear", "CR3", "PDE[0x001]", "PTE[0x234]", "page"]
    assert list(g.edges) == list(zip(g.graph["path"], g.graph["path"][1:]))
    w = walk(m.memory, PD, CR4_PSE, lin)
    pde, pte, page = g.nodes["PDE[0x001]"], g.nodes["PTE[0x234]"], g.nodes["page"]
    assert (pde["index"], pde["addr"], pde["value"]) == (1, PD + 4, TABLE | URW) == \
        (1, w.pde_addr, w.pde)
    assert (pte["index"], pte["addr"], pte["value"]) == (0x234, TABLE + 4 * 0x234, 0x5003)
    assert pte["addr"] == w.pte_addr and pte["flags"] == "P RW" and pte["present"]
    assert (page["frame"], page["pa"], page["size"]) == (0x5000, 0x5ABC, 4096)
    assert g.graph["pa"] == w.pa == 0x5ABC and g.graph["fault"] is None
    # neighbours: the entries either side, dimmed, with their own values
    assert {n for n, d in g.nodes(data=True) if d["kind"] == "pte"} == \
        {"PTE[0x233]", "PTE[0x234]", "PTE[0x235]"}
    assert not g.nodes["PTE[0x233]"]["on_path"] and not g.nodes["PTE[0x233]"]["present"]
    assert g.nodes["PTE[0x235]"]["value"] == 0x6000 | URW
    assert {n for n, d in g.nodes(data=True) if d["kind"] == "pde"} == \
        {"PDE[0x000]", "PDE[0x001]", "PDE[0x002]"}


def test_page_walk_graph_4m_page_has_no_pte_level():
    g = page_walk_graph(_paged(), 0x00812345)
    assert g.graph["path"] == ["linear", "CR3", "PDE[0x002]", "page"]
    assert not any(d["kind"] == "pte" for _, d in g.nodes(data=True))
    assert (g.nodes["page"]["frame"], g.nodes["page"]["pa"], g.nodes["page"]["size"]) == \
        (0x00C00000, 0x00C12345, 4 << 20)


def test_page_walk_graph_tlb_flag_flips_after_an_access():
    m = _paged()
    lin = 0x00634ABC
    m.load(assemble(f"mov eax, [{lin:#x}]\nhlt"))
    g = page_walk_graph(m, lin)
    assert g.graph["tlb"] == "miss" and g.graph["tlb_frame"] is None
    assert g.graph["tlb_set"] == 0x634 % 16
    assert m.run().kind == "halt"
    g = page_walk_graph(m, lin)
    assert g.graph["tlb"] == "hit" and g.graph["tlb_frame"] == 0x5000
    assert not g.graph["tlb_stale"]
    _put32(m, TABLE + 4 * 0x234, 0x9000 | PTE_P | PTE_RW)   # remapped, no INVLPG
    g = page_walk_graph(m, lin)
    assert g.graph["tlb"] == "hit" and g.graph["tlb_stale"] and g.graph["pa"] == 0x9ABC
    m.cpu.cr3 = PD                                          # a CR3 write flushes the TLB
    assert page_walk_graph(m, lin).graph["tlb"] == "miss"
    assert page_walk_graph(_paged(tlb=None), lin).graph["tlb"] == "off"


def test_page_walk_graph_fault_at_the_level_where_the_walk_stops():
    m = _paged()
    g = page_walk_graph(m, 0x00633000)                      # PTE 0x233: P = 0
    assert g.graph["path"] == ["linear", "CR3", "PDE[0x001]", "PTE[0x233]", "#PF"]
    assert g.nodes["#PF"]["level"] == "PTE" and g.nodes["#PF"]["reason"] == "not-present"
    assert ("PTE[0x233]", "#PF") in g.edges and "page" not in g
    assert (g.graph["fault"], g.graph["fault_level"], g.graph["pa"]) == ("not-present", "PTE", None)
    g = page_walk_graph(m, 0x00C00000)                      # PDE 3: empty
    assert g.graph["path"] == ["linear", "CR3", "PDE[0x003]", "#PF"]
    assert g.nodes["#PF"]["level"] == "PDE"
    assert not any(d["kind"] == "pte" for _, d in g.nodes(data=True))


def test_page_walk_draws_the_graph():
    m = _paged()
    ax = page_walk(m, 0x00633000)
    boxes = {t.get_gid(): t for t in ax.texts if t.get_gid()}
    assert {"linear", "CR3", "PDE[0x001]", "PTE[0x233]", "#PF"} <= set(boxes)
    assert boxes["#PF"].get_bbox_patch().get_facecolor() == to_rgba(FAULT)
    assert boxes["PTE[0x233]"].get_bbox_patch().get_facecolor() == to_rgba(LIT)
    assert boxes["PTE[0x234]"].get_bbox_patch().get_facecolor() == to_rgba(DIM)
    assert "not-present at the PTE" in ax.get_title() and "TLB: miss" in ax.get_title()
    assert "0x00005abc" in page_walk(m, 0x00634ABC).get_title()


def test_page_walk_bad_arguments():
    m = _paged()
    with pytest.raises(ValueError, match="32-bit"):
        page_walk_graph(m, 1 << 32)
    with pytest.raises(ValueError, match="32-bit"):
        page_walk_graph(m, -1)
    with pytest.raises(ValueError, match="neighbours"):
        page_walk_graph(m, 0, neighbours=20)
    with pytest.raises(TypeError, match="Machine"):
        page_walk_graph("m", 0)
    with pytest.raises(ValueError, match="paging is off"):
        page_walk_graph(Machine(memory=1 << 16), 0x1000)


# ------------------------------------------------------------------ lesson 03
def test_lesson_tables_translate_as_walk_says():
    m, pt = l03.paged_machine(data_pages=4)
    for i in range(4):
        w = walk(m.memory, m.cpu.cr3, m.cpu.cr4, l03.DATA + i * l03.PAGE + 0x10)
        assert w.pa == l03.DATA_FRAMES + i * l03.PAGE + 0x10 and w.user and w.writable
    assert walk(m.memory, m.cpu.cr3, m.cpu.cr4, 0x1234).pa == 0x1234     # identity
    assert walk(m.memory, m.cpu.cr3, m.cpu.cr4, l03.DATA + 4 * l03.PAGE).fault == "not-present"
    with pytest.raises(ValueError, match="data_pages"):
        l03.paged_machine(data_pages=5000)


@pytest.mark.parametrize("n, misses", [(8, 8 + 1), (64, 64 + 1), (80, 80 * 10 + 1)])
def test_lesson_tlb_loop_hand_counted(n, misses):
    # 16 sets x 4 ways: up to 64 data pages fit (the code page costs one miss and is then
    # served by the fetch cache); 80 pages put 5 in every set: LRU misses every access
    c = l03.tlb_loop(n, rounds=10).counters
    assert (c["tlb_misses"], c["page_walks"], c["walk_refs"]) == (misses, misses, 2 * misses)
    # no TLB: nothing is kept, so every data access and every instruction fetch walks
    c = l03.tlb_loop(n, rounds=10, tlb=None).counters
    assert c["tlb_hits"] == 0
    assert c["page_walks"] == n * 10 + c["instructions"]


def test_lesson_page_fault_then_map_and_resume():
    m, pt = l03.fault_machine()
    ev = m.run()
    missing = l03.DATA + l03.MISSING_PAGE * l03.PAGE
    assert (ev.kind, ev.vector, ev.cpl) == ("exception", 14, 3)
    assert ev.error_code == 0b110 and ev.address == m.cpu.cr2 == missing  # U | W, P = 0
    assert l03.error_code_bits(ev.error_code) == {"P": 0, "W/R": 1, "U/S": 1, "RSVD": 0}
    text = l03.explain_error_code(ev.error_code)
    assert "P    = 0: the page was not present" in text and "W/R  = 1: the access was a write" in text
    assert "U/S  = 1" in text
    assert m.cpu.eip == ev.eip                                   # a fault: the write restarts
    pt.map(missing, 0x300000)
    ev = m.run()
    assert ev.kind == "exception" and ev.vector == l03.SYSCALL_VECTOR
    assert m.cpu.ebx == l03.FAULT_VALUE
    assert int.from_bytes(bytes(m.memory[0x300000:0x300004]), "little") == l03.FAULT_VALUE
    m0, _ = l03.fault_machine(ring=0)
    assert m0.run().error_code == 0b010                          # supervisor write
    with pytest.raises(ValueError):
        l03.explain_error_code(-1)


@pytest.mark.parametrize("seed", range(6))
def test_lesson_translation_exercise(seed):
    ex = l03.translation_exercise(seed)
    p = ex.params
    lin = p["lin"]
    table = p["pdes"][lin >> 22] & 0xFFFFF000
    frame = p["ptes"][table][(lin >> 12) & 0x3FF] & 0xFFFFF000
    assert ex.expected == frame | (lin & 0xFFF)
    assert ex.check(hex(ex.expected)).ok and not ex.check(ex.expected ^ 0x1000).ok
    assert not ex.check(None).ok and not ex.check("not a number").ok
    assert f"{lin:#010x}" in ex.question_text() and f"{ex.expected:#010x}" in ex.solution_text()


@pytest.mark.parametrize("seed", range(8))
def test_lesson_tlb_exercise_matches_its_worked_solution(seed):
    ex = l03.tlb_exercise(seed)
    p = ex.params
    fits = -(-p["n"] // p["sets"]) < p["ways"]
    assert ex.expected == (p["n"] + 1 if fits else p["n"] * p["rounds"] + 1)
    assert f"**{ex.expected}**" in ex.solution_text()
    assert ex.check(str(ex.expected)).ok and not ex.check([1, 2]).ok


# ------------------------------------------------------------------ 2D walk (nested paging)
@pytest.mark.parametrize("n, m, refs", [(2, 4, 14), (4, 4, 24), (3, 4, 19), (1, 1, 3)])
def test_two_dimensional_walk_counts_bhargavas_references(n, m, refs):
    # Bhargava et al., ASPLOS 2008: n*m + n + m = (n+1)(m+1) - 1 references per TLB miss
    assert hvsim.viz.reference_count(n, m) == refs == n * m + n + m


def test_two_dimensional_walk_order_is_nested_walk_then_guest_entry():
    from hvsim.viz import walk_order
    refs = walk_order(2, 4)
    assert [r.step for r in refs] == list(range(1, 15))
    # rows gCR3, PDE, data: 4 EPT references (root first) then the guest entry read
    assert [(r.row, r.column, r.kind) for r in refs[:5]] == \
        [(0, 0, "nested"), (0, 1, "nested"), (0, 2, "nested"), (0, 3, "nested"), (0, 4, "guest")]
    assert [r.label for r in refs if r.kind == "guest"] == ["guest PDE", "guest PTE"]
    assert [r.label for r in refs[10:]] == ["EPT PML4E for the data", "EPT PDPTE for the data",
                                            "EPT PDE for the data", "EPT PTE for the data"]
    with pytest.raises(ValueError, match="guest_levels must be an integer 1..5"):
        walk_order(0, 4)
    with pytest.raises(ValueError, match="ept_levels"):
        walk_order(2, True)


def test_walk_2d_draws_one_numbered_cell_per_reference():
    ax = hvsim.viz.walk_2d(2, 4)
    cells = {p.get_gid(): p for p in ax.patches if (p.get_gid() or "").startswith("ref|")}
    assert sorted(int(g.split("|")[1]) for g in cells) == list(range(1, 15))
    numbers = [t.get_text() for t in ax.texts if t.get_text().isdigit()]
    assert sorted(map(int, numbers)) == list(range(1, 15))
    # guest entries (steps 5 and 10) sit in the last column, the data cell unnumbered
    assert cells["ref|5"].get_x() > cells["ref|4"].get_x()
    assert any(p.get_gid() == "data" for p in ax.patches)
    assert "14 references" in ax.get_title()


# ------------------------------------------------------------------ sizes (issue 17, defect 7)
# A lesson's picture reaches the browser as a PNG at matplotlib's 100 dpi, cropped to what
# was drawn (the inline backend's bbox_inches="tight"), and is shown at that size, or
# shrunk to fit the output column: 844 px wide in a 1024 x 768 window with the side panel
# collapsed (tests/test_browser.py measures it). Checked on the SVG of the same crop,
# text kept as text: each font size times the rendered width over the viewBox width.
COLUMN_PX = 840
MIN_TEXT_PX = 12


def _svg_text_px(svg: str, width_px: float) -> list:
    """[(text, size in px)] of an SVG drawn ``width_px`` wide."""
    import re
    view_w = float(re.search(r'<svg[^>]*viewBox="[\d.]+ [\d.]+ ([\d.]+) ', svg).group(1))
    out = []
    for attrs, body in re.findall(r"<text([^>]*)>(.*?)</text>", svg, flags=re.S):
        # the size is on the <text>, or on its <tspan>s (matplotlib's math text: 10^2)
        size = min(map(float, re.findall(r'font-size(?:="|: ?)([\d.]+)', attrs + body)))
        out.append((re.sub(r"<[^>]+>", "", body).strip(), size * width_px / view_w))
    return out


def _drawn_size(ax):
    """(width px, height px, [(text, px)]) of a picture as a lesson shows it."""
    import io
    import re
    fig = ax.figure
    buf = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    svg = buf.getvalue()
    w_pt, h_pt = (float(v) for v in re.search(r'<svg[^>]*width="([\d.]+)pt" height="([\d.]+)pt"',
                                              svg).groups())
    w, h = w_pt * fig.dpi / 72, h_pt * fig.dpi / 72
    return w, h, [(t, px) for t, px in _svg_text_px(svg, min(w, COLUMN_PX)) if t]


def _lesson_pictures():
    """The pictures the lessons draw, as they draw them (smaller runs where it is slow)."""
    from hvsim.lessons import l01_rings as l01, l02_hole as l02, l04_ring_minus_one as l04
    from hvsim import cost
    m = _paged()
    yield "page walk 4 KiB", lambda: page_walk(m, 0x00634ABC)
    yield "page walk #PF", lambda: page_walk(m, 0x00633000)
    yield "page walk 4 MiB", lambda: page_walk(m, 0x00812345)
    yield "2D walk 2x4", lambda: hvsim.viz.walk_2d(2, 4)
    yield "2D walk 4x4", lambda: hvsim.viz.walk_2d(4, 4)
    yield "rings", lambda: ring_diagram(1, who={0: "monitor", 1: "guest kernel",
                                                3: "guest programs"},
                                        title="trap-and-emulate: the guest kernel is "
                                              "deprivileged to ring 1")
    yield "timeline", lambda: timeline(record(l01.syscall_demo().machine, steps=200),
                                       title="three system calls: ring 3 -> ring 0 -> ring 3")
    yield "counter bars", lambda: counter_bars(
        l03.tlb_sweep([16, 64, 80], rounds=1, tlb=(16, 4)),
        ["tlb_hits", "tlb_misses", "page_walks", "walk_refs"], log=True,
        title="ten passes over N pages, TLB = 16 sets x 4 ways")
    title = "the teaching kernel, 50,000 steps: cycles by category per CPU generation"
    yield "overhead 02", lambda: hvsim.viz.overhead_bars(l02.cost_runs(steps=300),
                                                          profiles=cost.ALL, title=title)
    yield "overhead 04", lambda: hvsim.viz.overhead_bars(l04.cost_runs(steps=300),
                                                          profiles=cost.ALL, title=title)


@pytest.mark.parametrize("name,draw", list(_lesson_pictures()), ids=lambda x: x
                         if isinstance(x, str) else "")
def test_pictures_fit_a_projector_with_readable_text(name, draw):
    w, h, texts = _drawn_size(draw())
    assert w <= COLUMN_PX, f"{name}: {w:.0f} px wide"
    small = [(t, round(px, 1)) for t, px in texts if px < MIN_TEXT_PX]
    assert texts and not small, f"{name}: text under {MIN_TEXT_PX} px: {small}"


def test_ring_indicator_svg_text_is_readable():
    from hvsim.widgets.render import rings_svg
    import re
    for vmx in (None, "root", "non-root"):
        svg = rings_svg(3, vmx)
        width = float(re.search(r'<svg[^>]*width="([\d.]+)"', svg).group(1))
        texts = _svg_text_px(svg, width)
        assert width <= COLUMN_PX and len(texts) >= 9
        assert min(px for _, px in texts) >= MIN_TEXT_PX, texts


def test_page_walk_has_no_empty_band():
    """The picture is as tall as its boxes and title: no band of white above or below."""
    from matplotlib.transforms import Bbox
    for lin in (0x00634ABC, 0x00633000, 0x00812345):
        ax = page_walk(_paged(), lin)
        fig = ax.figure
        fig.canvas.draw()                       # places the boxes around the texts
        r = fig.canvas.get_renderer()
        drawn = Bbox.union([t.get_bbox_patch().get_window_extent(r) for t in ax.texts
                            if t.get_bbox_patch() is not None]
                           + [ax.title.get_window_extent(r)])
        whole = fig.get_tightbbox(r).transformed(fig.dpi_scale_trans)
        assert whole.height <= drawn.height + 20 and whole.width <= drawn.width + 20, \
            (whole.bounds, drawn.bounds)
