"""One guest on every technique, side by side: counted, priced and checked against the
bare machine (Python, not jitted).

:func:`compare` runs one guest on each host that can run it and returns a
:class:`Comparison`, one row per host: how the run ended, whether the guest saw the same
thing as on the bare machine, what the host did for it (traps, VM exits, hypercalls,
callouts, instructions emulated, interpreted or translated) and what that costs in cycles
on a CPU generation of :mod:`hvsim.cost`. It is the command line's ``hvsim compare`` and
the notebooks' table, and a grader's script can read its rows (plain Python values,
:meth:`Comparison.to_json`).

The guests, and what "the same as native" means for each:

* ``"kernel"``: lesson 02's teaching kernel (:mod:`hvsim.kernelhosts`), which never
  halts: every host runs it ``steps`` steps (default 60,000, lesson 07's run; for it
  ``budget`` is another name for ``steps``) in two halves. A host's run is the same as
  native's when the guest's console is the same, its program kept making SYS_TICKS
  calls (one in the second half) if and only if native's did, and its clock kept
  ticking (a tick counted in the second half) if and only if native's did
  (:class:`hvsim.kernelhosts.Outcome`; not the exact counts, which a translator's own
  steps lower a little). Under trap-and-emulate on plain x86 the clock freezes at the
  first POPF of the critical section (lesson 02): that row comes out *not* the same,
  with the reason "clock froze" -- the point of the comparison.
  Its parameters: ``steps``, ``PERIOD``, ``WORK`` (:data:`hvsim.kernelhosts.PARAMS`).
* an mm.s workload (:mod:`hvsim.workloads`): ``"mixed"`` or ``"mm:mixed"``, ``"fork"``...;
  the same as native when :meth:`~hvsim.workloads.WorkloadResult.guest_state` is equal
  (registers, RESULTS, the page tables and frame pool, the fault log, the console), the
  differences said by :func:`hvsim.workloads.differences`. Parameters: mm.s's ``equ``
  values (:data:`hvsim.guests.MM_PARAMS`).
* a minios.s workload (:mod:`hvsim.pvworkloads`): ``"minios:syscall"``,
  ``"minios:ptupdate"``, ``"minios:io"``, ``"minios:all"``; likewise, with ``pv`` among
  the hosts (the paravirtualized build). Parameters: :data:`hvsim.guests.MINIOS_PARAMS`.

Native always runs, first, as the reference -- listed in ``hosts`` or not -- and its row
comes first. A run that does not finish (an mm or minios guest that did not halt within
its budget, a kernel that halted or was killed before its steps were run) is a row that
says so, never an exception: it is not the same as native, and nothing else is compared.
Nor is anything compared when native's run, finished, is no reference: a workload that
halted with a status other than done, or a kernel run too short for native's clock and
program to move in its second half (a few hundred steps; then a frozen clock elsewhere
would pass for the same). Every row then says why, native's included.
Only bad input raises, before anything runs: :func:`plan` checks it all (ValueError or
TypeError, naming the bad part).

>>> c = compare("compute", ["ept"], ITER=100)
>>> [(r["host"], r["ended"], r["same_as_native"]) for r in c.rows]
[('native', 'halted', True), ('ept', 'halted', True)]
>>> c.rows[0]["slowdown"], c.rows[0]["vm_exits"], c.rows[1]["vm_exits"] > 0
(1.0, 0, True)
"""
from __future__ import annotations

import dataclasses
import difflib
import html
import json
import textwrap
from numbers import Integral
from typing import NamedTuple, Optional

from hvsim import cost, kernelhosts
from hvsim import pvworkloads as PV
from hvsim import workloads as W
from hvsim.guests import minios, mm_kernel

__all__ = ["compare", "plan", "Plan", "Comparison", "GUESTS", "TECHNIQUES", "hosts_of",
           "MAX_BUDGET"]

#: every host of every guest, the technique in words
TECHNIQUES = {
    "native": "none: the bare machine",
    "shadow": "trap-and-emulate, shadow paging",
    "shadow-unsync": "trap-and-emulate, unsync shadow paging",
    "vtx": "VT-x without EPT",
    "ept": "VT-x with EPT",
    "pv": "paravirtualization (Xen PV)",
    "emulate": "interpreter (Bochs)",
    "dbt": "dynamic translation (QEMU TCG)",
    "bt": "binary translation (VMware)",
    "rawmode": "raw mode (VirtualBox)",
}
#: every guest by its full name: the kernel, then mm.s's and minios.s's workloads
GUESTS = (("kernel",) + tuple(f"mm:{w}" for w in W.WORKLOADS)
          + tuple(f"minios:{w}" for w in PV.WORKLOADS))
#: Machine.run's largest budget
MAX_BUDGET = 1 << 62
_HOSTS = {"kernel": tuple(kernelhosts.HOSTS), "mm": tuple(W.HOSTS), "minios": tuple(PV.HOSTS)}
_CATEGORIES = cost.CATEGORIES
# the row's counts: key -> the monitor's stats keys summed (the emulators' and the binary
# translator's translated instructions are one column)
_COUNTS = {"traps": ("traps",), "vm_exits": ("vm_exits",), "hypercalls": ("hypercalls",),
           "callouts": ("callouts",), "emulated": ("emulated",),
           "interpreted": ("insns_interpreted",),
           "translated": ("insns_translated", "translated")}


# ---- the plan: every input checked before anything runs ------------------------------------
def _guest(name) -> tuple:
    """(kind, workload) of a guest name: ('kernel', None), ('mm', 'fork'), ('minios', 'io')."""
    if not isinstance(name, str):
        raise TypeError(f"the guest is a name such as 'kernel' or 'mm:mixed', "
                        f"got {type(name).__name__}")
    kind, colon, workload = name.strip().partition(":")
    if not colon:
        if kind == "kernel":
            return "kernel", None
        kind, workload = "mm", kind
    if kind == "mm" and workload in W.WORKLOADS or kind == "minios" and workload in PV.WORKLOADS:
        return kind, workload
    hint = difflib.get_close_matches(name, GUESTS, n=2)
    if not colon and name in PV.WORKLOADS:
        hint = [f"minios:{name}"]
    raise ValueError(f"no guest named {name!r}; " + (
        f"did you mean {' or '.join(map(repr, hint))}? " if hint else "")
        + f"the guests are {', '.join(GUESTS)} (an mm workload may go without 'mm:')")


def hosts_of(guest: str) -> tuple:
    """The hosts that can run ``guest``, native first.

    >>> hosts_of("kernel")
    ('native', 'shadow', 'vtx', 'emulate', 'dbt', 'bt', 'rawmode')
    >>> "pv" in hosts_of("minios:io"), "pv" in hosts_of("mm:fork")
    (True, False)
    """
    return _HOSTS[_guest(guest)[0]]


def _hosts(hosts, known: tuple, guest: str) -> tuple:
    """``hosts`` (None: all of ``known``; a name; names separated by commas; or an
    iterable of names), each checked, native first and each once."""
    if hosts is None:
        names = list(known)
    else:
        if isinstance(hosts, str):
            hosts = hosts.split(",")
        try:
            names = list(hosts)
        except TypeError:
            raise TypeError(f"hosts must be host names, got {type(hosts).__name__}") from None
        for h in names:
            if not isinstance(h, str):
                raise TypeError(f"a host is a name such as 'vtx', got {h!r}")
        names = [h.strip() for h in names]
        for h in names:
            if h not in known:
                raise ValueError(f"no host named {h!r} for guest {guest!r}; its hosts are "
                                 f"{', '.join(known)}")
    return tuple(dict.fromkeys(["native"] + names))


def _budget(budget, what: str = "budget") -> Optional[int]:
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, Integral) \
            or not 1 <= budget <= MAX_BUDGET:
        raise ValueError(f"{what} must be a positive int (at most 2**62), got {budget!r}")
    return int(budget)


class Plan(NamedTuple):
    """What :func:`compare` will run, every part checked: the guest (kind, workload), the
    hosts (native first), the profile, the budget of each run (the kernel's: its steps)
    and the guest's parameters. :meth:`run` runs it."""
    guest: str
    kind: str
    workload: Optional[str]
    hosts: tuple
    profile: cost.Profile
    budget: int
    params: dict

    def run(self) -> "Comparison":
        runs = {h: _run(self, h) for h in self.hosts}
        return Comparison(self, _rows(self, runs), runs)


def plan(guest: str, hosts=None, *, profile="nehalem", budget=None, **params) -> Plan:
    """Check :func:`compare`'s arguments and say what it would run; raises ValueError or
    TypeError naming the bad part, before anything runs."""
    kind, workload = _guest(guest)
    name = "kernel" if kind == "kernel" else f"{kind}:{workload}"
    host_names = _hosts(hosts, _HOSTS[kind], name)
    prof = cost.profile(profile)
    budget = _budget(budget)
    params = dict(params)
    if kind == "kernel":
        steps = params.pop("steps", None)
        if steps is not None:
            kernelhosts.check_steps(steps)
            if budget is not None and steps != budget:
                raise ValueError(f"steps={steps:,} and budget={budget:,}: for the kernel "
                                 "they are one thing (it never halts: it runs its steps); "
                                 "give one")
        elif budget is not None:
            try:
                steps = kernelhosts.check_steps(budget)
            except ValueError as e:
                raise ValueError(f"budget {budget:,}: the kernel's budget is its steps, "
                                 f"and {e}") from None
        else:
            steps = kernelhosts.STEPS
        kernelhosts.check_params(params)
        return Plan(name, kind, None, host_names, prof, steps, params)
    if kind == "mm":
        mm_kernel(workload, **params)               # checks the parameters
    else:
        minios(False, workload, **params)
    return Plan(name, kind, workload, host_names, prof,
                W.DEFAULT_BUDGET if budget is None else budget, params)


def compare(guest: str, hosts=None, *, profile="nehalem", budget=None,
            **params) -> "Comparison":
    """Run ``guest`` on each of ``hosts`` (default: every host it has; native always,
    first) and compare each run with native's, counted and priced on ``profile``.

    guest : ``"kernel"``, an mm.s workload (``"mixed"`` or ``"mm:mixed"``...), or a
            minios.s workload (``"minios:syscall"``...): :data:`GUESTS`.
    hosts : host names (a list, or one string with commas): :func:`hosts_of` the guest.
    profile : a :mod:`hvsim.cost` profile or its name ('prescott', 'merom', 'nehalem',
            'sandy_bridge').
    budget : steps each run may take (default: the workloads' 2,000,000; for the kernel,
            its ``steps``).
    params : the guest's parameters (``ITER=1000``, ``N_SYSCALLS=8``, ``steps=20_000``,
            ``PERIOD=300``...).
    """
    return plan(guest, hosts, profile=profile, budget=budget, **params).run()


# ---- the runs -------------------------------------------------------------------------------
def _run(p: Plan, host: str):
    if p.kind == "kernel":
        return kernelhosts.run(host, p.budget, **p.params)
    harness = W if p.kind == "mm" else PV
    return harness.run(p.workload, host, p.budget, check=False, **p.params)


def _finished(p: Plan, r) -> bool:
    """The run came to its end: the kernel ran its steps, a workload halted."""
    return r.finished if p.kind == "kernel" else r.event.kind == "halt"


def _unusable(p: Plan, ref) -> str:
    """Why native's finished run cannot be the reference ('' when it can): a workload
    that halted with a status other than done (the guest's own failure, on every host
    alike), or a kernel run too short for its clock or its program to move in the
    second half (nothing the other hosts could be seen to keep or lose)."""
    if p.kind == "kernel":
        still = [w for w, going in (("its clock", ref.ticking), ("its program", ref.calling))
                 if not going]
        if still:
            return (f"on native {' and '.join(still)} did not move in the second half of "
                    f"{p.budget:,} steps (too few for PERIOD and WORK): nothing to compare with")
        return ""
    harness = W if p.kind == "mm" else PV
    if ref.status != harness.STATUS_OK:
        return (f"native halted with status {ref.status:#x} "
                f"({harness.STATUS.get(ref.status, '?')}), not done: nothing to compare with")
    return ""


def _differences(p: Plan, r, ref) -> list:
    return kernelhosts.differences(r, ref) if p.kind == "kernel" else W.differences(r, ref)


def _ended(ev) -> tuple:
    """(how the run ended in a word, the monitor's reason or the event in words)."""
    word = {"halt": "halted"}.get(ev.kind, ev.kind)
    reason = getattr(ev, "reason", "") or ("" if ev.kind in ("halt", "budget") else str(ev))
    return word, reason


def _seen(p: Plan, r) -> dict:
    """What the guest saw, beyond the comparison's verdict."""
    if p.kind == "kernel":
        return {"console": r.console, "ticks_at_half": r.ticks_at_half, "ticks": r.ticks,
                "calls_at_half": r.calls_at_half, "calls": r.calls,
                "clock": "ticking" if r.ticking else "frozen"}
    status = (W if p.kind == "mm" else PV).STATUS.get(r.status, "?")
    return {"console": r.console, "status": f"{r.status:#x} ({status})"}


def _plain(x):
    """A count or a cycle figure as a plain int or float (numpy's are not JSON)."""
    return int(x) if isinstance(x, Integral) else float(x)


def _rows(p: Plan, runs: dict) -> list:
    ref = runs["native"]
    ref_done = _finished(p, ref)
    unusable = _unusable(p, ref) if ref_done else ""
    bds = {h: cost.breakdown(r.monitor, p.profile) for h, r in runs.items()}
    native_total = bds["native"].total
    rows = []
    for h, r in runs.items():
        mon, bd = r.monitor, bds[h]
        done = _finished(p, r)
        ended, reason = _ended(r.event)
        if not done:
            diffs = ["did not finish: " + (f"its budget of {p.budget:,} steps ran out"
                                           if ended == "budget" else ended
                                           + (f" ({reason})" if reason else ""))]
        elif unusable:
            diffs = [unusable]
        elif h == "native":
            diffs = []
        elif not ref_done:
            diffs = ["native did not finish: nothing to compare with"]
        else:
            diffs = _differences(p, r, ref)
        stats = mon.stats
        total = bd.total
        estimated = sum(bd.estimated.values())
        rows.append(dict(
            guest=p.guest, host=h, technique=_technique(p, h), profile=p.profile.name,
            budget=p.budget, params=dict(p.params), ended=ended, end_reason=reason,
            finished=done,
            same_as_native=done and not diffs, differences=diffs, seen=_seen(p, r),
            instructions=_plain(mon.machine.counters["instructions"]),
            **{k: _plain(sum(stats.get(s, 0) for s in keys)) for k, keys in _COUNTS.items()},
            cycles=_plain(total),
            cycles_by_category={c: _plain(v) for c, v in bd.categories.items()},
            estimated_share=float(estimated / total) if total else 0.0,
            slowdown=float(total / native_total) if native_total else None))
    return rows


# ---- the result -----------------------------------------------------------------------------
_COLUMNS = (("instructions", "instructions"), ("traps", "traps"), ("vm_exits", "VM exits"),
            ("hypercalls", "hypercalls"), ("callouts", "callouts"), ("emulated", "emulated"),
            ("interpreted", "interpreted"), ("translated", "translated"))


def _technique(p: Plan, host: str) -> str:
    """The host's technique in words; the teaching kernel runs with paging off, so its
    trap-and-emulate host shadows no page table."""
    if p.kind == "kernel" and host == "shadow":
        return "trap-and-emulate (paging off)"
    return TECHNIQUES[host]


def _same_text(row) -> str:
    if row["host"] == "native" and row["same_as_native"]:
        return "reference"
    return "yes" if row["same_as_native"] else "NO"


@dataclasses.dataclass(eq=False)
class Comparison:
    """The rows of :func:`compare`: ``rows`` (one dict per host, native first, plain
    values), ``plan`` (what ran), ``runs`` ({host: the run}, each with its ``monitor``:
    a :class:`~hvsim.kernelhosts.KernelRun`, a :class:`~hvsim.workloads.WorkloadResult`
    or a :class:`~hvsim.pvworkloads.MiniosResult`).

    Each row: ``guest``, ``host``, ``technique`` (in words), ``profile``, ``budget``,
    ``params`` (the guest's parameters as given);
    ``ended`` ('halted', 'budget', 'killed' or another event kind), ``end_reason`` (the
    monitor's, when it stopped the guest), ``finished``; ``same_as_native`` and
    ``differences`` (in words; empty when the same); ``seen`` (the guest's console and
    its own figures); the host's work: ``instructions`` (retired by the machine: the
    guest's, and a translator's code), ``traps``, ``vm_exits``, ``hypercalls``,
    ``callouts``, ``emulated``, ``interpreted``, ``translated``; the price on the
    profile: ``cycles``, ``cycles_by_category``, ``estimated_share`` (the share of the
    cycles that comes from estimated costs) and ``slowdown`` (cycles / native's).
    """
    plan: Plan
    rows: list
    runs: dict

    @property
    def agree(self) -> bool:
        """Every host's run finished and is the same as native's."""
        return all(r["same_as_native"] for r in self.rows)

    def to_json(self, indent: Optional[int] = 2) -> str:
        """The rows as JSON: a list of objects, one per host."""
        return json.dumps(self.rows, indent=indent)

    def _title(self) -> str:
        p = self.plan
        what = ("the teaching kernel, {:,} steps".format(p.budget) if p.kind == "kernel"
                else f"budget {p.budget:,} steps")
        params = "".join(f", {k}={v}" for k, v in p.params.items())
        return (f"{p.guest} ({what}{params}) on {len(self.rows)} hosts, "
                f"profile {p.profile.name}")

    def _columns(self) -> list:
        """The count columns, without those at 0 on every row."""
        return [(k, h) for k, h in _COLUMNS if k == "instructions"
                or any(r[k] for r in self.rows)]

    def _footnote(self) -> list:
        p = self.plan
        out = [f"cycles: the counted events x their costs on profile {p.profile.name}, "
               f"{p.profile.cpu}, {p.profile.year} (hvsim.cost); slowdown: cycles / "
               "native's.",
               "est.: the share of the cycles that comes from estimated costs -- figures "
               "not read in a source as a measurement of that event on that generation "
               "(each rests on a stated basis: hvsim/cost/profiles.py).",
               "native runs first, as the reference, whether listed or not."]
        if p.kind == "kernel":
            out.append("same as native (the kernel): the same console, and a program that "
                       "kept making SYS_TICKS calls and a clock that kept ticking (a call, a "
                       "tick in the second half of the run), as native's did; a native run "
                       "whose clock or program did not move is no reference.")
        else:
            out.append("same as native: the guest's whole state at its halt is equal "
                       "(registers, RESULTS, page tables or disk, the console); a native "
                       "run that did not end with status done is no reference.")
        left = [h for k, h in _COLUMNS if (k, h) not in self._columns()]
        if left:
            out.append(f"columns at 0 on every row left out: {', '.join(left)}.")
        return out

    def table(self) -> str:
        """The rows as a text table: one line per host, the cycles by category, the
        differences from native in words, and a footnote."""
        cols = self._columns()
        head = ["host", "technique", "ended", "same"] + [h for _, h in cols] + [
            "cycles", "est.", "slowdown"]
        body = []
        for r in self.rows:
            body.append([r["host"], r["technique"], r["ended"], _same_text(r)]
                        + [f"{r[k]:,}" for k, _ in cols]
                        + [f"{r['cycles']:,.0f}", f"{100 * r['estimated_share']:.0f}%",
                           "-" if r["slowdown"] is None else f"{r['slowdown']:,.2f}x"])
        out = [self._title(), ""] + _aligned(head, body, left=4)
        out += ["", f"cycles by category ({self.plan.profile.name}):"]
        out += _aligned(["host"] + list(_CATEGORIES),
                        [[r["host"]] + [f"{r['cycles_by_category'][c]:,.0f}" for c in _CATEGORIES]
                         for r in self.rows], left=1)
        diffs = [(r["host"], d) for r in self.rows for d in r["differences"]]
        if diffs:
            out += ["", "differences from native:"]
            out += [f"  {h}: {d}" for h, d in diffs]
        out += [""] + [textwrap.fill(n, 90, subsequent_indent="  ") for n in self._footnote()]
        return "\n".join(out)

    def __str__(self):
        return self.table()

    def _repr_html_(self) -> str:
        e = html.escape
        cols = self._columns()
        head = (["host", "technique", "ended", "same as native"] + [h for _, h in cols]
                + ["cycles"] + list(_CATEGORIES) + ["estimated", "slowdown"])
        num = "style='text-align:right'"
        trs = []
        for r in self.rows:
            same = _same_text(r)
            colour = "#b3261e" if same == "NO" else "#1b7f3b"
            cells = ([f"<td>{e(r['host'])}</td>", f"<td>{e(r['technique'])}</td>",
                      f"<td title='{e(r['end_reason'])}'>{e(r['ended'])}</td>",
                      f"<td style='color:{colour};font-weight:bold'>{same}</td>"]
                     + [f"<td {num}>{r[k]:,}</td>" for k, _ in cols]
                     + [f"<td {num}>{r['cycles']:,.0f}</td>"]
                     + [f"<td {num}>{r['cycles_by_category'][c]:,.0f}</td>" for c in _CATEGORIES]
                     + [f"<td {num}>{100 * r['estimated_share']:.0f}%</td>",
                        f"<td {num}>" + ("-" if r["slowdown"] is None
                                         else f"{r['slowdown']:,.2f}x") + "</td>"])
            trs.append("<tr>" + "".join(cells) + "</tr>")
        diffs = "".join(f"<li><b>{e(r['host'])}</b>: {e(d)}</li>"
                        for r in self.rows for d in r["differences"])
        notes = "".join(f"<li>{e(n)}</li>" for n in self._footnote())
        return (f"<table class='hvsim-compare'><caption>{e(self._title())}</caption><tr>"
                + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>" + "".join(trs)
                + "</table>" + (f"<p>differences from native:</p><ul>{diffs}</ul>"
                                if diffs else "") + f"<ul style='font-size:smaller'>{notes}</ul>")

    def __repr__(self):
        same = sum(r["same_as_native"] for r in self.rows)
        return (f"<Comparison {self.plan.guest} on {len(self.rows)} hosts: {same} the same "
                f"as native, profile {self.plan.profile.name}>")


def _aligned(head: list, body: list, left: int) -> list:
    """Lines of a table: the first ``left`` columns aligned left, the rest right."""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]

    def line(cells):
        return "  ".join(f"{c:<{w}}" if i < left else f"{c:>{w}}"
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [line(head)] + [line(b) for b in body]
