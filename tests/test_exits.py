"""Structured exits: an exit caused by an instruction carries it as the core decoded it
(hvsim/instruction.py), and monitors reach guest memory in bulk, through the guest's
paging, with the CPU's own faults (Machine.read_linear / write_linear).

Oracles: capstone (an independent disassembler) for the mnemonic, operands and length
of every trapping instruction; the registers and segment bases the test set up for
effective and linear addresses; the CPU's own #PF (error code, CR2) for the faults of
the bulk accessors.
"""
import numpy as np
import pytest

from hvsim import Machine, assemble
from hvsim.arch.pte import PTE_P, PTE_RW, PTE_US, PTE_A, PTE_D
from hvsim.machine import GuestMemoryError

capstone = pytest.importorskip("capstone")
_CS = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)

ORG = 0x1000

# instructions that leave run() at CPL 3 (each privileged or, here, routed): (source, kind)
TRAPPING = [
    ("lidt [ebx + 8]", "exception"), ("lgdt [0x2125]", "exception"),
    ("sgdt fs:[eax + ecx*4 - 4]", None), ("cli", "exception"), ("sti", "exception"),
    ("hlt", "exception"), ("out 0xe9, al", "exception"), ("in eax, dx", "exception"),
    ("out dx, eax", "exception"), ("mov cr3, eax", "exception"), ("mov eax, cr0", "exception"),
    ("mov cr0, ecx", "exception"), ("lmsw ax", "exception"), ("wrmsr", "exception"),
    ("rdmsr", "exception"), ("clts", "exception"), ("invlpg [esi + 0x10]", "exception"),
    ("int 0x80", "exception"), ("ltr ax", "exception"), ("lldt [ebx]", "exception"),
    ("iretd", None), ("out dx, ax", "exception"), ("in ax, 0x60", "exception"),
    ("mov dr7, eax", "exception"), ("mov esi, dr6", "exception"), ("invd", "exception"),
    ("wbinvd", "exception"),
]


def _machine_at_cpl3(source):
    m = Machine(memory=1 << 20)
    m.load(assemble(source + "\nhlt", origin=ORG))
    m.route(range(256), "host")
    m.cpu.cpl = 3
    m.cpu.eax, m.cpu.ebx, m.cpu.ecx, m.cpu.esi = 0x3000, 0x2000, 0x10, 0x4000
    m.cpu.edx = 0xE9
    return m


@pytest.mark.parametrize("source,kind", [t for t in TRAPPING if t[1]])
def test_a_trapping_instruction_exits_decoded_as_capstone_reads_it(source, kind):
    m = _machine_at_cpl3(source)
    ev = m.run()
    assert ev.kind == kind and ev.eip == ORG
    code = bytes(m.memory[ORG:ORG + 16])
    (ref,) = list(_CS.disasm(code, ORG, count=1))
    insn = ev.insn
    assert insn is not None
    assert insn.length == ref.size == ev.length
    assert insn.mnemonic == ref.mnemonic
    assert str(insn) == f"{ref.mnemonic} {ref.op_str}".strip()
    assert insn.address == ORG


def test_the_memory_operand_carries_segment_effective_and_linear_address():
    """lidt fs:[ebx + esi*4 + 0x20] with FS based at 0x5000: ea = ebx + 4*esi + 0x20."""
    m = _machine_at_cpl3("lidt fs:[ebx + esi*4 + 0x20]")
    m.cpu.set_segment("fs", 0x23, base=0x5000, limit=0xFFFFF)
    ev = m.run()
    mem = ev.insn.mem
    ea = (0x2000 + 4 * 0x4000 + 0x20) & 0xFFFFFFFF
    assert (mem.segment, mem.base, mem.index, mem.scale, mem.disp) == ("fs", "ebx", "esi", 2, 0x20)
    assert mem.ea == ea and mem.linear == 0x5000 + ea
    assert ev.insn.rm is None and ev.insn.reg == 3                 # 0F 01 /3 is LIDT


def test_a_negative_displacement_and_an_ebp_base_default_to_ss():
    m = _machine_at_cpl3("lgdt [ebp - 8]")
    m.cpu.ebp = 0x8000
    m.cpu.set_segment("ss", 0x2B, base=0x100, limit=0xFFFFFFFF)
    ev = m.run()
    assert ev.insn.mem.segment == "ss"
    assert ev.insn.mem.ea == 0x8000 - 8 and ev.insn.mem.linear == 0x100 + 0x8000 - 8
    assert str(ev.insn) == "lgdt [ebp - 8]"


def test_register_forms_name_their_registers():
    ev = _machine_at_cpl3("mov cr3, eax").run()
    assert (ev.insn.opcode, ev.insn.reg, ev.insn.rm, ev.insn.rm_name) == (0x122, 3, 0, "eax")
    ev = _machine_at_cpl3("mov edi, cr0").run()
    assert (ev.insn.opcode, ev.insn.reg, ev.insn.rm_name) == (0x120, 0, "edi")


def test_io_exits_and_int_n_carry_their_instruction():
    m = Machine(memory=1 << 20)
    m.load(assemble("mov edx, 0x3f8\nout dx, al\nin eax, 0x71\nint 0x30\nhlt", origin=ORG))
    m.route(0x30, "host")
    ev = m.run()
    assert (ev.kind, ev.port, ev.insn.mnemonic, ev.insn.opcode, ev.insn.size) == ("io", 0x3F8, "out", 0xEE, 1)
    m.cpu.eip = ev.eip + ev.insn.length
    ev = m.run()
    assert (ev.kind, ev.port, ev.insn.opcode, ev.insn.imm, ev.insn.size) == ("io", 0x71, 0xE5, 0x71, 4)
    m.cpu.eip = ev.eip + ev.insn.length
    ev = m.run()
    assert (ev.kind, ev.source, ev.insn.mnemonic, ev.insn.imm) == ("exception", "software", "int", 0x30)
    m.cpu.eip = ev.eip + ev.insn.length
    ev = m.run()
    assert (ev.kind, str(ev.insn)) == ("halt", "hlt")


def test_exits_without_an_instruction_of_their_own_carry_none():
    m = Machine(memory=1 << 20, timer=(50, 0x40))
    m.load(assemble("sti\nagain: jmp again", origin=ORG))
    m.route(0x40, "host")
    assert m.run(10).kind == "budget" and m.run(10).insn is None
    ev = m.run()
    assert ev.kind == "interrupt" and ev.insn is None
    # an instruction fetch that faults (#GP: EIP beyond the CS limit) has no instruction
    m2 = Machine(memory=1 << 20)
    m2.cpu.set_segment("cs", 0x08, base=0, limit=0xFFF)
    m2.cpu.eip = 0x2000
    ev = m2.run()
    assert (ev.kind, ev.vector, ev.insn) == ("exception", 13, None)


def test_a_fault_inside_a_translated_loop_reports_the_faulting_instruction():
    """Blocks never exit: a check that fails ends the block before the instruction, which
    the interpreter then runs -- so the exit still names the instruction that faulted."""
    m = Machine(memory=1 << 20)
    m.load(assemble("""
        mov ecx, 5000
    top:
        add eax, ecx
        mov [ebx], eax
        dec ecx
        jnz top
        mov ebx, 0x200000
        mov [ebx + 4], eax
        hlt""", origin=ORG))
    m.cpu.ebx = 0x8000
    ev = m.run()
    assert m.counters["instructions"] > 20_000
    assert ev.kind == "bus_error"
    assert ev.insn is None                   # a bus error is not an instruction's exit...
    m2 = Machine(memory=1 << 20)
    m2.load(assemble("mov ecx, 5000\ntop: add eax, ecx\ndec ecx\njnz top\ncli\nhlt", origin=ORG))
    m2.cpu.cpl = 3
    ev = m2.run()
    assert (ev.vector, ev.insn.mnemonic, ev.eip) == (13, "cli", ORG + 10)  # ...a #GP is


# ---- bulk guest memory by linear address ----------------------------------------------
def _paged(user_pages=True):
    """A machine with 32-bit paging: linear 0x400000.. maps frames 0x30000 and 0x10000
    (not contiguous), linear 0x402000 is not present."""
    m = Machine(memory=1 << 20)
    pd, pt = 0x20000, 0x21000
    us = PTE_US if user_pages else 0

    def put(addr, value):
        m.memory[addr:addr + 4] = np.frombuffer(int(value).to_bytes(4, "little"), np.uint8)
    for i in range(256):                       # identity map the first MiB (code, tables)
        put(0x22000 + 4 * i, (i << 12) | PTE_P | PTE_RW | PTE_US)
    put(pd, 0x22000 | PTE_P | PTE_RW | PTE_US)
    put(pd + 4, pt | PTE_P | PTE_RW | PTE_US)                    # 0x400000..0x7FFFFF
    put(pt + 0, 0x30000 | PTE_P | PTE_RW | us)
    put(pt + 4, 0x10000 | PTE_P | us)                            # read-only
    m.cpu.cr3 = pd
    m.cpu.cr0 = m.cpu.cr0 | 0x80000000
    return m, pd, pt


def test_read_linear_follows_the_guests_page_tables_across_pages_and_sets_accessed():
    m, pd, pt = _paged()
    m.memory[0x30FFE:0x31000] = [1, 2]
    m.memory[0x10000:0x10002] = [3, 4]
    assert m.read_linear(0x400FFE, 4) == bytes([1, 2, 3, 4])
    assert m.memory[pd + 4] & PTE_A and m.memory[pt] & PTE_A and m.memory[pt + 4] & PTE_A
    assert not m.memory[pt] & PTE_D                           # a read sets no dirty flag


def test_write_linear_sets_dirty_and_a_fault_on_a_later_page_writes_nothing():
    m, pd, pt = _paged()
    m.write_linear(0x400010, b"\xAA\xBB")
    assert bytes(m.memory[0x30010:0x30012]) == b"\xAA\xBB" and m.memory[pt] & PTE_D
    before = bytes(m.memory[0x30FF0:0x31000])
    with pytest.raises(GuestMemoryError) as e:
        m.write_linear(0x400FF8, bytes(range(16)), user=True)   # second page is read-only
    assert bytes(m.memory[0x30FF0:0x31000]) == before
    assert (e.value.kind, e.value.vector, e.value.address) == ("page_fault", 14, 0x401000)


@pytest.mark.parametrize("lin,write,user_pages", [
    (0x402000, False, True), (0x401000, True, True), (0x400000, False, False),
    (0x400000, True, False), (0x800000, False, True)])
def test_bulk_access_faults_with_the_error_code_and_address_the_cpu_gives(lin, write, user_pages):
    """The same access made by a ring-3 instruction: #PF with this error code and CR2."""
    m, _, _ = _paged(user_pages)
    with pytest.raises(GuestMemoryError) as e:
        if write:
            m.write_linear(lin, b"\0\0\0\0", user=True)
        else:
            m.read_linear(lin, 4, user=True)
    m.load(assemble(f"mov ebx, {lin:#x}\n" + ("mov [ebx], eax" if write else "mov eax, [ebx]")
                    + "\nhlt", origin=ORG))
    m.cpu.cpl = 3
    ev = m.run()
    assert (ev.vector, ev.error_code, ev.address) == (14, e.value.error_code, e.value.address)


def test_a_host_write_into_running_code_is_seen_by_the_next_fetch():
    m = Machine(memory=1 << 20)
    m.load(assemble("top: mov eax, 1\njmp top", origin=ORG))
    m.run(2000)                                         # decoded, hot, translated
    m.write_physical(ORG + 1, (7).to_bytes(4, "little"))   # mov eax, 7
    m.run(3)
    assert m.cpu.eax == 7
    m.write_linear(ORG + 1, (9).to_bytes(4, "little"))
    m.run(3)
    assert m.cpu.eax == 9


def test_bulk_access_outside_memory_is_a_clear_error():
    m = Machine(memory=1 << 20)
    with pytest.raises(GuestMemoryError, match="outside memory"):
        m.read_linear(0xFFFFE, 4)
    with pytest.raises(GuestMemoryError, match="do not fit"):
        m.write_physical(0xFFFFF, b"ab")
    with pytest.raises(ValueError, match="length"):
        m.read_linear(0, -1)
