"""The TLB model: a set-associative cache of linear-page translations (jitted).

Geometry comes from ``st[CFG_TLB_SETS]`` (a power of two) and ``st[CFG_TLB_WAYS]``;
the ``tlb`` array holds ``sets * ways`` entries of ``TLB_FIELDS`` int64 words, entry
``(set, way)`` at ``(set * ways + way) * TLB_FIELDS``. The face must size it exactly so
(the kernels trust it). A zero-filled array is an empty TLB.

One entry::

    word 0  TLB_TAG    linear page number (lin >> 12) + 1 + (VPID << 20); 0 = invalid way
    word 1  TLB_FRAME  physical frame number (pa >> 12) of that 4 KiB linear page
                       (host-physical in VMX non-root operation with EPT)
    word 2  TLB_FLAGS  TLBF_* bits below (same positions as in a PTE):
                       bit 1 RW, bit 2 US  - rights combined over PDE and PTE (SDM 4.6)
                       bit 6 D             - dirty flag of the final entry when cached
                       bit 7 LARGE         - the translation came from a 4 MiB PDE
                       bit 8 G             - global (only set when CR4.PGE was 1)
                       bit 9 EPT_NR        - EPT forbids reads of the page (VMX non-root
                                             with EPT: the entry caches the combined
                                             guest-linear -> host-physical translation)
                       bit 10 EPT_NX       - EPT forbids instruction fetches from it
                       (EPT forbidding writes, or an EPT dirty flag still to be set,
                       clears D instead: a write then walks, as for a clean page)
    word 3  TLB_LRU    stamp of last use: st[COUNTERS+C_TLB_HIT] + st[COUNTERS+C_TLB_MISS]
                       just after that access was counted (so it grows by one per
                       translation; no extra state slot). If the face ever resets the
                       counters, LRU order is only approximate until the old entries age
                       out - still deterministic, never wrong translations.

Simplification: a 4 MiB page is cached per 4 KiB linear page (one entry per 4 KiB slice
that was touched), where real processors keep one large-page entry. INVLPG still drops
every cached slice of a 4 MiB page (SDM Vol. 3A, 4.10.4.1: INVLPG invalidates the
entries for the page containing the address, whatever its size).

VPIDs (SDM Vol. 3C, 29.1 and 29.4): every entry is tagged with the VPID current when it
was made (``st[VPID]``: 0 in VMX root operation and in a guest without "enable VPID"),
in the tag's bits above the linear page number, and serves that VPID only. The set
index is the linear page's alone. The invalidations a guest or host makes itself (MOV
to CR3, CR0, CR4; INVLPG; a #PF) touch the current VPID's entries only (29.4.3.1:
"invalidate... mappings associated with the current VPID"); INVVPID and the VM
transitions without VPIDs say whose (:func:`tlb_flush_vpid`, :func:`tlb_invlpg_vpid`).

The hit rules (which cached entry may serve which access, what counts as a hit) live
in ``hvsim.mmu.paging`` (``_tlb_hit``, ``_translate_miss``); this module only stores,
replaces and invalidates entries. Kernels are compiled with ``_nrt=False`` (no array is
allocated; see paging.py for why).
"""
from hvsim._jit import njit
from hvsim.arch.layout import (TLB_FIELDS, CFG_TLB_SETS, CFG_TLB_WAYS, COUNTERS,
                              FETCH_LIN_PAGE, MASK32, VPID)
from hvsim.arch.counters import C_TLB_HIT, C_TLB_MISS, C_TLB_FLUSH, C_INVLPG
from hvsim.arch.pte import PTE_RW, PTE_US, PTE_D, PTE_PS, PTE_G

# fields of an entry
TLB_TAG = 0
TLB_FRAME = 1
TLB_FLAGS = 2
TLB_LRU = 3

# flag bits of an entry (PTE positions, SDM Vol. 3A Tables 4-5/4-6)
TLBF_RW = PTE_RW
TLBF_US = PTE_US
TLBF_D = PTE_D
TLBF_LARGE = PTE_PS
TLBF_G = PTE_G
# hvsim's own bits (ignored bits 9-10 of a PTE): EPT rights of a combined translation
# (hvsim/mmu/ept.py ept_datum); a fetch asks bit 10, any other access bit 9
TLBF_EPT_NR = 1 << 9
TLBF_EPT_NX = 1 << 10

# 4 MiB page = 2**10 linear 4 KiB pages
_LARGE_SHIFT = 10
# tag - 1 = VPID << 20 | linear page number (20 bits): 0 stays "invalid"
TAG_VPID_SHIFT = 20
_VPN_MASK = (1 << TAG_VPID_SHIFT) - 1


@njit(_nrt=False, inline="always")
def tlb_tag(st, vpn):
    """The tag of linear page ``vpn`` for the current VPID."""
    return vpn + 1 + (st[VPID] << TAG_VPID_SHIFT)


@njit(_nrt=False, inline="always")
def _tag_vpid(tag):
    """The VPID of a valid entry's tag."""
    return (tag - 1) >> TAG_VPID_SHIFT


@njit(_nrt=False)
def tlb_stamp(st):
    """The LRU clock: translations counted so far (hits + misses)."""
    return st[COUNTERS + C_TLB_HIT] + st[COUNTERS + C_TLB_MISS]


@njit(_nrt=False)
def tlb_fill(st, tlb, vpn, frame, flags):
    """Cache linear page ``vpn`` -> ``frame``; evict the least recently used way if full.

    Way choice: a way already tagged ``vpn`` (refresh), else the first invalid way,
    else the smallest stamp (ties: lowest way).
    """
    ways = st[CFG_TLB_WAYS]
    base = (vpn & (st[CFG_TLB_SETS] - 1)) * ways * TLB_FIELDS
    tag = tlb_tag(st, vpn)
    victim = -1
    for w in range(ways):                      # same page cached: refresh in place
        e = base + w * TLB_FIELDS
        if tlb[e + TLB_TAG] == tag:
            victim = e
            break
    if victim < 0:
        for w in range(ways):                  # a free way
            e = base + w * TLB_FIELDS
            if tlb[e + TLB_TAG] == 0:
                victim = e
                break
    if victim < 0:
        victim = base                          # least recently used
        for w in range(1, ways):
            e = base + w * TLB_FIELDS
            if tlb[e + TLB_LRU] < tlb[victim + TLB_LRU]:
                victim = e
    tlb[victim + TLB_TAG] = tag
    tlb[victim + TLB_FRAME] = frame
    tlb[victim + TLB_FLAGS] = flags
    tlb[victim + TLB_LRU] = tlb_stamp(st)


@njit(_nrt=False)
def tlb_drop_page(st, tlb, vpn):
    """Invalidate the current VPID's entry for linear page ``vpn`` (its set only); no
    counter."""
    ways = st[CFG_TLB_WAYS]
    e = (vpn & (st[CFG_TLB_SETS] - 1)) * ways * TLB_FIELDS
    tag = tlb_tag(st, vpn)
    for _ in range(ways):
        if tlb[e + TLB_TAG] == tag:
            tlb[e + TLB_TAG] = 0
        e += TLB_FIELDS


@njit(_nrt=False)
def tlb_flush(st, tlb, keep_global):
    """Invalidate the current VPID's entries; with ``keep_global`` = 1 keep the G ones.

    keep_global = 1 is MOV to CR3 with CR4.PGE = 1 (SDM Vol. 3A, 4.10.4.1);
    0 is a full flush (CR4.PGE toggled, CR0.PG changed...). The caller decides.
    """
    tlb_flush_vpid(st, tlb, st[VPID], keep_global)


@njit(_nrt=False)
def tlb_flush_vpid(st, tlb, vpid, keep_global):
    """Invalidate the entries of VPID ``vpid`` (-1: of every VPID but 0, INVVPID's
    all-context type); with ``keep_global`` = 1 keep the G ones."""
    st[COUNTERS + C_TLB_FLUSH] += 1
    st[FETCH_LIN_PAGE] = -1
    n = st[CFG_TLB_SETS] * st[CFG_TLB_WAYS]
    for i in range(n):
        e = i * TLB_FIELDS
        t = tlb[e + TLB_TAG]
        if t == 0:
            continue
        v = _tag_vpid(t)
        if (v == vpid or (vpid < 0 and v != 0)) and (
                keep_global == 0 or (tlb[e + TLB_FLAGS] & TLBF_G) == 0):
            tlb[e + TLB_TAG] = 0


@njit(_nrt=False)
def tlb_invlpg(st, tlb, lin):
    """INVLPG: drop the current VPID's translation of the page containing ``lin``,
    global or not.

    Scans the whole TLB because the cached 4 KiB slices of a 4 MiB page live in
    different sets (SDM Vol. 3A, 4.10.4.1).
    """
    st[COUNTERS + C_INVLPG] += 1
    tlb_invlpg_vpid(st, tlb, st[VPID], lin)


@njit(_nrt=False)
def tlb_invlpg_vpid(st, tlb, vpid, lin):
    """Drop VPID ``vpid``'s translation of the page containing ``lin`` (INVLPG for the
    current VPID, INVVPID's individual-address type for any); no counter."""
    st[FETCH_LIN_PAGE] = -1
    vpn = (lin & MASK32) >> 12
    big = vpn >> _LARGE_SHIFT
    n = st[CFG_TLB_SETS] * st[CFG_TLB_WAYS]
    for i in range(n):
        e = i * TLB_FIELDS
        t = tlb[e + TLB_TAG]
        if t == 0 or _tag_vpid(t) != vpid:
            continue
        page = (t - 1) & _VPN_MASK
        if page == vpn or ((tlb[e + TLB_FLAGS] & TLBF_LARGE) != 0
                           and (page >> _LARGE_SHIFT) == big):
            tlb[e + TLB_TAG] = 0
