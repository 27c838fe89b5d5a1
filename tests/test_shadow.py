"""Shadow paging (hvsim/mmu/shadow.py) under its two hosts, directed.

Each test runs a small paging guest under the trap-and-emulate monitor ("shadow") and
the VT-x host without EPT ("vtx") and checks one rule of the shadow MMU: the fault
classes (hidden, true, trace) and their counts, the guest-visible effects (the #PF error
codes and CR2 its handler logs, the A/D flags in its own PTEs) against the bare machine,
the cache of four shadow roots, unsync and resync, write flooding, CR0.WP = 0, 4 MiB
pages, and that the monitor's memory never shows in a shadow entry. The oracle for the
guest-visible part is the native run of the same binary (the SDM's paging, as hvsim's
jitted MMU implements and tests/test_mmu.py checks it); the counts are worked out by
hand from each program.
"""

import struct

import pytest

from hvsim.mmu.shadow import HOLE_BASE, ROOT_CACHE, ShadowError
from hvsim.monitors import TrapAndEmulate
from hvsim.workloads import HOSTS

from shadow_guest import (AREA, DATA, PD, PT1, SHADOW_HOSTS, entries, faults, guest_view,
                          program, pte, regs, run, same_as_native, shadow_of)


# ---- the three fault classes ------------------------------------------------------------
def test_a_hidden_fault_fills_the_shadow_and_the_guest_never_sees_it():
    """PT1[0] -> DATA (RW): the first read of AREA misses the shadow (hidden, filled);
    the guest's handler runs never; its PTE gets A (a read: no D)."""
    body = f"""
    mov dword [{DATA}], 0xCAFE
    mov dword [{PT1}], {pte(DATA, 3)}
    mov ebx, {AREA}
    mov eax, [ebx]
    mov esi, [{PT1}]
"""
    native, mons = same_as_native(body)
    assert regs(native)[0] == 0xCAFE and regs(native)[4] == pte(DATA, 0x23)   # A, not D
    assert faults(native) == []
    for h in SHADOW_HOSTS:
        s = shadow_of(mons[h]).counters
        assert s["true_faults"] == 0
        # the read of AREA is exactly one hidden fault: without it, one fewer
        without = shadow_of(run(h, body.replace("    mov eax, [ebx]\n", ""))).counters
        assert s["hidden_faults"] == without["hidden_faults"] + 1
        # the store into PT1 came before anything was reached through it: PT1 was not
        # yet a table the monitor shadows, so the store was an ordinary one
        assert s["trace_faults"] == 0


def test_a_true_fault_is_reflected_with_the_guests_error_code_and_cr2():
    """Not present (0), a read; then a write to a read-only page with CR0.WP = 1 (P|W = 3)."""
    body = f"""
    mov ebx, {AREA + 0x1000}
    mov eax, [ebx]
    mov dword [{PT1}], {pte(DATA, 1)}
    mov ebx, {AREA + 0x10}
    mov [ebx], eax
"""
    native, mons = same_as_native(body)
    assert faults(native) == [(AREA + 0x1000, 0), (AREA + 0x10, 3)]
    for h in SHADOW_HOSTS:
        assert shadow_of(mons[h]).counters["true_faults"] == 2


def test_a_store_into_a_guest_page_table_is_a_trace_fault_emulated_with_its_shadow_dropped():
    """The guest maps AREA -> DATA, reads it, then remaps it to DATA+4K with a MOV and an
    INVLPG: under shadow paging the store traps (PT1 is write-protected in the shadow),
    is emulated, and the stale shadow entry goes with it."""
    body = f"""
    mov dword [{DATA}], 0x1111
    mov dword [{DATA} + 0x1000], 0x2222
    mov dword [{PT1}], {pte(DATA, 3)}
    mov ebx, {AREA}
    mov eax, [ebx]
    mov dword [{PT1}], {pte(DATA + 0x1000, 3)}
    invlpg [{AREA}]
    mov ecx, [ebx]
"""
    native, mons = same_as_native(body)
    assert regs(native)[:2] == (0x1111, 0x2222)
    for h in SHADOW_HOSTS:
        s = shadow_of(mons[h]).counters
        # the first store came before PT1 was shadowed (nothing reached through it yet)
        assert s["trace_faults"] == s["pt_writes_emulated"] == 1
        assert s["invlpg"] == 1 and s["shadow_drops"] >= 1


def test_a_guest_pte_store_that_is_not_a_mov_is_retried_with_the_table_unshadowed():
    """OR into a PTE (81 /1): not one of the MOV forms the monitor emulates -- the
    table is unshadowed (KVM's unprotect-and-retry) and the guest's own store runs."""
    body = f"""
    mov dword [{PT1}], {pte(DATA, 1)}
    mov ebx, {AREA}
    mov eax, [ebx]
    or dword [{PT1}], 2
    invlpg [{AREA}]
    mov dword [ebx], 7
    mov ecx, [{DATA}]
"""
    native, mons = same_as_native(body)
    assert regs(native)[1] == 7 and faults(native) == []
    for h in SHADOW_HOSTS:
        assert shadow_of(mons[h]).counters["unshadowed"] >= 1


# ---- A and D -----------------------------------------------------------------------------
def test_accessed_and_dirty_flags_appear_in_the_guests_ptes_as_the_hardware_sets_them():
    """Page 0 read only (A), page 1 written (A and D), page 2 read then written: its
    shadow entry starts read-only (guest D = 0), the write faults (hidden) and sets D;
    page 3 untouched (neither). The PDE gets A."""
    body = f"""
    mov dword [{PT1}], {pte(DATA, 3)}
    mov dword [{PT1} + 4], {pte(DATA + 0x1000, 3)}
    mov dword [{PT1} + 8], {pte(DATA + 0x2000, 3)}
    mov dword [{PT1} + 12], {pte(DATA + 0x3000, 3)}
    mov eax, [{AREA}]
    mov dword [{AREA} + 0x1000], 5
    mov eax, [{AREA} + 0x2000]
    mov dword [{AREA} + 0x2000], 6
"""
    native, mons = same_as_native(body)
    assert entries(native, PT1, 4) == (pte(DATA, 0x23), pte(DATA + 0x1000, 0x63),
                                       pte(DATA + 0x2000, 0x63), pte(DATA + 0x3000, 3))
    assert entries(native, PD, 2)[1] & 0x20
    for h in SHADOW_HOSTS:
        # the write to page 2 found the read-only shadow entry its read had filled (its
        # guest D was 0): the read costs one hidden fault more than the write alone
        write_only = body.replace(f"    mov eax, [{AREA} + 0x2000]\n", "")
        fewer = shadow_of(run(h, write_only)).counters["hidden_faults"]
        assert shadow_of(mons[h]).counters["hidden_faults"] == fewer + 1


def test_cr0_wp_0_lets_the_kernel_write_a_read_only_page_and_user_rights_survive():
    """With CR0.WP = 0 a supervisor write to a read-only page succeeds (SDM 4.6): the
    shadow makes the entry writable but supervisor-only, as KVM does."""
    body = f"""
    mov eax, cr0
    and eax, ~0x10000
    mov cr0, eax
    mov dword [{PT1}], {pte(DATA, 5)}
    mov ebx, {AREA}
    mov dword [ebx], 0x77
    mov ecx, [ebx]
    mov eax, cr0
    or eax, 0x10000
    mov cr0, eax
    mov [ebx], ecx
"""
    native, _ = same_as_native(body)
    assert regs(native)[1] == 0x77 and faults(native) == [(AREA, 3)]


def test_a_4mib_guest_page_is_shadowed_by_4kib_entries():
    """CR4.PSE and a 4 MiB PDE (PS) at 8 MiB -> physical 0: reads through it see low
    memory; A and D land in the PDE (SDM 4.3)."""
    body = f"""
    mov eax, cr4
    or eax, 0x10
    mov cr4, eax
    mov dword [{PD} + 8], 0x83
    mov eax, [0x800000 + {DATA}]
    mov dword [0x800000 + {DATA} + 4], 9
    mov ecx, [{DATA} + 4]
    mov esi, [{PD} + 8]
"""
    native, _ = same_as_native(body)
    assert regs(native)[1] == 9 and regs(native)[4] == 0x83 | 0x60


# ---- the cache of shadow roots -----------------------------------------------------------
def spaces_body(k: int, rounds: int) -> str:
    """``k`` page directories (copies of PD's two entries), visited ``rounds`` times."""
    lines = []
    for i in range(1, k + 1):
        d = 0x50000 + 0x1000 * i
        lines += [f"    mov eax, [{PD}]", f"    mov [{d}], eax",
                  f"    mov eax, [{PD} + 4]", f"    mov [{d} + 4], eax"]
    lines.append(f"    mov dword [{PT1}], {pte(DATA, 3)}")
    for _ in range(rounds):
        for i in range(1, k + 1):
            lines += [f"    mov eax, {0x50000 + 0x1000 * i}", "    mov cr3, eax",
                      f"    add dword [{AREA}], {i}"]
    lines += [f"    mov eax, {PD}", "    mov cr3, eax", f"    mov esi, [{AREA}]"]
    return "\n".join(lines)


@pytest.mark.parametrize("host", SHADOW_HOSTS)
def test_four_address_spaces_keep_their_shadow_roots_and_a_fifth_evicts(host):
    """KVM keeps the current root and three previous ones: four directories visited in
    turn are built once each (plus PD itself: five roots built in round one), then found
    every time after; five visited in turn evict one another and are rebuilt every time."""
    four = shadow_of(run(host, spaces_body(4, 3))).counters
    assert four["cr3_loads"] == 4 * 3 + 1
    assert four["shadow_roots_built"] == 1 + 4 + 1      # PD at paging on, 4, PD again
    assert four["cr3_cached"] == four["cr3_loads"] - (4 + 1)
    five = shadow_of(run(host, spaces_body(5, 3))).counters
    assert five["cr3_loads"] == 5 * 3 + 1
    assert five["shadow_roots_built"] == 1 + five["cr3_loads"] and five["cr3_cached"] == 0
    assert ROOT_CACHE == 4


def test_many_address_spaces_give_the_same_results_as_native():
    native, _ = same_as_native(spaces_body(6, 2))
    assert regs(native)[4] == sum(range(1, 7)) * 2


# ---- unsync ----------------------------------------------------------------------------
UNSYNC_BODY = f"""
    mov dword [{PT1}], {pte(DATA, 3)}
    mov eax, [{AREA}]
    mov dword [{PT1} + 4], {pte(DATA + 0x1000, 3)}
    mov dword [{PT1} + 8], {pte(DATA + 0x2000, 3)}
    mov dword [{PT1} + 12], {pte(DATA + 0x3000, 3)}
    mov dword [{PT1}], {pte(DATA + 0x4000, 3)}
    invlpg [{AREA}]
    mov dword [{AREA}], 0x44
    mov eax, {PD}
    mov cr3, eax
    mov dword [{PT1} + 4], {pte(DATA + 0x5000, 3)}
    mov dword [{AREA} + 0x1000], 0x55
"""


def test_unsync_leaves_a_written_leaf_table_writable_until_invlpg_or_cr3():
    """Four PTE stores after PT1 is shadowed. Synchronized: the first three trap and are
    emulated, and the third, with no use of PT1 in between, floods it (unshadowed); the
    fourth is a plain store; PT1 is shadowed again at the next access through it, and
    the store after the CR3 load traps again (4 emulated). Unsync: the first store
    unprotects PT1 and the rest are plain; INVLPG resyncs one entry, the CR3 load the
    whole table (and protects it again), so the store after it unsyncs once more. The
    guest sees the same either way."""
    native = run("native", UNSYNC_BODY)
    sync = run("shadow", UNSYNC_BODY)
    unsync_mon = HOSTS["shadow-unsync"](program(UNSYNC_BODY), 200_000)[0]
    for mon in (sync, unsync_mon):
        assert guest_view(mon) == guest_view(native)
    s, u = shadow_of(sync).counters, shadow_of(unsync_mon).counters
    assert s["trace_faults"] == s["pt_writes_emulated"] == 4 and s["unsynced"] == 0
    assert s["unshadowed"] == 1
    assert u["unsynced"] == u["trace_faults"] == 2 and u["pt_writes_emulated"] == 0
    assert u["shadow_resyncs"] == 1 and u["unshadowed"] == 0       # at the CR3 load
    assert bytes(native.machine.memory[DATA + 0x4000:DATA + 0x4004]) == b"\x44\0\0\0"


# ---- what the guest may not do ---------------------------------------------------------
@pytest.mark.parametrize("host", SHADOW_HOSTS)
def test_a_guest_entry_naming_memory_beyond_its_ram_stops_the_guest(host):
    """The monitor's memory (shadow tables, VMCS...) lies above the guest's 1 MiB: a PTE
    naming it is never mapped -- the guest is stopped, with the reason."""
    body = f"""
    mov dword [{PT1}], 0x100003
    mov eax, [{AREA}]
"""
    mon, ev = HOSTS[host](program(body), 100_000)
    assert ev.kind == "killed"
    if host == "shadow":                      # trap-and-emulate has no device there
        assert "physical 0x00100000" in ev.reason and "beyond its 0x100000 bytes" in ev.reason
    else:                                     # KVM: no memory slot there -- MMIO
        assert "KVM_EXIT_MMIO" in ev.reason and "0x100000" in ev.reason


@pytest.mark.parametrize("access", [f"mov dword [{HOLE_BASE:#x}], 0",
                                    f"mov eax, [{HOLE_BASE + 0x1000:#x}]"])
def test_the_monitors_hole_is_out_of_bounds_for_a_trap_and_emulate_guest(access):
    """The top 4 MiB hold the monitor's GDT and TSS, mapped read-only for the CPU's own
    descriptor reads: a guest write there, or any access beyond that page, stops it.
    (A guest read of that one page sees the monitor's GDT: VMware hid it behind segment
    limits, which would cost hvsim its flat-segment fast paths.)"""
    mon, ev = HOSTS["shadow"](program("    " + access), 100_000)
    assert ev.kind == "killed" and "keeps for itself" in ev.reason


@pytest.mark.parametrize("host", SHADOW_HOSTS)
def test_no_shadow_entry_ever_maps_the_monitors_memory(host):
    mon = run(host, spaces_body(6, 2) + UNSYNC_BODY)
    sh = shadow_of(mon)
    mem = mon.machine.memory
    assert sh.by_hpa
    for hpa, sp in sh.by_hpa.items():
        assert hpa >= sh.ram                                   # the tables are the monitor's
        words = struct.unpack("<1024I", mem[hpa:hpa + 4096].tobytes())
        for i, w in enumerate(words):
            if not w & 1:
                continue
            if sp.level == 2:
                assert (w & ~0xFFF) in sh.by_hpa or (w & ~0xFFF) == sh.hole_table
            else:
                assert (w & ~0xFFF) < sh.ram, (hex(hpa), i, hex(w))


# ---- write flooding, the pool, snapshots -------------------------------------------------
def test_a_table_written_again_and_again_unused_is_unshadowed():
    """Leave PD1 (a cached root) and write its entries four times: KVM's flood rule
    drops the shadow after three writes with no use in between."""
    body = spaces_body(2, 1) + """
    mov dword [0x51000 + 8], 0
    mov dword [0x51000 + 12], 0
    mov dword [0x51000 + 16], 0
    mov dword [0x51000 + 20], 0
"""
    native, mons = same_as_native(body, hosts=SHADOW_HOSTS)
    for h in SHADOW_HOSTS:
        s = shadow_of(mons[h]).counters
        assert s["unshadowed"] == 1 and s["trace_faults"] >= 3


def test_a_small_pool_reclaims_and_the_guest_does_not_notice():
    """Six address spaces on a pool of 5 shadow pages: roots and tables are dropped and
    rebuilt; the results stay native's."""
    from hvsim.mmu.shadow import ShadowMMU
    mon = TrapAndEmulate(program=program(spaces_body(6, 2)))
    real = ShadowMMU.__init__

    def small(self, machine, ram, pool, **kw):
        real(self, machine, ram, pool[:5], **kw)
    ShadowMMU.__init__ = small
    try:
        ev = mon.run(300_000)
    finally:
        ShadowMMU.__init__ = real
    assert ev.kind == "halt"
    assert guest_view(mon) == guest_view(run("native", spaces_body(6, 2)))
    assert mon.shadow.counters["reclaims"] > 0 and len(mon.shadow.pool) == 5


@pytest.mark.parametrize("host", SHADOW_HOSTS)
def test_a_snapshot_restores_the_shadow_bookkeeping_with_the_machine(host):
    prog = program(spaces_body(3, 2))
    mon = HOSTS[host](prog, 3000)[0]               # stopped half-way (a budget)
    snap = mon.snapshot()
    mon.run(200_000)
    first = guest_view(mon), dict(shadow_of(mon).counters)
    mon.restore(snap)
    mon.run(200_000)
    assert (guest_view(mon), dict(shadow_of(mon).counters)) == first


def test_the_shadow_mmu_checks_its_arguments():
    m = TrapAndEmulate().machine
    from hvsim.mmu.shadow import ShadowMMU
    with pytest.raises(ValueError, match="multiple of 4096"):
        ShadowMMU(m, 1000, [])
    with pytest.raises(ValueError, match="above the guest's RAM"):
        ShadowMMU(m, 1 << 20, [0x1000] * 4)
    with pytest.raises(ValueError, match="at least 4 frames"):
        ShadowMMU(m, 1 << 20, [1 << 20])
    with pytest.raises(TypeError, match="unsync"):
        ShadowMMU(m, 1 << 20, [(1 << 20) + i * 4096 for i in range(4)], unsync=1)
    assert issubclass(ShadowError, Exception)
