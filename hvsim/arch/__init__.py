"""The ground floor: architectural constants and the machine-state layout.

Everything above builds on these names, in the Intel SDM's words: the state slots
(``layout``), EFLAGS (``flags``), control registers (``cr``), debug registers (``dr``), vectors (``vectors``),
paging-entry and #PF error-code bits (``pte``), the event counters (``counters``), why
``run()`` returned (``exits``), and the one kernel every layer needs to report an
architectural exception (``fault``). No module here imports from another hvsim package
except ``hvsim._jit``.
"""
