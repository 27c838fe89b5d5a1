"""The stepper as Jupyter widgets (ipywidgets; not jitted).

All the logic is in :class:`hvsim.widgets.controller.StepperController`; this module
builds the widgets once, wires the buttons to the controller's methods and, after
every action, copies the controller's :class:`~hvsim.widgets.controller.View` into the
widgets' values (a trait that did not change sends nothing to the browser, so a step
updates only what moved, without re-creating anything).

Run and Run to next trap run as an asyncio task on the kernel's event loop, in chunks
of steps with ``await asyncio.sleep(0)`` between them: the kernel handles the Stop
click between two chunks. While a run is going on, the Run button reads "Stop" and the
other buttons are disabled.

CSS classes for browser tests: buttons ``hvsim-step``, ``hvsim-step-n``,
``hvsim-run-trap``, ``hvsim-run``, ``hvsim-back``, ``hvsim-reset``; the checkbox
``hvsim-skip-out``; views ``hvsim-registers``, ``hvsim-vcpu`` (a monitor's virtual CPU;
hidden for a bare Machine), ``hvsim-flags``, ``hvsim-rings``, ``hvsim-disasm`` (the line
at EIP has ``hvsim-current``), ``hvsim-traplog``, ``hvsim-console``, ``hvsim-status``.
"""
from __future__ import annotations

import asyncio
import time

import ipywidgets as W

from hvsim.widgets.controller import StepperController, console_out

REFRESH_PERIOD = 0.25      # seconds between two redraws during a run

_CSS = """<style>
.hvsim-disasm button { font-family: monospace; white-space: pre; justify-content: flex-start;
  text-align: left; height: 22px; line-height: 20px; margin: 0; padding: 0 6px; }
.hvsim-disasm .hvsim-line { width: 100%; }
.hvsim-disasm button.hvsim-current { background: #ffe9a8; font-weight: bold; }
.hvsim-disasm button.mod-active { color: #b3261e; }
.hvsim-stepper .hvsim-status { font-family: monospace; }
</style>"""


class Stepper(W.VBox):
    """A debugger for a Machine (or a monitor that wraps one): step, run, go back.

    >>> s = Stepper(machine)          # doctest: +SKIP
    >>> s                              # shows the widget in a notebook  # doctest: +SKIP

    ``s.controller`` is the :class:`StepperController` behind it (``render_text()``
    gives the same view as text). Keyword arguments go to the controller.
    """

    def __init__(self, target, *, n: int = 10, **kwargs):
        self.controller = StepperController(target, **kwargs)
        c = self.controller
        self._updating = False
        self._task = None
        self._last_refresh = 0.0

        def button(text, cls, tip, handler, width="auto"):
            b = W.Button(description=text, tooltip=tip, layout=W.Layout(width=width))
            b.add_class(cls)
            b.on_click(lambda _b: self._act(handler))
            return b

        self.step_button = button("Step", "hvsim-step", "execute one instruction", c.step)
        self.n_input = W.BoundedIntText(value=n, min=1, max=1_000_000, layout=W.Layout(width="7em"))
        self.n_input.add_class("hvsim-n")
        self.step_n_button = button("Step \u00d7N", "hvsim-step-n", "execute N instructions",
                                    lambda: c.step_n(self.n_input.value))
        self.run_trap_button = W.Button(description="Run to next trap",
                                        tooltip="run until a trap, an exit or a breakpoint")
        self.run_trap_button.add_class("hvsim-run-trap")
        self.run_trap_button.on_click(lambda _b: self._start_run(stop_at_trap=True))
        # a guest that prints traps once per character: pass over those by default
        self.skip_out = W.Checkbox(value=True, description="skip console OUTs", indent=False,
                                   tooltip="Run to next trap passes over OUTs to the console "
                                   "port 0xE9", layout=W.Layout(width="auto"))
        self.skip_out.add_class("hvsim-skip-out")
        self.run_button = W.Button(description="Run", tooltip="run until an exit or a breakpoint; "
                                   "click again to stop")
        self.run_button.add_class("hvsim-run")
        self.run_button.on_click(lambda _b: self._start_run(stop_at_trap=False))
        self.back_button = button("Back", "hvsim-back", "undo the last step", c.back)
        self.reset_button = button("Reset", "hvsim-reset", "back to the start", c.reset)
        self._action_buttons = [self.step_button, self.step_n_button, self.run_trap_button,
                                self.back_button, self.reset_button]

        self.disasm_lines = []
        for i in range(c.before + 1 + c.after):
            t = W.ToggleButton(value=False, description="", tooltip="click: toggle a breakpoint",
                               layout=W.Layout(width="100%"))
            t.add_class("hvsim-line")
            t.observe(lambda ch, i=i: self._on_line(i, ch), names="value")
            self.disasm_lines.append(t)
        self._line_addr = [None] * len(self.disasm_lines)
        self._current = None
        self.disasm = W.VBox(self.disasm_lines, layout=W.Layout(width="46em", min_width="46em"))
        self.disasm.add_class("hvsim-disasm")

        def html(cls):
            w = W.HTML()
            w.add_class(cls)
            return w

        self.registers = html("hvsim-registers")
        self.vcpu_panel = html("hvsim-vcpu")
        if c.vcpu is None:
            self.vcpu_panel.layout.display = "none"
        self.flags = html("hvsim-flags")
        self.rings = html("hvsim-rings")
        self.traplog = html("hvsim-traplog")
        self.console = html("hvsim-console")
        self.status = html("hvsim-status")
        # rows wrap: in a narrow window (a projector's 1024 pixels) the registers and the
        # rings go under the disassembly instead of past the right edge
        wrap = W.Layout(flex_flow="row wrap")
        toolbar = W.HBox([self.step_button, self.step_n_button, self.n_input, self.run_trap_button,
                          self.skip_out, self.run_button, self.back_button, self.reset_button],
                         layout=wrap)
        middle = W.HBox([self.disasm,
                         W.VBox([W.HBox([self.registers, self.vcpu_panel, self.rings], layout=wrap),
                                 self.flags])],
                        layout=wrap)
        super().__init__([W.HTML(_CSS), toolbar, self.status, middle,
                          W.HTML("<b>trap log</b>"), self.traplog,
                          W.HTML("<b>console</b>"), self.console])
        self.add_class("hvsim-stepper")
        self.refresh()

    # ---- actions -----------------------------------------------------------------------
    def _act(self, handler):
        try:
            handler()
        except (ValueError, TypeError, RuntimeError) as e:
            self.controller.message = f"error: {e}"
        self.refresh()

    def _start_run(self, stop_at_trap: bool):
        c = self.controller
        if c.running:
            c.request_stop()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:         # no event loop (a plain script): run to the end at once
            self._act((lambda: c.run_to_trap(skip=self._skip())) if stop_at_trap else c.run)
            return
        self._set_running(True)
        self._task = loop.create_task(self._run(stop_at_trap))

    async def _run(self, stop_at_trap: bool):
        c = self.controller
        try:
            await c.run_async(stop_at_trap=stop_at_trap, on_chunk=self._refresh_now_and_then,
                              skip=self._skip())
        except (ValueError, TypeError, RuntimeError) as e:
            c.message = f"error: {e}"
        finally:
            self._set_running(False)
            self.refresh()

    def _skip(self):
        return console_out if self.skip_out.value else None

    def _set_running(self, running: bool):
        self.run_button.description = "Stop" if running else "Run"
        for b in self._action_buttons:
            b.disabled = running
        for t in self.disasm_lines:
            t.disabled = running or t.description == ""

    def _refresh_now_and_then(self, _steps):
        now = time.monotonic()
        if now - self._last_refresh >= REFRESH_PERIOD:
            self.refresh()

    def _on_line(self, i, change):
        if self._updating:
            return
        addr = self._line_addr[i]
        if addr is not None:
            try:
                self.controller.toggle_breakpoint(addr)
            except (ValueError, TypeError) as e:
                self.controller.message = f"error: {e}"
        self.refresh()

    # ---- drawing ---------------------------------------------------------------------------
    def refresh(self) -> None:
        """Copy the controller's view into the widgets (values only; nothing is re-created)."""
        self._last_refresh = time.monotonic()
        v = self.controller.view()
        self._updating = True
        try:
            for i, (t, line) in enumerate(zip(self.disasm_lines, v.disasm)):
                t.description = line.label()
                t.value = line.breakpoint
                t.disabled = line.address is None or self.controller.running
                self._line_addr[i] = line.address
                if line.current and self._current != i:
                    if self._current is not None:
                        self.disasm_lines[self._current].remove_class("hvsim-current")
                    t.add_class("hvsim-current")
                    self._current = i
        finally:
            self._updating = False
        self.registers.value = v.registers_html
        self.vcpu_panel.value = v.vcpu_html
        self.flags.value = v.flags_html
        self.rings.value = v.rings_html
        self.traplog.value = v.traplog_html
        self.console.value = v.console_html
        self.status.value = f'<span class="hvsim-status-text">{_escape(v.status)}</span>'


def _escape(s: str) -> str:
    import html
    return html.escape(s)
