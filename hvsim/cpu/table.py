"""The kernel table: the run loop reaches instruction handlers (and event delivery) by
address, and each is compiled the first time a guest needs it.

Why: numba compiles a kernel together with every kernel it calls. When the run loop
called each handler directly, its first compile was a compile of the whole machine --
every instruction family, the segment and gate machinery, interrupt delivery -- about
75-90 s on two cores before the first guest instruction ran. Now ``run`` holds the
fetch (with its page walk), the decode cache, the loop, the timer and the routing of
faults and exits, and calls the rest through ``ktab``, a table of addresses in this
process:

* ``ktab[op]`` for op = ``hvsim.cpu.decode.OP_*``: the handler of that family
  (``HANDLERS`` below, the one dispatch table), signature ``(mem, st, tlb, pg, dc, row)``;
* ``ktab[K_DELIVER]``: :func:`hvsim.rings.interrupts.deliver`, for exceptions and
  external interrupts delivered through the guest IDT;
* ``ktab[K_VMEXIT]`` and ``ktab[K_VMENTRY]`` (handler signature, ``row`` unused): the
  VM exit (hvsim/vtx/exit.py) and the VM entry a Python VMM asks for (hvsim/vtx/entry.py);
* ``ktab[K_EPT]``: the EPT walker (hvsim/mmu/ept.py ``ept_hook``), which the MMU's 2-D
  walk calls by the address the run loop copies into ``st[EPT_WALKER]``. It cannot stop
  the loop with a request, being called in the middle of an instruction, so it is
  filled before anything can turn EPT on: with the entries of VMLAUNCH/VMRESUME
  (OP_VMX) and of the Python VMM's entry (:data:`COMPANIONS`); and ``run`` asks for it
  before anything else when a restored state is already in a guest with EPT.

The entries' numbers are in hvsim/arch/layout.py (KTAB_*): instruction families first,
then the event kernels at fixed numbers.

An empty entry (0) makes the run loop stop *before* the instruction or event that
needs it, with nothing of it done: it names the entry in ``st[KERNEL_REQUEST]`` and
returns the internal exit EXIT_TRANSLATE (for an instruction it also keeps the decoded
row in ``st[RESUME_ROW]``, so the fetch is not repeated and no counter counts twice).
``Machine.run`` then calls :func:`ensure` -- numba compiles the kernel, or loads it
from the disk cache -- and calls ``run`` again with the rest of the budget. The guest
cannot tell: the tests compare whole machine states with the table empty and full.

How a handler is called: through the C ABI, a public and stable calling convention.
Each handler gets a small C-callable wrapper (``numba.cfunc``, compiled and cached with
it) that takes the arrays as (data pointer, length) pairs, views them again with
``numba.carray``, calls the handler and returns :data:`STATUS_OK`. The run loop calls
that wrapper by address with an ``int32 f(uint8*, int64, int64*, int64, ...)`` call and
checks the status: anything else (a handler that did not complete, a wrapper that is not
what the table was built for) is never dropped -- the instruction ends in an
'internal_error' exit naming the handler (KVM's KVM_EXIT_INTERNAL_ERROR, in spirit).
"""
import os
import time

import numba
import numpy as np
from numba import carray, config, types
from numba.extending import intrinsic

from hvsim._ccall import BY_ADDRESS as _BY_ADDRESS, STATUS_OK, call_c as _call_c
from hvsim._jit import njit
from hvsim.arch import layout as L
from hvsim.cpu import decode as D
from hvsim.cpu import execute as X
from hvsim.cpu import system as S
from hvsim.cpu import vmxinsn as VI
from hvsim.vtx.exit import vm_exit
from hvsim.vtx.entry import entry_request
from hvsim.arch.layout import DC_SHAPE
from hvsim.mmu.ept import ept_hook
from hvsim.rings import interrupts

# op -> handler: every OP_* of hvsim/cpu/decode.py except OP_NOP, which the run loop
# retires itself. Ordered as a program meets them most often (the order the cold-compile
# helper compiles them in, hvsim/warmup.py).
HANDLERS = {
    D.OP_MOV_RI: X.op_mov_ri, D.OP_ALU_EG: X.op_alu_eg, D.OP_ALU_GE: X.op_alu_ge,
    D.OP_MOV_EG: X.op_mov_eg, D.OP_MOV_GE: X.op_mov_ge, D.OP_GRP1: X.op_grp1,
    D.OP_JCC: X.op_jcc, D.OP_LOOP: X.op_loop, D.OP_HLT: S.op_hlt, D.OP_INC_R: X.op_inc_r,
    D.OP_DEC_R: X.op_dec_r, D.OP_PUSH_R: X.op_push_r, D.OP_POP_R: X.op_pop_r,
    D.OP_CALL_REL: X.op_call_rel, D.OP_RET: X.op_ret, D.OP_JMP_REL: X.op_jmp_rel,
    D.OP_OUT: S.op_out, D.OP_IN: S.op_in, D.OP_ALU_AI: X.op_alu_ai, D.OP_TEST_EG: X.op_test_eg,
    D.OP_TEST_AI: X.op_test_ai, D.OP_LEA: X.op_lea, D.OP_MOV_EI: X.op_mov_ei,
    D.OP_PUSH_I: X.op_push_i, D.OP_INT: S.op_int, D.OP_IRET: S.op_iret, D.OP_CLI: S.op_cli,
    D.OP_STI: S.op_sti, D.OP_PUSHF: S.op_pushf, D.OP_POPF: S.op_popf, D.OP_GRP3: X.op_grp3,
    D.OP_GRP2: X.op_grp2, D.OP_GRP4: X.op_grp4, D.OP_GRP5: S.op_grp5,
    D.OP_MOV_CR: S.op_mov_cr, D.OP_GRP7: S.op_grp7, D.OP_GRP6: S.op_grp6,
    D.OP_MOV_TO_SREG: S.op_mov_to_sreg, D.OP_MOV_FROM_SREG: S.op_mov_from_sreg,
    D.OP_PUSH_SREG: S.op_push_sreg, D.OP_POP_SREG: S.op_pop_sreg, D.OP_JMPF: S.op_jmpf,
    D.OP_CALLF: S.op_callf, D.OP_RETF: S.op_retf, D.OP_INT3: S.op_int3,
    D.OP_XCHG_EG: X.op_xchg_eg, D.OP_XCHG_AR: X.op_xchg_ar, D.OP_CDQ: X.op_cdq,
    D.OP_MOV_MOFFS: X.op_mov_moffs, D.OP_STRING: X.op_string, D.OP_POP_E: X.op_pop_e,
    D.OP_JECXZ: X.op_jecxz, D.OP_FLAGOP: X.op_flagop, D.OP_IMUL2: X.op_imul2,
    D.OP_IMUL3: X.op_imul3, D.OP_MOVZX: X.op_movzx, D.OP_MOVSX: X.op_movzx,
    D.OP_CMOV: X.op_cmov, D.OP_SETCC: X.op_setcc, D.OP_LAR: S.op_lar_lsl,
    D.OP_LSL: S.op_lar_lsl, D.OP_CLTS: S.op_clts, D.OP_WRMSR: S.op_wrmsr,
    D.OP_RDMSR: S.op_rdmsr, D.OP_RDTSC: S.op_rdtsc, D.OP_CPUID: S.op_cpuid,
    D.OP_VMX: VI.op_vmx, D.OP_UD: S.op_ud, D.OP_UD2: S.op_ud, D.OP_INTO: S.op_into,
    D.OP_MOV_DR: S.op_mov_dr, D.OP_INVD: S.op_invd_wbinvd,
}

K_DELIVER = L.KTAB_DELIVER     # hvsim/rings/interrupts.py deliver
K_VMEXIT = L.KTAB_VMEXIT       # hvsim/vtx/exit.py vm_exit: a pending VM exit completed
K_VMENTRY = L.KTAB_VMENTRY     # hvsim/vtx/entry.py entry_request: the Python VMM's entry
K_EPT = L.KTAB_EPT             # hvsim/mmu/ept.py ept_hook: the EPT walker
TABLE_SIZE = L.KTAB_SIZE
assert max(v for k, v in vars(D).items() if k.startswith("OP_")) < K_DELIVER
# every entry with a kernel (OP_NOP has none)
SLOTS = tuple(HANDLERS) + (K_DELIVER, K_VMEXIT, K_VMENTRY, K_EPT)
# the entries with the handler signature that are not instruction handlers
_EVENT_HANDLERS = {K_VMEXIT: vm_exit, K_VMENTRY: entry_request}
# entry -> the entries filled with it: a VM entry can turn EPT on (see above)
COMPANIONS = {D.OP_VMX: (K_EPT,), K_VMENTRY: (K_EPT,)}

_I64 = types.Array(types.int64, 1, "C")
_MEM = types.Array(types.uint8, 1, "C")
_DC = types.Array(types.int64, len(DC_SHAPE), "C")
HANDLER_SIG = (_MEM, _I64, _I64, _I64, _DC, types.int64)
DELIVER_SIG = (_MEM, _I64, _I64, _I64, types.int64, types.int64, types.int64)
EPT_SIG = (_MEM, _I64, _I64) + (types.int64,) * 5

# The C signatures of the wrappers: each array as (pointer, length); dc has a fixed shape.
_P8, _P64, _N = types.CPointer(types.uint8), types.CPointer(types.int64), types.int64
_ARRAYS_C = (_P8, _N, _P64, _N, _P64, _N, _P64, _N)               # mem, st, tlb, pg
C_HANDLER_SIG = types.int32(*_ARRAYS_C, _P64, _N)                  # ..., dc, row
C_DELIVER_SIG = types.int32(*_ARRAYS_C, _N, _N, _N)                # ..., vector, error, kind
C_EPT_SIG = types.int32(_P8, _N, _P64, _N, _P64, _N, _N, _N, _N, _N, _N)   # mem, st, pg, ...
_C_OPTIONS = dict(nopython=True, nogil=True, boundscheck=False, error_model="numpy")

_WRAPPER_SOURCE = {
    "handler": """
def {name}(mem_p, mem_n, st_p, st_n, tlb_p, tlb_n, pg_p, pg_n, dc_p, row):
    {kernel}(carray(mem_p, (mem_n,)), carray(st_p, (st_n,)), carray(tlb_p, (tlb_n,)),
             carray(pg_p, (pg_n,)), carray(dc_p, DC_SHAPE), row)
    return STATUS_OK
""",
    "deliver": """
def {name}(mem_p, mem_n, st_p, st_n, tlb_p, tlb_n, pg_p, pg_n, vector, error, kind):
    {kernel}(carray(mem_p, (mem_n,)), carray(st_p, (st_n,)), carray(tlb_p, (tlb_n,)),
             carray(pg_p, (pg_n,)), vector, error, kind)
    return STATUS_OK
""",
    "ept": """
def {name}(mem_p, mem_n, st_p, st_n, pg_p, pg_n, what, gpa, lin, acc, flags):
    {kernel}(carray(mem_p, (mem_n,)), carray(st_p, (st_n,)), carray(pg_p, (pg_n,)),
             what, gpa, lin, acc, flags)
    return STATUS_OK
"""}
_C_SIGS = {"handler": C_HANDLER_SIG, "deliver": C_DELIVER_SIG, "ept": C_EPT_SIG}


def kernel_of(slot):
    """``(dispatcher, argument types)`` of table entry ``slot``."""
    if slot == K_DELIVER:
        return interrupts.deliver, DELIVER_SIG
    if slot == K_EPT:
        return ept_hook, EPT_SIG
    if slot in _EVENT_HANDLERS:
        return _EVENT_HANDLERS[slot], HANDLER_SIG
    return HANDLERS[slot], HANDLER_SIG


# The table every machine of this process runs with: entries are only ever added, and
# an address stays valid as long as numba keeps the compiled function (for good).
KTAB = np.zeros(TABLE_SIZE, np.int64)
_WRAPPERS = {}        # kernel -> its compiled C wrapper (numba.cfunc)
_WRAPPER_FUNCTIONS = {}   # kernel -> its wrapper as a Python function (compiled into _WRAPPERS)


def wrapper_function(fn):
    """The plain Python function that :func:`ensure` compiles as kernel ``fn``'s C
    wrapper: it calls the kernel on arrays viewed from (pointer, length) pairs. Made once
    per kernel (:func:`cached` asks for it on every kernel request of a cold compile)."""
    wrapper = _WRAPPER_FUNCTIONS.get(fn)
    if wrapper is None:
        wrapper = _WRAPPER_FUNCTIONS[fn] = _make_wrapper_function(fn)
    return wrapper


def _kind(fn):
    """Which wrapper kernel ``fn`` gets (a key of _WRAPPER_SOURCE)."""
    return "deliver" if fn is interrupts.deliver else "ept" if fn is ept_hook else "handler"


def _make_wrapper_function(fn):
    kind = _kind(fn)
    name = "c_" + fn.py_func.__name__
    # The kernel is inlined into its wrapper (numba inlines it in its own IR): one call per
    # instruction, not two, and the reference counts of the arrays carray makes are
    # pruned within the one function. (carray needs numba's runtime on in the wrapper.)
    inlined = njit(fn.py_func, inline="always")
    # __name__: numba's disk cache finds the wrapper's globals again through its module
    namespace = {"__name__": __name__, "carray": carray, "DC_SHAPE": DC_SHAPE,
                 "STATUS_OK": STATUS_OK, "kernel": inlined}
    # compiled under this file's name: numba files the wrapper's cache beside this module's
    code = compile(_WRAPPER_SOURCE[kind].format(name=name, kernel="kernel"), __file__, "exec")
    exec(code, namespace)
    wrapper = namespace[name]
    wrapper.__qualname__ = name
    return wrapper


def ensure(slot):
    """Compile (or load from numba's disk cache) table entry ``slot``'s kernel and its C
    wrapper, and fill the entry in (its :data:`COMPANIONS` first)."""
    for other in COMPANIONS.get(slot, ()):
        ensure(other)
    if KTAB[slot] != 0:
        return
    fn, sig = kernel_of(slot)
    if config.DISABLE_JIT:
        addr = slot + 1
        _BY_ADDRESS[addr] = fn
    else:
        c = _WRAPPERS.get(fn)
        if c is None:
            from hvsim._numba_corrections import compiling
            with compiling():
                c = numba.cfunc(_C_SIGS[_kind(fn)], cache=True, **_C_OPTIONS)(
                    wrapper_function(fn))
            _WRAPPERS[fn] = c
        addr = c.address
        if not addr:
            raise RuntimeError(f"numba gave no address for {fn.py_func.__qualname__}")
    # the entries sharing this kernel (LAR/LSL, MOVZX/MOVSX, UD/UD2) get it too
    for s in SLOTS:
        if kernel_of(s)[0] is fn:
            KTAB[s] = addr


def cached(fn):
    """Whether numba's disk cache holds kernel ``fn``'s C wrapper (and so the kernel):
    True, False, or None when this cannot be told (caching off, or a numba whose cache
    layout is not the one read here)."""
    if config.DISABLE_JIT:
        return None
    try:
        from numba.core.caching import FunctionCache
        return os.path.exists(FunctionCache(wrapper_function(fn))._cache_file._index_path)
    except Exception:                      # noqa: BLE001 -- a numba that files it elsewhere
        return None


def await_helper(slot, helper, timeout=20.0):
    """If the cold-compile helper process (hvsim/warmup.py) is compiling entry ``slot``'s
    kernel right now, wait until it has written it to the disk cache (or has stopped):
    compiling it here as well would do the same work twice, on a core already busy.

    The helper goes through the entries in ``SLOTS`` order, so the kernel it is on is
    the first of them not yet in the cache.
    """
    fn = kernel_of(slot)[0]
    if helper is None or fn in _WRAPPERS or cached(fn) is not False:
        return
    current = next((k for k in (kernel_of(s)[0] for s in SLOTS) if cached(k) is False), None)
    if current is not fn:
        return
    deadline = time.monotonic() + timeout
    while helper.poll() is None and not cached(fn) and time.monotonic() < deadline:
        time.sleep(0.01)


def ensure_all():
    """Fill every entry (``hvsim warmup``)."""
    for slot in SLOTS:
        ensure(slot)


if config.DISABLE_JIT:
    def call_handler(addr, mem, st, tlb, pg, dc, row):
        _BY_ADDRESS[addr](mem, st, tlb, pg, dc, row)
        return STATUS_OK

    def call_deliver(addr, mem, st, tlb, pg, vector, error, kind):
        _BY_ADDRESS[addr](mem, st, tlb, pg, vector, error, kind)
        return STATUS_OK
else:
    @intrinsic
    def call_handler(typingctx, addr, mem, st, tlb, pg, dc, row):
        """``handler(mem, st, tlb, pg, dc, row)`` through its C wrapper at ``addr``; the
        wrapper's status (:data:`STATUS_OK` when the handler returned)."""
        sig = types.int32(types.int64, mem, st, tlb, pg, dc, types.int64)

        def codegen(context, builder, s, args):
            # dc goes as its data pointer only: its shape is fixed (DC_SHAPE)
            addr_, m, st_, tlb_, pg_, dc_, row_ = args
            dc_ptr = context.make_array(s.args[5])(context, builder, dc_).data
            return _call_c(context, builder, addr_, (m, st_, tlb_, pg_), s.args[1:5],
                           (dc_ptr, row_))
        return sig, codegen

    @intrinsic
    def call_deliver(typingctx, addr, mem, st, tlb, pg, vector, error, kind):
        """``deliver(mem, st, tlb, pg, vector, error, kind)`` through its C wrapper."""
        sig = types.int32(types.int64, mem, st, tlb, pg, types.int64, types.int64, types.int64)

        def codegen(context, builder, s, args):
            return _call_c(context, builder, args[0], args[1:5], s.args[1:5], args[5:])
        return sig, codegen
