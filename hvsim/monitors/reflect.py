"""Reflection: delivering an event through the guest's *virtual* IDT (Python, not jitted).

When a software monitor owns the real IDT, the guest's own exceptions, system calls and
(virtual) interrupts reach the monitor first; the monitor then does in software what the
CPU does in hardware (SDM Vol. 3A, 6.12.1): read the gate from the IDT the guest loaded
with LIDT, switch to the guest kernel's stack if the guest was in an outer ring (the
stack named by its TSS), push the frame -- SS, ESP if the ring changes, EFLAGS as the
guest believes it is, CS, EIP, and the error code for the vectors that have one --
clear TF/NT/RF/VM, clear the (virtual) IF for an interrupt gate, and jump to the
handler. Anything a real CPU would fault on kills the guest here, with the reason: the
monitor has nothing sensible to reflect into.
"""
from __future__ import annotations

import struct
from typing import Optional

from hvsim.arch.flags import TF, NT, RF, VM
from hvsim.machine import GuestMemoryError, Machine
from hvsim.monitors.base import Kill
from hvsim.monitors.vcpu import VirtualCPU
from hvsim.rings import decode_descriptor
from hvsim.rings.descriptors import TSS_ESP0, SYS_INT_GATE32, SYS_TRAP_GATE32
from hvsim.arch.vectors import vector_name

__all__ = ["reflect", "gate", "gdt_descriptor", "GATE_SIZE", "TSS_ESP1", "DELIVER_CLEAR"]

MASK32 = 0xFFFFFFFF
GATE_SIZE = 8                          # an IDT entry (SDM Vol. 3A, 6.11, Figure 6-2)
TSS_ESP1 = TSS_ESP0 + 8                # TSS32: ESPn at 4 + 8n, SSn at 8 + 8n (Fig. 7-2)
DELIVER_CLEAR = TF | NT | RF | VM      # cleared in EFLAGS on every delivery (6.12.1.3)


def read(m: Machine, lin: int, n: int) -> bytes:
    """Guest memory for the monitor; a fault there is the guest's end (Kill)."""
    try:
        return m.read_linear(lin, n)
    except GuestMemoryError as e:
        raise Kill(f"guest memory at {lin:#010x}: {e}") from None


def write(m: Machine, lin: int, data: bytes) -> None:
    try:
        m.write_linear(lin, data)
    except GuestMemoryError as e:
        raise Kill(f"guest memory at {lin:#010x}: {e}") from None


def stack_linear(m: Machine, esp: int) -> int:
    return (m.cpu.segment("ss")["base"] + esp) & MASK32


def gdt_descriptor(m: Machine, sel: int):
    """The GDT descriptor ``sel`` names, decoded (hvsim.rings.decode_descriptor)."""
    cpu = m.cpu
    index = sel & ~7
    if sel & 4 or index == 0 or index + 7 > cpu.gdtr_limit:
        raise Kill(f"selector {sel:#x} is not a GDT entry")
    return decode_descriptor(int.from_bytes(read(m, cpu.gdtr_base + index, 8), "little"))


def gate(m: Machine, vcpu: VirtualCPU, vector: int):
    """The guest's virtual IDT entry for ``vector``, decoded: a present 32-bit interrupt
    or trap gate, or the guest is killed."""
    if vector * GATE_SIZE + GATE_SIZE - 1 > vcpu.idtr_limit:
        raise Kill(f"{vector_name(vector)} is outside the guest's virtual IDT "
                   f"(limit {vcpu.idtr_limit:#x}): on real hardware, a double fault")
    raw = int.from_bytes(read(m, vcpu.idtr_base + vector * GATE_SIZE, GATE_SIZE), "little")
    g = decode_descriptor(raw)
    if g.s or g.type not in (SYS_INT_GATE32, SYS_TRAP_GATE32) or not g.p:
        raise Kill(f"the guest has no present 32-bit interrupt or trap gate for "
                   f"{vector_name(vector)} (IDT entry: {g})")
    return g


def reflect(m: Machine, vcpu: VirtualCPU, vector: int, error: Optional[int], ret_eip: int, *,
            guest_ring: int, tss: int) -> int:
    """Deliver ``vector`` through the guest's virtual IDT as the CPU would through a real
    one (SDM Vol. 3A, 6.12.1); returns the handler's address.

    ``guest_ring`` is the real ring the guest kernel runs in (its virtual ring 0), and
    ``tss`` the linear address of the TSS whose SS/ESP for that ring the stack switch
    uses when the guest was in an outer ring.
    """
    cpu = m.cpu
    g = gate(m, vcpu, vector)
    code = gdt_descriptor(m, g.selector)
    if code.kind != "code" or not code.p or code.dpl != guest_ring:
        raise Kill(f"the gate for {vector_name(vector)} names selector {g.selector:#x}, "
                   f"not a present ring-{guest_ring} code segment ({code})")
    image = vcpu.eflags_image(cpu.eflags)
    old_cs, old_ss, old_esp = cpu.cs, cpu.ss, cpu.esp
    if cpu.cpl > guest_ring:
        # entering the guest kernel from its user ring: the stack of TSS.SSn:ESPn, with
        # the old SS:ESP pushed first
        esp, ss = struct.unpack("<II", read(m, tss + TSS_ESP0 + 8 * (guest_ring), 8))
        ss &= 0xFFFF
        frame = [old_ss, old_esp, image, old_cs, ret_eip]
    else:
        esp, ss = old_esp, old_ss
        frame = [image, old_cs, ret_eip]
    if error is not None:
        frame.append(error)
    try:
        cpu.ss = ss
    except ValueError as e:
        raise Kill(f"TSS.SS{guest_ring} = {ss:#x} is not a usable stack segment: {e}") from None
    new_esp = (esp - 4 * len(frame)) & MASK32
    # pushed in ``frame`` order, so the last push (EIP or the error code) is at new_esp
    write(m, stack_linear(m, new_esp), struct.pack(f"<{len(frame)}I", *reversed(frame)))
    cpu.esp = new_esp
    cpu.cs = (g.selector & ~3) | guest_ring
    cpu.eip = g.offset
    cpu.eflags = cpu.eflags & ~DELIVER_CLEAR
    if g.type == SYS_INT_GATE32:
        vcpu.IF = 0                    # an interrupt gate clears IF; a trap gate does not
    return g.offset
