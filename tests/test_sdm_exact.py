"""The machine where the Intel SDM is exact about it (issue 12, part 6): segment type
checks on flat segments, the two interrupt shadows, #AC, PVI, VIF/VIP on IRET, INTO,
MOV DRn, INVD and WBINVD. Each test names the SDM section it checks; the oracle is the
SDM's text, and Unicorn where Unicorn models the rule (the test_unicorn_* tests)."""
import struct

import pytest
import unicorn
from unicorn import x86_const as UX

from hvsim import Machine, assemble
from hvsim.arch import layout as L
from hvsim.arch.cr import CR0_AM, CR4_DE, CR4_PVI, CR4_VME, CR4_PCE, CR4_OSFXSR
from hvsim.arch.dr import DR6_BS, DR6_BD, DR7_GD
from hvsim.arch.flags import AC, FIXED1, IF, TF, VIF, VIP
from hvsim.arch.vectors import GP, UD, DB, OF as VEC_OF, AC as VEC_AC
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


# ---- INTO (SDM Vol. 2A, INT n/INTO/INT3/INT1) -------------------------------------------
def test_into_is_a_nop_with_of_clear_and_a_software_interrupt_4_with_of_set():
    """SDM Vol. 2A INTO: OF = 0, nothing happens; OF = 1, interrupt 4 (#OF) as a trap:
    routed to the host it is a 'software' exit on the INTO (like INT n), delivered
    through the guest IDT the handler sees the EIP *after* INTO."""
    m = Machine()
    m.load(assemble("start:\ninto\nmov eax, 0x7fffffff\nadd eax, 1\ninto\nhlt"))
    ev = m.run(100)
    assert (ev.kind, ev.vector, ev.error_code, ev.source, ev.eip, ev.length) == (
        "exception", VEC_OF, None, "software", 0x1009, 1)
    m = Machine(memory=1 << 20, exceptions="guest")
    t = install(m)
    t.gate(m, VEC_OF, 0x2000, kind="trap")
    m.load(assemble("start:\nmov eax, 0x7fffffff\nadd eax, 1\ninto\nhlt"))
    m.load(assemble("handler:\npop esi\nhlt", origin=0x2000), entry=0x1000)
    ev = m.run(100)
    assert ev.kind == "halt" and m.cpu.eip == 0x2002 and m.cpu.esi == 0x1009


def test_into_at_cpl3_through_a_dpl0_gate_is_gp():
    """SDM Vol. 2A INT n/INTO: the gate's DPL is checked as for INT n: DPL < CPL is
    #GP(vector * 8 + 2) (IDT, EXT = 0)."""
    m = Machine(memory=1 << 20)
    t = install(m)
    t.gate(m, VEC_OF, 0x2000, dpl=0)
    m.route(GP, "host")
    m.route(VEC_OF, "guest")
    m.load(assemble("start:\nmov eax, 0x7fffffff\nadd eax, 1\ninto\nhlt"))
    t.enter(m, ring=3, eip=0x1000)
    ev = m.run(100)
    assert (ev.vector, ev.error_code, ev.eip) == (GP, VEC_OF * 8 + 2, 0x1008)


# ---- MOV DRn (SDM Vol. 2B, MOV--Move to/from Debug Registers; Vol. 3A, 17.2) -------------
def test_debug_registers_reset_values_and_reserved_bits():
    """SDM Vol. 3A 10.1.1 Table 10-1: DR6 = FFFF0FF0H, DR7 = 00000400H after reset;
    17.2.3/17.2.4: reserved bits read back fixed whatever is written (all ones written:
    DR6 keeps bit 12 clear, DR7 bits 11, 12, 14, 15 clear; all zeros: the ones stay).
    (DR7 gets all ones but GD, which would make the next MOV DRn fault.)"""
    m = Machine()
    m.load(assemble(f"start:\nmov eax, dr6\nmov ebx, dr7\nmov ecx, 0xffffffff\nmov dr6, ecx\n"
                    f"mov ecx, {0xFFFFFFFF & ~DR7_GD}\nmov dr7, ecx\nmov esi, dr6\nmov edi, dr7\n"
                    f"xor ecx, ecx\nmov dr6, ecx\nmov dr7, ecx\nmov ecx, dr6\nmov edx, dr7\nhlt"))
    assert m.run(100).kind == "halt"
    assert (m.cpu.eax, m.cpu.ebx) == (0xFFFF0FF0, 0x400)
    assert (m.cpu.esi, m.cpu.edi) == (0xFFFFEFFF, 0xFFFF07FF)
    assert (m.cpu.ecx, m.cpu.edx) == (0xFFFF0FF0, 0x400)


def test_dr0_to_dr3_hold_any_address():
    """SDM Vol. 3A 17.2.1: DR0-DR3 hold 32-bit linear addresses (no breakpoint fires:
    hvsim does not model breakpoints, see op_mov_dr)."""
    m = Machine()
    m.load(assemble("start:\nmov eax, 0x12345678\nmov dr0, eax\nmov dr3, eax\nmov ebx, dr0\n"
                    "mov ecx, dr3\nhlt"))
    assert m.run(100).kind == "halt"
    assert m.cpu.ebx == m.cpu.ecx == m.cpu.dr0 == m.cpu.dr3 == 0x12345678


def test_dr4_dr5_alias_dr6_dr7_unless_cr4_de():
    """SDM Vol. 3A 17.2.2: with CR4.DE = 0, DR4/DR5 are DR6/DR7; with DE = 1 a reference
    to them is #UD (Vol. 2B MOV DRn)."""
    m = Machine()
    m.load(assemble("start:\nmov eax, 0x3\nmov dr4, eax\nmov esi, dr6\nmov edi, dr5\n"
                    f"mov eax, {CR4_DE}\nmov cr4, eax\nmov ebx, dr4\nhlt"))
    ev = m.run(100)
    assert (m.cpu.esi, m.cpu.edi) == (0xFFFF0FF3, 0x400)
    assert (ev.kind, ev.vector, ev.error_code, ev.eip) == ("exception", UD, None, 0x1016)


@pytest.mark.parametrize("insn, length", [("mov eax, dr7", 3), ("mov dr0, eax", 3),
                                          ("invd", 2), ("wbinvd", 2)])
@pytest.mark.parametrize("ring", [1, 3])
def test_mov_dr_invd_wbinvd_are_privileged(insn, length, ring):
    """SDM Vol. 2B MOV DRn, Vol. 2A INVD, Vol. 2C WBINVD: #GP(0) at CPL > 0 -- a fault,
    EIP on the instruction, with its length, so a trap-and-emulate monitor whose guest
    kernel runs in ring 1 can emulate and skip it."""
    m = Machine()
    m.load(assemble(f"start:\nmov eax, 0x55\n{insn}\nhlt"))
    m.cpu.cpl = ring
    ev = m.run(100)
    assert (ev.kind, ev.vector, ev.error_code, ev.source, ev.eip, ev.length) == (
        "exception", GP, 0, "fault", 0x1005, length)
    assert m.cpu.dr0 == 0 and m.cpu.dr7 == 0x400


def test_invd_wbinvd_at_cpl0_retire_as_no_ops():
    """SDM Vol. 2A INVD / Vol. 2C WBINVD at CPL 0: hvsim has no caches, so memory and
    registers are as before; the instructions retire (counted)."""
    m = Machine()
    m.load(assemble("start:\nmov dword [0x3000], 7\ninvd\nwbinvd\nmov eax, [0x3000]\nhlt"))
    assert m.run(100).kind == "halt" and m.cpu.eax == 7
    assert m.counters["instructions"] == 5


def test_general_detect_faults_before_a_debug_register_access():
    """SDM Vol. 3A 17.2.4 (GD) and 17.2.3 (BD): with DR7.GD = 1 any MOV DRn raises #DB
    as a fault before it executes, DR6.BD = 1 and GD cleared for the handler, which can
    then use the debug registers: run again, the MOV executes."""
    m = Machine()
    m.load(assemble(f"start:\nmov eax, {DR7_GD | 0x400}\nmov dr7, eax\nmov ebx, dr0\nhlt"))
    ev = m.run(100)
    assert (ev.kind, ev.vector, ev.error_code, ev.source, ev.eip) == (
        "exception", DB, None, "fault", 0x1008)
    assert m.cpu.dr6 & DR6_BD and not m.cpu.dr7 & DR7_GD
    m.cpu.dr0 = 0xABC
    assert m.run(100).kind == "halt" and m.cpu.ebx == 0xABC


# ---- cross-checks against Unicorn (QEMU's TCG), where it models the rule ------------------
# Unicorn does not model segment type checks on data accesses, #AC, PVI or DR6/DR7's
# reserved bits (it stores whatever is written), so those rules are checked against the
# SDM's text alone above.
UC_GDT = 0x9000


def unicorn_run(src, eflags=FIXED1, eax=0, cr4=None):
    """Run ``src`` (at 0x1000, ring 0, flat GDT: code 0x08, data 0x10) in Unicorn until
    the end or the first interrupt/exception. Returns (vector or None, error, EIP, regs)."""
    code = bytes(assemble(src, origin=0x1000).code)
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, code)
    gdt = struct.pack("<3Q", 0, make_descriptor(0, 0xFFFFF, 0xB, 1, 0, 1, 1, 1),
                      make_descriptor(0, 0xFFFFF, 0x3, 1, 0, 1, 1, 1))
    uc.mem_write(UC_GDT, gdt)
    uc.reg_write(UX.UC_X86_REG_GDTR, (0, UC_GDT, len(gdt) - 1, 0))
    uc.reg_write(UX.UC_X86_REG_SS, 0x10)
    uc.reg_write(UX.UC_X86_REG_ESP, 0x8000)
    uc.reg_write(UX.UC_X86_REG_EAX, eax)
    uc.reg_write(UX.UC_X86_REG_EFLAGS, eflags)
    if cr4 is not None:
        uc.reg_write(UX.UC_X86_REG_CR4, cr4)
    seen = []

    def on_interrupt(uc, intno, _):
        seen.append(intno)
        uc.emu_stop()

    uc.hook_add(unicorn.UC_HOOK_INTR, on_interrupt)
    error = None
    try:
        uc.emu_start(0x1000, 0x1000 + len(code), count=50)
    except unicorn.UcError as e:
        error = e.errno
    regs = {r: uc.reg_read(getattr(UX, f"UC_X86_REG_{r.upper()}"))
            for r in ("eax", "ebx", "ecx", "edx", "esi", "edi")}
    return (seen[0] if seen else None), error, uc.reg_read(UX.UC_X86_REG_EIP), regs


def test_unicorn_agrees_on_into():
    """SDM Vol. 2A INTO, against Unicorn: OF = 1 raises interrupt 4 with EIP past INTO
    (hvsim: the EIP its guest handler finds on the stack); OF = 0 falls through."""
    src = "mov eax, 0x7fffffff\nadd eax, {}\ninto\nmov ebx, 1\nnop"
    vector, _, uc_eip, _ = unicorn_run(src.format(1))
    m = Machine(memory=1 << 20, exceptions="guest")
    t = install(m)
    t.gate(m, VEC_OF, 0x2000, kind="trap")
    m.load(assemble("start:\n" + src.format(1) + "\nhlt"))
    m.load(assemble("pop esi\nhlt", origin=0x2000), entry=0x1000)
    assert m.run(100).kind == "halt"
    assert vector == VEC_OF and m.cpu.esi == uc_eip
    vector, error, _, uc_regs = unicorn_run(src.format(0))
    assert vector is None and error is None and uc_regs["ebx"] == 1


def test_unicorn_agrees_on_debug_register_reset_values_and_dr4_dr5():
    """SDM Vol. 3A Table 10-1 and 17.2.2, against Unicorn: DR6/DR7 after reset, read
    directly and through DR4/DR5 (CR4.DE = 0), and #UD for DR4 with CR4.DE = 1."""
    src = "mov eax, dr6\nmov ebx, dr7\nmov ecx, dr4\nmov edx, dr5\ninvd\nwbinvd\nnop"
    vector, error, _, uc_regs = unicorn_run(src)
    m = Machine()
    m.load(assemble("start:\n" + src + "\nhlt"))
    assert m.run(100).kind == "halt" and vector is None and error is None
    for r in ("eax", "ebx", "ecx", "edx"):
        assert getattr(m.cpu, r) == uc_regs[r], r
    _, error, uc_eip, _ = unicorn_run("mov ecx, dr4\nnop", cr4=CR4_DE)
    m = Machine()
    m.load(assemble("start:\nmov ecx, dr4\nhlt"))
    m.cpu.cr4 = CR4_DE
    ev = m.run(100)
    assert error == unicorn.UC_ERR_INSN_INVALID and (ev.vector, ev.eip) == (UD, uc_eip)


# ---- the two interrupt shadows (SDM Vol. 3A, 6.8.3; Vol. 3C, 25.4.2 Table 25-3) ----------
def shadow_machine(src, eflags=0):
    """Ring 0 with install()'s GDT (SS = 0x10), EAX = 0x10, [ESP] = 0x10 (for POP SS)."""
    m = Machine(memory=1 << 20)
    t = install(m)
    m.load(assemble("start:\n" + src + "\nnop\nnop\nhlt\n"))
    m.cpu.eax = t.data(0)
    m.cpu.esp = 0x8000
    m.memory[0x8000:0x8004] = [t.data(0), 0, 0, 0]
    m.cpu.eflags = FIXED1 | eflags
    return m


@pytest.mark.parametrize("load_ss, length", [("mov ss, ax", 2), ("pop ss", 1)])
def test_mov_ss_and_pop_ss_hold_the_single_step_trap_for_one_instruction(load_ss, length):
    """SDM Vol. 3A 6.8.3: after MOV SS / POP SS, debug exceptions -- the single-step trap
    of EFLAGS.TF included -- are held back until after the next instruction, so one #DB
    (DR6.BS = 1, Vol. 3A 17.2.3) follows the *pair*, with EIP past the second."""
    m = shadow_machine(f"{load_ss}\nmov ebx, 1", TF)
    ev = m.run(100)
    assert (ev.kind, ev.vector, ev.source) == ("exception", DB, "trap")
    assert ev.eip == 0x1000 + length + 5 and m.cpu.ebx == 1
    assert m.cpu.dr6 & DR6_BS
    assert m._st[L.INT_SHADOW] == 0


def test_sti_shadow_does_not_hold_the_single_step_trap():
    """SDM Vol. 3A 6.8.3 / Vol. 3C Table 25-3: blocking by STI holds back maskable
    interrupts only; the single-step trap comes right after STI (EIP past it)."""
    m = shadow_machine("sti\nmov ebx, 1", TF)
    ev = m.run(100)
    assert (ev.kind, ev.vector, ev.source, ev.eip) == ("exception", DB, "trap", 0x1001)
    assert m.cpu.ebx == 0
    assert m._st[L.INT_SHADOW] == L.BLOCKING_BY_STI       # interrupts still wait for mov ebx


@pytest.mark.parametrize("first", ["sti", "mov ss, ax"])
def test_both_shadows_hold_an_external_interrupt_for_one_instruction(first):
    """SDM Vol. 3A 6.8.3: an interrupt raised just after STI (IF was 0) or MOV SS is taken
    only after the next instruction."""
    m = shadow_machine(f"{first}\nmov ebx, 1", 0 if first == "sti" else IF)
    m.route(0x40, "host")
    m.step()
    expected = L.BLOCKING_BY_STI if first == "sti" else L.BLOCKING_BY_MOV_SS
    assert m._st[L.INT_SHADOW] == expected
    m.interrupt(0x40)
    ev = m.run(100)
    assert (ev.kind, ev.vector) == ("interrupt", 0x40)
    assert ev.eip == m.cpu.eip and m.cpu.ebx == 1      # after 'mov ebx, 1', not before


def test_unicorn_agrees_mov_ss_holds_the_single_step_trap_and_sti_does_not():
    """SDM Vol. 3A 6.8.3, against Unicorn: with TF = 1 the first #DB comes after the
    instruction following MOV SS, but right after STI."""
    for src, eflags in (("mov ss, ax\nmov ebx, 1\nnop\nnop", FIXED1 | TF | IF),
                        ("sti\nmov ebx, 1\nnop\nnop", FIXED1 | TF)):
        vector, _, uc_eip, uc_regs = unicorn_run(src, eflags, eax=0x10)
        m = shadow_machine(src.replace("\nnop\nnop", ""), eflags & ~FIXED1)
        ev = m.run(100)
        assert vector == ev.vector == DB
        assert ev.eip == uc_eip and m.cpu.ebx == uc_regs["ebx"]


# ---- PVI: protected-mode virtual interrupts (SDM Vol. 3A, 20.4; Vol. 2A CLI, Vol. 2B STI) --
def pvi_machine(src, ring=3, iopl=0, cr4=CR4_PVI, vip=False):
    m = Machine(memory=1 << 20)
    t = install(m)
    m.load(assemble("start:\n" + src + "\nhlt\n"))
    m.cpu.cr4 = cr4
    m.cpu.eflags = FIXED1 | IF | VIF | (iopl << 12) | (VIP if vip else 0)
    t.enter(m, ring=ring, eip=0x1000)
    return m


def test_pvi_cli_and_sti_at_cpl3_change_vif_not_if():
    """SDM Vol. 3A 20.4 and Vol. 2A CLI / Vol. 2B STI "Operation": with CR4.PVI = 1,
    CPL = 3 and IOPL < 3, CLI clears VIF and STI sets it (VIP = 0); IF is untouched and
    nothing traps."""
    m = pvi_machine("cli\nmov ebx, 1\npushfd\npop esi\nsti\npushfd\npop edi")
    ev = m.run(100)
    assert (ev.kind, ev.vector, ev.eip) == ("exception", GP, 0x100B)   # the HLT at ring 3
    assert m.cpu.ebx == 1
    assert m.cpu.esi & (VIF | IF) == IF and m.cpu.edi & (VIF | IF) == VIF | IF


def test_pvi_sti_with_vip_set_is_gp0():
    """SDM Vol. 2B STI: at CPL 3 with PVI = 1, STI while VIP = 1 is #GP(0) (the monitor's
    cue to deliver the pending virtual interrupt); VIF stays as it was."""
    m = pvi_machine("cli\nsti", vip=True)
    ev = m.run(100)
    assert (ev.kind, ev.vector, ev.error_code, ev.eip) == ("exception", GP, 0, 0x1001)
    assert m.cpu.eflags & (VIF | VIP) == VIP


@pytest.mark.parametrize("ring, cr4", [(3, 0), (1, CR4_PVI)])
def test_cli_gp0_without_pvi_or_below_cpl3(ring, cr4):
    """SDM Vol. 2A CLI: PVI applies at CPL 3 only; otherwise CLI above IOPL is #GP(0)."""
    m = pvi_machine("cli", ring=ring, cr4=cr4)
    ev = m.run(100)
    assert (ev.kind, ev.vector, ev.error_code, ev.eip) == ("exception", GP, 0, 0x1000)
    assert m.cpu.eflags & (VIF | IF) == VIF | IF


def test_pvi_with_iopl3_cli_clears_if():
    """SDM Vol. 2A CLI: CPL <= IOPL comes first: IF is cleared, VIF kept."""
    m = pvi_machine("cli\npushfd\npop esi", iopl=3)
    m.run(100)
    assert m.cpu.esi & (VIF | IF) == VIF


@pytest.mark.parametrize("bit", [CR4_VME, CR4_PCE, CR4_OSFXSR])
def test_mov_cr4_refuses_bits_whose_effect_is_not_modelled(bit):
    """SDM Vol. 2B MOV CRn: #GP(0) for a CR4 bit the processor does not support -- VME
    (virtual-8086 mode is not modelled), PCE (no RDPMC), OSFXSR (no FXSAVE/SSE). PVI,
    DE, TSD, PSE, PGE, MCE and VMXE are accepted and read back."""
    m = Machine()
    m.load(assemble(f"start:\nmov eax, {CR4_PVI | CR4_DE}\nmov cr4, eax\nmov eax, {bit}\n"
                    f"mov cr4, eax\nhlt"))
    ev = m.run(100)
    assert (ev.kind, ev.vector, ev.error_code, ev.eip) == ("exception", GP, 0, 0x100D)
    assert m.cpu.cr4 == CR4_PVI | CR4_DE


# ---- VIF/VIP: IRET at CPL 0 loads them, POPF never (SDM Vol. 2A IRET, Vol. 2B POPF) -------
def iret_machine(src, ring=0):
    m = Machine(memory=1 << 20)
    t = install(m)
    m.load(assemble("start:\n" + src + "\nhlt\nback:\npushfd\npop esi\nhlt\n"))
    t.enter(m, ring=ring, eip=0x1000)
    m.cpu.ebx = VIF | VIP
    m.cpu.ecx = t.code(ring)
    m.cpu.edx = t.code(3)
    m.cpu.edi = t.data(3)
    return m, t


def test_iret_at_cpl0_loads_vif_and_vip_also_into_an_outer_ring():
    """SDM Vol. 2A IRET "Operation": at CPL 0, EFLAGS(VIF, VIP) := tempEFLAGS, both for a
    return to the same privilege level and to an outer one (here ring 0 -> ring 3)."""
    m, t = iret_machine("pushfd\nor [esp], ebx\npush ecx\npush back\niretd")
    ev = m.run(100)
    assert ev.kind == "halt" and m.cpu.esi & (VIF | VIP) == VIF | VIP
    m, t = iret_machine(f"push edi\npush {t.stack_top(3)}\npushfd\nor [esp], ebx\npush edx\n"
                        f"push back\niretd")
    ev = m.run(100)
    assert m.cpu.cpl == 3 and m.cpu.esi & (VIF | VIP) == VIF | VIP


def test_iret_above_cpl0_and_popf_leave_vif_and_vip_alone():
    """SDM Vol. 2A IRET: VIF/VIP are loaded only at CPL 0; Vol. 2B POPF (protected mode,
    not V86): VIP, VIF and VM are unaffected at every CPL."""
    m, _ = iret_machine("pushfd\nor [esp], ebx\npush ecx\npush back\niretd", ring=3)
    m.run(100)
    assert m.cpu.esi & (VIF | VIP) == 0
    m, _ = iret_machine("pushfd\nor [esp], ebx\npopfd\npushfd\npop esi\nhlt")
    m.run(100)
    assert m.cpu.esi & (VIF | VIP) == 0
    m, _ = iret_machine("pushfd\nand dword [esp], 0xFFE7FFFF\npopfd\npushfd\npop esi\nhlt")
    m.cpu.eflags = m.cpu.eflags | VIF | VIP
    m.run(100)
    assert m.cpu.esi & (VIF | VIP) == VIF | VIP
