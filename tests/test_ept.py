"""EPT (hvsim/mmu/ept.py and the 2-D walk in hvsim/mmu/paging.py), against named oracles.

* the jitted walk on random EPT and guest tables against tests/naive_ept.py (outcome,
  exit qualification, guest-physical and guest-linear address, A/D flags in memory,
  reference counts);
* hand-derived expectations, each citing the SDM rule (Vol. 3C, 082US numbering;
  older editions number the EPT chapter 28 and its sections 28.2.x): the 14 memory
  references of a cold access, EPT violations with their qualification bit by bit,
  misconfigurations, A/D flags, remapping, isolation, INVEPT;
* twin machines: the same guest with and without an identity EPT ends in the same state.

The VMM is written in guest assembly, as in tests/test_vmx.py (whose harness this file
copies the small parts of): VMXON, VMCLEAR, VMPTRLD, a table of VMWRITEs, VMLAUNCH; at
HOST_RIP it may handle one exit reason and VMRESUME, and halts on any other exit with
EBX = exit reason, ECX = qualification, EDX = instruction length.
"""
import hashlib
import random

import numpy as np
import pytest

from hvsim import Machine, assemble
from hvsim.machine import GuestMemoryError
from hvsim.arch import layout as L
from hvsim.arch import vmcs as V
from hvsim.arch import vmx as X
from hvsim.arch.counters import (C_TLB_HIT, C_TLB_MISS, C_PAGE_WALKS, C_WALK_REFS,
                                C_EPT_WALKS, C_EPT_WALK_REFS)
from hvsim.arch.cr import CR0_PE, CR0_PG, CR0_WP, CR0_NE, CR4_PSE, CR4_VMXE
from hvsim.arch.ept import (EPT_R, EPT_W, EPT_X, EPT_RWX, EPT_LARGE, EPT_A, EPT_D,
                           EPTP_AD, EPTP_WALK_LENGTH_4, EPT_MT_WB)
from hvsim.arch.flags import FIXED1
from hvsim.cpu import table
from hvsim.arch.pte import PTE_P, PTE_RW, PTE_US, PTE_A, PTE_D, PTE_PS, ACC_READ, ACC_WRITE, \
    ACC_USER, ACC_FETCH
from hvsim.mmu.ept import walk_ept
from hvsim.mmu.paging import translate_pg, read_lin
from hvsim.rings.setup import install
from hvsim.warmup import enable_paging, identity_map_4k

from naive_ept import naive_ept, naive_2d, Q_READ, Q_WRITE, Q_FETCH

VIOLATION, MISCONFIG = int(X.ExitReason.EPT_VIOLATION), int(X.ExitReason.EPT_MISCONFIG)
# Table 28-7 bits, by name
Q_R, Q_W, Q_X = X.EPT_QUAL_READ, X.EPT_QUAL_WRITE, X.EPT_QUAL_FETCH
Q_RD, Q_WR, Q_EX = X.EPT_QUAL_READABLE, X.EPT_QUAL_WRITABLE, X.EPT_QUAL_EXECUTABLE
Q_GLA, Q_FINAL = X.EPT_QUAL_LINEAR_VALID, X.EPT_QUAL_FINAL_TRANSLATION
URW = PTE_P | PTE_RW | PTE_US
PAGE = 0x1000


# ---------------------------------------------------------------- building EPT tables
class EptTables:
    """EPT tables (SDM 29.3.2) written into ``mem`` (a uint8 array), one 4 KiB table after
    another from ``base``; intermediate entries get R/W/X = 111."""

    def __init__(self, mem, base):
        self.mem, self.next = mem, base
        self.pml4 = self._table()

    def _table(self):
        t = self.next
        self.next += PAGE
        self.mem[t:t + PAGE] = 0
        return t

    def get(self, a):
        return int.from_bytes(bytes(self.mem[a:a + 8]), "little")

    def put(self, a, v):
        self.mem[a:a + 8] = np.frombuffer(int(v).to_bytes(8, "little"), np.uint8)

    def _down(self, table, gpa, shift):
        a = table + 8 * ((gpa >> shift) & 0x1FF)
        e = self.get(a)
        if e & EPT_RWX == 0:
            t = self._table()
            self.put(a, t | EPT_RWX)
            return t
        return e & 0xFFFFF000

    def entry(self, gpa, level):
        """Address of the entry of ``gpa`` at ``level`` (0 PML4E .. 3 PTE), building the
        path to it."""
        table = self.pml4
        for lv, shift in enumerate((39, 30, 21, 12)):
            if lv == level:
                return table + 8 * ((gpa >> shift) & 0x1FF)
            table = self._down(table, gpa, shift)

    def map_4k(self, gpa, hpa, rights=EPT_RWX, memtype=EPT_MT_WB, extra=0):
        a = self.entry(gpa, 3)
        self.put(a, (hpa & 0xFFFFF000) | rights | (memtype << 3) | extra)
        return a

    def map_2m(self, gpa, hpa, rights=EPT_RWX, memtype=EPT_MT_WB, extra=0):
        a = self.entry(gpa, 2)
        self.put(a, (hpa & 0xFFE00000) | rights | (memtype << 3) | EPT_LARGE | extra)
        return a

    def identity(self, size, large=False, rights=EPT_RWX):
        for gpa in range(0, size, 2 << 20 if large else PAGE):
            (self.map_2m if large else self.map_4k)(gpa, gpa, rights)

    def eptp(self, ad=False):
        # SDM Table 25-9: memory type WB (6), walk length - 1 = 3, bit 6 A/D, PML4 address
        return self.pml4 | EPT_MT_WB | EPTP_WALK_LENGTH_4 | (EPTP_AD if ad else 0)


# ---------------------------------------------------------------- kernel-level state
class Box:
    """A bare machine state for the MMU kernels in VMX non-root operation with EPT."""

    def __init__(self, mem_size=4 << 20, sets=4, ways=2, tlb_on=True, pse=True, wp=False):
        self.mem = np.zeros(mem_size, np.uint8)
        self.st = np.zeros(L.ST_SIZE, np.int64)
        self.tlb = np.zeros(sets * ways * L.TLB_FIELDS, np.int64)
        self.pg = np.zeros(mem_size >> 12, np.int64)
        st = self.st
        st[L.CFG_MEM_SIZE] = mem_size
        st[L.CFG_TLB_SETS], st[L.CFG_TLB_WAYS] = sets, ways
        st[L.CFG_TLB_ENABLED] = 1 if tlb_on else 0
        st[L.CR0] = CR0_PE | CR0_PG | (CR0_WP if wp else 0)
        st[L.CR4] = CR4_PSE if pse else 0
        st[L.VMX_NONROOT] = 1
        st[L.VMX_EPT] = 1
        # the walk calls the EPT walker by the address run() would copy there
        table.ensure(table.K_EPT)
        st[L.EPT_WALKER] = table.KTAB[table.K_EPT]
        self.ept = EptTables(self.mem, 0x380000)

    def set_eptp(self, eptp):
        self.st[L.VMCS_CACHE + V.slot("EPT_POINTER")] = eptp

    def put32(self, a, v):
        self.mem[a:a + 4] = np.frombuffer(int(v).to_bytes(4, "little"), np.uint8)

    def get32(self, a):
        return int.from_bytes(bytes(self.mem[a:a + 4]), "little")

    def field(self, name):
        return int(self.st[L.VMCS_CACHE + V.slot(name)])

    def c(self, idx):
        return int(self.st[L.COUNTERS + idx])

    def outcome(self, value):
        """The value, or ('violation', qual, gpa, gla) / ('misconfig', gpa) /
        ('pf', error) / ('bus', addr); the pending fault is consumed."""
        st = self.st
        kind = int(st[L.FAULT_PENDING])
        st[L.FAULT_PENDING] = 0
        if kind == 0:
            return int(value)
        if kind == L.FAULT_VMEXIT:
            reason = int(st[L.FAULT_VECTOR])
            if reason == VIOLATION:
                return ("violation", int(st[L.FAULT_ERROR]), self.field("GUEST_PHYSICAL_ADDRESS"),
                        self.field("GUEST_LINEAR_ADDRESS"))
            assert reason == MISCONFIG and st[L.FAULT_ERROR] == 0
            return ("misconfig", self.field("GUEST_PHYSICAL_ADDRESS"))
        if kind == L.FAULT_EXCEPTION:
            assert st[L.FAULT_VECTOR] == 14
            return ("pf", int(st[L.FAULT_ERROR]))
        assert kind == L.FAULT_BUS
        return ("bus", int(st[L.FAULT_ADDR]))

    def tr(self, lin, acc=ACC_READ):
        return self.outcome(translate_pg(self.mem, self.st, self.tlb, self.pg, lin, acc))

    def refs(self):
        return self.c(C_WALK_REFS) + self.c(C_EPT_WALK_REFS)


def guest_identity(box, pd=0x300000, flags=URW):
    """Guest page directory at ``pd`` mapping linear 0-4 MiB 1:1 with 4 KiB pages."""
    identity_map_4k(box.mem, pd, 4 << 20, user=bool(flags & PTE_US))
    box.st[L.CR3] = pd
    return pd


# ---------------------------------------------------------------- the 2-D walk's cost
@pytest.mark.parametrize("guest_large, ept_large, refs", [
    (False, False, 14),   # (2 + 1)(4 + 1) - 1: 2 guest entries + 3 EPT walks of 4
    (False, True, 11),    # EPT 2 MiB leaves (29.3.2): 3 EPT walks of 3 entries + 2
    (True, False, 9),     # a 4 MiB guest page (Vol. 3A 4.3): (1 + 1)(4 + 1) - 1
])
def test_cold_access_makes_the_2d_walks_references_and_a_hit_none(guest_large, ept_large, refs):
    # Bhargava et al., ASPLOS 2008: each guest paging-structure reference and the final
    # guest-physical address take a full EPT walk; nothing is cached but the TLB
    box = Box()
    pd = guest_identity(box)
    if guest_large:
        box.put32(pd + 4 * 0, 0 | PTE_PS | URW)                # linear 0-4 MiB: one 4 MiB page
    box.ept.identity(4 << 20, large=ept_large)
    box.set_eptp(box.ept.eptp())
    lin = 0x250ABC
    assert box.tr(lin) == lin
    assert box.refs() == refs
    assert box.c(C_EPT_WALKS) == (2 if guest_large else 3)
    assert box.c(C_WALK_REFS) == (1 if guest_large else 2)
    assert box.c(C_PAGE_WALKS) == 1 and box.c(C_TLB_MISS) == 1
    # warm: the TLB holds the combined translation -- not one more reference
    assert box.tr(lin + 4) == lin + 4
    assert box.refs() == refs and box.c(C_TLB_HIT) == 1 and box.c(C_EPT_WALKS) == (2 if guest_large else 3)


def test_tlb_caches_guest_linear_to_host_physical():
    # the combined translation (SDM 29.4.1, "combined mappings"): linear -> host-physical
    box = Box()
    guest_identity(box)
    box.ept.identity(4 << 20)
    box.ept.map_4k(0x250000, 0x3C0000)                  # GPA 0x250000 -> HPA 0x3C0000
    box.set_eptp(box.ept.eptp())
    assert box.tr(0x250123) == 0x3C0123
    refs = box.refs()
    # the first write walks again to set the guest's D (Vol. 3A 4.8: the cached entry's
    # D is 0); the second hits
    assert box.tr(0x250FFC, ACC_WRITE) == 0x3C0FFC
    assert box.tr(0x250000, ACC_WRITE) == 0x3C0000
    assert box.refs() == refs + 14
    from hvsim.mmu import tlb_contents
    (e,) = [e for e in tlb_contents(box.st, box.tlb) if e.lin_page == 0x250000]
    assert e.frame == 0x3C0000 and e.dirty


# ---------------------------------------------------------------- random tables vs naive
def _random_ept_entry(rng, next_table, kind):
    """A random EPT entry: mostly valid, sometimes not present, misconfigured or odd.
    Leaves map frames below EPT_TABLES, so guest A/D writes never land in EPT tables."""
    rights = rng.choice([7] * 8 + [1, 3, 5, 4, 0, 2, 6])
    memtype = rng.choice([6] * 8 + [0, 4, 1, 5, 2, 3, 7])
    e = rights | (rng.random() < 0.3) * EPT_A | (rng.random() < 0.2) * EPT_D
    if rng.random() < 0.02:
        e |= 1 << rng.randrange(32, 52)                     # a reserved address bit
    if kind == "table":
        e |= next_table
        if rng.random() < 0.05:
            e |= rng.choice([8, 16, 32, 64, 128])           # reserved bits 7:3
    elif kind == "2m":
        e |= (memtype << 3) | EPT_LARGE                     # frame 0
        if rng.random() < 0.05:
            e |= 1 << rng.randrange(12, 21)                 # reserved bits 20:12
    else:
        e |= (rng.randrange(EPT_TABLES >> 12) << 12) | (memtype << 3)
    if rng.random() < 0.03:
        e &= ~EPT_RWX                                       # not present, junk kept
    return e


EPT_TABLES = 0x380000     # Box's EPT tables start here


def _random_world(rng, box, ad, bus=False):
    """Random guest tables (guest-physical 0-4 MiB) and random EPT tables over them."""
    ept = box.ept
    # guest: a directory at GPA 0x100000, tables at 0x101000.., random PDEs and PTEs
    pd = 0x100000
    box.st[L.CR3] = pd
    tables = [0x101000 + i * PAGE for i in range(6)]
    pdes = rng.sample(range(1024), 12)
    for i, idx in enumerate(pdes):
        rights = PTE_RW | PTE_US if rng.random() < 0.7 else rng.randrange(8) & (PTE_RW | PTE_US)
        flags = PTE_P | rights | (PTE_A if rng.random() < 0.5 else 0)
        if i % 6 == 0:
            pde = rng.randrange(1 << 32) & ~PTE_P                 # not present, junk
        elif i % 6 == 1:
            pde = PTE_PS | flags | (PTE_D if rng.random() < .5 else 0)   # 4 MiB at GPA 0
        else:
            pde = rng.choice(tables) | flags
        box.put32(pd + 4 * idx, pde)
    for t in tables:
        for j in range(1024):
            f = PTE_P | (PTE_RW | PTE_US if rng.random() < 0.8 else 0)
            f |= (PTE_A if rng.random() < 0.5 else 0) | (PTE_D if rng.random() < 0.3 else 0)
            if rng.random() < 0.1:
                f &= ~PTE_P
            box.put32(t + 4 * j, (rng.randrange(1 << 10) << 12) | f)   # GPAs in 0-4 MiB
    # EPT over GPA 0-4 MiB: PML4E -> PDPTE -> PD, whose entries 0 and 1 (2 MiB each) are
    # a random 2 MiB leaf or a page table of random leaves; entry 0 always a table (it
    # holds the guest's directory and tables), entry 1 a table outside memory if ``bus``
    pdpt, pd_ = ept._table(), ept._table()
    ept.put(ept.pml4, _random_ept_entry(rng, pdpt, "table") if rng.random() < 0.15 else pdpt | 7)
    ept.put(pdpt, _random_ept_entry(rng, pd_, "table") if rng.random() < 0.15 else pd_ | 7)
    pt0 = None
    for k in range(2):
        if k == 1 and bus:
            ept.put(pd_ + 8, 0xFFFFF000 | EPT_RWX)               # a bus error below
        elif k == 1 and rng.random() < 0.3:
            ept.put(pd_ + 8, _random_ept_entry(rng, 0, "2m"))
        else:
            pt = ept._table()
            pt0 = pt if k == 0 else pt0
            ept.put(pd_ + 8 * k, pt | 7 if k == 0 or rng.random() < 0.7
                    else _random_ept_entry(rng, pt, "table") & ~EPT_LARGE)
            for j in range(512):
                ept.put(pt + 8 * j, _random_ept_entry(rng, 0, "4k"))
    # keep the guest's tables reachable: its directory always (identity, RWX), its page
    # tables most of the time (identity, often writable: EPT A/D makes their reads writes)
    ept.put(pt0 + 8 * ((pd >> 12) & 0x1FF), pd | 7 | (6 << 3))
    for gpa in tables:
        if rng.random() < 0.85:
            ept.put(pt0 + 8 * ((gpa >> 12) & 0x1FF), gpa | rng.choice([7] * 6 + [3, 1, 5]) | (6 << 3))
    assert ept.next <= 0x3C0000
    box.set_eptp(ept.eptp(ad))
    return [(idx << 22) | (j << 12) for idx in pdes for j in rng.sample(range(1024), 8)]


@pytest.mark.parametrize("ad", [False, True], ids=["ad-off", "ad-on"])
@pytest.mark.parametrize("tlb_on", [False, True], ids=["no-tlb", "tlb"])
def test_2d_walk_matches_naive_reference_on_random_tables(ad, tlb_on):
    """Outcome, qualification, GPA/GLA, A/D flags of both dimensions against naive_2d."""
    seen = {"ok": 0, "pf": 0, "violation": 0, "misconfig": 0, "bus": 0}
    accs = [ACC_READ, ACC_WRITE, ACC_FETCH, ACC_USER, ACC_USER | ACC_WRITE]
    for seed in range(6):
        rng = random.Random(seed * 2 + ad)
        box = Box(tlb_on=tlb_on, wp=bool(seed & 1))
        pages = _random_world(rng, box, ad, bus=seed % 3 == 2)
        ref = bytearray(box.mem.tobytes())
        cr0, cr3, cr4 = (int(box.st[r]) for r in (L.CR0, L.CR3, L.CR4))
        eptp = box.field("EPT_POINTER")
        for _ in range(1200):
            lin = rng.choice(pages) | rng.randrange(PAGE)
            acc = rng.choice(accs)
            refs0, walks0 = box.refs(), box.c(C_EPT_WALKS)
            miss0 = box.c(C_TLB_MISS)
            got = box.tr(lin, acc)
            w = naive_2d(ref, len(ref), cr0, cr3, cr4, eptp, lin, acc)
            if w.hpa is not None:
                want, key = w.hpa, "ok"
            elif w.exit is not None:
                want, key = w.exit, w.exit[0]
            elif w.pf is not None:
                want, key = ("pf", w.pf), "pf"
            else:
                want, key = ("bus", w.bus), "bus"
            assert got == want, (seed, hex(lin), acc)
            seen[key] += 1
            if box.c(C_TLB_MISS) != miss0:            # it walked: the same references
                assert box.refs() - refs0 == w.guest_refs + w.ept_refs, (seed, hex(lin), acc)
                assert box.c(C_EPT_WALKS) - walks0 == w.ept_walks
            else:
                assert box.refs() == refs0 and w.hpa is not None
        # both dimensions' A/D flags: the TLB skips walks but never a flag a walk would set
        assert bytes(box.mem) == bytes(ref), seed
    assert min(seen["ok"], seen["pf"], seen["violation"], seen["misconfig"]) > 500, seen
    assert seen["bus"] > 300, seen


def test_ept_walk_matches_naive_on_random_entries():
    """walk_ept alone, every access kind, on random (often misconfigured) leaves."""
    rng = random.Random(5)
    counts = {"ok": 0, "violation": 0, "misconfig": 0}
    for ad in (False, True):
        box = Box()
        ept = box.ept
        pt = ept.entry(0x200000, 3)                    # the PTE of GPA 0x200000: PT base
        for j in range(512):
            ept.put(pt + 8 * j, _random_ept_entry(rng, 0, "4k"))
        pd_entry = ept.entry(0, 2)                     # GPA 0-2 MiB: 2 MiB leaves
        box.set_eptp(ept.eptp(ad))
        ref = bytearray(box.mem.tobytes())
        for _ in range(3000):
            if rng.random() < 0.2:
                e = _random_ept_entry(rng, 0, "2m")
                ept.put(pd_entry, e)
                ref[pd_entry:pd_entry + 8] = e.to_bytes(8, "little")
                gpa = rng.randrange(2 << 20)
            else:
                gpa = 0x200000 + rng.randrange(2 << 20)
            kind = rng.choice([Q_READ, Q_WRITE, Q_FETCH, Q_READ | Q_WRITE])
            final = rng.randrange(2)
            hpa, rights, dirty = walk_ept(box.mem, box.st, box.pg, gpa, kind, 0x1234, final)
            got = box.outcome(hpa)
            w = naive_ept(ref, len(ref), box.field("EPT_POINTER"), gpa, kind, 0x1234, final)
            want = w.exit if w.exit is not None else w.hpa
            assert got == want, (hex(gpa), kind)
            if w.hpa is not None:
                assert (rights, dirty) == (w.rights, w.dirty)
                counts["ok"] += 1
            else:
                counts[w.exit[0]] += 1
        assert bytes(box.mem) == bytes(ref)
    assert all(n > 300 for n in counts.values()), counts


# ---------------------------------------------------------------- misconfigurations
@pytest.mark.parametrize("level, value, why", [
    (3, 0x250000 | EPT_W | (6 << 3), "W without R (29.3.3.1)"),
    (3, 0x250000 | EPT_W | EPT_X | (6 << 3), "W and X without R (29.3.3.1)"),
    (3, 0x250000 | EPT_RWX | (2 << 3), "leaf memory type 2 (29.3.3.1)"),
    (3, 0x250000 | EPT_RWX | (3 << 3), "leaf memory type 3"),
    (3, 0x250000 | EPT_RWX | (7 << 3), "leaf memory type 7"),
    (3, 0x250000 | EPT_RWX | (6 << 3) | (1 << 32), "bit 32: beyond MAXPHYADDR = 32"),
    (3, 0x250000 | EPT_RWX | (6 << 3) | (1 << 51), "bit 51: the top reserved bit"),
    (1, EPT_RWX | EPT_LARGE, "PDPTE bit 7: 1 GiB pages unsupported (capability bit 17 = 0)"),
    (0, EPT_RWX | (1 << 3), "PML4E bit 3: bits 7:3 reserved"),
    (2, 0x200000 | EPT_RWX | (6 << 3) | EPT_LARGE | (1 << 12), "2 MiB PDE bit 12: bits 20:12 reserved"),
    (2, EPT_RWX | (1 << 6), "PDE referencing a table, bit 6: bits 6:3 reserved"),
])
def test_misconfigurations_exit_49_with_the_guest_physical_address(level, value, why):
    box = Box()
    guest_identity(box)
    box.ept.identity(4 << 20)
    a = box.ept.entry(0x250000, level)
    old = box.ept.get(a)
    keep_table = old & 0xFFFFF000 if level < 2 or (level == 2 and not value & EPT_LARGE) else 0
    box.ept.put(a, value | keep_table)
    box.set_eptp(box.ept.eptp())
    # GUEST_PHYSICAL_ADDRESS is the address being translated when the walk met the entry
    # (28.2.1): a PTE's, the datum; an entry above it also covers the guest's page
    # directory (GPA 0x300000 is in the same 2 MiB), whose read comes first
    gpa = 0x250010 if level == 3 else 0x300000
    assert box.tr(0x250010) == ("misconfig", gpa), why
    # the exit qualification is cleared (SDM 28.2.1: not used by this exit)
    # and a not-present entry is a violation instead, whatever its other bits (29.3.2)
    box.ept.put(a, value & ~EPT_RWX)
    assert box.tr(0x250010)[0] == "violation", why


def test_execute_only_is_not_a_misconfiguration():
    # IA32_VMX_EPT_VPID_CAP bit 0 = 1: X = 1 with R = 0 is allowed (29.3.3.1)
    assert X.VMX_EPT_VPID_CAP & X.EPT_CAP_EXECUTE_ONLY
    box = Box()
    guest_identity(box)
    box.ept.identity(4 << 20)
    box.ept.map_4k(0x250000, 0x250000, EPT_X)
    box.set_eptp(box.ept.eptp())
    assert box.tr(0x250010, ACC_FETCH) == 0x250010
    # a read of the same page, now cached for fetches, must not hit: the TLB keeps EPT's R
    assert box.tr(0x250010, ACC_READ) == ("violation", Q_R | Q_EX | Q_GLA | Q_FINAL,
                                          0x250010, 0x250010)


def test_ept_table_outside_memory_is_a_bus_error_not_an_exit():
    # hvsim's choice (hvsim/mmu/ept.py): a table address below MAXPHYADDR has no reserved
    # bit set (29.3.3.1), so it is read -- and there is no memory there: a bus error
    box = Box()
    guest_identity(box)
    box.ept.identity(4 << 20)           # (0-2 MiB: none of the guest's tables)
    a = box.ept.entry(0x150000, 2)
    table = box.ept.get(a)
    box.ept.put(a, 0xFFFFF000 | EPT_RWX)                 # PDE -> a page table at 4 GiB - 4 KiB
    box.set_eptp(box.ept.eptp())
    assert box.tr(0x150010) == ("bus", 0xFFFFF000 + 8 * 0x150)
    # a datum EPT maps outside memory: translate gives its address, the access a bus error
    box.ept.put(a, table)
    box.ept.map_4k(0x150000, 0xFFFFF000)
    assert box.tr(0x150010) == 0xFFFFF010
    got = read_lin(box.mem, box.st, box.tlb, box.pg, 0x150010, 4, ACC_READ)
    assert box.outcome(got) == ("bus", 0xFFFFF010)


def test_a_walk_with_no_ept_walker_ends_in_an_internal_error_naming_its_entry():
    # hvsim/mmu/ept.py: the 2-D walk calls the EPT walker by the address in
    # st[EPT_WALKER]; without one (a state used outside run(), which copies it there)
    # the walk stops with the table entry named, and writes nothing
    box = Box()
    guest_identity(box)
    box.ept.identity(4 << 20)
    box.set_eptp(box.ept.eptp(ad=True))
    box.st[L.EPT_WALKER] = 0
    before = box.mem.copy()
    translate_pg(box.mem, box.st, box.tlb, box.pg, 0x250ABC, ACC_WRITE)
    assert (box.st[L.FAULT_PENDING], box.st[L.FAULT_VECTOR]) == (L.FAULT_INTERNAL, L.KTAB_EPT)
    assert np.array_equal(box.mem, before) and box.refs() == 0
    # with the walker, the same walk goes through (and sets the A/D flags it should)
    box.st[L.FAULT_PENDING] = 0
    box.st[L.EPT_WALKER] = table.KTAB[table.K_EPT]
    assert box.tr(0x250ABC, ACC_WRITE) == 0x250ABC and box.refs() == 14
    assert not np.array_equal(box.mem, before)


# ---------------------------------------------------------------- the machine: the VMM
MEM = 4 << 20
VMXON_REGION, VMCS_REGION = 0x100000, 0x101000
GUEST_CODE, GUEST_STACK = 0x200000, 0x280000
HOST_STACK = 0x9000
PD = 0x300000
EPT_BASE = 0x380000
DATA = 0x250000          # test data pages
RESULT = 0x260000        # where guests store what they saw

HYPERVISOR = """
    mov ecx, 0x3a            ; IA32_FEATURE_CONTROL: lock | VMX outside SMX
    mov eax, 5
    xor edx, edx
    wrmsr
    vmxon [vmxon_ptr]
    vmclear [vmcs_ptr]
    vmptrld [vmcs_ptr]
    mov esi, table
next:
    mov eax, [esi]
    cmp eax, 0xffffffff
    je launch
    mov ebx, [esi+4]
    vmwrite eax, ebx
    add esi, 8
    jmp next
launch:
    vmlaunch
    mov esi, 0xfa11
    hlt
host_rip:
    push eax                 ; the guest's registers: VM exits do not save them
    push ebx
    push ecx
    mov eax, 0x4402
    vmread ebx, eax          ; exit reason
    cmp ebx, {resume_reason}
    jne stop
{on_exit}
    mov eax, 0x681e          ; GUEST_RIP += the handled instruction's length
    vmread ebx, eax
    add ebx, {skip}
    vmwrite eax, ebx
    pop ecx
    pop ebx
    pop eax
    vmresume
    mov esi, 0xfa12
    hlt
stop:
    mov eax, 0x4402
    vmread ebx, eax          ; exit reason
    mov eax, 0x6400
    vmread ecx, eax          ; exit qualification
    mov eax, 0x440c
    vmread edx, eax          ; VM-exit instruction length
    mov esi, 0xe817
    hlt
vmxon_ptr: dd 0x100000, 0
vmcs_ptr: dd 0x101000, 0
invept_desc: dd 0, 0, 0, 0
handled: dd 0
table: times 256 dd 0
"""


def _fields(m, t, host_rip, eptp):
    st = m._st
    cs, ds = t.code(0), t.data(0)
    f = {
        "HOST_CR0": int(m.cpu.cr0), "HOST_CR3": int(m.cpu.cr3), "HOST_CR4": int(m.cpu.cr4),
        "HOST_CS_SELECTOR": cs, "HOST_SS_SELECTOR": ds, "HOST_DS_SELECTOR": ds,
        "HOST_ES_SELECTOR": ds, "HOST_FS_SELECTOR": ds, "HOST_GS_SELECTOR": ds,
        "HOST_TR_SELECTOR": t.tss_selector, "HOST_TR_BASE": int(st[L.TR_BASE]),
        "HOST_GDTR_BASE": int(st[L.GDTR_BASE]), "HOST_IDTR_BASE": int(st[L.IDTR_BASE]),
        "HOST_RSP": HOST_STACK, "HOST_RIP": host_rip,
    }
    for i, name in enumerate(("ES", "CS", "SS", "DS", "FS", "GS")):
        f[f"GUEST_{name}_SELECTOR"] = cs if i == 1 else ds
        f[f"GUEST_{name}_BASE"] = 0
        f[f"GUEST_{name}_LIMIT"] = 0xFFFFFFFF
        f[f"GUEST_{name}_AR_BYTES"] = ((0xB if i == 1 else 0x3) | L.AR_S | L.AR_P | L.AR_DB
                                       | L.AR_G)
    f.update({
        "GUEST_TR_SELECTOR": t.tss_selector, "GUEST_TR_BASE": int(st[L.TR_BASE]),
        "GUEST_TR_LIMIT": int(st[L.TR_LIMIT]), "GUEST_TR_AR_BYTES": 11 | L.AR_P,
        "GUEST_LDTR_AR_BYTES": L.AR_UNUSABLE,
        "GUEST_GDTR_BASE": int(st[L.GDTR_BASE]), "GUEST_GDTR_LIMIT": int(st[L.GDTR_LIMIT]),
        "GUEST_IDTR_BASE": int(st[L.IDTR_BASE]), "GUEST_IDTR_LIMIT": int(st[L.IDTR_LIMIT]),
        # the guest's CR3 is the host's page directory: a guest-physical address under EPT
        "GUEST_CR0": int(m.cpu.cr0), "GUEST_CR3": int(m.cpu.cr3), "GUEST_CR4": int(m.cpu.cr4),
        "GUEST_DR7": 0x400, "GUEST_RSP": GUEST_STACK, "GUEST_RIP": GUEST_CODE,
        "GUEST_RFLAGS": FIXED1, "VMCS_LINK_POINTER": 0xFFFFFFFF,
        "VMCS_LINK_POINTER_HIGH": 0xFFFFFFFF,
        "PIN_BASED_VM_EXEC_CONTROL": X.PIN_DEFAULT1,
        "CPU_BASED_VM_EXEC_CONTROL": X.CPU_TRUE_ALLOWED0,
        "VM_EXIT_CONTROLS": X.EXIT_TRUE_ALLOWED0,
        "VM_ENTRY_CONTROLS": X.ENTRY_TRUE_ALLOWED0,
    })
    if eptp is not None:
        f["CPU_BASED_VM_EXEC_CONTROL"] |= X.CPU_ACTIVATE_SECONDARY_CONTROLS
        f["SECONDARY_VM_EXEC_CONTROL"] = X.SEC_ENABLE_EPT
        f["EPT_POINTER"] = eptp
    return f


def ept_run(guest_src, build=None, *, ept=True, ad=False, resume_reason=-1, on_exit="",
            skip=0, setup=None, budget=200_000):
    """Run the VMM with ``guest_src`` at GUEST_CODE on the host's identity map.

    ``build(ept_tables)`` writes the EPT tables (default: identity, 4 KiB leaves, 4 MiB);
    ``ept`` False leaves "enable EPT" off (the tables are written all the same, so twin
    runs have the same memory). The VMM handles exit ``resume_reason`` by running
    ``on_exit`` (host assembly), adding ``skip`` to GUEST_RIP and resuming; any other exit
    halts it. Returns (machine, event, EptTables)."""
    m = Machine(memory=MEM)
    t = install(m)
    enable_paging(m, identity_map_4k(m.memory, PD, MEM))
    m.cpu.cr0 = int(m.cpu.cr0) | CR0_NE
    m.cpu.cr4 = int(m.cpu.cr4) | CR4_VMXE
    hv = assemble(HYPERVISOR.format(resume_reason=f"{int(resume_reason) & 0xFFFFFFFF:#x}",
                                    on_exit=on_exit, skip=skip))
    m.load(hv)
    m.cpu.esp = HOST_STACK
    m.write_physical(GUEST_CODE, assemble(guest_src, origin=GUEST_CODE).code)
    for region in (VMXON_REGION, VMCS_REGION):
        m.write_physical(region, X.VMCS_REVISION_ID.to_bytes(4, "little"))
    tables = EptTables(m.memory, EPT_BASE)
    (build or (lambda e: e.identity(MEM)))(tables)
    fields = _fields(m, t, hv.labels["host_rip"], tables.eptp(ad) if ept else None)
    table = bytearray()
    for name, value in fields.items():
        enc = V.FIELDS[name[:-5]] | 1 if name.endswith("_HIGH") else V.FIELDS[name]
        table += enc.to_bytes(4, "little") + (value & 0xFFFFFFFF).to_bytes(4, "little")
    table += (0xFFFFFFFF).to_bytes(4, "little")
    m.write_physical(hv.labels["table"], bytes(table))
    if setup is not None:
        setup(m, hv)
    ev = m.run(max_steps=budget)
    return m, ev, tables, hv


def vmcs(m, name):
    return int(m._st[L.VMCS_CACHE + V.slot(name)])


def read32(m, pa):
    return int.from_bytes(bytes(m.memory[pa:pa + 4]), "little")


def exited(m, reason):
    assert m.cpu.esi == 0xE817, hex(m.cpu.esi)             # the VMM's exit path halted
    assert m.cpu.ebx == reason, (m.cpu.ebx, reason)
    return m.cpu.ecx


GUEST_WORK = f"""
    mov ebx, {DATA:#x}
    mov dword [ebx], 0x11111111
    mov ecx, 40
again:
    mov eax, [ebx]
    add eax, ecx
    mov [ebx+4*ecx], eax
    push eax
    call leaf
    pop edx
    loop again
    mov [{RESULT:#x}], esp
    mov edi, eax
    mov ebp, edx
at_cpuid:
    cpuid
leaf:
    xor dword [ebx], 0x5a5a5a5a
    ret
"""


@pytest.mark.parametrize("large", [False, True], ids=["4k-leaves", "2m-leaves"])
def test_identity_ept_runs_the_guest_to_the_same_state_as_without_ept(large):
    # SDM 29.3.2: with every guest-physical page mapped to the same host-physical one, a
    # guest computes exactly what it computes without EPT; only the walks cost more
    runs = []
    for ept in (False, True):
        m, ev, tables, hv = ept_run(GUEST_WORK, lambda e: e.identity(MEM, large=large), ept=ept)
        exited(m, X.ExitReason.CPUID)
        runs.append(m)
        # the VMM's table of VMWRITEs differs (EPT's two fields): blank it in both
        table = hv.labels["table"]
        m.memory[table:table + 1024] = 0
    plain, nested = runs
    assert vmcs(nested, "GUEST_RIP") == vmcs(plain, "GUEST_RIP") == GUEST_CODE + GUEST_WORK_CPUID
    for name in V.FIELDS:
        if name.startswith("GUEST_") and name != "GUEST_PHYSICAL_ADDRESS" \
                and name != "GUEST_LINEAR_ADDRESS":
            assert vmcs(nested, name) == vmcs(plain, name), name
    assert (nested.cpu.edi, nested.cpu.ebp) == (plain.cpu.edi, plain.cpu.ebp)
    assert read32(nested, RESULT) == GUEST_STACK
    # every byte of memory the same: data, stack, the guest's A/D flags (EPT A/D is off,
    # so the EPT tables are untouched too)
    assert bytes(nested.memory) == bytes(plain.memory)
    assert plain.counters["ept_walks"] == 0 and nested.counters["ept_walks"] > 0
    assert nested.counters["walk_refs"] == plain.counters["walk_refs"]
    per_walk = 3 if large else 4
    assert nested.counters["ept_walk_refs"] == per_walk * nested.counters["ept_walks"]


GUEST_WORK_CPUID = assemble(GUEST_WORK, origin=GUEST_CODE).labels["at_cpuid"] - GUEST_CODE


def test_one_cold_guest_load_costs_14_references_and_a_warm_one_none():
    # the count in the machine: the same VMM and guest but for one load of a page not
    # touched before (2 guest entry reads + 3 EPT walks of 4 entries), then a second
    # load from that page (a TLB hit: no walk of either dimension)
    base, _, _, _ = ept_run("cpuid\n")
    one, _, _, _ = ept_run(f"mov eax, [{DATA:#x}]\ncpuid\n")
    two, _, _, _ = ept_run(f"mov eax, [{DATA:#x}]\nmov ebx, [{DATA + 4:#x}]\ncpuid\n")
    for m in (base, one, two):
        exited(m, X.ExitReason.CPUID)

    def refs(m):
        return m.counters["walk_refs"] + m.counters["ept_walk_refs"]
    assert refs(one) - refs(base) == 14
    assert one.counters["walk_refs"] - base.counters["walk_refs"] == 2
    assert one.counters["ept_walks"] - base.counters["ept_walks"] == 3
    assert refs(two) == refs(one)
    assert two.counters["tlb_hits"] - one.counters["tlb_hits"] >= 1
    assert two.counters["page_walks"] == one.counters["page_walks"]


# ---------------------------------------------------------------- EPT violations
def _not_present(gpa):
    def build(e):
        e.identity(MEM)
        e.map_4k(gpa, gpa, rights=0)
    return build


@pytest.mark.parametrize("guest, qual, gpa, rip_off", [
    # Table 28-7: bit 0 read / 1 write / 2 fetch; bits 5:3 = 0 (the leaf is not present);
    # bit 7: the guest-linear address is valid; bit 8: the access was to the datum
    (f"nop\nmov eax, [{DATA + 0x10:#x}]\n", Q_R | Q_GLA | Q_FINAL, DATA + 0x10, 1),
    (f"nop\nmov dword [{DATA + 0x10:#x}], 7\n", Q_W | Q_GLA | Q_FINAL, DATA + 0x10, 1),
    (f"nop\njmp {DATA + 0x10:#x}\n", Q_X | Q_GLA | Q_FINAL, DATA + 0x10, None),
])
def test_not_present_entry_is_a_violation_with_the_qualification(guest, qual, gpa, rip_off):
    m, ev, tables, hv = ept_run(guest, _not_present(DATA))
    assert exited(m, VIOLATION) == qual
    assert vmcs(m, "GUEST_PHYSICAL_ADDRESS") == gpa
    assert vmcs(m, "GUEST_LINEAR_ADDRESS") == gpa              # identity guest paging
    # fault-like (SDM 26.1 / raise_vmexit): RIP is the faulting instruction, or the jump
    # target for a fetch (the jump completed; the fetch of its target did not)
    assert vmcs(m, "GUEST_RIP") == (GUEST_CODE + rip_off if rip_off is not None else gpa)
    assert read32(m, DATA + 0x10) == 0                           # the write did not happen


def test_fetch_crossing_into_a_not_present_page_exits_at_the_instruction():
    # a 5-byte MOV at 0x200FFD: its last two bytes are on the next page, which EPT does
    # not map. The fetch of those bytes is the access (bit 2, bit 8 = datum), the GPA the
    # next page's first byte, and RIP the instruction's start (fault-like, SDM 26.1)
    at = GUEST_CODE + PAGE - 3

    def setup(m, hv):
        m.write_physical(at, bytes([0xB8, 1, 2, 3, 4]))        # mov eax, 0x04030201
    m, ev, t, hv = ept_run(f"jmp {at:#x}\n", _not_present(GUEST_CODE + PAGE), setup=setup)
    assert exited(m, VIOLATION) == Q_X | Q_GLA | Q_FINAL
    assert vmcs(m, "GUEST_PHYSICAL_ADDRESS") == GUEST_CODE + PAGE
    assert vmcs(m, "GUEST_LINEAR_ADDRESS") == GUEST_CODE + PAGE
    assert vmcs(m, "GUEST_RIP") == at
    # a 3-byte instruction ending at the page's end does not touch the next page
    def setup3(m, hv):
        m.write_physical(at, bytes([0x0F, 0xA2, 0x90]))        # cpuid; nop
    m, ev, t, hv = ept_run(f"jmp {at:#x}\n", _not_present(GUEST_CODE + PAGE), setup=setup3)
    exited(m, X.ExitReason.CPUID)


@pytest.mark.parametrize("rights, guest, qual", [
    # bits 5:3 are the AND of R/W/X over the four entries (the leaf's here): 29.3.3.2
    (EPT_R | EPT_X, f"mov dword [{DATA:#x}], 1\n", Q_W | Q_RD | Q_EX),
    (EPT_R | EPT_W, f"jmp {DATA:#x}\n", Q_X | Q_RD | Q_WR),
    (EPT_X, f"mov eax, [{DATA:#x}]\n", Q_R | Q_EX),
    (EPT_R, f"add [{DATA:#x}], eax\n", Q_W | Q_RD),   # read-modify-write: bit 1 only (hvsim)
])
def test_rights_violation_reports_the_anded_rights(rights, guest, qual):
    def build(e):
        e.identity(MEM)
        e.map_4k(DATA, DATA, rights=rights)
    m, ev, tables, hv = ept_run(guest, build)
    assert exited(m, VIOLATION) == qual | Q_GLA | Q_FINAL
    assert vmcs(m, "GUEST_PHYSICAL_ADDRESS") == DATA


def test_rights_are_anded_across_levels():
    # a PDE without W makes its whole 2 MiB region read-only although every PTE allows
    # writes (29.3.3.2: "bit 1 was clear in any of the EPT paging-structure entries").
    # The region is 0-2 MiB: the guest's code and page tables (2-4 MiB) stay writable,
    # for the guest's A/D flags
    LOW = 0x150000

    def build(e):
        e.identity(MEM)
        pde = e.entry(LOW, 2)
        e.put(pde, e.get(pde) & ~EPT_W)
    m, ev, tables, hv = ept_run(f"mov eax, [{LOW:#x}]\nmov [{LOW:#x}], eax\n", build)
    assert exited(m, VIOLATION) == Q_W | Q_RD | Q_EX | Q_GLA | Q_FINAL
    assert vmcs(m, "GUEST_PHYSICAL_ADDRESS") == LOW
    assert vmcs(m, "GUEST_RIP") == GUEST_CODE + 5               # the load went through


# the guest reaches linear 0x400000-0x7FFFFF through its own page table at GPA PT2,
# which maps linear 0x400000 to GPA DATA
PT2 = 0x3E0000
HIGH = 0x400000


def _high_mapping(m, hv, pte_flags=URW):
    m.write_physical(PD + 4, (PT2 | URW).to_bytes(4, "little"))
    m.write_physical(PT2, (DATA | pte_flags).to_bytes(4, "little"))


@pytest.mark.parametrize("ad, qual", [
    # a guest page-table read is a data read (29.3.3.2): bit 0; with EPT A/D on it is
    # treated as a write (29.3.5), and the qualification has bits 0 and 1 (Table 28-7,
    # note 1). Bit 8 = 0: the access was to a guest paging-structure entry
    (False, Q_R | Q_GLA),
    (True, Q_R | Q_W | Q_GLA),
])
def test_violation_on_a_guest_page_table_read_has_bit_8_clear(ad, qual):
    m, ev, tables, hv = ept_run(f"mov eax, [{HIGH + 0x10:#x}]\n", _not_present(PT2), ad=ad,
                                setup=_high_mapping)
    assert exited(m, VIOLATION) == qual
    assert vmcs(m, "GUEST_PHYSICAL_ADDRESS") == PT2              # the PTE's guest-physical address
    assert vmcs(m, "GUEST_LINEAR_ADDRESS") == HIGH + 0x10
    assert vmcs(m, "GUEST_RIP") == GUEST_CODE


def test_guest_accessed_flag_update_is_a_write_checked_by_ept():
    # "writes by the logical processor to guest paging structures to update accessed and
    # dirty flags are considered to be data writes" (29.3.3.2): the guest page table is
    # readable but not writable in EPT, the PTE's A flag is 0 -> violation on the PTE
    # (bit 1; bits 5:3 = R only; bit 8 = 0), and the guest PTE is left as it was
    def build(e):
        e.identity(MEM)
        e.map_4k(PT2, PT2, rights=EPT_R)
    m, ev, tables, hv = ept_run(f"mov eax, [{HIGH:#x}]\n", build, setup=_high_mapping)
    assert exited(m, VIOLATION) == Q_W | Q_RD | Q_GLA
    assert vmcs(m, "GUEST_PHYSICAL_ADDRESS") == PT2
    assert read32(m, PT2) == DATA | URW                         # no A: nothing written,
    assert read32(m, PD + 4) == PT2 | URW                       # not even the PDE's A
    # with the A flag already set no write is needed: the load succeeds
    m, ev, tables, hv = ept_run(f"mov eax, [{HIGH:#x}]\ncpuid\n", build,
                                setup=lambda m, hv: _high_mapping(m, hv, URW | PTE_A))
    exited(m, X.ExitReason.CPUID)


def test_w_without_r_is_a_misconfiguration_exit_49():
    # 29.3.3.1: "bit 0 of the entry is clear ... and bit 1 is set"
    def build(e):
        e.identity(MEM)
        e.map_4k(DATA, DATA, rights=EPT_W)
    m, ev, tables, hv = ept_run(f"mov eax, [{DATA + 8:#x}]\n", build)
    assert exited(m, MISCONFIG) == 0                            # qualification cleared
    assert vmcs(m, "GUEST_PHYSICAL_ADDRESS") == DATA + 8
    assert vmcs(m, "GUEST_RIP") == GUEST_CODE


def test_bad_tables_end_in_an_exit_or_a_bus_error_never_a_crash():
    # a guest page table at a guest-physical address EPT does not map (4 GiB - 4 KiB: its
    # PDPTE is not present) is an EPT violation the VMM sees, not a host access
    def bad_pde(m, hv):
        m.write_physical(PD + 4, (0xFFFFF000 | URW).to_bytes(4, "little"))
    m, ev, t, hv = ept_run(f"mov eax, [{HIGH:#x}]\n", setup=bad_pde)
    assert exited(m, VIOLATION) == Q_R | Q_GLA
    assert vmcs(m, "GUEST_PHYSICAL_ADDRESS") == 0xFFFFF000 + 4 * ((HIGH >> 12) & 0x3FF)
    # the VMM's own EPT PDE pointing outside memory: run() ends with a bus error there
    LOW = 0x150000

    def build(e):
        e.identity(MEM)
        e.put(e.entry(LOW, 2), 0xFFFFF000 | EPT_RWX)
    m, ev, t, hv = ept_run(f"mov eax, [{LOW:#x}]\n", build)
    assert ev.kind == "bus_error" and ev.address == 0xFFFFF000 + 8 * ((LOW >> 12) & 0x1FF)
    assert m._st[L.VMX_NONROOT] == 1 and ev.eip == GUEST_CODE


# ---------------------------------------------------------------- remapping, isolation
def test_remapped_page_is_really_used():
    # EPT maps GPA DATA to HPA REMAP != DATA: the guest's stores land at REMAP, its loads
    # read REMAP, and host-physical DATA is untouched (29.3.2: the PTE's address bits)
    REMAP = 0x3C0000

    def build(e):
        e.identity(MEM)
        e.map_4k(DATA, REMAP)

    def setup(m, hv):
        m.write_physical(REMAP + 0x20, (0xCAFEF00D).to_bytes(4, "little"))
    m, ev, tables, hv = ept_run(f"""
        mov dword [{DATA + 0x10:#x}], 0x12345678
        mov edi, [{DATA + 0x20:#x}]
        cpuid
    """, build, setup=setup)
    exited(m, X.ExitReason.CPUID)
    assert read32(m, REMAP + 0x10) == 0x12345678
    assert m.cpu.edi == 0xCAFEF00D
    assert read32(m, DATA + 0x10) == 0 and read32(m, DATA + 0x20) == 0


def test_host_memory_outside_the_ept_mapped_pages_is_unchanged():
    # the guest stores a dword into every 4 KiB page of 0-4 MiB. EPT gives it 16 writable
    # pages (WINDOW), its code (R/X) and the tables the processor reads for it (R: GDT,
    # TSS, IDT, its page directory and table); every other store is an EPT violation
    # that the VMM skips (the store is 2 bytes: 89 07). Host memory outside the window
    # (the VMM, the VMCS, the EPT tables, everything) keeps its hash; only the VMM's
    # stack and its counter of handled exits change.
    WINDOW = range(0x240000, 0x250000, PAGE)

    def build(e):
        for gpa in WINDOW:
            e.map_4k(gpa, gpa, EPT_R | EPT_W)
        e.map_4k(GUEST_CODE, GUEST_CODE, EPT_R | EPT_X)
        for gpa in (0x0, 0x10000, PD, PD + PAGE):           # GDT+TSS, IDT, PD, PT
            e.map_4k(gpa, gpa, EPT_R)

    def setup(m, hv):
        # the guest's PDE and PTEs already have A and D: its walks need not write them
        words = np.frombuffer(bytes(m.memory[PD:PD + 2 * PAGE]), "<u4").copy()
        words[(words & PTE_P) != 0] |= PTE_A | PTE_D
        m.memory[PD:PD + 2 * PAGE] = words.view(np.uint8)
        snapshot["hv"] = hv
        snapshot["before"] = bytes(m.memory)

    snapshot = {}
    guest = """
        mov eax, 0xdeadbeef
        xor edi, edi
    top:
        mov [edi], eax
        add edi, 0x1000
        cmp edi, 0x400000
        jne top
        cpuid
    """
    m, ev, tables, hv = ept_run(guest, build, resume_reason=VIOLATION,
                                on_exit="    inc dword [handled]", skip=2, setup=setup,
                                budget=2_000_000)
    exited(m, X.ExitReason.CPUID)
    handled = hv.labels["handled"]
    assert read32(m, handled) == 1024 - len(WINDOW)
    after = bytearray(m.memory)
    before = bytearray(snapshot["before"])
    for gpa in WINDOW:
        assert read32(m, gpa) == 0xDEADBEEF
        before[gpa:gpa + PAGE] = after[gpa:gpa + PAGE] = bytes(PAGE)
    for lo, hi in ((HOST_STACK - 64, HOST_STACK), (handled, handled + 4)):
        before[lo:hi] = after[lo:hi] = bytes(hi - lo)
    assert hashlib.sha256(after).hexdigest() == hashlib.sha256(before).hexdigest()


# ---------------------------------------------------------------- A/D flags, INVEPT
def _ad_guest():
    return f"mov eax, [{DATA:#x}]\nmov [{DATA + PAGE:#x}], eax\ncpuid\n"


def test_ept_accessed_and_dirty_flags_only_with_eptp_bit_6():
    # 29.3.5: with EPTP bit 6, A in every EPT entry used, D in the leaf of a written page;
    # guest paging-structure accesses count as writes, so the leaf mapping the guest's
    # page table gets D although the guest never stores into it (its A/D flags are set
    # beforehand). Without bit 6 the EPT tables are not written at all.
    def setup(m, hv):
        words = np.frombuffer(bytes(m.memory[PD:PD + 2 * PAGE]), "<u4").copy()
        words[(words & PTE_P) != 0] |= PTE_A | PTE_D
        m.memory[PD:PD + 2 * PAGE] = words.view(np.uint8)

    m, ev, t, hv = ept_run(_ad_guest(), ad=True, setup=setup)
    exited(m, X.ExitReason.CPUID)
    read_leaf, write_leaf = t.get(t.entry(DATA, 3)), t.get(t.entry(DATA + PAGE, 3))
    assert read_leaf & EPT_A and not read_leaf & EPT_D
    assert write_leaf & EPT_A and write_leaf & EPT_D
    for level in range(3):
        assert t.get(t.entry(DATA, level)) & EPT_A
    pt_leaf = t.get(t.entry(PD + PAGE, 3))                      # the guest's page table
    assert pt_leaf & EPT_A and pt_leaf & EPT_D
    untouched = t.get(t.entry(0x3F0000, 3))                      # a page no one used
    assert not untouched & (EPT_A | EPT_D)

    m2, ev, t2, hv = ept_run(_ad_guest(), ad=False, setup=setup)
    exited(m2, X.ExitReason.CPUID)
    fresh = EptTables(np.zeros(MEM, np.uint8), EPT_BASE)
    fresh.identity(MEM)
    assert bytes(m2.memory[EPT_BASE:fresh.next]) == bytes(fresh.mem[EPT_BASE:fresh.next])


def test_invept_after_changing_an_entry_makes_the_new_mapping_visible():
    # The TLB caches the combined translation and is not coherent with the EPT tables
    # (SDM 29.4): the guest (which can reach the EPT tables here: identity EPT) remaps
    # GPA DATA from HPA DATA to HPA NEW, and its next load still hits the old
    # translation. It asks the VMM (VMCALL), which executes INVEPT (single-context,
    # 29.4.3.1) and resumes: now the load sees NEW. (hvsim keeps no guest-physical
    # mappings and, without VPID, VM entries and exits flush the combined ones too.)
    NEW = 0x3C0000
    desc = "invept_desc"

    def setup(m, hv):
        m.write_physical(DATA, (0x1111).to_bytes(4, "little"))
        m.write_physical(NEW, (0x2222).to_bytes(4, "little"))
        eptp = tables_box["t"].eptp()
        m.write_physical(hv.labels[desc], eptp.to_bytes(8, "little") + bytes(8))

    tables_box = {}

    def build(e):
        e.identity(MEM)
        tables_box["t"] = e
    pte = EptTables(np.zeros(MEM, np.uint8), EPT_BASE)
    pte.identity(MEM)
    pte_addr = pte.entry(DATA, 3)
    guest = f"""
        mov eax, [{DATA:#x}]
        mov [{RESULT:#x}], eax
        mov dword [{pte_addr:#x}], {NEW | EPT_RWX | (EPT_MT_WB << 3):#x}
        mov eax, [{DATA:#x}]
        mov [{RESULT + 4:#x}], eax
        vmcall
        mov eax, [{DATA:#x}]
        mov [{RESULT + 8:#x}], eax
        cpuid
    """
    m, ev, t, hv = ept_run(guest, build, resume_reason=X.ExitReason.VMCALL, skip=3,
                           on_exit=f"    mov eax, {X.INVEPT_SINGLE_CONTEXT}\n"
                                   f"    invept eax, [{desc}]\n"
                                   f"    pushfd\n    pop eax\n    mov [handled], eax",
                           setup=setup)
    exited(m, X.ExitReason.CPUID)
    assert read32(m, RESULT) == 0x1111
    assert read32(m, RESULT + 4) == 0x1111          # stale: the TLB still maps HPA DATA
    assert read32(m, RESULT + 8) == 0x2222          # after INVEPT: HPA NEW
    assert read32(m, hv.labels["handled"]) & 0x41 == 0   # INVEPT: VMsucceed (CF = ZF = 0)
    # the same VMM without the INVEPT: the new mapping shows too (the exit and the entry
    # flushed the TLB already, no VPID), so what INVEPT itself did is one more flush
    m2, ev2, t2, hv2 = ept_run(guest, build, resume_reason=X.ExitReason.VMCALL, skip=3,
                               on_exit="    nop", setup=setup)
    exited(m2, X.ExitReason.CPUID)
    assert read32(m2, RESULT + 8) == 0x2222
    assert m.counters["tlb_flushes"] == m2.counters["tlb_flushes"] + 1


# ---------------------------------------------------------------- the face (plain Python)
def test_face_walk_ept_matches_naive_and_writes_nothing():
    from hvsim.mmu import walk_ept as face_walk_ept
    rng = random.Random(11)
    box = Box()
    ept = box.ept
    pt = ept.entry(0x200000, 3)
    for j in range(512):
        ept.put(pt + 8 * j, _random_ept_entry(rng, 0, "4k"))
    pd_entry = ept.entry(0, 2)
    seen = set()
    for _ in range(2000):
        if rng.random() < 0.2:
            ept.put(pd_entry, _random_ept_entry(rng, 0, "2m"))
            gpa = rng.randrange(2 << 20)
        else:
            gpa = 0x200000 + rng.randrange(2 << 20)
        before = bytes(box.mem)
        e = face_walk_ept(box.mem, ept.eptp(ad=True), gpa)
        assert bytes(box.mem) == before                         # read only, even with A/D on
        w = naive_ept(bytearray(before), len(before), ept.eptp(), gpa, Q_READ, 0, 1)
        if w.exit is not None and w.exit[0] == "misconfig":
            assert e.fault == "misconfig" and e.why, hex(gpa)
        elif w.exit is not None:                                # not present, or no R
            assert e.fault == "not-present" or not e.readable, hex(gpa)
        else:
            assert (e.fault, e.hpa, e.rights, e.refs) == (None, w.hpa, w.rights, w.refs)
        seen.add(e.fault)
    assert seen == {None, "not-present", "misconfig"}


@pytest.mark.parametrize("ad", [False, True], ids=["ad-off", "ad-on"])
def test_machine_guest_memory_access_under_ept_matches_naive(ad):
    """Machine.read_linear / write_linear's translation (the face's 2-D walk) gives what
    the CPU would: host-physical address, #PF, EPT violation with its qualification and
    GPA, misconfiguration, and the same A/D flags of both dimensions (naive_2d)."""
    seen = set()
    for seed in range(4):
        rng = random.Random(100 + seed)
        box = Box()
        pages = _random_world(rng, box, ad)
        m = Machine(memory=len(box.mem))
        m._raw_mem[:] = box.mem
        st = m._st
        for slot in (L.CR0, L.CR3, L.CR4, L.VMX_NONROOT, L.VMX_EPT):
            st[slot] = box.st[slot]
        st[L.VMCS_CACHE + V.slot("EPT_POINTER")] = box.field("EPT_POINTER")
        ref = bytearray(box.mem.tobytes())
        cr0, cr3, cr4 = (int(box.st[r]) for r in (L.CR0, L.CR3, L.CR4))
        for _ in range(600):
            lin = rng.choice(pages) | rng.randrange(PAGE)
            write, user = rng.random() < 0.4, rng.random() < 0.3
            try:
                got = m._translate_page(lin, write, user)
            except GuestMemoryError as e:
                got = {"page_fault": ("pf", e.error_code), "bus_error": ("bus",),
                       "ept_violation": ("violation", e.error_code, e.address),
                       "ept_misconfig": ("misconfig", e.address)}[e.kind]
            acc = (ACC_WRITE if write else 0) | (ACC_USER if user else 0)
            w = naive_2d(ref, len(ref), cr0, cr3, cr4, box.field("EPT_POINTER"), lin, acc)
            if w.hpa is not None:
                want = w.hpa
            elif w.exit is not None:
                want = w.exit[:3] if w.exit[0] == "violation" else w.exit
            elif w.pf is not None:
                want = ("pf", w.pf)
            else:
                want = ("bus",)
            assert got == want, (seed, hex(lin), write, user)
            seen.add(want[0] if isinstance(want, tuple) else "ok")
        assert bytes(m._raw_mem) == bytes(ref), seed
    assert seen >= {"ok", "pf", "violation", "misconfig"}, seen


def test_read_linear_and_the_code_view_go_through_ept():
    # stopped by its budget inside the guest (non-root), the machine's face reads the
    # guest's memory as the guest sees it: the remapped page's host frame
    from hvsim.widgets.render import read_code
    REMAP = 0x3C0000

    def build(e):
        e.identity(MEM)
        e.map_4k(DATA, REMAP)
        e.map_4k(GUEST_CODE, 0x3D0000)                 # the code too: GPA != HPA

    def setup(m, hv):
        m.write_physical(REMAP, b"EPT!")
        m.write_physical(0x3D0000, m.memory[GUEST_CODE:GUEST_CODE + 16].tobytes())
    guest = "top:\n    jmp top\n"
    m, ev, t, hv = ept_run(guest, build, setup=setup, budget=500)
    assert ev.kind == "budget" and m._st[L.VMX_NONROOT] == 1
    assert m.read_linear(DATA, 4) == b"EPT!"
    assert read_code(m, GUEST_CODE, 2) == assemble(guest, origin=GUEST_CODE).code
    m.write_linear(DATA + 4, b"ok")
    assert bytes(m.memory[REMAP + 4:REMAP + 6]) == b"ok"
    assert bytes(m.memory[DATA + 4:DATA + 6]) == b"\0\0"
