"""One 32-bit page walk as a graph: CR3 -> PDE -> PTE -> page (networkx; not jitted).

:func:`page_walk_graph` builds a ``networkx.DiGraph`` from what
:func:`hvsim.mmu.walk` reads in the machine's memory (SDM Vol. 3A, 4.3), and looks up
the machine's TLB for the same page; :func:`page_walk` draws it. The graph is the
data, so a test or a curious student can read it::

    linear --> CR3 --> PDE[i] --> PTE[j] --> page          (4 KiB page)
    linear --> CR3 --> PDE[i] --> page                     (4 MiB page, PDE.PS = 1)
    linear --> CR3 --> PDE[i] --> #PF                      (the walk stops: P = 0 ...)

with i = lin[31:22] and j = lin[21:12]. Nodes ``PDE[0x...]`` / ``PTE[0x...]`` next to the
path are the neighbouring entries of the same table (``on_path`` False), drawn dimmed.

Node attributes: ``kind`` ('linear', 'cr3', 'pde', 'pte', 'page', 'fault'), ``label``
(the text drawn), ``on_path``, ``pos`` (x, y for the drawing); table entries also carry
``index``, ``addr`` (physical address of the entry), ``value`` (None if outside memory),
``flags`` ('P RW US A'...), ``present``; the page carries ``frame``, ``pa``, ``size``;
the fault node ``reason`` and ``level`` ('PDE' or 'PTE'). Graph attributes: ``lin``,
``pa``, ``fault``, ``fault_level``, ``path`` (node ids in order), ``walk`` (the
:class:`hvsim.mmu.WalkResult`), and the TLB's view of the page: ``tlb`` ('hit', 'miss',
or 'off'), ``tlb_set``, ``tlb_frame`` (what the TLB would use, None on a miss) and
``tlb_stale`` (a cached frame that no longer matches the tables: the OS forgot INVLPG).
"""
from __future__ import annotations

import networkx as nx

from hvsim.arch import layout as L
from hvsim.arch.cr import CR0_PG, CR3_PD_MASK
from hvsim.mmu import walk, tlb_contents, entry_flags
from hvsim.arch.pte import PTE_P, PTE_FRAME
from hvsim.viz._common import axes, LIT, EDGE, DIM, DIM_TEXT, FAULT, OK

# 32-bit paging splits a linear address into three fields (SDM Vol. 3A, 4.3, Figure 4-2)
PDE_SHIFT = 22           # bits 31:22 -> page-directory index
PTE_SHIFT = 12           # bits 21:12 -> page-table index
INDEX_MASK = 0x3FF       # 10 bits: 1024 entries per table
OFFSET_MASK = 0xFFF      # bits 11:0 -> byte offset in a 4 KiB page
ENTRY_SIZE = 4           # bytes per PDE / PTE
ENTRIES = 1024

_COLUMN = {"linear": 0.0, "cr3": 0.0, "pde": 1.8, "pte": 3.6, "page": 5.4}
_ROW = 0.55              # vertical distance between neighbouring entries

# the drawing is laid out in inches from the measured boxes, so that it is as big as
# what it shows: 9 pt is 12.5 px at the inline backend's 100 dpi, the least a projector
# shows legibly, and four columns of boxes then fit 840 px (issue 17, defect 7)
FONT_SIZE = 9
_GAP_X = 0.4             # inches between two columns (room for an arrow)
_GAP_Y = 0.12            # inches between two entries of a table
_GAP_LINEAR = 0.35       # inches between the linear address and CR3 below it
_MARGIN = 0.05
_TITLE = 0.5             # inches above the boxes for the two-line title


def _pde_id(i):
    return f"PDE[{i:#05x}]"


def _pte_id(j):
    return f"PTE[{j:#05x}]"


def _read32(mem, pa):
    if pa + ENTRY_SIZE > len(mem):
        return None
    return int.from_bytes(bytes(mem[pa:pa + ENTRY_SIZE]), "little")


def _entry_label(kind, index, addr, value):
    head = f"{kind.upper()}[{index:#05x}] @{addr:#010x}"
    if value is None:
        return f"{head}\n(outside memory)"
    return f"{head}\n{value:#010x}  {entry_flags(value)}"


def _add_table(g, kind, base, index, neighbours, x):
    """The path entry of one table and its neighbours; returns the path node id."""
    make_id = _pde_id if kind == "pde" else _pte_id
    for i in range(max(0, index - neighbours), min(ENTRIES - 1, index + neighbours) + 1):
        addr = base + ENTRY_SIZE * i
        value = _read32(g.graph["_mem"], addr)
        g.add_node(make_id(i), kind=kind, index=i, addr=addr, value=value,
                   flags=entry_flags(value) if value is not None else "-",
                   present=bool(value is not None and value & PTE_P),
                   on_path=i == index, label=_entry_label(kind, i, addr, value),
                   pos=(x, -(i - index) * _ROW))
    return make_id(index)


def _machine_parts(machine):
    try:
        return machine.memory, machine._st, machine._tlb
    except AttributeError:
        raise TypeError(f"page_walk_graph() takes a hvsim Machine, got "
                        f"{type(machine).__name__}") from None


def page_walk_graph(machine, linear_address: int, *, neighbours: int = 2) -> nx.DiGraph:
    """The walk of ``linear_address`` in ``machine``'s current page tables, as a DiGraph.

    Reads memory only: no accessed/dirty flag is set, the TLB is looked at, not filled.
    ``neighbours``: how many entries to show on each side of the one the walk uses.
    """
    mem, st, tlb = _machine_parts(machine)
    if isinstance(linear_address, bool) or not isinstance(linear_address, int) \
            or not 0 <= linear_address <= 0xFFFFFFFF:
        raise ValueError(f"linear_address must be a 32-bit address, got {linear_address!r}")
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or not 0 <= neighbours <= 8:
        raise ValueError(f"neighbours must be an integer 0..8, got {neighbours!r}")
    if not int(st[L.CR0]) & CR0_PG:
        raise ValueError(f"paging is off (CR0.PG = 0): linear address {linear_address:#x} is "
                         f"the physical address, there is no walk to draw")
    lin = linear_address
    cr3, cr4 = int(st[L.CR3]), int(st[L.CR4])
    w = walk(mem, cr3, cr4, lin)
    g = nx.DiGraph(lin=lin, pa=w.pa, fault=w.fault, fault_level=w.fault_level, walk=w, _mem=mem)
    pdi, pti, off = lin >> PDE_SHIFT, (lin >> PTE_SHIFT) & INDEX_MASK, lin & OFFSET_MASK
    g.add_node("linear", kind="linear", on_path=True, pos=(_COLUMN["linear"], 1.3),
               label=f"linear {lin:#010x}\nPDE index {pdi:#05x}\nPTE index {pti:#05x}\n"
                     f"offset    {off:#05x}")
    g.add_node("CR3", kind="cr3", on_path=True, value=cr3, pos=(_COLUMN["cr3"], 0.0),
               label=f"CR3 {cr3:#010x}\npage directory\nat {cr3 & CR3_PD_MASK:#010x}")
    path = ["linear", "CR3"]
    g.add_edge("linear", "CR3", label="")
    pde = _add_table(g, "pde", cr3 & CR3_PD_MASK, pdi, neighbours, _COLUMN["pde"])
    g.add_edge("CR3", pde, label=f"+ 4 x {pdi:#x}")
    path.append(pde)
    last, last_x = pde, _COLUMN["pde"]
    if w.pte_addr is not None:
        table = w.pde & PTE_FRAME
        pte = _add_table(g, "pte", table, pti, neighbours, _COLUMN["pte"])
        g.add_edge(pde, pte, label=f"+ 4 x {pti:#x}")
        path.append(pte)
        last, last_x = pte, _COLUMN["pte"]
    if w.fault is None:
        size = "4 MiB" if w.large else "4 KiB"
        g.add_node("page", kind="page", on_path=True, frame=w.frame, pa=w.pa, size=w.page_size,
                   pos=(_COLUMN["page"], 0.0),
                   label=f"{size} page\nat {w.frame:#010x}\n+ offset = physical\n{w.pa:#010x}")
        g.add_edge(last, "page", label=f"+ {lin & (w.page_size - 1):#x}")
        path.append("page")
    else:
        name = "bus error" if w.fault == "bus-error" else "#PF"
        reason = {"not-present": "not present (P = 0)", "reserved": "reserved bit set",
                  "bus-error": "table outside memory"}[w.fault]
        g.add_node(name, kind="fault", on_path=True, reason=w.fault, level=w.fault_level,
                   pos=(last_x + 1.8, 0.0),
                   label=f"{name}\nat the {w.fault_level}:\n{reason}")
        g.add_edge(last, name, label="")
        path.append(name)
    g.graph["path"] = path

    # what the TLB holds for this page (hvsim/mmu/tlb.py: one entry per 4 KiB linear page)
    sets = int(st[L.CFG_TLB_SETS])
    page = lin & ~OFFSET_MASK
    g.graph["tlb_set"] = (lin >> PTE_SHIFT) & (sets - 1)
    g.graph["tlb_frame"] = None
    g.graph["tlb_stale"] = False
    if not st[L.CFG_TLB_ENABLED]:
        g.graph["tlb"] = "off"
    else:
        cached = [e for e in tlb_contents(st, tlb) if e.lin_page == page]
        g.graph["tlb"] = "hit" if cached else "miss"
        if cached:
            frame = cached[0].frame
            g.graph["tlb_frame"] = frame
            g.graph["tlb_stale"] = w.fault is not None or frame != (w.pa & ~OFFSET_MASK)
    del g.graph["_mem"]
    return g


def _tlb_text(g):
    if g.graph["tlb"] == "off":
        return "TLB: off (every access walks)"
    where = f"set {g.graph['tlb_set']}"
    if g.graph["tlb"] == "miss":
        return f"TLB: miss ({where}) -- the next access walks the tables"
    text = f"TLB: hit ({where}) -> frame {g.graph['tlb_frame']:#010x}"
    if g.graph["tlb_stale"]:
        text += "  STALE: the tables changed, no INVLPG yet"
    return text


def page_walk(machine, linear_address: int, ax=None, *, neighbours: int = 2):
    """Draw the page walk of ``linear_address`` (see :func:`page_walk_graph`).

    The path is lit, neighbouring entries are dimmed, a fault is drawn in red where the
    walk stops; the title says what the TLB holds for the page. Each node is a text box
    whose gid is the node's id. Returns the Axes.
    """
    g = page_walk_graph(machine, linear_address, neighbours=neighbours)
    new = ax is None
    ax = axes(ax, (8, 4))                   # a new figure is sized below to what it shows
    fig = ax.figure
    boxes = {}
    for node, d in g.nodes(data=True):
        if d["kind"] == "fault":
            face, colour = FAULT, "white"
        elif d["kind"] == "page":
            face, colour = OK, "white"
        elif d["on_path"]:
            face, colour = LIT, "black"
        else:
            face, colour = DIM, DIM_TEXT
        style = "round,pad=0.4" if d["kind"] not in ("pde", "pte") else "square,pad=0.3"
        boxes[node] = ax.text(0, 0, d["label"], ha="center", va="center", fontsize=FONT_SIZE,
                              family="monospace", color=colour, gid=node, zorder=3,
                              bbox=dict(boxstyle=style, facecolor=face,
                                        edgecolor=EDGE if d["on_path"] else DIM_TEXT,
                                        linestyle="-" if d.get("present", True) else "--"))
    # measure the boxes (inches, padding included), then place them: the graph's pos gives
    # the column and the row, the widest box of a column its width, the tallest entry the
    # distance between rows
    renderer = fig.canvas.get_renderer()
    size = {}
    for node, t in boxes.items():
        pad = 2 * float(t.get_bbox_patch().get_boxstyle().pad) * FONT_SIZE / 72
        e = t.get_window_extent(renderer)
        size[node] = (e.width / fig.dpi + pad, e.height / fig.dpi + pad)
    used = sorted({d["pos"][0] for _, d in g.nodes(data=True)})   # no empty column (4 MiB)
    column = {n: used.index(d["pos"][0]) for n, d in g.nodes(data=True)}
    widths = [max(size[n][0] for n in column if column[n] == c) for c in range(len(used))]
    xs = [widths[0] / 2]
    for c in range(1, len(widths)):
        xs.append(xs[-1] + widths[c - 1] / 2 + _GAP_X + widths[c] / 2)
    pitch = max(h for n, (_, h) in size.items() if g.nodes[n]["kind"] in ("pde", "pte")) + _GAP_Y
    for node, t in boxes.items():
        if node == "linear":
            y = size["CR3"][1] / 2 + _GAP_LINEAR + size["linear"][1] / 2
        else:
            y = g.nodes[node]["pos"][1] / _ROW * pitch
        t.set_position((xs[column[node]], y))
    for u, v, d in g.edges(data=True):
        # zorder above the boxes: they are drawn (and positioned) first, so the arrow
        # can be clipped to their outlines
        ax.annotate("", xy=boxes[v].get_position(), xytext=boxes[u].get_position(), zorder=4,
                    arrowprops=dict(arrowstyle="-|>", color=EDGE, lw=1.4,
                                    patchA=boxes[u].get_bbox_patch(),
                                    patchB=boxes[v].get_bbox_patch(), shrinkA=2, shrinkB=2))
    left, right = -_MARGIN, xs[-1] + widths[-1] / 2 + _MARGIN
    bottom = min(t.get_position()[1] - size[n][1] / 2 for n, t in boxes.items()) - _MARGIN
    top = max(t.get_position()[1] + size[n][1] / 2 for n, t in boxes.items()) + _MARGIN
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_aspect("equal")                  # one unit is one inch both ways
    if new:
        w, h = right - left, top - bottom
        fig.set_size_inches(w, h + _TITLE)
        ax.set_position([0, 0, 1, h / (h + _TITLE)])
    ax.axis("off")
    lin = g.graph["lin"]
    result = (f"physical {g.graph['pa']:#010x}" if g.graph["fault"] is None
              else f"{g.graph['fault']} at the {g.graph['fault_level']}")
    ax.set_title(f"page walk of linear {lin:#010x} -> {result}\n{_tlb_text(g)}", fontsize=10)
    return ax
