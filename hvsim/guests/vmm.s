; vmm.s -- a hypervisor written in guest assembly, SimpleVisor-style (Ionescu's
; SimpleVisor does the same steps in C with intrinsics): it turns paging on, enters VMX
; root operation with VMXON, makes a VMCS current with VMCLEAR and VMPTRLD, fills it
; with VMWRITE, and starts its guest with VMLAUNCH. Every VM exit comes back to
; `vmexit` (HOST_RIP) in ring 0 of VMX root operation; the handler saves the guest's
; general registers (VT-x saves none of them: SDM Vol. 3C, 28.1), emulates CPUID,
; skips the instruction (VM-exit instruction length) and returns with VMRESUME. A VMCALL
; from the guest ends the run: the hypervisor halts with EBX = the exit reason.
;
; hvsim.guests.hypervisor() appends the guest's code at GUEST. The guest runs in ring 0
; of non-root operation on the hypervisor's own GDT and page tables: a guest that
; trusts its VMM, as in the first VT-x demos. Everything is at fixed addresses below.

PD          equ 0x8000          ; page directory: 1024 4 MiB identity pages (CR4.PSE)
TSS         equ 0x9000          ; the TSS (host and guest share it)
VMXON_PA    equ 0xA000          ; VMXON region (4 KiB, revision id in its first dword)
VMCS_PA     equ 0xB000          ; the VMCS region
EXITS       equ 0xC000          ; the exit count (data apart from the code: a store into a
                                ; page of decoded code costs a re-decode, as on a real CPU)
HSTACK      equ 0xF000          ; host stack top (HOST_RSP: fresh at every exit)
GUEST       equ 0x100000        ; the guest's code
GSTACK      equ 0x180000        ; the guest's stack top
REVISION    equ 0x1D            ; IA32_VMX_BASIC bits 30:0 (hvsim/arch/vmx.py)
SECONDARY   equ 0x20            ; secondary controls: enable VPID (bit 5); 0 turns VPIDs off
KCODE       equ 0x08
KDATA       equ 0x10
KTSS        equ 0x18

start:
    ; -- paging on: an identity map of 4 MiB pages (SDM Vol. 3A, 4.3, Table 4-4)
    xor ecx, ecx
pd_fill:
    mov eax, ecx
    shl eax, 22
    or eax, 0x83                ; P, R/W, PS
    mov [PD + ecx*4], eax
    inc ecx
    cmp ecx, 1024
    jne pd_fill
    mov eax, PD
    mov cr3, eax
    mov eax, cr4
    or eax, 0x2010              ; CR4.VMXE (bit 13), CR4.PSE (bit 4)
    mov cr4, eax
    mov eax, cr0
    or eax, 0x80000020          ; CR0.PG, CR0.NE: VMXON needs both (IA32_VMX_CR0_FIXED0)
    mov cr0, eax
    ; -- our own GDT, and a TSS (VM entry needs a host TR: SDM 27.2.3)
    lgdt [gdtr]
    mov ax, KDATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    jmp KCODE:reload
reload:
    mov ax, KTSS
    ltr ax
    mov esp, HSTACK
    ; -- VMX operation (SDM Vol. 3C, 24.7 and 31.3)
    mov ecx, 0x3A               ; IA32_FEATURE_CONTROL: lock, enable VMX outside SMX
    mov eax, 5
    xor edx, edx
    wrmsr
    mov dword [VMXON_PA], REVISION
    mov dword [VMCS_PA], REVISION
    vmxon [vmxon_ptr]
    jbe fail                    ; CF or ZF: VMfailInvalid / VMfailValid
    vmclear [vmcs_ptr]
    jbe fail
    vmptrld [vmcs_ptr]
    jbe fail
    ; -- the VMCS: host and guest control registers as they are now
    mov ebx, cr0
    mov eax, 0x6C00             ; HOST_CR0
    vmwrite eax, ebx
    mov eax, 0x6800             ; GUEST_CR0
    vmwrite eax, ebx
    mov ebx, cr3
    mov eax, 0x6C02             ; HOST_CR3
    vmwrite eax, ebx
    mov eax, 0x6802             ; GUEST_CR3
    vmwrite eax, ebx
    mov ebx, cr4
    mov eax, 0x6C04             ; HOST_CR4
    vmwrite eax, ebx
    mov eax, 0x6804             ; GUEST_CR4
    vmwrite eax, ebx
    ; -- the rest from the table: (encoding, value) pairs, ended by FFFFFFFFh
    mov esi, fields
next_field:
    mov eax, [esi]
    cmp eax, 0xFFFFFFFF
    je launch
    mov ebx, [esi + 4]
    vmwrite eax, ebx
    jbe fail
    add esi, 8
    jmp next_field
launch:
    vmlaunch
fail:                           ; an entry or VMX instruction failed: error number in EBP
    mov eax, 0x4400             ; VM_INSTRUCTION_ERROR
    vmread ebp, eax
    mov esi, 0xFA11
    hlt

; ---- every VM exit lands here, in root ring 0, ESP = HSTACK --------------------------
vmexit:
    push eax                    ; the guest's registers: [esp] edi ... [esp+24] eax
    push ecx
    push edx
    push ebx
    push ebp
    push esi
    push edi
    inc dword [EXITS]
    mov eax, 0x4402             ; VM_EXIT_REASON
    vmread ebx, eax
    cmp ebx, 10                 ; CPUID
    je emulate_cpuid
    cmp ebx, 18                 ; VMCALL: the guest is done
    je stop
    mov esi, 0xBAD              ; an exit this hypervisor does not handle: reason in EBX
    hlt

emulate_cpuid:
    mov eax, [esp + 24]         ; the guest's leaf
    mov ecx, [esp + 20]
    cpuid                       ; in root operation CPUID runs on the real processor
    and ecx, 0xFFFFFFDF         ; hide VMX (CPUID.1:ECX bit 5) from the guest
    mov [esp + 24], eax
    mov [esp + 20], ecx
    mov [esp + 16], edx
    mov [esp + 12], ebx
    mov eax, 0x681E             ; GUEST_RIP += VM-exit instruction length
    vmread ebx, eax
    mov ecx, 0x440C
    vmread edx, ecx
    add ebx, edx
    vmwrite eax, ebx
    pop edi
    pop esi
    pop ebp
    pop ebx
    pop edx
    pop ecx
    pop eax
    vmresume
    jmp fail

stop:
    mov esi, 0xE817
    hlt

; ---- data --------------------------------------------------------------------------
vmxon_ptr:  dd VMXON_PA, 0
vmcs_ptr:   dd VMCS_PA, 0
gdtr:       dw 4 * 8 - 1
            dd gdt
gdt:        dd 0, 0
            dd 0x0000FFFF, 0x00CF9B00   ; KCODE: flat 4 GiB code, DPL 0, accessed
            dd 0x0000FFFF, 0x00CF9300   ; KDATA: flat 4 GiB data, DPL 0, accessed
            dw 0x67, TSS & 0xFFFF       ; KTSS: 32-bit TSS at TSS, limit 67H
            db (TSS >> 16) & 0xFF, 0x89, 0, (TSS >> 24) & 0xFF
; the VMCS fields that do not depend on the running state (SDM Vol. 3C, Appendix B)
fields:
    dd 0x0C00, KDATA,  0x0C02, KCODE,  0x0C04, KDATA,  0x0C06, KDATA   ; HOST_ES..DS_SELECTOR
    dd 0x0C08, KDATA,  0x0C0A, KDATA,  0x0C0C, KTSS                     ; HOST_FS, GS, TR
    dd 0x6C0A, TSS,    0x6C0C, gdt,    0x6C0E, 0                        ; HOST_TR/GDTR/IDTR_BASE
    dd 0x6C14, HSTACK, 0x6C16, vmexit                                   ; HOST_RSP, HOST_RIP
    dd 0x0800, KDATA,  0x0802, KCODE,  0x0804, KDATA,  0x0806, KDATA   ; GUEST_ES..DS_SELECTOR
    dd 0x0808, KDATA,  0x080A, KDATA,  0x080E, KTSS                     ; GUEST_FS, GS, TR
    dd 0x4800, 0xFFFFFFFF, 0x4802, 0xFFFFFFFF, 0x4804, 0xFFFFFFFF        ; GUEST_ES..SS_LIMIT
    dd 0x4806, 0xFFFFFFFF, 0x4808, 0xFFFFFFFF, 0x480A, 0xFFFFFFFF        ; GUEST_DS..GS_LIMIT
    dd 0x480E, 0x67,   0x4810, 4 * 8 - 1                                ; GUEST_TR/GDTR_LIMIT
    dd 0x4814, 0xC093, 0x4816, 0xC09B, 0x4818, 0xC093, 0x481A, 0xC093   ; GUEST_ES..DS_AR
    dd 0x481C, 0xC093, 0x481E, 0xC093                                   ; GUEST_FS, GS_AR
    dd 0x4820, 0x10000                                                  ; GUEST_LDTR_AR: unusable
    dd 0x4822, 0x8B                                                     ; GUEST_TR_AR: busy TSS
    dd 0x6814, TSS,    0x6816, gdt                                      ; GUEST_TR/GDTR_BASE
    dd 0x681A, 0x400,  0x681C, GSTACK, 0x681E, GUEST, 0x6820, 2         ; DR7 RSP RIP RFLAGS
    dd 0x2800, 0xFFFFFFFF, 0x2801, 0xFFFFFFFF                           ; VMCS link pointer
    dd 0x4000, 0x16                     ; pin-based: the default1 bits only
    dd 0x4002, 0x84006172               ; primary: TRUE allowed-0 (no CR3 exiting), and
                                        ; bit 31, activate secondary controls
    dd 0x401E, SECONDARY                ; secondary: enable VPID, as SimpleVisor does,
    dd 0x0000, 1                        ; VPID 1 -- the TLB keeps the guest's and the
                                        ; host's translations across exits and entries
    dd 0x400C, 0x00036DFB, 0x4012, 0x000011FB   ; exit, entry: TRUE allowed-0
    dd 0xFFFFFFFF
