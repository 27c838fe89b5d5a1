"""Where every piece of machine state lives (constants only; used by jitted and Python code).

A machine is five numpy arrays, passed to every kernel in this order::

    mem  uint8[mem_size]        guest-physical memory (one flat array)
    st   int64[ST_SIZE]         architectural + model state, addressed by the names below
    tlb  int64[sets*ways*TLB_FIELDS]  the TLB model (hvsim/mmu), geometry in st[CFG_TLB_*]
    dc   int64[DC_FIELDS, DC_ENTRIES + 2] the pre-decoded instruction cache (hvsim/cpu/decode),
                                one column per entry (field-major: see decode.py); entry
                                DC_ENTRIES is scratch for instructions that are not cached,
                                entry DC_ENTRIES + 1 holds the raw bytes being decoded
    pg   int64[mem_size >> 12]  one word per 4 KiB physical frame: code flag + generation

All 32-bit architectural values are stored *unsigned* in int64 slots (0 .. 2**32-1);
kernels mask with ``MASK32`` after arithmetic. Module-level ints are folded by numba as
compile-time constants, so naming a slot costs nothing.

Faults inside a kernel are never Python exceptions: a kernel that detects one calls
``raise_fault`` (hvsim/arch/fault.py), which fills the FAULT_* slots; every caller checks
``st[FAULT_PENDING]`` after any call that can fault and returns at once. The run loop
turns a pending fault into delivery through the guest IDT or into a host exit.
"""

MASK32 = 0xFFFFFFFF

# --- general registers, in ModRM reg-field order (SDM Vol. 2A, Table 2-2) -------------
EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI = 0, 1, 2, 3, 4, 5, 6, 7
EIP = 8
EFLAGS = 9
# --- control registers (SDM Vol. 3A, 2.5) ---------------------------------------------
CR0 = 10
CR2 = 11
CR3 = 12
CR4 = 13
CPL = 14           # current privilege level (SDM Vol. 3A, 5.5): kept explicitly, = CS.RPL
TSC = 15           # time-stamp counter (counts retired instructions; RDTSC reads it)

# --- segment registers: index = Sreg encoding (SDM Vol. 2A, 3.1.1.3 Table "Sreg") -------
SREG_ES, SREG_CS, SREG_SS, SREG_DS, SREG_FS, SREG_GS = 0, 1, 2, 3, 4, 5
N_SREGS = 6
# Each segment register has a visible selector and a hidden descriptor cache
# (SDM Vol. 3A, 3.4.3). Slot = base + sreg index.
SEG_SEL = 16       # 16..21 selector
SEG_BASE = 22      # 22..27 base (linear)
SEG_LIMIT = 28     # 28..33 limit in bytes (already scaled by G)
SEG_AR = 34        # 34..39 access rights, VMCS layout (SDM Vol. 3C, 24.4.1, Table 24-2):
#   bits 3:0 type, 4 S, 6:5 DPL, 7 P, 12 AVL, 14 D/B, 15 G, 16 unusable (null selector)
AR_TYPE_MASK = 0xF
AR_S = 1 << 4
AR_DPL_SHIFT = 5
AR_P = 1 << 7
AR_AVL = 1 << 12
AR_DB = 1 << 14
AR_G = 1 << 15
AR_UNUSABLE = 1 << 16

# --- system table registers and task/LDT registers (SDM Vol. 3A, 2.4) --------------------
GDTR_BASE = 40
GDTR_LIMIT = 41
IDTR_BASE = 42
IDTR_LIMIT = 43
LDTR_SEL = 44
LDTR_BASE = 45
LDTR_LIMIT = 46
LDTR_AR = 47
TR_SEL = 48
TR_BASE = 49
TR_LIMIT = 50
TR_AR = 51

# --- model-specific registers kept by the model (SDM Vol. 4) ----------------------------
MSR_SYSENTER_CS_SLOT = 52    # IA32_SYSENTER_CS  (MSR 0x174)
MSR_SYSENTER_ESP_SLOT = 53   # IA32_SYSENTER_ESP (MSR 0x175)
MSR_SYSENTER_EIP_SLOT = 54   # IA32_SYSENTER_EIP (MSR 0x176)
MSR_EFER_SLOT = 55           # IA32_EFER (MSR 0xC0000080); only readable/writable, no LME here
MSR_FEATURE_CONTROL_SLOT = 56  # IA32_FEATURE_CONTROL (MSR 0x3A), for VMXON later

# --- debug registers (SDM Vol. 3A, 17.2, Figure 17-1): MOV to/from DRn reads and writes
# them; no breakpoint is ever matched against DR0-DR3 (hvsim/cpu/system.py op_mov_dr)
DR0, DR1, DR2, DR3 = 102, 103, 104, 105   # breakpoint linear addresses
DR4, DR5 = 106, 107                       # never read or written: DR4/DR5 alias DR6/DR7 or #UD
DR6 = 108                                 # debug status
DR7 = 109                                 # debug control

# --- interrupt and execution state ----------------------------------------------------
HALTED = 60        # 1 while in HLT waiting for an interrupt
INT_SHADOW = 61    # blocking for the next instruction, the bits below (SDM Vol. 3A, 6.8.3)
# Its bits are those of VMX's interruptibility state (SDM Vol. 3C, 25.4.2, Table 25-3):
BLOCKING_BY_STI = 1 << 0     # STI that set IF: maskable interrupts wait one instruction
BLOCKING_BY_MOV_SS = 1 << 1  # MOV SS / POP SS: interrupts *and* debug exceptions (the
#                              single-step trap too) wait one instruction (Vol. 3A, 6.8.3)
IRQ_PENDING = 62   # vector of a pending external interrupt, or -1
TIMER_PERIOD = 63  # retired instructions between timer interrupts; 0 = timer off
TIMER_NEXT = 64    # value of TSC at which the next timer interrupt is raised
TIMER_VECTOR = 65  # vector the timer raises on the interrupt line
VMX_ON = 66        # 1 in VMX operation (after VMXON; SDM Vol. 3C, 24.3), 0 outside it
FLAT = 67          # 1: DS/ES/SS accesses need no segment or alignment check (rings/segments.py update_flat)
DOUBLE_FAULTING = 68  # 1 while delivering #DF (a fault now is a triple fault)
DELIVERING = 69    # vector being delivered (-1 if none): a fault now is a contributory test
INSN_EIP = 70      # EIP of the instruction being executed (faults restart here)
INSN_LEN = 71      # length of the instruction being executed
VIRTUALIZABLE = 72 # 1 = "virtualizable x86": sensitive-unprivileged insns #GP at CPL>0 (issue 3)
FETCH_LIN_PAGE = 73   # linear page (lin >> 12) of the last instruction fetch, -1 = none
FETCH_PHYS_PAGE = 74  # its physical frame; valid until any TLB flush / CR0 / CR3 / CR4 write
FETCH_CPL = 75        # CPL used for that translation (U/S check depends on it)
VPID = 76             # the current VPID, which tags the TLB's entries (SDM Vol. 3C, 29.1):
                      # 0 in root operation and in a guest without "enable VPID"
VPID_CONTEXT = 77     # VPID, "enable EPT" and EPTP of the last VM entry that used a VPID
                      # (hvsim/vtx/state.py): entries made under another EPTP are dropped

# --- VMX operation (hvsim/vtx; SDM Vol. 3C, chapters 24-31) -----------------------------
VMX_NONROOT = 88   # 1 in VMX non-root operation (a guest of a VMM), 0 in root or outside VMX
VMXON_PTR = 89     # physical address of the VMXON region (valid while VMX_ON)
VMCS_PTR = 90      # the current-VMCS pointer; VMCS_PTR_NONE when there is none
VMCS_PTR_NONE = -1 # FFFFFFFF_FFFFFFFFH in the SDM's words (an int64 slot holds it as -1)
VMX_PYTHON_HOST = 91   # 1: a VM exit leaves run() (EXIT_VMEXIT) once host state is loaded,
                       # for a VMM written in Python (hvsim/monitors/kvm.py); 0: the CPU goes on
                       # at HOST_RIP, for a VMM written in guest code
VMX_ENTRY_REQUEST = 92 # set by the Python VMM: run() makes a VM entry first (1 VMLAUNCH, 2 VMRESUME)
VMX_EPT = 93       # 1 while in non-root operation with "enable EPT" (the MMU's 2D walk)
EPT_WALKER = 94    # address of the EPT walker in this process (the kernel table's KTAB_EPT),
                   # copied there by every run() call: the 2-D walk calls it (hvsim/mmu/ept.py)
VMCS_LAUNCH_STATE = 95 # launch state of the current VMCS (hvsim/arch/vmcs.py LAUNCH_*)
VMX_ENTRY_CHECK = 96   # the last failed VM-entry check (hvsim/vtx/checks.py), 0 = none
VMX_ENTRY_VALUE = 97   # the value that check found
VMX_VECTORING_INFO = 98    # an event whose delivery a VM exit interrupted (IDT-vectoring
VMX_VECTORING_ERROR = 99   # information format, SDM Vol. 3C 25.9.3) and its error code;
                           # 0 = none: the next VM exit moves them into the VMCS
EPT_RESULT_PA = 100        # the EPT walker's two results (a C call returns only its status):
EPT_RESULT_FLAGS = 101     # host-physical address, and EPT rights or TLB flags

# --- the kernel table (hvsim/cpu/table.py): one address per entry. Entries below
# KTAB_DELIVER are the instruction handlers by family (hvsim/cpu/decode.py OP_*); the
# kernels of events follow at fixed numbers, so a kernel below the CPU can name its own.
KTAB_DELIVER = 80      # interrupt and exception delivery (hvsim/rings/interrupts.py)
KTAB_VMEXIT = 81       # a VM exit (hvsim/vtx/exit.py)
KTAB_VMENTRY = 82      # the VM entry a VMM written in Python asks for (hvsim/vtx/entry.py)
KTAB_EPT = 83          # the EPT walker (hvsim/mmu/ept.py)
KTAB_SIZE = 84

# --- a pending fault, raised by a kernel and consumed by the run loop --------------------
FAULT_PENDING = 80  # 0 none, 1 architectural exception, 2 bus error (outside memory), 3 shutdown, 4 internal
FAULT_VECTOR = 81
FAULT_ERROR = 82    # error code, or -1 when the vector pushes none
FAULT_ADDR = 83     # linear address for #PF (goes to CR2) or physical address for bus error

FAULT_NONE = 0
FAULT_EXCEPTION = 1
FAULT_BUS = 2
FAULT_SHUTDOWN = 3
FAULT_INTERNAL = 4  # a kernel reached through the kernel table did not complete (table.py)
FAULT_VMEXIT = 5    # a VM exit (hvsim/vtx): FAULT_VECTOR = basic exit reason, FAULT_ERROR =
                    # exit qualification; the other exit fields are already in the VMCS cache

# a fault met while pre-fetching the bytes of an instruction on the next page: raised only
# if the decoder really needs those bytes (hvsim/cpu/decode.py)
FETCH_FAULT_KIND = 84
FETCH_FAULT_VECTOR = 85
FETCH_FAULT_ERROR = 86
FETCH_FAULT_ADDR = 87

# --- configuration (set by the Python face, read by kernels) ----------------------------
CFG_MEM_SIZE = 110
CFG_TLB_SETS = 111   # power of two
CFG_TLB_WAYS = 112
CFG_TLB_ENABLED = 113
CFG_DC_ENABLED = 114 # decode cache on/off (off = decode every instruction; for tests)
CFG_CONSOLE_PORT = 115  # port of the console device (default 0xE9, as Bochs/QEMU debugcon)
CFG_IRQ_TIMER_ON = 116
CFG_BLOCK_HOT = 117  # times a row is reached before its block is translated; 0 = no blocks (blocks.py)
BLOCK_REQUEST = 118  # dc row whose block the run loop asks the host to translate, -1 none
KERNEL_REQUEST = 119  # kernel-table entry the run loop asks the host to fill, -1 none (table.py)

# --- slots owned by the CPU core (hvsim/cpu/run.py) ----------------------------------
ZERO = 127         # always 0: an absent base/index register in a decoded address reads this slot
ATTN = 126         # set by a handler when the run loop must re-check interrupts/timer/halt
BP_COUNT = 124     # number of host breakpoints in BP_LIST (linear EIP addresses)
SHUTDOWN = 123     # 1 after a triple fault: the CPU stays shut down until reset
NO_RETIRE = 121    # set by a handler whose step did not finish the instruction (REP chunk)
RESUME_ROW = 122   # dc row of the instruction a kernel request stopped before, -1 none (table.py)
STEP_TRAP = 120    # 1: a single-step #DB (TF) trap held back by an I/O exit, taken first by the next run()
INSN_ROW = 125     # dc row of the instruction the interpreter is executing, read only when that
                   # instruction exits (its instruction information); blocks never exit, so
                   # they leave it as it was

# --- exception routing: one slot per vector (0..255) -------------------------------------
ROUTE = 128          # st[ROUTE + v]: 0 = deliver through the guest IDT, 1 = exit to host
ROUTE_GUEST = 0
ROUTE_HOST = 1

# --- port ownership: one slot per I/O port --------------------------------------------
PORTMAP = ROUTE + 256          # st[PORTMAP + port]: device id (hvsim/cpu/devices.py)
N_PORTS = 65536

# --- console device output buffer (bytes the guest wrote to the console port) ---------
CONSOLE_LEN = PORTMAP + N_PORTS   # number of bytes written so far (may exceed capacity)
CONSOLE_BUF = CONSOLE_LEN + 1
CONSOLE_CAP = 1 << 16

# --- event trace: a ring buffer of recent events (hvsim/cpu/trace.py) -------------------
TRACE_HEAD = CONSOLE_BUF + CONSOLE_CAP   # total events ever recorded
TRACE_BUF = TRACE_HEAD + 1
TRACE_FIELDS = 8     # kind, vector, error, eip, cpl_from, cpl_to, tsc, extra
TRACE_CAP = 1024
# --- counters: the bridge to the cost model (hvsim/arch/counters.py names them) ----------
COUNTERS = TRACE_BUF + TRACE_CAP * TRACE_FIELDS
N_COUNTERS = 512

BP_LIST = COUNTERS + N_COUNTERS
BP_CAP = 16

# --- the exit-info block: why run() returned (hvsim/arch/exits.py names the kinds) ------
# Contiguous, so the face reads it with one slice. The instruction-information part is
# hvsim's analogue of VMX's exit qualification and VM-exit instruction-information field
# (SDM Vol. 3C, 28.2.1 and 28.2.5): the trapping instruction as the core decoded it, so
# no monitor has to read its bytes back or disassemble them (hvsim/instruction.py).
EXIT_INFO = BP_LIST + BP_CAP
EXIT_KIND = EXIT_INFO + 0
EXIT_VECTOR = EXIT_INFO + 1
EXIT_ERROR = EXIT_INFO + 2     # error code or -1
EXIT_EIP = EXIT_INFO + 3       # EIP of the instruction that caused the exit
EXIT_PORT = EXIT_INFO + 4
EXIT_SIZE = EXIT_INFO + 5      # bytes (1, 2 or 4)
EXIT_DIR = EXIT_INFO + 6       # 0 = OUT (guest writes), 1 = IN (guest reads)
EXIT_VALUE = EXIT_INFO + 7     # OUT: value written
EXIT_ADDR = EXIT_INFO + 8      # fault address (#PF: linear; bus error: physical)
EXIT_LEN = EXIT_INFO + 9       # instruction length (so a handler can skip it)
EXIT_CPL = EXIT_INFO + 10      # CPL when the exit happened
EXIT_STEPS = EXIT_INFO + 11    # instructions retired by this run() call
EXIT_SOURCE = EXIT_INFO + 12   # for EXIT_EXCEPTION: 0 fault, 1 trap, 2 software INT n, 3 external
EXIT_INSN = EXIT_INFO + 13     # 1: the fields below describe the instruction that exited, 0: none
EXIT_OP = EXIT_INFO + 14       # handler family (hvsim/cpu/decode.py OP_*)
EXIT_OPC = EXIT_INFO + 15      # opcode: one byte, 0x100 | 2nd byte (0F xx), 0x200 | 3rd (0F 38 xx)
EXIT_REG = EXIT_INFO + 16      # ModRM.reg (register number or /digit), or the +r register
EXIT_RM = EXIT_INFO + 17       # ModRM.rm register when mod = 11b, else -1 (memory operand)
EXIT_OPSIZE = EXIT_INFO + 18   # operand size in bytes
EXIT_BASE = EXIT_INFO + 19     # base register number of the memory operand, or -1
EXIT_INDEX = EXIT_INFO + 20    # index register number, or -1
EXIT_SCALE = EXIT_INFO + 21    # index scale as a shift, 0..3
EXIT_DISP = EXIT_INFO + 22     # displacement (32-bit)
EXIT_IMM = EXIT_INFO + 23      # immediate (or branch offset, moffs)
EXIT_IMM2 = EXIT_INFO + 24     # second immediate (far pointer selector)
EXIT_SEG = EXIT_INFO + 25      # segment register of the memory operand (after overrides)
EXIT_PFX = EXIT_INFO + 26      # prefix bits (hvsim/cpu/decode.py PFX_*)
EXIT_EA = EXIT_INFO + 27       # effective address (offset in the segment) of the memory operand
EXIT_LINEAR = EXIT_INFO + 28   # linear address = segment base + effective address
EXIT_INFO_SIZE = 32

# --- room for VT-x (issue 13): the current VMCS as the processor caches it (SDM Vol. 3C,
# 25.1: the VMCS region's format is implementation-specific; hvsim's layout is documented
# where it is filled) and a second, guest context of the architectural registers.
VMCS_CACHE = EXIT_INFO + EXIT_INFO_SIZE
VMCS_CACHE_SIZE = 512
GUEST_CONTEXT = VMCS_CACHE + VMCS_CACHE_SIZE
GUEST_CONTEXT_SIZE = 128

# --- the instruction trace (hvsim/cpu/itrace.py): one record per retired instruction,
# written to a buffer in the machine's memory, in the spirit of the Branch Trace Store
# (SDM Vol. 3B, 18.6.8 / "Debug Store (DS) Mechanism": records written to a memory buffer
# software names, software told when it fills). The record format is hvsim's own, below.
# (Named ITRACE_*: TRACE_* above is the event ring buffer.)
ITRACE = GUEST_CONTEXT + GUEST_CONTEXT_SIZE
ITRACE_BASE = ITRACE + 0     # physical address of the buffer (ITRACE_RECORD_BYTES-aligned)
ITRACE_CAP = ITRACE + 1      # capacity in records; 0 = tracing off (the default)
ITRACE_COUNT = ITRACE + 2    # records written so far (the host drains and resets it)
ITRACE_LOST = ITRACE + 3     # records that found no room (never expected: the face raises)
ITRACE_FULL = ITRACE + 4     # 1: the run loop asks the host to drain the buffer (an internal
                             # request, as BLOCK_REQUEST: run() never shows it to its caller)
ITRACE_PC = ITRACE + 5       # the record of the instruction executing, staged before its
ITRACE_PHYS = ITRACE + 6     # handler runs and written when it retires: linear pc, physical
ITRACE_MODE = ITRACE + 7     # address (also the fetched address of an instruction a kernel
ITRACE_OPW = ITRACE + 8      # request stopped, for its resumption), mode word, op word,
ITRACE_IMM = ITRACE + 9      # immediate, and CS.base
ITRACE_CSBASE = ITRACE + 10
ITRACE_PHYS2 = ITRACE + 11   # an instruction across two linear pages: the physical address
                             # the fetch found for the second page (hvsim/cpu/decode.py _fill)
ITRACE_SIZE = 16
# Record: ITRACE_RECORD_WORDS little-endian u32 words.
#   w0 pc     linear address of the instruction (CS.base + EIP); code-written: 0
#   w1 phys   physical address of its first byte; code-written: first byte written
#   w2 mode   bits 1:0 CPL, bit 4 CS.D (32-bit code), bits 13:12 IOPL (as in EFLAGS),
#             bits 31:28 the record kind (ITRACE_KIND_*)
#   w3 op     bits 7:0 decoder op (hvsim/cpu/decode.py OP_*), 11:8 length, 14:12 ModRM.reg,
#             25:16 opcode (decode.py F_OPC); code-written: bytes written
#   w4 imm    the decoded immediate (a relative branch's offset); code-written: 0
#   w5 next   linear address of the next instruction (CS.base + EIP after it retired):
#             the branch target taken, or the handler of an event it raised
#   w6 csbase CS.base the instruction ran with (with w2: QEMU's TB key); code-written: 0
#   w7 phys2  an instruction whose bytes cross into the next linear page: the physical
#             address of that page's first byte, the frame it maps to; else 0. A store
#             there is traced too. Code-written: 0
ITRACE_RECORD_WORDS = 8
ITRACE_RECORD_BYTES = 4 * ITRACE_RECORD_WORDS
ITRACE_KIND_SHIFT = 28
ITRACE_KIND_INSN = 1          # an instruction retired
ITRACE_KIND_CODE_WRITTEN = 2  # a store hit a frame code was decoded from while tracing
ITRACE_MODE_CS32 = 1 << 4
ITRACE_RESERVE = 32           # records kept free for one step (its instruction, the code
                              # writes of its stores and of an event's delivery, coalesced)

ST_SIZE = ITRACE + ITRACE_SIZE

# --- TLB entry layout (tlb array; hvsim/mmu owns the meaning) -------------------------
TLB_FIELDS = 4       # tag, frame, flags, lru stamp

# --- decode-cache layout (dc array; hvsim/cpu/decode.py owns the meaning) ------------------
DC_ENTRIES = 1 << 14
DC_FIELDS = 18     # 16 decoded fields (decode.py) + 2 of the block translator (blocks.py)
DC_SHAPE = (DC_FIELDS, DC_ENTRIES + 2)   # field-major: dc[field, entry] (decode.py)

# --- physical page word (pg array) ------------------------------------------------------
PG_CODE = 1          # bit 0: a decoded instruction was cached from this frame
PG_TRACED = 2        # bit 1: an instruction was fetched from it while tracing: a store into
                     # it writes a code-written record (hvsim/mmu/frames.py), even after
                     # PG_CODE was cleared -- a model of a finer cache may still hold code there
PG_WATCH = PG_CODE | PG_TRACED
PG_GEN_SHIFT = 2
PG_GEN_ONE = 1 << PG_GEN_SHIFT  # generation counter in bits 63:2; a write to a code frame adds this
