"""What the stepper shows, as plain data, HTML and text (pure Python, not jitted).

Nothing here imports ipywidgets: :class:`hvsim.widgets.controller.StepperController`
calls these functions and the widget layer only copies the strings they return into
widgets that already exist. The HTML carries the hooks that a browser test looks for:
``data-reg="eax"`` on every register value (class ``hvsim-changed`` when it changed in
the last action), ``data-cpl`` on the ring indicator's ``<svg>``, ``data-ring`` and
``hvsim-lit`` on its rings, ``data-flag`` on every EFLAGS bit.

The disassembly window is decoded from guest memory around EIP. Decoding *forward*
from EIP is exact; decoding *backward* is not (x86 instructions have no fixed length,
so the bytes before EIP can be cut into instructions in several ways, and zero
padding decodes as ``add byte ptr [eax], al``). So :func:`disassembly_window` decodes
the bytes before EIP only from a trusted start -- a statement or label of the loaded
programs (:class:`CodeMap`), an address where the CPU has been -- whose instructions
land exactly on EIP, and shows the programs' data and runs of zero bytes as data.
"""
from __future__ import annotations

import bisect
import dataclasses
import html
from typing import Iterable, Optional

import numpy as np

from hvsim.asm import disassemble_one
from hvsim.arch.flags import Flag, IOPL_MASK, IOPL_SHIFT
from hvsim.arch import layout as L
from hvsim.arch.vmcs import slot as vmcs_slot
from hvsim.mmu import walk

BACK_BYTES = 48          # how far before EIP the backward decoder looks
MAX_INSN = 15            # longest IA-32 instruction (SDM Vol. 2A, 2.3.11)
PAGE = 4096
CR0_PG = 1 << 31

GPRS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
SREGS = ("cs", "ss", "ds", "es", "fs", "gs")
CRS = ("cr0", "cr2", "cr3")
REGISTERS = GPRS + ("eip", "eflags") + SREGS + CRS


# ---- registers ---------------------------------------------------------------------
def read_registers(m) -> dict:
    """The registers the stepper shows, as {name: int}."""
    cpu = m.cpu
    return {r: getattr(cpu, r) for r in REGISTERS}


def registers_html(regs: dict, changed: Iterable[str]) -> str:
    changed = set(changed)
    width = {r: 4 if r in SREGS else 8 for r in REGISTERS}

    def cell(r):
        cls = "hvsim-reg hvsim-changed" if r in changed else "hvsim-reg"
        style = ' style="background:#ffe08a;font-weight:bold"' if r in changed else ""
        return (f'<td style="padding:0 4px;color:#555">{r}</td>'
                f'<td><span data-reg="{r}" class="{cls}"{style}>{regs[r]:0{width[r]}x}</span></td>')

    rows = [GPRS[0:2], GPRS[2:4], GPRS[4:6], GPRS[6:8], ("eip", "eflags"), SREGS[0:2],
            SREGS[2:4], SREGS[4:6], CRS[0:2], CRS[2:3]]
    body = "".join("<tr>" + "".join(cell(r) for r in row) + "</tr>" for row in rows)
    return f'<table class="hvsim-regtable" style="font-family:monospace;border-collapse:collapse">{body}</table>'


def registers_text(regs: dict, changed: Iterable[str]) -> str:
    changed = set(changed)
    parts = []
    for r in REGISTERS:
        w = 4 if r in SREGS else 8
        parts.append(f"{r}={regs[r]:0{w}x}{'*' if r in changed else ''}")
    lines = [" ".join(parts[i:i + 4]) for i in range(0, len(parts), 4)]
    return "\n".join(lines)


# ---- the virtual CPU a software monitor keeps -------------------------------------------
VCPU_FIELDS = (("IF", "IF"), ("iopl", "IOPL"), ("pending", "pending"), ("idtr_base", "IDTR base"),
               ("idtr_limit", "IDTR limit"), ("cr0", "CR0"), ("cr2", "CR2"), ("cr3", "CR3"),
               ("cr4", "CR4"), ("timer_period", "timer period"), ("timer_vector", "timer vector"))


def read_vcpu(v) -> dict:
    """A :class:`hvsim.monitors.VirtualCPU`'s fields the stepper shows, as {field: value}."""
    return {f: getattr(v, f) for f, _ in VCPU_FIELDS}


def _vcpu_value(field: str, x) -> str:
    if field == "pending":
        return "none" if x is None else f"vector {x:#x}"
    if field in ("IF", "iopl", "timer_period"):
        return str(x)
    if field in ("idtr_limit", "timer_vector"):
        return f"{x:#x}"
    return f"{x:08x}"


def _vcpu_sentences(vals: dict, real_eflags: int) -> tuple:
    real_if, real_iopl = int(bool(real_eflags & int(Flag.IF))), (real_eflags & IOPL_MASK) >> IOPL_SHIFT
    if_text = ("virtual IF=1: the monitor injects virtual interrupts" if vals["IF"] else
               "virtual IF=0: the monitor holds virtual interrupts pending")
    return if_text, f"the real CPU (left) has IF={real_if} IOPL={real_iopl}"


def vcpu_html(vals: dict, changed: Iterable[str], real_eflags: int) -> str:
    """The monitor's virtual CPU: what the guest kernel believes the CPU holds."""
    changed = set(changed)
    rows = []
    for f, name in VCPU_FIELDS:
        hit = f in changed
        cls = "hvsim-vreg hvsim-changed" if hit else "hvsim-vreg"
        style = ' style="background:#ffe08a;font-weight:bold"' if hit else ""
        rows.append(f'<tr><td style="padding:0 4px;color:#555">{name}</td><td><span '
                    f'data-vcpu="{f}" class="{cls}"{style}>{_vcpu_value(f, vals[f])}</span></td></tr>')
    if_text, real_text = _vcpu_sentences(vals, real_eflags)
    return ('<div class="hvsim-vcpu-panel"><b>virtual CPU (the monitor\'s)</b>'
            '<table style="font-family:monospace;border-collapse:collapse">' + "".join(rows) +
            f'</table><div data-vcpu-text="if">{html.escape(if_text)}</div>'
            f'<div style="color:#7a8796">{html.escape(real_text)}</div></div>')


def vcpu_text(vals: dict, changed: Iterable[str], real_eflags: int) -> str:
    changed = set(changed)
    parts = [f"{name}={_vcpu_value(f, vals[f])}{'*' if f in changed else ''}" for f, name in VCPU_FIELDS]
    return ("virtual CPU (the monitor's): " + " ".join(parts[:3]) + "\n  " + " ".join(parts[3:])
            + "\n  " + "\n  ".join(_vcpu_sentences(vals, real_eflags)))


# ---- EFLAGS ------------------------------------------------------------------------
# the status and control bits shown, in the SDM's order (Vol. 1, Figure 3-8)
FLAG_BITS = ("CF", "PF", "AF", "ZF", "SF", "TF", "IF", "DF", "OF", "NT", "RF", "VM", "AC", "ID")


def flags_summary(eflags: int, cpl: int) -> dict:
    """The flags as {name: 0/1}, plus IOPL and the sentences that explain IF and IOPL."""
    bits = {f: int(bool(eflags & int(Flag[f]))) for f in FLAG_BITS}
    iopl = (eflags & IOPL_MASK) >> IOPL_SHIFT
    if_text = ("IF=1: maskable interrupts are taken" if bits["IF"]
               else "IF=0: maskable interrupts are held off")
    allowed = cpl <= iopl
    iopl_text = (f"IOPL={iopl}: CLI, STI, IN and OUT are allowed at CPL <= {iopl}; "
                 f"now CPL {cpl}, so they " + ("execute" if allowed else "raise #GP"))
    return dict(bits=bits, iopl=iopl, if_text=if_text, iopl_text=iopl_text)


def flags_html(eflags: int, cpl: int) -> str:
    s = flags_summary(eflags, cpl)
    spans = []
    for f, v in s["bits"].items():
        style = "font-weight:bold;color:#000" if v else "color:#aaa"
        cls = "hvsim-flag hvsim-set" if v else "hvsim-flag"
        spans.append(f'<span data-flag="{f.lower()}" class="{cls}" style="{style}">{f}={v}</span>')
    return (f'<div style="font-family:monospace">EFLAGS {eflags:08x}: {" ".join(spans)} '
            f'<span data-flag="iopl" class="hvsim-flag">IOPL={s["iopl"]}</span></div>'
            f'<div data-flag-text="if">{html.escape(s["if_text"])}</div>'
            f'<div data-flag-text="iopl">{html.escape(s["iopl_text"])}</div>')


def flags_text(eflags: int, cpl: int) -> str:
    s = flags_summary(eflags, cpl)
    on = " ".join(f for f, v in s["bits"].items() if v) or "-"
    return f"eflags={eflags:08x} [{on}] IOPL={s['iopl']}\n  {s['if_text']}\n  {s['iopl_text']}"


# ---- the ring indicator --------------------------------------------------------------
RING_NAMES = {0: "ring 0 (kernel)", 1: "ring 1", 2: "ring 2", 3: "ring 3 (user)"}
_RING_RADIUS = {3: 100, 2: 78, 1: 56, 0: 34}
_LIT = "#f29d38"
_UNLIT = ("#eef1f5", "#dde3ea")


VMX_MODES = (None, "root", "non-root")


def rings_svg(cpl: int, vmx: str | None = None) -> str:
    """Concentric rings 3 (outside) .. 0, the current privilege level lit.

    The circle in the middle is ring -1, VMX root operation (SDM Vol. 3C, 24.3), where a
    hardware hypervisor runs below its guest's ring 0. ``vmx``: None outside VMX
    operation (ring -1 dashed, unlit), 'root' (ring -1 lit: the hypervisor runs; the
    data-vmx attribute says so too) or 'non-root' (the guest's CPL lit, ring -1 drawn
    solid: a hypervisor is under it).
    """
    if vmx not in VMX_MODES:
        raise ValueError(f"vmx must be one of {VMX_MODES}, got {vmx!r}")
    cx = cy = 110
    root = vmx == "root"
    parts = [f'<svg data-cpl="{cpl}" data-vmx="{vmx or "off"}" class="hvsim-ringsvg" '
             f'xmlns="http://www.w3.org/2000/svg" '
             f'width="220" height="290" viewBox="0 0 220 290" role="img" '
             f'aria-label="current privilege level: ' +
             ("ring -1, VMX root operation" if root else f"ring {cpl}") + '">']
    for ring in (3, 2, 1, 0):
        lit = ring == cpl and not root
        fill = _LIT if lit else _UNLIT[ring % 2]
        cls = "hvsim-ring hvsim-lit" if lit else "hvsim-ring"
        parts.append(f'<circle data-ring="{ring}" class="{cls}" cx="{cx}" cy="{cy}" '
                     f'r="{_RING_RADIUS[ring]}" fill="{fill}" stroke="#7a8796" stroke-width="1.5"/>')
    for ring in (3, 2, 1, 0):
        y = cy - _RING_RADIUS[ring] + 15
        weight = "bold" if ring == cpl and not root else "normal"
        parts.append(f'<text x="{cx}" y="{y}" text-anchor="middle" font-size="12" '
                     f'font-family="sans-serif" font-weight="{weight}">{ring}</text>')
    if vmx is None:
        parts.append(f'<circle data-ring="-1" class="hvsim-ring hvsim-future" cx="{cx}" '
                     f'cy="{cy}" r="13" fill="white" stroke="#7a8796" stroke-dasharray="4 3" '
                     f'stroke-width="1.5"/>')
    else:
        cls = "hvsim-ring hvsim-lit" if root else "hvsim-ring"
        parts.append(f'<circle data-ring="-1" class="{cls}" cx="{cx}" cy="{cy}" r="13" '
                     f'fill="{_LIT if root else "white"}" stroke="#7a8796" stroke-width="1.5"/>')
    parts.append(f'<text x="{cx}" y="{cy + 4}" text-anchor="middle" font-size="12" '
                 f'font-family="sans-serif" fill="{"#222" if root else "#7a8796"}"'
                 f'{" font-weight=" + chr(34) + "bold" + chr(34) if root else ""}>-1</text>')
    # the legend goes under the rings, so the picture stays narrow beside the registers
    if root:
        legend = ["ring -1: VMX root operation", "the hypervisor runs (CPL 0)",
                  "below its guest's rings", "(Intel VT-x)"]
    elif vmx == "non-root":
        legend = [f"CPL = {cpl}: {RING_NAMES[cpl]}", "of a guest: VMX non-root,",
                  "a hypervisor in ring -1", "under it (Intel VT-x)"]
    else:
        legend = [f"CPL = {cpl}: {RING_NAMES[cpl]}", "dashed: ring -1, VMX root,",
                  "where a hardware hypervisor", "runs (lesson 04)"]
    for i, line in enumerate(legend):
        weight = "bold" if i == 0 else "normal"
        colour = "#222" if i == 0 else "#7a8796"
        parts.append(f'<text x="{cx}" y="{232 + 16 * i}" text-anchor="middle" font-size="12" '
                     f'font-family="sans-serif" font-weight="{weight}" fill="{colour}">'
                     f'{html.escape(line)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# ---- the trap log ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrapRecord:
    """One row of the trap log.

    ``step``: the stepper position after which it was seen (1 = the first step).
    ``eip``: the EIP of the instruction that caused it (the faulting instruction, the
    INT n, the instruction a trap followed), or, for an event no instruction caused (an
    external interrupt, a VM entry), the EIP where it was taken. ``return_eip``: the EIP
    the CPU pushed for a delivery through the guest IDT, where the handler's IRET
    resumes the guest; None when nothing was pushed (exits to the host or hypervisor,
    monitor log entries). ``handler``: who handled it, 'guest ring N (IDT)' or
    'host/monitor (ring 0)'. ``action``: what the host or monitor did, if anything.
    ``mnemonic``/``port``: the trapping instruction's mnemonic ('out') and, for IN/OUT,
    its port, when known (what a Run to next trap filter looks at).
    """
    step: int
    name: str
    vector: Optional[int]
    error_code: Optional[int]
    eip: int
    ring_from: int
    ring_to: Optional[int]
    handler: str
    action: str = ""
    return_eip: Optional[int] = None
    mnemonic: str = ""
    port: Optional[int] = None

    def text(self) -> str:
        err = "-" if self.error_code is None else f"{self.error_code:#x}"
        rings = f"ring {self.ring_from}" + ("" if self.ring_to is None else f"->{self.ring_to}")
        ret = "-" if self.return_eip is None else f"{self.return_eip:#010x}"
        s = (f"step {self.step:>6}  {self.name:28} err={err:6} eip={self.eip:#010x} "
             f"return={ret:10} {rings:10} handled by {self.handler}")
        return s + (f": {self.action}" if self.action else "")


def traplog_html(records, limit: int = 200) -> str:
    records = list(records)[-limit:]
    if not records:
        return '<div class="hvsim-traplog-empty" style="color:#888">trap log: no trap yet</div>'
    head = ("<tr><th>step</th><th>event</th><th>error code</th><th>instruction EIP</th>"
            "<th>return EIP</th><th>ring</th><th>handled by</th><th>action</th></tr>")
    rows = []
    for r in reversed(records):           # newest first: the box scrolls, the top shows
        err = "&ndash;" if r.error_code is None else f"{r.error_code:#x}"
        ret = "&ndash;" if r.return_eip is None else f"{r.return_eip:#010x}"
        rings = f"{r.ring_from}" + ("" if r.ring_to is None else f" &rarr; {r.ring_to}")
        vec = "" if r.vector is None else f' data-vector="{r.vector}"'
        rows.append(f'<tr class="hvsim-trap" data-step="{r.step}"{vec}><td>{r.step}</td>'
                    f"<td>{html.escape(r.name)}</td><td>{err}</td><td>{r.eip:#010x}</td>"
                    f"<td>{ret}</td><td>{rings}</td><td>{html.escape(r.handler)}</td>"
                    f"<td>{html.escape(r.action)}</td></tr>")
    return ('<div style="max-height:14em;overflow-y:auto"><table style="font-family:monospace">'
            + head + "".join(rows) + "</table></div>")


def console_html(text: str, limit: int = 4000) -> str:
    shown = text[-limit:]
    body = html.escape(shown) if shown else '<span style="color:#888">(no console output)</span>'
    return ('<pre class="hvsim-console-text" style="margin:0;max-height:10em;overflow-y:auto;'
            f'background:#f6f6f6;padding:4px">{body}</pre>')


# ---- the disassembly window -------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DisasmLine:
    """One line of the window: ``kind`` 'code' (an instruction), 'data' (bytes shown as
    db/dw/dd, never decoded), 'label' (a program's label; ``address`` None) or '' (a
    filler line; ``address`` None)."""
    address: Optional[int]
    hexbytes: str
    text: str
    current: bool = False
    breakpoint: bool = False
    kind: str = "code"

    def label(self) -> str:
        if self.kind == "label":
            return f"   {self.text}"
        if self.address is None:
            return self.text
        mark = "\u25ba" if self.current else " "      # a right-pointing pointer
        bp = "\u25cf" if self.breakpoint else " "     # a filled circle
        return f"{bp}{mark} {self.address:08x}  {self.hexbytes:<20} {self.text}"


_FILLER = DisasmLine(None, "", "", kind="")


class CodeMap:
    """What assembled programs say about memory: the address and size of every statement
    with bytes, which of them are data, and the labels. Only these, the addresses the
    CPU was seen at and the rows already decoded are trusted as instruction starts: the
    window never decodes from a guessed address before EIP."""

    def __init__(self, programs=()):
        items, labels = {}, {}
        for p in programs:
            data = dict(getattr(p, "data", ()))
            for addr, code, _line, text in p.listing:
                if code:
                    items[addr] = (addr + len(code), addr in data)
                else:                                   # a label statement: 'name:' first
                    name = text.split(":", 1)[0].strip()
                    if name and name not in labels.get(addr, ()):
                        labels.setdefault(addr, []).append(name)
        self.starts = sorted(items)
        self.items = items                    # start -> (end, is data)
        self.labels = {a: tuple(n) for a, n in labels.items()}
        self.label_addresses = sorted(self.labels)

    def item(self, addr: int):
        """(start, end, is data) of the statement holding ``addr``, or None."""
        k = bisect.bisect_right(self.starts, addr) - 1
        if k >= 0:
            start = self.starts[k]
            end, data = self.items[start]
            if addr < end:
                return start, end, data
        return None

    def starts_in(self, lo: int, hi: int) -> list:
        """Statement starts and labels in [lo, hi)."""
        out = []
        for seq in (self.starts, self.label_addresses):
            out += seq[bisect.bisect_left(seq, lo):bisect.bisect_left(seq, hi)]
        return out


NO_CODE_MAP = CodeMap()


def _translate(m, lin: int) -> Optional[int]:
    """Physical address of a linear one in the machine's memory, or None if unmapped /
    outside memory (a guest under EPT: through its tables, then EPT's)."""
    cpu = m.cpu
    pa = lin
    if cpu.cr0 & CR0_PG:
        st = m._st
        eptp = int(st[L.VMCS_CACHE + vmcs_slot("EPT_POINTER")]) if st[L.VMX_EPT] else None
        w = walk(m.memory, cpu.cr3, cpu.cr4, lin, eptp=eptp)
        if w.fault is not None or w.hpa is None:
            return None
        pa = w.hpa
    return pa if 0 <= pa < len(m.memory) else None


def read_code(m, lin: int, n: int) -> bytes:
    """Up to ``n`` bytes at linear ``lin``, stopping at the first unreadable page."""
    out = bytearray()
    mem = np.asarray(m.memory).view(np.ndarray)
    while len(out) < n and lin <= 0xFFFFFFFF:
        pa = _translate(m, lin)
        if pa is None:
            break
        take = min(n - len(out), PAGE - (lin % PAGE), len(mem) - pa)
        out += bytes(mem[pa:pa + take])
        lin += take
    return bytes(out)


def read_code_before(m, lin: int, n: int) -> bytes:
    """The readable bytes just before linear ``lin`` (at most ``n``; may be fewer)."""
    start = max(0, lin - n)
    got = b""
    # walk back page by page so that an unmapped page cuts the window, not the read
    while start < lin:
        chunk = read_code(m, start, lin - start)
        if len(chunk) == lin - start:
            got = chunk
            break
        start = (start // PAGE + 1) * PAGE
    return got


def _data_text(b: bytes, size: int) -> str:
    """Bytes shown as data: a string, dwords, words or bytes; ``size`` the whole item."""
    if size > len(b):                                  # cut by the window's read
        return f"db {', '.join(f'{x:#04x}' for x in b[:8])}, ... ({size} bytes)"
    if not any(b):
        return f"times {size} db 0" if size > 4 else {4: "dd 0", 2: "dw 0"}.get(size, "db 0")
    newline = b.endswith(b"\n")
    body = b[:-1] if newline else b
    if len(body) >= 3 and all(32 <= x < 127 and x != 34 for x in body):
        return f'db "{body.decode()}"' + (", 10" if newline else "")
    if size % 4 == 0 and size <= 16:
        return "dd " + ", ".join(f"{int.from_bytes(b[k:k + 4], 'little'):#x}" for k in range(0, size, 4))
    if size == 2:
        return f"dw {int.from_bytes(b, 'little'):#x}"
    more = ", ..." if size > 8 else ""
    return "db " + ", ".join(f"{x:#04x}" for x in b[:8]) + more


def _walk(buf: bytes, lo: int, start: int, stop: int, limit: int, cmap: CodeMap, known,
          eip: int, breakpoints, labels_first: bool = True) -> tuple:
    """Lines from ``start`` (a trusted instruction start) up to address ``stop`` or
    ``limit`` lines; ``buf`` holds the bytes from address ``lo``. Returns (lines, the
    address reached). Program data and runs of zero bytes that no program and no visit
    calls code are shown as data, not decoded."""
    lines = []
    a, hi = start, min(stop, lo + len(buf))
    while a < hi and len(lines) < limit:
        if labels_first or a != start:
            lines += [DisasmLine(None, "", f"{n}:", kind="label") for n in cmap.labels.get(a, ())]
        item = cmap.item(a)
        end = None
        if a != eip and a not in known:
            if item is not None and item[2]:
                end = item[1]
            elif item is None and buf[a - lo] == 0 and a + 1 < hi and buf[a + 1 - lo] == 0:
                end = a + 2                            # free memory, padding: not code
                while (end < hi and buf[end - lo] == 0 and end not in known and end != eip
                       and end not in cmap.labels and cmap.item(end) is None):
                    end += 1
        if end is not None:
            end = min(end, stop)
            shown = buf[a - lo:min(end, hi) - lo]
            if item is not None:
                text = _data_text(shown[:16], end - a)
            else:
                text = (f"times {end - a} db 0" if end < lo + len(buf)
                        else f"db 0, ... ({end - a}+ zero bytes)")
            lines.append(DisasmLine(a, shown[:6].hex(" ") + (" \u2026" if len(shown) > 6 else ""),
                                    text, False, a in breakpoints, "data"))
            a = end
            continue
        insn = disassemble_one(buf, a - lo, a)
        if a + insn.size > lo + len(buf):
            break                                      # cut short by the end of the bytes read
        lines.append(_line(insn, a == eip, breakpoints))
        a += insn.size
    return lines[:limit] if len(lines) > limit else lines, a


def disassembly_window(m, eip_lin: int, before: int, after: int, breakpoints=frozenset(),
                       known=frozenset(), cmap: CodeMap = NO_CODE_MAP) -> list:
    """``before + 1 + after`` lines around the instruction at linear ``eip_lin``.

    Before EIP: decoded forward from the earliest trusted start (a statement or label of
    ``cmap``, an address in ``known``) within BACK_BYTES that lands exactly on EIP; none
    such, no lines. From EIP on: decoded forward (exact), program data shown as data."""
    lines = []
    if before:
        back = read_code_before(m, eip_lin, BACK_BYTES)
        lo = eip_lin - len(back)
        code = back + read_code(m, eip_lin, MAX_INSN)
        starts = sorted(set(cmap.starts_in(lo, eip_lin))
                        | {a for a in range(lo, eip_lin) if a in known})
        for s in starts[:8]:
            prior, reached = _walk(code, lo, s, eip_lin, 4 * BACK_BYTES, cmap, known, eip_lin,
                                   breakpoints)
            if reached == eip_lin:
                lines = prior
                break
        lines += [DisasmLine(None, "", f"{n}:", kind="label") for n in cmap.labels.get(eip_lin, ())]
        lines = [_FILLER] * (before - len(lines)) + lines[-before:]
    code = read_code(m, eip_lin, (after + 1) * MAX_INSN + 32)
    if not code:
        lines.append(DisasmLine(eip_lin, "", f"(EIP {eip_lin:#x} is outside memory or unmapped)",
                                True, eip_lin in breakpoints))
        return lines + [_FILLER] * after
    rest, _ = _walk(code, eip_lin, eip_lin, eip_lin + len(code), after + 1, cmap, known, eip_lin,
                    breakpoints, labels_first=False)
    if not rest:                                       # EIP's own instruction is cut off
        rest = [DisasmLine(eip_lin, code.hex(" "), "(instruction runs past the end of memory)",
                           True, eip_lin in breakpoints)]
    return lines + rest + [_FILLER] * (after + 1 - len(rest))


def _line(insn, current, breakpoints) -> DisasmLine:
    text = str(insn) if not insn.bad else f"(bad)  db {insn.bytes[0]:#04x}"
    return DisasmLine(insn.address, insn.bytes.hex(" "), text, current, insn.address in breakpoints)
