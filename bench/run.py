"""hvsim speed measurements: prints a table and writes BENCHMARKS.md (Python; not jitted).

    python bench/run.py [--quick] [--no-write] [--seconds S]

What is measured, each in this process unless said otherwise:

(a) guest instructions/s on an ALU loop (register arithmetic and a conditional branch);
(b) the same on a mixed loop: loads, stores, push/pop, call/ret;
(c) the mixed loop with 32-bit paging and the TLB on (identity map, 4 KiB pages);
(d) a ring 3 <-> ring 0 system-call loop: INT 0x80 through an IDT gate, the TSS stack
    switch, IRET back to ring 3 (exceptions="guest");
(e) ``Machine.step()`` calls/s;
(f) trap-to-Python round trips/s: a loop doing ``out 0x80, al`` to a port no device
    claims; every OUT leaves ``run()`` as an 'io' event and Python resumes the guest;
(g) cold compile to a first result: a fresh process with NUMBA_CACHE_DIR pointed at an
    empty folder runs the README's example (wall time of the whole process, best of
    three, each on its own empty cache: numba compiles the run loop and the handlers
    that program meets, hvsim/cpu/table.py, while a helper process compiles handlers on
    the second core); then every kernel: ``hvsim warmup`` in a fresh process on another
    empty cache;
(h) warm start: a fresh process imports hvsim and runs a tiny program (cache warm).

Beside (a)-(c), the same loop's speed in a plain pure-Python interpreter
(bench/baseline.py, same assembly text) and, for (a) and (b), in Unicorn running the
same machine-code bytes. Each rate is the best of many short runs (``--seconds``
split into ``SAMPLES`` runs), taken in rounds that go through every row in turn: on a
shared virtual machine the host's other work comes in bursts, and the best short run
is the steadiest estimate of what the code can do; hvsim's median is printed beside
it. Targets are printed beside the results; nothing here asserts a timing.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import baseline  # noqa: E402  (bench/baseline.py)

# ---------------------------------------------------------------------------------------
# The guest programs. {n} is the iteration count. Data, stack and tables sit well above
# the code; paging identity-maps the first 8 MiB.

ALU_LOOP = """
    mov ecx, {n}
top:
    add eax, ecx
    xor ebx, eax
    sub edx, 3
    and esi, eax
    or edi, ecx
    dec ecx
    jnz top
done:
    hlt
"""
ALU_PER_ITER, ALU_FIXED = 7, 2          # instructions per iteration; mov ecx + hlt

MIXED_LOOP = """
    mov esp, 0x90000
    mov ebx, 0x80000
    mov ecx, {n}
top:
    mov eax, [ebx]
    add eax, ecx
    mov [ebx+4], eax
    push eax
    call leaf
    pop edx
    dec ecx
    jnz top
done:
    hlt
leaf:
    mov esi, [ebx+4]
    ret
"""
MIXED_PER_ITER, MIXED_FIXED = 10, 4    # mov add mov push call (mov ret) pop dec jnz

IO_LOOP = """
    mov ecx, {n}
top:
    out 0x80, al
    dec ecx
    jnz top
    hlt
"""

# System tables for (d), written by Python at SYS (SDM Vol. 3A, 3.4.5, 6.11, 7.2.1).
SYS = 0x200000
GDT, IDT, TSS, PSEUDO = SYS, SYS + 0x1000, SYS + 0x2000, SYS + 0x3000
KSTACK, USTACK = 0x1F0000, 0x1E0000
KCODE, KDATA, UCODE, UDATA, TSS_SEL = 0x08, 0x10, 0x18 | 3, 0x20 | 3, 0x28

SYSCALL_LOOP = f"""
    lgdt [{PSEUDO:#x}]
    lidt [{PSEUDO + 8:#x}]
    mov eax, {KDATA:#x}
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, {KSTACK:#x}
    mov eax, {TSS_SEL:#x}
    ltr ax
    push {UDATA:#x}
    push {USTACK:#x}
    push 0x2
    push {UCODE:#x}
    mov eax, user
    push eax
    iret
user:
    mov ecx, {{n}}
u_top:
    mov eax, 1
    int 0x80
    dec ecx
    jnz u_top
    int 0x81
sys_handler:
    add edi, eax
    iret
exit_handler:
    hlt
"""
COLD_RUNS = 3   # row (g): fresh processes on empty caches, as row (h) takes the best of 3

# the README's example as row (g) runs it in a fresh process
README_EXAMPLE = "\n".join([
    "from hvsim import Machine, assemble",
    "prog = assemble('start:\\n mov ecx, 10\\nagain:\\n add eax, ecx\\n loop again\\n hlt\\n')",
    "m = Machine()",
    "m.load(prog)",
    "ev = m.run()",
    "assert ev.kind == 'halt' and m.cpu.eax == 55, (ev, m.cpu.eax)",
])

SYSCALL_PER_ITER = 6    # user: mov, int, dec, jnz; kernel: add, iret

TARGETS = {
    "alu": 2e8, "mixed": 1.5e8, "paging": 1e8, "step": 2e5, "traps": 3e5,
    "cold": 10.0, "warm": 1.5,
}


# ---------------------------------------------------------------------------------------
# System tables for (d), built with hvsim.rings' helpers (SDM Vol. 3A, 3.4.5, 6.11, 7.2.1).

def write_system_tables(memory, labels):
    """GDT (flat ring 0 and ring 3 code/data, a 32-bit TSS), IDT (0x80 and 0x81 callable
    from ring 3), TSS (ESP0/SS0, no I/O bitmap) and the LGDT/LIDT pseudo-descriptors."""
    from hvsim.rings import make_descriptor, make_gate, make_tss, put_descriptors
    gdt_limit = put_descriptors(memory, GDT, [
        0,
        make_descriptor(0, 0xFFFFF, 0xA, 1, 0, 1, 1, 1),    # 0x08 ring 0 code, execute/read
        make_descriptor(0, 0xFFFFF, 0x2, 1, 0, 1, 1, 1),    # 0x10 ring 0 data, read/write
        make_descriptor(0, 0xFFFFF, 0xA, 1, 3, 1, 1, 1),    # 0x18 ring 3 code
        make_descriptor(0, 0xFFFFF, 0x2, 1, 3, 1, 1, 1),    # 0x20 ring 3 data
        make_descriptor(TSS, 103, 0x9, 0, 0, 1, 0, 0),      # 0x28 available 32-bit TSS
    ])
    memory[IDT:IDT + 256 * 8] = 0
    put_descriptors(memory, IDT + 8 * 0x80, [make_gate("interrupt", KCODE, labels["sys_handler"], 3)])
    put_descriptors(memory, IDT + 8 * 0x81, [make_gate("interrupt", KCODE, labels["exit_handler"], 3)])
    tss = make_tss(esp0=KSTACK, ss0=KDATA)
    memory[TSS:TSS + len(tss)] = list(tss)
    pseudo = gdt_limit.to_bytes(2, "little") + GDT.to_bytes(4, "little") + bytes(2) \
        + (256 * 8 - 1).to_bytes(2, "little") + IDT.to_bytes(4, "little")
    memory[PSEUDO:PSEUDO + len(pseudo)] = list(pseudo)


# ---------------------------------------------------------------------------------------
# Measurement helpers

SAMPLES = 15   # runs per rate (one with --quick)


def median_note(rates):
    """'median X over N runs' for a note column (empty for a single run)."""
    if len(rates) < 2:
        return ""
    return f"median {fmt_rate(rates[len(rates) // 2])} over {len(rates)} runs"


def calibrated(make_run, per_iter, seconds, start=20_000, limit=10**9):
    """Pick an iteration count whose run takes about `seconds`, from a short probe."""
    units, dt = make_run(start)
    rate = units / max(dt, 1e-6)
    n = int(seconds * rate / per_iter)
    return max(start, min(n, limit))


def hvsim_loop(template, n, *, paging=False, exceptions="host", setup=None, blocks=True):
    """Run `template` with n iterations to its HLT; returns (instructions, seconds)."""
    from hvsim import Machine, assemble
    from hvsim.warmup import enable_paging, identity_map_4k
    prog = assemble(template.format(n=n))
    m = Machine(exceptions=exceptions, blocks=blocks)
    m.load(prog)
    if setup is not None:
        setup(m, prog)
    if paging:
        enable_paging(m, identity_map_4k(m.memory, 0x800000, 8 << 20))
    before = int(m.counters["instructions"])
    t0 = time.perf_counter()
    ev = m.run(max_steps=10**15)
    dt = time.perf_counter() - t0
    if ev.kind != "halt":
        raise RuntimeError(f"the benchmark loop ended in {ev.kind!r} at eip={ev.eip:#x}, not 'halt'")
    return int(m.counters["instructions"]) - before, dt


def python_loop(template, n, *, paging=False):
    cpu = baseline.Cpu(memory_size=16 << 20)
    program = baseline.parse(template.format(n=n))
    if paging:
        cpu.cr3 = _identity_map_bytearray(cpu.mem, 0x800000, 8 << 20)
    t0 = time.perf_counter()
    executed = baseline.run(program, cpu)
    return executed, time.perf_counter() - t0


def _identity_map_bytearray(mem, pd_pa, nbytes):
    import numpy as np
    from hvsim.warmup import identity_map_4k
    view = np.frombuffer(mem, dtype=np.uint8)        # writable view of the bytearray
    return identity_map_4k(view, pd_pa, nbytes)


def unicorn_loop(template, n):
    """The same machine-code bytes in Unicorn (QEMU's TCG JIT), from entry to the HLT."""
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
    from hvsim import assemble
    prog = assemble(template.format(n=n))
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 16 << 20)
    uc.mem_write(prog.origin, bytes(prog.code))
    t0 = time.perf_counter()
    uc.emu_start(prog.entry, prog.labels["done"])
    dt = time.perf_counter() - t0
    from unicorn.x86_const import UC_X86_REG_ECX, UC_X86_REG_EIP
    ecx, eip = uc.reg_read(UC_X86_REG_ECX), uc.reg_read(UC_X86_REG_EIP)
    if ecx != 0 or eip != prog.labels["done"]:      # the loop really ran to its end
        raise RuntimeError(f"Unicorn stopped early: ecx={ecx:#x} eip={eip:#x}")
    return uc, dt


def _err(e):
    """An exception as one table cell: its type and the first line of its message."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"error: {type(e).__name__}: {first}"


def machine_info():
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    import numba
    import numpy
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": sys.version.split()[0],
        "numba": numba.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        # other work on the machine slows every row: say how busy it was
        "load average at start (1/5/15 min)": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                             capture_output=True, text=True, timeout=30).stdout.strip()
        info["hvsim commit"] = rev or "unknown"
    except Exception:
        info["hvsim commit"] = "unknown"
    try:
        import unicorn
        info["unicorn"] = unicorn.__version__
    except Exception:
        info["unicorn"] = "not installed"
    return info


def fmt_rate(x):
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}/s"
    return f"{x:.3g} /s"


def fmt_seconds(x):
    return "n/a" if x is None else (x if isinstance(x, str) else f"{x:.2f} s")


# ---------------------------------------------------------------------------------------
# The rows

def measure(args):
    rows = []   # (name, hvsim, target, python, unicorn, verdict, note)
    repeats = 1 if args.quick else SAMPLES
    secs = args.seconds / repeats          # each run; the repeats share --seconds
    # Every rate below is a probe: a calibrated run, called once per round. The rounds
    # go through all probes in turn, so a burst of load on the host hits a few runs of
    # each row rather than every run of one row.
    probes, notes = {}, {}

    def probe(key, make):
        try:
            probes[key] = make()
        except Exception as e:                                          # report, don't hide
            probes[key] = _err(e)

    def loop_probes(key, template, per_iter, fixed, paging=False, with_unicorn=True):
        def hv():
            hvsim_loop(template, 1000, paging=paging)                 # compile / load cache
            n = calibrated(lambda k: hvsim_loop(template, k, paging=paging), per_iter, secs)
            expected = per_iter * n + fixed
            executed, _ = hvsim_loop(template, n, paging=paging)
            if executed not in (expected, expected - 1):               # HLT counted or not
                notes[key] = f"counted {executed} instructions, expected {expected}"
            return lambda: hvsim_loop(template, n, paging=paging)

        def interp():                 # the same loop with translated blocks off
            n = calibrated(lambda k: hvsim_loop(template, k, paging=paging, blocks=False),
                           per_iter, secs)
            return lambda: hvsim_loop(template, n, paging=paging, blocks=False)

        def py():
            pn = calibrated(lambda k: python_loop(template, k, paging=paging), per_iter,
                            min(secs, 0.5), start=200)
            return lambda: python_loop(template, pn, paging=paging)

        def uc():
            def one(k):
                _, dt = unicorn_loop(template, k)
                return per_iter * k + fixed - 1, dt                   # HLT is not executed
            un = calibrated(one, per_iter, secs)
            return lambda: one(un)
        probe((key, "hvsim"), hv)
        probe((key, "interp"), interp)
        probe((key, "python"), py)
        if with_unicorn:
            probe((key, "unicorn"), uc)

    loop_probes("alu", ALU_LOOP, ALU_PER_ITER, ALU_FIXED)
    loop_probes("mixed", MIXED_LOOP, MIXED_PER_ITER, MIXED_FIXED)
    loop_probes("paging", MIXED_LOOP, MIXED_PER_ITER, MIXED_FIXED, paging=True,
                with_unicorn=False)

    def sys_probe():                   # (d) INT 0x80 system calls, ring 3 <-> ring 0
        def sys_run(k):
            return hvsim_loop(SYSCALL_LOOP, k, exceptions="guest",
                              setup=lambda m, p: write_system_tables(m.memory, p.labels))
        sys_run(100)
        n = calibrated(sys_run, SYSCALL_PER_ITER, secs, start=2000)
        return lambda: sys_run(n)
    probe(("sys", "hvsim"), sys_probe)

    def step_probe():                  # (e) Machine.step()
        from hvsim import Machine, assemble
        m = Machine()
        m.load(assemble(ALU_LOOP.format(n=10**9)))
        for _ in range(1000):
            m.step()
        k = 20_000

        def steps():
            t0 = time.perf_counter()
            for _ in range(k):
                m.step()
            return k, time.perf_counter() - t0
        return steps
    probe(("step", "hvsim"), step_probe)

    def trap_probe():                  # (f) trap to Python and back
        from hvsim import Machine, assemble
        k = 20_000

        def traps():
            m = Machine()
            m.load(assemble(IO_LOOP.format(n=k)))
            count = 0
            t0 = time.perf_counter()
            while True:
                ev = m.run(max_steps=10**12)
                if ev.kind != "io":
                    break
                count += 1                  # the monitor's handler: nothing to emulate
            dt = time.perf_counter() - t0
            if ev.kind != "halt" or count != k:
                raise RuntimeError(f"expected {k} io exits then halt, got {count} then {ev.kind!r}")
            return count, dt
        traps()
        return traps
    probe(("traps", "hvsim"), trap_probe)

    rates = {key: [] for key, fn in probes.items() if callable(fn)}
    for _ in range(repeats):
        for key in list(rates):
            try:
                units, seconds = probes[key]()
                rates[key].append(units / seconds if seconds > 0 else 0.0)
            except Exception as e:
                probes[key] = _err(e)
                del rates[key]

    def best(key):
        if key not in probes:
            return None
        return max(rates[key]) if key in rates else probes[key]

    def note(key, *extra):
        parts = [notes.get(key[0], "")] + list(extra)
        if key in rates:
            parts.append(median_note(sorted(rates[key])))
        return "; ".join(x for x in parts if x)

    for key, name in (("alu", "(a) ALU loop, instr/s"),
                      ("mixed", "(b) mixed loop (load/store, push/pop, call/ret), instr/s"),
                      ("paging", "(c) mixed loop, paging + TLB on, instr/s")):
        alone = best((key, "interp"))
        alone = (f"interpreter alone (`Machine(blocks=False)`): {fmt_rate(alone)}"
                 if isinstance(alone, float) else f"interpreter alone: {alone}")
        rows.append((name, best((key, "hvsim")), TARGETS[key], best((key, "python")),
                     best((key, "unicorn")), note((key, "hvsim"), alone)))
    sys_rate = best(("sys", "hvsim"))
    calls = (f"= {sys_rate / SYSCALL_PER_ITER:.3g} system calls/s ({SYSCALL_PER_ITER} instr "
             "each round trip)") if isinstance(sys_rate, float) else ""
    rows.append(("(d) INT 0x80 system-call loop ring 3 <-> 0, instr/s", sys_rate, None, None,
                 None, note(("sys", "hvsim"), calls)))
    rows.append(("(e) Machine.step() calls/s", best(("step", "hvsim")), TARGETS["step"], None,
                 None, note(("step", "hvsim"))))
    rows.append(("(f) trap-to-Python round trips/s (OUT to an unclaimed port)",
                 best(("traps", "hvsim")), TARGETS["traps"], None, None,
                 note(("traps", "hvsim"))))

    # (g) cold compile, (h) warm start: fresh processes
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")

    def cold_process(args):
        """Wall seconds of ``python args`` on an empty numba cache, and the functions cached."""
        with tempfile.TemporaryDirectory(prefix="hvsim-numba-cache-") as cache:
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable] + args, env=dict(env, NUMBA_CACHE_DIR=cache),
                                 capture_output=True, text=True, timeout=1800)
            dt = time.perf_counter() - t0
            if out.returncode != 0:
                raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr else "failed")
            return dt, sum(1 for _ in Path(cache).rglob("*.nbc"))

    try:
        firsts = [cold_process(["-c", README_EXAMPLE]) for _ in range(COLD_RUNS)]
        first, n_first = min(firsts)
        every, n_every = cold_process(["-m", "hvsim", "warmup"])
        cold_note = (f"best of {COLD_RUNS} fresh processes, each on its own empty cache ("
                     + ", ".join(f"{t:.2f}" for t, _ in firsts) + f" s), wall time; "
                     f"{n_first} compiled functions cached by its end, the helper's included. "
                     f"Every kernel, `hvsim warmup` on an empty cache: {every:.1f} s "
                     f"({n_every} functions)")
    except Exception as e:
        first = _err(e)
        cold_note = "wall time of the whole process"
    rows.append(("(g) cold compile to a first result: fresh process, empty cache, the "
                 "README's example", first, TARGETS["cold"], None, None, cold_note))

    tiny = ("import hvsim\nfrom hvsim import Machine, assemble\nm = Machine()\n"
            "m.load(assemble('mov eax, 7\\nhlt\\n'))\nassert m.run().kind == 'halt'\n")
    try:
        subprocess.run([sys.executable, "-m", "hvsim", "warmup"], env=env, check=True,
                       capture_output=True, timeout=1800)   # make sure the default cache is warm
        best = None
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", tiny], env=env, check=True,
                           capture_output=True, timeout=600)
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        warm = best
    except Exception as e:
        warm = _err(e)
    rows.append(("(h) warm start: fresh process, import hvsim + tiny program", warm,
                 TARGETS["warm"], None, None, "best of 3, wall time"))
    return rows


def verdict(value, target, seconds):
    if not isinstance(value, (int, float)) or target is None:
        return ""
    ok = value <= target if seconds else value >= target
    return "meets target" if ok else "below target"


def render(rows):
    header = ["measurement", "hvsim", "target", "pure Python", "Unicorn", "vs target", "note"]
    table = []
    for name, value, target, py, uni, note in rows:
        seconds = name.startswith(("(g)", "(h)"))
        f = fmt_seconds if seconds else fmt_rate
        tgt = "" if target is None else (f"<= {target:g} s" if seconds else f">= {fmt_rate(target)}")
        table.append([name, f(value), tgt, "" if seconds else fmt_rate(py),
                      "" if seconds else fmt_rate(uni), verdict(value, target, seconds), note])
    return header, table


def print_table(header, table):
    widths = [max(len(str(r[i])) for r in [header] + table) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    for r in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def _busy_at_start(info):
    first = info.get("load average at start (1/5/15 min)", "0").split("/")[0]
    return float(first) > 0.5 * (os.cpu_count() or 1)


def _one_line(template):
    """The loop's source on one line: 'top: add eax, ecx ; ...' with N for the count."""
    text, pending = [], ""
    for line in template.format(n="N").strip().splitlines():
        line = line.strip()
        if line.endswith(":"):
            pending += line + " "
        else:
            text.append(pending + line)
            pending = ""
    return " ; ".join(text)


def markdown(header, table, info, args):
    out = ["# hvsim benchmarks", "",
           "Measured by `make bench` (`python bench/run.py`); every number below comes from one "
           "run on the machine described here. Rates are the best of "
           f"{1 if args.quick else SAMPLES} runs sharing about {args.seconds:g} s, taken in "
           "rounds through all rows; on a shared virtual machine the host's other work comes "
           "in bursts, so the note gives hvsim's median as well. "
           "\"pure Python\" is bench/baseline.py (a dict-dispatch interpreter of the same "
           "assembly text, with fewer checks than hvsim); \"Unicorn\" runs the same machine-code "
           "bytes in Unicorn (QEMU's TCG). Targets are the project's goals, not guarantees.", "",
           "## Machine", ""]
    # (the load average at the end would count this benchmark's own work)
    if _busy_at_start(info):
        out[-2:-2] = ["**Note:** the machine was busy when this ran (see the load average "
                      "below); rerun `make bench` on an idle machine for steadier figures.", ""]
    for k, v in info.items():
        out.append(f"- **{k}**: {v}")
    out += ["", "## Results", "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" for _ in header) + "|"]
    for r in table:
        out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    out += ["", "## What each row runs", "",
            "- (a) `" + _one_line(ALU_LOOP) + "`",
            "- (b), (c) `" + _one_line(MIXED_LOOP) + "`;"
            " (c) identity-maps the first 8 MiB with 4 KiB pages and sets CR3 and CR0.PG",
            "- (a)-(c) run as a default `Machine()` does: the interpreter until a loop entry has "
            "been reached 256 times, then the blocks hvsim/cpu/translate.py compiled for it "
            "(the loop `top` to `call`, `leaf`, `pop` to `jnz`); the note gives the same loop "
            "with `Machine(blocks=False)`, the interpreter alone",
            "- (d) a ring 3 loop `mov eax, 1 ; int 0x80 ; dec ecx ; jnz` whose ring 0 handler is "
            "`add edi, eax ; iret` (IDT gate DPL 3, TSS stack switch; exceptions=\"guest\")",
            "- (e) `Machine.step()` on the ALU loop",
            "- (f) `out 0x80, al` in a loop: each OUT exits `run()` as an 'io' event and Python "
            "calls `run()` again",
            "- (g) the README's example (`mov ecx, 10 ; again: add eax, ecx ; loop again ; hlt`, "
            "then a check of EAX) as `python -c` with `NUMBA_CACHE_DIR` set to an empty folder, "
            f"best of {COLD_RUNS} (each on its own empty folder): "
            "numba compiles the run loop, and the handlers of the kernel table as the program "
            "meets them (hvsim/cpu/table.py); on two or more cores a helper process compiles "
            "handlers alongside (hvsim/warmup.py). The note gives `python -m hvsim warmup`, which "
            "compiles everything, on another empty folder",
            "- (h) `python -c \"import hvsim; ...run a two-instruction program\"` with the cache warm",
            ""]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, short runs")
    parser.add_argument("--seconds", type=float, default=None,
                        help="time each rate gets, shared by its runs (default 1.0, or 0.3 with --quick)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 0.3 if args.quick else 1.0
    info = machine_info()
    print("hvsim benchmarks on " + ", ".join(f"{k} {v}" for k, v in info.items()))
    rows = measure(args)
    header, table = render(rows)
    print()
    print_table(header, table)
    if not args.no_write:
        path = ROOT / "BENCHMARKS.md"
        path.write_text(markdown(header, table, info, args))
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
