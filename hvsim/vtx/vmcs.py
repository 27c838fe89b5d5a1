"""The current VMCS: field access by encoding, and the region in memory (jitted).

The processor keeps the current VMCS in ``st[VMCS_CACHE + slot]`` (hvsim/arch/vmcs.py
gives the slot of each encoding and the region's layout). VMPTRLD reads a region into
the cache; VMCLEAR of the current VMCS, or VMPTRLD of another one, writes it back. The
SDM allows exactly this: "a logical processor may maintain a number of VMCSs that are
active ... data for the current VMCS may be cached", and software must not read or
write a region directly (SDM Vol. 3C, 25.1 and 25.11.1) -- which is why a guest's
stores into a region change nothing until the next VMPTRLD.

Every physical access here is bounds-checked: a region outside memory is an invalid
physical address for the instruction (the callers check before reading).
"""
import numpy as np

from hvsim._jit import njit
from hvsim.arch import vmcs as V
from hvsim.arch import vmx as X
from hvsim.arch.layout import CFG_MEM_SIZE, VMCS_CACHE, VMCS_LAUNCH_STATE, MASK32
from hvsim.mmu.paging import write_phys

# SLOT_ENCODING as an array the kernels index (numba freezes a global array as a constant)
_SLOT_ENCODING = np.array(V.SLOT_ENCODING, np.int64)
_DEFINED = 0x8000
_N_SLOTS = V.N_SLOTS
_W16, _W64 = V.W16, V.W64
_T_EXIT_INFO = V.T_EXIT_INFO
_REGION_FIELDS, _REGION_HIGH = V.REGION_FIELDS, V.REGION_HIGH
_REGION_SIZE = X.VMCS_REGION_SIZE


@njit
def field_slot(encoding):
    """Cache slot of a field encoding, or -1 when the processor has no such field
    (VMREAD/VMWRITE then fail with error 12). Bits 31:15 and 12 must be 0; the high
    access type exists only for 64-bit fields."""
    if encoding < 0 or encoding > 0x7FFF or (encoding & 0x1000) != 0:
        return -1
    width = (encoding >> 13) & 3
    if (encoding & 1) != 0 and width != _W64:
        return -1
    index = (encoding >> 1) & 0x1FF
    if index >= 32:
        return -1
    slot = width * 128 + ((encoding >> 10) & 3) * 32 + index
    e = _SLOT_ENCODING[slot]
    if (e & _DEFINED) == 0 or (e & 0x7FFE) != (encoding & 0x7FFE):
        return -1
    return slot


@njit
def read_only(encoding):
    """VM-exit information fields (type 1) are read-only (SDM 25.11.2)."""
    return ((encoding >> 10) & 3) == _T_EXIT_INFO


@njit
def read_field(st, slot, encoding):
    """The value VMREAD returns for a field (32-bit operand size): 16-bit fields
    zero-extended, a 64-bit field's low or high half by the access type."""
    v = st[VMCS_CACHE + slot]
    width = (encoding >> 13) & 3
    if width == _W16:
        return v & 0xFFFF
    if width == _W64 and (encoding & 1) != 0:
        return (v >> 32) & MASK32
    return v & MASK32


@njit
def write_field(st, slot, encoding, value):
    """VMWRITE: a 16-bit field keeps the low 16 bits of the operand; a 64-bit field's
    half named by the access type is replaced, the other half kept."""
    value &= MASK32
    width = (encoding >> 13) & 3
    old = st[VMCS_CACHE + slot]
    if width == _W16:
        st[VMCS_CACHE + slot] = value & 0xFFFF
    elif width == _W64:
        if (encoding & 1) != 0:
            st[VMCS_CACHE + slot] = (old & MASK32) | (value << 32)
        else:
            st[VMCS_CACHE + slot] = (old & ~MASK32) | value
    else:
        st[VMCS_CACHE + slot] = value


@njit
def region_in_memory(st, pa):
    """Whether a 4 KiB region at ``pa`` lies inside physical memory."""
    return 0 <= pa and pa + _REGION_SIZE <= st[CFG_MEM_SIZE]


@njit
def read32(mem, pa):
    return (np.int64(mem[pa]) | (np.int64(mem[pa + 1]) << 8)
            | (np.int64(mem[pa + 2]) << 16) | (np.int64(mem[pa + 3]) << 24))


@njit
def load_region(mem, st, pa):
    """VMPTRLD: the region's fields and launch state into the cache (the caller checked
    ``pa``)."""
    st[VMCS_LAUNCH_STATE] = read32(mem, pa + V.REGION_LAUNCH_STATE)
    for slot in range(_N_SLOTS):
        if (_SLOT_ENCODING[slot] & _DEFINED) == 0:
            st[VMCS_CACHE + slot] = 0
            continue
        v = read32(mem, pa + _REGION_FIELDS + 4 * slot)
        if slot >= 128 and slot < 256:            # 64-bit fields: the high half too
            v |= read32(mem, pa + _REGION_HIGH + 4 * (slot - 128)) << 32
        st[VMCS_CACHE + slot] = v


@njit
def store_region(mem, st, pg, pa):
    """The cache's fields and launch state into the region at ``pa`` (VMCLEAR, or
    VMPTRLD of another VMCS); through write_phys, so decoded code there is dropped."""
    write_phys(mem, st, pg, pa + V.REGION_LAUNCH_STATE, 4, st[VMCS_LAUNCH_STATE])
    for slot in range(_N_SLOTS):
        if (_SLOT_ENCODING[slot] & _DEFINED) == 0:
            continue
        v = st[VMCS_CACHE + slot]
        write_phys(mem, st, pg, pa + _REGION_FIELDS + 4 * slot, 4, v & MASK32)
        if slot >= 128 and slot < 256:
            write_phys(mem, st, pg, pa + _REGION_HIGH + 4 * (slot - 128), 4, (v >> 32) & MASK32)


@njit
def set_launch_state(mem, st, pg, pa, state):
    """The launch state of a VMCS that is not current, in its region (VMCLEAR)."""
    write_phys(mem, st, pg, pa + V.REGION_LAUNCH_STATE, 4, state)
