"""cycles = sum over events of count x cost: the breakdown of one run on one profile.

Plain Python (not jitted). A :class:`Breakdown` keeps one :class:`Line` per event --
the count, the cited cost, their product -- so every cycle in a total or a bar can be
traced back to a counted event and a source.
"""
from __future__ import annotations

import dataclasses
import html
from numbers import Real
from typing import Optional

from hvsim.cost.profiles import CATEGORIES, EVENTS, Cost, Profile, profile as _profile, ALL
from hvsim.cost.usage import Usage, usage_of


@dataclasses.dataclass(frozen=True)
class Line:
    """One event of a breakdown: ``count`` x ``cost.cycles`` = ``cycles``."""
    event: str
    category: str
    count: int
    cost: Cost
    how: str            # where the count came from

    @property
    def cycles(self) -> Real:
        return self.count * self.cost.cycles

    @property
    def source(self) -> str:
        return self.cost.source

    @property
    def estimate(self) -> bool:
        return self.cost.estimate


@dataclasses.dataclass(frozen=True)
class Breakdown:
    """Cycles of one run on one profile, by event and by category.

    ``lines``: one :class:`Line` per event, in the order of :data:`EVENTS`.
    ``categories``: {category: cycles} for every category (zeros included), in the
    order of :data:`CATEGORIES`. ``total``: their sum. ``estimated``: the part of each
    category that comes from estimated costs.
    """
    profile: Profile
    usage: Usage
    lines: tuple
    label: str = ""

    @property
    def categories(self) -> dict:
        out = {cat: 0 for cat in CATEGORIES}
        for ln in self.lines:
            out[ln.category] += ln.cycles
        return out

    @property
    def estimated(self) -> dict:
        out = {cat: 0 for cat in CATEGORIES}
        for ln in self.lines:
            if ln.estimate:
                out[ln.category] += ln.cycles
        return out

    @property
    def total(self) -> Real:
        return sum(ln.cycles for ln in self.lines)

    def __getitem__(self, key: str):
        """``bd['traps/exits']`` -> cycles of a category; ``bd['trap']`` -> the Line."""
        if key in CATEGORIES:
            return self.categories[key]
        for ln in self.lines:
            if ln.event == key:
                return ln
        raise KeyError(f"{key!r} is neither a category ({', '.join(CATEGORIES)}) nor an "
                       f"event ({', '.join(EVENTS)})")

    def table(self, zeros: bool = False) -> str:
        """A text table: count x cost = cycles per event, by category, with sources.
        Costs marked ``*`` are estimates (see the profile's notes)."""
        head = f"{self.label + ' on ' if self.label else ''}{self.profile.label}"
        rows = []
        for cat in CATEGORIES:
            lines = [ln for ln in self.lines if ln.category == cat and (zeros or ln.count)]
            for ln in lines:
                rows.append((cat, ln.event, f"{ln.count:,}", f"{ln.cost.cycles:g}{ln.cost.mark}",
                             f"{ln.cycles:,.0f}", ln.source))
        w = [max([len(r[i]) for r in rows] + [len(h)]) for i, h in
             enumerate(("category", "event", "count", "cost", "cycles"))]
        out = [head,
               f"  {'category':<{w[0]}}  {'event':<{w[1]}}  {'count':>{w[2]}}  "
               f"{'cost':>{w[3]}}  {'cycles':>{w[4]}}  source"]
        for r in rows:
            out.append(f"  {r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>{w[3]}}  "
                       f"{r[4]:>{w[4]}}  {r[5]}")
        cats = ", ".join(f"{c} {v:,.0f}" for c, v in self.categories.items())
        out.append(f"  total {self.total:,.0f} cycles ({cats}); * = estimated cost")
        return "\n".join(out)

    def __str__(self):
        return self.table()

    def _repr_html_(self):
        e = html.escape
        rows = "".join(
            f"<tr><td>{e(ln.category)}</td><td>{e(ln.event)}</td>"
            f"<td style='text-align:right'>{ln.count:,}</td>"
            f"<td style='text-align:right'>{ln.cost.cycles:g}{ln.cost.mark}</td>"
            f"<td style='text-align:right'>{ln.cycles:,.0f}</td>"
            f"<td title='{e(ln.cost.basis)}'>{e(ln.source)}</td></tr>"
            for ln in self.lines if ln.count)
        cats = ", ".join(f"{e(c)} {v:,.0f}" for c, v in self.categories.items())
        head = e(f"{self.label + ' on ' if self.label else ''}{self.profile.label}")
        return (f"<table><caption>{head}</caption><tr><th>category</th><th>event</th>"
                f"<th>count</th><th>cost</th><th>cycles</th><th>source</th></tr>{rows}"
                f"<tr><td colspan=6>total {self.total:,.0f} cycles ({cats}); "
                f"* = estimated cost (hover a source for its basis)</td></tr></table>")

    def __repr__(self):
        cats = ", ".join(f"{c!r}: {v:g}" for c, v in self.categories.items())
        return (f"Breakdown({self.label + ', ' if self.label else ''}{self.profile.name}, "
                f"total={self.total:g}, {{{cats}}})")


def breakdown(x, profile, *, label: Optional[str] = None) -> Breakdown:
    """Cycles of ``x`` on ``profile``: ``sum(count[e] * profile[e].cycles)``.

    ``x``: anything :func:`usage_of` takes (a Machine, a monitor, counters, a Usage, a
    dict {event: count}). ``profile``: a :class:`Profile` or its name.
    ``label``: the run's name, shown in tables and plots.
    """
    p = _profile(profile)
    u = usage_of(x)
    lines = tuple(Line(e, EVENTS[e][0], u[e], p[e], u.how.get(e, "not counted"))
                  for e in EVENTS)
    if label is not None and not isinstance(label, str):
        raise TypeError(f"label must be a string, got {type(label).__name__}")
    return Breakdown(p, u, lines, label or "")


def breakdowns(x, profiles=ALL, *, label: Optional[str] = None) -> dict:
    """``{profile name: Breakdown}`` of the same run on several profiles (default: every
    generation) -- "the same counted events, cycles per CPU generation"."""
    if isinstance(profiles, (str, Profile)):
        profiles = [profiles]
    ps = [_profile(p) for p in profiles]
    if not ps:
        raise ValueError("breakdowns() needs at least one profile")
    u = usage_of(x)
    return {p.name: breakdown(u, p, label=label) for p in ps}
