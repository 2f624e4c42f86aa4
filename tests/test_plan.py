"""sharpjax.plan: the paper models' shapes, closed forms of the analytic plan, the fit check and
the launcher refusing a run that cannot fit before it loads any weights."""

import dataclasses
import json
import math
import os
import subprocess
import sys
import time

import pytest

from sharpjax.errors import ConfigError
from sharpjax.models.config import ModelConfig
from sharpjax.plan import (
    PAPER_MODELS,
    REMAT_CANDIDATES,
    REMAT_DEFAULT,
    GiB,
    aot_available,
    check_fit,
    choose_remat,
    model_config_for,
    parse_target,
    plan_run,
    preflight,
    preflight_plan,
    preflight_run,
)
from sharpjax.train.config import RunConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_HF = dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
               tie_word_embeddings=True, eos_token_id=2, torch_dtype="float32")


def tiny_run(tmp_path, **sections) -> RunConfig:
    os.makedirs(tmp_path / "tiny", exist_ok=True)
    with open(tmp_path / "tiny" / "config.json", "w") as f:
        json.dump(TINY_HF, f)
    config = dict(model_dir=str(tmp_path / "tiny"), dtype="bfloat16",
                  rollout=dict(prompts_per_step=8, samples_per_prompt=4, max_total_length=512,
                               prompt_buckets=(64, 128)),
                  train=dict(micro_batches=2, remat="full", logits_chunk=64), mesh=dict(data=-1, fsdp=1, tensor=1))
    for k, v in sections.items():
        config[k] = {**config.get(k, {}), **v}
    return RunConfig.from_config_dict(config)


def test_parse_target():
    t = parse_target("h100x4")
    assert (t.gpu.name, t.count, t.name) == ("h100", 4, "h100x4")
    assert parse_target("H200").count == 1
    assert parse_target("h200x2").gpu.memory_bytes > parse_target("h100x8").gpu.memory_bytes
    with pytest.raises(ValueError, match="unknown target"):
        parse_target("a100x2")


@pytest.mark.parametrize("name, published", [
    # Parameter counts on the models' Hugging Face pages.
    ("Llama-3.2-3B-Instruct", 3.21e9), ("Qwen2.5-3B-Instruct", 3.09e9), ("Qwen3-4B-Instruct-2507", 4.02e9),
])
def test_paper_models_have_the_published_sizes(name, published):
    model = ModelConfig.from_hf_dict(PAPER_MODELS[name])
    assert abs(model.num_params / published - 1) < 0.005
    run = RunConfig.from_config_dict(dict(model_dir=f"checkpoints/{name}"))
    assert model_config_for(run).num_params == model.num_params


def test_unknown_model_without_config_is_a_config_error(tmp_path):
    run = RunConfig.from_config_dict(dict(model_dir=str(tmp_path / "nothing")))
    with pytest.raises(ConfigError, match="config.model_dir"):
        model_config_for(run)


def test_analytic_state_and_kv_cache_closed_forms(tmp_path):
    run = tiny_run(tmp_path)
    model = model_config_for(run)
    n = model.num_params
    plan = plan_run(run, "h100x1", method="analytic")
    programs = {p.name: p for p in plan.programs}
    s = plan.shapes
    # The worst batch: one prompt in the 128 bucket, one of a single token with 511 to go (512 slots).
    assert (s.prompt_len, s.new_tokens, s.rows) == (128, 512, 32)
    # During the rollout: fp32 master params + Adam mu, nu (12 B/param) and the bf16 reference (2 B/param).
    assert programs["rollout"].resident_bytes == 14 * n
    parts = dict(programs["rollout"].parts)
    # The 8 prompts' KV once (128 slots), each of the 32 rows' responses (512 slots): bf16 k and v.
    kv_slot = model.num_layers * 2 * model.num_kv_heads * model.head_dim * 2
    assert parts["KV cache"] == (8 * 128 + 32 * 512) * kv_slot
    # Sharding: fsdp=2 halves every param the rules shard (all but the norms here).
    fsdp2 = plan_run(tiny_run(tmp_path, mesh=dict(data=1, fsdp=2)), "h100x2", method="analytic")
    sharded = dict(fsdp2.programs[0].parts)
    norms = model.hidden_size * (2 * model.num_layers + 1)
    assert sharded["train state"] == 12 * ((n - norms) // 2 + norms)
    # Chunked sampling: the cache scales with the prompts per call, the time with the calls.
    chunked = plan_run(tiny_run(tmp_path, rollout=dict(chunk_prompts=2)), "h100x1", method="analytic")
    assert dict(chunked.programs[0].parts)["KV cache"] * 4 == parts["KV cache"]
    assert chunked.programs[0].calls == 4


def test_roofline_time_is_positive_and_scales_with_the_budget(tmp_path):
    short = plan_run(tiny_run(tmp_path), "h100x1", method="analytic")
    long = plan_run(tiny_run(tmp_path, rollout=dict(max_total_length=1024)), "h100x1", method="analytic")
    gpu = short.target.gpu
    assert 0 < short.programs[0].time_s(gpu) < long.programs[0].time_s(gpu)
    assert short.step_time_s == pytest.approx(sum(p.time_s(gpu) for p in short.programs))


@pytest.mark.parametrize("sections, knob", [
    # Short rows, small micro-batches: the fp32 state and gradients are the largest part -> shard them.
    (dict(rollout=dict(max_total_length=64, prompt_buckets=(32,), prompts_per_step=2, samples_per_prompt=2),
          train=dict(micro_batches=4, logits_chunk=8)), "config.mesh.fsdp"),
    # A long budget and big micro-batches: activations dominate the update.
    (dict(rollout=dict(max_total_length=4096, prompt_buckets=(64,)), train=dict(micro_batches=1)),
     "config.train.micro_batches"),
])
def test_check_fit_names_the_knob(tmp_path, sections, knob):
    run = tiny_run(tmp_path, **sections)
    plan = plan_run(run, "h100x1", method="analytic")
    check_fit(plan, run)  # the tiny model fits an H100
    worst = max(p.peak_bytes for p in plan.programs)
    small = plan_run(run, "h100x1", method="analytic", memory_bytes=int(worst / 0.9) - 1)
    with pytest.raises(ConfigError, match=knob.replace(".", r"\.")) as e:
        check_fit(small, run)
    assert "h100x1" in str(e.value) and "analytic plan" in str(e.value)


def test_preflight_says_which_plan_it_used(tmp_path):
    run = tiny_run(tmp_path, plan=dict(target="h200x1", method="analytic"))
    assert preflight(run).startswith("fit check (analytic plan, h200x1)")
    assert "skipped" in preflight(tiny_run(tmp_path))  # no target, no GPU here
    assert "off" in preflight(tiny_run(tmp_path, plan=dict(method="off", target="h100x1")))
    with pytest.raises(ConfigError, match="config.plan.target"):
        preflight(tiny_run(tmp_path, plan=dict(target="v100x2")))


@pytest.mark.parametrize("remat", [None, "auto"])
def test_launcher_refuses_a_run_that_cannot_fit_in_seconds(tmp_path, remat):
    """The issue's bad-fit check: a tiny model on an artificially small device fails in seconds,
    before any weights load (the model directory has no weights at all), naming the knob; with
    train.remat="auto" after trying every policy."""
    tiny_run(tmp_path)  # writes tiny/config.json only
    cmd = [sys.executable, "-m", "sharpjax.train", "--config", "experiments/rl_arithmetic.py:quick:task",
           f"--config.model_dir={tmp_path / 'tiny'}", "--config.plan.target=h100x1", "--config.plan.method=analytic",
           "--config.plan.device_memory_gb=0.0001", f"--workdir={tmp_path / 'run'}"]
    cmd += [f"--config.train.remat={remat}"] if remat else []
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    elapsed = time.perf_counter() - t0
    assert out.returncode == 2, out.stderr[-2000:]
    assert "does not fit on h100x1" in out.stderr and "analytic plan" in out.stderr
    assert "raise config.train.micro_batches (now 1)" in out.stderr  # activations dominate this tiny run
    if remat == "auto":
        assert "config.train.remat='auto': no policy fits (train_step peak per policy none " in out.stderr
    assert elapsed < 30  # "fails in seconds" (mostly the interpreter and jax import)
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_plan_cli_prints_the_table(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "sharpjax.plan", "--config", "experiments/rl_math.py:qwen3_4b:task:h100x8",
         "--method", "analytic", "--json", str(tmp_path / "plan.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "h100x8 (analytic)" in out.stdout and "train_step" in out.stdout
    plan = json.load(open(tmp_path / "plan.json"))
    # The paper config's remat="auto": every candidate's line, the choice, and the chosen plan.
    remat = plan["remat"]
    assert set(remat["candidates"]) == set(REMAT_CANDIDATES) and remat["chosen"] in REMAT_CANDIDATES
    assert f"remat auto -> {remat['chosen']}" in out.stdout and f"update remat {remat['chosen']}" in out.stdout
    assert plan["programs"] == remat["candidates"][remat["chosen"]]["programs"]
    assert set(plan["programs"]) == {"rollout", "scoring", "train_step"}
    assert all(p["peak_bytes"] <= 0.9 * plan["memory_bytes"] for p in plan["programs"].values())


@pytest.mark.slow
@pytest.mark.aot
@pytest.mark.skipif(not aot_available(), reason="jax-cuda12 plugin not importable: XLA's compile-only GPU topology "
                    "is unavailable (install it outside the venv, see sharpjax/plan/__main__.py)")
def test_aot_plan_agrees_with_the_closed_forms(tmp_path):
    run = tiny_run(tmp_path, mesh=dict(data=1, fsdp=2))
    aot = {p.name: p for p in plan_run(run, "h100x2", method="aot").programs}
    analytic = {p.name: p for p in plan_run(run, "h100x2", method="analytic").programs}
    # The train step's arguments are the sharded state and the batch: XLA's count is the closed form's.
    assert aot["train_step"].argument_bytes == pytest.approx(analytic["train_step"].argument_bytes, rel=0.01)
    assert aot["train_step"].alias_bytes > 0  # the state is donated
    for name in aot:
        assert aot[name].resident_bytes == pytest.approx(analytic[name].resident_bytes, rel=0.01)
        assert 0 < aot[name].temp_bytes
        assert math.isfinite(aot[name].peak_bytes / GiB)


@pytest.mark.slow  # a 2-step training run (~30 s on an idle 2-core CPU)
@pytest.mark.guard  # CI's second stage: the single-GPU targets sample in chunks (config.rollout.chunk_prompts)
def test_chunked_sampling_calls_the_sampler_per_chunk(tmp_path, monkeypatch):
    """config.rollout.chunk_prompts: the loop samples the step's prompts a chunk at a time (the
    plan's rollout program) and trains on all of them."""
    import numpy as np

    from sharpjax.train import trainer as loop
    from sharpjax.train.metrics import read_metrics
    from tests.tiny import make_tiny_model, tiny_config

    calls = []
    real_sample = loop.sample

    def counting_sample(params, tokens, mask, key, **kw):
        calls.append(tokens.shape[0])
        return real_sample(params, tokens, mask, key, **kw)

    monkeypatch.setattr(loop, "sample", counting_sample)
    model_dir = make_tiny_model(str(tmp_path / "model"))
    c = tiny_config(model_dir, reward="power-a2", train__steps=2, data__validation=(), rollout__prompts_per_step=4)
    c.rollout.chunk_prompts = 2
    result = loop.train(RunConfig.from_config_dict(c), str(tmp_path / "run"), progress=False)
    assert result.last_step == 2 and calls == [2, 2, 2, 2]
    rows = [r for r in read_metrics(str(tmp_path / "run")) if "loss" in r]
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
    with pytest.raises(ConfigError, match="chunk_prompts=3 must divide"):
        c.rollout.chunk_prompts = 3
        RunConfig.from_config_dict(c)


@pytest.mark.parametrize("model, target", [("llama3b", "h100x4"), ("llama3b", "h200x1"), ("qwen25_3b", "h100x4"),
                                           ("qwen25_3b", "h200x1"), ("qwen3_4b", "h100x8"), ("qwen3_4b", "h200x2")])
def test_paper_configs_fit_their_targets(model, target):
    """experiments/rl_math.py:<model>:task:<target> fits at <= 90% of the device (analytic plan;
    BENCHMARKS.md has XLA's compile-only numbers), and the default target is the paper's."""
    rl_math = _rl_math()
    run = RunConfig.from_config_dict(rl_math.get_config(f"{model}:task:{target}"))
    assert run.plan.target == target and run.train.remat == "auto"
    plan = plan_run(run, target, method="analytic")
    assert plan.remat in REMAT_CANDIDATES  # the launcher's choice for the target
    check_fit(plan, run, max_fraction=0.9)
    # The worst batch: a prompt in the largest bucket beside a one-token prompt with the whole length.
    assert plan.shapes.width == max(run.rollout.prompt_buckets) + run.rollout.max_total_length
    default = RunConfig.from_config_dict(rl_math.get_config(f"{model}:task:fixed")).plan.target
    assert default == ("h100x8" if model == "qwen3_4b" else "h100x4")


def _rl_math():
    import importlib.util

    spec = importlib.util.spec_from_file_location("rl_math", os.path.join(ROOT, "experiments", "rl_math.py"))
    rl_math = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rl_math)
    return rl_math


@pytest.mark.parametrize("config", ["llama3b:task:h200x1", "qwen3_4b:task:h200x2"])
def test_the_plan_is_the_worst_batch_the_run_can_meet(config):
    """issue 26, item 4: every response may use max_total_length minus its own prompt, and with
    share_prompt_kv a short prompt means more response slots, so the plan's peak and time are the
    maximum over every batch the sampler can be given (prompt bucket x shortest prompt)."""
    import dataclasses

    from sharpjax.plan import _analytic_programs, _phases
    from sharpjax.rollout.text import response_allocation

    c = _rl_math().get_config(config)
    c.train.remat = "full"
    run = RunConfig.from_config_dict(c)
    plan = plan_run(run, run.plan.target, method="analytic")
    total, gpu = run.rollout.max_total_length, plan.target.gpu
    peaks = {p.name: p.peak_bytes for p in plan.programs}
    times = {p.name: p.time_s(gpu) for p in plan.programs}

    for bucket in sorted(run.rollout.prompt_buckets):
        for shortest in (1, 17, 64, 100, 128, 300, 600, 1000):
            if shortest > bucket:
                continue
            shapes = dataclasses.replace(plan.shapes, prompt_len=bucket,
                                         new_tokens=response_allocation(total, shortest, cap=total))
            for p in _analytic_programs(run, plan.model, shapes):
                p = dataclasses.replace(p, phases=_phases(p.name, run, plan.model, shapes))
                assert p.peak_bytes <= peaks[p.name] and p.time_s(gpu) <= times[p.name] * (1 + 1e-12), (bucket, p.name)


# ---- train.remat="auto" ---------------------------------------------------------------------

# A long budget and one micro-batch: the update's activations dominate, so the policy decides the fit.
ACTIVATION_BOUND = dict(rollout=dict(max_total_length=4096, prompt_buckets=(64,)), train=dict(micro_batches=1))


def _auto_run(tmp_path, memory_bytes=None, **plan):
    sections = {k: dict(v) for k, v in ACTIVATION_BOUND.items()}
    sections["train"]["remat"] = "auto"
    plan = dict(target="h100x1", method="analytic", **plan)
    if memory_bytes is not None:
        plan["device_memory_gb"] = memory_bytes / GiB
    return tiny_run(tmp_path, plan=plan, **sections)


def test_remat_auto_picks_the_cheapest_policy_that_fits(tmp_path):
    """On a fake device sized just above each policy's planned peak, "auto" picks that policy:
    the cheapest compute (none < dots < full) whose every program is within the limit."""
    fixed = {r: plan_run(tiny_run(tmp_path, **{**ACTIVATION_BOUND, "train": {"micro_batches": 1, "remat": r}}),
                         "h100x1", method="analytic") for r in REMAT_CANDIDATES}
    peak = {r: p.peak_bytes for r, p in fixed.items()}
    # The premise: each policy holds less than the cheaper-compute one, and the update is the peak.
    assert peak["none"] > peak["dots"] > peak["full"]
    assert all(max(p.programs, key=lambda q: q.peak_bytes).name == "train_step" for p in fixed.values())
    for expected in REMAT_CANDIDATES:
        memory = math.ceil(peak[expected] / 0.9) + 1  # `expected` fits; anything cheaper is over
        resolved, summary = preflight_run(_auto_run(tmp_path, memory))
        assert resolved.train.remat == expected
        line = summary.splitlines()[0]
        assert line.startswith(f"remat: auto -> {expected} (analytic plan, h100x1")
        assert f"{peak[expected] / GiB:.1f} of {memory / GiB:.1f} GiB" in line  # the numbers that chose it
        assert f"{expected} {peak[expected] / memory:.0%}" in line and "limit 90%" in line
        assert summary.splitlines()[1].startswith("fit check (analytic plan, h100x1)")
        # preflight_plan: the same resolution and summary, and the chosen policy's plan at that memory.
        again, same_summary, chosen = preflight_plan(_auto_run(tmp_path, memory))
        assert again == resolved and same_summary == summary
        assert chosen.remat == expected and chosen.peak_bytes == peak[expected] and chosen.memory_bytes == memory
        # The candidates after the chosen one are not planned (each is an AOT compile on a GPU target).
        choice = choose_remat(_auto_run(tmp_path), "h100x1", method="analytic", memory_bytes=memory)
        assert [r for r, _ in choice.plans] == list(REMAT_CANDIDATES[:REMAT_CANDIDATES.index(expected) + 1])
        assert choice.plan.remat == expected and choice.plan.peak_bytes == peak[expected]
        # plan_run of an "auto" run is the chosen policy's plan.
        auto_plan = plan_run(_auto_run(tmp_path), "h100x1", method="analytic", memory_bytes=memory)
        assert auto_plan.remat == expected and auto_plan.peak_bytes == peak[expected]
    # All three planned on request (the CLI's table), each the fixed policy's plan.
    choice = choose_remat(_auto_run(tmp_path), "h100x1", method="analytic", plan_all=True)
    assert choice.policy == "none"
    assert {r: p.peak_bytes for r, p in choice.plans} == peak


def test_remat_auto_skips_a_policy_xla_fits_only_by_recomputing_gemms(tmp_path, monkeypatch):
    """An AOT plan whose compiled train step XLA rematerialized GEMMs of (to fit its memory limit)
    does more work than the next policy: "auto" passes over it, and its line says why."""
    from sharpjax.plan import fit

    def recomputed(plan, gemms):  # as `plan.aot` reads it off the compiled HLO
        return dataclasses.replace(plan, programs=tuple(
            dataclasses.replace(p, xla_remat_gemms=gemms) if p.name == "train_step" else p for p in plan.programs))

    real = fit._replan_train_step
    gemms = {"dots": 16}
    monkeypatch.setattr(fit, "_replan_train_step", lambda plan, run: recomputed(real(plan, run),
                                                                                gemms.get(run.train.remat, 0)))
    dots = plan_run(tiny_run(tmp_path, **{**ACTIVATION_BOUND, "train": {"micro_batches": 1, "remat": "dots"}}),
                    "h100x1", method="analytic")
    memory = math.ceil(dots.peak_bytes / 0.9) + 1  # dots fits by memory, none does not
    resolved, summary = preflight_run(_auto_run(tmp_path, memory))
    assert resolved.train.remat == "full"
    assert f"dots {dots.peak_bytes / memory:.0%} (XLA recomputed 16 GEMMs to fit)" in summary.splitlines()[0]
    # When every policy that fits needs XLA's recompute, the one that needs the least.
    gemms["full"] = 40
    assert choose_remat(_auto_run(tmp_path), "h100x1", method="analytic", memory_bytes=memory).policy == "dots"


def test_remat_auto_when_nothing_fits_names_the_knobs(tmp_path):
    full = plan_run(tiny_run(tmp_path, **{**ACTIVATION_BOUND, "train": {"micro_batches": 1, "remat": "full"}}),
                    "h100x1", method="analytic")
    run = _auto_run(tmp_path, full.peak_bytes // 2)
    with pytest.raises(ConfigError) as e:
        preflight_run(run)
    msg = str(e.value)
    assert msg.startswith("config.train.remat='auto': no policy fits (train_step peak per policy none ")
    assert "does not fit on h100x1" in msg and "raise config.train.micro_batches (now 1)" in msg
    assert "set config.train.remat" not in msg  # "full" was tried: the knob left is the micro-batches
    assert "\n" not in msg


def test_remat_auto_without_a_plan_is_full(tmp_path):
    """No target and no GPU (this CPU), or the plan off: "full", the policy holding the least."""
    run = tiny_run(tmp_path, train=dict(remat="auto"))
    resolved, summary = preflight_run(run)
    assert resolved.train.remat == REMAT_DEFAULT == "full"
    assert summary.splitlines() == ["remat: auto -> full (no config.plan.target and no local GPU to choose by: the "
                                    "policy that holds the least activation memory)",
                                    "fit check skipped: no config.plan.target and no local GPU"]
    off, summary = preflight_run(tiny_run(tmp_path, train=dict(remat="auto"), plan=dict(target="h100x1", method="off")))
    assert preflight_plan(run)[2] is None  # no plan made, none returned
    assert off.train.remat == "full" and summary.startswith("remat: auto -> full (no plan")
    # A fixed policy is left alone, and the summary is the fit check's alone.
    fixed, summary = preflight_run(tiny_run(tmp_path, train=dict(remat="dots"), plan=dict(target="h100x1",
                                                                                        method="analytic")))
    assert fixed.train.remat == "dots" and summary.startswith("fit check (") and "\n" not in summary


def test_the_train_step_never_sees_auto(tmp_path):
    from sharpjax.train.step import StepConfig

    model = model_config_for(tiny_run(tmp_path))
    with pytest.raises(ValueError, match="resolve 'auto'"):
        StepConfig(model=model, remat="auto")
    assert StepConfig(model=model, remat="dots").remat == "dots"


def test_remat_auto_on_an_analytic_plan_of_a_sharded_mesh_is_full(tmp_path):
    """The closed form undercounts what XLA keeps for none/dots once params are sharded (fsdp),
    so there the analytic plan picks full even with room for none; the line says why."""
    run = tiny_run(tmp_path, mesh=dict(data=1, fsdp=2), train=dict(remat="auto"),
                   plan=dict(target="h100x2", method="analytic"))
    resolved, summary = preflight_run(run)
    assert resolved.train.remat == "full"
    assert "only full on an analytic plan of a sharded mesh" in summary.splitlines()[0]
    choice = choose_remat(run, "h100x2", method="analytic", plan_all=True)
    none = dict(choice.plans)["none"]
    assert none.peak_bytes < 0.01 * none.memory_bytes and choice.policy == "full"  # none fits; not trusted


def test_a_run_that_more_micro_batches_fit_is_told_so_not_to_buy_gpus():
    """Issue 27: llama3b on one H200 with 8 micro-batches: the message said "use a target with more
    GPUs" (when the largest part was one only sharding shrinks) though the paper's own 16 micro-batches
    fit. The knob named must be the one that suffices, whatever part is largest."""
    from sharpjax.configs.paper import paper_config

    run = RunConfig.from_config_dict(paper_config("llama3b", "task", target="h200x1"))

    def with_micro(micro):
        return dataclasses.replace(run, train=dataclasses.replace(run.train, micro_batches=micro, remat="full"))

    plan = plan_run(with_micro(8), "h200x1", method="analytic")
    with pytest.raises(ConfigError) as e:
        check_fit(plan, with_micro(8))
    assert "more GPUs" not in str(e.value)
    assert str(e.value).endswith("raise config.train.micro_batches (now 8) to 16: that alone fits."), str(e.value)
    check_fit(plan_run(with_micro(16), "h200x1", method="analytic"), with_micro(16))  # the claim holds
    # Where no number of micro-batches fits, the message does not promise that one does.
    small = plan_run(with_micro(8), "h200x1", method="analytic", memory_bytes=80 * GiB)
    with pytest.raises(ConfigError) as e:
        check_fit(small, with_micro(8))
    assert "that alone fits" not in str(e.value), str(e.value)


@pytest.mark.parametrize("flags, message", [
    (["--config", "experiments/nope.py:x"],
     "error: --config experiments/nope.py:x: no such config file 'experiments/nope.py' (see experiments/*.py)."),
    (["--config", "experiments/rl_math.py:llama3b:task", "--config.plan.foo=1"],
     "error: --config.plan.foo: no such config field 'foo' (the fields are the sections of "
     "sharpjax.train.config.RunConfig)."),
    (["--config", "experiments/rl_math.py:llama3b:task", "--method", "analytic", "--config.plan.device_memory_gb=-1"],
     "error: config.plan.device_memory_gb=-1.0 must be a finite number of GiB > 0 (None: the target's memory)."),
    pytest.param(["--config", "experiments/rl_math.py:llama3b:task", "--method", "aot"],
                 "error: the 'aot' plan needs XLA's compile-only GPU topology from the jax-cuda12 plugin, which does "
                 "not import here; install the wheels of this jax outside the venv: pip install --target "
                 "/tmp/aot-site \"jax-cuda12-plugin==", marks=pytest.mark.skipif(aot_available(),
                                                                                reason="the plugin is installed")),
], ids=["missing-file", "unknown-field", "negative-memory", "aot-without-plugin"])
def test_plan_cli_errors_are_one_line(flags, message):
    """Issue 27: these were tracebacks (exit 1), or a negative device memory was planned against."""
    out = subprocess.run([sys.executable, "-m", "sharpjax.plan", *flags], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    # transformers' own import notice (without torch: the Python 3.12 stage) is not ours to count; it comes
    # once as a print and, once absl's logging is set up, again through absl's handler ("W1204 ... logging.py").
    lines = [ln for ln in out.stderr.strip().splitlines() if "PyTorch was not found" not in ln]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith(message), out.stderr[-2000:]


def test_a_target_is_planned_against_the_local_gpu_it_runs_on(tmp_path, monkeypatch, caplog):
    """issue 26, item 5: with config.plan.target set, a GPU host smaller than the target (or whose
    allocator keeps less) is what the fit check and remat="auto" plan against, with one warning."""
    import dataclasses
    import logging

    import sharpjax.plan.fit as plan_module  # preflight_run looks local_target up there
    from sharpjax.plan import GPUS, Target

    run = tiny_run(tmp_path, plan=dict(target="h200x1", method="analytic"))
    assert "fit check" in preflight(run)  # the tiny run fits an H200 (and no GPU here: nothing else to check)
    needed = plan_run(run, "h200x1", method="analytic").peak_bytes
    monkeypatch.setattr(plan_module, "local_target", lambda: (Target(GPUS["h100"], 1), needed // 2))
    with caplog.at_level(logging.WARNING, logger="sharpjax.plan"):
        with pytest.raises(ConfigError):
            preflight(run)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "config.plan.target=h200x1 but this host has h100x1" in warnings[0]
    # remat="auto" chooses on the local memory too: with room for "full" only, it picks "full".
    from sharpjax.plan import _with_remat

    auto = tiny_run(tmp_path, plan=dict(target="h200x1", method="analytic"), rollout=ACTIVATION_BOUND["rollout"],
                    train=dict(micro_batches=1, remat="auto"))
    sizes = {p: plan_run(_with_remat(auto, p), "h200x1", method="analytic").peak_bytes for p in ("none", "full")}
    assert sizes["full"] < sizes["none"]
    fraction = auto.plan.max_memory_fraction
    monkeypatch.setattr(plan_module, "local_target", lambda: None)
    assert preflight_run(auto)[0].train.remat != "full"  # the H200 itself has room for more
    room = int(sizes["full"] / fraction) + 1
    monkeypatch.setattr(plan_module, "local_target", lambda: (Target(GPUS["h100"], 1), room))
    assert preflight_run(auto)[0].train.remat == "full"
    assert preflight_run(dataclasses.replace(auto, plan=dataclasses.replace(auto.plan, target=None)))[0].train.remat \
        == "full"  # the same choice as planning the local GPU itself


@pytest.mark.parametrize("target, attention", [("h100x4", "xla"), ("h200x2", "xla"), ("h200x1", "auto")])
def test_the_plan_samples_as_the_target_will(tmp_path, target, attention):
    """issue 26, item 6: the planning host has one device, so "auto" would compile the Pallas
    decode kernel; a multi-GPU run never takes it (dense XLA attention), so its plan must not."""
    from sharpjax.plan import plan_sampling, plan_shapes

    run = tiny_run(tmp_path, mesh=dict(data=-1, fsdp=1, tensor=1))
    model, t = model_config_for(run), parse_target(target)
    shapes = plan_shapes(run, model, t.count)
    sampling = plan_sampling(run, model, t, shapes)
    assert sampling.decode_attention == attention
    # ... with the run's per-prompt budgets and the plan's worst-case response slots.
    assert (sampling.max_total_length, sampling.max_new_tokens) == (run.rollout.max_total_length, shapes.new_tokens)


# ---- the rollout's decode reads ---------------------------------------------------------------

@pytest.mark.parametrize("filled_before, steps, block", [(0, 1, 64), (0, 2048, 64), (0, 1792, 64), (1024, 2048, 64),
                                                         (5, 63, 16), (100, 65, 32), (0, 7, 16)])
def test_mean_slots_read_is_the_mean_of_whole_blocks_over_the_steps(filled_before, steps, block):
    from sharpjax.plan.analytic import mean_slots_read

    direct = sum(math.ceil((filled_before + t + 1) / block) * block for t in range(steps)) / steps
    assert mean_slots_read(filled_before, steps, block) == pytest.approx(direct, rel=1e-12)


@pytest.mark.parametrize("samples", [2, 4])
def test_one_gpu_decode_reads_the_filled_slots_several_read_them_all(tmp_path, samples):
    """The plan's decode phase reads what the decode attention reads: each prompt's P slots once
    for its rows, and each row's response slots: on one GPU the length-aware kernel reads the
    filled ones in 64-slot blocks (~M / 2 a step over a full-length decode); on several devices
    the dense attention reads all M, every step."""
    run = tiny_run(tmp_path, rollout=dict(samples_per_prompt=samples, prompts_per_step=32 // samples))
    one, two = (plan_run(run, target, method="analytic") for target in ("h100x1", "h100x2"))
    model, P, M = one.model, one.shapes.prompt_len, one.shapes.new_tokens
    assert M % 64 == 0  # the kernel's block
    kv_slot = model.num_layers * 2 * model.num_kv_heads * model.head_dim * 2  # bf16 K and V, every layer

    def kv_bytes_and_rows(plan):  # the decode phase's bytes less the weights and the fp32 logits
        _, decode_bytes, steps = plan.programs[0].phases[1]
        rows = plan.shapes.prompts_per_call * samples / plan.shapes.batch_shards
        assert steps == M
        return decode_bytes - 2 * model.num_params - rows * model.vocab_size * 12, rows

    kv, rows = kv_bytes_and_rows(one)
    filled = sum(math.ceil((t + 1) / 64) * 64 for t in range(M)) / M
    assert kv == pytest.approx((rows / samples * P + rows * filled) * kv_slot, rel=1e-9)
    kv, rows = kv_bytes_and_rows(two)
    assert kv == pytest.approx((rows / samples * P + rows * M) * kv_slot, rel=1e-9)
