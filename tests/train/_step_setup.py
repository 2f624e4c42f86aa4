"""A tiny rollout batch and step config shared by the train-step tests (and their subprocess)."""

import jax
import numpy as np

from sharpjax.losses import LossConfig
from sharpjax.models import ModelConfig, init_params
from sharpjax.rewards import RewardConfig
from sharpjax.rollout import SamplingConfig, sample
from sharpjax.train.step import OptimConfig, StepConfig, compute_rewards

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
