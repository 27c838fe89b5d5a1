"""Fill numba's on-disk cache by running a few tiny guest programs (Python; not jitted).

numba compiles a kernel, and every kernel it calls, the first time Python calls it.
With ``cache=True`` (hvsim/_jit.py) the machine code is written to disk, so the next
process only loads it. :func:`warmup` makes those first calls on purpose: every
Python-facing entry point of the machine is called once (run, step, paging on and
off, an exit to the host, an exception routed either way, a timer interrupt,
snapshot/restore), then every entry of the kernel table is filled (hvsim/cpu/table.py:
the handlers a guest would otherwise have compiled the first time it met them).

``hvsim warmup`` (and ``make test`` / ``make lab`` / Binder's postBuild) call it.

A cold compile uses a second process when there is a second core: see
:func:`start_compile_helper`.
"""
from __future__ import annotations

import importlib
import inspect
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

from hvsim.arch.pte import PTE_P, PTE_RW, PTE_US

PAGE = 4096

# A loop with arithmetic, memory operands, the stack, a call and the console port:
# the instruction families of an ordinary workload.
_WORKLOAD = """
    mov esp, 0x9000
    mov ebx, 0x8000
    mov ecx, 20
again:
    add eax, ecx
    mov [ebx], eax
    mov edx, [ebx]
    push edx
    pop esi
    call leaf
    loop again
    mov al, 0x6f
    out 0xe9, al
    hlt
leaf:
    xor edi, esi
    ret
"""

# An OUT to a port that no device claims: run() must leave with an 'io' event.
_UNCLAIMED_IO = """
    mov al, 1
    out 0x80, al
    hlt
"""

# A divide by zero: #DE, routed to the host ("host") or through the guest IDT ("guest";
# with an empty IDT that ends in a triple fault, which is the clean 'shutdown' event).
_DIVIDE_ERROR = """
    xor edx, edx
    xor ecx, ecx
    mov eax, 1
    div ecx
    hlt
"""


def identity_map_4k(memory, pd_pa: int, nbytes: int, user: bool = True) -> int:
    """Write a page directory at ``pd_pa`` and page tables right after it that map the
    first ``nbytes`` of linear memory onto the same physical addresses with 4 KiB pages
    (SDM Vol. 3A, 4.3: 32-bit paging; PDE -> page table -> 4 KiB frame). Returns the
    CR3 value. ``memory`` is the machine's uint8 array."""
    if pd_pa % PAGE:
        raise ValueError(f"page directory address {pd_pa:#x} is not 4 KiB aligned")
    flags = PTE_P | PTE_RW | (PTE_US if user else 0)
    npages = (nbytes + PAGE - 1) // PAGE
    ntables = (npages + 1023) // 1024
    if pd_pa + (1 + ntables) * PAGE > len(memory):
        raise ValueError("the page tables do not fit in guest memory")
    # Build directory + tables as 32-bit words, then store them with one write.
    words = np.zeros((1 + ntables) * 1024, dtype="<u4")
    tables = pd_pa + PAGE * (1 + np.arange(ntables, dtype=np.int64))
    words[:ntables] = tables | flags                                  # PDE i -> table i
    words[1024:1024 + npages] = (np.arange(npages, dtype=np.int64) * PAGE) | flags  # PTE p -> frame p
    memory[pd_pa:pd_pa + words.nbytes] = words.view(np.uint8)
    return pd_pa


def enable_paging(m, cr3: int) -> None:
    """Load CR3 and set CR0.PG (with CR0.PE, which the bare machine already has)."""
    from hvsim.arch.cr import CR0_PE, CR0_PG
    m.cpu.cr3 = cr3
    m.cpu.cr0 = int(m.cpu.cr0) | CR0_PE | CR0_PG


def _expect(what: str, got, want) -> None:
    if got != want:
        raise RuntimeError(f"hvsim warmup: {what}: got {got!r}, expected {want!r}")


def compile_bytecode() -> bool:
    """Write the package's Python bytecode (``__pycache__/*.pyc``) ahead, as ``pip
    install`` does for a package it copies: an editable install run with
    ``PYTHONDONTWRITEBYTECODE=1`` (or from a read-only checkout) would otherwise
    compile hvsim's sources on every import, about 0.1 s of each start. Python
    checks each file against its source and ignores a stale one. False when the
    package's folder cannot be written (nothing is left half-written then: each file
    is written to a temporary name and renamed)."""
    import compileall
    package = pathlib.Path(__file__).resolve().parent
    try:
        return bool(compileall.compile_dir(str(package), quiet=2))
    except OSError:
        return False


PROGRESS_EVERY = 5.0     # seconds between two lines about the kernel table


def warmup(progress=None) -> float:
    """Compile (or load from the cache) every kernel; returns the seconds it took.

    The programs' results are checked too (cheaply), so a broken build fails here
    with a clear message instead of in the first notebook cell. The package's
    bytecode is written first (:func:`compile_bytecode`).

    ``progress``: None (quiet), or a function called with one line of text after each
    stage and every PROGRESS_EVERY seconds through the kernel table, e.g. ``kernels
    compiled: 37 of 76 (41 s)`` (``hvsim warmup`` prints them on stderr).
    """
    t0 = time.perf_counter()

    def report(text):
        if progress is not None:
            progress(f"{text} ({time.perf_counter() - t0:.0f} s)")

    compile_bytecode()
    from hvsim import Machine, assemble, disassemble
    global _reporting
    reporting = _reporting
    if progress is not None:
        _reporting = True                          # this function says what it does
        report("compiling the run loop first (the longest step on an empty cache)")
    try:
        workload = assemble(_WORKLOAD)
        disassemble(workload.code, workload.origin)

        # run() with paging off, then step() through the same program.
        m = Machine()
        m.load(workload)
        _expect("workload", m.run(max_steps=10_000).kind, "halt")
        _expect("console output", m.console, "o")
        flat_eax = int(m.cpu.eax)
        m.load(workload)
        for _ in range(5):
            m.step()
        report("the run loop is ready")

        # Paging and the TLB on: identity map the first 4 MiB with 4 KiB pages.
        m = Machine()
        m.load(workload)
        enable_paging(m, identity_map_4k(m.memory, 0x100000, 4 << 20))
        _expect("workload with paging", m.run(max_steps=10_000).kind, "halt")
        _expect("eax with paging on", int(m.cpu.eax), flat_eax)

        # Exits to the host, snapshot and restore, a timer, exceptions either way.
        m = Machine()
        m.load(assemble(_UNCLAIMED_IO))
        saved = m.snapshot()
        _expect("OUT to an unclaimed port", m.run(max_steps=100).kind, "io")
        m.restore(saved)
        for exceptions, outcome in (("host", "exception"), ("guest", "shutdown")):
            m = Machine(exceptions=exceptions, timer=1000)
            m.load(assemble(_DIVIDE_ERROR))
            _expect(f"divide by zero, exceptions={exceptions!r}", m.run(max_steps=100).kind, outcome)

        # The system tables lessons and monitors build from Python: loading TR from the face
        # calls the core's LTR kernel.
        from hvsim.rings.setup import install
        m = Machine(memory=1 << 20)
        tables = install(m)
        _expect("TR after install()", int(m.cpu.tr), tables.tss_selector)
        report("paging, exits, exceptions, the timer and snapshots are ready")

        # every other instruction family: the kernel table's remaining entries, from the
        # last (a helper process, if any, compiles from the first: see kernel_plan)
        from hvsim.cpu import table
        last = time.perf_counter()
        for done, slot in enumerate(reversed(table.SLOTS), 1):
            table.ensure(slot)
            if done == len(table.SLOTS) or time.perf_counter() - last >= PROGRESS_EVERY:
                report(f"kernels compiled: {done} of {len(table.SLOTS)}")
                last = time.perf_counter()
    finally:
        _reporting = reporting
    return time.perf_counter() - t0


_reporting = False      # warmup() is reporting its progress (see first_compile_notice)


def first_compile_notice() -> bool:
    """Whether the engine should announce a first compile (hvsim/engine.py): not while
    :func:`warmup` reports its own progress, which the notice's "about 10 s" would
    contradict."""
    return not _reporting


# ---- a second process for the cold compile -------------------------------------------
#
# numba compiles on one thread, and writes each compiled kernel to the disk cache as
# soon as it is done -- and looks in the disk cache before it compiles one. So while
# the main process compiles ``run`` (the fetch, the decode cache, the loop), a helper
# process compiles the kernel table's handlers (hvsim/cpu/table.py) in the order a
# program meets them: when the first instructions ask for their handlers, the helper
# has usually finished them, and the main process only loads them. The helper then
# goes on through every other handler, so later first uses load too.
#
# The run loop's own compile is shared the same way. Its largest callee, the MMU's
# translation (about a third of it), is what the helper compiles first, while the main
# process compiles the loop's other callees (RUN_LOOP_MAIN) and then waits, if it must,
# for the helper's translation to reach the cache before it compiles ``run`` itself.
RUN_LOOP_HELPER = ("hvsim.mmu.paging.translate",)
RUN_LOOP_MAIN = ("hvsim.cpu.run._exit", "hvsim.cpu.run.handle_fault",
                 "hvsim.cpu.run._nonroot_events", "hvsim.cpu.decode.decode")

def _argument_types():
    """numba type of each kernel parameter, by name: the run loop's six arrays, one
    flag, and int64 for every other scalar (what the kernels are compiled for when the
    run loop calls them; tests/test_jit_policy.py checks it against numba's cache)."""
    from numba import types
    from hvsim.arch.layout import DC_SHAPE
    i64 = types.Array(types.int64, 1, "C")
    i64x2 = types.Array(types.int64, 2, "C")
    return {"mem": types.Array(types.uint8, 1, "C"), "st": i64, "tlb": i64, "pg": i64,
            "ktab": i64, "dc": types.Array(types.int64, len(DC_SHAPE), "C"),
            "wide_nonzero": types.boolean,
            # the emulation model's arrays (hvsim/emulation/model.py consume)
            "recs": types.Array(types.uint32, 2, "C"), "q": i64, "s": i64, "tbs": i64x2,
            "pages": i64, "htab": i64, "jcache": i64, "icache": i64x2, "stamps": i64}


def kernel_plan():
    """``[(name, dispatcher, argument types)]``: every kernel that is compiled on its own
    (not marked ``inline="always"``) besides ``run`` and the kernel table's entries, from
    the last module to the first. (The table's entries are compiled with their C wrappers,
    hvsim/cpu/table.py, in the order of ``table.SLOTS``: :func:`compile_plan` does those
    first.)"""
    from numba.core.registry import CPUDispatcher
    from numba import types
    from hvsim._jit import _PACKAGE, kernel_sources
    from hvsim.cpu import run as run_module
    from hvsim.cpu import table
    types_by_name = _argument_types()
    in_table = {table.kernel_of(s)[0] for s in table.SLOTS}
    found = {}
    for path in kernel_sources():
        rel = path.relative_to(_PACKAGE.parent).with_suffix("")
        module = importlib.import_module(".".join(rel.parts).removesuffix(".__init__"))
        for name, obj in vars(module).items():
            if (isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == module.__name__
                    and obj.targetoptions.get("inline", "never") != "always"
                    and obj is not run_module.run and obj not in in_table):
                params = inspect.signature(obj.py_func).parameters
                sig = tuple(types_by_name.get(p, types.int64) for p in params)
                found[f"{module.__name__}.{name}"] = (obj, sig)
    return [(n, *found[n]) for n in reversed(list(found))]


def _named_kernels(names):
    """``[(dispatcher, argument types)]`` of the kernels named ``module.function``,
    typed as the run loop calls them (:func:`_argument_types`)."""
    from numba import types
    types_by_name = _argument_types()
    out = []
    for name in names:
        module, _, fn = name.rpartition(".")
        dispatcher = getattr(importlib.import_module(module), fn)
        params = inspect.signature(dispatcher.py_func).parameters
        out.append((dispatcher, tuple(types_by_name.get(p, types.int64) for p in params)))
    return out


def _in_disk_cache(dispatcher):
    """Whether numba's disk cache holds a compiled version of ``dispatcher`` (False
    when that cannot be told)."""
    try:
        return os.path.exists(dispatcher._cache._cache_file._index_path)
    except AttributeError:
        return False


def compile_run_loop_parts(helper, timeout=20.0) -> None:
    """The main process's share of a cold compile of the run loop (see above): compile
    RUN_LOOP_MAIN, then wait while ``helper`` is alive and compiling RUN_LOOP_HELPER,
    at most ``timeout`` seconds; whatever it has not cached by then, ``run``'s own
    compile compiles here."""
    if helper is None:
        return
    for dispatcher, sig in _named_kernels(RUN_LOOP_MAIN):
        dispatcher.compile(sig)
    deadline = time.monotonic() + timeout
    for dispatcher, _ in _named_kernels(RUN_LOOP_HELPER):
        while (not dispatcher.overloads and not _in_disk_cache(dispatcher)
               and helper.poll() is None and time.monotonic() < deadline):
            time.sleep(0.01)


def compile_plan() -> None:
    """The helper's work: compile (into the disk cache) the run loop's RUN_LOOP_HELPER
    kernels, then the kernel table's entries with their C wrappers, in the order a
    program meets them (hvsim/cpu/table.py), then every other kernel of
    :func:`kernel_plan`."""
    from hvsim.cpu import table
    for dispatcher, sig in _named_kernels(RUN_LOOP_HELPER):
        dispatcher.compile(sig)
    for slot in table.SLOTS:
        table.ensure(slot)
    for _name, dispatcher, sig in kernel_plan():
        dispatcher.compile(sig)


def start_compile_helper():
    """Start the helper process for a cold compile; returns it, or None on one core or
    when ``HVSIM_COMPILE_HELPER=0`` is set.

    It exits when it has compiled its whole plan; the caller stops it sooner with
    :func:`stop_compile_helper` (the machine does at exit, hvsim/machine.py). The
    helper only adds files to the cache, and numba writes each through a temporary file
    and a rename: stopping it mid-compile loses its unfinished kernel and at worst leaves
    a stray temporary file, which numba never reads.
    """
    if os.environ.get("HVSIM_COMPILE_HELPER", "1") == "0":
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:                   # not Linux
        cores = os.cpu_count() or 1
    if cores < 2:
        return None
    # the helper must import this same hvsim (numba files its cache by source path)
    here = str(pathlib.Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    try:
        return subprocess.Popen(
            [sys.executable, "-c", "from hvsim.warmup import compile_plan; compile_plan()"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
    except OSError:
        return None


def stop_compile_helper(helper) -> None:
    """Stop the helper (None: nothing to stop) and reap it."""
    if helper is None:
        return
    helper.terminate()
    try:
        helper.wait(timeout=10)
    except subprocess.TimeoutExpired:
        helper.kill()
        helper.wait()
