"""Integer arithmetic of IA-32 with exact EFLAGS (jitted).

Every kernel here is ``@njit`` (hvsim._jit) and takes the state array ``st`` first;
the status flags live in ``st[EFLAGS]`` (hvsim.arch.layout), bits named in
hvsim.arch.flags. Operand sizes are in bytes (1, 2 or 4) and operands arrive unsigned,
already masked to their size; results are returned unsigned and masked.

Flags follow the "Flags Affected" paragraph of each instruction in the Intel SDM
Vol. 2 (ADD, ADC, SUB, SBB, CMP, AND, OR, XOR, TEST, INC, DEC, NEG, SAL/SAR/SHL/SHR,
RCL/RCR/ROL/ROR, MUL, IMUL, DIV, IDIV). Where the SDM says a flag is *undefined*,
hvsim makes one fixed, documented choice (each kernel's docstring says which), so
runs stay deterministic:

* AF after AND/OR/XOR/TEST, and after SHL/SHR/SAR with a non-zero count: cleared.
* SF/ZF/PF after MUL/IMUL: from the low half of the product (the part written to
  AL/AX/EAX or to the destination); AF: cleared.
* DIV/IDIV: all six status flags unchanged.
* OF after shifts/rotates with a masked count > 1: the count-1 formula applied to
  the final result (see ``shift``).
* CF after SHL/SHR with count >= operand width (8/16-bit only): the SDM pseudocode's
  "last bit shifted out", i.e. 0 once every bit has left.

Hot path: flags are computed with bit tricks, not branches -- carry out of the top
bit from the unrounded sum, overflow as ``(a ^ r) & (b ^ r)`` (add) or
``(a ^ b) & (a ^ r)`` (sub) at the sign bit, AF as bit 4 of ``a ^ b ^ r``.
"""
import numpy as np

from hvsim._jit import njit
from hvsim.arch.fault import raise_fault, NO_ERROR_CODE
from hvsim.arch.flags import CF, PF, AF, ZF, SF, OF, ARITH
from hvsim.arch.layout import EFLAGS, EAX, EDX, MASK32

NOT_ARITH = ~ARITH
NOT_CF_OF = ~(CF | OF)
VECTOR_DE = 0                 # #DE divide error (SDM Vol. 3A, Table 6-1)
INT64_MIN = -(1 << 63)

# group 1 ModRM /digit order (SDM Vol. 2, Table A-6 "Opcode Extensions", 80-83 /digit)
OP_ADD, OP_OR, OP_ADC, OP_SBB, OP_AND, OP_SUB, OP_XOR, OP_CMP = 0, 1, 2, 3, 4, 5, 6, 7
# group 2 ModRM /digit order (same table, C0/C1/D0-D3 /digit); /6 is an alias of SHL
SH_ROL, SH_ROR, SH_RCL, SH_RCR, SH_SHL, SH_SHR, SH_SAL, SH_SAR = 0, 1, 2, 3, 4, 5, 6, 7

# PF = 1 when the low byte of the result has an even number of 1 bits (SDM Vol. 1,
# 3.4.3.1). Table holds the PF bit value itself; numba freezes this global array.
PARITY_FLAG = np.array([PF if bin(i).count("1") % 2 == 0 else 0 for i in range(256)],
                       dtype=np.int64)


@njit(inline="always")
def parity(x):
    """1 if the low byte of ``x`` has an even number of set bits, else 0."""
    return PARITY_FLAG[x & 0xFF] >> 2


@njit
def mask_of(size):
    """All-ones mask of a ``size``-byte operand (0xFF, 0xFFFF, 0xFFFFFFFF)."""
    return (1 << (size << 3)) - 1


@njit
def sign_extend(value, size):
    """The ``size``-byte ``value`` read as a two's-complement signed int64."""
    bits = size << 3
    v = value & ((1 << bits) - 1)
    return v - (((v >> (bits - 1)) & 1) << bits)


@njit(inline="always")
def _szp(r, msb):
    """SF, ZF and PF bits of result ``r`` whose sign bit is bit ``msb``."""
    return (((r >> msb) & 1) * SF) | (ZF if r == 0 else 0) | PARITY_FLAG[r & 0xFF]


@njit(inline="always")
def alu2(st, op, a, b, size):
    """Group-1 operation ``op`` (ModRM /digit) on ``a``, ``b``; returns the result.

    ADD/ADC/SUB/SBB/CMP set OF, SF, ZF, AF, CF, PF by the result (ADC/SBB add or
    subtract the current CF). CMP returns ``a - b`` for the caller to discard.
    AND/OR/XOR clear OF and CF and set SF, ZF, PF; AF is undefined in the SDM:
    hvsim clears it.
    """
    bits = size << 3
    msb = bits - 1
    m = (1 << bits) - 1
    fl = st[EFLAGS]
    if op == OP_ADD or op == OP_ADC:
        full = a + b
        if op == OP_ADC:
            full += fl & CF
        ovf = (a ^ full) & (b ^ full)
    elif op == OP_SUB or op == OP_CMP or op == OP_SBB:
        full = a - b
        if op == OP_SBB:
            full -= fl & CF
        ovf = (a ^ b) & (a ^ full)
    else:
        if op == OP_AND:
            r = a & b
        elif op == OP_OR:
            r = a | b
        else:
            r = a ^ b
        st[EFLAGS] = (fl & NOT_ARITH) | _szp(r, msb)
        return r
    r = full & m
    st[EFLAGS] = ((fl & NOT_ARITH) | ((full >> bits) & 1) * CF | ((ovf >> msb) & 1) * OF
                  | ((a ^ b ^ full) & AF) | _szp(r, msb))
    return r


@njit
def test_flags(st, a, b, size):
    """TEST: flags of ``a & b`` (CF = OF = 0; SF, ZF, PF by result; AF cleared --
    undefined in the SDM)."""
    st[EFLAGS] = (st[EFLAGS] & NOT_ARITH) | _szp(a & b, (size << 3) - 1)


@njit(inline="always")
def inc(st, a, size):
    """INC: ``a + 1``; OF, SF, ZF, AF, PF by result, CF unchanged."""
    msb = (size << 3) - 1
    full = a + 1
    r = full & mask_of(size)
    fl = st[EFLAGS]
    st[EFLAGS] = ((fl & (NOT_ARITH | CF)) | (((~a & full) >> msb) & 1) * OF
                  | ((a ^ 1 ^ full) & AF) | _szp(r, msb))
    return r


@njit(inline="always")
def dec(st, a, size):
    """DEC: ``a - 1``; OF, SF, ZF, AF, PF by result, CF unchanged."""
    msb = (size << 3) - 1
    full = a - 1
    r = full & mask_of(size)
    fl = st[EFLAGS]
    st[EFLAGS] = ((fl & (NOT_ARITH | CF)) | (((a & ~full) >> msb) & 1) * OF
                  | ((a ^ 1 ^ full) & AF) | _szp(r, msb))
    return r


@njit
def neg(st, a, size):
    """NEG: ``0 - a``; CF = (a != 0); OF, SF, ZF, AF, PF by result."""
    msb = (size << 3) - 1
    full = -a
    r = full & mask_of(size)
    st[EFLAGS] = ((st[EFLAGS] & NOT_ARITH) | (CF if a != 0 else 0)
                  | (((a & full) >> msb) & 1) * OF | ((a ^ full) & AF) | _szp(r, msb))
    return r


@njit
def shift(st, op, a, count, size):
    """Group-2 shift/rotate ``op`` (ModRM /digit) of ``a`` by ``count``; returns result.

    The count is masked to 5 bits; a masked count of 0 changes no flag. ROL/ROR
    rotate by count mod width; RCL/RCR rotate through CF, i.e. width+1 bits (count
    mod 9 for bytes, mod 17 for words). Rotates change only CF and OF; shifts set
    CF (last bit out), SF, ZF, PF, and OF.

    Undefined in the SDM, fixed here:
      * OF for count > 1: the count-1 formula on the final values -- SHL, ROL, RCL:
        MSB(result) ^ CF; SHR: MSB(original); SAR: 0; ROR: MSB(result) ^
        MSB-1(result); RCR: MSB(original) ^ CF before the instruction.
      * AF after SHL/SHR/SAR: cleared.
      * CF after SHL/SHR with count >= width: last bit shifted out (0).
    """
    c = count & 0x1F
    if c == 0:
        return a
    bits = size << 3
    msb = bits - 1
    m = (1 << bits) - 1
    fl = st[EFLAGS]
    cf_in = fl & CF
    if op >= SH_SHL:
        if op == SH_SHR:
            r = a >> c
            cf = (a >> (c - 1)) & 1
            of = (a >> msb) & 1
        elif op == SH_SAR:
            sa = a - (((a >> msb) & 1) << bits)
            r = (sa >> c) & m
            cf = (sa >> (c - 1)) & 1
            of = 0
        else:                                   # SHL, SAL
            wide = a << c                       # < 2**63: c <= 31, a < 2**32
            r = wide & m
            cf = (wide >> bits) & 1
            of = ((r >> msb) ^ cf) & 1
        st[EFLAGS] = (fl & NOT_ARITH) | cf * CF | of * OF | _szp(r, msb)
        return r
    if op == SH_ROL:
        n = c & msb                             # width is a power of two
        r = ((a << n) | (a >> (bits - n))) & m
        cf = r & 1
        of = ((r >> msb) ^ cf) & 1
    elif op == SH_ROR:
        n = c & msb
        r = ((a >> n) | (a << (bits - n))) & m
        cf = (r >> msb) & 1
        of = ((r >> msb) ^ (r >> (msb - 1))) & 1
    else:
        # RCL/RCR rotate the (width+1)-bit value CF:a.
        w = bits + 1
        n = c % w
        wide = (cf_in << bits) | a
        if op == SH_RCL:
            rot = (wide << n) | (wide >> (w - n))
        else:
            rot = (wide >> n) | (wide << (w - n))
        r = rot & m
        cf = (rot >> bits) & 1
        if op == SH_RCL:
            of = ((r >> msb) ^ cf) & 1
        else:
            of = ((a >> msb) ^ cf_in) & 1
    st[EFLAGS] = (fl & NOT_CF_OF) | cf * CF | of * OF
    return r


@njit
def _mul_flags(st, lo, wide_nonzero, size):
    # CF = OF = wide_nonzero; SF/ZF/PF of the low half, AF cleared (hvsim's choice).
    st[EFLAGS] = ((st[EFLAGS] & NOT_ARITH) | (CF | OF if wide_nonzero else 0)
                  | _szp(lo, (size << 3) - 1))


@njit
def _write_acc_pair(st, lo, hi, size):
    # Store a double-width result: AX (size 1, hi -> AH), DX:AX, or EDX:EAX.
    if size == 1:
        st[EAX] = (st[EAX] & 0xFFFF0000) | (hi << 8) | lo
    elif size == 2:
        st[EAX] = (st[EAX] & 0xFFFF0000) | lo
        st[EDX] = (st[EDX] & 0xFFFF0000) | hi
    else:
        st[EAX] = lo
        st[EDX] = hi


@njit
def _acc_pair(st, size):
    # Read AL:AH-style pair (lo, hi) for size 1 (AL, AH), 2 (AX, DX), 4 (EAX, EDX).
    if size == 1:
        return st[EAX] & 0xFF, (st[EAX] >> 8) & 0xFF
    if size == 2:
        return st[EAX] & 0xFFFF, st[EDX] & 0xFFFF
    return st[EAX], st[EDX]


@njit
def mul1(st, src, size):
    """MUL r/m: AX = AL*src (size 1), DX:AX = AX*src, EDX:EAX = EAX*src.

    CF = OF = (upper half != 0). Undefined in the SDM, fixed here: SF, ZF, PF from
    the lower half; AF cleared.
    """
    bits = size << 3
    m = (1 << bits) - 1
    a = st[EAX] & m
    if size == 4:
        # 32x32 -> 64 bits does not fit int64: multiply by the 16-bit halves of src.
        p_lo = a * (src & 0xFFFF)
        p_hi = a * (src >> 16)
        t = p_lo + ((p_hi & 0xFFFF) << 16)
        lo = t & MASK32
        hi = (p_hi >> 16) + (t >> 32)
    else:
        p = a * src
        lo = p & m
        hi = p >> bits
    _write_acc_pair(st, lo, hi, size)
    _mul_flags(st, lo, hi != 0, size)


@njit
def imul1(st, src, size):
    """One-operand IMUL r/m: signed AL/AX/EAX * src into AX, DX:AX or EDX:EAX.

    CF = OF = (the product differs from the sign extension of its lower half).
    Undefined in the SDM, fixed here: SF, ZF, PF from the lower half; AF cleared.
    """
    bits = size << 3
    m = (1 << bits) - 1
    p = sign_extend(st[EAX] & m, size) * sign_extend(src, size)   # |p| <= 2**62
    lo = p & m
    hi = (p >> bits) & m
    _write_acc_pair(st, lo, hi, size)
    _mul_flags(st, lo, p != sign_extend(lo, size), size)


@njit
def imul2(st, a, b, size):
    """Two- and three-operand IMUL: returns the product truncated to ``size``.

    CF = OF = (signed overflow: the truncated product sign-extended differs from
    the full product). Undefined in the SDM, fixed here: SF, ZF, PF from the
    truncated result; AF cleared.
    """
    p = sign_extend(a, size) * sign_extend(b, size)
    r = p & mask_of(size)
    _mul_flags(st, r, p != sign_extend(r, size), size)
    return r


@njit
def div1(st, src, size):
    """DIV r/m, unsigned: AX / src -> AL, AH (size 1); DX:AX -> AX, DX; EDX:EAX -> EAX, EDX.

    A zero divisor or a quotient wider than ``size`` raises #DE (vector 0) and
    changes no register. Flags are undefined in the SDM: hvsim leaves all six
    unchanged.
    """
    bits = size << 3
    m = (1 << bits) - 1
    lo, hi = _acc_pair(st, size)
    # hi >= src  <=>  quotient >= 2**bits (covers src == 0 as well)
    if hi >= src:
        raise_fault(st, VECTOR_DE, NO_ERROR_CODE)
        return
    if size == 4:
        # 64/32 division in two 16-bit steps keeps every operand below 2**48.
        t = (hi << 16) | (lo >> 16)
        q_hi = t // src
        t = ((t - q_hi * src) << 16) | (lo & 0xFFFF)
        q_lo = t // src
        q = (q_hi << 16) | q_lo
        r = t - q_lo * src
    else:
        n = (hi << bits) | lo
        q = n // src
        r = n - q * src
    _write_acc_pair(st, q & m, r, size)


@njit
def idiv1(st, src, size):
    """IDIV r/m, signed: as DIV, quotient truncated toward zero, remainder with the
    sign of the dividend.

    A zero divisor or a quotient outside the signed range of ``size`` raises #DE
    (vector 0) and changes no register. Flags are undefined in the SDM: hvsim
    leaves all six unchanged.
    """
    bits = size << 3
    m = (1 << bits) - 1
    lo, hi = _acc_pair(st, size)
    n = sign_extend(hi, size) * (1 << bits) + lo   # signed dividend, fits int64
    d = sign_extend(src, size)
    # n == -2**63 overflows any 32-bit divisor (|q| >= 2**32); test it before abs().
    if d == 0 or n == INT64_MIN:
        raise_fault(st, VECTOR_DE, NO_ERROR_CODE)
        return
    na = abs(n)
    da = abs(d)
    qa = na // da
    ra = na - qa * da
    q = -qa if (n < 0) != (d < 0) else qa
    r = -ra if n < 0 else ra
    half = 1 << (bits - 1)
    if q >= half or q < -half:
        raise_fault(st, VECTOR_DE, NO_ERROR_CODE)
        return
    _write_acc_pair(st, q & m, r & m, size)
