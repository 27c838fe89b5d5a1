"""Binary translation speed (hvsim/bt): rows in bench/run.py's row format (Python; not jitted).

    python bench/bt.py [--samples K] [--min-seconds S]

(u) the teaching kernel (lesson 02) past its boot, machine-counted instructions/s, under
    binary translation beside the same kernel natively (ring 0, its own IDT), under
    trap-and-emulate (whose clock freezes at the first POPF: fewer exits from then on)
    and under trap-and-emulate on the hypothetical virtualizable x86 (whose clock runs,
    as BT's does): under BT the count includes the instructions of the in-TC sequences
    (a PUSHF is ten), as the machine retires them;
(v) translation rate: guest instructions translated per second by the translator
    (hvsim/bt/translator.py, pure Python) over mm.s's whole image, a TU started at
    every instruction of its listing.

The method is bench/run.py's: a rate is the median of K samples (default 7), each at
least S seconds (default 0.5) of work, the samples of all rates taken in rounds so that
a burst of other load hits one sample of each. Nothing here asserts a timing.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probes import Probe, print_rows, sample_all  # noqa: E402  (bench/probes.py)

__all__ = ["measure", "rows"]


def _kernel_probe(make):
    mon = make()
    mon.run(50_000)

    def run(k):
        before = int(mon.machine.counters["instructions"])
        t0 = time.perf_counter()
        ev = mon.run(k)
        dt = time.perf_counter() - t0
        if ev.kind != "budget":
            raise RuntimeError(f"the teaching kernel stopped: {ev}")
        return int(mon.machine.counters["instructions"]) - before, dt
    return Probe(run, 50_000)


def _translation_probe():
    from hvsim.bt.translator import translate
    from hvsim.guests import mm_kernel
    prog = mm_kernel()
    code, origin = bytes(prog.code), prog.origin
    starts = [a for a, raw, _, _ in prog.listing if raw]

    def read(lin, n):
        off = lin - origin
        chunk = code[off:off + n]
        return chunk + bytes(n - len(chunk))

    def run(k):
        done = 0
        t0 = time.perf_counter()
        for i in range(k):
            done += translate(starts[i % len(starts)], read).n_guest
        return done, time.perf_counter() - t0
    return Probe(run, 200)


def measure(samples: int = 7, min_seconds: float = 0.5) -> dict:
    """{key: (median, min, max, best)} of each rate, all sampled in one run."""
    from hvsim.bt import BinaryTranslator
    from hvsim.guests import teaching_kernel
    from hvsim.lessons.l02_hole import run_native
    from hvsim.monitors import TrapAndEmulate

    def native():
        return run_native(1)
    probes = {
        "bt": _kernel_probe(lambda: BinaryTranslator(program=teaching_kernel())),
        "native": _kernel_probe(native),
        "trap-and-emulate": _kernel_probe(lambda: TrapAndEmulate(program=teaching_kernel())),
        "trap-and-emulate, virtualizable": _kernel_probe(
            lambda: TrapAndEmulate(program=teaching_kernel(), virtualizable=True)),
        "translate": _translation_probe(),
    }
    return sample_all(probes, samples, min_seconds)


def rows(results: dict | None = None, samples: int = 7, min_seconds: float = 0.5) -> list:
    """The rows, in bench/run.py's format (name, value, target, seconds, baselines, note)."""
    r = measure(samples, min_seconds) if results is None else results
    notes = r["_notes"]
    return [
        {"name": "(u) teaching kernel under binary translation (VMware-style), instr/s",
         "value": r["bt"], "target": None, "seconds": False,
         "baselines": {k: r[k] for k in ("native", "trap-and-emulate",
                                          "trap-and-emulate, virtualizable")},
         "note": "machine-counted instructions past boot (the in-TC sequences included); "
                 "trap-and-emulate's tick count is frozen, BT's is not; " + notes["bt"]},
        {"name": "(v) binary translator: guest instructions translated/s", "value": r["translate"],
         "target": None, "seconds": False, "baselines": {},
         "note": "translate() over mm.s's image, a TU at every instruction; " + notes["translate"]},
    ]


def main(argv=None):
    print_rows(rows, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
