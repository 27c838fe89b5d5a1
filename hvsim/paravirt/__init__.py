"""Paravirtualization: a Xen-shaped hypervisor and its guest interface (Python, not jitted).

The fourth technique of the white paper (*paravirtualisation*, Xen PV): the guest kernel
is ported to the hypervisor, runs in ring 1 and asks -- hypercalls -- where it would
execute a sensitive instruction. The modules, from the interface up:

* :mod:`~hvsim.paravirt.abi` -- Xen's 32-bit PV ABI: hypercall numbers, error codes,
  commands, the layouts of shared_info, vcpu_info, start_info, the hypercall page;
* :mod:`~hvsim.paravirt.frames` -- page-frame types and reference counts: why a guest
  that writes its own page tables' entries through the hypervisor can never map what is
  not its own;
* :mod:`~hvsim.paravirt.ring` -- the shared I/O ring of Xen's split drivers (io/ring.h)
  and its notification rule;
* :mod:`~hvsim.paravirt.blkback` -- the block device's backend;
* :mod:`~hvsim.paravirt.hypervisor` -- the monitor: :class:`Hypervisor` (``hvsim run
  --monitor pv``).

The guest side is assembly: tests/pv_guest.py's prelude, lesson 06's small kernels, and
the PV build of the teaching kernel.
"""
