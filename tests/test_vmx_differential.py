"""Twin-machine differential test: the same program natively and as a VT-x guest.

tests/test_differential.py's seeded generator writes small ring-0 programs (ALU and
flags, memory in a 64 KiB data window, the stack, loops, calls to local functions).
Each runs twice:

* natively, on a bare Machine (flat segments, no paging), from the generator's
  registers, EFLAGS, data and stack, to a host breakpoint on its last instruction;
* as the guest of tests/vmx_harness.py's assembly VMM (VMX non-root operation, ring 0,
  the host's GDT and identity page tables; once without EPT and once with an identity
  EPT under those tables, SDM Vol. 3C 29.3), from the same state -- the general
  registers loaded by the VMM right before VMLAUNCH, ESP and EFLAGS through GUEST_RSP
  and GUEST_RFLAGS -- to that last instruction, a CPUID, which always exits (SDM
  Vol. 3C 26.1.2).

Both run the same bytes: the generator's final HLT is replaced by CPUID in both, so the
local functions after it, and any address a program computes from them, stay put.

Oracle: the native run. At the CPUID exit the guest's state is read where VT-x leaves
it: EAX..EDI (but ESP) as HOST_RIP stored them before touching any (a VM exit does not
save general registers, SDM 28.3), ESP, EIP and EFLAGS from GUEST_RSP, GUEST_RIP and
GUEST_RFLAGS (28.3.2). The eight registers, EIP, EFLAGS (less the status flags the SDM
leaves undefined, as the generator tracks them) and every byte of the data and stack
windows must be identical. ``HVSIM_LONG=1`` runs ten times as many programs. Not jitted.
"""
import os
import re

import numpy as np
import pytest

from hvsim import Machine, assemble
from hvsim.arch import vmx as X

import test_differential as D
from vmx_harness import vmx_run, MEM, EPT_PML4

LONG = os.environ.get("HVSIM_LONG", "") not in ("", "0")
N_STRAIGHT = 150 * (10 if LONG else 1)
N_LOOPING = 100 * (10 if LONG else 1)
REG32 = D.REG32
assert MEM == D.MEMORY


def padded(prog):
    """The code window as test_differential lays it out: HLT around the program."""
    code = bytes(prog.code)
    return code.rjust(len(code) + prog.origin - D.CODE, b"\xf4").ljust(D.CODE_SIZE, b"\xf4")


def with_cpuid(src, origin):
    """The program with its final HLT (after the label ``end``) replaced by CPUID."""
    out, n = re.subn(r"(?m)^end:\nhlt$", "end:\ncpuid", src, count=1)
    assert n == 1
    return out, assemble(out, origin=origin)


def native(prog, g, data, stack):
    m = Machine(memory=MEM)
    m.breakpoints = {prog.labels["end"]}
    mem = m.memory
    mem[D.CODE:D.CODE + D.CODE_SIZE] = np.frombuffer(padded(prog), np.uint8)
    mem[D.DATA:D.DATA + D.DATA_SIZE] = np.frombuffer(data, np.uint8)
    mem[D.STACK:D.STACK + D.STACK_SIZE] = np.frombuffer(stack, np.uint8)
    for name, v in zip(REG32, g.regs):
        setattr(m.cpu, name, v)
    m.cpu.eflags = g.eflags
    m.cpu.eip = prog.origin
    ev = m.run(max_steps=D.MAX_STEPS)
    return dict(stop=ev.kind, eip=ev.eip, regs=[getattr(m.cpu, n) for n in REG32],
                eflags=int(m.cpu.eflags), data=mem[D.DATA:D.DATA + D.DATA_SIZE].tobytes(),
                stack=mem[D.STACK:D.STACK + D.STACK_SIZE].tobytes())


# an identity EPT over the machine's 4 MiB, two 2 MiB leaves (SDM Vol. 3C 29.3.2: R, W, X,
# memory type 6 in bits 5:3, bit 7 = 2 MiB page), in the harness's EPT area
EPT_PDPT, EPT_PD = EPT_PML4 + 0x1000, EPT_PML4 + 0x2000
EPT_TABLE_RWX = 0x7
EPT_LEAF_2M = 0x7 | (6 << 3) | (1 << 7)
EPTP = EPT_PML4 | (3 << 3) | 6                   # 4-level walk, write-back
EPT_FIELDS = {"CPU_BASED_VM_EXEC_CONTROL": X.CPU_TRUE_ALLOWED0 | X.CPU_ACTIVATE_SECONDARY_CONTROLS,
              "SECONDARY_VM_EXEC_CONTROL": X.SEC_ENABLE_EPT, "EPT_POINTER": EPTP}


def write_identity_ept(m):
    m.write_physical(EPT_PML4, (EPT_PDPT | EPT_TABLE_RWX).to_bytes(8, "little"))
    m.write_physical(EPT_PDPT, (EPT_PD | EPT_TABLE_RWX).to_bytes(8, "little"))
    m.write_physical(EPT_PD, b"".join(((i << 21) | EPT_LEAF_2M).to_bytes(8, "little")
                                      for i in range(MEM >> 21)))


def as_guest(src, prog, g, data, stack, ept=False):
    def setup(m, t, hv, guest):
        m.write_physical(D.CODE, padded(prog))
        m.write_physical(D.DATA, data)
        m.write_physical(D.STACK, stack)
        if ept:
            write_identity_ept(m)

    gprs = {n: v for n, v in zip(REG32, g.regs) if n != "esp"}
    fields = {"GUEST_RSP": g.regs[D.ESP], "GUEST_RFLAGS": g.eflags}
    if ept:
        fields.update(EPT_FIELDS)
    r = vmx_run(src, fields, gprs=gprs, guest_origin=prog.origin, setup=setup,
                budget=D.MAX_STEPS + 10_000)
    if ept and r.m.counters["ept_walks"] == 0:
        raise AssertionError("the EPT run made no EPT walk: EPT was not on")
    regs = r.exit_gprs()
    mem = r.m.memory
    return dict(exited=r.exited, reason=r.reason, eip=r.vmcs("GUEST_RIP"),
                regs=[regs[n] for n in REG32], eflags=r.vmcs("GUEST_RFLAGS"),
                data=mem[D.DATA:D.DATA + D.DATA_SIZE].tobytes(),
                stack=mem[D.STACK:D.STACK + D.STACK_SIZE].tobytes(), ev=r.ev)


def differences(prog, g, n, v):
    """What differs between the native run ``n`` and the guest run ``v`` (empty: none)."""
    diffs = []
    if n["stop"] != "breakpoint" or n["eip"] != prog.labels["end"]:
        diffs.append(f"native run did not reach end: {n['stop']} at {n['eip']:#x}")
    if not v["exited"] or v["reason"] != X.ExitReason.CPUID:
        diffs.append(f"guest did not exit with CPUID: {v['ev']} reason {v['reason']}")
    if v["eip"] != n["eip"]:
        diffs.append(f"eip: guest {v['eip']:#x} native {n['eip']:#x}")
    for name, a, b in zip(REG32, v["regs"], n["regs"]):
        if a != b:
            diffs.append(f"{name}: guest {a:#010x} native {b:#010x}")
    mask = 0xFFFFFFFF & ~g.undef
    if (v["eflags"] ^ n["eflags"]) & mask:
        diffs.append(f"eflags: guest {v['eflags']:#x} native {n['eflags']:#x} (mask {mask:#x})")
    for area in ("data", "stack"):
        if v[area] != n[area]:
            a, b = np.frombuffer(v[area], np.uint8), np.frombuffer(n[area], np.uint8)
            where = np.nonzero(a != b)[0]
            diffs.append(f"{area}: {len(where)} bytes differ, first at offset {where[0]:#x}")
    return diffs


def compare(seed, kind, ept=False):
    src, prog, g = D.generate(seed, kind)
    src, prog = with_cpuid(src, prog.origin)
    data, stack = D.initial_memory(seed)
    diffs = differences(prog, g, native(prog, g, data, stack),
                        as_guest(src, prog, g, data, stack, ept))
    if diffs:
        return f"--- {kind} seed {seed}{' (EPT)' if ept else ''}: " + "; ".join(diffs) + \
            "\n" + src
    return None


@pytest.mark.parametrize("ept", [False, True], ids=["paging", "ept"])
@pytest.mark.parametrize("kind, n, first", [("straight", N_STRAIGHT, 0),
                                            ("looping", N_LOOPING, 100_000)])
def test_guest_runs_like_the_bare_machine(kind, n, first, ept):
    # without EPT, and with an identity EPT under the guest's page tables (the guest's
    # physical addresses are then translated a second time, SDM Vol. 3C 29.3)
    failures = [f for f in (compare(s, kind, ept) for s in range(first, first + n)) if f]
    assert not failures, f"{len(failures)} of {n} differ:\n" + "\n".join(failures[:3])


def test_the_comparison_sees_a_difference():
    # the oracle is not vacuous: the same program from a guest state one bit off (a
    # register, a byte of the data window) is reported, and its run from the right
    # state agrees to the byte
    src, prog, g = D.generate(7, "straight")
    src, prog = with_cpuid(src, prog.origin)
    data, stack = D.initial_memory(7)
    n = native(prog, g, data, stack)
    assert differences(prog, g, n, as_guest(src, prog, g, data, stack)) == []
    other = bytearray(data)
    other[0x20] ^= 1                          # below every address the program writes
    diffs = differences(prog, g, n, as_guest(src, prog, g, bytes(other), stack))
    assert diffs and all(d.startswith(("data", "e")) for d in diffs)
    g.regs[D.ESP] += 4                        # the guest starts one dword higher
    assert any(d.startswith("esp") for d in differences(prog, g, n, as_guest(src, prog, g,
                                                                             data, stack)))
