"""hvsim.rings.setup: the Python-built GDT/IDT/TSS, checked by running real transitions."""
import doctest

import pytest

import hvsim.rings.setup as S
from hvsim import Machine, assemble
from hvsim.rings import decode_descriptor

MEM = 1 << 20


def test_doctest():
    r = doctest.testmod(S)
    assert r.attempted > 0 and r.failed == 0


def test_gdt_layout_and_registers():
    m = Machine(memory=MEM)
    t = S.install(m)
    assert (m.cpu.gdtr_base, m.cpu.gdtr_limit) == (S.DEFAULT_GDT, 8 * 10 - 1)
    assert (m.cpu.idtr_base, m.cpu.idtr_limit) == (S.DEFAULT_IDT, 8 * 256 - 1)
    for ring in range(4):
        for sel, kind in ((t.code(ring), "code"), (t.data(ring), "data")):
            raw = int.from_bytes(bytes(m.memory[t.gdt + (sel & ~7):t.gdt + (sel & ~7) + 8]), "little")
            d = decode_descriptor(raw)
            assert (d.kind, d.dpl, d.base, d.limit, sel & 3) == (kind, ring, 0, 0xFFFFFFFF, ring)
    # TR loaded as LTR does: the GDT entry is now a *busy* TSS
    raw = int.from_bytes(bytes(m.memory[t.gdt + 0x48:t.gdt + 0x50]), "little")
    assert decode_descriptor(raw).kind == "32-bit TSS (busy)"
    assert m.cpu.tr == 0x48 and m.cpu.cs == t.code(0) and m.cpu.ss == t.data(0)


def test_tr_setter_refuses_what_ltr_refuses():
    m = Machine(memory=MEM)
    t = S.install(m)
    with pytest.raises(ValueError, match="not a present available 32-bit TSS"):
        m.cpu.tr = t.tss_selector            # already busy
    with pytest.raises(ValueError, match="not a present available 32-bit TSS"):
        m.cpu.tr = t.code(0)
    with pytest.raises(ValueError, match="inside the GDT limit"):
        m.cpu.tr = 0x400


def test_system_call_from_ring3_switches_to_the_tss_stack():
    """INT 0x80 at ring 3 through a DPL-3 gate lands in ring 0 on TSS.ESP0 with the
    5-dword frame (SDM Vol. 3A, Figure 6-4); IRET returns to ring 3."""
    m = Machine(memory=MEM, exceptions="guest")
    t = S.install(m)
    prog = assemble("""
    user:
        mov eax, 7
        int 0x80
        hlt                ; ring 3: #GP, delivered to the guest's (absent) gate -> stop below
    handler:
        add eax, 1
        iret
    """)
    m.load(prog)
    t.gate(m, 0x80, prog.labels["handler"], kind="interrupt", dpl=3)
    t.enter(m, 3, prog.labels["user"], esp=t.stack_top(3))
    m.run(max_steps=2)                                     # mov, int
    assert m.cpu.cpl == 0 and m.cpu.eip == prog.labels["handler"]
    esp0 = t.stack_top(0)
    assert m.cpu.esp == esp0 - 20
    frame = [int.from_bytes(bytes(m.memory[esp0 - 20 + 4 * i:esp0 - 16 + 4 * i]), "little")
             for i in range(5)]
    eip, cs, eflags, esp, ss = frame
    assert (eip, cs, esp, ss) == (prog.labels["user"] + 7, t.code(3), t.stack_top(3), t.data(3))
    m.run(max_steps=2)                                     # add, iret
    assert (m.cpu.cpl, m.cpu.eax, m.cpu.esp) == (3, 8, t.stack_top(3))


def test_set_stack_and_bad_arguments():
    m = Machine(memory=MEM)
    t = S.install(m)
    t.set_stack(m, 1, 0x8000)
    assert int.from_bytes(bytes(m.memory[t.tss + 12:t.tss + 16]), "little") == 0x8000
    assert int.from_bytes(bytes(m.memory[t.tss + 16:t.tss + 18]), "little") == t.data(1)
    with pytest.raises(ValueError, match="rings 0, 1 and 2"):
        t.set_stack(m, 3, 0x8000)
    with pytest.raises(ValueError, match="ring must be"):
        t.code(4)
    with pytest.raises(ValueError, match="do not fit"):
        S.install(Machine(memory=1 << 16), idt=0xFF00)
    with pytest.raises(ValueError, match="outside 0..255"):
        t.gate(m, 256, 0x1000)
