"""VPIDs: TLB entries tagged with the virtual-processor identifier (SDM Vol. 3C, 29.1 and
29.4, 082US numbering), so VM entries and exits need not flush the TLB.

Oracles, from the SDM:
* an entry serves only the VPID it was made under (29.4.2: "the logical processor may
  use cached mappings associated with the current VPID");
* with "enable VPID" 0, a VM entry and a VM exit invalidate VPID 0000H's linear and
  combined mappings (27.3.2.5, 28.5.5); with it 1 they invalidate nothing;
* MOV to CR3 and INVLPG invalidate the current VPID's mappings (29.4.3.1), INVVPID the
  VPIDs its type names (31.3 INVVPID);
* "enable VPID" = 1 with VPID 0000H fails the entry with VMfailValid(7)
  (tests/test_vmx_entry_checks.py, check 122).
"""
import numpy as np
import pytest

from hvsim.arch import layout as L
from hvsim.arch import vmx as X
from hvsim.arch.counters import C_PAGE_WALKS, C_TLB_FLUSH
from hvsim.arch.ept import EPTP_AD
from hvsim.arch.cr import CR0_PE, CR0_PG
from hvsim.arch.pte import ACC_READ
from hvsim.mmu import tlb_contents
from hvsim.mmu.paging import translate, tlb_flush, tlb_invlpg
from hvsim.warmup import identity_map_4k

from vmx_harness import vmx_run, GUEST_DATA

SEC_ON = X.CPU_TRUE_ALLOWED0 | X.CPU_ACTIVATE_SECONDARY_CONTROLS
WITH_VPID = {"CPU_BASED_VM_EXEC_CONTROL": SEC_ON,
             "SECONDARY_VM_EXEC_CONTROL": X.SEC_ENABLE_VPID, "VIRTUAL_PROCESSOR_ID": 5}


# ---------------------------------------------------------------- the TLB, kernel level
class Box:
    """A bare paging state: two page directories mapping linear 0x7000 to two frames."""

    def __init__(self):
        self.mem = np.zeros(1 << 20, np.uint8)
        self.st = np.zeros(L.ST_SIZE, np.int64)
        self.tlb = np.zeros(16 * 4 * L.TLB_FIELDS, np.int64)
        st = self.st
        st[L.CFG_MEM_SIZE], st[L.CFG_TLB_SETS], st[L.CFG_TLB_WAYS] = 1 << 20, 16, 4
        st[L.CFG_TLB_ENABLED] = 1
        st[L.CR0] = CR0_PE | CR0_PG
        self.pd_a = identity_map_4k(self.mem, 0x80000, 1 << 20)
        self.pd_b = identity_map_4k(self.mem, 0xA0000, 1 << 20)
        # in directory B, linear page 7 maps frame 9
        self.mem[0xA1000 + 7 * 4:0xA1000 + 8 * 4] = np.frombuffer(
            (0x9000 | 7).to_bytes(4, "little"), np.uint8)

    def tr(self, vpid, pd, lin=0x7123):
        self.st[L.VPID] = vpid
        self.st[L.CR3] = pd
        return translate(self.mem, self.st, self.tlb, lin, ACC_READ)

    def walks(self):
        return int(self.st[L.COUNTERS + C_PAGE_WALKS])

    def cached(self):
        return sorted((e.vpid, e.lin_page, e.frame) for e in tlb_contents(self.st, self.tlb))


def test_an_entry_serves_only_the_vpid_it_was_made_under():
    box = Box()
    assert box.tr(5, box.pd_b) == 0x9123 and box.walks() == 1
    # VPID 0 with the other tables: no use of VPID 5's entry -- a walk, its own frame
    assert box.tr(0, box.pd_a) == 0x7123 and box.walks() == 2
    # both are cached, each tagged, and each hits for its own VPID (no CR3 write between:
    # the tables changed under the TLB, which is software's business)
    assert box.cached() == [(0, 0x7000, 0x7000), (5, 0x7000, 0x9000)]
    assert box.tr(5, box.pd_a) == 0x9123 and box.tr(0, box.pd_b) == 0x7123
    assert box.walks() == 2


def test_a_flush_or_invlpg_drops_the_current_vpids_entries_only():
    box = Box()
    box.tr(5, box.pd_b)
    box.tr(5, box.pd_b, 0x8000)
    box.tr(0, box.pd_a)
    box.st[L.VPID] = 5
    tlb_invlpg(box.st, box.tlb, 0x7000)                 # INVLPG in the guest
    assert box.cached() == [(0, 0x7000, 0x7000), (5, 0x8000, 0x8000)]
    tlb_flush(box.st, box.tlb, 0)                       # MOV to CR3 in the guest
    assert box.cached() == [(0, 0x7000, 0x7000)]
    box.tr(5, box.pd_b)
    box.st[L.VPID] = 0
    tlb_flush(box.st, box.tlb, 0)                       # the host's MOV to CR3
    assert box.cached() == [(5, 0x7000, 0x9000)]


# ---------------------------------------------------------------- VM entries and exits
GUEST = f"mov eax, [{GUEST_DATA:#x}]\ncpuid\nmov eax, [{GUEST_DATA:#x}]\ncpuid\n"


def _twice(fields):
    """Run to the first CPUID exit, resume to the second: (run, flushes and page walks
    during the resumed stretch -- the entry, the guest's second load, the exit)."""
    r = vmx_run(GUEST, fields)
    assert r.exited and r.reason == X.ExitReason.CPUID
    c0 = r.m._st[L.COUNTERS:L.COUNTERS + L.N_COUNTERS].copy()
    r.resume()
    assert r.exited and r.reason == X.ExitReason.CPUID
    c1 = r.m._st[L.COUNTERS:L.COUNTERS + L.N_COUNTERS]
    return r, int(c1[C_TLB_FLUSH] - c0[C_TLB_FLUSH]), int(c1[C_PAGE_WALKS] - c0[C_PAGE_WALKS])


def test_without_vpid_entries_and_exits_flush_and_with_vpid_they_do_not():
    plain, flushes, walks = _twice({})
    tagged, flushes_v, walks_v = _twice(WITH_VPID)
    assert flushes == 2 and flushes_v == 0               # 27.3.2.5 and 28.5.5
    # with VPID 5 the guest's code and data pages were still cached when it came back
    # (and the host's across the exit): at least those two walks fewer
    assert walks_v <= walks - 2
    assert tagged.m._st[L.VPID] == 0 and plain.m._st[L.VPID] == 0      # back in root
    mine = {(e.vpid, e.lin_page) for e in tlb_contents(tagged.m._st, tagged.m._tlb)}
    assert (5, GUEST_DATA) in mine and any(v == 0 for v, _ in mine)
    theirs = {e.vpid for e in tlb_contents(plain.m._st, plain.m._tlb)}
    assert theirs == {0}
    # the guest computed the same either way
    assert plain.exit_gprs() == tagged.exit_gprs()


def test_an_entry_under_another_eptp_drops_the_vpids_entries():
    # combined mappings are associated with the EPTP they were made under (29.4.1): hvsim
    # drops a VPID's entries when it enters that VPID with another EPT than last time
    from test_ept import EptTables
    from vmx_harness import EPT_PML4, MEM

    def ept(m, t, hv, guest):
        EptTables(m.memory, EPT_PML4).identity(MEM)
    eptp = EPT_PML4 | (3 << 3) | X.MEMTYPE_WB
    fields = dict(WITH_VPID, SECONDARY_VM_EXEC_CONTROL=X.SEC_ENABLE_VPID | X.SEC_ENABLE_EPT,
                  EPT_POINTER=eptp)
    r = vmx_run(GUEST, fields, setup=ept)
    assert r.exited
    flushes = r.m.counters["tlb_flushes"]
    r.resume()                                   # the same EPTP: nothing dropped
    assert r.exited and r.m.counters["tlb_flushes"] == flushes
    r2 = vmx_run(GUEST + "cpuid\n", fields, setup=ept)
    r2.resume()
    flushes = r2.m.counters["tlb_flushes"]
    r2.resume({"EPT_POINTER": eptp | EPTP_AD})     # the same tables, another EPTP
    assert r2.exited and r2.m.counters["tlb_flushes"] == flushes + 1


@pytest.mark.parametrize("kind, vpid, lin, left", [
    (0, 5, 0x7000, {(0, 0x7000), (5, 0x8000), (6, 0x7000)}),   # individual address
    (1, 5, 0, {(0, 0x7000), (6, 0x7000)}),                     # single context
    (2, 0, 0, {(0, 0x7000)}),                                  # all contexts but 0000H
    (3, 5, 0, {(0, 0x7000), (5, 0x8000), (6, 0x7000)}),        # ... retaining globals
])
def test_invvpid_invalidates_what_its_type_names(kind, vpid, lin, left):
    # root-mode INVVPID with the TLB holding entries of VPIDs 0, 5 and 6 (VPID 5's page
    # 0x8000 global, cached while CR4.PGE was 1)
    from vmx_harness import root_run
    from hvsim.mmu.tlb import tlb_fill, TLBF_G

    def fill(m, t, prog):
        st, tlb = m._st, m._tlb
        for v, page, flags in ((0, 7, 0), (5, 7, 0), (5, 8, TLBF_G), (6, 7, 0)):
            st[L.VPID] = v
            tlb_fill(st, tlb, page, page, flags)
        st[L.VPID] = 0
    src = (f"vmxon [ptr]\nvmptrld [vmcs]\nmov ecx, {kind}\ninvvpid ecx, [desc]\n"
           f"pushfd\npop edi\nhlt\nalign 8\nptr: dd 0x120000, 0\nvmcs: dd 0x121000, 0\n"
           f"desc: dd {vpid}, 0, {lin:#x}, 0\n")
    m, ev, prog = root_run(src, setup=fill)
    assert ev.kind == "halt" and m.cpu.edi & 0x41 == 0                  # VMsucceed
    got = {(e.vpid, e.lin_page) for e in tlb_contents(m._st, m._tlb)
           if (e.vpid, e.lin_page) in {(0, 0x7000), (5, 0x7000), (5, 0x8000), (6, 0x7000)}}
    assert got == left


def test_the_assembly_vmm_runs_its_guest_with_vpid_1_or_without_vpids():
    # hvsim/guests/vmm.s enables VPID 1 as SimpleVisor does; SECONDARY=0 turns it off.
    # Same guest, same result; only the TLB's work differs: 2 flushes per round trip
    # without VPIDs (the exit's and the entry's); with VPID 1, one in all: the first
    # entry drops whatever VPID 1 had cached under another EPT context (hvsim's rule)
    from hvsim import Machine
    from hvsim.guests import hypervisor
    src = "mov esi, 50\nagain:\nxor eax, eax\ncpuid\ndec esi\njnz again\nvmcall\n"
    runs = {}
    for secondary in (X.SEC_ENABLE_VPID, 0):
        vmm, guest = hypervisor(src, SECONDARY=secondary)
        m = Machine(memory=4 << 20)
        m.load(vmm)
        m.write_physical(guest.origin, guest.code)
        ev = m.run(max_steps=1_000_000)
        assert ev.kind == "halt" and m.cpu.esi == 0xE817 and m.cpu.ebx == X.ExitReason.VMCALL
        runs[secondary] = m.counters
    with_vpid, without = runs[X.SEC_ENABLE_VPID], runs[0]
    assert with_vpid["vm_entries"] == without["vm_entries"] == 51
    assert with_vpid["instructions"] == without["instructions"]
    assert without["tlb_flushes"] - with_vpid["tlb_flushes"] == 2 * 51 - 1
    assert with_vpid["page_walks"] < without["page_walks"] - 100
