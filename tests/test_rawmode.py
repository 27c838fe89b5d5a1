"""VirtualBox's raw mode as a monitor (hvsim/bt/rawmode.py): scanned, patched, in place.

Oracles: the real CPU (each small kernel also runs natively at ring 0, its code selector
substituted, and the guest-visible results must agree; single instructions from random
states through test_bt_translator's harness); counts known by construction (a small
kernel whose every patch site, jump patch and refusal reason is designed in); the
teaching kernel's own counters against trap-and-emulate's freeze.
"""
import random

import pytest

from hvsim import assemble
from hvsim import pvworkloads as P
from hvsim import workloads as W
from hvsim.bt.monitor import TC_BASE
from hvsim.bt.rawmode import INT3, SIZEOF_NEARJUMP32, RawMode, RawSnapshot
from hvsim.guests import teaching_kernel
from hvsim.monitors import TrapAndEmulate

from test_bt_monitor import GP_NAME, IDT_LIB, KCODE_BT, build, dword, native, paging_on, regs
from test_bt_translator import (ARITH, DATA, IF, IOPL, REGS, STACK, SUBSET, _load, _native,
                                _small_counts, _state)


def raw_run(src, steps=100_000, **kw):
    prog = build(src, KCODE_BT)
    rm = RawMode(program=prog, **kw)
    ev = rm.run(steps)
    return rm, ev, prog


# ---- the teaching kernel ----------------------------------------------------------------
def test_teaching_kernel_ticks_where_trap_and_emulate_freezes():
    prog = teaching_kernel()
    lab = prog.labels
    rm = RawMode(program=prog)
    tae = TrapAndEmulate(program=prog)
    assert rm.run(200_000).kind == "budget" and tae.run(200_000).kind == "budget"
    ticks, calls = dword(rm, lab["ticks"]), dword(rm, lab["calls"])
    assert dword(tae, lab["ticks"]) == 4                  # frozen at the first POPF
    assert ticks > 300 and calls > 100                    # raw mode: the clock runs
    assert ticks == rm.ticks_delivered
    assert rm.vcpu.IF == 1 and rm.console == tae.console == "kernel up\nhello from ring 3\n"
    from hvsim.lessons import l02_hole as l02
    nat = l02.run_native(200_000)
    n_ticks, n_calls = l02.guest_dword(nat, "ticks"), l02.guest_dword(nat, "calls")
    assert abs(ticks / calls - n_ticks / n_calls) < 0.25 * n_ticks / n_calls
    assert nat.console == rm.console
    c = rm.counters
    # the critical section's POPF never reached the hardware: it was patched (an in-place
    # jump to the in-patch sequence, or an INT3 the monitor emulates)
    assert c["jump_patches"] >= 1 and c["int3_replacements"] >= 1
    assert c["int3_emulated"] > 100 and c["scanned"] > 50


# ---- the scanner's finds on a kernel known by construction --------------------------------
SMALL = """
start:
    mov esp, 0x9000
    cli                     ; A: a jump patch that displaces the 5-byte MOV
    mov eax, 1
    sgdt [gdtr_copy]        ; B: 7 bytes: a jump patch, nothing displaced
    pushfd                  ; C: a JMP follows: refused, control flow
    jmp over
    nop
over:
    popfd                   ; D: 'inner' lies inside its would-be displaced bytes
    inc ebx
inner:
    inc ebx
    inc ebx
    inc ebx
    cmp ebx, 4
    jb inner
    mov ecx, 0x12345678
    mov edx, cr0            ; traps at ring 1: left in place, ends the boot scan
    mov esi, target
    call esi                ; E: indirect; the STI after it is sensitive: refused
    sti                     ; F: a JMP follows: refused, control flow
    jmp near_end
target:
    add edi, 7
    ret
gdtr_copy:
    dd 0, 0
    org 0x1FFD
near_end:
    sti                     ; G: 5 bytes from 0x1FFD would cross the page: refused
    mov eax, 2
    hlt
"""


def test_scanner_and_patch_manager_on_a_kernel_known_by_construction():
    prog = build(SMALL, KCODE_BT)
    lab = prog.labels
    rm = RawMode(program=prog)
    # the boot scan: 0x1000 .. 'mov edx, cr0' (15 instructions), A and B jump patches,
    # C and D INT3 replacements; E, F, G are beyond the trapping MOV: not yet scanned
    assert rm.counters["scanned"] == 15 and rm.counters["scans"] == 1
    got = {p["site"]: (p["how"], p["kind"], p["reason"]) for p in rm.patches()}
    a, b, c, d = 0x1005, 0x100B, 0x1012, lab["over"]
    assert got == {a: ("jump", "inline", None), b: ("jump", "simulate", None),
                   c: ("int3", "inline", "control flow"), d: ("int3", "inline", "branch target")}
    la = rm.listing(a)
    assert la["original"] == ["cli", "mov eax, 1"]
    assert la["written"][0] == 0xE9 and la["original_bytes"] == bytes([0xFA, 0xB8, 1, 0, 0, 0])
    codes = [t for _, t in la["patch_code"]]
    assert codes == ["mov dword ptr gs:[0], 0", "mov eax, 1", "jmp 0x100b"]
    assert la["patch_code"][0][0] >= TC_BASE
    assert rm.listing(c)["written"] == bytes([INT3]) and rm.listing(b)["original"] == ["sgdt [0x1039]"]
    # the guest sees the patched bytes; the monitor's accessor the original ones
    assert bytes(rm.machine.memory[a:a + 1]) == b"\xe9"
    assert rm.original_bytes(a, 6) == bytes([0xFA, 0xB8, 1, 0, 0, 0])
    ev = rm.run(10_000)
    assert ev.kind == "halt"
    nat, nev, _ = native(SMALL)
    assert nev.kind == "halt" and regs(rm) == regs(nat)
    assert (rm.machine.cpu.eax, rm.machine.cpu.ebx, rm.machine.cpu.edi) == (2, 4, 7)
    assert rm.vcpu.IF == 1 and nat.machine.cpu.eflags & IF
    got = {p["site"]: (p["how"], p["reason"]) for p in rm.patches()}
    assert got[0x102D] == ("int3", "sensitive")                    # E: 'call esi'
    assert got[0x102F] == ("int3", "control flow")                  # F
    assert got[lab["near_end"]] == ("int3", "page")                 # G
    c = rm.counters
    assert (c["jump_patches"], c["int3_replacements"]) == (2, 5)
    assert (c["refused control flow"], c["refused branch target"], c["refused sensitive"],
            c["refused page"]) == (2, 1, 1, 1)
    # scans: boot, after the emulated MOV CR0, the indirect call's target
    assert c["scans"] == 3 and c["scanned"] == 24
    # every INT3 site ran once and was emulated; the two jump patches ran: one in-patch
    # CLI, one SGDT callout
    assert c["int3_emulated"] == 5 and rm.callouts["sgdt"] == 1 and c["in-TC CLI"] == 1
    assert rm.emulated["sgdt"] == 1 and "trap #GP (general protection)" in c


def test_a_branch_target_found_later_turns_a_jump_patch_into_int3():
    src = """
start:
    cli                     ; a jump patch at boot: 'late' is no known target yet
    nop
late:
    nop
    nop
    nop
    mov eax, cr0            ; traps: ends the boot scan
    inc ebx
    cmp ebx, 2
    jb late                 ; found by the second scan: a target inside the patch
    hlt
"""
    rm, ev, prog = raw_run(src, 10_000)
    nat, nev, _ = native(src)
    assert ev.kind == nev.kind == "halt" and regs(rm) == regs(nat)
    site = prog.labels["late"] - 2
    p = rm.listing(site)
    assert (p["how"], p["reason"]) == ("int3", "branch target")
    assert rm.counters["converted"] == 1
    assert (rm.counters["jump_patches"], rm.counters["int3_replacements"]) == (1, 1)


# ---- patched code against the real CPU, instruction by instruction ------------------------
def _raw(prog, state):
    regs_, flags, data, stack, vif, viopl = state
    rm = RawMode(program=prog)
    m = rm.machine
    _load(m, m.cpu, regs_, flags, data, stack, IF)
    rm.vcpu.IF, rm.vcpu.iopl = vif, viopl
    ev = rm.run(1000)
    assert ev.kind == "halt", (ev, rm.log[-3:])
    return rm, (IF if rm.vcpu.IF else 0) | (rm.vcpu.iopl << 12)


def _compare(text, seed, insn):
    state = _state(seed)
    state = (_small_counts(insn, dict(state[0])),) + state[1:]
    if "popfd" in text:
        stack = bytearray(state[3])
        image = (int.from_bytes(stack[16:20], "little") & (ARITH | IF | IOPL)) | 2
        stack[16:20] = image.to_bytes(4, "little")
        state = state[:3] + (bytes(stack),) + state[4:]
    prog = assemble(f"start:\n{text}\n    hlt\n", origin=0x1000)
    nat, nat_if = _native(prog, state)
    rm, rm_if = _raw(prog, state)
    a, b = nat.cpu, rm.machine.cpu
    where = f"{text!r} seed {seed}"
    for r in REGS + ("esp",):
        assert getattr(a, r) == getattr(b, r), f"{where}: {r}"
    assert a.eflags & ARITH == b.eflags & ARITH, f"{where}: flags"
    assert bytes(nat.memory[DATA:DATA + 0x200]) == bytes(rm.machine.memory[DATA:DATA + 0x200]), where
    assert bytes(nat.memory[STACK - 64:STACK]) == bytes(rm.machine.memory[STACK - 64:STACK]), where
    assert nat_if == rm_if, f"{where}: IF/IOPL"
    return rm


@pytest.mark.parametrize("insn", ["cli", "sti", "pushfd", "popfd"])
def test_jump_patched_sensitive_instructions_keep_the_virtual_if_semantics(insn):
    text = f"    {insn}\n    nop\n    nop\n    nop\n    nop"
    for seed in range(12):
        rm = _compare(text, seed, insn)
    p = rm.listing(0x1000)
    assert p["how"] == "jump" and p["original"] == [insn, "nop", "nop", "nop", "nop"]


@pytest.mark.parametrize("insn", ["cli", "sti", "pushfd", "popfd"])
def test_int3_replaced_sensitive_instructions_keep_the_virtual_if_semantics(insn):
    for seed in range(12):
        rm = _compare(f"    {insn}", seed, insn)          # HLT follows: refused, sensitive
    assert rm.listing(0x1000)["how"] == "int3" and rm.counters["int3_emulated"] == 1


def test_displaced_instructions_run_from_patch_code_as_the_original():
    # each instruction of the translator's subset displaced by a CLI's jump patch
    rng = random.Random(16)
    for insn in SUBSET:
        text = f"    cli\n    {insn}\n    nop\n    nop\n    nop\n    nop"
        seed = rng.randrange(1000)
        rm = _compare(text, seed, insn)
        p = rm.listing(0x1000)
        assert p["how"] == "jump" and p["original"][:2] == ["cli", rm._insn[0x1001].text], insn


# ---- faults in patch code ---------------------------------------------------------------------
FAULTS = """
start:
    lidt [idtr]
    mov eax, 14
    mov ebx, pf
    call set_gate
""" + paging_on(unmapped=(0x50,)) + """    mov esi, 0x50010
    cli
touch:
    mov dword [esi], 5          ; displaced by the CLI's jump patch: faults in patch code
    hlt
pf:
    pop eax
    mov [0x40004], eax          ; error code
    mov eax, cr2
    mov [0x40008], eax
    mov eax, [esp]
    mov [0x4000c], eax          ; EIP
    mov dword [0x21000 + 0x50*4], 0x50003
    iretd
""" + IDT_LIB


def test_a_fault_inside_patch_code_is_reported_at_the_guest_eip():
    nat, nev, prog = native(FAULTS)
    rm, ev, _ = raw_run(FAULTS)
    assert nev.kind == ev.kind == "halt", (ev, rm.log[-3:])
    lab = prog.labels
    got = [dword(rm, 0x40004 + 4 * i) for i in range(3)]
    assert got == [dword(nat, 0x40004 + 4 * i) for i in range(3)]
    assert got == [0x2, 0x50010, lab["touch"]]           # the displaced MOV's guest EIP
    assert dword(rm, 0x50010) == 5 and rm.reflected["#PF (page fault)"] == 1
    p = rm.listing(lab["touch"] - 1)
    assert p["how"] == "jump" and p["original"] == ["cli", "mov dword ptr [esi], 5"]


# ---- self-modifying code ----------------------------------------------------------------------
SMC = """
start:
    mov ecx, 2
    xor ebx, ebx
again:
site:
    cli                         ; jump-patched (displaces the MOV)
    mov eax, 5
    add ebx, eax
    mov byte [site], 0x90       ; CLI -> NOP: a write onto the patched bytes
    mov [data], ecx             ; data beside code: just completes
    dec ecx
    jnz again
    hlt
data:
    dd 0
"""


def test_smc_on_a_patched_page_restores_and_rescans():
    nat, nev, prog = native(SMC)
    rm, ev, _ = raw_run(SMC, 10_000)
    lab = prog.labels
    assert ev.kind == nev.kind == "halt" and regs(rm) == regs(nat)
    assert rm.machine.cpu.ebx == 10 and dword(rm, lab["data"]) == 1
    c = rm.counters
    # the first store hit the jump patch: the page unpatched (once), rescanned; the
    # second is onto a scanned NOP, same byte, same value -- a scanned instruction
    # rewritten again; the two data stores touch no instruction
    assert c["smc_unpatches"] == 2 and c["rescans"] >= 1
    assert lab["site"] not in {p["site"] for p in rm.patches()}
    # the original bytes are back, the guest's own byte kept: NOP then MOV EAX, 5
    assert bytes(rm.machine.memory[lab["site"]:lab["site"] + 6]) == bytes([0x90, 0xB8, 5, 0, 0, 0])
    assert rm._insn[lab["site"]].text == "nop"
    assert rm.vcpu.IF == 0                  # the first CLI ran (patched), the NOPs did not undo it


def test_the_guest_cannot_read_or_jump_into_patch_memory():
    reader = f"""
start:
    lidt [idtr]
    mov eax, 13
    mov ebx, gp
    call set_gate
    cli
    nop
    nop
    nop
    nop
    mov eax, [{TC_BASE:#x}]
    hlt
gp:
    pop eax
    mov [0x40000], eax
    mov eax, [esp]
    mov [0x40004], eax
    hlt
""" + IDT_LIB
    rm, ev, prog = raw_run(reader)
    assert ev.kind == "halt" and rm.counters["jump_patches"] >= 1   # patch memory in use
    assert dword(rm, 0x40000) == 0                      # #GP(0): beyond DS's limit
    assert dword(rm, 0x40004) == prog.labels["gp"] - 6 and rm.reflected[GP_NAME] == 1
    jumper = f"start:\n    mov eax, {TC_BASE:#x}\n    jmp eax\n"
    rm, ev, _ = raw_run(jumper)
    assert ev.kind == "killed" and "monitor's region" in ev.reason
    direct = f"start:\n    jmp {TC_BASE:#x}\n"
    rm, ev, _ = raw_run(direct)
    assert ev.kind == "killed" and "monitor's region" in ev.reason


# ---- workloads, snapshots, errors ---------------------------------------------------------------
@pytest.mark.parametrize("workload", ["mixed", "fork", "demand"])
def test_mm_workloads_identical_to_native(workload):
    nat = W.run(workload, "native")
    rm = W.run(workload, "rawmode")
    assert W.differences(nat, rm) == [] and nat == rm
    c = rm.monitor.counters
    assert c["scanned"] > 0 and c["jump_patches"] + c["int3_replacements"] > 0


def test_minios_identical_to_native():
    nat = P.run("all", "native")
    rm = P.run("all", "rawmode")
    assert W.differences(nat, rm) == [] and nat == rm
    assert rm.monitor.counters["int3_emulated"] > 0


def test_snapshot_restore_round_trip():
    rm = RawMode(program=teaching_kernel())
    rm.run(20_000)
    snap = rm.snapshot()
    assert isinstance(snap, RawSnapshot)
    rm.run(20_000)
    first = (bytes(rm.machine.memory), regs(rm), rm.machine.cpu.eip, dict(rm.counters))
    rm.restore(snap)
    rm.run(20_000)
    assert (bytes(rm.machine.memory), regs(rm), rm.machine.cpu.eip, dict(rm.counters)) == first


def test_bad_arguments_get_clear_errors():
    with pytest.raises(ValueError, match="patch_pages"):
        RawMode(patch_pages=0)
    with pytest.raises(ValueError, match="patch_pages"):
        RawMode(patch_pages=True)
    rm = RawMode(program=teaching_kernel())
    with pytest.raises(TypeError, match="RawSnapshot"):
        rm.restore(rm.machine.snapshot())
    with pytest.raises(KeyError, match="no patch"):
        rm.listing(0x12345)
    with pytest.raises(ValueError, match="max_steps"):
        rm.run(0)
    with pytest.raises(ValueError, match="cannot read"):
        rm.original_bytes(0x7FFF0000, 4)
    with pytest.raises(ValueError, match="n must be"):
        rm.original_bytes(0x1000, -1)
    assert SIZEOF_NEARJUMP32 == 5


# ---- costs, interrupts at patch boundaries --------------------------------------------------
def test_scans_are_charged_int3_replacements_are_traps():
    from hvsim.cost import breakdown
    from hvsim.cost.usage import usage_of
    rm, ev, _ = raw_run(SMALL, 10_000)
    assert ev.kind == "halt"
    u = usage_of(rm)
    # 24 instructions scanned; one callout (SGDT's jump patch); traps: 5 #BP of the INT3
    # replacements, MOV from CR0 and HLT (#GP at ring 1)
    assert (u["scan"], u["callout"], u["translation"]) == (24, 1, 0)
    assert u["trap"] == 7 and rm.traps["#BP (breakpoint)"] == 5 and rm.stats["scanned"] == 24
    b = breakdown(rm, "prescott")
    assert b.categories["monitor work"] == 24 * 1150 + u["emulated"] * 216


def _raw_tick(body):
    from test_bt_monitor import TICK_HANDLER, TICK_LIB
    src = TICK_LIB + body + TICK_HANDLER
    nat, nev, prog = native(src)
    rm, ev, _ = raw_run(src)
    assert nev.kind == ev.kind == "halt", (ev, rm.log[-4:])
    return ([dword(nat, 0x40000), dword(nat, 0x40004)],
            [dword(rm, 0x40000), dword(rm, 0x40004)], prog, rm)


def test_sti_in_patch_code_with_a_pending_tick_waits_one_instruction():
    nat, got, prog, rm = _raw_tick("    sti\n    mov ebx, 1\nafter:\n    mov ebx, 2\n    jmp after\n")
    assert got == nat == [prog.labels["after"], 1]       # the shadow: the displaced MOV ran
    assert rm.listing(prog.labels["after"] - 6)["how"] == "jump" and rm.callouts["sti"] == 1


def test_popf_in_patch_code_takes_a_pending_tick_at_the_next_guest_instruction():
    body = "    push 0x202\n    popfd\nnext:\n    nop\n    nop\n    nop\n    nop\nafter:\n    jmp after\n"
    nat, got, prog, rm = _raw_tick(body)
    # taken after the POPF, before the first displaced NOP: reported at its guest EIP
    assert got == nat == [prog.labels["next"], 0]
    assert rm.listing(prog.labels["next"] - 1)["how"] == "jump" and rm.callouts["popf"] == 1


def test_popf_int3_replaced_takes_a_pending_tick_at_once():
    nat, got, prog, rm = _raw_tick("    push 0x202\n    popfd\nafter:\n    mov ebx, 1\n    jmp after\n")
    assert got == nat == [prog.labels["after"], 0]
    assert rm.listing(prog.labels["after"] - 1)["reason"] == "branch target"


def test_doctest_of_the_module():
    import doctest
    import hvsim.bt.rawmode as mod
    assert doctest.testmod(mod).failed == 0


# ---- mappings, patch memory, ring 3, the guest's view of its code --------------------------
def test_a_remapped_code_page_is_rescanned_and_runs_the_new_code():
    from test_bt_monitor import REMAP
    src = REMAP.replace("0x000001b8       ; mov eax, 1 ; ret", "0x0001b8fa       ; cli ; mov eax, 1")
    src = src.replace("mov word [0x30004], 0xc300", "mov dword [0x30004], 0xc30000")
    nat, nev, _ = native(src)
    rm, ev, _ = raw_run(src)
    assert ev.kind == nev.kind == "halt" and rm.machine.cpu.ebx == nat.machine.cpu.ebx == 3
    c = rm.counters
    # the old frame's CLI patch came out with its page's scan; the new code was scanned
    assert c["mapping_unpatches"] >= 1 and c["jump_patches"] == 1
    assert bytes(rm.machine.memory[0x30000:0x30007]) == bytes([0xFA, 0xB8, 1, 0, 0, 0, 0xC3])
    assert rm._insn[0x400000].text == "mov eax, 2"


def test_full_patch_memory_gets_int3_replacements():
    body = "".join(f"    cli\n    mov eax, {i}\n" for i in range(300))
    src = "start:\n" + body + "    hlt\n"
    nat, nev, _ = native(src)
    rm, ev, _ = raw_run(src, patch_pages=1)
    assert ev.kind == nev.kind == "halt" and regs(rm) == regs(nat)
    c = rm.counters
    # each jump patch takes 11 (MOV [gs:VIF], 0) + 5 (the MOV) + 5 (JMP back) = 21 bytes:
    # 195 fit in 4096, the other 105 sites are INT3s
    assert (c["jump_patches"], c["int3_replacements"]) == (4096 // 21, 300 - 4096 // 21)
    assert c["refused patch memory full"] == 300 - 4096 // 21 and c["patch_bytes"] <= 4096


def test_a_user_program_cannot_reach_the_hole_either():
    from test_bt_monitor import USER_PROBE
    prog = teaching_kernel(user=USER_PROBE)
    rm = RawMode(program=prog)
    ev = rm.run(50_000)
    assert ev.kind == "killed" and "#GP" in ev.reason
    assert rm.log[-1].ring == 3 and rm.log[-1].eip == prog.labels["user"] + 9


def test_the_guest_reads_its_patched_bytes():
    src = """
start:
    mov ecx, [site]
site:
    cli
    mov eax, 1
    mov edx, [site]
    hlt
"""
    nat, nev, prog = native(src)
    rm, ev, _ = raw_run(src)
    assert ev.kind == nev.kind == "halt"
    site = prog.labels["site"]
    jump = bytes(rm.machine.memory[site:site + 4])
    # natively CLI then MOV's opcode; under raw mode the JMP rel32 -- the first read too,
    # since the code was scanned and patched before it ran (PATMREAD_ORGCODE is only the
    # monitor's: original_bytes)
    assert nat.machine.cpu.ecx & 0xFFFF == 0xB8FA and rm.machine.cpu.ecx & 0xFF == 0xE9
    assert rm.machine.cpu.ecx == rm.machine.cpu.edx == int.from_bytes(jump, "little")
    assert rm.original_bytes(site, 2) == bytes([0xFA, 0xB8])


def test_scanning_ahead_sets_no_accessed_flag():
    from test_bt_monitor import REMAP
    # a branch never taken to a mapped page that never runs: its PTE's A flag stays 0
    src = REMAP.replace("    mov esi, 0x400000\n    call esi\n", "    xor eax, eax\n"
                        "    test eax, eax\n    jnz 0x400000\n    hlt\n")
    nat, nev, _ = native(src)
    rm, ev, _ = raw_run(src)
    assert ev.kind == nev.kind == "halt"
    assert 0x400000 in rm._insn                       # scanned ahead of time
    assert dword(rm, 0x22000) == dword(nat, 0x22000) == 0x30003        # A (20H) clear
    assert dword(rm, 0x21000 + 4 * 1) == dword(nat, 0x21000 + 4 * 1)   # the kernel's page


@pytest.mark.parametrize("kind", ["gate", "tick", "far jmp", "iret"])
def test_a_guest_transfer_into_patch_memory_is_killed(kind):
    from test_bt_monitor import hole_kernel
    rm, ev, _ = raw_run(hole_kernel(kind, TC_BASE), 5000)
    assert ev.kind == "killed" and "monitor's region (the hole" in ev.reason, (ev, rm.log[-3:])
    assert f"{TC_BASE:#010x}" in ev.reason


@pytest.mark.parametrize("form", ["moffs", "modrm", "movs", "add", "jmp", "call"])
def test_a_data_access_through_cs_is_refused_before_it_runs(form):
    from test_bt_monitor import cs_kernel
    rm, ev, prog = raw_run(cs_kernel(form))
    site = prog.labels["site"]
    assert rm._insn[site].need == "refused"          # the scanner caught it at boot
    assert ev.kind == "killed" and "through CS" in ev.reason and "refuses" in ev.reason
    assert rm.machine.cpu.eax == 0x1234 and dword(rm, 0x40000) == 0


def test_a_branch_hint_runs_in_place_as_natively():
    from test_bt_monitor import HINTS
    nat, nev, _ = native(HINTS)
    rm, ev, _ = raw_run(HINTS)
    assert nev.kind == ev.kind == "halt" and regs(rm) == regs(nat)
    assert not rm.patches()                          # nothing to patch: the prefixes are harmless


def test_a_store_to_a_page_table_frame_that_holds_patched_code_unpatches_it():
    from test_bt_monitor import PT_CODE
    nat, nev, prog = native(PT_CODE)
    rm, ev, _ = raw_run(PT_CODE)
    assert nev.kind == ev.kind == "halt", (ev, rm.log[-3:])
    assert regs(rm) == regs(nat) and rm.machine.cpu.ebx == 1 + 7
    assert rm.counters["smc_unpatches"] >= 1      # func's CLI patch (MOV displaced) came out


@pytest.mark.parametrize("how", ["popfd", "iretd"])
def test_the_guest_kernel_setting_tf_is_killed(how):
    from test_bt_monitor import KERNEL_TF
    src = "start:\n" + KERNEL_TF[how] + "    nop\n    nop\n    mov eax, 1\n    hlt\n"
    rm, ev, _ = raw_run(src)
    assert ev.kind == "killed" and "single-stepping the guest kernel (EFLAGS.TF)" in ev.reason
    assert rm.machine.cpu.eax == 0


def test_tf_in_user_code_single_steps_as_natively():
    from test_bt_monitor import USER_TF
    nat, nev, prog = native(USER_TF)
    rm, ev, _ = raw_run(USER_TF)
    assert nev.kind == ev.kind == "halt", (ev, rm.log[-3:])
    got = [dword(rm, 0x40004 + 4 * i) for i in range(dword(rm, 0x40000))]
    assert got == [dword(nat, 0x40004 + 4 * i) for i in range(dword(nat, 0x40000))]
    assert got == [prog.labels[f"u{i}"] for i in range(1, 7)]


def test_a_tick_landing_right_after_sti_in_patch_code_waits_for_the_next_instruction():
    # STI (1 byte) displaces ADD and a NOP into its patch code, where the tick can land
    from test_bt_monitor import STI_SHADOW, sti_shadow_sweep
    src = STI_SHADOW.replace("    inc eax\n    hlt\n", "    add eax, 1\n    nop\n    nop\n    hlt\n")
    assert sti_shadow_sweep(raw_run, src) >= 1
