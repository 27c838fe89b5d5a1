"""hvsim.cost -- a cited cost model: cycles = sum over events of count x cost (not jitted).

The machine never computes overhead; it counts events (DESIGN.md, "Events and
counters"). This package turns the counts of a run into cycles:

* :func:`usage_of` reads the counted events of a run -- from ``m.counters`` and, under a
  monitor, from ``monitor.stats`` -- charging every event once, by whoever handled it
  (the derivation of each event is in :mod:`hvsim.cost.usage`);
* a :class:`Profile` (one per CPU generation: :data:`PROFILES` ``prescott``, ``merom``,
  ``nehalem``, ``sandy_bridge``) gives each event a :class:`Cost` in cycles with its
  source, and marks every estimate (:mod:`hvsim.cost.profiles` says what was read where,
  and what was not found);
* :func:`breakdown` multiplies them, per event and per category ("guest instructions",
  "traps/exits", "monitor work", "page walks", "I/O"); :func:`breakdowns` does it for
  several generations; :func:`hvsim.viz.overhead_bars` draws them.

Profiles are inputs: nothing here says which technique should cost less. Change a cost
(``Profile.replace``) and the bars follow.

>>> from hvsim import Machine, assemble
>>> m = Machine()
>>> m.load(assemble("mov ecx, 10\\nagain: add eax, ecx\\nloop again\\nhlt"))
>>> m.run().kind
'halt'
>>> bd = breakdown(m, "prescott")
>>> bd["instruction"].count == m.counters["instructions"]
True
>>> bd.total == m.counters["instructions"] * PROFILES["prescott"]["instruction"].cycles
True
"""
from hvsim.cost.profiles import (CATEGORIES, EVENTS, Cost, Profile, PROFILES, ALL, profile,
                                 PRESCOTT, MEROM, NEHALEM, SANDY_BRIDGE, REFERENCES)
from hvsim.cost.usage import Usage, usage_of, STAT_EVENTS
from hvsim.cost.model import Line, Breakdown, breakdown, breakdowns

__all__ = ["CATEGORIES", "EVENTS", "Cost", "Profile", "PROFILES", "ALL", "profile",
           "PRESCOTT", "MEROM", "NEHALEM", "SANDY_BRIDGE", "REFERENCES", "Usage", "usage_of",
           "STAT_EVENTS", "Line", "Breakdown", "breakdown", "breakdowns"]
