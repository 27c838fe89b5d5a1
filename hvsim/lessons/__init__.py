"""Support for the lessons in notebooks/: seeded exercises that check themselves.

An exercise, in the manner of OSTEP's homework scripts (``-s seed`` makes a problem,
``-c`` shows the answer), is made of

* ``make(rng)``: the seeded parameters of one instance of the problem (``rng`` is a
  ``random.Random(seed)``), so every student can get a different problem and a grader
  can regenerate it;
* ``question``: the text shown to the student (a format string over the parameters, or
  a function of them);
* ``answer(params)``: the expected answer, *computed by running hvsim*, never typed in;
* ``solution``: the worked solution, revealed on request: ``solution_button()`` in a
  notebook (a Run All shows the button, not the solution), ``reveal()`` elsewhere.

The exercise's ``name`` is its title, as students see it; ``with_seed(n)`` gives another
instance of the same problem.

``check()`` never raises on what a student types: ``None`` (not answered yet), text
that is not a number, a number of the wrong size, a list of the wrong length -- each
gets a verdict that says what was wrong and in which exercise.

>>> ex = Exercise("demo", seed=3, make=lambda rng: {"a": rng.randrange(10, 20)},
...               question="What is {a} + 1?", answer=lambda p: p["a"] + 1,
...               solution="Add one: {a} + 1 = {answer}.")
>>> ex.params
{'a': 13}
>>> ex.check(None).ok, ex.check("0xe").ok, ex.check(14).ok, ex.check("fourteen").ok
(False, True, True, False)
>>> print(ex.check("fourteen").message)
demo: could not read 'fourteen' as an integer (write it like 42 or 0x2a).
>>> print(ex.solution_text())
Add one: 13 + 1 = 14 (0xe).
"""
from __future__ import annotations

import dataclasses
import html
import random
from typing import Any, Callable, Optional, Union

__all__ = ["Exercise", "Verdict"]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The result of :meth:`Exercise.check`: ``ok`` and a message for the student."""
    ok: bool
    message: str

    def __bool__(self):
        return self.ok

    def __str__(self):
        return ("Correct. " if self.ok else "Not yet. ") + self.message

    def _repr_html_(self):
        colour = "#1b7f3b" if self.ok else "#b3261e"
        mark = "&#10004;" if self.ok else "&#10008;"
        return (f'<div class="hvsim-verdict" data-ok="{int(self.ok)}" style="color:{colour}">'
                f'{mark} {html.escape(str(self))}</div>')


class _Markdown(str):
    """Text that Jupyter renders as Markdown (and prints as itself elsewhere)."""

    def _repr_markdown_(self):
        return str(self)


Text = Union[str, Callable[..., str]]


class Exercise:
    """One seeded, self-checking exercise (see the module docstring)."""

    def __init__(self, name: str, seed: int, make: Callable[[random.Random], dict],
                 question: Text, answer: Callable[[dict], Any], solution: Text,
                 parse: Optional[Callable[[Any], Any]] = None):
        if not isinstance(name, str) or not name:
            raise ValueError("an exercise needs a non-empty name")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {seed!r}")
        for what, f in (("make", make), ("answer", answer)):
            if not callable(f):
                raise TypeError(f"{what} must be a function")
        self.name, self.seed = name, seed
        self._make, self._question, self._answer = make, question, answer
        self._solution, self._parse = solution, parse
        self._params = None
        self._expected = None
        self._solved = False

    # ---- the problem -----------------------------------------------------------------
    @property
    def params(self) -> dict:
        """This instance's parameters (made once from the seed)."""
        if self._params is None:
            p = self._make(random.Random(self.seed))
            if not isinstance(p, dict):
                raise TypeError(f"{self.name}: make() must return a dict, got {type(p).__name__}")
            self._params = p
        return self._params

    @property
    def expected(self):
        """The right answer, computed by running the exercise's ``answer`` function."""
        if not self._solved:
            self._expected = self._answer(self.params)
            self._solved = True
        return self._expected

    def with_seed(self, seed: int) -> "Exercise":
        """The same exercise with other parameters (for practice or for grading)."""
        return Exercise(self.name, seed, self._make, self._question, self._answer,
                        self._solution, self._parse)

    def question_text(self) -> str:
        return _render(self._question, self.params, None)

    def solution_text(self) -> str:
        return _render(self._solution, self.params, self.expected)

    # ---- checking ------------------------------------------------------------------
    def check(self, answer) -> Verdict:
        """Compare a student's answer with the expected one; never raises on bad input."""
        if answer is None or (isinstance(answer, str) and not answer.strip()):
            return Verdict(False, f"{self.name}: no answer yet -- replace None with yours.")
        expected = self.expected
        try:
            got = self._parse(answer) if self._parse else _coerce(answer, expected)
        except _Unreadable as e:
            return Verdict(False, f"{self.name}: {e}")
        except Exception as e:       # a lesson's own parser refusing the input
            return Verdict(False, f"{self.name}: could not read {answer!r}: {e}")
        if _same(got, expected):
            return Verdict(True, f"{self.name}: {_show(expected)} is right.")
        return Verdict(False, f"{self.name}: {_show(got)} is not it. "
                              f"Try again, or call .reveal() for the worked solution.")

    def reveal(self):
        """The worked solution, rendered as Markdown in a notebook."""
        return _Markdown(self.solution_text())

    def solution_button(self):
        """A button that shows the worked solution when clicked (ipywidgets): a notebook's
        Run All then reveals nothing by itself. The solution is worked out (the exercise
        run) only on the click."""
        import ipywidgets as W
        from IPython.display import Markdown
        button = W.Button(description="Show the worked solution", icon="eye",
                          layout=W.Layout(width="auto"))
        out = W.Output()

        def show(_):
            if not out.outputs:
                out.append_display_data(Markdown(self.solution_text()))
            button.disabled = True
        button.on_click(show)
        return W.VBox([button, out])

    def _repr_markdown_(self):
        return f"**Exercise {self.name}** (seed {self.seed})\n\n{self.question_text()}"

    def __repr__(self):
        return f"<Exercise {self.name} seed={self.seed}>"


class _Unreadable(ValueError):
    pass


def _render(text: Text, params: dict, answer) -> str:
    if callable(text):
        return text(params) if answer is None else text(params, answer)
    return text.format(**params, answer=_show(answer) if answer is not None else "")


def _show(v) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v} ({v:#x})" if v > 9 else str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return repr(v) if isinstance(v, str) else str(v)


def _coerce(answer, expected):
    """Read ``answer`` as the kind of value ``expected`` is."""
    if isinstance(expected, bool):
        if isinstance(answer, bool):
            return answer
        if isinstance(answer, str) and answer.strip().lower() in ("true", "yes", "false", "no"):
            return answer.strip().lower() in ("true", "yes")
        raise _Unreadable(f"could not read {answer!r} as True or False.")
    if isinstance(expected, int):
        if isinstance(answer, bool):
            raise _Unreadable(f"{answer!r} is a truth value; the answer is a number.")
        if isinstance(answer, int):
            return answer
        if isinstance(answer, float) and answer.is_integer():
            return int(answer)
        if isinstance(answer, str):
            try:
                return int(answer.strip().replace("_", ""), 0)
            except ValueError:
                pass
        raise _Unreadable(f"could not read {answer!r} as an integer (write it like 42 or 0x2a).")
    if isinstance(expected, str):
        if not isinstance(answer, str):
            raise _Unreadable(f"the answer is a word or a name; got {type(answer).__name__} {answer!r}.")
        return answer
    if isinstance(expected, (list, tuple)):
        if isinstance(answer, str) or not hasattr(answer, "__len__"):
            raise _Unreadable(f"the answer is a list of {len(expected)} values; got {answer!r}.")
        if len(answer) != len(expected):
            raise _Unreadable(f"the answer has {len(expected)} values; yours has {len(answer)}.")
        return type(expected)(_coerce(a, e) for a, e in zip(answer, expected))
    return answer


def _same(got, expected) -> bool:
    if isinstance(expected, str) and isinstance(got, str):
        return got.strip().lower() == expected.strip().lower()
    if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)):
        return len(got) == len(expected) and all(_same(g, e) for g, e in zip(got, expected))
    return got == expected
