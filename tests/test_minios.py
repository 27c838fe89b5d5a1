"""minios.s, one kernel built two ways, on five hosts (hvsim.pvworkloads).

Two oracles. The differential one: the guest-visible state of a run (the final event,
EDX/ESI/EDI/EBP, the RESULTS area, the disk, the console) is the same on the bare machine,
under trap-and-emulate, under VT-x without and with EPT, and -- the other build -- under
the PV hypervisor. The naive one: every result recomputed in Python from the parameters
(the formulas are those minios.s's header states), so a kernel that computed the wrong
thing identically on every host still fails. Then what differs, the host's work, counted
exactly where the construction fixes it.
"""
import functools
import math
import re
import struct

import pytest

from hvsim.guests import MINIOS_PARAMS, minios, source
from hvsim.paravirt import abi as A
from hvsim.pvworkloads import HOSTS, STATUS_OK, WORKLOADS, WorkloadError, run, work
from hvsim.workloads import differences

MASK = 0xFFFFFFFF
FRAMES_A, FRAMES_B, CHILD_VA, POOL_FRAMES = 0x40000, 0x60000, 0x800000, 32
DEFAULTS = {"N_SYSCALLS": 64, "ROUNDS": 4, "N_PTES": 16, "CHILD_PAGES": 4, "MMU_BATCH": 8,
            "FLUSH_CEILING": 8, "N_SECTORS": 16}
#: odd counts, the INVLPG path (N_PTES <= FLUSH_CEILING), a queue flushed part-full, and
#: more sectors than one batch of the ring (31 in flight)
ODD = {"N_SYSCALLS": 7, "ROUNDS": 3, "N_PTES": 5, "CHILD_PAGES": 2, "MMU_BATCH": 3,
       "N_SECTORS": 40}
RING_BATCH = 31


@functools.lru_cache(maxsize=None)
def _run(workload, host, **params):
    """One run per (workload, host, parameters) for the whole module."""
    return run(workload, host, **params)


# ---- the naive reference --------------------------------------------------------------
def syscall_model(n):
    """(calls, adds, total, user_sum): call i is SYS_ECHO(i) -> i + 1 for even i,
    SYS_ADD(i) -> the total after adding i for odd i; SYS_EXIT is one more call."""
    total = answers = 0
    for i in range(n):
        if i % 2:
            total += i
            answers += total
        else:
            answers += i + 1
    return n + 1, n // 2, total & MASK, answers & MASK


def ptupdate_model(rounds, n_ptes, child_pages):
    """(window checksum, fork checksum, leaked, PTEs set): frame f starts holding f; round
    r maps B (even r) or A (odd r), reads each page's first dword and adds one to it."""
    value = {f: f for base in (FRAMES_A, FRAMES_B) for f in range(base, base + 4096 * n_ptes, 4096)}
    window = 0
    for r in range(rounds):
        for i in range(n_ptes):
            f = (FRAMES_B if r % 2 == 0 else FRAMES_A) + 4096 * i
            window += value[f]
            value[f] += 1
    fork = sum(CHILD_VA + 4096 * p + r for r in range(rounds) for p in range(child_pages))
    return window & MASK, fork & MASK, 0, rounds * n_ptes


def sector_words(s):
    return [(s * 0x01000193 + i) & MASK for i in range(128)]


def io_model(n):
    """(checksum, mismatches, failed, sectors moved): c = rol(c, 1) + dword over RBUF."""
    c = 0
    for s in range(n):
        for d in sector_words(s):
            c = ((((c << 1) | (c >> 31)) & MASK) + d) & MASK
    return c, 0, 0, 2 * n


def disk_model(n, sectors=64):
    data = b"".join(struct.pack("<128I", *sector_words(s)) for s in range(n))
    return data + bytes(512 * sectors - len(data))


def expected(workload, p):
    """Every compared field but the event, from the model."""
    mask = {"syscall": 1, "ptupdate": 2, "io": 4, "all": 7}[workload]
    sys_ = syscall_model(p["N_SYSCALLS"]) if mask & 1 else (0, 0, 0, 0)
    pt = ptupdate_model(p["ROUNDS"], p["N_PTES"], p["CHILD_PAGES"]) if mask & 2 else (0, 0, 0, 0)
    io = io_model(p["N_SECTORS"]) if mask & 4 else (0, 0, 0, 0)
    console = "minios: up\n"
    if mask & 4:
        console += f"minios: io checksum {io[0]:08X}\n"
    console += "minios: done\n"
    edi = (sys_[3] + pt[0] + pt[1] + io[0]) & MASK
    return {"syscall": sys_, "ptupdate": pt, "io": io, "console": console,
            "disk": disk_model(p["N_SECTORS"] if mask & 4 else 0),
            "regs": {"edx": POOL_FRAMES, "esi": STATUS_OK, "edi": edi, "ebp": mask}}


# ---- the differential test ------------------------------------------------------------
@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize("host", [h for h in HOSTS if h != "native"])
def test_every_host_shows_the_guest_what_the_bare_machine_shows(workload, host):
    assert differences(_run(workload, "native"), _run(workload, host)) == []


@pytest.mark.parametrize("host", HOSTS)
def test_odd_parameters_agree_across_hosts_and_with_the_model(host):
    r = _run("all", host, **ODD)
    assert differences(_run("all", "native", **ODD), r) == []
    want = expected("all", dict(DEFAULTS, **ODD))
    assert (r.syscall, r.ptupdate, r.io) == (want["syscall"], want["ptupdate"], want["io"])


# ---- the naive oracle -------------------------------------------------------------------
@pytest.mark.parametrize("host", ["native", "pv"])
@pytest.mark.parametrize("workload", WORKLOADS)
def test_results_registers_disk_and_console_are_the_models(workload, host):
    r = _run(workload, host)
    want = expected(workload, DEFAULTS)
    assert r.event.kind == "halt" and r.status == STATUS_OK
    assert tuple(r.syscall) == want["syscall"]
    assert tuple(r.ptupdate) == want["ptupdate"]
    assert tuple(r.io) == want["io"]
    assert r.regs == want["regs"]
    assert r.disk == want["disk"]
    assert r.console == want["console"]


def test_literal_values_of_the_default_run():
    # the model's numbers, written out: a change of the formulas shows here first
    r = _run("all", "pv")
    assert tuple(r.syscall) == (65, 32, 1024, 12464)
    assert tuple(r.ptupdate) == (22937632, 134316056, 0, 64)
    assert r.io.checksum == 0x13F4F5B2


# ---- the host's work, counted ----------------------------------------------------------
# Trap-and-emulate, the syscall workload: a fixed 38 traps --
#   emulated (31): LIDT; MOV CR3 and MOV from/to CR0 (paging on); STI (IRQ_ENABLE at boot);
#     24 OUTs ("minios: up\n" and "minios: done\n"); CLI and HLT (POWEROFF);
#   reflected (1): SYS_EXIT's INT 80H;
#   hidden shadow-paging faults (6): the first touch, once paging is on, of the code page,
#     the kernel stack, KIDT, the user page, RESULTS, the monitor's ring-1 stack
# -- and per pair of system calls 4: each INT 80H reflected, the SYS_ADD's CLI and STI.
TE_SYSCALL_FIXED = 38


@pytest.mark.parametrize("n", [8, 64])
def test_trap_and_emulate_traps_twice_per_system_call(n):
    r = _run("syscall", "shadow", N_SYSCALLS=n)
    c = r.monitor.counters
    assert r.monitor.stats["traps"] == TE_SYSCALL_FIXED + 2 * n
    assert c["reflected INT 0x80"] == n + 1
    assert c["emulated CLI"] == n // 2 + 1 and c["emulated STI"] == n // 2 + 1
    assert r.monitor.stats["hidden_faults"] == 6


def test_natively_and_under_vtx_a_system_call_costs_the_host_nothing():
    for n in (8, 64):
        assert work(_run("syscall", "native", N_SYSCALLS=n))["traps"] == 0
    for host in ("vtx", "ept"):
        # the same exits for 8 and 64 system calls: INT 80H, CLI, STI and IRET stay in
        # the guest (its boot's console OUTs, CR accesses and the HLT are the exits)
        assert work(_run("syscall", host, N_SYSCALLS=8))["vm_exits"] == \
            work(_run("syscall", host, N_SYSCALLS=64))["vm_exits"]


def test_paravirtualized_a_system_call_makes_no_hypercall():
    # boot: update_va_mapping x3 (PT_ALLOC) + 1 (shared_info), mmuext_op x3 (pin, new
    # base pointer, the builder's tables unpinned), set_callbacks, set_trap_table,
    # stack_switch; console_io x2; the shutdown -- 13, whatever N_SYSCALLS is: INT 80H is
    # a direct trap into ring 1, IRQ_DISABLE/IRQ_ENABLE two stores to shared_info
    for n in (8, 64):
        hv = _run("syscall", "pv", N_SYSCALLS=n).monitor
        assert hv.stats["hypercalls"] == 13
        assert sum(hv.bounced.values()) == 0 and hv.upcalls == 0


@pytest.mark.parametrize("params", [{}, ODD], ids=["default", "odd"])
def test_the_native_disk_takes_131_port_accesses_per_sector(params):
    n = dict(DEFAULTS, **params)["N_SECTORS"]
    r = _run("io", "native", **params)
    assert work(r)["device_io"] == 131 * 2 * n     # each sector written, then read
    # under trap-and-emulate each of those accesses traps; besides them, 60 emulated
    # instructions (53 console OUTs -- the io line is 29 characters --, LIDT, three MOVs
    # of CR3/CR0, STI, CLI, HLT) and a hidden fault per page first touched with paging on:
    # code, stack, KIDT, RESULTS, and the pages of WBUF and RBUF
    te = _run("io", "shadow", **params)
    buffer_pages = math.ceil(n * 512 / 4096)
    assert work(te)["traps"] == 131 * 2 * n + 60 + 4 + 2 * buffer_pages
    assert te.monitor.stats["hidden_faults"] == 4 + 2 * buffer_pages


@pytest.mark.parametrize("params", [{}, ODD], ids=["default", "odd"])
def test_paravirtualized_io_goes_through_the_ring_with_one_notification_per_batch(params):
    n = dict(DEFAULTS, **params)["N_SECTORS"]
    hv = _run("io", "pv", **params).monitor
    batches = 2 * math.ceil(n / RING_BATCH)        # writes, then reads, 31 at most in flight
    c = hv.counters
    assert hv.stats["io_requests"] == c["blk requests_consumed"] == 2 * n
    assert c["blk notifications"] == c["hypercall event_channel_op"] == batches < 2 * n
    assert c["blk reads"] == c["blk writes"] == n and c["blk errors"] == 0
    assert hv.upcalls == c["hypercall sched_op"] - 1 == batches     # a block each (+ shutdown)


@pytest.mark.parametrize("params", [{}, ODD], ids=["default", "odd"])
def test_paravirtualized_page_table_updates_are_batched_and_leave_the_frame_types_sound(params):
    p = dict(DEFAULTS, **params)
    hv = _run("ptupdate", "pv", **params).monitor
    c = hv.counters
    rounds, n = p["ROUNDS"], p["N_PTES"]
    assert c["hypercall mmu_update"] == rounds * math.ceil(n / p["MMU_BATCH"])
    # per round: a TLB flush, or an INVLPG per page up to FLUSH_CEILING; the fork's pin,
    # two base pointers and unpin; plus boot's pin, base pointer and unpin
    flushes = 1 if n > p["FLUSH_CEILING"] else n
    assert c["hypercall mmuext_op"] == rounds * (flushes + 4) + 3
    # PT_ALLOC x2 and PT_RELEASE x2 per fork, and boot's four
    assert c["hypercall update_va_mapping"] == 4 * rounds + 4
    assert hv.pt_updates == rounds * n + 4 * rounds + 4
    assert hv.frames.check(hv.base) == []


@pytest.mark.parametrize("n_ptes", [16, 5])
def test_without_ept_the_vmm_sees_each_cr3_access_and_invlpg_with_ept_none(n_ptes):
    rounds = DEFAULTS["ROUNDS"]
    vtx = _run("ptupdate", "vtx", N_PTES=n_ptes).monitor.kvm.exits
    ept = _run("ptupdate", "ept", N_PTES=n_ptes).monitor.kvm.exits
    # boot: MOV CR3 and MOV to CR0 (paging on). Per round, without EPT: FLUSH_TLB's MOV
    # from and to CR3 -- or, 5 pages being under FLUSH_CEILING, an INVLPG per page --
    # and the fork's two MOV CR3 (into the child, back to the parent)
    if n_ptes > DEFAULTS["FLUSH_CEILING"]:
        assert (vtx["CR_ACCESS"], vtx["INVLPG"]) == (2 + 4 * rounds, 0)
    else:
        assert (vtx["CR_ACCESS"], vtx["INVLPG"]) == (2 + 2 * rounds, n_ptes * rounds)
    assert (ept["CR_ACCESS"], ept["INVLPG"], ept["EXCEPTION_NMI"]) == (2, 0, 0)


# ---- the kernel's build ------------------------------------------------------------------
def test_the_platform_layer_is_the_only_place_the_builds_differ():
    text = source("minios")
    layer_end = text.index("end of the platform layer")
    after = text[layer_end:].splitlines()[1:]
    assert not [line for line in after if line.lstrip().startswith("%")]
    native, pv = minios(), minios(pv=True)
    assert pv.labels["hypercall_page"] == 0x1000 and "hypercall_page" not in native.labels


def test_the_kernels_xen_numbers_are_the_abis():
    lab = minios(pv=True).labels
    for name, value in lab.items():
        if name.startswith("HC_"):
            assert value == getattr(A, "HYPERVISOR_" + name[3:]), name
        elif re.match(r"(MMUEXT|UVMF|SCHEDOP|EVTCHNOP|CONSOLEIO)_", name) or name == "DOMID_SELF":
            assert value == getattr(A, name), name
    assert (lab["VI_UPCALL_PENDING"], lab["VI_UPCALL_MASK"], lab["VI_PENDING_SEL"],
            lab["VI_CR2"], lab["SI_EVTCHN_PENDING"]) == (A.VI_UPCALL_PENDING, A.VI_UPCALL_MASK,
                                                         A.VI_PENDING_SEL, A.VI_CR2,
                                                         A.SI_EVTCHN_PENDING)
    assert (lab["SIF_SHARED_INFO"], lab["SIF_PT_BASE"], lab["SIF_NR_PT_FRAMES"],
            lab["SIF_BLK_RING"], lab["SIF_BLK_EVTCHN"]) == (A.SIF_SHARED_INFO, A.SIF_PT_BASE,
                                                            A.SIF_NR_PT_FRAMES, A.SIF_BLK_RING,
                                                            A.SIF_BLK_EVTCHN)


def test_each_image_leaves_room_below_its_fixed_areas():
    for pv in (False, True):
        prog = minios(pv, MMU_BATCH=MINIOS_PARAMS["MMU_BATCH"])     # the largest image
        end = prog.origin + len(prog.code)
        # the PV builder's five pages (directory, table, start_info, ring, stack) follow
        assert end + 5 * 4096 <= min(prog.labels["KIDT"], 0x10000)
        assert prog.labels["user"] % 4096 == 0 and prog.labels["user_end"] - prog.labels["user"] < 4096


@pytest.mark.parametrize("kwargs, message", [
    ({"workload": "fork"}, "no minios workload named 'fork'"),
    ({"N_PAGES": 3}, "minios.s has no parameter 'N_PAGES'"),
    ({"N_PTES": 33}, "N_PTES must be an int from 1 to 32, got 33"),
    ({"N_SECTORS": 0}, "N_SECTORS must be an int from 1 to 64, got 0"),
    ({"ROUNDS": True}, "ROUNDS must be an int"),
])
def test_minios_checks_its_parameters(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        minios(**kwargs)


def test_a_bad_host_and_a_short_budget_are_reported():
    with pytest.raises(ValueError, match="no host named 'kvm'"):
        run("io", "kvm")
    with pytest.raises(WorkloadError, match="did not halt cleanly within 1000 steps"):
        run("io", "pv", budget=1000)


@pytest.mark.parametrize("host", HOSTS)
def test_a_fault_in_ring_3_is_reported_alike_on_every_host(host, monkeypatch):
    # the program reads RESULTS, a supervisor page: #PF(P | U), CR2 = RESULTS; the kernel's
    # handler (READ_CR2: CR2, or vcpu_info.arch.cr2 paravirtualized) records it and stops
    import hvsim.pvworkloads as P

    def faulty(pv, workload, **params):
        text = source("minios").replace("    xor edi, edi\n.call:", "    mov edi, [RESULTS]\n.call:")
        from hvsim.asm import assemble
        return assemble(text, origin=0x1000, defines={"PV": 1} if pv else None)

    monkeypatch.setattr(P, "minios", faulty)
    r = run("syscall", host, check=False)
    prog = faulty(host == "pv", "syscall")
    assert r.event.kind == "halt" and r.status == 0xBAD1
    assert [r.dword(o) for o in (0x08, 0x0C, 0x14)] == [14, 0x5, prog.labels["RESULTS"]]
    assert r.dword(0x10) == prog.labels["user"] + 11     # mov eax; mov ds; mov es; xor esi
    assert r.console == "minios: up\nminios: panic\n"
    # every host agrees, but for where the faulting instruction is: the PV image starts
    # with the hypercall page, which moves the user page

    def seen(res):
        state = res.guest_state()
        results = bytearray(state.results)
        results[0x10:0x14] = bytes(4)
        return state._replace(results=bytes(results))
    assert seen(P.run("syscall", "native", check=False)) == seen(r)
    with pytest.raises(WorkloadError, match=r"status 0xbad1 \(an exception\): vector/rc 0xe"):
        run("syscall", host)
