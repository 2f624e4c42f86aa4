"""Run configuration: ml-collections dicts (what users edit and override) -> typed, validated objects.

`experiments/*.py` files return an `ml_collections.ConfigDict` from `get_config()`; the
launcher overrides fields from the command line (`--config.reward.alpha=2.0`), then
`RunConfig.from_config_dict` turns it into frozen dataclasses and checks it, before any
model is loaded or anything compiles. Every error names the offending field.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any, Literal

from sharpjax.errors import ConfigError
from sharpjax.losses.config import LossConfig
from sharpjax.rewards.config import RewardConfig
from sharpjax.schema import build_config, to_plain

__all__ = [
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "MeshConfig",
    "OptimConfig",
    "PlanConfig",
    "RolloutConfig",
    "RunConfig",
    "TrainConfig",
    "build_config",
]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with warmup; defaults are the paper's (PAPER.md). `sharpjax.train.optim` builds it.

    Attributes:
      learning_rate: peak rate (paper: 1e-6), finite and > 0.
      weight_decay: AdamW's decoupled decay (paper: 0.01), finite and >= 0.
      b1, b2, eps: Adam's moments and epsilon (paper: 0.9, 0.999, 1e-8).
      max_grad_norm: global-norm clip (paper: 1.0); 0 disables; finite and >= 0.
      warmup_steps: linear warmup length (paper: 50).
      warmup_init_fraction: warmup starts at this fraction of learning_rate (paper: 0.1).
      schedule: after warmup, "constant" (paper) or "cosine" (to 0 at total_steps).
      total_steps: the cosine schedule's end.
      state_dtype: dtype of Adam's first moment (mu): "float32" (default, bit-identical to
        plain optax.adamw) or "bfloat16" (saves 2 bytes/param: a quarter of the moments).
        The second moment (nu) stays fp32 either way: its per-step change (1 - b2) = 1e-3
        is below bf16's resolution (2^-8), so a bf16 nu would stop moving.
    """

    learning_rate: float = 1e-6
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    warmup_steps: int = 50
    warmup_init_fraction: float = 0.1
    schedule: str = "constant"
    total_steps: int = 500
    state_dtype: str = "float32"

    def __post_init__(self):
        if self.state_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"config.optim.state_dtype={self.state_dtype!r}; expected 'float32' or 'bfloat16'.")
        # A NaN or infinite number here would silently turn every parameter into NaN at step 1.
        for name in ("learning_rate", "weight_decay", "b1", "b2", "eps", "max_grad_norm", "warmup_init_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"config.optim.{name}={value!r} must be a finite number.")
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"config.optim.schedule={self.schedule!r}; expected 'constant' or 'cosine'.")
        if not self.learning_rate > 0:
            raise ConfigError(f"config.optim.learning_rate={self.learning_rate} must be > 0 (paper: 1e-6).")
        if self.weight_decay < 0:
            raise ConfigError(f"config.optim.weight_decay={self.weight_decay} must be >= 0 (paper: 0.01).")
        if self.max_grad_norm < 0:
            raise ConfigError(f"config.optim.max_grad_norm={self.max_grad_norm} must be >= 0 (0 disables clipping).")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1 and self.eps > 0):
            raise ConfigError("config.optim: b1 and b2 must be in [0, 1) and eps > 0 (paper: 0.9, 0.999, 1e-8).")
        if self.warmup_steps < 0 or not 0 < self.warmup_init_fraction <= 1:
            raise ConfigError("config.optim.warmup_steps must be >= 0 and config.optim.warmup_init_fraction in (0, 1].")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Sampling during training (paper: 32 prompts x 8 samples, total length 2048, T=1, top-p 1).

    Attributes:
      prompts_per_step: P, prompts per optimizer step.
      samples_per_prompt: K, the RLOO group size (>= 2: the leave-one-out baseline needs it).
      max_total_length: prompt + response budget in tokens; each response's budget is this
        minus its own prompt's length (the paper's NeMo RL + vLLM) unless `max_new_tokens` is set.
      max_new_tokens: fixed response budget (None: derived from `max_total_length`).
      temperature, top_p, top_k: only 1.0, 1.0, 0 (the paper's) are accepted in training: a
        tempered or truncated rollout is off-policy in a way no per-token weight corrects.
      ignore_eos: the paper's "fixed-length" variant: every response has the maximum length.
      prompt_buckets: prompt lengths are padded up to one of these (one compile per bucket).
      chunk_prompts: prompts per sampler call (None: all of the step's prompts in one call);
        the KV cache scales with it, so a smaller chunk fits a long budget on fewer devices.
        "auto": the largest that fits the plan's target (`sharpjax.plan.chunks.choose_chunk`,
        resolved by `sharpjax.plan.preflight_run`; without a plan, all prompts in one call).
    """

    prompts_per_step: int = 32
    samples_per_prompt: int = 8
    max_total_length: int = 2048
    max_new_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    ignore_eos: bool = False
    prompt_buckets: tuple[int, ...] = (64, 128, 256, 512, 1024)
    chunk_prompts: int | typing.Literal["auto"] | None = None


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where prompts come from.

    Attributes:
      task: "math" (datasets in SHARPJAX_DATA_DIR, verified with math-verify) or
        "arithmetic" (the synthetic task of the small-scale reproduction).
      train: training dataset name (`sharpjax.data.available_datasets()`), e.g. "math_train".
      train_path: a local file for datasets that are not in the data dir (DeepScaleR).
      data_dir: overrides SHARPJAX_DATA_DIR.
      validation: the held-out benchmarks evaluated every `eval.every` steps.
      num_train_problems / num_validation_problems: arithmetic task sizes (generated).
      difficulty: arithmetic task difficulty preset name.
      verifier: how the "math" task scores answers (`sharpjax.rewards.Verifier`), in training
        and validation: "boxed" (our last-`\\boxed{}` extraction) or "math_verify" (the
        paper's reward: NeMo RL's `hf_math_verify`, math-verify over the whole response;
        `experiments/rl_math.py` sets it).
    """

    task: str = "math"
    train: str = "math_train"
    train_path: str | None = None
    data_dir: str | None = None
    validation: tuple[str, ...] = ("math500",)
    validation_limit: int | None = None
    num_train_problems: int = 2000
    num_validation_problems: int = 64
    difficulty: str = "default"
    verifier: str = "boxed"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Periodic validation (paper: every 20 steps, best checkpoint kept by accuracy).

    Attributes:
      every: steps between validations (0: only at the start and the end).
      num_samples: samples per problem; the tracked metric is `metric` of the first
        benchmark in `data.validation`.
      max_new_tokens: response budget at evaluation (None: the training budget).
      batch_size: prompts per sampler call.
    """

    every: int = 20
    num_samples: int = 1
    metric: str = "pass@1"
    max_new_tokens: int | None = None
    batch_size: int = 64
    at_start: bool = True


REMAT_VALUES = ("none", "dots", "full", "auto")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The loop.

    Attributes:
      steps: optimizer steps (paper: 500 for the 3B models, 1000 for Qwen3-4B).
      seed: one seed for sampling and data order (paper: 42).
      micro_batches: gradient accumulation inside the step.
      remat: per-layer activation checkpointing, "none" | "dots" | "full" | "auto" (more
        memory, less recompute, first). "auto": the launcher's memory plan picks the first of
        none, dots, full that fits the plan's target (`sharpjax.plan.preflight_run`; an
        analytic plan of an fsdp/tensor-sharded mesh picks only full); with no plan (no
        config.plan.target, no GPU, or plan.method="off") "full", which holds the least. The
        trainer only ever sees the resolved policy: a direct `train()` call resolves "auto"
        (here and in chunk_prompts) with `preflight_run` first, as the launcher does.
      logits_chunk: positions per chunk of the vocabulary projection.
      tokens_per_micro_batch: tokens per device in one pass of the reference model's scoring
        of a step (rows per pass = this // sequence length, at least 1): bounds its memory
        whatever the batch; the result is the same up to fp32 summation order. The default
        scores the toy presets' batches in one pass.
      checkpoint_every: steps between checkpoints (validation steps also checkpoint).
      keep_last: checkpoints kept besides the best one.
      score_reference_always: also score the frozen base model when the reward does not need
        it, to log KL(pi || base) (one more forward per step).
      kl_every: with score_reference_always and a reward/loss that does not need the
        reference, score it (and log KL(pi || base)) every this many steps (steps 0, N, 2N,
        ...) instead of every step; 1: every step. No effect when the reward or loss needs it.
      export_final: write the last and the best policy as Hugging Face directories.
      trim_padding: score and update only up to the batch's longest response (exact; at most 8
        more compiled shapes per prompt length; 2x faster steps on the arithmetic runs).
      group_by_length: the update's micro-batches (and the reference scoring's passes) take rows of
        similar response length, and each is trimmed to its own longest row, one program per
        micro-batch (`train.step.GroupedUpdate`, `train.step.dispatch_grouped_reference`):
        with a long tail of lengths most micro-batches are far narrower than the batch's longest
        row. The same gradient up to fp32 summation order; the per-micro-batch metrics (means over
        a micro-batch, averaged) are of other groupings of the rows.
      max_skipped_updates: stop the run (TrainingDiverged) after this many updates in a row
        were skipped as non-finite (loss, gradient, update or params); the last checkpoint,
        taken before them, is what gets exported.
    """

    steps: int = 500
    seed: int = 42
    micro_batches: int = 1
    remat: str = "full"
    logits_chunk: int = 256
    tokens_per_micro_batch: int = 65536
    checkpoint_every: int = 20
    keep_last: int = 2
    score_reference_always: bool = True
    kl_every: int = 1
    export_final: bool = True
    log_every: int = 1
    trim_padding: bool = True
    group_by_length: bool = False
    max_skipped_updates: int = 5


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh shape; -1 on `data` takes every remaining device."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class PlanConfig:
    """The launcher's fit check (`sharpjax.plan`), run before any weights are loaded.

    Attributes:
      target: GPU target the run is sized for, e.g. "h100x4" (None: the local GPU's memory;
        no check on a CPU). On a GPU host the plan uses at most the local device's usable
        memory (its allocator limit: XLA_PYTHON_CLIENT_MEM_FRACTION, which the launcher sets
        to 0.95 and a Python `train()` call leaves at JAX's 0.75 unless set before jax starts).
      method: "auto" (XLA's compile-only GPU plan when the jax-cuda12 plugin imports, else
        analytic), "aot", "analytic", or "off".
      max_memory_fraction: refuse the run above this fraction of the device's memory.
      device_memory_gb: override of the device's memory in GiB (None: the target's).
    """

    target: str | None = None
    method: str = "auto"
    max_memory_fraction: float = 0.9
    device_memory_gb: float | None = None


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs, validated on construction (`validate`). From the launcher's
    ml-collections dict: `from_config_dict`.

    `model_init`: "pretrained" loads `model_dir`'s weights; "random" reads only its config.json
    (and tokenizer files, or builds a byte-level BPE tokenizer from the training data when there
    are none) and initialises the policy, and the reference as the same params, on the devices:
    a smoke test of a GPU or cluster (plan, memory, step time) before any weights are downloaded.
    """

    model_dir: str
    ref_model_dir: str | None = None  # the frozen base model (default: model_dir)
    model_init: Literal["pretrained", "random"] = "pretrained"
    dtype: str = "bfloat16"  # compute dtype; master params and the optimizer are fp32
    reward: RewardConfig = RewardConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    rollout: RolloutConfig = RolloutConfig()
    data: DataConfig = DataConfig()
    eval: EvalConfig = EvalConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()
    plan: PlanConfig = PlanConfig()

    def __post_init__(self):
        # On construction, so every entry point (the launcher, `train()`, `Trainer`, a config
        # built or `dataclasses.replace`d in Python) refuses the same settings.
        self.validate()

    @classmethod
    def from_config_dict(cls, config: Mapping[str, Any]) -> RunConfig:
        """Converts an (ml-collections) mapping, checking names, types and ranges (`validate`)."""
        return build_config(cls, to_plain(config), "config")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Checks that need no model: ranges and consistency between sections."""
        r, t, e = self.rollout, self.train, self.eval
        if self.model_init == "random" and self.ref_model_dir not in (None, self.model_dir):
            raise ConfigError(
                f"config.ref_model_dir={self.ref_model_dir!r} with config.model_init='random': the reference is the "
                "same random params as the policy; leave config.ref_model_dir unset."
            )
        _positive(r.prompts_per_step, "config.rollout.prompts_per_step")
        if r.samples_per_prompt < 2 and self.loss.advantage_estimator == "rloo":
            raise ConfigError(
                f"config.rollout.samples_per_prompt={r.samples_per_prompt}: RLOO's leave-one-out baseline "
                "needs at least 2 samples per prompt (paper: 8)."
            )
        _positive(r.max_total_length, "config.rollout.max_total_length")
        if r.max_new_tokens is not None:
            _positive(r.max_new_tokens, "config.rollout.max_new_tokens")
        if not r.temperature > 0:
            raise ConfigError(f"config.rollout.temperature={r.temperature} must be > 0.")
        if r.temperature != 1.0:
            # The per-token importance weight pi(y_t|y_<t) / q_T(y_t|y_<t) corrects one token, but
            # the prefix and the continuation behind the advantage are still drawn from q_T: on an
            # exact toy at T = 0.7 the expected gradient is off by 7.5% / 15% / 17% for 2 / 3 / 4
            # tokens (tests/train/test_step.py). No per-token weight fixes that.
            raise ConfigError(
                f"config.rollout.temperature={r.temperature}: training samples at temperature 1.0 only (the "
                "paper's setting; a per-token importance weight cannot correct tempered multi-token rollouts, so "
                "the policy gradient would be biased); use 1.0 (validation always samples at 1.0)."
            )
        if not 0 < r.top_p <= 1:
            raise ConfigError(f"config.rollout.top_p={r.top_p} must be in (0, 1].")
        if r.top_p < 1 or r.top_k != 0:
            # Truncation cannot be corrected either: tokens outside the top-k / nucleus have
            # probability 0 under the sampler but not under the policy, so no importance weight
            # recovers their share of the on-policy gradient.
            raise ConfigError(
                f"config.rollout.top_p={r.top_p}, config.rollout.top_k={r.top_k}: truncated sampling is not "
                "supported in training (tokens outside the nucleus / top-k can never be sampled, so the "
                "policy gradient would be biased with no importance weight to correct it); use top_p=1.0 "
                "and top_k=0 (the paper's setting)."
            )
        lc = self.loss
        if lc.ppo_clip_eps is not None or lc.ppo_clip_eps_high is not None:
            # The loop makes one update per rollout, so the PPO ratio is exactly 1 at that update
            # and the clip never acts: refuse the options rather than accept and ignore them.
            raise ConfigError(
                f"config.loss.ppo_clip_eps={lc.ppo_clip_eps}, config.loss.ppo_clip_eps_high={lc.ppo_clip_eps_high}: "
                "PPO clipping is not supported in training (the loop makes one update per rollout, where the "
                "PPO ratio is 1 and the clip is inactive); leave both None (the paper's REINFORCE loss)."
            )
        _positive(t.steps, "config.train.steps")
        _positive(t.micro_batches, "config.train.micro_batches")
        _positive(t.checkpoint_every, "config.train.checkpoint_every")
        _positive(t.keep_last, "config.train.keep_last")
        _positive(t.log_every, "config.train.log_every")
        _positive(t.logits_chunk, "config.train.logits_chunk")
        _positive(t.kl_every, "config.train.kl_every")
        _positive(t.tokens_per_micro_batch, "config.train.tokens_per_micro_batch")
        _positive(t.max_skipped_updates, "config.train.max_skipped_updates")
        if t.remat not in REMAT_VALUES:
            raise ConfigError(
                f"config.train.remat={t.remat!r} must be one of {', '.join(map(repr, REMAT_VALUES))} "
                "('auto': the memory plan picks the cheapest that fits)."
            )
        if e.every < 0:
            raise ConfigError(f"config.eval.every={e.every} must be >= 0 (0: validate only at start and end).")
        _positive(e.num_samples, "config.eval.num_samples")
        _positive(e.batch_size, "config.eval.batch_size")
        self._check_best_checkpoint_metric()
        if self.data.task not in ("math", "arithmetic"):
            raise ConfigError(f"config.data.task={self.data.task!r} must be 'math' or 'arithmetic'.")
        if self.data.verifier not in ("boxed", "math_verify"):
            raise ConfigError(
                f"config.data.verifier={self.data.verifier!r} must be 'boxed' or 'math_verify' (the paper's)."
            )
        self._check_validation_sets()
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"config.dtype={self.dtype!r} must be 'float32', 'bfloat16' or 'float16'.")
        if r.chunk_prompts not in (None, "auto"):
            _positive(r.chunk_prompts, "config.rollout.chunk_prompts")
            if r.prompts_per_step % r.chunk_prompts:
                raise ConfigError(
                    f"config.rollout.chunk_prompts={r.chunk_prompts} must divide "
                    f"config.rollout.prompts_per_step={r.prompts_per_step}."
                )
        if self.plan.method not in ("auto", "aot", "analytic", "off"):
            raise ConfigError(f"config.plan.method={self.plan.method!r} must be 'auto', 'aot', 'analytic' or 'off'.")
        if not 0 < self.plan.max_memory_fraction <= 1:
            raise ConfigError(f"config.plan.max_memory_fraction={self.plan.max_memory_fraction} must be in (0, 1].")
        if self.plan.device_memory_gb is not None and not 0 < self.plan.device_memory_gb < math.inf:
            raise ConfigError(f"config.plan.device_memory_gb={self.plan.device_memory_gb} must be a finite number of "
                              "GiB > 0 (None: the target's memory).")
        batch = r.prompts_per_step * r.samples_per_prompt
        if batch % t.micro_batches:
            raise ConfigError(
                f"config.train.micro_batches={t.micro_batches} does not divide the batch of "
                f"{r.prompts_per_step} x {r.samples_per_prompt} = {batch} responses."
            )

    def _check_best_checkpoint_metric(self) -> None:
        """eval.metric must be a key validation reports, else the best checkpoint is silently never chosen."""
        from sharpjax.sample_metrics import DEFAULT_KS  # numpy only; validation reports these ks

        e = self.eval
        n = e.num_samples
        allowed = [f"{m}@{k}" for m in ("pass", "maj") for k in DEFAULT_KS if k <= n] + ["mean@1"]
        kind, _, k = e.metric.partition("@")
        if e.metric in allowed:
            return
        if kind in ("pass", "maj") and k.isdigit() and int(k) > n:
            why = f"validation draws config.eval.num_samples={n} samples per problem, so it reports no {e.metric}"
        else:
            why = "validation reports no such metric (the best checkpoint is the one with the highest value)"
        raise ConfigError(
            f"config.eval.metric={e.metric!r}: {why}; use one of {', '.join(allowed)}"
            + (" or raise config.eval.num_samples." if kind in ("pass", "maj") else ".")
        )

    def _check_validation_sets(self) -> None:
        """data.validation names sets the task has (the first one decides the best checkpoint)."""
        d = self.data
        if d.task == "arithmetic":
            if d.validation not in ((), ("arithmetic",)):
                raise ConfigError(
                    f"config.data.validation={d.validation!r}: the arithmetic task has one held-out set, "
                    "'arithmetic'; use ('arithmetic',), or () for no validation."
                )
            return
        from sharpjax.data import available_datasets  # no jax; names only

        known = available_datasets()
        for name in d.validation:
            if name not in known and not (name.startswith("hub:") and len(name) > 4):
                raise ConfigError(
                    f"config.data.validation: unknown benchmark {name!r}; known: {', '.join(known)}, hub:<dataset id>."
                )

    def check_against(self, *, context_length: int, prompt_length: int | None = None, num_devices: int) -> None:
        """Checks that need the model and the devices (still before anything compiles)."""
        r = self.rollout
        if r.max_total_length > context_length:
            raise ConfigError(
                f"config.rollout.max_total_length={r.max_total_length} is over the model's context of "
                f"{context_length} tokens (max_position_embeddings in {self.model_dir}/config.json)."
            )
        if prompt_length is not None and r.max_new_tokens is not None:
            if prompt_length + r.max_new_tokens > context_length:
                raise ConfigError(
                    f"config.rollout.max_new_tokens={r.max_new_tokens} plus the prompt bucket of {prompt_length} "
                    f"tokens is over the model's context of {context_length}."
                )
        m = self.mesh
        sizes = (m.data, m.fsdp, m.tensor)
        if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
            raise ConfigError(f"config.mesh={m}: sizes must be >= 1, with at most one -1.")
        shape = self.mesh_shape(num_devices)
        if math.prod(shape) != num_devices:
            raise ConfigError(f"config.mesh={m} needs {math.prod(shape)} devices but there are {num_devices}.")
        data, fsdp, _ = shape
        batch = r.prompts_per_step * r.samples_per_prompt
        shards = data * fsdp * self.train.micro_batches
        if batch % shards:
            raise ConfigError(
                f"the batch of {r.prompts_per_step} x {r.samples_per_prompt} = {batch} responses is not divisible by "
                f"mesh data x fsdp x micro_batches = {data} x {fsdp} x {self.train.micro_batches}; change "
                "config.rollout.prompts_per_step or config.mesh."
            )
        if r.prompts_per_step % (data * fsdp):
            raise ConfigError(
                f"config.rollout.prompts_per_step={r.prompts_per_step} is not divisible by the mesh's "
                f"data x fsdp = {data * fsdp} (the sampler shards prompts over them)."
            )
        if r.chunk_prompts not in (None, "auto") and r.chunk_prompts % (data * fsdp):
            raise ConfigError(
                f"config.rollout.chunk_prompts={r.chunk_prompts} is not divisible by the mesh's "
                f"data x fsdp = {data * fsdp} (the sampler shards prompts over them)."
            )

    def mesh_shape(self, num_devices: int) -> tuple[int, int, int]:
        m = self.mesh
        known = math.prod(s for s in (m.data, m.fsdp, m.tensor) if s != -1)
        return tuple(s if s != -1 else max(num_devices // known, 1) for s in (m.data, m.fsdp, m.tensor))


def _positive(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer.")
