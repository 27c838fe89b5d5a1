"""The numba cache policy: which source edits drop the cached kernels (hvsim/_jit.py)."""
import shutil

import numba
import pytest

import hvsim._jit as J
import hvsim._numba_corrections as C


def test_sources_hash_covers_folded_constants_but_not_python_faces(tmp_path, monkeypatch):
    pkg = tmp_path / "hvsim"
    shutil.copytree(J._PACKAGE, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(J, "_PACKAGE", pkg)
    h0 = J.sources_hash()
    (pkg / "widgets" / "new_face.py").write_text("X = 1\n")
    for face in ("machine.py", "engine.py", "cli.py", "asm/assembler.py", "cpu/translate.py",
                 "rings/setup.py", "mmu/__init__.py", "monitors/trap_and_emulate.py",
                 "monitors/base.py", "instruction.py"):
        (pkg / face).write_text((pkg / face).read_text() + "\n# a face edit\n")
    assert J.sources_hash() == h0            # no kernel folds these in: keep the cache
    # layout.py has no @njit, but its slot numbers are compiled into every kernel
    (pkg / "arch" / "layout.py").write_text((pkg / "arch" / "layout.py").read_text() + "\nX = 1\n")
    h1 = J.sources_hash()
    assert h1 != h0
    # a new package with a kernel counts at once, and so does what it imports
    (pkg / "vtx" / "entry.py").write_text("from hvsim._jit import njit\nfrom hvsim.vtx.fields import F\n"
                                          "@njit\ndef vmentry(st):\n    return F\n")
    (pkg / "vtx" / "fields.py").write_text("F = 1\n")
    h2 = J.sources_hash()
    assert h2 != h1
    (pkg / "vtx" / "fields.py").write_text("F = 2\n")
    assert J.sources_hash() != h2


def test_kernel_sources_are_derived_from_the_code():
    """The modules that define kernels and what they import, nothing above the machine."""
    names = {p.relative_to(J._PACKAGE).as_posix() for p in J.kernel_sources()}
    defining = {p.relative_to(J._PACKAGE).as_posix() for p in J._PACKAGE.rglob("*.py")
                if J._KERNEL_DEF.search(p.read_text()) and p.name != "_jit.py"}
    assert defining and defining <= names
    assert {"cpu/run.py", "cpu/table.py", "mmu/paging.py", "rings/interrupts.py",
            "arch/layout.py", "arch/counters.py", "arch/flags.py", "arch/fault.py"} <= names
    for face in ("machine.py", "engine.py", "instruction.py", "cpu/translate.py",
                 "rings/setup.py", "mmu/__init__.py", "cli.py"):
        assert face not in names, face
    assert not any(n.startswith(("monitors/", "widgets/", "viz/", "lessons/", "cost/", "asm/"))
                   for n in names), names


def test_a_stale_stamp_drops_hvsims_kernels_from_a_numba_cache_dir_and_nothing_else(
        tmp_path, monkeypatch):
    """With NUMBA_CACHE_DIR set, numba files kernels under <dir>/<folder>_<sha1 of path>."""
    from numba.core.caching import _CacheLocator
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    ours = [tmp_path / _CacheLocator.get_suitable_cache_subpath(str(J._PACKAGE / pkg / "x.py"))
            for pkg in ("cpu", "mmu", "rings")]
    theirs = tmp_path / _CacheLocator.get_suitable_cache_subpath("/elsewhere/cpu/x.py")
    for d in ours + [theirs]:
        d.mkdir()
        (d / "k.f-1.py311.nbi").write_bytes(b"i")
        (d / "k.f-1.py311.1.nbc").write_bytes(b"c")
    (tmp_path / J._STAMP_NAME).write_text("an older hash")
    J._invalidate_stale_cache()
    assert [p.name for d in ours for p in d.iterdir()] == []
    assert sorted(p.name for p in theirs.iterdir()) == ["k.f-1.py311.1.nbc", "k.f-1.py311.nbi"]
    assert (tmp_path / J._STAMP_NAME).read_text().split("\n") == [J.sources_hash(), J._quick_stamp()]
    for d in ours:                                   # a current stamp keeps what is cached
        (d / "k.f-1.py311.nbi").write_bytes(b"i")
    J._invalidate_stale_cache()
    assert all((d / "k.f-1.py311.nbi").exists() for d in ours)
    # a stamp whose quick line is out of date but whose hash still holds keeps them too
    stamp = tmp_path / J._STAMP_NAME
    stamp.write_text(J.sources_hash() + "\nan older quick stamp")
    J._invalidate_stale_cache()
    assert all((d / "k.f-1.py311.nbi").exists() for d in ours)
    assert stamp.read_text().split("\n")[1] == J._quick_stamp()


def test_a_constant_argument_does_not_compile_a_kernel_once_per_value():
    """numba types constants as literals; hvsim's njit compiles one version per real type."""
    @J.njit(cache=False)
    def callee(a, b):
        return a * 10 + b

    @numba.njit(cache=False)
    def callee_numba(a, b):
        return a * 10 + b

    @J.njit(cache=False)
    def caller(x):
        return (callee(x, 1) + callee(x, 2) + callee(x, -3)
                + callee_numba(x, 1) + callee_numba(x, 2) + callee_numba(x, -3))

    assert caller(5) == 2 * (150 + 1 + 2 - 3)
    assert len(callee.signatures) == 1
    assert "Literal" not in str(callee.signatures[0])
    assert len(callee_numba.signatures) == 3        # plain numba: one per constant


def test_the_cache_probe_sees_an_empty_cache_and_a_warm_process_prints_no_notice(tmp_path):
    """The probe behind the first-use notice, against a real empty and a real warm cache."""
    import os
    import subprocess
    import sys

    from hvsim.engine import kernel_cache_present
    assert kernel_cache_present() is True          # `make test` warmed the cache
    probe = "from hvsim.engine import kernel_cache_present as k; print(k())"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    warm = ("from hvsim import Machine, assemble\n"
            "m = Machine(); m.load(assemble('mov eax, 7\\nhlt')); m.run(); print(m.cpu.eax)")
    out = subprocess.run([sys.executable, "-c", warm], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "7"
    assert "compiling" not in out.stderr


def test_the_inliner_copies_an_ir_with_one_scope_and_never_shares_between_copies():
    """hvsim gives numba's inliner one deep-copy memo per IR copy (see _InlinerCopy)."""
    from numba.core import inline_closurecall, ir
    from numba.core.compiler import run_frontend
    from hvsim._numba_corrections import compiling

    def body(a, b):
        t = 0
        for i in range(a):
            if i % 3 == 0:
                t += b
            else:
                t -= i
        return t

    fir = run_frontend(body)
    assert len(fir.blocks) > 3
    shim = inline_closurecall.copy
    assert isinstance(shim, C._InlinerCopy)

    def copy_all():                      # what numba's copy_ir does with the blocks
        return {label: shim.deepcopy(block) for label, block in fir.blocks.items()}

    with compiling():
        first, second = copy_all(), copy_all()
    assert C.CORRECTIONS["inliner_copy"].on
    scopes1 = {id(b.scope) for b in first.values()}
    scopes2 = {id(b.scope) for b in second.values()}
    assert len(scopes1) == 1 and len(scopes2) == 1          # one scope per copy...
    assert scopes1 != scopes2                                # ...never shared between copies
    assert id(fir.blocks[next(iter(fir.blocks))].scope) not in scopes1 | scopes2
    stmts1 = {id(a) for b in first.values() for a in b.find_insts(ir.Assign)}
    stmts2 = {id(a) for b in second.values() for a in b.find_insts(ir.Assign)}
    assert stmts1 and not stmts1 & stmts2
    for label, block in fir.blocks.items():                  # same statements, copied
        assert [str(s) for s in first[label].body] == [str(s) for s in block.body]


@J.njit(cache=False, inline=J.inline_in(__name__ + ".inlined_site"))
def _probe(a):
    return a + 1


@J.njit(cache=False)
def inlined_site(a):
    return _probe(a) * 2


@J.njit(cache=False)
def called_site(a):
    return _probe(a) * 3


def test_inline_in_a_named_function_inlines_a_kernel_there_only():
    assert inlined_site(4) == 10
    assert _probe.signatures == []          # inlined: never compiled on its own
    assert called_site(4) == 15
    assert len(_probe.signatures) == 1      # any other caller calls one compiled copy


class _UncompiledRun:
    """Stands in for the run dispatcher before its first call (no compile happens)."""

    def __init__(self):
        self.signatures, self.overloads = [], {}

    def __call__(self, *args):
        import types
        self.signatures.append("sig")
        self.overloads["sig"] = types.SimpleNamespace(entry_point="compiled entry")


def test_the_first_call_prints_the_notice_and_starts_the_helper_exactly_when_the_cache_is_empty(
        monkeypatch, capsys):
    import hvsim.cpu.run
    import hvsim.engine as M
    import hvsim.warmup as W
    calls = []
    monkeypatch.setattr(W, "start_compile_helper", lambda: calls.append("start") or "helper")
    # this process compiles its share of the run loop beside the helper
    monkeypatch.setattr(W, "compile_run_loop_parts", lambda h: calls.append(("share", h)))
    # the helper goes on after the run loop is compiled: it is stopped at exit
    monkeypatch.setattr(M.atexit, "register", lambda fn, h: calls.append((fn.__name__, h)))
    for present, printed in ((False, True), (True, False), (None, False)):
        calls.clear()
        monkeypatch.setattr(hvsim.cpu.run, "run", _UncompiledRun())
        monkeypatch.setattr(M, "_ENTRY", None)
        monkeypatch.setattr(M, "kernel_cache_present", lambda: present)
        assert M._kernel_entry() == "compiled entry"
        assert (M.FIRST_COMPILE_NOTICE in capsys.readouterr().err) is printed, present
        assert calls == (["start", ("stop_compile_helper", "helper"), ("share", "helper")]
                         if printed else []), present


def _cached_signatures(dispatcher):
    return {key[0] for key in dispatcher._cache._cache_file._load_index()}


def test_the_compile_helper_plans_what_the_run_loop_compiles_with_the_same_types():
    """Every kernel in numba's cache (`make test` warmed it) is in the helper's plan with
    the argument types numba compiled it for, and the plan holds nothing else but three
    kernels that only tests call: so the helper's work is not wasted. The kernel table's
    entries are not in it: the helper compiles them first, with their C wrappers, and
    each wrapper is cached."""
    from numba.core.registry import CPUDispatcher
    from hvsim.warmup import kernel_plan
    from hvsim.cpu import table
    import hvsim.cpu.run as R
    plan = kernel_plan()
    names = [n for n, _, _ in plan]
    assert len(names) == len(set(names)) and "hvsim.cpu.run.run" not in names
    assert _cached_signatures(R.run)                  # the cache is warm
    in_table = {table.kernel_of(s)[0] for s in table.SLOTS}
    assert all(table.cached(fn) is True for fn in in_table)
    never_cached = []
    for name, dispatcher, sig in plan:
        assert isinstance(dispatcher, CPUDispatcher) and dispatcher not in in_table
        assert dispatcher.targetoptions.get("inline") != "always", name
        cached = _cached_signatures(dispatcher)
        if cached:
            assert sig in cached, (name, sig, cached)
        else:
            never_cached.append(name.rsplit(".", 1)[1])
    # only tests call these (and compile them when they run first): the rest is cached
    assert set(never_cached) <= {"big_stack", "pop32", "push32"}
    assert len(plan) > 80


def test_the_run_loops_compile_is_split_between_the_two_processes_without_overlap():
    """The helper's first kernels and this process's are different ones, each typed as
    the run loop calls it: the run loop's compile then finds them, cached or in memory,
    and the cache holds one version of each -- a second would be a wasted compile."""
    import hvsim.warmup as W
    from hvsim.warmup import _named_kernels, RUN_LOOP_HELPER, RUN_LOOP_MAIN
    import hvsim.cpu.run as R
    helper, main = _named_kernels(RUN_LOOP_HELPER), _named_kernels(RUN_LOOP_MAIN)
    assert not {id(d) for d, _ in helper} & {id(d) for d, _ in main}
    for dispatcher, sig in helper + main:
        assert _cached_signatures(dispatcher) == {sig}, dispatcher.py_func.__qualname__
        # reached from the run loop: named in run.py's module or what it imports
        assert dispatcher.py_func.__module__ in ("hvsim.cpu.run", "hvsim.cpu.decode",
                                                 "hvsim.mmu.paging")
    assert _cached_signatures(R.run)
    assert W.compile_run_loop_parts(None) is None       # no helper: nothing shared


def test_the_helper_process_fills_an_empty_cache_and_stops_when_asked(tmp_path, monkeypatch):
    import time
    from hvsim.warmup import start_compile_helper, stop_compile_helper
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HVSIM_COMPILE_HELPER", "0")
    assert start_compile_helper() is None
    monkeypatch.setenv("HVSIM_COMPILE_HELPER", "1")
    helper = start_compile_helper()
    if helper is None:
        pytest.skip("one core: no helper process")
    # where numba files the kernels of *this* hvsim's cpu/ (the helper imports the same)
    from numba.core.caching import _CacheLocator
    cpu = tmp_path / _CacheLocator.get_suitable_cache_subpath(str(J._PACKAGE / "cpu" / "x.py"))
    deadline = time.monotonic() + 120               # op_mov_ri is the table's first entry
    # the first entry's C wrapper (named after the table module, hvsim/cpu/table.py)
    while not list(cpu.glob("table.c_op_mov_ri-*.nbi")) and time.monotonic() < deadline:
        assert helper.poll() is None
        time.sleep(0.2)
    stop_compile_helper(helper)
    assert helper.returncode is not None
    assert list(cpu.glob("table.c_op_mov_ri-*.nbc"))   # compiled, written to this cache


def test_the_ssa_pass_gives_numbas_own_ir():
    """hvsim's SSA reconstruction against numba's own, on the IR of real kernels."""
    import copy
    from numba.core import ssa
    from numba.core.compiler import run_frontend
    from hvsim.cpu import decode, run, system
    from hvsim.rings import interrupts
    assert ssa._run_ssa is C.CORRECTIONS["ssa"]

    def dump(blocks):
        return [(label, [str(s) for s in blk.body]) for label, blk in blocks.items()]

    fixed = 0
    for kernel in (run.run, decode.decode, interrupts.deliver_once, system.op_grp5):
        blocks = run_frontend(kernel.py_func).blocks
        fixed += len(ssa._find_defs_violators(blocks, ssa.compute_cfg_from_blocks(blocks)))
        theirs = C.CORRECTIONS["ssa"].theirs(copy.deepcopy(blocks))
        ours = C._run_ssa_touching_only_mentioning_blocks(blocks)
        assert dump(ours) == dump(theirs), kernel
        assert any("phi(" in str(s) for blk in ours.values() for s in blk.body)
    assert fixed > 30                                  # the kernels do redefine variables


def test_the_liveness_analysis_gives_numbas_own_live_map():
    """hvsim's bitset liveness against numba's own, on the IR of real kernels (after SSA,
    as numba's later passes see it)."""
    from numba.core import analysis, ir_utils, ssa
    from numba.core.compiler import run_frontend
    from hvsim.cpu import decode, run, system
    from hvsim.rings import interrupts
    assert analysis.compute_live_map is C.CORRECTIONS["liveness"]
    assert ir_utils.compute_live_map is C.CORRECTIONS["liveness"]
    live_somewhere = 0
    for kernel in (run.run, decode.decode, interrupts.deliver_once, system.op_grp5):
        blocks = C.CORRECTIONS["ssa"].theirs(run_frontend(kernel.py_func).blocks)
        cfg = analysis.compute_cfg_from_blocks(blocks)
        usedefs = analysis.compute_use_defs(blocks)
        ours = C._compute_live_map_with_bitsets(cfg, blocks, usedefs.usemap, usedefs.defmap)
        theirs = C.CORRECTIONS["liveness"].theirs(cfg, blocks, usedefs.usemap, usedefs.defmap)
        assert list(ours) == list(theirs) and ours == theirs, kernel
        live_somewhere += sum(len(v) for v in ours.values())
    assert live_somewhere > 500                  # variables do live across blocks


def test_compile_flags_hash_and_compare_as_numba_defines_them():
    from numba.core.compiler import Flags
    stock_values, stock_hash = C.CORRECTIONS["flags_values"].theirs
    plain, a, b = Flags(), Flags(), Flags()
    a.nrt = True
    a.error_model = "numpy"
    b.nrt = True
    b.error_model = "numpy"
    for flags in (plain, a, b):
        assert C._target_config_values(flags) == stock_values(flags)
        assert C._target_config_hash(flags) == hash(flags) == stock_hash(flags)
    assert a.values()["nrt"] is True and plain.values()["nrt"] is False
    assert a == b and a != plain and hash(a) == hash(plain)       # numba hashes names only
    assert len({a: 1, b: 2, plain: 3}) == 2


def test_a_users_njit_compiles_with_stock_numba_and_hvsims_kernels_with_the_corrections():
    """The corrections of numba's internals apply only while hvsim compiles its own
    kernels: a user's @numba.njit in the same process never goes through them."""
    used = []
    for name in ("ssa", "liveness"):
        c = C.CORRECTIONS[name]
        ours = c.ours
        c.ours = (lambda f, n: lambda *a, **k: used.append(n) or f(*a, **k))(ours, name)
    try:
        @numba.njit(cache=False)
        def user(n):
            t = 0
            for i in range(n):
                t = t + i if i % 2 else t - 1
            return t

        assert user(10) == sum(i for i in range(10) if i % 2) - 5
        assert used == []                          # stock numba compiled the user's function

        @J.njit(cache=False)
        def ours_(n):
            t = 0
            for i in range(n):
                t = t + i if i % 2 else t - 1
            return t

        assert ours_(10) == user(10)
        assert "ssa" in used and "liveness" in used
    finally:
        for name in ("ssa", "liveness"):
            C.CORRECTIONS[name].ours = getattr(C, {"ssa": "_run_ssa_touching_only_mentioning_blocks",
                                                   "liveness": "_compute_live_map_with_bitsets"}[name])


_BROKEN_CORRECTIONS = r"""
import sys, warnings
warnings.simplefilter("always")
import hvsim._numba_corrections as C
def boom(*a, **k):
    raise TypeError("numba changed")
for c in C.CORRECTIONS.values():
    c.ours = boom
    c.check = lambda: (_ for _ in ()).throw(TypeError("numba changed"))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from hvsim import Machine, assemble
    import numba
    m = Machine()
    m.load(assemble("mov ecx, 10\nagain: add eax, ecx\nloop again\nhlt"))
    ev = m.run()
    @numba.njit(cache=False)
    def user(n):
        return sum([i for i in range(n)])
    from hvsim.warmup import warmup
    warmup()                                # every kernel, with numba's own code
    print(ev.kind, m.cpu.eax, user(5))
print(sorted(C.status().items()))
print(len([w for w in caught if "correction" in str(w.message)]))
"""


@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_with_every_correction_broken_hvsim_still_imports_compiles_and_runs(tmp_path):
    """A numba upgrade that breaks every correction: each is switched off with one
    warning, every kernel compiles with stock numba (slower: a cold `hvsim warmup` in one
    process) and gives the same result, and a user's @njit compiles."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), HVSIM_COMPILE_HELPER="0")
    out = subprocess.run([sys.executable, "-c", _BROKEN_CORRECTIONS], env=env,
                         capture_output=True, text=True, timeout=2400)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "halt 55 10"
    assert all(v.startswith("off: its check on a tiny function raised TypeError")
               for _, v in eval(lines[1])), lines[1]
    assert lines[2] == "4"                          # one warning per correction, once


def test_the_one_overload_lookup_falls_back_to_numbas_own_with_one_warning(monkeypatch):
    """Typing a kernel's call for plain argument types overrides a numba method; should
    that raise (numba changed), numba's own lookup answers from then on."""
    from numba import types
    calls = []

    class Dispatcher:                                    # numba's side, as the wrapper sees it
        def get_call_template(self, args, kws):
            calls.append(args)
            if len(calls) == 1:
                raise TypeError("numba changed")
            return "template", args

    monkeypatch.setitem(J._UNLITERAL, "on", True)
    d = J._one_overload_per_type(Dispatcher())
    lit = types.literal(13)
    with pytest.warns(RuntimeWarning, match="plain argument types"):
        assert d.get_call_template((lit,), {}) == ("template", (lit,))
    assert J._UNLITERAL["on"] is False
    assert d.get_call_template((lit,), {}) == ("template", (lit,))
    assert calls == [(types.int64,), (lit,), (lit,)]   # unliteral tried once, then numba's


def test_corrections_whose_numba_internals_moved_stay_off_and_numba_still_compiles():
    """numba's internals not where a correction expects them: the correction is never put
    in place (one warning each), numba's own functions stay, import works."""
    import os
    import subprocess
    import sys
    probe = r"""
import warnings
warnings.simplefilter("always")
from numba.core import analysis, inline_closurecall, ir_utils, targetconfig
import numba.core.ssa as ssa
inline_closurecall.copy = type("NotCopy", (), {"deepcopy": staticmethod(__import__("copy").deepcopy)})()
stock = analysis.compute_live_map
ir_utils.compute_live_map = lambda *a: stock(*a)          # a wrapper: not the same function
targetconfig.TargetConfig.__slots__ = ()
del ssa._CacheListVars
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import hvsim._numba_corrections as C
print(sorted(C.status().items()))
print(analysis.compute_live_map is stock, len([w for w in caught if "correction" in str(w.message)]))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env=dict(os.environ), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    status, tail = out.stdout.strip().splitlines()
    status = dict(eval(status))
    assert status["inliner_copy"] == "off: numba's inliner no longer copies IR through the copy module"
    assert status["ssa"] == "off: numba.core.ssa lacks _CacheListVars"
    assert status["liveness"] == "off: numba's liveness analysis is not where it was"
    assert status["flags_values"] == "off: TargetConfig no longer keeps its values in _values"
    assert tail == "True 4"


def test_hvsim_numba_corrections_off_switches_every_correction_off():
    import os
    import subprocess
    import sys
    probe = "import hvsim._numba_corrections as C; print(sorted(set(C.status().values())))"
    for value, expect in (("off", ["off: switched off by HVSIM_NUMBA_CORRECTIONS"]),
                          ("all", ["not used yet"])):
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             env=dict(os.environ, HVSIM_NUMBA_CORRECTIONS=value), timeout=300)
        assert out.returncode == 0, out.stderr
        assert eval(out.stdout) == expect, value
