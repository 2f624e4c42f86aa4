"""The fit check and the choices it makes: `plan_run` (a plan by either method), `check_fit` (an
over-budget plan as a ConfigError naming the knob), `choose_remat` (`config.train.remat="auto"`),
and the launcher's one call, `preflight_run` (its target, its fit check, its remat policy).
"""

from __future__ import annotations

import dataclasses
import logging

from sharpjax.errors import ConfigError
from sharpjax.models.config import ModelConfig
from sharpjax.plan import chunks
from sharpjax.plan.analytic import _analytic_parts, _analytic_programs, _phases
from sharpjax.plan.aot import _aot_programs, resolve_method
from sharpjax.plan.shapes import GiB, Plan, ProgramPlan, model_config_for, plan_shapes
from sharpjax.plan.targets import GPUS, Target, parse_target
from sharpjax.train.config import RunConfig

log = logging.getLogger(__name__)

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
    method = resolve_method(method)
    notes = ()
    if method == "aot":
        programs, notes = _aot_programs(run, model, target, shapes)
    else:
        programs = _analytic_programs(run, model, shapes)
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


def _recomputed_by_xla(plan: Plan) -> int:
    """GEMMs XLA rematerialized in the plan's train step to fit its memory limit (AOT plans).
    A policy that fits only that way is not chosen: the GEMMs XLA recomputes cost more than the
    next policy's own recompute (3B on one H200, 256 rows x 3,072 tokens in micro-batches of 16:
    "dots" compiled to 22.3 PFLOP of GEMMs a step against 19.1 for "full"; BENCHMARKS.md)."""
    return _program(plan, "train_step").xla_remat_gemms


@dataclasses.dataclass(frozen=True)
class RematChoice:
    """What `config.train.remat="auto"` resolved to, and the plans that chose it.

    Attributes:
      policy: the first of REMAT_CANDIDATES whose plan fits without XLA recomputing GEMMs
        (else the fitting one with the fewest recomputed); None when none fits.
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
        """"none 95%, dots 76%": each candidate's train_step peak as a fraction of the device, and
        where XLA fit it only by recomputing GEMMs, how many ("dots 86% (XLA recomputed 16 GEMMs)")."""
        def peak(plan):
            recomputed = _recomputed_by_xla(plan)
            return (f"{_program(plan, 'train_step').peak_bytes / plan.memory_bytes:.0%}"
                    + (f" (XLA recomputed {recomputed} GEMMs to fit)" if recomputed else ""))
        return ", ".join(f"{name} {peak(plan)}" for name, plan in self.plans)

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
    whose every program is at most `max_fraction` of the device (whatever `run.train.remat`) and
    whose compiled train step XLA did not have to rematerialize GEMMs of to fit
    (`_recomputed_by_xla`); an analytic plan of a sharded mesh picks only "full"
    (`_trusted_policies`).

    Only the train step depends on the policy: the rollout and the scoring are planned (or
    compiled) once. Without `plan_all` the candidates after the first that fits are not
    planned (an AOT compile of a 3B train step takes minutes on a small CPU).
    """
    base = plan_run(_with_remat(run, REMAT_CANDIDATES[0]), target, method=method, model=model,
                    memory_bytes=memory_bytes, prompt_len=prompt_len)
    trusted = _trusted_policies(base)
    ok = lambda name, plan: name in trusted and _fits(plan, max_fraction) and not _recomputed_by_xla(plan)  # noqa: E731
    plans = [(REMAT_CANDIDATES[0], base)]
    for policy in REMAT_CANDIDATES[1:]:
        if not plan_all and ok(*plans[-1]):
            break
        plans.append((policy, _replan_train_step(base, _with_remat(run, policy))))
    policy = next((name for name, plan in plans if ok(name, plan)), None)
    if policy is None:  # every policy that fits needs XLA's recompute: the one that needs the least
        fitting = [(_recomputed_by_xla(plan), i, name) for i, (name, plan) in enumerate(plans)
                   if name in trusted and _fits(plan, max_fraction)]
        policy = min(fitting)[2] if fitting else None
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
    run, summary, _ = preflight_plan(run, model=model)
    return run, summary


def preflight_plan(run: RunConfig, *, model: ModelConfig | None = None) -> tuple[RunConfig, str, Plan | None]:
    """`preflight_run`, and the plan that checked the fit (None when there was none to make).

    For a caller that reports the plan's predictions beside the run (benchmarks/gpu_check.py):
    an AOT plan compiles every program for the target, minutes at 3B, so it is made once.
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
            return run, skipped, None
        why = "no plan" if p.method == "off" else "no config.plan.target and no local GPU"
        line = (f"remat: auto -> {REMAT_DEFAULT} ({why} to choose by: the policy that holds the least "
                "activation memory)")
        return _with_remat(run, REMAT_DEFAULT), f"{line}\n{skipped}", None
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
    return run, "\n".join(lines), plan
