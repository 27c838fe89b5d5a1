"""Every technique's monitor, by the name ``hvsim run --monitor NAME`` knows it (Python,
not jitted).

The monitors live in their own packages -- :mod:`hvsim.monitors` (native,
trap-and-emulate, the KVM-shaped VT-x host) and :mod:`hvsim.paravirt` (the Xen-shaped
hypervisor), which builds on the first -- so the one list of all of them sits above both.

>>> sorted(MONITORS)
['native', 'pv', 'trap-and-emulate', 'vtx']
"""
from hvsim.monitors import Native, TrapAndEmulate, Vtx
from hvsim.paravirt.hypervisor import Hypervisor

__all__ = ["MONITORS"]

#: name -> the monitor class
MONITORS = {cls.name: cls for cls in (Native, TrapAndEmulate, Vtx, Hypervisor)}
