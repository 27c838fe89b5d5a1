; user.s -- the ring-3 program of the teaching kernel (kernel.s, which jumps to `user`).
;
; It talks to the kernel only through INT 0x80 (number in eax), as an old Linux
; program did: write a line, ask to be resumed at .recover after a fault, sleep until
; a timer tick, divide by zero on purpose (the CPU raises #DE; under the monitor the
; exception is *reflected* into the kernel's handler, which sends us to .recover), then
; loop for ever: some work, then SYS_TICKS, whose kernel side is the pushf/cli/popf
; critical section. `rounds` counts the loops: it keeps growing even when the tick
; count the kernel reports has frozen.

WORK        equ 400             ; LOOP iterations between two system calls

user:
    mov eax, UDATA              ; IRET to ring 3 nulled DS and ES (DPL 1 < CPL 3)
    mov ds, eax
    mov es, eax
    mov eax, SYS_WRITE
    mov ebx, m_hello
    mov ecx, m_hello_len
    int 0x80
    mov [write_ret], eax        ; the kernel's answer: bytes written
    mov eax, SYS_ONFAULT
    mov ebx, recover
    int 0x80
    mov eax, SYS_SLEEP
    int 0x80
    mov [slept_until], eax
    xor edx, edx
    mov eax, 7
    xor ecx, ecx
divide:
    div ecx                     ; 7 / 0: #DE
    mov dword [de_missed], 1    ; never reached
recover:
    mov ecx, WORK
.work:
    loop .work
    mov eax, SYS_TICKS
    int 0x80
    mov [user_ticks], eax       ; the tick count, as the kernel reports it
    inc dword [rounds]
    jmp recover

write_ret:   dd 0
slept_until: dd 0
user_ticks:  dd 0
rounds:      dd 0
de_missed:   dd 0
m_hello:     db "hello from ring 3", 10
m_hello_len equ $ - m_hello
