"""Lesson 01 -- privilege rings and traps: the machines and exercises of
notebooks/01_rings_and_traps.ipynb (pure Python, not jitted).

What is modelled: a tiny protected-mode "operating system" on one hvsim Machine. The
system tables come from :func:`hvsim.rings.setup.install` (flat code and data segments
for rings 0-3, an IDT, a TSS whose SS0:ESP0 is the kernel stack). A user program runs
in ring 3; a ring-0 kernel of a few instructions owns two IDT gates:

* vector 13, #GP: the CPU enters it when ring 3 tries an instruction it may not run,
  such as CLI (IOPL-sensitive: CLI needs CPL <= IOPL, SDM Vol. 2A "CLI"). This kernel
  is lenient: it skips the one-byte CLI and returns, so the program goes on (a real
  kernel would kill it; a trap-and-emulate monitor, lesson 02, would *emulate* it);
* vector 0x80, the system call: an interrupt gate with DPL 3, so ring 3 may reach it
  with ``INT 0x80``. EAX = 0 writes the character in BL to the console, EAX = 1 ends
  the program (HLT, in ring 0).

Entering ring 0 from ring 3 switches stacks (SDM Vol. 3A, 6.12.1): the CPU loads SS
and ESP from the TSS (SS0:ESP0), then pushes the old SS, ESP, EFLAGS, CS and EIP on
the new stack. :func:`ring0_frame` reads those five words back from memory.
"""
from __future__ import annotations

import dataclasses
import struct

from hvsim import Machine, assemble
from hvsim.lessons import Exercise
from hvsim.rings.descriptors import TSS_ESP0
from hvsim.rings.setup import install, SystemTables

ORIGIN = 0x1000
MEMORY = 1 << 20
SYSCALL_VECTOR = 0x80

# the ring-0 kernel, appended after every user program
KERNEL = """
; ---- ring 0 from here on ----------------------------------------------------------
syscall:                ; INT 0x80 (gate DPL 3): EAX = 0 print BL, EAX = 1 exit
    cmp eax, 1
    je .exit
    push eax
    mov eax, ebx
    out 0xe9, al        ; the console port: allowed, we are in ring 0
    pop eax
    iret                ; back to ring 3: pops EIP, CS, EFLAGS, ESP, SS
.exit:
    hlt
gp_handler:             ; #GP: the CPU pushed an error code above the return frame
    add esp, 4          ; drop the error code
    add dword [esp], 1  ; skip the faulting one-byte instruction (CLI or STI)
    iret
"""

CLI_PROGRAM = """
user:                   ; ring 3
    mov eax, 0x1234     ; an ordinary instruction: allowed in any ring
    cli                 ; IOPL-sensitive: CPL 3 > IOPL 0, so #GP(0)
    mov ebx, 0x5678     ; the kernel skipped the CLI: we go on here
    mov eax, 1
    int 0x80            ; system call 1: exit
"""

SYSCALL_PROGRAM = """
user:                   ; ring 3
    mov eax, 0          ; system call 0: print the character in BL
    mov ebx, 'h'
    int 0x80
    mov ebx, 'i'
    int 0x80
    mov eax, 1          ; system call 1: exit
    int 0x80
"""


@dataclasses.dataclass
class Demo:
    """A ready machine: ``machine``, its ``tables`` and the assembled ``program``."""
    machine: Machine
    tables: SystemTables
    program: object

    def stepper(self, **kwargs):
        """A :class:`hvsim.widgets.Stepper` on this machine."""
        from hvsim.widgets import Stepper
        return Stepper(self.machine, **kwargs)

    def controller(self, **kwargs):
        """The stepper's logic without widgets (for scripts)."""
        from hvsim.widgets import StepperController
        return StepperController(self.machine, **kwargs)

    def label(self, name: str) -> int:
        return self.program.labels[name]


def ring3_demo(user_source: str, *, exceptions: str = "guest", esp0: int | None = None,
               user_esp: int | None = None, memory: int = MEMORY) -> Demo:
    """Assemble ``user_source`` followed by the kernel, install the tables and the two
    gates, and leave the CPU in ring 3 at label ``user``.

    ``exceptions='host'`` makes exceptions leave ``run()`` instead of reaching the
    kernel's #GP handler (what a monitor sees). ``esp0`` overrides TSS.ESP0 and
    ``user_esp`` the ring-3 stack pointer.
    """
    prog = assemble(user_source + KERNEL, origin=ORIGIN)
    if "user" not in prog.labels:
        raise ValueError("the user program must start at a label 'user:'")
    m = Machine(memory=memory, exceptions=exceptions)
    t = install(m)
    m.load(prog)
    t.gate(m, 13, prog.labels["gp_handler"])
    t.gate(m, SYSCALL_VECTOR, prog.labels["syscall"], dpl=3)
    if esp0 is not None:
        t.set_stack(m, 0, esp0)
    t.enter(m, 3, prog.labels["user"], user_esp)
    return Demo(m, t, prog)


def cli_demo(exceptions: str = "guest") -> Demo:
    """Ring 3 tries CLI and takes #GP (first step: ``mov eax, 0x1234``)."""
    return ring3_demo(CLI_PROGRAM, exceptions=exceptions)


def syscall_demo(**kwargs) -> Demo:
    """Ring 3 prints 'hi' with two INT 0x80 system calls, then exits with a third."""
    return ring3_demo(SYSCALL_PROGRAM, **kwargs)


def tss_esp0(demo: Demo) -> int:
    """ESP0, the ring-0 stack pointer stored in the TSS (offset 4, SDM Vol. 3A Figure 7-2)."""
    return struct.unpack("<I", demo.machine.read_linear(demo.tables.tss + TSS_ESP0, 4))[0]


def step_until_ring(m: Machine, ring: int, limit: int = 1000) -> int:
    """Step until the CPU is in ``ring``; returns the number of steps taken."""
    for n in range(1, limit + 1):
        m.step()
        if m.cpu.cpl == ring:
            return n
    raise RuntimeError(f"ring {ring} was not reached in {limit} steps")


def ring0_frame(m: Machine) -> dict:
    """The interrupt frame at ESP, as a ring-0 handler entered from ring 3 finds it
    (no error code): EIP, CS, EFLAGS, then the interrupted ESP and SS (lowest address
    first, SDM Vol. 3A Figure 6-4)."""
    words = struct.unpack("<5I", m.read_linear(m.cpu.esp, 20))
    names = ("eip", "cs", "eflags", "esp", "ss")
    return {n: w for n, w in zip(names, words)}


def frame_table(m: Machine) -> str:
    """:func:`ring0_frame` as lines 'address  name  value', highest address first."""
    f = ring0_frame(m)
    esp = m.cpu.esp
    rows = [f"{esp + 4 * i:#010x}  {n:6}  {v:#010x}" for i, (n, v) in enumerate(f.items())]
    return "\n".join(reversed(rows))


# ---- exercises ---------------------------------------------------------------------------
def _esp0_params(rng):
    return {"esp0": rng.randrange(0x80000, 0xF0000, 0x10),
            "user_esp": rng.randrange(0x40000, 0x70000, 4)}


def _esp0_answer(p) -> int:
    d = syscall_demo(esp0=p["esp0"], user_esp=p["user_esp"])
    step_until_ring(d.machine, 0)
    return d.machine.cpu.esp


def _esp0_solution(p, answer) -> str:
    return (f"INT 0x80 goes from ring 3 to ring 0, so the CPU switches stacks: it loads "
            f"SS:ESP from the TSS (ESP0 = {p['esp0']:#x}), whatever ring 3's ESP was "
            f"({p['user_esp']:#x} is not used). On the new stack it pushes five 4-byte "
            f"words -- SS, ESP, EFLAGS, CS, EIP -- and there is no error code for INT n. "
            f"So ESP = {p['esp0']:#x} - 20 = **{answer:#x}**. (Computed by running hvsim.)")


def esp0_exercise(seed: int = 1) -> Exercise:
    """'What ESP does the ring-0 handler see after INT 0x80 from ring 3?'"""
    return Exercise(
        "ring-0 ESP after INT 0x80", seed, make=_esp0_params,
        question=lambda p: (f"The TSS holds SS0:ESP0 = 0x10:{p['esp0']:#x}. A ring-3 program "
                            f"with ESP = {p['user_esp']:#x} executes `int 0x80` (an interrupt "
                            f"gate with DPL 3 to ring-0 code). What is ESP when the first "
                            f"instruction of the handler runs? (write it like 0x1234)"),
        answer=_esp0_answer, solution=_esp0_solution)


def _gp_params(rng):
    return {"vector": rng.randrange(0x21, 0x80)}


def _gp_answer(p) -> int:
    src = f"user:\n    int {p['vector']:#x}\n    jmp user\n"
    d = ring3_demo(src, exceptions="host")
    d.tables.gate(d.machine, p["vector"], d.label("syscall"), dpl=0)
    ev = d.machine.run(10)
    if ev.kind != "exception" or ev.vector != 13:
        raise RuntimeError(f"expected #GP, got {ev}")
    return ev.error_code


def _gp_solution(p, answer) -> str:
    v = p["vector"]
    return (f"The gate's DPL (0) is below the CPL (3), so `int {v:#x}` from ring 3 is refused "
            f"with #GP. Its error code names the gate like a selector (SDM Vol. 3A, 6.13): bits "
            f"15:3 = the vector {v:#x}, bit 1 (IDT) = 1, bit 0 (EXT) = 0 because the program "
            f"itself asked. So {v:#x} * 8 + 2 = **{answer:#x}**. (Computed by running hvsim.)")


def gp_error_code_exercise(seed: int = 1) -> Exercise:
    """'Which error code does the #GP of a refused INT n carry?'"""
    return Exercise(
        "#GP error code of a refused INT n", seed, make=_gp_params,
        question=lambda p: (f"A ring-3 program executes `int {p['vector']:#x}`. IDT entry "
                            f"{p['vector']:#x} is a present interrupt gate with DPL 0. The CPU "
                            f"raises #GP: which error code does it push? (write it like 0x1a2)"),
        answer=_gp_answer, solution=_gp_solution)
