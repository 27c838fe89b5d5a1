"""Lesson 00 -- the index: a first seeded exercise on the five-line loop (pure Python).

The program is the README's loop with a seeded count: ``mov ecx, n`` then ``add eax,
ecx`` / ``loop`` n times. LOOP decrements ECX and jumps while ECX is not zero (SDM
Vol. 2A, LOOP/LOOPcc), so EAX ends as n + (n-1) + ... + 1. The exercise asks for the
number of instructions the machine retires up to and including the HLT: the student
can count it by hand, or with the stepper's Step button.
"""
from __future__ import annotations

from hvsim import Machine, assemble
from hvsim.lessons import Exercise

ORIGIN = 0x1000


def loop_source(n: int) -> str:
    return f"""
    mov ecx, {n}
again:
    add eax, ecx
    loop again
    hlt
"""


def loop_machine(n: int) -> Machine:
    """A 1 MiB machine loaded with the loop for count ``n`` (1..1000), not yet run."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000:
        raise ValueError(f"n must be an integer 1..1000, got {n!r}")
    m = Machine(memory=1 << 20)
    m.load(assemble(loop_source(n), origin=ORIGIN))
    return m


def _params(rng):
    return {"n": rng.randrange(3, 40)}


def _answer(p) -> int:
    m = loop_machine(p["n"])
    ev = m.run(100_000)
    if ev.kind != "halt":
        raise RuntimeError(f"the loop stopped on {ev}, not on its HLT")
    return m.counters["instructions"]


def _solution(p, answer) -> str:
    n = p["n"]
    return (f"`mov ecx, {n}` retires once. Each pass of the loop retires two instructions, "
            f"`add` and `loop`; LOOP decrements ECX and jumps back while ECX is not zero, so "
            f"there are {n} passes: {2 * n} instructions. The HLT retires too. "
            f"1 + {2 * n} + 1 = **{answer}** (the machine's `instructions` counter says the same). "
            f"EAX ends as {n} + {n - 1} + ... + 1 = {n * (n + 1) // 2}.")


def loop_exercise(seed: int = 1) -> Exercise:
    """'How many instructions does the loop retire, HLT included?'"""
    return Exercise(
        "instructions retired by the loop", seed, make=_params,
        question=lambda p: ("How many instructions does the machine retire running this "
                            "program, the final HLT included? Count by hand, or load it in a "
                            "Stepper and press Step.\n\n```nasm" + loop_source(p["n"]) + "```"),
        answer=_answer, solution=_solution)
