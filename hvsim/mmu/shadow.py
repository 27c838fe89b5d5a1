"""Shadow page tables: the MMU of a software monitor without nested paging (Python).

Before EPT, a VMM could not let the processor walk the guest's page tables: they map
guest-linear addresses to *guest*-physical ones, and the guest must never reach the
monitor's memory. So the monitor builds tables of its own -- **shadow page tables** --
that map guest-linear addresses straight to host-physical ones, points the real CR3 at
them, and keeps them in step with the guest's tables by catching every event that could
make them disagree (Adams & Agesen, ASPLOS 2006, section 2.4; KVM's shadow MMU,
Linux ``Documentation/virt/kvm/x86/mmu.rst``; "Qumranet: KVM", OLS 2007, section 4).
The shadow tables are real 32-bit page tables in the monitor's memory: the jitted MMU
walks them and the TLB caches them exactly as it would the guest's own.

They start empty and are filled on demand. Every #PF of the guest reaches the monitor
(it owns the real IDT, or #PF is in the VMCS exception bitmap), which walks the *guest's*
tables and sorts the fault into one of three kinds:

* **hidden** -- the guest's tables allow the access; the shadow entry was only missing
  (or read-only for a reason of the monitor's own). The monitor fills it and restarts
  the instruction; the guest never knows. Adams & Agesen: "hidden faults cause the VMM
  to construct an appropriate shadow PTE, and resume guest execution".
* **true** -- the guest's own tables refuse the access: the monitor reflects #PF into
  the guest with the error code and CR2 its tables give (not the shadow's).
* **trace** -- a write to a guest frame that holds one of the guest's page tables. Those
  frames are mapped read-only in the shadow (a *trace*, in VMware's word), so that the
  monitor sees every change of a table it shadows: it emulates the store into guest
  memory and drops the shadow entries the change affects (:meth:`ShadowMMU.write_guest`).

A and D flags appear in the guest's own entries exactly when the hardware would set
them: a hidden fault sets A in the guest PDE and PTE (and D in the last one for a
write), and a shadow entry of a page whose guest D is still 0 is made read-only even
when the guest allows writes, so that the first write faults and the monitor sets D
(SDM Vol. 3A, 4.8).

What is modelled, after KVM:

* shadow pages looked up by (guest frame, level, direct, access) -- the same guest page
  table reached through PDEs of different rights gets shadows of its own (KVM's
  ``role.access``); a guest 4 MiB page gets a *direct* shadow page table of 1024 4 KiB
  entries;
* a **cache of shadow roots**: the current one and three previous
  (``KVM_MMU_NUM_PREV_ROOTS``), so a guest switching among up to four address spaces
  finds its shadow directory built; a fifth evicts the oldest;
* the shadow entries mapping a guest frame found the moment it becomes a page table, to
  write-protect them (KVM keeps a reverse map for this; hvsim scans its shadow tables);
* **write flooding**: a shadow page whose guest table is written three times with no use
  in between is dropped, its frame unprotected (KVM's ``detect_write_flooding``);
* optional **unsync** (``unsync=True``): a guest *leaf* page table that is written is not
  emulated but unprotected; the guest then edits it freely and the monitor resyncs it
  at INVLPG (that one entry) and at the next CR3 load (all of it) -- KVM's
  unsynchronized shadow pages; who pays moves from the write to the flush;
* a **pool** of monitor frames for shadow pages; when it runs dry the oldest roots and
  then the least recently used tables are dropped.

Simplifications, each deliberate: the guest's physical address is the host's
(``gpa == hpa`` below the guest's RAM, nothing above it is ever mapped: a guest entry
naming a frame outside its RAM stops the guest); the real CR0.WP is always 1 (a guest
with CR0.WP = 0 gets KVM's treatment: a supervisor write to a read-only page makes the
shadow entry writable and supervisor-only); global pages are not shadowed as global
(every guest CR3 load flushes the whole TLB); a change of guest CR0.WP, CR0.PG or
CR4.PSE drops every shadow page (KVM resets its MMU context on such a change).
"""
from __future__ import annotations

import collections
import copy
import sys

import numpy as np

from hvsim.arch import layout as L
from hvsim.arch.cr import CR0_PG, CR0_WP, CR3_PD_MASK, CR4_PSE
from hvsim.arch.pte import (PTE_A, PTE_D, PTE_FRAME, PTE_P, PTE_PS, PTE_RW, PTE_US,
                            PDE_FRAME_4M, PFEC_P, PFEC_RSVD, PFEC_U, PFEC_W)
from hvsim.mmu.paging import PDE_4M_RSVD
from hvsim.mmu.tlb import tlb_flush_vpid, tlb_invlpg_vpid

__all__ = ["ShadowMMU", "ShadowPage", "GuestPageFault", "ShadowError", "HIDDEN", "TRUE",
           "TRACE", "CODE", "MMIO", "HIDDEN_DONE", "ROOT_CACHE", "FLOOD_WRITES", "HOLE_BASE", "COUNTERS"]

PAGE = 4096
ENTRIES = 1024
RIGHTS = PTE_RW | PTE_US
SPDE_FLAGS = PTE_P | PTE_RW | PTE_US     # a shadow PDE allows all; its PTEs carry the rights
ROOT_CACHE = 4        # the current root and KVM_MMU_NUM_PREV_ROOTS = 3 previous ones
FLOOD_WRITES = 3      # KVM's detect_write_flooding: written this often unused -> dropped
HOLE_BASE = 0xFFC00000   # the top 4 MiB of linear space (PDE 1023), when a monitor keeps it
HOLE_PDI = HOLE_BASE >> 22

# what page_fault() found
HIDDEN, TRUE, TRACE, MMIO = "hidden", "true", "trace", "mmio"
CODE = "code"      # a write to a guest frame traced for its translated code (trace_code)
HIDDEN_DONE = (HIDDEN, None)     # the one object page_fault() returns for a hidden fault

#: the counters, in the order tables print them, and what each counts
COUNTERS = {
    "hidden_faults": "#PF filled by the monitor: a shadow miss, invisible to the guest",
    "true_faults": "#PF the guest's own tables cause: reflected into the guest",
    "trace_faults": "writes to a write-protected guest page table, caught by the monitor",
    "pt_writes_emulated": "of those, stores the monitor emulated in guest memory",
    "shadow_fills": "shadow entries (PDE or PTE) written by a fill",
    "shadow_drops": "shadow entries dropped because the guest's changed or went away",
    "shadow_pages": "shadow pages (directories and tables) made",
    "shadow_pages_freed": "shadow pages given back to the pool",
    "cr3_loads": "guest CR3 loads",
    "cr3_cached": "of those, the shadow root was in the cache",
    "shadow_roots_built": "of those, a new shadow root was made",
    "invlpg": "guest INVLPGs",
    "unsynced": "guest page tables left writable (unsync mode)",
    "shadow_resyncs": "unsync page tables brought back in step",
    "resynced_entries": "guest entries compared during resyncs",
    "unshadowed": "shadow pages dropped as write-flooded",
    "reclaims": "shadow pages dropped because the pool ran dry",
    "code_faults": "writes to a guest frame holding translated code (a code trace)",
}


class ShadowError(Exception):
    """The guest did something the monitor cannot shadow (an entry naming a frame
    outside its RAM, a use of the monitor's linear region): the monitor stops it."""


class GuestPageFault(Exception):
    """The guest's own tables refuse an access the monitor makes for it (a monitor
    reading guest memory by linear address): the #PF the guest would get."""

    def __init__(self, address: int, error_code: int, message: str):
        super().__init__(message)
        self.address = address
        self.error_code = error_code


class ShadowPage:
    """One 4 KiB shadow table in the monitor's memory.

    ``level`` 2 is a shadow page directory (a root), 1 a shadow page table. ``gfn`` is
    the guest frame of the guest table it shadows; for a *direct* page it is the first
    guest frame its 1024 entries map (a guest 4 MiB page, or "paging off"). ``access``
    is the U/S and R/W the guest PDE above gives (level 1 only). ``parents``: the
    shadow PDEs (host-physical addresses) that point to it."""
    __slots__ = ("hpa", "gfn", "level", "direct", "access", "parents", "unsync", "snapshot",
                 "writes", "used")

    def __init__(self, hpa, gfn, level, direct, access):
        self.hpa = hpa
        self.gfn = gfn
        self.level = level
        self.direct = direct
        self.access = access
        self.parents: set = set()
        self.unsync = False
        self.snapshot = None          # (unsync) the guest table as it was when unprotected
        self.writes = 0               # trace writes since it was last used by a fill
        self.used = 0                 # stamp of its last use, for reclaiming

    @property
    def key(self):
        return (self.gfn, self.level, self.direct, self.access)

    def __repr__(self):
        kind = "root" if self.level == 2 else ("direct table" if self.direct else "table")
        return (f"<shadow {kind} at {self.hpa:#x} for guest frame {self.gfn:#x}"
                f"{' unsync' if self.unsync else ''}>")


class ShadowMMU:
    """The shadow page tables of one guest, kept by a software monitor.

    machine : the hvsim Machine the guest runs on (its memory, TLB and state arrays are
              used; nothing of the machine's Python face).
    ram : bytes of guest RAM, from guest-physical 0; nothing at or above it is mapped.
    pool : host-physical addresses of the 4 KiB frames the shadow tables may use (the
           monitor's memory, outside the guest's RAM); at least 4.
    unsync : leave written leaf page tables writable and resync them at INVLPG / CR3
           loads (KVM's unsync shadow pages) instead of emulating every write.
    hole : keep linear PDE 1023 (the top 4 MiB) for the monitor: ``hole_table`` is the
           host-physical page table the monitor maps there in every shadow root, and a
           guest access there stops the guest (VMware's monitor lived there too).
    vpid : the VPID whose TLB entries the monitor invalidates (0 outside VMX non-root).

    The owner tells it what the guest does -- :meth:`set_mode` (CR0/CR4 writes),
    :meth:`load_cr3`, :meth:`invlpg`, :meth:`page_fault`, :meth:`write_guest` -- and
    loads the returned root into the real CR3 (or the VMCS's GUEST_CR3).
    """

    def __init__(self, machine, ram: int, pool, *, unsync: bool = False,
                 hole_table: int | None = None, vpid: int = 0):
        if sys.byteorder != "little":
            raise RuntimeError("the shadow MMU reads guest entries in host byte order")
        mem = machine._raw_mem
        if not isinstance(ram, int) or ram <= 0 or ram % PAGE or ram > len(mem):
            raise ValueError(f"ram must be a positive multiple of 4096 within the machine's "
                             f"{len(mem):#x} bytes, got {ram!r}")
        pool = [int(p) for p in pool]
        for p in pool:
            if p % PAGE or p < ram or p + PAGE > len(mem):
                raise ValueError(f"pool frame {p:#x} is not a 4 KiB frame of the machine "
                                 f"above the guest's RAM ({ram:#x})")
        if len(pool) < 4:
            raise ValueError(f"the pool needs at least 4 frames, got {len(pool)}")
        if not isinstance(unsync, bool):
            raise TypeError(f"unsync must be True or False, got {unsync!r}")
        self.machine = machine
        self._mem = mem
        self._m32 = memoryview(mem).cast("I")      # one entry: a Python int, fast
        self._m8 = memoryview(mem)                     # one byte (an entry's A/D byte)
        self._pgq = memoryview(machine._pg).cast("B").cast("q")   # frames' decoded-code flags
        self._w32 = mem.view(np.uint32)               # whole tables: numpy, vectorized
        self._st = machine._st
        self._tlb = machine._tlb
        self._pg = machine._pg
        self.ram = ram
        self.ram_frames = ram >> 12
        self.pool = list(pool)
        self._free = list(reversed(self.pool))
        self.unsync_enabled = unsync
        self.hole_table = hole_table
        self.vpid = vpid
        self.counters = {k: 0 for k in COUNTERS}
        self.pages: dict = {}                 # key -> ShadowPage
        self.by_hpa: dict = {}                # shadow frame -> ShadowPage
        self.shadowed = collections.defaultdict(set)   # guest frame -> its non-direct shadows
        self.roots: collections.OrderedDict = collections.OrderedDict()   # key -> root page
        self.root: ShadowPage | None = None
        self.guest_cr0 = 0
        self.guest_cr3 = 0
        self.guest_cr4 = 0
        self._stamp = 0
        # guest frames holding code a binary translator translated: mapped read-only so
        # that a write to them reaches the monitor (trace_code); empty for other monitors
        self.code_frames: set = set()

    # ---- what the guest does ------------------------------------------------------------
    @property
    def paging(self) -> bool:
        """Whether the guest has paging on (else the shadow is a direct map of its RAM)."""
        return bool(self.guest_cr0 & CR0_PG)

    def set_mode(self, cr0: int, cr3: int, cr4: int) -> int:
        """The guest wrote CR0 or CR4 (its CR3 is ``cr3``). A change of PG, WP or PSE
        drops every shadow page; returns the root to load into the real CR3."""
        mode = (cr0 & (CR0_PG | CR0_WP), cr4 & CR4_PSE)
        old = (self.guest_cr0 & (CR0_PG | CR0_WP), self.guest_cr4 & CR4_PSE)
        self.guest_cr0, self.guest_cr3, self.guest_cr4 = cr0, cr3 & 0xFFFFFFFF, cr4
        if mode != old or self.root is None:
            self.reset()
            return self._switch_root()
        return self.root.hpa

    def load_cr3(self, cr3: int) -> int:
        """The guest loaded CR3: switch to its shadow root (cached or new), flush the
        guest's TLB entries as MOV CR3 does, resync unsync tables; returns the root."""
        self.guest_cr3 = cr3 & 0xFFFFFFFF
        if not self.paging:
            return self.root.hpa if self.root is not None else self._switch_root()
        self.counters["cr3_loads"] += 1
        self._resync_all()
        return self._switch_root()

    def invlpg(self, lin: int) -> None:
        """The guest ran INVLPG: drop the shadow entry of ``lin``'s page (resync it first
        if its table is unsync) and the TLB's."""
        self.counters["invlpg"] += 1
        if self.paging and self.root is not None:
            spde = self._m32[(self.root.hpa >> 2) + (lin >> 22)]
            if spde & PTE_P and (spde & PTE_FRAME) != self.hole_table:
                sp = self.by_hpa.get(spde & PTE_FRAME)
                if sp is not None:
                    idx = (lin >> 12) & 0x3FF
                    if sp.unsync:
                        self._resync_entry(sp, idx)
                    self._drop_spte(sp, idx)
        tlb_invlpg_vpid(self._st, self._tlb, self.vpid, lin & 0xFFFFFFFF)

    def page_fault(self, lin: int, error_code: int):
        """Sort a #PF the hardware raised on the shadow tables: ``(HIDDEN, None)`` after
        filling the shadow, ``(TRUE, guest_error_code)`` to reflect, ``(TRACE, gpa)``
        for a write to a traced guest page table (the caller emulates the store with
        :meth:`write_guest`, or re-executes it after :meth:`unprotect`), or ``(MMIO,
        gpa)`` for a guest-physical address beyond the guest's RAM (never mapped: a
        device, for a host that has some). Raises :class:`ShadowError` when the guest
        touches what the monitor cannot give it (its tables outside its RAM, the
        monitor's linear region)."""
        lin &= 0xFFFFFFFF
        write = error_code & PFEC_W
        user = error_code & PFEC_U
        if self._fast_fill(lin, write, user):
            return HIDDEN_DONE
        if self.hole_table is not None and lin >> 22 == HOLE_PDI:
            raise ShadowError(f"the guest touched linear {lin:#010x}, in the 4 MiB the "
                              f"monitor keeps for itself ({HOLE_BASE:#x} and up)")
        if not self.paging:
            if lin >> 12 >= self.ram_frames:
                return MMIO, lin
            return self._direct_fault(lin, write)
        walk = self._guest_walk(lin, write, user)
        if walk[0] is not None:
            self.counters["true_faults"] += 1
            return TRUE, walk[0]
        _, pde_pa, pde, pte_pa, pte = walk
        large = pte_pa is None
        gfn = ((pde & PDE_FRAME_4M) | (lin & 0x3FF000)) >> 12 if large else pte >> 12
        if gfn >= self.ram_frames:
            return MMIO, (gfn << 12) | (lin & 0xFFF)
        if write and gfn in self.code_frames and not self._traced(gfn):
            self.counters["code_faults"] += 1
            if large:                           # the store's A/D, as the walk would set them
                self._set_guest_flags(pde_pa, pde, PTE_A | PTE_D)
            else:
                self._set_guest_flags(pde_pa, pde, PTE_A)
                self._set_guest_flags(pte_pa, pte, PTE_A | PTE_D)
            return CODE, (gfn << 12) | (lin & 0xFFF)
        if write and self._traced(gfn):
            self.counters["trace_faults"] += 1
            if large:                           # the store's A/D, as the walk would set them
                self._set_guest_flags(pde_pa, pde, PTE_A | PTE_D)
            else:
                self._set_guest_flags(pde_pa, pde, PTE_A)
                self._set_guest_flags(pte_pa, pte, PTE_A | PTE_D)
            return TRACE, (gfn << 12) | (lin & 0xFFF)
        self.counters["hidden_faults"] += 1
        self._fill(lin, write, user, pde_pa, pde, pte_pa, pte, gfn)
        return HIDDEN_DONE

    def _fast_fill(self, lin, write, user) -> bool:
        """The common hidden fault, in one function (it is shadow paging's hot path): the
        guest pages with a 4 KiB PTE that allows the access, to a frame of its RAM that
        is no page table being written, through a guest table whose shadow is already
        linked in the current root. Fills it and returns True; False leaves every other
        case to the general path (nothing changed)."""
        if not self.guest_cr0 & CR0_PG or lin >> 22 == HOLE_PDI:
            return False
        m32 = self._m32
        ram = self.ram
        pde_pa = (self.guest_cr3 & CR3_PD_MASK) | ((lin >> 22) << 2)
        if pde_pa >= ram:
            return False
        pde = m32[pde_pa >> 2]
        if not pde & PTE_P or (pde & PTE_PS and self.guest_cr4 & CR4_PSE):
            return False
        pte_pa = (pde & PTE_FRAME) | ((lin >> 10) & 0xFFC)
        if pte_pa >= ram:
            return False
        pte = m32[pte_pa >> 2]
        rights = pde & pte & RIGHTS
        if not pte & PTE_P or (user and (not rights & PTE_US or (write and not rights & PTE_RW))) \
                or (write and not rights & PTE_RW):
            return False                        # (true faults; CR0.WP = 0 cases) general path
        gfn = pte >> 12
        shadowed = self.shadowed
        if gfn >= self.ram_frames or (write and gfn in shadowed and self._traced(gfn)):
            return False
        if write and gfn in self.code_frames:
            return False
        sp = self.pages.get((pde >> 12, 1, False, pde & RIGHTS))
        if sp is None:
            return False
        spde = m32[(self.root.hpa >> 2) + (lin >> 22)]
        if not spde & PTE_P or (spde & PTE_FRAME) != sp.hpa:
            return False
        # the hardware's A and D (SDM 4.8), then the shadow entry
        if not pde & PTE_A:
            self._set_guest_flags(pde_pa, pde, PTE_A)
        new = pte | PTE_A | (PTE_D if write else 0)
        if new != pte:
            if self.unsync_enabled or self._pgq[pte_pa >> 12] & L.PG_CODE:
                self._set_guest_flags(pte_pa, pte, new & (PTE_A | PTE_D))
            else:
                self._m8[pte_pa] = new & 0xFF    # (byte 0 holds A and D)
        self._set_spte(sp, (lin >> 12) & 0x3FF, gfn, rights, new & PTE_D, write, user)
        self._stamp += 1
        sp.used = self._stamp
        sp.writes = 0
        self.counters["hidden_faults"] += 1
        return True

    # ---- guest memory, as the monitor reaches it ------------------------------------------
    def translate(self, lin: int, write: bool, user: bool) -> int:
        """Guest-physical address of ``lin`` through the *guest's* tables, setting its A
        and D flags as the processor would; :class:`GuestPageFault` if they refuse. For
        a monitor reading or writing guest memory by linear address (reflecting an
        exception, emulating an instruction)."""
        lin &= 0xFFFFFFFF
        if self.hole_table is not None and lin >> 22 == HOLE_PDI:
            # the monitor's own region (its GDT and TSS): its page table, not the guest's
            pte = self._m32[(self.hole_table >> 2) + ((lin >> 12) & 0x3FF)]
            if not pte & PTE_P or user or (write and not pte & PTE_RW):
                raise ShadowError(f"linear {lin:#010x} is in the monitor's region and "
                                  "not open to this access")
            return (pte & PTE_FRAME) | (lin & 0xFFF)
        if not self.paging:
            return lin
        walk = self._guest_walk(lin, PFEC_W if write else 0, PFEC_U if user else 0)
        if walk[0] is not None:
            raise GuestPageFault(lin, walk[0], f"linear address {lin:#010x}: #PF"
                                               f"({walk[0]:#x}) in the guest's tables")
        _, pde_pa, pde, pte_pa, pte = walk
        if pte_pa is None:
            gpa = (pde & PDE_FRAME_4M) | (lin & 0x3FFFFF)
            self._set_guest_flags(pde_pa, pde, PTE_A | (PTE_D if write else 0))
        else:
            gpa = (pte & PTE_FRAME) | (lin & 0xFFF)
            self._set_guest_flags(pde_pa, pde, PTE_A)
            self._set_guest_flags(pte_pa, pte, PTE_A | (PTE_D if write else 0))
        return gpa

    def write_guest(self, gpa: int, data: bytes) -> None:
        """Store ``data`` at guest-physical ``gpa`` for the guest (an emulated store to a
        traced page table, or any monitor write) and bring the shadows of the entries it
        changed in step: the shadow entries derived from them are dropped."""
        n = len(data)
        if gpa < 0 or gpa + n > self.ram:
            raise ShadowError(f"a store of {n} bytes at {gpa:#x} is outside the guest's RAM")
        first, last = gpa & ~3, (gpa + n + 3) & ~3
        old = bytes(self._mem[first:last])
        self._mem[gpa:gpa + n] = np.frombuffer(bytes(data), np.uint8)
        self._code_written(gpa >> 12, (gpa + n - 1) >> 12)
        self.written(first, old, bytes(self._mem[first:last]))

    def written(self, first: int, old: bytes, new: bytes) -> None:
        """Guest memory from ``first`` (4-byte aligned) was written, ``old`` -> ``new``:
        every shadow page of a frame written counts one write (for the flood rule, even
        if nothing changed, as KVM counts them); the shadow entries derived from guest
        entries that changed are dropped."""
        for frame in range(first >> 12, (first + len(old) - 1 >> 12) + 1):
            sps = self.shadowed.get(frame)
            if not sps:
                continue
            lo = max(first, frame << 12)
            hi = min(first + len(old), (frame + 1) << 12)
            changed = [(gpa & 0xFFF) >> 2 for gpa in range(lo, hi, 4)
                       if old[gpa - first:gpa - first + 4] != new[gpa - first:gpa - first + 4]]
            for sp in list(sps):
                if sp.unsync:
                    continue
                sp.writes += 1
                for idx in changed:
                    self._drop_entry(sp, idx)
                if sp.writes >= FLOOD_WRITES and sp is not self.root and sp.hpa in self.by_hpa:
                    self.counters["unshadowed"] += 1
                    self._zap(sp)

    def unprotect(self, gfn: int) -> bool:
        """Stop shadowing guest frame ``gfn`` (drop every shadow page of it), so that a
        store the monitor cannot emulate is re-executed by the guest itself (KVM's
        unprotect-and-retry). False when ``gfn`` is the current root's directory, which
        cannot stop being shadowed while it is in use."""
        sps = list(self.shadowed.get(gfn, ()))
        if self.root in sps:
            return False
        for sp in sps:
            if sp.hpa in self.by_hpa:
                self.counters["unshadowed"] += 1
                self._zap(sp)
        return True

    def make_unsync(self, gfn: int) -> bool:
        """Unsync mode: leave guest page table ``gfn`` writable if every shadow of it is
        a leaf table (directories are never unsync); True if done."""
        sps = self.shadowed.get(gfn, ())
        if not self.unsync_enabled or not sps or any(sp.level != 1 for sp in sps):
            return False
        snap = bytes(self._mem[gfn << 12:(gfn + 1) << 12])
        for sp in sps:
            sp.unsync = True
            sp.snapshot = bytearray(snap)
        self.counters["unsynced"] += 1
        for addr in self._mappings_of(gfn):         # its mappings: writable on next use
            self._drop_spte_at(addr)
        return True

    # ---- code traces (a binary translator's TC coherence) --------------------------------
    def trace_code(self, gfn: int) -> None:
        """Guest frame ``gfn`` holds code a binary translator translated: from now on a
        write to it faults as its own kind (:data:`CODE`) so that the translator sees
        self-modifying code (Adams & Agesen 2006, sec. 2.3: traces keep the translation
        cache coherent). Its writable shadow mappings lose R/W at once, in the direct
        map (paging off) as in the paged shadows."""
        if gfn in self.code_frames:
            return
        self.code_frames.add(gfn)
        self._write_protect(gfn)

    def untrace_code(self, gfn: int) -> None:
        """Stop tracing guest frame ``gfn`` for code: the next write to it is a hidden
        fault that makes its shadow entry writable again."""
        self.code_frames.discard(gfn)

    def guest_frame(self, lin: int):
        """The guest frame linear ``lin`` maps to through the guest's tables for a
        supervisor read, or None if they do not map it -- a look with no side effect
        (no A flag set, nothing filled), for a translator checking that translated code
        is still where it was."""
        lin &= 0xFFFFFFFF
        if not self.paging:
            return lin >> 12 if lin >> 12 < self.ram_frames else None
        try:
            walk = self._guest_walk(lin, 0, 0)
        except ShadowError:
            return None
        if walk[0] is not None:
            return None
        _, _, pde, pte_pa, pte = walk
        if pte_pa is None:
            return ((pde & PDE_FRAME_4M) | (lin & 0x3FF000)) >> 12
        return pte >> 12

    # ---- bookkeeping --------------------------------------------------------------------
    def reset(self) -> None:
        """Drop every shadow page (a change of paging mode)."""
        self.root = None
        for sp in list(self.by_hpa.values()):
            if sp.hpa in self.by_hpa:
                self._zap(sp)
        self.roots.clear()
        tlb_flush_vpid(self._st, self._tlb, self.vpid, 0)

    _STATE = ("pages", "by_hpa", "shadowed", "roots", "root", "counters",
              "guest_cr0", "guest_cr3", "guest_cr4", "_free", "_stamp", "code_frames")

    def snapshot(self):
        """The bookkeeping (the shadow tables themselves are in the machine's memory,
        which the machine's snapshot holds)."""
        return copy.deepcopy({k: getattr(self, k) for k in self._STATE})

    def restore(self, snap) -> None:
        for k, v in copy.deepcopy(snap).items():
            setattr(self, k, v)

    @property
    def stats(self) -> dict:
        return dict(self.counters)

    def describe(self) -> str:
        """The shadow state in a few lines (for a notebook)."""
        roots = ", ".join(f"{k[0] << 12:#x}" if k[0] is not None else "direct"
                          for k in self.roots)
        return (f"shadow MMU: {len(self.by_hpa)} shadow pages of {len(self.pool)} "
                f"({len(self.roots)} roots: {roots}); "
                f"{sum(1 for s in self.shadowed.values() if s)} guest page tables traced")

    # ---- internals: the guest's tables ---------------------------------------------------
    def _guest_walk(self, lin, write, user):
        """(None, pde_pa, pde, pte_pa, pte) if the guest's tables allow the access, else
        (error_code,): the 32-bit walk of hvsim/mmu/paging.py's _walk, on guest memory."""
        m32 = self._m32
        err = write | user
        pde_pa = (self.guest_cr3 & CR3_PD_MASK) | ((lin >> 22) << 2)
        self._check_table(pde_pa, lin)
        pde = m32[pde_pa >> 2]
        if not pde & PTE_P:
            return (err,)
        if pde & PTE_PS and self.guest_cr4 & CR4_PSE:
            if pde & PDE_4M_RSVD:
                return (err | PFEC_P | PFEC_RSVD,)
            if self._denied(pde & RIGHTS, write, user):
                return (err | PFEC_P,)
            return None, pde_pa, pde, None, 0
        pte_pa = (pde & PTE_FRAME) | (((lin >> 12) & 0x3FF) << 2)
        self._check_table(pte_pa, lin)
        pte = m32[pte_pa >> 2]
        if not pte & PTE_P:
            return (err,)
        if self._denied(pde & pte & RIGHTS, write, user):
            return (err | PFEC_P,)
        return None, pde_pa, pde, pte_pa, pte

    def _denied(self, rights, write, user):
        # SDM Vol. 3A, 4.6.1, as paging.py's _denied
        if user:
            return not rights & PTE_US or (write and not rights & PTE_RW)
        return bool(write and self.guest_cr0 & CR0_WP and not rights & PTE_RW)

    def _check_table(self, pa, lin):
        if pa >= self.ram:
            raise ShadowError(f"the guest's page walk for {lin:#010x} reads an entry at "
                              f"physical {pa:#010x}, beyond its {self.ram:#x} bytes of RAM")

    def _set_guest_flags(self, pa, entry, bits):
        """Set A/D ``bits`` in the guest entry at ``pa`` if clear (byte 0 only, as the
        processor writes them); an unsync table's snapshot keeps the change out of the
        next resync's comparison."""
        if entry & bits == bits:
            return
        value = (entry | bits) & 0xFF
        self._mem[pa] = value
        self._code_written(pa >> 12, pa >> 12)
        for sp in self.shadowed.get(pa >> 12, ()):
            if sp.unsync:
                sp.snapshot[pa & 0xFFF] = value

    def _code_written(self, f0, f1):
        pg = self._pg
        for f in range(f0, f1 + 1):
            if pg[f] & L.PG_CODE:               # as a guest store does (paging.py _smc_check)
                pg[f] = (pg[f] & ~L.PG_CODE) + L.PG_GEN_ONE

    def _traced(self, gfn):
        sps = self.shadowed.get(gfn)
        if not sps:
            return False
        for sp in sps:
            if not sp.unsync:
                return True
        return False

    # ---- internals: filling -------------------------------------------------------------
    def _fill(self, lin, write, user, pde_pa, pde, pte_pa, pte, gfn):
        large = pte_pa is None
        if large:
            self._set_guest_flags(pde_pa, pde, PTE_A | (PTE_D if write else 0))
            rights, dirty = pde & RIGHTS, (pde & PTE_D) or write
            key = ((pde & PDE_FRAME_4M) >> 12, 1, True, pde & RIGHTS)
        else:
            self._set_guest_flags(pde_pa, pde, PTE_A)
            self._set_guest_flags(pte_pa, pte, PTE_A | (PTE_D if write else 0))
            rights, dirty = pde & pte & RIGHTS, (pte & PTE_D) or write
            key = (pde >> 12, 1, False, pde & RIGHTS)
        root = self.root
        sp = self.pages.get(key)
        pdi = lin >> 22
        if sp is None:
            sp = self._new_page(key, keep=root)
        self._link(root, pdi, sp)
        self._stamp += 1
        sp.used = self._stamp
        sp.writes = 0
        root.writes = 0
        self._set_spte(sp, (lin >> 12) & 0x3FF, gfn, rights, dirty, write, user)

    def _set_spte(self, sp, idx, gfn, rights, dirty, write, user):
        """The shadow PTE for guest frame ``gfn`` with the guest's combined ``rights``."""
        flags = PTE_P | (rights & PTE_US)
        code = gfn in self.code_frames
        if rights & PTE_RW and dirty and not code and not self._traced(gfn):
            flags |= PTE_RW
        elif (write and not user and not self.guest_cr0 & CR0_WP and not code
              and not rights & PTE_RW and not self._traced(gfn)):
            flags = PTE_P | PTE_RW            # CR0.WP = 0: writable, supervisor only (KVM)
        self._m32[(sp.hpa >> 2) + idx] = (gfn << 12) | flags
        self.counters["shadow_fills"] += 1

    def _direct_fault(self, gpa, write):
        """Paging off: the direct map's entry for ``gpa`` is missing or read-only."""
        gfn = gpa >> 12
        if write and self._traced(gfn):
            self.counters["trace_faults"] += 1
            return TRACE, gpa
        if write and gfn in self.code_frames:
            self.counters["code_faults"] += 1
            return CODE, gpa
        self.counters["hidden_faults"] += 1
        root = self.root
        key = ((gfn >> 10) << 10, 1, True, RIGHTS)
        sp = self.pages.get(key)
        if sp is None:
            sp = self._new_page(key, keep=root)
            self._link(root, gfn >> 10, sp)
        self._set_spte(sp, gfn & 0x3FF, gfn, RIGHTS, True, write, False)
        return HIDDEN_DONE

    def _switch_root(self) -> int:
        """Make the root of the current guest CR3 (or the direct map) current."""
        if self.paging:
            key = (self.guest_cr3 >> 12, 2, False, 0)
            if key[0] >= self.ram_frames:
                raise ShadowError(f"the guest loads CR3 {self.guest_cr3:#x}: its page "
                                  f"directory is beyond its {self.ram:#x} bytes of RAM")
        else:
            key = (None, 2, True, 0)
        sp = self.roots.get(key)
        if sp is not None:
            if self.paging:
                self.counters["cr3_cached"] += 1
            self.roots.move_to_end(key)
        else:
            if self.paging:
                self.counters["shadow_roots_built"] += 1
            while len(self.roots) >= ROOT_CACHE:
                _, old = self.roots.popitem(last=False)
                if old is self.root:
                    self.root = None
                self._zap(old)
            sp = self._new_page(key)
            self.roots[key] = sp
            if not self.paging:
                self._prefill_direct(sp)
        self.root = sp
        tlb_flush_vpid(self._st, self._tlb, self.vpid, 0)
        return sp.hpa

    def _prefill_direct(self, root):
        """Paging off: the direct map of the guest's RAM is built whole at once (KVM
        fills it on demand; a guest with paging off has no tables whose writes the
        monitor must see, and a full map spares it a hidden fault per page). Frames that
        are shadowed page tables stay read-only."""
        w32 = self._w32
        frames = np.arange(self.ram_frames, dtype=np.uint32)
        flags = np.full(self.ram_frames, PTE_P | PTE_RW | PTE_US, np.uint32)
        for gfn in self.shadowed:
            if gfn < self.ram_frames and self._traced(gfn):
                flags[gfn] &= ~np.uint32(PTE_RW)
        for gfn in self.code_frames:
            if gfn < self.ram_frames:
                flags[gfn] &= ~np.uint32(PTE_RW)
        for first in range(0, self.ram_frames, ENTRIES):
            key = (first, 1, True, RIGHTS)
            sp = self.pages.get(key) or self._new_page(key, keep=root)
            self._link(root, first >> 10, sp)
            n = min(ENTRIES, self.ram_frames - first)
            base = sp.hpa >> 2
            w32[base:base + n] = (frames[first:first + n] << 12) | flags[first:first + n]
            self.counters["shadow_fills"] += n

    # ---- internals: shadow pages --------------------------------------------------------
    def _new_page(self, key, keep=None) -> ShadowPage:
        if not self._free:
            self._reclaim(keep)
        hpa = self._free.pop()
        self._mem[hpa:hpa + PAGE] = 0
        gfn, level, direct, access = key
        sp = ShadowPage(hpa, gfn, level, direct, access)
        self.pages[key] = sp
        self.by_hpa[hpa] = sp
        self.counters["shadow_pages"] += 1
        if not direct:
            self.shadowed[gfn].add(sp)
            self._write_protect(gfn)
        if level == 2 and self.hole_table is not None:
            self._m32[(hpa >> 2) + HOLE_PDI] = self.hole_table | PTE_P | PTE_RW
        return sp

    def _write_protect(self, gfn):
        """A guest frame just became a shadowed page table: its writable shadow mappings
        lose R/W (a later write is a trace fault)."""
        m32 = self._m32
        for addr in self._mappings_of(gfn):
            v = m32[addr >> 2]
            if v & PTE_RW:
                m32[addr >> 2] = v & ~PTE_RW
                self._invalidate_spte(addr)

    def _mappings_of(self, gfn) -> list:
        """The shadow PTEs that map guest frame ``gfn`` (KVM keeps a reverse map; hvsim
        scans its few shadow tables, vectorized, when a frame becomes a page table --
        rarer than the fills a reverse map would slow down)."""
        out = []
        w32 = self._w32
        for sp in self.by_hpa.values():
            if sp.level != 1:
                continue
            base = sp.hpa >> 2
            words = w32[base:base + ENTRIES]
            hits = np.flatnonzero(((words >> 12) == gfn) & ((words & PTE_P) != 0))
            out.extend((sp.hpa + 4 * i) for i in hits.tolist())
        return out

    def _link(self, root, pdi, sp):
        """Point shadow PDE ``pdi`` of ``root`` at ``sp`` (the hardware may have set A in
        it since: only the frame is compared)."""
        addr = root.hpa + 4 * pdi
        old = self._m32[addr >> 2]
        if old & PTE_P:
            if (old & PTE_FRAME) == sp.hpa:
                return
            self._unlink_spde(addr, old)
        self._m32[addr >> 2] = sp.hpa | SPDE_FLAGS
        sp.parents.add(addr)
        self.counters["shadow_fills"] += 1

    def _unlink_spde(self, addr, value, flush=True):
        """Clear the shadow PDE at ``addr``; its table is freed when nothing points to it."""
        self._m32[addr >> 2] = 0
        child = self.by_hpa.get(value & PTE_FRAME)
        if child is not None:
            child.parents.discard(addr)
            if not child.parents:
                self._zap(child, flush=False)
        if flush:
            tlb_flush_vpid(self._st, self._tlb, self.vpid, 0)

    def _zap(self, sp, flush=True):
        """Free shadow page ``sp``: its entries, its links, its frame."""
        if sp.hpa not in self.by_hpa:
            return
        del self.by_hpa[sp.hpa]
        self.pages.pop(sp.key, None)
        if not sp.direct:
            s = self.shadowed.get(sp.gfn)
            if s is not None:
                s.discard(sp)
                if not s:
                    del self.shadowed[sp.gfn]
        m32 = self._m32
        base = sp.hpa >> 2
        if sp.level == 2:
            self.roots.pop(sp.key, None)
            if sp is self.root:
                self.root = None
            words = self._w32[base:base + ENTRIES]
            for i in np.flatnonzero(words & PTE_P).tolist():
                v = m32[base + i]
                if (v & PTE_FRAME) != self.hole_table:
                    self._unlink_spde(sp.hpa + 4 * i, v, flush=False)
        else:
            for addr in list(sp.parents):
                m32[addr >> 2] = 0
            sp.parents.clear()
        self._mem[sp.hpa:sp.hpa + PAGE] = 0
        self._free.append(sp.hpa)
        self.counters["shadow_pages_freed"] += 1
        if flush:
            tlb_flush_vpid(self._st, self._tlb, self.vpid, 0)

    def _reclaim(self, keep):
        """The pool is empty: drop the oldest roots but the current one, then the least
        recently used shadow table (not ``keep``) until a frame is free."""
        for key in list(self.roots):
            if self._free:
                return
            sp = self.roots[key]
            if sp is not self.root and sp is not keep:
                self.counters["reclaims"] += 1
                self._zap(sp)
        while not self._free:
            victims = [sp for sp in self.by_hpa.values()
                       if sp.level == 1 and sp is not keep]
            if not victims:
                raise ShadowError("the shadow pool is too small for one root and a table")
            self.counters["reclaims"] += 1
            self._zap(min(victims, key=lambda s: s.used))

    def _drop_entry(self, sp, idx):
        """The guest entry ``idx`` of the table ``sp`` shadows changed: drop what was
        derived from it (a shadow PDE of a root, a shadow PTE of a table)."""
        addr = sp.hpa + 4 * idx
        v = self._m32[addr >> 2]
        if not v & PTE_P:
            return
        self.counters["shadow_drops"] += 1
        if sp.level == 2:
            if (v & PTE_FRAME) != self.hole_table:
                self._unlink_spde(addr, v)
        else:
            self._drop_spte_at(addr)

    def _drop_spte(self, sp, idx):
        addr = sp.hpa + 4 * idx
        if self._m32[addr >> 2] & PTE_P:
            self.counters["shadow_drops"] += 1
            self._drop_spte_at(addr)

    def _drop_spte_at(self, addr):
        v = self._m32[addr >> 2]
        if not v & PTE_P:
            return
        self._m32[addr >> 2] = 0
        self._invalidate_spte(addr)

    def _invalidate_spte(self, addr):
        """Drop the TLB's copy of the shadow PTE at ``addr`` (every linear page it maps)."""
        sp = self.by_hpa.get(addr & ~0xFFF)
        if sp is None:
            return
        idx = (addr & 0xFFF) >> 2
        for parent in sp.parents:
            lin = (((parent & 0xFFF) >> 2) << 22) | (idx << 12)
            tlb_invlpg_vpid(self._st, self._tlb, self.vpid, lin)

    # ---- internals: unsync --------------------------------------------------------------
    def _resync_entry(self, sp, idx):
        off = idx * 4
        now = bytes(self._mem[(sp.gfn << 12) + off:(sp.gfn << 12) + off + 4])
        self.counters["resynced_entries"] += 1
        if bytes(sp.snapshot[off:off + 4]) != now:
            sp.snapshot[off:off + 4] = now
            self._drop_spte(sp, idx)

    def _resync_all(self):
        """At a CR3 load: every unsync table compared with its snapshot (changed entries
        dropped), then write-protected again."""
        unsync = {sp for sps in self.shadowed.values() for sp in sps if sp.unsync}
        for sp in unsync:
            if sp.hpa not in self.by_hpa:
                continue
            now = self._mem[sp.gfn << 12:(sp.gfn + 1) << 12].view(np.uint32)
            old = np.frombuffer(bytes(sp.snapshot), np.uint32)
            for idx in np.flatnonzero(now != old).tolist():
                self._drop_spte(sp, idx)
            self.counters["resynced_entries"] += ENTRIES
            self.counters["shadow_resyncs"] += 1
            sp.unsync = False
            sp.snapshot = None
        for gfn in {sp.gfn for sp in unsync}:
            if self._traced(gfn):
                self._write_protect(gfn)
