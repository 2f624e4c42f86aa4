"""evaluate(): end to end on a tiny random model, and exact metrics from forced responses."""

import dataclasses
import types
from fractions import Fraction
from math import comb

import jax
import numpy as np
import pytest

from sharpjax.eval import harness
from sharpjax.models.hf import load_model
from sharpjax.models.tokenizer import load_tokenizer, render_chat
from sharpjax.rollout import SamplingConfig
from sharpjax.rollout.text import generate_text

# PAPER.md "Prompt", written out by hand.
PAPER_PROMPT = (
    "Think step-by-step to solve the following problem. Output your answer inside of \\\\boxed{} tags.:\n"
    "{problem}\n\nLet's think step-by-step"
)
PROBLEMS = [
    types.SimpleNamespace(id="p0", problem="What is 1+1?", answer="2"),
    types.SimpleNamespace(id="p1", problem="What is 2+3?", answer="5"),
    types.SimpleNamespace(id="p2", problem="Half of 1?", answer="\\frac{1}{2}"),
]


@pytest.fixture(scope="module")
def tiny(hf_checkpoint):
    model_dir = hf_checkpoint("llama")
    params, config = load_model(model_dir, dtype="float32")
    tokenizer = load_tokenizer(model_dir)
    sampling = SamplingConfig(
        max_new_tokens=6, num_samples=4, stop_token_ids=config.eos_token_ids, pad_id=tokenizer.pad_token_id
    )
    return params, config, tokenizer, sampling


def test_end_to_end_tiny_model(tiny, monkeypatch):
    params, config, tokenizer, sampling = tiny
    calls = []

    def spy(params, config, tokenizer, prompts, key, sampling, **kw):
        calls.append((list(prompts), key))
        return generate_text(params, config, tokenizer, prompts, key, sampling, **kw)

    monkeypatch.setattr(harness, "generate_text", spy)
    key = jax.random.key(0)
    run = lambda k: harness.evaluate(  # noqa: E731
        params, config, tokenizer, PROBLEMS, sampling=sampling, key=k, batch_size=2, num_workers=0, progress=False
    )
    result = run(key)

    assert [r.id for r in result.records] == ["p0", "p1", "p2"]
    assert [r.reference for r in result.records] == ["2", "5", "\\frac{1}{2}"]
    for r in result.records:
        assert r.num_samples == 4 and len(r.responses) == 4
        assert all(1 <= n <= 6 for n in r.lengths)
        assert not any(r.correct)  # a random model writes no \boxed{...}
        assert r.answers == [None] * 4
    s = result.summary
    assert s["num_problems"] == 3 and s["num_samples"] == 4
    assert set(s) >= {"pass@1", "pass@2", "pass@4", "maj@4", "mean@1", "mean_length", "no_answer_rate"}
    assert "pass@8" not in s
    assert s["pass@4"] == 0.0 and s["no_answer_rate"] == 1.0
    assert s["mean_length"] == pytest.approx(np.mean([n for r in result.records for n in r.lengths]))

    # Two batches of 2 prompts (the last padded with a copy), the paper's prompt in the chat
    # template, and batch i sampled with fold_in(key, i).
    assert len(calls) == 2
    want = [render_chat(tokenizer, PAPER_PROMPT.replace("{problem}", p.problem)) for p in PROBLEMS]
    assert calls[0][0] == want[:2] and calls[1][0] == [want[2], want[2]]
    assert "Output your answer inside of \\\\boxed{} tags.:\nWhat is 1+1?\n\nLet's think step-by-step" in want[0]
    texts, rollout = generate_text(params, config, tokenizer, want[:2], jax.random.fold_in(key, 0), sampling)
    assert result.records[0].responses + result.records[1].responses == texts
    assert result.records[0].lengths == [int(x) for x in rollout.lengths[:4]]
    # Plain sampling prefills each prompt once (its samples share it): the mean prompt length.
    prompt_lens = [len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in want]
    assert s["prefill_tokens_per_problem"] == pytest.approx(np.mean(prompt_lens))

    # Deterministic given the key; another key samples other responses.
    again = run(key)
    assert [r.to_dict() for r in again.records] == [r.to_dict() for r in result.records]
    other = run(jax.random.key(1))
    assert [r.responses for r in other.records] != [r.responses for r in result.records]


# Per problem, the 4 responses the fake model writes (answers: 2, 5, 1/2).
FORCED = {
    "What is 1+1?": ["so \\boxed{2}", "\\boxed{3}", "I give up", "\\boxed{2}."],  # c=2, 2 wins the vote
    "What is 2+3?": ["\\boxed{6}", "\\boxed{6}", "\\boxed{5}", "\\boxed{7}"],  # c=1, 6 wins
    "Half of 1?": ["\\boxed{0.5}", "\\boxed{\\frac12}", "\\boxed{1}", "\\boxed{\\dfrac{1}{2}}"],  # c=3
}


def fake_generate(params, config, tokenizer, prompts, key, sampling, **kw):
    """A "model" whose responses are fixed per problem; lengths = characters, finished unless
    the response has no box (then "truncated")."""
    texts = []
    for p in prompts:
        (problem,) = [q for q in FORCED if q in p]
        texts += FORCED[problem][: sampling.num_samples]
    rollout = types.SimpleNamespace(
        lengths=np.array([len(t) for t in texts]), finished=np.array(["boxed" in t for t in texts])
    )
    return texts, rollout


def expected_pass(cs, k, n=4):
    return float(sum(1 - Fraction(comb(n - c, k), comb(n, k)) for c in cs) / len(cs))


def test_forced_responses_give_exact_metrics(tiny, monkeypatch):
    params, config, tokenizer, sampling = tiny
    monkeypatch.setattr(harness, "generate_text", fake_generate)
    result = harness.evaluate(
        params, config, tokenizer, PROBLEMS, sampling=sampling, key=jax.random.key(0), batch_size=8,
        num_workers=0, keep_responses=False, progress=False,
    )  # fmt: skip
    r0, r1, r2 = result.records
    assert r0.correct == [True, False, False, True] and r0.extracted == ["2", "3", None, "2"]
    assert r1.correct == [False, False, True, False]
    assert r2.correct == [True, True, False, True]  # math-verify: 0.5 = \frac12 = \dfrac{1}{2}
    assert r0.responses is None
    assert r0.lengths == [len(t) for t in FORCED["What is 1+1?"]] and r0.finished == [True, True, False, True]

    s = result.summary
    for k in (1, 2, 4):
        assert s[f"pass@{k}"] == pytest.approx(expected_pass([2, 1, 3], k))
    assert s["pass@1"] == pytest.approx(0.5) and s["mean@1"] == pytest.approx(0.5)
    # maj@4 (all samples vote): p0 "2" wins 2-1, p1 "6" wins, p2 the three correct forms
    # vote together (merge_correct) -> (1 + 0 + 1) / 3.
    assert s["maj@4"] == pytest.approx(2 / 3)
    # maj@1 is the accuracy. maj@2 over the 6 pairs, ties split: p0 (2, 3, -, 2): {2,2}
    # {2,-} {2,-}: 1, {2,3} x2: 1/2, {3,-}: 0 -> 4/6; p1 (6, 6, 5, 7): only the 3 pairs
    # holding 5 can win, each in a 2-way tie -> 1.5/6; p2 (three correct forms, 1): 3
    # correct pairs -> 1, 3 pairs {correct, 1} -> 1/2 -> 4.5/6.
    assert s["maj@1"] == pytest.approx(0.5)
    assert s["maj@2"] == pytest.approx((4 / 6 + 1.5 / 6 + 4.5 / 6) / 3)
    assert s["no_answer_rate"] == pytest.approx((1 / 4) / 3)
    assert s["truncated_rate"] == pytest.approx((1 / 4) / 3)
    assert s["mean_length"] == pytest.approx(np.mean([np.mean([len(t) for t in v]) for v in FORCED.values()]))

    # num_samples overrides sampling.num_samples.
    two = harness.evaluate(
        params, config, tokenizer, PROBLEMS[:1], sampling=sampling, key=jax.random.key(0), num_samples=2,
        num_workers=0, progress=False,
    )  # fmt: skip
    assert two.records[0].correct == [True, False] and two.summary["pass@2"] == 1.0 and "pass@4" not in two.summary


def test_rejects_empty_and_too_long_before_sampling(tiny, monkeypatch):
    params, config, tokenizer, sampling = tiny
    with pytest.raises(ValueError):
        harness.evaluate(params, config, tokenizer, [], sampling=sampling, key=jax.random.key(0))

    def never(*a, **kw):
        raise AssertionError("sampled before the context check")

    monkeypatch.setattr(harness, "generate_text", never)
    long_problem = types.SimpleNamespace(problem="x" * 200, answer="1")  # prompt bucket 512
    small = dataclasses.replace(config, max_position_embeddings=512 + sampling.max_new_tokens - 1)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        harness.evaluate(params, small, tokenizer, PROBLEMS + [long_problem], sampling=sampling, key=jax.random.key(0))
    with pytest.raises(ValueError, match="longer than the largest bucket"):
        harness.evaluate(params, config, tokenizer, PROBLEMS, sampling=sampling, key=jax.random.key(0), buckets=(64,))
    # The same problems fit a context one token larger.
    harness.check_context(
        dataclasses.replace(small, max_position_embeddings=512 + sampling.max_new_tokens),
        tokenizer,
        [harness.default_render_fn(tokenizer)(p.problem) for p in PROBLEMS + [long_problem]],
        sampling,
    )
