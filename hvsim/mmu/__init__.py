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

Nested paging: EPT
------------------
A guest of a VMM believes that CR3 and its page-table entries hold physical addresses;
under VT-x with EPT they are *guest-physical*, and the processor translates each one
through a second set of tables that the VMM owns, the extended page tables (SDM Vol. 3C,
29.3): the EPTP (a VMCS field) points to a 4-level structure -- PML4, page-directory-
pointer table, page directory, page table, 512 entries of 8 bytes each -- whose entries
give R(ead), W(rite) and (e)X(ecute) rights instead of P, R/W and U/S. So one guest walk
is really 2 + 1 walks of EPT (one per guest entry, one for the datum): a cold access
makes (2 + 1)(4 + 1) - 1 = 14 memory references instead of 2 (Bhargava et al., ASPLOS
2008), which is why the TLB, caching the whole guest-linear -> host-physical
translation, matters even more. An access that EPT does not allow is not a guest #PF:
it is an *EPT violation*, a VM exit to the VMM (reason 48), which may map the page and
resume the guest -- the same "trap, fix the tables, restart" as a page fault, one level
down. An entry with a value the processor does not support is an *EPT
misconfiguration* (reason 49). hvsim counts ``ept_walks`` and ``ept_walk_refs`` beside
the guest's own ``walk_refs``.

Where things live
-----------------
* ``hvsim/mmu/paging.py`` (jitted): ``translate``, ``read_lin``, ``write_lin``,
  ``read_phys``, ``write_phys`` - what the CPU runs on every access.
* ``hvsim/mmu/ept.py`` (jitted): the EPT walk, violations, misconfigurations, A/D flags.
* ``hvsim/mmu/tlb.py`` (jitted): the set-associative TLB, ``tlb_flush``, ``tlb_invlpg``.
* ``hvsim/mmu/shadow.py`` (Python): shadow page tables for a software monitor without
  EPT -- hidden, true and trace faults, the cache of four shadow roots, unsync pages.
* this module: :func:`walk` and :func:`walk_ept`, plain-Python walks that show every
  step and change nothing, and :func:`tlb_contents`, a readable dump of the TLB.

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

The same tables as a guest's, under an EPT that maps guest-physical 0x5000 elsewhere:

>>> def put64(addr, value): mem[addr:addr + 8] = np.frombuffer(value.to_bytes(8, "little"), np.uint8)
>>> put64(0x80000, 0x81000 | 0x7)                 # PML4E -> PDPT, R W X
>>> put64(0x81000, 0x82000 | 0x7)                 # PDPTE -> PD
>>> put64(0x82000, 0x83000 | 0x7)                 # PDE -> page table
>>> for gpa in (0x1000, 0x2000): put64(0x83000 + 8 * (gpa >> 12), gpa | 0x7 | 6 << 3)
>>> put64(0x83000 + 8 * 5, 0x9000 | 0x5 | 6 << 3)  # GPA 0x5000 -> HPA 0x9000, R X (no W)
>>> e = walk_ept(mem, eptp=0x80000 | 0x1E, gpa=0x5abc)
>>> hex(e.hpa), e.readable, e.writable, e.refs
('0x9abc', True, False, 4)
>>> w = walk(mem, cr3=0x1000, cr4=0, lin=0x00634ABC, eptp=0x80000 | 0x1E)
>>> hex(w.pa), hex(w.hpa), w.refs, w.ept_refs                 # 2 + 3 * 4 = 14 references
('0x5abc', '0x9abc', 2, 12)
>>> w.ept_violation(write=True)                   # Table 28-7: write, R and X allowed, datum
426
"""
from dataclasses import dataclass, field

from hvsim.arch import vmx as _X
from hvsim.arch.cr import CR3_PD_MASK, CR4_PSE, CR4_PGE
from hvsim.arch.ept import (EPTP_AD, EPTP_PML4_MASK, EPT_R, EPT_W, EPT_X, EPT_RWX, EPT_LARGE,
                           EPT_ADDR, EPT_ADDR_2M, EPT_OFFSET_2M,
                           EPT_NONLEAF_RSVD, EPT_2M_RSVD, EPT_MEMTYPE_SHIFT,
                           EPT_MEMTYPE_RESERVED, EPT_INDEX_MASK)
from hvsim.arch.pte import (PTE_P, PTE_RW, PTE_US, PTE_PWT, PTE_PCD, PTE_A, PTE_D, PTE_PS,
                           PTE_G, PTE_FRAME, PDE_FRAME_4M, PFEC_P, PFEC_W, PFEC_U, PFEC_RSVD)

__all__ = ["walk", "WalkResult", "walk_ept", "EptWalkResult", "tlb_contents", "TlbEntry",
           "entry_flags"]

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
    # with ``eptp`` (a guest under EPT): the addresses above are guest-physical, these
    # host-physical; ``ept`` holds the EPT walks made, in order (entries, then the datum)
    eptp: int | None = None
    pde_hpa: int | None = None
    pte_hpa: int | None = None
    hpa: int | None = None
    ept: list = field(default_factory=list)

    @property
    def ept_refs(self):
        """Memory references made by the EPT walks (``refs`` counts the guest's own)."""
        return sum(e.refs for e in self.ept)

    def error_code(self, write=False, user=False, wp=False):
        """The #PF error code (SDM 4.7, Figure 4-12) this access would raise, or None.

        ``write``: a write access; ``user``: made at CPL 3; ``wp``: CR0.WP is set.
        An instruction fetch is a read here (32-bit paging has no NX).
        """
        if self.fault == "bus-error":
            raise ValueError("no #PF: the walk touched memory outside the machine")
        if self.fault in ("ept-violation", "ept-misconfig"):
            raise ValueError(f"no #PF: an {self.fault} (a VM exit) on the {self.fault_level}")
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

    def ept_violation(self, write=False, fetch=False):
        """The exit qualification (SDM Vol. 3C, Table 28-7) of the EPT violation this
        access would cause, or None. Only for a walk made with ``eptp``; the guest's own
        checks (:meth:`error_code`) come first. A misconfiguration is no violation (see
        ``fault`` and :attr:`ept_misconfigured`). Not checked here: the EPT write check
        of the A/D-flag writes the guest walk would make (the core does,
        hvsim/mmu/ept.py)."""
        if self.eptp is None:
            raise ValueError("not a walk under EPT: give walk() the eptp")
        entry_kind = _X.EPT_QUAL_READ | (_X.EPT_QUAL_WRITE if self.eptp & EPTP_AD else 0)
        datum = self.pa is not None
        for i, e in enumerate(self.ept):
            final = datum and i == len(self.ept) - 1
            if final:
                kind = (_X.EPT_QUAL_FETCH if fetch else
                        _X.EPT_QUAL_WRITE if write else _X.EPT_QUAL_READ)
            else:
                kind = entry_kind
            if e.fault in ("misconfig", "bus-error"):
                return None
            if e.fault == "not-present" or kind & ~e.rights & EPT_RWX:
                return ((kind & EPT_RWX) | (e.rights << 3) | _X.EPT_QUAL_LINEAR_VALID
                        | (_X.EPT_QUAL_FINAL_TRANSLATION if final else 0))
        return None

    @property
    def ept_misconfigured(self):
        """The datum's EPT walk met a misconfigured entry (SDM Vol. 3C 29.3.3.1)."""
        return self.pa is not None and bool(self.ept) and self.ept[-1].fault == "misconfig"

    def __str__(self):
        lines = [f"linear 0x{self.lin:08x} = PDE index 0x{self.lin >> 22:03x}, "
                 f"PTE index 0x{(self.lin >> 12) & 0x3FF:03x}, offset 0x{self.lin & 0xFFF:03x}",
                 f"CR3 0x{self.cr3:08x}: page directory at 0x{self.cr3 & CR3_PD_MASK:08x}"
                 + (" (guest-physical)" if self.eptp is not None else "")]
        ept = iter(self.ept)

        def via_ept(gpa):
            if self.eptp is None:
                return ""
            e = next(ept, None)
            if e is None:
                return ""
            if e.fault is not None:
                return f" -> EPT: {e.fault} at the {e.fault_level}"
            return f" -> EPT -> host 0x{e.hpa:08x} ({e.rights_text}, {e.refs} refs)"

        for name, addr, value in (("PDE", self.pde_addr, self.pde),
                                  ("PTE", self.pte_addr, self.pte)):
            if addr is None:
                break
            lines.append(f"{name} at 0x{addr:08x}{via_ept(addr)}")
            if value is None:
                if self.fault == "bus-error":
                    lines[-1] += ": outside memory -> bus error"
                else:
                    lines.append(f"-> {self.fault} (a VM exit to the VMM)")
                return "\n".join(lines)
            lines[-1] += f" = 0x{value:08x} ({entry_flags(value)})"
        if self.fault is not None:
            lines.append(f"-> #PF: {self.fault} ({self.fault_level})")
        else:
            size = "4 MiB" if self.large else "4 KiB"
            rights = ("user" if self.user else "supervisor") + (
                ", writable" if self.writable else ", read-only")
            kind = "guest-physical" if self.eptp is not None else "physical"
            lines.append(f"-> {size} page at 0x{self.frame:08x} + offset = {kind} "
                         f"0x{self.pa:08x} ({rights}{', global' if self.global_page else ''})"
                         + via_ept(self.pa))
        extra = f" + {self.ept_refs} in {len(self.ept)} EPT walks" if self.eptp is not None else ""
        lines.append(f"{self.refs} memory reference(s){extra}")
        return "\n".join(lines)


def _read32(memory, pa):
    if pa < 0 or pa + 4 > len(memory):
        return None
    return int.from_bytes(bytes(memory[pa:pa + 4]), "little")


def _read64(memory, pa):
    if pa < 0 or pa + 8 > len(memory):
        return None
    return int.from_bytes(bytes(memory[pa:pa + 8]), "little")


def walk(memory, cr3, cr4, lin, eptp=None):
    """Walk the 32-bit page tables for linear address ``lin``; read only.

    ``memory`` is the machine's memory (a numpy uint8 array, e.g. ``Machine.memory``).
    Nothing is modified - no A/D flags are set and no TLB is consulted, so the walk
    shows what the tables *in memory* say (the TLB may still hold an older answer).
    With ``eptp`` (a guest in VMX non-root operation with EPT: the VMCS's EPT_POINTER),
    CR3 and the entries are guest-physical: each entry's address goes through
    :func:`walk_ept` before it is read, and so does the final address (``hpa``); an
    entry EPT does not let the processor read (or, with EPT A/D flags, write) ends the
    walk with ``fault`` 'ept-violation' or 'ept-misconfig' at that level.
    Returns a :class:`WalkResult`; ``print()`` it for the narrated walk.
    """
    lin &= 0xFFFFFFFF
    r = WalkResult(lin=lin, cr3=cr3, pde_addr=(cr3 & CR3_PD_MASK) | ((lin >> 22) << 2),
                   eptp=eptp)
    need = EPT_R | (EPT_W if eptp is not None and eptp & EPTP_AD else 0)

    def entry(gpa, level):
        hpa = gpa
        if eptp is not None:
            e = walk_ept(memory, eptp, gpa)
            r.ept.append(e)
            if e.fault is not None or need & ~e.rights:
                r.fault = {"misconfig": "ept-misconfig", "bus-error": "bus-error"}.get(
                    e.fault, "ept-violation")
                r.fault_level = level
                return None, None
            hpa = e.hpa
        r.refs += 1
        value = _read32(memory, hpa)
        if value is None:
            r.fault, r.fault_level = "bus-error", level
        return value, hpa

    r.pde, r.pde_hpa = entry(r.pde_addr, "PDE")
    if r.pde is None:
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
        r.pte, r.pte_hpa = entry(r.pte_addr, "PTE")
        if r.pte is None:
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
    if eptp is None:
        r.hpa = r.pa
    else:
        e = walk_ept(memory, eptp, r.pa)       # the datum: what the access may do is
        r.ept.append(e)                        # ept_violation()'s question
        r.hpa = e.hpa
    return r


_EPT_LEVELS = ("PML4E", "PDPTE", "PDE", "PTE")


@dataclass
class EptWalkResult:
    """One EPT walk (SDM Vol. 3C, 29.3.2), step by step (see :func:`walk_ept`).

    ``entries``: ``(level, host-physical address, 64-bit value)`` of each entry read.
    ``fault`` is None when the guest-physical address translates -- whatever the
    rights: ``rights`` (R = 1, W = 2, X = 4, the AND over the entries, 29.3.3.2) says
    which accesses EPT allows -- else ``"not-present"`` (an EPT violation for any
    access), ``"misconfig"`` (an EPT misconfiguration, 29.3.3.1; ``why`` says which
    rule) or ``"bus-error"`` (a table outside memory); ``fault_level`` names the entry.
    """
    gpa: int
    eptp: int
    entries: list = field(default_factory=list)
    hpa: int | None = None
    page_size: int | None = None
    rights: int = 0
    fault: str | None = None
    fault_level: str | None = None
    why: str | None = None

    @property
    def refs(self):
        return len(self.entries)

    @property
    def readable(self):
        return self.fault is None and bool(self.rights & EPT_R)

    @property
    def writable(self):
        return self.fault is None and bool(self.rights & EPT_W)

    @property
    def executable(self):
        return self.fault is None and bool(self.rights & EPT_X)

    @property
    def rights_text(self):
        return "".join(c if self.rights & b else "-" for c, b in
                       (("R", EPT_R), ("W", EPT_W), ("X", EPT_X)))

    def __str__(self):
        lines = [f"guest-physical 0x{self.gpa:08x}, EPTP 0x{self.eptp:x}: PML4 at "
                 f"0x{self.eptp & EPTP_PML4_MASK:08x}"]
        for level, addr, value in self.entries:
            lines.append(f"{level} at 0x{addr:08x} = 0x{value:016x} "
                         f"(R{value & 1} W{value >> 1 & 1} X{value >> 2 & 1})")
        if self.fault == "bus-error":
            lines.append(f"{self.fault_level}: outside memory -> bus error")
        elif self.fault == "misconfig":
            lines.append(f"-> EPT misconfiguration at the {self.fault_level}: {self.why}")
        elif self.fault == "not-present":
            lines.append(f"-> EPT violation: the {self.fault_level} is not present")
        else:
            size = "2 MiB" if self.page_size == 2 << 20 else "4 KiB"
            lines.append(f"-> {size} page: host-physical 0x{self.hpa:08x}, {self.rights_text}")
        lines.append(f"{self.refs} memory reference(s)")
        return "\n".join(lines)


def _ept_misconfig(value, leaf, large):
    """Why a present EPT entry is misconfigured (SDM Vol. 3C 29.3.3.1), or None."""
    if value & EPT_W and not value & EPT_R:
        return "write access without read access"
    if (value >> 32) & 0xFFFFF:
        return "a reserved bit in 51:32 (beyond MAXPHYADDR = 32)"
    if not leaf:
        if value & EPT_NONLEAF_RSVD:
            return "reserved bits 7:3 (a PDPTE's bit 7 would map a 1 GiB page: unsupported)"
        return None
    memtype = (value >> EPT_MEMTYPE_SHIFT) & 7
    if EPT_MEMTYPE_RESERVED >> memtype & 1:
        return f"reserved memory type {memtype}"
    if large and value & EPT_2M_RSVD:
        return "reserved bits 20:12 of a 2 MiB page"
    return None


def walk_ept(memory, eptp, gpa):
    """Walk the EPT tables named by ``eptp`` for guest-physical ``gpa``; read only (no
    accessed or dirty flag is set). Returns an :class:`EptWalkResult`; ``print()`` it
    for the narrated walk."""
    gpa &= 0xFFFFFFFF
    r = EptWalkResult(gpa=gpa, eptp=eptp)
    table = eptp & EPTP_PML4_MASK
    rights = EPT_RWX
    for level, shift in zip(_EPT_LEVELS, (39, 30, 21, 12)):
        addr = table + 8 * ((gpa >> shift) & EPT_INDEX_MASK)
        value = _read64(memory, addr)
        r.fault_level = level
        if value is None:
            r.fault = "bus-error"
            r.entries.append((level, addr, 0))
            return r
        r.entries.append((level, addr, value))
        rights &= value
        if not value & EPT_RWX:
            r.fault = "not-present"
            return r
        large = level == "PDE" and bool(value & EPT_LARGE)
        leaf = large or level == "PTE"
        r.why = _ept_misconfig(value, leaf, large)
        if r.why is not None:
            r.fault = "misconfig"
            return r
        if large:
            r.page_size, r.hpa = 2 << 20, (value & EPT_ADDR_2M) | (gpa & EPT_OFFSET_2M)
            break
        if leaf:
            r.page_size, r.hpa = 4096, (value & EPT_ADDR) | (gpa & 0xFFF)
            break
        table = value & EPT_ADDR
    r.fault_level = None
    r.rights = rights & EPT_RWX
    return r


@dataclass
class TlbEntry:
    """One valid TLB entry, as :func:`tlb_contents` shows it."""
    set: int
    way: int
    lin_page: int      # linear address of the 4 KiB page
    frame: int         # physical address of the 4 KiB frame (host-physical under EPT)
    user: bool
    writable: bool
    dirty: bool        # a write may use it without a walk (under EPT: EPT allows it too)
    large: bool        # cached from a 4 MiB page (one entry per 4 KiB slice)
    global_page: bool
    stamp: int         # LRU stamp (larger = used more recently)
    ept_no_read: bool = False    # a combined EPT translation whose EPT rights forbid
    ept_no_fetch: bool = False   # reads / instruction fetches (hvsim/mmu/tlb.py)
    vpid: int = 0                # the VPID it serves (0: root operation, or no VPIDs)


def tlb_contents(st, tlb):
    """The valid entries of the TLB, set by set (plain Python; for display)."""
    from hvsim.arch.layout import CFG_TLB_SETS, CFG_TLB_WAYS, TLB_FIELDS
    from hvsim.mmu.tlb import (TLB_TAG, TLB_FRAME, TLB_FLAGS, TLB_LRU, TLBF_US, TLBF_RW,
                               TLBF_D, TLBF_LARGE, TLBF_G, TLBF_EPT_NR, TLBF_EPT_NX,
                               TAG_VPID_SHIFT)
    sets, ways = int(st[CFG_TLB_SETS]), int(st[CFG_TLB_WAYS])
    out = []
    for s in range(sets):
        for w in range(ways):
            e = (s * ways + w) * TLB_FIELDS
            tag = int(tlb[e + TLB_TAG])
            if tag == 0:
                continue
            fl = int(tlb[e + TLB_FLAGS])
            page, vpid = (tag - 1) & ((1 << TAG_VPID_SHIFT) - 1), (tag - 1) >> TAG_VPID_SHIFT
            out.append(TlbEntry(s, w, page << 12, int(tlb[e + TLB_FRAME]) << 12,
                                bool(fl & TLBF_US), bool(fl & TLBF_RW), bool(fl & TLBF_D),
                                bool(fl & TLBF_LARGE), bool(fl & TLBF_G), int(tlb[e + TLB_LRU]),
                                bool(fl & TLBF_EPT_NR), bool(fl & TLBF_EPT_NX), vpid))
    return out
