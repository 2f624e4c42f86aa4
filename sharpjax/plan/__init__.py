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
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import math
import os
import re
import types
from typing import TYPE_CHECKING, Any

from sharpjax.errors import ConfigError
from sharpjax.models.config import ModelConfig
from sharpjax.plan import chunks
from sharpjax.plan.targets import GPUS, Gpu, Target, parse_target
from sharpjax.train.config import RunConfig

if TYPE_CHECKING:
    from sharpjax.rollout.sampler import SamplingConfig

log = logging.getLogger(__name__)

__all__ = [
    "GiB", "GPUS", "Gpu", "Target", "parse_target", "PAPER_MODELS", "Plan", "ProgramPlan", "PlanShapes",
    "aot_available",
    "check_fit", "gpu_attention", "local_target", "model_config_for", "plan_run", "plan_shapes", "preflight",
    "preflight_run", "REMAT_CANDIDATES", "REMAT_DEFAULT", "RematChoice", "check_remat_choice", "choose_remat",
]

GiB = 2**30

# The published config.json of the paper's models (no download at plan time); a local
# model_dir with a config.json takes precedence.
PAPER_MODELS: dict[str, dict[str, Any]] = {
    "Llama-3.2-3B-Instruct": dict(
        model_type="llama", vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
        num_attention_heads=24, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5, hidden_act="silu",
        max_position_embeddings=131072, attention_bias=False, mlp_bias=False, tie_word_embeddings=True,
        rope_theta=500000.0, rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                               high_freq_factor=4.0, original_max_position_embeddings=8192),
        bos_token_id=128000, eos_token_id=[128001, 128008, 128009], torch_dtype="bfloat16",
    ),
    "Qwen2.5-3B-Instruct": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
        num_attention_heads=16, num_key_value_heads=2, rms_norm_eps=1e-6, hidden_act="silu",
        max_position_embeddings=32768, rope_theta=1000000.0, sliding_window=32768, use_sliding_window=False,
        tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645, torch_dtype="bfloat16",
    ),
    "Qwen3-4B-Instruct-2507": dict(
        model_type="qwen3", vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6, hidden_act="silu",
        max_position_embeddings=262144, attention_bias=False, rope_theta=5000000.0, rope_scaling=None,
        use_sliding_window=False, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645,
        torch_dtype="bfloat16",
    ),
}


def model_config_for(run: RunConfig) -> ModelConfig:
    """The model's architecture without its weights: `<model_dir>/config.json`, else the
    published config of a paper model named like the directory (e.g. .../Qwen3-4B-Instruct-2507)."""
    path = os.path.join(run.model_dir, "config.json")
    if os.path.isfile(path):
        from sharpjax.models.hf import load_config  # a corrupt config.json: ModelFileError naming it

        return load_config(run.model_dir, dtype=run.dtype)
    name = os.path.basename(os.path.normpath(run.model_dir))
    if name in PAPER_MODELS:
        return ModelConfig.from_hf_dict(PAPER_MODELS[name], dtype=run.dtype, source=f"{name} (published config.json)")
    raise ConfigError(
        f"config.model_dir={run.model_dir!r} has no config.json and is not one of the paper's models "
        f"({', '.join(PAPER_MODELS)}); the plan needs the architecture."
    )


@dataclasses.dataclass(frozen=True)
class PlanShapes:
    """The shapes the plan compiles (worst case: full-length responses, no padding trimmed).

    Attributes:
      mesh: (data, fsdp, tensor).
      prompt_len: P, the prompt bucket planned for (default: with per-prompt budgets, the
        largest bucket a prompt that leaves room for a response can reach; with a fixed
        `max_new_tokens`, the largest bucket that leaves half of `max_total_length`).
      new_tokens: M, the response slots: with per-prompt budgets, those of a batch that also
        holds a one-token prompt (`rollout.text.response_allocation`), the worst case.
      prompts_per_call: prompts per sampler call (`config.rollout.chunk_prompts`).
      samples: K, samples per prompt.
      rows: B = prompts_per_step x K, rows of the scoring and of the train step.
      micro_batches: gradient accumulation steps.
      scoring_rows: rows per pass of the reference scoring (`config.train.tokens_per_micro_batch`).
    """

    mesh: tuple[int, int, int]
    prompt_len: int
    new_tokens: int
    prompts_per_call: int
    samples: int
    rows: int
    micro_batches: int
    scoring_rows: int = 0  # rows per pass of the reference scoring (all devices); 0: all rows

    @property
    def width(self) -> int:
        return self.prompt_len + self.new_tokens

    @property
    def batch_shards(self) -> int:
        return self.mesh[0] * self.mesh[1]

    @property
    def rollout_calls(self) -> int:
        return self.rows // (self.prompts_per_call * self.samples)


def plan_shapes(run: RunConfig, model: ModelConfig, num_devices: int, *, prompt_len: int | None = None) -> PlanShapes:
    run.check_against(context_length=model.max_position_embeddings, num_devices=num_devices)
    r = run.rollout
    if r.max_new_tokens is None:
        from sharpjax.rollout.text import response_allocation

        # Each response may use max_total_length minus its own prompt (`rollout.text.fit_sampling`),
        # so the worst batch pads to the largest bucket a prompt that leaves a response can reach
        # and holds a one-token prompt beside it: the most prompt slots AND the most response slots.
        buckets = sorted(r.prompt_buckets)
        reachable = [b for i, b in enumerate(buckets) if (buckets[i - 1] if i else 0) + 1 < r.max_total_length]
        prompt_len = prompt_len or max(reachable, default=buckets[0])
        new_tokens = response_allocation(r.max_total_length, 1, cap=r.max_total_length)
    else:
        if prompt_len is None:
            fits = [b for b in r.prompt_buckets if b <= r.max_total_length // 2]
            prompt_len = max(fits) if fits else min(r.prompt_buckets)
        new_tokens = r.max_new_tokens
    if new_tokens < 1:
        raise ConfigError(
            f"a prompt of {prompt_len} tokens leaves no response budget in config.rollout.max_total_length."
        )
    chunk = getattr(r, "chunk_prompts", None) or r.prompts_per_step
    mesh = run.mesh_shape(num_devices)
    rows = r.prompts_per_step * r.samples_per_prompt
    scoring_rows = rows
    if getattr(run.train, "tokens_per_micro_batch", None):
        from sharpjax.rollout.scoring import rows_per_micro_batch

        scoring_rows = rows_per_micro_batch(rows, prompt_len + new_tokens, row_shards=mesh[0] * mesh[1],
                                            tokens_per_micro_batch=run.train.tokens_per_micro_batch)
    return PlanShapes(
        mesh=mesh, prompt_len=prompt_len, new_tokens=new_tokens, prompts_per_call=chunk,
        samples=r.samples_per_prompt, rows=rows, micro_batches=run.train.micro_batches, scoring_rows=scoring_rows,
    )


@dataclasses.dataclass(frozen=True)
class ProgramPlan:
    """Per-device memory and cost of one jitted program.

    Attributes:
      argument_bytes, output_bytes, alias_bytes, temp_bytes: XLA's memory analysis (or
        their closed forms): the program's own footprint is args + outputs - aliases + temps.
      resident_bytes: arrays the loop keeps alive outside this program (same device).
      phases: (FLOPs, HBM bytes) per device of each roofline phase, with a repeat count.
      calls: calls per optimizer step.
      parts: the largest analytic components, for the error message (name -> bytes).
    """

    name: str
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    resident_bytes: int
    phases: tuple[tuple[float, float, int], ...]
    calls: int = 1
    parts: tuple[tuple[str, int], ...] = ()

    @property
    def peak_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.resident_bytes

    def time_s(self, gpu: Gpu) -> float:
        return self.calls * sum(n * max(f / gpu.peak_flops, b / gpu.hbm_bandwidth) for f, b, n in self.phases)


@dataclasses.dataclass(frozen=True)
class Plan:
    target: Target
    method: str  # "aot" or "analytic"
    shapes: PlanShapes
    model: ModelConfig
    programs: tuple[ProgramPlan, ...]
    memory_bytes: int  # device memory planned against
    notes: tuple[str, ...] = ()  # what the compile could not do as the GPU run would
    remat: str = ""  # the train step's remat policy planned ("auto" resolved)

    @property
    def peak_bytes(self) -> int:
        return max(p.peak_bytes for p in self.programs)

    @property
    def step_time_s(self) -> float:
        return sum(p.time_s(self.target.gpu) for p in self.programs)

    def table(self) -> str:
        s = self.shapes
        head = (f"{self.target.name} ({self.method}): mesh data x fsdp x tensor = {' x '.join(map(str, s.mesh))}, "
                f"prompt {s.prompt_len} + response {s.new_tokens} tokens, {s.rows} rows in {s.micro_batches} "
                f"micro-batches (scoring {s.scoring_rows or s.rows} rows a pass, update remat {self.remat}), "
                f"{s.rollout_calls} sampler call(s) of "
                f"{s.prompts_per_call * s.samples} rows; "
                f"device {self.memory_bytes / GiB:.1f} GiB")
        columns = f"  {'program':<11} " + " ".join(
            f"{name:>{width}}" for name, width in (("args", 8), ("temps", 8), ("resident", 9), ("peak GiB", 9),
                                                   ("of device", 9), ("time s", 8)))
        lines = [head, columns]
        for p in self.programs:
            lines.append(
                f"  {p.name:<11} {p.argument_bytes / GiB:8.1f} {p.temp_bytes / GiB:8.1f} {p.resident_bytes / GiB:9.1f} "
                f"{p.peak_bytes / GiB:9.1f} {p.peak_bytes / self.memory_bytes:9.0%} {p.time_s(self.target.gpu):8.2f}"
            )
        lines.append(f"  step (roofline, full-length responses): {self.step_time_s:.1f} s")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


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


def plan_run(
    run: RunConfig, target: Target | str, *, method: str = "auto", model: ModelConfig | None = None,
    memory_bytes: int | None = None, prompt_len: int | None = None,
) -> Plan:
    """Plans `run` on `target`. method: "aot" | "analytic" | "auto" (aot when the plugin imports).

    With `run.train.remat="auto"`: the plan of the policy `choose_remat` picks at
    `config.plan.max_memory_fraction` ("full"'s when none fits); `Plan.remat` says which.
    """
    if chunks.is_auto(run):  # rollout.chunk_prompts="auto": the largest sampler call that fits (plan/chunks.py)
        run = chunks.resolve_for_plan(run, target, method=method, model=model, memory_bytes=memory_bytes)
    if run.train.remat == "auto":
        return choose_remat(run, target, method=method, model=model, memory_bytes=memory_bytes,
                            prompt_len=prompt_len, max_fraction=run.plan.max_memory_fraction).plan
    target = parse_target(target) if isinstance(target, str) else target
    model = model or model_config_for(run)
    shapes = plan_shapes(run, model, target.count, prompt_len=prompt_len)
    if method == "auto":
        method = "aot" if aot_available() else "analytic"
    notes = ()
    if method == "aot":
        if not aot_available():  # else a NotImplementedError traceback from deep inside jax
            raise ConfigError(_AOT_MISSING.format(v=_jax_version()))
        programs, notes = _aot_programs(run, model, target, shapes)
    elif method == "analytic":
        programs = _analytic_programs(run, model, shapes)
    else:
        raise ValueError(f"method={method!r}; expected 'aot', 'analytic' or 'auto'.")
    programs = tuple(dataclasses.replace(p, phases=_phases(p.name, run, model, shapes)) for p in programs)
    return Plan(target=target, method=method, shapes=shapes, model=model, programs=programs,
                memory_bytes=memory_bytes or target.gpu.memory_bytes, notes=notes, remat=run.train.remat)


def check_fit(plan: Plan, run: RunConfig, *, max_fraction: float = 0.9) -> None:
    """Raises ConfigError when a program's peak is over `max_fraction` of the device memory."""
    limit = max_fraction * plan.memory_bytes
    over = [p for p in plan.programs if p.peak_bytes > limit]
    if not over:
        return
    if run.train.remat == "auto" and plan.remat:  # the knob names the policy the plan was made with
        run = _with_remat(run, plan.remat)
    p = max(over, key=lambda q: q.peak_bytes / limit)
    parts = dict(_analytic_parts(run, plan.model, plan.shapes)[p.name])
    big = max(parts, key=parts.get)
    knob = _knob(p.name, big, run, plan.target)
    # The largest part may be one more GPUs would shard while fewer rows per micro-batch already fit:
    # then that is the knob (no new hardware).
    micro = _micro_batches_that_fit(plan, run, p, limit) if [q.name for q in over] == ["train_step"] else None
    if micro is not None:
        knob = f"raise config.train.micro_batches (now {plan.shapes.micro_batches}) to {micro}: that alone fits"
    raise ConfigError(
        f"the run does not fit on {plan.target.name}: {p.name} needs {p.peak_bytes / GiB:.1f} GiB per device "
        f"({plan.method} plan), over {max_fraction:.0%} of {plan.memory_bytes / GiB:.1f} GiB "
        f"(largest part{' by the closed form' if plan.method != 'analytic' else ''}: {big}, "
        f"{parts[big] / GiB:.1f} GiB); {knob}."
    )


def _micro_batches_that_fit(plan: Plan, run: RunConfig, step: ProgramPlan, limit: float) -> int | None:
    """The smallest valid config.train.micro_batches above the run's that brings the train step
    under `limit` bytes (None: none does). The peak moves by the closed form's change: exact for
    an analytic plan, an estimate for an AOT one."""
    s = plan.shapes
    total = lambda shapes: sum(b for _, b in _analytic_parts(run, plan.model, shapes)["train_step"])  # noqa: E731
    now = total(s)
    rows = s.rows // s.batch_shards  # per shard: each micro-batch splits them evenly (`RunConfig.check_against`)
    for micro in range(s.micro_batches + 1, rows + 1):
        if rows % micro == 0 and step.peak_bytes - now + total(dataclasses.replace(s, micro_batches=micro)) <= limit:
            return micro
    return None


# ---- remat="auto" ------------------------------------------------------------------------

# Cheapest compute first: the update's passes are 3 forwards' worth ("none": forward + 2x
# backward), 3.5 ("dots": the elementwise work between the saved matmul outputs is redone)
# and 4 ("full": each layer's forward is redone); the memory held goes the other way.
REMAT_CANDIDATES = ("none", "dots", "full")
REMAT_DEFAULT = "full"  # "auto" without a plan: the least memory, and TrainConfig's default


def _trusted_policies(plan: Plan) -> tuple[str, ...]:
    """The candidates `plan` may choose. The analytic closed form counts the layer scan's saved
    activations sharded over the batch axes; XLA's compile of a mesh with fsdp or tensor > 1
    holds far more under "none"/"dots" (3B on h100x4: dots 102 GiB vs 63 in the closed form;
    4B on h100x8: 257 vs 69; BENCHMARKS.md, "Train step"), so only "full", whose closed form
    errs high there, is chosen on an analytic plan of a sharded mesh."""
    _, f, t = plan.shapes.mesh
    return REMAT_CANDIDATES[-1:] if plan.method == "analytic" and f * t > 1 else REMAT_CANDIDATES


def _with_remat(run: RunConfig, remat: str) -> RunConfig:
    return dataclasses.replace(run, train=dataclasses.replace(run.train, remat=remat))


def _fits(plan: Plan, max_fraction: float) -> bool:
    return all(p.peak_bytes <= max_fraction * plan.memory_bytes for p in plan.programs)


@dataclasses.dataclass(frozen=True)
class RematChoice:
    """What `config.train.remat="auto"` resolved to, and the plans that chose it.

    Attributes:
      policy: the first of REMAT_CANDIDATES whose plan fits; None when none does.
      plans: (policy, plan) of each candidate planned, cheapest first (all three with
        `plan_all`, else up to the one chosen).
      max_fraction: the fit limit, a fraction of the device's memory.
      trusted: the candidates the plan's method may choose (`_trusted_policies`).
    """

    policy: str | None
    plans: tuple[tuple[str, Plan], ...]
    max_fraction: float
    trusted: tuple[str, ...] = REMAT_CANDIDATES  # the candidates the plan's method may choose

    @property
    def plan(self) -> Plan:
        """The chosen policy's plan ("full"'s, the least memory, when none fits)."""
        return dict(self.plans)[self.policy or REMAT_CANDIDATES[-1]]

    def peaks(self) -> str:
        """"none 95%, dots 76%": each candidate's train_step peak as a fraction of the device."""
        return ", ".join(f"{name} {_program(plan, 'train_step').peak_bytes / plan.memory_bytes:.0%}"
                         for name, plan in self.plans)

    def restriction(self) -> str:
        """"" or why some candidates were not eligible (appended to the summary and the error)."""
        return ("" if self.trusted == REMAT_CANDIDATES else
                f"; only {', '.join(self.trusted)} on an analytic plan of a sharded mesh: plan.method='aot' "
                "compiles the others")

    def summary(self) -> str:
        """The launcher's one line: the policy and the plan's numbers that chose it."""
        plan = self.plan
        step = _program(plan, "train_step")
        return (f"remat: auto -> {self.policy} ({plan.method} plan, {plan.target.name}: train_step peak "
                f"{step.peak_bytes / GiB:.1f} of {plan.memory_bytes / GiB:.1f} GiB per device; train_step peak "
                f"per policy {self.peaks()}, limit {self.max_fraction:.0%}{self.restriction()})")


def _program(plan: Plan, name: str) -> ProgramPlan:
    return next(p for p in plan.programs if p.name == name)


def choose_remat(
    run: RunConfig, target: Target | str, *, method: str = "auto", model: ModelConfig | None = None,
    memory_bytes: int | None = None, prompt_len: int | None = None, max_fraction: float = 0.9,
    plan_all: bool = False,
) -> RematChoice:
    """Plans `run` with each of REMAT_CANDIDATES, cheapest compute first, and picks the first
    whose every program is at most `max_fraction` of the device (whatever `run.train.remat`);
    an analytic plan of a sharded mesh picks only "full" (`_trusted_policies`).

    Only the train step depends on the policy: the rollout and the scoring are planned (or
    compiled) once. Without `plan_all` the candidates after the first that fits are not
    planned (an AOT compile of a 3B train step takes minutes on a small CPU).
    """
    base = plan_run(_with_remat(run, REMAT_CANDIDATES[0]), target, method=method, model=model,
                    memory_bytes=memory_bytes, prompt_len=prompt_len)
    trusted = _trusted_policies(base)
    ok = lambda name, plan: name in trusted and _fits(plan, max_fraction)  # noqa: E731
    plans = [(REMAT_CANDIDATES[0], base)]
    for policy in REMAT_CANDIDATES[1:]:
        if not plan_all and ok(*plans[-1]):
            break
        plans.append((policy, _replan_train_step(base, _with_remat(run, policy))))
    policy = next((name for name, plan in plans if ok(name, plan)), None)
    return RematChoice(policy=policy, plans=tuple(plans), max_fraction=max_fraction, trusted=trusted)


def _replan_train_step(plan: Plan, run: RunConfig) -> Plan:
    """`plan` with its train_step planned again for `run` (another remat policy)."""
    if plan.method == "aot":
        (step,), notes = _aot_programs(run, plan.model, plan.target, plan.shapes, names=("train_step",))
        notes = tuple(n for n in plan.notes if not n.startswith("train_step:")) + notes
    else:
        step = next(p for p in _analytic_programs(run, plan.model, plan.shapes) if p.name == "train_step")
        notes = plan.notes
    step = dataclasses.replace(step, phases=_phases("train_step", run, plan.model, plan.shapes))
    programs = tuple(step if p.name == "train_step" else p for p in plan.programs)
    return dataclasses.replace(plan, programs=programs, notes=notes, remat=run.train.remat)


def check_remat_choice(choice: RematChoice, run: RunConfig) -> None:
    """Raises ConfigError when no remat policy fits: the least-memory policy's knob, prefixed
    with what "auto" tried."""
    if choice.policy is not None:
        return
    try:
        check_fit(choice.plan, _with_remat(run, REMAT_CANDIDATES[-1]), max_fraction=choice.max_fraction)
    except ConfigError as e:
        raise ConfigError(
            f"config.train.remat='auto': no policy fits (train_step peak per policy {choice.peaks()}"
            f"{choice.restriction()}); {e}"
        ) from None


def _knob(program: str, part: str, run: RunConfig, target: Target) -> str:
    t, m, r = run.train, run.mesh, run.rollout
    shard = f"raise config.mesh.fsdp (now {m.fsdp}) to shard params, gradients and Adam state over more devices"
    if run.mesh_shape(target.count)[1] >= target.count:
        shard += f"; {target.name} has no GPU left to shard over: use a target with more GPUs"
    if part in ("train state", "reference", "policy copy", "gradients", "gathered weights"):
        return shard
    if program == "train_step":
        remat = "" if t.remat == "full" else f", or set config.train.remat='full' (now {t.remat!r})"
        return f"raise config.train.micro_batches (now {t.micro_batches}){remat}"
    if program == "rollout":
        chunk = getattr(r, "chunk_prompts", None) or r.prompts_per_step
        return (f"lower config.rollout.chunk_prompts (now {chunk}: prompts per sampler call) or "
                f"config.rollout.max_total_length (now {r.max_total_length})")
    if hasattr(t, "tokens_per_micro_batch"):
        return f"lower config.train.tokens_per_micro_batch (now {t.tokens_per_micro_batch}: tokens per scoring pass)"
    return f"lower config.rollout.prompts_per_step (now {r.prompts_per_step}: the scoring takes every row at once)"


# ---- sizes ------------------------------------------------------------------------------

def gpu_attention(model: ModelConfig) -> str:
    """The attention a GPU run traces to: "cudnn" (flash: no [B, N, T, T] scores) or "xla".

    `config.attention="auto"` resolves by the backend at trace time, which on this CPU host
    would be "xla"; the plan resolves it as the GPU would (bf16/fp16, head_dim % 8 == 0, <= 128).
    """
    attention = getattr(model, "attention", None)
    if attention is None:  # a model without the flash path
        return "xla"
    if attention != "auto":
        return attention
    supported = model.dtype in ("bfloat16", "float16") and model.head_dim % 8 == 0 and model.head_dim <= 128
    return "cudnn" if supported else "xla"


def _mesh_like(shapes: PlanShapes):
    return types.SimpleNamespace(shape=dict(zip(("data", "fsdp", "tensor"), shapes.mesh)))


def _param_elems_per_device(model: ModelConfig, shapes: PlanShapes) -> int:
    """Parameter elements one device holds under the sharding rules (exact, from the specs)."""
    import jax

    from sharpjax.models.transformer import param_logical_axes, param_shapes
    from sharpjax.parallel import logical_to_spec

    mesh = _mesh_like(shapes)
    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, str) for a in x)  # noqa: E731

    def local(axes, shape):
        spec = logical_to_spec(axes, shape, mesh)
        n = 1
        for size, ax in zip(shape, tuple(spec) + (None,) * len(shape)):
            names = () if ax is None else (ax,) if isinstance(ax, str) else ax
            n *= size // math.prod(mesh.shape[a] for a in names)
        return n

    return sum(jax.tree.leaves(jax.tree.map(local, param_logical_axes(model), param_shapes(model), is_leaf=is_axes)))


def _matmul_params(model: ModelConfig) -> int:
    """Parameters that take part in a matmul per token (the embedding lookup does not; the head does)."""
    d = model.hidden_size
    return model.num_params - model.vocab_size * d * (0 if model.tie_word_embeddings else 1)


def _analytic_parts(run: RunConfig, model: ModelConfig, s: PlanShapes) -> dict[str, list[tuple[str, int]]]:
    """Per program, (component, bytes per device); the analytic plan sums them."""
    d, f, t = s.mesh
    c = 2 if model.dtype != "float32" else 4  # compute dtype bytes
    D, F, V, L = model.hidden_size, model.intermediate_size, model.vocab_size, model.num_layers
    N, K, H = model.num_heads // t or 1, model.num_kv_heads, model.head_dim
    Fl = F // t or 1
    elems = _param_elems_per_device(model, s)
    gathered_layer = (model.num_params - model.vocab_size * D) // L if f * t > 1 else 0
    state = 12 * elems  # fp32 master params + Adam mu, nu
    ref = c * elems
    T, P = s.width, s.prompt_len
    rows = s.rows // s.batch_shards
    rows_mb = max(rows // s.micro_batches, 1)
    chunk = run.train.logits_chunk
    flash = gpu_attention(model) == "cudnn"
    # Per query position, per layer: XLA's attention keeps fp32 scores and compute-dtype
    # probabilities over every key; flash attention only its output and a log-sum-exp.
    scores = (lambda keys: N * (H * c + 4)) if flash else (lambda keys: N * keys * (4 + c))  # noqa: E731

    # Rollout: one sampler call.
    r_rows = max(s.prompts_per_call * s.samples // s.batch_shards, 1)
    r_prompts = max(s.prompts_per_call // s.batch_shards, 1)
    kv_slot = L * 2 * K * H * c
    # `SamplingConfig.share_prompt_kv` (the default): one prompt cache per prompt, P slots,
    # and a response cache per row, T - P slots.
    kv = (r_prompts * P + r_rows * (T - P)) * kv_slot
    rollout = [
        ("policy copy", c * elems),
        ("KV cache", kv),
        ("gathered weights", c * gathered_layer * 2),
        ("prefill activations", r_prompts * P * (scores(T) + Fl * c * 3 + D * 4 * 4)),
        ("logits and outputs", r_rows * (V * 4 * 4 + T * 4 * 6)),
        ("train state", state), ("reference", ref),
    ]
    rows_sc = max((s.scoring_rows or s.rows) // s.batch_shards, 1)
    layer_fwd = rows_sc * T * (scores(T) + Fl * c * 3 + (N + 2 * K) * H * c + D * 4 * 3)
    scoring = [
        ("reference", ref), ("train state", state),
        ("rollout arrays", rows * T * 4 * 10),
        ("activations", layer_fwd + rows_sc * chunk * V * 4 * 3 + rows_sc * T * D * c * 2),
        ("gathered weights", c * gathered_layer * 2),
    ]
    saved_per_layer = {"full": D * c, "dots": ((N + 2 * K) * H + N * H + 3 * Fl + D) * c,
                       "none": scores(T) + Fl * c * 3 + (N + 2 * K) * H * c + D * 4 * 3}[run.train.remat]
    layer_bwd = rows_mb * T * (scores(T) * 3 // 2 + Fl * 4 * 4 + (N + 2 * K) * H * 4 * 3 + D * 4 * 6)
    train = [
        ("train state", state), ("reference", ref),
        ("gradients", 4 * elems * (2 if s.micro_batches > 1 else 1) + c * elems + 4 * elems * 2),
        ("activations", L * rows_mb * T * saved_per_layer + layer_bwd + rows_mb * chunk * V * 4 * 4),
        ("gathered weights", (2 * c + 4) * gathered_layer),
        ("batch", rows * T * 4 * 5 + rows * 4),
    ]
    return {"rollout": rollout, "scoring": scoring, "train_step": train}


# Arrays the loop keeps alive beside each program, and the program's own arguments.
_RESIDENT = {"rollout": ("train state", "reference"), "scoring": ("train state",),
             "train_step": ("reference",)}
_ARGS = {"rollout": ("policy copy",), "scoring": ("reference", "rollout arrays"),
         "train_step": ("train state", "batch")}


def _analytic_programs(run: RunConfig, model: ModelConfig, s: PlanShapes) -> list[ProgramPlan]:
    out = []
    for name, parts in _analytic_parts(run, model, s).items():
        resident = sum(b for k, b in parts if k in _RESIDENT[name])
        args = sum(b for k, b in parts if k in _ARGS[name])
        temps = sum(b for k, b in parts if k not in _RESIDENT[name] and k not in _ARGS[name])
        out.append(ProgramPlan(name=name, argument_bytes=args, output_bytes=0, alias_bytes=0, temp_bytes=temps,
                               resident_bytes=resident, phases=(), calls=s.rollout_calls if name == "rollout" else 1,
                               parts=tuple(parts)))
    return out


def _phases(name: str, run: RunConfig, model: ModelConfig, s: PlanShapes) -> tuple[tuple[float, float, int], ...]:
    """Roofline phases (FLOPs, HBM bytes, repeats) per device of one call of a program."""
    d, f, t = s.mesh
    n_split = t  # tensor parallelism splits a row's matmuls; data/fsdp split the rows
    c = 2 if model.dtype != "float32" else 4
    D, L, V = model.hidden_size, model.num_layers, model.vocab_size
    NH, KH = model.num_heads * model.head_dim, model.num_kv_heads * model.head_dim
    mm = _matmul_params(model)
    weights = c * model.num_params / n_split
    T, P, M = s.width, s.prompt_len, s.new_tokens
    rows = s.rows / s.batch_shards

    flash = gpu_attention(model) == "cudnn"

    def fwd(r, q, k):  # r rows, q query positions each, k keys each (flash skips the causally masked half)
        return 2 * mm * r * q / n_split + 4 * L * NH * r * q * k / n_split / (2 if flash and q > 1 else 1)

    def act_bytes(r, q, k):  # one forward's activation traffic (XLA: fp32 scores written and read twice)
        scores = 0 if flash else k * model.num_heads / n_split * 4 * 4
        return L * r * q * (scores + (8 * D + 6 * model.intermediate_size / n_split) * c)

    if name == "rollout":
        rr = s.prompts_per_call * s.samples / s.batch_shards
        rp = s.prompts_per_call / s.batch_shards
        # Each decode step reads the prompts' shared KV once and every row's response slots.
        kv_bytes = (rp * P + rr * M) * L * 2 * KH * c / n_split
        return ((fwd(rp, P, T), weights + act_bytes(rp, P, T), 1),
                (fwd(rr, 1, T), weights + kv_bytes + rr * V * 4 * 3, M))
    if name == "scoring":
        return ((fwd(rows, T, T), weights + act_bytes(rows, T, T), 1),)
    factor = {"full": 4, "dots": 3.5, "none": 3}[run.train.remat]  # fwd + (recomputed fwd) + 2x bwd
    elems = model.num_params / (f * t)
    return ((factor * fwd(rows, T, T), s.micro_batches * 3 * weights + factor * act_bytes(rows, T, T), 1),
            (0.0, elems * 4 * 8, 1))  # AdamW: read params, grads, mu, nu; write params, mu, nu (+ clip)


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


def _aot_compile(run: RunConfig, model: ModelConfig, target: Target, s: PlanShapes, name: str, mesh) -> ProgramPlan:
    """Lowers and compiles one program (`name`) over `mesh`, the target's compile-only GPUs
    (`_target_mesh`); call it under `on_mesh(mesh)`."""
    import jax
    import jax.numpy as jnp
    import optax

    from sharpjax.models.transformer import param_shapes
    from sharpjax.parallel import batch_sharding, param_shardings, replicated
    from sharpjax.rollout.sampler import RolloutBatch, sample
    from sharpjax.train.step import (
        StepConfig,
        TrainBatch,
        TrainState,
        compute_rewards,
        make_optimizer,
        make_train_step,
    )

    rep = replicated(mesh)
    rows1, rows2 = batch_sharding(mesh, 1), batch_sharding(mesh, 2)
    p_sh = param_shardings(model, mesh)
    is_shape = lambda x: isinstance(x, tuple) and all(isinstance(a, int) for a in x)  # noqa: E731
    sds = jax.ShapeDtypeStruct
    params = lambda dtype: jax.tree.map(lambda shp, sh: sds(shp, dtype, sharding=sh), param_shapes(model), p_sh,  # noqa: E731
                                        is_leaf=is_shape)
    compute = params(model.jnp_dtype)
    optimizer = make_optimizer(run.optim)

    def fresh(p):
        master = jax.tree.map(lambda x: x.astype(jnp.float32), p)
        return TrainState(step=jnp.zeros((), jnp.int32), params=master, opt_state=optimizer.init(master))

    abstract = jax.eval_shape(fresh, compute)
    opt_sh = optax.tree_map_params(optimizer, lambda _, sh: sh, abstract.opt_state, p_sh,
                                   transform_non_params=lambda _: rep)
    state_sh = TrainState(step=rep, params=p_sh, opt_state=opt_sh)
    state = jax.tree.map(lambda a, sh: sds(a.shape, a.dtype, sharding=sh), abstract, state_sh)

    def local_bytes(tree) -> int:
        return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree))

    score_ref = run.reward.needs_ref_logprobs or run.loss.kl_coef > 0 or run.train.score_reference_always
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
    m = low.compile().memory_analysis()
    return ProgramPlan(
        name=name, argument_bytes=m.argument_size_in_bytes, output_bytes=m.output_size_in_bytes,
        alias_bytes=m.alias_size_in_bytes, temp_bytes=m.temp_size_in_bytes, resident_bytes=resident[name],
        phases=(), calls=s.rollout_calls if name == "rollout" else 1,
    )


# ---- the launcher's check ---------------------------------------------------------------

def local_target() -> tuple[Target, int] | None:
    """The local GPUs as a target (spec numbers of the closest known GPU), or None on CPU/TPU."""
    import jax

    devices = jax.local_devices()
    if devices[0].platform != "gpu":
        return None
    kind = devices[0].device_kind.lower()
    gpu = GPUS["h200"] if "h200" in kind else GPUS["h100"]
    stats = devices[0].memory_stats() or {}
    return Target(gpu, jax.device_count()), int(stats.get("bytes_limit", gpu.memory_bytes))


def preflight(run: RunConfig, *, model: ModelConfig | None = None) -> str:
    """The launcher's fit check, before any weights load: raises ConfigError naming the knob
    when the run cannot fit, else returns a summary that says which plan it used (and, for
    `config.train.remat="auto"`, a first line with the policy chosen: see `preflight_run`)."""
    return preflight_run(run, model=model)[1]


def preflight_run(run: RunConfig, *, model: ModelConfig | None = None) -> tuple[RunConfig, str]:
    """`preflight`, and `run` with `config.train.remat="auto"` resolved to none|dots|full.

    The policy is the cheapest-compute one whose plan fits (`choose_remat`) on the plan's
    target (`config.plan.target`, else the local GPUs; on a GPU host never more memory than
    the local device's allocator limit, with one warning line when target and host differ,
    since the run executes here); with no plan (no target and no GPU, or
    `config.plan.method="off"`) it is REMAT_DEFAULT ("full"). The returned summary then starts
    with one line naming the policy and the numbers that chose it. Raises ConfigError when
    the run cannot fit (with "auto": under any policy).
    """
    p = run.plan
    auto = run.train.remat == "auto"
    memory = int(p.device_memory_gb * GiB) if p.device_memory_gb else None
    target = None
    if p.method == "off":
        skipped = "fit check off (config.plan.method='off')"
    elif p.target:
        try:
            target = parse_target(p.target)
        except ValueError as e:
            raise ConfigError(f"config.plan.target: {e}") from None
        local = local_target()
        if local is not None:  # a run on this GPU: plan against what this GPU can actually give
            here, local_memory = local
            planned = memory or target.gpu.memory_bytes
            if local_memory < planned or here.name != target.name:
                log.warning(
                    "config.plan.target=%s but this host has %s (%.1f GiB usable per device: the allocator's limit, "
                    "XLA_PYTHON_CLIENT_MEM_FRACTION; the launcher sets 0.95): planning against %.1f GiB",
                    target.name, here.name, local_memory / GiB, min(planned, local_memory) / GiB,
                )
            memory = min(planned, local_memory)
    else:
        local = local_target()
        if local is None:
            skipped = "fit check skipped: no config.plan.target and no local GPU"
        else:
            target, local_memory = local
            memory = memory or local_memory
    chunk_line = []
    if chunks.is_auto(run):  # resolved first: only the rollout depends on it, only the update on remat
        run, line = (chunks.resolve_without_plan(run, "no plan") if target is None else
                     chunks.resolve_chunk(run, target, method=p.method, model=model, memory_bytes=memory,
                                          max_fraction=p.max_memory_fraction))
        chunk_line = [line]
        skipped = "\n".join(chunk_line + [skipped]) if target is None else None
    if target is None:
        if not auto:
            return run, skipped
        why = "no plan" if p.method == "off" else "no config.plan.target and no local GPU"
        line = (f"remat: auto -> {REMAT_DEFAULT} ({why} to choose by: the policy that holds the least "
                "activation memory)")
        return _with_remat(run, REMAT_DEFAULT), f"{line}\n{skipped}"
    lines = chunk_line
    if auto:
        choice = choose_remat(run, target, method=p.method, model=model, memory_bytes=memory,
                              max_fraction=p.max_memory_fraction)
        check_remat_choice(choice, run)
        run, plan = _with_remat(run, choice.policy), choice.plan
        lines.append(choice.summary())
    else:
        plan = plan_run(run, target, method=p.method, model=model, memory_bytes=memory)
        check_fit(plan, run, max_fraction=p.max_memory_fraction)
    worst = max(plan.programs, key=lambda q: q.peak_bytes)
    lines.append(f"fit check ({plan.method} plan, {target.name}): peak {worst.peak_bytes / GiB:.1f} GiB per device "
                 f"({worst.name}) of {plan.memory_bytes / GiB:.1f} GiB, limit {p.max_memory_fraction:.0%}")
    return run, "\n".join(lines)
