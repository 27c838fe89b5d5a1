"""EPT: the extended-page-table pointer and EPT paging-structure entries. Constants only.

Source: Intel SDM Vol. 3C (082US numbering), 29.3 "The Extended Page Table Mechanism
(EPT)": 29.3.1 EPT overview, 29.3.2 EPT translation mechanism (Tables 29-1 to 29-6),
29.3.3 EPT-induced VM exits, 29.3.5 accessed and dirty flags for EPT; the EPTP is
Table 25-9 (25.6.11). Older editions number the same text 28.2 and Tables 28-1 to 28-6.
Cross-checked with Linux ``arch/x86/include/asm/vmx.h`` (``VMX_EPT_*``) and Bochs
``cpu/vmx.h``.

**hvsim's physical-address width.** MAXPHYADDR = 32: hvsim reports neither PAE nor
CPUID leaf 80000008H, and "if CPUID.80000008H is not supported, MAXPHYADDR is 32 when
CPUID.01H:EDX.PAE is 0" (SDM Vol. 3A, 4.1.4). So bits 51:32 of every EPT entry (and of
the EPTP) are reserved; a set one is an EPT misconfiguration (29.3.3.1). A guest-
physical address is 32 bits, so bits 47:39 (the PML4 index) are always 0 and bits
38:30 (the PDPT index) are 0 to 3.

The EPTP (VMCS field 0x201A, Table 25-9)::

    63      52 51        32 31                   12 11   7 6 5   3 2   0
    +---------+------------+-----------------------+------+-+-----+-----+
    | (rsvd)  | rsvd (N=32)|  PML4 table address   | rsvd |A| WL-1| MT  |
    +---------+------------+-----------------------+------+-+-----+-----+
      MT = memory type of the EPT structures (0 UC, 6 WB); WL-1 = 3 (4-level walk);
      A = enable accessed and dirty flags for EPT (IA32_VMX_EPT_VPID_CAP bit 21)

An EPT paging-structure entry, 8 bytes little-endian (29.3.2, the tables "Format of an
EPT PML4 Entry" ... "Format of an EPT Page-Table Entry that Maps a 4-KByte Page")::

    63  62   52 51    32 31             12 11 10  9  8  7  6  5   3  2  1  0
    +---+------+--------+-----------------+--+--+--+--+--+--+-----+--+--+--+
    |SVE| ign  |  rsvd  |     address     |ig|UX| D| A| L| I|  MT | X| W| R|
    +---+------+--------+-----------------+--+--+--+--+--+--+-----+--+--+--+
      R W X  read, write, execute (instruction fetch) allowed; 000 = not present
      MT     EPT memory type (leaf only: 0 UC, 1 WC, 4 WT, 5 WP, 6 WB; 2, 3, 7 reserved)
      I      ignore PAT (leaf only)
      L      bit 7: in a PDE, 1 = maps a 2 MiB page (address bits 31:21, bits 20:12
             reserved); in a PDPTE, a 1 GiB page -- not supported by hvsim
             (IA32_VMX_EPT_VPID_CAP bit 17 = 0), so reserved; in a PML4E reserved; in a
             PTE ignored
      A D    accessed (every level) and dirty (leaf) flags, only when EPTP bit 6 = 1
      UX     user-mode execute, only with mode-based execute control (not modelled:
             ignored); SVE suppress #VE (not modelled: ignored); ig/ign ignored
    In a PML4E, a PDPTE and a PDE that references a page table, bits 7:3 are reserved.
"""

MAXPHYADDR = 32

# ---- the EPTP (SDM Vol. 3C, 25.6.11, Table 25-9) ------------------------------------
EPTP_MEMTYPE_MASK = 0x7          # bits 2:0
EPTP_WALK_LENGTH_SHIFT = 3       # bits 5:3: page-walk length minus 1
EPTP_WALK_LENGTH_4 = 3 << EPTP_WALK_LENGTH_SHIFT
EPTP_AD = 1 << 6                 # enable accessed and dirty flags for EPT
EPTP_PML4_MASK = 0xFFFFF000      # bits N-1:12 with N = MAXPHYADDR = 32

# ---- EPT paging-structure entries (29.3.2) ------------------------------------------
EPT_R = 1 << 0
EPT_W = 1 << 1
EPT_X = 1 << 2
EPT_RWX = EPT_R | EPT_W | EPT_X  # bits 2:0: all clear = not present (29.3.2)
EPT_MEMTYPE_SHIFT = 3            # bits 5:3, leaf entries
EPT_IPAT = 1 << 6
EPT_LARGE = 1 << 7               # PDE: maps a 2 MiB page
EPT_A = 1 << 8                   # accessed (29.3.5)
EPT_D = 1 << 9                   # dirty, leaf entries (29.3.5)
EPT_ADDR = 0xFFFFF000            # bits 31:12 of the low dword: next table / 4 KiB frame
EPT_ADDR_2M = 0xFFE00000         # bits 31:21: a 2 MiB frame
EPT_OFFSET_2M = 0x1FFFFF
EPT_NONLEAF_RSVD = 0xF8          # bits 7:3 of a PML4E, PDPTE, or PDE referencing a table
EPT_2M_RSVD = 0x001FF000         # bits 20:12 of a PDE that maps a 2 MiB page
EPT_HIGH_RSVD = 0x000FFFFF       # bits 51:32 (bits 19:0 of the high dword): MAXPHYADDR = 32
EPT_ENTRY_SIZE = 8
EPT_INDEX_MASK = 0x1FF           # 512 entries per table
EPT_SHIFT_PML4, EPT_SHIFT_PDPT, EPT_SHIFT_PD, EPT_SHIFT_PT = 39, 30, 21, 12

# EPT memory types (29.3.7, Table 29-8); 2, 3 and 7 are reserved: a leaf holding one is
# an EPT misconfiguration (29.3.3.1). As a bit set over the 3-bit value:
EPT_MT_UC, EPT_MT_WC, EPT_MT_WT, EPT_MT_WP, EPT_MT_WB = 0, 1, 4, 5, 6
EPT_MEMTYPE_RESERVED = (1 << 2) | (1 << 3) | (1 << 7)

# ---- what an access asks of EPT: the bits the exit qualification reports it with
# (Table 28-7 bits 2:0), in the same positions as the R/W/X rights they need
EPT_ACC_READ = 1 << 0            # a data read (and a read of a guest paging-structure entry)
EPT_ACC_WRITE = 1 << 1           # a data write (and a guest A/D-flag update)
EPT_ACC_FETCH = 1 << 2           # an instruction fetch
