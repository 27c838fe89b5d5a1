"""hvsim.viz -- the pictures the lessons draw (matplotlib and networkx; not jitted).

Every picture is drawn from hvsim's own data (a machine, its counters, a recording of
a run, a page walk) and takes an optional matplotlib ``ax``; it returns the Axes it drew
on, so a notebook can add to it and a test can inspect what was drawn.

* :func:`ring_diagram` -- the privilege rings 0-3 as concentric circles, the current
  CPL lit, and room for "ring -1" (VMX root operation);
* :func:`record` and :func:`timeline` -- CPL over retired instructions, with every trap
  and interrupt marked by name;
* :func:`counter_bars` -- event counters as bars, one run or several side by side;
* :func:`overhead_bars` -- cycles by category (hvsim.cost breakdowns), stacked, several
  runs and CPU generations side by side, estimated costs hatched;
* :func:`page_walk_graph` and :func:`page_walk` -- one 32-bit page walk
  (CR3 -> PDE -> PTE -> page) as a networkx graph, with the TLB's view of that page;
* :func:`walk_order`, :func:`reference_count` and :func:`walk_2d` -- the two-dimensional
  walk of nested paging (guest tables x EPT levels) as a numbered grid of references.

>>> import matplotlib
>>> matplotlib.use("Agg")
>>> ax = ring_diagram(cpl=3, who={0: "monitor", 1: "guest kernel", 3: "guest apps"})
>>> [p.get_label() for p in ax.patches if p.get_gid() == "lit"]
['ring 3']
"""
from hvsim.viz.rings import ring_diagram, RING_NAMES
from hvsim.viz.timeline import Recording, record, timeline
from hvsim.viz.counters import counter_bars
from hvsim.viz.overhead import overhead_bars
from hvsim.viz.pagewalk import page_walk_graph, page_walk
from hvsim.viz.walk2d import walk_order, reference_count, walk_2d

__all__ = ["ring_diagram", "RING_NAMES", "Recording", "record", "timeline", "counter_bars",
           "overhead_bars", "page_walk_graph", "page_walk", "walk_order", "reference_count",
           "walk_2d"]
