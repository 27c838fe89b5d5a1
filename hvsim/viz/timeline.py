"""Record CPL over a run, and draw it as a timeline with the traps marked (not jitted).

How the recording is made, and why
----------------------------------
The CPL changes in two ways: an event is *delivered* through the IDT (a trap, a fault,
an interrupt: the core records each one in ``Machine.trace`` with ``cpl_from`` and
``cpl_to``), or software *returns* to an outer ring (IRET, far RET). Returns are not
events: the trace does not record them, and ``run()`` does not stop for them. So a
recording that must show the way back to ring 3 has to look at the CPL after every
instruction: :func:`record` single-steps (``step()`` costs about 1-2 microseconds with
the bookkeeping here, so ten thousand steps take a few hundredths of a second) and reads
the state array directly rather than building Python objects per step. Deliveries are
read from the trace ring buffer only on the steps that added an entry besides their own
exit record.

Stepping has a visible side effect: every step is a host exit of kind 'budget', so the
``exits`` counters grow by one per step. The other counters (instructions, TLB, walks,
exceptions, deliveries) are exactly those of an uninterrupted ``run()``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np

from hvsim.arch import layout as L
from hvsim.arch.counters import C_INSN
from hvsim.viz._common import axes, LIT, EDGE, FAULT
from hvsim.viz.rings import RING_NAMES, VMX_ROOT

_VMX_COLOUR = "#4a78b5"      # VM exits and entries: the crossings of ring -1

MAX_STEPS = 1_000_000        # a recording is for looking at: about 2 s of stepping


@dataclasses.dataclass(frozen=True)
class Recording:
    """CPL sampled after every step of a run, and the events that happened in it.

    Samples (one per step, plus sample 0 = the state before the first step):

    * ``retired``: instructions retired since the recording started (int64);
    * ``cpl``: the CPL after that step (int8); -1 while the CPU is in VMX root operation
      (ring -1: a hypervisor runs);
    * ``eip``: EIP after that step (int64).

    A step that takes a fault retires nothing, so two samples can share a ``retired``
    value (the CPL line then jumps vertically there).

    Markers (one per event): ``marker_at`` (the ``retired`` value of the step it happened
    in), ``marker_cpl_from`` / ``marker_cpl_to``, ``marker_names`` ('INT 0x80',
    '#PF (page fault)', 'halt', ...), ``marker_kinds`` ('delivered' for an event taken
    through the guest's IDT, else the kind of the host event). ``final`` is the event
    that ended the recording (None if the step budget ran out).
    """
    retired: np.ndarray
    cpl: np.ndarray
    eip: np.ndarray
    marker_at: np.ndarray
    marker_cpl_from: np.ndarray
    marker_cpl_to: np.ndarray
    marker_names: tuple
    marker_kinds: tuple
    final: object = None

    @property
    def steps(self) -> int:
        return len(self.retired) - 1

    def __len__(self):
        return len(self.retired)

    def __str__(self):
        lines = [f"{self.steps} steps, {int(self.retired[-1])} instructions retired, "
                 f"{len(self.marker_names)} event(s)"]
        for at, f, t, name in zip(self.marker_at, self.marker_cpl_from, self.marker_cpl_to,
                                  self.marker_names):
            lines.append(f"  after {int(at):>6} instructions: {name:28} ring {f} -> {t}")
        return "\n".join(lines)


def _machine_of(target):
    from hvsim.machine import Machine
    from hvsim.monitors import Monitor
    if isinstance(target, Monitor):
        return target.machine
    if not isinstance(target, Machine):
        raise TypeError(f"record() takes a Machine or a monitor (hvsim.monitors.Monitor), "
                        f"got {type(target).__name__}")
    return target


def record(target, steps: int = 1000,
           on_event: Optional[Callable[[object, object], bool]] = None) -> Recording:
    """Single-step ``target`` (a Machine, or a monitor's machine) and record CPL.

    Stops after ``steps`` steps, or at the first host event (halt, an exception routed
    to the host, io, ...) -- unless ``on_event(machine, event)`` is given and returns
    True, in which case the event is recorded and stepping goes on (that is where a
    monitor handles a trap). The machine is left where the recording stopped.
    """
    m = _machine_of(target)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) \
            or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an integer 1..{MAX_STEPS}, got {steps!r}")
    if on_event is not None and not callable(on_event):
        raise TypeError("on_event must be a function (machine, event) -> bool")
    st = m._st
    insn0 = int(st[L.COUNTERS + C_INSN])

    def ring():                          # VMX root operation is drawn as ring -1
        if st[L.VMX_ON] and not st[L.VMX_NONROOT]:
            return VMX_ROOT
        return item(i_cpl)
    item = st.item                       # st.item(i): a Python int, faster than int(st[i])
    i_insn, i_head, i_cpl, i_eip = L.COUNTERS + C_INSN, L.TRACE_HEAD, L.CPL, L.EIP
    retired, cpl, eip = [0], [ring()], [int(st[L.EIP])]
    mk_at, mk_from, mk_to, mk_names, mk_kinds = [], [], [], [], []
    final = None
    head = m.trace_head
    step = m.step
    for _ in range(int(steps)):
        ev = step()
        now = item(i_insn) - insn0
        new_head = item(i_head)
        if new_head != head:             # something was recorded: deliveries are markers
            for t in m.trace_since(head):
                if t.kind in ("delivered", "vm_exit", "vm_entry"):
                    mk_at.append(now)
                    mk_from.append(t.cpl_from)
                    mk_to.append(t.cpl_to)
                    mk_names.append(t.name)
                    mk_kinds.append(t.kind)
        head = new_head
        retired.append(now)
        cpl.append(ring())
        eip.append(item(i_eip))
        if ev is not None:
            mk_at.append(now)
            mk_from.append(ev.cpl)
            mk_to.append(ev.cpl)
            mk_names.append(ev.name)
            mk_kinds.append(ev.kind)
            if on_event is None or not on_event(m, ev):
                final = ev
                break
            head = m.trace_head            # the handler may have run the machine
            # (the handler may also have moved EIP or changed rings)
            cpl[-1], eip[-1] = ring(), int(st[L.EIP])
    return Recording(np.array(retired, np.int64), np.array(cpl, np.int8),
                     np.array(eip, np.int64), np.array(mk_at, np.int64),
                     np.array(mk_from, np.int8), np.array(mk_to, np.int8),
                     tuple(mk_names), tuple(mk_kinds), final)


def timeline(rec: Recording, ax=None, *, title: Optional[str] = None, names: bool = True):
    """Draw CPL over retired instructions (ring 0 at the top), events as labelled markers.

    The CPL is a step line (gid ``"cpl"``); events delivered through the IDT are
    downward triangles at the ring they enter (gid ``"delivered"``), host events are
    red squares (gid ``"host"``). ``names=False`` leaves out the event names.
    Returns the Axes.
    """
    if not isinstance(rec, Recording):
        raise TypeError(f"timeline() draws a Recording (from hvsim.viz.record), "
                        f"got {type(rec).__name__}")
    ax = axes(ax, (6.4, 3.4))             # with the legend, 840 px: a projector's column
    ax.step(rec.retired, rec.cpl, where="post", color=EDGE, linewidth=1.8, gid="cpl",
            label="CPL")
    kinds = np.array(rec.marker_kinds, dtype=object)
    delivered = kinds == "delivered"
    vmx = (kinds == "vm_exit") | (kinds == "vm_entry")
    for sel, gid, marker, colour, label in ((delivered, "delivered", "v", LIT, "delivered (IDT)"),
                                            (vmx, "vmx", "D", _VMX_COLOUR, "VM exit / entry"),
                                            (~delivered & ~vmx, "host", "s", FAULT,
                                             "host event")):
        if len(kinds) and sel.any():
            ax.plot(rec.marker_at[sel], rec.marker_cpl_to[sel], linestyle="none", marker=marker,
                    markersize=9, color=colour, markeredgecolor="black", gid=gid, label=label,
                    zorder=3)
    if names:
        for i, (at, to, name) in enumerate(zip(rec.marker_at, rec.marker_cpl_to,
                                               rec.marker_names)):
            ax.annotate(name, (int(at), int(to)), xytext=(4, 8 + 10 * (i % 2)),
                        textcoords="offset points", fontsize=9, gid=f"event {i}")
    rings = sorted(set(range(4)) | set(int(c) for c in rec.cpl)
                   | set(int(c) for c in rec.marker_cpl_to))
    ax.set_yticks(rings)
    ax.set_yticklabels([f"ring {r} ({RING_NAMES[r].split(chr(10))[0]})" for r in rings])
    ax.set_ylim(max(rings) + 0.6, min(rings) - 0.8)     # inverted: ring 0 at the top
    ax.set_xlabel("instructions retired")
    ax.set_ylabel("CPL")
    ax.grid(axis="x", alpha=0.3)
    if len(kinds):
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    ax.margins(x=0.06)
    ax.set_title(title if title is not None else
                 f"CPL over {int(rec.retired[-1])} instructions, {len(kinds)} event(s)")
    return ax
