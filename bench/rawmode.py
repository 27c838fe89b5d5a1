"""VirtualBox raw-mode speed (hvsim/bt/rawmode.py): rows in bench/run.py's row format.

    python bench/rawmode.py [--samples K] [--min-seconds S]

(w) the teaching kernel (lesson 02) past its boot, machine-counted instructions/s, under
    raw mode (the kernel in place at ring 1, scanned and patched) beside the same kernel
    natively, under trap-and-emulate (whose clock freezes at the first POPF), and under
    binary translation, all sampled in the same run. Raw mode's count includes the
    instructions of patch code (an in-patch PUSHF is ten), as the machine retires them;
    its INT3 replacements are exits.
(x) scanning rate: guest instructions scanned per second by the scanner (CSAM's part,
    pure Python), a fresh monitor scanning the teaching kernel from its boot entry.

The method is bench/run.py's (and bench/bt.py's, whose probe this reuses): a rate is the
median of K samples (default 7), each at least S seconds (default 0.5) of work, taken in
rounds. Nothing here asserts a timing.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bt import _kernel_probe  # noqa: E402  (bench/bt.py)
from probes import Probe, print_rows, sample_all  # noqa: E402  (bench/probes.py)

__all__ = ["measure", "rows"]


def _scan_probe():
    from hvsim.bt.rawmode import RawMode
    from hvsim.guests import teaching_kernel
    prog = teaching_kernel()

    def run(k):
        done = 0
        dt = 0.0
        for _ in range(k):
            rm = RawMode()
            rm.machine.load(prog)
            t0 = time.perf_counter()
            rm._reset_raw()
            done += rm.scan(prog.labels["start"])
            dt += time.perf_counter() - t0
        return done, dt
    return Probe(run, 20)


def measure(samples: int = 7, min_seconds: float = 0.5) -> dict:
    """{key: (median, min, max, best)} of each rate, all sampled in one run."""
    from hvsim.bt import BinaryTranslator
    from hvsim.bt.rawmode import RawMode
    from hvsim.guests import teaching_kernel
    from hvsim.lessons.l02_hole import run_native
    from hvsim.monitors import TrapAndEmulate

    probes = {
        "rawmode": _kernel_probe(lambda: RawMode(program=teaching_kernel())),
        "native": _kernel_probe(lambda: run_native(1)),
        "trap-and-emulate": _kernel_probe(lambda: TrapAndEmulate(program=teaching_kernel())),
        "bt": _kernel_probe(lambda: BinaryTranslator(program=teaching_kernel())),
        "scan": _scan_probe(),
    }
    return sample_all(probes, samples, min_seconds)


def rows(results: dict | None = None, samples: int = 7, min_seconds: float = 0.5) -> list:
    """The rows, in bench/run.py's format (name, value, target, seconds, baselines, note)."""
    r = measure(samples, min_seconds) if results is None else results
    notes = r["_notes"]
    return [
        {"name": "(w) teaching kernel under VirtualBox raw mode (CSAM + PATM), instr/s",
         "value": r["rawmode"], "target": None, "seconds": False,
         "baselines": {k: r[k] for k in ("native", "trap-and-emulate", "bt")},
         "note": "machine-counted instructions past boot (patch code included); "
                 "trap-and-emulate's tick count is frozen, raw mode's and BT's are not; "
                 + notes["rawmode"]},
        {"name": "(x) raw-mode scanner: guest instructions scanned/s", "value": r["scan"],
         "target": None, "seconds": False, "baselines": {},
         "note": "RawMode.scan() of the teaching kernel from its entry, fresh each time (its patches installed too); "
                 + notes["scan"]},
    ]


def main(argv=None):
    print_rows(rows, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
