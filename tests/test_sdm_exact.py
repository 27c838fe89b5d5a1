"""The machine where the Intel SDM is exact about it (issue 12, part 6): segment type
checks on flat segments, the two interrupt shadows, #AC, PVI, VIF/VIP on IRET, INTO,
MOV DRn, INVD and WBINVD. Each test names the SDM section it checks; the oracle is the
SDM's text, and Unicorn where Unicorn models the rule (the test_unicorn_* tests)."""
import pytest

from hvsim import Machine, assemble
from hvsim.arch import layout as L
from hvsim.arch.cr import CR0_AM
from hvsim.arch.flags import AC
from hvsim.arch.vectors import GP, AC as VEC_AC
from hvsim.rings import make_descriptor, put_descriptors
from hvsim.rings.setup import install

DATA = 0x8000
RO_DATA0 = 6 << 3          # GDT entry 6 (install()'s ring-2 data) rewritten per test
FLAT_RO_DATA = 0x1         # read-only, accessed (SDM Vol. 3A, Table 3-1)
FLAT_XR_CODE = 0xB         # execute/read, accessed
FLAT_XO_CODE = 0x9         # execute-only, accessed
AR_FLAT = L.AR_P | L.AR_S | L.AR_DB | L.AR_G


def machine_with_gdt(src, seg_type=FLAT_RO_DATA, blocks=False):
    """A ring-0 machine with install()'s tables, GDT entry 6 a flat DPL-0 segment of
    ``seg_type``, and ``src`` loaded at 0x1000 (EBX = DATA)."""
    m = Machine(memory=1 << 20, blocks=blocks)
    t = install(m)
    put_descriptors(m.memory, t.gdt + RO_DATA0, [make_descriptor(0, 0xFFFFF, seg_type, 1, 0, 1, 1, 1)])
    prog = assemble("start:\n" + src + "\nhlt\n")
    m.load(prog)
    m.cpu.ebx = DATA
    return m, prog.labels


# ---- type checks on flat segments (SDM Vol. 3A, 5.5 and 5.6; Vol. 2B MOV "#GP(0) If the
# destination operand is located in a non-writable segment") --------------------------------
@pytest.mark.parametrize("seg_type", [FLAT_RO_DATA, FLAT_XR_CODE])
@pytest.mark.parametrize("sreg, store", [("ds", "mov [ebx], eax"), ("es", "mov es:[ebx], eax"),
                                          ("es", "stosd")])
def test_write_through_a_flat_non_writable_segment_is_gp0(seg_type, sreg, store):
    """SDM Vol. 3A 5.5/5.6: a write through a read-only data segment or a code segment is
    #GP(0) -- also when the segment is flat (base 0, limit 4 GiB), where hvsim's fast path
    (st[FLAT]) used to skip the type check. Reads through the same segment succeed."""
    m, labels = machine_with_gdt(f"mov eax, {RO_DATA0}\nmov {sreg}, ax\nmov edi, ebx\n"
                                 f"mov eax, 0x11223344\nmov ecx, [ebx]\nstore:\n{store}", seg_type)
    m.memory[DATA:DATA + 4] = [1, 2, 3, 4]
    ev = m.run(100)
    assert (ev.kind, ev.vector, ev.error_code) == ("exception", GP, 0)
    assert ev.eip == labels["store"] and ev.source == "fault"
    assert m.cpu.ecx == 0x04030201                   # the read went through
    assert bytes(m.memory[DATA:DATA + 4]) == b"\x01\x02\x03\x04"   # the write did not
    assert m._st[L.FLAT] == 0


def test_flat_writable_data_keeps_the_fast_path():
    """update_flat: the bare machine's flat read/write DS/ES/SS are the fast path."""
    m, _ = machine_with_gdt("mov eax, 0x10\nmov ds, ax\nmov [ebx], eax")
    assert m.run(100).kind == "halt" and m._st[L.FLAT] == 1


def test_read_through_an_execute_only_segment_is_gp0():
    """SDM Vol. 3A 5.6: reading an execute-only code segment is #GP(0) -- through a CS
    override of a flat execute-only CS, and through DS holding one (set from the host:
    MOV DS refuses to load it, SDM Vol. 2B MOV)."""
    m = Machine()
    m.load(assemble("start:\nmov eax, cs:[0x2000]\nhlt"))
    m.cpu.set_segment("cs", 0x08, access_rights=AR_FLAT | FLAT_XO_CODE)
    ev = m.run(10)
    assert (ev.vector, ev.error_code, ev.eip) == (GP, 0, 0x1000)
    m = Machine()
    m.load(assemble("start:\nmov eax, [0x2000]\nhlt"))
    m.cpu.set_segment("ds", 0x10, access_rights=AR_FLAT | FLAT_XO_CODE)
    ev = m.run(10)
    assert (ev.vector, ev.error_code, ev.eip) == (GP, 0, 0x1000)


def test_a_translated_block_does_not_store_through_a_segment_made_read_only():
    """SDM Vol. 3A 5.6, through the block translator: a store loop is translated while DS
    is writable; after DS is reloaded read-only the block must not run (it checks st[FLAT]
    on entry), and the interpreter raises #GP(0) on the first store -- as without blocks."""
    src = (f"mov ecx, 40\nagain:\nmov [ebx], ecx\nadd ebx, 4\nloop again\n"
           f"cmp edx, 1\nje done\nmov edx, 1\nmov eax, {RO_DATA0}\nmov ds, ax\nmov ecx, 40\n"
           f"jmp again\ndone:")
    results = []
    for blocks in (2, False):
        m, labels = machine_with_gdt(src, blocks=blocks)
        ev = m.run(1000)
        results.append((ev.kind, ev.vector, ev.error_code, ev.eip, m.cpu.ebx, m.cpu.ecx,
                        bytes(m.memory[DATA:DATA + 0x200])))
    assert results[0] == results[1]
    assert results[0][:4] == ("exception", GP, 0, labels["again"])
    assert results[0][4] == DATA + 40 * 4 and results[0][5] == 40


# ---- #AC (SDM Vol. 3A, 6.15 "Interrupt 17 -- Alignment Check Exception") ------------------
def ring3_machine(src, cr0_am=True, eflags_ac=True, blocks=False):
    m = Machine(memory=1 << 20, blocks=blocks)
    t = install(m)
    m.load(assemble("start:\n" + src + "\nhlt\n"))
    if cr0_am:
        m.cpu.cr0 = m.cpu.cr0 | CR0_AM
    if eflags_ac:
        m.cpu.eflags = m.cpu.eflags | AC
    t.enter(m, ring=3, eip=0x1000)
    m.cpu.ebx = DATA
    return m


@pytest.mark.parametrize("insn", ["mov eax, [ebx+1]", "mov [ebx+2], eax", "movzx eax, word [ebx+1]",
                                  "add [ebx+3], eax", "push eax"])
def test_misaligned_access_at_cpl3_with_am_and_ac_is_ac0(insn):
    """SDM Vol. 3A 6.15: with CR0.AM = 1, EFLAGS.AC = 1 and CPL = 3, a word at an odd
    address or a doubleword not a multiple of 4 raises #AC with error code 0, a fault
    (EIP on the instruction). PUSH with ESP = 2 mod 4 too."""
    m = ring3_machine("sub esp, 2\n" + insn if insn == "push eax" else insn)
    start = 0x1000 + (3 if insn == "push eax" else 0)
    ev = m.run(10)
    assert (ev.kind, ev.vector, ev.error_code, ev.eip, ev.source) == ("exception", VEC_AC, 0,
                                                                       start, "fault")


@pytest.mark.parametrize("am, ac, ring", [(False, True, 3), (True, False, 3), (True, True, 0)])
def test_no_ac_unless_am_ac_and_cpl3_all_hold(am, ac, ring):
    """SDM Vol. 3A 6.15 (and Table 6-8's conditions): any of CR0.AM = 0, EFLAGS.AC = 0 or
    CPL < 3 turns alignment checking off; misaligned accesses then just work."""
    m = ring3_machine("mov dword [ebx+1], 0x55667788\nmov eax, [ebx+1]", am, ac)
    if ring == 0:
        m.cpu.cpl = 0
    ev = m.run(10)
    assert ev.kind == ("halt" if ring == 0 else "exception")   # HLT at ring 3 is #GP
    assert m.cpu.eax == 0x55667788


def test_popfd_setting_ac_turns_alignment_checking_on_also_for_blocks():
    """SDM Vol. 3A 6.15: EFLAGS.AC is set by POPFD at CPL 3 (Vol. 2B POPF: AC is writable
    at any CPL); the next misaligned access faults. A load loop translated before POPFD
    must not run misaligned loads after it."""
    src = ("mov ecx, 30\nagain:\nmov eax, [ebx+1]\nloop again\ncmp edx, 1\nje done\n"
           "mov edx, 1\npushfd\nor dword [esp], 0x40000\npopfd\nmov ecx, 30\njmp again\ndone:")
    results = []
    for blocks in (2, False):
        m = ring3_machine(src, eflags_ac=False, blocks=blocks)
        ev = m.run(1000)
        results.append((ev.kind, ev.vector, ev.error_code, ev.eip, m.cpu.ecx, m.cpu.eflags & AC))
    assert results[0] == results[1] == ("exception", VEC_AC, 0, 0x1005, 30, AC)
