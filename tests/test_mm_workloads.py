"""The memory-management workloads (hvsim/guests/mm.s) through hvsim.workloads.

Two oracles. The differential one: the guest-visible state of a run (registers, the
RESULTS area, the paging area with the A/D bits of the guest's own PTEs, the #PF log,
the console) is the same natively, under VT-x without EPT and under EPT. The naive one:
checksums, A/D counts and the fault log recomputed in Python from the parameters
(the formulas are the ones mm.s's header states), so a kernel that computed the wrong
thing identically on every host would still fail.
"""
import dataclasses
import functools

import pytest

from hvsim.guests import MM_WORKLOADS, mm_kernel
from hvsim.workloads import (HOSTS, STATUS_OK, WORKLOADS, WorkloadError, differences, run)

MASK = 0xFFFFFFFF
WBASE, DEMAND_BASE, COW_BASE = 0x400000, 0x800000, 0xC00000
PTE_P, PTE_RW, PTE_A, PTE_D = 1, 2, 0x20, 0x40
PF_P, PF_W = 1, 2


@functools.lru_cache(maxsize=None)
def _run(workload, host="native", **params):
    """One run per (workload, host, parameters) for the whole module."""
    return run(workload, host, **params)


# ---- the naive reference ------------------------------------------------------------
def fork_sum(p):
    return sum(lin + r for r in range(p["ROUNDS"])
               for lin in range(WBASE, WBASE + p["N_PAGES"] * 4096, p["STRIDE"])) & MASK


def scan_sum(rounds, spaces, pages):
    """ctxsw and wss: page p of space s starts as WBASE + 4096p + s, +1 per visit."""
    return sum(WBASE + 4096 * q + s + r for r in range(rounds) for s in range(spaces)
               for q in range(pages)) & MASK


def touched(base, i):
    return base + 4096 * i + ((i * 0x104) & 0xFFC)


def demand_sum(p):
    written = sum(touched(DEMAND_BASE, i) for i in range(1, p["N_DEMAND"], 2))
    cow = sum(2 * touched(COW_BASE, c) + 3 for c in range(p["COW_PAGES"]))
    return (written + cow) & MASK


def demand_faults(p):
    return ([(touched(DEMAND_BASE, i), PF_W if i % 2 else 0) for i in range(p["N_DEMAND"])]
            + [(touched(COW_BASE, c), PF_P | PF_W) for c in range(p["COW_PAGES"])])


def compute(p):
    x, s = 1, 0
    for _ in range(p["ITER"]):
        x = (x * 1103515245 + 12345) & MASK
        s ^= x >> 16
        s = ((s << 5) | (s >> 27)) & MASK
        s = (s + x) & MASK
    return s, x


def expected_records(p):
    """(checksum, A, D) of each workload's record."""
    return {
        "fork": (fork_sum(p), p["ROUNDS"] * p["N_PAGES"], p["ROUNDS"] * p["N_PAGES"]),
        "ctxsw": (scan_sum(p["ROUNDS"], p["K_SPACES"], p["PAGES_PER"]),
                  p["K_SPACES"] * p["PAGES_PER"], p["K_SPACES"] * p["PAGES_PER"]),
        "wss": (scan_sum(p["ROUNDS"], 1, p["WS_PAGES"]), p["WS_PAGES"], p["WS_PAGES"]),
        "demand": (demand_sum(p), p["N_DEMAND"] + p["COW_PAGES"],
                   p["N_DEMAND"] // 2 + p["COW_PAGES"]),
        "compute": (compute(p)[0], 0, 0),
    }


# ---- the differential test ------------------------------------------------------------
@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize("host", [h for h in HOSTS if h != "native"])
def test_same_guest_state_natively_and_on_host(workload, host):
    native, other = _run(workload), _run(workload, host)
    assert other.event.kind == "halt" and other.status == STATUS_OK
    assert native == other, "\n".join(differences(native, other))
    assert native.guest_state() == other.guest_state()


@pytest.mark.parametrize("workload", WORKLOADS)
def test_checksums_and_ad_counts_match_the_reference(workload):
    r = _run(workload)
    want = expected_records(r.params)
    ran = [w for w, bit in MM_WORKLOADS.items() if w != "mixed" and bit & MM_WORKLOADS[workload]]
    for name, rec in r.records.items():
        if name in ran:
            assert rec[:3] == want[name], name
        else:
            assert rec == (0, 0, 0, 0), name
    assert r.console == "mm ok\n"
    # the result registers (mm.s's header): the records summed; ESP is not compared
    recs = r.records.values()
    assert "esp" not in r.regs
    assert r.regs["ebx"] == sum(x.checksum for x in recs) & MASK
    assert (r.regs["esi"], r.regs["edi"]) == (sum(x.accessed for x in recs),
                                              sum(x.dirty for x in recs))
    assert (r.regs["eax"], r.regs["ecx"], r.regs["edx"], r.regs["ebp"]) == \
        (STATUS_OK, r.faults_taken, r.pool[1], MM_WORKLOADS[workload])


def test_mixed_runs_each_workload_as_alone():
    mixed = _run("mixed")
    for name in ("fork", "ctxsw", "wss", "demand", "compute"):
        assert mixed.records[name] == _run(name).records[name], name
    assert mixed.faults == _run("demand").faults


# ---- what each workload must have done ------------------------------------------------
def test_fork_returns_every_frame_to_the_pool():
    r = _run("fork")
    p = r.params
    start, end, fewest = r.pool
    assert r.records["fork"].aux == 0 and start == end
    assert fewest == start - (p["N_PAGES"] + 2)          # a directory, a table, the pages
    assert r.faults == []
    # the child's tables were cleared when it was reaped: no PDE beyond the kernel's
    assert r.pte(r.layout["KPD"] + 4) == 0


def test_ctxsw_spaces_have_their_own_frames():
    r = _run("ctxsw", K_SPACES=3, PAGES_PER=5, ROUNDS=3)
    p = r.params
    assert r.records["ctxsw"][:3] == expected_records(p)["ctxsw"]
    assert r.records["ctxsw"].aux == 3 * (5 + 2)
    assert r.pool[0] - r.pool[1] == 3 * 7
    assert r == _run("ctxsw", "ept", K_SPACES=3, PAGES_PER=5, ROUNDS=3)


def test_wss_larger_than_the_tlb_misses_on_every_access():
    big, small = _run("wss"), _run("wss", WS_PAGES=16, ROUNDS=8)
    assert big.params["WS_PAGES"] > 64                    # the machine's TLB: 16 x 4
    misses = big.counters["tlb_misses"]
    assert misses >= big.params["WS_PAGES"] * big.params["ROUNDS"]
    assert small.counters["tlb_misses"] < 2 * 16          # it fits: about one miss per page
    assert small.records["wss"][:3] == expected_records(small.params)["wss"]


def test_demand_fault_log_pte_bits_and_counts():
    r = _run("demand")
    p = r.params
    want = demand_faults(p)
    assert r.faults == want
    assert r.faults_taken == len(want) == r.records["demand"].aux and r.faults_dropped == 0
    kpd = r.layout["KPD"]
    demand_pt = r.pte(kpd + 4 * (DEMAND_BASE >> 22)) & ~0xFFF
    cow_pt = r.pte(kpd + 4 * (COW_BASE >> 22)) & ~0xFFF
    for i in range(p["N_DEMAND"]):                        # read: A; written: A and D
        pte = r.pte(demand_pt + 4 * i)
        assert pte & (PTE_P | PTE_RW | PTE_A) == PTE_P | PTE_RW | PTE_A, i
        assert bool(pte & PTE_D) == bool(i % 2), i
    assert r.pte(demand_pt + 4 * p["N_DEMAND"]) == 0      # nothing beyond what was touched
    for c in range(p["COW_PAGES"]):                       # made writable, then written
        assert r.pte(cow_pt + 4 * c) & 0x67 == PTE_P | PTE_RW | PTE_A | PTE_D, c
    frames = {r.pte(demand_pt + 4 * i) & ~0xFFF for i in range(p["N_DEMAND"])}
    assert len(frames) == p["N_DEMAND"]                   # one fresh frame per fault


def test_demand_fault_log_overflow_is_counted():
    r = _run("demand", N_DEMAND=70, COW_PAGES=1)
    assert r.faults_taken == 71 and r.faults_dropped == 71 - 64
    assert r.faults == demand_faults(r.params)[:64]


def test_compute_matches_the_reference():
    r = _run("compute", ITER=777)
    assert (r.records["compute"].checksum, r.records["compute"].aux) == compute(r.params)


def test_differences_name_the_dword_and_the_fault_that_differ():
    a = _run("demand")
    assert differences(a, _run("demand", "ept")) == []
    at = (a.pte(a.layout["KPD"] + 4 * (DEMAND_BASE >> 22)) & ~0xFFF) + 4   # page 1: written
    pte = a.pte(at)
    tables = bytearray(a.tables)
    tables[at - a.layout["KPD"]] ^= PTE_D                 # a D bit the other host missed
    b = dataclasses.replace(a, host="other", tables=bytes(tables), faults=a.faults[:-1])
    assert a != b
    assert differences(a, b) == [
        f"tables {at:#07x}: {pte:#010x} on native, {pte & ~PTE_D:#010x} on other",
        "faults: 20 on native, 19 on other; #PF 19 is CR2 0xc0330c error 0x3 on native, "
        "none on other"]


# ---- failures ---------------------------------------------------------------------------
def test_a_run_out_of_budget_raises_naming_workload_host_and_eip():
    with pytest.raises(WorkloadError, match=r"'compute' on host 'ept' did not halt.*budget.*eip=0x"):
        run("compute", "ept", budget=2000)


def test_an_empty_pool_is_reported_by_the_guest():
    with pytest.raises(WorkloadError, match="frame pool ran dry"):
        run("wss", WS_PAGES=200)
    r = run("wss", WS_PAGES=200, check=False)
    assert r.event.kind == "halt" and r.status == 0xBAD3 and r.pool[2] == 0
    assert r.console == "mm FAIL the frame pool is empty\n"


@pytest.mark.parametrize("call, message", [
    (lambda: mm_kernel("forks"), r"no mm workload named 'forks'; the workloads are fork, ctxsw"),
    (lambda: mm_kernel("fork", NPAGES=3), r"no parameter 'NPAGES'; its parameters are ROUNDS"),
    (lambda: mm_kernel("fork", RESULTS=0), r"no parameter 'RESULTS'"),
    (lambda: mm_kernel("fork", ROUNDS=0), r"ROUNDS must be an int from 1 to"),
    (lambda: mm_kernel("fork", ROUNDS=True), r"ROUNDS must be an int"),
    (lambda: mm_kernel("ctxsw", K_SPACES=17), r"K_SPACES must be an int from 1 to 16"),
    (lambda: mm_kernel("fork", STRIDE=12), r"STRIDE must be a multiple of 4 that divides 4096"),
    (lambda: run("wss", host="shadowy"), r"no host named 'shadowy'; the hosts are native"),
    (lambda: run("nope"), r"no mm workload named 'nope'"),
])
def test_bad_names_and_parameters_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_doctests():
    import doctest

    import hvsim.guests
    import hvsim.workloads
    for mod in (hvsim.workloads, hvsim.guests):
        result = doctest.testmod(mod)
        assert result.attempted > 0 and result.failed == 0, mod.__name__
