"""minios's workloads on five hosts, built natively or paravirtualized (Python, not jitted).

hvsim/guests/minios.s is one teaching kernel whose sensitive operations sit behind one
layer of macros; :func:`hvsim.guests.minios` builds it natively or, with ``pv=True``, for
the Xen-shaped hypervisor. Its workloads -- system calls from ring 3 ("syscall"),
page-table updates on live tables and a fork ("ptupdate"), block I/O ("io"), or all of
them ("all") -- run on every host of :data:`HOSTS`: the native build on the bare machine,
under trap-and-emulate with shadow paging, under VT-x without and with EPT (the hosts of
:mod:`hvsim.workloads`), the PV build under :class:`~hvsim.paravirt.hypervisor.Hypervisor`.
:func:`run` runs one and collects what the *guest* can see:

* the final event (a clean halt: HLT with IF = 0 natively, SCHEDOP_shutdown(poweroff)
  paravirtualized),
* the result registers EDX, ESI, EDI, EBP (minios.s's header says what each holds; EAX,
  EBX and ECX carry the PV build's last hypercall, so they are not compared),
* the RESULTS area,
* the disk, as the host's model of it holds it after the run (every host's has 64
  sectors: BlockDevice's and the hypervisor's default),
* the console.

Every host must agree on all of it (tests/test_minios.py); what differs is how much the
host worked for it -- traps, VM exits, hypercalls, port accesses -- which :func:`work`
tabulates from the monitor each result keeps.

>>> r = run("syscall", "pv", N_SYSCALLS=8)
>>> r.event.kind, hex(r.status), r.syscall
('halt', '0x600d', Syscall(calls=9, adds=4, total=16, user_sum=46))
>>> r == run("syscall", "shadow", N_SYSCALLS=8), work(r)["hypercalls"] == work(
...     run("syscall", "pv", N_SYSCALLS=80))["hypercalls"]
(True, True)
"""
from __future__ import annotations

import dataclasses
import struct
from typing import NamedTuple

from hvsim import workloads as W
from hvsim.guests import MINIOS_PARAMS, MINIOS_WORKLOADS, minios
from hvsim.machine import Event
from hvsim.monitors import Native, TrapAndEmulate, Vtx
from hvsim.monitors.devices import BlockDevice
from hvsim.paravirt.hypervisor import Hypervisor

__all__ = ["HOSTS", "PV_HOSTS", "WORKLOADS", "run", "work", "MiniosResult", "GuestState",
           "Syscall", "PtUpdate", "Io", "STATUS_OK", "STATUS", "DISK_SECTORS",
           "DEFAULT_BUDGET"]

#: the workloads by name (:data:`hvsim.guests.MINIOS_WORKLOADS`)
WORKLOADS = tuple(MINIOS_WORKLOADS)
DEFAULT_BUDGET = W.DEFAULT_BUDGET
#: the disk every host gives the guest, in 512-byte sectors
DISK_SECTORS = 64
STATUS_OK = 0x600D
STATUS = {0x600D: "done", 0xBAD1: "an exception", 0xBAD2: "the hypervisor refused a call",
          0xBAD3: "the frame pool ran dry", 0: "not finished"}
_REGS = ("edx", "esi", "edi", "ebp")


def _pv(program, budget: int):
    hv = Hypervisor(program=program, disk_sectors=DISK_SECTORS)
    return hv, hv.run(budget)


#: host name -> function(program, budget) -> (monitor, final event)
HOSTS: dict = {name: W.HOSTS[name] for name in ("native", "shadow", "vtx", "ept")}
HOSTS["pv"] = _pv
# ---- binary translation (hvsim/bt): the native build, its kernel translated --------------
HOSTS["bt"] = W.HOSTS["bt"]
# emulation (issue 16): the native build on a software CPU (Bochs / QEMU TCG models)
HOSTS["emulate"] = W.HOSTS["emulate"]
HOSTS["dbt"] = W.HOSTS["dbt"]
#: the hosts that run the PV build
PV_HOSTS = frozenset({"pv"})


def _disk(mon) -> bytes:
    """The host's disk, from whichever model holds it."""
    if isinstance(mon, Hypervisor):
        return bytes(mon.disk)
    if isinstance(mon, Vtx):
        return bytes(mon.kvm.devices.disk.disk)
    if isinstance(mon, TrapAndEmulate):
        return bytes(mon.devices.disk.disk)
    if isinstance(mon, Native):
        return next(bytes(d.disk) for d in mon.devices if isinstance(d, BlockDevice))
    raise TypeError(f"no disk known on a {type(mon).__name__}")


# ---- the results ----------------------------------------------------------------------
class Syscall(NamedTuple):
    """RESULTS +20H: system calls taken (SYS_EXIT included), SYS_ADD calls, the shared
    total, the ring-3 program's sum of its answers."""
    calls: int
    adds: int
    total: int
    user_sum: int


class PtUpdate(NamedTuple):
    """RESULTS +30H: the window checksum, the forks' checksum, frames not returned to the
    pool, page-table entries set."""
    checksum: int
    fork_checksum: int
    leaked: int
    ptes_set: int


class Io(NamedTuple):
    """RESULTS +40H: the read-back checksum, dwords unlike those written, requests that
    failed, sectors moved."""
    checksum: int
    mismatches: int
    failed: int
    sectors: int


class GuestState(NamedTuple):
    """What the guest can see of a run: every host must agree on every field."""
    event: str
    regs: tuple
    results: bytes
    disk: bytes
    console: str


@dataclasses.dataclass(eq=False)
class MiniosResult(W.GuestResult):
    """One run of minios.s on one host. Equality compares :meth:`guest_state` only."""
    workload: str
    host: str
    pv: bool                    # the build run: paravirtualized or native
    params: dict                # every parameter's value in the binary run
    event: Event
    regs: dict                  # EDX, ESI, EDI, EBP
    results: bytes              # the RESULTS area
    disk: bytes
    console: str
    monitor: object             # the host's monitor (its counters, its machine)
    layout: dict                # minios.s's addresses (RESULTS, ...)

    def guest_state(self) -> GuestState:
        return GuestState(self.event.kind, tuple(self.regs[r] for r in _REGS), self.results,
                          self.disk, self.console)

    def base(self, field: str) -> int:
        """Where bytes field ``field`` starts: RESULTS' physical address, the disk's 0."""
        return self.layout["RESULTS"] if field == "results" else 0

    @property
    def syscall(self) -> Syscall:
        return Syscall(*struct.unpack_from("<4I", self.results, 0x20))

    @property
    def ptupdate(self) -> PtUpdate:
        return PtUpdate(*struct.unpack_from("<4I", self.results, 0x30))

    @property
    def io(self) -> Io:
        return Io(*struct.unpack_from("<4I", self.results, 0x40))

    @property
    def instructions(self) -> int:
        return int(self.monitor.machine.counters["instructions"])

    def __repr__(self):
        build = "PV" if self.pv else "native"
        return (f"<MiniosResult {self.workload} ({build} build) on {self.host}: "
                f"{self.event.kind}, status {self.status:#x}>")


class WorkloadError(W.WorkloadError):
    """A run that did not end in a clean halt with the guest's status 'done'."""


def run(workload: str = "all", host: str = "native", budget: int = DEFAULT_BUDGET, *,
        check: bool = True, **params) -> MiniosResult:
    """Run minios.s's ``workload`` (a name of :data:`WORKLOADS`) on ``host`` (a name of
    :data:`HOSTS`; a host of :data:`PV_HOSTS` runs the PV build) for at most ``budget``
    steps, ``params`` overriding its parameters (:data:`hvsim.guests.MINIOS_PARAMS`).
    With ``check`` (the default) a run that does not halt, or halts with a status other
    than done, raises :class:`WorkloadError`."""
    if host not in HOSTS:
        raise ValueError(f"no host named {host!r}; the hosts are {', '.join(HOSTS)}")
    pv = host in PV_HOSTS
    program = minios(pv, workload, **params)
    lab = program.labels
    mon, ev = HOSTS[host](program, budget)
    where = f"minios workload {workload!r} on host {host!r}"
    if check and ev.kind != "halt":
        raise WorkloadError(f"{where} did not halt cleanly within {budget} steps: "
                            f"{ev.kind} at eip={ev.eip:#x} ({ev})")
    base = lab["RESULTS"]
    results = bytes(mon.machine.memory[base:base + lab["RESULTS_SIZE"]])
    layout = {k: lab[k] for k in ("RESULTS", "RESULTS_SIZE", "KPD", "KPT0", "WPT", "WINDOW",
                                  "CHILD_VA", "FRAMES_A", "FRAMES_B", "WBUF", "RBUF")}
    result = MiniosResult(workload, host, pv, {k: lab[k] for k in MINIOS_PARAMS}, ev,
                          W.gprs(mon, _REGS), results, _disk(mon), mon.console, mon, layout)
    if check and result.status != STATUS_OK:
        vec, err, eip, cr2 = (result.dword(o) for o in (0x08, 0x0C, 0x10, 0x14))
        raise WorkloadError(f"{where} halted at eip={ev.eip:#x} with status "
                            f"{result.status:#x} ({STATUS.get(result.status, '?')}): "
                            f"vector/rc {vec:#x}, error code {err:#x}, EIP {eip:#x}, "
                            f"CR2 {cr2:#x}")
    return result


def work(result: MiniosResult) -> dict:
    """What the host did for the run: traps (a software monitor's), VM exits,
    hypercalls, port accesses served by a native device model, instructions retired."""
    mon = result.monitor
    s = mon.stats
    return {"traps": s["traps"], "vm_exits": s["vm_exits"], "hypercalls": s["hypercalls"],
            "device_io": getattr(mon, "device_io", 0), "instructions": result.instructions}
# ---- VirtualBox raw mode (hvsim/bt/rawmode.py): the native build, scanned and patched -----
HOSTS["rawmode"] = W.HOSTS["rawmode"]
