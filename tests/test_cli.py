"""The ``hvsim`` command line, run as a user would: ``python -m hvsim`` in a subprocess.

Oracles: hand-derived results (sum 1..10 = 55), the documented exit statuses
(0 halt, 1 other event, 2 bad input) and the argument parser's own rules.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hvsim.cli import _int_literal

ROOT = Path(__file__).resolve().parent.parent

SUM_PROGRAM = """\
    mov ecx, 10
again:
    add eax, ecx
    loop again
    hlt
"""


def hvsim(*args, timeout=1500):   # generous: the first call after a source change recompiles
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "hvsim", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_run_prints_registers_and_counters_and_exits_0_on_halt(tmp_path):
    src = tmp_path / "sum.s"
    src.write_text(SUM_PROGRAM)
    out = hvsim("run", src)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "eax=0x00000037 (55)" in lines
    assert "ecx=0x00000000 (0)" in lines
    assert lines[0].startswith("event: halt")
    assert "cpl=0" in lines
    assert any(l.startswith("eflags=0x") and "IOPL=0" in l for l in lines)
    instr = [l.split() for l in lines if l.strip().startswith("instructions")]
    assert len(instr) == 1 and int(instr[0][1]) in (21, 22)   # mov + 10 x (add, loop) [+ hlt]


def test_run_other_event_exits_1(tmp_path):
    src = tmp_path / "spin.s"
    src.write_text("again:\n    inc eax\n    jmp again\n")
    out = hvsim("run", src, "--max-steps", 7)
    assert out.returncode == 1, out.stderr
    assert out.stdout.splitlines()[0].startswith("event: budget")
    assert "eax=0x00000004 (4)" in out.stdout.splitlines()   # inc, jmp, inc, jmp, inc, jmp, inc


def test_bad_assembly_exits_2_with_the_line_and_no_traceback(tmp_path):
    src = tmp_path / "bad.s"
    src.write_text("    mov eax, 1\n    nop\n    frobnicate eax, 3\n    hlt\n")
    out = hvsim("run", src)
    assert out.returncode == 2
    assert "line 3" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_missing_file_exits_2_with_a_clear_message(tmp_path):
    missing = tmp_path / "nope.s"
    out = hvsim("run", missing)
    assert out.returncode == 2
    assert f"{missing}: no such file" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("value", ["lots", "-5", "0"])
def test_bad_max_steps_exits_2(tmp_path, value):
    src = tmp_path / "sum.s"
    src.write_text(SUM_PROGRAM)
    out = hvsim("run", src, f"--max-steps={value}")
    assert out.returncode == 2
    assert "--max-steps" in out.stderr and "positive integer" in out.stderr
    assert "Traceback" not in out.stderr


def test_disasm_raw_bytes(tmp_path):
    raw = tmp_path / "code.bin"
    raw.write_bytes(bytes([0x01, 0xC8, 0xF4]))          # add eax, ecx ; hlt
    out = hvsim("disasm", raw, "--origin", "0x1000")
    assert out.returncode == 0, out.stderr
    text = out.stdout.lower()
    assert "add" in text and "eax" in text and "ecx" in text and "hlt" in text
    assert "1000" in text and "1002" in text               # addresses follow --origin


def test_int_literal_accepts_hex_and_size_suffixes():
    assert _int_literal("16M") == 16 << 20
    assert _int_literal("64k") == 64 << 10
    assert _int_literal("0x1000") == 4096
    assert _int_literal("1_000") == 1000
    with pytest.raises(ValueError):
        _int_literal("ten")


KERNEL = """\
start:
    mov eax, 'K'
    out 0xe9, al
    cli
    sti
    hlt
"""


def test_run_under_the_trap_and_emulate_monitor_prints_its_counts_and_log(tmp_path):
    """The kernel runs in ring 1: OUT, CLI, STI and HLT each trap and are emulated (4
    traps), the console is the monitor's, and HLT with no timer halts the guest (status 0)."""
    src = tmp_path / "kernel.s"
    src.write_text(KERNEL)
    out = hvsim("run", "--monitor", "trap-and-emulate", "--trace", src)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:3] == ["--- console ---", "K", "---------------"]
    assert lines[3].startswith("monitor: trap-and-emulate, guest halted (guest HLT with no timer")
    assert "cpl=1" in lines and "  traps     4" in lines and "  emulated  4" in lines
    log = lines[lines.index("--- monitor log (4 entries, oldest first) ---") + 1:]
    assert [l.split("'")[1] for l in log] == ["out 0xe9, al", "cli", "sti", "hlt"]
    assert log[1].endswith("emulated CLI: virtual IF 0→0")


@pytest.mark.parametrize("monitor, cpl, counts", [
    # the emulators: the kernel at its own ring 0, nothing traps; Bochs interprets the 5
    # instructions, QEMU translates them (OUT, CLI and STI end TBs: 3 lookups miss)
    ("emulate", 0, {"insns_interpreted": 5}),
    ("dbt", 0, {"insns_translated": 5, "insns_run_translated": 5, "tb_slow_lookups": 3}),
    # VMware's BT: CLI and STI in the TC, OUT and HLT callouts, no trap at all
    ("bt", 1, {"callouts": 2, "emulated": 2, "translated": 5}),
    # VirtualBox raw mode: CLI's 5-byte jump would cover STI (sensitive), so both are INT3s
    # (2 #BP) beside OUT and HLT's own #GP: 4 traps; the scanner read 5 instructions
    ("rawmode", 1, {"traps": 4, "emulated": 4, "scanned": 5}),
])
def test_run_under_the_software_virtual_machines(tmp_path, monitor, cpl, counts):
    src = tmp_path / "kernel.s"
    src.write_text(KERNEL)
    out = hvsim("run", "--monitor", monitor, src)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:3] == ["--- console ---", "K", "---------------"]
    assert lines[3].startswith(f"monitor: {monitor}, guest halted")
    assert f"cpl={cpl}" in lines
    shown = lines[lines.index("monitor counts:") + 1:]
    moved = {l.split()[0]: int(l.split()[1]) for l in shown if l.startswith("  ") and len(l.split()) == 2}
    assert moved == counts


def test_run_natively_and_bad_monitor_options(tmp_path):
    src = tmp_path / "sum.s"
    src.write_text(SUM_PROGRAM)
    out = hvsim("run", "--monitor", "native", src)
    assert out.returncode == 0 and "eax=0x00000037 (55)" in out.stdout.splitlines()
    assert out.stdout.splitlines()[0] == "monitor: native, guest halted"
    bad = hvsim("run", "--monitor", "trap-and-emulate", "--exceptions", "guest", src)
    assert bad.returncode == 2 and "--exceptions is for the bare machine" in bad.stderr
    bad = hvsim("run", "--monitor", "trap-and-emulate", "--timer", "100", src)
    assert bad.returncode == 2 and "programs its own (virtual) timer" in bad.stderr
    bad = hvsim("run", "--monitor", "vmware", src)
    assert bad.returncode == 2 and "invalid choice: 'vmware'" in bad.stderr


@pytest.mark.parametrize("source", ["", "; only a comment\n\n", "start:\n"])
def test_run_of_an_empty_program_exits_2_naming_the_file(tmp_path, source):
    src = tmp_path / "empty.s"
    src.write_text(source)
    out = hvsim("run", src)
    assert out.returncode == 2
    assert f"{src}: the program is empty" in out.stderr
    assert out.stdout == "" and "Traceback" not in out.stderr


@pytest.mark.parametrize("name, message", [("code.bin", "the file is empty"),
                                           ("prog.s", "the program is empty")])
def test_disasm_of_an_empty_file_exits_2(tmp_path, name, message):
    path = tmp_path / name
    path.write_bytes(b"")
    out = hvsim("disasm", path)
    assert out.returncode == 2
    assert f"{path}: {message}" in out.stderr
    assert out.stdout == "" and "Traceback" not in out.stderr


@pytest.mark.parametrize("option, value, top", [
    ("--max-steps", "99999999999999999999", "4,611,686,018,427,387,904"),   # Machine.run: 2**62
    ("--max-steps", "0x4000000000000001", "4,611,686,018,427,387,904"),
    ("--timer", "0x100000000", "4,294,967,295"),                             # a 32-bit period
])
def test_integer_options_out_of_range_exit_2_with_the_range(tmp_path, option, value, top):
    src = tmp_path / "sum.s"
    src.write_text(SUM_PROGRAM)
    out = hvsim("run", src, option, value)
    assert out.returncode == 2
    assert f"argument {option}: expected a positive integer up to {top}, got '{value}'" in out.stderr
    assert "Traceback" not in out.stderr


RULE = "must be a multiple of 4096 bytes from 65536 (64 KiB) to 1073741824 (1 GiB)"


@pytest.mark.parametrize("value, size, wrong", [
    ("100000", "100000 bytes (0x186a0, 97.66 KiB)", "not a multiple of 4096"),
    ("2G", "2147483648 bytes (0x80000000, 2 GiB)", "more than 1 GiB"),
    ("1000", "1000 bytes (0x3e8)", "less than 64 KiB"),
])
def test_memory_errors_give_the_size_in_decimal_and_hex_and_what_is_allowed(tmp_path, value, size, wrong):
    src = tmp_path / "sum.s"
    src.write_text(SUM_PROGRAM)
    out = hvsim("run", src, "--memory", value)
    assert out.returncode == 2
    assert f"argument --memory: {size} is {wrong}: the memory size {RULE}" in out.stderr
    assert "Traceback" not in out.stderr


def test_memory_sizes_a_monitor_or_the_program_cannot_use_are_given_in_full(tmp_path):
    src = tmp_path / "sum.s"
    src.write_text(SUM_PROGRAM)
    out = hvsim("run", "--monitor", "vtx", "--memory", "64K", src)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--memory 65536 bytes (0x10000, 64 KiB) does not suit the vtx monitor" in out.stderr
    assert "(its default, 1 MiB, does)" in out.stderr
    high = tmp_path / "high.s"
    high.write_text("    org 0x20000\n    hlt\n")
    out = hvsim("run", "--memory", "64K", high)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "cannot load the program into 65536 bytes (0x10000, 64 KiB) of memory" in out.stderr


def test_the_memory_limits_are_the_machines():
    from hvsim import Machine
    from hvsim.cli import MAX_MEMORY, MIN_MEMORY, PAGE
    assert len(Machine(memory=MIN_MEMORY).memory) == MIN_MEMORY
    for wrong in (MIN_MEMORY - PAGE, MAX_MEMORY + PAGE, MIN_MEMORY + PAGE // 2):
        with pytest.raises(ValueError):
            Machine(memory=wrong)


def test_warmup_reports_its_progress_on_stderr():
    """A line per stage and through the kernel table (on a full cache, just its last),
    so a cold compile of a minute or more is not silent; the summary stays on stdout."""
    from hvsim.cpu.table import SLOTS
    out = hvsim("warmup")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert lines[0].startswith("hvsim warmup: compiling every kernel into numba's disk cache")
    assert any(l.startswith("hvsim warmup: the run loop is ready (") for l in lines)
    assert f"hvsim warmup: kernels compiled: {len(SLOTS)} of {len(SLOTS)} (" in out.stderr
    assert out.stdout.startswith("hvsim warmup: kernels compiled/loaded in ")
    assert "Traceback" not in out.stderr


def test_warmup_is_quiet_from_python_unless_asked(capsys):
    from hvsim.warmup import warmup
    warmup()
    quiet = capsys.readouterr()
    assert "kernels compiled" not in quiet.out + quiet.err
    lines = []
    warmup(progress=lines.append)
    assert capsys.readouterr().err == "" and lines[-1].startswith("kernels compiled: ")


def test_warmup_with_progress_silences_the_engines_first_compile_notice():
    # `hvsim warmup` says what it does and how long it takes; the engine's notice, which
    # promises a first result in about 10 s, would contradict it on an empty cache
    from hvsim.warmup import warmup, first_compile_notice
    seen = []
    warmup(progress=lambda line: seen.append(first_compile_notice()))
    assert seen and not any(seen) and first_compile_notice() is True
    assert warmup() > 0 and first_compile_notice() is True


PV_KERNEL = """\
%ifdef PV
start:  xor ebx, ebx                    ; console_io(CONSOLEIO_write, 3, msg)
        mov ecx, 3
        mov edx, msg
        call hypercall_page + 18 * 32
        mov ebx, 2                      ; sched_op(SCHEDOP_shutdown, &why)
        mov ecx, why
        call hypercall_page + 29 * 32
why:    dd 0
%else
start:  mov esi, msg                    ; the native build: one OUT per byte
        mov ecx, 3
.next:  mov al, [esi]
        out 0xE9, al
        inc esi
        loop .next
        cli
        hlt
%endif
msg:    db "PV", 10
%ifdef PV
align 4096
hypercall_page: times 4096 db 0
%endif
"""


def test_one_source_two_builds_with_define_and_the_pv_monitor(tmp_path):
    src = tmp_path / "k.s"
    src.write_text(PV_KERNEL)
    pv = hvsim("run", src, "--monitor", "pv", "-D", "PV")
    assert pv.returncode == 0, pv.stderr
    assert "--- console ---\nPV\n" in pv.stdout
    assert "monitor: pv, guest halted (SCHEDOP_shutdown(poweroff))" in pv.stdout
    assert any(l.split() == ["hypercalls", "2"] for l in pv.stdout.splitlines())
    # without -D PV: the native build, whose OUTs trap under trap-and-emulate (3) with CLI
    # and HLT (2 more)
    tae = hvsim("run", src, "--monitor", "trap-and-emulate")
    assert tae.returncode == 0, tae.stderr
    assert "--- console ---\nPV\n" in tae.stdout
    assert any(l.split() == ["traps", "5"] for l in tae.stdout.splitlines())
    # and the native build under the hypervisor: no hypercall page, a clear refusal
    bad = hvsim("run", src, "--monitor", "pv")
    assert bad.returncode == 2 and "hypercall_page" in bad.stderr
    assert "Traceback" not in bad.stderr
    out = hvsim("disasm", src, "-D", "PV")
    assert out.returncode == 0 and "int 0x82" not in out.stdout      # stubs: filled at boot
    assert "call 0x" in out.stdout.splitlines()[3]


@pytest.mark.parametrize("value, words", [("1PV", "expected NAME or NAME=VALUE"),
                                          ("PV=x", "the value after = must be an integer")])
def test_bad_defines_exit_2_saying_what_is_expected(tmp_path, value, words):
    src = tmp_path / "k.s"
    src.write_text(PV_KERNEL)
    out = hvsim("run", src, "-D", value)
    assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr
