"""Binary translation with direct execution, VMware's way, as a monitor (Python, not jitted).

VMware Workstation (1999-2006) virtualized the x86 before VT-x by never letting the guest
kernel's own code run: "By switching guest execution between BT mode and direct execution
as the guest switches between kernel- and user-mode, we can limit BT overheads to kernel
code and permit application code to run at native speed" (Adams & Agesen, "A Comparison
of Software and Hardware Techniques for x86 Virtualization", ASPLOS 2006, sec. 3.2).
:class:`BinaryTranslator` is that monitor on hvsim's machine, built on trap-and-emulate
(hvsim/monitors/trap_and_emulate.py), whose virtual CPU, virtual devices, reflection,
timer and shadow paging it inherits:

* the guest kernel (its ring 0) runs at real **ring 1**, and there **only from the
  translation cache** (TC): real CPL 1 implies EIP inside the TC. After every event the
  monitor handles, a guest EIP at ring 1 is replaced by the TC address of its translation
  (translated on demand, hvsim/bt/translator.py). Guest user code (CPL 3, virtual IF=1)
  runs directly;
* **translation units** (<= 12 guest instructions, never across a page) are keyed by
  (guest linear EIP, physical address of the first byte): a dict by EIP (VMware's hash
  table) whose physical half the monitor keeps true by invalidating the TUs of a page
  whose mapping changed (below);
  innocuous instructions are copied, direct branches jump to *continuations* that the
  monitor replaces by jumps to the target's translation (chaining), indirect branches and
  RET look their target up through a callout (VMware does that lookup inline, in the TC;
  hvsim leaves the TC for it: ``indirect lookups`` counts them);
* CLI, STI, PUSHF and POPF become **in-TC sequences** on a virtual IF/IOPL in the VCPU
  page (hvsim/bt/replacements.py): the teaching kernel's ``pushf; cli; ...; popf``, which
  freezes under trap-and-emulate, works, because its POPF never reaches the hardware;
  the other sensitive instructions become **callouts** (``int CALLOUT_VECTOR``,
  identified by its TC address). A callout *simulates* the guest instruction: the monitor
  runs the original, at its guest EIP, for one step with the machine's ``virtualizable``
  switch on, so that it exits already decoded and trap-and-emulate's HANDLERS emulate it
  (the Event is the guest instruction's, at its guest EIP, decoded by the core as every
  exit is: the monitor never decodes an instruction itself, and a far transfer or an
  INT n runs as the CPU runs it). A callout is counted as a callout, not as a trap, and
  logged (``what='callout'``) before what it led to;
* the monitor lives in the top 4 MiB of linear space (HOLE_BASE, VMware's place: its
  GDT/TSS page, the VCPU page, the TC pages), mapped by every shadow root -- the shadow
  MMU is made at boot, in its direct-map mode while the guest's paging is off -- and is
  protected **by segment limits** (Adams & Agesen sec. 3.2: guest segments truncated,
  %gs reserved): the GDT's ring-1/2/3 data descriptors and the ring-3 code descriptor end
  at HOLE_BASE - 1, the ring-1 code segment stays 4 GiB (translated code runs in the
  hole at ring 1), and a VMM data descriptor (DPL 0, so that the guest cannot load it;
  the VCPU page only) is in GS whenever ring 1 runs. A guest data access to the hole
  through DS, ES, FS or SS is #GP (reflected: beyond the truncated limit); a guest
  kernel instruction that reads memory through CS (a 2E prefix on a memory operand:
  the ring-1 code segment reaches the hole) or uses GS is refused with a Kill before it
  runs. User pages of the hole are also supervisor-only. As the ring-1 code segment
  cannot be truncated, every guest-chosen ring-1 target is checked instead: a branch
  target (at its lookup), a gate's handler (reflection, injection), the EIP a simulated
  far JMP/CALL or IRET leaves -- one in the hole is a Kill --, and after every event a
  ring-1 EIP in the hole must be a TC instruction. The price: the interpreter's flat
  fast path (``st[FLAT]``) is off;
* **faults in translated code** are reported at the guest EIP (an IDENT copy faults as the
  original: same CR2, same error code); hidden #PFs restart in the TC, true ones and
  other exceptions are reflected with the guest EIP, trace faults (a guest page-table
  write) are emulated by trap-and-emulate and the TC goes on;
* **adaptive translation** (Adams & Agesen sec. 3.3, "innocent until proven guilty"): an
  IDENT instruction that traps ADAPT_AFTER times (page-table or code-page stores) is
  retranslated as a callout that simulates it; its old site becomes that callout at
  once (the 2-byte INT fits where VMware's 5-byte forwarding jump may not; a 1-byte one
  has its TU invalidated instead);
* **traces keep the TC coherent**: guest frames with translations are write-traced in
  the shadow MMU (``trace_code``); a guest write there is emulated (a MOV store, as a
  trace fault on a page table is) or runs for one step with the trace lifted (any other
  store), and every TU whose source bytes it wrote is invalidated (its lookup entry
  dropped, the jumps chained into it pointed back at their continuations); a write that
  overlaps no TU (data beside code) just completes;
* **mappings**: every TU records the (linear page -> guest frame) pairs it was read
  through; after each event that may change a mapping the monitor sees -- a CR0/CR3/CR4
  write, INVLPG (any simulated callout, in fact) and an emulated guest page-table write --
  the code pages are walked again (without side effects) and the TUs of a page whose
  frame changed are invalidated, so the guest never runs stale code. (A guest that
  changes a mapping of its code through a page table the shadow MMU stopped tracing sees
  the new code at its next INVLPG or CR3 load, as a TLB would let it.)

Simplifications, each deliberate: the monitor reads the TC's guest EIPs from its own
tables (VMware's TC has the same back-map for faults); the VCPU page's state is read back
(IF, IOPL) and written (IF, IOPL, pending) around every exit; an STI with an interrupt
pending is simulated rather than shadowed in the TC, and so is one that would end its TU;
a tick that comes in right after an in-TC STI waits until the next guest instruction is
done (the run loop steps it), even when that STI found the virtual IF already set (the
sequence keeps no trace of the old IF): one instruction later than natively, as if the
tick had come one instruction later, never inside STI's shadow; translation reads guest
code through the guest's tables and sets their A flags as the fetch would (a guest that
clears the A flag of kernel code it already ran will not see it set again); guest user code runs
directly whatever its virtual IF and IOPL (VMware translated ring-3 code that ran with
IF=0 or IOPL=3 too: a guest that gives a user program IOPL 3 would let it see the real
IF through PUSHF); the timer counts retired instructions, and the TC retires more than
the guest code it stands for (an in-TC PUSHF is ten), so the guest's clock runs faster
per guest instruction than natively; a write to a frame holding translations but no
translated byte (data beside code) still costs an exit each time at ring 3, and at ring
1 until adaptive translation makes the store a callout; single-stepping the guest kernel
is not supported: a guest kernel POPF or IRET that sets EFLAGS.TF at ring 1 ends in a Kill
(its #DB in the TC, or the real TF seen after a callout), while TF in guest user code
single-steps as natively (ring 3 runs directly, each #DB reflected at the next
instruction's EIP).

>>> from hvsim.guests import teaching_kernel
>>> bt = BinaryTranslator(program=teaching_kernel())
>>> bt.run(60_000).kind
'budget'
>>> bt.console
'kernel up\\nhello from ring 3\\n'
>>> bt.vcpu.IF, bt.ticks_delivered > 20
(1, True)
"""
from __future__ import annotations

import collections
import copy
import dataclasses
from typing import Optional

import numpy as np

from hvsim.arch import layout as L
from hvsim.arch.cr import CR0_PG, CR0_WP
from hvsim.arch.exits import EXIT_BUDGET, EXIT_EXCEPTION
from hvsim.arch.flags import IF, TF
from hvsim.arch.pte import PTE_P, PTE_RW
from hvsim.arch.vectors import DB, GP, PF, HAS_ERROR_CODE, vector_name
from hvsim.asm.disassembler import disassemble_one
from hvsim.bt import replacements as R
from hvsim.bt.translator import CALLOUT, CONT, IDENT, INLINE, TranslationFault, translate
from hvsim.machine import Event, Machine
from hvsim.mmu.shadow import (CODE, HIDDEN, HIDDEN_DONE, HOLE_BASE, MMIO, TRACE, TRUE,
                              GuestPageFault, ShadowError)
from hvsim.monitors.base import Kill, MonitorEvent, shadow_stats
from hvsim.monitors.stores import store_of
from hvsim.monitors.trap_and_emulate import (HANDLERS, MONITOR_PAGES, GUEST_RING,
                                             MonitorSnapshot, TrapAndEmulate, handler_key)
from hvsim.rings import make_descriptor

__all__ = ["BinaryTranslator", "BTSnapshot", "TU", "TC_BASE", "VCPU_BASE", "VMM_GS",
           "ADAPT_AFTER", "DEFAULT_TC_PAGES"]

PAGE = 4096
MASK32 = 0xFFFFFFFF
#: the linear layout of the hole: its page 0 the GDT/TSS (trap-and-emulate's), page 1 the
#: VCPU page, pages 2.. the translation cache
VCPU_BASE = HOLE_BASE + PAGE
TC_BASE = HOLE_BASE + 2 * PAGE
DEFAULT_TC_PAGES = 64
MAX_TC_PAGES = 1022                   # the rest of the 4 MiB hole (one page table)
#: Adams & Agesen 2006 sec. 3.3 retranslate an instruction that traps "frequently"; hvsim
#: calls 4 traps frequent (VirtualBox's PATM gives up on a patch after MAX_PATCH_TRAPS = 4)
ADAPT_AFTER = 4
# GDT (hvsim/rings/setup.py layout, SDM Vol. 3A 3.4.5): the entries truncated, and the
# monitor's own data descriptor for GS (index 10). Its DPL is 0: the monitor loads it
# from outside the guest, and a guest MOV to a segment register of that selector at
# CPL 1 is #GP (DPL < CPL, SDM Vol. 2B, MOV "Operation"); once loaded, accesses through
# GS are not checked against the DPL again (SDM Vol. 3A, 5.6)
_TRUNCATED = (4, 6, 8, 7)             # data DPL 1, 2, 3; code DPL 3
_VMM_GS_INDEX = 10
VMM_GS = _VMM_GS_INDEX << 3
_LIMIT_4K = (HOLE_BASE >> 12) - 1     # limit in 4 KiB units: the last byte is HOLE_BASE - 1
_DATA_RW = 0x3                        # read/write data, accessed (SDM Vol. 3A, Table 3-1)
_HOLE_TABLE_PAGE = 1                  # trap-and-emulate's page table of the hole
_I_STEPS, _I_CPL, _I_EIP = L.EXIT_STEPS, L.CPL, L.EIP
_PF_NAME = vector_name(PF)
#: the length of the last instruction of STI's in-TC sequence (mov dword [gs:VIF], IF)
_STI_LAST = len(R.inline_sequence("sti")[-1][0])
_SINGLE_STEP = ("single-stepping the guest kernel (EFLAGS.TF) is not supported under binary "
                "translation: its POPF or IRET set TF at ring 1")
#: the #GP(0)s at ring 1 that are trap-and-emulate's business: the instructions it
#: emulates, and the privileged ones it does not (killed with a clear message)
_EMULATE_OR_KILL = frozenset(HANDLERS) | {"lldt", "ltr", "lmsw", "clts", "rdmsr", "wrmsr",
                                          "lar", "lsl", "verr", "verw", "sldt", "str"}


class TU:
    """A translation unit placed in the TC (see hvsim/bt/translator.py for its rows).

    ``guest_eip``/``gpa``: its key; ``tc``: its first TC address, ``size`` bytes;
    ``rows``: (TC address, Row) per TC instruction; ``exits``: its chained-or-not jumps;
    ``incoming``: other TUs' exits chained into it; ``pages``: (linear page, guest
    frame) it was read through; ``src``: guest-physical (first, end) byte ranges."""
    __slots__ = ("guest_eip", "gpa", "tc", "size", "rows", "exits", "incoming", "pages",
                 "src", "valid", "guest", "entry", "frames")

    def __init__(self, guest_eip, gpa, tc, size, guest, pages, src):
        self.guest_eip, self.gpa, self.tc, self.size = guest_eip, gpa, tc, size
        self.guest, self.pages, self.src = guest, pages, src
        self.frames = dict(pages)          # linear page -> guest frame
        self.rows: list = []
        self.exits: list = []
        self.incoming: list = []
        self.valid = True
        self.entry: dict = {}              # guest EIP -> TC address of its boundary

    def __repr__(self):
        return (f"<TU {self.guest_eip:#x} -> TC {self.tc:#x} ({len(self.guest)} guest "
                f"instructions, {self.size} bytes){'' if self.valid else ' invalid'}>")


@dataclasses.dataclass(slots=True)
class _Exit:
    tu: TU
    at: int            # TC address of the JMP/Jcc rel32
    field: int         # TC address of its rel32
    stub: int          # TC address of its continuation
    target: int        # guest EIP
    chained: Optional[TU] = None


@dataclasses.dataclass(frozen=True)
class BTSnapshot:
    """A trap-and-emulate snapshot plus the translator's bookkeeping."""
    base: MonitorSnapshot
    bt: dict


class BinaryTranslator(TrapAndEmulate):
    """Run a guest kernel under binary translation with direct execution (VMware).

    Parameters
    ----------
    machine : a Machine (a fresh one with 1 MiB of guest RAM if None): its top pages are
              the monitor's -- trap-and-emulate's MONITOR_PAGES, then the VCPU page and
              the TC.
    program : the guest kernel (entry = label ``start``), entered at ring 1 through
              its translation; None: :meth:`boot` it yourself.
    tc_pages : the translation cache's size in 4 KiB pages (1..1022); when full, the
              whole TC is flushed (counted).
    adapt_after : traps of one translated instruction before adaptive translation
              makes it a callout (>= 1).
    """
    name = "bt"

    def __init__(self, machine: Optional[Machine] = None, program=None, *,
                 tc_pages: int = DEFAULT_TC_PAGES, adapt_after: int = ADAPT_AFTER):
        if isinstance(tc_pages, bool) or not isinstance(tc_pages, int) \
                or not 1 <= tc_pages <= MAX_TC_PAGES:
            raise ValueError(f"tc_pages must be an int from 1 to {MAX_TC_PAGES}, got {tc_pages!r}")
        if isinstance(adapt_after, bool) or not isinstance(adapt_after, int) or adapt_after < 1:
            raise ValueError(f"adapt_after must be a positive int, got {adapt_after!r}")
        self.tc_pages = tc_pages
        self.adapt_after = adapt_after
        super().__init__(machine, None)
        self._setup()
        if program is not None:
            self.boot(program)

    def _reserved_pages(self) -> int:
        return MONITOR_PAGES + 1 + self.tc_pages

    # ---- set-up -----------------------------------------------------------------------
    def _setup(self) -> None:
        m = self.machine
        self._vcpu_pa = self.ram + MONITOR_PAGES * PAGE
        self._tc_pa = self._vcpu_pa + PAGE
        self.tc_bytes = self.tc_pages * PAGE
        self._vp = memoryview(m._raw_mem[self._vcpu_pa:self._vcpu_pa + PAGE]).cast("I")
        self._reset_tc()
        self.callouts = collections.Counter()        # by kind
        self.inline = collections.Counter()          # in-TC emulations translated, by name
        self.bt_counts = dict(tus=0, translated=0, lookups=0, lookup_hits=0,
                              chain_patches=0, indirect_lookups=0,
                              adaptations=0, smc_invalidations=0, mapping_invalidations=0,
                              tc_flushes=0, code_writes=0)
        self._site_traps = collections.Counter()     # guest EIP -> traps of its translations
        self._draining = False                       # in an invalidated TU, mid-sequence
        self._adapted: set = set()                   # guest EIPs made callouts
        self._guest_gs = int(m.cpu.gs)
        self._last_ring = int(m.cpu.cpl)
        # always shadow paging: the hole is mapped in every mode
        self._make_shadow()
        self._move_tables()
        self._protect()
        v = self.vcpu
        root = self.shadow.set_mode(v.cr0, v.cr3, v.cr4)
        m.cpu.cr3 = root
        m.cpu.cr0 = int(m.cpu.cr0) | CR0_PG | CR0_WP

    def _protect(self) -> None:
        """Truncate the guest's segments below the hole, add the VMM's GS descriptor,
        map the VCPU page (writable) and the TC (read-only), both supervisor-only."""
        m = self.machine
        mem = m._raw_mem
        gdt = self.ram                          # trap-and-emulate's tables page (GDT first)
        for i in _TRUNCATED:
            raw = int.from_bytes(bytes(mem[gdt + 8 * i:gdt + 8 * i + 8]), "little")
            raw = (raw & ~0x000F00000000FFFF) | (_LIMIT_4K & 0xFFFF) | ((_LIMIT_4K >> 16) << 48)
            mem[gdt + 8 * i:gdt + 8 * i + 8] = list(raw.to_bytes(8, "little"))
        gs = make_descriptor(VCPU_BASE, PAGE - 1, _DATA_RW, 1, 0, 1, 1, 0)
        at = gdt + 8 * _VMM_GS_INDEX
        mem[at:at + 8] = list(gs.to_bytes(8, "little"))
        m._st[L.GDTR_LIMIT] = 8 * (_VMM_GS_INDEX + 1) - 1
        hole = self.ram + _HOLE_TABLE_PAGE * PAGE
        pt = mem[hole:hole + PAGE].view(np.uint32)
        pt[1] = self._vcpu_pa | PTE_P | PTE_RW
        pt[2:2 + self.tc_pages] = (np.arange(self.tc_pages, dtype=np.uint32) * PAGE
                                   + np.uint32(self._tc_pa)) | np.uint32(PTE_P)
        mem[self._vcpu_pa:self._vcpu_pa + PAGE] = 0

    def _reset_tc(self) -> None:
        self._tus: dict = {}              # guest EIP -> valid TU (key: eip, gpa of its byte)
        self._at: dict = {}               # TC address -> (TU, Row)
        self._callouts: dict = {}         # TC address of an INT CALLOUT -> (TU, Row, exit)
        self._by_frame = collections.defaultdict(set)   # guest frame -> TUs read from it
        self._by_page = collections.defaultdict(set)    # linear page -> TUs
        self._tc_used = 0
        self._epoch = 0 if not hasattr(self, "_epoch") else self._epoch + 1

    def boot(self, program, esp: Optional[int] = None) -> None:
        """Load ``program`` and enter it at ring 1 through its translation."""
        super().boot(program, esp)
        m = self.machine
        for s in ("ss", "ds", "es", "fs"):         # the truncated descriptors, reloaded
            setattr(m.cpu, s, int(getattr(m.cpu, s)))
        self._guest_gs = int(m.cpu.gs)
        self._push()
        self._after()

    # ---- the VCPU page -----------------------------------------------------------------
    def _pull(self) -> None:
        vp, v = self._vp, self._vcpu
        v.IF = 1 if vp[0] else 0
        v.iopl = vp[1] >> 12

    def _push(self) -> None:
        vp, v = self._vp, self._vcpu
        vp[0] = IF if v.IF else 0
        vp[1] = (v.iopl & 3) << 12
        vp[2] = 0 if v.pending is None else 1

    # ---- the TC ------------------------------------------------------------------------
    def _read_code(self, lin: int, n: int) -> bytes:
        """Guest code bytes for the translator, through the guest's tables (A flags set
        as the fetch sets them)."""
        try:
            gpa = self.shadow.translate(lin, False, False)
        except GuestPageFault as e:
            raise TranslationFault(lin, e.error_code, str(e)) from None
        except ShadowError as e:
            raise Kill(str(e)) from None
        if gpa + n > self.ram:
            raise Kill(f"the guest kernel runs code at {lin:#010x} (physical {gpa:#x}), "
                       f"beyond its {self.ram:#x} bytes of RAM")
        return self.machine._raw_mem[gpa:gpa + n].tobytes()

    def _tc_for(self, eip: int, hint: Optional[TU] = None) -> int:
        """The TC address of guest ``eip`` (translated now if need be)."""
        if hint is not None and hint.valid:
            tc = hint.entry.get(eip)
            if tc is not None:
                return tc
        c = self.bt_counts
        c["lookups"] += 1
        tu = self._tus.get(eip)
        if tu is not None:
            c["lookup_hits"] += 1
            return tu.tc
        if eip >= HOLE_BASE:
            raise Kill(_in_the_hole(f"the guest kernel jumps to {eip:#010x}"))
        return self._place(translate(eip, self._read_code, adapted=self._adapted)).tc

    def _place(self, tr) -> TU:
        size = len(tr.code)
        if size > self.tc_bytes:
            raise Kill(f"a {size}-byte translation does not fit a {self.tc_bytes}-byte TC")
        if self._tc_used + size > self.tc_bytes:
            self.flush()
        tc = TC_BASE + self._tc_used
        self._tc_used += size
        self.machine.write_physical(self._tc_pa + (tc - TC_BASE), tr.code)
        sh = self.shadow
        pages = [(p, sh.guest_frame(p)) for p in tr.pages]
        frame = dict(pages)
        src = []
        for eip, n, _ in tr.guest:
            while n > 0:
                take = min(n, PAGE - (eip & 0xFFF))
                f = frame.get(eip & ~0xFFF)
                if f is not None:
                    src.append(((f << 12) | (eip & 0xFFF), ((f << 12) | (eip & 0xFFF)) + take))
                eip, n = eip + take, n - take
        gpa = src[0][0] if src else 0
        tu = TU(tr.guest_eip, gpa, tc, size, tr.guest, pages, src)
        at = self._at
        exits = {e.stub: e for e in tr.exits}
        for row in tr.rows:
            addr = tc + row.offset
            tu.rows.append((addr, row))
            at[addr] = (tu, row)
            if row.boundary and row.guest_eip not in tu.entry:
                tu.entry[row.guest_eip] = addr
            if row.callout is not None:
                e = exits.get(row.offset)
                ex = None
                if e is not None:
                    ex = _Exit(tu, tc + e.at, tc + e.field, tc + e.stub, e.target)
                    tu.exits.append(ex)
                self._callouts[addr] = (tu, row, ex)
            if row.kind == INLINE and row.boundary:
                self.inline[row.key] += 1
        self._tus[tu.guest_eip] = tu
        for p, f in pages:
            self._by_page[p].add(tu)
            if f is not None:
                self._by_frame[f].add(tu)
                sh.trace_code(f)
        c = self.bt_counts
        c["tus"] += 1
        c["translated"] += tr.n_guest
        return tu

    def flush(self) -> None:
        """Drop the whole TC (it is full): every TU, every chain, every code trace."""
        for f in list(self._by_frame):
            self.shadow.untrace_code(f)
        self._reset_tc()
        self._adapted.clear()              # guilt is proven again, by the new translations
        self._site_traps.clear()
        self.bt_counts["tc_flushes"] += 1

    def invalidate(self, tu: TU) -> None:
        """Drop ``tu``: its lookup entry, and the jumps chained into it go back to their
        continuations."""
        if not tu.valid:
            return
        tu.valid = False
        if self._tus.get(tu.guest_eip) is tu:
            del self._tus[tu.guest_eip]
        for ex in tu.incoming:
            if ex.chained is tu:
                self._patch(ex.field, ex.stub)
                ex.chained = None
        tu.incoming.clear()
        for p, f in tu.pages:
            self._by_page[p].discard(tu)
            if f is not None:
                s = self._by_frame.get(f)
                if s is not None:
                    s.discard(tu)
                    if not s:
                        del self._by_frame[f]
                        self.shadow.untrace_code(f)

    def _patch(self, field: int, target: int) -> None:
        rel = (target - (field + 4)) & MASK32
        self.machine.write_physical(self._tc_pa + (field - TC_BASE), rel.to_bytes(4, "little"))

    def _mappings_changed(self) -> None:
        """A mapping may have changed: TUs of a linear page whose frame is not the one
        they were read from are invalidated."""
        sh = self.shadow
        for p, tus in list(self._by_page.items()):
            if not tus:
                continue
            f = sh.guest_frame(p)
            stale = [t for t in tus if t.frames.get(p) != f]
            for t in stale:
                self.invalidate(t)
                self._innocent(t)
                self.bt_counts["mapping_invalidations"] += 1

    def _written(self, gfn: int, before: bytes, gpa: int, size: int) -> None:
        """Guest frame ``gfn`` was written (``before``: its bytes before; the store was
        at ``gpa``, ``size`` bytes): invalidate every TU whose source it touched."""
        base = gfn << 12
        now = self.machine._raw_mem[base:base + PAGE]
        offs = np.flatnonzero(now != np.frombuffer(before, np.uint8))
        lo = max(gpa, base)
        hi = min(gpa + max(size, 1), base + PAGE)
        if offs.size:                          # the bytes that changed, as one span
            lo = min(lo, base + int(offs[0]))
            hi = max(hi, base + int(offs[-1]) + 1)
        for tu in list(self._by_frame.get(gfn, ())):
            for a, b in tu.src:
                if a < hi and lo < b:
                    self.invalidate(tu)
                    self._innocent(tu)
                    self.bt_counts["smc_invalidations"] += 1
                    break

    def _innocent(self, tu: TU) -> None:
        """``tu``'s code changed or was remapped: its guest EIPs lose their adaptations
        and trap counts (the instruction there now has proven nothing)."""
        for eip, _, _ in tu.guest:
            self._adapted.discard(eip)
            self._site_traps.pop(eip, None)

    # ---- guest coordinates <-> the TC ---------------------------------------------------
    def _row(self, eip: int):
        hit = self._at.get(eip)
        if hit is None:
            raise Kill(f"ring 1 at {eip:#010x}, inside the TC but not at a translated "
                       "instruction")
        return hit

    def _goto(self, eip: int, hint: Optional[TU] = None) -> None:
        """Resume the guest kernel at guest ``eip``, through its translation. A fetch
        there that faults is the guest's #PF (reflected at ``eip``)."""
        cpu = self.machine.cpu
        for _ in range(4):
            try:
                cpu.eip = self._tc_for(eip & MASK32, hint)
                return
            except TranslationFault as f:
                self.vcpu.cr2 = f.address
                ev = Event("exception", eip, GUEST_RING, 0, PF, f.error, "fault", f.address)
                handler = self._reflect(PF, f.error, eip)
                self.reflected[_PF_NAME] += 1
                self._record(ev, "reflected", f"instruction fetch at {eip:#x}: #PF({f.error:#x}) "
                                              f"at {f.address:#x} reflected to {handler:#x}")
                eip, hint = handler, None
        raise Kill(f"the guest's #PF handler at {eip:#x} cannot be fetched either")

    def _reflect(self, vector: int, error: Optional[int], ret_eip: int) -> int:
        """Trap-and-emulate's reflection (exceptions, INT n, injected ticks), refused
        when the guest's handler is in the hole: the gate's offset is the guest's
        choice, and a ring-1 EIP there would enter the TC where the guest chose."""
        target = super()._reflect(vector, error, ret_eip)
        if self.machine.cpu.cpl == GUEST_RING and target >= HOLE_BASE:
            raise Kill(_in_the_hole(f"the guest's handler of vector {vector:#x} is at "
                                    f"{target:#010x}"))
        return target

    def _mid_sequence(self) -> bool:
        """Ring 1 inside the TC, between the instructions of one guest instruction's
        translation (or in an invalidated TU)."""
        item = self.machine._st.item
        if item(_I_CPL) != GUEST_RING:
            return False
        eip = item(_I_EIP)
        if eip < TC_BASE:
            return False
        hit = self._at.get(eip)
        return hit is not None and not hit[1].boundary

    def _after(self) -> None:
        """After every event handled: the invariants (real CPL 1 => EIP in the TC, GS the
        VMM's at ring 1, the user's GS back at ring 3)."""
        if self._state != "running":
            return
        m = self.machine
        cpu = m.cpu
        ring = cpu.cpl
        if ring == GUEST_RING:
            if cpu.eflags & TF:
                raise Kill(_SINGLE_STEP)
            if int(cpu.gs) != VMM_GS:
                if self._last_ring == 3:
                    self._guest_gs = int(cpu.gs)
                cpu.gs = VMM_GS
            eip = cpu.eip
            if eip < HOLE_BASE:
                self._goto(eip)
            else:
                hit = self._at.get(eip)
                if hit is None:
                    raise Kill(f"ring 1 at {eip:#010x}, in the monitor's region (the hole, "
                               f"{HOLE_BASE:#x} and up) but not at an instruction of the TC")
                if not hit[0].valid:
                    if hit[1].boundary:
                        self._goto(hit[1].guest_eip)
                    else:                   # finish the sequence, then leave the dead TU
                        self._draining = True
        elif ring == 3 and self._last_ring == GUEST_RING:
            g = self._guest_gs
            try:
                cpu.gs = g if g & 3 == 3 else 0
            except ValueError:
                cpu.gs = 0
        self._last_ring = cpu.cpl

    # ---- the run loop -------------------------------------------------------------------
    def run(self, max_steps: int = 1_000_000) -> Event:
        """Run the guest until an event the monitor does not handle, at most ``max_steps``
        steps (a step: an instruction the machine ran -- a TC instruction counts as one
        --, a trap or callout handled, or an interrupt injected)."""
        max_steps = self._check_budget(max_steps)
        m = self.machine
        item = m._st.item
        run = m._run
        exit_info = m._exit_info
        used = 0
        while used < max_steps:
            if self._state != "running":
                return self._final
            v = self._vcpu
            one = self._shadow or self._draining
            if v.pending is not None or one:
                if self._mid_sequence():
                    one = True
                elif v.IF and not one:
                    if self._inject():
                        used += 1
                        continue
                    one = self._shadow       # deferred past an in-TC STI's shadow
            self._push()
            kind = run(1 if one else max_steps - used)
            steps = item(_I_STEPS)
            self._pull()
            if kind == EXIT_BUDGET:
                used += steps
                if one and not self._mid_sequence():
                    self._shadow = False
                    if self._draining:
                        self._draining = False
                        final = self._fixed(m._event(kind))
                        if final is not None:
                            return final
                continue
            used += steps if steps > 1 else 1
            if self._shadow and steps > 0 and not self._mid_sequence():
                self._shadow = False
            outcome = None
            if kind == EXIT_EXCEPTION:
                x = exit_info.tolist()
                if x[0] == PF:
                    try:
                        outcome = self.shadow.page_fault(x[3], x[1])
                    except ShadowError as e:
                        outcome = e
                    if outcome is HIDDEN_DONE:
                        self.traps[_PF_NAME] += 1
                        self._log.append((exit_info.tobytes(), item(L.TSC)))
                        continue
            final = self._handled(m._event(kind), outcome)
            if final is not None:
                return final
        return MonitorEvent("budget", m.cpu.eip, m.cpu.cpl, used,
                            reason=f"{max_steps} steps done")

    def step(self) -> Optional[Event]:
        """One guest instruction: its whole translation (or one event handled)."""
        for _ in range(64):
            ev = self.run(1)
            if ev.kind != "budget":
                return ev
            if not self._mid_sequence():
                return None
        return None

    def _handled(self, ev: Event, outcome=None) -> Optional[MonitorEvent]:
        final = self.handle(ev, outcome)
        if final is None:
            return self._fixed(ev)
        return final

    def _fixed(self, ev: Event) -> Optional[MonitorEvent]:
        """The invariants after an event (:meth:`_after`); the final event if the guest
        ended."""
        if self._state != "running":
            return self._final
        self._draining = False
        try:
            self._after()
        except Kill as k:
            return self._kill(str(k), ev)
        if self._state != "running":
            return self._final
        return None

    def _inject(self) -> bool:
        v = self._vcpu
        if v.pending is None or not v.IF or self._shadow:
            return False
        cpu = self.machine.cpu
        if cpu.cpl == GUEST_RING and cpu.eip >= TC_BASE:
            hit = self._at.get(cpu.eip)
            if hit is None or not hit[1].boundary:
                return False
            tu, row = hit
            if self._follows_sti(cpu.eip, tu):
                # STI's shadow (SDM Vol. 2B, STI): the guest instruction after it runs
                # before the interrupt is recognized (the translator keeps it in STI's
                # TU, patch code has it displaced after STI's sequence); the run loop
                # steps it to its end, then injects
                self._shadow = True
                return False
            cpu.eip = row.guest_eip
        done = super()._inject()
        if done and self._state == "running":
            try:
                self._after()
            except Kill as k:
                self._kill(str(k), Event("interrupt", cpu.eip, cpu.cpl, 0))
        return done

    def _follows_sti(self, addr: int, tu: TU) -> bool:
        """The TC instruction before ``addr`` in ``tu`` is the VIF store that ends an
        in-TC STI (the only instruction of its length in that sequence)."""
        prev = self._at.get(addr - _STI_LAST)
        return (prev is not None and prev[0] is tu and prev[1].kind == INLINE
                and prev[1].key == "sti")

    # ---- dispatch -----------------------------------------------------------------------
    def handle(self, ev: Event, outcome=None) -> Optional[MonitorEvent]:
        """Handle one exit: a callout from the TC, or a trap (trap-and-emulate's, with
        the faults of translated code mapped back to the guest EIP)."""
        if (ev.kind == "exception" and ev.source == "software"
                and ev.vector == R.CALLOUT_VECTOR and ev.cpl == GUEST_RING
                and ev.eip >= TC_BASE):
            try:
                self._callout(ev)
            except Kill as k:
                return self._kill(str(k), ev)
            return None
        return super().handle(ev, outcome)     # traps: sorted by _exception below

    def _exception(self, ev: Event, outcome=None) -> None:
        in_tc = ev.cpl == GUEST_RING and ev.eip >= TC_BASE
        if ev.vector == PF:
            if outcome is None:
                try:
                    outcome = self.shadow.page_fault(ev.address, ev.error_code)
                except ShadowError as e:
                    outcome = e
            if isinstance(outcome, ShadowError):
                raise Kill(str(outcome))
            kind, info = outcome
            if kind == HIDDEN:
                self._record(ev, "hidden", f"hidden #PF at {ev.address:#x}: shadow entry filled",
                             ev.insn)
                return
            if kind == CODE:
                self._code_fault(ev, info, in_tc)
                return
            if in_tc and kind == TRUE:
                tu, row = self._row(ev.eip)
                self.vcpu.cr2 = ev.address
                target = self._reflect(PF, info, row.guest_eip)
                self.reflected[ev.name] += 1
                self._record(ev, "reflected", f"true #PF({info:#x}) at {ev.address:#x} in the "
                                              f"translation of guest {row.guest_eip:#x}: "
                                              f"reflected to {target:#x}", ev.insn)
                return
            if in_tc and kind == TRACE:
                self._site_trap(ev.eip)
            if kind == MMIO or kind == TRACE or kind == TRUE:
                code = kind == TRACE and (info >> 12) in self._by_frame
                if code:
                    # a page table that also holds translated (or scanned) code: the
                    # trace wins in the shadow MMU, so the code's coherence is kept here
                    m = self.machine
                    f, eip = info >> 12, m.cpu.eip
                    before = m._raw_mem[f << 12:(f + 1) << 12].tobytes()
                self._page_fault(ev, outcome)
                if code and m.cpu.eip != eip:      # emulated (else retried: a CODE fault)
                    self._written(f, before, info, ev.insn.size if ev.insn is not None else 4)
                    self.bt_counts["code_writes"] += 1
                if kind == TRACE:
                    self._mappings_changed()
                    if in_tc:
                        self._maybe_adapt(ev.eip)
                return
        if ev.vector == DB and ev.cpl == GUEST_RING and self.machine.cpu.eflags & TF:
            raise Kill(_SINGLE_STEP)
        if in_tc:
            tu, row = self._row(ev.eip)
            if (ev.vector == GP and ev.error_code == 0 and row.kind == IDENT and ev.insn is not None
                    and handler_key(ev.insn) in HANDLERS):
                raise Kill(f"translator error: '{ev.insn}' ran as IDENT at {ev.eip:#x}")
            # a fault restarts the guest instruction its TC instruction stands for; a
            # trap's EIP is already the next TC instruction, whose guest instruction (a
            # boundary's, or a continuation's target) is the one the guest resumes at
            if ev.source == "trap" and not (row.boundary or row.kind == CONT):
                raise Kill(f"{ev.name} mid-way through the translation of guest "
                           f"{row.guest_eip:#x}: the guest has no EIP there")
            ret = row.guest_eip
            if ev.vector == PF:
                self.vcpu.cr2 = ev.address
            error = ev.error_code if ev.vector in HAS_ERROR_CODE else None
            target = self._reflect(ev.vector, error, ret & MASK32)
            self.reflected[ev.name] += 1
            why = " (beyond the guest's segment limit: the monitor's region?)" \
                if ev.vector == GP else ""
            self._record(ev, "reflected", f"{ev.name} in the translation of guest "
                                          f"{row.guest_eip:#x}{why}: reflected to {target:#x}",
                         ev.insn)
            return
        if (ev.vector == GP and ev.error_code == 0 and ev.source == "fault"
                and (ev.cpl != GUEST_RING or ev.insn is None
                     or handler_key(ev.insn) in _EMULATE_OR_KILL)):
            self._general_protection(ev)      # trap-and-emulate: a handler, or a clear Kill
        else:
            # the guest's own fault: at ring 1 a #GP(0) of an instruction the monitor does
            # not emulate (a simulated far transfer to a null selector, a store beyond a
            # truncated limit...) is the guest's, as it would be natively
            self._guest_exception(ev)

    # ---- callouts ------------------------------------------------------------------------
    def _callout(self, ev: Event) -> None:
        site = self._callouts.get(ev.eip)
        if site is None:
            raise Kill(f"INT {R.CALLOUT_VECTOR:#x} at {ev.eip:#010x} in the TC is no callout")
        tu, row, ex = site
        kind = row.callout
        if kind == "continuation":
            self.callouts["continuation"] += 1
            chains = self.bt_counts["chain_patches"]
            self._continue(ex)
            done = "chained" if self.bt_counts["chain_patches"] > chains else "not chained"
            self._record(ev, "callout", f"continuation to guest {ex.target:#x}: {done}")
        elif kind == "indirect":
            self.callouts["indirect"] += 1
            self.bt_counts["indirect_lookups"] += 1
            target = self._vp[R.TARGET // 4]
            self._record(ev, "callout", f"indirect branch of guest {row.guest_eip:#x} "
                                        f"('{tu_text(tu, row.guest_eip)}'): lookup of {target:#x}")
            self._goto(target)
        elif kind == "popf":
            self.callouts["popf"] += 1
            self._record(ev, "callout", f"POPF at guest {row.guest_eip:#x} set the virtual "
                                        "IF with an interrupt pending: inject it")
            self._goto((row.guest_eip + row.guest_len) & MASK32, tu)
        elif kind == "refused":
            self.callouts["refused"] += 1
            raise Kill(f"'{tu_text(tu, row.guest_eip)}' at {row.guest_eip:#010x}: "
                       f"{R.SENSITIVE[row.key][1]}; hvsim's translator refuses it")
        else:
            name = "adapted" if kind == "adapted" else row.key
            self.callouts[name] += 1
            self._record(ev, "callout", f"{name} callout: the monitor runs guest "
                                        f"'{tu_text(tu, row.guest_eip)}' at {row.guest_eip:#x}")
            self._simulate(row.guest_eip, tu)

    def _continue(self, ex: _Exit) -> None:
        epoch = self._epoch
        self._goto(ex.target)
        target = self._tus.get(ex.target)
        if (epoch == self._epoch and ex.tu.valid and target is not None and ex.chained is None
                and self.machine.cpu.eip == target.tc):
            self._patch(ex.field, target.tc)
            ex.chained = target
            target.incoming.append(ex)
            self.bt_counts["chain_patches"] += 1

    def _simulate(self, eip: int, hint: Optional[TU]) -> None:
        """Run the guest instruction at guest ``eip`` for one step, at ring 1, with the
        machine's virtualizable switch on: a sensitive one exits decoded and
        trap-and-emulate's handlers emulate it; a store to a traced frame is emulated
        (page table) or done with the trace lifted (code). The guest then resumes at the
        translation of wherever the instruction left EIP."""
        m = self.machine
        m.cpu.eip = eip
        saved = m.virtualizable
        m.virtualizable = True
        try:
            self._step_lifted(None, 0, 0)
        finally:
            m.virtualizable = saved
        self._mappings_changed()
        self._resume_simulated(eip, hint)

    def _resume_simulated(self, eip: int, hint: Optional[TU]) -> None:
        """After the simulated guest instruction at guest ``eip``: the guest kernel
        resumes at the translation of wherever it left EIP. An EIP in the hole is a
        guest transfer there (a far JMP/CALL, an IRET, a handler): the step never
        injects an interrupt (a tick that comes in is only made pending), so no EIP
        in the TC here is the monitor's own."""
        cpu = self.machine.cpu
        if self._state != "running" or cpu.cpl != GUEST_RING:
            return
        if cpu.eip >= HOLE_BASE:
            raise Kill(_in_the_hole(f"the guest instruction at {eip:#010x} transfers to "
                                    f"{cpu.eip:#010x}"))
        self._goto(cpu.eip, hint)

    def _step_lifted(self, gfn: Optional[int], gpa: int, size: int) -> None:
        """One step of the instruction at EIP; code traces it meets are lifted for it (and
        ``gfn`` before it) and put back after, the TUs it wrote invalidated."""
        m = self.machine
        sh = self.shadow
        lifted = []
        if gfn is not None:
            lifted.append((gfn, m._raw_mem[gfn << 12:(gfn + 1) << 12].tobytes(), gpa, size))
            sh.untrace_code(gfn)
        try:
            for _ in range(16):
                kind = m._run(1)
                if kind == EXIT_BUDGET:
                    return
                ev = m._event(kind)
                if ev.kind == "interrupt":
                    self._timer_interrupt(ev)
                    if ev.steps:                 # taken after the instruction retired
                        return
                    continue
                if ev.kind != "exception":
                    raise Kill(f"the machine stopped emulating {ev.eip:#x}: {ev}")
                if ev.vector == PF:
                    try:
                        outcome = sh.page_fault(ev.address, ev.error_code)
                    except ShadowError as e:
                        raise Kill(str(e)) from None
                    if outcome is HIDDEN_DONE:
                        continue
                    if outcome[0] == CODE:
                        if self._code_store(ev, outcome[1]):
                            return
                        f = outcome[1] >> 12
                        size = ev.insn.size if ev.insn is not None else 4
                        lifted.append((f, m._raw_mem[f << 12:(f + 1) << 12].tobytes(),
                                       outcome[1], size))
                        sh.untrace_code(f)
                        continue
                    before = m.cpu.eip
                    self._exception(ev, outcome)
                    if outcome[0] == TRACE and m.cpu.eip == before and m.cpu.cpl == ev.cpl:
                        continue                 # unprotected: retried
                    return
                self._exception(ev)
                return
            raise Kill(f"the instruction at {m.cpu.eip:#x} does not complete")
        finally:
            for f, before, at, n in lifted:
                if f in self._by_frame:
                    sh.trace_code(f)
                self._written(f, before, at, n)
                self.bt_counts["code_writes"] += 1

    def _code_fault(self, ev: Event, gpa: int, in_tc: bool) -> None:
        """A guest write to a frame with translations: a MOV store is emulated, anything
        else done for one step with the trace lifted; the TUs it touched are
        invalidated."""
        size = ev.insn.size if ev.insn is not None else 4
        if in_tc:
            self._site_trap(ev.eip)
        if self._code_store(ev, gpa):
            how = "emulated"
        else:
            how = "done with the trace lifted"
            self._step_lifted(gpa >> 12, gpa, size)
        self._record(ev, "smc", f"write to code frame {gpa >> 12 << 12:#x} at {gpa:#x}: {how}",
                     ev.insn)
        if in_tc:
            self._maybe_adapt(ev.eip)

    def _code_store(self, ev: Event, gpa: int) -> bool:
        """Emulate ``ev``'s store into a code frame if it is one of the MOV forms a
        monitor emulates (hvsim/monitors/stores.py) and stays in its page: the bytes
        written, EIP past the instruction, the TUs it touched invalidated. False for
        any other store (the caller lifts the trace for a step)."""
        insn = ev.insn
        store = store_of(insn, self._reg)
        if store is None or insn.mem.linear != ev.address or (gpa & 0xFFF) + store[0] > PAGE:
            return False
        size, value = store
        m = self.machine
        gfn = gpa >> 12
        before = m._raw_mem[gfn << 12:(gfn + 1) << 12].tobytes()
        m.write_physical(gpa, value.to_bytes(size, "little"))
        m.cpu.eip = (ev.eip + insn.length) & MASK32
        self._written(gfn, before, gpa, size)
        self.bt_counts["code_writes"] += 1
        return True

    # ---- adaptive translation ------------------------------------------------------------
    def _site_trap(self, addr: int) -> None:
        """Count a trap of the translated instruction at TC ``addr``, by its guest EIP
        (every translation of one guest instruction shares the count)."""
        hit = self._at.get(addr)
        if hit is not None:
            self._site_traps[hit[1].guest_eip] += 1

    def _maybe_adapt(self, addr: int) -> None:
        hit = self._at.get(addr)
        if hit is None:
            return
        tu, row = hit
        eip = row.guest_eip
        if self._site_traps[eip] < self.adapt_after or row.kind != IDENT or not tu.valid:
            return
        if eip not in self._adapted:
            self._adapted.add(eip)
            self.bt_counts["adaptations"] += 1
        if row.length >= 2:
            self.machine.write_physical(self._tc_pa + (addr - TC_BASE), R.callout())
            row.kind = CALLOUT
            row.callout = "adapted"
            self._callouts[addr] = (tu, row, None)
        else:
            self.invalidate(tu)

    # ---- the protocol ----------------------------------------------------------------------
    @property
    def stats(self) -> dict:
        d = {"traps": sum(self.traps.values()), "emulated": sum(self.emulated.values()),
             "reflected": sum(self.reflected.values()), "injected": self.ticks_delivered,
             "vm_exits": 0, "hypercalls": 0, "callouts": sum(self.callouts.values()),
             "translated": self.bt_counts["translated"]}
        return shadow_stats(d, self.shadow)

    @property
    def counters(self) -> dict:
        """Trap-and-emulate's counters, then the translator's: ``callout KIND`` (by
        kind: 'continuation', 'indirect', 'popf', 'sti', 'adapted', or the mnemonic of
        the guest instruction simulated), ``in-TC NAME`` (CLI/STI/PUSHFD/POPFD sites
        translated as in-TC sequences: they run without an exit, and the hardware
        counts their instructions, so how often each ran is not counted), ``tus``,
        ``translated`` (guest instructions), ``lookups`` / ``lookup_hits`` (guest EIP ->
        TC), ``chain_patches``, ``indirect_lookups``, ``adaptations``,
        ``smc_invalidations``, ``mapping_invalidations``, ``tc_flushes``,
        ``code_writes`` (guest stores into frames with translations), ``tc_bytes``
        (the TC in use), ``callouts`` (all of them)."""
        d = super().counters
        d.update({f"callout {k}": v for k, v in sorted(self.callouts.items())})
        d.update({f"in-TC {k.upper()}": v for k, v in sorted(self.inline.items())})
        d.update(self.bt_counts)
        d["tc_bytes"] = self._tc_used
        d["callouts"] = sum(self.callouts.values())
        return d

    _BT_STATE = ("_tus", "_at", "_callouts", "_by_frame", "_by_page", "_tc_used", "_epoch",
                 "callouts", "inline", "bt_counts", "_site_traps", "_adapted", "_guest_gs",
                 "_last_ring", "_draining")

    def snapshot(self) -> BTSnapshot:
        """The machine's state (the TC included: it is in its memory), the monitor's and
        the translator's bookkeeping."""
        return BTSnapshot(super().snapshot(),
                          copy.deepcopy({k: getattr(self, k) for k in self._BT_STATE}))

    def restore(self, snap: BTSnapshot) -> None:
        if not isinstance(snap, BTSnapshot):
            raise TypeError(f"restore() takes a BTSnapshot, got {type(snap).__name__}")
        super().restore(snap.base)
        for k, v in copy.deepcopy(snap.bt).items():
            setattr(self, k, v)

    def __repr__(self):
        return (f"<BinaryTranslator {self._state}, ring {self.machine.cpu.cpl}, "
                f"eip={self.machine.cpu.eip:#x}, virtual IF={self.vcpu.IF}, "
                f"{self.bt_counts['tus']} TUs, {sum(self.callouts.values())} callouts>")

    # ---- the lesson's view ------------------------------------------------------------------
    def listing(self, guest_eip: int) -> list:
        """The translation of the TU at guest ``guest_eip`` beside its guest code: rows of
        (guest EIP, guest instruction, TC address, TC instruction, kind); the guest
        columns are filled on a boundary row (the first TC instruction of a guest
        instruction), empty on the others. Kinds: IDENT, INLINE, CALLOUT, CHAIN, CONT."""
        tu = self._tus.get(guest_eip)
        if tu is None:
            raise KeyError(f"no translation of guest {guest_eip:#x} in the TC")
        mem = self.machine._raw_mem
        texts = {eip: text for eip, _, text in tu.guest}
        out = []
        for addr, row in tu.rows:
            raw = mem[self._tc_pa + (addr - TC_BASE):][:row.length].tobytes()
            tc_text = str(disassemble_one(raw, 0, addr))
            first = row.boundary and row.kind != "CONT"
            g_eip = row.guest_eip if first else None
            g_text = texts.get(row.guest_eip, "") if first else ""
            out.append((g_eip, g_text, addr, tc_text, row.kind))
        return out


def _in_the_hole(what: str) -> str:
    """The reason of a Kill for a guest transfer into the monitor's hole."""
    return (f"{what}, in the monitor's region (the hole, {HOLE_BASE:#x} and up): the "
            "guest has no code there")


def tu_text(tu: TU, eip: int) -> str:
    for e, _, text in tu.guest:
        if e == eip:
            return text
    return "?"

