"""The trap-and-emulate monitor (hvsim/monitors/trap_and_emulate.py) and its teaching kernel
(hvsim/guests/kernel.s + user.s).

Oracles:
* the guest's own memory: the kernel counts timer ticks and system calls, the user
  program stores what the system calls returned -- the guest-visible effect of the
  monitor's emulation, read from the host;
* the real CPU: the interrupt frame the monitor builds when it reflects an event into
  the guest's virtual IDT is compared, byte for byte, with the frame the jitted core
  builds when the same gate is in a real IDT (Machine(exceptions="guest")) and the same
  instruction raises the same event (SDM Vol. 3A, 6.12.1);
* the SDM's POPF rule (Vol. 2B, POPF/POPFD): at CPL 1 > IOPL 0 POPF keeps IF and does
  not fault, so under plain x86 the virtual IF cleared by the emulated CLI stays clear.
"""
import pytest

from hvsim import Machine, assemble
from hvsim.guests import teaching_kernel
from hvsim.rings import make_gate, put_descriptors
from hvsim.monitors.trap_and_emulate import TrapAndEmulate, MonitorSnapshot, GUEST_RING, MONITOR_PAGES
from hvsim.rings.setup import install

GP = "#GP (general protection)"
DE = "#DE (divide error)"
IF = 1 << 9
KCODE, UCODE, UDATA = 0x19, 0x3B, 0x43         # hvsim.rings.setup GDT, ring 1 and ring 3
PROG = teaching_kernel()
L = PROG.labels


def boot(virtualizable=False, program=PROG):
    return TrapAndEmulate(program=program, virtualizable=virtualizable)


def dword(mon, label):
    a = L[label]
    return int.from_bytes(bytes(mon.machine.memory[a:a + 4]), "little")


def dwords(mon, address, n):
    raw = bytes(mon.machine.memory[address:address + 4 * n])
    return [int.from_bytes(raw[i:i + 4], "little") for i in range(0, 4 * n, 4)]


# --- the x86 hole, live ----------------------------------------------------------------------
def test_plain_x86_ticks_freeze_after_the_first_popf():
    mon = boot()
    assert mon.run(30_000).kind == "budget"
    first = dword(mon, "ticks")
    # 2 ticks before the divide error (boot + SYS_SLEEP's wake-up), 2 more during the first
    # 400-iteration work loop: then the first pushf/cli/popf clears the virtual IF for good
    assert first == 4
    assert dword(mon, "user_ticks") == dword(mon, "seen_ticks") == first
    rounds, insns = dword(mon, "rounds"), mon.machine.counters["instructions"]
    assert mon.run(200_000).kind == "budget"
    assert dword(mon, "ticks") == first                      # frozen ...
    assert dword(mon, "rounds") - rounds > 400               # ... while the program runs on
    assert mon.machine.counters["instructions"] - insns > 190_000
    assert dword(mon, "calls") == dword(mon, "rounds")
    # the monitor's view: IF cleared by the emulated CLI, never set again; a tick waits
    assert mon.vcpu.IF == 0 and mon.vcpu.pending == 0x20
    assert mon.ticks_delivered == first
    assert mon.ticks_coalesced > 1000
    assert mon.emulated["cli"] == dword(mon, "calls")
    assert "popfd" not in mon.emulated and "pushfd" not in mon.emulated   # they never trapped
    assert mon.machine.cpu.eflags & IF                       # the real IF was 1 all along


def test_virtualizable_same_monitor_keeps_ticks_flowing():
    mon = boot(virtualizable=True)
    mon.run(100_000)
    t1 = dword(mon, "ticks")
    mon.run(100_000)
    t2 = dword(mon, "ticks")
    assert t1 > 600 and t2 - t1 > 600
    assert mon.ticks_delivered == t2 and mon.ticks_coalesced == 0
    calls = dword(mon, "calls")
    assert calls > 400
    # every critical section trapped three times: PUSHF, CLI, POPF
    assert mon.emulated["pushfd"] == calls + 1               # + the one before the first IRET
    assert mon.emulated["cli"] == calls == mon.emulated["popfd"]
    assert mon.vcpu.IF == 1 and mon.vcpu.iopl == 0
    assert dword(mon, "user_ticks") >= t2 - 3                # the program sees time pass


def test_console_syscalls_and_ring_transitions():
    mon = boot()
    m = mon.machine
    int80 = min(a for a, _, _, text in PROG.listing                 # the first INT 0x80 (write)
                if a >= L["user"] and text.split(";")[0].strip() == "int 0x80")
    assert bytes(m.memory[int80:int80 + 2]) == b"\xcd\x80"
    while m.cpu.eip != int80:
        assert mon.step() is None
    assert m.cpu.cpl == 3 and m.cpu.cs == UCODE
    user_esp = m.cpu.esp
    eflags = m.cpu.eflags
    assert mon.step() is None                                # INT 0x80: 3 -> 1
    assert m.cpu.cpl == 1 and m.cpu.cs == KCODE and m.cpu.eip == L["syscall"]
    top = mon.tables.stack_top(GUEST_RING)
    assert m.cpu.esp == top - 20 and m.cpu.ss == 0x21        # TSS.SS1:ESP1, 5 dwords
    assert dwords(mon, top - 20, 5) == [int80 + 2, UCODE, eflags, user_esp, UDATA]
    last = mon.log[-1]
    assert (last.trap, last.ring, last.eip, last.error_code) == ("INT 0x80", 3, int80, None)
    assert last.action == f"reflected INT 0x80 to guest handler {L['syscall']:#x}"
    while m.cpu.cpl != 3:
        assert mon.step() is None
    assert m.cpu.eip == int80 + 2 and m.cpu.eax == 18 and m.cpu.esp == user_esp   # 1 -> 3
    mon.run(5_000)
    assert mon.console == "kernel up\nhello from ring 3\n"
    assert dword(mon, "write_ret") == 18 == len("hello from ring 3\n")
    assert mon.reflected["INT 0x80"] >= 3


def test_user_divide_error_is_reflected_to_the_guest_handler():
    mon = boot()
    mon.run(5_000)
    assert dword(mon, "de_count") == 1
    assert dword(mon, "de_eip") == L["divide"]               # a fault: EIP of the DIV
    assert dword(mon, "de_missed") == 0                      # resumed at .recover
    de = [e for e in mon.log if e.trap == DE]
    assert len(de) == 1
    assert (de[0].ring, de[0].eip, de[0].error_code) == (3, L["divide"], None)
    assert de[0].action == f"reflected {DE} to guest handler {L['de_handler']:#x}"
    assert mon.reflected[DE] == 1


def test_log_names_the_trap_and_the_instruction():
    mon = boot()
    mon.run(5_000)
    first = mon.log[0]
    assert (first.trap, first.vector, first.error_code, first.ring) == (GP, 13, 0, 1)
    assert first.instruction == f"lidt [{L['idtr']:#x}]"
    assert first.action == f"emulated LIDT: virtual IDTR = base {L['VIDT']:#x} limit 0x7ff"
    cli = next(e for e in mon.log if e.instruction == "cli")
    assert (cli.trap, cli.ring, cli.eip) == (GP, 1, L["sys_ticks"] + 1)
    assert cli.action == "emulated CLI: virtual IF 1→0"
    sti = next(e for e in mon.log if e.instruction == "sti")
    assert sti.action == "emulated STI: virtual IF 0→1"
    hlt = next(e for e in mon.log if e.instruction == "hlt")
    assert hlt.action.startswith("emulated HLT: idle until the next timer tick")
    out = [e for e in mon.log if e.instruction == "out 0xe9, al"]
    assert "".join(eval(e.action.split("console ")[1]) for e in out) == mon.console
    assert str(cli).endswith("#GP (general protection)(0x0) 'cli': emulated CLI: virtual IF 1→0")
    c = mon.counters
    assert c["emulated CLI"] == mon.emulated["cli"]
    assert c["traps"] + mon.ticks_delivered == len(mon.log)        # + one entry per injection


# --- robustness --------------------------------------------------------------------------------
def kernel(src):
    return assemble("start:\n" + src, origin=0x1000)


def test_unsupported_instruction_kills_the_guest_cleanly():
    mon = boot(program=kernel("nop\nlldt [0x2000]\nnop"))
    ev = mon.run(1_000)
    assert ev.kind == "killed" and ev.eip == 0x1001 and ev.cpl == 1
    assert "unsupported instruction 'lldt word ptr [0x2000]'" in ev.reason
    assert "eip=0x00001001 in ring 1" in ev.reason and GP in ev.reason
    assert mon.state == "killed"
    assert mon.log[-1].action.startswith("killed the guest: unsupported instruction")
    insns = mon.machine.counters["instructions"]
    assert mon.run(1_000) is ev and mon.step() is ev       # stays dead, runs nothing
    assert mon.machine.counters["instructions"] == insns


def test_virtualizable_unemulated_sensitive_instruction_in_user_mode_kills():
    user = "user:\nmov eax, UDATA\nmov ds, eax\nl: sldt [0x2000]\njmp l\n"
    mon = boot(virtualizable=True, program=teaching_kernel(user=user))
    ev = mon.run(10_000)
    assert ev.kind == "killed" and ev.cpl == 3
    assert "'sldt word ptr [0x2000]'" in ev.reason
    # the same program under plain x86: SLDT answers at ring 3, nothing traps
    mon = boot(program=teaching_kernel(user=user))
    assert mon.run(10_000).kind == "budget"


def test_reflecting_without_a_gate_kills():
    mon = boot(program=kernel("mov ecx, 0\ndiv ecx"))      # no LIDT: virtual IDT limit 0
    ev = mon.run(100)
    assert ev.kind == "killed" and DE in ev.reason and "outside the guest's virtual IDT" in ev.reason


@pytest.mark.parametrize("src, why", [
    ("hlt\njmp start", "virtual IF=0"),                   # CLI'd forever: never wakes
    ("sti\nl: hlt\njmp l", "no timer running"),
])
def test_hlt_that_can_never_wake_ends_in_halt(src, why):
    mon = boot(program=kernel(src))
    ev = mon.run(1_000_000)
    assert ev.kind == "halt" and why in ev.reason
    assert ev.steps == 0 and mon.machine.counters["instructions"] <= 2
    assert mon.run(10) is ev


def test_hlt_loop_with_ticks_stays_within_budget():
    src = ("lidt [idtr]\nmov eax, 50\nout 0x40, eax\nsti\nl: hlt\njmp l\n"
           "t: inc dword [n]\niret\nidtr: dw 0x7ff\ndd 0x30000\nn: dd 0\n")
    prog = kernel(src)
    mon = boot(program=prog)
    put_descriptors(mon.machine.memory, 0x30000 + 8 * 0x20,
                    [make_gate("trap", KCODE, prog.labels["t"], 0)])
    ev = mon.run(3_000)
    assert ev.kind == "budget" and ev.steps == 3_000
    n = int.from_bytes(bytes(mon.machine.memory[prog.labels["n"]:prog.labels["n"] + 4]), "little")
    assert n == mon.ticks_delivered and n > 400            # each tick costs a few steps
    assert mon.idle_instructions > 40 * n                  # slept ~46 of every 50 instructions


def test_snapshot_restore_replays_identically():
    mon = boot()
    mon.run(3_000)
    snap = mon.snapshot()
    assert isinstance(snap, MonitorSnapshot)
    n_log = len(mon.log)

    def trace():
        ev = mon.run(20_000)
        m = mon.machine
        return (str(ev), [str(e) for e in mon.log], mon.console, dict(mon.counters),
                repr(mon.vcpu), repr(m.cpu), bytes(m.memory), m.counters.to_dict())

    a = trace()
    assert len(mon.log) > n_log
    mon.restore(snap)
    assert len(mon.log) == n_log
    b = trace()
    assert a == b
    with pytest.raises(TypeError):
        mon.restore(mon.machine.snapshot())


def test_bad_arguments():
    with pytest.raises(TypeError, match="Machine"):
        TrapAndEmulate("not a machine")
    with pytest.raises(TypeError, match="virtualizable"):
        TrapAndEmulate(virtualizable=1)
    mon = boot()
    with pytest.raises(ValueError, match="max_steps"):
        mon.run(0)
    with pytest.raises(ValueError, match="max_steps"):
        mon.run(True)
    mon.virtualizable = True
    assert mon.machine.virtualizable is True


# --- the frame oracle: the monitor's reflection vs the real CPU's delivery -------------------
MEM = 1 << 20
ORG = 0x1000
HANDLER = 0x3000
VIDT = 0x30000


@pytest.mark.parametrize("ring, src, gates, vector", [
    (3, "mov ecx, 0\ndiv ecx", {0: ("interrupt", 0)}, 0),            # fault, no error code
    (3, "mov ecx, 0\ndiv ecx", {0: ("trap", 0)}, 0),                 # trap gate keeps IF
    (3, "cli", {13: ("interrupt", 0)}, 13),                          # #GP(0) of the user
    (3, "int 0x80", {0x80: ("trap", 3)}, 0x80),                      # a system call
    (3, "int 0x80", {0x80: ("trap", 0), 13: ("trap", 0)}, 13),       # DPL-0 gate: #GP(0x402)
    (1, "mov ecx, 0\ndiv ecx", {0: ("interrupt", 0)}, 0),            # same ring: no switch
    (1, "int 0x80", {0x80: ("interrupt", 3)}, 0x80),
])
def test_reflected_frame_matches_the_real_cpu(ring, src, gates, vector):
    prog = assemble(src + "\nnop", origin=ORG)
    flags = 0x2 | IF | 0x1 | 0x40 | 0x800                            # CF ZF OF set, IF=1

    # the real CPU: the gates in the real IDT, delivery in the jitted core
    native = Machine(memory=MEM, exceptions="guest")
    t = install(native)
    native.memory[HANDLER] = 0xF4
    for v, (kind, dpl) in gates.items():
        t.gate(native, v, HANDLER + v, kind=kind, dpl=dpl, ring=GUEST_RING)
    native.load(prog)
    t.enter(native, ring, ORG)
    native.cpu.eflags = flags
    while native.cpu.eip < HANDLER:
        native.step()

    # the monitor: the same gates in the guest's virtual IDT
    mon = TrapAndEmulate(Machine(memory=MEM + MONITOR_PAGES * 4096))   # + the monitor's own
    m = mon.machine
    put_descriptors(m.memory, VIDT, [0] * 256)
    for v, (kind, dpl) in gates.items():
        put_descriptors(m.memory, VIDT + 8 * v, [make_gate(kind, KCODE, HANDLER + v, dpl)])
    mon.vcpu.idtr_base, mon.vcpu.idtr_limit, mon.vcpu.IF = VIDT, 0x7FF, 1
    m.load(prog)
    mon.tables.enter(m, ring, ORG)
    m.cpu.eflags = flags
    while m.cpu.eip < HANDLER:
        assert mon.step() is None

    assert m.cpu.eip == native.cpu.eip == HANDLER + vector
    for r in ("cs", "ss", "esp", "ds", "es"):
        assert getattr(m.cpu, r) == getattr(native.cpu, r), r
    assert m.cpu.cpl == native.cpu.cpl == GUEST_RING
    # EFLAGS: the real one, but with the virtual IF where the CPU has its IF
    virtual_eflags = (m.cpu.eflags & ~IF) | (IF if mon.vcpu.IF else 0)
    assert virtual_eflags == native.cpu.eflags
    assert bool(mon.vcpu.IF) == (gates[vector][0] == "trap")
    # the frame itself, and everything around it on both stacks
    for top in (t.stack_top(1), t.stack_top(3)):
        assert bytes(m.memory[top - 64:top]) == bytes(native.memory[top - 64:top])
    assert mon.log[-1].action.endswith(f"guest handler {HANDLER + vector:#x}")


# --- lesson 02's measured table and exercise -------------------------------------------------
def test_lesson_behaviour_table_follows_the_sdm():
    from hvsim.lessons import l02_hole as l02
    rows = l02.behaviour_table()
    assert len(rows) == 6 * 4 * 2
    for r in rows:
        above = r["cpl"] > r["iopl"]
        if r["instruction"] in ("CLI", "STI", "IN", "OUT"):          # #GP(0) iff CPL > IOPL
            assert (r["outcome"] == "#GP(0) trap") == above, r
        elif r["instruction"] == "POPF":                              # never traps
            assert r["outcome"] == ("IF stays 0 — silently" if above else "IF 0→1"), r
        else:                                                         # PUSHF reveals IOPL
            assert r["outcome"] == f"pushes IF=1 IOPL={r['iopl']}", r
    vz = l02.behaviour_table(cpls=(1,), iopls=(0,), virtualizable=True)
    assert {r["outcome"] for r in vz} == {"#GP(0) trap"}
    assert 'color:#b3261e">IF stays 0' in l02.behaviour_html(rows)
    with pytest.raises(ValueError):
        l02.behaviour_table(cpls=(4,))


def test_lesson_exercise_answer_is_the_freeze_point():
    from hvsim.lessons import l02_hole as l02
    ex = l02.exercise
    p = ex.params
    mon = l02.run_guest(False, steps=80_000, PERIOD=p["PERIOD"], WORK=p["WORK"])
    assert ex.expected == l02.guest_dword(mon, "ticks", **p) == mon.ticks_delivered
    assert mon.vcpu.IF == 0
    assert ex.check(ex.expected).ok and not ex.check(ex.expected + 1).ok
    assert not ex.check("many").ok
    assert str(ex.expected) in ex.reveal()
