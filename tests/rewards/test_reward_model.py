"""The reward closure on a real (tiny) model: L_ref against a direct transformers computation."""

import jax
import numpy as np
import pytest
import transformers

from sharpjax.models.hf import load_model
from sharpjax.rewards import RewardConfig, make_reward
from sharpjax.rollout import SamplingConfig, sample, score_tokens
from tests.tiny import require_torch


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_l_ref_is_the_base_models_response_log_likelihood(hf_checkpoint, left_padded_batch, family):
    torch = require_torch()
    model_dir = hf_checkpoint(family)
    params, config = load_model(model_dir, dtype="float32")
    prompts, prompt_mask = (np.asarray(x) for x in left_padded_batch)
    rollout = sample(params, prompts, prompt_mask, jax.random.key(0), config=config,
                     sampling=SamplingConfig(max_new_tokens=6, num_samples=2, stop_token_ids=(2, 7, 11)))
    tokens, attn, resp = (np.asarray(x) for x in (rollout.tokens, rollout.attention_mask, rollout.response_mask))
    assert resp.sum(-1).min() >= 1 and (attn - resp).sum(-1).min() >= 1  # prompts and responses both present

    # Independent reference: transformers in float64 log-softmax, response tokens only.
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    positions = np.maximum(np.cumsum(attn, -1) - 1, 0)
    with torch.no_grad():
        hf_logits = model(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(attn),
                          position_ids=torch.tensor(positions, dtype=torch.long)).logits.double()
    logp = torch.log_softmax(hf_logits[:, :-1], -1).gather(-1, torch.tensor(tokens[:, 1:])[..., None].long())[..., 0]
    expected = (logp.numpy() * resp[:, 1:]).sum(-1)

    ref_logp = score_tokens(params, rollout.tokens, rollout.attention_mask, config=config)
    out = make_reward(RewardConfig.likelihood_maximization())(mask_BT=rollout.response_mask, ref_logp_BT=ref_logp)
    np.testing.assert_allclose(np.asarray(out.ref_logp_sum_B), expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.asarray(out.reward_B), expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(out.length_B), resp.sum(-1))
    # The prompt's log-likelihood is not part of it: adding it would change the value.
    prompt_part = (logp.numpy() * (attn - resp)[:, 1:]).sum(-1)
    assert np.all(np.abs(prompt_part) > 1e-2)
