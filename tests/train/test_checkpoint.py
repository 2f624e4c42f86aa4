"""Checkpointer: bitwise round trips of a real TrainState + typed key, retention, errors."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sharpjax.models.config import ModelConfig
from sharpjax.models.transformer import init_params
from sharpjax.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    StateMismatchError,
    abstract_like,
)
from sharpjax.train.config import OptimConfig
from sharpjax.train.optim import make_optimizer
from sharpjax.train.step import init_train_state

TINY = ModelConfig(
    model_type="qwen2", vocab_size=32, hidden_size=8, intermediate_size=16, num_layers=2, num_heads=2,
    num_kv_heads=1, head_dim=4, qkv_bias=True,
)  # fmt: skip


def _raw(tree):
    """Host copies of every leaf, typed keys as their raw uint32 data (independent of the code under test)."""
    is_key = lambda x: jnp.issubdtype(x.dtype, jax.dtypes.prng_key)  # noqa: E731
    return [np.asarray(jax.random.key_data(x) if is_key(x) else x) for x in jax.tree.leaves(tree)]


def _assert_bitwise_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
        assert a.dtype == b.dtype, path
        assert a.shape == b.shape, path
    for a, b in zip(_raw(got), _raw(want)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))


@jax.jit
def _make_state(seed):
    """A TrainState after one real optimizer update (nonzero moments, step count 1) plus a PRNG key.

    Jitted: op-by-op dispatch of the init and update takes ~20 s on a loaded CI machine.
    """
    params = init_params(TINY, jax.random.key(seed, impl="rbg"))  # rbg: threefry compiles slowly on CPU
    optimizer = make_optimizer(OptimConfig(learning_rate=1e-2, warmup_steps=0))
    state = init_train_state(params, optimizer)
    grads = jax.tree.map(lambda p: jnp.cos(p + seed), state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    state = state.replace(
        step=state.step + 1,
        params=jax.tree.map(jnp.add, state.params, updates),
        opt_state=opt_state,
    )
    return {"train": state, "key": jax.random.fold_in(jax.random.key(42), seed)}


@pytest.fixture(scope="module")
def state():
    return _make_state(0)


def test_round_trip_is_bitwise_exact(tmp_path, state):
    meta = {"config": {"lr": 1e-6, "model": "qwen2"}, "data": {"epoch": 2, "offset": 17, "order": [3, 1, 2]}}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(7, state, meta=meta)
    # A fresh abstract state: zeros with the right structure, nothing shared with `state`.
    template = jax.tree.map(
        lambda x: x if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else jnp.zeros_like(x), _make_state(1)
    )
    with Checkpointer(tmp_path) as ckpt:
        restored, got_meta = ckpt.restore(abstract_state=abstract_like(template))
    _assert_bitwise_equal(restored, state)
    assert got_meta == meta
    assert int(restored["train"].step) == 1
    assert type(restored["train"]) is type(state["train"])
    # The restored key is a typed key of the same impl that draws the same numbers.
    assert jax.random.key_impl(restored["key"]) == jax.random.key_impl(state["key"])
    np.testing.assert_array_equal(jax.random.normal(restored["key"], (4,)), jax.random.normal(state["key"], (4,)))
    # The moments really are nonzero (the opt_state round trip is not vacuous).
    mu = [leaf for leaf in _raw(restored["train"].opt_state) if leaf.dtype == np.float32 and leaf.ndim > 1]
    assert mu and all(np.abs(m).max() > 0 for m in mu)


def test_round_trip_non_default_prng_impl_and_key_batch(tmp_path):
    state = {"keys": jax.random.split(jax.random.key(3, impl="rbg"), 5), "x": jnp.arange(6.0).reshape(2, 3)}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(0, state)
        restored, meta = ckpt.restore(abstract_state=abstract_like(state))
    assert meta == {}
    assert str(jax.random.key_impl(restored["keys"])) == "rbg"
    _assert_bitwise_equal(restored, state)


def test_restore_meta_and_metrics(tmp_path, state):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state, meta={"a": 1}, metrics={"acc": np.float32(0.25)})
        ckpt.save(2, state, meta={"a": 2, "nested": {"b": [1, "x", None, True]}})
        assert ckpt.restore_meta() == {"a": 2, "nested": {"b": [1, "x", None, True]}}
        assert ckpt.restore_meta(1) == {"a": 1}
        assert ckpt.metrics(1) == {"acc": 0.25}
        assert ckpt.metrics(2) == {}


def test_restore_specific_step(tmp_path):
    states = {s: {"w": jnp.full((3,), float(s))} for s in (1, 2, 3)}
    with Checkpointer(tmp_path, keep_last=None) as ckpt:
        for s, st in states.items():
            ckpt.save(s, st, meta={"s": s})
        restored, meta = ckpt.restore(2, abstract_state=abstract_like(states[1]))
        latest, _ = ckpt.restore(abstract_state=abstract_like(states[1]))
    assert meta == {"s": 2}
    np.testing.assert_array_equal(restored["w"], [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(latest["w"], [3.0, 3.0, 3.0])


def test_keep_last_and_best_policy(tmp_path):
    x = {"w": jnp.ones(2)}
    acc = {1: 0.5, 2: 0.9, 3: 0.1, 4: 0.2, 5: 0.3, 6: 0.95, 7: 0.0, 8: 0.0, 9: 0.0}
    expected = {
        1: [1], 2: [1, 2],
        3: [2, 3],  # step 1 is neither in the last 2 nor best: dropped
        4: [2, 3, 4],  # best (2) kept outside the last 2 = [3, 4]
        5: [2, 4, 5],
        6: [5, 6],  # a new best inside the last 2: the old best goes
        7: [6, 7], 8: [6, 7, 8], 9: [6, 8, 9],
    }  # fmt: skip
    with Checkpointer(tmp_path, keep_last=2, best_metric="acc", best_mode="max") as ckpt:
        for step, value in acc.items():
            ckpt.save(step, x, metrics={"acc": value, "loss": 1.0})
            assert ckpt.all_steps() == expected[step], step
            assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == expected[step], step
        assert ckpt.best_step() == 6
        assert ckpt.latest_step() == 9
    # Reopening the directory recovers latest and best from disk.
    with Checkpointer(tmp_path, keep_last=2, best_metric="acc") as again:
        assert again.all_steps() == [6, 8, 9]
        assert again.latest_step() == 9
        assert again.best_step() == 6
        assert again.metrics(6) == {"acc": 0.95, "loss": 1.0}


def test_best_mode_min_and_nonfinite_metrics_are_never_best(tmp_path):
    x = {"w": jnp.ones(2)}
    with Checkpointer(tmp_path, keep_last=1, best_metric="loss", best_mode="min") as ckpt:
        ckpt.save(1, x, metrics={"loss": 2.0})
        ckpt.save(2, x, metrics={"loss": float("nan")})
        ckpt.save(3, x, metrics={"loss": float("-inf")})
        ckpt.save(4, x)  # no metric: not a candidate
        assert ckpt.best_step() == 1
        assert ckpt.all_steps() == [1, 4]
        ckpt.save(5, x, metrics={"loss": 0.5})
        assert ckpt.best_step() == 5
        assert ckpt.all_steps() == [5]


def test_no_best_metric_keeps_last_only(tmp_path):
    with Checkpointer(tmp_path, keep_last=2) as ckpt:
        for step in (10, 20, 30):
            ckpt.save(step, {"w": jnp.ones(1)}, metrics={"acc": 1.0 if step == 10 else 0.0})
        assert ckpt.best_step() is None
        assert ckpt.all_steps() == [20, 30]


def test_async_save_then_wait(tmp_path, state):
    with Checkpointer(tmp_path, keep_last=2, async_save=True) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, state, meta={"step": step}, wait=False)
        ckpt.wait()
        assert ckpt.all_steps() == [2, 3]
        restored, meta = ckpt.restore(abstract_state=abstract_like(state))
    assert meta == {"step": 3}
    _assert_bitwise_equal(restored, state)
    # Every kept step directory was committed (orbax writes into a tmp dir and renames).
    assert sorted(os.listdir(tmp_path)) == ["2", "3"]


def test_async_save_survives_donated_state(tmp_path):
    """Async save returns once arrays are on the host: overwriting/deleting the state after is safe."""
    x = {"w": jnp.arange(1000.0)}
    want = np.asarray(x["w"]).copy()
    with Checkpointer(tmp_path, async_save=True) as ckpt:
        ckpt.save(1, x, wait=False)
        x["w"].delete()
        ckpt.wait()
        restored, _ = ckpt.restore(abstract_state={"w": jax.ShapeDtypeStruct((1000,), jnp.float32)})
    np.testing.assert_array_equal(restored["w"], want)


def test_save_existing_step_needs_force(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, {"w": jnp.zeros(2)}, meta={"v": 0})
        with pytest.raises(CheckpointExistsError, match="step 3 already exists.*force=True"):
            ckpt.save(3, {"w": jnp.ones(2)}, meta={"v": 1})
        ckpt.save(3, {"w": jnp.ones(2)}, meta={"v": 1}, force=True)
        restored, meta = ckpt.restore(abstract_state=abstract_like({"w": jnp.zeros(2)}))
    np.testing.assert_array_equal(restored["w"], [1.0, 1.0])
    assert meta == {"v": 1}


def test_save_step_below_latest_is_not_skipped(tmp_path):
    """orbax alone silently skips steps <= its latest step; a run restarted from an old step must save."""
    with Checkpointer(tmp_path, keep_last=None) as ckpt:
        ckpt.save(5, {"w": jnp.zeros(1)})
        ckpt.save(3, {"w": jnp.ones(1)})
        assert ckpt.all_steps() == [3, 5]


def test_not_found_errors_list_available_steps(tmp_path):
    abstract = abstract_like({"w": jnp.zeros(2)})
    with Checkpointer(tmp_path / "empty") as ckpt:
        assert ckpt.latest_step() is None and ckpt.best_step() is None and ckpt.all_steps() == []
        with pytest.raises(CheckpointNotFoundError, match="no checkpoint in .*empty"):
            ckpt.restore(abstract_state=abstract)
        with pytest.raises(CheckpointNotFoundError):
            ckpt.restore_meta()
    with Checkpointer(tmp_path / "some") as ckpt:
        ckpt.save(2, {"w": jnp.zeros(2)})
        ckpt.save(4, {"w": jnp.zeros(2)})
        with pytest.raises(CheckpointNotFoundError, match=r"step 3 .*available steps: \[2, 4\]"):
            ckpt.restore(3, abstract_state=abstract)
        with pytest.raises(CheckpointNotFoundError, match=r"available steps: \[2, 4\]"):
            ckpt.restore_meta(5)
        with pytest.raises(FileNotFoundError):  # also catchable as the builtin
            ckpt.metrics(1)


def test_state_mismatch_names_the_path(tmp_path, state):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        # A different model shape: the embedding table is the first differing leaf.
        bigger = TINY.replace(vocab_size=64)
        make = lambda: {  # noqa: E731
            "train": init_train_state(init_params(bigger, jax.random.key(0)), make_optimizer(OptimConfig())),
            "key": state["key"],
        }
        with pytest.raises(StateMismatchError, match=r"shape differs at \['train'\]\.params\['embed'\]: \(32, 8\)"):
            ckpt.restore(abstract_state=jax.eval_shape(make))
        # A missing subtree.
        with pytest.raises(StateMismatchError, match=r"\['key'\]: present in checkpoint .* not in abstract_state"):
            ckpt.restore(abstract_state=abstract_like({"train": state["train"]}))
        # An extra leaf.
        extra = {**state, "extra": jnp.zeros(3)}
        with pytest.raises(StateMismatchError, match=r"\['extra'\]: present in abstract_state but not in checkpoint"):
            ckpt.restore(abstract_state=abstract_like(extra))
        # Key-ness must match: raw uint32 data is not a typed key.
        raw = {**state, "key": jax.random.key_data(state["key"])}
        with pytest.raises(StateMismatchError, match=r"dtype differs at \['key'\].*typed PRNG keys"):
            ckpt.restore(abstract_state=abstract_like(raw))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="best_mode"):
        Checkpointer(tmp_path, best_mode="maximum")
    with pytest.raises(ValueError, match="keep_last"):
        Checkpointer(tmp_path, keep_last=0)
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(TypeError, match="meta must be JSON-serializable"):
            ckpt.save(1, {"w": jnp.zeros(1)}, meta={"x": object()})
        with pytest.raises(TypeError, match="metric 'acc' is not a scalar"):
            ckpt.save(1, {"w": jnp.zeros(1)}, metrics={"acc": [1.0, 2.0]})
        with pytest.raises(TypeError, match="metric 'name' is not a scalar"):
            ckpt.save(1, {"w": jnp.zeros(1)}, metrics={"name": "best"})
        assert ckpt.all_steps() == []


def test_meta_is_plain_json_on_disk(tmp_path):
    """The meta item is readable without sharpjax (e.g. by a launcher deciding where to resume)."""
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(4, {"w": jnp.zeros(1)}, meta={"data": {"offset": 9}})
    [meta_file] = [
        os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "4" / "meta") for f in fs if f != "commit_success.txt"
    ]
    with open(meta_file) as f:
        assert json.load(f) == {"data": {"offset": 9}}


def test_sharded_round_trip_on_mesh(tmp_path, state):
    """Sharded arrays restore onto the abstract state's NamedShardings (1-device mesh in-process)."""
    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
    spec = lambda x: PartitionSpec("fsdp") if x.ndim >= 1 else PartitionSpec()  # noqa: E731
    sharded = jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec(x))), state)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, sharded)
        restored, _ = ckpt.restore(abstract_state=abstract_like(sharded))
    _assert_bitwise_equal(restored, state)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(sharded)):
        assert got.sharding == want.sharding


_RESHARD = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from sharpjax.train.checkpoint import Checkpointer, abstract_like

    assert jax.device_count() == 4, jax.devices()
    devices = np.asarray(jax.devices())
    w = jnp.arange(8 * 6, dtype=jnp.float32).reshape(8, 6)
    keys = jax.random.split(jax.random.key(7), 4)
    save_mesh = Mesh(devices.reshape(4, 1), ("a", "b"))
    state = {
        "w": jax.device_put(w, NamedSharding(save_mesh, P("a", None))),
        "keys": jax.device_put(keys, NamedSharding(save_mesh, P("a"))),
    }
    with Checkpointer(sys.argv[1]) as ckpt:
        ckpt.save(1, state)
    # Restore onto a different mesh and layout.
    load_mesh = Mesh(devices.reshape(2, 2), ("x", "y"))
    target = {
        "w": jax.ShapeDtypeStruct(w.shape, w.dtype, sharding=NamedSharding(load_mesh, P("y", "x"))),
        "keys": jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=NamedSharding(load_mesh, P("x"))),
    }
    with Checkpointer(sys.argv[1]) as ckpt:
        got, _ = ckpt.restore(abstract_state=target)
    assert got["w"].sharding == target["w"].sharding, got["w"].sharding
    assert got["keys"].sharding.spec == P("x"), got["keys"].sharding
    assert len(got["w"].addressable_shards) == 4 and got["w"].addressable_shards[0].data.shape == (4, 3)
    np.testing.assert_array_equal(np.asarray(got["w"]), np.asarray(w))
    np.testing.assert_array_equal(np.asarray(jax.random.key_data(got["keys"])), np.asarray(jax.random.key_data(keys)))
    print("RESHARD OK")
    """
)


def test_restore_onto_a_different_sharding_4_devices(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", _RESHARD, str(tmp_path / "ckpt")], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RESHARD OK" in proc.stdout


def test_closed_checkpointer_refuses_work(tmp_path):
    ckpt = Checkpointer(tmp_path)
    ckpt.close()
    ckpt.close()  # idempotent
    with pytest.raises(Exception, match="closed"):
        ckpt.save(1, {"w": jnp.zeros(1)})


# ---- damaged checkpoints (issue 17.5): the damage a kill, a full disk or a killed cleanup leaves


def _three_steps(directory, **kwargs):
    """Steps 1, 2, 3 of w = [s, s, s] (keep every one), each with metric acc = s / 10."""
    with Checkpointer(directory, keep_last=None, best_metric="acc", **kwargs) as ckpt:
        for s in (1, 2, 3):
            ckpt.save(s, {"w": jnp.full((64,), float(s))}, meta={"s": s}, metrics={"acc": s / 10})
    return {"w": jnp.zeros((64,))}


def _empty_dir(path):
    for name in os.listdir(path):
        full = os.path.join(path, name)
        shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)


def _truncate_files(path):
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "r+b") as f:
                f.truncate(os.path.getsize(full) // 2)


def _corrupt_files(path):
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            size = os.path.getsize(full)
            with open(full, "wb") as f:
                f.write(bytes(range(256)) * (size // 256) + b"\xff" * (size % 256))


@pytest.mark.parametrize(
    "damage",
    [
        lambda step_dir: _empty_dir(step_dir),  # killed right after mkdir
        lambda step_dir: _truncate_files(os.path.join(step_dir, "state")),  # full disk mid-write
        lambda step_dir: _corrupt_files(os.path.join(step_dir, "state")),
        lambda step_dir: _truncate_files(os.path.join(step_dir, "meta")),  # raw JSON error
    ],
    ids=["empty", "truncated-state", "corrupt-state", "truncated-meta"],
)
def test_damaged_latest_step_falls_back_to_newest_intact(tmp_path, caplog, damage):
    directory = tmp_path / "checkpoints"
    template = _three_steps(directory)
    damage(str(directory / "3"))
    with Checkpointer(directory, keep_last=2, best_metric="acc") as ckpt:
        with caplog.at_level("WARNING", logger="sharpjax.train.checkpoint"):
            step, restored, meta = ckpt.restore_newest_intact(abstract_state=abstract_like(template))
        assert step == 2 and meta == {"s": 2}
        np.testing.assert_array_equal(restored["w"], np.full((64,), 2.0))
        assert "checkpoint step 3" in caplog.text and "damaged" in caplog.text
        # Moved aside, not deleted: the run redoes step 3 and saves it again.
        assert ckpt.all_steps() == [1, 2] and os.path.isdir(str(directory) + ".damaged/3")
        ckpt.save(3, {"w": jnp.full((64,), 33.0)}, metrics={"acc": 0.3})
        assert ckpt.all_steps() == [2, 3] and ckpt.best_step() == 3


def test_every_step_damaged_is_one_clear_error(tmp_path):
    directory = tmp_path / "checkpoints"
    template = _three_steps(directory)
    for s in (1, 2, 3):
        _empty_dir(str(directory / str(s)))
    with Checkpointer(directory) as ckpt:
        with pytest.raises(CheckpointError, match=r"no intact checkpoint in .*step 3: .*step 1: .*delete"):
            ckpt.restore_newest_intact(abstract_state=abstract_like(template))
    assert sorted(os.listdir(directory)) == ["1", "2", "3"]  # nothing moved or deleted


def test_half_deleted_old_step_is_tolerated(tmp_path):
    """A cleanup killed mid-delete: the old step has lost its info item and part of its state."""
    directory = tmp_path / "checkpoints"
    template = _three_steps(directory)
    shutil.rmtree(directory / "1" / "info")
    shutil.rmtree(directory / "1" / "state" / "ocdbt.process_0")
    with Checkpointer(directory, keep_last=2, best_metric="acc") as ckpt:
        step, _, meta = ckpt.restore_newest_intact(abstract_state=abstract_like(template))
        assert step == 3 and meta == {"s": 3}
        assert ckpt.best_step() == 3  # the unreadable step is never the best
        ckpt.save(4, {"w": jnp.full((64,), 4.0)}, metrics={"acc": 0.0})
        assert ckpt.all_steps() == [3, 4]  # and retention removed it
    assert not (directory / "1").exists()
