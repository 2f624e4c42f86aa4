"""The sampler against transformers' generate, its own scoring, and exact distributions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from sharpjax.models import ModelConfig, init_params, load_model
from sharpjax.rollout import SamplingConfig, filter_logits, sample, score_tokens
from tests.tiny import FAMILIES, require_torch

MAX_NEW = 12


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_matches_hf_generate(hf_checkpoint, left_padded_batch, family):
    torch = require_torch()
    model_dir = hf_checkpoint(family)
    tokens, mask = left_padded_batch
    params, config = load_model(model_dir, dtype="float32")
    sampling = SamplingConfig(max_new_tokens=MAX_NEW, greedy=True, stop_token_ids=(2,), pad_id=0)
    ours = sample(params, tokens, mask, jax.random.key(0), config=config, sampling=sampling)

    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf.generate(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            max_new_tokens=MAX_NEW,
            do_sample=False,
            eos_token_id=2,
            pad_token_id=0,
        ).numpy()[:, tokens.shape[1] :]
    ref = np.pad(ref, ((0, 0), (0, MAX_NEW - ref.shape[1])))
    np.testing.assert_array_equal(np.asarray(ours.tokens)[:, tokens.shape[1] :], ref)


@pytest.mark.parametrize("family", FAMILIES)
def test_sampler_logprobs_equal_teacher_forced_scores(hf_checkpoint, left_padded_batch, family):
    tokens, mask = left_padded_batch
    params, config = load_model(hf_checkpoint(family), dtype="float32")
    sampling = SamplingConfig(max_new_tokens=MAX_NEW, num_samples=3, temperature=0.7, stop_token_ids=(2,))
    out = sample(params, tokens, mask, jax.random.key(1), config=config, sampling=sampling)
    scored = score_tokens(params, out.tokens, out.attention_mask, config=config, chunk_size=5)
    resp = np.asarray(out.response_mask, bool)
    assert np.abs(np.asarray(scored - out.logprobs))[resp].max() < 1e-4
    # At T = 0.7 the sampling log-probs are those of softmax(logits / 0.7).
    scored_t = score_tokens(params, out.tokens, out.attention_mask, config=config, temperature=0.7)
    assert np.abs(np.asarray(scored_t - out.sampling_logprobs))[resp].max() < 1e-4
    assert out.tokens.shape == (9, 9 + MAX_NEW)
    np.testing.assert_array_equal(np.asarray(out.prompt_index), np.repeat(np.arange(3), 3))


def test_stop_tokens_end_responses(hf_checkpoint, left_padded_batch):
    """Use a token the greedy path emits as the stop token: everything after it is pad."""
    tokens, mask = left_padded_batch
    params, config = load_model(hf_checkpoint("llama"), dtype="float32")
    free = sample(params, tokens, mask, jax.random.key(0), config=config,
                  sampling=SamplingConfig(max_new_tokens=MAX_NEW, greedy=True, ignore_eos=True, pad_id=0))
    resp = np.asarray(free.tokens)[:, 9:]
    assert (np.asarray(free.lengths) == MAX_NEW).all() and not np.asarray(free.finished).any()
    stop = int(resp[0, 3])
    out = sample(params, tokens, mask, jax.random.key(0), config=config,
                 sampling=SamplingConfig(max_new_tokens=MAX_NEW, greedy=True, stop_token_ids=(stop,), pad_id=0))
    got = np.asarray(out.tokens)[:, 9:]
    for row_free, row, length, finished, rmask in zip(
        resp, got, np.asarray(out.lengths), np.asarray(out.finished), np.asarray(out.response_mask)[:, 9:]
    ):
        hits = np.flatnonzero(row_free == stop)
        expected_len = hits[0] + 1 if len(hits) else MAX_NEW
        assert length == expected_len and finished == bool(len(hits))
        np.testing.assert_array_equal(row[:length], row_free[:length])
        assert (row[length:] == 0).all()
        np.testing.assert_array_equal(rmask, np.arange(MAX_NEW) < length)
    assert np.asarray(out.finished)[0]


def _tiny_model(vocab=12):
    config = ModelConfig(model_type="qwen3", vocab_size=vocab, hidden_size=32, intermediate_size=64, num_layers=1,
                         num_heads=2, num_kv_heads=1, head_dim=16, qk_norm=True)
    params = init_params(config, jax.random.key(3), init_std=0.5)
    return params, config


def test_empirical_distribution_matches_tempered_softmax():
    params, config = _tiny_model()
    prompt = np.array([[4, 5, 6]], np.int32)
    n = 20000
    from sharpjax.models import apply

    logits = np.asarray(apply(params, prompt, np.ones_like(prompt), config=config))[0, -1]
    for temperature in (0.5, 1.0, 2.0):
        sampling = SamplingConfig(max_new_tokens=1, num_samples=n, temperature=temperature, ignore_eos=True)
        out = sample(params, prompt, np.ones_like(prompt), jax.random.key(7), config=config, sampling=sampling)
        counts = np.bincount(np.asarray(out.tokens)[:, -1], minlength=config.vocab_size)
        expected = np.asarray(jax.nn.softmax(logits / temperature))
        tv = 0.5 * np.abs(counts / n - expected).sum()
        # E[TV] <= 0.5 * sum sqrt(p (1 - p) / n) ~ 0.01 here; 0.025 is a > 4-sigma bound.
        bound = 2.5 * 0.5 * np.sqrt(expected * (1 - expected) / n).sum()
        assert tv < bound, (temperature, tv, bound)


@pytest.mark.parametrize("top_k,top_p", [(3, 1.0), (0, 0.6), (4, 0.8)])
def test_top_k_top_p_never_sample_outside_the_allowed_set(top_k, top_p):
    params, config = _tiny_model(vocab=16)
    prompt = np.array([[4, 5, 6], [0, 7, 8]], np.int32)
    pmask = np.array([[1, 1, 1], [0, 1, 1]], np.int32)
    sampling = SamplingConfig(max_new_tokens=6, num_samples=200, top_k=top_k, top_p=top_p, ignore_eos=True)
    out = sample(params, prompt, pmask, jax.random.key(0), config=config, sampling=sampling)
    from sharpjax.models import apply

    logits = np.asarray(apply(params, out.tokens, out.attention_mask, config=config))
    for t in range(3, 9):
        row_logits, chosen = logits[:, t - 1], np.asarray(out.tokens)[:, t]
        order = np.argsort(-row_logits, axis=-1)
        probs = np.asarray(jax.nn.softmax(row_logits, axis=-1))
        for lg, pr, o, c in zip(row_logits, probs, order, chosen):
            allowed = set(o[:top_k]) if top_k else set(o)
            if top_p < 1:
                mass_before = np.cumsum(pr[o]) - pr[o]
                allowed &= set(o[mass_before < top_p])
            assert c in allowed


def test_filter_logits_keeps_exact_sets():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    assert np.isfinite(filter_logits(logits, top_k=2, top_p=1.0)).tolist() == [[True, True, False, False]]
    assert np.isfinite(filter_logits(logits, top_k=0, top_p=0.8)).tolist() == [[True, True, False, False]]
    assert np.isfinite(filter_logits(logits, top_k=0, top_p=0.81)).tolist() == [[True, True, True, False]]
    assert np.isfinite(filter_logits(logits, top_k=0, top_p=0.01)).tolist() == [[True, False, False, False]]


def test_bad_sampling_configs():
    with pytest.raises(ValueError, match="stop_token_ids is empty"):
        SamplingConfig()
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=0.0, ignore_eos=True)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=1.5, ignore_eos=True)


def test_untempered_sampling_logprobs_are_the_policy_logprobs_bit_for_bit():
    # The loss's importance weight uses sampling_logprobs as its behaviour policy (issue 16,
    # item 1): at the paper's T = 1, untruncated, they must be the temperature-1 log-probs
    # exactly, so the paper's update is unchanged; at T != 1 they differ.
    params, config = _tiny_model()
    prompt = np.array([[4, 5, 6], [7, 8, 9]], np.int32)
    for temperature, same in ((1.0, True), (0.7, False)):
        sampling = SamplingConfig(max_new_tokens=6, num_samples=4, temperature=temperature, ignore_eos=True)
        out = sample(params, prompt, np.ones_like(prompt), jax.random.key(2), config=config, sampling=sampling)
        equal = np.array_equal(np.asarray(out.sampling_logprobs), np.asarray(out.logprobs))
        assert equal == same, temperature
