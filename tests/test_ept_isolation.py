"""Random guest programs under EPT cannot touch the VMM's memory (issue 13's fuzz).

Seeded random programs -- stores and loads to random addresses, REP STOSD over random
ranges, MOVSD between random places, a stack pointed anywhere, ADD to memory, MOV to
CR3 -- run as the guest of the
KVM-shaped VMM with an EPT that maps the guest's RAM and the VMM's identity page table
only (hvsim/monitors/kvm.py VM(ept=True)). Every access outside them is an EPT
violation (SDM Vol. 3C 29.3.3), which the VMM reports as KVM_EXIT_MMIO; the test then
skips the instruction (hvsim reports its length in the exit) and lets the guest go on.
Oracle: every byte of host memory outside the guest's RAM and the identity page table is
the same after the program as before (SHA-256), and the run ends within its budget.
1000 programs; ``HVSIM_LONG=1`` runs 10,000. Not jitted.
"""
import hashlib
import os
import random

from hvsim import assemble
from hvsim.arch import vmx as X
from hvsim.monitors.kvm import VM, HOST_AREA_PAGES, PAGE

LONG = os.environ.get("HVSIM_LONG", "") not in ("", "0")
N_PROGRAMS = 1000 * (10 if LONG else 1)
GUEST_RAM = 1 << 20
ORIGIN = 0x1000
MAX_EXITS = 300


def _address(rng, top):
    """Anywhere: the guest's RAM, the host area just above it, or far beyond."""
    r = rng.random()
    if r < 0.4:
        return rng.randrange(0, GUEST_RAM - 8) & ~3
    if r < 0.8:
        return rng.randrange(GUEST_RAM, top) & ~3
    return rng.randrange(0, 4 << 20) & ~3


def program(seed: int) -> str:
    rng = random.Random(seed)
    top = GUEST_RAM + HOST_AREA_PAGES * PAGE
    lines = []
    for _ in range(rng.randrange(4, 24)):
        a = _address(rng, top)
        kind = rng.randrange(8)
        if kind == 0:
            lines.append(f"mov dword [{a:#x}], {rng.getrandbits(32):#x}")
        elif kind == 1:
            lines.append(f"mov eax, [{a:#x}]")
        elif kind == 2:
            lines += [f"mov edi, {a:#x}", f"mov ecx, {rng.randrange(1, 64)}",
                      f"mov eax, {rng.getrandbits(32):#x}", "cld", "rep stosd"]
        elif kind == 3:
            lines += [f"mov esp, {a + 4:#x}", f"push dword {rng.getrandbits(16)}", "pop ebx"]
        elif kind == 4:
            lines += [f"mov eax, {rng.getrandbits(32):#x}", f"add [{a:#x}], eax"]
        elif kind == 5:
            b = _address(rng, top)
            lines += [f"mov esi, {a:#x}", f"mov edi, {b:#x}", "cld", "movsd"]
        elif kind == 6:
            lines += [f"mov eax, {a & ~0xFFF:#x}", "mov cr3, eax"]
        else:
            lines.append(f"mov byte [{a:#x}], {rng.getrandbits(8)}")
    lines.append("hlt")
    return "\n".join(lines) + "\n"


def _protected(vm):
    """The host memory the guest must not change: everything above its RAM but the
    identity page table (host pages 6-14, which the VMM lends it on purpose)."""
    mem = vm.machine.memory
    lent = range(vm.page(6), vm.page(15))
    return bytes(mem[vm.host_base:lent.start]) + bytes(mem[lent.stop:])


def test_random_guests_under_ept_leave_host_memory_alone():
    vm = VM(memory=GUEST_RAM, ept=True)
    vc = vm.create_vcpu()
    m = vm.machine
    fresh = m.snapshot()
    before = hashlib.sha256(_protected(vm)).hexdigest()
    outcomes = {}
    violations = 0
    for seed in range(N_PROGRAMS):
        m.restore(fresh)
        vc.launched = False
        vc._guest_cr3 = 0
        vc._mmio_read = None
        vc.load(assemble(program(seed), origin=ORIGIN))
        for _ in range(MAX_EXITS):
            r = vc.run(20_000)
            if r.name == "mmio":           # a MOV emulated (a load reads the floating bus)
                violations += 1
                continue
            if r.name == "internal_error" and r.hardware_exit_reason == X.ExitReason.EPT_VIOLATION:
                violations += 1            # not emulated: go past the instruction
                vc._skip()
                continue
            if r.name != "io":
                break
        outcomes[r.name] = outcomes.get(r.name, 0) + 1
        assert r.name in ("hlt", "shutdown", "mmio", "intr") or (
            r.name == "internal_error" and r.hardware_exit_reason == X.ExitReason.EPT_VIOLATION), \
            (seed, str(r))
        assert hashlib.sha256(_protected(vm)).hexdigest() == before, \
            f"program {seed} changed the VMM's memory:\n{program(seed)}"
    # the programs did try: most reached the host area and were stopped there
    assert violations > N_PROGRAMS
    assert outcomes.get("hlt", 0) > N_PROGRAMS // 4
