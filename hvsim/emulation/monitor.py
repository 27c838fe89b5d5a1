"""Emulation: the guest OS unmodified at its own ring 0 on a machine made of software (Python).

An emulator (Bochs, QEMU with TCG) owns the whole machine in software: the guest kernel
runs in its own ring 0 with its own IDT, every sensitive instruction is just one more
instruction the software CPU carries out, and there is no hole to fall into. The price
is the software CPU itself: Bochs interprets every guest instruction (decoding once into
its trace cache), QEMU translates blocks of guest code into host code and chains them.

hvsim's machine is already a software CPU, so :class:`Emulator` runs the guest on it
exactly as :class:`~hvsim.monitors.Native` does (ring 0, exceptions through the guest's
IDT, port I/O to the device models) and turns the machine's instruction trace on
(hvsim/cpu/itrace.py). At every exit, and whenever the trace buffer fills, the records
go to the model of the real emulator's structures (hvsim/emulation/model.py):

================  ======================================  ===============================
mode              the model                               hvsim's own structure it mirrors
================  ======================================  ===============================
``interpret``     Bochs: 64 Ki-entry trace cache (icache)  the decode cache (decode.py: 16 Ki
(``emulate``)     hashed by physical address and fetch     rows, one instruction each, keyed
                  mode, traces of <= 32 instructions, a    by physical address, invalidated
                  576 Ki-instruction pool, 128-byte SMC    per 4 KiB frame by a generation)
                  regions
``translate``     QEMU TCG: TBs keyed by (pc, cs_base,     the block translator (translate.py,
(``dbt``)         flags with CPL and IOPL, phys pc), a     blocks.py: blocks keyed by their
                  4096-entry virtual-pc jump cache, a      decode-cache row, made only for hot
                  physical hash, two goto_tb slots per     rows and a subset of instructions,
                  TB chained within its first page, SMC    never chained)
                  invalidation by byte range, a flush
                  when full
================  ======================================  ===============================

Where each count comes from. :attr:`model_counters` holds every counter of
model.COUNTERS, counted by the model from the trace (none from hvsim's decode cache or
blocks, which stay off while tracing: blocks write no records), and ``soft_tlb_hits`` /
``soft_tlb_misses``, the machine's TLB hits and misses since the monitor took it.
:attr:`counters` is every monitor's merge: the machine's own non-zero counters
(``instructions``, ``ring0``..``ring3``, ``exception_<n>``, hvsim's decode cache's
``decode_hits``/``decode_misses``, the machine TLB's ``tlb_hits``/``tlb_misses``, ...),
``monitor <name>`` for each of :attr:`stats`, ``device_io``, and then model_counters.
:attr:`stats` holds the chosen mode's model counts and ``soft_tlb_fills`` (the soft TLB's
misses). Both models see every run; ``mode`` chooses which one is the monitor's work in
:attr:`stats` and the cost.

The soft TLB. QEMU's softmmu TLB is direct-mapped, CPU_TLB_DYN_DEFAULT_BITS = 8 (256
entries) per MMU mode (accel/tcg/tlb-bounds.h); Bochs's is BX_TLB_SIZE = 1024 entries,
direct-mapped (cpu/cpu.h). The machine made here has a TLB of that geometry, (256, 1) or
(1024, 1), and its hits and misses are reported as the soft TLB's (``soft_tlb_fills``:
a miss is a page walk done in software, QEMU's ``tlb_fill``). Not modelled: QEMU's
8-entry victim TLB, its split by MMU mode (kernel and user accesses share the machine's
one TLB), and its TLB with paging off (the machine has none then; QEMU still fills
entries of the identity mapping).

Memory. The machine's top :data:`MONITOR_PAGES` pages hold the trace buffer; the guest's
RAM is everything below them (1 MiB on a machine made here, as every host of the
workloads gives). The guest cannot reach them: the machine's memory size, as its bus
checks see it (``CFG_MEM_SIZE``), is the guest's RAM, so a guest access above it is a
bus error, as on a machine with that much memory. A store the monitor itself makes into
guest code (a device model's DMA) is not recorded: none of the device models here writes
guest memory.

>>> from hvsim import assemble
>>> emu = Emulator(program=assemble("mov ecx, 10\\nagain: add eax, ecx\\nloop again\\nhlt"),
...                mode="translate")
>>> emu.run().kind, emu.vcpu.eax
('halt', 55)
>>> c = emu.counters
>>> c["tb_translated"], c["tb_chain_hits"], c["tb_chains_patched"]
(3, 7, 3)
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from hvsim.arch import layout as L
from hvsim.emulation import model as M
from hvsim.machine import Event, Machine
from hvsim.monitors.base import STATS
from hvsim.monitors.native import Native

__all__ = ["Emulator", "DynamicTranslator", "MODES", "MONITOR_PAGES", "GUEST_RAM", "TLB_GEOMETRY"]

PAGE = 4096
GUEST_RAM = 1 << 20                 # the guest's RAM on a machine the monitor makes
TRACE_RECORDS = 4096                # the trace buffer, in records (128 KiB)
MONITOR_PAGES = TRACE_RECORDS * L.ITRACE_RECORD_BYTES // PAGE
MODES = ("interpret", "translate")
#: the machine's TLB per mode: QEMU's softmmu default, CPU_TLB_DYN_DEFAULT_BITS = 8
#: (accel/tcg/tlb-bounds.h), and Bochs's BX_TLB_SIZE = 1024 (cpu/cpu.h), both direct-mapped
TLB_GEOMETRY = {"interpret": (1024, 1), "translate": (256, 1)}


class Emulator(Native):
    """The guest at its own ring 0 on a software CPU, with a model of Bochs (``interpret``)
    or QEMU TCG (``translate``).

    machine : a Machine whose top MONITOR_PAGES pages the monitor takes for its trace
              buffer (default: a fresh one, 1 MiB of guest RAM, ``exceptions="guest"``,
              the mode's TLB geometry).
    program : loaded and entered at its start label, in ring 0.
    devices : device models on their ports, as for :class:`~hvsim.monitors.Native`.
    mode    : "interpret" (Bochs) or "translate" (QEMU TCG).
    max_tbs : TBs the modelled code buffer holds (default: QEMU's 32 MiB buffer at 150
              bytes a TB, model.DEFAULT_MAX_TBS).
    trace_records : records of the trace buffer (at most TRACE_RECORDS, its default): a
              smaller buffer is drained more often, with the same model counts.
    """
    name = "emulate"

    def __init__(self, machine: Optional[Machine] = None, program=None, devices=(),
                 mode: str = "interpret", max_tbs: int = M.DEFAULT_MAX_TBS,
                 trace_records: int = TRACE_RECORDS):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if isinstance(max_tbs, bool) or not isinstance(max_tbs, int) or not 1 <= max_tbs <= 1 << 24:
            raise ValueError(f"max_tbs must be an int in 1..{1 << 24}, got {max_tbs!r}")
        lo = 2 * L.ITRACE_RESERVE
        if isinstance(trace_records, bool) or not isinstance(trace_records, int) or \
                not lo <= trace_records <= TRACE_RECORDS:
            raise ValueError(f"trace_records must be an int in {lo}..{TRACE_RECORDS}, "
                             f"got {trace_records!r}")
        if machine is None:
            machine = Machine(memory=GUEST_RAM + MONITOR_PAGES * PAGE, exceptions="guest",
                              tlb=TLB_GEOMETRY[mode])
        if not isinstance(machine, Machine):
            raise TypeError(f"machine must be an hvsim Machine, got {type(machine).__name__}")
        ram = len(machine.memory) - MONITOR_PAGES * PAGE
        if ram < 1 << 16:
            raise ValueError(f"a {len(machine.memory):#x}-byte machine leaves the guest "
                             f"{max(ram, 0):#x} bytes of RAM beside the monitor's "
                             f"{MONITOR_PAGES} pages: give it at least 64 KiB more")
        self.mode = mode
        self.ram = ram
        self.max_tbs = max_tbs
        self._model = M.new_state(len(machine.memory), max_tbs)
        self._tlb0 = (0, 0)
        self._pending = None        # code-written records whose instruction's is not in yet
        super().__init__(machine, None, devices)
        machine.route(range(32), "guest")           # the guest's own IDT takes every event
        machine._st[L.CFG_MEM_SIZE] = ram          # the guest's bus ends at its RAM
        if machine.cpu.esp == len(machine.memory):  # the reset stack: the top of the RAM
            machine.cpu.esp = ram
        machine.set_instruction_trace(ram, trace_records, self._drain)
        self._tlb0 = self._tlb_counts()
        if program is not None:
            machine.load(program)

    def boot(self, program, esp: Optional[int] = None) -> None:
        """Give the guest the system tables of hvsim/rings/setup.py (GDT, empty IDT, TSS,
        the rings' stacks under the top of its RAM), load ``program`` and enter it in
        ring 0, ESP at the top of its RAM (or ``esp``): what a bare machine with that much
        memory would get from ``install`` (the workloads' native host)."""
        from hvsim.rings.setup import install, STACK_SPACING
        m, ram = self.machine, self.ram
        self.tables = install(m, ring0_stack=ram, ring1_stack=ram - STACK_SPACING,
                              ring2_stack=ram - 2 * STACK_SPACING)
        m.load(program)
        self.tables.enter(m, 0, m.cpu.eip, ram if esp is None else esp)

    # ---- the trace -> the model -------------------------------------------------------------
    def _drain(self) -> None:
        recs = self.machine.take_instruction_trace()
        if self._pending is not None:
            recs = np.concatenate([self._pending, recs])
            self._pending = None
        # code writes at the end: the record of the instruction that made them (a REP
        # string instruction drained between two of its steps) comes with the next batch
        k = len(recs)
        while k > 0 and (recs[k - 1, 2] >> L.ITRACE_KIND_SHIFT) == L.ITRACE_KIND_CODE_WRITTEN:
            k -= 1
        if k < len(recs):
            self._pending = recs[k:].copy()
            recs = recs[:k]
        if len(recs):
            d = self._model
            M.consume(recs, d["q"], d["s"], d["tbs"], d["pages"], d["htab"], d["jcache"],
                      d["icache"], d["stamps"])

    def _tlb_counts(self):
        c = self.machine.counters
        return c["tlb_hits"], c["tlb_misses"]

    def run(self, max_steps: int = 1_000_000) -> Event:
        try:
            return super().run(max_steps)
        finally:
            self._drain()

    def step(self) -> Optional[Event]:
        try:
            return super().step()
        finally:
            self._drain()

    # ---- state --------------------------------------------------------------------------------
    def snapshot(self):
        self._drain()
        return (super().snapshot(), {k: v.copy() for k, v in self._model.items()}, self._tlb0,
                None if self._pending is None else self._pending.copy())

    def restore(self, snap) -> None:
        try:
            native, model, tlb0, pending = snap
            if set(model) != set(self._model) or model["tbs"].shape != self._model["tbs"].shape:
                raise ValueError
        except (TypeError, ValueError):
            raise TypeError("restore() takes a snapshot of an Emulator with the same "
                            "max_tbs") from None
        super().restore(native)
        for k, v in model.items():
            np.copyto(self._model[k], v)
        self._tlb0 = tlb0
        self._pending = None if pending is None else pending.copy()

    # ---- what it did --------------------------------------------------------------------------
    @property
    def model_counters(self) -> dict:
        """Every counter of both models by name (model.COUNTERS), and the soft TLB's."""
        q = self._model["q"]
        d = {name: int(q[i]) for i, name in enumerate(M.COUNTERS)}
        hits, misses = self._tlb_counts()
        d["soft_tlb_hits"] = hits - self._tlb0[0]
        d["soft_tlb_misses"] = misses - self._tlb0[1]
        return d

    @property
    def stats(self) -> dict:
        d = dict.fromkeys(STATS, 0)
        c = self.model_counters
        if self.mode == "interpret":
            d["insns_interpreted"] = c["bx_interpreted"]
        else:
            d["insns_translated"] = c["tb_insns_translated"]
            d["insns_run_translated"] = c["tb_insns_run"]
            d["tb_slow_lookups"] = c["tb_lookups"] - c["tb_jc_hits"]
        d["soft_tlb_fills"] = c["soft_tlb_misses"]
        return d

    @property
    def counters(self) -> dict:
        """The machine's counters, ``stats``, ``device_io`` and every model counter."""
        d = super().counters
        d.update(self.model_counters)
        return d

    def tb_table(self) -> list:
        """The valid TBs of the translate model, oldest first, as dicts: pc, cs_base,
        flags (cpl, iopl), phys, icount, size, pages, end (how it ends) and chained (the
        pc of each patched successor, None for an unpatched slot)."""
        d = self._model
        tbs, s = d["tbs"], d["s"]
        ends = {M.END_NONE: "building", M.END_DIRECT: "jump", M.END_COND: "branch",
                M.END_FALL: "fall-through", M.END_INDIRECT: "indirect", M.END_STATE: "state"}
        out = []
        for t in range(int(s[M.S_NTB])):
            r = tbs[t]
            if not r[M.T_VALID]:
                continue
            chained = []
            for slot in (0, 1):
                j = int(r[M.T_JMP0 + slot])
                chained.append(int(tbs[j, M.T_PC]) if j >= 0 and tbs[j, M.T_VALID] else None)
            pages = [int(r[M.T_PAGE0])] + ([int(r[M.T_PAGE1])] if r[M.T_PAGE1] >= 0 else [])
            out.append({"pc": int(r[M.T_PC]), "cs_base": int(r[M.T_CSBASE]),
                        "cpl": int(r[M.T_FLAGS]) & 3, "iopl": (int(r[M.T_FLAGS]) >> 12) & 3,
                        "phys": int(r[M.T_PHYS]), "icount": int(r[M.T_ICOUNT]),
                        "size": int(r[M.T_SIZE]), "pages": pages,
                        "end": ends[int(r[M.T_END])], "chained": chained})
        return out

    def describe(self) -> dict:
        """The mode, the model's counters and the TB table (data for a lesson)."""
        return {"mode": self.mode, "counters": self.model_counters, "tbs": self.tb_table()}

    def __repr__(self):
        return f"<Emulator {self.mode} {self.machine!r}>"


class DynamicTranslator(Emulator):
    """:class:`Emulator` in ``translate`` mode (QEMU TCG): ``hvsim run --monitor dbt``."""
    name = "dbt"

    def __init__(self, machine: Optional[Machine] = None, program=None, devices=(),
                 max_tbs: int = M.DEFAULT_MAX_TBS):
        super().__init__(machine, program, devices, mode="translate", max_tbs=max_tbs)
