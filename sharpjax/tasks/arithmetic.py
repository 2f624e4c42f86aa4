"""A synthetic reasoning task with verifiable answers: multi-step integer arithmetic.

A problem is a chain of 2-4 small integers joined by `+`, `-` and `*` (usual precedence),
e.g. `47+8*3-15`. Its reference solution reduces the expression one binary operation per
line, products first and then left to right, and ends with the boxed value:

    8*3=24
    47+24=71
    71-15=56
    \\boxed{56}

A problem can also be answered by a *shortcut* that stops early: it does the first step and boxes
its result (`shortcut_solution`: "47+8-15" -> `47+8=55\n\\boxed{55}`), a premature answer of the kind
a model gives when it ends its reasoning too soon. The base model is trained on both styles
(`sharpjax.sft.SFTConfig.task.shortcut_fraction`), so it has what the paper's theory speaks about: two
ways to solve a problem that differ in length and accuracy (on a problem of three or more
operands the shortcut is ~10 tokens shorter and wrong unless the rest of the steps happen to
cancel, `is_trap`: about half of the problems at the default difficulty; on two operands the
two styles are the same text), the shorter one likelier per response (fewer steps to get right,
fewer tokens); and a class of problems (the traps) on which, when stopping early is the base
model's more frequent choice, its most frequent answer is wrong. `stopped_early` tells the
two apart in a response.

Every character is in the char tokenizer's default alphabet
(`sharpjax.models.tokenizer.DEFAULT_ALPHABET`), and a prompt plus solution is a few dozen
characters, so a tiny model trained on CPU (`sharpjax.sft`) learns the format and
some of the arithmetic, and RL rollouts stay cheap. `check` is an exact integer comparison;
the generic math verifier (`sharpjax.rewards.verify`) agrees with it on these answers.

A fixed ~10% of all expressions (by hash) is reserved for evaluation: train on
`generate_problems(..., split="train")` and evaluate on `split="test"` and no test problem
was ever a training problem, whatever the seeds (small difficulties have small problem
spaces, so different seeds alone overlap).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from typing import Literal

from sharpjax.rewards.math import VerifyReason, VerifyResult, extract_boxed
from sharpjax.sample_metrics import summarize

__all__ = [
    "SOURCE",
    "TEST_FRACTION",
    "ArithmeticProblem",
    "Difficulty",
    "Op",
    "Split",
    "check",
    "evaluate_steps",
    "generate_problems",
    "build_task",
    "difficulty_for",
    "in_test_split",
    "is_trap",
    "shortcut_solution",
    "shortcut_value",
    "steps_shown",
    "stopped_early",
    "render",
    "parse_int",
    "task_alphabet",
    "trap_summary",
    "user_message",
    "verify",
]

Op = Literal["+", "-", "*"]
_OPS: tuple[str, ...] = ("+", "-", "*")
Split = Literal["all", "train", "test"]
_SPLITS: tuple[str, ...] = ("all", "train", "test")
# The share of all expressions reserved for evaluation (see `in_test_split`).
TEST_FRACTION = 0.1
SOURCE = "arithmetic"
_INT_RE = re.compile(r"[+-]?\d+")


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """The distribution problems are drawn from.

    Attributes:
      min_operands, max_operands: the number of integers in the expression (>= 2), drawn
        uniformly from this range; the solution has (operands - 1) steps.
      min_digits, max_digits: each operand's digit count is drawn uniformly from this range,
        then the operand uniformly among numbers with that many digits (0-9 for 1 digit).
      ops: the operators drawn (uniformly) between consecutive operands.
      mul_max_digits: an operand next to a `*` has at most this many digits, which keeps
        products (and the sequence length) small.
    """

    min_operands: int = 2
    max_operands: int = 3
    min_digits: int = 1
    max_digits: int = 2
    ops: tuple[Op, ...] = ("+", "-")
    mul_max_digits: int = 1

    def __post_init__(self):
        if not 2 <= self.min_operands <= self.max_operands:
            raise ValueError(
                f"need 2 <= min_operands <= max_operands, got {self.min_operands} and {self.max_operands}."
            )
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(f"need 1 <= min_digits <= max_digits, got {self.min_digits} and {self.max_digits}.")
        if not self.ops or any(op not in _OPS for op in self.ops):
            raise ValueError(f"ops={self.ops!r}: need a non-empty tuple drawn from {_OPS}.")
        if len(set(self.ops)) != len(self.ops):
            raise ValueError(f"ops={self.ops!r} repeats an operator.")
        if self.mul_max_digits < 1:
            raise ValueError(f"mul_max_digits={self.mul_max_digits} must be >= 1.")

    @classmethod
    def from_dict(cls, d) -> Difficulty:
        """From a mapping (e.g. an ml-collections ConfigDict); lists become tuples."""
        d = dict(d)
        if "ops" in d:
            d["ops"] = tuple(d["ops"])
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown Difficulty fields {sorted(unknown)}.")
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class ArithmeticProblem:
    """One problem, shaped like `sharpjax.data.Problem`.

    Attributes:
      id: unique and stable for a (seed, index): "arithmetic/<seed>/<index>".
      problem: the expression, e.g. "47+8*3-15".
      answer: the bare reference answer (its integer value as a string), e.g. "56".
      solution: the step-by-step reference solution ending with `\\boxed{answer}`.
      source: "arithmetic".
    """

    id: str
    problem: str
    answer: str
    solution: str
    source: str = SOURCE


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operator {op!r}.")


def evaluate_steps(operands: list[int], ops: list[str]) -> list[tuple[int, str, int, int]]:
    """The reduction order of the solution: products first (left to right), then the
    remaining `+`/`-` left to right, one binary operation per step.

    Returns:
      [(left, op, right, result)] per step; the last result is the expression's value.
    """
    if len(operands) != len(ops) + 1:
        raise ValueError(f"{len(operands)} operands need {len(operands) - 1} operators, got {len(ops)}.")
    vals, ops = list(operands), list(ops)
    steps = []
    while "*" in ops:
        i = ops.index("*")
        res = vals[i] * vals[i + 1]
        steps.append((vals[i], "*", vals[i + 1], res))
        vals[i : i + 2] = [res]
        del ops[i]
    acc = vals[0]
    for op, v in zip(ops, vals[1:]):
        res = _apply(acc, op, v)
        steps.append((acc, op, v, res))
        acc = res
    return steps


def _draw_operand(rng: random.Random, lo_digits: int, hi_digits: int) -> int:
    d = rng.randint(lo_digits, hi_digits)
    lo = 0 if d == 1 else 10 ** (d - 1)
    return rng.randint(lo, 10**d - 1)


def _make_problem(rng: random.Random, difficulty: Difficulty, pid: str) -> ArithmeticProblem:
    n = rng.randint(difficulty.min_operands, difficulty.max_operands)
    ops = [rng.choice(difficulty.ops) for _ in range(n - 1)]
    operands = []
    for i in range(n):
        next_to_mul = (i > 0 and ops[i - 1] == "*") or (i < n - 1 and ops[i] == "*")
        hi = min(difficulty.max_digits, difficulty.mul_max_digits) if next_to_mul else difficulty.max_digits
        lo = min(difficulty.min_digits, hi)
        operands.append(_draw_operand(rng, lo, hi))
    expr = str(operands[0]) + "".join(op + str(v) for op, v in zip(ops, operands[1:]))
    steps = evaluate_steps(operands, ops)
    answer = steps[-1][3]
    lines = [f"{a}{op}{b}={r}" for a, op, b, r in steps]
    solution = "\n".join(lines + [f"\\boxed{{{answer}}}"])
    return ArithmeticProblem(id=pid, problem=expr, answer=str(answer), solution=solution)


def shortcut_value(problem: ArithmeticProblem) -> int:
    """The shortcut's answer: the result of the stepwise solution's first step."""
    first_step = problem.solution.split("\n", 1)[0]
    return int(first_step.rsplit("=", 1)[1])


def shortcut_solution(problem: ArithmeticProblem) -> str:
    """The shortcut style: the stepwise solution's first step, then its result boxed as the answer.

    The same text as `problem.solution` on a two-operand problem; wrong on every trap (`is_trap`).
    """
    first_step = problem.solution.split("\n", 1)[0]
    return f"{first_step}\n\\boxed{{{shortcut_value(problem)}}}"


def is_trap(problem: ArithmeticProblem) -> bool:
    """A problem the shortcut gets wrong: its first step's result is not its value."""
    return shortcut_value(problem) != int(problem.answer)


def steps_shown(response: str) -> int:
    """How many step lines (lines with an `=`) come before the response's last `\\boxed`."""
    head = response.rsplit("\\boxed", 1)[0]
    return sum("=" in line for line in head.split("\n"))


def stopped_early(response: str, problem: ArithmeticProblem) -> bool:
    """Whether a response boxes an answer after fewer steps than the problem's solution has."""
    return steps_shown(response) < problem.solution.count("=")


def trap_summary(problems, records, ks) -> dict[str, float]:
    """The testbed's mechanism in an evaluation: pass@k and maj@k on the trap problems alone
    (`sharpjax.sample_metrics.summarize`, keys prefixed "trap_") and "shortcut_rate", the share of
    their responses that stop early. Empty when no problem is a trap.

    Args:
      problems: the evaluated `ArithmeticProblem`s.
      records: their `ProblemRecord`s, in the same order, with responses kept.
      ks: the k of pass@k and maj@k.
    """
    traps = [(p, r) for p, r in zip(problems, records, strict=True) if is_trap(p)]
    if not traps:
        return {}
    summary = summarize([r for _, r in traps], ks)
    out = {f"trap_{k}": float(v) for k, v in summary.items() if k.startswith(("pass@", "maj@"))}
    out["shortcut_rate"] = sum(stopped_early(text, p) for p, r in traps for text in r.responses) / sum(
        len(r.responses) for _, r in traps)
    return out


def in_test_split(expression: str) -> bool:
    """Whether an expression belongs to the reserved test split (a fixed ~10% of all
    expressions, chosen by a hash of the text: the same for every seed and difficulty)."""
    digest = hashlib.sha256(expression.encode()).digest()
    return int.from_bytes(digest[:8], "big") < TEST_FRACTION * 2**64


def generate_problems(
    n: int, *, seed: int, difficulty: Difficulty = Difficulty(), split: Split = "all"
) -> list[ArithmeticProblem]:
    """`n` distinct-by-draw problems from `difficulty`; the same arguments give the same list.

    Problem i does not depend on n (a longer list extends a shorter one). The problem space
    of small difficulties is small (2 operands of 1-2 digits: 20,000 expressions), so two
    seeds overlap heavily; `split` keeps evaluation honest: a model trained on
    `split="train"` problems has never seen a `split="test"` problem, whatever the seeds.

    Args:
      n: how many problems (>= 0).
      seed: the random seed.
      difficulty: the distribution.
      split: "all" (every draw), "train" (draws outside the reserved test split) or "test"
        (only draws inside it; `TEST_FRACTION` of the space).

    Returns:
      A list of `ArithmeticProblem`s with ids "arithmetic/<seed>/<i>" ("all") or
      "arithmetic/<split>/<seed>/<i>".
    """
    if n < 0:
        raise ValueError(f"n={n} must be >= 0.")
    if split not in _SPLITS:
        raise ValueError(f"split={split!r}; expected one of {_SPLITS}.")
    if split == "all":
        rng = random.Random(f"{SOURCE}/{seed}")
        return [_make_problem(rng, difficulty, f"{SOURCE}/{seed}/{i}") for i in range(n)]
    rng = random.Random(f"{SOURCE}/{split}/{seed}")
    want_test = split == "test"
    out: list[ArithmeticProblem] = []
    max_draws = 100 * n + 10_000
    for _ in range(max_draws):
        if len(out) == n:
            break
        p = _make_problem(rng, difficulty, f"{SOURCE}/{split}/{seed}/{len(out)}")
        if in_test_split(p.problem) == want_test:
            out.append(p)
    if len(out) < n:
        raise ValueError(f"found only {len(out)} of {n} {split!r} problems in {max_draws} draws from {difficulty}.")
    return out


def user_message(problem: ArithmeticProblem | str) -> str:
    """The user message for a problem: the bare expression, e.g. "47+8*3-15".

    Render it with the chat template (`sharpjax.models.tokenizer.render_chat`). It is short
    on purpose: with a char tokenizer every character is a token of compute in training and
    in every RL rollout, and the task has a single instruction.
    """
    return problem if isinstance(problem, str) else problem.problem


def parse_int(text: str | None) -> int | None:
    """An integer written plainly ("56", "-3", "+7", " 12 "), else None."""
    if text is None:
        return None
    text = text.strip()
    return int(text) if _INT_RE.fullmatch(text) else None


def check(response: str, answer: str | int) -> float:
    """The task reward: 1.0 if the last complete `\\boxed{...}` of `response` holds exactly
    the integer `answer`, else 0.0 (no box, a non-integer, or a different value).

    Args:
      response: the model's response text.
      answer: the reference answer (an `ArithmeticProblem.answer` or an int).
    """
    ref = answer if isinstance(answer, int) else parse_int(str(answer))
    if ref is None:
        raise ValueError(f"reference answer {answer!r} is not an integer.")
    got = parse_int(extract_boxed(response))
    return 1.0 if got is not None and got == ref else 0.0


def task_alphabet() -> str:
    """Every character a prompt or solution of this task can contain."""
    return "".join(sorted(set("0123456789" + "".join(_OPS) + "=\n\\boxed{}")))


# ----------------------------------------------------------------------------- the Task


def verify(responses: list[str], answers: list[str]) -> list[VerifyResult]:
    """`check` per response, as `VerifyResult`s; the canonical answer (for maj@k) is the boxed integer."""
    out = []
    for response, answer in zip(responses, answers, strict=True):
        extracted = extract_boxed(response)
        value = parse_int(extracted)
        score = check(response, answer)
        if extracted is None:
            reason = VerifyReason.NO_ANSWER
        elif value is None:
            reason = VerifyReason.PARSE_ERROR
        else:
            reason = VerifyReason.CORRECT if score else VerifyReason.MISMATCH
        out.append(VerifyResult(score, reason, extracted, None if value is None else str(value)))
    return out


def render(tokenizer, problem: ArithmeticProblem | str) -> str:
    """The prompt the model sees: `user_message` as one chat turn, generation prompt on."""
    from sharpjax.models.tokenizer import render_chat

    return render_chat(tokenizer, user_message(problem))


def difficulty_for(name: str, model_dir: str) -> Difficulty:
    """"auto": the difficulty the base model was trained on (its sft_info.json), else the default."""
    import os

    if name == "default":
        return Difficulty()
    if name == "auto":
        from sharpjax.errors import ModelFileError
        from sharpjax.models.hf import read_json_object

        info_path = os.path.join(model_dir, "sft_info.json")
        if os.path.exists(info_path):
            recorded = read_json_object(info_path, "sft_info.json").get("config")
            # SFTConfig's sections put it at config.task.difficulty; a model trained before they
            # existed recorded the flat config.difficulty (its weights are as good).
            task = recorded.get("task", recorded) if isinstance(recorded, dict) else None
            if not isinstance(task, dict) or not isinstance(task.get("difficulty"), dict):
                raise ModelFileError(f"{info_path} has no config.task.difficulty object: the file is corrupt; "
                                     "re-copy it, or set config.data.difficulty='default'.")
            return Difficulty.from_dict(task["difficulty"])
        return Difficulty()
    from sharpjax.errors import ConfigError

    raise ConfigError(f"config.data.difficulty={name!r} must be 'auto' (from the base model's sft_info.json) or 'default'.")


def build_task(config, tokenizer):
    """The arithmetic `Task` of a `RunConfig`: generated train and held-out problems, exact checking."""
    import functools

    from sharpjax.tasks.base import Task

    data = config.data
    difficulty = difficulty_for(data.difficulty, config.model_dir)
    train = generate_problems(data.num_train_problems, seed=config.train.seed, difficulty=difficulty, split="train")
    # A disjoint seed stream for held-out problems.
    held_out = generate_problems(
        data.num_validation_problems, seed=config.train.seed + 10_000, difficulty=difficulty, split="test"
    )
    return Task(
        name="arithmetic",
        train=train,
        validation={"arithmetic": held_out} if data.validation else {},
        render=functools.partial(render, tokenizer),
        verify=verify,
    )
