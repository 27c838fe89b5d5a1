"""The CPL x IOPL truth table of the sensitive flag and I/O instructions, the
virtualizable-x86 switch, and the privileged instructions -- run as real instructions.

Oracle: small Python restatements of the SDM "Operation" sections, written here from
the SDM and not imported from hvsim:
* POPF (Vol. 2B, POPF/POPFD, protected mode): CPL 0 may change IF and IOPL;
  0 < CPL <= IOPL may change IF but not IOPL; CPL > IOPL changes neither -- and none
  of it faults. RF, VM, VIF, VIP are never loaded. The other flags always are.
* PUSHF (Vol. 2B, PUSHF/PUSHFD): pushes EFLAGS (RF and VM cleared) at any CPL.
* CLI / STI (Vol. 2A/2B): #GP(0) iff CPL > IOPL (protected mode, PVI/VME off).
* IN / OUT (Vol. 1, 19.5 and 19.5.2): #GP(0) iff CPL > IOPL and the TSS I/O
  permission bitmap does not clear every bit of ports port .. port+size-1 (or there
  is no bitmap).
* The privileged instructions (Vol. 3A, 5.9): #GP(0) at CPL > 0.
A #GP is a fault: EIP stays on the instruction and the instruction has no effect.

Each case builds a fresh machine with a GDT and a TSS, moves it to ring ``cpl`` with
``m.cpu.cpl`` (flat segments of that DPL), sets IOPL through ``m.cpu.eflags`` and runs
the instruction with exceptions="host", so a #GP comes back as an 'exception' event.
"""
import pytest

from hvsim import Machine, assemble
from hvsim.rings import make_descriptor, make_tss, put_descriptors

# EFLAGS bits (SDM Vol. 1, Figure 3-8)
CF, FIXED1, PF, AF, ZF, SF, TF, IF, DF, OF = (1 << 0, 1 << 1, 1 << 2, 1 << 4, 1 << 6, 1 << 7,
                                              1 << 8, 1 << 9, 1 << 10, 1 << 11)
IOPL_SHIFT = 12
NT, RF, VM, AC, VIF, VIP, ID = 1 << 14, 1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20, 1 << 21
STATUS = CF | PF | AF | ZF | SF | OF
GP = 13

MEM = 1 << 16
ORG = 0x1000
GDT = 0x8000
TSS_MAP = 0x8100           # TSS with an I/O bitmap
TSS_NOMAP = 0x8400         # TSS whose I/O map base is past its limit
BUF = 0x9000               # scratch memory operand
SEL_TSS_MAP = 3 << 3
SEL_TSS_NOMAP = 4 << 3
SEL_LDT = 5 << 3
LDT = 0x8800
RINGS = range(4)
CODE_SEL = [((6 + dpl) << 3) | dpl for dpl in RINGS]   # a code segment of each DPL, RPL = DPL
ALLOWED_PORTS = range(0x7C, 0x81)     # bitmap bits clear for 0x7C..0x80, set for all others


def _bitmap():
    bm = bytearray(b"\xFF" * 32)                        # ports 0x00..0xFF
    for p in ALLOWED_PORTS:
        bm[p >> 3] &= ~(1 << (p & 7)) & 0xFF
    return bytes(bm)


def machine(cpl=0, iopl=0, eflags=0, tss=SEL_TSS_MAP, virtualizable=False):
    """A machine at ring ``cpl`` with IOPL ``iopl``, a GDT, TR loaded with ``tss``."""
    m = Machine(memory=MEM, exceptions="host")
    m.virtualizable = virtualizable
    tss_map = make_tss(esp0=MEM, ss0=0x10, io_bitmap=_bitmap())
    tss_nomap = make_tss(esp0=MEM, ss0=0x10, iomap_base=0x200)
    limit = put_descriptors(m.memory, GDT, [
        0,
        make_descriptor(0, 0xFFFFF, 0xB, 1, 0, 1, 1, 1),          # 0x08 code
        make_descriptor(0, 0xFFFFF, 0x3, 1, 0, 1, 1, 1),          # 0x10 data
        make_descriptor(TSS_MAP, len(tss_map) - 1, 0x9, 0, 0, 1, 0, 0),
        make_descriptor(TSS_NOMAP, len(tss_nomap) - 1, 0x9, 0, 0, 1, 0, 0),
        make_descriptor(LDT, 7, 0x2, 0, 0, 1, 0, 0),              # 0x28 an (empty) LDT
    ] + [make_descriptor(0, 0xFFFFF, 0xB, 1, dpl, 1, 1, 1)        # 0x30.. code DPL 0..3
         for dpl in RINGS])
    m.memory[TSS_MAP:TSS_MAP + len(tss_map)] = list(tss_map)
    m.memory[TSS_NOMAP:TSS_NOMAP + len(tss_nomap)] = list(tss_nomap)
    m.cpu.gdtr_base, m.cpu.gdtr_limit = GDT, limit
    # EFLAGS is set the way a kernel would: POPF at ring 0 (which also keeps bit 1 set,
    # see test_eflags_setter_keeps_reserved_bit_1)
    m.load(assemble(f"ltr ax\npush {(iopl << IOPL_SHIFT) | eflags:#x}\npopf"))
    m.cpu.eax = tss
    assert m.run(max_steps=3).kind == "budget" and m.cpu.tr == tss
    assert m.cpu.eflags == FIXED1 | (iopl << IOPL_SHIFT) | eflags
    m.cpu.eax = 0
    m.cpu.esp = MEM
    m.cpu.cpl = cpl
    return m


def run(m, src, steps=None):
    prog = assemble(src, origin=ORG)
    m.load(prog)
    n = steps if steps is not None else len(prog.listing)
    return m.run(max_steps=n)


def assert_gp0(m, ev, at=ORG):
    assert ev.kind == "exception", str(ev)
    assert (ev.vector, ev.error_code, ev.eip, ev.source) == (GP, 0, at, "fault")
    assert m.cpu.eip == at                      # a fault: EIP stays on the instruction


# --- the SDM, restated ----------------------------------------------------------------------
def sdm_popf(old, popped, cpl):
    """EFLAGS after POPF (32-bit operand, protected mode)."""
    iopl = (old >> IOPL_SHIFT) & 3
    writable = STATUS | TF | DF | NT | AC | ID
    if cpl <= iopl:
        writable |= IF
    if cpl == 0:
        writable |= 3 << IOPL_SHIFT
    return (old & ~writable) | (popped & writable) | FIXED1


def sdm_io_allowed(cpl, iopl, port, size, bitmap_ports):
    if cpl <= iopl:
        return True
    return bitmap_ports is not None and all(p in bitmap_ports for p in range(port, port + size))



# --- POPF / PUSHF -------------------------------------------------------------------------
@pytest.mark.parametrize("cpl", RINGS)
@pytest.mark.parametrize("iopl", RINGS)
@pytest.mark.parametrize("if0", [0, IF])
def test_popf_truth_table(cpl, iopl, if0):
    new_iopl = (iopl + 1) % 4                  # always a different IOPL
    popped = (new_iopl << IOPL_SHIFT) | (if0 ^ IF) | STATUS | DF | AC | ID | NT \
        | RF | VM | VIF | VIP                 # these four must never be loaded
    m = machine(cpl, iopl, if0)
    old = m.cpu.eflags
    ev = run(m, f"push {popped:#x}\npopf")
    assert ev.kind == "budget"                 # no fault at any CPL: the silent failure
    assert m.cpu.eflags == sdm_popf(old, popped, cpl)
    assert m.cpu.esp == MEM
    # the two rules, spelled out
    assert bool(m.cpu.eflags & IF) == bool(if0 ^ IF if cpl <= iopl else if0)
    assert m.cpu.iopl == (new_iopl if cpl == 0 else iopl)


@pytest.mark.parametrize("cpl", RINGS)
@pytest.mark.parametrize("iopl", RINGS)
def test_pushf_shows_iopl_and_if_at_every_ring(cpl, iopl):
    m = machine(cpl, iopl, IF | CF | ZF)
    ev = run(m, "pushf")
    assert ev.kind == "budget"
    assert m.cpu.esp == MEM - 4
    image = int.from_bytes(bytes(m.memory[MEM - 4:MEM]), "little")
    assert image == FIXED1 | IF | CF | ZF | (iopl << IOPL_SHIFT)


@pytest.mark.parametrize("cpl", RINGS)
@pytest.mark.parametrize("iopl", RINGS)
@pytest.mark.parametrize("if0", [0, IF])
def test_iret_same_ring_obeys_the_popf_rules(cpl, iopl, if0):
    """IRET to the same ring loads EFLAGS with POPF's restrictions (SDM Vol. 2A, IRET:
    IF only if CPL <= IOPL, IOPL only at CPL 0) -- again without a fault."""
    new_iopl = (iopl + 1) % 4
    popped = (new_iopl << IOPL_SHIFT) | (if0 ^ IF) | STATUS
    m = machine(cpl, iopl, if0)
    old = m.cpu.eflags
    ev = run(m, f"push {popped:#x}\npush {CODE_SEL[cpl]:#x}\npush target\niret\n"
                f"target: nop", steps=4)
    assert ev.kind == "budget"
    assert m.cpu.cs == CODE_SEL[cpl] and m.cpu.cpl == cpl and m.cpu.esp == MEM
    assert m.cpu.eflags == sdm_popf(old, popped, cpl)


# --- CLI / STI ----------------------------------------------------------------------------
@pytest.mark.parametrize("cpl", RINGS)
@pytest.mark.parametrize("iopl", RINGS)
@pytest.mark.parametrize("insn, before, after", [("cli", IF, 0), ("sti", 0, IF)])
def test_cli_sti_truth_table(cpl, iopl, insn, before, after):
    m = machine(cpl, iopl, before)
    ev = run(m, insn)
    if cpl > iopl:
        assert_gp0(m, ev)
        assert m.cpu.eflags & IF == before
    else:
        assert ev.kind == "budget"
        assert m.cpu.eflags & IF == after
    assert m.cpu.iopl == iopl


# --- IN / OUT -----------------------------------------------------------------------------
IO_CASES = [
    # source, port, size, direction
    ("out 0x80, al", 0x80, 1, "out"),
    ("out 0x81, al", 0x81, 1, "out"),
    ("in al, 0x80", 0x80, 1, "in"),
    ("in al, 0x7b", 0x7B, 1, "in"),
    ("out 0x7c, eax", 0x7C, 4, "out"),       # 0x7C..0x7F all clear
    ("out 0x7e, eax", 0x7E, 4, "out"),       # 0x7E..0x81: 0x81 is set
    ("mov edx, 0x7d\nin eax, dx", 0x7D, 4, "in"),
    ("mov edx, 0x80\nin eax, dx", 0x80, 4, "in"),
    # 16-bit operand size (66h): two ports, two bitmap bits
    ("out 0x7f, ax", 0x7F, 2, "out"),        # 0x7F, 0x80: clear, in two bitmap bytes
    ("out 0x80, ax", 0x80, 2, "out"),        # 0x81 is set
    ("mov edx, 0x7b\nin ax, dx", 0x7B, 2, "in"),
    ("mov edx, 0x7c\nin ax, dx", 0x7C, 2, "in"),
]


@pytest.mark.parametrize("cpl", RINGS)
@pytest.mark.parametrize("iopl", RINGS)
@pytest.mark.parametrize("src, port, size, direction", IO_CASES)
def test_in_out_iopl_and_bitmap(cpl, iopl, src, port, size, direction):
    m = machine(cpl, iopl)
    ev = run(m, src)
    insn_at = ORG + (5 if src.startswith("mov") else 0)
    if sdm_io_allowed(cpl, iopl, port, size, set(ALLOWED_PORTS)):
        assert ev.kind == "io"                  # an unclaimed port: the host sees the access
        assert (ev.port, ev.size, ev.direction, ev.eip) == (port, size, direction, insn_at)
    else:
        assert_gp0(m, ev, at=insn_at)
        assert m.counters["io_in"] + m.counters["io_out"] == 0


@pytest.mark.parametrize("cpl", RINGS)
@pytest.mark.parametrize("iopl", RINGS)
def test_in_out_without_bitmap(cpl, iopl):
    """A TSS whose I/O map base lies past its limit refuses every port above IOPL."""
    m = machine(cpl, iopl, tss=SEL_TSS_NOMAP)
    ev = run(m, "out 0x80, al")
    if sdm_io_allowed(cpl, iopl, 0x80, 1, None):
        assert ev.kind == "io" and ev.port == 0x80
    else:
        assert_gp0(m, ev)


def test_console_port_is_also_guarded():
    """An in-core device does not bypass the check: OUT 0xE9 at CPL 3, IOPL 0 is #GP(0)."""
    m = machine(3, 0)
    ev = run(m, "out 0xe9, al")
    assert_gp0(m, ev)
    assert m.console == ""
    m = machine(3, 3)
    m.cpu.eax = ord("k")
    ev = run(m, "out 0xe9, al")
    assert ev.kind == "budget" and m.console == "k"


# --- the virtualizable x86 ----------------------------------------------------------------
SENSITIVE = [
    ("popf", "push 0x2\npopf", 1),             # (source, instruction index of the sensitive one)
    ("pushf", "pushf", 0),
    ("sgdt", f"sgdt [{BUF:#x}]", 0),
    ("sidt", f"sidt [{BUF:#x}]", 0),
    ("smsw r32", "smsw eax", 0),
    ("smsw m16", f"smsw [{BUF:#x}]", 0),
    ("str", "str eax", 0),
    ("sldt", "sldt eax", 0),
    # the rest of Robin & Irvine's list that hvsim's switch also covers
    ("lar", "mov ecx, 0x10\nlar eax, ecx", 1),
    ("lsl", "mov ecx, 0x10\nlsl eax, ecx", 1),
    ("verr", "mov ecx, 0x10\nverr ecx", 1),
    ("verw", "mov ecx, 0x10\nverw ecx", 1),
    ("mov r32, cs", "mov eax, cs", 0),
    ("push cs", "push cs", 0),
]


def _observable(m):
    return (m.cpu.eflags, m.cpu.esp, m.cpu.eax, m.cpu.eip,
            bytes(m.memory[BUF:BUF + 8]), bytes(m.memory[MEM - 8:MEM]))


@pytest.mark.parametrize("cpl", RINGS)
@pytest.mark.parametrize("name, src, at", SENSITIVE, ids=[s[0] for s in SENSITIVE])
def test_virtualizable_traps_sensitive_instructions_above_ring0(cpl, name, src, at):
    plain = machine(cpl, 0, IF)
    virt = machine(cpl, 0, IF, virtualizable=True)
    ev_plain = run(plain, src)
    ev_virt = run(virt, src)
    assert ev_plain.kind == "budget"          # the real x86: no trap at any ring
    if cpl == 0:
        assert ev_virt.kind == "budget"       # ring 0 behaves as before
        assert _observable(virt) == _observable(plain)
    else:
        insn_at = [a for a, *_ in assemble(src, origin=ORG).listing][at]
        assert_gp0(virt, ev_virt, at=insn_at)
        # nothing was stored, popped or pushed by the trapping instruction
        assert bytes(virt.memory[BUF:BUF + 8]) == bytes(8)
        assert virt.cpu.eax == 0
        assert virt.cpu.esp == (MEM - 4 if name == "popf" else MEM)


@pytest.mark.parametrize("cpl", RINGS)
def test_virtualizable_traps_iret_above_ring0(cpl):
    """IRET is not in Robin & Irvine's list, but it loads EFLAGS by POPF's silent rule
    (IF kept when CPL > IOPL), so a monitor's virtual IF needs it to trap as well."""
    src = f"push {FIXED1 | IF:#x}\npush {CODE_SEL[cpl]:#x}\npush back\niret\nback:\nnop"
    for virtualizable in (False, True):
        m = machine(cpl, 0, IF, virtualizable=virtualizable)
        m.cpu.cs = CODE_SEL[cpl]
        prog = assemble(src, origin=ORG)
        m.load(prog)
        ev = m.run(max_steps=5)                      # push, push, push, iret, nop
        back = prog.labels["back"]
        if virtualizable and cpl > 0:
            assert_gp0(m, ev, at=prog.listing[3][0])
            assert m.cpu.esp == MEM - 12             # the frame is still on the stack
        else:
            assert ev.kind == "budget"
            assert (m.cpu.eip, m.cpu.esp) == (back + 1, MEM)


def test_virtualizable_values_at_ring0_are_the_real_ones():
    m = machine(0, 0, virtualizable=True)
    ev = run(m, f"sgdt [{BUF:#x}]\nstr eax\nsmsw ebx")
    assert ev.kind == "budget"
    assert int.from_bytes(bytes(m.memory[BUF:BUF + 2]), "little") == m.cpu.gdtr_limit
    assert int.from_bytes(bytes(m.memory[BUF + 2:BUF + 6]), "little") == GDT
    assert m.cpu.eax == SEL_TSS_MAP
    assert m.cpu.ebx == m.cpu.cr0


# --- privileged instructions --------------------------------------------------------------
PRIVILEGED = [
    ("hlt", "hlt"),
    ("lgdt", f"lgdt [{BUF:#x}]"),
    ("lidt", f"lidt [{BUF:#x}]"),
    ("ltr", "ltr ax"),
    ("lldt", "lldt ax"),
    ("mov r32, cr0", "mov eax, cr0"),
    ("mov cr0, r32", "mov cr0, eax"),
    ("mov r32, cr2", "mov eax, cr2"),
    ("mov cr3, r32", "mov cr3, eax"),
    ("mov r32, cr4", "mov eax, cr4"),
    ("mov cr4, r32", "mov cr4, eax"),
    ("clts", "clts"),
    ("lmsw", "lmsw ax"),
    ("invlpg", f"invlpg [{BUF:#x}]"),
    ("rdmsr", "rdmsr"),
    ("wrmsr", "wrmsr"),
    ("mov r32, dr7", "mov eax, dr7"),          # SDM Vol. 2B, MOV to/from Debug Registers
    ("mov dr0, r32", "mov dr0, eax"),
    ("invd", "invd"),                          # SDM Vol. 2A, INVD
    ("wbinvd", "wbinvd"),                      # SDM Vol. 2C, WBINVD
]


def _system_state(m):
    c = m.cpu
    return (c.cr0, c.cr2, c.cr3, c.cr4, c.gdtr_base, c.gdtr_limit, c.idtr_base, c.idtr_limit,
            c.tr, c.ldtr, c.eax, c.edx, c.eflags, c.esp, c.tsc, c.dr0, c.dr7)


@pytest.mark.parametrize("cpl", [1, 2, 3])
@pytest.mark.parametrize("name, src", PRIVILEGED, ids=[p[0] for p in PRIVILEGED])
@pytest.mark.parametrize("iopl", [0, 3])
def test_privileged_instructions_gp_above_ring0(cpl, name, src, iopl):
    """IOPL does not matter: privilege is CPL 0 only (SDM Vol. 3A, 5.9)."""
    m = machine(cpl, iopl)
    m.memory[BUF:BUF + 6] = [0x17, 0, 0, 0x20, 0, 0]     # a pseudo-descriptor LGDT would load
    m.cpu.eax = SEL_TSS_NOMAP if name in ("ltr",) else (SEL_LDT if name == "lldt" else 0x8)
    m.cpu.ecx = 0x10                                      # IA32_TIME_STAMP_COUNTER
    m.cpu.cr2 = 0x1234
    before = _system_state(m)
    ev = run(m, src)
    assert_gp0(m, ev)
    assert _system_state(m) == before
    assert m.counters["hlt"] == 0


def test_privileged_instructions_work_at_ring0():
    """The same instructions at CPL 0 do their job (so the #GP above is about CPL)."""
    m = machine(0, 0)
    m.memory[BUF:BUF + 6] = [0xFF, 0x07, 0, 0x40, 0, 0]  # limit 0x7FF, base 0x4000
    ev = run(m, f"lidt [{BUF:#x}]\nmov eax, {SEL_TSS_NOMAP}\nltr ax\nmov eax, {SEL_LDT}\n"
                f"lldt ax\nmov eax, cr0\nor eax, 8\nmov cr0, eax\nclts\nmov ecx, 0x10\nrdmsr\nhlt")
    assert ev.kind == "halt"
    assert (m.cpu.idtr_base, m.cpu.idtr_limit) == (0x4000, 0x7FF)
    assert m.cpu.tr == SEL_TSS_NOMAP and m.cpu.ldtr == SEL_LDT
    assert not m.cpu.cr0 & 8                              # TS set by MOV CR0, cleared by CLTS
    assert m.counters.exceptions == {}


def test_eflags_setter_keeps_reserved_bit_1():
    """Bit 1 of EFLAGS is reserved and always 1 (SDM Vol. 1, 3.4.3), also after a host write."""
    m = Machine(memory=MEM)
    m.cpu.eflags = IF
    assert m.cpu.eflags == FIXED1 | IF
    run(m, "pushf")
    assert int.from_bytes(bytes(m.memory[MEM - 4:MEM]), "little") == FIXED1 | IF
