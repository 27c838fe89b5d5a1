"""VT-x in the machine: the VMX instructions, VM entry and its checks, VM exits.

Every expectation cites the SDM (Vol. 3C, 082US numbering) rule it checks. The VMM
here is written in guest assembly, as a SimpleVisor-style hypervisor would be: VMXON,
VMCLEAR, VMPTRLD, a table of VMWRITEs, VMLAUNCH; a VM exit lands at HOST_RIP, which
reads the exit reason and qualification into registers and halts.
"""
import pytest

from hvsim import Machine, assemble
from hvsim.arch import vmx as X
from hvsim.arch import vmcs as V
from hvsim.arch import layout as L
from hvsim.arch.flags import CF, ZF, FIXED1
from hvsim.vtx import checks as K

import vmx_harness as H
from vmx_harness import GUEST_CODE


def vmx_run(guest_src, fields=None, guest_ring=0, budget=100_000, drop=()):
    """Run tests/vmx_harness.py's assembly VMM with ``guest_src`` as its guest:
    (machine, event, guest program) once it halts -- EBX reason, ECX qualification, EDX
    length at an exit; EDI flags, EBP error number when the entry fell through."""
    r = H.vmx_run(guest_src, fields, guest_ring=guest_ring, budget=budget, drop=drop)
    return r.m, r.ev, r.guest


def vmcs(m, name):
    return int(m._st[V.state_index(name)])


def test_cpuid_exits_unconditionally_with_the_instructions_rip_and_length():
    # SDM 26.1.2: CPUID causes a VM exit in non-root operation; exits are fault-like
    # (26.1), so the saved RIP is CPUID's own; 28.2.4: instruction length = 2 (0F A2)
    m, ev, g = vmx_run("nop\ncpuid\nhlt\n")
    assert ev.kind == "halt" and m.cpu.esi == 0xE817
    assert m.cpu.ebx == X.ExitReason.CPUID
    assert m.cpu.edx == 2
    assert vmcs(m, "GUEST_RIP") == GUEST_CODE + 1
    assert m._st[L.VMX_NONROOT] == 0 and m.cpu.cpl == 0
    assert m.counters["vm_entries"] == 1


def test_host_state_is_loaded_on_exit():
    # SDM 28.5.1: RFLAGS = 2 after a VM exit (bit 1 only), DR7 = 400H; 28.5.2: TR busy
    m, ev, g = vmx_run("cpuid\n", {"GUEST_RFLAGS": FIXED1 | (1 << 9) | (1 << 11)})
    assert m.cpu.esi == 0xE817
    # the host's VMREADs succeeded (VMsucceed clears the six status flags): nothing of the
    # guest's IF or OF is left
    assert m.cpu.eflags == FIXED1
    assert vmcs(m, "GUEST_RFLAGS") == FIXED1 | (1 << 9) | (1 << 11)
    assert m.cpu.dr7 == 0x400
    assert m._st[L.TR_AR] & 0xF == 11


def test_hlt_exits_only_with_hlt_exiting():
    m, ev, g = vmx_run("hlt\n", {"CPU_BASED_VM_EXEC_CONTROL":
                                 X.CPU_TRUE_ALLOWED0 | X.CPU_HLT_EXITING})
    assert m.cpu.ebx == X.ExitReason.HLT and m.cpu.edx == 1
    # without the control the guest itself sleeps: nothing wakes it, run() says 'halt'
    m, ev, g = vmx_run("hlt\n")
    assert ev.kind == "halt" and m._st[L.VMX_NONROOT] == 1


def test_vmcall_exits_with_reason_18():
    m, ev, g = vmx_run("vmcall\n")
    assert m.cpu.ebx == X.ExitReason.VMCALL and m.cpu.edx == 3


def test_io_exit_qualification():
    # SDM Table 28-5: size-1 in 2:0, IN in bit 3, immediate operand in bit 6, port 31:16
    m, ev, g = vmx_run("mov al, 1\nout 0x80, al\n", {
        "CPU_BASED_VM_EXEC_CONTROL": X.CPU_TRUE_ALLOWED0 | X.CPU_UNCONDITIONAL_IO_EXITING})
    assert m.cpu.ebx == X.ExitReason.IO_INSTRUCTION
    assert m.cpu.ecx == (0x80 << 16) | (1 << 6) | 0
    m, ev, g = vmx_run("mov dx, 0x3f8\nin eax, dx\n", {
        "CPU_BASED_VM_EXEC_CONTROL": X.CPU_TRUE_ALLOWED0 | X.CPU_UNCONDITIONAL_IO_EXITING})
    assert m.cpu.ecx == (0x3F8 << 16) | (1 << 3) | 3


def test_exception_bitmap_turns_ud_into_exit_0():
    # SDM 25.6.3 and Table 25-17: vector 6, type 3 (hardware exception), valid
    m, ev, g = vmx_run("ud2\n", {"EXCEPTION_BITMAP": 1 << 6})
    assert m.cpu.ebx == X.ExitReason.EXCEPTION_NMI
    assert vmcs(m, "VM_EXIT_INTR_INFO") == 0x80000306
    assert vmcs(m, "GUEST_RIP") == GUEST_CODE


def test_privilege_fault_beats_the_exit():
    # SDM 26.1.1: "execution of RDMSR with CPL = 3 generates a general-protection
    # exception and not a VM exit": with #GP in the bitmap, the exit is reason 0, #GP(0)
    m, ev, g = vmx_run("mov ecx, 0x10\nrdmsr\n", {"EXCEPTION_BITMAP": 1 << 13}, guest_ring=3)
    assert m.cpu.ebx == X.ExitReason.EXCEPTION_NMI
    assert vmcs(m, "VM_EXIT_INTR_INFO") == 0x80000B0D       # deliver-error-code bit set
    assert vmcs(m, "VM_EXIT_INTR_ERROR_CODE") == 0
    # at CPL 0 the same RDMSR exits with reason 31 (no MSR bitmaps: every MSR exits)
    m, ev, g = vmx_run("mov ecx, 0x10\nrdmsr\n", {"EXCEPTION_BITMAP": 1 << 13})
    assert m.cpu.ebx == X.ExitReason.RDMSR


def test_smsw_reads_the_cr0_read_shadow_without_an_exit():
    # SDM 25.6.6 / 26.3: bits owned by the host read from the shadow; the Robin-Irvine
    # hole (SMSW at any CPL) is closed with no exit at all
    r = H.vmx_run("smsw eax\nmov edi, eax\ncpuid\n", {
        "CR0_GUEST_HOST_MASK": 0x1, "CR0_READ_SHADOW": 0x0})
    assert r.reason == X.ExitReason.CPUID                   # the first exit is CPUID's
    assert r.vmcs("GUEST_RIP") == GUEST_CODE + 3 + 2        # after SMSW (3) and MOV (2)
    # the guest's EDI, as HOST_RIP stored it, holds what SMSW gave the guest: PE from
    # the shadow (0), every other bit from the real CR0 (P6 and later store all of CR0)
    real = r.vmcs("GUEST_CR0")
    assert real & 1 == 1
    assert r.exit_gprs()["edi"] == real & ~1


def test_mov_to_cr0_of_an_owned_bit_exits_with_the_qualification():
    # Table 28-3: CR number 0, access type 0 (MOV to CR), GPR 3 (EBX) in bits 11:8
    m, ev, g = vmx_run("mov ebx, cr0\nand ebx, 0xfffffffd\nmov cr0, ebx\n", {
        "CR0_GUEST_HOST_MASK": 0x2, "CR0_READ_SHADOW": 0x2})
    assert m.cpu.ebx == X.ExitReason.CR_ACCESS
    assert m.cpu.ecx == (3 << 8) | 0


@pytest.mark.parametrize("fields, error, check", [
    ({"HOST_CR0": 0x80000011}, 8, K.HOST_CR0),              # NE clear: 27.2.2
    ({"HOST_TR_SELECTOR": 0}, 8, K.HOST_TR_NULL),           # 27.2.3: TR must not be 0
    ({"PIN_BASED_VM_EXEC_CONTROL": 0}, 7, K.PIN_RESERVED),  # default1 bits clear: 27.2.1.1
    ({"CR3_TARGET_COUNT": 5}, 7, K.CR3_TARGETS),
])
def test_control_and_host_failures_are_vmfail_valid(fields, error, check):
    # SDM 27.2: VMfailValid(7) or (8), ZF = 1, the instruction falls through
    m, ev, g = vmx_run("cpuid\n", fields)
    assert m.cpu.esi == 0xFA11
    assert m.cpu.edi & (ZF | CF) == ZF
    assert m.cpu.ebp == error
    assert m._st[L.VMX_ENTRY_CHECK] == check
    assert K.outcome_of(check) == error


def test_guest_state_failure_is_an_exit_with_reason_33_and_bit_31():
    # SDM 27.8: host state loaded, exit reason 0x80000021, qualification 0
    m, ev, g = vmx_run("cpuid\n", {"GUEST_TR_AR_BYTES": 9 | L.AR_P})
    assert m.cpu.esi == 0xE817
    assert m.cpu.ebx == 0x80000021 and m.cpu.ecx == 0
    assert m._st[L.VMX_ENTRY_CHECK] == K.GUEST_TR_TYPE
    text = K.explain(int(m._st[L.VMX_ENTRY_CHECK]), int(m._st[L.VMX_ENTRY_VALUE]))
    assert text.startswith("GUEST_TR_AR_BYTES: TR type must be 3 or 11")
    assert "type 9" in text


def test_link_pointer_failure_has_qualification_4():
    m, ev, g = vmx_run("cpuid\n", drop=("VMCS_LINK_POINTER", "VMCS_LINK_POINTER_HIGH"))
    assert m.cpu.ebx == 0x80000021 and m.cpu.ecx == X.ENTRY_FAIL_VMCS_LINK_POINTER


def test_vmx_instructions_are_ud_outside_vmx_operation():
    m = Machine()
    m.load(assemble("vmcall\nhlt\n"))
    m.route(6, "host")
    ev = m.run()
    assert ev.kind == "exception" and ev.vector == 6
    m = Machine()                          # VMXON with CR4.VMXE = 0: #UD (SDM 31.3 VMXON)
    m.load(assemble("vmxon [0x800]\nhlt\n"))
    m.route(6, "host")
    assert m.run().vector == 6


def test_capability_msrs_read_back():
    m = Machine()
    m.load(assemble("mov ecx, 0x480\nrdmsr\nmov ebx, eax\nmov esi, edx\n"
                    "mov ecx, 0x48e\nrdmsr\nhlt\n"))
    assert m.run().kind == "halt"
    assert m.cpu.ebx == X.VMX_BASIC & 0xFFFFFFFF and m.cpu.esi == X.VMX_BASIC >> 32
    # TRUE_PROCBASED: CR3-load/-store exiting may be 0 (allowed-0 low dword)
    assert m.cpu.eax & X.CPU_CR3_LOAD_EXITING == 0
    # CPUID.1:ECX.VMX (bit 5)
    m = Machine()
    m.load(assemble("mov eax, 1\ncpuid\nhlt\n"))
    m.run()
    assert m.cpu.ecx & (1 << 5)


def test_vmread_vmwrite_failures():
    # SDM 31.4 Table 31-1: 12 unsupported component, 13 VMWRITE to a read-only one
    m, ev, g = vmx_run("cpuid\n")
    prog = assemble("""
        mov eax, 0x1234
        vmread ebx, eax
        pushfd
        pop edi
        mov eax, 0x4400
        vmread ebp, eax
        mov eax, 0x4402
        vmwrite eax, eax
        mov eax, 0x4400
        vmread esi, eax
        hlt
    """, origin=0x50000)
    m.write_physical(0x50000, prog.code)
    m.cpu.eip = 0x50000
    assert m.run().kind == "halt"
    assert m.cpu.edi & ZF and m.cpu.ebp == 12 and m.cpu.esi == 13


def test_vmlaunch_of_a_launched_vmcs_fails_with_4():
    m, ev, g = vmx_run("cpuid\n")
    prog = assemble("vmlaunch\nmov eax, 0x4400\nvmread ebp, eax\nhlt\n", origin=0x50000)
    m.write_physical(0x50000, prog.code)
    m.cpu.eip = 0x50000
    m.run()
    assert m.cpu.ebp == 4


def test_vmresume_continues_after_the_exit():
    # the VMM skips CPUID (RIP += exit instruction length) and resumes; the guest then
    # executes VMCALL, which exits with 18
    m, ev, g = vmx_run("cpuid\nvmcall\n")
    prog = assemble("""
        mov eax, 0x681e
        vmread ebx, eax
        add ebx, edx
        vmwrite eax, ebx
        vmresume
        hlt
    """, origin=0x50000)
    m.write_physical(0x50000, prog.code)
    m.cpu.eip = 0x50000
    m.run()
    assert m.cpu.ebx == X.ExitReason.VMCALL and m.cpu.esi == 0xE817
    assert vmcs(m, "GUEST_RIP") == GUEST_CODE + 2


def test_a_fresh_machine_has_no_current_vmcs():
    # VMPTRST before any VMPTRLD stores FFFFFFFF_FFFFFFFFH (SDM Vol. 3C, 31.3 VMPTRST:
    # the current-VMCS pointer after VMXON is FFFFFFFF_FFFFFFFFH; before it, none either)
    m = Machine()
    assert m._st[L.VMCS_PTR] == L.VMCS_PTR_NONE
