"""Exception and interrupt vectors (SDM Vol. 3A, 6.3.1, Table 6-1). Constants only."""
import enum

DE = 0    # divide error
DB = 1    # debug
NMI = 2
BP = 3    # breakpoint (INT3)
OF = 4    # overflow (INTO)
BR = 5    # BOUND range exceeded
UD = 6    # invalid opcode
NM = 7    # device not available
DF = 8    # double fault (error code 0)
TS = 10   # invalid TSS
NP = 11   # segment not present
SS = 12   # stack-segment fault
GP = 13   # general protection
PF = 14   # page fault
MF = 16
AC = 17
MC = 18
XM = 19

#: vectors that push an error code (SDM Vol. 3A, Table 6-1 "Error Code" column)
HAS_ERROR_CODE = (DF, TS, NP, SS, GP, PF, AC)


class Vector(enum.IntEnum):
    DE = DE
    DB = DB
    NMI = NMI
    BP = BP
    OF = OF
    BR = BR
    UD = UD
    NM = NM
    DF = DF
    TS = TS
    NP = NP
    SS = SS
    GP = GP
    PF = PF
    MF = MF
    AC = AC
    MC = MC
    XM = XM


_LONG = {
    DE: "divide error", DB: "debug", NMI: "non-maskable interrupt", BP: "breakpoint",
    OF: "overflow", BR: "BOUND range exceeded", UD: "invalid opcode", NM: "device not available",
    DF: "double fault", TS: "invalid TSS", NP: "segment not present", SS: "stack-segment fault",
    GP: "general protection", PF: "page fault", MF: "x87 floating-point error",
    AC: "alignment check", MC: "machine check", XM: "SIMD floating-point",
}


def vector_name(v: int) -> str:
    """'#GP (general protection)' for architectural vectors, 'INT 0x80' otherwise."""
    if v in _LONG:
        return f"#{Vector(v).name} ({_LONG[v]})"
    return f"INT {v:#04x}"
