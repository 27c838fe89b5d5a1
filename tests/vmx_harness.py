"""The assembly VMM the VT-x test files share (test tooling, not a test module; not jitted).

A SimpleVisor-shaped hypervisor written in guest assembly, as tests/test_vmx.py's: it
sets IA32_FEATURE_CONTROL, VMXON, VMCLEAR, VMPTRLD, writes a table of (encoding, value)
pairs with VMWRITE, loads the guest's general registers from ``entry_gprs`` and runs
an entry instruction (VMLAUNCH unless the test asks for another sequence). Then:

* the entry fell through (VMfailInvalid / VMfailValid): the code after it halts with
  EDI = EFLAGS, EBP = the VM-instruction error field, ESI = FELL (0xFA11);
* a VM exit (or a failed entry, which loads host state as an exit does) lands at
  HOST_RIP, which first stores the eight general registers as the guest left them at
  ``exit_gprs`` (a VM exit saves only RSP/RIP/RFLAGS into the VMCS: SDM Vol. 3C, 28.3),
  then halts with EBX = exit reason, ECX = exit qualification, EDX = VM-exit
  instruction length, ESI = EXITED (0xE817).

Memory map (4 MiB, identity-mapped with 4 KiB user pages; nothing of the VMM's in the
windows tests/test_differential.py's programs use: code 0x1000-0x5000, data
0x100000-0x110000, stack 0x200000-0x204000):

    0x00400 GDT, 0x00480 TSS (hvsim.rings.setup.install)   0x10000 host IDT
    0x09000 host stack top                                 0x30000 the VMM's code
    0x50000 root-mode scratch code (continuations)
    0x120000 VMXON region, 0x121000 VMCS A, 0x122000 VMCS B, 0x123000 a region whose
             revision identifier is wrong
    0x130000 I/O bitmap A, 0x131000 I/O bitmap B, 0x132000 MSR bitmap, 0x133000 EPT PML4
    0x240000 guest code, 0x250000 guest IDT, 0x260000 guest data, 0x280000 guest stack
    0x300000 page directory and table
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from hvsim import Machine, assemble
from hvsim.arch import layout as L
from hvsim.arch import vmcs as V
from hvsim.arch import vmx as X
from hvsim.arch.cr import CR0_NE, CR4_VMXE
from hvsim.arch.flags import FIXED1
from hvsim.rings import make_gate, put_descriptors
from hvsim.rings.setup import install
from hvsim.warmup import enable_paging, identity_map_4k

MEM = 4 << 20
HOST_STACK = 0x9000
HOST_CODE = 0x30000
SCRATCH = 0x50000
VMXON_REGION = 0x120000
VMCS_A = 0x121000
VMCS_B = 0x122000
BAD_REVISION_REGION = 0x123000
IO_BITMAP_A = 0x130000
IO_BITMAP_B = 0x131000
MSR_BITMAP = 0x132000
EPT_PML4 = 0x133000
GUEST_CODE = 0x240000
GUEST_IDT = 0x250000
GUEST_DATA = 0x260000
GUEST_STACK = 0x280000
PD = 0x300000

EXITED = 0xE817          # ESI after HOST_RIP's code ran
FELL = 0xFA11            # ESI after the entry instruction fell through
IA32_FEATURE_CONTROL = 0x3A
FEATURE_CONTROL_OK = X.FEATURE_CONTROL_LOCK | X.FEATURE_CONTROL_VMX_OUTSIDE_SMX
ENCODING = {**V.FIELDS, **{n + "_HIGH": e | 1 for n, e in V.FIELDS.items()
                           if V.width_of(e) == V.W64}}
GPRS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")

HYPERVISOR = """
start:
    mov ecx, 0x3a            ; IA32_FEATURE_CONTROL: lock | VMX outside SMX
    mov eax, 5
    xor edx, edx
    wrmsr
    vmxon [vmxon_ptr]
    vmclear [vmcs_ptr]
    vmptrld [vmcs_ptr]
    mov esi, table
next:
    mov eax, [esi]
    cmp eax, 0xffffffff
    je launch
    mov ebx, [esi+4]
    vmwrite eax, ebx
    add esi, 8
    jmp next
launch:
    mov eax, [entry_gprs]
    mov ecx, [entry_gprs+4]
    mov edx, [entry_gprs+8]
    mov ebx, [entry_gprs+12]
    mov ebp, [entry_gprs+20]
    mov esi, [entry_gprs+24]
    mov edi, [entry_gprs+28]
@ENTRY@
    pushfd                   ; the entry fell through: flags and the error number
    pop edi
    mov eax, 0x4400
    vmread ebp, eax
    mov esi, 0xfa11
    hlt
host_rip:
    mov [exit_gprs], eax
    mov [exit_gprs+4], ecx
    mov [exit_gprs+8], edx
    mov [exit_gprs+12], ebx
    mov [exit_gprs+16], esp
    mov [exit_gprs+20], ebp
    mov [exit_gprs+24], esi
    mov [exit_gprs+28], edi
    mov eax, 0x4402
    vmread ebx, eax          ; exit reason
    mov eax, 0x6400
    vmread ecx, eax          ; exit qualification
    mov eax, 0x440c
    vmread edx, eax          ; VM-exit instruction length
    mov esi, 0xe817
    hlt
align 8
vmxon_ptr: dd 0x120000, 0
vmcs_ptr: dd 0x121000, 0
entry_gprs: times 8 dd 0
exit_gprs: times 8 dd 0
table: times 512 dd 0
"""


def vmx_machine(**machine):
    """A protected-mode machine with paging, CR0.NE and CR4.VMXE, ready for VMXON (the
    VMXON region and VMCS A and B carry hvsim's revision identifier); ``machine`` goes
    to Machine() (tlb, blocks, decode_cache)."""
    m = Machine(memory=MEM, **machine)
    t = install(m)
    enable_paging(m, identity_map_4k(m.memory, PD, MEM))
    m.cpu.cr0 = int(m.cpu.cr0) | CR0_NE
    m.cpu.cr4 = int(m.cpu.cr4) | CR4_VMXE
    m.cpu.esp = HOST_STACK
    for region in (VMXON_REGION, VMCS_A, VMCS_B):
        m.write_physical(region, X.VMCS_REVISION_ID.to_bytes(4, "little"))
    m.write_physical(BAD_REVISION_REGION, (X.VMCS_REVISION_ID + 1).to_bytes(4, "little"))
    return m, t


def host_fields(m, t, host_rip):
    cs, ds = t.code(0), t.data(0)
    return {
        "HOST_CR0": int(m.cpu.cr0), "HOST_CR3": int(m.cpu.cr3), "HOST_CR4": int(m.cpu.cr4),
        "HOST_CS_SELECTOR": cs, "HOST_SS_SELECTOR": ds, "HOST_DS_SELECTOR": ds,
        "HOST_ES_SELECTOR": ds, "HOST_FS_SELECTOR": ds, "HOST_GS_SELECTOR": ds,
        "HOST_TR_SELECTOR": t.tss_selector, "HOST_TR_BASE": int(m._st[L.TR_BASE]),
        "HOST_GDTR_BASE": int(m._st[L.GDTR_BASE]), "HOST_IDTR_BASE": int(m._st[L.IDTR_BASE]),
        "HOST_RSP": HOST_STACK, "HOST_RIP": host_rip,
    }


def segment_ar(code: bool, ring: int) -> int:
    """VMCS access rights of a flat accessed 32-bit segment, 4 KiB granular."""
    return ((0xB if code else 0x3) | L.AR_S | (ring << L.AR_DPL_SHIFT) | L.AR_P | L.AR_DB
            | L.AR_G)


def guest_fields(m, t, ring=0):
    """A valid guest-state area: the guest runs on the host's GDT, IDT and page tables,
    in ``ring``, at GUEST_CODE with its stack at GUEST_STACK."""
    st = m._st
    f = {}
    for i, name in enumerate(("ES", "CS", "SS", "DS", "FS", "GS")):
        f[f"GUEST_{name}_SELECTOR"] = t.code(ring) if i == 1 else t.data(ring)
        f[f"GUEST_{name}_BASE"] = 0
        f[f"GUEST_{name}_LIMIT"] = 0xFFFFFFFF
        f[f"GUEST_{name}_AR_BYTES"] = segment_ar(i == 1, ring)
    f.update({
        "GUEST_TR_SELECTOR": t.tss_selector, "GUEST_TR_BASE": int(st[L.TR_BASE]),
        "GUEST_TR_LIMIT": int(st[L.TR_LIMIT]), "GUEST_TR_AR_BYTES": 11 | L.AR_P,
        "GUEST_LDTR_AR_BYTES": L.AR_UNUSABLE,
        "GUEST_GDTR_BASE": int(st[L.GDTR_BASE]), "GUEST_GDTR_LIMIT": int(st[L.GDTR_LIMIT]),
        "GUEST_IDTR_BASE": int(st[L.IDTR_BASE]), "GUEST_IDTR_LIMIT": int(st[L.IDTR_LIMIT]),
        "GUEST_CR0": int(m.cpu.cr0), "GUEST_CR3": int(m.cpu.cr3), "GUEST_CR4": int(m.cpu.cr4),
        "GUEST_DR7": 0x400, "GUEST_RSP": GUEST_STACK, "GUEST_RIP": GUEST_CODE,
        "GUEST_RFLAGS": FIXED1, "VMCS_LINK_POINTER": 0xFFFFFFFF,
        "VMCS_LINK_POINTER_HIGH": 0xFFFFFFFF,
    })
    return f


def controls():
    """The smallest valid controls: every allowed-0 bit of the TRUE capability MSRs."""
    return {"PIN_BASED_VM_EXEC_CONTROL": X.PIN_TRUE_ALLOWED0,
            "CPU_BASED_VM_EXEC_CONTROL": X.CPU_TRUE_ALLOWED0,
            "VM_EXIT_CONTROLS": X.EXIT_TRUE_ALLOWED0,
            "VM_ENTRY_CONTROLS": X.ENTRY_TRUE_ALLOWED0}


def field_table(fields: dict) -> bytes:
    """(encoding, value) dword pairs for the VMM's VMWRITE loop, ended by FFFFFFFFH. A
    name ending in _HIGH is the high half of a 64-bit field (encoding | 1)."""
    out = bytearray()
    for name, value in fields.items():
        out += ENCODING[name].to_bytes(4, "little") + (value & 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(out + (0xFFFFFFFF).to_bytes(4, "little"))


@dataclasses.dataclass
class VmxRun:
    """A machine after the VMM halted (or after ``budget`` steps)."""
    m: Machine
    ev: object
    hv: object                # the VMM's assembled Program (labels)
    guest: object             # the guest's assembled Program
    t: object                 # hvsim.rings.setup.SystemTables
    prog: object = None       # the last root() program

    @property
    def exited(self) -> bool:
        return self.m.cpu.esi == EXITED

    @property
    def fell_through(self) -> bool:
        return self.m.cpu.esi == FELL

    @property
    def reason(self) -> int:
        return self.m.cpu.ebx

    @property
    def qualification(self) -> int:
        return self.m.cpu.ecx

    @property
    def length(self) -> int:
        return self.m.cpu.edx

    def vmcs(self, name: str) -> int:
        """A field of the current VMCS as VMREAD (32-bit operand size) returns it."""
        v = int(self.m._st[V.state_index(name)])
        if name.endswith("_HIGH"):
            return (v >> 32) & 0xFFFFFFFF
        enc = V.FIELDS[name]
        return v & (0xFFFF if V.width_of(enc) == V.W16 else 0xFFFFFFFF)

    def vmcs64(self, name: str) -> int:
        return int(self.m._st[V.state_index(name)]) & 0xFFFFFFFFFFFFFFFF

    def exit_gprs(self) -> dict:
        """The guest's general registers at the VM exit, as HOST_RIP stored them; ESP is
        the guest's (GUEST_RSP), not the host stack the exit switched to."""
        raw = self.m.read_linear(self.hv.labels["exit_gprs"], 32)
        regs = {n: int.from_bytes(raw[4 * i:4 * i + 4], "little") for i, n in enumerate(GPRS)}
        regs["esp"] = self.vmcs("GUEST_RSP")
        return regs

    def root(self, src: str, budget: int = 100_000):
        """Run ``src`` (root-mode code at SCRATCH, ring 0) on the machine as it is now:
        a VMM's continuation after the exit. Returns the run() event."""
        prog = assemble(src, origin=SCRATCH)
        self.m.write_physical(SCRATCH, prog.code)
        self.m.cpu.eip = SCRATCH
        self.prog = prog
        self.ev = self.m.run(max_steps=budget)
        return self.ev

    def words(self, label: str, n: int) -> list:
        """``n`` dwords at a label of the last root() program."""
        raw = self.m.read_linear(self.prog.labels[label], 4 * n)
        return [int.from_bytes(raw[4 * i:4 * i + 4], "little") for i in range(n)]

    def resume(self, fields: Optional[dict] = None, advance: bool = True, budget: int = 100_000):
        """VMRESUME after the last exit: RIP += the VM-exit instruction length (unless
        ``advance`` is False), ``fields`` written first; the VMM's HOST_RIP code runs
        again at the next exit (it halts there)."""
        lines = []
        if advance:
            lines += ["mov eax, 0x681e", "vmread ebx, eax", "mov ecx, 0x440c",
                      "vmread edx, ecx", "add ebx, edx", "vmwrite eax, ebx"]
        for name, value in (fields or {}).items():
            lines += [f"mov eax, {ENCODING[name]:#x}", f"mov ebx, {value & 0xFFFFFFFF:#x}",
                      "vmwrite eax, ebx"]
        lines += ["vmresume", "pushfd", "pop edi", "mov eax, 0x4400", "vmread ebp, eax",
                  f"mov esi, {FELL:#x}", "hlt"]
        return self.root("\n".join(lines), budget)


def gate(m, idt: int, vector: int, handler: int, selector: int, *, kind="interrupt", dpl=0):
    """IDT[vector] at ``idt`` = a 32-bit ``kind`` gate to selector:handler."""
    put_descriptors(m.memory, idt + 8 * vector, [make_gate(kind, selector, handler, dpl)])


def vmx_run(guest_src: str, fields: Optional[dict] = None, *, guest_ring: int = 0,
            budget: int = 100_000, drop=(), entry: str = "vmlaunch",
            gprs: Optional[dict] = None, guest_origin: int = GUEST_CODE,
            setup: Optional[Callable] = None, timer=None, machine=None) -> VmxRun:
    """Assemble ``guest_src`` at ``guest_origin`` and run it under the VMM with a valid
    VMCS, updated by ``fields`` (a value None removes a field: it is never written, so
    it keeps the 0 VMCLEAR left) and without the fields named in ``drop``. ``entry``
    replaces the VMLAUNCH line (e.g. "mov ax, ss\\nmov ss, ax\\nvmlaunch"); ``gprs`` are
    the guest's general registers at entry (by name; ESP comes from GUEST_RSP);
    ``setup(m, t, hv, guest)`` runs before the machine does (bitmaps, IDT gates);
    ``timer`` goes to Machine.set_timer; ``machine`` (a dict) to Machine()."""
    m, t = vmx_machine(**(machine or {}))
    hv = assemble(HYPERVISOR.replace("@ENTRY@", entry), origin=HOST_CODE)
    m.load(hv)
    guest = assemble(guest_src, origin=guest_origin)
    m.write_physical(guest_origin, guest.code)
    all_fields = host_fields(m, t, hv.labels["host_rip"])
    all_fields.update(guest_fields(m, t, guest_ring))
    if guest_origin != GUEST_CODE:
        all_fields["GUEST_RIP"] = guest_origin
    all_fields.update(controls())
    for name, value in (fields or {}).items():
        if value is None:
            all_fields.pop(name, None)
        else:
            all_fields[name] = value
    for name in drop:
        all_fields.pop(name)
    m.write_physical(hv.labels["table"], field_table(all_fields))
    regs = bytearray(32)
    for name, value in (gprs or {}).items():
        i = GPRS.index(name)
        regs[4 * i:4 * i + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
    m.write_physical(hv.labels["entry_gprs"], bytes(regs))
    if setup is not None:
        setup(m, t, hv, guest)
    if timer is not None:
        m.set_timer(timer)
    ev = m.run(max_steps=budget)
    return VmxRun(m, ev, hv, guest, t)


def root_run(src: str, *, feature_control: Optional[int] = FEATURE_CONTROL_OK,
             budget: int = 100_000, ring: int = 0, setup: Optional[Callable] = None):
    """Run root-mode code ``src`` (assembled at HOST_CODE) on a fresh vmx_machine(),
    IA32_FEATURE_CONTROL preset to ``feature_control`` (None: left 0, unlocked).
    Returns (machine, event, program)."""
    m, t = vmx_machine()
    if feature_control is not None:
        m._st[L.MSR_FEATURE_CONTROL_SLOT] = feature_control
    prog = assemble(src, origin=HOST_CODE)
    m.load(prog)
    if ring != 0:
        t.enter(m, ring=ring, eip=HOST_CODE, esp=HOST_STACK)
    if setup is not None:
        setup(m, t, prog)
    ev = m.run(max_steps=budget)
    return m, ev, prog
