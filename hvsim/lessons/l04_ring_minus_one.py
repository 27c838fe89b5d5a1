"""Lesson 04, "ring -1": the logic behind notebooks/04_ring_minus_one.ipynb (not jitted).

Hardware-assisted virtualization with Intel VT-x, on hvsim's VMX (hvsim/vtx) and its
KVM-shaped VMM (hvsim/monitors/kvm.py). Every table and curve here comes from a run:

1. :func:`tick_curves` runs lesson 02's teaching kernel under trap-and-emulate (its
   clock freezes) and under VT-x (it ticks): in VMX non-root operation the kernel runs in
   ring 0, where its POPF restores IF, and its timer ticks arrive as events the VMM
   injects (SDM Vol. 3C, 27.6);
2. :func:`exit_rows` counts the VM exits of that run by basic exit reason (SDM Vol. 3C,
   Appendix C) and says which ones KVM's kernel part handled and which went to user
   space (OLS 2007, "kvm: the Linux Virtual Machine Monitor", sec. 3);
3. the VM-execution controls flipped one at a time (:data:`FLIPS`, :func:`flip_runs`,
   :func:`flip_table`): HLT exiting, the exception bitmap, I/O bitmaps instead of
   unconditional I/O exiting (SDM Vol. 3C, 25.6.2-25.6.4); and CR3-load exiting before
   and after the guest turns paging on (:func:`cr3_phases`, SDM 26.1.3);
4. VM entries that fail (:data:`FAILURES`, :func:`failure_rows`): VMfailValid(7) for a
   control field, VMfailValid(8) for the host state, an exit with reason 33 and bit 31
   for the guest state (SDM Vol. 3C, 27.2, 27.3, 27.8), each explained in words by
   hvsim/vtx/checks.py;
5. SMSW, one of Robin & Irvine's sensitive unprivileged instructions (USENIX Security
   2000), answered from the CR0 read shadow without an exit (SDM Vol. 3C, 25.6.6, 26.3):
   :func:`smsw_demo`, beside the same guest under trap-and-emulate;
6. the cost of the counted exits on four CPU generations (hvsim.cost profiles):
   :func:`cost_runs`, :func:`tlb_counts`, :func:`exit_cost_rows`;
7. the two-dimensional walk of nested paging (:func:`hvsim.viz.walk_2d`);
8. :func:`exit_exercise`: how many VM exits does a small guest cause under given
   controls? The answer is computed by running it.
"""
from __future__ import annotations

import collections
import html
import random
from typing import Iterable, Optional

from hvsim import assemble, kernelhosts
from hvsim.arch import layout as L
from hvsim.arch import vmcs as V
from hvsim.arch import vmx as X
from hvsim.lessons import Exercise
from hvsim.lessons import l02_hole as l02
from hvsim.monitors import TrapAndEmulate, Vtx
from hvsim.monitors.kvm import VCPU, VM, KvmRun

__all__ = ["TECHNIQUES", "run_guest", "guest_dword", "tick_curves", "plot_ticks", "log_text",
           "EXIT_CAUSES", "exit_rows", "exit_table", "kvm_split", "hlt_exiting_off",
           "intercept_exceptions", "use_io_bitmaps", "FLIPS", "flip_runs", "flip_table",
           "consoles", "cr3_phases", "cr3_table", "FAILURES", "failed_entry", "failure_rows",
           "failure_table", "SMSW_GUEST", "smsw_demo", "smsw_table", "cost_runs", "tlb_counts",
           "exit_cost_rows", "exit_cost_table", "cost_table", "exit_exercise", "exercise_guest",
           "count_exits"]

#: the techniques :func:`run_guest` knows, by the name the plots use
TECHNIQUES = {"trap-and-emulate": "trap-and-emulate (guest kernel in ring 1)",
              "vt-x": "VT-x (guest kernel in non-root ring 0)"}
log_text = l02.log_text
cost_table = l02.cost_table
_ER = X.ExitReason


class _HTML(str):
    def _repr_html_(self):
        return str(self)


def _steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    return steps


def _vcpu_of(x) -> VCPU:
    """The VCPU of a Vtx monitor, or the VCPU itself."""
    if isinstance(x, Vtx):
        return x.kvm
    if isinstance(x, VCPU):
        return x
    raise TypeError(f"expected a Vtx monitor or a kvm VCPU, got {type(x).__name__}")


# ---- 1. the same kernel, two techniques -----------------------------------------------------
def run_guest(technique: str = "vt-x", steps: int = 50_000, **constants):
    """The teaching kernel (hvsim/guests) run ``steps`` steps under ``technique``:
    'trap-and-emulate' (lesson 02's monitor, plain x86: the kernel in ring 1) or 'vt-x'
    (the KVM-shaped VMM: the kernel in non-root ring 0). ``constants`` override the
    guest's ``equ`` values (PERIOD=..., WORK=...). Returns the monitor."""
    steps = _steps(steps)
    if technique == "trap-and-emulate":
        return l02.run_guest(False, steps, **constants)
    if technique == "vt-x":
        mon = kernelhosts.vtx(**constants)
        mon.run(steps)
        return mon
    raise ValueError(f"technique must be one of {', '.join(map(repr, TECHNIQUES))}, "
                     f"got {technique!r}")


def guest_dword(mon, label: str, **constants) -> int:
    """A dword of the teaching kernel's memory by label ('ticks', 'calls', 'rounds'...),
    under either technique (the kernel's code selector does not move a label)."""
    return l02.guest_dword(mon, label, **constants)


def tick_curves(steps: int = 60_000, samples: int = 60) -> dict:
    """{technique label: [(guest instructions retired, ticks)...]}: the guest's own tick
    counter sampled every steps/samples monitor steps, under both techniques."""
    steps = _steps(steps)
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= steps:
        raise ValueError(f"need 1 <= samples <= steps, got samples={samples!r}")
    curves = {}
    for technique, label in TECHNIQUES.items():
        if technique == "vt-x":
            mon = kernelhosts.vtx()
        else:
            mon = kernelhosts.trap_and_emulate()
        start = int(mon.machine.counters["instructions"])   # the VMM's bootstrap, if any
        points = [(0, 0)]
        for _ in range(samples):
            mon.run(steps // samples)
            points.append((int(mon.machine.counters["instructions"]) - start,
                           guest_dword(mon, "ticks")))
        curves[label] = points
    return curves


def plot_ticks(curves: Optional[dict] = None, ax=None):
    """Plot :func:`tick_curves` in lesson 02's style; returns the axes."""
    ax = l02.plot_ticks(tick_curves() if curves is None else curves, ax)
    ax.set_title("The same kernel: frozen under trap-and-emulate, ticking under VT-x")
    return ax


# ---- 2. exits by reason, and KVM's split -----------------------------------------------------
#: what makes each basic exit reason happen here: the control or rule (SDM Vol. 3C)
EXIT_CAUSES = {
    _ER.EXCEPTION_NMI: "the exception bitmap (25.6.3)",
    _ER.EXTERNAL_INTERRUPT: "pin-based 'external-interrupt exiting' (25.6.1): the host's "
                            "timer",
    _ER.TRIPLE_FAULT: "always (26.2)",
    _ER.INTERRUPT_WINDOW: "'interrupt-window exiting' (25.6.2), set by the VMM while a "
                          "tick waits for the guest's IF = 1",
    _ER.CPUID: "always (26.1.2)",
    _ER.HLT: "'HLT exiting' (25.6.2)",
    _ER.VMCALL: "always (26.1.2)",
    _ER.CR_ACCESS: "the CR0/CR4 guest/host masks, 'CR3-load/-store exiting' (26.1.3)",
    _ER.IO_INSTRUCTION: "'unconditional I/O exiting' or the I/O bitmaps (25.6.2, 25.6.4)",
}


def _reason(name: str) -> int:
    """The basic exit reason of a name the VMM counted (an ExitReason name, or the number
    itself for a reason hvsim has no name for)."""
    return int(_ER[name]) if name in _ER.__members__ else int(name)


def exit_rows(mon) -> list:
    """The VM exits of a run, one row per basic exit reason (in reason order): ``reason``
    (the SDM's number), ``name``, ``exits``, ``in_kernel`` (handled by the VMM's kernel
    part, the guest resumed at once), ``to_user`` (returned from KVM_RUN to user space),
    ``where`` and ``why`` (the control that makes it exit, :data:`EXIT_CAUSES`)."""
    vc = _vcpu_of(mon)
    rows = []
    for name, n in vc.exits.items():
        reason = _reason(name)
        k = vc.in_kernel.get(name, 0)
        where = "kernel" if k == n else "user space" if k == 0 else "both"
        rows.append(dict(reason=reason, name=name, exits=n, in_kernel=k, to_user=n - k,
                         where=where, why=EXIT_CAUSES.get(reason, "")))
    return sorted(rows, key=lambda r: r["reason"])


def _table(head: list, body: list, cls: str) -> _HTML:
    out = [f'<table class="{cls}"><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in head)
           + "</tr>"]
    for row in body:
        out.append("<tr>" + "".join(
            c if isinstance(c, _Cell) else f"<td>{html.escape(str(c))}</td>" for c in row)
            + "</tr>")
    out.append("</table>")
    return _HTML("".join(out))


class _Cell(str):
    """A ready-made <td>."""


def _td(text, colour: Optional[str] = None, bold: bool = False) -> _Cell:
    style = (f"color:{colour};" if colour else "") + ("font-weight:bold;" if bold else "")
    return _Cell(f'<td style="{style}">{html.escape(str(text))}</td>' if style
                 else f"<td>{html.escape(str(text))}</td>")


def _same_cell(same: Optional[bool]) -> _Cell:
    """A table's "guest state = native's" cell: yes, NO in red, or - without a native run."""
    return _td("-" if same is None else "yes" if same else "NO",
               None if same is not False else "#b3261e", same is False)


def exit_table(rows: list) -> _HTML:
    """:func:`exit_rows` as an HTML table; exits that reached user space in red."""
    body = [[r["reason"], r["name"], r["exits"],
             _td(r["where"] if r["where"] != "both" else
                 f"kernel {r['in_kernel']}, user space {r['to_user']}",
                 "#b3261e" if r["to_user"] else None), r["why"]] for r in rows]
    total = sum(r["exits"] for r in rows)
    body.append(["", _td("total", bold=True), _td(total, bold=True), "", ""])
    return _table(["reason", "name", "exits", "handled in", "exits because of (SDM Vol. 3C)"],
                  body, "hvsim-l04-exits")


def kvm_split(mon) -> dict:
    """{'exits', 'in_kernel', 'to_user', 'kvm_exits'}: how many exits the VMM's kernel
    part absorbed, how many returned to user space, and those by kvm_run exit name."""
    vc = _vcpu_of(mon)
    total = sum(vc.exits.values())
    kernel = sum(vc.in_kernel.values())
    return dict(exits=total, in_kernel=kernel, to_user=total - kernel,
                kvm_exits={f"KVM_EXIT_{k.upper()}": n for k, n in vc.to_user.items()})


# ---- 3. controls flipped ---------------------------------------------------------------------
def hlt_exiting_off(mon) -> None:
    """Clear 'HLT exiting' (primary processor-based control bit 7, SDM Vol. 3C, Table
    25-6): the guest's HLT then halts the logical processor in non-root operation, and
    the next host timer interrupt (an external-interrupt exit) wakes it."""
    v = _vcpu_of(mon).vmcs
    v["CPU_BASED_VM_EXEC_CONTROL"] &= ~X.CPU_HLT_EXITING


def intercept_exceptions(mon, vectors: Iterable[int] = (0,)) -> None:
    """Set the exception bitmap's bit for each vector (SDM Vol. 3C, 25.6.3): that
    exception, raised in the guest, exits (reason 0) instead of going through the guest's
    IDT; the VMM counts it and re-injects it (27.6), so the guest sees no difference."""
    vs = _ints("vectors", vectors, 0, 31)
    v = _vcpu_of(mon).vmcs
    for n in vs:
        v["EXCEPTION_BITMAP"] |= 1 << n


def _ints(name: str, values, lo: int, hi: int) -> list:
    if isinstance(values, (int, str)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a list of integers {lo}..{hi:#x}, got {values!r}")
    out = list(values)
    for x in out:
        if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi:
            raise ValueError(f"{name} must be integers {lo}..{hi:#x}, got {x!r}")
    return out


# I/O bitmaps (SDM Vol. 3C, 25.6.4): two 4 KiB pages, one bit per port; a set bit makes
# IN/OUT on that port exit (an access exits if any byte-port it touches has its bit set):
#
#   bitmap A (IO_BITMAP_A): ports 0000h-7FFFh    byte  port >> 3,           bit  port & 7
#   bitmap B (IO_BITMAP_B): ports 8000h-FFFFh    byte (port - 8000h) >> 3,  bit  port & 7
#
# The VMM keeps them in its host area: pages 2 (A) and 3 (B) (hvsim/monitors/kvm.py, VM).
IO_BITMAP_PAGES = (2, 3)


def use_io_bitmaps(mon, ports: Iterable[int] = (0x40, 0x41)) -> None:
    """Make only IN/OUT on ``ports`` exit: write the I/O bitmaps into the VMM's host area
    (A: ports 0000h-7FFFh, B: 8000h-FFFFh), point IO_BITMAP_A/B at them, set 'use I/O
    bitmaps' and clear 'unconditional I/O exiting' (which 'use I/O bitmaps' overrides,
    SDM Vol. 3C, 25.6.2). A port left out goes straight to the machine's device -- the
    console at E9h is the machine's own, so the guest's text lands there, unseen by the
    VMM (device pass-through)."""
    ports = _ints("ports", ports, 0, 0xFFFF)
    vc = _vcpu_of(mon)
    vm, m = vc.vm, vc.machine
    a, b = (vm.page(n) for n in IO_BITMAP_PAGES)
    bitmaps = bytearray(2 * 4096)              # A then B, as one 8 KiB string of bits
    for p in ports:
        bitmaps[p >> 3] |= 1 << (p & 7)
    m.write_physical(a, bytes(bitmaps[:4096]))
    m.write_physical(b, bytes(bitmaps[4096:]))
    v = vc.vmcs
    v["IO_BITMAP_A"], v["IO_BITMAP_B"] = a, b
    v["CPU_BASED_VM_EXEC_CONTROL"] = (v["CPU_BASED_VM_EXEC_CONTROL"]
                                      & ~X.CPU_UNCONDITIONAL_IO_EXITING) | X.CPU_USE_IO_BITMAPS


#: label -> a function of the vCPU that changes its controls (None: KVM's own controls)
FLIPS = {
    "KVM's controls": None,
    "HLT exiting off": hlt_exiting_off,
    "#DE in the exception bitmap": intercept_exceptions,
    "I/O bitmaps: timer ports only": use_io_bitmaps,
}


def flip_runs(steps: int = 50_000, flips: Optional[dict] = None) -> dict:
    """{label: Vtx monitor}: the teaching kernel run ``steps`` steps under VT-x once per
    entry of ``flips`` (default :data:`FLIPS`), the controls changed before the first
    VM entry."""
    steps = _steps(steps)
    flips = FLIPS if flips is None else flips
    if not isinstance(flips, dict) or not flips:
        raise TypeError("flips must be a non-empty dict {label: function of the vCPU or None}")
    runs = {}
    for label, flip in flips.items():
        if flip is not None and not callable(flip):
            raise TypeError(f"flips[{label!r}] must be a function of the vCPU, or None")
        mon = kernelhosts.vtx()
        if flip is not None:
            flip(mon.kvm)
        mon.run(steps)
        runs[label] = mon
    return runs


def consoles(mon) -> dict:
    """Where the guest's console text went: through the VMM's user-space device model,
    or straight to the machine's port E9h (when the I/O bitmaps let it through)."""
    vc = _vcpu_of(mon)
    return {"the VMM's device model": vc.console, "the machine's port E9h": vc.machine.console}


def flip_table(runs: dict) -> _HTML:
    """Exit counts by reason (rows) for each run of :func:`flip_runs` (columns); a count
    that differs from the first run's in bold red; the guest's ticks; where its console
    text went."""
    if not isinstance(runs, dict) or not runs:
        raise TypeError("runs must be a non-empty dict {label: Vtx monitor}, e.g. from flip_runs()")
    vcs = {label: _vcpu_of(mon) for label, mon in runs.items()}
    names = sorted({n for vc in vcs.values() for n in vc.exits}, key=_reason)
    first = next(iter(vcs.values()))
    body = []
    for name in names:
        row = [_reason(name), name]
        for vc in vcs.values():
            n = vc.exits.get(name, 0)
            row.append(_td(n, "#b3261e", True) if n != first.exits.get(name, 0) else n)
        body.append(row)
    body.append(["", _td("total", bold=True)] + [_td(sum(vc.exits.values()), bold=True)
                                                 for vc in vcs.values()])
    body.append(["", "guest ticks"] + [guest_dword(mon, "ticks") for mon in runs.values()])
    body.append(["", "console text in"] + [
        " and ".join(k for k, text in consoles(vc).items() if text) or "-" for vc in vcs.values()])
    return _table(["reason", "name"] + list(runs), body, "hvsim-l04-flips")


# CR3-load exiting: a guest that loads CR3 while its paging is off, turns paging on, and
# loads CR3 again; a VMCALL between the phases returns to user space, where the exits are
# read (SDM Vol. 3C, 26.1.3: MOV to CR3 exits if 'CR3-load exiting' is 1 and the value is
# not one of the first CR3_TARGET_COUNT target values).
_CR3_PD, _CR3_PT = 0x20000, 0x21000


def _cr3_guest(before: int, after: int) -> str:
    load = "    mov cr3, ebx\n"
    return (f"""
    mov ebx, {_CR3_PD:#x}          ; the guest's page directory (guest-physical)
""" + load * before + f"""
    vmcall                       ; phase 1 done
    mov dword [{_CR3_PD:#x}], {_CR3_PT | 3:#x}   ; PDE 0 -> the page table (P, RW)
    xor ecx, ecx
ident:                           ; identity-map the first MiB, 4 KiB pages
    mov eax, ecx
    shl eax, 12
    or eax, 3
    mov [{_CR3_PT:#x} + ecx*4], eax
    inc ecx
    cmp ecx, 256
    jne ident
    mov cr3, ebx
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax                 ; paging on (CR0.PG is the host's: this exits)
    vmcall                       ; phase 2 done
""" + load * after + """
    vmcall                       ; phase 3 done
""")


def cr3_phases(before: int = 4, after: int = 4) -> list:
    """Run a guest that loads CR3 ``before`` times with its paging off, turns paging on,
    then loads CR3 ``after`` times, under the KVM-shaped VMM. One row per phase:
    ``phase``, ``cr3_loads`` (MOV to CR3 executed), ``cr_exits`` (CR-access exits in
    the phase), ``cr3_load_exiting`` (the control at the end of the phase).

    The VM has EPT. While the guest's paging is off, the VMM keeps its own identity page
    table in the real CR3, so it must see every MOV to CR3 ('CR3-load exiting' on); once
    the guest turns paging on, the guest's CR3 is the real one and the VMM clears the
    control, as KVM does with EPT (hvsim/monitors/kvm.py, ``_cr_access``). Without EPT
    the real CR3 is always the VMM's shadow root and every load exits (lesson 05)."""
    for name, n in (("before", before), ("after", after)):
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 1000:
            raise ValueError(f"{name} must be an integer 0..1000, got {n!r}")
    vm = VM(memory=1 << 20, ept=True)
    vc = vm.create_vcpu()
    vc.load(assemble(_cr3_guest(before, after), origin=0x1000))
    rows, seen = [], 0
    for phase, loads in (("paging off", before), ("turning paging on", 1), ("paging on", after)):
        r = vc.run(100_000)
        if r.name != "hypercall":
            raise RuntimeError(f"the CR3 guest stopped on {r}, not on its VMCALL")
        cr = vc.exits.get("CR_ACCESS", 0)
        rows.append(dict(phase=phase, cr3_loads=loads, cr_exits=cr - seen,
                         cr3_load_exiting=bool(vc.vmcs["CPU_BASED_VM_EXEC_CONTROL"]
                                               & X.CPU_CR3_LOAD_EXITING)))
        seen = cr
    return rows


def cr3_table(rows: list) -> _HTML:
    """:func:`cr3_phases` as an HTML table."""
    return _table(["phase", "MOV to CR3 executed", "CR-access exits",
                   "'CR3-load exiting' after the phase"],
                  [[r["phase"], r["cr3_loads"], r["cr_exits"],
                    "on" if r["cr3_load_exiting"] else "off"] for r in rows], "hvsim-l04-cr3")


# ---- 4. failed VM entries ------------------------------------------------------------------
#: (field, value, what is broken): one broken field per area of the VMCS
FAILURES = (
    ("CR3_TARGET_COUNT", 5, "a VM-execution control field: at most 4 CR3-target values "
                            "(SDM Vol. 3C, 27.2.1.1)"),
    ("HOST_TR_SELECTOR", 0, "a host-state field: the host needs a TSS, TR must not be "
                            "0000H (27.2.3)"),
    ("GUEST_TR_AR_BYTES", 9 | L.AR_P, "a guest-state field: TR must be a busy TSS, type 3 "
                                      "or 11, not 9 (available) (27.3.1.2)"),
)
_AREA = {V.T_CONTROL: "control", V.T_EXIT_INFO: "exit information", V.T_GUEST: "guest state",
         V.T_HOST: "host state"}


def failed_entry(field: str, value: int) -> KvmRun:
    """Write ``value`` into VMCS ``field`` of a fresh vCPU (a one-instruction HLT guest)
    and try to enter it: what KVM_RUN returns."""
    vm = VM(memory=1 << 16)
    vc = vm.create_vcpu()
    vc.load(assemble("hlt\n", origin=0x1000))
    vc.vmcs[field] = value         # KeyError / ValueError for an unknown field or value
    return vc.run(1000)


def _how(reason: int) -> str:
    if reason & X.EXIT_REASON_ENTRY_FAILURE:
        basic = reason & 0xFFFF
        return (f"VM exit {basic} ({_ER(basic).name}) with bit 31 set: the host state is "
                f"loaded, as on an exit")
    try:
        name = X.VmInstructionError(reason).name
    except ValueError:
        name = "?"
    return f"VMfailValid({reason}): VM-instruction error {name}; VMLAUNCH falls through"


def failure_rows(cases=FAILURES) -> list:
    """One row per (field, value, why) case, each from a VM entry tried: ``field``,
    ``area`` (of the VMCS, from the field's encoding), ``value``, ``kvm_exit``,
    ``reason`` (fail_entry.hardware_entry_failure_reason), ``how`` and ``explanation``
    (hvsim's words for the check that failed)."""
    rows = []
    for case in cases:
        if not isinstance(case, (tuple, list)) or len(case) not in (2, 3):
            raise TypeError(f"each case is (field, value) or (field, value, why), got {case!r}")
        field, value = case[0], case[1]
        r = failed_entry(field, value)
        rows.append(dict(field=field, area=_AREA[V.type_of(V.FIELDS[field])], value=value,
                         kvm_exit=f"KVM_EXIT_{r.name.upper()}",
                         reason=r.fail_entry_reason, how=_how(r.fail_entry_reason)
                         if r.fail_entry_reason is not None else "entered",
                         explanation=r.fail_entry_explanation))
    return rows


def failure_table(rows: list) -> _HTML:
    """:func:`failure_rows` as an HTML table."""
    return _table(["field", "area", "value", "KVM_RUN returns", "hardware reason", "how it failed",
                   "hvsim explains"],
                  [[r["field"], r["area"], hex(r["value"]), r["kvm_exit"],
                    hex(r["reason"]) if r["reason"] is not None else "-", r["how"],
                    r["explanation"]] for r in rows], "hvsim-l04-fail")


# ---- 5. SMSW and the CR0 read shadow ---------------------------------------------------------
#: a guest kernel that sets CR0 (NE and TS) and reads it back twice: with SMSW (never
#: privileged: Robin & Irvine 2000) and with MOV from CR0 (privileged at CPL > 0)
SMSW_GUEST = """
    mov eax, 0x39                ; PE | TS | ET | NE
    mov cr0, eax
    smsw ebx                     ; the Robin-Irvine hole: no trap at any CPL
    mov ecx, cr0
    hlt
"""


def _smsw_vtx(src: str) -> dict:
    vm = VM(memory=1 << 16)
    vc = vm.create_vcpu()
    vc.load(assemble(src, origin=0x1000))
    r = vc.run(1000)
    if r.name != "hlt":
        raise RuntimeError(f"the SMSW guest stopped on {r} under VT-x, not on its HLT")
    regs, v = vc.regs, vc.vmcs
    return dict(smsw=regs["ebx"], mov_from_cr0=regs["ecx"], real_cr0=v["GUEST_CR0"],
                mask=v["CR0_GUEST_HOST_MASK"], shadow=v["CR0_READ_SHADOW"],
                exits=dict(vc.exits))


def _smsw_tae(src: str) -> dict:
    mon = TrapAndEmulate(program=assemble(src, origin=0x1000))
    ev = mon.run(1000)
    if ev.kind != "halt":
        raise RuntimeError(f"the SMSW guest stopped on {ev} under trap-and-emulate")
    cpu = mon.machine.cpu
    return dict(smsw=int(cpu.ebx), mov_from_cr0=int(cpu.ecx), real_cr0=int(cpu.cr0),
                virtual_cr0=int(mon.vcpu.cr0), traps=mon.stats["traps"])


def smsw_demo() -> dict:
    """:data:`SMSW_GUEST` under VT-x and under trap-and-emulate, and the same guest with
    its SMSW removed (to show that SMSW itself exits or traps in neither case):
    {'vt-x': {...}, 'trap-and-emulate': {...}} with the value SMSW gave the guest, the
    value MOV from CR0 gave it, the real CR0, and the exits (VT-x) or traps counted with
    and without the SMSW.

    Under VT-x the read of a host-owned bit (set in the CR0 guest/host mask) returns the
    read shadow's bit, for SMSW as for MOV from CR0, and neither exits (SDM Vol. 3C,
    25.6.6, 26.3). Under trap-and-emulate MOV from CR0 traps and is answered from the
    virtual CR0, but SMSW runs natively and reads the real one."""
    without = SMSW_GUEST.replace("    smsw ebx", "    ; (no smsw)")
    vtx, vtx0 = _smsw_vtx(SMSW_GUEST), _smsw_vtx(without)
    tae, tae0 = _smsw_tae(SMSW_GUEST), _smsw_tae(without)
    vtx["exits_without_smsw"] = vtx0["exits"]
    tae["traps_without_smsw"] = tae0["traps"]
    return {"vt-x": vtx, "trap-and-emulate": tae}


def smsw_table(demo: dict) -> _HTML:
    """:func:`smsw_demo` as an HTML table; an SMSW that disagrees with MOV from CR0 in red."""
    v, t = demo["vt-x"], demo["trap-and-emulate"]
    rows = []
    for label, d, n, n0 in (("VT-x", v, sum(v["exits"].values()),
                             sum(v["exits_without_smsw"].values())),
                            ("trap-and-emulate", t, t["traps"], t["traps_without_smsw"])):
        bad = d["smsw"] != d["mov_from_cr0"]
        rows.append([label, f"{d['mov_from_cr0']:#010x}",
                     _td(f"{d['smsw']:#010x}", "#b3261e" if bad else "#1b7f3b", bad),
                     f"{d['real_cr0']:#010x}", n, n0])
    return _table(["technique", "MOV from CR0 (the guest's CR0)", "SMSW gives",
                   "the real CR0", "exits / traps", "... without the SMSW"], rows,
                  "hvsim-l04-smsw")


# ---- 6. what the exits cost -----------------------------------------------------------------
def cost_runs(steps: int = 50_000) -> dict:
    """{label: monitor}: the teaching kernel for ``steps`` steps under trap-and-emulate on
    lesson 02's virtualizable x86 (correct, every sensitive instruction a trap), under
    VT-x with KVM's controls, the same without VPIDs (the TLB flushed at every exit and
    entry, as on VT-x before Nehalem), and under VT-x with I/O bitmaps trapping the timer
    ports only. The labels are split on two lines for the bar chart's axis."""
    steps = _steps(steps)
    io = kernelhosts.vtx()
    use_io_bitmaps(io)
    io.run(steps)
    flushing = kernelhosts.vtx(vpid=False)
    flushing.run(steps)
    return {"trap-and-emulate\nvirtualizable": l02.run_guest(True, steps),
            "VT-x": run_guest("vt-x", steps),
            "VT-x\nno VPID": flushing,
            "VT-x\nI/O bitmaps": io}


def tlb_counts(runs: dict) -> dict:
    """{label: {VM exits, TLB flushes, page walks}} of the VT-x runs of :func:`cost_runs`
    (labels on one line)."""
    return {label.replace("\n", " "): {"VM exits": mon.stats["vm_exits"],
                                       "TLB flushes": mon.machine.counters["tlb_flushes"],
                                       "page walks": mon.machine.counters["page_walks"]}
            for label, mon in runs.items() if label.startswith("VT-x")}


def exit_cost_rows(mon, profiles=None) -> list:
    """For each CPU profile (default: all of hvsim.cost's, oldest first), what the run's
    VM exits cost: ``profile``, ``cpu``, ``year``, ``per_exit`` (cycles per VM exit and
    entry), ``estimate`` (True unless the profile's figure is a measurement), ``source``,
    ``basis``, ``exits``, ``exit_cycles``, ``total`` (the whole run's cycles), ``share``."""
    from hvsim import cost
    if not hasattr(mon, "stats") or "vm_exits" not in mon.stats:
        raise TypeError("exit_cost_rows() takes a monitor whose stats count vm_exits "
                        "(a Vtx monitor)")
    rows = []
    for p in (cost.ALL if profiles is None else profiles):
        bd = cost.breakdown(mon, p)
        line = bd["vm_exit"]
        rows.append(dict(profile=bd.profile.name, cpu=bd.profile.cpu, year=bd.profile.year,
                         per_exit=line.cost.cycles, estimate=line.cost.estimate,
                         source=line.cost.source, basis=line.cost.basis, exits=line.count,
                         exit_cycles=line.cycles, total=bd.total,
                         share=line.cycles / bd.total if bd.total else 0.0))
    return rows


def exit_cost_table(rows: list) -> str:
    """:func:`exit_cost_rows` as text; an estimated cost is marked ``*``."""
    out = [f"{'profile':13} {'year':>4} {'cycles/exit':>12} {'exits':>6} {'exit cycles':>12} "
           f"{'share':>6}  source"]
    for r in rows:
        mark = "*" if r["estimate"] else " "
        out.append(f"{r['profile']:13} {r['year']:>4} {r['per_exit']:>11,}{mark} {r['exits']:>6} "
                   f"{r['exit_cycles']:>12,} {r['share']:>6.1%}  {r['source']}")
    out.append("* an estimate (see the profile's basis); no mark: a measurement")
    return "\n".join(out)


# ---- 8. the exercise: count the exits -------------------------------------------------------
# the snippets a seeded guest is made of: name -> assembly (each one instruction of
# interest, and what it needs)
SNIPPETS = {
    "cpuid": "    xor eax, eax\n    cpuid",
    "out_console": "    mov al, 0x2e\n    out 0xe9, al",
    "out_post": "    mov al, 0x01\n    out 0x80, al",
    "load_cr3": "    mov eax, 0x20000\n    mov cr3, eax",
    "store_cr3": "    mov eax, cr3",
    "read_cr0": "    mov eax, cr0",
    "smsw": "    smsw eax",
    "pushf_popf": "    pushf\n    popf",
}
IO_MODES = {"unconditional": "'unconditional I/O exiting' (KVM's setting here)",
            "bitmap 0x80": "I/O bitmaps with only port 80h's bit set"}


def exercise_guest(sequence) -> str:
    """The source of a guest that runs the snippets of :data:`SNIPPETS` named in
    ``sequence`` (a list of names, in order), then HLT."""
    if isinstance(sequence, (str, dict)) or not hasattr(sequence, "__iter__"):
        raise TypeError(f"sequence must be a list of snippet names, got {sequence!r}")
    sequence = list(sequence)
    if len(sequence) > 200:
        raise ValueError(f"at most 200 snippets, got {len(sequence)}")
    for name in sequence:
        if name not in SNIPPETS:
            raise ValueError(f"no snippet {name!r}; the snippets are {', '.join(SNIPPETS)}")
    return "\n".join([SNIPPETS[n] for n in sequence] + ["    hlt"]) + "\n"


def count_exits(sequence, io: str = "unconditional") -> collections.Counter:
    """Run :func:`exercise_guest` under the KVM-shaped VMM (its own controls, the guest's
    paging off; ``io``: a key of :data:`IO_MODES`) until its HLT reaches user space, as
    QEMU's loop around KVM_RUN would; the VM exits by reason name."""
    if io not in IO_MODES:
        raise ValueError(f"io must be one of {', '.join(map(repr, IO_MODES))}, got {io!r}")
    vm = VM(memory=1 << 20)
    vc = vm.create_vcpu()
    vc.load(assemble(exercise_guest(sequence), origin=0x1000))
    if io == "bitmap 0x80":
        use_io_bitmaps(vc, [0x80])
    for _ in range(1000):
        r = vc.run(100_000)
        if r.name == "hlt":
            return collections.Counter(vc.exits)
        if r.name != "io":
            raise RuntimeError(f"the exercise guest stopped on {r}")
    raise RuntimeError("the exercise guest did not reach its HLT")


def _exercise_params(rng: random.Random) -> dict:
    # two snippets from each half of the table (so that some exit and some do not, under
    # either I/O mode), one to four times each, shuffled
    names = list(SNIPPETS)
    half = len(names) // 2
    chosen = rng.sample(names[:half], 2) + rng.sample(names[half:], 2)
    sequence = [n for n in chosen for _ in range(rng.randrange(1, 5))]
    rng.shuffle(sequence)
    return {"sequence": sequence, "io": rng.choice(sorted(IO_MODES))}


def _exercise_answer(p: dict) -> int:
    return sum(count_exits(p["sequence"], p["io"]).values())


def _exercise_question(p: dict) -> str:
    return ("This guest runs in ring 0 of VMX non-root operation under the KVM-shaped VMM, "
            "with the VMM's controls for a guest whose paging is off: CR3-load and "
            "CR3-store exiting on, CR0.PG and CR0.NE owned by the host (CR0 guest/host "
            "mask), HLT exiting on, no exception bitmap; for port I/O: "
            f"**{IO_MODES[p['io']]}**. How many VM exits does it cause, the exit of its "
            "final HLT included?\n\n```nasm\n" + exercise_guest(p["sequence"]) + "```")


_RULES = {
    "cpuid": "CPUID exits unconditionally (SDM Vol. 3C, 26.1.2)",
    "out_console": "OUT exits under 'unconditional I/O exiting'; with I/O bitmaps only if "
                   "the port's bit is set (25.6.4) -- E9h's is not, and the byte goes "
                   "straight to the machine's console",
    "out_post": "port 80h exits under both I/O settings: its bit is set in the bitmap",
    "load_cr3": "MOV to CR3 exits: 'CR3-load exiting' is on and there is no CR3-target "
                "value (26.1.3)",
    "store_cr3": "MOV from CR3 exits: 'CR3-store exiting' is on (26.1.3)",
    "read_cr0": "MOV from CR0 never exits: the host-owned bits read from the read shadow "
                "(26.3)",
    "smsw": "SMSW never exits: like MOV from CR0 it reads the shadow's bits (26.3)",
    "pushf_popf": "PUSHF and POPF never exit: in non-root ring 0 they simply run",
}


def _exercise_solution(p: dict, answer) -> str:
    io = p["io"]
    halt = count_exits([], io)                 # the HLT alone
    seq = p["sequence"]
    lines = ["Count each instruction's exits, then add the HLT's. Run alone (between "
             "the start and the HLT), each snippet causes:"]
    total = sum(halt.values())
    for name in dict.fromkeys(seq):
        alone = count_exits([name], io) - halt
        k = sum(alone.values())
        n = seq.count(name)
        total += n * k
        reasons = ", ".join(f"{r} (reason {int(_ER[r])})" for r in alone) or "no exit"
        lines.append(f"* `{SNIPPETS[name].splitlines()[-1].strip()}` x {n}: {k} each -- "
                     f"{reasons}. {_RULES[name]}.")
    lines.append(f"* the final `hlt`: {sum(halt.values())} -- HLT exiting is on (reason 12); "
                 "with no timer programmed the VMM hands it to user space (KVM_EXIT_HLT).")
    lines.append(f"Total: **{answer}** (the snippets one by one add up to {total}). "
                 f"`from hvsim.lessons.l04_ring_minus_one import count_exits; "
                 f"count_exits({seq!r}, {io!r})` gives the same run's counts by reason.")
    return "\n".join(lines)


def exit_exercise(seed: int = 4) -> Exercise:
    """'How many VM exits does this guest cause with these controls?'"""
    return Exercise("VM exits under given controls", seed, make=_exercise_params,
                    question=_exercise_question,
                    answer=_exercise_answer, solution=_exercise_solution)
