"""What a run used: counted events, read from a machine's counters and a monitor's stats.

Plain Python (not jitted). :func:`usage_of` turns a :class:`~hvsim.machine.Machine`, a
monitor (any object with ``.machine`` and ``.stats``), ``Machine.counters`` or a plain
dict into a :class:`Usage`: event name -> count, each with the rule that produced it.

How each event is derived (``c`` = ``m.counters``; ``s`` = ``monitor.stats``, a missing
key = 0). The rule that matters: **an event is charged once, by whoever handled it.**

===============  ==========================================================================
event            derived from
===============  ==========================================================================
instruction      ``c["instructions"]``: instructions the hardware retired. An instruction
                 a monitor emulates never retires (the exit comes before it executes), so
                 it is charged as ``trap`` + ``emulated`` instead, not here.
system_call      software interrupts (INT n, INT3, INTO) *delivered through the guest IDT*
                 by the hardware = ``sum(c.delivered.values()) - c["exceptions_delivered"]
                 - c["irqs"]``. Not ``c["software_interrupts"]``: that counts INT n
                 executed, also when the vector is routed to a monitor -- then the trap
                 and the reflection are charged instead.
page_fault       #PF delivered through the guest IDT by the hardware =
                 ``min(c.delivered[14], c.exceptions[14])`` (``exceptions`` counts every
                 #PF raised, routed or delivered; ``delivered`` every delivery of vector
                 14; the minimum leaves out the #PFs routed to a monitor, which reflects
                 them itself, and would only miscount a guest that also runs INT 14).
exception        the other exceptions delivered through the guest IDT =
                 ``c["exceptions_delivered"] - page_fault``.
interrupt        ``c["irqs"]``: external interrupts delivered through the guest IDT.
walk_ref         ``c["walk_refs"]``: memory references made by page walks (charged per
                 reference, not per TLB miss or per walk, which would count them twice).
                 Only the guest's own PDE/PTE reads: under EPT, see ``ept_walk_ref``.
ept_walk_ref     ``c["ept_walk_refs"]``: EPT entry reads of the 2-D walk under nested
                 paging (hvsim/mmu/ept.py counts them apart from ``walk_refs``), one per
                 reference, not per ``c["ept_walks"]``: a cold access of a 2-level guest
                 on 4-level EPT is 2 ``walk_ref`` + 12 ``ept_walk_ref`` = 14 references.
port_io          ``c["io_in"] + c["io_out"]``: IN/OUT the hardware performed (those that
                 then left run() as 'io' events included: the access happened once). An
                 IN/OUT that #GPs to a monitor is not counted by the hardware: it is a
                 ``trap`` + ``emulated``.
trap             ``s["traps"]``: exits from run() the monitor handled, each one trap to
                 the software monitor and back (a hypercall is not one: see below).
vm_exit          ``s["vm_exits"]``: VT-x exits (a VT-x host counts its exits here only,
                 not also in ``traps``).
hypercall        ``s["hypercalls"]``.
emulated         ``s["emulated"]``: guest instructions the monitor emulated.
reflected        ``s["reflected"]``: exceptions/interrupts the monitor reflected into the
                 guest's virtual IDT, building the frame itself (the hardware did not
                 deliver them, so they are not in ``c.delivered``).
injected         ``s["injected"]``: virtual interrupts injected.
shadow_fill      ``s["hidden_faults"]``: #PFs that a miss in the shadow tables caused, filled
                 by the monitor and never seen by the guest. Each one is also a ``trap``
                 or a ``vm_exit`` (the round trip); this is the shadow MMU's work on top.
fault_walk       ``s["true_faults"]``: #PFs the guest's own tables cause. The round trip is
                 a ``trap``/``vm_exit`` and the delivery a ``reflected``/``injected``,
                 both charged there; this is only the walk of the guest's tables that told
                 the monitor the fault is the guest's (Adams & Agesen: the software MMU
                 "interposes on both true and hidden page faults").
pt_write         ``s["trace_faults"]``: guest writes to its own (write-protected) page
                 tables. Also a ``trap``/``vm_exit``; this is emulating the store and
                 updating or dropping the shadow entries, so a monitor counts the store
                 here and not also in ``emulated``.
shadow_root      ``s["shadow_roots_built"]``: guest CR3 loads that missed the cache of
                 shadow roots. The MOV CR3 itself is a ``trap``/``vm_exit`` + ``emulated``
                 whether it hits or misses: a CR3 switch to a cached root costs no more.
resync           ``s["shadow_resyncs"]``: unsync shadow page tables resynchronised (at
                 INVLPG or a CR3 load), each a comparison of up to 1024 guest entries.
pv_pt_update     ``s["pt_updates"]``: page-table entries a paravirtualizing hypervisor
                 checked and wrote at the guest's request (each entry of an mmu_update,
                 each update_va_mapping, inside a multicall or not). The hypercall that
                 carried them is a ``hypercall``: a batch of 64 is one.
pv_validate      ``s["tables_validated"]``: page tables and directories the hypervisor
                 validated as they came into use (a pin, a new base pointer, a directory
                 entry naming a fresh table).
io_request       ``s["io_requests"]``: requests a split-driver backend served from a
                 shared ring. Its notifications are ``hypercall``s (the guest's
                 EVTCHNOP_send) and ``injected`` upcalls.
callout          ``s["callouts"]`` (a binary translator, hvsim/bt): exits from translated
                 code that the translator put there, each a callout to the monitor and
                 back; not also a ``trap`` (a BT monitor counts traps and callouts apart).
                 The guest instruction a callout emulates is an ``emulated``, as after a
                 trap. The in-TC sequences (CLI, STI, PUSHF, POPF on the virtual IF) are
                 real instructions the hardware retires: they are charged as
                 ``instruction`` only, with no event of their own.
translation      ``s["translated"]``: guest instructions the binary translator translated
                 into its translation cache.
scan             ``s["scanned"]`` (VirtualBox raw mode, hvsim/bt/rawmode.py): guest
                 instructions its code scanner decoded before they first ran. Its jump
                 patches' callouts are ``callout``s, its INT3 replacements ``trap``s
                 (a #BP from ring 1), the instruction either stands for an ``emulated``;
                 patch code is ``instruction``s.
interpreted      ``s["insns_interpreted"]``: guest instructions an emulator in interpret mode
                 (Bochs) carried out; each is *also* an ``instruction`` (the machine
                 retired it): this is the interpreter's work on top.
translated       ``s["insns_translated"]``: guest instructions a dynamic translator (QEMU
                 TCG) translated into its blocks, once per translation.
run_translated   ``s["insns_run_translated"]``: guest instructions run from translated
                 blocks; also each an ``instruction``, this is the translated code's
                 extra work.
tb_lookup        ``s["tb_slow_lookups"]``: TB lookups that missed the jump cache (the hash
                 table, and the translations, which are charged as ``translated``).
soft_tlb_fill    ``s["soft_tlb_fills"]``: the emulator's soft-TLB misses (the machine's TLB
                 in the emulator's geometry); the walk's references stay ``walk_ref``.
===============  ==========================================================================

The machine's own exit count (``c["exits"]``) is not charged: on a bare machine an exit
is the simulator handing control to its Python caller (a budget slice, a halt), not a
guest cost; under a monitor, ``s["traps"]`` (or ``s["vm_exits"]``) says which exits
were traps. ``c["tlb_misses"]`` and ``c["page_walks"]`` are not charged either: the
references of each walk are. ``s["shadow_drops"]`` (shadow entries zapped) is not
charged: dropping an entry is part of the ``pt_write`` or ``resync`` that did it. Keys of
``monitor.stats`` not named above are ignored, and a missing one counts 0, so a monitor
without shadow paging is read as before.
"""
from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral

from hvsim.cost.profiles import EVENTS, _unknown
from hvsim.machine import Counters, Machine

VEC_PF = 14

#: monitor.stats key -> event
STAT_EVENTS = {"traps": "trap", "vm_exits": "vm_exit", "hypercalls": "hypercall",
               "emulated": "emulated", "reflected": "reflected", "injected": "injected",
               "hidden_faults": "shadow_fill", "true_faults": "fault_walk",
               "trace_faults": "pt_write", "shadow_roots_built": "shadow_root",
               "shadow_resyncs": "resync", "pt_updates": "pv_pt_update",
               "tables_validated": "pv_validate", "io_requests": "io_request",
               # binary translation (hvsim/bt)
               "callouts": "callout", "translated": "translation",
               # VirtualBox raw mode (hvsim/bt/rawmode.py)
               "scanned": "scan",
               # emulation (hvsim/emulation): the emulator's work, from its model
               "insns_interpreted": "interpreted", "insns_translated": "translated",
               "insns_run_translated": "run_translated", "tb_slow_lookups": "tb_lookup",
               "soft_tlb_fills": "soft_tlb_fill"}


def _count(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, Integral):
        raise TypeError(f"count of {name!r} must be an int, got {v!r}")
    if v < 0:
        raise ValueError(f"count of {name!r} must be >= 0, got {v}")
    return int(v)


class Usage(Mapping):
    """Counted events of one run: a read-only mapping event -> count (missing = 0).

    ``how[event]`` says where a count came from (the derivation rule above, or
    'given' for a count passed in by hand).

    >>> u = Usage({"instruction": 10, "trap": 2})
    >>> u["trap"], u["vm_exit"], len(u)
    (2, 0, 2)
    """

    def __init__(self, counts: Mapping = (), how: Mapping = ()):
        counts = dict(counts)
        for e, n in counts.items():
            if e not in EVENTS:
                raise KeyError(_unknown("event", e, EVENTS))
            _count(e, n)
        self._counts = {e: int(n) for e, n in counts.items()}
        self.how = dict(how) if how else {e: "given" for e in self._counts}

    def __getitem__(self, event):
        if event not in EVENTS:
            raise KeyError(_unknown("event", event, EVENTS))
        return self._counts.get(event, 0)

    def __iter__(self):
        return iter(self._counts)

    def __len__(self):
        return len(self._counts)

    def __eq__(self, other):
        if isinstance(other, Mapping):
            return {k: v for k, v in self.items() if v} == {k: v for k, v in other.items() if v}
        return NotImplemented

    def __repr__(self):
        return "Usage(" + ", ".join(f"{k}={v}" for k, v in self._counts.items() if v) + ")"


def _from_counters(c: Counters) -> tuple:
    delivered = c.delivered
    exceptions = c.exceptions
    total = sum(delivered.values())
    faults = c["exceptions_delivered"]
    irqs = c["irqs"]
    pf = min(delivered.get(VEC_PF, 0), exceptions.get(VEC_PF, 0))
    counts = {
        "instruction": c["instructions"],
        "system_call": max(0, total - faults - irqs),
        "page_fault": pf,
        "exception": max(0, faults - pf),
        "interrupt": irqs,
        "walk_ref": c["walk_refs"],
        "ept_walk_ref": c["ept_walk_refs"],
        "port_io": c["io_in"] + c["io_out"],
    }
    how = {
        "instruction": 'counters["instructions"]',
        "system_call": 'sum(counters.delivered) - counters["exceptions_delivered"] '
                       '- counters["irqs"]',
        "page_fault": "min(counters.delivered[14], counters.exceptions[14])",
        "exception": 'counters["exceptions_delivered"] - page_fault',
        "interrupt": 'counters["irqs"]',
        "walk_ref": 'counters["walk_refs"]',
        "ept_walk_ref": 'counters["ept_walk_refs"]',
        "port_io": 'counters["io_in"] + counters["io_out"]',
    }
    return counts, how


def _is_monitor(x) -> bool:
    return hasattr(x, "machine") and hasattr(x, "stats") and not isinstance(x, Mapping)


def usage_of(x) -> Usage:
    """The :class:`Usage` of ``x``: a Machine, a monitor (``.machine`` + ``.stats``),
    ``Machine.counters``, a Usage, or a dict ``{event: count}``.

    >>> usage_of({"instruction": 5})["instruction"]
    5
    """
    if isinstance(x, Usage):
        return x
    if isinstance(x, Machine):
        return Usage(*_from_counters(x.counters))
    if isinstance(x, Counters):
        return Usage(*_from_counters(x))
    if _is_monitor(x):
        if not isinstance(x.machine, Machine):
            raise TypeError(f"{type(x).__name__}.machine must be a hvsim Machine, got "
                            f"{type(x.machine).__name__}")
        stats = x.stats
        if not isinstance(stats, Mapping):
            raise TypeError(f"{type(x).__name__}.stats must be a dict {{name: int}}, got "
                            f"{type(stats).__name__}")
        counts, how = _from_counters(x.machine.counters)
        for key, event in STAT_EVENTS.items():
            counts[event] = _count(f"stats[{key!r}]", stats.get(key, 0))
            how[event] = f'monitor.stats["{key}"]'
        return Usage(counts, how)
    if isinstance(x, Mapping):
        return Usage(x)
    raise TypeError("usage_of() takes a Machine, a monitor (an object with .machine and "
                    ".stats), Machine.counters, a Usage or a dict {event: count}; got "
                    f"{type(x).__name__}")
