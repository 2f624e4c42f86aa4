"""Model configuration: one decoder-only transformer for Llama 3.x, Qwen2.5 and Qwen3.

`ModelConfig.from_hf_dict` reads a Hugging Face `config.json` (both the transformers 4
layout with `rope_theta`/`rope_scaling` and the transformers 5 layout with
`rope_parameters`) and fails with a message naming the missing or unsupported field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax.numpy as jnp

from sharpjax.errors import ConfigError

ModelType = Literal["llama", "qwen2", "qwen3"]
SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "qwen2", "qwen3")

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters.

    `kind` is "default" (plain RoPE) or "llama3" (Llama 3.1+ frequency-dependent scaling).
    """

    theta: float = 10000.0
    kind: Literal["default", "llama3"] = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of one decoder-only transformer (hashable: usable as a jit static arg).

    Attributes:
      model_type: HF family name; decides the parameter names and the bias/norm layout.
      vocab_size: V, rows of the embedding table.
      hidden_size: D, residual width.
      intermediate_size: F, SwiGLU hidden width.
      num_layers: L.
      num_heads: N query heads.
      num_kv_heads: K key/value heads (GQA: N % K == 0).
      head_dim: H.
      rms_norm_eps: epsilon inside every RMSNorm.
      rope: rotary embedding parameters.
      tie_word_embeddings: the output projection reuses the embedding table.
      qkv_bias: q/k/v projections carry a bias (Qwen2; Llama's `attention_bias`).
      o_bias: the output projection carries a bias (Llama `attention_bias` only).
      mlp_bias: the MLP projections carry biases (Llama `mlp_bias`).
      qk_norm: per-head RMSNorm on q and k before RoPE (Qwen3).
      max_position_embeddings: the model's context length; responses must fit in it.
      dtype: parameter and activation dtype name ("bfloat16" on accelerators).
      bos_token_id, eos_token_ids, pad_token_id: special tokens from config.json.
      attention: how training, scoring and prefill attention runs: "auto" (cuDNN flash
        attention on an NVIDIA GPU when bf16/fp16, else XLA), "cudnn" or "xla" to force one.
      hf_config: the original config.json as a tuple of items, kept so export round-trips.
    """

    model_type: ModelType
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope: RopeConfig = RopeConfig()
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    max_position_embeddings: int = 2048
    dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    attention: str = "auto"
    hf_config: tuple[tuple[str, Any], ...] = dataclasses.field(default=(), compare=False, hash=False, repr=False)

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"model_type={self.model_type!r} is not supported; sharpjax supports {SUPPORTED_MODEL_TYPES}."
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_heads} must be a multiple of num_key_value_heads={self.num_kv_heads}."
            )
        if self.dtype not in _DTYPES:
            raise ConfigError(f"dtype={self.dtype!r}; expected one of {sorted(_DTYPES)}.")
        if self.attention not in ("auto", "cudnn", "xla"):
            raise ConfigError(f"attention={self.attention!r}; expected 'auto', 'cudnn' or 'xla'.")
        if self.attention == "cudnn" and self.dtype == "float32":
            raise ConfigError("attention='cudnn' needs dtype 'bfloat16' or 'float16' (no fp32 cuDNN flash).")

    @property
    def jnp_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def num_params(self) -> int:
        """Parameter count (embedding counted once when tied)."""
        d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * h * (2 * self.num_heads + 2 * self.num_kv_heads)
        layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.num_layers * layer + self.vocab_size * d + head + d

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], *, dtype: str | None = None, source: str = "config.json") -> ModelConfig:
        """Builds a config from a Hugging Face config dict.

        Args:
          hf: the parsed config.json.
          dtype: override of the parameter dtype; default: the file's `torch_dtype`/`dtype`,
            else float32.
          source: where `hf` came from, for error messages.
        """

        def need(key: str):
            if key not in hf or hf[key] is None:
                raise ConfigError(f"{source}: required field {key!r} is missing.")
            return hf[key]

        model_type = hf.get("model_type")
        if model_type is None:
            raise ConfigError(f"{source}: required field 'model_type' is missing.")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: model_type={model_type!r} is not supported; sharpjax supports "
                f"{SUPPORTED_MODEL_TYPES} (Llama 3.x, Qwen2.5, Qwen3)."
            )
        if hf.get("use_sliding_window"):
            raise ConfigError(f"{source}: use_sliding_window=true is not supported (full attention only).")
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{source}: hidden_act={act!r} is not supported (SwiGLU with silu only).")

        num_heads = need("num_attention_heads")
        hidden = need("hidden_size")
        rope_params = dict(hf.get("rope_parameters") or {})
        rope_scaling = dict(hf.get("rope_scaling") or {})
        rope_params.update({k: v for k, v in rope_scaling.items() if k not in rope_params})
        theta = rope_params.get("rope_theta", hf.get("rope_theta", 10000.0))
        kind = rope_params.get("rope_type", rope_params.get("type", "default"))
        if kind not in ("default", "llama3"):
            raise ConfigError(f"{source}: rope type {kind!r} is not supported (only 'default' and 'llama3').")
        rope = RopeConfig(theta=float(theta), kind=kind)
        if kind == "llama3":
            try:
                rope = dataclasses.replace(
                    rope,
                    factor=float(rope_params["factor"]),
                    low_freq_factor=float(rope_params["low_freq_factor"]),
                    high_freq_factor=float(rope_params["high_freq_factor"]),
                    original_max_position_embeddings=int(rope_params["original_max_position_embeddings"]),
                )
            except KeyError as e:
                raise ConfigError(f"{source}: llama3 rope scaling is missing field {e.args[0]!r}.") from None

        eos = hf.get("eos_token_id")
        eos_ids = () if eos is None else tuple(eos) if isinstance(eos, list) else (int(eos),)
        attention_bias = bool(hf.get("attention_bias", False))
        file_dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
        return cls(
            model_type=model_type,
            vocab_size=need("vocab_size"),
            hidden_size=hidden,
            intermediate_size=need("intermediate_size"),
            num_layers=need("num_hidden_layers"),
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=hf.get("head_dim") or hidden // num_heads,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope=rope,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=True if model_type == "qwen2" else attention_bias,
            o_bias=attention_bias if model_type != "qwen2" else False,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            dtype=dtype or (file_dtype if file_dtype in _DTYPES else "float32"),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
            pad_token_id=hf.get("pad_token_id"),
            hf_config=tuple(sorted((k, _freeze(v)) for k, v in hf.items())),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json to write next to exported weights (the original one when known)."""
        if self.hf_config:
            out = {k: _thaw(v) for k, v in self.hf_config}
        else:
            out = {
                "model_type": self.model_type,
                "architectures": [
                    {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[
                        self.model_type
                    ]
                ],
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size,
                "num_hidden_layers": self.num_layers,
                "num_attention_heads": self.num_heads,
                "num_key_value_heads": self.num_kv_heads,
                "head_dim": self.head_dim,
                "rms_norm_eps": self.rms_norm_eps,
                "hidden_act": "silu",
                "tie_word_embeddings": self.tie_word_embeddings,
                "max_position_embeddings": self.max_position_embeddings,
                "bos_token_id": self.bos_token_id,
                "eos_token_id": list(self.eos_token_ids) if len(self.eos_token_ids) != 1 else self.eos_token_ids[0],
                "pad_token_id": self.pad_token_id,
                "rope_theta": self.rope.theta,
            }
            if self.model_type == "llama":
                out["attention_bias"] = self.o_bias
                out["mlp_bias"] = self.mlp_bias
            if self.rope.kind == "llama3":
                out["rope_scaling"] = {
                    "rope_type": "llama3",
                    "factor": self.rope.factor,
                    "low_freq_factor": self.rope.low_freq_factor,
                    "high_freq_factor": self.rope.high_freq_factor,
                    "original_max_position_embeddings": self.rope.original_max_position_embeddings,
                }
        out["torch_dtype"] = self.dtype
        return out


def _freeze(v):
    if isinstance(v, dict):
        return ("__dict__", tuple(sorted((k, _freeze(x)) for k, x in v.items())))
    if isinstance(v, list):
        return ("__list__", tuple(_freeze(x) for x in v))
    return v


def _thaw(v):
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "__dict__":
        return {k: _thaw(x) for k, x in v[1]}
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "__list__":
        return [_thaw(x) for x in v[1]]
    return v
