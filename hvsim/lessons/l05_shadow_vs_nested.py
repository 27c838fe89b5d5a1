"""Lesson 05, "shadow vs nested paging": the logic behind notebooks/05_shadow_vs_nested.ipynb
(not jitted).

A guest kernel that pages has tables mapping guest-linear to guest-physical addresses; the
hypervisor maps guest-physical to host-physical. Two ways to give the processor both
translations, both in hvsim (Adams & Agesen, ASPLOS 2006, sec. 2.4 and 4; Bhargava,
Serebrin, Spadini & Manne, ASPLOS 2008; Intel SDM Vol. 3C, 29.3):

* **shadow paging** (hvsim/mmu/shadow.py): the monitor builds the combined translation
  itself, in tables the real CR3 points to, and keeps them in step with the guest's by
  catching every #PF (hidden: a shadow miss it fills; true: the guest's own, reflected),
  every write to a guest page table (a trace: write-protected, emulated), every CR3 load
  and INVLPG. Hosts: ``TrapAndEmulate`` (a software VMM) and ``Vtx(ept=False)`` (VT-x
  without EPT, the KVM-shaped VMM's shadow MMU);
* **nested paging** (EPT, ``Vtx(ept=True)``): the processor walks both tables itself, so
  the guest owns its CR3, its page faults and its page tables again; but each TLB miss is
  a two-dimensional walk, (n+1)(m+1) - 1 references instead of n.

Every figure here comes from a run:

1. :func:`refs_per_miss`: page-walk references per TLB miss, natively and under EPT,
   measured (:func:`hvsim.viz.walk_2d` draws why);
2. :data:`TINY_GUEST`, stepped under trap-and-emulate by :func:`step_faults`: the first
   hidden fault and the first trapped guest PTE write on one page, with the guest's and
   the shadow's entry of that page before and after (:func:`moment_table`), and the
   same guest under the three hosts (:func:`tiny_runs`, :func:`tiny_table`);
3. mm.s's workloads side by side natively, under shadow paging and under EPT:
   :func:`side_by_side`, :func:`counter_rows` / :func:`counter_table`, cycles by
   category from :mod:`hvsim.cost` (:func:`plot_cycles`);
4. :func:`sweep`: page-table updates (fork's pages per process) against TLB misses (the
   working set) on a grid, shadow paging and EPT priced on one profile, and who wins
   where (:func:`plot_sweep`, :func:`crossover`, :func:`sweep_table`);
5. :func:`fault_exercise`: how many hidden and trace faults does a seeded guest cause?
   The answer is computed by running it.
"""
from __future__ import annotations

import dataclasses
import random
import time
from typing import Optional

from hvsim import assemble, cost, workloads
from hvsim.arch.pte import PTE_A, PTE_D, PTE_FRAME, PTE_P, PTE_RW, PTE_US
from hvsim.lessons import Exercise
from hvsim.lessons.l04_ring_minus_one import _HTML, _same_cell, _table, _td
from hvsim.machine import DEFAULT_TLB
from hvsim.monitors import TrapAndEmulate, Vtx

__all__ = ["HOST_NAMES", "refs_per_miss", "TINY_GUEST", "tiny_program", "TINY_PAGE",
           "entries", "pte_text", "Moment", "step_faults", "moment_table", "tiny_runs",
           "tiny_table", "stepper", "SIDE_WORKLOADS", "SIDE_HOSTS", "side_by_side",
           "counter_rows", "counter_table", "cycle_rows", "plot_cycles", "SWEEP_BASE",
           "Sweep", "sweep", "plot_sweep", "crossover", "explain", "sweep_table", "OPS",
           "exercise_guest", "count_faults", "fault_exercise"]

#: what the hosts of :data:`hvsim.workloads.HOSTS` are called in the tables
HOST_NAMES = {"native": "native", "shadow": "shadow (trap-and-emulate)",
              "shadow-unsync": "shadow, unsync (trap-and-emulate)",
              "vtx": "shadow (VT-x without EPT)", "ept": "nested (VT-x with EPT)"}
TLB_ENTRIES = DEFAULT_TLB[0] * DEFAULT_TLB[1]     # the machine's default TLB: sets x ways


def _host(host: str) -> str:
    if host not in workloads.HOSTS:
        raise ValueError(f"no host named {host!r}; the hosts are {', '.join(workloads.HOSTS)}")
    return host


# ---- 1. two translations ----------------------------------------------------------------------
def refs_per_miss(workload: str = "wss", hosts=("native", "ept"), **params) -> dict:
    """{host: {'tlb_misses', 'walk_refs', 'ept_walk_refs', 'per_miss'}}: mm.s's
    ``workload`` run on each host, and the page-walk memory references it made per TLB
    miss (guest entries plus EPT entries, over misses)."""
    out = {}
    for host in hosts:
        c = workloads.run(workload, _host(host), **params).monitor.machine.counters
        misses, refs, eref = c["tlb_misses"], c["walk_refs"], c["ept_walk_refs"]
        out[host] = dict(tlb_misses=misses, walk_refs=refs, ept_walk_refs=eref,
                         per_miss=(refs + eref) / misses if misses else 0.0)
    return out


# ---- 2. a hidden fault and a trace, stepped ---------------------------------------------------
#: a guest kernel small enough to read: it builds a page directory and two page tables
#: (the low 1 MiB mapped to itself with A and D preset, as Linux maps its kernel, and one
#: page at 400000H, A and D clear), turns paging on, reads that page (a hidden fault
#: under shadow paging), then maps the page to another frame with one MOV to its own page
#: table (a trace: trapped and emulated), INVLPGs it and reads it again
TINY_GUEST = """
PD      equ 0x20000             ; the page directory
PT0     equ 0x21000             ; maps linear 0 .. 1 MiB to itself
PT1     equ 0x22000             ; maps linear 400000H ..
FRAME0  equ 0x30000             ; what 400000H maps first
FRAME1  equ 0x31000             ; ... and after the remap
PAGE    equ 0x400000
start:
    mov dword [FRAME0], 0x11111111
    mov dword [FRAME1], 0x22222222
    mov edi, PT0
    mov eax, 0x63               ; P | RW | A | D, frame 0
    mov ecx, 256
identity:
    mov [edi], eax
    add eax, 0x1000
    add edi, 4
    loop identity
    mov dword [PD], PT0 | 0x23      ; P | RW | A
    mov dword [PD + 4], PT1 | 0x03  ; P | RW
    mov dword [PT1], FRAME0 | 0x03  ; P | RW, A = D = 0
    mov eax, PD
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80010000          ; PG | WP
    mov cr0, eax
    mov eax, [PAGE]             ; first touch of the page
    mov dword [PT1], FRAME1 | 0x03  ; the guest remaps it: a store to its own page table
    invlpg [PAGE]
    mov ebx, [PAGE]             ; EBX = 22222222H: the new frame
    hlt
"""
#: the page whose entries :func:`step_faults` watches
TINY_PAGE = 0x400000


def tiny_program():
    """:data:`TINY_GUEST` assembled at 1000H."""
    return assemble(TINY_GUEST, origin=0x1000)


def _dword(machine, pa: int) -> int:
    return int.from_bytes(bytes(machine.memory[pa:pa + 4]), "little")


#: the flags :func:`pte_text` names, in the SDM's bit order (Vol. 3A, Table 4-6)
_FLAGS = ((PTE_P, "P"), (PTE_RW, "RW"), (PTE_US, "US"), (PTE_A, "A"), (PTE_D, "D"))


def pte_text(v: Optional[int]) -> str:
    """A PDE/PTE as its frame and the flags set, or 'no table' for None."""
    if v is None:
        return "no table"
    if not v & PTE_P:
        return f"{v:#010x} (not present)"
    flags = " ".join(name for bit, name in _FLAGS if v & bit)
    return f"{v:#010x} (frame {v & PTE_FRAME:#x}, {flags})"


def entries(mon, lin: int) -> dict:
    """The entries that map linear ``lin`` for a trap-and-emulate monitor's guest:
    ``guest_pte`` (in the guest's own tables, from its virtual CR3; None without one)
    and ``shadow_pte`` (in the shadow tables the real CR3 points to; None while the
    shadow has no table for it), with their addresses."""
    m = mon.machine
    out = dict(guest_pte=None, guest_pte_at=None, shadow_pte=None, shadow_pte_at=None)
    pdi, pti = (lin >> 22) & 0x3FF, (lin >> 12) & 0x3FF
    cr3 = int(mon.vcpu.cr3) & PTE_FRAME
    if cr3:
        pde = _dword(m, cr3 + 4 * pdi)
        if pde & PTE_P:
            out["guest_pte_at"] = (pde & PTE_FRAME) + 4 * pti
            out["guest_pte"] = _dword(m, out["guest_pte_at"])
    sh = mon.shadow_mmu
    if sh is not None and sh.root is not None:
        spde = _dword(m, sh.root.hpa + 4 * pdi)
        if spde & PTE_P:
            out["shadow_pte_at"] = (spde & PTE_FRAME) + 4 * pti
            out["shadow_pte"] = _dword(m, out["shadow_pte_at"])
    return out


@dataclasses.dataclass(frozen=True)
class Moment:
    """One #PF the shadow MMU handled, stepped: ``kind`` ('hidden' or 'trace'), the
    ``step`` it happened at, the fault's linear address ``cr2``, the monitor's ``entry``
    (a LogEntry) and the ``log`` entries up to it, the ``before`` and ``after``
    :func:`entries` of the watched page, and the shadow MMU's ``describe()`` after."""
    kind: str
    step: int
    cr2: int
    entry: object
    log: tuple
    before: dict
    after: dict
    shadow: str


def step_faults(program=None, lin: int = TINY_PAGE, max_steps: int = 20_000) -> dict:
    """Step ``program`` (default :data:`TINY_GUEST`) under trap-and-emulate, one guest
    instruction at a time, reading the entries of ``lin``'s page before and after each
    step: {'hidden': Moment, 'trace': Moment} for the first hidden fault *at* that page
    and the first trace fault (a guest page-table write) after it."""
    mon = TrapAndEmulate(program=tiny_program() if program is None else program)
    found: dict = {}
    page = lin & PTE_FRAME
    for step in range(1, max_steps + 1):
        before, n = entries(mon, lin), len(mon.log)
        ev = mon.step()
        for e in mon.log[n:]:
            cr2 = int(mon.machine.cpu.cr2)
            wanted = (e.what == "hidden" and cr2 & PTE_FRAME == page and "hidden" not in found
                      or e.what == "trace" and "hidden" in found and "trace" not in found)
            if wanted:
                found[e.what] = Moment(e.what, step, cr2, e, tuple(mon.log[:n + 1]), before,
                                       entries(mon, lin), mon.shadow.describe())
        if len(found) == 2:
            return found
        if ev is not None and ev.kind != "budget":
            break
    raise RuntimeError(f"the guest stopped ({ev}) before a hidden fault at {lin:#x} and a "
                       f"trace fault after it: found {sorted(found) or 'neither'}")


def moment_table(m: Moment) -> _HTML:
    """A :class:`Moment` as an HTML table: each entry before and after, a change in bold."""
    rows = []
    for key, label in (("guest_pte", "the guest's PTE (its own table)"),
                       ("shadow_pte", "the shadow PTE (the real CR3's table)")):
        a, b = m.before[key], m.after[key]
        at = m.after[key + "_at"] or m.before[key + "_at"]
        rows.append([label, f"{at:#x}" if at is not None else "-", pte_text(a),
                     _td(pte_text(b), "#b3261e", True) if a != b else pte_text(b)])
    return _table(["entry of the page", "at", "before the step", "after it"], rows,
                  "hvsim-l05-moment")


def tiny_runs(program=None) -> dict:
    """{host label: monitor}: the tiny guest run to its HLT under trap-and-emulate (shadow
    paging), VT-x without EPT (shadow paging) and VT-x with EPT."""
    program = tiny_program() if program is None else program
    runs = {"shadow (trap-and-emulate)": TrapAndEmulate(program=program),
            "shadow (VT-x without EPT)": Vtx(program=program, ept=False),
            "nested (VT-x with EPT)": Vtx(program=program, ept=True)}
    for label, mon in runs.items():
        ev = mon.run(100_000)
        if ev.kind != "halt":
            raise RuntimeError(f"the tiny guest stopped on {ev} under {label}")
    return runs


def _regs(mon) -> tuple:
    return int(mon.machine.cpu.eax), int(mon.machine.cpu.ebx)


def tiny_table(runs: dict) -> _HTML:
    """:func:`tiny_runs` side by side: what the guest read, the monitor's work."""
    keys = ("hidden_faults", "true_faults", "trace_faults", "shadow_roots_built")
    body = []
    for label, mon in runs.items():
        s = mon.stats
        eax, ebx = _regs(mon)
        body.append([label, f"{eax:#x}", f"{ebx:#x}", s["traps"] + s["vm_exits"]]
                    + [s[k] for k in keys] + [mon.machine.counters["ept_walk_refs"]])
    return _table(["host", "EAX (first read)", "EBX (after the remap)", "traps / VM exits",
                   "hidden faults", "true faults", "trace faults", "shadow roots built",
                   "EPT walk references"], body, "hvsim-l05-tiny")


def stepper(program=None):
    """A :class:`hvsim.widgets.Stepper` on the tiny guest under trap-and-emulate."""
    from hvsim.widgets import Stepper
    return Stepper(TrapAndEmulate(program=tiny_program() if program is None else program))


# ---- 3. the same workloads side by side ------------------------------------------------------
SIDE_WORKLOADS = ("fork", "ctxsw", "wss", "demand", "compute")
SIDE_HOSTS = ("native", "shadow", "vtx", "ept")


def side_by_side(workloads_=SIDE_WORKLOADS, hosts=SIDE_HOSTS, **params) -> dict:
    """{(workload, host): WorkloadResult}: each of mm.s's ``workloads_`` on each host
    (:data:`hvsim.workloads.HOSTS`), ``params`` overriding mm.s's parameters."""
    if isinstance(workloads_, str) or isinstance(hosts, str):
        raise TypeError("workloads and hosts are lists of names, e.g. ('fork', 'wss')")
    return {(w, h): workloads.run(w, _host(h), **params) for w in workloads_ for h in hosts}


#: the columns of :func:`counter_rows`: key -> heading
COUNTERS = {"hidden_faults": "hidden faults", "true_faults": "true faults",
            "trace_faults": "trace faults", "shadow_roots_built": "shadow roots built",
            "cr3_cached": "CR3 loads that found their root", "exits": "traps / VM exits",
            "tlb_misses": "TLB misses", "walk_refs": "walk refs (guest entries)",
            "ept_walk_refs": "EPT walk refs", "instructions": "instructions"}


def counter_rows(runs: dict) -> list:
    """One row per run of :func:`side_by_side`: ``workload``, ``host``, the counts of
    :data:`COUNTERS`, ``same_as_native`` (the guest state equals the native run's, or
    None without one)."""
    rows = []
    for (w, h), r in runs.items():
        mon, c = r.monitor, r.monitor.machine.counters
        s, sh = mon.stats, mon.shadow_mmu
        native = runs.get((w, "native"))
        row = dict(workload=w, host=h,
                   hidden_faults=s.get("hidden_faults", 0), true_faults=s.get("true_faults", 0),
                   trace_faults=s.get("trace_faults", 0),
                   shadow_roots_built=s.get("shadow_roots_built", 0),
                   cr3_cached=sh.counters["cr3_cached"] if sh is not None else 0,
                   exits=s.get("traps", 0) + s.get("vm_exits", 0),
                   tlb_misses=c["tlb_misses"], walk_refs=c["walk_refs"],
                   ept_walk_refs=c["ept_walk_refs"], instructions=c["instructions"],
                   same_as_native=None if native is None else r == native)
        rows.append(row)
    return rows


def counter_table(rows: list) -> _HTML:
    """:func:`counter_rows` as an HTML table, one block of rows per workload; a guest
    state that differs from the native run's in red."""
    body = []
    for r in rows:
        same = r["same_as_native"]
        body.append([r["workload"], HOST_NAMES.get(r["host"], r["host"])]
                    + [f"{r[k]:,}" for k in COUNTERS]
                    + [_same_cell(same)])
    return _table(["workload", "host"] + list(COUNTERS.values()) + ["guest state = native's"],
                  body, "hvsim-l05-counters")


def cycle_rows(runs: dict, profile="nehalem") -> list:
    """One row per run: ``workload``, ``host``, cycles by category on ``profile``
    (:data:`hvsim.cost.CATEGORIES`) and ``total``."""
    rows = []
    for (w, h), r in runs.items():
        bd = cost.breakdown(r.monitor, profile)
        rows.append(dict(workload=w, host=h, **bd.categories, total=bd.total))
    return rows


def plot_cycles(runs: dict, profile="nehalem", fig=None):
    """Cycles by category on ``profile``, one panel per workload with its hosts side by
    side (:func:`hvsim.viz.overhead_bars`), three panels a row, the legend in a panel of
    its own; returns the figure."""
    import matplotlib.pyplot as plt
    from hvsim import viz
    names = list(dict.fromkeys(w for w, _ in runs))
    cols = min(3, len(names) + 1)
    rows = -(-(len(names) + 1) // cols)
    if fig is None:
        fig = plt.figure(figsize=(8.2, 3.3 * rows))
    axs = fig.subplots(rows, cols, squeeze=False).ravel()
    for i, (w, ax) in enumerate(zip(names, axs)):
        mine = {h: r.monitor for (w2, h), r in runs.items() if w2 == w}
        viz.overhead_bars(mine, ax, profiles=profile, title=w, legend=(i == 0), totals=False)
        ax.tick_params(axis="x", labelrotation=30)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        if i % cols:
            ax.set_ylabel("")
    leg = axs[0].get_legend()
    for ax in axs[len(names):]:
        ax.axis("off")
    if leg is not None:
        handles, labels = leg.legend_handles, [t.get_text() for t in leg.get_texts()]
        leg.remove()
        axs[len(names)].legend(handles, labels, loc="center", fontsize=8, frameon=False)
    fig.suptitle(f"cycles by category on {cost.profile(profile).label}")
    fig.tight_layout()
    return fig


# ---- 4. the sweep --------------------------------------------------------------------------
#: the guest of the sweep: mm.s's "mixed" workload with its context switches, demand
#: paging and compute loop shrunk to one space, one page, one step -- what is left is
#: fork (N_PAGES pages mapped, touched and unmapped by a new process each round) and the
#: working-set scan (WS_PAGES pages each round), ROUNDS rounds
SWEEP_BASE = dict(K_SPACES=1, PAGES_PER=1, N_DEMAND=1, COW_PAGES=1, ITER=1)


@dataclasses.dataclass
class Sweep:
    """The sweep's results. ``n_pages`` (columns) and ``ws_pages`` (rows) are the grid;
    ``points[(n, ws)][technique]`` holds each run's counts and cycles (``total``,
    ``categories``, ``hidden_faults``, ``trace_faults``, ``exits``, ``tlb_misses``,
    ``ept_walk_refs``, ``instructions``); ``seconds`` is the wall time the runs took."""
    n_pages: tuple
    ws_pages: tuple
    rounds: int
    profile: str
    techniques: tuple
    points: dict
    seconds: float

    def ratio(self, n: int, ws: int) -> float:
        """Cycles of the first technique over the second's at one point: above 1 the
        second (by default EPT) is cheaper."""
        p = self.points[(n, ws)]
        a, b = self.techniques
        return p[a]["total"] / p[b]["total"]

    def winner(self, n: int, ws: int) -> str:
        p = self.points[(n, ws)]
        return min(self.techniques, key=lambda t: p[t]["total"])

    def grid(self) -> list:
        """The ratios as rows (one per working-set size) of columns (one per N_PAGES)."""
        return [[self.ratio(n, ws) for n in self.n_pages] for ws in self.ws_pages]


def _ints(name, values, lo, hi) -> tuple:
    if isinstance(values, (int, str)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a list of ints {lo}..{hi}, got {values!r}")
    out = tuple(values)
    if len(out) < 2 or any(isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi
                           for v in out):
        raise ValueError(f"{name} must be at least two ints {lo}..{hi}, got {values!r}")
    return tuple(sorted(set(out)))


def sweep(n_pages=(1, 4, 16, 32, 64), ws_pages=(16, 48, 64, 72, 80, 96, 128), rounds: int = 8,
          profile="nehalem", techniques=("vtx", "ept")) -> Sweep:
    """Run the sweep's guest (:data:`SWEEP_BASE`) for every (N_PAGES, WS_PAGES) of the
    grid under each of ``techniques`` (two hosts of :data:`hvsim.workloads.HOSTS`) and
    price each run on ``profile``. The frame pool (176 frames) bounds the grid: a point
    whose guest runs dry raises WorkloadError.

    The default grid (5 x 7 points, 70 runs) took 6.4-7.5 s warm on the 2-core development
    machine (the issue's bound: 30 s)."""
    n_pages = _ints("n_pages", n_pages, 1, 128)
    ws_pages = _ints("ws_pages", ws_pages, 1, 160)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= 64:
        raise ValueError(f"rounds must be an int 1..64, got {rounds!r}")
    if isinstance(techniques, str) or len(techniques) != 2:
        raise TypeError(f"techniques must be two host names, got {techniques!r}")
    techniques = tuple(_host(t) for t in techniques)
    prof = cost.profile(profile)
    t0 = time.perf_counter()
    points = {}
    for n in n_pages:
        for ws in ws_pages:
            p = points[(n, ws)] = {}
            for t in techniques:
                r = workloads.run("mixed", t, ROUNDS=rounds, N_PAGES=n, WS_PAGES=ws,
                                  **SWEEP_BASE)
                mon, c = r.monitor, r.monitor.machine.counters
                s = mon.stats
                bd = cost.breakdown(mon, prof)
                p[t] = dict(total=bd.total, categories=bd.categories,
                            hidden_faults=s["hidden_faults"], trace_faults=s["trace_faults"],
                            exits=s["traps"] + s["vm_exits"], tlb_misses=c["tlb_misses"],
                            ept_walk_refs=c["ept_walk_refs"], instructions=c["instructions"])
    return Sweep(n_pages, ws_pages, rounds, prof.name, techniques, points,
                 time.perf_counter() - t0)


def crossover(sw: Sweep) -> list:
    """For each N_PAGES (page-table updates), where the winner changes along the
    working-set axis: ``n_pages``, ``winners`` (one per working-set size, in order) and
    ``flips_at`` (the first working-set size whose winner differs from the smallest's,
    or None)."""
    out = []
    for n in sw.n_pages:
        ws_winners = [sw.winner(n, ws) for ws in sw.ws_pages]
        flip = next((ws for ws, w in zip(sw.ws_pages, ws_winners) if w != ws_winners[0]),
                    None)
        out.append(dict(n_pages=n, winners=ws_winners, flips_at=flip))
    return out


def explain(sw: Sweep, n: int, ws: int) -> str:
    """Where the two techniques' cycles go at one point of the sweep, by category, and
    the difference: the counted events behind the winner."""
    p = sw.points[(n, ws)]
    a, b = sw.techniques
    out = [f"N_PAGES={n}, WS_PAGES={ws}, {sw.rounds} rounds, on {sw.profile}:"]
    for t in (a, b):
        q = p[t]
        out.append(f"  {HOST_NAMES.get(t, t)}: {q['total']:,.0f} cycles -- "
                   f"{q['hidden_faults']} hidden + {q['trace_faults']} trace faults, "
                   f"{q['exits']} exits, {q['tlb_misses']} TLB misses, "
                   f"{q['ept_walk_refs']} EPT walk references")
    out.append(f"  {a} minus {b}, by category:")
    for cat, x in p[a]["categories"].items():
        d = x - p[b]["categories"][cat]
        if d:
            out.append(f"    {cat:<20} {d:+,.0f}")
    w = sw.winner(n, ws)
    out.append(f"  cheaper: {HOST_NAMES.get(w, w)} (ratio {sw.ratio(n, ws):.2f})")
    return "\n".join(out)


def sweep_table(sw: Sweep) -> _HTML:
    """The sweep as an HTML table, one row per point: both techniques' work and cycles,
    the winner in bold."""
    a, b = sw.techniques
    body = []
    for n in sw.n_pages:
        for ws in sw.ws_pages:
            p = sw.points[(n, ws)]
            w = sw.winner(n, ws)
            body.append([n, ws, p[a]["hidden_faults"], p[a]["trace_faults"], p[a]["exits"],
                         p[b]["tlb_misses"], p[b]["ept_walk_refs"],
                         f"{p[a]['total']:,.0f}", f"{p[b]['total']:,.0f}",
                         f"{sw.ratio(n, ws):.2f}", _td(HOST_NAMES.get(w, w), bold=True)])
    return _table(["N_PAGES", "WS_PAGES", f"hidden faults ({a})", f"trace faults ({a})",
                   f"exits ({a})", f"TLB misses ({b})", f"EPT walk refs ({b})",
                   f"cycles ({a})", f"cycles ({b})", f"{a} / {b}", "cheaper"], body,
                  "hvsim-l05-sweep")


def plot_sweep(sw: Sweep, ax=None):
    """The sweep as a heat map of log2(cycles of the first technique / the second's),
    N_PAGES across, WS_PAGES up, each cell labelled with the ratio; the crossover (ratio
    1) drawn as a contour, and the TLB's capacity as a dashed line. Returns the Axes."""
    import matplotlib.pyplot as plt
    import numpy as np
    a, b = sw.techniques
    z = np.log2(np.array(sw.grid()))
    lim = max(0.5, float(np.abs(z).max()))
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 5.0))
    im = ax.imshow(z, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    for i, ws in enumerate(sw.ws_pages):
        for j, n in enumerate(sw.n_pages):
            ax.text(j, i, f"{sw.ratio(n, ws):.2f}", ha="center", va="center", fontsize=8)
    if z.min() < 0 < z.max():
        ax.contour(np.arange(len(sw.n_pages)), np.arange(len(sw.ws_pages)), z, levels=[0.0],
                   colors="k", linewidths=2)
    # the TLB's capacity, between the rows it falls between
    ws = list(sw.ws_pages)
    if ws[0] < TLB_ENTRIES < ws[-1]:
        k = next(i for i, v in enumerate(ws) if v >= TLB_ENTRIES)
        y = k - 1 + (TLB_ENTRIES - ws[k - 1]) / (ws[k] - ws[k - 1]) if ws[k] != TLB_ENTRIES else k
        ax.axhline(y, color="0.3", ls="--", lw=1)
    ax.set_xticks(range(len(sw.n_pages)), [str(n) for n in sw.n_pages])
    ax.set_yticks(range(len(ws)), [str(v) for v in ws])
    ax.set_xlabel("page-table updates: pages a new process maps, touches, unmaps (N_PAGES)")
    ax.set_ylabel("working set scanned each round (WS_PAGES)")
    ax.set_title(f"cycles {HOST_NAMES.get(a, a)} / {HOST_NAMES.get(b, b)}, "
                 f"{sw.rounds} rounds, {cost.profile(sw.profile).cpu}\n"
                 f"red: {b} cheaper, blue: {a} cheaper; black line: equal; dashed: the "
                 f"TLB's {TLB_ENTRIES} entries", fontsize=9)
    ax.figure.colorbar(im, ax=ax, label=f"log2(cycles {a} / cycles {b})")
    return ax


# ---- 5. the exercise: count the faults ----------------------------------------------------
#: the operations a seeded guest is made of (page p = linear 400000H + 4096 p, in PT1)
OPS = {"read": "    mov eax, [{lin:#x}]",
       "write": "    mov dword [{lin:#x}], {p}",
       "remap": "    mov dword [{pte:#x}], {frame:#x} | 0x03\n    invlpg [{lin:#x}]"}
_EX_PAGES = 4
_EX_FRAMES = 0x30000            # page p maps frame 30000H + 1000H p, remapped to + 10000H


def exercise_guest(ops) -> str:
    """The source of a guest that sets up :data:`TINY_GUEST`'s tables with pages 0..3 at
    400000H mapped (A and D clear), turns paging on, runs ``ops`` -- a list of (name,
    page), name in :data:`OPS` -- then HLT."""
    if isinstance(ops, (str, dict)) or not hasattr(ops, "__iter__"):
        raise TypeError(f"ops must be a list of (operation, page) pairs, got {ops!r}")
    ops = list(ops)
    if len(ops) > 100:
        raise ValueError(f"at most 100 operations, got {len(ops)}")
    lines = TINY_GUEST.split("    mov dword [PT1], FRAME0 | 0x03")[0].splitlines()
    lines += [f"    mov dword [PT1 + {4 * p}], {_EX_FRAMES + 0x1000 * p:#x} | 0x03"
              for p in range(_EX_PAGES)]
    lines += ["    mov eax, PD", "    mov cr3, eax", "    mov eax, cr0",
              "    or eax, 0x80010000", "    mov cr0, eax", "    ; paging is on"]
    for op in ops:
        if not isinstance(op, (tuple, list)) or len(op) != 2 or op[0] not in OPS \
                or isinstance(op[1], bool) or op[1] not in range(_EX_PAGES):
            raise ValueError(f"each operation is (name, page) with a name of "
                             f"{', '.join(OPS)} and a page 0..{_EX_PAGES - 1}, got {op!r}")
        name, p = op
        lines.append(OPS[name].format(lin=TINY_PAGE + 0x1000 * p, p=p, pte=0x22000 + 4 * p,
                                      frame=_EX_FRAMES + 0x10000 + 0x1000 * p))
    return "\n".join(lines + ["    hlt"]) + "\n"


def count_faults(ops) -> tuple:
    """(hidden faults, trace faults) the trap-and-emulate monitor's shadow MMU handles
    running :func:`exercise_guest` to its HLT."""
    mon = TrapAndEmulate(program=assemble(exercise_guest(ops), origin=0x1000))
    ev = mon.run(100_000)
    if ev.kind != "halt":
        raise RuntimeError(f"the exercise guest stopped on {ev}, not on its HLT")
    s = mon.stats
    return s["hidden_faults"], s["trace_faults"]


def _exercise_params(rng: random.Random) -> dict:
    # touches in a random order; a remap is always followed by a touch of its page, so no
    # page table is written three times unused (KVM's write flooding stays out of it)
    ops = []
    for _ in range(rng.randrange(5, 9)):
        p = rng.randrange(_EX_PAGES)
        kind = rng.choice(("read", "read", "write", "write", "remap"))
        ops.append((kind, p))
        if kind == "remap":
            ops.append((rng.choice(("read", "write")), p))
    return {"ops": ops}


def _parse_pair(answer) -> tuple:
    if isinstance(answer, str):
        parts = [x for x in answer.strip().strip("[]()").replace(",", " ").split() if x]
    elif isinstance(answer, (list, tuple)):
        parts = list(answer)
    else:
        raise ValueError("write two numbers, hidden then trace faults, like [5, 1]")
    if len(parts) != 2:
        raise ValueError(f"write two numbers, hidden then trace faults, like [5, 1] "
                         f"(yours has {len(parts)})")
    out = []
    for x in parts:
        if isinstance(x, bool):
            raise ValueError(f"{x!r} is a truth value; each count is a number")
        try:
            out.append(int(x, 0) if isinstance(x, str) else int(x))
        except (TypeError, ValueError):
            raise ValueError(f"{x!r} is not a count") from None
        if out[-1] != x and not isinstance(x, str):
            raise ValueError(f"{x!r} is not a whole number")
    return tuple(out)


def _op_text(op) -> str:
    name, p = op
    return f"{name} page {p}"


def _exercise_question(p: dict) -> str:
    return ("The guest below runs under the trap-and-emulate monitor with shadow paging. "
            "Before paging is on it maps pages 0-3 at 400000H (each PTE with A = D = 0, "
            "in page table PT1 at 22000H); then it runs the lines after `; paging is on` "
            "and halts. **How many hidden faults and how many trace faults** does the "
            "monitor handle from start to HLT? Answer as `[hidden, trace]`.\n\n```nasm\n"
            + exercise_guest(p["ops"]) + "```")


_WHY = {
    ("read", 1, 0): "no shadow entry yet: the monitor walks the guest's tables, sets A in "
                    "the guest PTE and fills the shadow PTE (read-only while the guest's D "
                    "is 0)",
    ("read", 0, 0): "the shadow entry is there: the read runs at full speed",
    ("write", 1, 0): "no shadow entry, or a read-only one whose guest D was 0: the monitor "
                     "sets D (and A) in the guest PTE and makes the shadow entry writable",
    ("write", 0, 0): "the shadow entry is already writable: the store runs at full speed",
    ("remap", 0, 1): "PT1 is shadowed, so its frame is write-protected: the store traps, "
                     "the monitor emulates it and drops the page's shadow entry (the INVLPG "
                     "traps too, but it is no #PF)",
    ("remap", 1, 0): "PT1 has no shadow yet (none of its pages used since paging started), "
                     "so it is not write-protected and the store is no trace; but it is the "
                     "first touch of PT1's own page (linear 22000H, mapped to itself), whose "
                     "shadow entry is missing: a hidden fault",
    ("remap", 0, 0): "PT1 has no shadow yet and its own page's shadow entry is writable: "
                     "the store runs at full speed, and the monitor does not see it",
}


def _exercise_solution(p: dict, answer) -> str:
    ops = p["ops"]
    base = count_faults([])
    lines = ["Run it a line at a time (each prefix of the program, counted): paging on, "
             f"then the HLT, alone: **{base[0]}** hidden fault(s) -- the first fetch from "
             "the code page, its shadow entry missing -- and no trace. Then each line adds:"]
    prev = base
    for k in range(1, len(ops) + 1):
        now = count_faults(ops[:k])
        dh, dt = now[0] - prev[0], now[1] - prev[1]
        why = _WHY.get((ops[k - 1][0], dh, dt), "")
        lines.append(f"* {_op_text(ops[k - 1])}: {dh} hidden, {dt} trace -- {why}.")
        prev = now
    lines.append(f"Total: hidden {answer[0]}, trace {answer[1]}: **[{answer[0]}, {answer[1]}]**. "
                 "`from hvsim.lessons.l05_shadow_vs_nested import count_faults; "
                 f"count_faults({ops!r})` gives the same run's counts.")
    return "\n".join(lines)


def fault_exercise(seed: int = 5) -> Exercise:
    """'How many hidden and trace faults does this guest cause under shadow paging?'"""
    return Exercise("hidden and trace faults of a guest", seed, make=_exercise_params,
                    question=_exercise_question, answer=lambda p: count_faults(p["ops"]),
                    solution=_exercise_solution, parse=_parse_pair)
