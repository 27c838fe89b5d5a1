"""hvsim.paravirt.hypervisor: each hypercall's semantics and Xen's error codes, directed.

Two ways in, whichever shows the rule more plainly:

* **Real PV guests** (tests/pv_guest.py's prelude, or a bare kernel when the hypercall
  counters must hold only what the test did): the guest path matters -- the hypercall
  page, INT 82H from ring 1 or ring 3, the TLB the guest's loads go through, upcalls
  and bounce frames on the guest's stack, HYPERVISOR_iret.
* **The handlers called directly** (``hc_mmu_update(hv, reqs, count, pdone, dom)``) on
  a booted domain, with their request arrays written into guest memory (the builder
  identity-maps the guest's RAM, so a guest-virtual address is the physical one): the
  exit handlers are plain functions a test can feed.

Oracles: Xen's public headers and hypercall code (xen/include/public/xen.h,
arch-x86/xen-x86_32.h, event_channel.h; xen/arch/x86/mm.c for the errnos -- EAX holds
them as 32-bit two's complement, -ENOSYS = FFFFFFDAH), the SDM for the gate and
page-fault error-code layouts, and the hypervisor's own documented layout of its
tables page (TSS at +80H, IDT at +800H). Values are spelled out literally where the
header gives them, not recomputed from hvsim's constants.
"""
import struct

import pytest

from hvsim.arch.vectors import vector_name
from hvsim.asm import assemble
from hvsim.monitors.base import Kill
from hvsim.paravirt import abi as A
from hvsim.paravirt import hypervisor as H
from hvsim.paravirt.frames import L1, L2, NONE, RW
from hvsim.paravirt.hypervisor import Hypercall, Hypervisor
from pv_guest import guest

P, W, U, ACC, DIRTY, PSE, GLOBAL = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80, 0x100
REQS = 0x40000          # scratch page for request arrays (identity-mapped, writable)
DONE = 0x40F00          # where *done goes
TSS_ESP1, TSS_SS1 = 0x80 + 12, 0x80 + 16        # tables page + TSS + offset (Figure 7-2)
IDT = 0x800


# ---- helpers --------------------------------------------------------------------------
def bare(extra=""):
    """A kernel that spins: the domain as the builder leaves it, for direct calls."""
    return Hypervisor(program=assemble(
        "start: jmp start\n" + extra + "\nalign 4096\nhypercall_page: times 4096 db 0\n"))


def u32(hv, pa):
    return int.from_bytes(hv.machine.memory[pa:pa + 4].tobytes(), "little")


def put(hv, pa, *words):
    hv.machine.write_physical(pa, struct.pack(f"<{len(words)}I", *words))


def call(fn, hv, *args):
    """What the guest would find in EAX: the return value, or the refusal's errno."""
    try:
        return fn(hv, *args)
    except Hypercall as h:
        return h.rc


def pte_at(hv, va):
    """Physical address of the L1 entry that maps ``va`` in the current directory."""
    pde = hv.frames.entry(hv.base >> 12, va >> 22)
    return (pde & ~0xFFF) + 4 * ((va >> 12) & 1023)


def mmu_update(hv, *reqs, dom=A.DOMID_SELF, at=REQS):
    hv.machine.write_physical(at, b"".join(struct.pack("<QQ", p, v) for p, v in reqs))
    put(hv, DONE, 0xDEADBEEF)
    return call(H.hc_mmu_update, hv, at, len(reqs), DONE, dom), u32(hv, DONE)


def mmuext(hv, *ops, dom=A.DOMID_SELF, at=REQS):
    hv.machine.write_physical(at, b"".join(struct.pack("<III", c, a, 0) for c, a in ops))
    put(hv, DONE, 0xDEADBEEF)
    return call(H.hc_mmuext_op, hv, at, len(ops), DONE, dom), u32(hv, DONE)


def counts(hv, *frames):
    return [(int(hv.frames.type[f]), int(hv.frames.count[f])) for f in frames]


def readonly(hv, frame):
    """Drop the identity mapping's RW so ``frame`` may become a table."""
    assert mmu_update(hv, (pte_at(hv, frame << 12), frame << 12 | P | ACC)) == (0, 1)


def var(hv, k, name, size=4):
    at = k.labels[name]
    return int.from_bytes(hv.machine.memory[at:at + size].tobytes(), "little")


def run(body, data="", traps="", setup=None, budget=200_000):
    k = guest(body, data, traps)
    hv = Hypervisor(program=k)
    if setup is not None:
        setup(hv, k)
    return k, hv, hv.run(budget)


def neg(errno):
    return (-errno) & 0xFFFFFFFF


# ---- the hypercall page and the builder ----------------------------------------------------
def test_hypercall_page_holds_xens_stubs():
    k = assemble("start: jmp start\nalign 4096\nhypercall_page: times 4096 db 0\n")
    hv = Hypervisor(program=k)
    hcp = k.labels["hypercall_page"]
    page = hv.machine.memory[hcp:hcp + 4096].tobytes()
    # pv_ring1_init_hypercall_page: mov eax, n / int 0x82 / ret, 32 bytes apart
    assert page[0:8] == bytes.fromhex("b800000000cd82c3")
    assert page[32:40] == bytes.fromhex("b801000000cd82c3")
    assert page[29 * 32:29 * 32 + 8] == bytes.fromhex("b81d000000cd82c3")
    assert page[127 * 32:127 * 32 + 8] == bytes.fromhex("b87f000000cd82c3")
    # iret: push eax / mov eax, 23 / int 0x82 -- and no ret: it never returns
    assert page[23 * 32:23 * 32 + 9] == bytes.fromhex("50b817000000cd82cc")
    assert page[8:32] == b"\xcc" * 24


def test_builder_refuses_a_kernel_without_a_page_aligned_hypercall_page():
    with pytest.raises(ValueError, match="hypercall_page"):
        Hypervisor(program=assemble("start: jmp start\nalign 4096\ntimes 4096 db 0\n"))
    with pytest.raises(ValueError, match="page-aligned"):
        Hypervisor(program=assemble("start: jmp start\nalign 4096\ntimes 16 db 0\n"
                                    "hypercall_page: times 4096 db 0\n"))


# ---- the trap into the hypervisor ------------------------------------------------------------
def test_unknown_hypercall_returns_enosys_and_the_guest_goes_on():
    k, hv, ev = run("""
        mov eax, 99
        int 0x82
        mov [r1], eax
        mov ebx, 0
        call hypercall_page + 12 * 32      ; memory_op: named by Xen, not implemented here
        mov [r2], eax
        jmp shutdown
    """, "r1: dd 0\nr2: dd 0")
    assert (ev.kind, hv.shutdown_reason) == ("halt", "poweroff")
    assert var(hv, k, "r1") == 0xFFFFFFDA == neg(A.ENOSYS)
    assert var(hv, k, "r2") == 0xFFFFFFDA
    assert hv.hypercalls[99] == 1 and hv.hypercalls[12] == 1
    assert hv.errors["#99"] == 1 and hv.errors["memory_op"] == 1


# ---- set_trap_table ---------------------------------------------------------------------------
def trap_table(hv, *entries, at=REQS):
    raw = b"".join(struct.pack("<BBHI", *e) for e in entries)
    hv.machine.write_physical(at, raw)
    return call(H.hc_set_trap_table, hv, at)


def gate(hv, vector):
    at = hv.tables_page + IDT + 8 * vector
    return int.from_bytes(hv.machine.memory[at:at + 8].tobytes(), "little")


def test_set_trap_table_entries_up_to_the_terminator():
    hv = bare()
    rc = trap_table(hv, (14, 0, 0x19, 0x1234), (13, 4, 0x18, 0x5678), (0, 0, 0, 0),
                    (6, 0, 0x19, 0x9999))
    assert rc == 0
    # the RPL-0 selector 18H is raised to the guest kernel's RPL 1; vector 6 after the
    # terminator (address 0) is not read
    assert hv.trap_table == {14: (0, 0x19, 0x1234), 13: (4, 0x19, 0x5678)}


def test_set_trap_table_refuses_another_code_selector_and_keeps_the_old_table():
    hv = bare()
    assert trap_table(hv, (14, 0, 0x19, 0x1234), (0, 0, 0, 0)) == 0
    for cs in (0x3B, 0x29, 0x21, 0x08 | 1, 0):
        assert trap_table(hv, (13, 0, 0x19, 0x10), (14, 0, cs, 0x20), (0, 0, 0, 0)) \
            == -A.EPERM, hex(cs)
        assert hv.trap_table == {14: (0, 0x19, 0x1234)}


def test_set_trap_table_null_clears_and_a_bad_pointer_faults():
    hv = bare()
    assert trap_table(hv, (14, 0, 0x19, 0x1234), (0, 0, 0, 0)) == 0
    assert call(H.hc_set_trap_table, hv, 0x7FF00000) == -A.EFAULT      # not mapped
    assert hv.trap_table == {14: (0, 0x19, 0x1234)}
    assert call(H.hc_set_trap_table, hv, 0) == 0
    assert hv.trap_table == {}


def test_a_dpl3_int80_entry_becomes_a_real_idt_gate_and_goes_away_again():
    hv = bare()
    assert gate(hv, 0x80) == 0 and 0x80 in hv.machine.routed_to_host()
    assert trap_table(hv, (0x80, 3, 0x19, 0x12345678), (0, 0, 0, 0)) == 0
    # 32-bit trap gate (SDM Vol. 3A, Figure 6-2): offset 15..0, selector | offset 31..16,
    # P=1, DPL=3, type 1111b
    assert gate(hv, 0x80) == 0x1234_EF00_0019_5678
    assert 0x80 not in hv.machine.routed_to_host()
    # flags bit 2 (events masked on entry): an interrupt gate, type 1110b
    assert trap_table(hv, (0x80, 3 | 4, 0x19, 0x12345678), (0, 0, 0, 0)) == 0
    assert gate(hv, 0x80) == 0x1234_EE00_0019_5678
    # DPL 1: the hypervisor bounces it; no gate
    assert trap_table(hv, (0x80, 1, 0x19, 0x12345678), (0, 0, 0, 0)) == 0
    assert gate(hv, 0x80) == 0 and 0x80 in hv.machine.routed_to_host()
    assert hv.trap_table == {0x80: (1, 0x19, 0x12345678)}
    assert trap_table(hv, (0x80, 3, 0x19, 0x1000), (0, 0, 0, 0)) == 0
    assert trap_table(hv, (14, 0, 0x19, 0x1234), (0, 0, 0, 0)) == 0     # 80H removed
    assert gate(hv, 0x80) == 0 and 0x80 in hv.machine.routed_to_host()


def test_int80_with_a_dpl3_entry_reaches_ring1_without_the_hypervisor():
    k, hv, ev = run(USER_PRELUDE + """
    user:
        mov eax, 0x43
        mov ds, eax
        mov eax, 7
        int 0x80
        mov [user_eax], eax
        mov eax, 99
        int 0x80
    sys80:
        cmp eax, 99
        je shutdown
        add eax, 100
        iret
    """, "user_eax: dd 0", traps="db 0x80, 3\ndw 0x19\ndd sys80", setup=user_pages)
    assert ev.kind == "halt", ev
    assert var(hv, k, "user_eax") == 107
    assert hv.machine.counters["delivered_0x80"] == 2
    assert sum(hv.bounced.values()) == 0                 # no trap went through the hypervisor
    assert set(hv.hypercalls) == {0, 3, 4, 14, 29}       # the prelude's and shutdown


# ring 3: the body irets to label ``user`` with SS:ESP = 43H:USTACK
USER_PRELUDE = """
    push 0x43
    push 0x6F000
    pushf
    push 0x3B
    push user
    iret
"""


def user_pages(hv, k):
    """Give ring 3 the guest's image pages and a stack page (the US bit alone does not
    change any frame's type count, so this may bypass the hypervisor)."""
    for va in list(range(0x1000, k.labels["hypercall_page"], 0x1000)) + [0x6E000]:
        at = pte_at(hv, va)
        put(hv, at, u32(hv, at) | U)


def test_software_interrupts_the_trap_table_does_not_allow_are_gp_n8_plus_2():
    """Xen's do_general_protection: INT n raises #GP(n*8 + 2) on the real IDT's DPL-0
    gate; it goes through only if the guest's entry has DPL >= CPL (permit_softint), and
    a vector without an entry has DPL 0. INT3 is exempt. INT 82H's real gate has DPL 1."""
    k, hv, ev = run(USER_PRELUDE + """
    user:
        mov eax, 0x43
        mov ds, eax
        mov dword [gp_resume], after82
        int 0x82
    after82:
        mov eax, [gp_err]
        mov [err1], eax
        mov dword [gp_resume], after80
        int 0x80                    ; its entry has DPL 1
    after80:
        mov eax, [gp_err]
        mov [err2], eax
        mov dword [gp_resume], after81
        int 0x81                    ; no entry at all
    after81:
        mov eax, [gp_err]
        mov [err3], eax
        int3                        ; its entry has DPL 0: delivered all the same
    after_bp:
        int 0x83                    ; DPL 3: bounced to its handler
    bp_handler:
        mov eax, [esp]
        mov [bp_ret], eax
        iret
    """, "err1: dd 0\nerr2: dd 0\nerr3: dd 0\nbp_ret: dd 0",
        traps="db 0x80, 1\ndw 0x19\ndd 0x1000\ndb 3, 0\ndw 0x19\ndd bp_handler\n"
              "db 0x83, 3\ndw 0x19\ndd shutdown", setup=user_pages)
    assert ev.kind == "halt", ev
    assert var(hv, k, "err1") == 0x82 * 8 + 2 == 0x412
    assert var(hv, k, "err2") == 0x80 * 8 + 2 == 0x402
    assert var(hv, k, "err3") == 0x81 * 8 + 2 == 0x40A
    assert var(hv, k, "gp_count") == 3 and hv.bounced[vector_name(13)] == 3
    assert var(hv, k, "bp_ret") == k.labels["after_bp"]          # a trap: after the INT3
    assert hv.bounced[vector_name(3)] == 1 and hv.bounced[vector_name(0x83)] == 1


def test_int_n_without_an_entry_from_ring1_is_a_gp_too():
    k, hv, ev = run("""
        mov dword [gp_resume], after
        int 0x81
    after:
        jmp shutdown
    """)
    assert ev.kind == "halt", ev
    assert (var(hv, k, "gp_err"), var(hv, k, "gp_count")) == (0x40A, 1)


# ---- mmu_update -------------------------------------------------------------------------------
def test_a_valid_l1_update_is_visible_to_the_guest():
    def setup(hv, k):
        hv.machine.write_physical(0x50000, b"AAAA")
        hv.machine.write_physical(0x51000, b"BBBB")
        put(hv, k.labels["req"], pte_at(hv, 0x50000), 0, 0x51000 | P | W | ACC, 0)
    k, hv, ev = run("""
        mov ebx, req
        mov ecx, 1
        mov edx, done
        mov esi, 0x7FF0
        call hypercall_page + HC_mmu_update * 32
        mov [rc], eax
        mov eax, [0x50000]
        mov [seen], eax
        jmp shutdown
    """, "req: dd 0, 0, 0, 0\ndone: dd -1\nrc: dd -1\nseen: dd 0", setup=setup)
    assert ev.kind == "halt"
    assert (var(hv, k, "rc"), var(hv, k, "done")) == (0, 1)
    assert var(hv, k, "seen") == int.from_bytes(b"BBBB", "little")
    # frame 50H lost its only writable mapping; frame 51H has two now
    assert counts(hv, 0x50, 0x51) == [(NONE, 0), (RW, 2)]
    assert hv.pt_updates >= 1 and hv.frames.check(hv.base) == []


def test_mmu_update_refuses_a_writable_mapping_of_a_page_table():
    hv = bare()
    l1 = hv.frames.entry(hv.base >> 12, 0) & ~0xFFF
    at = pte_at(hv, 0x50000)
    before = u32(hv, at)
    for table in (l1, hv.base):
        assert mmu_update(hv, (at, table | P | W)) == (-A.EINVAL, 0)
        assert u32(hv, at) == before
    assert counts(hv, l1 >> 12, hv.base >> 12, 0x50) == [(L1, 1), (L2, 2), (RW, 1)]
    # read-only is fine: the guest may read its own page tables
    assert mmu_update(hv, (at, l1 | P)) == (0, 1)
    assert u32(hv, at) == l1 | P
    assert counts(hv, l1 >> 12, 0x50) == [(L1, 1), (NONE, 0)]


def test_mmu_update_refuses_hypervisor_frames_but_the_shared_info_one():
    hv = bare()
    assert hv.ram == 0x100000
    at = pte_at(hv, 0x50000)
    before = u32(hv, at)
    si = hv.shared_info
    for pa in (0x100000, 0x101000, 0x103000, 0x104000, 0x7FFFF000, 0xFFFFF000):
        if pa == si:
            continue
        for flags in (P, P | W):
            assert mmu_update(hv, (at, pa | flags)) == (-A.EPERM, 0), hex(pa)
            assert u32(hv, at) == before
    assert si == 0x102000
    assert mmu_update(hv, (at, si | P | W)) == (0, 1)
    assert hv.frames.shared_rw[si >> 12] == 1
    assert mmu_update(hv, (at, si | P)) == (0, 1)
    assert hv.frames.shared_rw[si >> 12] == 0
    assert hv.frames.check(hv.base) == []


@pytest.mark.parametrize("flag", [GLOBAL, PSE, GLOBAL | PSE])
def test_mmu_update_refuses_global_and_pse_pat_flags(flag):
    hv = bare()
    at = pte_at(hv, 0x50000)
    before = u32(hv, at)
    assert mmu_update(hv, (at, 0x51000 | P | flag)) == (-A.EINVAL, 0)
    assert u32(hv, at) == before and counts(hv, 0x51) == [(RW, 1)]
    # a not-present entry is not checked (Xen's get_page_from_l1e returns at once)
    assert mmu_update(hv, (at, 0x51000 | flag)) == (0, 1)
    assert u32(hv, at) == 0x51000 | flag


def test_mmu_update_ptr_must_be_in_a_page_table_in_use():
    hv = bare()
    put(hv, 0x50000, 0x11111111)
    assert mmu_update(hv, (0x50000, 0x51000 | P)) == (-A.EINVAL, 0)       # a data page
    assert u32(hv, 0x50000) == 0x11111111
    readonly(hv, 0x52)
    assert mmu_update(hv, (0x52000, 0x51000 | P)) == (-A.EINVAL, 0)       # typed nothing
    # in the hypervisor's memory (Xen: get_page_from_gfn fails, rc stays -EINVAL)
    assert mmu_update(hv, (hv.tables_page + 8, 0x51000 | P)) == (-A.EINVAL, 0)
    assert mmu_update(hv, (0x40000000, 0x51000 | P)) == (-A.EINVAL, 0)


def test_mmu_update_preserve_ad_keeps_the_accessed_and_dirty_flags():
    hv = bare()
    at = pte_at(hv, 0x50000)
    assert u32(hv, at) & (ACC | DIRTY) == ACC | DIRTY        # the builder set them
    assert mmu_update(hv, (at | A.MMU_PT_UPDATE_PRESERVE_AD, 0x51000 | P)) == (0, 1)
    assert u32(hv, at) == 0x51000 | P | ACC | DIRTY
    assert mmu_update(hv, (at | A.MMU_NORMAL_PT_UPDATE, 0x51000 | P)) == (0, 1)
    assert u32(hv, at) == 0x51000 | P
    assert mmu_update(hv, (at | 2, 0x51000 | P | ACC | DIRTY)) == (0, 1)
    assert u32(hv, at) == 0x51000 | P                       # A/D come from the old entry


def test_mmu_update_other_commands():
    hv = bare()
    # MMU_MACHPHYS_UPDATE: the M2P table is the identity here (one domain, mfn == pfn)
    assert mmu_update(hv, (0x50000 | 1, 0x50)) == (0, 1)
    assert mmu_update(hv, (0x50000 | 1, 0x51)) == (-A.EINVAL, 0)
    assert mmu_update(hv, (pte_at(hv, 0x50000) | 3, 0)) == (-A.ENOSYS, 0)


def test_mmu_update_batch_stops_at_the_first_refusal():
    hv = bare()
    ats = [pte_at(hv, va) for va in (0x50000, 0x51000, 0x52000, 0x53000, 0x54000)]
    before = [u32(hv, a) for a in ats]
    l1 = hv.frames.entry(hv.base >> 12, 0) & ~0xFFF
    rc, done = mmu_update(hv, (ats[0], 0x60000 | P), (ats[1], 0x61000 | P),
                          (ats[2], 0x62000 | P), (ats[3], l1 | P | W),
                          (ats[4], 0x64000 | P))
    assert (rc, done) == (-A.EINVAL, 3)
    assert [u32(hv, a) for a in ats] == [0x60000 | P, 0x61000 | P, 0x62000 | P,
                                          before[3], before[4]]
    assert counts(hv, 0x50, 0x53, 0x54) == [(NONE, 0), (RW, 1), (RW, 1)]
    assert hv.frames.check(hv.base) == []


def test_mmu_update_foreign_domain_and_bad_pointers():
    hv = bare()
    at = pte_at(hv, 0x50000)
    before = u32(hv, at)
    for dom in (1, 5, 0x7FF1, 0xFFFF):
        assert mmu_update(hv, (at, 0x51000 | P), dom=dom) == (-A.ESRCH, 0xDEADBEEF)
    assert u32(hv, at) == before
    assert mmu_update(hv, (at, 0x51000 | P), dom=0) == (0, 1)
    assert call(H.hc_mmu_update, hv, 0x7FF00000, 1, DONE, A.DOMID_SELF) == -A.EFAULT
    # *done in a read-only page (the directory): the update is done, the store faults
    assert call(H.hc_mmu_update, hv, REQS, 1, hv.base, A.DOMID_SELF) == -A.EFAULT


def test_l2_updates_hook_a_table_and_never_touch_the_hypervisors_slot():
    hv = bare()
    put(hv, 0x60000, *([0] * 1024))
    put(hv, 0x60000, 0x51000 | P | W)                  # the new table maps 51H writable
    slot1 = hv.base + 4
    assert mmu_update(hv, (slot1, 0x60000 | P | W | U)) == (-A.EINVAL, 0)   # 60H is RW
    readonly(hv, 0x60)
    assert mmu_update(hv, (slot1, 0x60000 | P | W | U)) == (0, 1)
    assert counts(hv, 0x60, 0x51) == [(L1, 1), (RW, 2)]
    assert hv.machine.read_linear(0x400000, 4) == b"\0\0\0\0"    # frame 51H, through it
    slot = hv.base + 4 * 1008
    hvpde = u32(hv, slot)
    assert hvpde & ~ACC == hv.hypervisor_pde       # (the CPU may have set A reading the GDT)
    for val in (0, 0x60000 | P, hvpde):
        assert mmu_update(hv, (slot, val)) == (-A.EINVAL, 0)
        assert u32(hv, slot) == hvpde
    assert mmu_update(hv, (hv.base + 4 * 1009, 0x60000 | P)) == (-A.EINVAL, 0)
    assert mmu_update(hv, (slot1, 0)) == (0, 1)
    assert counts(hv, 0x60, 0x51) == [(NONE, 0), (RW, 1)]
    assert hv.frames.check(hv.base) == []


def test_a_guest_store_into_its_page_table_is_a_page_fault_with_cr2_in_vcpu_info():
    k, hv, ev = run("""
        mov dword [pf_resume], resumed
        mov eax, [start_info]
        mov eax, [eax + 60]          ; pt_base: the directory, mapped read-only
        mov [target], eax
        mov dword [eax + 4], 0x12345067
    resumed:
        jmp shutdown
    """, "target: dd 0")
    assert ev.kind == "halt", ev
    assert var(hv, k, "target") == hv.base
    assert var(hv, k, "pf_cr2") == hv.base + 4
    assert u32(hv, hv.shared_info + 8) == hv.base + 4          # vcpu_info.arch.cr2
    assert var(hv, k, "pf_err") == 3                           # P | W, supervisor
    assert var(hv, k, "pf_count") == 1
    assert hv.bounced[vector_name(14)] == 1
    assert u32(hv, hv.base + 4) == 0


# ---- update_va_mapping and the TLB -------------------------------------------------------------
UVM_BODY = """
    mov eax, [0x50000]            ; the TLB now holds 50000H -> frame 50H
    mov [r1], eax
    mov ebx, 0x50000
    mov ecx, 0x51063              ; -> frame 51H, P | RW | A | D
    mov edx, FLAGS
    call hypercall_page + HC_update_va_mapping * 32
    mov [rc], eax
    mov eax, [0x50000]
    mov [r2], eax
    mov ebx, invlpg               ; MMUEXT_INVLPG_LOCAL 50000H
    mov ecx, 1
    mov edx, 0
    mov esi, 0x7FF0
    call hypercall_page + HC_mmuext_op * 32
    mov eax, [0x50000]
    mov [r3], eax
    jmp shutdown
"""


@pytest.mark.parametrize("flags, stale", [(A.UVMF_INVLPG, False), (A.UVMF_TLB_FLUSH, False),
                                          (A.UVMF_NONE, True),
                                          (A.UVMF_INVLPG | A.UVMF_ALL, False)])
def test_update_va_mapping_flush_flags_decide_what_the_tlb_keeps(flags, stale):
    def setup(hv, k):
        hv.machine.write_physical(0x50000, b"AAAA")
        hv.machine.write_physical(0x51000, b"BBBB")
    k, hv, ev = run(UVM_BODY.replace("FLAGS", str(flags)),
                    "r1: dd 0\nr2: dd 0\nr3: dd 0\nrc: dd -1\ninvlpg: dd 7, 0x50000, 0",
                    setup=setup)
    a, b = (int.from_bytes(s, "little") for s in (b"AAAA", b"BBBB"))
    assert ev.kind == "halt", ev
    assert var(hv, k, "rc") == 0
    assert var(hv, k, "r1") == a
    # UVMF_NONE: the CPU still uses the translation it cached, until the guest's INVLPG
    assert var(hv, k, "r2") == (a if stale else b)
    assert var(hv, k, "r3") == b
    assert u32(hv, pte_at(hv, 0x50000)) & ~(ACC | DIRTY) == 0x51000 | P | W


def test_update_va_mapping_refusals():
    hv = bare()
    at = pte_at(hv, 0x50000)
    before = u32(hv, at)
    uvm = H.hc_update_va_mapping
    assert call(uvm, hv, 0xFC000000, 0x51000 | P, 2) == -A.EINVAL     # the hypervisor's
    assert call(uvm, hv, 0x800000, 0x51000 | P, 2) == -A.EINVAL       # no table maps it
    assert call(uvm, hv, 0x50000, 0x51000 | P | GLOBAL, 2) == -A.EINVAL
    assert call(uvm, hv, 0x50000, hv.tables_page | P, 2) == -A.EPERM
    assert call(uvm, hv, 0x50000, hv.base | P | W, 2) == -A.EINVAL
    assert u32(hv, at) == before
    assert call(uvm, hv, 0x50123, 0x51000 | P, 2) == 0                 # any va in the page
    assert u32(hv, at) == 0x51000 | P


# ---- mmuext_op ------------------------------------------------------------------------------------
def test_pin_and_unpin_tables():
    hv = bare()
    put(hv, 0x60000, *([0] * 1024))
    readonly(hv, 0x60)
    assert mmuext(hv, (A.MMUEXT_PIN_L1_TABLE, 0x60)) == (0, 1)
    assert counts(hv, 0x60) == [(L1, 1)] and hv.frames.pinned[0x60]
    assert mmuext(hv, (A.MMUEXT_PIN_L1_TABLE, 0x60)) == (-A.EINVAL, 0)     # pinned twice
    assert mmuext(hv, (A.MMUEXT_PIN_L2_TABLE, 0x60)) == (-A.EINVAL, 0)
    assert mmuext(hv, (A.MMUEXT_UNPIN_TABLE, 0x60)) == (0, 1)
    assert counts(hv, 0x60) == [(NONE, 0)] and not hv.frames.pinned[0x60]
    assert mmuext(hv, (A.MMUEXT_UNPIN_TABLE, 0x60)) == (-A.EINVAL, 0)      # not pinned
    assert mmuext(hv, (A.MMUEXT_UNPIN_TABLE, 0x100)) == (-A.EINVAL, 0)     # not ours
    # mapped writable (the identity mapping of 50H): no
    assert mmuext(hv, (A.MMUEXT_PIN_L1_TABLE, 0x50)) == (-A.EINVAL, 0)
    assert counts(hv, 0x50) == [(RW, 1)] and not hv.frames.pinned[0x50]
    assert mmuext(hv, (A.MMUEXT_PIN_L3_TABLE, 0x60)) == (-A.EINVAL, 0)
    assert mmuext(hv, (A.MMUEXT_PIN_L4_TABLE, 0x60)) == (-A.EINVAL, 0)
    assert mmuext(hv, (99, 0)) == (-A.ENOSYS, 0)
    assert mmuext(hv, (A.MMUEXT_PIN_L1_TABLE, 0x60), dom=3) == (-A.ESRCH, 0xDEADBEEF)
    assert hv.frames.check(hv.base) == []


def test_mmuext_done_counts_the_ops_before_the_refusal():
    hv = bare()
    for f in (0x60, 0x61):
        readonly(hv, f)
    rc, done = mmuext(hv, (A.MMUEXT_PIN_L1_TABLE, 0x60), (A.MMUEXT_PIN_L1_TABLE, 0x61),
                      (A.MMUEXT_TLB_FLUSH_LOCAL, 0), (A.MMUEXT_PIN_L1_TABLE, 0x60),
                      (A.MMUEXT_UNPIN_TABLE, 0x61))
    assert (rc, done) == (-A.EINVAL, 3)
    assert hv.frames.pinned[0x61]                 # the unpin after the refusal never ran


def test_pinning_a_table_refuses_a_writable_entry_for_itself_or_a_foreign_frame():
    hv = bare()
    readonly(hv, 0x60)
    for bad, rc in ((0x60000 | P | W, -A.EINVAL), (hv.tables_page | P, -A.EPERM),
                    (0x51000 | P | GLOBAL, -A.EINVAL)):
        put(hv, 0x60000, *([0] * 1024))
        put(hv, 0x60000 + 4 * 7, 0x52000 | P | W)
        put(hv, 0x60000 + 4 * 9, bad)
        assert mmuext(hv, (A.MMUEXT_PIN_L1_TABLE, 0x60)) == (rc, 0)
        # all or nothing: entry 7's reference was given back
        assert counts(hv, 0x60, 0x52) == [(NONE, 0), (RW, 1)]
    assert hv.frames.check(hv.base) == []


def test_new_baseptr_switches_cr3_and_moves_the_counts():
    hv = bare()
    old = hv.base
    l1 = hv.frames.entry(old >> 12, 0) & ~0xFFF
    put(hv, 0x61000, *([0] * 1024))
    put(hv, 0x61000, l1 | P | W | U)
    put(hv, 0x61000 + 4 * 1008, 0xDEAD0067, 0xBEEF0067)      # junk in the hypervisor's slot
    readonly(hv, 0x61)
    assert counts(hv, old >> 12, l1 >> 12) == [(L2, 2), (L1, 1)]
    assert mmuext(hv, (A.MMUEXT_PIN_L2_TABLE, 0x61)) == (0, 1)
    assert counts(hv, 0x61, l1 >> 12) == [(L2, 1), (L1, 2)]
    assert u32(hv, 0x61000 + 4 * 1008) == hv.hypervisor_pde          # filled in
    assert u32(hv, 0x61000 + 4 * 1009) == 0
    assert mmuext(hv, (A.MMUEXT_NEW_BASEPTR, 0x61)) == (0, 1)
    assert hv.base == 0x61000 and hv.machine.cpu.cr3 == 0x61000
    assert counts(hv, old >> 12, 0x61) == [(L2, 1), (L2, 2)]          # pin only / pin + base
    assert mmuext(hv, (A.MMUEXT_UNPIN_TABLE, old >> 12)) == (0, 1)
    assert counts(hv, old >> 12, l1 >> 12) == [(NONE, 0), (L1, 1)]
    # an unpinned directory is validated by the base pointer's own reference
    put(hv, 0x62000, *([0] * 1024))
    put(hv, 0x62000, l1 | P | W | U)
    readonly(hv, 0x62)
    assert mmuext(hv, (A.MMUEXT_NEW_BASEPTR, 0x62)) == (0, 1)
    assert counts(hv, 0x61, 0x62, l1 >> 12) == [(L2, 1), (L2, 1), (L1, 2)]
    # a frame mapped writable cannot be a directory; CR3 stays
    assert mmuext(hv, (A.MMUEXT_NEW_BASEPTR, 0x50)) == (-A.EINVAL, 0)
    assert mmuext(hv, (A.MMUEXT_NEW_BASEPTR, 0x100)) == (-A.EPERM, 0)
    assert hv.machine.cpu.cr3 == 0x62000
    assert hv.frames.check(hv.base) == []
    # the guest runs on under the new directory: the CPU reads the GDT/IDT through the
    # hypervisor's slot, which validation filled in
    assert hv.run(100).kind == "budget"


def test_a_guest_switches_address_space_and_keeps_running():
    """NEW_BASEPTR from a real guest: the hypercall returns into the new space."""
    def setup(hv, k):
        l1 = hv.frames.entry(hv.base >> 12, 0) & ~0xFFF
        put(hv, 0x61000, l1 | P | W | U)
        put(hv, k.labels["pte"], pte_at(hv, 0x61000), 0, 0x61000 | P | ACC, 0)
    k, hv, ev = run("""
        mov ebx, pte                  ; the new directory's frame: read-only first
        mov ecx, 1
        mov edx, 0
        mov esi, 0x7FF0
        call hypercall_page + HC_mmu_update * 32
        mov [rc1], eax
        mov ebx, ops                  ; pin it, switch to it
        mov ecx, 2
        mov edx, done
        mov esi, 0x7FF0
        call hypercall_page + HC_mmuext_op * 32
        mov [rc2], eax
        mov eax, [0x50000]
        mov [seen], eax
        jmp shutdown
    """, "pte: dd 0, 0, 0, 0\nops: dd 1, 0x61, 0, 5, 0x61, 0\n"
         "rc1: dd -1\nrc2: dd -1\ndone: dd -1\nseen: dd 0", setup=setup)
    assert ev.kind == "halt", ev
    assert [var(hv, k, n) for n in ("rc1", "rc2", "done")] == [0, 0, 2]
    assert hv.machine.cpu.cr3 == 0x61000 == hv.base
    assert hv.frames.check(hv.base) == []


# ---- multicall ----------------------------------------------------------------------------------
def multicall_kernel(entries):
    lines = []
    for op, args in entries:
        args = list(args) + [0] * (6 - len(args))
        lines.append("dd " + ", ".join(str(x) for x in [op, 0xDEADBEEF] + args))
    return assemble(f"""
    start:
        mov ebx, calls
        mov ecx, {len(entries)}
        call hypercall_page + 13 * 32
        mov [rc], eax
        mov ebx, 2
        mov ecx, reason
        call hypercall_page + 29 * 32
    rc: dd -1
    reason: dd 0
    calls:
    """ + "\n".join(lines) + "\nalign 4096\nhypercall_page: times 4096 db 0\n")


def test_multicall_batches_update_va_mappings_into_one_trap():
    uvm = A.HYPERVISOR_update_va_mapping
    entries = [(uvm, (0x50000, 0x50000 | P | ACC, 2)),
               (uvm, (0x51000, 0x51000 | P | ACC, 2)),
               (uvm, (0x52000, 0x100000 | P, 2)),          # the hypervisor's frame: refused
               (uvm, (0x53000, 0x53000 | P | ACC, 2)),
               (A.HYPERVISOR_multicall, (0, 0)),           # nested: refused
               (A.HYPERVISOR_iret, ()),                    # refused: it does not return
               (99, ()),                                   # no such hypercall
               (A.HYPERVISOR_xen_version, (0,))]
    k = multicall_kernel(entries)
    hv = Hypervisor(program=k)
    ev = hv.run(10_000)
    assert (ev.kind, hv.shutdown_reason) == ("halt", "poweroff")
    assert hv.hypercalls == {13: 1, 29: 1}                # one trap for the batch
    assert hv.hypercalls.get(14, 0) == 0
    assert hv.batched == {14: 4, 17: 1}
    assert hv.multicall_entries == 8
    assert var(hv, k, "rc") == 0
    results = [u32(hv, k.labels["calls"] + 32 * i + 4) for i in range(len(entries))]
    assert results == [0, 0, neg(A.EPERM), 0, neg(A.EINVAL), neg(A.EINVAL), neg(A.ENOSYS),
                       0x30000]
    for va, want in ((0x50000, 0x50000 | P | ACC), (0x51000, 0x51000 | P | ACC),
                     (0x53000, 0x53000 | P | ACC)):
        assert u32(hv, pte_at(hv, va)) == want
    assert u32(hv, pte_at(hv, 0x52000)) & ~(ACC | DIRTY) == 0x52000 | P | W
    assert counts(hv, 0x50, 0x52) == [(NONE, 0), (RW, 1)]


def test_multicall_with_an_unreadable_array_faults():
    hv = bare()
    assert call(H.hc_multicall, hv, 0x7FF00000, 2) == -A.EFAULT
    assert call(H.hc_multicall, hv, REQS, 0) == 0


# ---- stack_switch, set_callbacks ------------------------------------------------------------------
def test_stack_switch_writes_tss_ss1_esp1():
    hv = bare()
    tp = hv.tables_page
    assert call(H.hc_stack_switch, hv, 0x21, 0x7F000) == 0
    assert (u32(hv, tp + TSS_ESP1), u32(hv, tp + TSS_SS1) & 0xFFFF) == (0x7F000, 0x21)
    assert call(H.hc_stack_switch, hv, 0x20, 0x7E000) == 0          # RPL 0 raised to 1
    assert (u32(hv, tp + TSS_ESP1), u32(hv, tp + TSS_SS1) & 0xFFFF) == (0x7E000, 0x21)
    for ss in (0x43, 0x19, 0x31, 0x10, 0):
        assert call(H.hc_stack_switch, hv, ss, 0x1000) == -A.EINVAL, hex(ss)
    assert (u32(hv, tp + TSS_ESP1), u32(hv, tp + TSS_SS1) & 0xFFFF) == (0x7E000, 0x21)


def test_set_callbacks():
    hv = bare()
    assert call(H.hc_set_callbacks, hv, 0x18, 0x1111, 0x19, 0x2222) == 0
    assert (hv.event_callback, hv.failsafe_callback) == ((0x19, 0x1111), (0x19, 0x2222))
    assert call(H.hc_set_callbacks, hv, 0x3B, 0x3333, 0x19, 0x4444) == -A.EPERM
    assert call(H.hc_set_callbacks, hv, 0x19, 0x3333, 0x21, 0x4444) == -A.EPERM
    assert (hv.event_callback, hv.failsafe_callback) == ((0x19, 0x1111), (0x19, 0x2222))


# ---- time and events ------------------------------------------------------------------------------
def evtchn(hv, cmd, *words):
    put(hv, REQS, *(list(words) + [0xDEADBEEF] * 3)[:3])
    return call(H.hc_event_channel_op, hv, cmd, REQS)


def bind_timer(hv):
    assert evtchn(hv, A.EVTCHNOP_bind_virq, A.VIRQ_TIMER, 0) == 0
    return u32(hv, REQS + 8)


def pending(hv, port):
    return u32(hv, hv.shared_info + 0x800 + 4 * (port >> 5)) >> (port & 31) & 1


def test_block_sleeps_to_the_deadline_and_the_timer_event_is_pending():
    hv = bare()
    port = bind_timer(hv)
    assert port == 3          # ports 1 and 2 are the block device's and the console's
    hv.machine.cpu.tsc = 1000
    assert call(H.hc_set_timer_op, hv, 1500, 0) == 0
    assert hv.deadline == 1500 and not pending(hv, port)
    assert call(H.hc_sched_op, hv, A.SCHEDOP_block, 0) == 0
    assert hv.idle_instructions == 500 and hv.machine.cpu.tsc == 1500
    assert pending(hv, port) and hv.deadline == 0
    si = hv.shared_info
    assert hv.machine.memory[si] == 1 and hv.machine.memory[si + 1] == 0   # pending, unmasked
    assert u32(hv, si + 4) == 1                                          # selector word 0


def test_a_deadline_in_the_past_fires_at_once_and_zero_cancels():
    hv = bare()
    port = bind_timer(hv)
    hv.machine.cpu.tsc = 1000
    assert call(H.hc_set_timer_op, hv, 999, 0) == 0
    assert pending(hv, port) and hv.deadline == 0
    put(hv, hv.shared_info + 0x800, 0)          # the guest takes the event
    put(hv, hv.shared_info, 0, 0)               # upcall_pending, pending_sel
    assert call(H.hc_set_timer_op, hv, 0x5000, 0x1) == 0            # 64-bit: hi in ECX
    assert hv.deadline == 0x1_0000_5000
    assert call(H.hc_set_timer_op, hv, 0, 0) == 0
    assert hv.deadline == 0 and not pending(hv, port)
    assert call(H.hc_sched_op, hv, A.SCHEDOP_block, 0) == 0
    assert hv.state == "halted" and "no timer" in hv._final.reason
    assert hv.idle_instructions == 0


def test_timer_block_upcall_in_a_guest_happens_exactly_once():
    seen = {}

    def setup(hv, k):
        real = hv.block

        def block():
            seen["now"] = int(hv.machine.cpu.tsc)
            real()
        hv.block = block
    k, hv, ev = run("""
        mov ebx, 1                   ; EVTCHNOP_bind_virq {VIRQ_TIMER, vcpu 0}
        mov ecx, bind
        call hypercall_page + HC_event_channel_op * 32
        rdtsc
        add eax, 700
        adc edx, 0
        mov [deadline], eax
        mov ebx, eax
        mov ecx, edx
        call hypercall_page + HC_set_timer_op * 32
        mov ebx, 1                   ; SCHEDOP_block
        call hypercall_page + HC_sched_op * 32
        mov [rc], eax
        mov al, [SI_VA + 1]
        mov [mask], al
        mov ebx, 0
        call hypercall_page + HC_xen_version * 32
        mov [ver], eax
        jmp shutdown
    """, "bind: dd 0, 0, -1\ndeadline: dd 0\nrc: dd -1\nmask: db 9\nver: dd 0", setup=setup)
    assert ev.kind == "halt", ev
    assert var(hv, k, "bind", 12) >> 64 == 3          # after the block and console ports
    assert hv.upcalls == 1 and var(hv, k, "upcalls") == 1
    assert var(hv, k, "rc") == 0 and var(hv, k, "mask", 1) == 0     # iret unmasked
    assert var(hv, k, "ver") == 0x30000
    assert hv.idle_instructions == var(hv, k, "deadline") - seen["now"] > 0
    assert hv.events_sent[3] == 1


def test_bind_virq_errors():
    hv = bare()
    assert evtchn(hv, A.EVTCHNOP_bind_virq, 24, 0) == -A.EINVAL
    assert evtchn(hv, A.EVTCHNOP_bind_virq, 0, 1) == -A.ENOENT
    assert u32(hv, REQS + 8) == 0xDEADBEEF                   # no port written
    # ports 1 and 2 are the block device's and the console's: the lowest free is 3
    assert evtchn(hv, A.EVTCHNOP_bind_virq, 23, 0) == 0 and u32(hv, REQS + 8) == 3
    assert evtchn(hv, A.EVTCHNOP_bind_virq, 23, 0) == -A.EEXIST
    assert evtchn(hv, A.EVTCHNOP_bind_virq, 0, 0) == 0 and u32(hv, REQS + 8) == 4
    # closing frees the VIRQ and the port
    assert evtchn(hv, A.EVTCHNOP_close, 3) == 0
    assert evtchn(hv, A.EVTCHNOP_bind_virq, 23, 0) == 0 and u32(hv, REQS + 8) == 3
    assert call(H.hc_event_channel_op, hv, 77, REQS) == -A.ENOSYS


def test_send_unmask_close_on_an_unbound_port_are_einval():
    hv = bare()
    for cmd in (A.EVTCHNOP_send, A.EVTCHNOP_unmask, A.EVTCHNOP_close):
        for port in (0, 3, 77, 1023, 1024, 0xFFFFFFFF):
            assert evtchn(hv, cmd, port) == -A.EINVAL, (cmd, port)
    assert evtchn(hv, A.EVTCHNOP_send, 1) == 0          # the block device's port
    assert hv.backend.notifications == 1
    # a VIRQ's port is the hypervisor's to signal (Xen's evtchn_send: -EINVAL)
    port = bind_timer(hv)
    assert evtchn(hv, A.EVTCHNOP_send, port) == -A.EINVAL
    assert not pending(hv, port) and hv.events_sent[port] == 0


def test_a_masked_port_stays_pending_without_an_upcall_until_unmasked():
    k, hv, ev = run("""
        mov ebx, 1
        mov ecx, bind
        call hypercall_page + HC_event_channel_op * 32
        mov dword [SI_VA + 0x880], 8     ; evtchn_mask: port 3 (the timer's)
        mov byte [SI_VA + 1], 0          ; events enabled
        mov ebx, 1                       ; a deadline in the past: fires now
        mov ecx, 0
        call hypercall_page + HC_set_timer_op * 32
        mov eax, [upcalls]
        mov [u1], eax
        mov eax, [SI_VA + 0x800]
        mov [pend], eax
        mov al, [SI_VA]
        mov [up], al
        mov ebx, 0
        call hypercall_page + HC_xen_version * 32
        mov eax, [upcalls]
        mov [u2], eax
        mov ebx, 9                       ; EVTCHNOP_unmask {port 3}
        mov ecx, port
        call hypercall_page + HC_event_channel_op * 32
        mov eax, [upcalls]
        mov [u3], eax
        jmp shutdown
    """, "bind: dd 0, 0, 0\nport: dd 3\nu1: dd -1\nu2: dd -1\nu3: dd -1\npend: dd 0\n"
         "up: db 9")
    assert ev.kind == "halt", ev
    assert var(hv, k, "pend") == 8                  # the pending bit is set ...
    assert var(hv, k, "up", 1) == 0                 # ... but not upcall_pending
    assert [var(hv, k, n) for n in ("u1", "u2", "u3")] == [0, 0, 1]
    assert hv.upcalls == 1


def test_the_upcall_mask_holds_the_upcall_until_cleared_and_a_hypercall_is_made():
    """Linux's xen_irq_enable: clear the mask (a plain store, no trap), then if an event
    is pending make any hypercall -- the upcall comes on its way back."""
    k, hv, ev = run("""
        mov ebx, 1
        mov ecx, bind
        call hypercall_page + HC_event_channel_op * 32
        mov ebx, 1                       ; fires now; events are masked since boot
        mov ecx, 0
        call hypercall_page + HC_set_timer_op * 32
        mov eax, [upcalls]
        mov [u1], eax
        mov ebx, 0
        call hypercall_page + HC_xen_version * 32
        mov eax, [upcalls]
        mov [u2], eax
        mov byte [SI_VA + 1], 0          ; xen_irq_enable
        mov eax, [upcalls]
        mov [u3], eax
        movzx eax, byte [SI_VA]
        mov [pend], eax
        mov ebx, 0
        call hypercall_page + HC_xen_version * 32
    back:
        mov eax, [upcalls]
        mov [u4], eax
        jmp shutdown
    """, "bind: dd 0, 0, 0\nu1: dd -1\nu2: dd -1\nu3: dd -1\nu4: dd -1\npend: dd 0",
        traps="")
    assert ev.kind == "halt", ev
    assert [var(hv, k, n) for n in ("u1", "u2", "u3", "u4")] == [0, 0, 0, 1]
    assert var(hv, k, "pend") == 1
    assert hv.upcalls == 1
    # the event callback returned once, through HYPERVISOR_iret
    assert hv.hypercalls[A.HYPERVISOR_iret] == 1


# ---- HYPERVISOR_iret and the bounce frame -----------------------------------------------------------
def test_iret_to_ring1_restores_eax_eip_cs_eflags_and_the_mask_from_if():
    hv = bare()
    cpu = hv.machine.cpu
    si = hv.shared_info
    esp = 0x6F000 - 16
    put(hv, esp, 0x11111111, 0x1234, 0x19, 0x202 | 0x1 | 0x800)     # IF, CF, OF
    cpu.esp = esp
    assert H.hc_iret(hv) is None
    assert (cpu.eax, cpu.eip, cpu.cs, cpu.esp, cpu.cpl) == (0x11111111, 0x1234, 0x19,
                                                            0x6F000, 1)
    assert cpu.eflags & 0x801 == 0x801 and cpu.eflags & 0x200
    assert hv.machine.memory[si + 1] == 0
    # IF clear in the frame: events masked (the real IF stays set); IOPL is not the guest's
    put(hv, esp, 0x22, 0x1240, 0x18, 0x3002)
    cpu.esp = esp
    H.hc_iret(hv)
    assert (cpu.eax, cpu.eip, cpu.cs) == (0x22, 0x1240, 0x19)
    assert hv.machine.memory[si + 1] == 1
    assert cpu.eflags & 0x200 and cpu.eflags & 0x3000 == 0 and not cpu.eflags & 1


def test_iret_to_ring3_pops_esp_and_ss():
    hv = bare()
    cpu = hv.machine.cpu
    esp = 0x6F000 - 24
    put(hv, esp, 7, 0x1000, 0x3B, 0x202, 0x6E800, 0x43)
    cpu.esp = esp
    assert cpu.ds == 0x21
    H.hc_iret(hv)
    assert (cpu.eax, cpu.eip, cpu.cs, cpu.cpl, cpu.ss, cpu.esp) == (7, 0x1000, 0x3B, 3, 0x43,
                                                                    0x6E800)
    assert cpu.ds == 0 and cpu.es == 0                    # as IRET to an outer ring
    assert hv.machine.memory[hv.shared_info + 1] == 0


@pytest.mark.parametrize("cs", [0x29, 0x08, 0x21, 0x43, 0x4B])
def test_iret_to_a_code_selector_not_the_guests_kills(cs):
    hv = bare()
    put(hv, 0x6F000 - 16, 0, 0x1000, cs, 0x202)
    hv.machine.cpu.esp = 0x6F000 - 16
    with pytest.raises(Kill, match="code selector"):
        H.hc_iret(hv)


@pytest.mark.parametrize("ss", [0, 0x21, 0x19, 0x3B, 0x400])
def test_iret_to_ring3_with_a_stack_selector_not_the_guests_kills(ss):
    hv = bare()
    cpu = hv.machine.cpu
    put(hv, 0x6F000 - 24, 7, 0x1000, 0x3B, 0x202, 0x6E800, ss)
    cpu.esp = 0x6F000 - 24
    with pytest.raises(Kill, match="stack selector"):
        H.hc_iret(hv)
    assert (cpu.cs, cpu.cpl, cpu.esp, cpu.eax) == (0x19, 1, 0x6F000 - 24, 0)   # untouched


def test_iret_with_an_unreadable_frame_kills_and_changes_nothing():
    hv = bare()
    cpu = hv.machine.cpu
    mask = hv.machine.memory[hv.shared_info + 1]
    for esp, frame in ((0x7FF00000, ()), (0x100000 - 16, (7, 0x1000, 0x3B, 0x002))):
        if frame:
            put(hv, esp, *frame)         # readable, but ESP and SS lie past the RAM
        cpu.esp = esp
        with pytest.raises(Kill, match="cannot be read"):
            H.hc_iret(hv)
        assert (cpu.eax, cpu.cs, cpu.esp) == (0, 0x19, esp)
        assert hv.machine.memory[hv.shared_info + 1] == mask


def test_a_guest_iret_with_a_null_stack_selector_is_killed_not_a_host_crash():
    k, hv, ev = run("""
        push 0                  ; ss
        push 0x6F000            ; esp
        push 0x202              ; eflags
        push 0x3B               ; cs
        push 0x1000             ; eip
        jmp hypercall_page + HC_iret * 32
    """)
    assert ev.kind == "killed" and "stack selector" in ev.reason


BOUNCE_BODY = """
    mov byte [SI_VA + 1], 1
    ud2                          ; masked
    mov byte [SI_VA + 1], 0
    ud2                          ; unmasked
    jmp shutdown
ud_handler:
    mov eax, [nframes]
    shl eax, 4
    add eax, frames
    mov edx, [esp]
    mov [eax], edx
    mov edx, [esp + 4]
    mov [eax + 4], edx
    mov edx, [esp + 8]
    mov [eax + 8], edx
    movzx edx, byte [SI_VA + 1]
    mov [eax + 12], edx
    inc dword [nframes]
    add dword [esp], 2           ; past ud2
    iret
"""


@pytest.mark.parametrize("ti_flags", [0, A.TI_CLEAR_EVENTS])
def test_the_bounce_frame_carries_if_as_not_mask_and_the_saved_mask_in_cs(ti_flags):
    k, hv, ev = run(BOUNCE_BODY, "nframes: dd 0\nframes: times 32 db 0",
                    traps=f"db 6, {ti_flags}\ndw 0x19\ndd ud_handler")
    assert ev.kind == "halt", ev
    assert var(hv, k, "nframes") == 2
    eip1, cs1, fl1, inmask1, eip2, cs2, fl2, inmask2 = (
        u32(hv, k.labels["frames"] + 4 * i) for i in range(8))
    assert hv.machine.memory[eip1:eip1 + 2].tobytes() == b"\x0f\x0b"
    assert cs1 == 0x19 | 1 << 16 and not fl1 & 0x200          # masked: IF = 0, mask saved
    assert cs2 == 0x19 and fl2 & 0x200                         # unmasked: IF = 1
    assert eip2 > eip1
    # the handler runs masked if its entry asks (TI_CLEAR_EVENTS: an interrupt gate)
    assert (inmask1, inmask2) == (1, 1 if ti_flags else 0)
    assert hv.bounced[vector_name(6)] == 2


def test_a_bounce_from_ring3_switches_to_the_stack_stack_switch_named():
    k, hv, ev = run(USER_PRELUDE + """
    user:
        mov eax, 0x43
        mov ds, eax
        mov esp, 0x6EFF0
        ud2
    ud_handler:
        mov eax, esp
        mov [kesp], eax
        mov edi, frame
        mov esi, esp
        mov ecx, 5
    copy:
        mov eax, [esi]
        mov [edi], eax
        add esi, 4
        add edi, 4
        dec ecx
        jnz copy
        jmp shutdown
    """, "kesp: dd 0\nframe: times 20 db 0", traps="db 6, 0\ndw 0x19\ndd ud_handler",
        setup=user_pages)
    assert ev.kind == "halt", ev
    assert var(hv, k, "kesp") == 0x80000 - 20                 # KSTACK from stack_switch
    fr = [u32(hv, k.labels["frame"] + 4 * i) for i in range(5)]
    ud = fr[0]
    assert hv.machine.memory[ud:ud + 2].tobytes() == b"\x0f\x0b"
    assert fr[1:] == [0x3B | 1 << 16, fr[2], 0x6EFF0, 0x43]
    assert fr[2] & 0x200 == 0                                  # masked since boot


# ---- exceptions without a handler, block, shutdown --------------------------------------------------
def test_an_exception_without_a_trap_table_entry_kills_naming_the_vector():
    k, hv, ev = run("""
        mov eax, 0
        div eax
    """)
    assert ev.kind == "killed" and hv.state == "killed"
    assert vector_name(0) in ev.reason and "trap table" in ev.reason
    k, hv, ev = run("ud2")
    assert ev.kind == "killed" and "#UD" in ev.reason


def test_block_with_nothing_to_wake_it_halts():
    k, hv, ev = run("""
        mov ebx, 1
        call hypercall_page + HC_sched_op * 32
        jmp shutdown
    """)
    assert (ev.kind, hv.state) == ("halt", "halted")
    assert "no timer" in ev.reason and hv.shutdown_reason is None
    assert hv.run(10).kind == "halt" and hv.hypercalls[29] == 1     # it stays stopped


@pytest.mark.parametrize("reason, kind, name", [(0, "halt", "poweroff"), (1, "halt", "reboot"),
                                                (3, "killed", "crash")])
def test_shutdown_reasons(reason, kind, name):
    k, hv, ev = run("jmp shutdown", setup=lambda hv, k: put(hv, k.labels["reason"], reason))
    assert ev.kind == kind and hv.shutdown_reason == name
    assert f"SCHEDOP_shutdown({name})" in ev.reason
    assert hv.state == ("killed" if kind == "killed" else "halted")


def test_sched_op_unknown_command_and_yield():
    hv = bare()
    assert call(H.hc_sched_op, hv, A.SCHEDOP_yield, 0) == 0
    assert call(H.hc_sched_op, hv, 7, 0) == -A.ENOSYS
    assert hv.state == "running"


# ---- console_io, xen_version ------------------------------------------------------------------------
def test_console_io_and_xen_version():
    hv = bare()
    hv.machine.write_physical(REQS, b"hello, xen\n")
    assert call(H.hc_console_io, hv, A.CONSOLEIO_write, 11, REQS) == 0
    assert call(H.hc_console_io, hv, A.CONSOLEIO_write, 4, REQS + 7) == 0
    assert hv.console == "hello, xen\nxen\n"
    assert call(H.hc_console_io, hv, A.CONSOLEIO_read, 16, REQS) == 0     # nothing to read
    assert call(H.hc_console_io, hv, A.CONSOLEIO_write, 1 << 17, REQS) == -A.EINVAL
    assert call(H.hc_console_io, hv, A.CONSOLEIO_write, 4, 0x7FF00000) == -A.EFAULT
    assert call(H.hc_console_io, hv, 2, 1, REQS) == -A.ENOSYS
    assert hv.console == "hello, xen\nxen\n"
    assert call(H.hc_xen_version, hv, A.XENVER_version) == 0x30000 == 3 << 16
    assert call(H.hc_xen_version, hv, 1) == -A.ENOSYS


# ---- snapshot / restore -----------------------------------------------------------------------------
SNAP_BODY = """
    mov ebx, 1
    mov ecx, bind
    call hypercall_page + HC_event_channel_op * 32
    mov edi, 5
again:
    mov ebx, 0                  ; console_io write "tick\\n"
    mov ecx, 5
    mov edx, msg
    call hypercall_page + HC_console_io * 32
    rdtsc
    add eax, 300
    mov ebx, eax
    mov ecx, edx
    call hypercall_page + HC_set_timer_op * 32
    mov ebx, 1
    call hypercall_page + HC_sched_op * 32
    inc dword [0x50000]
    dec edi
    jnz again
    jmp shutdown
"""


def test_snapshot_and_restore_replay_identically():
    k = guest(SNAP_BODY, 'bind: dd 0, 0, 0\nmsg: db "tick", 10')
    hv = Hypervisor(program=k)
    assert hv.run(150).kind == "budget"
    snap = hv.snapshot()

    def finish():
        ev = hv.run(100_000)
        return (ev.kind, ev.reason, hv.console, hv.counters, dict(hv.hypercalls), hv.upcalls,
                hv.idle_instructions, hv.machine.memory.tobytes(),
                tuple(a.tobytes() for a in hv.frames.snapshot()[:3]),
                int(hv.machine.cpu.tsc), hv.base, dict(hv.ports))
    first = finish()
    assert first[0] == "halt" and first[2] == "tick\n" * 5 and first[5] == 5
    hv.restore(snap)
    assert hv.state == "running" and hv.console.count("tick") < 5
    second = finish()
    assert second == first
