"""hvsim.lessons.Exercise: seeded problems, answers checked, malformed answers explained."""
import doctest

import pytest

import hvsim.lessons
from hvsim.lessons import Exercise


def _ex(seed=1, **kw):
    args = dict(make=lambda rng: {"a": rng.randrange(100, 200), "b": rng.randrange(1, 9)},
                question="{a} * {b}?", answer=lambda p: p["a"] * p["b"],
                solution="{a} * {b} = {answer}")
    args.update(kw)
    return Exercise("mul", seed, **args)


def test_doctest():
    r = doctest.testmod(hvsim.lessons)
    assert r.attempted > 0 and r.failed == 0


def test_seed_fixes_the_problem_and_other_seeds_change_it():
    a, b = _ex(5), _ex(5)
    assert a.params == b.params and a.expected == b.expected == a.params["a"] * a.params["b"]
    others = {tuple(_ex(s).params.values()) for s in range(20)}
    assert len(others) > 10
    assert a.with_seed(6).params == _ex(6).params


def test_right_answer_in_any_integer_spelling():
    ex = _ex()
    v = ex.expected
    for spelling in (v, str(v), hex(v), f" {v:#x} ", float(v), f"{v:_}"):
        assert ex.check(spelling).ok, spelling
    assert not ex.check(v + 1).ok
    assert "is not it" in ex.check(v + 1).message


@pytest.mark.parametrize("bad, words", [
    (None, "no answer yet"), ("", "no answer yet"), ("twelve", "could not read 'twelve'"),
    (True, "truth value"), ([1, 2], "could not read"), (1.5, "could not read"),
    (object(), "could not read"),
])
def test_malformed_answers_get_a_verdict_not_an_exception(bad, words):
    verdict = _ex().check(bad)
    assert not verdict.ok
    assert verdict.message.startswith("mul: ") and words in verdict.message


def test_list_and_text_answers():
    ex = Exercise("pair", 0, make=lambda rng: {}, question="q", answer=lambda p: (3, 0x10),
                  solution="s")
    assert ex.check(["3", "0x10"]).ok and ex.check((3, 16)).ok
    assert "has 2 values; yours has 1" in ex.check([3]).message
    assert not ex.check((3, 17)).ok
    word = Exercise("w", 0, make=lambda rng: {}, question="q", answer=lambda p: "#GP",
                    solution="s")
    assert word.check(" #gp ").ok and not word.check("#PF").ok
    assert "a word or a name" in word.check(13).message


def test_a_lesson_parser_that_refuses_input_is_reported():
    def parse(s):
        if s not in ("ring 0", "ring 3"):
            raise ValueError("say 'ring 0' or 'ring 3'")
        return s
    ex = Exercise("ring", 0, make=lambda rng: {}, question="q", answer=lambda p: "ring 3",
                  solution="s", parse=parse)
    assert ex.check("ring 3").ok
    v = ex.check("ring 7")
    assert not v.ok and "say 'ring 0' or 'ring 3'" in v.message


def test_question_and_solution_render_with_parameters():
    ex = _ex(2)
    p = ex.params
    assert ex.question_text() == f"{p['a']} * {p['b']}?"
    assert str(ex.reveal()).startswith(f"{p['a']} * {p['b']} = {ex.expected}")
    assert f"seed {ex.seed}" in ex._repr_markdown_()
    assert 'data-ok="1"' in ex.check(ex.expected)._repr_html_()


def test_bad_definitions_are_refused():
    with pytest.raises(TypeError, match="seed"):
        Exercise("x", "7", make=dict, question="", answer=dict, solution="")
    with pytest.raises(ValueError, match="name"):
        Exercise("", 1, make=dict, question="", answer=dict, solution="")
    ex = Exercise("x", 1, make=lambda rng: [1], question="", answer=len, solution="")
    with pytest.raises(TypeError, match="make\\(\\) must return a dict"):
        ex.params


def test_index_exercise_counts_what_the_machine_retires():
    from hvsim.lessons import l00_index
    for seed in range(5):
        ex = l00_index.loop_exercise(seed)
        n = ex.params["n"]
        assert ex.expected == 2 * n + 2                  # mov, n x (add, loop), hlt
        assert ex.check(str(2 * n + 2)).ok and not ex.check(2 * n + 1).ok
        assert f"**{2 * n + 2}**" in ex.solution_text()
    with pytest.raises(ValueError, match="1..1000"):
        l00_index.loop_machine(0)


def test_lesson02_native_run_does_the_same_work_without_a_monitor_and_the_cost_table_adds_up():
    """The teaching kernel in ring 0 with its own IDT: it boots, prints, serves system calls
    and counts timer ticks (the clock never freezes natively: POPF at CPL 0 restores IF);
    the cost table's cycles are hvsim.cost's breakdown totals."""
    from hvsim import cost
    from hvsim.lessons import l02_hole as l02
    nat = l02.run_native(30_000)
    assert nat.console.startswith("kernel up\nhello from ring 3\n")
    assert nat.machine.cpu.cpl in (0, 3) and nat.stats["traps"] == 0
    calls, ticks = l02.guest_dword(nat, "calls"), l02.guest_dword(nat, "ticks")
    assert calls > 20 and ticks > 150                    # 30,000 instructions / PERIOD 150
    # SYS_TICKS calls counted by the kernel, + write, onfault and sleep (+ one in flight)
    assert calls + 3 <= nat.machine.counters.delivered[0x80] <= calls + 4
    runs = {"native": nat}
    table = l02.cost_table(runs, "nehalem").splitlines()
    total = cost.breakdown(nat, "nehalem").total
    assert table[1].split()[1:4] == [str(calls), str(ticks), f"{total:,.0f}"]
