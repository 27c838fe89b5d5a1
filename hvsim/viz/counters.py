"""Event counters as bars: one run, or several runs side by side (matplotlib; not jitted).

The counters are the bridge to the cost model (DESIGN.md): the core counts events, a
profile gives each event a cost. Before any cost, the counts alone already tell the
story -- how many TLB misses, walks, traps -- so the lessons show them as bars.
Counter names are those of ``Machine.counters`` (hvsim/arch/counters.py NAMES,
``ring0``..``ring3``, ``exception_<n>``, ``delivered_<n>``).
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from numbers import Integral
from typing import Optional, Sequence

import numpy as np

from hvsim.arch import layout as L
from hvsim.machine import Counters
from hvsim.viz._common import axes, RUN_COLOURS

_NO_COUNTERS = Counters(np.zeros(L.N_COUNTERS, np.int64))   # to validate names


def _is_counts(x) -> bool:
    return isinstance(x, Counters) or (isinstance(x, Mapping) and all(
        isinstance(v, Integral) and not isinstance(v, bool) for v in x.values()))


def _runs(counters) -> dict:
    """{run label: Counters or {name: int}}; one unnamed run for a single set of counts."""
    if _is_counts(counters):
        return {"": counters}
    if isinstance(counters, Mapping) and counters and all(_is_counts(v) for v in counters.values()):
        return {str(k): v for k, v in counters.items()}
    raise TypeError("counter_bars() takes Machine.counters, a dict {counter: int}, or a dict "
                    "{run name: counters} of those (e.g. {'native': m1.counters, "
                    "'trap-and-emulate': m2.counters})")


def _nonzero_keys(c) -> list:
    if isinstance(c, Counters):
        return list(c.to_dict(nonzero=True))
    return [k for k, v in c.items() if v]


def _value(c, key) -> int:
    if isinstance(c, Counters):
        return c[key] if key in c else 0
    return int(c.get(key, 0))


def _check_keys(keys, runs) -> list:
    if isinstance(keys, str):
        keys = [keys]
    keys = list(keys)
    known = set(_NO_COUNTERS.keys())
    for c in runs.values():
        known.update(c.keys() if not isinstance(c, Counters) else ())
    for k in keys:
        if not isinstance(k, str):
            raise TypeError(f"counter names are strings, got {k!r}")
        if k not in known and k not in _NO_COUNTERS:
            hint = difflib.get_close_matches(k, sorted(known), n=3)
            raise ValueError(f"no counter named {k!r}" +
                             (f"; did you mean {', '.join(map(repr, hint))}?" if hint else
                              f"; counters are: {', '.join(_NO_COUNTERS.keys())}"))
    return keys


def counter_bars(counters, keys: Optional[Sequence[str]] = None, ax=None, *,
                 title: Optional[str] = None, log: bool = False, values: bool = True):
    """Draw counters as bars.

    ``counters``: ``m.counters``, a dict ``{name: count}``, or ``{run name: counters}``
    for several runs side by side (one bar group per counter, one colour per run).
    ``keys``: the counters to show, in order (default: every counter that is non-zero in
    at least one run). ``log``: a logarithmic axis, for counts of very different sizes.
    ``values``: write each count above its bar.

    One ``BarContainer`` per run in ``ax.containers``, labelled with the run's name.
    Returns the Axes.
    """
    runs = _runs(counters)
    if keys is None:
        keys = []
        for c in runs.values():
            keys += [k for k in _nonzero_keys(c) if k not in keys]
    else:
        keys = _check_keys(keys, runs)
    # at most 8 inches: 800 px at 100 dpi fit a projector's notebook column
    ax = axes(ax, (min(8.0, max(4.0, 1.1 * len(keys) * max(1, len(runs)) ** 0.5 + 2)), 3.6))
    x = np.arange(len(keys))
    width = 0.8 / len(runs)
    for i, (name, c) in enumerate(runs.items()):
        heights = [_value(c, k) for k in keys]
        bars = ax.bar(x + (i - (len(runs) - 1) / 2) * width, heights, width,
                      label=name or "counters", color=RUN_COLOURS[i % len(RUN_COLOURS)],
                      gid=name or "counters")
        if values:
            ax.bar_label(bars, fontsize=9, padding=1)
    ax.set_xticks(x)
    ax.set_xticklabels(keys, rotation=30, ha="right")
    if log:
        ax.set_yscale("log")
        # plain numbers: the superscript of 10^3 would be under 12 px on a projector
        from matplotlib.ticker import FuncFormatter, NullFormatter
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}" if v >= 1
                                                   else f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("count")
    if not keys:
        ax.text(0.5, 0.5, "every counter is zero", transform=ax.transAxes, ha="center")
    if len(runs) > 1:
        ax.legend(fontsize=9)
    if title is not None:
        ax.set_title(title)
    return ax
