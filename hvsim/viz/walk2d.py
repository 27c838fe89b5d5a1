"""The two-dimensional page walk of nested paging (EPT, NPT) as a grid of references
(plain Python and matplotlib; not jitted, and independent of hvsim's EPT walker).

With nested paging a guest's page walk translates a guest-linear address (gVA) to a
guest-physical one (gPA) through the *guest's* tables, and every gPA it uses -- the
guest's CR3, each guest entry's pointer to the next table, and the final gPA of the
data -- is itself translated to a host-physical address (hPA) by a walk of the *nested*
(EPT) tables. Bhargava, Serebrin, Spadini & Manne ("Accelerating Two-Dimensional Page
Walks for Virtualized Systems", ASPLOS 2008, sec. 3 and Figure 3) draw it as a grid:
one row per gPA the guest walk needs (n guest levels + the data), one column per
nested level, plus the column of the guest entry itself::

                   nested (EPT) walk of that gPA         the guest entry, at its hPA
    gCR3 -> PD     1  EPT PML4E  2 PDPTE  3 PDE  4 PTE    5  guest PDE
    PDE  -> PT     6             7        8      9       10  guest PTE
    PTE  -> data  11            12       13     14           (the data itself)

A TLB miss therefore costs n*m + n + m = (n+1)(m+1) - 1 memory references: 24 for a
4-level guest on a 4-level EPT, 14 for 2-level (32-bit, non-PAE) guest paging on a
4-level EPT (Bhargava et al. 2008, sec. 3; SDM Vol. 3C, 29.3.2 for the EPT walk,
Vol. 3A, 4.3 for 32-bit paging). The final access to the data is the access the walk
was for, not a walk reference, and is not counted.

:func:`walk_order` is the walk as a list of references, in the order a walker makes
them (each nested walk from its root to its leaf, then the guest entry it found);
:func:`reference_count` counts them; :func:`walk_2d` draws the grid, cells numbered in
walk order.

>>> reference_count(2, 4), reference_count(4, 4)
(14, 24)
>>> [r.label for r in walk_order(1, 1)]
['EPT PTE for gCR3', 'guest PTE', 'EPT PTE for the data']
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from hvsim.viz._common import axes, LIT, EDGE, DIM, DIM_TEXT

__all__ = ["Reference", "walk_order", "reference_count", "walk_2d", "GUEST_TABLES",
           "EPT_ENTRIES", "MAX_LEVELS"]

MAX_LEVELS = 5
#: the guest's tables, root first (SDM Vol. 3A ch. 4): the last n of these for n levels
#: (2: 32-bit paging, PD and PT; 3: PAE, PDPT PD PT; 4: IA-32e; 5: 5-level paging)
GUEST_TABLES = ("PML5", "PML4", "PDPT", "PD", "PT")
#: the EPT entries a nested walk reads, root first (SDM Vol. 3C, 29.3.2): the last m
EPT_ENTRIES = ("PML5E", "PML4E", "PDPTE", "PDE", "PTE")

GUEST_COLOUR = "#4e79a7"          # a guest paging-structure entry
DATA_HATCH = "..."


@dataclasses.dataclass(frozen=True)
class Reference:
    """One memory reference of a 2D walk.

    ``step``: its place in the walk (1-based); ``row``: which gPA is being used (0 =
    the guest's CR3, i = the pointer in the guest entry of level i, n = the data's
    gPA); ``column``: 0..m-1 for the nested levels (root first), m for the guest entry
    read at the translated address; ``kind``: 'nested' or 'guest'; ``label``: words.
    """
    step: int
    row: int
    column: int
    kind: str
    label: str


def _levels(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LEVELS:
        raise ValueError(f"{name} must be an integer 1..{MAX_LEVELS} (levels of paging), "
                         f"got {value!r}")
    return value


def _guest_entry(n: int, i: int) -> str:
    """The entry read in the guest's table of level i (0 = the root): 'PDE', 'PTE'..."""
    return GUEST_TABLES[-n:][i] + "E"


def _row_names(n: int) -> list:
    """What each row's gPA points to: 'gCR3 -> PD', 'PDE -> PT', ..., 'PTE -> data'."""
    tables = GUEST_TABLES[-n:]
    return [f"gCR3 -> {tables[0]}"] + [
        f"{_guest_entry(n, i)} -> {tables[i + 1] if i + 1 < n else 'data'}" for i in range(n)]


def walk_order(guest_levels: int = 2, ept_levels: int = 4) -> list:
    """The references of one TLB miss under nested paging, in walk order.

    A small model of the walker (Bhargava et al. 2008, sec. 3): for each guest level,
    the gPA of the guest table (from gCR3 or from the previous guest entry) is walked
    through the ``ept_levels`` nested tables, root first, and the guest entry is then
    read at the host-physical address found; the data's final gPA is walked once more.
    """
    n = _levels("guest_levels", guest_levels)
    m = _levels("ept_levels", ept_levels)
    ept = EPT_ENTRIES[-m:]
    refs: list = []

    def nested(row: int, what: str) -> None:
        for col, entry in enumerate(ept):
            refs.append(Reference(len(refs) + 1, row, col, "nested", f"EPT {entry} for {what}"))

    for level in range(n):
        nested(level, "gCR3" if level == 0 else f"the guest {_guest_entry(n, level - 1)}'s "
                                                  f"pointer")
        refs.append(Reference(len(refs) + 1, level, m, "guest",
                              f"guest {_guest_entry(n, level)}"))
    nested(n, "the data")
    return refs


def reference_count(guest_levels: int = 2, ept_levels: int = 4) -> int:
    """Memory references of one 2D walk, counted from :func:`walk_order`; equal to
    n*m + n + m = (n+1)(m+1) - 1 (Bhargava et al. 2008)."""
    return len(walk_order(guest_levels, ept_levels))


def walk_2d(guest_levels: int = 2, ept_levels: int = 4, ax=None, *,
            title: Optional[str] = None):
    """Draw the 2D walk as a grid: rows are the gPAs the guest walk needs, columns the
    nested (EPT) levels and then the guest entry; each reference is a cell numbered in
    walk order (nested references light, guest entries dark), the data access hatched
    and unnumbered. Each numbered cell is a Rectangle patch with gid ``'ref|<step>'``.
    Returns the Axes."""
    from matplotlib.patches import Rectangle
    refs = walk_order(guest_levels, ept_levels)
    n, m = guest_levels, ept_levels
    ax = axes(ax, (1.25 * (m + 1) + 2.6, 0.75 * (n + 1) + 1.6))
    for r in refs:
        x, y = r.column, n - r.row
        colour = LIT if r.kind == "nested" else GUEST_COLOUR
        patch = Rectangle((x + 0.04, y + 0.06), 0.92, 0.88, facecolor=colour,
                          edgecolor=EDGE, linewidth=0.8, gid=f"ref|{r.step}")
        ax.add_patch(patch)
        ax.text(x + 0.5, y + 0.55, str(r.step), ha="center", va="center", fontsize=11,
                fontweight="bold", color="white" if r.kind == "guest" else "black")
        ax.text(x + 0.5, y + 0.2, r.label.split(" for ")[0].replace("EPT ", "")
                .replace("guest ", "g"), ha="center", va="center", fontsize=9,
                color="white" if r.kind == "guest" else "#333333")
    data = Rectangle((m + 0.04, 0.06), 0.92, 0.88, facecolor=DIM, edgecolor=DIM_TEXT,
                     hatch=DATA_HATCH, linewidth=0.8, gid="data")
    ax.add_patch(data)
    ax.text(m + 0.5, 0.5, "the data\n(not a walk\nreference)", ha="center", va="center",
            fontsize=9, color="#555555",
            bbox=dict(facecolor=DIM, edgecolor="none", boxstyle="round,pad=0.2"))
    rows = _row_names(n)
    ax.set_yticks([n - i + 0.5 for i in range(n + 1)])
    ax.set_yticklabels([f"{rows[i]}" for i in range(n + 1)], fontsize=9)
    ax.set_xticks([c + 0.5 for c in range(m + 1)])
    ax.set_xticklabels([f"EPT {e}" for e in EPT_ENTRIES[-m:]] + ["guest entry"], fontsize=9)
    ax.xaxis.tick_top()
    ax.set_xlim(0, m + 1)
    ax.set_ylim(0, n + 1)
    ax.set_aspect("equal")
    for side in ("right", "bottom"):
        ax.spines[side].set_visible(False)
    if title is None:
        title = (f"2D walk: {n}-level guest paging on a {m}-level EPT = {len(refs)} "
                 f"references ((n+1)(m+1) - 1 = {(n + 1) * (m + 1) - 1})")
    ax.set_title(title, fontsize=10, pad=28)
    ax.set_xlabel("each gPA the guest walk uses is walked through the EPT first, root to leaf",
                  fontsize=9)
    return ax
