"""Self-checking guest programs (tests/guests/*.s) run on the whole machine.

Each guest is a tiny kernel that sets up its own GDT/IDT/TSS/page tables, exercises
one mechanism, checks the results itself and writes "PASS <name>" or
"FAIL <name> <why>" to the console port 0xE9 before it halts. The oracle is the SDM
rule each guest states in its header; here Python additionally asserts the
machine-level evidence that the mechanism really happened: the final event, counters,
the IDT deliveries in order (the trace), CPL, CR2, guest memory.
"""
from pathlib import Path

import pytest

from hvsim import Machine, assemble

GUESTS = Path(__file__).parent / "guests"
# triple.s has no GDT, IDT or stack to share: it is assembled on its own.
STANDALONE = {"triple"}
BUDGET = 200_000

INT80 = "INT 0x80"
GP = "#GP (general protection)"
PF = "#PF (page fault)"


def guest_source(name):
    """The guest's source with the shared support code of tests/guests/lib.s (the entry
    point start, set_gate(s), kfail, puts, gdtr, idtr) appended. hvsim's assembler has no
    %include: concatenation is the linking: lib.s sees the guest's labels, the guest sees lib.s's
    shared constants (selectors, IDT, stacks, gate bytes) and its GDT and TSS."""
    source = (GUESTS / f"{name}.s").read_text()
    if name in STANDALONE:
        return source
    return source + "\n" + (GUESTS / "lib.s").read_text()


def run_guest(name, **machine_kw):
    prog = assemble(guest_source(name))
    m = Machine(exceptions="guest", **machine_kw)
    m.load(prog)
    ev = m.run(max_steps=BUDGET)
    return m, ev, prog


def delivered(m):
    """(name, error_code, cpl_from, cpl_to) of every IDT delivery, oldest first."""
    return [(t.name, t.error_code, t.cpl_from, t.cpl_to) for t in m.trace if t.kind == "delivered"]


def dword(m, prog, label):
    a = prog.labels[label]
    return int.from_bytes(bytes(m.memory[a:a + 4]), "little")


def test_rings_syscalls_gp_and_stack_switch():
    m, ev, prog = run_guest("rings")
    assert m.console == "hello from ring 3\nPASS rings\n"
    assert ev.kind == "halt" and ev.cpl == 0
    assert m.cpu.cpl == 0
    assert delivered(m) == [
        (INT80, None, 3, 0),            # write
        (INT80, None, 3, 0),            # getpid
        (GP, 0, 3, 0),                  # CLI at CPL 3 > IOPL 0
        (GP, 0x20 * 8 + 2, 3, 0),       # INT 0x20 through a DPL-0 gate: IDT bit set
        (INT80, None, 3, 0),            # getpid
        (INT80, None, 3, 0),            # exit
    ]
    c = m.counters
    assert c.delivered == {0x80: 4, 13: 2}
    assert c.exceptions == {13: 2}
    # ring 0 -> 3 once, then 6 entries into ring 0 and 5 IRETs back out of them
    assert c["privilege_switches"] == 12
    assert c["iret"] == 6
    assert c["software_interrupts"] == 5          # 4 x INT 0x80 + the refused INT 0x20
    assert c["ring3"] > 0 and c["ring0"] > 0
    assert m.cpu.tr == 0x28 and m.cpu.cs == 0x08 and m.cpu.ss == 0x10
    # the kernel halted inside the exit syscall: ESP is on the TSS.ESP0 stack
    assert 0x20000 - 0x100 < m.cpu.esp <= 0x20000
    assert dword(m, prog, "gp_cli") == 1 and dword(m, prog, "gp_int") == 1
    assert dword(m, prog, "ticks") == 0


def test_paging_demand_fault_user_fault_pse_invlpg():
    m, ev, prog = run_guest("paging")
    assert m.console == "PASS paging\n"
    assert ev.kind == "halt" and m.cpu.cpl == 0
    assert delivered(m) == [(PF, 0b010, 0, 0),           # W=1, P=0, U=0
                            (PF, 0b101, 3, 0),           # U=1, P=1, read
                            (INT80, None, 3, 0)]
    assert m.cpu.cr2 == 0x50000                          # the supervisor page, last #PF
    assert m.cpu.cr0 & 0x80000000 and m.cpu.cr4 & 0x10 and m.cpu.cr3 == 0x10000
    c = m.counters
    assert c.exceptions == {14: 2}
    assert c["invlpg"] == 2                              # the stale PTE + the user page
    assert c["cr3_writes"] == 1
    assert c["page_walks"] > 0 and c["tlb_hits"] > c["tlb_misses"]
    # guest-physical memory, read from the host: the frame the handler mapped
    assert int.from_bytes(bytes(m.memory[0x200010:0x200014]), "little") == 0x1234ABCD
    # the handler set U/S in PT0's entry for the supervisor page
    pte = int.from_bytes(bytes(m.memory[0x11000 + 0x50 * 4:0x11000 + 0x50 * 4 + 4]), "little")
    assert pte & 0xFFFFF000 == 0x50000 and pte & 0b111 == 0b111
    assert dword(m, prog, "user_value") == 0x5EC12E7


def test_paging_guest_notices_a_machine_without_tlb():
    """The stale-translation check is real: with no TLB model there is nothing stale."""
    m, ev, _ = run_guest("paging", tlb=None)
    assert m.console == "FAIL paging TLB entry dropped without INVLPG\n"
    assert ev.kind == "halt"


def test_timer_hlt_popf_and_sti_shadow():
    m, ev, prog = run_guest("timer")
    assert m.console == "PASS timer\n"
    assert ev.kind == "halt"
    c = m.counters
    ticks = dword(m, prog, "ticks")
    assert ticks == 7                                    # 5 while sleeping, popf, sti
    assert c.delivered == {0x20: ticks, 0x21: 1}
    assert c["irqs"] == ticks + 1
    # deadlines passed while IF=0 are not queued: one latch on the line
    assert c["timer_ticks"] > c["irqs"]
    assert c["hlt"] >= 7                                 # 5 sleeps + 1 on 0x21 + the last
    assert c.exceptions == {}
    names = [t.name for t in m.trace if t.kind == "delivered"]
    assert names == ["INT 0x20"] * 7 + ["INT 0x21"]
    assert not m.cpu.eflags & 0x200                      # halted with CLI, timer stopped


def test_faults_de_ud_and_double_fault():
    m, ev, prog = run_guest("faults")
    assert m.console == "PASS faults\n"
    assert ev.kind == "halt"
    assert delivered(m) == [("#BP (breakpoint)", None, 0, 0),
                            ("#DE (divide error)", None, 0, 0),
                            ("#UD (invalid opcode)", None, 0, 0),
                            ("#DF (double fault)", 0, 0, 0)]
    c = m.counters
    assert c["double_faults"] == 1 and c["triple_faults"] == 0
    assert c.exceptions == {0: 1, 6: 1, 8: 1, 13: 1}     # #GP raised, never delivered
    assert c.delivered == {3: 1, 0: 1, 6: 1, 8: 1}
    assert c["software_interrupts"] == 1                 # INT3
    assert dword(m, prog, "df_err") == 0


def test_empty_idt_is_a_triple_fault():
    m, ev, prog = run_guest("triple")
    assert ev.kind == "shutdown"
    assert m.console == "no IDT\n"
    c = m.counters
    assert c["triple_faults"] == 1
    assert c["double_faults"] == 1
    assert c.exceptions == {6: 1, 13: 1, 8: 1}           # #UD -> #GP -> #DF -> shutdown
    assert c.delivered == {}
    assert ev.eip == prog.code.index(b"\x0f\x0b") + prog.origin   # stopped at the UD2
    # a shut-down machine stays down
    assert m.run(max_steps=10).kind == "shutdown"


def test_segments_probes_and_the_x86_hole():
    m, ev, _ = run_guest("segments")
    assert m.console == "PASS segments\n"
    assert ev.kind == "halt" and m.cpu.cpl == 0
    c = m.counters
    assert c.exceptions == {}                            # nothing at ring 3 trapped
    assert c.delivered == {0x80: 1}
    assert c["ring3"] > 20 and c["privilege_switches"] == 2


@pytest.mark.parametrize("guest, first_insn", [("segments", "mov eax, cs"),
                                               ("rings", "mov eax, ds")])
def test_virtualizable_x86_closes_the_hole(guest, first_insn):
    """With m.virtualizable, the first sensitive instruction at ring 3 traps to the
    guest kernel's #GP handler instead of quietly answering."""
    m = Machine(exceptions="guest")
    m.virtualizable = True
    prog = assemble(guest_source(guest))
    m.load(prog)
    ev = m.run(max_steps=BUDGET)
    assert ev.kind == "halt"
    gp = [t for t in m.trace if t.kind == "delivered"]
    assert gp[0].name == GP and gp[0].error_code == 0 and gp[0].cpl_from == 3
    user = prog.labels["user"]
    first = min(a for a, _, _, text in prog.listing
                if a >= user and text.split(";")[0].strip() == first_insn)
    assert gp[0].eip == first
    assert m.console.startswith(f"FAIL {guest} ")
