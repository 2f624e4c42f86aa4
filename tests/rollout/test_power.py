"""Inference-time power sampling (`sharpjax.rollout.power`) on an exactly enumerable toy model.

With 4 tokens (3 = EOS) and a budget of 3 response tokens there are 40 responses, so p(y),
the power distribution p^alpha / Z, and the exact law of the block-wise MH chain after any
number of steps (its transition matrix, built here from teacher-forced scores and the MH
formula written out independently of the sampler) can all be listed. The samplers' empirical
distributions over thousands of chains, drawn in one jitted call, are compared with them in
total variation against the sampling error of an exact sampler with as many draws:
E TV(empirical_n, p) <= 1/2 sum_i sqrt(p_i (1 - p_i) / n) (Jensen on each |p_hat_i - p_i|).
"""

import dataclasses
import functools
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharpjax.models import ModelConfig, init_params
from sharpjax.rollout import SamplingConfig, sample
from sharpjax.rollout.power import (
    PowerConfig,
    _Chains,
    _propose,
    mh_log_acceptance,
    power_mcmc,
    power_smc,
    power_smc_particles,
    select,
)
from sharpjax.rollout.scoring import score_tokens

VOCAB, EOS, PAD, MAX_NEW = 4, 3, 0, 3
PROMPT = np.array([[1, 2]], np.int32)
ONES = np.ones_like(PROMPT)
MODEL = ModelConfig(model_type="qwen2", vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_layers=1,
                    num_heads=2, num_kv_heads=1, head_dim=8, qkv_bias=True, max_position_embeddings=16)  # fmt: skip
# A base model whose power distribution is far from both p and the low-temperature proposal
# (alpha = 2: TV(p, p^2) ~ 0.25, TV(q, p^2) ~ 0.32), so no sampler passes by accident.
BASE = init_params(MODEL, jax.random.key(2), init_std=0.5)
ALPHA = 2.0


def _sampling(n, **kw):
    return SamplingConfig(max_new_tokens=MAX_NEW, num_samples=n, stop_token_ids=(EOS,), pad_id=PAD, **kw)


def _states(length: int) -> list[tuple[int, ...]]:
    """Every response the sampler can hold with `length` tokens of budget: ended by EOS, or full."""
    out = []
    for n in range(1, length + 1):
        for prefix in itertools.product([t for t in range(VOCAB) if t != EOS], repeat=n - 1):
            out += [prefix + (EOS,)] + ([prefix + (t,) for t in range(VOCAB) if t != EOS] if n == length else [])
    return out


RESPONSES = _states(MAX_NEW)
INDEX = {r: i for i, r in enumerate(RESPONSES)}


def _token_logprobs(params, seqs, temperature=1.0) -> dict[tuple[int, ...], np.ndarray]:
    """Teacher-forced per-token log-probs of each response after PROMPT (float64 copies)."""
    p = PROMPT.shape[1]
    tokens = np.full((len(seqs), p + MAX_NEW), PAD, np.int32)
    mask = np.zeros_like(tokens)
    tokens[:, :p], mask[:, :p] = PROMPT, 1
    for i, r in enumerate(seqs):
        tokens[i, p : p + len(r)] = r
        mask[i, p : p + len(r)] = 1
    lp = np.asarray(score_tokens(params, jnp.asarray(tokens), jnp.asarray(mask), config=MODEL, temperature=temperature))
    return {r: lp[i, p : p + len(r)].astype(np.float64) for i, r in enumerate(seqs)}


def _probs(params, temperature=1.0) -> np.ndarray:
    lp = _token_logprobs(params, RESPONSES, temperature)
    return np.array([np.exp(lp[r].sum()) for r in RESPONSES])


def _mh_kernel(states, lp, lq, alpha) -> np.ndarray:
    """[S, S] transition matrix of one suffix-resampling MH step on `states` (one block end).

    From y: position t uniform in [0, |y|), proposal y' = y_<t + a suffix drawn from q to the
    block's end, accepted with min(1, pi(y')^a q(y_>=t) |y| / (pi(y)^a q(y'_>=t) |y'|)).
    """
    index = {s: i for i, s in enumerate(states)}
    k = np.zeros((len(states), len(states)))
    for y in states:
        for t in range(len(y)):
            for y2 in states:
                if len(y2) <= t or y2[:t] != y[:t]:
                    continue
                propose = np.exp(lq[y2][t:].sum())
                log_a = (alpha * (lp[y2][t:].sum() - lp[y][t:].sum()) + lq[y][t:].sum() - lq[y2][t:].sum()
                         + np.log(len(y)) - np.log(len(y2)))  # fmt: skip
                k[index[y], index[y2]] += propose * min(1.0, np.exp(log_a)) / len(y)
        k[index[y], index[y]] += 1.0 - k[index[y]].sum()  # rejections stay
    return k


@functools.cache
def _exact_chain_law(alpha: float, block_size: int, steps: int) -> np.ndarray:
    """Law over RESPONSES of `power_mcmc`'s output: extend each block from q, then `steps` MH steps."""
    ends = [min((k + 1) * block_size, MAX_NEW) for k in range(-(-MAX_NEW // block_size))]
    every = sorted({s for end in ends for s in _states(end)})
    lp, lq = _token_logprobs(BASE, every), _token_logprobs(BASE, every, 1.0 / alpha)
    law = {(): 1.0}
    for end in ends:
        states = _states(end)
        extended = np.zeros(len(states))
        for i, y2 in enumerate(states):  # y2 = y + a block from q, for each unfinished y it extends
            for y, w in law.items():
                if y2[: len(y)] == y and (y == y2 if y[-1:] == (EOS,) else len(y2) > len(y)):
                    extended[i] += w * (1.0 if y == y2 else np.exp(lq[y2][len(y) :].sum()))
        extended = extended @ np.linalg.matrix_power(_mh_kernel(states, lp, lq, alpha), steps)
        law = dict(zip(states, extended))
    return np.array([law[r] for r in RESPONSES])


def _empirical(out) -> np.ndarray:
    tokens = np.asarray(out.rollout.tokens)[:, PROMPT.shape[1] :]
    counts = np.zeros(len(RESPONSES))
    for row, n in zip(tokens, np.asarray(out.rollout.lengths)):
        counts[INDEX[tuple(int(x) for x in row[:n])]] += 1
    return counts / counts.sum()


def _tv(a, b) -> float:
    return 0.5 * float(np.abs(a - b).sum())


def _sampling_error(p, n) -> float:
    """Upper bound on E TV(empirical of n exact draws from p, p)."""
    return 0.5 * float(np.sum(np.sqrt(p * (1 - p) / n)))


P_BASE = _probs(BASE)
TARGET = P_BASE**ALPHA / (P_BASE**ALPHA).sum()
PROPOSAL = _probs(BASE, 1.0 / ALPHA)


def test_toy_is_exact_and_hard():
    np.testing.assert_allclose(P_BASE.sum(), 1.0, atol=1e-5)  # the list holds every response
    np.testing.assert_allclose(PROPOSAL.sum(), 1.0, atol=1e-5)
    assert _tv(P_BASE, TARGET) > 0.2 and _tv(PROPOSAL, TARGET) > 0.3
    # The MH kernel written out here leaves pi^alpha invariant (detailed balance of the formula).
    states = _states(MAX_NEW)
    lp, lq = _token_logprobs(BASE, states), _token_logprobs(BASE, states, 1.0 / ALPHA)
    kernel = _mh_kernel(states, lp, lq, ALPHA)
    target = np.array([TARGET[INDEX[s]] for s in states])
    np.testing.assert_allclose(kernel.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(target @ kernel, target, atol=1e-12)


def _chain_state(params, prompts, masks, responses, alpha):
    """`_Chains` holding `responses` (one per row), log-probs from teacher-forced scoring."""
    r, p = prompts.shape
    tokens = np.full((r, MAX_NEW), PAD, np.int32)
    for i, y in enumerate(responses):
        tokens[i, : len(y)] = y
    lengths = np.array([len(y) for y in responses], np.int32)
    resp_mask = (np.arange(MAX_NEW)[None] < lengths[:, None]).astype(np.int32)
    full, mask = np.concatenate([prompts, tokens], 1), np.concatenate([masks, resp_mask], 1)
    score = lambda t: np.asarray(score_tokens(params, full, mask, config=MODEL, temperature=t))[:, p:] * resp_mask  # noqa: E731
    finished = np.array([y[-1] == EOS for y in responses])
    return _Chains(tokens=jnp.asarray(tokens), logp=jnp.asarray(score(1.0)), logq=jnp.asarray(score(1.0 / alpha)),
                   lengths=jnp.asarray(lengths), finished=jnp.asarray(finished))  # fmt: skip


def test_mh_acceptance_ratio_matches_hand_computation():
    """The sampler's suffix proposal and `mh_log_acceptance` against the MH ratio computed by
    hand from teacher-forced scores of the two full sequences, on left-padded prompts of
    different lengths, positions 0..|y|-1, finished and truncated states."""
    alpha = 3.0
    params = init_params(MODEL, jax.random.key(7), init_std=1.0)
    prompts = np.array([[0, 1, 2], [0, 0, 2], [2, 1, 1], [0, 0, 1], [1, 1, 2], [0, 2, 2]], np.int32)
    masks = (np.arange(3)[None] >= np.array([[0], [2], [0], [2], [0], [1]])).astype(np.int32)
    responses = [(1, 2, 0), (1, 2, 0), (0, EOS), (2, 2, 1), (EOS,), (1, 0, 2)]
    start = np.array([0, 2, 1, 1, 0, 2], np.int32)
    chains = _chain_state(params, prompts, masks, responses, alpha)
    proposal = dataclasses.replace(_sampling(1), temperature=1.0 / alpha)
    budget = MAX_NEW - start
    new, drawn, prefilled = _propose(params, jnp.asarray(prompts), jnp.asarray(masks), chains, jnp.asarray(start),
                                     jnp.asarray(budget), jax.random.key(0), config=MODEL, proposal=proposal)  # fmt: skip
    # Each proposal re-reads its prompt and the prefix it continues (issue 26, item 7).
    np.testing.assert_array_equal(np.asarray(prefilled), masks.sum(1) + start)
    got = np.asarray(mh_log_acceptance(
        alpha=alpha, logp_old_RM=chains.logp, logq_old_RM=chains.logq, lengths_old_R=chains.lengths,
        logp_new_RM=new.logp, logq_new_RM=new.logq, lengths_new_R=new.lengths, start_R=jnp.asarray(start),
    ))  # fmt: skip

    new_tokens, new_len = np.asarray(new.tokens), np.asarray(new.lengths)
    proposals = [tuple(int(x) for x in new_tokens[i, : new_len[i]]) for i in range(len(responses))]
    assert sum(y2 != y for y, y2 in zip(responses, proposals)) >= 3  # the proposals do move
    scored = _chain_state(params, prompts, masks, proposals, alpha)
    for i, (y, y2, t) in enumerate(zip(responses, proposals, start)):
        assert y2[:t] == y[:t] and len(y2) > t and int(drawn[i]) == len(y2) - t
        assert (y2[-1] == EOS) == bool(new.finished[i]) and (len(y2) == MAX_NEW or y2[-1] == EOS)
        # The sampler's log-probs of the new suffix are the teacher-forced ones.
        np.testing.assert_allclose(np.asarray(new.logp[i]), np.asarray(scored.logp[i]), atol=2e-5)
        np.testing.assert_allclose(np.asarray(new.logq[i]), np.asarray(scored.logq[i]), atol=2e-5)
        lp_y, lq_y = np.asarray(chains.logp[i], np.float64), np.asarray(chains.logq[i], np.float64)
        lp_y2, lq_y2 = np.asarray(scored.logp[i], np.float64), np.asarray(scored.logq[i], np.float64)
        # A = [pi(y'_{>=t})^a q(y_{>=t} | y_<t) |y|] / [pi(y_{>=t})^a q(y'_{>=t} | y_<t) |y'|]
        hand = (alpha * (lp_y2[t:].sum() - lp_y[t:].sum()) + (lq_y[t:].sum() - lq_y2[t:].sum())
                + np.log(len(y)) - np.log(len(y2)))  # fmt: skip
        np.testing.assert_allclose(got[i], hand, atol=1e-4, rtol=1e-5)

    # One closed-form case: alpha = 1 and the proposal's suffix equal to the state's -> A = 1.
    same = np.asarray(mh_log_acceptance(
        alpha=1.0, logp_old_RM=chains.logp, logq_old_RM=chains.logp, lengths_old_R=chains.lengths,
        logp_new_RM=chains.logp, logq_new_RM=chains.logp, lengths_new_R=chains.lengths, start_R=jnp.asarray(start),
    ))  # fmt: skip
    np.testing.assert_allclose(same, 0.0, atol=1e-6)


def test_per_row_budgets_in_the_sampler():
    budgets = np.array([0, 1, 2, 3, 5, 1], np.int32)
    prompts = np.repeat(PROMPT, 6, axis=0)
    s = SamplingConfig(max_new_tokens=4, stop_token_ids=(EOS,), pad_id=PAD)
    out = sample(BASE, prompts, np.ones_like(prompts), jax.random.key(1), config=MODEL, sampling=s,
                 max_new_tokens_B=jnp.asarray(budgets))  # fmt: skip
    lengths, tokens = np.asarray(out.lengths), np.asarray(out.tokens)[:, 2:]
    assert np.all(lengths <= np.minimum(budgets, 4)) and lengths[0] == 0
    for row, n, done in zip(tokens, lengths, np.asarray(out.finished)):
        assert np.all(row[n:] == PAD) and done == (n > 0 and row[n - 1] == EOS)
    # Same key, no budgets: rows agree up to each row's budget (the budget only cuts).
    free = sample(BASE, prompts, np.ones_like(prompts), jax.random.key(1), config=MODEL, sampling=s)
    for i, n in enumerate(lengths):
        assert np.array_equal(np.asarray(free.tokens)[i, 2 : 2 + n], tokens[i, :n])


@pytest.mark.parametrize("block_size,steps", [(1, 0), (3, 2), (2, 16)])
def test_mcmc_matches_the_exact_law_of_the_chain(block_size, steps):
    """After any number of steps, the chains' law is the exact law of the block-wise MH chain."""
    n = 8192
    out = power_mcmc(BASE, PROMPT, ONES, jax.random.key(block_size * 100 + steps), config=MODEL,
                     sampling=_sampling(n), power=PowerConfig(alpha=ALPHA, block_size=block_size, mh_steps=steps))  # fmt: skip
    law = _exact_chain_law(ALPHA, block_size, steps)
    assert _tv(_empirical(out), law) < 2.5 * _sampling_error(law, n)
    if steps == 0:  # no MH step: the proposal, pi at temperature 1/alpha
        np.testing.assert_allclose(law, PROPOSAL, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(out.token_cost), np.asarray(out.rollout.lengths))
        # One extension per block a chain reaches, each re-prefilling the prompt (2) and the response so far.
        lengths = np.asarray(out.rollout.lengths)
        starts = [range(0, n, block_size) for n in lengths]
        np.testing.assert_array_equal(np.asarray(out.prefill_cost), [sum(2 + t for t in s) for s in starts])
    else:
        assert np.all(np.asarray(out.token_cost) > np.asarray(out.rollout.lengths))
        assert 0.5 < float(np.mean(out.accept_rate)) < 1.0


def test_mcmc_approaches_the_power_distribution():
    n, steps = 8192, 64
    out = power_mcmc(BASE, PROMPT, ONES, jax.random.key(5), config=MODEL, sampling=_sampling(n),
                     power=PowerConfig(alpha=ALPHA, block_size=MAX_NEW, mh_steps=steps))  # fmt: skip
    bound = _sampling_error(TARGET, n)
    assert _tv(_exact_chain_law(ALPHA, MAX_NEW, steps), TARGET) < 0.2 * bound  # converged: the rest is noise
    tv = _tv(_empirical(out), TARGET)
    assert tv < 2.5 * bound, (tv, bound)
    assert tv < 0.2 * _tv(P_BASE, TARGET) and tv < 0.2 * _tv(PROPOSAL, TARGET)


def _reward(rows_tokens, lengths) -> np.ndarray:
    """A toy task reward: 1 if the response contains token 1."""
    return np.array([float(1 in row[:n]) for row, n in zip(rows_tokens, lengths)], np.float32)


BETA_INV = 2.0
REWARD = _reward(RESPONSES, [len(r) for r in RESPONSES])
TILTED = TARGET * np.exp(BETA_INV * REWARD) / (TARGET * np.exp(BETA_INV * REWARD)).sum()


def test_smc_approaches_the_power_distribution_and_its_reward_tilt():
    n, particles = 2048, 64
    power = PowerConfig(alpha=ALPHA, block_size=1, num_particles=particles)
    cloud = power_smc_particles(BASE, PROMPT, ONES, jax.random.key(1), config=MODEL, sampling=_sampling(n), power=power)
    assert cloud.rollout.tokens.shape == (n * particles, PROMPT.shape[1] + MAX_NEW)
    draws = select(cloud, jax.random.key(2), group_size=particles)
    tv = _tv(_empirical(draws), TARGET)
    assert tv < 2.5 * _sampling_error(TARGET, n), tv
    assert tv < 0.2 * _tv(P_BASE, TARGET) and tv < 0.2 * _tv(PROPOSAL, TARGET)
    # Every particle draws each block's token (no EOS before) or stops: cost = N x mean length or so.
    cost = np.asarray(draws.token_cost)
    assert np.all(cost >= particles) and np.all(cost <= particles * MAX_NEW)

    # The tilt pi^alpha exp(beta_inv r) with a host-side reward, from the same particles.
    rewards = _reward(np.asarray(cloud.rollout.tokens)[:, PROMPT.shape[1] :], np.asarray(cloud.rollout.lengths))
    tilted = select(cloud, jax.random.key(3), group_size=particles, rewards_B=jnp.asarray(rewards), beta_inv=BETA_INV)
    assert _tv(TILTED, TARGET) > 0.2
    assert _tv(_empirical(tilted), TILTED) < 2.5 * _sampling_error(TILTED, n)


def test_mcmc_chains_tilted_by_reward():
    """MCMC chains at pi^alpha, importance-resampled within groups by exp(beta_inv r)."""
    n, group = 4096, 16
    out = power_mcmc(BASE, PROMPT, ONES, jax.random.key(5), config=MODEL, sampling=_sampling(n),
                     power=PowerConfig(alpha=ALPHA, block_size=MAX_NEW, mh_steps=64))  # fmt: skip
    rewards = _reward(np.asarray(out.rollout.tokens)[:, PROMPT.shape[1] :], np.asarray(out.rollout.lengths))
    tilted = select(out, jax.random.key(6), group_size=group, rewards_B=jnp.asarray(rewards), beta_inv=BETA_INV)
    assert tilted.rollout.tokens.shape[0] == n // group
    np.testing.assert_array_equal(np.asarray(tilted.token_cost), np.asarray(out.token_cost).reshape(-1, group).sum(1))
    assert _tv(_empirical(tilted), TILTED) < 2.5 * _sampling_error(TILTED, n // group)


@pytest.mark.parametrize("method,ignore_eos", [("mcmc", False), ("mcmc", True), ("smc", False), ("smc", True)])
def test_outputs_are_consistent_responses(method, ignore_eos):
    """Several left-padded prompts, EOS and fixed-length runs: every row is a valid response of
    its prompt with pi / q log-probs equal to teacher-forced scoring, and the same key repeats."""
    alpha = 4.0
    prompts = np.array([[0, 1, 2], [2, 1, 1], [0, 0, 1]], np.int32)
    masks = (np.arange(3)[None] >= np.array([[1], [0], [2]])).astype(np.int32)
    sampling = dataclasses.replace(_sampling(4), max_new_tokens=5, ignore_eos=ignore_eos)
    if method == "mcmc":
        power = PowerConfig(alpha=alpha, block_size=2, mh_steps=3)
        out = power_mcmc(BASE, prompts, masks, jax.random.key(0), config=MODEL, sampling=sampling, power=power)
        again = power_mcmc(BASE, prompts, masks, jax.random.key(0), config=MODEL, sampling=sampling, power=power)
    else:
        power = PowerConfig(alpha=alpha, block_size=2, num_particles=3, ess_threshold=1.0)
        out = power_smc(BASE, prompts, masks, jax.random.key(0), config=MODEL, sampling=sampling, power=power)
        again = power_smc(BASE, prompts, masks, jax.random.key(0), config=MODEL, sampling=sampling, power=power)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), out, again))
    r = out.rollout
    tokens, lengths, finished = np.asarray(r.tokens), np.asarray(r.lengths), np.asarray(r.finished)
    assert tokens.shape == (12, 8)
    np.testing.assert_array_equal(np.asarray(r.prompt_index), np.repeat(np.arange(3), 4))
    np.testing.assert_array_equal(tokens[:, :3], np.repeat(prompts, 4, axis=0))
    for row, n, done in zip(tokens[:, 3:], lengths, finished):
        eos_at = [j for j in range(n) if row[j] == EOS]
        if ignore_eos:
            assert n == 5 and not done
        else:
            assert eos_at in ([], [n - 1]) and done == (eos_at == [n - 1]) and (done or n == 5)
        assert np.all(row[n:] == PAD)
    resp = np.asarray(r.response_mask)
    np.testing.assert_array_equal(resp.sum(1), lengths)
    for temperature, got in ((1.0, r.logprobs), (1.0 / alpha, r.sampling_logprobs)):
        want = score_tokens(BASE, r.tokens, r.attention_mask, config=MODEL, temperature=temperature)
        np.testing.assert_allclose(np.asarray(got) * resp, np.asarray(want) * resp, atol=2e-5)
    assert np.all(np.asarray(out.token_cost) >= lengths)


def test_config_errors():
    with pytest.raises(ValueError, match="alpha"):
        PowerConfig(alpha=0.0)
    with pytest.raises(ValueError, match="block_size"):
        PowerConfig(block_size=0)
    with pytest.raises(ValueError, match="mh_steps"):
        PowerConfig(mh_steps=-1)
    with pytest.raises(ValueError, match="num_particles"):
        PowerConfig(num_particles=0)
    with pytest.raises(ValueError, match="ess_threshold"):
        PowerConfig(ess_threshold=1.5)
    with pytest.raises(ValueError, match="temperature 1/alpha"):
        power_mcmc(BASE, PROMPT, ONES, jax.random.key(0), config=MODEL, sampling=_sampling(2, temperature=0.5),
                   power=PowerConfig(alpha=2.0))  # fmt: skip
    with pytest.raises(ValueError, match="group_size"):
        out = power_mcmc(BASE, PROMPT, ONES, jax.random.key(0), config=MODEL, sampling=_sampling(3),
                         power=PowerConfig(alpha=2.0, block_size=3, mh_steps=0))  # fmt: skip
        select(out, jax.random.key(0), group_size=2)


@pytest.mark.slow  # two model compiles of each sampler (~40-80 s on a shared 2-core CPU)
@pytest.mark.guard  # CI's second stage: slow, so not in the fast suite, but run
def test_eval_cli_with_power_samplers(hf_checkpoint, tmp_path, capsys):
    """`python -m sharpjax.eval --sampler power-mcmc|power-smc` end to end on a tiny saved
    model: the usual pass@k / maj@k summary plus the tokens drawn per problem."""
    from sharpjax.eval import __main__ as cli

    bench = tmp_path / "toy.jsonl"
    bench.write_text("\n".join(json.dumps({"problem": q, "answer": a}) for q, a in [("1+1?", "2"), ("2+3?", "5")]))
    common = ["--model", hf_checkpoint("llama"), "--benchmarks", "toy", "--data_file", f"toy={bench}", "--n", "2",
              "--max_new_tokens", "4", "--batch_size", "2", "--ks", "1,2", "--num_workers", "0", "--no_progress",
              "--save_responses", "--alpha", "4", "--block-size", "2"]  # fmt: skip
    mcmc = cli.main([*common, "--sampler", "power-mcmc", "--mh-steps", "2"])
    smc = cli.main([*common, "--sampler", "power-smc", "--particles", "3"])
    for results, name in ((mcmc, "power-mcmc"), (smc, "power-smc")):
        s = results["results"]["toy"]
        assert s["num_problems"] == 2 and s["num_samples"] == 2 and "pass@2" in s and "maj@2" in s
        assert results["power"]["sampler"] == name and results["power"]["alpha"] == 4.0
        lengths = [sum(r["lengths"]) for r in results["records"]["toy"]]
        # MCMC: every proposal counts (2 blocks x (1 extension + 2 MH steps)); SMC: 3 particles.
        assert s["token_cost_per_problem"] >= (2 if name == "power-smc" else 1) * np.mean(lengths)
    assert smc["results"]["toy"]["token_cost_per_problem"] >= 3 * 2  # 3 particles x 2 samples, >= 1 token each
    assert "token cost per problem: toy" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main([*common, "--sampler", "power-mcmc", "--temperature", "0.7"])
    assert e.value.code == 2 and "--temperature" in capsys.readouterr().err


def tv_table(n: int = 8192) -> str:
    """The TV rows BENCHMARKS.md records: `python -m tests.rollout.test_power`."""
    head = (f"toy: 40 responses, alpha={ALPHA}, TV(p, p^a)={_tv(P_BASE, TARGET):.3f}, "
            f"TV(q, p^a)={_tv(PROPOSAL, TARGET):.3f}, sampling error of {n} exact draws <= "
            f"{_sampling_error(TARGET, n):.4f}")  # fmt: skip
    lines = [
        head,
        "",
        "| sampler | setting | tokens / sample | TV exact law | TV empirical |",
        "|---|---|---:|---:|---:|",
    ]
    for block_size in (1, MAX_NEW):
        for steps in (0, 1, 2, 4, 8, 16, 32, 64):
            power = PowerConfig(alpha=ALPHA, block_size=block_size, mh_steps=steps)
            out = power_mcmc(
                BASE, PROMPT, ONES, jax.random.key(steps), config=MODEL, sampling=_sampling(n), power=power
            )
            law = _tv(_exact_chain_law(ALPHA, block_size, steps), TARGET)
            lines.append(f"| power-mcmc | block {block_size}, {steps} MH steps | {np.mean(out.token_cost):.1f} | "
                         f"{law:.4f} | {_tv(_empirical(out), TARGET):.4f} |")  # fmt: skip
    for particles in (1, 2, 4, 8, 16, 32, 64):
        m = max(n // particles, 2048)
        power = PowerConfig(alpha=ALPHA, block_size=1, num_particles=particles)
        out = power_smc(BASE, PROMPT, ONES, jax.random.key(particles), config=MODEL, sampling=_sampling(m), power=power)
        lines.append(f"| power-smc | block 1, {particles} particles ({m} draws, error <= "
                     f"{_sampling_error(TARGET, m):.3f}) | {np.mean(out.token_cost):.1f} | | "
                     f"{_tv(_empirical(out), TARGET):.4f} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    print(tv_table())
