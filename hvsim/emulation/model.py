"""The model of an emulator's caches, computed from the instruction trace (jitted).

hvsim's machine already is a software CPU: an interpreter with a decode cache
(hvsim/cpu/run.py, decode.py) and a block translator (hvsim/cpu/translate.py,
blocks.py). Its own structures are shaped for speed in numba, not like Bochs's or
QEMU's; so the emulation monitor (hvsim/emulation/monitor.py) runs the guest on that
machine exactly as natively and *models* the real emulators' structures from the
machine's instruction trace (hvsim/cpu/itrace.py): one record per retired instruction
and one per store into a frame code was fetched from. :func:`consume` updates both
models with a batch of records; every counter below comes from the model, none from
hvsim's own decode cache or blocks.

Bochs, *interpret* mode [bochs ``cpu/icache.h``, ``cpu/icache.cc``, ``cpu/cpu.cc``, as
TECHNIQUES.md 1b gives them]:

* the icache: BX_ICACHE_ENTRIES = 64 Ki entries, direct-mapped, hashed by *physical*
  address, ``hash(pAddr, fetchModeMask) = (pAddr & (entries - 1)) ^ fetchModeMask``;
  an entry holds one *trace*: at most BX_MAX_TRACE_LENGTH = 32 decoded instructions from
  pAddr, ending after a branch (or an instruction that changes how code is fetched);
  hvsim's analogue is its decode cache (16 Ki direct-mapped rows of one instruction each);
* a trace ends after the instructions that end a TB below (:data:`END_OF_OP`): an
  approximation of Bochs's own "ends the trace" attribute of its decoder tables, which
  marks branches and the instructions that change how code runs;
* the fetch mode mask is CS.D here (hvsim has no 16-bit code, long mode, SSE or AVX, the
  other bits of Bochs's mask): the CPL is *not* in it -- Bochs decodes the same bytes the
  same way in every ring and checks privilege when it executes;
* the traces' instructions live in a pool of BX_ICACHE_MEM_POOL = 576 Ki instructions; a
  miss reserves room for a whole trace (32) and keeps what it used; when the reservation
  does not fit, the whole cache is flushed (``flushICacheEntries``);
* self-modifying code: per 4 KiB physical page a 32-bit mask
  (``fineGranularityMapping``), one bit per 128-byte region holding decoded code; each
  trace keeps the same kind of mask of its own regions (``traceMask``); an instruction
  marks the regions of its first and last byte in both (``markICache``). A store whose
  regions meet the page's mask (``decWriteStamp``) calls ``handleSMC``, which invalidates
  only the page's traces whose traceMask meets the store's regions; then only those
  regions are cleared from the page's mask (``fineGranularityMapping[index] &= ~mask``).
  A store in an unmarked region invalidates nothing. Bochs's mask of a store holds the
  regions of its first and last byte, the model's every region from the first to the
  last (the same for a store of up to 128 bytes; the record of one step of a REP string
  instruction can cover a page);
* not modelled: the page-split entries of traces across a page (traces stop at the page
  end here), trace merging and linking ("handlers chaining"). Bochs decodes a whole trace
  before running it and marks all its regions; the model learns a trace from its first
  run, so a store by that run into its own later instructions, in a region no other
  trace marked, is not seen as a store into code.

QEMU TCG, *translate* mode [QEMU ``accel/tcg`` and ``target/i386``, as TECHNIQUES.md 1a
gives them; Bellard 2005]:

* a TB is keyed by (pc, cs_base, flags, phys pc): ``flags`` holds hflags' CPL (bits 1:0),
  CS32 (bit 4) and IOPL (bits 13:12, "same as eflags") -- the record's mode word, whose
  bits are laid out the same way (hvsim/arch/layout.py ITRACE_*): the same bytes run at
  CPL 0 and CPL 3, or under another IOPL, are two TBs. QEMU's flags hold more, which the
  model leaves out of the key: EFLAGS.TF, RF, VM and AC, and the other hflags (INHIBIT_IRQ,
  SS32, ADDSEG, PE, MP/EM/TS, LMA, CS64); code run under two values of one of them is one
  TB here (TECHNIQUES.md 1a);
* a TB ends after a control transfer or an instruction that changes static CPU state
  (:data:`END_OF_OP`), after TCG_MAX_INSNS = 512 instructions, and before an instruction
  that starts on another virtual page than the TB's first (so a TB spans at most two
  pages: its last instruction may cross);
* lookup: the per-vCPU jump cache, TB_JMP_CACHE_BITS = 12 (4096 entries) hashed on the
  *virtual* pc by ``tb_jmp_cache_hash_func`` (softmmu: TB_JMP_PAGE_BITS = 6 bits of page),
  then the physical hash table (QHT; here an open-addressing table on the same key), then
  translation;
* chaining (``goto_tb``): a TB ending in a direct jump, a conditional branch or a
  fall-through has up to two outgoing slots; a slot is patched to its successor the first
  time it is taken, only when the successor's pc is on the page of the jumping TB's first
  instruction (``translator_use_goto_tb``: ``((pc_first ^ dest) & TARGET_PAGE_MASK) ==
  0``; softmmu, ``docs/devel/tcg.rst``) -- not on the second page of a TB whose last
  instruction crosses; an indirect transfer (RET, JMP/CALL r/m, far
  transfers, IRET, INT n) and the end of a TB after a static-state change go through the
  jump-cache lookup (``lookup_and_goto_ptr`` / the main loop);
* an event between two instructions (an interrupt or exception delivered: the next
  record's pc is not where the previous one went) leaves the TB for the main loop: the
  next TB is looked up. QEMU checks interrupts only between TBs; hvsim delivers them
  between any two instructions, so the model leaves a TB early where QEMU would have
  finished it;
* self-modifying code: a code-written record of the bytes [start, end) invalidates the
  TBs on that physical page whose bytes there meet them (removed from the hash and the
  jump cache, incoming chains undone), as system-mode QEMU's
  ``tb_invalidate_phys_page_range``: "if (!(tb_end <= start || tb_start >= end))", for
  each of the two parts of a TB across two pages (the whole-page invalidation of Bellard
  2005 3.6 is user-mode QEMU's). After SMC_BITMAP_USE_THRESHOLD = 10 writes to a page
  QEMU builds a bitmap of its code bytes so that a store to other bytes costs nothing:
  that changes the cost of a store, not which TBs are invalidated, and is not modelled.
  A TB that invalidates itself ends after the store (QEMU's ``cpu_loop_exit_noexc``).
  The model learns the TB being built from its first run: a store ahead of it on its
  page is remembered, and if the run goes on to reach those bytes (QEMU's TB, translated
  whole, held them), the TB is invalidated and ends before them, where QEMU ends it
  right after the store;
* the code buffer: as QEMU before 2023 (``code_gen_max_blocks = code_gen_buffer_size /
  CODE_GEN_AVG_BLOCK_SIZE``, CODE_GEN_AVG_BLOCK_SIZE = 150 bytes, include/exec/exec-all.h),
  the buffer is counted in TBs: the default 32 MiB buffer (DEFAULT_CODE_GEN_BUFFER_SIZE,
  accel/tcg/translate-all.c) holds 223,696 TBs; the next translation flushes all
  (``tb_flush``). Invalidated TBs keep their room until then, as in QEMU;
* how a TB's extent is learnt: from the instructions executed the first time from its pc
  until an end condition. A first run that an interrupt or exception cuts short ends the
  TB there (its later runs fall through to the next TB).

An instruction whose bytes cross into the next linear page: the machine traces the
frame that page maps to as well (hvsim/cpu/decode.py), and the record names it (w7), so
a TB's second page is that frame -- under paging not the physically next one -- as
QEMU's ``get_page_addr_code`` of the next page gives it. The Bochs model does not use
it (its traces stop at the page end; page-split entries are not modelled).

The soft TLB is not modelled here: the monitor gives its machine a TLB of QEMU's default
geometry and reports its hits and misses (hvsim/emulation/monitor.py).

State: numpy arrays made by :func:`new_state`; ``consume`` is the one kernel
(cache=True); the face reads the counters by the names in :data:`COUNTERS`.
"""
import numpy as np

from hvsim._jit import njit
from hvsim.arch.layout import (MASK32, ITRACE_KIND_SHIFT, ITRACE_KIND_INSN,
                               ITRACE_KIND_CODE_WRITTEN, ITRACE_MODE_CS32)
from hvsim.cpu import decode as D

PAGE_SHIFT = 12
PAGE_MASK = ~0xFFF

# ---- Bochs (cpu/icache.h) -------------------------------------------------------------
BX_ICACHE_ENTRIES = 64 * 1024      # BxICacheEntries
BX_MAX_TRACE_LENGTH = 32
BX_ICACHE_MEM_POOL = 576 * 1024    # BxICacheMemPool (instructions)
BX_REGION_SHIFT = 7                # 128-byte regions: PAGE_OFFSET(pAddr) >> 7
BX_REGIONS = 4096 >> BX_REGION_SHIFT   # 32 per page: one bit each of a 32-bit stamp
BX_FETCH_MODE_IS32 = 1             # CS.D in the fetch mode mask (its bit position: assumed)

# ---- QEMU (accel/tcg, include/exec, target/i386/cpu.h) --------------------------------
TCG_MAX_INSNS = 512
TB_JMP_CACHE_BITS = 12
TB_JMP_CACHE_SIZE = 1 << TB_JMP_CACHE_BITS
TB_JMP_PAGE_BITS = TB_JMP_CACHE_BITS // 2
TB_JMP_PAGE_SIZE = 1 << TB_JMP_PAGE_BITS
TB_JMP_ADDR_MASK = TB_JMP_PAGE_SIZE - 1
TB_JMP_PAGE_MASK = TB_JMP_CACHE_SIZE - TB_JMP_PAGE_SIZE
DEFAULT_CODE_GEN_BUFFER_SIZE = 32 << 20
CODE_GEN_AVG_BLOCK_SIZE = 150
DEFAULT_MAX_TBS = DEFAULT_CODE_GEN_BUFFER_SIZE // CODE_GEN_AVG_BLOCK_SIZE
HF_CPL_MASK = 3                    # hflags bits 1:0
HF_CS32_MASK = 1 << 4              # hflags bit 4
IOPL_MASK = 3 << 12                # hflags bits 13:12, "same as eflags"
TB_FLAGS_MASK = HF_CPL_MASK | HF_CS32_MASK | IOPL_MASK

# ---- how a TB (or a Bochs trace) ends, by decoder op -----------------------------------
END_NONE = 0       # not a TB end
END_DIRECT = 1     # JMP rel, CALL rel: one goto_tb slot (the target)
END_COND = 2       # Jcc, LOOP, JECXZ: slot 0 the fall-through, slot 1 the target
END_FALL = 3       # (the TB's length, its page, or an event ended it): slot 0 falls through
END_INDIRECT = 4   # RET, RETF, IRET, INT n/INT3/INTO, far JMP/CALL, JMP/CALL r/m: lookup
END_STATE = 5      # static CPU state changed (gen_eob: back to the main loop): lookup


def _end_table():
    t = np.zeros((D.N_OPS, 8), np.int64)       # [op, ModRM.reg]
    for op in (D.OP_JMP_REL, D.OP_CALL_REL):
        t[op, :] = END_DIRECT
    for op in (D.OP_JCC, D.OP_LOOP, D.OP_JECXZ):
        t[op, :] = END_COND
    for op in (D.OP_RET, D.OP_RETF, D.OP_IRET, D.OP_INT, D.OP_INT3, D.OP_INTO, D.OP_JMPF,
               D.OP_CALLF):
        t[op, :] = END_INDIRECT
    t[D.OP_GRP5, 2:6] = END_INDIRECT            # FF /2 /3 CALL, FF /4 /5 JMP (near, far)
    # static state: IF and the interrupt shadow (CLI, STI, POPF), IOPL/TF (POPF), CR0/CR3/
    # CR4 (MOV CR, CLTS, LMSW and the rest of 0F 01), segment bases and CS32/SS32/ADDSEG
    # (MOV/POP Sreg), the debug registers, MSRs, HLT (the CPU stops), the VMX instructions
    for op in (D.OP_CLI, D.OP_STI, D.OP_POPF, D.OP_MOV_CR, D.OP_CLTS, D.OP_GRP7,
               D.OP_MOV_TO_SREG, D.OP_POP_SREG, D.OP_MOV_DR, D.OP_WRMSR, D.OP_HLT, D.OP_VMX,
               D.OP_GRP6, D.OP_INVD):
        t[op, :] = END_STATE
    return t


#: how a TB or a trace ends after each decoder op (and ModRM.reg, for FF /r)
END_OF_OP = _end_table()

# ---- counters --------------------------------------------------------------------------
COUNTERS = (
    # Bochs
    "bx_lookups", "bx_hits", "bx_misses", "bx_decoded", "bx_interpreted",
    "bx_smc", "bx_traces_invalidated", "bx_flushes",
    # QEMU TCG
    "tb_translated", "tb_insns_translated", "tb_lookups", "tb_jc_hits", "tb_hash_hits",
    "tb_misses", "tb_chain_hits", "tb_chains_patched", "tb_invalidated", "tb_flushes",
    "tb_insns_run", "code_writes",
)
(BX_LOOKUPS, BX_HITS, BX_MISSES, BX_DECODED, BX_INTERPRETED, BX_SMC, BX_INVALIDATED,
 BX_FLUSHES, TB_TRANSLATED, TB_INSNS_TRANSLATED, TB_LOOKUPS, TB_JC_HITS, TB_HASH_HITS,
 TB_MISSES, TB_CHAIN_HITS, TB_CHAINS_PATCHED, TB_INVALIDATED, TB_FLUSHES, TB_INSNS_RUN,
 CODE_WRITES) = range(len(COUNTERS))
N_COUNTERS = len(COUNTERS)

# ---- scalar state (s) -------------------------------------------------------------------
S_PREV_NEXT = 0    # where the previous instruction went (its record's next pc), -1 none
S_CUR = 1          # TB executing, -1 none
S_POS = 2          # its instructions executed so far
S_BUILD = 3        # 1: the TB is being translated (its first run)
S_KILL = 4         # 1: a store invalidated it: it ends after the storing instruction
S_PREV_TB = 5      # the TB that just ended, whose slots may chain to the next one, -1 none
S_NTB = 6          # TBs allocated since the last flush
S_MAX_TBS = 7      # TBs the code buffer holds
S_BX_CUR = 8       # icache entry of the trace executing, -1 none
S_BX_POS = 9
S_BX_BUILD = 10
S_BX_KILL = 11
S_BX_MPINDEX = 12  # instructions used in the pool
S_BX_LAST_END = 13  # the last instruction appended to the trace being built ended it
S_PEND_LO = 14     # [lo, hi): bytes stored to ahead of the TB being built, on its page
S_PEND_HI = 15
S_SIZE = 16

# ---- a TB (tbs[i]) ------------------------------------------------------------------------
T_PC, T_CSBASE, T_FLAGS, T_PHYS, T_ICOUNT, T_SIZE, T_PAGE0, T_PAGE1, T_VALID, T_END, \
    T_DEST0, T_DEST1, T_JMP0, T_JMP1, T_PNEXT0, T_PNEXT1, T_HSLOT = range(17)
T_FIELDS = 17
H_EMPTY = -1       # a hash-table slot never used since the last flush
H_DELETED = -2     # the slot of an invalidated TB: lookups go on past it, inserts reuse it

# ---- a Bochs icache entry (icache[i]) -------------------------------------------------------
I_PADDR, I_MODE, I_TLEN, I_VALID, I_MASK = range(5)
I_FIELDS = 5


def hash_size(max_tbs: int) -> int:
    """Slots of the open-addressing TB hash table: a power of two >= 2 * max_tbs."""
    n = 1
    while n < 2 * max_tbs:
        n <<= 1
    return n


def new_state(mem_size: int, max_tbs: int = DEFAULT_MAX_TBS) -> dict:
    """Fresh model arrays for a machine of ``mem_size`` bytes (dict of numpy arrays)."""
    s = np.zeros(S_SIZE, np.int64)
    s[S_PREV_NEXT] = s[S_CUR] = s[S_PREV_TB] = s[S_BX_CUR] = -1
    s[S_MAX_TBS] = max_tbs
    tbs = np.zeros((max_tbs, T_FIELDS), np.int64)
    return {"q": np.zeros(N_COUNTERS, np.int64), "s": s, "tbs": tbs,
            "pages": np.full(mem_size >> PAGE_SHIFT, -1, np.int64),
            "htab": np.full(hash_size(max_tbs), -1, np.int64),
            "jcache": np.full(TB_JMP_CACHE_SIZE, -1, np.int64),
            "icache": np.zeros((BX_ICACHE_ENTRIES, I_FIELDS), np.int64),
            "stamps": np.zeros(mem_size >> PAGE_SHIFT, np.int64)}


# ---------------------------------------------------------------------------------- QEMU
@njit(inline="always")
def _jc_hash(pc):
    tmp = pc ^ (pc >> (PAGE_SHIFT - TB_JMP_PAGE_BITS))
    return ((tmp >> (PAGE_SHIFT - TB_JMP_PAGE_BITS)) & TB_JMP_PAGE_MASK) | (tmp & TB_JMP_ADDR_MASK)


@njit(inline="always")
def _key_hash(phys, pc, flags, csbase, nslots):
    h = (phys * 0x9E3779B1 + pc * 0x85EBCA77 + flags * 0xC2B2AE3D + csbase * 0x27D4EB2F) & MASK32
    h ^= h >> 15
    return h & (nslots - 1)


@njit(inline="always")
def _matches(tbs, t, pc, csbase, flags, phys):
    return (tbs[t, T_VALID] != 0 and tbs[t, T_PC] == pc and tbs[t, T_CSBASE] == csbase
            and tbs[t, T_FLAGS] == flags and tbs[t, T_PHYS] == phys)


@njit(inline="always")
def _tb_flush(q, s, tbs, pages, htab, jcache):
    q[TB_FLUSHES] += 1
    s[S_NTB] = 0
    pages[:] = -1
    htab[:] = -1
    jcache[:] = -1
    s[S_CUR] = -1
    s[S_PREV_TB] = -1


@njit(inline="always")
def _page_link(tbs, pages, t, slot, page):
    if page < pages.shape[0]:
        tbs[t, T_PNEXT0 + slot] = pages[page]
        pages[page] = t * 2 + slot


@njit(inline="always")
def _tb_lookup(q, s, tbs, pages, htab, jcache, pc, csbase, flags, phys):
    """The TB for this key: the jump cache, the hash table, or a new TB (being built)."""
    q[TB_LOOKUPS] += 1
    h = _jc_hash(pc)
    t = jcache[h]
    if t >= 0 and _matches(tbs, t, pc, csbase, flags, phys):
        q[TB_JC_HITS] += 1
        s[S_BUILD] = 0
        return t
    nslots = htab.shape[0]
    k = _key_hash(phys, pc, flags, csbase, nslots)
    free = -1
    while htab[k] != H_EMPTY:
        t = htab[k]
        if t == H_DELETED:
            if free < 0:
                free = k
        elif _matches(tbs, t, pc, csbase, flags, phys):
            q[TB_HASH_HITS] += 1
            jcache[h] = t
            s[S_BUILD] = 0
            return t
        k = (k + 1) & (nslots - 1)
    if free >= 0:
        k = free
    q[TB_MISSES] += 1
    if s[S_NTB] >= s[S_MAX_TBS]:
        _tb_flush(q, s, tbs, pages, htab, jcache)
        k = _key_hash(phys, pc, flags, csbase, nslots)
    t = s[S_NTB]
    s[S_NTB] = t + 1
    tbs[t, :] = 0
    tbs[t, T_PC] = pc
    tbs[t, T_CSBASE] = csbase
    tbs[t, T_FLAGS] = flags
    tbs[t, T_PHYS] = phys
    tbs[t, T_PAGE0] = phys >> PAGE_SHIFT
    tbs[t, T_PAGE1] = -1
    tbs[t, T_VALID] = 1
    tbs[t, T_DEST0] = -1
    tbs[t, T_DEST1] = -1
    tbs[t, T_JMP0] = -1
    tbs[t, T_JMP1] = -1
    htab[k] = t
    tbs[t, T_HSLOT] = k
    jcache[h] = t
    _page_link(tbs, pages, t, 0, phys >> PAGE_SHIFT)
    q[TB_TRANSLATED] += 1
    s[S_BUILD] = 1
    return t


@njit(inline="always")
def _tb_finish(tbs, t, end, last_pc, last_len, last_imm, nxt):
    """The TB being built ends after its last instruction: record its exits."""
    tbs[t, T_END] = end
    fall = (last_pc + last_len) & MASK32
    if end == END_DIRECT:
        tbs[t, T_DEST0] = nxt
    elif end == END_COND:
        tbs[t, T_DEST0] = fall
        tbs[t, T_DEST1] = (fall + last_imm) & MASK32
    elif end == END_FALL:
        tbs[t, T_DEST0] = fall


@njit(inline="always")
def _chainable(tbs, t, dest):
    """goto_tb only to a destination on the page of the jumping TB's first instruction
    (translator_use_goto_tb: ((pc_first ^ dest) & TARGET_PAGE_MASK) == 0)."""
    return (dest >> PAGE_SHIFT) == (tbs[t, T_PC] >> PAGE_SHIFT)


@njit(inline="always")
def _tb_drop(q, s, tbs, htab, t):
    """tb_phys_invalidate: the TB leaves the hash table (and so the jump cache and every
    chain into it: both check T_VALID)."""
    tbs[t, T_VALID] = 0
    htab[tbs[t, T_HSLOT]] = H_DELETED
    q[TB_INVALIDATED] += 1
    if t == s[S_CUR]:
        s[S_KILL] = 1
    if t == s[S_PREV_TB]:
        s[S_PREV_TB] = -1


@njit(inline="always")
def _tb_overlaps(tbs, t, slot, start, end):
    """Whether the TB's bytes on its page ``slot`` meet [start, end) (physical): the range
    test of tb_invalidate_phys_page_range, "if (!(tb_end <= start || tb_start >= end))"."""
    if slot == 0:
        lo = tbs[t, T_PHYS]
        hi = lo + tbs[t, T_SIZE]
    else:
        lo = tbs[t, T_PAGE1] << PAGE_SHIFT
        hi = lo + ((tbs[t, T_PHYS] + tbs[t, T_SIZE]) & 0xFFF)
    return not (hi <= start or lo >= end)


@njit(inline="always")
def _tb_invalidate_range(q, s, tbs, pages, htab, page, start, end):
    """Invalidate the TBs of ``page`` whose bytes there meet [start, end); unlink the
    page's entries of invalid TBs on the way (a TB's entry on its other page goes when
    that page's list is next walked)."""
    prev = -1
    e = pages[page]
    while e >= 0:
        t = e >> 1
        nxt = tbs[t, T_PNEXT0 + (e & 1)]
        if tbs[t, T_VALID] != 0 and _tb_overlaps(tbs, t, e & 1, start, end):
            _tb_drop(q, s, tbs, htab, t)
        if tbs[t, T_VALID] == 0:
            if prev < 0:
                pages[page] = nxt
            else:
                tbs[prev >> 1, T_PNEXT0 + (prev & 1)] = nxt
        else:
            prev = e
        e = nxt


# ---------------------------------------------------------------------------------- Bochs
@njit(inline="always")
def _bx_mark(icache, stamps, e, phys, length):
    a = phys & 0xFFF
    b = (phys + length - 1) & 0xFFF
    if (phys + length - 1) >> PAGE_SHIFT != phys >> PAGE_SHIFT:
        b = 0xFFF
    m = (1 << (a >> BX_REGION_SHIFT)) | (1 << (b >> BX_REGION_SHIFT))
    icache[e, I_MASK] |= m
    p = phys >> PAGE_SHIFT
    if p < stamps.shape[0]:
        stamps[p] |= m


@njit(inline="always")
def _bx_flush(q, s, icache, stamps):
    q[BX_FLUSHES] += 1
    icache[:, I_VALID] = 0
    stamps[:] = 0
    s[S_BX_MPINDEX] = 0
    s[S_BX_CUR] = -1


@njit(inline="always")
def _bx_smc(q, s, icache, stamps, phys, size):
    """decWriteStamp: a store whose 128-byte regions meet the page's mask calls handleSMC,
    which drops the page's traces whose own mask meets the store's; then only the store's
    regions are cleared from the page's mask."""
    p = phys >> PAGE_SHIFT
    if p >= stamps.shape[0]:
        return
    a = (phys & 0xFFF) >> BX_REGION_SHIFT
    b = ((phys + size - 1) & 0xFFF) >> BX_REGION_SHIFT
    if ((phys + size - 1) >> PAGE_SHIFT) != p:
        b = BX_REGIONS - 1
    mask = 0
    for r in range(a, b + 1):
        mask |= 1 << r
    if (stamps[p] & mask) == 0:
        return
    q[BX_SMC] += 1
    # every entry of the page sits in one aligned block of 4096 (hash: low 16 bits, XORed
    # with a mode mask below 4096)
    first = (p << PAGE_SHIFT) & (BX_ICACHE_ENTRIES - 1)
    for e in range(first, first + 4096):
        if icache[e, I_VALID] != 0 and (icache[e, I_PADDR] >> PAGE_SHIFT) == p \
                and (icache[e, I_MASK] & mask) != 0:
            icache[e, I_VALID] = 0
            q[BX_INVALIDATED] += 1
            if e == s[S_BX_CUR]:
                s[S_BX_KILL] = 1
    stamps[p] &= ~mask


@njit(inline="always")
def _bx_insn(q, s, icache, stamps, seq, pc, phys, mode, length, end):
    q[BX_INTERPRETED] += 1
    cur = s[S_BX_CUR]
    if cur >= 0:
        if not seq:
            cur = -1                           # an event: the trace is left
        elif s[S_BX_BUILD] != 0:
            if (s[S_BX_LAST_END] == 0 and icache[cur, I_TLEN] < BX_MAX_TRACE_LENGTH
                    and (phys >> PAGE_SHIFT) == (icache[cur, I_PADDR] >> PAGE_SHIFT)):
                icache[cur, I_TLEN] += 1
                q[BX_DECODED] += 1
                s[S_BX_MPINDEX] += 1
                _bx_mark(icache, stamps, cur, phys, length)
                s[S_BX_LAST_END] = 1 if end != END_NONE else 0
                return
            cur = -1                           # the trace ended before this instruction
        elif s[S_BX_POS] < icache[cur, I_TLEN]:
            s[S_BX_POS] += 1
            return
        else:
            cur = -1
    # a new trace starts here: the icache lookup
    q[BX_LOOKUPS] += 1
    fm = BX_FETCH_MODE_IS32 if (mode & ITRACE_MODE_CS32) != 0 else 0
    e = (phys & (BX_ICACHE_ENTRIES - 1)) ^ fm
    if icache[e, I_VALID] != 0 and icache[e, I_PADDR] == phys and icache[e, I_MODE] == fm:
        q[BX_HITS] += 1
        s[S_BX_CUR] = e
        s[S_BX_BUILD] = 0
        s[S_BX_POS] = 1
        return
    q[BX_MISSES] += 1
    if s[S_BX_MPINDEX] + BX_MAX_TRACE_LENGTH > BX_ICACHE_MEM_POOL:
        _bx_flush(q, s, icache, stamps)
    icache[e, I_PADDR] = phys
    icache[e, I_MODE] = fm
    icache[e, I_TLEN] = 1
    icache[e, I_VALID] = 1
    icache[e, I_MASK] = 0
    q[BX_DECODED] += 1
    s[S_BX_MPINDEX] += 1
    _bx_mark(icache, stamps, e, phys, length)
    s[S_BX_CUR] = e
    s[S_BX_BUILD] = 1
    s[S_BX_LAST_END] = 1 if end != END_NONE else 0


# ---------------------------------------------------------------------------------- QEMU
@njit(inline="always")
def _tb_insn(q, s, tbs, pages, htab, jcache, seq, pc, phys, phys2, flags, csbase, length,
             imm, nxt, end):
    q[TB_INSNS_RUN] += 1
    cur = s[S_CUR]
    if cur >= 0:
        if not seq:
            # an event between two instructions: back to the main loop
            if s[S_BUILD] != 0:
                _tb_finish(tbs, cur, END_FALL, 0, 0, 0, 0)
                tbs[cur, T_DEST0] = s[S_PREV_NEXT]
            cur = -1
            s[S_PREV_TB] = -1
        elif s[S_BUILD] != 0:
            if (tbs[cur, T_ICOUNT] < TCG_MAX_INSNS
                    and (pc >> PAGE_SHIFT) == (tbs[cur, T_PC] >> PAGE_SHIFT)):
                if phys + length <= s[S_PEND_LO] or phys >= s[S_PEND_HI]:
                    _tb_append(q, s, tbs, pages, cur, pc, phys, phys2, length, imm, nxt, end)
                    return
                # its first run reaches bytes a store wrote ahead of it: QEMU's TB held
                # them (it was translated whole) and was invalidated by that store; the
                # model ends it here, before the rewritten bytes
                _tb_finish(tbs, cur, END_FALL, 0, 0, 0, 0)
                tbs[cur, T_DEST0] = pc
                _tb_drop(q, s, tbs, htab, cur)
                s[S_KILL] = 0
                s[S_PREV_TB] = -1
                cur = -1
            else:
                _tb_finish(tbs, cur, END_FALL, 0, 0, 0, 0)
                tbs[cur, T_DEST0] = pc
                s[S_PREV_TB] = cur
                cur = -1
        elif s[S_POS] < tbs[cur, T_ICOUNT]:
            s[S_POS] += 1
            if s[S_POS] == tbs[cur, T_ICOUNT]:
                s[S_PREV_TB] = cur
                s[S_CUR] = -1
            return
        else:
            cur = -1
    # a TB starts here: through a patched slot of the TB that just ended, or a lookup
    s[S_PEND_LO] = s[S_PEND_HI] = 0
    prev = s[S_PREV_TB]
    s[S_PREV_TB] = -1
    t = -1
    slot = -1
    if prev >= 0 and seq and tbs[prev, T_VALID] != 0:
        e = tbs[prev, T_END]
        if (e == END_DIRECT or e == END_FALL or e == END_COND) and tbs[prev, T_DEST0] == pc:
            slot = 0
        elif e == END_COND and tbs[prev, T_DEST1] == pc:
            slot = 1
        if slot >= 0 and not _chainable(tbs, prev, pc):
            slot = -1
        if slot >= 0:
            j = tbs[prev, T_JMP0 + slot]
            if j >= 0 and _matches(tbs, j, pc, csbase, flags, phys):
                q[TB_CHAIN_HITS] += 1
                t = j
                s[S_BUILD] = 0
    if t < 0:
        flushes = q[TB_FLUSHES]
        t = _tb_lookup(q, s, tbs, pages, htab, jcache, pc, csbase, flags, phys)
        if slot >= 0 and q[TB_FLUSHES] == flushes and tbs[prev, T_VALID] != 0:
            tbs[prev, T_JMP0 + slot] = t
            q[TB_CHAINS_PATCHED] += 1
    s[S_CUR] = t
    if s[S_BUILD] != 0:
        _tb_append(q, s, tbs, pages, t, pc, phys, phys2, length, imm, nxt, end)
    else:
        s[S_POS] = 1
        if tbs[t, T_ICOUNT] == 1:
            s[S_PREV_TB] = t
            s[S_CUR] = -1


@njit(inline="always")
def _tb_append(q, s, tbs, pages, t, pc, phys, phys2, length, imm, nxt, end):
    n = tbs[t, T_ICOUNT] + 1
    tbs[t, T_ICOUNT] = n
    tbs[t, T_SIZE] += length
    q[TB_INSNS_TRANSLATED] += 1
    if (phys & 0xFFF) + length > 4096 and tbs[t, T_PAGE1] < 0:
        last = phys2 >> PAGE_SHIFT          # the frame the next linear page maps to
        tbs[t, T_PAGE1] = last
        _page_link(tbs, pages, t, 1, last)
    s[S_POS] = n
    if end != END_NONE:
        _tb_finish(tbs, t, end, pc, length, imm, nxt)
    elif n >= TCG_MAX_INSNS:
        _tb_finish(tbs, t, END_FALL, pc, length, imm, nxt)
    else:
        return
    s[S_CUR] = -1
    s[S_BUILD] = 0
    s[S_PREV_TB] = t


# ---------------------------------------------------------------------------------- the kernel
@njit(inline="always")
def _code_written(q, s, tbs, pages, htab, icache, stamps, phys, size, nxt):
    """A store of ``size`` bytes at ``phys`` (one frame): invalidate. A TB or trace that
    the store invalidated while it ran ends with the storing instruction (QEMU's
    cpu_loop_exit_noexc; Bochs stops the trace), the next one is looked up."""
    q[CODE_WRITES] += 1
    p = phys >> PAGE_SHIFT
    if p < pages.shape[0]:
        _tb_invalidate_range(q, s, tbs, pages, htab, p, phys, phys + size)
        cur = s[S_CUR]
        if s[S_BUILD] != 0 and s[S_KILL] == 0 and cur >= 0 and tbs[cur, T_PAGE0] == p \
                and phys >= tbs[cur, T_PHYS] + tbs[cur, T_SIZE]:
            # ahead of the TB being built, whose extent the model learns as it runs
            if s[S_PEND_HI] <= s[S_PEND_LO]:
                s[S_PEND_LO] = phys
                s[S_PEND_HI] = phys + size
            else:
                s[S_PEND_LO] = min(s[S_PEND_LO], phys)
                s[S_PEND_HI] = max(s[S_PEND_HI], phys + size)
    _bx_smc(q, s, icache, stamps, phys, size)
    if s[S_KILL] != 0:
        cur = s[S_CUR]
        if s[S_BUILD] != 0:
            _tb_finish(tbs, cur, END_FALL, 0, 0, 0, 0)
            tbs[cur, T_DEST0] = nxt
        s[S_CUR] = -1
        s[S_BUILD] = 0
        s[S_PREV_TB] = -1
        s[S_KILL] = 0
    if s[S_BX_KILL] != 0:
        s[S_BX_CUR] = -1
        s[S_BX_KILL] = 0


@njit
def consume(recs, q, s, tbs, pages, htab, jcache, icache, stamps):
    """Update both models with the trace records ``recs`` (uint32[n, 8], layout.py).

    The machine writes a code-written record during the store, before the record of the
    instruction that stored (written when it retires): the model applies it after that
    instruction, as the emulators see the store -- in the middle of running its TB or
    trace. A code write not followed by the next instruction in sequence (an event's
    delivery pushed onto a code page) is applied at once."""
    n = recs.shape[0]
    i = 0
    while i < n:
        mode = np.int64(recs[i, 2])
        kind = mode >> ITRACE_KIND_SHIFT
        if kind == ITRACE_KIND_CODE_WRITTEN:
            # the instruction that made this store, if the records go on in sequence
            j = i
            while j < n and (np.int64(recs[j, 2]) >> ITRACE_KIND_SHIFT) == ITRACE_KIND_CODE_WRITTEN:
                j += 1
            if j < n and (np.int64(recs[j, 2]) >> ITRACE_KIND_SHIFT) == ITRACE_KIND_INSN \
                    and np.int64(recs[j, 0]) == s[S_PREV_NEXT]:
                _insn(recs, j, q, s, tbs, pages, htab, jcache, icache, stamps)
                nxt = np.int64(recs[j, 5])
                for k in range(i, j):
                    _code_written(q, s, tbs, pages, htab, icache, stamps,
                                  np.int64(recs[k, 1]), np.int64(recs[k, 3]), nxt)
                i = j + 1
                continue
            # an event's delivery (or the end of this batch): at once
            _code_written(q, s, tbs, pages, htab, icache, stamps, np.int64(recs[i, 1]),
                          np.int64(recs[i, 3]), s[S_PREV_NEXT])
        elif kind == ITRACE_KIND_INSN:
            _insn(recs, i, q, s, tbs, pages, htab, jcache, icache, stamps)
        i += 1


@njit(inline="always")
def _insn(recs, i, q, s, tbs, pages, htab, jcache, icache, stamps):
    mode = np.int64(recs[i, 2])
    phys = np.int64(recs[i, 1])
    pc = np.int64(recs[i, 0])
    opw = np.int64(recs[i, 3])
    op = opw & 0xFF
    length = (opw >> 8) & 0xF
    reg = (opw >> 12) & 7
    imm = np.int64(recs[i, 4])
    nxt = np.int64(recs[i, 5])
    csbase = np.int64(recs[i, 6])
    end = END_OF_OP[op, reg] if op < END_OF_OP.shape[0] else END_STATE
    seq = s[S_PREV_NEXT] == pc
    _bx_insn(q, s, icache, stamps, seq, pc, phys, mode, length, end)
    _tb_insn(q, s, tbs, pages, htab, jcache, seq, pc, phys, np.int64(recs[i, 7]),
             mode & TB_FLAGS_MASK, csbase, length, imm, nxt, end)
    s[S_PREV_NEXT] = nxt
