"""Shadow paging fuzzed: a guest that edits its page tables at random and reads memory.

Each seed makes one program (tests/shadow_guest.py's prelude: PT1 maps the 4 MiB at
AREA; a #PF is logged and the faulting read skipped). Data frame k holds the tag
TAG + k in its first dword and nothing ever writes it again, so every read says which
frame it reached, or -1 if it faulted. The program: random PTE stores (frame, present
or not, writable or not), PDE flips between two page tables, reads, and flushes.

* **Flushed correctly** -- every change is followed by INVLPG of its page (CR3 reloaded
  after a PDE change), as an OS must do: every host (trap-and-emulate and VT-x shadow
  paging, synchronized and unsync, and EPT) ends with exactly the native machine's
  guest-visible state -- registers, every value read, the #PF log (CR2, error code),
  and the guest's own PTEs with their A/D bits.
* **Flushes left out at random** -- now a real CPU may use a stale TLB entry, and
  hosts may legitimately differ. Each read must then be one a real CPU could give
  (SDM Vol. 3A, 4.10.4): the tag of a frame the page was mapped to at its last flush
  (INVLPG of it, a CR3 load, or a #PF on it) or since, or a fault if the page was not
  present at some point in that window -- and no shadow entry ever maps the monitor's
  memory.

``HVSIM_LONG=1`` runs ten times as many seeds. Plain Python around the jitted machine.
"""
import os
import random
import struct

import pytest

from shadow_guest import AREA, DATA, PD, PT1, faults, guest_view, program, run, shadow_of

LONG = os.environ.get("HVSIM_LONG", "") not in ("", "0")
SEEDS = range(400 if LONG else 40)
PT2 = 0x23000                  # the other page table PD[1] may name
RES = 0x38000                  # the values read, one dword per read
TAG = 0xD000
PAGES, FRAMES = 6, 12
FLAGS = (0, 1, 3, 3, 3, 1)     # not present; P; P|RW (writability plays no part in reads)
HOSTS_UNDER_TEST = ("shadow", "shadow-unsync", "vtx", "ept")
FAULT = 0xFFFFFFFF


def make(seed: int, flush_always: bool):
    """(body source, ops, the two tables at the start): ops is the program as data."""
    rng = random.Random(seed)
    lines = [f"    mov dword [{DATA} + {0x1000 * k}], {TAG + k}" for k in range(FRAMES)]
    tables = {PT1: [0] * PAGES, PT2: [0] * PAGES}
    for t in tables:
        for i in range(PAGES):
            v = rng.choice(FLAGS) | (DATA + 0x1000 * rng.randrange(FRAMES))
            tables[t][i] = v
            lines.append(f"    mov dword [{t} + {4 * i}], {v}")
    lines += ["    mov eax, cr3", "    mov cr3, eax"]          # a clean start
    start = {t: list(v) for t, v in tables.items()}
    current = PT1
    ops = [("flush_all",)]
    n_reads = 0
    for _ in range(rng.randrange(20, 60)):
        r = rng.random()
        if r < 0.35:
            i = rng.randrange(PAGES)
            t = current if rng.random() < 0.8 else (PT2 if current == PT1 else PT1)
            v = rng.choice(FLAGS) | (DATA + 0x1000 * rng.randrange(FRAMES))
            tables[t][i] = v
            lines.append(f"    mov dword [{t} + {4 * i}], {v}")
            ops.append(("pte", t, i, v))
            if t == current and (flush_always or rng.random() < 0.5):
                lines.append(f"    invlpg [{AREA + 0x1000 * i}]")
                ops.append(("flush", i))
        elif r < 0.45:
            current = PT2 if current == PT1 else PT1
            lines.append(f"    mov dword [{PD} + 4], {current | 0x27}")
            ops.append(("pde", current))
            if flush_always or rng.random() < 0.5:
                lines += ["    mov eax, cr3", "    mov cr3, eax"]
                ops.append(("flush_all",))
        elif r < 0.5 and not flush_always:
            lines += ["    mov eax, cr3", "    mov cr3, eax"]
            ops.append(("flush_all",))
        else:
            i = rng.randrange(PAGES)
            lines += ["    mov eax, -1", f"    mov ebx, {AREA + 0x1000 * i}", "    mov eax, [ebx]",
                      f"    mov [{RES} + {4 * n_reads}], eax"]
            ops.append(("read", i, n_reads))
            n_reads += 1
    lines.append(f"    mov edi, {n_reads}")
    return "\n".join(lines), ops, start


def reads(mon, n):
    return struct.unpack(f"<{n}I", mon.machine.memory[RES:RES + 4 * n].tobytes())


@pytest.mark.parametrize("seed", SEEDS)
def test_page_table_edits_flushed_correctly_give_the_native_result_on_every_host(seed):
    body, ops, _ = make(seed, flush_always=True)
    native = run("native", body)
    want = guest_view(native)
    n = sum(1 for o in ops if o[0] == "read")
    assert reads(native, n) and faults(native) == faults(native)
    for host in HOSTS_UNDER_TEST:
        mon = run(host, body)
        assert guest_view(mon) == want, (seed, host)
        assert reads(mon, n) == reads(native, n), (seed, host)
        assert mon.machine.memory[PT2:PT2 + 4 * PAGES].tobytes() == \
            native.machine.memory[PT2:PT2 + 4 * PAGES].tobytes(), (seed, host)


def possible(start, ops, observed):
    """Check each observed read against what a CPU with a TLB could have returned."""
    table = {t: list(v) for t, v in start.items()}
    current = PT1
    window = [set() for _ in range(PAGES)]      # PTE values seen since the page's last flush

    def value(i):
        return table[current][i]

    for op in ops:
        kind = op[0]
        if kind == "pte":
            _, t, i, v = op
            table[t][i] = v
            if t == current:
                window[i].add(v)
        elif kind == "pde":
            current = op[1]
            for i in range(PAGES):
                window[i].add(value(i))
        elif kind == "flush":
            window[op[1]] = {value(op[1])}
        elif kind == "flush_all":
            window = [{value(i)} for i in range(PAGES)]
        else:
            _, i, k = op
            got = observed[k]
            allowed = {TAG + ((v & ~0xFFF) - DATA) // 0x1000 for v in window[i] if v & 1}
            if any(not v & 1 for v in window[i]):
                allowed.add(FAULT)
            assert got in allowed, (k, hex(got), sorted(map(hex, allowed)))
            if got == FAULT:                    # a #PF drops the page's TLB entry (4.10.4.1)
                window[i] = {value(i)}


@pytest.mark.parametrize("seed", SEEDS)
def test_page_table_edits_with_flushes_left_out_give_what_a_real_cpu_could(seed):
    body, ops, start = make(seed, flush_always=False)
    n = sum(1 for o in ops if o[0] == "read")
    for host in ("native",) + HOSTS_UNDER_TEST:
        mon = run(host, body)
        possible(start, ops, reads(mon, n))
        sh = shadow_of(mon)
        if sh is None:
            continue
        mem = mon.machine.memory
        for hpa, sp in sh.by_hpa.items():
            if sp.level != 1:
                continue
            words = struct.unpack("<1024I", mem[hpa:hpa + 4096].tobytes())
            assert all(w & ~0xFFF < sh.ram for w in words if w & 1), (seed, host)


def test_the_oracle_refuses_a_read_no_cpu_could_give():
    """The checker is not vacuous: a frame never mapped to the page is refused."""
    body, ops, start = make(3, flush_always=False)
    n = sum(1 for o in ops if o[0] == "read")
    observed = list(reads(run("native", body), n))
    first = next(o for o in ops if o[0] == "read")
    observed[first[2]] = TAG + FRAMES + 7                    # no such frame
    with pytest.raises(AssertionError):
        possible(start, ops, observed)
