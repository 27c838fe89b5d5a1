"""Tests of the MMU: 32-bit paging and the TLB (hvsim/mmu), against named oracles.

* random page tables, thousands of accesses: the jitted ``translate`` (TLB off and on,
  several geometries) against tests/naive_walker.py (pa or #PF error code and CR2
  address, A/D flags in memory, hits/misses/walks/walk references);
* scripted TLB sequences whose hit/miss counts are derived by hand in the comments;
* hand-derived #PF error codes (SDM Vol. 3A, Figure 4-12), A/D flags (4.8),
  invalidation (4.10.4), self-modifying-code bookkeeping, bus errors, page-crossing
  accesses.
"""
import doctest
import random

import numpy as np
import pytest

import hvsim.mmu
from hvsim.arch import layout as L
from hvsim.arch.counters import (C_TLB_HIT, C_TLB_MISS, C_PAGE_WALKS, C_WALK_REFS,
                                C_TLB_FLUSH, C_INVLPG, C_SMC)
from hvsim.arch.cr import CR0_PE, CR0_PG, CR0_WP, CR4_PSE, CR4_PGE
from hvsim.mmu import walk, tlb_contents
from hvsim.mmu.paging import (translate, translate_pg, read_lin, write_lin, read_phys,
                              write_phys, tlb_flush, tlb_invlpg)
from hvsim.arch.pte import (PTE_P, PTE_RW, PTE_US, PTE_A, PTE_D, PTE_PS, PTE_G,
                           ACC_READ, ACC_WRITE, ACC_USER, ACC_FETCH)

from naive_walker import naive_walk, NaiveTLB

URW = PTE_P | PTE_RW | PTE_US


class Box:
    """A bare machine state for the MMU kernels, with helpers to build page tables."""

    def __init__(self, mem_size=4 << 20, sets=4, ways=2, tlb_on=True, wp=False,
                 pse=False, pge=False, paging=True, pd=0x1000):
        self.mem = np.zeros(mem_size, np.uint8)
        self.st = np.zeros(L.ST_SIZE, np.int64)
        self.tlb = np.zeros(max(sets * ways, 1) * L.TLB_FIELDS, np.int64)
        self.pg = np.zeros(mem_size >> 12, np.int64)
        st = self.st
        st[L.CFG_MEM_SIZE] = mem_size
        st[L.CFG_TLB_SETS] = sets
        st[L.CFG_TLB_WAYS] = ways
        st[L.CFG_TLB_ENABLED] = 1 if tlb_on else 0
        st[L.CR0] = CR0_PE | (CR0_PG if paging else 0) | (CR0_WP if wp else 0)
        st[L.CR4] = (CR4_PSE if pse else 0) | (CR4_PGE if pge else 0)
        st[L.CR3] = pd
        st[L.FETCH_LIN_PAGE] = 7
        self.pd = pd
        self.next_table = 0x100000

    def put32(self, addr, value):
        self.mem[addr:addr + 4] = np.frombuffer(int(value).to_bytes(4, "little"), np.uint8)

    def get32(self, addr):
        return int.from_bytes(bytes(self.mem[addr:addr + 4]), "little")

    def pde_addr(self, lin):
        return self.pd + 4 * (lin >> 22)

    def map4k(self, lin, pa, flags=URW, pde_flags=URW):
        """Map the 4 KiB page of ``lin`` to frame ``pa``; return the PTE's address."""
        pde_addr = self.pde_addr(lin)
        pde = self.get32(pde_addr)
        if not pde & PTE_P:
            table = self.next_table
            self.next_table += 0x1000
        else:
            table = pde & 0xFFFFF000
        self.put32(pde_addr, table | pde_flags)
        pte_addr = table + 4 * ((lin >> 12) & 0x3FF)
        self.put32(pte_addr, (pa & 0xFFFFF000) | flags)
        return pte_addr

    def map4m(self, lin, pa, flags=URW):
        pde_addr = self.pde_addr(lin)
        self.put32(pde_addr, (pa & 0xFFC00000) | PTE_PS | flags)
        return pde_addr

    def tr(self, lin, acc=ACC_READ):
        """translate(); returns pa, or ('pf', error, cr2) / ('bus', addr) on a fault."""
        pa = translate(self.mem, self.st, self.tlb, lin, acc)
        return self.outcome(pa)

    def outcome(self, value):
        st = self.st
        kind = st[L.FAULT_PENDING]
        if kind == 0:
            return value
        if kind == L.FAULT_EXCEPTION:
            assert st[L.FAULT_VECTOR] == 14
            out = ("pf", int(st[L.FAULT_ERROR]), int(st[L.FAULT_ADDR]))
        else:
            assert kind == L.FAULT_BUS
            out = ("bus", int(st[L.FAULT_ADDR]))
        st[L.FAULT_PENDING] = 0
        return out

    def c(self, idx):
        return int(self.st[L.COUNTERS + idx])

    def counts(self):
        return dict(hit=self.c(C_TLB_HIT), miss=self.c(C_TLB_MISS), walks=self.c(C_PAGE_WALKS),
                    refs=self.c(C_WALK_REFS))


# ------------------------------------------------------------------ random tables vs naive
def random_tables(box, rng, n_tables=8):
    """Fill the directory with a random mix; return the list of interesting linear pages."""
    mem_size = len(box.mem)
    tables = [0x200000 + i * 0x1000 for i in range(n_tables)]
    pde_indices = rng.sample(range(1024), 24)
    for i, idx in enumerate(pde_indices):
        kind = i % 8
        rights = PTE_RW | PTE_US if rng.random() < 0.6 else rng.randrange(8) & (PTE_RW | PTE_US)
        extra = (PTE_A if rng.random() < 0.3 else 0) | (PTE_G if rng.random() < 0.3 else 0)
        if kind == 0:
            pde = rng.randrange(1 << 32) & ~PTE_P                  # absent, junk bits
        elif kind in (1, 2):                                      # PS: 4 MiB if CR4.PSE
            frame = rng.randrange(4) << 22
            rsvd = (1 << rng.randrange(13, 22)) if rng.random() < 0.25 else 0
            if rsvd == 0 and kind == 2:
                # with PSE off this PDE is a table pointer: make it a real table
                frame = rng.choice(tables)
            dirty = PTE_D if rng.random() < .3 else 0
            pde = frame | rsvd | PTE_PS | PTE_P | rights | extra | dirty
        elif kind == 3 and rng.random() < 0.5:
            pde = (mem_size + 0x3000) | PTE_P | rights              # table outside memory
        else:
            pde = rng.choice(tables) | PTE_P | rights | extra
        box.put32(box.pd + 4 * idx, pde)
    for t in tables:
        ptes = []
        for j in range(1024):
            flags = rng.randrange(1 << 9) & ~PTE_PS
            if rng.random() < 0.6:
                flags |= PTE_RW | PTE_US
            flags = flags & ~PTE_P if rng.random() < 0.15 else flags | PTE_P
            frame = rng.randrange(1 << 20) << 12                    # anywhere in 4 GiB
            ptes.append(frame | flags)
        box.mem[t:t + 4096].view("<u4")[:] = ptes
    pages = []
    for idx in pde_indices:
        for j in rng.sample(range(1024), 6):
            pages.append((idx << 22) | (j << 12))
    return pages


GEOMETRIES = [None, (1, 1), (4, 2), (16, 4), (64, 1), (2, 8)]


@pytest.mark.parametrize("geometry", GEOMETRIES,
                         ids=lambda g: "off" if g is None else f"{g[0]}x{g[1]}")
def test_translate_matches_naive_walker_on_random_tables(geometry):
    mem_size = 4 << 20
    accs = [ACC_READ, ACC_WRITE, ACC_FETCH, ACC_USER, ACC_USER | ACC_WRITE, ACC_USER | ACC_FETCH]
    checked_faults = checked_ok = 0
    for variant in range(8):
        wp, pse, pge = bool(variant & 1), bool(variant & 2), bool(variant & 4)
        rng = random.Random(1000 * variant + (geometry[0] * 10 + geometry[1] if geometry else 0))
        sets, ways = geometry if geometry else (1, 1)
        box = Box(mem_size, sets, ways, tlb_on=geometry is not None, wp=wp, pse=pse, pge=pge)
        pages = random_tables(box, rng)
        ref_mem = bytearray(box.mem.tobytes())
        ref = NaiveTLB(sets, ways if geometry else 0)
        cr0, cr3, cr4 = (int(box.st[r]) for r in (L.CR0, L.CR3, L.CR4))
        hot = rng.sample(pages, 10)
        for _ in range(1500):
            page = rng.choice(hot) if rng.random() < 0.7 else rng.choice(pages)
            lin = page | rng.randrange(4096)
            acc = rng.choice(accs)
            if rng.random() < 0.5:
                got = box.outcome(translate(box.mem, box.st, box.tlb, lin, acc))
            else:
                got = box.outcome(translate_pg(box.mem, box.st, box.tlb, box.pg, lin, acc))
            w = ref.translate(ref_mem, mem_size, cr0, cr3, cr4, lin, acc)
            if w.pa is not None:
                expected = w.pa
                checked_ok += 1
            elif w.error is not None:
                expected = ("pf", w.error, lin)
                checked_faults += 1
            else:
                expected = ("bus", w.bus_error)
            assert got == expected, (hex(lin), acc, variant)
        # A/D flags written by the kernel == those the naive walker predicts
        assert bytes(box.mem) == bytes(ref_mem)
        assert box.counts() == dict(hit=ref.hits, miss=ref.misses, walks=ref.walks,
                                    refs=ref.refs)
        assert not box.pg.any()                                  # no code frames: no SMC
    assert checked_faults > 1000 and checked_ok > 1000


def test_face_walk_matches_naive_walker():
    rng = random.Random(7)
    box = Box(4 << 20, pse=True, pge=True)
    pages = random_tables(box, rng)
    before = bytes(box.mem)
    mem_size = len(box.mem)
    for _ in range(600):
        lin = rng.choice(pages) | rng.randrange(4096)
        r = walk(box.mem, box.pd, CR4_PSE | CR4_PGE, lin)
        for acc in (ACC_READ, ACC_WRITE, ACC_USER, ACC_USER | ACC_WRITE):
            for wp in (0, CR0_WP):
                w = naive_walk(bytearray(before), mem_size, CR0_PG | wp, box.pd,
                               CR4_PSE | CR4_PGE, lin, acc)
                assert (r.pde_addr, r.pte_addr, r.refs) == (w.pde_addr, w.pte_addr, w.refs)
                if w.bus_error is not None:
                    assert r.fault == "bus-error"
                    continue
                code = r.error_code(write=bool(acc & ACC_WRITE), user=bool(acc & ACC_USER),
                                    wp=bool(wp))
                assert code == w.error
                if w.pa is not None:
                    assert r.pa == w.pa and r.page_size == w.size
                    assert r.global_page == bool(w.global_)
    assert bytes(box.mem) == before                            # the face never writes


def test_face_walk_narrates_a_4k_walk():
    box = Box()
    pte_addr = box.map4k(0x00634ABC, 0x5000, flags=PTE_P | PTE_RW | PTE_A)
    r = walk(box.mem, box.pd, 0, 0x00634ABC)
    assert (r.pde_addr, r.pte_addr, r.pa, r.frame) == (0x1004, pte_addr, 0x5ABC, 0x5000)
    assert (r.user, r.writable, r.accessed, r.dirty, r.large) == (False, True, True, False, False)
    text = str(r)
    assert "0x00001004" in text and f"0x{pte_addr:08x}" in text and "0x00005abc" in text
    assert r.error_code(user=True) == 0b101                    # P | U
    assert r.error_code(write=True, wp=True) is None           # writable: no fault


def test_mmu_face_doctest():
    assert doctest.testmod(hvsim.mmu).failed == 0


# ------------------------------------------------------------------ paging off
def test_paging_off_is_identity_and_counts_nothing():
    box = Box(paging=False)
    box.mem[0x1234:0x1238] = [0x11, 0x22, 0x33, 0x44]
    assert box.tr(0x1234) == 0x1234
    assert box.tr(0x1_0000_1234) == 0x1234                      # linear wraps at 32 bits
    assert read_lin(box.mem, box.st, box.tlb, box.pg, 0x1234, 4, ACC_READ) == 0x44332211
    assert read_lin(box.mem, box.st, box.tlb, box.pg, 0x1235, 2, ACC_READ) == 0x3322
    assert read_lin(box.mem, box.st, box.tlb, box.pg, 0x1237, 1, ACC_READ) == 0x44
    write_lin(box.mem, box.st, box.tlb, box.pg, 0x2FFE, 4, 0xA1B2C3D4, ACC_WRITE)
    assert list(box.mem[0x2FFE:0x3002]) == [0xD4, 0xC3, 0xB2, 0xA1]
    assert box.counts() == dict(hit=0, miss=0, walks=0, refs=0)
    assert box.outcome(read_lin(box.mem, box.st, box.tlb, box.pg, 0xFFFFFFFF, 1, 0)) == \
        ("bus", 0xFFFFFFFF)


# ------------------------------------------------------------------ scripted TLB sequences
def test_lru_two_ways_one_set_hand_counted():
    box = Box(sets=1, ways=2)
    A, B, C = 0x400000, 0x401000, 0x402000
    for lin, pa in ((A, 0x10000), (B, 0x11000), (C, 0x12000)):
        box.map4k(lin, pa)
    # A miss, B miss, A hit, C miss (evicts B: least recent), A hit,
    # B miss (evicts C), C miss (evicts A), B hit
    for lin in (A, B, A, C, A, B, C, B):
        box.tr(lin)
    assert box.counts() == dict(hit=3, miss=5, walks=5, refs=10)
    assert sorted(e.lin_page for e in tlb_contents(box.st, box.tlb)) == [B, C]


def test_direct_mapped_conflicts_hand_counted():
    box = Box(sets=2, ways=1)
    for page in range(4):
        box.map4k(page << 12, 0x10000 + (page << 12))
    # pages 0 and 2 share set 0; page 1 is alone in set 1
    # 0 miss, 2 miss (evicts 0), 0 miss (evicts 2), 1 miss, 0 hit, 1 hit
    for page in (0, 2, 0, 1, 0, 1):
        assert box.tr(page << 12) == 0x10000 + (page << 12)
    assert box.counts() == dict(hit=2, miss=4, walks=4, refs=8)
    ents = tlb_contents(box.st, box.tlb)
    assert [(e.set, e.lin_page, e.frame) for e in ents] == [(0, 0, 0x10000), (1, 0x1000, 0x11000)]


def test_tlb_disabled_walks_every_time():
    box = Box(tlb_on=False)
    box.map4k(0x5000, 0x9000)
    for _ in range(3):
        assert box.tr(0x5010) == 0x9010
    assert box.counts() == dict(hit=0, miss=3, walks=3, refs=6)


def test_write_to_clean_cached_page_walks_again_to_set_dirty():
    box = Box()
    pte = box.map4k(0x7000, 0x9000)
    box.tr(0x7000, ACC_READ)                     # miss: A set, cached D = 0
    assert box.get32(pte) & (PTE_A | PTE_D) == PTE_A
    box.tr(0x7004, ACC_READ)                     # hit
    box.tr(0x7008, ACC_WRITE)                    # D = 0 in the entry: walks, sets D
    assert box.get32(pte) & PTE_D
    box.tr(0x700C, ACC_WRITE)                    # hit
    assert box.counts() == dict(hit=2, miss=2, walks=2, refs=4)


def test_hit_with_forbidding_cached_rights_walks_before_faulting():
    box = Box()
    pte = box.map4k(0x7000, 0x9000, flags=PTE_P | PTE_RW)     # supervisor page
    assert box.tr(0x7000) == 0x9000                            # cached, U/S = 0
    box.put32(pte, box.get32(pte) | PTE_US)                    # OS opens it, no INVLPG
    assert box.tr(0x7000, ACC_USER) == 0x9000                  # re-walk: no spurious #PF
    assert box.counts()["miss"] == 2
    assert box.tr(0x7000, ACC_USER) == 0x9000                  # now a hit
    assert box.counts()["hit"] == 1
    # and a real violation still faults (after its walk) and leaves no entry behind
    box.put32(pte, box.get32(pte) & ~PTE_RW)
    box.tr(0x7000, ACC_USER | ACC_WRITE)                       # cached RW = 1, D = 0: walks
    assert box.tr(0x7000, ACC_USER | ACC_WRITE) == ("pf", 0b111, 0x7000)
    assert tlb_contents(box.st, box.tlb) == []


def test_tlb_is_not_coherent_until_invlpg():
    box = Box()
    pte = box.map4k(0x7000, 0x9000)
    assert box.tr(0x7123) == 0x9123
    box.put32(pte, 0xA000 | URW)
    assert box.tr(0x7123) == 0x9123                            # stale, as on hardware
    tlb_invlpg(box.st, box.tlb, 0x7FFF)
    assert box.tr(0x7123) == 0xA123
    off = Box(tlb_on=False)
    pte = off.map4k(0x7000, 0x9000)
    off.tr(0x7123)
    off.put32(pte, 0xA000 | URW)
    assert off.tr(0x7123) == 0xA123


def test_invlpg_drops_exactly_one_page():
    box = Box(sets=4, ways=4, pse=True)
    pages = [0x10000, 0x11000, 0x12000]
    for p in pages:
        box.map4k(p, p + 0x100000)
        box.tr(p)
    box.map4m(0x800000, 0x400000)
    box.tr(0x800000)
    box.tr(0x9FF000)                                           # two slices of one 4 MiB page
    assert box.counts()["miss"] == 5
    tlb_invlpg(box.st, box.tlb, 0x11ABC)
    assert box.st[L.FETCH_LIN_PAGE] == -1 and box.c(C_INVLPG) == 1
    for p in pages:
        box.tr(p)
    assert box.counts()["hit"] == 2 and box.counts()["miss"] == 6   # only 0x11000 walked
    tlb_invlpg(box.st, box.tlb, 0xA12345)                     # another address in the 4 MiB page
    box.tr(0x800000)
    box.tr(0x9FF000)
    for p in pages:
        box.tr(p)
    assert box.counts()["miss"] == 8 and box.counts()["hit"] == 5
    assert box.counts()["refs"] == 2 * 4 + 1 * 4               # 4 4K walks, 4 4M walks


def test_flush_keeps_global_pages_only_when_asked():
    def setup(pge):
        box = Box(sets=4, ways=4, pse=True, pge=pge)
        box.map4k(0x10000, 0x20000, flags=URW | PTE_G)
        box.map4k(0x11000, 0x21000)
        box.map4m(0xC00000, 0x000000, flags=URW | PTE_G)
        for lin in (0x10000, 0x11000, 0xC00000):
            box.tr(lin)
        return box

    box = setup(pge=True)
    tlb_flush(box.st, box.tlb, 1)                             # MOV CR3 with CR4.PGE = 1
    assert box.st[L.FETCH_LIN_PAGE] == -1 and box.c(C_TLB_FLUSH) == 1
    for lin in (0x10000, 0x11000, 0xC00000):
        box.tr(lin)
    assert box.counts()["hit"] == 2 and box.counts()["miss"] == 4   # only the non-G page
    tlb_flush(box.st, box.tlb, 0)
    for lin in (0x10000, 0x11000, 0xC00000):
        box.tr(lin)
    assert box.counts()["hit"] == 2 and box.counts()["miss"] == 7
    box = setup(pge=False)                                    # G ignored without CR4.PGE
    tlb_flush(box.st, box.tlb, 1)
    for lin in (0x10000, 0x11000, 0xC00000):
        box.tr(lin)
    assert box.counts()["hit"] == 0 and box.counts()["miss"] == 6


# ------------------------------------------------------------------ walks, faults, A/D
def test_walk_reference_counts():
    box = Box(tlb_on=False, pse=True)
    box.map4k(0x1000, 0x5000)
    box.map4m(0x400000, 0x0)
    box.map4k(0x802000, 0x5000, flags=0)                      # PDE present, PTE absent
    cases = [(0x1000, 2), (0x400000, 1), (0xC00000, 1), (0x802000, 2)]
    for lin, refs in cases:
        before = box.c(C_WALK_REFS)
        box.tr(lin)
        assert box.c(C_WALK_REFS) - before == refs, hex(lin)
    assert box.c(C_PAGE_WALKS) == 4


@pytest.mark.parametrize("lin_flags, pde_flags, acc, wp, expected", [
    # hand-derived from SDM Vol. 3A 4.6 and Figure 4-12 (P=1 W=2 U=4 RSVD=8, I stays 0)
    (PTE_P | PTE_RW, URW, ACC_USER, False, 0b101),            # user read, supervisor page
    (PTE_P | PTE_US, URW, ACC_USER | ACC_WRITE, False, 0b111),  # user write, read-only
    (URW, PTE_P | PTE_US, ACC_USER | ACC_WRITE, False, 0b111),  # read-only at PDE level
    (URW, PTE_P | PTE_RW, ACC_USER | ACC_FETCH, False, 0b101),  # supervisor at PDE level
    (PTE_P | PTE_US, URW, ACC_WRITE, True, 0b011),            # kernel write, WP = 1
    (PTE_P | PTE_US, URW, ACC_WRITE, False, None),            # kernel write, WP = 0: allowed
    (PTE_P, URW, ACC_READ, True, None),                       # kernel read of supervisor RO
    (0, URW, ACC_USER | ACC_WRITE, False, 0b110),             # PTE absent
    (URW, 0, ACC_FETCH, False, 0b000),                        # PDE absent, fetch
])
def test_page_fault_error_codes(lin_flags, pde_flags, acc, wp, expected):
    box = Box(wp=wp)
    box.map4k(0x00C05000, 0x9000, flags=lin_flags, pde_flags=pde_flags)
    got = box.tr(0x00C05678, acc)
    assert got == (0x9678 if expected is None else ("pf", expected, 0x00C05678))


def test_reserved_bits_in_4m_pde_only_with_pse():
    box = Box(pse=True)
    pde = box.map4m(0x400000, 0x800000)
    box.put32(pde, box.get32(pde) | (1 << 13))
    assert box.tr(0x400010, ACC_WRITE) == ("pf", 0b1011, 0x400010)   # P | W | RSVD
    assert box.get32(pde) & (PTE_A | PTE_D) == 0
    box.put32(pde, box.get32(pde) & ~(1 << 13) | (1 << 21))
    assert box.tr(0x400010, ACC_USER) == ("pf", 0b1101, 0x400010)    # P | U | RSVD
    # without CR4.PSE the PS bit is ignored: the PDE points at a page table at 0x800000
    nopse = Box(mem_size=16 << 20)
    pde = nopse.map4m(0x400000, 0x800000)
    nopse.put32(0x800000 + 4 * 0, 0x3000 | URW)
    assert nopse.tr(0x400010) == 0x3010


def test_accessed_and_dirty_flags():
    box = Box(pse=True)
    pte = box.map4k(0x5000, 0x9000, flags=PTE_P | PTE_US)     # read-only user page
    pde = box.pde_addr(0x5000)
    pde4m = box.map4m(0x800000, 0xC00000)
    assert box.tr(0x5000, ACC_USER | ACC_WRITE) == ("pf", 0b111, 0x5000)
    assert box.get32(pde) & PTE_A == 0 and box.get32(pte) & PTE_A == 0  # a fault writes nothing
    box.tr(0x5000, ACC_READ)
    assert box.get32(pde) & (PTE_A | PTE_D) == PTE_A
    assert box.get32(pte) & (PTE_A | PTE_D) == PTE_A
    box.tr(0x5000, ACC_WRITE)                                  # supervisor, WP = 0: allowed
    assert box.get32(pte) & (PTE_A | PTE_D) == PTE_A | PTE_D
    assert box.get32(pde) & PTE_D == 0                         # D only in the final entry
    box.tr(0x812345, ACC_WRITE)
    assert box.get32(pde4m) == 0xC00000 | PTE_PS | URW | PTE_A | PTE_D
    # entries whose flags are already set are not written again: a code frame holding
    # the tables (directory and page table) sees no write, so no SMC invalidation
    box.pg[box.pd >> 12] = box.pg[pte >> 12] = L.PG_CODE
    tlb_flush(box.st, box.tlb, 0)
    for lin, acc in ((0x5000, ACC_WRITE), (0x5000, ACC_READ), (0x812345, ACC_WRITE)):
        read_lin(box.mem, box.st, box.tlb, box.pg, lin, 1, acc)
    assert box.pg[box.pd >> 12] == box.pg[pte >> 12] == L.PG_CODE and box.c(C_SMC) == 0
    assert box.counts()["walks"] == 6


# ------------------------------------------------------------------ memory access
def test_self_modifying_code_bumps_the_frame_generation():
    box = Box()
    box.map4k(0x5000, 0x9000)
    box.pg[0x9] = L.PG_CODE | (3 * L.PG_GEN_ONE)               # code cached, generation 3
    write_lin(box.mem, box.st, box.tlb, box.pg, 0x5010, 1, 0x90, ACC_WRITE)
    assert box.pg[0x9] == 4 * L.PG_GEN_ONE and box.c(C_SMC) == 1
    write_lin(box.mem, box.st, box.tlb, box.pg, 0x5011, 1, 0x90, ACC_WRITE)
    assert box.pg[0x9] == 4 * L.PG_GEN_ONE and box.c(C_SMC) == 1   # no code there any more
    # a physical write straddling two code frames invalidates both
    box.pg[0x20] = box.pg[0x21] = L.PG_CODE
    write_phys(box.mem, box.st, box.pg, 0x20FFE, 4, 0x11223344)
    assert box.pg[0x20] == box.pg[0x21] == L.PG_GEN_ONE and box.c(C_SMC) == 3
    # an A-flag update landing in a code frame (page table shares it) counts too
    pte = box.map4k(0x6000, 0xA000)
    box.pg[pte >> 12] = L.PG_CODE
    read_lin(box.mem, box.st, box.tlb, box.pg, 0x6000, 4, ACC_READ)
    assert box.pg[pte >> 12] == L.PG_GEN_ONE and box.c(C_SMC) == 4
    # reads never touch pg
    box.pg[0xA] = L.PG_CODE
    read_lin(box.mem, box.st, box.tlb, box.pg, 0x6000, 4, ACC_READ)
    assert box.pg[0xA] == L.PG_CODE


def test_bus_errors():
    box = Box(mem_size=1 << 20, pd=0x2000)
    box.st[L.CR3] = 0x200000                                   # directory outside memory
    assert box.tr(0x00C01000) == ("bus", 0x200000 + 4 * 3)
    box.st[L.CR3] = 0x2000
    box.put32(0x2000, 0x300000 | URW)                          # table outside memory
    assert box.tr(0x5000) == ("bus", 0x300000 + 4 * 5)
    box.next_table = 0x10000
    box.map4k(0x400000, 0xFFF000)                              # frame outside memory
    assert box.tr(0x400010) == 0xFFF010                        # translation itself is fine
    r = read_lin(box.mem, box.st, box.tlb, box.pg, 0x400010, 4, ACC_READ)
    assert box.outcome(r) == ("bus", 0xFFF010)
    write_lin(box.mem, box.st, box.tlb, box.pg, 0x400010, 4, 1, ACC_WRITE)
    assert box.outcome(None) == ("bus", 0xFFF010)
    before = bytes(box.mem)                                    # partly outside: nothing written
    write_phys(box.mem, box.st, box.pg, (1 << 20) - 2, 4, 0xFFFFFFFF)
    assert box.outcome(None) == ("bus", (1 << 20) - 2) and bytes(box.mem) == before
    assert box.outcome(read_phys(box.mem, box.st, (1 << 20) - 3, 4)) == ("bus", (1 << 20) - 3)
    assert read_phys(box.mem, box.st, (1 << 20) - 4, 4) == 0


def test_page_crossing_accesses():
    box = Box()
    box.map4k(0x5000, 0x9000)
    box.map4k(0x6000, 0x3000)                                  # next linear page, lower frame
    write_lin(box.mem, box.st, box.tlb, box.pg, 0x5FFE, 4, 0xA1B2C3D4, ACC_WRITE)
    assert list(box.mem[0x9FFE:0xA000]) == [0xD4, 0xC3]
    assert list(box.mem[0x3000:0x3002]) == [0xB2, 0xA1]
    assert read_lin(box.mem, box.st, box.tlb, box.pg, 0x5FFE, 4, ACC_READ) == 0xA1B2C3D4
    assert read_lin(box.mem, box.st, box.tlb, box.pg, 0x5FFF, 2, ACC_READ) == 0xB2C3
    # second page absent: #PF at the first byte of that page, nothing written
    box.map4k(0x7000, 0x4000)
    write_lin(box.mem, box.st, box.tlb, box.pg, 0x7000, 1, 0, ACC_WRITE)   # A and D set now
    before = bytes(box.mem)
    write_lin(box.mem, box.st, box.tlb, box.pg, 0x7FFD, 4, 0x01020304, ACC_WRITE | ACC_USER)
    assert box.outcome(None) == ("pf", 0b110, 0x8000)
    assert bytes(box.mem) == before
    assert box.outcome(read_lin(box.mem, box.st, box.tlb, box.pg, 0x7FFF, 2, ACC_READ)) == \
        ("pf", 0, 0x8000)
    # second frame outside memory: bus error, nothing written
    box.map4k(0x8000, 0xFFFF000)
    write_lin(box.mem, box.st, box.tlb, box.pg, 0x7FFD, 4, 0x01020304, ACC_WRITE)
    assert box.outcome(None) == ("bus", 0xFFFF000)
    assert all(box.mem[0x4FFD:0x5000] == 0)
    # linear addresses wrap at 4 GiB: 0xFFFFFFFE + 2 is page 0
    box.map4k(0xFFFFF000, 0x20000)
    box.map4k(0x0, 0x21000)
    write_lin(box.mem, box.st, box.tlb, box.pg, 0xFFFFFFFE, 4, 0x55667788, ACC_WRITE)
    assert list(box.mem[0x20FFE:0x21002]) == [0x88, 0x77, 0x66, 0x55]
