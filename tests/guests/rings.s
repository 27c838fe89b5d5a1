; rings.s -- a tiny protected-mode kernel with one ring-3 task.
;
; The kernel loads the GDT that lib.s links in (null, ring-0 code/data, ring-3
; code/data, TSS), builds its IDT, loads them (LGDT, LIDT, LTR), reloads CS with a far
; JMP, and drops to ring 3 through IRET. The user task then:
;   * sees that IRET nulled the kernel's DS (SDM Vol. 2A, IRET: data segments with
;     DPL < the new CPL become null) and that CS.RPL = 3;
;   * makes INT 0x80 system calls through a DPL-3 interrupt gate: write (returns the
;     byte count in EAX) and getpid (returns 42), and checks its registers survive;
;   * executes CLI with IOPL = 0, which is #GP(0) at CPL 3 (SDM Vol. 2A, CLI);
;   * executes INT 0x20 through a DPL-0 gate: #GP(0x20*8+2) (SDM Vol. 3A, 6.12.1.1);
;   * finally calls exit.
; Every handler entered from ring 3 checks the stack switch: the CPU took SS:ESP
; from TSS.SS0:ESP0 (SDM Vol. 3A, 6.12.1), so on entry ESP is exactly KSTACK minus the
; frame (SS, ESP, EFLAGS, CS, EIP [, error code]).
;
; Reports "PASS rings" or "FAIL rings <why>" on port 0xE9, then halts at ring 0.
; The entry point (start, then kmain here) and set_gate, kfail, puts, gdtr, idtr
; come from lib.s, appended at assembly.

SYS_EXIT    equ 0
SYS_WRITE   equ 1
SYS_GETPID  equ 2
SYS_FAIL    equ 3
PID         equ 42

kmain:                          ; from lib.s's start: CS DS ES SS flat, ESP = KSTACK
    mov fs, eax                 ; eax = KDATA: every data segment is DPL 0
    mov gs, eax
    mov esi, m_cs_reload
    mov eax, cs
    cmp eax, KCODE
    jne kfail

    ; -- the IDT --
    mov esi, idt_gates
    call set_gates
    lidt [idtr]
    mov eax, TSS_SEL
    ltr eax

    ; -- to ring 3: IRET pops EIP, CS, EFLAGS, then (outer ring) ESP, SS --
    push UDATA
    push USTACK
    push EFLAGS_IF              ; IF=1, IOPL=0
    push UCODE
    push user
    iret

; ---------------------------------------------------------------- ring-0 handlers
; INT 0x80: eax = call number; ebx, ecx arguments; result in eax; other registers kept.
syscall:
    cmp esp, KSTACK - 20        ; EIP CS EFLAGS ESP SS, no error code
    jne .bad_stack
    push ds                     ; the kernel uses its own data segment
    push esi
    push edx
    mov edx, KDATA
    mov ds, edx
    mov esi, m_sys_cs
    mov edx, [esp + 16]         ; the saved CS (above edx, esi, ds, EIP): RPL = the caller's CPL
    and edx, 3
    cmp edx, 3
    jne kfail
    mov esi, m_sys_ss
    cmp dword [esp + 28], UDATA ; the saved SS
    jne kfail
    mov esi, m_sys_if
    pushf                       ; an interrupt gate cleared IF
    pop edx
    test edx, EFLAGS_IF
    jnz kfail
    inc dword [syscalls]
    cmp eax, SYS_WRITE
    je .write
    cmp eax, SYS_GETPID
    je .getpid
    cmp eax, SYS_EXIT
    je .exit
    cmp eax, SYS_FAIL
    je .fail
    mov esi, m_sys_bad
    jmp kfail
.bad_stack:
    mov eax, KDATA
    mov ds, eax
    mov esi, m_sys_stack
    jmp kfail
.write:                         ; write(ebx = buffer, ecx = length) -> eax = length
    push ecx
    mov esi, ebx
.next:
    test ecx, ecx
    jz .done
    mov al, [esi]
    out PORT, al
    inc esi
    dec ecx
    jmp .next
.done:
    pop ecx
    mov eax, ecx
    jmp .return
.getpid:
    mov eax, PID
.return:
    pop edx
    pop esi
    pop ds
    iret
.fail:                          ; fail(ebx = reason): the user task found a problem
    mov esi, ebx
    jmp kfail
.exit:
    mov esi, m_exit_gp
    cmp dword [gp_cli], 1
    jne kfail
    cmp dword [gp_int], 1
    jne kfail
    mov esi, m_exit_calls
    cmp dword [syscalls], 4     ; write, getpid, getpid, exit (the #GPs are not syscalls)
    jne kfail
    mov esi, m_pass
    call puts
    hlt

; #GP from ring 3: error code, then EIP CS EFLAGS ESP SS.
gp_handler:
    cmp esp, KSTACK - 24
    jne .bad_stack
    push ds
    push eax
    push edx
    mov eax, KDATA
    mov ds, eax
    mov esi, m_gp_cs
    mov edx, [esp + 20]         ; saved CS (above edx, eax, ds, error code, EIP)
    and edx, 3
    cmp edx, 3
    jne kfail
    mov edx, [esp + 16]         ; saved EIP: #GP is a fault, it points at the culprit
    movzx eax, byte [edx]
    cmp eax, 0xFA               ; CLI
    je .cli
    cmp eax, 0xCD               ; INT imm8
    je .int
    mov esi, m_gp_what
    jmp kfail
.cli:
    mov esi, m_gp_err_cli
    cmp dword [esp + 12], 0     ; #GP(0)
    jne kfail
    inc dword [gp_cli]
    add dword [esp + 16], 1     ; skip the 1-byte CLI
    jmp .out
.int:
    mov esi, m_gp_err_int
    cmp dword [esp + 12], 0x20 * 8 + 2   ; index 0x20, IDT bit (1), EXT 0
    jne kfail
    inc dword [gp_int]
    add dword [esp + 16], 2     ; skip CD 20
.out:
    pop edx
    pop eax
    pop ds
    add esp, 4                  ; drop the error code before IRET
    iret
.bad_stack:
    mov eax, KDATA
    mov ds, eax
    mov esi, m_gp_stack
    jmp kfail

timer_handler:
    inc dword [ticks]
    iret

de_handler:
    mov esi, m_de
    jmp kfail
ud_handler:
    mov esi, m_ud
    jmp kfail
pf_handler:
    mov esi, m_pf
    jmp kfail

; ---------------------------------------------------------------- ring 3
user:
    mov eax, ds                 ; IRET to ring 3 nulled the DPL-0 DS
    mov edi, eax
    mov eax, UDATA
    mov ds, eax
    mov es, eax
    mov ebx, u_ds_null
    test edi, edi
    jnz ufail
    mov eax, cs                 ; CS.RPL is the CPL
    and eax, 3
    mov ebx, u_cpl
    cmp eax, 3
    jne ufail

    mov eax, SYS_WRITE
    mov ebx, hello
    mov ecx, hello_end - hello
    mov esi, 0x12345678
    int 0x80
    mov ebx, u_write_ret
    cmp eax, hello_end - hello
    jne ufail
    mov ebx, u_regs
    cmp esi, 0x12345678
    jne ufail
    cmp esp, USTACK             ; IRET gave the ring-3 stack back
    jne ufail

    mov eax, SYS_GETPID
    int 0x80
    mov ebx, u_getpid
    cmp eax, PID
    jne ufail

    cli                         ; CPL 3 > IOPL 0: #GP(0); the kernel skips it
    pushf
    pop eax
    mov ebx, u_if
    test eax, EFLAGS_IF         ; CLI had no effect
    jz ufail
    mov ebx, u_gp_cli
    cmp dword [gp_cli], 1
    jne ufail

    int 0x20                    ; DPL-0 gate: #GP(0x102), the handler never runs
    mov ebx, u_gp_int
    cmp dword [gp_int], 1
    jne ufail
    mov ebx, u_ticks
    cmp dword [ticks], 0
    jne ufail

    mov eax, SYS_GETPID         ; a third syscall, so the kernel's count is 4 at exit
    int 0x80
    mov eax, SYS_EXIT
    int 0x80
ufail:
    mov eax, SYS_FAIL
    int 0x80

; ---------------------------------------------------------------- data

syscalls:   dd 0
gp_cli:     dd 0
gp_int:     dd 0
ticks:      dd 0

hello:      db "hello from ring 3", 10
hello_end:
m_pass:         db "PASS rings", 10, 0
m_fail:         db "FAIL rings ", 0
m_cs_reload:    db "far jmp did not load CS", 0
m_sys_stack:    db "syscall ESP is not TSS.ESP0 - 20", 0
m_sys_cs:       db "syscall saved CS.RPL != 3", 0
m_sys_ss:       db "syscall saved SS != UDATA", 0
m_sys_if:       db "interrupt gate left IF set", 0
m_sys_bad:      db "unknown syscall", 0
m_exit_gp:      db "wrong #GP counts at exit", 0
m_exit_calls:   db "wrong syscall count at exit", 0
m_gp_stack:     db "#GP ESP is not TSS.ESP0 - 24", 0
m_gp_cs:        db "#GP saved CS.RPL != 3", 0
m_gp_what:      db "#GP from an unexpected instruction", 0
m_gp_err_cli:   db "#GP error code for CLI != 0", 0
m_gp_err_int:   db "#GP error code for INT 0x20 != 0x102", 0
m_de:           db "unexpected #DE", 0
m_ud:           db "unexpected #UD", 0
m_pf:           db "unexpected #PF", 0
u_ds_null:      db "IRET did not null DS", 0
u_cpl:          db "CS.RPL != 3 in user mode", 0
u_write_ret:    db "write returned the wrong count", 0
u_regs:         db "syscall clobbered ESI or ESP", 0
u_getpid:       db "getpid != 42", 0
u_if:           db "CLI at ring 3 cleared IF", 0
u_gp_cli:       db "CLI did not #GP", 0
u_gp_int:       db "INT 0x20 did not #GP", 0
u_ticks:        db "INT 0x20 reached its DPL-0 handler", 0

; IDT gates for set_gates (lib.s): vector, handler, access byte; -1 ends the list
align 4
idt_gates:
    dd 0, de_handler, INTGATE0
    dd 6, ud_handler, INTGATE0
    dd 13, gp_handler, INTGATE0
    dd 14, pf_handler, INTGATE0
    dd 0x20, timer_handler, INTGATE0
    dd 0x80, syscall, INTGATE3              ; DPL 3: ring 3 may use it with INT n
    dd -1
