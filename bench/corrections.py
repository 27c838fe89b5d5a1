"""What each correction of numba's internals buys: cold compiles with each switched off
(Python; not jitted).

    python bench/corrections.py [--no-write]

hvsim corrects four numba internals while it compiles its own kernels
(hvsim/_numba_corrections.py) and keeps one compiled version per argument type of a
kernel called with constants (``one_overload``, hvsim/_jit.py). Each configuration here
is one fresh process running ``hvsim warmup`` -- every kernel -- on an empty numba cache,
in one process (``HVSIM_COMPILE_HELPER=0``, so the work is not split over two cores):
all corrections on, all off, and each one off with the others on. The CPU time of the
process (user + system) is the figure that counts; the wall time is given beside it,
with the load average, since other work on the machine stretches the wall time more
than the CPU time. A correction is worth keeping when switching it off costs at least
10% more CPU time than all on. The section it writes goes at the end of BENCHMARKS.md
(bench/run.py keeps it when it rewrites the rest).
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hvsim._numba_corrections import SWITCHES  # noqa: E402

SECTION = "## The compile path"


def cold_warmup(value: str) -> dict:
    """One cold ``hvsim warmup`` in a fresh process with HVSIM_NUMBA_CORRECTIONS=value."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, HVSIM_COMPILE_HELPER="0",
                   HVSIM_NUMBA_CORRECTIONS=value, PYTHONPATH=str(ROOT))
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "hvsim", "warmup"], env=env,
                           capture_output=True, text=True)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        raise SystemExit(f"hvsim warmup failed with HVSIM_NUMBA_CORRECTIONS={value}:\n{p.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu": cpu, "wall": wall, "load": load}


def configurations():
    """(label, HVSIM_NUMBA_CORRECTIONS value) for every configuration measured."""
    out = [("all on", "all"), ("all off", "off")]
    for name in SWITCHES:
        out.append((f"{name} off", ",".join(n for n in SWITCHES if n != name)))
    return out


def section(results: list, commit: str) -> str:
    base = next(r for label, _, r in results if label == "all on")["cpu"]
    lines = [SECTION, "",
             "What each correction of numba's internals buys (bench/corrections.py, whose "
             "docstring gives the method): a cold `hvsim warmup` -- every kernel -- in one "
             "process on an empty cache, one process (one sample) per configuration; CPU seconds of that process "
             "(user + system), the wall time and the load average at its start beside them. "
             f"Measured at {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "| configuration | CPU s | vs all on | wall s | load at start |",
             "|---|---|---|---|---|"]
    for label, _, r in results:
        lines.append(f"| {label} | {r['cpu']:.1f} | {100 * (r['cpu'] / base - 1):+.0f}% | "
                     f"{r['wall']:.1f} | {r['load']:.2f} |")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip() or "unknown"
    results = []
    for label, value in configurations():
        r = cold_warmup(value)
        results.append((label, value, r))
        print(f"{label:20s} cpu {r['cpu']:7.1f} s  wall {r['wall']:7.1f} s  load {r['load']:.2f}",
              flush=True)
    text = section(results, commit)
    print()
    print(text)
    if not args.no_write:
        path = ROOT / "BENCHMARKS.md"
        old = path.read_text() if path.exists() else "# hvsim benchmarks\n"
        i = old.find(SECTION)
        head = old if i < 0 else old[:i]
        path.write_text(head.rstrip("\n") + "\n\n" + text)
        print(f"wrote the compile-path section of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
