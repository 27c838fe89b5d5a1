"""Handlers for the ordinary (non-system) instructions of the subset (jitted).

One handler per instruction family, all with the signature
``(mem, st, tlb, pg, dc, row)``; ``dc[:, row]`` is the decoded instruction. Its operand
size ``dc[F_SIZE, row]`` is 1, 4, or 2 after a 66h prefix (hvsim/cpu/decode.py, OPC_OSZ);
a 16-bit result replaces only the low word of a register (SDM Vol. 1, 3.4.1.1). Handlers
of a fixed 32-bit size test the size after their 32-bit form; INC/DEC/PUSH/POP r16 reach
the r/m16 handlers instead (the decoder rewrites them), so 40-5F have no test at all. The run loop
has already set ``st[EIP]`` to the next instruction; a branch overwrites it, a fault
leaves it for the run loop to restore. A handler checks ``st[FAULT_PENDING]`` after
every access that can fault and then returns without touching more state.
"""
from hvsim._jit import njit
from hvsim.cpu import alu
from hvsim.cpu.decode import (F_OPC, F_REG, F_RM, F_SIZE, F_IMM, F_SEG, F_PFX, PFX_REP,
                              PFX_REPNE, PFX_OPSIZE)
from hvsim.arch.flags import CF, PF, ZF, SF, OF, DF
from hvsim.arch.layout import (MASK32, EAX, ECX, EDX, ESP, ESI, EDI, EIP, EFLAGS, FAULT_PENDING,
                              SEG_LIMIT, SREG_CS, SREG_ES, NO_RETIRE, INSN_EIP, ATTN)
from hvsim.arch.fault import raise_fault
from hvsim.cpu.operands import (get_reg, set_reg, ea, rm_read, rm_write, mem_read, mem_write,
                                push, pop, push_word, pop_word)
from hvsim.arch.vectors import GP, UD

REP_CHUNK = 4096   # iterations of a REP string instruction per step (keeps every run() bounded)


@njit(inline="always")
def cond(eflags, cc):
    """Condition code cc (the low nibble of Jcc/SETcc/CMOVcc; SDM Vol. 1, Appendix B)."""
    c = (eflags & CF) != 0
    z = (eflags & ZF) != 0
    s = (eflags & SF) != 0
    o = (eflags & OF) != 0
    p = (eflags & PF) != 0
    k = cc >> 1
    if k == 0:
        r = o
    elif k == 1:
        r = c
    elif k == 2:
        r = z
    elif k == 3:
        r = c or z
    elif k == 4:
        r = s
    elif k == 5:
        r = p
    elif k == 6:
        r = s != o
    else:
        r = z or (s != o)
    if cc & 1:
        return not r
    return r


@njit(inline="always")
def jump(st, target):
    """Near transfer: the target must lie within the CS limit (else #GP(0))."""
    target &= MASK32
    if target > st[SEG_LIMIT + SREG_CS]:
        raise_fault(st, GP, 0)
        return
    st[EIP] = target


@njit(inline="always")
def _alu_reg32(st, op, dst, a, b):
    # Group-1 ``op`` on two dwords into general register ``dst`` (CMP writes nothing):
    # the commonest ALU form gets its own copy of alu2 with the size folded to 4,
    # measured at +8-14% on the ALU benchmark loop.
    r = alu.alu2(st, op, a, b, 4)
    if op != alu.OP_CMP:
        st[dst] = r


@njit
def op_alu_eg(mem, st, tlb, pg, dc, row):       # 00 01 08 09 ... 38 39: op Eb/Ev, Gb/Gv
    size = dc[F_SIZE, row]
    op = (dc[F_OPC, row] >> 3) & 7
    rm = dc[F_RM, row]
    if size == 4 and rm >= 0:
        _alu_reg32(st, op, rm, st[rm], st[dc[F_REG, row]])
        return
    a = rm_read(mem, st, tlb, pg, dc, row, size)
    if st[FAULT_PENDING] != 0:
        return
    r = alu.alu2(st, op, a, get_reg(st, dc[F_REG, row], size), size)
    if op != alu.OP_CMP:
        rm_write(mem, st, tlb, pg, dc, row, size, r)


@njit
def op_alu_ge(mem, st, tlb, pg, dc, row):       # 02 03 ... 3A 3B: op Gb/Gv, Eb/Ev
    size = dc[F_SIZE, row]
    op = (dc[F_OPC, row] >> 3) & 7
    reg = dc[F_REG, row]
    rm = dc[F_RM, row]
    if size == 4 and rm >= 0:
        _alu_reg32(st, op, reg, st[reg], st[rm])
        return
    b = rm_read(mem, st, tlb, pg, dc, row, size)
    if st[FAULT_PENDING] != 0:
        return
    r = alu.alu2(st, op, get_reg(st, reg, size), b, size)
    if op != alu.OP_CMP:
        set_reg(st, reg, size, r)


@njit
def op_alu_ai(mem, st, tlb, pg, dc, row):       # 04 05 ... 3C 3D: op AL/EAX, imm
    size = dc[F_SIZE, row]
    op = (dc[F_OPC, row] >> 3) & 7
    r = alu.alu2(st, op, get_reg(st, EAX, size), dc[F_IMM, row] & alu.mask_of(size), size)
    if op != alu.OP_CMP:
        set_reg(st, EAX, size, r)


@njit
def op_grp1(mem, st, tlb, pg, dc, row):         # 80 81 83 /digit: op Eb/Ev, imm
    size = dc[F_SIZE, row]
    op = dc[F_REG, row]
    rm = dc[F_RM, row]
    if size == 4 and rm >= 0:
        _alu_reg32(st, op, rm, st[rm], dc[F_IMM, row] & MASK32)
        return
    a = rm_read(mem, st, tlb, pg, dc, row, size)
    if st[FAULT_PENDING] != 0:
        return
    r = alu.alu2(st, op, a, dc[F_IMM, row] & alu.mask_of(size), size)
    if op != alu.OP_CMP:
        rm_write(mem, st, tlb, pg, dc, row, size, r)


@njit
def op_test_eg(mem, st, tlb, pg, dc, row):      # 84 85
    size = dc[F_SIZE, row]
    a = rm_read(mem, st, tlb, pg, dc, row, size)
    if st[FAULT_PENDING] != 0:
        return
    alu.test_flags(st, a, get_reg(st, dc[F_REG, row], size), size)


@njit
def op_test_ai(mem, st, tlb, pg, dc, row):      # A8 A9
    size = dc[F_SIZE, row]
    alu.test_flags(st, get_reg(st, EAX, size), dc[F_IMM, row], size)


@njit
def op_xchg_eg(mem, st, tlb, pg, dc, row):      # 86 87
    size = dc[F_SIZE, row]
    a = rm_read(mem, st, tlb, pg, dc, row, size)
    if st[FAULT_PENDING] != 0:
        return
    reg = dc[F_REG, row]
    rm_write(mem, st, tlb, pg, dc, row, size, get_reg(st, reg, size))
    if st[FAULT_PENDING] != 0:
        return
    set_reg(st, reg, size, a)


@njit
def op_xchg_ar(mem, st, tlb, pg, dc, row):      # 91-97: XCHG EAX, r32 (66: XCHG AX, r16)
    r = dc[F_REG, row]
    size = dc[F_SIZE, row]
    t = get_reg(st, r, size)
    set_reg(st, r, size, get_reg(st, EAX, size))
    set_reg(st, EAX, size, t)


@njit
def op_mov_eg(mem, st, tlb, pg, dc, row):       # 88 89: MOV Eb/Ev, Gb/Gv
    size = dc[F_SIZE, row]
    rm_write(mem, st, tlb, pg, dc, row, size, get_reg(st, dc[F_REG, row], size))


@njit
def op_mov_ge(mem, st, tlb, pg, dc, row):       # 8A 8B: MOV Gb/Gv, Eb/Ev
    size = dc[F_SIZE, row]
    v = rm_read(mem, st, tlb, pg, dc, row, size)
    if st[FAULT_PENDING] != 0:
        return
    set_reg(st, dc[F_REG, row], size, v)


@njit
def op_mov_ri(mem, st, tlb, pg, dc, row):       # B0-B7 ib, B8-BF id
    set_reg(st, dc[F_REG, row], dc[F_SIZE, row], dc[F_IMM, row])


@njit
def op_mov_ei(mem, st, tlb, pg, dc, row):       # C6 /0 ib, C7 /0 id
    if dc[F_REG, row] != 0:
        raise_fault(st, UD, -1)
        return
    rm_write(mem, st, tlb, pg, dc, row, dc[F_SIZE, row], dc[F_IMM, row])


@njit
def op_mov_moffs(mem, st, tlb, pg, dc, row):    # A0 A1: load AL/EAX ; A2 A3: store
    size = dc[F_SIZE, row]
    seg = dc[F_SEG, row]
    off = dc[F_IMM, row]
    if dc[F_OPC, row] < 0xA2:
        v = mem_read(mem, st, tlb, pg, seg, off, size)
        if st[FAULT_PENDING] == 0:
            set_reg(st, EAX, size, v)
    else:
        mem_write(mem, st, tlb, pg, seg, off, size, get_reg(st, EAX, size))


@njit
def op_movzx(mem, st, tlb, pg, dc, row):        # 0F B6 B7 (MOVZX), 0F BE BF (MOVSX)
    size = dc[F_SIZE, row]
    v = rm_read(mem, st, tlb, pg, dc, row, size)
    if st[FAULT_PENDING] != 0:
        return
    if dc[F_OPC, row] >= 0x1BE:
        v = alu.sign_extend(v, size) & MASK32
    if (dc[F_PFX, row] & PFX_OPSIZE) != 0:     # 66: MOVZX/MOVSX r16 (destination size 16)
        set_reg(st, dc[F_REG, row], 2, v)
    else:
        st[dc[F_REG, row]] = v


@njit
def op_lea(mem, st, tlb, pg, dc, row):          # 8D: LEA r32, m (66: LEA r16, m)
    if dc[F_RM, row] >= 0:
        raise_fault(st, UD, -1)
        return
    # a 16-bit operand size keeps the low word of the 32-bit address (SDM Vol. 2A, LEA, Table 3-54)
    set_reg(st, dc[F_REG, row], dc[F_SIZE, row], ea(st, dc, row))


@njit
def op_push_r(mem, st, tlb, pg, dc, row):       # 50+r (PUSH ESP: the old ESP; 66 50+r: FF /6)
    push(mem, st, tlb, pg, st[dc[F_REG, row]])


@njit
def op_pop_r(mem, st, tlb, pg, dc, row):        # 58+r (POP ESP: ESP = value read; 66 58+r: 8F /0)
    v = pop(mem, st, tlb, pg)
    if st[FAULT_PENDING] != 0:
        return
    st[ESP] = (st[ESP] + 4) & MASK32
    st[dc[F_REG, row]] = v


@njit
def op_push_i(mem, st, tlb, pg, dc, row):       # 68 id, 6A ib (sign-extended)
    if dc[F_SIZE, row] == 4:
        push(mem, st, tlb, pg, dc[F_IMM, row])
    else:                                       # 66 68 iw, 66 6A ib: a word is pushed
        push_word(mem, st, tlb, pg, dc[F_IMM, row])


@njit
def op_pop_e(mem, st, tlb, pg, dc, row):        # 8F /0: POP r/m32 (66: POP r/m16)
    if dc[F_REG, row] != 0:
        raise_fault(st, UD, -1)
        return
    size = dc[F_SIZE, row]
    if size == 4:
        v = pop(mem, st, tlb, pg)
    else:
        v = pop_word(mem, st, tlb, pg)
    if st[FAULT_PENDING] != 0:
        return
    # SDM POP: an ESP-based destination address is computed after ESP is incremented
    old = st[ESP]
    st[ESP] = (old + size) & MASK32
    rm_write(mem, st, tlb, pg, dc, row, size, v)
    if st[FAULT_PENDING] != 0:
        st[ESP] = old


@njit
def op_inc_r(mem, st, tlb, pg, dc, row):        # 40+r (66 40+r is decoded as 66 FF /0)
    r = dc[F_REG, row]
    st[r] = alu.inc(st, st[r], 4)


@njit
def op_dec_r(mem, st, tlb, pg, dc, row):        # 48+r (66 48+r is decoded as 66 FF /1)
    r = dc[F_REG, row]
    st[r] = alu.dec(st, st[r], 4)


@njit
def op_grp4(mem, st, tlb, pg, dc, row):         # FE /0 INC Eb, /1 DEC Eb
    d = dc[F_REG, row]
    if d > 1:
        raise_fault(st, UD, -1)
        return
    a = rm_read(mem, st, tlb, pg, dc, row, 1)
    if st[FAULT_PENDING] != 0:
        return
    # flags are computed on a copy so that a faulting write leaves EFLAGS unchanged
    saved = st[EFLAGS]
    r = alu.inc(st, a, 1) if d == 0 else alu.dec(st, a, 1)
    rm_write(mem, st, tlb, pg, dc, row, 1, r)
    if st[FAULT_PENDING] != 0:
        st[EFLAGS] = saved


@njit
def op_grp3(mem, st, tlb, pg, dc, row):         # F6 F7: TEST NOT NEG MUL IMUL DIV IDIV
    size = dc[F_SIZE, row]
    d = dc[F_REG, row]
    a = rm_read(mem, st, tlb, pg, dc, row, size)
    if st[FAULT_PENDING] != 0:
        return
    if d == 0 or d == 1:                        # /1 is an undocumented alias of TEST
        alu.test_flags(st, a, dc[F_IMM, row], size)
    elif d == 2:
        rm_write(mem, st, tlb, pg, dc, row, size, ~a & alu.mask_of(size))
    elif d == 3:
        saved = st[EFLAGS]
        r = alu.neg(st, a, size)
        rm_write(mem, st, tlb, pg, dc, row, size, r)
        if st[FAULT_PENDING] != 0:
            st[EFLAGS] = saved
    elif d == 4:
        alu.mul1(st, a, size)
    elif d == 5:
        alu.imul1(st, a, size)
    elif d == 6:
        alu.div1(st, a, size)
    else:
        alu.idiv1(st, a, size)


@njit
def op_imul2(mem, st, tlb, pg, dc, row):        # 0F AF: IMUL r32, r/m32 (66: r16, r/m16)
    size = dc[F_SIZE, row]
    b = rm_read(mem, st, tlb, pg, dc, row, size)
    if st[FAULT_PENDING] != 0:
        return
    reg = dc[F_REG, row]
    set_reg(st, reg, size, alu.imul2(st, get_reg(st, reg, size), b, size))


@njit
def op_imul3(mem, st, tlb, pg, dc, row):        # 69 id, 6B ib: IMUL r32, r/m32, imm (66: iw, ib)
    size = dc[F_SIZE, row]
    b = rm_read(mem, st, tlb, pg, dc, row, size)
    if st[FAULT_PENDING] != 0:
        return
    imm = dc[F_IMM, row] & alu.mask_of(size)
    set_reg(st, dc[F_REG, row], size, alu.imul2(st, b, imm, size))


@njit
def op_grp2(mem, st, tlb, pg, dc, row):         # C0 C1 ib, D0 D1 (by 1), D2 D3 (by CL)
    size = dc[F_SIZE, row]
    opc = dc[F_OPC, row]
    a = rm_read(mem, st, tlb, pg, dc, row, size)
    if st[FAULT_PENDING] != 0:
        return
    if opc <= 0xC1:
        count = dc[F_IMM, row]
    elif opc <= 0xD1:
        count = 1
    else:
        count = st[ECX] & 0xFF
    saved = st[EFLAGS]
    r = alu.shift(st, dc[F_REG, row], a, count, size)
    rm_write(mem, st, tlb, pg, dc, row, size, r)
    if st[FAULT_PENDING] != 0:
        st[EFLAGS] = saved


@njit
def op_cdq(mem, st, tlb, pg, dc, row):          # 99 CDQ: EDX = sign of EAX; 66 99 CWD: DX
    if dc[F_SIZE, row] == 4:
        st[EDX] = MASK32 if (st[EAX] & 0x80000000) != 0 else 0
    else:
        set_reg(st, EDX, 2, 0xFFFF if (st[EAX] & 0x8000) != 0 else 0)


@njit
def op_setcc(mem, st, tlb, pg, dc, row):        # 0F 90-9F: SETcc r/m8
    v = 1 if cond(st[EFLAGS], dc[F_OPC, row] & 0xF) else 0
    rm_write(mem, st, tlb, pg, dc, row, 1, v)


@njit
def op_cmov(mem, st, tlb, pg, dc, row):         # 0F 40-4F: CMOVcc r32, r/m32 (66: r16, r/m16)
    size = dc[F_SIZE, row]
    v = rm_read(mem, st, tlb, pg, dc, row, size)   # the source is read whatever the condition
    if st[FAULT_PENDING] != 0:
        return
    if cond(st[EFLAGS], dc[F_OPC, row] & 0xF):
        set_reg(st, dc[F_REG, row], size, v)


@njit
def op_jcc(mem, st, tlb, pg, dc, row):          # 70-7F rel8, 0F 80-8F rel32
    if cond(st[EFLAGS], dc[F_OPC, row] & 0xF):
        jump(st, st[EIP] + dc[F_IMM, row])


@njit
def op_jmp_rel(mem, st, tlb, pg, dc, row):      # E9 rel32, EB rel8
    jump(st, st[EIP] + dc[F_IMM, row])


@njit
def op_call_rel(mem, st, tlb, pg, dc, row):     # E8 rel32
    ret = st[EIP]
    target = (ret + dc[F_IMM, row]) & MASK32
    if target > st[SEG_LIMIT + SREG_CS]:
        raise_fault(st, GP, 0)
        return
    push(mem, st, tlb, pg, ret)
    if st[FAULT_PENDING] == 0:
        st[EIP] = target


@njit
def op_ret(mem, st, tlb, pg, dc, row):          # C3, C2 iw
    v = pop(mem, st, tlb, pg)
    if st[FAULT_PENDING] != 0:
        return
    jump(st, v)
    if st[FAULT_PENDING] != 0:
        return
    st[ESP] = (st[ESP] + 4 + dc[F_IMM, row]) & MASK32


@njit
def op_loop(mem, st, tlb, pg, dc, row):         # E2 rel8: ECX -= 1; jump if ECX != 0 (no flags)
    c = (st[ECX] - 1) & MASK32
    if c != 0:
        jump(st, st[EIP] + dc[F_IMM, row])
        if st[FAULT_PENDING] != 0:
            return
    st[ECX] = c


@njit
def op_jecxz(mem, st, tlb, pg, dc, row):        # E3 rel8
    if st[ECX] == 0:
        jump(st, st[EIP] + dc[F_IMM, row])


@njit
def op_flagop(mem, st, tlb, pg, dc, row):       # F5 CMC, F8 CLC, F9 STC, FC CLD, FD STD
    opc = dc[F_OPC, row]
    f = st[EFLAGS]
    if opc == 0xF5:
        f ^= CF
    elif opc == 0xF8:
        f &= ~CF
    elif opc == 0xF9:
        f |= CF
    elif opc == 0xFC:
        f &= ~DF
    else:
        f |= DF
    st[EFLAGS] = f


@njit
def op_string(mem, st, tlb, pg, dc, row):       # A4 MOVSB, A5 MOVSD/W, AA STOSB, AB STOSD/W (REP)
    """One string instruction, or up to REP_CHUNK iterations of its REP form.

    ECX/ESI/EDI are committed after each iteration, so a fault in the middle leaves the
    registers where the SDM says an interrupted REP leaves them; if iterations remain
    after a chunk, EIP stays on the instruction and the next step continues it.
    """
    size = dc[F_SIZE, row]
    opc = dc[F_OPC, row]
    movs = opc <= 0xA5
    step = -size if (st[EFLAGS] & DF) != 0 else size
    rep = (dc[F_PFX, row] & (PFX_REP | PFX_REPNE)) != 0
    seg = dc[F_SEG, row]
    n = 0
    while True:
        if rep:
            if st[ECX] == 0:
                break
            if n == REP_CHUNK:
                st[EIP] = st[INSN_EIP]          # not finished: resume here next step
                st[NO_RETIRE] = 1               # ...and this step does not retire it
                st[ATTN] = 1
                return
        if movs:
            v = mem_read(mem, st, tlb, pg, seg, st[ESI], size)
            if st[FAULT_PENDING] != 0:
                return
        else:
            v = get_reg(st, EAX, size)
        mem_write(mem, st, tlb, pg, SREG_ES, st[EDI], size, v)
        if st[FAULT_PENDING] != 0:
            return
        if movs:
            st[ESI] = (st[ESI] + step) & MASK32
        st[EDI] = (st[EDI] + step) & MASK32
        if not rep:
            break
        st[ECX] = (st[ECX] - 1) & MASK32
        n += 1
