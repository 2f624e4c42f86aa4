"""The jitted, sharded RL train step and the reward/advantage computation that feeds it.

    rollout (sampler) --> compute_rewards(ref params, rollout, task rewards)  [jit]
                      --> train_step(state, batch)                              [jit]

`train_step` scores the rollout under the current policy (teacher forcing, remat per
layer), forms the paper's REINFORCE loss with truncated importance weights over RLOO
advantages, accumulates gradients over micro-batches with the *global* token count as the
normalizer (so micro-batching and sharding leave the gradient unchanged), and applies an
optax update. A non-finite loss, gradient, update or updated parameter skips the update
(params and optimizer state unchanged) and is counted in the metrics.

Params are kept in fp32 (master weights: an lr of 1e-6 is below bf16's resolution) and cast
to the model's compute dtype inside the step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import operator
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jaxtyping import Array, Float, Int

from sharpjax.losses import LossConfig, compute_advantages, policy_gradient_loss, reward_metrics
from sharpjax.models.config import ModelConfig
from sharpjax.models.transformer import Params
from sharpjax.parallel import batch_sharding, replicated
from sharpjax.rewards import RewardConfig, make_reward
from sharpjax.rollout.sampler import RolloutBatch
from sharpjax.rollout.scoring import rows_per_micro_batch, score_tokens
from sharpjax.train.config import OptimConfig
from sharpjax.train.optim import make_optimizer, make_schedule


@flax.struct.dataclass
class TrainState:
    """What the step updates. `params` are fp32 master weights."""

    step: Int[Array, ""]
    params: Params
    opt_state: Any


@flax.struct.dataclass
class TrainBatch:
    """One rollout batch, ready for the loss. B = prompts x samples, T = prompt + response.

    Attributes:
      tokens: [B, T] prompt + response tokens.
      attention_mask: [B, T] 1 on real tokens.
      response_mask: [B, T] 1 on response tokens (the loss's tokens).
      rollout_logprobs: [B, T] log-probs of the distribution the sampler drew the tokens from
        (tempered when rollout.temperature != 1): the importance-weight denominator.
      advantages: [B] one advantage per response.
      ref_logprobs: [B, T] frozen reference log-probs (zeros unless the loss has a KL term).
    """

    tokens: Int[Array, "B T"]
    attention_mask: Int[Array, "B T"]
    response_mask: Int[Array, "B T"]
    rollout_logprobs: Float[Array, "B T"]
    advantages: Float[Array, " B"]
    ref_logprobs: Float[Array, "B T"]


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the train step."""

    model: ModelConfig
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    micro_batches: int = 1  # gradient accumulation: the batch is split into this many
    remat: str = "full"  # per-layer jax.checkpoint policy: "none", "full", "dots"
    logits_chunk: int = 256  # positions per chunk of the vocabulary projection
    has_reference: bool = False  # batch.ref_logprobs are real: log the KL to the reference

    def __post_init__(self):
        if self.remat not in ("none", "full", "dots"):  # "auto" is the plan's to resolve, before the step
            raise ValueError(f"StepConfig.remat={self.remat!r}; expected 'none', 'full' or 'dots' "
                             "(resolve 'auto' with sharpjax.plan.preflight_run first).")


def cast_params(params: Params, dtype) -> Params:
    return jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)


def init_train_state(
    params: Params, optimizer: optax.GradientTransformation, mesh: Mesh | None = None
) -> TrainState:
    """A fresh state from (possibly sharded) params; copies, so the caller's arrays (e.g. the
    frozen reference model) never alias the donated, updated policy.

    With a mesh, the optimizer moments take the params' shardings and the scalars (step,
    Adam's count) are replicated over the mesh, so every leaf lives on the same devices.
    """

    def fresh(params):
        master = jax.tree.map(lambda p: jnp.array(p, dtype=jnp.float32, copy=True), params)
        return TrainState(step=jnp.zeros((), jnp.int32), params=master, opt_state=optimizer.init(master))

    if mesh is None:
        return fresh(params)
    scalar = replicated(mesh)
    param_sh = jax.tree.map(lambda p: p.sharding, params)
    abstract = jax.eval_shape(fresh, params)
    opt_sh = optax.tree_map_params(
        optimizer, lambda _, sh: sh, abstract.opt_state, param_sh, transform_non_params=lambda _: scalar
    )
    # Built inside jit with explicit out_shardings: works when the mesh spans several processes.
    return jax.jit(fresh, out_shardings=TrainState(step=scalar, params=param_sh, opt_state=opt_sh))(params)


def state_shardings(state: TrainState) -> TrainState:
    """The shardings a state's arrays already have, as a pytree (for in/out_shardings)."""
    return jax.tree.map(lambda x: x.sharding, state)


def batch_shardings(mesh: Mesh) -> TrainBatch:
    rows2, rows1 = batch_sharding(mesh, 2), batch_sharding(mesh, 1)
    return TrainBatch(
        tokens=rows2, attention_mask=rows2, response_mask=rows2, rollout_logprobs=rows2, advantages=rows1,
        ref_logprobs=rows2,
    )


def _loss_fn(compute, micro: TrainBatch, *, cfg: StepConfig, num_tokens, num_sequences):
    """The loss of one micro-batch, given the params already in the compute dtype."""
    logp_BT = score_tokens(
        compute, micro.tokens, micro.attention_mask, config=cfg.model, remat=cfg.remat, chunk_size=cfg.logits_chunk
    )
    return policy_gradient_loss(
        logp_BT,
        rollout_logp_BT=micro.rollout_logprobs,
        advantages_B=micro.advantages,
        mask_BT=micro.response_mask,
        config=cfg.loss,
        ref_logp_BT=micro.ref_logprobs if cfg.loss.kl_coef > 0 or cfg.has_reference else None,
        num_tokens=num_tokens,
        num_sequences=num_sequences,
    )


def _split_micro(batch: TrainBatch, n: int) -> TrainBatch:
    return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)


def _gradient(compute: Params, micro: TrainBatch, *, cfg: StepConfig, num_tokens, num_sequences):
    """One micro-batch's metrics and gradient with respect to the compute-dtype params."""
    grad_fn = jax.value_and_grad(
        functools.partial(_loss_fn, cfg=cfg, num_tokens=num_tokens, num_sequences=num_sequences), has_aux=True
    )
    (_, metrics), g = grad_fn(compute, micro)
    return metrics, g


def _to_master(g: Params, like: Params) -> Params:
    """A compute-dtype gradient in the fp32 master's dtype: the cast's own VJP, so the same
    gradients as differentiating through the cast."""
    return jax.tree.map(lambda g_i, p: g_i.astype(p.dtype), g, like)


def _accumulate(grads: Params, compute: Params, micro: TrainBatch, **loss_kwargs):
    """grads (fp32) + one micro-batch's gradient, and its metrics."""
    metrics, g = _gradient(compute, micro, **loss_kwargs)
    return jax.tree.map(jnp.add, grads, _to_master(g, grads)), metrics


def _combine_micro_metrics(metrics: dict[str, Array]) -> dict[str, Array]:
    """Per-micro-batch metrics, stacked on a leading axis, as one batch's: losses are already
    globally normalized, so they add up; the others are averaged over the micro-batches."""
    return {k: (v.sum() if k.endswith("loss") else v.mean()) for k, v in metrics.items()}


def train_step(state: TrainState, batch: TrainBatch, *, cfg: StepConfig) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer update on one rollout batch (pure; jit it with `make_train_step`).

    Returns:
      (new state, metrics): the loss metrics averaged over micro-batches, plus grad_norm,
      update_norm, learning_rate, update_skipped (1.0 when a non-finite loss, gradient, update or
      updated parameter skipped the update: params and optimizer state are left unchanged).
    """
    if batch.tokens.shape[0] % cfg.micro_batches:
        raise ValueError(f"batch of {batch.tokens.shape[0]} rows is not divisible by micro_batches={cfg.micro_batches}.")
    loss_kwargs = dict(cfg=cfg, num_tokens=count_response_tokens(batch),
                       num_sequences=jnp.asarray(batch.tokens.shape[0], jnp.float32))

    # The params are cast once, here: inside the micro-batch scan XLA casts them again in every
    # micro-batch (6 bytes/param each: 19 GB per micro-batch at 3B).
    compute = cast_params(state.params, cfg.model.jnp_dtype)
    if cfg.micro_batches == 1:
        # No accumulator: a second full-size fp32 gradient buffer costs 4 bytes/param of HBM.
        metrics, g = _gradient(compute, batch, **loss_kwargs)
        grads = _to_master(g, state.params)
    else:
        zeros = jax.tree.map(jnp.zeros_like, state.params)
        grads, metrics = jax.lax.scan(lambda g, micro: _accumulate(g, compute, micro, **loss_kwargs), zeros,
                                      _split_micro(batch, cfg.micro_batches))
        metrics = _combine_micro_metrics(metrics)
    return apply_gradients(state, grads, metrics, cfg=cfg)


def count_response_tokens(batch: TrainBatch) -> Float[Array, ""]:
    """The loss's global normalizer: the batch's response tokens (at least 1), fp32."""
    return jnp.maximum(batch.response_mask.sum(), 1).astype(jnp.float32)


def apply_gradients(state: TrainState, grads: Params, metrics: dict[str, Array], *,
                    cfg: StepConfig) -> tuple[TrainState, dict[str, Array]]:
    """The optimizer update from a batch's accumulated fp32 gradient, skipped (params and
    optimizer state unchanged) when the loss, the gradient, the update or a new param is not
    finite. `metrics` are the batch's loss metrics; returned with grad_norm, update_norm,
    learning_rate and update_skipped added."""
    optimizer = make_optimizer(cfg.optim)

    def adamw(opt_state, params):
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        return updates, new_opt_state, optax.apply_updates(params, updates)

    updates, _, new_params = adamw(state.opt_state, state.params)
    grad_norm = optax.tree.norm(grads)
    # The update is checked too: a finite gradient times a NaN (or overflowing) learning rate
    # would otherwise turn every parameter into NaN while the loss and gradient look fine.
    # One reduction per leaf checks both the update and the new params: optax.tree.norm's sum of
    # u^2 (+ 0), with the 0 taken as p' * 0 (NaN where a new param is not finite, else +-0, and
    # u^2 + -0 = u^2). Two reductions over the update would make XLA write it out and read it
    # back; this one reads (g, mu, nu, p) and writes nothing per param. The norm is the sum of
    # the same squares, its fp32 summation order XLA's (last-bit differences from optax's), and
    # NaN when a new param is not finite.
    update_sq = jax.tree.reduce(
        operator.add, jax.tree.map(lambda u, p: jnp.sum(jnp.square(u) + p * 0.0), updates, new_params), initializer=0
    )
    update_norm = jnp.sqrt(update_sq)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    # The committed update is the same elementwise AdamW step computed again inside the select:
    # the barrier hides that it repeats the one checked above, so XLA fuses it into one pass that
    # reads (g, mu, nu, p) and writes (mu, nu, p) in place, instead of writing the new params and
    # moments for the check and reading them back to select (the same ops on the same inputs:
    # the same values). Compiled for an H200, the 3B step's optimizer phase falls from 67 to 51
    # bytes/param (BENCHMARKS.md, issue 28 item 6).
    _, new_opt_state, new_params = adamw(*jax.lax.optimization_barrier((state.opt_state, state.params)))
    new_state = TrainState(
        step=state.step + 1,
        params=keep(new_params, state.params),
        opt_state=keep(new_opt_state, state.opt_state),
    )
    metrics |= {
        "grad_norm": grad_norm,
        "update_norm": update_norm,
        "learning_rate": make_schedule(cfg.optim)(state.step),
        "update_skipped": 1.0 - finite.astype(jnp.float32),
    }
    return new_state, metrics


def make_train_step(cfg: StepConfig, state: TrainState, mesh: Mesh | None) -> Callable:
    """`jax.jit(train_step)` with explicit in/out shardings and the old state donated."""
    fn = functools.partial(train_step, cfg=cfg)
    if mesh is None:
        return jax.jit(fn, donate_argnums=0)
    shardings = state_shardings(state)
    return jax.jit(
        fn,
        in_shardings=(shardings, batch_shardings(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=0,
    )


# ---- train.group_by_length: one program per micro-batch, trimmed to its own rows ------------

@dataclasses.dataclass(frozen=True)
class GroupedUpdate:
    """The update as three kinds of program, so that each micro-batch has its own width.

    `train_step` scans micro-batches of one shape: every row is as wide as the batch's longest
    response. Here the rows are sorted by response length and each micro-batch runs as its own
    program, trimmed to its own longest row (`length_grouped_update`): with realistic lengths
    (a long tail to the budget) most micro-batches are far narrower than the batch. The loss is
    normalized by the whole batch's token and row counts, so the summed gradient is the same
    up to fp32 summation order.

    Attributes:
      start: state -> (zero fp32 gradients, compute-dtype params): once a step.
      micro: (grads, compute, micro batch, num_tokens, num_sequences) -> (grads + its gradient,
        its metrics), grads donated: one compile per micro-batch width.
      apply: (state, grads, [metrics of each micro-batch]) -> (new state, metrics), the state
        donated: `apply_gradients` on the summed gradient, metrics combined as `train_step` does.
    """

    start: Callable
    micro: Callable
    apply: Callable


def make_grouped_update(cfg: StepConfig, state: TrainState, mesh: Mesh | None) -> GroupedUpdate:
    def start_update(state):
        return jax.tree.map(jnp.zeros_like, state.params), cast_params(state.params, cfg.model.jnp_dtype)

    def train_micro_batch(grads, compute, micro, num_tokens, num_sequences):
        return _accumulate(grads, compute, micro, cfg=cfg, num_tokens=num_tokens, num_sequences=num_sequences)

    def apply_update(state, grads, micro_metrics):
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *micro_metrics)
        return apply_gradients(state, grads, _combine_micro_metrics(stacked), cfg=cfg)

    if mesh is None:
        return GroupedUpdate(start=jax.jit(start_update), micro=jax.jit(train_micro_batch, donate_argnums=0),
                             apply=jax.jit(apply_update, donate_argnums=0))
    state_sh, scalar = state_shardings(state), replicated(mesh)
    params_sh = state_sh.params
    return GroupedUpdate(
        start=jax.jit(start_update, in_shardings=(state_sh,), out_shardings=(params_sh, params_sh)),
        micro=jax.jit(train_micro_batch, donate_argnums=0,
                      in_shardings=(params_sh, params_sh, batch_shardings(mesh), scalar, scalar),
                      out_shardings=(params_sh, scalar)),
        apply=jax.jit(apply_update, donate_argnums=0, in_shardings=(state_sh, params_sh, scalar),
                      out_shardings=(state_sh, scalar)),
    )


def _not_logged(*_):  # `program` when no CompileLog is given
    return contextlib.nullcontext()


def length_grouped_micro_batches(response_lengths, micro_batches: int, *, prompt_len: int, budget: int,
                                 width_step: int | None) -> list[tuple[Any, int]]:
    """(row indices, width) of each micro-batch of `length_grouped_update`: the rows sorted by
    response length, longest first, cut into `micro_batches` equal groups, each as wide as the
    prompt plus its longest response trimmed as `trim_padding` trims a batch (one grid of widths,
    so the micro-batch program compiles once per width)."""
    from sharpjax.rollout.sampler import trimmed_response_slots

    lengths = np.asarray(response_lengths)
    rows = len(lengths)
    if rows % micro_batches:
        raise ValueError(f"batch of {rows} rows is not divisible by micro_batches={micro_batches}.")
    order = np.argsort(-lengths, kind="stable")
    per = rows // micro_batches
    groups = []
    for i in range(micro_batches):
        idx = order[i * per:(i + 1) * per]
        keep = trimmed_response_slots(budget, int(lengths[idx].max()), prompt_len=prompt_len, width_step=width_step)
        groups.append((idx, prompt_len + keep))
    return groups


def length_grouped_update(update: GroupedUpdate, state: TrainState, batch: TrainBatch, response_lengths, *,
                          micro_batches: int, prompt_len: int, width_step: int | None = None,
                          put_rows: Callable = jnp.asarray, program=None) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer update on `batch` with length-grouped micro-batches (`GroupedUpdate`).

    Args:
      batch: the step's [B, T] `TrainBatch` as numpy arrays (host: its micro-batches are cut
        there, so no gather program compiles per width).
      response_lengths: [B] response tokens of each row.
      prompt_len: P, the prompt columns of every row.
      width_step: the trimmed widths' grid (`train.compiles.width_step`), or None.
      put_rows: places a micro-batch's host rows on the devices (the trainer's row sharding).
      program: None, or `CompileLog.program` to log each program's compiles with its shape.

    Returns:
      As `train_step`.
    """
    program = program or _not_logged
    num_tokens = np.float32(max(int(np.asarray(batch.response_mask).sum()), 1))
    num_sequences = np.float32(batch.tokens.shape[0])
    with program("train_start", (), "start_update"):
        grads, compute = update.start(state)
    metrics = []
    budget = batch.tokens.shape[1] - prompt_len
    for idx, width in length_grouped_micro_batches(response_lengths, micro_batches, prompt_len=prompt_len,
                                                   budget=budget, width_step=width_step):
        micro = jax.tree.map(lambda x: put_rows(np.ascontiguousarray(x[idx, :width] if x.ndim == 2 else x[idx])),
                             batch)
        with program("train_micro", (len(idx), width), "train_micro_batch"):
            grads, m = update.micro(grads, compute, micro, num_tokens, num_sequences)
        metrics.append(m)
    del compute
    with program("train_apply", (), "apply_update"):
        return update.apply(state, grads, metrics)


@flax.struct.dataclass
class ScoredRollout:
    """Rewards and advantages of one rollout batch (outputs of `compute_rewards`)."""

    batch: TrainBatch
    metrics: dict[str, Array]
    rewards: Float[Array, " B"]


def reference_logprobs(
    ref_params: Params,
    rollout: RolloutBatch,
    *,
    model: ModelConfig,
    logits_chunk: int = 256,
    tokens_per_micro_batch: int | None = None,
    row_shards: int = 1,
) -> Float[Array, "B T"]:
    """The frozen reference model's per-token log-probs of a rollout (jit it on its own so it
    can be dispatched before the host verifies the answers: `Trainer.rollout_and_update`).

    With `tokens_per_micro_batch` (tokens per device, `train.tokens_per_micro_batch`) it runs
    a row micro-batch at a time so its activation memory is bounded whatever the batch
    (`rows_per_micro_batch`; `row_shards`: devices the rows are sharded over). None: all rows
    in one pass.
    """
    rows = None
    if tokens_per_micro_batch is not None:
        rows = rows_per_micro_batch(
            *rollout.tokens.shape, tokens_per_micro_batch=tokens_per_micro_batch, row_shards=row_shards
        )
    return score_tokens(
        cast_params(ref_params, model.jnp_dtype), rollout.tokens, rollout.attention_mask, config=model,
        chunk_size=logits_chunk, micro_batch_rows=rows,
    )


def reference_rows(ref_params: Params, tokens_BT: Int[Array, "B T"], attention_mask_BT: Int[Array, "B T"], *,
                   model: ModelConfig, logits_chunk: int = 256) -> Float[Array, "B T"]:
    """The frozen reference's per-token log-probs of some rows in one pass: one group of the
    length-grouped scoring (`dispatch_grouped_reference`), as `reference_logprobs` scores a batch."""
    return score_tokens(cast_params(ref_params, model.jnp_dtype), tokens_BT, attention_mask_BT, config=model,
                        chunk_size=logits_chunk)


def dispatch_grouped_reference(ref_rows: Callable, ref_params: Params, tokens, attention_mask, response_lengths, *,
                               rows_per_group: int, prompt_len: int, width_step: int | None,
                               put_rows: Callable = jnp.asarray, program=None, **kwargs) -> list:
    """With `train.group_by_length`, the reference scoring as the update is cut: rows sorted by
    response length, groups of `rows_per_group` rows, each as wide as its longest row on the
    trimmed-width grid (`length_grouped_micro_batches`), one `ref_rows` call each (jitted
    `reference_rows`; `kwargs` its static settings). Only dispatched: `assemble_rows` waits.

    Args:
      tokens, attention_mask: the step's [B, T] host arrays (numpy).
      response_lengths: [B] response tokens of each row.

    Returns:
      [(row indices, width, [rows, width] log-probs on the device)] of each group.
    """
    program = program or _not_logged
    groups = length_grouped_micro_batches(response_lengths, len(tokens) // rows_per_group, prompt_len=prompt_len,
                                          budget=tokens.shape[1] - prompt_len, width_step=width_step)
    out = []
    for idx, width in groups:
        with program("reference", (len(idx), width), "reference_rows"):
            logp = ref_rows(ref_params, put_rows(tokens[idx, :width]), put_rows(attention_mask[idx, :width]), **kwargs)
        out.append((idx, width, logp))
    return out


def assemble_rows(groups: list, shape: tuple[int, int]):
    """[B, T] numpy of `dispatch_grouped_reference`'s groups, each row back in its place; the
    columns past a group's width (past every response of its rows) are 0."""
    from sharpjax.parallel import to_host

    out = np.zeros(shape, np.float32)
    for idx, width, logp in groups:
        out[idx, :width] = to_host(logp)
    return out


def compute_rewards(
    ref_params: Params | None,
    rollout: RolloutBatch,
    task_reward_B: Float[Array, " B"] | None,
    *,
    model: ModelConfig,
    reward: RewardConfig,
    loss: LossConfig,
    group_size: int,
    logits_chunk: int = 256,
    score_reference: bool = False,
    tokens_per_micro_batch: int | None = None,
    row_shards: int = 1,
    ref_logp_BT: Float[Array, "B T"] | None = None,
) -> ScoredRollout:
    """R = w_task r + w_ref L_ref - w_pol L_pol per response, RLOO advantages, the loss batch.

    L_ref is scored under the frozen reference params (skipped when neither the reward nor
    a KL term needs it, unless `score_reference`: then it is only logged, e.g. for the
    KL(pi || base) curve); L_pol is the sampler's own log-probs at temperature 1 (the trained
    policy's log-likelihood). The batch's importance-weight denominator is the sampled
    distribution's log-probs (`rollout.sampling_logprobs`), so at temperature T != 1 the
    truncated weight min(pi / q_T, cap) turns samples of q_T into on-policy gradient estimates
    exactly for one-token responses only (longer ones stay biased: `RunConfig` refuses T != 1
    in training). `task_reward_B` is logged (reward/task) even when w_task = 0.
    `ref_logp_BT`, when given, is that scoring already done (`reference_logprobs`, dispatched
    earlier so it overlaps the host's answer verification); `ref_params` is then unused.

    The reference pass covers every row of the step; see `reference_logprobs` for
    `tokens_per_micro_batch` and `row_shards`.
    """
    needs_ref = reward.needs_ref_logprobs or loss.kl_coef > 0 or score_reference
    if needs_ref and ref_params is None and ref_logp_BT is None:
        raise ValueError("this reward/loss needs the reference model's log-probs but ref_params is None.")
    mask = rollout.response_mask
    ref_logp = ref_logp_BT if needs_ref else None
    if needs_ref and ref_logp is None:
        ref_logp = reference_logprobs(
            ref_params, rollout, model=model, logits_chunk=logits_chunk,
            tokens_per_micro_batch=tokens_per_micro_batch, row_shards=row_shards,
        )
    out = make_reward(reward)(
        mask_BT=mask,
        task_reward_B=task_reward_B,  # weighted by w_task; logged as reward/task whatever the weight
        ref_logp_BT=ref_logp,
        pol_logp_BT=rollout.logprobs,
    )
    rewards_PG = out.reward_B.reshape(-1, group_size)
    advantages = compute_advantages(rewards_PG, config=loss).reshape(-1)
    metrics = reward_metrics(rewards_PG) | out.metrics()
    batch = TrainBatch(
        tokens=rollout.tokens,
        attention_mask=rollout.attention_mask,
        response_mask=mask,
        # The behaviour policy of the importance weight is what the tokens were drawn from (at
        # T != 1 the tempered distribution), while L_pol above is the policy's own likelihood.
        rollout_logprobs=rollout.sampling_logprobs,
        advantages=advantages,
        ref_logprobs=jnp.zeros_like(rollout.logprobs) if ref_logp is None else ref_logp,
    )
    return ScoredRollout(batch=batch, metrics=metrics, rewards=out.reward_B)


def scores_reference(reward: RewardConfig, loss: LossConfig, *, always: bool = False) -> bool:
    """Whether a step scores the rollout under the frozen reference: the reward (a likelihood
    reward) or the loss (a KL term) reads its log-probs, or the run logs the KL to it anyway
    (`train.score_reference_always`)."""
    return reward.needs_ref_logprobs or loss.kl_coef > 0 or always


@dataclasses.dataclass(frozen=True)
class StepFunctions:
    """The jitted programs of one RL step, built once per run by `build_step`.

    Attributes:
      config: the train step's static settings.
      train_step: `(state, batch) -> (state, metrics)`, the old state donated.
      rewards: `jax.jit(compute_rewards)` (static settings by keyword).
      ref_logprobs: `jax.jit(reference_logprobs)` (static settings by keyword).
      needs_ref: the reward or the loss reads the reference's log-probs.
      score_ref: the step scores the reference (`needs_ref`, or `train.score_reference_always`).
      grouped: with `train.group_by_length`, the update's programs (`length_grouped_update`
        runs them in place of `train_step`); else None.
      ref_rows: `jax.jit(reference_rows)`, with `train.group_by_length` the reference scoring's
        program (`dispatch_grouped_reference`).
    """

    config: StepConfig
    train_step: Callable
    rewards: Callable
    ref_logprobs: Callable
    needs_ref: bool
    score_ref: bool
    grouped: GroupedUpdate | None = None  # train.group_by_length
    ref_rows: Callable | None = None  # jitted `reference_rows`: the length-grouped reference scoring


def build_step(
    model: ModelConfig, params: Params, mesh: Mesh | None, *, reward: RewardConfig, loss: LossConfig,
    optim: OptimConfig, train,
) -> tuple[StepFunctions, TrainState]:
    """The train state (an fp32 copy of `params` + AdamW, sharded like them) and the step's jitted
    programs, from the run's reward, loss, optim and train (`TrainConfig`) sections."""
    needs_ref = scores_reference(reward, loss)
    score_ref = needs_ref or train.score_reference_always
    cfg = StepConfig(
        model=model, loss=loss, optim=optim, micro_batches=train.micro_batches, remat=train.remat,
        logits_chunk=train.logits_chunk, has_reference=score_ref,
    )
    state = init_train_state(params, make_optimizer(optim), mesh)
    rewards = jax.jit(
        compute_rewards,
        static_argnames=("model", "reward", "loss", "group_size", "logits_chunk", "score_reference",
                         "tokens_per_micro_batch", "row_shards"),
    )
    ref_logprobs = jax.jit(
        reference_logprobs, static_argnames=("model", "logits_chunk", "tokens_per_micro_batch", "row_shards")
    )
    fns = StepFunctions(config=cfg, train_step=make_train_step(cfg, state, mesh), rewards=rewards,
                        ref_logprobs=ref_logprobs, needs_ref=needs_ref, score_ref=score_ref,
                        grouped=make_grouped_update(cfg, state, mesh) if train.group_by_length else None,
                        ref_rows=jax.jit(reference_rows, static_argnames=("model", "logits_chunk")))
    return fns, state
