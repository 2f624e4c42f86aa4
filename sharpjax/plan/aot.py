"""The compile-only plan: the run's real programs (the rollout `sample`, the reward scoring
`compute_rewards`, the `train_step`) lowered and compiled at the plan's shapes over the target's
compile-only XLA GPU topology (the jax-cuda12 plugin; nothing runs), and XLA's memory analysis of each.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
from typing import TYPE_CHECKING

from sharpjax.errors import ConfigError
from sharpjax.models.config import ModelConfig
from sharpjax.plan.analytic import gpu_attention
from sharpjax.plan.shapes import PlanShapes, ProgramPlan
from sharpjax.plan.targets import GPUS, Target
from sharpjax.rollout.hlo import rematerialized
from sharpjax.train.config import RunConfig

if TYPE_CHECKING:
    from sharpjax.rollout.sampler import SamplingConfig

def aot_available() -> bool:
    """Whether XLA's compile-only CUDA topology can be built here (the jax-cuda12 plugin)."""
    try:
        from jax.experimental.topologies import get_topology_desc

        get_topology_desc("aot", "cuda", target_config=GPUS["h100"].target_config, topology="1x1x1")
        return True
    except Exception:  # noqa: BLE001 - any failure means "not available": fall back to the analytic plan
        return False


_AOT_MISSING = (
    "the 'aot' plan needs XLA's compile-only GPU topology from the jax-cuda12 plugin, which does not import here; "
    "install the wheels of this jax outside the venv: pip install --target /tmp/aot-site \"jax-cuda12-plugin=={v}\" "
    "\"jax-cuda12-pjrt=={v}\", then run with JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 "
    "PYTHONPATH=/tmp/aot-site (or use the analytic plan: --method analytic, config.plan.method='analytic')."
)


def _jax_version() -> str:
    import jax

    return jax.__version__


def resolve_method(method: str) -> str:
    """The plan's method: "aot" | "analytic", or "auto" (aot when the plugin imports). Raises
    ConfigError for "aot" without the plugin (else a NotImplementedError from deep inside jax)."""
    if method == "auto":
        return "aot" if aot_available() else "analytic"
    if method not in ("aot", "analytic"):
        raise ValueError(f"method={method!r}; expected 'aot', 'analytic' or 'auto'.")
    if method == "aot" and not aot_available():
        raise ConfigError(_AOT_MISSING.format(v=_jax_version()))
    return method


# ---- AOT compile ------------------------------------------------------------------------

def plan_sampling(run: RunConfig, model: ModelConfig, target: Target, s: PlanShapes) -> SamplingConfig:
    """The `SamplingConfig` of the rollout program the run executes on `target`, at the plan's shapes.

    The decode attention is chosen for the target, not for the planning host: a multi-GPU run
    takes the dense XLA path (`transformer._decode_attention`: the Pallas kernel only on one
    device), while the compile-only host has one device and would pick the kernel.
    """
    from sharpjax.rollout.sampler import SamplingConfig

    r = run.rollout
    return SamplingConfig(
        max_new_tokens=s.new_tokens, max_total_length=r.max_total_length if r.max_new_tokens is None else None,
        num_samples=s.samples, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, ignore_eos=r.ignore_eos,
        stop_token_ids=tuple(model.eos_token_ids) or (0,), decode_attention="xla" if target.count > 1 else "auto",
    )


def _aot_programs(run: RunConfig, model: ModelConfig, target: Target, s: PlanShapes,
                  names: tuple[str, ...] = ("rollout", "scoring", "train_step")) -> list[ProgramPlan]:
    from sharpjax.parallel import on_mesh

    if getattr(model, "attention", None) == "auto":  # tracing on this CPU host would pick XLA's attention
        model = model.replace(attention=gpu_attention(model))
    out, notes = [], []
    mesh = _target_mesh(target, s.mesh)  # one topology for every program
    for name in names:
        try:
            # Traced under the target's mesh: the model pins q/k/v shardings (parallel.on_mesh).
            with _target_cudnn(target), on_mesh(mesh):
                out.append(_aot_compile(run, model, target, s, name, mesh))
        except Exception as e:  # noqa: BLE001 - reported in the plan, then planned with XLA's attention
            if getattr(model, "attention", None) != "cudnn":
                raise
            lines = [ln.strip() for ln in str(e).splitlines() if re.match(r"\s*\w*Error: ", ln)] or [type(e).__name__]
            first = lines[-1]
            notes.append(f"{name}: cuDNN attention does not compile on this mesh ({first[:160]}); "
                         "planned with XLA attention (config.attention='xla')")
            with on_mesh(mesh):
                out.append(_aot_compile(run, model.replace(attention="xla"), target, s, name, mesh))
    return out, tuple(notes)


def _target_mesh(target: Target, mesh_shape: tuple[int, int, int]):
    """The run's mesh over the target's compile-only GPUs (one host of `target.count`)."""
    from jax.experimental.topologies import get_topology_desc

    from sharpjax.parallel import make_mesh

    topology = get_topology_desc("aot", "cuda", target_config=target.gpu.target_config,
                                 topology=f"1x1x{target.count}")
    return make_mesh(*mesh_shape, devices=topology.devices)


@contextlib.contextmanager
def _target_cudnn(target: Target):
    """jax asks the local cuDNN library for its version when it traces cuDNN attention; a
    compile-only host has none, so answer with the target description's (dnn_version_info)."""
    try:
        from jax._src.cudnn import fused_attention_stablehlo as fa
    except ImportError:  # pragma: no cover - jax without cuDNN attention
        yield
        return
    m = re.search(r"dnn_version_info\s*{\s*major:\s*(\d+)\s*minor:\s*(\d+)", target.gpu.target_config)
    version = int(m.group(1)) * 10000 + int(m.group(2)) * 100 if m else 90000
    original = fa.check_cudnn_version
    fa.check_cudnn_version = lambda: version
    try:
        yield
    finally:
        fa.check_cudnn_version = original


def abstract_train_state(model: ModelConfig, optim, mesh):
    """The train state a step is lowered with, as `jax.ShapeDtypeStruct`s over `mesh`: fp32 master
    params sharded like the model's (`parallel.param_shardings`), the optimizer's moments like
    their params, the step counter replicated. `optim` is the run's `OptimConfig`."""
    import jax
    import jax.numpy as jnp
    import optax

    from sharpjax.models.transformer import param_shapes
    from sharpjax.parallel import param_shardings, replicated
    from sharpjax.train.step import TrainState, make_optimizer

    rep, p_sh = replicated(mesh), param_shardings(model, mesh)
    is_shape = lambda x: isinstance(x, tuple) and all(isinstance(a, int) for a in x)  # noqa: E731
    sds = jax.ShapeDtypeStruct
    master = jax.tree.map(lambda shp, sh: sds(shp, jnp.float32, sharding=sh), param_shapes(model), p_sh,
                          is_leaf=is_shape)
    optimizer = make_optimizer(optim)
    abstract = jax.eval_shape(
        lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p)), master
    )
    opt_sh = optax.tree_map_params(optimizer, lambda _, sh: sh, abstract.opt_state, p_sh,
                                   transform_non_params=lambda _: rep)
    shardings = TrainState(step=rep, params=p_sh, opt_state=opt_sh)
    return jax.tree.map(lambda a, sh: sds(a.shape, a.dtype, sharding=sh), abstract, shardings)


def _aot_compile(run: RunConfig, model: ModelConfig, target: Target, s: PlanShapes, name: str, mesh) -> ProgramPlan:
    """Lowers and compiles one program (`name`) over `mesh`, the target's compile-only GPUs
    (`_target_mesh`); call it under `on_mesh(mesh)`."""
    import jax
    import jax.numpy as jnp

    from sharpjax.models.transformer import param_shapes
    from sharpjax.parallel import batch_sharding, param_shardings, replicated
    from sharpjax.rollout.sampler import RolloutBatch, sample
    from sharpjax.train.step import (
        StepConfig,
        TrainBatch,
        compute_rewards,
        make_train_step,
        scores_reference,
    )

    rep = replicated(mesh)
    rows1, rows2 = batch_sharding(mesh, 1), batch_sharding(mesh, 2)
    p_sh = param_shardings(model, mesh)
    is_shape = lambda x: isinstance(x, tuple) and all(isinstance(a, int) for a in x)  # noqa: E731
    sds = jax.ShapeDtypeStruct
    compute = jax.tree.map(lambda shp, sh: sds(shp, model.jnp_dtype, sharding=sh), param_shapes(model), p_sh,
                           is_leaf=is_shape)
    state = abstract_train_state(model, run.optim, mesh)

    def local_bytes(tree) -> int:
        return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree))

    score_ref = scores_reference(run.reward, run.loss, always=run.train.score_reference_always)
    k, P, T, B = s.samples, s.prompt_len, s.width, s.rows
    key = jax.eval_shape(lambda: jax.random.key(0))
    sampling = plan_sampling(run, model, target, s)
    prompts = sds((s.prompts_per_call, P), jnp.int32, sharding=rows2)
    if name == "rollout":
        low = sample.lower(compute, prompts, prompts, sds(key.shape, key.dtype, sharding=rep), config=model,
                           sampling=sampling)
    i32, f32 = (lambda *shp: sds(shp, jnp.int32, sharding=rows2 if len(shp) == 2 else rows1),
                lambda *shp: sds(shp, jnp.float32, sharding=rows2 if len(shp) == 2 else rows1))
    rollout = RolloutBatch(tokens=i32(B, T), attention_mask=i32(B, T), response_mask=i32(B, T), logprobs=f32(B, T),
                           sampling_logprobs=f32(B, T), lengths=i32(B), finished=sds((B,), jnp.bool_, sharding=rows1),
                           prompt_index=i32(B))
    if name == "scoring":
        extra = {}
        if "tokens_per_micro_batch" in inspect.signature(compute_rewards).parameters:
            extra = dict(tokens_per_micro_batch=run.train.tokens_per_micro_batch, row_shards=s.batch_shards)
        rewards = jax.jit(compute_rewards, static_argnames=(
            "model", "reward", "loss", "group_size", "logits_chunk", "score_reference", *extra))
        low = rewards.lower(compute if score_ref else None, rollout, f32(B), model=model, reward=run.reward,
                            loss=run.loss, group_size=k, logits_chunk=run.train.logits_chunk,
                            score_reference=score_ref, **extra)
    batch = TrainBatch(tokens=i32(B, T), attention_mask=i32(B, T), response_mask=i32(B, T),
                       rollout_logprobs=f32(B, T), advantages=f32(B), ref_logprobs=f32(B, T))
    cfg = StepConfig(model=model, loss=run.loss, optim=run.optim, micro_batches=run.train.micro_batches,
                     remat=run.train.remat, logits_chunk=run.train.logits_chunk, has_reference=score_ref)
    if name == "train_step":
        low = make_train_step(cfg, state, mesh).lower(state, batch)
    resident = {"rollout": local_bytes(state) + local_bytes(compute), "scoring": local_bytes(state),
                "train_step": local_bytes(compute)}
    compiled = low.compile()
    m = compiled.memory_analysis()
    return ProgramPlan(
        name=name, argument_bytes=m.argument_size_in_bytes, output_bytes=m.output_size_in_bytes,
        alias_bytes=m.alias_size_in_bytes, temp_bytes=m.temp_size_in_bytes, resident_bytes=resident[name],
        phases=(), calls=s.rollout_calls if name == "rollout" else 1,
        xla_remat_gemms=rematerialized(compiled.as_text())["gemms"],
    )
