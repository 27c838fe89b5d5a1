"""The split drivers end to end: a PV guest's frontends over shared rings, the
hypervisor's backends (hvsim/paravirt/blkback.py), event channels both ways.

Oracle: the ring rule of Xen's io/ring.h as hvsim/paravirt/ring.py states it (tested on
its own in test_pv_ring.py), and the disk bytes the guest asked for, computed here.
"""
import struct

import pytest


from pv_guest import guest
from hvsim.paravirt import abi as A
from hvsim.paravirt.hypervisor import Hypervisor

# the frontend: K requests pushed one at a time (each push checked for a notification),
# then wait for K responses (rsp_event = rsp_cons + 1, re-check, block)
FRONT = r'''
    mov esi, [start_info]
    mov eax, [esi + 1104]
    mov [ring], eax
    mov eax, [esi + 1108]
    mov [port], eax
    mov ebx, [ring]
    xor edi, edi                    ; edi: requests pushed
push_one:
    mov eax, edi                    ; slot = req_prod_pvt & 31, at ring + 64 + 64 * slot
    and eax, 31
    shl eax, 6
    lea edx, [ebx + 64 + eax]
    mov [edx], edi                  ; id
    mov byte [edx + 4], OP
    mov byte [edx + 5], 1           ; nr_segments
    mov word [edx + 6], 0
    lea eax, [edi + FIRST_SECTOR]
    mov [edx + 8], eax              ; sector
    mov eax, edi
    shl eax, 9
    add eax, BUFFERS
    mov [edx + 12], eax             ; buffer
    mov ecx, [ebx]                  ; old = req_prod
    lea eax, [edi + 1]
    mov [ebx], eax                  ; req_prod = new
    sub eax, [ebx + 4]              ; new - req_event
    mov edx, edi
    inc edx
    sub edx, ecx                    ; new - old
    cmp eax, edx
    jae .quiet
    inc dword [notified]
    mov ebx, 4                      ; EVTCHNOP_send(&port)
    mov ecx, port
    call hypercall_page + HC_event_channel_op * 32
    mov ebx, [ring]
.quiet:
    inc edi
    cmp edi, K
    jne push_one
    xor edi, edi                    ; edi: rsp_cons
wait:
    cmp edi, [ebx + 8]              ; a response?
    jne take
    lea eax, [edi + 1]
    mov [ebx + 12], eax             ; rsp_event = rsp_cons + 1
    cmp edi, [ebx + 8]              ; re-check before sleeping
    jne take
    inc dword [blocked]
    mov ebx, 1                      ; sched_op(SCHEDOP_block)
    call hypercall_page + HC_sched_op * 32
    mov ebx, [ring]
    jmp wait
take:
    mov eax, edi
    and eax, 31
    shl eax, 6
    movsx eax, word [ebx + 64 + eax + 6]
    add [status_sum], eax
    inc edi
    cmp edi, K
    jne wait
    jmp shutdown
'''
DATA = '''
ring: dd 0
port: dd 0
notified: dd 0
blocked: dd 0
status_sum: dd 0
'''


def _run(k, op, first=0, buffers=0x60000, fill=None):
    src = FRONT.replace("OP", str(op)).replace("FIRST_SECTOR", str(first)) \
        .replace("BUFFERS", hex(buffers)).replace("K\n", f"{k}\n")
    prog = guest(src, DATA)
    hv = Hypervisor(program=prog)
    if fill is not None:
        fill(hv)
    ev = hv.run(200_000)
    return hv, ev, prog


def _dword(hv, prog, name):
    return struct.unpack("<I", hv.machine.read_linear(prog.labels[name], 4))[0]


def test_k_writes_need_one_notification_and_land_on_the_disk():
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(8 * 512))

    def fill(hv):
        hv.machine.write_physical(0x60000, pattern)
    hv, ev, prog = _run(8, 1, first=3, fill=fill)
    assert ev.kind == "halt" and hv.shutdown_reason == "poweroff", ev
    # the backend slept (req_event = 1 at init): the first push crossed it, the other
    # seven found req_event still 1 and stayed quiet
    assert _dword(hv, prog, "notified") == 1 and hv.backend.notifications == 1
    assert _dword(hv, prog, "status_sum") == 0                       # eight BLKIF_RSP_OKAY
    assert bytes(hv.disk[3 * 512:11 * 512]) == pattern
    assert bytes(hv.disk[:3 * 512]) == bytes(3 * 512) and not any(hv.disk[11 * 512:])
    c = hv.counters
    assert c["blk requests_consumed"] == 8 and c["blk writes"] == 8 and c["blk bytes"] == 4096
    # one block: the backend ran then, answered all eight, and notified the guest once
    assert _dword(hv, prog, "blocked") == 1 and hv.backend.runs == 1
    assert c["blk notify_sent"] == 1 and hv.upcalls == 1
    assert hv.stats["io_requests"] == 8
    assert hv.frames.check(hv.base) == []


def test_reads_bring_the_disk_into_guest_memory():
    hv0, _, _ = _run(1, 1)                     # a hypervisor to borrow the disk size from
    disk = bytes((i * 13) & 0xFF for i in range(len(hv0.disk)))

    def fill(hv):
        hv.disk[:] = disk
    hv, ev, prog = _run(4, 0, first=10, buffers=0x61000, fill=fill)
    assert ev.kind == "halt" and _dword(hv, prog, "status_sum") == 0
    assert hv.machine.read_linear(0x61000, 4 * 512) == disk[10 * 512:14 * 512]
    assert hv.counters["blk reads"] == 4


def test_a_read_into_a_page_table_or_past_the_disk_is_refused_per_request():
    # buffer = the builder's page directory (a page table in use): the device may not
    # write it; a sector past the disk's end: an error too; the guest goes on
    hv0 = Hypervisor(program=guest("jmp shutdown"))
    pd = struct.unpack("<I", hv0.machine.read_linear(hv0.start_info + A.SIF_PT_BASE, 4))[0]
    hv, ev, prog = _run(1, 0, buffers=pd)
    assert ev.kind == "halt" and _dword(hv, prog, "status_sum") == (-1) & 0xFFFFFFFF
    assert hv.counters["blk errors"] == 1 and hv.frames.check(hv.base) == []
    hv, ev, prog = _run(2, 1, first=len(hv0.disk) // 512 - 1)
    assert _dword(hv, prog, "status_sum") == (-1) & 0xFFFFFFFF      # one OK, one error
    assert hv.counters["blk writes"] == 1 and hv.counters["blk errors"] == 1


def test_a_front_that_lies_about_req_prod_stops_the_guest_with_the_indices_named():
    src = '''
    mov esi, [start_info]
    mov ebx, [esi + 1104]
    mov dword [ebx], 1000            ; req_prod: 1000 requests on a 32-slot ring
    mov eax, [esi + 1108]
    mov [port], eax
    mov ebx, 4
    mov ecx, port
    call hypercall_page + HC_event_channel_op * 32
    mov ebx, 1
    call hypercall_page + HC_sched_op * 32
    jmp shutdown
'''
    hv = Hypervisor(program=guest(src, "port: dd 0"))
    ev = hv.run(100_000)
    assert ev.kind == "killed" and "req_prod" in ev.reason and "0x3e8" in ev.reason


CONSOLE = r'''
    mov esi, [start_info]
    mov ebx, [esi + 52]             ; console.domU.mfn: the console ring's frame
    shl ebx, 12
    mov eax, [esi + 56]
    mov [port], eax
    mov dword [ebx + 64], 1         ; request 0: id 1, write, 6 bytes "hello "
    mov dword [ebx + 68], 0x0600
    mov dword [ebx + 72], "hell"
    mov dword [ebx + 76], "o "
    mov dword [ebx + 128], 2        ; request 1: id 2, write, 3 bytes "PV\n"
    mov dword [ebx + 132], 0x0300
    mov dword [ebx + 136], 0x0A5650
    mov dword [ebx], 2              ; req_prod = 2: both at once
    mov ebx, 4                      ; (req_event is 1: notify)
    mov ecx, port
    call hypercall_page + HC_event_channel_op * 32
    mov ebx, 0                      ; SCHEDOP_yield: the console backend runs
    call hypercall_page + HC_sched_op * 32
    mov esi, [start_info]
    mov ebx, [esi + 52]
    shl ebx, 12
    mov eax, [ebx + 8]
    mov [rsp_prod], eax
    movsx eax, word [ebx + 64 + 6]
    mov [status0], eax
    jmp shutdown
'''


def test_the_console_ring_carries_text_to_the_hypervisors_console():
    prog = guest(CONSOLE, "port: dd 0\nrsp_prod: dd 0\nstatus0: dd 0")
    hv = Hypervisor(program=prog)
    ev = hv.run(100_000)
    assert ev.kind == "halt" and hv.console == "hello PV\n"
    assert _dword(hv, prog, "rsp_prod") == 2 and _dword(hv, prog, "status0") == 6
    c = hv.counters
    assert c["cons requests_consumed"] == 2 and c["cons bytes"] == 9
    # the front never set rsp_event past 1: the backend's push of 2 responses crossed it
    assert c["cons notify_sent"] == 1 and hv.stats["io_requests"] == 2


@pytest.mark.parametrize("name", ["hvsim.paravirt.abi", "hvsim.paravirt.hypervisor",
                                  "hvsim.pvworkloads", "hvsim.techniques"])
def test_the_paravirt_docstrings_run(name):
    import doctest
    import importlib
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
