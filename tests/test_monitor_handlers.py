"""The monitor protocol and the trap-and-emulate exit handlers, fed made-up exits.

Each handler of hvsim/monitors/trap_and_emulate.py is a plain function of (monitor,
event); here each is called with an event built by hand -- no guest instruction ever
ran -- and the virtual CPU, the real registers and guest memory are checked against
what the SDM says the instruction does at that privilege level (the oracle named in
each test). Like rust-vmm's VMM crates test their exit handlers.
"""
import struct

import pytest

from hvsim import Machine, assemble
from hvsim.arch.flags import IF, FIXED1
from hvsim.instruction import Instruction, MemoryOperand
from hvsim.machine import Event
from hvsim.monitors import Monitor, Native, TrapAndEmulate, STATS, LogEntry
from hvsim.techniques import MONITORS
from hvsim.monitors import trap_and_emulate as T
from hvsim.monitors.base import Kill
from hvsim.rings import make_gate, put_descriptors

EIP = 0x1000
TESTED = set()


def handles(key):
    def mark(fn):
        TESTED.add(key)
        return fn
    return mark


@pytest.fixture
def mon():
    m = TrapAndEmulate(program=assemble("start: hlt", origin=EIP))
    assert m.machine.cpu.cpl == T.GUEST_RING
    return m


def gp(mnemonic, opcode, *, length=1, cpl=T.GUEST_RING, reg=0, rm=None, mem=None, imm=0, size=4):
    """A made-up #GP(0) exit of ``mnemonic`` at EIP, as Machine.run() would return it."""
    insn = Instruction(mnemonic, opcode, size, reg, rm, mem, imm, 0, length, EIP)
    return Event("exception", EIP, cpl, 0, vector=13, error_code=0, source="fault",
                 length=length, insn=insn)


def linear(addr):
    return MemoryOperand("ds", None, None, 0, addr, addr, addr)


@handles("cli")
def test_cli_clears_the_virtual_if_at_virtual_cpl_0_and_faults_above_iopl(mon):
    """SDM Vol. 2A, CLI: IF := 0 if CPL <= IOPL, else #GP(0)."""
    mon.vcpu.IF = 1
    assert T.emulate_cli(mon, gp("cli", 0xFA)) == "emulated CLI: virtual IF 1→0"
    assert mon.vcpu.IF == 0 and mon.machine.cpu.eip == EIP + 1
    mon.vcpu.IF = 1
    assert T.emulate_cli(mon, gp("cli", 0xFA, cpl=3)) is None          # CPL 3 > IOPL 0
    assert mon.vcpu.IF == 1


@handles("sti")
def test_sti_sets_the_virtual_if_and_opens_the_one_instruction_shadow(mon):
    """SDM Vol. 2B, STI; Vol. 3A 6.8.3: interrupts wait one instruction after STI."""
    mon.vcpu.IF = 0
    assert T.emulate_sti(mon, gp("sti", 0xFB)) == "emulated STI: virtual IF 0→1"
    assert mon.vcpu.IF == 1 and mon._shadow and mon.machine.cpu.eip == EIP + 1


@handles("hlt")
def test_hlt_with_the_virtual_if_clear_halts_the_guest_for_good(mon):
    mon.vcpu.IF = 0
    text = T.emulate_hlt(mon, gp("hlt", 0xF4))
    assert text == "emulated HLT with virtual IF=0: the guest is halted for good"
    assert mon.state == "halted" and mon._final.kind == "halt"
    assert T.emulate_hlt(mon, gp("hlt", 0xF4, cpl=3)) is None          # privileged


@handles("lidt")
def test_lidt_loads_the_virtual_idtr_from_the_memory_operand(mon):
    """SDM Vol. 2A, LGDT/LIDT: a 16-bit limit then a 32-bit base at the operand."""
    mon.machine.write_physical(0x5000, struct.pack("<HI", 0x7FF, 0x30000))
    ev = gp("lidt", 0x101, length=7, reg=3, mem=linear(0x5000))
    assert T.emulate_lidt(mon, ev) == "emulated LIDT: virtual IDTR = base 0x30000 limit 0x7ff"
    assert (mon.vcpu.idtr_base, mon.vcpu.idtr_limit) == (0x30000, 0x7FF)
    assert mon.machine.cpu.eip == EIP + 7
    assert mon.machine.cpu.idtr_base != 0x30000                        # the real IDTR is the monitor's


@handles("sidt")
def test_sidt_stores_the_virtual_idtr(mon):
    mon.vcpu.idtr_base, mon.vcpu.idtr_limit = 0x12345, 0x3FF
    T.emulate_sidt(mon, gp("sidt", 0x101, length=7, reg=1, mem=linear(0x6000)))
    assert mon.machine.read_linear(0x6000, 6) == struct.pack("<HI", 0x3FF, 0x12345)


@handles("mov cr")
def test_mov_to_and_from_control_registers_use_the_virtual_ones(mon):
    """0F 22 /r: ModRM.reg = CRn, ModRM.rm = the source (SDM Vol. 2B, MOV CRn)."""
    cpu = mon.machine.cpu
    cpu.eax = 0x9000
    text = T.emulate_mov_cr(mon, gp("mov", 0x122, length=3, reg=3, rm=0))
    assert text == "emulated MOV CR3: virtual CR3 0x0→0x9000"
    assert mon.vcpu.cr3 == 0x9000 and cpu.cr3 != 0x9000
    mon.vcpu.cr0 = 0x11
    T.emulate_mov_cr(mon, gp("mov", 0x120, length=3, reg=0, rm=7))
    assert cpu.edi == 0x11
    # PG = 1 (a page directory of zeros at 0x9000): shadow paging starts -- the real CR3 is
    # a shadow root in the monitor's own pages, the real CR0 has PG and WP, the GDT the
    # CPU reads is the monitor's copy at the top of linear space
    cpu.ecx = 0x80000011
    text = T.emulate_mov_cr(mon, gp("mov", 0x122, length=3, reg=0, rm=1))
    assert "shadow paging starts" in text and mon.vcpu.cr0 == 0x80000011
    assert mon.ram <= cpu.cr3 < len(mon.machine.memory) and cpu.cr0 & 0x80010000 == 0x80010000
    assert cpu.gdtr_base == 0xFFC00000 and mon.shadow.guest_cr3 == 0x9000
    cpu.edx = 0xA000                                               # a second address space
    assert T.emulate_mov_cr(mon, gp("mov", 0x122, length=3, reg=3, rm=2)).endswith(
        f"shadow root {cpu.cr3:#x}")
    assert mon.shadow.stats["shadow_roots_built"] == 2 and mon.vcpu.cr3 == 0xA000
    with pytest.raises(Kill, match="CR5"):
        T.emulate_mov_cr(mon, gp("mov", 0x122, length=3, reg=5, rm=1))


@handles("invlpg")
def test_invlpg_drops_the_shadow_entry_at_virtual_cpl_0_only(mon):
    """INVLPG m (SDM Vol. 2A): privileged; under shadow paging the monitor drops the
    page's shadow entry, so the next access walks the guest's tables again."""
    m = mon.machine
    ev = gp("invlpg", 0x101, length=7, reg=7, mem=linear(0x5000))
    assert T.emulate_invlpg(mon, ev).endswith("no shadow tables yet, nothing cached")
    assert T.emulate_invlpg(mon, gp("invlpg", 0x101, length=7, reg=7, mem=linear(0x5000),
                                    cpl=3)) is None
    # guest tables: PD at 0x9000 -> PT at 0xA000 mapping 0x5000 -> frame 0x7000
    m.write_physical(0x9000, struct.pack("<I", 0xA000 | 3))
    m.write_physical(0xA000 + 5 * 4, struct.pack("<I", 0x7000 | 3))
    mon.vcpu.cr3 = 0x9000
    m.cpu.ecx = 0x80000011
    T.emulate_mov_cr(mon, gp("mov", 0x122, length=3, reg=0, rm=1))
    assert mon.shadow.page_fault(0x5000, 0) == ("hidden", None)
    sh = mon.shadow
    spt = sh.by_hpa[struct.unpack("<I", m.memory[m.cpu.cr3:m.cpu.cr3 + 4].tobytes())[0] & ~0xFFF]
    spte = struct.unpack("<I", m.memory[spt.hpa + 20:spt.hpa + 24].tobytes())[0]
    assert spte & ~0xFFF == 0x7000 and spte & 1                    # filled, read-only (D = 0)
    assert not spte & 2
    m.cpu.eip = EIP
    assert T.emulate_invlpg(mon, ev) == "emulated INVLPG 0x5000: its shadow entry dropped"
    assert m.memory[spt.hpa + 20:spt.hpa + 24].tobytes() == bytes(4)
    assert sh.stats["invlpg"] == 1 and m.cpu.eip == EIP + 7


@handles("mov dr")
def test_mov_to_and_from_debug_registers_use_the_virtual_ones(mon):
    """0F 23 /r and 0F 21 /r (SDM Vol. 2B, MOV DRn); DR5 is DR7 with CR4.DE clear (17.2.2)."""
    cpu = mon.machine.cpu
    cpu.esi = 0x400401
    assert T.emulate_mov_dr(mon, gp("mov", 0x123, length=3, reg=7, rm=6)) == \
        "emulated MOV DR7: virtual DR7 0x400→0x400401"
    assert mon.vcpu.dr[7] == 0x400401 and cpu.eip == EIP + 3
    T.emulate_mov_dr(mon, gp("mov", 0x121, length=3, reg=5, rm=2))
    assert cpu.edx == 0x400401
    T.emulate_mov_dr(mon, gp("mov", 0x121, length=3, reg=6, rm=3))
    assert cpu.ebx == 0xFFFF0FF0                                     # DR6's reset value
    assert T.emulate_mov_dr(mon, gp("mov", 0x121, length=3, reg=6, rm=3, cpl=3)) is None


@handles("invd")
@handles("wbinvd")
def test_invd_and_wbinvd_are_privileged_no_ops(mon):
    """SDM Vol. 2A INVD, Vol. 2C WBINVD: #GP(0) at CPL > 0; no caches are modelled."""
    for name, opc in (("invd", 0x108), ("wbinvd", 0x109)):
        mon.machine.cpu.eip = 0
        assert T.HANDLERS[name](mon, gp(name, opc, length=2)) == f"emulated {name.upper()}: no caches to flush"
        assert mon.machine.cpu.eip == EIP + 2
        assert T.HANDLERS[name](mon, gp(name, opc, length=2, cpl=3)) is None


@handles("out")
def test_out_reaches_the_virtual_console_and_programs_the_real_timer(mon):
    cpu = mon.machine.cpu
    cpu.eax = 0x4148                                               # AL = 'H'
    T.emulate_out(mon, gp("out", 0xE6, length=2, imm=0xE9, size=1))
    assert mon.console == "H" and cpu.eip == EIP + 2
    cpu.eax, cpu.edx = 500, 0x40                                   # OUT DX, EAX: the period
    assert T.emulate_out(mon, gp("out", 0xEF)) == "emulated OUT: virtual timer period 500"
    assert mon.vcpu.timer_period == 500 and mon.machine._st[63] == 500    # TIMER_PERIOD
    assert T.emulate_out(mon, gp("out", 0xEF, cpl=3)) is None


@handles("in")
def test_in_reads_the_virtual_devices_and_a_floating_bus(mon):
    cpu = mon.machine.cpu
    mon.vcpu.timer_vector = 0x33
    cpu.eax = 0xAABBCCDD
    T.emulate_in(mon, gp("in", 0xE4, length=2, imm=0x41, size=1))
    assert cpu.eax == 0xAABBCC33                                   # AL only
    cpu.edx = 0x1234
    T.emulate_in(mon, gp("in", 0xED))
    assert cpu.eax == 0xFFFFFFFF


@handles("pushfd")
def test_pushfd_pushes_the_virtual_if_and_iopl(mon):
    """SDM Vol. 2B, PUSHF: the image has VM and RF clear; here IF/IOPL are the virtual ones."""
    cpu = mon.machine.cpu
    mon.vcpu.IF, mon.vcpu.iopl = 0, 0
    esp = cpu.esp
    T.emulate_pushfd(mon, gp("pushfd", 0x9C))
    (image,) = struct.unpack("<I", mon.machine.read_linear(esp - 4, 4))
    assert cpu.esp == esp - 4 and not image & IF and image & FIXED1 and cpu.eflags & IF


@handles("popfd")
def test_popfd_loads_the_virtual_if_at_virtual_cpl_0(mon):
    """SDM Vol. 2B, POPF: IF changes only if CPL <= IOPL; IOPL only at CPL 0."""
    cpu = mon.machine.cpu
    cpu.esp -= 4
    mon.machine.write_linear(cpu.esp, struct.pack("<I", FIXED1 | IF | (2 << 12)))
    mon.vcpu.IF = 0
    text = T.emulate_popfd(mon, gp("popfd", 0x9D))
    assert text == "emulated POPF: virtual IF 0→1, virtual IOPL 0→2"
    assert (mon.vcpu.IF, mon.vcpu.iopl) == (1, 2) and cpu.eflags & IF and not cpu.eflags & 0x3000


@handles("iretd")
def test_iretd_to_the_guest_user_ring_pops_eip_cs_eflags_esp_ss(mon):
    """SDM Vol. 2A, IRET to an outer ring: EIP, CS, EFLAGS, then ESP and SS."""
    cpu = mon.machine.cpu
    t = mon.tables
    frame = struct.pack("<5I", 0x2222, t.code(3), FIXED1 | IF, 0x7000, t.data(3))
    cpu.esp -= len(frame)
    mon.machine.write_linear(cpu.esp, frame)
    text = T.emulate_iretd(mon, gp("iretd", 0xCF))
    assert text == "emulated IRET to ring 3 eip=0x2222: virtual IF 0→1"
    assert (cpu.eip, cpu.cpl, cpu.esp, cpu.cs, cpu.ss) == (0x2222, 3, 0x7000, t.code(3), t.data(3))
    with pytest.raises(Kill, match="virtual CPL 3"):
        T.emulate_iretd(mon, gp("iretd", 0xCF, cpl=3))


@handles("lgdt")
@handles("sgdt")
def test_lgdt_and_sgdt_use_the_virtual_gdtr_and_leave_the_real_one_alone(mon):
    """SDM Vol. 2A, LGDT/SGDT: 6 bytes, a 16-bit limit then a 32-bit base. The monitor
    keeps running the guest on its own GDT: only the virtual GDTR changes."""
    m = mon.machine
    real = (m.cpu.gdtr_base, m.cpu.gdtr_limit)
    assert (mon.vcpu.gdtr_base, mon.vcpu.gdtr_limit) == real        # what the guest was given
    m.write_linear(0x6000, struct.pack("<HI", 0x3F, 0x7000))
    text = T.emulate_lgdt(mon, gp("lgdt", 0x101, length=7, reg=2, mem=linear(0x6000)))
    assert text == "emulated LGDT: virtual GDTR = base 0x7000 limit 0x3f"
    assert (mon.vcpu.gdtr_base, mon.vcpu.gdtr_limit) == (0x7000, 0x3F)
    assert (m.cpu.gdtr_base, m.cpu.gdtr_limit) == real
    T.emulate_sgdt(mon, gp("sgdt", 0x101, length=7, reg=0, mem=linear(0x6100), cpl=3))
    assert m.read_linear(0x6100, 6) == struct.pack("<HI", 0x3F, 0x7000)
    assert T.emulate_lgdt(mon, gp("lgdt", 0x101, cpl=3, mem=linear(0x6000))) is None


@handles("smsw")
def test_smsw_stores_the_virtual_cr0(mon):
    """SDM Vol. 2B, SMSW: a register gets CR0 (P6 and later: all 32 bits), memory its low
    word; the guest's is the virtual one."""
    mon.vcpu.cr0 = 0x8001003B
    assert T.emulate_smsw(mon, gp("smsw", 0x101, length=3, reg=4, rm=3)) == \
        "emulated SMSW: ebx = virtual CR0 0x8001003b"
    assert mon.machine.cpu.ebx == 0x8001003B and mon.machine.cpu.eip == EIP + 3
    mon.machine.write_linear(0x6000, b"\xaa" * 4)
    T.emulate_smsw(mon, gp("smsw", 0x101, length=7, reg=4, mem=linear(0x6000), size=2))
    assert mon.machine.read_linear(0x6000, 4) == b"\x3b\x00\xaa\xaa"


@handles("push sreg")
def test_push_cs_pushes_the_selector_with_the_virtual_rpl(mon):
    """Ring compression: the guest kernel runs in ring 1 but must read RPL 0 (SDM Vol. 3A,
    3.4.2: CS bits 1:0 are the CPL); the selector is pushed zero-extended to 32 bits."""
    cpu = mon.machine.cpu
    assert cpu.cs & 3 == T.GUEST_RING
    esp = cpu.esp
    text = T.emulate_push_sreg(mon, gp("push", 0x0E))
    assert text == f"emulated PUSH CS: pushed {cpu.cs & ~3:#x} (really {cpu.cs:#x})"
    assert cpu.esp == esp - 4 and mon.machine.read_linear(cpu.esp, 4) == \
        struct.pack("<I", cpu.cs & ~3)
    cpu.gs = 0                                          # a null selector reads as it is
    T.emulate_push_sreg(mon, gp("push", 0x1A8, length=2))                 # 0F A8: PUSH GS
    assert mon.machine.read_linear(cpu.esp, 4) == struct.pack("<I", 0)
    assert T.virtual_selector(0x23) == 0x23 and T.virtual_selector(0x19) == 0x18


@handles("mov from sreg")
def test_mov_from_cs_gives_the_virtual_rpl_in_a_register_or_memory(mon):
    """SDM Vol. 2B, MOV r/m16, Sreg (8C /r): a 32-bit register gets the selector
    zero-extended, memory 16 bits; ModRM.reg 6 and 7 name no segment register (#UD)."""
    cpu = mon.machine.cpu
    cpu.edx = 0xFFFFFFFF
    text = T.emulate_mov_from_sreg(mon, gp("mov", 0x8C, length=2, reg=1, rm=2))
    assert text == f"emulated MOV from CS: edx = {cpu.cs & ~3:#x} (really {cpu.cs:#x})"
    assert cpu.edx == cpu.cs & ~3
    mon.machine.write_linear(0x6000, b"\xaa" * 4)
    T.emulate_mov_from_sreg(mon, gp("mov", 0x8C, length=6, reg=1, mem=linear(0x6000), size=2))
    assert mon.machine.read_linear(0x6000, 4) == struct.pack("<H", cpu.cs & ~3) + b"\xaa\xaa"
    with pytest.raises(Kill, match="no segment register"):
        T.emulate_mov_from_sreg(mon, gp("mov", 0x8C, length=2, reg=6, rm=0))


def test_every_handler_has_a_made_up_exit_test():
    assert set(T.HANDLERS) == TESTED


def test_the_dispatcher_logs_typed_entries_and_reflects_a_gp_the_virtual_cpu_takes_too(mon):
    """CLI at virtual CPL 3 (IOPL 0) is #GP(0) on the virtual CPU too: reflected."""
    m = mon.machine
    mon.vcpu.idtr_base, mon.vcpu.idtr_limit = 0x30000, 0x7FF
    put_descriptors(m.memory, 0x30000 + 8 * 13, [make_gate("interrupt", mon.tables.code(1), 0x4000, 0)])
    mon.tables.enter(m, 3, 0x1234, mon.tables.stack_top(3))
    final = mon.handle(gp("cli", 0xFA, cpl=3))
    assert final is None
    entry = mon.log[-1]
    assert isinstance(entry, LogEntry) and entry.what == "reflected"
    assert entry.insn.mnemonic == "cli" and entry.instruction == "cli"
    assert m.cpu.eip == 0x4000 and m.cpu.cpl == 1 and mon.stats["reflected"] == 1


def test_an_exit_without_a_handler_kills_the_guest_with_the_instruction_named(mon):
    final = mon.handle(gp("wrmsr", 0x130, length=2))
    assert final.kind == "killed" and "unsupported instruction 'wrmsr'" in final.reason
    assert mon.state == "killed" and mon.log[-1].what == "killed"


# ---- the protocol ----------------------------------------------------------------------
def test_every_monitor_is_a_monitor_with_the_protocols_stats_keys():
    from hvsim.bt import BinaryTranslator
    from hvsim.bt.rawmode import RawMode
    from hvsim.emulation.monitor import DynamicTranslator, Emulator
    from hvsim.monitors import Vtx
    from hvsim.paravirt.hypervisor import Hypervisor
    assert MONITORS == {"native": Native, "trap-and-emulate": TrapAndEmulate, "vtx": Vtx,
                        "pv": Hypervisor, "emulate": Emulator, "dbt": DynamicTranslator,
                        "bt": BinaryTranslator, "rawmode": RawMode}
    nat = Native(program=assemble("mov ecx, 10\nagain: add eax, ecx\nloop again\nhlt"))
    tae = TrapAndEmulate(program=assemble("start: mov al, 'x'\nout 0xe9, al\ncli\nhlt"))
    vtx = Vtx(program=assemble("start: mov al, 'x'\nout 0xe9, al\ncpuid\nhlt"))
    # the PV kernel asks instead: console_io(write, 1, "x"), then sched_op(shutdown)
    pv = Hypervisor(program=assemble(
        "start: xor ebx, ebx\nmov ecx, 1\nmov edx, x\ncall hypercall_page + 18 * 32\n"
        "mov ebx, 2\nmov ecx, why\ncall hypercall_page + 29 * 32\n"
        "x: db 'x'\nwhy: dd 0\nalign 4096\nhypercall_page: times 4096 db 0"))
    # the software virtual machines of issue 16, on trap-and-emulate's kernel
    soft = {name: MONITORS[name](program=assemble("start: mov al, 'x'\nout 0xe9, al\ncli\nhlt"))
            for name in ("emulate", "dbt", "bt", "rawmode")}
    for mon in (nat, tae, vtx, pv, *soft.values()):
        assert isinstance(mon, Monitor)
        assert set(mon.stats) == set(STATS)
        snap = mon.snapshot()
        ev = mon.run(1000)
        assert ev.kind == "halt"
        mon.restore(snap)
        assert mon.run(1000).kind == "halt"             # restored, the same ending again
    assert nat.vcpu.eax == 55 and nat.stats["traps"] == 0 and nat.console == ""
    assert tae.console == "x" and tae.stats["traps"] == 3 and tae.stats["emulated"] == 3
    # the VT-x host counts VM exits (OUT, CPUID, HLT), not traps: the cost model charges
    # each exit once (hvsim/cost/usage.py)
    assert vtx.console == "x" and vtx.stats["vm_exits"] == 3 and vtx.stats["traps"] == 0
    # the hypervisor counts hypercalls, not traps (each charged once)
    assert pv.console == "x" and pv.stats["hypercalls"] == 2 and pv.stats["traps"] == 0
    moved = {name: {k: v for k, v in mon.stats.items() if v} for name, mon in soft.items()}
    assert all(mon.console == "x" for mon in soft.values())
    # emulation: the kernel at its own ring 0, nothing traps; the model's work only
    assert moved["emulate"] == {"insns_interpreted": 4}
    assert moved["dbt"] == {"insns_translated": 4, "insns_run_translated": 4,
                            "tb_slow_lookups": 2}
    # BT: CLI in the TC, OUT and HLT callouts (each emulated), no trap
    assert moved["bt"] == {"callouts": 2, "emulated": 2, "translated": 4}
    # raw mode: OUT and HLT #GP; CLI's jump patch would displace HLT: an INT3, a third trap
    assert moved["rawmode"] == {"traps": 3, "emulated": 3, "scanned": 4}


def test_a_monitor_missing_part_of_the_protocol_cannot_be_made():
    class Half(Monitor):
        def run(self, max_steps=1):
            return None

    with pytest.raises(TypeError, match="abstract"):
        Half()


def test_bad_budgets_are_refused_with_the_value_named():
    nat = Native(Machine(memory=1 << 16))
    for bad in (0, -5, 1.5, True, "10"):
        with pytest.raises(ValueError, match="max_steps must be a positive int"):
            nat.run(bad)
