"""The monitors: the software of each virtualization technique, on one protocol (Python).

* :mod:`hvsim.monitors.base` -- the :class:`Monitor` protocol, :class:`LogEntry`,
  :class:`MonitorEvent`;
* shared parts: :mod:`~hvsim.monitors.vcpu` (the virtual CPU),
  :mod:`~hvsim.monitors.devices` (virtual console and timer),
  :mod:`~hvsim.monitors.reflect` (delivery through the guest's virtual IDT);
* the techniques: :class:`Native` (no monitor), :class:`TrapAndEmulate`, :class:`Vtx`
  (VT-x: the KVM-shaped VMM of :mod:`hvsim.monitors.kvm`), :class:`Hypervisor`
  (paravirtualization: the Xen-shaped hypervisor of :mod:`hvsim.paravirt.hypervisor`).

``MONITORS`` maps the names ``hvsim run --monitor NAME`` knows to their classes.
"""
from hvsim.monitors.base import Kill, LogEntry, Monitor, MonitorEvent, STATS
from hvsim.monitors.native import Native
from hvsim.monitors.trap_and_emulate import TrapAndEmulate, GUEST_RING
from hvsim.monitors.vcpu import VirtualCPU
from hvsim.monitors.kvm import Vtx


def __getattr__(name):
    """``MONITORS`` and ``Hypervisor`` are looked up on first use: the hypervisor's package
    (hvsim/paravirt) builds on this one, so importing it here would be circular."""
    if name == "Hypervisor":
        from hvsim.paravirt.hypervisor import Hypervisor
        return Hypervisor
    if name == "MONITORS":
        from hvsim.paravirt.hypervisor import Hypervisor
        return {cls.name: cls for cls in (Native, TrapAndEmulate, Vtx, Hypervisor)}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["Monitor", "MonitorEvent", "LogEntry", "Kill", "STATS", "Native", "TrapAndEmulate",
           "VirtualCPU", "GUEST_RING", "MONITORS", "Vtx", "Hypervisor"]
