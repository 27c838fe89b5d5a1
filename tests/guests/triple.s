; triple.s -- a kernel with an empty IDT: the first exception shuts the machine down.
;
; LIDT with limit 0 leaves no gate at all. UD2 raises #UD; its gate is beyond the IDT
; limit, so delivering it raises #GP(6*8+2+1) (IDT bit, EXT bit: SDM Vol. 3A, 6.13).
; #UD is benign, so the #GP is delivered next; its gate is missing too: #GP during #GP
; is a double fault (Table 6-5); #DF's gate is missing as well: a fault while
; delivering #DF is a triple fault, and the processor shuts down (6.15, interrupt 8).
; There is no PASS line: the test checks the 'shutdown' event and the counters.

PORT        equ 0xE9

start:
    lidt [idtr]
    mov esi, msg
.next:
    mov al, [esi]
    test al, al
    jz .done
    out PORT, al
    inc esi
    jmp .next
.done:
    ud2
    mov al, '!'                 ; never runs
    out PORT, al
    hlt

idtr:
    dw 0
    dd 0
msg:
    db "no IDT", 10, 0
