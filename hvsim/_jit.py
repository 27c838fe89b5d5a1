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

Compile time is numba's front end, not LLVM. hvsim corrects four numba internals
that scale badly with the size of its kernels (hvsim/_numba_corrections.py: pinned,
proved on a tiny function before use, applied only while hvsim compiles its own
kernels, switched off with one warning when numba changes) and keeps one compiled
version per argument type of a kernel called with constants (:func:`_one_overload_per_type`).
What each buys is measured in BENCHMARKS.md.

Set ``NUMBA_DISABLE_JIT=1`` to run every kernel as plain Python (slow, but with
readable tracebacks and line coverage).
"""
import hashlib
import os
import pathlib
import re
import warnings

import numba
from numba.core import types

from hvsim import _numba_corrections
from hvsim._numba_corrections import compiling

try:                                   # numba's cache locator names the cache folders
    from numba.core.caching import _CacheLocator
except ImportError:                    # pragma: no cover -- a numba without it
    _CacheLocator = None

_OPTIONS = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy", _nrt=False)
# No C-callable wrapper per kernel: numba makes one for every compiled function by
# default, for taking its address (``dispatcher.address``); hvsim never takes a
# kernel's address that way (the kernel table compiles its own ``numba.cfunc``
# wrappers, hvsim/cpu/table.py), and the wrappers made each cached kernel's machine code
# larger -- measured on the 2-core development machine (a fresh process, an empty
# cache), the MMU's translate compiled in 2.3-2.4 s without them against 3.5 s with
# them, and the README's example gave its first result about 1 s sooner. An option of
# numba's CPU target rather than a documented one: used only when this numba lists it.
try:
    from numba.core.cpu import CPUTargetOptions as _CPUTargetOptions
    if hasattr(_CPUTargetOptions, "no_cfunc_wrapper"):
        _OPTIONS["no_cfunc_wrapper"] = True
except ImportError:                    # pragma: no cover -- a numba without it
    pass
_PACKAGE = pathlib.Path(__file__).resolve().parent
_STAMP_NAME = ".hvsim-sources.sha256"


# What a cached kernel can depend on is derived from the code itself: the modules that
# define kernels (a function under @njit or @intrinsic), and every hvsim module they
# import, directly or not -- the constants modules (hvsim/arch) are folded into the
# compiled code. Faces (the Machine, the monitors, widgets, lessons, the CLI, the block
# translator's code generator) are not imported by any kernel module, so editing them
# keeps the disk cache.
_KERNEL_DECORATORS = {"njit", "intrinsic", "cfunc", "jit"}


def _module_file(name: str):
    """The source file of hvsim module ``name`` (a package's __init__.py), or None."""
    if name == "hvsim":
        return _PACKAGE / "__init__.py"
    if not name.startswith("hvsim."):
        return None
    rel = pathlib.Path(*name.split(".")[1:])
    for cand in (_PACKAGE / rel.with_suffix(".py"), _PACKAGE / rel / "__init__.py"):
        if cand.is_file():
            return cand
    return None


_KERNEL_DEF = re.compile(r"^[ \t]*@(?:\w+\.)?(?:" + "|".join(_KERNEL_DECORATORS) + r")\b", re.M)
_FROM_IMPORT = re.compile(r"^[ \t]*from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#]*)", re.M)
_IMPORT = re.compile(r"^[ \t]*import[ \t]+([\w., \t]+)", re.M)


def _scan(path: pathlib.Path):
    """(defines a kernel, hvsim modules it imports) of one source file, read as text (a
    parse of every file would cost a third of a second at each import)."""
    text = path.read_text()
    kernel = _KERNEL_DEF.search(text) is not None
    pkg = ["hvsim", *path.relative_to(_PACKAGE).parent.parts]
    imports = set()
    for base, names in _FROM_IMPORT.findall(text):
        level = len(base) - len(base.lstrip("."))
        if level:
            base = ".".join(pkg[:len(pkg) - level + 1] + ([base[level:]] if base[level:] else []))
        imports.add(base)
        imports.update(f"{base}.{n.split()[0]}" for n in names.strip("()").replace("\n", " ").split(",")
                       if n.strip() and not n.strip().startswith("#"))
    for names in _IMPORT.findall(text):
        imports.update(n.split()[0] for n in names.split(",") if n.strip())
    return kernel, {m for m in imports if _module_file(m) is not None}


def kernel_sources():
    """Every source a cached kernel can depend on, sorted: the modules that define kernels
    and the hvsim modules they import, transitively (``_jit.py`` itself is hashed apart)."""
    scans = {p: _scan(p) for p in _PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    todo = [p for p, (kernel, _) in scans.items() if kernel]
    found = set()
    while todo:
        p = todo.pop()
        if p in found or p.name == "_jit.py" or p.name == "_numba_corrections.py":
            continue
        found.add(p)
        for m in scans[p][1]:
            f = _module_file(m)
            if f is not None and f not in found:
                todo.append(f)
    return sorted(found)


def sources_hash() -> str:
    """SHA-256 over every source a kernel can depend on (:func:`kernel_sources`) and this
    policy module."""
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
        if _CacheLocator is None:
            return []
        # numba keeps the kernels of each source folder in <NUMBA_CACHE_DIR>/<folder>_<sha1
        # of the folder's path> (its _UserProvidedCacheLocator): only those are hvsim's
        root = _cache_root()
        folders = {p.parent for p in kernel_sources()}
        subdirs = [root / _CacheLocator.get_suitable_cache_subpath(str(f / "x.py")) for f in folders]
        return [p for d in subdirs if d.is_dir() for p in d.iterdir() if p.suffix in (".nbi", ".nbc")]
    return [p for p in _PACKAGE.rglob("__pycache__/*") if p.suffix in (".nbi", ".nbc")]


def _quick_stamp() -> str:
    """Path, size and modification time of every hvsim source: when none of them moved,
    the kernel sources did not either, and the hash need not be worked out again (a
    derivation and a hash of every kernel source costs about a tenth of a second, at
    every import)."""
    h = hashlib.sha256()
    for p in sorted(_PACKAGE.rglob("*.py")):
        if "__pycache__" not in p.parts:
            s = p.stat()
            h.update(f"{p.relative_to(_PACKAGE).as_posix()} {s.st_size} {s.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _invalidate_stale_cache():
    """Drop hvsim's cached kernels when a source they depend on changed. The stamp beside
    the cache holds the sources hash and, on a second line, the quick stamp it was
    checked against."""
    try:
        root = _cache_root()
        stamp = root / _STAMP_NAME
        quick = _quick_stamp()
        saved = stamp.read_text().split("\n") if stamp.exists() else []
        if len(saved) == 2 and saved[1] == quick:
            return
        current = sources_hash()
        if saved and saved[0] == current:
            stamp.write_text(f"{current}\n{quick}")
            return
        for f in _cached_kernel_files():
            f.unlink(missing_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        stamp.write_text(f"{current}\n{quick}")
    except OSError:
        pass      # a read-only install: numba then falls back to its own cache locations


if os.environ.get("NUMBA_DISABLE_JIT", "0") in ("", "0"):
    _invalidate_stale_cache()


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
    ``inline="always"`` are not typed through this and keep their constants.) This
    overrides a numba method (``Dispatcher.get_call_template``) on hvsim's dispatchers
    only; should it raise, numba's own lookup is used from then on, with one warning.
    """
    resolve = getattr(dispatcher, "get_call_template", None)
    if resolve is None:                      # NUMBA_DISABLE_JIT=1: a plain function
        return dispatcher

    def get_call_template(args, kws):
        if _UNLITERAL["on"]:
            try:
                return resolve(tuple(types.unliteral(a) for a in args),
                               {k: types.unliteral(v) for k, v in kws.items()})
            except Exception as e:           # noqa: BLE001 -- numba changed: use its own
                if not isinstance(e, numba.core.errors.NumbaError):
                    _UNLITERAL["on"] = False
                    warnings.warn(f"hvsim: numba {numba.__version__}: typing a kernel's call "
                                  f"for plain argument types raised {type(e).__name__}: {e}; "
                                  "constants compile their own versions from now on",
                                  RuntimeWarning, stacklevel=2)
                else:
                    raise
        return resolve(args, kws)
    dispatcher.get_call_template = get_call_template
    return dispatcher


_UNLITERAL = {"on": "one_overload" in _numba_corrections.wanted()}


def _scoped_compile(dispatcher):
    """Compiles of ``dispatcher`` (its first call, or a caller's typing) run inside
    :class:`compiling`, the only time numba-internals corrections apply."""
    compile_ = getattr(dispatcher, "compile", None)
    if compile_ is None:                     # NUMBA_DISABLE_JIT=1
        return dispatcher

    def compile(sig):
        with compiling():
            return compile_(sig)
    dispatcher.compile = compile
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
        return _scoped_compile(_one_overload_per_type(numba.njit(**opts)(f)))
    if fn is None:
        return build
    return build(fn)
