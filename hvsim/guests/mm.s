; mm.s -- memory-management workloads: one paging kernel, run unchanged natively, under
; shadow paging and under EPT (issue 14, part 3). hvsim.guests.mm_kernel assembles it at
; 1000H with the workloads chosen; hvsim/workloads.py runs it and compares the results.
;
; The kernel turns on 32-bit paging (4 KiB pages, CR0.WP = 1: its own writes to read-only
; pages fault), then runs the workloads selected by the bit mask WORKLOAD, in this order:
;
;   W_FORK    process creation: ROUNDS times build a fresh page directory (sharing the
;             kernel's identity page table) and page table, map N_PAGES fresh frames at
;             WBASE, MOV CR3 to it, write [lin] = lin + round every STRIDE bytes of every
;             page, read it all back into the checksum, MOV CR3 back, tear it down and
;             return every frame to the pool (the next round gets the same frames);
;   W_CTXSW   context switches: K_SPACES address spaces, each with PAGES_PER pages at the
;             same linear addresses (different frames), page p of space s starting as
;             WBASE + 4096p + s; ROUNDS times, for each space: MOV CR3, then for each
;             page read its first dword into the checksum and write it back plus one;
;   W_WSS     a working set larger than the TLB (64 entries by default): WS_PAGES pages
;             at WBASE in the kernel's directory, page p starting as WBASE + 4096p,
;             scanned ROUNDS times as in W_CTXSW;
;   W_DEMAND  demand paging: page i of the unmapped region DEMAND_BASE is touched at
;             offset (i * 104H) & FFCH, read if i is even, written (its linear address)
;             if odd -- one not-present #PF each, served with a zeroed frame -- then all
;             are read back; and COW_PAGES read-only pages at COW_BASE, page c holding
;             lin + 1 at the same offsets, are read, then written (lin + 2) -- one
;             protection #PF each (error code P|W), made writable -- and read back;
;   W_COMPUTE a paging-on arithmetic loop: ITER steps of x = x * 1103515245 + 12345
;             (x starts at 1), sum = rol(sum ^ (x >> 16), 5) + x.
;
; After its touch phases each workload counts the A and D bits of its own PTEs.
;
; Where it runs. Natively in ring 0 on its own IDT; under the trap-and-emulate monitor in
; ring 1, where LIDT, MOV CR0/CR2/CR3, INVLPG, OUT, CLI and HLT trap; under VT-x in ring 0
; of VMX non-root operation. So it reads its code selector (MOV EAX, CS) for its gates,
; never loads a segment register, never uses PUSHF/POPF, and IRETs only from its #PF
; handler, to the same ring. Its gates are trap gates: IF is 0 throughout and no gate
; changes it. It changes page-table entries with MOV r/m32, r32 and MOV r/m32, imm32
; only (what a shadow-paging monitor emulates), INVLPGs a present entry it changes, and
; reloads CR3 after a teardown. Frames are zeroed with MOV stores too, never REP STOSD.
;
; Memory (physical = linear below 1 MiB: every directory maps the low 1 MiB to itself,
; supervisor, RW, with A and D preset as Linux's kernel mappings have them, so that the
; hardware never changes those entries):
;   0 .. 1000H          the monitors' GDT and TSS (not touched)
;   1000H ..            this kernel's code and data (the pool stack, the spaces table)
;   10000H .. 10800H    the monitors' IDT (not touched)
;   20000H              KIDT, this kernel's IDT (its gates hold the code selector, which
;                       differs between hosts: outside the compared areas)
;   21000H              RESULTS (below)
;   22000H              KPD, the kernel's page directory;  23000H KPT0, its identity table
;   28000H .. D8000H    the frame pool: directories, page tables and data frames
;   D8000H .. DC000H    the kernel stack (ESP = DC000H at start)
;   E0000H .. 100000H   the monitors' ring stacks (not touched)
; Workload pages live at linear 4 MiB and up: WBASE (PDE 1), DEMAND_BASE (PDE 2),
; COW_BASE (PDE 3); nothing at or above FFC00000H (the software monitor's 4 MiB).
;
; RESULTS, dwords (all zero at start):
;   +00H  status: 600DH done; BAD1H unexpected #PF; BAD2H another exception; BAD3H the
;         frame pool ran dry
;   +04H  WORKLOAD (the mask run)
;   +08H  free frames at start     +0CH  free frames at the end   +10H  fewest free
;   +14H  #PF taken (all)          +18H  fault-log entries dropped (log full)
;   +1CH  on a failure: vector     +20H  CR2     +24H  error code     +28H  EIP
;   +40H  one 16-byte record per workload, in the order fork, ctxsw, wss, demand,
;         compute: checksum, A bits counted, D bits counted, aux --
;           fork:    frames not returned to the pool (0: no leak)
;           ctxsw:   frames taken from the pool
;           wss:     frames taken from the pool
;           demand:  #PFs taken during the workload
;           compute: the final x
;   +100H the fault log: LOG_CAP (CR2, error code) pairs, in the order taken
; At the halt: EAX = status, EBX = sum of the checksums, ECX = #PF count, EDX = free
; frames, ESI = A bits counted, EDI = D bits counted, EBP = WORKLOAD.

; ---- the workloads and their parameters (hvsim.guests.mm_kernel overrides these) ----
WORKLOAD    equ 31              ; a mask of the W_ bits below
ROUNDS      equ 4               ; fork rounds; ctxsw and wss scans
N_PAGES     equ 8               ; fork: pages per child
STRIDE      equ 256             ; fork: bytes between the dwords written
K_SPACES    equ 4               ; ctxsw: address spaces (at most MAX_SPACES)
PAGES_PER   equ 8               ; ctxsw: pages per space
WS_PAGES    equ 80              ; wss: pages in the working set
N_DEMAND    equ 16              ; demand: pages faulted in
COW_PAGES   equ 4               ; demand: read-only pages written
ITER        equ 10000           ; compute: loop steps

W_FORK      equ 1
W_CTXSW     equ 2
W_WSS       equ 4
W_DEMAND    equ 8
W_COMPUTE   equ 16

; ---- layout ----
KIDT        equ 0x20000
RESULTS     equ 0x21000
RESULTS_SIZE equ 0x100 + LOG_CAP * 8
KPD         equ 0x22000
KPT0        equ 0x23000
POOL_BASE   equ 0x28000
POOL_END    equ 0xD8000
POOL_FRAMES equ (POOL_END - POOL_BASE) >> 12
KSTACK      equ 0xDC000
LOW_PAGES   equ 256             ; the identity-mapped low 1 MiB, in 4 KiB pages
MAX_SPACES  equ 16
LOG_CAP     equ 64
WBASE       equ 0x00400000
DEMAND_BASE equ 0x00800000
COW_BASE    equ 0x00C00000

R_STATUS    equ RESULTS + 0x00
R_WORKLOAD  equ RESULTS + 0x04
R_POOL0     equ RESULTS + 0x08
R_POOL1     equ RESULTS + 0x0C
R_POOL_MIN  equ RESULTS + 0x10
R_FAULTS    equ RESULTS + 0x14
R_DROPPED   equ RESULTS + 0x18
R_BAD_VEC   equ RESULTS + 0x1C
R_BAD_CR2   equ RESULTS + 0x20
R_BAD_ERR   equ RESULTS + 0x24
R_BAD_EIP   equ RESULTS + 0x28
R_FORK      equ RESULTS + 0x40
R_CTXSW     equ RESULTS + 0x50
R_WSS       equ RESULTS + 0x60
R_DEMAND    equ RESULTS + 0x70
R_COMPUTE   equ RESULTS + 0x80
R_LOG       equ RESULTS + 0x100

STATUS_OK   equ 0x600D
STATUS_BADPF equ 0xBAD1
STATUS_EXC  equ 0xBAD2
STATUS_POOL equ 0xBAD3

; ---- architecture (SDM Vol. 3A) ----
; a 32-bit PDE/PTE (Figures 4-4, Tables 4-5 and 4-6):
;   31            12 11  9  8   7   6   5   4   3   2   1   0
;   | frame         | AVL | G |PAT| D | A |PCD|PWT|U/S|R/W| P |
PTE_P       equ 1
PTE_RW      equ 2
PTE_A       equ 0x20
PTE_D       equ 0x40
PTE_FRAME   equ 0xFFFFF000
KERNEL_PTE  equ PTE_D | PTE_A | PTE_RW | PTE_P
KERNEL_PDE  equ PTE_A | PTE_RW | PTE_P
PF_P        equ 1               ; #PF error code (Figure 4-12): protection, not absence
PF_W        equ 2               ; a write
CR0_WP      equ 0x10000
CR0_PG      equ 0x80000000
TRAPGATE    equ 0x8F            ; P=1 DPL=0 type 0xF: 32-bit trap gate (Figure 6-2)
PORT        equ 0xE9            ; the console

start:
    mov esp, KSTACK
    mov eax, cs                 ; ring 0 natively and under VT-x, ring 1 under a monitor
    and eax, 0xFFFF
    mov edx, eax
    mov esi, gates
.gate:
    mov eax, [esi]
    cmp eax, -1
    je .gates_done
    mov ebx, [esi + 4]
    call set_gate
    add esi, 8
    jmp .gate
.gates_done:
    lidt [idtr]
    mov dword [R_WORKLOAD], WORKLOAD

    ; the frame pool: a stack of free frames, the lowest on top
    mov eax, POOL_END
    xor edi, edi
.pool:
    sub eax, 0x1000
    mov [pool_stack + edi*4], eax
    inc edi
    cmp eax, POOL_BASE
    jne .pool
    mov [pool_count], edi
    mov [R_POOL0], edi
    mov [R_POOL_MIN], edi

    ; the kernel's directory: PDE 0 -> KPT0, the low 1 MiB mapped to itself
    mov edi, KPD
    call zero_page
    mov edi, KPT0
    call zero_page
    xor ecx, ecx
    mov eax, KERNEL_PTE
.ident:
    mov [KPT0 + ecx*4], eax
    add eax, 0x1000
    inc ecx
    cmp ecx, LOW_PAGES
    jne .ident
    mov dword [KPD], KPT0 | KERNEL_PDE
    mov eax, KPD
    mov cr3, eax
    mov eax, cr0
    or eax, CR0_PG | CR0_WP
    mov cr0, eax

    mov eax, WORKLOAD
    test eax, W_FORK
    jz .no_fork
    call fork
.no_fork:
    mov eax, WORKLOAD
    test eax, W_CTXSW
    jz .no_ctxsw
    call ctxsw
.no_ctxsw:
    mov eax, WORKLOAD
    test eax, W_WSS
    jz .no_wss
    call wss
.no_wss:
    mov eax, WORKLOAD
    test eax, W_DEMAND
    jz .no_demand
    call demand
.no_demand:
    mov eax, WORKLOAD
    test eax, W_COMPUTE
    jz finish
    call compute

finish:
    mov eax, [pool_count]
    mov [R_POOL1], eax
    mov dword [R_STATUS], STATUS_OK
    mov esi, m_ok
    call puts
    xor ebx, ebx                ; the result registers (see the header)
    xor esi, esi
    xor edi, edi
    mov edx, R_FORK
    mov ecx, 5
.sum:
    add ebx, [edx]
    add esi, [edx + 4]
    add edi, [edx + 8]
    add edx, 16
    dec ecx
    jnz .sum
    mov eax, [R_STATUS]
    mov ecx, [R_FAULTS]
    mov edx, [R_POOL1]
    mov ebp, WORKLOAD
    cli
    hlt                         ; IF = 0: the end of the run in every host

; ---- fork: create, use and destroy an address space, ROUNDS times ----
fork:
    mov eax, [pool_count]
    mov [pool_mark], eax
    xor ebp, ebp                ; ebp = the round
.round:
    mov ecx, N_PAGES
    call new_space              ; eax = directory, ebx = page table
    mov [child_pd], eax
    mov cr3, eax                ; into the child
    mov esi, WBASE
.write:
    mov eax, esi
    add eax, ebp
    mov [esi], eax
    add esi, STRIDE
    cmp esi, WBASE + N_PAGES * 4096
    jne .write
    mov esi, WBASE
    mov edx, [R_FORK]
.read:
    add edx, [esi]
    add esi, STRIDE
    cmp esi, WBASE + N_PAGES * 4096
    jne .read
    mov [R_FORK], edx
    mov esi, ebx
    mov ecx, N_PAGES
    mov edi, R_FORK
    call count_ad
    mov eax, KPD
    mov cr3, eax                ; back in the parent, which reaps the child:
    mov ecx, N_PAGES            ; frames back to the pool, last mapped first
.teardown:
    dec ecx
    mov eax, [ebx + ecx*4]
    mov dword [ebx + ecx*4], 0
    and eax, PTE_FRAME
    call free_frame
    test ecx, ecx
    jnz .teardown
    mov eax, [child_pd]
    mov dword [eax + (WBASE >> 22) * 4], 0
    mov dword [eax], 0
    mov eax, ebx
    call free_frame             ; the page table
    mov eax, [child_pd]
    call free_frame             ; the directory
    mov eax, KPD
    mov cr3, eax                ; a bulk change: drop every cached translation
    inc ebp
    cmp ebp, ROUNDS
    jne .round
    mov eax, [pool_mark]
    sub eax, [pool_count]
    mov [R_FORK + 12], eax
    ret

; ---- ctxsw: K_SPACES address spaces, visited in turn ROUNDS times ----
ctxsw:
    mov eax, [pool_count]
    mov [pool_mark], eax
    xor ebp, ebp                ; ebp = the space
.make:
    mov ecx, PAGES_PER
    call new_space
    mov [spaces + ebp*4], eax
    mov cr3, eax
    mov esi, WBASE
.init:
    mov eax, esi
    add eax, ebp
    mov [esi], eax
    add esi, 4096
    cmp esi, WBASE + PAGES_PER * 4096
    jne .init
    inc ebp
    cmp ebp, K_SPACES
    jne .make
    xor edx, edx                ; edx = the checksum
    xor ebx, ebx                ; ebx = the round
.round:
    xor ebp, ebp
.space:
    mov eax, [spaces + ebp*4]
    mov cr3, eax
    mov ecx, PAGES_PER
    call visit
    inc ebp
    cmp ebp, K_SPACES
    jne .space
    inc ebx
    cmp ebx, ROUNDS
    jne .round
    mov [R_CTXSW], edx
    mov eax, KPD
    mov cr3, eax
    xor ebp, ebp
.ad:
    mov esi, [spaces + ebp*4]
    mov esi, [esi + (WBASE >> 22) * 4]
    and esi, PTE_FRAME
    mov ecx, PAGES_PER
    mov edi, R_CTXSW
    call count_ad
    inc ebp
    cmp ebp, K_SPACES
    jne .ad
    mov eax, [pool_mark]
    sub eax, [pool_count]
    mov [R_CTXSW + 12], eax
    ret

; visit: ecx pages from WBASE, one dword each: edx += the page's first dword, which is
; then incremented (a read and a write per page). Clobbers eax, ecx, esi.
visit:
    mov esi, WBASE
.page:
    mov eax, [esi]
    add edx, eax
    inc eax
    mov [esi], eax
    add esi, 4096
    loop .page
    ret

; ---- wss: WS_PAGES pages in the kernel's directory, scanned ROUNDS times ----
wss:
    mov eax, [pool_count]
    mov [pool_mark], eax
    call alloc_frame
    mov edi, eax
    call zero_page
    mov ebx, eax                ; ebx = the page table
    mov ecx, WS_PAGES
    call map_fresh
    mov eax, ebx
    or eax, PTE_RW | PTE_P
    mov [KPD + (WBASE >> 22) * 4], eax  ; not present before: nothing cached to drop
    mov esi, WBASE
.init:
    mov [esi], esi
    add esi, 4096
    cmp esi, WBASE + WS_PAGES * 4096
    jne .init
    xor edx, edx
    xor ebp, ebp
.round:
    mov ecx, WS_PAGES
    call visit
    inc ebp
    cmp ebp, ROUNDS
    jne .round
    mov [R_WSS], edx
    mov esi, ebx
    mov ecx, WS_PAGES
    mov edi, R_WSS
    call count_ad
    mov eax, [pool_mark]
    sub eax, [pool_count]
    mov [R_WSS + 12], eax
    ret

; ---- demand: not-present faults served on demand, then copy-on-write faults ----
demand:
    mov eax, [R_FAULTS]
    mov [fault_mark], eax
    call alloc_frame            ; the demand region: an empty page table
    mov edi, eax
    call zero_page
    mov [demand_pt], eax
    or eax, PTE_RW | PTE_P
    mov [KPD + (DEMAND_BASE >> 22) * 4], eax
    call alloc_frame            ; the copy-on-write region: read-only pages
    mov edi, eax
    call zero_page
    mov ebx, eax
    mov [cow_pt], eax
    xor ebp, ebp
.cow_map:
    call alloc_frame
    mov edi, eax
    call zero_page
    call touch_offset           ; ecx = (ebp * 104H) & FFCH
    add edi, ecx
    lea edx, [COW_BASE + ecx + 1]
    mov esi, ebp
    shl esi, 12
    add edx, esi                ; edx = the page's linear address + 1
    mov [edi], edx              ; (through the identity map)
    or eax, PTE_P               ; read-only
    mov [ebx + ebp*4], eax
    inc ebp
    cmp ebp, COW_PAGES
    jne .cow_map
    mov eax, ebx
    or eax, PTE_RW | PTE_P
    mov [KPD + (COW_BASE >> 22) * 4], eax

    xor edx, edx                ; edx = the checksum
    xor ebp, ebp
.touch:                         ; one not-present #PF per page
    call touch_offset
    mov esi, ebp
    shl esi, 12
    lea esi, [DEMAND_BASE + esi + ecx]
    test ebp, 1
    jnz .write
    add edx, [esi]              ; a read: #PF(0), then 0 from the zeroed frame
    jmp .next
.write:
    mov [esi], esi              ; a write: #PF(W)
.next:
    inc ebp
    cmp ebp, N_DEMAND
    jne .touch
    xor ebp, ebp
.reread:
    call touch_offset
    mov esi, ebp
    shl esi, 12
    lea esi, [DEMAND_BASE + esi + ecx]
    add edx, [esi]
    inc ebp
    cmp ebp, N_DEMAND
    jne .reread

    xor ebp, ebp
.cow_read:
    call touch_offset
    mov esi, ebp
    shl esi, 12
    lea esi, [COW_BASE + esi + ecx]
    add edx, [esi]
    inc ebp
    cmp ebp, COW_PAGES
    jne .cow_read
    xor ebp, ebp
.cow_write:                     ; one protection #PF (P|W) per page
    call touch_offset
    mov esi, ebp
    shl esi, 12
    lea esi, [COW_BASE + esi + ecx]
    lea eax, [esi + 2]
    mov [esi], eax
    add edx, [esi]
    inc ebp
    cmp ebp, COW_PAGES
    jne .cow_write
    mov [R_DEMAND], edx

    mov esi, [demand_pt]
    mov ecx, N_DEMAND
    mov edi, R_DEMAND
    call count_ad
    mov esi, [cow_pt]
    mov ecx, COW_PAGES
    call count_ad
    mov eax, [R_FAULTS]
    sub eax, [fault_mark]
    mov [R_DEMAND + 12], eax
    ret

; touch_offset: ecx = (ebp * 104H) & FFCH, the dword of page ebp that demand touches.
touch_offset:
    mov ecx, ebp
    imul ecx, ecx, 0x104
    and ecx, 0xFFC
    ret

; ---- compute: arithmetic with paging on and almost no memory traffic ----
compute:
    mov eax, 1
    xor edx, edx
    mov ecx, ITER
.step:
    imul eax, eax, 1103515245
    add eax, 12345
    mov ebx, eax
    shr ebx, 16
    xor edx, ebx
    rol edx, 5
    add edx, eax
    dec ecx
    jnz .step
    mov [R_COMPUTE], edx
    mov [R_COMPUTE + 12], eax
    ret

; ---- the #PF handler (vector 14) ----
; On entry [esp] = the error code, then EIP, CS, EFLAGS (same ring: no ESP, SS).
pf_handler:
    push eax
    push ebx
    push ecx
    push edx
    push edi
    mov eax, cr2                ; the linear address that faulted
    mov ebx, [esp + 20]         ; the error code
    mov ecx, [R_FAULTS]
    inc dword [R_FAULTS]
    cmp ecx, LOG_CAP
    jae .log_full
    mov [R_LOG + ecx*8], eax
    mov [R_LOG + ecx*8 + 4], ebx
    jmp .logged
.log_full:
    inc dword [R_DROPPED]
.logged:
    mov edx, eax
    shr edx, 12
    and edx, 0x3FF              ; edx = the PTE index
    mov ecx, eax
    shr ecx, 22                 ; ecx = the PDE index
    cmp ecx, DEMAND_BASE >> 22
    je .demand
    cmp ecx, COW_BASE >> 22
    je .cow
    jmp .unexpected
.demand:                        ; not present: a zeroed frame
    test ebx, PF_P
    jnz .unexpected
    mov ecx, [demand_pt]
    test ecx, ecx
    jz .unexpected
    test dword [ecx + edx*4], PTE_P
    jnz .unexpected             ; present already: a spurious #PF
    call alloc_frame
    mov edi, eax
    call zero_page
    or eax, PTE_RW | PTE_P
    mov [ecx + edx*4], eax      ; not present before: nothing cached to drop
    jmp .out
.cow:                           ; a write to a read-only page: make it writable
    cmp ebx, PF_P | PF_W
    jne .unexpected
    mov ecx, [cow_pt]
    mov edi, [ecx + edx*4]
    or edi, PTE_RW
    mov [ecx + edx*4], edi
    invlpg [eax]                ; the TLB may hold the read-only translation
.out:
    pop edi
    pop edx
    pop ecx
    pop ebx
    pop eax
    add esp, 4                  ; the error code
    iret
.unexpected:
    mov [R_BAD_CR2], eax
    mov [R_BAD_ERR], ebx
    mov eax, [esp + 24]
    mov [R_BAD_EIP], eax
    mov dword [R_BAD_VEC], 14
    mov dword [R_STATUS], STATUS_BADPF
    mov esi, m_badpf
    jmp panic

; ---- any other exception: record it and stop ----
de_handler:
    mov dword [R_BAD_VEC], 0
    jmp fatal
ud_handler:
    mov dword [R_BAD_VEC], 6
    jmp fatal
df_handler:
    mov dword [R_BAD_VEC], 8
    jmp fatal_err
gp_handler:
    mov dword [R_BAD_VEC], 13
fatal_err:                      ; [esp] = the error code, then EIP
    pop dword [R_BAD_ERR]
fatal:
    pop dword [R_BAD_EIP]
    mov dword [R_STATUS], STATUS_EXC
    mov esi, m_exc
    jmp panic

pool_empty:
    mov dword [R_STATUS], STATUS_POOL
    mov esi, m_pool

; panic: print m_fail and the reason at esi; stop for good.
panic:
    push esi
    mov esi, m_fail
    call puts
    pop esi
    call puts
    cli
    hlt

; ---- helpers ----
; new_space: a fresh address space -- a zeroed directory whose PDE 0 is the kernel's
;   (the identity map, shared), and a zeroed page table at WBASE with ecx fresh frames
;   mapped from WBASE up. Returns eax = the directory, ebx = the page table.
;   Clobbers ecx, edx, edi.
new_space:
    call alloc_frame
    mov edi, eax
    call zero_page
    mov edx, eax
    mov eax, [KPD]
    mov [edx], eax
    call alloc_frame
    mov edi, eax
    call zero_page
    mov ebx, eax
    or eax, PTE_RW | PTE_P
    mov [edx + (WBASE >> 22) * 4], eax
    call map_fresh
    mov eax, edx
    ret

; map_fresh: page table ebx, entries 0 .. ecx-1 = fresh frames, supervisor RW.
;   Clobbers eax, ecx, edi.
map_fresh:
    xor edi, edi
.next:
    cmp edi, ecx
    je .done
    call alloc_frame
    or eax, PTE_RW | PTE_P
    mov [ebx + edi*4], eax
    inc edi
    jmp .next
.done:
    ret

; alloc_frame: eax = a free frame (its physical address). Stops the kernel if none.
alloc_frame:
    mov eax, [pool_count]
    test eax, eax
    jz pool_empty
    dec eax
    mov [pool_count], eax
    cmp eax, [R_POOL_MIN]
    jae .take
    mov [R_POOL_MIN], eax
.take:
    mov eax, [pool_stack + eax*4]
    ret

; free_frame: give frame eax back to the pool.
free_frame:
    push ecx
    mov ecx, [pool_count]
    mov [pool_stack + ecx*4], eax
    inc ecx
    mov [pool_count], ecx
    pop ecx
    ret

; zero_page: zero the 4 KiB at edi (identity-mapped), with MOV stores.
zero_page:
    push eax
    push ecx
    push edi
    xor eax, eax
    mov ecx, 256
.z:
    mov [edi], eax
    mov [edi + 4], eax
    mov [edi + 8], eax
    mov [edi + 12], eax
    add edi, 16
    dec ecx
    jnz .z
    pop edi
    pop ecx
    pop eax
    ret

; count_ad: of the ecx page-table entries at esi, add those with A set to [edi + 4] and
;   those with D set to [edi + 8]. Clobbers eax, ecx, esi.
count_ad:
    mov eax, [esi]
    test eax, PTE_A
    jz .no_a
    inc dword [edi + 4]
.no_a:
    test eax, PTE_D
    jz .no_d
    inc dword [edi + 8]
.no_d:
    add esi, 4
    dec ecx
    jnz count_ad
    ret

; set_gate: KIDT[eax] = a trap gate to edx:ebx (SDM Vol. 3A, Figure 6-2):
;   low dword  = selector << 16 | offset 15:0
;   high dword = offset 31:16 << 16 | P DPL type << 8
;   Clobbers ecx, edi.
set_gate:
    mov ecx, ebx
    and ecx, 0xFFFF
    mov edi, edx
    shl edi, 16
    or ecx, edi
    mov [KIDT + eax*8], ecx
    mov ecx, ebx
    and ecx, 0xFFFF0000
    or ecx, TRAPGATE << 8
    mov [KIDT + eax*8 + 4], ecx
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

; ---- data ----
idtr:
    dw 256 * 8 - 1
    dd KIDT
align 4
gates:                          ; (vector, handler) pairs; -1 ends the list
    dd 0, de_handler
    dd 6, ud_handler
    dd 8, df_handler
    dd 13, gp_handler
    dd 14, pf_handler
    dd -1
pool_count: dd 0                ; free frames: pool_stack[0 .. pool_count)
pool_mark:  dd 0
fault_mark: dd 0
child_pd:   dd 0
demand_pt:  dd 0
cow_pt:     dd 0
spaces:     times MAX_SPACES dd 0
pool_stack: times POOL_FRAMES dd 0
m_ok:       db "mm ok", 10, 0
m_fail:     db "mm FAIL ", 0
m_badpf:    db "unexpected #PF", 10, 0
m_exc:      db "unexpected exception", 10, 0
m_pool:     db "the frame pool is empty", 10, 0
