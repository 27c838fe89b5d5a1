; timer.s -- the interval timer, IF, HLT and the interrupt shadows at ring 0.
;
; The timer device (hvsim/cpu/devices.py) counts retired instructions: OUT dword to
; port 0x40 sets the period (0 stops it), OUT to 0x41 the vector (0x20 by default).
; The kernel:
;   1. programs a period, STI, and sleeps in HLT until 5 ticks arrived; the handler
;      runs with IF=0 (interrupt gate) and its saved EFLAGS has IF=1;
;   2. pushf; cli; spins past a deadline (no tick while IF=0); popf restores IF=1 and
;      the pending tick is taken at once, before the next instruction (POPF has no
;      interrupt shadow; SDM Vol. 2B, STI "Description" gives STI one);
;   3. with a tick pending, "sti; mov [marker], 1": the handler sees marker = 1, as STI
;      delays interrupts until after the next instruction (SDM Vol. 3A, 6.8.3);
;   4. moves the timer to vector 0x21 (port 0x41) and sees a tick there;
;   5. stops the timer (period 0) and reads the period back as 0.
; Reports "PASS timer" or "FAIL timer <why>" on port 0xE9 and halts.
; The entry point (start, then kmain here) and set_gate, kfail, puts, gdtr, idtr
; come from lib.s, appended at assembly.

TIMER       equ 0x40            ; period (dword)
TIMER_VEC   equ 0x41            ; vector
PERIOD      equ 100             ; instructions

kmain:                          ; from lib.s's start: flat segments, ESP = KSTACK
    mov esi, idt_gates
    call set_gates
    lidt [idtr]

    ; 1. sleep until 5 ticks
    mov eax, PERIOD
    out TIMER, eax
    sti
.sleep:
    hlt
    cmp dword [ticks], 5
    jb .sleep
    mov esi, m_ticks
    jne kfail                   ; exactly 5: one wake-up per tick
    mov esi, m_handler_if
    cmp dword [if_inside], 0    ; IF was clear in every handler run
    jne kfail
    mov esi, m_saved_if
    cmp dword [saved_if_missing], 0
    jne kfail

    ; 2. pushf; cli; ...; popf
    pushf
    cli
    mov esi, m_cli
    pushf
    pop eax
    test eax, EFLAGS_IF
    jnz kfail
    mov ebx, [ticks]
    mov ecx, PERIOD * 2         ; spin past at least one deadline
.spin:
    loop .spin
    mov esi, m_masked
    cmp ebx, [ticks]            ; no tick while IF=0
    jne kfail
    popf                        ; IF=1 again: the pending tick is taken right here
    mov eax, [ticks]
    mov esi, m_popf
    inc ebx
    cmp eax, ebx
    jne kfail
    pushf
    pop eax
    test eax, EFLAGS_IF
    jz kfail

    ; 3. the STI shadow
    cli
    mov ecx, PERIOD * 2
.spin2:
    loop .spin2                 ; a tick is now pending
    mov dword [marker], 0
    mov dword [seen], -1
    sti
    mov dword [marker], 1       ; runs before the pending tick
    mov esi, m_sti_shadow
    cmp dword [seen], 1
    jne kfail

    ; 4. another vector
    mov al, 0x21
    out TIMER_VEC, al
.sleep21:
    hlt
    cmp dword [ticks21], 0
    je .sleep21

    ; 5. stop
    cli
    mov eax, 0
    out TIMER, eax
    in eax, TIMER
    mov esi, m_stop
    test eax, eax
    jnz kfail
    mov esi, m_pass
    call puts
    hlt

; vector 0x20: count, and check the interrupt gate's IF handling.
tick:
    push eax
    inc dword [ticks]
    mov eax, [marker]
    mov [seen], eax
    pushf
    pop eax
    and eax, EFLAGS_IF
    or [if_inside], eax
    mov eax, [esp + 12]         ; saved EFLAGS (above eax, EIP, CS)
    test eax, EFLAGS_IF
    jnz .ok
    inc dword [saved_if_missing]
.ok:
    pop eax
    iret

tick21:
    inc dword [ticks21]
    iret

gp_handler:
    mov esi, m_gp
    jmp kfail


ticks:              dd 0
ticks21:            dd 0
if_inside:          dd 0
saved_if_missing:   dd 0
marker:             dd 0
seen:               dd 0

m_pass:         db "PASS timer", 10, 0
m_fail:         db "FAIL timer ", 0
m_ticks:        db "HLT loop counted more than 5 ticks", 0
m_handler_if:   db "IF set inside an interrupt-gate handler", 0
m_saved_if:     db "saved EFLAGS.IF clear", 0
m_cli:          db "CLI left IF set", 0
m_masked:       db "tick delivered while IF=0", 0
m_popf:         db "POPF did not restore IF / deliver the pending tick", 0
m_sti_shadow:   db "no STI interrupt shadow", 0
m_stop:         db "timer period did not read back 0", 0
m_gp:           db "unexpected #GP", 0

; IDT gates for set_gates (lib.s): vector, handler, access byte; -1 ends the list
align 4
idt_gates:
    dd 0x20, tick, INTGATE0
    dd 0x21, tick21, INTGATE0
    dd 13, gp_handler, INTGATE0
    dd -1
