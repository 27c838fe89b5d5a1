"""Names of the event counters (indices into the counter vector). Constants only.

The core never computes overhead: it counts events here, and the cost model
multiplies them by cited per-event costs. ``st[COUNTERS + C_x]`` is counter x.
"""
C_INSN = 0             # instructions retired (all rings)
C_INSN_RING = 1        # 1..4: instructions retired at CPL 0..3
C_EXC = 8              # 8..39: exceptions raised, by vector 0..31 (delivered or routed)
C_SWINT = 40           # INT n / INT3 / INTO executed
C_IRQ = 41             # external (timer) interrupts delivered
C_TLB_HIT = 42
C_TLB_MISS = 43
C_TLB_FLUSH = 44       # whole-TLB flushes (CR3 / CR0 / CR4 writes)
C_INVLPG = 45
C_WALK_REFS = 46       # memory references made by page walks (PDE + PTE reads)
C_PAGE_WALKS = 47
C_IO_IN = 48
C_IO_OUT = 49
C_IO_EXIT = 50         # port accesses that left run() as 'io' events
C_HLT = 51
C_PRIV_SWITCH = 52     # CPL changes (gates, IRET, far RET)
C_DC_HIT = 53          # decode-cache hits
C_DC_MISS = 54
C_SMC = 55             # code frames invalidated by a write (self-modifying code)
C_EXITS = 56           # host exits, all kinds
C_TIMER = 57           # timer interrupts raised on the line
C_IRET = 58
C_CR3_WRITE = 59
C_SEG_LOAD = 60        # segment-register loads from descriptor tables
C_FAULT_DELIVERY = 61  # exceptions delivered through the guest IDT
C_DOUBLE_FAULT = 62
C_TRIPLE_FAULT = 63
C_EXIT_KIND = 64       # 64..79: host exits by kind (hvsim/arch/exits.py)
C_VMEXIT = 80          # 80..143: VM exits by basic exit reason (hvsim/arch/vmx.py ExitReason)
C_VMENTRY = 144        # VM entries that reached non-root operation
C_VMENTRY_FAIL = 145   # VM entries that failed: VMfail (7, 8, ...) or an exit with bit 31 set
C_EPT_WALKS = 146      # EPT walks (one per guest-physical address translated on a TLB miss)
C_EPT_WALK_REFS = 147  # memory references made by EPT walks
C_VMX_INSN = 148       # VMX instructions executed in root operation
C_INT_VEC = 256        # 256..511: events delivered through the guest IDT, by vector

# Python-side names for the counters with a single slot (the face builds the view from this).
NAMES = {
    "instructions": C_INSN,
    "software_interrupts": C_SWINT,
    "irqs": C_IRQ,
    "tlb_hits": C_TLB_HIT,
    "tlb_misses": C_TLB_MISS,
    "tlb_flushes": C_TLB_FLUSH,
    "invlpg": C_INVLPG,
    "walk_refs": C_WALK_REFS,
    "page_walks": C_PAGE_WALKS,
    "io_in": C_IO_IN,
    "io_out": C_IO_OUT,
    "io_exits": C_IO_EXIT,
    "hlt": C_HLT,
    "privilege_switches": C_PRIV_SWITCH,
    "decode_hits": C_DC_HIT,
    "decode_misses": C_DC_MISS,
    "smc_invalidations": C_SMC,
    "exits": C_EXITS,
    "timer_ticks": C_TIMER,
    "iret": C_IRET,
    "cr3_writes": C_CR3_WRITE,
    "segment_loads": C_SEG_LOAD,
    "exceptions_delivered": C_FAULT_DELIVERY,
    "double_faults": C_DOUBLE_FAULT,
    "triple_faults": C_TRIPLE_FAULT,
    "vm_entries": C_VMENTRY,
    "vm_entry_failures": C_VMENTRY_FAIL,
    "ept_walks": C_EPT_WALKS,
    "ept_walk_refs": C_EPT_WALK_REFS,
    "vmx_instructions": C_VMX_INSN,
}
