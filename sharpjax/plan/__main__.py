"""`python -m sharpjax.plan --config experiments/rl_math.py:llama3b:task --target h100x4 [--method aot]`.

Prints, per program (rollout, scoring, train_step), the peak memory per device against the
device's and a roofline time; exits 1 when a program is over `config.plan.max_memory_fraction`
(the message names the knob). For the compile-only GPU plan ("aot") install the plugin
wheels of the installed jax outside the venv and put them on PYTHONPATH:

    v=$(python -c 'import jax; print(jax.__version__)')
    pip install --target /tmp/aot-site "jax-cuda12-plugin==$v" "jax-cuda12-pjrt==$v"
    JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 PYTHONPATH=/tmp/aot-site python -m sharpjax.plan ...
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from sharpjax.configs.cli import parse_config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (experiments/*.py[:arg]).")
_TARGET = flags.DEFINE_string("target", None, "GPU target, e.g. h100x4, h200x1 (default: config.plan.target).")
_METHOD = flags.DEFINE_enum("method", None, ["auto", "aot", "analytic"], "default: config.plan.method (auto).")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", None, "prompt bucket to plan for (default: the worst batch, "
                                   "the largest bucket beside a one-token prompt; see sharpjax.plan.plan_shapes).")
_JSON = flags.DEFINE_string("json", None, "also write the plan as JSON to this file.")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from sharpjax.errors import ConfigError
    from sharpjax.plan import GiB, check_fit, check_remat_choice, choose_remat, plan_run
    from sharpjax.train.config import RunConfig

    try:
        run = RunConfig.from_config_dict(_CONFIG.value)
        target = _TARGET.value or run.plan.target
        if not target:
            raise ConfigError("no target: pass --target (e.g. h100x4) or set config.plan.target.")
        method = _METHOD.value or (run.plan.method if run.plan.method != "off" else "auto")
        memory = int(run.plan.device_memory_gb * GiB) if run.plan.device_memory_gb else None
        choice = None
        if run.train.remat == "auto":  # every candidate, for the table (the launcher stops at the first that fits)
            choice = choose_remat(run, target, method=method, memory_bytes=memory, prompt_len=_PROMPT_LEN.value,
                                  max_fraction=run.plan.max_memory_fraction, plan_all=True)
            plan = choice.plan
        else:
            plan = plan_run(run, target, method=method, memory_bytes=memory, prompt_len=_PROMPT_LEN.value)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if choice is not None:
        print(f"remat auto: candidates, cheapest compute first (limit {choice.max_fraction:.0%} of the device)")
        for name, p in choice.plans:
            step = next(q for q in p.programs if q.name == "train_step")
            worst = max(q.peak_bytes for q in p.programs)
            frac = step.peak_bytes / p.memory_bytes
            print(f"  {name:<5} train_step peak {step.peak_bytes / GiB:6.1f} GiB ({frac:4.0%}), "
                  f"max over programs {worst / p.memory_bytes:4.0%}, update {step.time_s(p.target.gpu):6.2f} s"
                  f"{f'  (XLA recomputed {step.xla_remat_gemms} GEMMs to fit)' if step.xla_remat_gemms else ''}"
                  f"{'  <- chosen' if name == choice.policy else ''}"
                  f"{'' if name in choice.trusted else '  (not chosen by an analytic plan of a sharded mesh)'}")
        print(f"remat auto -> {choice.policy or 'nothing fits'}; the plan with {choice.policy or 'full'}:")
    print(plan.table())
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            out = plan_to_dict(plan)
            if choice is not None:
                out["remat"] = {"chosen": choice.policy,
                                "candidates": {name: plan_to_dict(p) for name, p in choice.plans}}
            json.dump(out, f, indent=2)
    try:
        if choice is not None:
            check_remat_choice(choice, run)
        else:
            check_fit(plan, run, max_fraction=run.plan.max_memory_fraction)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"fits: every program at most {run.plan.max_memory_fraction:.0%} of the device's memory")


def plan_to_dict(plan) -> dict:
    return {
        "target": plan.target.name, "method": plan.method, "memory_bytes": plan.memory_bytes,
        "shapes": dict(vars(plan.shapes)), "step_time_s": plan.step_time_s,
        "programs": {p.name: {"argument_bytes": p.argument_bytes, "output_bytes": p.output_bytes,
                              "alias_bytes": p.alias_bytes, "temp_bytes": p.temp_bytes,
                              "resident_bytes": p.resident_bytes, "peak_bytes": p.peak_bytes,
                              "time_s": p.time_s(plan.target.gpu), "xla_remat_gemms": p.xla_remat_gemms}
                     for p in plan.programs},
    }


if __name__ == "__main__":
    app.run(main, flags_parser=parse_config_flags)
