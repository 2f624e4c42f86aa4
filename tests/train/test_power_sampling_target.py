"""Power sampling through the real training path moves the policy toward the exact power distribution.

With a vocabulary of 4 tokens and at most 3 response tokens there are 40 responses, so the
base model's p(y) for every response, and the power distribution q_alpha(y) = p(y)^alpha / Z
that the sampling reward (alpha L_ref - L_pol, beta_inv = 0) has as its optimum, can be
listed exactly. The policy is trained with the same sampler, reward, RLOO advantages and
train step as every RL run (nothing tabular or closed-form on the training side), and its
exact distribution over the 40 responses must approach q_alpha.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharpjax.losses import LossConfig
from sharpjax.models import ModelConfig, init_params
from sharpjax.rewards import RewardConfig
from sharpjax.rollout import SamplingConfig, sample
from sharpjax.rollout.scoring import score_tokens
from sharpjax.train.config import OptimConfig
from sharpjax.train.optim import make_optimizer
from sharpjax.train.step import StepConfig, compute_rewards, init_train_state, make_train_step

VOCAB, EOS, PAD, MAX_NEW = 4, 3, 0, 3
PROMPT = np.array([[1, 2]], np.int32)
MODEL = ModelConfig(model_type="qwen2", vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_layers=1,
                    num_heads=2, num_kv_heads=1, head_dim=8, qkv_bias=True, max_position_embeddings=16)


def _all_responses() -> list[tuple[int, ...]]:
    """Every response the sampler can produce: ends at the first EOS, or at MAX_NEW tokens."""
    out = []
    for n in range(1, MAX_NEW + 1):
        for prefix in itertools.product([t for t in range(VOCAB) if t != EOS], repeat=n - 1):
            out += [prefix + (EOS,)] + ([prefix + (t,) for t in range(VOCAB) if t != EOS] if n == MAX_NEW else [])
    return out


RESPONSES = _all_responses()


def _exact_distribution(params) -> np.ndarray:
    """[N] probability of each response in RESPONSES under `params`, given PROMPT."""
    p = PROMPT.shape[1]
    tokens = np.full((len(RESPONSES), p + MAX_NEW), PAD, np.int32)
    mask = np.zeros_like(tokens)
    tokens[:, :p], mask[:, :p] = PROMPT, 1
    response = np.zeros_like(tokens)
    for i, r in enumerate(RESPONSES):
        tokens[i, p:p + len(r)] = r
        mask[i, p:p + len(r)] = 1
        response[i, p:p + len(r)] = 1
    logp = score_tokens(params, jnp.asarray(tokens), jnp.asarray(mask), config=MODEL)
    return np.exp(np.asarray((logp * response).sum(-1), np.float64))


def _tv(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(a - b).sum())


@pytest.mark.parametrize("alpha", [2.0, 4.0])
def test_power_sampling_reward_trains_the_policy_toward_p_to_the_alpha(alpha):
    assert len(RESPONSES) == 1 + 3 + 9 * 4
    base = init_params(MODEL, jax.random.key(3), init_std=1.0)
    p_base = _exact_distribution(base)
    np.testing.assert_allclose(p_base.sum(), 1.0, atol=1e-5)  # the list is every response
    target = p_base**alpha / (p_base**alpha).sum()

    reward = RewardConfig(mode="sampling", alpha=alpha, beta_inv=0.0)
    loss = LossConfig()  # the paper's: RLOO, token-mean, no KL term
    group = 64
    cfg = StepConfig(model=MODEL, loss=loss, optim=OptimConfig(learning_rate=3e-2, warmup_steps=0), remat="none")
    state = init_train_state(base, make_optimizer(cfg.optim))
    step_fn = make_train_step(cfg, state, None)
    sampling = SamplingConfig(max_new_tokens=MAX_NEW, num_samples=group, stop_token_ids=(EOS,), pad_id=PAD)
    rollout_and_score = jax.jit(lambda params, key: compute_rewards(
        base, sample(params, PROMPT, np.ones_like(PROMPT), key, config=MODEL, sampling=sampling), None,
        model=MODEL, reward=reward, loss=loss, group_size=group))

    tv_start = _tv(p_base, target)
    for step in range(150):
        scored = rollout_and_score(state.params, jax.random.key(1000 + step))
        state, _ = step_fn(state, scored.batch)
    p_trained = _exact_distribution(state.params)
    tv_end = _tv(p_trained, target)

    assert tv_start > 0.1, tv_start  # the base model is far enough from its power distribution to see a move
    assert tv_end < 0.3 * tv_start, (tv_start, tv_end)
    # Sample statistics: the base model's expected log-likelihood of the policy's samples
    # moves from its own entropy toward that of the power distribution.
    ll = np.log(p_base)
    assert abs(p_trained @ ll - target @ ll) < 0.3 * abs(p_base @ ll - target @ ll)
