"""The kernel table (hvsim/cpu/table.py): handlers compiled as a guest meets them.

The run loop reaches every handler, and interrupt delivery, through a table of
addresses; an empty entry stops it before the instruction or event that needs it, the
host fills the entry and the loop goes on. That must be invisible to the guest. Here
one machine runs with the table full and a twin runs the same program with the table
emptied before every budget slice, so that it stops for kernels everywhere -- in fast
stretches and slow ones, for an instruction, for a fault on its way to the guest IDT,
for a timer interrupt, for a single-step trap. Events, the state array after every
slice, and at the end the TLB, page words, memory and decoded rows must be the same.
"""
import random

import numpy as np
import pytest

from hvsim import Machine, assemble
from hvsim.arch import layout as L
from hvsim.cpu import table
from hvsim.arch.counters import C_EXC
from hvsim.cpu import decode as D
from hvsim.cpu.decode import OP_NOP, OP_ALU_EG, OP_MOV_RI, OP_HLT
from hvsim.rings.setup import install
from test_blocks import random_program, make, state, CONFIGS
from test_guests import guest_source, GUESTS

SLICES = [1, 2, 3, 7, 20, 64, 1000]


@pytest.fixture
def requests(monkeypatch):
    """Every table request the machine makes, as (slot, what was waiting): 'insn' (an
    instruction kept in RESUME_ROW), 'fault' (a pending fault) or 'irq'."""
    seen = []
    fill = table.ensure
    table.ensure_all()
    full = table.KTAB.copy()

    def spy(slot):
        if table.KTAB[slot] == 0:
            st = spy.machine._st
            what = ("insn" if st[L.RESUME_ROW] >= 0 else "fault" if st[L.FAULT_PENDING] != 0
                    else "irq" if st[L.IRQ_PENDING] >= 0 else "?")
            seen.append((slot, what))
        fill(slot)
    spy.full = full
    monkeypatch.setattr(table, "ensure", spy)
    yield spy, seen
    table.KTAB[:] = spy.full


def run_twins(full, lazy, rng, spy, budget=400_000, breakpoints=()):
    """Run ``full`` with every entry filled and ``lazy`` with the table emptied before
    each of the same random budget slices; compare after each."""
    full.breakpoints = lazy.breakpoints = set(breakpoints)
    spy.machine = lazy
    steps = 0
    while True:
        n = rng.choice(SLICES)
        table.KTAB[:] = spy.full
        ef = full.run(n)
        table.KTAB[:] = 0
        el = lazy.run(n)
        assert ef == el, f"events differ: {ef} vs {el}"
        sf, sl = _guest_state(full), _guest_state(lazy)
        assert np.array_equal(sf, sl), f"st differs at {np.flatnonzero(sf != sl).tolist()} after {ef}"
        steps += n
        if ef.kind not in ("budget", "breakpoint") or steps > budget:
            break
    assert np.array_equal(_guest_state(full), _guest_state(lazy))
    for name, x, y in list(zip(("st", "tlb", "pg", "mem", "dc"), state(full), state(lazy)))[1:]:
        assert np.array_equal(x, y), f"{name} differs at the end"
    return ef


def _guest_state(m):
    """The state array but for st[EPT_WALKER]: the EPT walker's address in this process,
    which run() copies from the kernel table at every call (0 while that entry is empty)."""
    st = m._st.copy()
    st[L.EPT_WALKER] = 0
    return st


@pytest.mark.parametrize("name", sorted(p.stem for p in GUESTS.glob("*.s") if p.stem != "lib"))
def test_the_guest_kernels_run_the_same_with_the_table_emptied_before_every_slice(name, requests):
    spy, seen = requests
    prog = assemble(guest_source(name))
    twins = []
    for _ in range(2):
        m = Machine(exceptions="guest")
        m.load(prog)
        twins.append(m)
    ev = run_twins(*twins, random.Random(name), spy)
    assert ev.kind in ("halt", "shutdown")
    assert "FAIL" not in twins[1].console
    whats = {w for _, w in seen}
    assert "insn" in whats and "?" not in whats
    # an exception, a timer tick waited for the delivery kernel (emptied every slice)
    c = twins[1].counters
    raised = int(twins[1]._st[L.COUNTERS + C_EXC:L.COUNTERS + C_EXC + 32].sum())
    assert ((table.K_DELIVER, "fault") in seen) == (raised > 0)
    assert ((table.K_DELIVER, "irq") in seen) == (c["irqs"] > 0)
    assert (raised > 0) == (name in ("faults", "paging", "rings", "triple"))
    assert (c["irqs"] > 0) == (name == "timer")


@pytest.mark.parametrize("config", list(CONFIGS))
def test_random_programs_run_the_same_with_the_table_emptied_before_every_slice(config, requests):
    spy, seen = requests
    rng = random.Random(f"table {config}")
    for i in range(6):
        prog = assemble(random_program(rng))
        # blocks on in both: a block never needs the table, the instructions around it do
        run_twins(make(prog, 2, **CONFIGS[config]), make(prog, 2, **CONFIGS[config]), rng, spy,
                  breakpoints=[prog.origin + 40] if i % 2 else ())
    assert len(seen) > 100


def _single_step_machine():
    """Ring 0 with TF set and #DB (vector 1) delivered to a guest handler that counts."""
    m = Machine(memory=1 << 20, exceptions="guest")
    prog = assemble("""
        org 0x2000
        start:
            mov ecx, 5
            pushf
            or dword [esp], 0x100        ; EFLAGS.TF
            popf
        again:
            add eax, ecx
            loop again
            pushf
            and dword [esp], 0xFFFFFEFF  ; TF off again
            popf
            hlt
        db_handler:
            inc edi                      ; TF is clear in here (interrupt gate)
            iret
    """)
    t = install(m)
    m.load(prog)
    t.gate(m, 1, prog.labels["db_handler"])
    m.cpu.esp = t.stack_top(0)
    return m, prog


@pytest.mark.parametrize("stop_in_handler", [False, True])
def test_a_single_step_trap_waiting_for_delivery_keeps_its_trap_semantics(requests,
                                                                         stop_in_handler):
    """A #DB trap stopped for the delivery kernel must still return *after* the
    instruction that trapped (a fault would restart it): the counts below prove it. A
    host breakpoint on the handler must stop there after each delivery, as it does when
    the delivery did not wait."""
    spy, seen = requests
    full, prog = _single_step_machine()
    lazy, _ = _single_step_machine()
    bps = [prog.labels["db_handler"]] if stop_in_handler else []
    ev = run_twins(full, lazy, random.Random(1), spy, breakpoints=bps)
    assert ev.kind == "halt"
    assert lazy.cpu.eax == 15 and lazy.cpu.ecx == 0
    # a trap after each instruction that starts with TF=1 (SDM Vol. 3A, 17.3.1.4): not
    # after the POPF that sets it, then add/loop five times each, pushf, and, and the
    # POPF that clears it
    assert lazy.cpu.edi == 13
    assert (table.K_DELIVER, "fault") in seen


def _three_instructions_with_an_empty_table(spy):
    prog = assemble("mov eax, 7\nadd eax, eax\nhlt\n")
    m = Machine()
    m.load(prog)
    spy.machine = m
    table.KTAB[:] = 0
    return m, prog


def test_a_request_retires_nothing_and_the_instruction_is_not_fetched_twice(requests):
    spy, seen = requests
    m, _ = _three_instructions_with_an_empty_table(spy)
    ev = m.run(100)
    assert ev.kind == "halt" and m.cpu.eax == 14
    assert [s for s, _ in seen] == [OP_MOV_RI, OP_ALU_EG, OP_HLT]
    assert {w for _, w in seen} == {"insn"}
    c = m.counters
    # three instructions, each fetched and decoded once, though each stopped once first
    assert c["instructions"] == 3 and ev.steps == 3
    assert c["decode_misses"] == 3 and c["decode_hits"] == 0


def test_the_table_names_a_handler_for_every_family_but_nop():
    from hvsim.cpu import decode as D
    ops = {v for k, v in vars(D).items() if k.startswith("OP_")}
    assert set(table.HANDLERS) == ops - {OP_NOP}
    assert max(ops) < table.K_DELIVER
    # then the VM exit and the Python VMM's VM entry (hvsim/vtx), with the handler
    # signature, and the EPT walker
    assert (table.K_VMEXIT, table.K_VMENTRY, table.K_EPT) == tuple(table.K_DELIVER + i
                                                                   for i in (1, 2, 3))
    assert table.TABLE_SIZE == table.K_EPT + 1
    table.ensure_all()
    filled = np.flatnonzero(table.KTAB)
    assert sorted(filled.tolist()) == sorted(set(table.SLOTS))
    # families sharing a kernel share its address
    assert table.KTAB[D.OP_LAR] == table.KTAB[D.OP_LSL]
    assert table.KTAB[D.OP_MOVZX] == table.KTAB[D.OP_MOVSX]
    assert table.KTAB[D.OP_UD] == table.KTAB[D.OP_UD2]
    # one address per distinct handler, plus deliver, vm_exit, entry_request and ept_hook
    assert len(set(table.KTAB[filled].tolist())) == len(set(map(id, table.HANDLERS.values()))) + 4


def test_a_kernel_that_fails_to_compile_leaves_the_machine_able_to_run_again(requests, monkeypatch):
    spy, seen = requests
    m, prog = _three_instructions_with_an_empty_table(spy)

    def broken(slot):
        raise RuntimeError("no compiler today")
    monkeypatch.setattr(table, "ensure", broken)
    with pytest.raises(RuntimeError, match="no compiler today"):
        m.run(100)
    assert m._st[L.KERNEL_REQUEST] == -1 and m._st[L.RESUME_ROW] == -1
    assert m.cpu.eip == prog.origin and m.counters["instructions"] == 0
    monkeypatch.setattr(table, "ensure", spy)
    ev = m.run(100)
    assert ev.kind == "halt" and m.cpu.eax == 14 and m.counters["instructions"] == 3


class _Helper:
    """Stands in for the helper process: alive until told otherwise."""

    def __init__(self):
        self.returncode = None

    def poll(self):
        return self.returncode


def test_a_request_waits_for_the_kernel_the_helper_is_compiling_and_for_nothing_else(monkeypatch):
    class Kernel:
        pass
    kernels = {s: Kernel() for s in table.SLOTS}
    monkeypatch.setattr(table, "kernel_of", lambda s: (kernels[s], None))
    in_cache = set()
    sleeps = []

    def sleep(dt):                       # the helper finishes its kernel after 5 polls
        sleeps.append(dt)
        if len(sleeps) == 5:
            in_cache.add(kernels[first])
    monkeypatch.setattr(table, "cached", lambda fn: fn in in_cache)
    monkeypatch.setattr(table.time, "sleep", sleep)
    first, second, later = table.SLOTS[0], table.SLOTS[1], table.SLOTS[9]
    helper = _Helper()

    table.await_helper(later, helper)             # the helper is on `first`: no wait
    table.await_helper(first, None)               # no helper: no wait
    assert sleeps == []
    table.await_helper(first, helper)             # its kernel: wait until it is cached
    assert len(sleeps) == 5 and kernels[first] in in_cache
    table.await_helper(first, helper)             # cached now: loaded, no wait
    assert len(sleeps) == 5
    helper.returncode = -15                       # a stopped helper is not waited for
    table.await_helper(second, helper)
    assert len(sleeps) == 5
    monkeypatch.setitem(table._WRAPPERS, kernels[second], "compiled")  # in this process already
    helper.returncode = None
    table.await_helper(second, helper)
    assert len(sleeps) == 5
    del table._WRAPPERS[kernels[second]]
    monkeypatch.setattr(table.time, "sleep", lambda dt: None)
    table.await_helper(second, helper, timeout=0.05)   # never cached: gives up in time
    assert kernels[second] not in in_cache


def test_a_handler_that_does_not_return_its_status_ends_the_run_in_an_internal_error():
    """The run loop checks the status every C wrapper returns: a kernel-table entry whose
    call does not return STATUS_OK ends the instruction in an 'internal_error' exit that
    names the entry, with nothing retired -- a failed status is never dropped."""
    import numba
    if numba.config.DISABLE_JIT:
        pytest.skip("needs compiled wrappers")

    @numba.cfunc(table.C_HANDLER_SIG)
    def not_ok(mem_p, mem_n, st_p, st_n, tlb_p, tlb_n, pg_p, pg_n, dc_p, row):
        return 7

    table.ensure_all()
    m = Machine()
    m.load(assemble("mov eax, 1\ncpuid\nhlt"))
    saved = int(table.KTAB[D.OP_CPUID])
    table.KTAB[D.OP_CPUID] = not_ok.address
    try:
        ev = m.run()
    finally:
        table.KTAB[D.OP_CPUID] = saved
    assert (ev.kind, ev.vector, ev.eip) == ("internal_error", D.OP_CPUID, m.cpu.eip)
    assert m.cpu.eip == 0x1005 and m.counters["instructions"] == 1   # the MOV only
    assert m.counters.exits == {"internal_error": 1}


def test_a_state_restored_in_a_guest_with_ept_asks_for_the_ept_walker_first(requests):
    """The EPT walker is called in the middle of an instruction, so it cannot wait for a
    request there: it comes with the entries that can turn EPT on (VMLAUNCH/VMRESUME,
    the Python VMM's entry), and run() asks for it before anything else when the state
    is already in a guest with EPT -- a snapshot restored in a fresh process."""
    from test_ept import ept_run, GUEST_WORK
    spy, seen = requests
    m, ev, _, _ = ept_run(GUEST_WORK, budget=1)
    while ev.kind == "budget" and not m._st[L.VMX_NONROOT]:
        ev = m.run(max_steps=20)
    ev = m.run(max_steps=20)                             # stopped inside the guest
    assert ev.kind == "budget" and m._st[L.VMX_NONROOT] == 1 and m._st[L.VMX_EPT] == 1
    snap = m.snapshot()
    full = m.run(max_steps=200_000)
    spy.machine = m
    m.restore(snap)
    table.KTAB[table.K_EPT] = 0
    lazy = m.run(max_steps=200_000)
    assert seen[0] == (table.K_EPT, "?") and lazy == full
    assert table.KTAB[table.K_EPT] == spy.full[table.K_EPT]
    # the entries of VMLAUNCH/VMRESUME and of the Python VMM's entry bring it along
    for slot in (D.OP_VMX, table.K_VMENTRY):
        table.KTAB[:] = 0
        table.ensure(slot)
        assert sorted(np.flatnonzero(table.KTAB).tolist()) == sorted((slot, table.K_EPT))
