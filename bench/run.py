"""hvsim speed measurements: prints a table and writes BENCHMARKS.md (Python; not jitted).

    python bench/run.py [--samples K] [--min-seconds S] [--no-write]
    python bench/run.py --quick            # smoke run: short samples, never written

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
(h) warm start: a fresh process imports hvsim and runs a tiny program (cache warm),
    the median of 15, beside the same with hvsim/_gc.py's freeze turned off;
(i) structured exit round trips/s to a Python monitor: a ring 1 loop whose ``cli``
    raises #GP(0) (IOPL 0), routed to the host; the handler reads the event, skips the
    instruction (``ev.insn.length`` when events carry the decoded instruction, else
    ``ev.length``) and calls ``run()`` again;
(j) the trap-and-emulate teaching kernel under its monitor (lesson 02), guest
    instructions/s as the machine counts them;
(k) VM exit round trips/s to the Python VMM (hvsim/monitors/kvm.py): a guest loop of
    CPUIDs in non-root ring 0, each a VM exit answered "in the kernel" and resumed;
(l) VM exit + VMRESUME round trips/s inside the machine: the same loop under the
    hypervisor written in assembly (hvsim/guests/vmm.s), whose exit handler emulates
    CPUID in root ring 0 -- no Python between exits;
(m) the teaching kernel under the VT-x monitor, guest instructions/s;
(n) (c)'s mixed loop as a guest of the Python VMM with EPT, in VMX non-root ring 0 on the
    VMM's identity page table: every TLB miss is a two-dimensional walk; the row gives
    its ratio to (c).
(o) (c)'s mixed loop under shadow paging once warm: the guest itself identity-maps its
    1 MiB with 4 KiB pages and turns paging on, under the trap-and-emulate monitor (ring
    1) and under the VT-x host without EPT; after the few hidden faults of its first
    iteration the jitted MMU walks the shadow tables with no fault at all. Ratio to (c).
(p) hidden-fault round trips/s: a guest that visits five address spaces in turn (one
    more than the monitor's cache of four shadow roots, so each visit builds its root
    afresh) and touches 200 pages in each: every touch is a hidden #PF that leaves
    ``run()``, is filled by the Python shadow MMU (hvsim/mmu/shadow.py) and resumed. The
    rate is hidden faults over the whole run's time (CR3 traps and root rebuilds
    included), under trap-and-emulate and under the VT-x host without EPT.
(q) lesson 05's sweep (hvsim/lessons/l05_shadow_vs_nested.py), warm: seconds for the
    whole grid, in this process.
(r) hypercall round trips/s to the Python hypervisor (hvsim/paravirt/hypervisor.py): a
    ring-1 loop of ``xen_version`` hypercalls through the hypercall page (``int 0x82``,
    EAX dispatched to a handler, the result in EAX, resumed);
(s) page-table updates/s through the hypervisor, 64 at a time: one ``multicall`` of 64
    ``update_va_mapping`` entries (one trap for the 64) beside 64 single
    ``update_va_mapping`` hypercalls (64 traps), each update validated; the traps per
    batch of 64 are counted, not assumed;
(t) block I/O: hvsim/guests/minios.s's io workload (64 sectors written, then read back)
    through the split driver's ring under the hypervisor, beside the same kernel's
    native build on the emulated disk (one port access per dword) under trap-and-emulate
    and VT-x with EPT: bytes moved per second of simulation (each run boots the kernel,
    assembled once beforehand), and the bytes moved per entry into the host (trap, VM
    exit or hypercall), counted.

Beside (a)-(c), the same loop in a plain pure-Python interpreter (bench/baseline.py, same
assembly text), the interpreter alone (``Machine(blocks=False)``) and Unicorn running the
same machine-code bytes (with the same page tables for (c)); beside (a) and (b), QEMU
user mode (``qemu-i386``, bench/elf.py) running the same loop bytes as a Linux process;
beside (f), Unicorn calling a Python hook on every OUT.

The method, the same for every rate and every engine: a rate is the **median of K
samples** (K = ``--samples``, default 7), each sample at least ``--min-seconds`` (0.5 s)
of guest work: a calibration run sizes each sample's iteration count, and a sample that
still comes out shorter is run again, longer. The table gives the median, the min-max
and the best. Samples are taken in rounds that go through every rate in turn, so a burst
of other work on this shared machine hits a sample of each row rather than every sample
of one row. A row whose *median* misses its target says "below target". Nothing here
asserts a timing.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
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
done:
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
# (i): run in ring 1 with IOPL 0, where CLI raises #GP(0) (SDM Vol. 2A, CLI "Operation");
# the HLT at `done` raises #GP(0) too (CPL > 0) and ends the loop
GP_LOOP = """
    mov ecx, {n}
top:
    cli
    dec ecx
    jnz top
done:
    hlt
"""
GP_VECTOR = 13        # #GP (SDM Vol. 3A, Table 6-1)
# (o): the guest identity-maps its first 1 MiB (page directory at 0xA0000, one page table
# at 0xA1000, 4 KiB pages) and turns paging on itself, so a shadow-paging monitor sees it
SHADOW_PROLOGUE = """
    mov edi, 0xA1000
    mov eax, 3
    mov ecx, 256
map:
    mov [edi], eax
    add eax, 0x1000
    add edi, 4
    loop map
    mov dword [0xA0000], 0xA1003
    mov eax, 0xA0000
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
"""
# (p): HIDDEN_SPACES page directories at 0x20000 + 8 KiB * k, each followed by its own
# page table identity-mapping 1 MiB; visited in turn {rounds} times, HIDDEN_PAGES pages
# touched in each (one more space than the monitor caches roots for: each visit rebuilds)
HIDDEN_SPACES, HIDDEN_PAGES = 5, 200
HIDDEN_FAULTS = f"""
    mov esp, 0xDC000
    mov ebx, 0
space:
    mov edi, ebx
    shl edi, 13
    add edi, 0x20000
    lea esi, [edi + 0x1000]
    mov eax, esi
    or eax, 3
    mov [edi], eax
    mov eax, 3
    mov ecx, 256
fill:
    mov [esi], eax
    add eax, 0x1000
    add esi, 4
    loop fill
    inc ebx
    cmp ebx, {HIDDEN_SPACES}
    jne space
    mov eax, 0x20000
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov ebp, {{rounds}}
round:
    mov ebx, 0
switch:
    mov eax, ebx
    shl eax, 13
    add eax, 0x20000
    mov cr3, eax
    mov esi, 0x30000
    mov ecx, {HIDDEN_PAGES}
touch:
    mov eax, [esi]
    add esi, 0x1000
    loop touch
    inc ebx
    cmp ebx, {HIDDEN_SPACES}
    jne switch
    dec ebp
    jnz round
    cli
    hlt
"""
GUEST_RING = 1        # where a deprivileged guest kernel runs

# (r)/(s): paravirtualized guests of hvsim/paravirt (Xen's hypercall numbers: 17
# xen_version, 14 update_va_mapping, 13 multicall, 29 sched_op)
PV_END = """
        mov ebx, 2
        mov ecx, why
        call hypercall_page + 29 * 32      ; sched_op(SCHEDOP_shutdown, &poweroff)
why:    dd 0
align 4096
hypercall_page: times 4096 db 0
"""
PV_HYPERCALL_LOOP = """
start:  mov esi, {n}
again:  xor ebx, ebx
        call hypercall_page + 17 * 32      ; xen_version(XENVER_version)
        dec esi
        jnz again
""" + PV_END
# 64 entries of the builder's page table (VA 200000H + 4 KiB i -> frame 40000H + 4 KiB i),
# remapped every round, read-only in even rounds and writable in odd ones, UVMF_NONE
PV_BATCH = 64
PV_UPDATES = """
start:  mov ebp, {n}
round:  xor edi, edi
next:   mov eax, edi
        shl eax, 12
        lea ebx, [eax + 0x200000]          ; va
        lea ecx, [eax + 0x40001]           ; frame | P
        mov eax, ebp
        and eax, 1
        add eax, eax                       ; RW in odd rounds
        or ecx, eax
{body}
        inc edi
        cmp edi, 64
        jne next
{flush}
        dec ebp
        jnz round
""" + PV_END
PV_SINGLE = ("        xor edx, edx\n"
             "        call hypercall_page + 14 * 32      ; update_va_mapping(va, val, 0)")
PV_MULTI = ("        mov esi, edi\n"
            "        shl esi, 5\n"
            "        mov dword [calls + esi], 14        ; op: update_va_mapping\n"
            "        mov [calls + esi + 8], ebx         ; args: va, val, flags 0\n"
            "        mov [calls + esi + 12], ecx")
PV_MULTI_FLUSH = ("        mov ebx, calls\n"
                  "        mov ecx, 64\n"
                  "        call hypercall_page + 13 * 32      ; multicall(calls, 64)\n"
                  "        jmp over\n"
                  "align 4\n"
                  "calls:  times 64 * 32 db 0\n"
                  "over:")

COLD_RUNS = 3   # row (g): fresh processes on empty caches (best of three: each takes ~10 s)
WARM_RUNS = 15  # row (h): fresh processes on the warm cache, the median taken

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
    "alu": 2e8, "mixed": 1.5e8, "paging": 1e8, "step": 2e5, "traps": 3e5, "hidden": 2e5,
    "roundtrips": 4e5, "cold": 10.0, "warm": 1.0, "vmexit_python": 3e5, "vmexit_asm": 1e6,
    "sweep": 30.0, "hypercall": 3e5,
}
# (k)/(l): a guest that makes CPUID exits in a loop (ESI counts them down; CPUID
# clobbers EAX, EBX, ECX, EDX) and then ends; VMCALL for the assembly VMM, HLT for the
# Python one (with HLT exiting and no timer, KVM_EXIT_HLT)
CPUID_LOOP = "mov esi, {n}\nagain:\nxor eax, eax\ncpuid\ndec esi\njnz again\n{end}\n"


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
# The sampling method (module docstring): every rate is a Probe, sampled in rounds

from probes import (CALIBRATION_MARGIN, MIN_SAMPLE_S, QUICK_MIN_SAMPLE_S,  # noqa: E402,F401
                    QUICK_SAMPLES, SAMPLES, Probe, stats)  # (bench/probes.py)


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


def unicorn_machine(template, n, paging=False):
    """A Unicorn CPU (QEMU's TCG JIT as a library) holding the same machine-code bytes as
    hvsim runs, in 32-bit protected mode; with ``paging``, the same identity map as hvsim's
    row (c) (hvsim.warmup.identity_map_4k), CR3 pointing at it and CR0.PG set."""
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
    from unicorn.x86_const import UC_X86_REG_CR0, UC_X86_REG_CR3
    from hvsim import assemble
    prog = assemble(template.format(n=n))
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 16 << 20)
    if paging:
        import numpy as np
        from hvsim.warmup import identity_map_4k
        memory = np.zeros(16 << 20, np.uint8)
        cr3 = identity_map_4k(memory, 0x800000, 8 << 20)
        uc.mem_write(0, memory.tobytes())
        uc.reg_write(UC_X86_REG_CR3, cr3)
        uc.reg_write(UC_X86_REG_CR0, uc.reg_read(UC_X86_REG_CR0) | CR0_PG)
    uc.mem_write(prog.origin, bytes(prog.code))
    return uc, prog


CR0_PG = 1 << 31       # SDM Vol. 3A, 2.5


def unicorn_paging_check():
    """Raise unless Unicorn really translates through the page tables once CR0.PG is set:
    a load above the identity-mapped 8 MiB must fault."""
    from unicorn import UcError
    uc, prog = unicorn_machine("    mov eax, [0xA00000]\ndone:\n    hlt\n", 0, paging=True)
    try:
        uc.emu_start(prog.entry, prog.labels["done"])
    except UcError:
        return
    raise RuntimeError("Unicorn did not fault on an unmapped page: paging is not on")


def unicorn_loop(template, n, paging=False):
    """The loop in Unicorn from its entry to ``done``; returns the seconds of ``emu_start``."""
    from unicorn.x86_const import UC_X86_REG_ECX, UC_X86_REG_EIP
    uc, prog = unicorn_machine(template, n, paging)
    t0 = time.perf_counter()
    uc.emu_start(prog.entry, prog.labels["done"])
    dt = time.perf_counter() - t0
    ecx, eip = uc.reg_read(UC_X86_REG_ECX), uc.reg_read(UC_X86_REG_EIP)
    if ecx != 0 or eip != prog.labels["done"]:      # the loop really ran to its end
        raise RuntimeError(f"Unicorn stopped early: ecx={ecx:#x} eip={eip:#x}")
    return dt


def unicorn_out_hooks(n):
    """Row (f) in Unicorn: every ``out 0x80, al`` calls a Python hook (UC_HOOK_INSN on
    OUT), which returns to the guest; returns (hook calls, seconds of ``emu_start``)."""
    from unicorn import UC_HOOK_INSN
    from unicorn.x86_const import UC_X86_INS_OUT
    uc, prog = unicorn_machine(IO_LOOP, n)
    calls = [0]

    def on_out(uc, port, size, value, user_data):   # the monitor's handler: nothing to emulate
        calls[0] += 1
    uc.hook_add(UC_HOOK_INSN, on_out, None, 1, 0, UC_X86_INS_OUT)
    t0 = time.perf_counter()
    uc.emu_start(prog.entry, prog.labels["done"])
    dt = time.perf_counter() - t0
    if calls[0] != n:
        raise RuntimeError(f"expected {n} OUT hooks, got {calls[0]}")
    return n, dt


QEMU = "qemu-i386"
QEMU_MISSING = "n/a — install Debian's qemu-user package (`apt-get install qemu-user`)"


def qemu_version():
    """qemu-i386's version line, or None when it is not installed."""
    import shutil
    if shutil.which(QEMU) is None:
        return None
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=60)
    return (out.stdout.strip().splitlines() or ["unknown"])[0]


class QemuLoop:
    """The same loop as a static i386 Linux executable (bench/elf.py) under QEMU user
    mode. ``sample(n)`` times the whole ``qemu-i386 prog`` process for n and for 2n
    iterations and returns the difference: QEMU's start-up, the ELF loading and the
    translation of the loop (the same in both runs) cancel out, what is left is n
    iterations of the loop. The exit status (AL at ``done``) is checked against
    ``status(n)``, so a run that stopped early would be noticed."""

    def __init__(self, name, template, per_iter, status, folder):
        self.template, self.per_iter, self.status = template, per_iter, status
        self.folder = Path(folder) / name                   # one folder per loop
        self.folder.mkdir(exist_ok=True)

    def _run(self, n):
        import elf
        path = self.folder / f"loop-{n}"
        if not path.exists():
            path.write_bytes(elf.loop_executable(self.template, n))
            path.chmod(0o755)
        t0 = time.perf_counter()
        out = subprocess.run([QEMU, str(path)], capture_output=True, timeout=600)
        dt = time.perf_counter() - t0
        if out.returncode != self.status(n):
            raise RuntimeError(f"{QEMU} exited with {out.returncode}, expected {self.status(n)} "
                               f"({out.stderr.decode(errors='replace').strip()[:200]})")
        return dt

    def sample(self, n):
        t1 = self._run(n)
        t2 = self._run(2 * n)
        return self.per_iter * n, t2 - t1


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
    info["qemu user"] = qemu_version() or QEMU_MISSING
    return info


def fmt_rate(x):
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale * 0.9995:        # 999.6 M/s reads 1 G/s (3 digits), not 1e+03 M/s
            return f"{x / scale:.3g} {unit}/s"
    return f"{x:.3g} /s"


def fmt_seconds(x):
    return "n/a" if x is None else (x if isinstance(x, str) else f"{x:.2f} s")


# ---------------------------------------------------------------------------------------
# The rows

# which rate of which row: (row, engine); engines "hvsim", "interp" (Machine(blocks=False)),
# "python", "unicorn", "qemu"
BASELINES = ("python", "unicorn", "qemu")


def import_trap_and_emulate():
    """The trap-and-emulate monitor class (hvsim/monitors/trap_and_emulate.py)."""
    from hvsim.monitors import TrapAndEmulate
    return TrapAndEmulate


def measure(args, min_seconds, samples):
    """Every row, as dicts: name, value (stats tuple, seconds, or an error string),
    target, baselines {engine: stats or text}, note."""
    probes, notes, failed = {}, {}, {}

    def probe(key, make):
        try:
            p = make()
            if isinstance(p, str):            # a baseline that cannot run here says why
                failed[key] = p
                return
            p.calibrate(min_seconds)
            probes[key] = p
        except Exception as e:                                          # report, don't hide
            failed[key] = _err(e)

    def loop_probes(key, template, per_iter, fixed, paging=False, qemu=None):
        def hv():
            hvsim_loop(template, 1000, paging=paging)                 # compile / load cache
            n = 20_000
            executed, _ = hvsim_loop(template, n, paging=paging)
            expected = per_iter * n + fixed
            if executed not in (expected, expected - 1):               # HLT counted or not
                notes[key] = f"counted {executed} instructions, expected {expected}"
            return Probe(lambda k: hvsim_loop(template, k, paging=paging), n)

        def interp():                 # the same loop with translated blocks off
            return Probe(lambda k: hvsim_loop(template, k, paging=paging, blocks=False), 20_000)

        def py():
            return Probe(lambda k: python_loop(template, k, paging=paging), 200)

        def uc():
            if paging:
                unicorn_paging_check()
            return Probe(lambda k: (per_iter * k + fixed - 1,          # HLT is not executed
                                    unicorn_loop(template, k, paging)), 20_000)

        def qe():
            if qemu_version() is None:
                return QEMU_MISSING
            return Probe(QemuLoop(key, template, per_iter, qemu, args.tmp).sample, 100_000,
                         limit=2**31 - 1)                  # 2n must fit in ECX
        probe((key, "hvsim"), hv)
        probe((key, "interp"), interp)
        probe((key, "python"), py)
        probe((key, "unicorn"), uc)
        if qemu is not None:
            probe((key, "qemu"), qe)

    # the exit status of the QEMU executable is AL at `done` (bench/elf.py):
    # ALU loop: EAX = N + (N-1) + ... + 1; mixed loop: EAX = [data] (0) + ECX (1)
    loop_probes("alu", ALU_LOOP, ALU_PER_ITER, ALU_FIXED, qemu=lambda n: (n * (n + 1) // 2) & 0xFF)
    loop_probes("mixed", MIXED_LOOP, MIXED_PER_ITER, MIXED_FIXED, qemu=lambda n: 1)
    loop_probes("paging", MIXED_LOOP, MIXED_PER_ITER, MIXED_FIXED, paging=True)
    failed[("paging", "qemu")] = "n/a — user mode has no guest page tables"

    def sys_probe():                   # (d) INT 0x80 system calls, ring 3 <-> ring 0
        def sys_run(k):
            return hvsim_loop(SYSCALL_LOOP, k, exceptions="guest",
                              setup=lambda m, p: write_system_tables(m.memory, p.labels))
        sys_run(100)
        return Probe(sys_run, 2000)
    probe(("sys", "hvsim"), sys_probe)

    def step_probe():                  # (e) Machine.step()
        from hvsim import Machine, assemble
        m = Machine()
        m.load(assemble(ALU_LOOP.format(n=2**32 - 1)))
        for _ in range(1000):
            m.step()

        def steps(k):
            step = m.step
            t0 = time.perf_counter()
            for _ in range(k):
                step()
            return k, time.perf_counter() - t0
        return Probe(steps, 20_000, limit=10**8)
    probe(("step", "hvsim"), step_probe)

    def trap_probe():                  # (f) trap to Python and back
        from hvsim import Machine, assemble

        def traps(k):
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
        traps(1000)
        return Probe(traps, 20_000)
    probe(("traps", "hvsim"), trap_probe)
    probe(("traps", "unicorn"), lambda: Probe(unicorn_out_hooks, 20_000))
    failed[("traps", "qemu")] = "n/a — no hook to Python"

    def roundtrip_probe():             # (i) structured exit round trip to a Python monitor
        from hvsim import Machine, assemble
        from hvsim.arch.flags import FIXED1
        from hvsim.rings.setup import install

        def skip_by_insn(m, ev):        # the decoded instruction the exit carries
            m.cpu.eip = ev.eip + ev.insn.length

        def skip_by_length(m, ev):      # the exit's instruction length
            m.cpu.eip = ev.eip + ev.length

        def machine(k):
            prog = assemble(GP_LOOP.format(n=k))
            m = Machine(memory=1 << 20)
            tables = install(m)
            m.route(GP_VECTOR, "host")
            m.load(prog)
            tables.enter(m, GUEST_RING, m.cpu.eip, tables.stack_top(GUEST_RING))
            m.cpu.eflags = FIXED1                      # IOPL 0, IF 0
            return m, prog.labels["done"]

        m, _ = machine(1)
        first = m.run()
        if first.kind != "exception" or first.vector != GP_VECTOR or first.error_code != 0:
            raise RuntimeError(f"expected #GP(0) from CLI in ring {GUEST_RING}, got {first}")
        by_insn = getattr(first, "insn", None) is not None
        skip = skip_by_insn if by_insn else skip_by_length
        length = first.insn.length if by_insn else first.length
        if length != 1:
            raise RuntimeError(f"CLI is 1 byte, the exit says {length}")
        notes["roundtrips"] = ("the handler skipped the instruction with `ev.insn.length` "
                               "(the decoded instruction the exit carries)" if by_insn else
                               "the handler skipped the instruction with `ev.length` "
                               "(this commit's events carry no `ev.insn`)")

        def roundtrips(k):
            m, done = machine(k)
            count = 0
            t0 = time.perf_counter()
            while True:
                ev = m.run()
                if ev.kind != "exception" or ev.vector != GP_VECTOR or ev.eip == done:
                    break
                skip(m, ev)
                count += 1
            dt = time.perf_counter() - t0
            if ev.eip != done or count != k:
                raise RuntimeError(f"expected {k} #GP exits then the HLT's, got {count} then {ev}")
            return count, dt
        roundtrips(1000)
        return Probe(roundtrips, 20_000)
    probe(("roundtrips", "hvsim"), roundtrip_probe)

    def teaching_kernel_rate(mon, technique):
        """Guest instructions/s of the teaching kernel under ``mon``, past its boot."""
        mon.run(50_000)                                # boot, to the user program's loop

        def run(k):
            before = int(mon.machine.counters["instructions"])
            t0 = time.perf_counter()
            ev = mon.run(k)
            dt = time.perf_counter() - t0
            if ev.kind != "budget":
                raise RuntimeError(f"the teaching kernel stopped under {technique}: {ev}")
            return int(mon.machine.counters["instructions"]) - before, dt
        return Probe(run, 50_000, limit=10**12)

    def kernel_probe():                # (j) the teaching kernel under trap-and-emulate
        from hvsim.guests import teaching_kernel
        return teaching_kernel_rate(import_trap_and_emulate()(program=teaching_kernel()),
                                    "trap-and-emulate")
    probe(("kernel", "hvsim"), kernel_probe)

    def vmexit_python_probe():         # (k) VM exit round trips to the Python VMM
        from hvsim import assemble
        from hvsim.monitors.kvm import VM

        def exits(k):
            vm = VM()
            vc = vm.create_vcpu()
            vc.load(assemble(CPUID_LOOP.format(n=k, end="hlt"), origin=0x1000))
            t0 = time.perf_counter()
            r = vc.run(10**9)
            dt = time.perf_counter() - t0
            if r.name != "hlt" or vc.exits["CPUID"] != k:
                raise RuntimeError(f"expected {k} CPUID exits then HLT, got {dict(vc.exits)}, {r}")
            return k, dt
        exits(1000)
        return Probe(exits, 20_000)
    probe(("vmexit_python", "hvsim"), vmexit_python_probe)

    def vmexit_asm_probe(**constants):  # (l) VM exit + VMRESUME inside the machine
        from hvsim import Machine
        from hvsim.guests import hypervisor

        def exits(k):
            vmm, guest = hypervisor(CPUID_LOOP.format(n=k, end="vmcall"), **constants)
            m = Machine(memory=4 << 20)
            m.load(vmm)
            m.write_physical(guest.origin, guest.code)
            t0 = time.perf_counter()
            ev = m.run(max_steps=10**12)
            dt = time.perf_counter() - t0
            if ev.kind != "halt" or m.cpu.esi != 0xE817 or m.counters["vm_entries"] != k + 1:
                raise RuntimeError(f"the assembly VMM stopped early: {ev}, ESI={m.cpu.esi:#x}")
            return k, dt
        exits(1000)
        return Probe(exits, 50_000, limit=10**9)
    probe(("vmexit_asm", "hvsim"), vmexit_asm_probe)
    probe(("vmexit_asm", "novpid"), lambda: vmexit_asm_probe(SECONDARY=0))

    def vtx_kernel_probe():            # (m) the teaching kernel under the VT-x monitor
        from hvsim.guests import teaching_kernel
        from hvsim.monitors.kvm import Vtx
        return teaching_kernel_rate(Vtx(program=teaching_kernel(KCODE=0x08)), "VT-x")
    probe(("vtx_kernel", "hvsim"), vtx_kernel_probe)

    def ept_probe():                   # (n) the mixed loop as a VT-x guest with EPT
        from hvsim import assemble
        from hvsim.monitors.kvm import VM

        def loop(k):
            vm = VM(memory=1 << 20, ept=True)
            vc = vm.create_vcpu()
            vc.load(assemble(MIXED_LOOP.format(n=k), origin=0x1000))
            m = vm.machine
            before = int(m.counters["instructions"])
            t0 = time.perf_counter()
            r = vc.run(10**12)
            dt = time.perf_counter() - t0
            if r.name != "hlt":
                raise RuntimeError(f"the guest loop did not end on its HLT: {r}")
            return int(m.counters["instructions"]) - before, dt
        loop(1000)
        return Probe(loop, 200_000, limit=10**10)
    probe(("ept", "hvsim"), ept_probe)

    def shadow_loop_probe(host):       # (o) the mixed loop under shadow paging, warm
        from hvsim import assemble
        from hvsim.monitors import TrapAndEmulate, Vtx

        def loop(k):
            prog = assemble(SHADOW_PROLOGUE + MIXED_LOOP.format(n=k), origin=0x1000)
            mon = TrapAndEmulate(program=prog) if host == "shadow" else Vtx(program=prog)
            m = mon.machine
            before = int(m.counters["instructions"])
            t0 = time.perf_counter()
            ev = mon.run(10**12)
            dt = time.perf_counter() - t0
            hidden = mon.shadow_mmu.counters["hidden_faults"] if mon.shadow_mmu else -1
            if ev.kind != "halt" or not 0 < hidden < 20:
                raise RuntimeError(f"the shadowed loop did not run as planned: {ev}, "
                                   f"{hidden} hidden faults")
            return int(m.counters["instructions"]) - before, dt
        loop(1000)
        return Probe(loop, 200_000, limit=10**10)
    probe(("shadow_loop", "hvsim"), lambda: shadow_loop_probe("shadow"))
    probe(("shadow_loop", "vtx"), lambda: shadow_loop_probe("vtx"))

    def hidden_probe(host):            # (p) hidden-fault round trips
        from hvsim import assemble
        from hvsim.monitors import TrapAndEmulate, Vtx

        def faults(k):
            prog = assemble(HIDDEN_FAULTS.format(rounds=k), origin=0x1000)
            mon = TrapAndEmulate(program=prog) if host == "shadow" else Vtx(program=prog)
            t0 = time.perf_counter()
            ev = mon.run(10**12)
            dt = time.perf_counter() - t0
            c = mon.shadow_mmu.counters
            if ev.kind != "halt" or c["hidden_faults"] < HIDDEN_PAGES * HIDDEN_SPACES * k \
                    or c["shadow_roots_built"] < HIDDEN_SPACES * k:
                raise RuntimeError(f"the hidden-fault guest did not run as planned: {ev}, {c}")
            return c["hidden_faults"], dt
        faults(1)
        return Probe(faults, 5, limit=10**6)
    probe(("hidden", "hvsim"), lambda: hidden_probe("shadow"))
    probe(("hidden", "vtx"), lambda: hidden_probe("vtx"))

    def sweep_probe():                 # (q) lesson 05's sweep, warm
        from hvsim.lessons import l05_shadow_vs_nested as l05

        def once(_k):
            t0 = time.perf_counter()
            l05.sweep()
            return 1, time.perf_counter() - t0
        once(1)
        return Probe(once, 1, limit=1)
    probe(("sweep", "hvsim"), sweep_probe)

    def hypercall_probe():             # (r) hypercall round trips
        from hvsim import assemble
        from hvsim.paravirt.hypervisor import Hypervisor

        def calls(k):
            hv = Hypervisor(program=assemble(PV_HYPERCALL_LOOP.format(n=k)))
            t0 = time.perf_counter()
            ev = hv.run(10**12)
            dt = time.perf_counter() - t0
            if ev.kind != "halt" or hv.hypercalls.get(17) != k:
                raise RuntimeError(f"the hypercall loop did not run as planned: {ev}")
            return k, dt
        calls(1000)
        return Probe(calls, 50_000, limit=10**8)
    probe(("hypercall", "hvsim"), hypercall_probe)

    def batch_probe(multi):            # (s) 64 page-table updates: one multicall or 64 calls
        from hvsim import assemble
        from hvsim.paravirt.hypervisor import Hypervisor
        body, flush = (PV_MULTI, PV_MULTI_FLUSH) if multi else (PV_SINGLE, "")

        def updates(k):
            hv = Hypervisor(program=assemble(PV_UPDATES.format(n=k, body=body, flush=flush)))
            t0 = time.perf_counter()
            ev = hv.run(10**12)
            dt = time.perf_counter() - t0
            traps = hv.hypercalls.get(13 if multi else 14, 0)
            if ev.kind != "halt" or hv.pt_updates != PV_BATCH * k or traps != (
                    k if multi else PV_BATCH * k):
                raise RuntimeError(f"the update loop did not run as planned: {ev}, "
                                   f"{hv.pt_updates} updates, {traps} traps")
            notes[("batch", "multi" if multi else "single")] = (
                f"{traps / k:g} trap(s) per {PV_BATCH} updates")
            return PV_BATCH * k, dt
        updates(10)
        return Probe(updates, 500, limit=10**7)
    probe(("batch", "hvsim"), lambda: batch_probe(True))
    probe(("batch", "single"), lambda: batch_probe(False))

    def io_probe(host):                # (t) 64 sectors each way: the ring or the emulated disk
        from hvsim import pvworkloads
        from hvsim.guests import minios
        program = minios(host in pvworkloads.PV_HOSTS, "io", N_SECTORS=64)    # built once
        boot_and_run = pvworkloads.HOSTS[host]

        def moved(k):
            total, dt = 0, 0.0
            for _ in range(k):
                t0 = time.perf_counter()
                mon, ev = boot_and_run(program, 10**8)
                dt += time.perf_counter() - t0
                if ev.kind != "halt":
                    raise RuntimeError(f"the io workload on {host} stopped on {ev}")
                s = mon.stats
                entries = s["traps"] + s["vm_exits"] + s["hypercalls"]
                total += 2 * 64 * 512
            notes[("io", host)] = (f"{2 * 64 * 512 / entries:,.1f} bytes per trap/exit/"
                                   f"hypercall ({entries:,} for {2 * 64 * 512:,} bytes)")
            return total, dt
        moved(1)
        return Probe(moved, 1, limit=10**4)
    for host in ("pv", "shadow", "ept"):
        probe(("io", host), lambda host=host: io_probe(host))

    # the rounds: every probe once per round, in turn
    for _ in range(samples):
        for key in list(probes):
            try:
                probes[key].take(min_seconds)
            except Exception as e:
                failed[key] = _err(e)
                del probes[key]

    def result(key):
        if key in probes:
            return stats(probes[key].rates)
        return failed.get(key)

    def sampling_note(key):
        p = probes.get(key)
        if p is None:
            return ""
        s = f"{len(p.rates)} samples of {min(p.seconds):.2f}-{max(p.seconds):.2f} s"
        return s + (f" (short samples run again, longer: {p.reruns})" if p.reruns else "")

    def qemu_note(key):
        p = probes.get((key, "qemu"))
        if p is None:
            return ""
        return (f"QEMU user: each sample is the whole `qemu-i386` process at 2N iterations "
                f"minus at N = {p.n:,} (start-up and translation cancel), exit status checked")

    def row(key, name, target=None, extra=(), baselines=True):
        notes_ = ([notes.get(key, "")] + list(extra) + [sampling_note((key, "hvsim")),
                  qemu_note(key)])
        return {"name": name, "value": result((key, "hvsim")), "target": target,
                "seconds": False,
                "baselines": {b: result((key, b)) for b in BASELINES} if baselines else {},
                "note": "; ".join(x for x in notes_ if x)}

    rows = []
    for key, name in (("alu", "(a) ALU loop, instr/s"),
                      ("mixed", "(b) mixed loop (load/store, push/pop, call/ret), instr/s"),
                      ("paging", "(c) mixed loop, paging + TLB on, instr/s")):
        alone = result((key, "interp"))
        alone = (f"interpreter alone (`Machine(blocks=False)`): median {fmt_stats(alone)}"
                 if isinstance(alone, tuple) else f"interpreter alone: {alone}")
        rows.append(row(key, name, TARGETS[key], [alone]))
    sys_rate = result(("sys", "hvsim"))
    calls = (f"median {sys_rate[0] / SYSCALL_PER_ITER:.3g} system calls/s ({SYSCALL_PER_ITER} "
             "instr each round trip)") if isinstance(sys_rate, tuple) else ""
    rows.append(row("sys", "(d) INT 0x80 system-call loop ring 3 <-> 0, instr/s",
                    extra=[calls], baselines=False))
    rows.append(row("step", "(e) Machine.step() calls/s", TARGETS["step"], baselines=False))
    rows.append(row("traps", "(f) trap-to-Python round trips/s (OUT to an unclaimed port)",
                    TARGETS["traps"]))
    rows.append(row("roundtrips", "(i) structured exit round trips/s to a Python monitor "
                    f"(CLI in ring {GUEST_RING} -> #GP(0) -> skip -> run)",
                    TARGETS["roundtrips"], baselines=False))
    rows.append(row("kernel", "(j) teaching kernel under the trap-and-emulate monitor, "
                    "guest instr/s", baselines=False))
    rows.append(row("vmexit_python", "(k) VM exit round trips/s to the Python VMM (CPUID "
                    "in non-root -> exit 10 -> answered in the kernel -> VMRESUME)",
                    TARGETS["vmexit_python"], baselines=False))
    novpid = result(("vmexit_asm", "novpid"))
    novpid = (f"the same VMM without VPIDs (`SECONDARY=0`: every exit and entry flushes "
              f"the TLB): median {fmt_stats(novpid)}" if isinstance(novpid, tuple)
              else f"without VPIDs: {novpid}" if novpid else "")
    rows.append(row("vmexit_asm", "(l) VM exit + VMRESUME round trips/s inside the machine "
                    "(the assembly VMM, hvsim/guests/vmm.s, emulating CPUID; guest VPID 1)",
                    TARGETS["vmexit_asm"], extra=[novpid], baselines=False))
    rows.append(row("vtx_kernel", "(m) teaching kernel under the VT-x monitor, guest "
                    "instr/s", baselines=False))
    ept, paging = result(("ept", "hvsim")), result(("paging", "hvsim"))
    ratio = (f"{ept[0] / paging[0]:.0%} of (c)'s median in the same run (target >= 80%)"
             if isinstance(ept, tuple) and isinstance(paging, tuple) else "")
    rows.append(row("ept", "(n) the mixed loop of (c) as a VT-x guest with EPT (2D walks on "
                    "TLB misses), instr/s", extra=[ratio], baselines=False))
    shadow_loop, vtx_loop = result(("shadow_loop", "hvsim")), result(("shadow_loop", "vtx"))
    ratio = (f"{shadow_loop[0] / paging[0]:.0%} of (c)'s median in the same run (target >= "
             f"80%)" if isinstance(shadow_loop, tuple) and isinstance(paging, tuple) else "")
    vtx_ratio = (f"under the VT-x host without EPT: median {fmt_stats(vtx_loop)}, "
                 f"{vtx_loop[0] / paging[0]:.0%} of (c)" if isinstance(vtx_loop, tuple)
                 and isinstance(paging, tuple) else "")
    rows.append(row("shadow_loop", "(o) the mixed loop of (c) under shadow paging, warm "
                    "(trap-and-emulate, the guest's own identity map), instr/s",
                    extra=[ratio, vtx_ratio], baselines=False))
    vtx_hidden = result(("hidden", "vtx"))
    vtx_hidden = (f"under the VT-x host without EPT (#PF exits): median "
                  f"{fmt_stats(vtx_hidden)}" if isinstance(vtx_hidden, tuple) else "")
    rows.append(row("hidden", "(p) hidden-fault round trips/s (trap-and-emulate: #PF -> "
                    "Python shadow MMU fills the entry -> resume)", TARGETS["hidden"],
                    extra=[vtx_hidden], baselines=False))
    sweep = result(("sweep", "hvsim"))
    rows.append({"name": "(q) lesson 05's sweep, warm, seconds", "target": TARGETS["sweep"],
                 "value": 1 / sweep[0] if isinstance(sweep, tuple) else sweep,
                 "seconds": True, "baselines": {},
                 "note": (f"median of {len(probes[('sweep', 'hvsim')].rates)} sweeps "
                          f"({1 / sweep[2]:.2f}–{1 / sweep[1]:.2f} s)")
                 if isinstance(sweep, tuple) else ""})
    roundtrips = result(("roundtrips", "hvsim"))
    rows.append(row("hypercall", "(r) hypercall round trips/s to the Python hypervisor "
                    "(xen_version: int 0x82 -> handler by EAX -> resume)", TARGETS["hypercall"],
                    extra=[f"(i)'s structured exit round trips in the same run: median "
                           f"{fmt_stats(roundtrips)}" if isinstance(roundtrips, tuple) else ""],
                    baselines=False))
    single = result(("batch", "single"))
    single = (f"64 single update_va_mapping hypercalls: median {fmt_stats(single)} updates/s, "
              f"{notes.get(('batch', 'single'), '?')}" if isinstance(single, tuple)
              else f"64 single calls: {single}")
    rows.append(row("batch", "(s) page-table updates/s through the hypervisor: one multicall "
                    f"of 64 update_va_mapping ({notes.get(('batch', 'multi'), '?')})",
                    extra=[single], baselines=False))
    emulated = [f"the emulated disk under {name}: median {fmt_stats(result(('io', h)))} "
                f"bytes/s, {notes.get(('io', h), '?')}" if isinstance(result(("io", h)), tuple)
                else f"{name}: {result(('io', h))}"
                for h, name in (("shadow", "trap-and-emulate"), ("ept", "VT-x + EPT"))]
    rows.append({"name": "(t) block I/O (minios io, 64 sectors each way) through the split "
                 f"driver's ring, bytes/s ({notes.get(('io', 'pv'), '?')})",
                 "value": result(("io", "pv")), "target": None, "seconds": False,
                 "baselines": {},
                 "note": "; ".join(emulated + [sampling_note(("io", "pv"))])})
    # the software virtual machines of issue 16 (bench/bt.py, rawmode.py, emulation.py): their
    # own probes, each row beside its baselines of the same rounds
    import bt as _bt
    import emulation as _emulation
    import rawmode as _rawmode
    for r in (_bt.rows(samples=samples, min_seconds=min_seconds)
              + _rawmode.rows(samples=samples, min_seconds=min_seconds)
              + _emulation.emulation_rows(sys.modules[__name__], min_seconds=min_seconds,
                                          samples=samples)):
        # their baselines are other hvsim monitors, not this table's columns: into the note
        beside = [f"{k} in the same run: median {fmt_stats(v)}" for k, v in r["baselines"].items()]
        rows.append(dict(r, baselines={}, note="; ".join(beside + [r["note"]])))
    # the 1-minute load average once the rounds are done counts this process's own work too
    args.load_after_rounds = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    # fresh processes last (they compile on both cores); in the table, (g) and (h) in order
    return rows[:6] + fresh_process_rows(quick=args.quick) + rows[6:]


def fresh_process_rows(quick=False):
    """(g) cold compile and (h) warm start: wall time of fresh processes (--quick: one
    cold process and no ``hvsim warmup`` on an empty cache, the slowest part)."""
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

    runs = 1 if quick else COLD_RUNS
    try:
        firsts = [cold_process(["-c", README_EXAMPLE]) for _ in range(runs)]
        first, n_first = min(firsts)
        cold_note = (f"best of {runs} fresh processes, each on its own empty cache ("
                     + ", ".join(f"{t:.2f}" for t, _ in firsts) + f" s), wall time; "
                     f"{n_first} compiled functions cached by its end, the helper's included. ")
        if quick:
            cold_note += "Every kernel (`hvsim warmup` on an empty cache): not run with --quick"
        else:
            every, n_every = cold_process(["-m", "hvsim", "warmup"])
            cold_note += (f"Every kernel, `hvsim warmup` on an empty cache: {every:.1f} s "
                          f"({n_every} functions)")
    except Exception as e:
        first = _err(e)
        cold_note = "wall time of the whole process"
    rows = [{"name": "(g) cold compile to a first result: fresh process, empty cache, the "
             "README's example", "value": first, "target": TARGETS["cold"], "seconds": True,
             "baselines": {}, "note": cold_note}]

    tiny = ("import hvsim\nfrom hvsim import Machine, assemble\nm = Machine()\n"
            "m.load(assemble('mov eax, 7\\nhlt\\n'))\nassert m.run().kind == 'halt'\n")
    def warm_start(extra_env):
        """Wall seconds of one fresh process running the tiny program on the warm cache."""
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", tiny], env=dict(env, **extra_env), check=True,
                       capture_output=True, timeout=600)
        return time.perf_counter() - t0

    try:
        subprocess.run([sys.executable, "-m", "hvsim", "warmup"], env=env, check=True,
                       capture_output=True, timeout=1800)   # make sure the default cache is warm
        frozen, unfrozen = [], []
        for _ in range(WARM_RUNS):
            frozen.append(warm_start({}))
            unfrozen.append(warm_start({"HVSIM_GC_FREEZE": "0"}))
        warm = statistics.median(frozen)
        warm_note = (f"median of {WARM_RUNS} fresh processes (min–max {min(frozen):.2f}–"
                     f"{max(frozen):.2f} s), wall time, package bytecode written by `hvsim "
                     f"warmup`; the same with HVSIM_GC_FREEZE=0 (hvsim/_gc.py: the import "
                     f"objects left to the collector), alternated with it: median "
                     f"{statistics.median(unfrozen):.2f} s ({min(unfrozen):.2f}–"
                     f"{max(unfrozen):.2f})")
    except Exception as e:
        warm, warm_note = _err(e), "wall time"
    rows.append({"name": "(h) warm start: fresh process, import hvsim + tiny program",
                 "value": warm, "target": TARGETS["warm"], "seconds": True, "baselines": {},
                 "note": warm_note})
    return rows


def fmt_stats(x):
    """'median (min–max)' of a stats tuple; text (an error, 'n/a ...') as it is."""
    if x is None or isinstance(x, str):
        return x or ""
    median, lo, hi, _ = x
    return f"{fmt_rate(median)} ({fmt_rate(lo)}–{fmt_rate(hi)})"


def verdict(row):
    value, target = row["value"], row["target"]
    if target is None or isinstance(value, str) or value is None:
        return ""
    if row["seconds"]:
        return "meets target" if value <= target else "below target"
    median, _, _, best = value
    if median >= target:
        return "meets target"
    return "below target (best meets it)" if best >= target else "below target"


HEADER = ["measurement", "hvsim median", "min–max", "best", "target", "vs target (median)",
          "pure Python", "Unicorn", "QEMU user", "note"]


def render(rows):
    table = []
    for r in rows:
        v, t = r["value"], r["target"]
        if r["seconds"]:
            cells = [fmt_seconds(v), "", "", "" if t is None else f"<= {t:g} s"]
        elif isinstance(v, tuple):
            median, lo, hi, best = v
            cells = [fmt_rate(median), f"{fmt_rate(lo)}–{fmt_rate(hi)}", fmt_rate(best),
                     "" if t is None else f">= {fmt_rate(t)}"]
        else:
            cells = [fmt_rate(v), "", "", "" if t is None else f">= {fmt_rate(t)}"]
        base = [fmt_stats(r["baselines"].get(b)) for b in BASELINES]
        table.append([r["name"]] + cells + [verdict(r)] + base + [r["note"]])
    return HEADER, table


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
           "run on the machine described here, the baselines included.", "",
           "## Method", "",
           f"Each rate is the **median of {args.samples} samples**, each sample at least "
           f"{args.min_seconds:g} s of guest work (a calibration run sizes the iteration count; "
           "a sample that still comes out shorter is run again, longer, and the note counts "
           "those: dropping a short, hence fast, sample can only make a rate look slower). "
           "The table gives the median, the min–max of the samples and the best one; "
           "\"vs target\" judges the median, never the best. The samples are taken in rounds "
           "that go through every rate in turn, hvsim's and the baselines' alike, so a burst of "
           "other work on this shared machine (see the load average) hits a sample of each row "
           "rather than every sample of one row. The baselines' cells read median (min–max). "
           "Rows (g) and (h) time whole fresh processes: best of three, all three listed. "
           "Targets are the project's goals, not guarantees; nothing asserts a timing.", "",
           "Baselines, measured in the same run by the same method:", "",
           "- **pure Python**: bench/baseline.py, a dict-dispatch interpreter of the same "
           "assembly text, with fewer checks than hvsim (no decoding, no segment or privilege "
           "checks, only the flags the loops test);",
           "- **Unicorn**: the same machine-code bytes in Unicorn (QEMU's TCG as a library), "
           "timed around `emu_start` from the entry to `done`; for (c) with the same identity "
           "map as hvsim's, CR3 and CR0.PG set (a self-check first makes sure a load from an "
           "unmapped page faults); for (f), a Python hook on OUT (`UC_HOOK_INSN`) that "
           "returns to the guest, the nearest thing Unicorn has to an exit to Python;",
           "- **QEMU user**: `qemu-i386` (Debian's qemu-user package) running the same loop "
           "bytes as a static i386 Linux executable that bench/elf.py writes by hand (an ELF "
           "header and one read/write/execute PT_LOAD segment, the code assembled by hvsim at "
           "the address it is loaded at, zeroed memory after it). `hlt` at `done` becomes the "
           "Linux exit call (`mov ebx, eax ; mov eax, 1 ; int 0x80`), and the mixed loop's "
           "`mov esp, 0x90000` / `mov ebx, 0x80000` point at the top and the start of the "
           "zeroed memory (a page away from the code, so QEMU's self-modifying-code watch is "
           "not triggered); the loop body is the same bytes. A sample times the whole process "
           "for N and for 2N iterations and takes the difference, which removes QEMU's start-up, "
           "the loading and the translation of the loop: what is left is N iterations, at "
           "least the minimum sample time. The exit status (AL at `done`) is checked, so a run "
           "that stopped early is an error, not a fast sample.", "",
           "## Machine", ""]
    # (the load average at the end would count this benchmark's own work)
    if _busy_at_start(info):
        out[-2:-2] = ["**Note:** the machine was busy when this ran (see the load average "
                      "below): other engineers' work shares its two cores, so every row, "
                      "hvsim's and the baselines', ran slower than on an idle machine.", ""]
    for k, v in info.items():
        out.append(f"- **{k}**: {v}")
    out += ["", "## Results", "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" for _ in header) + "|"]
    for r in table:
        out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    below = [r[0] for r in table if r[5].startswith("below target")]
    out += ["", "Below target by the median in this run: "
            + ("; ".join(below) if below else "none") + ".", ""]
    out += ["## What each row runs", "",
            "- (a) `" + _one_line(ALU_LOOP) + "`",
            "- (b), (c) `" + _one_line(MIXED_LOOP) + "`;"
            " (c) identity-maps the first 8 MiB with 4 KiB pages and sets CR3 and CR0.PG",
            "- (a)-(c) run as a default `Machine()` does: the interpreter until a loop entry has "
            "been reached 256 times, then the blocks hvsim/cpu/translate.py compiled for it "
            "(the loop `top` to `call`, `leaf`, `pop` to `jnz`); the note gives the same loop "
            "with `Machine(blocks=False)`, the interpreter alone, sampled the same way",
            "- (d) a ring 3 loop `mov eax, 1 ; int 0x80 ; dec ecx ; jnz` whose ring 0 handler is "
            "`add edi, eax ; iret` (IDT gate DPL 3, TSS stack switch; exceptions=\"guest\")",
            "- (e) `Machine.step()` on the ALU loop",
            "- (f) `" + _one_line(IO_LOOP) + "`: each OUT exits `run()` as an 'io' event and "
            "Python calls `run()` again; in Unicorn each OUT calls a Python hook that returns",
            "- (g) the README's example (`mov ecx, 10 ; again: add eax, ecx ; loop again ; hlt`, "
            "then a check of EAX) as `python -c` with `NUMBA_CACHE_DIR` set to an empty folder, "
            f"best of {COLD_RUNS} (each on its own empty folder): "
            "numba compiles the run loop, and the handlers of the kernel table as the program "
            "meets them (hvsim/cpu/table.py); on two or more cores a helper process compiles "
            "the MMU's translation, which the run loop calls, then the handlers, while this "
            "process compiles the rest of the run loop (hvsim/warmup.py). The note gives "
            "`python -m hvsim warmup`, which compiles everything, on another empty folder",
            "- (h) `python -c \"import hvsim; ...run a two-instruction program\"` with the cache "
            f"warm, median of {WARM_RUNS} processes",
            "- (i) `" + _one_line(GP_LOOP) + f"` in ring {GUEST_RING} with IOPL 0 "
            "(hvsim.rings.setup's flat GDT and TSS), `m.route(13, \"host\")`: each CLI raises "
            "#GP(0) and leaves `run()` as an 'exception' event; the Python handler checks the "
            "kind and vector, sets `m.cpu.eip = ev.eip + length` (`ev.insn.length` when the "
            "event carries the decoded instruction, else `ev.length`: the note says which) "
            "and calls `m.run()` again. A round trip is one such exit, handled and resumed",
            "- (j) `TrapAndEmulate(program=teaching_kernel())` (hvsim.monitors; "
            "lesson 02's kernel in ring 1, "
            "its user program in ring 3, every trap handled by the Python monitor), booted, "
            "then `mon.run(N)`; the rate counts the instructions the machine retired "
            "(`machine.counters[\"instructions\"]`: the instructions the monitor emulates "
            "after a trap are not among them) per second of `mon.run`",
            "- (k) `" + _one_line(CPUID_LOOP.replace("{end}", "hlt")) + "` as the guest "
            "of `hvsim.monitors.kvm.VM()` (guest VPID 1): each CPUID exits to the Python VMM, "
            "which answers it in its 'kernel' and enters the guest again; a round trip is one "
            "such exit",
            "- (l) the same loop ending in VMCALL as the guest of hvsim/guests/vmm.s, which "
            "handles each CPUID exit in guest assembly (VMREAD, CPUID, VMWRITE, VMRESUME) "
            "without leaving `run()`",
            "- (m) as (j), under `Vtx(program=teaching_kernel(KCODE=0x08))`: the kernel in "
            "ring 0 of VMX non-root operation",
            "- (n) (c)'s loop as the guest of `VM(ept=True)` (guest VPID 1), the whole run "
            "timed: the TLB caches translations guest-linear -> host-physical, so only its "
            "misses make 2-D walks",
            ""]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_SAMPLES} samples of {QUICK_MIN_SAMPLE_S:g} s; "
                             "not a measurement, never written to BENCHMARKS.md")
    parser.add_argument("--samples", type=int, default=None,
                        help=f"samples per rate, at least 5 (default {SAMPLES})")
    parser.add_argument("--min-seconds", type=float, default=None,
                        help=f"guest work per sample, at least 0.5 s (default {MIN_SAMPLE_S:g})")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples = args.samples or QUICK_SAMPLES
        args.min_seconds = args.min_seconds or QUICK_MIN_SAMPLE_S
        args.no_write = True
    else:
        args.samples = args.samples or SAMPLES
        args.min_seconds = args.min_seconds or MIN_SAMPLE_S
        if args.samples < 5 or args.min_seconds < 0.5:
            parser.error("a measurement takes at least 5 samples of at least 0.5 s "
                         "(--quick for a smoke run)")
    info = machine_info()
    print("hvsim benchmarks on " + ", ".join(f"{k} {v}" for k, v in info.items()))
    if args.quick:
        print(f"QUICK SMOKE RUN: {args.samples} samples of >= {args.min_seconds:g} s each; "
              "not a measurement (BENCHMARKS.md is not written)")
    else:
        print(f"method: median of {args.samples} samples of >= {args.min_seconds:g} s of guest "
              "work each, in rounds through every rate")
    with tempfile.TemporaryDirectory(prefix="hvsim-bench-elf-") as tmp:
        args.tmp = tmp
        rows = measure(args, args.min_seconds, args.samples)
    info["load average after the rate rounds (counts this benchmark's own process)"] = \
        args.load_after_rounds
    print(f"load average after the rate rounds: {args.load_after_rounds}")
    header, table = render(rows)
    print()
    print_table(header, table)
    if args.quick:
        print("\n(QUICK SMOKE RUN: short samples; not a measurement)")
    if not args.no_write:
        path = ROOT / "BENCHMARKS.md"
        text = markdown(header, table, info, args)
        # the compile path's section is measured by bench/corrections.py (it takes cold
        # compiles of every kernel): kept as it was measured
        kept = compile_section(path.read_text()) if path.exists() else ""
        path.write_text(text.rstrip("\n") + "\n" + (f"\n{kept}" if kept else ""))
        print(f"\nwrote {path}")
    return 0


COMPILE_SECTION = "## The compile path"


def compile_section(text: str) -> str:
    """The section of BENCHMARKS.md that bench/corrections.py writes ('' if none)."""
    i = text.find(COMPILE_SECTION)
    return text[i:].rstrip("\n") + "\n" if i >= 0 else ""


if __name__ == "__main__":
    sys.exit(main())
