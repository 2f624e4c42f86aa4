"""Writes notebooks/closed_forms.ipynb with nbformat and, with --execute, runs it with nbclient.

The notebook is generated so that its source stays reviewable as plain Python here:

    python notebooks/build_closed_forms.py --execute     # regenerate, run, store outputs + PNGs

Set SHARPJAX_NOTEBOOK_QUICK=1 for the short CI variant (fewer ascent steps, coarser grids).
"""

from __future__ import annotations

import os

import _build  # noqa: E402  (notebooks/ is on sys.path when run as a script)
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell

HERE = os.path.dirname(os.path.abspath(__file__))
NOTEBOOK = os.path.join(HERE, "closed_forms.ipynb")

CELLS = [
    new_markdown_cell(
        """# Closed forms of the sharpening objectives, on exactly enumerable toy policies

Every run of the paper maximizes $\\mathbb{E}_{y\\sim\\pi}[R]$ with
$R = w_\\text{task}\\, r + w_\\text{ref}\\, L_\\text{ref} - w_\\text{pol}\\, L_\\text{pol}$ (DESIGN.md).
For the sampling-mode rewards ($R = r + \\tfrac{\\alpha}{\\beta_\\text{inv}} L_\\text{ref} -
\\tfrac{1}{\\beta_\\text{inv}} L_\\text{pol}$, or $\\alpha L_\\text{ref} - L_\\text{pol}$ when
$\\beta_\\text{inv} = 0$) the maximizer is known in closed form,

$$\\pi^*(y) \\propto \\pi_\\text{ref}(y)^{\\alpha}\\, e^{\\beta_\\text{inv}\\, r(y)},$$

the *power distribution* $\\pi_\\text{ref}^\\alpha / Z$ when $\\beta_\\text{inv} = 0$. Likelihood
maximization ($R = L_\\text{ref}$, no entropy term) has a degenerate optimum, the point mass on the
base model's most likely response, and the task reward alone ($R = r$) is maximized by any
distribution supported on correct responses.

`sharpjax.losses.toy` makes these statements checkable: a *tabular* autoregressive policy (one
row of logits per response prefix) over a tiny vocabulary and length, so every response is listed
and every expectation is a finite sum. `tests/losses/test_closed_forms.py` checks that the exact
expected gradient of sharpjax's RLOO loss equals the gradient of the enumerated objective; this
notebook draws the pictures:

1. the power distributions next to the base distribution;
2. exact (noise-free) gradient ascent converging to the closed-form optima;
3. the length shift toward shorter responses that sequence likelihood causes when responses end
   with an EOS token.

`SHARPJAX_NOTEBOOK_QUICK=1` runs a short version (CI); figures go to `figures/closed_forms_*.png`
(`SHARPJAX_FIGURE_DIR` overrides the folder)."""
    ),
    new_code_cell(
        """import os
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # float64: TVs down to 1e-12 are resolvable
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from sharpjax.losses import LossConfig, toy

QUICK = os.environ.get("SHARPJAX_NOTEBOOK_QUICK", "0") == "1"
GD_STEPS = 300 if QUICK else 5000  # plain gradient ascent (section 2)
ADAM_STEPS = 200 if QUICK else 1500  # Adam (section 3)
FIG_DIR = Path(os.environ.get("SHARPJAX_FIGURE_DIR", "figures"))
FIG_DIR.mkdir(parents=True, exist_ok=True)
plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3})
print(f"quick={QUICK}  gradient-ascent steps={GD_STEPS}  Adam steps={ADAM_STEPS}  figures -> {FIG_DIR}/")


def make_base(space, *, seed, scale=1.5, eos_bias=0.0):
    \"\"\"A random base model pi_ref: N(0, scale^2) logits per prefix, EOS logit shifted by eos_bias.\"\"\"
    rng = np.random.default_rng(seed)
    logits_SV = scale * rng.normal(size=(space.num_states, space.vocab_size))
    if space.eos_id is not None:
        logits_SV[:, space.eos_id] += eos_bias
    return jnp.asarray(logits_SV)


def save(fig, name):
    path = FIG_DIR / f"closed_forms_{name}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"wrote {path}")"""
    ),
    new_markdown_cell(
        """## 1. The power distribution $\\pi_\\text{ref}^\\alpha / Z$

Vocabulary 3, fixed length 4: $3^4 = 81$ responses. The base model's logits are random, and a
random third of the responses are "correct" ($r = 1$; used in section 2). Responses are sorted by
base probability. $\\alpha > 1$ sharpens (mass moves to the already likely responses, entropy drops
toward 0, the point mass of likelihood maximization being the $\\alpha \\to \\infty$ limit),
$\\alpha < 1$ flattens (toward the uniform distribution at $\\alpha = 0$)."""
    ),
    new_code_cell(
        """space = toy.enumerate_sequences(3, 4)
ref_SV = make_base(space, seed=0)
ref_logp_N = toy.sequence_logprobs(ref_SV, space)
base_N = jnp.exp(ref_logp_N)
rng = np.random.default_rng(1)
task_N = jnp.asarray((rng.permutation(space.num_sequences) < space.num_sequences // 3).astype(np.float64))
order = np.argsort(-np.asarray(ref_logp_N))
print(f"{space.num_sequences} responses, {space.num_states} prefixes; "
      f"base: H = {float(toy.entropy(base_N)):.3f} nats (uniform: {np.log(space.num_sequences):.3f}), "
      f"P(r=1) = {float(base_N @ task_N):.3f}")


def power(alpha):
    return toy.tilted_optimum(ref_logp_N, task_N, alpha=alpha, beta_inv=0.0)


fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
for alpha, color in zip((0.5, 1.0, 2.0, 4.0), ("tab:green", "black", "tab:orange", "tab:red")):
    label = "base $\\\\pi_{ref}$ ($\\\\alpha$ = 1)" if alpha == 1.0 else f"$\\\\alpha$ = {alpha:g}"
    ax0.plot(np.arange(space.num_sequences), np.asarray(power(alpha))[order], ".-", color=color,
             lw=2.5 if alpha == 1.0 else 1.2, ms=4, label=label)
ax0.set_yscale("log")
ax0.set_ylim(1e-8, 1)
ax0.set_xlabel("response, sorted by base probability")
ax0.set_ylabel("probability")
ax0.set_title("$\\\\pi_{ref}^{\\\\alpha}/Z$ over all 81 responses")
ax0.legend()

alpha_grid = np.geomspace(0.05, 16, 30 if QUICK else 120)
entropies = np.array([float(toy.entropy(power(a))) for a in alpha_grid])
ax1.plot(alpha_grid, entropies, color="tab:blue")
ax1.axhline(np.log(space.num_sequences), color="gray", ls=":", label="uniform (log N)")
ax1.axvline(1.0, color="black", ls="--", lw=1, label="base model")
ax1.set_xscale("log")
ax1.set_xlabel("$\\\\alpha$")
ax1.set_ylabel("entropy (nats)")
ax1.set_title("entropy of the power distribution")
ax1.legend()
fig.tight_layout()
save(fig, "power")"""
    ),
    new_markdown_cell(
        """## 2. Exact gradient ascent reaches the closed forms

Start at $\\pi = \\pi_\\text{ref}$ and ascend the enumerated objective
$J(\\pi) = \\mathbb{E}_\\pi[w_\\text{task} r + w_\\text{ref} L_\\text{ref}] + w_\\text{pol} H(\\pi)$
(`toy.objective`, the expectation of $R$, with $\\mathbb{E}_\\pi[-L_\\text{pol}] = H(\\pi)$) by plain
gradient ascent on the logits table with its exact gradient (step size 5, no sampling noise). The
y-axis is the total-variation distance to the closed-form optimum:

| objective | $R$ | optimum | TV to it |
|---|---|---|---|
| task | $r$ | any $\\pi$ supported on $r = 1$ | $P_\\pi(r = 0)$ |
| likelihood | $L_\\text{ref}$ | point mass on $\\arg\\max \\pi_\\text{ref}$ | $1 - \\pi(y^*)$ |
| power $\\alpha = 2$ | $2 L_\\text{ref} - L_\\text{pol}$ | $\\pi_\\text{ref}^2 / Z$ | TV |
| tilted $\\alpha = 1, \\beta_\\text{inv} = 2$ | $r + \\tfrac12 L_\\text{ref} - \\tfrac12 L_\\text{pol}$ | $\\pi_\\text{ref}\\, e^{2 r} / Z$ | TV |

The dots redo the ascent with the *exact expectation of sharpjax's loss*
(`policy_gradient_loss` with the paper's defaults: RLOO over $K = 2$ samples, token mean, truncated
importance weights), summed over all $81^2$ ordered groups weighted by their probability, with
step size $5T$: its gradient is $-\\nabla J / T$ ($T = 4$ tokens per response; checked to 1e-12 in
the tests), so the two runs are the same trajectory and the dots land on the lines.

Every objective moves monotonically to its closed-form optimum. Plain gradient ascent on a logits
table is slow on rare prefixes (their gradient is scaled by how often they are visited), so the
decay is polynomial here; Adam (section 3, and the tests) gets there in a few hundred steps."""
    ),
    new_code_cell(
        """OBJECTIVES = {  # name: (w_task, w_ref, w_pol) of R = w_task r + w_ref L_ref - w_pol L_pol (DESIGN.md)
    "task": (1.0, 0.0, 0.0),
    "likelihood": (0.0, 1.0, 0.0),
    "power alpha=2": (0.0, 2.0, 1.0),
    "tilted alpha=1, beta_inv=2": (1.0, 1.0 / 2.0, 1.0 / 2.0),
}
LABELS = {"task": "task", "likelihood": "likelihood", "power alpha=2": "power $\\\\alpha$=2",
          "tilted alpha=1, beta_inv=2": "tilted $\\\\alpha$=1, $\\\\beta_{inv}$=2"}
best = int(jnp.argmax(ref_logp_N))
DISTANCE = {  # TV distance to the optimum (to the optimal set, for the task reward)
    "task": lambda p_N: 1.0 - p_N @ task_N,
    "likelihood": lambda p_N: 1.0 - p_N[best],
    "power alpha=2": lambda p_N: toy.total_variation(
        p_N, toy.tilted_optimum(ref_logp_N, task_N, alpha=2.0, beta_inv=0.0)),
    "tilted alpha=1, beta_inv=2": lambda p_N: toy.total_variation(
        p_N, toy.tilted_optimum(ref_logp_N, task_N, alpha=1.0, beta_inv=2.0)),
}
STEP_SIZE = 5.0
groups_MK = toy.all_groups(space.num_sequences, 2)


def objective_loss(weights):
    w_task, w_ref, w_pol = weights
    return lambda theta_SV, key: -toy.objective(theta_SV, space, task_reward_N=task_N, ref_logp_N=ref_logp_N,
                                                w_task=w_task, w_ref=w_ref, w_pol=w_pol)


def expected_rloo_loss(weights):
    \"\"\"E over all K=2 groups of sharpjax's loss, rewards R from the current (sampling) policy.\"\"\"
    w_task, w_ref, w_pol = weights

    def loss(theta_SV, key):
        pol_logp_N = jax.lax.stop_gradient(toy.sequence_logprobs(theta_SV, space))
        rewards_N = w_task * task_N + w_ref * ref_logp_N - w_pol * pol_logp_N
        group_p_M = toy.group_probs(jnp.exp(pol_logp_N), groups_MK)
        return toy.group_loss(theta_SV, rewards_N, groups_MK, group_p_M, space=space, config=LossConfig())[0]

    return loss


curves = {}
for name, weights in OBJECTIVES.items():
    for kind, make_loss, step_size in (("objective", objective_loss, STEP_SIZE),
                                       ("rloo", expected_rloo_loss, STEP_SIZE * space.max_len)):
        _, probs_history = toy.gradient_descent(make_loss(weights), ref_SV, space=space, steps=GD_STEPS,
                                                optimizer=optax.sgd(step_size))
        curves[name, kind] = np.asarray(jax.vmap(DISTANCE[name])(probs_history))
    rel = np.max(np.abs(curves[name, "objective"] - curves[name, "rloo"]) / curves[name, "objective"])
    print(f"{name:28s} TV: start {curves[name, 'objective'][0]:.3f}, after {GD_STEPS} steps "
          f"{curves[name, 'objective'][-1]:.2e} (objective) / {curves[name, 'rloo'][-1]:.2e} (RLOO loss); "
          f"max relative difference of the two paths {rel:.1e}")

fig, ax = plt.subplots(figsize=(8, 4.8))
steps = np.arange(1, GD_STEPS + 1)
marks = np.unique(np.geomspace(1, GD_STEPS, 25).astype(int)) - 1
for (name, color) in zip(OBJECTIVES, ("tab:blue", "tab:purple", "tab:orange", "tab:red")):
    ax.plot(steps, curves[name, "objective"], color=color, label=LABELS[name])
    ax.plot(steps[marks], curves[name, "rloo"][marks], "o", color=color, ms=4, mfc="none")
ax.plot([], [], "o", color="gray", mfc="none", label="exact E[sharpjax RLOO loss], K=2")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("gradient-ascent step + 1")
ax.set_ylabel("TV distance to the closed-form optimum")
ax.set_title("exact gradient ascent from $\\\\pi_{ref}$ (vocab 3, length 4)")
ax.legend(loc="lower left", fontsize=9)
fig.tight_layout()
save(fig, "convergence")"""
    ),
    new_markdown_cell(
        """## 3. Sequence likelihood favours short responses

With an EOS token the responses have different lengths, and every extra token multiplies the
sequence probability by a factor below one. Vocabulary 4 (token 0 is EOS), responses of length
1 to 6 (1093 of them); the base model's EOS logit is lowered by 1.5 so that its responses are long on
average. Sharpening moves mass to the likely responses, which are the short ones: the power
distributions with $\\alpha > 1$ are shorter than the base model, $\\alpha < 1$ longer, and
likelihood maximization collapses onto the most likely response. The right panel runs exact
gradient ascent (exact gradients as in section 2, with Adam: cosine-decayed step 0.2) on
likelihood maximization and on the power objective with
$\\alpha = 2$: the mean length falls from the base model's to the closed-form values (dashed)."""
    ),
    new_code_cell(
        """eos_space = toy.enumerate_sequences(4, 6, eos_id=0)
eos_ref_SV = make_base(eos_space, seed=0, eos_bias=-1.5)
eos_ref_logp_N = toy.sequence_logprobs(eos_ref_SV, eos_space)
no_task_N = jnp.zeros(eos_space.num_sequences)
lengths_N = jnp.asarray(eos_space.lengths_N)
max_len = eos_space.max_len


def mean_length(p_N):
    return float(p_N @ lengths_N)


def length_histogram(p_N):
    return np.array([float(jnp.sum(jnp.where(lengths_N == n, p_N, 0.0))) for n in range(1, max_len + 1)])


def eos_power(alpha):
    return toy.tilted_optimum(eos_ref_logp_N, no_task_N, alpha=alpha, beta_inv=0.0)


likelihood_opt_N = toy.likelihood_optimum(eos_ref_logp_N)
print(f"{eos_space.num_sequences} responses; mean length: base {mean_length(jnp.exp(eos_ref_logp_N)):.3f}, "
      + ", ".join(f"alpha={a:g} {mean_length(eos_power(a)):.3f}" for a in (0.5, 2.0, 4.0))
      + f", likelihood optimum {mean_length(likelihood_opt_N):.0f}")

fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
ax = axes[0]
dists = {"$\\\\alpha$ = 0.5": eos_power(0.5), "base": eos_power(1.0), "$\\\\alpha$ = 2": eos_power(2.0),
         "$\\\\alpha$ = 4": eos_power(4.0), "likelihood optimum": likelihood_opt_N}
width = 0.8 / len(dists)
for i, (label, p_N) in enumerate(dists.items()):
    ax.bar(np.arange(1, max_len + 1) + (i - len(dists) / 2 + 0.5) * width, length_histogram(p_N), width,
           label=label)
ax.set_xlabel(f"response length (tokens, EOS included; {max_len} = cut off without EOS)")
ax.set_ylabel("probability")
ax.set_title("length distribution")
ax.legend(fontsize=9)

ax = axes[1]
alpha_grid = np.geomspace(0.1, 16, 30 if QUICK else 120)
ax.plot(alpha_grid, [mean_length(eos_power(a)) for a in alpha_grid], color="tab:blue",
        label="power $\\\\pi_{ref}^{\\\\alpha}/Z$")
ax.axhline(mean_length(likelihood_opt_N), color="tab:purple", ls="--", label="likelihood optimum")
ax.axvline(1.0, color="black", ls=":", lw=1, label="base model")
ax.set_xscale("log")
ax.set_xlabel("$\\\\alpha$")
ax.set_ylabel("mean response length")
ax.set_title("closed form: mean length vs $\\\\alpha$")
ax.legend(fontsize=9)

ax = axes[2]
for name, weights, target, color in (
    ("likelihood", (0.0, 1.0, 0.0), likelihood_opt_N, "tab:purple"),
    ("power alpha=2", (0.0, 2.0, 1.0), eos_power(2.0), "tab:green"),
):
    loss = lambda theta_SV, key, w=weights: -toy.objective(  # noqa: E731
        theta_SV, eos_space, task_reward_N=no_task_N, ref_logp_N=eos_ref_logp_N, w_task=w[0], w_ref=w[1], w_pol=w[2])
    _, probs_history = toy.gradient_descent(loss, eos_ref_SV, space=eos_space, steps=ADAM_STEPS,
                                            optimizer=optax.adam(optax.cosine_decay_schedule(0.2, ADAM_STEPS)))
    lengths = np.asarray(probs_history @ lengths_N)
    ax.plot(np.arange(1, ADAM_STEPS + 1), lengths, color=color, label=name.replace("alpha", "$\\\\alpha$"))
    ax.axhline(mean_length(target), color=color, ls="--", lw=1)
    print(f"{name:18s} mean length after {ADAM_STEPS} Adam steps {lengths[-1]:.4f} (closed form {mean_length(target):.4f})")
ax.set_xscale("log")
ax.set_xlabel("gradient-ascent step + 1")
ax.set_ylabel("mean response length")
ax.set_title("exact gradient ascent, Adam (dashed: closed form)")
ax.legend(fontsize=9)
fig.tight_layout()
save(fig, "length")"""
    ),
]


def build() -> nbformat.NotebookNode:
    return _build.build(CELLS)


def main():
    _build.main(CELLS, NOTEBOOK, __doc__, default_timeout=1200)


if __name__ == "__main__":
    main()
