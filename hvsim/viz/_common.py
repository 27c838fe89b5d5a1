"""Shared helpers of hvsim.viz: where to draw, and the colours every picture uses."""
from __future__ import annotations

# one palette for all the lessons' pictures
LIT = "#f28e2b"          # the ring the CPU is in; the path a page walk takes
UNLIT = "#e3ebf6"        # the other rings
EDGE = "#4a5a70"
DIM = "#f2f2f2"          # neighbouring table entries, a ring that is not in use
DIM_TEXT = "#9a9a9a"
FAULT = "#e15759"        # a page fault, a bus error
OK = "#59a14f"           # a TLB hit, a completed translation
RUN_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
               "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")


def axes(ax, figsize):
    """``ax`` if given (it must be a matplotlib Axes), else a new figure's Axes."""
    if ax is None:
        import matplotlib.pyplot as plt
        _, ax = plt.subplots(figsize=figsize)
        return ax
    from matplotlib.axes import Axes
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
    return ax
