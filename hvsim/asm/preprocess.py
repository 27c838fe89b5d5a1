"""The part of NASM's preprocessor that hvsim's guests use (pure Python, not jitted).

What it models: the pass NASM runs over the source text before assembling it.
A guest kernel is written once and built two ways, natively and paravirtualized
for a Xen-style hypervisor; as Linux's pv_ops does, its sensitive operations sit
behind one layer of macros, and a name given to ``assemble(..., defines=...)``
chooses which body each macro gets::

    %macro IRQ_DISABLE 0
    %ifdef XEN
        mov byte [SHARED_INFO + EVTCHN_MASK], 1     ; tell the hypervisor
    %else
        cli                                         ; the privileged instruction
    %endif
    %endmacro

``preprocess(source, defines=None, statement_words=()) -> list[SourceLine]``
turns the source into the lines the assembler parses, each knowing the line
of the source it came from.  The directives (names case-insensitive):

* ``%define NAME`` and ``%define NAME value``; ``%undef NAME``.  A NAME with a
  value is replaced, as a whole word, in the lines that follow (not inside
  strings or comments), and the replacement is scanned again, a name never
  inside its own replacement.  Names are case-sensitive.
* ``%ifdef NAME`` / ``%ifndef NAME`` ... ``%else`` ... ``%endif``, nestable.  A
  skipped branch may hold anything but an unknown directive.
* ``%macro NAME N`` ... ``%endmacro``: N is the exact number of parameters.  In
  the body ``%1``, ``%2``, ... are the arguments, ``%0`` their count, and
  ``%%name`` a label of its own for each expansion, ``..@<n>.name`` as in NASM
  (the n-th expansion of the source); the assembler treats ``..@`` names as
  global labels that do not open a new scope for ``.local`` labels.  A macro
  is called as a statement, ``NAME a, b`` or ``label: NAME a, b``; arguments
  split at commas outside quotes, ``[]``, ``()`` and ``{}``, and braces around a
  whole argument are removed (``M {1, 2}`` passes one argument ``1, 2``).  One
  NAME may have several bodies of different parameter counts (NASM's
  overloading); a second body of the same count is an error.

A line made by a macro is listed and parsed at the caller's line number; an
error in it names the macro, the body line and the caller's line.

Model choices where NASM leaves room or does more:

* ``%define NAME`` with no value only defines NAME for ``%ifdef``; NASM would
  also replace a later NAME with nothing.  ``%define`` takes no parameters.
* Parameters are checked when the macro is defined: ``%3`` in a macro of two
  parameters is an error even if the line is never expanded.  ``%n`` and
  ``%%name`` mean a parameter and a local label anywhere in a body outside
  strings and comments, so write the modulo operators as ``a % b``, ``a %% b``.
* As in NASM a macro is not expanded inside its own expansion: there the line is
  an instruction if the name is one (``%macro cli 0`` whose body says ``cli``),
  else an error naming the chain.  Expansions nest at most ``MAX_DEPTH`` deep.
* A call with a count no body takes is an error, unless NAME is also an
  instruction or assembler directive, where NASM (with a warning) and hvsim
  assemble the line as written.
* Conditionals in a body must close in that body; a body defines no macros.
"""
from __future__ import annotations

from collections.abc import Mapping

from .errors import AsmError

MAX_DEPTH = 64
DIRECTIVES = ("%define", "%undef", "%ifdef", "%ifndef", "%else", "%endif", "%macro",
              "%endmacro")

# The characters of a name, shared with the assembler's tokenizer (NASM's rules:
# a name starts with a letter, _ . ? or @ and goes on with those, digits and $ # ~).
ID_START = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_.?@")
ID_CHARS = ID_START | set("0123456789$#~")


class SourceLine:
    """One line as the assembler parses it, and where it came from.

    ``lineno`` and ``text`` are what the assembler parses and lists: the source
    line, or a line a macro made (at its caller's line number).  ``source`` is
    the line as written at ``lineno``.  ``via`` names the macros that made the
    line, ``((macro, body line), ...)`` outermost first, and ``call_col`` is the
    column of the outermost call in ``source``.  ``spans`` records the
    ``%define`` replacements in ``text`` (``(new start, new end, old start, old
    end)``, 0-based) so that a column in ``text`` can be found in ``source``.
    """

    __slots__ = ("lineno", "text", "source", "via", "call_col", "spans")

    def __init__(self, lineno: int, text: str, source: str | None = None, via: tuple = (),
                 call_col: int = 0, spans: tuple = ()):
        self.lineno, self.text = lineno, text
        self.source = text if source is None else source
        self.via, self.call_col, self.spans = via, call_col, spans

    def source_col(self, col: int) -> int:
        """The column in ``source`` of column ``col`` of ``text``."""
        i, shift = col - 1, 0
        for new_start, new_end, old_start, old_end in self.spans:
            if i < new_start:
                break
            if i < new_end:
                return old_start + 1
            shift = old_end - new_end
        return i + shift + 1

    def error(self, message: str, col: int) -> AsmError:
        """An AsmError at column ``col`` of ``text``, told in terms of the source."""
        if self.via:
            frames = [f"macro {name} at line {body}" for name, body in reversed(self.via)]
            if len(frames) > 4:
                frames[2:-1] = [f"... {len(frames) - 3} more ..."]
            where = ", called from ".join(frames)
            return AsmError(f"in {where}, expanded from line {self.lineno}: {message}",
                            self.lineno, self.call_col, self.source, self.text, col)
        if self.text == self.source or self.source.startswith(self.text) and not self.spans:
            return AsmError(message, self.lineno, col, self.source)
        return AsmError(message, self.lineno, self.source_col(col), self.source, self.text, col)


class _Macro:
    """One body of a multi-line macro: NAME with ``nparams`` parameters."""

    def __init__(self, name: str, nparams: int, line: SourceLine):
        self.name, self.nparams, self.line = name, nparams, line
        self.body: list = []                  # SourceLines as written


class _Cond:
    """One open %ifdef/%ifndef."""

    def __init__(self, word: str, name: str, line: SourceLine, outer_active: bool,
                 taken: bool):
        self.word, self.name, self.line = word, name, line
        self.outer_active, self.taken = outer_active, taken
        self.active = outer_active and taken
        self.else_line: SourceLine | None = None


# ---------------------------------------------------------------------------
# Scanning (quotes and the ';' comment, the way the assembler's tokenizer sees them)

def _code_end(text: str) -> int:
    """Where the ';' comment starts (or len(text)), quotes respected."""
    i = 0
    while i < len(text):
        c = text[i]
        if c == ";":
            return i
        if c in "'\"":
            j = text.find(c, i + 1)
            if j < 0:
                return len(text)
            i = j
        i += 1
    return len(text)


def _words(text: str):
    """(start, end) of each name in the code part of ``text``, outside strings."""
    i, end = 0, _code_end(text)
    while i < end:
        c = text[i]
        if c in "'\"":
            j = text.find(c, i + 1)
            i = end if j < 0 else j + 1
        elif c.isdigit():                     # a number: 0x10, 10h, 1_000
            while i < end and (text[i].isalnum() or text[i] == "_"):
                i += 1
        elif c in ID_START:
            j = i
            while j < end and text[j] in ID_CHARS:
                j += 1
            yield i, j
            i = j
        else:
            i += 1


def _body_refs(text: str):
    """(start, end, kind, value) of each ``%n`` ('param', n) and ``%%name``
    ('local', name) in the code part of a body line, outside strings."""
    i, end = 0, _code_end(text)
    while i < end:
        c = text[i]
        if c in "'\"":
            j = text.find(c, i + 1)
            i = end if j < 0 else j + 1
            continue
        if c == "%" and i + 1 < end and text[i + 1].isdigit():
            j = i + 1
            while j < end and text[j].isdigit():
                j += 1
            yield i, j, "param", int(text[i + 1:j])
            i = j
            continue
        if text.startswith("%%", i) and i + 2 < end and text[i + 2] in ID_CHARS:
            j = i + 2
            while j < end and text[j] in ID_CHARS:
                j += 1
            yield i, j, "local", text[i + 2:j]
            i = j
            continue
        i += 1


def is_name(text: str) -> bool:
    """A name %define, %macro and ``defines=`` accept (not a ``.local`` one)."""
    return (bool(text) and text[0] in ID_START and text[0] != "."
            and all(c in ID_CHARS for c in text))


def _name_at(text: str, i: int) -> int:
    """End of the name starting at ``text[i]`` (``i`` itself if none starts there)."""
    if i >= len(text) or text[i] not in ID_START:
        return i
    j = i
    while j < len(text) and text[j] in ID_CHARS:
        j += 1
    return j


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


class _Directive:
    """A ``%word args`` line: ``word`` as written, ``low`` lowercased, columns 1-based;
    ``args`` is the text after the word, without its comment."""

    def __init__(self, text: str):
        start = len(text) - len(text.lstrip())
        end = start + 1
        while end < len(text) and (text[end].isalnum() or text[end] == "_"):
            end += 1
        self.word, self.col = text[start:end], start + 1
        self.low = self.word.lower()
        self.args_at = end
        self.args = text[end:_code_end(text)]

    def tokens(self) -> list:
        """Whitespace-separated argument tokens, as (text, column)."""
        out, i = [], 0
        while True:
            i = _skip_space(self.args, i)
            if i >= len(self.args):
                return out
            j = i
            while j < len(self.args) and not self.args[j].isspace():
                j += 1
            out.append((self.args[i:j], self.args_at + i + 1))
            i = j

    def end_col(self) -> int:
        return self.args_at + len(self.args.rstrip()) + 1


def _directive_of(text: str) -> _Directive | None:
    """The directive on a line whose first token is %word (not %1 or %%name)."""
    s = text.lstrip()
    if len(s) < 2 or s[0] != "%" or not (s[1].isalpha() or s[1] == "_"):
        return None
    return _Directive(text)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _counts(counts) -> str:
    """'1 argument', '0 or 2 arguments', '1, 2 or 3 arguments'."""
    counts = sorted(counts)
    if len(counts) == 1:
        return _plural(counts[0], "argument")
    head = ", ".join(str(c) for c in counts[:-1])
    return f"{head} or {counts[-1]} arguments"


def _unknown_directive(word: str) -> str:
    return f"{word} is not a directive hvsim's assembler knows: {' '.join(DIRECTIVES)}"


def _opener(cond: _Cond) -> str:
    return f"{cond.word} {cond.name}" if cond.name else cond.word


def _unterminated(cond: _Cond, until: str) -> str:
    return (f"unterminated {_opener(cond)} (opened on line {cond.line.lineno}): "
            f"expected %endif before {until}")


def _second_else(cond: _Cond) -> str:
    return (f"a second %else for the {_opener(cond)} on line {cond.line.lineno} "
            f"(its first %else is on line {cond.else_line.lineno})")


# ---------------------------------------------------------------------------
# Arguments of a call

def _split_args(line: SourceLine, start: int, end: int, name: str) -> list:
    """The arguments in ``line.text[start:end]``: split at commas outside quotes,
    [], () and {}; stripped; braces around a whole argument removed."""
    text = line.text
    if not text[start:end].strip():
        return []
    args, depth, braces, piece = [], 0, [], start
    i = start
    while i < end:
        c = text[i]
        if c in "'\"":
            j = text.find(c, i + 1)
            if j < 0 or j >= end:
                raise line.error(f"unterminated string in the arguments of macro {name}: "
                                 f"expected a closing {c}", i + 1)
            i = j
        elif c in "[(":
            depth += 1
        elif c in "])":
            depth = max(depth - 1, 0)
        elif c == "{":
            braces.append(i)
        elif c == "}" and braces:
            braces.pop()
        elif c == "," and depth == 0 and not braces:
            args.append(text[piece:i])
            piece = i + 1
        i += 1
    if braces:
        raise line.error(f"unclosed '{{' in the arguments of macro {name}: expected '}}'",
                         braces[-1] + 1)
    args.append(text[piece:end])
    out = []
    for arg in args:
        arg = arg.strip()
        if arg.startswith("{") and arg.endswith("}") and _closing_brace(arg) == len(arg) - 1:
            arg = arg[1:-1].strip()
        out.append(arg)
    return out


def _closing_brace(arg: str) -> int:
    """Index of the '}' that closes the '{' at arg[0]."""
    depth = 0
    for i, c in enumerate(arg):
        depth += c == "{"
        depth -= c == "}"
        if depth == 0:
            return i
    return -1


def _instantiate(text: str, args: list, serial: int) -> str:
    """A body line with %0, %n and %%name filled in for expansion number ``serial``."""
    out, last = [], 0
    for start, end, kind, value in _body_refs(text):
        out.append(text[last:start])
        if kind == "local":
            out.append(f"..@{serial}.{value}")
        else:
            out.append(str(len(args)) if value == 0 else args[value - 1])
        last = end
    out.append(text[last:])
    return "".join(out)


# ---------------------------------------------------------------------------
# The pass

class _Preprocessor:
    def __init__(self, defines: dict, statement_words: frozenset):
        self.defines = dict(defines)          # name -> value text, or None (no value)
        self.words = statement_words          # what the assembler reads as a statement
        self.macros: dict = {}                # name -> {nparams: _Macro}
        self.conds: list = []                 # open %ifdef/%ifndef, innermost last
        self.defining: _Macro | None = None   # a %macro whose body is being read
        self.expanding: list = []             # macros being expanded, outermost first
        self.serial = 0                       # expansions so far (the n of ..@n.name)
        self.out: list = []

    @property
    def active(self) -> bool:
        return not self.conds or self.conds[-1].active

    def feed(self, line: SourceLine):
        d = _directive_of(line.text)
        if self.defining is not None:
            if d is not None and d.low == "%endmacro":
                self._endmacro(line, d)
            elif d is not None and d.low == "%macro":
                m = self.defining
                raise line.error(f"%macro inside the body of macro {m.name} (opened on line "
                                 f"{m.line.lineno}): hvsim's macros cannot define macros; "
                                 "end the first with %endmacro", d.col)
            else:
                self.defining.body.append(line)
            return
        if d is not None:
            self._directive(line, d)
            return
        if not self.active:
            return
        self._reject_body_syntax(line)
        line = self._substitute_line(line)
        if self.macros and self._call(line):
            return
        self.out.append(line)

    def finish(self):
        if self.defining is not None:
            m = self.defining
            raise m.line.error(f"unterminated %macro {m.name} (opened on line {m.line.lineno}): "
                               "expected %endmacro before the end of the source",
                               _directive_of(m.line.text).col)
        if self.conds:
            c = self.conds[-1]
            raise c.line.error(_unterminated(c, "the end of the source"),
                               _directive_of(c.line.text).col)

    # -- directives ---------------------------------------------------------

    def _directive(self, line: SourceLine, d: _Directive):
        if d.low not in DIRECTIVES:
            raise line.error(_unknown_directive(d.word), d.col)
        if d.low in ("%ifdef", "%ifndef"):
            if self.active:
                name = self._one_name(line, d)
            else:                             # a skipped branch: the name is not checked
                name = next(iter(d.tokens()), ("", 0))[0]
            taken = (name in self.defines) == (d.low == "%ifdef")
            self.conds.append(_Cond(d.low, name, line, self.active, taken))
        elif d.low == "%else":
            self._no_args(line, d)
            if not self.conds:
                raise line.error("%else without %ifdef or %ifndef", d.col)
            c = self.conds[-1]
            if c.else_line is not None:
                raise line.error(_second_else(c), d.col)
            c.else_line = line
            c.active = c.outer_active and not c.taken
        elif d.low == "%endif":
            self._no_args(line, d)
            if not self.conds:
                raise line.error("%endif without %ifdef or %ifndef", d.col)
            self.conds.pop()
        elif not self.active:
            return                            # %define, %macro ... in a skipped branch
        elif d.low == "%define":
            self._define(line, d)
        elif d.low == "%undef":
            self.defines.pop(self._one_name(line, d), None)
        elif d.low == "%macro":
            self._macro(line, d)
        else:
            raise line.error("%endmacro without %macro", d.col)

    def _one_name(self, line: SourceLine, d: _Directive) -> str:
        toks = d.tokens()
        if not toks:
            raise line.error(f"expected a name after {d.word}", d.end_col())
        name, col = toks[0]
        if not is_name(name):
            raise line.error(f"expected a name after {d.word} — got '{name}'", col)
        if len(toks) > 1:
            raise line.error(f"expected end of line after {d.word} {name} (one name only)",
                             toks[1][1])
        return name

    def _no_args(self, line: SourceLine, d: _Directive):
        toks = d.tokens()
        if toks:
            raise line.error(f"expected end of line after {d.word}", toks[0][1])

    def _define(self, line: SourceLine, d: _Directive):
        toks = d.tokens()
        if not toks:
            raise line.error("expected a name after %define", d.end_col())
        text, col = toks[0]
        end = _name_at(text, 0)
        name = text[:end]
        if end < len(text) and text[end] == "(" and is_name(name):
            raise line.error(f"%define {name}(...) with parameters is not supported: "
                             "use %macro", col)
        if not is_name(name) or end < len(text):
            raise line.error(f"expected a name after %define — got '{text}'", col)
        value = d.args[_skip_space(d.args, 0) + len(name):].strip()
        self.defines[name] = value or None

    def _macro(self, line: SourceLine, d: _Directive):
        toks = d.tokens()
        if not toks:
            raise line.error("expected a macro name after %macro", d.end_col())
        name, col = toks[0]
        if not is_name(name):
            raise line.error(f"expected a macro name after %macro — got '{name}'", col)
        if len(toks) < 2:
            raise line.error(f"expected the number of parameters after %macro {name} "
                             f"(e.g. %macro {name} 2)", d.end_col())
        count, ccol = toks[1]
        if not count.isdigit():
            if count[:1].isdigit() or count == "*":
                raise line.error("hvsim's %macro takes an exact number of parameters: NASM's "
                                 "ranges (1-3), greedy (+) and default parameters are not "
                                 f"supported — got '{count}'", ccol)
            raise line.error(f"expected the number of parameters after %macro {name} "
                             f"(e.g. %macro {name} 2) — got '{count}'", ccol)
        if len(toks) > 2:
            raise line.error("hvsim's %macro takes an exact number of parameters: NASM's "
                             "ranges (1-3), greedy (+) and default parameters are not "
                             f"supported — got '{toks[2][0]}'", toks[2][1])
        n = int(count)
        old = self.macros.get(name, {}).get(n)
        if old is not None:
            raise line.error(f"macro {name} with {_plural(n, 'parameter')} is already defined "
                             f"on line {old.line.lineno} (a second body of {name} needs "
                             "another parameter count)", col)
        self.defining = _Macro(name, n, line)

    def _endmacro(self, line: SourceLine, d: _Directive):
        self._no_args(line, d)
        m, self.defining = self.defining, None
        self._check_body(m, line)
        self.macros.setdefault(m.name, {})[m.nparams] = m

    def _check_body(self, m: _Macro, end_line: SourceLine):
        """Parameters in range; directives known; conditionals closed in the body."""
        open_conds = []
        for line in m.body:
            for start, _, kind, value in _body_refs(line.text):
                if kind == "param" and value > m.nparams:
                    want = (f"expected %1 to %{m.nparams} (or %0, the argument count)"
                            if m.nparams else "expected none (only %0, the argument count)")
                    raise line.error(f"%{value} in macro {m.name}, which takes "
                                     f"{_plural(m.nparams, 'parameter')}: {want}", start + 1)
            d = _directive_of(line.text)
            if d is None:
                continue
            if d.low not in DIRECTIVES:
                raise line.error(_unknown_directive(d.word), d.col)
            if d.low in ("%ifdef", "%ifndef"):
                toks = d.tokens()
                open_conds.append(_Cond(d.low, toks[0][0] if toks else "", line, True, True))
            elif d.low == "%else":
                if not open_conds:
                    raise line.error(f"%else without %ifdef or %ifndef in the body of macro "
                                     f"{m.name}", d.col)
                if open_conds[-1].else_line is not None:
                    raise line.error(_second_else(open_conds[-1]), d.col)
                open_conds[-1].else_line = line
            elif d.low == "%endif":
                if not open_conds:
                    raise line.error(f"%endif without %ifdef or %ifndef in the body of macro "
                                     f"{m.name}", d.col)
                open_conds.pop()
        if open_conds:
            c = open_conds[-1]
            raise c.line.error(_unterminated(c, f"the %endmacro of {m.name} on line "
                                                f"{end_line.lineno}"),
                               _directive_of(c.line.text).col)

    # -- ordinary lines -----------------------------------------------------

    def _reject_body_syntax(self, line: SourceLine):
        """%1 or %%name opening a line outside a macro body."""
        s = line.text.lstrip()
        if not s.startswith("%"):
            return
        col = len(line.text) - len(s) + 1
        for start, end, kind, _ in _body_refs(s):
            if start == 0:
                what = "a macro parameter" if kind == "param" else "a macro-local label"
                raise line.error(f"{s[:end]} is {what}: it means something only inside a "
                                 "%macro body", col)
        raise line.error(_unknown_directive(s.split()[0]), col)

    def _substitute(self, text: str, inside: tuple = ()) -> tuple:
        """``text`` with each valued %define name replaced -> (text, spans)."""
        out, spans, last, length = [], [], 0, 0
        for start, end in _words(text):
            word = text[start:end]
            value = self.defines.get(word)
            if value is None or word in inside:
                continue
            value = self._substitute(value, inside + (word,))[0]
            out.append(text[last:start])
            length += start - last
            spans.append((length, length + len(value), start, end))
            out.append(value)
            length += len(value)
            last = end
        if not spans:
            return text, ()
        out.append(text[last:])
        return "".join(out), tuple(spans)

    def _substitute_line(self, line: SourceLine) -> SourceLine:
        if not any(v is not None for v in self.defines.values()):
            return line
        text, spans = self._substitute(line.text)
        if not spans:
            return line
        if line.via:                          # columns of a made line are not the source's
            spans = ()
        return SourceLine(line.lineno, text, line.source, line.via, line.call_col, spans)

    def _call(self, line: SourceLine) -> bool:
        """Expand ``line`` if it calls a macro (``NAME args`` or ``label: NAME args``)."""
        text = line.text
        end = _code_end(text)
        start = _skip_space(text, 0)
        stop = _name_at(text, start)
        label_end = None
        after = _skip_space(text, stop)
        if stop > start and after < end and text[after] == ":":
            label_end = after + 1
            start = _skip_space(text, label_end)
            stop = _name_at(text, start)
        name = text[start:stop]
        if name not in self.macros or stop < end and not text[stop].isspace():
            return False
        args = _split_args(line, stop, end, name)
        bodies = self.macros[name]
        m = bodies.get(len(args))
        statement = name.lower() in self.words
        if m is None:
            if statement:
                return False                  # NASM: the instruction of that name
            raise line.error(f"macro {name} takes {_counts(bodies)}, got {len(args)}",
                             start + 1)
        if m in self.expanding:
            if statement:
                return False
            chain = [e.name for e in self.expanding[self.expanding.index(m):]] + [name]
            raise line.error(f"macro {name} invokes itself ({' -> '.join(chain)}): as in NASM, "
                             "a macro is not expanded inside its own expansion, and "
                             f"{name} is not an instruction", start + 1)
        if len(self.expanding) >= MAX_DEPTH:
            chain = [e.name for e in self.expanding] + [name]
            raise line.error(f"macros nested more than {MAX_DEPTH} deep: "
                             f"{' -> '.join(chain)}", start + 1)
        if label_end is not None:
            self.out.append(SourceLine(line.lineno, text[:label_end], line.source, line.via,
                                       line.call_col, line.spans))
        self.serial += 1
        serial = self.serial                  # a nested call takes the next numbers
        call_col = line.call_col if line.via else line.source_col(start + 1)
        self.expanding.append(m)
        for body in m.body:
            self.feed(SourceLine(line.lineno, _instantiate(body.text, args, serial),
                                 line.source, line.via + ((name, body.lineno),), call_col))
        self.expanding.pop()
        return True


# ---------------------------------------------------------------------------
# The face

def normalize_defines(defines) -> dict:
    """``defines`` as {name: value text or None}; TypeError/ValueError say what is wrong."""
    if defines is None:
        return {}
    if isinstance(defines, (str, bytes)):
        raise TypeError(f"defines wants a dict {{name: int or None}} or a list of names, "
                        f"not a {type(defines).__name__} (it would be read letter by letter): "
                        f"write defines=[{defines!r}]")
    if isinstance(defines, Mapping):
        items = list(defines.items())
    else:
        try:
            items = [(name, None) for name in defines]
        except TypeError:
            raise TypeError("defines wants a dict {name: int or None} or an iterable of "
                            f"names — got {type(defines).__name__}") from None
    out = {}
    for name, value in items:
        if not isinstance(name, str):
            raise TypeError(f"defines: each name must be a str — got {type(name).__name__} "
                            f"{name!r}")
        if not is_name(name):
            raise ValueError(f"defines: {name!r} is not a name (a letter, _, ? or @, then "
                             "letters, digits and _ . ? @ $ # ~)")
        if isinstance(value, bool) or not (value is None or isinstance(value, int)):
            hint = (f"; to leave {name} undefined, leave it out"
                    if isinstance(value, bool) else "")
            raise TypeError(f"defines[{name!r}] must be an int or None (None: defined, no "
                            f"value) — got {type(value).__name__} {value!r}{hint}")
        out[name] = None if value is None else str(int(value))
    return out


def preprocess(source: str, defines=None, statement_words=()) -> list:
    """The lines of ``source`` after NASM-style preprocessing, as SourceLines.

    ``defines`` (a dict name -> int or None, or an iterable of names) acts as
    ``%define NAME value`` lines before the source.  ``statement_words`` are the
    words the assembler reads as a statement (lower case): a call of a macro of
    that name with a count no body takes is left to the assembler.

    >>> src = "%macro TWICE 1\\n  %1\\n  %1\\n%endmacro\\nTWICE nop\\nTWICE {db 1, 2}"
    >>> [(line.lineno, line.text) for line in preprocess(src)]
    [(5, '  nop'), (5, '  nop'), (6, '  db 1, 2'), (6, '  db 1, 2')]
    """
    pp = _Preprocessor(normalize_defines(defines), frozenset(statement_words))
    for lineno, text in enumerate(source.splitlines(), 1):
        pp.feed(SourceLine(lineno, text.rstrip("\r")))
    pp.finish()
    return pp.out
