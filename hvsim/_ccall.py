"""Calls by address through the C ABI, from one kernel to another (jitted).

The kernel table (hvsim/cpu/table.py) reaches the instruction handlers, interrupt
delivery and the VMX kernels by address, and the MMU reaches the EPT walker the same
way (hvsim/mmu/paging.py): a kernel compiled apart, the first time a guest needs it,
keeps its compile out of the run loop's. Each callee is compiled behind a small
C-callable wrapper (``numba.cfunc``) that takes every array as a (data pointer, element
count) pair and returns :data:`STATUS_OK` once the kernel has returned; the caller
checks that status, so a call that did not complete is never taken for one that did.

This module is the one place that builds such a call (:func:`call_c`), below both the
MMU and the CPU. With ``NUMBA_DISABLE_JIT=1`` an "address" is a key into
:data:`BY_ADDRESS`, which maps it to the plain Python kernel.
"""
from llvmlite import ir as llir

STATUS_OK = 0x4F4B           # what a wrapper returns once its kernel has returned ('OK')

BY_ADDRESS = {}              # NUMBA_DISABLE_JIT=1: "address" -> the Python kernel


def call_c(context, builder, addr, arrays, arraytys, tail):
    """Emit ``int32 f(ptr, len, ptr, len, ..., tail...)`` at ``addr`` (an intrinsic's
    codegen): each array passed as its data pointer and its element count, then the
    trailing int64 arguments. Returns the call's int32 status."""
    args = []
    for ty, value in zip(arraytys, arrays):
        ary = context.make_array(ty)(context, builder, value)
        args += [ary.data, ary.nitems]
    args += list(tail)
    fnty = llir.FunctionType(llir.IntType(32), [a.type for a in args])
    fn = builder.inttoptr(addr, fnty.as_pointer())
    return builder.call(fn, args)
