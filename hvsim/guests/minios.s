; minios.s -- one teaching kernel, two builds (issue 15, part 6). Named after Xen's Mini-OS,
; not derived from it. hvsim.guests.minios assembles it at 1000H with the workloads chosen;
; hvsim/pvworkloads.py runs it on every host and compares what the guest saw.
;
; The kernel's sensitive operations -- interrupts off and on, its trap table, page-table
; changes, CR3, the TLB, the console, the disk, stopping -- sit behind one layer of macros,
; the platform layer below, as Linux's sit behind pv_ops. Built as it is, each macro is
; the instruction a kernel that owns the machine executes: the kernel runs in ring 0
; natively and in VMX non-root ring 0 under VT-x (with or without EPT), and in ring 1
; under trap-and-emulate, where those instructions trap and are emulated (shadow paging
; for its tables). Built with PV defined (assemble(..., defines={"PV": 1})) each macro is
; what a kernel ported to hvsim's Xen-shaped hypervisor does instead -- a store to shared
; memory, a queued update, a hypercall -- and the kernel runs in ring 1 beside the
; hypervisor (hvsim/paravirt/hypervisor.py). The platform layer is the only place the
; two builds differ.
;
; It boots, prints a line, runs the workloads of the bit mask WORKLOAD in this order, prints
; a line and powers off:
;
;   W_SYSCALL   a ring-3 program makes N_SYSCALLS INT 80H system calls: call i (from 0)
;               is SYS_ECHO(i) -> i + 1 when i is even, SYS_ADD(i) -> the shared total
;               after adding i when odd (the kernel side: IRQ_DISABLE, update the shared
;               data, IRQ_ENABLE); it adds up the answers and ends with SYS_EXIT(sum);
;   W_PTUPDATE  page-table updates on live tables: ROUNDS times, page i of the window
;               (WINDOW, N_PTES pages) is remapped from frame A[i] to B[i] (even rounds)
;               or back (odd rounds) with PTE_SET, then PT_COMMIT, then INVLPG_ADDR per
;               page if N_PTES <= FLUSH_CEILING, else FLUSH_TLB (Linux's
;               tlb_single_page_flush_ceiling); then every window page's first dword is
;               read into the checksum and written back plus one (frame f starts holding
;               its own address f). Each round then forks: a child directory and page
;               table are built with plain stores while they are ordinary pages, handed
;               over (PT_ALLOC each, PT_PIN_L2), loaded (LOAD_CR3); the child writes
;               CHILD_VA + 4096p + round into the first dword of its page p and reads them
;               back into the fork checksum; the parent loads its own directory again,
;               takes the tables back (PT_UNPIN, PT_RELEASE) and returns every frame to
;               the pool;
;   W_IO        N_SECTORS sectors written from WBUF, where dword i of sector s is
;               s * 01000193H + i, then read back into RBUF: the checksum of RBUF
;               (c = rol(c, 1) + dword, from 0), the dwords that differ from WBUF, and a
;               console line with the checksum.
;
; Where it runs, and what it assumes of its host:
; * the GDT is the host's (hvsim/rings/setup.py layout): the kernel reads its own CS for
;   its gates, and its ring-3 program uses 3BH (code) and 43H (data), DPL 3. The
;   program loads DS = ES = 43H first and keeps them; the kernel never loads a data
;   segment, so after the first system call it runs with DS = 43H too, which ring 0 and
;   ring 1 may use as well (a flat segment; DPL 3 only lets ring 3 load it). Its handlers
;   therefore never rely on DS being the kernel's.
; * a system call enters on the stack the TSS names for the kernel's ring: natively and
;   under the monitors the host's (100000H natively and under VT-x, FC000H in ring 1 under
;   trap-and-emulate: the monitors' area, not touched otherwise); in the PV build the one
;   SET_KSTACK gives the hypervisor (TRAP_STACK).
; * no PUSHF/POPF anywhere (trap-and-emulate cannot virtualize POPF in ring 1); page-table
;   entries change through PTE_SET (a MOV natively: what a shadow-paging monitor
;   emulates); frames are zeroed with MOV stores, never REP STOSD.
; * no timer: every count a test asserts is exact.
;
; Memory (physical = linear below 1 MiB: the kernel's identity table maps the low 1 MiB to
; itself, supervisor but for the user page, RW, with A and D preset; in the PV build its
; own table frames read-only, and the builder's):
;   0 .. 1000H          the monitors' GDT and TSS (not touched)
;   1000H ..            this image: PV: the hypercall page first; code, data; the user
;                       page (page-aligned, the only page ring 3 may touch: its code and
;                       stack). PV: the domain builder's pages follow the image (its
;                       tables, start_info, the block ring, a boot stack)
;   10000H .. 10800H    the monitors' IDT (not touched)
;   20000H              KIDT, the native build's IDT (its gates hold the host's CS)
;   21000H              RESULTS (below)
;   22000H              KPD, the directory;  23000H KPT0, the identity table;
;   24000H              WPT, the window's page table (TABLES .. TABLES_END: the kernel's
;                       table frames)
;   28000H .. 30000H    the kernel's stack (ESP = KSTACK at start)
;   30000H .. 38000H    PV: the ring-1 stack entries from ring 3 land on (TRAP_STACK)
;   40000H .. 60000H    frames A of the window;  60000H .. 80000H frames B
;   80000H .. A0000H    the frame pool (child directories, tables, pages)
;   A0000H .. A8000H    WBUF;  A8000H .. B0000H RBUF (64 sectors each at most)
;   E0000H .. 100000H   the monitors' ring stacks (natively and under the monitors the
;                       system call stack)
; Linear: the window at WINDOW (400000H, PDE 1), a child's pages at CHILD_VA (800000H,
; PDE 2), the PV build's shared_info page at SI_VA (3FF000H, the last entry of KPT0).
;
; RESULTS, dwords (all zero at start):
;   +00H  status: 600DH done; BAD1H an exception (+08H vector, +0CH error code, +10H EIP,
;         +14H CR2); BAD2H the hypervisor refused a call (+08H its error code); BAD3H the
;         frame pool ran dry
;   +04H  WORKLOAD (the mask run)
;   +20H  syscall: system calls taken (SYS_EXIT included), SYS_ADD calls, the shared
;         total, the program's sum of answers (its SYS_EXIT argument)
;   +30H  ptupdate: the window checksum, the fork checksum, frames not returned to the
;         pool (0: no leak), page-table entries set
;   +40H  io: the read-back checksum, dwords of RBUF unlike WBUF, requests that failed,
;         sectors moved
; At the end (POWEROFF): ESI = status, EDI = the sum of the four checksums at +2CH, +30H,
; +34H, +40H, EDX = free frames in the pool, EBP = WORKLOAD. (The PV build's POWEROFF is a
; hypercall: EAX, EBX and ECX hold its number and arguments then.)

; ---- the workloads and their parameters (hvsim.guests.minios overrides these) ----
WORKLOAD    equ 7               ; a mask of the W_ bits below
N_SYSCALLS  equ 64              ; syscall: system calls before SYS_EXIT
ROUNDS      equ 4               ; ptupdate: remap rounds (and forks)
N_PTES      equ 16              ; ptupdate: window pages remapped per round (at most 32)
CHILD_PAGES equ 4               ; ptupdate: pages of each child (at most POOL_FRAMES - 2)
MMU_BATCH   equ 8               ; PV: page-table updates queued per mmu_update
FLUSH_CEILING equ 8             ; ptupdate: INVLPG per page up to this many pages
N_SECTORS   equ 16              ; io: sectors written and read back (at most 64)

W_SYSCALL   equ 1
W_PTUPDATE  equ 2
W_IO        equ 4

; ---- layout ----
KIDT        equ 0x20000
RESULTS     equ 0x21000
RESULTS_SIZE equ 0x50
TABLES      equ 0x22000
KPD         equ 0x22000
KPT0        equ 0x23000
WPT         equ 0x24000
TABLES_END  equ 0x25000
KSTACK      equ 0x30000
TRAP_STACK  equ 0x38000
FRAMES_A    equ 0x40000
FRAMES_B    equ 0x60000
POOL_BASE   equ 0x80000
POOL_END    equ 0xA0000
POOL_FRAMES equ (POOL_END - POOL_BASE) >> 12
WBUF        equ 0xA0000
RBUF        equ 0xA8000
LOW_PAGES   equ 256             ; the identity-mapped low 1 MiB, in 4 KiB pages
WINDOW      equ 0x00400000
CHILD_VA    equ 0x00800000
SI_VA       equ 0x003FF000

R_STATUS    equ RESULTS + 0x00
R_WORKLOAD  equ RESULTS + 0x04
R_BAD_VEC   equ RESULTS + 0x08
R_BAD_ERR   equ RESULTS + 0x0C
R_BAD_EIP   equ RESULTS + 0x10
R_BAD_CR2   equ RESULTS + 0x14
R_SYS_CALLS equ RESULTS + 0x20
R_SYS_ADDS  equ RESULTS + 0x24
R_SYS_TOTAL equ RESULTS + 0x28
R_SYS_USER  equ RESULTS + 0x2C
R_PT_SUM    equ RESULTS + 0x30
R_FORK_SUM  equ RESULTS + 0x34
R_PT_LEAK   equ RESULTS + 0x38
R_PT_SETS   equ RESULTS + 0x3C
R_IO_SUM    equ RESULTS + 0x40
R_IO_BAD    equ RESULTS + 0x44
R_IO_ERRORS equ RESULTS + 0x48
R_IO_MOVED  equ RESULTS + 0x4C

STATUS_OK   equ 0x600D
STATUS_EXC  equ 0xBAD1
STATUS_HV   equ 0xBAD2
STATUS_POOL equ 0xBAD3

; ---- architecture (SDM Vol. 3A) ----
; a 32-bit PDE/PTE (Figure 4-4, Tables 4-5 and 4-6):
;   31            12 11  9  8   7   6   5   4   3   2   1   0
;   | frame         | AVL | G |PAT| D | A |PCD|PWT|U/S|R/W| P |
PTE_P       equ 1
PTE_RW      equ 2
PTE_US      equ 4
PTE_A       equ 0x20
PTE_D       equ 0x40
PTE_FRAME   equ 0xFFFFF000
KERNEL_PTE  equ PTE_D | PTE_A | PTE_RW | PTE_P
USER_PTE    equ KERNEL_PTE | PTE_US
KERNEL_PDE  equ PTE_A | PTE_RW | PTE_P
USER_PDE    equ KERNEL_PDE | PTE_US     ; the PTEs decide what ring 3 may touch
DATA_PTE    equ PTE_RW | PTE_P          ; window and child pages: the CPU sets A and D
CR0_WP      equ 0x10000
CR0_PG      equ 0x80000000
TRAPGATE    equ 0x8F            ; P=1 DPL=0 type 0xF: 32-bit trap gate (Figure 6-2)
UCODE       equ 0x3B            ; ring-3 flat code and data (hvsim/rings/setup.py)
UDATA       equ 0x43
USER_EFLAGS equ 0x202           ; IF = 1, bit 1 reserved as 1
SYS_ECHO    equ 1               ; ebx -> ebx + 1
SYS_ADD     equ 2               ; ebx -> the shared total after adding ebx
SYS_EXIT    equ 3               ; ebx = the program's result; back to the kernel
BLK_READ    equ 0               ; blk_submit's operations (Xen's BLKIF_OP_READ / _WRITE)
BLK_WRITE   equ 1

; =======================================================================================
; The platform layer: every sensitive operation, in both builds. Each macro keeps every
; register; a PV body may change the arithmetic flags. Natively | PV:
;
;   IRQ_DISABLE       cli | evtchn_upcall_mask = 1 (a store to shared_info)
;   IRQ_ENABLE        sti | mask = 0, then, if evtchn_upcall_pending, any hypercall
;                     (xen_version): the event is delivered on its way back
;   LOAD_TRAPS t      gates in KIDT from the trap_info array t, LIDT | set_trap_table(t)
;   SET_KSTACK esp    nothing: the host's TSS | stack_switch(21H, esp)
;   LOAD_CR3 reg      mov cr3, reg | mmuext_op NEW_BASEPTR (the frame number)
;   INVLPG_ADDR reg   invlpg [reg] | mmuext_op INVLPG_LOCAL
;   FLUSH_TLB         CR3 reloaded | mmuext_op TLB_FLUSH_LOCAL
;   PTE_SET ptr, val  mov [ptr], val | {ptr, val} queued for mmu_update, the queue sent
;                     when MMU_BATCH are queued (registers or constants only)
;   PT_COMMIT         nothing | the queue sent: one mmu_update(queue, n, NULL, DOMID_SELF)
;   PT_ALLOC frame    nothing | update_va_mapping(frame's VA, frame | P | A, UVMF_INVLPG):
;                     a page table may have no writable mapping anywhere
;   PT_RELEASE frame  nothing | the same, writable again (| RW | D)
;   PT_PIN_L2 frame   nothing | mmuext_op PIN_L2_TABLE: the hypervisor validates the
;                     directory and every table it names
;   PT_UNPIN frame    nothing | mmuext_op UNPIN_TABLE
;   READ_CR2 reg      mov reg, cr2 | vcpu_info.arch.cr2 (ring 1 cannot read CR2)
;   HALT_WAIT         sti; hlt; cli | sched_op(SCHEDOP_block) (unused natively: the
;                     native disk is synchronous)
;   CONSOLE_WRITE s, n  OUT 0E9H per byte | console_io(CONSOLEIO_write, n, s)
;   POWEROFF          cli; hlt | sched_op(SCHEDOP_shutdown, &{SHUTDOWN_poweroff}), its
;                     number and arguments left in EAX, EBX, ECX
;
; and the two routines behind the disk: blk_submit (eax = BLK_READ or BLK_WRITE, ebx = the
; sector, ecx = a 512-byte buffer) and blk_sync (every request submitted is done):
; natively a port-I/O driver (synchronous), in the PV build a split-driver frontend over
; the shared ring. Finally platform_tables (the kernel's tables are built, not yet in use)
; and platform_paging (they are in use; it may change any register but ESP): the two
; places boot differs. A refused hypercall stops the kernel (status BAD2H).
; =======================================================================================
%ifdef PV
; ---- Xen's numbers (hvsim/paravirt/abi.py, from Xen's public headers) ----
HC_set_trap_table equ 0
HC_mmu_update equ 1
HC_stack_switch equ 3
HC_set_callbacks equ 4
HC_update_va_mapping equ 14
HC_xen_version equ 17
HC_console_io equ 18
HC_iret     equ 23
HC_mmuext_op equ 26
HC_sched_op equ 29
HC_event_channel_op equ 32
MMUEXT_PIN_L2_TABLE equ 1
MMUEXT_UNPIN_TABLE equ 4
MMUEXT_NEW_BASEPTR equ 5
MMUEXT_TLB_FLUSH_LOCAL equ 6
MMUEXT_INVLPG_LOCAL equ 7
UVMF_INVLPG equ 2
DOMID_SELF  equ 0x7FF0
SCHEDOP_block equ 1
SCHEDOP_shutdown equ 2
EVTCHNOP_send equ 4
CONSOLEIO_write equ 0
FLAT_RING1_CS equ 0x19
FLAT_RING1_DS equ 0x21
VI_UPCALL_PENDING equ 0         ; vcpu_info[0], at the start of shared_info
VI_UPCALL_MASK equ 1
VI_PENDING_SEL equ 4
VI_CR2      equ 8
SI_EVTCHN_PENDING equ 0x800
SIF_SHARED_INFO equ 36          ; start_info
SIF_PT_BASE equ 60
SIF_NR_PT_FRAMES equ 64
SIF_BLK_RING equ 1104
SIF_BLK_EVTCHN equ 1108
RING_REQ_PROD equ 0             ; the shared ring (hvsim/paravirt/ring.py)
RING_REQ_EVENT equ 4
RING_RSP_PROD equ 8
RING_RSP_EVENT equ 12
RING_SLOTS  equ 64              ; offset of slot 0; 32 slots of 64 bytes
RING_SIZE   equ 32
BLK_BATCH   equ RING_SIZE - 1   ; requests in flight before the frontend waits
TABLE_PTE   equ PTE_A | PTE_P   ; the kernel maps its own table frames read-only

align 4096
hypercall_page: times 4096 db 0     ; the domain builder fills it with the stubs

%macro HYPERCALL 1
    call hypercall_page + %1 * 32
%endmacro

; HCALL nr, a1, a2, a3: hypercall nr with EBX, ECX, EDX = a1, a2, a3 (pushed first, so
; that any may name a register the call changes); keeps every register; a refusal stops
; the kernel. HCALL_PUSHED nr: the same, a1 a2 a3 already on the stack, a1 on top.
%macro HCALL 4
    push %4
    push %3
    push %2
    HCALL_PUSHED %1
%endmacro

%macro HCALL_PUSHED 1
    xchg ebx, [esp]
    xchg ecx, [esp + 4]
    xchg edx, [esp + 8]
    push eax
    HYPERCALL %1
    call hv_check
    pop eax
    pop ebx
    pop ecx
    pop edx
%endmacro

%macro IRQ_DISABLE 0
    mov byte [SI_VA + VI_UPCALL_MASK], 1
%endmacro

%macro IRQ_ENABLE 0
    mov byte [SI_VA + VI_UPCALL_MASK], 0
    test byte [SI_VA + VI_UPCALL_PENDING], 0xFF
    jz %%none
    push eax
    push ebx
    xor ebx, ebx                ; xen_version(XENVER_version): any hypercall will do
    HYPERCALL HC_xen_version
    pop ebx
    pop eax
%%none:
%endmacro

%macro LOAD_TRAPS 1
    HCALL HC_set_trap_table, %1, 0, 0
%endmacro

%macro SET_KSTACK 1
    HCALL HC_stack_switch, FLAT_RING1_DS, %1, 0
%endmacro

; MMUEXT routine, cmd, arg1: one mmuext_op through hv_mmuext, or hv_mmuext_frame when
; arg1 is an address whose frame number the command takes
%macro MMUEXT 3
    push eax
    push ebx
    mov ebx, %3
    mov eax, %2
    call %1
    pop ebx
    pop eax
%endmacro

%macro LOAD_CR3 1
    MMUEXT hv_mmuext_frame, MMUEXT_NEW_BASEPTR, %1
%endmacro

%macro INVLPG_ADDR 1
    MMUEXT hv_mmuext, MMUEXT_INVLPG_LOCAL, %1
%endmacro

%macro FLUSH_TLB 0
    MMUEXT hv_mmuext, MMUEXT_TLB_FLUSH_LOCAL, 0
%endmacro

%macro PT_PIN_L2 1
    MMUEXT hv_mmuext_frame, MMUEXT_PIN_L2_TABLE, %1
%endmacro

%macro PT_UNPIN 1
    MMUEXT hv_mmuext_frame, MMUEXT_UNPIN_TABLE, %1
%endmacro

%macro PTE_SET 2
    push %2
    push %1
    call mmu_queue
%endmacro

%macro PT_COMMIT 0
    call mmu_flush
%endmacro

; MAP_SELF frame, flags: update_va_mapping(frame, frame | flags, UVMF_INVLPG) -- the
; kernel's identity mapping of the frame
%macro MAP_SELF 2
    push UVMF_INVLPG
    push %1
    or dword [esp], %2
    push %1
    HCALL_PUSHED HC_update_va_mapping
%endmacro

%macro PT_ALLOC 1
    MAP_SELF %1, PTE_A | PTE_P
%endmacro

%macro PT_RELEASE 1
    MAP_SELF %1, KERNEL_PTE
%endmacro

%macro READ_CR2 1
    mov %1, [SI_VA + VI_CR2]
%endmacro

%macro HALT_WAIT 0
    HCALL HC_sched_op, SCHEDOP_block, 0, 0      ; events on; back when one is pending
%endmacro

%macro CONSOLE_WRITE 2
    HCALL HC_console_io, CONSOLEIO_write, %2, %1
%endmacro

%macro POWEROFF 0
    mov ebx, SCHEDOP_shutdown
    mov ecx, poweroff_reason
    HYPERCALL HC_sched_op
%endmacro

; hv_check: stop the kernel if the hypercall just made failed (EAX = a negative errno).
hv_check:
    test eax, eax
    jnz hv_refused
    ret
hv_refused:
    mov [R_BAD_VEC], eax
    mov dword [R_STATUS], STATUS_HV
    jmp panic

; hv_mmuext: mmuext_op(&{eax, ebx}, 1, NULL, DOMID_SELF); hv_mmuext_frame: with ebx's
; frame number. Keep ecx, edx, esi.
hv_mmuext_frame:
    shr ebx, 12
hv_mmuext:
    push ecx
    push edx
    push esi
    mov [mmuext_op], eax
    mov [mmuext_op + 4], ebx
    mov ebx, mmuext_op
    mov ecx, 1
    xor edx, edx
    mov esi, DOMID_SELF
    HYPERCALL HC_mmuext_op
    call hv_check
    pop esi
    pop edx
    pop ecx
    ret

; mmu_queue: queue {ptr = [esp + 4], val = [esp + 8]} (PTE_SET), pops both.
mmu_queue:
    push eax
    push ecx
    mov ecx, [mmu_count]
    shl ecx, 4                  ; {u64 ptr, u64 val}: the high halves stay 0
    mov eax, [esp + 12]
    mov [mmu_queue_buf + ecx], eax
    mov eax, [esp + 16]
    mov [mmu_queue_buf + ecx + 8], eax
    inc dword [mmu_count]
    cmp dword [mmu_count], MMU_BATCH
    jb .queued
    call mmu_flush
.queued:
    pop ecx
    pop eax
    ret 8

; mmu_flush: send the queue, if anything is queued, as one mmu_update (PT_COMMIT).
mmu_flush:
    cmp dword [mmu_count], 0
    je .empty
    push eax
    push ebx
    push ecx
    push edx
    push esi
    mov ebx, mmu_queue_buf
    mov ecx, [mmu_count]
    xor edx, edx
    mov esi, DOMID_SELF
    HYPERCALL HC_mmu_update
    call hv_check
    mov dword [mmu_count], 0
    pop esi
    pop edx
    pop ecx
    pop ebx
    pop eax
.empty:
    ret

; platform_tables: the kernel's tables are built, not in use. The builder's tables must not
; be writable through them either: their frames become read-only in KPT0.
platform_tables:
    push eax
    push ecx
    push edx
    mov eax, [boot_esi]
    mov ecx, [eax + SIF_NR_PT_FRAMES]
    mov eax, [eax + SIF_PT_BASE]       ; the builder's directory, its tables after it
.ro:
    mov edx, eax
    shr edx, 12
    and dword [KPT0 + edx*4], ~PTE_RW
    add eax, 0x1000
    loop .ro
    pop edx
    pop ecx
    pop eax
    ret

; platform_paging: the kernel's directory is in use. The builder's goes (unpinned: its
; tables no longer hold references to the kernel's frames), shared_info is mapped at SI_VA,
; and the event callback is registered.
platform_paging:
    mov esi, [boot_esi]
    mov eax, [esi + SIF_PT_BASE]
    PT_UNPIN eax
    mov eax, [esi + SIF_BLK_RING]
    mov [blk_ring], eax
    mov eax, [esi + SIF_BLK_EVTCHN]
    mov [evtchn_port], eax
    mov eax, [esi + SIF_SHARED_INFO]
    or eax, KERNEL_PTE
    HCALL HC_update_va_mapping, SI_VA, eax, UVMF_INVLPG
    mov ebx, FLAT_RING1_CS      ; set_callbacks(cs, event, cs, failsafe)
    mov ecx, event_callback
    mov edx, FLAT_RING1_CS
    mov esi, failsafe_callback
    HYPERCALL HC_set_callbacks
    call hv_check
    ret

; the event callback: entered with events masked, on the current ring-1 stack. Every
; event is taken as seen (the only ports: the block ring's, whose responses the
; frontend polls), then HYPERVISOR_iret returns and restores the mask.
event_callback:
    push eax
    mov byte [SI_VA + VI_UPCALL_PENDING], 0
    xor eax, eax
    xchg eax, [SI_VA + VI_PENDING_SEL]
    xor eax, eax
    xchg eax, [SI_VA + SI_EVTCHN_PENDING]   ; ports 0-31
    pop eax
    jmp hypercall_page + HC_iret * 32

failsafe_callback:
    mov dword [R_STATUS], STATUS_EXC
    jmp panic

; ---- the block frontend (Xen's io/ring.h rules; hvsim/paravirt/ring.py draws the page) ----
; blk_submit: request number req_prod_pvt into its slot {id, op, nr_segments = 1,
; handle = 0, sector, buffer}; with BLK_BATCH in flight, blk_sync first.
blk_submit:
    push edx
    push edi
    mov edx, [req_prod_pvt]
    mov edi, edx
    sub edi, [rsp_cons]
    cmp edi, BLK_BATCH
    jb .room
    call blk_sync
.room:
    mov edi, edx
    and edi, RING_SIZE - 1
    shl edi, 6
    add edi, [blk_ring]
    mov [edi + RING_SLOTS], edx             ; id: the request's number
    mov [edi + RING_SLOTS + 4], al          ; operation
    mov byte [edi + RING_SLOTS + 5], 1      ; nr_segments
    mov word [edi + RING_SLOTS + 6], 0      ; handle
    mov [edi + RING_SLOTS + 8], ebx         ; sector
    mov [edi + RING_SLOTS + 12], ecx        ; buffer (guest-physical)
    inc edx
    mov [req_prod_pvt], edx
    pop edi
    pop edx
    ret

; blk_sync: publish the requests (RING_PUSH_REQUESTS_AND_CHECK_NOTIFY: notify the backend
; only if it asked to be woken inside (old, new], i.e. (new - req_event) < (new - old)
; unsigned), then take responses until every request has one; with none there, ask to be
; notified of the next (rsp_event), look once more, and only then block.
blk_sync:
    push eax
    push ebx
    push ecx
    push edx
    mov ebx, [blk_ring]
    mov edx, [req_prod_pvt]     ; new
    mov ecx, edx
    sub ecx, [ebx + RING_REQ_PROD]          ; new - old
    mov [ebx + RING_REQ_PROD], edx
    sub edx, [ebx + RING_REQ_EVENT]         ; new - req_event
    cmp edx, ecx
    jae .wait
    HCALL HC_event_channel_op, EVTCHNOP_send, evtchn_port, 0
.wait:
    mov eax, [rsp_cons]
    cmp eax, [req_prod_pvt]
    je .done
    cmp eax, [ebx + RING_RSP_PROD]
    jne .response
    inc eax
    mov [ebx + RING_RSP_EVENT], eax         ; wake me at response number rsp_cons
    dec eax
    cmp eax, [ebx + RING_RSP_PROD]          ; RING_FINAL_CHECK_FOR_RESPONSES
    jne .response
    HALT_WAIT
    jmp .wait
.response:                      ; {u32 id, u8 op, u8 pad, i16 status} in the slot
    and eax, RING_SIZE - 1
    shl eax, 6
    cmp word [ebx + eax + RING_SLOTS + 6], 0
    jne .failed
    inc dword [R_IO_MOVED]
    jmp .next
.failed:
    inc dword [R_IO_ERRORS]
.next:
    inc dword [rsp_cons]
    jmp .wait
.done:
    pop edx
    pop ecx
    pop ebx
    pop eax
    ret

align 4
mmuext_op:  dd 0, 0, 0          ; {cmd, arg1, arg2}
mmu_count:  dd 0
mmu_queue_buf: times MMU_BATCH * 16 db 0
req_prod_pvt: dd 0
rsp_cons:   dd 0
blk_ring:   dd 0                ; the shared ring's page (start_info)
evtchn_port: dd 0               ; its event channel: EVTCHNOP_send's argument
poweroff_reason: dd 0           ; SHUTDOWN_poweroff

%else
TABLE_PTE   equ KERNEL_PTE
PORT        equ 0xE9            ; the console
DISK_DATA   equ 0x1F0           ; hvsim/monitors/devices.py BlockDevice
DISK_SECTOR equ 0x1F2
DISK_COMMAND equ 0x1F7
DISK_READ   equ 0x20
DISK_WRITE  equ 0x30
DISK_ERROR  equ 0x01

%macro IRQ_DISABLE 0
    cli
%endmacro

%macro IRQ_ENABLE 0
    sti
%endmacro

%macro LOAD_TRAPS 1
    push esi
    mov esi, %1
    call set_gates
    pop esi
    lidt [idtr]
%endmacro

%macro SET_KSTACK 1
%endmacro

%macro LOAD_CR3 1
    mov cr3, %1
%endmacro

%macro INVLPG_ADDR 1
    invlpg [%1]
%endmacro

%macro FLUSH_TLB 0
    push eax
    mov eax, cr3
    mov cr3, eax
    pop eax
%endmacro

%macro PTE_SET 2
    mov [%1], %2
%endmacro

%macro PT_COMMIT 0
%endmacro

%macro PT_ALLOC 1
%endmacro

%macro PT_RELEASE 1
%endmacro

%macro PT_PIN_L2 1
%endmacro

%macro PT_UNPIN 1
%endmacro

%macro READ_CR2 1
    mov %1, cr2
%endmacro

%macro HALT_WAIT 0
    sti
    hlt
    cli
%endmacro

%macro CONSOLE_WRITE 2
    push ecx
    push esi
    mov esi, %1
    mov ecx, %2
    call con_write
    pop esi
    pop ecx
%endmacro

%macro POWEROFF 0
    cli
    hlt
%endmacro

; con_write: ecx bytes at esi to the console port.
con_write:
    push eax
.next:
    mov al, [esi]
    out PORT, al
    inc esi
    loop .next
    pop eax
    ret

; set_gates: a trap gate in KIDT for each trap_info entry at esi ({u8 vector, u8 flags
; (bits 0-1: the DPL INT n needs), u16 cs, u32 handler}; handler 0 ends the array). A gate
; (SDM Vol. 3A, Figure 6-2):
;   low dword  = selector << 16 | offset 15:0
;   high dword = offset 31:16 << 16 | P DPL type << 8
set_gates:
    push eax
    push ebx
    push ecx
    push esi
.next:
    mov ebx, [esi + 4]
    test ebx, ebx
    jz .done
    movzx eax, byte [esi]
    movzx ecx, word [esi + 2]
    shl ecx, 16
    mov cx, bx
    mov [KIDT + eax*8], ecx
    movzx ecx, byte [esi + 1]
    and ecx, 3
    shl ecx, 13                 ; the DPL, bits 13-14
    or ecx, TRAPGATE << 8
    and ebx, 0xFFFF0000
    or ebx, ecx
    mov [KIDT + eax*8 + 4], ebx
    add esi, 8
    jmp .next
.done:
    pop esi
    pop ecx
    pop ebx
    pop eax
    ret

; platform_tables, platform_paging: natively only paging to turn on (CR0.WP: the kernel's
; own writes to read-only pages fault too).
platform_tables:
    ret
platform_paging:
    mov eax, cr0
    or eax, CR0_PG | CR0_WP
    mov cr0, eax
    ret

; ---- the disk driver: one sector per call, 131 port accesses, synchronous ----
; write: the sector, 128 data dwords, the command, the status; read: the sector, the
; command, the status, 128 data dwords.
blk_submit:
    push eax
    push ecx
    push edx
    push esi
    mov esi, ecx
    mov ecx, eax
    mov dx, DISK_SECTOR
    mov eax, ebx
    out dx, eax
    mov dx, DISK_DATA
    cmp ecx, BLK_WRITE
    jne .read
    mov ecx, 128
.fill:
    mov eax, [esi]
    out dx, eax
    add esi, 4
    loop .fill
    mov al, DISK_WRITE
    mov dx, DISK_COMMAND
    out dx, al
    in al, dx
    test al, DISK_ERROR
    jz .done
    jmp .error
.read:
    mov al, DISK_READ
    mov dx, DISK_COMMAND
    out dx, al
    in al, dx
    test al, DISK_ERROR
    jnz .error
    mov dx, DISK_DATA
    mov ecx, 128
.drain:
    in eax, dx
    mov [esi], eax
    add esi, 4
    loop .drain
    jmp .done
.done:
    inc dword [R_IO_MOVED]
    jmp .out
.error:
    inc dword [R_IO_ERRORS]
.out:
    pop esi
    pop edx
    pop ecx
    pop eax
    ret

blk_sync:
    ret

idtr:
    dw 256 * 8 - 1
    dd KIDT
%endif
; ==================================================== end of the platform layer ========

start:
    mov esp, KSTACK
    mov [boot_esi], esi         ; PV: start_info (natively: nothing)
    mov dword [R_WORKLOAD], WORKLOAD
    mov eax, cs                 ; the trap table's code selector: the one we run in
    mov esi, traps
.cs:
    mov [esi + 2], ax
    add esi, 8
    cmp dword [esi + 4], 0
    jne .cs

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

    ; the kernel's tables, built with plain stores while they are ordinary pages:
    ; KPT0 maps the low 1 MiB to itself (the table frames with TABLE_PTE, the user page
    ; for ring 3 too), WPT maps the window to frames A
    mov edi, KPD
    call zero_page
    mov edi, KPT0
    call zero_page
    mov edi, WPT
    call zero_page
    xor ecx, ecx
.ident:
    mov eax, ecx
    shl eax, 12
    or eax, KERNEL_PTE
    mov [KPT0 + ecx*4], eax
    inc ecx
    cmp ecx, LOW_PAGES
    jne .ident
    mov ecx, TABLES >> 12
.table:
    mov eax, ecx
    shl eax, 12
    or eax, TABLE_PTE
    mov [KPT0 + ecx*4], eax
    inc ecx
    cmp ecx, TABLES_END >> 12
    jne .table
    mov dword [KPT0 + (user >> 12) * 4], user | USER_PTE
    xor ecx, ecx
.window:
    mov eax, ecx
    shl eax, 12
    add eax, FRAMES_A | DATA_PTE
    mov [WPT + ecx*4], eax
    inc ecx
    cmp ecx, N_PTES
    jne .window
    mov dword [KPD], KPT0 | USER_PDE
    mov dword [KPD + (WINDOW >> 22) * 4], WPT | KERNEL_PDE
    call platform_tables

    ; into them: each table handed over, the directory pinned (validated) and loaded
    mov eax, KPT0
    PT_ALLOC eax
    mov eax, WPT
    PT_ALLOC eax
    mov eax, KPD
    PT_ALLOC eax
    PT_PIN_L2 eax
    LOAD_CR3 eax
    call platform_paging
    LOAD_TRAPS traps
    SET_KSTACK TRAP_STACK
    IRQ_ENABLE
    CONSOLE_WRITE m_up, m_up_len

    mov eax, WORKLOAD
    test eax, W_SYSCALL
    jz .no_syscall
    call run_user
.no_syscall:
    mov eax, WORKLOAD
    test eax, W_PTUPDATE
    jz .no_pt
    call ptupdate
.no_pt:
    mov eax, WORKLOAD
    test eax, W_IO
    jz finish
    call io

finish:
    mov dword [R_STATUS], STATUS_OK
    CONSOLE_WRITE m_done, m_done_len
stop:                           ; the result registers (see the header), then off
    mov esi, [R_STATUS]
    mov edi, [R_SYS_USER]
    add edi, [R_PT_SUM]
    add edi, [R_FORK_SUM]
    add edi, [R_IO_SUM]
    mov edx, [pool_count]
    mov ebp, WORKLOAD
    POWEROFF

; ---- syscall: a ring-3 program and its system calls ----
; run_user: IRET to the program (its frame: EIP, CS, EFLAGS, ESP, SS); returns when it
; makes SYS_EXIT.
run_user:
    mov [kernel_esp], esp
    push UDATA
    push user + 4096            ; the top of the user page
    push USER_EFLAGS
    push UCODE
    push user
    iret

; INT 80H (a trap gate, DPL 3; PV: a direct trap into ring 1): eax = the number, ebx the
; argument; the answer in eax.
syscall:
    inc dword [R_SYS_CALLS]
    cmp eax, SYS_ECHO
    je .echo
    cmp eax, SYS_ADD
    je .add
    cmp eax, SYS_EXIT
    je .exit
    mov eax, -1
    iret
.echo:
    lea eax, [ebx + 1]
    iret
.add:                           ; the critical section
    IRQ_DISABLE
    add [R_SYS_TOTAL], ebx
    mov eax, [R_SYS_TOTAL]
    inc dword [R_SYS_ADDS]
    IRQ_ENABLE
    iret
.exit:
    mov [R_SYS_USER], ebx
    mov esp, [kernel_esp]       ; the frame is dropped: back in run_user's caller
    ret

; ---- ptupdate: remap a window of live PTEs, ROUNDS times, and fork ----
ptupdate:
    xor ecx, ecx                ; frame f of either set starts holding f
.init:
    mov eax, ecx
    shl eax, 12
    lea edi, [FRAMES_A + eax]
    mov [edi], edi
    lea edi, [FRAMES_B + eax]
    mov [edi], edi
    inc ecx
    cmp ecx, N_PTES
    jne .init
    mov eax, [pool_count]
    mov [pool_mark], eax
    xor ebp, ebp                ; ebp = the round
.round:
    mov ebx, FRAMES_B | DATA_PTE
    test ebp, 1
    jz .remap
    mov ebx, FRAMES_A | DATA_PTE
.remap:
    xor ecx, ecx
.set:
    lea edi, [WPT + ecx*4]
    mov eax, ecx
    shl eax, 12
    add eax, ebx
    PTE_SET edi, eax
    inc dword [R_PT_SETS]
    inc ecx
    cmp ecx, N_PTES
    jne .set
    PT_COMMIT
    mov eax, N_PTES
    cmp eax, FLUSH_CEILING
    ja .flush_all
    mov eax, WINDOW
.invlpg:
    INVLPG_ADDR eax
    add eax, 4096
    cmp eax, WINDOW + N_PTES * 4096
    jne .invlpg
    jmp .touch
.flush_all:
    FLUSH_TLB
.touch:
    mov esi, WINDOW
    mov edx, [R_PT_SUM]
.page:
    mov eax, [esi]
    add edx, eax
    inc eax
    mov [esi], eax
    add esi, 4096
    cmp esi, WINDOW + N_PTES * 4096
    jne .page
    mov [R_PT_SUM], edx
    call fork
    inc ebp
    cmp ebp, ROUNDS
    jne .round
    mov eax, [pool_mark]
    sub eax, [pool_count]
    mov [R_PT_LEAK], eax
    ret

; fork: a child address space for round ebp -- a directory sharing KPT0, a page table at
; CHILD_VA with CHILD_PAGES fresh frames -- built, used and taken down.
fork:
    call alloc_zeroed
    mov [child_pd], eax
    mov edx, eax                ; edx = the child's directory
    mov eax, [KPD]
    mov [edx], eax              ; the identity table, shared
    call alloc_zeroed
    mov [child_pt], eax
    mov ebx, eax                ; ebx = its page table
    or eax, KERNEL_PDE
    mov [edx + (CHILD_VA >> 22) * 4], eax
    xor ecx, ecx
.map:
    call alloc_frame
    or eax, DATA_PTE
    mov [ebx + ecx*4], eax
    inc ecx
    cmp ecx, CHILD_PAGES
    jne .map
    PT_ALLOC ebx                ; handed over: no writable mapping of them is left
    PT_ALLOC edx
    PT_PIN_L2 edx
    LOAD_CR3 edx                ; in the child
    mov esi, CHILD_VA
.write:
    lea eax, [esi + ebp]
    mov [esi], eax
    add esi, 4096
    cmp esi, CHILD_VA + CHILD_PAGES * 4096
    jne .write
    mov esi, CHILD_VA
    mov eax, [R_FORK_SUM]
.read:
    add eax, [esi]
    add esi, 4096
    cmp esi, CHILD_VA + CHILD_PAGES * 4096
    jne .read
    mov [R_FORK_SUM], eax
    mov eax, KPD
    LOAD_CR3 eax                ; back in the parent, which reaps the child
    PT_UNPIN edx
    PT_RELEASE edx
    PT_RELEASE ebx
    mov ecx, CHILD_PAGES
.reap:
    dec ecx
    mov eax, [ebx + ecx*4]
    and eax, PTE_FRAME
    call free_frame
    test ecx, ecx
    jnz .reap
    mov eax, ebx
    call free_frame
    mov eax, edx
    call free_frame
    ret

; ---- io: sectors to the disk and back ----
io:
    xor ebx, ebx                ; dword i of sector s = s * 01000193H + i
.sector:
    mov eax, ebx
    imul eax, eax, 0x01000193
    mov edi, ebx
    shl edi, 9
    add edi, WBUF
    xor ecx, ecx
.dword:
    mov [edi + ecx*4], eax
    inc eax
    inc ecx
    cmp ecx, 128
    jne .dword
    inc ebx
    cmp ebx, N_SECTORS
    jne .sector
    mov eax, BLK_WRITE
    mov edx, WBUF
    call blk_all
    mov eax, BLK_READ
    mov edx, RBUF
    call blk_all
    xor edx, edx                ; the checksum, and the dwords unlike WBUF
    xor edi, edi
    xor esi, esi
.check:
    mov eax, [RBUF + esi]
    rol edx, 1
    add edx, eax
    cmp eax, [WBUF + esi]
    je .same
    inc edi
.same:
    add esi, 4
    cmp esi, N_SECTORS * 512
    jne .check
    mov [R_IO_SUM], edx
    mov [R_IO_BAD], edi
    mov eax, edx
    mov edi, m_io_hex
    call hex8
    CONSOLE_WRITE m_io, m_io_len
    ret

; blk_all: sectors 0 .. N_SECTORS-1, operation eax, buffers from edx, then blk_sync.
blk_all:
    xor ebx, ebx
    mov ecx, edx
.next:
    call blk_submit
    add ecx, 512
    inc ebx
    cmp ebx, N_SECTORS
    jne .next
    call blk_sync
    ret

; ---- exceptions: record and stop ----
de_trap:
    push 0                      ; no error code
    push 0
    jmp fatal
ud_trap:
    push 0
    push 6
    jmp fatal
gp_trap:
    push 13
    jmp fatal
pf_trap:
    push 14
fatal:                          ; [esp] = vector, error code, EIP
    pop dword [R_BAD_VEC]
    pop dword [R_BAD_ERR]
    pop dword [R_BAD_EIP]
    READ_CR2 eax
    mov [R_BAD_CR2], eax
    mov dword [R_STATUS], STATUS_EXC
    jmp panic

pool_empty:
    mov dword [R_STATUS], STATUS_POOL

; panic: the status is set; say so and stop.
panic:
    CONSOLE_WRITE m_panic, m_panic_len
    jmp stop

; ---- helpers ----
; alloc_frame: eax = a free frame (its physical address). Stops the kernel if none.
alloc_frame:
    mov eax, [pool_count]
    test eax, eax
    jz pool_empty
    dec eax
    mov [pool_count], eax
    mov eax, [pool_stack + eax*4]
    ret

; alloc_zeroed: eax = a free frame, zeroed.
alloc_zeroed:
    call alloc_frame
    push edi
    mov edi, eax
    call zero_page
    pop edi
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

; hex8: eax as 8 hexadecimal digits at edi.
hex8:
    push ecx
    push edx
    mov ecx, 8
.digit:
    rol eax, 4
    mov edx, eax
    and edx, 15
    mov dl, [hexdigits + edx]
    mov [edi], dl
    inc edi
    loop .digit
    pop edx
    pop ecx
    ret

; ---- data ----
align 4
traps:                          ; trap_info {u8 vector, u8 flags, u16 cs, u32 handler}:
    db 0, 0                     ; Xen's format, read by both builds; cs is filled at boot;
    dw 0                        ; flags bits 0-1: the DPL INT n needs
    dd de_trap
    db 6, 0
    dw 0
    dd ud_trap
    db 13, 0
    dw 0
    dd gp_trap
    db 14, 0
    dw 0
    dd pf_trap
    db 0x80, 3
    dw 0
    dd syscall
    dd 0, 0
boot_esi:   dd 0
kernel_esp: dd 0
pool_count: dd 0                ; free frames: pool_stack[0 .. pool_count)
pool_mark:  dd 0
child_pd:   dd 0
child_pt:   dd 0
pool_stack: times POOL_FRAMES dd 0
hexdigits:  db "0123456789ABCDEF"
m_up:       db "minios: up", 10
m_up_len    equ $ - m_up
m_io:       db "minios: io checksum "
m_io_hex:   db "00000000", 10
m_io_len    equ $ - m_io
m_done:     db "minios: done", 10
m_done_len  equ $ - m_done
m_panic:    db "minios: panic", 10
m_panic_len equ $ - m_panic

; ---- the ring-3 program: its own page, code and stack ----
align 4096
user:
    mov eax, UDATA              ; IRET to ring 3 nulled DS and ES (the kernel's DPL < 3)
    mov ds, eax
    mov es, eax
    xor esi, esi                ; esi = the call number, edi = the sum of the answers
    xor edi, edi
.call:
    mov ebx, esi
    mov eax, SYS_ECHO
    test esi, 1
    jz .go
    mov eax, SYS_ADD
.go:
    int 0x80
    add edi, eax
    inc esi
    cmp esi, N_SYSCALLS
    jne .call
    mov ebx, edi
    mov eax, SYS_EXIT
    int 0x80
user_end:
