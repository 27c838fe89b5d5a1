; kernel.s -- the teaching kernel of lesson 02, "the x86 hole".
;
; A tiny kernel written as if it owned the machine: it loads an IDT, programs the
; timer, prints on the console, enables interrupts and drops to a ring-3 user program
; (user.s, appended after this file by hvsim.guests.teaching_kernel) that makes
; INT 0x80 system calls. Under hvsim's trap-and-emulate monitor
; (hvsim/rings/monitor.py) it runs *deprivileged, in ring 1*, with IOPL = 0, so
;
;   LIDT, OUT, IN, CLI, STI, HLT   are privileged at CPL 1 > 0 = IOPL: each one
;                                  raises #GP(0), the monitor decodes it and emulates
;                                  it on a *virtual* CPU (virtual IF, virtual IDTR,
;                                  a virtual console and timer);
;   PUSHF, POPF, IRET              are not: at CPL 1 they run on the real CPU, where
;                                  POPF and IRET silently keep IF (SDM Vol. 2B, POPF;
;                                  Vol. 2A, IRET). That is the x86 hole.
;
; The critical section in sys_ticks is Linux's local_irq_save / local_irq_restore:
;     pushf ; cli ; ...shared data... ; popf
; CLI traps and the monitor clears the virtual IF. POPF should set it again -- but it
; does not trap, the monitor never learns, and the virtual IF stays 0: from then on
; the monitor holds every timer tick pending and the tick count freezes, while the
; program keeps running. With the machine's `virtualizable` switch on, POPF (and PUSHF,
; IRET) trap at CPL > 0 too, the monitor emulates them, and the ticks keep coming
; (Popek & Goldberg, CACM 17(7), 1974, theorem 1).
;
; Every gate is a *trap* gate (type 0xF: IF is not cleared on entry, SDM Vol. 3A,
; 6.12.1.3), as Linux's INT 0x80 gate was. With interrupt gates the monitor would clear
; the virtual IF on each entry and the native IRET could not set it back: IRET has the
; same hole as POPF, and this demo is about POPF.
;
; The handlers do not reload DS: a user program must load a flat data selector
; (UDATA) before anything else, since IRET to ring 3 nulls the kernel's (user.s does).
;
; The kernel's code and data segments are the ring-1 ones of the monitor's GDT
; (hvsim/rings/setup.py layout): its gates name KCODE. The monitor enters `start` in
; ring 1 with ESP on the ring-1 stack, which is also TSS.SS1:ESP1, the stack every
; entry from ring 3 lands on.

KCODE       equ 0x19            ; GDT[3]: flat code, DPL 1, RPL 1
UCODE       equ 0x3B            ; GDT[7]: flat code, DPL 3, RPL 3
UDATA       equ 0x43            ; GDT[8]: flat data, DPL 3, RPL 3
VIDT        equ 0x30000         ; the kernel's IDT: 256 gates, zeroed = not present
USTACK      equ 0x80000         ; the user program's stack top
PORT        equ 0xE9            ; console (the Bochs/QEMU debug port)
TIMER       equ 0x40            ; timer period, in instructions (dword OUT)
PERIOD      equ 150
TRAPGATE    equ 0x8F            ; P=1 DPL=0 type 0xF: 32-bit trap gate
SYSGATE     equ 0xEF            ; P=1 DPL=3 type 0xF: ring 3 may INT 0x80
TIMER_VEC   equ 0x20
SYSCALL_VEC equ 0x80
SYS_WRITE   equ 1               ; ebx = buffer, ecx = length -> eax = length
SYS_TICKS   equ 2               ; -> eax = ticks (read in a pushf/cli/popf section)
SYS_SLEEP   equ 3               ; -> eax = ticks, after waiting for the next one (HLT)
SYS_ONFAULT equ 4               ; ebx = where to resume the program after a fault

start:
    lidt [idtr]                 ; traps: the monitor records the virtual IDTR
    mov eax, 0                  ; #DE
    mov ebx, de_handler
    call set_gate
    mov eax, TIMER_VEC
    mov ebx, timer
    call set_gate
    mov eax, SYSCALL_VEC
    mov ebx, syscall
    call set_gate
    mov byte [VIDT + SYSCALL_VEC*8 + 5], SYSGATE    ; DPL 3: a system call gate

    mov eax, PERIOD
    out TIMER, eax              ; traps: the monitor starts its timer
    mov esi, m_boot
    call puts                   ; one trap per character
    sti                         ; traps: virtual IF = 1

    ; to ring 3: IRET pops EIP, CS, EFLAGS and, to an outer ring, ESP and SS
    push UDATA
    push USTACK
    pushf
    push UCODE
    push user
    iret

; timer tick (vector 0x20)
timer:
    inc dword [ticks]
    iret

; INT 0x80: the system calls, number in eax
syscall:
    cmp eax, SYS_WRITE
    je sys_write
    cmp eax, SYS_TICKS
    je sys_ticks
    cmp eax, SYS_SLEEP
    je sys_sleep
    cmp eax, SYS_ONFAULT
    je sys_onfault
    mov eax, -1                 ; unknown system call
    iret

sys_write:
    push esi
    push ecx
    mov esi, ebx
.next:
    test ecx, ecx
    jz .done
    mov al, [esi]
    out PORT, al                ; traps: the monitor's virtual console
    inc esi
    dec ecx
    jmp .next
.done:
    pop eax                     ; the length: bytes written
    pop esi
    iret

sys_ticks:
    pushf                       ; save IF ...
    cli                         ; traps: virtual IF = 0, no tick can interleave
    mov eax, [ticks]
    mov [seen_ticks], eax       ; a consistent (ticks, calls) pair
    inc dword [calls]
    popf                        ; ... and restore it. At ring 1 this cannot change IF,
    iret                        ; and it does not trap: the monitor never knows.

sys_sleep:
    mov ebx, [ticks]
.wait:
    hlt                         ; traps: the monitor idles until the next tick
    cmp ebx, [ticks]
    je .wait
    mov eax, [ticks]
    iret

sys_onfault:
    mov [onfault], ebx
    xor eax, eax
    iret

; #DE (vector 0): resume the program at its fault handler, or stop the machine
de_handler:
    push eax
    mov eax, [esp + 4]          ; the frame: EIP of the DIV, CS, EFLAGS, ESP, SS
    mov [de_eip], eax
    inc dword [de_count]
    mov eax, [onfault]
    test eax, eax
    jz .panic
    mov [esp + 4], eax          ; IRET will return there
    pop eax
    iret
.panic:
    mov esi, m_panic
    call puts
    cli
    hlt                         ; IF = 0: stopped for good

; set_gate: VIDT[eax] = trap gate to KCODE:ebx (DPL 0). Clobbers edx.
;   low dword  = selector << 16 | offset 15:0      (SDM Vol. 3A, Figure 6-2)
;   high dword = offset 31:16 << 16 | P DPL 0 type << 8
set_gate:
    mov edx, ebx
    and edx, 0xFFFF
    or edx, KCODE << 16
    mov [VIDT + eax*8], edx
    mov edx, ebx
    and edx, 0xFFFF0000
    or edx, TRAPGATE << 8
    mov [VIDT + eax*8 + 4], edx
    ret

; puts: write the NUL-terminated string at esi to the console. Clobbers al, esi.
puts:
    mov al, [esi]
    test al, al
    jz .done
    out PORT, al
    inc esi
    jmp puts
.done:
    ret

idtr:
    dw 256 * 8 - 1              ; LIDT operand: 16-bit limit, 32-bit base
    dd VIDT
ticks:      dd 0                ; timer ticks the kernel has seen
calls:      dd 0                ; SYS_TICKS calls (critical sections entered)
seen_ticks: dd 0
onfault:    dd 0
de_eip:     dd 0
de_count:   dd 0
m_boot:     db "kernel up", 10, 0
m_panic:    db "kernel panic: divide error", 10, 0
