"""The memory-management workloads and their differential harness (Python, not jitted).

hvsim/guests/mm.s is one paging kernel with five workloads -- process creation ("fork"),
context switches among address spaces ("ctxsw"), a working set larger than the TLB
("wss"), demand paging with copy-on-write faults ("demand"), a compute loop
("compute"), or all of them ("mixed"). The same binary runs on every host in
:data:`HOSTS`; :func:`run` runs one and collects what the *guest* can see:

* the final event (a clean halt: HLT with IF = 0),
* the general registers EAX..EDI except ESP (the hosts' stacks differ),
* the RESULTS area (checksums, A/D counts, the pool, the fault log; mm.s's header
  draws it),
* the paging area: the kernel's directory and identity table and the whole frame pool,
  so the A and D bits the hardware set in the guest's own PTEs, and its data, are
  compared byte for byte,
* the fault log decoded -- (CR2, error code) of every #PF the guest's handler took,
* the console.

Two hosts must agree on all of it: that is the differential test (issue 14). Whatever
else differs is the host's business and stays out of the comparison: the IDT (its gates
hold the code selector, ring 0 or ring 1), the stacks, the monitor's counters and
tables. Guest-physical addresses are read as the machine's physical ones, which holds on
every host here (guest RAM is the first 1 MiB of the machine).

Adding a host is one entry in :data:`HOSTS`: a function ``(program, budget) ->
(monitor, event)`` that boots ``program`` at its entry point and runs it.

>>> r = run("compute", ITER=100)
>>> r.event.kind, r.status == STATUS_OK, r.regs["ebp"] == 16
('halt', True, True)
>>> r.guest_state() == run("compute", host="ept", ITER=100).guest_state()
True
"""
from __future__ import annotations

import dataclasses
import struct
from typing import NamedTuple

from hvsim.guests import MM_PARAMS, MM_WORKLOADS, mm_kernel
from hvsim.machine import Event, Machine
from hvsim.monitors import Native, TrapAndEmulate, Vtx
from hvsim.monitors.devices import BlockDevice
from hvsim.rings.setup import install

__all__ = ["HOSTS", "WORKLOADS", "run", "GuestResult", "WorkloadResult", "WorkloadError", "GuestState",
           "Record", "differences", "gprs", "STATUS_OK", "GUEST_RAM", "DEFAULT_BUDGET"]

#: the workloads by name (:data:`hvsim.guests.MM_WORKLOADS`)
WORKLOADS = tuple(MM_WORKLOADS)
#: the guest's RAM on every host (mm.s's layout assumes 1 MiB)
GUEST_RAM = 1 << 20
DEFAULT_BUDGET = 2_000_000
#: mm.s's RESULTS status words
STATUS_OK = 0x600D
STATUS = {0x600D: "done", 0xBAD1: "unexpected #PF", 0xBAD2: "unexpected exception",
          0xBAD3: "the frame pool ran dry", 0: "not finished"}
# the per-workload records of RESULTS, in mm.s's order
_RECORDS = ("fork", "ctxsw", "wss", "demand", "compute")
_GPRS = ("eax", "ecx", "edx", "ebx", "ebp", "esi", "edi")


# ---- the hosts ------------------------------------------------------------------------
def _started(mon, budget: int):
    """(monitor, the event its run ended with): a host built from a booted monitor."""
    return mon, mon.run(budget)


def _native(program, budget: int):
    """The bare machine: ring 0, the guest's own IDT takes its exceptions; a disk on
    ports 1F0h-1F7h, as the other hosts give one."""
    m = Machine(memory=GUEST_RAM, exceptions="guest")
    install(m)
    return _started(Native(machine=m, program=program, devices=[BlockDevice()]), budget)


#: host name -> function(program, budget) -> (monitor, final event). A monitor that
#: boots a program given to its constructor is one line.
HOSTS: dict = {
    "native": _native,
    # trap-and-emulate (the guest kernel in ring 1): shadow page tables
    "shadow": lambda program, budget: _started(TrapAndEmulate(program=program), budget),
    # ... with KVM's unsync leaf tables: guest PTE writes are not trapped until a flush
    "shadow-unsync": lambda program, budget: _started(
        TrapAndEmulate(program=program, unsync=True), budget),
    # VT-x, ring 0 of VMX non-root (1 MiB of guest RAM): without EPT the VMM keeps shadow
    # page tables (CR3-load, INVLPG and #PF exits), with EPT nested paging
    "vtx": lambda program, budget: _started(Vtx(program=program, ept=False), budget),
    "ept": lambda program, budget: _started(Vtx(program=program, ept=True), budget),
}

# ---- binary translation (hvsim/bt) ------------------------------------------------------
def _bt(program, budget: int):
    """VMware-style binary translation: the kernel from a translation cache at ring 1,
    shadow paging from boot (hvsim/bt/monitor.py)."""
    from hvsim.bt import BinaryTranslator
    return _started(BinaryTranslator(program=program), budget)


HOSTS["bt"] = _bt


# ---- emulation (issue 16): the guest at its own ring 0 on a software CPU, with the model
# of Bochs (interpret) or QEMU TCG (translate); 1 MiB of guest RAM below the monitor's
# trace buffer, the rings' stacks where the bare machine's 1 MiB would put them
def _emulated(mode: str):
    def host(program, budget: int):
        from hvsim.emulation.monitor import Emulator
        mon = Emulator(mode=mode, devices=[BlockDevice()])
        mon.boot(program)
        return _started(mon, budget)
    host.__doc__ = f"Emulator(mode={mode!r}) with the bare machine's disk."
    return host


HOSTS["emulate"] = _emulated("interpret")
HOSTS["dbt"] = _emulated("translate")


# ---- the results ----------------------------------------------------------------------
class Record(NamedTuple):
    """One workload's record in RESULTS."""
    checksum: int
    accessed: int       # A bits counted in its PTEs after its touch phases
    dirty: int          # D bits counted
    aux: int            # see mm.s's header (fork: frames leaked; demand: #PFs taken...)


class GuestState(NamedTuple):
    """What the guest can see of a run: two hosts must agree on every field."""
    event: str
    regs: tuple
    results: bytes
    tables: bytes
    faults: tuple
    console: str


class GuestResult:
    """What the workload harnesses' results share: equality of :meth:`guest_state` (what
    the guest saw) between results of one kind, and the RESULTS area read by dword."""
    results: bytes

    def guest_state(self):
        raise NotImplementedError

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self.guest_state() == other.guest_state()

    __hash__ = None

    def dword(self, offset: int) -> int:
        """The dword at ``offset`` in RESULTS."""
        return struct.unpack_from("<I", self.results, offset)[0]

    @property
    def status(self) -> int:
        return self.dword(0x00)


@dataclasses.dataclass(eq=False)
class WorkloadResult(GuestResult):
    """One run of mm.s on one host. Equality compares :meth:`guest_state` only."""
    workload: str
    host: str
    params: dict                # every parameter's value in the binary run
    event: Event
    regs: dict                  # EAX..EDI but ESP
    results: bytes              # the RESULTS area
    tables: bytes               # the paging area [KPD, POOL_END)
    faults: list                # (cr2, error code) per logged #PF, in order
    console: str
    monitor: object             # the host's monitor (its counters, its machine)
    layout: dict                # mm.s's addresses: RESULTS, KPD, POOL_BASE, POOL_END...

    def guest_state(self) -> GuestState:
        return GuestState(self.event.kind, tuple(self.regs[r] for r in _GPRS),
                          self.results, self.tables, tuple(self.faults), self.console)

    @property
    def pool(self) -> tuple:
        """Free frames (at the start, at the end, fewest)."""
        return self.dword(0x08), self.dword(0x0C), self.dword(0x10)

    @property
    def faults_taken(self) -> int:
        return self.dword(0x14)

    @property
    def faults_dropped(self) -> int:
        return self.dword(0x18)

    @property
    def records(self) -> dict:
        """Each workload's :class:`Record` (zeros for a workload not run)."""
        return {name: Record(*struct.unpack_from("<4I", self.results, 0x40 + 16 * i))
                for i, name in enumerate(_RECORDS)}

    def base(self, field: str) -> int:
        """The physical address of the first byte of bytes field ``field``."""
        return self.layout["RESULTS"] if field == "results" else self.layout["KPD"]

    def pte(self, pa: int) -> int:
        """The dword at physical ``pa`` inside the paging area (a PDE or PTE)."""
        return struct.unpack_from("<I", self.tables, pa - self.layout["KPD"])[0]

    @property
    def counters(self) -> dict:
        """The machine's counters (the host's work, not the guest's state)."""
        return self.monitor.machine.counters.to_dict()

    @property
    def instructions(self) -> int:
        return self.monitor.machine.counters["instructions"]

    def __repr__(self):
        return (f"<WorkloadResult {self.workload} on {self.host}: {self.event.kind}, "
                f"status {self.status:#x}, {len(self.faults)} #PF logged>")


def gprs(mon, names=_GPRS) -> dict:
    """The guest's general registers ``names`` (EAX..EDI but ESP by default), from the
    monitor's view of the guest's CPU when it has them (Native's and the hypervisor's is
    the CPU; VT-x leaves them in the CPU), else from the machine's CPU, where a
    trap-and-emulate monitor, which virtualizes only the system state, leaves them."""
    src = mon.vcpu
    if not all(hasattr(src, r) for r in names):
        src = mon.machine.cpu
    return {r: int(getattr(src, r)) for r in names}


class WorkloadError(RuntimeError):
    """A run that did not end in a clean halt with the guest's status 'done'."""


def run(workload: str, host: str = "native", budget: int = DEFAULT_BUDGET, *,
        check: bool = True, **params) -> WorkloadResult:
    """Run mm.s's ``workload`` (a name of :data:`WORKLOADS`) on ``host`` (a name of
    :data:`HOSTS`) for at most ``budget`` steps, ``params`` overriding its parameters
    (:data:`hvsim.guests.MM_PARAMS`). With ``check`` (the default) a run that does not
    halt, or halts with a status other than done, raises :class:`WorkloadError`."""
    if host not in HOSTS:
        raise ValueError(f"no host named {host!r}; the hosts are {', '.join(HOSTS)}")
    program = mm_kernel(workload, **params)
    lab = program.labels
    mon, ev = HOSTS[host](program, budget)
    where = f"mm workload {workload!r} on host {host!r}"
    if check and ev.kind != "halt":
        raise WorkloadError(f"{where} did not halt cleanly within {budget} steps: "
                            f"{ev.kind} at eip={ev.eip:#x} ({ev})")
    mem = mon.machine.memory
    base = lab["RESULTS"]
    results = bytes(mem[base:base + lab["RESULTS_SIZE"]])
    tables = bytes(mem[lab["KPD"]:lab["POOL_END"]])
    n = min(struct.unpack_from("<I", results, lab["R_FAULTS"] - base)[0], lab["LOG_CAP"])
    log = lab["R_LOG"] - base
    faults = [struct.unpack_from("<II", results, log + 8 * i) for i in range(n)]
    regs = gprs(mon)
    layout = {k: lab[k] for k in ("RESULTS", "RESULTS_SIZE", "KPD", "KPT0", "POOL_BASE",
                                  "POOL_END", "WBASE", "DEMAND_BASE", "COW_BASE", "LOG_CAP")}
    result = WorkloadResult(workload, host, {k: lab[k] for k in MM_PARAMS}, ev, regs,
                            results, tables, faults, mon.console, mon, layout)
    if check and result.status != STATUS_OK:
        vec, cr2, err, eip = (result.dword(o) for o in (0x1C, 0x20, 0x24, 0x28))
        raise WorkloadError(f"{where} halted at eip={ev.eip:#x} with status "
                            f"{result.status:#x} ({STATUS.get(result.status, '?')}): vector "
                            f"{vec}, CR2 {cr2:#x}, error code {err:#x}, EIP {eip:#x}")
    return result


def differences(a, b, limit: int = 8) -> list:
    """Where two runs' guest states differ, in words (at most ``limit`` lines per part):
    an empty list when they agree. ``a`` and ``b``: results with ``guest_state()`` (a
    NamedTuple), ``host`` and ``base(field)`` -- the address of a bytes field's first
    byte (this module's :class:`WorkloadResult`, hvsim.pvworkloads')."""
    out = []
    sa, sb = a.guest_state(), b.guest_state()
    for field in type(sa)._fields:
        x, y = getattr(sa, field), getattr(sb, field)
        if x == y:
            continue
        if isinstance(x, bytes):
            start = a.base(field)
            lines = []
            for i in range(0, min(len(x), len(y)), 4):
                u, v = struct.unpack_from("<I", x, i)[0], struct.unpack_from("<I", y, i)[0]
                if u != v:
                    lines.append(f"{field} {start + i:#07x}: {u:#010x} on {a.host}, "
                                 f"{v:#010x} on {b.host}")
            out += lines[:limit]
            if len(lines) > limit:
                out.append(f"{field}: {len(lines) - limit} more dwords differ")
        elif field == "faults":
            i = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
            out.append(f"faults: {len(x)} on {a.host}, {len(y)} on {b.host}; #PF {i} is "
                       f"{_fault(x, i)} on {a.host}, {_fault(y, i)} on {b.host}")
        else:
            out.append(f"{field}: {x!r} on {a.host}, {y!r} on {b.host}")
    return out


def _fault(log, i: int) -> str:
    return f"CR2 {log[i][0]:#x} error {log[i][1]:#x}" if i < len(log) else "none"


# ---- VirtualBox raw mode (hvsim/bt/rawmode.py) -------------------------------------------
def _rawmode(program, budget: int):
    """VirtualBox's raw mode: the kernel in place at ring 1, scanned and patched (CSAM,
    PATM), shadow paging from boot. Patched code bytes are not part of the comparison
    (GuestState holds registers, results, tables, faults, console)."""
    from hvsim.bt.rawmode import RawMode
    return _started(RawMode(program=program), budget)


HOSTS["rawmode"] = _rawmode
