"""Selectors, segment descriptors and gates: bit layouts and decode helpers (jitted).

Everything here is ``@njit``. The pure bit-field helpers take plain ints; the table
helpers take ``(mem, st, tlb, pg, ...)`` and read the GDT/LDT through the MMU as
*implicit supervisor* accesses (no ACC_USER, whatever the CPL: SDM Vol. 3A, 4.6.1
"implicit supervisor-mode accesses"). Faults are recorded with hvsim.arch.fault;
callers test ``st[FAULT_PENDING]`` after every helper that reads memory.

A descriptor is handled as two little-endian dwords: ``lo`` (bytes 0-3) and ``hi``
(bytes 4-7), the way the SDM draws it (Vol. 3A, 3.4.5, Figure 3-8).
"""
from hvsim._jit import njit
from hvsim.arch.layout import (MASK32, GDTR_BASE, GDTR_LIMIT, LDTR_BASE, LDTR_LIMIT, LDTR_AR,
                              AR_S, AR_P, AR_UNUSABLE, AR_DB, FAULT_PENDING)
from hvsim.mmu.paging import read_lin, write_lin
from hvsim.arch.pte import ACC_READ, ACC_WRITE

# --- segment selector (SDM Vol. 3A, 3.4.2, Figure 3-6) --------------------------------
#
#    15                      3   2   1 0
#   +-------------------------+----+-----+
#   |          index          | TI | RPL |
#   +-------------------------+----+-----+
#     TI = 0: GDT, 1: LDT.  A selector with index 0 and TI 0 is the *null selector*
#     (SDM 3.4.2): it may sit in DS/ES/FS/GS but any access through it is #GP(0).
SEL_RPL_MASK = 0x3
SEL_TI = 1 << 2
SEL_INDEX_MASK = 0xFFF8        # index * 8 = byte offset of the descriptor in its table

# --- error code of a segment-related exception (SDM Vol. 3A, 6.13, Figure 6-6) ------------
#
#    31         16 15                     3   2     1     0
#   +-------------+------------------------+-----+-----+-----+
#   |  reserved   |   segment selector     | TI  | IDT | EXT |
#   |             |        index           |     |     |     |
#   +-------------+------------------------+-----+-----+-----+
#     EXT: the fault happened while delivering an event external to the program
#          (an interrupt or an earlier exception).  IDT: the index is an IDT vector
#          (bits 15:3 = vector), TI is then meaningless.
ERR_EXT = 1 << 0
ERR_IDT = 1 << 1
ERR_SEL_MASK = 0xFFFC          # index and TI of a selector; RPL is replaced by IDT/EXT

# --- segment descriptor, high dword (SDM Vol. 3A, 3.4.5, Figure 3-8) ---------------------
#
#    31        24 23 22 21 20 19    16 15 14 13 12 11   8 7          0
#   +------------+--+---+--+---+-------+--+-----+--+------+------------+
#   | base 31:24 |G |D/B|L |AVL|lim    |P | DPL |S | type | base 23:16 |
#   |            |  |   |  |   | 19:16 |  |     |  |      |            |
#   +------------+--+---+--+---+-------+--+-----+--+------+------------+
#   low dword:
#    31                              16 15                              0
#   +----------------------------------+---------------------------------+
#   |           base 15:00             |          limit 15:00            |
#   +----------------------------------+---------------------------------+
#
# Bits 8..15 and 20..23 of the high dword are, shifted right by 8, exactly the
# VMCS access-rights layout the segment caches use (layout.py SEG_AR):
#   AR = (hi >> 8) & 0xF0FF   ->  type 3:0, S 4, DPL 6:5, P 7, AVL 12, L 13, D/B 14, G 15
HI_AR_SHIFT = 8
HI_AR_MASK = 0xF0FF
HI_ACCESSED = 1 << 8           # type bit 0 of a code/data descriptor: "accessed"
HI_G = 1 << 23

# Type field of code and data descriptors, S = 1 (SDM Vol. 3A, 3.4.5.1, Table 3-1)
TYPE_ACCESSED = 1 << 0
TYPE_DATA_WRITABLE = 1 << 1    # data: W
TYPE_CODE_READABLE = 1 << 1    # code: R
TYPE_DATA_EXPAND_DOWN = 1 << 2  # data: E
TYPE_CODE_CONFORMING = 1 << 2   # code: C
TYPE_CODE = 1 << 3

# Type field of system descriptors, S = 0 (SDM Vol. 3A, 3.5, Table 3-2, 32-bit mode)
SYS_TSS16_AVAIL = 0x1
SYS_LDT = 0x2
SYS_TSS16_BUSY = 0x3
SYS_CALL_GATE16 = 0x4
SYS_TASK_GATE = 0x5
SYS_INT_GATE16 = 0x6
SYS_TRAP_GATE16 = 0x7
SYS_TSS32_AVAIL = 0x9
SYS_TSS32_BUSY = 0xB
SYS_CALL_GATE32 = 0xC
SYS_INT_GATE32 = 0xE
SYS_TRAP_GATE32 = 0xF
TSS_BUSY_BIT = 1 << 1          # type 9 -> 0xB (SDM Vol. 3A, 7.2.2)

# --- gate descriptor: call, interrupt, trap, task (SDM Vol. 3A, 5.8.3 Figure 5-8;
#     6.11 Figure 6-2) ---------------------------------------------------------------
#   high dword:
#    31                            16 15 14 13 12 11   8 7   5 4       0
#   +--------------------------------+--+-----+--+------+-----+---------+
#   |         offset 31:16           |P | DPL |0 | type | 000 | params  |
#   +--------------------------------+--+-----+--+------+-----+---------+
#   low dword:
#    31                            16 15                               0
#   +--------------------------------+----------------------------------+
#   |     segment selector           |          offset 15:00            |
#   +--------------------------------+----------------------------------+
#   params: dwords a call gate copies to the new stack (5 bits); interrupt and trap
#   gates hold 0 there. A task gate uses only the selector (of a TSS).
GATE_PARAM_MASK = 0x1F

# --- 32-bit TSS (SDM Vol. 3A, 7.2.1, Figure 7-2): the fields this model reads --------------
TSS_ESP0 = 4                   # ESPn at 4 + 8*n, SSn at 8 + 8*n
TSS_SS0 = 8
TSS_IOMAP_BASE = 102           # 16-bit offset of the I/O permission bitmap
TSS32_MIN_LIMIT = 103          # a 32-bit TSS is at least 104 bytes (SDM 7.2.2)

# The upper bound of an expand-down segment (SDM Vol. 3A, 3.4.5.1): B/D decides
EXPAND_DOWN_TOP_BIG = 0xFFFFFFFF
EXPAND_DOWN_TOP_SMALL = 0xFFFF


# --- selector fields ---------------------------------------------------------------------
@njit
def sel_rpl(sel):
    return sel & SEL_RPL_MASK


@njit
def sel_is_null(sel):
    """Index 0 in the GDT (RPL ignored). Index 0 with TI=1 is LDT entry 0, not null."""
    return (sel & ERR_SEL_MASK) == 0


@njit
def sel_error(sel, ext):
    """Error code naming a selector: index and TI, plus EXT (SDM 6.13)."""
    return (sel & ERR_SEL_MASK) | ext


@njit
def idt_error(vector, ext):
    """Error code naming IDT entry ``vector``: vector*8 + IDT bit (2) + EXT."""
    return ((vector & 0xFF) << 3) | ERR_IDT | ext


# --- descriptor fields (lo, hi) ----------------------------------------------------------
@njit
def desc_base(lo, hi):
    return ((lo >> 16) & 0xFFFF) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)


@njit
def desc_limit(lo, hi):
    """The segment limit in bytes: 20-bit field, scaled to 4 KiB units when G = 1."""
    raw = (lo & 0xFFFF) | (hi & 0x000F0000)
    if hi & HI_G:
        return ((raw << 12) | 0xFFF) & MASK32
    return raw


@njit
def desc_ar(hi):
    """Access rights in the VMCS layout of the segment caches (layout.py SEG_AR)."""
    return (hi >> HI_AR_SHIFT) & HI_AR_MASK


@njit
def gate_selector(lo):
    return (lo >> 16) & 0xFFFF


@njit
def gate_offset(lo, hi):
    return (lo & 0xFFFF) | (hi & 0xFFFF0000)


@njit
def gate_params(hi):
    return hi & GATE_PARAM_MASK


# --- access-rights predicates (AR in the cache layout) --------------------------------------
@njit
def ar_dpl(ar):
    return (ar >> 5) & 3


@njit
def ar_present(ar):
    return (ar & AR_P) != 0


@njit
def ar_system_type(ar):
    """The type of a system descriptor (S = 0), or -1 for a code/data descriptor."""
    if ar & AR_S:
        return -1
    return ar & 0xF


@njit
def ar_is_code(ar):
    return (ar & AR_S) != 0 and (ar & TYPE_CODE) != 0


@njit
def ar_is_data(ar):
    return (ar & AR_S) != 0 and (ar & TYPE_CODE) == 0


@njit
def ar_is_conforming(ar):
    return ar_is_code(ar) and (ar & TYPE_CODE_CONFORMING) != 0


@njit
def ar_is_readable(ar):
    """Data segments are always readable; code segments only with R set."""
    if ar & AR_S == 0:
        return False
    if ar & TYPE_CODE:
        return (ar & TYPE_CODE_READABLE) != 0
    return True


@njit
def ar_is_writable_data(ar):
    return ar_is_data(ar) and (ar & TYPE_DATA_WRITABLE) != 0


@njit
def ar_is_expand_down(ar):
    return ar_is_data(ar) and (ar & TYPE_DATA_EXPAND_DOWN) != 0


# --- reaching a descriptor in the GDT or LDT ----------------------------------------------
@njit
def desc_in_table(st, sel):
    """True when the selector's 8-byte descriptor lies within its table's limit
    (an unusable LDTR has no entries)."""
    end = (sel & SEL_INDEX_MASK) + 7
    if sel & SEL_TI:
        if st[LDTR_AR] & AR_UNUSABLE:
            return False
        return end <= st[LDTR_LIMIT]
    return end <= st[GDTR_LIMIT]


@njit
def desc_lin(st, sel):
    """Linear address of the selector's descriptor (check ``desc_in_table`` first)."""
    if sel & SEL_TI:
        return (st[LDTR_BASE] + (sel & SEL_INDEX_MASK)) & MASK32
    return (st[GDTR_BASE] + (sel & SEL_INDEX_MASK)) & MASK32


@njit
def read_desc(mem, st, tlb, pg, sel):
    """(lo, hi) of the selector's descriptor: two implicit supervisor reads."""
    lin = desc_lin(st, sel)
    lo = read_lin(mem, st, tlb, pg, lin, 4, ACC_READ)
    if st[FAULT_PENDING] != 0:
        return 0, 0
    hi = read_lin(mem, st, tlb, pg, (lin + 4) & MASK32, 4, ACC_READ)
    return lo, hi


@njit
def set_accessed(mem, st, tlb, pg, sel, hi):
    """Set the Accessed bit (descriptor bit 40) of a code/data descriptor, as the CPU
    does when it loads a segment register (SDM Vol. 3A, 3.4.5.1). Written only when
    clear, so tables whose bits are preset may live in read-only pages. Returns hi
    with the bit set."""
    if hi & HI_ACCESSED:
        return hi
    lin = (desc_lin(st, sel) + 5) & MASK32
    write_lin(mem, st, tlb, pg, lin, 1, ((hi >> 8) | TYPE_ACCESSED) & 0xFF, ACC_WRITE)
    return hi | HI_ACCESSED


@njit
def big_stack(ar):
    """SS.B: 1 -> ESP is the stack pointer, 0 -> SP (SDM Vol. 3A, 3.4.5)."""
    return (ar & AR_DB) != 0

