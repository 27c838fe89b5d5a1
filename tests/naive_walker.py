"""Naive, obviously-correct reference of 32-bit paging and of the TLB (plain Python, not jitted).

The oracle for hvsim/mmu/paging.py and hvsim/mmu/tlb.py. Written from the Intel SDM
Vol. 3A, chapter 4, step by step and independently of the kernels:

* :func:`naive_walk` follows 4.3 (32-bit paging: CR3 -> PDE -> PTE or 4 MiB page),
  4.6 (access rights, combined over both levels), 4.7 (the #PF error code) and 4.8
  (accessed and dirty flags). It mutates ``memory`` the way the processor would:
  A on every entry used and D on the final entry for a write - only when the access is
  allowed (hvsim's documented choice, as Bochs).
* :class:`NaiveTLB` is an LRU cache per set, with hvsim's documented rules: a hit must
  allow the access (and, for a write, have D set), else the entry is dropped and the
  access walks; a page fault drops the entry of its page.

``memory`` is anything indexable by byte address (a ``bytearray``, a numpy uint8 array,
or a ``dict`` with missing bytes reading as 0) plus ``mem_size``; an entry read beyond
``mem_size`` is a bus error.
"""
from collections import OrderedDict
from dataclasses import dataclass

# SDM Vol. 3A, Table 4-5/4-6 bit positions, spelled out again on purpose
P_BIT, RW_BIT, US_BIT, A_BIT, D_BIT, PS_BIT, G_BIT = 0, 1, 2, 5, 6, 7, 8
# Figure 4-12
EC_P, EC_W, EC_U, EC_RSVD = 1, 2, 4, 8
CR0_PG_BIT, CR0_WP_BIT = 31, 16
CR4_PSE_BIT, CR4_PGE_BIT = 4, 7
# hvsim access kinds (hvsim/arch/pte.py)
WRITE, USER, FETCH = 1, 2, 4


def bit(value, n):
    return (value >> n) & 1


@dataclass
class NaiveWalk:
    pa: int | None = None          # physical address when the access is allowed
    error: int | None = None       # #PF error code when it faults
    bus_error: int | None = None   # physical address of an entry outside memory
    pde_addr: int | None = None
    pte_addr: int | None = None
    refs: int = 0                  # paging-structure reads made
    size: int = 0                  # 4096 or 4 MiB when translated
    user_ok: int = 0               # combined U/S
    write_ok: int = 0              # combined R/W
    dirty: int = 0                 # D of the final entry after the access
    global_: int = 0               # G honoured (needs CR4.PGE)


def _get(memory, addr):
    if isinstance(memory, dict):
        return memory.get(addr, 0)
    return int(memory[addr])


def _read_entry(memory, mem_size, addr):
    if addr + 4 > mem_size:
        return None
    return sum(_get(memory, addr + i) << (8 * i) for i in range(4))


def _write_entry(memory, addr, value):
    for i in range(4):
        memory[addr + i] = (value >> (8 * i)) & 0xFF


def naive_walk(memory, mem_size, cr0, cr3, cr4, lin, acc):
    """Translate ``lin`` for access kind ``acc`` with paging as configured; see module doc."""
    lin = lin % 2**32
    w = NaiveWalk()
    if not bit(cr0, CR0_PG_BIT):
        w.pa = lin
        return w
    is_write = bool(acc & WRITE)
    is_user = bool(acc & USER)
    base_error = (EC_W if is_write else 0) + (EC_U if is_user else 0)

    directory = (cr3 >> 12) << 12
    pde_index = lin // 2**22
    w.pde_addr = directory + 4 * pde_index
    pde = _read_entry(memory, mem_size, w.pde_addr)
    w.refs = 1
    if pde is None:
        w.bus_error = w.pde_addr
        return w
    if not bit(pde, P_BIT):
        w.error = base_error
        return w

    if bit(pde, PS_BIT) and bit(cr4, CR4_PSE_BIT):
        # 4 MiB page; PDE bits 21..13 must be zero
        if any(bit(pde, n) for n in range(13, 22)):
            w.error = base_error + EC_P + EC_RSVD
            return w
        entries = [(w.pde_addr, pde)]
        final = pde
        w.size = 4 * 2**20
        pa = (pde >> 22) * 2**22 + lin % 2**22
    else:
        table = (pde >> 12) << 12
        w.pte_addr = table + 4 * ((lin >> 12) % 1024)
        pte = _read_entry(memory, mem_size, w.pte_addr)
        w.refs = 2
        if pte is None:
            w.bus_error = w.pte_addr
            return w
        if not bit(pte, P_BIT):
            w.error = base_error
            return w
        entries = [(w.pde_addr, pde), (w.pte_addr, pte)]
        final = pte
        w.size = 4096
        pa = (pte >> 12) * 4096 + lin % 4096

    # SDM 4.6: rights are the AND over every entry used
    user_ok = all(bit(e, US_BIT) for _, e in entries)
    write_ok = all(bit(e, RW_BIT) for _, e in entries)
    if is_user and not user_ok:
        w.error = base_error + EC_P
        return w
    if is_write and not write_ok:
        if is_user or bit(cr0, CR0_WP_BIT):
            w.error = base_error + EC_P
            return w

    # SDM 4.8: accessed flags on every entry used, dirty on the final one for a write
    for i, (addr, e) in enumerate(entries):
        new = e | (1 << A_BIT)
        if is_write and i == len(entries) - 1:
            new |= 1 << D_BIT
        if new != e:
            _write_entry(memory, addr, new)
        if i == len(entries) - 1:
            final = new
    w.pa = pa
    w.user_ok, w.write_ok = int(user_ok), int(write_ok)
    w.dirty = bit(final, D_BIT)
    w.global_ = bit(final, G_BIT) & bit(cr4, CR4_PGE_BIT)
    return w


def allowed_by_entry(user_ok, write_ok, dirty, cr0, acc):
    """Would a cached translation with these rights serve this access without a walk?"""
    if acc & USER and not user_ok:
        return False
    if acc & WRITE:
        if not write_ok and (acc & USER or bit(cr0, CR0_WP_BIT)):
            return False
        if not dirty:
            return False
    return True


class NaiveTLB:
    """``sets`` LRU-ordered dicts {linear page: (frame, user_ok, write_ok, dirty, global)}.

    ``ways = 0`` models a disabled TLB (every translation is a miss and walks).
    """

    def __init__(self, sets, ways):
        self.sets, self.ways = sets, ways
        self.lines = [OrderedDict() for _ in range(sets)]
        self.hits = self.misses = self.walks = self.refs = 0

    def translate(self, memory, mem_size, cr0, cr3, cr4, lin, acc):
        """Return the NaiveWalk-like outcome (pa / error / bus_error) of one access."""
        lin = lin % 2**32
        if not bit(cr0, CR0_PG_BIT):
            return NaiveWalk(pa=lin)
        page = lin >> 12
        line = self.lines[page % self.sets]
        if page in line:
            frame, user_ok, write_ok, dirty, _ = line[page]
            if allowed_by_entry(user_ok, write_ok, dirty, cr0, acc):
                self.hits += 1
                line.move_to_end(page)
                return NaiveWalk(pa=frame * 4096 + lin % 4096)
            del line[page]
        self.misses += 1
        self.walks += 1
        w = naive_walk(memory, mem_size, cr0, cr3, cr4, lin, acc)
        self.refs += w.refs
        if w.pa is None:
            line.pop(page, None)
            return w
        if self.ways == 0:          # no TLB: every access walks
            return w
        if len(line) >= self.ways:
            line.popitem(last=False)
        line[page] = (w.pa >> 12, w.user_ok, w.write_ok, w.dirty, w.global_)
        return w
