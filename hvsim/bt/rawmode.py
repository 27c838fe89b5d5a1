"""VirtualBox's raw mode (2007-2019): ring compression, CSAM and PATM, as a monitor (Python).

Before VT-x, VirtualBox ran the guest kernel's own code **in place** at ring 1 ("ring
compression") and guest user code directly at ring 3; the VirtualBox manual (ch. 10,
"Details about software virtualization") names the two managers that made that safe:
CSAM, the Code Scanning and Analysis Manager, which "scans [ring-0 code] recursively to
discover problematic instructions", and PATM, the Patch Manager, which "performs in-situ
patching, i.e. replaces the instruction with a jump to hypervisor memory where an
integrated code generator has placed a more suitable implementation".

:class:`RawMode` is that monitor on hvsim's machine. It reuses the binary translator's
infrastructure (hvsim/bt/monitor.py: the monitor's hole at HOLE_BASE with the VCPU page
reached through GS, truncated guest segments, shadow paging from boot, code traces, the
callouts, the mapping of faults in generated code back to the guest EIP) and the
replacement sequences of hvsim/bt/replacements.py; what differs:

* **no translation cache**: the guest kernel's code runs where it is, at real ring 1;
  the TC pages of the hole are **patch memory** (VirtualBox: PATCH_MEMORY_SIZE, 2 MiB;
  hvsim: ``patch_pages`` pages, 256 KiB by default);
* **the scanner** (CSAM): from every entry into ring-1 code the monitor knows of (the boot
  entry, every handler it reflects or injects into, every ring-1 resume target of a
  callout, of an emulated instruction or IRET), the code is decoded recursively --
  fall-through, both ways of a Jcc, JMP/CALL rel targets, CALL's return site; RET, IRET,
  indirect and far transfers end a path -- and every instruction and branch target is
  recorded, by page. A direct branch whose target cannot be read at scan time (not
  mapped, in the monitor's hole) is patched like a sensitive instruction, so that the
  monitor sees where it goes;
* **privileged instructions keep trapping** (MOV CR, LGDT, HLT, IN/OUT, INT n...: they
  fault at ring 1 and trap-and-emulate's handlers emulate them); the **sensitive ones that
  do not trap** -- PUSHF/POPF, IRET, SGDT/SIDT/SLDT/STR/SMSW, LAR/LSL/VERR/VERW, MOV from
  and PUSH of a segment register, far transfers -- and CLI/STI (so that the virtual IF
  lives in the VCPU page, PATMGCSTATE.uVMFlags in VirtualBox), and indirect JMP/CALL (so
  that the monitor scans their target before it runs) are **patched** (PATM):
  the first 5 bytes at the site become a JMP rel32 (SIZEOF_NEARJUMP32 = 5) into patch
  code = the replacement (the in-TC sequence of replacements.py, or a callout that makes
  the monitor run the original instruction) + the whole instructions the jump displaced,
  copied + a JMP back. The jump patch is **refused** -- and the site gets an **INT3
  replacement** instead (PATMFL_INT3_REPLACEMENT: its first byte becomes 0xCC; the #BP
  from ring 1 at a known site makes the monitor run the original instruction) -- when the
  patched bytes would cross a page (VirtualBox's StatPageBoundaryCrossed; hvsim asks the
  whole displaced instructions to stay in the page), when a known branch target lies in
  the displaced bytes, when a displaced instruction is control flow, sensitive or not a
  scanned instruction, or when patch memory is full. A branch target found later inside
  a jump patch turns that patch into an INT3 replacement;
* **faults and interrupts in patch code** are reported at the guest EIP of the
  instruction the patch code stands for; an interrupt is injected only at a boundary of
  patch code (PATM's fPIF); a guest EIP inside patched bytes (a return from an
  interrupt taken in the displaced copy) resumes at its copy in patch code;
* **self-modifying code**: scanned frames are write-traced; a write that touches a
  scanned instruction or patched bytes takes that page's patches out (the original bytes
  back, except the ones the guest just wrote), forgets its scan and rescans it at once
  from its known entries; a write beside the code (data) just completes.

The guest reads its own patched bytes as they are (a JMP or an INT3): VirtualBox hid the
original bytes only from its own disassembler (PATMREAD_ORGCODE), not from the guest;
:meth:`RawMode.original_bytes` is the monitor's accessor for them. The workload
harnesses compare registers, results, tables, faults and console, not code bytes, so the
patches neither make the comparison fail nor hide a difference.

Simplifications, each deliberate: no "duplicate function" or trampoline patches
(PATMFL_DUPLICATE_FUNCTION); no patches of guest IDT handlers as such; RET is not patched
(a return site is a CALL's, scanned with it; a guest that RETs to an address it pushed
itself runs it unscanned, and a RET to an address in patch memory is not caught: the
ring-1 code segment spans the hole, as BT's must -- every other way there is: direct
targets when scanned, indirect ones when looked up, handlers, IRET and far transfers
when emulated, data accesses by the truncated segments, or refused when they go through
CS); code reached only through a mapping that changed under a
linear page the monitor scanned is rescanned from that page's known entries, but a page
never entered through the monitor and only reached by a direct branch scanned while it
was not mapped goes through the patched branch (the monitor sees it); guest RAM code
aliased at two linear addresses keeps the patches of the first (the jump's rel32 is
linear). Adaptive translation is BT's and is off here. As under BT, a guest kernel that
sets EFLAGS.TF at ring 1 (single-stepping itself) is killed with that reason.

>>> from hvsim.guests import teaching_kernel
>>> rm = RawMode(program=teaching_kernel())
>>> rm.run(60_000).kind
'budget'
>>> rm.console
'kernel up\\nhello from ring 3\\n'
>>> rm.vcpu.IF, rm.ticks_delivered > 20
(1, True)
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Optional

import numpy as np

from hvsim.arch.vectors import BP
from hvsim.asm.disassembler import disassemble_one
from hvsim.bt import replacements as R
from hvsim.bt.monitor import TC_BASE, TU, BinaryTranslator, BTSnapshot, _in_the_hole
from hvsim.bt.translator import CALLOUT, CHAIN, IDENT, INLINE, TranslationFault, _Emitter
from hvsim.machine import Event, Machine
from hvsim.mmu.shadow import HOLE_BASE, GuestPageFault, ShadowError
from hvsim.monitors.base import Kill
from hvsim.monitors.trap_and_emulate import GUEST_RING

__all__ = ["RawMode", "Patch", "SIZEOF_NEARJUMP32", "DEFAULT_PATCH_PAGES", "TRAPPING",
           "REFUSALS"]

PAGE = 4096
MASK32 = 0xFFFFFFFF
MAX_INSN_LEN = 15                     # SDM Vol. 2A, 2.3.11
#: the size of the jump a patch writes in place (JMP rel32, E9 cd; VirtualBox's
#: SIZEOF_NEARJUMP32)
SIZEOF_NEARJUMP32 = 5
INT3 = 0xCC                           # INT3 (SDM Vol. 2A, INT n/INTO/INT3)
#: patch memory in 4 KiB pages (256 KiB; VirtualBox's PATCH_MEMORY_SIZE is 2 MiB)
DEFAULT_PATCH_PAGES = 64
MAX_PATCH_PAGES = 1022
#: sensitive instructions that fault at ring 1 anyway (privileged, SDM Vol. 3A 5.9; I/O
#: with IOPL 0, SDM Vol. 1 19.5.1; the vectors, which leave run() to the monitor): they
#: stay in place and trap-and-emulate emulates them
TRAPPING = frozenset({"hlt", "in", "out", "lidt", "lgdt", "lldt", "ltr", "lmsw", "clts",
                      "mov cr", "mov dr", "invlpg", "invd", "wbinvd", "rdmsr", "wrmsr",
                      "int", "int3", "into", "ud2", "(bad)", "vmcall", "vmlaunch",
                      "vmresume", "vmxoff", "vmxon", "vmclear", "vmptrld", "vmptrst",
                      "vmread", "vmwrite", "invept", "invvpid"})
#: why a jump patch was refused (an INT3 replacement instead)
REFUSALS = ("page", "branch target", "control flow", "sensitive", "not code",
            "patch memory full")
_JCC_SHORT = range(0x70, 0x80)
#: instructions one scan may find before the monitor calls it runaway code
MAX_SCAN = 65536
_FLOW = frozenset({"jmp", "call", "ret", "retf", "iretd", "loop", "loope", "loopne",
                   "jecxz", "ljmp", "lcall", "int", "int3", "into", "hlt", "ud2"})


@dataclasses.dataclass
class _Insn:
    """A scanned guest instruction."""
    eip: int
    length: int
    raw: bytes
    text: str
    key: str            # its SENSITIVE key or mnemonic
    need: Optional[str]  # 'inline', 'simulate', 'indirect', 'refused' (patch), 'trap', None
    flow: bool          # control flow (a branch, call, return, interrupt, halt)
    frames: tuple       # guest frames of its bytes


@dataclasses.dataclass
class Patch:
    """One patched site: ``site`` (guest linear EIP), ``how`` ('jump' or 'int3'),
    ``kind`` (the replacement: 'inline', 'simulate', 'indirect', 'refused'), ``end`` (the
    guest EIP after the bytes it covers: the JMP back's target), ``original`` and
    ``written`` (the bytes at ``site`` before and after), ``frame`` (the guest frame),
    ``tu`` (its patch code, a TU of the TC's kind; None for INT3), ``reason`` (why a
    jump was refused), ``displaced`` (guest EIPs of the copied instructions)."""
    site: int
    how: str
    kind: str
    end: int
    original: bytes
    written: bytes
    frame: int
    tu: Optional[TU] = None
    reason: Optional[str] = None
    displaced: tuple = ()


@dataclasses.dataclass(frozen=True)
class RawSnapshot:
    """A binary-translator snapshot (patch memory is in the machine's memory) plus the
    scanner's and patch manager's bookkeeping."""
    base: BTSnapshot
    raw: dict


class RawMode(BinaryTranslator):
    """Run a guest kernel in VirtualBox's raw mode: in place at ring 1, scanned and patched.

    Parameters
    ----------
    machine : a Machine (a fresh one with 1 MiB of guest RAM if None): its top pages are
              the monitor's (trap-and-emulate's, the VCPU page, patch memory).
    program : the guest kernel (entry = label ``start``), scanned and entered at ring 1;
              None: :meth:`boot` it yourself.
    patch_pages : patch memory in 4 KiB pages (1..1022); when it is full, further sites
              get INT3 replacements (counted as refusals 'patch memory full').
    """
    name = "rawmode"

    def __init__(self, machine: Optional[Machine] = None, program=None, *,
                 patch_pages: int = DEFAULT_PATCH_PAGES):
        if isinstance(patch_pages, bool) or not isinstance(patch_pages, int) \
                or not 1 <= patch_pages <= MAX_PATCH_PAGES:
            raise ValueError(f"patch_pages must be an int from 1 to {MAX_PATCH_PAGES}, "
                             f"got {patch_pages!r}")
        self._reset_raw()
        super().__init__(machine, None, tc_pages=patch_pages)
        if program is not None:
            self.boot(program)

    def _reset_raw(self) -> None:
        self._insn: dict = {}                 # guest EIP -> _Insn (scanned)
        self._by_frame_insn = collections.defaultdict(set)   # frame -> scanned EIPs
        self._page_insn = collections.defaultdict(set)       # linear page -> scanned EIPs
        self._page_frame: dict = {}           # linear page -> frame when scanned
        self._targets: set = set()            # branch targets and entries (linear)
        self._patches: dict = {}              # site -> Patch (installed)
        self._frame_patches = collections.defaultdict(set)   # frame -> sites
        self._displaced: dict = {}            # guest EIP of a displaced insn -> its copy
        self.raw_counts = dict(scans=0, scanned=0, jump_patches=0, int3_replacements=0,
                               converted=0, smc_unpatches=0, rescans=0,
                               mapping_unpatches=0, int3_emulated=0)
        self.refusals = collections.Counter()

    # ---- reading guest code -------------------------------------------------------------
    def _read_page_part(self, lin: int, n: int):
        """(bytes, frame) of up to ``n`` guest bytes at linear ``lin`` within its page,
        the patched bytes shown as the originals; raises GuestPageFault. A look with no
        side effect: scanning ahead sets no A flag the guest's own run would not (its
        fetches set them when the code runs)."""
        f = self.shadow.guest_frame(lin)      # no side effect: no A flag set
        if f is None or (f + 1) << 12 > self.ram:
            raise GuestPageFault(lin, 0, f"code at {lin:#x} is not mapped to guest RAM")
        gpa = (f << 12) | (lin & 0xFFF)
        n = min(n, PAGE - (lin & 0xFFF))
        data = bytearray(self.machine._raw_mem[gpa:gpa + n].tobytes())
        for site in self._frame_patches.get(f, ()):
            p = self._patches[site]
            for i, b in enumerate(p.original):
                k = site + i - lin
                if 0 <= k < n:
                    data[k] = b
        return bytes(data), f

    def original_bytes(self, lin: int, n: int) -> bytes:
        """The guest's code bytes at linear ``lin`` as they were before any patch (what
        PATMREAD_ORGCODE gave VirtualBox's own disassembler); the guest itself reads the
        patched bytes. Raises ValueError for an unmapped address or a bad length."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 1 << 16:
            raise ValueError(f"n must be an int from 0 to 65536, got {n!r}")
        if isinstance(lin, bool) or not isinstance(lin, int) or not 0 <= lin <= MASK32:
            raise ValueError(f"lin must be a 32-bit linear address, got {lin!r}")
        out = bytearray()
        while len(out) < n:
            try:
                part, _ = self._read_page_part(lin + len(out), n - len(out))
            except (GuestPageFault, ShadowError) as e:
                raise ValueError(f"cannot read guest code at {lin + len(out):#x}: {e}") from None
            out += part
        return bytes(out)

    def _fetch(self, pc: int):
        """(bytes, frames) of the instruction bytes at ``pc`` (up to 15, the next page's
        too when they run into it), or None if ``pc`` itself cannot be read."""
        try:
            data, f = self._read_page_part(pc, MAX_INSN_LEN)
        except (GuestPageFault, Kill):
            return None
        frames = (f,)
        if len(data) < MAX_INSN_LEN and ((pc + len(data)) & MASK32) == ((pc | 0xFFF) + 1) \
                and pc + len(data) < HOLE_BASE:
            try:
                more, f2 = self._read_page_part(pc + len(data), MAX_INSN_LEN - len(data))
                data += more
                frames = (f, f2)
            except (GuestPageFault, Kill):
                pass
        return data, frames

    # ---- the scanner (CSAM) ---------------------------------------------------------------
    def _classify(self, insn, raw: bytes, pc: int):
        """(key, need, flow, targets, falls) of one decoded instruction."""
        key = insn.mnemonic.replace("rep ", "")
        skey, how = R.treatment("(bad)" if insn.bad else key, raw, insn)
        nxt = (pc + insn.size) & MASK32
        pre, body = R.split_prefixes(raw)
        op = body[0] if body else 0
        flow = key in _FLOW or skey in ("jmp far", "call far") or insn.bad
        targets, falls = [], True
        need = None
        if how == R.REFUSED:
            need = "refused"
        elif skey in TRAPPING:
            need = "trap"
        elif how == R.INLINE:
            need = "inline"
        elif how == R.CALLOUT:
            need = "simulate"
        if insn.bad or need == "trap":
            # a trapping instruction ends a path: the monitor emulates it and resumes the
            # guest through _goto, which scans what follows then
            falls = False
        elif key == "jmp" and op in (0xEB, 0xE9):
            targets, falls = [(nxt + _rel(body, 1 if op == 0xEB else 4)) & MASK32], False
        elif op in _JCC_SHORT or (op == 0x0F and len(body) > 1 and 0x80 <= body[1] <= 0x8F):
            flow = True
            targets = [(nxt + _rel(body, 1 if op in _JCC_SHORT else 4)) & MASK32]
        elif key in ("loop", "loope", "loopne", "jecxz"):
            targets = [(nxt + _rel(body, 1)) & MASK32]
        elif key == "call" and op == 0xE8:
            targets = [(nxt + _rel(body, 4)) & MASK32]
        elif key == "ret" or skey in ("iretd", "retf", "ljmp", "jmp far"):
            falls = False
        elif op == 0xFF and key in ("jmp", "call") and len(body) > 1 and need is None:
            need = "simulate" if 0x66 in pre else "indirect"
            falls = key == "call"
        return skey, need, flow, targets, falls

    def scan(self, entry: int) -> int:
        """Scan the guest code reachable from linear ``entry`` (recursively, as CSAM does)
        and patch what needs it; the number of instructions newly scanned. Raises
        TranslationFault when ``entry`` itself cannot be fetched."""
        entry &= MASK32
        if entry in self._insn:
            return 0
        new: dict = {}
        unseen_targets: set = set()
        work = [entry]
        call_sites = []
        while work:
            pc = work.pop()
            while pc not in self._insn and pc not in new:
                if pc >= HOLE_BASE:
                    unseen_targets.add(pc)
                    break
                got = self._fetch(pc)
                if got is None:
                    if pc == entry and not new:
                        try:
                            self.shadow.translate(pc, False, False)
                        except GuestPageFault as e:
                            raise TranslationFault(pc, e.error_code, str(e)) from None
                        raise Kill(f"the guest kernel runs code at {pc:#010x}, beyond its "
                                   f"{self.ram:#x} bytes of RAM")
                    unseen_targets.add(pc)
                    break
                data, frames = got
                if len(new) >= MAX_SCAN:
                    raise Kill(f"the scan from {entry:#010x} found more than {MAX_SCAN} "
                               "instructions: runaway code (zeros decode as ADD)?")
                insn = disassemble_one(data, 0, pc)
                raw = bytes(insn.bytes)
                skey, need, flow, targets, falls = self._classify(insn, raw, pc)
                n = insn.size
                used = frames if (pc & 0xFFF) + n > PAGE else frames[:1]
                new[pc] = _Insn(pc, n, raw, str(insn), skey, need, flow, used)
                for t in targets:
                    self._targets.add(t)
                    work.append(t)
                if insn.mnemonic == "call" and falls:
                    call_sites.append((pc + n) & MASK32)
                if not falls:
                    break
                pc = (pc + n) & MASK32
        self._targets.add(entry)
        self._targets.update(call_sites)
        # a direct branch whose target could not be scanned is patched: the monitor sees
        # where it goes (and scans it, or reflects the fetch's #PF, or refuses the hole)
        for ins in new.values():
            if ins.need is None and ins.flow:
                _, _, _, targets, _ = self._classify(
                    disassemble_one(ins.raw, 0, ins.eip), ins.raw, ins.eip)
                if any(t in unseen_targets for t in targets):
                    ins.need = "simulate"
        for eip, ins in new.items():
            self._insn[eip] = ins
            page = eip & ~0xFFF
            self._page_insn[page].add(eip)
            self._page_frame.setdefault(page, ins.frames[0])
            for f in ins.frames:
                self._by_frame_insn[f].add(eip)
                if f not in self._by_frame:
                    self._by_frame[f] = set()
                    self.shadow.trace_code(f)
        c = self.raw_counts
        c["scans"] += 1
        c["scanned"] += len(new)
        # targets now known inside existing jump patches: those become INT3 replacements
        for site, p in list(self._patches.items()):
            if p.how == "jump" and any(site < t < p.end for t in self._targets):
                self._convert(p)
        for eip in sorted(new):
            ins = new[eip]
            if ins.need not in (None, "trap") and eip not in self._patches:
                self._patch_site(ins)
        return len(new)

    # ---- the patch manager (PATM) -----------------------------------------------------------
    def _displacement(self, ins: _Insn):
        """(displaced instructions, end) for a jump patch at ``ins``, or (None, reason)."""
        site = ins.eip
        if (site & 0xFFF) + SIZEOF_NEARJUMP32 > PAGE:
            return None, "page"
        out = []
        end = (site + ins.length) & MASK32
        while end - site < SIZEOF_NEARJUMP32:
            d = self._insn.get(end)
            if d is None or end in self._patches:
                return None, "not code"
            if d.flow:
                return None, "control flow"
            if d.need is not None:
                return None, "sensitive"
            out.append(d)
            end = (end + d.length) & MASK32
        if (site & 0xFFF) + (end - site) > PAGE:
            return None, "page"
        if any(site < t < end for t in self._targets):
            return None, "branch target"
        for other, p in self._patches.items():
            if other < end and site < p.site + len(p.original):
                return None, "not code"
        return out, end

    def _patch_site(self, ins: _Insn) -> None:
        displaced, end = self._displacement(ins)
        if displaced is None:
            self._int3(ins, end)
            return
        code, rows_of = self._patch_code(ins, displaced, end)
        if code is None:
            self._int3(ins, "patch memory full")
            return
        tc, em = code
        self._install_jump(ins, displaced, end, tc, em)

    def _patch_code(self, ins: _Insn, displaced: list, end: int):
        em = _Emitter()
        kind = ins.need
        if kind == "inline":
            em.sequence(R.inline_sequence(ins.key), ins.eip, ins.length, INLINE, ins.key)
        elif kind == "indirect":
            pre, body = R.split_prefixes(ins.raw)
            seg = bytes(b for b in pre if b != 0x66)
            ret = (ins.eip + ins.length) & MASK32 if ins.key == "call" else None
            em.sequence(R.indirect_sequence(seg, body[1:], ret), ins.eip, ins.length, CHAIN,
                        ins.key)
        else:
            em.put(R.callout(), ins.eip, ins.length, True, CALLOUT, kind, ins.key)
        for d in displaced:
            em.put(d.raw, d.eip, d.length, True, IDENT, None, d.key)
        back = em.put(R.jmp_rel32(0), end, 0, True, CHAIN, None, "jmp back")
        size = len(em.code)
        if self._tc_used + size > self.tc_bytes:
            return None, None
        tc = TC_BASE + self._tc_used
        rel = (end - (tc + back + 5)) & MASK32
        em.code[back + 1:back + 5] = rel.to_bytes(4, "little")
        return (tc, em), None

    def _install_jump(self, ins: _Insn, displaced: list, end: int, tc: int, em) -> None:
        m = self.machine
        size = len(em.code)
        self._tc_used += size
        m.write_physical(self._tc_pa + (tc - TC_BASE), bytes(em.code))
        site = ins.eip
        frame = ins.frames[0]
        gpa = (frame << 12) | (site & 0xFFF)
        guest = [(ins.eip, ins.length, ins.text)] + [(d.eip, d.length, d.text) for d in displaced]
        tu = TU(site, gpa, tc, size, guest, [(site & ~0xFFF, frame)],
                [(gpa, gpa + (end - site))])
        for row in em.rows:
            addr = tc + row.offset
            tu.rows.append((addr, row))
            self._at[addr] = (tu, row)
            if row.boundary and row.guest_eip not in tu.entry:
                tu.entry[row.guest_eip] = addr
            if row.callout is not None:
                self._callouts[addr] = (tu, row, None)
            if row.kind == INLINE and row.boundary:
                self.inline[row.key] += 1
        original = bytes(m._raw_mem[gpa:gpa + (end - site)].tobytes())
        jump = R.jmp_rel32((tc - (site + SIZEOF_NEARJUMP32)) & MASK32)
        written = jump + original[SIZEOF_NEARJUMP32:]
        m.write_physical(gpa, jump)
        p = Patch(site, "jump", ins.need, end, original, written, frame, tu,
                  displaced=tuple(d.eip for d in displaced))
        self._patches[site] = p
        self._frame_patches[frame].add(site)
        for d in displaced:
            self._displaced[d.eip] = tu.entry[d.eip]
        self.raw_counts["jump_patches"] += 1

    def _int3(self, ins: _Insn, reason: str) -> None:
        m = self.machine
        frame = ins.frames[0]
        gpa = (frame << 12) | (ins.eip & 0xFFF)
        original = bytes(m._raw_mem[gpa:gpa + 1].tobytes())
        m.write_physical(gpa, bytes([INT3]))
        p = Patch(ins.eip, "int3", ins.need, (ins.eip + ins.length) & MASK32, original,
                  bytes([INT3]), frame, reason=reason)
        self._patches[ins.eip] = p
        self._frame_patches[frame].add(ins.eip)
        self.raw_counts["int3_replacements"] += 1
        self.refusals[reason] += 1

    def _remove(self, p: Patch, keep: Optional[set] = None) -> None:
        """Take patch ``p`` out: its original bytes back (but the offsets in ``keep``, a
        set of guest-physical addresses the guest just wrote), its patch code dead."""
        gpa = (p.frame << 12) | (p.site & 0xFFF)
        mem = self.machine._raw_mem
        for i, b in enumerate(p.original):
            if keep is None or gpa + i not in keep:
                mem[gpa + i] = b
        if p.tu is not None:
            p.tu.valid = False
            for d in p.displaced:
                self._displaced.pop(d, None)
        del self._patches[p.site]
        self._frame_patches[p.frame].discard(p.site)

    def _convert(self, p: Patch) -> None:
        """A branch target inside jump patch ``p``: it becomes an INT3 replacement."""
        ins = self._insn[p.site]
        self._remove(p)
        self.raw_counts["converted"] += 1
        self._int3(ins, "branch target")

    # ---- self-modifying code and mappings ----------------------------------------------------
    def _forget(self, eips) -> list:
        """Forget scanned instructions; the roots to rescan (entries and targets)."""
        roots = []
        for eip in list(eips):
            ins = self._insn.pop(eip, None)
            if ins is None:
                continue
            self._page_insn[eip & ~0xFFF].discard(eip)
            for f in ins.frames:
                self._by_frame_insn[f].discard(eip)
            if eip in self._targets:
                roots.append(eip)
        return roots

    def _rescan(self, roots) -> None:
        for r in sorted(set(roots)):
            if r not in self._insn:
                try:
                    self.scan(r)
                    self.raw_counts["rescans"] += 1
                except TranslationFault:
                    pass

    def _written(self, gfn: int, before: bytes, gpa: int, size: int) -> None:
        base = gfn << 12
        now = self.machine._raw_mem[base:base + PAGE]
        offs = np.flatnonzero(now != np.frombuffer(before, np.uint8))
        lo = max(gpa, base)
        hi = min(gpa + max(size, 1), base + PAGE)
        changed = {base + int(o) for o in offs}
        if offs.size:
            lo = min(lo, base + int(offs[0]))
            hi = max(hi, base + int(offs[-1]) + 1)
        hit = False
        for eip in self._by_frame_insn.get(gfn, ()):
            ins = self._insn[eip]
            if ins.frames[0] == gfn:            # its first bytes are in this frame
                a = base | (eip & 0xFFF)
                b = min(a + ins.length, base + PAGE)
            else:                               # its last bytes ran into this frame
                a, b = base, base + ((eip + ins.length) & 0xFFF)
            if a < hi and lo < b:
                hit = True
                break
        if not hit:
            for site in self._frame_patches.get(gfn, ()):
                p = self._patches[site]
                a = base | (site & 0xFFF)
                if a < hi and lo < a + len(p.original):
                    hit = True
                    break
        if not hit:
            return
        for site in list(self._frame_patches.get(gfn, ())):
            self._remove(self._patches[site], changed)
        roots = self._forget(self._by_frame_insn.get(gfn, ()))
        self.raw_counts["smc_unpatches"] += 1
        self.bt_counts["smc_invalidations"] += 1
        self._rescan(roots)

    def _mappings_changed(self) -> None:
        """A linear page whose frame is no longer the one it was scanned through loses its
        scan (and that frame its patches) and is rescanned from its known entries."""
        sh = self.shadow
        for page, f in list(self._page_frame.items()):
            if sh.guest_frame(page) == f:
                continue
            del self._page_frame[page]
            for site in [s for s in self._frame_patches.get(f, ()) if s & ~0xFFF == page]:
                self._remove(self._patches[site])
            roots = self._forget(self._page_insn.get(page, ()))
            self.raw_counts["mapping_unpatches"] += 1
            self.bt_counts["mapping_invalidations"] += 1
            self._rescan(roots)

    def _general_protection(self, ev: Event) -> None:
        """Trap-and-emulate's emulation of a privileged instruction that trapped in
        place; a MOV to CR0/CR3/CR4 or INVLPG may have changed a mapping of scanned code
        (BT sees those as callouts, raw mode as traps)."""
        super()._general_protection(ev)
        self._mappings_changed()

    def _maybe_adapt(self, addr: int) -> None:
        """No adaptive translation in raw mode (its stores run in place)."""

    # ---- running in place --------------------------------------------------------------------
    def _resume_at(self, eip: int) -> int:
        """Where the guest kernel resumes for guest ``eip``: the copy in patch code of a
        displaced instruction, else ``eip`` itself, scanned first."""
        at = self._displaced.get(eip)
        if at is not None:
            return at
        if eip >= HOLE_BASE:
            raise Kill(_in_the_hole(f"the guest kernel jumps to {eip:#010x}"))
        if eip not in self._insn:
            self.scan(eip)
            at = self._displaced.get(eip)
            if at is not None:
                return at
        return eip

    def _goto(self, eip: int, hint: Optional[TU] = None) -> None:
        """Resume the guest kernel at guest ``eip`` in place (scanned first); a fetch there
        that faults is the guest's #PF (reflected at ``eip``)."""
        cpu = self.machine.cpu
        for _ in range(4):
            try:
                cpu.eip = self._resume_at(eip & MASK32)
                return
            except TranslationFault as f:
                eip = self._fetch_fault(eip, f)
        raise Kill(f"the guest's #PF handler at {eip:#x} cannot be fetched either")

    def _fetch_fault(self, eip: int, f: TranslationFault) -> int:
        from hvsim.arch.vectors import PF, vector_name
        self.vcpu.cr2 = f.address
        ev = Event("exception", eip, GUEST_RING, 0, PF, f.error, "fault", f.address)
        handler = self._reflect(PF, f.error, eip)
        self.reflected[vector_name(PF)] += 1
        self._record(ev, "reflected", f"instruction fetch at {eip:#x}: #PF({f.error:#x}) "
                                      f"at {f.address:#x} reflected to {handler:#x}")
        return handler

    def _simulate(self, eip: int, hint: Optional[TU]) -> None:
        """Run the original guest instruction at ``eip`` for one step (its patched bytes
        put back for that step), then resume in place."""
        m = self.machine
        p = self._patches.get(eip)
        gpa = None
        if p is not None:
            gpa = (p.frame << 12) | (p.site & 0xFFF)
            m.write_physical(gpa, p.original)
        cpu = m.cpu
        cpu.eip = eip
        saved = m.virtualizable
        m.virtualizable = True
        try:
            self._step_lifted(None, 0, 0)
        finally:
            m.virtualizable = saved
            if p is not None and self._patches.get(eip) is p:
                m.write_physical(gpa, p.written)
        self._mappings_changed()
        self._resume_simulated(eip, None)

    # ---- dispatch: the INT3 replacements -------------------------------------------------------
    def handle(self, ev: Event, outcome=None):
        if (ev.kind == "exception" and ev.vector == BP and ev.cpl == GUEST_RING
                and ev.eip in self._patches and self._patches[ev.eip].how == "int3"):
            try:
                p = self._patches[ev.eip]
                self.traps[ev.name] += 1            # a #BP from ring 1: a trap
                self.raw_counts["int3_emulated"] += 1
                if p.kind == "refused":
                    ins = self._insn[p.site]
                    raise Kill(f"'{ins.text}' at {p.site:#010x}: "
                               f"{R.SENSITIVE[ins.key][1]}; hvsim's patch manager refuses it")
                self._record(ev, "callout", f"INT3 replacement at {p.site:#x}: the monitor "
                                            f"runs '{self._insn[p.site].text}'")
                self._simulate(p.site, None)
                return None
            except Kill as k:
                return self._kill(str(k), ev)
        return super().handle(ev, outcome)

    # ---- the protocol --------------------------------------------------------------------------
    @property
    def stats(self) -> dict:
        """The binary translator's stats (``translated`` 0: raw mode translates nothing)
        with ``scanned``: guest instructions the scanner decoded."""
        d = super().stats
        d["scanned"] = self.raw_counts["scanned"]
        return d

    @property
    def counters(self) -> dict:
        """The binary translator's counters (its ``callout KIND`` and ``in-TC NAME`` for
        patch code), then the raw-mode ones: ``scans``, ``scanned`` (instructions),
        ``jump_patches`` and ``int3_replacements`` (installed, ever: a jump patch
        converted or taken out by SMC stays counted), ``refused REASON``,
        ``converted`` (jump patches turned INT3 by a later branch target),
        ``smc_unpatches`` / ``mapping_unpatches`` (pages unpatched), ``rescans``,
        ``int3_emulated``, ``patch_bytes`` (patch memory in use)."""
        d = super().counters
        for k in ("tus", "translated", "lookups", "lookup_hits", "chain_patches",
                  "adaptations", "tc_flushes", "tc_bytes"):
            d.pop(k, None)
        d.update(self.raw_counts)
        d.update({f"refused {k}": v for k, v in sorted(self.refusals.items())})
        d["patch_bytes"] = self._tc_used
        return d

    _RAW_STATE = ("_insn", "_by_frame_insn", "_page_insn", "_page_frame", "_targets",
                  "_patches", "_frame_patches", "_displaced", "raw_counts", "refusals")

    def snapshot(self) -> RawSnapshot:
        import copy
        return RawSnapshot(super().snapshot(),
                           copy.deepcopy({k: getattr(self, k) for k in self._RAW_STATE}))

    def restore(self, snap: RawSnapshot) -> None:
        import copy
        if not isinstance(snap, RawSnapshot):
            raise TypeError(f"restore() takes a RawSnapshot, got {type(snap).__name__}")
        super().restore(snap.base)
        raw = copy.deepcopy(snap.raw)
        # the patches' TUs must be the restored TC's objects
        for site, p in raw["_patches"].items():
            if p.tu is not None:
                hit = self._at.get(p.tu.tc)
                if hit is not None:
                    p.tu = hit[0]
        for k, v in raw.items():
            setattr(self, k, v)

    def __repr__(self):
        return (f"<RawMode {self._state}, ring {self.machine.cpu.cpl}, "
                f"eip={self.machine.cpu.eip:#x}, virtual IF={self.vcpu.IF}, "
                f"{len(self._patches)} patches, {len(self._insn)} instructions scanned>")

    # ---- the lesson's view ---------------------------------------------------------------------
    def patches(self) -> list:
        """One dict per patched site, by address: ``site``, ``how`` ('jump'/'int3'),
        ``kind``, ``reason`` (a refused jump's), ``original`` (the guest instructions it
        covers, as text), ``original_bytes``, ``written`` (the bytes now in place),
        ``patch_code`` (its patch code: (address, instruction) pairs; empty for INT3)."""
        out = []
        for site in sorted(self._patches):
            out.append(self.listing(site))
        return out

    def listing(self, addr: int) -> dict:
        """The patch at guest ``addr`` (see :meth:`patches`)."""
        p = self._patches.get(addr)
        if p is None:
            raise KeyError(f"no patch at guest {addr:#x}")
        texts = [self._insn[p.site].text] + [self._insn[d].text for d in p.displaced
                                             if d in self._insn]
        code = []
        if p.tu is not None:
            mem = self.machine._raw_mem
            for a, row in p.tu.rows:
                raw = mem[self._tc_pa + (a - TC_BASE):][:row.length].tobytes()
                code.append((a, str(disassemble_one(raw, 0, a))))
        return dict(site=p.site, how=p.how, kind=p.kind, reason=p.reason, original=texts,
                    original_bytes=p.original, written=p.written, patch_code=code)


def _rel(raw: bytes, n: int) -> int:
    v = int.from_bytes(raw[-n:], "little")
    return v - (1 << (8 * n)) if v >> (8 * n - 1) else v
