"""Why ``run()`` returned: exit kinds (hvsim's own numbering, in the spirit of KVM_EXIT_*).

The jitted run loop returns one of these and fills the EXIT_* slots of the state
array (hvsim/arch/layout.py). Constants only.
"""
import enum

EXIT_NONE = 0        # (internal) keep running
EXIT_HALT = 1        # HLT with IF=0 or no interrupt source: the CPU would sleep forever
EXIT_EXCEPTION = 2   # an exception whose vector is routed to the host monitor
EXIT_IO = 3          # IN/OUT to a port no device claims (KVM_EXIT_IO)
EXIT_BUDGET = 4      # the instruction budget ran out
EXIT_SHUTDOWN = 5    # triple fault (SDM Vol. 3A, 6.15, "Interrupt 8 -- Double Fault")
EXIT_BUS_ERROR = 6   # a physical access outside guest memory
EXIT_BREAKPOINT = 7  # a host breakpoint address was reached (before executing it)
EXIT_VMEXIT = 8      # reserved for VT-x
EXIT_HYPERCALL = 9   # reserved for paravirtualization
EXIT_INTERRUPT = 10  # an external interrupt routed to the host monitor
EXIT_INTERNAL_ERROR = 11  # a kernel of the machine did not complete (KVM_EXIT_INTERNAL_ERROR
                          # in spirit): EXIT_VECTOR names its kernel-table entry
N_EXIT_KINDS = 12
EXIT_TRANSLATE = 12  # (internal) a block to translate or a kernel to compile (BLOCK_REQUEST,
                     # KERNEL_REQUEST); Machine.run serves it and never returns it


class ExitKind(enum.IntEnum):
    NONE = EXIT_NONE
    HALT = EXIT_HALT
    EXCEPTION = EXIT_EXCEPTION
    IO = EXIT_IO
    BUDGET = EXIT_BUDGET
    SHUTDOWN = EXIT_SHUTDOWN
    BUS_ERROR = EXIT_BUS_ERROR
    BREAKPOINT = EXIT_BREAKPOINT
    VMEXIT = EXIT_VMEXIT
    HYPERCALL = EXIT_HYPERCALL
    INTERRUPT = EXIT_INTERRUPT
    INTERNAL_ERROR = EXIT_INTERNAL_ERROR

    @property
    def label(self) -> str:
        """The name Event.kind uses: 'halt', 'exception', 'io', 'bus_error', ..."""
        return self.name.lower()
