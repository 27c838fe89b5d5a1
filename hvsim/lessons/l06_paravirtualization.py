"""Lesson 06, "paravirtualization": the logic behind notebooks/06_paravirtualization.ipynb
(not jitted).

Xen's answer to the x86 holes (Barham et al., "Xen and the Art of Virtualization", SOSP
2003): do not run the guest kernel unmodified. Port it, so that where it would execute a
sensitive instruction it *asks* the hypervisor -- a **hypercall** -- and where it would
take one trap per operation it hands over a whole batch. hvsim's hypervisor
(:mod:`hvsim.paravirt.hypervisor`) implements 32-bit Xen PV: the kernel in ring 1,
``int 0x82`` with Xen's hypercall numbers, the virtual interrupt flag as a byte in the
shared_info page, event channels, direct paging validated by frame types, and a split
block driver over a shared ring. Every figure here comes from a run:

1. :data:`TINY_PV`, a PV kernel of a dozen instructions, stepped by :func:`step_hypercall`
   through one hypercall: the stub in the hypercall page, ``int 0x82`` from ring 1, the
   handler chosen by EAX, the result in EAX, the return (:func:`hypercall_table`);
2. :func:`irq_compare`: the critical section of lesson 02 -- interrupts off, shared data,
   interrupts back on -- natively, under trap-and-emulate (CLI and STI each trap) and
   paravirtualized (two stores to ``evtchn_upcall_mask``: no trap at all);
3. :func:`batching`: N page-table updates as N ``update_va_mapping`` hypercalls, as one
   ``multicall`` of N, and as one ``mmu_update`` of N; the traps counted and the cycles
   priced by :mod:`hvsim.cost` (:func:`batch_table`, :func:`plot_batching`);
4. the teaching kernel of hvsim/guests/minios.s -- one source, built natively and
   paravirtualized -- and its workloads (system calls, page-table updates, block I/O) on
   five hosts: natively, trap-and-emulate, VT-x without and with EPT, and the
   hypervisor (:func:`five_hosts`, :func:`work_rows` / :func:`work_table`, cycles by
   category with :func:`plot_cycles`); the guest sees the same on every host;
5. :func:`io_rows` / :func:`io_table`: the split driver's ring against the emulated
   disk -- bytes moved per trap, notifications sent and suppressed;
6. :func:`batch_exercise`: how many hypercalls does a seeded update loop make with a
   queue of B entries? The answer is computed by running it.
"""
from __future__ import annotations

import math
import random

from hvsim import assemble, cost, pvworkloads
from hvsim.asm import disassemble
from hvsim.lessons import Exercise
from hvsim.lessons.l04_ring_minus_one import _HTML, _same_cell, _table, _td
from hvsim.paravirt import abi as A
from hvsim.paravirt.hypervisor import Hypervisor

__all__ = ["TINY_PV", "tiny_pv", "step_hypercall", "hypercall_table", "stepper",
           "IRQ_SECTION", "irq_compare", "irq_table", "BATCH_KINDS", "batch_guest",
           "batching", "batch_rows", "batch_table", "plot_batching", "queue_guest",
           "count_hypercalls", "batch_exercise", "HOST_NAMES", "FIVE_WORKLOADS", "FIVE_HOSTS",
           "platform_macro", "five_hosts", "work_rows", "work_table", "plot_cycles", "io_rows", "io_table"]

_END = """
        mov ebx, 2                      ; sched_op(SCHEDOP_shutdown, &reason)
        mov ecx, reason
        call hypercall_page + 29 * 32
reason: dd 0                            ; SHUTDOWN_poweroff
align 4096
hypercall_page: times 4096 db 0         ; the hypervisor fills it with the stubs
"""

#: a paravirtualized kernel that prints through the hypervisor's console and stops
TINY_PV = """
; a PV kernel runs in ring 1: it asks the hypervisor for what it may not do itself
start:  mov ebx, 0                      ; console_io(CONSOLEIO_write, 3, msg)
        mov ecx, 3
        mov edx, msg
        call hypercall_page + 18 * 32   ; the stub: mov eax, 18 / int 0x82 / ret
        mov [result], eax               ; 0: done
        xor ebx, ebx                    ; xen_version(XENVER_version)
        call hypercall_page + 17 * 32
        mov [version], eax              ; 0x30000: Xen 3.0
""" + _END.replace("reason: dd 0", "msg:    db \"PV\", 10\nresult: dd -1\nversion: dd 0\n"
                   "reason: dd 0")


def tiny_pv():
    """:data:`TINY_PV`, assembled at 1000H."""
    return assemble(TINY_PV)


def step_hypercall(program=None, max_steps: int = 40) -> list:
    """Step :data:`TINY_PV` (or ``program``) under the hypervisor until it stops: one row
    per step -- where it was (EIP, ring), the instruction there, what the step did (ran,
    or the hypercall the hypervisor handled and its result), EAX after it, and whether
    the instruction is a stub of the hypercall page."""
    prog = tiny_pv() if program is None else program
    hv = Hypervisor(program=prog)
    page = prog.labels["hypercall_page"]
    rows = []
    for _ in range(max_steps):
        cpu = hv.machine.cpu
        eip, ring = int(cpu.eip), cpu.cpl
        insn = disassemble(hv.machine.read_linear(eip, 16), eip, 1)[0]
        n_log = len(hv.log)
        ev = hv.step()
        log = hv.log
        rows.append({"eip": eip, "ring": ring, "insn": str(insn),
                     "what": log[-1].action if len(log) > n_log else f"ran in ring {ring}",
                     "eax": int(hv.machine.cpu.eax), "in_stub": page <= eip < page + A.PAGE_SIZE})
        if ev is not None:
            rows.append({"eip": int(hv.machine.cpu.eip), "ring": hv.machine.cpu.cpl,
                         "insn": "", "what": str(ev), "eax": int(hv.machine.cpu.eax),
                         "in_stub": False})
            break
    return rows


def hypercall_table(rows: list) -> _HTML:
    """:func:`step_hypercall` as an HTML table; the hypercall itself in bold."""
    body = [[f"{r['eip']:#010x}", r["ring"], r["insn"],
             _td(r["what"], "#1a5fb4" if r["what"].startswith("hypercall") else None,
                 bold=r["what"].startswith("hypercall")), f"{r['eax']:#x}"] for r in rows]
    return _table(["EIP", "ring", "instruction", "what happened", "EAX after"], body,
                  "hvsim-pv-steps")


def stepper(program=None):
    """A :class:`hvsim.widgets.Stepper` on :data:`TINY_PV` under the hypervisor."""
    from hvsim.widgets import Stepper
    return Stepper(Hypervisor(program=tiny_pv() if program is None else program))


# ---- 2. the virtual interrupt flag ------------------------------------------------------------
#: lesson 02's critical section, ``n`` times: interrupts off, a shared counter, back on.
#: Natively and under trap-and-emulate with CLI/STI; paravirtualized with the two stores
#: Linux's xen_irq_disable / xen_irq_enable make (and the check for a pending event).
IRQ_SECTION = {
    "native": """
start:  mov esi, {n}
again:  cli
        inc dword [shared]
        sti
        dec esi
        jnz again
        cli
        hlt
shared: dd 0
""",
    "pv": """
start:  mov ecx, [esi + 36]             ; start_info.shared_info: map it at 3FF000H
        or ecx, 0x63
        mov ebx, 0x3FF000
        mov edx, 2                      ; UVMF_INVLPG
        call hypercall_page + 14 * 32
        mov esi, {n}
again:  mov byte [0x3FF001], 1          ; xen_irq_disable: evtchn_upcall_mask = 1
        inc dword [shared]
        mov byte [0x3FF001], 0          ; xen_irq_enable: mask = 0, then
        test byte [0x3FF000], 1         ;   an event pending? (evtchn_upcall_pending)
        jz .none
        xor ebx, ebx                    ;   then any hypercall delivers it
        call hypercall_page + 17 * 32
.none:  dec esi
        jnz again
""" + _END.replace("reason: dd 0", "reason: dd 0\nshared: dd 0"),
}


def irq_compare(n: int = 100) -> dict:
    """{host: (traps, hypercalls, critical sections done)} for ``n`` critical sections:
    the native build on the bare machine and under trap-and-emulate, the PV build under
    the hypervisor."""
    from hvsim.monitors import Native, TrapAndEmulate
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10_000:
        raise ValueError(f"n must be an int from 1 to 10000, got {n!r}")
    native = assemble(IRQ_SECTION["native"].format(n=n))
    pv = assemble(IRQ_SECTION["pv"].format(n=n))
    out = {}
    for name, mon, prog in (("native", Native(program=native), native),
                            ("trap-and-emulate", TrapAndEmulate(program=native), native),
                            ("paravirtualized", Hypervisor(program=pv), pv)):
        ev = mon.run(1_000_000)
        if ev.kind != "halt":
            raise RuntimeError(f"the {name} run stopped on {ev}")
        shared = int.from_bytes(mon.machine.read_linear(prog.labels["shared"], 4), "little")
        s = mon.stats
        out[name] = (s["traps"], s["hypercalls"], shared)
    return out


def irq_table(runs: dict) -> _HTML:
    body = [[k, traps, calls, shared] for k, (traps, calls, shared) in runs.items()]
    return _table(["host", "traps", "hypercalls", "critical sections done"], body,
                  "hvsim-pv-irq")


# ---- 3. batching --------------------------------------------------------------------------
#: how N page-table updates reach the hypervisor
BATCH_KINDS = ("single", "multicall", "mmu_update")
_BATCH_VA, _BATCH_FRAME = 0x200000, 0x40000


def batch_guest(n: int, kind: str) -> str:
    """A PV kernel that maps ``n`` pages (VA 200000H + 4 KiB i -> frame 40000H + 4 KiB i,
    writable) in the builder's page table: ``n`` update_va_mapping hypercalls ('single'),
    one multicall of ``n`` of them ('multicall'), or one mmu_update of ``n`` requests
    naming the entries' machine addresses ('mmu_update'), then flushes the TLB once."""
    if kind not in BATCH_KINDS:
        raise ValueError(f"kind must be one of {', '.join(BATCH_KINDS)}, got {kind!r}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 256:
        raise ValueError(f"n must be an int from 1 to 256, got {n!r}")
    fill = {
        "single": """
        xor edx, edx                    ; update_va_mapping(va, val, UVMF_NONE)
        call hypercall_page + 14 * 32""",
        "multicall": """
        mov eax, edi
        shl eax, 5                      ; multicall_entry i: {op, result, args[6]}
        mov dword [table + eax], 14
        mov [table + eax + 8], ebx
        mov [table + eax + 12], ecx""",
        "mmu_update": """
        mov eax, [esi + 60]             ; start_info.pt_base: the directory, then
        mov eax, [eax + 4 * (0x200000 >> 22)]   ; the page table of the region
        and eax, 0xFFFFF000
        mov edx, ebx
        shr edx, 12
        and edx, 0x3FF
        lea eax, [eax + 4 * edx]        ; the entry's machine address (ptr)
        mov edx, edi
        shl edx, 4                      ; mmu_update i: {u64 ptr, u64 val}
        mov [table + edx], eax
        mov [table + edx + 8], ecx""",
    }[kind]
    flush = {
        "single": "",
        "multicall": """
        mov ebx, table                  ; multicall(table, n)
        mov ecx, {n}
        call hypercall_page + 13 * 32""",
        "mmu_update": """
        mov ebx, table                  ; mmu_update(table, n, NULL, DOMID_SELF)
        mov ecx, {n}
        xor edx, edx
        mov esi, 0x7FF0
        call hypercall_page + 1 * 32""",
    }[kind].format(n=n)
    return f"""
start:  xor edi, edi
next:   mov ebx, edi
        shl ebx, 12
        lea ecx, [ebx + {_BATCH_FRAME:#x} + 0x63]    ; frame | P | RW | A | D
        add ebx, {_BATCH_VA:#x}
{fill}
        inc edi
        cmp edi, {n}
        jne next
{flush}
        mov ebx, table                  ; mmuext_op(&{{TLB_FLUSH_LOCAL}}, 1, NULL, SELF)
        mov dword [table], 6
        mov ecx, 1
        xor edx, edx
        mov esi, 0x7FF0
        call hypercall_page + 26 * 32
""" + _END.replace("reason: dd 0", f"reason: dd 0\nalign 4\ntable: times {32 * n} db 0")


def batching(ns=(1, 2, 4, 8, 16, 32, 64), kinds=BATCH_KINDS) -> dict:
    """{(kind, n): Hypervisor}: :func:`batch_guest` run to its end for each."""
    out = {}
    for kind in kinds:
        for n in ns:
            hv = Hypervisor(program=assemble(batch_guest(n, kind)))
            ev = hv.run(1_000_000)
            if ev.kind != "halt" or hv.pt_updates != n:
                raise RuntimeError(f"the {kind} guest with n={n} stopped on {ev} after "
                                   f"{hv.pt_updates} updates")
            out[(kind, n)] = hv
    return out


def batch_rows(runs: dict, profile="nehalem") -> list:
    """One dict per run: kind, n, hypercalls (the traps), updates, cycles of the updates
    (the setup's and the shutdown's hypercalls left out: they are the same for all)."""
    p = cost.profile(profile)
    rows = []
    for (kind, n), hv in runs.items():
        calls = sum(hv.hypercalls.values()) - 2          # the TLB flush and the shutdown
        u = cost.usage_of(hv)
        cycles = (calls * p["hypercall"].cycles + u["pv_pt_update"] * p["pv_pt_update"].cycles)
        rows.append({"kind": kind, "n": n, "hypercalls": calls, "updates": hv.pt_updates,
                     "cycles": cycles, "per_update": cycles / n})
    return rows


def batch_table(rows: list) -> _HTML:
    body = [[r["kind"], r["n"], r["hypercalls"], r["updates"], f"{r['cycles']:,}",
             f"{r['per_update']:,.0f}"] for r in rows]
    return _table(["how", "updates", "hypercalls (traps)", "entries validated",
                   "cycles (hypercalls + validation)", "cycles per update"], body,
                  "hvsim-pv-batch")


def plot_batching(rows: list, ax=None):
    """Cycles per update against batch size, one line per way of sending them."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for kind in BATCH_KINDS:
        pts = sorted((r["n"], r["per_update"]) for r in rows if r["kind"] == kind)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=kind)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("page-table updates sent")
    ax.set_ylabel("cycles per update")
    ax.set_title("one trap per batch")
    ax.legend()
    return ax


# ---- 4. one kernel, five hosts --------------------------------------------------------------
#: what the hosts of :data:`hvsim.pvworkloads.HOSTS` are called in the tables
HOST_NAMES = {"native": "native", "shadow": "trap-and-emulate", "vtx": "VT-x (no EPT)",
              "ept": "VT-x + EPT", "pv": "paravirtualized"}
FIVE_WORKLOADS = ("syscall", "ptupdate", "io")
FIVE_HOSTS = tuple(HOST_NAMES)


def platform_macro(name: str) -> dict:
    """{'native': text, 'pv': text}: the two bodies of minios.s's platform-layer macro
    ``name`` (e.g. 'IRQ_ENABLE'), as written in the source."""
    from hvsim.guests import source
    src = source("minios")
    pv_part = src[src.index("%ifdef PV"):src.index("\n%else")]
    native_part = src[src.index("\n%else"):src.index("\n%endif")]
    out = {}
    for build, part in (("pv", pv_part), ("native", native_part)):
        head = f"%macro {name} "
        if head not in part:
            raise ValueError(f"minios.s's platform layer has no macro {name!r}")
        start = part.index(head)
        out[build] = part[start:part.index("%endmacro", start) + len("%endmacro")]
    return out


def five_hosts(workloads=FIVE_WORKLOADS, hosts=FIVE_HOSTS, **params) -> dict:
    """{(workload, host): MiniosResult}: minios.s's ``workloads`` on each of ``hosts``
    (the native build everywhere but 'pv', which runs the PV build), ``params``
    overriding its parameters (:data:`hvsim.guests.MINIOS_PARAMS`)."""
    if isinstance(workloads, str) or isinstance(hosts, str):
        raise TypeError("workloads and hosts are lists of names, e.g. ('syscall', 'io')")
    for h in hosts:
        if h not in pvworkloads.HOSTS:
            raise ValueError(f"no host named {h!r}; the hosts are {', '.join(pvworkloads.HOSTS)}")
    return {(w, h): pvworkloads.run(w, h, **params) for w in workloads for h in hosts}


#: the columns of :func:`work_rows`: key -> heading
WORK = {"traps": "traps", "vm_exits": "VM exits", "hypercalls": "hypercalls",
        "upcalls": "upcalls", "port_io": "port accesses", "instructions": "instructions"}


def work_rows(runs: dict) -> list:
    """One row per run: ``workload``, ``host``, what the host did for it (:data:`WORK`:
    traps into a software monitor, VM exits, hypercalls, event upcalls, port accesses
    the hardware performed, guest instructions) and ``same_as_native``."""
    rows = []
    for (w, h), r in runs.items():
        mon = r.monitor
        s, c = mon.stats, mon.machine.counters
        native = runs.get((w, "native"))
        rows.append(dict(workload=w, host=h, traps=s["traps"], vm_exits=s["vm_exits"],
                         hypercalls=s["hypercalls"], upcalls=s["injected"] if h == "pv" else 0,
                         port_io=c["io_in"] + c["io_out"], instructions=c["instructions"],
                         same_as_native=None if native is None else r == native))
    return rows


def work_table(rows: list) -> _HTML:
    body = []
    for r in rows:
        same = r["same_as_native"]
        body.append([r["workload"], HOST_NAMES.get(r["host"], r["host"])]
                    + [f"{r[k]:,}" for k in WORK]
                    + [_same_cell(same)])
    return _table(["workload", "host"] + list(WORK.values()) + ["guest state = native's"],
                  body, "hvsim-pv-work")


def plot_cycles(runs: dict, profile="nehalem", fig=None):
    """Cycles by category on ``profile``, one panel per workload, its hosts side by side
    (lesson 05's drawing, :func:`hvsim.lessons.l05_shadow_vs_nested.plot_cycles`)."""
    from hvsim.lessons.l05_shadow_vs_nested import plot_cycles as draw
    return draw({(w, HOST_NAMES.get(h, h)): r for (w, h), r in runs.items()}, profile, fig)


# ---- 5. the ring against the emulated disk ----------------------------------------------------
def io_rows(runs: dict) -> list:
    """For each host's run of the io workload: the bytes it moved to and from the disk,
    the entries into the host's software (traps + VM exits + hypercalls), bytes per
    entry, and for the split driver its ring's requests and notifications."""
    rows = []
    for (w, h), r in runs.items():
        if w != "io":
            continue
        mon = r.monitor
        s = mon.stats
        moved = 2 * r.params["N_SECTORS"] * 512                 # written, then read back
        entries = s["traps"] + s["vm_exits"] + s["hypercalls"]
        row = dict(host=h, bytes=moved, entries=entries,
                   per_entry=moved / entries if entries else float("inf"),
                   requests=0, notified=0, suppressed=0)
        if h == "pv":
            c = mon.counters
            row.update(requests=c["blk requests_consumed"], notified=c["blk notifications"],
                       suppressed=c["blk requests_consumed"] - c["blk notifications"])
        rows.append(row)
    return rows


def io_table(rows: list) -> _HTML:
    body = [[HOST_NAMES.get(r["host"], r["host"]), f"{r['bytes']:,}", f"{r['entries']:,}",
             "no entry at all" if r["per_entry"] == float("inf") else f"{r['per_entry']:,.1f}",
             r["requests"] or "-", r["notified"] or "-"] for r in rows]
    return _table(["host", "bytes moved", "traps / exits / hypercalls", "bytes per entry",
                   "ring requests", "notifications (EVTCHNOP_send)"], body, "hvsim-pv-io")


# ---- 6. exercise ---------------------------------------------------------------------------
def queue_guest(n: int, b: int) -> str:
    """A PV kernel that queues ``n`` page-table updates in a queue of ``b`` entries and
    sends the queue with one mmu_update whenever it is full, and once more at the end if
    anything is left (Linux's lazy MMU mode does the same)."""
    for name, v, hi in (("n", n, 256), ("b", b, 64)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
            raise ValueError(f"{name} must be an int from 1 to {hi}, got {v!r}")
    return f"""
start:  mov eax, [esi + 60]             ; start_info.pt_base: the directory
        mov eax, [eax + 4 * (0x200000 >> 22)]
        and eax, 0xFFFFF000
        mov [pt], eax                   ; the page table of VA 200000H
        xor edi, edi                    ; edi: updates made
        xor ebp, ebp                    ; ebp: entries in the queue
next:   mov eax, [pt]
        lea eax, [eax + 4 * edi + 4 * ((0x200000 >> 12) & 0x3FF)]  ; ptr: the entry of page edi
        mov ecx, edi
        shl ecx, 12
        add ecx, {_BATCH_FRAME:#x} + 0x63
        mov edx, ebp
        shl edx, 4
        mov [queue + edx], eax
        mov [queue + edx + 8], ecx
        inc ebp
        cmp ebp, {b}
        jne .queued
        call flush
.queued:
        inc edi
        cmp edi, {n}
        jne next
        test ebp, ebp
        jz done
        call flush
done:   jmp end
flush:  mov ebx, queue                  ; mmu_update(queue, ebp, NULL, DOMID_SELF)
        mov ecx, ebp
        xor edx, edx
        mov esi, 0x7FF0
        call hypercall_page + 1 * 32
        xor ebp, ebp
        ret
end:
""" + _END.replace("reason: dd 0", f"reason: dd 0\npt: dd 0\nalign 4\nqueue: times {16 * b} db 0")


def count_hypercalls(n: int, b: int) -> int:
    """The hypercalls :func:`queue_guest` makes before its shutdown, counted by running it."""
    hv = Hypervisor(program=assemble(queue_guest(n, b)))
    ev = hv.run(1_000_000)
    if ev.kind != "halt" or hv.pt_updates != n:
        raise RuntimeError(f"the queue guest stopped on {ev} after {hv.pt_updates} updates")
    return sum(hv.hypercalls.values()) - 1              # the shutdown is not an update


def _exercise_params(rng: random.Random) -> dict:
    return {"n": rng.randrange(20, 200), "b": rng.choice((4, 8, 16, 32, 64))}


def _exercise_question(p: dict) -> str:
    return (f"A paravirtualized kernel changes **{p['n']}** page-table entries. It does not "
            f"make a hypercall for each: it queues them, {p['b']} at most, and sends the "
            "queue with one `mmu_update` when it is full, and once more at the end if "
            "anything is left. **How many hypercalls** carry the updates? (The guest is "
            "`queue_guest(n, b)` in this lesson's module; the answer is counted by running "
            "it.)")


def _exercise_solution(p: dict, answer) -> str:
    n, b = p["n"], p["b"]
    full, rest = divmod(n, b)
    return (f"{n} updates in queues of {b}: {full} full queue(s)"
            + (f" and one last queue of {rest}" if rest else ", nothing left over")
            + f": ceil({n} / {b}) = **{math.ceil(n / b)}** hypercalls, each one trap into "
            f"the hypervisor, which validates every entry (still {n} checks: batching "
            "saves traps, not the hypervisor's work). Unbatched it would be "
            f"{n} traps. `from hvsim.lessons.l06_paravirtualization import count_hypercalls; "
            f"count_hypercalls({n}, {b})` runs the guest and counts {answer}.")


def batch_exercise(seed: int = 6) -> Exercise:
    """'How many hypercalls carry n updates with a queue of b?'"""
    return Exercise("hypercalls of a batched update loop", seed, make=_exercise_params,
                    question=_exercise_question,
                    answer=lambda p: count_hypercalls(p["n"], p["b"]),
                    solution=_exercise_solution)
