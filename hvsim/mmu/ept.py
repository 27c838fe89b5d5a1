"""EPT: guest-physical -> host-physical translation in VMX non-root operation (jitted).

Models Intel SDM Vol. 3C (082US numbering), 29.3 "The Extended Page Table Mechanism
(EPT)" -- older editions number it 28.2 -- on hvsim's 4-level EPT and 32-bit physical
addresses (entry layout and the EPTP drawn in hvsim/arch/ept.py).

With "enable EPT" (``st[VMX_EPT]`` = 1, set by VM entry), the guest's CR3 and the
addresses in its PDEs and PTEs are *guest-physical*: every one of them, and the final
guest-physical address of the datum, is translated by a walk of the VMM's EPT tables
(29.3.2) before memory is touched. The 32-bit guest walk in paging.py calls this module
at three points:

* :func:`ept_guest_entry` -- the guest-physical address of a guest PDE or PTE, before it
  is read. "Reads by the logical processor of guest paging structures to translate a
  linear address are considered to be data reads" (29.3.3.2); with EPT accessed and
  dirty flags on (EPTP bit 6) "processor accesses to guest paging-structure entries are
  treated as writes" (29.3.5), so they need W and set the EPT dirty flag, and an EPT
  violation then reports both bit 0 and bit 1 (Table 28-7, note 1);
* :func:`ept_guest_entry_update` -- before the walk sets an accessed or dirty flag in a
  guest entry: "writes by the logical processor to guest paging structures to update
  accessed and dirty flags are considered to be data writes" (29.3.3.2);
* :func:`ept_datum` -- the final guest-physical address, for the access itself (read,
  write, or instruction fetch), and the rights the combined TLB entry may keep.

Model choices where the SDM leaves room (each documented where it is made):

* **Order.** Guest PDE (its EPT walk, then the read), guest PTE (same), the guest's own
  checks (#PF comes first: hvsim makes no EPT walk for a linear address whose guest
  translation faults), then the EPT checks of the guest A/D-flag writes the access needs,
  then the EPT walk of the datum, then the guest A/D flags are written. So a failing
  translation leaves the guest's entries untouched, as paging.py does without EPT.
* **EPT A/D flags** are set by an EPT walk that succeeds, when it succeeds: A in every
  entry it used, D in the leaf for a write (29.3.5). That guest-physical access was
  made even if the linear translation then fails (say, the guest PTE is not present).
  A failing EPT walk writes nothing.
* **No EPT caches** besides the combined TLB entries (paging.py): no paging-structure
  cache, no guest-physical TLB. A cold 4 KiB access in the guest makes
  (2 + 1) * (4 + 1) - 1 = 14 memory references (Bhargava et al., ASPLOS 2008):
  2 guest entries (``walk_refs``) + 3 EPT walks of 4 entries (``ept_walk_refs``).
* **A table outside memory is a bus error**, not an EPT misconfiguration: a table
  address below MAXPHYADDR has no reserved bit set (29.3.3.1), so the architecture
  says the processor reads it; with nothing there, hvsim ends ``run()`` with a
  ``bus_error`` event naming the host-physical address, as it does for any access
  outside memory (DESIGN.md: a bus error / machine check, never an out-of-bounds
  access). The same holds for a guest entry or a datum the EPT maps outside memory. A
  guest can cause neither on its own: every guest-physical address goes through the
  VMM's tables.
* **Read-modify-write**: hvsim's CPU reads the operand, then writes it, as two
  accesses; on a page EPT lets it read but not write, the violation is the write's and
  reports bit 1 only (whether bit 0 is also set "is implementation-specific", Table
  28-7). A read made with ACC_WRITE (paging.py allows it) would be checked as a write.
* The guest-linear address (bit 7) is always valid: in hvsim every guest-physical
  access in non-root operation comes from translating a linear address (32-bit paging
  loads no PDPTEs, and CR0.PG = 1 is required without unrestricted guest).
* No advanced VM-exit information for EPT violations (capability bit 22 = 0: bits 11:9
  are 0), no #VE, no mode-based execute control, no PML, no 1 GiB pages.

Every kernel here is compiled with ``_nrt=False`` (none allocates; see paging.py).
"""
import numpy as np
from numba import config, types
from numba.extending import intrinsic

from hvsim._ccall import BY_ADDRESS, STATUS_OK, call_c
from hvsim._jit import njit
from hvsim.arch import vmcs as V
from hvsim.arch import vmx as X
from hvsim.arch.counters import C_EPT_WALKS, C_EPT_WALK_REFS
from hvsim.arch.ept import (EPTP_AD, EPTP_PML4_MASK, EPT_R, EPT_W, EPT_X, EPT_RWX,
                           EPT_MEMTYPE_SHIFT, EPT_LARGE, EPT_A, EPT_D, EPT_ADDR, EPT_ADDR_2M,
                           EPT_OFFSET_2M, EPT_NONLEAF_RSVD, EPT_2M_RSVD, EPT_HIGH_RSVD,
                           EPT_ENTRY_SIZE, EPT_INDEX_MASK, EPT_SHIFT_PML4, EPT_SHIFT_PDPT,
                           EPT_SHIFT_PD, EPT_SHIFT_PT, EPT_MEMTYPE_RESERVED, EPT_ACC_READ,
                           EPT_ACC_WRITE, EPT_ACC_FETCH)
from hvsim.arch.fault import raise_vmexit, raise_bus_error
from hvsim.arch.fault import raise_internal
from hvsim.arch.layout import (COUNTERS, CFG_MEM_SIZE, FAULT_PENDING, MASK32, EPT_WALKER,
                              EPT_RESULT_PA, EPT_RESULT_FLAGS, KTAB_EPT, PG_WATCH)
from hvsim.arch.pte import ACC_WRITE, ACC_FETCH
from hvsim.mmu.frames import code_written
from hvsim.mmu.tlb import TLBF_D, TLBF_EPT_NR, TLBF_EPT_NX

__all__ = ["walk_ept", "ept_guest_entry", "ept_guest_entry_update", "ept_datum",
           "ept_violation", "ept_misconfig", "ept_hook", "call_ept", "HOOK_GUEST_ENTRY",
           "HOOK_DATUM"]

_EPTP = V.state_index("EPT_POINTER")
_GPA = V.state_index("GUEST_PHYSICAL_ADDRESS")
_GLA = V.state_index("GUEST_LINEAR_ADDRESS")
_EPT_VIOLATION = int(X.ExitReason.EPT_VIOLATION)
_EPT_MISCONFIG = int(X.ExitReason.EPT_MISCONFIG)

# what kind of entry a walk step checks (29.3.3.1 differs by kind)
_NONLEAF = 0      # PML4E, PDPTE, PDE that references a page table
_LEAF_2M = 1      # PDE with bit 7 set
_LEAF_4K = 2      # PTE


# ---------------------------------------------------------------- the EPT-induced exits
@njit(_nrt=False)
def ept_violation(st, gpa, lin, acc, rights, final):
    """Raise an EPT violation (exit reason 48; SDM Vol. 3C 29.3.3.2) for an access of
    kind ``acc`` (EPT_ACC_* bits) to ``gpa``, made to translate linear ``lin``.

    Exit qualification (Table 28-7; Linux ``EPT_VIOLATION_*``)::

        12 11  9  8  7  6  5  4  3  2  1  0
        +-+-----+--+--+--+--+--+--+--+--+--+
        |0|  0  |F |GL| 0|X |W |R |f |w |r |
        +-+-----+--+--+--+--+--+--+--+--+--+
          r w f  the access was a data read / data write / instruction fetch
          R W X  the AND of bits 0 / 1 / 2 of the EPT entries used to translate gpa
                 (0 from the first not-present entry on)
          GL     the guest-linear address field is valid (always, in hvsim)
          F      1: the access was to the datum (the translation of a linear address);
                 0: to a guest paging-structure entry, to read it or to set A/D in it

    GUEST_PHYSICAL_ADDRESS = ``gpa``, GUEST_LINEAR_ADDRESS = ``lin`` (28.2.1). The exit
    is fault-like: the instruction has not executed and restarts once the VMM returns.
    """
    if st[FAULT_PENDING] != 0:
        return
    st[_GPA] = gpa & MASK32
    st[_GLA] = lin & MASK32
    q = (acc & EPT_RWX) | ((rights & EPT_RWX) << 3) | X.EPT_QUAL_LINEAR_VALID
    if final != 0:
        q |= X.EPT_QUAL_FINAL_TRANSLATION
    raise_vmexit(st, _EPT_VIOLATION, q)


@njit(_nrt=False)
def ept_misconfig(st, gpa):
    """Raise an EPT misconfiguration (exit reason 49; 29.3.3.1): GUEST_PHYSICAL_ADDRESS =
    ``gpa``; the exit qualification is not used by this exit (28.2.1: cleared to 0)."""
    if st[FAULT_PENDING] != 0:
        return
    st[_GPA] = gpa & MASK32
    raise_vmexit(st, _EPT_MISCONFIG, 0)


# ---------------------------------------------------------------- the EPT walk
@njit(_nrt=False, inline="always")
def _read_ept_entry(mem, st, table, gpa, shift):
    """One EPT paging-structure reference: the entry that bits shift+8:shift of ``gpa``
    select in the table at host-physical ``table`` (29.3.2). Returns (pa, low dword,
    high dword); a bus error is raised when the 8 bytes are not all inside memory."""
    pa = table + ((gpa >> shift) & EPT_INDEX_MASK) * EPT_ENTRY_SIZE
    st[COUNTERS + C_EPT_WALK_REFS] += 1
    if pa < 0 or pa + EPT_ENTRY_SIZE > st[CFG_MEM_SIZE]:
        raise_bus_error(st, pa)
        return pa, 0, 0
    lo = (np.int64(mem[pa]) | (np.int64(mem[pa + 1]) << 8)
          | (np.int64(mem[pa + 2]) << 16) | (np.int64(mem[pa + 3]) << 24))
    hi = (np.int64(mem[pa + 4]) | (np.int64(mem[pa + 5]) << 8)
          | (np.int64(mem[pa + 6]) << 16) | (np.int64(mem[pa + 7]) << 24))
    return pa, lo, hi


@njit(_nrt=False, inline="always")
def _misconfigured(lo, hi, kind):
    """29.3.3.1, for a present entry (bits 2:0 not 000)."""
    if (lo & (EPT_R | EPT_W)) == EPT_W:            # write access without read access
        return True
    # X = 1 with R = 0 (execute-only) is allowed: IA32_VMX_EPT_VPID_CAP bit 0 = 1
    if (hi & EPT_HIGH_RSVD) != 0:                  # bits 51:32, beyond MAXPHYADDR = 32
        return True
    if kind == _NONLEAF:                           # bits 7:3 (a PDPTE's bit 7: 1 GiB page,
        return (lo & EPT_NONLEAF_RSVD) != 0        # which hvsim does not support)
    if ((EPT_MEMTYPE_RESERVED >> ((lo >> EPT_MEMTYPE_SHIFT) & 7)) & 1) != 0:
        return True                                # memory type 2, 3 or 7
    if kind == _LEAF_2M:
        return (lo & EPT_2M_RSVD) != 0             # bits 20:12 of a 2 MiB PDE
    return False


@njit(_nrt=False, inline="always")
def _stops(st, gpa, lin, acc, final, lo, hi, rights, kind):
    """The walk ends at this entry: not present (violation) or misconfigured."""
    if (lo & EPT_RWX) == 0:
        ept_violation(st, gpa, lin, acc, rights, final)
        return True
    if _misconfigured(lo, hi, kind):
        ept_misconfig(st, gpa)
        return True
    return False


@njit(_nrt=False, inline="always")
def _set_flags(mem, st, pg, pa, lo, bits):
    # EPT A (bit 8) and D (bit 9) live in byte 1 of the entry; the read checked bounds
    if (lo & bits) != bits:
        mem[pa + 1] = ((lo | bits) >> 8) & 0xFF
        if (pg[pa >> 12] & PG_WATCH) != 0:
            code_written(mem, st, pg, pa + 1, 1)


@njit(_nrt=False)
def walk_ept(mem, st, pg, gpa, acc, lin, final):
    """Translate guest-physical ``gpa`` for an access of kind ``acc`` (EPT_ACC_* bits)
    made to translate linear ``lin`` (``final`` = 1: the datum, 0: a guest paging-
    structure entry). Returns (hpa, rights, dirty): ``rights`` the AND of bits 2:0 over
    the entries used, ``dirty`` 1 when a later write needs no walk to set an EPT dirty
    flag (A/D flags off, or the leaf's D set). On an EPT violation, misconfiguration or
    bus error: (-1, 0, 0) with the fault pending.

    Guest-physical address, 4-level EPT (29.3.2)::

        47     39 38     30 29     21 20     12 11          0
        +--------+---------+---------+---------+------------+
        | PML4   |  PDPT   |   PD    |   PT    |   offset   |     4 KiB page
        +--------+---------+---------+---------+------------+
        | PML4   |  PDPT   |   PD    |   offset (21 bits)   |     2 MiB page (PDE bit 7)
        +--------+---------+---------+----------------------+
        (hvsim: 32-bit guest-physical addresses, so the PML4 index is 0)
    """
    st[COUNTERS + C_EPT_WALKS] += 1
    eptp = st[_EPTP]
    rights = EPT_RWX
    pa0, pml4e, hi = _read_ept_entry(mem, st, eptp & EPTP_PML4_MASK, gpa, EPT_SHIFT_PML4)
    if st[FAULT_PENDING] != 0:
        return -1, 0, 0
    rights &= pml4e
    if _stops(st, gpa, lin, acc, final, pml4e, hi, rights, _NONLEAF):
        return -1, 0, 0
    pa1, pdpte, hi = _read_ept_entry(mem, st, pml4e & EPT_ADDR, gpa, EPT_SHIFT_PDPT)
    if st[FAULT_PENDING] != 0:
        return -1, 0, 0
    rights &= pdpte
    if _stops(st, gpa, lin, acc, final, pdpte, hi, rights, _NONLEAF):
        return -1, 0, 0
    pa2, pde, hi = _read_ept_entry(mem, st, pdpte & EPT_ADDR, gpa, EPT_SHIFT_PD)
    if st[FAULT_PENDING] != 0:
        return -1, 0, 0
    rights &= pde
    pa3 = -1
    pte = 0
    if (pde & EPT_LARGE) != 0 and (pde & EPT_RWX) != 0:
        if _stops(st, gpa, lin, acc, final, pde, hi, rights, _LEAF_2M):
            return -1, 0, 0
        leaf = pde
        hpa = (pde & EPT_ADDR_2M) | (gpa & EPT_OFFSET_2M)
    else:
        if _stops(st, gpa, lin, acc, final, pde, hi, rights, _NONLEAF):
            return -1, 0, 0
        pa3, pte, hi = _read_ept_entry(mem, st, pde & EPT_ADDR, gpa, EPT_SHIFT_PT)
        if st[FAULT_PENDING] != 0:
            return -1, 0, 0
        rights &= pte
        if _stops(st, gpa, lin, acc, final, pte, hi, rights, _LEAF_4K):
            return -1, 0, 0
        leaf = pte
        hpa = (pte & EPT_ADDR) | (gpa & 0xFFF)
    rights &= EPT_RWX
    # 29.3.3.2: the access needs R for a read, W for a write, X for a fetch, in every entry
    if (acc & ~rights & EPT_RWX) != 0:
        ept_violation(st, gpa, lin, acc, rights, final)
        return -1, 0, 0
    dirty = 1
    if (eptp & EPTP_AD) != 0:
        # 29.3.5: A in every entry used; D in the leaf when the access is a write
        _set_flags(mem, st, pg, pa0, pml4e, EPT_A)
        _set_flags(mem, st, pg, pa1, pdpte, EPT_A)
        write = (acc & EPT_ACC_WRITE) != 0
        if pa3 < 0:
            _set_flags(mem, st, pg, pa2, pde, (EPT_A | EPT_D) if write else EPT_A)
        else:
            _set_flags(mem, st, pg, pa2, pde, EPT_A)
            _set_flags(mem, st, pg, pa3, pte, (EPT_A | EPT_D) if write else EPT_A)
        if not write and (leaf & EPT_D) == 0:
            dirty = 0
    return hpa, rights, dirty


# ---------------------------------------------------------------- the guest walk's hooks
@njit(_nrt=False)
def ept_guest_entry(mem, st, pg, gpa, lin):
    """(hpa, EPT rights) of the guest paging-structure entry at ``gpa``, read while
    translating ``lin``: a data read, or a write when EPT A/D flags are on (29.3.5);
    (-1, 0) with the exit pending."""
    acc = EPT_ACC_READ
    if (st[_EPTP] & EPTP_AD) != 0:
        acc |= EPT_ACC_WRITE
    hpa, rights, dirty = walk_ept(mem, st, pg, gpa, acc, lin, 0)
    return hpa, rights


@njit(_nrt=False)
def ept_guest_entry_update(st, gpa, lin, rights):
    """The guest walk is about to set A or D in its entry at ``gpa``: a data write
    (29.3.3.2), checked against the ``rights`` its EPT walk found -- no second walk.
    With EPT A/D flags on, that walk already asked for write access."""
    if (rights & EPT_W) == 0:
        ept_violation(st, gpa, lin, EPT_ACC_WRITE, rights, 0)


@njit(_nrt=False)
def ept_datum(mem, st, pg, gpa, lin, acc, flags):
    """(hpa, TLB flags) of the datum at ``gpa`` for a guest access of kind ``acc``
    (paging's ACC_* bits) at linear ``lin``; ``flags`` are the guest walk's TLB flags,
    returned restricted by EPT: the combined entry may serve only what both allow
    (TLBF_EPT_NR: no reads, TLBF_EPT_NX: no fetches; D cleared when a write must walk
    again -- EPT forbids writes, or its dirty flag is still to be set)."""
    if (acc & ACC_FETCH) != 0:
        kind = EPT_ACC_FETCH
    elif (acc & ACC_WRITE) != 0:
        kind = EPT_ACC_WRITE
    else:
        kind = EPT_ACC_READ
    hpa, rights, dirty = walk_ept(mem, st, pg, gpa, kind, lin, 1)
    if st[FAULT_PENDING] != 0:
        return 0, 0
    if (rights & EPT_R) == 0:
        flags |= TLBF_EPT_NR
    if (rights & EPT_X) == 0:
        flags |= TLBF_EPT_NX
    if (rights & EPT_W) == 0 or dirty == 0:
        flags &= ~TLBF_D
    return hpa, flags


# ---------------------------------------------------------------- reached by address
# The guest walk (paging.py) does not call the two hooks above directly: it calls
# :func:`ept_hook` by address, through the kernel table's entry KTAB_EPT, which the run
# loop copies into st[EPT_WALKER] at every call. So the 2-D walk is compiled apart, the
# first time a VMM enters a guest (hvsim/cpu/table.py), and not into the run loop and
# every handler that touches memory: about 2.4 s of the cold compile on the development
# machine (BENCHMARKS.md), for a machine that may never leave VMX root operation.
HOOK_GUEST_ENTRY = 0   # ept_guest_entry(gpa, lin)
HOOK_DATUM = 1         # ept_datum(gpa, lin, acc, flags)


@njit(_nrt=False)
def ept_hook(mem, st, pg, what, gpa, lin, acc, flags):
    """:func:`ept_guest_entry` (``what`` = HOOK_GUEST_ENTRY) or :func:`ept_datum`
    (HOOK_DATUM), with its two results left in st[EPT_RESULT_PA] and
    st[EPT_RESULT_FLAGS] (a C call returns one value: its status)."""
    if what == HOOK_GUEST_ENTRY:
        hpa, out = ept_guest_entry(mem, st, pg, gpa, lin)
    else:
        hpa, out = ept_datum(mem, st, pg, gpa, lin, acc, flags)
    st[EPT_RESULT_PA] = hpa
    st[EPT_RESULT_FLAGS] = out


if config.DISABLE_JIT:
    def call_ept(addr, mem, st, pg, what, gpa, lin, acc, flags):
        BY_ADDRESS[addr](mem, st, pg, what, gpa, lin, acc, flags)
        return STATUS_OK
else:
    @intrinsic
    def call_ept(typingctx, addr, mem, st, pg, what, gpa, lin, acc, flags):
        """``ept_hook(mem, st, pg, what, gpa, lin, acc, flags)`` through its C wrapper at
        ``addr``; the wrapper's status (STATUS_OK when the kernel returned)."""
        i64 = types.int64
        sig = types.int32(i64, mem, st, pg, i64, i64, i64, i64, i64)

        def codegen(context, builder, s, args):
            return call_c(context, builder, args[0], args[1:4], s.args[1:4], args[4:])
        return sig, codegen


@njit(_nrt=False, inline="always")
def ept_call(mem, st, pg, what, gpa, lin, acc, flags):
    """(hpa, rights or TLB flags) from the EPT walker this process compiled; (-1, 0) with
    a fault pending -- the walker's own (a VM exit, a bus error), or an internal error
    naming KTAB_EPT when there is no walker or it did not return its status."""
    addr = st[EPT_WALKER]
    if addr == 0 or call_ept(addr, mem, st, pg, what, gpa, lin, acc, flags) != STATUS_OK:
        raise_internal(st, KTAB_EPT)
        return -1, 0
    return st[EPT_RESULT_PA], st[EPT_RESULT_FLAGS]
