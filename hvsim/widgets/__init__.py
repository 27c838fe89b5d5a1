"""Jupyter widgets for the lessons (not jitted).

* :class:`Stepper` -- a debugger for a Machine or a monitor: Step, Step xN, Run to next
  trap, Run/Stop, Back (reverse step), Reset; the disassembly around EIP with
  breakpoints, the registers (changed ones highlighted), EFLAGS, the ring indicator,
  the trap log and the console.
* :class:`StepperController` -- the same, without widgets: every action is a method
  and ``render_text()`` prints what the widget would show (scripts and tests).
"""
from hvsim.widgets.controller import StepperController, RunResult
from hvsim.widgets.render import TrapRecord

__all__ = ["Stepper", "StepperController", "RunResult", "TrapRecord"]


def __getattr__(name):
    # ipywidgets is imported only when the widget itself is asked for
    if name == "Stepper":
        from hvsim.widgets.stepper import Stepper
        return Stepper
    raise AttributeError(f"module 'hvsim.widgets' has no attribute {name!r}")
