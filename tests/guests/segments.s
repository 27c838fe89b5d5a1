; segments.s -- what ring 3 can learn without trapping (Robin & Irvine, USENIX Sec. 2000).
;
; The same probes run at ring 0 and at ring 3 against KDATA, a DPL-0 data segment:
;   LAR / LSL / VERR / VERW set ZF=1 only if DPL >= max(CPL, RPL) (SDM Vol. 2A, LAR
;   "Operation"), so they answer ZF=1 at ring 0 and ZF=0 at ring 3 -- and never fault.
;   At ring 0, RPL 3 in the selector alone makes them fail too.
; Ring 3 then reads privileged state without a fault -- the x86 virtualization hole:
;   STR (the TSS selector), SGDT (GDTR limit and base), SIDT, SMSW (CR0: PE, ET);
;   and MOV EAX, CS shows the CPL in bits 1:0.
; Reports "PASS segments" or "FAIL segments <why>" on port 0xE9 and halts at ring 0.
; The entry point (start, then kmain here) and set_gate, kfail, puts, gdtr, idtr
; come from lib.s, appended at assembly.

AR_KDATA    equ 0x00C09300      ; LAR: KDATA's 2nd dword & 00FxFF00 (G D/B, P DPL0 S type 3)
LAR_MASK    equ 0x00F0FF00      ; bits 19:16 (limit 19:16) are undefined (SDM LAR)
CR0_BITS    equ 0x11            ; PE | ET: paging off
ZF          equ 0x40
SYS_EXIT    equ 0
SYS_FAIL    equ 3

kmain:                          ; from lib.s's start, whose load of DS set KDATA's
                                ; accessed bit (type 3, as AR_KDATA expects)
    mov esi, idt_gates
    call set_gates
    lidt [idtr]
    mov eax, TSS_SEL
    ltr eax

    ; -- ring 0: every probe of KDATA succeeds --
    mov esi, m_cpl0
    mov eax, cs
    and eax, 3
    jnz kfail
    mov ecx, KDATA
    mov eax, 0
    lar eax, ecx
    mov esi, m_lar0
    jnz kfail
    and eax, LAR_MASK
    cmp eax, AR_KDATA
    jne kfail
    mov eax, 0
    lsl eax, ecx
    mov esi, m_lsl0
    jnz kfail
    cmp eax, 0xFFFFFFFF
    jne kfail
    mov esi, m_verr0
    verr ecx
    jnz kfail
    mov esi, m_verw0
    verw ecx
    jnz kfail
    mov ecx, KDATA | 3          ; RPL 3: as if on behalf of ring 3
    mov eax, 0x5A5A
    lar eax, ecx
    mov esi, m_lar_rpl
    jz kfail
    cmp eax, 0x5A5A             ; ZF=0 leaves the destination alone
    jne kfail
    mov esi, m_verr_rpl
    verr ecx
    jz kfail

    ; -- to ring 3 --
    push UDATA
    push USTACK
    push 0x2
    push UCODE
    push user
    iret

syscall:                        ; eax = 0: exit with PASS; 3: fail(ebx = reason)
    mov esi, ebx
    cmp eax, SYS_FAIL
    je kfail
    mov esi, m_gp_count
    cmp dword [gp_count], 0
    jne kfail
    mov esi, m_pass
    call puts
    hlt

gp_handler:
    inc dword [gp_count]
    mov esi, m_gp
    jmp kfail

user:
    mov eax, UDATA
    mov ds, eax
    mov es, eax
    mov eax, cs                 ; the CPL, in plain sight
    and eax, 3
    mov ebx, u_cpl
    cmp eax, 3
    jne ufail

    mov ecx, KDATA
    mov eax, 0x5A5A
    lar eax, ecx                ; DPL 0 < CPL 3: ZF=0, EAX kept, no fault
    mov ebx, u_lar
    jz ufail
    cmp eax, 0x5A5A
    jne ufail
    lsl eax, ecx
    mov ebx, u_lsl
    jz ufail
    cmp eax, 0x5A5A
    jne ufail
    verr ecx
    mov ebx, u_verr
    jz ufail
    verw ecx
    mov ebx, u_verw
    jz ufail
    mov ecx, UDATA              ; control: a DPL-3 segment is visible
    lsl eax, ecx
    mov ebx, u_lsl_udata
    jnz ufail
    cmp eax, 0xFFFFFFFF
    jne ufail
    verw ecx
    jnz ufail

    ; -- privileged state, readable from ring 3 --
    mov eax, 0
    str eax
    mov ebx, u_str
    cmp eax, TSS_SEL
    jne ufail
    sgdt [buf]
    movzx eax, word [buf]
    mov ebx, u_sgdt
    cmp eax, gdt_end - gdt - 1
    jne ufail
    cmp dword [buf + 2], gdt
    jne ufail
    sidt [buf]
    movzx eax, word [buf]
    mov ebx, u_sidt
    cmp eax, 256 * 8 - 1
    jne ufail
    cmp dword [buf + 2], IDT
    jne ufail
    smsw eax
    mov ebx, u_smsw
    cmp eax, CR0_BITS
    jne ufail

    mov eax, SYS_EXIT
    int 0x80
ufail:
    mov eax, SYS_FAIL
    int 0x80


gp_count:   dd 0
buf:        dd 0, 0

m_pass:         db "PASS segments", 10, 0
m_fail:         db "FAIL segments ", 0
m_cpl0:         db "CS.RPL != 0 in the kernel", 0
m_lar0:         db "LAR KDATA at ring 0", 0
m_lsl0:         db "LSL KDATA at ring 0", 0
m_verr0:        db "VERR KDATA at ring 0", 0
m_verw0:        db "VERW KDATA at ring 0", 0
m_lar_rpl:      db "LAR KDATA|3 at ring 0 succeeded", 0
m_verr_rpl:     db "VERR KDATA|3 at ring 0 succeeded", 0
m_gp_count:     db "a probe faulted", 0
m_gp:           db "unexpected #GP", 0
u_cpl:          db "CS.RPL != 3 in user mode", 0
u_lar:          db "LAR KDATA at ring 3 succeeded or changed EAX", 0
u_lsl:          db "LSL KDATA at ring 3 succeeded or changed EAX", 0
u_verr:         db "VERR KDATA at ring 3 succeeded", 0
u_verw:         db "VERW KDATA at ring 3 succeeded", 0
u_lsl_udata:    db "LSL/VERW UDATA at ring 3 failed", 0
u_str:          db "STR at ring 3", 0
u_sgdt:         db "SGDT at ring 3", 0
u_sidt:         db "SIDT at ring 3", 0
u_smsw:         db "SMSW at ring 3", 0

; IDT gates for set_gates (lib.s): vector, handler, access byte; -1 ends the list
align 4
idt_gates:
    dd 13, gp_handler, INTGATE0
    dd 0x80, syscall, INTGATE3
    dd -1
