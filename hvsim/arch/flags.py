"""EFLAGS bits (SDM Vol. 1, 3.4.3, Figure 3-8). Constants only; used by kernels and the face."""
import enum

CF = 1 << 0      # carry
FIXED1 = 1 << 1  # reserved, always 1
PF = 1 << 2      # parity of the low byte of the result
AF = 1 << 4      # auxiliary carry (out of bit 3)
ZF = 1 << 6
SF = 1 << 7
TF = 1 << 8      # trap (single-step)
IF = 1 << 9      # interrupt enable
DF = 1 << 10     # direction (string instructions)
OF = 1 << 11
IOPL_SHIFT = 12
IOPL_MASK = 3 << 12   # I/O privilege level, two bits
NT = 1 << 14     # nested task
RF = 1 << 16     # resume
VM = 1 << 17     # virtual-8086 mode (not modelled: always 0)
AC = 1 << 18     # alignment check
VIF = 1 << 19
VIP = 1 << 20
ID = 1 << 21     # CPUID available (software may toggle it)

ARITH = CF | PF | AF | ZF | SF | OF   # the six status flags of the ALU
#: bits POPF may change at all (VM, VIF, VIP, RF are never changed by POPF in protected mode).
POPF_WRITABLE = ARITH | TF | IF | DF | IOPL_MASK | NT | AC | ID


class Flag(enum.IntFlag):
    CF = CF
    PF = PF
    AF = AF
    ZF = ZF
    SF = SF
    TF = TF
    IF = IF
    DF = DF
    OF = OF
    NT = NT
    RF = RF
    VM = VM
    AC = AC
    VIF = VIF
    VIP = VIP
    ID = ID


def iopl(eflags: int) -> int:
    """The I/O privilege level held in EFLAGS bits 13:12."""
    return (eflags >> IOPL_SHIFT) & 3
