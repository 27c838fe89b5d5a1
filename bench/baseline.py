"""A deliberately plain pure-Python interpreter: the baseline bench/run.py measures beside hvsim.

It runs the *same assembly text* as the hvsim benchmarks, for the few instruction forms
those loops use (mov, add, sub, xor, and, or, inc, dec, jnz, jmp, loop, push, pop, call,
ret, hlt; register, immediate and [reg+disp] operands). The source is parsed once into a
list of (handler, operands) and executed by a loop that dispatches through a dict of
Python functions — the way one would write a first interpreter in Python, without tricks.

What it models, to keep the comparison honest: 32-bit wrap-around, the ZF/SF/CF flags the
loops test, little-endian memory in a bytearray, a real stack in that memory, and
optionally 32-bit paging (a page-table walk on a TLB miss, a dict as the TLB). What it
leaves out (so hvsim does more work per instruction): decoding bytes, OF/AF/PF, segment
checks, privilege checks, faults, bounds checks, counters.

Not jitted. Used only by bench/run.py.
"""
from __future__ import annotations

import re

MASK = 0xFFFFFFFF
REGS = {"eax": 0, "ecx": 1, "edx": 2, "ebx": 3, "esp": 4, "ebp": 5, "esi": 6, "edi": 7}
ESP = 4


class Halt(Exception):
    """Raised by hlt (the loop catches it)."""


class Cpu:
    def __init__(self, memory_size=16 << 20):
        self.r = [0] * 8
        self.mem = bytearray(memory_size)
        self.zf = self.sf = self.cf = 0
        self.pc = 0                 # index into the instruction list
        self.cr3 = None             # page directory address when paging is on
        self.tlb = {}               # linear page -> physical frame address

    # --- address translation (32-bit paging, 4 KiB pages) ------------------------------
    def translate(self, lin):
        if self.cr3 is None:
            return lin
        page = lin >> 12
        frame = self.tlb.get(page)
        if frame is None:
            pde = int.from_bytes(self.mem[self.cr3 + 4 * (lin >> 22):][:4], "little")
            pt = pde & 0xFFFFF000
            pte = int.from_bytes(self.mem[pt + 4 * ((lin >> 12) & 0x3FF):][:4], "little")
            if not (pde & pte & 1):
                raise RuntimeError(f"page fault at {lin:#x} (the baseline does not model #PF)")
            frame = pte & 0xFFFFF000
            self.tlb[page] = frame
        return frame | (lin & 0xFFF)

    def load(self, lin):
        pa = self.translate(lin)
        return int.from_bytes(self.mem[pa:pa + 4], "little")

    def store(self, lin, value):
        pa = self.translate(lin)
        self.mem[pa:pa + 4] = value.to_bytes(4, "little")


# --- operands: ('r', reg) | ('i', value) | ('m', reg or None, disp) ---------------------

def _read(cpu, op):
    kind = op[0]
    if kind == "r":
        return cpu.r[op[1]]
    if kind == "i":
        return op[1]
    base = cpu.r[op[1]] if op[1] is not None else 0
    return cpu.load((base + op[2]) & MASK)


def _write(cpu, op, value):
    if op[0] == "r":
        cpu.r[op[1]] = value
    else:
        base = cpu.r[op[1]] if op[1] is not None else 0
        cpu.store((base + op[2]) & MASK, value)


def _logic_flags(cpu, v):
    cpu.zf = v == 0
    cpu.sf = v >> 31
    cpu.cf = 0
    return v


# --- one handler per mnemonic -------------------------------------------------------------

def op_mov(cpu, a, b):
    _write(cpu, a, _read(cpu, b))


def op_add(cpu, a, b):
    s = _read(cpu, a) + _read(cpu, b)
    v = s & MASK
    cpu.zf, cpu.sf, cpu.cf = v == 0, v >> 31, s >> 32
    _write(cpu, a, v)


def op_sub(cpu, a, b):
    x, y = _read(cpu, a), _read(cpu, b)
    v = (x - y) & MASK
    cpu.zf, cpu.sf, cpu.cf = v == 0, v >> 31, x < y
    _write(cpu, a, v)


def op_xor(cpu, a, b):
    _write(cpu, a, _logic_flags(cpu, _read(cpu, a) ^ _read(cpu, b)))


def op_and(cpu, a, b):
    _write(cpu, a, _logic_flags(cpu, _read(cpu, a) & _read(cpu, b)))


def op_or(cpu, a, b):
    _write(cpu, a, _logic_flags(cpu, _read(cpu, a) | _read(cpu, b)))


def op_inc(cpu, a, b):          # INC/DEC leave CF alone
    v = (_read(cpu, a) + 1) & MASK
    cpu.zf, cpu.sf = v == 0, v >> 31
    _write(cpu, a, v)


def op_dec(cpu, a, b):
    v = (_read(cpu, a) - 1) & MASK
    cpu.zf, cpu.sf = v == 0, v >> 31
    _write(cpu, a, v)


def op_jnz(cpu, a, b):
    if not cpu.zf:
        cpu.pc = a[1]


def op_jmp(cpu, a, b):
    cpu.pc = a[1]


def op_loop(cpu, a, b):         # LOOP: ECX -= 1, jump if ECX != 0; flags unchanged
    c = (cpu.r[1] - 1) & MASK
    cpu.r[1] = c
    if c:
        cpu.pc = a[1]


def op_push(cpu, a, b):
    sp = (cpu.r[ESP] - 4) & MASK
    cpu.store(sp, _read(cpu, a))
    cpu.r[ESP] = sp


def op_pop(cpu, a, b):
    sp = cpu.r[ESP]
    _write(cpu, a, cpu.load(sp))
    cpu.r[ESP] = (sp + 4) & MASK


def op_call(cpu, a, b):         # pushes the index of the next instruction as the "address"
    sp = (cpu.r[ESP] - 4) & MASK
    cpu.store(sp, cpu.pc)
    cpu.r[ESP] = sp
    cpu.pc = a[1]


def op_ret(cpu, a, b):
    sp = cpu.r[ESP]
    cpu.pc = cpu.load(sp)
    cpu.r[ESP] = (sp + 4) & MASK


def op_hlt(cpu, a, b):
    raise Halt


DISPATCH = {
    "mov": op_mov, "add": op_add, "sub": op_sub, "xor": op_xor, "and": op_and, "or": op_or,
    "inc": op_inc, "dec": op_dec, "jnz": op_jnz, "jne": op_jnz, "jmp": op_jmp, "loop": op_loop,
    "push": op_push, "pop": op_pop, "call": op_call, "ret": op_ret, "hlt": op_hlt,
}
_BRANCHES = {"jnz", "jne", "jmp", "loop", "call"}


def parse(source):
    """Parse the benchmark subset of Intel-syntax assembly into [(mnemonic, a, b)]."""
    labels, raw = {}, []
    for line in source.splitlines():
        line = line.split(";")[0].strip()
        if not line:
            continue
        while ":" in line:
            name, line = line.split(":", 1)
            labels[name.strip()] = len(raw)
            line = line.strip()
        if line:
            mnem, _, rest = line.partition(" ")
            ops = [o.strip() for o in rest.split(",")] if rest.strip() else []
            raw.append((mnem.lower(), ops))

    def operand(text, mnem):
        t = text.lower().replace("dword", "").strip()
        if mnem in _BRANCHES:
            return ("i", labels[text])
        if t in REGS:
            return ("r", REGS[t])
        m = re.fullmatch(r"\[\s*(\w+)?\s*(?:([+-])\s*(\w+))?\s*\]", t)
        if m:
            reg, sign, disp = m.groups()
            if reg is not None and reg not in REGS:          # [0x1234]
                return ("m", None, int(reg, 0))
            d = int(disp, 0) if disp else 0
            return ("m", REGS[reg] if reg else None, -d if sign == "-" else d)
        return ("i", int(t, 0) & MASK)

    program = []
    for mnem, ops in raw:
        if mnem not in DISPATCH:
            raise ValueError(f"the baseline interpreter has no {mnem!r}")
        a = operand(ops[0], mnem) if len(ops) > 0 else None
        b = operand(ops[1], mnem) if len(ops) > 1 else None
        program.append((DISPATCH[mnem], a, b))
    return program


def run(program, cpu):
    """Execute until hlt; returns the number of instructions executed (hlt included)."""
    n = 0
    pc_max = len(program)
    try:
        while cpu.pc < pc_max:
            handler, a, b = program[cpu.pc]
            cpu.pc += 1
            n += 1
            handler(cpu, a, b)
    except Halt:
        pass
    return n
