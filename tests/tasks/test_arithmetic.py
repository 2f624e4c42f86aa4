"""The arithmetic task: correct solutions, determinism, the checker, the tokenizer alphabet."""

import dataclasses
import re

import pytest

from sharpjax.models.tokenizer import DEFAULT_ALPHABET, build_char_tokenizer, render_chat
from sharpjax.rewards.math import verify_one
from sharpjax.tasks import arithmetic
from sharpjax.tasks.arithmetic import (
    TEST_FRACTION,
    ArithmeticProblem,
    Difficulty,
    check,
    evaluate_steps,
    generate_problems,
    in_test_split,
    parse_int,
    task_alphabet,
    user_message,
)

DIFFICULTIES = [
    Difficulty(),
    Difficulty(min_operands=2, max_operands=4, min_digits=1, max_digits=3, ops=("+", "-", "*"), mul_max_digits=2),
    Difficulty(min_operands=4, max_operands=4, min_digits=2, max_digits=2, ops=("*",), mul_max_digits=2),
]
_STEP_RE = re.compile(r"^(-?\d+)([+\-*])(\d+)=(-?\d+)$")


def _python_value(expr: str) -> int:
    # An independent evaluator: Python's own parser, with the usual precedence.
    assert re.fullmatch(r"[0-9+\-*]+", expr), expr
    return eval(expr)  # digits and + - * only (asserted above)


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_solutions_are_correct_step_by_step(difficulty):
    for p in generate_problems(300, seed=1, difficulty=difficulty):
        value = _python_value(p.problem)
        assert p.answer == str(value)
        lines = p.solution.split("\n")
        assert lines[-1] == f"\\boxed{{{value}}}"
        operands = re.findall(r"\d+", p.problem)
        assert len(lines) - 1 == len(operands) - 1  # one line per binary operation
        for line in lines[:-1]:
            m = _STEP_RE.match(line)
            assert m, line
            a, op, b, r = int(m[1]), m[2], int(m[3]), int(m[4])
            assert {"+": a + b, "-": a - b, "*": a * b}[op] == r, line
        # The last step's result is the answer.
        assert int(_STEP_RE.match(lines[-2])[4]) == value
        assert check(p.solution, p.answer) == 1.0


def test_steps_reduce_products_first_then_left_to_right():
    assert evaluate_steps([47, 8, 3, 15], ["+", "*", "-"]) == [(8, "*", 3, 24), (47, "+", 24, 71), (71, "-", 15, 56)]
    assert evaluate_steps([10, 3, 4], ["-", "-"]) == [(10, "-", 3, 7), (7, "-", 4, 3)]  # not 10-(3-4)
    with pytest.raises(ValueError, match="operators"):
        evaluate_steps([1, 2], [])


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_problems_respect_the_difficulty(difficulty):
    problems = generate_problems(500, seed=2, difficulty=difficulty)
    counts = set()
    for p in problems:
        operands = re.findall(r"\d+", p.problem)
        ops = re.findall(r"[+\-*]", p.problem)
        counts.add(len(operands))
        assert difficulty.min_operands <= len(operands) <= difficulty.max_operands
        assert set(ops) <= set(difficulty.ops)
        for i, x in enumerate(operands):
            next_to_mul = (i > 0 and ops[i - 1] == "*") or (i < len(ops) and ops[i] == "*")
            hi = min(difficulty.max_digits, difficulty.mul_max_digits) if next_to_mul else difficulty.max_digits
            assert len(x) <= hi, p.problem
            assert x == "0" or not x.startswith("0"), p.problem
    assert counts == set(range(difficulty.min_operands, difficulty.max_operands + 1))


def test_generation_is_deterministic_by_seed():
    a = generate_problems(50, seed=7)
    assert a == generate_problems(50, seed=7)
    assert generate_problems(20, seed=7) == a[:20]  # a prefix does not depend on n
    b = generate_problems(50, seed=8)
    assert [p.problem for p in a] != [p.problem for p in b]
    assert len({p.id for p in a + b}) == 100
    assert all(isinstance(p, ArithmeticProblem) and p.source == "arithmetic" for p in a)
    assert generate_problems(0, seed=7) == []


def test_train_and_test_splits_are_disjoint_whatever_the_seeds():
    train = generate_problems(3000, seed=0, split="train")
    test = generate_problems(300, seed=0, split="test") + generate_problems(300, seed=5, split="test")
    assert not {p.problem for p in train} & {p.problem for p in test}
    assert all(in_test_split(p.problem) for p in test) and not any(in_test_split(p.problem) for p in train)
    # Without the split, seeds overlap on a small difficulty (why the split exists).
    a, b = generate_problems(3000, seed=0), generate_problems(3000, seed=1)
    assert {p.problem for p in a} & {p.problem for p in b}
    # The reserved share is TEST_FRACTION of draws.
    assert abs(sum(in_test_split(p.problem) for p in a) / len(a) - TEST_FRACTION) < 0.02
    assert generate_problems(50, seed=0, split="test") == test[:50]
    assert generate_problems(50, seed=0, split="train") == train[:50]
    assert len({p.id for p in train + test + a}) == len(train) + len(test) + len(a)
    with pytest.raises(ValueError, match="split"):
        generate_problems(1, seed=0, split="valid")


def test_problem_is_frozen():
    p = generate_problems(1, seed=0)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.answer = "0"


@pytest.mark.parametrize(
    ("response", "answer", "expected"),
    [
        ("3+4=7\n\\boxed{7}", "7", 1.0),
        ("\\boxed{ 7 }", "7", 1.0),
        ("\\boxed{-12}", "-12", 1.0),
        ("\\boxed{-12}", -12, 1.0),
        ("\\boxed{12}", "-12", 0.0),
        ("3+4=8\n\\boxed{8}", "7", 0.0),
        ("\\boxed{7}\n\\boxed{8}", "7", 0.0),  # the last box counts
        ("\\boxed{8}\n\\boxed{7}", "7", 1.0),
        ("3+4=7", "7", 0.0),  # no box
        ("\\boxed{7", "7", 0.0),  # unclosed box (cut at the length limit)
        ("", "7", 0.0),
        ("\\boxed{7.5}", "7", 0.0),
        ("\\boxed{x}", "7", 0.0),
        ("\\boxed{07}", "7", 1.0),  # the same integer
    ],
)
def test_check(response, answer, expected):
    assert check(response, answer) == expected


def test_check_rejects_a_non_integer_reference():
    with pytest.raises(ValueError, match="not an integer"):
        check("\\boxed{1}", "1/2")


def test_parse_int():
    assert parse_int(" -3 ") == -3 and parse_int("+7") == 7 and parse_int("1 2") is None
    assert parse_int(None) is None and parse_int("3.0") is None and parse_int("") is None


def test_generic_verifier_agrees_with_check():
    problems = generate_problems(20, seed=3, difficulty=DIFFICULTIES[1])
    cases = []
    for i, p in enumerate(problems):
        value = int(p.answer)
        cases += [(p.solution, p.answer), (f"\\boxed{{{value + 1 + i}}}", p.answer), ("no answer", p.answer)]
    for response, answer in cases:
        assert verify_one(response, answer).score == check(response, answer), (response, answer)


def test_every_character_is_in_the_tokenizer_alphabet():
    tok = build_char_tokenizer()
    unk = tok.convert_tokens_to_ids("<|unk|>")
    assert set(task_alphabet()) <= set(DEFAULT_ALPHABET)
    for difficulty in DIFFICULTIES:
        for p in generate_problems(100, seed=4, difficulty=difficulty):
            for text in (user_message(p), p.solution):
                assert set(text) <= set(task_alphabet()), text
                ids = tok(text, add_special_tokens=False)["input_ids"]
                assert unk not in ids
                assert len(ids) == len(text)  # one token per character
                assert tok.decode(ids) == text
            rendered = render_chat(tok, user_message(p)) + p.solution + tok.eos_token
            ids = tok(rendered, add_special_tokens=False)["input_ids"]
            assert tok.decode(ids) == rendered
            assert tok.decode(ids, skip_special_tokens=True) == p.problem + p.solution


def test_user_message_is_the_expression():
    p = generate_problems(1, seed=0)[0]
    assert user_message(p) == p.problem == user_message(p.problem)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(min_operands=1),
        dict(min_operands=3, max_operands=2),
        dict(min_digits=0),
        dict(min_digits=3, max_digits=2),
        dict(ops=()),
        dict(ops=("/",)),
        dict(ops=("+", "+")),
        dict(mul_max_digits=0),
    ],
)
def test_bad_difficulty_is_rejected(kwargs):
    with pytest.raises(ValueError):
        Difficulty(**kwargs)


def test_difficulty_from_dict():
    assert Difficulty.from_dict({"ops": ["+", "*"], "max_operands": 4}) == Difficulty(ops=("+", "*"), max_operands=4)
    with pytest.raises(ValueError, match="unknown"):
        Difficulty.from_dict({"num_ops": 3})
    with pytest.raises(ValueError):
        generate_problems(-1, seed=0)


# --- The two solution styles ----------------------------------------------------------------------------------


def test_shortcut_is_right_exactly_off_the_traps():
    """The shortcut boxes the first step's result: right on two operands, wrong on every trap."""
    problems = arithmetic.generate_problems(2000, seed=5)
    traps = [p for p in problems if arithmetic.is_trap(p)]
    assert 0.3 < len(traps) / len(problems) < 0.6  # a class, not a corner case
    for p in problems:
        shortcut = arithmetic.shortcut_solution(p)
        operands = re.findall(r"\d+", p.problem)
        first_expr = p.problem[: len(operands[0]) + 1 + len(operands[1])]
        first = _python_value(first_expr)  # an independent first step
        assert shortcut == f"{first_expr}={first}\n\\boxed{{{first}}}"
        assert arithmetic.check(shortcut, p.answer) == (0.0 if arithmetic.is_trap(p) else 1.0)
        assert arithmetic.is_trap(p) == (first != _python_value(p.problem))
        assert arithmetic.steps_shown(shortcut) == 1 and arithmetic.steps_shown(p.solution) == len(operands) - 1
        assert arithmetic.stopped_early(shortcut, p) == (len(operands) > 2)
        assert not arithmetic.stopped_early(p.solution, p)
        if len(operands) == 2:
            assert shortcut == p.solution and not arithmetic.is_trap(p)
        else:
            assert len(shortcut) < len(p.solution)  # the shorter way


def test_steps_shown_counts_the_work_before_the_last_box():
    assert arithmetic.steps_shown("1+2=3\n3-4=-1\n\\boxed{-1}") == 2
    assert arithmetic.steps_shown("\\boxed{4}") == 0
    assert arithmetic.steps_shown("1+2=3\n\\boxed{3}\n3-4=-1") == 1  # after the last box: not work shown
    assert arithmetic.steps_shown("no answer at all") == 0


def test_trap_summary_counts_only_the_traps():
    from sharpjax.eval.metrics import ProblemRecord

    two, three = ArithmeticProblem("a", "3-7", "-4", "3-7=-4\n\\boxed{-4}"), arithmetic.generate_problems(50, seed=1)
    trap = next(p for p in three if arithmetic.is_trap(p))
    early, full = arithmetic.shortcut_solution(trap), trap.solution
    wrong = str(arithmetic.shortcut_value(trap))

    def record(pid, answer, responses, correct, answers):
        n = len(correct)
        return ProblemRecord(pid, answer, correct, answers, answers, [1] * n, [True] * n, responses)

    records = [
        record("two", "-4", [two.solution] * 3, [False] * 3, ["-4"] * 3),  # not a trap: left out
        record("trap", trap.answer, [early, early, full], [False, False, True], [wrong, wrong, trap.answer]),
    ]
    out = arithmetic.trap_summary([two, trap], records, (1, 3))
    # One trap: pass@1 = 1/3, its majority answer (2 of 3) is wrong, two of its three responses stop early.
    assert out == pytest.approx({"trap_pass@1": 1 / 3, "trap_pass@3": 1.0, "trap_maj@1": 1 / 3, "trap_maj@3": 0.0,
                                 "shortcut_rate": 2 / 3})
    assert arithmetic.trap_summary([two], records[:1], (1,)) == {}
