"""The privilege rings as concentric circles (matplotlib; not jitted).

IA-32 has four privilege levels (SDM Vol. 3A, 5.5, Figure 5-3 draws them as rings):
ring 0 innermost and most privileged, ring 3 outermost. The CPU's *current* privilege
level (CPL) is the RPL field of CS. Hardware virtualization (VT-x) adds a mode *below*
ring 0 that the literature calls "ring -1": VMX root operation, where the hypervisor
runs while the guest keeps all four rings in VMX non-root operation (SDM Vol. 3C, 23.3).
The diagram keeps room for it at the centre, dashed and grey until asked for.
"""
from __future__ import annotations

from typing import Mapping, Optional

from matplotlib.patches import Circle, Wedge

from hvsim.viz._common import axes, LIT, UNLIT, EDGE, DIM, DIM_TEXT

VMX_ROOT = -1            # "ring -1": VMX root operation (SDM Vol. 3C, 23.3)
RINGS = (0, 1, 2, 3)     # IA-32 privilege levels (SDM Vol. 3A, 5.5)

#: What each ring is classically used for (SDM Vol. 3A, 5.5: "the operating system
#: kernel" in 0, "operating system services" in 1-2, "applications" in 3).
RING_NAMES = {VMX_ROOT: "VMX root\n(hypervisor)", 0: "kernel", 1: "drivers", 2: "drivers",
              3: "applications"}

_WIDTH = 1.0             # radial width of each ring; ring -1 is the central disc


def _check_ring(what, ring):
    if isinstance(ring, bool) or not isinstance(ring, int) or not VMX_ROOT <= ring <= 3:
        raise ValueError(f"{what} must be a ring number -1..3 (-1 = VMX root), got {ring!r}")
    return ring


def ring_diagram(cpl=None, ax=None, *, who: Optional[Mapping[int, str]] = None,
                 labels: Optional[Mapping[int, str]] = None, vmx: bool = False,
                 title: Optional[str] = None):
    """Draw rings 0-3 (ring 0 innermost) with the current privilege level lit.

    ``cpl``: the ring to light -- an int -1..3, a Machine or a monitor (its machine's
    ``cpu.cpl``), or None.
    ``who``: ``{ring: label}``, who runs where, e.g. ``{0: "monitor", 1: "guest kernel"}``.
    ``labels``: replaces the classic role of a ring (:data:`RING_NAMES`).
    ``vmx``: draw ring -1 (VMX root) as a real ring; it is also drawn when ``cpl`` is -1 or
    ``who`` names ring -1. Otherwise it stays a dashed grey placeholder.

    Each ring is one patch labelled ``"ring N"``; the lit one has gid ``"lit"``.
    Returns the Axes.
    """
    if cpl is not None and not isinstance(cpl, int):
        from hvsim.machine import Machine
        from hvsim.monitors import Monitor
        if isinstance(cpl, Monitor):
            cpl = cpl.machine
        if isinstance(cpl, Machine):
            cpl = cpl.cpu.cpl
        else:
            raise TypeError(f"cpl must be a ring number, a Machine, a monitor or None, "
                            f"got {type(cpl).__name__}")
    if cpl is not None:
        _check_ring("cpl", cpl)
    who = dict(who or {})
    for r in who:
        _check_ring("a ring in who=", r)
    names = dict(RING_NAMES)
    for r, text in (labels or {}).items():
        names[_check_ring("a ring in labels=", r)] = text
    vmx = bool(vmx) or cpl == VMX_ROOT or VMX_ROOT in who

    ax = axes(ax, (5.6, 5.6))
    outer = (len(RINGS) + 1) * _WIDTH
    for ring in (VMX_ROOT,) + RINGS:
        r_out = (ring + 2) * _WIDTH
        lit = ring == cpl
        if ring == VMX_ROOT:
            patch = Circle((0, 0), r_out)
        else:
            patch = Wedge((0, 0), r_out, 0, 360, width=_WIDTH)
        if ring == VMX_ROOT and not vmx:
            patch.set(facecolor=DIM, edgecolor=DIM_TEXT, linestyle="--", gid="placeholder")
        else:
            patch.set(facecolor=LIT if lit else UNLIT, edgecolor=EDGE,
                      gid="lit" if lit else "unlit")
        patch.set_label(f"ring {ring}")
        patch.set_linewidth(2.5 if lit else 1.2)
        ax.add_patch(patch)

        greyed = ring == VMX_ROOT and not vmx
        colour = DIM_TEXT if greyed else "black"
        weight = "bold" if lit else "normal"
        head = f"ring {ring}"
        if ring == VMX_ROOT:
            y_name, y_who = 0.28, -0.38
        else:
            y_name, y_who = r_out - _WIDTH / 2, -(r_out - _WIDTH / 2)
        ax.text(0, y_name, f"{head}\n{names[ring]}" if ring != VMX_ROOT else names[ring],
                ha="center", va="center", fontsize=9, color=colour, fontweight=weight,
                gid=f"name ring {ring}")
        if ring in who:
            ax.text(0, y_who, who[ring], ha="center", va="center", fontsize=9,
                    fontweight="bold", color="#1f3b63", gid=f"who ring {ring}",
                    bbox=dict(boxstyle="round,pad=0.2", facecolor="white", edgecolor=EDGE,
                              linewidth=0.6))
    if title is None:
        title = "privilege rings" + (f" -- CPL = {cpl}" if cpl is not None else "")
    ax.set_title(title)
    ax.set_xlim(-outer - 0.1, outer + 0.1)
    ax.set_ylim(-outer - 0.1, outer + 0.1)
    ax.set_aspect("equal")
    ax.axis("off")
    return ax
