"""Hugging Face checkpoint import/export without torch.

`load_model(dir)` reads `config.json` and `model.safetensors` (or a sharded
`model.safetensors.index.json`) straight into JAX arrays in the layer-stacked layout of
`sharpjax.models.transformer`; `save_model(dir, params, config)` writes the inverse, which
`transformers.AutoModelForCausalLM.from_pretrained` loads.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from sharpjax.errors import ModelFileError
from sharpjax.models.config import ModelConfig
from sharpjax.models.partitioning import put_global
from sharpjax.models.transformer import Params, param_logical_axes

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclasses.dataclass(frozen=True)
class _Rule:
    """How one of our per-layer params maps to one HF tensor per layer."""

    hf_name: str  # with "{i}" for the layer index
    to_ours: Callable[[np.ndarray, ModelConfig], np.ndarray]
    to_hf: Callable[[np.ndarray, ModelConfig], np.ndarray]


def _proj_in(heads_attr: str) -> _Rule:
    # HF Linear weight [heads*H, D] <-> ours [D, heads, H]
    def to_ours(w, c):
        return w.T.reshape(c.hidden_size, getattr(c, heads_attr), c.head_dim)

    def to_hf(w, c):
        return w.reshape(c.hidden_size, -1).T

    return to_ours, to_hf


def _bias(heads_attr: str):
    return (lambda b, c: b.reshape(getattr(c, heads_attr), c.head_dim)), (lambda b, c: b.reshape(-1))


_IDENTITY = (lambda w, c: w, lambda w, c: w)
_TRANSPOSE = (lambda w, c: w.T, lambda w, c: w.T)
_PREFIX = "model.layers.{i}."
_LAYER_RULES: dict[str, _Rule] = {
    "attn_norm": _Rule(_PREFIX + "input_layernorm.weight", *_IDENTITY),
    "q": _Rule(_PREFIX + "self_attn.q_proj.weight", *_proj_in("num_heads")),
    "k": _Rule(_PREFIX + "self_attn.k_proj.weight", *_proj_in("num_kv_heads")),
    "v": _Rule(_PREFIX + "self_attn.v_proj.weight", *_proj_in("num_kv_heads")),
    "o": _Rule(
        _PREFIX + "self_attn.o_proj.weight",
        lambda w, c: w.T.reshape(c.num_heads, c.head_dim, c.hidden_size),
        lambda w, c: w.reshape(-1, c.hidden_size).T,
    ),
    "q_bias": _Rule(_PREFIX + "self_attn.q_proj.bias", *_bias("num_heads")),
    "k_bias": _Rule(_PREFIX + "self_attn.k_proj.bias", *_bias("num_kv_heads")),
    "v_bias": _Rule(_PREFIX + "self_attn.v_proj.bias", *_bias("num_kv_heads")),
    "o_bias": _Rule(_PREFIX + "self_attn.o_proj.bias", *_IDENTITY),
    "q_norm": _Rule(_PREFIX + "self_attn.q_norm.weight", *_IDENTITY),
    "k_norm": _Rule(_PREFIX + "self_attn.k_norm.weight", *_IDENTITY),
    "mlp_norm": _Rule(_PREFIX + "post_attention_layernorm.weight", *_IDENTITY),
    "gate": _Rule(_PREFIX + "mlp.gate_proj.weight", *_TRANSPOSE),
    "up": _Rule(_PREFIX + "mlp.up_proj.weight", *_TRANSPOSE),
    "down": _Rule(_PREFIX + "mlp.down_proj.weight", *_TRANSPOSE),
    "gate_bias": _Rule(_PREFIX + "mlp.gate_proj.bias", *_IDENTITY),
    "up_bias": _Rule(_PREFIX + "mlp.up_proj.bias", *_IDENTITY),
    "down_bias": _Rule(_PREFIX + "mlp.down_proj.bias", *_IDENTITY),
}
_TOP_RULES: dict[str, _Rule] = {
    "embed": _Rule("model.embed_tokens.weight", *_IDENTITY),
    "final_norm": _Rule("model.norm.weight", *_IDENTITY),
    "lm_head": _Rule("lm_head.weight", *_TRANSPOSE),
}


def load_config(model_dir: str, *, dtype: str | None = None) -> ModelConfig:
    """Reads `model_dir/config.json` into a `ModelConfig` (errors name the file and field)."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise ModelFileError(f"{path} not found: a Hugging Face model directory needs config.json.")
    return ModelConfig.from_hf_dict(read_json_object(path, "config.json"), dtype=dtype, source=path)


def read_json(path: str, what: str):
    """A model directory's JSON file; a corrupt one is a ModelFileError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(
            f"{path} is not valid JSON ({e}): the model directory's {what} is corrupt or truncated; "
            "re-download or re-export it."
        ) from None


def read_json_object(path: str, what: str) -> dict:
    """`read_json` of a file that must hold a JSON object (config.json, sft_info.json)."""
    value = read_json(path, what)
    if not isinstance(value, dict):
        raise ModelFileError(f"{path} holds a JSON {type(value).__name__}, not an object: the file is corrupt; "
                             "re-download or re-export the model directory.")
    return value


def _open_safetensors(path: str):
    """An open safetensors file; a truncated or corrupt one is a ModelFileError naming it."""
    try:
        return safetensors.safe_open(path, "numpy")
    except Exception as e:  # safetensors raises its own SafetensorError (not exported stably)
        raise ModelFileError(
            f"{path} cannot be read as safetensors ({e}): the file is truncated or corrupt (an interrupted "
            "download or copy?); re-download or re-export the model directory."
        ) from None


class _TensorReader:
    """Reads named tensors from a single or sharded safetensors checkpoint."""

    def __init__(self, model_dir: str):
        index_path = os.path.join(model_dir, INDEX_FILE)
        single_path = os.path.join(model_dir, SINGLE_FILE)
        if os.path.isfile(index_path):
            index = read_json(index_path, INDEX_FILE)
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict):
                raise ModelFileError(f"{index_path} has no 'weight_map' object: the index is corrupt; re-export it.")
            self.files = {name: os.path.join(model_dir, fname) for name, fname in weight_map.items()}
        elif os.path.isfile(single_path):
            with _open_safetensors(single_path) as f:
                self.files = {name: single_path for name in f.keys()}
        else:
            raise ModelFileError(f"{model_dir}: neither {SINGLE_FILE} nor {INDEX_FILE} found.")
        for path in set(self.files.values()):
            if not os.path.isfile(path):
                raise ModelFileError(f"{path} is named in {INDEX_FILE} but does not exist.")
        self._handles: dict[str, safetensors.safe_open] = {}

    def get(self, name: str, needed_for: str) -> np.ndarray:
        if name not in self.files:
            where = sorted(set(self.files.values()))
            raise ModelFileError(f"tensor {name!r} (for {needed_for}) is missing from {', '.join(where)}.")
        path = self.files[name]
        if path not in self._handles:
            self._handles[path] = _open_safetensors(path).__enter__()
        try:
            return self._handles[path].get_tensor(name)
        except Exception as e:  # a header that promises more bytes than the file holds
            raise ModelFileError(f"{path}: tensor {name!r} cannot be read ({e}): the file is corrupt.") from None


def check_model_files(model_dir: str, *, weights_required: bool = True) -> ModelConfig:
    """Reads config.json and every safetensors header of `model_dir` (no weights): a missing,
    corrupt or truncated file is a ModelFileError naming it, before anything heavy runs.

    Args:
      model_dir: a Hugging Face model directory.
      weights_required: False accepts a directory with no weight files at all (the launcher's
        fit check plans from config.json alone; loading reports the missing weights later).

    Returns:
      The model's config.
    """
    config = load_config(model_dir)
    if not weights_required and not any(
        os.path.exists(os.path.join(model_dir, name)) for name in (SINGLE_FILE, INDEX_FILE)
    ):
        return config
    reader = _TensorReader(model_dir)
    for path in sorted(set(reader.files.values())):
        with _open_safetensors(path):
            pass
    return config


def load_params(
    model_dir: str, config: ModelConfig, *, shardings: Params | None = None
) -> Params:
    """Loads the safetensors weights into the layer-stacked param pytree.

    Args:
      model_dir: a Hugging Face model directory.
      config: from `load_config(model_dir)`; its `dtype` is the dtype of the result.
      shardings: optional pytree of `jax.sharding.Sharding` (same structure as the
        params) to place each array directly where it belongs.
    """
    reader = _TensorReader(model_dir)
    axes = param_logical_axes(config)
    dtype = config.jnp_dtype

    def place(value: np.ndarray, *where: str):
        value = value.astype(dtype) if value.dtype != dtype else value
        if shardings is None:
            return jnp.asarray(value)
        sharding = shardings
        for key in where:
            sharding = sharding[key]
        return put_global(value, sharding)

    params: Params = {"layers": {}}
    for name in axes["layers"]:
        rule = _LAYER_RULES[name]
        per_layer = [
            rule.to_ours(reader.get(rule.hf_name.format(i=i), f"layers/{name}"), config)
            for i in range(config.num_layers)
        ]
        params["layers"][name] = place(np.stack(per_layer), "layers", name)
    for name in axes:
        if name != "layers":
            rule = _TOP_RULES[name]
            params[name] = place(rule.to_ours(reader.get(rule.hf_name, name), config), name)
    return params


def load_model(
    model_dir: str, *, dtype: str | None = None, shardings: Params | None = None
) -> tuple[Params, ModelConfig]:
    """`load_config` + `load_params`: (params, config) from a Hugging Face directory."""
    config = load_config(model_dir, dtype=dtype)
    return load_params(model_dir, config, shardings=shardings), config


def to_hf_state_dict(params: Params, config: ModelConfig) -> dict[str, np.ndarray]:
    """The HF tensor names and layouts of `params` (host numpy arrays)."""
    out: dict[str, np.ndarray] = {}
    for name, stacked in params["layers"].items():
        rule = _LAYER_RULES[name]
        host = np.asarray(jax.device_get(stacked))
        for i in range(config.num_layers):
            out[rule.hf_name.format(i=i)] = np.ascontiguousarray(rule.to_hf(host[i], config))
    for name, value in params.items():
        if name != "layers":
            out[_TOP_RULES[name].hf_name] = np.ascontiguousarray(
                _TOP_RULES[name].to_hf(np.asarray(jax.device_get(value)), config)
            )
    return out


def save_model(
    model_dir: str,
    params: Params,
    config: ModelConfig,
    *,
    max_shard_bytes: int = 5 * 2**30,
) -> None:
    """Writes `config.json` and safetensors (sharded with an index above `max_shard_bytes`)."""
    os.makedirs(model_dir, exist_ok=True)
    state = to_hf_state_dict(params, config)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, value in state.items():
        if size + value.nbytes > max_shard_bytes and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][name] = value
        size += value.nbytes
    if len(shards) == 1:
        _save_safetensors(shards[0], os.path.join(model_dir, SINGLE_FILE))
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _save_safetensors(shard, os.path.join(model_dir, fname))
            weight_map |= {name: fname for name in shard}
        total = sum(v.nbytes for v in state.values())
        with open(os.path.join(model_dir, INDEX_FILE), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(config.to_hf_dict(), f, indent=2)


def _save_safetensors(tensors: dict[str, np.ndarray], path: str) -> None:
    """`safetensors.numpy.save_file`, with the permissions of any file the user writes.

    safetensors writes through a private temporary file (mode 0600) that it renames: the weights
    of an export were unreadable by the group that can read every other file of the run.
    """
    safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    """The process's umask: read from /proc where Linux reports it (setting it to read it back
    would change it for a moment under every thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
