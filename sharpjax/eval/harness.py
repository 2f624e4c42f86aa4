"""The one evaluation harness: render prompts, sample n responses each, verify, summarize.

Training validation, the SFT base model's accuracy, the main job and the CLI all evaluate
through `evaluate`, with the task's renderer and verifier (`sharpjax.tasks.Task`).

`evaluate` is the paper's protocol (PAPER.md, Evaluation): every problem gets the same
instruction prompt rendered with the model's chat template, n samples (16 in the paper,
temperature 1.0, top-p 1.0), a math-verify check of each response's boxed answer against the
reference, and pass@k / maj@k over the samples (`sharpjax.eval.metrics`).

Prompts are sampled in fixed-size batches (the last one padded with copies of its last
prompt, whose samples are dropped) so the jitted sampler compiles once per prompt-length
bucket, not once per batch shape. Batch i samples with `fold_in(key, i)`, so a run is
deterministic given the key and the batch size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import numpy as np
import tqdm

from sharpjax.data.prompts import render_prompt
from sharpjax.eval.metrics import DEFAULT_KS, ProblemRecord, summarize
from sharpjax.models.config import ModelConfig
from sharpjax.models.tokenizer import bucket_length
from sharpjax.models.transformer import Params
from sharpjax.parallel import to_host
from sharpjax.rewards import verify_batch
from sharpjax.rewards.math import Fallback, Verifier
from sharpjax.rollout.sampler import SamplingConfig
from sharpjax.rollout.text import DEFAULT_BUCKETS, check_positions, fit_sampling, generate_text
from sharpjax.tasks.base import VerifyFn

__all__ = ["EvalProblem", "EvalResult", "check_context", "default_render_fn", "evaluate"]


class EvalProblem(Protocol):
    """What `evaluate` reads from a problem (e.g. `sharpjax.data.Problem`); `id` optional."""

    problem: str
    answer: str


def default_render_fn(tokenizer) -> Callable[[str], str]:
    """Problem text -> model input: the paper's instruction prompt (`sharpjax.data.format_prompt`)
    as one user turn in the tokenizer's chat template (generation prompt on, no system prompt)."""
    return lambda text: render_prompt(tokenizer, text)


def check_context(
    model_config: ModelConfig,
    tokenizer,
    prompts: Sequence[str],
    sampling: SamplingConfig,
    *,
    buckets: tuple[int, ...] = DEFAULT_BUCKETS,
) -> list[int]:
    """Raises ValueError, before any sampling, if a rendered prompt cannot be sampled; returns
    every prompt's length in tokens.

    The longest prompt decides the largest bucket any batch pads to; that bucket plus
    `sampling.max_new_tokens` must fit the model's context (the sampler's own check would
    otherwise fire mid-run, after earlier batches or benchmarks were sampled). With
    `sampling.max_total_length`, that must fit the context and leave every prompt a response.
    """
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    longest = int(np.argmax(lengths))
    try:
        bucket = bucket_length(lengths[longest], buckets)
    except ValueError as e:
        raise ValueError(f"prompt {longest} ({lengths[longest]} tokens): {e}") from None
    if sampling.max_total_length is not None:
        try:
            fit_sampling(sampling, [lengths[longest]])
            check_positions(model_config, bucket, sampling)
        except ValueError as e:
            raise ValueError(f"prompt {longest} ({lengths[longest]} tokens): {e}") from None
    elif bucket + sampling.max_new_tokens > model_config.max_position_embeddings:
        raise ValueError(
            f"prompt {longest} has {lengths[longest]} tokens (padded to {bucket}); with max_new_tokens "
            f"{sampling.max_new_tokens} it exceeds the model's context of {model_config.max_position_embeddings}."
        )
    return lengths


@dataclasses.dataclass
class EvalResult:
    """The outcome of `evaluate`.

    Attributes:
      records: One `ProblemRecord` per problem, in input order.
      summary: `metrics.summarize(records)`: pass@k, maj@k, mean@1, lengths, rates.
    """

    records: list[ProblemRecord]
    summary: dict[str, float | int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: {"summary": ..., "records": [record dicts]}."""
        return {"summary": dict(self.summary), "records": [r.to_dict() for r in self.records]}


def evaluate(
    params: Params,
    model_config: ModelConfig,
    tokenizer,
    problems: Sequence[EvalProblem],
    *,
    sampling: SamplingConfig,
    key: jax.Array,
    num_samples: int | None = None,
    batch_size: int = 8,
    render_fn: Callable[[str], str] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    keep_responses: bool = True,
    verify_fn: VerifyFn | None = None,
    verify_timeout_s: float = 5.0,
    num_workers: int | None = None,
    fallback: Fallback = "none",
    verifier: Verifier = "boxed",
    merge_correct: bool = True,
    maj_num_draws: int | None = None,
    buckets: tuple[int, ...] = DEFAULT_BUCKETS,
    progress: bool = True,
    desc: str = "eval",
    generate_fn: Callable | None = None,
) -> EvalResult:
    """Samples n responses per problem, verifies them and computes pass@k / maj@k.

    Args:
      params: Model params (may be sharded).
      model_config: The architecture.
      tokenizer: The model's tokenizer (chat template, pad token).
      problems: Objects with `.problem` (text) and `.answer` (bare reference answer), and
        optionally `.id`; e.g. `sharpjax.data.Problem`.
      sampling: Sampling settings (temperature, top-p, max_new_tokens, stop tokens, ...).
      key: PRNG key; the same key (and batch size) gives the same result.
      num_samples: n per problem; None: `sampling.num_samples`.
      batch_size: Prompts per sampler call (rows = batch_size * n).
      render_fn: Problem text -> model input string; default `default_render_fn(tokenizer)`.
      ks: The k of pass@k and maj@k (those above n are left out).
      keep_responses: Store the response texts in the records.
      verify_fn: (responses, references) -> `VerifyResult`s, e.g. a `Task`'s `verify`;
        None: math-verify (`sharpjax.rewards.verify_batch`) with the three settings below.
      verify_timeout_s, num_workers, fallback, verifier: passed to `sharpjax.rewards.verify_batch`
        when `verify_fn` is None (num_workers=0 verifies in this process; verifier "math_verify"
        is the paper's reward).
      merge_correct, maj_num_draws: passed to `metrics.maj_at_k` (exact by default).
      buckets: Prompt-length buckets of the sampler.
      progress: Show a tqdm progress bar (in prompts).
      desc: The progress bar's label (e.g. the benchmark name).
      generate_fn: Replaces `generate_text` (same arguments and (texts, batch) return), e.g.
        `functools.partial(sharpjax.rollout.power.generate_power_text, method=..., power=...)`;
        a batch with a `token_cost` (tokens drawn per sample, rejected proposals and particles
        included) sets the summary's `token_cost_per_problem`; otherwise that is the lengths.
        Likewise `prefill_cost` (prompt + prefix re-read per proposal) sets
        `prefill_tokens_per_problem`; otherwise that is the prompt's length (one prefill).

    Returns:
      An `EvalResult`: per-problem records and their summary.
    """
    if not problems:
        raise ValueError("no problems to evaluate.")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    if num_samples is not None and num_samples != sampling.num_samples:
        sampling = dataclasses.replace(sampling, num_samples=num_samples)
    g = sampling.num_samples
    render_fn = render_fn or default_render_fn(tokenizer)
    prompts = [render_fn(p.problem) for p in problems]
    references = [str(p.answer) for p in problems]
    ids = [str(getattr(p, "id", i)) for i, p in enumerate(problems)]
    prompt_lengths = check_context(model_config, tokenizer, prompts, sampling, buckets=buckets)
    bs = min(batch_size, len(problems))

    records: list[ProblemRecord] = []
    costs: list[int] = []  # tokens drawn per problem, all of its samples
    prefills: list[int] = []  # tokens prefilled per problem
    generate = generate_fn or generate_text
    with tqdm.tqdm(total=len(problems), desc=desc, unit="prompt", disable=not progress) as bar:
        for batch_index, start in enumerate(range(0, len(problems), bs)):
            batch = prompts[start : start + bs]
            real = len(batch)
            batch = batch + [batch[-1]] * (bs - real)  # Static shape: one compile per bucket.
            texts, rollout = generate(
                params, model_config, tokenizer, batch, jax.random.fold_in(key, batch_index), sampling, buckets=buckets
            )
            texts = texts[: real * g]
            lengths = to_host(rollout.lengths)[: real * g]
            finished = to_host(rollout.finished)[: real * g]
            cost = to_host(getattr(rollout, "token_cost", rollout.lengths))[: real * g]
            costs += [int(cost[i * g : (i + 1) * g].sum()) for i in range(real)]
            if hasattr(rollout, "prefill_cost"):  # every proposal re-reads prompt + prefix
                pre = to_host(rollout.prefill_cost)[: real * g]
                prefills += [int(pre[i * g : (i + 1) * g].sum()) for i in range(real)]
            else:  # one prefill of the prompt, shared by its samples
                prefills += prompt_lengths[start : start + real]
            refs = [references[start + i // g] for i in range(real * g)]
            if verify_fn is None:
                results = verify_batch(
                    texts, refs, timeout_s=verify_timeout_s, num_workers=num_workers, fallback=fallback,
                    verifier=verifier,
                )
            else:
                results = list(verify_fn(texts, refs))
            for i in range(real):
                rows = slice(i * g, (i + 1) * g)
                res = results[rows]
                records.append(
                    ProblemRecord(
                        id=ids[start + i],
                        reference=references[start + i],
                        correct=[r.score > 0 for r in res],
                        answers=[r.canonical for r in res],
                        extracted=[r.extracted for r in res],
                        lengths=[int(x) for x in lengths[rows]],
                        finished=[bool(x) for x in finished[rows]],
                        responses=list(texts[rows]) if keep_responses else None,
                    )
                )
            bar.update(real)
            bar.set_postfix(acc=f"{np.mean([c for r in records for c in r.correct]):.3f}")
    summary = summarize(records, ks, merge_correct=merge_correct, maj_num_draws=maj_num_draws)
    summary["token_cost_per_problem"] = float(np.mean(costs))
    summary["prefill_tokens_per_problem"] = float(np.mean(prefills))
    return EvalResult(records=records, summary=summary)
