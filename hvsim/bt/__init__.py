"""Binary translation with direct execution (VMware Workstation, 1999-2006).

* :mod:`hvsim.bt.replacements` -- what each sensitive instruction becomes (the in-TC
  sequences and the callout), as data; shared with a raw-mode patch manager;
* :mod:`hvsim.bt.translator` -- guest kernel code to translation units (pure Python);
* :mod:`hvsim.bt.monitor` -- :class:`BinaryTranslator`, the monitor (``name = "bt"``).

Nothing here is jitted: the translated code is ordinary IA-32 that the machine runs.
"""
from hvsim.bt.monitor import BinaryTranslator

__all__ = ["BinaryTranslator"]
