"""hvsim.mmu - paging and the TLB, and a readable page walk for the lessons (this file: not jitted).

The teaching path
-----------------
With paging off (CR0.PG = 0) a linear address *is* a physical address. With CR0.PG = 1
the processor translates every linear address through two tables in memory (Intel SDM
Vol. 3A, 4.3, "32-bit paging"):

1. **CR3** holds the physical address of the *page directory* (bits 31:12).
2. Bits 31:22 of the linear address pick one of its 1024 *page-directory entries*
   (PDE) at ``CR3 base + 4 * index``.
3. If the PDE has PS = 1 and CR4.PSE = 1 it maps a whole **4 MiB page** by itself:
   bits 31:22 of the PDE are the page frame, the low 22 bits of the address the offset.
4. Otherwise the PDE points to a *page table*; bits 21:12 of the address pick one of its
   1024 *page-table entries* (PTE), which gives the **4 KiB** frame; bits 11:0 are the
   offset. One memory reference per level: 2 for a 4 KiB page, 1 for a 4 MiB page.

Each entry (same layout at both levels, drawn in ``hvsim/arch/pte.py``) carries
P (present), R/W, U/S, A (accessed), D (dirty), G (global). A translation fails with a
**page fault** (#PF, vector 14; the address goes to CR2 and the error code says why:
P = 0 "not present" or 1 "protection", W "it was a write", U "it came from CPL 3",
RSVD "a reserved bit was set"; SDM 4.7):

* *not present*: P = 0 in the PDE or the PTE;
* *protection* (SDM 4.6): the rights of the two levels are combined - a page is user-
  accessible only if U/S = 1 in both, writable only if R/W = 1 in both. User code may
  not touch a supervisor page nor write a read-only one; the kernel may write a
  read-only page unless CR0.WP = 1 (copy-on-write needs WP = 1).

When a translation succeeds the processor sets the **A** flag of each entry it used and,
for a write, the **D** flag of the final entry (SDM 4.8): this is how an OS learns which
pages to swap out and which ones it must write back.

Walking two tables for every load and store would be far too slow, so the processor
caches translations in the **TLB** (SDM 4.10). The TLB is *not* kept coherent with the
tables: after changing an entry the OS must invalidate it - ``INVLPG`` for one page, a
write to CR3 for everything but the *global* pages (G = 1, honoured when CR4.PGE = 1:
kernel pages that every address space shares). This is exactly what a virtual machine
monitor exploits and pays for: a shadow-paging VMM traps those invalidations to keep its
shadow tables in step, and with nested paging (EPT) every guest table reference is itself
translated, so a TLB miss costs many more memory references. hvsim counts them all
(``tlb_hits``, ``tlb_misses``, ``page_walks``, ``walk_refs``, ``tlb_flushes``, ``invlpg``).

Where things live
-----------------
* ``hvsim/mmu/paging.py`` (jitted): ``translate``, ``read_lin``, ``write_lin``,
  ``read_phys``, ``write_phys`` - what the CPU runs on every access.
* ``hvsim/mmu/tlb.py`` (jitted): the set-associative TLB, ``tlb_flush``, ``tlb_invlpg``.
* this module: :func:`walk`, a plain-Python walk that shows every step and changes
  nothing, and :func:`tlb_contents`, a readable dump of the TLB.

>>> import numpy as np
>>> mem = np.zeros(1 << 20, np.uint8)
>>> def put(addr, value): mem[addr:addr + 4] = np.frombuffer(value.to_bytes(4, "little"), np.uint8)
>>> put(0x1000 + 4 * 0x001, 0x2000 | 0x7)        # PDE[1] -> page table at 0x2000, P RW US
>>> put(0x2000 + 4 * 0x234, 0x5000 | 0x3)        # PTE[0x234] -> frame 0x5000, P RW
>>> w = walk(mem, cr3=0x1000, cr4=0, lin=0x00634ABC)
>>> hex(w.pa), w.page_size, w.user, w.writable
('0x5abc', 4096, False, True)
>>> w.error_code(user=True)                       # user read of a supervisor page
5
"""
from dataclasses import dataclass

from hvsim.arch.cr import CR3_PD_MASK, CR4_PSE, CR4_PGE
from hvsim.arch.pte import (PTE_P, PTE_RW, PTE_US, PTE_PWT, PTE_PCD, PTE_A, PTE_D, PTE_PS,
                           PTE_G, PTE_FRAME, PDE_FRAME_4M, PFEC_P, PFEC_W, PFEC_U, PFEC_RSVD)

__all__ = ["walk", "WalkResult", "tlb_contents", "TlbEntry", "entry_flags"]

# 4 MiB PDE bits 21:13 are reserved (SDM Vol. 3A, Table 4-4, MAXPHYADDR = 32, no PSE-36).
_PDE_4M_RSVD = 0x003FE000

_FLAG_NAMES = ((PTE_P, "P"), (PTE_RW, "RW"), (PTE_US, "US"), (PTE_PWT, "PWT"),
               (PTE_PCD, "PCD"), (PTE_A, "A"), (PTE_D, "D"), (PTE_PS, "PS"), (PTE_G, "G"))


def entry_flags(entry):
    """The set flag names of a paging entry, e.g. ``'P RW US A'`` ('-' if none)."""
    names = [name for bit, name in _FLAG_NAMES if entry & bit]
    return " ".join(names) if names else "-"


@dataclass
class WalkResult:
    """One 32-bit page walk, step by step (see :func:`walk`).

    ``fault`` is None when the address translates, else ``"not-present"``,
    ``"reserved"`` (a reserved bit is set) or ``"bus-error"`` (a table lies outside
    memory); ``fault_level`` then says which entry: ``"PDE"`` or ``"PTE"``.
    ``user`` / ``writable`` are the rights combined over both levels (SDM 4.6).
    """
    lin: int
    cr3: int
    pde_addr: int
    pde: int | None = None
    pte_addr: int | None = None
    pte: int | None = None
    large: bool = False
    page_size: int | None = None
    frame: int | None = None
    pa: int | None = None
    user: bool = False
    writable: bool = False
    global_page: bool = False
    accessed: bool = False
    dirty: bool = False
    refs: int = 0
    fault: str | None = None
    fault_level: str | None = None

    def error_code(self, write=False, user=False, wp=False):
        """The #PF error code (SDM 4.7, Figure 4-12) this access would raise, or None.

        ``write``: a write access; ``user``: made at CPL 3; ``wp``: CR0.WP is set.
        An instruction fetch is a read here (32-bit paging has no NX).
        """
        if self.fault == "bus-error":
            raise ValueError("no #PF: the walk touched memory outside the machine")
        code = (PFEC_W if write else 0) | (PFEC_U if user else 0)
        if self.fault == "not-present":
            return code
        if self.fault == "reserved":
            return code | PFEC_P | PFEC_RSVD
        if user and not self.user:
            return code | PFEC_P
        if write and not self.writable and (user or wp):
            return code | PFEC_P
        return None

    def __str__(self):
        lines = [f"linear 0x{self.lin:08x} = PDE index 0x{self.lin >> 22:03x}, "
                 f"PTE index 0x{(self.lin >> 12) & 0x3FF:03x}, offset 0x{self.lin & 0xFFF:03x}",
                 f"CR3 0x{self.cr3:08x}: page directory at 0x{self.cr3 & CR3_PD_MASK:08x}"]
        if self.pde is None:
            lines.append(f"PDE at 0x{self.pde_addr:08x}: outside memory -> bus error")
            return "\n".join(lines)
        lines.append(f"PDE at 0x{self.pde_addr:08x} = 0x{self.pde:08x} ({entry_flags(self.pde)})")
        if self.pte_addr is not None:
            if self.pte is None:
                lines.append(f"PTE at 0x{self.pte_addr:08x}: outside memory -> bus error")
                return "\n".join(lines)
            lines.append(f"PTE at 0x{self.pte_addr:08x} = 0x{self.pte:08x} "
                         f"({entry_flags(self.pte)})")
        if self.fault is not None:
            lines.append(f"-> #PF: {self.fault} ({self.fault_level})")
        else:
            size = "4 MiB" if self.large else "4 KiB"
            rights = ("user" if self.user else "supervisor") + (
                ", writable" if self.writable else ", read-only")
            lines.append(f"-> {size} page at 0x{self.frame:08x} + offset = physical "
                         f"0x{self.pa:08x} ({rights}{', global' if self.global_page else ''})")
        lines.append(f"{self.refs} memory reference(s)")
        return "\n".join(lines)


def _read32(memory, pa):
    if pa + 4 > len(memory):
        return None
    return int.from_bytes(bytes(memory[pa:pa + 4]), "little")


def walk(memory, cr3, cr4, lin):
    """Walk the 32-bit page tables for linear address ``lin``; read only.

    ``memory`` is guest-physical memory (a numpy uint8 array, e.g. ``Machine.memory``).
    Nothing is modified - no A/D flags are set and no TLB is consulted, so the walk
    shows what the tables *in memory* say (the TLB may still hold an older answer).
    Returns a :class:`WalkResult`; ``print()`` it for the narrated walk.
    """
    lin &= 0xFFFFFFFF
    r = WalkResult(lin=lin, cr3=cr3, pde_addr=(cr3 & CR3_PD_MASK) | ((lin >> 22) << 2))
    r.pde = _read32(memory, r.pde_addr)
    r.refs = 1
    if r.pde is None:
        r.fault, r.fault_level = "bus-error", "PDE"
        return r
    if not r.pde & PTE_P:
        r.fault, r.fault_level = "not-present", "PDE"
        return r
    if r.pde & PTE_PS and cr4 & CR4_PSE:
        r.large = True
        if r.pde & _PDE_4M_RSVD:
            r.fault, r.fault_level = "reserved", "PDE"
            return r
        final = r.pde
        r.page_size = 4 << 20
        r.frame = r.pde & PDE_FRAME_4M
        r.pa = r.frame | (lin & 0x3FFFFF)
        rights = r.pde
    else:
        r.pte_addr = (r.pde & PTE_FRAME) | (((lin >> 12) & 0x3FF) << 2)
        r.pte = _read32(memory, r.pte_addr)
        r.refs = 2
        if r.pte is None:
            r.fault, r.fault_level = "bus-error", "PTE"
            return r
        if not r.pte & PTE_P:
            r.fault, r.fault_level = "not-present", "PTE"
            return r
        final = r.pte
        r.page_size = 4096
        r.frame = r.pte & PTE_FRAME
        r.pa = r.frame | (lin & 0xFFF)
        rights = r.pde & r.pte
    r.user = bool(rights & PTE_US)
    r.writable = bool(rights & PTE_RW)
    r.global_page = bool(final & PTE_G and cr4 & CR4_PGE)
    r.accessed = bool(final & PTE_A)
    r.dirty = bool(final & PTE_D)
    return r


@dataclass
class TlbEntry:
    """One valid TLB entry, as :func:`tlb_contents` shows it."""
    set: int
    way: int
    lin_page: int      # linear address of the 4 KiB page
    frame: int         # physical address of the 4 KiB frame
    user: bool
    writable: bool
    dirty: bool
    large: bool        # cached from a 4 MiB page (one entry per 4 KiB slice)
    global_page: bool
    stamp: int         # LRU stamp (larger = used more recently)


def tlb_contents(st, tlb):
    """The valid entries of the TLB, set by set (plain Python; for display)."""
    from hvsim.arch.layout import CFG_TLB_SETS, CFG_TLB_WAYS, TLB_FIELDS
    from hvsim.mmu.tlb import (TLB_TAG, TLB_FRAME, TLB_FLAGS, TLB_LRU, TLBF_US, TLBF_RW,
                               TLBF_D, TLBF_LARGE, TLBF_G)
    sets, ways = int(st[CFG_TLB_SETS]), int(st[CFG_TLB_WAYS])
    out = []
    for s in range(sets):
        for w in range(ways):
            e = (s * ways + w) * TLB_FIELDS
            tag = int(tlb[e + TLB_TAG])
            if tag == 0:
                continue
            fl = int(tlb[e + TLB_FLAGS])
            out.append(TlbEntry(s, w, (tag - 1) << 12, int(tlb[e + TLB_FRAME]) << 12,
                                bool(fl & TLBF_US), bool(fl & TLBF_RW), bool(fl & TLBF_D),
                                bool(fl & TLBF_LARGE), bool(fl & TLBF_G), int(tlb[e + TLB_LRU])))
    return out
