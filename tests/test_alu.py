"""Tests of hvsim/cpu/alu.py (the jitted ALU) against three oracles.

1. tests/naive_alu.py, a plain-Python transcription of the SDM, on seeded random
   operands plus the edge values of every size (thousands of cases per op and size);
2. Unicorn (QEMU's x86 semantics) executing the real encodings, one instruction per
   emu_start, comparing registers and the six status flags;
3. hand-derived values from the SDM pages.

Flags the SDM leaves undefined are masked in (1) and (2) (``undefined_flags``);
the values hvsim chose for them are checked separately against the kernel docstrings.
"""
import random
import zlib

import numpy as np
import pytest
import unicorn
from unicorn import x86_const as X

import naive_alu as ref
from hvsim.cpu import alu
from hvsim.arch.flags import CF, PF, AF, ZF, SF, OF, ARITH, FIXED1
from hvsim.arch.layout import (EAX, EDX, EFLAGS, FAULT_PENDING, FAULT_VECTOR,
                              FAULT_EXCEPTION, ST_SIZE)

SIZES = (1, 2, 4)
EDGES = (0, 1, 2, 0xF, 0x10, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF,
         0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
LOGIC_OPS = (1, 4, 6)   # OR, AND, XOR
ROTATES = (0, 1, 2, 3)  # ROL, ROR, RCL, RCR

# (kind, ops) -- kinds name the kernels; ops is the /digit list for grouped kernels
KINDS = ([("alu2", op) for op in range(8)] + [("test", 0), ("inc", 0), ("dec", 0), ("neg", 0)]
         + [("shift", op) for op in range(8)]
         + [("mul1", 0), ("imul1", 0), ("imul2", 0), ("div1", 0), ("idiv1", 0)])


def undefined_flags(kind, op, count=0):
    """The status flags the SDM leaves undefined for this instruction (masked in comparisons)."""
    if kind == "test" or (kind == "alu2" and op in LOGIC_OPS):
        return AF
    if kind in ("mul1", "imul1", "imul2"):
        return SF | ZF | AF | PF
    if kind in ("div1", "idiv1"):
        return ARITH
    if kind == "shift":
        masked = count & 0x1F
        if masked == 0:
            return 0
        und = OF if masked > 1 else 0
        return und if op in ROTATES else und | AF
    return 0


# --------------------------------------------------------------------------- runners
_ST = np.zeros(ST_SIZE, dtype=np.int64)


def run_jit(kind, op, size, a, b, eflags, eax, edx):
    """Run one kernel; returns (result or None, eflags, eax, edx, fault vector or None)."""
    st = _ST
    st[EFLAGS], st[EAX], st[EDX] = eflags, eax, edx
    st[FAULT_PENDING] = 0
    r = None
    if kind == "alu2":
        r = alu.alu2(st, op, a, b, size)
    elif kind == "test":
        alu.test_flags(st, a, b, size)
    elif kind == "inc":
        r = alu.inc(st, a, size)
    elif kind == "dec":
        r = alu.dec(st, a, size)
    elif kind == "neg":
        r = alu.neg(st, a, size)
    elif kind == "shift":
        r = alu.shift(st, op, a, b, size)
    elif kind == "mul1":
        alu.mul1(st, b, size)
    elif kind == "imul1":
        alu.imul1(st, b, size)
    elif kind == "imul2":
        r = alu.imul2(st, a, b, size)
    elif kind == "div1":
        alu.div1(st, b, size)
    elif kind == "idiv1":
        alu.idiv1(st, b, size)
    fault = None
    if st[FAULT_PENDING] != 0:
        assert st[FAULT_PENDING] == FAULT_EXCEPTION
        fault = int(st[FAULT_VECTOR])
    return (None if r is None else int(r)), int(st[EFLAGS]), int(st[EAX]), int(st[EDX]), fault


def run_ref(kind, op, size, a, b, eflags, eax, edx):
    s = ref.new_state(eflags, eax, edx)
    r = None
    if kind == "alu2":
        r = ref.alu2(s, op, a, b, size)
    elif kind == "test":
        ref.test_flags(s, a, b, size)
    elif kind in ("inc", "dec", "neg"):
        r = getattr(ref, kind)(s, a, size)
    elif kind == "shift":
        r = ref.shift(s, op, a, b, size)
    elif kind == "imul2":
        r = ref.imul2(s, a, b, size)
    else:
        getattr(ref, kind)(s, b, size)
    return r, s["eflags"], s["eax"], s["edx"], s["fault"]


# --------------------------------------------------------------------------- inputs
def _value(rng, size):
    m = alu.mask_of(size)
    if rng.random() < 0.25:
        return rng.choice(EDGES) & m
    return rng.getrandbits(rng.choice((4, 8, 16, 32))) & m   # small values too


def _eflags(rng):
    return FIXED1 | (rng.getrandbits(12) & ARITH)


def _div_operands(rng, kind, size):
    """(eax, edx, src) with a quotient in range most of the time (else #DE cases)."""
    bits = 8 * size
    m = alu.mask_of(size)
    if rng.random() < 0.2:          # anything: mostly overflow or zero divisor
        src = _value(rng, size)
        lo, hi = rng.getrandbits(bits), rng.getrandbits(bits) & rng.choice((0, 1, m))
    elif kind == "div1":
        src = _value(rng, size) or 1
        q = rng.getrandbits(rng.randint(1, bits))
        n = q * src + rng.randrange(src)
        lo, hi = n & m, n >> bits
    else:
        d = ref.sign_extend(_value(rng, size), size) or -1
        q = rng.randint(-2 ** (bits - 1), 2 ** (bits - 1) - 1) >> rng.randint(0, bits - 1)
        r = rng.randrange(abs(d))
        n = q * d + (-r if q * d < 0 else r)
        n &= (1 << 2 * bits) - 1
        src, lo, hi = d & m, n & m, n >> bits
    eax, edx = rng.getrandbits(32), rng.getrandbits(32)   # upper bits must survive
    if size == 1:
        eax = (eax & ~0xFFFF) | (hi << 8) | lo
    else:
        eax = (eax & ~m) | lo
        edx = (edx & ~m) | hi
    return eax, edx, src


def cases(kind, op, size, n, seed):
    """n seeded random cases (plus every edge pair) as (a, b, eflags, eax, edx) tuples."""
    rng = random.Random(seed)
    m = alu.mask_of(size)
    edges = sorted({e & m for e in EDGES})
    out = []
    if kind not in ("div1", "idiv1"):
        out += [(a, b, fl, rng.getrandbits(32), rng.getrandbits(32))
                for a in edges for b in edges for fl in (FIXED1, FIXED1 | ARITH)]
        if kind == "shift":
            out += [(a, c, _eflags(rng), 0, 0) for a in edges for c in range(34)]
    for _ in range(n):
        fl = _eflags(rng)
        if kind in ("div1", "idiv1"):
            eax, edx, src = _div_operands(rng, kind, size)
            out.append((0, src, fl, eax, edx))
            continue
        a = _value(rng, size)
        b = _value(rng, size)
        if kind == "shift":
            b = rng.randrange(256) if rng.random() < 0.2 else rng.randrange(34)
        eax, edx = rng.getrandbits(32), rng.getrandbits(32)
        if kind in ("mul1", "imul1"):
            eax = (eax & ~m) | a
        out.append((a, b, fl, eax, edx))
    return out


# --------------------------------------------------------------------------- (1) naive reference
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind,op", KINDS)
def test_against_naive_reference(kind, op, size):
    n = 2000
    for a, b, fl, eax, edx in cases(kind, op, size, n, seed=zlib.crc32(f"{kind}/{op}/{size}".encode())):
        got = run_jit(kind, op, size, a, b, fl, eax, edx)
        exp = run_ref(kind, op, size, a, b, fl, eax, edx)
        keep = ~undefined_flags(kind, op, b)
        ctx = (kind, op, size, hex(a), hex(b), hex(fl), hex(eax), hex(edx))
        assert got[0] == exp[0], ctx
        assert got[1] & keep == exp[1] & keep, (ctx, hex(got[1]), hex(exp[1]))
        assert got[1] & ~ARITH == fl & ~ARITH, ctx          # no other EFLAGS bit touched
        assert got[2:] == exp[2:], (ctx, got, exp)


# --------------------------------------------------------------------------- (2) Unicorn
CODE_BASE = 0x1000


def encoding(kind, op, size):
    """Bytes of the instruction that the kernel models, operands eax/al (dst), ebx/bl (src), cl."""
    wide = size != 1
    if kind == "alu2":
        body = bytes([(op << 3) | wide, 0xD8])            # op r/m=eax, reg=ebx (01 D8: add eax, ebx)
    elif kind == "test":
        body = bytes([0x84 | wide, 0xD8])                 # test eax, ebx
    elif kind in ("inc", "dec"):
        body = bytes([0xFE | wide, 0xC0 | (8 if kind == "dec" else 0)])   # FF /0, FF /1 on eax
    elif kind == "neg":
        body = bytes([0xF6 | wide, 0xD8])                 # F7 /3 eax
    elif kind == "shift":
        body = bytes([0xD2 | wide, 0xC0 | (op << 3)])     # D3 /digit eax, cl
    elif kind == "imul2":
        body = bytes([0x0F, 0xAF, 0xC3])                  # imul eax, ebx
    else:
        digit = {"mul1": 4, "imul1": 5, "div1": 6, "idiv1": 7}[kind]
        body = bytes([0xF6 | wide, 0xC3 | (digit << 3)])  # F7 /digit ebx (F7 E3: mul ebx)
    return (b"\x66" if size == 2 else b"") + body


class UnicornCPU:
    """One Unicorn x86-32 CPU with every instruction under test at its own 16-byte slot.

    Unicorn keeps QEMU's "exception in progress" state after a fault stopped in the
    interrupt hook (the next #DE would become #DF), so a fresh engine replaces it
    after every fault (0.4 ms; cheaper than a guest IDT).
    """

    def __init__(self, code):
        self.code = code
        self.vectors = []
        self._fresh()

    def _fresh(self):
        uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
        uc.mem_map(CODE_BASE, 0x4000)
        uc.mem_write(CODE_BASE, self.code)

        def on_interrupt(uc_, intno, _data):
            self.vectors.append(intno)
            uc_.emu_stop()

        uc.hook_add(unicorn.UC_HOOK_INTR, on_interrupt)
        self.uc = uc

    def run(self, addr, code_len, kind, size, a, b, eflags, eax, edx):
        """Execute one instruction at addr; returns (result, eflags, eax, edx, fault) like run_jit."""
        uc = self.uc
        m = alu.mask_of(size)
        if kind in ("mul1", "imul1", "div1", "idiv1"):
            ebx, ecx = b, 0
        elif kind == "shift":
            eax, ebx, ecx = (eax & ~m) | a, 0, b
        else:
            eax, ebx, ecx = (eax & ~m) | a, b, 0
        uc.reg_write(X.UC_X86_REG_EAX, eax)
        uc.reg_write(X.UC_X86_REG_EBX, ebx)
        uc.reg_write(X.UC_X86_REG_ECX, ecx)
        uc.reg_write(X.UC_X86_REG_EDX, edx)
        uc.reg_write(X.UC_X86_REG_EFLAGS, eflags)
        del self.vectors[:]
        uc.emu_start(addr, addr + code_len)
        out_eax = uc.reg_read(X.UC_X86_REG_EAX)
        out_fl = uc.reg_read(X.UC_X86_REG_EFLAGS)
        out_edx = uc.reg_read(X.UC_X86_REG_EDX)
        fault = None
        if self.vectors:
            fault = self.vectors[0]
            assert uc.reg_read(X.UC_X86_REG_EIP) == addr      # a fault restarts the insn
            self._fresh()
        if kind in ("mul1", "imul1", "div1", "idiv1"):
            return None, out_fl, out_eax, out_edx, fault
        assert out_eax & ~m == eax & ~m                    # the upper part of eax is untouched
        return out_eax & m, out_fl, out_eax, out_edx, fault


def test_against_unicorn():
    slots = []
    code = bytearray()
    for kind, op in KINDS:
        for size in SIZES:
            if kind == "imul2" and size == 1:
                continue                                   # IMUL r, r/m has no byte form
            insn = encoding(kind, op, size)
            slots.append((kind, op, size, CODE_BASE + len(code), len(insn)))
            code += insn.ljust(16, b"\x90")
    cpu = UnicornCPU(bytes(code))
    faults = 0
    checked = 0
    for kind, op, size, addr, code_len in slots:
        # 160 per instruction, drawn from random and edge cases; 400 for DIV/IDIV
        divide = kind in ("div1", "idiv1")
        rng_cases = cases(kind, op, size, 400 if divide else 120, seed=addr)
        random.Random(addr).shuffle(rng_cases)
        for a, b, fl, eax, edx in rng_cases[:400 if divide else 160]:
            got = run_jit(kind, op, size, a, b, fl, eax, edx)
            uni = cpu.run(addr, code_len, kind, size, a, b, fl, eax, edx)
            keep = ~undefined_flags(kind, op, b) & ARITH
            ctx = (kind, op, size, hex(a), hex(b), hex(fl), hex(eax), hex(edx))
            assert got[4] == uni[4], (ctx, got, uni)
            if got[4] is not None:
                faults += 1
                assert (got[2], got[3]) == (eax, edx), ctx    # #DE changes no register
            if kind in ("mul1", "imul1", "div1", "idiv1"):
                assert (got[2], got[3]) == (uni[2], uni[3]), (ctx, got, uni)
            elif kind != "test" and not (kind == "alu2" and op == 7):   # TEST/CMP store nothing
                assert got[0] == uni[0], (ctx, got, uni)
            assert got[1] & keep == uni[1] & keep, (ctx, hex(got[1]), hex(uni[1]))
            checked += 1
    assert checked > 12000 and faults > 100


# --------------------------------------------------------------------------- (3) hand-checked SDM values
def _flags(fl):
    return {name for name, bit in (("CF", CF), ("PF", PF), ("AF", AF), ("ZF", ZF),
                                   ("SF", SF), ("OF", OF)) if fl & bit}


def test_hand_checked_values():
    st = np.zeros(ST_SIZE, dtype=np.int64)
    st[EFLAGS] = FIXED1
    # 0x7FFFFFFF + 1 = 0x80000000: signed overflow, negative, no carry, carry out of bit 3,
    # low byte 00 has even parity.
    assert alu.alu2(st, 0, 0x7FFFFFFF, 1, 4) == 0x80000000
    assert _flags(st[EFLAGS]) == {"OF", "SF", "AF", "PF"}
    # 0xFFFFFFFF + 1 = 0: carry, zero, AF, PF; no overflow.
    assert alu.alu2(st, 0, 0xFFFFFFFF, 1, 4) == 0
    assert _flags(st[EFLAGS]) == {"CF", "ZF", "AF", "PF"}
    # ADC with CF=1: 0xFF + 0 + 1 (byte) = 0 with carry.
    assert alu.alu2(st, 2, 0xFF, 0, 1) == 0 and st[EFLAGS] & CF
    # SUB 0 - 1 = 0xFFFFFFFF: borrow, SF, AF, PF (0xFF has 8 ones).
    assert alu.alu2(st, 5, 0, 1, 4) == 0xFFFFFFFF
    assert _flags(st[EFLAGS]) == {"CF", "SF", "AF", "PF"}
    # CMP 0x80000000, 1: 0x7FFFFFFF, signed overflow, no borrow, borrow into bit 3,
    # low byte 0xFF has eight ones (even parity).
    alu.alu2(st, 7, 0x80000000, 1, 4)
    assert _flags(st[EFLAGS]) == {"OF", "AF", "PF"}
    # SHL by 1 of 0x80000000: CF = 1 (bit out), result 0, OF = MSB(r) ^ CF = 1.
    assert alu.shift(st, 4, 0x80000000, 1, 4) == 0
    assert {"CF", "OF", "ZF", "PF"} <= _flags(st[EFLAGS]) and not st[EFLAGS] & SF
    # SAR byte 0x80 by 7 -> 0xFF, CF = bit 6 = 0.
    assert alu.shift(st, 7, 0x80, 7, 1) == 0xFF and not st[EFLAGS] & CF
    # Count 32 masks to 0: no change at all.
    st[EFLAGS] = FIXED1 | CF | OF
    assert alu.shift(st, 5, 0x1234, 32, 4) == 0x1234 and st[EFLAGS] == FIXED1 | CF | OF
    # RCL byte by 9 is the identity (9-bit rotate) and keeps CF.
    assert alu.shift(st, 2, 0x5A, 9, 1) == 0x5A and st[EFLAGS] & CF
    # RCR by 1 of 0x01 with CF=1: 0x80, CF=1, OF = MSB(before) ^ CF(before) = 1.
    st[EFLAGS] = FIXED1 | CF
    assert alu.shift(st, 3, 0x01, 1, 1) == 0x80 and st[EFLAGS] & CF and st[EFLAGS] & OF
    # INC 0x7F (byte) = 0x80 sets OF, keeps CF; DEC 0 = 0xFF keeps CF clear.
    st[EFLAGS] = FIXED1 | CF
    assert alu.inc(st, 0x7F, 1) == 0x80 and _flags(st[EFLAGS]) == {"CF", "OF", "SF", "AF"}
    st[EFLAGS] = FIXED1
    assert alu.dec(st, 0, 1) == 0xFF and _flags(st[EFLAGS]) == {"SF", "AF", "PF"}
    # NEG 0x80 (byte) = 0x80: OF and CF.
    assert alu.neg(st, 0x80, 1) == 0x80 and {"CF", "OF", "SF"} <= _flags(st[EFLAGS])
    assert alu.neg(st, 0, 4) == 0 and not st[EFLAGS] & CF
    # MUL: 0xFFFFFFFF * 0xFFFFFFFF = 0xFFFFFFFE_00000001.
    st[EAX], st[EDX] = 0xFFFFFFFF, 0x12345678
    alu.mul1(st, 0xFFFFFFFF, 4)
    assert (st[EDX], st[EAX]) == (0xFFFFFFFE, 1) and st[EFLAGS] & CF and st[EFLAGS] & OF
    # IMUL one-operand: -1 * -1 = 1, EDX = 0, no overflow.
    st[EAX] = 0xFFFFFFFF
    alu.imul1(st, 0xFFFFFFFF, 4)
    assert (st[EDX], st[EAX]) == (0, 1) and not st[EFLAGS] & (CF | OF)
    # IMUL r, r/m: 0x10000 * 0x10000 truncates to 0 with CF = OF = 1.
    assert alu.imul2(st, 0x10000, 0x10000, 4) == 0 and st[EFLAGS] & CF and st[EFLAGS] & OF
    # DIV: 0x1_00000005 / 2 = 0x80000002 rem 1.
    st[EDX], st[EAX] = 1, 5
    alu.div1(st, 2, 4)
    assert (st[EAX], st[EDX]) == (0x80000002, 1) and st[FAULT_PENDING] == 0
    # IDIV: -7 / 2 = -3 rem -1 (truncation; remainder has the dividend's sign).
    st[EDX], st[EAX] = 0xFFFFFFFF, 0xFFFFFFF9
    alu.idiv1(st, 2, 4)
    assert (st[EAX], st[EDX]) == (0xFFFFFFFD, 0xFFFFFFFF)
    # IDIV 8-bit: AX = -128 / -1 = 128 does not fit AL -> #DE, AX unchanged.
    st[EAX] = 0xAAAAFF80
    alu.idiv1(st, 0xFF, 1)
    assert st[FAULT_PENDING] == FAULT_EXCEPTION and st[FAULT_VECTOR] == 0
    assert st[EAX] == 0xAAAAFF80
    # IDIV 32-bit of -2**63 by -1 (host idiv would trap) -> #DE.
    st[FAULT_PENDING] = 0
    st[EDX], st[EAX] = 0x80000000, 0
    alu.idiv1(st, 0xFFFFFFFF, 4)
    assert st[FAULT_PENDING] == FAULT_EXCEPTION and (st[EDX], st[EAX]) == (0x80000000, 0)
    # DIV by zero -> #DE.
    st[FAULT_PENDING] = 0
    alu.div1(st, 0, 2)
    assert st[FAULT_PENDING] == FAULT_EXCEPTION and st[FAULT_VECTOR] == 0


def test_helpers():
    assert [alu.parity(x) for x in (0, 1, 3, 0x7F, 0xFF, 0x100, 0x103)] == [1, 0, 1, 0, 1, 1, 1]
    assert [alu.mask_of(s) for s in SIZES] == [0xFF, 0xFFFF, 0xFFFFFFFF]
    assert alu.sign_extend(0x80, 1) == -128 and alu.sign_extend(0x7F, 1) == 127
    assert alu.sign_extend(0xFFFF8000, 2) == -0x8000
    assert alu.sign_extend(0x80000000, 4) == -0x80000000
    assert alu.sign_extend(0xFFFFFFFF, 4) == -1


# --------------------------------------------------------------------------- hvsim's choices for undefined flags
def test_documented_choices_for_undefined_flags():
    """The values alu.py's docstrings promise where the SDM says 'undefined'."""
    rng = random.Random(7)
    for size in SIZES:
        m = alu.mask_of(size)
        msb = 8 * size - 1
        for _ in range(500):
            a, b, fl = _value(rng, size), _value(rng, size), _eflags(rng)
            # logic ops and TEST clear AF
            for op in LOGIC_OPS:
                assert not run_jit("alu2", op, size, a, b, fl, 0, 0)[1] & AF
            assert not run_jit("test", 0, size, a, b, fl, 0, 0)[1] & AF
            # MUL/IMUL: SF/ZF/PF from the low half, AF clear
            for kind in ("mul1", "imul1", "imul2"):
                r, out, eax, _, _ = run_jit(kind, 0, size, a, b, fl, a, 0)
                lo = r if kind == "imul2" else eax & m
                assert out & (SF | ZF | PF | AF) == (
                    (SF if lo >> msb & 1 else 0) | (ZF if lo == 0 else 0)
                    | (PF if ref.parity(lo) else 0)), (kind, size, a, b)
            # DIV/IDIV: flags unchanged, faulting or not
            for kind in ("div1", "idiv1"):
                eax, edx, src = _div_operands(rng, kind, size)
                assert run_jit(kind, 0, size, 0, src, fl, eax, edx)[1] == fl
            # shifts: AF clear; OF for count > 1 by the count-1 formula on final values
            c = rng.randrange(2, 32)
            cf_in = fl & CF
            for op in range(8):
                r, out = run_jit("shift", op, size, a, c, fl, 0, 0)[:2]
                cf = out & CF
                of = 1 if out & OF else 0
                if op in (4, 6, 0, 2):
                    assert of == (r >> msb & 1) ^ cf, (op, size, a, c)
                elif op == 5:
                    assert of == a >> msb & 1
                elif op == 7:
                    assert of == 0
                elif op == 1:
                    assert of == (r >> msb & 1) ^ (r >> (msb - 1) & 1)
                else:
                    assert of == (a >> msb & 1) ^ cf_in
                if op >= 4:
                    assert not out & AF


# --------------------------------------------------------------------------- (1') the 16-bit forms through the CPU
def test_16_bit_forms_through_the_cpu_against_naive_reference():
    """The 66h forms decoded and executed by a Machine (decode, handler, operand access),
    one instruction per run, against the naive reference: the low word of EAX (and DX for
    MUL/DIV) as the SDM computes it, the upper halves of EAX and EDX kept (SDM Vol. 1,
    3.4.1.1: a 16-bit operand is the low word of its register), flags as the reference."""
    from hvsim import Machine
    from hvsim.arch.layout import EBX, ECX
    m = Machine()
    slots, code = [], bytearray()
    for kind, op in KINDS:
        insn = encoding(kind, op, 2)
        slots.append((kind, op, 0x1000 + len(code), len(insn)))
        code += insn + b"\xf4"                             # each followed by HLT
    m.memory[0x1000:0x1000 + len(code)] = np.frombuffer(bytes(code), np.uint8)
    cpu = m.cpu
    checked = faults = 0
    for kind, op, addr, n in slots:
        for a, b, fl, eax, edx in cases(kind, op, 2, 150, seed=addr)[-150:]:
            if kind in ("mul1", "imul1", "div1", "idiv1"):
                ebx, ecx = b, 0
            elif kind == "shift":
                eax, ebx, ecx = (eax & ~0xFFFF) | a, 0, b
            else:
                eax, ebx, ecx = (eax & ~0xFFFF) | a, b | 0xABCD0000, 0   # EBX's top is ignored
            cpu.eax, cpu.ebx, cpu.ecx, cpu.edx, cpu.eflags = eax, ebx, ecx, edx, fl
            cpu.eip = addr
            ev = m.run(max_steps=2)
            exp = run_ref(kind, op, 2, a, b, fl, eax, edx)
            ctx = (kind, op, hex(a), hex(b), hex(fl), hex(eax), hex(edx), str(ev))
            if exp[4] is not None:                         # #DE: nothing changes
                assert ev.kind == "exception" and ev.vector == exp[4] and ev.eip == addr, ctx
                assert (cpu.eax, cpu.edx, cpu.eflags) == (eax, edx, fl), ctx
                faults += 1
                continue
            assert ev.kind == "halt" and ev.eip == addr + n, ctx
            if kind in ("mul1", "imul1", "div1", "idiv1"):
                want_eax, want_edx = exp[2], exp[3]
            elif exp[0] is None or (kind == "alu2" and op == 7):
                want_eax, want_edx = eax, edx              # TEST, CMP write nothing
            else:
                want_eax, want_edx = (eax & ~0xFFFF) | exp[0], edx
            assert (cpu.eax, cpu.edx) == (want_eax, want_edx), ctx
            assert cpu.ebx == ebx and cpu.ecx == ecx, ctx
            keep = ~undefined_flags(kind, op, b) & ARITH
            assert cpu.eflags & keep == exp[1] & keep, (ctx, hex(cpu.eflags), hex(exp[1]))
            assert cpu.eflags & ~ARITH == fl & ~ARITH, ctx
            checked += 1
    assert checked > 3000 and faults > 10
