"""The KVM-shaped VMM in Python (hvsim/monitors/kvm.py) on hvsim's VT-x."""
import pytest

from hvsim import assemble
from hvsim.arch import vmx as X
from hvsim.arch import layout as L
from hvsim.guests import teaching_kernel
from hvsim.monitors import TrapAndEmulate, Vtx
from hvsim.techniques import MONITORS
from hvsim.monitors.kvm import VM, KVM_EXIT, KVM_EXIT_IO_OUT, HOST_AREA_PAGES, PAGE

RING0_KERNEL = {"KCODE": 0x08}         # the teaching kernel's gates name ring 0's code


def _vcpu(src, memory=1 << 20):
    vm = VM(memory=memory)
    vc = vm.create_vcpu()
    vc.load(assemble(src, origin=0x1000))
    return vm, vc


def test_io_goes_to_user_space_shaped_like_kvm_run():
    # struct kvm_run io: direction KVM_EXIT_IO_OUT = 1, size in bytes, port, data
    vm, vc = _vcpu("mov al, 0x68\nout 0xe9, al\nhlt\n")
    r = vc.run()
    assert r.exit_reason == KVM_EXIT["io"] == 2
    assert (r.io.direction, r.io.size, r.io.port, r.io.data) == (KVM_EXIT_IO_OUT, 1, 0xE9, 0x68)
    assert r.hardware_exit_reason == X.ExitReason.IO_INSTRUCTION
    assert vc.console == "h"
    assert vc.regs["eip"] == 0x1000 + 2 + 2        # past the OUT (the VMM skipped it)
    r = vc.run()
    assert r.exit_reason == KVM_EXIT["hlt"]         # no timer: HLT goes to user space


def test_cpuid_is_answered_in_the_kernel_without_vmx():
    # KVM hides VMX from its guests (no nested virtualization): CPUID.1:ECX bit 5 clear
    vm, vc = _vcpu("mov eax, 1\ncpuid\nhlt\n")
    r = vc.run()
    assert r.exit_reason == KVM_EXIT["hlt"]
    assert vc.regs["ecx"] & X.CPUID_ECX_VMX == 0
    assert vc.exits["CPUID"] == 1 and vc.in_kernel["CPUID"] == 1
    assert vc.regs["eax"] == (6 << 8) | (0xF << 4)  # the machine's signature (family 6)


def test_the_guest_sees_paging_off_although_non_root_needs_cr0_pg():
    # SDM 27.3.1.1: without unrestricted guest, GUEST_CR0.PG must be 1; the CR0 read
    # shadow shows the guest its own view (25.6.6), MOV from CR0 with no exit (26.3)
    vm, vc = _vcpu("mov eax, cr0\nmov ebx, cr4\nhlt\n")
    vc.run()
    assert vc.regs["eax"] & (1 << 31) == 0 and vc.regs["eax"] & 1 == 1
    assert vc.regs["ebx"] & (1 << 13) == 0           # CR4.VMXE hidden too
    assert vc.vmcs["GUEST_CR0"] & (1 << 31)          # the real CR0 has PG
    assert "CR_ACCESS" not in vc.exits


@pytest.mark.parametrize("ept", [True, False])
def test_the_guest_turning_paging_on_gets_its_own_tables(ept):
    # linear 0x400000 -> physical 0x5000 in the guest's own page table; the VMM sees
    # MOV to CR3 (CR3-load exiting while the guest's paging is off) and MOV to CR0 (PG
    # owned by the host). With EPT, from then on the guest's CR3 is the real one (KVM
    # clears CR3-load exiting); without, the real CR3 is a shadow root the VMM built in
    # its host area, and every CR3 load and store keeps exiting (shadow paging)
    src = """
        mov dword [0x5000], 0x1234abcd
        mov dword [0x20000], 0x21003     ; PDE 0 -> page table at 0x21000 (P, RW)
        mov dword [0x20004], 0x22003     ; PDE 1 -> page table at 0x22000 (4-8 MiB)
        mov ecx, 0
    ident:
        mov eax, ecx
        shl eax, 12
        or eax, 3
        mov [0x21000 + ecx*4], eax
        inc ecx
        cmp ecx, 256
        jne ident
        mov dword [0x22000], 0x5003      ; linear 0x400000 -> physical 0x5000
        mov eax, 0x20000
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov esi, [0x400000]
        mov edi, cr3
        hlt
    """
    vm = VM(memory=1 << 20, ept=ept)
    vc = vm.create_vcpu()
    vc.load(assemble(src, origin=0x1000))
    r = vc.run()
    assert r.exit_reason == KVM_EXIT["hlt"]
    assert vc.regs["esi"] == 0x1234ABCD
    assert vc.regs["edi"] == 0x20000                 # MOV from CR3: the guest's own value
    exiting = vc.vmcs["CPU_BASED_VM_EXEC_CONTROL"] & X.CPU_CR3_LOAD_EXITING
    if ept:
        assert vc.vmcs["GUEST_CR3"] == 0x20000 and not exiting
        assert vc.exits["CR_ACCESS"] == 2            # the CR3 load and the CR0 write
    else:
        root = vc.vmcs["GUEST_CR3"]
        assert vm.page(24) <= root < vm.page(24 + 64) and exiting
        assert vc.exits["CR_ACCESS"] == 3            # ... and the MOV from CR3
        assert vc.shadow.guest_cr3 == 0x20000 and vc.shadow.counters["hidden_faults"] > 0


@pytest.mark.parametrize("ept", [True, False])
def test_turning_paging_on_drops_what_the_tlb_cached_with_paging_off(ept):
    # linear 0x6000 is read with paging off (the VMM's identity map: cached 6000 -> 6000,
    # tagged with the vCPU's VPID), then the guest's tables map it to 0x5000. A VM entry
    # with a VPID flushes nothing, so the VMM must drop the stale entry itself
    src = """
        mov dword [0x5000], 0x1234abcd
        mov dword [0x6000], 0x5555
        mov ebx, [0x6000]
        mov dword [0x20000], 0x21003
        mov ecx, 0
    ident:
        mov eax, ecx
        shl eax, 12
        or eax, 3
        mov [0x21000 + ecx*4], eax
        inc ecx
        cmp ecx, 256
        jne ident
        mov dword [0x21000 + 6 * 4], 0x5003     ; linear 0x6000 -> physical 0x5000
        mov eax, 0x20000
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov esi, [0x6000]
        hlt
    """
    vm = VM(memory=1 << 20, ept=ept)
    vc = vm.create_vcpu()
    vc.load(assemble(src, origin=0x1000))
    assert vc.run().exit_reason == KVM_EXIT["hlt"]
    assert (vc.regs["ebx"], vc.regs["esi"]) == (0x5555, 0x1234ABCD)


def test_a_broken_guest_state_is_fail_entry_with_the_reason_and_words():
    # KVM_EXIT_FAIL_ENTRY: hardware_entry_failure_reason = 0x80000021 (SDM 27.8)
    vm, vc = _vcpu("hlt\n")
    vc.vmcs["GUEST_TR_AR_BYTES"] = 9 | L.AR_P
    r = vc.run()
    assert r.exit_reason == KVM_EXIT["fail_entry"] == 9
    assert r.fail_entry_reason == 0x80000021
    assert r.fail_entry_explanation.startswith("GUEST_TR_AR_BYTES: TR type must be 3 or 11")


def test_a_broken_host_state_is_fail_entry_with_error_8():
    vm, vc = _vcpu("hlt\n")
    vc.vmcs["HOST_TR_SELECTOR"] = 0
    r = vc.run()
    assert r.exit_reason == KVM_EXIT["fail_entry"] and r.fail_entry_reason == 8
    assert "HOST_TR_SELECTOR: must not be 0000H" in r.fail_entry_explanation


def test_vmcs_fields_by_name_refuse_what_vmwrite_would():
    vm, vc = _vcpu("hlt\n")
    with pytest.raises(KeyError, match="GUEST_RIP"):
        vc.vmcs["GUEST_RIPP"] = 1
    with pytest.raises(ValueError, match="error 13"):
        vc.vmcs["VM_EXIT_REASON"] = 1
    with pytest.raises(ValueError, match="16-bit"):
        vc.vmcs["GUEST_CS_SELECTOR"] = 0x10000
    vc.vmcs["VMCS_LINK_POINTER"] = (1 << 64) - 1     # 64-bit fields hold 64 bits
    assert vc.vmcs["VMCS_LINK_POINTER"] == (1 << 64) - 1


def test_the_host_area_is_carved_from_a_given_machine():
    from hvsim import Machine
    m = Machine(memory=(1 << 20) + HOST_AREA_PAGES * PAGE)
    vm = VM(machine=m)
    assert vm.memory_size == 1 << 20 and vm.machine is m
    with pytest.raises(ValueError, match="64 KiB"):
        VM(memory=4096)


def _ticks(mon, **constants):
    a = teaching_kernel(**constants).labels["ticks"]
    return int.from_bytes(bytes(mon.machine.memory[a:a + 4]), "little")


def test_the_teaching_kernel_runs_under_vt_x_with_its_ticks_flowing():
    # the kernel that freezes under trap-and-emulate (POPF in ring 1 keeps IF) runs
    # unmodified in non-root ring 0: POPF runs natively, ticks are injected
    vtx = Vtx(program=teaching_kernel(**RING0_KERNEL))
    vtx.run(200_000)
    tae = TrapAndEmulate(program=teaching_kernel())
    tae.run(200_000)
    assert vtx.console.startswith("kernel up\nhello from ring 3")
    assert _ticks(vtx, **RING0_KERNEL) > 100
    assert _ticks(tae) < 10                          # frozen (lesson 02)
    k = vtx.kvm
    assert k.injected > 100 and k.exits["EXTERNAL_INTERRUPT"] >= k.injected - k.exits["HLT"]
    assert vtx.stats["vm_exits"] == sum(k.exits.values())
    assert all(e.what == "vm_exit" for e in vtx.log)


def test_the_vtx_monitor_snapshot_restores_exactly():
    mon = Vtx(program=teaching_kernel(**RING0_KERNEL))
    mon.run(20_000)
    snap = mon.snapshot()
    mon.run(30_000)
    after = (mon.console, _ticks(mon, **RING0_KERNEL), mon.kvm.regs, len(mon.log))
    mon.restore(snap)
    mon.run(30_000)
    assert (mon.console, _ticks(mon, **RING0_KERNEL), mon.kvm.regs, len(mon.log)) == after


def test_a_vtx_snapshot_restored_twice_gives_the_same_exit_counts():
    # the counters go on after a restore: the snapshot's own must not be the ones counted
    mon = Vtx(program=assemble("mov esi, 50\nagain:\nxor eax, eax\ncpuid\ndec esi\n"
                               "jnz again\nhlt\n"))
    mon.run(40)
    snap = mon.snapshot()
    counts = []
    for _ in range(3):
        mon.run(10**6)
        counts.append((mon.kvm.exits["CPUID"], mon.kvm.in_kernel["CPUID"], mon.kvm.to_user["hlt"]))
        mon.restore(snap)
    assert counts == [(50, 50, 1)] * 3


def test_the_cli_knows_the_vtx_monitor(tmp_path, capsys):
    from hvsim.cli import main
    assert MONITORS["vtx"] is Vtx
    f = tmp_path / "g.s"
    f.write_text("mov al, 0x6f\nout 0xe9, al\nmov al, 0x6b\nout 0xe9, al\nhlt\n")
    rc = main(["run", str(f), "--monitor", "vtx"])
    out = capsys.readouterr().out
    assert "--- console ---\nok\n" in out
    assert "monitor: vtx, guest halted" in out
    assert "vm_exits" in out and rc == 0


def test_an_intercepted_exception_is_counted_and_given_back_to_the_guest():
    # the user program's deliberate divide error (#DE, vector 0): with bit 0 in the
    # exception bitmap it exits (SDM 25.6.3) and the VMM re-injects it (27.6): the guest
    # handles it as it would natively, and its ticks keep flowing
    plain = Vtx(program=teaching_kernel(**RING0_KERNEL))
    plain.run(100_000)
    watched = Vtx(program=teaching_kernel(**RING0_KERNEL))
    watched.kvm.vmcs["EXCEPTION_BITMAP"] = 1 << 0
    watched.run(100_000)
    assert watched.kvm.exits["EXCEPTION_NMI"] == 1 and "EXCEPTION_NMI" not in plain.kvm.exits
    assert watched.console == plain.console
    entry = next(e for e in watched.log if e.trap.endswith("EXCEPTION_NMI"))
    assert entry.vector == 0 and "re-injected" in entry.action
    assert _ticks(watched, **RING0_KERNEL) > 30


def test_the_log_names_the_exiting_instruction():
    # exits are fault-like (SDM Vol. 3C, 26.1): the log keeps the RIP of the instruction
    # that exited, not the one after it the VMM moved to
    mon = Vtx(program=teaching_kernel(**RING0_KERNEL))
    mon.run(2000)
    first = mon.log[0]
    assert first.trap == "VM exit 30 IO_INSTRUCTION" and "timer period 150" in first.action
    assert mon.machine.memory[first.eip] == 0xE7          # OUT imm8, EAX (SDM Vol. 2B, OUT)


def test_the_block_device_in_user_space_stores_and_returns_sectors():
    src = """
        mov dx, 0x1f2
        mov eax, 3
        out dx, eax                 ; sector 3
        mov dx, 0x1f0
        mov ecx, 128
    fill:
        mov eax, ecx
        out dx, eax                 ; 128 dwords: 128, 127, ..., 1
        loop fill
        mov dx, 0x1f7
        mov al, 0x30
        out dx, al                  ; write the buffer to sector 3
        mov dx, 0x1f2
        mov eax, 3
        out dx, eax
        mov dx, 0x1f7
        mov al, 0x20
        out dx, al                  ; read sector 3 back
        mov dx, 0x1f0
        in eax, dx
        mov esi, eax                ; the first dword: 128
        in eax, dx
        mov edi, eax                ; the second: 127
        mov dx, 0x1f2
        mov eax, 999
        out dx, eax
        mov dx, 0x1f7
        mov al, 0x20
        out dx, al                  ; past the end of a 64-sector disk
        in al, dx
        movzx ebp, al
        hlt
    """
    vm, vc = _vcpu(src)
    ios = 0
    while (r := vc.run()).name == "io":
        ios += 1
    assert r.name == "hlt"
    disk = vc.devices.disk
    assert disk.disk[3 * 512:3 * 512 + 8] == (128).to_bytes(4, "little") + (127).to_bytes(4, "little")
    assert (vc.regs["esi"], vc.regs["edi"], vc.regs["ebp"]) == (128, 127, 0x41)
    assert disk.writes == 1 and disk.reads == 1
    # every IN and OUT above: sector, 128 data, write, sector, read, 2 data, sector, read, status
    assert ios == vc.to_user["io"] == 1 + 128 + 1 + 1 + 1 + 2 + 1 + 1 + 1


def test_an_interrupted_event_is_injected_again():
    # a made-up exit: the exit interrupted the delivery of external interrupt 0x20
    # (IDT-vectoring information valid, SDM Vol. 3C 28.2.4); with nothing else queued the
    # VMM puts it in the VM-entry interruption-information field for the next entry
    vm, vc = _vcpu("hlt\n")
    st = vm.machine._st
    from hvsim.arch import vmcs as V
    st[L.VMCS_CACHE + V.slot("IDT_VECTORING_INFO_FIELD")] = X.INTR_INFO_VALID | 0x20
    vc._complete_interrupted_event()
    assert vc.vmcs["VM_ENTRY_INTR_INFO_FIELD"] == X.INTR_INFO_VALID | 0x20
    assert vc.reinjected == 1
    # a #GP (with its error code) is given back with the code
    vc.vmcs["VM_ENTRY_INTR_INFO_FIELD"] = 0
    st[L.VMCS_CACHE + V.slot("IDT_VECTORING_INFO_FIELD")] = (
        X.INTR_INFO_VALID | (3 << 8) | X.INTR_INFO_DELIVER_ERROR_CODE | 13)
    st[L.VMCS_CACHE + V.slot("IDT_VECTORING_ERROR_CODE")] = 0x18
    vc._complete_interrupted_event()
    assert vc.vmcs["VM_ENTRY_EXCEPTION_ERROR_CODE"] == 0x18
    # an event the handler queued itself goes first: nothing is overwritten
    vc.vmcs["VM_ENTRY_INTR_INFO_FIELD"] = X.INTR_INFO_VALID | 0x21
    vc._complete_interrupted_event()
    assert vc.vmcs["VM_ENTRY_INTR_INFO_FIELD"] == X.INTR_INFO_VALID | 0x21 and vc.reinjected == 2


def test_a_mov_to_cr0_without_an_exit_keeps_the_bits_the_host_owns():
    # the guest reads CR0 (PG and NE from the shadow: 0) and writes it back: the owned
    # bits equal the shadow's, so no exit (SDM Vol. 3C, 26.1.3), and the write leaves the
    # real PG and NE set (26.3) -- the guest keeps running, with paging still on for real
    vm, vc = _vcpu("mov eax, cr0\nmov cr0, eax\nmov ebx, cr0\nhlt\n")
    r = vc.run()
    assert r.exit_reason == KVM_EXIT["hlt"]
    assert "CR_ACCESS" not in vc.exits
    assert vc.vmcs["GUEST_CR0"] & 0x80000020 == 0x80000020
    assert vc.regs["ebx"] & 0x80000020 == 0          # what the guest sees: still off


@pytest.mark.parametrize("memory", [1 << 20, 2 << 20, 3 << 20])
def test_with_ept_the_guest_runs_and_cannot_reach_the_host_area(memory):
    # SDM Vol. 3C 29.3: with "enable EPT" every guest-physical address goes through the
    # EPT the VMM wrote: the guest's RAM is there, the VMCS region (host page 1) is not --
    # a store to it is an EPT violation (exit 48), which KVM reports as MMIO
    vm = VM(memory=memory, ept=True)
    vc = vm.create_vcpu()
    vmcs_region = vm.page(1)
    src = (f"mov dword [0x5000], 0x11223344\nmov eax, [0x5000]\nmov ebx, cr0\n"
           f"mov dword [{vmcs_region:#x}], 0xdead\nhlt\n")
    vc.load(assemble(src, origin=0x1000))
    before = bytes(vm.machine.memory[vmcs_region:vmcs_region + 4096])
    r = vc.run()
    assert r.name == "mmio" and r.mmio_phys_addr == vmcs_region and r.mmio_is_write
    assert r.hardware_exit_reason == X.ExitReason.EPT_VIOLATION
    assert vc.regs["eax"] == 0x11223344 and vc.regs["ebx"] & (1 << 31) == 0
    assert bytes(vm.machine.memory[vmcs_region:vmcs_region + 4096]) == before
    assert vm.machine.counters["ept_walks"] > 0


def test_without_ept_shadow_paging_keeps_the_guest_out_of_the_vmm_s_own_structures():
    # the same store without EPT: the shadow page tables map the guest's RAM only, so an
    # address above it is a #PF exit the VMM hands to user space as MMIO, as KVM does for
    # a guest-physical address no memory slot holds -- the VMCS region is untouched
    vm = VM(memory=1 << 20)
    vc = vm.create_vcpu()
    before = bytes(vm.machine.memory[vm.page(1):vm.page(1) + 4])
    vc.load(assemble(f"mov dword [{vm.page(1):#x}], 0xdead\nhlt\n", origin=0x1000))
    r = vc.run()
    assert (r.name, r.mmio_phys_addr, r.mmio_is_write, r.mmio_data) == (
        "mmio", vm.page(1), True, (0xDEAD).to_bytes(4, "little"))
    assert bytes(vm.machine.memory[vm.page(1):vm.page(1) + 4]) == before
    assert vc.run().name == "hlt"                  # the store is done; the guest goes on


def test_the_teaching_kernel_runs_under_vt_x_with_ept():
    mon = Vtx(program=teaching_kernel(**RING0_KERNEL), ept=True)
    mon.run(100_000)
    assert mon.vm.ept and mon.kvm.vmcs["SECONDARY_VM_EXEC_CONTROL"] & X.SEC_ENABLE_EPT
    assert mon.console.startswith("kernel up\nhello from ring 3")
    assert _ticks(mon, **RING0_KERNEL) > 50
    assert mon.machine.counters["ept_walks"] > 0


# ---- MMIO: an access the EPT does not map, emulated as KVM's emulator does -------------
MMIO = 0x200000          # above the guest's 1 MiB of RAM and the host area: not in the EPT


def _ept_vcpu(src):
    vm = VM(memory=1 << 20, ept=True)
    vc = vm.create_vcpu()
    prog = assemble(src, origin=0x1000)
    vc.load(prog)
    return vm, vc, prog


@pytest.mark.parametrize("insn, size, data", [
    ("mov dword [MMIO], 0x11223344", 4, "44332211"),      # C7 /0 id
    ("mov byte [MMIO + 3], 0xab", 1, "ab"),               # C6 /0 ib
    ("mov [MMIO + 8], ecx", 4, "efbeadde"),               # 89 /r
    ("mov [MMIO], ch", 1, "be"),                          # 88 /r: CH is ModRM reg 5
    ("mov [MMIO + 2], cx", 2, "efbe"),                    # 66 89 /r
    ("mov [MMIO + 4], eax", 4, "78563412"),               # A3 moffs32
    ("mov [ebx + 0x10], dl", 1, "55"),                    # a base register
])
def test_an_mmio_store_is_done_and_handed_to_user_space_with_its_data(insn, size, data):
    # KVM_EXIT_MMIO (include/uapi/linux/kvm.h: phys_addr, data[8], len, is_write): the
    # store's address, bytes and length; the guest goes on after the instruction
    src = (f"MMIO equ {MMIO:#x}\nmov eax, 0x12345678\nmov ecx, 0xdeadbeef\nmov edx, 0x55\n"
           f"mov ebx, MMIO\n{insn}\nmov esi, 7\nhlt\n")
    vm, vc, prog = _ept_vcpu(src)
    r = vc.run()
    assert (r.name, r.mmio_is_write, r.mmio_len, r.mmio_data.hex()) == ("mmio", True, size, data)
    assert r.hardware_exit_reason == X.ExitReason.EPT_VIOLATION
    offset = {"MMIO + 3": 3, "MMIO + 8": 8, "MMIO + 2": 2, "MMIO + 4": 4, "ebx + 0x10": 0x10}
    assert r.mmio_phys_addr == MMIO + next((o for k, o in offset.items() if k in insn), 0)
    r = vc.run()
    assert r.name == "hlt" and vc.regs["esi"] == 7
    assert vc.regs["eax"] == 0x12345678 and vc.regs["ecx"] == 0xDEADBEEF


@pytest.mark.parametrize("insn, size, data, reg, expected", [
    ("mov eax, [MMIO]", 4, "efbeadde", "eax", 0xDEADBEEF),      # A1 moffs32
    ("mov ecx, [MMIO + 4]", 4, "01020304", "ecx", 0x04030201),  # 8B /r
    ("mov cl, [MMIO]", 1, "7f", "ecx", 0x1111117F),             # 8A /r: the rest kept
    ("mov ch, [MMIO]", 1, "7f", "ecx", 0x11117F11),             # CH: bits 15:8
    ("mov cx, [MMIO]", 2, "3412", "ecx", 0x11111234),           # 66 8B /r
    ("movzx ecx, byte [MMIO]", 1, "f0", "ecx", 0xF0),           # 0F B6
    ("movsx ecx, byte [MMIO]", 1, "f0", "ecx", 0xFFFFFFF0),     # 0F BE: sign-extended
    ("movsx ecx, word [MMIO]", 2, "0080", "ecx", 0xFFFF8000),   # 0F BF
    ("movzx cx, byte [MMIO]", 1, "f0", "ecx", 0x111100F0),      # 66 0F B6: 16-bit destination
])
def test_an_mmio_load_takes_the_data_user_space_gives_on_the_next_run(insn, size, data, reg,
                                                                     expected):
    # KVM: user space fills kvm_run.mmio.data and calls KVM_RUN again; the kernel then
    # completes the instruction (complete_emulated_mmio) and the guest goes on
    src = f"MMIO equ {MMIO:#x}\nmov ecx, 0x11111111\n{insn}\nmov esi, 7\nhlt\n"
    vm, vc, prog = _ept_vcpu(src)
    r = vc.run()
    assert (r.name, r.mmio_is_write, r.mmio_len, r.mmio_phys_addr) == (
        "mmio", False, size, MMIO + (4 if "+ 4" in insn else 0))
    r.mmio_data = bytes.fromhex(data)
    r2 = vc.run()
    assert r2.name == "hlt" and vc.regs[reg] == expected and vc.regs["esi"] == 7


def test_an_mmio_load_with_no_data_reads_a_floating_bus_and_bad_data_is_refused():
    vm, vc, _ = _ept_vcpu(f"mov ax, [{MMIO:#x}]\nhlt\n")
    r = vc.run()
    r.mmio_data = b"\x01"                              # one byte for a two-byte read
    with pytest.raises(ValueError, match="2 bytes"):
        vc.run()
    assert vc.regs["eip"] == 0x1000                    # nothing done: still at the load
    r.mmio_data = None
    assert vc.run().name == "hlt" and vc.regs["eax"] & 0xFFFF == 0xFFFF


def test_an_mmio_access_hvsim_does_not_emulate_is_an_emulation_failure():
    # KVM_EXIT_INTERNAL_ERROR, suberror KVM_INTERNAL_ERROR_EMULATION (1): the guest
    # stays at the instruction, which did nothing
    vm, vc, prog = _ept_vcpu(f"mov eax, 5\nadd dword [{MMIO:#x}], eax\nhlt\n")
    r = vc.run()
    assert (r.name, r.internal_suberror, r.hardware_exit_reason) == (
        "internal_error", 1, X.ExitReason.EPT_VIOLATION)
    assert r.mmio_phys_addr == MMIO and vc.regs["eip"] == 0x1005
    assert "not an access hvsim emulates" in vc.log[-1].action


def test_a_fetch_from_mmio_is_no_load():
    # a jump to an unmapped page is an EPT violation of the fetch (qualification bit 2):
    # no instruction of the guest's own to emulate
    vm, vc, prog = _ept_vcpu(f"jmp {MMIO:#x}\n")
    r = vc.run()
    assert (r.name, r.internal_suberror) == ("internal_error", 1)
    assert r.mmio_phys_addr == MMIO and not r.mmio_is_write and vc.regs["eip"] == MMIO
