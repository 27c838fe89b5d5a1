"""A paravirtualized test guest: a prelude that sets up what every PV kernel sets up
(test helper, not jitted).

The prelude maps shared_info at SI_VA (update_va_mapping), registers the event callback
(it counts upcalls, clears the pending flags and returns with HYPERVISOR_iret), the trap
table (#PF and #GP handlers that record the error code (and CR2 from vcpu_info), count,
and resume at [pf_resume] / [gp_resume]) and the ring-1 stack, then jumps to ``body``.
``shutdown`` ends the run with SCHEDOP_shutdown([reason]). The hypercall numbers are
equ constants HC_name. Handlers run with the data segment they find: a ring-3 body
loads DS = 43H first.
"""
from hvsim.asm import assemble
PRELUDE = r'''
HC_set_trap_table equ 0
HC_mmu_update equ 1
HC_stack_switch equ 3
HC_set_callbacks equ 4
HC_multicall equ 13
HC_update_va_mapping equ 14
HC_set_timer_op equ 15
HC_xen_version equ 17
HC_console_io equ 18
HC_iret equ 23
HC_mmuext_op equ 26
HC_sched_op equ 29
HC_event_channel_op equ 32
SI_VA equ 0x3FF000
KSTACK equ 0x80000
start:
    mov [start_info], esi
    mov ecx, [esi + 36]
    or ecx, 0x63
    mov ebx, SI_VA
    mov edx, 2
    call hypercall_page + HC_update_va_mapping * 32
    mov [rc_map], eax
    mov ebx, 0x19
    mov ecx, event_cb
    mov edx, 0x19
    mov esi, failsafe
    call hypercall_page + HC_set_callbacks * 32
    mov ebx, traps
    call hypercall_page + HC_set_trap_table * 32
    mov [rc_traps], eax
    mov ebx, 0x21
    mov ecx, KSTACK
    call hypercall_page + HC_stack_switch * 32
    jmp body
failsafe:
    jmp failsafe
event_cb:                ; count upcalls, clear pending, return via HYPERVISOR_iret
    push eax
    inc dword [upcalls]
    mov byte [SI_VA + 0], 0
    xor eax, eax
    xchg eax, [SI_VA + 4]
    mov dword [SI_VA + 0x800], 0
    pop eax
    jmp hypercall_page + HC_iret * 32
pf_handler:
    push eax
    mov eax, [SI_VA + 8]
    mov [pf_cr2], eax
    mov eax, [esp + 4]
    mov [pf_err], eax
    inc dword [pf_count]
    mov eax, [pf_resume]
    mov [esp + 8], eax
    pop eax
    add esp, 4
    iret
gp_handler:
    push eax
    mov eax, [esp + 4]
    mov [gp_err], eax
    inc dword [gp_count]
    mov eax, [gp_resume]
    mov [esp + 8], eax
    pop eax
    add esp, 4
    iret
shutdown:
    mov ebx, 2
    mov ecx, reason
    call hypercall_page + HC_sched_op * 32
    jmp $
traps:
    db 14, 0
    dw 0x19
    dd pf_handler
    db 13, 0
    dw 0x19
    dd gp_handler
    TRAPS_EXTRA
    dd 0, 0
start_info: dd 0
rc_map: dd 0
rc_traps: dd 0
upcalls: dd 0
pf_cr2: dd 0
pf_err: dd 0
pf_count: dd 0
pf_resume: dd 0
gp_err: dd 0
gp_count: dd 0
gp_resume: dd 0
reason: dd 0
'''
def guest(body: str, data: str = "", traps: str = ""):
    """The prelude, ``body`` (code, from label ``body``), ``data`` and extra trap-table
    entries ``traps`` (db vector, flags / dw cs / dd handler), assembled at 1000H."""
    src = PRELUDE.replace("TRAPS_EXTRA", traps) + "body:\n" + body + "\n" + data + "\nalign 4096\nhypercall_page: times 4096 db 0\n"
    return assemble(src)
