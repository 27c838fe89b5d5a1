"""32-bit paging entry bits and #PF error-code bits (SDM Vol. 3A, 4.3 and 4.7). Constants only.

A page-directory or page-table entry, 32-bit paging (SDM Vol. 3A, Tables 4-5, 4-6)::

    31                    12 11  9 8 7 6 5 4 3 2 1 0
    +-----------------------+-----+-+-+-+-+-+-+-+-+-+
    | frame / table address | AVL |G|S|D|A|C|W|U|R|P|
    +-----------------------+-----+-+-+-+-+-+-+-+-+-+
      S = PS (page size, PDE only, needs CR4.PSE) ; C = PCD ; W = PWT
      U = U/S (1 = user) ; R = R/W (1 = writable)
    4 MiB PDE: bits 31:22 hold the frame, bits 21:13 reserved (PSE-36 not modelled).
"""
PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_US = 1 << 2
PTE_PWT = 1 << 3
PTE_PCD = 1 << 4
PTE_A = 1 << 5
PTE_D = 1 << 6
PTE_PS = 1 << 7    # in a PDE: this entry maps a 4 MiB page
PTE_PAT = 1 << 7   # in a PTE (not modelled)
PTE_G = 1 << 8
PTE_FRAME = 0xFFFFF000
PDE_FRAME_4M = 0xFFC00000

# #PF error code (SDM Vol. 3A, 4.7, Figure 4-12)
PFEC_P = 1 << 0     # 0 = not-present page, 1 = protection violation
PFEC_W = 1 << 1     # the access was a write
PFEC_U = 1 << 2     # the access was made in user mode (CPL 3)
PFEC_RSVD = 1 << 3  # a reserved bit was set in a paging entry
PFEC_I = 1 << 4     # the access was an instruction fetch (only with NX, not modelled: always 0)

# kinds of access, as the MMU's callers pass them (hvsim's own encoding)
ACC_READ = 0
ACC_WRITE = 1
ACC_USER = 2    # a user-mode access: CPL 3 and not an implicit supervisor access
ACC_FETCH = 4
