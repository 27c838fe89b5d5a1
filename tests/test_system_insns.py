"""CPUID, RDTSC, RDMSR/WRMSR and MOV CRn on the whole machine, against the SDM's rules."""
import pytest

from hvsim import Machine, assemble
from hvsim.arch.cr import CR4_TSD, CR4_PAE
from hvsim.cpu.system import (CPUID_VENDOR, CPUID_FEATURES_EDX, CPUID_EDX_TSC, CPUID_EDX_PSE,
                              CPUID_EDX_PGE)


def run(src, cpl=0, **kw):
    m = Machine(**kw)
    m.load(assemble("start:\n" + src + "\nhlt\n"))
    if cpl:
        m.cpu.cpl = cpl
    return m, m.run(10_000)


def test_cpuid_leaf0_vendor_in_ebx_edx_ecx_order():
    m, ev = run("xor eax, eax\ncpuid")
    assert ev.kind == "halt"
    vendor = b"".join(r.to_bytes(4, "little") for r in (m.cpu.ebx, m.cpu.edx, m.cpu.ecx))
    assert vendor == CPUID_VENDOR and m.cpu.eax == 1          # highest basic leaf


def test_cpuid_leaf1_reports_the_modelled_features_and_high_leaves_repeat_it():
    m, _ = run("mov eax, 1\ncpuid\nmov esi, edx\nmov eax, 7\ncpuid")
    assert m.cpu.esi == CPUID_FEATURES_EDX
    assert m.cpu.esi & CPUID_EDX_TSC and m.cpu.esi & CPUID_EDX_PSE and m.cpu.esi & CPUID_EDX_PGE
    assert m.cpu.edx == m.cpu.esi                              # leaf 7 > max: leaf 1's data
    assert (m.cpu.eax >> 8) & 0xF == 6                         # family 6


def test_rdtsc_counts_retired_instructions():
    # three instructions retire before the first RDTSC reads the counter
    m, _ = run("nop\nnop\nnop\nrdtsc\nmov esi, eax\nrdtsc")
    assert m.cpu.esi == 3 and m.cpu.eax == 5 and m.cpu.edx == 0


def test_rdtsc_is_privileged_only_with_cr4_tsd():
    m, ev = run("rdtsc", cpl=3)          # CR4.TSD = 0: RDTSC works at ring 3 ...
    assert m.cpu.eax == 0                 # (the counter had not moved yet)
    assert (ev.kind, ev.vector, ev.eip) == ("exception", 13, 0x1002)   # ... the HLT after it does not
    m = Machine()
    m.load(assemble("start:\nrdtsc\nhlt"))
    m.cpu.cr4 = CR4_TSD
    m.cpu.cpl = 3
    ev = m.run(100)
    assert (ev.kind, ev.vector, ev.error_code, ev.eip) == ("exception", 13, 0, 0x1000)


def test_wrmsr_rdmsr_round_trip_and_unknown_msr_is_gp():
    m, ev = run("mov ecx, 0x176\nmov eax, 0xC0DE1234\nxor edx, edx\nwrmsr\n"
                "xor eax, eax\nrdmsr\nmov esi, eax")
    assert ev.kind == "halt" and m.cpu.esi == 0xC0DE1234
    m, ev = run("mov ecx, 0x12345\nrdmsr")
    assert (ev.kind, ev.vector, ev.error_code) == ("exception", 13, 0)


def test_wrmsr_tsc_moves_the_counter():
    m, _ = run("mov ecx, 0x10\nmov eax, 1000\nxor edx, edx\nwrmsr\nrdtsc")
    assert m.cpu.eax == 1001        # WRMSR wrote 1000, then itself retired: one tick before RDTSC


@pytest.mark.parametrize("value", [CR4_PAE, 1 << 20])
def test_mov_cr4_with_unmodelled_or_reserved_bits_is_gp(value):
    m, ev = run(f"mov eax, {value}\nmov cr4, eax")
    assert (ev.kind, ev.vector, ev.error_code) == ("exception", 13, 0)
    assert m.cpu.cr4 == 0


def test_mov_cr0_paging_without_protection_is_gp_and_cr_reads_back():
    m, ev = run("mov eax, 0x80000000\nmov cr0, eax")
    assert (ev.kind, ev.vector) == ("exception", 13)
    m, ev = run("mov eax, 0x1234000\nmov cr3, eax\nmov ebx, cr3\nmov eax, 0x5678\nmov cr2, eax\nmov ecx, cr2")
    assert ev.kind == "halt" and m.cpu.ebx == 0x1234000 and m.cpu.ecx == 0x5678
    assert m.counters["cr3_writes"] == 1
