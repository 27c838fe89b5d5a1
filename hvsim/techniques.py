"""Every technique's monitor, by the name ``hvsim run --monitor NAME`` knows it (Python,
not jitted).

The monitors live in their own packages -- :mod:`hvsim.monitors` (native,
trap-and-emulate, the KVM-shaped VT-x host), :mod:`hvsim.paravirt` (the Xen-shaped
hypervisor), :mod:`hvsim.emulation` (Bochs- and QEMU-shaped emulators) and :mod:`hvsim.bt`
(VMware's binary translator, VirtualBox's raw mode), which build on the first -- so the one
list of all of them sits above them all.

>>> sorted(MONITORS)
['bt', 'dbt', 'emulate', 'native', 'pv', 'rawmode', 'trap-and-emulate', 'vtx']
"""
from hvsim.bt.monitor import BinaryTranslator
from hvsim.bt.rawmode import RawMode
from hvsim.emulation.monitor import DynamicTranslator, Emulator
from hvsim.monitors import Native, TrapAndEmulate, Vtx
from hvsim.paravirt.hypervisor import Hypervisor

__all__ = ["MONITORS"]

#: name -> the monitor class
MONITORS = {cls.name: cls for cls in (Native, TrapAndEmulate, Vtx, Hypervisor, Emulator,
                                      DynamicTranslator, BinaryTranslator, RawMode)}
