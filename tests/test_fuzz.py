"""Robustness fuzzing of the whole machine, plus targeted edge cases of fetch and decode.

Not jitted itself: drives the jitted core through the Python face. The claim under test
is the run loop's promise -- no guest byte sequence can crash or hang the host, every
``run()`` ends in a documented event within its budget, 32-bit state stays 32-bit, and
the machine is deterministic (the same case replayed from a snapshot ends in
bit-identical state). Oracles: the documented event kinds and field ranges of
``hvsim.Event``, the SDM's list of vectors that push an error code (Vol. 3A, Table 6-1),
and for the targeted tests hand-derived SDM values.

Cases are seeded; a failure message names the seed and configuration so that a case can
be replayed alone with ``_run_case(seed)``. ``HVSIM_LONG=1`` runs ten times more cases.
"""
import os
import time

import numpy as np
import pytest

from hvsim import Machine, Event, assemble
from hvsim.machine import Counters
from hvsim.asm.table import FORMS, MEM_ONLY_KINDS, IMM_BYTES
from hvsim.arch import layout as L
from hvsim.cpu import decode as D
from hvsim.rings import make_descriptor, make_tss

KINDS = {"halt", "exception", "io", "budget", "shutdown", "bus_error", "breakpoint", "interrupt"}
ERROR_CODE_VECTORS = {8, 10, 11, 12, 13, 14, 17}   # SDM Vol. 3A, Table 6-1
MASK32 = 0xFFFFFFFF
MEM = 64 << 10
BUDGET = 200
MAX_RUNS = 6        # run() calls per case (a monitor resuming after each event)
LONG = os.environ.get("HVSIM_LONG", "0") not in ("", "0")
N_CASES = 20_000 * (10 if LONG else 1)
DETERMINISM_EVERY = 5  # replay every 5th case from its snapshot (a replay costs 3 full-state copies)

# guest-physical map of a fuzz case (64 KiB): code and data below 0xC000, then the tables
PT_ADDR = 0xC000       # one page table (maps linear 0..4 MiB)
PD_ADDR = 0xD000       # page directory
GDT_ADDR = 0xE000
N_GDT = 16
IDT_ADDR = 0xE800      # 256 gates, up to 0xF000
TSS_ADDR = 0xF000
STUB_ADDR = 0xF800     # interrupt-handler stubs, 16 bytes each
STUBS = [
    bytes([0xCF]),                           # iretd
    bytes([0x83, 0xC4, 0x04, 0xCF]),         # add esp, 4 ; iretd   (drops an error code)
    bytes([0xF4]),                           # hlt
    bytes([0xEB, 0xFE]),                     # jmp $
    bytes([0x0F, 0x20, 0xD8, 0x0F, 0x22, 0xD8, 0xCF]),   # mov eax, cr3 ; mov cr3, eax ; iretd
    bytes([0xCC]),                           # int3
    bytes([0xFA, 0xF4]),                     # cli ; hlt
    None,                                    # random bytes
]
FLAT_CODE0, FLAT_DATA0, FLAT_CODE3, FLAT_DATA3, TSS_SEL = 0x08, 0x10, 0x1B, 0x23, 0x28

SEG_PREFIXES = [0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65]
ALL_PREFIXES = SEG_PREFIXES + [0xF3, 0xF2, 0x66, 0xF0, 0x67]
DECODED_FORMS = [f for f in FORMS if "asm" not in f.flags]
KNOWN_OPCODES = sorted(int(o) for o in range(len(D.OPC_OP)) if D.OPC_OP[o] != D.OP_UD)
WILD = [0, 1, 3, 0xFFF, 0x1000, 0xFFC, MEM - 1, MEM - 2, MEM - 4, MEM, MEM + 1, 0x7FFFFFFF,
        0x80000000, 0xFFFFFFFF, 0xFFFFFFFC, 0xFFFFF000, 0x00400000, 0xC0000000, 0xBFF8, 0xE800]


# ---- generators ------------------------------------------------------------------------
def _wild32(rng):
    r = rng.random()
    if r < 0.35:
        return int(rng.integers(0, 0xC000))
    if r < 0.6:
        return WILD[int(rng.integers(len(WILD)))]
    if r < 0.8:
        return int(rng.integers(0, 256))
    return int(rng.integers(0, 1 << 32))


def _modrm_tail(rng, mod, reg):
    """ModRM (+SIB, +displacement) for a given mod and reg field."""
    rm = int(rng.integers(8))
    out = bytearray([(mod << 6) | (reg << 3) | rm])
    if mod == 3:
        return out
    base = -1
    if rm == 4:
        sib = int(rng.integers(256))
        out.append(sib)
        base = sib & 7
    if mod == 1:
        out.append(int(rng.integers(256)))
    elif mod == 2 or (mod == 0 and (rm == 5 or base == 5)):
        out += _wild32(rng).to_bytes(4, "little")
    return out


def encode_form(rng, form):
    """One valid encoding of ``form`` with random operands (and optional prefixes)."""
    out = bytearray()
    if "rep" in form.flags and rng.random() < 0.6:
        out.append(0xF3)
    if rng.random() < 0.12:
        out.append(SEG_PREFIXES[int(rng.integers(6))])
    if form.prefix:
        out.append(form.prefix)
    op = bytearray(form.opcode)
    if form.plus_r:
        op[-1] += int(rng.integers(8))
    out += op
    if form.modrm is not None:
        out.append(form.modrm)
    elif form.has_modrm:
        ops = form.ops
        reg = form.ext if form.ext is not None else int(rng.integers(8))
        if "Sw" in ops:
            reg = int(rng.integers(6)) if rng.random() < 0.9 else int(rng.integers(8))
        if "Cd" in ops:
            reg = (0, 2, 3, 4)[int(rng.integers(4))] if rng.random() < 0.9 else int(rng.integers(8))
        if "Rd" in ops:
            mod = 3
        elif any(k in MEM_ONLY_KINDS for k in ops):
            mod = int(rng.integers(3))
        else:
            mod = int(rng.integers(4))
        out += _modrm_tail(rng, mod, reg)
    for k in form.ops:
        n = IMM_BYTES.get(k)
        if n is None:
            continue
        if k == "Ap":
            sel = (FLAT_CODE0, FLAT_DATA0, FLAT_CODE3, TSS_SEL, 0x0B, 0)[int(rng.integers(6))]
            if rng.random() < 0.2:
                sel = int(rng.integers(0, 0x10000))
            out += int(rng.integers(0, 0xC000)).to_bytes(4, "little") + sel.to_bytes(2, "little")
        elif k in ("Jb", "Jd"):
            v = int(rng.integers(-24, 24)) if rng.random() < 0.85 else _wild32(rng)
            out += (v & ((1 << (8 * n)) - 1)).to_bytes(n, "little")
        elif k in ("Ob", "Ow", "Od"):
            out += _wild32(rng).to_bytes(4, "little")
        elif k == "Ib" and form.mnemonic in ("in", "out"):
            out.append((0xE9, 0x40, 0x41, 0x80, 0x60, int(rng.integers(256)))[int(rng.integers(6))])
        else:
            out += int(rng.integers(0, 1 << (8 * n))).to_bytes(n, "little")
    return bytes(out)


def gen_forms(rng, n):
    out = bytearray()
    while len(out) < n:
        out += encode_form(rng, DECODED_FORMS[int(rng.integers(len(DECODED_FORMS)))])
    return bytes(out)


def gen_biased(rng, n):
    """Bytes shaped like the subset: prefix runs, known opcodes with random tails,
    ModRM/SIB with wild displacements, mutated valid encodings."""
    out = bytearray()
    while len(out) < n:
        r = rng.random()
        if r < 0.15:
            out += bytes(ALL_PREFIXES[int(i)] for i in rng.integers(0, len(ALL_PREFIXES), int(rng.integers(1, 17))))
        elif r < 0.55:
            opc = KNOWN_OPCODES[int(rng.integers(len(KNOWN_OPCODES)))]
            out += (bytes([opc]) if opc < 0x100 else bytes([0x0F, opc & 0xFF]) if opc < 0x200
                    else bytes([0x0F, 0x38, opc & 0xFF]))      # 0x2xx: 0F 38 xx
            if rng.random() < 0.7:
                out += _modrm_tail(rng, int(rng.integers(4)), int(rng.integers(8)))
            out += rng.bytes(int(rng.integers(0, 5)))
        elif r < 0.85:
            b = bytearray(encode_form(rng, DECODED_FORMS[int(rng.integers(len(DECODED_FORMS)))]))
            for _ in range(int(rng.integers(0, 3))):
                b[int(rng.integers(len(b)))] = int(rng.integers(256))
            out += b
        else:
            out += _wild32(rng).to_bytes(4, "little")
    return bytes(out)


def gen_random(rng, n):
    return rng.bytes(n)


GENERATORS = (gen_random, gen_biased, gen_forms)


_GDT_FIXED = np.array([
    0,
    make_descriptor(0, 0xFFFFF, 0xB, 1, 0, 1, 1, 1),      # 0x08 ring-0 code
    make_descriptor(0, 0xFFFFF, 0x3, 1, 0, 1, 1, 1),      # 0x10 ring-0 data
    make_descriptor(0, 0xFFFFF, 0xB, 1, 3, 1, 1, 1),      # 0x18 ring-3 code
    make_descriptor(0, 0xFFFFF, 0x3, 1, 3, 1, 1, 1),      # 0x20 ring-3 data
    make_descriptor(TSS_ADDR, 103, 0xB, 0, 0, 1, 0, 0),   # 0x28 busy 32-bit TSS
], np.uint64)


def _random_qwords(rng, n):
    return rng.integers(0, 1 << 63, n, dtype=np.uint64) | (rng.integers(0, 2, n, dtype=np.uint64) << np.uint64(63))


def _gdt(rng, garbage):
    """The flat descriptors above, then random (half well-formed) ones; with probability
    ``garbage`` any entry but the null one is replaced by random bits."""
    n = N_GDT - len(_GDT_FIXED)
    u = lambda a: np.asarray(a, np.uint64)
    base, limit = u(rng.integers(0, 1 << 16, n)), u(rng.integers(0, 1 << 20, n))
    typ, s, dpl = u(rng.integers(0, 16, n)), u(rng.integers(0, 2, n)), u(rng.integers(0, 4, n))
    p, db, g = u(rng.random(n) < 0.8), u(rng.integers(0, 2, n)), u(rng.integers(0, 2, n))
    lo = (limit & u(0xFFFF)) | (base << u(16))
    hi = (typ << u(8)) | (s << u(12)) | (dpl << u(13)) | (p << u(15)) | (limit & u(0xF0000)) \
        | (db << u(22)) | (g << u(23))
    made = lo | (hi << u(32))
    descs = np.concatenate([_GDT_FIXED, np.where(rng.random(n) < 0.5, _random_qwords(rng, n), made)])
    junk = rng.random(N_GDT) < garbage
    junk[0] = False
    return np.where(junk, _random_qwords(rng, N_GDT), descs)


def _idt(rng, garbage):
    """256 gates (numpy-built for speed): valid interrupt/trap gates to the stubs or the
    code, and with probability ``garbage`` random or zero or not-present ones."""
    n = 256
    sel = np.where(rng.random(n) < 0.85, FLAT_CODE0,
                   np.array([FLAT_CODE3, FLAT_DATA0, TSS_SEL, 0, 0x0B])[rng.integers(0, 5, n)])
    off = np.where(rng.random(n) < 0.8, STUB_ADDR + 16 * rng.integers(0, len(STUBS), n),
                   rng.integers(0, 0xC000, n))
    dpl = np.where(rng.random(n) < 0.6, 3, rng.integers(0, 4, n))
    typ = np.where(rng.random(n) < 0.6, 0xE, 0xF)
    present = (rng.random(n) >= garbage * 0.3).astype(np.int64)
    lo = (off & 0xFFFF) | (sel << 16)
    hi = (off & 0xFFFF0000) | (present << 15) | (dpl << 13) | (typ << 8)
    gates = (lo.astype(np.uint64) | (hi.astype(np.uint64) << np.uint64(32)))
    r = rng.random(n)
    gates = np.where(r < garbage * 0.5, _random_qwords(rng, n), gates)
    gates = np.where((r >= garbage * 0.5) & (r < garbage * 0.75), np.uint64(0), gates)
    return gates


def _put_qwords(mem, addr, values):
    values = np.asarray(values, np.uint64).astype("<u8")
    mem[addr:addr + 8 * len(values)] = np.frombuffer(values.tobytes(), np.uint8)


def _paging(rng, m, mem):
    """Identity-map the 16 pages (with some entries mutated) and turn paging on."""
    base_flags = 0x7                                       # P | R/W | U/S
    ptes = np.array([(i << 12) | base_flags for i in range(1024)], np.uint64)
    ptes[16:] = 0
    for i in range(16):
        r = rng.random()
        if r < 0.06:
            ptes[i] &= ~np.uint64(1)                       # not present
        elif r < 0.12:
            ptes[i] &= ~np.uint64(2)                       # read-only
        elif r < 0.18:
            ptes[i] &= ~np.uint64(4)                       # supervisor only
        elif r < 0.22:
            ptes[i] = np.uint64((int(rng.integers(0, 64)) << 12) | base_flags)  # frames past the end too
        elif r < 0.24:
            ptes[i] = np.uint64(int(rng.integers(0, 1 << 32)))
    for _ in range(int(rng.integers(0, 4))):               # some aliases higher up
        ptes[int(rng.integers(16, 1024))] = np.uint64((int(rng.integers(0, 16)) << 12) | int(rng.integers(0, 0x200)))
    mem[PT_ADDR:PT_ADDR + 4096] = np.frombuffer(ptes.astype("<u4").tobytes(), np.uint8)
    pdes = np.zeros(1024, np.uint32)
    pdes[0] = PT_ADDR | base_flags
    for _ in range(int(rng.integers(0, 4))):
        pdes[int(rng.integers(1, 1024))] = int(rng.integers(0, 1 << 32))  # garbage, 4 MiB pages...
    if rng.random() < 0.05:
        pdes[0] = int(rng.integers(0, 1 << 32))
    mem[PD_ADDR:PD_ADDR + 4096] = np.frombuffer(pdes.astype("<u4").tobytes(), np.uint8)
    m.cpu.cr4 = (0x10 if rng.random() < 0.4 else 0) | (0x80 if rng.random() < 0.3 else 0)  # PSE, PGE
    m.cpu.cr3 = PD_ADDR | (int(rng.integers(0, 0x1000)) if rng.random() < 0.1 else 0)
    m.cpu.cr0 = m.cpu.cr0 | 0x80000000 | (0x10000 if rng.random() < 0.5 else 0)          # PG, WP


def _reg_value(rng):
    r = rng.random()
    if r < 0.55:
        return int(rng.integers(0, 0xC000))
    if r < 0.75:
        return int(rng.integers(0, 16))
    if r < 0.85:
        return WILD[int(rng.integers(len(WILD)))]
    if r < 0.92:                                   # selectors, for MOV/POP Sreg, LTR, LAR...
        return (FLAT_CODE0, FLAT_DATA0, FLAT_CODE3, FLAT_DATA3, TSS_SEL, 0x13, 0x33)[int(rng.integers(7))]
    return int(rng.integers(0, 1 << 32))


class Pool:
    """Machines reused across cases (reset + rewritten each time): creating one per case
    would cost more than running it."""

    def __init__(self):
        self.machines = {}

    def get(self, exceptions, tlb, dcache):
        key = (exceptions, tlb, dcache)
        if key not in self.machines:
            self.machines[key] = Machine(memory=MEM, tlb=tlb, exceptions=exceptions,
                                         decode_cache=dcache)
        return self.machines[key]


def setup_case(pool, seed):
    """Build fuzz case ``seed``: returns (machine, budget, description)."""
    rng = np.random.default_rng(seed)
    gen = GENERATORS[seed % 3]
    exceptions = "guest" if rng.random() < 0.5 else "host"
    tlb = ((16, 4), (1, 1), None)[int(rng.choice(3, p=[0.7, 0.15, 0.15]))]
    dcache = rng.random() < 0.9
    m = pool.get(exceptions, tlb, dcache)
    m.reset()
    m.breakpoints = set()
    mem = m.memory.view(np.ndarray)          # raw writes: reset() already dropped the caches
    if rng.random() < 0.5:
        mem[:] = np.frombuffer(rng.bytes(MEM), np.uint8)
    else:
        mem[:] = 0
    # code: usually in the low area, sometimes up against a page end or the end of memory
    n = int(rng.integers(16, 256))
    code = gen(rng, n)
    r = rng.random()
    if r < 0.7:
        origin = int(rng.integers(0, 0xC000 - len(code)))
    elif r < 0.85:
        origin = 0x1000 * int(rng.integers(1, 12)) - int(rng.integers(1, 16))
    else:
        origin = MEM - int(rng.integers(1, 20))
    code = code[:MEM - origin]
    mem[origin:origin + len(code)] = np.frombuffer(code, np.uint8)
    # descriptor tables, TSS and handler stubs
    garbage = (0.0, 0.1, 0.5, 1.0)[int(rng.integers(4))]
    _put_qwords(mem, GDT_ADDR, _gdt(rng, garbage * 0.3))
    _put_qwords(mem, IDT_ADDR, _idt(rng, garbage))
    tss = make_tss(int(rng.integers(0x100, 0xC000)) & ~3 if rng.random() < 0.85 else _reg_value(rng),
                   FLAT_DATA0 if rng.random() < 0.85 else int(rng.integers(0, 0x10000)))
    mem[TSS_ADDR:TSS_ADDR + len(tss)] = np.frombuffer(tss, np.uint8)
    for i, stub in enumerate(STUBS):
        stub = stub if stub is not None else rng.bytes(16)
        mem[STUB_ADDR + 16 * i:STUB_ADDR + 16 * i + len(stub)] = np.frombuffer(stub, np.uint8)
    cpu = m.cpu
    cpu.gdtr_base, cpu.gdtr_limit = GDT_ADDR, 8 * N_GDT - 1
    cpu.idtr_base = IDT_ADDR if rng.random() < 0.95 else _reg_value(rng)
    cpu.idtr_limit = 0x7FF if rng.random() < 0.85 else int(rng.integers(0, 0x800))
    st = m._st
    st[L.TR_SEL], st[L.TR_BASE], st[L.TR_LIMIT], st[L.TR_AR] = TSS_SEL, TSS_ADDR, 103, L.AR_P | 0xB
    # registers
    for reg in ("eax", "ecx", "edx", "ebx", "ebp", "esi", "edi"):
        setattr(cpu, reg, _reg_value(rng))
    cpu.esp = int(rng.integers(0x800, 0xC000)) & ~3 if rng.random() < 0.85 else _reg_value(rng)
    fl = int(rng.integers(0, 1 << 12)) & 0xCD5               # arithmetic flags, DF, TF
    if rng.random() > 0.1:
        fl &= ~0x100                                         # TF mostly off
    fl |= (0x200 if rng.random() < 0.4 else 0) | (int(rng.integers(4)) << 12 if rng.random() < 0.3 else 0)
    cpu.eflags = fl
    cpu.eip = origin
    desc = dict(seed=seed, gen=gen.__name__, exceptions=exceptions, tlb=tlb, dcache=dcache,
                origin=hex(origin))
    if rng.random() < 0.4:
        desc["paging"] = True
        _paging(rng, m, mem)
    if rng.random() < 0.4:
        desc["ring"] = 3
        if rng.random() < 0.5:
            cpu.cpl = 3
        else:
            cpu.set_segment("cs", FLAT_CODE3)
            cpu.set_segment("ss", FLAT_DATA3)
            for s in ("ds", "es", "fs", "gs"):
                cpu.set_segment(s, FLAT_DATA3)
    if rng.random() < 0.15:
        vector = int(rng.integers(32, 256))
        m.set_timer((int(rng.integers(1, 300)), vector))
        if rng.random() < 0.3:
            m.route(vector, "host")
    if rng.random() < 0.1:
        m.route([int(v) for v in rng.integers(0, 256, 8)], "host" if rng.random() < 0.5 else "guest")
    if rng.random() < 0.1:
        m.breakpoints = {origin + int(rng.integers(0, 40)) for _ in range(3)}
    if rng.random() < 0.05:
        vector = int(rng.integers(32, 256))
        m.interrupt(vector)
        if rng.random() < 0.5:
            m.route(vector, "host")
    m.virtualizable = rng.random() < 0.1
    budget = BUDGET if rng.random() < 0.8 else int(rng.integers(1, BUDGET + 1))
    return m, budget, desc


# ---- invariants ------------------------------------------------------------------------
SLOTS32 = np.array(list(range(L.EAX, L.CR4 + 1)) + [L.GDTR_BASE, L.IDTR_BASE, L.LDTR_BASE, L.LDTR_LIMIT,
                   L.TR_BASE, L.TR_LIMIT] + list(range(L.SEG_BASE, L.SEG_BASE + 2 * L.N_SREGS)))
SLOTS16 = np.array([L.GDTR_LIMIT, L.IDTR_LIMIT, L.LDTR_SEL, L.TR_SEL] + list(range(L.SEG_SEL, L.SEG_SEL + L.N_SREGS)))
def check_event(m, ev, budget, desc):
    st = m._st
    assert isinstance(ev, Event), desc
    assert ev.kind in KINDS, (ev, desc)
    assert 0 <= ev.steps <= budget, (ev, budget, desc)
    if ev.kind == "budget":
        assert ev.steps == budget, (ev, desc)
        assert ev.eip == m.cpu.eip, (ev, desc)
    assert 0 <= ev.eip <= MASK32 and 0 <= ev.cpl <= 3, (ev, desc)
    if ev.kind in ("exception", "interrupt"):
        assert 0 <= ev.vector <= 255, (ev, desc)
        assert ev.source in ("fault", "trap", "software", "external"), (ev, desc)
        if ev.source == "fault":
            assert ev.vector < 32, (ev, desc)
            assert (ev.error_code is not None) == (ev.vector in ERROR_CODE_VECTORS), (ev, desc)
            assert ev.eip == m.cpu.eip, (ev, desc)           # faults restart the instruction
        if ev.error_code is not None:
            assert 0 <= ev.error_code <= 0xFFFF or ev.vector == 14, (ev, desc)
        if ev.vector == 14 and ev.source == "fault":
            assert ev.address == m.cpu.cr2, (ev, desc)
            assert 0 <= ev.error_code <= 0x1F, (ev, desc)
    if ev.kind == "io":
        assert 0 <= ev.port <= 0xFFFF and ev.size in (1, 2, 4), (ev, desc)
        assert ev.direction in ("in", "out"), (ev, desc)
        assert m.cpu.eip == (ev.eip + ev.length) & MASK32, (ev, desc)
        if ev.direction == "out":
            assert 0 <= ev.value < (1 << (8 * ev.size)), (ev, desc)
    if ev.kind == "bus_error":
        # the physical address of an access (at most 4 bytes) that does not fit in memory
        assert MEM - 4 < ev.address <= 0xFFFFFFFF + 4, (ev, desc)
    if ev.kind == "halt":
        assert 1 <= ev.length <= 15, (ev, desc)
    if ev.kind == "interrupt":
        assert ev.source == "external" and ev.eip == m.cpu.eip and ev.vector >= 32, (ev, desc)
    if ev.kind == "exception" and ev.source == "software":
        assert ev.eip == m.cpu.eip and 1 <= ev.length <= 15, (ev, desc)   # INT n may carry prefixes
    if ev.kind == "breakpoint":
        assert ev.eip in m.breakpoints and ev.eip == m.cpu.eip, (ev, desc)
    if ev.kind == "shutdown":
        assert st[L.SHUTDOWN] == 1, desc
    # 32-bit architectural state stays 32-bit
    v = st[SLOTS32]
    assert ((v >= 0) & (v <= MASK32)).all(), ([hex(x) for x in v], desc)
    v = st[SLOTS16]
    assert ((v >= 0) & (v <= 0xFFFF)).all(), ([hex(x) for x in v], desc)
    assert st[L.EFLAGS] & 2, desc                            # reserved bit 1 reads 1
    assert 0 <= st[L.CPL] <= 3, desc
    assert st[L.CPL] == st[L.SEG_SEL + L.SREG_CS] & 3, desc  # CPL = CS.RPL
    assert st[L.FAULT_PENDING] == 0, desc                    # nothing left half-raised
    assert (st[L.COUNTERS:L.COUNTERS + L.N_COUNTERS] >= 0).all(), desc


def _state(m):
    s = m.snapshot()
    return (s.mem, s.st, s.tlb, s.dc, s.pg)


def drive(m, budget, desc, rng):
    """Run the case like a small monitor would: up to MAX_RUNS run() calls sharing the
    budget, skipping a faulting instruction, answering IN, resuming after I/O, a
    breakpoint or a host interrupt. Every event is checked; returns them all."""
    events = []
    left = budget
    for _ in range(MAX_RUNS):
        before = m.counters["instructions"]
        ev = m.run(left)
        check_event(m, ev, left, desc)
        assert m.counters["instructions"] - before <= ev.steps, (ev, desc)
        events.append(ev)
        left -= ev.steps
        if left <= 0 or ev.kind in ("halt", "budget", "shutdown"):
            break
        if ev.kind == "io" and ev.direction == "in":
            ev.reply(int(rng.integers(0, 1 << (8 * ev.size))))
        elif ev.kind in ("exception", "bus_error") and ev.eip == m.cpu.eip:
            m.cpu.eip = (ev.eip + max(ev.length, 1)) & MASK32    # skip it, as a monitor may
    return events


def run_cases(pool, seeds, determinism_every=DETERMINISM_EVERY, totals=None):
    """Run the cases; returns {event kind: count}. ``totals`` (an int64 array of
    N_COUNTERS) accumulates every case's counters."""
    kinds = {}
    for seed in seeds:
        m, budget, desc = setup_case(pool, seed)
        replay = seed % determinism_every == 0
        snap = m.snapshot() if replay else None
        events = drive(m, budget, desc, np.random.default_rng(seed + 1))
        for ev in events:
            kinds[ev.kind] = kinds.get(ev.kind, 0) + 1
        if totals is not None:
            totals += m._st[L.COUNTERS:L.COUNTERS + L.N_COUNTERS]
        if replay:
            first = _state(m)
            m.restore(snap)
            again = drive(m, budget, desc, np.random.default_rng(seed + 1))
            assert again == events, (desc, events, again)
            for a, b, name in zip(first, _state(m), ("mem", "st", "tlb", "dc", "pg")):
                assert np.array_equal(a, b), (name, desc)
    return kinds


def _run_case(seed):
    """Replay one case (for debugging a failure): returns its events."""
    pool = Pool()
    m, budget, desc = setup_case(pool, seed)
    return drive(m, budget, desc, np.random.default_rng(seed + 1))


@pytest.fixture(scope="module")
def pool():
    return Pool()


# a hang inside a jitted kernel never returns to the interpreter, so only the thread method
# of pytest-timeout can turn it into a failure (it dumps the stacks and ends the process)
@pytest.mark.timeout(6000 if LONG else 600, method="thread")
def test_fuzz_no_crash_no_hang(pool):
    t0 = time.perf_counter()
    totals = np.zeros(L.N_COUNTERS, np.int64)
    kinds = run_cases(pool, range(N_CASES), totals=totals)
    elapsed = time.perf_counter() - t0
    # the mix must reach every kind of ending and the machinery behind them; if one is
    # missing, the generators (not the machine) have gone blind
    for k in KINDS:
        assert kinds.get(k, 0) > 0, (k, kinds)
    assert kinds["shutdown"] > 20 and kinds["exception"] > 1000, kinds
    seen = Counters(totals)
    for name in ("double_faults", "triple_faults", "exceptions_delivered", "privilege_switches",
                 "iret", "irqs", "timer_ticks", "software_interrupts", "smc_invalidations",
                 "page_walks", "tlb_flushes", "cr3_writes", "segment_loads", "io_exits", "hlt"):
        assert seen[name] > 0, (name, seen)
    assert seen["ring3"] > 1000 and seen["instructions"] > 20 * N_CASES, seen
    if not LONG:
        assert elapsed < 150, f"{N_CASES} cases took {elapsed:.0f} s"


# ---- targeted edge cases -------------------------------------------------------------------
def _paged_machine(absent_pages=(), memory=1 << 20, decode_cache=True):
    """Identity paging over the first 4 MiB, some pages not present."""
    m = Machine(memory=memory, decode_cache=decode_cache)
    pt, pd = 0x80000, 0x81000
    pte = np.arange(1024, dtype=np.uint32) << 12 | 0x7
    for page in absent_pages:
        pte[page >> 12] = 0
    m.memory[pt:pt + 4096] = np.frombuffer(pte.astype("<u4").tobytes(), np.uint8)
    pde = np.zeros(1024, np.uint32)
    pde[0] = pt | 0x7
    m.memory[pd:pd + 4096] = np.frombuffer(pde.astype("<u4").tobytes(), np.uint8)
    m.cpu.cr3 = pd
    m.cpu.cr0 = m.cpu.cr0 | 0x80000000
    return m


def test_instruction_spanning_the_end_of_memory_is_a_bus_error_at_the_first_missing_byte():
    m = Machine(memory=MEM)
    m.load(bytes([0xB8, 0x11, 0x22]), origin=MEM - 3)         # MOV EAX, imm32 needs 5 bytes
    m.cpu.eax = 0x55
    ev = m.run()
    assert (ev.kind, ev.address, ev.eip, ev.steps) == ("bus_error", MEM, MEM - 3, 1)
    assert m.cpu.eax == 0x55 and m.cpu.eip == MEM - 3 and m.counters["instructions"] == 0
    # an instruction that ends exactly at the end of memory runs; the next fetch is the error
    m = Machine(memory=MEM)
    m.load(bytes([0xB0, 0x7A]), origin=MEM - 2)               # MOV AL, 0x7A
    ev = m.run()
    assert (ev.kind, ev.address, ev.eip) == ("bus_error", MEM, MEM)
    assert m.cpu.eax == 0x7A and m.counters["instructions"] == 1


def test_instruction_crossing_into_a_frame_outside_memory_reports_the_physical_address():
    # linear page 0x3000 maps a frame past the end of memory: the fetch of the second half
    # of the instruction is a bus error at that *physical* address, not the linear one
    m = _paged_machine(memory=1 << 20)
    pt = 0x80000
    m.memory[pt + 3 * 4:pt + 3 * 4 + 4] = np.frombuffer((0x200000 | 7).to_bytes(4, "little"), np.uint8)
    m.cpu.cr3 = m.cpu.cr3                                      # flush
    m.load(bytes([0xB8, 0x11]), origin=0x2FFE)
    ev = m.run()
    assert (ev.kind, ev.address, ev.eip) == ("bus_error", 0x200000, 0x2FFE)


@pytest.mark.parametrize("dcache", [True, False])
def test_fetch_at_the_last_byte_of_a_page_faults_on_the_next_page_only_if_needed(dcache):
    m = _paged_machine(absent_pages=[0x3000], decode_cache=dcache)
    # a one-byte NOP at 0x2FFF runs; the fetch at 0x3000 then faults
    m.load(bytes([0x90]), origin=0x2FFF)
    assert m.step() is None and m.cpu.eip == 0x3000
    ev = m.run()
    assert (ev.kind, ev.vector, ev.address, ev.eip) == ("exception", 14, 0x3000, 0x3000)
    assert ev.error_code == 0 and m.cpu.cr2 == 0x3000     # not present, read, supervisor
    # MOV AL, imm8 at 0x2FFF needs the byte at 0x3000: #PF there, nothing executed
    for code in (bytes([0xB0]), bytes([0x3E]), bytes([0x0F]), bytes([0x8B])):
        m.cpu.cr2 = 0
        m.cpu.eax = 0x1234
        m.load(code, origin=0x2FFF)
        ev = m.run()
        assert (ev.kind, ev.vector, ev.address, ev.eip, ev.steps) == ("exception", 14, 0x3000, 0x2FFF, 1)
        assert m.cpu.cr2 == 0x3000 and m.cpu.eax == 0x1234 and m.cpu.eip == 0x2FFF
    # five bytes that end exactly at the page end: no fault at all
    m.load(bytes([0xB8, 1, 2, 3, 4, 0xF4]), origin=0x2FFA)
    m.cpu.cr2 = 0
    ev = m.step()
    assert ev is None and m.cpu.eax == 0x04030201 and m.cpu.cr2 == 0
    # at ring 3 the fault's error code carries U/S (bit 2)
    m.load(bytes([0xB0]), origin=0x2FFF)
    m.cpu.cpl = 3
    ev = m.run()
    assert (ev.vector, ev.address, ev.error_code, ev.cpl) == (14, 0x3000, 4, 3)


def test_rep_movsd_with_ecx_all_ones_stops_at_the_budget_and_continues_on_the_next_run():
    m = Machine(memory=1 << 20)
    src, dst = 0x10000, 0x10010                        # overlapping: the copy replicates a pattern
    m.memory[src:src + 16] = np.arange(1, 17, dtype=np.uint8)
    m.load(bytes([0xF3, 0xA5, 0xF4]), origin=0x1000)   # REP MOVSD ; HLT
    m.cpu.ecx, m.cpu.esi, m.cpu.edi = 0xFFFFFFFF, src, dst
    ev = m.run(5)
    assert (ev.kind, ev.steps, ev.eip) == ("budget", 5, 0x1000)
    chunk = 5 * 4096                                   # dwords copied so far (REP_CHUNK per step)
    assert m.cpu.ecx == 0xFFFFFFFF - chunk
    assert (m.cpu.esi, m.cpu.edi) == (src + 4 * chunk, dst + 4 * chunk)
    assert m.cpu.eip == 0x1000 and m.counters["instructions"] == 0   # not retired yet
    ev = m.run(3)
    assert (ev.kind, ev.steps) == ("budget", 3)
    chunk += 3 * 4096
    assert m.cpu.ecx == 0xFFFFFFFF - chunk and m.cpu.edi == dst + 4 * chunk
    # the naive reference: dword by dword, forwards
    ref = bytearray(range(1, 17)) + bytearray(4 * chunk)
    for i in range(chunk):
        ref[16 + 4 * i:20 + 4 * i] = ref[4 * i:4 * i + 4]
    assert bytes(m.memory[src:dst + 4 * chunk]) == bytes(ref)
    # finish quickly: pretend only 2 iterations remain
    m.cpu.ecx = 2
    ev = m.run()
    assert ev.kind == "halt" and m.cpu.ecx == 0 and m.counters["instructions"] == 2


def test_instruction_longer_than_15_bytes_is_gp0():
    m = Machine(memory=MEM)
    # 14 DS prefixes + NOP = 15 bytes: legal (SDM Vol. 2A, 2.3.11)
    m.load(bytes([0x3E] * 14 + [0x90]), origin=0x1000)
    assert m.step() is None and m.cpu.eip == 0x1000 + 15
    # 15 prefixes + NOP = 16 bytes: #GP(0), nothing executed
    m.load(bytes([0x3E] * 15 + [0x90]), origin=0x1000)
    ev = m.run()
    assert (ev.kind, ev.vector, ev.error_code, ev.eip) == ("exception", 13, 0, 0x1000)
    # the limit counts operands too: MOV dword [esp + disp32], imm32 is 11 bytes
    insn = bytes([0xC7, 0x84, 0x24, 0x00, 0x20, 0x00, 0x00, 0x78, 0x56, 0x34, 0x12])
    m.cpu.esp = 0
    m.load(bytes([0x3E] * 4) + insn, origin=0x1000)            # 15 bytes: runs
    assert m.step() is None and m.cpu.eip == 0x1000 + 15
    assert bytes(m.memory[0x2000:0x2004]) == bytes([0x78, 0x56, 0x34, 0x12])
    m.memory[0x2000:0x2004] = 0
    m.load(bytes([0x3E] * 5) + insn, origin=0x1000)            # 16 bytes: #GP(0)
    ev = m.run()
    assert (ev.vector, ev.error_code, ev.eip) == (13, 0, 0x1000)
    assert bytes(m.memory[0x2000:0x2004]) == bytes(4)


def test_self_modifying_code_executes_the_new_instruction():
    # each iteration patches the imm8 of the MOV that follows the store; the second
    # patch hits an instruction already in the decode cache
    p = assemble("""
        mov ecx, 2
    top:
        mov al, cl
        mov [nxt + 1], al
    nxt:
        mov bl, 0x99
        add dl, bl
        loop top
        hlt
    """)
    m = Machine()
    m.load(p)
    ev = m.run()
    assert ev.kind == "halt"
    assert m.cpu.edx & 0xFF == 2 + 1                   # a stale cache would give 2 + 2
    assert m.counters["smc_invalidations"] >= 1
    # the very next instruction, patched through a second linear alias of its page
    m = _paged_machine()
    pt = 0x80000
    m.memory[pt + 0x50 * 4:pt + 0x50 * 4 + 4] = np.frombuffer((0x1000 | 7).to_bytes(4, "little"), np.uint8)
    p = assemble("""
        mov ecx, 2
    top:
        mov eax, nxt + 1 - 0x1000 + 0x50000
        mov [eax], cl
    nxt:
        mov bl, 0x99
        add dl, bl
        loop top
        hlt
    """)
    m.load(p)
    ev = m.run()
    assert ev.kind == "halt" and m.cpu.edx & 0xFF == 3
