"""pass@k and maj@k against brute-force enumeration of every k-subset of the samples."""

import collections
import itertools
import json
import math
import time
from fractions import Fraction

import numpy as np
import pytest

from sharpjax.eval.metrics import (
    ProblemRecord,
    maj_at_k,
    pass_at_k,
    results_to_json,
    results_to_markdown,
    summarize,
)


def brute_pass(correct, k):
    subsets = list(itertools.combinations(range(len(correct)), k))
    return Fraction(sum(any(correct[i] for i in s) for s in subsets), len(subsets))


def brute_maj(answers, correct, k, merge=True):
    """The definition, enumerated: plurality over each k-subset, ties split evenly."""
    right = {a for a, c in zip(answers, correct) if c and a is not None}
    key = lambda a: ("RIGHT" if merge and a in right else a)  # noqa: E731
    good = {key(a) for a in right}
    total = Fraction(0)
    subsets = list(itertools.combinations(range(len(answers)), k))
    for s in subsets:
        votes = collections.Counter(key(answers[i]) for i in s if answers[i] is not None)
        if votes:
            top = max(votes.values())
            tied = [a for a, v in votes.items() if v == top]
            total += Fraction(sum(a in good for a in tied), len(tied))
    return total / len(subsets)


class TestPassAtK:
    @pytest.mark.parametrize("seed", range(30))
    def test_matches_enumeration(self, seed):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(1, 11))
        correct = list(rng.random(n) < rng.random())
        for k in range(1, n + 1):
            assert pass_at_k(n, sum(correct), k) == pytest.approx(float(brute_pass(correct, k)), abs=1e-12)

    def test_closed_form_large_n(self):
        # The product form stays exact where C(n, k) overflows a float.
        n, c, k = 2000, 3, 500
        expected = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(expected), rel=1e-12)

    def test_edges(self):
        assert pass_at_k(16, 0, 1) == 0.0
        assert pass_at_k(16, 0, 16) == 0.0
        assert pass_at_k(16, 16, 1) == 1.0
        assert pass_at_k(16, 1, 16) == 1.0  # k = n: any correct sample is in the subset.
        assert pass_at_k(16, 4, 1) == 0.25  # pass@1 = c / n
        assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6

    @pytest.mark.parametrize("n,c,k", [(0, 0, 1), (4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
    def test_invalid(self, n, c, k):
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


class TestMajAtK:
    @pytest.mark.parametrize("seed", range(40))
    @pytest.mark.parametrize("merge", [True, False])
    def test_matches_enumeration(self, seed, merge):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(1, 10))
        alphabet = ["a", "b", "c", "d", None][: int(rng.integers(1, 6))]
        answers = [alphabet[i] for i in rng.integers(0, len(alphabet), n)]
        if seed % 2:  # Correctness a function of the answer, as from a verifier.
            right = set(rng.choice(["a", "b", "c"], size=int(rng.integers(0, 3)), replace=False))
            correct = [a in right for a in answers]
        else:  # Arbitrary (e.g. one copy of an answer timed out): any correct copy counts.
            correct = [bool(x) and a is not None for x, a in zip(rng.random(n) < 0.5, answers)]
        for k in range(1, n + 1):
            got = maj_at_k(answers, correct, k, merge_correct=merge)
            assert got == pytest.approx(float(brute_maj(answers, correct, k, merge)), abs=1e-12), (answers, correct, k)

    def test_ties_split_evenly(self):
        assert maj_at_k(["a", "b"], [True, False], 2) == pytest.approx(0.5)
        assert maj_at_k(["a", "b", "c"], [True, False, False], 3) == pytest.approx(1 / 3)
        # k=2 subsets of aabb: aa (1), bb (0), four ab ties (1/2 each) -> 3/6.
        assert maj_at_k(["a", "a", "b", "b"], [True, True, False, False], 2) == pytest.approx(0.5)
        assert maj_at_k(["a", "a", "b"], [True, True, False], 3) == 1.0
        assert maj_at_k(["a", "b", "b"], [True, False, False], 3) == 0.0

    def test_none_never_wins(self):
        assert maj_at_k([None, None, None], [False] * 3, 3) == 0.0
        # One answer among abstainers wins whenever it is drawn.
        assert maj_at_k(["a", None, None], [True, False, False], 1) == pytest.approx(1 / 3)
        assert maj_at_k(["a", None, None], [True, False, False], 2) == pytest.approx(2 / 3)
        assert maj_at_k(["a", None, None], [True, False, False], 3) == 1.0
        assert maj_at_k(["b", None, "b", None], [False] * 4, 4) == 0.0

    def test_merge_correct(self):
        answers, correct = ["1/2", "0.5", "3", "3"], [True, True, False, False]
        assert maj_at_k(answers, correct, 4) == pytest.approx(0.5)  # {1/2, 0.5} ties "3"
        assert maj_at_k(answers, correct, 4, merge_correct=False) == 0.0  # "3" wins 2 to 1

    def test_edges(self):
        assert maj_at_k(["a"] * 5, [True] * 5, 5) == 1.0
        assert maj_at_k(["a"] * 5, [False] * 5, 3) == 0.0
        # maj@1 = fraction of correct samples; k = n is the plain vote.
        answers, correct = ["a", "b", "a", "c", None, "a"], [True, False, True, False, False, True]
        assert maj_at_k(answers, correct, 1) == pytest.approx(0.5)
        assert maj_at_k(answers, correct, 6) == 1.0
        with pytest.raises(ValueError):
            maj_at_k(["a", "b"], [True], 1)
        with pytest.raises(ValueError):
            maj_at_k(["a", "b"], [True, False], 3)

    def test_monte_carlo(self):
        rng = np.random.default_rng(7)
        answers = [str(x) for x in rng.integers(0, 4, 16)]
        correct = [a == "1" for a in answers]
        exact = maj_at_k(answers, correct, 4)
        mc = maj_at_k(answers, correct, 4, num_draws=4000, seed=3)
        assert mc == maj_at_k(answers, correct, 4, num_draws=4000, seed=3)  # seeded
        assert mc != maj_at_k(answers, correct, 4, num_draws=4000, seed=4)
        assert mc == pytest.approx(exact, abs=0.03)  # std of the mean < 0.008
        assert exact == pytest.approx(float(brute_maj(answers, correct, 4)), abs=1e-12)

    def test_exact_is_fast_for_large_n(self):
        rng = np.random.default_rng(0)
        answers = [str(x) if x < 12 else None for x in rng.integers(0, 14, 64)]
        correct = [a == "3" for a in answers]
        start = time.perf_counter()
        exact = maj_at_k(answers, correct, 16)
        assert time.perf_counter() - start < 5.0
        assert exact == pytest.approx(maj_at_k(answers, correct, 16, num_draws=3000, seed=0), abs=0.04)


def _record(pid, correct, answers, lengths=None, finished=None):
    n = len(correct)
    return ProblemRecord(
        id=pid,
        reference="x",
        correct=correct,
        answers=answers,
        extracted=answers,
        lengths=lengths or [10] * n,
        finished=finished or [True] * n,
    )


class TestSummarize:
    def test_values(self):
        records = [
            _record("p0", [True, False, False, False], ["1", "2", "2", None], [4, 6, 8, 10], [True, True, False, True]),
            _record("p1", [True, True, True, False], ["5", "5", "5", "4"], [2, 2, 2, 2]),
        ]
        s = summarize(records, ks=(1, 2, 4, 8))
        assert s["num_problems"] == 2 and s["num_samples"] == 4
        assert "pass@8" not in s and "maj@8" not in s  # k > n is left out
        for k in (1, 2, 4):
            want = (brute_pass(records[0].correct, k) + brute_pass(records[1].correct, k)) / 2
            assert s[f"pass@{k}"] == pytest.approx(float(want))
            want = sum(brute_maj(r.answers, r.correct, k) for r in records) / 2
            assert s[f"maj@{k}"] == pytest.approx(float(want))
        assert s["pass@1"] == pytest.approx((0.25 + 0.75) / 2)
        assert s["mean@1"] == pytest.approx(0.5)
        assert s["mean_length"] == pytest.approx((7 + 2) / 2)
        assert s["no_answer_rate"] == pytest.approx((0.25 + 0) / 2)
        assert s["truncated_rate"] == pytest.approx((0.25 + 0) / 2)
        # Records read back from JSON give the same summary.
        assert summarize([json.loads(json.dumps(r.to_dict())) for r in records], ks=(1, 2, 4, 8)) == s

    def test_record_validation(self):
        with pytest.raises(ValueError, match="lengths"):
            _record("p", [True, False], ["1", "2"], lengths=[1])
        with pytest.raises(ValueError):
            summarize([])


def test_json_and_markdown(tmp_path):
    table = {
        "math500": summarize([_record("a", [True, False], ["1", "2"]), _record("b", [False, False], [None, "3"])]),
        "aime24": summarize([_record("c", [True] * 4, ["7"] * 4)]),
    }
    path = tmp_path / "r.json"
    text = results_to_json(table, str(path), model="m")
    assert json.loads(path.read_text()) == json.loads(text)
    assert json.loads(text)["results"]["aime24"]["pass@4"] == 1.0 and json.loads(text)["model"] == "m"
    md = results_to_markdown(table).splitlines()
    header = [c.strip() for c in md[0].strip("|").split("|")]
    assert header[:5] == ["benchmark", "problems", "n", "pass@1", "pass@2"]
    row = dict(zip(header, [c.strip() for c in md[2].strip("|").split("|")]))
    assert row["benchmark"] == "math500" and row["pass@1"] == "25.0" and row["no answer %"] == "25.0"
    assert row["pass@4"] == ""  # math500 has n = 2
    assert len(md) == 4
