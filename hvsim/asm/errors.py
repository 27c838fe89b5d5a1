"""The assembler's one error type (pure Python, not jitted)."""
from __future__ import annotations


class AsmError(ValueError):
    """A source error, located: ``line`` and ``column`` are 1-based.

    ``message`` says what was expected; ``text`` is the source line.  ``str()``
    gives ``line L, col C: message`` followed by the line and a caret under the
    column.  When the line the assembler read is not the line as written (a
    macro made it, or ``%define`` names were replaced in it), ``expanded`` is
    the line read and ``expanded_column`` the column in it, shown below the
    source line with a caret of its own; ``column`` is then the column of the
    macro call (or of the replaced name) in ``text``.
    """

    def __init__(self, message: str, line: int = 0, column: int = 0, text: str = "",
                 expanded: str = "", expanded_column: int = 0):
        self.message, self.line, self.column, self.text = message, line, column, text
        self.expanded, self.expanded_column = expanded, expanded_column
        super().__init__(self._render())

    def _render(self) -> str:
        if not self.line:
            return self.message
        caret = " " * (max(self.column, 1) - 1) + "^"
        out = f"line {self.line}, col {self.column}: {self.message}\n    {self.text}\n    {caret}"
        if self.expanded:
            caret = " " * (max(self.expanded_column, 1) - 1) + "^"
            out += f"\n  expanded:\n    {self.expanded}\n    {caret}"
        return out

    def __str__(self) -> str:
        return self._render()
