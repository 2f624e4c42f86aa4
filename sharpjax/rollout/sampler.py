"""Jitted sampling: one prefill, then a `lax.while_loop` decode over a preallocated KV cache.

The prefill runs once per prompt. By default (`SamplingConfig.share_prompt_kv`) its keys and
values stay one copy per prompt, and the G samples of the RLOO group attend to that shared
prompt cache plus their own response cache; otherwise the prompt cache is repeated G times
into one [B, P + M] cache. Each decode step samples one token per row, records its log-prob
under the policy at temperature 1 (what the loss and the -L_pol reward need), and stops
early once every row has emitted a stop token (unless `ignore_eos`, the paper's fixed-length
runs). A step (`decode_step`) reads per-layer weights sliced once before the loop, and on one
GPU its attention reads only each row's filled cache slots (`SamplingConfig.decode_attention`),
and none of a row that has finished (`SamplingConfig.skip_finished_rows`).

Shape letters: B rows (prompts x samples), P prompt length, M max new tokens, S = P + M
cache slots (M with a shared prompt cache), V vocab.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from sharpjax.models.config import ModelConfig
from sharpjax.models.transformer import (
    DECODE_ATTENTION,
    KVCache,
    Params,
    decode_step,
    forward,
    logits,
    unstack_layers,
)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample (static: changing it recompiles).

    Attributes:
      max_new_tokens: M, response length budget (the allocation: every row's budget is at most M).
      max_total_length: None, or each row's budget is at most this minus its own prompt's
        length (the paper's `max_total_sequence_length`: NeMo RL + vLLM give each response
        the room its prompt leaves). M must then cover the batch's shortest prompt for its
        rows to get their whole budget (`rollout.text.fit_sampling` picks it per batch).
      num_samples: G, samples per prompt (the RLOO group), sharing one prefill.
      temperature: softmax temperature (paper: 1.0). Ignored when `greedy`.
      top_p: nucleus mass (1.0 = off, the paper's setting).
      top_k: keep the k most likely tokens (0 = off, the paper's setting).
      greedy: argmax decoding.
      ignore_eos: never stop early; every response has M tokens (fixed-length runs).
      stop_token_ids: ids that end a response (EOS / end-of-turn); included in the response.
      pad_id: id written after a response ends.
      decode_attention: "auto" (on a single NVIDIA GPU, a Pallas kernel that reads only
        each row's filled cache slots; on several devices, on other backends, or when P + M
        is not a multiple of 16, the dense XLA attention), "xla" (always dense), or
        "pallas_interpret" (the kernel in Pallas' interpreter: slow, for tests). Prompts
        must be left-padded.
      share_prompt_kv: keep one prompt KV cache per prompt, [Bp, P] slots, and a response
        cache per row, [B, M] slots, and decode with attention over both parts merged by
        their softmax statistics (exact up to fp32 rounding). Off: the prompt cache is
        repeated to all B = Bp * G rows, a [B, P + M] cache. Sharing saves (G - 1) * Bp * P
        slots of cache memory and of reads per decode step. With G = 1 there is nothing to
        share (the two layouts hold and read the same slots), so the sampler keeps the one
        [B, P + M] cache: one attention call per layer, not two and their merge
        (`uses_shared_prompt_kv`). Each part uses the Pallas kernel under `decode_attention`
        when its slot count (P, resp. M) is a multiple of 16.
      skip_finished_rows: a row that has stopped (stop token or its budget) reads no KV cache
        in the length-aware Pallas attention for the rest of the call, so the decode's KV reads
        follow the tokens actually generated, not the longest row times the batch (the weights
        are still read once a step until the longest row ends). Tokens,
        log-probs, lengths and flags are the same either way (bitwise: a finished row's
        outputs are discarded); off only as a baseline (benchmarks, tests). The dense "xla"
        attention reads every row regardless.
    """

    max_new_tokens: int = 64
    max_total_length: int | None = None
    num_samples: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    pad_id: int = 0
    decode_attention: str = "auto"
    share_prompt_kv: bool = True
    skip_finished_rows: bool = True

    @property
    def uses_shared_prompt_kv(self) -> bool:
        """Whether `sample` splits the cache into prompt and response parts: `share_prompt_kv`
        and more than one sample per prompt. At G = 1 the split saves no slot and costs a second
        attention call per layer and a merge (144 of 612 GPU kernels per decode step at the 3B
        benchmark shape, compile-only count)."""
        return self.share_prompt_kv and self.num_samples > 1

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1.")
        if self.max_total_length is not None and self.max_total_length < 2:
            raise ValueError(f"max_total_length={self.max_total_length} must be >= 2 (a prompt token and a response).")
        if self.num_samples < 1:
            raise ValueError(f"num_samples={self.num_samples} must be >= 1.")
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be > 0 (use greedy=True for argmax).")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1].")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 disables it).")
        if self.decode_attention not in DECODE_ATTENTION:
            raise ValueError(f"decode_attention={self.decode_attention!r}; expected one of {DECODE_ATTENTION}.")
        if not self.ignore_eos and not self.stop_token_ids:
            raise ValueError("stop_token_ids is empty: give the EOS/end-of-turn ids, or set ignore_eos=True.")


def sampling_config_for(
    model_config: ModelConfig,
    tokenizer,
    *,
    max_new_tokens: int,
    max_total_length: int | None = None,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    ignore_eos: bool = False,
    share_prompt_kv: bool = True,
) -> SamplingConfig:
    """The one way to build a `SamplingConfig` for a model and its tokenizer.

    Stop tokens are the checkpoint's EOS ids (Llama 3 lists both end-of-text and end-of-turn)
    plus the tokenizer's EOS; padding is the tokenizer's pad token, else the model's, else 0.
    Training, validation, evaluation and SFT all sample through this, so they stop alike.
    """
    tokenizer_eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stop = tuple(dict.fromkeys([*model_config.eos_token_ids, *tokenizer_eos]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model_config.pad_token_id
    return SamplingConfig(
        max_new_tokens=int(max_new_tokens),
        max_total_length=None if max_total_length is None else int(max_total_length),
        num_samples=num_samples,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        greedy=greedy,
        ignore_eos=ignore_eos,
        share_prompt_kv=share_prompt_kv,
        stop_token_ids=stop,
        pad_id=0 if pad is None else int(pad),
    )


@flax.struct.dataclass
class RolloutBatch:
    """Prompt + response tokens and what the reward and loss need, rows = prompts x G.

    Attributes:
      tokens: [B, P + M] left-padded prompt, then the response, then `pad_id`.
      attention_mask: [B, P + M] 1 on real prompt tokens and response tokens.
      response_mask: [B, P + M] 1 on response tokens (the stop token included).
      logprobs: [B, P + M] log pi(token_t | <t) at temperature 1 on response tokens, else 0.
      sampling_logprobs: [B, P + M] the same under the tempered, top-k/top-p filtered
        distribution that the tokens were actually drawn from (the behaviour policy: the
        denominator of the loss's importance weight); equal to `logprobs` at T = 1 untruncated.
      lengths: [B] response lengths in tokens.
      finished: [B] True where a stop token ended the response ("eos"), False: "length".
      prompt_index: [B] row of the prompt batch each response answers.
    """

    tokens: Int[Array, "B S"]
    attention_mask: Int[Array, "B S"]
    response_mask: Int[Array, "B S"]
    logprobs: Float[Array, "B S"]
    sampling_logprobs: Float[Array, "B S"]
    lengths: Int[Array, " B"]
    finished: Bool[Array, " B"]
    prompt_index: Int[Array, " B"]


def trim_padding(rollout: RolloutBatch, prompt_len: int, max_response_len: int, *,
                 width_step: int | None = None) -> RolloutBatch:
    """Drops the trailing all-padding columns, keeping a few compiled shapes.

    The sampler allocates the whole budget M, but the scoring and the update only need the
    columns up to the longest response; past it every row is padding with zero masks, and
    under a causal model dropping them changes no log-prob, reward or loss (the "sum"
    aggregation divides by a fixed constant, not by S). The response part is rounded up to a
    multiple of max(16, M // 8), so a run compiles at most 8 shapes per prompt length.

    With `width_step`, the whole width P + M' is rounded up to a multiple of it instead, so
    that batches of different prompt buckets share their trimmed shapes: a run compiles at
    most ceil(max width / width_step) widths in all (`sharpjax.train.compiles.compile_budget`).

    Args:
      rollout: the sampler's batch, [B, P + M] arrays.
      prompt_len: P.
      max_response_len: the longest response in the batch (over all hosts), in tokens.
      width_step: None, or the grid of the trimmed widths (tokens).

    Returns:
      The same batch with [B, P + M'] arrays, M' <= M.
    """
    budget = rollout.tokens.shape[1] - prompt_len
    keep = trimmed_response_slots(budget, max_response_len, prompt_len=prompt_len, width_step=width_step)
    if keep == budget:
        return rollout
    cut = lambda x: x[:, : prompt_len + keep]  # noqa: E731
    return rollout.replace(
        tokens=cut(rollout.tokens), attention_mask=cut(rollout.attention_mask),
        response_mask=cut(rollout.response_mask), logprobs=cut(rollout.logprobs),
        sampling_logprobs=cut(rollout.sampling_logprobs),
    )


def trimmed_response_slots(budget: int, max_response_len: int, *, prompt_len: int,
                           width_step: int | None = None) -> int:
    """The response columns `trim_padding` keeps of `budget` for a longest response of
    `max_response_len` tokens: a multiple of max(16, budget // 8), or with `width_step` the
    prompt plus response rounded up to a multiple of it; never more than `budget`."""
    step = max(16, -(-budget // 8))
    keep = min(budget, max(step, -(-max_response_len // step) * step))
    if width_step is not None:
        width = -(-(prompt_len + max(max_response_len, 1)) // width_step) * width_step
        keep = min(budget, width - prompt_len)
    return keep


def filter_logits(logits_BV: Float[Array, "B V"], *, top_k: int, top_p: float) -> Float[Array, "B V"]:
    """Sets logits outside the top-k / top-p nucleus to -inf (keeps at least one token)."""
    if top_k > 0 and top_k < logits_BV.shape[-1]:
        kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    if top_p < 1.0:
        sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
        # The smallest logit still inside the nucleus; everything below it goes.
        keep_BV = mass_before_BV < top_p
        cutoff_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
        logits_BV = jnp.where(logits_BV < cutoff_B1, -jnp.inf, logits_BV)
    return logits_BV


@flax.struct.dataclass
class _State:
    step: Int[Array, ""]
    key: jax.Array
    cache: KVCache  # [B, P + M] slots, or [B, M] response slots with a shared prompt cache
    logits: Float[Array, "B V"]
    tokens: Int[Array, "B M"]
    logprobs: Float[Array, "B M"]
    sampling_logprobs: Float[Array, "B M"]
    done: Bool[Array, " B"]
    lengths: Int[Array, " B"]


def _next_token(logits_BV, key, sampling: SamplingConfig):
    logprobs_BV = jax.nn.log_softmax(logits_BV, axis=-1)
    if sampling.greedy:
        token_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
        sampling_logprobs_BV = logprobs_BV
    else:
        tempered_BV = filter_logits(logits_BV / sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
        token_B = jax.random.categorical(key, tempered_BV, axis=-1).astype(jnp.int32)
        if sampling.temperature == 1.0 and sampling.top_k == 0 and sampling.top_p == 1.0:
            # The sampled distribution is the policy: the same array, so the importance weight
            # exp(logp_train - sampling_logp) of the paper's setting is bit-identical to before.
            sampling_logprobs_BV = logprobs_BV
        else:
            sampling_logprobs_BV = jax.nn.log_softmax(tempered_BV, axis=-1)
    pick = lambda lp: jnp.take_along_axis(lp, token_B[:, None], axis=-1)[:, 0]  # noqa: E731
    return token_B, pick(logprobs_BV), pick(sampling_logprobs_BV)


@functools.partial(jax.jit, static_argnames=("config", "sampling"))
def sample(
    params: Params,
    prompt_tokens_BP: Int[Array, "Bp P"],
    prompt_mask_BP: Int[Array, "Bp P"],
    key: jax.Array,
    *,
    config: ModelConfig,
    sampling: SamplingConfig,
    max_new_tokens_B: Int[Array, " B"] | None = None,
) -> RolloutBatch:
    """Samples `sampling.num_samples` responses for each left-padded prompt.

    Args:
      params: policy params (may be sharded; rows follow the prompt batch's sharding).
      prompt_tokens_BP: left-padded prompts [Bp, P].
      prompt_mask_BP: 1 on real prompt tokens.
      key: PRNG key; the same key gives the same samples.
      config: the architecture.
      sampling: sampling parameters.
      max_new_tokens_B: optional per-row budgets (<= M) over the B = Bp * G output rows: row b
        stops after that many tokens (`finished` stays False unless a stop token ended it), and
        the loop ends once every row is stopped or out of budget. Power sampling
        (`sharpjax.rollout.power`) resamples suffixes of different lengths in one call.
        `sampling.max_total_length` caps them further, per row, by its own prompt's length.

    Returns:
      A `RolloutBatch` with B = Bp * G rows; rows i*G .. i*G+G-1 answer prompt i.
    """
    bp, p = prompt_tokens_BP.shape
    m, g = sampling.max_new_tokens, sampling.num_samples
    b = bp * g
    prompt_mask_BP = prompt_mask_BP.astype(jnp.int32)
    prompt_len_Bp = prompt_mask_BP.sum(-1)
    share = sampling.uses_shared_prompt_kv
    key_mask_BpS = jnp.concatenate([prompt_mask_BP, jnp.ones((bp, m), jnp.int32)], axis=1).astype(bool)

    # Shared: the prefill fills a P-slot cache that the decode only reads.
    cache = KVCache.init(config, bp, p if share else p + m)
    positions_BP = jnp.maximum(jnp.cumsum(prompt_mask_BP, axis=-1) - 1, 0)
    hidden_BPD, cache = forward(
        params, prompt_tokens_BP, config=config, positions_BT=positions_BP, key_mask_BS=key_mask_BpS, cache=cache
    )
    last_logits = logits(params, hidden_BPD[:, -1:])[:, 0]

    # The G samples of a prompt share its prefill: repeat rows, not computation.
    repeat = lambda x, axis=0: jnp.repeat(x, g, axis=axis)  # noqa: E731
    prompt_len_B = repeat(prompt_len_Bp)
    if share:
        prompt_cache, cache = cache, KVCache.init(config, b, m)
        # Every response slot up to the current step is real.
        key_mask_BS = jnp.ones((b, m), bool)
        first_slot_B = jnp.zeros((b,), jnp.int32)
    else:
        prompt_cache = None
        cache = cache.repeat_rows(g)
        key_mask_BS = repeat(key_mask_BpS)
        # Left padding: row b's real slots are [P - prompt_len_b, cache.index].
        first_slot_B = p - prompt_len_B
    stop_ids = jnp.asarray(sampling.stop_token_ids or (-1,), jnp.int32)
    # Per-layer weights sliced once here: a w[i] inside the loop body is copied every step.
    layers = unstack_layers(params, config.num_layers)
    budget_B = jnp.full((b,), m, jnp.int32) if max_new_tokens_B is None else jnp.asarray(max_new_tokens_B, jnp.int32)
    if sampling.max_total_length is not None:  # each row's own room, not the batch's bucket
        budget_B = jnp.minimum(budget_B, sampling.max_total_length - prompt_len_B)

    def cond(state: _State):
        return (state.step < m) & ~jnp.all(state.done | (state.step >= budget_B))

    def body(state: _State):
        key, step_key = jax.random.split(state.key)
        token_B, logprob_B, sampling_logprob_B = _next_token(state.logits, step_key, sampling)
        alive_B = ~state.done & (state.step < budget_B)
        token_B = jnp.where(alive_B, token_B, sampling.pad_id)
        write = lambda buf, x: jax.lax.dynamic_update_slice(buf, x[:, None], (0, state.step))  # noqa: E731
        is_stop_B = jnp.isin(token_B, stop_ids) & (not sampling.ignore_eos)
        live_B = None
        if sampling.skip_finished_rows:
            # The rows that sample again after this token: only they need this step's logits,
            # so only they read the KV cache (`decode_step`). The others' logits are discarded.
            live_B = alive_B & ~is_stop_B & (state.step + 1 < jnp.minimum(budget_B, m))
        hidden_BD, cache = decode_step(
            params,
            layers,
            token_B,
            config=config,
            positions_B=prompt_len_B + state.step,
            key_mask_BS=key_mask_BS,
            cache=state.cache,
            first_slot_B=first_slot_B,
            attention=sampling.decode_attention,
            prompt_cache=prompt_cache,
            prompt_mask_QT=prompt_mask_BP if share else None,
            live_B=live_B,
        )
        return _State(
            step=state.step + 1,
            key=key,
            cache=cache,
            logits=logits(params, hidden_BD[:, None])[:, 0],
            tokens=write(state.tokens, token_B),
            logprobs=write(state.logprobs, jnp.where(alive_B, logprob_B, 0.0)),
            sampling_logprobs=write(state.sampling_logprobs, jnp.where(alive_B, sampling_logprob_B, 0.0)),
            done=state.done | (alive_B & is_stop_B),
            lengths=state.lengths + alive_B.astype(jnp.int32),
        )

    state = _State(
        step=jnp.zeros((), jnp.int32),
        key=key,
        cache=cache,
        logits=repeat(last_logits),
        tokens=jnp.full((b, m), sampling.pad_id, jnp.int32),
        logprobs=jnp.zeros((b, m), jnp.float32),
        sampling_logprobs=jnp.zeros((b, m), jnp.float32),
        done=jnp.zeros((b,), bool),
        lengths=jnp.zeros((b,), jnp.int32),
    )
    state = jax.lax.while_loop(cond, body, state)

    response_mask_BM = (jnp.arange(m)[None, :] < state.lengths[:, None]).astype(jnp.int32)
    prompt_mask_B = repeat(prompt_mask_BP)
    zeros_BP = jnp.zeros((b, p), jnp.float32)
    return RolloutBatch(
        tokens=jnp.concatenate([repeat(prompt_tokens_BP), state.tokens], axis=1),
        attention_mask=jnp.concatenate([prompt_mask_B, response_mask_BM], axis=1),
        response_mask=jnp.concatenate([jnp.zeros_like(prompt_mask_B), response_mask_BM], axis=1),
        logprobs=jnp.concatenate([zeros_BP, state.logprobs], axis=1),
        sampling_logprobs=jnp.concatenate([zeros_BP, state.sampling_logprobs], axis=1),
        lengths=state.lengths,
        finished=state.done,
        prompt_index=jnp.repeat(jnp.arange(bp, dtype=jnp.int32), g),
    )
