"""CPU-generation profiles: the cost in cycles of each counted event, with its source.

Pure data and plain Python (not jitted). A :class:`Profile` is one Intel generation;
it gives every event of :data:`EVENTS` a :class:`Cost`: cycles, the source the
figure comes from (paper + section/table/figure), and whether it is an **estimate**.

What "estimate" means here -- read before using a number:

* ``estimate=False``: the figure was read, in the named source, as a measurement of
  this event on this generation. One figure is: Nehalem's ``vm_exit``.
* ``estimate=True``: anything else -- a published figure split or carried over to
  another generation, a round number with a stated basis, or a value remembered and
  not verified. The ``basis`` text says which. Tables print such a cost with ``*``
  and :func:`hvsim.viz.overhead_bars` hatches the part of a bar it makes.

What was read, and where (the papers' PDFs themselves could not be opened when this
table was built):

* Adams & Agesen 2006, section 3.2, the rdtsc example: *trap-and-emulate 2030 cycles,
  callout-and-emulate 1254, in-TC emulation 216, on a Pentium 4* -- as read in the
  paper's own text and recorded in the project's shared/TECHNIQUES.md, section 2a
  (tag [V1]). Not re-read here.
* Landau, Ben-Yehuda & Gordon 2011 (SplitX), section 1 around Table 1: on a Xeon
  X5570 (Nehalem-EP, 2.93 GHz) under KVM with EPT and VPID, "The direct cost on its
  own is high: 2,000 cycles" -- the direct cost being the CPU world switch from guest
  to hypervisor and back. Read in a stored copy of the paper's text.
* Adams & Agesen 2006, the nanobenchmarks (section 5 -- the section number is not in
  the text read), in cycles: *pgfault* (a true page fault) native 1093, software VMM
  3927, hardware VMM 11242; *divzero* ("fault semantics similar to those of page faults,
  but does not invoke the software MMU") native 889, software VMM 3223, hardware VMM
  1014; *ptemod* (a guest PTE write under traces) "the native single cycle store",
  software VMM 391 ("a small program that is cheaper than a trap but still quite
  costly"), hardware VMM 12733; also *in* native 3209, hardware VMM 15826; *call/ret* 11
  native, 51 software VMM; *cr8wr* 35 software VMM; *syscall* "approximately 2000 more
  cycles than a native system call" in the software VMM. Read in the paper's own
  sentences, quoted verbatim in the comments of a public re-implementation of the
  nanobenchmarks (three stored copies, which agree; the search index does not name the
  repository). The quotes name no CPU ("on this hardware"): the paper's Pentium 4 as
  TECHNIQUES.md records it, not re-checked here. Its forkwait totals (native 6.0 s,
  software VMM 36.9 s, hardware VMM 106.4 s for 40,000 fork/wait) were read only in a
  secondary page (a talk's notes) and are not used.
* Bhargava, Serebrin, Spadini & Manne 2008, Table 2 (the simulated configuration):
  "average L2 miss 100 cycles" -- as recorded in shared/TECHNIQUES.md section 5 [V1];
  the 2-D walk's nm + n + m references (24 for 4-on-4, 14 for a 2-level guest on a
  4-level EPT) as in shared/REFERENCES.md. The paper's own text was not reachable here.
* blitz/kernel_entry_benchmark, README: an interrupt-gate round trip (INT n + IRET)
  of 610 cycles, measured by its author on an Intel CPU the README does not name,
  under KVM. Read in a stored copy of the README. Not a paper and not one of these
  generations: only the basis of the round 600-cycle estimates below.
* Agesen, Mattson, Rugina & Sheldon 2012, Figure 1, plots the hardware VM exit +
  VM entry round trip for Prescott through Sandy Bridge. Its values were **not** read
  (the figure is a chart and the text around it was not reachable): none of the
  numbers below comes from it, and it is named only where it is the place to check.

What was not found: a per-generation figure for a native system call, page fault or
other exception delivery, port I/O, page-walk reference, or a software monitor's trap
on Core 2 / Nehalem / Sandy Bridge; any figure for building a shadow root or
resynchronising a shadow page. Those costs are estimates, and the same value is used
for every generation where nothing tells the generations apart -- so a difference
between two profiles' totals comes only from the figures that differ. (Adams &
Agesen's native pgfault 1093 and divzero 889 are whole faults with the handler's work,
which hvsim counts as instructions; they are not used for ``page_fault``/``exception``.)

Model choices (profiles are inputs; nothing here says which technique should win):

* ``instruction`` is 1 cycle for every retired guest instruction (CPI = 1), the
  simplest assumption for the short integer programs hvsim runs. Real CPI varies by
  instruction and generation (Agner Fog's tables); this model ignores that.
* ``system_call``, ``page_fault``, ``exception`` and ``interrupt`` are the delivery
  through the guest IDT and the IRET back, beyond 1 cycle per instruction: the
  handler's own instructions are counted as instructions.
* ``trap`` + ``emulated`` on the Pentium 4 split Adams & Agesen's trap-and-emulate
  rdtsc (2030) into the in-TC emulation work (216) and the rest (1814), so that one
  trapped-and-emulated instruction costs exactly the published 2030.
* ``vm_exit`` on Nehalem is the SplitX measurement, which times KVM's world switch
  (hardware transition plus KVM's own entry/exit path). The Pentium 4 value is a
  remembered figure, and Core 2 and Sandy Bridge lie on a straight line in year through
  those two: the series is smooth by construction, not measured. None of them is the
  hardware-only latency plotted in Agesen et al. 2012 Figure 1; read that figure before
  teaching a trend across generations.
* Shadow paging: a hidden, true or trace fault, a CR3 load, an INVLPG is a ``trap`` or
  a ``vm_exit`` (plus ``emulated`` / ``reflected`` / ``injected`` where the monitor
  does that), charged by the host that took it; ``shadow_fill``, ``fault_walk``,
  ``pt_write``, ``shadow_root`` and ``resync`` are only the shadow MMU's own work on
  top. The first three come from the *software* VMM's nanobenchmarks, whose monitor
  receives control cheaply: the hardware VMM's pgfault and ptemod cost thousands of
  cycles more than vm_exit + this work, so a VT-x host without EPT is underpriced here.
* Nested paging: ``ept_walk_ref`` charges each EPT entry read of a 2-D walk, as
  ``walk_ref`` charges each guest entry read (``walk_ref`` does not include them).
"""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from numbers import Real
from types import MappingProxyType

# ------------------------------------------------------------------ the counted events
#: event name -> (category, what it is). The categories of a breakdown, in drawing order.
CATEGORIES = ("guest instructions", "traps/exits", "monitor work", "page walks", "I/O")

EVENTS = MappingProxyType({
    "instruction": ("guest instructions",
                    "a guest instruction retired by the (simulated) hardware"),
    "system_call": ("guest instructions",
                    "INT n delivered through the guest IDT, and the IRET back"),
    "page_fault": ("guest instructions",
                   "#PF delivered through the guest IDT by the hardware, and the IRET back"),
    "exception": ("guest instructions",
                  "another exception delivered through the guest IDT, and the IRET back"),
    "interrupt": ("guest instructions",
                  "an external interrupt delivered through the guest IDT, and the IRET back"),
    "walk_ref": ("page walks",
                 "one memory reference made by a page walk (a PDE or PTE read)"),
    "port_io": ("I/O", "an IN or OUT performed by the hardware"),
    "trap": ("traps/exits",
             "a trap to a software monitor and the return to the guest"),
    "vm_exit": ("traps/exits", "a VT-x VM exit and the VM entry back (round trip)"),
    "hypercall": ("traps/exits",
                  "a hypercall: the guest's INT into the monitor's ring 0 and back"),
    "emulated": ("monitor work",
                 "the monitor's work to emulate one guest instruction in software"),
    "reflected": ("monitor work",
                  "the monitor's work to reflect an exception or interrupt into the "
                  "guest's virtual IDT (building the frame itself)"),
    "injected": ("monitor work",
                 "the monitor's work to inject one virtual interrupt"),
    "shadow_fill": ("monitor work",
                    "the shadow MMU's work on a hidden #PF: walk the guest's tables, then "
                    "build the missing shadow entry (the trap or exit is charged apart)"),
    "fault_walk": ("monitor work",
                   "the shadow MMU's work on a true #PF: walk the guest's tables to find "
                   "that they cause it (the trap or exit and the reflection or injection "
                   "are charged apart)"),
    "pt_write": ("monitor work",
                 "a trace fault's work: emulate the guest's store to its own page table "
                 "and update or drop the shadow entries it affects"),
    "shadow_root": ("monitor work",
                    "build a new shadow page directory for a guest CR3 load that missed "
                    "the cache of shadow roots"),
    "resync": ("monitor work",
               "resynchronise one unsync shadow page table: compare up to 1024 guest "
               "entries with their shadows"),
    "ept_walk_ref": ("page walks",
                     "one memory reference made by an EPT walk of a 2-D (nested) walk: an "
                     "EPT entry read to translate a guest-physical address"),
    "pv_pt_update": ("monitor work",
                     "a paravirtualizing hypervisor's check and write of one page-table "
                     "entry for the guest (mmu_update, update_va_mapping); the hypercall "
                     "is charged apart"),
    "pv_validate": ("monitor work",
                    "a paravirtualizing hypervisor validating one page table or directory "
                    "as it becomes one (its 1024 entries checked and counted)"),
    "io_request": ("I/O",
                   "a split driver's backend serving one request from the shared ring "
                   "(moving one 512-byte sector); its notifications are hypercalls"),
    # ---- binary translation (hvsim/bt) ----
    "callout": ("traps/exits",
                "a callout: translated code leaving the translation cache for the binary "
                "translator's monitor and coming back (the emulation is charged apart)"),
    "translation": ("monitor work",
                    "the binary translator's work to translate one guest instruction into "
                    "the translation cache"),
    # ---- VirtualBox raw mode (hvsim/bt/rawmode.py) ----
    "scan": ("monitor work",
             "a raw-mode monitor's code scanner (VirtualBox's CSAM) decoding and recording "
             "one guest instruction before it first runs"),
    # ---- emulation (hvsim/emulation, issue 16): the emulator's work on top of the
    # 'instruction' cycle every retired guest instruction is charged
    "interpreted": ("monitor work",
                    "an interpreter's work for one guest instruction (Bochs: fetch from its "
                    "trace cache, dispatch to the handler, lazy flags)"),
    "translated": ("monitor work",
                   "a dynamic translator's work to translate one guest instruction (QEMU "
                   "TCG: decode, TCG ops, optimization, host code)"),
    "run_translated": ("monitor work",
                       "running one guest instruction as translated host code, beyond the "
                       "'instruction' cycle (guest registers in memory, the soft MMU)"),
    "tb_lookup": ("monitor work",
                  "a TB lookup that missed the jump cache: back to the main loop, the "
                  "physical hash table (and the translation, charged apart)"),
    "soft_tlb_fill": ("page walks",
                      "a soft-TLB miss of an emulator: tlb_fill, the guest page walk done "
                      "in software (its references are charged as walk_ref)"),
})


# ------------------------------------------------------------------ the sources
ADAMS_2006 = "Adams & Agesen, ASPLOS 2006"
LANDAU_2011 = "Landau, Ben-Yehuda & Gordon (SplitX), WIOV 2011"
AGESEN_2012 = "Agesen, Mattson, Rugina & Sheldon, USENIX ATC 2012"
BHARGAVA_2008 = "Bhargava, Serebrin, Spadini & Manne, ASPLOS 2008"
KERNEL_ENTRY_BENCH = "blitz/kernel_entry_benchmark README"
BELLARD_2005 = "Bellard, USENIX ATC 2005 (FREENIX)"

#: the short citations used in the costs' sources -> the full reference
REFERENCES = MappingProxyType({
    ADAMS_2006: "K. Adams, O. Agesen, 'A Comparison of Software and Hardware Techniques for "
                "x86 Virtualization', ASPLOS 2006",
    LANDAU_2011: "A. Landau, M. Ben-Yehuda, A. Gordon, 'SplitX: Split Guest/Hypervisor "
                 "Execution on Multi-Core', WIOV 2011",
    AGESEN_2012: "O. Agesen, J. Mattson, R. Rugina, J. Sheldon, 'Software Techniques for "
                 "Avoiding Hardware Virtualization Exits', USENIX ATC 2012",
    BHARGAVA_2008: "R. Bhargava, B. Serebrin, F. Spadini, S. Manne, 'Accelerating "
                   "Two-Dimensional Page Walks for Virtualized Systems', ASPLOS 2008",
    BELLARD_2005: "F. Bellard, 'QEMU, a Fast and Portable Dynamic Translator', USENIX ATC "
                  "2005, FREENIX track",
    KERNEL_ENTRY_BENCH: "x86 kernel entry microbenchmarks (interrupt gate, call gate, "
                        "sysenter, syscall), github.com/blitz/kernel_entry_benchmark, README",
})


@dataclasses.dataclass(frozen=True)
class Cost:
    """The cost of one event in cycles, and where the figure comes from.

    ``source``: the paper (or document) and its table/figure/section; for an estimate,
    what it rests on. ``estimate``: True unless the figure was read as a measurement of
    this event on this generation. ``basis``: how the number was obtained (for an
    estimate: derived how, or why this round value).
    """
    cycles: Real
    source: str
    estimate: bool = False
    basis: str = ""

    def __post_init__(self):
        if isinstance(self.cycles, bool) or not isinstance(self.cycles, Real):
            raise TypeError(f"Cost.cycles must be a number, got {self.cycles!r}")
        if self.cycles < 0:
            raise ValueError(f"Cost.cycles must be >= 0, got {self.cycles!r}")
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError("every Cost needs a source (for an estimate: what it rests on)")
        if self.estimate and not self.basis.strip():
            raise ValueError("an estimated Cost needs a basis: how the number was obtained")

    @property
    def mark(self) -> str:
        """``'*'`` for an estimate, ``''`` for a published measurement."""
        return "*" if self.estimate else ""

    def __str__(self):
        return f"{self.cycles:g}{self.mark} cycles ({self.source})"


@dataclasses.dataclass(frozen=True)
class Profile:
    """One CPU generation: a cited :class:`Cost` for every event of :data:`EVENTS`."""
    name: str                 # the key in PROFILES: 'prescott', 'merom', ...
    cpu: str                  # e.g. 'Pentium 4 (Prescott)'
    year: int
    costs: Mapping            # event -> Cost
    notes: str = ""

    def __post_init__(self):
        missing = [e for e in EVENTS if e not in self.costs]
        extra = [e for e in self.costs if e not in EVENTS]
        if missing or extra:
            raise ValueError(f"profile {self.name!r}: "
                             + (f"no cost for {missing}" if missing else "")
                             + ("; " if missing and extra else "")
                             + (f"unknown events {extra}" if extra else ""))
        for e, c in self.costs.items():
            if not isinstance(c, Cost):
                raise TypeError(f"profile {self.name!r}: cost of {e!r} must be a Cost, got {c!r}")
        object.__setattr__(self, "costs", MappingProxyType(dict(self.costs)))

    def __getitem__(self, event: str) -> Cost:
        try:
            return self.costs[event]
        except KeyError:
            raise KeyError(_unknown("event", event, EVENTS)) from None

    @property
    def label(self) -> str:
        return f"{self.cpu} ({self.year})"

    def replace(self, **costs) -> "Profile":
        """A copy with some costs replaced, named with a prime (``"nehalem'"``), e.g.
        ``p.replace(trap=Cost(900, 'my lab', True, 'measured on my laptop'))`` --
        profiles are inputs: try your own."""
        new = dict(self.costs)
        for e, c in costs.items():
            if e not in EVENTS:
                raise KeyError(_unknown("event", e, EVENTS))
            new[e] = c
        return dataclasses.replace(self, name=self.name + "'", costs=new)

    def table(self) -> str:
        """The costs as a text table, estimates marked ``*``."""
        rows = [(e, f"{c.cycles:g}{c.mark}", c.source) for e, c in self.costs.items()]
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        out = [f"{self.label} -- cycles per event (* = estimate)"]
        out += [f"  {e:<{w0}}  {v:>{w1}}  {s}" for e, v, s in rows]
        return "\n".join(out)

    def __str__(self):
        return self.table()


def _unknown(what: str, name, known) -> str:
    hint = difflib.get_close_matches(str(name), list(known), n=3)
    return (f"no {what} named {name!r}" +
            (f"; did you mean {', '.join(map(repr, hint))}?" if hint else
             f"; {what}s are: {', '.join(known)}"))


# ------------------------------------------------------------------ shared estimates
def _gate_estimate(what: str) -> Cost:
    return Cost(600, KERNEL_ENTRY_BENCH + " (interrupt gate round trip: 610)",
                estimate=True,
                basis=f"{what}: no figure for this generation was read; rounded from an "
                      "INT n + IRET round trip of 610 cycles measured on an unnamed recent "
                      "Intel CPU under KVM (same gate mechanism)")


_INSTRUCTION = Cost(1, "none: round assumption (CPI = 1)", estimate=True,
                    basis="one cycle per retired simple integer instruction; real CPI varies "
                          "by instruction and generation (e.g. Agner Fog's instruction "
                          "tables), not modelled")
_WALK_REF = Cost(100, BHARGAVA_2008 + ", Table 2 (average L2 miss: 100)", estimate=True,
                 basis="the average L2-miss latency of Bhargava et al.'s simulated "
                       "configuration, used for every page-walk reference of every "
                       "generation; an upper-end figure, since many walk references hit "
                       "the data caches")
_PORT_IO = Cost(1000, "none found: round order-of-magnitude estimate", estimate=True,
                basis="a port access is an uncached, serializing bus transaction to a "
                      "legacy device; no source read gives its cycles on these CPUs")
_HYPERCALL = Cost(600, KERNEL_ENTRY_BENCH + " (interrupt gate round trip: 610)",
                  estimate=True,
                  basis="a Xen-style PV hypercall is an INT into the monitor's ring 0 and "
                        "an IRET back (TECHNIQUES.md section 6): the same gate round trip as "
                        "a system call; the monitor's own work is not included")
_REFLECT = Cost(400, ADAMS_2006 + ", sec. 3.2 (rdtsc in-TC: 216, P4)",
                estimate=True,
                basis="no source measures a reflection; building a 3-5 word frame on the "
                      "guest stack and reading the guest's IDT gate in software taken as "
                      "about twice one in-TC emulation (2 x 216), rounded")
_INJECT = Cost(400, ADAMS_2006 + ", sec. 3.2 (rdtsc in-TC: 216, P4)",
               estimate=True,
               basis="no source measures an injection; like a reflection (a frame built in "
                     "software), about twice one in-TC emulation, rounded")

# Pentium 4: Adams & Agesen's rdtsc, split so that trap + emulated = the published 2030
_P4_TRAP = Cost(1814, ADAMS_2006 + ", sec. 3.2 (rdtsc trap-and-emulate: 2030, "
                "in-TC: 216, P4)", estimate=True,
                basis="derived: 2030 (trap-and-emulate rdtsc) - 216 (the same emulation "
                      "in the translation cache, without the trap) = 1814 for the trap "
                      "round trip alone")
_P4_EMULATED = Cost(216, ADAMS_2006 + ", sec. 3.2 (rdtsc in-TC: 216, P4)", estimate=True,
                    basis="derived: the published in-TC emulation of one rdtsc, used as the "
                          "software work to emulate one instruction (other instructions "
                          "differ); trap + emulated = the published 2030")

# Shadow paging on the Pentium 4: Adams & Agesen's nanobenchmarks (sec. 5). pgfault and
# divzero differ only in the software MMU ("divzero ... does not invoke the software MMU"),
# so the software VMM's difference of overheads is that MMU's work per fault:
# (3927 - 1093) - (3223 - 889) = 2834 - 2334 = 500.
_SVMM_MMU_PER_FAULT = (3927 - 1093) - (3223 - 889)
_P4_FAULT_SOURCE = (ADAMS_2006 + ", sec. 5 nanobenchmarks (pgfault: native 1093, "
                    "software VMM 3927; divzero: native 889, software VMM 3223; P4)")
_P4_FAULT_WALK = Cost(_SVMM_MMU_PER_FAULT, _P4_FAULT_SOURCE, estimate=True,
                      basis="derived: the software VMM's page-fault overhead minus its "
                            "divide-error overhead, (3927 - 1093) - (3223 - 889) = 500, the "
                            "part its software MMU adds to a true page fault (pgfault "
                            "'targets the overheads for true page faults'); the rest of "
                            "that fault is the trap and the reflection, charged apart "
                            "(1814 + 400 here, near the software VMM's divzero overhead "
                            "of 2334)")
_P4_SHADOW_FILL = Cost(_SVMM_MMU_PER_FAULT, _P4_FAULT_SOURCE, estimate=True,
                       basis="derived: (3927 - 1093) - (3223 - 889) = 500, the software "
                             "MMU's work on a true page fault, used for a hidden one, which "
                             "makes the same walk of the guest's tables and then writes one "
                             "shadow PTE. The hardware VMM's figures (pgfault 11242, divzero "
                             "1014) give 10024, but that includes a VM exit and entry the "
                             "divide error does not take, and the paper puts the gap down "
                             "'mostly to the shorter path whereby the software VMM receives "
                             "control': vm_exit + 500 underprices a 2006 VT-x host's fault")
_P4_PT_WRITE = Cost(391, ADAMS_2006 + ", sec. 5 nanobenchmarks (ptemod: software VMM 391, "
                    "hardware VMM 12733; P4)", estimate=True,
                    basis="derived: the software VMM turns a guest PTE write into 'a small "
                          "program that is cheaper than a trap but still quite costly', 391 "
                          "cycles, which stores the entry and keeps the shadow coherent "
                          "without a trap; used as the work of one trace fault, the trap or "
                          "exit being charged apart. The hardware VMM's 12733 for the same "
                          "write is far more than vm_exit + 391: the rest of its path "
                          "(some 10,000 cycles) is not modelled")
_SHADOW_ROOT = Cost(1500, ADAMS_2006 + ", sec. 5 nanobenchmarks (ptemod: native "
                    "single-cycle store; pgfault - divzero: 500, P4)", estimate=True,
                    basis="no source measures building a shadow root; clearing a new "
                          "1024-entry shadow page directory at one cycle a store (ptemod's "
                          "'native single cycle store') plus one fault's software-MMU work "
                          "(500) for the lookup in and eviction from the root cache: "
                          "1024 + 500, rounded to 1500; the same for every generation")
_RESYNC = Cost(4000, "none found: round estimate at the model's CPI = 1", estimate=True,
               basis="no source measures a resync; comparing 1024 guest entries with their "
                     "shadows, about four instructions an entry (two loads, a compare, a "
                     "branch) at one cycle each: 4096, rounded to 4000; an entry that "
                     "changed also costs its shadow update, not counted. The same for every "
                     "generation")
_EPT_WALK_REF = Cost(100, BHARGAVA_2008 + ", Table 2 (average L2 miss: 100)", estimate=True,
                     basis="an EPT entry read is a memory reference like a guest PDE/PTE "
                           "read (Bhargava et al. count both in the 2-D walk's 24 "
                           "references), so it costs what walk_ref costs: the average "
                           "L2-miss latency of their simulated configuration. hvsim has no "
                           "page-walk cache or nested TLB (their 2-cycle hits), so every "
                           "counted reference is charged; EPT itself came with Nehalem, "
                           "older profiles price it only so that any run can be priced")


_PV_PT_UPDATE = Cost(391, ADAMS_2006 + ", sec. 5 nanobenchmarks (ptemod: software VMM 391, "
                     "P4)", estimate=True,
                     basis="no source read measures Xen's work per mmu_update entry; it is "
                           "the same job as the software VMM's coherent PTE store (check the "
                           "new entry, store it, keep the bookkeeping straight), so that "
                           "figure is used; the same for every generation")
_PV_VALIDATE = Cost(4000, "none found: round estimate at the model's CPI = 1", estimate=True,
                    basis="no source measures validating a table; checking 1024 entries, "
                          "about four instructions an entry (a load, a flag test, a frame "
                          "check, a count update) at one cycle each: 4096, rounded to 4000, "
                          "as for a shadow resync; the same for every generation")
_IO_REQUEST = Cost(500, "none found: round estimate at the model's CPI = 1", estimate=True,
                   basis="no source measures a backend's request; copying 512 bytes as 128 "
                         "dword moves plus reading the request and writing the response "
                         "(a few dozen instructions), about 200 cycles, rounded up to 500 for "
                         "the copy's cache misses; the same for every generation")


# ---- binary translation (hvsim/bt) ------------------------------------------------------
# Pentium 4: Adams & Agesen's callout-and-emulate rdtsc (1254) split as the trap is, so
# that callout + emulated = the published 1254
_P4_CALLOUT = Cost(1254 - 216, ADAMS_2006 + ", sec. 3.2 (rdtsc callout-and-emulate: 1254, "
                   "in-TC: 216, P4)", estimate=True,
                   basis="derived: 1254 (callout-and-emulate rdtsc) - 216 (the same "
                         "emulation in the translation cache) = 1038 for leaving the TC for "
                         "the monitor and coming back; callout + emulated = the published "
                         "1254, as trap + emulated = 2030")
_TRANSLATION = Cost(2300, ADAMS_2006 + ", sec. 3.2, as recorded in shared/TECHNIQUES.md "
                    "section 2a ('translator speed 2300 cycles/x86 instruction')",
                    estimate=True,
                    basis="the translator speed Adams & Agesen give for VMware's BT, as the "
                          "project's notes record it; the sentence itself was not found in "
                          "the stored corpora searched for this table (pages, docs, code), so "
                          "it is not re-read here; used for every generation")


# ---- VirtualBox raw mode (hvsim/bt/rawmode.py) --------------------------------------------
_SCAN = Cost(1150, "none found: half of the translator's 2300 cycles per guest instruction "
             "(" + ADAMS_2006 + ", as TECHNIQUES.md 2a records it)", estimate=True,
             basis="no source measures CSAM's scan; scanning an instruction is the decoding "
                   "and analysis half of translating one (decode, classify, record the "
                   "instruction and its branch targets) without the emission, chaining "
                   "and placement half: 2300 / 2 = 1150 cycles; the same for every "
                   "generation. Installing a patch is not charged apart (it follows a scan)")


def _carried(cost: Cost, from_cpu: str) -> Cost:
    return Cost(cost.cycles, cost.source, estimate=True,
                basis=f"no figure for this generation was read; the {from_cpu} value is "
                      f"carried over ({cost.basis})")


# VM exit round trip: one measurement (Nehalem, KVM world switch) and one remembered
# Pentium 4 figure; the generations between and after are linear in year through them.
_P4_VM_EXIT = Cost(2400, ADAMS_2006 + " as quoted (~2409, P4), unverified; "
                   "check " + AGESEN_2012 + ", Fig. 1", estimate=True,
                   basis="remembered, not verified: a VM exit + VM entry round trip of "
                         "about 2409 cycles on a Pentium 4 is quoted from Adams & Agesen "
                         "2006; no stored copy of that text was read; rounded to 2400")
_NEHALEM_VM_EXIT = Cost(2000, LANDAU_2011 + ", sec. 1 / Table 1 (direct cost of an "
                        "exit: 2,000; Xeon X5570, KVM)",
                        basis="measured: the CPU world switch guest -> KVM -> guest; it "
                              "includes KVM's own entry/exit path, so it is larger than "
                              "the hardware-only round trip plotted in Agesen et al. 2012 "
                              "Figure 1")


def _vm_exit_by_year(year: int) -> Cost:
    p4, nhm = (2005, 2400), (2009, 2000)
    slope = (nhm[1] - p4[1]) / (nhm[0] - p4[0])
    cycles = int(round((p4[1] + slope * (year - p4[0])) / 100.0) * 100)
    return Cost(cycles, f"interpolated: {ADAMS_2006} (P4 ~2400) .. {LANDAU_2011} "
                f"(Nehalem 2000); check {AGESEN_2012}, Fig. 1",
                estimate=True,
                basis=f"linear in year through Pentium 4 2005 = 2400 (remembered) and "
                      f"Nehalem 2009 = 2000 (measured), at {year}, rounded to 100; "
                      "Agesen et al. 2012 Figure 1 shows the round trip falling from "
                      "Prescott to Sandy Bridge, but its values were not read")


# ---- emulation (issue 16) -----------------------------------------------------------
_INTERPRETED = Cost(50, "shared/TECHNIQUES.md 1a: Bochs, derived ~38-65 host cycles per guest "
                        "instruction; " + ADAMS_2006 + ", sec. 3.2: an interpreter 'may burn "
                        "hundreds of physical instructions per guest instruction'",
                    estimate=True,
                    basis="the middle of the derived Bochs range recorded in TECHNIQUES.md "
                          "(not re-derived here), less the 1 cycle of 'instruction'; Adams & "
                          "Agesen's 'hundreds of instructions' is for an interpreter without "
                          "a decoded-instruction cache")
_TRANSLATED = Cost(1000, "none found: round order-of-magnitude estimate", estimate=True,
                   basis="translating one guest instruction is a decode, a few TCG ops, the "
                         "optimizer's passes and host-code emission: hundreds to thousands of "
                         "host instructions; no published per-instruction figure was read")
_RUN_TRANSLATED = Cost(2, BELLARD_2005 + ", sec. 2.2 (addi r1,r1,-16: 3 micro-ops, 3 host "
                          "instructions: load, add, store)", estimate=True,
                       basis="Bellard's one worked example, 3 host instructions per guest "
                             "instruction (guest registers live in memory), at 1 cycle "
                             "each, less the 1 cycle of 'instruction'; his softmmu 'slowdown "
                             "of a factor of 2' (sec. 5) on memory accesses is not added")
_TB_LOOKUP = Cost(100, "none found: round estimate", estimate=True,
                  basis="leaving the chained code for the main loop, hashing (pc, phys pc, "
                        "flags, cs_base) and probing QEMU's hash table: about a hundred host "
                        "instructions; no published figure was read")
_SOFT_TLB_FILL = Cost(200, "none found: round estimate", estimate=True,
                      basis="QEMU's tlb_fill: the guest page walk in C (its memory "
                            "references are charged as walk_ref), the permission checks and "
                            "the new TLB entry: a few hundred host instructions")
_EMU_COSTS = dict(interpreted=_INTERPRETED, translated=_TRANSLATED,
                  run_translated=_RUN_TRANSLATED, tb_lookup=_TB_LOOKUP,
                  soft_tlb_fill=_SOFT_TLB_FILL)


def _profile(name, cpu, year, *, trap, emulated, vm_exit, shadow_fill, fault_walk,
             pt_write, callout=None, notes="") -> Profile:
    return Profile(name=name, cpu=cpu, year=year, notes=notes, costs={
        "instruction": _INSTRUCTION,
        "system_call": _gate_estimate("native system call (INT n)"),
        "page_fault": _gate_estimate("native #PF delivery"),
        "exception": _gate_estimate("native exception delivery"),
        "interrupt": _gate_estimate("native external-interrupt delivery"),
        "walk_ref": _WALK_REF,
        "port_io": _PORT_IO,
        "trap": trap,
        "vm_exit": vm_exit,
        "hypercall": _HYPERCALL,
        "emulated": emulated,
        "reflected": _REFLECT,
        "injected": _INJECT,
        "shadow_fill": shadow_fill,
        "fault_walk": fault_walk,
        "pt_write": pt_write,
        "shadow_root": _SHADOW_ROOT,
        "resync": _RESYNC,
        "ept_walk_ref": _EPT_WALK_REF,
        "pv_pt_update": _PV_PT_UPDATE,
        "pv_validate": _PV_VALIDATE,
        "io_request": _IO_REQUEST,
        "callout": callout if callout is not None else _carried(_P4_CALLOUT, "Pentium 4"),
        "translation": _TRANSLATION,
        "scan": _SCAN,                      # VirtualBox raw mode (hvsim/bt/rawmode.py)
        **_EMU_COSTS,
    })


# nothing read tells the generations' shadow-MMU work apart: the Pentium 4 values
_CARRIED_SHADOW = dict(shadow_fill=_carried(_P4_SHADOW_FILL, "Pentium 4"),
                       fault_walk=_carried(_P4_FAULT_WALK, "Pentium 4"),
                       pt_write=_carried(_P4_PT_WRITE, "Pentium 4"))

PRESCOTT = _profile(
    "prescott", "Pentium 4 (Prescott)", 2005,
    trap=_P4_TRAP, emulated=_P4_EMULATED, vm_exit=_P4_VM_EXIT,
    shadow_fill=_P4_SHADOW_FILL, fault_walk=_P4_FAULT_WALK, pt_write=_P4_PT_WRITE,
    callout=_P4_CALLOUT,
    notes="first VT-x parts (Pentium 4 662/672, late 2005); the generation of Adams & "
          "Agesen's measurements")
MEROM = _profile(
    "merom", "Core 2 (Merom)", 2006,
    trap=_carried(_P4_TRAP, "Pentium 4"), emulated=_carried(_P4_EMULATED, "Pentium 4"),
    **_CARRIED_SHADOW,
    vm_exit=_vm_exit_by_year(2006))
NEHALEM = _profile(
    "nehalem", "Core i7 / Xeon 5500 (Nehalem)", 2009,
    trap=_carried(_P4_TRAP, "Pentium 4"), emulated=_carried(_P4_EMULATED, "Pentium 4"),
    **_CARRIED_SHADOW,
    vm_exit=_NEHALEM_VM_EXIT,
    notes="first Intel generation with EPT; SplitX's measurements are on a Xeon X5570")
SANDY_BRIDGE = _profile(
    "sandy_bridge", "Core i7 2nd generation (Sandy Bridge)", 2011,
    trap=_carried(_P4_TRAP, "Pentium 4"), emulated=_carried(_P4_EMULATED, "Pentium 4"),
    **_CARRIED_SHADOW,
    vm_exit=_vm_exit_by_year(2011))

#: every profile by name, oldest first
PROFILES = MappingProxyType({p.name: p for p in (PRESCOTT, MEROM, NEHALEM, SANDY_BRIDGE)})
ALL = tuple(PROFILES.values())

_ALIASES = {"p4": "prescott", "pentium4": "prescott", "pentium 4": "prescott",
            "core2": "merom", "core 2": "merom", "core i7": "nehalem",
            "sandybridge": "sandy_bridge", "sandy bridge": "sandy_bridge", "snb": "sandy_bridge",
            "nhm": "nehalem"}


def profile(p) -> Profile:
    """A :class:`Profile` by name ('prescott', 'merom', 'nehalem', 'sandy_bridge', or
    an alias such as 'p4', 'core2', 'sandy bridge'), or the Profile itself."""
    if isinstance(p, Profile):
        return p
    if not isinstance(p, str):
        raise TypeError(f"a profile is a Profile or its name, got {type(p).__name__}")
    key = p.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, _ALIASES.get(key.replace("_", " "), key))
    if key not in PROFILES:
        raise ValueError(_unknown("profile", p, PROFILES))
    return PROFILES[key]
