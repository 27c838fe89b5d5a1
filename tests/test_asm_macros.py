"""Tests for hvsim.asm.preprocess through assemble(): %define, %ifdef/%ifndef/%else,
%macro with parameters, %0 and %%labels, and the errors a student meets.

Oracles: the same program written out by hand (the macro version's bytes must equal
the hand-expanded version's), a few encodings written out literally, and NASM
itself, which defines what the directives mean, when it is installed."""
import doctest
import hashlib
import shutil
import subprocess

import pytest

import hvsim.asm.assembler
import hvsim.asm.preprocess
import hvsim.guests
from hvsim.asm import AsmError, assemble
from hvsim.asm.preprocess import DIRECTIVES, MAX_DEPTH

ORG = 0x1000


def same_code(macro_src: str, hand_src: str, **kw) -> bytes:
    """Assemble both; the macro version must give the hand-expanded bytes."""
    code = assemble(macro_src, origin=ORG, **kw).code
    assert code == assemble(hand_src, origin=ORG).code
    return code


def error_of(src: str, **kw) -> AsmError:
    with pytest.raises(AsmError) as e:
        assemble(src, origin=ORG, **kw)
    return e.value


# --- sources without directives: unchanged ----------------------------------------------

# sha256 of the code and of repr(listing), computed at 1918d97 (before the preprocessor)
GUEST_DIGESTS = {
    "teaching_kernel": ("0884bf65d5992c1754d899a2289682f2aed341caae36bed7024c77afa96df1c7",
                        "57b094b31208b8533522be1d0c3935244d619907b871d9c99abd6b686461db25"),
    "mm_kernel": ("e98aca1392ccb89b077553834395a975900c326ff155b9b84a32f279f59d5831",
                  "44a58b4a97cf2cc2ff8a1d1676a2517d66d62581a592a71f39ee11bee49841ee"),
}


@pytest.mark.parametrize("name", sorted(GUEST_DIGESTS))
def test_guest_kernels_assemble_to_the_same_bytes_and_listing_as_before(name):
    prog = getattr(hvsim.guests, name)()
    code_digest, listing_digest = GUEST_DIGESTS[name]
    assert hashlib.sha256(prog.code).hexdigest() == code_digest
    assert hashlib.sha256(repr(prog.listing).encode()).hexdigest() == listing_digest


def test_modulo_operators_outside_macros_are_still_operators():
    # '%' starts a directive only as a line's first token; inside a line it is modulo
    assert assemble("mov eax, 17%5\nmov ebx, -7%%2").code == assemble(
        "mov eax, 2\nmov ebx, -1").code


@pytest.mark.parametrize("module", [hvsim.asm.assembler, hvsim.asm.preprocess])
def test_doctests_pass(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# --- %define and defines= ---------------------------------------------------------------

def test_defines_dict_substitutes_values_as_whole_words():
    code = same_code("mov eax, SLOTS * 4\nNSLOTS equ 1\nmov ebx, NSLOTS + SLOTS\n"
                     "db 'SLOTS', SLOTS ; SLOTS in a comment",
                     "mov eax, 3 * 4\nNSLOTS equ 1\nmov ebx, NSLOTS + 3\ndb 'SLOTS', 3",
                     defines={"SLOTS": 3})
    assert code[:5] == bytes.fromhex("b80c000000")            # mov eax, 12
    assert code[10:] == b"SLOTS\x03"                           # not inside the string


def test_defines_negative_and_none_values():
    # None: defined for %ifdef, and the name itself is left alone (NASM would drop it)
    same_code("%ifdef XEN\nmov eax, 10 - DELTA\n%endif\nXEN equ 9\nmov ecx, XEN",
              "mov eax, 10 - -4\nXEN equ 9\nmov ecx, 9", defines={"XEN": None, "DELTA": -4})


@pytest.mark.parametrize("names", [["XEN"], ("XEN",), {"XEN"}, (n for n in ["XEN"]),
                                   {"XEN": None}.keys()])
def test_defines_iterable_of_names(names):
    src = "%ifdef XEN\n  db 1\n%else\n  db 2\n%endif"
    assert assemble(src, defines=names).code == b"\x01"
    assert assemble(src).code == b"\x02"


def test_define_in_source_is_lazy_rescanned_and_undefined():
    same_code("%define A B + 1\n%define B 4\nmov eax, A\n%define B 5\nmov eax, A\n"
              "%undef A\nA equ 7\nmov eax, A",
              "mov eax, 4 + 1\nmov eax, 5 + 1\nA equ 7\nmov eax, 7")


def test_define_never_replaces_a_name_inside_its_own_value():
    # as NASM's single-line macros: S -> S + 1 once, and X -> Y + 1 -> X * 2 + 1
    same_code("S equ 5\n%define S S + 1\nmov eax, S", "S equ 5\nmov eax, 6")
    e = error_of("%define X Y + 1\n%define Y X * 2\nmov eax, X")
    assert e.message == "undefined label 'X'"
    assert e.expanded == "mov eax, X * 2 + 1"


def test_define_source_overrides_defines_argument_and_undef_removes_it():
    src = "%define N 2\nmov eax, N\n%undef XEN\n%ifdef XEN\ndb 0xff\n%endif"
    same_code(src, "mov eax, 2", defines={"N": 1, "XEN": None})


# --- conditional assembly ---------------------------------------------------------------

NESTED = """\
%ifdef A
  %ifndef B
    db 1
  %else
    db 2
  %endif
%else
  %ifdef B
    db 3
  %else
    db 4
  %endif
  %ifdef A
    this line is not assembly at all [[[
    %ifdef B
      neither is this one ???
    %else
      mov eax, [undefined_label]
    %endif
  %endif
%endif
%ifndef A
  %ifndef B
    db 5
  %endif
%endif
db 0xee
"""


@pytest.mark.parametrize("names, code", [([], "0405ee"), (["A"], "01ee"), (["B"], "03ee"),
                                         (["A", "B"], "02ee")])
def test_ifdef_ifndef_else_nest_and_skipped_branches_may_hold_anything(names, code):
    assert assemble(NESTED, defines=names).code.hex() == code


def test_directive_names_are_case_insensitive_and_take_comments():
    src = "%IFDEF X ; comment\n db 1\n%Else\n db 2\n%ENDIF ; done\n%Define Y 9\n db Y"
    assert assemble(src, defines=["X"]).code == b"\x01\x09"
    assert assemble(src).code == b"\x02\x09"


def test_skipped_branch_ignores_define_and_macro():
    src = ("%ifdef NEVER\n%define V 1\n%macro M 0\n bogus\n%endmacro\n%endif\n"
           "%ifndef V\n db 7\n%endif\n%macro M 0\n db 8\n%endmacro\n M")
    assert assemble(src).code == b"\x07\x08"


# --- macros -----------------------------------------------------------------------------

def test_macro_parameters_and_count():
    code = same_code("%macro STORE 2\n  mov dword [%1], %2\n  db %0\n%endmacro\n"
                     "  STORE ebx+4, 0x1234\n%macro NONE 0\n  db %0\n%endmacro\n  NONE",
                     "  mov dword [ebx+4], 0x1234\n  db 2\n  db 0")
    assert code == bytes.fromhex("c74304341200000200")


def test_macro_arguments_split_at_top_level_commas_only():
    same_code("%macro FOUR 4\n  lea ecx, %1\n  mov edx, %2\n  dd %3\n  db %4\n%endmacro\n"
              "  FOUR [eax+ebx*2+8], (1+2)*3, 'a,b', {1, 2, 3}",
              "  lea ecx, [eax+ebx*2+8]\n  mov edx, (1+2)*3\n  dd 'a,b'\n  db 1, 2, 3")


def test_macro_parameters_are_not_replaced_in_strings_or_comments():
    # NASM leaves '%1' in quotes alone, and a comment may mention %3 of a 1-param macro
    code = assemble("%macro M 1\n  db '%1', %1 ; %3 is fine here\n%endmacro\n M 7").code
    assert code == b"%1\x07"


SPIN = "%macro SPIN 1\n  mov ecx, %1\n%%loop:\n  dec ecx\n  jnz %%loop\n%endmacro\n"


def test_local_labels_are_unique_per_expansion():
    prog = assemble(SPIN + "  SPIN 3\n  SPIN 5", origin=ORG)
    hand = "  mov ecx, 3\na:\n  dec ecx\n  jnz a\n  mov ecx, 5\nb:\n  dec ecx\n  jnz b"
    assert prog.code == assemble(hand, origin=ORG).code
    # B9 id, 49, 75 rel8: each jnz goes back 3 bytes to its own dec; had the second
    # gone to the first loop, its rel8 would be 1005h - 1010h = -11 (F5)
    assert prog.code == bytes.fromhex("b903000000 49 75fd b905000000 49 75fd")
    assert prog.labels["..@1.loop"] == 0x1005 and prog.labels["..@2.loop"] == 0x100D


def test_forward_local_label_in_two_expansions():
    src = "%macro SKIP1 0\n  jmp %%over\n  int3\n%%over:\n%endmacro\n  SKIP1\n  SKIP1"
    assert assemble(src).code == bytes.fromhex("eb01cc eb01cc")


def test_plain_label_in_a_macro_body_is_defined_twice_by_two_expansions():
    # why %%labels exist: an ordinary label is one per program, whatever made it
    e = error_of("%macro BAD 0\ndone:\n  nop\n%endmacro\n  BAD\n  BAD")
    assert e.message == "in macro BAD at line 2, expanded from line 6: duplicate label " \
                        "'done' (first defined on line 5)"
    assert e.line == 6


def test_nested_macro_calls_with_their_own_local_labels():
    src = SPIN + ("%macro TWO_SPINS 2\n  SPIN %1\n  nop\n  SPIN %2\n%endmacro\n"
                  "  TWO_SPINS 1, 2\n  TWO_SPINS 3, 4")
    hand = "".join(f"  mov ecx, {n}\nl{n}:\n  dec ecx\n  jnz l{n}\n" + ("  nop\n" if n % 2 else "")
                   for n in (1, 2, 3, 4))
    prog = assemble(src, origin=ORG)
    assert prog.code == assemble(hand, origin=ORG).code
    # expansions numbered in order: TWO_SPINS is 1, its SPINs 2 and 3; then 4, 5, 6
    assert sorted(k for k in prog.labels if k.startswith("..@")) == [
        "..@2.loop", "..@3.loop", "..@5.loop", "..@6.loop"]


def test_local_label_after_a_nested_call_keeps_its_expansion_number():
    # OUTER is expansion 1 and INNER 2: OUTER's %%x, defined after INNER, is still ..@1.x
    src = ("%macro INNER 0\n  nop\n%endmacro\n"
           "%macro OUTER 0\n  jz %%x\n  INNER\n%%x:\n%endmacro\n  OUTER\n  OUTER")
    prog = assemble(src, origin=ORG)
    assert prog.code == assemble("  jz a\n  nop\na:\n  jz b\n  nop\nb:", origin=ORG).code
    assert sorted(k for k in prog.labels if k.startswith("..@")) == ["..@1.x", "..@3.x"]


def test_label_before_a_macro_call():
    prog = assemble(SPIN + "  nop\nentry: SPIN 2\n  jmp entry", origin=ORG)
    assert prog.labels["entry"] == 0x1001
    assert prog.code == assemble("  nop\nentry: mov ecx, 2\nx: dec ecx\n jnz x\n jmp entry",
                                 origin=ORG).code


def test_caller_local_labels_keep_their_scope_across_an_expansion():
    src = SPIN + ("func:\n.top:\n  SPIN 2\n.after:\n  jmp .top\n  jmp .after\n"
                  "other:\n.top:\n  ret")
    prog = assemble(src, origin=ORG)
    # ..@1.loop is not a new scope: .after belongs to func, as in NASM
    assert {k for k in prog.labels} == {"func", "func.top", "func.after", "..@1.loop",
                                        "other", "other.top"}
    assert prog.labels["func.after"] == 0x1008
    assert prog.code[8:12] == bytes.fromhex("ebf6 ebfc")      # to 1000h, to 1008h


def test_macro_lines_are_listed_at_the_callers_line_with_their_expanded_text():
    prog = assemble("%macro PAIR 2\n  push %1\n  push %2\n%endmacro\n  nop\ngo: PAIR eax, 5",
                    origin=ORG)
    assert prog.listing == [(0x1000, b"\x90", 5, "  nop"),
                            (0x1001, b"", 6, "go:"),
                            (0x1001, b"\x50", 6, "  push eax"),
                            (0x1002, b"\x6a\x05", 6, "  push 5")]


def test_defines_choose_between_two_macro_bodies():
    src = ("%ifdef XEN\n%macro IRQ_OFF 0\n  mov byte [0x2000], 1\n%endmacro\n%else\n"
           "%macro IRQ_OFF 0\n  cli\n%endmacro\n%endif\n  IRQ_OFF\n  hlt")
    assert assemble(src).code == bytes.fromhex("faf4")
    assert assemble(src, defines=["XEN"]).code == bytes.fromhex("c6050020000001f4")


def test_conditionals_inside_a_body_are_decided_at_each_expansion():
    src = ("%macro IRQ_OFF 0\n%ifdef XEN\n  mov byte [0x2000], 1\n%else\n  cli\n%endif\n"
           "%endmacro\n  IRQ_OFF\n%define XEN\n  IRQ_OFF")
    assert assemble(src).code == bytes.fromhex("fa c6050020000001")


def test_defines_apply_to_expanded_lines_at_expansion_time():
    src = "%macro LOAD 0\n  mov eax, LIMIT\n%endmacro\n%define LIMIT 7\n  LOAD"
    assert assemble(src).code == bytes.fromhex("b807000000")


def test_overloading_by_parameter_count():
    same_code("%macro PUSHES 1\n  push %1\n%endmacro\n%macro PUSHES 2\n  push %1\n  push %2\n"
              "%endmacro\n  PUSHES eax\n  PUSHES ebx, ecx", "push eax\npush ebx\npush ecx")


def test_a_macro_named_like_an_instruction_as_in_nasm():
    # another count is the instruction; inside its own body the name is the instruction
    same_code("%macro push 2\n  push %1\n  push %2\n%endmacro\n  push eax, ecx\n  push edx\n"
              "%macro cli 0\n  nop\n  cli\n%endmacro\n  cli",
              "push eax\npush ecx\npush edx\nnop\ncli")


def test_macro_names_are_case_sensitive():
    e = error_of("%macro Spin 0\n  nop\n%endmacro\n  SPIN")
    assert e.message.startswith("unknown mnemonic 'SPIN'")


@pytest.mark.skipif(shutil.which("nasm") is None, reason="nasm not installed")
def test_same_bytes_as_nasm(tmp_path):
    body = (SPIN + "%macro PAIR 2\n  push %1\n  push %2\n%endmacro\n"
            "%macro OUTER 1\n  SPIN %1\n  PAIR {dword [ebx+%1]}, %0\n%endmacro\n"
            "%define K 3\nf:\n.a: OUTER K\n.b: jmp .a\n%ifdef K\n  PAIR 1, 2\n%else\n  bad\n"
            "%endif\n%macro cli 0\n  nop\n  cli\n%endmacro\n  cli\n  jmp .b\n")
    src = tmp_path / "m.asm"
    src.write_text(f"bits 32\norg {ORG:#x}\n" + body)
    out = tmp_path / "m.bin"
    subprocess.run(["nasm", "-f", "bin", str(src), "-o", str(out)], check=True,
                   capture_output=True)
    assert assemble(body, origin=ORG).code == out.read_bytes()


# --- errors -----------------------------------------------------------------------------

KNOWN = "%define %undef %ifdef %ifndef %else %endif %macro %endmacro"


def test_directive_list_in_the_message_is_the_one_handled():
    assert " ".join(DIRECTIVES) == KNOWN


@pytest.mark.parametrize("src, line, col, message", [
    ("nop\n%foo bar", 2, 1,
     f"%foo is not a directive hvsim's assembler knows: {KNOWN}"),
    ("%ifdef X\n  %include 'x.s'\n%endif", 2, 3,
     f"%include is not a directive hvsim's assembler knows: {KNOWN}"),
    ("%macro M 0\n  %rep 3\n%endmacro", 2, 3,
     f"%rep is not a directive hvsim's assembler knows: {KNOWN}"),
    ("nop\n\n%macro PTE_SET 2\n  mov [%1], %2\n", 3, 1,
     "unterminated %macro PTE_SET (opened on line 3): expected %endmacro before the end "
     "of the source"),
    ("%ifdef XEN\n nop\n%ifndef HVM\n%endif\n", 1, 1,
     "unterminated %ifdef XEN (opened on line 1): expected %endif before the end of the "
     "source"),
    ("%ifndef XEN\n%ifdef A\n%else\n", 2, 1,
     "unterminated %ifdef A (opened on line 2): expected %endif before the end of the "
     "source"),
    ("%macro M 0\n%ifdef XEN\n  nop\n%endmacro", 2, 1,
     "unterminated %ifdef XEN (opened on line 2): expected %endif before the %endmacro of "
     "M on line 4"),
    ("nop\n%endif", 2, 1, "%endif without %ifdef or %ifndef"),
    ("%else", 1, 1, "%else without %ifdef or %ifndef"),
    ("  %endmacro", 1, 3, "%endmacro without %macro"),
    ("%macro M 0\n%endif\n%endmacro", 2, 1,
     "%endif without %ifdef or %ifndef in the body of macro M"),
    ("%ifdef X\n%else\n nop\n%else\n%endif", 4, 1,
     "a second %else for the %ifdef X on line 1 (its first %else is on line 2)"),
    ("%ifdef X\n%ifdef Y\n%else\n%else\n%endif\n%endif", 4, 1,
     "a second %else for the %ifdef Y on line 2 (its first %else is on line 3)"),
    ("%macro M 1\n%ifndef Q\n%else\n%else\n%endif\n%endmacro", 4, 1,
     "a second %else for the %ifndef Q on line 2 (its first %else is on line 3)"),
    ("%macro IRQ_RESTORE 1\n  push %1\n  popfd\n%endmacro\n  IRQ_RESTORE eax, ebx", 5, 3,
     "macro IRQ_RESTORE takes 1 argument, got 2"),
    ("%macro IRQ_RESTORE 1\n  push %1\n%endmacro\nx:  IRQ_RESTORE", 4, 5,
     "macro IRQ_RESTORE takes 1 argument, got 0"),
    ("%macro P 1\n%endmacro\n%macro P 3\n%endmacro\n P 1, 2", 5, 2,
     "macro P takes 1 or 3 arguments, got 2"),
    ("%macro P 2\n%endmacro\n%macro P 2\n%endmacro", 3, 8,
     "macro P with 2 parameters is already defined on line 1 (a second body of P needs "
     "another parameter count)"),
    ("%macro PTE_SET 2\n  mov [%1], %2\n  or dword [%1], %3\n%endmacro", 3, 18,
     "%3 in macro PTE_SET, which takes 2 parameters: expected %1 to %2 (or %0, the "
     "argument count)"),
    ("%macro IRQ_OFF 0\n  db %0, %1\n%endmacro", 2, 10,
     "%1 in macro IRQ_OFF, which takes 0 parameters: expected none (only %0, the argument "
     "count)"),
    ("%macro A 0\n  %macro B 0\n%endmacro", 2, 3,
     "%macro inside the body of macro A (opened on line 1): hvsim's macros cannot define "
     "macros; end the first with %endmacro"),
    ("  mov eax, %1", 1, 12, "expected a number, label or '(' — got '%'"),
    ("%1 nop", 1, 1, "%1 is a macro parameter: it means something only inside a %macro body"),
    ("  %%skip: nop", 1, 3,
     "%%skip is a macro-local label: it means something only inside a %macro body"),
    ("%define", 1, 8, "expected a name after %define"),
    ("%define 9X 1", 1, 9, "expected a name after %define — got '9X'"),
    ("%define F(x) x * 2", 1, 9, "%define F(...) with parameters is not supported: use %macro"),
    ("%ifdef A B\n%endif", 1, 10, "expected end of line after %ifdef A (one name only)"),
    ("%ifdef X\n%else junk\n%endif", 2, 7, "expected end of line after %else"),
    ("%macro M", 1, 9, "expected the number of parameters after %macro M (e.g. %macro M 2)"),
    ("%macro M 1-3", 1, 10,
     "hvsim's %macro takes an exact number of parameters: NASM's ranges (1-3), greedy (+) "
     "and default parameters are not supported — got '1-3'"),
    ("%macro M 1\n%endmacro\n  M 'abc, 1", 3, 5,
     "unterminated string in the arguments of macro M: expected a closing '"),
    ("%macro M 1\n%endmacro\n  M {1, 2", 3, 5,
     "unclosed '{' in the arguments of macro M: expected '}'"),
])
def test_error_says_what_and_where(src, line, col, message):
    e = error_of(src)
    assert (e.message, e.line, e.column) == (message, line, col)
    assert e.text == src.splitlines()[line - 1]


def test_error_in_an_expanded_line_names_the_macro_and_the_callers_line():
    src = ("; page-table helpers\n%macro PTE_SET 2\n  mov dword [%1], %2\n"
           "  or dword [%1], qq\n%endmacro\n\n  nop\n  PTE_SET ebx+4, 7")
    e = error_of(src)
    assert e.message == ("in macro PTE_SET at line 4, expanded from line 8: "
                         "undefined label 'qq'")
    assert (e.line, e.column, e.text) == (8, 3, "  PTE_SET ebx+4, 7")
    assert (e.expanded, e.expanded_column) == ("  or dword [ebx+4], qq", 21)
    assert str(e) == ("line 8, col 3: in macro PTE_SET at line 4, expanded from line 8: "
                      "undefined label 'qq'\n      PTE_SET ebx+4, 7\n      ^\n"
                      "  expanded:\n      or dword [ebx+4], qq\n                        ^")


def test_error_in_a_nested_expansion_names_each_macro():
    src = ("%macro INNER 1\n  mov %1, al\n%endmacro\n%macro OUTER 1\n  nop\n  INNER %1\n"
           "%endmacro\nstart:  OUTER ecx")
    e = error_of(src)
    assert e.message.startswith("in macro INNER at line 2, called from macro OUTER at line 6, "
                                "expanded from line 8: wrong operand size")
    assert (e.line, e.column, e.expanded) == (8, 9, "  mov ecx, al")


def test_wrong_count_in_a_nested_call_is_reported_at_the_callers_line():
    src = "%macro ONE 1\n%endmacro\n%macro TWO 0\n  ONE\n%endmacro\n\n  TWO"
    e = error_of(src)
    assert e.message == ("in macro TWO at line 4, expanded from line 7: "
                         "macro ONE takes 1 argument, got 0")
    assert e.line == 7


def test_a_macro_that_invokes_itself_is_an_error_naming_the_chain():
    src = "%macro A 0\n  B\n%endmacro\n%macro B 0\n  A\n%endmacro\n  A"
    e = error_of(src)
    assert e.message == ("in macro B at line 5, called from macro A at line 2, expanded from "
                         "line 7: macro A invokes itself (A -> B -> A): as in NASM, a macro "
                         "is not expanded inside its own expansion, and A is not an "
                         "instruction")
    assert e.line == 7


def test_expansion_depth_is_limited():
    n = MAX_DEPTH + 1
    src = "".join(f"%macro M{i} 0\n  M{i + 1}\n%endmacro\n" for i in range(n))
    src += f"%macro M{n} 0\n  nop\n%endmacro\n  M0"
    e = error_of(src)
    chain = " -> ".join(f"M{i}" for i in range(MAX_DEPTH + 1))
    assert e.message.endswith(f": macros nested more than {MAX_DEPTH} deep: {chain}")
    assert e.message.startswith(f"in macro M{MAX_DEPTH - 1} at line {3 * MAX_DEPTH - 1}, "
                                f"called from macro M{MAX_DEPTH - 2} at line "
                                f"{3 * MAX_DEPTH - 4}, called from ... {MAX_DEPTH - 3} more "
                                "..., called from macro M0 at line 2, expanded from line ")
    assert e.line == src.count("\n") + 1
    # one level less assembles: M0 .. M63 then a nop
    short = "".join(f"%macro M{i} 0\n  M{i + 1}\n%endmacro\n" for i in range(MAX_DEPTH - 1))
    assert assemble(short + f"%macro M{MAX_DEPTH - 1} 0\n  nop\n%endmacro\n  M0").code == b"\x90"


def test_define_error_column_is_found_in_the_line_as_written():
    text = "  mov eax, LONGNAME + qq"
    e = error_of("%define LONGNAME 1\n" + text)
    assert e.message == "undefined label 'qq'"
    assert (e.line, e.text, e.expanded) == (2, text, "  mov eax, 1 + qq")
    assert e.column == text.index("qq") + 1 and e.expanded_column == e.expanded.index("qq") + 1


# --- the defines argument ---------------------------------------------------------------

@pytest.mark.parametrize("defines, exc, message", [
    ("XEN", TypeError, "defines wants a dict {name: int or None} or a list of names, not a "
                       "str (it would be read letter by letter): write defines=['XEN']"),
    (5, TypeError, "defines wants a dict {name: int or None} or an iterable of names — got int"),
    ([1], TypeError, "defines: each name must be a str — got int 1"),
    ({"N": "3"}, TypeError, "defines['N'] must be an int or None (None: defined, no value) — "
                            "got str '3'"),
    ({"XEN": False}, TypeError, "defines['XEN'] must be an int or None (None: defined, no "
                                "value) — got bool False; to leave XEN undefined, leave it "
                                "out"),
    ({"9X": 1}, ValueError, "defines: '9X' is not a name (a letter, _, ? or @, then letters, "
                            "digits and _ . ? @ $ # ~)"),
])
def test_bad_defines_are_refused_with_a_clear_message(defines, exc, message):
    with pytest.raises(exc) as e:
        assemble("nop", defines=defines)
    assert str(e.value) == message
    assert type(e.value) is exc                                # not an AsmError
