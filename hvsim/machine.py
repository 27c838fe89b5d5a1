"""The Python face of the simulated machine (not jitted).

``Machine`` owns the five state arrays (hvsim/arch/layout.py), validates what a user
passes, calls the jitted run loop and wraps what comes back in readable objects::

    >>> from hvsim import Machine, assemble
    >>> m = Machine()
    >>> m.load(assemble("mov ecx, 10\\nagain: add eax, ecx\\nloop again\\nhlt"))
    >>> m.run().kind
    'halt'
    >>> m.cpu.eax
    55

A bare ``Machine()`` is what a boot loader would leave: 32-bit protected mode, flat
segments (CS = 0x08, data = 0x10, base 0, limit 4 GiB), ring 0, paging off, ESP at
the top of memory, interrupts disabled. With ``exceptions="host"`` (the default)
every exception (vectors 0-31) leaves ``run()`` as an ``exception`` event; with
``exceptions="guest"`` it is delivered through the guest's own IDT, as on a real PC.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional, Union

import numpy as np

from hvsim.arch import layout as L
from hvsim.arch import counters as C
from hvsim.cpu.blocks import F_BLK
from hvsim.cpu.decode import F_TAG
from hvsim.cpu.devices import (DEV_CONSOLE, DEV_TIMER_PERIOD, DEV_TIMER_VECTOR, CONSOLE_PORT,
                               TIMER_PORT)
from hvsim.arch.exits import (ExitKind, EXIT_BUDGET, EXIT_IO, EXIT_EXCEPTION, EXIT_INTERRUPT,
                             EXIT_BUS_ERROR, EXIT_INTERNAL_ERROR)
from hvsim.arch.flags import FIXED1, IOPL_SHIFT, Flag
from hvsim import engine
from hvsim.instruction import Instruction, from_exit_info
from hvsim.arch.cr import CR0_PE, CR0_ET, CR0_PG, CR0_WP
from hvsim.arch.dr import DR6_INIT, DR7_INIT
from hvsim.arch.pte import PTE_A, PTE_D
from hvsim.arch import vmx as _X
from hvsim.arch.ept import EPT_R, EPT_W, EPT_A, EPT_D, EPTP_AD
from hvsim.arch.vmcs import slot as _vmcs_slot
from hvsim.arch.vectors import vector_name

DEFAULT_MEMORY = 16 << 20
DEFAULT_TLB = (16, 4)          # 16 sets x 4 ways = 64 entries, the size of a P6-era data TLB
DEFAULT_TIMER_VECTOR = 0x20
DEFAULT_MAX_STEPS = 10_000_000
# A decode-cache row reached this often in fast stretches gets a translated block. A
# block costs 10-20 ms of LLVM time (measured on this project's 2-core machine), the
# time of 1-2 million interpreted instructions: 256 keeps short programs and the
# fuzzers interpreted and still catches every loop that runs long.
BLOCK_HOT = 256

# hidden-cache access rights of the flat segments a bare machine starts with
# (VMCS layout, SDM Vol. 3C Table 24-2): P=1, S=1, D/B=1, G=1
AR_FLAT_CODE = L.AR_P | L.AR_S | L.AR_DB | L.AR_G | 0xB    # execute/read, accessed
AR_FLAT_DATA = L.AR_P | L.AR_S | L.AR_DB | L.AR_G | 0x3    # read/write, accessed
BARE_CS = 0x08
BARE_DS = 0x10

_GPRS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
_SREGS = ("es", "cs", "ss", "ds", "fs", "gs")
_SOURCES = ("fault", "trap", "software", "external")
_LABELS = tuple(k.label for k in sorted(ExitKind))   # exit kind number -> Event.kind
# offsets in the exit-info block (hvsim/arch/layout.py), for Machine._event
_X_EIP, _X_CPL, _X_STEPS, _X_LEN, _X_INSN = (s - L.EXIT_INFO for s in (
    L.EXIT_EIP, L.EXIT_CPL, L.EXIT_STEPS, L.EXIT_LEN, L.EXIT_INSN))
_X_VECTOR, _X_ERROR, _X_SOURCE, _X_ADDR = (s - L.EXIT_INFO for s in (
    L.EXIT_VECTOR, L.EXIT_ERROR, L.EXIT_SOURCE, L.EXIT_ADDR))
_X_PORT, _X_SIZE, _X_DIR, _X_VALUE = (s - L.EXIT_INFO for s in (
    L.EXIT_PORT, L.EXIT_SIZE, L.EXIT_DIR, L.EXIT_VALUE))


_EPTP_SLOT = _vmcs_slot("EPT_POINTER")


def _set_ept_flags(raw, e, write):
    """EPT accessed flags on the entries of walk ``e``, dirty on its leaf for a write
    (SDM Vol. 3C 29.3.5; bits 8 and 9: byte 1 of each entry)."""
    last = len(e.entries) - 1
    for j, (_, addr, _) in enumerate(e.entries):
        raw[addr + 1] |= (EPT_A | (EPT_D if write and j == last else 0)) >> 8


class GuestMemoryError(ValueError):
    """A guest-memory access from the host that the guest's own access would fault on.

    ``kind``: 'page_fault' (``error_code`` is the #PF error code, SDM Vol. 3A 4.7, and
    ``address`` the linear address, what CR2 would hold) or 'bus_error' (``address`` is
    physical and outside memory, or a page table is). For a guest in VMX non-root
    operation with EPT also 'ept_violation' (``error_code`` is the exit qualification
    the processor would report, SDM Vol. 3C Table 28-7, and ``address`` the guest-
    physical address) or 'ept_misconfig' (``address`` guest-physical).
    """

    def __init__(self, kind: str, address: int, error_code: Optional[int], message: str):
        super().__init__(message)
        self.kind, self.address, self.error_code = kind, address, error_code

    @property
    def vector(self) -> Optional[int]:
        return 14 if self.kind == "page_fault" else None


class GuestMemory(np.ndarray):
    """Guest-physical memory as a numpy ``uint8`` array.

    Any write through it (or a view of it) drops the decoded-instruction cache, so
    the next instruction fetch sees the new bytes.
    """

    def __array_finalize__(self, obj):
        self._on_write = getattr(obj, "_on_write", None)

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        if self._on_write is not None:
            self._on_write()


@dataclasses.dataclass(slots=True)
class Event:
    """Why ``run()`` or ``step()`` stopped.

    kind: 'halt', 'exception', 'io', 'budget', 'shutdown', 'bus_error', 'breakpoint',
    'interrupt', 'internal_error' (a kernel of the machine did not complete: ``vector`` is
    its kernel-table entry, hvsim/cpu/table.py -- a bug in hvsim, never the guest's doing).
    For 'exception': ``vector``, ``error_code`` (None if the vector pushes none),
    ``source`` ('fault', 'trap', 'software'), ``address`` (#PF: the linear address, also
    in CR2). For 'io': ``port``, ``size`` (bytes), ``direction`` ('in'/'out'), ``value``
    (what OUT wrote); answer an IN with :meth:`reply`. ``eip`` is the instruction that
    caused the event (for 'budget', the next one to run; for an exception of source
    'trap' -- a #DB after an instruction -- the one after it, where the handler would
    return, as the SDM's trap class has it, Vol. 3A 6.5); ``length`` its size, so a
    monitor can skip it. ``insn``: the instruction that caused the exit, as the core
    decoded it (:class:`hvsim.instruction.Instruction`: mnemonic, operand size, registers,
    memory operand with its effective and linear address, immediate, length), for
    exceptions raised by an instruction, 'io' and 'halt'; None otherwise.
    """
    kind: str
    eip: int
    cpl: int
    steps: int
    vector: Optional[int] = None
    error_code: Optional[int] = None
    source: Optional[str] = None
    address: Optional[int] = None
    port: Optional[int] = None
    size: Optional[int] = None
    direction: Optional[str] = None
    value: Optional[int] = None
    length: int = 0
    insn: Optional[Instruction] = None
    _machine: Optional["Machine"] = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        """A readable name: '#GP (general protection)', 'INT 0x80', 'OUT 0x80', 'halt'..."""
        if self.vector is not None and self.kind in ("exception", "interrupt"):
            return vector_name(self.vector)
        if self.kind == "io":
            return f"{self.direction.upper()} {self.port:#x}"
        return self.kind

    def reply(self, value: int) -> None:
        """Complete an IN from an unclaimed port: the guest's AL, AX or EAX (by the
        access size) receives ``value``; the rest of EAX is kept."""
        if self.kind != "io" or self.direction != "in":
            raise ValueError(f"reply() answers an 'in' io event, not {self.name!r}")
        if self._machine is None:
            raise ValueError("this event is not attached to a machine")
        _check_int("value", value, 0, (1 << (8 * self.size)) - 1)
        cpu = self._machine.cpu
        if self.size < 4:
            mask = (1 << (8 * self.size)) - 1
            cpu.eax = (cpu.eax & ~mask & 0xFFFFFFFF) | value
        else:
            cpu.eax = value

    def __str__(self) -> str:
        s = f"{self.name} at eip={self.eip:#010x} (ring {self.cpl})"
        if self.kind == "exception" and self.error_code is not None:
            s += f" error_code={self.error_code:#x}"
        if self.address is not None and self.kind in ("exception", "bus_error"):
            s += f" address={self.address:#010x}"
        if self.kind == "io" and self.direction == "out":
            s += f" value={self.value:#x}"
        return s


# trace-record kinds (hvsim/rings/interrupts.py, hvsim/cpu/run.py): 2 delivered through
# the guest IDT, 3 a host exit, 4 a VM entry, 5 a VM exit (ring -1 is VMX root operation)
_TRACE_KINDS = {2: "delivered", 3: "exit", 4: "vm_entry", 5: "vm_exit"}


def exit_reason_name(reason: int) -> str:
    """'VM exit 10 (CPUID)': a basic exit reason in words (SDM Vol. 3C, Appendix C)."""
    from hvsim.arch.vmx import ExitReason
    try:
        return f"VM exit {reason} ({ExitReason(reason).name})"
    except ValueError:
        return f"VM exit {reason}"


@dataclasses.dataclass(frozen=True)
class TraceEntry:
    """One recorded event: delivered through the IDT (kind 'delivered'), a host exit
    ('exit'), a VM entry ('vm_entry') or a VM exit ('vm_exit'); ring -1 in ``cpl_from`` /
    ``cpl_to`` is VMX root operation.

    ``eip``: the instruction that caused the event (for a delivery: the faulting
    instruction, the INT n, the instruction a trap followed; an external interrupt: where
    it was taken; a VM exit: the guest RIP saved; a VM entry: where the guest starts).
    ``return_eip``: for a delivery, the EIP the CPU pushed (IRET resumes there); None for
    the other kinds, which push nothing."""
    kind: str
    vector: int
    error_code: Optional[int]
    eip: int
    cpl_from: int
    cpl_to: int
    tsc: int
    return_eip: Optional[int] = None

    @property
    def name(self) -> str:
        if self.kind == "delivered":
            return vector_name(self.vector)
        if self.kind == "vm_exit":
            return exit_reason_name(self.vector)
        if self.kind == "vm_entry":
            return "VM entry (VMLAUNCH)" if self.vector == 1 else "VM entry (VMRESUME)"
        return ExitKind(self.vector).label

    def __str__(self):
        ret = "" if self.return_eip is None else f" return={self.return_eip:#010x}"
        return (f"[{self.tsc:>8}] {self.kind:9} {self.name:28} eip={self.eip:#010x}{ret} "
                f"ring {self.cpl_from}->{self.cpl_to}")


def _check_int(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name}={value:#x} is outside {lo:#x}..{hi:#x}")
    return int(value)


class CPU:
    """Register view: ``m.cpu.eax``, ``m.cpu.eip``, ``m.cpu.cr3``, ``m.cpu.cs``, ``m.cpu.cpl``...

    Registers read and write the machine state directly. Writing a segment selector
    loads its hidden descriptor cache from the guest's GDT/LDT (as a ring-0 loader
    would, without the privilege checks of MOV Sreg); see :meth:`set_segment` to set a
    cache by hand.
    """

    def __init__(self, machine: "Machine"):
        object.__setattr__(self, "_m", machine)

    def __setattr__(self, name, value):
        setter = _CPU_SETTERS.get(name)       # a register: its property's setter, directly
        if setter is not None:
            setter(self, value)
            self._m.generation += 1
            return
        if not hasattr(type(self), name):
            raise AttributeError(f"the CPU has no register {name!r}")
        object.__setattr__(self, name, value)

    def _get(self, slot):
        return int(self._m._st[slot])

    def _set(self, slot, value, name="register value", top=0xFFFFFFFF):
        self._m._st[slot] = _check_int(name, value, 0, top)
        self._m._st[L.ATTN] = 1

    @property
    def cpl(self) -> int:
        """Current privilege level (CS.RPL)."""
        return self._get(L.CPL)

    @cpl.setter
    def cpl(self, ring: int) -> None:
        """Host shortcut for lessons: move to ``ring`` with flat segments of that DPL."""
        ring = _check_int("cpl", ring, 0, 3)
        st = self._m._st
        st[L.CPL] = ring
        for s, ar in ((L.SREG_CS, AR_FLAT_CODE), (L.SREG_SS, AR_FLAT_DATA)):
            st[L.SEG_SEL + s] = (st[L.SEG_SEL + s] & ~3) | ring
            st[L.SEG_AR + s] = (st[L.SEG_AR + s] & ~(3 << L.AR_DPL_SHIFT)) | (ring << L.AR_DPL_SHIFT)
        st[L.FETCH_LIN_PAGE] = -1
        self._m._update_flat()

    @property
    def iopl(self) -> int:
        return (self._get(L.EFLAGS) >> IOPL_SHIFT) & 3

    @property
    def flags(self) -> Flag:
        """EFLAGS as named bits (IOPL is :attr:`iopl`)."""
        return Flag(self._get(L.EFLAGS) & int(sum(Flag)))

    def set_segment(self, name: str, selector: int, base: int = 0, limit: int = 0xFFFFFFFF,
                    access_rights: Optional[int] = None) -> None:
        """Set a segment register's selector and hidden cache directly (host-side setup)."""
        s = _sreg_index(name)
        st = self._m._st
        st[L.SEG_SEL + s] = _check_int("selector", selector, 0, 0xFFFF)
        st[L.SEG_BASE + s] = _check_int("base", base, 0, 0xFFFFFFFF)
        st[L.SEG_LIMIT + s] = _check_int("limit", limit, 0, 0xFFFFFFFF)
        if access_rights is None:
            access_rights = AR_FLAT_CODE if s == L.SREG_CS else AR_FLAT_DATA
            access_rights |= (selector & 3) << L.AR_DPL_SHIFT
        st[L.SEG_AR + s] = _check_int("access_rights", access_rights, 0, 0x1FFFF)
        if s == L.SREG_CS:
            st[L.CPL] = selector & 3
        st[L.FETCH_LIN_PAGE] = -1
        self._m._update_flat()

    def segment(self, name: str) -> dict:
        """Selector and hidden cache of a segment register."""
        s = _sreg_index(name)
        st = self._m._st
        return dict(selector=int(st[L.SEG_SEL + s]), base=int(st[L.SEG_BASE + s]),
                    limit=int(st[L.SEG_LIMIT + s]), access_rights=int(st[L.SEG_AR + s]))

    def _load_selector(self, s: int, selector: int) -> None:
        from hvsim.rings import decode_descriptor
        selector = _check_int("selector", selector, 0, 0xFFFF)
        st = self._m._st
        if selector & ~3 == 0:
            if s in (L.SREG_CS, L.SREG_SS):
                raise ValueError(f"a null selector cannot be loaded into {_SREGS[s]}")
            st[L.SEG_SEL + s] = selector
            st[L.SEG_AR + s] = L.AR_UNUSABLE
            self._m._update_flat()
            return
        if selector & 4:
            base, limit, what = int(st[L.LDTR_BASE]), int(st[L.LDTR_LIMIT]), "LDT"
        else:
            base, limit, what = int(st[L.GDTR_BASE]), int(st[L.GDTR_LIMIT]), "GDT"
        index = selector & ~7
        if index + 7 > limit:
            raise ValueError(f"selector {selector:#x} is outside the {what} (limit {limit:#x}); "
                             f"load a {what} first, or use cpu.set_segment()")
        raw = self._m.read_linear(base + index, 8)
        d = decode_descriptor(int.from_bytes(raw, "little"))
        if not d.p:
            raise ValueError(f"descriptor {selector:#x} is not present")
        ar = _ar_of(d)
        st[L.SEG_SEL + s] = selector
        st[L.SEG_BASE + s] = d.base
        st[L.SEG_LIMIT + s] = d.limit
        st[L.SEG_AR + s] = ar
        if s == L.SREG_CS:
            st[L.CPL] = selector & 3
            st[L.FETCH_LIN_PAGE] = -1
        self._m._update_flat()

    def __repr__(self):
        regs = " ".join(f"{r}={getattr(self, r):08x}" for r in _GPRS)
        return f"<CPU {regs} eip={self.eip:08x} eflags={self.eflags:08x} cpl={self.cpl}>"


def _ar_of(d) -> int:
    """VMCS-layout access rights (SDM Vol. 3C, Table 24-2) of a decoded descriptor."""
    return (d.type | (d.s << 4) | (d.dpl << L.AR_DPL_SHIFT) | (d.p << 7) | (d.avl << 12)
            | (d.db << 14) | (d.g << 15))


def _sreg_index(name: str) -> int:
    try:
        return _SREGS.index(name.lower())
    except (ValueError, AttributeError):
        raise ValueError(f"unknown segment register {name!r}; expected one of {', '.join(_SREGS)}") from None


def _reg_property(slot, doc, name, top=0xFFFFFFFF):
    """A read/write register property; ``top`` is the register's largest value."""
    return property(lambda self: self._get(slot), lambda self, v: self._set(slot, v, name, top),
                    doc=doc)


for _i, _r in enumerate(_GPRS):
    setattr(CPU, _r, _reg_property(_i, f"{_r.upper()} (32-bit)", _r))
CPU.cr2 = _reg_property(L.CR2, "CR2", "cr2")
# debug registers (SDM Vol. 3A, 17.2); DR4/DR5 are only names for DR6/DR7 (or #UD)
for _n in (0, 1, 2, 3, 6, 7):
    setattr(CPU, f"dr{_n}", _reg_property(L.DR0 + _n, f"DR{_n}", f"dr{_n}"))
# the time-stamp counter is 64 bits wide; the model keeps it in a signed int64 slot
CPU.tsc = _reg_property(L.TSC, "TSC (64-bit; counts retired instructions)", "tsc", (1 << 63) - 1)


def _eip_set(self, v, _eip=L.EIP, _attn=L.ATTN, _halted=L.HALTED):
    st = self._m._st
    if type(v) is not int or not 0 <= v <= 0xFFFFFFFF:      # fast path: a plain int
        v = _check_int("eip", v, 0, 0xFFFFFFFF)
    st[_eip] = v
    st[_attn] = 1
    # the host moved EIP (load(), a monitor skipping an instruction): a CPU sitting in
    # HLT would otherwise stay asleep and never fetch there
    st[_halted] = 0


CPU.eip = property(lambda self: self._get(L.EIP), _eip_set,
                   doc="EIP; writing it from Python also wakes a CPU halted in HLT")


def _eflags_set(self, v):
    # bit 1 is reserved and always 1 (SDM Vol. 1, 3.4.3): OR it in *after* masking
    self._set(L.EFLAGS, (_check_int("eflags", v, 0, 0xFFFFFFFF) & 0x3F7FD7) | FIXED1, "eflags")
    self._m._update_flat()          # EFLAGS.AC turns alignment checking on or off


CPU.eflags = property(lambda self: self._get(L.EFLAGS), _eflags_set, doc="EFLAGS (bit 1 always reads 1)")


def _cr_property(slot, name):
    def setter(self, v):
        self._set(slot, v, name.lower())
        self._m._flush_translations()
        self._m._update_flat()      # CR0.AM turns alignment checking on or off
    return property(lambda self: self._get(slot), setter,
                    doc=f"{name}; writing it from Python flushes the TLB")


CPU.cr0 = _cr_property(L.CR0, "CR0")
CPU.cr3 = _cr_property(L.CR3, "CR3")
CPU.cr4 = _cr_property(L.CR4, "CR4")
for _s, _name in enumerate(_SREGS):
    setattr(CPU, _name, property(lambda self, s=_s: self._get(L.SEG_SEL + s),
                                 lambda self, v, s=_s: self._load_selector(s, v),
                                 doc=f"{_name.upper()} selector"))
# GDTR/IDTR: a 32-bit base and a 16-bit limit (SDM Vol. 3A, 2.4.1, Figure 2-6)
for _r, _slot, _top in (("gdtr_base", L.GDTR_BASE, 0xFFFFFFFF), ("gdtr_limit", L.GDTR_LIMIT, 0xFFFF),
                        ("idtr_base", L.IDTR_BASE, 0xFFFFFFFF), ("idtr_limit", L.IDTR_LIMIT, 0xFFFF)):
    setattr(CPU, _r, _reg_property(_slot, _r, _r, _top))
def _tr_set(self, selector):
    """Load TR with the core's own LTR (hvsim.rings.sysinsn.ltr, SDM Vol. 2A LTR): the
    selector must name a present, available 32-bit TSS in the GDT; the descriptor is
    cached in TR and marked busy in the GDT. What LTR would fault on is a ValueError."""
    from hvsim.rings.sysinsn import ltr
    selector = _check_int("tr selector", selector, 0, 0xFFFF)
    m = self._m
    st = m._st
    index = selector & ~7
    if selector & 4 or index == 0 or index + 7 > st[L.GDTR_LIMIT]:
        raise ValueError(f"TR selector {selector:#x} must name a GDT entry inside the GDT limit "
                         f"({int(st[L.GDTR_LIMIT]):#x})")
    ltr(m._raw_mem, st, m._tlb, m._pg, selector)
    if st[L.FAULT_PENDING] != 0:
        vector, error = int(st[L.FAULT_VECTOR]), int(st[L.FAULT_ERROR])
        st[L.FAULT_PENDING] = 0
        raise ValueError(f"GDT entry {selector:#x} is not a present available 32-bit TSS: "
                         f"LTR raises {vector_name(vector)} with error code {error:#x}")


CPU.tr = property(lambda self: self._get(L.TR_SEL), _tr_set,
                  doc="TR selector; writing it loads the TSS descriptor as LTR does")
CPU.ldtr = property(lambda self: self._get(L.LDTR_SEL), doc="LDTR selector (load it with LLDT)")
# every writable register, for CPU.__setattr__ (a monitor sets EIP on every exit it handles)
_CPU_SETTERS = {name: attr.fset for name, attr in vars(CPU).items()
                if isinstance(attr, property) and attr.fset is not None}


class Counters:
    """Named, read-only view of the event counters: ``m.counters["instructions"]``.

    Keys: the names in hvsim/arch/counters.py NAMES, ``ring0``..``ring3``
    (instructions per ring), ``exception_<n>`` and ``delivered_<n>`` per vector.
    ``exceptions`` and ``delivered`` give dicts {vector: count} of the non-zero ones.
    """

    def __init__(self, vec: np.ndarray):
        self._v = vec

    def __getitem__(self, key: str) -> int:
        if key in C.NAMES:
            return int(self._v[C.NAMES[key]])
        if key.startswith("ring") and key[4:] in ("0", "1", "2", "3"):
            return int(self._v[C.C_INSN_RING + int(key[4:])])
        for prefix, base, n in (("exception_", C.C_EXC, 32), ("delivered_", C.C_INT_VEC, 256)):
            if key.startswith(prefix):
                try:
                    v = int(key[len(prefix):], 0)
                except ValueError:
                    break
                if 0 <= v < n:
                    return int(self._v[base + v])
        raise KeyError(f"no counter named {key!r}; try one of: {', '.join(self.keys())}")

    def keys(self):
        return list(C.NAMES) + [f"ring{i}" for i in range(4)]

    def __iter__(self):
        return iter(self.keys())

    def __contains__(self, key):
        try:
            self[key]
            return True
        except KeyError:
            return False

    @property
    def by_ring(self) -> list:
        return [int(self._v[C.C_INSN_RING + i]) for i in range(4)]

    @property
    def exceptions(self) -> dict:
        return {v: int(self._v[C.C_EXC + v]) for v in range(32) if self._v[C.C_EXC + v]}

    @property
    def delivered(self) -> dict:
        return {v: int(self._v[C.C_INT_VEC + v]) for v in range(256) if self._v[C.C_INT_VEC + v]}

    @property
    def exits(self) -> dict:
        return {ExitKind(k).label: int(self._v[C.C_EXIT_KIND + k])
                for k in range(len(ExitKind)) if self._v[C.C_EXIT_KIND + k]}

    def to_dict(self, nonzero: bool = True) -> dict:
        d = {k: self[k] for k in self.keys()}
        d.update({f"exception_{v}": n for v, n in self.exceptions.items()})
        d.update({f"delivered_{v:#x}": n for v, n in self.delivered.items()})
        if nonzero:
            d = {k: v for k, v in d.items() if v}
        return d

    def __repr__(self):
        return "Counters(" + ", ".join(f"{k}={v}" for k, v in self.to_dict().items()) + ")"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The whole machine state at one instant (see Machine.snapshot / restore)."""
    mem: np.ndarray
    st: np.ndarray
    tlb: np.ndarray
    dc: np.ndarray
    pg: np.ndarray


class Machine:
    """One simulated IA-32 machine.

    Parameters
    ----------
    memory : bytes of guest-physical memory (multiple of 4096, 64 KiB .. 1 GiB).
    tlb : (sets, ways) of the TLB model (sets a power of two), or None for no TLB.
    timer : None (no timer), a period in retired instructions, or (period, vector).
    exceptions : "host" -- vectors 0-31 leave run() as 'exception' events (default);
                 "guest" -- they are delivered through the guest's IDT.
    decode_cache : False decodes every instruction afresh (for tests and comparisons).
    blocks : True (default) translates hot stretches of ordinary code into host code
             (hvsim/cpu/translate.py); False interprets every instruction; a number n
             translates a stretch once its entry has been reached n times (True: 256).
             Both give the same guest state, counters and events; blocks need the
             decode cache.
    """

    def __init__(self, memory: int = DEFAULT_MEMORY, tlb=DEFAULT_TLB, timer=None,
                 exceptions: str = "host", decode_cache: bool = True, blocks: Union[bool, int] = True):
        memory = _check_int("memory", memory, 1 << 16, 1 << 30)
        if memory % 4096:
            raise ValueError(f"memory={memory} is not a multiple of the 4096-byte page")
        if tlb is None:
            sets, ways, enabled = 1, 1, 0
        else:
            try:
                sets, ways = tlb
            except (TypeError, ValueError):
                raise TypeError(f"tlb must be (sets, ways) or None, got {tlb!r}") from None
            sets = _check_int("tlb sets", sets, 1, 1 << 16)
            ways = _check_int("tlb ways", ways, 1, 64)
            if sets & (sets - 1):
                raise ValueError(f"tlb sets={sets} is not a power of two")
            enabled = 1
        if exceptions not in ("host", "guest"):
            raise ValueError(f"exceptions must be 'host' or 'guest', got {exceptions!r}")
        self._mem = np.zeros(memory, np.uint8).view(GuestMemory)
        self._mem._on_write = self._flush_decoded
        self._st = np.zeros(L.ST_SIZE, np.int64)
        # the exit-info block, a view made once (the state array is never replaced)
        self._exit_info = self._st[L.EXIT_INFO:L.EXIT_INFO + L.EXIT_INFO_SIZE]
        self._tlb = np.zeros(sets * ways * L.TLB_FIELDS, np.int64)
        self._dc = np.zeros(L.DC_SHAPE, np.int64)
        self._pg = np.zeros(memory >> 12, np.int64)
        self._tlb_geometry = (sets, ways, enabled)
        self._decode_cache = bool(decode_cache)
        if blocks is True or blocks is False:
            hot = BLOCK_HOT if blocks else 0
        else:
            hot = _check_int("blocks", blocks, 1, 1 << 62)
        self._block_hot = hot if decode_cache else 0
        self._exceptions = exceptions
        self.cpu = CPU(self)
        self.breakpoints: set = set()
        # the assembled Programs loaded, newest last: what a disassembler may trust
        # about memory (where instructions start, which bytes are data, the labels)
        self.programs: list = []
        self._bp_written = None
        self._on_trace_full = None        # drains the instruction trace (set_instruction_trace)
        self._raw_mem = self._mem.view(np.ndarray)
        # a software monitor's shadow MMU (hvsim/mmu/shadow.py) while it shadows the
        # guest's page tables: read_linear / write_linear go through the guest's tables
        # then, not the real CR3's, and writes keep the shadows in step
        self.guest_mmu = None
        # bumped by everything that changes the machine from outside a kernel: runs,
        # restores, register and memory writes from Python -- a view of the machine (a
        # Stepper's controller) compares it with the value after its own last action
        self.generation = 0
        self._reset_state()
        if timer is not None:
            self.set_timer(timer)

    # ---- state -------------------------------------------------------------------------
    def _reset_state(self):
        self.generation += 1
        st = self._st
        st[:] = 0
        sets, ways, enabled = self._tlb_geometry
        st[L.CFG_MEM_SIZE] = len(self._mem)
        st[L.CFG_TLB_SETS] = sets
        st[L.CFG_TLB_WAYS] = ways
        st[L.CFG_TLB_ENABLED] = enabled
        st[L.CFG_DC_ENABLED] = 1 if self._decode_cache else 0
        st[L.CFG_BLOCK_HOT] = self._block_hot
        st[L.BLOCK_REQUEST] = -1
        st[L.KERNEL_REQUEST] = -1
        st[L.RESUME_ROW] = -1
        st[L.CFG_CONSOLE_PORT] = CONSOLE_PORT
        st[L.EFLAGS] = FIXED1
        st[L.CR0] = CR0_PE | CR0_ET
        st[L.ESP] = len(self._mem)
        for s in range(L.N_SREGS):
            st[L.SEG_SEL + s] = BARE_CS if s == L.SREG_CS else BARE_DS
            st[L.SEG_BASE + s] = 0
            st[L.SEG_LIMIT + s] = 0xFFFFFFFF
            st[L.SEG_AR + s] = AR_FLAT_CODE if s == L.SREG_CS else AR_FLAT_DATA
        st[L.LDTR_AR] = L.AR_UNUSABLE
        st[L.TR_AR] = L.AR_UNUSABLE
        st[L.IRQ_PENDING] = -1
        st[L.DELIVERING] = -1
        st[L.VMCS_PTR] = L.VMCS_PTR_NONE     # no current VMCS (SDM Vol. 3C, 24.11.1)
        st[L.FETCH_LIN_PAGE] = -1
        st[L.TIMER_VECTOR] = DEFAULT_TIMER_VECTOR
        st[L.FLAT] = 1
        st[L.DR6] = DR6_INIT            # SDM Vol. 3A, 10.1.1, Table 10-1
        st[L.DR7] = DR7_INIT
        if self._exceptions == "host":
            st[L.ROUTE:L.ROUTE + 32] = L.ROUTE_HOST
        st[L.PORTMAP + CONSOLE_PORT] = DEV_CONSOLE
        st[L.PORTMAP + TIMER_PORT] = DEV_TIMER_PERIOD
        st[L.PORTMAP + TIMER_PORT + 1] = DEV_TIMER_VECTOR
        self._tlb[:] = 0
        self._flush_decoded()
        self._pg[:] = 0
        self._bp_written = None

    def reset(self, clear_memory: bool = False) -> None:
        """Back to the bare-machine state (memory kept unless ``clear_memory``)."""
        if clear_memory:
            np.ndarray.__setitem__(self._mem, slice(None), 0)
        self._reset_state()

    def _flush_decoded(self):
        self.generation += 1              # (a write to guest memory from Python)
        self._dc[F_TAG, :] = -1

    def _flush_translations(self):
        self._tlb[:] = 0
        self._st[L.FETCH_LIN_PAGE] = -1

    def _update_flat(self):
        from hvsim.rings.segments import update_flat
        update_flat(self._st)

    @property
    def memory(self) -> GuestMemory:
        """Guest-physical memory (numpy uint8); writes are seen by the next fetch."""
        return self._mem

    @property
    def counters(self) -> Counters:
        return Counters(self._st[L.COUNTERS:L.COUNTERS + L.N_COUNTERS])

    @property
    def console(self) -> str:
        """Everything the guest wrote to the console port (0xE9), as text."""
        n = int(self._st[L.CONSOLE_LEN])
        n = min(n, L.CONSOLE_CAP)
        return bytes(self._st[L.CONSOLE_BUF:L.CONSOLE_BUF + n].astype(np.uint8)).decode("latin-1")

    @property
    def trace(self) -> list:
        """The most recent recorded events (oldest first), at most TRACE_CAP of them:
        deliveries through the guest's IDT and exits to the host (not 'budget' ends)."""
        return self.trace_since(0)

    @property
    def trace_head(self) -> int:
        """How many events the trace has recorded since reset (it keeps the last TRACE_CAP)."""
        return int(self._st[L.TRACE_HEAD])

    def trace_since(self, head: int) -> list:
        """The events recorded after the moment :attr:`trace_head` was ``head``, oldest
        first (only those still in the ring buffer: at most TRACE_CAP)."""
        st = self._st
        now = int(st[L.TRACE_HEAD])
        first = max(_check_int("head", head, 0, 1 << 62), now - L.TRACE_CAP)
        out = []
        for i in range(first, now):
            base = L.TRACE_BUF + (i % L.TRACE_CAP) * L.TRACE_FIELDS
            kind, vec, err, eip, cf, ct, tsc, extra = (int(x) for x in st[base:base + L.TRACE_FIELDS])
            name = _TRACE_KINDS.get(kind, "exit")
            out.append(TraceEntry(name, vec, None if err < 0 else err, eip, cf, ct, tsc,
                                  extra if name == "delivered" else None))
        return out

    # ---- configuration -------------------------------------------------------------------
    def route(self, vectors: Union[int, Iterable[int]], to: str) -> None:
        """Route exception/interrupt vectors to 'host' (exit from run) or 'guest' (IDT)."""
        if to not in ("host", "guest"):
            raise ValueError(f"route to 'host' or 'guest', not {to!r}")
        if isinstance(vectors, (int, np.integer)):
            vectors = [vectors]
        for v in vectors:
            v = _check_int("vector", v, 0, 255)
            self._st[L.ROUTE + v] = L.ROUTE_HOST if to == "host" else L.ROUTE_GUEST

    def routed_to_host(self) -> list:
        return [v for v in range(256) if self._st[L.ROUTE + v] == L.ROUTE_HOST]

    def set_timer(self, timer) -> None:
        """Start the interval timer: a period (instructions) or (period, vector); None stops it."""
        if timer is None:
            self._st[L.TIMER_PERIOD] = 0
            return
        if isinstance(timer, tuple):
            if len(timer) != 2:
                raise ValueError(f"timer must be a period or (period, vector), got {timer!r}")
            period, vector = timer
        else:
            period, vector = timer, DEFAULT_TIMER_VECTOR
        period = _check_int("timer period", period, 1, 0xFFFFFFFF)
        vector = _check_int("timer vector", vector, 32, 255)
        self._st[L.TIMER_PERIOD] = period
        self._st[L.TIMER_VECTOR] = vector
        self._st[L.TIMER_NEXT] = self._st[L.TSC] + period

    def claim_port(self, port: int, device: str) -> None:
        """Attach an in-core device ('console', 'timer', or 'none' for host exits) to a port."""
        port = _check_int("port", port, 0, 0xFFFF)
        ids = {"none": 0, "console": DEV_CONSOLE, "timer": DEV_TIMER_PERIOD}
        if device not in ids:
            raise ValueError(f"device must be one of {sorted(ids)}, got {device!r}")
        self._st[L.PORTMAP + port] = ids[device]

    @property
    def virtualizable(self) -> bool:
        """True: sensitive unprivileged instructions (POPF, PUSHF, SGDT...) trap above ring 0."""
        return bool(self._st[L.VIRTUALIZABLE])

    @virtualizable.setter
    def virtualizable(self, on: bool) -> None:
        self._st[L.VIRTUALIZABLE] = 1 if on else 0

    def interrupt(self, vector: int) -> None:
        """Raise an external interrupt on the line (taken when IF=1; wakes HLT)."""
        self._st[L.IRQ_PENDING] = _check_int("vector", vector, 32, 255)

    # ---- loading -------------------------------------------------------------------------
    def load(self, program, origin: Optional[int] = None, entry: Optional[int] = None) -> None:
        """Copy a program into memory and point EIP at its entry.

        ``program`` is a :class:`hvsim.asm.Program` (placed at its origin, EIP at its
        ``start`` label or origin) or raw bytes (``origin`` required).
        """
        if isinstance(program, (bytes, bytearray, memoryview, np.ndarray)):
            if origin is None:
                raise ValueError("loading raw bytes needs origin=")
            code = bytes(program)
            start = origin if entry is None else entry
        elif hasattr(program, "code") and hasattr(program, "origin"):
            code = bytes(program.code)
            origin = program.origin if origin is None else origin
            start = getattr(program, "entry", origin) if entry is None else entry
            start = start - program.origin + origin
        else:
            raise TypeError(f"load() takes a Program or bytes, got {type(program).__name__}")
        origin = _check_int("origin", origin, 0, 0xFFFFFFFF)
        if origin + len(code) > len(self._mem):
            raise ValueError(f"{len(code)} bytes at {origin:#x} do not fit in {len(self._mem):#x} bytes of memory")
        self._mem[origin:origin + len(code)] = np.frombuffer(code, np.uint8)
        self.cpu.eip = _check_int("entry", start, 0, 0xFFFFFFFF)
        end = origin + len(code)
        self.programs = [p for p in self.programs if p.origin + len(p.code) <= origin or p.origin >= end]
        if getattr(program, "origin", None) == origin and hasattr(program, "listing"):
            self.programs.append(program)

    # ---- guest memory for monitors: bulk, by linear address, through the guest's paging --
    def _translate_page(self, lin: int, write: bool, user: bool) -> int:
        """Physical address of linear ``lin`` for one access, as the CPU's page walk
        would give it (SDM Vol. 3A, 4.3 and 4.8): the accessed flag of both entries and,
        for a write, the dirty flag of the last one are set; a walk that fails raises
        the #PF the CPU would raise (or a bus error for a table outside memory).

        In VMX non-root operation with EPT the address returned is host-physical, and
        the rules are the core's (hvsim/mmu/ept.py, in its order): the guest's entries
        and the datum go through EPT, an access EPT refuses raises the EPT violation or
        misconfiguration the CPU would exit with, the guest's A/D-flag writes need EPT's
        W, and with EPTP bit 6 the EPT accessed and dirty flags are set."""
        gm = self.guest_mmu
        if gm is not None:
            from hvsim.mmu.shadow import GuestPageFault, ShadowError
            try:
                return gm.translate(lin, write, user)
            except GuestPageFault as e:
                raise GuestMemoryError("page_fault", lin, e.error_code, str(e)) from None
            except ShadowError as e:
                raise GuestMemoryError("bus_error", lin, None, str(e)) from None
        from hvsim.mmu import walk
        st = self._st
        cr0 = int(st[L.CR0])
        if not cr0 & CR0_PG:
            return lin
        eptp = int(st[L.VMCS_CACHE + _EPTP_SLOT]) if st[L.VMX_EPT] else None
        w = walk(self._mem, int(st[L.CR3]), int(st[L.CR4]), lin, eptp=eptp)
        raw = self._raw_mem
        ept_ad = eptp is not None and bool(eptp & EPTP_AD)
        if ept_ad:
            # 29.3.5, as the core sets them: every EPT walk of a guest entry that
            # succeeded (accessed as a write: A on its entries, D on its leaf)
            for e in (w.ept[:-1] if w.pa is not None else w.ept):
                if e.fault is None and e.rights & (EPT_R | EPT_W) == EPT_R | EPT_W:
                    _set_ept_flags(raw, e, True)
        if w.fault == "bus-error":
            raise GuestMemoryError("bus_error", lin, None,
                                   f"the page walk of {lin:#010x} reads outside memory")
        if w.fault in ("ept-violation", "ept-misconfig"):
            gpa = w.pde_addr if w.fault_level == "PDE" else w.pte_addr
            kind = w.fault.replace("-", "_")
            raise GuestMemoryError(kind, gpa, w.ept_violation(),
                                   f"linear address {lin:#010x}: {w.fault} on the guest "
                                   f"{w.fault_level} at guest-physical {gpa:#010x}")
        error = w.error_code(write=write, user=user, wp=bool(cr0 & CR0_WP))
        if error is not None:
            why = w.fault or ("a supervisor page" if user and not w.user else "a read-only page")
            raise GuestMemoryError("page_fault", lin, error,
                                   f"linear address {lin:#010x}: #PF({error:#x}), {why}")
        final_addr, final_hpa = (w.pde_addr, w.pde_hpa) if w.large else (w.pte_addr, w.pte_hpa)
        updates = [(a, h, PTE_A) for a, h in ((w.pde_addr, w.pde_hpa), (w.pte_addr, w.pte_hpa))
                   if a is not None]
        if write:
            updates.append((final_addr, final_hpa, PTE_D))
        updates = [(a, h, bit) for a, h, bit in updates if not raw[h] & bit]
        if eptp is not None:
            rights = {w.pde_addr: w.ept[0].rights}
            if w.pte_addr is not None:
                rights[w.pte_addr] = w.ept[1].rights
            for a, _, _ in updates:                  # A/D writes are data writes (29.3.3.2)
                if not rights[a] & EPT_W:
                    raise GuestMemoryError(
                        "ept_violation", a, _X.EPT_QUAL_WRITE | rights[a] << 3
                        | _X.EPT_QUAL_LINEAR_VALID, f"linear address {lin:#010x}: EPT "
                        f"does not let the processor set A/D in the guest entry at {a:#010x}")
            if w.ept_misconfigured:
                raise GuestMemoryError("ept_misconfig", w.pa, None,
                                       f"linear address {lin:#010x}: EPT misconfiguration "
                                       f"for guest-physical {w.pa:#010x}: {w.ept[-1].why}")
            q = w.ept_violation(write=write)
            if q is not None:
                raise GuestMemoryError("ept_violation", w.pa, q,
                                       f"linear address {lin:#010x}: EPT violation at "
                                       f"guest-physical {w.pa:#010x} (qualification {q:#x})")
        for _, hpa, bit in updates:
            raw[hpa] |= bit
        if ept_ad:
            _set_ept_flags(raw, w.ept[-1], write)         # the datum's walk
        return w.hpa

    def _chunks(self, lin: int, n: int, write: bool, user: bool):
        """(physical address, length) pieces of ``n`` bytes at ``lin``, one per page."""
        lin = _check_int("linear address", lin, 0, 0xFFFFFFFF)
        n = _check_int("length", n, 0, len(self._mem))
        out = []
        while n > 0:
            take = min(n, 4096 - (lin & 0xFFF))
            pa = self._translate_page(lin, write, user)
            if pa + take > len(self._mem):
                raise GuestMemoryError("bus_error", pa, None,
                                       f"physical address {pa:#010x} (+{take}) is outside memory")
            out.append((pa, take))
            lin = (lin + take) & 0xFFFFFFFF
            n -= take
        return out

    def read_linear(self, lin: int, n: int, *, user: bool = False) -> bytes:
        """Read ``n`` bytes at linear address ``lin``, through the guest's page tables if
        paging is on -- one walk per page, not per byte.

        ``user``: the access is made at CPL 3 (supervisor otherwise). A failing walk
        raises :class:`GuestMemoryError` carrying the #PF error code the CPU would give,
        so a monitor can reflect it; nothing is read in that case.
        """
        raw = self._raw_mem
        return b"".join(raw[pa:pa + k].tobytes() for pa, k in self._chunks(lin, n, False, user))

    def write_linear(self, lin: int, data, *, user: bool = False) -> None:
        """Write ``data`` at linear address ``lin`` through the guest's paging (see
        :meth:`read_linear`). Every page is translated before any byte is written, so a
        fault leaves memory as it was. Decoded code in the frames written is dropped, as
        a guest store would drop it."""
        data = bytes(data)
        pieces = self._chunks(lin, len(data), True, user)
        done = 0
        for pa, k in pieces:
            self._write_frames(pa, data[done:done + k])
            done += k

    def write_physical(self, pa: int, data) -> None:
        """Write ``data`` at guest-physical ``pa`` (bounds-checked; decoded code in the
        frames written is dropped, as a guest store would drop it)."""
        data = bytes(data)
        pa = _check_int("physical address", pa, 0, len(self._mem))
        if pa + len(data) > len(self._mem):
            raise GuestMemoryError("bus_error", pa, None,
                                   f"{len(data)} bytes at {pa:#010x} do not fit in memory")
        self._write_frames(pa, data)

    def _write_frames(self, pa: int, data: bytes) -> None:
        if not data:
            return
        self.generation += 1
        gm = self.guest_mmu
        if gm is not None and pa < gm.ram:
            first, last = pa & ~3, min((pa + len(data) + 3) & ~3, gm.ram)
            old = self._raw_mem[first:last].tobytes()
        self._raw_mem[pa:pa + len(data)] = np.frombuffer(data, np.uint8)
        if gm is not None and pa < gm.ram:
            gm.written(first, old, self._raw_mem[first:last].tobytes())
        pg = self._pg
        for frame in range(pa >> 12, ((pa + len(data) - 1) >> 12) + 1):
            if pg[frame] & L.PG_CODE:       # as a guest store does (hvsim/mmu/paging.py)
                pg[frame] = (pg[frame] & ~L.PG_CODE) + L.PG_GEN_ONE

    # ---- the instruction trace (hvsim/cpu/itrace.py) ---------------------------------------
    def set_instruction_trace(self, base: int, capacity: int, on_full) -> None:
        """Record every retired instruction (and every store into a frame code was fetched
        from) into ``capacity`` records at physical ``base`` (layout.py, ITRACE_*).

        ``on_full()`` is called, inside ``run()``, before a step could find no room left:
        it must take the records (:meth:`take_instruction_trace`). While tracing,
        translated blocks do not run. The buffer is memory like any other: whoever
        places it keeps the guest away from it.
        """
        base = _check_int("trace base", base, 0, len(self._mem) - 1)
        if base % L.ITRACE_RECORD_BYTES:
            raise ValueError(f"trace base {base:#x} is not aligned to the "
                             f"{L.ITRACE_RECORD_BYTES}-byte record")
        capacity = _check_int("trace capacity", capacity, 2 * L.ITRACE_RESERVE,
                              len(self._mem) // L.ITRACE_RECORD_BYTES)
        if base + capacity * L.ITRACE_RECORD_BYTES > len(self._mem):
            raise ValueError(f"{capacity} trace records at {base:#x} do not fit in the "
                             f"{len(self._mem):#x} bytes of memory")
        if not callable(on_full):
            raise TypeError(f"on_full must be callable, got {type(on_full).__name__}")
        st = self._st
        st[L.ITRACE_BASE] = base
        st[L.ITRACE_CAP] = capacity
        st[L.ITRACE_COUNT] = st[L.ITRACE_LOST] = st[L.ITRACE_FULL] = 0
        self._on_trace_full = on_full
        pg = self._pg
        pg &= ~L.PG_TRACED
        pg[(pg & L.PG_CODE) != 0] |= L.PG_TRACED   # code already decoded: watched too
        self.generation += 1

    def clear_instruction_trace(self) -> None:
        """Tracing off (records not yet taken are dropped with the buffer)."""
        st = self._st
        st[L.ITRACE:L.ITRACE + L.ITRACE_SIZE] = 0
        self._pg &= ~L.PG_TRACED
        self._on_trace_full = None
        self.generation += 1

    @property
    def instruction_trace_capacity(self) -> int:
        """Records the trace buffer holds; 0 when tracing is off."""
        return int(self._st[L.ITRACE_CAP])

    def take_instruction_trace(self) -> np.ndarray:
        """The records written since the last take, as a (n, ITRACE_RECORD_WORDS) uint32
        array (layout.py documents the words); the buffer is empty afterwards."""
        st = self._st
        if st[L.ITRACE_LOST]:
            raise RuntimeError(f"{int(st[L.ITRACE_LOST])} instruction-trace records found no room")
        n = int(st[L.ITRACE_COUNT])
        base = int(st[L.ITRACE_BASE])
        raw = self._raw_mem[base:base + n * L.ITRACE_RECORD_BYTES]
        recs = raw.view("<u4").reshape(n, L.ITRACE_RECORD_WORDS).copy()
        st[L.ITRACE_COUNT] = 0
        return recs

    # ---- running -------------------------------------------------------------------------
    def run(self, max_steps: int = DEFAULT_MAX_STEPS) -> Event:
        """Run until an event; at most ``max_steps`` steps (then the event is 'budget')."""
        if type(max_steps) is not int or not 1 <= max_steps <= 1 << 62:   # fast path: a plain int
            max_steps = _check_int("max_steps", max_steps, 1, 1 << 62)
        return self._event(self._run(max_steps))

    def step(self) -> Optional[Event]:
        """Retire one instruction (or take one fault/interrupt); the event it caused, or None."""
        kind = self._run(1)
        if kind == EXIT_BUDGET:
            return None
        return self._event(kind)

    def _run(self, budget: int) -> int:
        self.generation += 1
        st = self._st
        bps = self.breakpoints
        if bps != self._bp_written:
            bps = sorted(bps)
            if len(bps) > L.BP_CAP:
                raise ValueError(f"at most {L.BP_CAP} breakpoints, got {len(bps)}")
            for i, a in enumerate(bps):
                st[L.BP_LIST + i] = _check_int("breakpoint", a, 0, 0xFFFFFFFF)
            st[L.BP_COUNT] = len(bps)
            self._bp_written = set(bps)
        return engine.run(self._raw_mem, st, self._tlb, self._dc, self._pg, budget,
                          self._on_trace_full)

    def _event(self, kind: int) -> Event:
        # one read of the whole exit-info block (contiguous, hvsim/arch/layout.py): a trap
        # round trip is dominated by Python, and numpy scalar reads cost ~0.1 us each
        x = self._exit_info.tolist()
        insn = from_exit_info(x) if x[_X_INSN] else None
        # positional arguments, in Event's field order: a keyword costs more per exit
        if kind == EXIT_EXCEPTION or kind == EXIT_INTERRUPT:
            v, err = x[_X_VECTOR], x[_X_ERROR]
            ev = Event(_LABELS[kind], x[_X_EIP], x[_X_CPL], x[_X_STEPS], v,
                       None if err < 0 else err, _SOURCES[x[_X_SOURCE]],
                       x[_X_ADDR] if v == 14 else None, None, None, None, None, x[_X_LEN],
                       insn, self)
        elif kind == EXIT_IO:
            out = not x[_X_DIR]
            ev = Event(_LABELS[kind], x[_X_EIP], x[_X_CPL], x[_X_STEPS], None, None, None, None,
                       x[_X_PORT], x[_X_SIZE], "out" if out else "in",
                       x[_X_VALUE] if out else None, x[_X_LEN], insn, self)
        else:
            ev = Event(_LABELS[kind], x[_X_EIP], x[_X_CPL], x[_X_STEPS], None, None, None, None,
                       None, None, None, None, x[_X_LEN], insn, self)
            if kind == EXIT_BUS_ERROR:
                ev.address = x[_X_ADDR]
            elif kind == EXIT_INTERNAL_ERROR:
                ev.vector = x[_X_VECTOR]          # the kernel-table entry that failed
        return ev

    # ---- snapshots ----------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """A copy of the whole machine state (memory, registers, TLB, caches, counters)."""
        return Snapshot(np.array(self._mem, copy=True).view(np.ndarray), self._st.copy(),
                        self._tlb.copy(), self._dc.copy(), self._pg.copy())

    def restore(self, snap: Snapshot) -> None:
        """Put the machine back exactly as it was when ``snap`` was taken."""
        if not isinstance(snap, Snapshot):
            raise TypeError(f"restore() takes a Snapshot, got {type(snap).__name__}")
        if snap.mem.shape != self._mem.shape or snap.tlb.shape != self._tlb.shape:
            raise ValueError("this snapshot was taken on a machine of another memory or TLB size")
        self.generation += 1
        np.copyto(self._mem.view(np.ndarray), snap.mem)
        np.copyto(self._st, snap.st)
        np.copyto(self._tlb, snap.tlb)
        np.copyto(self._dc, snap.dc)
        blk = self._dc[F_BLK]
        blk[blk > 0] = 0               # block addresses belong to the process that made them
        np.copyto(self._pg, snap.pg)
        self._bp_written = None        # the snapshot's breakpoint slots: rewrite from self.breakpoints

    def __repr__(self):
        return (f"<Machine {len(self._mem) >> 20} MiB, ring {self.cpu.cpl}, eip={self.cpu.eip:#x}, "
                f"{self.counters['instructions']} instructions>")
