"""Tests of the Python face, hvsim/machine.py (not jitted; it drives the jitted core).

Each test asserts values that would be wrong if the face (or the core under it) were
wrong: instruction lengths from the SDM encodings (B8 id = 5 bytes, 83 /0 ib = 3, E7 ib
= 2...), #PF and IDT error codes from SDM Vol. 3A 4.7 and 6.13, counters that must move
by exact amounts, and state that a no-op implementation could not produce.
"""
import doctest
import re
from pathlib import Path

import numpy as np
import pytest

import hvsim
import hvsim.instruction
import hvsim.monitors.native
import hvsim.monitors.trap_and_emulate
import hvsim.machine
from hvsim import Machine, assemble
from hvsim.arch import layout as L
from hvsim.rings import make_descriptor, make_gate, put_descriptors
from hvsim.arch.vectors import vector_name

ROOT = Path(__file__).resolve().parent.parent
GDT_ADDR = 0x8000
IDT_ADDR = 0x8800
PD_ADDR = 0x10000
PT_ADDR = 0x11000


def guest_tables(m, handlers):
    """Flat ring-0 GDT (0x08 code, 0x10 data) and an IDT with interrupt gates to ``handlers``."""
    gdt = [0, make_descriptor(0, 0xFFFFF, 0xB, 1, 0, 1, 1, 1),
           make_descriptor(0, 0xFFFFF, 0x3, 1, 0, 1, 1, 1)]
    m.cpu.gdtr_limit = put_descriptors(m.memory, GDT_ADDR, gdt)
    m.cpu.gdtr_base = GDT_ADDR
    idt = [0] * 256
    for vector, address in handlers.items():
        idt[vector] = make_gate("interrupt", 0x08, address, 0)
    m.cpu.idtr_limit = put_descriptors(m.memory, IDT_ADDR, idt)
    m.cpu.idtr_base = IDT_ADDR


def identity_paging(m, absent=(), supervisor=()):
    """Identity-map the first 4 MiB with 4 KiB pages (P|RW|US), minus some pages."""
    pte = np.arange(1024, dtype=np.uint32) << 12 | 0x7
    for page in absent:
        pte[page >> 12] = 0
    for page in supervisor:
        pte[page >> 12] &= ~np.uint32(4)
    m.memory[PT_ADDR:PT_ADDR + 4096] = np.frombuffer(pte.astype("<u4").tobytes(), np.uint8)
    pd = np.zeros(1024, np.uint32)
    pd[0] = PT_ADDR | 0x7
    m.memory[PD_ADDR:PD_ADDR + 4096] = np.frombuffer(pd.astype("<u4").tobytes(), np.uint8)
    m.cpu.cr3 = PD_ADDR
    m.cpu.cr0 = m.cpu.cr0 | 0x80000000


# ---- the README example and doctests ----------------------------------------------------
def test_readme_example_sums_1_to_10():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    ns = {}
    exec(compile(block, "README.md", "exec"), ns)
    assert ns["event"].kind == "halt"
    assert ns["m"].cpu.eax == 55                       # 10 + 9 + ... + 1
    # MOV, then 10 x (ADD, LOOP), then the HLT that retires: 22 instructions
    assert ns["m"].counters["instructions"] == 22


@pytest.mark.parametrize("module", [hvsim, hvsim.machine, hvsim.instruction, hvsim.monitors.native,
                                    hvsim.monitors.trap_and_emulate])
def test_doctests_pass(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


# ---- step() ------------------------------------------------------------------------------
def test_step_retires_exactly_one_instruction_and_moves_eip_by_its_length():
    m = Machine()
    p = assemble("mov eax, 5\nadd eax, 3\nmov bl, 7\nhlt")
    m.load(p)
    eip = p.origin
    for length, eax in ((5, 5), (3, 8), (2, 8)):       # B8 id, 83 /0 ib, B3 ib
        assert m.step() is None
        eip += length
        assert m.cpu.eip == eip and m.cpu.eax == eax
    assert m.counters["instructions"] == 3
    assert m.cpu.ebx == 7
    ev = m.step()
    assert ev.kind == "halt" and ev.eip == eip and ev.length == 1 and ev.steps == 1
    assert m.counters["instructions"] == 4
    assert m.cpu.eip == eip + 1                        # halted after the HLT


# ---- writes from Python reach the next fetch ----------------------------------------
def test_memory_and_eip_writes_are_seen_by_the_next_fetch_even_when_cached():
    m = Machine()
    p = assemble("start: mov eax, 0x11111111\nhlt\nother: mov eax, 0x33\nhlt")
    m.load(p)
    assert m.run().kind == "halt" and m.cpu.eax == 0x11111111
    hits = m.counters["decode_hits"]
    m.cpu.eip = p.labels["start"]
    assert m.run().kind == "halt" and m.cpu.eax == 0x11111111
    assert m.counters["decode_hits"] == hits + 2       # both instructions came from the cache
    m.memory[p.labels["start"] + 1] = 0x22             # the immediate's low byte
    m.cpu.eip = p.labels["start"]
    assert m.run().kind == "halt" and m.cpu.eax == 0x11111122
    view = m.memory[p.labels["start"]:p.labels["start"] + 5]   # a view writes through too
    view[4] = 0x44
    m.cpu.eip = p.labels["start"]
    assert m.run().kind == "halt" and m.cpu.eax == 0x44111122
    m.cpu.eip = p.labels["other"]                      # EIP from Python: the next fetch is there
    ev = m.run()
    assert m.cpu.eax == 0x33 and ev.eip == p.labels["other"] + 5


# ---- snapshot / restore -------------------------------------------------------------------
def test_snapshot_restore_round_trip_is_exact():
    m = Machine(memory=1 << 20)
    p = assemble("""
        mov ecx, 50
    top:
        mov [0x3000 + ecx*4], ecx
        add eax, ecx
        imul ebx, eax, 3
        loop top
        hlt
    """)
    m.load(p)
    assert m.run(40).kind == "budget"
    snap = m.snapshot()
    regs = {r: getattr(m.cpu, r) for r in ("eax", "ebx", "ecx", "eip", "eflags", "esp")}
    counters = m.counters.to_dict(nonzero=False)
    mem = bytes(m.memory)
    assert m.run().kind == "halt"
    final = ({r: getattr(m.cpu, r) for r in regs}, bytes(m.memory), m.counters.to_dict(nonzero=False))
    assert final[0]["ecx"] == 0 and final[0]["eax"] == sum(range(1, 51))
    m.restore(snap)
    assert {r: getattr(m.cpu, r) for r in regs} == regs
    assert bytes(m.memory) == mem and m.counters.to_dict(nonzero=False) == counters
    assert regs["ecx"] != 0 and mem != final[1]        # the restore really went back
    assert m.run().kind == "halt"
    again = ({r: getattr(m.cpu, r) for r in regs}, bytes(m.memory), m.counters.to_dict(nonzero=False))
    assert again == final
    with pytest.raises(TypeError, match="Snapshot"):
        m.restore("snapshot")
    with pytest.raises(ValueError, match="memory"):
        Machine(memory=1 << 16).restore(snap)


# ---- I/O events -----------------------------------------------------------------------------
def test_out_to_unclaimed_port_exits_and_resumes_after_the_out():
    m = Machine()
    p = assemble("""
        mov eax, 0x12345678
    o1: out 0x80, eax
        mov edx, 0x3F8
    o2: out dx, al
        mov ebx, 1
        hlt
    """)
    m.load(p)
    ev = m.run()
    assert (ev.kind, ev.port, ev.size, ev.direction, ev.value) == ("io", 0x80, 4, "out", 0x12345678)
    assert ev.eip == p.labels["o1"] and ev.length == 2 and m.cpu.eip == p.labels["o1"] + 2
    assert ev.name == "OUT 0x80"
    ev = m.run()
    assert (ev.kind, ev.port, ev.size, ev.direction, ev.value) == ("io", 0x3F8, 1, "out", 0x78)
    assert ev.eip == p.labels["o2"] and ev.length == 1
    ev = m.run()
    assert ev.kind == "halt" and m.cpu.ebx == 1
    assert m.counters["io_exits"] == 2 and m.counters["io_out"] == 2
    with pytest.raises(ValueError, match="reply"):
        ev.reply(1)


def test_in_reads_all_ones_by_default_and_reply_sets_al_or_eax():
    m = Machine()
    p = assemble("""
        mov eax, 0x12345600
        in al, 0x60
        mov [0x2000], eax
        mov edx, 0x1234
        in eax, dx
        mov [0x2004], eax
        in eax, dx
        hlt
    """)
    m.load(p)
    ev = m.run()
    assert (ev.kind, ev.port, ev.size, ev.direction, ev.value) == ("io", 0x60, 1, "in", None)
    assert m.cpu.eax == 0x123456FF                     # the floating bus reads all ones
    ev.reply(0x42)
    assert m.cpu.eax == 0x12345642
    ev = m.run()
    assert (ev.port, ev.size, ev.direction) == (0x1234, 4, "in")
    assert bytes(m.memory[0x2000:0x2004]) == (0x12345642).to_bytes(4, "little")
    assert m.cpu.eax == 0xFFFFFFFF
    with pytest.raises(ValueError, match="value"):
        ev.reply(1 << 32)
    ev.reply(0xCAFEBABE)
    ev = m.run()                                       # third IN: not answered
    assert ev.kind == "io"
    assert bytes(m.memory[0x2004:0x2008]) == (0xCAFEBABE).to_bytes(4, "little")
    assert m.run().kind == "halt" and m.cpu.eax == 0xFFFFFFFF
    assert m.counters["io_in"] == 3


# ---- breakpoints ------------------------------------------------------------------------------
def test_breakpoint_stops_before_the_instruction_and_resuming_continues_past():
    m = Machine()
    p = assemble("mov eax, 1\nmov ebx, 2\nstop: mov ecx, 3\nmov edx, 4\nhlt")
    m.load(p)
    m.breakpoints = {p.labels["stop"]}
    ev = m.run()
    assert ev.kind == "breakpoint" and ev.eip == p.labels["stop"] and m.cpu.eip == p.labels["stop"]
    assert (m.cpu.ebx, m.cpu.ecx) == (2, 0) and m.counters["instructions"] == 2
    ev = m.run()
    assert ev.kind == "halt" and (m.cpu.ecx, m.cpu.edx) == (3, 4)
    assert m.counters["instructions"] == 5


# ---- timer, STI, HLT through the guest IDT -------------------------------------------------
def test_timer_ticks_are_delivered_through_the_guest_idt_and_hlt_with_if0_halts():
    m = Machine(timer=100, exceptions="guest")
    p = assemble("""
        sti
    wait:
        hlt
        cmp ebx, 3
        jb wait
        cli
    last:
        hlt
    handler:
        inc ebx
        iretd
    """)
    m.load(p)
    guest_tables(m, {0x20: p.labels["handler"]})
    ev = m.run(10_000)
    assert ev.kind == "halt" and ev.eip == p.labels["last"]
    assert m.cpu.ebx == 3 and not m.cpu.flags & hvsim.machine.Flag.IF
    assert m.counters["timer_ticks"] == 3 and m.counters["irqs"] == 3
    assert m.counters["delivered_0x20"] == 3 and m.counters.delivered == {0x20: 3}
    assert m.cpu.tsc >= 300                            # HLT sleeps until each deadline
    delivered = [t for t in m.trace if t.kind == "delivered"]
    assert [t.vector for t in delivered] == [0x20] * 3
    assert delivered[0].name == vector_name(0x20) == "INT 0x20"
    assert m.trace[-1].kind == "exit" and m.trace[-1].name == "halt"


# ---- exception events ------------------------------------------------------------------------
def test_int_0x80_routed_to_host_is_a_software_exception_event():
    m = Machine()
    p = assemble("mov eax, 4\nsys: int 0x80\nhlt")
    m.load(p)
    m.route(0x80, "host")
    assert 0x80 in m.routed_to_host()
    ev = m.run()
    assert (ev.kind, ev.vector, ev.source, ev.error_code) == ("exception", 0x80, "software", None)
    assert ev.eip == p.labels["sys"] and ev.length == 2
    assert m.counters["software_interrupts"] == 1
    # not routed and no IDT: delivery fails the IDT limit check -> #GP(vector*8 + 2) (6.13)
    m2 = Machine()
    m2.load(p)
    ev = m2.run()
    assert (ev.kind, ev.vector, ev.error_code, ev.source) == ("exception", 13, 0x80 * 8 + 2, "fault")
    assert ev.eip == p.labels["sys"]


def test_page_fault_to_host_reports_the_address_in_cr2_and_the_sdm_error_code():
    m = Machine(memory=1 << 20)
    p = assemble("""
    r:  mov eax, [0x5123]
    w:  mov [0x6010], eax
        hlt
    """)
    m.load(p)
    identity_paging(m, absent=(0x5000, 0x6000))
    ev = m.run()
    # SDM 4.7: P=0 (not present), W/R=0 (read), U/S=0 (supervisor)
    assert (ev.kind, ev.vector, ev.error_code, ev.address) == ("exception", 14, 0, 0x5123)
    assert m.cpu.cr2 == 0x5123 and ev.eip == p.labels["r"] and ev.name.startswith("#PF")
    m.cpu.eip = p.labels["w"]
    ev = m.run()
    assert (ev.vector, ev.error_code, ev.address, m.cpu.cr2) == (14, 2, 0x6010, 0x6010)   # W/R=1
    # ring 3 reading a present supervisor page: P=1, U/S=1 -> 5
    m2 = Machine(memory=1 << 20)
    m2.load(p)
    identity_paging(m2, supervisor=(0x5000,))
    m2.cpu.cpl = 3
    ev = m2.run()
    assert (ev.vector, ev.error_code, ev.address, ev.cpl) == (14, 5, 0x5123, 3)
    assert m2.counters["exception_14"] == 1


def test_counters_by_ring_and_by_exception_vector():
    m = Machine()
    p = assemble("nop\nnop\nnop\nring3: nop\nnop\nhlt")
    m.load(p)
    m.breakpoints = {p.labels["ring3"]}
    assert m.run().kind == "breakpoint"
    m.cpu.cpl = 3
    ev = m.run()
    assert (ev.kind, ev.vector, ev.error_code, ev.cpl) == ("exception", 13, 0, 3)   # HLT at CPL 3
    assert m.counters["ring0"] == 3 and m.counters["ring3"] == 2
    assert m.counters.by_ring == [3, 0, 0, 2]
    assert m.counters["instructions"] == 5
    assert m.counters["exception_13"] == 1 and m.counters.exceptions == {13: 1}
    assert m.counters.exits == {"breakpoint": 1, "exception": 1}
    with pytest.raises(KeyError, match="nosuch"):
        m.counters["nosuch"]


def test_console_collects_guest_output_without_exits():
    m = Machine()
    src = "\n".join(f"mov al, {ord(c)}\nout 0xE9, al" for c in "Hi!\n") + "\nhlt"
    m.load(assemble(src))
    assert m.run().kind == "halt"
    assert m.console == "Hi!\n"
    assert m.counters["io_exits"] == 0 and m.counters["io_out"] == 4


def test_trace_names_the_exits_in_order():
    m = Machine()
    p = assemble("out 0x80, al\nud2\nhlt")
    m.load(p)
    assert m.run().kind == "io"
    ev = m.run()
    assert (ev.vector, ev.error_code) == (6, None)
    names = [(t.kind, t.name, t.eip) for t in m.trace]
    assert names == [("exit", "io", p.origin), ("exit", "exception", p.origin + 2)]
    assert "#UD" in ev.name


# ---- the fixes: regression tests ------------------------------------------------------------
def test_loading_a_program_after_a_halt_runs_it():
    # the CPU sleeps in the first program's HLT; writing EIP (load() does) wakes it
    m = Machine()
    m.load(assemble("mov eax, 1\nhlt"))
    assert m.run().kind == "halt" and m.run().steps == 0      # still asleep
    m.load(assemble("mov eax, 2\nhlt", origin=0x3000))
    ev = m.run()
    assert (ev.kind, ev.eip, ev.steps, m.cpu.eax) == ("halt", 0x3005, 2, 2)


def test_eflags_written_from_python_keeps_reserved_bit_1():
    m = Machine()
    m.cpu.eflags = 0
    assert m.cpu.eflags == 0x2                         # SDM 3.4.3: bit 1 is reserved, reads 1
    m.cpu.eflags = 0xFFFFFFFF
    assert m.cpu.eflags & 0x2 and not m.cpu.eflags & (1 << 3 | 1 << 5 | 1 << 15)


def test_halt_event_length_is_the_hlt_not_a_previous_exit():
    m = Machine()
    m.load(assemble("out 0x80, al\nhlt"))
    assert m.run().length == 2
    ev = m.run()
    assert ev.kind == "halt" and ev.length == 1


def test_single_step_trap_after_an_in_exit_follows_the_exit():
    # TF set by POPF traps after the IN; the IN's host exit must come first (with EIP past
    # the IN), and the #DB trap in the next run(), after the monitor has answered the IN
    src = """
        pushfd
        or dword [esp], 0x100
        popfd
    port:
        in al, 0x60
    after:
        hlt
    handler:
        mov ebx, eax
        and dword [esp + 8], 0xFFFFFEFF
        iretd
    """
    p = assemble(src)
    m = Machine()
    m.load(p)
    ev = m.run()
    assert (ev.kind, ev.port, ev.eip, m.cpu.eip) == ("io", 0x60, p.labels["port"], p.labels["after"])
    ev.reply(0x42)
    ev = m.run()
    assert (ev.kind, ev.vector, ev.source, ev.error_code) == ("exception", 1, "trap", None)
    assert ev.eip == p.labels["after"] and m.cpu.eax & 0xFF == 0x42
    # the same with #DB delivered through the guest IDT: the handler sees the reply
    m = Machine(exceptions="guest")
    m.load(p)
    guest_tables(m, {1: p.labels["handler"]})
    ev = m.run()
    assert (ev.kind, m.cpu.eip) == ("io", p.labels["after"])
    ev.reply(0x42)
    ev = m.run()
    assert ev.kind == "halt" and ev.eip == p.labels["after"]
    assert m.cpu.ebx & 0xFF == 0x42 and m.counters["delivered_1"] == 1


# ---- argument checking -----------------------------------------------------------------------
@pytest.mark.parametrize("make, exc, words", [
    (lambda: Machine(memory=1000), ValueError, "memory"),
    (lambda: Machine(memory=65536 + 100), ValueError, "memory"),
    (lambda: Machine(memory="big"), TypeError, "memory"),
    (lambda: Machine(tlb=(3, 2)), ValueError, "tlb"),
    (lambda: Machine(tlb=16), TypeError, "tlb"),
    (lambda: Machine(exceptions="x"), ValueError, "exceptions"),
    (lambda: Machine(timer=(100, 3)), ValueError, "timer vector"),
])
def test_constructor_rejects_bad_arguments(make, exc, words):
    with pytest.raises(exc, match=words):
        make()


@pytest.fixture
def m():
    return Machine(memory=1 << 16)


@pytest.mark.parametrize("call, exc, words", [
    (lambda m: m.run(0), ValueError, "max_steps"),
    (lambda m: m.run("x"), TypeError, "max_steps"),
    (lambda m: m.run(True), TypeError, "max_steps"),
    (lambda m: m.load(b"\x90"), ValueError, "origin"),
    (lambda m: m.load(b"\x90" * 100, origin=(1 << 16) - 50), ValueError, "do not fit"),
    (lambda m: m.load("nop"), TypeError, "Program or bytes"),
    (lambda m: m.route(300, "host"), ValueError, "vector"),
    (lambda m: m.route(3, "elsewhere"), ValueError, "route"),
    (lambda m: m.set_timer((5, 3)), ValueError, "timer vector"),
    (lambda m: m.interrupt(3), ValueError, "vector"),
    (lambda m: m.claim_port(0x80, "disk"), ValueError, "device"),
])
def test_methods_reject_bad_arguments(m, call, exc, words):
    with pytest.raises(exc, match=words):
        call(m)


def test_register_writes_are_checked_and_name_the_register(m):
    with pytest.raises(ValueError, match="eax"):
        m.cpu.eax = -1
    with pytest.raises(ValueError, match="eax"):
        m.cpu.eax = 2 ** 32
    with pytest.raises(TypeError, match="eax"):
        m.cpu.eax = 1.5
    with pytest.raises(ValueError, match="eip"):
        m.cpu.eip = 2 ** 40
    with pytest.raises(AttributeError, match="nosuchreg"):
        m.cpu.nosuchreg = 1
    assert m.cpu.eax == 0                              # nothing was written by the failures
    m.cpu.eax = 0xFFFFFFFF
    assert m.cpu.eax == 0xFFFFFFFF


def test_breakpoint_list_is_checked_when_running(m):
    m.load(b"\xf4", origin=0x1000)
    m.breakpoints = set(range(0x2000, 0x2000 + L.BP_CAP + 1))
    with pytest.raises(ValueError, match="breakpoints"):
        m.run()
    m.breakpoints = {-5}
    with pytest.raises(ValueError, match="breakpoint"):
        m.run()


def test_descriptor_table_limits_are_16_bit_and_the_tsc_64_bit():
    """GDTR/IDTR limits are 16-bit fields (SDM Vol. 3A, Figure 2-6); the TSC is 64 bits."""
    m = Machine()
    m.cpu.gdtr_limit = 0xFFFF
    with pytest.raises(ValueError, match="gdtr_limit"):
        m.cpu.gdtr_limit = 0x10000
    with pytest.raises(ValueError, match="idtr_limit"):
        m.cpu.idtr_limit = 0x10000
    m.cpu.tsc = 1 << 40
    m.load(assemble("start:\nrdtsc\nhlt"))
    m.run(10)
    assert (m.cpu.edx, m.cpu.eax) == (1 << 8, 0)      # RDTSC reads the 64-bit value back


def test_budget_ends_are_not_trace_events_and_trace_since_reads_what_is_new():
    m = Machine()
    p = assemble("nop\nnop\nout 0x80, al\nhlt")
    m.load(p)
    assert m.step() is None and m.step() is None          # two 'budget' exits
    assert m.trace == [] and m.trace_head == 0
    head = m.trace_head
    assert m.run().kind == "io"
    new = m.trace_since(head)
    assert [(t.kind, t.name, t.eip) for t in new] == [("exit", "io", p.origin + 2)]
    assert m.trace_since(m.trace_head) == []
    with pytest.raises(ValueError, match="head"):
        m.trace_since(-1)


def test_the_timer_device_keeps_its_vector_when_the_guest_writes_an_exception_vector():
    """Vectors 0-31 are the processor's exceptions (SDM Vol. 3A, 6.2): OUT to the timer's
    vector port with one of them is dropped, as Machine.set_timer refuses them; 32-255 take."""
    m = Machine(memory=1 << 20)
    m.load(assemble("mov al, 28\nout 0x41, al\nin al, 0x41\nmov bl, al\n"
                    "mov al, 0x33\nout 0x41, al\nin al, 0x41\nhlt"))
    assert m.run().kind == "halt"
    assert m.cpu.ebx & 0xFF == 0x20 and m.cpu.eax & 0xFF == 0x33
