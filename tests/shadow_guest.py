"""A small paging guest for the shadow-paging tests (tests/test_shadow*.py), and how to
run it on the hosts of hvsim.workloads and read back what the guest can see."""
import struct

from hvsim import assemble
from hvsim.monitors import Vtx
from hvsim.workloads import HOSTS

PD, PT0, PT1 = 0x20000, 0x21000, 0x22000       # the guest's directory and two tables
IDT, LOG, DATA = 0x30000, 0x31000, 0x40000     # its IDT, its #PF log, data frames
AREA = 0x400000                                # PT1 maps 4 MiB .. 8 MiB
SHADOW_HOSTS = ("shadow", "vtx")

# The prelude: gate 14 -> pf (the code selector read from CS: ring 0 natively and under
# VT-x, ring 1 under trap-and-emulate); PT0 identity-maps 0..1 MiB (A and D preset, as a
# kernel maps itself), PD[0] = PT0, PD[1] = PT1 (empty); CR3, then CR0.PG|WP; `body`
# runs; cli; hlt. The #PF handler logs (CR2, error code) at LOG and skips the faulting
# instruction: the body's faulting accesses are the 2-byte mov eax,[ebx] / mov [ebx],eax.
PRELUDE = f"""
start:
    mov esp, 0xDC000
    mov eax, cs
    shl eax, 16
    mov edx, pf
    and edx, 0xFFFF
    or edx, eax
    mov [{IDT} + 14*8], edx
    mov edx, pf
    and edx, 0xFFFF0000
    or edx, 0x8F00
    mov [{IDT} + 14*8 + 4], edx
    lidt [idtr]
    mov edi, {PT0}
    mov eax, 0x67
    mov ecx, 256
.fill:
    mov [edi], eax
    add eax, 0x1000
    add edi, 4
    loop .fill
    mov dword [{PD}], {PT0} | 0x67
    mov dword [{PD} + 4], {PT1} | 0x27
    mov eax, {PD}
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80010000
    mov cr0, eax
    call body
    cli
    hlt
pf:
    push eax
    push ebx
    mov ebx, [{LOG}]
    mov eax, cr2
    mov [{LOG} + 4 + ebx*8], eax
    mov eax, [esp + 8]
    mov [{LOG} + 8 + ebx*8], eax
    inc dword [{LOG}]
    add dword [esp + 12], 2
    pop ebx
    pop eax
    add esp, 4
    iret
idtr:
    dw 0x7FF
    dd {IDT}
"""


def program(body: str):
    return assemble(PRELUDE + "body:\n" + body + "\n    ret\n", origin=0x1000)


def run(host: str, body: str, budget: int = 200_000):
    mon, ev = HOSTS[host](program(body), budget)
    assert ev.kind == "halt", (host, ev)
    return mon


def regs(mon):
    cpu = mon.machine.cpu if not isinstance(mon, Vtx) else None
    if cpu is None:
        r = mon.kvm.regs
        return tuple(r[n] for n in ("eax", "ecx", "edx", "ebx", "esi", "edi"))
    return tuple(int(getattr(cpu, n)) for n in ("eax", "ecx", "edx", "ebx", "esi", "edi"))


def faults(mon):
    mem = mon.machine.memory
    n = int.from_bytes(mem[LOG:LOG + 4].tobytes(), "little")
    return [struct.unpack("<II", mem[LOG + 4 + 8 * i:LOG + 12 + 8 * i].tobytes()) for i in range(n)]


def entries(mon, table, n=16):
    return struct.unpack(f"<{n}I", mon.machine.memory[table:table + 4 * n].tobytes())


def guest_view(mon):
    """Everything of the guest these tests compare: registers, #PF log, its PD, PT1 and
    the data frames."""
    mem = mon.machine.memory
    return (regs(mon), faults(mon), mem[PD:PD + 8].tobytes(), mem[PT1:PT1 + 4096].tobytes(),
            mem[DATA:DATA + 16 * 4096].tobytes())


def shadow_of(mon):
    return mon.shadow_mmu


def same_as_native(body, hosts=SHADOW_HOSTS + ("ept",)):
    """Run ``body`` natively and on ``hosts``: the guest's view must be identical."""
    native = run("native", body)
    out = {}
    for h in hosts:
        mon = run(h, body)
        assert guest_view(mon) == guest_view(native), h
        out[h] = mon
    return native, out


def pte(frame, flags):
    return (frame & ~0xFFF) | flags


