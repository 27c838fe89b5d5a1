"""Assembly sources of the teaching guests, shipped as package data (not jitted).

* ``kernel.s`` -- lesson 02's kernel: written as if it owned ring 0, run by the
  trap-and-emulate monitor (hvsim/monitors/trap_and_emulate.py) in ring 1; its critical section
  ``pushf; cli; ...; popf`` is where x86 fails Popek and Goldberg's theorem 1.
* ``user.s``   -- the ring-3 program the kernel starts: INT 0x80 system calls, a
  deliberate divide error, then work and system calls for ever.
* ``mm.s``     -- a paging kernel with selectable memory-management workloads (process
  creation, context switches, a working set larger than the TLB, demand paging and
  copy-on-write faults, a compute loop) that runs unchanged natively, under shadow
  paging and under EPT; :func:`mm_kernel` assembles it, hvsim/workloads.py runs it.
* ``minios.s`` -- one teaching kernel, two builds: its sensitive operations sit behind
  one layer of macros (as Linux's behind pv_ops), built natively (ring 0, or ring 1
  under trap-and-emulate, or VMX non-root) or paravirtualized for hvsim's Xen-shaped
  hypervisor (``PV`` defined); system-call, page-table-update and block-I/O workloads;
  :func:`minios` assembles it, hvsim/pvworkloads.py runs it on every host.
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

__all__ = ["source", "teaching_kernel", "hypervisor", "mm_kernel", "minios", "GUESTS",
           "KERNEL_PARAMS", "MM_WORKLOADS", "MM_PARAMS", "MINIOS_WORKLOADS", "MINIOS_PARAMS",
           "check_params"]

#: the guest sources in this package, by name
GUESTS = ("kernel", "user", "vmm", "mm", "minios")


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


#: the teaching kernel's parameters a caller may set, and the largest value of each:
#: kernel.s's PERIOD (the timer period in instructions, a dword OUT) and user.s's WORK
#: (the LOOP count between two system calls: 0 would loop 2^32 times).
#: :func:`teaching_kernel` sets any ``equ`` value; these are the ones that change only
#: how much the guest does, not where it runs (KCODE, the selectors, the IDT's address)
KERNEL_PARAMS = {"PERIOD": 0xFFFFFFFF, "WORK": 0xFFFFFFFF}


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
        lines[hits[0]] = f"{name:<12} equ {value}"
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


#: mm.s's workloads by name: the bits of its WORKLOAD mask ("mixed" runs them all, in
#: this order)
MM_WORKLOADS = {"fork": 1, "ctxsw": 2, "wss": 4, "demand": 8, "compute": 16, "mixed": 31}

#: mm.s's parameters (its ``equ`` constants a caller may set) and the largest value of
#: each the kernel can hold: a directory's worth of pages, its table of spaces, its fault
#: log does not limit (it counts what it drops); the frame pool (176 frames) is checked
#: by the kernel itself, which stops with status BAD3H when it runs dry
MM_PARAMS = {"ROUNDS": 1 << 16, "N_PAGES": 1024, "STRIDE": 4096, "K_SPACES": 16,
             "PAGES_PER": 1024, "WS_PAGES": 1024, "N_DEMAND": 1024, "COW_PAGES": 1024,
             "ITER": 1 << 30}


def mm_kernel(workload: str = "mixed", **params):
    """Assemble mm.s at 1000H running ``workload`` (a name of :data:`MM_WORKLOADS`).
    ``params`` set its parameters (:data:`MM_PARAMS`; the defaults are in mm.s), each an
    int from 1 to its maximum; STRIDE must be a multiple of 4 that divides 4096.

    >>> prog = mm_kernel("wss", WS_PAGES=100)
    >>> prog.labels["WORKLOAD"], prog.labels["WS_PAGES"], hex(prog.labels["RESULTS"])
    (4, 100, '0x21000')
    """
    from hvsim.asm import assemble
    constants = _workload_constants("mm", workload, MM_WORKLOADS, params, MM_PARAMS)
    stride = params.get("STRIDE")
    if stride is not None and (stride % 4 or 4096 % stride):
        raise ValueError(f"STRIDE must be a multiple of 4 that divides 4096, got {stride}")
    return assemble(_with_constants(source("mm"), constants), origin=0x1000)


def _workload_constants(guest: str, workload: str, workloads: dict, params: dict,
                        limits: dict) -> dict:
    """The ``equ`` values a build of ``guest`` sets: ``params``, each checked against its
    maximum in ``limits``, and WORKLOAD, the mask of ``workload`` (a name of ``workloads``)."""
    if workload not in workloads:
        raise ValueError(f"no {guest} workload named {workload!r}; the workloads are "
                         f"{', '.join(workloads)}")
    check_params(f"{guest}.s", params, limits)
    return dict(params, WORKLOAD=workloads[workload])


def check_params(guest: str, params: dict, limits: dict) -> dict:
    """``params`` when each names one of ``limits`` (a guest's parameters: name -> the
    largest value) with an int from 1 to its maximum; else a ValueError that names
    ``guest`` (in words: 'mm.s', 'the teaching kernel') and the bad parameter.

    >>> check_params("the teaching kernel", {"PERIOD": 300}, KERNEL_PARAMS)
    {'PERIOD': 300}
    """
    for name, value in params.items():
        if name not in limits:
            raise ValueError(f"{guest} has no parameter {name!r}; its parameters are "
                             f"{', '.join(limits)}")
        if isinstance(value, bool) or not isinstance(value, int) \
                or not 1 <= value <= limits[name]:
            raise ValueError(f"{name} must be an int from 1 to {limits[name]}, got {value!r}")
    return params


#: minios.s's workloads by name: the bits of its WORKLOAD mask ("all" runs them all, in
#: this order)
MINIOS_WORKLOADS = {"syscall": 1, "ptupdate": 2, "io": 4, "all": 7}

#: minios.s's parameters and the largest value of each: the window's frame sets and the
#: frame pool hold 32 frames (a child takes CHILD_PAGES + 2), the buffers and every host's
#: disk 64 sectors; the PV build's mmu_update queue lives in its image
MINIOS_PARAMS = {"N_SYSCALLS": 1 << 20, "ROUNDS": 1 << 16, "N_PTES": 32, "CHILD_PAGES": 30,
                 "FLUSH_CEILING": 32, "MMU_BATCH": 256, "N_SECTORS": 64}


def minios(pv: bool = False, workload: str = "all", **params):
    """Assemble minios.s at 1000H running ``workload`` (a name of
    :data:`MINIOS_WORKLOADS`): natively, or with ``pv`` the paravirtualized build
    (``defines={"PV": 1}``: the platform layer's other half). ``params`` set its
    parameters (:data:`MINIOS_PARAMS`; the defaults are in minios.s), each an int from 1
    to its maximum.

    >>> native, pv = minios(workload="io", N_SECTORS=8), minios(True, "io", N_SECTORS=8)
    >>> native.labels["WORKLOAD"], native.labels["N_SECTORS"], "hypercall_page" in native.labels
    (4, 8, False)
    >>> hex(pv.labels["hypercall_page"]), pv.labels["RESULTS"] == native.labels["RESULTS"]
    ('0x1000', True)
    """
    from hvsim.asm import assemble
    if not isinstance(pv, bool):
        raise TypeError(f"pv must be True or False, got {pv!r}")
    constants = _workload_constants("minios", workload, MINIOS_WORKLOADS, params,
                                    MINIOS_PARAMS)
    return assemble(_with_constants(source("minios"), constants), origin=0x1000,
                    defines={"PV": 1} if pv else None)
