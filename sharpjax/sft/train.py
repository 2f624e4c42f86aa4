"""Supervised fine-tuning of a tiny base model on the synthetic arithmetic task, on CPU.

The RL study needs a base model that already *reasons a bit*: it writes the solution
format and gets some answers right, so both sharpening (reward = its own likelihood) and
task-reward RL have something to work with. No weights can be downloaded here, so the
project trains one itself: a small Llama-shaped transformer (`sharpjax.models`), char
tokenizer, next-token loss on the reference solutions of `sharpjax.tasks.arithmetic`
(prompt tokens are context only: the loss covers the response tokens), AdamW, one jitted
step. Training is deliberately short so the model is mediocre (a few tens of percent
correct at temperature 1), which leaves RL room to improve.

    train(config) -> params, model config, tokenizer, history

Accuracy and the cached model directory: `sharpjax.sft.base_model`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int

from sharpjax.models.config import ModelConfig
from sharpjax.models.tokenizer import build_char_tokenizer, left_pad, render_chat
from sharpjax.models.transformer import Params, init_params
from sharpjax.rollout.scoring import score_tokens
from sharpjax.sft.config import SFTConfig, SFTOptimConfig
from sharpjax.tasks.arithmetic import ArithmeticProblem, generate_problems, shortcut_solution, user_message

__all__ = ["SFTHistory", "encode_examples", "sft_loss", "split_problems", "train"]

log = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True)
class SFTHistory:
    """What happened during `train`.

    Attributes:
      loss: per-step training loss (mean negative log-likelihood per response token).
      compile_seconds: the first step (tracing + compilation + one step).
      train_seconds: wall time of all steps, the first included.
    """

    loss: np.ndarray
    compile_seconds: float
    train_seconds: float


# ----------------------------------------------------------------------------- data


def training_solutions(problems: Sequence[ArithmeticProblem], *, shortcut_fraction: float, seed: int) -> list[str]:
    """Each problem's training target: the shortcut (`shortcut_solution`) with probability
    `shortcut_fraction`, else the stepwise reference solution; drawn independently of the problem."""
    rng = np.random.default_rng([seed, 1])  # its own stream: the batch order's draws do not move it
    shortcut = rng.random(len(problems)) < shortcut_fraction
    return [shortcut_solution(p) if s else p.solution for p, s in zip(problems, shortcut)]


def encode_examples(
    tokenizer, problems: Sequence[ArithmeticProblem], *, max_seq_len: int, solutions: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chat-rendered prompt + solution + end-of-turn, left-padded to `max_seq_len`.

    `solutions` (one per problem) replaces the problems' stepwise reference solutions.

    The layout is the sampler's: left-padded prompt, then the response, whose last token is
    the end-of-turn (EOS) token the model must learn to emit.

    Returns:
      (tokens [B, T] int32, attention_mask [B, T] int32 (1 on real tokens),
       response_mask [B, T] int32 (1 on solution tokens and the final EOS)).
    Raises ValueError when an example is longer than `max_seq_len`.
    """
    if not problems:
        raise ValueError("encode_examples needs at least one problem.")
    prompts = [render_chat(tokenizer, user_message(p)) for p in problems]
    if solutions is None:
        solutions = [p.solution for p in problems]
    if len(solutions) != len(problems):
        raise ValueError(f"{len(solutions)} solutions for {len(problems)} problems.")
    responses = [s + tokenizer.eos_token for s in solutions]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    rows = [p + r for p, r in zip(prompt_ids, response_ids)]
    longest = max(len(r) for r in rows)
    if longest > max_seq_len:
        i = max(range(len(rows)), key=lambda j: len(rows[j]))
        raise ValueError(
            f"example {problems[i].id!r} ({problems[i].problem!r}) has {longest} tokens, more than "
            f"max_seq_len={max_seq_len}: raise max_seq_len or make the difficulty easier."
        )
    tokens, attention_mask = left_pad(rows, pad_id=tokenizer.pad_token_id, length=max_seq_len)
    response_mask = np.zeros_like(attention_mask)
    for i, r in enumerate(response_ids):
        response_mask[i, max_seq_len - len(r) :] = 1
    return tokens, attention_mask, response_mask


def split_problems(config: SFTConfig) -> tuple[list[ArithmeticProblem], list[ArithmeticProblem]]:
    """(training pool, held-out eval problems): the task's train and test splits, disjoint
    by construction (`sharpjax.tasks.arithmetic.in_test_split`)."""
    task = config.task
    n = task.num_train_problems or config.optim.steps * config.optim.batch_size
    train_problems = generate_problems(n, seed=config.seed, difficulty=task.difficulty, split="train")
    eval_problems = generate_problems(
        config.eval.eval_problems, seed=config.eval.eval_seed, difficulty=task.difficulty, split="test"
    )
    return train_problems, eval_problems


# ----------------------------------------------------------------------------- loss and step


def sft_loss(
    params: Params,
    tokens_BT: Int[Array, "B T"],
    attention_mask_BT: Int[Array, "B T"],
    response_mask_BT: Int[Array, "B T"],
    *,
    config: ModelConfig,
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """Mean negative log-likelihood of the response tokens (prompt tokens are context only).

    Log-probs come from `sharpjax.rollout.scoring.score_tokens`, the same function the RL
    trainer and reward use, so "likelihood under the base model" means one thing.

    Returns:
      (loss, metrics) with metrics {"loss", "num_tokens"}.
    """
    logprobs_BT = score_tokens(params, tokens_BT, attention_mask_BT, config=config)
    mask_BT = response_mask_BT.astype(jnp.float32)
    num_tokens = mask_BT.sum()
    loss = -(logprobs_BT * mask_BT).sum() / jnp.maximum(num_tokens, 1.0)
    return loss, {"loss": loss, "num_tokens": num_tokens}


def _make_optimizer(optim: SFTOptimConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.learning_rate,
        warmup_steps=optim.warmup_steps,
        decay_steps=optim.steps,
        end_value=optim.learning_rate * optim.final_lr_fraction,
    )
    adamw = optax.adamw(schedule, weight_decay=optim.weight_decay)
    if optim.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(optim.max_grad_norm), adamw)
    return adamw


def _make_step(model_config: ModelConfig, optimizer: optax.GradientTransformation):
    loss_fn = functools.partial(sft_loss, config=model_config)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, tokens_BT, attention_mask_BT, response_mask_BT):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, tokens_BT, attention_mask_BT, response_mask_BT
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def train(config: SFTConfig) -> tuple[Params, ModelConfig, Any, SFTHistory]:
    """Trains a base model from scratch on the arithmetic task.

    Args:
      config: the run (model shape, task, optimization).

    Returns:
      (params, model_config, tokenizer, history).
    """
    task, optim, log_every = config.task, config.optim, config.eval.log_every
    tokenizer = build_char_tokenizer()
    model_config = config.model_config(tokenizer)
    train_problems, _ = split_problems(config)
    # Two encodings of the pool: stepwise only (steps before `shortcut_from_step`) and the mix (from it on).
    solutions = training_solutions(train_problems, shortcut_fraction=task.shortcut_fraction, seed=config.seed)
    encoded = {
        "stepwise": encode_examples(tokenizer, train_problems, max_seq_len=task.max_seq_len),
        "mixed": encode_examples(tokenizer, train_problems, max_seq_len=task.max_seq_len, solutions=solutions),
    }
    log.info(
        "SFT: %d training problems, %s params, %d steps x %d rows x %d tokens",
        len(train_problems),
        f"{model_config.num_params:,}",
        optim.steps,
        optim.batch_size,
        task.max_seq_len,
    )
    key = jax.random.key(config.seed)
    params = init_params(model_config, key)
    optimizer = _make_optimizer(optim)
    opt_state = optimizer.init(params)
    step_fn = _make_step(model_config, optimizer)

    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(train_problems))
    cursor = 0
    losses = []
    start = time.perf_counter()
    compile_seconds = 0.0
    last_log = start
    for step in range(optim.steps):
        if cursor + optim.batch_size > len(order):  # next epoch
            order, cursor = rng.permutation(len(train_problems)), 0
        idx = order[cursor : cursor + optim.batch_size]
        cursor += optim.batch_size
        tokens, attention_mask, response_mask = encoded["mixed" if step >= task.shortcut_from_step else "stepwise"]
        params, opt_state, loss = step_fn(params, opt_state, tokens[idx], attention_mask[idx], response_mask[idx])
        losses.append(loss)
        if step == 0:
            losses[0] = float(loss)
            compile_seconds = time.perf_counter() - start
            if not np.isfinite(losses[0]):
                raise FloatingPointError(f"SFT loss is {losses[0]} at the first step.")
        if (step + 1) % log_every == 0 or step + 1 == optim.steps:
            now = time.perf_counter()
            recent = float(np.mean(jax.device_get(losses[-log_every :])))
            if not np.isfinite(recent):
                raise FloatingPointError(f"SFT loss became {recent} by step {step + 1}; lower learning_rate.")
            log.info(
                "SFT step %d/%d: loss %.4f (%.1f steps/s)",
                step + 1,
                optim.steps,
                recent,
                min(log_every, step + 1) / max(now - last_log, 1e-9),
            )
            last_log = now
    loss_history = np.asarray(jax.device_get(losses), dtype=np.float32)
    history = SFTHistory(loss=loss_history, compile_seconds=compile_seconds, train_seconds=time.perf_counter() - start)
    return params, model_config, tokenizer, history


