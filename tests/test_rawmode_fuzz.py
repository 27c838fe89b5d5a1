"""Random kernels under raw mode against the CPU (hvsim/bt/rawmode.py).

Oracle: the real CPU. test_bt_fuzz's random kernels -- ALU and memory instructions,
forward conditional branches, a bounded loop, near calls and returns, indirect jumps
through a table, CLI/STI/PUSHF/POPF -- run natively and under
:class:`~hvsim.bt.rawmode.RawMode` (scanned, patched, in place): the general registers,
the arithmetic flags, the data area, the stack and the (virtual) IF must be identical;
with timer ticks landing anywhere (patch code included), everything but the tick count
still agrees; random bytes end in an event the monitor names.
"""
import random

import pytest

from hvsim import Machine, assemble
from hvsim.bt.rawmode import RawMode
from hvsim.mmu.shadow import HOLE_BASE
from hvsim.rings.setup import install

from test_bt_fuzz import ARITH, DATA, REGS, SEEDS, TICK_TAIL, TICKS, _pushf_safe, kernel


def _native(src, kcode="0x08"):
    m = Machine(memory=1 << 20, exceptions="guest")
    t = install(m)
    m.load(assemble(src.replace("KCODE", kcode), origin=0x1000))
    t.enter(m, 0, m.cpu.eip, 0x80000)
    return m, m.run(100_000)


def _compare(m, rm, seed):
    for r in REGS + ["ebx", "esp"]:
        assert getattr(m.cpu, r) == getattr(rm.machine.cpu, r), (seed, r)
    assert m.cpu.eflags & ARITH == rm.machine.cpu.eflags & ARITH, seed
    assert bytes(m.memory[DATA:DATA + 64]) == bytes(rm.machine.memory[DATA:DATA + 64]), seed


@pytest.mark.parametrize("seed", range(SEEDS))
def test_random_kernel_same_as_native(seed):
    src = _pushf_safe(kernel(seed))
    m, ev = _native(src)
    rm = RawMode(program=assemble(src, origin=0x1000))
    rm.machine.cpu.esp = 0x80000
    rev = rm.run(100_000)
    assert ev.kind == "halt" and rev.kind == "halt", (seed, ev, rev)
    _compare(m, rm, seed)
    assert bytes(m.memory[0x7FF00:0x80000]) == bytes(rm.machine.memory[0x7FF00:0x80000]), seed
    assert (1 if m.cpu.eflags & 0x200 else 0) == rm.vcpu.IF, seed


@pytest.mark.parametrize("seed", range(SEEDS // 2))
def test_random_kernel_with_timer_ticks_same_state_as_native(seed):
    period = 40 + seed % 13
    src = _pushf_safe(kernel(seed)).replace("start:\n", "start:\n" + TICKS.replace(
        "PERIOD", str(period)), 1).replace("    hlt\n", "    cli\n    hlt\n") + TICK_TAIL
    m, ev = _native(src)
    rm = RawMode(program=assemble(src.replace("KCODE", "0x19"), origin=0x1000))
    rm.machine.cpu.esp = 0x80000
    rev = rm.run(100_000)
    assert ev.kind == "halt" and rev.kind == "halt", (seed, ev, rev)
    _compare(m, rm, seed)
    assert rm.ticks_delivered == int.from_bytes(bytes(rm.machine.memory[0x20100:0x20104]), "little")


@pytest.mark.parametrize("seed", range(SEEDS))
def test_random_bytes_as_a_kernel_never_escape_the_monitor(seed):
    rng = random.Random(1000 + seed)
    code = bytes(rng.getrandbits(8) for _ in range(256))
    rm = RawMode(program=assemble("start:\n" + "".join(f"    db {b}\n" for b in code),
                                  origin=0x1000))
    ev = rm.run(3000)
    assert ev.kind in ("killed", "halt", "budget"), ev
    if ev.kind == "killed":
        assert ev.reason and "not at an instruction of the TC" not in ev.reason
    elif ev.kind == "budget":
        cpu = rm.machine.cpu
        # ring 1 runs guest code in place, or patch code at one of its instructions
        assert cpu.cpl == 3 or cpu.eip < HOLE_BASE or cpu.eip in rm._at
