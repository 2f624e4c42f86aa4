"""Tiny models, checkpoints and configs shared by the tests (one place; CPU, seconds).

    hf_config, build_hf_model   tiny random transformers models of the three paper families
    make_tiny_model             a tiny sharpjax-saved Llama + char tokenizer (loop, launcher tests)
    tiny_config                 the quick arithmetic RL config, shrunk
    tiny_setup                  a tiny rollout batch, its rewards and a step config (train-step tests)
"""

import os
import sys

import jax
import numpy as np
import pytest

from sharpjax.configs.small_scale import arithmetic_rl_config
from sharpjax.losses import LossConfig
from sharpjax.models import ModelConfig, init_params, save_model
from sharpjax.models.tokenizer import build_char_tokenizer
from sharpjax.rewards import RewardConfig
from sharpjax.rollout import SamplingConfig, sample
from sharpjax.train.config import OptimConfig
from sharpjax.train.step import StepConfig, compute_rewards

FAMILIES = ("llama", "qwen2", "qwen3")
_BASE = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=16384,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def hf_config(family: str, *, tie: bool | None = None):
    import transformers

    if family == "llama":
        # As Llama-3.2-3B: tied embeddings, llama3 rope scaling.
        return transformers.LlamaConfig(**_BASE, rope_parameters=_LLAMA3_ROPE, tie_word_embeddings=tie is not False)
    if family == "qwen2":
        return transformers.Qwen2Config(**_BASE, tie_word_embeddings=bool(tie))
    if family == "qwen3":
        return transformers.Qwen3Config(**_BASE, tie_word_embeddings=bool(tie))
    raise ValueError(family)


def require_torch():
    """torch, the parity tests' reference implementation, or a skip that says why.

    The test extra installs it on Python 3.11 only (setup.cfg: on 3.12+ the registry serves
    only multi-GB CUDA builds), so the Python 3.12 CI stage skips these tests; under CI=true
    on Python 3.11 a missing torch fails instead, since that stage must run them.
    """
    try:
        import torch
    except ImportError:
        reason = ("torch is not installed: the parity tests against transformers' PyTorch models need it "
                  "(the test extra leaves it out on Python >= 3.12; `pip install torch` to run them here)")
        if os.environ.get("CI", "").lower() in ("true", "1", "yes") and sys.version_info < (3, 12):
            pytest.fail(f"CI=true on Python 3.11: {reason}", pytrace=False)
        pytest.skip(reason)
    return torch


def build_hf_model(family: str, *, tie: bool | None = None, seed: int = 0):
    """A tiny HF PyTorch model with every weight random (norms near 1, biases nonzero)."""
    torch = require_torch()
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(family, tie=tie)).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model


def make_tiny_model(path: str, *, max_position_embeddings: int = 160) -> str:
    tok = build_char_tokenizer()
    cfg = ModelConfig(model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_ids=(tok.eos_token_id,), pad_token_id=tok.pad_token_id,
                      max_position_embeddings=max_position_embeddings)
    save_model(path, init_params(cfg, jax.random.key(0), init_std=0.2), cfg)
    tok.save_pretrained(path)
    return path


def tiny_config(model_dir, reward="tilted-a2-b1", **overrides):
    """The quick arithmetic config, shrunk; overrides use `section__field=value`."""
    c = arithmetic_rl_config("quick", reward)
    c.model_dir = model_dir
    c.rollout.max_total_length = 96
    c.rollout.max_new_tokens = 24
    c.data.num_validation_problems = 4
    c.train.steps = 4
    c.eval.every = 2
    for dotted, value in overrides.items():
        node = c
        *path, leaf = dotted.split("__")
        for p in path:
            node = node[p]
        node[leaf] = value
    return c


GROUP = 4


def tiny_setup(*, kl_coef=0.1, micro_batches=1, reward=None, lr=1e-2):
    model = ModelConfig(model_type="qwen2", vocab_size=48, hidden_size=32, intermediate_size=64, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=8, qkv_bias=True, max_position_embeddings=64)
    params = init_params(model, jax.random.key(0), init_std=0.3)
    rng = np.random.default_rng(0)
    prompts = rng.integers(3, 48, (4, 6)).astype(np.int32)
    pmask = np.ones_like(prompts)
    pmask[1, :2] = 0
    pmask[3, :4] = 0
    rollout = sample(params, prompts, pmask, jax.random.key(1), config=model,
                     sampling=SamplingConfig(max_new_tokens=8, num_samples=GROUP, stop_token_ids=(2, 5, 7)))
    reward = reward or RewardConfig(mode="sampling", alpha=2.0, beta_inv=0.0)
    loss = LossConfig(kl_coef=kl_coef)
    cfg = StepConfig(model=model, loss=loss, optim=OptimConfig(learning_rate=lr, warmup_steps=0), micro_batches=micro_batches,
                     remat="full", logits_chunk=5)
    scored = compute_rewards(params, rollout, None, model=model, reward=reward, loss=loss, group_size=GROUP)
    return params, rollout, scored, cfg
