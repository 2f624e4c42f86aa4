"""The diagnosis's measurements: pure functions of evaluation records (`sharpjax.eval.metrics.ProblemRecord`).

Every function takes the base model's and the post-trained policy's records on the same problems, in
the same order (`check_aligned`), and returns JSON-ready numbers:

* `pass_curve`, `maj_curve`, `crossings`: pass@k / maj@k for k = 1..n and where the curves cross.
* `coverage`: problems only one of the two solves in its n samples, with a bootstrap interval.
* `majority_agreement`: whether the policy's most frequent answer is the base's, by its correctness.
* `likelihood_shift`: the base's log-likelihood of the policy's responses vs of its own samples.
* `estimated_token_factor`: tokens a power sampler draws per plain sample (the run's ETA, the cost table).

Host-side numpy only; nothing crosses a jit boundary.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import numpy as np

from sharpjax.eval.metrics import _CORRECT, _vote_keys, maj_at_k, pass_at_k

__all__ = [
    "check_aligned",
    "coverage",
    "crossings",
    "curve_ks",
    "estimated_token_factor",
    "likelihood_shift",
    "maj_curve",
    "majority_agreement",
    "pass_curve",
]


def check_aligned(base_records: Sequence, policy_records: Sequence) -> None:
    """Raises ValueError unless both lists hold the same problems in the same order."""
    base_ids = [r.id for r in base_records]
    policy_ids = [r.id for r in policy_records]
    if base_ids != policy_ids:
        raise ValueError(f"base and policy records differ: {len(base_ids)} vs {len(policy_ids)} problems "
                         "(or a different order); evaluate both on the same problems.")
    if not base_ids:
        raise ValueError("no problems to compare.")


def curve_ks(n: int, *, dense_up_to: int = 16) -> list[int]:
    """The k of the maj@k curve: every k up to `dense_up_to`, then powers of two, and n.

    Exact maj@k costs grow with k (about 1 s per problem for all 64 k of a problem with many
    distinct answers), while pass@k is cheap at every k; the curve's shape above 16 is carried
    by the powers of two.
    """
    ks = set(range(1, min(n, dense_up_to) + 1)) | {2**j for j in range(n.bit_length()) if 2**j <= n} | {n}
    return sorted(ks)


def pass_curve(records: Sequence, ks: Sequence[int]) -> np.ndarray:
    """[K] unbiased pass@k (`eval.metrics.pass_at_k`) averaged over problems, for each k of `ks`."""
    return np.array([np.mean([pass_at_k(len(r.correct), sum(r.correct), k) for r in records]) for k in ks])


def maj_curve(records: Sequence, ks: Sequence[int]) -> np.ndarray:
    """[K] exact maj@k (`eval.metrics.maj_at_k`: ties split, correct answers vote together), over problems."""
    return np.array([np.mean([maj_at_k(r.answers, r.correct, k) for r in records]) for k in ks])


def crossings(ks: Sequence[int], base: Sequence[float], policy: Sequence[float], *, tol: float = 1e-9) -> dict:
    """Where two curves over k cross.

    Args:
      ks: [K] increasing k.
      base, policy: [K] the two curves (e.g. `pass_curve`).
      tol: differences within it are ties (they neither cross nor count as above).

    Returns:
      {"policy_above": k where policy > base, "base_above": k where base > policy, "crossings": each k at which
      the sign of policy - base differs from its sign at the previous non-tied k, "base_overtakes_at": the first
      k where the base is above after the policy was above at a smaller k (the sharpening signature), or None}.
    """
    diff = np.asarray(policy, float) - np.asarray(base, float)
    sign = np.where(diff > tol, 1, np.where(diff < -tol, -1, 0))
    out = {"policy_above": [int(k) for k, s in zip(ks, sign) if s > 0],
           "base_above": [int(k) for k, s in zip(ks, sign) if s < 0], "crossings": [], "base_overtakes_at": None}
    previous = 0
    for k, s in zip(ks, sign):
        if s == 0:
            continue
        if previous and s != previous:
            out["crossings"].append(int(k))
            if s < 0 and out["base_overtakes_at"] is None:
                out["base_overtakes_at"] = int(k)
        previous = s
    return out


def _interval(samples: np.ndarray, level: float) -> list[float]:
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def coverage(base_records: Sequence, policy_records: Sequence, *, num_boot: int = 2000, seed: int = 0,
             level: float = 0.95) -> dict[str, Any]:
    """Problems one model solves in its n samples (pass@n > 0) and the other never does.

    The intervals are percentile bootstrap intervals over problems (resampled with replacement,
    `num_boot` times, numpy `default_rng(seed)`): how much the counts depend on which problems the
    benchmark happens to hold. They do not cover the sampling noise of a problem's n samples.

    Returns:
      {"num_problems", "policy_only", "base_only", "both", "neither", "net" (policy_only - base_only), their
      "<name>_interval" at `level` for policy_only, base_only and net, "policy_only_ids", "base_only_ids"}.
    """
    check_aligned(base_records, policy_records)
    base = np.array([any(r.correct) for r in base_records])
    policy = np.array([any(r.correct) for r in policy_records])
    policy_only, base_only = policy & ~base, base & ~policy
    rows = np.random.default_rng(seed).integers(0, len(base), size=(num_boot, len(base)))  # [num_boot, N]
    boot_policy, boot_base = policy_only[rows].sum(1), base_only[rows].sum(1)
    return {
        "num_problems": len(base),
        "policy_only": int(policy_only.sum()),
        "base_only": int(base_only.sum()),
        "both": int((base & policy).sum()),
        "neither": int((~base & ~policy).sum()),
        "net": int(policy_only.sum() - base_only.sum()),
        "policy_only_interval": _interval(boot_policy, level),
        "base_only_interval": _interval(boot_base, level),
        "net_interval": _interval(boot_policy - boot_base, level),
        "level": level,
        "policy_only_ids": [r.id for r, x in zip(base_records, policy_only) if x],
        "base_only_ids": [r.id for r, x in zip(base_records, base_only) if x],
    }


def _top_answers(record) -> tuple[list, float]:
    """The most frequent vote keys of a record (ties: all of them) and their share of the n samples.

    Keys as `eval.metrics.maj_at_k` votes (every correct answer is one key, `_CORRECT`); a record
    where every sample abstains has the single key None (no answer).
    """
    keys = _vote_keys(record.answers, record.correct, True)
    counts = collections.Counter(k for k in keys if k is not None)
    if not counts:
        return [None], 1.0
    top = max(counts.values())
    return [k for k, c in counts.items() if c == top], top / len(keys)


def _shown(key, record) -> str | None:
    return f"{record.reference} (correct)" if key is _CORRECT else key


def majority_agreement(base_records: Sequence, policy_records: Sequence) -> dict[str, Any]:
    """Whether the policy's most frequent answer is the base's, split by whether the base's is right.

    A problem's majority answer is its most frequent vote (as in maj@k: answers that verify as
    correct are one vote, no-answer samples abstain); a tie is broken uniformly at random, and the
    counts are expectations over that tie-breaking, so a problem with tied majorities adds fractions.

    Returns:
      {"num_problems", "base_right" (expected problems whose base majority is right), "base_wrong",
      "agree_right" (the policy keeps a right base majority), "agree_wrong" (keeps a wrong one),
      "left_right" (leaves a right base majority), "left_wrong_to_right" (leaves a wrong base majority
      for the right answer), "left_wrong_to_wrong" (for another wrong answer or none), "left_wrong": the
      problems with a chance of the last two, each {"id", "reference", "base_majority", "base_share",
      "policy_majority", "policy_share", "policy_right", "weight"}}.
    """
    check_aligned(base_records, policy_records)
    out = collections.Counter({name: 0.0 for name in ("base_right", "base_wrong", "agree_right", "agree_wrong",
                                                      "left_right", "left_wrong_to_right", "left_wrong_to_wrong")})
    left_wrong = []
    for b_rec, p_rec in zip(base_records, policy_records):
        b_top, b_share = _top_answers(b_rec)
        p_top, p_share = _top_answers(p_rec)
        weight = 1.0 / (len(b_top) * len(p_top))
        left = 0.0
        for b in b_top:
            out["base_right" if b is _CORRECT else "base_wrong"] += 1.0 / len(b_top)
            for p in p_top:
                if b == p:
                    out["agree_right" if b is _CORRECT else "agree_wrong"] += weight
                elif b is _CORRECT:
                    out["left_right"] += weight
                else:
                    out["left_wrong_to_right" if p is _CORRECT else "left_wrong_to_wrong"] += weight
                    left += weight
        if left > 0:
            left_wrong.append({
                "id": b_rec.id, "reference": b_rec.reference, "base_majority": [_shown(k, b_rec) for k in b_top],
                "base_share": b_share, "policy_majority": [_shown(k, p_rec) for k in p_top], "policy_share": p_share,
                "policy_right": sum(k is _CORRECT for k in p_top) / len(p_top), "weight": left,
            })
    return {"num_problems": len(base_records), **{k: float(v) for k, v in out.items()}, "left_wrong": left_wrong}


def likelihood_shift(base_logp_BN: np.ndarray, base_len_BN: np.ndarray, policy_logp_BN: np.ndarray,
                     policy_len_BN: np.ndarray, *, bins: int = 40) -> dict[str, Any]:
    """The base's log-likelihood of the policy's responses vs of the base's own samples.

    Args:
      base_logp_BN: [B problems, n] log pi_base(response | prompt) of the base's own samples (summed over
        the response's tokens, the stop token included).
      base_len_BN: [B, n] their lengths in tokens (>= 1).
      policy_logp_BN, policy_len_BN: [B, n'] the same for the policy's responses, scored by the base.
      bins: histogram bins (shared edges for the two models).

    Returns:
      For "per_token" (log-likelihood / length), "per_response" (the sum) and "length": {"base", "policy"
      (means over all responses), "shift" (policy - base: the mean over problems of the per-problem difference
      of means, so each problem counts once whatever its n), "shift_se" (its standard error over problems)};
      "histograms": per quantity {"edges" [bins + 1], "base" [bins], "policy" [bins]} counts.
    """
    quantities = {
        "per_token": (base_logp_BN / base_len_BN, policy_logp_BN / policy_len_BN),
        "per_response": (base_logp_BN, policy_logp_BN),
        "length": (base_len_BN.astype(float), policy_len_BN.astype(float)),
    }
    out: dict[str, Any] = {"histograms": {}}
    for name, (b, p) in quantities.items():
        b, p = np.asarray(b, float), np.asarray(p, float)
        diff_B = p.mean(1) - b.mean(1)  # paired by problem: the problems' own difficulty cancels
        se = float(diff_B.std(ddof=1) / np.sqrt(len(diff_B))) if len(diff_B) > 1 else float("nan")
        out[name] = {"base": float(b.mean()), "policy": float(p.mean()), "shift": float(diff_B.mean()), "shift_se": se}
        edges = np.histogram_bin_edges(np.concatenate([b.ravel(), p.ravel()]), bins=bins)
        out["histograms"][name] = {"edges": edges.tolist(), "base": np.histogram(b, edges)[0].tolist(),
                                   "policy": np.histogram(p, edges)[0].tolist()}
    return out


def estimated_token_factor(method: str, *, mean_length: float, max_new_tokens: int, block_size: int = 192,
                           mh_steps: int = 10, num_particles: int = 16) -> float:
    """Tokens a sampler draws per response, relative to one plain sample of `mean_length` tokens (an estimate).

    plain / temp: 1. power-smc: the N particles. power-mcmc (`sharpjax.rollout.power.power_mcmc`): the
    response, plus after each block of the budget `mh_steps` proposals that each resample from a uniform
    position of the current response to the block's end: about half of the response so far while it grows
    (min(k * block_size, L) / 2 after block k), and L / 2 once it has stopped, since a finished chain keeps
    proposing until the budget's last block. On the arithmetic main job (L = 20, budget 64, blocks of 8, 2 MH
    steps) this gives 8.2x, as measured (BENCHMARKS.md: 8.24x).
    """
    if method in ("plain", "temp"):
        return 1.0
    if method == "power-smc":
        return float(num_particles)
    if method == "power-mcmc":
        length = min(max(mean_length, 1.0), max_new_tokens)
        num_blocks = -(-max_new_tokens // block_size)
        resampled = sum(min(k * block_size, length) / 2 for k in range(1, num_blocks + 1))
        return 1.0 + mh_steps * resampled / length
    raise ValueError(f"unknown sampler {method!r}.")
