; lib.s -- the support code the ring-0 guest kernels share.
;
; hvsim's assembler has no %include: tests/test_guests.py links a guest by assembling
; its source + "\n" + this file (guest_source() there), so everything below lands
; after the guest's own code and data. triple.s alone links nothing: it has no GDT, no
; stack and an IDTR of its own (limit 0) on purpose.
;
; The including guest must define:
;   kmain:  where start hands over
;   m_fail: db "FAIL <guest> ", 0   -- the prefix kfail prints
; It must not define the constants and labels below (start, set_gate, set_gates, kfail,
; puts, gdtr, idtr, gdt, gdt_end, tss, tss_end). The GDT and TSS are every guest's:
; ring-0 guests ignore the ring-3 entries and the TSS (they never load TR).

; The machine layout every guest shares (equ may be used before it is defined).
KCODE       equ 0x08            ; GDT[1] ring-0 code (the GDT at the end of this file)
KDATA       equ 0x10            ; GDT[2] ring-0 data
UCODE       equ 0x18 | 3        ; GDT[3] ring-3 code, RPL 3
UDATA       equ 0x20 | 3        ; GDT[4] ring-3 data, RPL 3
TSS_SEL     equ 0x28            ; GDT[5] 32-bit TSS
IDT         equ 0x8000          ; 256 gates, zeroed memory = not present
KSTACK      equ 0x20000         ; TSS.ESP0: the ring-0 stack top, ESP after start
USTACK      equ 0x30000         ; the ring-3 stack top
INTGATE0    equ 0x8E            ; gate access byte: P=1 DPL=0 type 0xE (32-bit interrupt gate)
INTGATE3    equ 0xEE            ; P=1 DPL=3 type 0xE: INT n allowed from ring 3
EFLAGS_IF   equ 0x200
PORT        equ 0xE9            ; the console port

; start: the entry point (the assembler makes the label 'start' the program's entry).
; Loads the guest's GDT, reloads CS through a far JMP (a plain MOV cannot load CS),
; then DS ES SS with KDATA and ESP = KSTACK, and jumps to kmain with eax = KDATA.
; FS and GS keep what the machine reset them to. The IDT is kmain's business.
start:
    lgdt [gdtr]
    jmp KCODE:.reload           ; far JMP: CS now comes from the guest's GDT
.reload:
    mov eax, KDATA
    mov ds, eax
    mov es, eax
    mov ss, eax
    mov esp, KSTACK
    jmp kmain

; set_gate: IDT[eax] = 32-bit gate to KCODE:ebx with access byte cl
;   (0x8E: P=1 DPL=0 interrupt gate, 0xEE: DPL=3, 0x0E: not present).
;   low dword  = selector << 16 | offset 15:0
;   high dword = offset 31:16 << 16 | access << 8
; Clobbers ecx, edx.
set_gate:
    mov edx, ebx
    and edx, 0xFFFF
    or edx, KCODE << 16
    mov [IDT + eax*8], edx
    mov edx, ebx
    and edx, 0xFFFF0000
    shl ecx, 8
    or edx, ecx
    mov [IDT + eax*8 + 4], edx
    ret

; set_gates: set_gate for each (vector, handler, access) dword triple at esi, up to a
;   vector of -1. Clobbers eax, ebx, ecx, edx, esi.
set_gates:
    mov eax, [esi]
    cmp eax, -1
    je .done
    mov ebx, [esi + 4]
    mov ecx, [esi + 8]
    call set_gate
    add esi, 12
    jmp set_gates
.done:
    ret

; kfail: print m_fail, the NUL-terminated reason at esi and a newline; halt for good.
; Ring 0 only, needs a stack. CLI first, so that no timer tick wakes the HLT and runs
; on past it (timer.s); in the other guests IF is already 0 here.
kfail:
    cli
    push esi
    mov esi, m_fail
    call puts
    pop esi
    call puts
    mov al, 10
    out PORT, al
    hlt

; puts: write the NUL-terminated string at esi to PORT. Clobbers al, esi.
puts:
    mov al, [esi]
    test al, al
    jz .done
    out PORT, al
    inc esi
    jmp puts
.done:
    ret

; LGDT / LIDT operands: 16-bit limit, 32-bit linear base.
gdtr:
    dw gdt_end - gdt - 1
    dd gdt
idtr:
    dw 256 * 8 - 1              ; all 256 gates; the guests leave unused ones zero (P=0)
    dd IDT

; The GDT (SDM Vol. 3A, 3.4.5, Figure 3-8): flat 4 GiB segments for rings 0 and 3 and a
; 32-bit TSS. KCODE must be 0x08 and KDATA 0x10; ring-3 guests use 0x18|3, 0x20|3, 0x28.
align 8
gdt:
    dd 0, 0                                     ; 0x00 null
    dd 0x0000FFFF, 0x00CF9A00                   ; 0x08 code DPL0: base 0, 4 GiB, execute/read
    dd 0x0000FFFF, 0x00CF9200                   ; 0x10 data DPL0: read/write
    dd 0x0000FFFF, 0x00CFFA00                   ; 0x18 code DPL3
    dd 0x0000FFFF, 0x00CFF200                   ; 0x20 data DPL3
    dw tss_end - tss - 1, tss & 0xFFFF          ; 0x28 TSS: limit 15:0, base 15:0
    db (tss >> 16) & 0xFF, 0x89, 0, tss >> 24   ;      base 23:16, P DPL0 type 9, base 31:24
gdt_end:

align 4
tss:                            ; 32-bit TSS (SDM Vol. 3A, Figure 7-2)
    dd 0                        ; 0: previous task link
    dd KSTACK                   ; 4: ESP0
    dd KDATA                    ; 8: SS0
    times 22 dd 0               ; 12..99: ESP1..LDT selector
    dw 0                        ; 100: T
    dw 104                      ; 102: I/O map base past the limit: no bitmap
tss_end:
