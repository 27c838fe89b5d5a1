; faults.s -- exceptions and the double fault (SDM Vol. 3A, 6.15, Tables 6-4 and 6-5).
;
;   0. INT3: #BP, a trap: the saved EIP is the instruction after the INT3.
;   1. DIV by zero: #DE, a fault: the saved EIP is the DIV itself and no error code is
;      pushed (the handler finds ESP exactly 12 bytes below the faulting ESP);
;      the handler skips the 2-byte DIV and returns.
;   2. UD2: #UD, same checks, skipped.
;   3. MOV DS with a selector beyond the GDT limit: #GP(selector). The #GP gate is
;      marked not present, so delivering it raises #NP -- contributory during
;      contributory: a double fault. The #DF handler gets error code 0 (always, per
;      Table 6-1) and, as #DF is an abort, does not return: it resumes the kernel.
; Reports "PASS faults" or "FAIL faults <why>" on port 0xE9 and halts.
; The entry point (start, then kmain here) and set_gate, kfail, puts, gdtr, idtr
; come from lib.s, appended at assembly.

GATE_NP     equ 0x0E            ; P=0: a not-present gate
BAD_SEL     equ 0xFFF8          ; far beyond the GDT's limit

kmain:                          ; from lib.s's start: flat segments, ESP = KSTACK
    mov esi, idt_gates
    call set_gates
    lidt [idtr]

    ; 0. #BP
    int3
after_int3:
    mov esi, m_bp_count
    cmp dword [bp_count], 1
    jne kfail

    ; 1. #DE
    mov [esp_before], esp
    mov eax, 1
    xor edx, edx
    xor ecx, ecx
div_insn:
    div ecx
    mov esi, m_de_count
    cmp dword [de_count], 1
    jne kfail
    mov esi, m_de_regs
    cmp eax, 1                  ; a faulting DIV leaves EAX, EDX alone
    jne kfail
    test edx, edx
    jnz kfail

    ; 2. #UD
    mov [esp_before], esp
ud_insn:
    ud2
    mov esi, m_ud_count
    cmp dword [ud_count], 1
    jne kfail

    ; 3. #GP -> #NP while delivering it -> #DF
    mov eax, BAD_SEL
bad_load:
    mov ds, eax
    mov esi, m_df_returned      ; never reached: #DF does not return here
    jmp kfail
after_df:
    mov esi, m_df_count
    cmp dword [df_count], 1
    jne kfail
    mov esi, m_df_err
    cmp dword [df_err], 0
    jne kfail
    mov esi, m_ds_kept
    mov eax, ds                 ; the faulting MOV DS had no effect
    cmp eax, KDATA
    jne kfail
    mov esi, m_pass
    call puts
    hlt

de_handler:
    push eax                    ; (keep the interrupted code's EAX)
    mov esi, m_de_eip
    cmp dword [esp + 4], div_insn   ; a fault: EIP of the DIV
    jne kfail
    mov esi, m_de_noerr
    lea eax, [esp + 16]         ; EAX, then EIP CS EFLAGS: no error code
    cmp eax, [esp_before]
    jne kfail
    inc dword [de_count]
    add dword [esp + 4], 2      ; skip F7 F1
    pop eax
    iret

ud_handler:
    push eax                    ; (keep the interrupted code's EAX)
    mov esi, m_ud_eip
    cmp dword [esp + 4], ud_insn   ; a fault: EIP of the UD2
    jne kfail
    mov esi, m_ud_noerr
    lea eax, [esp + 16]         ; EAX, then EIP CS EFLAGS: no error code
    cmp eax, [esp_before]
    jne kfail
    inc dword [ud_count]
    add dword [esp + 4], 2      ; skip 0F 0B
    pop eax
    iret

bp_handler:
    mov esi, m_bp_eip
    cmp dword [esp], after_int3 ; a trap: EIP of the next instruction
    jne kfail
    inc dword [bp_count]
    iret

df_handler:
    inc dword [df_count]
    mov eax, [esp]              ; the error code of #DF
    mov [df_err], eax
    mov esp, KSTACK             ; an abort: start the kernel stack afresh
    jmp after_df

np_handler:
    mov esi, m_np
    jmp kfail
gp_handler:
    mov esi, m_gp
    jmp kfail


esp_before: dd 0
bp_count:   dd 0
de_count:   dd 0
ud_count:   dd 0
df_count:   dd 0
df_err:     dd -1

m_pass:         db "PASS faults", 10, 0
m_fail:         db "FAIL faults ", 0
m_bp_count:     db "#BP handler did not run once", 0
m_bp_eip:       db "#BP saved EIP is not the next instruction", 0
m_de_count:     db "#DE handler did not run once", 0
m_de_regs:      db "faulting DIV changed EAX/EDX", 0
m_de_eip:       db "#DE saved EIP is not the DIV", 0
m_de_noerr:     db "#DE pushed an error code", 0
m_ud_count:     db "#UD handler did not run once", 0
m_ud_eip:       db "#UD saved EIP is not the UD2", 0
m_ud_noerr:     db "#UD pushed an error code", 0
m_df_returned:  db "execution went on after the faulting MOV DS", 0
m_df_count:     db "#DF handler did not run once", 0
m_df_err:       db "#DF error code != 0", 0
m_ds_kept:      db "the faulting MOV DS changed DS", 0
m_np:           db "#NP delivered instead of #DF", 0
m_gp:           db "#GP delivered through a not-present gate", 0

; IDT gates for set_gates (lib.s): vector, handler, access byte; -1 ends the list
align 4
idt_gates:
    dd 0, de_handler, INTGATE0
    dd 3, bp_handler, INTGATE0
    dd 6, ud_handler, INTGATE0
    dd 8, df_handler, INTGATE0
    dd 11, np_handler, INTGATE0
    dd 13, gp_handler, GATE_NP              ; present bit clear: delivering #GP faults (#NP)
    dd -1
