"""The project's single numba policy (not jitted itself).

Every kernel in hvsim is compiled through :func:`njit` so that the policy lives in
one place:

* ``cache=True``  -- compiled machine code is written to numba's disk cache and
  reused by the next process; ``hvsim warmup`` fills it.
* ``_nrt=False`` -- kernels never allocate arrays, so numba's reference counting is
  switched off: with it on, every call that passes arrays pays atomic increments
  that LLVM cannot remove (measured: 34-100 ns per call, against 1-2 ns without).
* ``boundscheck=False`` -- the kernels index numpy arrays with values that the
  *kernels themselves* have range-checked (every guest-physical address is checked
  against the memory size before use).
* ``error_model="numpy"`` -- integer division by zero does not raise inside a
  kernel; the CPU checks divisors itself and raises #DE in the guest.
* ``nogil=True`` -- a long ``run()`` does not hold the GIL.

numba's cache is per function and keyed on that function's own source file only: a
cached ``run`` keeps an old, inlined copy of a kernel from another file that has
since changed. :func:`_invalidate_stale_cache` therefore drops hvsim's cached
kernels whenever any source a kernel depends on differs from what they were
compiled from (a hash of all sources, stamped beside the cache).

Inlining: a call between kernels that numba did not inline passes every array as an
exploded struct (about 7 words each), which dominated the cost of an instruction. The
hot path -- the fetch/decode-cache lookup, the operand helpers and the ALU's group-1
kernels -- is therefore marked ``@njit(inline="always")`` (numba inlines it in its own
IR, so the inlining survives the disk cache). Measured on the 2-core development
machine, guest instructions per second went from 14 M to 138 M (NOP), 9 M to 90 M (ALU)
and 6 M to 58 M (loads, stores, push/pop), with the same cold compile time. The
handlers themselves were inlined into the run loop too until the kernel table
(hvsim/cpu/table.py) made the run loop call them by address: that costs the
interpreter 15-25% (ALU loop 61-68 M -> 51 M instructions/s, mixed loop 60 -> 51 M,
``Machine(blocks=False)``) and took the first compile from a compile of the whole
machine to the run loop and the handlers a program uses. Inlining the MMU's access
kernels as well made every loop slower (43 M ALU) and the compile 2.5 times longer, so they stay calls
everywhere except in the CPU's operand helpers (:func:`inline_in`), which took loads and
stores from 78 M to 88 M instructions/s (paging off) and 57-62 M to 62-64 M (paging on).
Inside those, the TLB probe and the physical read/write are inlined into read_lin and
write_lin only (:func:`inline_in` naming those two). Measured as two processes pinned
to the two cores side by side (4 rounds, swapping cores): the mixed loop went from 91-97 M to 108-118 M
instructions/s, the mixed loop with paging from 63-72 M to 79-80 M, the ALU loop did not
move, and the cold compile went from 90 s to 130 s.

Compile time is numba's front end, not LLVM (LLVM at -O1 or -O2 compiled no faster).
Five numba behaviours are corrected here. Constants passed to a kernel that is called,
not inlined, no longer multiply its compiled versions (:func:`_one_overload_per_type`):
280 compiled functions became 179 and the cold ``hvsim warmup`` went from 218 s to
182 s, run side by side. The inliner's IR copies no longer copy the whole variable
table once per block (:class:`_InlinerCopy`): the cold warmup went from about 170 s to
90 s, and all 179 compiled functions came out with byte-identical machine code. SSA
reconstruction visits, for each variable it renames, only the blocks that mention it
(:func:`_run_ssa_touching_only_mentioning_blocks`): on ``run`` it took 0.5 s instead of
12.6 s, with the same IR out. The liveness analysis numba reruns after every inlining
round works on bitsets (:func:`_compute_live_map_with_bitsets`): 2.0 s instead of 30.2 s
over the 4,677 analyses of a cold warmup, every live map the same. Compile flags hash
and compare without their option properties (:func:`_target_config_values`). With a
helper process on the second core (hvsim/warmup.py), which had taken the cold warmup
from 212 s to 117 s, these three took it to 72 s (137 s in one process). The kernel
table (hvsim/cpu/table.py) took it to 62 s, and a program's first result from an empty
cache to 8.4 s (the README's example), since the run loop no longer compiles every
handler with itself; calling the memory-operand helpers from the system handlers
instead of inlining them (hvsim/cpu/operands.py) took it to 47-53 s.

Set ``NUMBA_DISABLE_JIT=1`` to run every kernel as plain Python (slow, but with
readable tracebacks and line coverage).
"""
import collections
import copy
import hashlib
import os
import pathlib

import numba
from numba.core import (analysis, errors, inline_closurecall, ir, ir_utils, ssa, targetconfig,
                        types)
from numba.core.caching import _CacheLocator

_OPTIONS = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy", _nrt=False)
_PACKAGE = pathlib.Path(__file__).resolve().parent
_STAMP_NAME = ".hvsim-sources.sha256"


# The packages whose modules kernels are compiled from (or fold constants from), and the
# pure-Python faces inside them that no kernel imports: editing a face, or anything
# outside these packages (machine.py, the CLI, the assembler, widgets, viz, lessons),
# cannot make a cached kernel stale, so it must not throw away minutes of compiled code.
_KERNEL_PACKAGES = ("arch", "cpu", "mmu", "rings", "vtx", "paravirt")
FACE_MODULES = ("rings/setup.py", "cpu/translate.py")


def kernel_sources():
    """Every source file of the kernel packages except the faces, sorted."""
    return sorted(p for pkg in _KERNEL_PACKAGES for p in (_PACKAGE / pkg).rglob("*.py")
                  if p.relative_to(_PACKAGE).as_posix() not in FACE_MODULES)


def sources_hash() -> str:
    """SHA-256 over every source a kernel can depend on.

    That is more than the files with ``@njit``: constants modules (layout, flags, vectors,
    counters...) are folded into the compiled code too. ``_jit.py`` and the kernel
    packages count, except the faces listed in ``FACE_MODULES``.
    """
    h = hashlib.sha256()
    for p in [_PACKAGE / "_jit.py"] + kernel_sources():
        h.update(p.relative_to(_PACKAGE).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _cache_root():
    """The folder numba caches hvsim's kernels under, where the sources stamp lives."""
    custom = os.environ.get("NUMBA_CACHE_DIR")
    return pathlib.Path(custom) if custom else _PACKAGE / "__pycache__"


def _cached_kernel_files():
    """Every file numba cached for a kernel of hvsim's kernel packages."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        # numba keeps the kernels of each source folder in <NUMBA_CACHE_DIR>/<folder>_<sha1
        # of the folder's path> (its _UserProvidedCacheLocator): only those are hvsim's
        root = _cache_root()
        folders = {p.parent for p in kernel_sources()}
        subdirs = [root / _CacheLocator.get_suitable_cache_subpath(str(f / "x.py")) for f in folders]
        return [p for d in subdirs if d.is_dir() for p in d.iterdir() if p.suffix in (".nbi", ".nbc")]
    return [p for p in _PACKAGE.rglob("__pycache__/*") if p.suffix in (".nbi", ".nbc")]


def _invalidate_stale_cache():
    try:
        root = _cache_root()
        stamp = root / _STAMP_NAME
        current = sources_hash()
        if stamp.exists() and stamp.read_text() == current:
            return
        for f in _cached_kernel_files():
            f.unlink(missing_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        stamp.write_text(current)
    except OSError:
        pass      # a read-only install: numba then falls back to its own cache locations


if os.environ.get("NUMBA_DISABLE_JIT", "0") in ("", "0"):
    _invalidate_stale_cache()


class _InlinerCopy:
    """The ``copy`` module as numba's inliner sees it: one shared memo per IR copy.

    To inline a call, numba (0.68, ``InlineWorker.inline_ir``) deep-copies the callee's
    IR block by block, each block with a fresh memo. Every variable refers to the
    function's ``Scope``, which holds every variable of the function, so each block copy
    drags along a copy of the whole variable table: the cost grows as blocks x variables,
    twice per inlined call site. Profiled on a cold ``hvsim warmup``, those copies were
    247 of the 298 s spent compiling ``run`` (numba issues #8989 and #9204 describe the
    same cost). Here the blocks of one IR are copied with one memo, so the scope and the
    variables shared between blocks are copied once -- the shape the IR had before it
    was copied. A block seen a second time, or a block of another scope, starts a
    fresh memo, so two copies of the same IR never share an object.
    """

    def __init__(self):
        self._scope = None
        self._memo = None
        self._copied = set()

    def __getattr__(self, name):
        return getattr(copy, name)

    def deepcopy(self, x, memo=None):
        if memo is not None or not isinstance(x, ir.Block):
            return copy.deepcopy(x, memo)
        if x.scope is not self._scope or id(x) in self._copied:
            self._scope, self._memo, self._copied = x.scope, {}, set()
        self._copied.add(id(x))
        return copy.deepcopy(x, self._memo)


if getattr(inline_closurecall, "copy", None) is copy:     # the layout described above
    inline_closurecall.copy = _InlinerCopy()


def _run_ssa_touching_only_mentioning_blocks(blocks):
    """numba's SSA reconstruction (0.68, ``numba.core.ssa._run_ssa``), visiting for each
    variable only the blocks that mention it.

    numba fixes one SSA-violating variable at a time, and for each one rewrites every
    block of the function twice (fresh names for its definitions, then each use pointed
    at its reaching definition). A block that neither defines nor uses the variable
    comes out of both rewrites unchanged, so the cost was violators x statements: for
    ``run`` (258 violators, about 11,000 statements) 6.4 million statement visits, 12.6
    s of its compile. Here the blocks that define or mention each variable are found in
    one walk first (a rewrite for one variable never adds a mention of another), the two
    rewrites visit those blocks in the same order as numba's, and every other block is
    kept as it is. tests/test_jit_policy.py checks that the IR that comes out is the
    same as numba's own.
    """
    if not blocks:
        return {}
    cfg = ssa.compute_cfg_from_blocks(blocks)
    df_plus = ssa._iterated_domfronts(cfg)
    violators = ssa._find_defs_violators(blocks, cfg)
    cache_list_vars = ssa._CacheListVars()
    defined_in = collections.defaultdict(list)
    mentioned_in = collections.defaultdict(list)
    for label, blk in blocks.items():
        for stmt in blk.body:
            names = {v.name for v in stmt.list_vars()}
            if isinstance(stmt, ir.Assign):
                names.add(stmt.target.name)
                if not defined_in[stmt.target.name] or defined_in[stmt.target.name][-1] != label:
                    defined_in[stmt.target.name].append(label)
            for name in names:
                if not mentioned_in[name] or mentioned_in[name][-1] != label:
                    mentioned_in[name].append(label)
    for varname in violators:
        states = ssa._make_states(blocks)
        states["varname"] = varname
        states["defmap"] = defmap = collections.defaultdict(list)
        blocks = _rewrite_some(blocks, defined_in[varname], states, ssa._FreshVarHandler())
        states = ssa._make_states(blocks)
        states["varname"] = varname
        states["defmap"] = defmap
        states["phimap"] = phimap = collections.defaultdict(list)
        states["cfg"] = cfg
        states["phi_locations"] = ssa._compute_phi_locations(df_plus, defmap)
        blocks = _rewrite_some(blocks, mentioned_in[varname], states,
                               ssa._FixSSAVars(cache_list_vars))
        for label, philist in phimap.items():
            blocks[label].body = philist + blocks[label].body
    if ssa.compute_cfg_from_blocks(blocks) != cfg:
        raise errors.CompilerError("CFG mutated in SSA pass")
    return blocks


def _rewrite_some(blocks, labels, states, handler):
    """``ssa._run_block_rewrite`` on the blocks ``labels`` (in block order) only."""
    newblocks = dict(blocks)
    for label in labels:
        blk = blocks[label]
        newblk = ir.Block(scope=blk.scope, loc=blk.loc)
        states["label"] = label
        states["block"] = blk
        newblk.body = list(ssa._run_ssa_block_pass(states, blk, handler))
        newblocks[label] = newblk
    return newblocks


_numba_run_ssa = getattr(ssa, "_run_ssa", None)
if _numba_run_ssa is not None and all(
        hasattr(ssa, n) for n in ("_iterated_domfronts", "_find_defs_violators", "_CacheListVars",
                                  "_make_states", "_FreshVarHandler", "_FixSSAVars",
                                  "_compute_phi_locations", "_run_ssa_block_pass")):
    ssa._run_ssa = _run_ssa_touching_only_mentioning_blocks


def _compute_live_map_with_bitsets(cfg, blocks, var_use_map, var_def_map):
    """numba's liveness analysis (0.68, ``numba.core.analysis.compute_live_map``) on
    bitsets: the variables live at the entry of each block.

    numba computes, block by block, the set of variables defined on some path to it, as
    Python sets of names; in a function of 1,300 blocks and thousands of variables such
    as ``run``, each pass unions sets of thousands of names per block, and numba runs
    the analysis after every inlining round and rewrite (over 800 times for ``run``).
    Here each set is a Python int with one bit per variable, and the same two fix-point
    passes (definitions reaching forward, then liveness backward, in numba's block
    order) run on those. Both solve the same monotone equations from the same start, so
    the least fix point -- the result -- is the same; tests/test_jit_policy.py compares
    the two on real kernels.
    """
    index = {}

    def bits(names):
        mask = 0
        for name in names:
            i = index.get(name)
            if i is None:
                i = index[name] = len(index)
            mask |= 1 << i
        return mask

    uses = {b: bits(v) for b, v in var_use_map.items()}
    defs = {b: bits(v) for b, v in var_def_map.items()}
    order = cfg.topo_order()
    reach = {}
    changed = True
    while changed:                           # definitions (and uses) reaching each block
        changed = False
        for b in order:
            here = reach.get(b, 0) | defs[b] | uses[b]
            reach[b] = here
            for succ, _ in cfg.successors(b):
                before = reach.get(succ, 0)
                if before | here != before:
                    reach[succ] = before | here
                    changed = True
    live = {b: uses[b] for b in blocks}
    changed = True
    while changed:                           # a use keeps a variable live back to its definition
        changed = False
        for b in reversed(order):
            here = live[b]
            for pred, _ in cfg.predecessors(b):
                add = here & reach.get(pred, 0) & ~defs[pred]
                if add & ~live[pred]:
                    live[pred] |= add
                    changed = True
    names = list(index)
    out = {}
    for b, mask in live.items():
        found = set()
        while mask:
            low = mask & -mask
            found.add(names[low.bit_length() - 1])
            mask ^= low
        out[b] = found
    return out


_numba_compute_live_map = analysis.compute_live_map
if getattr(ir_utils, "compute_live_map", None) is _numba_compute_live_map:
    analysis.compute_live_map = ir_utils.compute_live_map = _compute_live_map_with_bitsets


def _target_config_values(self):
    """``TargetConfig.values()`` (numba 0.68): each option's value, or its default."""
    given = self._values
    return {name: given.get(name, option.default) for name, option in self.options.items()}


_TARGET_CONFIG_HASHES = {}


def _target_config_hash(self):
    """``TargetConfig.__hash__`` (numba 0.68): a hash of the sorted option *names* --
    ``sorted`` of a dict sorts its keys, so the values never entered it -- worked out
    once per class."""
    cls = type(self)
    h = _TARGET_CONFIG_HASHES.get(cls)
    if h is None:
        h = _TARGET_CONFIG_HASHES[cls] = hash(tuple(sorted(cls.options)))
    return h


# numba keys its cache of @overload implementations on the compile flags, so every
# lookup hashes a Flags object and, as all Flags hash alike, compares it with the other
# Flags in its bucket. Each hash and each comparison built the dict of every option's
# value through the option properties: 566,000 dicts, 7% of a cold warmup's profile.
# The two replacements below give the same values and the same hash, without the
# properties; tests/test_jit_policy.py compares them with numba's.
_numba_target_config_values = targetconfig.TargetConfig.values
_numba_target_config_hash = targetconfig.TargetConfig.__hash__
if "_values" in getattr(targetconfig.TargetConfig, "__slots__", ()):   # the layout read above
    targetconfig.TargetConfig.values = _target_config_values
    targetconfig.TargetConfig.__hash__ = _target_config_hash


def inline_in(*places):
    """A numba inline cost model: inline the callee only into ``places`` -- modules
    (``"hvsim.cpu.operands"``: every function there) or single functions
    (``"hvsim.mmu.paging.read_lin"``).

    numba asks it once per call site; everywhere else the callee stays one compiled
    function, so code size and compile time do not grow with it.
    """
    def decide(expr, caller_info, callee_info):
        fid = caller_info.func_id
        return fid.modname in places or f"{fid.modname}.{fid.func_qualname}" in places
    return decide


def _one_overload_per_type(dispatcher):
    """Make calls from other kernels compile ``dispatcher`` for plain argument types.

    numba types a constant argument as a literal (``Literal[int](13)``), and a kernel
    called as ``raise_fault(st, GP, 0)`` in one place and ``raise_fault(st, UD, -1)`` in
    another was compiled once per distinct constant: fourteen copies of raise_fault,
    twelve of the exit helper, eleven of the segment check -- about a hundred
    redundant compilations in all. Dropping the literal types before numba picks the
    overload leaves one compiled version per real argument type. (Kernels inlined with
    ``inline="always"`` are not typed through this and keep their constants.)
    """
    resolve = getattr(dispatcher, "get_call_template", None)
    if resolve is None:                      # NUMBA_DISABLE_JIT=1: a plain function
        return dispatcher

    def get_call_template(args, kws):
        return resolve(tuple(types.unliteral(a) for a in args),
                       {k: types.unliteral(v) for k, v in kws.items()})
    dispatcher.get_call_template = get_call_template
    return dispatcher


def njit(fn=None, **overrides):
    """Compile ``fn`` with the project's numba options (usable bare or called).

    A kernel whose speed depends on a constant argument (read_phys/write_phys and their
    ``size``) is inlined where that matters instead (see ``_INTO_ACCESS`` in
    hvsim/mmu/paging.py): as a call compiled for a plain ``int64`` size, the mixed
    benchmark loop ran at 72 M instructions/s instead of 88 M.
    """
    opts = dict(_OPTIONS, **overrides)

    def build(f):
        return _one_overload_per_type(numba.njit(**opts)(f))
    if fn is None:
        return build
    return build(fn)
