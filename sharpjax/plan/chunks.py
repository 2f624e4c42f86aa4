"""`config.rollout.chunk_prompts="auto"`: the largest sampler call that fits the plan's target.

Each sampler call reads the weights once per decoded token whatever its rows, so fewer, larger
calls cost less (h200x1 decoding 256 rows as two calls of 128 reads the weights twice per
token). Only the rollout program depends on the chunk (its KV cache, prefill activations and
logits scale with it); the scoring and the update do not. So the candidates, the divisors of
`rollout.prompts_per_step` that the mesh's data x fsdp divides, are planned largest first, the
rollout program alone (an AOT compile each on a GPU target), and the first whose rollout peak is
within `config.plan.max_memory_fraction` of the device is the chunk. `plan_run` and
`preflight_run` resolve "auto" here before anything else is planned.
"""

from __future__ import annotations

import dataclasses

from sharpjax.errors import ConfigError

AUTO = "auto"


def is_auto(run) -> bool:
    return getattr(run.rollout, "chunk_prompts", None) == AUTO


def with_chunk(run, chunk: int | None):
    """`run` with `config.rollout.chunk_prompts=chunk` (None when `chunk` is every prompt: one call)."""
    value = None if chunk is None or chunk == run.rollout.prompts_per_step else chunk
    return dataclasses.replace(run, rollout=dataclasses.replace(run.rollout, chunk_prompts=value))


def chunk_candidates(run, num_devices: int) -> list[int]:
    """Prompts per sampler call the run may use, largest first: divisors of prompts_per_step that
    the mesh's data x fsdp divides (the sampler shards a call's prompts over them)."""
    data, fsdp, _ = run.mesh_shape(num_devices)
    n = run.rollout.prompts_per_step
    return [c for c in range(n, 0, -1) if n % c == 0 and c % (data * fsdp) == 0]


@dataclasses.dataclass(frozen=True)
class ChunkChoice:
    """What "auto" resolved to.

    Attributes:
      chunk: prompts per sampler call chosen (the largest that fits); None when none fits.
      peaks: (chunk, rollout peak bytes per device) of each candidate planned, largest first
        (up to the one chosen).
      memory_bytes: the device memory planned against; max_fraction: the fit limit.
      prompts_per_step: the step's prompts (chunk == prompts_per_step: one call).
      method: the plan's method ("aot" | "analytic").
    """

    chunk: int | None
    peaks: tuple[tuple[int, int], ...]
    memory_bytes: int
    max_fraction: float
    prompts_per_step: int
    method: str
    target: str

    def summary(self) -> str:
        from sharpjax.plan.shapes import GiB

        tried = ", ".join(f"{c} {b / self.memory_bytes:.0%}" for c, b in self.peaks)
        if self.chunk is None:
            head = "chunk_prompts: auto -> nothing fits"
        else:
            calls = self.prompts_per_step // self.chunk
            peak = dict(self.peaks)[self.chunk]
            head = (f"chunk_prompts: auto -> {self.chunk} ({calls} sampler call{'s' if calls > 1 else ''} a step; "
                    f"rollout peak {peak / GiB:.1f} of {self.memory_bytes / GiB:.1f} GiB per device")
        return (f"{head}; {self.method} plan, {self.target}: rollout peak per chunk {tried}, "
                f"limit {self.max_fraction:.0%})")


def _rollout_peak(run, model, target, memory_bytes, method: str) -> int:
    from sharpjax.plan.analytic import _analytic_programs
    from sharpjax.plan.aot import _aot_programs
    from sharpjax.plan.fit import REMAT_DEFAULT, _with_remat
    from sharpjax.plan.shapes import plan_shapes

    if run.train.remat == "auto":  # the rollout does not depend on it; the closed forms need one
        run = _with_remat(run, REMAT_DEFAULT)
    shapes = plan_shapes(run, model, target.count)
    if method == "aot":
        (program,), _ = _aot_programs(run, model, target, shapes, names=("rollout",))
    else:
        program = next(p for p in _analytic_programs(run, model, shapes) if p.name == "rollout")
    return program.peak_bytes


def choose_chunk(run, target, *, method: str = "auto", model=None, memory_bytes: int | None = None,
                 max_fraction: float = 0.9) -> ChunkChoice:
    """Plans the rollout program at each of `chunk_candidates`, largest first, and picks the
    first whose peak is at most `max_fraction` of the device (`memory_bytes`, else the target's).
    Monotone: more device memory never picks a smaller chunk (the rollout peak grows with the
    chunk). The candidates after the one chosen are not planned."""
    from sharpjax.plan.aot import resolve_method
    from sharpjax.plan.shapes import model_config_for
    from sharpjax.plan.targets import parse_target

    target = parse_target(target) if isinstance(target, str) else target
    model = model or model_config_for(run)
    method = resolve_method(method)
    memory = memory_bytes or target.gpu.memory_bytes
    peaks, chosen = [], None
    for chunk in chunk_candidates(run, target.count):
        peak = _rollout_peak(with_chunk(run, chunk), model, target, memory, method)
        peaks.append((chunk, peak))
        if peak <= max_fraction * memory:
            chosen = chunk
            break
    return ChunkChoice(chunk=chosen, peaks=tuple(peaks), memory_bytes=memory, max_fraction=max_fraction,
                       prompts_per_step=run.rollout.prompts_per_step, method=method, target=target.name)


def resolve_chunk(run, target, *, method: str = "auto", model=None, memory_bytes: int | None = None,
                  max_fraction: float = 0.9):
    """`run` with chunk_prompts="auto" resolved (`choose_chunk`), and the summary line. Raises
    ConfigError naming the knobs left when even one prompt per call does not fit."""
    choice = choose_chunk(run, target, method=method, model=model, memory_bytes=memory_bytes,
                          max_fraction=max_fraction)
    if choice.chunk is None:
        from sharpjax.plan.shapes import GiB

        smallest, peak = choice.peaks[-1]
        raise ConfigError(
            f"config.rollout.chunk_prompts='auto': no chunk fits on {choice.target}: even {smallest} prompt(s) per "
            f"sampler call need {peak / GiB:.1f} GiB per device for the rollout ({choice.method} plan), over "
            f"{max_fraction:.0%} of {choice.memory_bytes / GiB:.1f} GiB; lower config.rollout.max_total_length "
            f"(now {run.rollout.max_total_length}) or config.rollout.samples_per_prompt (now "
            f"{run.rollout.samples_per_prompt}), or shard over more devices (config.mesh.fsdp)."
        )
    return with_chunk(run, choice.chunk), choice.summary()


def resolve_without_plan(run, why: str):
    """No target to plan against: every prompt in one call (the config's default)."""
    return with_chunk(run, None), f"chunk_prompts: auto -> {run.rollout.prompts_per_step} (one sampler call: {why})"


def resolve_for_plan(run, target, *, method: str = "auto", model=None, memory_bytes: int | None = None):
    """`plan_run`'s resolution: the chosen chunk, or the smallest candidate when none fits (the
    plan then shows by how much; the launcher's `resolve_chunk` refuses instead)."""
    choice = choose_chunk(run, target, method=method, model=model, memory_bytes=memory_bytes,
                          max_fraction=run.plan.max_memory_fraction)
    return with_chunk(run, choice.chunk or choice.peaks[-1][0])
