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

import argparse
import time

__all__ = ["measure", "rows"]


class _Probe:
    def __init__(self, sample, n):
        self.sample, self.n, self.rates, self.seconds = sample, n, [], []

    def calibrate(self, min_seconds):
        while True:
            _, dt = self.sample(self.n)
            if dt >= min_seconds * 1.2:
                return
            self.n = int(self.n * min(max(min_seconds * 1.3 / max(dt, 1e-4), 1.5), 100))

    def take(self, min_seconds):
        while True:
            units, dt = self.sample(self.n)
            if dt >= min_seconds:
                break
            self.n = int(self.n * min_seconds * 1.3 / max(dt, 1e-4)) + 1
        self.rates.append(units / dt)
        self.seconds.append(dt)


def _stats(rates):
    r = sorted(rates)
    k = len(r)
    median = r[k // 2] if k % 2 else (r[k // 2 - 1] + r[k // 2]) / 2
    return median, r[0], r[-1], r[-1]


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
    return _Probe(run, 50_000)


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
    return _Probe(run, 200)


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


def sample_all(probes: dict, samples: int, min_seconds: float) -> dict:
    """Calibrate every probe, then take ``samples`` rounds through all of them (so they
    share the machine's load); {key: (median, min, max, best)} and their '_notes'."""
    for p in probes.values():
        p.calibrate(min_seconds)
    for _ in range(samples):
        for p in probes.values():
            p.take(min_seconds)
    out = {k: _stats(p.rates) for k, p in probes.items()}
    out["_notes"] = {k: f"{len(p.rates)} samples of {min(p.seconds):.2f}-{max(p.seconds):.2f} s"
                     for k, p in probes.items()}
    return out


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


def _fmt(x):
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.1f} k"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=7)
    ap.add_argument("--min-seconds", type=float, default=0.5)
    a = ap.parse_args(argv)
    for row in rows(samples=a.samples, min_seconds=a.min_seconds):
        med, lo, hi, _ = row["value"]
        base = ", ".join(f"{k} {_fmt(v[0])}" for k, v in row["baselines"].items())
        print(f"{row['name']}: median {_fmt(med)} (min {_fmt(lo)}, max {_fmt(hi)})"
              + (f"; beside {base}" if base else "") + f"  [{row['note']}]")


if __name__ == "__main__":
    main()
