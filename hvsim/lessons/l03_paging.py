"""Lesson 03 -- paging and the TLB: the machines, programs and exercises of
notebooks/03_paging_and_tlb.ipynb (plain Python; the machine underneath is jitted).

What the lesson shows, in order:

1. page tables built from Python (:class:`PageTables`): a page directory, page tables,
   and CR3 / CR0.PG (SDM Vol. 3A, 4.3);
2. one translation walked by hand (:func:`hvsim.mmu.walk`) and drawn
   (:func:`hvsim.viz.page_walk`), before and after the TLB caches it;
3. the TLB's capacity: a loop touching N pages, for N below and above the number of
   entries (:func:`tlb_loop`, :func:`tlb_sweep`);
4. a page fault: a user program writes to a page that is not present; the #PF leaves
   ``run()`` with its error code and CR2 (:func:`fault_machine`,
   :func:`explain_error_code`); the host maps the page and the write restarts.

The memory map every machine of this lesson uses (physical addresses; the first 4 MiB
are identity-mapped, so physical = linear there)::

    0x00400  GDT, TSS (hvsim.rings.setup)      0x10000  IDT (hvsim.rings.setup)
    0x01000  the program                       0x20000  page directory (PD)
    0x21000  page tables, one after another    0x200000 frames of the data pages
    linear 0x400000 (PDE 1): the data pages, mapped page by page to DATA_FRAMES
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from hvsim import Machine, assemble
from hvsim.arch.cr import CR0_PG, CR4_PSE
from hvsim.lessons import Exercise
from hvsim.mmu import walk
from hvsim.arch.pte import (PTE_P, PTE_RW, PTE_US, PTE_PS, PTE_FRAME, PDE_FRAME_4M,
                           PFEC_P, PFEC_W, PFEC_U, PFEC_RSVD)
from hvsim.rings.setup import install

__all__ = ["PageTables", "paged_machine", "tlb_loop", "tlb_sweep", "fault_machine",
           "explain_error_code", "error_code_bits", "translation_exercise", "tlb_exercise", "CODE", "PD",
           "DATA", "DATA_FRAMES", "SYSCALL_VECTOR"]

MEMORY = 4 << 20          # 4 MiB of guest-physical memory
CODE = 0x1000             # where the lesson programs are loaded
PD = 0x20000              # page directory (above the IDT that hvsim.rings.setup puts at 0x10000)
FIRST_TABLE = 0x21000     # page tables are handed out from here, 4 KiB each
DATA = 0x400000           # linear base of the data pages: PDE index 1, PTE index 0
DATA_FRAMES = 0x200000    # physical frame of data page 0; page i -> DATA_FRAMES + i * PAGE
PAGE = 4096               # 32-bit paging: a 4 KiB page (SDM Vol. 3A, 4.3)
LARGE_PAGE = 4 << 20      # a 4 MiB page, PDE.PS = 1 with CR4.PSE = 1 (SDM Vol. 3A, 4.3)
ENTRIES = 1024            # entries per page directory / page table
SYSCALL_VECTOR = 0x80     # the lesson programs end with INT 0x80, routed to the host
MAX_DATA_PAGES = ENTRIES  # one page table maps the data region


def _check(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be an integer {lo:#x}..{hi:#x}, got {value!r}")
    return int(value)


class PageTables:
    """32-bit page tables in a machine's memory, written from Python.

    The directory is at ``pd``; page tables are allocated from ``first_table`` on, one
    4 KiB frame each, as :meth:`map` needs them. Entries are written into guest memory
    exactly as a kernel would write them; nothing here touches the TLB, so -- as on a
    real processor -- changing an entry that the TLB may cache needs an INVLPG in the
    guest, or a CR3 reload (from Python: ``m.cpu.cr3 = m.cpu.cr3``).
    """

    def __init__(self, machine: Machine, pd: int = PD, first_table: int = FIRST_TABLE):
        self.m = machine
        size = len(machine.memory)
        self.pd = _check("pd", pd, 0, size - PAGE)
        if pd % PAGE or first_table % PAGE:
            raise ValueError("the page directory and the page tables must be 4 KiB aligned")
        self.next_table = _check("first_table", first_table, 0, size - PAGE)
        machine.memory[self.pd:self.pd + PAGE] = 0

    # ---- raw entries ---------------------------------------------------------------
    def read(self, pa: int) -> int:
        return int.from_bytes(bytes(self.m.memory[pa:pa + 4]), "little")

    def write(self, pa: int, value: int) -> None:
        self.m.memory[pa:pa + 4] = list(int(value).to_bytes(4, "little"))

    def pde_addr(self, lin: int) -> int:
        """Physical address of the PDE for ``lin``: PD + 4 * lin[31:22]."""
        return self.pd + 4 * (_check("lin", lin, 0, 0xFFFFFFFF) >> 22)

    def pte_addr(self, lin: int) -> int:
        """Physical address of the PTE for ``lin`` (its page table must exist)."""
        pde = self.read(self.pde_addr(lin))
        if not pde & PTE_P or pde & PTE_PS:
            raise ValueError(f"linear {lin:#x} has no page table (PDE = {pde:#010x})")
        return (pde & PTE_FRAME) + 4 * ((lin >> 12) & (ENTRIES - 1))

    # ---- mapping ---------------------------------------------------------------------
    def map(self, lin: int, pa: int, *, writable: bool = True, user: bool = True) -> int:
        """Map the 4 KiB page holding ``lin`` to the frame holding ``pa``; the PTE address.

        The PDE is made present, writable and user (the rights that matter are then those
        of the PTE: the processor combines both levels, SDM Vol. 3A, 4.6).
        """
        _check("pa", pa, 0, 0xFFFFFFFF)
        pde_addr = self.pde_addr(lin)
        pde = self.read(pde_addr)
        if pde & PTE_P and pde & PTE_PS:
            raise ValueError(f"linear {lin:#x} lies in a 4 MiB page; unmap it first")
        if not pde & PTE_P:
            table = self.next_table
            if table + PAGE > len(self.m.memory):
                raise ValueError("no memory left for another page table")
            self.next_table += PAGE
            self.m.memory[table:table + PAGE] = 0
            self.write(pde_addr, table | PTE_P | PTE_RW | PTE_US)
        pte_addr = self.pte_addr(lin)
        self.write(pte_addr, (pa & PTE_FRAME) | PTE_P | (PTE_RW if writable else 0)
                   | (PTE_US if user else 0))
        return pte_addr

    def map_large(self, lin: int, pa: int, *, writable: bool = True, user: bool = True) -> int:
        """Map the 4 MiB page holding ``lin`` with one PDE (PS = 1); the PDE address.
        Needs CR4.PSE, which :meth:`enable` sets."""
        _check("pa", pa, 0, 0xFFFFFFFF)
        pde_addr = self.pde_addr(lin)
        self.write(pde_addr, (pa & PDE_FRAME_4M) | PTE_PS | PTE_P
                   | (PTE_RW if writable else 0) | (PTE_US if user else 0))
        return pde_addr

    def unmap(self, lin: int) -> int:
        """Clear the present bit of the PTE for ``lin``; its address."""
        pte_addr = self.pte_addr(lin)
        self.write(pte_addr, self.read(pte_addr) & ~PTE_P)
        return pte_addr

    def identity(self, start: int, end: int, **rights) -> None:
        """Map linear = physical for every page of [start, end)."""
        for page in range(start & PTE_FRAME, end, PAGE):
            self.map(page, page, **rights)

    def enable(self) -> None:
        """CR3 = the directory, CR4.PSE = 1, CR0.PG = 1 (SDM Vol. 3A, 4.1.1): paging on."""
        self.m.cpu.cr3 = self.pd
        self.m.cpu.cr4 = self.m.cpu.cr4 | CR4_PSE
        self.m.cpu.cr0 = self.m.cpu.cr0 | CR0_PG


def paged_machine(*, tlb=(16, 4), memory: int = MEMORY, data_pages: int = 16,
                  exceptions: str = "host"):
    """A machine with paging on: the first 4 MiB identity-mapped (user, writable) and
    ``data_pages`` pages at linear DATA mapped to frames from DATA_FRAMES.

    Returns ``(machine, tables)``; nothing is loaded yet.
    """
    m, pt, _ = _paged_machine(tlb, memory, data_pages, exceptions)
    return m, pt


def _paged_machine(tlb, memory, data_pages, exceptions):
    data_pages = _check("data_pages", data_pages, 0, MAX_DATA_PAGES)
    if DATA_FRAMES + data_pages * PAGE > memory:
        raise ValueError(f"{data_pages} data pages do not fit in {memory:#x} bytes of memory")
    m = Machine(memory=memory, tlb=tlb, exceptions=exceptions)
    system = install(m)          # GDT with code/data segments for every ring, IDT, TSS
    pt = PageTables(m)
    pt.identity(0, min(memory, LARGE_PAGE))
    for i in range(data_pages):
        pt.map(DATA + i * PAGE, DATA_FRAMES + i * PAGE)
    pt.enable()
    return m, pt, system


def _loop_source(n_pages: int, rounds: int) -> str:
    return f"""
; read one dword from each of {n_pages} consecutive pages, {rounds} times over
    mov edx, {rounds}
next_round:
    mov esi, {DATA:#x}          ; linear address of data page 0
    mov ecx, {n_pages}
next_page:
    mov eax, [esi]              ; one data access: one TLB lookup
    add esi, {PAGE:#x}            ; the next page
    loop next_page
    dec edx
    jnz next_round
    hlt
"""


def tlb_loop(n_pages: int, *, rounds: int = 10, tlb=(16, 4), run: bool = True) -> Machine:
    """A machine whose program reads one dword in each of ``n_pages`` pages, ``rounds``
    times over, with a TLB of ``tlb = (sets, ways)`` (or None). Run to its HLT unless
    ``run=False``; the counters then say how the TLB fared.
    """
    n_pages = _check("n_pages", n_pages, 1, MAX_DATA_PAGES)
    rounds = _check("rounds", rounds, 1, 10_000)
    m, _ = paged_machine(tlb=tlb, data_pages=n_pages)
    m.load(assemble(_loop_source(n_pages, rounds), origin=CODE))
    if run:
        ev = m.run()
        if ev.kind != "halt":
            raise RuntimeError(f"the TLB loop stopped on {ev}, not on its HLT")
    return m


def tlb_sweep(page_counts: Iterable[int], *, rounds: int = 10, tlb=(16, 4)) -> dict:
    """``{"N pages": counters}`` of :func:`tlb_loop` for each N, ready for counter_bars."""
    return {f"{n} pages": tlb_loop(n, rounds=rounds, tlb=tlb).counters for n in page_counts}


MISSING_PAGE = 2          # the data page fault_machine leaves unmapped
FAULT_VALUE = 0x600D


def fault_machine(ring: int = 3):
    """A program in ``ring`` that touches data pages 0, 1 and 2; page 2 is not present.

    Exceptions leave ``run()`` (the host is the kernel here), and so does the
    program's final ``INT 0x80``. Returns ``(machine, tables)``; the first ``run()``
    stops on the #PF of the write ``mov dword [esi + 0x2000], 0x600D``.
    """
    ring = _check("ring", ring, 0, 3)
    m, pt, system = _paged_machine((16, 4), MEMORY, MISSING_PAGE + 1, "host")
    pt.unmap(DATA + MISSING_PAGE * PAGE)
    prog = assemble(f"""
    mov esi, {DATA:#x}
    mov dword [esi], 1                        ; page 0: present
    mov eax, [esi + {PAGE:#x}]                ; page 1: present
    mov dword [esi + {MISSING_PAGE * PAGE:#x}], {FAULT_VALUE:#x}  ; page 2: not present -> #PF
    mov ebx, [esi + {MISSING_PAGE * PAGE:#x}]
    int {SYSCALL_VECTOR:#x}                   ; "exit": leaves run() as an event
""", origin=CODE)
    m.load(prog)
    m.route(SYSCALL_VECTOR, "host")
    system.enter(m, ring, CODE)
    return m, pt


# #PF error code bits, low to high (SDM Vol. 3A, 4.7, Figure 4-12)
_PFEC_BITS = (
    (PFEC_P, "P", "a protection violation (the page was present)",
     "the page was not present"),
    (PFEC_W, "W/R", "the access was a write", "the access was a read"),
    (PFEC_U, "U/S", "the access came from user mode (CPL 3)",
     "the access came from supervisor mode (CPL 0-2)"),
    (PFEC_RSVD, "RSVD", "a reserved bit was set in a paging entry", "no reserved bit was set"),
)


def error_code_bits(code: int) -> dict:
    """``{"P": 0/1, "W/R": 0/1, "U/S": 0/1, "RSVD": 0/1}`` of a #PF error code."""
    code = _check("error code", code, 0, 0xFFFFFFFF)
    return {name: int(bool(code & bit)) for bit, name, _, _ in _PFEC_BITS}


def explain_error_code(code: int) -> str:
    """A #PF error code bit by bit, in words (SDM Vol. 3A, 4.7, Figure 4-12)."""
    code = _check("error code", code, 0, 0xFFFFFFFF)
    lines = [f"#PF error code {code:#x} = {code:05b}b"]
    for bit, name, one, zero in _PFEC_BITS:
        v = int(bool(code & bit))
        lines.append(f"  bit {bit.bit_length() - 1}  {name:<4} = {v}: {one if v else zero}")
    return "\n".join(lines)


# ---- exercises ---------------------------------------------------------------------
_EX_MEMORY = 1 << 20      # the translation exercise's tables live in 1 MiB


def _translation_params(rng) -> dict:
    pdi, decoy_pdi = rng.sample(range(2, ENTRIES), 2)
    pti = rng.randrange(1, ENTRIES - 1)
    table, decoy_table = (0x30000 + PAGE * k for k in rng.sample(range(0xC0), 2))
    frames = [PAGE * f for f in rng.sample(range(0x100, 0x10000), 4)]
    pdes = {pdi: table | PTE_P | PTE_RW | PTE_US,
            decoy_pdi: decoy_table | PTE_P | PTE_RW | PTE_US}
    ptes = {table: {pti - 1: frames[1] | PTE_P | PTE_RW, pti: frames[0] | PTE_P | PTE_RW | PTE_US,
                    pti + 1: frames[2] | PTE_P},
            decoy_table: {pti: frames[3] | PTE_P | PTE_RW | PTE_US}}
    lin = (pdi << 22) | (pti << 12) | rng.randrange(PAGE)
    return {"lin": lin, "cr3": PD, "pdes": pdes, "ptes": ptes}


def _translation_machine(p) -> Machine:
    m = Machine(memory=_EX_MEMORY, tlb=None)
    pt = PageTables(m)
    for i, v in p["pdes"].items():
        pt.write(PD + 4 * i, v)
    for table, entries in p["ptes"].items():
        for j, v in entries.items():
            pt.write(table + 4 * j, v)
    return m


def _translation_answer(p) -> int:
    m = _translation_machine(p)
    return walk(m.memory, p["cr3"], 0, p["lin"]).pa


def _translation_question(p) -> str:
    rows = [f"| page directory | PDE[{i:#05x}] | {PD + 4 * i:#010x} | {v:#010x} |"
            for i, v in sorted(p["pdes"].items())]
    for table, entries in sorted(p["ptes"].items()):
        rows += [f"| page table at {table:#010x} | PTE[{j:#05x}] | {table + 4 * j:#010x} | {v:#010x} |"
                 for j, v in sorted(entries.items())]
    return (f"Paging is on with CR3 = `{p['cr3']:#010x}` and CR4.PSE = 0. These are the only "
            f"present entries in the tables:\n\n| table | entry | at (physical) | value |\n"
            f"|---|---|---|---|\n" + "\n".join(rows) +
            f"\n\nTo which **physical address** does linear address `{p['lin']:#010x}` "
            f"translate? (Entry format: frame in bits 31:12, flags P=1, RW=2, US=4.)")


def _translation_solution(p, answer) -> str:
    lin = p["lin"]
    w = walk(_translation_machine(p).memory, p["cr3"], 0, lin)
    return (f"Split the linear address (SDM Vol. 3A, Figure 4-2): bits 31:22 = "
            f"`{lin >> 22:#05x}` index the page directory, bits 21:12 = "
            f"`{(lin >> 12) & 0x3FF:#05x}` index the page table, bits 11:0 = "
            f"`{lin & 0xFFF:#05x}` are the offset in the page.\n\n"
            f"The PDE at CR3 + 4 x {lin >> 22:#x} gives the page table; the PTE at table + 4 x "
            f"{(lin >> 12) & 0x3FF:#x} gives the frame; frame + offset = "
            f"**{answer:#010x}**. The other entries are decoys: the same PTE index in the "
            f"other table, and the neighbouring PTEs.\n\n```\n{w}\n```")


def translation_exercise(seed: int = 0) -> Exercise:
    """Which physical address does a linear address map to, given seeded tables?"""
    return Exercise("translate a linear address", seed, make=_translation_params,
                    question=_translation_question, answer=_translation_answer,
                    solution=_translation_solution)


def _tlb_params(rng) -> dict:
    sets, ways = rng.choice((4, 8, 16)), rng.choice((2, 4))
    if rng.random() < 0.5:      # every set holds its pages, and at least half the TLB is used
        n = rng.randrange(max(2, sets * ways // 2), sets * (ways - 1) + 1)
    else:                       # every set is asked for more pages than it has ways
        n = rng.randrange(sets * (ways + 1), sets * (ways + 2))
    return {"sets": sets, "ways": ways, "entries": sets * ways, "n": n,
            "rounds": rng.randrange(3, 9), "last_page": DATA + (n - 1) * PAGE}


def _tlb_answer(p) -> int:
    m = tlb_loop(p["n"], rounds=p["rounds"], tlb=(p["sets"], p["ways"]))
    return m.counters["tlb_misses"]


def _tlb_question(p) -> str:
    return (f"The loop below reads one dword from each of **{p['n']}** consecutive pages "
            f"(linear `{DATA:#x}`, `{DATA + PAGE:#x}`, ... `{p['last_page']:#x}`), "
            f"**{p['rounds']}** times over:\n\n```\n{_loop_source(p['n'], p['rounds']).strip()}\n```\n\n"
            f"The TLB has {p['sets']} sets x {p['ways']} ways = {p['entries']} entries. The "
            f"page with linear address `lin` goes to set `(lin >> 12) mod {p['sets']}`, and a "
            f"full set evicts its least recently used entry. Instruction fetches go through a "
            f"one-entry fetch cache in front of the TLB, so the code page costs one miss in "
            f"all. **How many TLB misses** does the run count (`m.counters['tlb_misses']`)?")


def _tlb_solution(p, answer) -> str:
    n, sets, ways, rounds = p["n"], p["sets"], p["ways"], p["rounds"]
    per_set_max = -(-n // sets)
    per_set_min = n // sets
    text = (f"Consecutive pages go to consecutive sets, so the {n} data pages put "
            f"{per_set_min} to {per_set_max} pages in each of the {sets} sets "
            f"(each set has {ways} ways).\n\n")
    if per_set_max < ways:
        text += (f"Every set has room for all its pages (and the code page in set 1 fits too): "
                 f"the first round misses once per page -- {n} compulsory misses -- and the "
                 f"other {rounds - 1} rounds hit every time. With the code page: "
                 f"{n} + 1 = **{answer}**.")
    else:
        text += (f"Every set is asked for more pages ({per_set_min} or more) than it has ways, "
                 f"in the same cyclic order every round. Least-recently-used replacement is "
                 f"the worst possible policy for a cycle: the page needed next is always the "
                 f"one evicted just before, so *every* data access misses: {n} pages x "
                 f"{rounds} rounds = {n * rounds}, plus the code page: **{answer}**. One page "
                 f"more than the TLB holds does not cost a little: it costs everything.")
    return text + (f"\n\nCheck it: `from hvsim.lessons.l03_paging import tlb_loop; "
                   f"tlb_loop({n}, rounds={rounds}, tlb=({sets}, {ways}))"
                   f".counters['tlb_misses']`.")


def tlb_exercise(seed: int = 0) -> Exercise:
    """How many TLB misses does a loop over N pages count, for a seeded TLB geometry?"""
    return Exercise("TLB misses of a loop", seed, make=_tlb_params, question=_tlb_question,
                    answer=_tlb_answer, solution=_tlb_solution)
