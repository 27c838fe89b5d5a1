"""Rings: the protection machinery of IA-32 protected mode (Python face; kernels are jitted).

Why a hypervisor cares
----------------------
A classic VMM runs the guest kernel *deprivileged* (in ring 1 or 3) and relies on every
sensitive instruction trapping to it (Popek & Goldberg's Theorem 1). This package is the
hardware those traps come from: who may load which segment, which gate an ``INT n`` may
use, what happens to the stack when the CPU enters ring 0, and which instructions quietly
give a different answer in a different ring instead of trapping.

The pieces (SDM Vol. 3A chapters 3, 5, 6, 7)
--------------------------------------------
* **Selectors and descriptors** (``descriptors``): a selector names an 8-byte descriptor
  in the GDT or the LDT; its RPL (bits 1:0) says on whose behalf it is used. A
  descriptor gives base, limit, type and DPL, the privilege needed to use it.
* **Segment registers** (``segments``): ``MOV DS, ax`` checks max(CPL, RPL) <= DPL and
  copies the descriptor into a hidden cache; every later access is checked against
  that cache only (limit, writable?, readable?). ``SS`` must be exactly at CPL.
* **Gates and event delivery** (``interrupts``): an exception, an IRQ or ``INT n`` goes
  through an IDT gate to a code segment. Entering a more privileged ring switches to the
  stack that the TSS holds for that ring, and the old SS:ESP is pushed there, above
  EFLAGS, CS, EIP (and an error code). That is the *cost* of a system call or a trap
  on this CPU, and the reason a VMM must own the TSS and the IDT.
  ``INT n`` additionally needs gate DPL >= CPL: ring 3 cannot use a DPL-0 gate, it gets
  #GP(n*8+2) instead.
* **Far transfers** (``transfers``): far ``JMP``/``CALL`` to code segments and through
  call gates (a call gate may copy parameters to the inner stack), far ``RET`` and
  ``IRET`` back out. ``IRET`` silently refuses to change IOPL unless at CPL 0, and IF
  unless CPL <= IOPL -- sensitive, but no trap: a deprivileged kernel cannot tell.
* **Probes and system registers** (``sysinsn``): ``LAR``, ``LSL``, ``VERR``, ``VERW``
  answer in ZF and their answer depends on CPL/RPL (Robin & Irvine's list of
  non-virtualizable instructions); ``LTR``/``LLDT`` load TR/LDTR; ``io_permitted`` is
  the IOPL + TSS I/O bitmap check of ``IN``/``OUT``.

Not modelled (each raises the documented #GP instead): hardware task switching (task
gates, TSS targets, IRET with NT=1), 16-bit gates and TSSs, virtual-8086 mode.

This module also holds pure-Python helpers to *build* tables for lessons and tests,
and to display them:

>>> hex(make_descriptor(0, 0xFFFFF, 0xB, 1, 0, 1, 1, 1))     # flat 32-bit ring-0 code
'0xcf9b000000ffff'
>>> d = decode_descriptor(make_descriptor(0, 0xFFFFF, 0x3, 1, 3, 1, 1, 1))
>>> d.kind, d.dpl, hex(d.limit)
('data', 3, '0xffffffff')
>>> g = decode_descriptor(make_gate("interrupt", 0x08, 0x1234, dpl=3))
>>> g.kind, g.selector, hex(g.offset), g.dpl
('32-bit interrupt gate', 8, '0x1234', 3)
>>> selector(5, rpl=3)
43
"""
from __future__ import annotations

import dataclasses
import struct

__all__ = ["make_descriptor", "make_gate", "make_tss", "decode_descriptor", "Descriptor",
           "selector", "decode_selector", "put_descriptors", "TSS32_SIZE"]

TSS32_SIZE = 104          # a 32-bit TSS without I/O bitmap (SDM Vol. 3A, Figure 7-2)

# type values of system descriptors (SDM Vol. 3A, Table 3-2), by the names lessons use
GATE_TYPES = {"task": 0x5, "interrupt": 0xE, "trap": 0xF, "call": 0xC}
_SYSTEM_NAMES = {
    0x1: "16-bit TSS (available)", 0x2: "LDT", 0x3: "16-bit TSS (busy)",
    0x4: "16-bit call gate", 0x5: "task gate", 0x6: "16-bit interrupt gate",
    0x7: "16-bit trap gate", 0x9: "32-bit TSS (available)", 0xB: "32-bit TSS (busy)",
    0xC: "32-bit call gate", 0xE: "32-bit interrupt gate", 0xF: "32-bit trap gate",
}
_GATES = (0x4, 0x5, 0x6, 0x7, 0xC, 0xE, 0xF)


def _check(name, value, bits):
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{name}={value:#x} does not fit in {bits} bits")


def selector(index: int, ti: int = 0, rpl: int = 0) -> int:
    """A segment selector: index << 3 | TI << 2 | RPL (SDM Vol. 3A, Figure 3-6)."""
    _check("index", index, 13)
    _check("ti", ti, 1)
    _check("rpl", rpl, 2)
    return (index << 3) | (ti << 2) | rpl


def decode_selector(sel: int) -> dict:
    """{'index', 'ti' ('GDT'/'LDT'), 'rpl', 'null'} of a 16-bit selector."""
    _check("selector", sel, 16)
    return {"index": sel >> 3, "ti": "LDT" if sel & 4 else "GDT", "rpl": sel & 3,
            "null": (sel & 0xFFFC) == 0}


def make_descriptor(base: int, limit: int, type: int, s: int, dpl: int, p: int,
                    db: int, g: int, avl: int = 0) -> int:
    """An 8-byte segment descriptor as an int (bytes 0-7 little endian).

    ``limit`` is the raw 20-bit field: with ``g=1`` it counts 4 KiB units, so
    ``limit=0xFFFFF, g=1`` spans 4 GiB. ``type`` is the 4-bit type (Table 3-1 for
    ``s=1`` code/data: 0x2 read/write data, 0xA execute/read code, +1 accessed,
    +4 expand-down / conforming; Table 3-2 for ``s=0`` system descriptors).
    """
    _check("base", base, 32)
    _check("limit", limit, 20)
    _check("type", type, 4)
    for name, v in (("s", s), ("p", p), ("db", db), ("g", g), ("avl", avl)):
        _check(name, v, 1)
    _check("dpl", dpl, 2)
    lo = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    hi = ((base >> 16) & 0xFF) | (type << 8) | (s << 12) | (dpl << 13) | (p << 15) \
        | (limit & 0xF0000) | (avl << 20) | (db << 22) | (g << 23) | (base & 0xFF000000)
    return lo | (hi << 32)


def make_gate(kind, selector: int, offset: int, dpl: int, param_count: int = 0,
              present: int = 1) -> int:
    """A gate descriptor as an int. ``kind``: 'interrupt', 'trap', 'call', 'task' (or a
    numeric system type). ``param_count`` (call gates): dwords copied to the new stack."""
    t = GATE_TYPES[kind] if isinstance(kind, str) else int(kind)
    if t not in _GATES:
        raise ValueError(f"type {t:#x} is not a gate")
    _check("selector", selector, 16)
    _check("offset", offset, 32)
    _check("dpl", dpl, 2)
    _check("param_count", param_count, 5)
    _check("present", present, 1)
    lo = (offset & 0xFFFF) | (selector << 16)
    hi = (offset & 0xFFFF0000) | (present << 15) | (dpl << 13) | (t << 8) | param_count
    return lo | (hi << 32)


def make_tss(esp0: int, ss0: int, esp1: int = 0, ss1: int = 0, esp2: int = 0, ss2: int = 0,
             iomap_base: int = TSS32_SIZE, io_bitmap: bytes | None = None) -> bytes:
    """A 32-bit TSS (SDM Vol. 3A, Figure 7-2) with the fields a stack switch reads.

    ESPn at 4+8n, SSn at 8+8n, the I/O map base at 102. With ``io_bitmap`` (one bit per
    port, 1 = trap), the bitmap is placed at ``iomap_base`` and followed by the 0xFF byte
    the SDM asks for (19.5.2); the descriptor's limit must then cover it:
    ``len(result) - 1``. Without it, the base points at or past the end: no port is
    allowed when CPL > IOPL."""
    for name, v in (("esp0", esp0), ("esp1", esp1), ("esp2", esp2)):
        _check(name, v, 32)
    for name, v in (("ss0", ss0), ("ss1", ss1), ("ss2", ss2), ("iomap_base", iomap_base)):
        _check(name, v, 16)
    tss = bytearray(TSS32_SIZE)
    struct.pack_into("<IIIIII", tss, 4, esp0, ss0, esp1, ss1, esp2, ss2)
    struct.pack_into("<H", tss, 102, iomap_base)
    if io_bitmap is not None:
        if iomap_base < TSS32_SIZE:
            raise ValueError("the I/O bitmap must start at or after offset 104")
        tss.extend(bytes(iomap_base - TSS32_SIZE))
        tss.extend(io_bitmap)
        tss.append(0xFF)
    return bytes(tss)


@dataclasses.dataclass(frozen=True)
class Descriptor:
    """A decoded descriptor, for display. ``limit`` is in bytes (scaled by G)."""
    raw: int
    kind: str          # 'code', 'data', or the system type's name
    type: int
    s: int
    dpl: int
    p: int
    base: int = 0
    limit: int = 0
    db: int = 0
    g: int = 0
    avl: int = 0
    selector: int | None = None     # gates
    offset: int | None = None       # gates (not task gates)
    param_count: int | None = None  # call gates
    flags: tuple = ()               # 'accessed', 'writable', 'readable', 'conforming', ...

    def __str__(self):
        head = f"{self.kind} DPL={self.dpl}{'' if self.p else ' NOT PRESENT'}"
        if self.selector is not None:
            tail = f" -> {self.selector:#06x}:{self.offset or 0:#010x}"
            if self.param_count:
                tail += f" ({self.param_count} params)"
            return head + tail
        extra = " ".join(self.flags)
        return f"{head} base={self.base:#010x} limit={self.limit:#010x} {extra}".rstrip()


def decode_descriptor(raw: int) -> Descriptor:
    """Decode an 8-byte descriptor (int, as ``make_descriptor`` returns) for display."""
    _check("descriptor", raw, 64)
    lo, hi = raw & 0xFFFFFFFF, raw >> 32
    t = (hi >> 8) & 0xF
    s = (hi >> 12) & 1
    dpl = (hi >> 13) & 3
    p = (hi >> 15) & 1
    if s == 0 and t in _GATES:
        sel = lo >> 16
        off = None if t == 0x5 else (lo & 0xFFFF) | (hi & 0xFFFF0000)
        params = hi & 0x1F if t in (0x4, 0xC) else None
        return Descriptor(raw, _SYSTEM_NAMES[t], t, s, dpl, p, selector=sel, offset=off,
                          param_count=params)
    base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
    raw_limit = (lo & 0xFFFF) | (hi & 0xF0000)
    g = (hi >> 23) & 1
    limit = (raw_limit << 12) | 0xFFF if g else raw_limit
    flags = []
    if s:
        kind = "code" if t & 8 else "data"
        if t & 1:
            flags.append("accessed")
        if t & 8:
            flags += (["readable"] if t & 2 else ["execute-only"]) + \
                (["conforming"] if t & 4 else [])
        else:
            flags += (["writable"] if t & 2 else ["read-only"]) + \
                (["expand-down"] if t & 4 else [])
    else:
        kind = _SYSTEM_NAMES.get(t, f"reserved system type {t:#x}")
    return Descriptor(raw, kind, t, s, dpl, p, base=base, limit=limit,
                      db=(hi >> 22) & 1, g=g, avl=(hi >> 20) & 1, flags=tuple(flags))


def put_descriptors(memory, address: int, descriptors) -> int:
    """Write 8-byte descriptors (ints) at ``address`` in a numpy uint8 memory; returns
    the table limit to load into GDTR/IDTR/LDT descriptor (8*n - 1)."""
    descriptors = list(descriptors)
    for i, d in enumerate(descriptors):
        _check("descriptor", d, 64)
        memory[address + 8 * i: address + 8 * i + 8] = list(d.to_bytes(8, "little"))
    return 8 * len(descriptors) - 1
