"""The assembler's one error type (pure Python, not jitted)."""
from __future__ import annotations


class AsmError(ValueError):
    """A source error, located: ``line`` and ``column`` are 1-based.

    ``message`` says what was expected; ``text`` is the source line.  ``str()``
    gives ``line L, col C: message`` followed by the line and a caret under the
    column.
    """

    def __init__(self, message: str, line: int = 0, column: int = 0, text: str = ""):
        self.message, self.line, self.column, self.text = message, line, column, text
        super().__init__(self._render())

    def _render(self) -> str:
        if not self.line:
            return self.message
        caret = " " * (max(self.column, 1) - 1) + "^"
        return f"line {self.line}, col {self.column}: {self.message}\n    {self.text}\n    {caret}"

    def __str__(self) -> str:
        return self._render()
