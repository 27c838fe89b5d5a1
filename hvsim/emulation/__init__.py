"""Emulation: the guest on a machine made of software (Bochs, QEMU TCG), issue 16 part 1.

* :mod:`hvsim.emulation.model` -- the jitted model of Bochs's trace cache and QEMU TCG's
  translation blocks, jump cache, chaining and code buffer, fed by the machine's
  instruction trace (hvsim/cpu/itrace.py);
* :mod:`hvsim.emulation.monitor` -- :class:`Emulator` (``emulate``: Bochs's interpreter)
  and :class:`DynamicTranslator` (``dbt``: QEMU TCG), monitors on the seam that run the
  guest at its own ring 0 as :class:`~hvsim.monitors.Native` does and keep the model.

The monitor module's docstring says how the model maps onto hvsim's own interpreter and
block translator; the model's says where every constant comes from.
"""
