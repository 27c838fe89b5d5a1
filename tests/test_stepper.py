"""The stepper (hvsim.widgets): controller driven headlessly, widget buttons clicked
without a browser, reverse stepping checked against recorded snapshots, and lesson 01's
machines."""
import asyncio
import random
import re
import time

import numpy as np
import pytest

from hvsim import Machine, assemble
from hvsim.guests import teaching_kernel
from hvsim.lessons import l01_rings as l01
from hvsim.monitors import LogEntry, Monitor, TrapAndEmulate
from hvsim.widgets import StepperController, Stepper
from hvsim.widgets.controller import HOST, console_out, snapshot_nbytes

SUM = """
    mov ecx, 10
again:
    add eax, ecx
    loop again
    hlt
"""

# a program whose state moves in memory, registers and flags, and that reads an
# unclaimed port (an io event the stepper must answer, and replay identically)
BUSY = """
start:
    mov esi, 0x8000
    mov ecx, 0
again:
    in al, 0x60
    add [esi + ecx*4], eax
    add ecx, 1
    and ecx, 63
    imul ebx, ecx, 7
    xor edx, ebx
    push edx
    pop edi
    jmp again
"""


def bare(src, **kw):
    m = Machine(memory=1 << 16, **kw)
    prog = assemble(src, origin=0x1000)
    m.load(prog)
    return m, prog


def reg_span(html, reg):
    """The element holding a register's value: (its class attribute, its text)."""
    found = re.search(rf'<span data-reg="{reg}" class="([^"]*)"[^>]*>([0-9a-f]+)</span>', html)
    assert found, f"no data-reg={reg} in the register HTML"
    return found.group(1), found.group(2)


def ring_class(svg, ring):
    found = re.search(rf'<circle data-ring="{ring}" class="([^"]*)"', svg)
    assert found
    return found.group(1)


def same_state(a, b):
    return (np.array_equal(a.st, b.st) and np.array_equal(a.mem, b.mem)
            and np.array_equal(a.tlb, b.tlb) and np.array_equal(a.dc, b.dc)
            and np.array_equal(a.pg, b.pg))


# ---- registers and highlighting ----------------------------------------------------------
def test_registers_after_steps_and_changed_highlight():
    m, prog = bare(SUM)
    c = StepperController(m)
    c.step()                                    # mov ecx, 10
    assert m.cpu.ecx == 10 and c.changed == {"ecx", "eip"}
    c.step_n(2)                                 # add eax, ecx ; loop again
    assert (m.cpu.eax, m.cpu.ecx, m.cpu.eip) == (10, 9, prog.labels["again"])
    assert c.position == 3
    html = c.view().registers_html
    assert reg_span(html, "eax") == ("hvsim-reg hvsim-changed", "0000000a")
    assert reg_span(html, "ecx") == ("hvsim-reg hvsim-changed", "00000009")
    assert reg_span(html, "ebx") == ("hvsim-reg", "00000000")
    assert reg_span(html, "cs")[1] == "0008"
    text = c.render_text()
    assert "eax=0000000a*" in text and re.search(r"ebx=00000000(?!\*)", text)
    assert "\u25ba 00001005" in text and "add eax, ecx" in text     # the current line
    c.step()                                    # add: only eax, eip and flags move
    assert c.changed == {"eax", "eip", "eflags"}
    assert reg_span(c.view().registers_html, "ecx")[0] == "hvsim-reg"


def test_step_n_stops_at_the_halt_event():
    m, _ = bare(SUM)
    c = StepperController(m)
    r = c.step_n(1000)
    assert r.reason == "event" and r.event.kind == "halt"
    assert r.steps == 1 + 2 * 10 + 1 and m.cpu.eax == 55
    assert [t.name for t in c.trap_log] == ["halt"] and c.trap_log[0].handler == HOST


# ---- rings, traps, the trap log ----------------------------------------------------------
def test_ring_indicator_through_int_0x80_and_the_tss_stack_switch():
    d = l01.syscall_demo()
    c = StepperController(d.machine)
    assert 'data-cpl="3"' in c.view().rings_html
    assert ring_class(c.view().rings_html, 3) == "hvsim-ring hvsim-lit"
    c.step_n(2)                                 # mov eax, 0 ; mov ebx, 'h'
    assert d.machine.cpu.cpl == 3
    c.step()                                    # int 0x80
    svg = c.view().rings_html
    assert 'data-cpl="0"' in svg and ring_class(svg, 0) == "hvsim-ring hvsim-lit"
    assert ring_class(svg, 3) == "hvsim-ring" and 'data-ring="-1"' in svg
    esp0 = l01.tss_esp0(d)
    assert esp0 == len(d.machine.memory) and d.machine.cpu.esp == esp0 - 20
    frame = l01.ring0_frame(d.machine)
    int_end = d.program.labels["user"] + 5 + 5 + 2
    assert frame == {"eip": int_end, "cs": 0x3B, "eflags": 0x2, "esp": d.tables.stack_top(3),
                     "ss": 0x43}
    (rec,) = c.trap_log
    assert (rec.name, rec.vector, rec.error_code, rec.eip, rec.ring_from, rec.ring_to, rec.step) == \
        ("INT 0x80", 0x80, None, int_end - 2, 3, 0, 3)
    assert rec.return_eip == int_end
    assert rec.handler == "guest ring 0 (IDT)"
    assert "INT 0x80" in c.view().traplog_html and "guest ring 0 (IDT)" in c.render_text()


def test_ring3_cli_takes_gp_through_the_guest_idt():
    d = l01.cli_demo()
    c = StepperController(d.machine)
    assert c.step() is None and d.machine.cpu.eax == 0x1234
    c.step()                                    # cli -> #GP(0) into the ring-0 handler
    assert d.machine.cpu.cpl == 0 and d.machine.cpu.eip == d.label("gp_handler")
    (rec,) = c.trap_log
    assert rec.name == "#GP (general protection)" and rec.error_code == 0
    assert rec.eip == d.label("user") + 5 and (rec.ring_from, rec.ring_to) == (3, 0)
    assert rec.handler == "guest ring 0 (IDT)"
    html = c.view().traplog_html
    assert 'data-vector="13"' in html and "#GP (general protection)" in html
    r = c.run_to_trap()                         # the handler returns; next: INT 0x80 (exit)
    assert r.reason == "trap" and c.trap_log[-1].name == "INT 0x80"
    assert d.machine.cpu.ebx == 0x5678          # CLI was skipped, the program went on
    assert c.run().event.kind == "halt"


def trap_row(html, step):
    """The cells of the trap log's row for ``step``, keyed by the table's headers."""
    head = re.findall(r"<th>([^<]*)</th>", html)
    row = re.search(rf'<tr class="hvsim-trap" data-step="{step}"[^>]*>(.*?)</tr>', html)
    assert row, f"no trap log row for step {step}"
    return dict(zip(head, re.findall(r"<td>(.*?)</td>", row.group(1))))


# issue 17, defect 5: one meaning per column -- the instruction that caused the event,
# and (a column of its own) the EIP the CPU pushed, where IRET resumes
def test_trap_log_int_0x80_shows_the_int_and_the_return_eip_apart():
    d = l01.syscall_demo()
    c = StepperController(d.machine)
    c.step_n(3)                                 # mov eax, 0 ; mov ebx, 'h' ; int 0x80
    int_at = d.label("user") + 5 + 5
    (rec,) = c.trap_log
    assert (rec.name, rec.eip, rec.return_eip) == ("INT 0x80", int_at, int_at + 2)
    cells = trap_row(c.view().traplog_html, rec.step)
    assert cells["instruction EIP"] == f"{int_at:#010x}"
    assert cells["return EIP"] == f"{int_at + 2:#010x}"
    assert f"eip={int_at:#010x} return={int_at + 2:#010x}" in rec.text()
    # the machine's trace says the same
    (t,) = [t for t in d.machine.trace if t.kind == "delivered"]
    assert (t.eip, t.return_eip) == (int_at, int_at + 2)


def test_trap_log_gp_fault_returns_to_the_faulting_instruction():
    d = l01.cli_demo()
    c = StepperController(d.machine)
    c.step_n(2)                                 # mov eax, 0x1234 ; cli -> #GP(0)
    cli_at = d.label("user") + 5
    (rec,) = c.trap_log
    assert (rec.vector, rec.eip, rec.return_eip) == (13, cli_at, cli_at)
    cells = trap_row(c.view().traplog_html, rec.step)
    assert cells["instruction EIP"] == cells["return EIP"] == f"{cli_at:#010x}"


SINGLE_STEP = """
user:
    pushfd
    or dword [esp], 0x100   ; TF
    popfd                   ; TF set: the trap follows the *next* instruction
stepped:
    mov eax, 7
    jmp user
db_handler:
    hlt
"""


def test_trap_log_single_step_trap_returns_after_the_stepped_instruction():
    d = l01.ring3_demo(SINGLE_STEP)
    d.tables.gate(d.machine, 1, d.label("db_handler"))
    c = StepperController(d.machine)
    r = c.run_to_trap()
    assert r.reason == "trap" and d.machine.cpu.eip == d.label("db_handler")
    (rec,) = c.trap_log
    stepped = d.label("stepped")
    assert (rec.vector, rec.eip, rec.return_eip) == (1, stepped, stepped + 5)
    cells = trap_row(c.view().traplog_html, rec.step)
    assert (cells["instruction EIP"], cells["return EIP"]) == (f"{stepped:#010x}", f"{stepped + 5:#010x}")


def test_trap_log_host_exits_push_no_return_eip():
    d = l01.cli_demo(exceptions="host")
    c = StepperController(d.machine)
    c.run()
    (rec,) = c.trap_log
    assert rec.eip == d.label("user") + 5 and rec.return_eip is None
    assert trap_row(c.view().traplog_html, rec.step)["return EIP"] == "&ndash;"


def test_ring3_cli_with_exceptions_to_the_host():
    d = l01.cli_demo(exceptions="host")
    c = StepperController(d.machine)
    r = c.run()
    assert r.reason == "event" and r.steps == 2
    ev = r.event
    assert (ev.kind, ev.vector, ev.error_code, ev.cpl) == ("exception", 13, 0, 3)
    (rec,) = c.trap_log
    assert (rec.name, rec.error_code, rec.eip, rec.ring_from) == \
        ("#GP (general protection)", 0, d.label("user") + 5, 3)
    assert rec.handler == HOST and "host/monitor (ring 0)" in c.render_text()
    assert d.machine.cpu.cpl == 3               # nobody entered ring 0 in the guest


class FakeMonitor(Monitor):
    """A trap-and-emulate monitor in miniature: #GP exits to it; it emulates CLI."""
    name = "fake"

    def __init__(self, machine):
        self.machine, self.log = machine, []

    def step(self):
        ev = self.machine.step()
        if ev is not None and ev.kind == "exception" and ev.vector == 13:
            self.machine.cpu.eflags &= ~0x200
            self.machine.cpu.eip = ev.eip + ev.insn.length
            self.log.append(LogEntry("emulated", ev.name, ev.vector, ev.error_code, ev.eip, ev.cpl,
                                     ev.insn, "emulated CLI", 0))
            return None
        return ev

    def run(self, max_steps=1):
        raise NotImplementedError

    def snapshot(self):
        return self.machine.snapshot(), list(self.log)

    def restore(self, snap):
        self.machine.restore(snap[0])
        self.log[:] = snap[1]

    stats = {}
    vcpu = None
    console = ""


def test_monitor_target_log_reaches_the_trap_log():
    d = l01.cli_demo(exceptions="host")
    mon = FakeMonitor(d.machine)
    c = StepperController(mon)
    c.step_n(2)
    assert d.machine.cpu.eip == d.label("user") + 6 and d.machine.cpu.cpl == 3
    (rec,) = c.trap_log
    assert (rec.name, rec.error_code, rec.eip, rec.ring_from, rec.handler, rec.action) == \
        ("#GP (general protection)", 0, d.label("user") + 5, 3, HOST, "cli: emulated CLI")
    c.back(1)
    assert c.trap_log == [] and d.machine.cpu.eip == d.label("user") + 5
    c.step()
    assert len(c.trap_log) == 1 and len(mon.log) == 1


def test_target_without_the_interface_is_refused():
    with pytest.raises(TypeError, match=r"a Machine or a monitor \(hvsim.monitors.Monitor\), not object"):
        StepperController(object())


# ---- Back, Reset, checkpoints ----------------------------------------------------------------
def test_back_returns_exactly_to_earlier_states_across_checkpoints():
    answers = iter(range(1, 10 ** 6))                 # a different answer to every IN
    m, _ = bare(BUSY)
    c = StepperController(m, io=lambda ev: next(answers) & 0xFF, checkpoint_interval=7)
    snaps = [m.snapshot()]
    for _ in range(300):
        c.step()
        snaps.append(m.snapshot())
    assert len(c.checkpoints) > 10                    # the walk back crosses checkpoints
    rng = random.Random(7)
    for _ in range(40):
        target = rng.randrange(0, c.position)
        c.back(c.position - target)
        assert c.position == target
        assert same_state(m.snapshot(), snaps[target]), target
        forward = rng.randrange(0, 300 - target + 1)
        c.goto(target + forward)                      # replays the journalled IN answers
        assert same_state(m.snapshot(), snaps[target + forward])
    c.goto(300)
    assert same_state(m.snapshot(), snaps[300])


def test_back_then_a_new_future():
    m, _ = bare(SUM)
    c = StepperController(m)
    c.step_n(5)
    c.back(2)
    assert c.position == 3 and m.cpu.ecx == 9 and m.cpu.eax == 10
    m.cpu.eax = 100                                   # a change from outside...
    c.rebase()                                        # ...makes the present position 0
    assert c.position == 0
    c.step()
    c.back()
    assert m.cpu.eax == 100 and c.position == 0


def test_two_controllers_of_one_machine_stay_consistent():
    # lesson 00 built a second controller on the machine its Stepper shows: the first
    # one's Step then jumped, counting wrong. Now the first sees the change and rebases.
    from hvsim.widgets.controller import OUTSIDE_CHANGE
    m, _ = bare(SUM)
    first, second = StepperController(m), StepperController(m)
    second.step_n(3)
    eip, eax = m.cpu.eip, m.cpu.eax
    first.step()
    assert first.message == OUTSIDE_CHANGE and first.position == 1
    first.back()                                      # to where the other left it, not before
    assert (m.cpu.eip, m.cpu.eax, first.position) == (eip, eax, 0)
    first.step()
    assert first.message == ""                        # its own steps are no outside change
    m.cpu.eax = 100                                   # a cell writes a register...
    second.step()                                     # ...and the second stepper notices too
    assert second.message == OUTSIDE_CHANGE and second.position == 1
    second.back()
    assert m.cpu.eax == 100


def test_reset_restores_the_construction_state():
    d = l01.cli_demo()
    m = d.machine
    start = m.snapshot()
    c = StepperController(m)
    c.run()
    assert m.cpu.cpl == 0 and c.trap_log
    c.reset()
    assert same_state(m.snapshot(), start)
    assert c.position == 0 and c.trap_log == [] and c.checkpoints == [0]
    assert 'data-cpl="3"' in c.view().rings_html
    assert "eip" in c.changed and "cs" in c.changed


def test_checkpoint_memory_budget_is_honoured():
    m, _ = bare(BUSY)
    size = snapshot_nbytes(m.snapshot())
    assert size >= len(m.memory)
    c = StepperController(m, checkpoint_bytes=4 * size, checkpoint_interval=5)
    snaps = {0: m.snapshot()}
    for i in range(1, 401):
        c.step()
        if i % 37 == 0:
            snaps[i] = m.snapshot()
        assert c.checkpoint_bytes_used <= 4 * size
    cps = c.checkpoints
    assert len(cps) == 4 and cps[0] == 0 and cps[-1] == 400
    assert cps[2] - cps[1] >= cps[3] - cps[2]         # older history is thinner
    for p in sorted(snaps, reverse=True):
        c.goto(p)
        assert same_state(m.snapshot(), snaps[p])
    with pytest.raises(ValueError, match="cannot hold two snapshots"):
        StepperController(m, checkpoint_bytes=size)


# ---- breakpoints and running ---------------------------------------------------------------
def test_breakpoints_stop_run():
    m, prog = bare(SUM)
    c = StepperController(m)
    loop_at = prog.labels["again"] + 2                # the LOOP instruction
    assert c.toggle_breakpoint(loop_at) is True
    r = c.run()
    assert r.reason == "breakpoint" and m.cpu.eip == loop_at and m.cpu.eax == 10
    r = c.run()                                       # leaves the breakpoint, stops there again
    assert r.reason == "breakpoint" and r.steps == 2 and m.cpu.eax == 19
    lines = c.disassembly()
    cur = [ln for ln in lines if ln.current]
    assert len(cur) == 1 and cur[0].address == loop_at and cur[0].breakpoint
    assert c.toggle_breakpoint(loop_at) is False
    assert c.run().event.kind == "halt" and m.cpu.eax == 55


def test_run_and_stop_as_an_asyncio_task():
    m, _ = bare("spin: jmp spin")
    c = StepperController(m)

    async def scenario():
        task = asyncio.ensure_future(c.run_async(budget=10 ** 9, chunk=1000))
        for _ in range(5):
            await asyncio.sleep(0)
        assert c.running
        with pytest.raises(RuntimeError, match="running"):
            c.step()
        c.request_stop()
        return await task

    r = asyncio.run(scenario())
    assert r.reason == "stopped" and 0 < r.steps < 10 ** 9 and r.steps % 1000 == 0
    assert c.position == r.steps and not c.running
    r = asyncio.run(c.run_async(budget=2500, chunk=1000))
    assert r.reason == "budget" and r.steps == 2500


def test_bad_inputs_give_clear_errors():
    m, _ = bare(SUM)
    c = StepperController(m)
    with pytest.raises(ValueError, match="N must be at least 1, got 0"):
        c.step_n(0)
    with pytest.raises(ValueError, match="at least 1, got -3"):
        c.step_n(-3)
    for bad in (2.5, "3", True, None):
        with pytest.raises(TypeError, match="whole number of steps"):
            c.step_n(bad)
    with pytest.raises(ValueError, match="only 0 taken"):
        c.back()
    with pytest.raises(TypeError):
        c.back("1")
    with pytest.raises(TypeError, match="breakpoint address"):
        c.toggle_breakpoint("0x1000")
    with pytest.raises(ValueError, match="32-bit"):
        c.toggle_breakpoint(1 << 32)
    for i in range(16):
        c.toggle_breakpoint(0x2000 + i)
    with pytest.raises(ValueError, match="at most 16"):
        c.toggle_breakpoint(0x3000)
    assert c.position == 0 and m.cpu.eip == 0x1000


def test_disassembly_of_bad_bytes_and_addresses_outside_memory():
    m = Machine(memory=1 << 16)
    m.load(b"\x90\x0f\x0b\xd6\x90", origin=0x1000)    # nop, ud2, (bad) 0xd6, nop
    c = StepperController(m)
    text = c.render_text()
    assert "ud2" in text and "(bad)  db 0xd6" in text
    m.cpu.eip = 0xFFFE                                 # the last 2 bytes of memory
    lines = [ln for ln in c.disassembly() if ln.address is not None]
    assert lines[-1].address == 0xFFFE and lines[-1].current
    m.cpu.eip = 0x20000
    (line,) = [ln for ln in c.disassembly() if ln.address is not None]
    assert line.current and "outside memory" in line.text
    assert "outside memory" in c.render_text()


# ---- the widget layer, clicked without a browser --------------------------------------------
def test_widget_buttons_and_dom_hooks():
    d = l01.cli_demo()
    s = Stepper(d.machine)
    hooks = {"hvsim-step": s.step_button, "hvsim-step-n": s.step_n_button,
             "hvsim-run-trap": s.run_trap_button, "hvsim-run": s.run_button,
             "hvsim-back": s.back_button, "hvsim-reset": s.reset_button,
             "hvsim-registers": s.registers, "hvsim-rings": s.rings, "hvsim-disasm": s.disasm,
             "hvsim-traplog": s.traplog, "hvsim-console": s.console, "hvsim-flags": s.flags}
    for cls, w in hooks.items():
        assert cls in w._dom_classes, cls
    widgets_before = list(s.children)
    (cur,) = [t for t in s.disasm_lines if "hvsim-current" in t._dom_classes]
    assert "mov eax, 0x1234" in cur.description
    s.step_button.click()
    assert d.machine.cpu.eax == 0x1234
    assert reg_span(s.registers.value, "eax") == ("hvsim-reg hvsim-changed", "00001234")
    assert 'data-cpl="3"' in s.rings.value and ring_class(s.rings.value, 3).endswith("hvsim-lit")
    (cur,) = [t for t in s.disasm_lines if "hvsim-current" in t._dom_classes]
    assert cur.description.split()[-1] == "cli" and cur is s.disasm_lines[s.controller.before]
    s.step_button.click()                              # CLI -> #GP -> ring 0
    assert 'data-cpl="0"' in s.rings.value and "#GP (general protection)" in s.traplog.value
    s.back_button.click()
    assert d.machine.cpu.cpl == 3 and "no trap yet" in s.traplog.value
    s.n_input.value = 3
    s.step_n_button.click()
    assert s.controller.position == 4
    s.reset_button.click()
    assert s.controller.position == 0 and d.machine.cpu.eax == 0
    s.back_button.click()                              # at the start: an error in the status line
    assert "error: cannot go back 1 step(s)" in s.status.value
    # a click on a line toggles its breakpoint
    line = s.disasm_lines[s.controller.before + 1]
    addr = s.controller.disassembly()[s.controller.before + 1].address
    line.value = True
    assert addr in d.machine.breakpoints and "\u25cf" in line.description
    s.run_trap_button.click()                          # no event loop here: runs at once
    assert d.machine.cpu.eip == addr and s.controller.last_result.reason == "breakpoint"
    line = s.disasm_lines[s.controller.before]         # the breakpoint is now the current line
    assert line.value is True and "hvsim-current" in line._dom_classes
    line.value = False
    assert d.machine.breakpoints == set() and "\u25cf" not in line.description
    assert list(s.children) == widgets_before          # updated in place, never re-created


def test_widget_run_stop_on_an_event_loop():
    m, _ = bare("spin: jmp spin")
    s = Stepper(m)

    async def scenario():
        s.run_button.click()
        assert s.run_button.description == "Stop" and s.step_button.disabled
        for _ in range(3):
            await asyncio.sleep(0)
        s.run_button.click()                           # Stop
        await s._task
        return s.controller.last_result

    r = asyncio.run(scenario())
    assert r.reason == "stopped" and r.steps > 0
    assert s.run_button.description == "Run" and not s.step_button.disabled
    assert f"step {r.steps}" in s.status.value


def test_step_latency_is_measured():
    """Step + full render, as one Step click costs (printed with -s, not asserted)."""
    d = l01.cli_demo()
    s = Stepper(d.machine, n=1)
    n = 100
    t0 = time.perf_counter()
    for _ in range(n):
        s.step_n_button.click()
        if d.machine.cpu.eip == d.label("syscall.exit") + 1:
            s.reset_button.click()
    dt = (time.perf_counter() - t0) / n
    print(f"\nstep + render through the widget: {dt * 1e3:.2f} ms")
    assert s.controller.position <= 11


# ---- lesson 01 -------------------------------------------------------------------------------
def test_lesson01_exercises_are_computed_by_running_hvsim():
    ex = l01.esp0_exercise(seed=5)
    assert ex.expected == ex.params["esp0"] - 20
    assert ex.check(hex(ex.expected)).ok and not ex.check(ex.expected + 4).ok
    assert not ex.check(None).ok and not ex.check("zz").ok
    g = l01.gp_error_code_exercise(seed=5)
    assert g.expected == g.params["vector"] * 8 + 2
    assert str(g.expected) in g.solution_text() or hex(g.expected) in g.solution_text()


def test_lesson01_syscall_demo_prints_and_exits():
    d = l01.syscall_demo()
    ev = d.machine.run(1000)
    assert ev.kind == "halt" and d.machine.console == "hi" and d.machine.cpu.cpl == 0


def test_trap_log_shows_the_newest_trap_first():
    """The log box scrolls; its top row must be the trap the student just caused."""
    c = l01.cli_demo().controller()
    c.run()                                   # #GP at the CLI, then the exit system call
    steps = [int(s) for s in re.findall(r'class="hvsim-trap" data-step="(\d+)"', c.view().traplog_html)]
    assert len(steps) >= 2 and steps == sorted(steps, reverse=True)
    assert steps[0] == max(r.step for r in c.trap_log)


# ---- the disassembly decodes only from known instruction starts ----------------------------
KERNEL = teaching_kernel()


def lesson02_controller(**kw):
    mon = TrapAndEmulate(program=KERNEL)
    return mon, StepperController(mon, **kw)


def code_lines(c):
    return [ln for ln in c.disassembly() if ln.kind == "code"]


def test_disassembly_before_eip_starts_only_at_known_instruction_starts():
    mon, c = lesson02_controller()
    prog = KERNEL
    start = prog.labels["start"]
    lines = c.disassembly()
    assert [ln.text for ln in lines[:c.before]][-1] == "start:"     # nothing decoded before it
    assert all(ln.address is None for ln in lines[:c.before])
    c.step()                                                        # LIDT, emulated
    rows = code_lines(c)
    (lidt,) = [ln for ln in rows if ln.address == start]
    assert lidt.text.startswith("lidt") and lidt.hexbytes == prog.code[:7].hex(" ")
    assert not [ln for ln in rows if ln.address < start or start < ln.address < start + 7]
    assert "add byte ptr [eax], al" not in c.render_text()
    # raw bytes, no program: the bytes before EIP are decoded only from where the CPU was
    m = Machine(memory=1 << 16)
    m.load(bytes(prog.code), origin=start)
    m.cpu.eip = start + 7
    c = StepperController(m)
    assert all(ln.kind == "" for ln in c.disassembly()[:c.before])
    m.cpu.eip = start
    c = StepperController(m)
    c.step_n(2)
    assert [ln.address for ln in code_lines(c)][:3] == [start, start + 7, start + 12]


def test_disassembly_shows_data_as_data_and_the_labels():
    m, prog = bare(SUM)
    c = StepperController(m)
    c.step_n(3)
    text = c.render_text()
    assert "add byte ptr [eax], al" not in text and "   again:" in text
    (pad,) = [ln for ln in c.disassembly() if ln.kind == "data"]    # the zeros after HLT
    assert pad.address == 0x1000 + len(prog.code) and "db 0" in pad.text
    # the kernel's data after puts: its IDTR image and counters, under their labels
    mon, c = lesson02_controller(after=8)
    lab = KERNEL.labels
    mon.machine.breakpoints.add(lab["puts.done"])
    assert c.run().reason == "breakpoint"
    shown = [ln.label().strip() for ln in c.disassembly() if ln.kind]
    i = shown.index("idtr:")
    assert shown[i + 1].endswith("dw 0x7ff") and shown[i + 2].endswith("dd 0x30000")
    assert shown[i + 3] == "ticks:" and shown[i + 4].endswith("dd 0")
    assert [ln.kind for ln in c.disassembly() if ln.address == lab["idtr"]] == ["data"]
    # user and kernel code told apart by their labels
    mon.machine.breakpoints.clear()
    mon.machine.breakpoints.add(lab["user"])
    c.run()
    assert c.disassembly()[c.before - 1].text == "user:" and c.disassembly()[c.before].current


# ---- the monitor's virtual CPU beside the real one, and Run to next trap with a filter ---------
def vcpu_value(html, field):
    found = re.search(rf'<span data-vcpu="{field}" class="([^"]*)"[^>]*>([^<]*)</span>', html)
    assert found, f"no data-vcpu={field}"
    return found.group(1), found.group(2)


def test_virtual_cpu_is_shown_and_follows_the_emulated_cli():
    mon, c = lesson02_controller()
    lab = KERNEL.labels
    v = c.view().vcpu_html
    assert "virtual CPU (the monitor's)" in v and vcpu_value(v, "IF")[1] == "0"
    mon.machine.breakpoints.add(lab["sys_ticks"] + 1)               # the CLI after PUSHF
    assert c.run().reason == "breakpoint" and mon.vcpu.IF == 1
    v = c.view().vcpu_html
    assert vcpu_value(v, "IF")[1] == "1" and vcpu_value(v, "idtr_base")[1] == "00030000"
    assert "virtual CPU (the monitor's): IF=1" in c.render_text()
    c.step()                                                        # CLI traps: emulated
    assert mon.vcpu.IF == 0 and mon.machine.cpu.eflags & 0x200      # the real IF stays 1
    assert vcpu_value(c.view().vcpu_html, "IF") == ("hvsim-vreg hvsim-changed", "0")
    assert "IF=0*" in c.render_text()
    # a bare machine has no virtual CPU: nothing extra
    m, _ = bare(SUM)
    c = StepperController(m)
    assert c.vcpu is None and c.view().vcpu_html == "" and "virtual CPU" not in c.render_text()


def test_run_to_trap_passes_over_console_outs():
    mon, c = lesson02_controller()
    first = [c.run_to_trap().event for _ in range(3)]              # LIDT, OUT timer, OUT 'k'
    assert [r.mnemonic for r in first] == ["lidt", "out", "out"]
    assert first[1].port == 0x40 and first[2].port == 0xE9 and console_out(first[2])
    c.reset()
    stops = [c.run_to_trap(skip=console_out).event for _ in range(3)]
    assert [r.mnemonic for r in stops] == ["lidt", "out", "sti"]
    assert mon.console == "kernel up\n" and not any(console_out(r) for r in stops)
    with pytest.raises(TypeError, match="skip"):
        c.run_to_trap(skip="out")

    async def run():
        return await c.run_async(stop_at_trap=True, skip=lambda r: r.mnemonic != "cli", chunk=50)
    r = asyncio.run(run())
    assert r.reason == "trap" and r.event.mnemonic == "cli" and mon.vcpu.IF == 0


def test_widget_shows_the_virtual_cpu_and_skips_console_outs():
    mon = TrapAndEmulate(program=teaching_kernel())
    s = Stepper(mon)
    assert "hvsim-vcpu" in s.vcpu_panel._dom_classes and "virtual CPU" in s.vcpu_panel.value
    assert "hvsim-skip-out" in s.skip_out._dom_classes and s.skip_out.value is True
    for _ in range(3):
        s.run_trap_button.click()                                   # no event loop: at once
    assert s.controller.last_result.event.mnemonic == "sti"
    assert vcpu_value(s.vcpu_panel.value, "IF")[1] == "1"
    s.skip_out.value = False
    s.run_trap_button.click()
    assert s.controller.last_result.reason in ("trap", "event")
    m, _ = bare(SUM)
    assert Stepper(m).vcpu_panel.layout.display == "none"
