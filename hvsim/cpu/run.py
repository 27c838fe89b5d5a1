"""The run loop: fetch, decode, dispatch, interrupts, timer, exits (jitted).

``run(mem, st, tlb, dc, pg, budget)`` is hvsim's KVM_RUN: it executes guest
instructions until something needs software -- an exception routed to the host, an
I/O port no device claims, HLT with nothing to wake it, a triple fault, an access
outside memory, a host breakpoint, or the end of the budget -- and returns the exit
kind (hvsim/arch/exits.py) with the details in the EXIT_* slots of ``st``.

Every call returns after at most ``budget`` steps (a step is one instruction, one
fault, or one chunk of a REP string instruction), so no guest can hang the host.
"""
from hvsim._jit import njit
from hvsim.cpu import decode as D
from hvsim.cpu.blocks import call_block, F_BLK, F_HOT, BLOCK_NONE, BLOCK_NEVER, ATTN_BLOCK
from hvsim.cpu.table import call_handler, call_deliver, K_DELIVER, K_VMEXIT, K_VMENTRY, K_EPT, STATUS_OK
from hvsim.arch.counters import (C_INSN, C_INSN_RING, C_EXC, C_EXITS, C_EXIT_KIND, C_IRQ,
                                C_TIMER, C_TLB_HIT)
from hvsim.arch.cr import CR0_PG
from hvsim.arch.exits import (EXIT_NONE, EXIT_HALT, EXIT_EXCEPTION, EXIT_BUDGET, EXIT_SHUTDOWN, EXIT_IO,
                             EXIT_BUS_ERROR, EXIT_BREAKPOINT, EXIT_INTERRUPT, EXIT_TRANSLATE,
                             EXIT_INTERNAL_ERROR, EXIT_VMEXIT)
from hvsim.arch.fault import raise_fault, raise_bus_error, raise_internal
from hvsim.arch.flags import IF, TF
from hvsim.arch.layout import (
    MASK32, EIP, EFLAGS, CR0, CR2, CPL, TSC, SEG_BASE, SEG_LIMIT, SREG_CS, CFG_MEM_SIZE,
    FETCH_LIN_PAGE, FETCH_PHYS_PAGE, FETCH_CPL, FAULT_PENDING, FAULT_VECTOR, FAULT_ERROR,
    FAULT_ADDR, FAULT_EXCEPTION, FAULT_BUS, FAULT_INTERNAL, INSN_EIP, INSN_LEN, HALTED, INT_SHADOW,
    IRQ_PENDING, TIMER_PERIOD, TIMER_NEXT, TIMER_VECTOR, ATTN, NO_RETIRE, SHUTDOWN, BP_COUNT,
    BP_LIST, ROUTE, ROUTE_HOST, COUNTERS, EXIT_KIND, EXIT_VECTOR, EXIT_ERROR, EXIT_EIP,
    EXIT_ADDR, EXIT_LEN, EXIT_CPL, EXIT_STEPS, EXIT_SOURCE, STEP_TRAP,
    CFG_TLB_ENABLED, CFG_BLOCK_HOT, BLOCK_REQUEST, DC_ENTRIES, KERNEL_REQUEST, RESUME_ROW,
    INSN_ROW, ZERO, EXIT_INSN, EXIT_OP, EXIT_OPC, EXIT_REG, EXIT_RM,
    EXIT_OPSIZE, EXIT_BASE, EXIT_INDEX, EXIT_SCALE, EXIT_DISP, EXIT_IMM, EXIT_IMM2, EXIT_SEG,
    EXIT_PFX, EXIT_EA, EXIT_LINEAR,
)
from hvsim.arch.layout import DR6, BLOCKING_BY_MOV_SS, BLOCKING_BY_STI, DELIVERING
from hvsim.arch.layout import (FAULT_VMEXIT, FAULT_SHUTDOWN, VMX_VECTORING_INFO, VMX_NONROOT,
                              VMX_PYTHON_HOST, VMX_ENTRY_REQUEST, VMX_EPT, EPT_WALKER)
from hvsim.arch import vmcs as _V
from hvsim.arch import vmx as _X
from hvsim.arch.fault import raise_vmexit
from hvsim.rings.interrupts import leaves_guest
from hvsim.arch.dr import DR6_BS
from hvsim.arch.layout import ITRACE_CAP, ITRACE_COUNT, ITRACE_FULL, ITRACE_PHYS, ITRACE_RESERVE
from hvsim.cpu.itrace import stage as itrace_stage, commit as itrace_commit
from hvsim.mmu.paging import translate
from hvsim.arch.pte import ACC_FETCH, ACC_USER
from hvsim.rings.interrupts import trace_record, EV_FAULT, EV_TRAP, EV_EXTERNAL
from hvsim.arch.vectors import GP, DB, PF

# VMX non-root operation (hvsim/vtx): the VMCS fields the run loop reads
_PIN_CONTROLS = _V.state_index("PIN_BASED_VM_EXEC_CONTROL")
_CPU_CONTROLS = _V.state_index("CPU_BASED_VM_EXEC_CONTROL")
_EXIT_CONTROLS = _V.state_index("VM_EXIT_CONTROLS")
_EXIT_INTR_INFO = _V.state_index("VM_EXIT_INTR_INFO")
_EXIT_INTR_ERROR = _V.state_index("VM_EXIT_INTR_ERROR_CODE")
_R_EXCEPTION = int(_X.ExitReason.EXCEPTION_NMI)
_R_EXTERNAL = int(_X.ExitReason.EXTERNAL_INTERRUPT)
_R_TRIPLE_FAULT = int(_X.ExitReason.TRIPLE_FAULT)
_R_INTERRUPT_WINDOW = int(_X.ExitReason.INTERRUPT_WINDOW)
_R_EPT_VIOLATION = int(_X.ExitReason.EPT_VIOLATION)
_HARDWARE_EXCEPTION = _X.INTR_INFO_VALID | (_X.INTR_TYPE_HARDWARE_EXCEPTION << _X.INTR_INFO_TYPE_SHIFT)
_SOFTWARE_EXCEPTION = _X.INTR_INFO_VALID | (_X.INTR_TYPE_SOFTWARE_EXCEPTION << _X.INTR_INFO_TYPE_SHIFT)

# EXIT_SOURCE values: what kind of event an 'exception' exit is
SRC_FAULT = 0
SRC_TRAP = 1
SRC_SOFTWARE = 2
SRC_EXTERNAL = 3

TRACE_EXIT = 3        # trace-record kind for a host exit (2 = delivered through the IDT)


@njit(inline="always")
def fetch_pa(mem, st, tlb):
    """Physical address of the byte at CS:EIP, or -1 with a fault pending.

    The last code page's translation is kept (a one-entry instruction TLB in front of
    the TLB model); it counts as a TLB hit and is dropped by every TLB flush, INVLPG
    and CR0/CR3/CR4 write. A machine without a TLB keeps nothing: every fetch walks.
    """
    eip = st[EIP]
    if eip > st[SEG_LIMIT + SREG_CS]:
        raise_fault(st, GP, 0)
        return -1
    lin = (st[SEG_BASE + SREG_CS] + eip) & MASK32
    if (st[CR0] & CR0_PG) != 0:
        page = lin >> 12
        cpl = st[CPL]
        if page == st[FETCH_LIN_PAGE] and cpl == st[FETCH_CPL]:
            st[COUNTERS + C_TLB_HIT] += 1
            pa = (st[FETCH_PHYS_PAGE] << 12) | (lin & 0xFFF)
        else:
            acc = ACC_FETCH
            if cpl == 3:
                acc |= ACC_USER
            pa = translate(mem, st, tlb, lin, acc)
            if st[FAULT_PENDING] != 0:
                return -1
            if st[CFG_TLB_ENABLED] != 0:
                st[FETCH_LIN_PAGE] = page
                st[FETCH_PHYS_PAGE] = pa >> 12
                st[FETCH_CPL] = cpl
    else:
        pa = lin
    if pa >= st[CFG_MEM_SIZE]:
        raise_bus_error(st, pa)
        return -1
    return pa


@njit(inline="always")
def execute_one(mem, st, tlb, dc, pg, limit, ktab, resume, tracing):
    """Fetch, decode (through the cache) and execute one instruction at CS:EIP.

    In a fast stretch (``limit`` > 0 instructions left in it), a row with a translated
    block runs the block instead, and a row reached ``st[CFG_BLOCK_HOT]`` times asks
    for its block (hvsim/cpu/blocks.py). The instruction's handler is called through
    the kernel table (hvsim/cpu/table.py); when its entry is still empty, nothing is
    executed: the row is kept in ``st[RESUME_ROW]`` and the kernel asked for. ``resume``
    >= 0 is such a row, fetched and decoded before the request: it is executed now
    without fetching again. Returns the instructions retired (1 for one interpreted
    instruction, also when it faulted; 0 for a request). ``tracing``: the instruction's
    trace record is staged (hvsim/cpu/itrace.py) and ATTN raised, so that the run loop's
    checked path writes it when the instruction retires.
    """
    eip = st[EIP]
    if resume >= 0:
        row = resume
        pa = st[ITRACE_PHYS]                  # kept by the request below
    else:
        st[INSN_EIP] = eip
        st[INSN_LEN] = 0
        pa = fetch_pa(mem, st, tlb)
        if pa < 0:
            return 1
        lin = (st[SEG_BASE + SREG_CS] + eip) & MASK32
        row = D.lookup(mem, st, tlb, dc, pg, lin, pa)
        if row < 0:
            return 1
    st[INSN_ROW] = row
    op = dc[D.F_OP, row]
    if ktab[op] == 0 and op != D.OP_NOP:
        if tracing:
            st[ITRACE_PHYS] = pa          # (else untouched: the state stays the untraced one)
        st[KERNEL_REQUEST] = op
        st[RESUME_ROW] = row
        st[ATTN] = 1
        return 0
    if limit > 0 and row < DC_ENTRIES:
        blk = dc[F_BLK, row]
        if blk > 0:
            done = call_block(blk, st, mem, tlb, pg, limit)
            if done > 0:
                return done
        elif blk == BLOCK_NONE and st[CFG_BLOCK_HOT] > 0:
            hot = dc[F_HOT, row] + 1
            dc[F_HOT, row] = hot
            if hot >= st[CFG_BLOCK_HOT]:
                dc[F_BLK, row] = BLOCK_NEVER      # until the host has translated it
                st[BLOCK_REQUEST] = row
                st[ATTN] = ATTN_BLOCK             # the instruction's handler may still set 1
    n = dc[D.F_LEN, row]
    if eip + n - 1 > st[SEG_LIMIT + SREG_CS]:
        raise_fault(st, GP, 0)
        return 1
    st[INSN_LEN] = n
    if tracing:
        itrace_stage(st, dc, row, eip, pa)
        st[ATTN] = 1
    st[EIP] = (eip + n) & MASK32
    # the one dispatch site: handler family -> handler (hvsim/cpu/table.py: HANDLERS)
    if op != D.OP_NOP:
        if call_handler(ktab[op], mem, st, tlb, pg, dc, row) != STATUS_OK:
            raise_internal(st, op)
    return 1


@njit
def record_insn(st, dc):
    """Copy the exiting instruction's decoded row into the exit-info block, with the
    effective and linear address of its memory operand worked out from the registers
    (unchanged: an instruction that exits has had no effect, SDM Vol. 3C 26.1)."""
    row = st[INSN_ROW]
    base = dc[D.F_BASE, row]
    index = dc[D.F_INDEX, row]
    seg = dc[D.F_SEG, row]
    st[EXIT_INSN] = 1
    st[EXIT_OP] = dc[D.F_OP, row]
    st[EXIT_OPC] = dc[D.F_OPC, row]
    st[EXIT_REG] = dc[D.F_REG, row]
    st[EXIT_RM] = dc[D.F_RM, row]
    st[EXIT_OPSIZE] = dc[D.F_SIZE, row]
    st[EXIT_BASE] = -1 if base == ZERO else base
    st[EXIT_INDEX] = -1 if index == ZERO else index
    st[EXIT_SCALE] = dc[D.F_SCALE, row]
    st[EXIT_DISP] = dc[D.F_DISP, row]
    st[EXIT_IMM] = dc[D.F_IMM, row]
    st[EXIT_IMM2] = dc[D.F_IMM2, row]
    st[EXIT_SEG] = seg
    st[EXIT_PFX] = dc[D.F_PFX, row]
    ea = (st[base] + (st[index] << dc[D.F_SCALE, row]) + dc[D.F_DISP, row]) & MASK32
    st[EXIT_EA] = ea
    st[EXIT_LINEAR] = (st[SEG_BASE + seg] + ea) & MASK32


@njit
def _exit(st, dc, kind, steps):
    st[EXIT_STEPS] = steps
    if kind == EXIT_TRANSLATE:
        # to the host, which translates a block or compiles a kernel and calls run()
        # again with the rest of the budget (Machine._run): not a guest event, so
        # nothing is counted or traced
        return kind
    if st[EXIT_INSN] == 2:             # recorded with this exit's #PF (handle_fault)
        st[EXIT_INSN] = 1
    elif kind != EXIT_VMEXIT or st[EXIT_LEN] == 0:   # (else _vm_exit recorded it)
        st[EXIT_INSN] = 0
    if st[EXIT_LEN] > 0 and (kind == EXIT_IO or kind == EXIT_HALT or (
            kind == EXIT_EXCEPTION and st[EXIT_SOURCE] != SRC_TRAP)):
        record_insn(st, dc)           # the instruction that exited, as the core decoded it
    st[EXIT_KIND] = kind
    st[EXIT_CPL] = st[CPL]
    st[COUNTERS + C_EXITS] += 1
    st[COUNTERS + C_EXIT_KIND + kind] += 1
    if kind != EXIT_BUDGET:      # the host slicing the run is not a guest event
        trace_record(st, TRACE_EXIT, kind, st[EXIT_VECTOR], st[EXIT_EIP], st[CPL], st[CPL], 0)
    return kind


@njit(inline="always")
def delivery_waits(st, ktab, vector, error):
    """Whether delivering ``vector`` through the guest IDT (or, when it leaves the guest
    in VMX non-root operation, the VM exit) must wait for the kernel table's K_DELIVER
    (K_VMEXIT) entry (hvsim/cpu/table.py); if so the request is made."""
    if leaves_guest(st, vector, error):
        if st[VMX_NONROOT] == 0 or ktab[K_VMEXIT] != 0:
            return False
        st[KERNEL_REQUEST] = K_VMEXIT
        return True
    if ktab[K_DELIVER] != 0:
        return False
    st[KERNEL_REQUEST] = K_DELIVER
    return True


@njit(inline="always")
def _delivering_software_event(st):
    """Whether the exit interrupted the delivery of INT n, INT3/INTO or INT1 (IDT-vectoring
    type 4, 6 or 5): the exit then reports that instruction's length (SDM Vol. 3C 28.2.4)."""
    info = st[VMX_VECTORING_INFO]
    t = (info >> 8) & 7
    return (info & _X.INTR_INFO_VALID) != 0 and (t == 4 or t == 5 or t == 6)


@njit
def _vm_exit(mem, st, tlb, pg, dc, ktab):
    """Complete the pending VM exit through the kernel table (K_VMEXIT): EXIT_VMEXIT for a
    VMM written in Python, EXIT_NONE when the CPU goes on at HOST_RIP in root operation,
    EXIT_TRANSLATE while the entry is still empty (the exit stays pending)."""
    if ktab[K_VMEXIT] == 0:
        st[KERNEL_REQUEST] = K_VMEXIT
        return EXIT_TRANSLATE
    reason = st[FAULT_VECTOR]
    st[EIP] = st[INSN_EIP]                # fault-like: the guest's RIP is the instruction's
    # An EPT violation made by an instruction's own access carries that instruction to a
    # VMM written in Python, as the core decoded it, for one that emulates it (KVM decodes
    # such an MMIO access itself); recorded while the guest's registers and segments are
    # the CPU's. A fetch, or an event's delivery, has no instruction of its own (length 0).
    length = 0
    if reason == _R_EPT_VIOLATION and st[VMX_PYTHON_HOST] != 0:
        length = st[INSN_LEN]
        if length > 0:
            record_insn(st, dc)
    elif reason == _R_EXCEPTION and st[EXIT_INSN] == 2:
        length = st[EXIT_LEN]             # a #PF's instruction, recorded by handle_fault
    if call_handler(ktab[K_VMEXIT], mem, st, tlb, pg, dc, 0) != STATUS_OK:
        raise_internal(st, K_VMEXIT)
        return EXIT_NONE
    if st[VMX_PYTHON_HOST] != 0:
        st[EXIT_VECTOR] = reason
        st[EXIT_ERROR] = -1
        st[EXIT_EIP] = st[EIP]
        st[EXIT_LEN] = length
        return EXIT_VMEXIT
    return EXIT_NONE


@njit
def handle_fault(mem, st, tlb, pg, dc, ktab):
    """Turn the pending fault into guest delivery or a host exit kind (EXIT_NONE = delivered).

    EXIT_TRANSLATE: delivery through the guest IDT needs the kernel table's K_DELIVER
    entry, still empty; the fault stays pending, untouched, for the next run() call.
    In VMX non-root operation a triple fault, and an exception the exception bitmap
    selects, become VM exits (reasons 2 and 0, SDM Vol. 3C 25.6.3 and 26.2).
    """
    while st[FAULT_PENDING] != 0:
        kind = st[FAULT_PENDING]
        if kind == FAULT_EXCEPTION and delivery_waits(st, ktab, st[FAULT_VECTOR], st[FAULT_ERROR]):
            return EXIT_TRANSLATE
        if kind == FAULT_VMEXIT:
            k = _vm_exit(mem, st, tlb, pg, dc, ktab)
            if k != EXIT_NONE:
                return k
            continue
        if kind == FAULT_SHUTDOWN and st[VMX_NONROOT] != 0:
            st[FAULT_PENDING] = 0
            raise_vmexit(st, _R_TRIPLE_FAULT, 0)
            continue
        st[FAULT_PENDING] = 0
        if kind == FAULT_BUS:
            st[EIP] = st[INSN_EIP]
            st[EXIT_VECTOR] = -1
            st[EXIT_ERROR] = -1
            st[EXIT_ADDR] = st[FAULT_ADDR]
            st[EXIT_EIP] = st[INSN_EIP]
            st[EXIT_LEN] = st[INSN_LEN]
            return EXIT_BUS_ERROR
        if kind == FAULT_INTERNAL:            # a kernel did not complete (table.py)
            st[EIP] = st[INSN_EIP]
            st[EXIT_VECTOR] = st[FAULT_VECTOR]
            st[EXIT_ERROR] = -1
            st[EXIT_EIP] = st[INSN_EIP]
            st[EXIT_LEN] = 0
            return EXIT_INTERNAL_ERROR
        if kind != FAULT_EXCEPTION:           # shutdown: the processor stops
            st[SHUTDOWN] = 1
            st[EIP] = st[INSN_EIP]
            st[EXIT_VECTOR] = -1
            st[EXIT_ERROR] = -1
            st[EXIT_EIP] = st[INSN_EIP]
            return EXIT_SHUTDOWN
        v = st[FAULT_VECTOR]
        err = st[FAULT_ERROR]
        src = st[EXIT_SOURCE]
        st[EXIT_SOURCE] = SRC_FAULT
        if src != SRC_TRAP:
            st[EIP] = st[INSN_EIP]            # faults restart the instruction
        if v < 32:
            st[COUNTERS + C_EXC + v] += 1
        if st[VMX_NONROOT] != 0 and leaves_guest(st, v, err):
            # a VM exit instead of delivery; CR2 is not loaded (SDM Vol. 3C, 26.2 note)
            if src == SRC_TRAP:
                st[INSN_EIP] = st[EIP]        # a trap's exit saves the next instruction's EIP
            info = (_SOFTWARE_EXCEPTION if src == SRC_SOFTWARE else _HARDWARE_EXCEPTION) | v
            if err >= 0:
                info |= _X.INTR_INFO_DELIVER_ERROR_CODE
                st[_EXIT_INTR_ERROR] = err
            st[_EXIT_INTR_INFO] = info
            if src != SRC_SOFTWARE and not _delivering_software_event(st):
                if v == PF and st[VMX_PYTHON_HOST] != 0 and st[INSN_LEN] > 0 \
                        and st[DELIVERING] < 0:
                    # an instruction's own access: a Python VMM that shadows the guest's
                    # page tables gets it decoded (as an EPT violation's), to emulate a
                    # store into a guest page table; 2 = no length is reported with it
                    record_insn(st, dc)
                    st[EXIT_INSN] = 2
                    st[EXIT_LEN] = st[INSN_LEN]     # for the VMM, not the VMCS (_vm_exit)
                st[INSN_LEN] = 0              # only software events report a length (28.2.4)
            raise_vmexit(st, _R_EXCEPTION, st[FAULT_ADDR] if v == PF else 0)
            continue
        if v == PF:
            st[CR2] = st[FAULT_ADDR]          # SDM 4.7: CR2 is loaded when #PF occurs
        if st[VMX_NONROOT] == 0 and st[ROUTE + v] == ROUTE_HOST:   # (non-root: the bitmap)
            st[EXIT_VECTOR] = v
            st[EXIT_ERROR] = err
            st[EXIT_EIP] = st[INSN_EIP] if src != SRC_TRAP else st[EIP]
            st[EXIT_LEN] = st[INSN_LEN]
            st[EXIT_ADDR] = st[FAULT_ADDR] if v == PF else 0
            st[EXIT_SOURCE] = src
            return EXIT_EXCEPTION
        if call_deliver(ktab[K_DELIVER], mem, st, tlb, pg, v, err,
                        EV_TRAP if src == SRC_TRAP else EV_FAULT) != STATUS_OK:
            raise_internal(st, K_DELIVER)
        # an escalated fault that deliver() left pending is handled by the next iteration
    return EXIT_NONE


@njit
def _nonroot_events(mem, st, tlb, pg, dc, ktab):
    """Between two guest instructions in VMX non-root operation: an open interrupt window
    with "interrupt-window exiting" (exit 7), a pending external interrupt with "external-
    interrupt exiting" (exit 1; with "acknowledge interrupt on exit" the vector goes into
    the VM-exit interruption information and leaves the line, else it stays pending).
    EXIT_NONE when neither applies (or the CPU went on in root operation)."""
    blocked = (st[INT_SHADOW] & (BLOCKING_BY_STI | BLOCKING_BY_MOV_SS)) != 0
    if (st[_CPU_CONTROLS] & _X.CPU_INTERRUPT_WINDOW_EXITING) != 0 and \
            (st[EFLAGS] & IF) != 0 and not blocked:
        st[INSN_EIP] = st[EIP]
        st[INSN_LEN] = 0
        raise_vmexit(st, _R_INTERRUPT_WINDOW, 0)
        return handle_fault(mem, st, tlb, pg, dc, ktab)
    if st[IRQ_PENDING] >= 0 and not blocked and \
            (st[_PIN_CONTROLS] & _X.PIN_EXTERNAL_INTERRUPT_EXITING) != 0:
        st[INSN_EIP] = st[EIP]
        st[INSN_LEN] = 0
        if (st[_EXIT_CONTROLS] & _X.EXIT_ACK_INTERRUPT_ON_EXIT) != 0:
            st[_EXIT_INTR_INFO] = _X.INTR_INFO_VALID | st[IRQ_PENDING]   # type 0: external
            st[IRQ_PENDING] = -1
        else:
            st[_EXIT_INTR_INFO] = 0
        raise_vmexit(st, _R_EXTERNAL, 0)
        return handle_fault(mem, st, tlb, pg, dc, ktab)
    return EXIT_NONE


@njit
def run(mem, st, tlb, dc, pg, budget, ktab):
    """Run until an exit; at most ``budget`` steps. Returns the exit kind.

    ``ktab`` is the kernel table (hvsim/cpu/table.py): the handlers' addresses.
    """
    st[EXIT_KIND] = EXIT_NONE
    if st[FAULT_PENDING] == 0:                # else: its kind, kept by a kernel request
        st[EXIT_SOURCE] = SRC_FAULT
    st[EXIT_LEN] = 0                          # exits without an instruction of their own
    steps = 0
    first = True
    resume = st[RESUME_ROW]                   # an instruction stopped by a kernel request
    st[RESUME_ROW] = -1
    # the EPT walker of this process, for the MMU's 2-D walk (hvsim/mmu/ept.py); a state
    # restored in a guest with EPT on needs it before anything else (table.py)
    st[EPT_WALKER] = ktab[K_EPT]
    if st[VMX_EPT] != 0 and ktab[K_EPT] == 0:
        st[RESUME_ROW] = resume
        st[KERNEL_REQUEST] = K_EPT
        return _exit(st, dc, EXIT_TRANSLATE, steps)
    if st[VMX_ENTRY_REQUEST] != 0 and st[VMX_NONROOT] != 0:
        st[VMX_ENTRY_REQUEST] = 0             # already in the guest: nothing to enter
    if st[VMX_ENTRY_REQUEST] != 0:
        # a VMM written in Python enters its guest (hvsim/monitors/kvm.py): VMLAUNCH/VMRESUME
        if ktab[K_VMENTRY] == 0:
            st[KERNEL_REQUEST] = K_VMENTRY
            return _exit(st, dc, EXIT_TRANSLATE, steps)
        if call_handler(ktab[K_VMENTRY], mem, st, tlb, pg, dc, 0) != STATUS_OK:
            raise_internal(st, K_VMENTRY)
        if st[VMX_NONROOT] == 0 and st[FAULT_PENDING] == 0:
            # VMfail (the instruction fell through) or a failed entry (host state loaded)
            st[EXIT_VECTOR] = -1
            st[EXIT_ERROR] = -1
            st[EXIT_EIP] = st[EIP]
            return _exit(st, dc, EXIT_VMEXIT, steps)
    if st[FAULT_PENDING] != 0:
        # a fault whose delivery stopped for a kernel request: delivered first
        k = handle_fault(mem, st, tlb, pg, dc, ktab)
        if k != EXIT_NONE:
            return _exit(st, dc, k, steps)
        first = False                         # EIP moved to the handler: its breakpoint counts
    if st[STEP_TRAP] != 0:
        # the single-step trap of the instruction that left with an I/O exit: the
        # monitor has completed that instruction, so the trap is due now
        st[STEP_TRAP] = 0
        st[EXIT_SOURCE] = SRC_TRAP
        st[DR6] |= DR6_BS
        raise_fault(st, DB, -1)
        k = handle_fault(mem, st, tlb, pg, dc, ktab)
        if k != EXIT_NONE:
            return _exit(st, dc, k, steps)
        first = False                         # EIP moved to the handler: its breakpoint counts
    while True:
        if st[SHUTDOWN] != 0:
            st[EXIT_EIP] = st[EIP]
            return _exit(st, dc, EXIT_SHUTDOWN, steps)
        # -- the instruction trace: the host drains the buffer before a step could fill it
        #    (hvsim/cpu/itrace.py; an internal request, as a block's)
        tracing = st[ITRACE_CAP] != 0
        if tracing and st[ITRACE_COUNT] > st[ITRACE_CAP] - ITRACE_RESERVE:
            st[ITRACE_FULL] = 1
            return _exit(st, dc, EXIT_TRANSLATE, steps)
        # -- the timer raises its vector on the interrupt line at its deadline
        period = st[TIMER_PERIOD]
        if period > 0 and st[TSC] >= st[TIMER_NEXT]:
            st[IRQ_PENDING] = st[TIMER_VECTOR]
            st[COUNTERS + C_TIMER] += 1
            nxt = st[TIMER_NEXT] + period
            if nxt <= st[TSC]:
                nxt = st[TSC] + period
            st[TIMER_NEXT] = nxt
        # -- VMX non-root: the interrupt window, and external-interrupt exiting, which
        #    RFLAGS.IF does not block (SDM Vol. 3C, 25.6.1, 26.3 and 26.7.5)
        if st[VMX_NONROOT] != 0:
            k = _nonroot_events(mem, st, tlb, pg, dc, ktab)
            if k != EXIT_NONE:
                return _exit(st, dc, k, steps)
        # -- an external interrupt is taken between instructions when IF=1 and no shadow
        if st[IRQ_PENDING] >= 0 and (st[EFLAGS] & IF) != 0 and st[INT_SHADOW] == 0:
            v = st[IRQ_PENDING]
            if delivery_waits(st, ktab, v, -1):     # taken when run() is called again
                return _exit(st, dc, EXIT_TRANSLATE, steps)
            st[IRQ_PENDING] = -1
            st[HALTED] = 0
            st[INSN_EIP] = st[EIP]
            st[INSN_LEN] = 0
            if st[VMX_NONROOT] == 0 and st[ROUTE + v] == ROUTE_HOST:
                st[EXIT_VECTOR] = v
                st[EXIT_ERROR] = -1
                st[EXIT_EIP] = st[EIP]
                st[EXIT_LEN] = 0
                st[EXIT_SOURCE] = SRC_EXTERNAL
                return _exit(st, dc, EXIT_INTERRUPT, steps)
            st[COUNTERS + C_IRQ] += 1
            if call_deliver(ktab[K_DELIVER], mem, st, tlb, pg, v, -1, EV_EXTERNAL) != STATUS_OK:
                raise_internal(st, K_DELIVER)
            if st[FAULT_PENDING] != 0:
                k = handle_fault(mem, st, tlb, pg, dc, ktab)
                if k != EXIT_NONE:
                    return _exit(st, dc, k, steps)
        if st[HALTED] != 0:
            # a sleeping CPU waits for the timer when an interrupt can wake it: IF = 1, or
            # in non-root operation "external-interrupt exiting", which IF does not block
            # (SDM Vol. 3C, 26.3) and whose exit ends the HLT state
            wakes = (st[EFLAGS] & IF) != 0 or (st[VMX_NONROOT] != 0 and (
                st[_PIN_CONTROLS] & _X.PIN_EXTERNAL_INTERRUPT_EXITING) != 0)
            if period > 0 and wakes:
                # asleep until the timer fires: time passes without instructions
                if st[TSC] < st[TIMER_NEXT]:
                    st[TSC] = st[TIMER_NEXT]
                continue
            st[EXIT_EIP] = st[INSN_EIP]
            st[EXIT_LEN] = st[INSN_LEN]           # the HLT (not a stale earlier exit's length)
            st[EXIT_VECTOR] = -1
            return _exit(st, dc, EXIT_HALT, steps)
        if steps >= budget:
            st[EXIT_EIP] = st[EIP]
            st[EXIT_VECTOR] = -1
            return _exit(st, dc, EXIT_BUDGET, steps)
        # -- run a stretch without re-checking: up to the budget and the timer deadline
        limit = budget - steps
        if period > 0 and st[TIMER_NEXT] - st[TSC] < limit:
            limit = st[TIMER_NEXT] - st[TSC]
            if limit < 1:
                limit = 1
        st[ATTN] = 0
        # The fast stretch: with no breakpoint, interrupt shadow or single-step to watch,
        # only ATTN is tested after each instruction -- every fault, I/O exit, HLT,
        # unfinished REP chunk, CPL or IF change raises it -- and the retired counts are
        # added once. (One loop for both cases: a second inlined copy of the interpreter
        # would double the compile time.)
        fast = st[BP_COUNT] == 0 and st[INT_SHADOW] == 0 and (st[EFLAGS] & TF) == 0
        blocks = fast and not tracing     # blocks write no trace records
        cpl = st[CPL]                     # cannot change in a fast stretch without ATTN
        retired = 0
        shadow = 0
        tf = 0
        while limit > 0:
            if not fast:
                if st[BP_COUNT] > 0 and not first:
                    eip = st[EIP]
                    for i in range(st[BP_COUNT]):
                        if st[BP_LIST + i] == eip:
                            st[EXIT_EIP] = eip
                            st[EXIT_VECTOR] = -1
                            return _exit(st, dc, EXIT_BREAKPOINT, steps)
                shadow = st[INT_SHADOW]
                tf = st[EFLAGS] & TF
                cpl = st[CPL]
            first = False
            done = execute_one(mem, st, tlb, dc, pg, limit if blocks else 0, ktab, resume, tracing)
            resume = -1
            steps += done
            limit -= done
            if fast and st[ATTN] == 0:
                st[TSC] += done               # RDTSC and the timer port read it mid-stretch
                retired += done
                continue
            if retired != 0:
                st[COUNTERS + C_INSN] += retired
                st[COUNTERS + C_INSN_RING + cpl] += retired
                retired = 0
            if st[KERNEL_REQUEST] >= 0:        # the instruction did not start (table.py)
                return _exit(st, dc, EXIT_TRANSLATE, steps)
            if st[FAULT_PENDING] != 0:
                k = handle_fault(mem, st, tlb, pg, dc, ktab)
                if k != EXIT_NONE:
                    return _exit(st, dc, k, steps)
                break
            if st[NO_RETIRE] != 0:
                st[NO_RETIRE] = 0
                if tracing and st[ITRACE_COUNT] > st[ITRACE_CAP] - ITRACE_RESERVE:
                    st[ITRACE_FULL] = 1       # a long REP over code frames: drain, then go on
                    return _exit(st, dc, EXIT_TRANSLATE, steps)
                continue
            if tracing:
                itrace_commit(mem, st)
            st[COUNTERS + C_INSN] += 1
            st[COUNTERS + C_INSN_RING + cpl] += 1
            st[TSC] += 1
            if shadow != 0:
                st[INT_SHADOW] &= ~shadow     # the previous instruction's; not one this one set
                st[ATTN] = 1
            if (st[INT_SHADOW] & BLOCKING_BY_MOV_SS) != 0:
                tf = 0                        # MOV SS / POP SS: the trap comes after the next insn (SDM 6.8.3)
            if tf != 0 and st[EXIT_KIND] != EXIT_NONE:
                st[STEP_TRAP] = 1             # exit first; the trap follows in the next run()
            elif tf != 0:                     # single-step trap after the instruction (SDM 17.3.1.4)
                st[EXIT_SOURCE] = SRC_TRAP
                st[DR6] |= DR6_BS
                raise_fault(st, DB, -1)
                k = handle_fault(mem, st, tlb, pg, dc, ktab)
                if k != EXIT_NONE:
                    return _exit(st, dc, k, steps)
                break
            if st[EXIT_KIND] != EXIT_NONE:   # a handler asked for an exit (I/O)
                return _exit(st, dc, st[EXIT_KIND], steps)
            if st[BLOCK_REQUEST] >= 0:
                # to the host, which translates the block and calls run() again with the
                # rest of the budget: no exit counted, nothing traced (Machine._run).
                # ATTN as the interpreter alone would have left it.
                if st[ATTN] == ATTN_BLOCK:
                    st[ATTN] = 0
                return _exit(st, dc, EXIT_TRANSLATE, steps)
            if st[ATTN] != 0:
                break
        if retired != 0:
            st[COUNTERS + C_INSN] += retired
            st[COUNTERS + C_INSN_RING + cpl] += retired
