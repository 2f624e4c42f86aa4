"""Inference-time power sampling: draws from pi^alpha / Z with the base model, no training.

The natural control for the power-sampling reward (PAPER.md): sharpen the base model at
inference time instead of by RL. Both samplers here build the response in blocks of
`block_size` tokens up to the token budget M = `sampling.max_new_tokens` (the last block may
be shorter), with the proposal q = the base model at temperature 1/alpha, drawn by the same
jitted KV-cache sampler as every rollout (`sharpjax.rollout.sampler.sample`), whose exact
per-token log-probs under pi (temperature 1) and q (temperature 1/alpha) feed the ratios:

* `power_mcmc`: block-wise Metropolis-Hastings (Karan & Du, 2025, "Reasoning with Sampling:
  Your Base Model is Smarter Than You Think"). Each block is appended from q; then
  `mh_steps` MH steps each pick a position t uniformly in the current response y, resample
  the suffix from t with q up to the block's end, and accept y' with probability
      min(1, pi(y'_{>=t})^alpha q(y_{>=t}) |y| / (pi(y_{>=t})^alpha q(y'_{>=t}) |y'|))
  (`mh_log_acceptance`): the shared prefix y_{<t} cancels, every suffix term is conditioned
  on it, and |y| / |y'| is the ratio of the position choices (1/|y| forward, 1/|y'| back;
  1 without EOS). The chain of block k targets pi^alpha over responses truncated at the
  block's end; the last block's target is pi^alpha over full responses.
* `power_smc`: sequential Monte Carlo ("Power-SMC"). N particles per draw are extended block
  by block from q with incremental log-weight alpha log pi - log q over the new block; a
  system resamples (systematic) when its effective sample size falls below
  `ess_threshold * N`; the draw is one particle picked by weight. Unbiased only as N grows
  (self-normalized importance sampling): its error falls with the particle count.

Both tilt optionally by a host-side task reward: `select` draws within groups of rows with
probability proportional to exp(log_weight + beta_inv * reward), i.e. importance resampling
toward pi^alpha exp(beta_inv r), the inference-time twin of the paper's tilted reward (the
particles of an SMC system, or a prompt's MCMC chains).

Every sampler call has one shape (prefix width P + M, M new tokens with per-row budgets), so
a sampler compiles the model's decode loop once for any number of blocks and steps. The
token cost counts every token drawn from q: rejected proposals and all particles included.

Shape letters: Bp prompts, P prompt length, M token budget, G draws per prompt, N particles,
R sampler rows (Bp * G chains, or Bp * G * N particles).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from sharpjax.models.config import ModelConfig
from sharpjax.models.transformer import Params
from sharpjax.rollout.sampler import RolloutBatch, SamplingConfig, sample

Method = Literal["power-mcmc", "power-smc"]
METHODS: tuple[str, ...] = ("power-mcmc", "power-smc")


@dataclasses.dataclass(frozen=True)
class PowerConfig:
    """Power-sampling settings (static: changing them recompiles).

    Attributes:
      alpha: the power; the proposal is the base model at temperature 1/alpha (paper: 4).
      block_size: tokens appended per block (Karan & Du: 192, with 16 blocks).
      mh_steps: MH steps after each block (`power_mcmc`; Karan & Du: about 10).
      num_particles: N, particles per draw (`power_smc`).
      ess_threshold: a system resamples when its ESS < ess_threshold * N (`power_smc`).
    """

    alpha: float = 4.0
    block_size: int = 192
    mh_steps: int = 10
    num_particles: int = 16
    ess_threshold: float = 0.5

    def __post_init__(self):
        if not self.alpha > 0:
            raise ValueError(f"alpha={self.alpha} must be > 0 (the power of pi^alpha).")
        if self.block_size < 1:
            raise ValueError(f"block_size={self.block_size} must be >= 1 token.")
        if self.mh_steps < 0:
            raise ValueError(f"mh_steps={self.mh_steps} must be >= 0.")
        if self.num_particles < 1:
            raise ValueError(f"num_particles={self.num_particles} must be >= 1.")
        if not 0 <= self.ess_threshold <= 1:
            raise ValueError(f"ess_threshold={self.ess_threshold} must be in [0, 1].")

    def num_blocks(self, max_new_tokens: int) -> int:
        return -(-max_new_tokens // self.block_size)


def check_sampling(sampling: SamplingConfig) -> None:
    """Raises ValueError for settings that would change the proposal the ratios assume."""
    if sampling.greedy or sampling.temperature != 1.0 or sampling.top_p != 1.0 or sampling.top_k != 0:
        raise ValueError(
            "power sampling draws its proposal at temperature 1/alpha from the full softmax: leave "
            f"temperature=1.0, top_p=1.0, top_k=0, greedy=False (got temperature={sampling.temperature}, "
            f"top_p={sampling.top_p}, top_k={sampling.top_k}, greedy={sampling.greedy})."
        )
    if sampling.max_total_length is not None:
        raise ValueError(
            "power sampling splits one fixed budget into blocks: give max_new_tokens, not "
            f"max_total_length={sampling.max_total_length}."
        )


@flax.struct.dataclass
class PowerSamples:
    """Power-sampled responses, rows like `sample`'s (row i*G + j answers prompt i).

    Attributes:
      rollout: the responses as a `RolloutBatch`; `logprobs` are log pi (temperature 1) and
        `sampling_logprobs` log q (temperature 1/alpha) of every response token.
      log_weights: [B] SMC particles: log importance weight since the system's last
        resampling (only differences within a system matter); 0 for MCMC chains and draws.
      token_cost: [B] tokens drawn from the proposal for this row: every proposal, rejected or
        not, for a chain; the whole system's particles for an SMC draw.
      prefill_cost: [B] tokens prefilled for those proposals: each one re-reads its prompt and
        the response prefix it continues (prompt + y_<start), which plain sampling reads once.
      accept_rate: [B] fraction of accepted MH proposals (MCMC; 0 for SMC).
    """

    rollout: RolloutBatch
    log_weights: Float[Array, " B"]
    token_cost: Int[Array, " B"]
    accept_rate: Float[Array, " B"]
    prefill_cost: Int[Array, " B"]

    @property
    def lengths(self) -> Int[Array, " B"]:
        return self.rollout.lengths

    @property
    def finished(self) -> Bool[Array, " B"]:
        return self.rollout.finished


@flax.struct.dataclass
class _Chains:
    """Responses under construction; log-probs are 0 past each row's length."""

    tokens: Int[Array, "R M"]
    logp: Float[Array, "R M"]  # log pi(y_j | y_<j), temperature 1
    logq: Float[Array, "R M"]  # log q(y_j | y_<j), temperature 1/alpha
    lengths: Int[Array, " R"]
    finished: Bool[Array, " R"]  # ended by a stop token: never extended again

    @classmethod
    def empty(cls, rows: int, m: int, pad_id: int) -> _Chains:
        zeros = jnp.zeros((rows, m), jnp.float32)
        return cls(
            tokens=jnp.full((rows, m), pad_id, jnp.int32), logp=zeros, logq=zeros,
            lengths=jnp.zeros((rows,), jnp.int32), finished=jnp.zeros((rows,), bool),
        )  # fmt: skip


def _where_rows(pick_R, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pick_R.reshape(-1, *([1] * (x.ndim - 1))), x, y), a, b)


def _sum_from(x_RM: Float[Array, "R M"], start_R: Int[Array, " R"]) -> Float[Array, " R"]:
    """sum_{j >= start} x_j (entries past a row's length are 0)."""
    after_RM = jnp.arange(x_RM.shape[1])[None, :] >= start_R[:, None]
    return jnp.sum(jnp.where(after_RM, x_RM, 0.0), axis=-1)


def mh_log_acceptance(
    *,
    alpha: float,
    logp_old_RM: Float[Array, "R M"],
    logq_old_RM: Float[Array, "R M"],
    lengths_old_R: Int[Array, " R"],
    logp_new_RM: Float[Array, "R M"],
    logq_new_RM: Float[Array, "R M"],
    lengths_new_R: Int[Array, " R"],
    start_R: Int[Array, " R"],
) -> Float[Array, " R"]:
    """log of the MH ratio for resampling the suffix from `start` (before the min with 0).

    log A = alpha (log pi(y'_{>=t}) - log pi(y_{>=t})) + log q(y_{>=t}) - log q(y'_{>=t})
            + log |y| - log |y'|,
    with per-token log-probs (0 past each response's length) and t = start; the position
    choice is uniform over the current response, hence the length ratio.
    """
    log_pi = _sum_from(logp_new_RM, start_R) - _sum_from(logp_old_RM, start_R)
    log_q = _sum_from(logq_old_RM, start_R) - _sum_from(logq_new_RM, start_R)
    log_len = jnp.log(lengths_old_R.astype(jnp.float32)) - jnp.log(lengths_new_R.astype(jnp.float32))
    return alpha * log_pi + log_q + log_len


def _propose(
    params: Params,
    prompt_RP: Int[Array, "R P"],
    prompt_mask_RP: Int[Array, "R P"],
    chains: _Chains,
    start_R: Int[Array, " R"],
    budget_R: Int[Array, " R"],
    key: jax.Array,
    *,
    config: ModelConfig,
    proposal: SamplingConfig,
) -> tuple[_Chains, Int[Array, " R"], Int[Array, " R"]]:
    """Keeps y_{<start} and draws up to `budget` new tokens from q after it.

    Returns the spliced proposals, the number of tokens drawn per row, and the tokens prefilled
    per row (prompt + y_{<start} where a proposal was drawn, 0 where the budget was 0).
    """
    m = chains.tokens.shape[1]
    p = prompt_RP.shape[1]
    col_M = jnp.arange(m)
    # Prefix = prompt + y_{<start}, right-aligned (the sampler continues from the last column).
    full_RW = jnp.concatenate([prompt_RP, chains.tokens], axis=1)
    full_mask_RW = jnp.concatenate([prompt_mask_RP, (col_M[None, :] < start_R[:, None]).astype(jnp.int32)], axis=1)
    src_RW = jnp.arange(p + m)[None, :] - (m - start_R)[:, None]
    inside_RW = src_RW >= 0
    gather = lambda x: jnp.take_along_axis(x, jnp.maximum(src_RW, 0), axis=1)  # noqa: E731
    prefix_RW = jnp.where(inside_RW, gather(full_RW), proposal.pad_id)
    prefix_mask_RW = jnp.where(inside_RW, gather(full_mask_RW), 0)
    out = sample(params, prefix_RW, prefix_mask_RW, key, config=config, sampling=proposal, max_new_tokens_B=budget_R)

    # Splice: y_{<start}, then the drawn tokens, then padding.
    src_RM = col_M[None, :] - start_R[:, None]
    kept_RM = src_RM < 0
    drawn_RM = ~kept_RM & (src_RM < out.lengths[:, None])

    def splice(sampled_RW, current_RM, fill):
        new_RM = jnp.take_along_axis(sampled_RW[:, p + m :], jnp.clip(src_RM, 0, m - 1), axis=1)
        return jnp.where(kept_RM, current_RM, jnp.where(drawn_RM, new_RM, fill))

    spliced = _Chains(
        tokens=splice(out.tokens, chains.tokens, proposal.pad_id),
        logp=splice(out.logprobs, chains.logp, 0.0),
        logq=splice(out.sampling_logprobs, chains.logq, 0.0),
        lengths=start_R + out.lengths,
        finished=out.finished,
    )
    prefilled_R = jnp.where(budget_R > 0, prompt_mask_RP.sum(-1) + start_R, 0).astype(jnp.int32)
    return spliced, out.lengths, prefilled_R


def _setup(prompt_tokens_BP, prompt_mask_BP, rows_per_prompt: int, sampling: SamplingConfig, power: PowerConfig):
    check_sampling(sampling)
    prompt_RP = jnp.repeat(prompt_tokens_BP.astype(jnp.int32), rows_per_prompt, axis=0)
    prompt_mask_RP = jnp.repeat(prompt_mask_BP.astype(jnp.int32), rows_per_prompt, axis=0)
    proposal = dataclasses.replace(sampling, num_samples=1, temperature=1.0 / power.alpha)
    return prompt_RP, prompt_mask_RP, proposal


def _rollout(prompt_RP, prompt_mask_RP, chains: _Chains, rows_per_prompt: int) -> RolloutBatch:
    r, m = chains.tokens.shape
    response_RM = (jnp.arange(m)[None, :] < chains.lengths[:, None]).astype(jnp.int32)
    zeros_RP = jnp.zeros(prompt_RP.shape, jnp.float32)
    return RolloutBatch(
        tokens=jnp.concatenate([prompt_RP, chains.tokens], axis=1),
        attention_mask=jnp.concatenate([prompt_mask_RP, response_RM], axis=1),
        response_mask=jnp.concatenate([jnp.zeros_like(prompt_mask_RP), response_RM], axis=1),
        logprobs=jnp.concatenate([zeros_RP, chains.logp], axis=1),
        sampling_logprobs=jnp.concatenate([zeros_RP, chains.logq], axis=1),
        lengths=chains.lengths,
        finished=chains.finished,
        prompt_index=jnp.repeat(jnp.arange(r // rows_per_prompt, dtype=jnp.int32), rows_per_prompt),
    )


@functools.partial(jax.jit, static_argnames=("config", "sampling", "power"))
def power_mcmc(
    params: Params,
    prompt_tokens_BP: Int[Array, "Bp P"],
    prompt_mask_BP: Int[Array, "Bp P"],
    key: jax.Array,
    *,
    config: ModelConfig,
    sampling: SamplingConfig,
    power: PowerConfig,
) -> PowerSamples:
    """Block-wise Metropolis-Hastings toward pi^alpha: `sampling.num_samples` chains per prompt.

    Args:
      params, prompt_tokens_BP, prompt_mask_BP, key, config: as `sampler.sample` (params: the
        base model's; the same key gives the same samples).
      sampling: the budget (`max_new_tokens`), G chains per prompt (`num_samples`), stop and
        pad ids, `ignore_eos`; temperature, top-p and top-k must be off (1.0, 1.0, 0).
      power: alpha, block size and MH steps per block.

    Returns:
      `PowerSamples` with Bp * G rows (each chain's final state), the token cost of each
      chain and its MH acceptance rate.
    """
    m, g = sampling.max_new_tokens, sampling.num_samples
    prompt_RP, prompt_mask_RP, proposal = _setup(prompt_tokens_BP, prompt_mask_BP, g, sampling, power)
    r = prompt_RP.shape[0]
    per_block = 1 + power.mh_steps  # one extension, then the MH steps

    def step(i, carry):
        chains, key, cost_R, accepted_R, prefill_R = carry
        key, k_prop, k_pos, k_acc = jax.random.split(key, 4)
        extend = i % per_block == 0
        end = jnp.minimum((i // per_block + 1) * power.block_size, m)
        position_R = jnp.floor(jax.random.uniform(k_pos, (r,)) * chains.lengths).astype(jnp.int32)
        position_R = jnp.clip(position_R, 0, jnp.maximum(chains.lengths - 1, 0))
        start_R = jnp.where(extend, chains.lengths, position_R)
        budget_R = jnp.where(extend & chains.finished, 0, end - start_R)
        proposed, drawn_R, prefilled_R = _propose(
            params, prompt_RP, prompt_mask_RP, chains, start_R, budget_R, k_prop, config=config, proposal=proposal
        )
        log_accept_R = mh_log_acceptance(
            alpha=power.alpha,
            logp_old_RM=chains.logp, logq_old_RM=chains.logq, lengths_old_R=chains.lengths,
            logp_new_RM=proposed.logp, logq_new_RM=proposed.logq, lengths_new_R=proposed.lengths,
            start_R=start_R,
        )  # fmt: skip
        mh_accept_R = jnp.log(jax.random.uniform(k_acc, (r,))) < log_accept_R
        # An extension is a draw from q, taken as is; a finished response is never extended.
        accept_R = jnp.where(extend, ~chains.finished, mh_accept_R)
        chains = _where_rows(accept_R, proposed, chains)
        accepted_R = accepted_R + (accept_R & ~extend).astype(jnp.int32)
        return chains, key, cost_R + drawn_R, accepted_R, prefill_R + prefilled_R

    zeros_R = jnp.zeros((r,), jnp.int32)
    init = (_Chains.empty(r, m, sampling.pad_id), key, zeros_R, zeros_R, zeros_R)
    num_blocks = power.num_blocks(m)
    chains, _, cost_R, accepted_R, prefill_R = jax.lax.fori_loop(0, num_blocks * per_block, step, init)
    return PowerSamples(
        rollout=_rollout(prompt_RP, prompt_mask_RP, chains, g),
        log_weights=jnp.zeros((r,), jnp.float32),
        token_cost=cost_R,
        accept_rate=accepted_R / max(num_blocks * power.mh_steps, 1),
        prefill_cost=prefill_R,
    )


def _systematic_ancestors(key: jax.Array, log_weights_SN: Float[Array, "S N"]) -> Int[Array, "S N"]:
    """Systematic resampling within each system: ancestor indices in [0, N)."""
    s, n = log_weights_SN.shape
    cdf_SN = jnp.cumsum(jax.nn.softmax(log_weights_SN, axis=-1), axis=-1)
    points_SN = (jax.random.uniform(key, (s, 1)) + jnp.arange(n)[None, :]) / n
    ancestors_SN = jax.vmap(lambda c, u: jnp.searchsorted(c, u, side="right"))(cdf_SN, points_SN)
    return jnp.minimum(ancestors_SN, n - 1).astype(jnp.int32)  # cdf[-1] may round below 1


@functools.partial(jax.jit, static_argnames=("config", "sampling", "power"))
def power_smc_particles(
    params: Params,
    prompt_tokens_BP: Int[Array, "Bp P"],
    prompt_mask_BP: Int[Array, "Bp P"],
    key: jax.Array,
    *,
    config: ModelConfig,
    sampling: SamplingConfig,
    power: PowerConfig,
) -> PowerSamples:
    """SMC toward pi^alpha: G independent systems of N particles per prompt, all particles.

    Arguments as `power_mcmc` (`power.num_particles`, `power.ess_threshold` instead of the
    MH steps). Returns `PowerSamples` with Bp * G * N rows, row (i * G + j) * N + l being
    particle l of system j of prompt i, with its log weight since the system's last
    resampling (never resampled after the last block: `select` does the final draw).
    """
    m, g, n = sampling.max_new_tokens, sampling.num_samples, power.num_particles
    prompt_RP, prompt_mask_RP, proposal = _setup(prompt_tokens_BP, prompt_mask_BP, g * n, sampling, power)
    r = prompt_RP.shape[0]
    num_blocks = power.num_blocks(m)

    def block(k, carry):
        chains, log_w_R, key, cost_R, prefill_R = carry
        key, k_prop, k_res = jax.random.split(key, 3)
        end = jnp.minimum((k + 1) * power.block_size, m)
        budget_R = jnp.where(chains.finished, 0, end - chains.lengths)
        proposed, drawn_R, prefilled_R = _propose(
            params, prompt_RP, prompt_mask_RP, chains, chains.lengths, budget_R, k_prop, config=config,
            proposal=proposal,
        )  # fmt: skip
        new_logp_R, new_logq_R = _sum_from(proposed.logp, chains.lengths), _sum_from(proposed.logq, chains.lengths)
        log_w_R = log_w_R + jnp.where(chains.finished, 0.0, power.alpha * new_logp_R - new_logq_R)
        chains = _where_rows(chains.finished, chains, proposed)

        log_w_SN = log_w_R.reshape(-1, n)
        ess_S = jnp.exp(2 * jax.nn.logsumexp(log_w_SN, axis=-1) - jax.nn.logsumexp(2 * log_w_SN, axis=-1))
        resample_S = (ess_S < power.ess_threshold * n) & (k < num_blocks - 1)
        ancestors_SN = jnp.where(resample_S[:, None], _systematic_ancestors(k_res, log_w_SN), jnp.arange(n)[None, :])
        rows_R = (jnp.arange(r // n)[:, None] * n + ancestors_SN).reshape(-1)
        chains = jax.tree.map(lambda x: x[rows_R], chains)
        log_w_R = jnp.where(resample_S[:, None], 0.0, log_w_SN).reshape(-1)
        # Resampled particles inherit their ancestors' history; the cost stays per row slot.
        return chains, log_w_R, key, cost_R + drawn_R, prefill_R + prefilled_R

    zeros_R = jnp.zeros((r,), jnp.int32)
    init = (_Chains.empty(r, m, sampling.pad_id), jnp.zeros((r,), jnp.float32), key, zeros_R, zeros_R)
    chains, log_w_R, _, cost_R, prefill_R = jax.lax.fori_loop(0, num_blocks, block, init)
    return PowerSamples(
        rollout=_rollout(prompt_RP, prompt_mask_RP, chains, g * n),
        log_weights=log_w_R,
        token_cost=cost_R,
        accept_rate=jnp.zeros((r,), jnp.float32),
        prefill_cost=prefill_R,
    )


@functools.partial(jax.jit, static_argnames=("group_size",))
def select(
    samples: PowerSamples,
    key: jax.Array,
    *,
    group_size: int,
    rewards_B: Float[Array, " B"] | None = None,
    beta_inv: float | Float[Array, ""] = 0.0,
) -> PowerSamples:
    """One row per group of `group_size` consecutive rows, drawn with probability proportional
    to exp(log_weight + beta_inv * reward): the SMC draw, and the optional reward tilt.

    With rewards this is importance resampling toward pi^alpha exp(beta_inv r) from rows that
    target pi^alpha (an SMC system's particles, or MCMC chains of one prompt); like the SMC
    draw itself it is exact only as the group grows.

    Args:
      samples: `PowerSamples` with B rows, B a multiple of `group_size`.
      key: PRNG key.
      group_size: rows per group.
      rewards_B: optional task reward of every row (computed on the host, e.g. a verifier).
      beta_inv: the tilt's inverse temperature (0: no tilt).

    Returns:
      `PowerSamples` with B / group_size rows; the token and prefill costs of a row are its
      group's totals, the acceptance rate its group's mean, the log weight 0.
    """
    b = samples.log_weights.shape[0]
    if b % group_size:
        raise ValueError(f"{b} rows do not split into groups of group_size={group_size}.")
    logits_B = samples.log_weights
    if rewards_B is not None:
        logits_B = logits_B + beta_inv * rewards_B.astype(jnp.float32)
    logits_GN = logits_B.reshape(-1, group_size)
    groups = logits_GN.shape[0]
    rows_G = jnp.arange(groups) * group_size + jax.random.categorical(key, logits_GN, axis=-1)
    pick = lambda x: x[rows_G]  # noqa: E731
    return PowerSamples(
        rollout=jax.tree.map(pick, samples.rollout),
        log_weights=jnp.zeros((groups,), jnp.float32),
        token_cost=samples.token_cost.reshape(groups, group_size).sum(-1),
        accept_rate=samples.accept_rate.reshape(groups, group_size).mean(-1),
        prefill_cost=samples.prefill_cost.reshape(groups, group_size).sum(-1),
    )


@functools.partial(jax.jit, static_argnames=("config", "sampling", "power"))
def power_smc(
    params: Params,
    prompt_tokens_BP: Int[Array, "Bp P"],
    prompt_mask_BP: Int[Array, "Bp P"],
    key: jax.Array,
    *,
    config: ModelConfig,
    sampling: SamplingConfig,
    power: PowerConfig,
) -> PowerSamples:
    """SMC toward pi^alpha: `sampling.num_samples` draws per prompt, each one particle picked
    by weight from its own system of `power.num_particles`.

    Arguments as `power_smc_particles`. Returns `PowerSamples` with Bp * G rows; a row's token
    cost is its system's (all N particles). For a reward tilt, call `power_smc_particles`,
    score its rows on the host and draw with `select(..., rewards_B=..., beta_inv=...)`.
    """
    k_smc, k_pick = jax.random.split(key)
    particles = power_smc_particles(
        params, prompt_tokens_BP, prompt_mask_BP, k_smc, config=config, sampling=sampling, power=power
    )
    return select(particles, k_pick, group_size=power.num_particles)


def generate_power_text(
    params: Params,
    config: ModelConfig,
    tokenizer,
    prompts: list[str],
    key: jax.Array,
    sampling: SamplingConfig,
    *,
    method: Method,
    power: PowerConfig,
    buckets: tuple[int, ...] | None = None,
) -> tuple[list[str], PowerSamples]:
    """`generate_text` with a power sampler: texts and `PowerSamples` (lengths, token cost)."""
    from sharpjax.rollout.text import DEFAULT_BUCKETS, check_positions, decode_responses, encode_prompts

    if method not in METHODS:
        raise ValueError(f"method={method!r}; expected one of {METHODS}.")
    tokens, mask = encode_prompts(tokenizer, prompts, buckets=buckets or DEFAULT_BUCKETS)
    check_positions(config, tokens.shape[1], sampling)
    fn = power_mcmc if method == "power-mcmc" else power_smc
    out = fn(params, tokens, mask, key, config=config, sampling=sampling, power=power)
    return decode_responses(tokenizer, out.rollout), out


__all__ = [
    "METHODS",
    "PowerConfig",
    "PowerSamples",
    "check_sampling",
    "generate_power_text",
    "mh_log_acceptance",
    "power_mcmc",
    "power_smc",
    "power_smc_particles",
    "select",
]
