"""Where the cycles go: stacked bars of cost breakdowns, runs side by side (matplotlib;
not jitted).

Each bar is one run on one CPU profile (:func:`hvsim.cost.breakdown`); its segments are
the categories of the cost model -- guest instructions, traps/exits, monitor work, page
walks, I/O -- each the sum of count x cited cost of its events. The part of a segment
that comes from estimated costs (no published figure) is hatched, so a reader sees at
once which cycles rest on a measurement.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import numpy as np

from hvsim.cost import CATEGORIES, Breakdown, breakdown
from hvsim.viz._common import axes

CATEGORY_COLOURS = {
    "guest instructions": "#4e79a7",
    "traps/exits": "#e15759",
    "monitor work": "#f28e2b",
    "page walks": "#59a14f",
    "I/O": "#76b7b2",
}
ESTIMATE_HATCH = "///"


def _bars(runs, profiles) -> list:
    """[(run label, Breakdown)] in drawing order, grouped by profile when there are several."""
    if isinstance(runs, Breakdown):
        return [(runs.label, runs)]
    if not isinstance(runs, Mapping) or not runs:
        raise TypeError("overhead_bars() takes a Breakdown, or a dict {run name: Breakdown} "
                        "(or {run name: {profile: Breakdown}}, e.g. from cost.breakdowns()), "
                        "or a dict {run name: machine or monitor} with profiles=...")
    out = []
    for name, v in runs.items():
        name = str(name)
        if isinstance(v, Breakdown):
            if profiles is not None:
                raise ValueError(f"run {name!r} is already a Breakdown (on "
                                 f"{v.profile.name}); profiles= is for machines/monitors")
            out.append((name, v))
        elif isinstance(v, Mapping) and v and all(isinstance(b, Breakdown) for b in v.values()):
            out += [(name, b) for b in v.values()]
        else:
            if profiles is None:
                raise ValueError(f"run {name!r} is not a Breakdown: say on which CPU "
                                 "profile(s) to cost it, e.g. profiles='nehalem' or "
                                 "profiles=hvsim.cost.ALL")
            ps = ([profiles] if isinstance(profiles, str) or not hasattr(profiles, "__iter__")
                  else list(profiles))
            out += [(name, breakdown(v, p, label=name)) for p in ps]
    names = []
    for _, b in out:
        if b.profile.name not in names:
            names.append(b.profile.name)
    # group by profile (the order profiles first appear), keeping the runs' order inside
    return sorted(out, key=lambda nb: names.index(nb[1].profile.name))


def overhead_bars(runs, ax=None, *, profiles=None, title: Optional[str] = None,
                  totals: bool = True, legend: bool = True):
    """Stacked bars of cycles by category, several runs side by side.

    ``runs``: a :class:`~hvsim.cost.Breakdown`; a dict ``{run name: Breakdown}``; a dict
    ``{run name: {profile: Breakdown}}`` (``cost.breakdowns()`` per run: one group of
    bars per CPU generation); or a dict ``{run name: machine, monitor or counts}`` with
    ``profiles=`` a profile name or a list of them.
    ``totals``: write each bar's total above it. The part of a category that comes
    from estimated costs is hatched.

    Each segment is a bar patch whose gid is ``'run|profile|category|measured'`` or
    ``'...|estimate'``. Returns the Axes.
    """
    bars = _bars(runs, profiles)
    several_profiles = len({b.profile.name for _, b in bars}) > 1
    # at most 8.2 inches, so that it fits a projector's 840 px notebook column at 100 dpi:
    # beyond six bars their labels stand upright (issue 17, defect 7)
    upright = len(bars) > 6
    ax = axes(ax, (min(8.2, max(4.5, 1.0 * len(bars) + 2.5)), 4.0))
    x, pos, prev = [], 0.0, None
    for _, b in bars:
        if prev is not None and b.profile.name != prev:
            pos += 0.5                  # a gap between CPU generations
        x.append(pos)
        pos += 1.0
        prev = b.profile.name
    x = np.array(x)
    bottom = np.zeros(len(bars))
    for cat in CATEGORIES:
        colour = CATEGORY_COLOURS[cat]
        for part in ("measured", "estimate"):
            h = np.array([(b.categories[cat] - b.estimated[cat]) if part == "measured"
                          else b.estimated[cat] for _, b in bars], dtype=float)
            for i, (name, b) in enumerate(bars):
                if h[i] <= 0:
                    continue
                (patch,) = ax.bar(x[i], h[i], 0.8, bottom=bottom[i], color=colour,
                                  edgecolor="white" if part == "measured" else "#333333",
                                  hatch=ESTIMATE_HATCH if part == "estimate" else None,
                                  linewidth=0.5)
                patch.set_gid(f"{name}|{b.profile.name}|{cat}|{part}")
            bottom += h
    if totals:
        for i, (_, b) in enumerate(bars):
            ax.text(x[i], bottom[i], f"{b.total:,.0f}", ha="center", va="bottom", fontsize=9,
                    rotation=90 if upright else 0)
    ax.set_xticks(x)
    labels = [f"{name or 'run'}\n{b.profile.name}" if several_profiles else (name or "run")
              for name, b in bars]
    if upright:                 # a run name's own line breaks would make it too wide
        labels = [t.replace("\n", " ", t.count("\n") - several_profiles) for t in labels]
    ax.set_xticklabels(labels, fontsize=9, rotation=90 if upright else 0)
    ax.set_ylabel("cycles (sum of count x cost)")
    if title is None:
        title = "Cycles by category" + ("" if several_profiles else
                                        f" -- {bars[0][1].profile.label}")
    ax.set_title(title, fontsize=10)
    if legend:
        from matplotlib.patches import Patch
        handles = [Patch(facecolor=CATEGORY_COLOURS[c], label=c) for c in CATEGORIES]
        handles.append(Patch(facecolor="white", edgecolor="#333333", hatch=ESTIMATE_HATCH,
                             label="from estimated costs (*)"))
        if upright:             # inside, above the bars: no room beside them
            ax.legend(handles=handles, fontsize=9, loc="upper center", ncol=3)
        else:
            ax.legend(handles=handles, fontsize=9, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.margins(y=0.1)
    if upright and legend:
        ax.set_ylim(top=ax.get_ylim()[1] * 1.6)
    return ax
