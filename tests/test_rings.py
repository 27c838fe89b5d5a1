"""Tests of hvsim.rings: segment loads, event delivery, far transfers, IRET, LAR & co.

Oracle: values derived by hand from the Intel SDM (Vol. 2 instruction "Operation"
sections; Vol. 3A chapters 5-7, Table 6-5; Vol. 1 19.5) -- each expected number below
is written out, not recomputed by the code under test.
"""
import struct

import numpy as np
import pytest

from hvsim.arch import layout as L
from hvsim.arch import counters as C
from hvsim.arch import flags as F
from hvsim.arch.cr import CR0_PE, CR0_PG
from hvsim.arch.pte import PTE_P, PTE_RW, PTE_US
from hvsim.rings import (make_descriptor, make_gate, make_tss, decode_descriptor,
                         put_descriptors, selector, decode_selector)
from hvsim.rings.segments import load_sreg, seg_lin, push32, pop32, update_flat
from hvsim.rings.interrupts import (deliver, trace_record, EV_FAULT, EV_SOFTWARE,
                                    EV_EXTERNAL)
from hvsim.rings.transfers import far_jmp, far_call, far_ret, iret
from hvsim.rings.sysinsn import lar, lsl, verr, verw, ltr, lldt, io_permitted

MEM = 1 << 20
GDT, IDT, TSS, LDT = 0x1000, 0x2000, 0x3000, 0x3800
STACK0, STACK1, STACK3 = 0x9000, 0xA000, 0x8000
FLAT = 0xFFFFF

# GDT slots
K_CODE, K_DATA, U_CODE, U_DATA, TSS_SEL = 0x08, 0x10, 0x18, 0x20, 0x28
GATE0 = 0x30          # call gate -> K_CODE, DPL 3, 3 params
R1_CODE, R1_DATA = 0x38, 0x40
NP_DATA3 = 0x48       # DPL 3 data, not present
RO_DATA3 = 0x50       # DPL 3 read-only data
XO_CODE3 = 0x58       # DPL 3 execute-only code
CONF_CODE0 = 0x60     # DPL 0 conforming readable code
LDT_SEL = 0x68
SPARE = 0x70          # rewritten by table-driven tests
GATE_JMP = 0x78       # call gate -> K_CODE, DPL 3, 0 params
GDT_ENTRIES = 17

SREGS = {"es": L.SREG_ES, "cs": L.SREG_CS, "ss": L.SREG_SS, "ds": L.SREG_DS,
         "fs": L.SREG_FS, "gs": L.SREG_GS}


def gdt_descriptors(tss_limit=103):
    d = [0] * GDT_ENTRIES
    d[K_CODE >> 3] = make_descriptor(0, FLAT, 0xA, 1, 0, 1, 1, 1)
    d[K_DATA >> 3] = make_descriptor(0, FLAT, 0x2, 1, 0, 1, 1, 1)
    d[U_CODE >> 3] = make_descriptor(0, FLAT, 0xA, 1, 3, 1, 1, 1)
    d[U_DATA >> 3] = make_descriptor(0, FLAT, 0x2, 1, 3, 1, 1, 1)
    d[TSS_SEL >> 3] = make_descriptor(TSS, tss_limit, 0x9, 0, 0, 1, 0, 0)
    d[GATE0 >> 3] = make_gate("call", K_CODE, 0x6000, dpl=3, param_count=3)
    d[R1_CODE >> 3] = make_descriptor(0, FLAT, 0xA, 1, 1, 1, 1, 1)
    d[R1_DATA >> 3] = make_descriptor(0, FLAT, 0x2, 1, 1, 1, 1, 1)
    d[NP_DATA3 >> 3] = make_descriptor(0, FLAT, 0x2, 1, 3, 0, 1, 1)
    d[RO_DATA3 >> 3] = make_descriptor(0, FLAT, 0x0, 1, 3, 1, 1, 1)
    d[XO_CODE3 >> 3] = make_descriptor(0, FLAT, 0x8, 1, 3, 1, 1, 1)
    d[CONF_CODE0 >> 3] = make_descriptor(0, FLAT, 0xE, 1, 0, 1, 1, 1)
    d[LDT_SEL >> 3] = make_descriptor(LDT, 15, 0x2, 0, 0, 1, 0, 0)
    d[GATE_JMP >> 3] = make_gate("call", K_CODE, 0x6100, dpl=3)
    return d


class Machine:
    """Bare arrays plus a few readers: what a kernel sees."""

    def __init__(self, cpl=3, tss=None, tss_limit=103):
        self.mem = np.zeros(MEM, np.uint8)
        self.st = np.zeros(L.ST_SIZE, np.int64)
        self.tlb = np.zeros(16 * 4 * L.TLB_FIELDS, np.int64)
        self.pg = np.zeros(MEM >> 12, np.int64)
        st = self.st
        st[L.CFG_MEM_SIZE] = MEM
        st[L.CFG_TLB_SETS], st[L.CFG_TLB_WAYS], st[L.CFG_TLB_ENABLED] = 16, 4, 1
        st[L.CR0] = CR0_PE
        st[L.IRQ_PENDING] = -1
        st[L.DELIVERING] = -1
        st[L.GDTR_BASE] = GDT
        st[L.GDTR_LIMIT] = put_descriptors(self.mem, GDT, gdt_descriptors(tss_limit))
        st[L.IDTR_BASE] = IDT
        st[L.IDTR_LIMIT] = 256 * 8 - 1
        st[L.LDTR_AR] = L.AR_UNUSABLE
        tss = tss if tss is not None else make_tss(STACK0, K_DATA, STACK1, R1_DATA | 1)
        self.mem[TSS:TSS + len(tss)] = list(tss)
        st[L.TR_SEL], st[L.TR_BASE], st[L.TR_LIMIT] = TSS_SEL, TSS, tss_limit
        st[L.TR_AR] = 0x8B                         # present busy 32-bit TSS
        st[L.EFLAGS] = F.FIXED1 | F.IF
        self.set_cpl(cpl)

    def k(self, fn, *args):
        return fn(self.mem, self.st, self.tlb, self.pg, *args)

    def cache(self, sreg, sel):
        """Load a segment cache straight from the GDT, as a completed load would."""
        raw = int.from_bytes(self.mem[GDT + (sel & ~7): GDT + (sel & ~7) + 8].tobytes(),
                             "little")
        d = decode_descriptor(raw)
        r = SREGS[sreg]
        self.st[L.SEG_SEL + r] = sel
        self.st[L.SEG_BASE + r] = d.base
        self.st[L.SEG_LIMIT + r] = d.limit
        self.st[L.SEG_AR + r] = (raw >> 40) & 0xF0FF

    def set_cpl(self, cpl):
        code, data = {0: (K_CODE, K_DATA), 1: (R1_CODE | 1, R1_DATA | 1),
                      3: (U_CODE | 3, U_DATA | 3)}[cpl]
        self.st[L.CPL] = cpl
        self.cache("cs", code)
        for r in ("ss", "ds", "es", "fs", "gs"):
            self.cache(r, data)
        self.st[L.ESP] = STACK3 if cpl == 3 else (STACK0 if cpl == 0 else STACK1)
        update_flat(self.st)

    def set_gdt(self, sel, desc):
        put_descriptors(self.mem, GDT + (sel & ~7), [desc])

    def set_idt(self, vector, desc):
        put_descriptors(self.mem, IDT + 8 * vector, [desc])

    def dwords(self, addr, n):
        return list(struct.unpack_from(f"<{n}I", self.mem.tobytes(), addr))

    def poke32(self, addr, *values):
        for i, v in enumerate(values):
            self.mem[addr + 4 * i: addr + 4 * i + 4] = list(struct.pack("<I", v))

    def seg(self, sreg):
        r = SREGS[sreg]
        s = self.st
        return s[L.SEG_SEL + r], s[L.SEG_BASE + r], s[L.SEG_LIMIT + r], s[L.SEG_AR + r]

    @property
    def fault(self):
        s = self.st
        if s[L.FAULT_PENDING] == 0:
            return None
        return int(s[L.FAULT_VECTOR]), int(s[L.FAULT_ERROR])

    def ctr(self, c):
        return int(self.st[L.COUNTERS + c])


def handlers(m, gate_dpl=0, kind="interrupt"):
    """Gates 0..31 and 0x80 -> ring-0 handler at 0x5000 + 16*vector."""
    for v in list(range(32)) + [0x80]:
        m.set_idt(v, make_gate(kind, K_CODE, 0x5000 + 16 * v, dpl=gate_dpl))


# --- Python helpers ------------------------------------------------------------------------
def test_descriptor_builders_match_sdm_bit_layout():
    # Linux's classic flat segments: 0x00CF9A000000FFFF (code), 0x00CF92000000FFFF (data)
    assert make_descriptor(0, 0xFFFFF, 0xA, 1, 0, 1, 1, 1) == 0x00CF9A000000FFFF
    assert make_descriptor(0, 0xFFFFF, 0x2, 1, 0, 1, 1, 1) == 0x00CF92000000FFFF
    d = make_descriptor(0x12345678, 0xABCDE, 0x2, 1, 2, 1, 0, 0)
    assert d == 0x120AD234_5678BCDE
    dd = decode_descriptor(d)
    assert (dd.base, dd.limit, dd.dpl, dd.kind, dd.g) == (0x12345678, 0xABCDE, 2, "data", 0)
    g = make_gate("call", 0x08, 0xDEADBEEF, dpl=3, param_count=2)
    assert g == 0xDEAD_EC02_0008_BEEF
    assert decode_descriptor(g).param_count == 2
    assert selector(5, 1, 3) == 0x2F and decode_selector(0x2F)["ti"] == "LDT"
    tss = make_tss(0x1111, 0x10, 0x2222, 0x19, 0x3333, 0x2A, iomap_base=104,
                   io_bitmap=b"\x01\x80")
    assert struct.unpack_from("<IIIIII", tss, 4) == (0x1111, 0x10, 0x2222, 0x19, 0x3333, 0x2A)
    assert struct.unpack_from("<H", tss, 102)[0] == 104
    assert tss[104:] == b"\x01\x80\xff"


# --- segment loads (SDM Vol. 2, MOV "Operation") -------------------------------------------
@pytest.mark.parametrize("cpl, sreg, sel, fault", [
    (3, "ds", K_DATA, (13, K_DATA)),            # DPL 0 < CPL 3
    (0, "ds", K_DATA | 3, (13, K_DATA)),        # RPL 3 > DPL 0
    (3, "ds", NP_DATA3 | 3, (11, NP_DATA3)),    # not present -> #NP(sel)
    (3, "ds", TSS_SEL | 3, (13, TSS_SEL)),      # system segment
    (3, "ds", XO_CODE3 | 3, (13, XO_CODE3)),    # execute-only code
    (3, "ds", 0x400 | 3, (13, 0x400)),          # beyond the GDT limit
    (3, "ds", 0x4 | 3, (13, 0x4)),              # LDT selector, LDTR unusable
    (3, "ss", 0, (13, 0)),                      # null SS
    (3, "ss", K_DATA | 3, (13, K_DATA)),        # DPL != CPL
    (0, "ss", K_DATA | 3, (13, K_DATA)),        # RPL != CPL
    (3, "ss", RO_DATA3 | 3, (13, RO_DATA3)),    # not writable
    (3, "ss", U_CODE | 3, (13, U_CODE)),        # code
    (3, "ss", NP_DATA3 | 3, (12, NP_DATA3)),    # not present -> #SS(sel)
    (3, "cs", U_CODE | 3, (6, -1)),             # MOV CS is #UD
])
def test_load_sreg_faults(cpl, sreg, sel, fault):
    m = Machine(cpl)
    before = m.seg(sreg)
    m.k(load_sreg, SREGS[sreg], sel)
    assert m.fault == fault
    assert m.seg(sreg) == before


@pytest.mark.parametrize("cpl, sreg, sel", [
    (3, "ds", U_DATA | 3), (3, "es", RO_DATA3 | 3), (3, "fs", U_CODE | 3),
    (3, "gs", CONF_CODE0 | 3),                  # conforming readable code: no DPL check
    (0, "ss", K_DATA), (1, "ss", R1_DATA | 1), (0, "ds", U_DATA | 3),
])
def test_load_sreg_accepts_and_sets_accessed_bit(cpl, sreg, sel):
    m = Machine(cpl)
    idx = GDT + (sel & ~7) + 5
    assert m.mem[idx] & 1 == 0
    m.k(load_sreg, SREGS[sreg], sel)
    assert m.fault is None
    s, base, limit, ar = m.seg(sreg)
    assert (s, base, limit) == (sel, 0, 0xFFFFFFFF)
    assert m.mem[idx] & 1 == 1 and ar & 1 == 1          # bit 40 in memory and cache
    assert m.ctr(C.C_SEG_LOAD) == 1


def test_null_ds_is_loadable_then_any_access_faults():
    m = Machine(3)
    assert m.st[L.FLAT] == 1
    m.k(load_sreg, L.SREG_DS, 3)
    assert m.fault is None and m.seg("ds")[3] & L.AR_UNUSABLE
    assert m.st[L.FLAT] == 0
    assert seg_lin(m.st, L.SREG_DS, 0x100, 4, 0) == 0 and m.fault == (13, 0)


def test_seg_lin_limit_and_type_checks():
    m = Machine(0)
    # byte-granular data segment base 0x10000, limit 0xFFF
    m.set_gdt(SPARE, make_descriptor(0x10000, 0xFFF, 0x3, 1, 0, 1, 1, 0))
    m.cache("ds", SPARE)
    assert seg_lin(m.st, L.SREG_DS, 0xFFC, 4, 1) == 0x10FFC and m.fault is None
    seg_lin(m.st, L.SREG_DS, 0xFFD, 4, 0)
    assert m.fault == (13, 0)
    m.st[L.FAULT_PENDING] = 0
    # expand-down, B=1, limit 0xFFF: valid offsets 0x1000..0xFFFFFFFF
    m.set_gdt(SPARE, make_descriptor(0, 0xFFF, 0x7, 1, 0, 1, 1, 0))
    m.cache("ss", SPARE)
    assert seg_lin(m.st, L.SREG_SS, 0x1000, 4, 1) == 0x1000 and m.fault is None
    seg_lin(m.st, L.SREG_SS, 0xFFE, 4, 1)
    assert m.fault == (12, 0)                           # SS -> #SS(0)
    m.st[L.FAULT_PENDING] = 0
    m.cache("es", RO_DATA3)
    seg_lin(m.st, L.SREG_ES, 0, 1, 1)
    assert m.fault == (13, 0)                           # write to read-only data
    m.st[L.FAULT_PENDING] = 0
    m.cache("fs", XO_CODE3)
    seg_lin(m.st, L.SREG_FS, 0, 1, 0)
    assert m.fault == (13, 0)                           # read of execute-only code
    m.st[L.FAULT_PENDING] = 0
    m.cache("gs", K_CODE)
    assert seg_lin(m.st, L.SREG_GS, 8, 1, 0) == 8       # readable code: read ok
    seg_lin(m.st, L.SREG_GS, 8, 1, 1)
    assert m.fault == (13, 0)                           # ... never writable


def test_push_pop_through_ss_and_stack_limit():
    m = Machine(3)
    m.k(push32, 0xCAFEBABE)
    assert m.st[L.ESP] == STACK3 - 4 and m.dwords(STACK3 - 4, 1) == [0xCAFEBABE]
    assert m.k(pop32) == 0xCAFEBABE and m.st[L.ESP] == STACK3
    m.set_gdt(SPARE, make_descriptor(0, 0xFFF, 0x3, 1, 3, 1, 1, 0))  # SS limit 0xFFF
    m.cache("ss", SPARE | 3)
    m.st[L.ESP] = 0x1002
    m.k(pop32)
    assert m.fault == (12, 0) and m.st[L.ESP] == 0x1002


# --- event delivery (SDM Vol. 3A, 6.12) -----------------------------------------------------
def test_privilege_change_frame_on_tss_stack_interrupt_gate():
    m = Machine(3)
    handlers(m)
    m.st[L.EFLAGS] = F.FIXED1 | F.IF | F.TF | F.CF | (3 << F.IOPL_SHIFT)
    m.st[L.ESP] = STACK3 - 0x10
    m.st[L.EIP] = 0x4000
    m.st[L.TSC] = 77
    m.k(deliver, 13, 0x28, EV_FAULT)
    assert m.fault is None
    # new stack: TSS.ESP0 - 24, frame from the low end: error, EIP, CS, EFLAGS, ESP, SS
    assert m.st[L.ESP] == STACK0 - 24
    assert m.dwords(STACK0 - 24, 6) == [0x28, 0x4000, U_CODE | 3,
                                        F.FIXED1 | F.IF | F.TF | F.CF | 0x3000,
                                        STACK3 - 0x10, U_DATA | 3]
    assert m.st[L.CPL] == 0 and m.seg("cs")[0] == K_CODE and m.seg("ss")[0] == K_DATA
    assert m.st[L.EIP] == 0x5000 + 16 * 13
    assert m.st[L.EFLAGS] == F.FIXED1 | F.CF | 0x3000     # IF and TF cleared
    assert m.ctr(C.C_PRIV_SWITCH) == 1 and m.ctr(C.C_INT_VEC + 13) == 1
    assert m.ctr(C.C_FAULT_DELIVERY) == 1
    t = L.TRACE_BUF
    # a fault: the instruction's EIP and the EIP pushed (the last field) are one
    assert list(m.st[t:t + 8]) == [2, 13, 0x28, 0x4000, 3, 0, 77, 0x4000]
    assert m.st[L.TRACE_HEAD] == 1


def test_trap_gate_keeps_if_and_software_int_pushes_no_error_code():
    m = Machine(3)
    m.set_idt(0x80, make_gate("trap", K_CODE, 0x7000, dpl=3))
    m.st[L.EIP] = 0x4002
    m.st[L.INSN_EIP] = 0x4000                            # the INT 0x80 (CD 80)
    m.k(deliver, 0x80, 1234, EV_SOFTWARE)                # error ignored for INT n
    assert m.fault is None
    assert m.st[L.ESP] == STACK0 - 20
    assert m.dwords(STACK0 - 20, 5) == [0x4002, U_CODE | 3, F.FIXED1 | F.IF, STACK3,
                                        U_DATA | 3]
    assert m.st[L.EFLAGS] & F.IF and m.st[L.EIP] == 0x7000
    assert m.ctr(C.C_FAULT_DELIVERY) == 0 and m.ctr(C.C_INT_VEC + 0x80) == 1
    t = L.TRACE_BUF                                      # the INT's EIP, then the pushed one
    assert (m.st[t + 3], m.st[t + 7]) == (0x4000, 0x4002)


def test_same_privilege_delivery_and_conforming_handler_keeps_cpl():
    m = Machine(0)
    handlers(m)
    m.st[L.EIP] = 0x1234
    m.k(deliver, 14, 0x2, EV_FAULT)
    assert m.st[L.ESP] == STACK0 - 16 and m.seg("ss")[0] == K_DATA
    assert m.dwords(STACK0 - 16, 4) == [2, 0x1234, K_CODE, F.FIXED1 | F.IF]
    assert m.ctr(C.C_PRIV_SWITCH) == 0
    # ring 3 -> conforming DPL-0 code: no stack switch, CPL stays 3, CS.RPL = 3
    m = Machine(3)
    m.set_idt(0x81, make_gate("interrupt", CONF_CODE0, 0x7100, dpl=3))
    m.st[L.EIP] = 0x4444
    m.k(deliver, 0x81, -1, EV_SOFTWARE)
    assert m.st[L.CPL] == 3 and m.seg("cs")[0] == CONF_CODE0 | 3
    assert m.st[L.ESP] == STACK3 - 12 and m.dwords(STACK3 - 12, 1) == [0x4444]


def test_int_n_through_dpl0_gate_from_ring3_is_gp_vector_8_plus_2():
    m = Machine(3)
    handlers(m, gate_dpl=0)
    m.st[L.INSN_EIP] = 0x4000                            # INT 0x80 at 0x4000 ...
    m.st[L.EIP] = 0x4002                                 # ... next instruction
    m.k(deliver, 0x80, -1, EV_SOFTWARE)
    assert m.fault is None
    assert m.st[L.EIP] == 0x5000 + 16 * 13               # the #GP handler runs
    # error code 0x80*8+2 (IDT bit, EXT=0 for INT n); saved EIP = the INT instruction
    assert m.dwords(STACK0 - 24, 2) == [0x80 * 8 + 2, 0x4000]
    assert m.ctr(C.C_INT_VEC + 0x80) == 0 and m.ctr(C.C_INT_VEC + 13) == 1
    # the same with #GP routed to the host: left pending, nothing else changed
    m = Machine(3)
    handlers(m, gate_dpl=0)
    m.st[L.ROUTE + 13] = L.ROUTE_HOST
    m.st[L.INSN_EIP], m.st[L.EIP] = 0x4000, 0x4002
    m.k(deliver, 0x80, -1, EV_SOFTWARE)
    assert m.fault == (13, 0x402)
    assert m.st[L.CPL] == 3 and m.st[L.ESP] == STACK3 and m.st[L.EIP] == 0x4000
    assert m.st[L.TRACE_HEAD] == 0


def test_gate_errors_carry_ext_for_hardware_events():
    m = Machine(3)
    handlers(m)
    m.set_idt(32, make_gate("interrupt", K_CODE, 0x7200, dpl=0, present=0))
    m.st[L.ROUTE + 11] = L.ROUTE_HOST
    m.k(deliver, 32, -1, EV_EXTERNAL)
    assert m.fault == (11, 32 * 8 + 2 + 1)               # #NP(IDT, EXT)
    m = Machine(3)
    handlers(m)
    m.set_idt(33, make_gate("task", TSS_SEL, 0, dpl=0))  # task gates not modelled
    m.st[L.ROUTE + 13] = L.ROUTE_HOST
    m.k(deliver, 33, -1, EV_EXTERNAL)
    assert m.fault == (13, 33 * 8 + 2 + 1)
    m = Machine(3)
    handlers(m)
    m.set_idt(34, make_gate("interrupt", U_DATA, 0x7200, dpl=0))  # not code
    m.st[L.ROUTE + 13] = L.ROUTE_HOST
    m.k(deliver, 34, -1, EV_EXTERNAL)
    assert m.fault == (13, U_DATA + 1)
    # TSS with a null SS0: #TS(EXT)
    m = Machine(3, tss=make_tss(STACK0, 0))
    handlers(m)
    m.st[L.ROUTE + 10] = L.ROUTE_HOST
    m.k(deliver, 6, -1, EV_FAULT)
    assert m.fault == (10, 1)
    # ... a TSS too short to hold SS0: #TS(TR selector + EXT)
    m = Machine(3, tss_limit=7)
    handlers(m)
    m.st[L.ROUTE + 10] = L.ROUTE_HOST
    m.k(deliver, 6, -1, EV_FAULT)
    assert m.fault == (10, TSS_SEL + 1)


# --- nested faults (SDM Vol. 3A, 6.15, Table 6-5) -------------------------------------------
def test_benign_then_contributory_is_delivered_serially():
    m = Machine(0)
    handlers(m)
    m.set_idt(6, make_gate("interrupt", K_CODE, 0x5060, dpl=0, present=0))
    m.st[L.EIP] = 0x4000
    m.k(deliver, 6, -1, EV_FAULT)
    assert m.fault is None and m.st[L.EIP] == 0x5000 + 16 * 11
    assert m.dwords(STACK0 - 16, 2) == [6 * 8 + 2 + 1, 0x4000]
    assert m.ctr(C.C_DOUBLE_FAULT) == 0 and m.ctr(C.C_EXC + 11) == 1


def test_contributory_then_contributory_is_double_fault():
    m = Machine(3)
    handlers(m)
    m.set_idt(13, make_gate("interrupt", K_CODE, 0x50D0, dpl=0, present=0))
    m.st[L.EIP] = 0x4000
    m.k(deliver, 13, 0, EV_FAULT)
    assert m.fault is None
    assert m.st[L.EIP] == 0x5000 + 16 * 8 and m.st[L.CPL] == 0
    assert m.dwords(STACK0 - 24, 6) == [0, 0x4000, U_CODE | 3, F.FIXED1 | F.IF, STACK3,
                                        U_DATA | 3]
    assert m.ctr(C.C_DOUBLE_FAULT) == 1 and m.ctr(C.C_INT_VEC + 8) == 1
    assert m.ctr(C.C_INT_VEC + 13) == 0
    # routed to the host: #DF is left pending, the CPU state untouched
    m = Machine(3)
    handlers(m)
    m.set_idt(13, make_gate("interrupt", K_CODE, 0x50D0, dpl=0, present=0))
    m.st[L.ROUTE + 8] = L.ROUTE_HOST
    m.k(deliver, 13, 0, EV_FAULT)
    assert m.fault == (8, 0) and m.st[L.CPL] == 3 and m.st[L.ESP] == STACK3


def enable_paging(m, unmapped=()):
    """Identity-map the first 1 MiB with 4 KiB pages (user, writable), minus ``unmapped``."""
    pd, pt = 0x40000, 0x41000
    m.poke32(pd, pt | PTE_P | PTE_RW | PTE_US)
    for i in range(256):
        if i * 0x1000 not in unmapped:
            m.poke32(pt + 4 * i, (i << 12) | PTE_P | PTE_RW | PTE_US)
    m.st[L.CR3] = pd
    m.st[L.CR0] = CR0_PE | CR0_PG


def test_page_fault_during_page_fault_delivery_is_double_fault():
    m = Machine(3)
    # place the IDT so that gate 14 lies on page 0x3000 (unmapped) and gate 8 on 0x2000
    m.st[L.IDTR_BASE] = IDT + 0x1000 - 12 * 8
    tss = make_tss(STACK0, K_DATA)
    m.mem[0x4000:0x4000 + len(tss)] = list(tss)
    m.st[L.TR_BASE] = 0x4000
    saved = m.st[L.IDTR_BASE]
    for v in (8, 14):
        put_descriptors(m.mem, saved + 8 * v, [make_gate("interrupt", K_CODE,
                                                         0x5000 + 16 * v, dpl=0)])
    enable_paging(m, unmapped=(0x3000,))
    m.st[L.FAULT_ADDR] = 0x12345
    m.st[L.EIP] = 0x4000
    m.k(deliver, 14, 0x7, EV_FAULT)
    assert m.fault is None and m.st[L.EIP] == 0x5000 + 16 * 8
    assert m.ctr(C.C_DOUBLE_FAULT) == 1
    assert m.st[L.CR2] == saved + 14 * 8                 # the latest page fault's address
    assert m.dwords(STACK0 - 24, 2) == [0, 0x4000]


def test_contributory_then_page_fault_is_serial_and_cr2_is_written():
    m = Machine(3)
    handlers(m)
    m.set_idt(13, make_gate("interrupt", K_CODE, 0x50D0, dpl=0))
    # the ring-0 stack page is unmapped: every push of a frame there faults
    enable_paging(m, unmapped=(STACK0 - 0x1000,))
    m.st[L.EIP] = 0x4000
    m.k(deliver, 13, 0, EV_FAULT)
    # #GP -> #PF (serial) -> #PF during #PF -> #DF -> fault during #DF: shutdown
    assert m.st[L.FAULT_PENDING] == L.FAULT_SHUTDOWN
    assert m.ctr(C.C_DOUBLE_FAULT) == 1 and m.ctr(C.C_TRIPLE_FAULT) == 1
    assert m.st[L.CR2] == STACK0 - 4                     # the first push, SS, at ESP0-4
    assert m.st[L.CPL] == 3 and m.st[L.EIP] == 0x4000 and m.st[L.DELIVERING] == -1


def test_fault_while_delivering_double_fault_shuts_down():
    m = Machine(0)
    handlers(m)
    m.st[L.IDTR_LIMIT] = 8 * 8 - 1                       # gates 0..7 only
    m.k(deliver, 13, 0, EV_FAULT)                        # #GP -> #GP(IDT) -> #DF -> #GP
    assert m.st[L.FAULT_PENDING] == L.FAULT_SHUTDOWN
    assert m.ctr(C.C_DOUBLE_FAULT) == 1 and m.ctr(C.C_TRIPLE_FAULT) == 1


# --- IRET (SDM Vol. 2A, IRET "Operation") --------------------------------------------------
def iret_frame(m, eip, cs, eflags, esp=None, ss=None):
    vals = [eip, cs, eflags] + ([esp, ss] if esp is not None else [])
    top = m.st[L.ESP] - 4 * len(vals)
    m.poke32(top, *vals)
    m.st[L.ESP] = top


def test_iret_to_ring3_restores_ss_esp_and_ring0_may_set_iopl():
    m = Machine(0)
    m.cache("ds", K_DATA)
    m.cache("es", U_DATA | 3)
    m.cache("fs", CONF_CODE0)
    m.st[L.EFLAGS] = F.FIXED1                          # IF=0, IOPL=0
    iret_frame(m, 0x4010, U_CODE | 3, F.FIXED1 | F.IF | F.ZF | (3 << F.IOPL_SHIFT) | F.VM,
               0x7FF0, U_DATA | 3)
    m.k(iret)
    assert m.fault is None
    assert m.st[L.CPL] == 3 and m.st[L.EIP] == 0x4010
    assert m.seg("ss")[0] == U_DATA | 3 and m.st[L.ESP] == 0x7FF0
    assert m.st[L.EFLAGS] == F.FIXED1 | F.IF | F.ZF | 0x3000   # VM never loaded
    assert m.seg("ds")[0] == 0 and m.seg("ds")[3] & L.AR_UNUSABLE    # DPL 0 data: nulled
    assert m.seg("es")[0] == U_DATA | 3                               # DPL 3: kept
    assert m.seg("fs")[0] == CONF_CODE0                               # conforming: kept
    assert m.ctr(C.C_IRET) == 1 and m.ctr(C.C_PRIV_SWITCH) == 1


@pytest.mark.parametrize("iopl, if_before, if_frame, if_after", [
    (0, 0, 1, 0), (0, 1, 0, 1),          # CPL 3 > IOPL: IF unchanged
    (3, 0, 1, 1), (3, 1, 0, 0),          # CPL 3 <= IOPL: IF loaded
])
def test_iret_at_ring3_never_changes_iopl_and_if_only_when_cpl_le_iopl(
        iopl, if_before, if_frame, if_after):
    m = Machine(3)
    m.st[L.EFLAGS] = F.FIXED1 | (iopl << F.IOPL_SHIFT) | (F.IF if if_before else 0)
    frame_iopl = 3 - iopl
    iret_frame(m, 0x4020, U_CODE | 3,
               F.FIXED1 | F.CF | (frame_iopl << F.IOPL_SHIFT) | (F.IF if if_frame else 0))
    m.k(iret)
    assert m.fault is None and m.st[L.ESP] == STACK3 and m.st[L.EIP] == 0x4020
    fl = m.st[L.EFLAGS]
    assert (fl >> F.IOPL_SHIFT) & 3 == iopl
    assert bool(fl & F.IF) == bool(if_after) and fl & F.CF
    assert m.ctr(C.C_PRIV_SWITCH) == 0


@pytest.mark.parametrize("cpl, frame, fault", [
    (3, (0x10, K_CODE), (13, K_CODE)),            # RPL 0 < CPL 3
    (0, (0x10, K_DATA), (13, K_DATA)),            # not code
    (0, (0x10, 0), (13, 0)),                      # null CS
    (0, (0x10, K_CODE | 3), (13, K_CODE)),        # non-conforming, DPL 0 != RPL 3
    (0, (0x10, U_CODE | 3, F.FIXED1, 0x7000, K_DATA | 3), (13, K_DATA)),   # SS DPL 0
    (0, (0x10, U_CODE | 3, F.FIXED1, 0x7000, RO_DATA3 | 3), (13, RO_DATA3)),
    (0, (0x10, U_CODE | 3, F.FIXED1, 0x7000, NP_DATA3 | 3), (12, NP_DATA3)),
    (0, (0x10, U_CODE | 3, F.FIXED1, 0x7000, 0), (13, 0)),
])
def test_iret_checks(cpl, frame, fault):
    m = Machine(cpl)
    vals = list(frame) + [F.FIXED1] * (3 - len(frame))
    iret_frame(m, vals[0], vals[1], vals[2], *(vals[3:5] if len(vals) > 3 else ()))
    esp = m.st[L.ESP]
    m.k(iret)
    assert m.fault == fault and m.st[L.ESP] == esp and m.st[L.CPL] == cpl


def test_iret_with_nt_is_gp0_task_return_not_modelled():
    m = Machine(0)
    m.st[L.EFLAGS] |= F.NT
    m.k(iret)
    assert m.fault == (13, 0)


# --- far JMP/CALL/RET (SDM Vol. 2A, JMP, CALL; Vol. 2B, RET) --------------------------------
def test_call_gate_to_ring0_copies_parameters_and_far_ret_returns():
    m = Machine(3)
    m.st[L.ESP] = STACK3 - 12
    m.poke32(STACK3 - 12, 0x11, 0x22, 0x33)                # caller pushed 3 params
    m.st[L.EIP] = 0x4567                                   # return address
    m.k(far_call, GATE0 | 3, 0xDEAD)                       # offset ignored for a gate
    assert m.fault is None
    assert m.st[L.CPL] == 0 and m.seg("cs")[0] == K_CODE and m.st[L.EIP] == 0x6000
    assert m.seg("ss")[0] == K_DATA and m.st[L.ESP] == STACK0 - 28
    assert m.dwords(STACK0 - 28, 7) == [0x4567, U_CODE | 3, 0x11, 0x22, 0x33,
                                        STACK3 - 12, U_DATA | 3]
    assert m.ctr(C.C_PRIV_SWITCH) == 1
    m.k(far_ret, 12)                                       # RET 12
    assert m.fault is None
    assert m.st[L.CPL] == 3 and m.st[L.EIP] == 0x4567 and m.seg("cs")[0] == U_CODE | 3
    assert m.seg("ss")[0] == U_DATA | 3 and m.st[L.ESP] == STACK3
    assert m.ctr(C.C_PRIV_SWITCH) == 2


def test_far_ret_to_outer_ring_nulls_inner_data_segments():
    m = Machine(0)
    m.cache("gs", K_DATA)
    m.cache("ds", U_DATA | 3)
    m.poke32(STACK0 - 16, 0x4100, U_CODE | 3, 0x7000, U_DATA | 3)
    m.st[L.ESP] = STACK0 - 16
    m.k(far_ret, 0)
    assert m.fault is None and m.st[L.ESP] == 0x7000 and m.st[L.CPL] == 3
    assert m.seg("gs")[0] == 0 and m.seg("gs")[3] & L.AR_UNUSABLE
    assert m.seg("ds")[0] == U_DATA | 3


def test_same_privilege_far_call_and_ret():
    m = Machine(0)
    m.st[L.EIP] = 0x4444
    m.k(far_call, CONF_CODE0, 0x8888)
    assert m.fault is None and m.st[L.EIP] == 0x8888 and m.seg("cs")[0] == CONF_CODE0
    assert m.dwords(STACK0 - 8, 2) == [0x4444, K_CODE]
    m.k(far_ret, 0)
    assert m.st[L.EIP] == 0x4444 and m.seg("cs")[0] == K_CODE and m.st[L.ESP] == STACK0


@pytest.mark.parametrize("cpl, fn, sel, fault", [
    (3, far_jmp, K_CODE, (13, K_CODE)),                # non-conforming DPL 0 from ring 3
    (0, far_jmp, U_CODE | 3, (13, U_CODE)),            # non-conforming DPL 3 != CPL 0
    (0, far_jmp, K_CODE | 1, (13, K_CODE)),            # RPL 1 > CPL 0
    (3, far_jmp, GATE0 | 3, (13, K_CODE)),             # JMP via gate to inner ring
    (3, far_call, K_DATA | 3, (13, K_DATA)),           # data segment
    (3, far_call, TSS_SEL | 3, (13, TSS_SEL)),         # task switch: not modelled
    (3, far_call, 0, (13, 0)),                         # null
    (3, far_call, GATE_JMP | 3, None),                 # gate DPL 3 -> ring 0: allowed
])
def test_far_transfer_privilege_rules(cpl, fn, sel, fault):
    m = Machine(cpl)
    m.k(fn, sel, 0x100)
    assert m.fault == fault


def test_call_gate_dpl_and_rpl_checks_and_conforming_jmp():
    m = Machine(3)
    m.set_gdt(SPARE, make_gate("call", K_CODE, 0x6000, dpl=0))
    m.k(far_call, SPARE | 3, 0)
    assert m.fault == (13, SPARE)                      # gate DPL 0 < CPL 3
    m = Machine(0)
    m.set_gdt(SPARE, make_gate("call", K_CODE, 0x6000, dpl=1))
    m.k(far_call, SPARE | 3, 0)
    assert m.fault == (13, SPARE)                      # RPL 3 > gate DPL 1
    m = Machine(3)
    m.k(far_jmp, CONF_CODE0 | 3, 0x9000)
    assert m.fault is None and m.st[L.CPL] == 3 and m.seg("cs")[0] == CONF_CODE0 | 3
    m = Machine(3)
    m.k(far_jmp, GATE_JMP | 3, 0)                      # JMP gate -> DPL-0 code: #GP
    assert m.fault == (13, K_CODE)


# --- LAR, LSL, VERR, VERW ---------------------------------------------------------------
# (cpl, rpl, descriptor, LAR ok, LSL ok, VERR, VERW)
PROBES = [
    (0, 0, make_descriptor(0, FLAT, 0x3, 1, 0, 1, 1, 1), 1, 1, 1, 1),
    (3, 3, make_descriptor(0, FLAT, 0x3, 1, 0, 1, 1, 1), 0, 0, 0, 0),    # DPL < CPL
    (0, 3, make_descriptor(0, FLAT, 0x3, 1, 0, 1, 1, 1), 0, 0, 0, 0),    # DPL < RPL
    (3, 3, make_descriptor(0, FLAT, 0x3, 1, 3, 1, 1, 1), 1, 1, 1, 1),
    (1, 1, make_descriptor(0, FLAT, 0x1, 1, 2, 1, 1, 1), 1, 1, 1, 0),    # read-only
    (3, 3, make_descriptor(0, FLAT, 0xF, 1, 0, 1, 1, 1), 1, 1, 1, 0),    # conforming
    (3, 3, make_descriptor(0, FLAT, 0xD, 1, 0, 1, 1, 1), 1, 1, 0, 0),    # conf. exec-only
    (3, 3, make_descriptor(0, FLAT, 0xB, 1, 0, 1, 1, 1), 0, 0, 0, 0),    # non-conf DPL 0
    (3, 3, make_descriptor(0, FLAT, 0x9, 1, 3, 1, 1, 1), 1, 1, 0, 0),    # exec-only
    (3, 3, make_descriptor(0, FLAT, 0x3, 1, 3, 0, 1, 1), 1, 1, 1, 1),    # not present
    (0, 0, make_descriptor(TSS, 103, 0x9, 0, 0, 1, 0, 0), 1, 1, 0, 0),   # TSS
    (0, 0, make_descriptor(LDT, 15, 0x2, 0, 0, 1, 0, 0), 1, 1, 0, 0),    # LDT
    (3, 3, make_descriptor(LDT, 15, 0x2, 0, 0, 1, 0, 0), 0, 0, 0, 0),    # LDT, DPL 0
    (0, 0, make_gate("call", K_CODE, 0, dpl=0), 1, 0, 0, 0),             # call gate
    (0, 0, make_gate("task", TSS_SEL, 0, dpl=0), 1, 0, 0, 0),            # task gate
    (0, 0, make_gate("interrupt", K_CODE, 0, dpl=0), 0, 0, 0, 0),        # not for LAR
    (0, 0, make_gate("trap", K_CODE, 0, dpl=3), 0, 0, 0, 0),
    (0, 0, make_descriptor(0, 0, 0x8, 0, 0, 1, 0, 0), 0, 0, 0, 0),       # reserved
]


@pytest.mark.parametrize("cpl, rpl, desc, lar_ok, lsl_ok, verr_ok, verw_ok", PROBES)
def test_lar_lsl_verr_verw_answer_by_ring(cpl, rpl, desc, lar_ok, lsl_ok, verr_ok, verw_ok):
    m = Machine(cpl)
    m.set_gdt(SPARE, desc)
    sel = SPARE | rpl
    hi = desc >> 32
    for fn, ok, want in ((lar, lar_ok, hi & 0x00F0FF00), (lsl, lsl_ok, None),
                         (verr, verr_ok, 1), (verw, verw_ok, 1)):
        m.st[L.EFLAGS] = F.FIXED1 | (0 if ok else F.ZF)   # ZF must be changed
        r = m.k(fn, sel)
        assert m.fault is None
        assert bool(m.st[L.EFLAGS] & F.ZF) == bool(ok), fn
        if fn is lsl and ok:
            assert r == decode_descriptor(desc).limit
        elif ok:
            assert r == want
        else:
            assert r == (-1 if fn in (lar, lsl) else 0)


def test_lar_lsl_values_and_invalid_selectors():
    m = Machine(3)
    assert m.k(lar, U_DATA | 3) == 0x00C0F200           # G, D/B, P, DPL 3, S, type 2
    assert m.k(lsl, U_DATA | 3) == 0xFFFFFFFF
    m.set_gdt(SPARE, make_descriptor(0x1000, 0x1, 0x2, 1, 3, 1, 0, 1))  # G=1, limit 1
    assert m.k(lsl, SPARE | 3) == 0x1FFF
    m.set_gdt(SPARE, make_descriptor(0x1000, 0x1234, 0x2, 1, 3, 1, 0, 0))
    assert m.k(lsl, SPARE | 3) == 0x1234
    for bad in (0, 3, 0x800, 0x4 | 3):                  # null, null, past limit, LDT unusable
        m.st[L.EFLAGS] |= F.ZF
        assert m.k(lar, bad) == -1 and not m.st[L.EFLAGS] & F.ZF


def test_same_selector_different_answer_by_cpl():
    """The lesson: a kernel deprivileged to ring 3 sees ring-3 answers, and no trap."""
    answers = []
    for cpl in (0, 3):
        m = Machine(cpl)
        answers.append((m.k(lar, K_DATA | cpl), m.k(verw, K_DATA | cpl)))
        assert m.fault is None
    assert answers == [(0x00C09200, 1), (-1, 0)]


# --- LTR, LLDT --------------------------------------------------------------------------
def test_ltr_marks_tss_busy_and_loads_tr():
    m = Machine(0)
    m.st[L.TR_AR] = L.AR_UNUSABLE
    m.k(ltr, TSS_SEL)
    assert m.fault is None
    assert (m.mem[GDT + TSS_SEL + 5] & 0xF) == 0xB        # busy in memory
    assert (m.st[L.TR_SEL], m.st[L.TR_BASE], m.st[L.TR_LIMIT]) == (TSS_SEL, TSS, 103)
    assert m.st[L.TR_AR] & 0x9F == 0x8B
    m.k(ltr, TSS_SEL)                                    # busy now: #GP(sel)
    assert m.fault == (13, TSS_SEL)
    for sel, fault in ((0, (13, 0)), (K_DATA, (13, K_DATA)), (TSS_SEL | 4, (13, TSS_SEL | 4)),
                       (0x800, (13, 0x800))):
        m.st[L.FAULT_PENDING] = 0
        m.k(ltr, sel)
        assert m.fault == fault


def test_lldt_then_ldt_selectors_load():
    m = Machine(3)
    put_descriptors(m.mem, LDT, [make_descriptor(0x20000, 0xFF, 0x2, 1, 3, 1, 1, 0),
                                 make_descriptor(0, FLAT, 0x3, 1, 0, 1, 1, 1)])
    m.st[L.CPL] = 0
    m.k(lldt, LDT_SEL)
    assert m.fault is None and (m.st[L.LDTR_BASE], m.st[L.LDTR_LIMIT]) == (LDT, 15)
    m.st[L.CPL] = 3
    m.k(load_sreg, L.SREG_ES, 0x4 | 3)                   # LDT entry 0
    assert m.fault is None and m.seg("es")[1:3] == (0x20000, 0xFF)
    assert m.mem[LDT + 5] & 1                            # accessed bit in the LDT
    m.k(load_sreg, L.SREG_ES, 0xC | 3)                   # LDT entry 1, DPL 0
    assert m.fault == (13, 0xC)
    m.st[L.FAULT_PENDING] = 0
    m.k(load_sreg, L.SREG_ES, 0x14 | 3)                  # past the LDT limit
    assert m.fault == (13, 0x14)
    m.st[L.FAULT_PENDING] = 0
    m.k(lldt, 0)
    assert m.fault is None and m.st[L.LDTR_AR] & L.AR_UNUSABLE
    m.k(lldt, K_DATA)
    assert m.fault == (13, K_DATA)


# --- I/O permission (SDM Vol. 1, 19.5) ------------------------------------------------------
@pytest.mark.parametrize("cpl", [0, 1, 3])
@pytest.mark.parametrize("iopl", [0, 1, 2, 3])
def test_io_permitted_by_cpl_and_iopl_without_bitmap(cpl, iopl):
    m = Machine(cpl)                                     # iomap base 104 = TSS limit + 1
    m.st[L.EFLAGS] = F.FIXED1 | (iopl << F.IOPL_SHIFT)
    assert m.k(io_permitted, 0x3F8, 1) == (1 if cpl <= iopl else 0)


def test_io_bitmap_bits():
    bitmap = bytearray(16)                               # ports 0..127, all allowed ...
    bitmap[0x60 >> 3] |= 1 << (0x60 & 7)                 # ... except 0x60
    bitmap[0x47 >> 3] |= 1 << (0x47 & 7)                 # ... and 0x47
    tss = make_tss(STACK0, K_DATA, iomap_base=104, io_bitmap=bytes(bitmap))
    m = Machine(3, tss=tss, tss_limit=len(tss) - 1)      # limit covers the 0xFF byte
    cases = {(0x61, 1): 1, (0x60, 1): 0, (0x5F, 2): 0, (0x61, 4): 1, (0x5E, 2): 1,
             (0x44, 4): 0, (0x43, 4): 1, (0x48, 4): 1, (0x46, 1): 1, (0x47, 1): 0,
             (0x7F, 1): 1, (0x80, 1): 0,                 # port 0x80: the 0xFF end byte
             (0x88, 1): 0, (0xFFFF, 1): 0}               # beyond the TSS limit
    got = {k: m.k(io_permitted, *k) for k in cases}
    assert got == cases and m.fault is None
    # the CPU reads two bytes: with the limit ending at the bitmap's last byte, that byte's
    # ports are refused (the byte after it lies past the limit), the one before is fine
    m.st[L.TR_LIMIT] = len(tss) - 2
    assert (m.k(io_permitted, 0x7F, 1), m.k(io_permitted, 0x77, 1)) == (0, 1)
    m.st[L.EFLAGS] |= 3 << F.IOPL_SHIFT                  # IOPL 3: bitmap not consulted
    assert m.k(io_permitted, 0x60, 1) == 1


def test_trace_record_wraps_around():
    st = np.zeros(L.ST_SIZE, np.int64)
    st[L.TRACE_HEAD] = L.TRACE_CAP + 2
    st[L.TSC] = 9
    trace_record(st, 5, 6, 7, 8, 1, 2, 3)
    i = L.TRACE_BUF + 2 * L.TRACE_FIELDS
    assert list(st[i:i + 8]) == [5, 6, 7, 8, 1, 2, 9, 3]
    assert st[L.TRACE_HEAD] == L.TRACE_CAP + 3
