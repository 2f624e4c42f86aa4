"""The supported platform range (issue 24): the declared bounds are the tested ones, an untested
newer JAX warns in one line, and the GPU programs that broke on newer JAX compile for a GPU
target (compile-only, `-m aot`: the CI stages that install the jax-cuda12 plugin run them)."""

import configparser
import logging
import os
import re

import pytest

import sharpjax
from sharpjax.plan import aot_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _requirements():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    lines = [ln.split("#")[0].strip() for ln in cfg["options"]["install_requires"].splitlines()]
    return {re.match(r"[\w.-]+", ln).group(0): ln for ln in lines if ln}, cfg["options.extras_require"]


def test_declared_jax_range_is_the_tested_range():
    requires, extras = _requirements()
    (lo_major, lo_minor), (hi_major, hi_minor) = sharpjax.TESTED_JAX
    for name in ("jax", "jaxlib"):
        assert requires[name] == f"{name}>={lo_major}.{lo_minor}.2,<{hi_major}.{hi_minor + 1}", requires[name]
    # Every core library the issue names has an upper bound, and the CUDA extras pin the same JAX range.
    for name in ("flax", "optax", "orbax-checkpoint", "transformers"):
        assert "<" in requires[name], requires[name]
    for cuda in ("cuda12", "cuda13"):
        assert extras[cuda].strip() == f"jax[{cuda}]>={lo_major}.{lo_minor}.2,<{hi_major}.{hi_minor + 1}"


@pytest.mark.parametrize("version, warns", [("0.10.2", False), ("0.12.0.1", False), ("0.13.0", True), ("1.0.0", True)])
def test_an_untested_newer_jax_warns_in_one_line(monkeypatch, caplog, version, warns):
    monkeypatch.setattr(sharpjax.importlib.metadata, "version", lambda name: version)
    with caplog.at_level(logging.WARNING, logger="sharpjax"):
        sharpjax._check_jax_version()
    records = [r.getMessage() for r in caplog.records if r.name == "sharpjax"]
    if warns:
        assert len(records) == 1 and "\n" not in records[0] and f"jax {version} is newer" in records[0], records
    else:
        assert records == []


def test_no_removed_jax_api_is_imported():
    # jax.experimental.shard_alike is gone from jax 0.11.2; the Pallas decode kernel's upstream
    # module is deprecated (we vendor it). Neither may come back into the package.
    for folder, _, files in os.walk(os.path.join(ROOT, "sharpjax")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    text = f.read()
                assert "shard_alike" not in text, name
                assert "pallas.ops.gpu" not in text, name


def _require_aot():
    if not aot_available():
        reason = "the jax-cuda12 plugin is not importable (XLA's compile-only GPU topology; sharpjax/plan/__main__.py)"
        if os.environ.get("SHARPJAX_REQUIRE_AOT") == "1":  # the CI stage that installed it
            pytest.fail(f"SHARPJAX_REQUIRE_AOT=1: {reason}", pytrace=False)
        pytest.skip(reason)


def _tiny_plan(tmp_path, target, fsdp):
    from sharpjax.plan import model_config_for, parse_target, plan_shapes
    from tests.test_plan import tiny_run

    run = tiny_run(tmp_path, mesh=dict(data=1, fsdp=fsdp))
    target = parse_target(target)
    model = model_config_for(run).replace(attention="cudnn")
    return run, model, target, plan_shapes(run, model, target.count)


@pytest.mark.slow
@pytest.mark.aot
def test_cudnn_scoring_compiles_under_fsdp(tmp_path):
    """cuDNN attention's partitioner needs q, k and v sharded alike; under FSDP = 2 propagation
    left v replicated ("Query, key and value should have same sharding") until the model pinned
    them (it used jax.experimental.shard_alike, gone from jax 0.11.2)."""
    from sharpjax.plan import _aot_programs

    _require_aot()
    run, model, target, shapes = _tiny_plan(tmp_path, "h100x2", fsdp=2)
    programs, notes = _aot_programs(run, model, target, shapes, names=("scoring",))
    assert [p.name for p in programs] == ["scoring"] and notes == (), notes


@pytest.mark.slow
@pytest.mark.aot
def test_single_gpu_rollout_lowers_the_pallas_kernel_for_the_target(tmp_path):
    """One GPU: the rollout takes the Pallas decode kernel, whose Triton lowering asks for the
    GPU's compute capability; from a CPU host that is the target's abstract device (jax >= 0.11
    raised "No supported GPU devices found" without it)."""
    from sharpjax.plan import _aot_programs

    _require_aot()
    run, model, target, shapes = _tiny_plan(tmp_path, "h100x1", fsdp=1)
    (program,), notes = _aot_programs(run, model, target, shapes, names=("rollout",))
    assert program.name == "rollout" and program.temp_bytes > 0 and notes == ()
