"""Control-register bits (SDM Vol. 3A, 2.5, Figure 2-7). Constants only."""
import enum

# CR0
CR0_PE = 1 << 0    # protection enable
CR0_MP = 1 << 1
CR0_EM = 1 << 2
CR0_TS = 1 << 3    # task switched (CLTS clears it)
CR0_ET = 1 << 4    # extension type, hard-wired to 1 on P6 and later
CR0_NE = 1 << 5
CR0_WP = 1 << 16   # write protect: supervisor writes honour read-only pages
CR0_AM = 1 << 18   # alignment mask: #AC at CPL 3 when EFLAGS.AC = 1 (SDM Vol. 3A, 6.15)
CR0_NW = 1 << 29
CR0_CD = 1 << 30
CR0_PG = 1 << 31   # paging
# CR3 (32-bit paging, SDM Vol. 3A, 4.3 Table 4-4)
CR3_PWT = 1 << 3
CR3_PCD = 1 << 4
CR3_PD_MASK = 0xFFFFF000   # physical address of the page directory
# CR4. Each bit MOV to CR4 accepts does what the SDM says; the others are #GP(0), as
# reserved bits are (SDM Vol. 2B, MOV to/from Control Registers, "Protected Mode Exceptions").
CR4_VME = 1 << 0   # refused: it changes only virtual-8086 mode (SDM Vol. 3A, 20.3), not modelled
CR4_PVI = 1 << 1   # protected-mode virtual interrupts: CLI/STI at CPL 3 act on VIF (Vol. 3A, 20.4)
CR4_TSD = 1 << 2   # RDTSC is privileged when set
CR4_DE = 1 << 3    # debug extensions: DR4/DR5 are #UD instead of aliasing DR6/DR7 (Vol. 3A, 17.2.2)
CR4_PSE = 1 << 4   # 4 MiB pages in 32-bit paging
CR4_PAE = 1 << 5   # refused: PAE paging is not modelled
CR4_MCE = 1 << 6   # accepted: enables #MC, and the model has no machine-check error to report
CR4_PGE = 1 << 7   # global pages
CR4_PCE = 1 << 8   # refused: RDPMC, the one instruction it affects, is outside the subset (#UD)
CR4_OSFXSR = 1 << 9  # refused: FXSAVE/FXRSTOR and SSE are outside the subset (#UD)
CR4_VMXE = 1 << 13  # VMX enable (VMXON requires it; VMX instructions are #UD until hvsim/vtx)

#: CR4 bits this model lets software set (others are #GP(0) on MOV to CR4).
CR4_SUPPORTED = CR4_PVI | CR4_TSD | CR4_DE | CR4_PSE | CR4_MCE | CR4_PGE | CR4_VMXE


class Cr0(enum.IntFlag):
    PE = CR0_PE
    MP = CR0_MP
    EM = CR0_EM
    TS = CR0_TS
    ET = CR0_ET
    NE = CR0_NE
    WP = CR0_WP
    AM = CR0_AM
    NW = CR0_NW
    CD = CR0_CD
    PG = CR0_PG


class Cr4(enum.IntFlag):
    VME = CR4_VME
    PVI = CR4_PVI
    TSD = CR4_TSD
    DE = CR4_DE
    PSE = CR4_PSE
    PAE = CR4_PAE
    MCE = CR4_MCE
    PGE = CR4_PGE
    PCE = CR4_PCE
    OSFXSR = CR4_OSFXSR
    VMXE = CR4_VMXE
