"""Benchmark rows for the emulation monitor (issue 16 part 1): guest instructions per second
under Emulator in interpret (Bochs model) and translate (QEMU TCG model) mode, beside
Native in the same run, with the model's counters.

:func:`emulation_rows` returns rows in bench/run.py's format (name, value = (median, min,
max, best) of the rates, target, seconds, baselines, note); run.py's ``render`` and
``markdown`` take them. Samples of every configuration of a workload are taken in turn
(native, interpret, translate, native, ...), each at least ``min_seconds`` long, so that
the three share the machine's load.

``make bench`` runs them (bench/run.py passes itself in as ``R``: the probes, the loops and
the statistics are its own, and this module imports nothing of it).
"""
from __future__ import annotations

import time

MODES = ("interpret", "translate")
KERNEL_BOOT = 50_000          # steps before the teaching kernel's user loop


def _loop_sample(template, mode):
    """sample(n) -> (instructions, seconds) of ``template`` with n iterations, run to its
    HLT natively (mode None, blocks on) or under Emulator(mode)."""
    from hvsim import Machine, assemble
    from hvsim.emulation.monitor import Emulator

    def sample(n):
        prog = assemble(template.format(n=n))
        if mode is None:
            mon = Machine()
            mon.load(prog)
            run = mon.run
            counters = mon.counters
        else:
            mon = Emulator(program=prog, mode=mode)
            run = mon.run
            counters = mon.machine.counters
        t0 = time.perf_counter()
        ev = run(10**15)
        dt = time.perf_counter() - t0
        if ev.kind != "halt":
            raise RuntimeError(f"the loop ended in {ev.kind!r}, not 'halt'")
        sample.last = mon
        return int(counters["instructions"]), dt
    sample.last = None
    return sample


def _kernel_sample(mode):
    """sample(n) -> (instructions, seconds) of n more steps of the teaching kernel, natively
    (mode None) or under Emulator(mode), past its boot (one monitor for every sample)."""
    from hvsim.guests import teaching_kernel
    from hvsim.lessons.l02_hole import run_native
    from hvsim.emulation.monitor import Emulator
    from hvsim.rings.setup import install, STACK_SPACING
    if mode is None:
        mon = run_native(KERNEL_BOOT)
    else:
        mon = Emulator(mode=mode)
        m, ram = mon.machine, mon.ram
        tables = install(m, ring0_stack=ram, ring1_stack=ram - STACK_SPACING,
                         ring2_stack=ram - 2 * STACK_SPACING)
        m.load(teaching_kernel(KCODE=tables.code(0)))
        tables.enter(m, 0, m.cpu.eip, ram)
        mon.run(KERNEL_BOOT)

    def sample(n):
        before = int(mon.machine.counters["instructions"])
        t0 = time.perf_counter()
        ev = mon.run(n)
        dt = time.perf_counter() - t0
        if ev.kind != "budget":
            raise RuntimeError(f"the teaching kernel stopped: {ev}")
        return int(mon.machine.counters["instructions"]) - before, dt
    sample.last = mon
    return sample


def _model_note(mon, mode) -> str:
    c = mon.counters
    if mode == "interpret":
        return (f"Bochs model, last sample: {c['bx_interpreted']:,} instructions interpreted, "
                f"{c['bx_lookups']:,} trace lookups ({c['bx_hits']:,} hits, {c['bx_misses']:,} "
                f"misses), {c['bx_decoded']:,} decoded, {c['bx_smc']} SMC, "
                f"{c['bx_flushes']} flushes; soft TLB {c['soft_tlb_misses']:,} fills")
    return (f"QEMU model, last sample: {c['tb_translated']:,} TBs ({c['tb_insns_translated']:,} "
            f"instructions translated), {c['tb_insns_run']:,} run translated, "
            f"{c['tb_lookups']:,} lookups ({c['tb_jc_hits']:,} jump-cache hits, "
            f"{c['tb_hash_hits']:,} hash hits, {c['tb_misses']:,} misses), "
            f"{c['tb_chain_hits']:,} chain hits, {c['tb_chains_patched']:,} chains patched, "
            f"{c['tb_invalidated']:,} invalidated, {c['tb_flushes']} flushes; soft TLB "
            f"{c['soft_tlb_misses']:,} fills")


def emulation_rows(R, min_seconds: float = 1.0, samples: int = 7) -> list:
    """Rows (bench/run.py's format) for the teaching kernel, the ALU loop and the mixed
    loop under Emulator interpret and translate, Native's rate of the same run in the
    note."""
    workloads = [
        ("kernel", "teaching kernel (lesson 02, ring 0 + ring 3, timer)", _kernel_sample,
         50_000, 10**12),
        ("alu", "ALU loop", lambda mode: _loop_sample(R.ALU_LOOP, mode), 20_000, 2**32 - 1),
        ("mixed", "mixed loop", lambda mode: _loop_sample(R.MIXED_LOOP, mode), 20_000,
         2**32 - 1),
    ]
    rows = []
    for key, label, make, start, limit in workloads:
        probes, errors = {}, {}
        for mode in (None,) + MODES:
            try:
                sample = make(mode)
                p = R.Probe(sample, start, limit=limit)
                p.calibrate(min_seconds)
                p.sampler = sample
                probes[mode] = p
            except Exception as e:                              # report, don't hide
                errors[mode] = R._err(e)
        for _ in range(samples):
            for mode, p in list(probes.items()):
                try:
                    p.take(min_seconds)
                except Exception as e:
                    errors[mode] = R._err(e)
                    del probes[mode]
        native = probes.get(None)
        native_note = (f"Native (blocks on) in the same run: median "
                       f"{R.fmt_stats(R.stats(native.rates))}" if native
                       else f"Native: {errors.get(None, 'not measured')}")
        for mode in MODES:
            p = probes.get(mode)
            name = (f"(y) {label} under Emulator({mode!r}, "
                    f"{'Bochs' if mode == 'interpret' else 'QEMU TCG'} model), guest instr/s")
            if p is None:
                rows.append({"name": name, "value": errors.get(mode, "not measured"),
                             "target": None, "seconds": False, "baselines": {},
                             "note": native_note})
                continue
            ratio = (f"{R.stats(p.rates)[0] / R.stats(native.rates)[0]:.3f} of Native's median"
                     if native else "")
            notes = [native_note, ratio, _model_note(p.sampler.last, mode),
                     f"{len(p.rates)} samples of {min(p.seconds):.2f}-{max(p.seconds):.2f} s"]
            rows.append({"name": name, "value": R.stats(p.rates), "target": None,
                         "seconds": False, "baselines": {},
                         "note": "; ".join(x for x in notes if x)})
    return rows

