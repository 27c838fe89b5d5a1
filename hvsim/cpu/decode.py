"""Instruction decoding and the pre-decoded instruction cache (jitted kernels + one Python table).

The opcode table below is the single description of the subset's one- and two-byte
opcodes (and its two three-byte ones, 0F 38 80/81) for the CPU: for each opcode it gives
the handler family (``OP_*``), whether a ModRM byte follows, what immediate follows and
the operand size. It is turned into four small numpy arrays that numba freezes into the
compiled decoder.

Decoded instructions are cached by *physical* address in ``dc``: entry ``row`` is the
column ``dc[:, row]``, one slot per field ``F_*``. The array is field-major so that
``dc[F_LEN, row]`` is ``row * 8`` bytes from a fixed base: reading the next
instruction's length needs no multiply, and that read sits on the path from one
instruction to the next, which bounds the run loop's speed. An entry is valid while
its frame's generation in ``pg`` is the one recorded at decode time; any write to a
frame that holds cached code bumps the generation (hvsim/mmu/paging.py), so
self-modifying code and writes from Python are seen by the very next fetch.
Instructions that cross a page boundary are decoded into the scratch entry every time
and never cached.

Instruction format (SDM Vol. 2A, 2.1, Figure 2-1)::

    [prefixes] opcode(1-3) [ModRM] [SIB] [disp 0/1/4] [imm 0/1/2/4/6]

    ModRM:  7  6 | 5  4  3 | 2  1  0        SIB:  7  6 | 5  4  3 | 2  1  0
           mod   |  reg    |  r/m                scale  |  index  |  base
"""
import numpy as np

from hvsim._jit import njit
from hvsim.arch.layout import (
    MASK32, EBP, ESP, ZERO, SREG_ES, SREG_CS, SREG_SS, SREG_DS, SREG_FS, SREG_GS,
    DC_ENTRIES, DC_FIELDS, PG_CODE, PG_TRACED, PG_GEN_SHIFT, ITRACE_CAP, ITRACE_PHYS2, CFG_MEM_SIZE, FAULT_PENDING, FAULT_VECTOR, FAULT_ERROR, FAULT_ADDR,
    FAULT_BUS, CPL, CFG_DC_ENABLED, COUNTERS, FETCH_FAULT_KIND, FETCH_FAULT_VECTOR,
    FETCH_FAULT_ERROR, FETCH_FAULT_ADDR, ATTN,
)

from hvsim.cpu.blocks import F_BLK, F_HOT, BLOCK_NONE
from hvsim.arch.counters import C_DC_HIT, C_DC_MISS
from hvsim.arch.fault import raise_fault, raise_bus_error
from hvsim.mmu.paging import translate
from hvsim.arch.pte import ACC_FETCH, ACC_USER

BYTES_ROW = DC_ENTRIES + 1   # dc entry used as the fetch buffer (its first 16 fields)

# ---- decode-cache entry fields -------------------------------------------------------
F_TAG = 0      # physical address of the first byte (-1: empty)
F_GEN = 1      # generation of that frame at decode time
F_OP = 2       # handler family, OP_*
F_LEN = 3      # instruction length in bytes
F_OPC = 4      # opcode: one-byte value, 0x100 | second byte for 0F xx, 0x200 | third for 0F 38 xx
F_REG = 5      # ModRM reg field (or the register encoded in the opcode, e.g. B8+r)
F_RM = 6       # ModRM r/m register when mod == 3, else -1 (memory operand)
F_SIZE = 7     # operand size in bytes: 1, 2 (66h prefix, or a 16-bit-only operand) or 4
F_BASE = 8     # base register slot, or ZERO
F_INDEX = 9    # index register slot, or ZERO
F_SCALE = 10   # index shift 0..3
F_DISP = 11    # displacement (sign-extended, as an unsigned 32-bit value)
F_IMM = 12     # immediate (sign- or zero-extended as the instruction defines), or rel target offset
F_IMM2 = 13    # second immediate (far pointer selector)
F_SEG = 14     # segment register of the memory operand (after overrides)
F_PFX = 15     # prefix bits, PFX_*

PFX_REP = 1      # F3
PFX_REPNE = 2    # F2
PFX_OPSIZE = 4   # 66
PFX_SEG = 8      # a segment override was present
PFX_BAD = 16     # LOCK (F0) or address-size (67): outside the subset -> #UD

MAX_INSN_LEN = 15  # SDM Vol. 2A, 2.3.11: longer instructions raise #GP(0)

# ---- handler families -----------------------------------------------------------------
OP_UD = 0          # invalid / outside the subset: #UD
OP_ALU_EG = 1      # 00 01 08 09 ... 38 39: op r/m, reg
OP_ALU_GE = 2      # 02 03 ... 3A 3B: op reg, r/m
OP_ALU_AI = 3      # 04 05 ... 3C 3D: op AL/EAX, imm
OP_GRP1 = 4        # 80 81 83: op r/m, imm
OP_TEST_EG = 5     # 84 85
OP_TEST_AI = 6     # A8 A9
OP_XCHG_EG = 7     # 86 87
OP_MOV_EG = 8      # 88 89
OP_MOV_GE = 9      # 8A 8B
OP_MOV_FROM_SREG = 10  # 8C
OP_LEA = 11        # 8D
OP_MOV_TO_SREG = 12    # 8E
OP_POP_E = 13      # 8F /0
OP_XCHG_AR = 14    # 91-97
OP_NOP = 15        # 90
OP_CDQ = 16        # 99
OP_CALLF = 17      # 9A ptr16:32
OP_PUSHF = 18      # 9C
OP_POPF = 19       # 9D
OP_MOV_MOFFS = 20  # A0-A3
OP_STRING = 21     # A4 A5 AA AB
OP_MOV_RI = 22     # B0-BF
OP_GRP2 = 23       # C0 C1 D0-D3
OP_RET = 24        # C2 C3
OP_MOV_EI = 25     # C6 C7 /0
OP_RETF = 26       # CA CB
OP_INT3 = 27       # CC
OP_INT = 28        # CD ib
OP_IRET = 29       # CF
OP_LOOP = 30       # E2
OP_JECXZ = 31      # E3
OP_IN = 32         # E4 E5 EC ED
OP_OUT = 33        # E6 E7 EE EF
OP_CALL_REL = 34   # E8
OP_JMP_REL = 35    # E9 EB
OP_JMPF = 36       # EA ptr16:32
OP_HLT = 37        # F4
OP_FLAGOP = 38     # F5 F8 F9 FC FD
OP_GRP3 = 39       # F6 F7
OP_CLI = 40        # FA
OP_STI = 41        # FB
OP_GRP4 = 42       # FE
OP_GRP5 = 43       # FF
OP_INC_R = 44      # 40-47
OP_DEC_R = 45      # 48-4F
OP_PUSH_R = 46     # 50-57
OP_POP_R = 47      # 58-5F
OP_PUSH_I = 48     # 68 6A
OP_IMUL3 = 49      # 69 6B
OP_JCC = 50        # 70-7F, 0F 80-8F
OP_PUSH_SREG = 51  # 06 0E 16 1E, 0F A0 0F A8
OP_POP_SREG = 52   # 07 17 1F, 0F A1 0F A9
OP_GRP6 = 53       # 0F 00
OP_GRP7 = 54       # 0F 01
OP_LAR = 55        # 0F 02
OP_LSL = 56        # 0F 03
OP_CLTS = 57       # 0F 06
OP_MOV_CR = 58     # 0F 20, 0F 22
OP_WRMSR = 59      # 0F 30
OP_RDTSC = 60      # 0F 31
OP_RDMSR = 61      # 0F 32
OP_CPUID = 62      # 0F A2
OP_CMOV = 63       # 0F 40-4F
OP_SETCC = 64      # 0F 90-9F
OP_IMUL2 = 65      # 0F AF
OP_MOVZX = 66      # 0F B6 B7
OP_MOVSX = 67      # 0F BE BF
OP_VMX = 68        # 0F 78 79, 0F C7 /6 /7 m64, 66 0F 38 80 81 (and the VMX forms of 0F 01,
#                    decoded in group 7); the decoder has already made the register forms,
#                    0F C7 /0-/5 and a 0F 38 80/81 without its 66h #UD (OP_UD), see decode()
OP_UD2 = 69        # 0F 0B
OP_INTO = 70       # CE
OP_MOV_DR = 71     # 0F 21, 0F 23
OP_INVD = 72       # 0F 08 INVD, 0F 09 WBINVD
N_OPS = 73

# immediate kinds
IMM_NONE = 0
IMM_B = 1      # imm8, zero-extended
IMM_BS = 2     # imm8, sign-extended to 32 bits (also rel8)
IMM_W = 3      # imm16
IMM_D = 4      # imm32 (also rel32, moffs32)
IMM_PTR = 5    # ptr16:32: offset32 then selector16
IMM_GRP3 = 6   # F6/F7: an immediate only for /0 (TEST); its size follows the operand size

#: (opcodes, family, has ModRM, immediate kind, operand size). Two-byte opcodes (0F xx)
#: are 0x100 | xx; three-byte opcodes of the 0F 38 map (SDM Vol. 2D, A.3, the three-byte
#: opcode map whose first two bytes are 0F 38) are 0x200 | third byte: INVEPT (66 0F 38 80)
#: is 0x280, INVVPID 0x281, and every other 0x2xx is OP_UD. The 0F 3A map is not in the
#: subset: 0F 3A stays the (undefined, #UD) two-byte opcode 0x13A.
TABLE = []
N_OPCODES = 0x300


def _add(opcodes, op, modrm, imm, size):
    for opc in opcodes:
        TABLE.append((opc, op, modrm, imm, size))


for _row in range(8):                       # ADD OR ADC SBB AND SUB XOR CMP
    _b = _row * 8
    _add([_b + 0], OP_ALU_EG, 1, IMM_NONE, 1)
    _add([_b + 1], OP_ALU_EG, 1, IMM_NONE, 4)
    _add([_b + 2], OP_ALU_GE, 1, IMM_NONE, 1)
    _add([_b + 3], OP_ALU_GE, 1, IMM_NONE, 4)
    _add([_b + 4], OP_ALU_AI, 0, IMM_B, 1)
    _add([_b + 5], OP_ALU_AI, 0, IMM_D, 4)
_add([0x06, 0x0E, 0x16, 0x1E, 0x1A0, 0x1A8], OP_PUSH_SREG, 0, IMM_NONE, 4)
_add([0x07, 0x17, 0x1F, 0x1A1, 0x1A9], OP_POP_SREG, 0, IMM_NONE, 4)
_add(range(0x40, 0x48), OP_INC_R, 0, IMM_NONE, 4)
_add(range(0x48, 0x50), OP_DEC_R, 0, IMM_NONE, 4)
_add(range(0x50, 0x58), OP_PUSH_R, 0, IMM_NONE, 4)
_add(range(0x58, 0x60), OP_POP_R, 0, IMM_NONE, 4)
_add([0x68], OP_PUSH_I, 0, IMM_D, 4)
_add([0x69], OP_IMUL3, 1, IMM_D, 4)
_add([0x6A], OP_PUSH_I, 0, IMM_BS, 4)
_add([0x6B], OP_IMUL3, 1, IMM_BS, 4)
_add(range(0x70, 0x80), OP_JCC, 0, IMM_BS, 4)
_add([0x80], OP_GRP1, 1, IMM_B, 1)
_add([0x81], OP_GRP1, 1, IMM_D, 4)
_add([0x83], OP_GRP1, 1, IMM_BS, 4)
_add([0x84], OP_TEST_EG, 1, IMM_NONE, 1)
_add([0x85], OP_TEST_EG, 1, IMM_NONE, 4)
_add([0x86], OP_XCHG_EG, 1, IMM_NONE, 1)
_add([0x87], OP_XCHG_EG, 1, IMM_NONE, 4)
_add([0x88], OP_MOV_EG, 1, IMM_NONE, 1)
_add([0x89], OP_MOV_EG, 1, IMM_NONE, 4)
_add([0x8A], OP_MOV_GE, 1, IMM_NONE, 1)
_add([0x8B], OP_MOV_GE, 1, IMM_NONE, 4)
_add([0x8C], OP_MOV_FROM_SREG, 1, IMM_NONE, 2)
_add([0x8D], OP_LEA, 1, IMM_NONE, 4)
_add([0x8E], OP_MOV_TO_SREG, 1, IMM_NONE, 2)
_add([0x8F], OP_POP_E, 1, IMM_NONE, 4)
_add([0x90], OP_NOP, 0, IMM_NONE, 4)
_add(range(0x91, 0x98), OP_XCHG_AR, 0, IMM_NONE, 4)
_add([0x99], OP_CDQ, 0, IMM_NONE, 4)
_add([0x9A], OP_CALLF, 0, IMM_PTR, 4)
_add([0x9C], OP_PUSHF, 0, IMM_NONE, 4)
_add([0x9D], OP_POPF, 0, IMM_NONE, 4)
_add([0xA0, 0xA2], OP_MOV_MOFFS, 0, IMM_D, 1)
_add([0xA1, 0xA3], OP_MOV_MOFFS, 0, IMM_D, 4)
_add([0xA4, 0xAA], OP_STRING, 0, IMM_NONE, 1)
_add([0xA5, 0xAB], OP_STRING, 0, IMM_NONE, 4)
_add([0xA8], OP_TEST_AI, 0, IMM_B, 1)
_add([0xA9], OP_TEST_AI, 0, IMM_D, 4)
_add(range(0xB0, 0xB8), OP_MOV_RI, 0, IMM_B, 1)
_add(range(0xB8, 0xC0), OP_MOV_RI, 0, IMM_D, 4)
_add([0xC0], OP_GRP2, 1, IMM_B, 1)
_add([0xC1], OP_GRP2, 1, IMM_B, 4)
_add([0xC2], OP_RET, 0, IMM_W, 4)
_add([0xC3], OP_RET, 0, IMM_NONE, 4)
_add([0xC6], OP_MOV_EI, 1, IMM_B, 1)
_add([0xC7], OP_MOV_EI, 1, IMM_D, 4)
_add([0xCA], OP_RETF, 0, IMM_W, 4)
_add([0xCB], OP_RETF, 0, IMM_NONE, 4)
_add([0xCC], OP_INT3, 0, IMM_NONE, 4)
_add([0xCD], OP_INT, 0, IMM_B, 4)
_add([0xCE], OP_INTO, 0, IMM_NONE, 4)
_add([0xCF], OP_IRET, 0, IMM_NONE, 4)
_add([0xD0, 0xD2], OP_GRP2, 1, IMM_NONE, 1)
_add([0xD1, 0xD3], OP_GRP2, 1, IMM_NONE, 4)
_add([0xE2], OP_LOOP, 0, IMM_BS, 4)
_add([0xE3], OP_JECXZ, 0, IMM_BS, 4)
_add([0xE4], OP_IN, 0, IMM_B, 1)
_add([0xE5], OP_IN, 0, IMM_B, 4)
_add([0xE6], OP_OUT, 0, IMM_B, 1)
_add([0xE7], OP_OUT, 0, IMM_B, 4)
_add([0xE8], OP_CALL_REL, 0, IMM_D, 4)
_add([0xE9], OP_JMP_REL, 0, IMM_D, 4)
_add([0xEA], OP_JMPF, 0, IMM_PTR, 4)
_add([0xEB], OP_JMP_REL, 0, IMM_BS, 4)
_add([0xEC], OP_IN, 0, IMM_NONE, 1)
_add([0xED], OP_IN, 0, IMM_NONE, 4)
_add([0xEE], OP_OUT, 0, IMM_NONE, 1)
_add([0xEF], OP_OUT, 0, IMM_NONE, 4)
_add([0xF4], OP_HLT, 0, IMM_NONE, 4)
_add([0xF5, 0xF8, 0xF9, 0xFC, 0xFD], OP_FLAGOP, 0, IMM_NONE, 4)
_add([0xF6], OP_GRP3, 1, IMM_GRP3, 1)
_add([0xF7], OP_GRP3, 1, IMM_GRP3, 4)
_add([0xFA], OP_CLI, 0, IMM_NONE, 4)
_add([0xFB], OP_STI, 0, IMM_NONE, 4)
_add([0xFE], OP_GRP4, 1, IMM_NONE, 1)
_add([0xFF], OP_GRP5, 1, IMM_NONE, 4)
# two-byte opcodes (0F xx)
_add([0x100], OP_GRP6, 1, IMM_NONE, 2)
_add([0x101], OP_GRP7, 1, IMM_NONE, 4)
_add([0x102], OP_LAR, 1, IMM_NONE, 4)
_add([0x103], OP_LSL, 1, IMM_NONE, 4)
_add([0x106], OP_CLTS, 0, IMM_NONE, 4)
_add([0x108, 0x109], OP_INVD, 0, IMM_NONE, 4)
_add([0x10B], OP_UD2, 0, IMM_NONE, 4)
_add([0x120, 0x122], OP_MOV_CR, 1, IMM_NONE, 4)
_add([0x121, 0x123], OP_MOV_DR, 1, IMM_NONE, 4)
_add([0x130], OP_WRMSR, 0, IMM_NONE, 4)
_add([0x131], OP_RDTSC, 0, IMM_NONE, 4)
_add([0x132], OP_RDMSR, 0, IMM_NONE, 4)
_add(range(0x140, 0x150), OP_CMOV, 1, IMM_NONE, 4)
_add([0x178, 0x179], OP_VMX, 1, IMM_NONE, 4)
_add(range(0x180, 0x190), OP_JCC, 0, IMM_D, 4)
_add(range(0x190, 0x1A0), OP_SETCC, 1, IMM_NONE, 1)
_add([0x1A2], OP_CPUID, 0, IMM_NONE, 4)
_add([0x1AF], OP_IMUL2, 1, IMM_NONE, 4)
_add([0x1B6, 0x1BE], OP_MOVZX, 1, IMM_NONE, 1)   # source r/m8
_add([0x1B7, 0x1BF], OP_MOVZX, 1, IMM_NONE, 2)   # source r/m16
_add([0x1C7], OP_VMX, 1, IMM_NONE, 4)                # /6 VMPTRLD VMCLEAR VMXON, /7 VMPTRST
# three-byte opcodes (0F 38 xx): every other one is OP_UD
_add([0x280, 0x281], OP_VMX, 1, IMM_NONE, 4)         # 66 0F 38 80 INVEPT, 81 INVVPID r32, m128


# ---- the 66h operand-size prefix ---------------------------------------------------------
# In a 32-bit code segment 66h selects the 16-bit operand size (SDM Vol. 2A, 2.1.1 group 3
# and 3.1.1.1 "operand-size attribute"; Vol. 1, 3.6 and Table 3-4). It changes what the
# opcode means only for the instructions whose operand size is "v" (and whose immediate is
# "z": imm16 instead of imm32) in the SDM's opcode map (Vol. 2D, A.2.2). OPC_OSZ says, per
# opcode, what hvsim does with it:
OSZ_UD = 0     # #UD: byte-only forms (66h is reserved there, SDM Vol. 2A, 2.1.1), and forms
#                hvsim leaves at 32 bits -- near branches with a 16-bit EIP (CALL/JMP/Jcc/
#                RET/LOOP/JECXZ truncate EIP to 16 bits, SDM Vol. 2A "JMP" operation), far
#                transfers and IRET (ptr16:16 / m16:16), PUSHF/POPF, segment-register moves
#                and pushes, LAR/LSL and the system groups 6/7 (Vol. 2A, 3.1.1.1): the
#                subset keeps those out, as before
OSZ_16 = 1     # operand size 16; an imm8 or no immediate is unchanged
OSZ_IZ = 2     # operand size 16 and the imm32 becomes an imm16 (SDM operand "Iz")
OSZ_MANDATORY = 3  # 66h is part of the opcode (VMCLEAR = 66 0F C7 /6): size unchanged
OSZ_REQUIRED = 4   # 66h is part of the opcode and the only prefix the opcode exists with
#                    (INVEPT = 66 0F 38 80, INVVPID = 66 0F 38 81; SDM Vol. 2C, INVEPT):
#                    size unchanged; without 66h, or with F2/F3, the opcode is #UD

_OSZ_ROWS = (
    # ALU r/m,reg and reg,r/m (01 03 09 0B ... 39 3B); AX,imm16 (05 0D ... 3D)
    ([_r * 8 + 1 for _r in range(8)] + [_r * 8 + 3 for _r in range(8)], OSZ_16),
    ([_r * 8 + 5 for _r in range(8)], OSZ_IZ),
    (range(0x40, 0x60), OSZ_16),        # INC/DEC/PUSH/POP r16
    ([0x68, 0x69], OSZ_IZ),             # PUSH imm16, IMUL r16, r/m16, imm16
    ([0x6A, 0x6B], OSZ_16),             # PUSH imm8 (2 bytes pushed), IMUL r16, r/m16, imm8
    ([0x81], OSZ_IZ),                   # group 1 r/m16, imm16
    ([0x83, 0x85, 0x87, 0x89, 0x8B, 0x8D, 0x8F], OSZ_16),
    (range(0x90, 0x98), OSZ_16),        # NOP (66 90 = XCHG AX, AX), XCHG AX, r16
    ([0x99, 0xA1, 0xA3], OSZ_16),       # CWD; MOV AX, moffs (the moffs stays 32-bit)
    ([0xA5, 0xAB], OSZ_16),             # MOVSW, STOSW (ESI/EDI step by 2)
    ([0xA9], OSZ_IZ),                   # TEST AX, imm16
    (range(0xB8, 0xC0), OSZ_IZ),        # MOV r16, imm16
    ([0xC1, 0xD1, 0xD3], OSZ_16),       # group 2 r/m16
    ([0xC7], OSZ_IZ),                   # MOV r/m16, imm16
    ([0xE5, 0xE7, 0xED, 0xEF], OSZ_16),  # IN AX / OUT AX: a 2-byte port access
    ([0xF7], OSZ_16),                   # group 3 (TEST's immediate follows the size)
    ([0xFF], OSZ_16),                   # group 5 /0 /1 /6 only (checked in decode)
    (range(0x140, 0x150), OSZ_16),      # CMOVcc r16, r/m16
    ([0x1AF, 0x1B6, 0x1B7, 0x1BE, 0x1BF], OSZ_16),  # IMUL r16, r/m16; MOVZX/MOVSX r16
    ([0x1C7], OSZ_MANDATORY),
    ([0x280, 0x281], OSZ_REQUIRED),
)


def _tables():
    op = np.zeros(N_OPCODES, np.int64)
    modrm = np.zeros(N_OPCODES, np.int64)
    imm = np.zeros(N_OPCODES, np.int64)
    size = np.full(N_OPCODES, 4, np.int64)
    seen = set()
    for opc, fam, m, i, s in TABLE:
        assert opc not in seen, hex(opc)
        seen.add(opc)
        op[opc], modrm[opc], imm[opc], size[opc] = fam, m, i, s
    for opc in (0x1BE, 0x1BF):
        op[opc] = OP_MOVSX
    osz = np.zeros(N_OPCODES, np.int64)
    for opcodes, kind in _OSZ_ROWS:
        for opc in opcodes:
            osz[opc] = kind
    return op, modrm, imm, size, osz


OPC_OP, OPC_MODRM, OPC_IMM, OPC_SIZE, OPC_OSZ = _tables()
# segment-override prefix byte -> segment register (SDM Vol. 2A, 2.1.1, group 2)
SEG_PREFIX = np.full(256, -1, np.int64)
SEG_PREFIX[0x26], SEG_PREFIX[0x2E], SEG_PREFIX[0x36] = SREG_ES, SREG_CS, SREG_SS
SEG_PREFIX[0x3E], SEG_PREFIX[0x64], SEG_PREFIX[0x65] = SREG_DS, SREG_FS, SREG_GS


@njit
def _fetch_bus_error(st, pa):
    """Remember that the instruction bytes from physical ``pa`` on are outside memory
    (raised by ``_need`` only if the decoder gets that far), so the bus error names the
    first missing *physical* byte -- with paging, not the linear address."""
    st[FETCH_FAULT_KIND] = FAULT_BUS
    st[FETCH_FAULT_VECTOR] = -1
    st[FETCH_FAULT_ERROR] = -1
    st[FETCH_FAULT_ADDR] = pa


@njit
def _fill(mem, st, tlb, lin, pa, dc):
    """Copy up to 16 instruction bytes into dc[:, BYTES_ROW]; returns how many are readable.

    Bytes on the first page come from ``pa``; the rest need the next page's
    translation. A fault on that page is *not* raised here -- only if the decoder
    really needs the byte (then ``_need`` raises it) -- so a short instruction at the
    very end of a page does not fault on the next one.
    """
    memsize = st[CFG_MEM_SIZE]
    first = 4096 - (lin & 0xFFF)
    if first > 16:
        first = 16
    n = 0
    while n < first and pa + n < memsize:
        dc[n, BYTES_ROW] = mem[pa + n]
        n += 1
    if n < first:          # ran off the end of physical memory
        _fetch_bus_error(st, pa + n)
        return n
    if first == 16:
        return 16
    acc = ACC_FETCH
    if st[CPL] == 3:
        acc |= ACC_USER
    pa2 = translate(mem, st, tlb, (lin + first) & MASK32, acc)
    if st[FAULT_PENDING] != 0:
        # remember the fault in st[FETCH_FAULT_*] and withdraw it for now
        st[FETCH_FAULT_KIND] = st[FAULT_PENDING]
        st[FETCH_FAULT_VECTOR] = st[FAULT_VECTOR]
        st[FETCH_FAULT_ERROR] = st[FAULT_ERROR]
        st[FETCH_FAULT_ADDR] = st[FAULT_ADDR]
        st[FAULT_PENDING] = 0
        return n
    if st[ITRACE_CAP] != 0:
        st[ITRACE_PHYS2] = pa2    # for the trace record of an instruction across the pages
    j = 0
    while n < 16 and pa2 + j < memsize:
        dc[n, BYTES_ROW] = mem[pa2 + j]
        n += 1
        j += 1
    if n < 16:
        _fetch_bus_error(st, pa2 + j)
    return n


@njit
def _need(st, avail, k, lin):
    """True if byte k is readable; otherwise raise the fault that hides it."""
    if k < avail:
        return True
    if k >= MAX_INSN_LEN:
        raise_fault(st, 13, 0)
    elif st[FETCH_FAULT_KIND] != 0:
        st[FAULT_PENDING] = st[FETCH_FAULT_KIND]
        st[FAULT_VECTOR] = st[FETCH_FAULT_VECTOR]
        st[FAULT_ERROR] = st[FETCH_FAULT_ERROR]
        st[FAULT_ADDR] = st[FETCH_FAULT_ADDR]
        st[ATTN] = 1
    else:
        raise_bus_error(st, lin + k)
    return False


@njit
def decode(mem, st, tlb, dc, row, lin, pa):
    """Decode the instruction at linear ``lin`` (physical ``pa``) into ``dc[:, row]``.

    Returns the instruction length, or 0 if a fault (fetch #PF, bus error, #GP for a
    too-long instruction) is pending.
    """
    st[FETCH_FAULT_KIND] = 0
    avail = _fill(mem, st, tlb, lin, pa, dc)
    k = 0
    seg = -1
    pfx = 0
    while True:
        if not _need(st, avail, k, lin):
            return 0
        b = dc[k, BYTES_ROW]
        s = SEG_PREFIX[b]
        if s >= 0:
            seg = s
            pfx |= PFX_SEG
        elif b == 0xF3:
            pfx |= PFX_REP
        elif b == 0xF2:
            pfx |= PFX_REPNE
        elif b == 0x66:
            pfx |= PFX_OPSIZE
        elif b == 0xF0 or b == 0x67:
            pfx |= PFX_BAD
        else:
            break
        k += 1
    opc = dc[k, BYTES_ROW]
    k += 1
    if opc == 0x0F:
        if not _need(st, avail, k, lin):
            return 0
        opc = 0x100 | dc[k, BYTES_ROW]
        k += 1
        if opc == 0x138:                                # 0F 38: the three-byte map
            if not _need(st, avail, k, lin):
                return 0
            opc = 0x200 | dc[k, BYTES_ROW]
            k += 1
    op = OPC_OP[opc]
    size = OPC_SIZE[opc]
    osz = OSZ_UD
    if (pfx & PFX_OPSIZE) != 0:
        osz = OPC_OSZ[opc]
        if size == 4 and (osz == OSZ_16 or osz == OSZ_IZ):
            size = 2
    reg = opc & 7
    rm = -1
    base = ZERO
    index = ZERO
    scale = 0
    disp = 0
    if OPC_MODRM[opc] != 0:
        if not _need(st, avail, k, lin):
            return 0
        modrm = dc[k, BYTES_ROW]
        k += 1
        mod = modrm >> 6
        reg = (modrm >> 3) & 7
        r = modrm & 7
        if mod == 3 or 0x120 <= opc <= 0x123:          # MOV CRn/DRn ignore mod (SDM: treated as 11b)
            rm = r
        else:
            dsize = 0
            if mod == 1:
                dsize = 1
            elif mod == 2:
                dsize = 4
            if r == 4:                                  # SIB follows
                if not _need(st, avail, k, lin):
                    return 0
                sib = dc[k, BYTES_ROW]
                k += 1
                idx = (sib >> 3) & 7
                b = sib & 7
                if idx != 4:
                    index = idx
                    scale = sib >> 6
                if b == 5 and mod == 0:
                    dsize = 4
                else:
                    base = b
            elif r == 5 and mod == 0:                   # disp32, no base
                dsize = 4
            else:
                base = r
            if dsize == 1:
                if not _need(st, avail, k, lin):
                    return 0
                disp = dc[k, BYTES_ROW]
                if disp >= 0x80:
                    disp -= 0x100
                disp &= MASK32
                k += 1
            elif dsize == 4:
                if not _need(st, avail, k + 3, lin):
                    return 0
                disp = dc[k, BYTES_ROW] | (dc[k + 1, BYTES_ROW] << 8) | (dc[k + 2, BYTES_ROW] << 16) | (dc[k + 3, BYTES_ROW] << 24)
                k += 4
        if seg < 0:
            seg = SREG_DS
            if base == ESP or base == EBP:              # SDM Vol. 1, 3.7.5: EBP/ESP base -> SS
                seg = SREG_SS
    elif seg < 0:
        seg = SREG_DS
    # immediates
    ik = OPC_IMM[opc]
    imm = 0
    imm2 = 0
    if ik == IMM_GRP3:
        ik = IMM_NONE
        if reg == 0 or reg == 1:
            ik = IMM_B if size == 1 else IMM_W if size == 2 else IMM_D
    elif ik == IMM_D and osz == OSZ_IZ:
        ik = IMM_W
    if ik == IMM_B or ik == IMM_BS:
        if not _need(st, avail, k, lin):
            return 0
        imm = dc[k, BYTES_ROW]
        if ik == IMM_BS and imm >= 0x80:
            imm = (imm - 0x100) & MASK32
        k += 1
    elif ik == IMM_W:
        if not _need(st, avail, k + 1, lin):
            return 0
        imm = dc[k, BYTES_ROW] | (dc[k + 1, BYTES_ROW] << 8)
        k += 2
    elif ik == IMM_D:
        if not _need(st, avail, k + 3, lin):
            return 0
        imm = dc[k, BYTES_ROW] | (dc[k + 1, BYTES_ROW] << 8) | (dc[k + 2, BYTES_ROW] << 16) | (dc[k + 3, BYTES_ROW] << 24)
        k += 4
    elif ik == IMM_PTR:
        if not _need(st, avail, k + 5, lin):
            return 0
        imm = dc[k, BYTES_ROW] | (dc[k + 1, BYTES_ROW] << 8) | (dc[k + 2, BYTES_ROW] << 16) | (dc[k + 3, BYTES_ROW] << 24)
        imm2 = dc[k + 4, BYTES_ROW] | (dc[k + 5, BYTES_ROW] << 8)
        k += 6
    if k > MAX_INSN_LEN:
        raise_fault(st, 13, 0)
        return 0
    # prefixes outside the subset make the instruction invalid (66 where OPC_OSZ allows it)
    if (pfx & PFX_BAD) != 0:
        op = OP_UD
    elif (pfx & PFX_OPSIZE) != 0:
        if osz == OSZ_UD or (osz == OSZ_MANDATORY and reg != 6):
            op = OP_UD
        elif opc == 0xFF and reg != 0 and reg != 1 and reg != 6:
            op = OP_UD          # CALL/JMP near r/m16 (16-bit EIP) and far m16:16: see OSZ_UD
        elif op == OP_INC_R or op == OP_DEC_R or op == OP_PUSH_R or op == OP_POP_R:
            # 66 40+r, 48+r, 50+r, 58+r do what FF /0, FF /1, FF /6 and 8F /0 do on the
            # register r/m16 (mod = 11): decoded as those, the hot 32-bit handlers of
            # 40-5F need no operand-size test
            rm = reg
            if op == OP_POP_R:
                op, reg = OP_POP_E, 0
            else:
                reg = 0 if op == OP_INC_R else 1 if op == OP_DEC_R else 6
                op = OP_GRP5
    if op == OP_VMX and (opc == 0x1C7 or opc >= 0x200):
        # Decided here, not in op_vmx: the VMX handler sees only VMX instructions.
        # 0F C7 /6 (VMPTRLD, 66 VMCLEAR, F3 VMXON), 0F C7 /7 (VMPTRST) and 66 0F 38 80/81
        # (INVEPT, INVVPID) take a memory operand only: their register forms are #UD, and
        # that check comes before the VM-exit one (SDM Vol. 2C, each instruction's
        # "Operation": "IF (register operand) ... THEN #UD"); mod = 11 of 0F C7 /6 /7 is
        # RDRAND/RDSEED/RDPID, and 0F C7 /0-/5 (CMPXCHG8B, XRSTORS, XSAVEC, XSAVES) are
        # not VMX either -- all outside the subset. The two 0F 38 opcodes exist only with
        # 66h as their mandatory prefix: without it (0F 38 80 is no instruction in 32-bit
        # mode), or with F2/F3 as well, #UD (capstone decodes none of those either).
        # (66h on 0F C7 /7 is #UD above, OSZ_MANDATORY; F3/F2 on a 0F C7 memory form are
        # left to the handler, which tells VMXON from VMPTRLD by F3 anyway.)
        if rm >= 0 or (opc == 0x1C7 and reg < 6):
            op = OP_UD
        elif opc >= 0x200 and (pfx & (PFX_OPSIZE | PFX_REP | PFX_REPNE)) != PFX_OPSIZE:
            op = OP_UD
    dc[F_OP, row] = op
    dc[F_LEN, row] = k
    dc[F_OPC, row] = opc
    dc[F_REG, row] = reg
    dc[F_RM, row] = rm
    dc[F_SIZE, row] = size
    dc[F_BASE, row] = base
    dc[F_INDEX, row] = index
    dc[F_SCALE, row] = scale
    dc[F_DISP, row] = disp
    dc[F_IMM, row] = imm
    dc[F_IMM2, row] = imm2
    dc[F_SEG, row] = seg
    dc[F_PFX, row] = pfx
    return k


@njit(inline="always")
def lookup(mem, st, tlb, dc, pg, lin, pa):
    """Return the dc row holding the decoded instruction at ``pa`` (decoding on a miss).

    Returns -1 if decoding raised a fault.
    """
    # Direct-mapped by the low address bits: neighbours never collide; code exactly a
    # multiple of 16 KiB apart does. (Mixing in higher bits cost 2 cycles on the
    # instruction-to-instruction path: 7-9% on every benchmark loop.)
    row = pa & (DC_ENTRIES - 1)
    frame = pa >> 12
    gen = pg[frame] >> PG_GEN_SHIFT
    if st[CFG_DC_ENABLED] != 0 and dc[F_TAG, row] == pa and dc[F_GEN, row] == gen:
        st[COUNTERS + C_DC_HIT] += 1
        return row
    st[COUNTERS + C_DC_MISS] += 1
    if st[CFG_DC_ENABLED] == 0:
        row = DC_ENTRIES
    if st[ITRACE_CAP] != 0:
        pg[frame] = pg[frame] | PG_TRACED     # a store here is recorded (hvsim/mmu/frames.py)
    n = decode(mem, st, tlb, dc, row, lin, pa)
    if n == 0:
        dc[F_TAG, row] = -1
        return -1
    if (lin & 0xFFF) + n > 4096 and st[ITRACE_CAP] != 0:
        f2 = st[ITRACE_PHYS2] >> 12           # the next linear page's frame (_fill)
        if f2 < pg.shape[0]:
            pg[f2] = pg[f2] | PG_TRACED
    if (lin & 0xFFF) + n > 4096 or row == DC_ENTRIES:
        # crosses a page: the second frame's generation is not tracked, so never cache it
        if row != DC_ENTRIES:
            for f in range(DC_FIELDS):
                dc[f, DC_ENTRIES] = dc[f, row]
            dc[F_TAG, row] = -1
        dc[F_TAG, DC_ENTRIES] = -1
        return DC_ENTRIES
    dc[F_TAG, row] = pa
    dc[F_GEN, row] = gen
    dc[F_BLK, row] = BLOCK_NONE           # a new instruction here: no block, not hot
    dc[F_HOT, row] = 0
    pg[frame] = pg[frame] | PG_CODE
    return row
