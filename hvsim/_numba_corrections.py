"""Corrections of numba's own compile-time internals, for hvsim's kernels only (not jitted).

hvsim's kernels are large functions (the run loop is about 1,300 blocks after inlining),
and a few of numba's compile passes scale badly with that size. Each correction here
replaces one numba internal with a function that gives the *same result* faster; the
figures they buy are measured in BENCHMARKS.md ("The compile path").

The rules every correction follows, because numba's internals are not an API:

* **pinned**: pyproject.toml pins numba and llvmlite to the minor versions they were
  written against (tests/test_packaging.py checks both environment files agree);
* **proved first**: the first time a correction would be used in a process, it runs on
  a tiny function beside numba's own, and stays on only if the two results are equal;
  a correction whose check fails, or that raises later, is switched off with one
  warning, and numba's own code runs instead -- slower, never wrong;
* **scoped**: a correction applies only while hvsim compiles one of its own kernels
  (:func:`compiling`); a user's ``@numba.njit`` function in the same process compiles
  with stock numba (tests/test_jit_policy.py checks it);
* **switchable**: ``HVSIM_NUMBA_CORRECTIONS=off`` turns all of them off, and a comma
  list of names (``ssa,liveness``) keeps only those; ``make test-numba-next`` runs the
  policy tests against the newest numba on the package index.

The corrections (numba 0.68):

``inliner_copy``   numba's inliner deep-copies a callee's IR block by block, each block
                   with a fresh memo, so every block drags a copy of the function's whole
                   variable table (numba issues #8989, #9204); one memo per IR copy.
``ssa``            SSA reconstruction rewrites every block twice per redefined variable;
                   here only the blocks that mention the variable are visited.
``liveness``       the liveness fix point on Python sets of names, rerun after every
                   inlining round; here on bitsets (ints), the same equations.
``flags_values``   compile flags hashed and compared through their option properties
                   (566,000 dicts in a cold warmup); the same values read directly.
"""
from __future__ import annotations

import collections
import copy
import os
import threading
import warnings

import numba

_STATE = threading.local()
_NAMES = ("inliner_copy", "ssa", "liveness", "flags_values")
#: every name HVSIM_NUMBA_CORRECTIONS knows: the four here and hvsim._jit's one_overload
SWITCHES = _NAMES + ("one_overload",)


def wanted() -> set:
    """The corrections ``HVSIM_NUMBA_CORRECTIONS`` allows (default: all)."""
    raw = os.environ.get("HVSIM_NUMBA_CORRECTIONS", "all").strip().lower()
    if raw in ("", "all", "on", "1"):
        return set(SWITCHES)
    if raw in ("off", "none", "0"):
        return set()
    return {n.strip() for n in raw.split(",")} & set(SWITCHES)


def depth() -> int:
    return getattr(_STATE, "depth", 0)


class compiling:
    """``with compiling():`` -- hvsim is compiling one of its own kernels (nestable)."""

    def __enter__(self):
        _STATE.depth = depth() + 1

    def __exit__(self, *exc):
        _STATE.depth = depth() - 1
        return False


class Correction:
    """One replacement of a numba internal: ``ours`` while hvsim compiles (once proved by
    ``check``), ``theirs`` otherwise or when switched off."""

    def __init__(self, name: str, ours, theirs, check):
        self.name, self.ours, self.theirs, self.check = name, ours, theirs, check
        self.state = None if name in wanted() else False   # None: not proved yet
        self.why_off = "" if self.state is None else "switched off by HVSIM_NUMBA_CORRECTIONS"

    @property
    def on(self) -> bool:
        return self.state is True

    def off(self, why: str) -> None:
        if self.state is not False:
            self.state = False
            self.why_off = why
            warnings.warn(f"hvsim: numba {numba.__version__}: the '{self.name}' correction of "
                          f"numba's internals is off ({why}); hvsim's kernels compile with "
                          "numba's own code (slower, same result)", RuntimeWarning, stacklevel=3)

    def active(self) -> bool:
        """Whether ``ours`` is to be used now (proving it first if it never was)."""
        if depth() == 0 or self.state is False:
            return False
        if self.state is None:
            self.state = "checking"
            try:
                ok = self.check()
            except Exception as e:                       # noqa: BLE001 -- any failure: off
                self.state = None
                self.off(f"its check on a tiny function raised {type(e).__name__}: {e}")
                return False
            if not ok:
                self.state = None
                self.off("its check on a tiny function gave a result different from numba's")
                return False
            self.state = True
        return self.state is True

    def __call__(self, *args, **kwargs):
        if self.active():
            try:
                return self.ours(*args, **kwargs)
            except Exception as e:                       # noqa: BLE001
                self.off(f"it raised {type(e).__name__}: {e}")
        return self.theirs(*args, **kwargs)


CORRECTIONS: dict = {}


def _tiny(a, b):
    """The function every check compiles the front end of: loops, branches, redefinitions."""
    t = 0
    for i in range(a):
        if i % 3 == 0:
            t += b
        elif i % 3 == 1:
            t -= i
        else:
            b = t
    while t > 100:
        t //= 2
    return t + b


def _tiny_ir():
    from numba.core.compiler import run_frontend
    return run_frontend(_tiny).blocks


def _dump(blocks):
    return [(label, [str(s) for s in blk.body]) for label, blk in blocks.items()]


# ---- inliner_copy ------------------------------------------------------------------------
class _InlinerCopy:
    """The ``copy`` module as numba's inliner sees it: one shared memo per IR copy while
    hvsim compiles, the stock module's behaviour otherwise.

    A block seen a second time, or a block of another scope, starts a fresh memo, so two
    copies of the same IR never share an object.
    """

    def __init__(self):
        self._scope = None
        self._memo = None
        self._copied = set()

    def __getattr__(self, name):
        return getattr(copy, name)

    def deepcopy(self, x, memo=None):
        return _INLINER_COPY(x, memo)

    def shared_memo_deepcopy(self, x, memo=None):
        from numba.core import ir
        if memo is not None or not isinstance(x, ir.Block):
            return copy.deepcopy(x, memo)
        if x.scope is not self._scope or id(x) in self._copied:
            self._scope, self._memo, self._copied = x.scope, {}, set()
        self._copied.add(id(x))
        return copy.deepcopy(x, self._memo)


def _check_inliner_copy() -> bool:
    shim = _InlinerCopy()
    blocks = _tiny_ir()
    first = {k: shim.shared_memo_deepcopy(b) for k, b in blocks.items()}
    second = {k: shim.shared_memo_deepcopy(b) for k, b in blocks.items()}
    stock = {k: copy.deepcopy(b) for k, b in blocks.items()}
    scopes1 = {id(b.scope) for b in first.values()}
    scopes2 = {id(b.scope) for b in second.values()}
    return (_dump(first) == _dump(stock) == _dump(second) and len(scopes1) == 1
            and not scopes1 & scopes2)


# ---- ssa ---------------------------------------------------------------------------------
def _run_ssa_touching_only_mentioning_blocks(blocks):
    """numba's SSA reconstruction (0.68, ``numba.core.ssa._run_ssa``), visiting for each
    variable only the blocks that mention it.

    numba fixes one SSA-violating variable at a time, and for each one rewrites every
    block of the function twice (fresh names for its definitions, then each use pointed
    at its reaching definition). A block that neither defines nor uses the variable comes
    out of both rewrites unchanged, so the cost was violators x statements. Here the
    blocks that define or mention each variable are found in one walk first (a rewrite
    for one variable never adds a mention of another), the two rewrites visit those
    blocks in the same order as numba's, and every other block is kept as it is.
    """
    from numba.core import errors, ir, ssa
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
    from numba.core import ir, ssa
    newblocks = dict(blocks)
    for label in labels:
        blk = blocks[label]
        newblk = ir.Block(scope=blk.scope, loc=blk.loc)
        states["label"] = label
        states["block"] = blk
        newblk.body = list(ssa._run_ssa_block_pass(states, blk, handler))
        newblocks[label] = newblk
    return newblocks


def _check_ssa() -> bool:
    ours = _run_ssa_touching_only_mentioning_blocks(copy.deepcopy(_tiny_ir()))
    theirs = CORRECTIONS["ssa"].theirs(copy.deepcopy(_tiny_ir()))
    return _dump(ours) == _dump(theirs) and any(
        "phi(" in str(s) for blk in ours.values() for s in blk.body)


# ---- liveness ----------------------------------------------------------------------------
def _compute_live_map_with_bitsets(cfg, blocks, var_use_map, var_def_map):
    """numba's liveness analysis (0.68, ``numba.core.analysis.compute_live_map``) on
    bitsets: the variables live at the entry of each block.

    numba computes, block by block, the set of variables defined on some path to it, as
    Python sets of names, after every inlining round and rewrite. Here each set is a
    Python int with one bit per variable, and the same two fix-point passes (definitions
    reaching forward, then liveness backward, in numba's block order) run on those: the
    same monotone equations from the same start, so the same least fix point.
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


def _check_liveness() -> bool:
    from numba.core import analysis
    blocks = CORRECTIONS["ssa"].theirs(_tiny_ir())
    cfg = analysis.compute_cfg_from_blocks(blocks)
    ud = analysis.compute_use_defs(blocks)
    ours = _compute_live_map_with_bitsets(cfg, blocks, ud.usemap, ud.defmap)
    theirs = CORRECTIONS["liveness"].theirs(cfg, blocks, ud.usemap, ud.defmap)
    return ours == theirs and any(ours.values())


# ---- flags_values ------------------------------------------------------------------------
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


def _check_flags_values() -> bool:
    from numba.core.compiler import Flags
    plain, a = Flags(), Flags()
    a.nrt = True
    a.error_model = "numpy"
    c = CORRECTIONS["flags_values"]
    return all(_target_config_values(f) == c.theirs[0](f)
               and _target_config_hash(f) == c.theirs[1](f) for f in (plain, a))


# ---- installing them ----------------------------------------------------------------------
def _install():
    """Put every correction in place of the numba internal it replaces, where that
    internal has the layout the correction was written for; otherwise leave numba as it
    is (one warning)."""
    def skip(name, why):
        c = Correction(name, None, None, None)
        c.off(why)
        CORRECTIONS[name] = c

    try:
        from numba.core import analysis, inline_closurecall, ir_utils, ssa, targetconfig
    except ImportError as e:
        for name in _NAMES:
            skip(name, f"numba.core lacks a module it needs ({e})")
        return

    if getattr(inline_closurecall, "copy", None) is copy:
        shim = _InlinerCopy()
        CORRECTIONS["inliner_copy"] = Correction(
            "inliner_copy", shim.shared_memo_deepcopy, copy.deepcopy, _check_inliner_copy)
        inline_closurecall.copy = shim
    else:
        skip("inliner_copy", "numba's inliner no longer copies IR through the copy module")

    needed = ("_run_ssa", "_iterated_domfronts", "_find_defs_violators", "_CacheListVars",
              "_make_states", "_FreshVarHandler", "_FixSSAVars", "_compute_phi_locations",
              "_run_ssa_block_pass")
    if all(hasattr(ssa, n) for n in needed):
        c = Correction("ssa", _run_ssa_touching_only_mentioning_blocks, ssa._run_ssa, _check_ssa)
        CORRECTIONS["ssa"] = c
        ssa._run_ssa = c
    else:
        skip("ssa", "numba.core.ssa lacks " + ", ".join(n for n in needed if not hasattr(ssa, n)))

    stock_live = getattr(analysis, "compute_live_map", None)
    if stock_live is not None and getattr(ir_utils, "compute_live_map", None) is stock_live:
        c = Correction("liveness", _compute_live_map_with_bitsets, stock_live, _check_liveness)
        CORRECTIONS["liveness"] = c
        analysis.compute_live_map = ir_utils.compute_live_map = c
    else:
        skip("liveness", "numba's liveness analysis is not where it was")

    tc = targetconfig.TargetConfig
    if "_values" in getattr(tc, "__slots__", ()):
        stock = (tc.values, tc.__hash__)
        c = Correction("flags_values", (_target_config_values, _target_config_hash), stock,
                       _check_flags_values)
        CORRECTIONS["flags_values"] = c

        def values(self):
            return (_target_config_values if c.active() else stock[0])(self)

        def hash_(self):
            return (_target_config_hash if c.active() else stock[1])(self)
        tc.values, tc.__hash__ = values, hash_
    else:
        skip("flags_values", "TargetConfig no longer keeps its values in _values")


def _inliner_copy(x, memo=None):
    c = CORRECTIONS.get("inliner_copy")
    if c is not None:
        return c(x, memo)
    return copy.deepcopy(x, memo)


_INLINER_COPY = _inliner_copy
_install()


def status() -> dict:
    """``{name: 'on' | 'not used yet' | 'off: why'}`` for every correction."""
    out = {}
    for name in _NAMES:
        c = CORRECTIONS[name]
        out[name] = ("on" if c.state is True else "not used yet" if c.state is None
                     else f"off: {c.why_off}")
    return out
