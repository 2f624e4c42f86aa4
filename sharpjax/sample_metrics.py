"""Evaluation metrics over n sampled responses per problem: pass@k, maj@k, summaries.

* `pass_at_k(n, c, k)`: the unbiased estimator of Chen et al. (2021), "Evaluating Large
  Language Models Trained on Code" (arXiv 2107.03374): 1 - C(n-c, k) / C(n, k), the
  probability that a uniformly random k-subset of the n samples holds a correct one.
* `maj_at_k(answers, correct, k)`: the probability that the plurality answer of a uniformly
  random k-subset is correct, computed exactly (a counting recursion, for any n and k) or,
  like the paper, by Monte Carlo over draws of k of the n samples.
* `summarize(records)`: both, for k in (1, 2, 4, 8, 16) up to n, plus mean accuracy, mean
  response length and the no-answer / truncation rates, averaged over problems.
* `results_to_json` / `results_to_markdown`: a table {benchmark: summary}.

Everything here is host-side Python and numpy: nothing crosses a jit boundary.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_KS",
    "ProblemRecord",
    "maj_at_k",
    "pass_at_k",
    "results_to_json",
    "results_to_markdown",
    "summarize",
]

DEFAULT_KS = (1, 2, 4, 8, 16)


def _check_nk(n: int, k: int) -> None:
    if n < 1:
        raise ValueError(f"num_samples={n} must be >= 1.")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, num_samples={n}].")


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021).

    pass@k = 1 - C(n-c, k) / C(n, k), evaluated as the numerically stable product
    1 - prod_{i=n-c+1}^{n} (1 - k / i), which never forms the (huge) binomials.

    Args:
      num_samples: n, samples drawn for the problem (>= 1).
      num_correct: c, how many of them are correct (0 <= c <= n).
      k: subset size (1 <= k <= n).

    Returns:
      The probability, in [0, 1], that a uniformly random k-subset holds a correct sample.
      pass@1 = c / n.
    """
    n, c = int(num_samples), int(num_correct)
    _check_nk(n, k)
    if not 0 <= c <= n:
        raise ValueError(f"num_correct={c} must be in [0, num_samples={n}].")
    if n - c < k:  # Every k-subset holds a correct sample.
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


# The vote key of every correct sample when `merge_correct` (cannot collide with a string).
_CORRECT = object()


def _vote_keys(answers: Sequence[str | None], correct: Sequence[bool], merge_correct: bool) -> list:
    """Per-sample vote key (None: abstains) and, implicitly, which keys are correct.

    A key is correct when any sample carrying it is correct: a correct answer that timed out
    in one copy is still the same answer. With `merge_correct`, every answer equivalent to
    the reference is one key (equivalence to the reference is transitive, so `1/2` and `0.5`
    vote together when both verify), which string equality of canonical forms cannot see.
    """
    correct_answers = {a for a, c in zip(answers, correct) if c and a is not None}
    keys = []
    for a in answers:
        if a is None:
            keys.append(None)
        elif merge_correct and a in correct_answers:
            keys.append(_CORRECT)
        else:
            keys.append(a)
    return keys


def _groups(answers, correct, merge_correct) -> tuple[list[tuple[int, bool]], int]:
    """[(count, is_correct)] per vote key, and the number of abstaining (None) samples."""
    keys = _vote_keys(answers, correct, merge_correct)
    counts = collections.Counter(k for k in keys if k is not None)
    correct_keys = {key for key, c in zip(keys, correct) if c and key is not None}
    groups = [(cnt, key in correct_keys) for key, cnt in counts.items()]
    return groups, keys.count(None)


def _prob_group_wins(size: int, others: Sequence[int], abstain: int, k: int) -> Fraction:
    """P(a group of `size` samples is the vote winner of a uniform k-subset), ties split evenly.

    For each count x >= 1 the group gets in the subset, counts the subsets where every other
    group gets at most x, tracking how many (t) get exactly x: the group then wins with
    probability 1 / (1 + t) (uniform tie-breaking). Abstainers take any number of draws.
    """
    n = size + sum(others) + abstain
    total = Fraction(0)
    for x in range(1, min(size, k) + 1):
        rest = k - x
        # ways[s][t]: ways to draw s samples from the groups seen so far, t of them at x.
        ways = [[0] * (len(others) + 1) for _ in range(rest + 1)]
        ways[0][0] = 1
        for g in others:
            new = [[0] * (len(others) + 1) for _ in range(rest + 1)]
            for s in range(rest + 1):
                for t, w in enumerate(ways[s]):
                    if w:
                        for y in range(min(g, x, rest - s) + 1):
                            new[s + y][t + (y == x)] += w * math.comb(g, y)
            ways = new
        win = Fraction(0)
        for s in range(rest + 1):
            fill = math.comb(abstain, rest - s)  # The remaining draws all abstain.
            if fill:
                win += sum(Fraction(w * fill, 1 + t) for t, w in enumerate(ways[s]) if w)
        total += math.comb(size, x) * win
    return total / math.comb(n, k)


def maj_at_k(
    answers: Sequence[str | None],
    correct: Sequence[bool],
    k: int,
    *,
    merge_correct: bool = True,
    num_draws: int | None = None,
    seed: int = 0,
) -> float:
    """Expected correctness of the plurality vote over a uniformly random k-subset of samples.

    Samples vote with their answer (the verifier's canonical form); samples with no answer
    (None) abstain and so never win; the answer held by the most samples in the subset wins,
    a tie is broken uniformly at random (its expectation: the fraction of tied answers that
    are correct), and a subset where every sample abstains scores 0. An answer is correct
    when any sample carrying it verified as correct.

    Args:
      answers: The n samples' vote answers (None: no extractable answer).
      correct: The n samples' verification results.
      k: Subset size (1 <= k <= n). maj@1 = (correct samples with an answer) / n.
      merge_correct: Count all answers that verify against the reference as one vote (they
        are equivalent to each other through the reference, even when written differently).
        False: answers vote by string equality only.
      num_draws: None (default): the exact expectation over all C(n, k) subsets, by a
        counting recursion (polynomial in n and k, exact rational arithmetic). An int: Monte
        Carlo over that many draws of k samples without replacement, as the paper does (1000
        draws of k of the 16); ties still count their expectation.
      seed: Seed of the Monte Carlo draws (numpy `default_rng`); unused when exact.

    Returns:
      maj@k in [0, 1].
    """
    n = len(answers)
    if len(correct) != n:
        raise ValueError(f"answers ({n}) and correct ({len(correct)}) differ in length.")
    _check_nk(n, k)
    correct = [bool(c) for c in correct]
    if num_draws is None:
        groups, abstain = _groups(answers, correct, merge_correct)
        total = Fraction(0)
        memo: dict[tuple, Fraction] = {}
        for j, (size, is_correct) in enumerate(groups):
            if not is_correct:
                continue
            others = tuple(sorted(g for i, (g, _) in enumerate(groups) if i != j))
            if (size, others) not in memo:
                memo[size, others] = _prob_group_wins(size, others, abstain, k)
            total += memo[size, others]
        return float(total)
    if num_draws < 1:
        raise ValueError(f"num_draws={num_draws} must be >= 1 (or None for the exact value).")
    keys = _vote_keys(answers, correct, merge_correct)
    correct_keys = {key for key, c in zip(keys, correct) if c and key is not None}
    rng = np.random.default_rng(seed)
    score = 0.0
    for _ in range(num_draws):
        subset = rng.choice(n, size=k, replace=False)
        score += _vote_score([keys[i] for i in subset], correct_keys)
    return score / num_draws


def _vote_score(keys: Sequence, correct_keys: set) -> float:
    """Expected correctness of one vote among `keys` (None abstains, ties split evenly)."""
    counts = collections.Counter(key for key in keys if key is not None)
    if not counts:
        return 0.0
    top = max(counts.values())
    tied = [key for key, cnt in counts.items() if cnt == top]
    return sum(key in correct_keys for key in tied) / len(tied)


@dataclasses.dataclass
class ProblemRecord:
    """Everything evaluated for one problem's n samples.

    Attributes:
      id: The problem id.
      reference: The reference answer.
      correct: Per sample, whether it verified against the reference.
      answers: Per sample, the vote answer (the verifier's canonical form; None: no answer).
      extracted: Per sample, the answer as written in the response (None: no answer).
      lengths: Per sample, the response length in tokens (the stop token included).
      finished: Per sample, True if a stop token ended it, False if cut at the length limit.
      responses: Per sample, the response text (None when not kept).
    """

    id: str
    reference: str
    correct: list[bool]
    answers: list[str | None]
    extracted: list[str | None]
    lengths: list[int]
    finished: list[bool]
    responses: list[str] | None = None

    def __post_init__(self):
        n = len(self.correct)
        fields = ["answers", "extracted", "lengths", "finished"] + (["responses"] if self.responses is not None else [])
        for name in fields:
            if len(getattr(self, name)) != n:
                raise ValueError(f"record {self.id!r}: {name} has {len(getattr(self, name))} entries, correct has {n}.")

    @property
    def num_samples(self) -> int:
        return len(self.correct)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (`ProblemRecord(**d)` inverts it)."""
        return dataclasses.asdict(self)


def _field(record: ProblemRecord | Mapping[str, Any], name: str):
    return record[name] if isinstance(record, Mapping) else getattr(record, name)


def summarize(
    records: Sequence[ProblemRecord | Mapping[str, Any]],
    ks: Sequence[int] = DEFAULT_KS,
    *,
    merge_correct: bool = True,
    maj_num_draws: int | None = None,
    seed: int = 0,
) -> dict[str, float | int]:
    """Benchmark-level metrics: per-problem metrics averaged over problems.

    Args:
      records: One `ProblemRecord` (or its `to_dict()`) per problem.
      ks: The k of pass@k and maj@k; those above the smallest per-problem n are left out.
      merge_correct, maj_num_draws, seed: passed to `maj_at_k` (seed offset by the problem
        index, so Monte Carlo draws differ between problems but not between runs).

    Returns:
      {"num_problems", "num_samples" (the smallest per-problem n), "pass@k" and "maj@k" for
      each kept k, "mean@1" (mean per-problem accuracy, which equals pass@1 when every
      problem has the same n), "mean_length" (tokens per response), "no_answer_rate"
      (fraction of responses with no extractable answer), "truncated_rate" (fraction cut
      at the length limit)}; sample-level rates are averaged over problems, then problems.
    """
    if not records:
        raise ValueError("no records to summarize.")
    n_min = min(len(_field(r, "correct")) for r in records)
    if n_min < 1:
        raise ValueError("a record has no samples.")
    ks = [k for k in ks if 1 <= k <= n_min]
    out: dict[str, float | int] = {"num_problems": len(records), "num_samples": n_min}
    per: dict[str, list[float]] = collections.defaultdict(list)
    for i, r in enumerate(records):
        correct = [bool(c) for c in _field(r, "correct")]
        answers = list(_field(r, "answers"))
        n, c = len(correct), sum(correct)
        for k in ks:
            per[f"pass@{k}"].append(pass_at_k(n, c, k))
        for k in ks:
            per[f"maj@{k}"].append(
                maj_at_k(answers, correct, k, merge_correct=merge_correct, num_draws=maj_num_draws, seed=seed + i)
            )
        per["mean@1"].append(c / n)
        per["mean_length"].append(float(np.mean(_field(r, "lengths"))))
        per["no_answer_rate"].append(sum(a is None for a in answers) / n)
        per["truncated_rate"].append(1.0 - float(np.mean(np.asarray(_field(r, "finished"), bool))))
    out.update({name: float(np.mean(values)) for name, values in per.items()})
    return out


def results_to_json(table: Mapping[str, Mapping[str, Any]], path: str | None = None, **extra: Any) -> str:
    """The table {benchmark: summary} (plus any `extra` top-level fields) as indented JSON.

    Writes it to `path` too when given.
    """
    text = json.dumps({**extra, "results": {name: dict(s) for name, s in table.items()}}, indent=2, sort_keys=False)
    if path is not None:
        with open(path, "w") as f:
            f.write(text + "\n")
    return text


def _metric_order(name: str) -> tuple:
    head, _, k = name.partition("@")
    rank = {"pass": 0, "maj": 1, "mean": 2}.get(head, 3)
    return (rank, int(k) if k.isdigit() else 0, name)


def results_to_markdown(table: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table: one row per benchmark; accuracies and rates in percent.

    Columns: benchmark, problems, n, then pass@k, maj@k, mean@1 (%), mean length (tokens),
    no-answer and truncated rates (%), for the metrics any benchmark reports.
    """
    metrics = sorted(
        {m for s in table.values() for m in s if "@" in m},
        key=_metric_order,
    )
    header = ["benchmark", "problems", "n", *metrics, "length", "no answer %", "truncated %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]

    def pct(v):
        return "" if v is None else f"{100 * v:.1f}"

    for name, s in table.items():
        row = [name, str(s.get("num_problems", "")), str(s.get("num_samples", ""))]
        row += [pct(s.get(m)) for m in metrics]
        length = s.get("mean_length")
        row += ["" if length is None else f"{length:.1f}", pct(s.get("no_answer_rate")), pct(s.get("truncated_rate"))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
