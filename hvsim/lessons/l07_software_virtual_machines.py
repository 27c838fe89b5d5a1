"""Lesson 07, "software virtual machines": the logic behind
notebooks/07_software_virtual_machines.ipynb (not jitted).

Before VT-x, x86 was virtualized in software. Lesson 02's teaching kernel freezes under
trap-and-emulate because POPF does not trap at ring 1; four products got around the hole
without changing the guest:

* **interpretation** (Bochs): every guest instruction is decoded (once, into a trace
  cache) and carried out by software -- :class:`hvsim.emulation.monitor.Emulator`,
  ``mode="interpret"``;
* **dynamic translation** (QEMU TCG, Bellard, USENIX ATC 2005): blocks of guest code are
  translated to host code, kept in a code buffer and *chained* to each other --
  ``mode="translate"``;
* **binary translation** (VMware, Adams & Agesen, ASPLOS 2006): the kernel runs from a
  translation cache at ring 1, its sensitive instructions rewritten into inline
  sequences or *callouts* into the monitor -- :class:`hvsim.bt.BinaryTranslator`;
* **raw mode** (VirtualBox's CSAM/PATM): the kernel runs in place at ring 1, scanned
  ahead, its dangerous instructions patched with jumps to patch code or INT3 --
  :class:`hvsim.bt.rawmode.RawMode`.

Sections (each a function here, the notebook only calls them):

1. :func:`seven_hosts` / :func:`host_rows` / :func:`host_table`: the teaching kernel on
   native, trap-and-emulate, VT-x and the four software machines;
2. :func:`model_rows` (the two emulator models' counters) and :func:`tb_rows` (QEMU's
   translation blocks); :func:`cpl_demo`: the same code at CPL 0 and CPL 3 is two TBs;
3. :func:`smc_runs` / :func:`smc_table`: a loop that rewrites an immediate of its own
   code, and one that writes data beside its code: QEMU invalidates the TBs whose bytes
   a store meets, Bochs the traces in the 128-byte regions it meets;
4. :func:`bt_listing_table` (sys_ticks' translation beside the original),
   :func:`step_to_callout`, :func:`adaptive_facts` (the timer's ``inc dword [ticks]``);
5. :func:`patch_table`: raw mode's patched sites;
6. :func:`cycle_runs` and :func:`plot_cycles`: cycles by category on every host;
7. :func:`chain_exercise`: chain hits of a loop whose halves are, or are not, on one page.
"""
from __future__ import annotations

import random
from typing import Optional

from hvsim import assemble, cost, kernelhosts
from hvsim import workloads as W
from hvsim.bt import BinaryTranslator
from hvsim.bt.rawmode import RawMode
from hvsim.emulation.monitor import Emulator
from hvsim.guests import teaching_kernel
from hvsim.lessons import Exercise
from hvsim.lessons.l04_ring_minus_one import _HTML, _table, _td

__all__ = ["HOSTS", "HOST_NAMES", "run_host", "seven_hosts", "host_rows", "host_table",
           "MODEL_COUNTERS", "model_rows", "model_table", "tb_rows", "tb_table", "CPL_DEMO",
           "cpl_demo_source", "cpl_demo", "SMC_PROGRAMS", "smc_runs", "smc_rows",
           "smc_table", "bt_kernel", "bt_listing_table", "step_to_callout", "adaptive_facts",
           "raw_kernel",
           "patch_table", "SHORT_NAMES", "CYCLE_HOSTS", "cycle_runs", "cycle_rows",
           "plot_cycles", "split_loop", "count_lookups", "chain_exercise"]

#: the hosts of section 1, in the order of the table
HOST_NAMES = {"native": "native", "shadow": "trap-and-emulate", "vtx": "VT-x",
              "emulate": "interpreted (Bochs)", "dbt": "translated (QEMU TCG)",
              "bt": "binary translation (VMware)", "rawmode": "raw mode (VirtualBox)"}
HOSTS = tuple(HOST_NAMES)
STEPS = kernelhosts.STEPS
PAGE = 4096


def run_host(host: str, steps: int = STEPS):
    """The teaching kernel run ``steps`` steps on ``host`` (one of :data:`HOSTS`), in two
    halves (:func:`hvsim.kernelhosts.run`): returns (monitor, the guest's tick count after
    the first half)."""
    r = kernelhosts.run(host, steps)
    return r.monitor, r.ticks_at_half


def seven_hosts(steps: int = STEPS, hosts=HOSTS) -> dict:
    """{host: (monitor, ticks at half time)} for the teaching kernel on each host."""
    return {h: run_host(h, steps) for h in hosts}


def host_rows(runs: dict) -> list:
    """One row per host: console, the guest's ticks and SYS_TICKS calls, whether its clock
    froze (no tick counted in the second half of the run), traps, callouts, VM exits,
    and the software machine's own work (instructions interpreted or translated, TUs)."""
    rows = []
    for h, (mon, half) in runs.items():
        s = mon.stats
        ticks = kernelhosts.guest_dword(mon, "ticks")
        rows.append(dict(host=h, console=mon.console, ticks=ticks,
                         calls=kernelhosts.guest_dword(mon, "calls"), froze=ticks == half,
                         traps=s["traps"], callouts=s["callouts"], exits=s["vm_exits"],
                         interpreted=s["insns_interpreted"],
                         translated=s["insns_translated"] + s["translated"]))
    return rows


def host_table(rows: list) -> _HTML:
    body = []
    for r in rows:
        console = r["console"].strip().replace("\n", " / ")
        body.append([HOST_NAMES.get(r["host"], r["host"]), console,
                     f"{r['ticks']:,}", f"{r['calls']:,}",
                     _td("FROZE", "#b3261e", True) if r["froze"] else _td("runs"),
                     f"{r['traps']:,}", f"{r['callouts']:,}", f"{r['exits']:,}",
                     f"{r['interpreted']:,}", f"{r['translated']:,}"])
    return _table(["host", "console", "ticks", "SYS_TICKS calls", "clock", "traps",
                   "callouts", "VM exits", "insns interpreted", "insns translated"],
                  body, "hvsim-l07-hosts")


# ---- 2. the Bochs and QEMU models --------------------------------------------------------------
#: the model counters shown, with what they mean
MODEL_COUNTERS = {
    "bx_interpreted": "Bochs: instructions interpreted",
    "bx_decoded": "Bochs: instructions decoded into the trace cache",
    "bx_hits": "Bochs: trace-cache hits", "bx_misses": "Bochs: trace-cache misses",
    "bx_smc": "Bochs: stores into a code region",
    "bx_traces_invalidated": "Bochs: traces invalidated",
    "tb_translated": "QEMU: TBs translated", "tb_insns_translated": "QEMU: instructions translated",
    "tb_insns_run": "QEMU: instructions run from TBs",
    "tb_chain_hits": "QEMU: TB entered by a chained jump",
    "tb_jc_hits": "QEMU: TB found in the jump cache",
    "tb_misses": "QEMU: TB not found: translate", "tb_chains_patched": "QEMU: jumps chained",
    "tb_invalidated": "QEMU: TBs invalidated", "code_writes": "stores into code pages",
}


def model_rows(emu: Emulator) -> list:
    """(counter, meaning, value) for :data:`MODEL_COUNTERS` of an emulator's run."""
    c = emu.model_counters
    return [(k, v, c[k]) for k, v in MODEL_COUNTERS.items()]


def model_table(emu: Emulator) -> _HTML:
    return _table(["counter", "what it counts", "count"],
                  [[k, v, f"{n:,}"] for k, v, n in model_rows(emu)], "hvsim-l07-model")


def _label_of(labels: dict, pc: int) -> str:
    best = None
    for name, a in labels.items():
        if a <= pc and not name.startswith(".") and (best is None or a > best[1]):
            best = (name, a)
    if best is None:
        return f"{pc:#x}"
    return best[0] if best[1] == pc else f"{best[0]}+{pc - best[1]:#x}"


def tb_rows(emu: Emulator, labels: Optional[dict] = None) -> list:
    """The valid TBs of a translate-mode run (Emulator.tb_table()) with the label of each
    pc and of each chained successor."""
    labels = labels or {}
    rows = []
    for t in emu.tb_table():
        name = lambda pc: "-" if pc is None else _label_of(labels, pc)   # noqa: E731
        rows.append(dict(t, where=name(t["pc"]), to=[name(p) for p in t["chained"]]))
    return rows


def tb_table(rows: list, limit: int = 40) -> _HTML:
    body = [[f"{r['pc']:#x}", r["where"], r["cpl"], r["icount"], r["size"],
             ", ".join(f"{p:#x}" for p in r["pages"]), r["end"], " / ".join(r["to"])]
            for r in rows[:limit]]
    return _table(["pc", "label", "CPL", "insns", "bytes", "pages", "ends with",
                   "chained to (slot 0 / 1)"], body, "hvsim-l07-tbs")


#: one routine, called at ring 0 and again from ring 3 (through an IRET to an outer ring);
#: the ring-3 code ends with INT 80H, whose gate (DPL 3) leads to a ring-0 HLT
CPL_DEMO = """
start:  call work               ; at CPL 0
        push {udata}            ; IRET to ring 3: EIP, CS, EFLAGS, ESP, SS
        push 0x80000
        pushf
        push {ucode}
        push user
        iret
user:   call work               ; the same bytes at CPL 3
        int 0x80
work:   add eax, 1
        ret
done:   hlt                     ; the INT 80H handler, at ring 0
"""


def cpl_demo_source() -> str:
    """:data:`CPL_DEMO` with ring 3's selectors of hvsim.rings.setup's GDT filled in."""
    from hvsim.rings.setup import SystemTables
    return CPL_DEMO.format(udata=f"{SystemTables.data(3):#x}",
                           ucode=f"{SystemTables.code(3):#x}")


def cpl_demo() -> Emulator:
    """:data:`CPL_DEMO` run to its HLT in translate mode."""
    prog = assemble(cpl_demo_source(), origin=0x1000)
    emu = Emulator(mode="translate")
    emu.boot(prog)
    emu.tables.gate(emu.machine, 0x80, prog.labels["done"], dpl=3)
    ev = emu.run(1_000)
    if ev.kind != "halt" or emu.vcpu.eax != 2:
        raise RuntimeError(f"the CPL demo stopped on {ev} with EAX={emu.vcpu.eax}")
    emu.labels = prog.labels
    return emu


# ---- 3. self-modifying code ------------------------------------------------------------------
#: two loops of {k} passes. 'immediate' rewrites the immediate of an instruction a few
#: bytes further in its own loop (true self-modifying code); 'beside' writes a counter
#: that shares the code's 4 KiB page but lies 1 KiB away (another 128-byte region)
SMC_PROGRAMS = {
    "immediate": """
start:  mov ecx, {k}
top:    mov byte [patch + 1], cl    ; rewrite the 0 of 'mov al, 0' below
patch:  mov al, 0
        dec ecx
        jnz top
        hlt
""",
    "beside": """
start:  mov ecx, {k}
top:    mov [counter], ecx          ; data, not code: but on the code's page
        dec ecx
        jnz top
        hlt
        times 1024 db 0
counter: dd 0
""",
}


def smc_runs(k: int = 10) -> dict:
    """{(program, mode): Emulator} for each of :data:`SMC_PROGRAMS` with ``k`` passes."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 255:
        raise ValueError(f"k must be an int from 1 to 255, got {k!r}")
    out = {}
    for name, src in SMC_PROGRAMS.items():
        for mode in ("interpret", "translate"):
            emu = Emulator(mode=mode, program=assemble(src.format(k=k), origin=0x1000))
            ev = emu.run(100_000)
            if ev.kind != "halt":
                raise RuntimeError(f"{name} ({mode}) stopped on {ev}")
            out[name, mode] = emu
    return out


def smc_rows(runs: dict) -> list:
    """Per program: the stores into code pages, and what each model threw away."""
    rows = []
    for name in dict.fromkeys(n for n, _ in runs):
        bx, tb = runs[name, "interpret"].model_counters, runs[name, "translate"].model_counters
        rows.append(dict(program=name, code_writes=tb["code_writes"], bx_smc=bx["bx_smc"],
                         bx_invalidated=bx["bx_traces_invalidated"], bx_misses=bx["bx_misses"],
                         tb_invalidated=tb["tb_invalidated"], tb_translated=tb["tb_translated"]))
    return rows


def smc_table(rows: list) -> _HTML:
    body = [[r["program"], r["code_writes"], r["bx_smc"], r["bx_invalidated"], r["bx_misses"],
             r["tb_invalidated"], r["tb_translated"]] for r in rows]
    return _table(["program", "stores to a code page", "Bochs: stores in a code region",
                   "Bochs: traces invalidated", "Bochs: trace misses", "QEMU: TBs invalidated",
                   "QEMU: TBs translated"], body, "hvsim-l07-smc")


# ---- 4. binary translation -------------------------------------------------------------------
_KIND_COLOUR = {"INLINE": "#1f5fbf", "CALLOUT": "#b3261e", "CHAIN": "#555555", "CONT": "#555555"}


def bt_kernel(steps: int = 30_000) -> BinaryTranslator:
    """The teaching kernel run ``steps`` steps under binary translation."""
    bt = kernelhosts.binary_translator()
    bt.run(kernelhosts.check_steps(steps))
    bt.labels = teaching_kernel().labels
    return bt


def _labels(mon) -> dict:
    """The labels of the program ``mon`` runs: its own, or the teaching kernel's."""
    labels = getattr(mon, "labels", None)
    return labels if labels is not None else teaching_kernel().labels


def _address(mon, label: str) -> int:
    labels = _labels(mon)
    if label not in labels:
        raise ValueError(f"the guest has no label {label!r} (its labels include "
                         f"{', '.join(sorted(k for k in labels if not k.startswith('.'))[:8])}...)")
    return labels[label]


def bt_listing_table(bt: BinaryTranslator, label: str = "sys_ticks") -> _HTML:
    """The translation of the TU at ``label`` beside the guest code: inline sequences in
    blue, callouts in red."""
    rows = bt.listing(_address(bt, label))
    body = []
    for g_eip, g_text, addr, tc_text, kind in rows:
        colour = _KIND_COLOUR.get(kind)
        bold = kind in ("INLINE", "CALLOUT")
        body.append(["" if g_eip is None else f"{g_eip:#x}", g_text, f"{addr:#x}",
                     _td(tc_text, colour, bold), _td(kind, colour, bold)])
    return _table(["guest EIP", "guest instruction", "TC address", "TC instruction", "kind"],
                  body, "hvsim-l07-bt")


def step_to_callout(bt: Optional[BinaryTranslator] = None, max_steps: int = 10_000,
                    contains: str = "") -> dict:
    """Step ``bt`` (default: the teaching kernel, freshly booted) with ``step()`` until its
    log gets a callout entry whose action contains ``contains``: the step, where the TC
    was (EIP, ring), the log entry, and where the guest is after it (EIP, ring)."""
    bt = bt or kernelhosts.binary_translator()
    for i in range(max_steps):
        n = len(bt.log)
        eip, ring = int(bt.machine.cpu.eip), bt.machine.cpu.cpl
        bt.step()
        new = [e for e in list(bt.log)[n:] if e.what == "callout" and contains in e.action]
        if new:
            return dict(step=i, eip=eip, ring=ring, entry=new[0], action=new[0].action,
                        after=int(bt.machine.cpu.eip), ring_after=bt.machine.cpu.cpl,
                        monitor=bt)
    raise RuntimeError(f"no callout with {contains!r} in its action in {max_steps} steps")


def adaptive_facts(bt: BinaryTranslator) -> dict:
    """The timer handler's ``inc dword [ticks]``: ``ticks`` shares its 4 KiB page with code
    the TC translated, so the page is write-protected and the store traps (a #PF the
    monitor emulates) -- until it has trapped ADAPT_AFTER times and the monitor rewrites
    its translation as a callout (adaptive translation, Adams & Agesen 2006, section 3.3).
    ``trapped``: the site's traps; ``runs``: the handler's runs (= the guest's ticks); the
    TC row of the site now; ``adapted_sites``: every guest EIP adapted so far."""
    site = _address(bt, "timer")
    rows = bt.listing(site)
    row = next(r for r in rows if r[0] == site)
    trapped = sum(1 for e in bt.log if e.what == "smc" and e.ring == 1
                  and str(e.insn) == row[1])
    return dict(site=site, guest=row[1], kind=row[4], tc=row[3], trapped=trapped,
                runs=kernelhosts.guest_dword(bt, "ticks"), adapt_after=bt.adapt_after,
                adapted_sites=sorted(bt._adapted), adapted_callouts=bt.callouts["adapted"],
                code_writes=bt.counters["code_writes"], rows=rows)


# ---- 5. raw mode ---------------------------------------------------------------------------
def raw_kernel(steps: int = 30_000) -> RawMode:
    rm = kernelhosts.raw_mode()
    rm.run(kernelhosts.check_steps(steps))
    rm.labels = teaching_kernel().labels
    return rm


def patch_table(rm: RawMode) -> _HTML:
    """Every patched site: where, how (a jump to patch code, or INT3), the kind of
    replacement, why a jump was refused, the original instructions and bytes."""
    labels = getattr(rm, "labels", {})
    body = []
    for p in rm.patches():
        colour = "#b3261e" if p["how"] == "int3" else "#1f5fbf"
        body.append([f"{p['site']:#x}", _label_of(labels, p["site"]), _td(p["how"], colour, True),
                     p["kind"], p["reason"] or "-", "; ".join(p["original"]),
                     p["original_bytes"].hex(" "), p["written"].hex(" "),
                     len(p["patch_code"])])
    return _table(["site", "label", "how", "replacement", "why not a jump", "original",
                   "original bytes", "bytes now", "patch-code insns"], body, "hvsim-l07-raw")


# ---- 6. cycles ------------------------------------------------------------------------------
class _Run:
    """What lesson 05's plot_cycles reads: a ``monitor``."""

    def __init__(self, monitor):
        self.monitor = monitor


#: the hosts' names under the bars
SHORT_NAMES = {"native": "native", "shadow": "T&E", "vtx": "VT-x",
               "emulate": "Bochs", "dbt": "QEMU", "bt": "BT", "rawmode": "raw mode"}
CYCLE_HOSTS = ("native", "shadow", "vtx", "emulate", "dbt", "bt", "rawmode")


def cycle_runs(kernel_runs: Optional[dict] = None, workload: str = "mixed",
               hosts=CYCLE_HOSTS) -> dict:
    """{(guest, host): run} -- the teaching kernel (``kernel_runs`` from
    :func:`seven_hosts`, or run here) and ``workload`` of hvsim.workloads on every host."""
    kernel_runs = kernel_runs or seven_hosts(hosts=hosts)
    out = {("teaching kernel", h): _Run(kernel_runs[h][0]) for h in hosts if h in kernel_runs}
    for h in hosts:
        out[workload, h] = W.run(workload, h)
    return out


def cycle_rows(runs: dict, profile: str = "nehalem") -> list:
    rows = []
    for (g, h), r in runs.items():
        bd = cost.breakdown(r.monitor, profile)
        rows.append(dict(guest=g, host=h, **bd.categories, total=bd.total))
    return rows


def plot_cycles(runs: dict, profile: str = "nehalem", fig=None):
    """Cycles by category on ``profile``, one panel per guest (lesson 05's drawing)."""
    from hvsim.lessons.l05_shadow_vs_nested import plot_cycles as draw
    return draw({(g, SHORT_NAMES.get(h, h)): r for (g, h), r in runs.items()}, profile, fig)


# ---- 7. exercise ---------------------------------------------------------------------------
def split_loop(n: int, gap: int) -> str:
    """A loop of ``n`` passes in two halves: ``top`` at 1000H jumps to ``second``, ``gap``
    bytes further on, which loops back to ``top``. QEMU chains a jump only to a TB on the
    page where the jumping TB starts: with ``second`` on the next page, no jump of the
    loop chains."""
    for name, v, lo, hi in (("n", n, 1, 10_000), ("gap", gap, 16, 8000)):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"{name} must be an int from {lo} to {hi}, got {v!r}")
    return f"""
start:  mov ecx, {n}
top:    inc eax
        jmp second
        times {gap} - ($ - top) db 0x90    ; second = top + {gap}
second: dec ecx
        jnz top
        hlt
"""


def count_lookups(n: int, gap: int) -> list:
    """[chain hits, jump-cache hits] of :func:`split_loop` in the QEMU model, counted by
    running it."""
    emu = Emulator(mode="translate", program=assemble(split_loop(n, gap), origin=0x1000))
    ev = emu.run(10 * n + 10_000)
    if ev.kind != "halt" or emu.vcpu.eax != n:
        raise RuntimeError(f"the split loop stopped on {ev} with EAX={emu.vcpu.eax}")
    c = emu.model_counters
    return [c["tb_chain_hits"], c["tb_jc_hits"]]


#: where split_loop's ``top`` is, assembled at 1000H (after the 5-byte ``mov ecx``)
EXERCISE_TOP = 0x1005


def _jc_slot(pc: int) -> int:
    """The QEMU model's jump-cache slot of ``pc`` (model._jc_hash, run as Python)."""
    from hvsim.emulation.model import _jc_hash as h
    return getattr(h, "py_func", h)(pc)


def _exercise_gaps(lo: int, hi: int) -> tuple:
    """The gaps in [lo, hi) whose ``second`` does not share ``top``'s jump-cache slot: where
    they share it, translating or looking up one TB evicts the other and the jump-cache
    hits are not the ones the solution counts."""
    return tuple(g for g in range(lo, hi) if _jc_slot(EXERCISE_TOP + g) != _jc_slot(EXERCISE_TOP))


#: the exercise's gaps: ``second`` on top's page (below FFBH) or on the next one
EXERCISE_GAPS = {"one page": _exercise_gaps(64, 3800), "two pages": _exercise_gaps(4200, 7800)}


def _exercise_params(rng: random.Random) -> dict:
    n = rng.randrange(8, 120)
    gap = rng.choice(EXERCISE_GAPS["one page" if rng.random() < 0.5 else "two pages"])
    return {"n": n, "gap": gap, "second": EXERCISE_TOP + gap}


def exercise_rule(n: int, gap: int) -> list:
    """[chain hits, jump-cache hits] of :func:`split_loop` as the solution counts them:
    [2(n - 2), 1] with both halves on one page, [0, 2n - 3] on two."""
    if (EXERCISE_TOP + gap) >> 12 == EXERCISE_TOP >> 12:
        return [2 * (n - 2), 1]
    return [0, 2 * n - 3]


def _exercise_question(p: dict) -> str:
    return (f"The loop below runs **{p['n']}** passes in two halves: `top` (at 1005H) does "
            f"`inc eax` and jumps to `second`, {p['gap']} bytes further on (at "
            f"{p['second']:X}H), which does `dec ecx` / `jnz top`. Run in the QEMU model "
            "(`Emulator(mode=\"translate\")`), how many times is a TB entered **by a chained "
            "jump**, and how many times is it found **in the jump cache**? Answer with a "
            "list `[chain hits, jump-cache hits]`.\n\n```nasm" + split_loop(p["n"], p["gap"])
            + "```")


def _exercise_solution(p: dict, answer) -> str:
    n, gap, second = p["n"], p["gap"], p["second"]
    same = second >> 12 == EXERCISE_TOP >> 12
    chained, hits = exercise_rule(n, gap)
    head = (f"Four TBs: the first (`mov ecx` through `jmp second`, at 1000H), B at "
            f"`second`, A at `top` (first entered from B's `jnz`), C at the `hlt`. "
            f"`top` is on page 1000H, `second` on page {second & ~0xFFF:X}H. ")
    if same:
        body = (f"Both are on one page, so QEMU may chain every jump of the loop: the first "
                "TB's jump to B is a miss (B is translated and the jump patched), B's first "
                "`jnz top` a miss (A translated, patched), A's first `jmp second` finds B in "
                "the jump cache (1 hit) and is patched. The other "
                f"{n - 2} passes take both jumps chained: 2 x {n - 2} = {chained} chain hits, "
                f"{hits} jump-cache hit: **{answer}**.")
    else:
        body = ("They are on different pages, so QEMU never chains the loop's jumps (a "
                "TB's jump is patched only to a TB on the page where it starts: the target's "
                "page might be remapped or rewritten without the jumping TB's knowing). "
                "Every jump is looked up: the two first ones miss (B and A translated), "
                f"the other {n - 1} `jmp second` and {n - 2} `jnz top` hit the jump cache: "
                f"{hits} hits, no chain: **{answer}**.")
    return (head + body + " `from hvsim.lessons.l07_software_virtual_machines import "
            f"count_lookups; count_lookups({n}, {gap})` runs it and counts {answer}.")


def _parse_pair(answer) -> list:
    """A student's [chain hits, jump-cache hits]: a list or tuple of two integers, or text
    such as '[12, 3]' or '12, 3'."""
    if isinstance(answer, str):
        parts = [x for x in answer.strip().strip("[]()").replace(",", " ").split() if x]
    elif isinstance(answer, (list, tuple)):
        parts = list(answer)
    else:
        raise ValueError("write two counts, like [12, 3]")
    if len(parts) != 2:
        raise ValueError(f"write two counts, [chain hits, jump-cache hits]; got {len(parts)}")
    out = []
    for x in parts:
        if isinstance(x, bool):
            raise ValueError(f"{x!r} is a truth value, not a count")
        out.append(x if isinstance(x, int) else int(str(x).strip(), 0))
    return out


def chain_exercise(seed: int = 7) -> Exercise:
    """'How many chain hits and jump-cache hits does a split loop make in the QEMU model?'"""
    return Exercise("chained and looked-up jumps of a split loop", seed,
                    make=_exercise_params, question=_exercise_question,
                    answer=lambda p: count_lookups(p["n"], p["gap"]),
                    solution=_exercise_solution, parse=_parse_pair)
