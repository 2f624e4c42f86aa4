"""Run in a subprocess with 8 fake CPU devices: sharded jitted forward == unsharded."""

import re
import sys

import jax
import numpy as np

from sharpjax.models import apply, load_model
from sharpjax.parallel import batch_sharding, make_mesh, on_mesh, param_shardings, shard_params
from sharpjax.rollout import SamplingConfig, sample, score_tokens


def main(model_dir: str) -> None:
    assert jax.device_count() == 8, jax.devices()
    params, config = load_model(model_dir, dtype="float32")
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 512, (8, 11)).astype(np.int32)
    mask = np.ones((8, 11), np.int32)
    mask[::2, :4] = 0
    expected = np.asarray(apply(params, tokens, mask, config=config))
    sampling = SamplingConfig(max_new_tokens=6, num_samples=2, stop_token_ids=(2,))
    key = jax.random.key(0)
    expected_rollout = sample(params, tokens, mask, key, config=config, sampling=sampling)
    for data, fsdp, tensor in [(8, 1, 1), (1, 4, 2), (2, 2, 2)]:
        mesh = make_mesh(data, fsdp, tensor)
        shardings = param_shardings(config, mesh)
        sharded = shard_params(params, shardings)
        # The layout really is sharded: q's heads split over tensor, embed over fsdp.
        assert sharded["layers"]["q"].sharding.spec == shardings["layers"]["q"].spec
        fn = jax.jit(
            lambda p, t, m: apply(p, t, m, config=config),
            in_shardings=(shardings, batch_sharding(mesh), batch_sharding(mesh)),
        )
        # Traced as the trainer traces it: under the mesh, the model pins q, k and v to the same
        # rows-over-data-axes, heads-over-tensor sharding (what cuDNN attention needs under FSDP).
        with on_mesh(mesh):
            text = fn.lower(sharded, tokens, mask).as_text()
        pinned = re.findall(r"sdy\.sharding_constraint %\S+ <@mesh, (\[.*?\])> : tensor<8x11x(\d+)x", text)
        heads = sorted(int(n) for _, n in pinned)
        assert heads == sorted([config.num_heads, config.num_kv_heads, config.num_kv_heads]), pinned
        assert len({spec for spec, _ in pinned}) == 1, pinned  # one sharding for q, k and v
        rows = [a for a, n in (("data", data), ("fsdp", fsdp)) if n > 1]
        assert pinned[0][0].startswith("[{" + ", ".join(f'"{a}"' for a in rows) + "}"), pinned
        with on_mesh(mesh):
            got = np.asarray(fn(sharded, tokens, mask))
        err = np.abs(got - expected)[mask.astype(bool)].max()
        assert err < 1e-5, (data, fsdp, tensor, err)
        # Sampling with sharded params and a batch-sharded prompt batch: same samples.
        put = lambda x: jax.device_put(x, batch_sharding(mesh))  # noqa: E731
        with on_mesh(mesh):
            rollout = sample(sharded, put(tokens), put(mask), key, config=config, sampling=sampling)
        np.testing.assert_array_equal(np.asarray(rollout.tokens), np.asarray(expected_rollout.tokens))
        resp = np.asarray(rollout.response_mask, bool)
        with on_mesh(mesh):
            scores = score_tokens(sharded, rollout.tokens, rollout.attention_mask, config=config)
        assert np.abs(np.asarray(scores - expected_rollout.logprobs))[resp].max() < 1e-4
        print(f"mesh data={data} fsdp={fsdp} tensor={tensor}: max |diff| {err:.2e}")


if __name__ == "__main__":
    main(sys.argv[1])
