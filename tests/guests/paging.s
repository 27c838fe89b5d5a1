; paging.s -- 32-bit paging from the guest's side (SDM Vol. 3A, chapter 4).
;
; The kernel identity-maps the first 4 MiB with a page directory and one page table
; (user-accessible, except one supervisor-only page), leaves the next 4 MiB to demand
; paging through an empty page table, maps 8..12 MiB with one 4 MiB page (CR4.PSE),
; and turns on CR0.PG. Then:
;   1. a write to an unmapped page: #PF, CR2 = the address, error code W=1 P=0 U=0
;      (Figure 4-12); the handler maps a frame and returns; the write restarts and
;      succeeds (the frame holds the value);
;   2. a read through the 4 MiB page finds the bytes at the physical address it maps;
;   3. a PTE is changed under a cached translation: the stale one is still used until
;      INVLPG drops it (4.10.4.1);
;   4. ring 3 reads the supervisor page: #PF with U=1 P=1 W=0; the handler makes the
;      page user-accessible, INVLPGs it, and the read restarts and succeeds.
; Reports "PASS paging" or "FAIL paging <why>" on port 0xE9 and halts at ring 0.
; The entry point (start, then kmain here) and set_gate, kfail, puts, gdtr, idtr
; come from lib.s, appended at assembly.

PD          equ 0x10000         ; page directory
PT0         equ 0x11000         ; maps 0 .. 4 MiB identity
PT1         equ 0x12000         ; 4 .. 8 MiB: empty, filled on demand
SUPER_PAGE  equ 0x50000         ; the one page ring 3 may not touch
DEMAND      equ 0x401000        ; unmapped linear page (PT1 entry 1)
DEMAND_PA   equ 0x200000        ; the frame the #PF handler gives it
STALE       equ 0x402000        ; linear page remapped under the TLB (PT1 entry 2)
FRAME_A     equ 0x300000
FRAME_B     equ 0x301000
BIG         equ 0x800000        ; PDE 2: one 4 MiB page -> physical 0
PTE_P       equ 1               ; Table 4-5/4-6
PTE_RW      equ 2
PTE_US      equ 4
PDE_PS      equ 0x80
PF_P        equ 1               ; #PF error code, Figure 4-12
PF_W        equ 2
PF_U        equ 4
CR0_PG      equ 0x80000000
CR4_PSE     equ 0x10

kmain:                          ; from lib.s's start: flat segments, ESP = KSTACK
    mov esi, idt_gates
    call set_gates
    lidt [idtr]
    mov eax, TSS_SEL
    ltr eax

    ; -- page tables --
    mov edi, PT0                ; PT0[i] = i << 12 | U RW P
    mov eax, PTE_US | PTE_RW | PTE_P
    mov ecx, 1024
.fill:
    mov [edi], eax
    add eax, 0x1000
    add edi, 4
    loop .fill
    mov dword [PT0 + (SUPER_PAGE >> 12) * 4], SUPER_PAGE | PTE_RW | PTE_P
    mov dword [PD + 0], PT0 | PTE_US | PTE_RW | PTE_P
    mov dword [PD + 4], PT1 | PTE_US | PTE_RW | PTE_P
    mov dword [PD + 8], 0 | PDE_PS | PTE_RW | PTE_P
    mov dword [PT1 + (STALE >> 12 & 0x3FF) * 4], FRAME_A | PTE_RW | PTE_P
    mov dword [FRAME_A], 0xAAAAAAAA
    mov dword [FRAME_B], 0xBBBBBBBB
    mov dword [SUPER_PAGE], 0x5EC12E7
    mov dword [magic], 0xC0FFEE

    mov eax, PD
    mov cr3, eax
    mov eax, cr4
    or eax, CR4_PSE
    mov cr4, eax
    mov eax, cr0
    or eax, CR0_PG
    mov cr0, eax

    ; 1. demand paging
    mov dword [DEMAND + 0x10], 0x1234ABCD     ; #PF, mapped, restarted
    mov esi, m_pf_count
    cmp dword [pf_count], 1
    jne kfail
    mov esi, m_cr2
    cmp dword [last_cr2], DEMAND + 0x10
    jne kfail
    mov esi, m_err_demand
    cmp dword [last_err], PF_W                 ; not present, write, supervisor
    jne kfail
    mov esi, m_restart
    cmp dword [DEMAND + 0x10], 0x1234ABCD
    jne kfail
    cmp dword [DEMAND_PA + 0x10], 0x1234ABCD   ; the frame the handler chose (identity map)
    jne kfail

    ; 2. the 4 MiB page maps BIG .. BIG+4M to physical 0 .. 4M
    mov esi, m_big
    cmp dword [BIG + magic], 0xC0FFEE
    jne kfail
    mov dword [BIG + magic], 0xBEEF
    cmp dword [magic], 0xBEEF
    jne kfail

    ; 3. a stale translation until INVLPG
    mov esi, m_stale_a
    cmp dword [STALE], 0xAAAAAAAA              ; fills the TLB
    jne kfail
    mov dword [PT1 + (STALE >> 12 & 0x3FF) * 4], FRAME_B | PTE_RW | PTE_P
    mov esi, m_stale
    cmp dword [STALE], 0xAAAAAAAA              ; the TLB still holds FRAME_A
    jne kfail
    invlpg [STALE]
    mov esi, m_invlpg
    cmp dword [STALE], 0xBBBBBBBB
    jne kfail

    ; 4. ring 3 touches the supervisor page
    push UDATA
    push USTACK
    push 0x2
    push UCODE
    push user
    iret
back_to_kernel:                 ; INT 0x80 from the user task lands here
    add esp, 20                 ; drop its frame: the kernel carries on
    mov esi, m_pf_count
    cmp dword [pf_count], 2
    jne kfail
    mov esi, m_user_cr2
    cmp dword [last_cr2], SUPER_PAGE
    jne kfail
    mov esi, m_err_user
    cmp dword [last_err], PF_U | PF_P          ; protection, read, user
    jne kfail
    mov esi, m_user_value
    cmp dword [user_value], 0x5EC12E7
    jne kfail
    mov esi, m_pass
    call puts
    hlt

user:
    mov eax, UDATA
    mov ds, eax
    mov eax, [SUPER_PAGE]       ; #PF(U|P); the handler opens the page; restarts
    mov [user_value], eax
    int 0x80

; #PF: error code at [esp], then EIP CS EFLAGS [ESP SS].
pf_handler:
    push eax
    push ebx
    push edx
    inc dword [pf_count]
    mov eax, cr2
    mov [last_cr2], eax
    mov ebx, [esp + 12]         ; the error code
    mov [last_err], ebx
    mov edx, eax
    shr edx, 12                 ; page number
    test ebx, PF_P
    jnz .protection
    cmp edx, 0x400              ; not present: only PT1's range is demand-paged
    jb .bad
    cmp edx, 0x800
    jae .bad
    and edx, 0x3FF
    mov dword [PT1 + edx*4], DEMAND_PA | PTE_RW | PTE_P
    jmp .out                    ; no INVLPG needed: not-present entries are not cached
.protection:
    test ebx, PF_U
    jz .bad
    cmp edx, 0x400
    jae .bad
    or dword [PT0 + edx*4], PTE_US
    invlpg [eax]                ; the TLB may hold the supervisor-only translation
.out:
    pop edx
    pop ebx
    pop eax
    add esp, 4
    iret
.bad:
    mov esi, m_pf_bad
    jmp kfail

gp_handler:
    mov esi, m_gp
    jmp kfail


pf_count:   dd 0
last_cr2:   dd 0
last_err:   dd -1
user_value: dd 0
magic:      dd 0

m_pass:         db "PASS paging", 10, 0
m_fail:         db "FAIL paging ", 0
m_pf_count:     db "wrong #PF count", 0
m_cr2:          db "CR2 != the faulting address", 0
m_err_demand:   db "demand #PF error code != W", 0
m_restart:      db "the faulting write did not complete", 0
m_big:          db "4 MiB page maps the wrong frame", 0
m_stale_a:      db "first read of the remapped page", 0
m_stale:        db "TLB entry dropped without INVLPG", 0
m_invlpg:       db "INVLPG did not drop the stale entry", 0
m_user_cr2:     db "user #PF CR2 != the supervisor page", 0
m_err_user:     db "user #PF error code != U|P", 0
m_user_value:   db "user read did not restart", 0
m_pf_bad:       db "unexpected #PF", 0
m_gp:           db "unexpected #GP", 0

; IDT gates for set_gates (lib.s): vector, handler, access byte; -1 ends the list
align 4
idt_gates:
    dd 14, pf_handler, INTGATE0
    dd 13, gp_handler, INTGATE0
    dd 0x80, back_to_kernel, INTGATE3
    dd -1
