"""The shapes of a run, and what a plan is: `model_config_for` (the architecture without weights),
`plan_shapes` (the worst-case shapes a training step compiles at), and the plan's records
`ProgramPlan` (one jitted program's memory and roofline phases) and `Plan` (all of them on a target).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from sharpjax.errors import ConfigError
from sharpjax.models.config import ModelConfig
from sharpjax.plan.targets import Gpu, Target
from sharpjax.train.config import RunConfig

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
      xla_remat_gemms: GEMMs XLA's own HLO rematerialization recomputed so that the compiled
        program fits its memory limit (`rollout.hlo.rematerialized`; AOT plans only, else 0).
        Then the program fits only by doing more work than its remat policy says.
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
    xla_remat_gemms: int = 0

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
        lines += [f"  note: {p.name}: XLA recomputed {p.xla_remat_gemms} GEMMs to fit its memory limit (its HLO "
                  "rematerialization): more compute than the time above; more micro-batches or remat 'full' avoid it"
                  for p in self.programs if p.xla_remat_gemms]
        return "\n".join(lines)
