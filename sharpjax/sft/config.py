"""The SFT run that makes the arithmetic base model: one frozen, sectioned config, validated once.

Sectioned like `sharpjax.train.config.RunConfig` (`model`, `task`, `optim`, `eval`, and the one
`seed` at the top) and through the same machinery (`sharpjax.schema`): `SFTConfig.from_config_dict`
builds it from the ml-collections dict of `experiments/sft_arithmetic.py`
(`sharpjax.configs.base.sft_base_config`), checking every name and type.
Everything here determines the trained model; `SFTConfig.to_dict()` is the cache key of
`sharpjax.sft.base_model.train_base_model` (the `config` of sft_info.json). The named sizes
("quick", "default") are `sft_config(size)` at the end of this file (re-exported by
`sharpjax.configs.small_scale`, the table of the small-scale experiment's sizes): `sft` resolves
`sft:<size>` and sits below `configs`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sharpjax.errors import ConfigError
from sharpjax.models.config import ModelConfig
from sharpjax.schema import build_config, to_plain
from sharpjax.tasks.arithmetic import Difficulty

__all__ = ["SFTConfig", "SFTEvalConfig", "SFTModelConfig", "SFTOptimConfig", "SFTTaskConfig", "sft_config"]


def _at_least(section: Any, name: str, minimum: int, fields: tuple[str, ...]) -> None:
    for field in fields:
        value = getattr(section, field)
        if value < minimum:
            raise ConfigError(f"SFTConfig.{name}.{field}={value} must be >= {minimum}.")


@dataclasses.dataclass(frozen=True)
class SFTModelConfig:
    """The architecture: a Llama-shaped decoder, tied embeddings, fp32.

    Attributes:
      hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, head_dim: D, F, L, N, K, H.
      max_position_embeddings: context length written to config.json; prompt bucket plus
        response budget of the RL runs must fit.
    """

    hidden_size: int = 64  # D, residual width
    intermediate_size: int = 256  # F, SwiGLU width
    num_layers: int = 4  # L; depth helps arithmetic more than width here
    num_heads: int = 4  # N query heads
    num_kv_heads: int = 4  # K key/value heads
    head_dim: int = 16  # H
    max_position_embeddings: int = 256  # context of the exported model (RL: prompt + response)

    def __post_init__(self):
        _at_least(self, "model", 1, tuple(f.name for f in dataclasses.fields(self)))
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"SFTConfig.model.num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}."
            )
        if self.head_dim % 2:
            raise ConfigError(f"SFTConfig.model.head_dim={self.head_dim} must be even (RoPE rotates pairs).")


@dataclasses.dataclass(frozen=True)
class SFTTaskConfig:
    """The training examples.

    Attributes:
      difficulty: the arithmetic problem distribution.
      num_train_problems: size of the training pool, drawn from the task's train split;
        0 = optim.steps * optim.batch_size (every draw seen once).
      max_seq_len: T, prompt + response tokens per padded training row; a longer example is
        an error (never truncated).
      shortcut_fraction: the share of training solutions written in the shortcut style
        (`sharpjax.tasks.arithmetic.shortcut_solution`: the answer stated directly, minus sign
        dropped), drawn per example independently of the problem; the rest are stepwise.
      shortcut_from_step: the steps before it train on stepwise solutions only (the model
        learns the arithmetic first; mixed from the start, 1,400 steps learn neither style:
        mean@1 0.11), the steps from it on the mix.
    """

    difficulty: Difficulty = dataclasses.field(default_factory=Difficulty)  # operands, digits, operators
    num_train_problems: int = 0  # training pool; 0 = steps * batch_size (each seen once)
    max_seq_len: int = 48  # T, tokens per padded training row (prompt + solution + EOS)
    shortcut_fraction: float = 0.6  # share of shortcut solutions (answer stated, minus sign dropped)
    shortcut_from_step: int = 1400  # steps before it: stepwise solutions only

    def __post_init__(self):
        _at_least(self, "task", 1, ("max_seq_len",))
        _at_least(self, "task", 0, ("num_train_problems", "shortcut_from_step"))
        if not 0.0 <= self.shortcut_fraction <= 1.0:
            raise ConfigError(f"SFTConfig.task.shortcut_fraction={self.shortcut_fraction} must be in [0, 1].")
        if not isinstance(self.difficulty, Difficulty):
            raise ConfigError(
                f"SFTConfig.task.difficulty must be a Difficulty, got {type(self.difficulty).__name__}."
            )


@dataclasses.dataclass(frozen=True)
class SFTOptimConfig:
    """AdamW: linear warmup from 0 to `learning_rate`, then cosine decay to `final_lr_fraction` of it.

    Attributes:
      steps, batch_size: optimizer steps, examples per step.
      learning_rate: the peak (a tiny model: large); final_lr_fraction: where the cosine ends.
      warmup_steps, weight_decay (AdamW's decoupled decay), max_grad_norm (global-norm clip; 0 disables).
    """

    steps: int = 1800  # optimizer steps
    batch_size: int = 64  # examples per step
    learning_rate: float = 5e-3  # peak AdamW lr (tiny model: large lr)
    final_lr_fraction: float = 0.1  # cosine decay ends at this fraction of the peak
    warmup_steps: int = 50  # linear warmup from 0
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    max_grad_norm: float = 1.0  # global-norm clip; 0 disables

    def __post_init__(self):
        _at_least(self, "optim", 1, ("steps", "batch_size"))
        _at_least(self, "optim", 0, ("warmup_steps",))
        if self.learning_rate <= 0 or not 0 <= self.final_lr_fraction <= 1:
            raise ConfigError("SFTConfig.optim: learning_rate must be > 0 and final_lr_fraction in [0, 1].")
        if self.warmup_steps >= self.steps:
            raise ConfigError(f"SFTConfig.optim.warmup_steps={self.warmup_steps} must be < steps={self.steps}.")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ConfigError(
                "SFTConfig.optim: weight_decay and max_grad_norm must be >= 0 (max_grad_norm 0 disables clipping)."
            )


@dataclasses.dataclass(frozen=True)
class SFTEvalConfig:
    """The held-out accuracy recorded in sft_info.json, and progress logging.

    Attributes:
      eval_problems: problems of the task's test split (0: no accuracy is measured).
      eval_samples: samples per problem at temperature 1 (mean@1 averages them).
      eval_seed: seed of the held-out problems.
      max_new_tokens: response budget when sampling.
      log_every: steps between progress log lines.
    """

    eval_problems: int = 200  # held-out problems for sft_info.json's accuracy
    eval_samples: int = 4  # samples per problem at T=1 (mean@1 averages them)
    eval_seed: int = 1_000_003  # seed of the held-out problems (drawn from the task's test split)
    max_new_tokens: int = 48  # response budget when sampling
    log_every: int = 100  # steps between progress log lines

    def __post_init__(self):
        _at_least(self, "eval", 1, ("eval_samples", "max_new_tokens", "log_every"))
        _at_least(self, "eval", 0, ("eval_problems",))


_SECTIONS = {"model": SFTModelConfig, "task": SFTTaskConfig, "optim": SFTOptimConfig, "eval": SFTEvalConfig}


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """Everything that determines the trained model (`to_dict()` is the cache key of `train_base_model`).

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

    Sections (each field documented on its dataclass):
      seed: PRNG seed of the init, the training problems and the batch order (all sections use it).
      model (`SFTModelConfig`): the architecture.
      task (`SFTTaskConfig`): the problem distribution, the training pool, the two solution styles.
      optim (`SFTOptimConfig`): steps, batch size, the AdamW schedule.
      eval (`SFTEvalConfig`): the held-out accuracy of sft_info.json, logging.
    """

    seed: int = 1
    model: SFTModelConfig = SFTModelConfig()
    task: SFTTaskConfig = SFTTaskConfig()
    optim: SFTOptimConfig = SFTOptimConfig()
    eval: SFTEvalConfig = SFTEvalConfig()

    def __post_init__(self):
        # The checks between sections; each section checks its own fields.
        for name, cls in _SECTIONS.items():
            section = getattr(self, name)
            if not isinstance(section, cls):
                raise ConfigError(f"SFTConfig.{name} must be a {cls.__name__}, got {type(section).__name__}.")
        if self.task.max_seq_len > self.model.max_position_embeddings:
            raise ConfigError(
                f"SFTConfig.task.max_seq_len={self.task.max_seq_len} exceeds "
                f"model.max_position_embeddings={self.model.max_position_embeddings}."
            )
        if self.task.shortcut_from_step >= self.optim.steps and self.task.shortcut_fraction > 0:
            raise ConfigError(
                f"SFTConfig.task.shortcut_from_step={self.task.shortcut_from_step} must be < "
                f"optim.steps={self.optim.steps} (or task.shortcut_fraction 0): no step would train on "
                "shortcut solutions."
            )

    def replace(self, **changes) -> SFTConfig:
        """`dataclasses.replace` by section (`replace(optim=...)`); a flat field is a ConfigError naming its path."""
        _check_not_flat(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready and sectioned (the form stored in sft_info.json and compared for caching)."""
        return _json_ready(dataclasses.asdict(self))

    @classmethod
    def from_config_dict(cls, config: Mapping[str, Any]) -> SFTConfig:
        """From a sectioned mapping: the ml-collections dict of `experiments/sft_arithmetic.py`, or `to_dict()`'s.

        Unknown fields and values of the wrong type are a ConfigError naming the dotted field; a
        field of a section given at the top (the flat layout before the sections) names its new place.
        """
        values = to_plain(config)
        if isinstance(values, Mapping):
            _check_not_flat(values)
        return build_config(cls, values, "SFTConfig")

    def model_config(self, tokenizer) -> ModelConfig:
        """The architecture, with the tokenizer's vocabulary and special tokens."""
        m = self.model
        return ModelConfig(
            model_type="llama",
            vocab_size=len(tokenizer),
            hidden_size=m.hidden_size,
            intermediate_size=m.intermediate_size,
            num_layers=m.num_layers,
            num_heads=m.num_heads,
            num_kv_heads=m.num_kv_heads,
            head_dim=m.head_dim,
            tie_word_embeddings=True,
            max_position_embeddings=m.max_position_embeddings,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_ids=(tokenizer.eos_token_id,),
            pad_token_id=tokenizer.pad_token_id,
        )


def _check_not_flat(fields: Mapping[str, Any]) -> None:
    """A field of a section given at the top level (the flat SFTConfig before the sections): name its new path."""
    for key in fields:
        moved = [s for s, section in _SECTIONS.items() if key in {f.name for f in dataclasses.fields(section)}]
        if key not in _SECTIONS and moved:
            raise ConfigError(
                f"SFTConfig.{key} is now SFTConfig.{moved[0]}.{key}: the SFT config is sectioned like "
                "RunConfig (seed at the top; model, task, optim, eval)."
            )


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


# SFT sizes of the base model (the library defaults of `SFTConfig` are the "default" model).
_SFT_OVERRIDES = {
    "default": {},
    "quick": {  # plumbing only
        "task": {"shortcut_from_step": 100},
        "optim": {"steps": 150},
        "eval": {"eval_problems": 16, "eval_samples": 2, "log_every": 50},
    },
}


def sft_config(name: str = "default") -> SFTConfig:
    """The SFT run that makes the arithmetic base model of size `name` ("quick" or "default")."""
    if name not in _SFT_OVERRIDES:
        raise ConfigError(f"unknown base model size {name!r} (in 'sft:{name}'); expected 'quick' or 'default'.")
    return SFTConfig.from_config_dict(_SFT_OVERRIDES[name])
