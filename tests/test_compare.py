"""hvsim.compare and ``hvsim compare``: one guest on every technique, side by side.

Oracles: the same runs done directly (hvsim.kernelhosts.run, hvsim.workloads.run,
hvsim.pvworkloads.run) and priced line by line from cost.breakdown's lines; facts known
by construction (native has no monitor to trap to; only trap-and-emulate's clock freezes;
mm's compute loop touches nothing a host could change; only minios has a PV build; an
interpreter interprets every instruction retired); the documented exit statuses.
"""
import doctest
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hvsim.compare
import hvsim.guests
import hvsim.kernelhosts
from hvsim import cost, kernelhosts
from hvsim import pvworkloads as PV
from hvsim import workloads as W
from hvsim.compare import compare, plan

ROOT = Path(__file__).resolve().parent.parent
STEPS = 20_000
ITER = 1000
N_SYSCALLS = 8


def hvsim_cli(*args, timeout=1500):    # as tests/test_cli.py runs it: a user's subprocess
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "hvsim", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def kernel():
    return compare("kernel", steps=STEPS)


@pytest.fixture(scope="module")
def compute():
    return compare("compute", ITER=ITER)


@pytest.fixture(scope="module")
def syscall():
    return compare("minios:syscall", N_SYSCALLS=N_SYSCALLS)


def _expected(mon, native_total: float) -> dict:
    """A row's counts and cycles, from the monitor of a run made apart: stats read by
    their own names, cycles summed from the breakdown's lines on Nehalem."""
    s = mon.stats
    lines = cost.breakdown(mon, cost.NEHALEM).lines
    total = sum(ln.count * ln.cost.cycles for ln in lines)
    est = sum(ln.count * ln.cost.cycles for ln in lines if ln.cost.estimate)
    return dict(instructions=mon.machine.counters["instructions"], traps=s["traps"],
                vm_exits=s["vm_exits"], hypercalls=s["hypercalls"], callouts=s["callouts"],
                emulated=s["emulated"], interpreted=s["insns_interpreted"],
                translated=s["insns_translated"] + s["translated"], cycles=total,
                estimated_share=est / total, slowdown=total / native_total,
                **{c: sum(ln.count * ln.cost.cycles for ln in lines if ln.category == c)
                   for c in cost.CATEGORIES})


def _check_rows_against(rows, direct: dict):
    """``rows`` are ``direct``'s runs ({host: run}, native first), counted and priced."""
    native_total = sum(ln.count * ln.cost.cycles
                       for ln in cost.breakdown(direct["native"].monitor, cost.NEHALEM).lines)
    assert [r["host"] for r in rows] == list(direct)
    for r in rows:
        want = _expected(direct[r["host"]].monitor, native_total)
        got = dict(r, **r["cycles_by_category"])
        assert {k: got[k] for k in want} == pytest.approx(want, rel=1e-12), r["host"]


# ---- the teaching kernel -----------------------------------------------------------------
def test_kernel_rows_are_the_runs_made_apart_counted_and_priced(kernel):
    direct = {h: kernelhosts.run(h, STEPS) for h in kernelhosts.HOSTS}
    _check_rows_against(kernel.rows, direct)
    for r in kernel.rows:
        d = direct[r["host"]]
        assert r["seen"] == {"console": d.console, "ticks_at_half": d.ticks_at_half,
                             "ticks": d.ticks, "calls_at_half": d.calls_at_half,
                             "calls": d.calls,
                             "clock": "ticking" if d.ticks > d.ticks_at_half else "frozen"}


def test_only_trap_and_emulate_differs_on_the_kernel_and_its_clock_froze(kernel):
    rows = {r["host"]: r for r in kernel.rows}
    assert list(rows) == ["native", "shadow", "vtx", "emulate", "dbt", "bt", "rawmode"]
    assert all(r["finished"] and r["ended"] == "budget" for r in rows.values())
    assert [h for h, r in rows.items() if not r["same_as_native"]] == ["shadow"]
    te = rows["shadow"]
    assert te["differences"][0].startswith("clock froze")
    # lesson 02: frozen at the ticks the monitor injected before it emulated the first CLI
    # (the POPF after it keeps the virtual IF at 0), read from the monitor's own log
    log = list(kernel.runs["shadow"].monitor.log)
    assert log[0].instruction.startswith("lidt")          # the log is whole
    first_cli = next(e for e in log if e.insn is not None and e.insn.mnemonic == "cli")
    injected = sum(1 for e in log if e.what == "injected" and e.tsc <= first_cli.tsc)
    assert te["seen"]["ticks"] == te["seen"]["ticks_at_half"] == injected > 0
    assert te["seen"]["clock"] == "frozen" and rows["native"]["seen"]["clock"] == "ticking"
    for h, r in rows.items():
        assert (r["differences"] == []) == (h != "shadow")
        assert r["seen"]["console"] == "kernel up\nhello from ring 3\n"
    assert not kernel.agree


def test_native_is_the_reference_with_no_monitor_work(kernel, compute, syscall):
    for c in (kernel, compute, syscall):
        nat = c.rows[0]
        assert nat["host"] == "native" and nat["slowdown"] == 1.0
        assert nat["traps"] == nat["vm_exits"] == nat["hypercalls"] == nat["callouts"] == 0
        assert nat["emulated"] == nat["interpreted"] == nat["translated"] == 0
        assert nat["technique"] == "none: the bare machine"


def test_who_does_what_on_the_kernel(kernel):
    rows = {r["host"]: r for r in kernel.rows}
    # only VT-x exits, only the binary translator calls out, no host makes a hypercall
    assert [h for h, r in rows.items() if r["vm_exits"]] == ["vtx"]
    assert [h for h, r in rows.items() if r["callouts"]] == ["bt"]
    assert all(r["hypercalls"] == 0 for r in rows.values())
    # Bochs's model interprets every instruction the machine retires
    assert rows["emulate"]["interpreted"] == rows["emulate"]["instructions"] > 0
    assert rows["emulate"]["traps"] == rows["dbt"]["traps"] == 0


# ---- mm.s and minios.s -----------------------------------------------------------------------
def test_compute_rows_are_the_workload_runs_made_apart(compute):
    direct = {h: W.run("compute", h, ITER=ITER) for h in W.HOSTS}
    _check_rows_against(compute.rows, direct)
    for r in compute.rows:
        assert r["seen"] == {"console": direct[r["host"]].console, "status": "0x600d (done)"}


def test_compute_is_the_same_as_native_on_every_host(compute):
    assert [r["host"] for r in compute.rows] == list(W.HOSTS)
    assert all(r["same_as_native"] and r["ended"] == "halted" and r["differences"] == []
               for r in compute.rows)
    assert compute.agree
    assert compare("mm:compute", ["bt"], ITER=ITER).rows == [compute.rows[0], next(
        r for r in compute.rows if r["host"] == "bt")]


def test_minios_rows_are_the_runs_made_apart_and_only_pv_makes_hypercalls(syscall):
    direct = {h: PV.run("syscall", h, N_SYSCALLS=N_SYSCALLS) for h in PV.HOSTS}
    _check_rows_against(syscall.rows, direct)
    rows = {r["host"]: r for r in syscall.rows}
    assert [h for h, r in rows.items() if r["hypercalls"]] == ["pv"]
    assert all(r["same_as_native"] for r in rows.values())


def test_pv_is_a_host_of_the_minios_guests_only():
    for guest in hvsim.compare.GUESTS:
        hosts = plan(guest).hosts
        assert ("pv" in hosts) == guest.startswith("minios:"), guest
        assert hosts[0] == "native"
    assert plan("kernel").hosts == tuple(kernelhosts.HOSTS)
    with pytest.raises(ValueError, match="no host named 'pv' for guest 'mm:compute'"):
        plan("compute", ["pv"])


def test_native_runs_first_even_when_not_listed_and_hosts_run_once():
    assert plan("compute", ["ept", "shadow", "ept"]).hosts == ("native", "ept", "shadow")
    assert plan("compute", "ept, native").hosts == ("native", "ept")


def test_a_run_cut_short_is_a_row_that_says_so():
    c = compare("compute", ["shadow"], budget=50, ITER=ITER)
    for r in c.rows:
        assert (r["finished"], r["same_as_native"], r["ended"]) == (False, False, "budget")
        assert r["differences"] == ["did not finish: its budget of 50 steps ran out"]
        assert r["seen"]["status"] == "0x0 (not finished)"
    assert not c.agree


def test_a_native_kernel_run_too_short_to_tick_or_call_is_no_reference():
    """A frozen clock elsewhere must not pass for the same when native's clock does not
    move either: too few steps for the program to call in its second half, or a PERIOD
    longer than the run (no tick at all)."""
    for kwargs, still in (({"steps": 300}, "its program"),
                          ({"steps": STEPS, "PERIOD": 10 * STEPS}, "its clock")):
        c = compare("kernel", ["shadow", "bt"], **kwargs)
        assert not c.agree
        for r in c.rows:
            assert r["finished"] and not r["same_as_native"]
            assert r["differences"] == [f"on native {still} did not move in the second half "
                                        f"of {c.plan.budget:,} steps (too few for PERIOD and "
                                        "WORK): nothing to compare with"]
        seen = c.rows[0]["seen"]
        if still == "its clock":
            assert seen["clock"] == "frozen" and seen["ticks"] == seen["ticks_at_half"]
        else:
            assert seen["calls"] == seen["calls_at_half"]


def test_a_workload_that_fails_on_native_is_no_reference():
    """16 spaces of 1024 pages need more frames than mm.s's pool holds (176): the guest
    itself stops with BAD3H on every host, which compare must not call a pass."""
    c = compare("ctxsw", ["ept"], K_SPACES=16, PAGES_PER=1024)
    assert not c.agree
    for r in c.rows:
        assert r["ended"] == "halted" and r["seen"]["status"] == "0xbad3 (the frame pool ran dry)"
        assert r["differences"] == ["native halted with status 0xbad3 (the frame pool ran "
                                    "dry), not done: nothing to compare with"]


@pytest.mark.parametrize("guest, names", [
    ("mm:compute", sorted(hvsim.guests.MM_PARAMS)),
    ("minios:all", sorted(hvsim.guests.MINIOS_PARAMS)),
])
def test_every_advertised_parameter_can_be_set(guest, names):
    """Each parameter --help and the README offer assembles with its value (FLUSH_CEILING,
    13 characters, once ran into its 'equ')."""
    build = hvsim.guests.mm_kernel if guest.startswith("mm") else (
        lambda w, **k: hvsim.guests.minios(False, w, **k))
    for name in names:
        prog = build(guest.split(":")[1], **{name: 4})       # 4: a STRIDE too
        assert prog.labels[name] == 4, name
        assert plan(guest, ["native"], **{name: 4}).params == {name: 4}


# ---- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("args, kwargs, error, words", [
    (("nosuch",), {}, ValueError, "no guest named 'nosuch'"),
    (("syscall",), {}, ValueError, "did you mean 'minios:syscall'"),
    ((3,), {}, TypeError, "the guest is a name"),
    (("kernel", ["ept"]), {}, ValueError, "no host named 'ept' for guest 'kernel'; its "
                                          "hosts are native, shadow, vtx"),
    (("kernel", [3]), {}, TypeError, "a host is a name"),
    (("kernel",), {"steps": 1}, ValueError, "steps must be an int from 2"),
    (("kernel",), {"budget": 3_000_000}, ValueError, "the kernel's budget is its steps"),
    (("kernel",), {"steps": 100, "budget": 200}, ValueError, "give one"),
    (("kernel",), {"TICKS": 3}, ValueError, "no parameter 'TICKS'; its parameters are "
                                            "PERIOD, WORK"),
    (("kernel",), {"PERIOD": 0}, ValueError, "PERIOD must be an int from 1"),
    (("compute",), {"NOPE": 1}, ValueError, "no parameter 'NOPE'"),
    (("compute",), {"budget": 0}, ValueError, "budget must be a positive int"),
    (("compute",), {"budget": True}, ValueError, "budget must be a positive int"),
    (("compute",), {"profile": "pentium9"}, ValueError, "no profile named 'pentium9'"),
    (("compute",), {"profile": 5}, TypeError, "a profile is a Profile or its name"),
    (("minios:all",), {"N_SECTORS": 65}, ValueError, "N_SECTORS must be an int from 1 to 64"),
])
def test_bad_input_raises_before_anything_runs(args, kwargs, error, words):
    with pytest.raises(error, match=words):
        plan(*args, **kwargs)


# ---- the table, the notebook's HTML, JSON ------------------------------------------------------
def test_table_has_a_line_per_host_numbers_with_separators_and_a_footnote(kernel):
    text = kernel.table()
    lines = text.splitlines()
    assert lines[0] == "kernel (the teaching kernel, 20,000 steps) on 7 hosts, profile nehalem"
    for r in kernel.rows:
        (line,) = [ln for ln in lines[2:10] if ln.split()[0] == r["host"]]
        assert f"{r['instructions']:,}" in line and f"{r['cycles']:,.0f}" in line
        assert (" NO " in line) == (r["host"] == "shadow")
    assert "  shadow: clock froze" in text
    words = " ".join(text.split())
    assert "profile nehalem, Core i7 / Xeon 5500 (Nehalem), 2009" in words
    assert "the share of the cycles that comes from estimated costs" in words
    # no host makes a hypercall: that column is left out, and the footnote says so
    assert "hypercalls" not in lines[2] and "left out: hypercalls" in text


def test_html_has_a_row_per_host_and_marks_the_one_that_differs(kernel):
    page = kernel._repr_html_()
    assert page.count("<tr>") == 1 + len(kernel.rows)
    assert page.count(">NO</td>") == 1 and page.count(">yes</td>") == len(kernel.rows) - 2
    assert "clock froze" in page


def test_rows_are_plain_values_and_to_json_gives_them_back(kernel, syscall):
    for c in (kernel, syscall):
        assert json.loads(c.to_json()) == c.rows


def test_doctests():
    for mod in (hvsim.kernelhosts, hvsim.compare):
        r = doctest.testmod(mod)
        assert r.attempted > 0 and r.failed == 0, mod.__name__


# ---- the command line ----------------------------------------------------------------------
def test_cli_exits_0_when_every_host_agrees_and_prints_the_table():
    out = hvsim_cli("compare", "compute", "--set", f"ITER={ITER}", "--hosts", "ept,dbt")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "mm:compute (budget 2,000,000 steps, ITER=1000) on 3 hosts, profile nehalem"
    assert [ln.split()[0] for ln in lines[3:6]] == ["native", "ept", "dbt"]


def test_cli_exits_1_for_the_kernel_whose_clock_freezes_under_trap_and_emulate():
    out = hvsim_cli("compare", "kernel", "--budget", STEPS, "--hosts", "shadow",
                    "--profile", "prescott")
    assert out.returncode == 1, out.stderr
    assert "shadow: clock froze" in out.stdout and "profile prescott" in out.stdout


def test_cli_json_is_the_rows_of_compare():
    out = hvsim_cli("compare", "mm:compute", "--set", "ITER=100", "--hosts", "shadow", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == compare("compute", ["shadow"], ITER=100).rows


@pytest.mark.parametrize("args, words", [
    (["nosuch"], "no guest named 'nosuch'"),
    (["kernel", "--hosts", "vmware"], "no host named 'vmware' for guest 'kernel'; its hosts "
                                      "are native, shadow, vtx, emulate, dbt, bt, rawmode"),
    (["compute", "--set", "ITER"], "'ITER': expected NAME=VALUE"),
    (["compute", "--set", "ITER=lots"], "the value after = must be an integer"),
    (["compute", "--set", "NOPE=1"], "no parameter 'NOPE'"),
    (["compute", "--set", "ITER=5", "--set", "ITER=6"], "--set ITER is given twice"),
    (["compute", "--budget", "-5"], "argument --budget: expected a positive integer"),
    (["compute", "--profile", "pentium9"], "no profile named 'pentium9'"),
    (["kernel", "--set", "steps=1"], "steps must be an int from 2"),
])
def test_cli_bad_input_exits_2_with_a_message_and_no_traceback(args, words):
    out = hvsim_cli("compare", *args)
    assert out.returncode == 2
    assert words in out.stderr and "Traceback" not in out.stderr and out.stdout == ""


def test_cli_help_lists_the_guests_and_each_ones_hosts():
    out = hvsim_cli("compare", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "guests: kernel, mm:fork," in text and "minios:all" in text
    assert ("hosts: kernel: native, shadow, vtx, emulate, dbt, bt, rawmode; mm: "
            + ", ".join(W.HOSTS) + "; minios: " + ", ".join(PV.HOSTS)) in text
    assert "1 = a host differs or did not finish" in text
