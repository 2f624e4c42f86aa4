"""Per-token estimators of KL(pi || pi_ref) from the log-probs of sampled tokens.

With x = log pi(y_t | y_<t) - log pi_ref(y_t | y_<t) for a token sampled from pi (Schulman,
2020, "Approximating KL divergence"):

    k1 = x                      E_pi[k1] = KL        unbiased value, can be negative
    k2 = x^2 / 2                E_pi[k2] != KL       biased value (second order in x)
    k3 = exp(-x) - 1 + x        E_pi[k3] = KL        unbiased value, >= 0, low variance

Used as a *loss term* (gradient through log pi, samples held fixed), what matters is the
expected gradient, and it differs from the value (Tang & Munos, 2025, "On a few pitfalls in
KL divergence gradient estimation for RL"). For one token (T = 1, or a sequence-level
log ratio):

    k1:  E_pi[grad x]                  = E_pi[grad log pi] = 0         biased (no signal)
    k2:  E_pi[x grad log pi]           = grad KL(pi || pi_ref)          UNBIASED
    k3:  E_pi[(1 - e^-x) grad log pi]  = grad KL(pi_ref || pi)          biased (forward KL)

Summed per token over a sequence of length T > 1 even k2 is biased for the sequence-level
KL(pi || pi_ref): it gives E[sum_t x_t grad log pi_t], while the true gradient is
E[sum_t grad log pi_t * sum_{s >= t} x_s] (a token also changes which later tokens are
sampled). The unbiased route for sequences is the paper's: put -beta * sum_t x_t into the
*reward* (no gradient through it) and let the score-function estimator carry it; that is the
-L_pol (and +L_ref) term of the reward closure. tests/losses/test_kl.py checks each line of
this table by exact enumeration.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from sharpjax.losses._dtype import compute_dtype
from sharpjax.losses.config import KLEstimator


def kl_estimate(
    logp_BT: Float[Array, "B T"],
    ref_logp_BT: Float[Array, "B T"],
    *,
    estimator: KLEstimator,
    clamp: float = 20.0,
) -> Float[Array, "B T"]:
    """Per-token estimate of KL(pi || pi_ref) at tokens sampled from pi.

    Computed in (at least) fp32. The log ratio is clamped to [-clamp, clamp] first so that
    exp(-x) in k3 cannot overflow; the clamp is far outside the range of a healthy run and
    zeroes the gradient of tokens beyond it.

    Args:
      logp_BT: log pi of the sampled tokens (carries the gradient when used in a loss).
      ref_logp_BT: log pi_ref of the same tokens (frozen reference).
      estimator: "k1", "k2" or "k3" (see the module docstring for their bias).
      clamp: bound on |log pi - log pi_ref|.

    Returns:
      The per-token estimate, same shape; padding positions are not masked here.
    """
    dtype = compute_dtype(logp_BT, ref_logp_BT)
    x_BT = jnp.asarray(logp_BT, dtype) - jnp.asarray(ref_logp_BT, dtype)
    x_BT = jnp.clip(x_BT, -clamp, clamp)
    if estimator == "k1":
        return x_BT
    if estimator == "k2":
        return 0.5 * jnp.square(x_BT)
    if estimator == "k3":
        # expm1 keeps precision when x is small: e^-x - 1 + x = expm1(-x) + x.
        return jnp.expm1(-x_BT) + x_BT
    raise ValueError(f"estimator must be one of ('k1', 'k2', 'k3'), got {estimator!r}.")
