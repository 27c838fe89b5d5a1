"""Binary translation on the workload harnesses (hvsim/workloads.py, hvsim/pvworkloads.py):
mm.s and minios's native build end in the same guest-visible state under BT as natively
-- registers, RESULTS, page tables with their A/D bits, the #PF log, the disk, the
console (oracle: the native run)."""
import pytest

from hvsim import pvworkloads as P
from hvsim import workloads as W


@pytest.mark.parametrize("workload", ["mixed", "fork", "demand"])
def test_mm_workloads_identical_to_native(workload):
    nat = W.run(workload, "native")
    bt = W.run(workload, "bt")
    assert W.differences(nat, bt) == [] and nat == bt
    s = bt.monitor.stats
    assert s["callouts"] > 0 and s["translated"] > 0 and s["trace_faults"] > 0


@pytest.mark.parametrize("workload", ["all"])
def test_minios_identical_to_native(workload):
    nat = P.run(workload, "native")
    bt = P.run(workload, "bt")
    assert W.differences(nat, bt) == [] and nat == bt
    assert bt.monitor.counters["chain_patches"] > 0
