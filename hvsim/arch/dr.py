"""Debug-register bits (SDM Vol. 3A, 17.2, Figure 17-1). Constants only.

DR6 and DR7 as a processor without bus-lock detection or RTM shows them (P6 class):
their reserved bits read back fixed whatever software writes (in 32-bit code a write of
a reserved bit is ignored, not #GP: that is 64-bit mode's rule for bits 63:32)::

    DR6  31 ........ 16 | 15 | 14 | 13 | 12 | 11 ...... 4 | 3  2  1  0
         reserved (1)   | BT | BS | BD | 0  | reserved (1)| B3 B2 B1 B0

    DR7  31 ........ 16 | 15 14 | 13 | 12 11 | 10 | 9  | 8  | 7 .... 0
         R/W0-3 LEN0-3  |  0  0 | GD |  0  0 | 1  | GE | LE | G3 L3 .. G0 L0
"""
import enum

# DR6, debug status (SDM Vol. 3A, 17.2.3)
DR6_B0_B3 = 0xF       # breakpoint conditions 0-3 met
DR6_BD = 1 << 13      # the next instruction accesses a debug register (DR7.GD set)
DR6_BS = 1 << 14      # single step: the #DB was the trap of EFLAGS.TF
DR6_BT = 1 << 15      # task switch to a TSS with T = 1
DR6_FIXED1 = 0xFFFF0FF0   # bits 4-11 and 16-31 read as 1; bit 12 reads as 0
DR6_WRITABLE = DR6_B0_B3 | DR6_BD | DR6_BS | DR6_BT
DR6_INIT = DR6_FIXED1     # after reset (SDM Vol. 3A, 10.1.1, Table 10-1)

# DR7, debug control (SDM Vol. 3A, 17.2.4)
DR7_ENABLES = 0xFF    # L0 G0 L1 G1 L2 G2 L3 G3
DR7_LE = 1 << 8
DR7_GE = 1 << 9
DR7_GD = 1 << 13      # general detect: MOV DRn raises #DB (a fault) before it executes
DR7_RW_LEN = 0xFFFF0000   # R/W0 LEN0 .. R/W3 LEN3
DR7_FIXED1 = 1 << 10  # reserved, reads as 1; bits 11, 12, 14 and 15 read as 0
DR7_WRITABLE = DR7_ENABLES | DR7_LE | DR7_GE | DR7_GD | DR7_RW_LEN
DR7_INIT = DR7_FIXED1     # after reset (SDM Vol. 3A, 10.1.1, Table 10-1)


class Dr6(enum.IntFlag):
    BD = DR6_BD
    BS = DR6_BS
    BT = DR6_BT


class Dr7(enum.IntFlag):
    LE = DR7_LE
    GE = DR7_GE
    GD = DR7_GD
