"""Lesson 02, "the x86 hole": the logic behind notebooks/02_the_x86_hole.ipynb (not jitted).

Every table and curve here is computed by running hvsim, never typed in:

* :func:`behaviour_table` runs POPF, PUSHF, CLI, STI, IN and OUT at each CPL and IOPL on
  a fresh machine and records what happened (a #GP, or what the instruction did);
* :func:`tick_curves` runs the teaching kernel (hvsim/guests) under the trap-and-emulate
  monitor (hvsim/monitors/trap_and_emulate.py), with and without the ``virtualizable`` switch, and
  samples the guest's own tick counter against retired instructions;
* :data:`exercise` asks for the tick count at which the guest freezes, for seeded timer
  and workload parameters, and computes the answer by running the guest.

Sources: Popek & Goldberg, CACM 17(7), 1974 (theorem 1); Robin & Irvine, USENIX
Security 2000 (x86's sensitive unprivileged instructions); Intel SDM Vol. 2B POPF/POPFD
and PUSHF, Vol. 2A CLI, IN, OUT, Vol. 2B STI (the privilege rules tabulated here).
"""
from __future__ import annotations

import html
from typing import Optional

from hvsim import Machine, assemble
from hvsim import kernelhosts
from hvsim.arch.flags import IF, IOPL_SHIFT, FIXED1
from hvsim.kernelhosts import guest_dword
from hvsim.lessons import Exercise
from hvsim.monitors import Native, TrapAndEmulate
from hvsim.rings.setup import install

__all__ = ["behaviour_table", "behaviour_html", "run_guest", "guest_dword", "tick_curves",
           "plot_ticks", "log_text", "exercise", "INSTRUCTIONS", "HOLES_GUEST", "other_holes",
           "holes_html"]

PORT = 0xE9                      # the console port: claimed, so IN/OUT complete in the core

# instruction -> (source, IF before, what to read after)
INSTRUCTIONS = {
    "POPF": (f"push {FIXED1 | IF:#x}\npopf", 0, "IF"),      # tries to set IF (and IOPL 0)
    "PUSHF": ("pushf", IF, "image"),
    "CLI": ("cli", IF, "IF"),
    "STI": ("sti", 0, "IF"),
    "IN": (f"in al, {PORT:#x}", IF, None),
    "OUT": (f"out {PORT:#x}, al", IF, None),
}


def _one(insn: str, cpl: int, iopl: int, virtualizable: bool) -> str:
    src, if0, watch = INSTRUCTIONS[insn]
    m = Machine(memory=1 << 17, exceptions="host")
    install(m)                                    # a TSS without an I/O bitmap
    m.virtualizable = virtualizable
    prog = assemble(src)
    m.load(prog)
    m.cpu.eflags = FIXED1 | if0 | (iopl << IOPL_SHIFT)
    m.cpu.cpl = cpl
    m.cpu.esp = 0x8000
    ev = m.run(max_steps=len(prog.listing))
    if ev.kind == "exception":
        return f"#{'GP' if ev.vector == 13 else ev.vector}({ev.error_code or 0}) trap"
    if watch == "IF":
        before, after = int(bool(if0)), int(bool(m.cpu.eflags & IF))
        if before == after:
            return f"IF stays {after} — silently"
        return f"IF {before}→{after}"
    if watch == "image":
        image = int.from_bytes(bytes(m.memory[m.cpu.esp:m.cpu.esp + 4]), "little")
        return f"pushes IF={int(bool(image & IF))} IOPL={(image >> IOPL_SHIFT) & 3}"
    return "runs"


def behaviour_table(cpls=(0, 1, 2, 3), iopls=(0, 3), virtualizable: bool = False) -> list:
    """Rows ``{'instruction', 'cpl', 'iopl', 'outcome'}``, one per case, each from a run."""
    for name, values, top in (("cpl", cpls, 3), ("iopl", iopls, 3)):
        if not values or any(not isinstance(v, int) or not 0 <= v <= top for v in values):
            raise ValueError(f"{name}s must be values in 0..{top}, got {values!r}")
    return [dict(instruction=insn, cpl=c, iopl=i, outcome=_one(insn, c, i, virtualizable))
            for insn in INSTRUCTIONS for c in cpls for i in iopls]


class _HTML(str):
    def _repr_html_(self):
        return str(self)


def behaviour_html(rows: list) -> str:
    """The rows of :func:`behaviour_table` as an HTML grid: instructions down, CPL/IOPL
    across; a silent non-trap (the x86 hole) in red, a trap in blue."""
    cols = sorted({(r["cpl"], r["iopl"]) for r in rows})
    cell = {(r["instruction"], r["cpl"], r["iopl"]): r["outcome"] for r in rows}
    out = ['<table class="hvsim-l02"><tr><th></th>'
           + "".join(f"<th>CPL {c}<br>IOPL {i}</th>" for c, i in cols) + "</tr>"]
    for insn in dict.fromkeys(r["instruction"] for r in rows):
        out.append(f"<tr><th>{insn}</th>")
        for c, i in cols:
            text = cell.get((insn, c, i), "")
            colour = "#b3261e" if "silently" in text else "#1a4f8b" if "trap" in text else "inherit"
            out.append(f'<td style="color:{colour}">{html.escape(text)}</td>')
        out.append("</tr>")
    out.append("</table>")
    return _HTML("".join(out))


# ---- the guest under the monitor ------------------------------------------------------------
def run_guest(virtualizable: bool = False, steps: int = 50_000, **constants) -> TrapAndEmulate:
    """Boot the teaching kernel under the monitor and run it ``steps`` steps."""
    mon = kernelhosts.trap_and_emulate(virtualizable, **constants)
    mon.run(steps)
    return mon


def run_native(steps: int = 50_000, **constants) -> Native:
    """The same teaching kernel with no monitor (:func:`hvsim.kernelhosts.native`): in
    ring 0 of a machine whose exceptions and interrupts go through the kernel's own IDT,
    on the machine's own console and timer. The kernel's code selector (KCODE) is the
    ring-0 one of the same GDT layout; nothing else changes, so it does the same work."""
    nat = kernelhosts.native(**constants)
    nat.run(steps)
    return nat


def cost_runs(steps: int = 50_000) -> dict:
    """{label: monitor} -- the teaching kernel run ``steps`` steps natively, under
    trap-and-emulate on plain x86, and on the virtualizable x86."""
    return {"native": run_native(steps),
            "trap-and-emulate": run_guest(False, steps),
            "trap-and-emulate, virtualizable": run_guest(True, steps)}


def cost_table(runs: dict, profile: str = "prescott") -> str:
    """One line per run: the guest's progress (system calls served, ticks counted) and the
    cycles the cost model charges under ``profile``, in total and per system call."""
    from hvsim import cost
    lines = [f"{'run':34} {'calls':>6} {'ticks':>6} {'cycles':>12} {'cycles/call':>12}"]
    for label, mon in runs.items():
        calls, ticks = guest_dword(mon, "calls"), guest_dword(mon, "ticks")
        total = cost.breakdown(mon, profile).total
        per = f"{total / calls:,.0f}" if calls else "-"
        lines.append(f"{label:34} {calls:>6} {ticks:>6} {total:>12,.0f} {per:>12}")
    return "\n".join(lines)


def tick_curves(steps: int = 60_000, samples: int = 60) -> dict:
    """{'plain x86': [(instructions, ticks)...], 'virtualizable': [...]}: the guest's own
    tick counter sampled every steps/samples monitor steps."""
    if samples < 1 or steps < samples:
        raise ValueError("need steps >= samples >= 1")
    curves = {}
    for name, vz in (("plain x86", False), ("virtualizable", True)):
        mon = kernelhosts.trap_and_emulate(vz)
        points = [(0, 0)]
        for _ in range(samples):
            mon.run(steps // samples)
            points.append((mon.machine.counters["instructions"], guest_dword(mon, "ticks")))
        curves[name] = points
    return curves


def plot_ticks(curves: Optional[dict] = None, ax=None):
    """Plot :func:`tick_curves` with matplotlib; returns the axes."""
    import matplotlib.pyplot as plt
    curves = tick_curves() if curves is None else curves
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    for name, pts in curves.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, drawstyle="steps-post")
    ax.set_xlabel("guest instructions retired")
    ax.set_ylabel("timer ticks counted by the guest")
    ax.set_title("Trap-and-emulate: the guest's clock after its first pushf; cli; popf")
    ax.legend()
    return ax


def log_text(mon: TrapAndEmulate, start: int = 0, count: int = 25, contains: str = "") -> str:
    """Lines of the monitor log (entries containing ``contains``), from ``start``."""
    entries = [e for e in mon.log if contains in str(e)]
    return "\n".join(str(e) for e in entries[start:start + count])


# ---- the other holes ------------------------------------------------------------------------
#: a guest kernel that loads its IDT and CR0 (both trap and are emulated), then reads them
#: back -- and its own CPL -- with instructions that never trap on plain x86 (Robin &
#: Irvine, USENIX Security 2000: sensitive but unprivileged)
HOLES_GUEST = """
    lgdt [my_gdtr]           ; privileged: traps, the monitor keeps the virtual GDTR
    lidt [my_idtr]           ; privileged: traps, the monitor keeps the virtual IDTR
    mov eax, 0x19            ; PE | TS | ET
    mov cr0, eax             ; privileged: traps, the monitor keeps the virtual CR0
    sgdt [seen_gdtr]         ; where is my GDT?
    sidt [seen_idtr]         ; where is my IDT?
    smsw ebx                 ; what is my CR0?
    push cs                  ; which ring am I in? (CS bits 1:0)
    pop ecx
    mov edx, cs
    hlt
my_gdtr:   dw 0x3f
           dd 0x6000
my_idtr:   dw 0x7ff
           dd 0x5000
seen_gdtr: dw 0
           dd 0
seen_idtr: dw 0
           dd 0
"""

# instruction, what the guest kernel believes it should read, what a VMM loses when it
# reads something else
_HOLES = (
    ("SGDT", "the GDTR it loaded", "the guest finds the monitor's GDT, whose descriptors "
     "say ring 1 where it wrote ring 0: the monitor's tables and its ring compression show"),
    ("SIDT", "the IDTR it loaded", "the guest finds the monitor's own IDT: the monitor cannot "
     "hide (a guest can tell it is virtualized), and a kernel that reads its IDT back to "
     "patch it patches the wrong table"),
    ("SMSW", "the CR0 it wrote", "CR0 bits the monitor keeps for itself (TS, MP...) leak "
     "and the guest's own are lost: lazy FPU switching in the guest goes wrong"),
    ("PUSH CS", "RPL 0: it runs in ring 0", "ring compression shows: the kernel reads "
     "ring 1; code that picks a path by CPL (a kernel that checks where it came from) "
     "takes the wrong one"),
    ("MOV from CS", "RPL 0: it runs in ring 0", "the same, through a register"),
)


def other_holes() -> list:
    """:data:`HOLES_GUEST` under trap-and-emulate on plain x86 and on the virtualizable
    x86; one row per instruction: ``instruction``, ``expected`` (what the guest kernel
    believes, as a value), ``plain`` and ``virtualizable`` (what it read), ``traps``
    (the monitor's traps in the two runs), ``expects`` and ``breaks`` in words."""
    prog = assemble(HOLES_GUEST, origin=0x1000)
    runs = {}
    for vz in (False, True):
        mon = TrapAndEmulate(program=prog, virtualizable=vz)
        ev = mon.run(1000)
        if ev.kind != "halt":
            raise RuntimeError(f"the holes guest stopped on {ev}, not on its HLT")
        m = mon.machine
        def table_register(label):
            a = prog.labels[label]
            raw = bytes(m.memory[a:a + 6])
            return int.from_bytes(raw[2:6], "little"), int.from_bytes(raw[:2], "little")
        runs[vz] = {"SGDT": table_register("seen_gdtr"), "SIDT": table_register("seen_idtr"),
                    "SMSW": int(m.cpu.ebx), "PUSH CS": int(m.cpu.ecx) & 0xFFFF,
                    "MOV from CS": int(m.cpu.edx) & 0xFFFF, "traps": mon.stats["traps"],
                    "code": int(m.cpu.cs)}
    code0 = runs[False]["code"] & ~3                  # the guest's code selector, RPL 0
    expected = {"SGDT": (0x6000, 0x3F), "SIDT": (0x5000, 0x7FF), "SMSW": 0x19,
                "PUSH CS": code0, "MOV from CS": code0}
    return [dict(instruction=name, expected=expected[name], plain=runs[False][name],
                 virtualizable=runs[True][name], traps=(runs[False]["traps"], runs[True]["traps"]),
                 expects=expects, breaks=breaks)
            for name, expects, breaks in _HOLES]


def _show(v) -> str:
    if isinstance(v, tuple):
        return f"base {v[0]:#x}, limit {v[1]:#x}"
    return f"{v:#x}"


def holes_html(rows: list) -> str:
    """:func:`other_holes` as an HTML table: a red cell where the guest read something
    other than what it believes."""
    def cell(v, want):
        bad = v != want
        return (f'<td style="color:{"#b3261e" if bad else "#1b7f3b"}">{html.escape(_show(v))}'
                f'{" &#10007;" if bad else " &#10003;"}</td>')
    head = ("<tr><th>instruction</th><th>the guest kernel believes</th><th>plain x86 "
            "(no trap)</th><th>virtualizable (traps, emulated)</th><th>what it breaks for a "
            "VMM</th></tr>")
    body = "".join(
        f"<tr><td><code>{r['instruction']}</code></td><td>{html.escape(r['expects'])}: "
        f"{html.escape(_show(r['expected']))}</td>{cell(r['plain'], r['expected'])}"
        f"{cell(r['virtualizable'], r['expected'])}<td>{html.escape(r['breaks'])}</td></tr>"
        for r in rows)
    return _HTML(f'<table class="hvsim-l02-holes">{head}{body}</table>')


# ---- the exercise ---------------------------------------------------------------------------
def freeze_facts(PERIOD: int, WORK: int, steps: int = 40_000) -> dict:
    """What the monitor's log says about the freeze, for a guest with these constants:
    ``first_cli`` (the time stamp of the first CLI the monitor emulates), ``injected``
    (timer ticks injected into the guest before it), ``pending_after`` (ticks that arrived
    after it and stayed pending or were coalesced) and ``ticks`` (the kernel's counter at
    the end of the run)."""
    mon = run_guest(False, steps=steps, PERIOD=PERIOD, WORK=WORK)
    log = list(mon.log)
    first = next(e for e in log if e.insn is not None and e.insn.mnemonic == "cli")
    return {"first_cli": first.tsc,
            "injected": sum(1 for e in log if e.what == "injected" and e.tsc <= first.tsc),
            "pending_after": sum(1 for e in log if e.what == "tick" and e.tsc > first.tsc),
            "ticks": guest_dword(mon, "ticks", PERIOD=PERIOD, WORK=WORK)}


def _freeze_point(p: dict) -> int:
    return freeze_facts(p["PERIOD"], p["WORK"])["ticks"]


def _solution(p: dict, answer) -> str:
    f = freeze_facts(p["PERIOD"], p["WORK"])
    args = f"PERIOD={p['PERIOD']}, WORK={p['WORK']}"
    return (f"Every timer tick the monitor injects into the guest before its first `cli` is "
            f"counted by the kernel's tick handler. That `cli` (in `sys_ticks`) traps, at "
            f"time stamp {f['first_cli']}, and the monitor sets the virtual IF to 0; the "
            f"`popf` that follows runs natively at CPL 1 > IOPL 0, where it silently keeps IF "
            f"(SDM Vol. 2B, POPF), so the monitor never sets the virtual IF back. Before time "
            f"{f['first_cli']} the monitor injected {f['injected']} ticks; the "
            f"{f['pending_after']} that came after stayed pending or were coalesced. So the "
            f"counter freezes at **{answer}**.\n\nCheck it: `from hvsim.lessons.l02_hole "
            f"import freeze_facts; freeze_facts({args})`, or read the monitor's log yourself: "
            f"`from hvsim.lessons.l02_hole import run_guest, log_text; "
            f"print(log_text(run_guest(False, 40_000, {args}), contains='INT 0x20', "
            f"count=100))`.")


exercise = Exercise(
    "when the clock freezes", seed=2,
    make=lambda rng: {"PERIOD": rng.choice(range(100, 325, 25)),
                      "WORK": rng.choice(range(200, 850, 50))},
    question=("The teaching kernel's timer period is **{PERIOD}** instructions and the user "
              "program loops **{WORK}** times between two SYS_TICKS calls. Under the "
              "trap-and-emulate monitor on plain x86, at what value does the kernel's "
              "`ticks` counter freeze for ever?"),
    answer=_freeze_point,
    solution=_solution,
)
