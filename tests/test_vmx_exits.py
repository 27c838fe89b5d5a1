"""VM exits in VMX non-root operation: each reason hvsim implements (hvsim/vtx/nonroot.py,
the hooks in hvsim/cpu/system.py and hvsim/cpu/run.py), with its control on and off, its
exit qualification and information fields bit by bit, the fault-versus-exit priority, the
I/O and MSR bitmaps, CR masks and shadows, external interrupts, the interrupt window,
event injection and IDT-vectoring information.

Oracle: SDM Vol. 3C (082US numbering) -- 26.1 (which instructions exit, and 26.1.1: "certain
exceptions have priority over VM exits"), 26.2 (exceptions, the exception bitmap and
PFEC_MASK/MATCH), 26.3 (instructions that do not exit: reads of the CR read shadows, CLTS,
LMSW, MOV to CR0/CR4), 25.6 (the controls, the bitmaps' layout), 27.6 (event injection),
28.1 (architectural state before a VM exit), 28.2 (the exit-information fields: Tables
28-3 CR access, 28-4 MOV DR, 28-5 I/O, 25-17 interruption information, 25-18 IDT
vectoring), 28.3 (saving guest state). Each test names the rule it checks.

The guest runs at GUEST_CODE under tests/vmx_harness.py's VMM; a guest that is not
meant to exit ends in CPUID, so "no exit" is asserted as "the first exit is CPUID's, at
the CPUID". Not jitted.
"""
import pytest

from hvsim.arch import layout as L
from hvsim.arch import vmx as X
from hvsim.arch.cr import CR0_PE, CR0_MP, CR0_TS, CR0_ET, CR0_NE, CR0_PG, CR4_VMXE, CR4_TSD
from hvsim.arch.flags import FIXED1, IF, OF
from hvsim.arch.vectors import BP, UD, DF, GP, PF
from hvsim.rings.setup import SystemTables

from vmx_harness import (vmx_run, gate, GUEST_CODE, GUEST_IDT, GUEST_DATA, GUEST_STACK, PD,
                         IO_BITMAP_A, IO_BITMAP_B, MSR_BITMAP)

R = X.ExitReason
CODE0, CODE3 = SystemTables.code(0), SystemTables.code(3)
CR0_GUEST = CR0_PE | CR0_ET | CR0_NE | CR0_PG           # the harness's guest CR0
CPU0 = X.CPU_TRUE_ALLOWED0
SEC_ON = CPU0 | X.CPU_ACTIVATE_SECONDARY_CONTROLS
ALT_PD = 0x303000            # a copy of the page directory: another valid CR3
PTE_BASE = PD + 0x1000       # the page table mapping linear 0..4 MiB (identity_map_4k)
CR2_BEFORE = 0x5A5A000
EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI = range(8)      # GPR numbers (Table 28-3, 28-4)


def hw_exception(vector, error_code=False):
    """Interruption information of a hardware exception (Table 25-17)."""
    return (X.INTR_INFO_VALID | (X.INTR_TYPE_HARDWARE_EXCEPTION << X.INTR_INFO_TYPE_SHIFT)
            | vector | (X.INTR_INFO_DELIVER_ERROR_CODE if error_code else 0))


def info(kind, vector):
    return X.INTR_INFO_VALID | (kind << X.INTR_INFO_TYPE_SHIFT) | vector


def at_end(src):
    """``src`` with ``at:`` before its last line and ``end: cpuid`` after it."""
    lines = src.strip().splitlines()
    return "\n".join(lines[:-1] + ["at:", lines[-1], "end:", "cpuid"]) + "\n"


def expect_exit(r, reason, qual=None):
    """The first exit is ``reason`` at label ``at`` with that instruction's length."""
    lab = r.guest.labels
    assert r.exited, r.ev
    assert r.reason == reason
    assert r.vmcs("GUEST_RIP") == lab["at"]
    if reason not in (R.EXCEPTION_NMI, R.EXTERNAL_INTERRUPT, R.TRIPLE_FAULT,
                      R.INTERRUPT_WINDOW):
        assert r.length == lab["end"] - lab["at"]           # 28.2.4
    if qual is not None:
        assert r.qualification == qual, f"{r.qualification:#x} != {qual:#x}"


def expect_no_exit(r):
    """The instruction at ``at`` ran in the guest: the first exit is the final CPUID."""
    assert r.exited, r.ev
    assert r.reason == R.CPUID, r.reason
    assert r.vmcs("GUEST_RIP") == r.guest.labels["end"]


def route_to_guest(m, t, hv, g):
    m.route(range(32), "guest")


def with_setup(*fns):
    def setup(m, t, hv, g):
        for fn in fns:
            fn(m, t, hv, g)
    return setup


# ---- instructions that exit by a primary or secondary control (26.1.2, 26.1.3) ------------
SIMPLE = [
    # (id, guest source, fields with the control on, reason, qualification)
    ("cpuid", "cpuid", {}, R.CPUID, 0),                     # unconditional
    ("invd", "invd", {}, R.INVD, 0),                        # unconditional
    ("hlt", "hlt", {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_HLT_EXITING}, R.HLT, 0),
    ("rdtsc", "rdtsc", {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_RDTSC_EXITING}, R.RDTSC, 0),
    ("wbinvd", "wbinvd", {"CPU_BASED_VM_EXEC_CONTROL": SEC_ON,
                          "SECONDARY_VM_EXEC_CONTROL": X.SEC_WBINVD_EXITING}, R.WBINVD, 0),
    # INVLPG: the qualification is the linear address -- FS base + offset (28.2.1)
    ("invlpg", "mov eax, 0x123\ninvlpg [fs:eax+0x10]",
     {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_INVLPG_EXITING, "GUEST_FS_BASE": 0x261000},
     R.INVLPG, 0x261133),
    # MOV DR (Table 28-4): 2:0 DR number, 4 direction (1 = from DR), 11:8 the GPR
    ("mov-to-dr3", "mov dr3, esi", {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_MOV_DR_EXITING},
     R.DR_ACCESS, 3 | (ESI << 8)),
    ("mov-from-dr7", "mov edx, dr7", {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_MOV_DR_EXITING},
     R.DR_ACCESS, 7 | X.DR_QUAL_FROM_DR | (EDX << 8)),
    # MOV CR3 (Table 28-3): CR 3, access type 0 (to) / 1 (from), 11:8 the GPR
    ("mov-to-cr3", f"mov esi, {PD:#x}\nmov cr3, esi",
     {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_CR3_LOAD_EXITING}, R.CR_ACCESS,
     3 | (X.CR_ACCESS_MOV_TO_CR << 4) | (ESI << 8)),
    ("mov-from-cr3", "mov ebp, cr3",
     {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_CR3_STORE_EXITING}, R.CR_ACCESS,
     3 | (X.CR_ACCESS_MOV_FROM_CR << 4) | (EBP << 8)),
    # I/O (Table 28-5): 2:0 size - 1, 3 IN, 6 immediate operand, 31:16 port
    ("in-imm", "in ax, 0x60", {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_UNCONDITIONAL_IO_EXITING},
     R.IO_INSTRUCTION, (0x60 << 16) | X.IO_QUAL_IMMEDIATE | X.IO_QUAL_IN | 1),
    ("out-dx", "mov dx, 0x3f8\nout dx, eax",
     {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_UNCONDITIONAL_IO_EXITING},
     R.IO_INSTRUCTION, (0x3F8 << 16) | 3),
    # RDMSR/WRMSR without MSR bitmaps: every MSR exits (26.1.3)
    ("rdmsr", "mov ecx, 0x174\nrdmsr", {}, R.RDMSR, None),
    ("wrmsr", "mov ecx, 0x174\nwrmsr", {}, R.WRMSR, None),
]


@pytest.mark.parametrize("src, fields, reason, qual",
                         [s[1:] for s in SIMPLE], ids=[s[0] for s in SIMPLE])
def test_instruction_exits_with_its_control(src, fields, reason, qual):
    r = vmx_run(at_end(src), fields)
    expect_exit(r, reason, qual)


@pytest.mark.parametrize("src, fields", [(s[1], s[2]) for s in SIMPLE if s[2] and
                                         s[0] not in ("rdmsr", "wrmsr")],
                         ids=[s[0] for s in SIMPLE if s[2] and s[0] not in ("rdmsr", "wrmsr")])
def test_instruction_runs_in_the_guest_without_its_control(src, fields):
    # the same guest with the controls of the smallest valid VMCS: no exit; HLT without
    # HLT exiting sleeps in the guest (nothing wakes it: run() says 'halt', non-root)
    fields = {k: v for k, v in fields.items() if not k.endswith("CONTROL")}
    if src.startswith("in ") or "out " in src:
        r = vmx_run(at_end(src), fields)
        assert r.ev.kind == "io" and r.m._st[L.VMX_NONROOT] == 1
        return
    r = vmx_run(at_end(src), fields)
    if src == "hlt":
        assert r.ev.kind == "halt" and r.m._st[L.VMX_NONROOT] == 1 and not r.exited
        return
    expect_no_exit(r)


def test_wbinvd_exiting_is_ignored_unless_secondary_controls_are_activated():
    # 25.6.2: with "activate secondary controls" = 0 the processor acts as if they were 0
    r = vmx_run(at_end("wbinvd"), {"SECONDARY_VM_EXEC_CONTROL": X.SEC_WBINVD_EXITING})
    expect_no_exit(r)


def test_mov_dr_without_exiting_writes_the_debug_register():
    r = vmx_run("mov eax, 0x1234\nmov dr0, eax\nmov edi, dr0\ncpuid\n")
    assert r.reason == R.CPUID and r.exit_gprs()["edi"] == 0x1234


def test_rdtsc_without_exiting_reads_the_time_stamp_counter():
    # the TSC counts retired instructions (hvsim): two RDTSCs one instruction apart
    r = vmx_run("rdtsc\nmov edi, eax\nrdtsc\nsub eax, edi\nmov edi, eax\ncpuid\n")
    assert r.reason == R.CPUID and r.exit_gprs()["edi"] == 2


# ---- fault versus exit (26.1.1) -----------------------------------------------------------
GP_EXIT = {"EXCEPTION_BITMAP": 1 << GP}


@pytest.mark.parametrize("src, fields", [
    ("mov ecx, 0x174\nrdmsr", {}),                                  # RDMSR at CPL 3
    ("hlt", {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_HLT_EXITING}),
    ("invlpg [0x260000]", {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_INVLPG_EXITING}),
    ("mov eax, cr3", {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_CR3_STORE_EXITING}),
    ("mov dr0, eax", {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_MOV_DR_EXITING}),
    ("lgdt [0x260000]", {"CPU_BASED_VM_EXEC_CONTROL": SEC_ON,
                         "SECONDARY_VM_EXEC_CONTROL": X.SEC_DESCRIPTOR_TABLE_EXITING}),
    ("rdtsc", {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_RDTSC_EXITING,
               "GUEST_CR4": CR4_VMXE | CR4_TSD}),
    # IN at CPL 3 > IOPL 0 with no I/O permission bitmap in the TSS: the #GP of the
    # I/O-permission check comes first, even with unconditional I/O exiting
    ("in al, 0x60", {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_UNCONDITIONAL_IO_EXITING}),
])
def test_privilege_faults_come_before_the_exit(src, fields):
    # "execution of RDMSR with CPL = 3 generates a general-protection exception and not
    # a VM exit" (26.1.1): with #GP in the exception bitmap, the exit is reason 0,
    # interruption information 'hardware exception 13, error code', error code 0
    r = vmx_run(at_end(src), {**fields, **GP_EXIT}, guest_ring=3)
    expect_exit(r, R.EXCEPTION_NMI, 0)
    assert r.vmcs("VM_EXIT_INTR_INFO") == hw_exception(GP, True) == 0x80000B0D
    assert r.vmcs("VM_EXIT_INTR_ERROR_CODE") == 0


@pytest.mark.parametrize("src, fields, reason", [
    ("in al, 0x60", {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_UNCONDITIONAL_IO_EXITING,
                     "GUEST_RFLAGS": FIXED1 | (3 << 12)}, R.IO_INSTRUCTION),   # IOPL 3
    ("rdtsc", {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_RDTSC_EXITING}, R.RDTSC),  # TSD 0
    ("sgdt [0x260000]", {"CPU_BASED_VM_EXEC_CONTROL": SEC_ON,
                         "SECONDARY_VM_EXEC_CONTROL": X.SEC_DESCRIPTOR_TABLE_EXITING},
     R.GDTR_IDTR_ACCESS),                                         # SGDT is not privileged
    ("cpuid", {}, R.CPUID),
])
def test_unprivileged_cases_at_cpl_3_exit(src, fields, reason):
    # the other side: where no fault applies at CPL 3, the instruction exits
    r = vmx_run(at_end(src), {**fields, **GP_EXIT}, guest_ring=3)
    expect_exit(r, reason)


# ---- I/O bitmaps (25.6.4, 26.1.3) -------------------------------------------------------
def io_bits(*ports):
    """setup(): set the bitmap bit of each port (A: 0000-7FFF, B: 8000-FFFF)."""
    def setup(m, t, hv, g):
        for p in ports:
            base = IO_BITMAP_A if p < 0x8000 else IO_BITMAP_B
            at = base + ((p & 0x7FFF) >> 3)
            m.write_physical(at, bytes([m.memory[at] | (1 << (p & 7))]))
    return setup


IO_BITMAPS = {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_USE_IO_BITMAPS,
              "IO_BITMAP_A": IO_BITMAP_A, "IO_BITMAP_B": IO_BITMAP_B}


@pytest.mark.parametrize("src, ports, qual", [
    ("out 0x80, al", (0x80,), (0x80 << 16) | X.IO_QUAL_IMMEDIATE),
    ("out 0x80, ax", (0x81,), (0x80 << 16) | X.IO_QUAL_IMMEDIATE | 1),   # straddles a set bit
    ("mov dx, 0x8000\nin al, dx", (0x8000,), (0x8000 << 16) | X.IO_QUAL_IN),    # bitmap B
    ("mov dx, 0x7fff\nin ax, dx", (0x8000,), (0x7FFF << 16) | X.IO_QUAL_IN | 1),  # A then B
    ("mov dx, 0xfffe\nin eax, dx", (0xFFFF,), (0xFFFE << 16) | X.IO_QUAL_IN | 3),
    ("mov dx, 0xffff\nin ax, dx", (), (0xFFFF << 16) | X.IO_QUAL_IN | 1),  # wraps past FFFF
])
def test_io_bitmap_bit_set_exits(src, ports, qual):
    r = vmx_run(at_end(src), IO_BITMAPS, setup=io_bits(*ports))
    expect_exit(r, R.IO_INSTRUCTION, qual)


@pytest.mark.parametrize("src, ports, port", [
    ("out 0x80, al", (0x81, 0x7F), 0x80),             # neighbours' bits do not count
    ("mov dx, 0x8000\nin al, dx", (0x0000,), 0x8000),  # bit 0 of A is port 0, not 8000
    ("mov dx, 0x0\nin al, dx", (0x8000,), 0x0000),     # and bit 0 of B is not port 0
])
def test_io_bitmap_bit_clear_does_not_exit(src, ports, port):
    # the guest's access reaches the machine: an unclaimed port ends run() with an 'io'
    # event while the CPU is still in non-root operation
    r = vmx_run(at_end(src), IO_BITMAPS, setup=io_bits(*ports))
    assert r.ev.kind == "io" and r.ev.port == port and r.m._st[L.VMX_NONROOT] == 1
    assert not r.exited


def test_io_bitmaps_override_unconditional_io_exiting():
    # 26.1.3: with "use I/O bitmaps" = 1, "unconditional I/O exiting" is ignored; a clear
    # bit lets the console port through to its device
    fields = dict(IO_BITMAPS)
    fields["CPU_BASED_VM_EXEC_CONTROL"] |= X.CPU_UNCONDITIONAL_IO_EXITING
    r = vmx_run(at_end("mov al, 0x4b\nout 0xe9, al"), fields, setup=io_bits(0x80))
    expect_no_exit(r)
    assert r.m.console == "K"


# ---- MSR bitmaps (25.6.9): read-low 0, read-high 1024, write-low 2048, write-high 3072 ------
LOW_MSR, HIGH_MSR = 0x174, 0xC0000080        # IA32_SYSENTER_CS, IA32_EFER
QUARTERS = {("low", 0): 0, ("high", 0): 1024, ("low", 1): 2048, ("high", 1): 3072}
MSR_BITMAPS = {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_USE_MSR_BITMAPS,
               "MSR_BITMAP": MSR_BITMAP}


def msr_bit(quarter, msr):
    def setup(m, t, hv, g):
        at = MSR_BITMAP + QUARTERS[quarter] + ((msr & 0x1FFF) >> 3)
        m.write_physical(at, bytes([1 << (msr & 7)]))
    return setup


def msr_access(msr, write):
    return (f"mov ecx, {msr:#x}\nxor eax, eax\nxor edx, edx\n"
            + ("wrmsr" if write else "rdmsr"))


@pytest.mark.parametrize("quarter", list(QUARTERS), ids=[f"{a}-{'w' if b else 'r'}"
                                                         for a, b in QUARTERS])
@pytest.mark.parametrize("access", list(QUARTERS), ids=[f"{a}-{'w' if b else 'r'}"
                                                        for a, b in QUARTERS])
def test_msr_bitmap_quarters(quarter, access):
    rng, write = access
    msr = LOW_MSR if rng == "low" else HIGH_MSR
    r = vmx_run(at_end(msr_access(msr, write)), MSR_BITMAPS,
                setup=msr_bit(quarter, LOW_MSR if quarter[0] == "low" else HIGH_MSR))
    if quarter == access:
        expect_exit(r, R.WRMSR if write else R.RDMSR)
    else:
        expect_no_exit(r)


@pytest.mark.parametrize("msr", [0x2000, 0x40000000, 0xC0002000, 0xBFFFFFFF])
def test_msrs_outside_the_bitmaps_always_exit(msr):
    r = vmx_run(at_end(msr_access(msr, 0)), MSR_BITMAPS)
    expect_exit(r, R.RDMSR)


def test_msr_bitmap_clear_bit_reads_and_writes_the_real_msr():
    # RDMSR sees GUEST_SYSENTER_CS as the entry loaded it; WRMSR changes the MSR, which
    # the exit saves into the guest-state area (28.3.1)
    r = vmx_run(f"mov ecx, {LOW_MSR:#x}\nrdmsr\nmov edi, eax\nmov eax, 0x5678\nxor edx, edx\n"
                "wrmsr\ncpuid\n", {**MSR_BITMAPS, "GUEST_SYSENTER_CS": 0x1234})
    assert r.reason == R.CPUID
    assert r.exit_gprs()["edi"] == 0x1234
    assert r.vmcs("GUEST_SYSENTER_CS") == 0x5678


# ---- CR3-load exiting and the CR3-target values (26.1.3) ---------------------------------
def alt_pd(m, t, hv, g):
    m.write_physical(ALT_PD, bytes(m.memory[PD:PD + 0x1000]))


CR3_LOAD = {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_CR3_LOAD_EXITING}


@pytest.mark.parametrize("count, targets, exits", [
    (0, {}, True),                                          # no targets: every load exits
    (1, {0: ALT_PD}, False),
    (1, {1: ALT_PD}, True),                                 # only the first `count` count
    (4, {3: ALT_PD}, False),
    (3, {3: ALT_PD}, True),
    (2, {0: PD, 1: 0x304000}, True),
])
def test_cr3_load_exiting_with_target_values(count, targets, exits):
    fields = dict(CR3_LOAD, CR3_TARGET_COUNT=count)
    for i, v in targets.items():
        fields[f"CR3_TARGET_VALUE{i}"] = v
    r = vmx_run(at_end(f"mov ebx, {ALT_PD:#x}\nmov cr3, ebx"), fields, setup=alt_pd)
    if exits:
        expect_exit(r, R.CR_ACCESS, 3 | (EBX << 8))
        assert r.vmcs("GUEST_CR3") == PD
    else:
        expect_no_exit(r)
        assert r.vmcs("GUEST_CR3") == ALT_PD               # the load happened


def test_mov_from_cr3_without_store_exiting_reads_cr3():
    r = vmx_run("mov edi, cr3\ncpuid\n", CR3_LOAD)
    assert r.reason == R.CPUID and r.exit_gprs()["edi"] == PD


# ---- CR0/CR4 guest/host masks and read shadows (25.6.6, 26.1.3, 26.3) ----------------------
def test_mov_from_cr0_and_cr4_read_owned_bits_from_the_shadow():
    r = vmx_run("mov eax, cr0\nmov edi, eax\nmov eax, cr4\nmov ebp, eax\ncpuid\n", {
        "CR0_GUEST_HOST_MASK": CR0_TS | CR0_NE, "CR0_READ_SHADOW": CR0_TS,
        "CR4_GUEST_HOST_MASK": CR4_VMXE, "CR4_READ_SHADOW": 0})
    assert r.reason == R.CPUID                            # no exit for the reads
    g = r.exit_gprs()
    assert g["edi"] == (CR0_GUEST & ~CR0_NE) | CR0_TS     # TS 1 and NE 0 from the shadow
    assert g["ebp"] == 0                                  # VMXE hidden
    assert r.vmcs("GUEST_CR0") == CR0_GUEST               # the real CR0 is unchanged


def test_mov_to_cr0_of_an_owned_bit_other_than_the_shadow_exits():
    r = vmx_run(at_end("mov ecx, cr0\nor ecx, 8\nmov cr0, ecx"),
                {"CR0_GUEST_HOST_MASK": CR0_TS, "CR0_READ_SHADOW": 0})
    expect_exit(r, R.CR_ACCESS, 0 | (X.CR_ACCESS_MOV_TO_CR << 4) | (ECX << 8))
    assert r.vmcs("GUEST_CR0") & CR0_TS == 0


def test_mov_to_cr0_of_a_guest_owned_bit_does_not_exit():
    r = vmx_run(at_end("mov ecx, cr0\nor ecx, 2\nmov cr0, ecx"),
                {"CR0_GUEST_HOST_MASK": CR0_TS, "CR0_READ_SHADOW": 0})
    expect_no_exit(r)
    assert r.vmcs("GUEST_CR0") == CR0_GUEST | CR0_MP


def test_mov_to_cr0_that_does_not_exit_keeps_host_owned_bits():
    # the guest reads TS = 1 (shadow) and writes it back: equal to the shadow, no exit,
    # and the real TS (0) must stay 0
    r = vmx_run(at_end("mov eax, cr0\nmov cr0, eax"),
                {"CR0_GUEST_HOST_MASK": CR0_TS, "CR0_READ_SHADOW": CR0_TS})
    expect_no_exit(r)
    assert r.vmcs("GUEST_CR0") == CR0_GUEST


def test_mov_to_cr4_that_does_not_exit_keeps_a_hidden_vmxe():
    r = vmx_run(at_end("mov eax, cr4\nmov cr4, eax"),
                {"CR4_GUEST_HOST_MASK": CR4_VMXE, "CR4_READ_SHADOW": 0, **GP_EXIT})
    expect_no_exit(r)
    assert r.vmcs("GUEST_CR4") == CR4_VMXE


@pytest.mark.parametrize("mask, shadow, real_ts, exits, ts_after", [
    (CR0_TS, CR0_TS, CR0_TS, True, CR0_TS),    # owned, shadow TS = 1: exit
    (CR0_TS, CR0_TS, 0, True, 0),
    (CR0_TS, 0, CR0_TS, False, CR0_TS),        # owned, shadow TS = 0: no exit, TS kept
    (0, CR0_TS, CR0_TS, False, 0),             # not owned: CLTS clears the real TS
])
def test_clts(mask, shadow, real_ts, exits, ts_after):
    # 26.1.3: CLTS exits iff TS is 1 in both the mask and the read shadow; 26.3: if TS
    # is owned and the shadow's TS is 0, CLTS leaves CR0.TS alone
    r = vmx_run(at_end("clts"), {"CR0_GUEST_HOST_MASK": mask, "CR0_READ_SHADOW": shadow,
                                 "GUEST_CR0": CR0_GUEST | real_ts})
    if exits:
        expect_exit(r, R.CR_ACCESS, X.CR_ACCESS_CLTS << 4)   # CR 0, type 2, no GPR
    else:
        expect_no_exit(r)
    assert r.vmcs("GUEST_CR0") & CR0_TS == ts_after


LMSW_OWNED = {"CR0_GUEST_HOST_MASK": 0xF, "CR0_READ_SHADOW": CR0_PE}
LMSW_DEFINED = ~0xF00 & 0xFFFFFFFF      # bits 11:8 are checked apart (xfail below)


@pytest.mark.parametrize("src, qual", [
    ("mov bx, 0x9\nlmsw bx", (0x9 << 16) | (X.CR_ACCESS_LMSW << 4)),
    (f"mov word [{GUEST_DATA:#x}], 0x9\nlmsw [{GUEST_DATA:#x}]",
     (0x9 << 16) | X.CR_QUAL_LMSW_MEMORY | (X.CR_ACCESS_LMSW << 4)),
])
def test_lmsw_exit_qualification(src, qual):
    # Table 28-3: CR 0, access type 3, bit 6 = memory operand, 31:16 the source data
    r = vmx_run(at_end(src), LMSW_OWNED)
    expect_exit(r, R.CR_ACCESS)
    assert r.qualification & LMSW_DEFINED == qual


def test_lmsw_register_form_leaves_qualification_bits_11_8_clear():
    r = vmx_run(at_end("mov bx, 0x9\nlmsw bx"), LMSW_OWNED)
    expect_exit(r, R.CR_ACCESS)
    assert r.qualification & 0xF00 == 0


def test_lmsw_memory_form_reports_the_guest_linear_address():
    r = vmx_run(at_end("mov word [fs:0x10], 0x9\nlmsw [fs:0x10]"),
                {**LMSW_OWNED, "GUEST_FS_BASE": GUEST_DATA})
    expect_exit(r, R.CR_ACCESS)
    assert r.vmcs("GUEST_LINEAR_ADDRESS") == GUEST_DATA + 0x10


@pytest.mark.parametrize("mask, shadow, src, exits, cr0_low", [
    (CR0_PE, 0, 0x1, True, None),              # sets an owned PE the shadow has as 0
    (CR0_PE, CR0_PE, 0x0, False, CR0_PE),      # LMSW cannot clear PE: no exit
    (CR0_TS, CR0_TS, 0xB, False, CR0_PE | CR0_MP),   # TS = shadow: MP loads, TS kept (26.3)
])
def test_lmsw_exit_rules(mask, shadow, src, exits, cr0_low):
    # 26.1.3: LMSW exits if it sets PE owned and 0 in the shadow, or changes an owned
    # bit among MP, EM, TS from the shadow's value
    r = vmx_run(at_end(f"mov ax, {src:#x}\nlmsw ax"),
                {"CR0_GUEST_HOST_MASK": mask, "CR0_READ_SHADOW": shadow})
    if exits:
        expect_exit(r, R.CR_ACCESS)
    else:
        expect_no_exit(r)
        assert r.vmcs("GUEST_CR0") & 0xF == cr0_low


# ---- descriptor-table exiting (26.1.3; instruction information 28.2.5) -------------------
DT = {"CPU_BASED_VM_EXEC_CONTROL": SEC_ON,
      "SECONDARY_VM_EXEC_CONTROL": X.SEC_DESCRIPTOR_TABLE_EXITING}


@pytest.mark.parametrize("src, identity, qual, base", [
    ("sgdt [ebx+0x10]", 0, 0x10, EBX), ("sidt [ebx+0x10]", 1, 0x10, EBX),
    ("lgdt [esi+0x20]", 2, 0x20, ESI), ("lidt [esi+0x20]", 3, 0x20, ESI),
])
def test_gdtr_idtr_access_exits(src, identity, qual, base):
    # "Format ... as Used for LIDT, LGDT, SIDT, or SGDT": 9:7 address size (1), 17:15
    # segment (DS 3), 22 index invalid, 26:23 base, 27 base valid (0), 29:28 identity;
    # the qualification is the displacement (28.2.1)
    r = vmx_run(at_end(f"mov ebx, {GUEST_DATA:#x}\nmov esi, ebx\n{src}"), DT)
    expect_exit(r, R.GDTR_IDTR_ACCESS, qual)
    spec = (1 << 7) | (3 << 15) | (1 << 22) | (base << 23) | (identity << 28)
    mask = (7 << 7) | (7 << 15) | (1 << 22) | (0xF << 23) | (1 << 27) | (3 << 28)
    assert r.vmcs("VMX_INSTRUCTION_INFO") & mask == spec


def test_gdtr_idtr_access_reports_a_32_bit_operand_size():
    r = vmx_run(at_end(f"sgdt [{GUEST_DATA:#x}]"), DT)
    expect_exit(r, R.GDTR_IDTR_ACCESS)
    assert r.vmcs("VMX_INSTRUCTION_INFO") & (1 << 11)


@pytest.mark.parametrize("src, identity", [("sldt ax", 0), ("str ax", 1), ("lldt ax", 2),
                                           ("ltr ax", 3)])
def test_ldtr_tr_access_exits(src, identity):
    # "Format ... as Used for LLDT, LTR, SLDT, and STR": 10 = 1 register operand, 6:3
    # Reg1, 29:28 identity (0 SLDT, 1 STR, 2 LLDT, 3 LTR)
    r = vmx_run(at_end(f"xor eax, eax\n{src}"), DT)
    expect_exit(r, R.LDTR_TR_ACCESS, 0)
    assert r.vmcs("VMX_INSTRUCTION_INFO") & ((1 << 10) | (0xF << 3) | (3 << 28)) == \
        (1 << 10) | (EAX << 3) | (identity << 28)


def test_descriptor_table_instructions_without_exiting():
    r = vmx_run(f"sgdt [{GUEST_DATA:#x}]\nsldt ax\nmov edi, eax\ncpuid\n")
    assert r.reason == R.CPUID
    raw = r.m.read_linear(GUEST_DATA, 6)
    assert int.from_bytes(raw[:2], "little") == r.vmcs("GUEST_GDTR_LIMIT")
    assert int.from_bytes(raw[2:], "little") == r.vmcs("GUEST_GDTR_BASE")
    assert r.exit_gprs()["edi"] == 0


# ---- guest debug state across entry and exit (27.3.2.1, 28.3.1) ---------------------------
def test_dr7_is_loaded_and_saved_with_the_debug_controls():
    r = vmx_run("mov edi, dr7\nmov eax, 0x401\nmov dr7, eax\ncpuid\n", {
        "GUEST_DR7": 0x403,
        "VM_ENTRY_CONTROLS": X.ENTRY_TRUE_ALLOWED0 | X.ENTRY_LOAD_DEBUG_CONTROLS,
        "VM_EXIT_CONTROLS": X.EXIT_TRUE_ALLOWED0 | X.EXIT_SAVE_DEBUG_CONTROLS})
    assert r.exit_gprs()["edi"] == 0x403
    assert r.vmcs("GUEST_DR7") == 0x401
    assert int(r.m.cpu.dr7) == 0x400                    # 28.5.1: DR7 = 400H after an exit


def test_dr7_is_not_loaded_without_load_debug_controls():
    r = vmx_run("mov edi, dr7\ncpuid\n", {"GUEST_DR7": 0x403})
    assert r.exit_gprs()["edi"] == 0x400                # the host's DR7 (its reset value)


def test_dr7_is_not_saved_without_save_debug_controls():
    r = vmx_run("mov eax, 0x401\nmov dr7, eax\ncpuid\n", {
        "GUEST_DR7": 0x403,
        "VM_ENTRY_CONTROLS": X.ENTRY_TRUE_ALLOWED0 | X.ENTRY_LOAD_DEBUG_CONTROLS})
    assert r.vmcs("GUEST_DR7") == 0x403


# ---- exceptions and the exception bitmap (25.6.3, 26.2) ----------------------------------
def test_int3_and_into_exit_as_software_exceptions():
    # Table 25-17 type 6 (software exception) with the instruction's length (28.2.4);
    # the saved RIP is the instruction's own (26.1)
    r = vmx_run(at_end("int3"), {"EXCEPTION_BITMAP": 1 << BP})
    expect_exit(r, R.EXCEPTION_NMI, 0)
    assert r.vmcs("VM_EXIT_INTR_INFO") == info(X.INTR_TYPE_SOFTWARE_EXCEPTION, BP) == 0x80000603
    assert r.length == 1
    r = vmx_run(at_end("mov al, 0x7f\nadd al, 1\ninto"), {"EXCEPTION_BITMAP": 1 << 4})
    assert r.reason == R.EXCEPTION_NMI and r.length == 1
    assert r.vmcs("VM_EXIT_INTR_INFO") == info(X.INTR_TYPE_SOFTWARE_EXCEPTION, 4)
    assert r.vmcs("GUEST_RFLAGS") & OF


def test_int_n_never_exits():
    # 25.6.3: the exception bitmap selects exceptions, and INT n is not one (INT 6 here
    # goes through the guest IDT to its handler, all 32 bits of the bitmap set)
    guest = "int 6\nhlt\nhandler:\nmov edi, 6\ncpuid\n"

    def setup(m, t, hv, g):
        route_to_guest(m, t, hv, g)
        gate(m, GUEST_IDT, 6, g.labels["handler"], CODE0)
    r = vmx_run(guest, {"EXCEPTION_BITMAP": 0xFFFFFFFF, "GUEST_IDTR_BASE": GUEST_IDT,
                        "GUEST_IDTR_LIMIT": 0x7FF}, setup=setup)
    assert r.reason == R.CPUID and r.exit_gprs()["edi"] == 6


def unmap(lin):
    def setup(m, t, hv, g):
        m.write_physical(PTE_BASE + 4 * (lin >> 12), bytes(4))
        m.cpu.cr2 = CR2_BEFORE
    return setup


PF_GUEST = "at:\nmov eax, [0x250010]\nend:\ncpuid\npf:\nmov edi, cr2\ncpuid\n"
PF_IDT = {"GUEST_IDTR_BASE": GUEST_IDT + 0x1000, "GUEST_IDTR_LIMIT": 0x7FF}   # next page


@pytest.mark.parametrize("bit, mask, match, exits", [
    (1, 0, 0, True),                  # every #PF
    (1, 1, 1, False),                 # only P = 1 faults: a not-present one is delivered
    (1, 1, 0, True),                  # only P = 0 faults
    (0, 0, 0xFFFFFFFF, True),         # bit 0 and a mismatch: the meaning reverses
    (0, 0, 0, False),
])
def test_page_fault_error_code_mask_and_match(bit, mask, match, exits):
    # 25.6.3: with (PFEC & MASK) == MATCH bit 14 of the bitmap is followed, else reversed
    def setup(m, t, hv, g):
        unmap(GUEST_IDT)(m, t, hv, g)
        route_to_guest(m, t, hv, g)
        gate(m, GUEST_IDT + 0x1000, PF, g.labels["pf"], CODE0)
    r = vmx_run(PF_GUEST, {"EXCEPTION_BITMAP": bit << PF, "PAGE_FAULT_ERROR_CODE_MASK": mask,
                           "PAGE_FAULT_ERROR_CODE_MATCH": match, **PF_IDT}, setup=setup)
    if exits:
        # 28.2.1: the qualification is the linear address; 28.1: a #PF that exits
        # directly does not load CR2; the error code: not present, read, supervisor (0)
        expect_exit(r, R.EXCEPTION_NMI, GUEST_IDT + 0x10)
        assert r.vmcs("VM_EXIT_INTR_INFO") == hw_exception(PF, True) == 0x80000B0E
        assert r.vmcs("VM_EXIT_INTR_ERROR_CODE") == 0
        assert int(r.m.cpu.cr2) == CR2_BEFORE
    else:
        assert r.reason == R.CPUID and r.exit_gprs()["edi"] == GUEST_IDT + 0x10


def test_triple_fault_exits_with_reason_2():
    # an exception with no usable gate anywhere: #UD, then #NP for its gate, #DF, and a
    # fault delivering #DF: the triple fault is a VM exit (26.2), qualification 0
    r = vmx_run("ud2\n", {"GUEST_IDTR_BASE": GUEST_IDT, "GUEST_IDTR_LIMIT": 0x7FF},
                setup=route_to_guest)
    assert r.exited and r.reason == R.TRIPLE_FAULT and r.qualification == 0
    assert r.m.counters["triple_faults"] == 1
    assert r.m._st[L.SHUTDOWN] == 0                       # the host runs on
    # with #DF in the bitmap the double fault exits first (reason 0, vector 8, error 0)
    r = vmx_run("ud2\n", {"GUEST_IDTR_BASE": GUEST_IDT, "GUEST_IDTR_LIMIT": 0x7FF,
                          "EXCEPTION_BITMAP": 1 << DF}, setup=route_to_guest)
    assert r.reason == R.EXCEPTION_NMI
    assert r.vmcs("VM_EXIT_INTR_INFO") == hw_exception(DF, True)
    assert r.vmcs("VM_EXIT_INTR_ERROR_CODE") == 0


def test_an_exception_outside_the_bitmap_goes_to_the_guest_idt_whatever_the_routing():
    guest = "ud2\nhandler:\nmov edi, 6\ncpuid\n"

    def setup(m, t, hv, g):
        gate(m, GUEST_IDT, UD, g.labels["handler"], CODE0)
    r = vmx_run(guest, {"GUEST_IDTR_BASE": GUEST_IDT, "GUEST_IDTR_LIMIT": 0x7FF},
                setup=setup)
    assert r.exited and r.reason == R.CPUID and r.exit_gprs()["edi"] == 6


# ---- external interrupts (25.6.1, 26.2, 26.7.x) ------------------------------------------
TIMER = (3000, 0x40)          # the first tick comes after the VMM's ~460 instructions
EXT = {"PIN_BASED_VM_EXEC_CONTROL": X.PIN_TRUE_ALLOWED0 | X.PIN_EXTERNAL_INTERRUPT_EXITING}
ACK = {"VM_EXIT_CONTROLS": X.EXIT_TRUE_ALLOWED0 | X.EXIT_ACK_INTERRUPT_ON_EXIT}


@pytest.mark.parametrize("ack", [True, False])
@pytest.mark.parametrize("guest_if", [0, IF])
def test_external_interrupt_exiting(ack, guest_if):
    # RFLAGS.IF does not block an interrupt that exits; with "acknowledge interrupt on
    # exit" the vector goes into the VM-exit interruption information (type 0) and the
    # interrupt leaves the line, without it the field is not valid and it stays pending
    # (28.1: "An external interrupt does not acknowledge the interrupt controller")
    r = vmx_run("mov edi, 1\nat:\njmp at\n", {**EXT, **(ACK if ack else {}),
                                              "GUEST_RFLAGS": FIXED1 | guest_if},
                timer=TIMER)
    assert r.exited and r.reason == R.EXTERNAL_INTERRUPT and r.qualification == 0
    assert r.vmcs("GUEST_RIP") == r.guest.labels["at"]
    assert r.exit_gprs()["edi"] == 1
    if ack:
        assert r.vmcs("VM_EXIT_INTR_INFO") == info(X.INTR_TYPE_EXTERNAL, 0x40) == 0x80000040
        assert r.m._st[L.IRQ_PENDING] == -1
    else:
        assert r.vmcs("VM_EXIT_INTR_INFO") & X.INTR_INFO_VALID == 0
        assert r.m._st[L.IRQ_PENDING] == 0x40


def test_external_interrupt_without_exiting_goes_through_the_guest_idt():
    guest = "sti\nat:\njmp at\nhandler:\nmov edi, 0x40\ncpuid\n"

    def setup(m, t, hv, g):
        gate(m, GUEST_IDT, 0x40, g.labels["handler"], CODE0)
    r = vmx_run(guest, {"GUEST_IDTR_BASE": GUEST_IDT, "GUEST_IDTR_LIMIT": 0x7FF},
                setup=setup, timer=TIMER)
    assert r.reason == R.CPUID and r.exit_gprs()["edi"] == 0x40
    # the interrupt gate pushed the interrupted EIP (the JMP) and cleared IF
    esp = r.vmcs("GUEST_RSP")
    assert esp == 0x280000 - 12
    assert int.from_bytes(r.m.read_linear(esp, 4), "little") == r.guest.labels["at"]
    assert r.vmcs("GUEST_RFLAGS") & IF == 0


def test_external_interrupt_without_exiting_waits_for_if():
    r = vmx_run("cli\nat:\njmp at\n", timer=TIMER, budget=6000)
    assert r.ev.kind == "budget" and r.m._st[L.VMX_NONROOT] == 1
    assert r.m._st[L.IRQ_PENDING] == 0x40 and not r.exited


def test_external_interrupt_exiting_wakes_a_guest_halted_with_if_0():
    r = vmx_run("cli\nhlt\nafter:\nnop\n", {**EXT, **ACK}, timer=TIMER, budget=20_000)
    assert r.exited and r.reason == R.EXTERNAL_INTERRUPT
    assert r.vmcs("GUEST_RIP") == r.guest.labels["after"]


def test_external_interrupt_exiting_wakes_a_guest_halted_with_if_1():
    r = vmx_run("sti\nhlt\nafter:\nnop\n", {**EXT, **ACK}, timer=TIMER, budget=20_000)
    assert r.exited and r.reason == R.EXTERNAL_INTERRUPT
    assert r.vmcs("GUEST_RIP") == r.guest.labels["after"]
    assert r.vmcs("VM_EXIT_INTR_INFO") == 0x80000040


# ---- interrupt-window exiting (25.6.2, 26.7.5) -------------------------------------------
WINDOW = {"CPU_BASED_VM_EXEC_CONTROL": CPU0 | X.CPU_INTERRUPT_WINDOW_EXITING}


def test_interrupt_window_open_at_entry_exits_before_the_first_instruction():
    r = vmx_run("mov edi, 1\ncpuid\n", {**WINDOW, "GUEST_RFLAGS": FIXED1 | IF})
    assert r.reason == R.INTERRUPT_WINDOW and r.qualification == 0
    assert r.vmcs("GUEST_RIP") == GUEST_CODE and r.exit_gprs()["edi"] == 0


def test_interrupt_window_opens_after_the_sti_shadow():
    # STI with IF = 0 blocks for one more instruction (blocking by STI, SDM Vol. 3A 6.8.3)
    r = vmx_run("mov edi, 1\nsti\nnop\nat:\ncpuid\n", WINDOW)
    assert r.reason == R.INTERRUPT_WINDOW
    assert r.vmcs("GUEST_RIP") == r.guest.labels["at"] and r.exit_gprs()["edi"] == 1
    assert r.vmcs("GUEST_RFLAGS") & IF


def test_interrupt_window_waits_for_mov_ss_blocking_from_the_vmcs():
    r = vmx_run("nop\nat:\nnop\ncpuid\n", {**WINDOW, "GUEST_RFLAGS": FIXED1 | IF,
                                          "GUEST_INTERRUPTIBILITY_INFO": X.INTERRUPTIBILITY_MOV_SS})
    assert r.reason == R.INTERRUPT_WINDOW and r.vmcs("GUEST_RIP") == r.guest.labels["at"]


def test_no_interrupt_window_exit_without_the_control():
    r = vmx_run("sti\nnop\ncpuid\n")
    assert r.reason == R.CPUID


# ---- event injection (27.6) --------------------------------------------------------------
INJ_GUEST = """
main:
    nop
    nop
    cpuid
h_ext:
    mov edi, 0x40
    cpuid
h_gp:
    mov edi, 13
    cpuid
h_soft:
    mov edi, 0x30
    cpuid
h_bp:
    mov edi, 3
    cpuid
h_db:
    mov edi, 1
    cpuid
h_ud:
    mov edi, 6
    cpuid
"""
HANDLERS = {0x40: "h_ext", GP: "h_gp", 0x30: "h_soft", BP: "h_bp", 1: "h_db", UD: "h_ud"}
IDT = {"GUEST_IDTR_BASE": GUEST_IDT, "GUEST_IDTR_LIMIT": 0x7FF}


def gates(dpl=0):
    def setup(m, t, hv, g):
        route_to_guest(m, t, hv, g)
        for v, label in HANDLERS.items():
            gate(m, GUEST_IDT, v, g.labels[label], CODE0, dpl=dpl)
    return setup


def stack(r, n):
    esp = r.vmcs("GUEST_RSP")
    raw = r.m.read_linear(esp, 4 * n)
    return [int.from_bytes(raw[4 * i:4 * i + 4], "little") for i in range(n)]


@pytest.mark.parametrize("inject, extra, vector, pushed", [
    # external interrupt: delivered as if it occurred right after the entry; EIP = RIP
    (info(X.INTR_TYPE_EXTERNAL, 0x40), {"GUEST_RFLAGS": FIXED1 | IF}, 0x40,
     lambda lab: [lab["main"], CODE0, FIXED1 | IF]),
    # #GP with an error code (VM-entry exception error code)
    (hw_exception(GP, True), {"VM_ENTRY_EXCEPTION_ERROR_CODE": 0x1234}, GP,
     lambda lab: [0x1234, lab["main"], CODE0, FIXED1]),
    # software interrupt: EIP pushed = RIP + VM-entry instruction length
    (info(X.INTR_TYPE_SOFTWARE_INTERRUPT, 0x30), {"VM_ENTRY_INSTRUCTION_LEN": 2}, 0x30,
     lambda lab: [lab["main"] + 2, CODE0, FIXED1]),
    # software exception (INT3) and privileged software exception (INT1): the same
    (info(X.INTR_TYPE_SOFTWARE_EXCEPTION, BP), {"VM_ENTRY_INSTRUCTION_LEN": 1}, BP,
     lambda lab: [lab["main"] + 1, CODE0, FIXED1]),
    (info(X.INTR_TYPE_PRIVILEGED_SOFTWARE_EXCEPTION, 1), {"VM_ENTRY_INSTRUCTION_LEN": 1}, 1,
     lambda lab: [lab["main"] + 1, CODE0, FIXED1]),
])
def test_event_injection_through_the_guest_idt(inject, extra, vector, pushed):
    r = vmx_run(INJ_GUEST, {**IDT, "VM_ENTRY_INTR_INFO_FIELD": inject, **extra},
                setup=gates())
    lab = r.guest.labels
    assert r.reason == R.CPUID
    assert r.exit_gprs()["edi"] == vector                      # its handler ran
    assert r.vmcs("GUEST_RIP") == lab[HANDLERS[vector]] + 5
    expected = pushed(lab)
    assert r.vmcs("GUEST_RSP") == GUEST_STACK - 4 * len(expected)
    assert stack(r, len(expected)) == expected
    assert r.vmcs("GUEST_RFLAGS") & IF == 0                    # an interrupt gate
    # 25.8.3: the valid bit of the VM-entry interruption information is cleared on exit
    assert r.vmcs("VM_ENTRY_INTR_INFO_FIELD") == inject & ~X.INTR_INFO_VALID


def test_injected_software_interrupt_checks_the_gate_dpl():
    # 27.6.1: a software interrupt is delivered as INT n would be: from ring 3 through a
    # DPL 0 gate it is #GP(vector * 8 + 2); a hardware exception ignores the gate's DPL
    fields = {**IDT, "VM_ENTRY_INTR_INFO_FIELD": info(X.INTR_TYPE_SOFTWARE_INTERRUPT, 0x30),
              "VM_ENTRY_INSTRUCTION_LEN": 2, **GP_EXIT}
    r = vmx_run(INJ_GUEST, fields, guest_ring=3, setup=gates())
    assert r.reason == R.EXCEPTION_NMI
    assert r.vmcs("VM_EXIT_INTR_INFO") == hw_exception(GP, True)
    assert r.vmcs("VM_EXIT_INTR_ERROR_CODE") == 0x30 * 8 + 2
    assert r.vmcs("GUEST_RIP") == GUEST_CODE and r.vmcs("GUEST_CS_SELECTOR") == CODE3
    r = vmx_run(INJ_GUEST, {**IDT, "VM_ENTRY_INTR_INFO_FIELD": hw_exception(UD)},
                guest_ring=3, setup=gates())
    assert r.reason == R.CPUID and r.exit_gprs()["edi"] == UD
    assert r.vmcs("GUEST_CS_SELECTOR") == CODE0                # in the ring-0 handler


def test_a_vectoring_entry_leaves_no_mov_ss_blocking():
    # #UD injected through a trap gate (IF stays 1) with MOV-SS blocking in the VMCS and
    # interrupt-window exiting: the window is open at the handler's first instruction
    guest = "main:\nnop\ncpuid\nhandler:\nmov edi, 6\nnop\ncpuid\n"

    def setup(m, t, hv, g):
        route_to_guest(m, t, hv, g)
        gate(m, GUEST_IDT, UD, g.labels["handler"], CODE0, kind="trap")
    r = vmx_run(guest, {**IDT, **WINDOW, "VM_ENTRY_INTR_INFO_FIELD": hw_exception(UD),
                        "GUEST_RFLAGS": FIXED1 | IF,
                        "GUEST_INTERRUPTIBILITY_INFO": X.INTERRUPTIBILITY_MOV_SS},
                setup=setup)
    assert r.reason == R.INTERRUPT_WINDOW
    assert r.vmcs("GUEST_RIP") == r.guest.labels["handler"]
    assert r.exit_gprs()["edi"] == 0


# ---- IDT-vectoring information: an exit during event delivery (25.9.3, 28.2.3) ------------
VECTORING = {**IDT, "EXCEPTION_BITMAP": 1 << PF}


def unmapped_idt():
    return with_setup(route_to_guest, unmap(GUEST_IDT))


@pytest.mark.parametrize("src, extra, vectoring, error, rip", [
    ("nop\n", {"VM_ENTRY_INTR_INFO_FIELD": info(X.INTR_TYPE_EXTERNAL, 0x40),
               "GUEST_RFLAGS": FIXED1 | IF}, info(X.INTR_TYPE_EXTERNAL, 0x40), None, 0),
    ("ud2\n", {}, hw_exception(UD), None, 0),
    ("mov ax, 0x1234\nmov ds, ax\n", {}, hw_exception(GP, True), 0x1234, 4),
    ("int 0x40\n", {}, info(X.INTR_TYPE_SOFTWARE_INTERRUPT, 0x40), None, 0),
])
def test_idt_vectoring_information(src, extra, vectoring, error, rip):
    # the #PF on the IDT's page exits (bitmap bit 14, mask = match = 0): the event being
    # delivered is in the IDT-vectoring fields for the VMM to inject again, the saved
    # RIP is the one the event would have pushed (the faulting/INT instruction's)
    r = vmx_run(src, {**VECTORING, **extra}, setup=unmapped_idt())
    assert r.reason == R.EXCEPTION_NMI
    assert r.vmcs("VM_EXIT_INTR_INFO") == hw_exception(PF, True)
    vector = vectoring & 0xFF
    assert r.qualification == GUEST_IDT + 8 * vector           # the gate's linear address
    assert r.vmcs("IDT_VECTORING_INFO_FIELD") == vectoring
    if error is not None:
        assert r.vmcs("IDT_VECTORING_ERROR_CODE") == error
    assert r.vmcs("GUEST_RIP") == GUEST_CODE + rip
    assert r.vmcs("GUEST_RSP") == GUEST_STACK                  # nothing was pushed


def test_a_direct_exit_has_no_idt_vectoring_information():
    r = vmx_run(f"mov eax, [{GUEST_IDT:#x}]\n", VECTORING, setup=unmapped_idt())
    assert r.reason == R.EXCEPTION_NMI and r.qualification == GUEST_IDT
    assert r.vmcs("IDT_VECTORING_INFO_FIELD") & X.INTR_INFO_VALID == 0
    assert int(r.m.cpu.cr2) == CR2_BEFORE                      # 28.1: CR2 not loaded


def test_the_vmm_reinjects_the_vectoring_event_after_fixing_the_fault():
    # the classic lesson: copy IDT-vectoring information into the VM-entry field, repair
    # the page, VMRESUME without advancing RIP -- the interrupt is not lost
    r = vmx_run(INJ_GUEST, {**VECTORING, "VM_ENTRY_INTR_INFO_FIELD":
                            info(X.INTR_TYPE_EXTERNAL, 0x40), "GUEST_RFLAGS": FIXED1 | IF},
                setup=with_setup(gates(), unmap(GUEST_IDT)))
    assert r.vmcs("IDT_VECTORING_INFO_FIELD") == 0x80000040
    pte = PTE_BASE + 4 * (GUEST_IDT >> 12)
    r.root(f"mov dword [{pte:#x}], {GUEST_IDT | 7:#x}\nmov eax, 0x4408\nvmread ebx, eax\n"
           "mov eax, 0x4016\nvmwrite eax, ebx\nvmresume\nhlt\n")
    assert r.exited and r.reason == R.CPUID
    assert r.exit_gprs()["edi"] == 0x40
    assert stack(r, 1) == [r.guest.labels["main"]]


def test_a_fault_delivering_int_n_reports_its_instruction_length():
    r = vmx_run("int 0x40\n", VECTORING, setup=unmapped_idt())
    assert r.vmcs("IDT_VECTORING_INFO_FIELD") == 0x80000440
    assert r.length == 2


def test_a_fault_delivering_int3_reports_a_software_exception():
    r = vmx_run("int3\n", VECTORING, setup=unmapped_idt())
    assert r.vmcs("IDT_VECTORING_INFO_FIELD") == info(X.INTR_TYPE_SOFTWARE_EXCEPTION, BP)


def test_a_page_fault_during_delivery_that_exits_leaves_cr2_alone():
    r = vmx_run("ud2\n", VECTORING, setup=unmapped_idt())
    assert r.reason == R.EXCEPTION_NMI and r.vmcs("IDT_VECTORING_INFO_FIELD") == 0x80000306
    assert int(r.m.cpu.cr2) == CR2_BEFORE
