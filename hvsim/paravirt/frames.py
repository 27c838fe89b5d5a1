"""Direct paging's safety: page-frame types and reference counts, as Xen keeps them (Python).

Under Xen's paravirtualization the guest's page tables are real: the CPU's CR3 points at
the guest's own page directory, and the TLB caches its entries. What keeps the guest
from mapping memory that is not its own, or from rewriting a page table behind the
hypervisor's back, is a *type* on every frame (Barham et al., SOSP 2003, section 3.3.3;
the comment at the top of Xen's ``xen/arch/x86/mm.c``):

* a frame is used as a page directory (``L2``), a page table (``L1``), a writable page
  (``RW``), or none of them -- never two at once;
* the *type count* says how many uses hold the type: an L1 entry that maps a frame
  writable holds one RW reference to it; a directory entry holds one L1 reference to its
  table; a pin, and the current base pointer (CR3), hold one reference each;
* a type changes only when its count is 0; the first L1/L2 reference *validates* the
  frame: every entry in it is checked and takes its own references, so a table in use is
  always one the hypervisor has vetted; the last reference drops them again.

So a guest can never hold a writable mapping of a page table (the RW and L1/L2 types
exclude each other), and every change to a table in use goes through the hypervisor
(``mmu_update``, ``update_va_mapping``), which checks the new entry before writing it.

What an entry may hold (Xen's ``get_page_from_l1e`` / ``get_page_from_l2e``):

* a present entry must not set the flags of :data:`~hvsim.paravirt.abi.DISALLOWED_FLAGS`
  (PAT/PSE, GLOBAL): -EINVAL;
* an L1 entry may map only frames the domain owns, or the shared_info frame the
  hypervisor shares with it: -EPERM for any other (the hypervisor's own pages, memory
  beyond the guest's RAM);
* an L1 entry that maps a frame writable takes an RW reference: -EINVAL if the frame is
  a page table or directory;
* a directory entry takes an L1 reference on its table, which validates it: -EINVAL if
  the frame is already something else (a writable page, a directory); the hypervisor's
  own slots (:data:`~hvsim.paravirt.abi.FIRST_HYPERVISOR_PDE` and up) are the
  hypervisor's: a guest may not write them (-EINVAL), and validating a directory fills
  them in.

The TLB. A frame whose last writable mapping goes away may still be writable through a
stale TLB entry until the next flush; before such a frame becomes a page table the
hypervisor flushes the TLB (Xen checks the frame's ``tlbflush_timestamp`` for the same
reason).

Simplifications: one domain, so ``mfn == pfn`` (the guest sees machine frames, as a PV
guest does, and the machine-to-physical table is the identity); no total reference
count (a frame is never handed back to the hypervisor); no linear page tables (a
directory entry naming a directory is refused); 2-level 32-bit paging only. Not jitted.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from hvsim.arch.pte import PTE_A, PTE_D, PTE_P, PTE_RW
from hvsim.paravirt.abi import DISALLOWED_FLAGS, EINVAL, EPERM, FIRST_HYPERVISOR_PDE

__all__ = ["FrameTable", "NONE", "L1", "L2", "RW", "TYPE_NAMES", "FrameError",
           "ENTRIES", "PAGE"]

PAGE = 4096
ENTRIES = 1024                  # entries per table, 32-bit paging
NONE, L1, L2, RW = 0, 1, 2, 3
TYPE_NAMES = {NONE: "none", L1: "page table (L1)", L2: "page directory (L2)",
              RW: "writable page"}


class FrameError(Exception):
    """A request the type rules refuse: ``rc`` is Xen's negative errno, the message why."""

    def __init__(self, rc: int, message: str):
        super().__init__(message)
        self.rc = rc


class FrameTable:
    """The type and type count of every frame of one domain.

    mem : the machine's physical memory (numpy uint8), where the tables are.
    ram_frames : the domain's frames are 0 .. ram_frames - 1.
    shared : frames outside the RAM the domain may map (its shared_info page).
    hypervisor_pde : the directory entry the hypervisor puts in its slot of every
        directory it validates.
    flush_tlb : called when a frame that may still be writable through a stale TLB
        entry becomes a page table.
    """

    def __init__(self, mem: np.ndarray, ram_frames: int, shared: tuple, hypervisor_pde: int,
                 flush_tlb: Callable[[], None]):
        self.mem = mem
        self.words = mem.view(np.uint32)        # the same bytes, one page-table entry each
        self.ram_frames = ram_frames
        self.shared = frozenset(shared)
        self.hypervisor_pde = hypervisor_pde
        self._flush_tlb = flush_tlb
        n = ram_frames
        self.type = np.zeros(n, np.int8)
        self.count = np.zeros(n, np.int32)
        self.pinned = np.zeros(n, bool)
        self.shared_rw = {f: 0 for f in self.shared}     # RW refs of the shared frames
        self.stale = set()        # frames whose last RW mapping went since the last flush
        self.type_flushes = 0     # TLB flushes a type change forced
        self.validated = 0        # tables validated (each a scan of its entries)

    # ---- memory --------------------------------------------------------------------
    def entry(self, frame: int, index: int) -> int:
        return int(self.words[(frame << 10) + index])

    def entries(self, frame: int) -> list:
        at = frame << 10
        return self.words[at:at + ENTRIES].tolist()

    def _store(self, frame: int, index: int, value: int) -> None:
        self.words[(frame << 10) + index] = value

    def owned(self, frame: int) -> bool:
        return 0 <= frame < self.ram_frames

    def flushed(self) -> None:
        """The whole TLB was flushed: no stale writable translation is left."""
        self.stale.clear()

    # ---- types ---------------------------------------------------------------------
    def get_type(self, frame: int, t: int) -> None:
        """Take one reference of type ``t`` on ``frame`` (validating it for L1/L2)."""
        if not self.owned(frame):
            if t == RW and frame in self.shared:
                self.shared_rw[frame] += 1
                return
            raise FrameError(EPERM, f"frame {frame:#x} is not the domain's")
        cur = int(self.type[frame])
        if self.count[frame] == 0:
            # the type and this reference are held while the entries are checked, so an
            # entry naming the frame itself (writable, or as a table) is refused
            self.type[frame] = t
            self.count[frame] = 1
            if t in (L1, L2):
                if frame in self.stale:
                    self._flush_tlb()
                    self.type_flushes += 1
                try:
                    self._validate(frame, t)
                except FrameError:
                    self.type[frame], self.count[frame] = NONE, 0
                    raise
            return
        if cur != t:
            raise FrameError(EINVAL, f"frame {frame:#x} is a {TYPE_NAMES[cur]} "
                                     f"({int(self.count[frame])} uses): it cannot be a "
                                     f"{TYPE_NAMES[t]} too")
        self.count[frame] += 1

    def put_type(self, frame: int) -> None:
        """Drop one reference; the last one of a table drops its entries' references."""
        if not self.owned(frame):
            self.shared_rw[frame] -= 1
            return
        self.count[frame] -= 1
        if self.count[frame] == 0:
            t = int(self.type[frame])
            self.type[frame] = NONE
            if t in (L1, L2):
                self._devalidate(frame, t)
            elif t == RW:
                self.stale.add(frame)

    # ---- entries -------------------------------------------------------------------
    def get_l1e(self, e: int) -> None:
        """The references a present L1 entry holds (get_page_from_l1e)."""
        if not e & PTE_P:
            return
        if e & DISALLOWED_FLAGS:
            raise FrameError(EINVAL, f"entry {e:#010x} sets flags {e & DISALLOWED_FLAGS:#x} "
                                     "(PAT/PSE, GLOBAL) a guest may not use")
        frame = e >> 12
        if not self.owned(frame) and frame not in self.shared:
            raise FrameError(EPERM, f"entry {e:#010x} maps frame {frame:#x}, which is not the "
                                    "domain's (the hypervisor's memory, or beyond its RAM)")
        if e & PTE_RW:
            self.get_type(frame, RW)

    def put_l1e(self, e: int) -> None:
        if e & PTE_P and e & PTE_RW:
            self.put_type(e >> 12)

    def get_l2e(self, e: int, index: int) -> None:
        """The reference a present directory entry holds (get_page_from_l2e)."""
        if not e & PTE_P:
            return
        if index >= FIRST_HYPERVISOR_PDE:
            raise FrameError(EINVAL, f"directory slot {index} is the hypervisor's")
        if e & DISALLOWED_FLAGS:
            raise FrameError(EINVAL, f"directory entry {e:#010x} sets flags "
                                     f"{e & DISALLOWED_FLAGS:#x} (PSE, GLOBAL) a guest may "
                                     "not use")
        frame = e >> 12
        if not self.owned(frame):
            raise FrameError(EPERM, f"directory entry {e:#010x} names frame {frame:#x}, "
                                    "which is not the domain's")
        self.get_type(frame, L1)

    def put_l2e(self, e: int, index: int) -> None:
        if e & PTE_P and index < FIRST_HYPERVISOR_PDE:
            self.put_type(e >> 12)

    def _validate(self, frame: int, t: int) -> None:
        """Every entry of a new table takes its references, or none does."""
        self.validated += 1
        ents = self.entries(frame)
        done = []
        try:
            if t == L1:
                for e in ents:
                    self.get_l1e(e)
                    done.append(e)
            else:
                for i in range(FIRST_HYPERVISOR_PDE):
                    self.get_l2e(ents[i], i)
                    done.append(ents[i])
        except FrameError as err:
            for i, e in enumerate(done):
                self.put_l1e(e) if t == L1 else self.put_l2e(e, i)
            what = "page table" if t == L1 else "page directory"
            raise FrameError(err.rc, f"frame {frame:#x} cannot be a {what}: entry "
                                     f"{len(done)}: {err}") from None
        if t == L2:
            for i in range(FIRST_HYPERVISOR_PDE, ENTRIES):
                self._store(frame, i, self.hypervisor_pde if i == FIRST_HYPERVISOR_PDE else 0)

    def _devalidate(self, frame: int, t: int) -> None:
        ents = self.entries(frame)
        if t == L1:
            for e in ents:
                self.put_l1e(e)
        else:
            for i in range(FIRST_HYPERVISOR_PDE):
                self.put_l2e(ents[i], i)

    # ---- the hypercalls' work -----------------------------------------------------------
    def update(self, ptr: int, val: int, preserve_ad: bool = False) -> int:
        """``*ptr = val`` in a page table or directory in use (mod_l1_entry /
        mod_l2_entry): the new entry's references are taken before the old one's are
        dropped, and nothing changes if they cannot be. Returns the old entry."""
        frame, index = ptr >> 12, (ptr & 0xFFF) >> 2
        if ptr & 3:
            raise FrameError(EINVAL, f"ptr {ptr:#x} is not a 4-byte entry")
        if not self.owned(frame):
            raise FrameError(EPERM, f"ptr {ptr:#x} is not in the domain's memory")
        t = int(self.type[frame])
        if t not in (L1, L2) or self.count[frame] == 0:
            raise FrameError(EINVAL, f"ptr {ptr:#x} is in frame {frame:#x}, a "
                                     f"{TYPE_NAMES[t]}, not a page table in use")
        old = self.entry(frame, index)
        if preserve_ad:
            val = (val & ~(PTE_A | PTE_D)) | (old & (PTE_A | PTE_D))
        if t == L1:
            self.get_l1e(val)
            self._store(frame, index, val)
            self.put_l1e(old)
        else:
            if index >= FIRST_HYPERVISOR_PDE:
                raise FrameError(EINVAL, f"directory slot {index} is the hypervisor's")
            self.get_l2e(val, index)
            self._store(frame, index, val)
            self.put_l2e(old, index)
        return old

    def pin(self, frame: int, t: int) -> None:
        if not self.owned(frame):
            raise FrameError(EPERM, f"frame {frame:#x} is not the domain's")
        if self.pinned[frame]:
            raise FrameError(EINVAL, f"frame {frame:#x} is pinned already")
        self.get_type(frame, t)
        self.pinned[frame] = True

    def unpin(self, frame: int) -> None:
        if not self.owned(frame) or not self.pinned[frame]:
            raise FrameError(EINVAL, f"frame {frame:#x} is not pinned")
        self.pinned[frame] = False
        self.put_type(frame)

    # ---- for tests and the lessons ----------------------------------------------------
    def describe(self, frame: int) -> str:
        if not self.owned(frame):
            return f"frame {frame:#x}: not the domain's"
        t = int(self.type[frame])
        pin = ", pinned" if self.pinned[frame] else ""
        return f"frame {frame:#x}: {TYPE_NAMES[t]}, {int(self.count[frame])} uses{pin}"

    def check(self, base: Optional[int]) -> list:
        """Every broken invariant, in words (an empty list: all hold). Recounts every
        reference from the tables in memory and compares; ``base``: the directory the
        CPU uses (it holds a reference)."""
        want_count = np.zeros(self.ram_frames, np.int64)
        want_type = np.zeros(self.ram_frames, np.int8)
        problems = []
        shared = {f: 0 for f in self.shared}

        def want(f, t, why):
            if not self.owned(f):
                if t == RW and f in shared:
                    shared[f] += 1
                    return
                problems.append(f"{why}: frame {f:#x} is not the domain's")
                return
            if want_count[f] and want_type[f] != t:
                problems.append(f"{why}: frame {f:#x} is both a {TYPE_NAMES[int(want_type[f])]} "
                                f"and a {TYPE_NAMES[t]}")
            want_type[f] = t
            want_count[f] += 1

        tables = [f for f in range(self.ram_frames) if self.count[f] and self.type[f] in (L1, L2)]
        for f in tables:
            ents = self.entries(f)
            if self.type[f] == L2:
                for i in range(FIRST_HYPERVISOR_PDE):
                    e = ents[i]
                    if e & PTE_P:
                        want(e >> 12, L1, f"directory frame {f:#x}[{i}]")
                if ents[FIRST_HYPERVISOR_PDE] & ~(PTE_A | PTE_D) != self.hypervisor_pde:
                    problems.append(f"directory frame {f:#x}: the hypervisor's slot holds "
                                    f"{ents[FIRST_HYPERVISOR_PDE]:#x}")
            else:
                for i, e in enumerate(ents):
                    if e & PTE_P:
                        if e & DISALLOWED_FLAGS:
                            problems.append(f"table frame {f:#x}[{i}] = {e:#x} sets disallowed flags")
                        if e & PTE_RW:
                            want(e >> 12, RW, f"table frame {f:#x}[{i}]")
                        elif not self.owned(e >> 12) and (e >> 12) not in self.shared:
                            problems.append(f"table frame {f:#x}[{i}] maps foreign frame {e >> 12:#x}")
        for f in range(self.ram_frames):
            if self.pinned[f]:
                want(f, int(self.type[f]), f"pin of {f:#x}")
        if base is not None:
            want(base >> 12, L2, "the base pointer")
        for f in np.flatnonzero((self.count != want_count) | (want_count > 0)):
            got, exp = int(self.count[f]), int(want_count[f])
            if got != exp:
                problems.append(f"frame {f:#x}: {got} uses counted, {exp} found")
            elif self.type[f] != want_type[f]:
                problems.append(f"frame {f:#x}: typed {TYPE_NAMES[int(self.type[f])]}, used "
                                f"as {TYPE_NAMES[int(want_type[f])]}")
        for f, n in shared.items():
            if self.shared_rw[f] != n:
                problems.append(f"shared frame {f:#x}: {self.shared_rw[f]} writable uses "
                                f"counted, {n} found")
        return problems

    def snapshot(self):
        return (self.type.copy(), self.count.copy(), self.pinned.copy(), dict(self.shared_rw),
                set(self.stale), self.type_flushes, self.validated)

    def restore(self, snap) -> None:
        t, c, p, s, stale, n, v = snap
        self.type[:], self.count[:], self.pinned[:] = t, c, p
        self.shared_rw, self.stale, self.type_flushes, self.validated = dict(s), set(stale), n, v
