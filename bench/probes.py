"""The sampling method every benchmark module shares (bench/run.py's module docstring).

A rate is a :class:`Probe`: ``sample(n) -> (units, seconds)`` does n iterations of guest
work. Each probe is calibrated so that one sample lasts at least the minimum, then the
samples of all probes are taken in rounds (:func:`sample_all`), so that a burst of other
load on the machine hits one sample of each rate rather than all samples of one; a rate
is reported as the median of its samples with their spread (:func:`stats`).
"""
from __future__ import annotations

import argparse

__all__ = ["SAMPLES", "MIN_SAMPLE_S", "CALIBRATION_MARGIN", "QUICK_SAMPLES", "QUICK_MIN_SAMPLE_S",
           "Probe", "stats", "sample_all", "fmt_rate", "print_rows"]

SAMPLES = 7               # samples per rate (K)
MIN_SAMPLE_S = 0.5        # guest work per sample, at least
CALIBRATION_MARGIN = 1.3  # calibrate for this much more, so few samples need running again
QUICK_SAMPLES, QUICK_MIN_SAMPLE_S = 3, 0.05


class Probe:
    """One rate: ``sample(n) -> (units, seconds)`` does n iterations of guest work and
    says how many units (instructions, round trips) it did in how many seconds of it.

    :meth:`calibrate` picks the n for which a sample lasts the minimum (with a margin);
    :meth:`take` takes one sample, running it again with a larger n if it came out short.
    """

    def __init__(self, sample, start, limit=2**32 - 1):
        self.sample, self.n, self.limit = sample, start, limit
        self.rates, self.seconds, self.reruns = [], [], 0

    def calibrate(self, min_seconds):
        goal = min_seconds * CALIBRATION_MARGIN
        while True:
            _, dt = self.sample(self.n)
            if dt >= goal or self.n >= self.limit:
                return
            grow = goal / max(dt, 1e-4) * 1.1
            self.n = min(self.limit, int(self.n * min(max(grow, 1.5), 100)))

    def take(self, min_seconds):
        while True:
            units, dt = self.sample(self.n)
            if dt >= min_seconds or self.n >= self.limit:
                break
            self.reruns += 1           # too short: this sample does not count; go longer
            grow = min_seconds * CALIBRATION_MARGIN / max(dt, 1e-4)
            self.n = min(self.limit, int(self.n * grow) + 1)
        self.rates.append(units / dt)
        self.seconds.append(dt)


def stats(rates):
    """(median, min, max, best) of a list of rates; the best of a rate is its max."""
    r = sorted(rates)
    k = len(r)
    median = r[k // 2] if k % 2 else (r[k // 2 - 1] + r[k // 2]) / 2
    return median, r[0], r[-1], r[-1]


def sample_all(probes: dict, samples: int, min_seconds: float) -> dict:
    """Calibrate every probe, then take ``samples`` rounds through all of them (so they
    share the machine's load); {key: (median, min, max, best)} and their '_notes'."""
    for p in probes.values():
        p.calibrate(min_seconds)
    for _ in range(samples):
        for p in probes.values():
            p.take(min_seconds)
    out = {k: stats(p.rates) for k, p in probes.items()}
    out["_notes"] = {k: f"{len(p.rates)} samples of {min(p.seconds):.2f}-{max(p.seconds):.2f} s"
                     for k, p in probes.items()}
    return out


def fmt_rate(x):
    """A rate in k or M units per second, for one line of text."""
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.1f} k"


def print_rows(rows, description, argv=None):
    """The command line of a standalone benchmark module: ``rows(samples=, min_seconds=)``
    measured once and printed, one line per row with its baselines and note."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--samples", type=int, default=SAMPLES)
    ap.add_argument("--min-seconds", type=float, default=MIN_SAMPLE_S)
    a = ap.parse_args(argv)
    for row in rows(samples=a.samples, min_seconds=a.min_seconds):
        med, lo, hi, _ = row["value"]
        base = ", ".join(f"{k} {fmt_rate(v[0])}" for k, v in row["baselines"].items())
        print(f"{row['name']}: median {fmt_rate(med)} (min {fmt_rate(lo)}, max {fmt_rate(hi)})"
              + (f"; beside {base}" if base else "") + f"  [{row['note']}]")
