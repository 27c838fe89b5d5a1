"""Translated blocks: the run loop's side of the block translator (jitted).

A *block* is a run of decoded instructions in one code frame, from a hot entry up to
its first control transfer, compiled to host code by hvsim/cpu/translate.py (QEMU's
translation blocks, in miniature). The decode cache keeps, per entry row, the compiled
block's address in ``dc[F_BLK, row]`` and how often the row has been reached in
``dc[F_HOT, row]``. Once a row has run ``st[CFG_BLOCK_HOT]`` times, the run loop
asks the host to translate it (``st[BLOCK_REQUEST]``, an exit ``run()`` never shows
to its caller); from then on a fast stretch runs the block instead of the
interpreter when it reaches that row.

A block is exact: it keeps every counter, TLB stamp and state slot the interpreter
would, and before any instruction it cannot finish without help (a TLB miss, a write
to a code frame, a fault, an address outside memory) it stops, leaving that
instruction to the interpreter. The guest cannot tell the difference; the tests
compare whole machine states with and without blocks.
"""
from llvmlite import ir as llir
from numba import types
from numba.extending import intrinsic

# dc fields owned by the translator (after the decoder's fields, hvsim/cpu/decode.py)
F_BLK = 16     # entry row: address of the compiled block; 0 none yet; -1 none ever (untranslatable)
F_HOT = 17     # entry row: times the row was reached in a fast stretch while F_BLK == 0

BLOCK_NONE = 0
BLOCK_NEVER = -1
ATTN_BLOCK = 2   # st[ATTN] value of a translation request (handlers raise ATTN with 1)


@intrinsic
def call_block(typingctx, addr, st, mem, tlb, pg, limit):
    """Call the translated block at ``addr``: ``i64 block(st*, mem*, tlb*, pg*, limit)``.

    Returns the instructions it retired (0: none, the interpreter runs the entry
    instruction instead). The address comes from hvsim/cpu/translate.py in this
    process; the machine clears every F_BLK it did not write (Machine.restore).
    """
    sig = types.int64(types.int64, st, mem, tlb, pg, types.int64)

    def codegen(context, builder, signature, args):
        fn_addr, *arrays, lim = args
        ptrs = [context.make_array(ty)(context, builder, v).data
                for ty, v in zip(signature.args[1:5], arrays)]
        fnty = llir.FunctionType(llir.IntType(64), [p.type for p in ptrs] + [llir.IntType(64)])
        fn = builder.inttoptr(fn_addr, fnty.as_pointer())
        return builder.call(fn, ptrs + [lim])
    return sig, codegen
