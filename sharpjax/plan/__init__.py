"""Memory and time plan of a run on a named GPU target, without the GPU.

    python -m sharpjax.plan --config experiments/rl_math.py:llama3b:task --target h100x4

For each jitted program of a training step (the rollout `sample`, the reward scoring
`compute_rewards`, the `train_step`) the plan gives the peak memory per device against the
device's memory, and a roofline time estimate. Two methods:

- "aot": compiles the programs at the config's real shapes and mesh for the target with
  XLA's compile-only GPU topology (needs the `jax-cuda12-plugin` / `jax-cuda12-pjrt` wheels of
  the installed jax version; nothing runs, no GPU needed). Memory is XLA's buffer assignment
  (`memory_analysis()`: arguments + outputs - aliases + temps per device).
- "analytic": closed-form byte counts of the same buffers (params, gradients, Adam moments,
  the reference model, the KV cache, one layer's activations). Seconds, no plugin.

Either way "peak" adds the arrays the loop keeps alive outside the program (e.g. the train
state and the reference model during the rollout), because they share the device. Times
are always the analytic roofline max(FLOPs / peak FLOP/s, HBM bytes / bandwidth) per phase
(prefill, every decode step, forward, backward): XLA's compile-only GPU client returns no
cost analysis, and HLO cost analysis counts a loop body (the decode loop, the layer scan)
once. It is an optimistic bound: worst-case (full-length) responses, no communication.

`check_fit` turns an over-budget plan into a ConfigError naming the knob to change; the
launcher runs it before loading any weights.

`config.train.remat="auto"` is resolved here too (`choose_remat`, `preflight_run`): the
cheapest-compute policy whose plan fits, "none" (the backward recomputes nothing), else
"dots" (recomputes the elementwise work between the saved matmul outputs), else "full"
(recomputes each layer's forward). Only the update's memory depends on it, so the rollout and
the scoring are planned once. On a mesh with fsdp or tensor > 1 the analytic closed form
undercounts what XLA keeps for "none" and "dots", so there an analytic plan picks "full"; the
AOT plan (the default where the jax-cuda12 plugin imports, as on a GPU host) picks among all
three. A run with no plan (no `config.plan.target`, no local GPU, or `config.plan.method="off"`)
resolves to `REMAT_DEFAULT` = "full": with no memory figure to choose by, the policy that holds
the least, which is also `TrainConfig`'s default.

The package reads as what each part knows, in this order: `shapes` (the shapes of a run and the
plan's records), `analytic` (the closed forms), `aot` (the compile-only programs), `fit` (the
fit check, the remat choice and the launcher's one call, `preflight_run`); `targets` names the
GPUs. This module re-exports their names, so `from sharpjax.plan import ...` keeps working.
"""

# The private names too: tests and benchmarks/train_step_aot.py import them from here.
from sharpjax.plan.analytic import _analytic_parts, _analytic_programs, _phases, gpu_attention  # noqa: F401
from sharpjax.plan.aot import _aot_compile, _aot_programs, _target_cudnn, _target_mesh, aot_available, plan_sampling  # noqa: F401
from sharpjax.plan.fit import (  # noqa: F401
    REMAT_CANDIDATES,
    REMAT_DEFAULT,
    RematChoice,
    _with_remat,
    check_fit,
    check_remat_choice,
    choose_remat,
    local_target,
    plan_run,
    preflight,
    preflight_plan,
    preflight_run,
)
from sharpjax.plan.shapes import PAPER_MODELS, GiB, Plan, PlanShapes, ProgramPlan, model_config_for, plan_shapes
from sharpjax.plan.targets import GPUS, Gpu, Target, parse_target

__all__ = [
    "GiB", "GPUS", "Gpu", "Target", "parse_target", "PAPER_MODELS", "Plan", "ProgramPlan", "PlanShapes",
    "aot_available",
    "check_fit", "gpu_attention", "local_target", "model_config_for", "plan_run", "plan_shapes", "preflight",
    "preflight_plan", "preflight_run", "REMAT_CANDIDATES", "REMAT_DEFAULT", "RematChoice", "check_remat_choice",
    "choose_remat",
]
