"""The instruction trace: one record per retired instruction (jitted).

An optional trace in the spirit of Intel's Branch Trace Store (SDM Vol. 3B, "Debug Store
(DS) Mechanism"): software names a buffer in memory, the processor writes records into
it, and software is told when it fills. The records are hvsim's own format
(hvsim/arch/layout.py, ITRACE_*): every *retired* instruction -- not only branches --
with its linear and physical address (and, for one whose bytes cross into the next
linear page, the physical address of that page), the CPL and IOPL it ran with, the
decoder's op, length, opcode and immediate, and where execution went next; and a
*code-written* record whenever a store hits a frame code was fetched from while tracing
(hvsim/mmu/frames.py) -- both frames of an instruction across two pages. A model of an
emulator's caches (hvsim/emulation/model.py) is computed from them.

The run loop (hvsim/cpu/run.py) stages an instruction's record before its handler runs
(:func:`stage`: the CPL and IOPL it starts with) and writes it when the instruction
retires (:func:`commit`); an instruction that faults, or a step of a REP string
instruction that does not finish it, writes none. Before a step it asks the host to
drain the buffer (ITRACE_FULL, an internal request: ``run()`` never shows it) when fewer
than ITRACE_RESERVE records are free, so no record is ever dropped; ITRACE_LOST counts
any that found no room, and the face raises on it. While tracing, translated blocks do
not run (they write no records), and every instruction takes the run loop's checked
path; with tracing off the cost is one test of a local flag per instruction.
"""
from hvsim._jit import njit
from hvsim.arch.layout import (MASK32, EIP, EFLAGS, CPL, SEG_BASE, SEG_AR, SREG_CS, AR_DB,
                               ITRACE_PC, ITRACE_PHYS, ITRACE_MODE, ITRACE_OPW, ITRACE_IMM, ITRACE_CSBASE,
                               ITRACE_PHYS2,
                               ITRACE_KIND_SHIFT, ITRACE_KIND_INSN, ITRACE_MODE_CS32,
                               ITRACE_RECORD_BYTES)
from hvsim.arch.flags import IOPL_MASK
from hvsim.cpu import decode as D
from hvsim.mmu.frames import put32, record_slot

_INSN_MODE = ITRACE_KIND_INSN << ITRACE_KIND_SHIFT


@njit(_nrt=False)
def stage(st, dc, row, eip, pa):
    """The record of the instruction at ``eip`` (decoded in ``row``, fetched from ``pa``),
    before its handler changes CPL, IOPL or CS."""
    base = st[SEG_BASE + SREG_CS]
    st[ITRACE_CSBASE] = base
    st[ITRACE_PC] = (base + eip) & MASK32
    st[ITRACE_PHYS] = pa
    mode = _INSN_MODE | st[CPL] | (st[EFLAGS] & IOPL_MASK)
    if (st[SEG_AR + SREG_CS] & AR_DB) != 0:
        mode |= ITRACE_MODE_CS32
    st[ITRACE_MODE] = mode
    st[ITRACE_OPW] = (dc[D.F_OP, row] | (dc[D.F_LEN, row] << 8) | ((dc[D.F_REG, row] & 7) << 12)
                      | (dc[D.F_OPC, row] << 16))
    st[ITRACE_IMM] = dc[D.F_IMM, row] & MASK32
    if (st[ITRACE_PC] & 0xFFF) + dc[D.F_LEN, row] <= 4096:
        st[ITRACE_PHYS2] = 0        # else: the second page's, left by the fetch (decode.py)


@njit(_nrt=False)
def commit(mem, st):
    """The staged instruction retired: write its record, with the next instruction's
    linear address (CS.base + EIP now)."""
    a = record_slot(st)
    if a < 0:
        return
    put32(mem, a, st[ITRACE_PC])
    put32(mem, a + 4, st[ITRACE_PHYS])
    put32(mem, a + 8, st[ITRACE_MODE])
    put32(mem, a + 12, st[ITRACE_OPW])
    put32(mem, a + 16, st[ITRACE_IMM])
    put32(mem, a + 20, (st[SEG_BASE + SREG_CS] + st[EIP]) & MASK32)
    put32(mem, a + 24, st[ITRACE_CSBASE])
    put32(mem, a + 28, st[ITRACE_PHYS2])
    for k in range(32, ITRACE_RECORD_BYTES):
        mem[a + k] = 0
