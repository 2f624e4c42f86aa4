"""The diagnosis's measurements against independent computations on hand-made samples."""

import numpy as np
import pytest

from sharpjax.diagnose import metrics
from sharpjax.eval.metrics import ProblemRecord
from tests.eval.test_metrics import brute_maj, brute_pass


def rec(pid, reference, answers, correct=None, lengths=None):
    """A record whose sample is correct when its answer equals the reference (unless `correct` is given)."""
    correct = [a == reference for a in answers] if correct is None else correct
    n = len(answers)
    return ProblemRecord(id=pid, reference=reference, correct=correct, answers=answers, extracted=answers,
                         lengths=lengths or [10] * n, finished=[True] * n)


def test_curves_match_enumeration_of_subsets():
    records = [rec("a", "1", ["1", "2", "2", None, "1"]), rec("b", "3", ["4", "4", "5", "3", "4"]),
               rec("c", "7", ["7", "7", "7", "8", "9"])]
    ks = [1, 2, 3, 4, 5]
    want_pass = [float(np.mean([brute_pass(r.correct, k) for r in records])) for k in ks]
    want_maj = [float(np.mean([brute_maj(r.answers, r.correct, k) for r in records])) for k in ks]
    np.testing.assert_allclose(metrics.pass_curve(records, ks), want_pass, rtol=1e-12)
    np.testing.assert_allclose(metrics.maj_curve(records, ks), want_maj, rtol=1e-12)


def test_curve_ks():
    assert metrics.curve_ks(64) == [*range(1, 17), 32, 64]
    assert metrics.curve_ks(5) == [1, 2, 3, 4, 5]
    assert metrics.curve_ks(20) == [*range(1, 17), 20]


def test_crossings():
    ks = [1, 2, 4, 8]
    # Sharpening's signature: above at small k, overtaken at k = 4.
    out = metrics.crossings(ks, [0.5, 0.7, 0.9, 0.95], [0.6, 0.75, 0.85, 0.9])
    assert out == {"policy_above": [1, 2], "base_above": [4, 8], "crossings": [4], "base_overtakes_at": 4}
    # Above everywhere, with a tie at k = 8: no crossing.
    out = metrics.crossings(ks, [0.5, 0.7, 0.9, 0.95], [0.6, 0.8, 0.95, 0.95])
    assert out["crossings"] == [] and out["base_overtakes_at"] is None and out["base_above"] == []
    # Below, then above: a crossing, but not the base overtaking.
    out = metrics.crossings(ks, [0.5, 0.7, 0.9, 0.95], [0.4, 0.7, 0.95, 0.97])
    assert out["crossings"] == [4] and out["base_overtakes_at"] is None


def test_coverage_counts_and_bootstrap_against_a_loop():
    solved_base = [1, 1, 0, 0, 1, 0, 1]
    solved_policy = [1, 0, 1, 0, 0, 1, 1]
    base = [rec(str(i), "1", ["1" if s else "0", "0"]) for i, s in enumerate(solved_base)]
    policy = [rec(str(i), "1", ["0", "1" if s else "0"]) for i, s in enumerate(solved_policy)]
    out = metrics.coverage(base, policy, num_boot=500, seed=3)
    assert (out["policy_only"], out["base_only"], out["both"], out["neither"], out["net"]) == (2, 2, 2, 1, 0)
    assert out["policy_only_ids"] == ["2", "5"] and out["base_only_ids"] == ["1", "4"]
    # The bootstrap, written as a loop over resamples of the problem indices (the same draws).
    rows = np.random.default_rng(3).integers(0, 7, size=(500, 7))
    p_only = [sum(solved_policy[i] and not solved_base[i] for i in row) for row in rows]
    b_only = [sum(solved_base[i] and not solved_policy[i] for i in row) for row in rows]
    net = [p - b for p, b in zip(p_only, b_only)]
    for name, values in (("policy_only", p_only), ("base_only", b_only), ("net", net)):
        assert out[f"{name}_interval"] == pytest.approx(list(np.percentile(values, [2.5, 97.5])))
    # Every problem solved by the policy only: the interval cannot move.
    out = metrics.coverage(base[2:4], policy[2:3] + [rec("3", "1", ["1", "0"])], num_boot=50)
    assert out["policy_only"] == 2 and out["policy_only_interval"] == [2.0, 2.0]


def test_coverage_refuses_different_problems():
    with pytest.raises(ValueError, match="same problems"):
        metrics.coverage([rec("a", "1", ["1"])], [rec("b", "1", ["1"])])


def test_majority_agreement_hand_counted():
    base = [
        rec("keep-right", "1", ["1", "1", "2"]),
        rec("keep-wrong", "4", ["3", "3", "4"]),
        rec("leave-to-right", "6", ["5", "5", "6"]),
        rec("ties", "9", ["7", "8"]),  # base majority {7, 8}: both wrong
        rec("written-differently", "1/2", ["0.5", "0.5", "3"], correct=[True, True, False]),
        rec("leave-right", "2", ["2", "2", "2"]),
    ]
    policy = [
        rec("keep-right", "1", ["1", "1", "1"]),
        rec("keep-wrong", "4", ["3", "3", "3"]),
        rec("leave-to-right", "6", ["6", "6", "5"]),
        rec("ties", "9", ["7", "9"]),  # policy majority {7, right}
        rec("written-differently", "1/2", ["1/2", "1/2", "0.5"], correct=[True, True, True]),
        rec("leave-right", "2", ["5", "5", "2"]),
    ]
    out = metrics.majority_agreement(base, policy)
    # Tied majorities count each of the 2 x 2 pairings a quarter: (7,7) keep, (7,right) and (8,right) to the
    # right answer, (8,7) to another wrong one.
    assert out["base_right"] == 3 and out["base_wrong"] == 3
    assert out["agree_right"] == 2  # keep-right, written-differently (both correct: one vote)
    assert out["agree_wrong"] == pytest.approx(1.25)
    assert out["left_wrong_to_right"] == pytest.approx(1.5)
    assert out["left_wrong_to_wrong"] == pytest.approx(0.25)
    assert out["left_right"] == 1
    left = {r["id"]: r for r in out["left_wrong"]}
    assert set(left) == {"leave-to-right", "ties"}
    assert left["ties"]["weight"] == pytest.approx(0.75) and left["ties"]["policy_right"] == 0.5
    assert left["leave-to-right"]["base_majority"] == ["5"] and left["leave-to-right"]["base_share"] == 2 / 3
    assert left["leave-to-right"]["policy_majority"] == ["6 (correct)"]


def test_majority_of_a_problem_without_answers():
    out = metrics.majority_agreement([rec("a", "1", [None, None])], [rec("a", "1", ["2", None])])
    assert out["base_wrong"] == 1 and out["left_wrong_to_wrong"] == 1


def test_likelihood_shift():
    base_logp = np.array([[-2.0, -4.0], [-1.0, -3.0]])
    base_len = np.array([[2, 4], [1, 3]])
    policy_logp = np.array([[-1.0, -1.0], [-6.0, -2.0]])
    policy_len = np.array([[1, 2], [3, 4]])
    out = metrics.likelihood_shift(base_logp, base_len, policy_logp, policy_len, bins=4)
    # Per token: base -1 everywhere; policy problem 0: -1, -0.5; problem 1: -2, -0.5.
    assert out["per_token"]["base"] == pytest.approx(-1.0)
    assert out["per_token"]["policy"] == pytest.approx(-1.0)
    diffs = [(-1 - 0.5) / 2 + 1, (-2 - 0.5) / 2 + 1]  # per problem: policy mean - base mean
    assert out["per_token"]["shift"] == pytest.approx(np.mean(diffs))
    assert out["per_token"]["shift_se"] == pytest.approx(abs(diffs[0] - diffs[1]) / np.sqrt(2) / np.sqrt(2))
    # Per response, problem means: base -3, -2; policy -1, -4.
    assert out["per_response"]["shift"] == pytest.approx(((-1 + 3) + (-4 + 2)) / 2)
    assert out["per_response"]["shift_se"] == pytest.approx(np.std([2, -2], ddof=1) / np.sqrt(2))
    assert out["length"]["base"] == 2.5 and out["length"]["shift"] == pytest.approx(0.0)
    h = out["histograms"]["length"]
    assert h["edges"] == [1.0, 1.75, 2.5, 3.25, 4.0] and h["base"] == [1, 1, 1, 1] and h["policy"] == [1, 1, 1, 1]


def test_estimated_token_factor():
    # MCMC, length 20, budget 64 in blocks of 8, 2 steps: resampled min(8k, 20) / 2 over k = 1..8:
    # 4 + 8 + 10 * 6 = 72 tokens per step, so 1 + 2 * 72 / 20.
    assert metrics.estimated_token_factor("power-mcmc", mean_length=20, max_new_tokens=64, block_size=8,
                                          mh_steps=2) == pytest.approx(8.2)
    assert metrics.estimated_token_factor("power-smc", mean_length=20, max_new_tokens=64, num_particles=4) == 4
    assert metrics.estimated_token_factor("temp", mean_length=20, max_new_tokens=64) == 1
