"""Naive, obviously-correct reference of the IA-32 integer ALU (plain Python, not jitted).

The oracle for hvsim/cpu/alu.py. Written from the Intel SDM Vol. 2 instruction
pages (Operation pseudocode and "Flags Affected"), independently of the jitted
code: values are plain Python ints, signed results are computed with signed
numbers and compared against the signed range, shifts and rotates run the SDM's
one-bit-at-a-time WHILE loops, and each flag is derived from its definition.

State is a dict ``{"eflags": int, "eax": int, "edx": int, "fault": None | int}``
(see :func:`new_state`); the functions have the same names and arguments as the
kernels with this dict in place of ``st``. Where the SDM leaves a flag
*undefined* this reference leaves it unchanged: the tests mask those flags.
"""
CF, PF, AF, ZF, SF, OF = 0x001, 0x004, 0x010, 0x040, 0x080, 0x800
ARITH = CF | PF | AF | ZF | SF | OF


def new_state(eflags=0x2, eax=0, edx=0):
    return {"eflags": eflags, "eax": eax, "edx": edx, "fault": None}


def mask_of(size):
    return 2 ** (8 * size) - 1


def sign_extend(value, size):
    bits = 8 * size
    value &= mask_of(size)
    return value - 2 ** bits if value >= 2 ** (bits - 1) else value


def parity(x):
    return 1 if bin(x & 0xFF).count("1") % 2 == 0 else 0


def _msb(x, size):
    return (x >> (8 * size - 1)) & 1


def _set(s, **flags):
    """Set named flags (CF=True, ...) in s['eflags']; others untouched."""
    names = {"CF": CF, "PF": PF, "AF": AF, "ZF": ZF, "SF": SF, "OF": OF}
    for name, val in flags.items():
        bit = names[name]
        s["eflags"] = (s["eflags"] | bit) if val else (s["eflags"] & ~bit)


def _result_flags(s, r, size):
    _set(s, SF=_msb(r, size) == 1, ZF=r == 0, PF=parity(r) == 1)


def _cf(s):
    return 1 if s["eflags"] & CF else 0


def _add(s, a, b, carry, size):
    m = mask_of(size)
    lo, hi = -2 ** (8 * size - 1), 2 ** (8 * size - 1) - 1
    u = a + b + carry
    sres = sign_extend(a, size) + sign_extend(b, size) + carry
    r = u & m
    _set(s, CF=u > m, OF=not (lo <= sres <= hi), AF=(a & 0xF) + (b & 0xF) + carry > 0xF)
    _result_flags(s, r, size)
    return r


def _sub(s, a, b, borrow, size):
    m = mask_of(size)
    lo, hi = -2 ** (8 * size - 1), 2 ** (8 * size - 1) - 1
    sres = sign_extend(a, size) - sign_extend(b, size) - borrow
    r = (a - b - borrow) & m
    _set(s, CF=a < b + borrow, OF=not (lo <= sres <= hi), AF=(a & 0xF) < (b & 0xF) + borrow)
    _result_flags(s, r, size)
    return r


def _logic(s, r, size):
    _set(s, CF=False, OF=False)          # AF undefined: unchanged here
    _result_flags(s, r, size)
    return r


def alu2(s, op, a, b, size):
    if op == 0:
        return _add(s, a, b, 0, size)
    if op == 1:
        return _logic(s, a | b, size)
    if op == 2:
        return _add(s, a, b, _cf(s), size)
    if op == 3:
        return _sub(s, a, b, _cf(s), size)
    if op == 4:
        return _logic(s, a & b, size)
    if op == 5 or op == 7:
        return _sub(s, a, b, 0, size)
    if op == 6:
        return _logic(s, a ^ b, size)
    raise ValueError(op)


def test_flags(s, a, b, size):
    _logic(s, a & b, size)


test_flags.__test__ = False   # not a pytest test


def inc(s, a, size):
    cf = _cf(s)
    r = _add(s, a, 1, 0, size)
    _set(s, CF=cf)
    return r


def dec(s, a, size):
    cf = _cf(s)
    r = _sub(s, a, 1, 0, size)
    _set(s, CF=cf)
    return r


def neg(s, a, size):
    r = _sub(s, 0, a, 0, size)
    _set(s, CF=a != 0)
    return r


def shift(s, op, a, count, size):
    """SDM "SAL/SAR/SHL/SHR" and "RCL/RCR/ROL/ROR" Operation sections, literally."""
    bits = 8 * size
    m = mask_of(size)
    masked = count & 0x1F
    if masked == 0:
        return a
    dest = a
    cf = _cf(s)
    if op in (0, 1):                       # ROL, ROR: tempCOUNT = masked MOD SIZE
        t = masked % bits
        for _ in range(t):
            if op == 0:
                top = _msb(dest, size)
                dest = ((dest << 1) + top) & m
            else:
                low = dest & 1
                dest = (dest >> 1) + (low << (bits - 1))
        if op == 0:
            cf = dest & 1
            _set(s, CF=cf)
            if masked == 1:
                _set(s, OF=_msb(dest, size) ^ cf)
        else:
            cf = _msb(dest, size)
            _set(s, CF=cf)
            if masked == 1:
                _set(s, OF=_msb(dest, size) ^ ((dest >> (bits - 2)) & 1))
        return dest
    if op in (2, 3):                       # RCL, RCR: tempCOUNT = masked MOD (SIZE+1)
        t = masked % (bits + 1) if size < 4 else masked
        if op == 3 and masked == 1:
            _set(s, OF=_msb(dest, size) ^ cf)
        for _ in range(t):
            if op == 2:
                top = _msb(dest, size)
                dest = ((dest << 1) + cf) & m
                cf = top
            else:
                low = dest & 1
                dest = (dest >> 1) + (cf << (bits - 1))
                cf = low
        _set(s, CF=cf)
        if op == 2 and masked == 1:
            _set(s, OF=_msb(dest, size) ^ cf)
        return dest
    # SAL/SHL (4, 6), SHR (5), SAR (7)
    for _ in range(masked):
        if op in (4, 6):
            cf = _msb(dest, size)
            dest = (dest * 2) & m
        elif op == 5:
            cf = dest & 1
            dest = dest // 2
        else:
            cf = dest & 1
            dest = (sign_extend(dest, size) // 2) & m   # signed divide, rounding toward -inf
    _set(s, CF=cf)
    if masked == 1:
        if op in (4, 6):
            _set(s, OF=_msb(dest, size) ^ cf)
        elif op == 5:
            _set(s, OF=_msb(a, size))
        else:
            _set(s, OF=False)
    _result_flags(s, dest, size)           # AF undefined: unchanged here
    return dest


def _acc(s, size):
    """(low half, high half) of the implicit double-width operand."""
    if size == 1:
        return s["eax"] & 0xFF, (s["eax"] >> 8) & 0xFF
    if size == 2:
        return s["eax"] & 0xFFFF, s["edx"] & 0xFFFF
    return s["eax"], s["edx"]


def _store(s, lo, hi, size):
    if size == 1:
        s["eax"] = (s["eax"] & ~0xFFFF) | (hi << 8) | lo
    elif size == 2:
        s["eax"] = (s["eax"] & ~0xFFFF) | lo
        s["edx"] = (s["edx"] & ~0xFFFF) | hi
    else:
        s["eax"], s["edx"] = lo, hi


def mul1(s, src, size):
    bits = 8 * size
    product = _acc(s, size)[0] * src
    lo, hi = product % 2 ** bits, product // 2 ** bits
    _store(s, lo, hi, size)
    _set(s, CF=hi != 0, OF=hi != 0)        # SF, ZF, AF, PF undefined: unchanged


def imul1(s, src, size):
    bits = 8 * size
    product = sign_extend(_acc(s, size)[0], size) * sign_extend(src, size)
    lo, hi = product % 2 ** bits, (product // 2 ** bits) % 2 ** bits
    _store(s, lo, hi, size)
    fits = -2 ** (bits - 1) <= product < 2 ** (bits - 1)
    _set(s, CF=not fits, OF=not fits)


def imul2(s, a, b, size):
    bits = 8 * size
    product = sign_extend(a, size) * sign_extend(b, size)
    fits = -2 ** (bits - 1) <= product < 2 ** (bits - 1)
    _set(s, CF=not fits, OF=not fits)
    return product % 2 ** bits


def div1(s, src, size):
    bits = 8 * size
    lo, hi = _acc(s, size)
    dividend = hi * 2 ** bits + lo
    if src == 0 or dividend // src >= 2 ** bits:
        s["fault"] = 0                     # #DE; registers and flags unchanged
        return
    _store(s, dividend // src, dividend % src, size)


def idiv1(s, src, size):
    bits = 8 * size
    lo, hi = _acc(s, size)
    dividend = sign_extend(hi * 2 ** bits + lo, 2 * size)
    divisor = sign_extend(src, size)
    if divisor == 0:
        s["fault"] = 0
        return
    q = abs(dividend) // abs(divisor)      # truncate toward zero
    if (dividend < 0) != (divisor < 0):
        q = -q
    r = dividend - q * divisor             # sign of the dividend
    if not -2 ** (bits - 1) <= q < 2 ** (bits - 1):
        s["fault"] = 0
        return
    _store(s, q % 2 ** bits, r % 2 ** bits, size)
