; lib.s -- the support code the ring-0 guest kernels share.
;
; hvsim's assembler has no %include: tests/test_guests.py links a guest by assembling
; its source + "\n" + this file (guest_source() there), so everything below lands
; after the guest's own code and data. triple.s alone links nothing: it has no GDT, no
; stack and an IDTR of its own (limit 0) on purpose.
;
; The including guest must define:
;   KCODE   equ  ring-0 code selector: CS after start, the gates' target segment
;   KDATA   equ  ring-0 data selector: DS ES SS after start
;   KSTACK  equ  the ring-0 stack top: ESP after start
;   IDT     equ  linear address of its 256-gate IDT
;   PORT    equ  the console port (0xE9)
;   gdt:    and gdt_end:  its GDT (each guest keeps its own: the layouts differ)
;   kmain:  where start hands over
;   m_fail: db "FAIL <guest> ", 0   -- the prefix kfail prints
; It must not define the labels start, set_gate, kfail, puts, gdtr, idtr.

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
