"""The block translator: decoded guest instructions -> LLVM IR -> host code (Python).

The interpreter (hvsim/cpu/run.py) pays for every guest instruction a fetch through
the MMU, a decode-cache probe, a dispatch on the handler family and a pass through the
run loop. For a hot stretch of ordinary code this module emits one host function
instead, in the way of QEMU's TCG: each instruction becomes a few host instructions
on the state array, with no fetch, probe or dispatch between them, and a block that
ends by jumping back to its own start loops inside the host function. LLVM's code
generator compiles it for this CPU (or for NUMBA_CPU_NAME, as numba does).

Translated (32-bit operand size, no prefix but a DS/SS/ES segment override):
ADD/OR/ADC/SBB/AND/SUB/XOR/CMP register-register, register-immediate and
register-memory; TEST register-register; INC/DEC r32; MOV register-register,
register-immediate, load and store; LEA; NOP; PUSH/POP r32; and, as the last
instruction, Jcc, JMP rel, CALL rel, RET and LOOP. A block stops before the first
other instruction, so the interpreter runs it -- among them every 16-bit (66h) form.

Exactness. The code keeps what the interpreter would: registers, EFLAGS (the same
formulas as hvsim/cpu/alu.py: SDM Vol. 2, "Flags Affected" of each instruction), EIP,
INSN_EIP/INSN_LEN of the last instruction, and the counters -- a decode-cache hit
and, with paging on, a TLB hit per instruction fetch; a TLB hit and the LRU stamp per
data access. Every check an instruction needs comes before any of its effects, and a
check that fails ends the block *before* that instruction, which the interpreter then
runs (and faults, walks the page tables, or invalidates decoded code, as the case
may be):

* memory operands need ``st[FLAT]`` (flat, writable DS/ES/SS, no alignment checking:
  hvsim/rings/segments.py update_flat); with paging on, the access must
  stay in one page and hit the TLB with the rights it needs (a write needs D = 1, as
  in hvsim/mmu/paging.py; a read must not be one that EPT forbids); the physical
  bytes must lie inside memory;
* a write must not touch a frame holding decoded code (``PG_CODE``);
* a branch target must lie within the CS limit;
* with paging on and no TLB model, every fetch walks: no block runs.

The code is checked against the interpreter by tests/test_blocks.py, which runs the
same programs with and without blocks and compares the whole machine state.
"""
import threading
import warnings

from llvmlite import ir

from hvsim.cpu import alu
from hvsim.cpu import decode as D
from hvsim.cpu.blocks import F_BLK, BLOCK_NEVER
from hvsim.arch.counters import C_DC_HIT, C_TLB_HIT, C_TLB_MISS
from hvsim.arch.cr import CR0_PG, CR0_WP
from hvsim.arch.flags import CF, PF, AF, ZF, SF, OF, ARITH
from hvsim.arch.layout import (EAX, ECX, ESP, EIP, EFLAGS, CR0, CPL, SEG_LIMIT, SREG_CS, SREG_DS,
                              SREG_SS, SREG_ES, FLAT, INSN_EIP, INSN_LEN, COUNTERS, MASK32,
                              ZERO, CFG_MEM_SIZE, CFG_TLB_SETS, CFG_TLB_WAYS, CFG_TLB_ENABLED,
                              PG_CODE, TLB_FIELDS, DC_ENTRIES, VPID)
from hvsim.arch.pte import PTE_RW, PTE_US, PTE_D
from hvsim.mmu.tlb import TLB_TAG, TLB_FRAME, TLB_FLAGS, TLB_LRU, TLBF_EPT_NR, TAG_VPID_SHIFT

MAX_INSNS = 64        # instructions per block at most
PAGE = 4096

I1, I8, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
_SIG = ir.FunctionType(I64, [I64.as_pointer(), I8.as_pointer(), I64.as_pointer(),
                             I64.as_pointer(), I64])

# what each translated instruction is
K_ALU_RR, K_ALU_RI, K_ALU_RM, K_TEST_RR, K_INC, K_DEC, K_MOV_RR, K_MOV_RI, K_LOAD, K_STORE, \
    K_LEA, K_NOP, K_PUSH, K_POP, K_JCC, K_JMP, K_CALL, K_RET, K_LOOP = range(19)
_ENDS = {K_JCC, K_JMP, K_CALL, K_RET, K_LOOP}
_MEMORY = {K_ALU_RM, K_LOAD, K_STORE, K_PUSH, K_POP, K_CALL, K_RET}
_FLAT_SEGS = (SREG_DS, SREG_SS, SREG_ES)
_FIELDS = (D.F_OP, D.F_LEN, D.F_OPC, D.F_REG, D.F_RM, D.F_SIZE, D.F_BASE, D.F_INDEX,
           D.F_SCALE, D.F_DISP, D.F_IMM, D.F_SEG, D.F_PFX)


class Insn:
    """One decoded instruction as the translator sees it (fields from a dc row)."""
    __slots__ = ("kind", "off", "key", "op", "len", "opc", "reg", "rm", "size", "base", "index",
                 "scale", "disp", "imm", "seg", "pfx")

    def __init__(self, off, values):
        self.off = off
        self.key = tuple(values)          # what the compiled code depends on (offsets: the lengths)
        (self.op, self.len, self.opc, self.reg, self.rm, self.size, self.base, self.index,
         self.scale, self.disp, self.imm, self.seg, self.pfx) = values
        self.kind = _classify(self)


# op -> kind: whatever the operand size; at 32 bits; ModRM forms (register, memory)
_ANY_SIZE = {D.OP_JCC: K_JCC, D.OP_JMP_REL: K_JMP, D.OP_CALL_REL: K_CALL, D.OP_LOOP: K_LOOP,
             D.OP_RET: K_RET, D.OP_NOP: K_NOP, D.OP_PUSH_R: K_PUSH, D.OP_POP_R: K_POP}
_SIZE4 = {D.OP_INC_R: K_INC, D.OP_DEC_R: K_DEC, D.OP_MOV_RI: K_MOV_RI, D.OP_ALU_AI: K_ALU_RI}
_MODRM = {D.OP_ALU_EG: (K_ALU_RR, None), D.OP_ALU_GE: (K_ALU_RR, K_ALU_RM),
          D.OP_GRP1: (K_ALU_RI, None), D.OP_TEST_EG: (K_TEST_RR, None),
          D.OP_MOV_EG: (K_MOV_RR, K_STORE), D.OP_MOV_GE: (K_MOV_RR, K_LOAD),
          D.OP_LEA: (None, K_LEA)}


def _classify(i):
    """The K_* kind of a decoded instruction, or None if blocks leave it to the interpreter."""
    if i.pfx & ~D.PFX_SEG:                    # REP/REPNE/66/LOCK/67: not here
        return None
    if i.op in _ANY_SIZE:
        return _ANY_SIZE[i.op]
    if i.size != 4:
        return None
    if i.op in _SIZE4:
        return _SIZE4[i.op]
    if i.op not in _MODRM:
        return None
    reg_form, mem_form = _MODRM[i.op]
    if i.rm >= 0:
        return reg_form
    if mem_form == K_LEA or i.seg in _FLAT_SEGS:  # LEA computes an offset, reads nothing
        return mem_form
    return None


def collect(dc, row):
    """The instructions of the block entered at decode-cache ``row`` (maybe empty).

    Follows the rows of the same frame and generation as the interpreter would fetch
    them, and stops at a control transfer, an instruction not translated, a row not
    (or no longer) decoded, the end of the frame, or MAX_INSNS.
    """
    pa0 = int(dc[D.F_TAG, row])
    gen = int(dc[D.F_GEN, row])
    out, off = [], 0
    while len(out) < MAX_INSNS:
        pa = pa0 + off
        if pa >> 12 != pa0 >> 12:
            break
        r = pa & (DC_ENTRIES - 1)
        if int(dc[D.F_TAG, r]) != pa or int(dc[D.F_GEN, r]) != gen:
            break
        i = Insn(off, [int(v) for v in dc[_FIELDS, r]])
        if i.kind is None:
            break
        out.append(i)
        off += i.len
        if i.kind in _ENDS:
            break
    return out


# ------------------------------------------------------------------------------ codegen
def _c(v):
    return ir.Constant(I64, v)


class _Emitter:
    """Emits one block function.

    The code reads and writes the state array as the interpreter does, one slot at a
    time; the four arrays are declared distinct (``noalias``), so a store to guest
    memory does not make the code generator reload the registers.
    """

    def __init__(self, fn, insns):
        self.fn, self.insns = fn, insns
        self.st, self.mem, self.tlb, self.pg, self.limit = fn.args
        self.n = len(insns)
        self.last = insns[-1]
        self.b = ir.IRBuilder(fn.append_basic_block("entry"))
        self.ctpop = fn.module.declare_intrinsic("llvm.ctpop", [I64])

    # -- small helpers
    def block(self, name):
        return self.fn.append_basic_block(name)

    def slot(self, base, i):
        return self.b.gep(base, [i if isinstance(i, ir.Value) else _c(i)])

    def ld(self, i):
        return self.b.load(self.slot(self.st, i))

    def put(self, i, v):
        self.b.store(v, self.slot(self.st, i))

    def add_to(self, i, v):
        self.put(i, self.b.add(self.ld(i), v))

    def reg(self, r):
        return _c(0) if r == ZERO else self.ld(r)

    def m32(self, v):
        return self.b.and_(v, _c(MASK32))

    def is_set(self, v, bit):
        return self.b.icmp_signed("!=", self.b.and_(v, _c(bit)), _c(0))

    def szp(self, r):
        """SF, ZF, PF of a 32-bit result (alu._szp)."""
        b = self.b
        sf = b.and_(b.lshr(r, _c(31 - 7)), _c(SF))                    # bit 31 -> bit 7
        zf = b.select(b.icmp_signed("==", r, _c(0)), _c(ZF), _c(0))
        ones = b.call(self.ctpop, [b.and_(r, _c(0xFF))])
        pf = b.shl(b.xor(b.and_(ones, _c(1)), _c(1)), _c(2))        # even count -> bit 2
        return b.or_(b.or_(sf, zf), pf)

    def ea(self, i):
        b = self.b
        v = b.add(self.reg(i.base), b.shl(self.reg(i.index), _c(i.scale)))
        return self.m32(b.add(v, _c(i.disp)))

    def eip_at(self, k):
        off = self.insns[k].off if k < self.n else self.last.off + self.last.len
        return self.m32(self.b.add(self.eip0, _c(off)))

    # -- arithmetic: alu.alu2 / alu.inc / alu.dec / alu.test_flags at size 4
    def set_flags(self, bits, keep=~ARITH):
        self.put(EFLAGS, self.b.or_(self.b.and_(self.ld(EFLAGS), _c(keep)), bits))

    def alu2(self, op, a, bv):
        b = self.b
        if op in (alu.OP_AND, alu.OP_OR, alu.OP_XOR):
            r = {alu.OP_AND: b.and_, alu.OP_OR: b.or_, alu.OP_XOR: b.xor}[op](a, bv)
            self.set_flags(self.szp(r))
            return r
        if op in (alu.OP_ADD, alu.OP_ADC):
            full = b.add(a, bv)
            if op == alu.OP_ADC:
                full = b.add(full, b.and_(self.ld(EFLAGS), _c(CF)))
            ovf = b.and_(b.xor(a, full), b.xor(bv, full))
        else:
            full = b.sub(a, bv)
            if op == alu.OP_SBB:
                full = b.sub(full, b.and_(self.ld(EFLAGS), _c(CF)))
            ovf = b.and_(b.xor(a, bv), b.xor(a, full))
        r = self.m32(full)
        cf = b.and_(b.ashr(full, _c(32)), _c(CF))                   # carry/borrow out of bit 31
        of = b.and_(b.ashr(ovf, _c(31 - 11)), _c(OF))               # bit 31 -> bit 11
        af = b.and_(b.xor(b.xor(a, bv), full), _c(AF))
        self.set_flags(b.or_(b.or_(cf, of), b.or_(af, self.szp(r))))
        return r

    def incdec(self, a, up):
        b = self.b
        full = b.add(a, _c(1)) if up else b.sub(a, _c(1))
        r = self.m32(full)
        ovf = b.and_(b.not_(a), full) if up else b.and_(a, b.not_(full))
        of = b.and_(b.ashr(ovf, _c(31 - 11)), _c(OF))
        af = b.and_(b.xor(b.xor(a, _c(1)), full), _c(AF))
        self.set_flags(b.or_(b.or_(of, af), self.szp(r)), keep=~ARITH | CF)
        return r

    def cond(self, cc):
        """Condition code ``cc`` of EFLAGS (execute.cond; SDM Vol. 1, Appendix B)."""
        b = self.b
        fl = self.ld(EFLAGS)
        k = cc >> 1
        if k == 0:
            r = self.is_set(fl, OF)
        elif k == 1:
            r = self.is_set(fl, CF)
        elif k == 2:
            r = self.is_set(fl, ZF)
        elif k == 3:
            r = self.is_set(fl, CF | ZF)
        elif k == 4:
            r = self.is_set(fl, SF)
        elif k == 5:
            r = self.is_set(fl, PF)
        elif k == 6:
            r = b.xor(self.is_set(fl, SF), self.is_set(fl, OF))
        else:
            r = b.or_(self.is_set(fl, ZF), b.xor(self.is_set(fl, SF), self.is_set(fl, OF)))
        return b.not_(r) if cc & 1 else r

    # -- leaving
    def leave(self, next_eip, last, cond=None, stay=None):
        """Leave at ``next_eip`` (if ``cond``; else go on at ``stay``). ``last`` is the
        last instruction retired (None: only before instruction 0, where, once the
        block has looped, it is the block's last one)."""
        li = self.last if last is None else last
        bb = self.b.block
        for phi, v in ((self.o_eip, next_eip), (self.o_off, _c(li.off)),
                       (self.o_len, _c(li.len)), (self.o_retired, self.retired)):
            phi.add_incoming(v, bb)
        if cond is None:
            self.b.branch(self.out_bb)
        else:
            self.b.cbranch(cond, self.out_bb, stay)

    def side_exit(self, k, cond):
        """If ``cond``: stop before instruction ``k`` (the interpreter runs it)."""
        go = self.block(f"i{k}")
        self.leave(self.eip_at(k), self.insns[k - 1] if k > 0 else None, cond, go)
        self.b.position_at_end(go)

    def retire(self, k):
        """Count instruction ``k``, which has just passed its checks (before its effects).

        Its fetch: a decode-cache hit and, with paging on, a hit in the one-entry code
        TLB -- except for the entry instruction's first pass, whose fetch the run loop
        made (and counted, as a hit or a miss) before calling the block.
        """
        b = self.b
        fetch = self.again if k == 0 else _c(1)
        self.retired = b.add(self.retired, _c(1))
        self.add_to(COUNTERS + C_DC_HIT, fetch)
        self.add_to(COUNTERS + C_TLB_HIT, b.mul(fetch, self.paging))

    # -- memory (operands.mem_read/mem_write with FLAT; paging.read_lin/write_lin)
    def access(self, k, lin, write):
        """Check a dword access at linear ``lin``; returns (pa, TLB entry or -1).

        Every failing check leaves the block before instruction ``k``.
        """
        b = self.b
        flat_bb, pg_bb, join = self.block(f"flat{k}"), self.block(f"paged{k}"), self.block(f"pa{k}")
        b.cbranch(b.icmp_signed("!=", self.paging, _c(0)), pg_bb, flat_bb)
        b.position_at_end(pg_bb)
        self.side_exit(k, b.icmp_signed(">", b.add(b.and_(lin, _c(PAGE - 1)), _c(4)), _c(PAGE)))
        vpn = b.lshr(lin, _c(12))
        first = b.mul(b.mul(b.and_(vpn, b.sub(self.sets, _c(1))), self.ways), _c(TLB_FIELDS))
        tag = b.add(vpn, self.tag_base)          # hvsim/mmu/tlb.py tlb_tag
        pre = b.block
        head, probe, nxt, found = (self.block(f"tlb{k}"), self.block(f"probe{k}"),
                                   self.block(f"next{k}"), self.block(f"hit{k}"))
        b.branch(head)
        b.position_at_end(head)
        w = b.phi(I64)
        w.add_incoming(_c(0), pre)
        self.leave(self.eip_at(k), self.insns[k - 1] if k > 0 else None,   # a miss: walk
                   b.icmp_signed(">=", w, self.ways), probe)
        b.position_at_end(probe)
        entry = b.add(first, b.mul(w, _c(TLB_FIELDS)))
        t = b.load(self.slot(self.tlb, b.add(entry, _c(TLB_TAG))))
        b.cbranch(b.icmp_signed("==", t, tag), found, nxt)
        b.position_at_end(nxt)
        w.add_incoming(b.add(w, _c(1)), nxt)
        b.branch(head)
        b.position_at_end(found)
        flags = b.load(self.slot(self.tlb, b.add(entry, _c(TLB_FLAGS))))
        self.side_exit(k, self.denied(flags, write))
        frame = b.load(self.slot(self.tlb, b.add(entry, _c(TLB_FRAME))))
        pa_pg = b.or_(b.shl(frame, _c(12)), b.and_(lin, _c(PAGE - 1)))
        from_pg = b.block
        b.branch(join)
        b.position_at_end(flat_bb)
        b.branch(join)
        b.position_at_end(join)
        pa = b.phi(I64)
        pa.add_incoming(pa_pg, from_pg)
        pa.add_incoming(lin, flat_bb)
        e = b.phi(I64)
        e.add_incoming(entry, from_pg)
        e.add_incoming(_c(-1), flat_bb)
        self.side_exit(k, b.icmp_signed(">", b.add(pa, _c(4)), self.mem_size))   # bus error
        if write:
            code = b.or_(b.load(self.slot(self.pg, b.lshr(pa, _c(12)))),
                         b.load(self.slot(self.pg, b.lshr(b.add(pa, _c(3)), _c(12)))))
            self.side_exit(k, self.is_set(code, PG_CODE))      # decoded code: invalidate
        return pa, e

    def denied(self, flags, write):
        """paging._denied, plus a write through an entry whose cached D is 0, plus a read
        through a combined EPT translation whose EPT rights forbid reads (TLBF_EPT_NR;
        EPT forbidding writes clears D instead: hvsim/mmu/tlb.py)."""
        b = self.b

        def clear(bit):
            return b.icmp_signed("==", b.and_(flags, _c(bit)), _c(0))
        if write:
            rw_needed = b.or_(self.user, self.wp)
            no = b.or_(b.and_(self.user, clear(PTE_US)), b.and_(rw_needed, clear(PTE_RW)))
            return b.or_(no, clear(PTE_D))
        return b.or_(b.and_(self.user, clear(PTE_US)), b.not_(clear(TLBF_EPT_NR)))

    def touch(self, k, e):
        """With paging, the data access's TLB hit (after its fetch hit) and LRU stamp."""
        b = self.b
        yes, done = self.block(f"touch{k}"), self.block(f"touched{k}")
        b.cbranch(b.icmp_signed(">=", e, _c(0)), yes, done)
        b.position_at_end(yes)
        hits = b.add(self.ld(COUNTERS + C_TLB_HIT), _c(1))
        self.put(COUNTERS + C_TLB_HIT, hits)
        b.store(b.add(hits, self.ld(COUNTERS + C_TLB_MISS)),
                self.slot(self.tlb, b.add(e, _c(TLB_LRU))))
        b.branch(done)
        b.position_at_end(done)

    def load32(self, pa):
        b = self.b
        p = b.bitcast(b.gep(self.mem, [pa]), I32.as_pointer())
        return b.zext(b.load(p, align=1), I64)

    def store32(self, pa, v):
        b = self.b
        p = b.bitcast(b.gep(self.mem, [pa]), I32.as_pointer())
        b.store(b.trunc(v, I32), p, align=1)

    # -- the body
    def emit(self, total):
        b = self.b
        ok = b.icmp_signed("<=", b.add(self.ld(EIP), _c(total - 1)), self.ld(SEG_LIMIT + SREG_CS))
        if any(i.kind in _MEMORY for i in self.insns):
            ok = b.and_(ok, b.icmp_signed("!=", self.ld(FLAT), _c(0)))
        cr0 = self.ld(CR0)
        paging = self.is_set(cr0, CR0_PG)
        ok = b.and_(ok, b.or_(b.not_(paging), b.icmp_signed("!=", self.ld(CFG_TLB_ENABLED), _c(0))))
        go, no = self.block("go"), self.block("no")
        b.cbranch(ok, go, no)
        b.position_at_end(no)
        b.ret(_c(0))
        b.position_at_end(go)
        self.paging = b.zext(paging, I64)
        self.eip0 = self.ld(EIP)
        self.cs_limit = self.ld(SEG_LIMIT + SREG_CS)
        self.mem_size = self.ld(CFG_MEM_SIZE)
        self.user = b.icmp_signed("==", self.ld(CPL), _c(3))
        self.wp = self.is_set(cr0, CR0_WP)
        self.sets, self.ways = self.ld(CFG_TLB_SETS), self.ld(CFG_TLB_WAYS)
        # a tag is the linear page + 1 + the VPID's bits (no block changes the VPID)
        self.tag_base = b.add(b.shl(self.ld(VPID), _c(TAG_VPID_SHIFT)), _c(1))
        entry_bb = b.block
        head, self.out_bb = self.block("head"), self.block("out")
        b.position_at_end(self.out_bb)
        self.o_eip, self.o_off, self.o_len, self.o_retired = (b.phi(I64) for _ in range(4))
        b.position_at_end(entry_bb)
        b.branch(head)
        b.position_at_end(head)
        self.head = head
        self.retired_phi, self.again_phi = b.phi(I64), b.phi(I64)
        self.retired_phi.add_incoming(_c(0), entry_bb)
        self.again_phi.add_incoming(_c(0), entry_bb)
        self.retired, self.again = self.retired_phi, self.again_phi
        # a whole pass must fit in what is left of the stretch
        self.side_exit(0, b.icmp_signed(">", b.add(self.retired, _c(self.n)), self.limit))
        for k, i in enumerate(self.insns):
            self.insn(k, i)
        if self.last.kind not in _ENDS:                          # fell off the end
            self.leave(self.eip_at(self.n), self.last)
        # the common exit: nothing to store if nothing retired
        b.position_at_end(self.out_bb)
        store, nothing = self.block("store"), self.block("nothing")
        b.cbranch(b.icmp_signed("==", self.o_retired, _c(0)), nothing, store)
        b.position_at_end(nothing)
        b.ret(_c(0))
        b.position_at_end(store)
        self.put(EIP, self.o_eip)
        self.put(INSN_EIP, self.m32(b.add(self.eip0, self.o_off)))
        self.put(INSN_LEN, self.o_len)
        b.ret(self.o_retired)

    def loop_back(self):
        bb = self.b.block
        self.retired_phi.add_incoming(self.retired, bb)
        self.again_phi.add_incoming(_c(1), bb)
        self.b.branch(self.head)

    def transfer(self, k, i, taken):
        """End of block: on to the next instruction, or to the target if ``taken``."""
        b = self.b
        nxt = self.eip_at(k + 1)
        delta = (i.off + i.len + i.imm) & MASK32
        if delta == 0:                   # back to the block's own start
            if taken is True:
                self.loop_back()
                return
            loop = self.block("loop")
            self.leave(nxt, i, b.not_(taken), loop)
            b.position_at_end(loop)
            self.loop_back()
            return
        target = self.m32(b.add(self.eip0, _c(delta)))
        self.leave(target if taken is True else b.select(taken, target, nxt), i)

    def target_check(self, k, i, taken):
        """#GP(0) when a taken branch leaves the CS limit: the interpreter raises it."""
        delta = (i.off + i.len + i.imm) & MASK32
        if delta == 0:
            return                        # the block's own start, checked on entry
        b = self.b
        bad = b.icmp_signed(">", self.m32(b.add(self.eip0, _c(delta))), self.cs_limit)
        self.side_exit(k, bad if taken is True else b.and_(taken, bad))

    def insn(self, k, i):
        b = self.b
        kind = i.kind
        if kind == K_ALU_RR or kind == K_ALU_RI:
            if kind == K_ALU_RI:
                dst, op = (EAX, (i.opc >> 3) & 7) if i.op == D.OP_ALU_AI else (i.rm, i.reg)
                src = _c(i.imm & MASK32)
            else:
                dst, s = (i.rm, i.reg) if i.op == D.OP_ALU_EG else (i.reg, i.rm)
                op = (i.opc >> 3) & 7
                src = self.ld(s)
            self.retire(k)
            r = self.alu2(op, self.ld(dst), src)
            if op != alu.OP_CMP:
                self.put(dst, r)
        elif kind == K_ALU_RM:
            pa, e = self.access(k, self.ea(i), False)
            self.retire(k)
            self.touch(k, e)
            op = (i.opc >> 3) & 7
            r = self.alu2(op, self.ld(i.reg), self.load32(pa))
            if op != alu.OP_CMP:
                self.put(i.reg, r)
        elif kind == K_TEST_RR:
            self.retire(k)
            self.set_flags(self.szp(b.and_(self.ld(i.rm), self.ld(i.reg))))
        elif kind == K_INC or kind == K_DEC:
            self.retire(k)
            self.put(i.reg, self.incdec(self.ld(i.reg), kind == K_INC))
        elif kind == K_MOV_RR:
            self.retire(k)
            dst, src = (i.rm, i.reg) if i.op == D.OP_MOV_EG else (i.reg, i.rm)
            self.put(dst, self.ld(src))
        elif kind == K_MOV_RI:
            self.retire(k)
            self.put(i.reg, _c(i.imm & MASK32))
        elif kind == K_LEA:
            self.retire(k)
            self.put(i.reg, self.ea(i))
        elif kind == K_NOP:
            self.retire(k)
        elif kind == K_LOAD:
            pa, e = self.access(k, self.ea(i), False)
            self.retire(k)
            self.touch(k, e)
            self.put(i.reg, self.load32(pa))
        elif kind == K_STORE:
            pa, e = self.access(k, self.ea(i), True)
            self.retire(k)
            self.touch(k, e)
            self.store32(pa, self.ld(i.reg))
        elif kind == K_PUSH:
            esp = self.m32(b.sub(self.ld(ESP), _c(4)))
            pa, e = self.access(k, esp, True)
            self.retire(k)
            self.touch(k, e)
            self.store32(pa, self.ld(i.reg))          # PUSH ESP pushes the old value
            self.put(ESP, esp)
        elif kind == K_POP:
            pa, e = self.access(k, self.ld(ESP), False)
            self.retire(k)
            self.touch(k, e)
            v = self.load32(pa)
            self.put(ESP, self.m32(b.add(self.ld(ESP), _c(4))))
            self.put(i.reg, v)                         # POP ESP: ESP = the value read
        elif kind == K_JCC:
            taken = self.cond(i.opc & 0xF)
            self.target_check(k, i, taken)
            self.retire(k)
            self.transfer(k, i, taken)
        elif kind == K_JMP:
            self.target_check(k, i, True)
            self.retire(k)
            self.transfer(k, i, True)
        elif kind == K_LOOP:
            c = self.m32(b.sub(self.ld(ECX), _c(1)))
            taken = b.icmp_signed("!=", c, _c(0))
            self.target_check(k, i, taken)
            self.retire(k)
            self.put(ECX, c)
            self.transfer(k, i, taken)
        elif kind == K_CALL:
            self.target_check(k, i, True)
            esp = self.m32(b.sub(self.ld(ESP), _c(4)))
            pa, e = self.access(k, esp, True)
            self.retire(k)
            self.touch(k, e)
            self.store32(pa, self.eip_at(k + 1))
            self.put(ESP, esp)
            self.transfer(k, i, True)
        elif kind == K_RET:
            pa, e = self.access(k, self.ld(ESP), False)
            target = self.load32(pa)
            self.side_exit(k, b.icmp_signed(">", target, self.cs_limit))
            self.retire(k)
            self.touch(k, e)
            self.put(ESP, self.m32(b.add(self.ld(ESP), _c(4 + i.imm))))
            self.leave(target, i)
        else:                                          # pragma: no cover - _classify's kinds
            raise AssertionError(kind)


def build_ir(insns, name="block"):
    """The LLVM module of one block: ``i64 name(st*, mem*, tlb*, pg*, limit)``."""
    mod = ir.Module(name=name)
    fn = ir.Function(mod, _SIG, name=name)
    for a, n in zip(fn.args, ("st", "mem", "tlb", "pg", "limit")):
        a.name = n
        if n != "limit":
            a.add_attribute("noalias")
    _Emitter(fn, insns).emit(insns[-1].off + insns[-1].len)
    return mod


# ------------------------------------------------------------------------------ compiling
_lock = threading.Lock()
_compiled = {}          # block key -> (library, address); lives as long as the process
stats = {"translated": 0, "reused": 0, "declined": 0, "failed": 0}   # this process


_engine = None


def _jit():
    """One LLVM MCJIT engine for the process, for this CPU (numba's NUMBA_CPU_NAME too)."""
    global _engine
    if _engine is None:
        import llvmlite.binding as llvm
        from numba.core import config
        from numba.core.codegen import initialize_llvm
        initialize_llvm()                            # the native target and its printer
        cpu = config.CPU_NAME or llvm.get_host_cpu_name()
        features = config.CPU_FEATURES if config.CPU_NAME else llvm.get_host_cpu_features().flatten()
        # No IR pass pipeline: the code generator's own optimization (-O2) is enough
        # for code written the way this module writes it. Measured on the benchmark
        # loops and the random programs of tests/test_blocks.py: LLVM's O1-O3 IR
        # pipelines cost 13-22 ms more per block for no steady gain in the loops.
        tm = llvm.Target.from_default_triple().create_target_machine(
            cpu=cpu, features=features or "", opt=2, codemodel="jitdefault", jit=True)
        _engine = (llvm, llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm))
    return _engine


def _compile(insns):
    llvm, engine = _jit()
    name = f"block{len(_compiled)}"
    mod = llvm.parse_assembly(str(build_ir(insns, name)))
    engine.add_module(mod)
    engine.finalize_object()
    return mod, engine.get_function_address(name)


def translate(dc, row):
    """Translate the block entered at ``row`` and record it in ``dc[F_BLK, row]``."""
    insns = collect(dc, row)
    if not insns:
        dc[F_BLK, row] = BLOCK_NEVER
        stats["declined"] += 1
        return 0
    key = tuple(i.key for i in insns)
    with _lock:
        got = _compiled.get(key)
        if got is None:
            try:
                got = _compile(insns)
            except Exception as e:       # LLVM refused: the interpreter keeps the row
                dc[F_BLK, row] = BLOCK_NEVER
                stats["failed"] += 1
                warnings.warn(f"hvsim: a block at {int(dc[D.F_TAG, row]):#x} was not "
                              f"translated ({type(e).__name__}: {e}); it is interpreted")
                return 0
            _compiled[key] = got
            stats["translated"] += 1
        else:
            stats["reused"] += 1
    dc[F_BLK, row] = got[1]
    return got[1]
