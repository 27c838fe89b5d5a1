"""The monitors: the software of each virtualization technique, on one protocol (Python).

* :mod:`hvsim.monitors.base` -- the :class:`Monitor` protocol, :class:`LogEntry`,
  :class:`MonitorEvent`;
* shared parts: :mod:`~hvsim.monitors.vcpu` (the virtual CPU),
  :mod:`~hvsim.monitors.devices` (virtual console and timer),
  :mod:`~hvsim.monitors.reflect` (delivery through the guest's virtual IDT);
* the techniques: :class:`Native` (no monitor), :class:`TrapAndEmulate`, :class:`Vtx`
  (VT-x: the KVM-shaped VMM of :mod:`hvsim.monitors.kvm`). Paravirtualization's
  hypervisor builds on this package from :mod:`hvsim.paravirt`; :mod:`hvsim.techniques`
  lists every technique's monitor by name.
"""
from hvsim.monitors.base import Kill, LogEntry, Monitor, MonitorEvent, STATS
from hvsim.monitors.native import Native
from hvsim.monitors.trap_and_emulate import TrapAndEmulate, GUEST_RING
from hvsim.monitors.vcpu import VirtualCPU
from hvsim.monitors.kvm import Vtx

__all__ = ["Monitor", "MonitorEvent", "LogEntry", "Kill", "STATS", "Native", "TrapAndEmulate",
           "VirtualCPU", "GUEST_RING", "Vtx"]
