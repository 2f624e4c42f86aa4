"""python -m sharpjax.diagnose end to end on tiny models, the base's scoring of responses, and its errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharpjax.diagnose import __main__ as cli
from sharpjax.models import load_model, save_model
from sharpjax.models.tokenizer import load_tokenizer
from sharpjax.models.transformer import forward, logits
from sharpjax.rollout import sampling_config_for
from tests.tiny import make_tiny_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny base and a policy: the base with every weight perturbed (same tokenizer)."""
    root = tmp_path_factory.mktemp("diagnose")
    base = make_tiny_model(str(root / "base"))
    params, config = load_model(base)
    noise = jax.tree.map(lambda x: 0.3 * jax.random.normal(jax.random.key(1), x.shape, x.dtype), params)
    policy = str(root / "policy")
    save_model(policy, jax.tree.map(jnp.add, params, noise), config)
    load_tokenizer(base).save_pretrained(policy)
    return base, policy


def test_base_scores_policy_responses_like_a_plain_forward(models):
    """The log-likelihood the diagnosis records is the base's, row by row, as a forward pass without padding
    or micro-batches computes it."""
    base_params, config = load_model(models[0])
    policy_params, _ = load_model(models[1])
    tok = load_tokenizer(models[0])
    sampling = sampling_config_for(config, tok, max_new_tokens=12, num_samples=3)
    sink = []
    generate = cli._scoring_generate(base_params, config, 40, sink)  # 40 tokens: micro-batches of one row
    _, rollout = generate(policy_params, config, tok, ["1+2", "33-4*5"], jax.random.key(0), sampling, buckets=(16,))
    tokens, mask, response = (np.asarray(x) for x in (rollout.tokens, rollout.attention_mask, rollout.response_mask))
    # Each row's real tokens moved to the left, positions 0.., no key mask: causal attention keeps the trailing
    # filler from mattering, so this needs none of the sampler's padding logic.
    b, t = tokens.shape
    ids = np.zeros_like(tokens)
    is_response = np.zeros((b, t), bool)
    for row in range(b):
        real = mask[row] == 1
        ids[row, : real.sum()] = tokens[row][real]
        is_response[row, : real.sum()] = response[row][real] == 1
    hidden, _ = forward(base_params, jnp.asarray(ids), config=config, positions_BT=jnp.tile(jnp.arange(t), (b, 1)),
                        key_mask_BS=jnp.ones((b, t), bool))
    logp = jax.nn.log_softmax(logits(base_params, hidden)[:, :-1].astype(jnp.float32), axis=-1)
    picked = np.take_along_axis(np.asarray(logp), ids[:, 1:, None], axis=-1)[..., 0]
    want = np.where(is_response[:, 1:], picked, 0.0).sum(-1)
    np.testing.assert_allclose(sink[0], want, rtol=1e-5, atol=1e-5)
    # ... and not the policy's own (the sampler's log-probs): the two models differ.
    policy_own = (np.asarray(rollout.logprobs) * response).sum(-1)
    assert np.abs(policy_own - sink[0]).max() > 0.1


def _diagnose(models, out, baselines: str) -> dict:
    """The command on the tiny pair: 3 problems x 4 samples of 12 tokens, one process (the arithmetic verifier)."""
    base, policy = models
    return cli.main(["--base", base, "--policy", f"same={base}", "--policy", f"other={policy}", "--task",
                     "arithmetic", "--benchmarks", "arithmetic", "--limit", "3", "--n", "4", "--max_new_tokens", "12",
                     "--baselines", baselines, "--baseline_n", "2", "--particles", "2", "--block-size", "6",
                     "--batch_size", "3", "--bootstrap", "50", "--out", str(out), "--no_progress"])


def test_end_to_end(models, tmp_path):
    """Seconds: three sampler compilations (T = 1 for the base and both policies, which share it and the
    scorer's; T = 1/4 for the baseline). The power baselines' own compilations are in the slow test below."""
    out = tmp_path / "report"
    report = _diagnose(models, out, "temp")
    assert json.loads((out / "report.json").read_text())["benchmarks"].keys() == {"arithmetic"}
    bench = report["benchmarks"]["arithmetic"]
    assert bench["num_problems"] == 3 and bench["ks"] == [1, 2, 3, 4]
    assert all(len(m["pass"]) == 4 for m in bench["models"].values())
    # The base as its own policy: the same key draws the same samples, so nothing moves.
    same = bench["policies"]["same"]
    assert bench["models"]["same"]["pass"] == bench["models"]["base"]["pass"]
    for key in ("per_token", "per_response", "length"):
        assert same["likelihood"][key]["shift"] == 0.0
    assert same["coverage"]["net"] == 0 and same["coverage"]["base_only"] == 0
    assert same["majority"]["agree_right"] + same["majority"]["agree_wrong"] == pytest.approx(3)
    # The perturbed policy's responses are other token sequences, scored by the base.
    other = bench["policies"]["other"]["likelihood"]
    assert other["per_token"]["policy"] != other["per_token"]["base"]
    assert other["per_token"]["base"] == same["likelihood"]["per_token"]["base"]
    assert set(bench["baselines"]) == {"temp-a4"}
    assert len(bench["baselines"]["temp-a4"]["pass"]) == 2
    text = (out / "report.md").read_text()
    assert "### other vs base" in text and "Pointing to sharpening:" in text
    for name in ("arithmetic_pass_at_k.png", "arithmetic_likelihood.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert [s["component"] for s in bench["policies"]["other"]["summary"]] == [
        "pass@k", "coverage", "majority", "likelihood", "baselines"]


@pytest.mark.slow  # the power samplers' compilations: ~15 s more CPU than test_end_to_end
@pytest.mark.guard  # CI's second stage: slow, so not in the fast suite, but run
def test_end_to_end_with_power_baselines(models, tmp_path):
    report = _diagnose(models, tmp_path / "report", "temp,power-smc")
    bench = report["benchmarks"]["arithmetic"]
    assert set(bench["baselines"]) == {"temp-a4", "power-smc-a4"}
    assert bench["baselines"]["power-smc-a4"]["cost_ratio"] > 1.2  # two particles per sample
    assert len(bench["baselines"]["power-smc-a4"]["pass"]) == 2
    assert "power-smc-a4" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--policy", "nowhere"], "--policy nowhere: no such directory"),
    (["--n", "0"], "--n 0: must be a positive integer"),
    (["--baselines", "temp,greedy"], "'greedy' is not one of temp, power-mcmc, power-smc"),
    (["--baselines", "power-mcmc", "--block-size", "0"], "block_size=0 must be >= 1"),
    (["--benchmarks", "math500"], "benchmark 'math500' needs --data_file math500=PATH"),
    (["--policy", "base=x"], "the name 'base' is taken"),
])
def test_errors_before_any_model_loads(models, capsys, extra, message):
    argv = ["--base", models[0], "--policy", models[1], "--task", "arithmetic", "--benchmarks", "arithmetic", *extra]
    with pytest.raises(SystemExit) as e:
        cli.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_policy_with_another_tokenizer_is_refused(models, tmp_path, capsys):
    from sharpjax.models.tokenizer import build_char_tokenizer

    other = tmp_path / "other"
    other.mkdir()
    for name in os.listdir(models[1]):
        if not name.startswith("tokenizer") and not name.endswith(".jinja"):
            os.symlink(os.path.join(models[1], name), other / name)
    build_char_tokenizer("0123456789+-").save_pretrained(str(other))
    with pytest.raises(SystemExit):
        cli.parse_args(["--base", models[0], "--policy", str(other), "--task", "arithmetic", "--benchmarks",
                        "arithmetic"])
    assert "its tokenizer differs from the base's" in capsys.readouterr().err


def test_the_main_job_prints_a_diagnose_command_that_parses(tmp_path):
    """`reproduce.diagnose_command`: every run's exported policy against the job's base, on its problems."""
    import shlex

    from sharpjax.reproduce import ReproduceConfig, diagnose_command
    from sharpjax.sft import resolve_model_dir

    base = resolve_model_dir("sft:quick")
    runs = {}
    for name in ("task_seed0", "likelihood_seed0"):
        (tmp_path / "runs" / name / "export").mkdir(parents=True)
        os.symlink(base, tmp_path / "runs" / name / "export" / "last")
        runs[name] = {"workdir": str(tmp_path / "runs" / name)}
    settings = ReproduceConfig(size="quick", test_problems=7)
    command = diagnose_command(str(tmp_path), {"base_model": base, "runs": runs}, settings)
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "sharpjax.diagnose"]
    args = cli.parse_args(argv[3:])
    assert args.policies == {name: str(tmp_path / "runs" / name / "export" / "last") for name in runs}
    assert args.base == base and len(args.benchmarks["arithmetic"]) == 7
    assert args.ns.max_new_tokens == settings.max_new_tokens and args.ns.out == str(tmp_path / "diagnosis")
    assert args.ns.n == args.ns.baseline_n == settings.eval_samples  # the job's own samples per problem
