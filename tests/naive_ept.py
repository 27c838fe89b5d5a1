"""Naive, obviously-correct reference of EPT and of the 2-D walk (plain Python, not jitted).

The oracle for hvsim/mmu/ept.py and the EPT hooks of hvsim/mmu/paging.py, written from
the Intel SDM Vol. 3C (082US numbering) independently of the kernels -- a loop over the
four levels with every field pulled out by bit number:

* :func:`naive_ept` follows 29.3.2 (the 4-level walk, 2 MiB PDEs), 29.3.3.1
  (misconfigurations: W without R, reserved bits incl. 51:32 for MAXPHYADDR = 32, bits
  7:3 of a non-leaf entry, 1 GiB PDPTEs unsupported, 2 MiB PDE bits 20:12, memory types
  2/3/7), 29.3.3.2 (violations: not present, or R/W/X not allowed by the AND over the
  entries) and 29.3.5 (A on every entry, D on the leaf for a write, when EPTP bit 6);
  the exit qualification is Table 28-7.
* :func:`naive_2d` is 32-bit guest paging (SDM Vol. 3A 4.3, 4.6, 4.7, 4.8) on top of it,
  in hvsim's documented order (hvsim/mmu/ept.py): each guest entry's EPT walk then its
  read; the guest's #PF checks; the EPT write checks of the guest A/D updates; the
  datum's EPT walk; then the guest A/D flags.

``memory`` is a bytearray; a read beyond ``mem_size`` is a bus error.
"""
from dataclasses import dataclass, field

# EPT entry bits, spelled out again on purpose (SDM 29.3.2)
R_BIT, W_BIT, X_BIT, LARGE_BIT, A_BIT, D_BIT = 0, 1, 2, 7, 8, 9
EPTP_AD_BIT = 6
# Table 28-7
Q_READ, Q_WRITE, Q_FETCH, Q_GLA_VALID, Q_FINAL = 1, 2, 4, 1 << 7, 1 << 8
# guest 32-bit paging (SDM Vol. 3A Tables 4-5/4-6, Figure 4-12)
P_BIT, RW_BIT, US_BIT, GA_BIT, GD_BIT, PS_BIT = 0, 1, 2, 5, 6, 7
EC_P, EC_W, EC_U, EC_RSVD = 1, 2, 4, 8
CR0_WP_BIT, CR4_PSE_BIT = 16, 4
# hvsim access kinds (hvsim/arch/pte.py)
WRITE, USER, FETCH = 1, 2, 4


def bit(v, n):
    return (v >> n) & 1


def bits(v, hi, lo):
    return (v >> lo) & ((1 << (hi - lo + 1)) - 1)


def read(memory, mem_size, addr, n):
    if addr < 0 or addr + n > mem_size:
        return None
    return int.from_bytes(bytes(memory[addr:addr + n]), "little")


def write(memory, addr, value, n):
    memory[addr:addr + n] = value.to_bytes(n, "little")


@dataclass
class Ept:
    hpa: int | None = None
    rights: int = 0           # R | W<<1 | X<<2, ANDed
    dirty: int = 1            # a later write needs no walk for the EPT D flag
    exit: tuple | None = None  # ('violation', qual, gpa, gla) / ('misconfig', gpa)
    bus: int | None = None
    refs: int = 0


def naive_ept(memory, mem_size, eptp, gpa, kind, gla, final):
    """One EPT walk for an access of ``kind`` (Q_READ/Q_WRITE/Q_FETCH bits)."""
    out = Ept()
    table = bits(eptp, 31, 12) << 12
    rights = 7
    used = []
    for level, shift in enumerate((39, 30, 21, 12)):
        addr = table + 8 * bits(gpa, shift + 8, shift)
        out.refs += 1
        e = read(memory, mem_size, addr, 8)
        if e is None:
            out.bus = addr
            return out
        rights &= bits(e, 2, 0)
        if bits(e, 2, 0) == 0:                                  # not present
            out.exit = ("violation", _qual(kind, rights, final), gpa, gla)
            return out
        leaf = level == 3 or (level == 2 and bit(e, LARGE_BIT))
        bad = (bit(e, W_BIT) and not bit(e, R_BIT)) or bits(e, 51, 32) != 0
        if not leaf:
            bad = bad or bits(e, 7, 3) != 0
        else:
            bad = bad or bits(e, 5, 3) in (2, 3, 7)
            if level == 2:
                bad = bad or bits(e, 20, 12) != 0
        if bad:
            out.exit = ("misconfig", gpa)
            return out
        used.append((addr, e))
        if leaf:
            if level == 2:
                out.hpa = (bits(e, 31, 21) << 21) | bits(gpa, 20, 0)
            else:
                out.hpa = (bits(e, 31, 12) << 12) | bits(gpa, 11, 0)
            break
        table = bits(e, 31, 12) << 12
    need = kind & 7
    if need & ~rights:
        out.hpa = None
        out.exit = ("violation", _qual(kind, rights, final), gpa, gla)
        return out
    out.rights = rights
    if bit(eptp, EPTP_AD_BIT):
        for i, (addr, e) in enumerate(used):
            new = e | (1 << A_BIT)
            if i == len(used) - 1 and kind & Q_WRITE:
                new |= 1 << D_BIT
            if new != e:
                write(memory, addr, new, 8)
            if i == len(used) - 1:
                out.dirty = bit(new, D_BIT)
    return out


def _qual(kind, rights, final):
    return (kind & 7) | (rights << 3) | Q_GLA_VALID | (Q_FINAL if final else 0)


@dataclass
class Walk2D:
    hpa: int | None = None
    pf: int | None = None          # #PF error code
    exit: tuple | None = None
    bus: int | None = None
    guest_refs: int = 0
    ept_refs: int = 0
    ept_walks: int = 0
    ept_rights: int = 0            # of the datum
    events: list = field(default_factory=list)


def naive_2d(memory, mem_size, cr0, cr3, cr4, eptp, lin, acc):
    """Translate linear ``lin`` for hvsim access kind ``acc`` through guest paging and EPT."""
    w = Walk2D()
    ad = bit(eptp, EPTP_AD_BIT)
    entry_kind = Q_READ | (Q_WRITE if ad else 0)      # 29.3.3.2 / 29.3.5
    is_write, is_user = bool(acc & WRITE), bool(acc & USER)
    ec = (EC_W if is_write else 0) | (EC_U if is_user else 0)

    def ept(gpa, kind, final):
        r = naive_ept(memory, mem_size, eptp, gpa, kind, lin, final)
        w.ept_walks += 1
        w.ept_refs += r.refs
        if r.exit is not None:
            w.exit = r.exit
        elif r.bus is not None:
            w.bus = r.bus
        return r

    entries = []                                      # (gpa, hpa, value, ept rights)
    gpa = (bits(cr3, 31, 12) << 12) | (bits(lin, 31, 22) << 2)
    levels = 0
    while True:
        r = ept(gpa, entry_kind, 0)
        if r.hpa is None:
            return w
        value = read(memory, mem_size, r.hpa, 4)
        w.guest_refs += 1
        if value is None:
            w.bus = r.hpa
            return w
        if not bit(value, P_BIT):
            w.pf = ec
            return w
        entries.append((gpa, r.hpa, value, r.rights))
        levels += 1
        if levels == 1 and bit(value, PS_BIT) and bit(cr4, CR4_PSE_BIT):
            if bits(value, 21, 13):
                w.pf = ec | EC_P | EC_RSVD
                return w
            datum = (bits(value, 31, 22) << 22) | bits(lin, 21, 0)
            break
        if levels == 2:
            datum = (bits(value, 31, 12) << 12) | bits(lin, 11, 0)
            break
        gpa = (bits(value, 31, 12) << 12) | (bits(lin, 21, 12) << 2)
    user_ok = all(bit(v, US_BIT) for _, _, v, _ in entries)
    write_ok = all(bit(v, RW_BIT) for _, _, v, _ in entries)
    if (is_user and not user_ok) or (is_write and not write_ok and (is_user or bit(cr0, CR0_WP_BIT))):
        w.pf = ec | EC_P
        return w
    updates = []
    for i, (gpa_e, hpa_e, v, rights_e) in enumerate(entries):
        new = v | (1 << GA_BIT)
        if is_write and i == len(entries) - 1:
            new |= 1 << GD_BIT
        if new != v:
            if not rights_e & 2:                     # the A/D write is a data write
                w.exit = ("violation", _qual(Q_WRITE, rights_e, False), gpa_e, lin)
                return w
            updates.append((hpa_e, new))
    kind = Q_FETCH if acc & FETCH else (Q_WRITE if is_write else Q_READ)
    r = ept(datum, kind, 1)
    if r.hpa is None:
        return w
    for hpa_e, new in updates:
        write(memory, hpa_e, new, 4)
    w.hpa = r.hpa
    w.ept_rights = r.rights
    return w
