"""32-bit paging: linear -> physical translation, page walks, guest memory access (jitted).

Models Intel SDM Vol. 3A, chapter 4, 32-bit paging (CR0.PG = 1, CR4.PAE = 0):
two levels (page directory, page table) of 4 KiB pages, 4 MiB pages when CR4.PSE = 1,
global pages when CR4.PGE = 1, CR0.WP, combined U/S and R/W rights (4.6), the accessed
and dirty flags (4.8), #PF error codes (4.7), and the TLB (4.10, model in tlb.py).

Public kernels (module-level ``@njit``; callers check ``st[FAULT_PENDING]`` after each):

    translate(mem, st, tlb, lin, acc) -> pa
    translate_pg(mem, st, tlb, pg, lin, acc) -> pa     # same; its A/D writes also do SMC
    read_lin(mem, st, tlb, pg, lin, size, acc) -> int
    write_lin(mem, st, tlb, pg, lin, size, value, acc)
    read_phys(mem, st, pa, size) -> int
    write_phys(mem, st, pg, pa, size, value)
    tlb_flush(st, tlb, keep_global), tlb_invlpg(st, tlb, lin)   # re-exported from tlb.py

A translation that faults returns 0 with the fault recorded in ``st`` (the value means
nothing then). Model choices where the SDM leaves room:

* A/D flags are written only when the translation succeeds (the access is allowed),
  as Bochs does; a faulting walk leaves memory untouched.
* A write that translates through a TLB entry whose cached D is 0 walks again to set D
  in memory (SDM 4.8). A hit whose cached rights forbid the access walks again before
  faulting, so the TLB never raises a fault that the tables in memory would not (the
  SDM, 4.10.4.3, would also allow one "spurious" #PF after rights were raised without
  INVLPG; hvsim does not model it). Such accesses count as misses. A #PF drops the
  entry of its page (SDM 4.10.4.1).
* C_TLB_HIT / C_TLB_MISS count translations made with paging on; with the TLB disabled
  every translation is a miss. So C_TLB_MISS == C_PAGE_WALKS always.
* An access that crosses a page boundary translates the first page, then the second
  (CR2 = first byte of the page that faults). A crossing write changes no byte unless
  both pages translate and both parts are inside memory.
* In VMX non-root operation with EPT (``st[VMX_EPT]``) the walk is two-dimensional:
  CR3 and the guest's entries hold guest-physical addresses, each translated by an
  EPT walk (hvsim/mmu/ept.py, which documents the order of the checks and the EPT
  choices), and so is the final address. The TLB caches the combined translation,
  guest-linear -> host-physical, with the rights of both: guest rights in RW/US, EPT
  rights as TLBF_EPT_NR / TLBF_EPT_NX and a cleared D when EPT forbids writes (tlb.py).
  C_WALK_REFS counts the guest's own PDE/PTE reads, C_EPT_WALKS and C_EPT_WALK_REFS the
  EPT walks and their entry reads; C_TLB_MISS == C_PAGE_WALKS still holds.

Speed: every kernel here is compiled with ``_nrt=False`` (none allocates an array).
With numba's reference counting on, each call that passes arrays does atomic
incref/decref pairs that LLVM cannot prune around branches and calls: measured
~80-150 ns per read_lin against ~2-20 ns without. Callers lose nothing.
"""
import numpy as np

from hvsim._jit import njit, inline_in
from hvsim.arch.layout import (CR0, CR3, CR4, COUNTERS, CFG_MEM_SIZE, CFG_TLB_SETS,
                              CFG_TLB_WAYS, CFG_TLB_ENABLED, FAULT_PENDING, MASK32,
                              TLB_FIELDS, VMX_EPT, PG_WATCH)
from hvsim.arch.counters import C_TLB_HIT, C_TLB_MISS, C_PAGE_WALKS, C_WALK_REFS
from hvsim.arch.cr import CR0_PG, CR0_WP, CR3_PD_MASK, CR4_PSE, CR4_PGE
from hvsim.arch.fault import raise_page_fault, raise_bus_error
from hvsim.arch.pte import (PTE_P, PTE_RW, PTE_US, PTE_A, PTE_D, PTE_PS, PTE_G,
                           PTE_FRAME, PDE_FRAME_4M, PFEC_P, PFEC_W, PFEC_U, PFEC_RSVD,
                           ACC_WRITE, ACC_USER, ACC_FETCH)
from hvsim.mmu.ept import ept_call, ept_guest_entry_update, HOOK_GUEST_ENTRY, HOOK_DATUM
from hvsim.mmu.frames import code_written as _code_written
from hvsim.mmu.tlb import (tlb_fill, tlb_drop_page, tlb_flush, tlb_invlpg, tlb_tag,  # noqa: F401
                           TLB_TAG, TLB_FRAME, TLB_FLAGS, TLB_LRU, TLBF_D, TLBF_LARGE,
                           TLBF_EPT_NR)

PAGE_SIZE = 0x1000
PAGE_OFFSET = 0xFFF
LARGE_OFFSET = 0x3FFFFF
# 4 MiB PDE bits 21:13 must be 0 (SDM Vol. 3A, Table 4-4 with MAXPHYADDR = 32;
# PSE-36 is not modelled) - else #PF with RSVD.
PDE_4M_RSVD = 0x003FE000
RIGHTS = PTE_RW | PTE_US

# The TLB probe and the physical access are inlined into read_lin/write_lin -- the
# hot path, itself inlined into the CPU's operand helpers -- and stay calls elsewhere.
_INTO_ACCESS = inline_in("hvsim.mmu.paging.read_lin", "hvsim.mmu.paging.write_lin")

__all__ = ["translate", "translate_pg", "read_lin", "write_lin", "read_phys",
           "write_phys", "tlb_flush", "tlb_invlpg"]


# ---------------------------------------------------------------- physical access
@njit(_nrt=False, inline=_INTO_ACCESS)
def read_phys(mem, st, pa, size):
    """Little-endian read of ``size`` bytes at physical ``pa`` of the machine's memory
    (host-physical under EPT); a bus error outside it."""
    if pa < 0 or pa + size > st[CFG_MEM_SIZE]:
        raise_bus_error(st, pa)
        return 0
    if size == 4:
        return (np.int64(mem[pa]) | (np.int64(mem[pa + 1]) << 8)
                | (np.int64(mem[pa + 2]) << 16) | (np.int64(mem[pa + 3]) << 24))
    if size == 1:
        return np.int64(mem[pa])
    v = 0
    for i in range(size):
        v |= np.int64(mem[pa + i]) << (8 * i)
    return v


@njit(_nrt=False, inline=_INTO_ACCESS)
def write_phys(mem, st, pg, pa, size, value):
    """Little-endian write of ``size`` bytes at physical ``pa`` of the machine's memory
    (host-physical under EPT); a bus error outside it."""
    if pa < 0 or pa + size > st[CFG_MEM_SIZE]:
        raise_bus_error(st, pa)
        return
    f = pa >> 12
    last = (pa + size - 1) >> 12
    if (pg[f] & PG_WATCH) != 0 or (last != f and (pg[last] & PG_WATCH) != 0):
        _code_written(mem, st, pg, pa, size)
    for i in range(size):
        mem[pa + i] = (value >> (8 * i)) & 0xFF


# ---------------------------------------------------------------- the page walk
@njit(_nrt=False)
def _read_entry(mem, st, pa):
    # one paging-structure reference (SDM 4.3): counted, bounds-checked
    st[COUNTERS + C_WALK_REFS] += 1
    return read_phys(mem, st, pa, 4)


@njit(_nrt=False)
def _set_entry_flags(mem, st, pg, pa, entry):
    # A (bit 5) and D (bit 6) live in byte 0 of the entry; the read already checked bounds.
    mem[pa] = entry & 0xFF
    if (pg[pa >> 12] & PG_WATCH) != 0:
        _code_written(mem, st, pg, pa, 1)


@njit(_nrt=False, inline="always")
def _denied(rights, acc, cr0):
    # SDM Vol. 3A, 4.6.1: user accesses need U/S = 1; user writes need R/W = 1;
    # supervisor writes need R/W = 1 only when CR0.WP = 1. Fetches are reads here (no NX).
    if (acc & ACC_USER) != 0:
        if (rights & PTE_US) == 0:
            return True
        return (acc & ACC_WRITE) != 0 and (rights & PTE_RW) == 0
    return (acc & ACC_WRITE) != 0 and (cr0 & CR0_WP) != 0 and (rights & PTE_RW) == 0


@njit(_nrt=False)
def _walk(mem, st, pg, lin, acc, cr0):
    """Walk the tables for ``lin``; return (pa, TLB flags) or (0, 0) with a fault pending.

    Linear address, 32-bit paging (SDM Vol. 3A, Figures 4-2 and 4-3)::

        31        22 21        12 11          0
        +-----------+------------+------------+
        | PDE index | PTE index  |   offset   |     4 KiB page
        +-----------+------------+------------+
        | PDE index |      offset (22 bits)   |     4 MiB page (CR4.PSE and PDE.PS)
        +-----------+-------------------------+

    In VMX non-root operation with EPT (``st[VMX_EPT]``), CR3 and the entries hold
    guest-physical addresses: each entry's address and the final one go through
    hvsim/mmu/ept.py (the 2-D walk, reached by address through ``ept_call``; the order
    of its checks is documented there), and the result is host-physical. ``*_pa`` are
    then guest-physical, ``*_hpa`` host.
    """
    st[COUNTERS + C_PAGE_WALKS] += 1
    write = acc & ACC_WRITE
    err = 0
    if write != 0:
        err |= PFEC_W
    if (acc & ACC_USER) != 0:
        err |= PFEC_U
    cr4 = st[CR4]
    ept = st[VMX_EPT]

    pde_pa = (st[CR3] & CR3_PD_MASK) | ((lin >> 22) << 2)
    pde_hpa = pde_pa
    pde_ept = 0
    if ept != 0:
        pde_hpa, pde_ept = ept_call(mem, st, pg, HOOK_GUEST_ENTRY, pde_pa, lin, 0, 0)
        if st[FAULT_PENDING] != 0:
            return 0, 0
    pde = _read_entry(mem, st, pde_hpa)
    if st[FAULT_PENDING] != 0:
        return 0, 0
    if (pde & PTE_P) == 0:
        raise_page_fault(st, lin, err)
        return 0, 0

    if (pde & PTE_PS) != 0 and (cr4 & CR4_PSE) != 0:
        # 4 MiB page: the PDE is the final entry.
        if (pde & PDE_4M_RSVD) != 0:
            raise_page_fault(st, lin, err | PFEC_P | PFEC_RSVD)
            return 0, 0
        rights = pde & RIGHTS
        if _denied(rights, acc, cr0):
            raise_page_fault(st, lin, err | PFEC_P)
            return 0, 0
        new = pde | PTE_A
        if write != 0:
            new |= PTE_D
        pa = (pde & PDE_FRAME_4M) | (lin & LARGE_OFFSET)
        flags = rights | (new & PTE_D) | TLBF_LARGE
        if ept != 0:
            if new != pde:
                ept_guest_entry_update(st, pde_pa, lin, pde_ept)
                if st[FAULT_PENDING] != 0:
                    return 0, 0
            pa, flags = ept_call(mem, st, pg, HOOK_DATUM, pa, lin, acc, flags)
            if st[FAULT_PENDING] != 0:
                return 0, 0
        if new != pde:
            _set_entry_flags(mem, st, pg, pde_hpa, new)
        if (cr4 & CR4_PGE) != 0:
            flags |= pde & PTE_G
        return pa, flags

    pte_pa = (pde & PTE_FRAME) | (((lin >> 12) & 0x3FF) << 2)
    pte_hpa = pte_pa
    pte_ept = 0
    if ept != 0:
        pte_hpa, pte_ept = ept_call(mem, st, pg, HOOK_GUEST_ENTRY, pte_pa, lin, 0, 0)
        if st[FAULT_PENDING] != 0:
            return 0, 0
    pte = _read_entry(mem, st, pte_hpa)
    if st[FAULT_PENDING] != 0:
        return 0, 0
    if (pte & PTE_P) == 0:
        raise_page_fault(st, lin, err)
        return 0, 0
    rights = pde & pte & RIGHTS
    if _denied(rights, acc, cr0):
        raise_page_fault(st, lin, err | PFEC_P)
        return 0, 0
    new = pte | PTE_A
    if write != 0:
        new |= PTE_D
    pa = (pte & PTE_FRAME) | (lin & PAGE_OFFSET)
    flags = rights | (new & PTE_D)
    if ept != 0:
        if (pde & PTE_A) == 0:
            ept_guest_entry_update(st, pde_pa, lin, pde_ept)
        if new != pte and st[FAULT_PENDING] == 0:
            ept_guest_entry_update(st, pte_pa, lin, pte_ept)
        if st[FAULT_PENDING] != 0:
            return 0, 0
        pa, flags = ept_call(mem, st, pg, HOOK_DATUM, pa, lin, acc, flags)
        if st[FAULT_PENDING] != 0:
            return 0, 0
    if (pde & PTE_A) == 0:
        _set_entry_flags(mem, st, pg, pde_hpa, pde | PTE_A)
    if new != pte:
        _set_entry_flags(mem, st, pg, pte_hpa, new)
    if (cr4 & CR4_PGE) != 0:
        flags |= pte & PTE_G
    return pa, flags


# ---------------------------------------------------------------- translation
# The hot paths (read_lin, write_lin, translate_pg) are kept small on purpose so that
# LLVM inlines them into their callers: paging off is two compares, a TLB hit is one
# probe of one set; everything else is a call to a *_slow / _translate_miss function.
@njit(_nrt=False, inline=_INTO_ACCESS)
def _tlb_hit(st, tlb, lin, acc):
    """pa if the TLB holds ``lin``'s page with rights that serve ``acc``; -1 otherwise.

    An entry that cannot serve the access (rights, or a write while its cached D is 0,
    or, for a combined EPT translation, a read or fetch that EPT forbids: TLBF_EPT_NR,
    and TLBF_EPT_NX one bit up, picked by ACC_FETCH = 4) is no hit: the access walks,
    so the TLB never faults where the tables would not.
    """
    vpn = lin >> 12
    ways = st[CFG_TLB_WAYS]
    e = (vpn & (st[CFG_TLB_SETS] - 1)) * ways * TLB_FIELDS
    tag = tlb_tag(st, vpn)
    for _ in range(ways):
        if tlb[e + TLB_TAG] == tag:
            flags = tlb[e + TLB_FLAGS]
            if _denied(flags, acc, st[CR0]) or ((acc & ACC_WRITE) != 0
                                                and (flags & TLBF_D) == 0) \
                    or (flags & (TLBF_EPT_NR << ((acc & ACC_FETCH) >> 2))) != 0:
                return -1
            st[COUNTERS + C_TLB_HIT] += 1
            tlb[e + TLB_LRU] = st[COUNTERS + C_TLB_HIT] + st[COUNTERS + C_TLB_MISS]
            return (tlb[e + TLB_FRAME] << 12) | (lin & PAGE_OFFSET)
        e += TLB_FIELDS
    return -1


@njit(_nrt=False)
def _translate_miss(mem, st, tlb, pg, lin, acc):
    # Paging on and no usable TLB entry: walk, then cache the result (an entry already
    # there for this page is refreshed in place) or, on a fault, drop that entry
    # (a #PF invalidates the TLB entries for its page, SDM Vol. 3A 4.10.4.1).
    st[COUNTERS + C_TLB_MISS] += 1
    pa, flags = _walk(mem, st, pg, lin, acc, st[CR0])
    if st[CFG_TLB_ENABLED] != 0:
        if st[FAULT_PENDING] != 0:
            tlb_drop_page(st, tlb, lin >> 12)
            return 0
        tlb_fill(st, tlb, lin >> 12, pa >> 12, flags)
    elif st[FAULT_PENDING] != 0:
        return 0
    return pa


@njit(_nrt=False)
def translate_pg(mem, st, tlb, pg, lin, acc):
    """Linear -> physical for an access of kind ``acc`` (ACC_* bits); 0 if it faults.
    Under EPT the result is host-physical and the fault may be a VM exit (48, 49)."""
    lin &= MASK32
    if (st[CR0] & CR0_PG) == 0:
        return lin
    if st[CFG_TLB_ENABLED] != 0:
        pa = _tlb_hit(st, tlb, lin, acc)
        if pa >= 0:
            return pa
    return _translate_miss(mem, st, tlb, pg, lin, acc)


@njit(_nrt=False)
def translate(mem, st, tlb, lin, acc):
    """Linear -> physical (see translate_pg). Without ``pg``, A/D-flag writes made by
    this walk cannot invalidate decoded code sharing a frame with a page table."""
    return translate_pg(mem, st, tlb, tlb[:0], lin, acc)


# ---------------------------------------------------------------- linear access
@njit(inline=inline_in("hvsim.cpu.operands"))
def read_lin(mem, st, tlb, pg, lin, size, acc):
    """Little-endian read of ``size`` (1, 2, 4) bytes at linear ``lin``; 0 on a fault.

    ``acc`` may include ACC_WRITE for the read of a read-modify-write instruction
    (write rights checked, D set, #PF error code W = 1, as on hardware).
    """
    lin &= MASK32
    if (st[CR0] & CR0_PG) == 0:
        return read_phys(mem, st, lin, size)
    if st[CFG_TLB_ENABLED] != 0 and (lin & PAGE_OFFSET) + size <= PAGE_SIZE:
        pa = _tlb_hit(st, tlb, lin, acc)
        if pa >= 0:
            return read_phys(mem, st, pa, size)
    return _read_lin_slow(mem, st, tlb, pg, lin, size, acc)


@njit(_nrt=False)
def _read_lin_slow(mem, st, tlb, pg, lin, size, acc):
    n0 = PAGE_SIZE - (lin & PAGE_OFFSET)
    if size <= n0:
        pa = _translate_miss(mem, st, tlb, pg, lin, acc)
        if st[FAULT_PENDING] != 0:
            return 0
        return read_phys(mem, st, pa, size)
    # the access crosses into the next linear page: translate both, first page first
    pa0 = translate_pg(mem, st, tlb, pg, lin, acc)
    if st[FAULT_PENDING] != 0:
        return 0
    pa1 = translate_pg(mem, st, tlb, pg, (lin + n0) & MASK32, acc)
    if st[FAULT_PENDING] != 0:
        return 0
    lo = read_phys(mem, st, pa0, n0)
    if st[FAULT_PENDING] != 0:
        return 0
    hi = read_phys(mem, st, pa1, size - n0)
    if st[FAULT_PENDING] != 0:
        return 0
    return lo | (hi << (8 * n0))


@njit(inline=inline_in("hvsim.cpu.operands"))
def write_lin(mem, st, tlb, pg, lin, size, value, acc):
    """Little-endian write of ``size`` (1, 2, 4) bytes at linear ``lin``.

    Nothing is written if any part faults (translation or bus error).
    """
    lin &= MASK32
    if (st[CR0] & CR0_PG) == 0:
        write_phys(mem, st, pg, lin, size, value)
        return
    acc |= ACC_WRITE
    if st[CFG_TLB_ENABLED] != 0 and (lin & PAGE_OFFSET) + size <= PAGE_SIZE:
        pa = _tlb_hit(st, tlb, lin, acc)
        if pa >= 0:
            write_phys(mem, st, pg, pa, size, value)
            return
    _write_lin_slow(mem, st, tlb, pg, lin, size, value, acc)


@njit(_nrt=False)
def _write_lin_slow(mem, st, tlb, pg, lin, size, value, acc):
    n0 = PAGE_SIZE - (lin & PAGE_OFFSET)
    if size <= n0:
        pa = _translate_miss(mem, st, tlb, pg, lin, acc)
        if st[FAULT_PENDING] != 0:
            return
        write_phys(mem, st, pg, pa, size, value)
        return
    # crosses a page: translate both pages and check both frames before any byte
    pa0 = translate_pg(mem, st, tlb, pg, lin, acc)
    if st[FAULT_PENDING] != 0:
        return
    pa1 = translate_pg(mem, st, tlb, pg, (lin + n0) & MASK32, acc)
    if st[FAULT_PENDING] != 0:
        return
    mem_size = st[CFG_MEM_SIZE]
    if pa0 + n0 > mem_size:
        raise_bus_error(st, pa0)
        return
    if pa1 + (size - n0) > mem_size:
        raise_bus_error(st, pa1)
        return
    write_phys(mem, st, pg, pa0, n0, value)
    write_phys(mem, st, pg, pa1, size - n0, value >> (8 * n0))
