"""The SFT run that makes the arithmetic base model: one frozen config, validated once.

Everything here determines the trained model; `SFTConfig.to_dict()` is the cache key of
`sharpjax.sft.base_model.train_base_model`. The named sizes ("quick", "default") are
`sft_config(size)` at the end of this file (re-exported by `sharpjax.configs.small_scale`, the
table of the small-scale experiment's sizes): `sft` resolves `sft:<size>` and sits below `configs`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sharpjax.errors import ConfigError
from sharpjax.models.config import ModelConfig
from sharpjax.tasks.arithmetic import Difficulty

__all__ = ["SFTConfig", "sft_config"]

_SECTIONS = ("model", "task", "optim", "eval")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """Everything that determines the trained model (it is the cache key of `train_base_model`).

    The defaults are the main job's base model: 4 layers x 64 wide (269K params), 1,800 steps
    of 64 examples drawn fresh from the task's train split at the default `Difficulty` (2-3
    operands of 1-2 digits, + and -): 1,400 steps of stepwise solutions, then 400 on a mix where
    60% of the solutions stop after the first step (`arithmetic.shortcut_solution`); about 6
    minutes on an idle 2-core CPU. Held-out accuracy (200 test-split problems x 4 samples) of the
    shipped model (sharpjax/assets/base_default): mean@1 at T=1 0.54, greedy 0.52; on the trap
    problems (three operands, where stopping early is wrong) it stops early in 67% of its samples,
    mean@1 0.18, and its most frequent answer is wrong on 86% of them.
    The stepwise phase is where the arithmetic is learned: accuracy jumps when the model "gets"
    carries, somewhere between 1,000 and 1,500 steps depending on the seed (seed 1, the default,
    gets them before 1,400); with the mix from the first step, 1,400 steps learned neither style
    (mean@1 0.11).

    Model (a Llama-shaped decoder, tied embeddings, fp32):
      hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, head_dim.
      max_position_embeddings: context length written to config.json; prompt bucket plus
        response budget of the RL runs must fit.
    Task:
      difficulty: the arithmetic problem distribution.
      num_train_problems: size of the training pool, drawn from the task's train split;
        0 = steps * batch_size (every draw seen once).
      max_seq_len: T, prompt + response tokens per padded training row; a longer example is
        an error (never truncated).
      shortcut_fraction: the share of training solutions written in the shortcut style
        (`sharpjax.tasks.arithmetic.shortcut_solution`: the answer stated directly, minus sign
        dropped), drawn per example independently of the problem; the rest are stepwise.
      shortcut_from_step: the steps before it train on stepwise solutions only (the model
        learns the arithmetic first; mixed from the start, 1,400 steps learn neither style:
        mean@1 0.11), the steps from it on the mix.
    Optimization:
      steps, batch_size, learning_rate (peak; linear warmup then cosine decay to
        `final_lr_fraction` of it), warmup_steps, weight_decay, max_grad_norm, seed.
    Eval:
      eval_problems: problems of the task's test split for the accuracy in sft_info.json.
      eval_samples: samples per problem at temperature 1 (mean@1 averages them).
      eval_seed: seed of the held-out problems.
      max_new_tokens: response budget when sampling.
      log_every: steps between progress log lines.
    """

    # model
    hidden_size: int = 64
    intermediate_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    head_dim: int = 16
    max_position_embeddings: int = 256
    # task
    difficulty: Difficulty = dataclasses.field(default_factory=Difficulty)
    num_train_problems: int = 0
    max_seq_len: int = 48
    shortcut_fraction: float = 0.6
    shortcut_from_step: int = 1400
    # optim
    steps: int = 1800
    batch_size: int = 64
    learning_rate: float = 5e-3
    final_lr_fraction: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 1
    # eval
    eval_problems: int = 200
    eval_samples: int = 4
    eval_seed: int = 1_000_003
    max_new_tokens: int = 48
    log_every: int = 100

    def __post_init__(self):
        positive = (
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
            "max_seq_len",
            "steps",
            "batch_size",
            "eval_samples",
            "max_new_tokens",
            "log_every",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"SFTConfig.{name}={getattr(self, name)} must be >= 1.")
        for name in ("num_train_problems", "eval_problems", "warmup_steps", "shortcut_from_step"):
            if getattr(self, name) < 0:
                raise ConfigError(f"SFTConfig.{name}={getattr(self, name)} must be >= 0.")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}.")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even (RoPE rotates pairs).")
        if self.learning_rate <= 0 or not 0 <= self.final_lr_fraction <= 1:
            raise ConfigError("learning_rate must be > 0 and final_lr_fraction in [0, 1].")
        if self.warmup_steps >= self.steps:
            raise ConfigError(f"warmup_steps={self.warmup_steps} must be < steps={self.steps}.")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ConfigError("weight_decay and max_grad_norm must be >= 0 (max_grad_norm 0 disables clipping).")
        if self.max_seq_len > self.max_position_embeddings:
            raise ConfigError(
                f"max_seq_len={self.max_seq_len} exceeds max_position_embeddings={self.max_position_embeddings}."
            )
        if self.shortcut_from_step >= self.steps and self.shortcut_fraction > 0:
            raise ConfigError(
                f"SFTConfig.shortcut_from_step={self.shortcut_from_step} must be < steps={self.steps} "
                "(or shortcut_fraction 0): no step would train on shortcut solutions."
            )
        if not 0.0 <= self.shortcut_fraction <= 1.0:
            raise ConfigError(f"SFTConfig.shortcut_fraction={self.shortcut_fraction} must be in [0, 1].")
        if not isinstance(self.difficulty, Difficulty):
            raise ConfigError(f"difficulty must be a Difficulty, got {type(self.difficulty).__name__}.")

    def replace(self, **changes) -> SFTConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the form stored in sft_info.json and compared for caching)."""
        d = dataclasses.asdict(self)
        d["difficulty"]["ops"] = list(self.difficulty.ops)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SFTConfig:
        """Inverse of `to_dict`; unknown keys are an error (a typo must not be ignored)."""
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown SFTConfig fields {sorted(unknown)}.")
        if "difficulty" in d and not isinstance(d["difficulty"], Difficulty):
            d["difficulty"] = Difficulty.from_dict(d["difficulty"])
        return cls(**d)

    @classmethod
    def from_config_dict(cls, cfg: Mapping[str, Any]) -> SFTConfig:
        """From a sectioned ml-collections config (`experiments/sft_arithmetic.py`).

        Sections `model`, `task` (with a `difficulty` sub-section), `optim`, `eval` are
        flattened; top-level scalars (e.g. `seed`) are kept.
        """
        flat: dict[str, Any] = {}
        for key, value in dict(cfg).items():
            items = dict(value).items() if key in _SECTIONS else [(key, value)]
            for k, v in items:
                if k in flat:
                    raise ConfigError(f"config field {k!r} is set twice.")
                flat[k] = dict(v) if k == "difficulty" else v
        return cls.from_dict(flat)

    def model_config(self, tokenizer) -> ModelConfig:
        """The architecture, with the tokenizer's vocabulary and special tokens."""
        return ModelConfig(
            model_type="llama",
            vocab_size=len(tokenizer),
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            tie_word_embeddings=True,
            max_position_embeddings=self.max_position_embeddings,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_ids=(tokenizer.eos_token_id,),
            pad_token_id=tokenizer.pad_token_id,
        )


# SFT sizes of the base model (the library defaults of `SFTConfig` are the "default" model).
_SFT_OVERRIDES = {
    "default": {},
    "quick": dict(steps=150, shortcut_from_step=100, eval_problems=16, eval_samples=2, log_every=50),  # plumbing only
}


def sft_config(name: str = "default") -> SFTConfig:
    """The SFT run that makes the arithmetic base model of size `name` ("quick" or "default")."""
    if name not in _SFT_OVERRIDES:
        raise ConfigError(f"unknown base model size {name!r} (in 'sft:{name}'); expected 'quick' or 'default'.")
    return SFTConfig(**_SFT_OVERRIDES[name])
