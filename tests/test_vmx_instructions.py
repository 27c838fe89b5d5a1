"""The VMX instructions one by one, and every VM-instruction error number hvsim can raise.

Oracle: the "Operation" and "Flags Affected" sections of each instruction in SDM Vol. 3C
31.3 (082US numbering), the VMsucceed / VMfailInvalid / VMfailValid(n) conventions of
31.2, Table 31-1 for the error numbers, 26.1.2 for the exits of non-root operation, and
28.2.1 / 28.2.5 for the exit qualification and the VM-exit instruction-information field
of those exits, bit by bit ("Format of the VM-Exit Instruction-Information Field as Used
for VMCLEAR, VMPTRLD, VMPTRST, VMXON" -- Table 28-12 in the numbering of the issue --
"... for VMREAD and VMWRITE" -- Table 28-13 -- and "... for INVEPT, INVPCID, and
INVVPID"). Bits the SDM calls undefined are masked out of the comparison.

Root-mode programs run at ring 0 on tests/vmx_harness.py's machine (paging on, CR0.NE
and CR4.VMXE set, IA32_FEATURE_CONTROL locked with VMX outside SMX enabled unless a test
says otherwise); they report by registers: EDI = EFLAGS after the instruction under
test, EBP = the VM-instruction error field. Not jitted.
"""
import pytest

from hvsim import assemble
from hvsim.arch import layout as L
from hvsim.arch import vmcs as V
from hvsim.arch import vmx as X
from hvsim.arch.cr import CR0_NE, CR0_PG, CR4_VMXE
from hvsim.arch.flags import CF, PF, AF, ZF, SF, OF
from hvsim.arch.vectors import GP, UD, PF as PAGE_FAULT

from vmx_harness import (root_run, vmx_run, HOST_CODE, VMXON_REGION, VMCS_A, VMCS_B,
                         GUEST_CODE)

E = X.VmInstructionError
SHADOW_REVISION_REGION = 0x124000     # revision id with bit 31 (shadow-VMCS indicator) set
NONE_POINTER = 0xFFFFFFFFFFFFFFFF     # VMPTRST with no current VMCS (SDM 31.3 VMPTRST)
STATUS_ALL = CF | PF | AF | ZF | SF | OF

DATA = """
align 8
vmxon_ptr: dd 0x120000, 0
vmcs_a: dd 0x121000, 0
vmcs_b: dd 0x122000, 0
bad_rev: dd 0x123000, 0
shadow_rev: dd 0x124000, 0
misaligned: dd 0x121800, 0
beyond: dd 0x400000, 0
above4g: dd 0x121000, 1
store: dd 0x11111111, 0x22222222
word: dd 0
desc: dd 0, 0, 0, 0
"""
STATUS = "pushfd\npop edi\nmov eax, 0x4400\nvmread ebp, eax\n"


def _shadow_region(m, t, prog):
    m.write_physical(SHADOW_REVISION_REGION,
                     (X.VMCS_REVISION_ID | X.VMCS_SHADOW_INDICATOR).to_bytes(4, "little"))


def run(src, **kw):
    """``src`` + HLT + the data block; the machine and run() event."""
    kw.setdefault("setup", _shadow_region)
    m, ev, prog = root_run(src + "\nhlt\n" + DATA, **kw)
    return m, ev, prog


def qword(m, prog, label):
    return int.from_bytes(m.read_linear(prog.labels[label], 8), "little")


# ---- VMXON (SDM 31.3 "VMXON") ----------------------------------------------------------
def test_vmxon_is_ud_with_cr4_vmxe_clear():
    def setup(m, t, prog):
        m.cpu.cr4 = int(m.cpu.cr4) & ~CR4_VMXE
    m, ev, prog = run("vmxon [vmxon_ptr]", setup=setup)
    assert ev.kind == "exception" and ev.vector == UD and ev.eip == HOST_CODE
    assert m._st[L.VMX_ON] == 0


@pytest.mark.parametrize("insn", ["vmclear [vmcs_a]", "vmptrld [vmcs_a]", "vmptrst [store]",
                                  "vmread eax, ebx", "vmwrite eax, ebx", "vmlaunch",
                                  "vmresume", "vmxoff", "vmcall", "invept eax, [desc]",
                                  "invvpid eax, [desc]"])
def test_every_other_vmx_instruction_is_ud_outside_vmx_operation(insn):
    # each one's Operation: "IF (not in VMX operation) ... THEN #UD" -- CR4.VMXE is set
    m, ev, prog = run(insn)
    assert ev.kind == "exception" and ev.vector == UD and ev.eip == HOST_CODE


def _clear_cr0(bit):
    def setup(m, t, prog):
        m.cpu.cr0 = int(m.cpu.cr0) & ~bit
    return setup


@pytest.mark.parametrize("kw, why", [
    ({"ring": 3}, "CPL > 0"),
    ({"feature_control": None}, "IA32_FEATURE_CONTROL unlocked (0)"),
    ({"feature_control": X.FEATURE_CONTROL_LOCK}, "locked, VMX outside SMX disabled"),
    ({"feature_control": X.FEATURE_CONTROL_VMX_OUTSIDE_SMX}, "enabled but not locked"),
    ({"setup": _clear_cr0(CR0_NE)}, "CR0.NE = 0 (IA32_VMX_CR0_FIXED0 bit 5)"),
    ({"setup": _clear_cr0(CR0_PG)}, "CR0.PG = 0 (IA32_VMX_CR0_FIXED0 bit 31)"),
])
def test_vmxon_gp0(kw, why):
    # SDM 31.3 VMXON: "ELSIF not in VMX operation THEN IF (CPL > 0) or (CR0/CR4 not as
    # FIXED0/FIXED1 allow) or (IA32_FEATURE_CONTROL lock = 0) or (VMX outside SMX = 0)
    # THEN #GP(0)"
    m, ev, prog = root_run("vmxon [vmxon_ptr]\nhlt\n" + DATA, **kw)
    assert (ev.kind, ev.vector, ev.error_code, ev.eip) == ("exception", GP, 0, HOST_CODE), why
    assert m._st[L.VMX_ON] == 0


@pytest.mark.parametrize("operand", ["misaligned", "beyond", "above4g", "bad_rev",
                                     "shadow_rev"])
def test_vmxon_bad_region_is_vmfail_invalid(operand):
    # "IF addr is not 4KB-aligned or addr sets any bits beyond the physical-address width
    # [32 bits: IA32_VMX_BASIC bit 48] THEN VMfailInvalid; ELSIF revision identifier
    # (bits 30:0) is not supported or bit 31 = 1 THEN VMfailInvalid"; hvsim also refuses
    # a region outside its memory. The processor stays outside VMX operation: the next
    # VMX instruction is #UD.
    m, ev, prog = run(f"push 0x8d5\npopfd\nvmxon [{operand}]\npushfd\npop edi\n"
                      "after:\nvmptrst [store]")
    assert m.cpu.edi & STATUS_ALL == CF
    assert ev.kind == "exception" and ev.vector == UD and ev.eip == prog.labels["after"]
    assert m._st[L.VMX_ON] == 0


def test_vmxon_succeeds_with_no_current_vmcs():
    m, ev, prog = run("push 0x8d5\npopfd\nvmxon [vmxon_ptr]\npushfd\npop edi\n"
                      "vmptrst [store]")
    assert ev.kind == "halt"
    assert m.cpu.edi & STATUS_ALL == 0                       # VMsucceed
    assert m._st[L.VMX_ON] == 1 and m._st[L.VMXON_PTR] == VMXON_REGION
    assert qword(m, prog, "store") == NONE_POINTER


def test_vmxon_in_vmx_root_fails_with_15():
    # "ELSIF in VMX root operation THEN VMfail(VMXON executed in VMX root operation)":
    # VMfailValid(15) with a current VMCS, VMfailInvalid without one
    m, ev, prog = run("vmxon [vmxon_ptr]\nvmxon [vmxon_ptr]\n" + STATUS)
    assert m.cpu.edi & STATUS_ALL == CF
    m, ev, prog = run("vmxon [vmxon_ptr]\nvmptrld [vmcs_a]\npush 0x8d5\npopfd\n"
                      "vmxon [vmxon_ptr]\n" + STATUS)
    assert m.cpu.edi & STATUS_ALL == ZF
    assert m.cpu.ebp == E.VMXON_IN_VMX_ROOT == 15


# ---- VMCLEAR, VMPTRLD, VMPTRST ---------------------------------------------------------
@pytest.mark.parametrize("operand, error", [
    ("misaligned", E.VMCLEAR_INVALID_ADDRESS), ("beyond", E.VMCLEAR_INVALID_ADDRESS),
    ("above4g", E.VMCLEAR_INVALID_ADDRESS), ("vmxon_ptr", E.VMCLEAR_VMXON_POINTER)])
def test_vmclear_errors(operand, error):
    # SDM 31.3 VMCLEAR: 2 for an invalid address, 3 for the VMXON pointer; a failed
    # VMCLEAR leaves the current VMCS current
    m, ev, prog = run(f"vmxon [vmxon_ptr]\nvmptrld [vmcs_a]\npush 0x8d5\npopfd\n"
                      f"vmclear [{operand}]\n{STATUS}vmptrst [store]")
    assert m.cpu.edi & STATUS_ALL == ZF and m.cpu.ebp == error
    assert qword(m, prog, "store") == VMCS_A
    # VMfail with no current VMCS is VMfailInvalid
    m, ev, prog = run(f"vmxon [vmxon_ptr]\nvmclear [{operand}]\n{STATUS}")
    assert m.cpu.edi & STATUS_ALL == CF


@pytest.mark.parametrize("operand, error", [
    ("misaligned", E.VMPTRLD_INVALID_ADDRESS), ("beyond", E.VMPTRLD_INVALID_ADDRESS),
    ("above4g", E.VMPTRLD_INVALID_ADDRESS), ("vmxon_ptr", E.VMPTRLD_VMXON_POINTER),
    ("bad_rev", E.VMPTRLD_INCORRECT_REVISION), ("shadow_rev", E.VMPTRLD_INCORRECT_REVISION)])
def test_vmptrld_errors(operand, error):
    # SDM 31.3 VMPTRLD: 9 invalid address, 10 the VMXON pointer, 11 a revision identifier
    # the processor does not use (or bit 31 set without VMCS shadowing)
    m, ev, prog = run(f"vmxon [vmxon_ptr]\nvmptrld [vmcs_a]\npush 0x8d5\npopfd\n"
                      f"vmptrld [{operand}]\n{STATUS}vmptrst [store]")
    assert m.cpu.edi & STATUS_ALL == ZF and m.cpu.ebp == error
    assert qword(m, prog, "store") == VMCS_A
    m, ev, prog = run(f"vmxon [vmxon_ptr]\nvmptrld [{operand}]\n{STATUS}vmptrst [store]")
    assert m.cpu.edi & STATUS_ALL == CF
    assert qword(m, prog, "store") == NONE_POINTER


def test_vmptrst_stores_the_current_pointer_as_64_bits():
    m, ev, prog = run("vmxon [vmxon_ptr]\nvmptrst [store]\nmov esi, [store]\n"
                      "mov ebx, [store+4]\nvmptrld [vmcs_b]\npush 0x8d5\npopfd\n"
                      "vmptrst [store]\npushfd\npop edi")
    assert (m.cpu.esi, m.cpu.ebx) == (0xFFFFFFFF, 0xFFFFFFFF)
    assert qword(m, prog, "store") == VMCS_B                 # high dword written as 0
    assert m.cpu.edi & STATUS_ALL == 0


# ---- VMREAD, VMWRITE -------------------------------------------------------------------
def test_vmread_vmwrite_without_a_current_vmcs_are_vmfail_invalid():
    m, ev, prog = run("vmxon [vmxon_ptr]\nmov ebx, 0x681e\nmov eax, 0xdead\n"
                      "vmread eax, ebx\npushfd\npop edi\nmov esi, eax\n"
                      "vmwrite ebx, ebx\npushfd\npop ebp")
    assert m.cpu.edi & STATUS_ALL == CF and m.cpu.esi == 0xDEAD     # nothing stored
    assert m.cpu.ebp & STATUS_ALL == CF


@pytest.mark.parametrize("encoding, why", [
    (0x1234, "bit 12 set: no field"),
    (0x4003, "high access type of a 32-bit field"),
    (0x0002, "16-bit control index 1 (posted-interrupt vector): not supported"),
    (0x6C18, "host natural-width index 12: not supported"),
    (0x10000, "bits 31:15 not 0"),
    (0x4420, "exit-information index 16: no field, so 12 before 13"),
])
def test_unsupported_components_fail_with_12(encoding, why):
    # SDM 31.3 VMREAD/VMWRITE: "ELSIF source operand does not correspond to any VMCS
    # field THEN VMfailValid(VMREAD/VMWRITE from/to unsupported VMCS component)"
    m, ev, prog = run(f"vmxon [vmxon_ptr]\nvmptrld [vmcs_a]\nmov ebx, {encoding:#x}\n"
                      f"mov eax, 0x5a5a\nvmread eax, ebx\n{STATUS}mov esi, ebp\n"
                      f"vmwrite ebx, ebx\n{STATUS}")
    assert m.cpu.esi == E.UNSUPPORTED_VMCS_COMPONENT, why
    assert m.cpu.edi & STATUS_ALL == ZF and m.cpu.ebp == E.UNSUPPORTED_VMCS_COMPONENT, why


@pytest.mark.parametrize("name", ["VM_EXIT_REASON", "EXIT_QUALIFICATION",
                                  "VM_INSTRUCTION_ERROR", "GUEST_PHYSICAL_ADDRESS"])
def test_vmwrite_to_exit_information_fails_with_13(name):
    # IA32_VMX_MISC bit 29 = 0: "VMWRITE to read-only VMCS component" (13); the field
    # keeps its value (VM_INSTRUCTION_ERROR then holds the 13 itself)
    assert X.VMX_MISC & (1 << 29) == 0
    enc = V.FIELDS[name]
    m, ev, prog = run(f"vmxon [vmxon_ptr]\nvmptrld [vmcs_a]\nmov ebx, {enc:#x}\n"
                      f"mov ecx, 0x77\nvmwrite ebx, ecx\n{STATUS}vmread esi, ebx")
    assert m.cpu.edi & STATUS_ALL == ZF and m.cpu.ebp == E.VMWRITE_READ_ONLY_COMPONENT
    assert m.cpu.esi == (13 if name == "VM_INSTRUCTION_ERROR" else 0)


def test_vmwrite_vmread_round_trips_by_width():
    # 16-bit field: VMWRITE keeps bits 15:0, VMREAD zero-extends; 64-bit field: the full
    # encoding accesses bits 31:0 and the high one (encoding | 1) bits 63:32, each write
    # keeping the other half; natural width is 32 bits on IA-32 (SDM 31.3, 25.11.2)
    m, ev, prog = run("""
        vmxon [vmxon_ptr]
        vmptrld [vmcs_a]
        mov ebx, 0x0800             ; GUEST_ES_SELECTOR
        mov ecx, 0x12345678
        vmwrite ebx, ecx
        vmread [word], ebx          ; memory destination
        mov ebx, 0x2000             ; IO_BITMAP_A (full)
        mov ecx, 0x11112222
        vmwrite ebx, ecx
        mov ebx, 0x2001             ; IO_BITMAP_A (high)
        mov ecx, 0x33334444
        vmwrite ebx, ecx
        mov ebx, 0x2000
        mov ecx, 0x55556666
        vmwrite ebx, ecx
        vmread esi, ebx
        mov ebx, 0x2001
        vmread edi, ebx
        mov ebx, 0x681e             ; GUEST_RIP
        mov dword [desc], 0xfffffffe
        vmwrite ebx, [desc]         ; memory source
        vmread ebp, ebx
    """)
    assert int.from_bytes(m.read_linear(prog.labels["word"], 4), "little") == 0x5678
    assert m.cpu.esi == 0x55556666 and m.cpu.edi == 0x33334444
    assert m.cpu.ebp == 0xFFFFFFFE
    assert m._st[L.VMCS_CACHE + V.slot("IO_BITMAP_A")] == 0x3333444455556666


def test_vmsucceed_and_vmfail_valid_flag_conventions():
    # SDM 31.2: VMsucceed clears CF PF AF ZF SF OF; VMfailValid sets ZF and clears the
    # other five; neither touches the rest of EFLAGS (here DF, set by STD, survives)
    m, ev, prog = run("vmxon [vmxon_ptr]\nvmptrld [vmcs_a]\nstd\npush 0xcd5\npopfd\n"
                      "mov ebx, 0x681e\nvmwrite ebx, ebx\npushfd\npop esi\n"
                      "push 0xcd5\npopfd\nmov ebx, 0x1234\nvmread eax, ebx\npushfd\npop edi")
    assert m.cpu.esi & (STATUS_ALL | 0x400) == 0x400
    assert m.cpu.edi & (STATUS_ALL | 0x400) == ZF | 0x400


# ---- VMCALL, VMXOFF, INVEPT, INVVPID ---------------------------------------------------
def test_vmcall_in_vmx_root_fails_with_1():
    m, ev, prog = run("vmxon [vmxon_ptr]\nvmptrld [vmcs_a]\nvmcall\n" + STATUS)
    assert m.cpu.edi & STATUS_ALL == ZF and m.cpu.ebp == E.VMCALL_IN_VMX_ROOT == 1
    m, ev, prog = run("vmxon [vmxon_ptr]\nvmcall\n" + STATUS)
    assert m.cpu.edi & STATUS_ALL == CF


def test_vmxoff_leaves_vmx_operation():
    # SDM 31.3 VMXOFF: leave VMX operation, VMsucceed; afterwards every VMX instruction is
    # #UD, CR4.VMXE may be cleared again (in VMX operation that is #GP(0), 24.8), and a
    # VMXON enters VMX operation anew
    m, ev, prog = run("vmxon [vmxon_ptr]\nvmptrld [vmcs_a]\npush 0x8d5\npopfd\nvmxoff\n"
                      "pushfd\npop edi\nafter:\nvmptrst [store]")
    assert m.cpu.edi & STATUS_ALL == 0
    assert ev.kind == "exception" and ev.vector == UD and ev.eip == prog.labels["after"]
    assert m._st[L.VMX_ON] == 0
    m, ev, prog = run("vmxon [vmxon_ptr]\nmov eax, cr4\nand eax, 0xffffdfff\nat:\n"
                      "mov cr4, eax")
    assert (ev.kind, ev.vector, ev.error_code, ev.eip) == ("exception", GP, 0,
                                                           prog.labels["at"])
    m, ev, prog = run("vmxon [vmxon_ptr]\nvmxoff\nvmxon [vmxon_ptr]\npushfd\npop edi\n"
                      "vmxoff\nmov eax, cr4\nand eax, 0xffffdfff\nmov cr4, eax")
    assert ev.kind == "halt" and m.cpu.edi & STATUS_ALL == 0
    assert int(m.cpu.cr4) & CR4_VMXE == 0


@pytest.mark.parametrize("kind, ok", [(0, False), (1, True), (2, True), (3, False),
                                      (0x80000001, False)])
def test_invept_types(kind, ok):
    # SDM 31.3 INVEPT: types 1 (single-context) and 2 (all-context) are supported
    # (IA32_VMX_EPT_VPID_CAP bits 25, 26); any other: VMfailValid(28)
    assert X.VMX_EPT_VPID_CAP & (1 << 25) and X.VMX_EPT_VPID_CAP & (1 << 26)
    m, ev, prog = run(f"vmxon [vmxon_ptr]\nvmptrld [vmcs_a]\nmov ecx, {kind:#x}\n"
                      f"push 0x8d5\npopfd\ninvept ecx, [desc]\n{STATUS}")
    if ok:
        assert m.cpu.edi & STATUS_ALL == 0
    else:
        assert m.cpu.edi & STATUS_ALL == ZF
        assert m.cpu.ebp == E.INVALID_INVEPT_INVVPID_OPERAND == 28
    if not ok:      # no current VMCS: VMfailInvalid
        m, ev, prog = run(f"vmxon [vmxon_ptr]\nmov ecx, {kind:#x}\ninvept ecx, [desc]\n"
                          + STATUS)
        assert m.cpu.edi & STATUS_ALL == CF


# INVVPID descriptors (SDM 31.3 INVVPID): VPID in bits 15:0, 63:16 reserved, 127:64 the
# linear address; (type, descriptor dwords, VMsucceed?)
INVVPID_CASES = [
    (0, (5, 0, 0x7000, 0), True),             # individual address
    (1, (5, 0, 0, 0), True),                  # single context
    (2, (0, 0, 0, 0), True),                  # all contexts: the VPID is not looked at
    (3, (5, 0, 0, 0), True),                  # single context retaining globals
    (4, (5, 0, 0, 0), False),                 # no such type
    (0x80000001, (5, 0, 0, 0), False),
    (1, (0, 0, 0, 0), False),                 # VPID 0000H for types 0, 1, 3
    (0, (0, 0, 0x7000, 0), False),
    (3, (0, 0, 0, 0), False),
    (1, (5 | 0x10000, 0, 0, 0), False),       # reserved bits 63:16
    (1, (5, 1, 0, 0), False),
    (0, (5, 0, 0x7000, 1), False),            # not a 32-bit linear address
]


@pytest.mark.parametrize("kind, desc, ok", INVVPID_CASES)
def test_invvpid_types_and_descriptors(kind, desc, ok):
    # every INVVPID type is supported (IA32_VMX_EPT_VPID_CAP bits 32, 40-43); a bad type
    # or descriptor is VMfailValid(28), or VMfailInvalid with no current VMCS
    assert all(X.VMX_EPT_VPID_CAP >> b & 1 for b in (32, 40, 41, 42, 43))
    words = "\n".join(f"mov dword [desc + {4 * i}], {w:#x}" for i, w in enumerate(desc))
    m, ev, prog = run(f"vmxon [vmxon_ptr]\nvmptrld [vmcs_a]\n{words}\nmov ecx, {kind:#x}\n"
                      f"push 0x8d5\npopfd\ninvvpid ecx, [desc]\n{STATUS}")
    assert ev.kind == "halt"
    if ok:
        assert m.cpu.edi & STATUS_ALL == 0
    else:
        assert m.cpu.edi & STATUS_ALL == ZF
        assert m.cpu.ebp == E.INVALID_INVEPT_INVVPID_OPERAND == 28
        m, ev, prog = run(f"vmxon [vmxon_ptr]\n{words}\nmov ecx, {kind:#x}\n"
                          f"invvpid ecx, [desc]\n{STATUS}")
        assert m.cpu.edi & STATUS_ALL == CF


def test_invvpid_checks_the_type_before_it_reads_the_descriptor():
    # SDM 31.3 INVVPID, Operation: "IF ... processor does not support INVVPID_TYPE THEN
    # VMfail(...) ELSE INVVPID_DESC <- value of memory operand": an unsupported type
    # fails even with a descriptor no page maps; a supported one faults on it (#PF: the
    # harness maps 4 MiB)
    m, ev, prog = run("vmxon [vmxon_ptr]\nvmptrld [vmcs_a]\nmov ecx, 7\n"
                      "mov ebx, 0xfffffff8\ninvvpid ecx, [ebx]\n" + STATUS)
    assert ev.kind == "halt" and m.cpu.ebp == 28
    m, ev, prog = run("vmxon [vmxon_ptr]\nvmptrld [vmcs_a]\nmov ecx, 1\n"
                      "mov ebx, 0xfffffff8\nat:\ninvvpid ecx, [ebx]\n" + STATUS)
    assert ev.kind == "exception" and ev.vector == PAGE_FAULT and ev.eip == prog.labels["at"]


def test_vmx_instructions_at_cpl_3_in_root_are_gp0():
    # VMXON, then IRETD to ring 3 (install's GDT: code 0x3B, data 0x43); VMLAUNCH there:
    # "ELSIF CPL > 0 THEN #GP(0)" (SDM 31.3), before any VMCS is looked at
    m, ev, prog = run("vmxon [vmxon_ptr]\nvmptrld [vmcs_a]\npush 0x43\npush 0x8000\n"
                      "pushfd\npush 0x3b\npush ring3\niretd\nring3:\nvmlaunch")
    assert (ev.kind, ev.vector, ev.error_code, ev.cpl) == ("exception", GP, 0, 3)
    assert ev.eip == prog.labels["ring3"]
    assert m.counters["vm_entries"] == 0 and m._st[L.VMX_ENTRY_CHECK] == 0


# ---- in VMX non-root operation every VMX instruction exits (SDM 26.1.2) -----------------
SEG = {"es": 0, "cs": 1, "ss": 2, "ds": 3, "fs": 4, "gs": 5}
REG = {"eax": 0, "ecx": 1, "edx": 2, "ebx": 3, "esp": 4, "ebp": 5, "esi": 6, "edi": 7}


def _bits(spec):
    """(mask, value) of the defined bits of an instruction-information field, from
    (high bit, low bit, value) triples."""
    mask = value = 0
    for hi, lo, v in spec:
        width = (1 << (hi - lo + 1)) - 1
        assert v & ~width == 0
        mask |= width << lo
        value |= v << lo
    return mask, value


def _memory(seg, base=None, index=None, scale=0):
    """The memory-operand bits every one of these formats shares: 1:0 scaling (defined
    only with an index), 9:7 address size (1: 32-bit), 17:15 segment, 21:18 index,
    22 index invalid, 26:23 base, 27 base invalid."""
    spec = [(9, 7, 1), (17, 15, SEG[seg]), (22, 22, int(index is None)),
            (27, 27, int(base is None))]
    if index is not None:
        spec += [(1, 0, scale), (21, 18, REG[index])]
    if base is not None:
        spec.append((26, 23, REG[base]))
    return spec


# (guest instruction, exit reason, exit qualification, instruction-information spec or None)
NONROOT = [
    # VMCLEAR/VMPTRLD/VMPTRST/VMXON (Table 28-12): bit 10 cleared to 0; qualification =
    # the displacement (28.2.1), sign-extended
    ("vmclear [ebx+esi*4+0x10]", X.ExitReason.VMCLEAR, 0x10,
     _memory("ds", base="ebx", index="esi", scale=2) + [(10, 10, 0)]),
    ("vmptrld [esp+8]", X.ExitReason.VMPTRLD, 8, _memory("ss", base="esp") + [(10, 10, 0)]),
    ("vmptrst [0x1000]", X.ExitReason.VMPTRST, 0x1000, _memory("ds") + [(10, 10, 0)]),
    ("vmxon [gs:ebp-4]", X.ExitReason.VMXON, 0xFFFFFFFC,
     _memory("gs", base="ebp") + [(10, 10, 0)]),
    ("vmclear [es:ecx*8]", X.ExitReason.VMCLEAR, 0,
     _memory("es", index="ecx", scale=3) + [(10, 10, 0)]),
    # VMREAD/VMWRITE (Table 28-13): 10 = 1 for a register operand, Reg1 in 6:3 (the r/m
    # register), Reg2 in 31:28 (the register holding the field encoding); no
    # displacement: qualification 0
    ("vmread [edi+ecx*8], edx", X.ExitReason.VMREAD, 0,
     _memory("ds", base="edi", index="ecx", scale=3) + [(10, 10, 0), (31, 28, REG["edx"])]),
    ("vmread eax, ebx", X.ExitReason.VMREAD, 0,
     [(6, 3, REG["eax"]), (10, 10, 1), (31, 28, REG["ebx"])]),
    ("vmwrite esi, [ebp+0x20]", X.ExitReason.VMWRITE, 0x20,
     _memory("ss", base="ebp") + [(10, 10, 0), (31, 28, REG["esi"])]),
    ("vmwrite ecx, edx", X.ExitReason.VMWRITE, 0,
     [(6, 3, REG["edx"]), (10, 10, 1), (31, 28, REG["ecx"])]),
    # INVEPT (Format ... for INVEPT, INVPCID, and INVVPID): 10 cleared, Reg2 = the type
    ("invept eax, [ebx+0x40]", X.ExitReason.INVEPT, 0x40,
     _memory("ds", base="ebx") + [(10, 10, 0), (31, 28, REG["eax"])]),
    ("invvpid ecx, [esi+0x10]", X.ExitReason.INVVPID, 0x10,
     _memory("ds", base="esi") + [(10, 10, 0), (31, 28, REG["ecx"])]),
    # no operand: qualification 0 (the instruction-information field is undefined)
    ("vmlaunch", X.ExitReason.VMLAUNCH, 0, None),
    ("vmresume", X.ExitReason.VMRESUME, 0, None),
    ("vmxoff", X.ExitReason.VMXOFF, 0, None),
    ("vmcall", X.ExitReason.VMCALL, 0, None),
]


@pytest.mark.parametrize("insn, reason, qual, spec", NONROOT,
                         ids=[n[0].split()[0] + str(i) for i, n in enumerate(NONROOT)])
@pytest.mark.parametrize("ring", [0, 3])
def test_vmx_instructions_exit_in_non_root_operation(insn, reason, qual, spec, ring):
    # the exit comes before the CPL check (each instruction's Operation: "ELSIF in VMX
    # non-root operation THEN VM exit; ELSIF CPL > 0 THEN #GP(0)"), so ring 3 exits too
    # (#GP is in the exception bitmap: a #GP would be exit reason 0 instead)
    r = vmx_run(insn + "\nhlt\n", {"EXCEPTION_BITMAP": 1 << GP}, guest_ring=ring)
    assert r.exited and r.reason == reason
    assert r.qualification == qual
    assert r.length == len(assemble(insn).code)             # 28.2.4
    assert r.vmcs("GUEST_RIP") == GUEST_CODE                 # fault-like (26.1)
    # the instruction did not execute: as many VMX instructions ran as with a guest
    # that only exits by CPUID (the VMM's own)
    base = vmx_run("cpuid\n", {"EXCEPTION_BITMAP": 1 << GP}, guest_ring=ring)
    assert r.m.counters["vmx_instructions"] == base.m.counters["vmx_instructions"]
    if spec is not None:
        mask, value = _bits(spec)
        info = r.vmcs("VMX_INSTRUCTION_INFO")
        assert info & mask == value, f"{info:#010x} & {mask:#010x} != {value:#010x}"


# ---- the VMCS outlives VMCLEAR and VMPTRLD of another one (SDM 25.1, 25.11) --------------
SCRATCH_DATA = """
align 8
a_ptr: dd 0x121000, 0
b_ptr: dd 0x122000, 0
out: times 8 dd 0
"""


def test_vmptrld_of_another_vmcs_and_back_keeps_fields_and_launch_state():
    r = vmx_run("cpuid\nvmcall\n")
    assert r.reason == X.ExitReason.CPUID
    r.root("""
        vmptrld [b_ptr]
        mov eax, 0x681e
        mov ebx, 0x12345678
        vmwrite eax, ebx         ; B's GUEST_RIP
        vmptrld [a_ptr]
        mov eax, 0x681e
        vmread [out], eax        ; A's GUEST_RIP, as the exit saved it
        mov eax, 0x6c16
        vmread [out+4], eax      ; A's HOST_RIP, as the VMM wrote it
        vmlaunch                 ; A is still launched: VMfailValid(4)
        mov eax, 0x4400
        vmread [out+8], eax
        hlt
    """ + SCRATCH_DATA)
    words = r.words("out", 3)
    assert words == [GUEST_CODE, r.hv.labels["host_rip"], E.VMLAUNCH_NONCLEAR_VMCS]
    # B was written back into its region when A became current again (hvsim's region
    # layout, hvsim/arch/vmcs.py: 4 bytes per slot at 16 + 4 * slot)
    rip_at = VMCS_B + V.region_offset(V.slot("GUEST_RIP"))
    assert int.from_bytes(r.m.read_linear(rip_at, 4), "little") == 0x12345678
    r.resume()                                  # launched: VMRESUME enters; VMCALL exits
    assert r.exited and r.reason == X.ExitReason.VMCALL
    assert r.vmcs("GUEST_RIP") == GUEST_CODE + 2


def test_vmclear_and_vmptrld_back_keeps_fields_with_launch_state_clear():
    # VMCLEAR writes the VMCS to its region and makes it clear and not current; after
    # VMPTRLD of B and of A again, A's fields are back, VMRESUME is refused (5) and
    # VMLAUNCH enters at the saved GUEST_RIP (the CPUID again)
    r = vmx_run("mov edi, 0x5a5a5a5a\ncpuid\n")
    assert r.reason == X.ExitReason.CPUID
    r.root("""
        vmclear [a_ptr]
        vmptrst [out]            ; no current VMCS now
        mov eax, 0x681e
        vmread ebx, eax          ; VMfailInvalid
        pushfd
        pop dword [out+8]
        vmptrld [b_ptr]
        vmptrld [a_ptr]
        mov eax, 0x681e
        vmread [out+12], eax
        vmresume
        mov eax, 0x4400
        vmread [out+16], eax
        mov edi, 0
        vmlaunch
        hlt
    """ + SCRATCH_DATA)
    words = r.words("out", 5)
    assert words[:2] == [0xFFFFFFFF, 0xFFFFFFFF]
    assert words[2] & STATUS_ALL == CF
    assert words[3] == GUEST_CODE + 5                    # the CPUID's RIP, kept
    assert words[4] == E.VMRESUME_NONLAUNCHED_VMCS
    assert r.exited and r.reason == X.ExitReason.CPUID
    assert r.m.counters["vm_entries"] == 2
    assert r.vmcs("GUEST_RIP") == GUEST_CODE + 5
    assert r.exit_gprs()["edi"] == 0                    # the entry went straight to CPUID
    assert r.m._st[L.VMCS_LAUNCH_STATE] == V.LAUNCH_LAUNCHED
