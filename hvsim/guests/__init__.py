"""Assembly sources of the teaching guests, shipped as package data (not jitted).

* ``kernel.s`` -- lesson 02's kernel: written as if it owned ring 0, run by the
  trap-and-emulate monitor (hvsim/monitors/trap_and_emulate.py) in ring 1; its critical section
  ``pushf; cli; ...; popf`` is where x86 fails Popek and Goldberg's theorem 1.
* ``user.s``   -- the ring-3 program the kernel starts: INT 0x80 system calls, a
  deliberate divide error, then work and system calls for ever.
* ``vmm.s``    -- a hypervisor in assembly (SimpleVisor-style): paging, VMXON, VMCLEAR,
  VMPTRLD, VMWRITE, VMLAUNCH; its exit handler emulates CPUID and resumes, and a VMCALL
  from the guest stops it. :func:`hypervisor` assembles it with a guest.

hvsim's assembler has no ``%include``: a guest is linked by concatenation, so the user
program sees the kernel's ``equ`` constants (system call numbers, selectors).

>>> prog = teaching_kernel()
>>> prog.entry == prog.labels["start"], "user" in prog.labels
(True, True)
"""
from __future__ import annotations

from importlib import resources

__all__ = ["source", "teaching_kernel", "hypervisor", "GUESTS"]

#: the guest sources in this package, by name
GUESTS = ("kernel", "user", "vmm")


def source(name: str) -> str:
    """The text of guest ``name`` (one of :data:`GUESTS`)."""
    if name not in GUESTS:
        raise ValueError(f"no guest named {name!r}; the guests are {', '.join(GUESTS)}")
    return resources.files(__package__).joinpath(f"{name}.s").read_text()


def teaching_kernel(user: str | None = None, origin: int = 0x1000, **constants):
    """Assemble kernel.s followed by a ring-3 program (user.s unless ``user`` is given:
    source text that defines the label ``user``). ``constants`` override the guest's
    ``equ`` values by name (e.g. ``PERIOD=300``, ``WORK=100``), so lessons can vary them."""
    from hvsim.asm import assemble
    text = source("kernel") + "\n" + (source("user") if user is None else user)
    return assemble(_with_constants(text, constants), origin=origin)


def _with_constants(text: str, constants: dict) -> str:
    """``text`` with the ``equ`` values named in ``constants`` replaced."""
    lines = text.splitlines()
    for name, value in constants.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {value!r}")
        hits = [i for i, line in enumerate(lines)
                if line.split()[:2] == [name, "equ"]]
        if not hits:
            raise ValueError(f"the guest has no equ constant {name!r}")
        lines[hits[0]] = f"{name:<12}equ {value}"
    return "\n".join(lines) + "\n"


def hypervisor(guest: str, **constants):
    """``(vmm, guest)``: vmm.s assembled at 1000H and ``guest`` (assembly source) at
    vmm.s's GUEST address. Load the first with ``Machine.load`` (4 MiB of memory covers
    both) and write the second's code at its origin; running the machine runs the
    hypervisor, which launches the guest. It halts with ESI = E817H when the guest made
    a VMCALL (EBX = 18), BADH on an exit it does not handle (EBX = the reason), FA11H
    when a VMX instruction failed (EBP = the VM-instruction error). ``constants``
    override vmm.s's ``equ`` values by name: ``SECONDARY=0`` runs the guest without a
    VPID (every VM exit and entry then flushes the TLB)."""
    from hvsim.asm import assemble
    vmm = assemble(_with_constants(source("vmm"), constants), origin=0x1000)
    return vmm, assemble(guest, origin=_equ(source("vmm"), "GUEST"))


def _equ(text: str, name: str) -> int:
    for line in text.splitlines():
        words = line.split(";")[0].split()
        if words[:2] == [name, "equ"]:
            return int(words[2], 0)
    raise ValueError(f"no equ {name!r}")
